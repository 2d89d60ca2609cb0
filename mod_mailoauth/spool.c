/*
 * mod_mailoauth - the hand-over of upload events from sessions to the worker
 */

#include "spool.h"
#include "event.h"
#include "trace.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

static const char *trace_channel = "mailoauth.spool";

#define MAILOAUTH_SPOOL_CHUNK   (1024 * 1024)

static int mailoauth_spool_has_suffix(const char *name, const char *suffix) {
  size_t nlen = strlen(name), slen = strlen(suffix);

  return nlen > slen && name[0] != '.' &&
    strcmp(name + nlen - slen, suffix) == 0;
}

static int mailoauth_spool_fsync_dir(const char *dir) {
  int fd, res, xerrno;

  fd = open(dir, O_RDONLY|O_DIRECTORY|O_CLOEXEC);
  if (fd < 0) {
    return -1;
  }

  res = fsync(fd);
  xerrno = errno;
  (void) close(fd);
  errno = xerrno;
  return res;
}

int mailoauth_spool_write_all(int fd, const void *data, size_t len) {
  const unsigned char *p = data;

  while (len > 0) {
    ssize_t n = write(fd, p, len);

    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return -1;
    }

    p += n;
    len -= (size_t) n;
  }

  return 0;
}

int mailoauth_spool_write_atomic(const char *dir, const char *name,
    const void *data, size_t len, mode_t mode) {
  char tmp[4096], dst[4096];
  int fd, xerrno;

  if ((size_t) snprintf(tmp, sizeof(tmp), "%s/.%s.tmp.%ld", dir, name,
        (long) getpid()) >= sizeof(tmp) ||
      (size_t) snprintf(dst, sizeof(dst), "%s/%s", dir, name) >= sizeof(dst)) {
    errno = ENAMETOOLONG;
    return -1;
  }

  /* A temp file left by a crashed predecessor with our PID is stale. */
  (void) unlink(tmp);

  fd = open(tmp, O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC, mode);
  if (fd < 0) {
    return -1;
  }

  if (mailoauth_spool_write_all(fd, data, len) < 0 ||
      fsync(fd) < 0) {
    xerrno = errno;
    (void) close(fd);
    (void) unlink(tmp);
    errno = xerrno;
    return -1;
  }

  if (close(fd) < 0 ||
      rename(tmp, dst) < 0) {
    xerrno = errno;
    (void) unlink(tmp);
    errno = xerrno;
    return -1;
  }

  return mailoauth_spool_fsync_dir(dir);
}

int mailoauth_spool_journal_open(const char *spool_dir, uid_t uid, gid_t gid) {
  char tmp[4096], dst[4096];
  struct timeval tv;
  int fd, xerrno;

  gettimeofday(&tv, NULL);

  /* Names sort by creation time, which keeps the queue roughly in upload
   * order across sessions.
   */
  if ((size_t) snprintf(dst, sizeof(dst), "%s/%010lld.%06ld-%ld%s",
        spool_dir, (long long) tv.tv_sec, (long) tv.tv_usec, (long) getpid(),
        MAILOAUTH_SPOOL_JOURNAL_SUFFIX) >= sizeof(dst) ||
      (size_t) snprintf(tmp, sizeof(tmp), "%s/.new-%ld", spool_dir,
        (long) getpid()) >= sizeof(tmp)) {
    errno = ENAMETOOLONG;
    return -1;
  }

  (void) unlink(tmp);
  fd = open(tmp, O_WRONLY|O_CREAT|O_EXCL|O_APPEND|O_NOFOLLOW|O_CLOEXEC, 0600);
  if (fd < 0) {
    return -1;
  }

  /* The lock is taken before the journal becomes visible under its real
   * name: a worker that could lock it would take the session for ended.
   */
  if (flock(fd, LOCK_EX|LOCK_NB) < 0 ||
      ((geteuid() != uid || getegid() != gid) && fchown(fd, uid, gid) < 0) ||
      rename(tmp, dst) < 0) {
    xerrno = errno;
    (void) close(fd);
    (void) unlink(tmp);
    errno = xerrno;
    return -1;
  }

  mailoauth_trace(trace_channel, 9, "opened journal '%s'", dst);
  return fd;
}

int mailoauth_spool_journal_append(int fd, const void *rec, size_t len) {
  struct stat st;
  int xerrno;

  if (fstat(fd, &st) < 0) {
    return -1;
  }

  if (mailoauth_spool_write_all(fd, rec, len) < 0) {
    /* Never leave half a record behind (disk full): later records would
     * be unreadable.
     */
    xerrno = errno;
    if (ftruncate(fd, st.st_size) < 0) {
      /* Nothing more to try: the worker skips the damaged tail. */
    }
    errno = xerrno;
    return -1;
  }

  return 0;
}

static off_t mailoauth_spool_read_offset(const char *spool_dir,
    const char *stem) {
  char path[4096], buf[32];
  ssize_t n;
  int fd;

  snprintf(path, sizeof(path), "%s/%s.off", spool_dir, stem);
  fd = open(path, O_RDONLY|O_NOFOLLOW|O_CLOEXEC);
  if (fd < 0) {
    return 0;
  }

  n = read(fd, buf, sizeof(buf) - 1);
  (void) close(fd);
  if (n <= 0) {
    return 0;
  }

  buf[n] = '\0';
  return (off_t) strtoll(buf, NULL, 10);
}

static int mailoauth_spool_queue_record(const char *queue_dir,
    const char *stem, off_t offset, const unsigned char *rec, size_t len) {
  char name[600];

  if ((size_t) snprintf(name, sizeof(name), "%s-%012lld%s", stem,
      (long long) offset, MAILOAUTH_SPOOL_QUEUE_SUFFIX) >= sizeof(name)) {
    errno = ENAMETOOLONG;
    return -1;
  }

  return mailoauth_spool_write_atomic(queue_dir, name, rec, len, 0600);
}

/* Finds the next record magic after a damaged record, so one bad record
 * costs one event, not the rest of the session's.
 */
static size_t mailoauth_spool_resync(const unsigned char *buf, size_t len,
    size_t from) {
  size_t i;

  for (i = from + 1; i + 4 <= len; i++) {
    if (memcmp(buf + i, MAILOAUTH_EVENT_MAGIC, 4) == 0) {
      return i;
    }
  }

  return len;
}

static int mailoauth_spool_drain_journal(const char *spool_dir,
    const char *queue_dir, const char *name, unsigned char *buf,
    struct mailoauth_spool_stats *stats) {
  char path[4096], stem[512];
  struct stat st;
  off_t offset, start;
  int fd, finished, res = 0;
  size_t stem_len;

  stem_len = strlen(name) - strlen(MAILOAUTH_SPOOL_JOURNAL_SUFFIX);
  if (stem_len >= sizeof(stem)) {
    return 0;
  }
  memcpy(stem, name, stem_len);
  stem[stem_len] = '\0';

  snprintf(path, sizeof(path), "%s/%s", spool_dir, name);
  fd = open(path, O_RDONLY|O_NOFOLLOW|O_CLOEXEC|O_NONBLOCK);
  if (fd < 0) {
    if (errno != ENOENT) {
      mailoauth_log("cannot open journal '%s': %s", path, strerror(errno));
    }
    return 0;
  }

  finished = (flock(fd, LOCK_EX|LOCK_NB) == 0);

  /* Size after the lock attempt: for an ended session it is final. */
  if (fstat(fd, &st) < 0 ||
      !S_ISREG(st.st_mode)) {
    (void) close(fd);
    return 0;
  }

  stats->journals++;
  start = offset = mailoauth_spool_read_offset(spool_dir, stem);

  while (offset < st.st_size) {
    size_t want, have = 0, pos = 0;
    ssize_t n;

    want = (size_t) (st.st_size - offset);
    if (want > MAILOAUTH_SPOOL_CHUNK) {
      want = MAILOAUTH_SPOOL_CHUNK;
    }

    while (have < want) {
      n = pread(fd, buf + have, want - have, offset + (off_t) have);
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n <= 0) {
        break;
      }
      have += (size_t) n;
    }

    while (pos < have) {
      struct mailoauth_event ev;
      ssize_t rlen;

      rlen = mailoauth_event_parse(buf + pos, have - pos, &ev);
      if (rlen == 0) {
        break;
      }

      if (rlen < 0) {
        size_t next = mailoauth_spool_resync(buf, have, pos);

        stats->corrupt++;
        mailoauth_log("journal '%s': skipping %lu damaged bytes at offset %lld",
          path, (unsigned long) (next - pos), (long long) offset + (long long) pos);
        pos = next;
        continue;
      }

      if (mailoauth_spool_queue_record(queue_dir, stem, offset + (off_t) pos,
          buf + pos, (size_t) rlen) < 0) {
        mailoauth_log("cannot queue event from journal '%s': %s", path,
          strerror(errno));
        res = -1;
        break;
      }

      stats->queued++;
      pos += (size_t) rlen;
    }

    offset += (off_t) pos;
    if (res < 0 || pos == 0) {
      break;
    }
  }

  if (offset != start) {
    char stamp[64], oname[600];
    int len;

    len = snprintf(stamp, sizeof(stamp), "%lld\n", (long long) offset);
    snprintf(oname, sizeof(oname), "%s.off", stem);

    /* The queue entries must be durable before the offset says they
     * exist; the offset must be durable before any of them is delivered.
     */
    if (mailoauth_spool_fsync_dir(queue_dir) < 0 ||
        mailoauth_spool_write_atomic(spool_dir, oname, stamp, (size_t) len,
          0600) < 0) {
      mailoauth_log("cannot record progress of journal '%s': %s", path,
        strerror(errno));
      res = -1;
    }
  }

  if (finished && res == 0) {
    char opath[4096];

    if (offset < st.st_size) {
      mailoauth_log("journal '%s': discarding %lld bytes of an incomplete "
        "record left by an ended session", path,
        (long long) (st.st_size - offset));
    }

    snprintf(opath, sizeof(opath), "%s/%s.off", spool_dir, stem);
    (void) unlink(path);
    (void) unlink(opath);
    stats->removed++;
    mailoauth_trace(trace_channel, 9, "removed finished journal '%s'", path);
  }

  (void) close(fd);
  return res;
}

static int mailoauth_spool_select_journal(const struct dirent *d) {
  return mailoauth_spool_has_suffix(d->d_name, MAILOAUTH_SPOOL_JOURNAL_SUFFIX);
}

static int mailoauth_spool_select_queued(const struct dirent *d) {
  return mailoauth_spool_has_suffix(d->d_name, MAILOAUTH_SPOOL_QUEUE_SUFFIX);
}

int mailoauth_spool_drain(const char *spool_dir, const char *queue_dir,
    struct mailoauth_spool_stats *stats) {
  struct dirent **names = NULL;
  unsigned char *buf;
  int i, n, res = 0;

  memset(stats, 0, sizeof(*stats));

  n = scandir(spool_dir, &names, mailoauth_spool_select_journal, alphasort);
  if (n < 0) {
    return -1;
  }

  buf = malloc(MAILOAUTH_SPOOL_CHUNK);
  if (buf == NULL) {
    for (i = 0; i < n; i++) {
      free(names[i]);
    }
    free(names);
    errno = ENOMEM;
    return -1;
  }

  for (i = 0; i < n; i++) {
    if (res == 0 &&
        mailoauth_spool_drain_journal(spool_dir, queue_dir, names[i]->d_name,
          buf, stats) < 0) {
      /* The queue is unwritable (disk full?): stop, retry on the next pass. */
      res = -1;
    }
    free(names[i]);
  }

  free(names);
  free(buf);
  return res;
}

unsigned char *mailoauth_queue_read(const char *dir, const char *name,
    size_t *len) {
  char path[4096];
  unsigned char *data;
  struct stat st;
  size_t have = 0;
  int fd;

  snprintf(path, sizeof(path), "%s/%s", dir, name);
  fd = open(path, O_RDONLY|O_NOFOLLOW|O_CLOEXEC);
  if (fd < 0) {
    return NULL;
  }

  if (fstat(fd, &st) < 0 ||
      !S_ISREG(st.st_mode) ||
      st.st_size > MAILOAUTH_EVENT_MAX_PAYLOAD + 64) {
    (void) close(fd);
    errno = EFBIG;
    return NULL;
  }

  data = malloc((size_t) st.st_size + 1);
  if (data == NULL) {
    (void) close(fd);
    return NULL;
  }

  while (have < (size_t) st.st_size) {
    ssize_t n = read(fd, data + have, (size_t) st.st_size - have);

    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      break;
    }
    have += (size_t) n;
  }

  (void) close(fd);
  *len = have;
  return data;
}

int mailoauth_queue_process(const char *queue_dir, mailoauth_queue_cb cb,
    void *arg) {
  struct dirent **names = NULL;
  int i, n, handled = 0, stop = 0;

  n = scandir(queue_dir, &names, mailoauth_spool_select_queued, alphasort);
  if (n < 0) {
    return -1;
  }

  for (i = 0; i < n; i++) {
    char path[4096], id[512];
    unsigned char *data;
    size_t len = 0, id_len;
    int res;

    if (stop) {
      free(names[i]);
      continue;
    }

    snprintf(path, sizeof(path), "%s/%s", queue_dir, names[i]->d_name);
    id_len = strlen(names[i]->d_name) - strlen(MAILOAUTH_SPOOL_QUEUE_SUFFIX);
    if (id_len >= sizeof(id)) {
      id_len = sizeof(id) - 1;
    }
    memcpy(id, names[i]->d_name, id_len);
    id[id_len] = '\0';

    data = mailoauth_queue_read(queue_dir, names[i]->d_name, &len);
    free(names[i]);
    if (data == NULL) {
      continue;
    }

    res = cb(id, data, len, arg);
    free(data);

    if (res == 0) {
      (void) unlink(path);
      handled++;

    } else if (res < 0) {
      stop = 1;
    }
  }

  free(names);
  return handled;
}

int mailoauth_queue_count(const char *queue_dir) {
  struct dirent **names = NULL;
  int i, n;

  n = scandir(queue_dir, &names, mailoauth_spool_select_queued, NULL);
  if (n < 0) {
    return -1;
  }

  for (i = 0; i < n; i++) {
    free(names[i]);
  }
  free(names);
  return n;
}
