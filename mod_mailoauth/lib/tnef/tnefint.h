/*
 * mod_mailoauth - winmail.dat: what tnef.c, tnefdecode.c and tnefhelper.c
 * share (private to them)
 *
 * This program is free software; you can redistribute it and/or modify
 * it under the terms of the GNU General Public License as published by
 * the Free Software Foundation; either version 2 of the License, or
 * (at your option) any later version.
 *
 * tnef.c is the public side (tnef.h) and runs in the parent: the limits,
 * the reader of the decoder's records, unpacking through the helper.
 * tnefdecode.c is the decoder, tnefhelper.c the decoder's sandboxed child
 * and the TNEF helper that forks it, with the socket messages both sides
 * of the helper speak.
 *
 * The parent and the child speak over a pipe, in records:
 *   'F' codepage:u32 name_len:u32 name data_len:u64 data   one file
 *   'E' status:u32 reserved:u32 (0)                         the end
 * (little-endian).  The child sends files only once the whole stream was
 * decoded and found within the limits, then one end record, then exits.
 * Nothing in them says whether the child was sandboxed: the child is not
 * to be believed about that; the helper checked it before the child got
 * its input.
 */

#ifndef MOD_MAILOAUTH_TNEFINT_H
#define MOD_MAILOAUTH_TNEFINT_H

#include "mailoauth/tnef.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The Windows code page number of UTF-8. */
#define TNEF_CP_UTF8            65001

/* Records between the child and the parent. */
#define TNEF_REC_FILE           'F'
#define TNEF_REC_END            'E'

/* Status in the end record (not errno values: the parent maps them, and
 * anything else is garbage).
 */
#define TNEF_ST_OK              0
#define TNEF_ST_BADMSG          1
#define TNEF_ST_FBIG            2
#define TNEF_ST_NOMEM           3
#define TNEF_ST_INPUT           4       /* the child could not read its input */
#define TNEF_ST_MAX             4

/* Messages between the parent and the helper (see tnefhelper.c). */
#define TNEF_MSG_UNPACK         'U'
#define TNEF_MSG_KILL           'K'
#define TNEF_MSG_READY          'R'
#define TNEF_MSG_PID            'P'
#define TNEF_MSG_STATUS         'S'
#define TNEF_MSG_NOSANDBOX      'N'
#define TNEF_MSG_ERROR          'X'

/* Why no decoder runs under a verified filter (the value of an 'N'). */
#define TNEF_NOSB_ARCH          1       /* none built for this machine */
#define TNEF_NOSB_INSTALL       2       /* the child could not install it */
#define TNEF_NOSB_UNFILTERED    3       /* /proc shows no filter of its own */
#define TNEF_NOSB_PROC          4       /* /proc/PID/status unreadable */
#define TNEF_NOSB_INHERITED     5       /* the helper is filtered already and
                                         * the kernel counts no filters */
#define TNEF_NOSB_MAX           5

/* The "Seccomp:" of /proc/PID/status for a process under a filter. */
#define TNEF_PROC_SECCOMP_FILTER 2

#define TNEF_UNPACK_LEN         45
#define TNEF_KILL_LEN           5
#define TNEF_ANSWER_LEN         9

/* Descriptors that come with an unpack request: the input and the pipe. */
#define TNEF_HELPER_FDS         2

/* Little-endian fields (tnef.c). */
uint32_t mailoauth_tnef_get32(const unsigned char *p);
uint64_t mailoauth_tnef_get64(const unsigned char *p);
void mailoauth_tnef_put32(unsigned char *p, uint32_t v);
void mailoauth_tnef_put64(unsigned char *p, uint64_t v);

/* *out becomes *in with every zero field (or all, for a NULL in) at its
 * default (tnef.c).
 */
void mailoauth_tnef_limits_resolve(const struct mailoauth_tnef_limits *in,
  struct mailoauth_tnef_limits *out);

/* One message on the helper's socket, sent or received, with its
 * descriptors (tnefhelper.c, which says how).
 */
int mailoauth_tnef_sock_send(int sock, const void *buf, size_t len,
  const int *fds, int nfds);
ssize_t mailoauth_tnef_sock_recv(int sock, void *buf, size_t bufsz, int *fds,
  int maxfds, int *nfds);

/* The seccomp mode (0, 1 or 2) in the text of a /proc/PID/status, -1 when
 * there is none; *filters (may be NULL) gets its Seccomp_filters, -1 when
 * there is none (kernels before 5.9) (tnefhelper.c).
 */
int mailoauth_tnef_status_seccomp(const char *text, long *filters);

/* The helper's process, forked by mailoauth_tnef_helper_start() with sock
 * its end of the socket and parent the pid of the process that forked it;
 * it never returns (tnefhelper.c).
 */
void mailoauth_tnef_helper_main(int sock, pid_t parent,
  mailoauth_tnef_helper_init_fn init, void *arg)
#ifdef __GNUC__
  __attribute__((noreturn))
#endif
  ;

#endif /* MOD_MAILOAUTH_TNEFINT_H */
