/*
 * libFuzzer target: the worker's side of the parser protocol (mimeproc.h).
 *
 * The parser process is where hostile mail is parsed, so it is the one to
 * assume compromised: whatever sequence of messages it sends, the worker's
 * decoder stays inside them, hands its callbacks only what the protocol
 * allows (NUL-terminated strings within their bounds, header fields free
 * of control characters, a part's end only for the one part asked for,
 * and only files that are anonymous and of the size announced) and never
 * leaks a descriptor.
 *
 * Input: records of  u8 type, u8 flags (bit 0: attach a file), u16 length
 * (big-endian), payload.
 */

#include "mailoauth/imsg.h"
#include "mailoauth/mimeproc.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static int fuzz_file = -1;      /* 3 bytes, anonymous */
static int fuzz_named = -1;     /* 3 bytes, with a name */
static int fuzz_sv[2] = { -1, -1 };

struct fuzz_state {
  int body_open;
  unsigned int body_index;
};

static void fuzz_check_str(const char *s, size_t max, int nullable) {
  if (s == NULL) {
    if (!nullable) {
      abort();
    }
    return;
  }
  if (strlen(s) > max) {
    abort();
  }
}

static void fuzz_check_field(const char *s, int lines) {
  size_t i;

  if (s == NULL || strlen(s) > MAILOAUTH_MIMEPROC_MAX_FIELDSTR) {
    abort();
  }
  for (i = 0; s[i] != '\0'; i++) {
    unsigned char c = (unsigned char) s[i];

    if ((c < 0x20 && !(lines && c == '\n')) || c == 0x7f) {
      abort();
    }
  }
}

static int fuzz_begin(const struct mailoauth_mime_part *part, void *arg) {
  struct fuzz_state *st = arg;
  const struct mailoauth_mime_message *m = part->message;

  if (st->body_open || m == NULL) {
    abort();
  }
  fuzz_check_str(part->section, MAILOAUTH_MIMEPROC_MAX_STR, 0);
  fuzz_check_str(part->content_type, MAILOAUTH_MIMEPROC_MAX_STR, 0);
  fuzz_check_str(part->charset, MAILOAUTH_MIMEPROC_MAX_STR, 0);
  fuzz_check_str(part->filename, MAILOAUTH_MIMEPROC_MAX_STR, 1);
  fuzz_check_str(part->content_id, MAILOAUTH_MIMEPROC_MAX_STR, 1);
  fuzz_check_str(part->encoding_name, MAILOAUTH_MIMEPROC_MAX_STR, 0);
  if (part->disposition < 0 || part->disposition > 2 ||
      part->encoding < 0 || part->encoding > MAILOAUTH_MIME_ENC_UUENCODE ||
      (part->is_multipart && part->is_message)) {
    abort();
  }
  fuzz_check_field(m->subject, 0);
  fuzz_check_field(m->from, 0);
  fuzz_check_field(m->from_addr, 0);
  fuzz_check_field(m->recipients, 0);
  fuzz_check_field(m->date, 0);
  fuzz_check_field(m->message_id, 0);
  fuzz_check_field(m->auth_results, 1);

  if (part->content_type[0] == 's') {
    return -1;
  }
  if (part->filename != NULL && !part->is_multipart) {
    st->body_open = 1;
    st->body_index = part->index;
    return MAILOAUTH_MIME_BODY;
  }
  /* Attached messages are looked into (their parts follow). */
  if (part->is_message) {
    return MAILOAUTH_MIME_DESCEND;
  }
  return MAILOAUTH_MIME_SKIP;
}

static int fuzz_end(const struct mailoauth_mime_part *part,
    unsigned int status, const struct mailoauth_mimeproc_body *body,
    void *arg) {
  struct fuzz_state *st = arg;
  struct stat sb;

  (void) status;
  if (!st->body_open || part->index != st->body_index) {
    abort();
  }
  st->body_open = 0;
  if (body->fd >= 0) {
    if (body->error != 0 ||
        fstat(body->fd, &sb) < 0 ||
        sb.st_nlink != 0 ||
        (uint64_t) sb.st_size != body->size) {
      abort();
    }
  } else if (body->error == 0) {
    abort();
  }
  return part->index == 7 ? -1 : 0;
}

static void fuzz_error(int code, const struct mailoauth_mime_part *part,
    void *arg) {
  (void) part;
  (void) arg;
  if (!((code >= 1 && code <= MAILOAUTH_MIME_E_NOMEM) ||
        (code >= MAILOAUTH_MIME_W_BAD_HEADER_LINE &&
         code <= MAILOAUTH_MIME_W_BAD_UUENCODE))) {
    abort();
  }
}

static char fuzz_named_path[] = "/tmp/fuzz_mimeproc.XXXXXX";

static void fuzz_cleanup(void) {
  (void) unlink(fuzz_named_path);
}

static void fuzz_init(void) {
  if (fuzz_file >= 0) {
    return;
  }
  fuzz_file = open("/tmp", O_TMPFILE|O_RDWR|O_CLOEXEC, 0600);
  fuzz_named = mkostemp(fuzz_named_path, O_CLOEXEC);
  if (fuzz_named >= 0) {
    /* Keeps its name while the fuzzer runs. */
    (void) atexit(fuzz_cleanup);
  }
  if (fuzz_file < 0 || fuzz_named < 0 ||
      write(fuzz_file, "abc", 3) != 3 ||
      write(fuzz_named, "abc", 3) != 3 ||
      socketpair(AF_UNIX, SOCK_SEQPACKET|SOCK_CLOEXEC, 0, fuzz_sv) < 0) {
    abort();
  }
}

static void fuzz_drain(void) {
  char buf[256];

  while (recv(fuzz_sv[1], buf, sizeof(buf), MSG_DONTWAIT) > 0) {
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static unsigned char buf[MAILOAUTH_IMSG_MAX];
  struct mailoauth_mimeproc_callbacks cb;
  struct mailoauth_mimeproc_client *c;
  struct fuzz_state st;
  size_t off = 0;
  static int probe_first = -1;
  int res = 1, probe;

  fuzz_init();

  memset(&st, 0, sizeof(st));
  memset(&cb, 0, sizeof(cb));
  cb.part_begin = fuzz_begin;
  cb.part_end = fuzz_end;
  cb.error = fuzz_error;
  cb.arg = &st;
  c = mailoauth_mimeproc_client_create(fuzz_sv[0], &cb);
  if (c == NULL) {
    return 0;
  }

  while (res == 1 && size - off >= 4) {
    struct mailoauth_imsg msg;
    size_t len = ((size_t) data[off + 2] << 8) | data[off + 3];

    memset(&msg, 0, sizeof(msg));
    msg.type = data[off];
    if (data[off + 1] & 1) {
      msg.fds[0] = dup((data[off + 1] & 2) ? fuzz_named : fuzz_file);
      msg.nfds = msg.fds[0] >= 0 ? 1 : 0;
    }
    off += 4;
    if (len > size - off) {
      len = size - off;
    }
    /* A copy of its own: reading past the payload is caught. */
    memcpy(buf, data + off, len);
    msg.data = buf;
    msg.len = len;
    off += len;

    res = mailoauth_mimeproc_client_msg(c, &msg);
    if (msg.nfds != 0) {
      /* Every descriptor it is handed is its to close. */
      abort();
    }
    fuzz_drain();
  }

  (void) mailoauth_mimeproc_client_result(c, NULL);
  mailoauth_mimeproc_client_destroy(c);

  /* No descriptor left behind: a dup lands on the lowest free number,
   * the same every time.
   */
  probe = dup(fuzz_file);
  if (probe < 0 || (probe_first >= 0 && probe != probe_first)) {
    abort();
  }
  probe_first = probe;
  (void) close(probe);
  return 0;
}
