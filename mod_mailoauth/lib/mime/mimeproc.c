/*
 * mod_mailoauth - MIME parsing in a process of its own (both sides)
 *
 * This program is free software; you can redistribute it and/or modify
 * it under the terms of the GNU General Public License as published by
 * the Free Software Foundation; either version 2 of the License, or
 * (at your option) any later version.
 */

#include "mailoauth/io.h"
#include "mailoauth/mimeproc.h"
#include "mailoauth/imsg.h"
#include "mailoauth/spool.h"
#include "mailoauth/yield.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

/* PART_BEGIN flags */
#define MIMEPROC_FL_MULTIPART   0x1
#define MIMEPROC_FL_MESSAGE     0x2

#define MIMEPROC_NO_PART        0xffffffffU
#define MIMEPROC_NULL_STR       0xffffffffU

/* Bytes read from the message at a time, as the worker did. */
#define MIMEPROC_READ_CHUNK     (64 * 1024)

/* The decoder hands over a few hundred bytes at a time: written as they
 * come, a 1 GiB attachment would cost over a million write() calls.
 */
#define MIMEPROC_WRITE_BUF      (256 * 1024)

/* The worker gives up on a parser that says nothing for this long (a
 * large part on a slow disk takes a while between its begin and end).
 */
#define MIMEPROC_TIMEOUT_MS     (10 * 60 * 1000)

/* Payload encoding
 */

struct mimeproc_out {
  unsigned char buf[MAILOAUTH_IMSG_MAX];
  size_t len;
};

static void mimeproc_put32(struct mimeproc_out *o, uint32_t v) {
  if (o->len + 4 <= sizeof(o->buf)) {
    o->buf[o->len++] = (unsigned char) (v >> 24);
    o->buf[o->len++] = (unsigned char) (v >> 16);
    o->buf[o->len++] = (unsigned char) (v >> 8);
    o->buf[o->len++] = (unsigned char) v;
  }
}

static void mimeproc_put64(struct mimeproc_out *o, uint64_t v) {
  mimeproc_put32(o, (uint32_t) (v >> 32));
  mimeproc_put32(o, (uint32_t) v);
}

/* Cuts s to at most max bytes without splitting a UTF-8 sequence. */
static size_t mimeproc_cut(const char *s, size_t len, size_t max) {
  if (len <= max) {
    return len;
  }
  len = max;
  while (len > 0 && ((unsigned char) s[len] & 0xc0) == 0x80) {
    len--;
  }
  return len;
}

static void mimeproc_put_str(struct mimeproc_out *o, const char *s,
    size_t max) {
  size_t len;

  if (s == NULL) {
    mimeproc_put32(o, MIMEPROC_NULL_STR);
    return;
  }
  len = mimeproc_cut(s, strlen(s), max);
  if (o->len + 4 + len > sizeof(o->buf)) {
    len = 0;
  }
  mimeproc_put32(o, (uint32_t) len);
  memcpy(o->buf + o->len, s, len);
  o->len += len;
}

struct mimeproc_in {
  const unsigned char *p;
  size_t len, off;
  int bad;
};

static uint32_t mimeproc_get32(struct mimeproc_in *in) {
  const unsigned char *p;

  if (in->bad || in->len - in->off < 4) {
    in->bad = 1;
    return 0;
  }
  p = in->p + in->off;
  in->off += 4;
  return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) |
    ((uint32_t) p[2] << 8) | p[3];
}

static uint64_t mimeproc_get64(struct mimeproc_in *in) {
  uint64_t hi = mimeproc_get32(in);

  return (hi << 32) | mimeproc_get32(in);
}

/* A string of at most max bytes with no NUL, copied NUL-terminated into
 * *store (advanced); NULL for the absent string when nullable.
 */
static const char *mimeproc_get_str(struct mimeproc_in *in, size_t max,
    int nullable, char **store, char *store_end) {
  uint32_t len = mimeproc_get32(in);
  char *s;

  if (in->bad) {
    return NULL;
  }
  if (len == MIMEPROC_NULL_STR) {
    if (!nullable) {
      in->bad = 1;
    }
    return NULL;
  }
  if (len > max ||
      in->len - in->off < len ||
      (size_t) (store_end - *store) < (size_t) len + 1 ||
      memchr(in->p + in->off, '\0', len) != NULL) {
    in->bad = 1;
    return NULL;
  }

  s = *store;
  memcpy(s, in->p + in->off, len);
  s[len] = '\0';
  *store += len + 1;
  in->off += len;
  return s;
}

int mailoauth_mimeproc_decode_part(const unsigned char *data, size_t len,
    struct mailoauth_mime_part *part, char *store, size_t storesz) {
  struct mimeproc_in in;
  char *end = store + storesz;
  uint32_t flags, disp, enc;

  memset(part, 0, sizeof(*part));
  memset(&in, 0, sizeof(in));
  in.p = data;
  in.len = len;

  part->index = mimeproc_get32(&in);
  part->depth = mimeproc_get32(&in);
  flags = mimeproc_get32(&in);
  disp = mimeproc_get32(&in);
  enc = mimeproc_get32(&in);
  part->in_message = mimeproc_get32(&in);
  part->size_hint = mimeproc_get64(&in);
  part->section = mimeproc_get_str(&in, MAILOAUTH_MIMEPROC_MAX_STR, 0,
    &store, end);
  part->content_type = mimeproc_get_str(&in, MAILOAUTH_MIMEPROC_MAX_STR, 0,
    &store, end);
  part->charset = mimeproc_get_str(&in, MAILOAUTH_MIMEPROC_MAX_STR, 0,
    &store, end);
  part->filename = mimeproc_get_str(&in, MAILOAUTH_MIMEPROC_MAX_STR, 1,
    &store, end);
  part->content_id = mimeproc_get_str(&in, MAILOAUTH_MIMEPROC_MAX_STR, 1,
    &store, end);
  part->encoding_name = mimeproc_get_str(&in, MAILOAUTH_MIMEPROC_MAX_STR, 0,
    &store, end);

  if (in.bad ||
      in.off != in.len ||
      (flags & ~(uint32_t) (MIMEPROC_FL_MULTIPART|MIMEPROC_FL_MESSAGE)) != 0 ||
      flags == (MIMEPROC_FL_MULTIPART|MIMEPROC_FL_MESSAGE) ||
      disp > MAILOAUTH_MIME_DISP_ATTACHMENT ||
      enc > MAILOAUTH_MIME_ENC_UUENCODE ||
      part->depth > MAILOAUTH_MIME_MAX_DEPTH_LIMIT ||
      part->in_message > part->depth ||
      (part->index == 0) != (part->depth == 0) ||
      part->content_type[0] == '\0') {
    memset(part, 0, sizeof(*part));
    errno = EPROTO;
    return -1;
  }

  part->is_multipart = (flags & MIMEPROC_FL_MULTIPART) != 0;
  part->is_message = (flags & MIMEPROC_FL_MESSAGE) != 0;
  part->disposition = (int) disp;
  part->encoding = (int) enc;
  return 0;
}

/* The parser's side
 */

struct mimeproc_server {
  int sock;
  int dirfd;
  int failed;                   /* the socket failed: stop */

  unsigned int body_index;
  int body_open;
  int out_fd;
  int out_error;
  uint64_t out_bytes;
  unsigned char *wbuf;
  size_t wlen;

  struct mimeproc_out out;
  unsigned char in[MAILOAUTH_IMSG_HDR + 64];
};

static int mimeproc_send(struct mimeproc_server *s, uint32_t type,
    const int *fds, int nfds) {
  if (s->failed ||
      mailoauth_imsg_send(s->sock, type, 0, s->out.buf, s->out.len, fds,
        nfds) < 0) {
    s->failed = 1;
    return -1;
  }
  return 0;
}

/* An anonymous file in the worker's temporary directory: nothing to clean
 * up whoever dies.
 */
static int mimeproc_tmpfile(int dirfd) {
  unsigned char rnd[8];
  char name[40];
  int fd, i;

#ifdef O_TMPFILE
  fd = openat(dirfd, ".", O_TMPFILE|O_RDWR|O_CLOEXEC, 0600);
  if (fd >= 0 ||
      (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)) {
    return fd;
  }
#endif

  for (i = 0; i < 16; i++) {
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t) sizeof(rnd)) {
      return -1;
    }
    snprintf(name, sizeof(name), "parser.%02x%02x%02x%02x%02x%02x%02x%02x",
      rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    fd = openat(dirfd, name, O_CREAT|O_EXCL|O_RDWR|O_NOFOLLOW|O_CLOEXEC,
      0600);
    if (fd >= 0) {
      (void) unlinkat(dirfd, name, 0);
      return fd;
    }
    if (errno != EEXIST) {
      return -1;
    }
  }
  errno = EEXIST;
  return -1;
}

static void mimeproc_send_fields(struct mimeproc_server *s,
    const struct mailoauth_mime_message *msg) {
  const char *v[MAILOAUTH_MIMEPROC_NFIELDS];
  uint32_t i;

  if (msg == NULL) {
    return;
  }
  v[MAILOAUTH_MIMEPROC_F_SUBJECT] = msg->subject;
  v[MAILOAUTH_MIMEPROC_F_FROM] = msg->from;
  v[MAILOAUTH_MIMEPROC_F_FROM_ADDR] = msg->from_addr;
  v[MAILOAUTH_MIMEPROC_F_RECIPIENTS] = msg->recipients;
  v[MAILOAUTH_MIMEPROC_F_DATE] = msg->date;
  v[MAILOAUTH_MIMEPROC_F_MESSAGE_ID] = msg->message_id;
  v[MAILOAUTH_MIMEPROC_F_AUTH_RESULTS] = msg->auth_results;

  for (i = 0; i < MAILOAUTH_MIMEPROC_NFIELDS; i++) {
    size_t len;

    if (v[i] == NULL || v[i][0] == '\0') {
      continue;
    }

    len = strlen(v[i]);
    if (len > MAILOAUTH_MIMEPROC_MAX_FIELDSTR) {
      /* A list is cut after its last whole item: half an address (or
       * half a verdict) could read as another one.
       */
      int sep = i == MAILOAUTH_MIMEPROC_F_RECIPIENTS ? ',' :
        i == MAILOAUTH_MIMEPROC_F_AUTH_RESULTS ? '\n' : 0;

      len = mimeproc_cut(v[i], len, MAILOAUTH_MIMEPROC_MAX_FIELDSTR);
      if (sep != 0) {
        while (len > 0 && v[i][len - 1] != sep) {
          len--;
        }
        if (sep == ',' && len > 0) {
          len--;
        }
      }
    }

    s->out.len = 0;
    mimeproc_put32(&s->out, i);
    mimeproc_put32(&s->out, (uint32_t) len);
    memcpy(s->out.buf + s->out.len, v[i], len);
    s->out.len += len;
    (void) mimeproc_send(s, MAILOAUTH_MIMEPROC_FIELD, NULL, 0);
  }
}

static int mimeproc_srv_begin(const struct mailoauth_mime_part *part,
    void *arg) {
  struct mimeproc_server *s = arg;
  struct mailoauth_imsg msg;
  uint32_t flags = 0, reply;
  int res;

  if (s->failed) {
    return -1;
  }

  if (part->index == 0) {
    mimeproc_send_fields(s, part->message);
  }

  if (part->is_multipart) {
    flags |= MIMEPROC_FL_MULTIPART;
  } else if (part->is_message) {
    flags |= MIMEPROC_FL_MESSAGE;
  }

  s->out.len = 0;
  mimeproc_put32(&s->out, part->index);
  mimeproc_put32(&s->out, part->depth);
  mimeproc_put32(&s->out, flags);
  mimeproc_put32(&s->out, (uint32_t) part->disposition);
  mimeproc_put32(&s->out, (uint32_t) part->encoding);
  mimeproc_put32(&s->out, part->in_message);
  mimeproc_put64(&s->out, part->size_hint);
  mimeproc_put_str(&s->out, part->section ? part->section : "",
    MAILOAUTH_MIMEPROC_MAX_STR);
  mimeproc_put_str(&s->out, part->content_type ? part->content_type :
    "application/octet-stream", MAILOAUTH_MIMEPROC_MAX_STR);
  mimeproc_put_str(&s->out, part->charset ? part->charset : "",
    MAILOAUTH_MIMEPROC_MAX_STR);
  mimeproc_put_str(&s->out, part->filename, MAILOAUTH_MIMEPROC_MAX_STR);
  mimeproc_put_str(&s->out, part->content_id, MAILOAUTH_MIMEPROC_MAX_STR);
  mimeproc_put_str(&s->out, part->encoding_name ? part->encoding_name : "",
    MAILOAUTH_MIMEPROC_MAX_STR);
  if (mimeproc_send(s, MAILOAUTH_MIMEPROC_PART_BEGIN, NULL, 0) < 0) {
    return -1;
  }

  do {
    res = mailoauth_imsg_recv(s->sock, &msg, s->in, sizeof(s->in), 0);
  } while (res < 0 && errno == EINTR);
  if (res <= 0 ||
      msg.type != MAILOAUTH_MIMEPROC_REPLY ||
      msg.len != 4) {
    if (res > 0) {
      mailoauth_imsg_close_fds(&msg);
    }
    s->failed = 1;
    return -1;
  }
  mailoauth_imsg_close_fds(&msg);
  reply = ((uint32_t) msg.data[0] << 24) | ((uint32_t) msg.data[1] << 16) |
    ((uint32_t) msg.data[2] << 8) | msg.data[3];

  if (reply == MAILOAUTH_MIMEPROC_STOP) {
    return -1;
  }
  if (reply == MAILOAUTH_MIME_DESCEND && part->is_message) {
    return MAILOAUTH_MIME_DESCEND;
  }
  if (!(reply & MAILOAUTH_MIME_BODY) || part->is_multipart) {
    return MAILOAUTH_MIME_SKIP;
  }

  s->body_open = 1;
  s->body_index = part->index;
  s->out_error = 0;
  s->out_bytes = 0;
  s->wlen = 0;
  s->out_fd = mimeproc_tmpfile(s->dirfd);
  if (s->out_fd < 0) {
    s->out_error = errno ? errno : EIO;
  } else if (s->wbuf == NULL) {
    s->wbuf = malloc(MIMEPROC_WRITE_BUF);
    if (s->wbuf == NULL) {
      s->out_error = ENOMEM;
    }
  }
  return MAILOAUTH_MIME_BODY;
}

static int mimeproc_srv_flush(struct mimeproc_server *s) {
  if (s->wlen > 0 && s->out_error == 0 &&
      mailoauth_io_write_all(s->out_fd, s->wbuf, s->wlen) < 0) {
    s->out_error = errno ? errno : EIO;
  }
  s->wlen = 0;
  return s->out_error == 0 ? 0 : -1;
}

static int mimeproc_srv_data(const struct mailoauth_mime_part *part,
    const unsigned char *data, size_t len, void *arg) {
  struct mimeproc_server *s = arg;

  if (s->failed) {
    return -1;
  }
  if (!s->body_open || part->index != s->body_index || s->out_error != 0) {
    return 1;
  }

  s->out_bytes += len;
  if (s->wlen + len > MIMEPROC_WRITE_BUF &&
      mimeproc_srv_flush(s) < 0) {
    return 1;
  }
  if (len >= MIMEPROC_WRITE_BUF) {
    if (mailoauth_io_write_all(s->out_fd, data, len) < 0) {
      s->out_error = errno ? errno : EIO;
      return 1;
    }
    return 0;
  }
  memcpy(s->wbuf + s->wlen, data, len);
  s->wlen += len;
  return 0;
}

static int mimeproc_srv_end(const struct mailoauth_mime_part *part,
    unsigned int status, void *arg) {
  struct mimeproc_server *s = arg;
  int res;

  if (!s->body_open || part->index != s->body_index) {
    return s->failed ? -1 : 0;
  }
  s->body_open = 0;

  (void) mimeproc_srv_flush(s);
  s->out.len = 0;
  mimeproc_put32(&s->out, part->index);
  mimeproc_put32(&s->out, status & 0xf);
  mimeproc_put64(&s->out, s->out_error ? 0 : s->out_bytes);
  mimeproc_put32(&s->out, (uint32_t) s->out_error);
  res = mimeproc_send(s, MAILOAUTH_MIMEPROC_PART_END, &s->out_fd,
    s->out_error ? 0 : 1);
  if (s->out_fd >= 0) {
    (void) close(s->out_fd);
    s->out_fd = -1;
  }
  return res;
}

static void mimeproc_srv_error(int code,
    const struct mailoauth_mime_part *part, void *arg) {
  struct mimeproc_server *s = arg;

  s->out.len = 0;
  mimeproc_put32(&s->out, (uint32_t) code);
  mimeproc_put32(&s->out, part ? part->index : MIMEPROC_NO_PART);
  (void) mimeproc_send(s, MAILOAUTH_MIMEPROC_ERROR, NULL, 0);
}

static void mimeproc_srv_parse(struct mimeproc_server *s, int fd,
    const struct mailoauth_mime_limits *limits) {
  struct mailoauth_mime_callbacks cb;
  struct mailoauth_mime *p;
  unsigned char *buf;
  off_t off = 0;
  int res = -1, code = MAILOAUTH_MIME_E_NOMEM, piped = 0;

  memset(&cb, 0, sizeof(cb));
  cb.part_begin = mimeproc_srv_begin;
  cb.part_data = mimeproc_srv_data;
  cb.part_end = mimeproc_srv_end;
  cb.error = mimeproc_srv_error;
  cb.arg = s;

  buf = malloc(MIMEPROC_READ_CHUNK);
  p = buf ? mailoauth_mime_create(limits, &cb) : NULL;
  if (p != NULL) {
    for (;;) {
      ssize_t n = piped ? read(fd, buf, MIMEPROC_READ_CHUNK) :
        pread(fd, buf, MIMEPROC_READ_CHUNK, off);

      if (n < 0 && errno == ESPIPE && !piped) {
        /* A message fed as it is fetched comes through a pipe. */
        piped = 1;
        continue;
      }
      if (n < 0) {
        if (errno == EINTR) {
          continue;
        }
        /* Ends the open parts; the message is not done. */
        (void) mailoauth_mime_finish(p);
        res = -1;
        code = MAILOAUTH_MIME_E_ABORTED;
        break;
      }
      if (n == 0) {
        res = mailoauth_mime_finish(p);
        code = mailoauth_mime_error(p);
        break;
      }
      off += n;
      if (mailoauth_mime_feed(p, buf, (size_t) n) < 0) {
        res = -1;
        code = mailoauth_mime_error(p);
        break;
      }
    }
    mailoauth_mime_destroy(p);
  }
  free(buf);

  if (res == 0) {
    code = MAILOAUTH_MIME_OK;
  } else if (!MAILOAUTH_MIME_IS_FATAL(code)) {
    code = MAILOAUTH_MIME_E_ABORTED;
  }
  s->out.len = 0;
  mimeproc_put32(&s->out, res == 0 ? 0 : 1);
  mimeproc_put32(&s->out, (uint32_t) code);
  (void) mimeproc_send(s, MAILOAUTH_MIMEPROC_DONE, NULL, 0);
}

int mailoauth_mimeproc_serve(int sock,
    const struct mailoauth_mime_limits *limits) {
  struct mimeproc_server *s;
  int res = -1;

  s = calloc(1, sizeof(*s));
  if (s == NULL) {
    return -1;
  }
  s->sock = sock;
  s->out_fd = -1;

  for (;;) {
    struct mailoauth_imsg msg;
    int n = mailoauth_imsg_recv(sock, &msg, s->in, sizeof(s->in), 0);

    if (n == 0) {
      res = 0;
      break;
    }
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      break;
    }

    if (msg.type != MAILOAUTH_MIMEPROC_PARSE || msg.nfds != 2 ||
        msg.len != 0) {
      /* Not a request: an answer that it failed keeps the worker going. */
      mailoauth_imsg_close_fds(&msg);
      s->out.len = 0;
      mimeproc_put32(&s->out, 1);
      mimeproc_put32(&s->out, MAILOAUTH_MIME_E_ABORTED);
      if (mimeproc_send(s, MAILOAUTH_MIMEPROC_DONE, NULL, 0) < 0) {
        break;
      }
      continue;
    }

    s->failed = 0;
    s->body_open = 0;
    s->dirfd = msg.fds[1];
    mimeproc_srv_parse(s, msg.fds[0], limits);
    mailoauth_imsg_close_fds(&msg);
    if (s->failed) {
      break;
    }
  }

  if (s->out_fd >= 0) {
    (void) close(s->out_fd);
  }
  free(s->wbuf);
  free(s);
  return res;
}

/* The worker's side
 */

struct mailoauth_mimeproc_client {
  int sock;
  const struct mailoauth_mimeproc_callbacks *cb;
  int stopped;                  /* a callback said stop */
  int done;
  int result;                   /* DONE: 0 or -1 */
  int mime_error;

  unsigned int next_index;      /* parts begun so far */
  int have_part;
  int body_open;
  struct mailoauth_mime_part part;
  char *fields[MAILOAUTH_MIMEPROC_NFIELDS];
  struct mailoauth_mime_message msg;
  char store[MAILOAUTH_IMSG_MAX + 16];
};

static int mimeproc_reply(struct mailoauth_mimeproc_client *c,
    uint32_t reply) {
  unsigned char b[4];

  b[0] = (unsigned char) (reply >> 24);
  b[1] = (unsigned char) (reply >> 16);
  b[2] = (unsigned char) (reply >> 8);
  b[3] = (unsigned char) reply;
  return mailoauth_imsg_send(c->sock, MAILOAUTH_MIMEPROC_REPLY, 0, b,
    sizeof(b), NULL, 0);
}

/* What the mime parser guarantees for the message's headers: no control
 * characters (Authentication-Results: only its line breaks).
 */
static int mimeproc_field_ok(uint32_t field, const unsigned char *s,
    size_t len) {
  size_t i;

  for (i = 0; i < len; i++) {
    if (s[i] < 0x20 || s[i] == 0x7f) {
      if (s[i] == '\n' && field == MAILOAUTH_MIMEPROC_F_AUTH_RESULTS) {
        continue;
      }
      return 0;
    }
  }
  return 1;
}

static int mimeproc_on_field(struct mailoauth_mimeproc_client *c,
    const struct mailoauth_imsg *msg) {
  struct mimeproc_in in;
  uint32_t field, len;

  memset(&in, 0, sizeof(in));
  in.p = msg->data;
  in.len = msg->len;
  field = mimeproc_get32(&in);
  len = mimeproc_get32(&in);
  if (in.bad ||
      c->have_part ||
      field >= MAILOAUTH_MIMEPROC_NFIELDS ||
      c->fields[field] != NULL ||
      len > MAILOAUTH_MIMEPROC_MAX_FIELDSTR ||
      len != in.len - in.off ||
      !mimeproc_field_ok(field, in.p + in.off, len)) {
    return -1;
  }

  c->fields[field] = malloc((size_t) len + 1);
  if (c->fields[field] == NULL) {
    return -1;
  }
  memcpy(c->fields[field], in.p + in.off, len);
  c->fields[field][len] = '\0';
  return 0;
}

static const char *mimeproc_field(struct mailoauth_mimeproc_client *c,
    unsigned int i) {
  return c->fields[i] ? c->fields[i] : "";
}

static int mimeproc_on_begin(struct mailoauth_mimeproc_client *c,
    const struct mailoauth_imsg *msg) {
  int res;

  if (c->body_open ||
      c->next_index >= MAILOAUTH_MIME_DEFAULT_MAX_PARTS ||
      mailoauth_mimeproc_decode_part(msg->data, msg->len, &c->part,
        c->store, sizeof(c->store)) < 0 ||
      c->part.index != c->next_index) {
    return -1;
  }
  c->next_index++;
  c->have_part = 1;

  c->msg.subject = mimeproc_field(c, MAILOAUTH_MIMEPROC_F_SUBJECT);
  c->msg.from = mimeproc_field(c, MAILOAUTH_MIMEPROC_F_FROM);
  c->msg.from_addr = mimeproc_field(c, MAILOAUTH_MIMEPROC_F_FROM_ADDR);
  c->msg.recipients = mimeproc_field(c, MAILOAUTH_MIMEPROC_F_RECIPIENTS);
  c->msg.date = mimeproc_field(c, MAILOAUTH_MIMEPROC_F_DATE);
  c->msg.message_id = mimeproc_field(c, MAILOAUTH_MIMEPROC_F_MESSAGE_ID);
  c->msg.auth_results = mimeproc_field(c,
    MAILOAUTH_MIMEPROC_F_AUTH_RESULTS);
  /* Only the top-level message's headers come: every part, also one of
   * an attached message descended into, is given those.
   */
  c->part.message = &c->msg;

  if (c->stopped) {
    res = -1;
  } else {
    res = c->cb->part_begin ? c->cb->part_begin(&c->part, c->cb->arg) :
      MAILOAUTH_MIME_SKIP;
  }

  if (res < 0) {
    c->stopped = 1;
    return mimeproc_reply(c, MAILOAUTH_MIMEPROC_STOP) < 0 ? -2 : 0;
  }
  if ((res & MAILOAUTH_MIME_BODY) && !c->part.is_multipart) {
    c->body_open = 1;
    return mimeproc_reply(c, MAILOAUTH_MIME_BODY) < 0 ? -2 : 0;
  }
  /* An attached message's parts follow as the message's own (its .eml
   * and its parts together would be two bodies open at once: not
   * offered).
   */
  if ((res & MAILOAUTH_MIME_DESCEND) && c->part.is_message) {
    return mimeproc_reply(c, MAILOAUTH_MIME_DESCEND) < 0 ? -2 : 0;
  }
  return mimeproc_reply(c, MAILOAUTH_MIME_SKIP) < 0 ? -2 : 0;
}

static int mimeproc_on_end(struct mailoauth_mimeproc_client *c,
    struct mailoauth_imsg *msg) {
  struct mailoauth_mimeproc_body body;
  struct mimeproc_in in;
  uint32_t index, status, error;
  uint64_t size;
  int res;

  memset(&in, 0, sizeof(in));
  in.p = msg->data;
  in.len = msg->len;
  index = mimeproc_get32(&in);
  status = mimeproc_get32(&in);
  size = mimeproc_get64(&in);
  error = mimeproc_get32(&in);
  if (in.bad ||
      in.off != in.len ||
      !c->body_open ||
      index != c->part.index ||
      (status & ~(uint32_t) 0xf) != 0 ||
      error > 4095 ||
      msg->nfds != (error == 0 ? 1 : 0)) {
    return -1;
  }

  memset(&body, 0, sizeof(body));
  body.fd = -1;
  if (error != 0) {
    body.error = (int) error;
  } else {
    struct stat st;
    int fl = fcntl(msg->fds[0], F_GETFL);

    /* Only its size is taken from the parser, and only once the file
     * says the same: an unlinked regular file, readable, within the
     * parser's own limit.
     */
    if (fstat(msg->fds[0], &st) < 0 ||
        fl < 0 ||
        !S_ISREG(st.st_mode) ||
        st.st_nlink != 0 ||
        (fl & O_ACCMODE) == O_WRONLY ||
        st.st_size < 0 ||
        (uint64_t) st.st_size != size ||
        size > MAILOAUTH_MIME_DEFAULT_MAX_PART_BYTES) {
      return -1;
    }
    body.fd = msg->fds[0];
    body.size = (uint64_t) st.st_size;
  }

  c->body_open = 0;
  res = c->cb->part_end ? c->cb->part_end(&c->part, status, &body,
    c->cb->arg) : 0;
  if (res < 0) {
    c->stopped = 1;
  }
  return 0;
}

static int mimeproc_on_error(struct mailoauth_mimeproc_client *c,
    const struct mailoauth_imsg *msg) {
  struct mimeproc_in in;
  uint32_t code, index;

  memset(&in, 0, sizeof(in));
  in.p = msg->data;
  in.len = msg->len;
  code = mimeproc_get32(&in);
  index = mimeproc_get32(&in);
  if (in.bad ||
      in.off != in.len ||
      !((code >= MAILOAUTH_MIME_E_HEADER_TOO_BIG &&
         code <= MAILOAUTH_MIME_E_NOMEM) ||
        (code >= MAILOAUTH_MIME_W_BAD_HEADER_LINE &&
         code <= MAILOAUTH_MIME_W_BAD_UUENCODE)) ||
      (index != MIMEPROC_NO_PART && index >= c->next_index)) {
    return -1;
  }

  if (c->cb->error) {
    c->cb->error((int) code, c->have_part && index == c->part.index ?
      &c->part : NULL, c->cb->arg);
  }
  return 0;
}

static int mimeproc_on_done(struct mailoauth_mimeproc_client *c,
    const struct mailoauth_imsg *msg) {
  struct mimeproc_in in;
  uint32_t result, code;

  memset(&in, 0, sizeof(in));
  in.p = msg->data;
  in.len = msg->len;
  result = mimeproc_get32(&in);
  code = mimeproc_get32(&in);
  if (in.bad ||
      in.off != in.len ||
      c->body_open ||
      result > 1 ||
      (result == 0 && code != MAILOAUTH_MIME_OK) ||
      (result == 1 && !MAILOAUTH_MIME_IS_FATAL(code))) {
    return -1;
  }

  c->done = 1;
  c->result = result == 0 ? 0 : -1;
  c->mime_error = (int) code;
  return 0;
}

struct mailoauth_mimeproc_client *mailoauth_mimeproc_client_create(int sock,
    const struct mailoauth_mimeproc_callbacks *cb) {
  struct mailoauth_mimeproc_client *c = calloc(1, sizeof(*c));

  if (c != NULL) {
    c->sock = sock;
    c->cb = cb;
  }
  return c;
}

void mailoauth_mimeproc_client_destroy(struct mailoauth_mimeproc_client *c) {
  unsigned int i;

  if (c == NULL) {
    return;
  }
  for (i = 0; i < MAILOAUTH_MIMEPROC_NFIELDS; i++) {
    free(c->fields[i]);
  }
  free(c);
}

int mailoauth_mimeproc_client_msg(struct mailoauth_mimeproc_client *c,
    struct mailoauth_imsg *msg) {
  int res = -1;

  if (c->done) {
    mailoauth_imsg_close_fds(msg);
    errno = EPROTO;
    return -1;
  }

  switch (msg->type) {
    case MAILOAUTH_MIMEPROC_FIELD:
      res = msg->nfds == 0 ? mimeproc_on_field(c, msg) : -1;
      break;

    case MAILOAUTH_MIMEPROC_PART_BEGIN:
      res = msg->nfds == 0 ? mimeproc_on_begin(c, msg) : -1;
      break;

    case MAILOAUTH_MIMEPROC_PART_END:
      res = mimeproc_on_end(c, msg);
      break;

    case MAILOAUTH_MIMEPROC_ERROR:
      res = msg->nfds == 0 ? mimeproc_on_error(c, msg) : -1;
      break;

    case MAILOAUTH_MIMEPROC_DONE:
      res = msg->nfds == 0 ? mimeproc_on_done(c, msg) : -1;
      break;

    default:
      break;
  }

  mailoauth_imsg_close_fds(msg);
  if (res < 0) {
    /* -2: the reply could not be sent (errno from the send). */
    if (res == -1) {
      errno = EPROTO;
    }
    return -1;
  }
  return c->done ? 0 : 1;
}

int mailoauth_mimeproc_client_result(struct mailoauth_mimeproc_client *c,
    int *mime_error) {
  if (mime_error != NULL) {
    *mime_error = c->done ? c->mime_error : MAILOAUTH_MIME_OK;
  }
  if (!c->done) {
    return MAILOAUTH_MIMEPROC_BROKEN;
  }
  if (c->stopped || c->result < 0) {
    return MAILOAUTH_MIMEPROC_STOPPED;
  }
  return MAILOAUTH_MIMEPROC_OK;
}

/* Ends a part the parser left open when it broke: the callback's caller
 * can always close what it opened at part_begin.
 */
static void mimeproc_abandon(struct mailoauth_mimeproc_client *c, int err) {
  if (c->body_open) {
    struct mailoauth_mimeproc_body body;

    memset(&body, 0, sizeof(body));
    body.fd = -1;
    body.error = err;
    c->body_open = 0;
    if (c->cb->part_end) {
      (void) c->cb->part_end(&c->part, MAILOAUTH_MIME_ST_ABORTED, &body,
        c->cb->arg);
    }
  }
}

struct mailoauth_mimeproc_run {
  struct mailoauth_mimeproc_client *c;
  unsigned char *buf;
  int sock;
  int xerrno;                   /* the parser broke: why */
  long wait_left;               /* ms the parser may stay silent */
};

struct mailoauth_mimeproc_run *mailoauth_mimeproc_begin(int sock,
    int msg_fd, int tmpdir_fd,
    const struct mailoauth_mimeproc_callbacks *cb) {
  struct mailoauth_mimeproc_run *r;
  int fds[2];

  r = calloc(1, sizeof(*r));
  if (r == NULL) {
    errno = ENOMEM;
    return NULL;
  }
  r->sock = sock;
  r->wait_left = MIMEPROC_TIMEOUT_MS;
  r->c = mailoauth_mimeproc_client_create(sock, cb);
  r->buf = malloc(MAILOAUTH_IMSG_HDR + MAILOAUTH_IMSG_MAX);
  if (r->c == NULL || r->buf == NULL) {
    mailoauth_mimeproc_client_destroy(r->c);
    free(r->buf);
    free(r);
    errno = ENOMEM;
    return NULL;
  }

  fds[0] = msg_fd;
  fds[1] = tmpdir_fd;
  if (mailoauth_imsg_send(sock, MAILOAUTH_MIMEPROC_PARSE, 0, NULL, 0, fds,
      2) < 0) {
    r->xerrno = errno;
  }
  return r;
}

int mailoauth_mimeproc_pump(struct mailoauth_mimeproc_run *r,
    int timeout_ms) {
  struct mailoauth_imsg msg;
  struct pollfd pfd;
  int n;

  if (r->xerrno != 0) {
    errno = r->xerrno;
    return -1;
  }
  if (r->c->done) {
    return 0;
  }

  for (;;) {
    pfd.fd = r->sock;
    pfd.events = POLLIN;
    pfd.revents = 0;
    n = poll(&pfd, 1, timeout_ms);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    break;
  }
  if (n < 0) {
    r->xerrno = errno;
    return -1;
  }
  if (n == 0) {
    if (timeout_ms > 0) {
      r->wait_left -= timeout_ms;
      if (r->wait_left <= 0) {
        r->xerrno = ETIMEDOUT;
        return -1;
      }
    }
    return 1;
  }
  r->wait_left = MIMEPROC_TIMEOUT_MS;

  n = mailoauth_imsg_recv(r->sock, &msg, r->buf,
    MAILOAUTH_IMSG_HDR + MAILOAUTH_IMSG_MAX, 0);
  if (n == 0) {
    r->xerrno = EPIPE;
    return -1;
  }
  if (n < 0) {
    if (errno == EINTR) {
      return 1;
    }
    r->xerrno = errno == EBADMSG ? EPROTO : errno;
    return -1;
  }

  n = mailoauth_mimeproc_client_msg(r->c, &msg);
  if (n < 0) {
    r->xerrno = errno ? errno : EPROTO;
    return -1;
  }
  return n == 0 ? 0 : 1;
}

int mailoauth_mimeproc_finish(struct mailoauth_mimeproc_run *r,
    int *mime_error) {
  int res, xerrno;

  if (mime_error != NULL) {
    *mime_error = MAILOAUTH_MIME_OK;
  }
  if (r == NULL) {
    errno = ENOMEM;
    return MAILOAUTH_MIMEPROC_STOPPED;
  }

  for (;;) {
    int slice = mailoauth_yield_slice(r->wait_left);
    int n = mailoauth_mimeproc_pump(r, slice);

    if (n <= 0) {
      break;
    }
    /* A large part takes a while: notifications need not wait. */
    mailoauth_yield();
  }

  xerrno = r->xerrno;
  if (xerrno != 0) {
    mimeproc_abandon(r->c, xerrno);
  }
  res = xerrno != 0 ? MAILOAUTH_MIMEPROC_BROKEN :
    mailoauth_mimeproc_client_result(r->c, mime_error);
  mailoauth_mimeproc_client_destroy(r->c);
  free(r->buf);
  free(r);
  errno = xerrno;
  return res;
}

int mailoauth_mimeproc_parse(int sock, int msg_fd, int tmpdir_fd,
    const struct mailoauth_mimeproc_callbacks *cb, int *mime_error) {
  return mailoauth_mimeproc_finish(mailoauth_mimeproc_begin(sock, msg_fd,
    tmpdir_fd, cb), mime_error);
}
