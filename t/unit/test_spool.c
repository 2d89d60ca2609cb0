/*
 * Unit tests: session journals, draining into the queue, and the queue.
 */

#include "event.h"
#include "spool.h"

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

static void append(int fd, const char *path) {
  unsigned char buf[512];
  size_t len = record(buf, sizeof(buf), path);

  ck_assert_int_eq(mailoauth_spool_journal_append(fd, buf, len), 0);
}

static int count_suffix(const char *dir, const char *suffix) {
  DIR *d = opendir(dir);
  struct dirent *e;
  int n = 0;

  ck_assert_ptr_nonnull(d);
  while ((e = readdir(d)) != NULL) {
    size_t l = strlen(e->d_name), sl = strlen(suffix);

    if (l > sl && strcmp(e->d_name + l - sl, suffix) == 0) {
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

  fd = mailoauth_spool_journal_open(spool, geteuid(), getegid());
  ck_assert_int_ge(fd, 0);
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
  int fd;

  memset(&seen, 0, sizeof(seen));
  fd = mailoauth_spool_journal_open(spool, geteuid(), getegid());
  append(fd, "/a");
  append(fd, "/b");

  ck_assert_int_eq(mailoauth_spool_drain(spool, queue, &st), 0);
  ck_assert_uint_eq(st.queued, 2);
  ck_assert_uint_eq(st.removed, 0);
  ck_assert_int_eq(count_suffix(spool, ".j"), 1);

  /* Nothing new: a second pass queues nothing. */
  ck_assert_int_eq(mailoauth_spool_drain(spool, queue, &st), 0);
  ck_assert_uint_eq(st.queued, 0);

  append(fd, "/c");
  close(fd);    /* the session ends */
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
  int fd;

  fd = mailoauth_spool_journal_open(spool, geteuid(), getegid());
  append(fd, "/one");
  append(fd, "/two");
  ck_assert_int_eq(mailoauth_spool_drain(spool, queue, &st), 0);

  /* A crash after queueing but before the progress was recorded. */
  snprintf(cmd, sizeof(cmd), "rm -f %s/*.off", spool);
  ck_assert_int_eq(system(cmd), 0);
  ck_assert_int_eq(mailoauth_spool_drain(spool, queue, &st), 0);
  ck_assert_uint_eq(st.queued, 2);
  ck_assert_int_eq(mailoauth_queue_count(queue), 2);
  close(fd);
}
END_TEST

START_TEST(test_torn_tail_of_ended_session_discarded) {
  struct mailoauth_spool_stats st;
  unsigned char buf[512];
  size_t len;
  int fd;

  fd = mailoauth_spool_journal_open(spool, geteuid(), getegid());
  append(fd, "/whole");
  len = record(buf, sizeof(buf), "/torn");
  ck_assert_int_eq((int) write(fd, buf, len / 2), (int) (len / 2));
  close(fd);

  ck_assert_int_eq(mailoauth_spool_drain(spool, queue, &st), 0);
  ck_assert_uint_eq(st.queued, 1);
  ck_assert_uint_eq(st.removed, 1);
  ck_assert_int_eq(mailoauth_queue_count(queue), 1);
}
END_TEST

START_TEST(test_damaged_record_costs_one_event) {
  struct mailoauth_spool_stats st;
  struct seen seen;
  unsigned char buf[512];
  size_t len;
  int fd;

  memset(&seen, 0, sizeof(seen));
  fd = mailoauth_spool_journal_open(spool, geteuid(), getegid());
  append(fd, "/before");
  len = record(buf, sizeof(buf), "/damaged");
  buf[len - 1] ^= 0xff;
  ck_assert_int_eq((int) write(fd, buf, len), (int) len);
  append(fd, "/after");
  close(fd);

  ck_assert_int_eq(mailoauth_spool_drain(spool, queue, &st), 0);
  ck_assert_uint_eq(st.corrupt, 1);
  ck_assert_uint_eq(st.queued, 2);
  ck_assert_int_eq(mailoauth_queue_process(queue, collect, &seen), 2);
  ck_assert_str_eq(seen.paths[0], "/before");
  ck_assert_str_eq(seen.paths[1], "/after");
}
END_TEST

START_TEST(test_queue_keeps_what_the_callback_keeps) {
  struct mailoauth_spool_stats st;
  struct seen seen;
  int fd;

  memset(&seen, 0, sizeof(seen));
  seen.keep_from = 1;
  fd = mailoauth_spool_journal_open(spool, geteuid(), getegid());
  append(fd, "/x");
  append(fd, "/y");
  close(fd);
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
  close(fd);
  ck_assert_int_eq(stat(path, &st), 0);
  ck_assert_uint_eq(st.st_mode & 07777, 0600);
  /* No temp file left behind. */
  ck_assert_int_eq(count_suffix(root, ".tmp"), 0);
}
END_TEST

START_TEST(test_missing_dirs_are_errors) {
  struct mailoauth_spool_stats st;

  ck_assert_int_eq(mailoauth_spool_journal_open("/nonexistent/spool", 0, 0),
    -1);
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
  tcase_add_test(tc, test_damaged_record_costs_one_event);
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
