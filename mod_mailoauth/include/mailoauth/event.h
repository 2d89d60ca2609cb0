/*
 * mod_mailoauth - upload event records
 *
 * A session process describes a completed upload as one self-delimiting
 * binary record and appends it to its journal, in a frame that binds it to
 * the journal (spool.h); the worker decodes it.  The record's own magic,
 * length and checksum guard the worker's queue files, and the fields are
 * length-prefixed so that file and user names may hold any byte
 * (CR, LF, NUL, invalid UTF-8) without breaking the format.
 */

#ifndef MOD_MAILOAUTH_EVENT_H
#define MOD_MAILOAUTH_EVENT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define MAILOAUTH_EVENT_MAGIC           "MOE1"
#define MAILOAUTH_EVENT_HEADER_LEN      8   /* magic + payload length */
#define MAILOAUTH_EVENT_TRAILER_LEN     4   /* checksum */
#define MAILOAUTH_EVENT_MAX_PAYLOAD     (256 * 1024)
#define MAILOAUTH_EVENT_MAX_FIELDS      64

/* Field tags.  Unknown tags are kept and ignored, so an older worker can read
 * records written by a newer session.
 */
#define MAILOAUTH_EVENT_F_PATH          'p' /* real (absolute) path */
#define MAILOAUTH_EVENT_F_VPATH         'v' /* path as the user saw it */
#define MAILOAUTH_EVENT_F_USER          'u'
#define MAILOAUTH_EVENT_F_PROTOCOL      'r' /* ftp, ftps, sftp, scp */
#define MAILOAUTH_EVENT_F_REMOTE_ADDR   'a'
#define MAILOAUTH_EVENT_F_SIZE          's' /* file size after the upload */
#define MAILOAUTH_EVENT_F_BYTES         'b' /* bytes transferred */
#define MAILOAUTH_EVENT_F_TIME          't' /* "sec.usec" of completion */
#define MAILOAUTH_EVENT_F_COMMAND       'c' /* STOR, APPE, STOU */
#define MAILOAUTH_EVENT_F_SERVER        'n' /* ServerName of the vhost */

/* The stored file as the session saw it right after the upload (decimal):
 * the worker attaches a file only if it is still this one.
 */
#define MAILOAUTH_EVENT_F_DEVICE        'e' /* st_dev */
#define MAILOAUTH_EVENT_F_INODE         'i' /* st_ino */
#define MAILOAUTH_EVENT_F_STAT_SIZE     'z' /* st_size */

/* A notification rule that matched the upload (MailOAuthNotify), with its
 * templates already rendered by the session.  Address fields repeat.
 */
#define MAILOAUTH_EVENT_F_ACCOUNT       'A'
#define MAILOAUTH_EVENT_F_FROM          'F'
#define MAILOAUTH_EVENT_F_FROM_NAME     'G'
#define MAILOAUTH_EVENT_F_TO            'T'
#define MAILOAUTH_EVENT_F_CC            'C'
#define MAILOAUTH_EVENT_F_BCC           'B'
#define MAILOAUTH_EVENT_F_SUBJECT       'S'
#define MAILOAUTH_EVENT_F_BODY          'Y'
#define MAILOAUTH_EVENT_F_DIGEST_LINE   'I' /* this upload's line in a digest */
#define MAILOAUTH_EVENT_F_ATTACH_MAX    'L' /* attach the file up to N bytes */
#define MAILOAUTH_EVENT_F_DIGEST_SECS   'D' /* collect for N seconds */
#define MAILOAUTH_EVENT_F_RULE          'K' /* which rule: groups digests */
#define MAILOAUTH_EVENT_F_BURST         'W' /* "digest": fold a send-rate
                                               backlog into one digest */

struct mailoauth_event_field {
  unsigned char tag;
  const char *value;    /* not NUL-safe: use len */
  uint32_t len;
};

struct mailoauth_event {
  unsigned int nfields;
  struct mailoauth_event_field fields[MAILOAUTH_EVENT_MAX_FIELDS];
};

/* Builder: fields are appended to a caller-owned buffer. */
struct mailoauth_event_buf {
  unsigned char *data;
  size_t len, size;
};

void mailoauth_event_buf_init(struct mailoauth_event_buf *b,
  unsigned char *storage, size_t size);

/* Appends one field; -1/ENOSPC if the buffer or field limit is exceeded. */
int mailoauth_event_add(struct mailoauth_event_buf *b, unsigned char tag,
  const char *value, size_t len);
int mailoauth_event_add_str(struct mailoauth_event_buf *b, unsigned char tag,
  const char *value);

/* Wraps the fields built so far into a framed record, in place; returns the
 * record's total length, or -1 (errno ENOSPC) if there is no room.
 */
ssize_t mailoauth_event_finish(struct mailoauth_event_buf *b);

/* Parses one record at the start of data.  Returns the number of bytes the
 * record occupies (> 0), 0 if data holds only the beginning of a record (read
 * more), or -1 with errno EILSEQ for bytes that can never become a valid
 * record.  Field values point into data.
 */
ssize_t mailoauth_event_parse(const unsigned char *data, size_t len,
  struct mailoauth_event *ev);

/* First field with this tag, or NULL. */
const struct mailoauth_event_field *mailoauth_event_get(
  const struct mailoauth_event *ev, unsigned char tag);

/* The next field with this tag after prev (NULL: the first), or NULL. */
const struct mailoauth_event_field *mailoauth_event_next(
  const struct mailoauth_event *ev, unsigned char tag,
  const struct mailoauth_event_field *prev);

/* A field's value as a NUL-terminated copy in buf (cut to fit); "" when the
 * field is absent.
 */
const char *mailoauth_event_str(const struct mailoauth_event *ev,
  unsigned char tag, char *buf, size_t bufsz);

/* A field's value as an unsigned decimal number: 0, or -1 (errno ENOENT
 * when the field is absent, EINVAL when it is not all digits or exceeds
 * 64 bits).
 */
int mailoauth_event_u64(const struct mailoauth_event *ev, unsigned char tag,
  uint64_t *out);

#endif /* MOD_MAILOAUTH_EVENT_H */
