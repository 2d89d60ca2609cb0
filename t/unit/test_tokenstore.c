/*
 * Unit tests for mod_mailoauth/lib/oauth/tokenstore.c: account names, atomic
 * write and re-read, permission and symlink refusals, change detection,
 * leftover cleanup, secret wiping, and no secret in any message.
 */

#include "mailoauth/tokenstore.h"
#include "mailoauth/trace.h"

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mailoauth/jsonwrap.h"

#define SECRET_REFRESH  "0.ARt0kEn-SeCrEt-refresh-AAAABBBBCCCCDDDDEEEE"
#define SECRET_ACCESS   "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.access-secret"
#define SECRET_REFRESH2 "0.ARt0kEn-SeCrEt-rotated-FFFFGGGGHHHHIIIIJJJJ"

static const char *all_secrets[] = {
  SECRET_REFRESH, SECRET_ACCESS, SECRET_REFRESH2, NULL
};

static char dir[PATH_MAX];

/* ------------------------------------------------------------------------
 * Trace recorder and fixture.
 */

static char *rec_text = NULL;
static size_t rec_len = 0, rec_size = 0;

static void rec_sink(const char *channel, int level, const char *fmt,
    va_list ap) {
  char line[8192];
  int n;

  n = snprintf(line, sizeof(line), "%s %d: ", channel, level);
  n += vsnprintf(line + n, sizeof(line) - (size_t) n, fmt, ap);
  if ((size_t) n >= sizeof(line) - 1) {
    n = (int) sizeof(line) - 2;
  }
  line[n++] = '\n';

  if (rec_len + (size_t) n + 1 > rec_size) {
    rec_size = (rec_len + (size_t) n + 1) * 2;
    rec_text = realloc(rec_text, rec_size);
  }
  memcpy(rec_text + rec_len, line, (size_t) n);
  rec_len += (size_t) n;
  rec_text[rec_len] = '\0';
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

static void remove_tree(const char *path) {
  char cmd[PATH_MAX + 32];

  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
  if (system(cmd) != 0) {
    fprintf(stderr, "cannot remove %s\n", path);
  }
}

static void setup(void) {
  strcpy(dir, "/tmp/mailoauth-ts-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
  umask(022);

  rec_len = 0;
  mailoauth_trace_set_sink(rec_sink);
}

static void teardown(void) {
  /* Every test ends with the proof that nothing leaked to a trace. */
  assert_no_secret_in("trace lines", rec_text);
  mailoauth_trace_set_sink(NULL);
  free(rec_text);
  rec_text = NULL;
  rec_len = rec_size = 0;
  remove_tree(dir);
}

/* ------------------------------------------------------------------------
 * Helpers.
 */

static void fill_record(struct mailoauth_tokenstore_record *rec,
    const char *refresh) {
  memset(rec, 0, sizeof(*rec));
  ck_assert_int_eq(mailoauth_tokenstore_set(&rec->grant, "delegated"), 0);
  ck_assert_int_eq(mailoauth_tokenstore_set(&rec->refresh_token, refresh), 0);
  ck_assert_int_eq(mailoauth_tokenstore_set(&rec->access_token,
    SECRET_ACCESS), 0);
  ck_assert_int_eq(mailoauth_tokenstore_set(&rec->scope,
    "https://outlook.office.com/SMTP.Send offline_access"), 0);
  ck_assert_int_eq(mailoauth_tokenstore_set(&rec->username,
    "ftp-alerts@contoso.com"), 0);
  ck_assert_int_eq(mailoauth_tokenstore_set(&rec->name,
    "FTP Alerts \xc3\xa9t\xc3\xa9"), 0);
  ck_assert_int_eq(mailoauth_tokenstore_set(&rec->tenant,
    "9188040d-6c67-4c5b-b112-36a304b66dad"), 0);
  ck_assert_int_eq(mailoauth_tokenstore_set(&rec->oid,
    "00000000-0000-0000-66f3-3332eca7ea81"), 0);
  rec->access_expires = 1795863599;
  rec->obtained_at = 1790000000;
  rec->refreshed_at = 1795860000;
}

static struct mailoauth_tokenstore *make_store(const char *account) {
  struct mailoauth_tokenstore *ts;
  char err[512];

  ts = mailoauth_tokenstore_create(dir, account, (uid_t) -1, err, sizeof(err));
  ck_assert_msg(ts != NULL, "%s", err);
  return ts;
}

static void write_file(const char *path, const char *text, mode_t mode) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t) strlen(text));
  ck_assert_int_eq(fchmod(fd, mode), 0);
  close(fd);
}

static char *slurp(const char *path) {
  FILE *fh = fopen(path, "r");
  char *buf = calloc(1, 65536);
  size_t n;

  ck_assert_ptr_nonnull(fh);
  n = fread(buf, 1, 65535, fh);
  buf[n] = '\0';
  fclose(fh);
  return buf;
}

/* Entries of dir other than "." and "..", in one string. */
static char *list_dir(void) {
  static char names[4096];
  struct dirent *de;
  DIR *d = opendir(dir);

  names[0] = '\0';
  ck_assert_ptr_nonnull(d);
  while ((de = readdir(d)) != NULL) {
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) {
      continue;
    }
    strcat(names, de->d_name);
    strcat(names, " ");
  }
  closedir(d);
  return names;
}

/* ------------------------------------------------------------------------
 * Tests.
 */

START_TEST(test_valid_account) {
  static const char *good[] = {
    "sales", "ftp-alerts", "ftp_alerts.2", "A", "x.json", "0",
    "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghij1234"
  };
  static const char *bad[] = {
    "", ".hidden", "..", ".", "a/b", "../etc", "a b", "a\nb", "caf\xc3\xa9",
    "a:b", "a*", "a\\b",
    "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghij12345"
  };
  unsigned int i;

  for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
    ck_assert_msg(mailoauth_tokenstore_valid_account(good[i]) == 1,
      "'%s' should be valid", good[i]);
  }

  for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    ck_assert_msg(mailoauth_tokenstore_valid_account(bad[i]) == 0,
      "'%s' should be invalid", bad[i]);
  }

  ck_assert_int_eq(mailoauth_tokenstore_valid_account(NULL), 0);
}
END_TEST

START_TEST(test_create) {
  struct mailoauth_tokenstore *ts;
  char err[512], path[PATH_MAX + 16], longdir[PATH_MAX + 10];

  ck_assert_ptr_null(mailoauth_tokenstore_create(dir, "../x", (uid_t) -1, err,
    sizeof(err)));
  ck_assert_int_eq(errno, EINVAL);
  ck_assert_ptr_nonnull(strstr(err, "invalid account name"));

  ck_assert_ptr_null(mailoauth_tokenstore_create("", "x", (uid_t) -1, err,
    sizeof(err)));
  ck_assert_ptr_null(mailoauth_tokenstore_create(NULL, "x", (uid_t) -1, err,
    sizeof(err)));

  memset(longdir, 'd', sizeof(longdir) - 1);
  longdir[0] = '/';
  longdir[sizeof(longdir) - 1] = '\0';
  ck_assert_ptr_null(mailoauth_tokenstore_create(longdir, "x", (uid_t) -1,
    err, sizeof(err)));
  ck_assert_int_eq(errno, ENAMETOOLONG);

  ts = make_store("sales");
  snprintf(path, sizeof(path), "%s/sales.json", dir);
  ck_assert_str_eq(mailoauth_tokenstore_path(ts), path);
  mailoauth_tokenstore_destroy(ts);
  mailoauth_tokenstore_destroy(NULL);
  ck_assert_ptr_null(mailoauth_tokenstore_path(NULL));
}
END_TEST

START_TEST(test_write_read_roundtrip) {
  struct mailoauth_tokenstore_record rec, back;
  struct mailoauth_tokenstore *ts;
  struct stat st;
  json_error_t jerr;
  json_t *root;
  char err[512], *text;

  ts = make_store("sales");
  fill_record(&rec, SECRET_REFRESH);
  ck_assert_int_eq(mailoauth_tokenstore_set(&rec.error_class, "transient"), 0);
  ck_assert_int_eq(mailoauth_tokenstore_set(&rec.error_message,
    "transient: the token endpoint is unreachable"), 0);
  rec.error_code = 90033;
  rec.error_at = 1795861111;

  ck_assert_int_eq(mailoauth_tokenstore_write(ts, &rec, err, sizeof(err)), 0);

  /* 0600 although the umask would allow 0644. */
  ck_assert_int_eq(lstat(mailoauth_tokenstore_path(ts), &st), 0);
  ck_assert(S_ISREG(st.st_mode));
  ck_assert_int_eq(st.st_mode & 07777, 0600);
  ck_assert_int_eq(st.st_uid, geteuid());

  /* No temporary file is left behind. */
  ck_assert_str_eq(list_dir(), "sales.json ");

  /* Versioned JSON as documented. */
  text = slurp(mailoauth_tokenstore_path(ts));
  root = json_loads(text, 0, &jerr);
  ck_assert_ptr_nonnull(root);
  ck_assert_int_eq(json_integer_value(json_object_get(root, "version")), 1);
  ck_assert_str_eq(json_string_value(json_object_get(root, "account")),
    "sales");
  ck_assert_str_eq(json_string_value(json_object_get(json_object_get(root,
    "identity"), "username")), "ftp-alerts@contoso.com");
  ck_assert_str_eq(json_string_value(json_object_get(json_object_get(root,
    "last_error"), "class")), "transient");
  ck_assert_int_eq(text[strlen(text) - 1], '\n');
  json_decref(root);
  free(text);

  memset(&back, 0, sizeof(back));
  ck_assert_int_eq(mailoauth_tokenstore_read(ts, &back, err, sizeof(err)), 0);
  ck_assert_str_eq(back.grant, "delegated");
  ck_assert_str_eq(back.refresh_token, SECRET_REFRESH);
  ck_assert_str_eq(back.access_token, SECRET_ACCESS);
  ck_assert_int_eq(back.access_expires, 1795863599);
  ck_assert_str_eq(back.scope, "https://outlook.office.com/SMTP.Send "
    "offline_access");
  ck_assert_str_eq(back.username, "ftp-alerts@contoso.com");
  ck_assert_str_eq(back.name, "FTP Alerts \xc3\xa9t\xc3\xa9");
  ck_assert_str_eq(back.tenant, "9188040d-6c67-4c5b-b112-36a304b66dad");
  ck_assert_str_eq(back.oid, "00000000-0000-0000-66f3-3332eca7ea81");
  ck_assert_int_eq(back.obtained_at, 1790000000);
  ck_assert_int_eq(back.refreshed_at, 1795860000);
  ck_assert_str_eq(back.error_class, "transient");
  ck_assert_int_eq(back.error_code, 90033);
  ck_assert_str_eq(back.error_message,
    "transient: the token endpoint is unreachable");
  ck_assert_int_eq(back.error_at, 1795861111);

  /* Rotation: rewrite, clear the error, re-read into the same record. */
  ck_assert_int_eq(mailoauth_tokenstore_set(&rec.refresh_token,
    SECRET_REFRESH2), 0);
  ck_assert_int_eq(mailoauth_tokenstore_set(&rec.error_class, NULL), 0);
  ck_assert_int_eq(mailoauth_tokenstore_write(ts, &rec, err, sizeof(err)), 0);
  ck_assert_int_eq(mailoauth_tokenstore_read(ts, &back, err, sizeof(err)), 0);
  ck_assert_str_eq(back.refresh_token, SECRET_REFRESH2);
  ck_assert_ptr_null(back.error_class);
  ck_assert_ptr_null(back.error_message);
  ck_assert_int_eq(back.error_code, 0);

  /* A sparse record (app-only: no refresh token) round-trips too. */
  mailoauth_tokenstore_record_free(&rec);
  ck_assert_int_eq(mailoauth_tokenstore_set(&rec.grant, "app-only"), 0);
  ck_assert_int_eq(mailoauth_tokenstore_write(ts, &rec, err, sizeof(err)), 0);
  ck_assert_int_eq(mailoauth_tokenstore_read(ts, &back, err, sizeof(err)), 0);
  ck_assert_str_eq(back.grant, "app-only");
  ck_assert_ptr_null(back.refresh_token);
  ck_assert_ptr_null(back.access_token);
  ck_assert_ptr_null(back.username);

  mailoauth_tokenstore_record_free(&rec);
  mailoauth_tokenstore_record_free(&back);
  mailoauth_tokenstore_destroy(ts);
}
END_TEST

START_TEST(test_mode_under_strict_umask) {
  struct mailoauth_tokenstore_record rec;
  struct mailoauth_tokenstore *ts;
  struct stat st;
  char err[512];

  /* A umask that would leave the owner unable to read it back. */
  umask(0277);
  ts = make_store("strict");
  fill_record(&rec, SECRET_REFRESH);
  ck_assert_int_eq(mailoauth_tokenstore_write(ts, &rec, err, sizeof(err)), 0);
  ck_assert_int_eq(stat(mailoauth_tokenstore_path(ts), &st), 0);
  ck_assert_int_eq(st.st_mode & 07777, 0600);
  umask(022);

  mailoauth_tokenstore_record_free(&rec);
  mailoauth_tokenstore_destroy(ts);
}
END_TEST

START_TEST(test_refuse_permissive_modes) {
  static const mode_t modes[] = { 0644, 0640, 0604, 0620, 0602, 0660, 0666,
    0610, 0601 };
  struct mailoauth_tokenstore_record rec, back;
  struct mailoauth_tokenstore *ts;
  char err[512];
  unsigned int i;

  ts = make_store("sales");
  fill_record(&rec, SECRET_REFRESH);
  ck_assert_int_eq(mailoauth_tokenstore_write(ts, &rec, err, sizeof(err)), 0);

  memset(&back, 0, sizeof(back));
  for (i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
    ck_assert_int_eq(chmod(mailoauth_tokenstore_path(ts), modes[i]), 0);
    err[0] = '\0';
    ck_assert_int_eq(mailoauth_tokenstore_read(ts, &back, err, sizeof(err)),
      -1);
    ck_assert_int_eq(errno, EACCES);
    ck_assert_ptr_nonnull(strstr(err, mailoauth_tokenstore_path(ts)));
    ck_assert_ptr_nonnull(strstr(err, "chmod 600"));
    assert_no_secret_in("mode error", err);
    ck_assert_ptr_null(back.refresh_token);
  }

  /* Owner-only modes are fine, read-only included. */
  ck_assert_int_eq(chmod(mailoauth_tokenstore_path(ts), 0400), 0);
  ck_assert_int_eq(mailoauth_tokenstore_read(ts, &back, err, sizeof(err)), 0);
  ck_assert_str_eq(back.refresh_token, SECRET_REFRESH);

  mailoauth_tokenstore_record_free(&rec);
  mailoauth_tokenstore_record_free(&back);
  mailoauth_tokenstore_destroy(ts);
}
END_TEST

START_TEST(test_refuse_symlink_and_special_files) {
  struct mailoauth_tokenstore_record rec, back;
  struct mailoauth_tokenstore *ts, *other;
  char err[512];

  /* A good token file elsewhere, and a symlink to it as our file. */
  other = make_store("elsewhere");
  fill_record(&rec, SECRET_REFRESH);
  ck_assert_int_eq(mailoauth_tokenstore_write(other, &rec, err, sizeof(err)),
    0);

  ts = make_store("sales");
  ck_assert_int_eq(symlink(mailoauth_tokenstore_path(other),
    mailoauth_tokenstore_path(ts)), 0);

  memset(&back, 0, sizeof(back));
  ck_assert_int_eq(mailoauth_tokenstore_read(ts, &back, err, sizeof(err)), -1);
  ck_assert_int_eq(errno, ELOOP);
  ck_assert_ptr_nonnull(strstr(err, "symbolic link"));
  ck_assert_ptr_null(back.refresh_token);

  /* Writing replaces the symlink itself, never the file it points to. */
  ck_assert_int_eq(mailoauth_tokenstore_set(&rec.refresh_token,
    SECRET_REFRESH2), 0);
  ck_assert_int_eq(mailoauth_tokenstore_write(ts, &rec, err, sizeof(err)), 0);
  ck_assert_int_eq(mailoauth_tokenstore_read(other, &back, err, sizeof(err)),
    0);
  ck_assert_str_eq(back.refresh_token, SECRET_REFRESH);
  ck_assert_int_eq(mailoauth_tokenstore_read(ts, &back, err, sizeof(err)), 0);
  ck_assert_str_eq(back.refresh_token, SECRET_REFRESH2);

  /* A FIFO: refused at once, not waited on. */
  ck_assert_int_eq(unlink(mailoauth_tokenstore_path(ts)), 0);
  ck_assert_int_eq(mkfifo(mailoauth_tokenstore_path(ts), 0600), 0);
  alarm(5);
  ck_assert_int_eq(mailoauth_tokenstore_read(ts, &back, err, sizeof(err)), -1);
  alarm(0);
  ck_assert_ptr_nonnull(strstr(err, "not a regular file"));

  /* A directory. */
  ck_assert_int_eq(unlink(mailoauth_tokenstore_path(ts)), 0);
  ck_assert_int_eq(mkdir(mailoauth_tokenstore_path(ts), 0700), 0);
  ck_assert_int_eq(mailoauth_tokenstore_read(ts, &back, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "not a regular file"));

  /* A hard link to a file elsewhere: refused, however good the file. */
  ck_assert_int_eq(rmdir(mailoauth_tokenstore_path(ts)), 0);
  ck_assert_int_eq(link(mailoauth_tokenstore_path(other),
    mailoauth_tokenstore_path(ts)), 0);
  ck_assert_int_eq(mailoauth_tokenstore_read(ts, &back, err, sizeof(err)), -1);
  ck_assert_int_eq(errno, EMLINK);
  ck_assert_ptr_nonnull(strstr(err, "2 links"));

  /* The record still holds the last good read. */
  ck_assert_str_eq(back.refresh_token, SECRET_REFRESH2);

  mailoauth_tokenstore_record_free(&rec);
  mailoauth_tokenstore_record_free(&back);
  mailoauth_tokenstore_destroy(ts);
  mailoauth_tokenstore_destroy(other);
}
END_TEST

START_TEST(test_owner_check) {
  struct mailoauth_tokenstore_record rec, back;
  struct mailoauth_tokenstore *ts;
  struct stat st;
  char err[512];

  fill_record(&rec, SECRET_REFRESH);
  memset(&back, 0, sizeof(back));

  /* Expecting another owner than the file has. */
  ts = make_store("sales");
  ck_assert_int_eq(mailoauth_tokenstore_write(ts, &rec, err, sizeof(err)), 0);
  mailoauth_tokenstore_destroy(ts);

  ts = mailoauth_tokenstore_create(dir, "sales", geteuid() + 4242, err,
    sizeof(err));
  ck_assert_ptr_nonnull(ts);
  ck_assert_int_eq(mailoauth_tokenstore_read(ts, &back, err, sizeof(err)),
    -1);
  ck_assert_int_eq(errno, EACCES);
  ck_assert_ptr_nonnull(strstr(err, "owned by uid"));

  /* Nobody writes files for another user, root included: the sign-in tool
   * becomes the worker's user first.
   */
  ck_assert_int_eq(mailoauth_tokenstore_write(ts, &rec, err, sizeof(err)),
    -1);
  ck_assert_int_eq(errno, EPERM);
  ck_assert_ptr_nonnull(strstr(err, "must be written by uid"));
  ck_assert_str_eq(list_dir(), "sales.json ");
  ck_assert_int_eq(stat(mailoauth_tokenstore_path(ts), &st), 0);
  ck_assert_int_eq(st.st_uid, geteuid());

  mailoauth_tokenstore_record_free(&rec);
  mailoauth_tokenstore_record_free(&back);
  mailoauth_tokenstore_destroy(ts);
}
END_TEST

START_TEST(test_missing_and_bad_files) {
  static const struct {
    const char *text;
    const char *message;
  } cases[] = {
    { "{\"version\":1,\"refresh_token\":\"" SECRET_REFRESH,
      "is not valid JSON (line 1" },
    { "{\"version\":1,\"refresh_token\":\"" SECRET_REFRESH "\",}",
      "is not valid JSON" },
    { "{\"version\":1,\"refresh_token\":" SECRET_REFRESH "}",
      "is not valid JSON" },
    { SECRET_REFRESH, "is not valid JSON" },
    { "", "is not valid JSON" },
    { "[\"" SECRET_REFRESH "\"]", "does not hold a JSON object" },
    { "{\"refresh_token\":\"" SECRET_REFRESH "\"}", "has no format version" },
    { "{\"version\":2,\"refresh_token\":\"" SECRET_REFRESH "\"}",
      "has format version 2" },
    { "{\"version\":\"1\"}", "has no format version" },
    { "{\"version\":1,\"refresh_token\":5}",
      "field 'refresh_token' has the wrong type" },
    { "{\"version\":1,\"access_expires\":\"soon\"}",
      "field 'access_expires' has the wrong type" },
    { "{\"version\":1,\"access_expires\":-5}",
      "field 'access_expires' has the wrong type" },
    { "{\"version\":1,\"identity\":\"bob\"}",
      "field 'identity' has the wrong type" },
    { "{\"version\":1,\"identity\":{\"tenant\":[1]}}",
      "field 'tenant' has the wrong type" },
    { "{\"version\":1,\"last_error\":{\"code\":\"x\"}}",
      "field 'code' has the wrong type" },
    { "{\"version\":1,\"refresh_token\":\"a\",\"refresh_token\":\"b\"}",
      "is not valid JSON" }
  };
  struct mailoauth_tokenstore_record rec, back;
  struct mailoauth_tokenstore *ts;
  char err[512];
  unsigned int i;

  ts = make_store("sales");
  memset(&back, 0, sizeof(back));

  ck_assert_int_eq(mailoauth_tokenstore_read(ts, &back, err, sizeof(err)), -1);
  ck_assert_int_eq(errno, ENOENT);
  ck_assert_ptr_nonnull(strstr(err, "does not exist"));
  ck_assert_ptr_nonnull(strstr(err, mailoauth_tokenstore_path(ts)));

  /* A good read first: failures below must leave it untouched. */
  fill_record(&rec, SECRET_REFRESH2);
  ck_assert_int_eq(mailoauth_tokenstore_write(ts, &rec, err, sizeof(err)), 0);
  ck_assert_int_eq(mailoauth_tokenstore_read(ts, &back, err, sizeof(err)), 0);

  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    write_file(mailoauth_tokenstore_path(ts), cases[i].text, 0600);
    err[0] = '\0';
    ck_assert_int_eq(mailoauth_tokenstore_read(ts, &back, err, sizeof(err)),
      -1);
    ck_assert_int_eq(errno, EINVAL);
    ck_assert_msg(strstr(err, cases[i].message) != NULL,
      "case %u: '%s' lacks '%s'", i, err, cases[i].message);
    ck_assert_ptr_nonnull(strstr(err, mailoauth_tokenstore_path(ts)));
    assert_no_secret_in("parse error", err);
    ck_assert_str_eq(back.refresh_token, SECRET_REFRESH2);
  }

  /* Unknown fields are ignored (a newer writer adding something). */
  write_file(mailoauth_tokenstore_path(ts), "{\"version\":1,\"future\":[1,2],"
    "\"refresh_token\":\"" SECRET_REFRESH "\",\"access_expires\":null}", 0600);
  ck_assert_int_eq(mailoauth_tokenstore_read(ts, &back, err, sizeof(err)), 0);
  ck_assert_str_eq(back.refresh_token, SECRET_REFRESH);
  ck_assert_int_eq(back.access_expires, 0);

  /* Too large: refused unread. */
  {
    char *big = malloc(MAILOAUTH_TOKENSTORE_MAX_SIZE + 16);

    memset(big, ' ', MAILOAUTH_TOKENSTORE_MAX_SIZE + 15);
    big[MAILOAUTH_TOKENSTORE_MAX_SIZE + 15] = '\0';
    write_file(mailoauth_tokenstore_path(ts), big, 0600);
    free(big);
    ck_assert_int_eq(mailoauth_tokenstore_read(ts, &back, err, sizeof(err)),
      -1);
    ck_assert_int_eq(errno, EFBIG);
    ck_assert_ptr_nonnull(strstr(err, "too large"));
  }

  mailoauth_tokenstore_record_free(&rec);
  mailoauth_tokenstore_record_free(&back);
  mailoauth_tokenstore_destroy(ts);
}
END_TEST

START_TEST(test_change_detection) {
  struct mailoauth_tokenstore_record rec, back;
  struct mailoauth_tokenstore *worker, *tool;
  struct timespec times[2];
  char err[512];

  worker = make_store("sales");
  tool = make_store("sales");
  fill_record(&rec, SECRET_REFRESH);
  memset(&back, 0, sizeof(back));

  /* Never looked: "changed", so the first check reads. */
  ck_assert_int_eq(mailoauth_tokenstore_changed(worker), 1);

  /* No file: after the failed read, nothing changes until one appears. */
  ck_assert_int_eq(mailoauth_tokenstore_read(worker, &back, err, sizeof(err)),
    -1);
  ck_assert_int_eq(mailoauth_tokenstore_changed(worker), 0);

  ck_assert_int_eq(mailoauth_tokenstore_write(tool, &rec, err, sizeof(err)), 0);
  ck_assert_int_eq(mailoauth_tokenstore_changed(worker), 1);
  ck_assert_int_eq(mailoauth_tokenstore_changed(tool), 0);
  ck_assert_int_eq(mailoauth_tokenstore_read(worker, &back, err, sizeof(err)),
    0);
  ck_assert_int_eq(mailoauth_tokenstore_changed(worker), 0);

  /* The worker's own write is not a change for the worker... */
  ck_assert_int_eq(mailoauth_tokenstore_set(&rec.refresh_token,
    SECRET_REFRESH2), 0);
  ck_assert_int_eq(mailoauth_tokenstore_write(worker, &rec, err, sizeof(err)),
    0);
  ck_assert_int_eq(mailoauth_tokenstore_changed(worker), 0);
  /* ...but is one for the tool. */
  ck_assert_int_eq(mailoauth_tokenstore_changed(tool), 1);

  /* The sign-in tool rewrites the file: a same-size rewrite is seen. */
  ck_assert_int_eq(mailoauth_tokenstore_set(&rec.refresh_token,
    SECRET_REFRESH), 0);
  ck_assert_int_eq(mailoauth_tokenstore_write(tool, &rec, err, sizeof(err)), 0);
  ck_assert_int_eq(mailoauth_tokenstore_changed(worker), 1);
  ck_assert_int_eq(mailoauth_tokenstore_read(worker, &back, err, sizeof(err)),
    0);
  ck_assert_str_eq(back.refresh_token, SECRET_REFRESH);
  ck_assert_int_eq(mailoauth_tokenstore_changed(worker), 0);

  /* An edit in place that keeps the size: the mtime tells. */
  times[0].tv_sec = 1000000000;
  times[0].tv_nsec = 0;
  times[1] = times[0];
  ck_assert_int_eq(utimensat(AT_FDCWD, mailoauth_tokenstore_path(worker),
    times, 0), 0);
  ck_assert_int_eq(mailoauth_tokenstore_changed(worker), 1);
  ck_assert_int_eq(mailoauth_tokenstore_read(worker, &back, err, sizeof(err)),
    0);

  /* A refused file is remembered; fixing its mode counts as a change. */
  ck_assert_int_eq(chmod(mailoauth_tokenstore_path(worker), 0644), 0);
  ck_assert_int_eq(mailoauth_tokenstore_changed(worker), 1);
  ck_assert_int_eq(mailoauth_tokenstore_read(worker, &back, err, sizeof(err)),
    -1);
  ck_assert_int_eq(mailoauth_tokenstore_changed(worker), 0);
  ck_assert_int_eq(chmod(mailoauth_tokenstore_path(worker), 0600), 0);
  ck_assert_int_eq(mailoauth_tokenstore_changed(worker), 1);
  ck_assert_int_eq(mailoauth_tokenstore_read(worker, &back, err, sizeof(err)),
    0);

  /* Removal (signing out) is a change; so is a symlink put in place. */
  ck_assert_int_eq(mailoauth_tokenstore_remove(tool, err, sizeof(err)), 0);
  ck_assert_int_eq(mailoauth_tokenstore_changed(worker), 1);
  ck_assert_int_eq(mailoauth_tokenstore_changed(tool), 0);
  ck_assert_int_eq(mailoauth_tokenstore_remove(tool, err, sizeof(err)), 0);
  ck_assert_int_eq(symlink("/etc/passwd", mailoauth_tokenstore_path(tool)), 0);
  ck_assert_int_eq(mailoauth_tokenstore_changed(tool), 1);

  ck_assert_int_eq(mailoauth_tokenstore_changed(NULL), -1);

  mailoauth_tokenstore_record_free(&rec);
  mailoauth_tokenstore_record_free(&back);
  mailoauth_tokenstore_destroy(worker);
  mailoauth_tokenstore_destroy(tool);
}
END_TEST

/* Two processes: one rewrites the file as fast as it can, alternating two
 * records; the other reads it over and over.  Every read must see one of
 * the two complete records.
 */
START_TEST(test_atomic_under_concurrent_reads) {
  struct mailoauth_tokenstore_record a, b, back;
  struct mailoauth_tokenstore *ts;
  char err[512], pad[8192];
  unsigned int i, seen_a = 0, seen_b = 0;
  pid_t pid;
  int status;

  /* Large records, so a torn write would be likely to show. */
  memset(pad, 'p', sizeof(pad) - 1);
  pad[sizeof(pad) - 1] = '\0';
  fill_record(&a, SECRET_REFRESH);
  fill_record(&b, SECRET_REFRESH2);
  ck_assert_int_eq(mailoauth_tokenstore_set(&a.scope, pad), 0);
  pad[100] = '\0';
  ck_assert_int_eq(mailoauth_tokenstore_set(&b.scope, pad), 0);

  ts = make_store("sales");
  ck_assert_int_eq(mailoauth_tokenstore_write(ts, &a, err, sizeof(err)), 0);

  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    for (i = 0; i < 300; i++) {
      if (mailoauth_tokenstore_write(ts, i % 2 ? &a : &b, err,
          sizeof(err)) < 0) {
        _exit(1);
      }
    }
    _exit(0);
  }

  /* Read until the writer is done, at least 600 times. */
  memset(&back, 0, sizeof(back));
  for (i = 0; ; i++) {
    pid_t done = i >= 600 ? waitpid(pid, &status, WNOHANG) : 0;

    ck_assert_msg(mailoauth_tokenstore_read(ts, &back, err, sizeof(err)) == 0,
      "read %u: %s", i, err);
    if (strcmp(back.refresh_token, SECRET_REFRESH) == 0) {
      ck_assert_uint_eq(strlen(back.scope), sizeof(pad) - 1);
      seen_a++;

    } else {
      ck_assert_str_eq(back.refresh_token, SECRET_REFRESH2);
      ck_assert_uint_eq(strlen(back.scope), 100);
      seen_b++;
    }

    if (done == pid) {
      break;
    }
  }

  ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ck_assert_uint_ge(seen_a + seen_b, 600);
  ck_assert_uint_gt(seen_a, 0);
  ck_assert_uint_gt(seen_b, 0);

  /* Nothing left over from 300 writes. */
  ck_assert_str_eq(list_dir(), "sales.json ");

  mailoauth_tokenstore_record_free(&a);
  mailoauth_tokenstore_record_free(&b);
  mailoauth_tokenstore_record_free(&back);
  mailoauth_tokenstore_destroy(ts);
}
END_TEST

START_TEST(test_failed_write_keeps_old_file) {
  struct mailoauth_tokenstore_record rec, back;
  struct mailoauth_tokenstore *ts;
  char err[512], path[PATH_MAX + 32];

  ts = make_store("sales");
  fill_record(&rec, SECRET_REFRESH);

  /* The rename cannot replace a non-empty directory. */
  ck_assert_int_eq(mkdir(mailoauth_tokenstore_path(ts), 0700), 0);
  snprintf(path, sizeof(path), "%s/keep", mailoauth_tokenstore_path(ts));
  write_file(path, "x", 0600);

  ck_assert_int_eq(mailoauth_tokenstore_write(ts, &rec, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "cannot write token file"));
  assert_no_secret_in("write error", err);
  /* The temporary file is gone again. */
  ck_assert_str_eq(list_dir(), "sales.json ");

  ck_assert_int_eq(unlink(path), 0);
  ck_assert_int_eq(rmdir(mailoauth_tokenstore_path(ts)), 0);

  /* A directory that does not exist. */
  mailoauth_tokenstore_destroy(ts);
  snprintf(path, sizeof(path), "%s/missing", dir);
  ts = mailoauth_tokenstore_create(path, "sales", (uid_t) -1, err,
    sizeof(err));
  ck_assert_ptr_nonnull(ts);
  ck_assert_int_eq(mailoauth_tokenstore_write(ts, &rec, err, sizeof(err)), -1);
  ck_assert_int_eq(errno, ENOENT);
  ck_assert_ptr_nonnull(strstr(err, "temporary file"));
  memset(&back, 0, sizeof(back));
  ck_assert_int_eq(mailoauth_tokenstore_read(ts, &back, err, sizeof(err)), -1);
  ck_assert_int_eq(mailoauth_tokenstore_cleanup(ts, 0), -1);

  mailoauth_tokenstore_record_free(&rec);
  mailoauth_tokenstore_destroy(ts);
}
END_TEST

START_TEST(test_cleanup) {
  struct mailoauth_tokenstore_record rec;
  struct mailoauth_tokenstore *ts;
  struct timespec old[2];
  char err[512], path[PATH_MAX + 64];

  ts = make_store("sales");
  fill_record(&rec, SECRET_REFRESH);
  ck_assert_int_eq(mailoauth_tokenstore_write(ts, &rec, err, sizeof(err)), 0);

  /* Leftovers of a crash: an old one, a young one; other files alike. */
  snprintf(path, sizeof(path), "%s/.sales.json.tmp.123.aabbccddeeff", dir);
  write_file(path, "{\"version\":1,\"refresh_token\":\"" SECRET_REFRESH, 0600);
  old[0].tv_sec = time(NULL) - 3600;
  old[0].tv_nsec = 0;
  old[1] = old[0];
  ck_assert_int_eq(utimensat(AT_FDCWD, path, old, 0), 0);
  snprintf(path, sizeof(path), "%s/.sales.json.tmp.456.001122334455", dir);
  write_file(path, "{", 0600);
  snprintf(path, sizeof(path), "%s/.sales2.json.tmp.1.aa", dir);
  write_file(path, "{", 0600);
  ck_assert_int_eq(utimensat(AT_FDCWD, path, old, 0), 0);
  snprintf(path, sizeof(path), "%s/.sales.json.tmp.", dir);
  write_file(path, "{", 0600);
  ck_assert_int_eq(utimensat(AT_FDCWD, path, old, 0), 0);
  snprintf(path, sizeof(path), "%s/sales.json.tmp.9.aa", dir);
  write_file(path, "{", 0600);
  ck_assert_int_eq(utimensat(AT_FDCWD, path, old, 0), 0);

  /* Only this account's old leftover goes. */
  ck_assert_int_eq(mailoauth_tokenstore_cleanup(ts, 60), 1);
  snprintf(path, sizeof(path), "%s/.sales.json.tmp.123.aabbccddeeff", dir);
  ck_assert_int_eq(access(path, F_OK), -1);
  snprintf(path, sizeof(path), "%s/.sales.json.tmp.456.001122334455", dir);
  ck_assert_int_eq(access(path, F_OK), 0);

  /* min_age 0: the young one too. */
  ck_assert_int_eq(mailoauth_tokenstore_cleanup(ts, 0), 1);
  ck_assert_int_eq(access(path, F_OK), -1);
  ck_assert_int_eq(mailoauth_tokenstore_cleanup(ts, 0), 0);

  /* The token file and the other files are untouched. */
  ck_assert_int_eq(access(mailoauth_tokenstore_path(ts), F_OK), 0);
  snprintf(path, sizeof(path), "%s/.sales2.json.tmp.1.aa", dir);
  ck_assert_int_eq(access(path, F_OK), 0);
  snprintf(path, sizeof(path), "%s/.sales.json.tmp.", dir);
  ck_assert_int_eq(access(path, F_OK), 0);
  ck_assert_int_eq(mailoauth_tokenstore_cleanup(NULL, 0), -1);

  mailoauth_tokenstore_record_free(&rec);
  mailoauth_tokenstore_destroy(ts);
}
END_TEST

START_TEST(test_remove) {
  struct mailoauth_tokenstore_record rec;
  struct mailoauth_tokenstore *ts;
  char err[512];

  ts = make_store("sales");
  fill_record(&rec, SECRET_REFRESH);
  ck_assert_int_eq(mailoauth_tokenstore_write(ts, &rec, err, sizeof(err)), 0);
  ck_assert_int_eq(mailoauth_tokenstore_remove(ts, err, sizeof(err)), 0);
  ck_assert_int_eq(access(mailoauth_tokenstore_path(ts), F_OK), -1);
  ck_assert_int_eq(mailoauth_tokenstore_remove(ts, err, sizeof(err)), 0);
  ck_assert_int_eq(mailoauth_tokenstore_remove(NULL, err, sizeof(err)), -1);

  mailoauth_tokenstore_record_free(&rec);
  mailoauth_tokenstore_destroy(ts);
}
END_TEST

START_TEST(test_secret_wiping) {
  struct mailoauth_tokenstore_record rec, zero;
  char *refresh, *access, *scope;
  size_t rlen, alen, i;

  fill_record(&rec, SECRET_REFRESH);
  refresh = rec.refresh_token;
  access = rec.access_token;
  scope = rec.scope;
  rlen = strlen(refresh);
  alen = strlen(access);

  /* In place: the memory stays allocated, every byte of the tokens is 0. */
  mailoauth_tokenstore_record_wipe(&rec);
  ck_assert_ptr_eq(rec.refresh_token, refresh);
  for (i = 0; i < rlen; i++) {
    ck_assert_int_eq(refresh[i], 0);
  }
  for (i = 0; i < alen; i++) {
    ck_assert_int_eq(access[i], 0);
  }
  /* Other fields are not secrets and stay. */
  ck_assert_str_eq(scope, "https://outlook.office.com/SMTP.Send "
    "offline_access");

  /* Free zeroes the whole record. */
  mailoauth_tokenstore_record_free(&rec);
  memset(&zero, 0, sizeof(zero));
  ck_assert_int_eq(memcmp(&rec, &zero, sizeof(rec)), 0);
  mailoauth_tokenstore_record_free(&rec);
  mailoauth_tokenstore_record_free(NULL);
  mailoauth_tokenstore_record_wipe(NULL);

  /* set() replaces and clears. */
  ck_assert_int_eq(mailoauth_tokenstore_set(&rec.refresh_token, "a"), 0);
  ck_assert_int_eq(mailoauth_tokenstore_set(&rec.refresh_token, "b"), 0);
  ck_assert_str_eq(rec.refresh_token, "b");
  ck_assert_int_eq(mailoauth_tokenstore_set(&rec.refresh_token, NULL), 0);
  ck_assert_ptr_null(rec.refresh_token);
  ck_assert_int_eq(mailoauth_tokenstore_set(NULL, "x"), -1);
  ck_assert_int_eq(errno, EINVAL);
}
END_TEST

START_TEST(test_traces_name_files_not_tokens) {
  struct mailoauth_tokenstore_record rec, back;
  struct mailoauth_tokenstore *ts;
  char err[512];

  ts = make_store("sales");
  fill_record(&rec, SECRET_REFRESH);
  memset(&back, 0, sizeof(back));

  ck_assert_int_eq(mailoauth_tokenstore_write(ts, &rec, err, sizeof(err)), 0);
  ck_assert_int_eq(mailoauth_tokenstore_read(ts, &back, err, sizeof(err)), 0);
  chmod(mailoauth_tokenstore_path(ts), 0644);
  mailoauth_tokenstore_read(ts, &back, err, sizeof(err));
  write_file(mailoauth_tokenstore_path(ts), "{\"version\":1,\"refresh_token\""
    ":\"" SECRET_REFRESH2, 0600);
  mailoauth_tokenstore_read(ts, &back, err, sizeof(err));

  /* The traces speak of the file... */
  ck_assert_ptr_nonnull(rec_text);
  ck_assert_ptr_nonnull(strstr(rec_text, "wrote token file"));
  ck_assert_ptr_nonnull(strstr(rec_text, "mode 0644"));
  ck_assert_ptr_nonnull(strstr(rec_text, "not valid JSON"));
  /* ...and never of what is in it (checked again in the teardown). */
  assert_no_secret_in("traces", rec_text);

  mailoauth_tokenstore_record_free(&rec);
  mailoauth_tokenstore_record_free(&back);
  mailoauth_tokenstore_destroy(ts);
}
END_TEST

static Suite *tokenstore_suite(void) {
  Suite *s = suite_create("tokenstore");
  TCase *tc = tcase_create("tokenstore");

  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_valid_account);
  tcase_add_test(tc, test_create);
  tcase_add_test(tc, test_write_read_roundtrip);
  tcase_add_test(tc, test_mode_under_strict_umask);
  tcase_add_test(tc, test_refuse_permissive_modes);
  tcase_add_test(tc, test_refuse_symlink_and_special_files);
  tcase_add_test(tc, test_owner_check);
  tcase_add_test(tc, test_missing_and_bad_files);
  tcase_add_test(tc, test_change_detection);
  tcase_add_test(tc, test_atomic_under_concurrent_reads);
  tcase_add_test(tc, test_failed_write_keeps_old_file);
  tcase_add_test(tc, test_cleanup);
  tcase_add_test(tc, test_remove);
  tcase_add_test(tc, test_secret_wiping);
  tcase_add_test(tc, test_traces_name_files_not_tokens);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr;
  int failed;

  sr = srunner_create(tokenstore_suite());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
