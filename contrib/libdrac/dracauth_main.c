/*
 * dracauth -- add addresses on a DRAC server through libdrac, like DRAC
 * 1.12's "testing" program; for checking a server and the library.
 *
 *   dracauth [-c] [-t SECONDS] SERVER ADDRESS [ADDRESS...]
 *
 *   SERVER   the DRAC server's host: an address literal (127.0.0.1, ::1)
 *            or a name
 *   ADDRESS  an IPv4 address (sent with dracauth/dracsend) or an IPv6
 *            address (dracauth6/dracsend6)
 *   -c       connection style: dracconn/dracconn6 once per family, then
 *            dracsend/dracsend6 per address, then dracdisc/dracdisc6
 *            (the default with several addresses); without -c a single
 *            address goes through dracauth/dracauth6
 *   -t SECS  dractimeout(SECS * 1000); default $DRAC_TIMEOUT or 2 s
 *
 * Prints one line per library call: "FUNCTION ARGUMENT: RESULT MESSAGE",
 * e.g. "dracauth 192.0.2.7: 0 Server reports add succeeded".
 * Exit status: 0 every call returned 0; 1 the server refused something
 * (a positive result); 2 a call returned -1 or -2; 64 usage.
 */

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "drac.h"

static int worst;

static void
usage(const char *msg)
{
	if (msg != NULL)
		fprintf(stderr, "dracauth: %s\n", msg);
	fprintf(stderr,
	    "usage: dracauth [-c] [-t SECONDS] SERVER ADDRESS [ADDRESS...]\n");
	exit(64);
}

static void
show(const char *func, const char *arg, int rc, const char *msg)
{
	printf("%s %s: %d %s\n", func, arg, rc, msg != NULL ? msg : "(null)");
	if (rc < 0)
		worst = 2;
	else if (rc > 0 && worst < 1)
		worst = 1;
}

/* "1.5" -> 1500 ms; by hand, so the locale's decimal point is irrelevant */
static unsigned int
parse_ms(const char *s)
{
	unsigned long ms = 0, scale = 100;
	const char *p = s;

	for (; *p >= '0' && *p <= '9'; p++) {
		ms = ms * 10 + (unsigned long)(*p - '0');
		if (ms > DRAC_TIMEOUT_MAX_MS / 1000)
			usage("timeout too large");
	}
	ms *= 1000;
	if (*p == '.')
		for (p++; *p >= '0' && *p <= '9'; p++, scale /= 10)
			ms += (unsigned long)(*p - '0') * scale;
	if (*p != '\0' || p == s || ms == 0)
		usage("bad timeout");
	return (unsigned int)ms;
}

int
main(int argc, char **argv)
{
	int conn_style = 0, opt, i, n, want4 = 0, want6 = 0;
	char *server, *msg;
	struct in_addr *a4;
	struct in6_addr *a6;
	int *family;

	while ((opt = getopt(argc, argv, "ct:")) != -1) {
		switch (opt) {
		case 'c':
			conn_style = 1;
			break;
		case 't':
			dractimeout(parse_ms(optarg));
			break;
		default:
			usage(NULL);
		}
	}
	argc -= optind;
	argv += optind;
	if (argc < 2)
		usage(NULL);
	server = argv[0];
	n = argc - 1;
	a4 = calloc((size_t)n, sizeof(*a4));
	a6 = calloc((size_t)n, sizeof(*a6));
	family = calloc((size_t)n, sizeof(*family));
	if (a4 == NULL || a6 == NULL || family == NULL) {
		perror("dracauth");
		return 2;
	}
	for (i = 0; i < n; i++) {
		const char *s = argv[i + 1];

		if (inet_pton(AF_INET, s, &a4[i]) == 1) {
			family[i] = AF_INET;
			want4 = 1;
		} else if (inet_pton(AF_INET6, s, &a6[i]) == 1) {
			family[i] = AF_INET6;
			want6 = 1;
		} else {
			fprintf(stderr, "dracauth: %s: not an IPv4 or IPv6 "
			    "address\n", s);
			usage(NULL);
		}
	}
	if (n > 1)
		conn_style = 1;

	if (!conn_style) {
		int rc;

		msg = NULL;
		if (family[0] == AF_INET)
			rc = dracauth(server, a4[0].s_addr, &msg);
		else
			rc = dracauth6(server, a6[0].s6_addr, &msg);
		show(family[0] == AF_INET ? "dracauth" : "dracauth6", argv[1],
		    rc, msg);
	} else {
		int ok4 = 0, ok6 = 0, rc;

		if (want4) {
			msg = NULL;
			rc = dracconn(server, &msg);
			show("dracconn", server, rc, msg);
			ok4 = rc == 0;
		}
		if (want6) {
			msg = NULL;
			rc = dracconn6(server, &msg);
			show("dracconn6", server, rc, msg);
			ok6 = rc == 0;
		}
		for (i = 0; i < n; i++) {
			msg = NULL;
			if (family[i] == AF_INET && ok4) {
				rc = dracsend(a4[i].s_addr, &msg);
				show("dracsend", argv[i + 1], rc, msg);
			} else if (family[i] == AF_INET6 && ok6) {
				rc = dracsend6(a6[i].s6_addr, &msg);
				show("dracsend6", argv[i + 1], rc, msg);
			}
		}
		if (ok4) {
			msg = NULL;
			rc = dracdisc(&msg);
			show("dracdisc", server, rc, msg);
		}
		if (ok6) {
			msg = NULL;
			rc = dracdisc6(&msg);
			show("dracdisc6", server, rc, msg);
		}
	}
	free(a4);
	free(a6);
	free(family);
	if (fflush(stdout) != 0)
		return 2;
	return worst;
}
