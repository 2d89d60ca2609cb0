/*
 * Unit tests for mod_mailoauth/lib/oauth/tokens.c, without a network: an account
 * whose authority is https://127.0.0.1:1 (nothing listens there) makes
 * every token request fail as TRANSIENT, so what is tested here is the
 * bookkeeping around requests: when one is made at all, backoff, the lock,
 * the token file, change detection, log lines (once, no secrets).  The
 * real HTTP exchanges are tested in t/integration/test_signin.py.
 */

#include "mailoauth/tokens.h"
#include "mailoauth/trace.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#define SECRET_REFRESH  "0.ARt0kEn-SeCrEt-refresh-AAAABBBBCCCCDDDDEEEE"
#define SECRET_ACCESS   "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.access-secret"
#define SECRET_ACCESS2  "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.second-access"
#define SECRET_REFRESH2 "0.ARt0kEn-SeCrEt-rotated-FFFFGGGGHHHHIIIIJJJJ"
#define SECRET_CLIENT   "Xy78Q~client-secret-value-0123456789abcd"

#define ACCOUNT         "sales"
#define SIGNIN_CMD      "ftpmailoauth -c /etc/proftpd/test.conf signin sales"

static const char *all_secrets[] = {
  SECRET_REFRESH, SECRET_ACCESS, SECRET_ACCESS2, SECRET_REFRESH2,
  SECRET_CLIENT, NULL
};

static char dir[PATH_MAX];
static char token_path[PATH_MAX];
static char lock_path[PATH_MAX];
static struct mailoauth_account account;
static time_t now;

/* ------------------------------------------------------------------------
 * Recorders for trace and log lines.
 */

struct recorder {
  char *text;
  size_t len, size;
  unsigned int lines;
};

static struct recorder traces, logs;

static void rec_add(struct recorder *r, const char *prefix, const char *fmt,
    va_list ap) {
  char line[8192];
  int n;

  n = snprintf(line, sizeof(line), "%s", prefix);
  n += vsnprintf(line + n, sizeof(line) - (size_t) n, fmt, ap);
  if ((size_t) n >= sizeof(line) - 1) {
    n = (int) sizeof(line) - 2;
  }
  line[n++] = '\n';

  if (r->len + (size_t) n + 1 > r->size) {
    r->size = (r->len + (size_t) n + 1) * 2;
    r->text = realloc(r->text, r->size);
  }
  memcpy(r->text + r->len, line, (size_t) n);
  r->len += (size_t) n;
  r->text[r->len] = '\0';
  r->lines++;
}

static void rec_reset(struct recorder *r) {
  free(r->text);
  memset(r, 0, sizeof(*r));
}

static void trace_sink(const char *channel, int level, const char *fmt,
    va_list ap) {
  char prefix[64];

  snprintf(prefix, sizeof(prefix), "%s %d: ", channel, level);
  rec_add(&traces, prefix, fmt, ap);
}

static void log_sink(const char *fmt, va_list ap) {
  rec_add(&logs, "", fmt, ap);
}

/* Token requests made so far: oauth.c traces each POST. */
static unsigned int requests(void) {
  unsigned int n = 0;
  const char *p = traces.text;

  while (p != NULL && (p = strstr(p, ": POST https://")) != NULL) {
    n++;
    p++;
  }
  return n;
}

static void assert_no_secret_in(const char *what, const char *text) {
  unsigned int i;

  if (text == NULL) {
    return;
  }

  for (i = 0; all_secrets[i] != NULL; i++) {
    ck_assert_msg(strstr(text, all_secrets[i]) == NULL,
      "secret #%u found in %s", i, what);
  }
}

/* ------------------------------------------------------------------------
 * Fixture.
 */

static void make_account(const char *grant) {
  char grant_arg[64];
  char *argv[8];
  char err[512];
  int argc = 0;

  snprintf(grant_arg, sizeof(grant_arg), "grant=%s", grant);
  argv[argc++] = "client-id=00001111-aaaa-2222-bbbb-3333cccc4444";
  argv[argc++] = "mailbox=ftp-alerts@contoso.test";
  argv[argc++] = "tenant=contoso.test";
  argv[argc++] = "authority=https://127.0.0.1:1";
  argv[argc++] = "client-secret=env:TEST_TOKENS_SECRET";
  argv[argc++] = grant_arg;

  mailoauth_account_clear(&account);
  ck_assert_msg(mailoauth_account_parse(&account, ACCOUNT, argc, argv, err,
    sizeof(err)) == 0, "%s", err);
  ck_assert_msg(mailoauth_account_load_secret(&account, err, sizeof(err)) == 0,
    "%s", err);
}

static void setup(void) {
  strcpy(dir, "/tmp/mailoauth-tokens-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
  snprintf(token_path, sizeof(token_path), "%s/%s.json", dir, ACCOUNT);
  snprintf(lock_path, sizeof(lock_path), "%s/%s.lock", dir, ACCOUNT);
  umask(022);
  setenv("TEST_TOKENS_SECRET", SECRET_CLIENT, 1);

  memset(&account, 0, sizeof(account));
  make_account("delegated");

  now = time(NULL);
  rec_reset(&traces);
  rec_reset(&logs);
  mailoauth_trace_set_sink(trace_sink);
  mailoauth_log_set_sink(log_sink);
}

static void teardown(void) {
  char cmd[PATH_MAX + 32];

  /* Every test ends with the proof that nothing leaked. */
  assert_no_secret_in("trace lines", traces.text);
  assert_no_secret_in("log lines", logs.text);
  mailoauth_trace_set_sink(NULL);
  mailoauth_log_set_sink(NULL);
  rec_reset(&traces);
  rec_reset(&logs);
  mailoauth_account_clear(&account);

  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  if (system(cmd) != 0) {
    fprintf(stderr, "cannot remove %s\n", dir);
  }
}

/* ------------------------------------------------------------------------
 * Helpers.
 */

static struct mailoauth_tokens *make_tokens(void) {
  struct mailoauth_tokens *t;
  char err[512];

  t = mailoauth_tokens_create(&account, dir, (uid_t) -1, SIGNIN_CMD, err,
    sizeof(err));
  ck_assert_msg(t != NULL, "%s", err);
  return t;
}

/* Writes the token file as another process (the sign-in tool) would. */
static void write_tokens(const char *grant, const char *refresh,
    const char *access, time_t expires, time_t refreshed) {
  struct mailoauth_tokenstore_record rec;
  struct mailoauth_tokenstore *ts;
  char err[512];

  ts = mailoauth_tokenstore_create(dir, ACCOUNT, (uid_t) -1, err,
    sizeof(err));
  ck_assert_msg(ts != NULL, "%s", err);

  memset(&rec, 0, sizeof(rec));
  ck_assert_int_eq(mailoauth_tokenstore_set(&rec.grant, grant), 0);
  ck_assert_int_eq(mailoauth_tokenstore_set(&rec.refresh_token, refresh), 0);
  ck_assert_int_eq(mailoauth_tokenstore_set(&rec.access_token, access), 0);
  ck_assert_int_eq(mailoauth_tokenstore_set(&rec.username,
    "ftp-alerts@contoso.test"), 0);
  rec.access_expires = expires;
  rec.obtained_at = refreshed - 3600;
  rec.refreshed_at = refreshed;

  ck_assert_msg(mailoauth_tokenstore_write(ts, &rec, err, sizeof(err)) == 0,
    "%s", err);
  mailoauth_tokenstore_record_free(&rec);
  mailoauth_tokenstore_destroy(ts);
}

static void read_status(struct mailoauth_tokens *t,
    struct mailoauth_tokenstore_record *rec) {
  char err[512];

  memset(rec, 0, sizeof(*rec));
  ck_assert_msg(mailoauth_tokens_status(t, rec, err, sizeof(err)) == 0, "%s",
    err);
}

/* ------------------------------------------------------------------------
 * Tests.
 */

START_TEST(test_create_errors) {
  struct mailoauth_tokens *t;
  char err[512] = "";

  t = mailoauth_tokens_create(&account, NULL, (uid_t) -1, NULL, err,
    sizeof(err));
  ck_assert_ptr_null(t);
  ck_assert_int_eq(errno, EINVAL);
  ck_assert_str_ne(err, "");

  t = mailoauth_tokens_create(NULL, dir, (uid_t) -1, NULL, err, sizeof(err));
  ck_assert_ptr_null(t);

  /* Nothing is touched on disk before it is needed. */
  t = make_tokens();
  ck_assert_int_eq(access(token_path, F_OK), -1);
  ck_assert_int_eq(access(lock_path, F_OK), -1);
  mailoauth_tokens_destroy(t);
  mailoauth_tokens_destroy(NULL);
}
END_TEST

START_TEST(test_fresh_token_needs_no_request) {
  struct mailoauth_tokens *t;
  mailoauth_oauth_class_t c = MAILOAUTH_OAUTH_TRANSIENT;
  const char *token;

  write_tokens("delegated", SECRET_REFRESH, SECRET_ACCESS, now + 3000,
    now - 600);
  t = make_tokens();

  ck_assert_int_eq(mailoauth_tokens_next_due(t, now), now);
  token = mailoauth_tokens_get(t, now, &c);
  ck_assert_ptr_nonnull(token);
  ck_assert_str_eq(token, SECRET_ACCESS);
  ck_assert_int_eq(c, MAILOAUTH_OAUTH_OK);

  /* No request, not even the lock. */
  ck_assert_uint_eq(requests(), 0);
  ck_assert_int_eq(access(lock_path, F_OK), -1);
  ck_assert_uint_eq(logs.lines, 0);

  ck_assert_int_eq(mailoauth_tokens_next_due(t, now),
    now + 3000 - MAILOAUTH_TOKENS_REFRESH_MARGIN);

  /* Still valid a little later, and the class pointer is optional. */
  token = mailoauth_tokens_get(t, now + 100, NULL);
  ck_assert_str_eq(token, SECRET_ACCESS);
  ck_assert_uint_eq(requests(), 0);
  mailoauth_tokens_destroy(t);
}
END_TEST

START_TEST(test_not_signed_in_logs_once) {
  struct mailoauth_tokens *t;
  mailoauth_oauth_class_t c = MAILOAUTH_OAUTH_OK;
  unsigned int i;

  t = make_tokens();
  for (i = 0; i < 3; i++) {
    ck_assert_ptr_null(mailoauth_tokens_get(t, now + i, &c));
    ck_assert_int_eq(c, MAILOAUTH_OAUTH_REAUTH);
  }

  ck_assert_uint_eq(requests(), 0);
  ck_assert_uint_eq(logs.lines, 1);
  ck_assert_ptr_nonnull(strstr(logs.text, ACCOUNT));
  ck_assert_ptr_nonnull(strstr(logs.text, SIGNIN_CMD));
  ck_assert_int_eq(mailoauth_tokens_next_due(t, now), 0);

  /* The person signs in: picked up at once, no restart. */
  write_tokens("delegated", SECRET_REFRESH, SECRET_ACCESS, now + 3600, now);
  ck_assert_str_eq(mailoauth_tokens_get(t, now + 5, &c), SECRET_ACCESS);
  ck_assert_int_eq(c, MAILOAUTH_OAUTH_OK);
  ck_assert_uint_eq(requests(), 0);
  mailoauth_tokens_destroy(t);
}
END_TEST

START_TEST(test_transient_failure_keeps_valid_token) {
  struct mailoauth_tokenstore_record rec;
  struct mailoauth_tokens *t;
  mailoauth_oauth_class_t c = MAILOAUTH_OAUTH_REAUTH;
  time_t due, error_at;
  char *json;
  FILE *fh;

  /* Inside the refresh margin: a refresh is due, the token still works. */
  write_tokens("delegated", SECRET_REFRESH, SECRET_ACCESS, now + 300,
    now - 3300);
  t = make_tokens();

  ck_assert_str_eq(mailoauth_tokens_get(t, now, &c), SECRET_ACCESS);
  ck_assert_int_eq(c, MAILOAUTH_OAUTH_OK);
  ck_assert_uint_eq(requests(), 1);
  ck_assert_uint_eq(logs.lines, 1);
  ck_assert_ptr_nonnull(strstr(logs.text, "retrying with backoff"));

  /* 2 s base, full jitter, whole seconds, never 0. */
  due = mailoauth_tokens_next_due(t, now);
  ck_assert_int_ge(due, now + 1);
  ck_assert_int_le(due, now + 2);

  /* The failure is in the file for `status`, without secrets. */
  read_status(t, &rec);
  ck_assert_str_eq(rec.error_class, "transient");
  ck_assert_int_eq(rec.error_at, now);
  ck_assert_ptr_nonnull(rec.error_message);
  assert_no_secret_in("recorded error", rec.error_message);
  ck_assert_str_eq(rec.refresh_token, SECRET_REFRESH);
  error_at = rec.error_at;
  mailoauth_tokenstore_record_free(&rec);

  /* During the backoff: no request. */
  ck_assert_str_eq(mailoauth_tokens_get(t, due - 1, &c), SECRET_ACCESS);
  ck_assert_uint_eq(requests(), 1);

  /* After it: one more request, and no second log line. */
  ck_assert_str_eq(mailoauth_tokens_get(t, due, &c), SECRET_ACCESS);
  ck_assert_uint_eq(requests(), 2);
  ck_assert_uint_eq(logs.lines, 1);
  ck_assert_int_gt(mailoauth_tokens_next_due(t, due), due);

  read_status(t, &rec);
  ck_assert_int_eq(rec.error_at, due);
  ck_assert_int_ne(rec.error_at, error_at);
  mailoauth_tokenstore_record_free(&rec);

  fh = fopen(token_path, "r");
  ck_assert_ptr_nonnull(fh);
  json = calloc(1, 65536);
  ck_assert_uint_gt(fread(json, 1, 65535, fh), 0);
  fclose(fh);
  ck_assert_ptr_nonnull(strstr(json, "\"last_error\""));
  free(json);

  mailoauth_tokens_destroy(t);
}
END_TEST

START_TEST(test_expired_token_transient) {
  struct mailoauth_tokens *t;
  mailoauth_oauth_class_t c = MAILOAUTH_OAUTH_OK;

  write_tokens("delegated", SECRET_REFRESH, SECRET_ACCESS, now - 10,
    now - 3610);
  t = make_tokens();

  ck_assert_ptr_null(mailoauth_tokens_get(t, now, &c));
  ck_assert_int_eq(c, MAILOAUTH_OAUTH_TRANSIENT);
  ck_assert_int_eq(errno, EAGAIN);
  ck_assert_uint_eq(requests(), 1);

  /* A token a few seconds from expiry is not handed out either. */
  mailoauth_tokens_destroy(t);
  write_tokens("delegated", SECRET_REFRESH, SECRET_ACCESS, now + 5,
    now - 3600);
  t = make_tokens();
  ck_assert_ptr_null(mailoauth_tokens_get(t, now, &c));
  ck_assert_int_eq(c, MAILOAUTH_OAUTH_TRANSIENT);
  mailoauth_tokens_destroy(t);
}
END_TEST

START_TEST(test_recovery_logged_once) {
  struct mailoauth_tokens *t;
  mailoauth_oauth_class_t c = MAILOAUTH_OAUTH_OK;

  write_tokens("delegated", SECRET_REFRESH, SECRET_ACCESS, now - 10,
    now - 3610);
  t = make_tokens();
  ck_assert_ptr_null(mailoauth_tokens_get(t, now, &c));
  ck_assert_ptr_null(mailoauth_tokens_get(t, now + 5, &c));
  ck_assert_uint_eq(logs.lines, 1);

  /* Another process got a new token: the service works again. */
  write_tokens("delegated", SECRET_REFRESH2, SECRET_ACCESS2, now + 3600,
    now + 6);
  ck_assert_str_eq(mailoauth_tokens_get(t, now + 6, &c), SECRET_ACCESS2);
  ck_assert_int_eq(c, MAILOAUTH_OAUTH_OK);
  ck_assert_uint_eq(logs.lines, 2);
  ck_assert_ptr_nonnull(strstr(logs.text, "token refresh for account "
    ACCOUNT " works again after 2 failures"));

  /* Back to normal scheduling. */
  ck_assert_int_eq(mailoauth_tokens_next_due(t, now + 6),
    now + 3600 - MAILOAUTH_TOKENS_REFRESH_MARGIN);
  mailoauth_tokens_destroy(t);
}
END_TEST

START_TEST(test_invalidate_forces_refresh) {
  struct mailoauth_tokens *t;
  mailoauth_oauth_class_t c = MAILOAUTH_OAUTH_OK;

  write_tokens("delegated", SECRET_REFRESH, SECRET_ACCESS, now + 3000, now);
  t = make_tokens();
  ck_assert_str_eq(mailoauth_tokens_get(t, now, &c), SECRET_ACCESS);

  /* The mail server refused it: never hand it out again. */
  mailoauth_tokens_invalidate(t);
  ck_assert_int_eq(mailoauth_tokens_next_due(t, now), now);
  ck_assert_ptr_null(mailoauth_tokens_get(t, now, &c));
  ck_assert_int_eq(c, MAILOAUTH_OAUTH_TRANSIENT);
  ck_assert_uint_eq(requests(), 1);

  /* A new token in the file is fine again. */
  write_tokens("delegated", SECRET_REFRESH2, SECRET_ACCESS2, now + 3600,
    now + 1);
  ck_assert_str_eq(mailoauth_tokens_get(t, now + 1, &c), SECRET_ACCESS2);
  mailoauth_tokens_invalidate(NULL);
  mailoauth_tokens_destroy(t);
}
END_TEST

START_TEST(test_lock_file_mode) {
  struct mailoauth_tokens *t;
  struct stat st;

  umask(0);
  write_tokens("delegated", SECRET_REFRESH, SECRET_ACCESS, now - 1, now);
  t = make_tokens();
  ck_assert_ptr_null(mailoauth_tokens_get(t, now, NULL));

  ck_assert_int_eq(lstat(lock_path, &st), 0);
  ck_assert(S_ISREG(st.st_mode));
  ck_assert_uint_eq(st.st_mode & 07777, 0600);
  ck_assert_uint_eq(st.st_uid, geteuid());

  /* The lock is released: anyone may take it now. */
  {
    int fd = open(lock_path, O_RDONLY);

    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(flock(fd, LOCK_EX | LOCK_NB), 0);
    close(fd);
  }

  /* A symlink in its place is refused, not followed. */
  ck_assert_int_eq(unlink(lock_path), 0);
  ck_assert_int_eq(symlink("/etc/passwd", lock_path), 0);
  mailoauth_tokens_destroy(t);
  t = make_tokens();
  ck_assert_ptr_null(mailoauth_tokens_get(t, now + 100, NULL));
  ck_assert_ptr_nonnull(strstr(logs.text, lock_path));
  mailoauth_tokens_destroy(t);

  /* So is a hard link to another file, which is left as it was. */
  {
    char other[sizeof(lock_path) + 8];
    struct stat before;
    int fd;

    snprintf(other, sizeof(other), "%s.other", lock_path);
    fd = open(other, O_WRONLY | O_CREAT | O_EXCL, 0644);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_int_eq(stat(other, &before), 0);
    ck_assert_int_eq(unlink(lock_path), 0);
    ck_assert_int_eq(link(other, lock_path), 0);
    rec_reset(&logs);
    t = make_tokens();
    ck_assert_ptr_null(mailoauth_tokens_get(t, now + 200, NULL));
    ck_assert_ptr_nonnull(strstr(logs.text, "links"));
    mailoauth_tokens_destroy(t);
    ck_assert_int_eq(stat(other, &st), 0);
    ck_assert_uint_eq(st.st_mode, before.st_mode);
    ck_assert_uint_eq(st.st_uid, before.st_uid);
    ck_assert_int_eq(unlink(lock_path), 0);
    ck_assert_int_eq(unlink(other), 0);
  }
}
END_TEST

static void fill_signin(struct mailoauth_oauth_response *resp) {
  memset(resp, 0, sizeof(*resp));
  resp->oauth_class = MAILOAUTH_OAUTH_OK;
  resp->access_token = strdup(SECRET_ACCESS2);
  resp->refresh_token = strdup(SECRET_REFRESH2);
  resp->scope = strdup("https://outlook.office.com/SMTP.Send "
    "https://outlook.office.com/IMAP.AccessAsUser.All");
  resp->expires_in = 3599;
  resp->expires_at = now + 3599;
  resp->identity.username = strdup("ftp-alerts@contoso.test");
  resp->identity.name = strdup("FTP Alerts");
  resp->identity.tenant = strdup("5f1b3a6e-8c2d-4e0f-9a7b-1c2d3e4f5a6b");
  resp->identity.oid = strdup("00000000-0000-0000-66f3-3332eca7ea81");
}

START_TEST(test_store_signin) {
  struct mailoauth_oauth_response resp;
  struct mailoauth_tokenstore_record rec;
  struct mailoauth_tokens *t;
  mailoauth_oauth_class_t c = MAILOAUTH_OAUTH_OK;
  char err[512];
  struct stat st;

  /* Not signed in yet: REAUTH, and the worker waits. */
  t = make_tokens();
  ck_assert_ptr_null(mailoauth_tokens_get(t, now, &c));
  ck_assert_int_eq(c, MAILOAUTH_OAUTH_REAUTH);

  memset(&rec, 0, sizeof(rec));
  ck_assert_int_eq(mailoauth_tokens_status(t, &rec, err, sizeof(err)), -1);
  ck_assert_int_eq(errno, ENOENT);

  /* Only a successful sign-in is stored. */
  memset(&resp, 0, sizeof(resp));
  resp.oauth_class = MAILOAUTH_OAUTH_DECLINED;
  ck_assert_int_eq(mailoauth_tokens_store_signin(t, &resp, now, err,
    sizeof(err)), -1);

  fill_signin(&resp);
  ck_assert_msg(mailoauth_tokens_store_signin(t, &resp, now, err,
    sizeof(err)) == 0, "%s", err);
  mailoauth_oauth_response_clear(&resp);

  ck_assert_int_eq(stat(token_path, &st), 0);
  ck_assert_uint_eq(st.st_mode & 07777, 0600);

  read_status(t, &rec);
  ck_assert_str_eq(rec.grant, "delegated");
  ck_assert_str_eq(rec.refresh_token, SECRET_REFRESH2);
  ck_assert_str_eq(rec.username, "ftp-alerts@contoso.test");
  ck_assert_str_eq(rec.name, "FTP Alerts");
  ck_assert_int_eq(rec.access_expires, now + 3599);
  ck_assert_int_eq(rec.obtained_at, now);
  ck_assert_int_eq(rec.refreshed_at, now);
  ck_assert_ptr_null(rec.error_class);
  mailoauth_tokenstore_record_free(&rec);

  /* The REAUTH state is gone; the stored token is used as it is. */
  ck_assert_str_eq(mailoauth_tokens_get(t, now + 1, &c), SECRET_ACCESS2);
  ck_assert_int_eq(c, MAILOAUTH_OAUTH_OK);
  ck_assert_uint_eq(requests(), 0);
  mailoauth_tokens_destroy(t);
}
END_TEST

START_TEST(test_store_signin_clears_error) {
  struct mailoauth_oauth_response resp;
  struct mailoauth_tokenstore_record rec;
  struct mailoauth_tokens *t;
  char err[512];

  write_tokens("delegated", SECRET_REFRESH, SECRET_ACCESS, now - 1, now);
  t = make_tokens();
  ck_assert_ptr_null(mailoauth_tokens_get(t, now, NULL));
  read_status(t, &rec);
  ck_assert_str_eq(rec.error_class, "transient");
  mailoauth_tokenstore_record_free(&rec);

  fill_signin(&resp);
  ck_assert_msg(mailoauth_tokens_store_signin(t, &resp, now + 1, err,
    sizeof(err)) == 0, "%s", err);
  mailoauth_oauth_response_clear(&resp);

  read_status(t, &rec);
  ck_assert_ptr_null(rec.error_class);
  ck_assert_ptr_null(rec.error_message);
  ck_assert_int_eq(rec.error_at, 0);
  mailoauth_tokenstore_record_free(&rec);

  /* The backoff of the failed refresh does not hold the new token back. */
  ck_assert_str_eq(mailoauth_tokens_get(t, now + 1, NULL), SECRET_ACCESS2);
  mailoauth_tokens_destroy(t);
}
END_TEST

START_TEST(test_keepalive) {
  struct mailoauth_tokens *t;
  time_t refreshed = now - 86400;

  /* A long-lived access token: the keep-alive comes first. */
  write_tokens("delegated", SECRET_REFRESH, SECRET_ACCESS, now + 30 * 86400,
    refreshed);
  t = make_tokens();
  ck_assert_str_eq(mailoauth_tokens_get(t, now, NULL), SECRET_ACCESS);
  ck_assert_int_eq(mailoauth_tokens_next_due(t, now),
    refreshed + MAILOAUTH_TOKENS_KEEPALIVE);
  ck_assert_uint_eq(requests(), 0);

  /* When it is due, get() refreshes although the token is valid (and
   * hands the valid one out when that fails).
   */
  ck_assert_str_eq(mailoauth_tokens_get(t, refreshed +
    MAILOAUTH_TOKENS_KEEPALIVE, NULL), SECRET_ACCESS);
  ck_assert_uint_eq(requests(), 1);
  mailoauth_tokens_destroy(t);

  /* Normal tokens: next_due is never after the keep-alive either. */
  write_tokens("delegated", SECRET_REFRESH, SECRET_ACCESS, now + 3600, now);
  t = make_tokens();
  ck_assert_ptr_nonnull(mailoauth_tokens_get(t, now, NULL));
  ck_assert_int_le(mailoauth_tokens_next_due(t, now),
    now + MAILOAUTH_TOKENS_KEEPALIVE);
  mailoauth_tokens_destroy(t);
}
END_TEST

/* A provider issuing tokens shorter than twice the margin: refreshed at
 * half their life, not on every use.
 */
START_TEST(test_short_lived_token) {
  struct mailoauth_tokens *t;

  write_tokens("delegated", SECRET_REFRESH, SECRET_ACCESS, now + 300, now);
  t = make_tokens();
  ck_assert_str_eq(mailoauth_tokens_get(t, now + 100, NULL), SECRET_ACCESS);
  ck_assert_uint_eq(requests(), 0);
  ck_assert_int_eq(mailoauth_tokens_next_due(t, now + 100), now + 150);

  /* Past half its life: refreshed (and still handed out when that
   * fails).
   */
  ck_assert_str_eq(mailoauth_tokens_get(t, now + 150, NULL), SECRET_ACCESS);
  ck_assert_uint_eq(requests(), 1);
  mailoauth_tokens_destroy(t);
}
END_TEST

START_TEST(test_app_only) {
  struct mailoauth_tokens *t;
  mailoauth_oauth_class_t c = MAILOAUTH_OAUTH_OK;

  make_account("app-only");

  /* No file needed: a client credentials request is made. */
  t = make_tokens();
  ck_assert_int_eq(mailoauth_tokens_next_due(t, now), now);
  ck_assert_ptr_null(mailoauth_tokens_get(t, now, &c));
  ck_assert_int_eq(c, MAILOAUTH_OAUTH_TRANSIENT);
  ck_assert_uint_eq(requests(), 1);
  ck_assert_ptr_nonnull(strstr(traces.text, "app-only"));
  ck_assert_uint_eq(logs.lines, 1);
  mailoauth_tokens_destroy(t);

  /* A cached app-only token is used; a delegated one is not. */
  write_tokens("app-only", NULL, SECRET_ACCESS, now + 3000, now);
  t = make_tokens();
  ck_assert_str_eq(mailoauth_tokens_get(t, now, &c), SECRET_ACCESS);
  ck_assert_int_eq(mailoauth_tokens_next_due(t, now),
    now + 3000 - MAILOAUTH_TOKENS_REFRESH_MARGIN);
  mailoauth_tokens_destroy(t);

  write_tokens("delegated", SECRET_REFRESH, SECRET_ACCESS, now + 3000, now);
  t = make_tokens();
  ck_assert_ptr_null(mailoauth_tokens_get(t, now, &c));
  ck_assert_uint_eq(requests(), 2);
  mailoauth_tokens_destroy(t);
}
END_TEST

START_TEST(test_refused_file_until_fixed) {
  struct mailoauth_tokens *t;
  mailoauth_oauth_class_t c = MAILOAUTH_OAUTH_OK;

  write_tokens("delegated", SECRET_REFRESH, SECRET_ACCESS, now + 3600, now);
  ck_assert_int_eq(chmod(token_path, 0644), 0);

  t = make_tokens();
  ck_assert_ptr_null(mailoauth_tokens_get(t, now, &c));
  ck_assert_int_eq(c, MAILOAUTH_OAUTH_CONFIG);
  ck_assert_ptr_null(mailoauth_tokens_get(t, now + 1, &c));
  ck_assert_int_eq(c, MAILOAUTH_OAUTH_CONFIG);
  ck_assert_uint_eq(requests(), 0);
  ck_assert_uint_eq(logs.lines, 1);
  ck_assert_ptr_nonnull(strstr(logs.text, "chmod"));
  ck_assert_int_eq(mailoauth_tokens_next_due(t, now), 0);

  /* The operator fixes it: used at once. */
  ck_assert_int_eq(chmod(token_path, 0600), 0);
  ck_assert_str_eq(mailoauth_tokens_get(t, now + 2, &c), SECRET_ACCESS);
  ck_assert_int_eq(c, MAILOAUTH_OAUTH_OK);
  mailoauth_tokens_destroy(t);
}
END_TEST

/* Another process refreshes while we wait for the lock: we must use its
 * token, not spend the refresh token a second time.
 */
START_TEST(test_reread_inside_lock) {
  struct mailoauth_tokens *t;
  mailoauth_oauth_class_t c = MAILOAUTH_OAUTH_TRANSIENT;
  int pipefd[2], status;
  pid_t pid;
  char ready;

  write_tokens("delegated", SECRET_REFRESH, SECRET_ACCESS, now - 10,
    now - 3600);
  ck_assert_int_eq(pipe(pipefd), 0);

  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    struct timespec pause = { 0, 300 * 1000000L };
    int fd = open(lock_path, O_RDONLY | O_CREAT, 0600);

    if (fd < 0 || flock(fd, LOCK_EX) < 0 || write(pipefd[1], "x", 1) != 1) {
      _exit(1);
    }
    nanosleep(&pause, NULL);
    write_tokens("delegated", SECRET_REFRESH2, SECRET_ACCESS2, now + 3600,
      now);
    _exit(0);
  }

  close(pipefd[1]);
  ck_assert_int_eq(read(pipefd[0], &ready, 1), 1);
  close(pipefd[0]);

  t = make_tokens();
  ck_assert_str_eq(mailoauth_tokens_get(t, now, &c), SECRET_ACCESS2);
  ck_assert_int_eq(c, MAILOAUTH_OAUTH_OK);
  ck_assert_uint_eq(requests(), 0);

  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  mailoauth_tokens_destroy(t);
}
END_TEST

START_TEST(test_rotated_refresh_token_kept_in_file) {
  struct mailoauth_tokenstore_record rec;
  struct mailoauth_tokens *t;

  /* A failed refresh never loses the refresh token, whatever it writes. */
  write_tokens("delegated", SECRET_REFRESH2, SECRET_ACCESS, now - 1, now);
  t = make_tokens();
  ck_assert_ptr_null(mailoauth_tokens_get(t, now, NULL));
  read_status(t, &rec);
  ck_assert_str_eq(rec.refresh_token, SECRET_REFRESH2);
  ck_assert_str_eq(rec.username, "ftp-alerts@contoso.test");
  mailoauth_tokenstore_record_free(&rec);
  mailoauth_tokens_destroy(t);
}
END_TEST

static Suite *tokens_suite(void) {
  Suite *s = suite_create("tokens");
  TCase *tc = tcase_create("tokens");

  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_create_errors);
  tcase_add_test(tc, test_fresh_token_needs_no_request);
  tcase_add_test(tc, test_not_signed_in_logs_once);
  tcase_add_test(tc, test_transient_failure_keeps_valid_token);
  tcase_add_test(tc, test_expired_token_transient);
  tcase_add_test(tc, test_recovery_logged_once);
  tcase_add_test(tc, test_invalidate_forces_refresh);
  tcase_add_test(tc, test_lock_file_mode);
  tcase_add_test(tc, test_store_signin);
  tcase_add_test(tc, test_store_signin_clears_error);
  tcase_add_test(tc, test_keepalive);
  tcase_add_test(tc, test_short_lived_token);
  tcase_add_test(tc, test_app_only);
  tcase_add_test(tc, test_refused_file_until_fixed);
  tcase_add_test(tc, test_reread_inside_lock);
  tcase_add_test(tc, test_rotated_refresh_token_kept_in_file);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr;
  int failed;

  curl_global_init(CURL_GLOBAL_DEFAULT);
  sr = srunner_create(tokens_suite());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  curl_global_cleanup();
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
