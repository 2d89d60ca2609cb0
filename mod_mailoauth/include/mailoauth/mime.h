/*
 * mod_mailoauth - streaming MIME parser for mail-to-folder ingestion
 *
 * A message is pushed through the parser in chunks of any size (an IMAP
 * FETCH streams it from the network); the parser reports every entity of the
 * MIME tree to callbacks and hands over the decoded body of the entities the
 * caller asked for.  Only one header block at a time is buffered, and that
 * with a cap, so a message with a gigabyte attachment is parsed in constant
 * memory: the attachment's decoded bytes go straight to the caller.
 *
 * Every part_begin() that returns is matched by exactly one part_end() for
 * the same part, in nesting order, whatever the input and however parsing
 * stops (limit, broken input, a callback asking to stop), so callers can
 * open a file at the beginning and always close it at the end.
 */

#ifndef MOD_MAILOAUTH_MIME_H
#define MOD_MAILOAUTH_MIME_H

#include <stddef.h>
#include <stdint.h>

/* Defaults for the limits; a zero field in mailoauth_mime_limits means the
 * default, UINT64_MAX / UINT_MAX / SIZE_MAX mean (practically) unlimited.
 */
#define MAILOAUTH_MIME_DEFAULT_MAX_HEADER       (256 * 1024)
#define MAILOAUTH_MIME_DEFAULT_MAX_PARTS        2000
#define MAILOAUTH_MIME_DEFAULT_MAX_DEPTH        32
#define MAILOAUTH_MIME_DEFAULT_MAX_PART_BYTES   ((uint64_t) 1 << 30)
#define MAILOAUTH_MIME_DEFAULT_MAX_TOTAL_BYTES  ((uint64_t) 2 << 30)

/* max_depth is clamped to this: every attached message descended into adds
 * a level of nested calls.
 */
#define MAILOAUTH_MIME_MAX_DEPTH_LIMIT          128

/* Longest boundary accepted (RFC 2046 allows 70); a multipart with a longer
 * one is treated as a single opaque part.
 */
#define MAILOAUTH_MIME_MAX_BOUNDARY             256

/* Decoded header-derived strings (file name, subject...) are cut to this. */
#define MAILOAUTH_MIME_MAX_FIELD                8192

struct mailoauth_mime_limits {
  size_t max_header_bytes;      /* one header block (a message's or a part's) */
  unsigned int max_parts;       /* entities in the whole message, any level */
  unsigned int max_depth;       /* nesting; the top-level message is depth 0 */
  uint64_t max_part_bytes;      /* decoded bytes delivered for one part */
  uint64_t max_total_bytes;     /* decoded bytes delivered in all */
};

/* The byte limits count what reaches part_data: skipped parts cost nothing
 * (they are not even decoded).  An attached message received as .eml and
 * descended into counts toward max_total_bytes through its parts only, and
 * if parsing stops inside it, how much of its .eml was delivered before the
 * stop may vary with the chunking (its part_end status says it is cut).
 * Everything else reported is the same however the input is chunked.
 */

/* Fills in the defaults. */
void mailoauth_mime_limits_init(struct mailoauth_mime_limits *limits);

/* Content-Transfer-Encoding */
#define MAILOAUTH_MIME_ENC_7BIT         0
#define MAILOAUTH_MIME_ENC_8BIT         1
#define MAILOAUTH_MIME_ENC_BINARY       2
#define MAILOAUTH_MIME_ENC_QP           3
#define MAILOAUTH_MIME_ENC_BASE64       4
#define MAILOAUTH_MIME_ENC_UNKNOWN      5   /* passed through as binary */
#define MAILOAUTH_MIME_ENC_UUENCODE     6   /* x-uuencode, uuencode, x-uue */

/* Content-Disposition; unknown types count as attachment (RFC 2183 2.8). */
#define MAILOAUTH_MIME_DISP_NONE        0
#define MAILOAUTH_MIME_DISP_INLINE      1
#define MAILOAUTH_MIME_DISP_ATTACHMENT  2

/* Headers of one message: the top-level one, or one attached as
 * message/rfc822 that the caller descended into.  All strings are UTF-8,
 * never NULL ("" when the header is absent), with control characters turned
 * into spaces.
 */
struct mailoauth_mime_message {
  const char *subject;          /* RFC 2047 decoded */
  const char *from;             /* RFC 2047 decoded, display form */
  const char *from_addr;        /* the first address alone (addr-spec) */
  const char *recipients;       /* addr-specs of To, Cc and Delivered-To,
                                 * lowercased, comma-separated */
  const char *date;             /* as sent */
  const char *message_id;       /* without the angle brackets */
  const char *auth_results;     /* the first MAILOAUTH_MIME_MAX_AUTHRES
                                 * Authentication-Results values, top-most
                                 * first, unfolded, each ending in '\n';
                                 * one longer than MAILOAUTH_MIME_AUTHRES_LEN
                                 * is replaced by "(too long)" */
};

#define MAILOAUTH_MIME_MAX_AUTHRES      8
#define MAILOAUTH_MIME_AUTHRES_LEN      4096

/* One entity of the MIME tree.  The same pointer is passed to part_begin,
 * part_data and part_end of that entity and stays valid until part_end
 * returns; strings are NUL-terminated UTF-8 (a NUL inside a decoded value
 * becomes U+FFFD so that "a.pdf\0.exe" cannot pass for "a.pdf").
 */
struct mailoauth_mime_part {
  unsigned int depth;           /* 0 for the top-level message */
  unsigned int index;           /* order of appearance, 0 = top-level */
  const char *section;          /* IMAP part number: "1", "2.1"; "" for a
                                 * multipart top-level message */
  const char *content_type;     /* lowercased "type/subtype" */
  const char *charset;          /* lowercased, "" when none */
  int disposition;              /* MAILOAUTH_MIME_DISP_* */
  const char *filename;         /* decoded; NULL when the part has none */
  const char *content_id;       /* without <>; NULL when none */
  int encoding;                 /* MAILOAUTH_MIME_ENC_* */
  const char *encoding_name;    /* lowercased as given, "" when absent */
  uint64_t size_hint;           /* Content-Disposition size=, 0 if absent */
  int is_multipart;             /* children follow; never has a body */
  int is_message;               /* message/rfc822 or message/global */
  unsigned int in_message;      /* attached messages enclosing this part */
  const struct mailoauth_mime_message *message;  /* the (innermost) message
                                 * this part belongs to; for the root of an
                                 * attached message, that message */
};

/* part_begin result, a bit mask. */
#define MAILOAUTH_MIME_SKIP     0x0
#define MAILOAUTH_MIME_BODY     0x1 /* deliver the decoded body to part_data;
                                     * for a message, the .eml bytes */
#define MAILOAUTH_MIME_DESCEND  0x2 /* for a message: parse it, reporting its
                                     * parts (may be combined with BODY) */

/* part_end status, a bit mask; 0 means complete. */
#define MAILOAUTH_MIME_ST_COMPLETE      0x0
#define MAILOAUTH_MIME_ST_TRUNCATED     0x1 /* parsing stopped at a limit */
#define MAILOAUTH_MIME_ST_BAD_ENCODING  0x2 /* broken base64 or uuencode (garbage
                                             * skipped, truncated quantum) */
#define MAILOAUTH_MIME_ST_UNTERMINATED  0x4 /* its closing boundary (or its
                                             * parent's) never came */
#define MAILOAUTH_MIME_ST_ABORTED       0x8 /* a callback or memory failure
                                             * stopped parsing */

/* Error codes: fatal ones stop parsing, warnings are reported and parsing
 * goes on.
 */
#define MAILOAUTH_MIME_OK                   0
#define MAILOAUTH_MIME_E_HEADER_TOO_BIG     1
#define MAILOAUTH_MIME_E_TOO_MANY_PARTS     2
#define MAILOAUTH_MIME_E_TOO_DEEP           3
#define MAILOAUTH_MIME_E_PART_TOO_BIG       4
#define MAILOAUTH_MIME_E_TOTAL_TOO_BIG      5
#define MAILOAUTH_MIME_E_ABORTED            6   /* a callback returned -1 */
#define MAILOAUTH_MIME_E_NOMEM              7
#define MAILOAUTH_MIME_W_BAD_HEADER_LINE    100 /* a line that is not a header
                                                 * ended the header block */
#define MAILOAUTH_MIME_W_BAD_BASE64         101
#define MAILOAUTH_MIME_W_UNKNOWN_ENCODING   102
#define MAILOAUTH_MIME_W_NO_BOUNDARY        103 /* multipart without a usable
                                                 * boundary: kept as one part */
#define MAILOAUTH_MIME_W_UNTERMINATED       104 /* a multipart never closed */
#define MAILOAUTH_MIME_W_BAD_CHARSET        105 /* unknown charset or invalid
                                                 * bytes replaced */
#define MAILOAUTH_MIME_W_BAD_UUENCODE       106 /* no "begin" line or broken
                                                 * lines skipped */

#define MAILOAUTH_MIME_IS_FATAL(code)   ((code) > 0 && (code) < 100)

/* Callbacks run inside mailoauth_mime_feed()/_finish() and must not call
 * back into the same parser.
 */
struct mailoauth_mime_callbacks {
  /* Returns MAILOAUTH_MIME_BODY / _DESCEND bits (ignored for multiparts), or
   * -1 to stop parsing (E_ABORTED); on -1 no part_end follows for this part.
   */
  int (*part_begin)(const struct mailoauth_mime_part *part, void *arg);

  /* Decoded body bytes, in as many calls as it takes.  Returns 0 to go on,
   * 1 to receive no more of this part, -1 to stop parsing (E_ABORTED).
   */
  int (*part_data)(const struct mailoauth_mime_part *part,
    const unsigned char *data, size_t len, void *arg);

  /* status: MAILOAUTH_MIME_ST_* bits.  -1 stops parsing (E_ABORTED). */
  int (*part_end)(const struct mailoauth_mime_part *part, unsigned int status,
    void *arg);

  /* Warnings, and the fatal error once when it happens.  part is the part
   * concerned, or NULL.
   */
  void (*error)(int code, const struct mailoauth_mime_part *part, void *arg);

  void *arg;
};

struct mailoauth_mime;

/* limits may be NULL (defaults); both structures are copied.  Returns NULL
 * with errno ENOMEM.
 */
struct mailoauth_mime *mailoauth_mime_create(
  const struct mailoauth_mime_limits *limits,
  const struct mailoauth_mime_callbacks *callbacks);

/* Pushes the next bytes of the message.  Returns 0, or -1 once a fatal error
 * has stopped parsing (errno EMSGSIZE for the header block, EFBIG for the
 * decoded sizes, ELOOP for depth, EMLINK for the part count, ECANCELED for a
 * callback, ENOMEM; EINVAL after finish); mailoauth_mime_error() tells
 * which.  All open parts have been ended by then.
 */
int mailoauth_mime_feed(struct mailoauth_mime *p, const void *data,
  size_t len);

/* End of the message: ends every open part.  Returns 0 or -1 as above. */
int mailoauth_mime_finish(struct mailoauth_mime *p);

/* MAILOAUTH_MIME_OK or the fatal code that stopped parsing. */
int mailoauth_mime_error(const struct mailoauth_mime *p);

const char *mailoauth_mime_strerror(int code);

/* Frees the parser.  Makes no callbacks: parts still open are not ended
 * (call mailoauth_mime_finish() first for that).
 */
void mailoauth_mime_destroy(struct mailoauth_mime *p);

/* Helpers, also used by the parser.  All return malloc()ed NUL-terminated
 * UTF-8 (NUL bytes of the decoded value replaced by U+FFFD), or NULL with
 * errno (ENOMEM; ENOENT for a missing parameter).
 */

/* Converts text in charset to UTF-8; invalid sequences become U+FFFD.
 * Common labels are mapped to the superset mailers actually use (latin1 to
 * windows-1252, gb2312 to GB18030, shift_jis to CP932, ks_c_5601-1987 to
 * CP949).  A NULL, empty, ASCII or unknown charset means: UTF-8 if the bytes
 * are valid UTF-8, else windows-1252.  *bad (may be NULL) is set to 1 when
 * the charset was unknown or bytes had to be replaced.
 */
char *mailoauth_mime_to_utf8(const char *charset, const char *in, size_t len,
  int *bad);

/* Decodes an unstructured header value: RFC 2047 encoded words (also inside
 * quoted strings and words, as real mailers need; whitespace between
 * adjacent encoded words dropped; bytes of adjacent words in one charset
 * joined before conversion, so a character split across words survives) and
 * raw 8-bit text (UTF-8, else fallback_charset, else windows-1252).
 */
char *mailoauth_mime_decode_header(const char *value, size_t len,
  const char *fallback_charset, int *bad);

/* Value of parameter name (case-insensitive) of a structured header value
 * such as "attachment; filename*0*=UTF-8''%E2%82%AC; filename*1=.pdf",
 * with RFC 2045 quoting and comments, RFC 2231 charsets and continuations
 * (those win over a plain parameter of the same name) and RFC 2047 words.
 */
char *mailoauth_mime_header_param(const char *value, size_t len,
  const char *name, const char *fallback_charset, int *bad);

/* Loads the character set converters mail commonly needs, for a process
 * about to lose the right to open files (iconv loads them on first use);
 * a charset not among them then converts as an unknown one.  Returns how
 * many were loaded.
 */
int mailoauth_mime_preload(void);

/* The cid: references of an HTML body (RFC 2392), collected while it
 * streams through, so that a part whose Content-ID the body shows (a
 * signature logo in multipart/mixed) can be told from a file.  Bounded:
 * at most MAILOAUTH_MIME_CIDS_MAX distinct ids of at most
 * MAILOAUTH_MIME_CID_LEN bytes (after %-decoding); longer ones and those
 * beyond the count are not kept.
 */
#define MAILOAUTH_MIME_CIDS_MAX         256
#define MAILOAUTH_MIME_CID_LEN          256

struct mailoauth_mime_cids {
  unsigned int n;
  char ids[MAILOAUTH_MIME_CIDS_MAX][MAILOAUTH_MIME_CID_LEN + 1];

  /* The scanner's state between chunks. */
  unsigned int matched;         /* bytes of "cid:" seen */
  int collecting;
  int prev;                     /* the byte before, -1 at the start */
  size_t rawlen;
  char raw[3 * MAILOAUTH_MIME_CID_LEN + 1];
  int overflow;
};

void mailoauth_mime_cids_init(struct mailoauth_mime_cids *c);

/* Scans the next bytes of an HTML body. */
void mailoauth_mime_cids_feed(struct mailoauth_mime_cids *c,
  const unsigned char *p, size_t len);

/* The body ended: a reference cut by its end counts. */
void mailoauth_mime_cids_end(struct mailoauth_mime_cids *c);

/* Whether content_id (without <>, NULL: none) was referenced. */
int mailoauth_mime_cids_has(const struct mailoauth_mime_cids *c,
  const char *content_id);

#endif /* MOD_MAILOAUTH_MIME_H */
