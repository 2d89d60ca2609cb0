/*
 * mod_mailoauth - passing descriptors over a Unix socket
 *
 * This program is free software; you can redistribute it and/or modify
 * it under the terms of the GNU General Public License as published by
 * the Free Software Foundation; either version 2 of the License, or
 * (at your option) any later version.
 */

#include "mailoauth/fdpass.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

ssize_t mailoauth_fdpass_recv(int sock, void *buf, size_t bufsz, int flags,
    int *fds, int maxfds, int *nfds, int *truncated) {
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * MAILOAUTH_FDPASS_MAX)];
  } control;
  struct msghdr msg;
  struct cmsghdr *cmsg;
  struct iovec iov;
  ssize_t n;

  *nfds = 0;
  *truncated = 0;
  if (maxfds > MAILOAUTH_FDPASS_MAX) {
    maxfds = MAILOAUTH_FDPASS_MAX;
  }

  memset(&msg, 0, sizeof(msg));
  iov.iov_base = buf;
  iov.iov_len = bufsz;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.buf;
  msg.msg_controllen = sizeof(control.buf);

  n = recvmsg(sock, &msg, flags|MSG_CMSG_CLOEXEC);
  if (n < 0) {
    return -1;
  }

  for (cmsg = CMSG_FIRSTHDR(&msg); cmsg != NULL;
       cmsg = CMSG_NXTHDR(&msg, cmsg)) {
    size_t i, count;

    if (cmsg->cmsg_level != SOL_SOCKET ||
        cmsg->cmsg_type != SCM_RIGHTS) {
      continue;
    }

    count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (i = 0; i < count; i++) {
      int fd;

      memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
      if (*nfds < maxfds) {
        fds[(*nfds)++] = fd;
      } else {
        /* Descriptors nobody asked for must not pile up here. */
        (void) close(fd);
      }
    }
  }

  if (msg.msg_flags & (MSG_TRUNC|MSG_CTRUNC)) {
    *truncated = 1;
  }

  return n;
}

int mailoauth_fdpass_send(int sock, const void *buf, size_t len,
    const int *fds, int nfds) {
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * MAILOAUTH_FDPASS_MAX)];
  } control;
  struct msghdr msg;
  struct iovec iov;
  ssize_t n;

  if (nfds < 0 || nfds > MAILOAUTH_FDPASS_MAX) {
    errno = EINVAL;
    return -1;
  }

  memset(&msg, 0, sizeof(msg));
  iov.iov_base = (void *) buf;
  iov.iov_len = len;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;

  if (nfds > 0) {
    struct cmsghdr *cmsg;

    memset(&control, 0, sizeof(control));
    msg.msg_control = control.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t) nfds);
    cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * (size_t) nfds);
    memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * (size_t) nfds);
  }

  do {
    n = sendmsg(sock, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);

  if (n < 0) {
    return -1;
  }
  if ((size_t) n != len) {
    errno = EIO;
    return -1;
  }
  return 0;
}
