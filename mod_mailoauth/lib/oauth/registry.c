/*
 * mod_mailoauth - the worker's set of OAuth accounts
 */

#include "mailoauth/registry.h"
#include "mailoauth/assertion.h"
#include "mailoauth/jsonwrap.h"
#include "mailoauth/trace.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *trace_channel = "mailoauth.registry";

/* How often an account with nothing scheduled checks its token file. */
#define MAILOAUTH_REGISTRY_RECHECK_SECS 10

struct mailoauth_registry_entry {
  struct mailoauth_account acct;
  struct mailoauth_tokens *tokens;
  time_t next_due;
  int ready;
  int broken;               /* its secret could not be loaded */
  int announced;            /* "token ready" logged */
  char signin_cmd[512];
};

struct mailoauth_registry {
  char *token_dir;
  uid_t owner;
  char *signin_cmd_fmt;     /* printf format with one %s: the account */
  unsigned int n;
  struct mailoauth_registry_entry entries[MAILOAUTH_REGISTRY_MAX];
};

struct mailoauth_registry *mailoauth_registry_create(const char *token_dir,
    uid_t owner, const char *signin_cmd_fmt) {
  struct mailoauth_registry *reg;

  reg = calloc(1, sizeof(*reg));
  if (reg == NULL) {
    return NULL;
  }

  reg->token_dir = strdup(token_dir);
  reg->signin_cmd_fmt = strdup(signin_cmd_fmt);
  reg->owner = owner;
  if (reg->token_dir == NULL ||
      reg->signin_cmd_fmt == NULL) {
    mailoauth_registry_destroy(reg);
    errno = ENOMEM;
    return NULL;
  }

  return reg;
}

void mailoauth_registry_destroy(struct mailoauth_registry *reg) {
  unsigned int i;

  if (reg == NULL) {
    return;
  }

  for (i = 0; i < reg->n; i++) {
    mailoauth_tokens_destroy(reg->entries[i].tokens);
    mailoauth_account_clear(&reg->entries[i].acct);
  }

  free(reg->token_dir);
  free(reg->signin_cmd_fmt);
  free(reg);
}

static struct mailoauth_registry_entry *mailoauth_registry_find(
    const struct mailoauth_registry *reg, const char *name) {
  unsigned int i;

  for (i = 0; i < reg->n; i++) {
    if (strcmp(reg->entries[i].acct.name, name) == 0) {
      return (struct mailoauth_registry_entry *) &reg->entries[i];
    }
  }

  return NULL;
}

int mailoauth_registry_add(struct mailoauth_registry *reg, const char *name,
    int argc, char *const *argv, char *errbuf, size_t errlen) {
  struct mailoauth_registry_entry *e;

  if (mailoauth_registry_find(reg, name) != NULL) {
    snprintf(errbuf, errlen, "account '%s' is defined twice", name);
    errno = EEXIST;
    return -1;
  }

  if (reg->n >= MAILOAUTH_REGISTRY_MAX) {
    snprintf(errbuf, errlen, "too many accounts (at most %d)",
      MAILOAUTH_REGISTRY_MAX);
    errno = E2BIG;
    return -1;
  }

  e = &reg->entries[reg->n];
  memset(e, 0, sizeof(*e));
  if (mailoauth_account_parse(&e->acct, name, argc, argv, errbuf,
      errlen) < 0) {
    int xerrno = errno;

    mailoauth_account_clear(&e->acct);
    errno = xerrno;
    return -1;
  }

  reg->n++;
  return 0;
}

unsigned int mailoauth_registry_count(const struct mailoauth_registry *reg) {
  return reg->n;
}

static void mailoauth_registry_report(struct mailoauth_registry_entry *e,
    time_t now) {
  struct mailoauth_tokenstore_record rec;
  char err[512];

  memset(&rec, 0, sizeof(rec));
  if (mailoauth_tokens_status(e->tokens, &rec, err, sizeof(err)) < 0) {
    if (errno == ENOENT &&
        e->acct.oauth.grant == MAILOAUTH_OAUTH_GRANT_APP_ONLY) {
      mailoauth_log("account %s (%s, app-only): getting a token with the "
        "client credentials", e->acct.name, e->acct.mailbox);
    } else if (errno != ENOENT) {
      /* No token file of a delegated account: the first token request
       * says so, with the command to run.
       */
      mailoauth_log("account %s: %s", e->acct.name, err);
    }
    return;
  }

  if (rec.username != NULL &&
      strcasecmp(rec.username, e->acct.mailbox) != 0) {
    /* Exchange answers 554 5.2.252 SendAsDenied to a From that is not the
     * signed-in mailbox (unless it is a shared mailbox the user may send
     * as); say so now rather than at the first upload.
     */
    mailoauth_log("account %s: signed in as %s, but mailbox= is %s: Exchange "
      "refuses mail from another mailbox unless %s has Send As rights on it",
      e->acct.name, rec.username, e->acct.mailbox, rec.username);
  }

  if (rec.access_expires > now) {
    mailoauth_log("account %s (%s, %s): signed in as %s; access token valid "
      "for %ld more minutes", e->acct.name, e->acct.mailbox,
      mailoauth_oauth_grant_name(e->acct.oauth.grant),
      rec.username ? rec.username : "(unknown)",
      (long) (rec.access_expires - now) / 60);
  } else {
    mailoauth_log("account %s (%s, %s): signed in as %s", e->acct.name,
      e->acct.mailbox, mailoauth_oauth_grant_name(e->acct.oauth.grant),
      rec.username ? rec.username : "(unknown)");
  }

  mailoauth_tokenstore_record_free(&rec);
}

/* A credential that expires within this many days is worth a log line at
 * every worker start: by then someone must upload a new one.
 */
#define MAILOAUTH_REGISTRY_EXPIRY_WARN_DAYS   30

static void mailoauth_registry_expiry(const struct mailoauth_registry_entry *e,
    const char *what, const char *id, time_t expires, time_t now) {
  char date[32];
  struct tm tm;
  long days;

  if (expires == 0 ||
      expires - now > MAILOAUTH_REGISTRY_EXPIRY_WARN_DAYS * 86400L) {
    return;
  }

  gmtime_r(&expires, &tm);
  strftime(date, sizeof(date), "%Y-%m-%d", &tm);
  if (expires <= now) {
    mailoauth_log("account %s: its %s%s expired on %s: the token service "
      "refuses it; add a new one to the app registration (Certificates & "
      "secrets) and to this server", e->acct.name, what, id, date);
    return;
  }

  days = (long) ((expires - now + 86399) / 86400);
  mailoauth_log("account %s: its %s%s expires on %s, in %ld day%s: add a "
    "new one to the app registration (Certificates & secrets) and to this "
    "server before then", e->acct.name, what, id, date, days,
    days == 1 ? "" : "s");
}

/* The certificate's or declared secret's end, said at start-up. */
static void mailoauth_registry_check_expiry(
    const struct mailoauth_registry_entry *e, time_t now) {
  const struct mailoauth_oauth_config *oc = &e->acct.oauth;

  if (oc->client_cert_pem != NULL) {
    struct mailoauth_cert_info info;
    char err[256], id[80];

    if (mailoauth_assertion_cert_info(oc->client_cert_pem,
        strlen(oc->client_cert_pem), &info, err, sizeof(err)) == 0) {
      snprintf(id, sizeof(id), " (thumbprint %s)", info.sha1);
      mailoauth_registry_expiry(e, "certificate", id, info.not_after, now);
    }
  }

  mailoauth_registry_expiry(e, "client secret", "", e->acct.secret_expires,
    now);
}

int mailoauth_registry_load_secrets(struct mailoauth_registry *reg) {
  unsigned int i;
  int loaded = 0;

  for (i = 0; i < reg->n; i++) {
    struct mailoauth_registry_entry *e = &reg->entries[i];
    char err[512];

    if (mailoauth_account_load_secret(&e->acct, err, sizeof(err)) < 0) {
      mailoauth_log("account %s cannot be used: %s", e->acct.name, err);
      e->broken = 1;
      continue;
    }
    loaded++;
  }

  return loaded;
}

int mailoauth_registry_start(struct mailoauth_registry *reg, time_t now) {
  unsigned int i;
  int ready = 0;

  for (i = 0; i < reg->n; i++) {
    struct mailoauth_registry_entry *e = &reg->entries[i];
    char err[512];

    if (e->broken) {
      continue;
    }

    snprintf(e->signin_cmd, sizeof(e->signin_cmd), reg->signin_cmd_fmt,
      e->acct.name);
    e->tokens = mailoauth_tokens_create(&e->acct, reg->token_dir, reg->owner,
      e->signin_cmd, err, sizeof(err));
    if (e->tokens == NULL) {
      mailoauth_log("account %s cannot be used: %s", e->acct.name, err);
      continue;
    }

    e->ready = 1;
    e->next_due = now;
    mailoauth_registry_report(e, now);
    mailoauth_registry_check_expiry(e, now);
    ready++;
  }

  mailoauth_trace(trace_channel, 5, "%d of %u accounts ready", ready, reg->n);
  return ready;
}

time_t mailoauth_registry_tick(struct mailoauth_registry *reg, time_t now) {
  time_t next = 0;
  unsigned int i;

  for (i = 0; i < reg->n; i++) {
    struct mailoauth_registry_entry *e = &reg->entries[i];

    if (!e->ready) {
      continue;
    }

    if (e->next_due != 0 &&
        e->next_due <= now) {
      mailoauth_oauth_class_t cls = MAILOAUTH_OAUTH_OK;

      /* get() refreshes when the token is near expiry or the keep-alive is
       * due, and logs any change of state itself.
       */
      if (mailoauth_tokens_get(e->tokens, now, &cls) == NULL) {
        mailoauth_trace(trace_channel, 8, "account %s: no token (%s)",
          e->acct.name, mailoauth_oauth_class_name(cls));

      } else if (!e->announced) {
        mailoauth_log("account %s (%s, %s): token ready", e->acct.name,
          e->acct.mailbox, mailoauth_oauth_grant_name(e->acct.oauth.grant));
        e->announced = 1;
      }

      e->next_due = mailoauth_tokens_next_due(e->tokens, now);

      /* An account waiting for a person to sign in again has nothing
       * scheduled; look at its token file now and then, so a new sign-in
       * is noticed (and announced) without waiting for mail.
       */
      if (e->next_due == 0) {
        e->next_due = now + MAILOAUTH_REGISTRY_RECHECK_SECS;
      }
    }

    if (e->next_due != 0 &&
        (next == 0 || e->next_due < next)) {
      next = e->next_due;
    }
  }

  return next;
}

const struct mailoauth_account *mailoauth_registry_account(
    const struct mailoauth_registry *reg, const char *name) {
  struct mailoauth_registry_entry *e = mailoauth_registry_find(reg, name);

  return e ? &e->acct : NULL;
}

struct mailoauth_tokens *mailoauth_registry_tokens(
    struct mailoauth_registry *reg, const char *name) {
  struct mailoauth_registry_entry *e = mailoauth_registry_find(reg, name);

  return (e && e->ready) ? e->tokens : NULL;
}

/* A time as a JSON integer, null for "none". */
static json_t *mailoauth_registry_time(time_t t) {
  return t != 0 ? json_integer((json_int_t) t) : json_null();
}

static const char *mailoauth_registry_state(
    const struct mailoauth_registry_entry *e,
    const struct mailoauth_tokens_info *info) {
  if (e->broken) {
    return "no-secret";
  }
  if (e->tokens == NULL) {
    return "not-started";
  }
  if (!info->signed_in) {
    return "not-signed-in";
  }

  switch (info->blocked) {
    case MAILOAUTH_OAUTH_OK:
      return "ok";
    case MAILOAUTH_OAUTH_REAUTH:
      return "sign-in-needed";
    case MAILOAUTH_OAUTH_CONFIG:
      return "config-error";
    default:
      return "retrying";
  }
}

struct json_t *mailoauth_registry_status(const struct mailoauth_registry *reg,
    time_t now) {
  json_t *list = json_array();
  unsigned int i;

  for (i = 0; list != NULL && i < reg->n; i++) {
    const struct mailoauth_registry_entry *e = &reg->entries[i];
    struct mailoauth_tokens_info info;
    json_t *acct, *err = json_null();

    mailoauth_tokens_info(e->tokens, now, &info);
    if (info.error_class != NULL) {
      err = json_pack("{s:o, s:o, s:o}", "class",
        mailoauth_json_text(info.error_class), "message",
        mailoauth_json_text(info.error_message),
        "at", mailoauth_registry_time(info.error_at));
    }

    acct = json_pack("{s:s, s:s, s:s, s:o, s:o, s:o, s:I, s:I, s:o}",
      "name", e->acct.name,
      "grant", mailoauth_oauth_grant_name(e->acct.oauth.grant),
      "state", mailoauth_registry_state(e, &info),
      "access_expires", mailoauth_registry_time(info.access_expires),
      "next_refresh", mailoauth_registry_time(info.next_due),
      "refresh_token_lapses", mailoauth_registry_time(info.last_use != 0 ?
        info.last_use + MAILOAUTH_TOKENS_REFRESH_LIFETIME : 0),
      "refreshes", (json_int_t) info.refreshes,
      "refresh_failures", (json_int_t) info.refresh_failures,
      "last_error", err ? err : json_null());
    (void) json_array_append_new(list, acct);
  }

  return list;
}
