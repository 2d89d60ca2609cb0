/*
 * mod_mailoauth - the worker process's event loop
 *
 * The worker is the only process that talks to mail and token servers.  It
 * waits with poll() (never SIGALRM) for: its master going away (EOF on the
 * control socket), a journal changing in the spool directory (inotify where
 * the kernel has it, a periodic scan everywhere), SIGTERM, and the next
 * scheduled job.
 */

#ifndef MOD_MAILOAUTH_WORKER_H
#define MOD_MAILOAUTH_WORKER_H

#include "mailoauth/spool.h"

#include <stddef.h>
#include <stdint.h>
#include <time.h>

struct pollfd;

struct mailoauth_worker_config {
  const char *spool_dir;
  const char *queue_dir;

  /* The worker's end of the socketpair shared with the master.  EOF means
   * the master has exited: the worker must not outlive it.
   */
  int master_fd;

  /* How often journals are scanned even without a change notification. */
  unsigned int scan_interval_ms;

  /* Called for each queued event; see mailoauth_queue_cb. */
  mailoauth_queue_cb deliver;
  void *deliver_arg;

  /* Or: handles the whole queue in one go (grouping, batching). */
  int (*process)(void *arg);
  void *process_arg;

  /* Scheduled work (token upkeep, pull tasks): called once at start and
   * whenever due; returns the wall-clock time it is next due, 0 for none.
   */
  time_t (*tick)(time_t now, void *arg);
  void *tick_arg;

  /* A request from the supervisor on master_fd (an imsg: type, payload);
   * the tick runs right after it.
   */
  void (*request)(uint32_t type, const unsigned char *data, size_t len,
    void *arg);
  void *request_arg;

  /* More descriptors to wait on (IMAP IDLE watchers): fds() puts up to
   * max into pfds and may shorten *wait_ms; fds_ready() gets them back
   * after every wait and returns 1 when it made scheduled work due.
   */
  unsigned int (*fds)(struct pollfd *pfds, unsigned int max,
    long long *wait_ms, void *arg);
  int (*fds_ready)(const struct pollfd *pfds, unsigned int n, void *arg);
  void *fds_arg;

  /* Writes the status report: after anything happened, at most once a
   * second, and every 15 seconds regardless.
   */
  void (*report)(time_t now, void *arg);
  void *report_arg;
};

/* Why mailoauth_worker_run() returned. */
#define MAILOAUTH_WORKER_STOPPED        0   /* SIGTERM */
#define MAILOAUTH_WORKER_ORPHANED       1   /* the master went away */

int mailoauth_worker_run(const struct mailoauth_worker_config *cfg);

/* What the SIGTERM that stopped the loop carried (MAILOAUTH_STOP_*), 0 when
 * it carried nothing.
 */
int mailoauth_worker_stop_code(void);

/* The default delivery: one MailOAuthLog line per upload event. */
int mailoauth_worker_log_event(const char *id, const unsigned char *rec,
  size_t len, void *arg);

/* Copies len bytes of s into buf as printable text (\xNN for control and
 * non-ASCII bytes), always NUL-terminating; for log lines built from names
 * a client chose.
 */
const char *mailoauth_worker_printable(const char *s, size_t len, char *buf,
  size_t bufsz);

#endif /* MOD_MAILOAUTH_WORKER_H */
