/*
 * mod_mailoauth - MIME parsing in a process of its own
 *
 * Mail is hostile input.  The worker holds the access and refresh tokens,
 * so the MIME parser (mime.h) runs in the parser process ("mailoauthd
 * parser"), which holds nothing worth stealing, and the worker only reads
 * what the parser tells it, checking every field.  One SOCK_SEQPACKET
 * socket between them, imsg framing (imsg.h):
 *
 *   worker -> parser  PARSE       fds: the message (read-only; a file,
 *                                 or a pipe fed while it is fetched),
 *                                 the directory for temporary files
 *   parser -> worker  FIELD       u32 field, str      (before part 0: the
 *                                 message's headers, one message each)
 *   parser -> worker  PART_BEGIN  the part (see mimeproc.c); waits for
 *   worker -> parser  REPLY       u32 MAILOAUTH_MIME_SKIP / _BODY,
 *                                 _DESCEND (an attached message: its
 *                                 parts follow, numbered on), or
 *                                 MAILOAUTH_MIMEPROC_STOP
 *   parser -> worker  PART_END    u32 index, u32 status, u64 size,
 *                                 u32 errno; fd: the decoded body, an
 *                                 unlinked file (none when errno != 0)
 *   parser -> worker  ERROR       u32 code, u32 part index (~0: none)
 *   parser -> worker  DONE        u32 result (0, 1 for -1), u32 code
 *
 * PART_END comes only for a part answered with BODY, and nothing else
 * comes between that part's PART_BEGIN and its PART_END but ERRORs.
 * Strings are u32 length + bytes, ~0 for NULL; integers big-endian.
 *
 * No ProFTPD headers.
 */

#ifndef MOD_MAILOAUTH_MIMEPROC_H
#define MOD_MAILOAUTH_MIMEPROC_H

#include "mailoauth/mime.h"

#include <stddef.h>
#include <stdint.h>

#define MAILOAUTH_MIMEPROC_PARSE        1
#define MAILOAUTH_MIMEPROC_FIELD        2
#define MAILOAUTH_MIMEPROC_PART_BEGIN   3
#define MAILOAUTH_MIMEPROC_REPLY        4
#define MAILOAUTH_MIMEPROC_PART_END     5
#define MAILOAUTH_MIMEPROC_ERROR        6
#define MAILOAUTH_MIMEPROC_DONE         7

/* REPLY: stop parsing (part_begin returned -1). */
#define MAILOAUTH_MIMEPROC_STOP         0xffffffffU

/* FIELD numbers: struct mailoauth_mime_message in order. */
#define MAILOAUTH_MIMEPROC_F_SUBJECT      0
#define MAILOAUTH_MIMEPROC_F_FROM         1
#define MAILOAUTH_MIMEPROC_F_FROM_ADDR    2
#define MAILOAUTH_MIMEPROC_F_RECIPIENTS   3
#define MAILOAUTH_MIMEPROC_F_DATE         4
#define MAILOAUTH_MIMEPROC_F_MESSAGE_ID   5
#define MAILOAUTH_MIMEPROC_F_AUTH_RESULTS 6
#define MAILOAUTH_MIMEPROC_NFIELDS        7

/* Longest string of a part or a field on the wire.  The parser cuts a
 * longer one (a recipient list at its last whole address); the worker
 * refuses it.  A PART_BEGIN stays within MAILOAUTH_IMSG_MAX.
 */
#define MAILOAUTH_MIMEPROC_MAX_STR      MAILOAUTH_MIME_MAX_FIELD
#define MAILOAUTH_MIMEPROC_MAX_FIELDSTR (60 * 1024)

/* The decoded body of a part answered with BODY. */
struct mailoauth_mimeproc_body {
  int fd;                       /* a regular, unlinked file, read from
                                 * offset 0; -1 when error != 0.  Closed
                                 * by the client after part_end */
  uint64_t size;                /* its size, as fstat() gives it */
  int error;                    /* the parser's errno writing it, or 0 */
};

/* The callbacks of mime.h, with the body as a file at the end instead of
 * part_data calls.  part_end comes only for parts answered with BODY.
 */
struct mailoauth_mimeproc_callbacks {
  int (*part_begin)(const struct mailoauth_mime_part *part, void *arg);
  int (*part_end)(const struct mailoauth_mime_part *part, unsigned int status,
    const struct mailoauth_mimeproc_body *body, void *arg);
  void (*error)(int code, const struct mailoauth_mime_part *part, void *arg);
  void *arg;
};

/* Client results. */
#define MAILOAUTH_MIMEPROC_OK           0   /* parsed to the end */
#define MAILOAUTH_MIMEPROC_STOPPED      -1  /* a limit of the parser or a
                                             * callback stopped it */
#define MAILOAUTH_MIMEPROC_BROKEN       -2  /* the parser is gone (errno
                                             * EPIPE), misbehaved (EPROTO)
                                             * or the socket failed: it
                                             * must be replaced */

/* Has the parser at the other end of sock parse the message in msg_fd,
 * writing decoded bodies into tmpdir_fd, and reports to cb.  *mime_error
 * (may be NULL) gets the fatal MAILOAUTH_MIME_E_* code the parser stopped
 * at, or MAILOAUTH_MIME_OK.  On BROKEN, part_end has been called with a
 * body error (EPIPE/EPROTO, fd -1) for a part left open.
 */
int mailoauth_mimeproc_parse(int sock, int msg_fd, int tmpdir_fd,
  const struct mailoauth_mimeproc_callbacks *cb, int *mime_error);

/* The same in steps, for a message fed to the parser while it is fetched
 * (msg_fd the read end of a pipe): begin sends PARSE; pump handles what
 * the parser sent, waiting at most timeout_ms for it (1: more to come,
 * 0: the parser is done, -1: it broke, errno says why); finish waits for
 * the end, returns what mailoauth_mimeproc_parse() returns and frees the
 * run (NULL from begin, out of memory, gives STOPPED).
 */
struct mailoauth_mimeproc_run;

struct mailoauth_mimeproc_run *mailoauth_mimeproc_begin(int sock,
  int msg_fd, int tmpdir_fd, const struct mailoauth_mimeproc_callbacks *cb);
int mailoauth_mimeproc_pump(struct mailoauth_mimeproc_run *r,
  int timeout_ms);
int mailoauth_mimeproc_finish(struct mailoauth_mimeproc_run *r,
  int *mime_error);

/* The parser's side: serves PARSE requests on sock until EOF (returns 0)
 * or a failure of the socket (-1).  limits may be NULL (defaults).
 */
int mailoauth_mimeproc_serve(int sock,
  const struct mailoauth_mime_limits *limits);

/* The client's pieces, for the fuzzer and the tests (mailoauth_mimeproc_
 * parse() is a loop over them).
 */
struct mailoauth_imsg;
struct mailoauth_mimeproc_client;

struct mailoauth_mimeproc_client *mailoauth_mimeproc_client_create(int sock,
  const struct mailoauth_mimeproc_callbacks *cb);

/* Checks one message from the parser and acts on it (callbacks, REPLY on
 * sock); closes the descriptors it brought.  1: more to come, 0: DONE
 * came, -1 with errno (EPROTO: a message the protocol does not allow; the
 * parser must be replaced).
 */
int mailoauth_mimeproc_client_msg(struct mailoauth_mimeproc_client *c,
  struct mailoauth_imsg *msg);

/* After DONE: a MAILOAUTH_MIMEPROC_* result (BROKEN before DONE). */
int mailoauth_mimeproc_client_result(struct mailoauth_mimeproc_client *c,
  int *mime_error);

void mailoauth_mimeproc_client_destroy(struct mailoauth_mimeproc_client *c);

/* Checks and decodes one PART_BEGIN payload as the client does.  Fills
 * part (its strings point into store, of storesz >= len + 8 bytes) and
 * returns 0, or -1 with errno EPROTO.
 */
int mailoauth_mimeproc_decode_part(const unsigned char *data, size_t len,
  struct mailoauth_mime_part *part, char *store, size_t storesz);

#endif /* MOD_MAILOAUTH_MIMEPROC_H */
