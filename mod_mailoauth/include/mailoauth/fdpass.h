/*
 * mod_mailoauth - passing descriptors over a Unix socket
 *
 * The worker hands files to its helpers (the deposit helper, the TNEF
 * helper) as descriptors, never as paths a helper would have to trust.
 *
 * No ProFTPD headers.
 */

#ifndef MOD_MAILOAUTH_FDPASS_H
#define MOD_MAILOAUTH_FDPASS_H

#include <stddef.h>
#include <sys/types.h>

/* Most descriptors taken from one message; more are closed on arrival. */
#define MAILOAUTH_FDPASS_MAX    8

/* recvmsg() of one message into buf, with the SCM_RIGHTS descriptors it
 * carries stored in fds (at most maxfds <= MAILOAUTH_FDPASS_MAX, received
 * close-on-exec; any more are closed).  *truncated is set when the kernel
 * cut the data or the descriptors (MSG_TRUNC, MSG_CTRUNC).  Returns the bytes received (0: the
 * peer closed), or -1 with errno.
 */
ssize_t mailoauth_fdpass_recv(int sock, void *buf, size_t bufsz, int flags,
  int *fds, int maxfds, int *nfds, int *truncated);

/* sendmsg() of one message of len bytes with nfds descriptors (SCM_RIGHTS,
 * nfds <= MAILOAUTH_FDPASS_MAX, 0 for none); never SIGPIPE.  Returns 0, or
 * -1 with errno (EIO: the message went out short).
 */
int mailoauth_fdpass_send(int sock, const void *buf, size_t len,
  const int *fds, int nfds);

#endif /* MOD_MAILOAUTH_FDPASS_H */
