/*
 * mod_mailoauth - the IMAP side of mail ingestion, over libcurl
 *
 * One session per ingestion task: one mailbox folder, one libcurl easy
 * handle kept across polls so that the logged-in connection (TLS, XOAUTH2)
 * is reused and a short poll interval stays cheap.  Every operation is one
 * libcurl request; when a reused connection turns out to be dead (the
 * server said BYE, closed it, or it went silent) the request is repeated
 * once on a new connection.
 *
 * How libcurl 7.88 carries IMAP, and what follows for this file:
 *
 *  - CURLOPT_CUSTOMREQUEST sends one command.  With a mailbox in the URL,
 *    libcurl first SELECTs it when this connection has not (its own
 *    bookkeeping, per connection), which is how every UID command here
 *    finds its folder selected, even on a new connection.  A URL with
 *    ";UIDVALIDITY=v" makes that SELECT fail when the folder's UIDVALIDITY
 *    is no longer v, so no UID command acts on another message than the
 *    caller meant.  libcurl reports its own failed SELECT as
 *    CURLE_LOGIN_DENIED and keeps the SELECT's untagged answers from the
 *    write function; so mailoauth_imap_select() sends "SELECT \"F\"" as a
 *    custom request on the bare server URL (EXAMINE would work the same
 *    way, read-only).
 *  - The custom request text is URL-decoded by libcurl: '%' is sent as
 *    "%25".  Control bytes are refused.
 *  - Every server line (greeting, login, untagged and tagged responses,
 *    libcurl's own SELECT) reaches CURLOPT_HEADERFUNCTION; the write
 *    function only gets the untagged lines libcurl thinks belong to the
 *    command.  So responses are parsed from the header function.
 *  - After any tagged NO or BAD, libcurl logs out and closes the
 *    connection: commands that may fail in the ordinary course (CREATE of
 *    a folder that exists) are avoided by asking first (LIST).
 *  - libcurl strips a response line longer than half its buffer, and fails
 *    a request whose response lines exceed 300 KB in all, counting the
 *    bytes read after each untagged line once more for every such line:
 *    searches go in UID ranges and size queries in small batches, so that
 *    neither can happen.
 *  - libcurl's URL fetch (imaps://host/FOLDER;UID=n) sends
 *    "UID FETCH n BODY[]", which sets \Seen before the task has decided
 *    anything.  A custom "UID FETCH n BODY.PEEK[]" does not work either:
 *    libcurl hands only the FETCH line to the write function, takes the
 *    literal's lines as response lines (clipped past half its buffer,
 *    counted against Debian's 300 KB cap on response lines since
 *    CVE-2023-38039, and a body line starting with the tag ends the
 *    command).  So message bodies come over a second connection of the
 *    session, which libcurl opens and logs in (CURLOPT_CONNECT_ONLY) and
 *    on which this file speaks IMAP itself: EXAMINE (read-only) and
 *    "UID FETCH n BODY.PEEK[]", the literal streamed to the sink by its
 *    announced byte count.  A fetch never changes a flag; the caller's
 *    after-action does.
 *  - Exchange ends a session when the token it logged in with expires
 *    ("* BYE Session invalidated - AccessTokenExpired").  With a token
 *    source (mailoauth_imap_set_token_source), every command first checks
 *    the expiry of the session's token and, within min(5 min, 10% of its
 *    lifetime) of it, takes a fresh token and logs in again; a BYE for an
 *    expired token all the same gets a fresh token and one more try.
 *
 * Folder names are UTF-8 (as an operator writes them); on the wire they are
 * modified UTF-7 (RFC 3501 5.1.3), quoted.  A name in plain ASCII that
 * uses '&' and is already valid modified UTF-7 ("Entw&APw-rfe", "R&-D") is
 * taken as is; "R&D", which is not, goes out as "R&-D".
 *
 * No ProFTPD headers.
 */

#ifndef MOD_MAILOAUTH_IMAP_H
#define MOD_MAILOAUTH_IMAP_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

typedef enum {
  MAILOAUTH_IMAP_OK = 0,
  MAILOAUTH_IMAP_TEMPFAIL,      /* network, timeout, BYE, server busy */
  MAILOAUTH_IMAP_AUTHFAIL,      /* the token was refused: refresh it once
                                 * (mailoauth_imap_set_token) and retry */
  MAILOAUTH_IMAP_MAILBOX,       /* the folder is missing or cannot be opened
                                 * (see mailoauth_imap_hint) */
  MAILOAUTH_IMAP_PERM,          /* the server refused this command */
  MAILOAUTH_IMAP_CONFIG,        /* TLS, certificate, URL or mechanism: a
                                 * person must look */
  MAILOAUTH_IMAP_GONE,          /* no such message (any more), or the
                                 * folder's UIDVALIDITY changed: select
                                 * again */
  MAILOAUTH_IMAP_TOOBIG         /* the message is larger than the cap */
} mailoauth_imap_status_t;

/* Capabilities that change what the session sends. */
#define MAILOAUTH_IMAP_CAP_IMAP4REV1    0x01
#define MAILOAUTH_IMAP_CAP_MOVE         0x02
#define MAILOAUTH_IMAP_CAP_UIDPLUS      0x04
#define MAILOAUTH_IMAP_CAP_IDLE         0x08
#define MAILOAUTH_IMAP_CAP_XOAUTH2      0x10
#define MAILOAUTH_IMAP_CAP_SASL_IR      0x20

/* Message flags. */
#define MAILOAUTH_IMAP_FLAG_SEEN        0x01
#define MAILOAUTH_IMAP_FLAG_DELETED     0x02
#define MAILOAUTH_IMAP_FLAG_FLAGGED     0x04
#define MAILOAUTH_IMAP_FLAG_ANSWERED    0x08
#define MAILOAUTH_IMAP_FLAG_DRAFT       0x10

/* mailoauth_imap_search() */
#define MAILOAUTH_IMAP_SEARCH_UNSEEN    0x01

/* Longest folder name accepted, in bytes on the wire. */
#define MAILOAUTH_IMAP_NAME_MAX         1024

struct mailoauth_imap_mailbox {
  uint32_t uidvalidity;
  uint32_t uidnext;             /* 0: the server did not say */
  uint32_t exists;              /* messages in the folder */
  int read_only;
};

struct mailoauth_imap_msginfo {
  uint32_t uid;
  uint64_t size;                /* RFC822.SIZE */
  unsigned flags;               /* MAILOAUTH_IMAP_FLAG_* */
};

/* ------------------------------------------------------------------------
 * The session.
 */

struct mailoauth_imap;

/* url: imaps://host:993/Folder (imap://host:143/... with STARTTLS
 * required); no path means INBOX.  user: the mailbox (XOAUTH2 user=).
 * ca_file: NULL for libcurl's default bundle.  NULL with errno EINVAL for
 * a URL that is not one, ENOMEM.
 */
struct mailoauth_imap *mailoauth_imap_create(const char *url,
  const char *user, const char *ca_file);
void mailoauth_imap_destroy(struct mailoauth_imap *s);

/* The access token for the next requests (copied; the old copy is wiped).
 * A new token means a new connection and login.
 */
int mailoauth_imap_set_token(struct mailoauth_imap *s, const char *token);

/* When the token last given expires (0: unknown, never checked).  Set it
 * after mailoauth_imap_set_token().
 */
void mailoauth_imap_set_token_expiry(struct mailoauth_imap *s,
  time_t expires);

/* Called before a command when the session's token is about to expire, or
 * after the server ended the session for an expired token: it should call
 * mailoauth_imap_set_token() and mailoauth_imap_set_token_expiry() with a
 * fresh one (force: the server said the old one is expired even if its
 * expiry said otherwise).  Returns 0, or -1 when there is none (the old
 * token is used; the command fails at the server).
 */
typedef int (*mailoauth_imap_token_fn)(struct mailoauth_imap *s, int force,
  void *arg);
void mailoauth_imap_set_token_source(struct mailoauth_imap *s,
  mailoauth_imap_token_fn fn, void *arg);

/* Whether the last failure came from an expired token (the server's BYE
 * AccessTokenExpired, or a connection lost after the token's expiry): a
 * fresh token (the source is asked with force) and one more try is the
 * cure, not a failure to report.
 */
int mailoauth_imap_token_expired(const struct mailoauth_imap *s);

/* 0 keeps a default: connect 10 s, each command 30 s, a fetch may take as
 * long as data keeps coming (aborted after 60 s below 1 byte/s), an idle
 * connection is reused for up to 118 s (longer risks middleboxes that drop
 * idle connections silently, which costs a timeout to notice).
 */
void mailoauth_imap_set_timeouts(struct mailoauth_imap *s,
  long connect_timeout_ms, long timeout_ms, long max_idle_s);

/* The next request opens a new connection. */
void mailoauth_imap_reconnect(struct mailoauth_imap *s);

/* The folder as configured (UTF-8), and as sent (modified UTF-7). */
const char *mailoauth_imap_folder(const struct mailoauth_imap *s);
const char *mailoauth_imap_folder_wire(const struct mailoauth_imap *s);

/* The outcome of the last operation in one line (server's words or
 * libcurl's reason; never a secret), and what to do about it (NULL when
 * there is nothing to say).
 */
const char *mailoauth_imap_reply(const struct mailoauth_imap *s);
const char *mailoauth_imap_hint(const struct mailoauth_imap *s);

/* Connections opened and requests made so far. */
unsigned long mailoauth_imap_connections(const struct mailoauth_imap *s);
unsigned long mailoauth_imap_requests(const struct mailoauth_imap *s);

/* SELECT the folder (read-write): UIDVALIDITY, UIDNEXT, EXISTS.  Also
 * what makes new mail (and other clients' flag changes) visible, so a poll
 * starts with it.  The operations below take UIDs, which mean something
 * only under the UIDVALIDITY a select told: they refuse to run before one
 * (PERM), and after the session saw the UIDVALIDITY change (GONE) until
 * the caller selected again and so learnt of it.
 */
mailoauth_imap_status_t mailoauth_imap_select(struct mailoauth_imap *s,
  struct mailoauth_imap_mailbox *mb);

/* UIDs >= from in ascending order (only unseen ones with
 * MAILOAUTH_IMAP_SEARCH_UNSEEN), at most max of them; *count says how many.
 * Searches UID ranges of 2000 up to the UIDNEXT of the last select, so mail
 * that came after that select waits for the next poll; from >= UIDNEXT (or
 * an empty folder) costs no request.  When *count == max there may be more:
 * search again from uids[max - 1] + 1.
 */
mailoauth_imap_status_t mailoauth_imap_search(struct mailoauth_imap *s,
  uint32_t from, unsigned flags, uint32_t *uids, size_t max, size_t *count);

/* RFC822.SIZE and flags of up to 1000 messages in one request.  info[i]
 * answers uids[i]; info[i].uid is 0 for a message that is not there.
 * *found counts the ones that are.
 */
mailoauth_imap_status_t mailoauth_imap_info(struct mailoauth_imap *s,
  const uint32_t *uids, size_t n, struct mailoauth_imap_msginfo *info,
  size_t *found);

/* Receives the message's bytes in order; -1 aborts the fetch. */
typedef int (*mailoauth_imap_sink_fn)(const char *data, size_t len,
  void *arg);

struct mailoauth_imap_fetched {
  uint64_t bytes;               /* given to the sink */
  uint64_t size;                /* RFC822.SIZE, asked for first */
  int was_seen;                 /* \Seen (the fetch does not change it) */
};

/* Streams message uid to the sink: first its size and flags (one request;
 * TOOBIG without fetching when it is over max_bytes, 0 for no cap), then
 * the body with BODY.PEEK[] on the session's fetch connection (bytes
 * exactly as stored, as many as the literal announced), aborted past
 * max_bytes.  No flag changes.  Unless OK, what the sink got is
 * incomplete: throw it away.
 */
mailoauth_imap_status_t mailoauth_imap_fetch(struct mailoauth_imap *s,
  uint32_t uid, uint64_t max_bytes, mailoauth_imap_sink_fn sink, void *arg,
  struct mailoauth_imap_fetched *out);

/* The message's header only (BODY.PEEK[HEADER], up to and with the empty
 * line that ends it; no size query first), for deciding whether the
 * message is wanted before downloading it.  TOOBIG when the header is
 * over max_bytes (nothing stored), GONE when the message is not there.
 */
mailoauth_imap_status_t mailoauth_imap_fetch_header(struct mailoauth_imap *s,
  uint32_t uid, uint64_t max_bytes, mailoauth_imap_sink_fn sink, void *arg);

/* The same into a file descriptor (written at its offset, EINTR-safe). */
mailoauth_imap_status_t mailoauth_imap_fetch_fd(struct mailoauth_imap *s,
  uint32_t uid, uint64_t max_bytes, int fd,
  struct mailoauth_imap_fetched *out);

/* UID STORE uid +FLAGS (\Seen), or -FLAGS with seen == 0.  GONE when the
 * message is not there.
 */
mailoauth_imap_status_t mailoauth_imap_set_seen(struct mailoauth_imap *s,
  uint32_t uid, int seen);

/* Moves uid to folder (UTF-8, or already modified UTF-7): UID MOVE when
 * the server offers MOVE, else UID COPY, UID STORE +FLAGS (\Deleted) and
 * UID EXPUNGE (plain EXPUNGE is never sent: it would remove every message
 * anyone marked \Deleted; without UIDPLUS the original stays marked
 * \Deleted).  With create, a missing target folder is created and the move
 * tried once more.  *new_uid (may be NULL) gets the UID in the target
 * folder when the server says (COPYUID), else 0.
 */
mailoauth_imap_status_t mailoauth_imap_move(struct mailoauth_imap *s,
  uint32_t uid, const char *folder, int create, uint32_t *new_uid);

/* UID STORE uid +FLAGS (\Deleted), then UID EXPUNGE uid (UIDPLUS; without
 * it the message stays marked \Deleted, see mailoauth_imap_move).
 */
mailoauth_imap_status_t mailoauth_imap_delete(struct mailoauth_imap *s,
  uint32_t uid);

/* CREATE folder; OK as well when it exists already. */
mailoauth_imap_status_t mailoauth_imap_create_folder(struct mailoauth_imap *s,
  const char *folder);

/* The server's capabilities after login (MAILOAUTH_IMAP_CAP_*), asked
 * once per session.
 */
mailoauth_imap_status_t mailoauth_imap_capabilities(struct mailoauth_imap *s,
  unsigned *caps);

const char *mailoauth_imap_status_name(mailoauth_imap_status_t status);

/* ------------------------------------------------------------------------
 * Pure functions: the response parser and folder names.
 */

#define MAILOAUTH_IMAP_HAVE_UIDVALIDITY 0x01
#define MAILOAUTH_IMAP_HAVE_UIDNEXT     0x02
#define MAILOAUTH_IMAP_HAVE_EXISTS      0x04
#define MAILOAUTH_IMAP_HAVE_CAPS        0x08
#define MAILOAUTH_IMAP_HAVE_SEARCH      0x10
#define MAILOAUTH_IMAP_HAVE_COPYUID     0x20
#define MAILOAUTH_IMAP_HAVE_STATUS      0x40
#define MAILOAUTH_IMAP_HAVE_TAGGED      0x80
#define MAILOAUTH_IMAP_HAVE_LIST        0x100

/* What the lines of one response said.  Zero it (or use
 * mailoauth_imap_resp_init), point the optional arrays at storage, then
 * feed it every line.
 */
struct mailoauth_imap_resp {
  unsigned have;                /* MAILOAUTH_IMAP_HAVE_* */

  /* SELECT/EXAMINE, or STATUS */
  uint32_t uidvalidity;
  uint32_t uidnext;
  uint32_t exists;
  int read_only;                /* [READ-ONLY] */

  /* SEARCH: UIDs within [search_lo, search_hi] go into uids (others are
   * dropped: "n:*" always matches the highest UID, even below n).
   */
  uint32_t search_lo;
  uint32_t search_hi;           /* 0: no upper bound */
  uint32_t *uids;               /* NULL: not kept */
  size_t max_uids;
  size_t n_uids;
  int uids_overflow;            /* more matched than max_uids */

  /* FETCH: messages whose UID is in want[] are answered in info[] (same
   * index).
   */
  const uint32_t *want;
  struct mailoauth_imap_msginfo *info;
  size_t n_want;

  unsigned caps;                /* MAILOAUTH_IMAP_CAP_* */

  /* LIST: whether a folder named list_name (wire form) was listed. */
  const char *list_name;
  int list_found;

  /* COPYUID of a single message (MOVE, COPY) */
  uint32_t copyuid_validity;
  uint32_t copyuid_uid;

  unsigned expunged;            /* "* n EXPUNGE" lines */
  unsigned fetches;             /* "* n FETCH" lines for wanted UIDs */

  int bye;                      /* "* BYE" not answered by a tagged OK */
  char bye_text[200];
  unsigned logouts;             /* "* BYE" + tagged OK: a LOGOUT's answer */

  /* The last tagged line: "OK", "NO" or "BAD", its response code (the
   * bracketed atom, e.g. "TRYCREATE") and its text.  A LOGOUT's tagged OK
   * (after "* BYE") leaves them as they were: libcurl logs out after a
   * failed command, and the failure is what counts.
   */
  char tagged_status[4];
  char tagged_code[32];
  char tagged_text[256];

  unsigned malformed;           /* recognised lines that did not parse */
};

void mailoauth_imap_resp_init(struct mailoauth_imap_resp *r);

/* Takes one server line (with or without its CRLF; no NUL needed).
 * Returns 0, or -1 when the line was one of ours but malformed (also
 * counted in r->malformed).  Never reads past len, never allocates.
 */
int mailoauth_imap_parse_line(struct mailoauth_imap_resp *r,
  const char *line, size_t len);

/* Whether a server line (CRLF or not) ends in a literal announcement
 * "{N}": 1 with *n = N, 0 when it does not, -1 for a number too large.
 * *is_body: the line is an untagged FETCH whose literal is the value of
 * BODY[] (the answer to BODY.PEEK[]; MAILOAUTH_IMAP_LITERAL_BODY) or of
 * BODY[HEADER] (MAILOAUTH_IMAP_LITERAL_HEADER), else 0.  Never reads past
 * len.
 */
#define MAILOAUTH_IMAP_LITERAL_BODY     1
#define MAILOAUTH_IMAP_LITERAL_HEADER   2

int mailoauth_imap_literal(const char *line, size_t len, uint64_t *n,
  int *is_body);

/* Modified UTF-7 (RFC 3501 5.1.3) from UTF-8.  -1 with errno EILSEQ for
 * invalid UTF-8 or control characters, ENAMETOOLONG when out is too small.
 */
int mailoauth_imap_utf7_encode(const char *utf8, char *out, size_t outlen);

/* UTF-8 from modified UTF-7.  -1 with errno EILSEQ when the input is not
 * valid modified UTF-7, ENAMETOOLONG.
 */
int mailoauth_imap_utf7_decode(const char *mutf7, char *out, size_t outlen);

/* The wire form of a folder name an operator wrote: kept when it is plain
 * ASCII with '&' and already valid modified UTF-7, else encoded.  -1 with
 * errno EINVAL for an empty name, EILSEQ, ENAMETOOLONG as for encoding.
 */
int mailoauth_imap_folder_name(const char *name, char *out, size_t outlen);

/* An IMAP quoted string ("..." with \ and " escaped) of a wire name.
 * -1 with errno EINVAL for a byte outside printable ASCII, ENAMETOOLONG
 * when out is too small.
 */
int mailoauth_imap_quote(const char *s, char *out, size_t outlen);

/* Copies n bytes of server text into dst as one printable line (control
 * characters become '?'), always NUL-terminated (imapresp.c).
 */
void mailoauth_imap_copy_text(char *dst, size_t dstlen, const char *src,
  size_t n);

#endif /* MOD_MAILOAUTH_IMAP_H */
