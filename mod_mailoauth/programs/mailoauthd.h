/*
 * mailoauthd - the programs of mod_mailoauth's roles
 *
 * proftpd's master starts "mailoauthd supervisor" by fork+exec; the
 * supervisor starts and restarts the worker ("mailoauthd worker"), which
 * starts its helpers ("mailoauthd deposit", root, writing files as
 * their owners; "mailoauthd parser", User, parsing the fetched mail;
 * "mailoauthd tnef", unpacking winmail.dat in sandboxed children).  Each is a fresh image holding only what its role needs.
 *
 * Descriptors of the supervisor and the worker:
 *   3  control socket: the configuration (wconf.h), then EOF when the
 *      process above is gone
 *   4  MailOAuthLog (or /dev/null)
 *   5  TraceLog (or /dev/null)
 */

#ifndef MAILOAUTHD_H
#define MAILOAUTHD_H

#include "mailoauth/wconf.h"

#define MAILOAUTHD_CONTROL_FD   3
#define MAILOAUTHD_LOG_FD       4
#define MAILOAUTHD_TRACE_FD     5

/* What the supervisor and the worker know. */
struct mailoauthd {
  struct mailoauth_wconf conf;
  char *conf_json;              /* as received, to hand on */
  size_t conf_len;
};

/* Sends the log and trace units' output to descriptors 4 and 5. */
void mailoauthd_sinks(const struct mailoauth_wconf *conf);

/* Becomes uid/gid with no other group.  0, or -1 with errno. */
int mailoauthd_drop_privs(uid_t uid, gid_t gid);

/* The roles; each returns the process's exit status. */
int mailoauthd_supervisor_main(struct mailoauthd *d);
int mailoauthd_worker_main(struct mailoauthd *d);
int mailoauthd_deposit_main(int argc, char **argv);
int mailoauthd_tnef_main(int argc, char **argv);
int mailoauthd_parser_main(int argc, char **argv);

#endif /* MAILOAUTHD_H */
