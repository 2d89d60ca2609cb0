/*
 * mod_mailoauth - names for files deposited from mail
 *
 * Attachment names come from strangers: they may hold path separators,
 * "..", control characters, invalid UTF-8, names Windows refuses (the
 * partners who fetch the files often use Windows clients), or be empty.
 * Everything here turns such input into names that are one safe path
 * component each, deterministically: the same input always gives the same
 * name, so a re-fetched message lands on the same file.
 */

#ifndef MOD_MAILOAUTH_NAMES_H
#define MOD_MAILOAUTH_NAMES_H

#include <stddef.h>
#include <sys/types.h>
#include <time.h>

/* Bytes in one path component (NAME_MAX on Linux, 255 UTF-16 units on
 * NTFS; counting bytes satisfies both).
 */
#define MAILOAUTH_NAMES_MAX             255

/* Name used when nothing usable is left of the original. */
#define MAILOAUTH_NAMES_FALLBACK        "attachment"

/* Makes one safe path component of a UTF-8 name (len bytes, may contain
 * NUL): only what follows the last '/' or '\' is kept (mailers used to send
 * whole Windows paths); control characters (C0, DEL, C1), characters
 * Windows forbids (<>:"|?*), bidirectional overrides and slash look-alikes
 * become '_'; invalid UTF-8 becomes '_'; leading dots, dashes and spaces and
 * trailing dots and spaces go; reserved Windows device names (CON, NUL,
 * COM1, LPT1...) get a '_' prefix; at most MAILOAUTH_NAMES_MAX bytes, cut on
 * a character boundary keeping the extension.  An empty result becomes
 * "attachment" plus the extension known for content_type (may be NULL).
 * out must hold MAILOAUTH_NAMES_MAX + 1 bytes.  Returns the length, or -1
 * with errno EINVAL.
 */
ssize_t mailoauth_names_sanitize(const char *name, size_t len,
  const char *content_type, char *out, size_t outsz);

/* ".pdf" for "application/pdf" and the like, or NULL when unknown. */
const char *mailoauth_names_ext_for_type(const char *content_type);

/* Values for a naming template.  NULL strings count as empty. */
struct mailoauth_names_fields {
  const char *sender;           /* %{sender}: the sender's address */
  const char *subject;          /* %{subject} */
  const char *uid;              /* %{uid}: the message's IMAP UID */
  const char *filename;         /* %{filename}: the original attachment name,
                                 * %{basename} / %{ext}: its parts */
  const char *content_type;     /* extension for a nameless attachment */
  const struct tm *tm;          /* %Y %m %d %H %M %S %y %j; NULL: zeros */
  unsigned long counter;        /* %{counter} */
};

/* Checks a template once, at configuration time: -1 with errno EINVAL for
 * an unknown field, an absolute path, a '\', or an empty, "." or ".."
 * directory component.  '/' in the template makes subdirectories.
 */
int mailoauth_names_template_check(const char *tmpl);

/* Expands a template into a relative path.  Every field is sanitized before
 * substitution (a field can never add a separator or a ".." component),
 * every resulting component is then sanitized as a whole (empty directory
 * components become "_", an empty file name the fallback).  Returns the
 * length, or -1 with errno EINVAL (bad template) or ENAMETOOLONG (outsz).
 */
ssize_t mailoauth_names_expand(const char *tmpl,
  const struct mailoauth_names_fields *fields, char *out, size_t outsz);

/* exists(): 1 if the name is taken, 0 if free, -1 on error (errno kept).
 * Probing is racy by nature: callers create the file with O_EXCL and come
 * back here on EEXIST.
 */
typedef int (*mailoauth_names_exists_fn)(const char *name, void *arg);

/* First free name among name, "name (1).ext", "name (2).ext"... (the number
 * goes before the extension of the last component, which stays within
 * MAILOAUTH_NAMES_MAX bytes).  Returns the length, or -1 with errno
 * (EEXIST after MAILOAUTH_NAMES_MAX_TRIES, ENAMETOOLONG, or the callback's).
 */
#define MAILOAUTH_NAMES_MAX_TRIES       10000

ssize_t mailoauth_names_unique(const char *name,
  mailoauth_names_exists_fn exists, void *arg, char *out, size_t outsz);

#endif /* MOD_MAILOAUTH_NAMES_H */
