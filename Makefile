# dracd: `make run` starts the server on etc/dracd.yaml, `make test` runs the suite.
# Both install what they need first (apt packages as root, then .venv).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := gcc make python3-venv python3-dev libdb5.3-dev db5.3-util rpcbind \
	rpcsvc-proto libtirpc-dev postfix util-linux mount procps iproute2 libidn12 \
	m4 libldap-2.5-0 dovecot-core dovecot-pop3d dovecot-imapd libpam0g-dev patch xz-utils \
	systemd man-db redis-server redis-tools
PYTEST_ARGS ?=

.PHONY: install apt run test lint bench bench-quick bench-ceiling profile soak fuzz check-rpcbind clean

# Man pages go where `man` finds them when .venv/bin is on PATH (MANDIR=... to change).
MANDIR ?= $(VENV)/share/man
install: $(VENV)/.installed
	for page in docs/man/*.[158]; do \
		install -D -m 644 $$page $(MANDIR)/man$${page##*.}/$${page##*/} || exit 1; done
	ln -sf dracd.8 $(MANDIR)/man8/rpc.dracd.8

# Postfix is preseeded to "No configuration" and a temporary policy-rc.d keeps
# apt from starting system Dovecot/Postfix services: tests run private instances.
apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "make: as root, install: $$missing" >&2; exit 1; fi; \
		echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
		guard=; if [ ! -e /usr/sbin/policy-rc.d ]; then guard=1; \
			printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; status=$$?; \
		if [ -n "$$guard" ]; then rm -f /usr/sbin/policy-rc.d; fi; \
		exit $$status; \
	fi

$(VENV)/.installed: pyproject.toml client/pyproject.toml | apt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	BERKELEYDB_DIR=/usr $(BIN)/pip install -q -e ./client -e '.[test]'
	touch $@

check-rpcbind: apt
	@pgrep -x rpcbind >/dev/null || { echo "starting rpcbind"; rpcbind -w; sleep 0.5; }

run: install check-rpcbind
	@mkdir -p var
	@echo "dracd: map var/dracd.db, listening on 127.0.0.1 and ::1, registered with rpcbind."
	@echo "Try it from another shell:"
	@echo "    $(BIN)/dracctl add 192.0.2.7"
	@echo "    $(BIN)/dracctl -S var/dracd.sock list"
	@echo "    db5.3_dump -p var/dracd.db"
	@echo "Stop with Ctrl-C."
	exec $(BIN)/dracd -c etc/dracd.yaml

# pytest exits 5 when it collected nothing: that must fail, so it is not special-cased.
test: install check-rpcbind lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check dracd client tests bench fuzz
	$(BIN)/mypy

# Benchmark suite (issue 7), not part of `make test`: the full matrix with 3 repetitions
# (well under an hour), or `make bench-quick` (< 1 min). Results: bench/results/*.json.
BENCH_ARGS ?=
bench: install
	$(BIN)/python bench/run.py $(BENCH_ARGS)

bench-quick: install
	$(BIN)/python bench/run.py --quick $(BENCH_ARGS)

# The ceilings: minimal servers (reply only; one flush per burst; flush and map) under the same load.
bench-ceiling: install
	$(BIN)/python bench/ceiling.py --out bench/results/ceiling_asyncio.json
	$(BIN)/python bench/ceiling.py --loop uvloop --out bench/results/ceiling_uvloop.json

# py-spy samples dracd under load: where the time goes (bench/results/profile_*.txt).
profile: install
	$(BIN)/python bench/profile.py $(BENCH_ARGS)

FUZZ_SECONDS ?= 60
fuzz: install
	$(BIN)/pip install -q atheris
	mkdir -p .cache/fuzz-corpus
	$(BIN)/python fuzz/fuzz_decoders.py -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=.cache/ .cache/fuzz-corpus

# Long runs kept out of `make test`: many kill -9 rounds.
soak: install check-rpcbind
	DRACD_CRASH_ROUNDS=200 $(BIN)/python -m pytest -q -s tests/test_crash.py

clean:
	rm -rf $(VENV) var build tests/c/build
