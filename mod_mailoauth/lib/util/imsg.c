/*
 * mod_mailoauth - one message framing for the traffic between its processes
 */

#include "mailoauth/imsg.h"
#include "mailoauth/fdpass.h"
#include "mailoauth/spawn.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void imsg_put32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char) (v >> 24);
  p[1] = (unsigned char) (v >> 16);
  p[2] = (unsigned char) (v >> 8);
  p[3] = (unsigned char) v;
}

static uint32_t imsg_get32(const unsigned char *p) {
  return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) |
    ((uint32_t) p[2] << 8) | p[3];
}

int mailoauth_imsg_socketpair(int sv[2]) {
  if (socketpair(AF_UNIX, SOCK_SEQPACKET|SOCK_CLOEXEC, 0, sv) < 0) {
    return -1;
  }

  if (mailoauth_spawn_fd_above_stdio(&sv[0]) < 0 ||
      mailoauth_spawn_fd_above_stdio(&sv[1]) < 0) {
    int xerrno = errno;

    (void) close(sv[0]);
    (void) close(sv[1]);
    errno = xerrno;
    return -1;
  }

  return 0;
}

int mailoauth_imsg_send(int sock, uint32_t type, uint32_t id,
    const void *data, size_t len, const int *fds, int nfds) {
  unsigned char *buf;
  int res, xerrno;

  if (len > MAILOAUTH_IMSG_MAX) {
    errno = EMSGSIZE;
    return -1;
  }

  buf = malloc(MAILOAUTH_IMSG_HDR + len);
  if (buf == NULL) {
    return -1;
  }

  imsg_put32(buf, type);
  imsg_put32(buf + 4, (uint32_t) len);
  imsg_put32(buf + 8, id);
  imsg_put32(buf + 12, 0);
  if (len > 0) {
    memcpy(buf + MAILOAUTH_IMSG_HDR, data, len);
  }

  res = mailoauth_fdpass_send(sock, buf, MAILOAUTH_IMSG_HDR + len, fds,
    nfds);
  xerrno = errno;
  free(buf);
  errno = xerrno;
  return res;
}

void mailoauth_imsg_close_fds(struct mailoauth_imsg *msg) {
  int i;

  for (i = 0; i < msg->nfds; i++) {
    if (msg->fds[i] >= 0) {
      (void) close(msg->fds[i]);
      msg->fds[i] = -1;
    }
  }
  msg->nfds = 0;
}

int mailoauth_imsg_recv(int sock, struct mailoauth_imsg *msg, void *buf,
    size_t bufsz, int flags) {
  unsigned char *p = buf;
  int truncated = 0;
  ssize_t n;

  memset(msg, 0, sizeof(*msg));
  n = mailoauth_fdpass_recv(sock, buf, bufsz, flags, msg->fds,
    (int) (sizeof(msg->fds) / sizeof(msg->fds[0])), &msg->nfds, &truncated);
  if (n <= 0) {
    return n == 0 ? 0 : -1;
  }

  if (truncated ||
      (size_t) n < MAILOAUTH_IMSG_HDR ||
      imsg_get32(p + 4) != (uint32_t) ((size_t) n - MAILOAUTH_IMSG_HDR) ||
      imsg_get32(p + 12) != 0) {
    mailoauth_imsg_close_fds(msg);
    errno = EBADMSG;
    return -1;
  }

  msg->type = imsg_get32(p);
  msg->id = imsg_get32(p + 8);
  msg->len = (size_t) n - MAILOAUTH_IMSG_HDR;
  msg->data = p + MAILOAUTH_IMSG_HDR;
  return 1;
}
