/*
 * mod_mailoauth - token file per account
 */

#include "mailoauth/buf.h"
#include "mailoauth/io.h"
#include "mailoauth/tokenstore.h"
#include "mailoauth/trace.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mailoauth/jsonwrap.h"
#include <openssl/crypto.h>
#include <openssl/rand.h>

static const char *trace_channel = "mailoauth.tokenstore";

static const char *tmp_infix = ".json.tmp.";

/* What a file looked like when last read or written. */
struct tokenstore_stamp {
  int known;        /* 0: never looked */
  int exists;
  dev_t dev;
  ino_t ino;
  off_t size;
  mode_t mode;      /* chmod/chown fixing a refused file counts as a change */
  uid_t uid;
  struct timespec mtim;
};

struct mailoauth_tokenstore {
  char *dir;
  char *account;
  char *path;
  uid_t uid;
  struct tokenstore_stamp stamp;
};

static void secret_free(char **s) {
  if (*s != NULL) {
    OPENSSL_cleanse(*s, strlen(*s));
    free(*s);
    *s = NULL;
  }
}

int mailoauth_tokenstore_valid_account(const char *account) {
  size_t i, len;

  if (account == NULL) {
    return 0;
  }

  len = strlen(account);
  if (len == 0 || len > MAILOAUTH_TOKENSTORE_ACCOUNT_MAX || account[0] == '.') {
    return 0;
  }

  /* The name becomes a file name: ASCII only, no separators. */
  for (i = 0; i < len; i++) {
    char c = account[i];

    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.')) {
      return 0;
    }
  }

  return 1;
}

/* ------------------------------------------------------------------------
 * Records.
 */

int mailoauth_tokenstore_set(char **field, const char *value) {
  char *copy = NULL;

  if (field == NULL) {
    errno = EINVAL;
    return -1;
  }

  if (value != NULL) {
    copy = strdup(value);
    if (copy == NULL) {
      errno = ENOMEM;
      return -1;
    }
  }

  /* Every field is wiped: callers use this for the tokens too. */
  secret_free(field);
  *field = copy;
  return 0;
}

void mailoauth_tokenstore_record_wipe(struct mailoauth_tokenstore_record *rec) {
  if (rec == NULL) {
    return;
  }

  if (rec->refresh_token != NULL) {
    OPENSSL_cleanse(rec->refresh_token, strlen(rec->refresh_token));
  }

  if (rec->access_token != NULL) {
    OPENSSL_cleanse(rec->access_token, strlen(rec->access_token));
  }
}

void mailoauth_tokenstore_record_free(struct mailoauth_tokenstore_record *rec) {
  if (rec == NULL) {
    return;
  }

  secret_free(&rec->refresh_token);
  secret_free(&rec->access_token);
  free(rec->grant);
  free(rec->scope);
  free(rec->username);
  free(rec->name);
  free(rec->tenant);
  free(rec->oid);
  free(rec->error_class);
  free(rec->error_message);
  memset(rec, 0, sizeof(*rec));
}

/* ------------------------------------------------------------------------
 * Handles.
 */

static char *join_path(const char *dir, const char *account,
    const char *suffix) {
  size_t len;
  char *path;

  len = strlen(dir) + 1 + strlen(account) + strlen(suffix) + 1;
  if (len > PATH_MAX) {
    errno = ENAMETOOLONG;
    return NULL;
  }

  path = malloc(len);
  if (path == NULL) {
    errno = ENOMEM;
    return NULL;
  }

  snprintf(path, len, "%s/%s%s", dir, account, suffix);
  return path;
}

struct mailoauth_tokenstore *mailoauth_tokenstore_create(const char *dir,
    const char *account, uid_t uid, char *errbuf, size_t errlen) {
  struct mailoauth_tokenstore *ts;

  if (dir == NULL || *dir == '\0') {
    mailoauth_errf(errbuf, errlen, "no token directory configured");
    errno = EINVAL;
    return NULL;
  }

  if (!mailoauth_tokenstore_valid_account(account)) {
    mailoauth_errf(errbuf, errlen, "invalid account name '%.64s': use up to %d "
      "letters, digits, '-', '_' or '.', not starting with '.'",
      account != NULL ? account : "", MAILOAUTH_TOKENSTORE_ACCOUNT_MAX);
    errno = EINVAL;
    return NULL;
  }

  ts = calloc(1, sizeof(*ts));
  if (ts == NULL) {
    mailoauth_errf(errbuf, errlen, "out of memory");
    errno = ENOMEM;
    return NULL;
  }

  ts->uid = uid;
  ts->dir = strdup(dir);
  ts->account = strdup(account);
  ts->path = join_path(dir, account, ".json");

  if (ts->dir == NULL || ts->account == NULL || ts->path == NULL) {
    int xerrno = ts->path == NULL && errno == ENAMETOOLONG ? ENAMETOOLONG :
      ENOMEM;

    mailoauth_errf(errbuf, errlen, "cannot set up the token file for account '%s': "
      "%s", account, strerror(xerrno));
    mailoauth_tokenstore_destroy(ts);
    errno = xerrno;
    return NULL;
  }

  return ts;
}

void mailoauth_tokenstore_destroy(struct mailoauth_tokenstore *ts) {
  if (ts == NULL) {
    return;
  }

  free(ts->dir);
  free(ts->account);
  free(ts->path);
  free(ts);
}

const char *mailoauth_tokenstore_path(const struct mailoauth_tokenstore *ts) {
  return ts != NULL ? ts->path : NULL;
}

static void stamp_set(struct tokenstore_stamp *stamp, const struct stat *st) {
  memset(stamp, 0, sizeof(*stamp));
  stamp->known = 1;

  if (st == NULL) {
    return;
  }

  stamp->exists = 1;
  stamp->dev = st->st_dev;
  stamp->ino = st->st_ino;
  stamp->size = st->st_size;
  stamp->mode = st->st_mode;
  stamp->uid = st->st_uid;
  stamp->mtim = st->st_mtim;
}

static int stamp_differs(const struct tokenstore_stamp *stamp,
    const struct stat *st) {
  /* A rewrite by rename always brings a new inode; size and mtime catch
   * an in-place edit by hand.
   */
  return stamp->dev != st->st_dev || stamp->ino != st->st_ino ||
    stamp->size != st->st_size || stamp->mode != st->st_mode ||
    stamp->uid != st->st_uid || stamp->mtim.tv_sec != st->st_mtim.tv_sec ||
    stamp->mtim.tv_nsec != st->st_mtim.tv_nsec;
}

int mailoauth_tokenstore_changed(const struct mailoauth_tokenstore *ts) {
  struct stat st;

  if (ts == NULL) {
    errno = EINVAL;
    return -1;
  }

  if (!ts->stamp.known) {
    return 1;
  }

  /* lstat: a symlink put in place of the file is a change (and is then
   * refused by the read).
   */
  if (lstat(ts->path, &st) < 0) {
    if (errno == ENOENT) {
      return ts->stamp.exists ? 1 : 0;
    }
    return -1;
  }

  return !ts->stamp.exists || stamp_differs(&ts->stamp, &st) ? 1 : 0;
}

/* ------------------------------------------------------------------------
 * Reading.
 */

static int check_file(struct mailoauth_tokenstore *ts, const struct stat *st,
    char *errbuf, size_t errlen) {
  if (!S_ISREG(st->st_mode)) {
    mailoauth_errf(errbuf, errlen, "token file %s is not a regular file", ts->path);
    errno = EINVAL;
    return -1;
  }

  /* A second name elsewhere would let whoever planted it read or keep the
   * tokens we write through this one.  (0 is a file replaced since we
   * opened it: still the one a rename put here.)
   */
  if (st->st_nlink > 1) {
    mailoauth_errf(errbuf, errlen, "token file %s has %lu links (a hard link "
      "to it was made elsewhere): remove it and sign in again", ts->path,
      (unsigned long) st->st_nlink);
    errno = EMLINK;
    return -1;
  }

  if ((st->st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    mailoauth_errf(errbuf, errlen, "token file %s has mode %04o: it holds secrets "
      "and must not be open to group or others (chmod 600 it)", ts->path,
      (unsigned int) (st->st_mode & 07777));
    errno = EACCES;
    return -1;
  }

  if (ts->uid != (uid_t) -1 && st->st_uid != ts->uid) {
    mailoauth_errf(errbuf, errlen, "token file %s is owned by uid %lu, expected "
      "uid %lu", ts->path, (unsigned long) st->st_uid,
      (unsigned long) ts->uid);
    errno = EACCES;
    return -1;
  }

  if (st->st_size > MAILOAUTH_TOKENSTORE_MAX_SIZE) {
    mailoauth_errf(errbuf, errlen, "token file %s is too large (%lld bytes)",
      ts->path, (long long) st->st_size);
    errno = EFBIG;
    return -1;
  }

  return 0;
}

/* Open the file without following a symlink, without blocking on a FIFO,
 * and check what was opened (not what the name pointed to a moment ago).
 */
static int open_checked(struct mailoauth_tokenstore *ts, struct stat *st,
    char *errbuf, size_t errlen) {
  int fd, xerrno;

  fd = open(ts->path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK |
    O_NOCTTY);
  if (fd < 0) {
    xerrno = errno;

    if (xerrno == ELOOP) {
      mailoauth_errf(errbuf, errlen, "token file %s is a symbolic link: refusing to "
        "follow it", ts->path);

    } else if (xerrno == ENOENT) {
      mailoauth_errf(errbuf, errlen, "token file %s does not exist (not signed in "
        "yet?)", ts->path);

    } else {
      mailoauth_errf(errbuf, errlen, "cannot open token file %s: %s", ts->path,
        strerror(xerrno));
    }

    errno = xerrno;
    return -1;
  }

  if (fstat(fd, st) < 0) {
    xerrno = errno;
    mailoauth_errf(errbuf, errlen, "cannot stat token file %s: %s", ts->path,
      strerror(xerrno));
    close(fd);
    errno = xerrno;
    return -1;
  }

  if (check_file(ts, st, errbuf, errlen) < 0) {
    xerrno = errno;
    close(fd);
    errno = xerrno;
    return -1;
  }

  return fd;
}

/* The whole file, NUL-terminated; *len its length. */
static char *read_all(int fd, size_t *len) {
  size_t size = 4096, n = 0;
  char *buf;

  buf = malloc(size);
  if (buf == NULL) {
    errno = ENOMEM;
    return NULL;
  }

  for (;;) {
    ssize_t r;

    if (n + 1 >= size) {
      char *bigger;

      if (size >= MAILOAUTH_TOKENSTORE_MAX_SIZE) {
        OPENSSL_cleanse(buf, n);
        free(buf);
        errno = EFBIG;
        return NULL;
      }

      /* Not realloc(): the old block holds tokens. */
      bigger = malloc(size * 2);
      if (bigger == NULL) {
        OPENSSL_cleanse(buf, n);
        free(buf);
        errno = ENOMEM;
        return NULL;
      }

      memcpy(bigger, buf, n);
      OPENSSL_cleanse(buf, n);
      free(buf);
      buf = bigger;
      size *= 2;
    }

    r = read(fd, buf + n, size - n - 1);
    if (r < 0) {
      int xerrno = errno;

      if (xerrno == EINTR) {
        continue;
      }

      OPENSSL_cleanse(buf, n);
      free(buf);
      errno = xerrno;
      return NULL;
    }

    if (r == 0) {
      break;
    }
    n += (size_t) r;
  }

  buf[n] = '\0';
  *len = n;
  return buf;
}

struct field_error {
  const char *name;
};

static int get_string(json_t *obj, const char *key, char **dst,
    struct field_error *fe) {
  json_t *v = json_object_get(obj, key);

  if (v == NULL || json_is_null(v)) {
    return 0;
  }

  if (!json_is_string(v)) {
    fe->name = key;
    errno = EINVAL;
    return -1;
  }

  *dst = strdup(json_string_value(v));
  if (*dst == NULL) {
    errno = ENOMEM;
    return -1;
  }
  return 0;
}

static int get_integer(json_t *obj, const char *key, long long *dst,
    struct field_error *fe) {
  json_t *v = json_object_get(obj, key);

  if (v == NULL || json_is_null(v)) {
    return 0;
  }

  if (!json_is_integer(v) || json_integer_value(v) < 0) {
    fe->name = key;
    errno = EINVAL;
    return -1;
  }

  *dst = (long long) json_integer_value(v);
  return 0;
}

static int get_time(json_t *obj, const char *key, time_t *dst,
    struct field_error *fe) {
  long long n = 0;

  if (get_integer(obj, key, &n, fe) < 0) {
    return -1;
  }

  *dst = (time_t) n;
  return 0;
}

static int get_object(json_t *obj, const char *key, json_t **dst,
    struct field_error *fe) {
  json_t *v = json_object_get(obj, key);

  *dst = NULL;
  if (v == NULL || json_is_null(v)) {
    return 0;
  }

  if (!json_is_object(v)) {
    fe->name = key;
    errno = EINVAL;
    return -1;
  }

  *dst = v;
  return 0;
}

static int decode_identity(json_t *root, struct mailoauth_tokenstore_record *rec,
    struct field_error *fe) {
  json_t *id;

  if (get_object(root, "identity", &id, fe) < 0) {
    return -1;
  }

  if (id == NULL) {
    return 0;
  }

  if (get_string(id, "username", &rec->username, fe) < 0 ||
      get_string(id, "name", &rec->name, fe) < 0 ||
      get_string(id, "tenant", &rec->tenant, fe) < 0 ||
      get_string(id, "oid", &rec->oid, fe) < 0) {
    return -1;
  }
  return 0;
}

static int decode_last_error(json_t *root,
    struct mailoauth_tokenstore_record *rec, struct field_error *fe) {
  json_t *le;
  long long code = 0;

  if (get_object(root, "last_error", &le, fe) < 0) {
    return -1;
  }

  if (le == NULL) {
    return 0;
  }

  if (get_string(le, "class", &rec->error_class, fe) < 0 ||
      get_integer(le, "code", &code, fe) < 0 ||
      get_string(le, "message", &rec->error_message, fe) < 0 ||
      get_time(le, "at", &rec->error_at, fe) < 0) {
    return -1;
  }

  rec->error_code = code > LONG_MAX ? LONG_MAX : (long) code;
  return 0;
}

static int decode_record(json_t *root, struct mailoauth_tokenstore_record *rec,
    struct field_error *fe) {
  if (get_string(root, "grant", &rec->grant, fe) < 0 ||
      get_string(root, "refresh_token", &rec->refresh_token, fe) < 0 ||
      get_string(root, "access_token", &rec->access_token, fe) < 0 ||
      get_time(root, "access_expires", &rec->access_expires, fe) < 0 ||
      get_string(root, "scope", &rec->scope, fe) < 0 ||
      get_time(root, "obtained_at", &rec->obtained_at, fe) < 0 ||
      get_time(root, "refreshed_at", &rec->refreshed_at, fe) < 0 ||
      decode_identity(root, rec, fe) < 0 ||
      decode_last_error(root, rec, fe) < 0) {
    return -1;
  }
  return 0;
}

static int check_version(struct mailoauth_tokenstore *ts, json_t *root,
    char *errbuf, size_t errlen) {
  json_t *v = json_object_get(root, "version");

  if (!json_is_integer(v)) {
    mailoauth_errf(errbuf, errlen, "token file %s has no format version: not a "
      "token file?", ts->path);
    errno = EINVAL;
    return -1;
  }

  if (json_integer_value(v) != MAILOAUTH_TOKENSTORE_VERSION) {
    mailoauth_errf(errbuf, errlen, "token file %s has format version %lld; this "
      "version reads only version %d", ts->path,
      (long long) json_integer_value(v), MAILOAUTH_TOKENSTORE_VERSION);
    errno = EINVAL;
    return -1;
  }

  return 0;
}

static int parse_record(struct mailoauth_tokenstore *ts, const char *text,
    size_t len, struct mailoauth_tokenstore_record *rec, char *errbuf,
    size_t errlen) {
  struct field_error fe = { NULL };
  json_error_t jerr;
  json_t *root;
  int res;

  root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
  if (root == NULL || !json_is_object(root)) {
    /* Position only: jansson's message quotes the text near the error,
     * which may be a token.
     */
    if (root == NULL) {
      mailoauth_errf(errbuf, errlen, "token file %s is not valid JSON (line %d, "
        "column %d)", ts->path, jerr.line, jerr.column);

    } else {
      mailoauth_errf(errbuf, errlen, "token file %s does not hold a JSON object",
        ts->path);
    }

    json_decref(root);
    errno = EINVAL;
    return -1;
  }

  if (check_version(ts, root, errbuf, errlen) < 0) {
    json_decref(root);
    errno = EINVAL;
    return -1;
  }

  res = decode_record(root, rec, &fe);
  json_decref(root);

  if (res < 0) {
    int xerrno = errno;

    if (fe.name != NULL) {
      mailoauth_errf(errbuf, errlen, "token file %s: field '%s' has the wrong type",
        ts->path, fe.name);

    } else {
      mailoauth_errf(errbuf, errlen, "cannot read token file %s: %s", ts->path,
        strerror(xerrno));
    }
    errno = xerrno;
    return -1;
  }

  return 0;
}

int mailoauth_tokenstore_read(struct mailoauth_tokenstore *ts,
    struct mailoauth_tokenstore_record *rec, char *errbuf, size_t errlen) {
  struct mailoauth_tokenstore_record fresh;
  struct stat st, lst;
  char *text;
  size_t len = 0;
  int fd, res, xerrno;

  if (ts == NULL || rec == NULL) {
    errno = EINVAL;
    return -1;
  }

  fd = open_checked(ts, &st, errbuf, errlen);
  if (fd < 0) {
    xerrno = errno;

    /* Remember the refused or missing file so that the caller is told of
     * a change (a fix) instead of failing on every look.
     */
    stamp_set(&ts->stamp, lstat(ts->path, &lst) == 0 ? &lst : NULL);
    mailoauth_trace(trace_channel, 3, "%s", errbuf != NULL ? errbuf :
      "cannot read token file");
    errno = xerrno;
    return -1;
  }

  stamp_set(&ts->stamp, &st);

  text = read_all(fd, &len);
  xerrno = errno;
  close(fd);

  if (text == NULL) {
    mailoauth_errf(errbuf, errlen, "cannot read token file %s: %s", ts->path,
      strerror(xerrno));
    errno = xerrno;
    return -1;
  }

  memset(&fresh, 0, sizeof(fresh));
  res = parse_record(ts, text, len, &fresh, errbuf, errlen);
  xerrno = errno;

  OPENSSL_cleanse(text, len);
  free(text);

  if (res < 0) {
    mailoauth_tokenstore_record_free(&fresh);
    mailoauth_trace(trace_channel, 3, "%s", errbuf != NULL ? errbuf :
      "cannot parse token file");
    errno = xerrno;
    return -1;
  }

  mailoauth_tokenstore_record_free(rec);
  *rec = fresh;

  mailoauth_trace(trace_channel, 9, "read token file %s (%s, %s, access "
    "token expires at %lld)", ts->path, rec->grant != NULL ? rec->grant : "-",
    rec->refresh_token != NULL ? "with refresh token" : "no refresh token",
    (long long) rec->access_expires);
  return 0;
}

/* ------------------------------------------------------------------------
 * Writing.
 */

/* jansson's dump callback: the document grows in a secret buffer, up to
 * the size a token file may have.
 */
static int dump_cb(const char *buffer, size_t size, void *data) {
  struct mailoauth_buf *b = data;

  if (size > MAILOAUTH_TOKENSTORE_MAX_SIZE ||
      b->len + size + 1 > MAILOAUTH_TOKENSTORE_MAX_SIZE) {
    return -1;
  }

  return mailoauth_buf_add(b, buffer, size);
}

/* json_object_set_new() only when value is set. */
static int put_string(json_t *obj, const char *key, const char *value) {
  if (value == NULL) {
    return 0;
  }
  return json_object_set_new(obj, key, json_string(value));
}

static int put_integer(json_t *obj, const char *key, long long value) {
  return json_object_set_new(obj, key, json_integer((json_int_t) value));
}

static json_t *encode_identity(const struct mailoauth_tokenstore_record *rec) {
  json_t *id = json_object();

  if (id == NULL ||
      put_string(id, "username", rec->username) < 0 ||
      put_string(id, "name", rec->name) < 0 ||
      put_string(id, "tenant", rec->tenant) < 0 ||
      put_string(id, "oid", rec->oid) < 0) {
    json_decref(id);
    return NULL;
  }
  return id;
}

static json_t *encode_last_error(const struct mailoauth_tokenstore_record *rec) {
  json_t *le = json_object();

  if (le == NULL ||
      put_string(le, "class", rec->error_class) < 0 ||
      put_integer(le, "code", rec->error_code) < 0 ||
      put_string(le, "message", rec->error_message) < 0 ||
      put_integer(le, "at", (long long) rec->error_at) < 0) {
    json_decref(le);
    return NULL;
  }
  return le;
}

static json_t *encode_record(const struct mailoauth_tokenstore *ts,
    const struct mailoauth_tokenstore_record *rec) {
  json_t *root = json_object();

  if (root == NULL ||
      put_integer(root, "version", MAILOAUTH_TOKENSTORE_VERSION) < 0 ||
      put_string(root, "account", ts->account) < 0 ||
      put_string(root, "grant", rec->grant) < 0 ||
      put_string(root, "refresh_token", rec->refresh_token) < 0 ||
      put_string(root, "access_token", rec->access_token) < 0 ||
      put_integer(root, "access_expires", (long long) rec->access_expires) < 0 ||
      put_string(root, "scope", rec->scope) < 0 ||
      json_object_set_new(root, "identity", encode_identity(rec)) < 0 ||
      put_integer(root, "obtained_at", (long long) rec->obtained_at) < 0 ||
      put_integer(root, "refreshed_at", (long long) rec->refreshed_at) < 0) {
    json_decref(root);
    return NULL;
  }

  if (rec->error_class != NULL &&
      json_object_set_new(root, "last_error", encode_last_error(rec)) < 0) {
    json_decref(root);
    return NULL;
  }

  return root;
}

static int serialize(const struct mailoauth_tokenstore *ts,
    const struct mailoauth_tokenstore_record *rec, struct mailoauth_buf *out) {
  json_t *root;
  int res;

  root = encode_record(ts, rec);
  if (root == NULL) {
    errno = ENOMEM;
    return -1;
  }

  res = json_dump_callback(root, dump_cb, out,
    JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  json_decref(root);

  if (res < 0 || dump_cb("\n", 1, out) < 0) {
    errno = ENOMEM;
    return -1;
  }
  return 0;
}

/* ".<account>.json.tmp.<pid>.<random>", created exclusively. */
static int open_temp(struct mailoauth_tokenstore *ts, char *tmp,
    size_t tmplen) {
  unsigned int attempt;

  for (attempt = 0; attempt < 16; attempt++) {
    unsigned char rnd[6];
    int fd, n;

    if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
      errno = EIO;
      return -1;
    }

    n = snprintf(tmp, tmplen, "%s/.%s%s%ld.%02x%02x%02x%02x%02x%02x", ts->dir,
      ts->account, tmp_infix, (long) getpid(), rnd[0], rnd[1], rnd[2], rnd[3],
      rnd[4], rnd[5]);
    if (n < 0 || (size_t) n >= tmplen) {
      errno = ENAMETOOLONG;
      return -1;
    }

    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd >= 0 || errno != EEXIST) {
      return fd;
    }
  }

  errno = EEXIST;
  return -1;
}

static int write_temp(int fd, const struct mailoauth_buf *data, const char *tmp,
    const char *path, struct stat *st) {
  /* Mode 0600 whatever the umask. */
  if (fchmod(fd, S_IRUSR | S_IWUSR) < 0 ||
      mailoauth_io_write_all(fd, data->data, data->len) < 0 ||
      fsync(fd) < 0 ||
      rename(tmp, path) < 0 ||
      fstat(fd, st) < 0) {
    return -1;
  }
  return 0;
}

int mailoauth_tokenstore_write(struct mailoauth_tokenstore *ts,
    const struct mailoauth_tokenstore_record *rec, char *errbuf,
    size_t errlen) {
  struct mailoauth_buf data = MAILOAUTH_BUF_SECRET;
  char tmp[PATH_MAX];
  struct stat st;
  int fd, xerrno;

  if (ts == NULL || rec == NULL) {
    errno = EINVAL;
    return -1;
  }

  /* Files are written by their owner only: the directory belongs to that
   * user, and a more privileged writer would act inside it on their terms.
   */
  if (ts->uid != (uid_t) -1 && ts->uid != geteuid()) {
    mailoauth_errf(errbuf, errlen, "token file %s must be written by uid %lu, "
      "not by uid %lu", ts->path, (unsigned long) ts->uid,
      (unsigned long) geteuid());
    errno = EPERM;
    return -1;
  }

  if (serialize(ts, rec, &data) < 0) {
    xerrno = errno;
    mailoauth_buf_free(&data);
    mailoauth_errf(errbuf, errlen, "cannot encode token file %s: %s", ts->path,
      strerror(xerrno));
    errno = xerrno;
    return -1;
  }

  fd = open_temp(ts, tmp, sizeof(tmp));
  if (fd < 0) {
    xerrno = errno;
    mailoauth_buf_free(&data);
    mailoauth_errf(errbuf, errlen, "cannot create a temporary file in %s for token "
      "file %s: %s", ts->dir, ts->path, strerror(xerrno));
    errno = xerrno;
    return -1;
  }

  if (write_temp(fd, &data, tmp, ts->path, &st) < 0) {
    xerrno = errno;
    close(fd);
    unlink(tmp);
    mailoauth_buf_free(&data);
    mailoauth_errf(errbuf, errlen, "cannot write token file %s: %s", ts->path,
      strerror(xerrno));
    errno = xerrno;
    return -1;
  }

  close(fd);
  mailoauth_buf_free(&data);
  stamp_set(&ts->stamp, &st);

  if (mailoauth_io_fsync_dir(ts->dir) < 0) {
    xerrno = errno;
    mailoauth_errf(errbuf, errlen, "token file %s was replaced but directory %s "
      "could not be synced: %s", ts->path, ts->dir, strerror(xerrno));
    errno = xerrno;
    return -1;
  }

  mailoauth_trace(trace_channel, 9, "wrote token file %s (%lld bytes)",
    ts->path, (long long) st.st_size);
  return 0;
}

int mailoauth_tokenstore_remove(struct mailoauth_tokenstore *ts, char *errbuf,
    size_t errlen) {
  int xerrno;

  if (ts == NULL) {
    errno = EINVAL;
    return -1;
  }

  if (unlink(ts->path) < 0 && errno != ENOENT) {
    xerrno = errno;
    mailoauth_errf(errbuf, errlen, "cannot remove token file %s: %s", ts->path,
      strerror(xerrno));
    errno = xerrno;
    return -1;
  }

  stamp_set(&ts->stamp, NULL);

  if (mailoauth_io_fsync_dir(ts->dir) < 0) {
    xerrno = errno;
    mailoauth_errf(errbuf, errlen, "token file %s was removed but directory %s "
      "could not be synced: %s", ts->path, ts->dir, strerror(xerrno));
    errno = xerrno;
    return -1;
  }

  mailoauth_trace(trace_channel, 9, "removed token file %s", ts->path);
  return 0;
}

/* ------------------------------------------------------------------------
 * Leftovers.
 */

static int is_own_temp(const struct mailoauth_tokenstore *ts,
    const char *name) {
  size_t alen = strlen(ts->account), ilen = strlen(tmp_infix);

  return name[0] == '.' &&
    strncmp(name + 1, ts->account, alen) == 0 &&
    strncmp(name + 1 + alen, tmp_infix, ilen) == 0 &&
    name[1 + alen + ilen] != '\0';
}

int mailoauth_tokenstore_cleanup(struct mailoauth_tokenstore *ts,
    time_t min_age) {
  struct dirent *de;
  DIR *dirh;
  time_t now;
  int dfd, removed = 0;

  if (ts == NULL) {
    errno = EINVAL;
    return -1;
  }

  dirh = opendir(ts->dir);
  if (dirh == NULL) {
    return -1;
  }

  dfd = dirfd(dirh);
  now = time(NULL);

  while ((de = readdir(dirh)) != NULL) {
    struct stat st;

    if (!is_own_temp(ts, de->d_name)) {
      continue;
    }

    if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
        now - st.st_mtime < min_age) {
      continue;
    }

    if (unlinkat(dfd, de->d_name, 0) == 0) {
      removed++;
      mailoauth_trace(trace_channel, 5, "removed leftover temporary file "
        "%s/%s", ts->dir, de->d_name);
    }
  }

  closedir(dirh);
  return removed;
}

/* ------------------------------------------------------------------------
 * The record as text, for a store other than the file (the cluster's).
 */

int mailoauth_tokenstore_encode(const struct mailoauth_tokenstore *ts,
    const struct mailoauth_tokenstore_record *rec, char **text, size_t *len) {
  struct mailoauth_buf out;

  mailoauth_buf_init(&out, 1);
  if (serialize(ts, rec, &out) < 0) {
    mailoauth_buf_free(&out);
    errno = ENOMEM;
    return -1;
  }

  *text = mailoauth_buf_take(&out, len);
  mailoauth_buf_free(&out);
  if (*text == NULL) {
    errno = ENOMEM;
    return -1;
  }
  return 0;
}

int mailoauth_tokenstore_decode(struct mailoauth_tokenstore *ts,
    const char *text, size_t len, struct mailoauth_tokenstore_record *rec,
    char *errbuf, size_t errlen) {
  struct mailoauth_tokenstore_record fresh;

  memset(&fresh, 0, sizeof(fresh));
  if (parse_record(ts, text, len, &fresh, errbuf, errlen) < 0) {
    int xerrno = errno;

    mailoauth_tokenstore_record_free(&fresh);
    errno = xerrno;
    return -1;
  }

  mailoauth_tokenstore_record_free(rec);
  *rec = fresh;
  return 0;
}
