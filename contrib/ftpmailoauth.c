/*
 * ftpmailoauth - sign in, check and test mod_mailoauth's OAuth mail accounts
 *
 * The operator's side of mod_mailoauth: a person signs in once (browser,
 * or device code on a headless server), the tool stores the tokens where
 * the server's worker finds them, and from then on the worker refreshes
 * them by itself.  `status` shows what the token files say, `test` logs in
 * to the account's SMTP and IMAP servers exactly as the worker does.
 *
 * Accounts come from proftpd.conf (MailOAuthAccount, parsed by the same
 * code as the module's) or entirely from command-line flags.
 *
 * Nothing secret is ever printed: not the client secret, not a token, not
 * an authorization code, PKCE verifier or device code.
 */

#include "mailoauth/account.h"
#include "mailoauth/assertion.h"
#include "mailoauth/control.h"
#include "mailoauth/graph.h"
#include "mailoauth/mailauth.h"
#include "mailoauth/message.h"
#include "mailoauth/oauth.h"
#include "mailoauth/redis.h"
#include "mailoauth/tokens.h"
#include "mailoauth/tokenstore.h"
#include "mailoauth/trace.h"

#include "confread.h"
#include "listener.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include "mailoauth/jsonwrap.h"
#include <openssl/crypto.h>
#include <openssl/evp.h>

#define FTPMAILOAUTH_PROG             "ftpmailoauth"
#define FTPMAILOAUTH_DEFAULT_CONFIG   "/etc/proftpd/proftpd.conf"
#define FTPMAILOAUTH_DEFAULT_STATEDIR "/var/lib/proftpd/mailoauth"
#define FTPMAILOAUTH_DEFAULT_TIMEOUT  600

/* Microsoft's refresh tokens lapse after 90 days unused; warn well before. */
#define FTPMAILOAUTH_REFRESH_LIFETIME (90L * 86400)
#define FTPMAILOAUTH_REFRESH_WARN     (60L * 86400)

/* Certificates and declared secret expiry: warn this long before. */
#define FTPMAILOAUTH_CREDENTIAL_WARN  (30L * 86400)

#define FTPMAILOAUTH_MAX_FLAGS        24
#define FTPMAILOAUTH_MAX_CERTS        64

#define FTPMAILOAUTH_EXIT_OK          0
#define FTPMAILOAUTH_EXIT_FAIL        1
#define FTPMAILOAUTH_EXIT_USAGE       2

struct ftpmailoauth_opts {
  const char *config;
  int config_given;
  const char *token_dir;
  const char *owner;
  int device;
  int no_listen;
  int verbose;
  int json;
  long timeout;

  /* Account settings from flags, as key=value words for the parser. */
  char *flags[FTPMAILOAUTH_MAX_FLAGS];
  int nflags;
};

/* What every command works with once the configuration is read. */
struct ftpmailoauth_env {
  struct ftpmailoauth_opts *opts;
  struct ftpmailoauth_conf conf;
  int have_conf;
  char *state_dir;
  char *token_dir;
  uid_t uid;
  gid_t gid;
  char owner_name[64];
  struct mailoauth_redis *cluster;    /* MailOAuthRedis; NULL: none */
};

static int ftpmailoauth_verbose = 0;

/* Errors of a look-ahead that the real pass reports again: not twice. */
static int ftpmailoauth_quiet = 0;

/* ------------------------------------------------------------------------
 * Output.
 */

static void ftpmailoauth_err(const char *fmt, ...)
#ifdef __GNUC__
  __attribute__((format(printf, 1, 2)))
#endif
  ;

static void ftpmailoauth_err(const char *fmt, ...) {
  va_list ap;

  if (ftpmailoauth_quiet) {
    return;
  }

  fflush(stdout);
  fprintf(stderr, FTPMAILOAUTH_PROG ": ");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

static void ftpmailoauth_warn(const char *fmt, ...)
#ifdef __GNUC__
  __attribute__((format(printf, 1, 2)))
#endif
  ;

static void ftpmailoauth_warn(const char *fmt, ...) {
  va_list ap;

  fflush(stdout);
  fprintf(stderr, "WARNING: ");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

/* Operator-facing lines of the units (tokens.c) go to the terminal. */
static void ftpmailoauth_log_sink(const char *fmt, va_list ap) {
  fflush(stdout);
  fprintf(stderr, FTPMAILOAUTH_PROG ": ");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
}

static void ftpmailoauth_trace_sink(const char *channel, int level,
    const char *fmt, va_list ap) {
  if (level > ftpmailoauth_verbose + 6) {
    return;
  }

  fprintf(stderr, FTPMAILOAUTH_PROG ": [%s:%d] ", channel, level);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
}

/* "3d 4h", "2h 5m", "5m 3s", "45s". */
static const char *ftpmailoauth_duration(long secs, char *buf, size_t len) {
  if (secs < 0) {
    secs = -secs;
  }

  if (secs >= 86400) {
    snprintf(buf, len, "%ldd %ldh", secs / 86400, (secs % 86400) / 3600);
  } else if (secs >= 3600) {
    snprintf(buf, len, "%ldh %ldm", secs / 3600, (secs % 3600) / 60);
  } else if (secs >= 60) {
    snprintf(buf, len, "%ldm %lds", secs / 60, secs % 60);
  } else {
    snprintf(buf, len, "%lds", secs);
  }
  return buf;
}

static const char *ftpmailoauth_when(time_t t, char *buf, size_t len) {
  struct tm tm;

  if (t == 0 ||
      localtime_r(&t, &tm) == NULL ||
      strftime(buf, len, "%Y-%m-%d %H:%M:%S %Z", &tm) == 0) {
    snprintf(buf, len, "unknown");
  }
  return buf;
}

/* "in 58m 3s (2025-11-28 17:15:02 UTC)" or "2h 1m ago (...)". */
static const char *ftpmailoauth_relative(time_t t, time_t now, char *buf,
    size_t len) {
  char dur[32], abs[64];

  ftpmailoauth_duration((long) (t - now), dur, sizeof(dur));
  ftpmailoauth_when(t, abs, sizeof(abs));
  snprintf(buf, len, t > now ? "in %s (%s)" : "%s ago (%s)", dur, abs);
  return buf;
}

/* "59m 59s (until 2025-11-28 17:15:02 UTC)". */
static const char *ftpmailoauth_validity(time_t expires, char *buf,
    size_t len) {
  char dur[32], abs[64];
  time_t now = time(NULL);

  if (expires == 0) {
    snprintf(buf, len, "an unstated time");
    return buf;
  }

  snprintf(buf, len, "%s (until %s)", ftpmailoauth_duration((long) (expires -
    now), dur, sizeof(dur)), ftpmailoauth_when(expires, abs, sizeof(abs)));
  return buf;
}

/* HTML-escaped copy, for the pages shown in the browser. */
static char *ftpmailoauth_html_escape(const char *s) {
  size_t len = 1;
  const char *p;
  char *out, *o;

  for (p = s; *p != '\0'; p++) {
    len += (*p == '&' || *p == '<' || *p == '>' || *p == '"' || *p == '\'') ?
      6 : 1;
  }

  out = o = malloc(len);
  if (out == NULL) {
    return NULL;
  }

  for (p = s; *p != '\0'; p++) {
    switch (*p) {
      case '&': o += sprintf(o, "&amp;"); break;
      case '<': o += sprintf(o, "&lt;"); break;
      case '>': o += sprintf(o, "&gt;"); break;
      case '"': o += sprintf(o, "&quot;"); break;
      case '\'': o += sprintf(o, "&#39;"); break;
      default: *o++ = *p; break;
    }
  }
  *o = '\0';
  return out;
}

/* A plain page: a heading and paragraphs of text (escaped here). */
static char *ftpmailoauth_page(const char *title, const char *const *paras) {
  char *page, *t = ftpmailoauth_html_escape(title);
  size_t len, used;
  unsigned int i;

  if (t == NULL) {
    return NULL;
  }

  len = 512 + 2 * strlen(t);
  for (i = 0; paras[i] != NULL; i++) {
    len += 6 * strlen(paras[i]) + 16;
  }

  page = malloc(len);
  if (page == NULL) {
    free(t);
    return NULL;
  }

  used = (size_t) snprintf(page, len, "<!DOCTYPE html>\n<html><head>"
    "<meta charset=\"utf-8\"><title>%s</title></head>\n<body style=\""
    "font-family: sans-serif; max-width: 40em; margin: 3em auto\">\n"
    "<h1>%s</h1>\n", t, t);

  for (i = 0; paras[i] != NULL; i++) {
    char *p = ftpmailoauth_html_escape(paras[i]);

    if (p != NULL) {
      used += (size_t) snprintf(page + used, len - used, "<p>%s</p>\n", p);
      free(p);
    }
  }

  snprintf(page + used, len - used, "</body></html>\n");
  free(t);
  return page;
}

/* ------------------------------------------------------------------------
 * Configuration.
 */

static const char *ftpmailoauth_config_path(const struct ftpmailoauth_opts *o) {
  return o->config != NULL ? o->config : FTPMAILOAUTH_DEFAULT_CONFIG;
}

static void ftpmailoauth_signin_cmd(const struct ftpmailoauth_env *env,
    const char *name, char *buf, size_t len) {
  if (env->opts->config_given) {
    snprintf(buf, len, FTPMAILOAUTH_PROG " -c %s signin %s",
      env->opts->config, name);
  } else {
    snprintf(buf, len, FTPMAILOAUTH_PROG " signin %s", name);
  }
}

static int ftpmailoauth_resolve_owner(struct ftpmailoauth_env *env) {
  const struct ftpmailoauth_conf_value *user = &env->conf.user;
  const struct ftpmailoauth_conf_value *group = &env->conf.group;
  const char *name = env->opts->owner;
  const char *where = "--owner";
  struct passwd *pw = NULL;
  struct stat st;

  if (name == NULL && user->value != NULL) {
    name = user->value;
    where = user->where;
  }

  env->uid = geteuid();
  env->gid = getegid();

  if (name != NULL) {
    pw = getpwnam(name);
    if (pw == NULL) {
      ftpmailoauth_err("%s: User %s: no such user on this system", where,
        name);
      return -1;
    }
    env->uid = pw->pw_uid;
    env->gid = pw->pw_gid;

  } else if (stat(env->token_dir, &st) == 0) {
    /* No User to go by: whoever owns the token directory already. */
    env->uid = st.st_uid;
    env->gid = st.st_gid;
  }

  if (group->value != NULL) {
    struct group *gr = getgrnam(group->value);

    if (gr == NULL) {
      ftpmailoauth_err("%s: Group %s: no such group on this system",
        group->where, group->value);
      return -1;
    }
    env->gid = gr->gr_gid;
  }

  pw = getpwuid(env->uid);
  if (pw != NULL) {
    snprintf(env->owner_name, sizeof(env->owner_name), "%s", pw->pw_name);
  } else {
    snprintf(env->owner_name, sizeof(env->owner_name), "uid %lu",
      (unsigned long) env->uid);
  }
  return 0;
}

static int ftpmailoauth_env_init(struct ftpmailoauth_env *env,
    struct ftpmailoauth_opts *opts) {
  const char *path = ftpmailoauth_config_path(opts);
  char err[1024];

  memset(env, 0, sizeof(*env));
  env->opts = opts;

  /* Without -c, a missing default file is fine when flags say it all. */
  if (opts->config_given ||
      opts->nflags == 0 ||
      access(path, F_OK) == 0) {
    if (ftpmailoauth_conf_read(path, &env->conf, err, sizeof(err)) < 0) {
      ftpmailoauth_err("%s", err);
      return -1;
    }
    env->have_conf = 1;
  }

  env->state_dir = strdup(env->conf.state_dir.value != NULL ?
    env->conf.state_dir.value : FTPMAILOAUTH_DEFAULT_STATEDIR);
  if (opts->token_dir != NULL) {
    env->token_dir = strdup(opts->token_dir);

  } else if (env->state_dir != NULL &&
             (env->token_dir = malloc(strlen(env->state_dir) + 8)) != NULL) {
    sprintf(env->token_dir, "%s/tokens", env->state_dir);
  }

  if (env->state_dir == NULL || env->token_dir == NULL) {
    ftpmailoauth_err("out of memory");
    return -1;
  }

  /* A cluster: what the tool stores, every node's worker uses. */
  if (env->conf.redis.argc > 0) {
    env->cluster = mailoauth_redis_open(env->conf.redis.argc,
      env->conf.redis.argv, NULL, err, sizeof(err));
    if (env->cluster == NULL) {
      ftpmailoauth_err("%s: MailOAuthRedis: %s", env->conf.redis.where, err);
      return -1;
    }
    mailoauth_tokens_use_cluster(env->cluster);
  }

  return ftpmailoauth_resolve_owner(env);
}

static void ftpmailoauth_env_free(struct ftpmailoauth_env *env) {
  mailoauth_tokens_use_cluster(NULL);
  mailoauth_redis_destroy(env->cluster);
  env->cluster = NULL;
  ftpmailoauth_conf_free(&env->conf);
  free(env->state_dir);
  free(env->token_dir);
}

static void ftpmailoauth_list_accounts(const struct ftpmailoauth_env *env,
    char *buf, size_t len) {
  unsigned int i;
  size_t used = 0;

  buf[0] = '\0';
  for (i = 0; i < env->conf.naccounts && used + 2 < len; i++) {
    used += (size_t) snprintf(buf + used, len - used, "%s%s", i ? ", " : "",
      env->conf.accounts[i].name);
  }
}

/* The account: its proftpd.conf words, then any flags (later wins).
 * Returns 0, or an exit code.
 */
static int ftpmailoauth_load_account(const struct ftpmailoauth_env *env,
    const char *name, struct mailoauth_account *acct, int with_secret) {
  const struct ftpmailoauth_conf_account *ca;
  const char *where = "command line";
  char *argv[256], err[1024], list[512];
  int argc = 0, i;

  memset(acct, 0, sizeof(*acct));
  ca = ftpmailoauth_conf_find(&env->conf, name);

  if (ca == NULL && env->opts->nflags == 0) {
    ftpmailoauth_list_accounts(env, list, sizeof(list));
    ftpmailoauth_err("no MailOAuthAccount named '%s' in %s%s%s%s", name,
      ftpmailoauth_config_path(env->opts), list[0] ? " (accounts: " : "",
      list, list[0] ? ")" : "");
    return FTPMAILOAUTH_EXIT_USAGE;
  }

  if (ca != NULL) {
    where = ca->where;
    for (i = 0; i < ca->argc && argc < 200; i++) {
      argv[argc++] = ca->argv[i];
    }
  }

  for (i = 0; i < env->opts->nflags && argc < 255; i++) {
    argv[argc++] = env->opts->flags[i];
  }

  if (mailoauth_account_parse(acct, name, argc, argv, err, sizeof(err)) < 0) {
    ftpmailoauth_err("%s: MailOAuthAccount %s: %s", where, name, err);
    mailoauth_account_clear(acct);
    return FTPMAILOAUTH_EXIT_USAGE;
  }

  if (with_secret &&
      mailoauth_account_load_secret(acct, err, sizeof(err)) < 0) {
    ftpmailoauth_err("%s: MailOAuthAccount %s: %s", where, name, err);
    mailoauth_account_clear(acct);
    return FTPMAILOAUTH_EXIT_USAGE;
  }

  return 0;
}

/* The top directory (the state directory, or --token-dir), when the server
 * has never run: made by root in its (root's) parent and handed to User
 * through the descriptor of the directory just made, never by a path
 * someone else could swap.
 */
static int ftpmailoauth_make_state_dir(const struct ftpmailoauth_env *env) {
  const char *dir = env->opts->token_dir != NULL ? env->token_dir :
    env->state_dir;
  struct stat st;
  int fd;

  if (geteuid() != 0 ||
      mkdir(dir, 0700) < 0) {
    return 0;
  }

  fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0 ||
      fstat(fd, &st) < 0) {
    ftpmailoauth_err("cannot open %s: %s", dir, strerror(errno));
    if (fd >= 0) {
      (void) close(fd);
    }
    return -1;
  }

  /* Still the empty directory root just made, not one put in its place. */
  if (st.st_uid != 0 ||
      st.st_nlink != 2) {
    (void) close(fd);
    ftpmailoauth_err("%s changed while it was being made: look at it, then "
      "try again", dir);
    return -1;
  }

  if (fchown(fd, env->uid, env->gid) < 0) {
    ftpmailoauth_err("cannot give %s to %s: %s", dir,
      env->owner_name, strerror(errno));
    (void) close(fd);
    return -1;
  }

  (void) close(fd);
  return 0;
}

/* Root only reads the configuration and the client secret: whatever is
 * done in the state directory, which belongs to User, is done as User.
 */
static int ftpmailoauth_become_owner(const struct ftpmailoauth_env *env) {
  if (geteuid() != 0 ||
      env->uid == 0) {
    return 0;
  }

  if (ftpmailoauth_make_state_dir(env) < 0) {
    return -1;
  }

  if (setgroups(1, &env->gid) < 0 ||
      setresgid(env->gid, env->gid, env->gid) < 0 ||
      setresuid(env->uid, env->uid, env->uid) < 0) {
    ftpmailoauth_err("cannot become %s (uid %lu, gid %lu): %s",
      env->owner_name, (unsigned long) env->uid, (unsigned long) env->gid,
      strerror(errno));
    return -1;
  }

  /* Paranoia: there must be no way back. */
  if (setuid(0) == 0 ||
      seteuid(0) == 0) {
    ftpmailoauth_err("root could be regained after becoming %s: refusing "
      "to go on", env->owner_name);
    return -1;
  }

  return 0;
}

/* A directory of ours, made 0700 by User itself. */
static int ftpmailoauth_ensure_dir(const struct ftpmailoauth_env *env,
    const char *dir) {
  struct stat st;

  if (mkdir(dir, 0700) == 0) {
    return 0;
  }

  if (errno != EEXIST) {
    ftpmailoauth_err("cannot create %s as %s: %s (the server creates it at "
      "start; or make its parent writable by %s)", dir, env->owner_name,
      strerror(errno), env->owner_name);
    return -1;
  }

  if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
    ftpmailoauth_err("%s is not a directory (symbolic links are refused)",
      dir);
    return -1;
  }

  if (st.st_uid != env->uid) {
    ftpmailoauth_warn("%s belongs to uid %lu, not to the server's User %s: "
      "the server cannot update its tokens there (chown %s '%s')", dir,
      (unsigned long) st.st_uid, env->owner_name, env->owner_name, dir);
  }
  return 0;
}

static int ftpmailoauth_prepare_dirs(const struct ftpmailoauth_env *env) {
  if (env->opts->token_dir == NULL &&
      ftpmailoauth_ensure_dir(env, env->state_dir) < 0) {
    return -1;
  }
  return ftpmailoauth_ensure_dir(env, env->token_dir);
}

static struct mailoauth_tokens *ftpmailoauth_tokens(
    const struct ftpmailoauth_env *env, const struct mailoauth_account *acct) {
  struct mailoauth_tokens *t;
  char cmd[512], err[1024];

  ftpmailoauth_signin_cmd(env, acct->name, cmd, sizeof(cmd));
  t = mailoauth_tokens_create(acct, env->token_dir, env->uid, cmd, err,
    sizeof(err));
  if (t == NULL) {
    ftpmailoauth_err("account %s: %s", acct->name, err);
  }
  return t;
}

/* ------------------------------------------------------------------------
 * What a sign-in granted.
 */

static int ftpmailoauth_has_scope(const char *scopes, const char *which) {
  return scopes != NULL && strcasestr(scopes, which) != NULL;
}

static int ftpmailoauth_is_microsoft(const struct mailoauth_account *acct) {
  return acct->oauth.provider == MAILOAUTH_OAUTH_PROVIDER_MICROSOFT ||
    acct->oauth.provider == MAILOAUTH_OAUTH_PROVIDER_MICROSOFT_USGOV ||
    acct->oauth.provider == MAILOAUTH_OAUTH_PROVIDER_MICROSOFT_CHINA;
}

static void ftpmailoauth_check_identity(const struct mailoauth_account *acct,
    const char *username) {
  if (username == NULL) {
    ftpmailoauth_warn("the sign-in did not say who signed in (no id_token): "
      "make sure it was %s", acct->mailbox);
    return;
  }

  if (strcasecmp(username, acct->mailbox) != 0) {
    ftpmailoauth_warn("signed in as %s, but the account's mailbox is %s. "
      "Exchange refuses mail whose From is not the signed-in mailbox "
      "(554 5.2.252 SendAsDenied) and logins as %s with this token fail, "
      "unless %s has Send As / Full Access rights on %s (a shared mailbox). "
      "Sign in again as %s (a private browser window avoids the wrong "
      "session), or set mailbox=%s.", username, acct->mailbox,
      acct->mailbox, username, acct->mailbox, acct->mailbox, username);
  }
}

static void ftpmailoauth_check_scopes(const struct mailoauth_account *acct,
    const char *scope) {
  if (!ftpmailoauth_is_microsoft(acct)) {
    return;
  }

  if (acct->transport == MAILOAUTH_ACCOUNT_TRANSPORT_GRAPH) {
    /* Graph's answer names its permissions bare ("Mail.Send"). */
    if (!ftpmailoauth_has_scope(scope, "Mail.Send")) {
      ftpmailoauth_warn("Mail.Send was not granted: notifications through "
        "Microsoft Graph (transport=graph) cannot be sent. Add the "
        "Microsoft Graph delegated permission Mail.Send under API "
        "permissions of the app registration, grant consent, and sign in "
        "again.");
    }
    return;
  }

  if (!ftpmailoauth_has_scope(scope, "SMTP.Send")) {
    ftpmailoauth_warn("SMTP.Send was not granted: upload notifications "
      "cannot be sent. Add the delegated permission SMTP.Send under API "
      "permissions of the app registration, grant consent, and sign in "
      "again.");
  }

  if (!ftpmailoauth_has_scope(scope, "IMAP.AccessAsUser.All")) {
    ftpmailoauth_warn("IMAP.AccessAsUser.All was not granted: mail-to-folder "
      "tasks cannot read mail. Add the delegated permission "
      "IMAP.AccessAsUser.All under API permissions, grant consent, and sign "
      "in again.");
  }
}

static void ftpmailoauth_token_path(const struct ftpmailoauth_env *env,
    const struct mailoauth_account *acct, char *buf, size_t len) {
  snprintf(buf, len, "%s/%s.json", env->token_dir, acct->name);
}

static void ftpmailoauth_report_signin(const struct ftpmailoauth_env *env,
    const struct mailoauth_account *acct,
    const struct mailoauth_oauth_response *resp) {
  const struct mailoauth_oauth_identity *id = &resp->identity;
  char rel[128], path[PATH_MAX + 80];

  ftpmailoauth_token_path(env, acct, path, sizeof(path));

  if (id->username != NULL) {
    printf("Signed in as %s%s%s%s.\n", id->username,
      id->name != NULL ? " (" : "", id->name != NULL ? id->name : "",
      id->name != NULL ? ")" : "");
  } else {
    printf("Signed in.\n");
  }

  printf("Granted scopes: %s\n", resp->scope != NULL ? resp->scope :
    "(not stated)");
  printf("Access token: valid for %s\n", ftpmailoauth_validity(
    resp->expires_at, rel, sizeof(rel)));
  printf("Refresh token: %s\n", resp->refresh_token != NULL ?
    "received; the server renews it by itself from now on" : "NONE");
  printf("Token file: %s (owner %s)\n", path, env->owner_name);
  fflush(stdout);

  ftpmailoauth_check_identity(acct, id->username);
  ftpmailoauth_check_scopes(acct, resp->scope);

  if (resp->refresh_token == NULL) {
    ftpmailoauth_warn("no refresh token was issued (offline_access not "
      "granted?): the server cannot renew access when this token expires");
  }
}

/* The "roles" claim of an app-only access token.  Clients must not rely
 * on reading access tokens; this is a diagnostic and says so when it
 * cannot tell.
 */
static int ftpmailoauth_token_roles(const char *token, char *buf,
    size_t len) {
  const char *p1 = strchr(token, '.'), *p2;
  unsigned char *raw = NULL;
  char *b64 = NULL;
  json_t *claims = NULL, *roles;
  size_t n, i, used = 0;
  int res = -1, dec;

  if (p1 == NULL || (p2 = strchr(p1 + 1, '.')) == NULL) {
    return -1;
  }

  n = (size_t) (p2 - p1 - 1);
  b64 = malloc(n + 4);
  raw = malloc(n + 4);
  if (b64 == NULL || raw == NULL) {
    goto out;
  }

  for (i = 0; i < n; i++) {
    char c = p1[1 + i];

    b64[i] = c == '-' ? '+' : c == '_' ? '/' : c;
  }
  while (i % 4 != 0) {
    b64[i++] = '=';
  }

  dec = EVP_DecodeBlock(raw, (unsigned char *) b64, (int) i);
  if (dec < 0) {
    goto out;
  }

  /* Padding decodes to trailing NULs, which the JSON parser must not
   * see.
   */
  while (dec > 0 && raw[dec - 1] == '\0') {
    dec--;
  }

  claims = json_loadb((const char *) raw, (size_t) dec, 0, NULL);
  roles = json_object_get(claims, "roles");
  buf[0] = '\0';
  if (json_is_array(roles)) {
    for (i = 0; i < json_array_size(roles) && used + 2 < len; i++) {
      json_t *r = json_array_get(roles, i);

      if (json_is_string(r)) {
        used += (size_t) snprintf(buf + used, len - used, "%s%s",
          used > 0 ? ", " : "", json_string_value(r));
      }
    }
  }
  res = claims != NULL ? 0 : -1;

out:
  json_decref(claims);
  if (b64 != NULL) {
    OPENSSL_cleanse(b64, n + 4);
  }
  if (raw != NULL) {
    OPENSSL_cleanse(raw, n + 4);
  }
  free(b64);
  free(raw);
  return res;
}

/* ------------------------------------------------------------------------
 * Sign-in: the browser's answer.
 */

struct ftpmailoauth_callback {
  char *code;
  char *state;
  char *error;
  char *error_description;
};

static int ftpmailoauth_hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static char *ftpmailoauth_unescape(const char *s, size_t len) {
  char *out = malloc(len + 1), *o = out;
  size_t i;

  if (out == NULL) {
    return NULL;
  }

  for (i = 0; i < len; i++) {
    if (s[i] == '+') {
      *o++ = ' ';

    } else if (s[i] == '%' && i + 2 < len &&
               ftpmailoauth_hexval(s[i + 1]) >= 0 &&
               ftpmailoauth_hexval(s[i + 2]) >= 0) {
      *o++ = (char) (ftpmailoauth_hexval(s[i + 1]) * 16 +
        ftpmailoauth_hexval(s[i + 2]));
      i += 2;

    } else {
      *o++ = s[i];
    }
  }
  *o = '\0';
  return out;
}

static void ftpmailoauth_callback_clear(struct ftpmailoauth_callback *cb) {
  if (cb->code != NULL) {
    OPENSSL_cleanse(cb->code, strlen(cb->code));
  }
  free(cb->code);
  free(cb->state);
  free(cb->error);
  free(cb->error_description);
  memset(cb, 0, sizeof(*cb));
}

/* The query of the redirect (or a whole pasted address). */
static int ftpmailoauth_parse_callback(const char *text,
    struct ftpmailoauth_callback *cb) {
  const char *q = strchr(text, '?'), *p;

  memset(cb, 0, sizeof(*cb));
  p = q != NULL ? q + 1 : text;

  while (*p != '\0' && *p != '#') {
    size_t len = strcspn(p, "&#"), klen;
    const char *eq = memchr(p, '=', len);
    char **slot = NULL;

    klen = eq != NULL ? (size_t) (eq - p) : len;
    if (klen == 4 && strncmp(p, "code", 4) == 0) {
      slot = &cb->code;
    } else if (klen == 5 && strncmp(p, "state", 5) == 0) {
      slot = &cb->state;
    } else if (klen == 5 && strncmp(p, "error", 5) == 0) {
      slot = &cb->error;
    } else if (klen == 17 && strncmp(p, "error_description", 17) == 0) {
      slot = &cb->error_description;
    }

    if (slot != NULL && eq != NULL && *slot == NULL) {
      *slot = ftpmailoauth_unescape(eq + 1, len - klen - 1);
      if (*slot == NULL) {
        return -1;
      }
    }

    p += len;
    if (*p == '&') {
      p++;
    }
  }
  return 0;
}

/* The first line of the provider's description, and its AADSTS code. */
static void ftpmailoauth_describe(const struct ftpmailoauth_callback *cb,
    char *line, size_t linelen, long *code) {
  const char *d = cb->error_description != NULL ? cb->error_description : "";
  const char *a = strstr(d, "AADSTS");

  *code = a != NULL ? strtol(a + 6, NULL, 10) : 0;
  snprintf(line, linelen, "%.*s", (int) strcspn(d, "\r\n"), d);
}

/* ------------------------------------------------------------------------
 * Sign-in: authorization code with PKCE.
 */

struct ftpmailoauth_browser {
  const struct ftpmailoauth_env *env;
  const struct mailoauth_account *acct;
  struct mailoauth_tokens *tokens;
  struct ftpmailoauth_listener *listener;
  char verifier[MAILOAUTH_OAUTH_VERIFIER_MAX + 1];
  char state[MAILOAUTH_OAUTH_STATE_LEN + 1];
  char signin_cmd[512];
};

static void ftpmailoauth_answer(struct ftpmailoauth_browser *b, int status,
    const char *title, const char *const *paras) {
  char *page;

  if (b->listener == NULL) {
    return;
  }

  page = ftpmailoauth_page(title, paras);
  if (page != NULL) {
    (void) ftpmailoauth_listener_reply(b->listener, status, page);
    free(page);
  }
}

static int ftpmailoauth_provider_error(struct ftpmailoauth_browser *b,
    const struct ftpmailoauth_callback *cb) {
  const struct mailoauth_oauth_aadsts *info;
  char said[512], what[1024], todo[2048], codebuf[64];
  const char *paras[5];
  long code;

  ftpmailoauth_describe(cb, said, sizeof(said), &code);
  info = code != 0 ? mailoauth_oauth_aadsts_lookup(code) : NULL;

  codebuf[0] = '\0';
  if (code != 0) {
    snprintf(codebuf, sizeof(codebuf), "AADSTS%ld", code);
  }
  snprintf(what, sizeof(what), "The sign-in failed: %s%s%s%s.", cb->error,
    codebuf[0] ? " (" : "", codebuf, codebuf[0] ? ")" : "");

  if (info != NULL) {
    const char *p = strstr(info->remedy, "{cmd}");

    snprintf(what, sizeof(what), "The sign-in failed: %s (%s): %s.",
      cb->error, codebuf, info->meaning);
    if (p != NULL) {
      snprintf(todo, sizeof(todo), "What to do: %.*s%s%s", (int) (p -
        info->remedy), info->remedy, b->signin_cmd, p + 5);
    } else {
      snprintf(todo, sizeof(todo), "What to do: %s", info->remedy);
    }
  } else {
    snprintf(todo, sizeof(todo), "What to do: fix what the message says, "
      "then run %s again.", b->signin_cmd);
  }

  paras[0] = what;
  paras[1] = said[0] != '\0' ? said : todo;
  paras[2] = said[0] != '\0' ? todo : NULL;
  paras[3] = NULL;
  ftpmailoauth_answer(b, 400, "Sign-in failed", paras);

  ftpmailoauth_err("%s", what);
  if (said[0] != '\0') {
    ftpmailoauth_err("the identity provider said: %s", said);
  }
  ftpmailoauth_err("%s", todo);
  return FTPMAILOAUTH_EXIT_FAIL;
}

static int ftpmailoauth_redeem(struct ftpmailoauth_browser *b,
    const char *code) {
  struct mailoauth_oauth_response resp;
  struct mailoauth_oauth_ctx *ctx;
  char err[2048], done[512];
  const char *paras[4];
  int res = FTPMAILOAUTH_EXIT_FAIL;

  memset(&resp, 0, sizeof(resp));
  ctx = mailoauth_oauth_ctx_create(&b->acct->oauth, err, sizeof(err));
  if (ctx == NULL) {
    paras[0] = err;
    paras[1] = NULL;
    ftpmailoauth_answer(b, 400, "Sign-in failed", paras);
    ftpmailoauth_err("account %s: %s", b->acct->name, err);
    return FTPMAILOAUTH_EXIT_USAGE;
  }

  if (mailoauth_oauth_redeem_code(ctx, code, b->verifier,
      b->acct->redirect_uri, time(NULL), &resp) < 0) {
    mailoauth_oauth_format_error(&resp, b->signin_cmd, err, sizeof(err));
    paras[0] = "The sign-in worked, but redeeming its code at the token "
      "endpoint failed:";
    paras[1] = err;
    paras[2] = NULL;
    ftpmailoauth_answer(b, 400, "Sign-in failed", paras);
    ftpmailoauth_err("redeeming the authorization code failed: %s", err);
    goto out;
  }

  if (mailoauth_tokens_store_signin(b->tokens, &resp, time(NULL), err,
      sizeof(err)) < 0) {
    paras[0] = "The sign-in worked, but the tokens could not be stored:";
    paras[1] = err;
    paras[2] = NULL;
    ftpmailoauth_answer(b, 400, "Sign-in failed", paras);
    ftpmailoauth_err("%s", err);
    goto out;
  }

  snprintf(done, sizeof(done), "Signed in as %s. The FTP server's mail "
    "account %s is ready; you can close this window.",
    resp.identity.username != NULL ? resp.identity.username : "you",
    b->acct->name);
  paras[0] = done;
  paras[1] = NULL;
  ftpmailoauth_answer(b, 200, "Signed in", paras);

  ftpmailoauth_report_signin(b->env, b->acct, &resp);
  res = FTPMAILOAUTH_EXIT_OK;

out:
  mailoauth_oauth_response_clear(&resp);
  mailoauth_oauth_ctx_destroy(ctx);
  return res;
}

/* 0: keep waiting (a stray request was answered); else an exit code. */
static int ftpmailoauth_handle_callback(struct ftpmailoauth_browser *b,
    const char *query, int *done) {
  struct ftpmailoauth_callback cb;
  const char *paras[3];
  int res;

  *done = 0;
  if (ftpmailoauth_parse_callback(query, &cb) < 0) {
    ftpmailoauth_err("out of memory");
    *done = 1;
    return FTPMAILOAUTH_EXIT_FAIL;
  }

  /* An answer to some other sign-in (an old tab, or someone else's
   * request): never redeem it.
   */
  if (cb.state == NULL ||
      strlen(cb.state) != strlen(b->state) ||
      CRYPTO_memcmp(cb.state, b->state, strlen(b->state)) != 0) {
    paras[0] = "This answer does not belong to the sign-in that is waiting "
      "(the state parameter does not match): it may come from an older "
      "browser tab. Use the address the command printed last.";
    paras[1] = NULL;
    ftpmailoauth_answer(b, 400, "Not this sign-in", paras);
    ftpmailoauth_callback_clear(&cb);

    if (b->listener != NULL) {
      ftpmailoauth_warn("refused an answer whose state does not match this "
        "sign-in (an old browser tab?); still waiting");
      return 0;
    }

    ftpmailoauth_err("the pasted address does not belong to this sign-in "
      "(its state does not match): nothing was stored; run %s again and "
      "paste the address of that sign-in", b->signin_cmd);
    *done = 1;
    return FTPMAILOAUTH_EXIT_FAIL;
  }

  *done = 1;
  if (cb.error != NULL) {
    res = ftpmailoauth_provider_error(b, &cb);

  } else if (cb.code == NULL || cb.code[0] == '\0') {
    paras[0] = "The answer carries no authorization code.";
    paras[1] = NULL;
    ftpmailoauth_answer(b, 400, "Sign-in failed", paras);
    ftpmailoauth_err("the answer carries no authorization code");
    res = FTPMAILOAUTH_EXIT_FAIL;

  } else {
    res = ftpmailoauth_redeem(b, cb.code);
  }

  ftpmailoauth_callback_clear(&cb);
  return res;
}

/* --no-listen: the person pastes where the browser ended up. */
static int ftpmailoauth_read_pasted(char **query) {
  char *line = NULL;
  size_t size = 0;
  ssize_t n;

  *query = NULL;
  while ((n = getline(&line, &size, stdin)) >= 0) {
    line[strcspn(line, "\r\n")] = '\0';
    if (line[0] != '\0') {
      *query = line;
      return 0;
    }
  }

  free(line);
  return -1;
}

static void ftpmailoauth_print_url(const struct ftpmailoauth_browser *b,
    const char *url) {
  printf("Open this address in a web browser and sign in as %s:\n\n  %s\n\n",
    b->acct->mailbox, url);

  if (b->listener != NULL) {
    printf("Waiting for the browser to come back to %s (listening on %s, "
      "for up to %ld minutes).\n", b->acct->redirect_uri,
      ftpmailoauth_listener_where(b->listener),
      (b->env->opts->timeout + 59) / 60);
    printf("The browser can be on any machine that reaches this port; from "
      "another machine, forward it first, e.g.: ssh -L %s:localhost:%s "
      "this-server\n", ftpmailoauth_listener_port(b->listener),
      ftpmailoauth_listener_port(b->listener));
  } else {
    printf("After signing in, the browser is sent to %s (it may show an "
      "error page: that is fine).\nCopy the whole address from the address "
      "bar and paste it here:\n", b->acct->redirect_uri);
  }
  fflush(stdout);
}

static int ftpmailoauth_signin_browser(const struct ftpmailoauth_env *env,
    const struct mailoauth_account *acct, struct mailoauth_tokens *tokens) {
  struct mailoauth_oauth_authorize_params params;
  struct ftpmailoauth_browser b;
  char challenge[MAILOAUTH_OAUTH_CHALLENGE_LEN + 8], err[1024];
  time_t deadline;
  char *url = NULL;
  int res = FTPMAILOAUTH_EXIT_FAIL, done = 0;

  memset(&b, 0, sizeof(b));
  b.env = env;
  b.acct = acct;
  b.tokens = tokens;
  ftpmailoauth_signin_cmd(env, acct->name, b.signin_cmd,
    sizeof(b.signin_cmd));

  /* An https:// redirect URI is some web server's: this tool cannot
   * receive it, but the person can paste where the browser ends up.
   */
  if (!env->opts->no_listen &&
      strncasecmp(acct->redirect_uri, "https://", 8) == 0) {
    printf("The redirect URI %s is https://: this command cannot receive "
      "the browser there, so the address will be pasted instead.\n",
      acct->redirect_uri);

  } else if (!env->opts->no_listen) {
    b.listener = ftpmailoauth_listener_open(acct->redirect_uri, err,
      sizeof(err));
    if (b.listener == NULL) {
      ftpmailoauth_err("%s", err);
      ftpmailoauth_err("use --no-listen to paste the browser's address "
        "instead, or --device to sign in with a code");
      return FTPMAILOAUTH_EXIT_FAIL;
    }
  }

  if (mailoauth_oauth_pkce_verifier(b.verifier, sizeof(b.verifier), 64) < 0 ||
      mailoauth_oauth_pkce_challenge(b.verifier, challenge,
        sizeof(challenge)) < 0 ||
      mailoauth_oauth_random_state(b.state, sizeof(b.state)) < 0) {
    ftpmailoauth_err("cannot make the PKCE verifier or state (no random "
      "numbers?)");
    goto out;
  }

  memset(&params, 0, sizeof(params));
  params.redirect_uri = acct->redirect_uri;
  params.state = b.state;
  params.code_challenge = challenge;
  params.login_hint = acct->mailbox;

  if (mailoauth_oauth_authorize_url(&acct->oauth, &params, &url) < 0) {
    ftpmailoauth_err("account %s: cannot build the sign-in address",
      acct->name);
    res = FTPMAILOAUTH_EXIT_USAGE;
    goto out;
  }

  ftpmailoauth_print_url(&b, url);
  deadline = time(NULL) + env->opts->timeout;

  while (!done) {
    char *query = NULL;

    if (b.listener != NULL) {
      if (ftpmailoauth_listener_wait(b.listener, deadline, &query, err,
          sizeof(err)) < 0) {
        ftpmailoauth_err("%s%s", err, errno == ETIMEDOUT ?
          " (see --timeout)" : "");
        break;
      }

    } else if (ftpmailoauth_read_pasted(&query) < 0) {
      ftpmailoauth_err("nothing was pasted");
      break;
    }

    res = ftpmailoauth_handle_callback(&b, query, &done);
    OPENSSL_cleanse(query, strlen(query));
    free(query);
  }

out:
  free(url);
  OPENSSL_cleanse(b.verifier, sizeof(b.verifier));
  ftpmailoauth_listener_close(b.listener);
  return res;
}

/* ------------------------------------------------------------------------
 * Sign-in: device code.
 */

static void ftpmailoauth_sleep(long secs) {
  struct timespec ts = { secs, 0 };

  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

/* Conditional Access answers when the tenant does not allow device code
 * sign-in (Microsoft-managed policies block it in many tenants since
 * 2025): 53003 blocked by policy, 53000/50097 device state required,
 * 50005 unsupported platform, 50199 user confirmation required.
 */
static int ftpmailoauth_device_refused(long code) {
  return code == 53003 || code == 53000 || code == 50097 || code == 50005 ||
    code == 50199;
}

/* The browser sign-in works on a headless server too, through a port
 * forward to the redirect URI's port: say exactly how.
 */
static void ftpmailoauth_device_hint(const struct ftpmailoauth_env *env,
    const struct mailoauth_account *acct, long code) {
  char cmd[512], host[256] = "this-server", port[16] = "9090";
  const char *p = strstr(acct->redirect_uri, "://");
  const char *colon;
  size_t n;

  if (p != NULL) {
    p += 3;
    colon = strchr(p, ':');
    if (colon != NULL && colon < p + strcspn(p, "/")) {
      n = strspn(colon + 1, "0123456789");
      if (n > 0 && n < sizeof(port)) {
        memcpy(port, colon + 1, n);
        port[n] = '\0';
      }
    } else if (strncasecmp(acct->redirect_uri, "https", 5) == 0) {
      snprintf(port, sizeof(port), "443");
    } else {
      snprintf(port, sizeof(port), "80");
    }
  }

  if (gethostname(host, sizeof(host) - 1) < 0 || host[0] == '\0') {
    snprintf(host, sizeof(host), "this-server");
  }
  host[sizeof(host) - 1] = '\0';

  ftpmailoauth_signin_cmd(env, acct->name, cmd, sizeof(cmd));
  ftpmailoauth_err("the tenant does not allow device code sign-in "
    "(AADSTS%ld: a Conditional Access policy blocks the device code flow, "
    "as Microsoft-managed policies do in many tenants). Sign in with the "
    "browser instead; it works from another machine through a port "
    "forward:\n  1. on the machine with the browser: ssh -L %s:localhost:%s "
    "%s\n  2. in that ssh session: %s\n  3. open the printed address in "
    "the browser", code, port, port, host, cmd);
}

static int ftpmailoauth_device_result(const struct ftpmailoauth_env *env,
    const struct mailoauth_account *acct, struct mailoauth_tokens *tokens,
    struct mailoauth_oauth_response *resp) {
  char err[1024];

  if (mailoauth_tokens_store_signin(tokens, resp, time(NULL), err,
      sizeof(err)) < 0) {
    ftpmailoauth_err("%s", err);
    return FTPMAILOAUTH_EXIT_FAIL;
  }

  ftpmailoauth_report_signin(env, acct, resp);
  return FTPMAILOAUTH_EXIT_OK;
}

static int ftpmailoauth_device_poll(const struct ftpmailoauth_env *env,
    const struct mailoauth_account *acct, struct mailoauth_tokens *tokens,
    struct mailoauth_oauth_ctx *ctx, const char *device_code, long interval,
    time_t expires) {
  struct mailoauth_oauth_response resp;
  char cmd[512], err[2048];
  int warned = 0, res = FTPMAILOAUTH_EXIT_FAIL;

  ftpmailoauth_signin_cmd(env, acct->name, cmd, sizeof(cmd));
  memset(&resp, 0, sizeof(resp));

  for (;;) {
    ftpmailoauth_sleep(interval);

    if (time(NULL) > expires + interval) {
      ftpmailoauth_err("the code expired before anyone signed in: run %s "
        "--device again", cmd);
      break;
    }

    mailoauth_oauth_device_poll(ctx, device_code, time(NULL), &resp);
    switch (resp.oauth_class) {
      case MAILOAUTH_OAUTH_OK:
        res = ftpmailoauth_device_result(env, acct, tokens, &resp);
        goto out;

      case MAILOAUTH_OAUTH_PENDING:
        continue;

      case MAILOAUTH_OAUTH_SLOW_DOWN:
        /* RFC 8628 3.5: five seconds more, for good. */
        interval += 5;
        continue;

      case MAILOAUTH_OAUTH_DECLINED:
        if (ftpmailoauth_device_refused(resp.error_code)) {
          ftpmailoauth_device_hint(env, acct, resp.error_code);
          goto out;
        }
        ftpmailoauth_err("the sign-in was declined%s%ld%s: nothing was "
          "stored; run %s --device again to retry", resp.error_code ?
          " (AADSTS" : "", resp.error_code, resp.error_code ? ")" : "",
          cmd);
        goto out;

      case MAILOAUTH_OAUTH_EXPIRED:
        ftpmailoauth_err("the code expired before anyone signed in: run %s "
          "--device again", cmd);
        goto out;

      case MAILOAUTH_OAUTH_TRANSIENT:
        if (!warned) {
          mailoauth_oauth_format_error(&resp, cmd, err, sizeof(err));
          ftpmailoauth_warn("the token service is having trouble (%s); "
            "still waiting", err);
          warned = 1;
        }
        continue;

      default:
        if (ftpmailoauth_device_refused(resp.error_code)) {
          ftpmailoauth_device_hint(env, acct, resp.error_code);
          goto out;
        }
        mailoauth_oauth_format_error(&resp, cmd, err, sizeof(err));
        ftpmailoauth_err("the device code sign-in failed: %s", err);
        goto out;
    }
  }

out:
  mailoauth_oauth_response_clear(&resp);
  return res;
}

static int ftpmailoauth_signin_device(const struct ftpmailoauth_env *env,
    const struct mailoauth_account *acct, struct mailoauth_tokens *tokens) {
  struct mailoauth_oauth_response resp;
  struct mailoauth_oauth_ctx *ctx;
  char err[2048], dur[32], cmd[512];
  char *device_code = NULL;
  long interval;
  time_t expires;
  int res;

  ftpmailoauth_signin_cmd(env, acct->name, cmd, sizeof(cmd));
  ctx = mailoauth_oauth_ctx_create(&acct->oauth, err, sizeof(err));
  if (ctx == NULL) {
    ftpmailoauth_err("account %s: %s", acct->name, err);
    return FTPMAILOAUTH_EXIT_USAGE;
  }

  memset(&resp, 0, sizeof(resp));
  if (mailoauth_oauth_device_start(ctx, time(NULL), &resp) < 0) {
    mailoauth_oauth_format_error(&resp, cmd, err, sizeof(err));
    if (ftpmailoauth_device_refused(resp.error_code)) {
      ftpmailoauth_device_hint(env, acct, resp.error_code);
    } else {
      ftpmailoauth_err("cannot start the device code sign-in: %s", err);
    }
    mailoauth_oauth_response_clear(&resp);
    mailoauth_oauth_ctx_destroy(ctx);
    return FTPMAILOAUTH_EXIT_FAIL;
  }

  expires = resp.expires_at != 0 ? resp.expires_at : time(NULL) + 900;
  interval = resp.interval > 0 ? resp.interval : 5;

  printf("To sign in as %s, open %s on any device and enter the code:\n\n"
    "  %s\n\n", acct->mailbox, resp.verification_uri, resp.user_code);
  printf("User code: %s\n", resp.user_code);
  printf("Verification URL: %s\n", resp.verification_uri);
  if (resp.message != NULL) {
    printf("(The identity provider says: %s)\n", resp.message);
  }
  printf("Waiting for the sign-in; the code expires in %s.\n",
    ftpmailoauth_duration((long) (expires - time(NULL)), dur, sizeof(dur)));
  fflush(stdout);

  device_code = strdup(resp.device_code);
  mailoauth_oauth_response_clear(&resp);
  if (device_code == NULL) {
    mailoauth_oauth_ctx_destroy(ctx);
    ftpmailoauth_err("out of memory");
    return FTPMAILOAUTH_EXIT_FAIL;
  }

  res = ftpmailoauth_device_poll(env, acct, tokens, ctx, device_code,
    interval, expires);

  OPENSSL_cleanse(device_code, strlen(device_code));
  free(device_code);
  mailoauth_oauth_ctx_destroy(ctx);
  return res;
}

/* ------------------------------------------------------------------------
 * Sign-in: app-only accounts need none, but the settings can be proved.
 */

static int ftpmailoauth_signin_app_only(const struct ftpmailoauth_env *env,
    const struct mailoauth_account *acct, struct mailoauth_tokens *tokens) {
  struct mailoauth_oauth_response resp;
  struct mailoauth_oauth_ctx *ctx;
  char err[2048], roles[512], rel[PATH_MAX + 80], cmd[512];
  int res = FTPMAILOAUTH_EXIT_FAIL;

  printf("Account %s is app-only (client credentials): no person signs "
    "in; the server gets its own tokens. Checking the settings with a token "
    "request...\n", acct->name);
  fflush(stdout);

  ftpmailoauth_signin_cmd(env, acct->name, cmd, sizeof(cmd));
  ctx = mailoauth_oauth_ctx_create(&acct->oauth, err, sizeof(err));
  if (ctx == NULL) {
    ftpmailoauth_err("account %s: %s", acct->name, err);
    return FTPMAILOAUTH_EXIT_USAGE;
  }

  memset(&resp, 0, sizeof(resp));
  if (mailoauth_oauth_client_credentials(ctx, time(NULL), &resp) < 0) {
    mailoauth_oauth_format_error(&resp, cmd, err, sizeof(err));
    ftpmailoauth_err("the token request failed: %s", err);
    goto out;
  }

  if (mailoauth_tokens_store_signin(tokens, &resp, time(NULL), err,
      sizeof(err)) < 0) {
    ftpmailoauth_err("%s", err);
    goto out;
  }

  printf("App-only access works: the token service issued a token for "
    "client %s, valid for %s.\n", acct->oauth.client_id,
    ftpmailoauth_validity(resp.expires_at, rel, sizeof(rel)));
  printf("No sign-in is needed for this account.\n");

  if (ftpmailoauth_token_roles(resp.access_token, roles, sizeof(roles)) < 0) {
    printf("Application permissions: cannot tell (the token is not "
      "readable)\n");

  } else if (acct->transport == MAILOAUTH_ACCOUNT_TRANSPORT_GRAPH) {
    printf("Application permissions: %s\n", roles[0] ? roles : "(none)");
    if (strstr(roles, "Mail.Send") == NULL) {
      fflush(stdout);
      ftpmailoauth_warn("the Graph token does not carry Mail.Send: add the "
        "Microsoft Graph application permission Mail.Send and grant admin "
        "consent (then limit it to the mailbox with RBAC for Applications "
        "or an application access policy)");
    }

  } else if (roles[0] == '\0') {
    fflush(stdout);
    ftpmailoauth_warn("the token carries no application permissions: add "
      "IMAP.AccessAsApp and/or SMTP.SendAsApp (Office 365 Exchange Online, "
      "Application permissions) and grant admin consent; Exchange also "
      "needs the app's service principal and rights on the mailbox "
      "(New-ServicePrincipal, Add-MailboxPermission)");

  } else {
    printf("Application permissions: %s\n", roles);
  }

  ftpmailoauth_token_path(env, acct, rel, sizeof(rel));
  printf("Token file: %s (owner %s)\n", rel, env->owner_name);
  res = FTPMAILOAUTH_EXIT_OK;

out:
  mailoauth_oauth_response_clear(&resp);
  mailoauth_oauth_ctx_destroy(ctx);
  return res;
}

static int ftpmailoauth_cmd_signin(const struct ftpmailoauth_env *env,
    const char *name) {
  struct mailoauth_account acct;
  struct mailoauth_tokens *tokens;
  int res;

  res = ftpmailoauth_load_account(env, name, &acct, 1);
  if (res != 0) {
    return res;
  }

  if (ftpmailoauth_become_owner(env) < 0 ||
      ftpmailoauth_prepare_dirs(env) < 0) {
    mailoauth_account_clear(&acct);
    return FTPMAILOAUTH_EXIT_FAIL;
  }

  tokens = ftpmailoauth_tokens(env, &acct);
  if (tokens == NULL) {
    mailoauth_account_clear(&acct);
    return FTPMAILOAUTH_EXIT_FAIL;
  }

  if (acct.oauth.grant == MAILOAUTH_OAUTH_GRANT_APP_ONLY) {
    res = ftpmailoauth_signin_app_only(env, &acct, tokens);

  } else if (env->opts->device) {
    res = ftpmailoauth_signin_device(env, &acct, tokens);

  } else {
    res = ftpmailoauth_signin_browser(env, &acct, tokens);
  }

  mailoauth_tokens_destroy(tokens);
  mailoauth_account_clear(&acct);
  return res;
}

/* ------------------------------------------------------------------------
 * Credentials: certificates and declared secret expiry.
 */

/* What status learnt about an account's certificate while it was still
 * root (a certificate kept in the key file is readable by root only).
 */
struct ftpmailoauth_cert_seen {
  char name[80];
  int ok;
  struct mailoauth_cert_info info;
  char err[512];
};

static struct ftpmailoauth_cert_seen ftpmailoauth_certs[FTPMAILOAUTH_MAX_CERTS];
static unsigned int ftpmailoauth_ncerts = 0;

static void ftpmailoauth_cert_collect(const struct ftpmailoauth_env *env,
    const char *name) {
  struct ftpmailoauth_cert_seen *seen;
  struct mailoauth_account acct;
  char *pem = NULL;
  int res;

  if (ftpmailoauth_ncerts >= FTPMAILOAUTH_MAX_CERTS) {
    return;
  }

  ftpmailoauth_quiet = 1;
  res = ftpmailoauth_load_account(env, name, &acct, 0);
  ftpmailoauth_quiet = 0;
  if (res != 0) {
    return;
  }

  if (acct.cert_key_file != NULL) {
    seen = &ftpmailoauth_certs[ftpmailoauth_ncerts++];
    memset(seen, 0, sizeof(*seen));
    snprintf(seen->name, sizeof(seen->name), "%s", name);

    if (mailoauth_account_read_cert(&acct, &pem, seen->err,
          sizeof(seen->err)) == 0 &&
        mailoauth_assertion_cert_info(pem, strlen(pem), &seen->info,
          seen->err, sizeof(seen->err)) == 0) {
      seen->ok = 1;
    }
    free(pem);
  }

  mailoauth_account_clear(&acct);
}

static const struct ftpmailoauth_cert_seen *ftpmailoauth_cert_find(
    const char *name) {
  unsigned int i;

  for (i = 0; i < ftpmailoauth_ncerts; i++) {
    if (strcmp(ftpmailoauth_certs[i].name, name) == 0) {
      return &ftpmailoauth_certs[i];
    }
  }
  return NULL;
}

/* One line on a credential's expiry, and a warning or error line when it is
 * near or past.  1: needs attention.
 */
static int ftpmailoauth_expiry(const char *label, const char *what,
    time_t expires, time_t now, const char *renew) {
  char when[64];
  long days = (long) ((expires - now) / 86400);

  ftpmailoauth_when(expires, when, sizeof(when));

  if (expires <= now) {
    printf("  %-14s expired on %s\n", label, when);
    printf("  ERROR: the %s expired on %s: sign-ins and token requests "
      "fail until %s\n", what, when, renew);
    return 1;
  }

  printf("  %-14s expires %s (in %ld days)\n", label, when, days);
  if (expires - now <= FTPMAILOAUTH_CREDENTIAL_WARN) {
    printf("  WARNING: the %s expires in %ld days (%s): %s\n", what, days,
      when, renew);
    return 1;
  }
  return 0;
}

/* 1: needs attention. */
static int ftpmailoauth_status_credential(const struct mailoauth_account *acct,
    time_t now) {
  char renew[512];

  if (acct->cert_key_file != NULL) {
    const struct ftpmailoauth_cert_seen *seen =
      ftpmailoauth_cert_find(acct->name);

    if (seen == NULL || !seen->ok) {
      printf("  certificate:   cannot be read: %s\n", seen != NULL ?
        seen->err : "run status as root to read it");
      return seen != NULL;
    }

    printf("  certificate:   %s, thumbprint %s\n", seen->info.subject,
      seen->info.sha1);
    snprintf(renew, sizeof(renew), "make a new key and certificate, upload "
      "the certificate under Certificates & secrets, then point "
      "client-cert= at them (" FTPMAILOAUTH_PROG " cert %s shows what to "
      "upload)", acct->name);
    return ftpmailoauth_expiry("cert expiry:", "certificate", seen->info.not_after,
      now, renew);
  }

  if (acct->secret_source != NULL) {
    if (acct->secret_expires == 0) {
      printf("  client secret: expiry not declared (add "
        "secret-expires=YYYY-MM-DD to be warned 30 days before)\n");
      return 0;
    }

    snprintf(renew, sizeof(renew), "add a new client secret under "
      "Certificates & secrets, put its Value in %s and update "
      "secret-expires=, or use a certificate (client-cert=)",
      acct->secret_source);
    return ftpmailoauth_expiry("client secret:", "client secret",
      acct->secret_expires, now, renew);
  }

  return 0;
}

/* cert ACCOUNT: what to upload to the app registration. */
static int ftpmailoauth_cmd_cert(const struct ftpmailoauth_env *env,
    const char *name) {
  struct mailoauth_account acct;
  struct mailoauth_cert_info info;
  char err[1024], from[64], until[64];
  time_t now = time(NULL);
  int res;

  /* As root: the key is checked against the certificate. */
  res = ftpmailoauth_load_account(env, name, &acct, 1);
  if (res != 0) {
    return res;
  }

  if (acct.cert_key_file == NULL) {
    ftpmailoauth_err("account %s has no certificate: add client-cert=file:"
      "/etc/proftpd/%s.key (see the openssl commands in "
      "doc/mod_mailoauth.html) instead of client-secret=", name, name);
    mailoauth_account_clear(&acct);
    return FTPMAILOAUTH_EXIT_USAGE;
  }

  if (mailoauth_assertion_cert_info(acct.oauth.client_cert_pem,
      strlen(acct.oauth.client_cert_pem), &info, err, sizeof(err)) < 0) {
    ftpmailoauth_err("account %s: %s", name, err);
    mailoauth_account_clear(&acct);
    return FTPMAILOAUTH_EXIT_FAIL;
  }

  printf("%s: certificate of app %s (the key in %s belongs to it)\n", name,
    acct.oauth.client_id, acct.cert_key_file);
  printf("  subject:            %s\n", info.subject);
  printf("  thumbprint (SHA-1): %s   (Azure's \"Thumbprint\" column)\n",
    info.sha1);
  printf("  SHA-256:            %s\n", info.sha256);
  printf("  x5t#S256:           %s\n", info.x5t_s256);
  printf("  valid:              %s to %s\n",
    ftpmailoauth_when(info.not_before, from, sizeof(from)),
    ftpmailoauth_when(info.not_after, until, sizeof(until)));

  if (acct.cert_file != NULL) {
    printf("Upload %s under Certificates & secrets > Certificates > Upload "
      "certificate in the app registration.\n", acct.cert_file);
  } else {
    printf("Upload the certificate alone, never the key file: write it "
      "with\n  openssl x509 -in %s -out %s.crt\nand upload %s.crt under "
      "Certificates & secrets > Certificates > Upload certificate in the app "
      "registration.\n", acct.cert_key_file, name, name);
  }

  res = FTPMAILOAUTH_EXIT_OK;
  if (info.not_after <= now) {
    ftpmailoauth_err("the certificate expired on %s: make a new one", until);
    res = FTPMAILOAUTH_EXIT_FAIL;

  } else if (info.not_after - now <= FTPMAILOAUTH_CREDENTIAL_WARN) {
    ftpmailoauth_warn("the certificate expires in %ld days (%s): make a "
      "new one and upload it before then", (long) ((info.not_after - now) /
      86400), until);
  }

  mailoauth_account_clear(&acct);
  return res;
}

/* ------------------------------------------------------------------------
 * status
 */

/* 0: fine; 1: needs attention. */
static int ftpmailoauth_status_tokens(const struct ftpmailoauth_env *env,
    const struct mailoauth_account *acct,
    const struct mailoauth_tokenstore_record *rec, time_t now) {
  char rel[128], dur[32], cmd[512];
  int delegated = acct->oauth.grant == MAILOAUTH_OAUTH_GRANT_DELEGATED;
  time_t last = rec->refreshed_at != 0 ? rec->refreshed_at : rec->obtained_at;
  int bad = 0;

  ftpmailoauth_signin_cmd(env, acct->name, cmd, sizeof(cmd));

  if (delegated) {
    printf("  signed in as:  %s%s%s%s\n", rec->username != NULL ?
      rec->username : "(unknown)", rec->name != NULL ? " (" : "",
      rec->name != NULL ? rec->name : "", rec->name != NULL ? ")" : "");
  }

  if (rec->access_token == NULL || rec->access_expires == 0) {
    printf("  access token:  none\n");
  } else {
    printf("  access token:  %s %s\n", rec->access_expires > now ?
      "expires" : "expired", ftpmailoauth_relative(rec->access_expires, now,
      rel, sizeof(rel)));
  }

  if (!delegated) {
    printf("  refresh token: none needed (app-only)\n");

  } else if (rec->refresh_token == NULL) {
    printf("  refresh token: NONE: sign in again: %s\n", cmd);
    bad = 1;

  } else {
    printf("  refresh token: last used %s; lapses after 90 days unused, in "
      "%s\n", ftpmailoauth_relative(last, now, rel, sizeof(rel)),
      ftpmailoauth_duration((long) (last + FTPMAILOAUTH_REFRESH_LIFETIME -
      now), dur, sizeof(dur)));
    if (last != 0 && now - last >= FTPMAILOAUTH_REFRESH_WARN) {
      printf("  WARNING: refresh tokens lapse after 90 days unused; this one "
        "has %ld days left: run '" FTPMAILOAUTH_PROG " test %s' or make sure "
        "the server is running\n", (long) ((last +
        FTPMAILOAUTH_REFRESH_LIFETIME - now) / 86400), acct->name);
      bad = 1;
    }
  }

  if (rec->scope != NULL) {
    printf("  scopes:        %s\n", rec->scope);
  }

  if (delegated && rec->username != NULL &&
      strcasecmp(rec->username, acct->mailbox) != 0) {
    printf("  WARNING: signed in as %s, not as the mailbox %s: Exchange "
      "refuses mail from %s sent with this sign-in (SendAsDenied)\n",
      rec->username, acct->mailbox, acct->mailbox);
    bad = 1;
  }

  if (rec->error_class != NULL) {
    char code[32] = "";

    if (rec->error_code != 0) {
      snprintf(code, sizeof(code), " AADSTS%ld", rec->error_code);
    }
    printf("  last error:    %s%s at %s: %s\n", rec->error_class, code,
      ftpmailoauth_when(rec->error_at, rel, sizeof(rel)),
      rec->error_message != NULL ? rec->error_message : "");
    bad = bad || strcmp(rec->error_class, "transient") != 0;
  } else {
    printf("  last error:    none\n");
  }

  return bad;
}

static int ftpmailoauth_status_one(const struct ftpmailoauth_env *env,
    const char *name) {
  struct mailoauth_tokenstore_record rec;
  struct mailoauth_account acct;
  struct mailoauth_tokens *tokens;
  char err[1024], path[PATH_MAX + 80], cmd[512];
  int res, bad = 1, cred_bad;

  res = ftpmailoauth_load_account(env, name, &acct, 0);
  if (res != 0) {
    return res;
  }

  printf("%s\n", name);
  printf("  grant:         %s (%s, tenant %s, client %s)\n",
    mailoauth_oauth_grant_name(acct.oauth.grant),
    mailoauth_oauth_provider_name(acct.oauth.provider),
    acct.oauth.tenant != NULL ? acct.oauth.tenant :
      MAILOAUTH_OAUTH_DEFAULT_TENANT, acct.oauth.client_id);
  printf("  mailbox:       %s\n", acct.mailbox);
  cred_bad = ftpmailoauth_status_credential(&acct, time(NULL));

  tokens = ftpmailoauth_tokens(env, &acct);
  if (tokens == NULL) {
    mailoauth_account_clear(&acct);
    return FTPMAILOAUTH_EXIT_FAIL;
  }

  ftpmailoauth_token_path(env, &acct, path, sizeof(path));
  ftpmailoauth_signin_cmd(env, name, cmd, sizeof(cmd));
  memset(&rec, 0, sizeof(rec));

  if (mailoauth_tokens_status(tokens, &rec, err, sizeof(err)) < 0) {
    if (errno == ENOENT &&
        acct.oauth.grant == MAILOAUTH_OAUTH_GRANT_DELEGATED) {
      printf("  signed in as:  nobody yet: run %s\n", cmd);

    } else if (errno == ENOENT) {
      printf("  access token:  none yet (the server gets one when needed; "
        "check the settings with %s)\n", cmd);
      bad = 0;

    } else {
      printf("  ERROR: %s\n", err);
    }

  } else {
    bad = ftpmailoauth_status_tokens(env, &acct, &rec, time(NULL));
  }

  printf("  token file:    %s\n", path);
  mailoauth_tokenstore_record_free(&rec);
  mailoauth_tokens_destroy(tokens);
  mailoauth_account_clear(&acct);
  return bad || cred_bad ? FTPMAILOAUTH_EXIT_FAIL : FTPMAILOAUTH_EXIT_OK;
}

/* status --json: the worker's own status document (control.h), as it last
 * wrote it, for monitoring other than Prometheus.
 */
static int ftpmailoauth_status_json(const struct ftpmailoauth_env *env) {
  char path[PATH_MAX];
  json_error_t jerr;
  json_t *doc;
  struct stat st;
  int fd, res;

  snprintf(path, sizeof(path), "%s/%s", env->state_dir,
    MAILOAUTH_STATUS_FILE);
  fd = open(path, O_RDONLY|O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC);
  if (fd < 0) {
    ftpmailoauth_err("cannot read %s: %s%s", path, strerror(errno),
      errno == ENOENT ? " (the worker writes it while the server runs with "
      "MailOAuthEngine on)" : "");
    return FTPMAILOAUTH_EXIT_FAIL;
  }

  if (fstat(fd, &st) < 0 ||
      !S_ISREG(st.st_mode) ||
      st.st_size > MAILOAUTH_STATUS_MAX) {
    (void) close(fd);
    ftpmailoauth_err("%s is not the worker's status file (not a regular "
      "file, or too large)", path);
    return FTPMAILOAUTH_EXIT_FAIL;
  }

  doc = json_loadfd(fd, 0, &jerr);
  (void) close(fd);
  if (!json_is_object(doc)) {
    json_decref(doc);
    ftpmailoauth_err("%s: not a status document: %s", path, jerr.text);
    return FTPMAILOAUTH_EXIT_FAIL;
  }

  /* To stdout directly: jansson allocates with our wiping allocator here
   * (mailoauth_oauth_wipe_json_memory()), whose blocks free() must not see.
   */
  res = json_dumpf(doc, stdout, JSON_INDENT(2)|JSON_SORT_KEYS);
  json_decref(doc);
  if (res < 0 ||
      printf("\n") < 0) {
    ftpmailoauth_err("cannot write the status: %s", strerror(errno));
    return FTPMAILOAUTH_EXIT_FAIL;
  }
  return FTPMAILOAUTH_EXIT_OK;
}

static int ftpmailoauth_cmd_status(const struct ftpmailoauth_env *env,
    const char *name) {
  unsigned int i;
  int res = FTPMAILOAUTH_EXIT_OK;

  /* Certificates kept with their key are readable by root only; nothing
   * secret is kept from them.
   */
  if (!env->opts->json) {
    if (name != NULL) {
      ftpmailoauth_cert_collect(env, name);
    } else {
      for (i = 0; i < env->conf.naccounts; i++) {
        ftpmailoauth_cert_collect(env, env->conf.accounts[i].name);
      }
    }
  }

  /* Nothing more to do as root. */
  if (ftpmailoauth_become_owner(env) < 0) {
    return FTPMAILOAUTH_EXIT_FAIL;
  }

  if (env->opts->json) {
    if (name != NULL) {
      ftpmailoauth_err("status --json shows every account; leave out '%s'",
        name);
      return FTPMAILOAUTH_EXIT_USAGE;
    }
    return ftpmailoauth_status_json(env);
  }

  if (name != NULL) {
    return ftpmailoauth_status_one(env, name);
  }

  if (env->conf.naccounts == 0) {
    ftpmailoauth_err("no MailOAuthAccount in %s",
      ftpmailoauth_config_path(env->opts));
    return FTPMAILOAUTH_EXIT_USAGE;
  }

  for (i = 0; i < env->conf.naccounts; i++) {
    int one = ftpmailoauth_status_one(env, env->conf.accounts[i].name);

    if (one > res) {
      res = one;
    }
    if (i + 1 < env->conf.naccounts) {
      printf("\n");
    }
  }
  return res;
}

/* ------------------------------------------------------------------------
 * test
 */

static void ftpmailoauth_print_transcript(
    const struct mailoauth_mailauth_transcript *tr) {
  const char *hints[16];
  unsigned int nhints = 0, i;
  const char *p = tr->text;

  while (p != NULL && *p != '\0') {
    size_t len = strcspn(p, "\n");
    char line[512];
    const char *hint;

    snprintf(line, sizeof(line), "%.*s", (int) len, p);
    printf("    %s\n", line);

    hint = strncmp(line, "S: ", 3) == 0 ? mailoauth_mailauth_hint(line + 3) :
      NULL;
    for (i = 0; hint != NULL && i < nhints; i++) {
      if (hints[i] == hint) {
        hint = NULL;
      }
    }
    if (hint != NULL && nhints < sizeof(hints) / sizeof(hints[0])) {
      hints[nhints++] = hint;
    }

    p += len;
    if (*p == '\n') {
      p++;
    }
  }

  if (tr->challenge[0] != '\0') {
    printf("  The server's XOAUTH2 error (decoded): %s\n", tr->challenge);
  }

  for (i = 0; i < nhints; i++) {
    printf("  Hint: %s\n", hints[i]);
  }
}

static int ftpmailoauth_login(const struct mailoauth_account *acct,
    const char *what, const char *url, const char *token,
    struct mailoauth_mailauth_transcript *tr) {
  struct mailoauth_mailauth_config cfg;
  char err[1024];
  int tls = 0, res;

  (void) mailoauth_mailauth_proto(url, NULL, &tls);
  printf("%s %s as %s%s:\n", what, url, acct->mailbox, tls ? "" :
    " (STARTTLS required)");
  fflush(stdout);

  memset(&cfg, 0, sizeof(cfg));
  cfg.url = url;
  cfg.username = acct->mailbox;
  cfg.bearer = token;
  cfg.ca_file = acct->oauth.ca_file;

  memset(tr, 0, sizeof(*tr));
  res = mailoauth_mailauth_test(&cfg, tr, err, sizeof(err));
  ftpmailoauth_print_transcript(tr);

  if (res == 0) {
    printf("  OK: logged in%s.\n", strcmp(what, "IMAP") == 0 ?
      " and opened INBOX" : "");
  } else {
    printf("  FAILED: %s\n", err);
  }
  fflush(stdout);
  return res;
}

/* tokens.c has already said why (through the log sink) when it fails. */
static const char *ftpmailoauth_get_token(struct mailoauth_tokens *tokens,
    const struct mailoauth_account *acct) {
  mailoauth_oauth_class_t c = MAILOAUTH_OAUTH_OK;
  const char *token;

  token = mailoauth_tokens_get(tokens, time(NULL), &c);
  if (token == NULL) {
    ftpmailoauth_err("account %s: no usable access token (%s)", acct->name,
      mailoauth_oauth_class_name(c));
  }
  return token;
}

/* Tells where the token came from: the file, or a refresh just now. */
static void ftpmailoauth_token_origin(struct mailoauth_tokens *tokens,
    const char *token, const char *before) {
  struct mailoauth_tokenstore_record rec;
  char err[1024], rel[128];

  memset(&rec, 0, sizeof(rec));
  if (mailoauth_tokens_status(tokens, &rec, err, sizeof(err)) == 0) {
    printf("Access token: %s, expires %s\n", before == NULL ||
      strcmp(before, token) != 0 ? "refreshed just now" :
      "from the token file", ftpmailoauth_relative(rec.access_expires,
      time(NULL), rel, sizeof(rel)));
  }
  mailoauth_tokenstore_record_free(&rec);
}

static int ftpmailoauth_test_one(struct mailoauth_tokens *tokens,
    const struct mailoauth_account *acct, const char *what,
    const char *url) {
  struct mailoauth_mailauth_transcript tr;
  const char *token;
  int res;

  if (url == NULL) {
    printf("%s: no server configured for account %s\n", what, acct->name);
    return -1;
  }

  token = ftpmailoauth_get_token(tokens, acct);
  if (token == NULL) {
    return -1;
  }

  res = ftpmailoauth_login(acct, what, url, token, &tr);

  /* As the worker does: a refused token is refreshed once. */
  if (res < 0 && tr.auth_sent && !tr.authenticated) {
    mailoauth_mailauth_transcript_clear(&tr);
    printf("The server refused the token: getting a new one and trying once "
      "more.\n");
    mailoauth_tokens_invalidate(tokens);
    token = ftpmailoauth_get_token(tokens, acct);
    if (token != NULL) {
      res = ftpmailoauth_login(acct, what, url, token, &tr);
    }
  }

  mailoauth_mailauth_transcript_clear(&tr);
  return res;
}

/* Graph has no harmless call that Mail.Send alone may make: the test is a
 * real message, from the mailbox to itself.
 */
static int ftpmailoauth_graph_send_test(const struct mailoauth_account *acct,
    const char *token, char *reply, size_t replylen) {
  struct mailoauth_message *msg;
  struct mailoauth_graph *g;
  mailoauth_smtp_status_t st;
  char host[256], body[512];
  long retry_after = 0;

  if (gethostname(host, sizeof(host)) < 0) {
    snprintf(host, sizeof(host), "this server");
  }
  host[sizeof(host) - 1] = '\0';
  snprintf(body, sizeof(body), "This message was sent by 'ftpmailoauth "
    "test %s' on %s to check that mod_mailoauth can send through Microsoft "
    "Graph. It can be deleted.\n", acct->name, host);

  msg = mailoauth_message_create();
  g = mailoauth_graph_create(acct->graph_url, acct->mailbox,
    acct->oauth.ca_file);
  if (msg == NULL || g == NULL ||
      mailoauth_message_set_from(msg, acct->mailbox, NULL) < 0 ||
      mailoauth_message_add_recipient(msg, MAILOAUTH_MESSAGE_TO,
        acct->mailbox, NULL) < 0 ||
      mailoauth_message_set_subject(msg, "mod_mailoauth test message",
        MAILOAUTH_MESSAGE_STRLEN) < 0 ||
      mailoauth_message_set_body(msg, body, MAILOAUTH_MESSAGE_STRLEN) < 0) {
    snprintf(reply, replylen, "cannot build the test message: %s",
      strerror(errno));
    st = MAILOAUTH_SMTP_CONFIG;
  } else {
    st = mailoauth_graph_send(g, token, msg, reply, replylen, &retry_after);
  }

  mailoauth_graph_destroy(g);
  mailoauth_message_free(msg);
  return st == MAILOAUTH_SMTP_SENT ? 0 :
    st == MAILOAUTH_SMTP_AUTHFAIL ? 1 : -1;
}

static int ftpmailoauth_test_graph(struct mailoauth_tokens *tokens,
    const struct mailoauth_account *acct) {
  const char *token, *hint;
  char reply[1024];
  int res;

  printf("Graph %s/v1.0/users/%s/sendMail: a test message to %s:\n",
    acct->graph_url, acct->mailbox, acct->mailbox);
  fflush(stdout);

  token = ftpmailoauth_get_token(tokens, acct);
  if (token == NULL) {
    return -1;
  }
  res = ftpmailoauth_graph_send_test(acct, token, reply, sizeof(reply));
  if (res == 1) {
    /* As the worker does: a refused token is refreshed once. */
    printf("  Graph refused the token (%s): getting a new one and trying "
      "once more.\n", reply);
    mailoauth_tokens_invalidate(tokens);
    token = ftpmailoauth_get_token(tokens, acct);
    res = token != NULL ?
      ftpmailoauth_graph_send_test(acct, token, reply, sizeof(reply)) : -1;
  }

  if (res == 0) {
    printf("  OK: Graph accepted the message (it lands in %s's Inbox, and "
      "a copy in Sent Items).\n", acct->mailbox);
    fflush(stdout);
    return 0;
  }

  printf("  FAILED: %s\n", reply);
  hint = mailoauth_mailauth_hint(reply);
  if (hint != NULL) {
    printf("  Hint: %s\n", hint);
  }
  fflush(stdout);
  return -1;
}

static int ftpmailoauth_cmd_test(const struct ftpmailoauth_env *env,
    const char *name, const char *which) {
  struct mailoauth_tokenstore_record rec;
  struct mailoauth_account acct;
  struct mailoauth_tokens *tokens;
  int smtp = 1, imap = 1, res, failed = 0;
  const char *token;
  char err[1024];

  if (which != NULL && strcasecmp(which, "smtp") == 0) {
    imap = 0;
  } else if (which != NULL && strcasecmp(which, "imap") == 0) {
    smtp = 0;
  } else if (which != NULL && strcasecmp(which, "both") != 0) {
    ftpmailoauth_err("test %s %s: say smtp, imap or both", name, which);
    return FTPMAILOAUTH_EXIT_USAGE;
  }

  res = ftpmailoauth_load_account(env, name, &acct, 1);
  if (res != 0) {
    return res;
  }

  if (ftpmailoauth_become_owner(env) < 0 ||
      ftpmailoauth_prepare_dirs(env) < 0 ||
      (tokens = ftpmailoauth_tokens(env, &acct)) == NULL) {
    mailoauth_account_clear(&acct);
    return FTPMAILOAUTH_EXIT_FAIL;
  }

  /* The file's token before get(), to tell whether get() refreshed. */
  memset(&rec, 0, sizeof(rec));
  (void) mailoauth_tokens_status(tokens, &rec, err, sizeof(err));

  token = ftpmailoauth_get_token(tokens, &acct);
  if (token == NULL) {
    failed = 1;

  } else {
    ftpmailoauth_token_origin(tokens, token, rec.access_token);
    if (acct.transport == MAILOAUTH_ACCOUNT_TRANSPORT_GRAPH) {
      /* The token is Graph's: SMTP and IMAP servers would refuse it. */
      if (smtp &&
          ftpmailoauth_test_graph(tokens, &acct) < 0) {
        failed = 1;
      }
      if (imap && which != NULL && strcasecmp(which, "imap") == 0) {
        printf("IMAP: not used by account %s: its token is for Microsoft "
          "Graph (transport=graph); pull tasks need an account of their "
          "own.\n", acct.name);
        failed = 1;
      }

    } else {
      if (smtp &&
          ftpmailoauth_test_one(tokens, &acct, "SMTP", acct.smtp_url) < 0) {
        failed = 1;
      }
      if (imap &&
          ftpmailoauth_test_one(tokens, &acct, "IMAP", acct.imap_url) < 0) {
        failed = 1;
      }
    }
  }

  mailoauth_tokenstore_record_free(&rec);
  mailoauth_tokens_destroy(tokens);
  mailoauth_account_clear(&acct);
  return failed ? FTPMAILOAUTH_EXIT_FAIL : FTPMAILOAUTH_EXIT_OK;
}

/* ------------------------------------------------------------------------
 * Command line.
 */

static void ftpmailoauth_usage(FILE *fh) {
  fprintf(fh,
"Usage: " FTPMAILOAUTH_PROG " [options] signin [--device|--no-listen] ACCOUNT\n"
"       " FTPMAILOAUTH_PROG " [options] status [ACCOUNT]\n"
"       " FTPMAILOAUTH_PROG " [options] test ACCOUNT [smtp|imap|both]\n"
"       " FTPMAILOAUTH_PROG " [options] cert ACCOUNT\n"
"\n"
"Signs in mod_mailoauth's OAuth mail accounts (MailOAuthAccount in\n"
"proftpd.conf) and checks them.  A person signs in once; the server keeps\n"
"the tokens fresh from then on.\n"
"\n"
"Commands:\n"
"  signin ACCOUNT   sign in with a browser: open the printed address on any\n"
"                   machine that reaches the redirect URI's port (default\n"
"                   http://localhost:9090/...; from elsewhere use e.g.\n"
"                   ssh -L 9090:localhost:9090 this-server).  App-only\n"
"                   accounts need no sign-in: the settings are checked.\n"
"  status [ACCOUNT] who is signed in, token expiry, last error, token file,\n"
"                   certificate or declared secret expiry (warns 30 days\n"
"                   ahead)\n"
"  cert ACCOUNT     the certificate of a client-cert= account: SHA-1\n"
"                   thumbprint (as Azure shows it), SHA-256, subject,\n"
"                   validity, and what to upload to the app registration\n"
"  status --json    the running worker's status (accounts, notification\n"
"                   queue, tasks, counters) as JSON, as its metrics show it\n"
"  test ACCOUNT [smtp|imap|both]\n"
"                   log in to the account's SMTP and IMAP servers with\n"
"                   XOAUTH2 (refreshing the token first if needed), show\n"
"                   the servers' answers and what to do about failures;\n"
"                   with transport=graph, send a test message from the\n"
"                   mailbox to itself through Microsoft Graph instead\n"
"\n"
"Options:\n"
"  -c, --config FILE     proftpd.conf to read (default "
  FTPMAILOAUTH_DEFAULT_CONFIG ")\n"
"      --device          signin: device code flow (for servers without a\n"
"                        browser: enter a short code on any device)\n"
"      --no-listen       signin: do not listen on the redirect URI's port;\n"
"                        paste the address the browser ends up at instead\n"
"      --timeout SECS    signin: how long to wait for the browser (600)\n"
"      --token-dir DIR   where token files are (default: MailOAuthStateDir\n"
"                        /tokens, i.e. " FTPMAILOAUTH_DEFAULT_STATEDIR
  "/tokens)\n"
"      --owner USER      who owns token files (default: proftpd.conf's User)\n"
"      --json            status: the worker's status document\n"
"  -v, --verbose         show trace lines (repeat for more)\n"
"  -h, --help            this text\n"
"\n"
"Account settings (override or replace the MailOAuthAccount line, so an\n"
"account can be used without proftpd.conf):\n"
"      --tenant ID  --client-id ID  --client-secret-file FILE  --mailbox ADDR\n"
"      --client-cert KEY[,CERT]\n"
"      --grant delegated|app-only  --provider NAME  --authority URL\n"
"      --redirect-uri URL  --ca-file FILE  --smtp URL  --imap URL\n"
"\n"
"Exit status: 0 success, 1 failure, 2 usage or configuration error.\n");
}

enum {
  OPT_DEVICE = 256, OPT_NO_LISTEN, OPT_TIMEOUT, OPT_TOKEN_DIR, OPT_OWNER,
  OPT_JSON,
  OPT_ACCOUNT_FLAG
};

struct ftpmailoauth_flag {
  const char *option;
  const char *key;
};

static const struct ftpmailoauth_flag ftpmailoauth_flags[] = {
  { "tenant", "tenant" },
  { "client-id", "client-id" },
  { "client-secret-file", "client-secret" },
  { "client-cert", "client-cert" },
  { "mailbox", "mailbox" },
  { "grant", "grant" },
  { "provider", "provider" },
  { "authority", "authority" },
  { "redirect-uri", "redirect-uri" },
  { "ca-file", "ca-file" },
  { "smtp", "smtp" },
  { "imap", "imap" },
  { NULL, NULL }
};

static int ftpmailoauth_add_flag(struct ftpmailoauth_opts *o,
    const char *option, const char *value) {
  char abspath[PATH_MAX], *word;
  const char *key = NULL;
  size_t len, i;

  for (i = 0; ftpmailoauth_flags[i].option != NULL; i++) {
    if (strcmp(ftpmailoauth_flags[i].option, option) == 0) {
      key = ftpmailoauth_flags[i].key;
    }
  }

  if (key == NULL || o->nflags >= FTPMAILOAUTH_MAX_FLAGS) {
    return -1;
  }

  /* The parser wants a secret's location, never the secret itself. */
  if (strcmp(option, "client-secret-file") == 0) {
    if (realpath(value, abspath) == NULL) {
      ftpmailoauth_err("--client-secret-file %s: %s", value, strerror(errno));
      return -1;
    }
    len = strlen(abspath) + 32;
    word = malloc(len);
    if (word != NULL) {
      snprintf(word, len, "client-secret=file:%s", abspath);
    }

  } else if (strcmp(option, "client-cert") == 0) {
    len = strlen(value) + 32;
    word = malloc(len);
    if (word != NULL) {
      snprintf(word, len, "client-cert=%s%s", strncmp(value, "file:", 5) ?
        "file:" : "", value);
    }

  } else {
    len = strlen(key) + strlen(value) + 2;
    word = malloc(len);
    if (word != NULL) {
      snprintf(word, len, "%s=%s", key, value);
    }
  }

  if (word == NULL) {
    return -1;
  }

  o->flags[o->nflags++] = word;
  return 0;
}

/* Returns the index of the first operand, or -1 (exit code in *code). */
static int ftpmailoauth_parse_args(int argc, char **argv,
    struct ftpmailoauth_opts *o, int *code) {
  struct option longopts[32];
  unsigned int n = 0, i;
  int c;

  static const struct option fixed[] = {
    { "config", required_argument, NULL, 'c' },
    { "device", no_argument, NULL, OPT_DEVICE },
    { "no-listen", no_argument, NULL, OPT_NO_LISTEN },
    { "timeout", required_argument, NULL, OPT_TIMEOUT },
    { "token-dir", required_argument, NULL, OPT_TOKEN_DIR },
    { "owner", required_argument, NULL, OPT_OWNER },
    { "json", no_argument, NULL, OPT_JSON },
    { "verbose", no_argument, NULL, 'v' },
    { "help", no_argument, NULL, 'h' }
  };

  for (i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
    longopts[n++] = fixed[i];
  }
  for (i = 0; ftpmailoauth_flags[i].option != NULL; i++) {
    longopts[n].name = ftpmailoauth_flags[i].option;
    longopts[n].has_arg = required_argument;
    longopts[n].flag = NULL;
    longopts[n++].val = OPT_ACCOUNT_FLAG;
  }
  memset(&longopts[n], 0, sizeof(longopts[n]));

  o->timeout = FTPMAILOAUTH_DEFAULT_TIMEOUT;
  *code = FTPMAILOAUTH_EXIT_USAGE;

  for (;;) {
    int idx = -1;

    c = getopt_long(argc, argv, "c:vh", longopts, &idx);
    if (c == -1) {
      break;
    }

    switch (c) {
      case 'c':
        o->config = optarg;
        o->config_given = 1;
        break;

      case 'v':
        o->verbose++;
        break;

      case 'h':
        ftpmailoauth_usage(stdout);
        *code = FTPMAILOAUTH_EXIT_OK;
        return -1;

      case OPT_DEVICE:
        o->device = 1;
        break;

      case OPT_NO_LISTEN:
        o->no_listen = 1;
        break;

      case OPT_TIMEOUT: {
        char *end;

        o->timeout = strtol(optarg, &end, 10);
        if (*end != '\0' || o->timeout < 1) {
          ftpmailoauth_err("--timeout %s: give a number of seconds", optarg);
          return -1;
        }
        break;
      }

      case OPT_TOKEN_DIR:
        o->token_dir = optarg;
        break;

      case OPT_OWNER:
        o->owner = optarg;
        break;

      case OPT_JSON:
        o->json = 1;
        break;

      case OPT_ACCOUNT_FLAG:
        if (idx < 0 ||
            ftpmailoauth_add_flag(o, longopts[idx].name, optarg) < 0) {
          return -1;
        }
        break;

      default:
        fprintf(stderr, "Try '" FTPMAILOAUTH_PROG " --help'.\n");
        return -1;
    }
  }

  return optind;
}

static int ftpmailoauth_dispatch(struct ftpmailoauth_env *env, int argc,
    char **argv) {
  const char *cmd = argv[0];

  if (strcmp(cmd, "signin") == 0 && argc == 2) {
    return ftpmailoauth_cmd_signin(env, argv[1]);
  }

  if (strcmp(cmd, "status") == 0 && argc <= 2) {
    return ftpmailoauth_cmd_status(env, argc == 2 ? argv[1] : NULL);
  }

  if (strcmp(cmd, "cert") == 0 && argc == 2) {
    return ftpmailoauth_cmd_cert(env, argv[1]);
  }

  if (strcmp(cmd, "test") == 0 && (argc == 2 || argc == 3)) {
    return ftpmailoauth_cmd_test(env, argv[1], argc == 3 ? argv[2] : NULL);
  }

  ftpmailoauth_err("unknown command or wrong arguments: '%s' (see --help)",
    cmd);
  return FTPMAILOAUTH_EXIT_USAGE;
}

int main(int argc, char **argv) {
  struct ftpmailoauth_opts opts;
  struct ftpmailoauth_env env;
  int first, code, i;

  memset(&opts, 0, sizeof(opts));
  first = ftpmailoauth_parse_args(argc, argv, &opts, &code);
  if (first < 0) {
    return code;
  }

  if (first >= argc) {
    ftpmailoauth_usage(stderr);
    return FTPMAILOAUTH_EXIT_USAGE;
  }

  /* A browser closing the connection early must not kill us. */
  signal(SIGPIPE, SIG_IGN);
  umask(077);

  ftpmailoauth_verbose = opts.verbose;
  mailoauth_log_set_sink(ftpmailoauth_log_sink);
  if (opts.verbose > 0) {
    mailoauth_trace_set_sink(ftpmailoauth_trace_sink);
  }

  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    ftpmailoauth_err("cannot initialise libcurl");
    return FTPMAILOAUTH_EXIT_FAIL;
  }
  (void) mailoauth_oauth_wipe_json_memory();

  if (ftpmailoauth_env_init(&env, &opts) < 0) {
    code = FTPMAILOAUTH_EXIT_USAGE;

  } else {
    code = ftpmailoauth_dispatch(&env, argc - first, argv + first);
  }

  ftpmailoauth_env_free(&env);
  for (i = 0; i < opts.nflags; i++) {
    free(opts.flags[i]);
  }
  curl_global_cleanup();
  return code;
}
