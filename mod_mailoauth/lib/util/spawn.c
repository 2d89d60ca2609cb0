/*
 * mod_mailoauth - starting a role program by fork+exec
 */

#include "mailoauth/spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

void mailoauth_spawn_close_from(int lowfd) {
  long max, fd;

#ifdef SYS_close_range
  if (syscall(SYS_close_range, (unsigned int) lowfd, ~0U, 0) == 0) {
    return;
  }
#endif

  max = sysconf(_SC_OPEN_MAX);
  if (max < 0 || max > (1L << 20)) {
    max = 1L << 20;
  }
  for (fd = lowfd; fd < max; fd++) {
    (void) close((int) fd);
  }
}

int mailoauth_spawn_fd_above_stdio(int *fd) {
  int moved;

  if (*fd > 2) {
    return fcntl(*fd, F_SETFD, FD_CLOEXEC);
  }

  moved = fcntl(*fd, F_DUPFD_CLOEXEC, 3);
  if (moved < 0) {
    return -1;
  }

  (void) close(*fd);
  *fd = moved;
  return 0;
}

/* In the child, between fork and exec: only async-signal-safe calls. */
void mailoauth_spawn_exec(const char *path, char *const argv[],
    char *const envp[], const int *fds, int nfds) {
  static char *const empty_env[] = { NULL };
  int high[MAILOAUTH_SPAWN_MAX_FDS], i, null_fd;

  if (nfds < 0 || nfds > MAILOAUTH_SPAWN_MAX_FDS) {
    _exit(127);
  }
  sigset_t none;

  /* Whatever the parent had blocked or ignored is not the program's. */
  for (i = 1; i < NSIG; i++) {
    if (i != SIGKILL && i != SIGSTOP) {
      (void) signal(i, SIG_DFL);
    }
  }
  sigemptyset(&none);
  (void) sigprocmask(SIG_SETMASK, &none, NULL);

  /* First out of the way of the targets, then into place: a source may
   * sit where another target goes.
   */
  for (i = 0; i < nfds; i++) {
    high[i] = -1;
    if (fds[i] >= 0) {
      high[i] = fcntl(fds[i], F_DUPFD, MAILOAUTH_SPAWN_FD0 +
        MAILOAUTH_SPAWN_MAX_FDS);
      if (high[i] < 0) {
        _exit(127);
      }
    }
  }

  null_fd = open("/dev/null", O_RDWR);
  if (null_fd < 0) {
    _exit(127);
  }
  for (i = 0; i < 3; i++) {
    if (dup2(null_fd, i) < 0) {
      _exit(127);
    }
  }

  for (i = 0; i < nfds; i++) {
    if (dup2(high[i] >= 0 ? high[i] : 0, MAILOAUTH_SPAWN_FD0 + i) < 0) {
      _exit(127);
    }
  }
  mailoauth_spawn_close_from(MAILOAUTH_SPAWN_FD0 + nfds);

  (void) execve(path, argv, envp ? envp : empty_env);
  _exit(127);
}

pid_t mailoauth_spawn(const char *path, char *const argv[],
    char *const envp[], const int *fds, int nfds) {
  pid_t pid;

  if (nfds < 0 ||
      nfds > MAILOAUTH_SPAWN_MAX_FDS) {
    errno = EINVAL;
    return -1;
  }

  if (access(path, X_OK) < 0) {
    return -1;
  }

  pid = fork();
  if (pid == 0) {
    mailoauth_spawn_exec(path, argv, envp, fds, nfds);
  }

  return pid;
}

const char *mailoauth_stop_reason(int code) {
  switch (code) {
    case MAILOAUTH_STOP_RESTART:
      return "the server is restarting";

    case MAILOAUTH_STOP_SHUTDOWN:
      return "the server is shutting down";

    case MAILOAUTH_STOP_EXIT:
      return "the server is stopping";

    case MAILOAUTH_STOP_MASTER_GONE:
      return "the master process is gone";
  }

  return NULL;
}

int mailoauth_stop_signal(pid_t pid, int code) {
  union sigval val;

  memset(&val, 0, sizeof(val));
  val.sival_int = code;
  return sigqueue(pid, SIGTERM, val);
}
