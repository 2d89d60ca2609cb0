/*
 * mod_mailoauth - winmail.dat: the decoder's sandbox and the TNEF helper
 *
 * This program is free software; you can redistribute it and/or modify
 * it under the terms of the GNU General Public License as published by
 * the Free Software Foundation; either version 2 of the License, or
 * (at your option) any later version.
 *
 * The child is forked by the TNEF helper, not by the parent, and the
 * parent talks to the helper over a SOCK_SEQPACKET socket in imsg
 * messages (imsg.h: the kind letter is the type, seq the id, the other
 * fields little-endian in the payload):
 *   'U' seq:u32 in_size:u64 max_input:u64 max_files:u32 max_file_bytes:u64
 *       max_total_bytes:u64 timeout_ms:u32, with the input and the pipe's
 *       write end (SCM_RIGHTS)                     fork a decoder
 *   'K' seq:u32                                    kill it
 * and the helper answers kind:u8 seq:u32 value:u32, kind being 'R' (ready,
 * seq 0), 'P' (the decoder's pid), 'S' (its wait status, once reaped: one
 * for every 'P'), 'N' (a TNEF_NOSB_* reason: no decoder runs under a
 * verified filter) or 'X' (an errno: no decoder).  Only the helper kills
 * and reaps decoders, so a pid it kills is never one the kernel reused.
 *
 * The decoder is given no input until the helper has seen, from outside,
 * that it runs under a seccomp filter: the child installs its filter, says
 * so on a socket to the helper and waits for a go byte, even for an empty
 * input, so that it is still there, blocked and filtered, when the helper
 * reads its /proc/PID/status (the child cannot forge it, and cannot be
 * replaced: it is not reaped yet); only then does the helper answer 'P'
 * and send the go byte and the input down that socket.  What the child
 * says about itself is never believed.
 *
 * The records the child sends down its pipe are described in tnefint.h.
 */

#ifndef _GNU_SOURCE
# define _GNU_SOURCE
#endif

#include "mailoauth/io.h"
#include "mailoauth/tnef.h"
#include "tnefint.h"
#include "mailoauth/spawn.h"
#include "mailoauth/imsg.h"
#include "mailoauth/spool.h"
#include "mailoauth/trace.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef __linux__
# include <sys/prctl.h>
# include <linux/audit.h>
# include <linux/filter.h>
# include <linux/seccomp.h>
#endif

#include "mailoauth/seccomp.h"

/* Descriptors in the child: its socket to the helper, where the input
 * comes once its filter was verified, and its pipe to the parent.
 */
#define TNEF_CHILD_IN_FD        3
#define TNEF_CHILD_OUT_FD       4

/* What the child sends the helper once its filter is installed, and what
 * the helper sends back, ahead of the input, once it verified the filter.
 */
#define TNEF_CHILD_ARMED        'A'
#define TNEF_CHILD_GO           'G'

/* How long the helper waits for a child to be armed: it has done nothing
 * but set itself up since the fork.
 */
#define TNEF_CHILD_ARM_MS       3000

/* The child's memory: its address space as forked, plus this, plus four
 * times the input (the input itself, libytnef's copies, the records).
 */
#define TNEF_CHILD_MEM_BASE     ((uint64_t) 256 << 20)
#define TNEF_CHILD_MEM_MAX      ((uint64_t) 4 << 30)

/* Exit status of a child that could not write to the pipe (any status
 * without an end record is an error anyway), and of one that could not
 * install its filter.
 */
#define TNEF_CHILD_EXIT_WRITE   2
#define TNEF_CHILD_EXIT_FILTER  3

/* The helper's socket, in the helper. */
#define TNEF_HELPER_SOCK_FD     3

/* A test hook: with MAILOAUTH_TEST_NO_SECCOMP set in the helper's
 * environment when it starts, decoders skip installing their filter and
 * go on as if they had, so that the tests can show the helper's check
 * catches it (nothing is then decoded).  Read once, before the environment
 * is wiped; a helper started otherwise must pass the variable on for the
 * tests to work.
 */
#define TNEF_TEST_NO_SECCOMP_ENV        "MAILOAUTH_TEST_NO_SECCOMP"
static int tnef_test_no_seccomp = 0;

/* ------------------------------------------------------------------------
 * The child.  Everything here runs after fork() and ends in the
 * exit_group system call (see tnef_child()): no tracing, no exit handlers.
 */

static int tnef_child_send(const struct mailoauth_tnef_file *f, void *arg) {
  unsigned char hdr[1 + 8];
  unsigned char size[8];
  int fd = *(int *) arg;

  hdr[0] = TNEF_REC_FILE;
  mailoauth_tnef_put32(hdr + 1, f->codepage);
  mailoauth_tnef_put32(hdr + 5, (uint32_t) f->name_len);
  mailoauth_tnef_put64(size, f->size);

  if (mailoauth_io_write_all(fd, hdr, sizeof(hdr)) < 0 ||
      mailoauth_io_write_all(fd, f->name, f->name_len) < 0 ||
      mailoauth_io_write_all(fd, size, sizeof(size)) < 0 ||
      mailoauth_io_write_all(fd, f->data, (size_t) f->size) < 0) {
    return -1;
  }
  return 0;
}


/* 0, 1 and 2 become /dev/null (closed if it cannot be opened), so that
 * nothing written there reaches a descriptor of the parent's.
 */
static void tnef_stdio_null(void) {
  int null_fd = open("/dev/null", O_RDWR);

  if (null_fd >= 0) {
    (void) dup2(null_fd, 0);
    (void) dup2(null_fd, 1);
    (void) dup2(null_fd, 2);
  } else {
    (void) close(0);
    (void) close(1);
    (void) close(2);
  }
}

/* Only the socket to the helper and the pipe stay, as 3 and 4; 0, 1 and
 * 2 become /dev/null, where libytnef's printf()s go.
 */
static int tnef_child_fds(int in_fd, int out_fd) {
  int in2, out2;

  in2 = fcntl(in_fd, F_DUPFD, 10);
  out2 = fcntl(out_fd, F_DUPFD, 10);
  if (in2 < 0 || out2 < 0) {
    return -1;
  }

  tnef_stdio_null();
  if (dup2(in2, TNEF_CHILD_IN_FD) < 0 || dup2(out2, TNEF_CHILD_OUT_FD) < 0) {
    return -1;
  }
  mailoauth_spawn_close_from(TNEF_CHILD_OUT_FD + 1);

  /* Unbuffered: nothing held in memory, and no fstat() on first use,
   * which the seccomp filter would punish.
   */
  (void) setvbuf(stdout, NULL, _IONBF, 0);
  (void) setvbuf(stderr, NULL, _IONBF, 0);
  return 0;
}

static void tnef_child_signals(void) {
  struct sigaction sa;
  sigset_t none;
  int sig;

  /* The worker's handlers would only set flags nobody reads here, and a
   * parent that went away should take the child with it (SIGPIPE).
   */
  memset(&sa, 0, sizeof(sa));
  sigemptyset(&sa.sa_mask);
  sa.sa_handler = SIG_DFL;
  for (sig = 1; sig < NSIG; sig++) {
    (void) sigaction(sig, &sa, NULL);
  }
  sigemptyset(&none);
  (void) sigprocmask(SIG_SETMASK, &none, NULL);
}

/* Bytes of address space in use, or 0 when unknown. */
static uint64_t tnef_child_vm_size(void) {
  char buf[128];
  unsigned long long pages;
  long pagesz = sysconf(_SC_PAGESIZE);
  ssize_t n;
  int fd;

  fd = open("/proc/self/statm", O_RDONLY|O_CLOEXEC);
  if (fd < 0) {
    return 0;
  }
  n = read(fd, buf, sizeof(buf) - 1);
  (void) close(fd);
  if (n <= 0 || pagesz <= 0) {
    return 0;
  }
  buf[n] = '\0';
  if (sscanf(buf, "%llu", &pages) != 1) {
    return 0;
  }
  return (uint64_t) pages * (uint64_t) pagesz;
}

/* Lowers a limit (never raises it: that would fail). */
static void tnef_child_limit(int resource, uint64_t soft, uint64_t hard) {
  struct rlimit rl;

  if (getrlimit(resource, &rl) < 0) {
    return;
  }
  if (rl.rlim_max == RLIM_INFINITY || hard < (uint64_t) rl.rlim_max) {
    rl.rlim_max = (rlim_t) hard;
  }
  rl.rlim_cur = soft < (uint64_t) rl.rlim_max ? (rlim_t) soft : rl.rlim_max;
  (void) setrlimit(resource, &rl);
}

static void tnef_child_limits(uint64_t in_size, unsigned int timeout_ms) {
  uint64_t vm = tnef_child_vm_size(), budget;

  if (vm > 0) {
    budget = TNEF_CHILD_MEM_BASE + 4 * in_size;
    if (budget > TNEF_CHILD_MEM_MAX) {
      budget = TNEF_CHILD_MEM_MAX;
    }
    tnef_child_limit(RLIMIT_AS, vm + budget, vm + budget);
  }

  /* SIGXCPU at the soft limit, which the parent reports as a timeout; the
   * hard one (SIGKILL) only for a child that ignores it.
   */
  tnef_child_limit(RLIMIT_CPU, timeout_ms / 1000 + 1, timeout_ms / 1000 + 2);
  tnef_child_limit(RLIMIT_CORE, 0, 0);
  tnef_child_limit(RLIMIT_FSIZE, 0, 0);
  tnef_child_limit(RLIMIT_NOFILE, TNEF_CHILD_OUT_FD + 1,
    TNEF_CHILD_OUT_FD + 1);
#ifdef RLIMIT_NPROC
  tnef_child_limit(RLIMIT_NPROC, 0, 0);
#endif
}

#ifdef MAILOAUTH_SECCOMP_ARCH

/* The child is a copy of the helper, which never held the worker's
 * secrets, but it still reads hostile input: whatever libytnef's bugs
 * allow, it gets to allocate memory, read and write the descriptors it
 * has (the socket to the helper, the pipe and /dev/null) and exit.  No
 * open(), no socket(), no kill(), no execve().
 */
static int tnef_child_seccomp(void) {
  struct sock_filter filter[] = {
    MAILOAUTH_SECCOMP_PROLOGUE,
    MAILOAUTH_SECCOMP_ALLOW(__NR_read),
    MAILOAUTH_SECCOMP_ALLOW(__NR_write),
# ifdef __NR_writev
    MAILOAUTH_SECCOMP_ALLOW(__NR_writev),
# endif
# ifdef __NR_brk
    MAILOAUTH_SECCOMP_ALLOW(__NR_brk),
# endif
# ifdef __NR_mmap
    MAILOAUTH_SECCOMP_ALLOW_NOEXEC(__NR_mmap, MAILOAUTH_SECCOMP_KILL),
# endif
# ifdef __NR_mmap2
    MAILOAUTH_SECCOMP_ALLOW_NOEXEC(__NR_mmap2, MAILOAUTH_SECCOMP_KILL),
# endif
    MAILOAUTH_SECCOMP_ALLOW_NOEXEC(__NR_mprotect, MAILOAUTH_SECCOMP_KILL),
    MAILOAUTH_SECCOMP_ALLOW(__NR_munmap),
    MAILOAUTH_SECCOMP_ALLOW(__NR_mremap),
    MAILOAUTH_SECCOMP_ALLOW(__NR_madvise),
    MAILOAUTH_SECCOMP_ALLOW(__NR_futex),
    MAILOAUTH_SECCOMP_ALLOW(__NR_close),
# ifdef __NR_clock_gettime
    MAILOAUTH_SECCOMP_ALLOW(__NR_clock_gettime),
# endif
# ifdef __NR_rt_sigreturn
    MAILOAUTH_SECCOMP_ALLOW(__NR_rt_sigreturn),
# endif
    MAILOAUTH_SECCOMP_ALLOW(__NR_exit),
    MAILOAUTH_SECCOMP_ALLOW(__NR_exit_group),
    BPF_STMT(BPF_RET|BPF_K, MAILOAUTH_SECCOMP_KILL)
  };
  struct sock_fprog prog;

  prog.len = (unsigned short) (sizeof(filter) / sizeof(filter[0]));
  prog.filter = filter;
  return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}

# define TNEF_HAVE_FILTER      1

#else

/* No filter for this machine: no decoder is ever forked (see
 * tnef_helper_serve()), rather than one run without it.
 */
# define TNEF_HAVE_FILTER      0

static int tnef_child_seccomp(void) {
  errno = ENOSYS;
  return -1;
}

#endif /* MAILOAUTH_SECCOMP_ARCH */

static int tnef_child_status(int xerrno) {
  switch (xerrno) {
    case 0:
      return TNEF_ST_OK;
    case EFBIG:
      return TNEF_ST_FBIG;
    case ENOMEM:
      return TNEF_ST_NOMEM;
    default:
      return TNEF_ST_BADMSG;
  }
}

static void tnef_child(int in_fd, int out_fd, uint64_t in_size,
    const struct mailoauth_tnef_limits *lim, pid_t parent)
#ifdef __GNUC__
  __attribute__((noreturn))
#endif
  ;

/* The decoder, from its setup to its end record; returns its exit status.
 * in_fd is the socket to the helper, out_fd the pipe to the parent.
 */
static int tnef_child_run(int in_fd, int out_fd, uint64_t in_size,
    const struct mailoauth_tnef_limits *lim, pid_t parent) {
  unsigned char end[1 + 8], armed = TNEF_CHILD_ARMED, go = 0;
  unsigned char *buf = NULL;
  int status = TNEF_ST_OK, out = TNEF_CHILD_OUT_FD;
  size_t got = 0;

  tnef_child_signals();

#ifdef PR_SET_PDEATHSIG
  /* A helper killed mid-way should not leave a decoder behind. */
  (void) prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
  if (getppid() != parent) {
    return 1;
  }
#else
  (void) parent;
#endif
#ifdef PR_SET_NAME
  /* Told apart from its helper in ps. */
  (void) prctl(PR_SET_NAME, "tnef decoder", 0, 0, 0);
#endif

  if (tnef_child_fds(in_fd, out_fd) < 0) {
    return 1;
  }

  tnef_child_limits(in_size, lim->timeout_ms);

#ifdef __linux__
  /* No ptrace by others of the same user (FTP sessions may run as it):
   * what it decodes is someone's mail.
   */
  (void) prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
#endif

  /* A helper that kept a saved root identity must not hand it on. */
  if (setresgid(getegid(), getegid(), getegid()) < 0 ||
      setresuid(geteuid(), geteuid(), geteuid()) < 0) {
    return 1;
  }

#ifdef PR_SET_NO_NEW_PRIVS
  (void) prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
#endif
  if (!tnef_test_no_seccomp && tnef_child_seccomp() < 0) {
    return TNEF_CHILD_EXIT_FILTER;
  }

  /* The helper checks the filter from outside before any input comes;
   * until it says go, nothing else is done, whatever the input's size.
   */
  if (mailoauth_io_write_all(TNEF_CHILD_IN_FD, &armed, 1) < 0) {
    return 1;
  }
  for (;;) {
    ssize_t n = read(TNEF_CHILD_IN_FD, &go, 1);

    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n != 1 || go != TNEF_CHILD_GO) {
      return 1;
    }
    break;
  }

  buf = malloc(in_size > 0 ? (size_t) in_size : 1);
  if (buf == NULL) {
    status = TNEF_ST_NOMEM;
  }
  while (buf != NULL && got < in_size) {
    ssize_t n = read(TNEF_CHILD_IN_FD, buf + got, (size_t) in_size - got);

    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      status = TNEF_ST_INPUT;
      break;
    }
    got += (size_t) n;
  }
  (void) close(TNEF_CHILD_IN_FD);

  if (status == TNEF_ST_OK) {
    if (mailoauth_tnef_decode_mem(buf, (size_t) in_size, lim,
        tnef_child_send, &out, NULL) < 0) {
      if (errno == EPIPE) {
        return TNEF_CHILD_EXIT_WRITE;
      }
      status = tnef_child_status(errno);
    }
  }

  end[0] = TNEF_REC_END;
  mailoauth_tnef_put32(end + 1, (uint32_t) status);
  mailoauth_tnef_put32(end + 5, 0);
  if (mailoauth_io_write_all(out, end, sizeof(end)) < 0) {
    return TNEF_CHILD_EXIT_WRITE;
  }
  return 0;
}

/* Runs the decoder and ends with its exit status, by the exit_group
 * system call itself rather than _exit(): builds with AddressSanitizer
 * run runtime code before any call to a function that does not return (it
 * asks sigaltstack() about the signal stack), which the filter punishes
 * with SIGSYS.  The decoder would die of its filter instead of exiting,
 * and while it dies the kernel shows it as no longer filtered
 * ("Seccomp: 3").  Hence also no return-less helper for this: the compiler
 * would see that it does not return.
 */
static void tnef_child(int in_fd, int out_fd, uint64_t in_size,
    const struct mailoauth_tnef_limits *lim, pid_t parent) {
  int code = tnef_child_run(in_fd, out_fd, in_size, lim, parent);

  for (;;) {
    (void) syscall(SYS_exit_group, code);
  }
}

/* ------------------------------------------------------------------------
 * Whether a process runs under a seccomp filter, from /proc.
 */

/* A field "Name:\t<number>" of a /proc status text; -1 when it is missing
 * or not a number.
 */
static long tnef_status_field(const char *text, const char *name) {
  size_t len = strlen(name);
  const char *p = text;

  while (p != NULL && *p != '\0') {
    if (strncmp(p, name, len) == 0 && p[len] == ':') {
      const char *q = p + len + 1;
      long v = 0;

      while (*q == ' ' || *q == '\t') {
        q++;
      }
      if (*q < '0' || *q > '9') {
        return -1;
      }
      while (*q >= '0' && *q <= '9') {
        if (v > 1000000L) {
          return -1;
        }
        v = v * 10 + (*q++ - '0');
      }
      return *q == '\n' || *q == '\0' ? v : -1;
    }
    p = strchr(p, '\n');
    if (p != NULL) {
      p++;
    }
  }
  return -1;
}

int mailoauth_tnef_status_seccomp(const char *text, long *filters) {
  long mode = tnef_status_field(text, "Seccomp");

  if (filters != NULL) {
    *filters = tnef_status_field(text, "Seccomp_filters");
  }
  return mode >= 0 && mode <= 2 ? (int) mode : -1;
}

/* /proc/<pid>/status (pid 0: this process's), NUL-terminated; -1 with
 * errno.
 */
static int tnef_proc_status(pid_t pid, char *buf, size_t bufsz) {
  char path[64];
  size_t got = 0;
  int fd;

  if (pid == 0) {
    snprintf(path, sizeof(path), "/proc/self/status");
  } else {
    snprintf(path, sizeof(path), "/proc/%ld/status", (long) pid);
  }
  fd = open(path, O_RDONLY|O_CLOEXEC|O_NOFOLLOW);
  if (fd < 0) {
    return -1;
  }
  while (got < bufsz - 1) {
    ssize_t n = read(fd, buf + got, bufsz - 1 - got);

    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      int xerrno = errno;

      (void) close(fd);
      errno = xerrno;
      return -1;
    }
    if (n == 0) {
      break;
    }
    got += (size_t) n;
  }
  (void) close(fd);
  buf[got] = '\0';
  return 0;
}

/* 0 when the decoder pid (a child not yet reaped, so the pid is surely
 * it) runs under a seccomp filter of its own, else a TNEF_NOSB_* reason.
 * A helper already filtered by whoever started the daemon passes its
 * filter on: the child's mode alone then proves nothing, its count of
 * filters must be above the helper's.
 */
static uint32_t tnef_helper_verify(pid_t pid) {
  char buf[8192];
  long filters = -1, own_filters = -1;
  int mode, own;

  if (tnef_proc_status(pid, buf, sizeof(buf)) < 0) {
    return TNEF_NOSB_PROC;
  }
  mode = mailoauth_tnef_status_seccomp(buf, &filters);
  if (mode != TNEF_PROC_SECCOMP_FILTER) {
    return TNEF_NOSB_UNFILTERED;
  }

  if (tnef_proc_status(0, buf, sizeof(buf)) < 0) {
    return TNEF_NOSB_PROC;
  }
  own = mailoauth_tnef_status_seccomp(buf, &own_filters);
  if (own <= 0) {
    return 0;
  }
  if (filters < 0 || own_filters < 0) {
    return TNEF_NOSB_INHERITED;
  }
  return filters > own_filters ? 0 : TNEF_NOSB_UNFILTERED;
}

/* ------------------------------------------------------------------------
 * Messages on the helper's socket, for both sides.
 */

static void tnef_close_fds(const int *fds, int nfds) {
  int i;

  for (i = 0; i < nfds; i++) {
    (void) close(fds[i]);
  }
}

/* Every message is an imsg (imsg.h): its kind byte is the type, its
 * sequence number the id, the rest the payload.  The buffers here keep the
 * kind + sequence + payload layout the protocol code reads and writes.
 */

/* Sends one message, with nfds descriptors (SCM_RIGHTS; nfds may be 0). */
int mailoauth_tnef_sock_send(int sock, const void *buf, size_t len,
    const int *fds, int nfds) {
  const unsigned char *p = buf;

  if (nfds > TNEF_HELPER_FDS ||
      len < TNEF_KILL_LEN) {
    errno = EINVAL;
    return -1;
  }
  return mailoauth_imsg_send(sock, p[0], mailoauth_tnef_get32(p + 1),
    p + TNEF_KILL_LEN, len - TNEF_KILL_LEN, fds, nfds);
}

/* Receives one message; up to maxfds descriptors that came with it go to
 * fds (any others are closed).  Returns its length, 0 at end of file, or
 * -1 with errno (EMSGSIZE for a message that did not fit or is not an
 * imsg at all, whose descriptors are closed).
 */
ssize_t mailoauth_tnef_sock_recv(int sock, void *buf, size_t bufsz, int *fds,
    int maxfds, int *nfds) {
  unsigned char frame[MAILOAUTH_IMSG_HDR + TNEF_UNPACK_LEN + 1];
  struct mailoauth_imsg msg;
  unsigned char *p = buf;
  int i, rc;

  *nfds = 0;
  rc = mailoauth_imsg_recv(sock, &msg, frame, sizeof(frame), 0);
  if (rc <= 0) {
    if (rc < 0 && errno == EBADMSG) {
      errno = EMSGSIZE;
    }
    return rc;
  }

  if (msg.type > 0xff ||
      TNEF_KILL_LEN + msg.len > bufsz ||
      msg.nfds > maxfds) {
    mailoauth_imsg_close_fds(&msg);
    errno = EMSGSIZE;
    return -1;
  }

  p[0] = (unsigned char) msg.type;
  mailoauth_tnef_put32(p + 1, msg.id);
  memcpy(p + TNEF_KILL_LEN, msg.data, msg.len);
  for (i = 0; i < msg.nfds; i++) {
    fds[i] = msg.fds[i];
  }
  *nfds = msg.nfds;
  return (ssize_t) (TNEF_KILL_LEN + msg.len);
}

/* ------------------------------------------------------------------------
 * The helper.  It is forked before its parent holds anything a decoder
 * should not see, and then only forks decoders: a decoder is a copy of it.
 * Like the child, it must never trace or log once its descriptors are
 * gone (their numbers get reused); its sinks are cleared at once.
 */

static void tnef_helper_noop(int sig) {
  (void) sig;
}

/* Everything at its default but SIGHUP (the daemon's restart signal: the
 * helper goes with its parent instead) and SIGPIPE.  SIGCHLD is caught but
 * blocked, let through only while the helper waits for a decoder (ppoll()
 * with *waitmask): a decoder's end interrupts that wait, never anything
 * else, and cannot slip in between a waitpid() and the wait.
 */
static void tnef_helper_signals(sigset_t *waitmask) {
  struct sigaction sa;
  sigset_t chld;

  tnef_child_signals();

  memset(&sa, 0, sizeof(sa));
  sigemptyset(&sa.sa_mask);
  sa.sa_handler = SIG_IGN;
  (void) sigaction(SIGHUP, &sa, NULL);
  (void) sigaction(SIGPIPE, &sa, NULL);
  sa.sa_handler = tnef_helper_noop;
  sa.sa_flags = SA_NOCLDSTOP;
  (void) sigaction(SIGCHLD, &sa, NULL);

  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  (void) sigprocmask(SIG_BLOCK, &chld, waitmask);
}

/* A client secret may sit in the environment (client-secret=env:NAME),
 * and the helper needs none: the strings are wiped, not just dropped.
 */
static void tnef_helper_wipe_env(void) {
  char **e;

  for (e = environ; e != NULL && *e != NULL; e++) {
    explicit_bzero(*e, strlen(*e));
  }
  (void) clearenv();
}

/* Only the socket stays, as TNEF_HELPER_SOCK_FD; 0, 1 and 2 become
 * /dev/null.  The socket is above 2 already (see
 * mailoauth_tnef_helper_start()), so neither move can close it.
 */
static int tnef_helper_fds(int sock) {
  if (sock != TNEF_HELPER_SOCK_FD && dup2(sock, TNEF_HELPER_SOCK_FD) < 0) {
    return -1;
  }

  tnef_stdio_null();
  mailoauth_spawn_close_from(TNEF_HELPER_SOCK_FD + 1);
  return 0;
}

/* After the init function (which drops privileges where there are any to
 * drop): no saved identity that could take them back, no ptrace by the
 * processes of its user (FTP sessions may run as it), no gaining any.
 */
static int tnef_helper_lockdown(pid_t parent) {
  if (setresgid(getegid(), getegid(), getegid()) < 0 ||
      setresuid(geteuid(), geteuid(), geteuid()) < 0) {
    return -1;
  }

#ifdef __linux__
  (void) prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  (void) prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  (void) prctl(PR_SET_NAME, "tnef helper", 0, 0, 0);
#endif

#ifdef PR_SET_PDEATHSIG
  /* Set after the identity changes, which clear it.  EOF on the socket
   * ends the helper too; this covers a parent that is stopped.
   */
  (void) prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
#endif
  if (getppid() != parent) {
    errno = ECHILD;
    return -1;
  }
  return 0;
}

static int tnef_helper_answer_send(int sock, unsigned char kind,
    uint32_t seq, uint32_t value) {
  unsigned char msg[TNEF_ANSWER_LEN];

  msg[0] = kind;
  mailoauth_tnef_put32(msg + 1, seq);
  mailoauth_tnef_put32(msg + 5, value);
  return mailoauth_tnef_sock_send(sock, msg, sizeof(msg), NULL, 0);
}

/* Kills and reaps the decoder, and ends: the parent is gone. */
static void tnef_helper_orphaned(pid_t pid)
#ifdef __GNUC__
  __attribute__((noreturn))
#endif
  ;

static void tnef_helper_orphaned(pid_t pid) {
  int status;

  (void) kill(pid, SIGKILL);
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  _exit(0);
}

/* A message while a decoder runs: its kill request, or the parent gone.
 * Another unpack request is answered EBUSY (the parent sends one at a
 * time); anything else is passed over.
 */
static void tnef_helper_control(pid_t pid, uint32_t seq) {
  unsigned char msg[TNEF_UNPACK_LEN + 1];
  int fds[TNEF_HELPER_FDS], nfds = 0;
  ssize_t n;

  n = mailoauth_tnef_sock_recv(TNEF_HELPER_SOCK_FD, msg, sizeof(msg), fds,
    TNEF_HELPER_FDS, &nfds);
  tnef_close_fds(fds, nfds);
  if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN &&
      errno != EMSGSIZE)) {
    tnef_helper_orphaned(pid);
  }

  if (n == TNEF_KILL_LEN && msg[0] == TNEF_MSG_KILL &&
      mailoauth_tnef_get32(msg + 1) == seq) {
    (void) kill(pid, SIGKILL);
  } else if (n >= TNEF_KILL_LEN && msg[0] == TNEF_MSG_UNPACK) {
    (void) tnef_helper_answer_send(TNEF_HELPER_SOCK_FD, TNEF_MSG_ERROR,
      mailoauth_tnef_get32(msg + 1), EBUSY);
  }
}

/* Until the decoder is reaped; then its status goes to the parent.  Only
 * this process reaps it, so a kill() here never hits a reused pid.
 */
static void tnef_helper_watch(pid_t pid, uint32_t seq,
    const sigset_t *waitmask) {
  for (;;) {
    struct pollfd pfd;
    int status = 0;
    pid_t res = waitpid(pid, &status, WNOHANG);

    if (res == pid) {
      if (tnef_helper_answer_send(TNEF_HELPER_SOCK_FD, TNEF_MSG_STATUS, seq,
          (uint32_t) status) < 0) {
        _exit(0);
      }
      return;
    }
    if (res < 0 && errno != EINTR) {
      (void) tnef_helper_answer_send(TNEF_HELPER_SOCK_FD, TNEF_MSG_ERROR,
        seq, ECHILD);
      return;
    }

    pfd.fd = TNEF_HELPER_SOCK_FD;
    pfd.events = POLLIN;
    pfd.revents = 0;
    if (ppoll(&pfd, 1, NULL, waitmask) > 0 && pfd.revents != 0) {
      tnef_helper_control(pid, seq);
    }
  }
}

/* The limits and size of an unpack request; -1 for one that is not. */
static int tnef_helper_request(const unsigned char *msg, size_t len,
    int nfds, uint64_t *in_size, struct mailoauth_tnef_limits *lim) {
  struct mailoauth_tnef_limits in;

  if (len != TNEF_UNPACK_LEN || msg[0] != TNEF_MSG_UNPACK ||
      nfds != TNEF_HELPER_FDS) {
    return -1;
  }

  *in_size = mailoauth_tnef_get64(msg + 5);
  in.max_input = mailoauth_tnef_get64(msg + 13);
  in.max_files = mailoauth_tnef_get32(msg + 21);
  in.max_file_bytes = mailoauth_tnef_get64(msg + 25);
  in.max_total_bytes = mailoauth_tnef_get64(msg + 33);
  in.timeout_ms = mailoauth_tnef_get32(msg + 41);
  mailoauth_tnef_limits_resolve(&in, lim);

  /* The parent checked it; the child's allocation relies on it. */
  if (*in_size > lim->max_input || *in_size > (uint64_t) SIZE_MAX / 2) {
    return -1;
  }
  return 0;
}

/* Kills and reaps a decoder that never got its input; its wait status. */
static int tnef_helper_discard(pid_t pid) {
  int status = 0;

  (void) kill(pid, SIGKILL);
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) {
      return 0;
    }
  }
  return status;
}

/* Whether the decoder said it is armed (its filter installed, if it tells
 * the truth) within TNEF_CHILD_ARM_MS: 0, or -1 (it ended, or is stuck).
 */
static int tnef_helper_armed(int ctl) {
  unsigned char c = 0;
  struct pollfd pfd;
  ssize_t n;
  int rc;

  pfd.fd = ctl;
  pfd.events = POLLIN;
  pfd.revents = 0;
  do {
    rc = poll(&pfd, 1, TNEF_CHILD_ARM_MS);
  } while (rc < 0 && errno == EINTR);
  if (rc <= 0) {
    return -1;
  }

  do {
    n = read(ctl, &c, 1);
  } while (n < 0 && errno == EINTR);
  return n == 1 && c == TNEF_CHILD_ARMED ? 0 : -1;
}

/* The go byte and the input, to a decoder whose filter was verified.  A
 * decoder that stops reading has died: the rest is not sent, and its
 * status says why; input that cannot be read is cut short, which the
 * decoder reports.
 */
static void tnef_helper_feed(int ctl, int in_fd, uint64_t in_size) {
  unsigned char buf[64 * 1024], go = TNEF_CHILD_GO;
  uint64_t off = 0;

  if (mailoauth_io_write_all(ctl, &go, 1) < 0) {
    return;
  }
  while (off < in_size) {
    size_t want = in_size - off < sizeof(buf) ? (size_t) (in_size - off) :
      sizeof(buf);
    ssize_t n = pread(in_fd, buf, want, (off_t) off);

    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0 || mailoauth_io_write_all(ctl, buf, (size_t) n) < 0) {
      return;
    }
    off += (uint64_t) n;
  }
}

/* Forks a decoder for a checked request and, once its filter is verified,
 * feeds it and watches it.  fds (the input and the pipe) are closed.
 */
static void tnef_helper_decode(int *fds, uint64_t in_size,
    const struct mailoauth_tnef_limits *lim, uint32_t seq,
    const sigset_t *waitmask) {
  pid_t pid, self = getpid();
  uint32_t reason;
  int ctl[2], status, xerrno;

  if (socketpair(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC, 0, ctl) < 0) {
    xerrno = errno;
    tnef_close_fds(fds, TNEF_HELPER_FDS);
    (void) tnef_helper_answer_send(TNEF_HELPER_SOCK_FD, TNEF_MSG_ERROR, seq,
      (uint32_t) xerrno);
    return;
  }

  pid = fork();
  if (pid == 0) {
    /* Not a byte of input before the filter is verified. */
    (void) close(fds[0]);
    (void) close(ctl[0]);
    tnef_child(ctl[1], fds[1], in_size, lim, self);
  }
  xerrno = errno;
  (void) close(ctl[1]);
  (void) close(fds[1]);

  if (pid < 0) {
    (void) close(ctl[0]);
    (void) close(fds[0]);
    (void) tnef_helper_answer_send(TNEF_HELPER_SOCK_FD, TNEF_MSG_ERROR, seq,
      (uint32_t) xerrno);
    return;
  }

  if (tnef_helper_armed(ctl[0]) < 0) {
    (void) close(ctl[0]);
    (void) close(fds[0]);
    status = tnef_helper_discard(pid);
    if (WIFEXITED(status) && WEXITSTATUS(status) == TNEF_CHILD_EXIT_FILTER) {
      (void) tnef_helper_answer_send(TNEF_HELPER_SOCK_FD, TNEF_MSG_NOSANDBOX,
        seq, TNEF_NOSB_INSTALL);
    } else {
      (void) tnef_helper_answer_send(TNEF_HELPER_SOCK_FD, TNEF_MSG_ERROR, seq,
        ECHILD);
    }
    return;
  }

  reason = tnef_helper_verify(pid);
  if (reason != 0) {
    (void) close(ctl[0]);
    (void) close(fds[0]);
    (void) tnef_helper_discard(pid);
    (void) tnef_helper_answer_send(TNEF_HELPER_SOCK_FD, TNEF_MSG_NOSANDBOX,
      seq, reason);
    return;
  }

  if (tnef_helper_answer_send(TNEF_HELPER_SOCK_FD, TNEF_MSG_PID, seq,
      (uint32_t) pid) < 0) {
    tnef_helper_orphaned(pid);
  }
  tnef_helper_feed(ctl[0], fds[0], in_size);
  (void) close(ctl[0]);
  (void) close(fds[0]);
  tnef_helper_watch(pid, seq, waitmask);
}

/* One message received between decoders. */
static void tnef_helper_serve(const unsigned char *msg, size_t len,
    int *fds, int nfds, const sigset_t *waitmask) {
  struct mailoauth_tnef_limits lim;
  uint64_t in_size = 0;
  uint32_t seq = len >= TNEF_KILL_LEN ? mailoauth_tnef_get32(msg + 1) : 0;

  if (len == TNEF_KILL_LEN && msg[0] == TNEF_MSG_KILL) {
    /* Late: that decoder was reaped already. */
    tnef_close_fds(fds, nfds);
    return;
  }

  if (tnef_helper_request(msg, len, nfds, &in_size, &lim) < 0) {
    tnef_close_fds(fds, nfds);
    (void) tnef_helper_answer_send(TNEF_HELPER_SOCK_FD, TNEF_MSG_ERROR, seq,
      EBADMSG);
    return;
  }

  if (!TNEF_HAVE_FILTER) {
    /* Never a decoder without a filter. */
    tnef_close_fds(fds, nfds);
    (void) tnef_helper_answer_send(TNEF_HELPER_SOCK_FD, TNEF_MSG_NOSANDBOX,
      seq, TNEF_NOSB_ARCH);
    return;
  }

  tnef_helper_decode(fds, in_size, &lim, seq, waitmask);
}

/* Tells the parent why the helper cannot serve, and ends. */
static void tnef_helper_give_up(int sock, int xerrno)
#ifdef __GNUC__
  __attribute__((noreturn))
#endif
  ;

static void tnef_helper_give_up(int sock, int xerrno) {
  (void) tnef_helper_answer_send(sock, TNEF_MSG_ERROR, 0,
    (uint32_t) (xerrno > 0 ? xerrno : EPERM));
  _exit(1);
}

void mailoauth_tnef_helper_main(int sock, pid_t parent,
    mailoauth_tnef_helper_init_fn init, void *arg) {
  sigset_t waitmask;

  mailoauth_trace_set_sink(NULL);
  mailoauth_log_set_sink(NULL);
  tnef_helper_signals(&waitmask);
  tnef_test_no_seccomp = getenv(TNEF_TEST_NO_SECCOMP_ENV) != NULL;
  tnef_helper_wipe_env();

  /* The init function runs while the parent's descriptors are still
   * open: whatever it logs goes where the parent's would.
   */
  errno = 0;
  if (init != NULL && init(arg) < 0) {
    tnef_helper_give_up(sock, errno);
  }
  if (tnef_helper_fds(sock) < 0) {
    tnef_helper_give_up(sock, errno);
  }
  if (tnef_helper_lockdown(parent) < 0) {
    tnef_helper_give_up(TNEF_HELPER_SOCK_FD, errno);
  }

  if (tnef_helper_answer_send(TNEF_HELPER_SOCK_FD, TNEF_MSG_READY, 0,
      0) < 0) {
    _exit(0);
  }

  for (;;) {
    unsigned char msg[TNEF_UNPACK_LEN + 1];
    int fds[TNEF_HELPER_FDS], nfds = 0;
    ssize_t n;

    n = mailoauth_tnef_sock_recv(TNEF_HELPER_SOCK_FD, msg, sizeof(msg), fds,
      TNEF_HELPER_FDS, &nfds);
    if (n == 0) {
      _exit(0);
    }
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) {
        continue;
      }
      if (errno != EMSGSIZE) {
        _exit(1);
      }
      (void) tnef_helper_answer_send(TNEF_HELPER_SOCK_FD, TNEF_MSG_ERROR, 0,
        EBADMSG);
      continue;
    }
    tnef_helper_serve(msg, (size_t) n, fds, nfds, &waitmask);
  }
}
