/*
 * mod_mailoauth - the hand-over of upload events from sessions to the worker
 */

#include "mailoauth/io.h"
#include "mailoauth/spool.h"
#include "mailoauth/event.h"
#include "mailoauth/trace.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

static const char *trace_channel = "mailoauth.spool";

#define MAILOAUTH_SPOOL_CHUNK   (1024 * 1024)

static int mailoauth_spool_has_suffix(const char *name, const char *suffix) {
  size_t nlen = strlen(name), slen = strlen(suffix);

  return nlen > slen && name[0] != '.' &&
    strcmp(name + nlen - slen, suffix) == 0;
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

  /* The mode as asked, whatever the umask (a metrics file is 0644). */
  if (fchmod(fd, mode) < 0 ||
      mailoauth_io_write_all(fd, data, len) < 0 ||
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

  return mailoauth_io_fsync_dir(dir);
}

/* A process whose stdin, stdout or stderr was closed gets those numbers
 * from open(): whatever later writes "to stderr" (a crash message of another
 * module) would land in the journal.
 */
static int mailoauth_spool_fd_above_stdio(int fd) {
  int nfd, xerrno;

  if (fd < 0 ||
      fd > STDERR_FILENO) {
    return fd;
  }

  nfd = fcntl(fd, F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
  xerrno = errno;
  (void) close(fd);
  errno = xerrno;
  return nfd;
}

static void mailoauth_spool_put32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char) (v >> 24);
  p[1] = (unsigned char) (v >> 16);
  p[2] = (unsigned char) (v >> 8);
  p[3] = (unsigned char) v;
}

static uint32_t mailoauth_spool_get32(const unsigned char *p) {
  return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) |
    ((uint32_t) p[2] << 8) | (uint32_t) p[3];
}

/* HMAC over the frame's offset, length and record: the same bytes anywhere
 * else in the journal, or in another journal, do not verify.
 */
static int mailoauth_spool_mac(const unsigned char *key, off_t offset,
    const unsigned char *rec, size_t len, unsigned char *mac) {
  unsigned char pre[12];
  char digest[] = "SHA256";
  OSSL_PARAM params[2];
  EVP_MAC *hmac;
  EVP_MAC_CTX *ctx = NULL;
  size_t mac_len = 0;
  int ok = 0;

  mailoauth_spool_put32(pre, (uint32_t) ((uint64_t) offset >> 32));
  mailoauth_spool_put32(pre + 4, (uint32_t) offset);
  mailoauth_spool_put32(pre + 8, (uint32_t) len);

  params[0] = OSSL_PARAM_construct_utf8_string("digest", digest, 0);
  params[1] = OSSL_PARAM_construct_end();

  hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
  if (hmac != NULL) {
    ctx = EVP_MAC_CTX_new(hmac);
  }

  if (ctx != NULL) {
    ok = EVP_MAC_init(ctx, key, MAILOAUTH_SPOOL_KEY_LEN, params) &&
      EVP_MAC_update(ctx, pre, sizeof(pre)) &&
      EVP_MAC_update(ctx, rec, len) &&
      EVP_MAC_final(ctx, mac, &mac_len, MAILOAUTH_SPOOL_MAC_LEN) &&
      mac_len == MAILOAUTH_SPOOL_MAC_LEN;
  }

  EVP_MAC_CTX_free(ctx);
  EVP_MAC_free(hmac);

  if (!ok) {
    errno = EIO;
    return -1;
  }

  return 0;
}

int mailoauth_spool_journal_open(struct mailoauth_journal *j,
    const char *spool_dir, uid_t dir_owner) {
  char tmp[64], dst[128];
  unsigned char header[MAILOAUTH_SPOOL_HEADER_LEN];
  struct timeval tv;
  struct stat st;
  int dfd, fd, xerrno;

  j->fd = -1;

  /* The directory belongs to a less trusted user: act only through a
   * descriptor of it, opened without following a link in its place.
   */
  dfd = open(spool_dir, O_RDONLY|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC);
  dfd = mailoauth_spool_fd_above_stdio(dfd);
  if (dfd < 0) {
    return -1;
  }

  if (fstat(dfd, &st) < 0) {
    xerrno = errno;
    (void) close(dfd);
    errno = xerrno;
    return -1;
  }

  if (st.st_uid != dir_owner ||
      (st.st_mode & 077) != 0) {
    (void) close(dfd);
    errno = EPERM;
    return -1;
  }

  if (getrandom(j->key, sizeof(j->key), 0) != (ssize_t) sizeof(j->key)) {
    xerrno = errno;
    (void) close(dfd);
    errno = xerrno ? xerrno : EIO;
    return -1;
  }

  gettimeofday(&tv, NULL);

  /* Names sort by creation time, which keeps the queue roughly in upload
   * order across sessions.
   */
  snprintf(dst, sizeof(dst), "%010lld.%06ld-%ld%s", (long long) tv.tv_sec,
    (long) tv.tv_usec, (long) getpid(), MAILOAUTH_SPOOL_JOURNAL_SUFFIX);
  snprintf(tmp, sizeof(tmp), ".new-%ld", (long) getpid());

  (void) unlinkat(dfd, tmp, 0);
  fd = openat(dfd, tmp, O_WRONLY|O_CREAT|O_EXCL|O_APPEND|O_NOFOLLOW|O_CLOEXEC,
    0600);
  fd = mailoauth_spool_fd_above_stdio(fd);
  if (fd < 0) {
    xerrno = errno;
    (void) close(dfd);
    OPENSSL_cleanse(j->key, sizeof(j->key));
    errno = xerrno;
    return -1;
  }

  memcpy(header, MAILOAUTH_SPOOL_MAGIC, 4);
  memset(header + 4, 0, 4);
  memcpy(header + 8, j->key, MAILOAUTH_SPOOL_KEY_LEN);

  /* The lock is taken before the journal becomes visible under its real
   * name: a worker that could lock it would take the session for ended.
   * The header is complete by then, so the worker never sees a journal
   * without its key.
   */
  if (flock(fd, LOCK_EX|LOCK_NB) < 0 ||
      mailoauth_io_write_all(fd, header, sizeof(header)) < 0 ||
      renameat(dfd, tmp, dfd, dst) < 0) {
    xerrno = errno;
    (void) close(fd);
    (void) unlinkat(dfd, tmp, 0);
    (void) close(dfd);
    OPENSSL_cleanse(header, sizeof(header));
    OPENSSL_cleanse(j->key, sizeof(j->key));
    errno = xerrno;
    return -1;
  }

  OPENSSL_cleanse(header, sizeof(header));
  (void) close(dfd);
  j->fd = fd;
  mailoauth_trace(trace_channel, 9, "opened journal '%s/%s'", spool_dir, dst);
  return 0;
}

int mailoauth_spool_journal_append(struct mailoauth_journal *j,
    const void *rec, size_t len) {
  unsigned char *frame;
  struct stat st;
  size_t frame_len;
  int res = 0, xerrno;

  if (j->fd < 0 ||
      len > MAILOAUTH_EVENT_MAX_PAYLOAD + MAILOAUTH_EVENT_HEADER_LEN +
        MAILOAUTH_EVENT_TRAILER_LEN) {
    errno = j->fd < 0 ? EBADF : EFBIG;
    return -1;
  }

  /* The session is the journal's only writer: its size is where the frame
   * lands (O_APPEND), and the offset the MAC binds it to.
   */
  if (fstat(j->fd, &st) < 0) {
    return -1;
  }

  frame_len = 4 + len + MAILOAUTH_SPOOL_MAC_LEN;
  frame = malloc(frame_len);
  if (frame == NULL) {
    errno = ENOMEM;
    return -1;
  }

  mailoauth_spool_put32(frame, (uint32_t) len);
  memcpy(frame + 4, rec, len);
  if (mailoauth_spool_mac(j->key, st.st_size, rec, len, frame + 4 + len) < 0) {
    xerrno = errno;
    free(frame);
    errno = xerrno;
    return -1;
  }

  if (mailoauth_io_write_all(j->fd, frame, frame_len) < 0) {
    /* Never leave part of a frame behind (disk full): the reader could not
     * step over it to the records after it.
     */
    xerrno = errno;
    if (ftruncate(j->fd, st.st_size) < 0) {
      /* Nothing more to try: the worker drops the damaged tail. */
    }
    errno = xerrno;
    res = -1;
  }

  free(frame);
  return res;
}

void mailoauth_spool_journal_close(struct mailoauth_journal *j) {
  if (j->fd >= 0) {
    (void) close(j->fd);
    j->fd = -1;
  }
  OPENSSL_cleanse(j->key, sizeof(j->key));
}

int mailoauth_spool_frame_parse(const unsigned char *key, off_t offset,
    const unsigned char *data, size_t len, size_t *frame_len,
    const unsigned char **rec, size_t *rec_len) {
  unsigned char mac[MAILOAUTH_SPOOL_MAC_LEN];
  struct mailoauth_event ev;
  uint32_t rlen;
  size_t total;

  if (len < 4) {
    return MAILOAUTH_SPOOL_FRAME_PARTIAL;
  }

  rlen = mailoauth_spool_get32(data);
  if (rlen < MAILOAUTH_EVENT_HEADER_LEN + MAILOAUTH_EVENT_TRAILER_LEN ||
      rlen > MAILOAUTH_EVENT_MAX_PAYLOAD + MAILOAUTH_EVENT_HEADER_LEN +
        MAILOAUTH_EVENT_TRAILER_LEN) {
    return MAILOAUTH_SPOOL_FRAME_UNREADABLE;
  }

  total = 4 + (size_t) rlen + MAILOAUTH_SPOOL_MAC_LEN;
  if (len < total) {
    return MAILOAUTH_SPOOL_FRAME_PARTIAL;
  }

  *frame_len = total;
  if (mailoauth_spool_mac(key, offset, data + 4, rlen, mac) < 0 ||
      CRYPTO_memcmp(mac, data + 4 + rlen, sizeof(mac)) != 0 ||
      mailoauth_event_parse(data + 4, rlen, &ev) != (ssize_t) rlen) {
    return MAILOAUTH_SPOOL_FRAME_DAMAGED;
  }

  *rec = data + 4;
  *rec_len = rlen;
  return MAILOAUTH_SPOOL_FRAME_OK;
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

/* Reads the journal's header: 0 with the key, 1 if it is not all there yet
 * (only possible for a journal being created by an old module version; a
 * current one renames it into place complete), -1 if it is not a journal.
 */
static int mailoauth_spool_read_header(int fd, off_t size, unsigned char *key) {
  unsigned char header[MAILOAUTH_SPOOL_HEADER_LEN];
  size_t have = 0;

  if (size < (off_t) sizeof(header)) {
    return size == 0 ? 1 : -1;
  }

  while (have < sizeof(header)) {
    ssize_t n = pread(fd, header + have, sizeof(header) - have, (off_t) have);

    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return -1;
    }
    have += (size_t) n;
  }

  if (memcmp(header, MAILOAUTH_SPOOL_MAGIC, 4) != 0) {
    return -1;
  }

  memcpy(key, header + 8, MAILOAUTH_SPOOL_KEY_LEN);
  OPENSSL_cleanse(header, sizeof(header));
  return 0;
}

static int mailoauth_spool_drain_journal(const char *spool_dir,
    const char *queue_dir, const char *name, unsigned char *buf,
    struct mailoauth_spool_stats *stats) {
  char path[4096], stem[512];
  unsigned char key[MAILOAUTH_SPOOL_KEY_LEN];
  struct stat st;
  off_t offset, start;
  int fd, finished, res = 0, header, stuck = 0;
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
  header = mailoauth_spool_read_header(fd, st.st_size, key);
  if (header != 0) {
    if (finished) {
      char opath[4096];

      if (header < 0) {
        mailoauth_log("journal '%s' is not an upload journal of this "
          "version (%lld bytes); discarding it", path,
          (long long) st.st_size);
      }
      snprintf(opath, sizeof(opath), "%s/%s.off", spool_dir, stem);
      (void) unlink(path);
      (void) unlink(opath);
      stats->removed++;
    }
    (void) close(fd);
    return 0;
  }

  start = offset = mailoauth_spool_read_offset(spool_dir, stem);
  if (offset < MAILOAUTH_SPOOL_HEADER_LEN) {
    start = offset = MAILOAUTH_SPOOL_HEADER_LEN;
  }

  while (offset < st.st_size && !stuck) {
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
      const unsigned char *rec = NULL;
      size_t frame_len = 0, rec_len = 0;
      int verdict;

      verdict = mailoauth_spool_frame_parse(key, offset + (off_t) pos,
        buf + pos, have - pos, &frame_len, &rec, &rec_len);

      if (verdict == MAILOAUTH_SPOOL_FRAME_PARTIAL) {
        break;
      }

      if (verdict == MAILOAUTH_SPOOL_FRAME_UNREADABLE) {
        /* No frame boundary can be trusted beyond this point: wait for the
         * session to end, then drop the rest (below).
         */
        stuck = 1;
        break;
      }

      if (verdict == MAILOAUTH_SPOOL_FRAME_DAMAGED) {
        stats->corrupt++;
        mailoauth_log("journal '%s': skipping a damaged record of %lu bytes "
          "at offset %lld", path, (unsigned long) frame_len,
          (long long) offset + (long long) pos);
        pos += frame_len;
        continue;
      }

      if (mailoauth_spool_queue_record(queue_dir, stem, offset + (off_t) pos,
          rec, rec_len) < 0) {
        mailoauth_log("cannot queue event from journal '%s': %s", path,
          strerror(errno));
        res = -1;
        break;
      }

      stats->queued++;
      pos += frame_len;
    }

    offset += (off_t) pos;
    if (res < 0 || pos == 0) {
      break;
    }
  }

  OPENSSL_cleanse(key, sizeof(key));

  if (offset != start) {
    char stamp[64], oname[600];
    int len;

    len = snprintf(stamp, sizeof(stamp), "%lld\n", (long long) offset);
    snprintf(oname, sizeof(oname), "%s.off", stem);

    /* The queue entries must be durable before the offset says they
     * exist; the offset must be durable before any of them is delivered.
     */
    if (mailoauth_io_fsync_dir(queue_dir) < 0 ||
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
      stats->corrupt++;
      mailoauth_log("journal '%s': dropping %lld bytes of an incomplete or "
        "damaged record at offset %lld, left by an ended session", path,
        (long long) (st.st_size - offset), (long long) offset);
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

int mailoauth_queue_oldest(const char *queue_dir, time_t *oldest) {
  struct dirent **names = NULL;
  int i, n, dfd;

  *oldest = 0;
  dfd = open(queue_dir, O_RDONLY|O_DIRECTORY|O_CLOEXEC);
  if (dfd < 0) {
    return -1;
  }

  n = scandir(queue_dir, &names, mailoauth_spool_select_queued, NULL);
  if (n < 0) {
    int xerrno = errno;

    (void) close(dfd);
    errno = xerrno;
    return -1;
  }

  for (i = 0; i < n; i++) {
    struct stat st;

    if (fstatat(dfd, names[i]->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        (*oldest == 0 || st.st_mtime < *oldest)) {
      *oldest = st.st_mtime;
    }
    free(names[i]);
  }
  free(names);
  (void) close(dfd);
  return n;
}

int mailoauth_queue_move_all(const char *from_dir, const char *to_dir) {
  struct dirent **names = NULL;
  int i, n, moved = 0;

  n = scandir(from_dir, &names, mailoauth_spool_select_queued, alphasort);
  if (n < 0) {
    return -1;
  }

  for (i = 0; i < n; i++) {
    char from[4096], to[4096];

    if ((size_t) snprintf(from, sizeof(from), "%s/%s", from_dir,
          names[i]->d_name) < sizeof(from) &&
        (size_t) snprintf(to, sizeof(to), "%s/%s", to_dir,
          names[i]->d_name) < sizeof(to)) {
      /* Never over an event of the same name: both are kept. */
      if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0) {
        moved++;
      } else {
        mailoauth_log("cannot move '%s' back to '%s': %s", from, to,
          strerror(errno));
      }
    }
    free(names[i]);
  }
  free(names);

  if (moved > 0) {
    (void) mailoauth_io_fsync_dir(to_dir);
    (void) mailoauth_io_fsync_dir(from_dir);
  }
  return moved;
}
