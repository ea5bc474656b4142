/*
 * dracauth.c -- libdrac: the DRAC client library (see dracauth(3), drac.h).
 *
 * Same functions, parameters and return values as DRAC 1.12's libdrac:
 *
 *    0 .. 3   the server's answer (enum addstat; 0 = added)
 *   -1        no client handle (lookup failed, timed out; "Not connected")
 *   -2        the call failed (timed out, RPC error)
 *
 * What differs from the original:
 *
 * - Every operation has a time budget (default 2 s; dractimeout(),
 *   $DRAC_TIMEOUT), which covers the rpcbind lookup as well as the call:
 *   the original could stall a login for 25 s or more on a dead server.
 *   UDP requests are retransmitted a few times within the budget.
 * - Messages are kept in a per-thread buffer (or are constants) and never
 *   contain '%' or control characters, since legacy callers pass them to
 *   syslog() as the format.
 * - The dracconn()/dracconn6() handles are guarded by a mutex, closed
 *   before a new dracconn*() replaces them, and close-on-exec.
 * - An IPv4-mapped IPv6 address given to dracauth6()/dracsend6() is sent
 *   as IPv4 (version 1), the address the MTA sees.
 * - $DRAC_PROGRAM selects another program number (a testing aid).
 */

#define _DEFAULT_SOURCE 1

#include <arpa/inet.h>
#include <fcntl.h>
#include <netconfig.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <rpc/rpc.h>

#include "drac_rpc.h"
#include "drac.h"

#define API __attribute__((visibility("default")))

#define RETRY_MIN_MS 50U
#define RETRY_MAX_MS 1000U

static const char MSG_ADDED[] = "Server reports add succeeded";
static const char MSG_PERM[] = "Server reports permission denied";
static const char MSG_SYSERR[] = "Server reports system error";
static const char MSG_UNKNOWN[] = "Server reports unknown error";
static const char MSG_CONNECTED[] = "Connect succeeded";
static const char MSG_NOT_CONNECTED[] = "Not connected";
static const char MSG_DISCONNECTED[] = "Disconnect succeeded";
static const char MSG_NO_SERVER[] = "No DRAC server given";
static const char MSG_NO_ADDRESS[] = "No address given";

/* The last formatted message of this thread; valid until its next call. */
static __thread char msgbuf[512];

/* dractimeout()'s value in ms; 0 = not set.  Accessed atomically. */
static unsigned int timeout_set_ms;

/* The dracconn()/dracconn6() handles. */
static pthread_mutex_t conn_lock = PTHREAD_MUTEX_INITIALIZER;
static CLIENT *conn4;
static CLIENT *conn6;

static void
put_const(char **errmsg, const char *msg)
{
	if (errmsg != NULL)
		*errmsg = (char *)msg;
}

/* Format into the thread's buffer; '%' and control characters become '?'
 * and trailing white space goes (clnt_sperror ends its text with '\n'). */
static void put_fmt(char **errmsg, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
put_fmt(char **errmsg, const char *fmt, ...)
{
	va_list ap;
	size_t n;
	char *p;

	if (errmsg == NULL)
		return;
	va_start(ap, fmt);
	(void)vsnprintf(msgbuf, sizeof(msgbuf), fmt, ap);
	va_end(ap);
	n = strlen(msgbuf);
	while (n > 0 && (msgbuf[n - 1] == '\n' || msgbuf[n - 1] == ' ' ||
	    msgbuf[n - 1] == '\t' || msgbuf[n - 1] == '\r'))
		msgbuf[--n] = '\0';
	for (p = msgbuf; *p != '\0'; p++)
		if (*p == '%' || (unsigned char)*p < 0x20 ||
		    (unsigned char)*p == 0x7f)
			*p = '?';
	*errmsg = msgbuf;
}

static int
report(addstat res, char **errmsg)
{
	switch (res) {
	case ADD_SUCCESS:
		put_const(errmsg, MSG_ADDED);
		break;
	case ADD_PERM:
		put_const(errmsg, MSG_PERM);
		break;
	case ADD_SYSERR:
		put_const(errmsg, MSG_SYSERR);
		break;
	default:
		put_const(errmsg, MSG_UNKNOWN);
		break;
	}
	return (int)res;
}

/* ---- configuration ---- */

API unsigned int
dractimeout(unsigned int ms)
{
	if (ms > DRAC_TIMEOUT_MAX_MS)
		ms = DRAC_TIMEOUT_MAX_MS;
	return __atomic_exchange_n(&timeout_set_ms, ms, __ATOMIC_RELAXED);
}

/* "2", "0.5", " 1.25 ": seconds, parsed by hand (strtod follows the
 * locale's decimal point).  0 if invalid or zero. */
static unsigned int
parse_seconds(const char *s)
{
	unsigned long long ms = 0;
	unsigned int scale = 100, digits = 0, rest = 0;

	while (*s == ' ' || *s == '\t')
		s++;
	for (; *s >= '0' && *s <= '9'; s++, digits++)
		if (ms <= DRAC_TIMEOUT_MAX_MS)
			ms = ms * 10 + (unsigned int)(*s - '0');
	ms *= 1000;
	if (*s == '.') {
		for (s++; *s >= '0' && *s <= '9'; s++, digits++) {
			if (scale > 0)
				ms += (unsigned long long)(*s - '0') * scale;
			else if (*s != '0')
				rest = 1;
			scale /= 10;
		}
	}
	while (*s == ' ' || *s == '\t')
		s++;
	if (*s != '\0' || digits == 0)
		return 0;
	if (ms == 0 && rest)
		ms = 1;
	return ms > DRAC_TIMEOUT_MAX_MS ? DRAC_TIMEOUT_MAX_MS : (unsigned int)ms;
}

static unsigned int
budget_ms(void)
{
	unsigned int ms = __atomic_load_n(&timeout_set_ms, __ATOMIC_RELAXED);
	const char *env;

	if (ms != 0)
		return ms;
	env = getenv("DRAC_TIMEOUT");
	if (env != NULL && (ms = parse_seconds(env)) != 0)
		return ms;
	return DRAC_TIMEOUT_DEFAULT_MS;
}

static rpcprog_t
program(void)
{
	const char *env = getenv("DRAC_PROGRAM");
	unsigned long v;
	char *end;

	if (env == NULL || *env < '0' || *env > '9')
		return (rpcprog_t)DRAC_PROGRAM_DEFAULT;
	v = strtoul(env, &end, 0);
	if (*end != '\0' || v == 0 || v > 0xffffffffUL)
		return (rpcprog_t)DRAC_PROGRAM_DEFAULT;
	return (rpcprog_t)v;
}

/* ---- time ---- */

static void
deadline_in(struct timespec *end, unsigned int ms)
{
	clock_gettime(CLOCK_MONOTONIC, end);
	end->tv_sec += ms / 1000;
	end->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (end->tv_nsec >= 1000000000L) {
		end->tv_sec++;
		end->tv_nsec -= 1000000000L;
	}
}

/* Time left until end, as a timeval; 0 if none is left. */
static int
time_left(const struct timespec *end, struct timeval *tv)
{
	struct timespec now;
	long long ns;

	clock_gettime(CLOCK_MONOTONIC, &now);
	ns = (long long)(end->tv_sec - now.tv_sec) * 1000000000LL +
	    (end->tv_nsec - now.tv_nsec);
	if (ns < 1000)
		return 0;
	tv->tv_sec = (time_t)(ns / 1000000000LL);
	tv->tv_usec = (suseconds_t)((ns % 1000000000LL) / 1000);
	return 1;
}

/* ---- RPC ---- */

static int
timed_out(enum clnt_stat st, const struct rpc_err *err)
{
	return st == RPC_TIMEDOUT ||
	    ((st == RPC_PMAPFAILURE || st == RPC_RPCBFAILURE) &&
	    err->re_status == RPC_TIMEDOUT);
}

/*
 * A UDP client handle for server, version vers, created before end:
 * netid udp for an IPv4 literal, udp6 for an IPv6 literal, both in turn
 * for a name (as legacy's "datagram_v").  NULL with *errmsg set.
 */
static CLIENT *
open_client(const char *server, rpcvers_t vers, const struct timespec *end,
    unsigned int ms, char **errmsg)
{
	static const char *const only4[] = { "udp", NULL };
	static const char *const only6[] = { "udp6", NULL };
	static const char *const both[] = { "udp", "udp6", NULL };
	const char *const *netid = both;
	unsigned char probe[sizeof(struct in6_addr)];
	rpcprog_t prog = program();
	CLIENT *clnt = NULL;
	int have_msg = 0;

	if (inet_pton(AF_INET, server, probe) == 1)
		netid = only4;
	else if (inet_pton(AF_INET6, server, probe) == 1)
		netid = only6;

	for (; *netid != NULL; netid++) {
		struct netconfig *nconf;
		struct timeval tv;
		enum clnt_stat st;

		if (!time_left(end, &tv)) {
			if (!have_msg)
				put_fmt(errmsg, "%s: RPC: Timed out (%u ms)",
				    server, ms);
			have_msg = 1;
			break;
		}
		nconf = getnetconfigent(*netid);
		if (nconf == NULL) {
			if (!have_msg)
				put_fmt(errmsg, "%s: netid %s is not in "
				    "/etc/netconfig", server, *netid);
			have_msg = 1;
			continue;
		}
		clnt = clnt_tp_create_timed(server, prog, vers, nconf, &tv);
		freenetconfigent(nconf);
		if (clnt != NULL)
			break;
		/* Keep the first error, unless a later one says more than
		 * "this name has no address of that family". */
		st = rpc_createerr.cf_stat;
		if (!have_msg || (st != RPC_UNKNOWNHOST &&
		    st != RPC_N2AXLATEFAILURE && st != RPC_UNKNOWNADDR)) {
			const char *text = clnt_spcreateerror(server);

			if (timed_out(st, &rpc_createerr.cf_error))
				put_fmt(errmsg, "%s (%u ms)", text, ms);
			else
				put_fmt(errmsg, "%s", text);
			have_msg = 1;
		}
	}
	if (clnt != NULL) {
		int fd, flags;

		if (clnt_control(clnt, CLGET_FD, (char *)&fd) &&
		    (flags = fcntl(fd, F_GETFD)) != -1)
			(void)fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
	}
	return clnt;
}

static void
close_client(CLIENT *clnt)
{
	if (clnt != NULL)
		clnt_destroy(clnt);
}

/* 16 bytes of IPv6; if IPv4-mapped, its IPv4 address in host order. */
static int
mapped_v4(const unsigned char *a6, uint32_t *v4)
{
	static const unsigned char prefix[12] = {
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff
	};

	if (memcmp(a6, prefix, sizeof(prefix)) != 0)
		return 0;
	*v4 = (uint32_t)a6[12] << 24 | (uint32_t)a6[13] << 16 |
	    (uint32_t)a6[14] << 8 | (uint32_t)a6[15];
	return 1;
}

/*
 * One ADD over clnt before end: the IPv4 address v4 (host order) with
 * version 1 when a6 is NULL, else the 16 bytes at a6 with version 2.
 * vers is the handle's version; it is switched for the call if need be.
 */
static int
send_add(CLIENT *clnt, rpcvers_t vers, uint32_t v4, const unsigned char *a6,
    const struct timespec *end, unsigned int ms, char **errmsg)
{
	rpcvers_t want = a6 == NULL ? DRACVERS : DRACVERS6;
	struct timeval total, retry;
	unsigned int retry_ms;
	enum clnt_stat st;
	addstat res = ADD_SUCCESS;

	if (!time_left(end, &total)) {
		put_fmt(errmsg, "call failed: RPC: Timed out (%u ms)", ms);
		return DRAC_ERR_CALL;
	}
	retry_ms = ms / 4;
	if (retry_ms < RETRY_MIN_MS)
		retry_ms = RETRY_MIN_MS;
	if (retry_ms > RETRY_MAX_MS)
		retry_ms = RETRY_MAX_MS;
	retry.tv_sec = (time_t)(retry_ms / 1000);
	retry.tv_usec = (suseconds_t)(retry_ms % 1000) * 1000;
	/* For UDP, CLSET_TIMEOUT is the call's total time, overriding the
	 * stubs' 25 s; CLSET_RETRY_TIMEOUT the retransmission interval. */
	(void)clnt_control(clnt, CLSET_TIMEOUT, (char *)&total);
	(void)clnt_control(clnt, CLSET_RETRY_TIMEOUT, (char *)&retry);
	if (want != vers)
		(void)clnt_control(clnt, CLSET_VERS, (char *)&want);

	if (a6 == NULL) {
		drac_add_parm parm;

		parm.ip_addr = v4;
		st = dracproc_add_1(&parm, &res, clnt);
	} else {
		drac_add_parm6 parm6;

		memcpy(parm6.ip_addr6, a6, sizeof(parm6.ip_addr6));
		st = dracproc_add_2(&parm6, &res, clnt);
	}

	if (want != vers)
		(void)clnt_control(clnt, CLSET_VERS, (char *)&vers);
	if (st != RPC_SUCCESS) {
		const char *text = clnt_sperror(clnt, "call failed");

		if (st == RPC_TIMEDOUT)
			put_fmt(errmsg, "%s (%u ms)", text, ms);
		else
			put_fmt(errmsg, "%s", text);
		return DRAC_ERR_CALL;
	}
	return report(res, errmsg);
}

/* ---- the API ---- */

static int
auth_one(char *server, uint32_t v4, const unsigned char *a6, char **errmsg)
{
	rpcvers_t vers = a6 == NULL ? DRACVERS : DRACVERS6;
	unsigned int ms = budget_ms();
	struct timespec end;
	CLIENT *clnt;
	int rc;

	if (server == NULL || *server == '\0') {
		put_const(errmsg, MSG_NO_SERVER);
		return DRAC_ERR_CONNECT;
	}
	deadline_in(&end, ms);
	clnt = open_client(server, vers, &end, ms, errmsg);
	if (clnt == NULL)
		return DRAC_ERR_CONNECT;
	rc = send_add(clnt, vers, v4, a6, &end, ms, errmsg);
	close_client(clnt);
	return rc;
}

API int
dracauth(char *server, unsigned long userip, char **errmsg)
{
	/* userip is in network order; the wire wants the integer value */
	return auth_one(server, ntohl((uint32_t)userip), NULL, errmsg);
}

API int
dracauth6(char *server, unsigned char *userip6, char **errmsg)
{
	uint32_t v4;

	if (userip6 == NULL) {
		put_const(errmsg, MSG_NO_ADDRESS);
		return DRAC_ERR_CONNECT;
	}
	if (mapped_v4(userip6, &v4))
		return auth_one(server, v4, NULL, errmsg);
	return auth_one(server, 0, userip6, errmsg);
}

static int
conn_open(CLIENT **slot, rpcvers_t vers, char *server, char **errmsg)
{
	unsigned int ms = budget_ms();
	struct timespec end;
	CLIENT *clnt = NULL;
	int rc = DRAC_ERR_CONNECT;

	pthread_mutex_lock(&conn_lock);
	/* Like legacy, a new dracconn*() replaces the old handle (even when
	 * it fails); unlike legacy, the old one is closed, not leaked. */
	close_client(*slot);
	*slot = NULL;
	if (server == NULL || *server == '\0') {
		put_const(errmsg, MSG_NO_SERVER);
	} else {
		deadline_in(&end, ms);
		clnt = open_client(server, vers, &end, ms, errmsg);
		if (clnt != NULL) {
			*slot = clnt;
			put_const(errmsg, MSG_CONNECTED);
			rc = DRAC_SUCCESS;
		}
	}
	pthread_mutex_unlock(&conn_lock);
	return rc;
}

static int
conn_send(CLIENT **slot, rpcvers_t vers, uint32_t v4, const unsigned char *a6,
    char **errmsg)
{
	unsigned int ms = budget_ms();
	struct timespec end;
	int rc;

	pthread_mutex_lock(&conn_lock);
	if (*slot == NULL) {
		put_const(errmsg, MSG_NOT_CONNECTED);
		rc = DRAC_ERR_CONNECT;
	} else {
		deadline_in(&end, ms);
		rc = send_add(*slot, vers, v4, a6, &end, ms, errmsg);
	}
	pthread_mutex_unlock(&conn_lock);
	return rc;
}

static int
conn_close(CLIENT **slot, char **errmsg)
{
	int rc;

	pthread_mutex_lock(&conn_lock);
	if (*slot == NULL) {
		put_const(errmsg, MSG_NOT_CONNECTED);
		rc = DRAC_ERR_CONNECT;
	} else {
		close_client(*slot);
		*slot = NULL;
		put_const(errmsg, MSG_DISCONNECTED);
		rc = DRAC_SUCCESS;
	}
	pthread_mutex_unlock(&conn_lock);
	return rc;
}

API int
dracconn(char *server, char **errmsg)
{
	return conn_open(&conn4, DRACVERS, server, errmsg);
}

API int
dracsend(unsigned long userip, char **errmsg)
{
	return conn_send(&conn4, DRACVERS, ntohl((uint32_t)userip), NULL,
	    errmsg);
}

API int
dracdisc(char **errmsg)
{
	return conn_close(&conn4, errmsg);
}

API int
dracconn6(char *server, char **errmsg)
{
	return conn_open(&conn6, DRACVERS6, server, errmsg);
}

API int
dracsend6(unsigned char *userip6, char **errmsg)
{
	uint32_t v4;

	if (userip6 == NULL) {
		put_const(errmsg, MSG_NO_ADDRESS);
		return DRAC_ERR_CONNECT;
	}
	if (mapped_v4(userip6, &v4))
		return conn_send(&conn6, DRACVERS6, v4, NULL, errmsg);
	return conn_send(&conn6, DRACVERS6, 0, userip6, errmsg);
}

API int
dracdisc6(char **errmsg)
{
	return conn_close(&conn6, errmsg);
}
