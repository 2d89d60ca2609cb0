/*
 * mod_mailoauth - the hand-over of upload events from sessions to the worker
 *
 * Each session process owns one journal file in the spool directory, created
 * when the session has logged in, before it is chrooted or gives up root,
 * and held open and flock()ed for the session's lifetime.  A completed
 * upload appends one event record with a single write(): no network, no
 * fsync, nothing that can stall the 226 reply.
 *
 * The spool directory belongs to the worker's user, so the journal is created
 * with that user's identity (the caller switches to it), through a
 * descriptor of the directory opened without following a symbolic link and
 * checked for owner and mode: whoever runs as that user can at worst make
 * their own uid write a file they could write anyway.
 *
 * On-disk format of a journal (integers big-endian):
 *
 *   header:  "MOJ1" | 4 zero bytes | 32-byte key (random, per journal)
 *   frames:  u32 L | L bytes: one event record (event.h) | 32-byte MAC
 *
 * MAC = HMAC-SHA256(key, u64 frame offset in the journal | u32 L | record).
 * The reader only ever moves from one frame to the next by the declared
 * length: it never searches for a frame inside data.  A frame whose MAC does
 * not verify is skipped by its declared length (one damaged event); bytes
 * inside a record, such as an uploader-chosen file name, can never be
 * accepted as a frame, since they carry neither the key nor their offset.
 * An impossible length ends the readable part: for an ended session the
 * rest (a write torn by a crash) is dropped with one log line.
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
#include <time.h>

#define MAILOAUTH_SPOOL_JOURNAL_SUFFIX  ".j"
#define MAILOAUTH_SPOOL_QUEUE_SUFFIX    ".ev"

#define MAILOAUTH_SPOOL_MAGIC           "MOJ1"
#define MAILOAUTH_SPOOL_KEY_LEN         32
#define MAILOAUTH_SPOOL_HEADER_LEN      (8 + MAILOAUTH_SPOOL_KEY_LEN)
#define MAILOAUTH_SPOOL_MAC_LEN         32

/* A session's open journal. */
struct mailoauth_journal {
  int fd;                       /* -1 when none; never 0, 1 or 2 */
  unsigned char key[MAILOAUTH_SPOOL_KEY_LEN];
};

/* Session side.  Creates and locks a new journal, mode 0600, owned by the
 * caller's effective identity, in spool_dir, which must be a real directory
 * (not a symbolic link) owned by dir_owner and closed to others.  0, or -1
 * with errno (ELOOP/ENOTDIR for a symbolic link, EPERM for a wrong owner or
 * mode).
 */
int mailoauth_spool_journal_open(struct mailoauth_journal *j,
  const char *spool_dir, uid_t dir_owner);

/* Appends one event record, framed, with a single write(); -1 with errno on
 * error (nothing of the record is left behind).
 */
int mailoauth_spool_journal_append(struct mailoauth_journal *j,
  const void *rec, size_t len);

/* Closes the journal (releasing the lock: the session has ended) and wipes
 * the key.
 */
void mailoauth_spool_journal_close(struct mailoauth_journal *j);

/* Verdicts of mailoauth_spool_frame_parse(). */
#define MAILOAUTH_SPOOL_FRAME_OK          0   /* authentic record */
#define MAILOAUTH_SPOOL_FRAME_PARTIAL     1   /* only the start: read more */
#define MAILOAUTH_SPOOL_FRAME_DAMAGED     2   /* complete, not authentic */
#define MAILOAUTH_SPOOL_FRAME_UNREADABLE  3   /* impossible length */

/* Looks at the frame at data, which lies at offset in a journal with this
 * key.  For OK and DAMAGED, *frame_len is the frame's length (the distance
 * to the next frame); for OK, *rec and *rec_len give the record.
 */
int mailoauth_spool_frame_parse(const unsigned char *key, off_t offset,
  const unsigned char *data, size_t len, size_t *frame_len,
  const unsigned char **rec, size_t *rec_len);

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

/* Number of events in the queue, or -1; *oldest: the modification time
 * of the oldest (0 when there is none).
 */
int mailoauth_queue_oldest(const char *queue_dir, time_t *oldest);

/* Moves every event of from_dir to to_dir (dead letters back to the queue),
 * never over one of the same name.  Returns how many moved, or -1.
 */
int mailoauth_queue_move_all(const char *from_dir, const char *to_dir);

/* Writes data to dir/name atomically: temp file, fsync, rename, fsync of the
 * directory.  mode is applied to the new file.
 */
int mailoauth_spool_write_atomic(const char *dir, const char *name,
  const void *data, size_t len, mode_t mode);

#endif /* MOD_MAILOAUTH_SPOOL_H */
