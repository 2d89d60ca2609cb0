/*
 * ProFTPD - mod_mailoauth
 *
 * This program is free software; you can redistribute it and/or modify
 * it under the terms of the GNU General Public License as published by
 * the Free Software Foundation; either version 2 of the License, or
 * (at your option) any later version.
 */

#ifndef MOD_MAILOAUTH_H
#define MOD_MAILOAUTH_H

#include "mailoauth/version.h"

/* Make sure the version of proftpd is as necessary. */
#if PROFTPD_VERSION_NUMBER < 0x0001030800
# error "ProFTPD 1.3.8 or later required"
#endif

/* Shared by the glue files. */
const char *mailoauth_config_location(void);

/* The state directory when the engine is on, else NULL; the User. */
const char *mailoauth_get_state_dir(void);
uid_t mailoauth_get_uid(void);

/* Passes a request (control.h) to the supervisor without waiting: 0, or -1
 * with errno (ESRCH: no worker running; EAGAIN: it is not reading).
 */
int mailoauth_supervisor_request(uint32_t type, const void *data,
  size_t len);

/* ftpdctl mailoauth (mod_mailoauth_ctrls.c). */
modret_t *set_mailoauthcontrolsacls(cmd_rec *cmd);
void mailoauth_ctrls_init(pool *p);
void mailoauth_ctrls_restart(void);

/* The MailOAuthAccount of that name, or NULL. */
config_rec *mailoauth_account_find(const char *name);

modret_t *set_mailoauthnotify(cmd_rec *cmd);
modret_t *set_mailoauthingest(cmd_rec *cmd);
modret_t *set_mailoauthingestroute(cmd_rec *cmd);
int mailoauth_ingest_check_accounts(const char **bad_account,
  const char **where);
int mailoauth_ingest_check_transports(const char **bad_account,
  const char **where);
/* The MailOAuthIngest tasks (const struct mailoauth_ingest_config *). */
int mailoauth_notify_check_accounts(server_rec *s, const char **bad_account,
  const char **where);

/* Appends, for each MailOAuthNotify rule matching the upload, a record made
 * of the base fields (built with mailoauth_event_buf_init/add, unfinished)
 * and the rule's fields; a plain record when no rule matches.
 */
int mailoauth_notify_records(cmd_rec *cmd, const char *abs_path,
  const unsigned char *base, size_t base_len,
  int (*emit)(const unsigned char *rec, size_t len));

#endif /* MOD_MAILOAUTH_H */
