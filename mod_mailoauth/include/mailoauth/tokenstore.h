/*
 * mod_mailoauth - token file per account
 *
 * Each OAuth account keeps its tokens in <dir>/<account>.json (mode 0600,
 * JSON, "version": 1).  The sign-in tool writes the file after a person
 * signs in; the module's worker reads it, refreshes the access token and
 * writes the rotated refresh token back.  Writes are atomic (temporary file,
 * fsync, rename, directory fsync), so a reader or a crash never sees half a
 * file, and the worker notices a file rewritten by the sign-in tool through
 * mailoauth_tokenstore_changed() without a restart.
 *
 * No ProFTPD headers.  Errors: -1 with errno set, and a human-readable
 * message in the caller's buffer naming the file, never its contents.
 */

#ifndef MOD_MAILOAUTH_TOKENSTORE_H
#define MOD_MAILOAUTH_TOKENSTORE_H

#include <stddef.h>
#include <sys/types.h>
#include <time.h>

#define MAILOAUTH_TOKENSTORE_VERSION      1
#define MAILOAUTH_TOKENSTORE_ACCOUNT_MAX  64

/* Files larger than this are refused unread: a token file is a few KiB. */
#define MAILOAUTH_TOKENSTORE_MAX_SIZE     (1024 * 1024)

/* The contents of one token file.  Strings are malloc'd (NULL when absent);
 * times are seconds since the epoch (0 when absent).  Release with
 * mailoauth_tokenstore_record_free(), which wipes the tokens first.
 */
struct mailoauth_tokenstore_record {
  char *grant;              /* "delegated" or "app-only" */
  char *refresh_token;      /* secret */
  char *access_token;       /* secret */
  time_t access_expires;
  char *scope;

  /* Who signed in. */
  char *username;           /* preferred_username / upn / email */
  char *name;
  char *tenant;
  char *oid;

  time_t obtained_at;       /* first sign-in */
  time_t refreshed_at;      /* last successful refresh */

  /* The last failure; error_class NULL when there is none. */
  char *error_class;        /* "reauth", "config", "transient", ... */
  long error_code;          /* e.g. an AADSTS number; 0 */
  char *error_message;      /* one line, no secrets */
  time_t error_at;
};

struct mailoauth_tokenstore;

/* 1 when account is usable as a file name: 1-64 of [A-Za-z0-9._-], not
 * starting with '.'; 0 otherwise.
 */
int mailoauth_tokenstore_valid_account(const char *account);

/* A handle for one account's file; no I/O yet.  uid: the owner required
 * when reading, and the only uid allowed to write (no process writes token
 * files for another user); (uid_t) -1 for "whoever we are".
 */
struct mailoauth_tokenstore *mailoauth_tokenstore_create(const char *dir,
  const char *account, uid_t uid, char *errbuf, size_t errlen);
void mailoauth_tokenstore_destroy(struct mailoauth_tokenstore *ts);

/* "<dir>/<account>.json". */
const char *mailoauth_tokenstore_path(const struct mailoauth_tokenstore *ts);

/* Read and check the file into rec (replacing its contents only on
 * success).  Refuses symlinks, non-regular files, hard-linked files, files
 * readable or writable by group or others, and files of another owner.
 * errno ENOENT
 * when there is no file yet.
 */
int mailoauth_tokenstore_read(struct mailoauth_tokenstore *ts,
  struct mailoauth_tokenstore_record *rec, char *errbuf, size_t errlen);

/* Replace the file atomically with rec. */
int mailoauth_tokenstore_write(struct mailoauth_tokenstore *ts,
  const struct mailoauth_tokenstore_record *rec, char *errbuf, size_t errlen);

/* 1 when the file differs from what the last read or write saw (or was
 * never seen), 0 when it does not, -1 on error.
 */
int mailoauth_tokenstore_changed(const struct mailoauth_tokenstore *ts);

/* Remove this account's temporary files (".<account>.json.tmp.*") at least
 * min_age seconds old: leftovers of a crash.  A younger one may belong to a
 * write in progress in another process.  Returns how many were removed.
 */
int mailoauth_tokenstore_cleanup(struct mailoauth_tokenstore *ts,
  time_t min_age);

/* Delete the token file (signing out).  No file is not an error. */
int mailoauth_tokenstore_remove(struct mailoauth_tokenstore *ts, char *errbuf,
  size_t errlen);

/* The record as the file holds it, as text (malloc'd, NUL-terminated;
 * the caller wipes and frees it: it holds the tokens), and back (rec
 * replaced only on success; messages name the file, never the text).  For
 * the cluster's copy of the file in Redis.
 */
int mailoauth_tokenstore_encode(const struct mailoauth_tokenstore *ts,
  const struct mailoauth_tokenstore_record *rec, char **text, size_t *len);
int mailoauth_tokenstore_decode(struct mailoauth_tokenstore *ts,
  const char *text, size_t len, struct mailoauth_tokenstore_record *rec,
  char *errbuf, size_t errlen);

/* Replace a record's string field with a copy of value (NULL clears it),
 * wiping the old value.
 */
int mailoauth_tokenstore_set(char **field, const char *value);

/* Overwrite the tokens in place with zero bytes (memory kept). */
void mailoauth_tokenstore_record_wipe(struct mailoauth_tokenstore_record *rec);

/* Wipe the tokens, free every field and zero the record. */
void mailoauth_tokenstore_record_free(struct mailoauth_tokenstore_record *rec);

#endif /* MOD_MAILOAUTH_TOKENSTORE_H */
