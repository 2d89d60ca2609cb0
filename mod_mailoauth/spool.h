/*
 * mod_mailoauth - the hand-over of upload events from sessions to the worker
 *
 * Each session process owns one journal file in the spool directory, created
 * in sess_init (while the session can still reach the directory: later it
 * may be chrooted and have root revoked) and held open and flock()ed for the
 * session's lifetime.  A completed upload appends one event record with a
 * single write(): no network, no fsync, nothing that can stall the 226 reply.
 *
 * The worker drains journals into its queue directory, one file per event,
 * named after the journal and the record's offset, so re-draining after a
 * crash rewrites the same names instead of duplicating events.  A journal
 * whose lock can be taken belongs to a session that has ended; once drained
 * it is removed.
 */

#ifndef MOD_MAILOAUTH_SPOOL_H
#define MOD_MAILOAUTH_SPOOL_H

#include <stddef.h>
#include <sys/types.h>

#define MAILOAUTH_SPOOL_JOURNAL_SUFFIX  ".j"
#define MAILOAUTH_SPOOL_QUEUE_SUFFIX    ".ev"

/* Session side.  Creates and locks a new journal owned by uid/gid (the
 * worker's identity), mode 0600.  Returns the descriptor, or -1 with errno.
 */
int mailoauth_spool_journal_open(const char *spool_dir, uid_t uid, gid_t gid);

/* Appends one framed record with a single write(); -1 with errno on error. */
int mailoauth_spool_journal_append(int fd, const void *rec, size_t len);

struct mailoauth_spool_stats {
  unsigned int journals;        /* journals looked at */
  unsigned int removed;         /* finished journals removed */
  unsigned int queued;          /* events moved into the queue */
  unsigned int corrupt;         /* damaged records skipped */
};

/* Worker side.  Moves every complete record from every journal into
 * queue_dir.  Returns 0, or -1 with errno if the directories cannot be used
 * (per-journal problems are logged and skipped).
 */
int mailoauth_spool_drain(const char *spool_dir, const char *queue_dir,
  struct mailoauth_spool_stats *stats);

/* Callback for each queued event, oldest first.  Return 0 when the event is
 * done with (its file is removed), 1 to keep it for a later pass, -1 to stop
 * the pass (errno kept).
 */
typedef int (*mailoauth_queue_cb)(const char *id, const unsigned char *rec,
  size_t len, void *arg);

/* Runs cb over the queue; returns the number of events handled (removed). */
int mailoauth_queue_process(const char *queue_dir, mailoauth_queue_cb cb,
  void *arg);

/* The contents of one queued event file (malloc'd; *len set), or NULL. */
unsigned char *mailoauth_queue_read(const char *dir, const char *name,
  size_t *len);

/* Number of events waiting in the queue, or -1. */
int mailoauth_queue_count(const char *queue_dir);

/* write() until all of data is written (EINTR and short writes retried).
 * 0, or -1 with errno.
 */
int mailoauth_spool_write_all(int fd, const void *data, size_t len);

/* Writes data to dir/name atomically: temp file, fsync, rename, fsync of the
 * directory.  mode is applied to the new file.
 */
int mailoauth_spool_write_atomic(const char *dir, const char *name,
  const void *data, size_t len, mode_t mode);

#endif /* MOD_MAILOAUTH_SPOOL_H */
