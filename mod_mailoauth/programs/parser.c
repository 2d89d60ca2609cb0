/*
 * mailoauthd - the parser: MIME parsing of fetched mail, holding no token
 *
 * Started by the worker before it reads any secret (and again, as User,
 * after a parser died), as a fresh exec with an empty environment and
 * only its socket to the worker as descriptor 3.  It reads the messages
 * and writes the decoded parts through the descriptors the worker hands
 * it (mimeproc.h), as User and Group, and ends with its socket's EOF.
 */

#include "mailoauthd.h"
#include "mailoauth/mimeproc.h"

#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifdef __linux__
# include <linux/audit.h>
# include <linux/filter.h>
# include <linux/seccomp.h>
#endif

#include "mailoauth/seccomp.h"

#ifdef MAILOAUTH_SECCOMP_ARCH
# define PARSER_DENY    (SECCOMP_RET_ERRNO|(EPERM & SECCOMP_RET_DATA))

/* What parsing needs: its socket and the descriptors it is handed, new
 * anonymous files (openat() with O_TMPFILE only: the parser runs as the
 * worker's uid, and must open no existing file, such as a token file),
 * memory that is never executable, and exit.  No socket(), connect(),
 * execve(), kill(), ptrace(), fork, link or unlink: a parser taken over by
 * a message reaches nothing beyond what it was given.  Anything else
 * fails with EPERM rather than killing, so that a call a library version
 * makes and this list misses costs one message, not every one.
 */
static int parser_seccomp(void) {
  struct sock_filter filter[] = {
    MAILOAUTH_SECCOMP_PROLOGUE,
    MAILOAUTH_SECCOMP_ALLOW(__NR_read),
    MAILOAUTH_SECCOMP_ALLOW(__NR_write),
    MAILOAUTH_SECCOMP_ALLOW(__NR_pread64),
    MAILOAUTH_SECCOMP_ALLOW(__NR_lseek),
    MAILOAUTH_SECCOMP_ALLOW(__NR_recvmsg),
    MAILOAUTH_SECCOMP_ALLOW(__NR_sendmsg),
    MAILOAUTH_SECCOMP_ALLOW(__NR_close),
    MAILOAUTH_SECCOMP_ALLOW(__NR_fstat),
    MAILOAUTH_SECCOMP_ALLOW(__NR_newfstatat),
    MAILOAUTH_SECCOMP_ALLOW(__NR_fcntl),
    MAILOAUTH_SECCOMP_ALLOW(__NR_brk),
    MAILOAUTH_SECCOMP_ALLOW_NOEXEC(__NR_mmap, PARSER_DENY),
    MAILOAUTH_SECCOMP_ALLOW_NOEXEC(__NR_mprotect, PARSER_DENY),
    MAILOAUTH_SECCOMP_ALLOW(__NR_munmap),
    MAILOAUTH_SECCOMP_ALLOW(__NR_mremap),
    MAILOAUTH_SECCOMP_ALLOW(__NR_madvise),
    MAILOAUTH_SECCOMP_ALLOW(__NR_futex),
    MAILOAUTH_SECCOMP_ALLOW(__NR_clock_gettime),
    MAILOAUTH_SECCOMP_ALLOW(__NR_rt_sigreturn),
    MAILOAUTH_SECCOMP_ALLOW(__NR_exit),
    MAILOAUTH_SECCOMP_ALLOW(__NR_exit_group),
    /* Last: it overwrites the system call number. */
    BPF_JUMP(BPF_JMP|BPF_JEQ|BPF_K, __NR_openat, 0, 3),
    BPF_STMT(BPF_LD|BPF_W|BPF_ABS, MAILOAUTH_SECCOMP_ARG_LO(2)),
    BPF_JUMP(BPF_JMP|BPF_JSET|BPF_K, O_TMPFILE & ~O_DIRECTORY, 0, 1),
    BPF_STMT(BPF_RET|BPF_K, SECCOMP_RET_ALLOW),
    BPF_STMT(BPF_RET|BPF_K, PARSER_DENY)
  };
  struct sock_fprog prog;

  prog.len = (unsigned short) (sizeof(filter) / sizeof(filter[0]));
  prog.filter = filter;
  return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}
#else
static int parser_seccomp(void) {
  errno = ENOSYS;
  return -1;
}
#endif

static int parser_id(const char *s, unsigned long *id) {
  char *end = NULL;

  errno = 0;
  *id = strtoul(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0') {
    return -1;
  }
  return 0;
}

/* Arguments: UID GID to run as. */
int mailoauthd_parser_main(int argc, char **argv) {
  unsigned long uid, gid;

  if (argc != 2 ||
      parser_id(argv[0], &uid) < 0 ||
      parser_id(argv[1], &gid) < 0 ||
      uid == 0 || gid == 0) {
    return 2;
  }

  (void) signal(SIGPIPE, SIG_IGN);
  if (mailoauthd_drop_privs((uid_t) uid, (gid_t) gid) < 0) {
    return 1;
  }

  /* After the identity change, which clears the death signal. */
  (void) prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  (void) prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  (void) prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
  (void) prctl(PR_SET_NAME, "mailoauth parse", 0, 0, 0);
  if (getppid() == 1) {
    return 0;
  }
  if (chdir("/") < 0) {
    return 1;
  }

  {
    struct rlimit rl;

    rl.rlim_cur = rl.rlim_max = 0;
    (void) setrlimit(RLIMIT_CORE, &rl);
    (void) setrlimit(RLIMIT_NPROC, &rl);
  }

  /* The process boundary is what keeps the tokens from it; the filter
   * narrows what a parser taken over could do from there, where the
   * machine has one.
   */
  (void) mailoauth_mime_preload();
  (void) parser_seccomp();

  return mailoauth_mimeproc_serve(MAILOAUTHD_CONTROL_FD, NULL) == 0 ? 0 : 1;
}
