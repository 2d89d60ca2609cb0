/*
 * mod_mailoauth - delivering upload notifications from the worker's queue
 *
 * Each queued upload event that carries a notification rule becomes a mail
 * (or joins a digest), sent through the rule's account with XOAUTH2.  The
 * event file leaves the queue only once the SMTP server has accepted the
 * mail (250), or, after a permanent refusal, by moving to the dead-letter
 * directory with one log line.  Failures of the server or the network make
 * the account wait with exponential backoff; a per-mailbox rate limit makes
 * the queue wait, never drop.  Events without a rule are only logged.
 *
 * No ProFTPD headers.
 */

#ifndef MOD_MAILOAUTH_NOTIFY_H
#define MOD_MAILOAUTH_NOTIFY_H

#include "mailoauth/registry.h"

#include <time.h>

/* Exchange Online accepts about 30 messages a minute per mailbox. */
#define MAILOAUTH_NOTIFY_DEFAULT_RATE   30

struct mailoauth_notify;

struct mailoauth_notify *mailoauth_notify_create(
  struct mailoauth_registry *reg, const char *queue_dir,
  const char *dead_dir, unsigned int rate_per_minute);
void mailoauth_notify_destroy(struct mailoauth_notify *n);

/* One pass over the queue.  Returns the number of mails sent. */
int mailoauth_notify_process(struct mailoauth_notify *n, time_t now);

/* When a pass is next needed for waiting work (digest windows, backoff,
 * rate limit), 0 when nothing waits on time.
 */
time_t mailoauth_notify_next_due(const struct mailoauth_notify *n);

/* Counters for the status line and benchmarks. */
struct mailoauth_notify_stats {
  unsigned long sent, deferred, dead, connections;
};
void mailoauth_notify_get_stats(const struct mailoauth_notify *n,
  struct mailoauth_notify_stats *st);

/* Moves the dead letters back to the queue and makes a pass due now.
 * Returns how many moved, or -1.
 */
int mailoauth_notify_retry_dead(struct mailoauth_notify *n, time_t now);

/* Counters and the queue's state as a JSON object (a new reference, NULL
 * when out of memory): sent, failed (attempts that will be retried),
 * dead_lettered, queued, dead_letters, oldest_queued (a time, or null).
 */
struct json_t;
struct json_t *mailoauth_notify_status(const struct mailoauth_notify *n,
  time_t now);

#endif /* MOD_MAILOAUTH_NOTIFY_H */
