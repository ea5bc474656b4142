/*
 * drac.h -- libdrac, the DRAC client library (dracd's drop-in for DRAC
 * 1.12's libdrac): tell a DRAC server (rpc.dracd or dracd, ONC RPC program
 * 900101) that a client address just authenticated, so the MTA lets it
 * relay.  See dracauth(3).
 *
 * The functions, their parameters and return values are those of DRAC
 * 1.12's libdrac, so programs written for it (UW IMAP, Cyrus and Dovecot
 * DRAC patches) build and link unchanged; legacy installed no header, and
 * those programs declare the functions themselves, which stays valid.
 *
 * Link: -ldrac (shared; it pulls in libtirpc), or libdrac.a -ltirpc.
 */

#ifndef LIBDRAC_DRAC_H
#define LIBDRAC_DRAC_H

#ifdef __cplusplus
extern "C" {
#endif

/* Return values.  Zero and the positive ones are the server's answer
 * (enum addstat); the negative ones are the library's own, as legacy. */
#define DRAC_SUCCESS       0    /* ADD_SUCCESS: added (or connected, ...) */
#define DRAC_ADD_PERM      1    /* ADD_PERM: this host may not add */
#define DRAC_ADD_SYSERR    2    /* ADD_SYSERR: the server could not save it */
#define DRAC_ADD_UNKNOWN   3    /* ADD_UNKOWN: refused, e.g. not a host address */
#define DRAC_ERR_CONNECT (-1)   /* no client handle: server unknown or not
                                   registered, rpcbind unreachable, timed
                                   out looking it up; "Not connected";
                                   a NULL server or address */
#define DRAC_ERR_CALL    (-2)   /* the call itself failed (timed out, RPC
                                   error); nothing is known to be added */

#define DRAC_PROGRAM_DEFAULT     900101UL
#define DRAC_TIMEOUT_DEFAULT_MS  2000U
#define DRAC_TIMEOUT_MAX_MS      300000U

/*
 * One-shot: look the server up, send one ADD, close.  userip is an IPv4
 * address in network byte order (as inet_addr() or sin_addr.s_addr give
 * it); userip6 points at the 16 bytes of an IPv6 address (sin6_addr).
 * An IPv4-mapped userip6 (::ffff:a.b.c.d) is sent as the IPv4 address.
 */
int dracauth(char *server, unsigned long userip, char **errmsg);
int dracauth6(char *server, unsigned char *userip6, char **errmsg);

/*
 * Connection-style: dracconn() looks the server up once, dracsend() adds
 * addresses over it, dracdisc() closes it.  The IPv4 and IPv6 connections
 * are separate (dracconn6/dracsend6/dracdisc6), one of each per process.
 */
int dracconn(char *server, char **errmsg);
int dracsend(unsigned long userip, char **errmsg);
int dracdisc(char **errmsg);
int dracconn6(char *server, char **errmsg);
int dracsend6(unsigned char *userip6, char **errmsg);
int dracdisc6(char **errmsg);

/*
 * Not in legacy libdrac: the time budget in milliseconds for one
 * dracauth*() (lookup and call together), one dracconn*() (the lookup) or
 * one dracsend*() (the call).  0 restores the default: $DRAC_TIMEOUT
 * (seconds, fractions allowed) if set and valid, else 2 s.  Values above
 * DRAC_TIMEOUT_MAX_MS are clamped.  Returns the previous setting (0 if
 * none was set).
 */
unsigned int dractimeout(unsigned int ms);

#ifdef __cplusplus
}
#endif

#endif /* LIBDRAC_DRAC_H */
