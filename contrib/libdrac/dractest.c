/*
 * dractest -- checks of libdrac's edge cases, for the test-suite.
 *
 *   dractest unconnected
 *       dracsend/dracdisc/dracsend6/dracdisc6 before any dracconn, NULL
 *       arguments and a NULL errmsg: every call must return -1 with the
 *       legacy message (or nothing to store).
 *   dractest cycles SERVER N ADDR4 ADDR6
 *       N rounds of dracconn, dracsend(ADDR4), dracconn again (replacing
 *       the handle), dracsend, dracdisc, and the same with dracconn6/
 *       dracsend6(ADDR6)/dracdisc6; then dracauth and dracauth6 N times.
 *       Every call must succeed, dracconn's socket must be close-on-exec,
 *       and the process must hold as many file descriptors afterwards as
 *       after the first round.
 *   dractest threads SERVER N
 *       N threads at once, each dracauth(192.0.2.<i+1>) and
 *       dracauth6(2001:db8::<i+1>); all must succeed.
 *
 * Prints "OK ..." and exits 0, or prints what went wrong and exits 1
 * (64 on usage errors).
 */

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "drac.h"

static int failures;

static void
expect(const char *what, int rc, int want, const char *msg, const char *want_msg)
{
	if (rc != want || (want_msg != NULL &&
	    (msg == NULL || strcmp(msg, want_msg) != 0))) {
		printf("FAIL %s: got %d \"%s\", want %d \"%s\"\n", what, rc,
		    msg != NULL ? msg : "(null)", want,
		    want_msg != NULL ? want_msg : "*");
		failures++;
	}
}

/* Call first, then look at msg: the call stores the message there. */
#define EXPECT(what, call, want, want_msg) do {			\
	int rc_;							\
	msg = NULL;							\
	rc_ = (call);							\
	expect((what), rc_, (want), msg, (want_msg));			\
} while (0)

static int
count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (d == NULL)
		return -1;
	while ((e = readdir(d)) != NULL)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1;	/* opendir's own descriptor */
}

/* Descriptors above 2 without FD_CLOEXEC (the handles' sockets must have it). */
static int
count_inheritable(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0, fd, flags;

	if (d == NULL)
		return -1;
	while ((e = readdir(d)) != NULL) {
		fd = atoi(e->d_name);
		if (e->d_name[0] == '.' || fd <= 2 || fd == dirfd(d))
			continue;
		flags = fcntl(fd, F_GETFD);
		if (flags != -1 && !(flags & FD_CLOEXEC))
			n++;
	}
	closedir(d);
	return n;
}

static int
unconnected(void)
{
	unsigned char a6[16] = { 0x20, 0x01, 0x0d, 0xb8 };
	char *msg;

	EXPECT("dracsend", dracsend(htonl(0xc0000201), &msg), -1,
	    "Not connected");
	EXPECT("dracdisc", dracdisc(&msg), -1, "Not connected");
	EXPECT("dracsend6", dracsend6(a6, &msg), -1, "Not connected");
	EXPECT("dracdisc6", dracdisc6(&msg), -1, "Not connected");
	expect("dracsend(NULL errmsg)", dracsend(htonl(0xc0000201), NULL), -1,
	    NULL, NULL);
	expect("dracdisc6(NULL errmsg)", dracdisc6(NULL), -1, NULL, NULL);
	EXPECT("dracauth(NULL server)", dracauth(NULL, 0, &msg), -1,
	    "No DRAC server given");
	EXPECT("dracconn(\"\")", dracconn((char *)"", &msg), -1,
	    "No DRAC server given");
	EXPECT("dracauth6(NULL address)", dracauth6((char *)"127.0.0.1", NULL,
	    &msg), -1, "No address given");
	if (failures == 0)
		printf("OK unconnected\n");
	return failures != 0;
}

static int
cycles(char *server, int n, const char *s4, const char *s6)
{
	struct in_addr a4;
	struct in6_addr a6;
	int i, fds_first = -1, fds_last = -1;
	char *msg;

	if (inet_pton(AF_INET, s4, &a4) != 1 ||
	    inet_pton(AF_INET6, s6, &a6) != 1) {
		fprintf(stderr, "dractest: bad address\n");
		return 64;
	}
	for (i = 0; i < n && failures == 0; i++) {
		EXPECT("dracconn", dracconn(server, &msg), 0,
		    "Connect succeeded");
		if (i == 0 && count_inheritable() != 0) {
			printf("FAIL dracconn's socket is not close-on-exec\n");
			failures++;
		}
		EXPECT("dracsend", dracsend(a4.s_addr, &msg), 0,
		    "Server reports add succeeded");
		EXPECT("dracconn again", dracconn(server, &msg), 0,
		    "Connect succeeded");
		EXPECT("dracsend", dracsend(a4.s_addr, &msg), 0,
		    "Server reports add succeeded");
		EXPECT("dracdisc", dracdisc(&msg), 0,
		    "Disconnect succeeded");
		EXPECT("dracdisc twice", dracdisc(&msg), -1,
		    "Not connected");
		EXPECT("dracconn6", dracconn6(server, &msg), 0,
		    "Connect succeeded");
		EXPECT("dracsend6", dracsend6(a6.s6_addr, &msg), 0,
		    "Server reports add succeeded");
		EXPECT("dracconn6 again", dracconn6(server, &msg), 0,
		    "Connect succeeded");
		EXPECT("dracsend6", dracsend6(a6.s6_addr, &msg), 0,
		    "Server reports add succeeded");
		EXPECT("dracdisc6", dracdisc6(&msg), 0,
		    "Disconnect succeeded");
		EXPECT("dracauth", dracauth(server, a4.s_addr, &msg), 0,
		    "Server reports add succeeded");
		EXPECT("dracauth6", dracauth6(server, a6.s6_addr, &msg), 0,
		    "Server reports add succeeded");
		if (i == 0)
			fds_first = count_fds();
	}
	fds_last = count_fds();
	if (failures == 0 && fds_first != fds_last) {
		printf("FAIL descriptors: %d after the first round, %d after "
		    "%d rounds\n", fds_first, fds_last, n);
		failures++;
	}
	if (failures == 0)
		printf("OK cycles %d fds %d %d\n", n, fds_first, fds_last);
	return failures != 0;
}

struct job {
	char *server;
	int index;
	int rc4, rc6;
	char msg4[128], msg6[128];
};

static void *
run_job(void *arg)
{
	struct job *job = arg;
	struct in6_addr a6;
	char *msg = NULL;

	job->rc4 = dracauth(job->server,
	    htonl(0xc0000200U | (unsigned int)(job->index + 1)), &msg);
	snprintf(job->msg4, sizeof(job->msg4), "%s", msg != NULL ? msg : "");
	memset(&a6, 0, sizeof(a6));
	a6.s6_addr[0] = 0x20;
	a6.s6_addr[1] = 0x01;
	a6.s6_addr[2] = 0x0d;
	a6.s6_addr[3] = 0xb8;
	a6.s6_addr[15] = (unsigned char)(job->index + 1);
	msg = NULL;
	job->rc6 = dracauth6(job->server, a6.s6_addr, &msg);
	snprintf(job->msg6, sizeof(job->msg6), "%s", msg != NULL ? msg : "");
	return NULL;
}

static int
threads(char *server, int n)
{
	pthread_t *tid = calloc((size_t)n, sizeof(*tid));
	struct job *jobs = calloc((size_t)n, sizeof(*jobs));
	int i;

	if (tid == NULL || jobs == NULL) {
		perror("dractest");
		return 1;
	}
	for (i = 0; i < n; i++) {
		jobs[i].server = server;
		jobs[i].index = i;
		if (pthread_create(&tid[i], NULL, run_job, &jobs[i]) != 0) {
			perror("dractest: pthread_create");
			return 1;
		}
	}
	for (i = 0; i < n; i++) {
		pthread_join(tid[i], NULL);
		expect("thread dracauth", jobs[i].rc4, 0, jobs[i].msg4,
		    "Server reports add succeeded");
		expect("thread dracauth6", jobs[i].rc6, 0, jobs[i].msg6,
		    "Server reports add succeeded");
	}
	free(tid);
	free(jobs);
	if (failures == 0)
		printf("OK threads %d\n", n);
	return failures != 0;
}

static void
usage(void)
{
	fprintf(stderr,
	    "usage: dractest unconnected\n"
	    "       dractest cycles SERVER N ADDR4 ADDR6\n"
	    "       dractest threads SERVER N\n");
	exit(64);
}

int
main(int argc, char **argv)
{
	int rc;

	if (argc == 2 && strcmp(argv[1], "unconnected") == 0)
		rc = unconnected();
	else if (argc == 6 && strcmp(argv[1], "cycles") == 0 &&
	    atoi(argv[3]) > 0)
		rc = cycles(argv[2], atoi(argv[3]), argv[4], argv[5]);
	else if (argc == 4 && strcmp(argv[1], "threads") == 0 &&
	    atoi(argv[3]) > 0 && atoi(argv[3]) <= 254)
		rc = threads(argv[2], atoi(argv[3]));
	else
		usage();
	fflush(stdout);
	return rc;
}
