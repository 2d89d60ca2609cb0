/*
 * mod_mailoauth - building notification mail (RFC 5322, MIME)
 *
 * The worker describes a notification (From, To/Cc/Bcc, Subject, a plain
 * text body, at most one attached file) and reads the finished message back
 * as a stream with CRLF line endings, through a function that plugs straight
 * into libcurl's CURLOPT_READFUNCTION.  An attached file is read from disk
 * in chunks while libcurl sends, so a large upload never sits in memory.
 *
 * Every text a client can influence (file names, user names, whatever a
 * subject template produced) may hold CR, LF, NUL, other control characters
 * or invalid UTF-8.  None of it can start a header line or end the header
 * block: control characters are replaced, invalid UTF-8 becomes U+FFFD,
 * non-ASCII header text is sent as RFC 2047 encoded words and the attachment
 * name as RFC 2231 parameters.  No line of the output exceeds 998 octets,
 * and header lines that can be folded stay within 78.
 *
 * Bcc recipients are envelope-only: they are in
 * mailoauth_message_get_recipients() and never in a header, unless the
 * message is for a sender that reads recipients from the header and
 * removes Bcc itself (mailoauth_message_set_bcc_header()).
 *
 * Dot-stuffing (a line starting with "." sent as "..") and the final
 * "CRLF.CRLF" are libcurl's job: its SMTP upload escapes leading dots at
 * the start of the data and after every CRLF, across read-callback chunk
 * boundaries, and adds a CRLF before the final dot when the data does not
 * end with one (lib/smtp.c, Curl_smtp_escape_eob(); checked against 7.88.1
 * with a recording server).  The stream here is therefore the message
 * itself, not its SMTP DATA encoding.
 *
 * No ProFTPD headers and no libcurl: the unit is fuzzed on its own.
 */

#ifndef MOD_MAILOAUTH_MESSAGE_H
#define MOD_MAILOAUTH_MESSAGE_H

#include <stddef.h>
#include <sys/types.h>
#include <time.h>

/* Pass as a length to mean "up to the terminating NUL". */
#define MAILOAUTH_MESSAGE_STRLEN        ((size_t) -1)

/* What mailoauth_message_read() returns on failure: libcurl's
 * CURL_READFUNC_ABORT (kept equal by a unit test; curl.h is not included
 * here).
 */
#define MAILOAUTH_MESSAGE_READ_ABORT    ((size_t) 0x10000000)

/* Recipient kinds. */
#define MAILOAUTH_MESSAGE_TO            0
#define MAILOAUTH_MESSAGE_CC            1
#define MAILOAUTH_MESSAGE_BCC           2

/* Limits on text taken from outside; longer text is cut at a character
 * boundary (not an error: a notification with a shortened subject is
 * better than none).
 */
#define MAILOAUTH_MESSAGE_MAX_SUBJECT   2048
#define MAILOAUTH_MESSAGE_MAX_NAME      256   /* display names */
#define MAILOAUTH_MESSAGE_MAX_FILENAME  512   /* attachment names */
#define MAILOAUTH_MESSAGE_MAX_RCPTS     512

struct mailoauth_message;

struct mailoauth_message *mailoauth_message_create(void);

/* Also closes the attached file, if any.  NULL is allowed. */
void mailoauth_message_free(struct mailoauth_message *msg);

/* 0 if addr is an address this unit accepts: local@domain, a dot-atom
 * local part (no quoted strings) and a domain of ASCII letters, digits and
 * hyphens with at least one dot; no spaces, angle brackets, commas, control
 * or non-ASCII characters.  -1/EINVAL otherwise.
 */
int mailoauth_message_check_address(const char *addr);

/* Setters return 0, or -1 with errno EINVAL (a bad address or argument),
 * ENOMEM, E2BIG (too many recipients) or EBUSY (the message is being read;
 * call mailoauth_message_rewind() first).
 *
 * Display names are optional (NULL or "").
 */
int mailoauth_message_set_from(struct mailoauth_message *msg,
  const char *addr, const char *name);
int mailoauth_message_set_reply_to(struct mailoauth_message *msg,
  const char *addr, const char *name);

/* kind: MAILOAUTH_MESSAGE_TO, _CC or _BCC.  An address given twice (in any
 * case, in any kind) is one envelope recipient.
 */
int mailoauth_message_add_recipient(struct mailoauth_message *msg, int kind,
  const char *addr, const char *name);

/* Any bytes; len may be MAILOAUTH_MESSAGE_STRLEN. */
int mailoauth_message_set_subject(struct mailoauth_message *msg,
  const char *subject, size_t len);

/* Plain text, UTF-8 expected (invalid sequences become U+FFFD); LF, CRLF
 * and lone CR all end a line.
 */
int mailoauth_message_set_body(struct mailoauth_message *msg,
  const char *text, size_t len);

/* A digest body: the intro, one line per item, then the outro (intro and
 * outro may be NULL and may span lines).  Line breaks and control characters
 * inside an item are replaced, so that each item is exactly one line.
 */
int mailoauth_message_set_digest_body(struct mailoauth_message *msg,
  const char *intro, const char *const *items, size_t nitems,
  const char *outro);

/* Text a client chose (a file or user name, a path) made fit to stand in
 * a body line: valid UTF-8 is kept as it is, while line breaks and other
 * control characters are shown as escapes ("\n", "\r", "\t", "\x1B"),
 * C1 controls, U+2028/U+2029 and bidirectional overrides as "\u2028", and
 * bytes that are not UTF-8 as "\xFF".  So the text can never start a new
 * line or pose as a header.  A malloc'd NUL-terminated string (its length
 * in *out_len if not NULL), or NULL/ENOMEM.  len may be
 * MAILOAUTH_MESSAGE_STRLEN.
 */
char *mailoauth_message_escape(const char *s, size_t len, size_t *out_len);

/* The Date header; by default the time of the first read, local time. */
int mailoauth_message_set_date(struct mailoauth_message *msg, time_t when,
  int utc);

/* A Message-ID chosen by the caller (without the angle brackets), e.g. one
 * kept in the queue so that a retried message keeps its identity.  By
 * default one is made from 128 random bits and the From domain.
 */
int mailoauth_message_set_message_id(struct mailoauth_message *msg,
  const char *id);

/* Optional X-Mailer product string (printable ASCII); NULL removes it. */
int mailoauth_message_set_mailer(struct mailoauth_message *msg,
  const char *product);

/* Attaches the regular file at path, shown as name (any bytes, len may be
 * MAILOAUTH_MESSAGE_STRLEN; NULL: the last component of path).
 * content_type NULL guesses from the name's extension.  The file is opened
 * here (not following a final symlink, refusing anything but a regular
 * file, errno ELOOP/EINVAL) and its size noted: the message carries at most
 * that many bytes, so a file that keeps growing cannot make it endless.  A
 * second call replaces the attachment.
 */
int mailoauth_message_attach_file(struct mailoauth_message *msg,
  const char *path, const char *name, size_t name_len,
  const char *content_type);

/* Attaches the regular file open on fd (which the message then owns and
 * closes; on failure it stays the caller's), shown as name (not NULL).
 * For a file the caller opened and checked itself (see safeopen.h).  A
 * file larger than max_size (-1: no limit) when this is called is refused
 * with EFBIG; otherwise its size now bounds what is sent, however it
 * grows afterwards.  EINVAL: not a regular file.
 */
int mailoauth_message_attach_fd(struct mailoauth_message *msg, int fd,
  const char *name, size_t name_len, const char *content_type,
  off_t max_size);

/* Size of the attached file when it was opened; -1 if none. */
off_t mailoauth_message_attachment_size(const struct mailoauth_message *msg);

/* A media type for a file name, from its extension (case-insensitive);
 * "application/octet-stream" when unknown.  Never NULL.
 */
const char *mailoauth_message_content_type(const char *name, size_t len);

/* With on, the Bcc recipients are written in a Bcc header: only for a
 * sender that takes the recipients from the header and strips Bcc before
 * delivery (Microsoft Graph sendMail with MIME).  Off by default.
 */
int mailoauth_message_set_bcc_header(struct mailoauth_message *msg, int on);

/* With on, the message is built without its attachment (which stays
 * attached, for mailoauth_message_get_attachment()): for a sender that
 * uploads the file on its own.  Off by default.
 */
int mailoauth_message_set_omit_attachment(struct mailoauth_message *msg,
  int on);

/* The attached file: its descriptor (still the message's; reading moves
 * its offset, mailoauth_message_rewind() puts it back), the name as the
 * message shows it (UTF-8, NUL-terminated), the media type, and the size
 * that bounds what is sent.  -1/ENOENT when there is none.
 */
int mailoauth_message_get_attachment(const struct mailoauth_message *msg,
  int *fd, const char **name, const char **type, off_t *size);

/* Checks that the message can be sent (a From and at least one recipient:
 * -1/EINVAL otherwise) and builds its headers.  Called by the first read if
 * the caller did not; calling it first lets the caller log the Message-ID
 * and report errors by errno rather than by an aborted transfer.
 */
int mailoauth_message_prepare(struct mailoauth_message *msg);

/* The Message-ID without angle brackets, once prepared; else NULL. */
const char *mailoauth_message_get_message_id(
  const struct mailoauth_message *msg);

/* The From address (for CURLOPT_MAIL_FROM), or NULL. */
const char *mailoauth_message_get_from(const struct mailoauth_message *msg);

/* Envelope recipients (To, Cc and Bcc, without duplicates) as bare
 * addresses, for CURLOPT_MAIL_RCPT.  The array and strings belong to msg.
 */
const char *const *mailoauth_message_get_recipients(
  const struct mailoauth_message *msg, size_t *count);

/* CURLOPT_READFUNCTION; userdata is the message.  Returns the number of
 * bytes stored in buf, 0 at the end, or MAILOAUTH_MESSAGE_READ_ABORT when
 * the message cannot be prepared or the file cannot be read (see
 * mailoauth_message_stream_error()).
 */
size_t mailoauth_message_read(char *buf, size_t size, size_t nitems,
  void *userdata);

/* Starts the stream again from the first byte, with the same Date,
 * Message-ID and boundary (for a retry on the same message).
 */
int mailoauth_message_rewind(struct mailoauth_message *msg);

/* errno of the failure that made mailoauth_message_read() abort; 0 if none. */
int mailoauth_message_stream_error(const struct mailoauth_message *msg);

/* The whole message in one malloc'd buffer (NUL-terminated, the NUL not
 * counted in *len), for small messages and tests.  The stream is rewound
 * before and after.
 */
int mailoauth_message_render(struct mailoauth_message *msg, char **out,
  size_t *len);

#endif /* MOD_MAILOAUTH_MESSAGE_H */
