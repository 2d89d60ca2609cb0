/*
 * mod_mailoauth - unpacking Outlook's winmail.dat (application/ms-tnef)
 *
 * This program is free software; you can redistribute it and/or modify
 * it under the terms of the GNU General Public License as published by
 * the Free Software Foundation; either version 2 of the License, or
 * (at your option) any later version.
 *
 * The public side of tnef.h, in the parent: the limits, the reader of the
 * decoder's records, and unpacking through the TNEF helper.  The decoder
 * is in tnefdecode.c; the child that runs it, the helper that forks the
 * child and the helper's socket messages are in tnefhelper.c; the records
 * and messages are described in tnefint.h.
 */

#ifndef _GNU_SOURCE
# define _GNU_SOURCE
#endif

#include "mailoauth/io.h"
#include "mailoauth/tnef.h"
#include "tnefint.h"
#include "mailoauth/mime.h"
#include "mailoauth/spawn.h"
#include "mailoauth/spool.h"
#include "mailoauth/trace.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *trace_channel = "mailoauth.tnef";

#define TNEF_READ_CHUNK         (64 * 1024)

/* How long the helper may take to answer what needs no decoding (ready,
 * a fork, a kill) before the parent gives up on it.
 */
#define TNEF_HELPER_ANSWER_MS   5000

/* How long a helper whose socket was closed may take to end by itself. */
#define TNEF_HELPER_STOP_MS     1000

/* ------------------------------------------------------------------------
 * Little-endian fields, for tnefdecode.c and tnefhelper.c too.
 */

uint32_t mailoauth_tnef_get32(const unsigned char *p) {
  return (uint32_t) p[0] | ((uint32_t) p[1] << 8) | ((uint32_t) p[2] << 16) |
    ((uint32_t) p[3] << 24);
}

uint64_t mailoauth_tnef_get64(const unsigned char *p) {
  return (uint64_t) mailoauth_tnef_get32(p) |
    ((uint64_t) mailoauth_tnef_get32(p + 4) << 32);
}

void mailoauth_tnef_put32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char) v;
  p[1] = (unsigned char) (v >> 8);
  p[2] = (unsigned char) (v >> 16);
  p[3] = (unsigned char) (v >> 24);
}

void mailoauth_tnef_put64(unsigned char *p, uint64_t v) {
  mailoauth_tnef_put32(p, (uint32_t) v);
  mailoauth_tnef_put32(p + 4, (uint32_t) (v >> 32));
}

/* ------------------------------------------------------------------------
 * Limits.
 */

void mailoauth_tnef_limits_init(struct mailoauth_tnef_limits *lim) {
  if (lim == NULL) {
    return;
  }
  lim->max_input = MAILOAUTH_TNEF_DEFAULT_MAX_INPUT;
  lim->max_files = MAILOAUTH_TNEF_DEFAULT_MAX_FILES;
  lim->max_file_bytes = MAILOAUTH_TNEF_DEFAULT_MAX_FILE_BYTES;
  lim->max_total_bytes = MAILOAUTH_TNEF_DEFAULT_MAX_TOTAL_BYTES;
  lim->timeout_ms = MAILOAUTH_TNEF_DEFAULT_TIMEOUT_MS;
}

void mailoauth_tnef_limits_resolve(const struct mailoauth_tnef_limits *in,
    struct mailoauth_tnef_limits *out) {
  mailoauth_tnef_limits_init(out);
  if (in == NULL) {
    return;
  }
  if (in->max_input != 0) {
    out->max_input = in->max_input;
  }
  if (in->max_files != 0) {
    out->max_files = in->max_files;
  }
  if (in->max_file_bytes != 0) {
    out->max_file_bytes = in->max_file_bytes;
  }
  if (in->max_total_bytes != 0) {
    out->max_total_bytes = in->max_total_bytes;
  }
  if (in->timeout_ms != 0) {
    out->timeout_ms = in->timeout_ms;
  }
}

/* ------------------------------------------------------------------------
 * The parent's reader.
 */

enum tnef_rstate {
  TNEF_R_TYPE,
  TNEF_R_FILE_HDR,
  TNEF_R_NAME,
  TNEF_R_SIZE,
  TNEF_R_DATA,
  TNEF_R_END_HDR,
  TNEF_R_DONE
};

struct mailoauth_tnef_reader {
  char *tmp_dir;
  struct mailoauth_tnef_limits lim;
  mailoauth_tnef_file_fn cb;
  void *arg;

  enum tnef_rstate state;
  int error;                    /* sticky errno, 0: none */

  unsigned char hdr[8];         /* a fixed-size field being gathered */
  size_t have;

  uint32_t codepage;
  uint32_t name_len;
  char name[MAILOAUTH_TNEF_MAX_NAME + 1];

  int fd;                       /* the current file's temporary file */
  uint64_t size, left;

  unsigned int count;           /* callbacks made */
  uint64_t total;               /* bytes announced so far */

  uint32_t status, reserved;    /* from the end record */
};

struct mailoauth_tnef_reader *mailoauth_tnef_reader_new(const char *tmp_dir,
    const struct mailoauth_tnef_limits *lim, mailoauth_tnef_file_fn cb,
    void *arg) {
  struct mailoauth_tnef_reader *r;

  if (tmp_dir == NULL || cb == NULL) {
    errno = EINVAL;
    return NULL;
  }

  r = calloc(1, sizeof(*r));
  if (r == NULL) {
    errno = ENOMEM;
    return NULL;
  }
  r->tmp_dir = strdup(tmp_dir);
  if (r->tmp_dir == NULL) {
    free(r);
    errno = ENOMEM;
    return NULL;
  }
  mailoauth_tnef_limits_resolve(lim, &r->lim);
  r->cb = cb;
  r->arg = arg;
  r->state = TNEF_R_TYPE;
  r->fd = -1;
  return r;
}

void mailoauth_tnef_reader_free(struct mailoauth_tnef_reader *r) {
  if (r == NULL) {
    return;
  }
  if (r->fd >= 0) {
    (void) close(r->fd);
  }
  free(r->tmp_dir);
  free(r);
}

/* An anonymous file: nothing to clean up after a crash. */
static int tnef_tmpfile(const char *dir) {
  char *path;
  size_t len;
  int fd;

#ifdef O_TMPFILE
  fd = open(dir, O_TMPFILE|O_RDWR|O_CLOEXEC, 0600);
  if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR &&
      errno != EINVAL)) {
    return fd;
  }
#endif

  len = strlen(dir) + sizeof("/tnef.XXXXXX");
  path = malloc(len);
  if (path == NULL) {
    errno = ENOMEM;
    return -1;
  }
  snprintf(path, len, "%s/tnef.XXXXXX", dir);
  fd = mkostemp(path, O_CLOEXEC);
  if (fd >= 0) {
    (void) unlink(path);
  }
  free(path);
  return fd;
}

/* The iconv name of a Windows code page, for the names in 8-bit strings.
 * None (0) and unknown ones are left to mailoauth_mime_to_utf8()'s guess:
 * UTF-8 if valid, else windows-1252.
 */
static const char *tnef_charset(unsigned int cp, char *buf, size_t bufsz) {
  switch (cp) {
    case 0:
      return NULL;
    case TNEF_CP_UTF8:
      return "UTF-8";
    case 20127:
      return "US-ASCII";
    case 20866:
      return "KOI8-R";
    case 21866:
      return "KOI8-U";
    case 50220:
    case 50221:
    case 50222:
      return "ISO-2022-JP";
    case 51932:
      return "EUC-JP";
    case 51949:
      return "EUC-KR";
    case 54936:
      return "GB18030";
    case 10000:
      return "MACINTOSH";
  }

  if (cp >= 28591 && cp <= 28605) {
    snprintf(buf, bufsz, "ISO-8859-%u", cp - 28590);
  } else {
    snprintf(buf, bufsz, "CP%u", cp);
  }
  return buf;
}

static int tnef_reader_fail(struct mailoauth_tnef_reader *r, int xerrno) {
  if (r->fd >= 0) {
    (void) close(r->fd);
    r->fd = -1;
  }
  r->error = xerrno;
  errno = xerrno;
  return -1;
}

static int tnef_reader_deliver(struct mailoauth_tnef_reader *r) {
  char cs[32], *conv = NULL;
  const char *name = NULL;
  int rc, xerrno;

  /* Even a UTF-8 name goes through the conversion: invalid sequences
   * become U+FFFD, so the callback always gets valid UTF-8.
   */
  if (r->name_len > 0) {
    conv = mailoauth_mime_to_utf8(tnef_charset(r->codepage, cs, sizeof(cs)),
      r->name, r->name_len, NULL);
    if (conv == NULL) {
      return tnef_reader_fail(r, ENOMEM);
    }
    name = conv;
  }

  mailoauth_trace(trace_channel, 9, "file %u: '%s', %llu bytes", r->count + 1,
    name != NULL ? name : "(no name)", (unsigned long long) r->size);

  r->count++;
  errno = 0;
  rc = r->cb(name, r->fd, r->size, r->arg);
  xerrno = errno != 0 ? errno : ECANCELED;
  free(conv);

  (void) close(r->fd);
  r->fd = -1;
  r->state = TNEF_R_TYPE;

  if (rc < 0) {
    mailoauth_trace(trace_channel, 5, "callback stopped unpacking at file "
      "%u: %s", r->count, strerror(xerrno));
    return tnef_reader_fail(r, xerrno);
  }
  return 0;
}

/* A fixed-size field is complete in r->hdr. */
static int tnef_reader_field(struct mailoauth_tnef_reader *r) {
  r->have = 0;

  switch (r->state) {
    case TNEF_R_FILE_HDR:
      r->codepage = mailoauth_tnef_get32(r->hdr);
      r->name_len = mailoauth_tnef_get32(r->hdr + 4);
      if (r->name_len > MAILOAUTH_TNEF_MAX_NAME) {
        mailoauth_trace(trace_channel, 3, "decoder sent a name of %lu bytes",
          (unsigned long) r->name_len);
        return tnef_reader_fail(r, EIO);
      }
      r->state = r->name_len > 0 ? TNEF_R_NAME : TNEF_R_SIZE;
      return 0;

    case TNEF_R_SIZE:
      r->size = mailoauth_tnef_get64(r->hdr);
      if (r->size > r->lim.max_file_bytes ||
          r->size > r->lim.max_total_bytes - r->total) {
        mailoauth_trace(trace_channel, 3, "decoder sent a file of %llu bytes "
          "after %llu: over the limits", (unsigned long long) r->size,
          (unsigned long long) r->total);
        return tnef_reader_fail(r, EFBIG);
      }
      r->total += r->size;

      r->fd = tnef_tmpfile(r->tmp_dir);
      if (r->fd < 0) {
        int xerrno = errno;

        mailoauth_trace(trace_channel, 3, "cannot create a temporary file in "
          "'%s': %s", r->tmp_dir, strerror(xerrno));
        return tnef_reader_fail(r, xerrno);
      }
      r->left = r->size;
      r->state = TNEF_R_DATA;
      return r->left == 0 ? tnef_reader_deliver(r) : 0;

    case TNEF_R_END_HDR:
      r->status = mailoauth_tnef_get32(r->hdr);
      r->reserved = mailoauth_tnef_get32(r->hdr + 4);
      if (r->status > TNEF_ST_MAX || r->reserved != 0) {
        mailoauth_trace(trace_channel, 3, "decoder sent a bad end record");
        return tnef_reader_fail(r, EIO);
      }
      r->state = TNEF_R_DONE;
      return 0;

    default:
      return tnef_reader_fail(r, EIO);
  }
}

int mailoauth_tnef_reader_feed(struct mailoauth_tnef_reader *r,
    const void *buf, size_t len) {
  const unsigned char *p = buf;

  if (r == NULL || (p == NULL && len > 0)) {
    errno = EINVAL;
    return -1;
  }
  if (r->error != 0) {
    errno = r->error;
    return -1;
  }

  while (len > 0) {
    size_t n;

    switch (r->state) {
      case TNEF_R_TYPE:
        if (*p == TNEF_REC_FILE) {
          if (r->count >= r->lim.max_files) {
            mailoauth_trace(trace_channel, 3, "decoder sent more than %u files",
              r->lim.max_files);
            return tnef_reader_fail(r, EFBIG);
          }
          r->state = TNEF_R_FILE_HDR;
        } else if (*p == TNEF_REC_END) {
          r->state = TNEF_R_END_HDR;
        } else {
          mailoauth_trace(trace_channel, 3, "decoder sent record type 0x%02x",
            *p);
          return tnef_reader_fail(r, EIO);
        }
        r->have = 0;
        p++;
        len--;
        break;

      case TNEF_R_FILE_HDR:
      case TNEF_R_SIZE:
      case TNEF_R_END_HDR:
        n = sizeof(r->hdr) - r->have;
        if (n > len) {
          n = len;
        }
        memcpy(r->hdr + r->have, p, n);
        r->have += n;
        p += n;
        len -= n;
        if (r->have == sizeof(r->hdr) && tnef_reader_field(r) < 0) {
          return -1;
        }
        break;

      case TNEF_R_NAME:
        n = r->name_len - r->have;
        if (n > len) {
          n = len;
        }
        memcpy(r->name + r->have, p, n);
        r->have += n;
        p += n;
        len -= n;
        if (r->have == r->name_len) {
          if (memchr(r->name, '\0', r->name_len) != NULL) {
            mailoauth_trace(trace_channel, 3, "decoder sent a name with NUL");
            return tnef_reader_fail(r, EIO);
          }
          r->name[r->name_len] = '\0';
          r->have = 0;
          r->state = TNEF_R_SIZE;
        }
        break;

      case TNEF_R_DATA:
        n = r->left < len ? (size_t) r->left : len;
        if (mailoauth_io_write_all(r->fd, p, n) < 0) {
          int xerrno = errno;

          mailoauth_trace(trace_channel, 3, "cannot write a temporary file in "
            "'%s': %s", r->tmp_dir, strerror(xerrno));
          return tnef_reader_fail(r, xerrno);
        }
        r->left -= n;
        p += n;
        len -= n;
        if (r->left == 0 && tnef_reader_deliver(r) < 0) {
          return -1;
        }
        break;

      case TNEF_R_DONE:
        mailoauth_trace(trace_channel, 3, "decoder sent data after its end");
        return tnef_reader_fail(r, EIO);
    }
  }

  return 0;
}

int mailoauth_tnef_reader_finish(struct mailoauth_tnef_reader *r,
    unsigned int *nfiles) {
  static const int errs[] = { 0, EBADMSG, EFBIG, ENOMEM, EIO };

  if (nfiles != NULL) {
    *nfiles = r != NULL ? r->count : 0;
  }
  if (r == NULL) {
    errno = EINVAL;
    return -1;
  }
  if (r->error != 0) {
    errno = r->error;
    return -1;
  }
  if (r->state != TNEF_R_DONE) {
    return tnef_reader_fail(r, ECHILD);
  }
  if (r->status != TNEF_ST_OK) {
    errno = errs[r->status];
    return -1;
  }
  return 0;
}

/* ------------------------------------------------------------------------
 * The parent's side: the helper, and running a decoder through it.
 */

static int tnef_helper_sock = -1;
static pid_t tnef_helper_child = -1;    /* the helper's pid */
static pid_t tnef_helper_owner = -1;    /* the process that started it */

/* Set: the helper is this program, exec'd, rather than a fork of ours. */
static const char *tnef_helper_program = NULL;
static char *const *tnef_helper_argv = NULL;
static char *const *tnef_helper_envp = NULL;

void mailoauth_tnef_helper_set_program(const char *path, char *const argv[],
    char *const envp[]) {
  tnef_helper_program = path;
  tnef_helper_argv = argv;
  tnef_helper_envp = envp;
}
static uint32_t tnef_helper_seq = 0;

static long long tnef_now_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reaps pid, giving it up to grace_ms to exit by itself first and killing
 * it after that.  Returns 1 with *status set, or 0 when the status is
 * unknown (the process was reaped elsewhere).
 */
static int tnef_reap(pid_t pid, long long grace_ms, int *status) {
  long long deadline = tnef_now_ms() + grace_ms;
  long pause_ns = 100000;
  pid_t res;

  for (;;) {
    res = waitpid(pid, status, WNOHANG);
    if (res == pid) {
      return 1;
    }
    if (res < 0 && errno != EINTR) {
      return 0;
    }
    if (res == 0) {
      struct timespec ts;

      if (tnef_now_ms() >= deadline) {
        break;
      }
      ts.tv_sec = 0;
      ts.tv_nsec = pause_ns;
      (void) nanosleep(&ts, NULL);
      if (pause_ns < 20000000) {
        pause_ns *= 2;
      }
    }
  }

  (void) kill(pid, SIGKILL);
  for (;;) {
    res = waitpid(pid, status, 0);
    if (res == pid) {
      return 1;
    }
    if (res < 0 && errno != EINTR) {
      return 0;
    }
  }
}

/* A helper inherited through fork() is its parent's, not this process's. */
static int tnef_helper_usable(void) {
  return tnef_helper_sock >= 0 && tnef_helper_owner == getpid();
}

static void tnef_helper_forget(void) {
  if (tnef_helper_sock >= 0) {
    (void) close(tnef_helper_sock);
  }
  tnef_helper_sock = -1;
  tnef_helper_child = -1;
  tnef_helper_owner = -1;
}

/* The helper is gone, or of no use any more: it is killed and reaped (no
 * zombie is left), and, unless why is NULL, the operator is told once:
 * nothing is unpacked from now on.
 */
static void tnef_helper_lost(const char *why) {
  pid_t pid = tnef_helper_child;
  int status;

  if (!tnef_helper_usable()) {
    return;
  }
  tnef_helper_forget();
  (void) tnef_reap(pid, 0, &status);

  if (why != NULL) {
    mailoauth_log("TNEF helper (pid %ld) %s; winmail.dat files are no longer "
      "unpacked, but deposited as they are", (long) pid, why);
  }
}

/* With proftpd -n, descriptors 0-2 may be free; a socket there would be
 * taken for standard I/O (the helper's become /dev/null).
 */
static int tnef_fd_above_stdio(int *fd) {
  int moved;

  if (*fd > STDERR_FILENO) {
    return 0;
  }
  moved = fcntl(*fd, F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
  if (moved < 0) {
    return -1;
  }
  (void) close(*fd);
  *fd = moved;
  return 0;
}

/* Waits up to timeout_ms for the helper's answer about request seq;
 * answers about other requests are stale and passed over.  Returns 1 with
 * *kind and *value set, 0 on timeout, -1 when the helper is gone or sent
 * something malformed (*why says which).
 */
static int tnef_helper_wait(uint32_t seq, long long timeout_ms,
    unsigned char *kind, uint32_t *value, const char **why) {
  long long deadline = tnef_now_ms() + timeout_ms;

  for (;;) {
    unsigned char msg[TNEF_ANSWER_LEN + 1];
    long long left = deadline - tnef_now_ms();
    struct pollfd pfd;
    ssize_t n;
    int nfds, rc;

    pfd.fd = tnef_helper_sock;
    pfd.events = POLLIN;
    pfd.revents = 0;
    rc = poll(&pfd, 1, left <= 0 ? 0 : left > INT_MAX ? INT_MAX : (int) left);
    if (rc < 0 && errno == EINTR) {
      continue;
    }
    if (rc == 0) {
      return 0;
    }

    n = rc < 0 ? -1 : mailoauth_tnef_sock_recv(tnef_helper_sock, msg,
      sizeof(msg), NULL, 0, &nfds);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
      continue;
    }
    if (n != TNEF_ANSWER_LEN) {
      *why = n == 0 ? "ended" : n > 0 || errno == EMSGSIZE ?
        "sent a malformed message" : "cannot be reached";
      return -1;
    }

    if (mailoauth_tnef_get32(msg + 1) != seq) {
      mailoauth_trace(trace_channel, 5, "passing over a stale answer from "
        "the TNEF helper");
      continue;
    }
    *kind = msg[0];
    *value = mailoauth_tnef_get32(msg + 5);
    return 1;
  }
}

/* The helper cannot run decoders under a filter it verified: it is of no
 * use, and the operator is told once, with the reason.
 */
static void tnef_helper_no_sandbox(uint32_t reason) {
  static const char *const why[] = {
    NULL,
    "this build has no seccomp filter for this machine's architecture",
    "a decoder could not install its seccomp filter (a kernel without "
      "seccomp, or a filter around the server that forbids it)",
    "/proc/PID/status does not show a decoder under its seccomp filter",
    "a decoder's /proc/PID/status cannot be read to check its seccomp "
      "filter (is /proc mounted, without hidepid?)",
    "the TNEF helper runs under a seccomp filter already and the kernel "
      "does not show whether a decoder added its own (no Seccomp_filters)"
  };
  pid_t pid = tnef_helper_child;

  tnef_helper_lost(NULL);
  mailoauth_log("TNEF helper (pid %ld): winmail.dat decoders cannot be "
    "verified to run under their seccomp filter: %s; unpacking is off: "
    "winmail.dat files are deposited as they are", (long) pid, why[reason]);
}

static int tnef_helper_send_kill(uint32_t seq) {
  unsigned char msg[TNEF_KILL_LEN];

  msg[0] = TNEF_MSG_KILL;
  mailoauth_tnef_put32(msg + 1, seq);
  if (mailoauth_tnef_sock_send(tnef_helper_sock, msg, sizeof(msg), NULL,
      0) < 0) {
    tnef_helper_lost("is gone");
    return -1;
  }
  return 0;
}

/* Has the helper fork a decoder reading in_fd and writing to out_fd.
 * Returns its pid, or -1 with errno (ESRCH: the helper is gone; ENOTSUP:
 * the decoder was not verified to run under its filter, so the helper is
 * stopped and nothing is decoded from now on).
 */
static pid_t tnef_helper_spawn(int in_fd, int out_fd, uint64_t in_size,
    const struct mailoauth_tnef_limits *l, uint32_t *seq) {
  unsigned char msg[TNEF_UNPACK_LEN], kind = 0;
  int fds[TNEF_HELPER_FDS];
  const char *why = "did not answer";
  uint32_t value = 0;
  int rc;

  /* 0 is the ready message's. */
  if (++tnef_helper_seq == 0) {
    tnef_helper_seq = 1;
  }
  *seq = tnef_helper_seq;

  msg[0] = TNEF_MSG_UNPACK;
  mailoauth_tnef_put32(msg + 1, *seq);
  mailoauth_tnef_put64(msg + 5, in_size);
  mailoauth_tnef_put64(msg + 13, l->max_input);
  mailoauth_tnef_put32(msg + 21, l->max_files);
  mailoauth_tnef_put64(msg + 25, l->max_file_bytes);
  mailoauth_tnef_put64(msg + 33, l->max_total_bytes);
  mailoauth_tnef_put32(msg + 41, l->timeout_ms);
  fds[0] = in_fd;
  fds[1] = out_fd;

  if (mailoauth_tnef_sock_send(tnef_helper_sock, msg, sizeof(msg), fds,
      TNEF_HELPER_FDS) < 0) {
    tnef_helper_lost("is gone");
    errno = ESRCH;
    return -1;
  }

  rc = tnef_helper_wait(*seq, TNEF_HELPER_ANSWER_MS, &kind, &value, &why);
  if (rc > 0 && kind == TNEF_MSG_PID && value > 0 && value <= INT_MAX) {
    return (pid_t) value;
  }
  if (rc > 0 && kind == TNEF_MSG_NOSANDBOX && value > 0 &&
      value <= TNEF_NOSB_MAX) {
    tnef_helper_no_sandbox(value);
    errno = ENOTSUP;
    return -1;
  }
  if (rc > 0 && kind == TNEF_MSG_ERROR && value > 0 && value < 4096) {
    mailoauth_trace(trace_channel, 3, "the TNEF helper cannot fork a "
      "decoder: %s", strerror((int) value));
    errno = (int) value;
    return -1;
  }

  tnef_helper_lost(rc > 0 ? "sent a malformed message" : why);
  errno = ESRCH;
  return -1;
}

/* The decoder's wait status, from the helper once it reaped it: waited for
 * up to grace_ms (the decoder is on its way out), then the helper is told
 * to kill it (at once for a grace_ms of 0).  Returns 1 with *status set,
 * 0 when it is unknown (the helper is gone).
 */
static int tnef_helper_collect(uint32_t seq, long long grace_ms,
    int *status) {
  const char *why = "did not answer";
  unsigned char kind = 0;
  uint32_t value = 0;
  int rc = 0;

  if (grace_ms > 0) {
    rc = tnef_helper_wait(seq, grace_ms, &kind, &value, &why);
  }
  if (rc == 0) {
    if (tnef_helper_send_kill(seq) < 0) {
      return 0;
    }
    rc = tnef_helper_wait(seq, TNEF_HELPER_ANSWER_MS, &kind, &value, &why);
  }

  if (rc > 0 && kind == TNEF_MSG_STATUS) {
    *status = (int) value;
    return 1;
  }
  tnef_helper_lost(rc > 0 ? "sent a malformed message" : why);
  return 0;
}

int mailoauth_tnef_helper_start(mailoauth_tnef_helper_init_fn init,
    void *arg) {
  const char *why = NULL;
  unsigned char kind = 0;
  uint32_t value = 0;
  pid_t pid, self = getpid();
  int sv[2], rc, xerrno;

  if (tnef_helper_usable()) {
    errno = EBUSY;
    return -1;
  }
  tnef_helper_forget();

  if (socketpair(AF_UNIX, SOCK_SEQPACKET|SOCK_CLOEXEC, 0, sv) < 0) {
    return -1;
  }
  if (tnef_fd_above_stdio(&sv[0]) < 0 || tnef_fd_above_stdio(&sv[1]) < 0) {
    xerrno = errno;
    (void) close(sv[0]);
    (void) close(sv[1]);
    errno = xerrno;
    return -1;
  }

  pid = fork();
  if (pid < 0) {
    xerrno = errno;
    (void) close(sv[0]);
    (void) close(sv[1]);
    errno = xerrno;
    return -1;
  }
  if (pid == 0) {
    (void) close(sv[0]);
    if (tnef_helper_program != NULL) {
      mailoauth_spawn_exec(tnef_helper_program, tnef_helper_argv,
        tnef_helper_envp, &sv[1], 1);
    }
    mailoauth_tnef_helper_main(sv[1], self, init, arg);
  }

  (void) close(sv[1]);
  tnef_helper_sock = sv[0];
  tnef_helper_child = pid;
  tnef_helper_owner = self;

  rc = tnef_helper_wait(0, TNEF_HELPER_ANSWER_MS, &kind, &value, &why);
  if (rc > 0 && kind == TNEF_MSG_READY) {
    mailoauth_trace(trace_channel, 3, "TNEF helper %ld ready", (long) pid);
    return tnef_helper_sock;
  }

  xerrno = rc == 0 ? ETIMEDOUT : rc > 0 && kind == TNEF_MSG_ERROR &&
    value > 0 && value < 4096 ? (int) value : ECHILD;
  mailoauth_trace(trace_channel, 3, "TNEF helper %ld did not start: %s",
    (long) pid, strerror(xerrno));
  tnef_helper_lost(NULL);
  errno = xerrno;
  return -1;
}

pid_t mailoauth_tnef_helper_pid(void) {
  return tnef_helper_usable() ? tnef_helper_child : -1;
}

int mailoauth_tnef_helper_stop(void) {
  pid_t pid = tnef_helper_child;
  int status = 0;

  if (!tnef_helper_usable()) {
    tnef_helper_forget();
    errno = ESRCH;
    return -1;
  }

  tnef_helper_forget();
  if (tnef_reap(pid, TNEF_HELPER_STOP_MS, &status) &&
      WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    return 0;
  }
  mailoauth_trace(trace_channel, 3, "TNEF helper %ld did not end by itself",
    (long) pid);
  errno = ECHILD;
  return -1;
}

/* The error for a stream cut short, from how the child ended. */
static int tnef_child_error(int known, int status) {
  if (!known) {
    mailoauth_trace(trace_channel, 3, "decoder ended without finishing, "
      "and its helper is gone");
    return ESRCH;
  }

  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);

    mailoauth_trace(trace_channel, 3, "decoder killed by signal %d (%s)%s",
      sig, strsignal(sig), sig == SIGXCPU ? ": CPU time limit" :
      sig == SIGSYS ? ": forbidden system call" : "");
    return sig == SIGXCPU ? ETIMEDOUT : ECHILD;
  }

  mailoauth_trace(trace_channel, 3, "decoder exited with status %d without "
    "finishing", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  return ECHILD;
}

/* Feeds r what comes down the pipe, until its end or timeout_ms of waiting
 * in all (*waited).  Returns 0, or the errno that stopped it.
 */
static int tnef_pump(int fd, struct mailoauth_tnef_reader *r,
    unsigned int timeout_ms, long long *waited) {
  unsigned char buf[TNEF_READ_CHUNK];

  for (;;) {
    struct pollfd pfd;
    long long t0, left = (long long) timeout_ms - *waited;
    ssize_t n;
    int rc;

    if (left <= 0) {
      return ETIMEDOUT;
    }

    pfd.fd = fd;
    pfd.events = POLLIN;
    pfd.revents = 0;
    t0 = tnef_now_ms();
    rc = poll(&pfd, 1, left > INT_MAX ? INT_MAX : (int) left);
    *waited += tnef_now_ms() - t0;
    if (rc < 0) {
      if (errno == EINTR) {
        continue;
      }
      return errno;
    }
    if (rc == 0) {
      return ETIMEDOUT;
    }

    n = read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) {
        continue;
      }
      return errno;
    }
    if (n == 0) {
      return 0;
    }
    if (mailoauth_tnef_reader_feed(r, buf, (size_t) n) < 0) {
      return errno;
    }
  }
}

/* Checks the arguments and the input's size; -1 with errno. */
static int tnef_unpack_check(int in_fd, const char *tmp_dir,
    mailoauth_tnef_file_fn cb, const struct mailoauth_tnef_limits *l,
    uint64_t *in_size) {
  struct stat st;

  if (in_fd < 0 || tmp_dir == NULL || cb == NULL) {
    errno = EINVAL;
    return -1;
  }
  if (fstat(in_fd, &st) < 0) {
    return -1;
  }
  if (!S_ISREG(st.st_mode)) {
    errno = EINVAL;
    return -1;
  }
  if ((uint64_t) st.st_size > l->max_input) {
    mailoauth_trace(trace_channel, 5, "winmail.dat of %llu bytes, over the "
      "limit of %llu", (unsigned long long) st.st_size,
      (unsigned long long) l->max_input);
    errno = EFBIG;
    return -1;
  }

  /* Never fork from here: this process may hold what no decoder should
   * see, which is what the helper is for.
   */
  if (!tnef_helper_usable()) {
    mailoauth_trace(trace_channel, 3, "no TNEF helper: winmail.dat not "
      "unpacked");
    errno = ESRCH;
    return -1;
  }

  *in_size = (uint64_t) st.st_size;
  return 0;
}

int mailoauth_tnef_unpack(int in_fd, const char *tmp_dir,
    const struct mailoauth_tnef_limits *lim, mailoauth_tnef_file_fn cb,
    void *arg, unsigned int *nfiles) {
  struct mailoauth_tnef_limits l;
  struct mailoauth_tnef_reader *r;
  uint64_t in_size = 0;
  long long waited = 0;
  int pipefd[2], xerrno = 0, status = 0, known;
  unsigned int count = 0;
  uint32_t seq = 0;
  pid_t pid;

  if (nfiles != NULL) {
    *nfiles = 0;
  }

  mailoauth_tnef_limits_resolve(lim, &l);
  if (tnef_unpack_check(in_fd, tmp_dir, cb, &l, &in_size) < 0) {
    return -1;
  }

  r = mailoauth_tnef_reader_new(tmp_dir, &l, cb, arg);
  if (r == NULL) {
    return -1;
  }

  if (pipe2(pipefd, O_CLOEXEC) < 0) {
    xerrno = errno;
    mailoauth_tnef_reader_free(r);
    errno = xerrno;
    return -1;
  }

  pid = tnef_helper_spawn(in_fd, pipefd[1], in_size, &l, &seq);
  xerrno = errno;
  (void) close(pipefd[1]);
  if (pid < 0) {
    (void) close(pipefd[0]);
    mailoauth_tnef_reader_free(r);
    errno = xerrno;
    return -1;
  }
  mailoauth_trace(trace_channel, 9, "decoder %ld unpacking %llu bytes",
    (long) pid, (unsigned long long) in_size);

  xerrno = tnef_pump(pipefd[0], r, l.timeout_ms, &waited);
  (void) close(pipefd[0]);

  if (xerrno != 0) {
    if (xerrno == ETIMEDOUT) {
      mailoauth_trace(trace_channel, 3, "decoder %ld took longer than %u ms, "
        "killed", (long) pid, l.timeout_ms);
    }
    (void) tnef_helper_collect(seq, 0, &status);
    (void) mailoauth_tnef_reader_finish(r, &count);

  } else {
    long long grace = (long long) l.timeout_ms - waited;

    known = tnef_helper_collect(seq, grace > 1000 ? grace : 1000, &status);
    if (mailoauth_tnef_reader_finish(r, &count) < 0) {
      xerrno = errno;
    }
    if (xerrno == ECHILD) {
      xerrno = tnef_child_error(known, status);

    } else if (known && (!WIFEXITED(status) || WEXITSTATUS(status) != 0)) {
      /* Its records are complete, but a decoder should end by itself once
       * it sent them: one killed by its filter on the way out tried a
       * system call it has no business making.
       */
      mailoauth_trace(trace_channel, 3, "decoder %ld did not exit cleanly "
        "after its end record (wait status 0x%x)", (long) pid, status);
    }
  }

  mailoauth_tnef_reader_free(r);
  if (nfiles != NULL) {
    *nfiles = count;
  }

  if (xerrno != 0) {
    mailoauth_trace(trace_channel, 5, "unpacking failed after %u files: %s",
      count, strerror(xerrno));
    errno = xerrno;
    return -1;
  }

  mailoauth_trace(trace_channel, 8, "unpacked %u files", count);
  return 0;
}
