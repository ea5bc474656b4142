# dracd: `make run` starts the server on etc/dracd.yaml, `make test` runs the suite.
# Both install what they need first: Debian packages as root, then .venv from uv.lock.
#
# Two sets of Debian packages, so that `make install` / `make run` are safe on a
# production mail host: RUN_APT is what dracd needs (nothing that is, or replaces,
# an MTA, an MRA or Redis); TEST_APT is what only the tests need (their real
# peers: Postfix, Dovecot, Redis, the C client toolchain, ...). `make test` takes both.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_APT := make gcc python3-venv python3-dev libdb5.3-dev db5.3-util rpcbind libwrap0
TEST_APT := rpcsvc-proto libtirpc-dev postfix util-linux mount procps iproute2 libidn12 \
	m4 libldap-2.5-0 dovecot-core dovecot-pop3d dovecot-imapd libpam0g-dev patch xz-utils \
	systemd man-db redis-server redis-tools faketime
# What `make deb` needs to build the Debian packages (debian/) and lint them, and what
# tests/test_deb.py needs to test them in a debootstrap root.
DEB_APT := debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools python3-wheel \
	python3-build python3-installer lintian fakeroot dpkg-dev build-essential libtirpc-dev rpcsvc-proto \
	cpio git debootstrap util-linux mount iproute2
PYTEST_ARGS ?=

# uv, pinned with its hashes in tools/uv.txt, installs every Python package from
# uv.lock (exact versions and hashes; `make lock` refreshes both files).
UV_HOME := .cache/uv-tool
UV := $(UV_HOME)/bin/uv
export UV_PYTHON := $(shell command -v $(PYTHON))
export UV_PYTHON_DOWNLOADS := never
export UV_NO_PROGRESS := 1
# berkeleydb's C extension builds against Debian's libdb5.3-dev.
export BERKELEYDB_DIR := /usr
# --all-packages: dracd, dracclient and dracd-logwatch (the workspace members).
SYNC := $(UV) sync --locked --all-packages
TEST_SYNC := $(SYNC) --all-extras --group test --group lint

.PHONY: install install-man apt-run apt-test apt-deb venv-run venv-test run test lint lock test-lowest \
	test-pythons mutate bench bench-quick bench-dovecot bench-ceiling profile soak fuzz check-rpcbind clean deb deb-test

# What dracd needs to run, nothing more: no test peer, no test tool.
install: venv-run install-man

# Man pages go where `man` finds them when .venv/bin is on PATH (MANDIR=... to change).
MANDIR ?= $(VENV)/share/man
install-man:
	for page in docs/man/*.[158]; do \
		install -D -m 644 $$page $(MANDIR)/man$${page##*.}/$${page##*/} || exit 1; done
	ln -sf dracd.8 $(MANDIR)/man8/rpc.dracd.8

apt-run:
	@tools/apt-install $(RUN_APT)

apt-test: apt-run
	@tools/apt-install --test-peers $(TEST_APT)

apt-deb:
	@tools/apt-install $(DEB_APT)

$(UV): tools/uv.txt | apt-run
	rm -rf $(UV_HOME)
	$(PYTHON) -m venv $(UV_HOME)
	$(UV_HOME)/bin/pip install -q --isolated --no-deps --require-hashes -r tools/uv.txt
	touch $@

# --inexact: `make run` after `make test` keeps the test tools.
venv-run: $(UV) apt-run
	$(SYNC) --inexact --no-default-groups

venv-test: $(UV) apt-test
	$(TEST_SYNC)

# Refresh the lock (all Python packages, the build tools and uv itself) to the newest
# releases that pyproject.toml allows; commit uv.lock and tools/uv.txt with the change.
lock: $(UV)
	$(UV) lock --upgrade
	echo uv > .cache/uv.in
	$(UV) pip compile -q --upgrade --generate-hashes --no-header --python-version 3.11 \
		--custom-compile-command "make lock" .cache/uv.in -o tools/uv.txt.new
	{ echo "# uv itself, with the hashes of every build: make lock refreshes it."; cat tools/uv.txt.new; } > tools/uv.txt
	rm tools/uv.txt.new

check-rpcbind: apt-run
	@pgrep -x rpcbind >/dev/null || { echo "starting rpcbind"; rpcbind -w; }
	@for i in $$(seq 100); do rpcinfo -p >/dev/null 2>&1 && exit 0; sleep 0.1; done; \
		echo "rpcbind does not answer rpcinfo -p within 10 s"; exit 1

run: install check-rpcbind
	@mkdir -p var
	@echo "dracd: map var/dracd.db, listening on 127.0.0.1 and ::1, registered with rpcbind."
	@echo "Try it from another shell (the export line lets dracctl find var/dracd.sock):"
	@echo "    export PATH=$(CURDIR)/$(BIN):\$$PATH DRACD_CONFIG=$(CURDIR)/etc/dracd.yaml"
	@echo "    dracctl add 192.0.2.7"
	@echo "    dracctl list"
	@echo "    db5.3_dump -p $(CURDIR)/var/dracd.db"
	@echo "Stop with Ctrl-C."
	exec $(BIN)/dracd -c etc/dracd.yaml

# Two passes: every test not marked serial on TEST_WORKERS processes (pytest-xdist; one file
# stays on one worker, so a file's module fixtures are built once), then the serial ones alone.
# pytest exits 5 when it collected nothing: one pass may (PYTEST_ARGS chose only serial tests,
# or none), both must not. TEST_WORKERS=0: everything in one process, in file order.
TEST_WORKERS ?= 2
# tests/test_deb.py is part of it (apt-deb: its tools), as `make deb-test` runs it alone.
test: venv-test apt-deb check-rpcbind lint
ifeq ($(TEST_WORKERS),0)
	$(BIN)/python -m pytest $(PYTEST_ARGS)
else
	@status=0; $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not serial" $(PYTEST_ARGS) || status=$$?; \
	serial=0; $(BIN)/python -m pytest -m serial $(PYTEST_ARGS) || serial=$$?; \
	if [ $$status$$serial = 55 ]; then echo "no tests collected"; exit 5; fi; \
	for s in $$status $$serial; do case $$s in 0|5) ;; *) exit $$s;; esac; done
endif

# The Debian packages (dracd, python3-dracclient, dracd-logwatch, libdrac1, libdrac-dev) into
# dist/deb/, built with dpkg-buildpackage in a copy of the tree (.cache/deb-build/), and lintian.
deb: apt-deb
	tools/build-deb dist/deb

# Those packages installed, upgraded, removed and purged in clean Debian 12 roots made with
# debootstrap from this host's apt sources (cached in .cache/debroot/), and Debian's drac
# replaced by them (tests/test_deb.py; it builds its own copies of the packages).
deb-test: venv-test apt-deb
	$(BIN)/python -m pytest tests/test_deb.py $(PYTEST_ARGS)

lint: venv-test
	$(BIN)/ruff check dracd client logwatch tests bench fuzz setup.py
	$(BIN)/mypy

# The declared floors are true: the lowest versions pyproject.toml allows for every
# direct dependency (uv's lowest-direct), in their own venv, through the unit and Redis tests.
LOWEST := .cache/venv-lowest
test-lowest: $(UV) apt-test check-rpcbind
	rm -rf $(LOWEST)
	$(UV) venv -q $(LOWEST)
	$(UV) pip install -q --python $(LOWEST)/bin/python --resolution lowest-direct \
		-e ./client -e ./logwatch -e '.[metrics,redis,uvloop]' --group pyproject.toml:test
	$(UV) pip list --python $(LOWEST)/bin/python
	$(LOWEST)/bin/python -m pytest -p no:cacheprovider -m unit $(PYTEST_ARGS)
	$(LOWEST)/bin/python -m pytest -p no:cacheprovider tests/test_redis.py $(PYTEST_ARGS)

# The unit tests on every Python here: Debian's own and pyenv's 3.11+ (PYTHONS=... to choose).
PYTHONS ?= /usr/bin/python3 $(wildcard $(HOME)/.pyenv/versions/3.1[1-9]*/bin/python3)
test-pythons: $(UV) apt-test
	@for py in $(PYTHONS); do \
		env=.cache/venv-$$($$py -c 'import platform; print(platform.python_version())'); \
		echo "== $$py -> $$env"; \
		UV_PROJECT_ENVIRONMENT=$$env UV_PYTHON=$$py $(TEST_SYNC) -q || exit 1; \
		$$env/bin/python -m pytest -q -m unit -p no:cacheprovider $(PYTEST_ARGS) || exit 1; \
	done

# Mutation testing of the pure core (tools/mutate.py), not part of `make test`: every mutant
# against its module's unit tests, 2 at a time; survivors must be killed or listed in
# tools/equivalent_mutants.txt. Report: bench/results/mutate-*.json. MUTATE_ARGS=dracd/keys.py ...
MUTATE_ARGS ?=
mutate: venv-test
	$(BIN)/python tools/mutate.py $(MUTATE_ARGS)

# Benchmark suite (issue 7), not part of `make test`: the full matrix with 3 repetitions
# (well under an hour), or `make bench-quick` (< 1 min). Results: bench/results/*.json.
BENCH_ARGS ?=
BENCH_SYNC := $(TEST_SYNC) --group bench
# LEGACY=/path/to/rpc.dracd: the side-by-side mode (issue 21) against that binary instead of the matrix.
LEGACY ?=
bench: venv-test check-rpcbind
	$(BENCH_SYNC)
	$(BIN)/python bench/run.py $(if $(LEGACY),--legacy $(LEGACY)) $(BENCH_ARGS)

bench-quick: venv-test check-rpcbind
	$(BENCH_SYNC)
	$(BIN)/python bench/run.py --quick $(BENCH_ARGS)

# What authorizing a login costs through the real Dovecot: no hook, post-login + dracctl,
# post-login + dracauth, auth policy (logins/s, CPU per login; bench/results/dovecot_*.json).
bench-dovecot: venv-test check-rpcbind
	$(BENCH_SYNC)
	$(BIN)/python bench/dovecot_logins.py $(BENCH_ARGS)

# The ceilings: minimal servers (reply only; one flush per burst; flush and map) under the same load.
bench-ceiling: venv-test
	$(BENCH_SYNC)
	$(BIN)/python bench/ceiling.py --out bench/results/ceiling_asyncio.json
	$(BIN)/python bench/ceiling.py --loop uvloop --out bench/results/ceiling_uvloop.json

# py-spy samples dracd under load: where the time goes (bench/results/profile_*.txt).
profile: venv-test check-rpcbind
	$(BENCH_SYNC)
	$(BIN)/python bench/profile.py $(BENCH_ARGS)

# Each target (fuzz/fuzz_TARGET.py) runs FUZZ_SECONDS with its own corpus; the first finding stops make.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= decoders socketmap map_reload
fuzz: venv-test
	$(TEST_SYNC) --group fuzz
	for target in $(FUZZ_TARGETS); do \
		mkdir -p .cache/fuzz-corpus/$$target && \
		$(BIN)/python fuzz/fuzz_$$target.py -max_total_time=$(FUZZ_SECONDS) \
			-artifact_prefix=.cache/fuzz-$$target- .cache/fuzz-corpus/$$target || exit 1; \
	done

# Long runs kept out of `make test`: many kill -9 rounds.
soak: venv-test check-rpcbind
	# 200 rounds take about 15 min (each restart reads a map of up to ~900k entries): far more
	# than the suite's per-test timeout.
	DRACD_CRASH_ROUNDS=200 $(BIN)/python -m pytest -q -s --timeout 3600 tests/test_crash.py

clean:
	rm -rf $(VENV) var build tests/c/build .cache dist/deb
