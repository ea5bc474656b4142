/*
 * pmapreg -- register or unregister an RPC service with the local rpcbind,
 * for tests that run a fake server on a private program number.
 *
 *   pmapreg set   PROG VERS NETID UADDR
 *   pmapreg unset PROG VERS NETID|all [UADDR]
 *
 *   PROG, VERS  decimal or 0x hex
 *   NETID       a netconfig netid (udp, tcp, udp6, tcp6, ...); for unset,
 *               "all" removes the registration for every netid
 *   UADDR       universal address: "127.0.0.1.P1.P2" or "::1.P1.P2" where
 *               the port is P1 * 256 + P2 (ignored by unset)
 *
 * Uses libtirpc's rpcb_set()/rpcb_unset(), which talk to rpcbind over its
 * unix socket when it has one (so the owner is recorded as "superuser"
 * when run as root) and over loopback otherwise.
 *
 * Exit status: 0 rpcbind answered TRUE, 1 it answered FALSE (e.g. already
 * registered), 2 bad netid or universal address, 64 usage.
 */

#include <errno.h>
#include <netconfig.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rpc/rpc.h>

static void
usage(const char *msg)
{
	if (msg != NULL)
		fprintf(stderr, "pmapreg: %s\n", msg);
	fprintf(stderr,
	    "usage: pmapreg set PROG VERS NETID UADDR\n"
	    "       pmapreg unset PROG VERS NETID|all [UADDR]\n");
	exit(64);
}

static unsigned long
parse_ulong(const char *s, const char *what)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 0);
	if (errno != 0 || end == s || *end != '\0' || s[0] == '-' ||
	    v > 0xffffffffUL)
		usage(what);
	return v;
}

int
main(int argc, char **argv)
{
	rpcprog_t prog;
	rpcvers_t vers;
	struct netconfig *nconf = NULL;
	bool_t ok;
	int set;

	if (argc < 5)
		usage(NULL);
	if (strcmp(argv[1], "set") == 0) {
		set = 1;
		if (argc != 6)
			usage(NULL);
	} else if (strcmp(argv[1], "unset") == 0) {
		set = 0;
		if (argc > 6)
			usage(NULL);
	} else {
		usage("first argument must be set or unset");
		return 64;
	}
	prog = (rpcprog_t)parse_ulong(argv[2], "bad program number");
	vers = (rpcvers_t)parse_ulong(argv[3], "bad version");

	if (!(set == 0 && strcmp(argv[4], "all") == 0)) {
		nconf = getnetconfigent(argv[4]);
		if (nconf == NULL) {
			fprintf(stderr, "pmapreg: unknown netid %s\n", argv[4]);
			return 2;
		}
	}

	if (set) {
		struct netbuf *nb = uaddr2taddr(nconf, argv[5]);

		if (nb == NULL) {
			fprintf(stderr, "pmapreg: bad universal address %s "
			    "for netid %s\n", argv[5], argv[4]);
			freenetconfigent(nconf);
			return 2;
		}
		ok = rpcb_set(prog, vers, nconf, nb);
		free(nb->buf);
		free(nb);
	} else {
		/* A NULL netconfig removes every netid (rpcbind v4 UNSET). */
		ok = rpcb_unset(prog, vers, nconf);
	}
	if (nconf != NULL)
		freenetconfigent(nconf);
	if (!ok) {
		fprintf(stderr, "pmapreg: rpcbind refused %s of %lu/%lu on %s\n",
		    set ? "set" : "unset", (unsigned long)prog,
		    (unsigned long)vers, argv[4]);
		return 1;
	}
	return 0;
}
