/*
 * mod_mailoauth - the metadata file deposited beside a message's files
 *
 * Whoever picks up the files over FTP often needs to know where they came
 * from (sender, subject, which message) and that they arrived whole; a
 * small JSON document next to them says so without giving them mailbox
 * access.
 *
 * No ProFTPD headers.
 */

#ifndef MOD_MAILOAUTH_META_H
#define MOD_MAILOAUTH_META_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define MAILOAUTH_META_SHA256_LEN       32

struct mailoauth_meta_file {
  char *name;                   /* as deposited, relative to the directory */
  char *original;               /* as the sender named it; NULL: none */
  char *content_type;
  uint64_t size;
  unsigned char sha256[MAILOAUTH_META_SHA256_LEN];
  int is_message;               /* the message itself (.eml) */
  int incomplete;               /* kept as decoded, but broken or cut */
};

struct mailoauth_meta {
  const char *task;
  const char *account;
  const char *folder;
  uint32_t uidvalidity;
  uint32_t uid;
  const char *message_id;
  const char *from;             /* display form */
  const char *from_addr;
  const char *recipients;       /* comma-separated */
  const char *subject;
  const char *date;             /* as sent */
  time_t taken;
  const struct mailoauth_meta_file *files;
  size_t nfiles;
};

/* The document, NUL-terminated, for free(); NULL with errno on failure. */
char *mailoauth_meta_json(const struct mailoauth_meta *m, size_t *len);

/* Adds a copy of f to a growing array (*files, *n).  0, or -1 with errno. */
int mailoauth_meta_add_file(struct mailoauth_meta_file **files, size_t *n,
  const struct mailoauth_meta_file *f);

void mailoauth_meta_free_files(struct mailoauth_meta_file *files, size_t n);

#endif /* MOD_MAILOAUTH_META_H */
