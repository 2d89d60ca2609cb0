/*
 * Unit tests: session journals, draining into the queue, and the queue.
 */

#include "mailoauth/event.h"
#include "mailoauth/spool.h"

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static char root[256], spool[300], queue[300];
static struct mailoauth_journal sj;

static void setup(void) {
  strcpy(root, "/tmp/mailoauth-unit-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(root));
  snprintf(spool, sizeof(spool), "%s/spool", root);
  snprintf(queue, sizeof(queue), "%s/queue", root);
  ck_assert_int_eq(mkdir(spool, 0700), 0);
  ck_assert_int_eq(mkdir(queue, 0700), 0);
}

static void teardown(void) {
  char cmd[400];

  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
  ck_assert_int_eq(system(cmd), 0);
}

static size_t record(unsigned char *buf, size_t size, const char *path) {
  struct mailoauth_event_buf b;
  ssize_t len;

  mailoauth_event_buf_init(&b, buf, size);
  ck_assert_int_eq(mailoauth_event_add_str(&b, MAILOAUTH_EVENT_F_PATH, path),
    0);
  len = mailoauth_event_finish(&b);
  ck_assert_int_gt(len, 0);
  return (size_t) len;
}

static void append(struct mailoauth_journal *j, const char *path) {
  unsigned char buf[512];
  size_t len = record(buf, sizeof(buf), path);

  ck_assert_int_eq(mailoauth_spool_journal_append(j, buf, len), 0);
}

/* The one journal in dir (its path in buf), or "" if there is none. */
static const char *journal_path(const char *dir, char *buf, size_t size) {
  DIR *d = opendir(dir);
  struct dirent *e;

  buf[0] = '\0';
  ck_assert_ptr_nonnull(d);
  while ((e = readdir(d)) != NULL) {
    size_t l = strlen(e->d_name);

    if (l > 2 && strcmp(e->d_name + l - 2, ".j") == 0) {
      snprintf(buf, size, "%s/%s", dir, e->d_name);
    }
  }
  closedir(d);
  return buf;
}

static off_t file_size(int fd) {
  struct stat st;

  ck_assert_int_eq(fstat(fd, &st), 0);
  return st.st_size;
}

/* The bytes of the journal from offset on (malloc'd). */
static unsigned char *read_back(const char *dir, off_t offset, size_t *len) {
  char path[600];
  unsigned char *data;
  struct stat st;
  int fd;

  fd = open(journal_path(dir, path, sizeof(path)), O_RDONLY);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(fstat(fd, &st), 0);
  *len = (size_t) (st.st_size - offset);
  data = malloc(*len + 1);
  ck_assert_int_eq((int) pread(fd, data, *len, offset), (int) *len);
  close(fd);
  return data;
}

static int count_suffix(const char *dir, const char *suffix) {
  DIR *d = opendir(dir);
  struct dirent *e;
  int n = 0;

  ck_assert_ptr_nonnull(d);
  while ((e = readdir(d)) != NULL) {
    size_t l = strlen(e->d_name), sl = strlen(suffix);

    if (e->d_name[0] != '.' &&
        l > sl && strcmp(e->d_name + l - sl, suffix) == 0) {
      n++;
    }
  }
  closedir(d);
  return n;
}

/* Collects queued paths in order. */
struct seen {
  char paths[16][64];
  int n;
  int keep_from;        /* keep (return 1) events from this index on */
};

static int collect(const char *id, const unsigned char *rec, size_t len,
    void *arg) {
  struct seen *s = arg;
  struct mailoauth_event ev;
  const struct mailoauth_event_field *f;

  (void) id;
  ck_assert_int_eq(mailoauth_event_parse(rec, len, &ev), (ssize_t) len);
  f = mailoauth_event_get(&ev, MAILOAUTH_EVENT_F_PATH);
  ck_assert_ptr_nonnull(f);
  snprintf(s->paths[s->n], sizeof(s->paths[0]), "%.*s", (int) f->len,
    f->value);
  s->n++;
  return (s->keep_from > 0 && s->n > s->keep_from) ? 1 : 0;
}

START_TEST(test_journal_private_and_locked) {
  struct stat st;
  DIR *d;
  struct dirent *e;
  int fd, other, found = 0;

  ck_assert_int_eq(mailoauth_spool_journal_open(&sj, spool, geteuid()), 0);
  fd = sj.fd;
  ck_assert_int_gt(fd, 2);
  ck_assert_int_eq(fstat(fd, &st), 0);
  ck_assert_uint_eq(st.st_mode & 07777, 0600);

  d = opendir(spool);
  while ((e = readdir(d)) != NULL) {
    if (strstr(e->d_name, ".j") != NULL) {
      char p[600];

      found++;
      snprintf(p, sizeof(p), "%s/%s", spool, e->d_name);
      other = open(p, O_RDONLY);
      ck_assert_int_ge(other, 0);
      /* The session's lock is what tells the worker it is still alive. */
      ck_assert_int_eq(flock(other, LOCK_EX|LOCK_NB), -1);
      close(other);
    }
  }
  closedir(d);
  ck_assert_int_eq(found, 1);
  close(fd);
}
END_TEST

START_TEST(test_drain_live_then_finished) {
  struct mailoauth_spool_stats st;
  struct seen seen;

  memset(&seen, 0, sizeof(seen));
  ck_assert_int_eq(mailoauth_spool_journal_open(&sj, spool, geteuid()), 0);
  append(&sj, "/a");
  append(&sj, "/b");

  ck_assert_int_eq(mailoauth_spool_drain(spool, queue, &st), 0);
  ck_assert_uint_eq(st.queued, 2);
  ck_assert_uint_eq(st.removed, 0);
  ck_assert_int_eq(count_suffix(spool, ".j"), 1);

  /* Nothing new: a second pass queues nothing. */
  ck_assert_int_eq(mailoauth_spool_drain(spool, queue, &st), 0);
  ck_assert_uint_eq(st.queued, 0);

  append(&sj, "/c");
  mailoauth_spool_journal_close(&sj);    /* the session ends */
  ck_assert_int_eq(mailoauth_spool_drain(spool, queue, &st), 0);
  ck_assert_uint_eq(st.queued, 1);
  ck_assert_uint_eq(st.removed, 1);
  ck_assert_int_eq(count_suffix(spool, ".j"), 0);
  ck_assert_int_eq(count_suffix(spool, ".off"), 0);

  ck_assert_int_eq(mailoauth_queue_count(queue), 3);
  ck_assert_int_eq(mailoauth_queue_process(queue, collect, &seen), 3);
  ck_assert_int_eq(seen.n, 3);
  ck_assert_str_eq(seen.paths[0], "/a");
  ck_assert_str_eq(seen.paths[1], "/b");
  ck_assert_str_eq(seen.paths[2], "/c");
  ck_assert_int_eq(mailoauth_queue_count(queue), 0);
}
END_TEST

START_TEST(test_redrain_after_lost_progress_does_not_duplicate) {
  struct mailoauth_spool_stats st;
  char cmd[400];

  ck_assert_int_eq(mailoauth_spool_journal_open(&sj, spool, geteuid()), 0);
  append(&sj, "/one");
  append(&sj, "/two");
  ck_assert_int_eq(mailoauth_spool_drain(spool, queue, &st), 0);

  /* A crash after queueing but before the progress was recorded. */
  snprintf(cmd, sizeof(cmd), "rm -f %s/*.off", spool);
  ck_assert_int_eq(system(cmd), 0);
  ck_assert_int_eq(mailoauth_spool_drain(spool, queue, &st), 0);
  ck_assert_uint_eq(st.queued, 2);
  ck_assert_int_eq(mailoauth_queue_count(queue), 2);
  mailoauth_spool_journal_close(&sj);
}
END_TEST

START_TEST(test_torn_tail_of_ended_session_discarded) {
  struct mailoauth_spool_stats st;
  struct seen seen;
  off_t before_torn;

  memset(&seen, 0, sizeof(seen));
  ck_assert_int_eq(mailoauth_spool_journal_open(&sj, spool, geteuid()), 0);
  append(&sj, "/one");
  append(&sj, "/two");
  before_torn = file_size(sj.fd);
  append(&sj, "/torn");
  /* A crash in the middle of the last write. */
  ck_assert_int_eq(ftruncate(sj.fd, before_torn +
    (file_size(sj.fd) - before_torn) / 2), 0);
  mailoauth_spool_journal_close(&sj);

  ck_assert_int_eq(mailoauth_spool_drain(spool, queue, &st), 0);
  ck_assert_uint_eq(st.queued, 2);
  ck_assert_uint_eq(st.corrupt, 1);
  ck_assert_uint_eq(st.removed, 1);
  ck_assert_int_eq(count_suffix(spool, ".j"), 0);
  ck_assert_int_eq(mailoauth_queue_process(queue, collect, &seen), 2);
  ck_assert_str_eq(seen.paths[0], "/one");
  ck_assert_str_eq(seen.paths[1], "/two");
}
END_TEST

START_TEST(test_torn_tail_of_live_session_waits) {
  struct mailoauth_spool_stats st;
  off_t before_torn;

  ck_assert_int_eq(mailoauth_spool_journal_open(&sj, spool, geteuid()), 0);
  append(&sj, "/one");
  before_torn = file_size(sj.fd);
  append(&sj, "/half");
  ck_assert_int_eq(ftruncate(sj.fd, before_torn + 10), 0);

  /* Possibly a record still being written: nothing skipped, nothing said. */
  ck_assert_int_eq(mailoauth_spool_drain(spool, queue, &st), 0);
  ck_assert_uint_eq(st.queued, 1);
  ck_assert_uint_eq(st.corrupt, 0);
  ck_assert_uint_eq(st.removed, 0);
  mailoauth_spool_journal_close(&sj);
}
END_TEST

START_TEST(test_damaged_record_costs_one_event) {
  struct mailoauth_spool_stats st;
  struct seen seen;
  char path[600];
  off_t at;
  int fd;

  memset(&seen, 0, sizeof(seen));
  ck_assert_int_eq(mailoauth_spool_journal_open(&sj, spool, geteuid()), 0);
  append(&sj, "/before");
  at = file_size(sj.fd);
  append(&sj, "/damaged");
  append(&sj, "/after");
  mailoauth_spool_journal_close(&sj);

  /* One flipped bit in the middle of the second record. */
  fd = open(journal_path(spool, path, sizeof(path)), O_RDWR);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq((int) pwrite(fd, "\x01", 1, at + 20), 1);
  close(fd);

  ck_assert_int_eq(mailoauth_spool_drain(spool, queue, &st), 0);
  ck_assert_uint_eq(st.corrupt, 1);
  ck_assert_uint_eq(st.queued, 2);
  ck_assert_int_eq(mailoauth_queue_process(queue, collect, &seen), 2);
  ck_assert_str_eq(seen.paths[0], "/before");
  ck_assert_str_eq(seen.paths[1], "/after");
}
END_TEST

/* The attack: an uploader chooses a file name that holds a complete record
 * (and a complete journal frame), and the record around it is torn.  A
 * reader that looked for the next record inside the damaged bytes would
 * find the uploader's.
 */
START_TEST(test_record_forged_in_a_name_after_torn_write_refused) {
  unsigned char name[1024], forged[512], *frame_b, *frame_r;
  struct mailoauth_journal other;
  struct mailoauth_spool_stats st;
  struct seen seen;
  char other_dir[400];
  size_t flen, rlen, nlen = 0, frame_b_len, frame_r_len;
  off_t at;

  memset(&seen, 0, sizeof(seen));

  /* A frame for "/forged" as a session of another journal would write it:
   * authentic there, at this very offset.
   */
  snprintf(other_dir, sizeof(other_dir), "%s/other", root);
  ck_assert_int_eq(mkdir(other_dir, 0700), 0);
  ck_assert_int_eq(mailoauth_spool_journal_open(&other, other_dir, geteuid()),
    0);
  append(&other, "/forged");
  frame_b = read_back(other_dir, MAILOAUTH_SPOOL_HEADER_LEN, &frame_b_len);
  mailoauth_spool_journal_close(&other);

  /* The name: a bare record, then that frame. */
  flen = record(forged, sizeof(forged), "/forged");
  memcpy(name, "/x", 2);
  nlen = 2;
  memcpy(name + nlen, forged, flen);
  nlen += flen;
  memcpy(name + nlen, frame_b, frame_b_len);
  nlen += frame_b_len;
  free(frame_b);

  ck_assert_int_eq(mailoauth_spool_journal_open(&sj, spool, geteuid()), 0);
  append(&sj, "/before");
  at = file_size(sj.fd);
  {
    unsigned char buf[2048];
    struct mailoauth_event_buf b;
    ssize_t len;

    mailoauth_event_buf_init(&b, buf, sizeof(buf));
    ck_assert_int_eq(mailoauth_event_add(&b, MAILOAUTH_EVENT_F_PATH,
      (const char *) name, nlen), 0);
    len = mailoauth_event_finish(&b);
    ck_assert_int_gt(len, 0);
    rlen = (size_t) len;
    ck_assert_int_eq(mailoauth_spool_journal_append(&sj, buf, rlen), 0);
  }

  /* Torn just after the forged bytes; the session then goes on writing. */
  frame_r = read_back(spool, at, &frame_r_len);
  ck_assert_uint_gt(frame_r_len, 4 + 8 + 5 + nlen);
  free(frame_r);
  ck_assert_int_eq(ftruncate(sj.fd, at + 4 + 8 + 5 + (off_t) nlen), 0);
  append(&sj, "/after");
  mailoauth_spool_journal_close(&sj);

  ck_assert_int_eq(mailoauth_spool_drain(spool, queue, &st), 0);
  ck_assert_uint_ge(st.corrupt, 1);
  ck_assert_uint_eq(st.removed, 1);
  ck_assert_int_eq(mailoauth_queue_process(queue, collect, &seen), 1);
  ck_assert_str_eq(seen.paths[0], "/before");
}
END_TEST

/* Frames are bound to their journal and their place in it. */
START_TEST(test_frame_from_elsewhere_refused) {
  struct mailoauth_journal other;
  struct mailoauth_spool_stats st;
  struct seen seen;
  unsigned char *foreign, *own;
  char other_dir[400];
  size_t foreign_len, own_len;

  memset(&seen, 0, sizeof(seen));
  snprintf(other_dir, sizeof(other_dir), "%s/other", root);
  ck_assert_int_eq(mkdir(other_dir, 0700), 0);
  ck_assert_int_eq(mailoauth_spool_journal_open(&other, other_dir, geteuid()),
    0);
  append(&other, "/foreign");
  foreign = read_back(other_dir, MAILOAUTH_SPOOL_HEADER_LEN, &foreign_len);
  mailoauth_spool_journal_close(&other);

  ck_assert_int_eq(mailoauth_spool_journal_open(&sj, spool, geteuid()), 0);
  append(&sj, "/own");
  own = read_back(spool, MAILOAUTH_SPOOL_HEADER_LEN, &own_len);

  /* Another journal's frame, then a replay of this journal's own. */
  ck_assert_int_eq((int) write(sj.fd, foreign, foreign_len), (int) foreign_len);
  ck_assert_int_eq((int) write(sj.fd, own, own_len), (int) own_len);
  append(&sj, "/after");
  mailoauth_spool_journal_close(&sj);
  free(foreign);
  free(own);

  ck_assert_int_eq(mailoauth_spool_drain(spool, queue, &st), 0);
  ck_assert_uint_eq(st.corrupt, 2);
  ck_assert_uint_eq(st.queued, 2);
  ck_assert_int_eq(mailoauth_queue_process(queue, collect, &seen), 2);
  ck_assert_str_eq(seen.paths[0], "/own");
  ck_assert_str_eq(seen.paths[1], "/after");
}
END_TEST

START_TEST(test_empty_journal_of_ended_session_removed_quietly) {
  struct mailoauth_spool_stats st;

  ck_assert_int_eq(mailoauth_spool_journal_open(&sj, spool, geteuid()), 0);
  mailoauth_spool_journal_close(&sj);
  ck_assert_int_eq(mailoauth_spool_drain(spool, queue, &st), 0);
  ck_assert_uint_eq(st.removed, 1);
  ck_assert_uint_eq(st.corrupt, 0);
  ck_assert_uint_eq(st.queued, 0);
  ck_assert_int_eq(count_suffix(spool, ".j"), 0);
  ck_assert_int_eq(count_suffix(spool, ".off"), 0);
}
END_TEST

START_TEST(test_symlinked_or_open_spool_refused) {
  char canary[400], link[400];
  struct stat st;

  snprintf(canary, sizeof(canary), "%s/canary", root);
  snprintf(link, sizeof(link), "%s/link", root);
  ck_assert_int_eq(mkdir(canary, 0700), 0);
  ck_assert_int_eq(symlink(canary, link), 0);

  ck_assert_int_eq(mailoauth_spool_journal_open(&sj, link, geteuid()), -1);
  ck_assert(errno == ELOOP || errno == ENOTDIR);
  ck_assert_int_eq(sj.fd, -1);
  ck_assert_int_eq(count_suffix(canary, ""), 0);
  ck_assert_int_eq(stat(canary, &st), 0);
  ck_assert_uint_eq(st.st_nlink, 2);

  /* Not the expected owner, or open to others. */
  ck_assert_int_eq(mailoauth_spool_journal_open(&sj, spool, geteuid() + 1),
    -1);
  ck_assert_int_eq(errno, EPERM);
  ck_assert_int_eq(chmod(spool, 0730), 0);
  ck_assert_int_eq(mailoauth_spool_journal_open(&sj, spool, geteuid()), -1);
  ck_assert_int_eq(errno, EPERM);
  ck_assert_int_eq(count_suffix(spool, ""), 0);
}
END_TEST

START_TEST(test_journal_never_gets_stdio_descriptors) {
  int saved[3], i;

  for (i = 0; i < 3; i++) {
    saved[i] = dup(i);
    ck_assert_int_gt(saved[i], 2);
  }
  for (i = 0; i < 3; i++) {
    close(i);
  }

  i = mailoauth_spool_journal_open(&sj, spool, geteuid());
  /* Nothing left behind on the numbers a "write to stderr" would use. */
  ck_assert_int_eq(fcntl(0, F_GETFD), -1);
  ck_assert_int_eq(fcntl(1, F_GETFD), -1);
  ck_assert_int_eq(fcntl(2, F_GETFD), -1);

  for (i = 0; i < 3; i++) {
    dup2(saved[i], i);
    close(saved[i]);
  }
  ck_assert_int_gt(sj.fd, 2);
  ck_assert_int_ne(fcntl(sj.fd, F_GETFD) & FD_CLOEXEC, 0);
  mailoauth_spool_journal_close(&sj);
}
END_TEST

START_TEST(test_queue_keeps_what_the_callback_keeps) {
  struct mailoauth_spool_stats st;
  struct seen seen;

  memset(&seen, 0, sizeof(seen));
  seen.keep_from = 1;
  ck_assert_int_eq(mailoauth_spool_journal_open(&sj, spool, geteuid()), 0);
  append(&sj, "/x");
  append(&sj, "/y");
  mailoauth_spool_journal_close(&sj);
  ck_assert_int_eq(mailoauth_spool_drain(spool, queue, &st), 0);
  ck_assert_int_eq(mailoauth_queue_process(queue, collect, &seen), 1);
  ck_assert_int_eq(mailoauth_queue_count(queue), 1);
}
END_TEST

START_TEST(test_write_atomic_replaces_whole) {
  char path[400], buf[16];
  struct stat st;
  int fd;

  ck_assert_int_eq(mailoauth_spool_write_atomic(root, "f", "first", 5, 0600),
    0);
  ck_assert_int_eq(mailoauth_spool_write_atomic(root, "f", "2nd", 3, 0600), 0);
  snprintf(path, sizeof(path), "%s/f", root);
  fd = open(path, O_RDONLY);
  ck_assert_int_eq((int) read(fd, buf, sizeof(buf)), 3);
  mailoauth_spool_journal_close(&sj);
  ck_assert_int_eq(stat(path, &st), 0);
  ck_assert_uint_eq(st.st_mode & 07777, 0600);
  /* No temp file left behind. */
  ck_assert_int_eq(count_suffix(root, ".tmp"), 0);
}
END_TEST

START_TEST(test_missing_dirs_are_errors) {
  struct mailoauth_spool_stats st;

  ck_assert_int_eq(mailoauth_spool_journal_open(&sj, "/nonexistent/spool",
    0), -1);
  ck_assert_int_eq(errno, ENOENT);
  ck_assert_int_eq(mailoauth_spool_drain("/nonexistent/spool", queue, &st),
    -1);
}
END_TEST

int main(void) {
  Suite *s = suite_create("spool");
  TCase *tc = tcase_create("journals");
  SRunner *sr;
  int failed;

  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_journal_private_and_locked);
  tcase_add_test(tc, test_drain_live_then_finished);
  tcase_add_test(tc, test_redrain_after_lost_progress_does_not_duplicate);
  tcase_add_test(tc, test_torn_tail_of_ended_session_discarded);
  tcase_add_test(tc, test_torn_tail_of_live_session_waits);
  tcase_add_test(tc, test_damaged_record_costs_one_event);
  tcase_add_test(tc, test_record_forged_in_a_name_after_torn_write_refused);
  tcase_add_test(tc, test_frame_from_elsewhere_refused);
  tcase_add_test(tc, test_empty_journal_of_ended_session_removed_quietly);
  tcase_add_test(tc, test_symlinked_or_open_spool_refused);
  tcase_add_test(tc, test_journal_never_gets_stdio_descriptors);
  tcase_add_test(tc, test_queue_keeps_what_the_callback_keeps);
  tcase_add_test(tc, test_write_atomic_replaces_whole);
  tcase_add_test(tc, test_missing_dirs_are_errors);
  suite_add_tcase(s, tc);

  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
