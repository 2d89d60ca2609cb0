/*
 * mod_mailoauth - the worker's set of OAuth accounts
 *
 * Owns each configured account with its token lifecycle, loads the client
 * secrets (in the worker only, while it can still read root-only files, so
 * that neither the master nor the FTP sessions ever hold them), reports each
 * account's state when the worker starts, and keeps tokens alive on
 * schedule.
 */

#ifndef MOD_MAILOAUTH_REGISTRY_H
#define MOD_MAILOAUTH_REGISTRY_H

#include "mailoauth/account.h"
#include "mailoauth/tokens.h"

#include <sys/types.h>
#include <time.h>

#define MAILOAUTH_REGISTRY_MAX  64

struct mailoauth_registry;

struct mailoauth_registry *mailoauth_registry_create(const char *token_dir,
  uid_t owner, const char *signin_cmd_fmt);
void mailoauth_registry_destroy(struct mailoauth_registry *reg);

/* Parses and adds one account (the directive's arguments after NAME). */
int mailoauth_registry_add(struct mailoauth_registry *reg, const char *name,
  int argc, char *const *argv, char *errbuf, size_t errlen);

unsigned int mailoauth_registry_count(const struct mailoauth_registry *reg);

/* Reads the client secrets (as root, before the worker drops privileges);
 * an account whose secret cannot be read is logged and left out.  Returns
 * how many were loaded.
 */
int mailoauth_registry_load_secrets(struct mailoauth_registry *reg);

/* Creates the token handles; logs one line per account saying whether it
 * is ready.  Accounts that cannot start are logged and left out; returns
 * how many are ready.
 */
int mailoauth_registry_start(struct mailoauth_registry *reg, time_t now);

/* Runs the due token work; returns when next to call (0: nothing due). */
time_t mailoauth_registry_tick(struct mailoauth_registry *reg, time_t now);

const struct mailoauth_account *mailoauth_registry_account(
  const struct mailoauth_registry *reg, const char *name);
struct mailoauth_tokens *mailoauth_registry_tokens(
  struct mailoauth_registry *reg, const char *name);

/* Each account's token state and counters, as a JSON array (a new
 * reference, NULL when out of memory); see mailoauth_worker_status().
 */
struct json_t;
struct json_t *mailoauth_registry_status(
  const struct mailoauth_registry *reg, time_t now);

#endif /* MOD_MAILOAUTH_REGISTRY_H */
