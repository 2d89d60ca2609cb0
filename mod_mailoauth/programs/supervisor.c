/*
 * mailoauthd - the supervisor: keeps one worker running for the master
 *
 * The master starts this process once per configuration and stops it on
 * restart and shutdown; it never wakes up on its own for it.  Restarting
 * a worker that died, with a growing pause when it keeps dying, is done
 * here, so the master's accept loop never runs a timer of ours.  The
 * supervisor holds no secret and parses nothing but the master's JSON.
 */

#include "mailoauthd.h"
#include "mailoauth/control.h"
#include "mailoauth/imsg.h"
#include "mailoauth/spawn.h"
#include "mailoauth/trace.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SUPERVISOR_STOP_TIMEOUT_MS      4000
#ifdef MAILOAUTH_CRASHPOINTS
/* The crash tests kill the worker again and again (crashpoint.h). */
# define SUPERVISOR_BACKOFF_MAX_SECS    1
#else
# define SUPERVISOR_BACKOFF_MAX_SECS    60
#endif
#define SUPERVISOR_HEALTHY_SECS         60
#define SUPERVISOR_ORPHAN_WAIT_SECS     120

extern char **environ;

static volatile sig_atomic_t supervisor_stop_req = 0;
static volatile sig_atomic_t supervisor_stop_why = 0;

struct supervisor {
  struct mailoauthd *d;
  pid_t pid;                    /* the worker, 0: none */
  int sock;                     /* our end of its control socket */
  time_t started;
  time_t restart_at;            /* 0: not waiting to restart */
  unsigned int backoff;
  time_t orphans_since;         /* 0: not waiting for a dead worker's helpers */
};

static void supervisor_sigterm(int signo, siginfo_t *info, void *ctx) {
  (void) signo;
  (void) ctx;
  supervisor_stop_req = 1;
  if (info != NULL &&
      info->si_code == SI_QUEUE) {
    supervisor_stop_why = info->si_value.sival_int;
  }
}

static long long supervisor_now_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void supervisor_spawn(struct supervisor *s) {
  char *argv[] = { "mailoauth worker", "worker", NULL };
  int sv[2], fds[3];
  pid_t pid;

  s->restart_at = 0;
  if (mailoauth_imsg_socketpair(sv) < 0) {
    mailoauth_log("cannot create the worker's control socket: %s",
      strerror(errno));
    s->restart_at = time(NULL) + SUPERVISOR_BACKOFF_MAX_SECS;
    return;
  }

  fds[0] = sv[1];
  fds[1] = MAILOAUTHD_LOG_FD;
  fds[2] = MAILOAUTHD_TRACE_FD;

  /* The environment goes along: a client secret may be env:NAME. */
  pid = mailoauth_spawn(s->d->conf.program, argv, environ, fds, 3);
  (void) close(sv[1]);
  if (pid < 0) {
    mailoauth_log("cannot start the worker (%s): %s", s->d->conf.program,
      strerror(errno));
    (void) close(sv[0]);
    s->restart_at = time(NULL) + SUPERVISOR_BACKOFF_MAX_SECS;
    return;
  }

  s->pid = pid;
  s->sock = sv[0];
  s->started = time(NULL);
  mailoauth_trace("mailoauth", 3, "started worker pid %lu",
    (unsigned long) pid);

  /* A worker that dies before reading it shows as EOF in the loop. */
  (void) mailoauth_wconf_send(s->sock, s->d->conf_json, s->d->conf_len);

  /* From now on only requests go to it, never waiting for a busy worker. */
  (void) fcntl(s->sock, F_SETFL, fcntl(s->sock, F_GETFL) | O_NONBLOCK);
}

/* A message from the master.  -1: it is gone. */
static int supervisor_request(struct supervisor *s) {
  unsigned char buf[MAILOAUTH_IMSG_HDR + 1024];
  struct mailoauth_imsg msg;
  int res;

  res = mailoauth_imsg_recv(MAILOAUTHD_CONTROL_FD, &msg, buf, sizeof(buf),
    MSG_DONTWAIT);
  if (res == 0) {
    return -1;
  }
  if (res < 0) {
    return errno == EINTR || errno == EAGAIN || errno == EBADMSG ? 0 : -1;
  }
  mailoauth_imsg_close_fds(&msg);

  if (msg.type != MAILOAUTH_CTL_RUN_TASK &&
      msg.type != MAILOAUTH_CTL_RETRY) {
    return 0;
  }

  if (s->pid == 0 ||
      mailoauth_imsg_send(s->sock, msg.type, msg.id, msg.data, msg.len,
        NULL, 0) < 0) {
    mailoauth_log("supervisor: request from ftpdctl not passed on: %s",
      s->pid == 0 ? "the worker is not running" : strerror(errno));
  }
  return 0;
}

static void supervisor_reap(struct supervisor *s, int *status) {
  while (waitpid(s->pid, status, 0) < 0 &&
         errno == EINTR) {
  }
  (void) close(s->sock);
  s->sock = -1;
  s->pid = 0;
}

/* The worker's socket reached EOF: it is gone.  Restart it, after a pause
 * that grows while it keeps dying.
 */
static void supervisor_lost(struct supervisor *s) {
  time_t now = time(NULL);
  pid_t pid = s->pid;
  int status = 0;

  supervisor_reap(s, &status);

  if (now - s->started >= SUPERVISOR_HEALTHY_SECS) {
    s->backoff = 0;
  }
  s->backoff = s->backoff == 0 ? 1 : s->backoff * 2;
  if (s->backoff > SUPERVISOR_BACKOFF_MAX_SECS) {
    s->backoff = SUPERVISOR_BACKOFF_MAX_SECS;
  }
  s->restart_at = now + s->backoff;

  if (WIFSIGNALED(status)) {
    mailoauth_log("worker (pid %lu) exited unexpectedly after %lu seconds "
      "(signal %d); restarting it in %u seconds", (unsigned long) pid,
      (unsigned long) (now - s->started), WTERMSIG(status), s->backoff);
  } else {
    mailoauth_log("worker (pid %lu) exited unexpectedly after %lu seconds "
      "(status %d); restarting it in %u seconds", (unsigned long) pid,
      (unsigned long) (now - s->started), WEXITSTATUS(status), s->backoff);
  }
}

static void supervisor_stop(struct supervisor *s) {
  long long deadline;
  int status;

  if (s->pid == 0) {
    return;
  }

  /* Passing on why the master stopped us: the worker's last line says. */
  (void) mailoauth_stop_signal(s->pid, supervisor_stop_why);
  deadline = supervisor_now_ms() + SUPERVISOR_STOP_TIMEOUT_MS;
  for (;;) {
    struct pollfd pfd;
    long long left = deadline - supervisor_now_ms();
    char c;

    if (left <= 0) {
      mailoauth_log("worker (pid %lu) did not stop within %d seconds; "
        "killing it", (unsigned long) s->pid,
        SUPERVISOR_STOP_TIMEOUT_MS / 1000);
      (void) kill(s->pid, SIGKILL);
      break;
    }

    pfd.fd = s->sock;
    pfd.events = POLLIN;
    if (poll(&pfd, 1, (int) left) > 0 &&
        read(s->sock, &c, 1) <= 0) {
      break;
    }
  }

  supervisor_reap(s, &status);
}

/* Reaps what a dead worker left (its helpers come to us, the subreaper);
 * whether some are still running.  Only while no worker runs: waitpid(-1)
 * would take the worker's own status otherwise.
 */
static int supervisor_orphans_left(void) {
  int status;
  pid_t pid;

  for (;;) {
    pid = waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      continue;
    }
    if (pid < 0 && errno == EINTR) {
      continue;
    }
    return pid == 0;
  }
}

/* While a worker runs: reaps orphans that have ended (a helper's child
 * whose helper died), never the worker, whose end supervisor_lost() reads.
 */
static void supervisor_reap_orphans(pid_t worker) {
  siginfo_t info;

  for (;;) {
    memset(&info, 0, sizeof(info));
    if (waitid(P_ALL, 0, &info, WEXITED|WNOHANG|WNOWAIT) < 0 ||
        info.si_pid == 0 ||
        info.si_pid == worker) {
      return;
    }
    (void) waitpid(info.si_pid, NULL, WNOHANG);
  }
}

int mailoauthd_supervisor_main(struct mailoauthd *d) {
  struct supervisor s;
  struct sigaction sa;
  sigset_t block, wait_mask;
  const char *why = "stop requested";
  pid_t master;

  memset(&s, 0, sizeof(s));
  s.d = d;
  s.sock = -1;

  memset(&sa, 0, sizeof(sa));
  sa.sa_sigaction = supervisor_sigterm;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  (void) sigaction(SIGTERM, &sa, NULL);
  (void) signal(SIGPIPE, SIG_IGN);
  (void) signal(SIGHUP, SIG_IGN);
  (void) signal(SIGINT, SIG_IGN);

  /* SIGTERM is let in only while waiting, so it is never missed. */
  sigemptyset(&block);
  sigaddset(&block, SIGTERM);
  (void) sigprocmask(SIG_BLOCK, &block, &wait_mask);
  sigdelset(&wait_mask, SIGTERM);

  /* If the master is killed outright, EOF on descriptor 3 says so too;
   * this covers a master that is stopped but not dead.
   */
  (void) prctl(PR_SET_PDEATHSIG, SIGTERM);
  (void) prctl(PR_SET_CHILD_SUBREAPER, 1);
  master = getppid();
  if (master == 1) {
    return 0;
  }

  if (chdir("/") < 0) {
    /* Every path used is absolute. */
  }

  supervisor_spawn(&s);

  while (!supervisor_stop_req) {
    struct pollfd pfds[2];
    struct timespec ts, *timeout = NULL;
    nfds_t nfds = 1;
    int n;

    pfds[0].fd = MAILOAUTHD_CONTROL_FD;
    pfds[0].events = POLLIN;
    if (s.pid > 0) {
      supervisor_reap_orphans(s.pid);
      pfds[1].fd = s.sock;
      pfds[1].events = POLLIN;
      nfds = 2;

    } else if (s.restart_at > 0) {
      time_t left = s.restart_at - time(NULL);

      ts.tv_sec = left > 0 ? left : 0;
      ts.tv_nsec = 0;
      timeout = &ts;
    }

    n = ppoll(pfds, nfds, timeout, &wait_mask);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      mailoauth_log("supervisor: poll failed: %s", strerror(errno));
      break;
    }

    if (pfds[0].revents != 0 &&
        supervisor_request(&s) < 0) {
      why = "the master process is gone";
      supervisor_stop_why = MAILOAUTH_STOP_MASTER_GONE;
      break;
    }

    if (nfds == 2 &&
        pfds[1].revents != 0) {
      char c;

      if (read(s.sock, &c, 1) <= 0) {
        supervisor_lost(&s);
      }
    }

    if (s.pid == 0 &&
        s.restart_at > 0 &&
        time(NULL) >= s.restart_at) {
      /* Not before the dead worker's helpers are gone: a deposit helper
       * finishing a file it was asked for must not race the new worker's
       * look for it.  Bounded: a helper stuck for good would otherwise
       * stop ingestion and notifications alike (at worst a file then
       * comes twice, never not at all).
       */
      if (s.orphans_since == 0) {
        s.orphans_since = time(NULL);
      }
      if (supervisor_orphans_left() &&
          time(NULL) - s.orphans_since < SUPERVISOR_ORPHAN_WAIT_SECS) {
        s.restart_at = time(NULL) + 1;
      } else {
        s.orphans_since = 0;
        supervisor_spawn(&s);
      }
    }
  }

  /* A master killed outright shows as the parent-death SIGTERM. */
  if (supervisor_stop_why == 0 &&
      getppid() != master) {
    supervisor_stop_why = MAILOAUTH_STOP_MASTER_GONE;
    why = "the master process is gone";
  }

  mailoauth_trace("mailoauth", 3, "supervisor exiting: %s", why);
  supervisor_stop(&s);
  return 0;
}
