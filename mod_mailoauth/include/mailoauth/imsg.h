/*
 * mod_mailoauth - one message framing for the traffic between its processes
 *
 * In the manner of OpenBSD's imsg: every message between two of the
 * module's processes is a fixed header (type, length, request id) and a
 * payload, sent as one datagram of a SOCK_SEQPACKET socket together with
 * the descriptors it carries.  A receiver never has to find where a message
 * ends, and a message cannot be cut or run into the next.
 *
 *   offset 0  u32 type       what the payload is (the protocol's own list)
 *          4  u32 len        payload bytes that follow the header
 *          8  u32 id         pairs a reply with its request
 *         12  u32 reserved   0
 *         16  payload
 *
 * All numbers big-endian.  No ProFTPD headers.
 */

#ifndef MOD_MAILOAUTH_IMSG_H
#define MOD_MAILOAUTH_IMSG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define MAILOAUTH_IMSG_HDR      16

/* Largest payload (the socket's datagrams stay well below its buffer). */
#define MAILOAUTH_IMSG_MAX      (64 * 1024)

struct mailoauth_imsg {
  uint32_t type;
  uint32_t id;
  size_t len;                   /* payload bytes in data */
  unsigned char *data;          /* points into the caller's buffer */
  int fds[8];                   /* received descriptors, close-on-exec */
  int nfds;
};

/* A SOCK_SEQPACKET socketpair, close-on-exec, both ends above 2. */
int mailoauth_imsg_socketpair(int sv[2]);

/* Sends one message with nfds descriptors (the caller keeps its own).
 * 0, or -1 with errno (EMSGSIZE: payload over MAILOAUTH_IMSG_MAX).
 */
int mailoauth_imsg_send(int sock, uint32_t type, uint32_t id,
  const void *data, size_t len, const int *fds, int nfds);

/* Receives one message into buf (bufsz >= MAILOAUTH_IMSG_HDR + the largest
 * payload expected) and fills msg.  Returns 1, 0 when the peer has closed,
 * or -1 with errno: EBADMSG for a message that is cut, shorter than its
 * header says, or carries a non-zero reserved field (its descriptors are
 * closed); EINTR/EAGAIN as recvmsg() gives them.
 */
int mailoauth_imsg_recv(int sock, struct mailoauth_imsg *msg, void *buf,
  size_t bufsz, int flags);

/* Closes the descriptors a message brought that the caller did not take
 * (set msg->fds[i] to -1 for those it keeps).
 */
void mailoauth_imsg_close_fds(struct mailoauth_imsg *msg);

#endif /* MOD_MAILOAUTH_IMSG_H */
