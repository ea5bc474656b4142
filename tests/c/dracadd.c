/*
 * dracadd -- reference DRAC client for the dracd test-suite.
 *
 * It talks to a DRAC server through the stubs rpcgen generates from
 * drac.x and libtirpc, i.e. exactly the way the legacy C clients do, so
 * the tests can check our server against a real ONC RPC peer.
 *
 *   dracadd [-n] [-u] [-p PROG] [-v VERS] [-t SECS] [-r SECS] HOST NETID [ADDRESS]
 *
 *   HOST     host name or address given to clnt_create (rpcbind is asked
 *            there for the server's address)
 *   NETID    udp, tcp (clnt_create, as the legacy clients do), udp6 or
 *            tcp6 (clnt_tp_create with that netconfig)
 *   ADDRESS  IPv4 address (sent with version 1) or IPv6 address (sent with
 *            version 2); optional with -n
 *   -n       call the NULL procedure (0) only and print NULL_OK
 *   -u       send AUTH_SYS credentials instead of AUTH_NONE
 *   -p PROG  program number (default 900101; decimal or 0x hex)
 *   -v VERS  force the version (default: 1 for IPv4, 2 for IPv6, 1 for -n
 *            without ADDRESS)
 *   -t SECS  timeout for the rpcbind lookup and for the call (default 5;
 *            fractions allowed)
 *   -r SECS  UDP retransmission interval (CLSET_RETRY_TIMEOUT); libtirpc's
 *            default is 15 s, i.e. no retransmission within -t 5
 *
 * Prints one line on stdout: ADD_SUCCESS, ADD_PERM, ADD_SYSERR,
 * ADD_UNKOWN, "UNKNOWN n" or NULL_OK.
 * Exit status: 0 ADD_SUCCESS / NULL_OK, 1 any other result (the RPC
 * itself worked), 2 clnt_create failed, 3 the call failed, 64 usage.
 */

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <netconfig.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <rpc/rpc.h>

#include "drac.h"

#define EXIT_RESULT 1
#define EXIT_CREATE 2
#define EXIT_CALL 3
#define EXIT_USAGE 64

static void
usage(const char *msg)
{
	if (msg != NULL)
		fprintf(stderr, "dracadd: %s\n", msg);
	fprintf(stderr,
	    "usage: dracadd [-n] [-u] [-p PROG] [-v VERS] [-t SECS] [-r SECS] "
	    "HOST NETID [ADDRESS]\n");
	exit(EXIT_USAGE);
}

static unsigned long
parse_ulong(const char *s, const char *what)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 0);
	if (errno != 0 || end == s || *end != '\0' || s[0] == '-')
		usage(what);
	return v;
}

static struct timeval
parse_timeout(const char *s)
{
	char *end;
	double secs;
	struct timeval tv;

	errno = 0;
	secs = strtod(s, &end);
	if (errno != 0 || end == s || *end != '\0' || !isfinite(secs) ||
	    secs <= 0.0 || secs > 86400.0)
		usage("bad timeout");
	tv.tv_sec = (time_t)secs;
	tv.tv_usec = (suseconds_t)((secs - (double)tv.tv_sec) * 1e6);
	if (tv.tv_sec == 0 && tv.tv_usec == 0)
		tv.tv_usec = 1;
	return tv;
}

static int
report(addstat res)
{
	switch (res) {
	case ADD_SUCCESS:
		puts("ADD_SUCCESS");
		return 0;
	case ADD_PERM:
		puts("ADD_PERM");
		return EXIT_RESULT;
	case ADD_SYSERR:
		puts("ADD_SYSERR");
		return EXIT_RESULT;
	case ADD_UNKOWN:
		puts("ADD_UNKOWN");
		return EXIT_RESULT;
	}
	printf("UNKNOWN %d\n", (int)res);
	return EXIT_RESULT;
}

int
main(int argc, char **argv)
{
	unsigned long prog = DRACPROG;
	unsigned long vers = 0;
	struct timeval timeout = { 5, 0 };
	struct timeval retry = { 0, 0 };
	int null_only = 0, auth_sys = 0;
	const char *host, *netid, *address = NULL;
	struct in_addr a4;
	struct in6_addr a6;
	int family = 0;
	struct netconfig *nconf;
	CLIENT *clnt;
	int opt, rc;

	while ((opt = getopt(argc, argv, "nup:v:t:r:")) != -1) {
		switch (opt) {
		case 'n':
			null_only = 1;
			break;
		case 'u':
			auth_sys = 1;
			break;
		case 'p':
			prog = parse_ulong(optarg, "bad program number");
			if (prog > 0xffffffffUL)
				usage("bad program number");
			break;
		case 'v':
			vers = parse_ulong(optarg, "bad version");
			if (vers > 0xffffffffUL)
				usage("bad version");
			break;
		case 't':
			timeout = parse_timeout(optarg);
			break;
		case 'r':
			retry = parse_timeout(optarg);
			break;
		default:
			usage(NULL);
		}
	}
	argc -= optind;
	argv += optind;
	if (argc < 2 || argc > 3 || (argc == 2 && !null_only))
		usage(NULL);
	host = argv[0];
	netid = argv[1];
	if (argc == 3) {
		address = argv[2];
		if (inet_pton(AF_INET, address, &a4) == 1)
			family = AF_INET;
		else if (inet_pton(AF_INET6, address, &a6) == 1)
			family = AF_INET6;
		else
			usage("ADDRESS is neither IPv4 nor IPv6");
	}
	if (vers == 0)
		vers = (family == AF_INET6) ? DRACVERS6 : DRACVERS;
	if (!null_only && vers == DRACVERS6 && family != AF_INET6)
		usage("version 2 needs an IPv6 ADDRESS");
	if (!null_only && vers != DRACVERS6 && family != AF_INET)
		usage("this version needs an IPv4 ADDRESS");

	/*
	 * clnt_create() takes a nettype, not a netid: libtirpc knows "udp"
	 * and "tcp" (IPv4 only) and the netpath/visible family, but answers
	 * "Unknown protocol" for "udp6"/"tcp6".  The legacy clients use
	 * clnt_create(host, DRACPROG, vers, "udp"), so keep that path for
	 * udp and tcp, and go through the netid's netconfig otherwise.
	 */
	if (strcmp(netid, "udp") != 0 && strcmp(netid, "tcp") != 0 &&
	    (nconf = getnetconfigent(netid)) != NULL) {
		clnt = clnt_tp_create_timed(host, (rpcprog_t)prog,
		    (rpcvers_t)vers, nconf, &timeout);
		freenetconfigent(nconf);
	} else {
		clnt = clnt_create_timed(host, (rpcprog_t)prog,
		    (rpcvers_t)vers, netid, &timeout);
	}
	if (clnt == NULL) {
		fprintf(stderr, "dracadd: %s\n", clnt_spcreateerror(host));
		return EXIT_CREATE;
	}
	/* Overrides the stubs' built-in 25 s; for UDP it is the total time. */
	if (!clnt_control(clnt, CLSET_TIMEOUT, (char *)&timeout)) {
		fprintf(stderr, "dracadd: clnt_control(CLSET_TIMEOUT) failed\n");
		clnt_destroy(clnt);
		return EXIT_CREATE;
	}
	if ((retry.tv_sec != 0 || retry.tv_usec != 0) &&
	    !clnt_control(clnt, CLSET_RETRY_TIMEOUT, (char *)&retry)) {
		fprintf(stderr, "dracadd: -r works with datagram netids only\n");
		clnt_destroy(clnt);
		return EXIT_USAGE;
	}
	if (auth_sys) {
		AUTH *auth = authunix_create_default();

		if (auth == NULL) {
			fprintf(stderr, "dracadd: cannot make AUTH_SYS\n");
			clnt_destroy(clnt);
			return EXIT_CREATE;
		}
		auth_destroy(clnt->cl_auth);
		clnt->cl_auth = auth;
	}

	if (null_only) {
		enum clnt_stat st;

		/* via void (*)(void): xdr_void is declared without arguments */
		st = clnt_call(clnt, NULLPROC,
		    (xdrproc_t)(void (*)(void))xdr_void, NULL,
		    (xdrproc_t)(void (*)(void))xdr_void, NULL, timeout);
		if (st != RPC_SUCCESS) {
			fprintf(stderr, "dracadd: %s\n", clnt_sperror(clnt, host));
			rc = EXIT_CALL;
		} else {
			puts("NULL_OK");
			rc = 0;
		}
	} else {
		addstat *res;

		if (vers == DRACVERS6) {
			drac_add_parm6 parm6;

			memcpy(parm6.ip_addr6, a6.s6_addr, sizeof(parm6.ip_addr6));
			res = dracproc_add_2(&parm6, clnt);
		} else {
			drac_add_parm parm;

			/* host order: its XDR (big-endian) form is the 4 bytes */
			parm.ip_addr = ntohl(a4.s_addr);
			/* -v 1 (or any non-2 version) uses the v1 argument */
			res = dracproc_add_1(&parm, clnt);
		}
		if (res == NULL) {
			fprintf(stderr, "dracadd: %s\n", clnt_sperror(clnt, host));
			rc = EXIT_CALL;
		} else {
			rc = report(*res);
		}
	}
	if (fflush(stdout) != 0)
		rc = EXIT_CALL;
	if (clnt->cl_auth != NULL)
		auth_destroy(clnt->cl_auth);
	clnt_destroy(clnt);
	return rc;
}
