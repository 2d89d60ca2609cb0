/*
 * mod_mailoauth - the worker process's event loop
 */

#include "mailoauth/worker.h"
#include "mailoauth/event.h"
#include "mailoauth/imsg.h"
#include "mailoauth/trace.h"
#include "mailoauth/yield.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifdef __linux__
# include <sys/inotify.h>
#endif

static const char *trace_channel = "mailoauth.worker";

/* At most this many descriptors from cfg->fds (one per IDLE watcher). */
#define MAILOAUTH_WORKER_MAX_FDS        64

static volatile sig_atomic_t mailoauth_worker_stop = 0;
static volatile sig_atomic_t mailoauth_worker_stop_why = 0;

static void mailoauth_worker_sigterm(int signo, siginfo_t *info, void *ctx) {
  (void) signo;
  (void) ctx;
  mailoauth_worker_stop = 1;
  if (info != NULL &&
      info->si_code == SI_QUEUE) {
    mailoauth_worker_stop_why = info->si_value.sival_int;
  }
}

int mailoauth_worker_stop_code(void) {
  return mailoauth_worker_stop_why;
}

static long long mailoauth_worker_now_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Status reports: at most one a second, and one at least this often so
 * that ages in them stay current.
 */
#define MAILOAUTH_WORKER_REPORT_MIN_MS      1000
#define MAILOAUTH_WORKER_REPORT_MAX_MS      15000

/* A request on the control socket.  0: handled (or ignored); -1: the
 * master is gone.
 */
static int mailoauth_worker_request(const struct mailoauth_worker_config *cfg) {
  unsigned char buf[MAILOAUTH_IMSG_HDR + 1024];
  struct mailoauth_imsg msg;
  int res;

  res = mailoauth_imsg_recv(cfg->master_fd, &msg, buf, sizeof(buf),
    MSG_DONTWAIT);
  if (res == 0) {
    return -1;
  }
  if (res < 0) {
    if (errno == EINTR || errno == EAGAIN || errno == EBADMSG) {
      return 0;
    }
    return -1;
  }

  mailoauth_imsg_close_fds(&msg);
  if (cfg->request != NULL) {
    cfg->request(msg.type, msg.data, msg.len, cfg->request_arg);
  }
  return 0;
}

static int mailoauth_worker_watch(const char *spool_dir) {
#ifdef __linux__
  int fd;

  fd = inotify_init1(IN_NONBLOCK|IN_CLOEXEC);
  if (fd < 0) {
    return -1;
  }

  if (inotify_add_watch(fd, spool_dir,
      IN_MODIFY|IN_CLOSE_WRITE|IN_MOVED_TO|IN_CREATE) < 0) {
    (void) close(fd);
    return -1;
  }

  return fd;
#else
  (void) spool_dir;
  errno = ENOSYS;
  return -1;
#endif
}

static void mailoauth_worker_discard(int fd) {
  char buf[4096];

  while (read(fd, buf, sizeof(buf)) > 0) {
  }
}

static void mailoauth_worker_pass(const struct mailoauth_worker_config *cfg) {
  struct mailoauth_spool_stats stats;
  int n;

  if (mailoauth_spool_drain(cfg->spool_dir, cfg->queue_dir, &stats) < 0) {
    mailoauth_trace(trace_channel, 3, "draining '%s' failed: %s",
      cfg->spool_dir, strerror(errno));
  }

  if (stats.queued > 0 || stats.removed > 0) {
    mailoauth_trace(trace_channel, 8,
      "spool pass: %u journals, %u events queued, %u journals removed",
      stats.journals, stats.queued, stats.removed);
  }

  n = cfg->process ? cfg->process(cfg->process_arg) :
    mailoauth_queue_process(cfg->queue_dir, cfg->deliver, cfg->deliver_arg);
  if (n > 0) {
    mailoauth_trace(trace_channel, 8, "delivered %d queued events", n);
  }
}

/* What may run inside a long step (yield.h): journals to the queue and
 * the queue to the mail server; never a task.
 */
struct mailoauth_worker_yield {
  const struct mailoauth_worker_config *cfg;
  int watch_fd;
};

static void mailoauth_worker_yield_pass(void *arg) {
  struct mailoauth_worker_yield *y = arg;

  if (y->watch_fd >= 0) {
    mailoauth_worker_discard(y->watch_fd);
  }
  mailoauth_worker_pass(y->cfg);
}

int mailoauth_worker_run(const struct mailoauth_worker_config *cfg) {
  struct mailoauth_worker_yield yield;
  struct sigaction sa;
  sigset_t block, wait_mask;
  int watch_fd, res = MAILOAUTH_WORKER_STOPPED, dirty = 1;
  long long next_scan, last_report = 0;
  time_t next_tick;

  /* SIGTERM stays blocked except inside ppoll(), so a stop request can
   * never slip in between the flag check and the wait.
   */
  memset(&sa, 0, sizeof(sa));
  sa.sa_sigaction = mailoauth_worker_sigterm;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);

  sigemptyset(&block);
  sigaddset(&block, SIGTERM);
  sigprocmask(SIG_BLOCK, &block, &wait_mask);
  sigdelset(&wait_mask, SIGTERM);

  watch_fd = mailoauth_worker_watch(cfg->spool_dir);
  if (watch_fd < 0) {
    mailoauth_trace(trace_channel, 3,
      "no change notification for '%s' (%s); scanning every %u ms",
      cfg->spool_dir, strerror(errno), cfg->scan_interval_ms);
  }

  yield.cfg = cfg;
  yield.watch_fd = watch_fd;
  mailoauth_yield_set(mailoauth_worker_yield_pass, &yield);

  /* Journals written while no worker ran are picked up right away. */
  mailoauth_worker_pass(cfg);
  next_scan = mailoauth_worker_now_ms() + cfg->scan_interval_ms;
  next_tick = cfg->tick ? cfg->tick(time(NULL), cfg->tick_arg) : 0;

  while (!mailoauth_worker_stop) {
    struct pollfd pfds[2 + MAILOAUTH_WORKER_MAX_FDS];
    struct timespec timeout;
    long long wait_ms;
    nfds_t nfds = 1;
    unsigned int nextra = 0;
    int n;

    pfds[0].fd = cfg->master_fd;
    pfds[0].events = POLLIN;
    if (watch_fd >= 0) {
      pfds[1].fd = watch_fd;
      pfds[1].events = POLLIN;
      nfds = 2;
    }

    wait_ms = next_scan - mailoauth_worker_now_ms();
    if (cfg->report != NULL) {
      long long report_ms = last_report + (dirty ?
        MAILOAUTH_WORKER_REPORT_MIN_MS : MAILOAUTH_WORKER_REPORT_MAX_MS) -
        mailoauth_worker_now_ms();

      if (report_ms < wait_ms) {
        wait_ms = report_ms;
      }
    }
    if (next_tick != 0) {
      long long tick_ms = ((long long) next_tick - (long long) time(NULL)) *
        1000;

      if (tick_ms < wait_ms) {
        wait_ms = tick_ms;
      }
    }
    if (cfg->fds != NULL) {
      nextra = cfg->fds(pfds + 2, MAILOAUTH_WORKER_MAX_FDS, &wait_ms,
        cfg->fds_arg);
      if (nfds == 1) {
        /* pfds[1] unused: the extra ones follow pfds[0]. */
        pfds[1].fd = -1;
        pfds[1].events = 0;
      }
      if (nextra > 0) {
        nfds = 2 + nextra;
      }
    }
    if (wait_ms < 0) {
      wait_ms = 0;
    }
    timeout.tv_sec = wait_ms / 1000;
    timeout.tv_nsec = (wait_ms % 1000) * 1000000L;

    n = ppoll(pfds, nfds, &timeout, &wait_mask);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      mailoauth_log("worker: poll failed: %s", strerror(errno));
      break;
    }

    if (pfds[0].revents != 0) {
      if (mailoauth_worker_request(cfg) < 0) {
        res = MAILOAUTH_WORKER_ORPHANED;
        break;
      }

      /* A request may have made scheduled work due now. */
      if (cfg->tick != NULL) {
        next_tick = time(NULL);
      }
      dirty = 1;
    }

    if (nfds >= 2 &&
        watch_fd >= 0 &&
        pfds[1].revents != 0) {
      mailoauth_worker_discard(watch_fd);
      mailoauth_worker_pass(cfg);
      dirty = 1;
    }

    if (cfg->fds_ready != NULL &&
        cfg->fds_ready(pfds + 2, nextra, cfg->fds_arg) &&
        cfg->tick != NULL) {
      next_tick = time(NULL);
      dirty = 1;
    }

    if (mailoauth_worker_now_ms() >= next_scan) {
      mailoauth_worker_pass(cfg);
      next_scan = mailoauth_worker_now_ms() + cfg->scan_interval_ms;
      dirty = 1;
    }

    if (next_tick != 0 &&
        time(NULL) >= next_tick) {
      next_tick = cfg->tick(time(NULL), cfg->tick_arg);
      dirty = 1;
    }

    if (cfg->report != NULL) {
      long long now_ms = mailoauth_worker_now_ms();

      if (now_ms - last_report >= (dirty ? MAILOAUTH_WORKER_REPORT_MIN_MS :
          MAILOAUTH_WORKER_REPORT_MAX_MS)) {
        cfg->report(time(NULL), cfg->report_arg);
        last_report = now_ms;
        dirty = 0;
      }
    }
  }

  mailoauth_yield_set(NULL, NULL);
  if (watch_fd >= 0) {
    (void) close(watch_fd);
  }

  return res;
}

const char *mailoauth_worker_printable(const char *s, size_t len, char *buf,
    size_t bufsz) {
  static const char hex[] = "0123456789abcdef";
  size_t i, o = 0;

  for (i = 0; i < len && o + 5 < bufsz; i++) {
    unsigned char c = (unsigned char) s[i];

    if (c < 0x20 || c >= 0x7f || c == '\\' || c == '"') {
      buf[o++] = '\\';
      buf[o++] = 'x';
      buf[o++] = hex[c >> 4];
      buf[o++] = hex[c & 0x0f];

    } else {
      buf[o++] = (char) c;
    }
  }

  if (bufsz > 0) {
    buf[o < bufsz ? o : bufsz - 1] = '\0';
  }

  return buf;
}

int mailoauth_worker_log_event(const char *id, const unsigned char *rec,
    size_t len, void *arg) {
  static const unsigned char tags[] = {
    MAILOAUTH_EVENT_F_USER, MAILOAUTH_EVENT_F_PROTOCOL,
    MAILOAUTH_EVENT_F_REMOTE_ADDR, MAILOAUTH_EVENT_F_PATH,
    MAILOAUTH_EVENT_F_SIZE, MAILOAUTH_EVENT_F_BYTES, MAILOAUTH_EVENT_F_TIME,
    MAILOAUTH_EVENT_F_COMMAND
  };
  static const char *names[] = {
    "user", "protocol", "remote", "path", "size", "bytes", "time", "command"
  };
  struct mailoauth_event ev;
  char line[8192], val[4096];
  size_t off = 0, i;

  (void) arg;

  if (mailoauth_event_parse(rec, len, &ev) <= 0) {
    mailoauth_log("queued event %s is damaged; discarding it", id);
    return 0;
  }

  for (i = 0; i < sizeof(tags); i++) {
    const struct mailoauth_event_field *f = mailoauth_event_get(&ev, tags[i]);

    if (f == NULL) {
      continue;
    }

    mailoauth_worker_printable(f->value, f->len, val, sizeof(val));
    off += (size_t) snprintf(line + off, sizeof(line) - off, " %s=\"%s\"",
      names[i], val);
    if (off >= sizeof(line)) {
      off = sizeof(line) - 1;
      break;
    }
  }

  mailoauth_log("upload event %s:%s", id, line);
  return 0;
}
