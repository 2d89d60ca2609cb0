/*
 * Unit tests: the status document rendered in the Prometheus text format
 * (values, labels escaped, unknown values left out), and moving dead
 * letters back to the queue.
 */

#include "mailoauth/jsonwrap.h"
#include "mailoauth/metrics.h"
#include "mailoauth/spool.h"

#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *doc =
  "{\"version\": 1, \"pid\": 7, \"started\": 1000, "
  "\"accounts\": [{\"name\": \"notify\", \"state\": \"ok\", "
  "\"refreshes\": 3, \"refresh_failures\": 1, "
  "\"refresh_token_lapses\": 6000}, "
  "{\"name\": \"odd\\\"name\\\\x\", \"state\": \"sign-in-needed\", "
  "\"refreshes\": 0, \"refresh_failures\": 2, "
  "\"refresh_token_lapses\": null}], "
  "\"notifications\": {\"sent\": 2, \"failed\": 5, \"dead_lettered\": 1, "
  "\"queued\": 4, \"dead_letters\": 1, \"oldest_queued\": 1900}, "
  "\"tasks\": [{\"name\": \"scans\", \"messages\": 9, \"bytes\": 12345, "
  "\"errors\": 0, \"last_success\": null, \"last_run\": 1990}]}";

static int has_line(const char *text, const char *line) {
  const char *p = text;
  size_t len = strlen(line);

  while ((p = strstr(p, line)) != NULL) {
    if ((p == text || p[-1] == '\n') && p[len] == '\n') {
      return 1;
    }
    p += len;
  }
  return 0;
}

START_TEST(test_render) {
  json_t *status = json_loads(doc, 0, NULL);
  char *text;

  ck_assert_ptr_nonnull(status);
  text = mailoauth_metrics_render(status, 2000);
  ck_assert_ptr_nonnull(text);

  ck_assert(has_line(text, "# TYPE mailoauth_notifications_sent_total "
    "counter"));
  ck_assert(has_line(text, "mailoauth_notifications_sent_total 2"));
  ck_assert(has_line(text, "mailoauth_notifications_failed_total 5"));
  ck_assert(has_line(text, "mailoauth_notifications_dead_lettered_total 1"));
  ck_assert(has_line(text, "# TYPE mailoauth_notifications_queued gauge"));
  ck_assert(has_line(text, "mailoauth_notifications_queued 4"));
  ck_assert(has_line(text, "mailoauth_notifications_dead_letters 1"));
  ck_assert(has_line(text,
    "mailoauth_notifications_oldest_queued_age_seconds 100"));
  ck_assert(has_line(text,
    "mailoauth_token_refreshes_total{account=\"notify\"} 3"));
  ck_assert(has_line(text,
    "mailoauth_token_refresh_failures_total{account=\"odd\\\"name\\\\x\"} 2"));
  ck_assert(has_line(text,
    "mailoauth_refresh_token_lapse_seconds{account=\"notify\"} 4000"));
  /* Not known for the second account: no sample rather than a made-up 0. */
  ck_assert_ptr_null(strstr(text,
    "mailoauth_refresh_token_lapse_seconds{account=\"odd"));
  ck_assert(has_line(text, "mailoauth_account_ok{account=\"notify\"} 1"));
  ck_assert(has_line(text,
    "mailoauth_account_ok{account=\"odd\\\"name\\\\x\"} 0"));
  ck_assert(has_line(text, "mailoauth_ingest_messages_total{task=\"scans\"} "
    "9"));
  ck_assert(has_line(text, "mailoauth_ingest_bytes_total{task=\"scans\"} "
    "12345"));
  ck_assert(has_line(text, "mailoauth_ingest_errors_total{task=\"scans\"} "
    "0"));
  ck_assert_ptr_null(strstr(text, "last_success_timestamp_seconds{"));
  ck_assert(has_line(text, "mailoauth_ingest_last_run_timestamp_seconds"
    "{task=\"scans\"} 1990"));
  free(text);
  json_decref(status);
}
END_TEST

START_TEST(test_render_empty) {
  json_t *status = json_object();
  char *text = mailoauth_metrics_render(status, 2000);

  /* A worker without accounts or tasks still says its queue is empty. */
  ck_assert_ptr_nonnull(text);
  ck_assert(has_line(text, "mailoauth_notifications_queued 0"));
  ck_assert(has_line(text,
    "mailoauth_notifications_oldest_queued_age_seconds 0"));
  ck_assert_ptr_null(strstr(text, "{account="));
  free(text);
  json_decref(status);
}
END_TEST

static void touch(const char *dir, const char *name, const char *data) {
  char path[512];
  FILE *f;

  snprintf(path, sizeof(path), "%s/%s", dir, name);
  f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fputs(data, f);
  fclose(f);
}

START_TEST(test_move_all) {
  char base[] = "/tmp/test_metrics.XXXXXX", queue[256], dead[256], path[512];
  time_t oldest;
  FILE *f;
  char buf[16];

  ck_assert_ptr_nonnull(mkdtemp(base));
  snprintf(queue, sizeof(queue), "%s/queue", base);
  snprintf(dead, sizeof(dead), "%s/dead", base);
  ck_assert_int_eq(mkdir(queue, 0700), 0);
  ck_assert_int_eq(mkdir(dead, 0700), 0);

  touch(dead, "a.ev", "dead a");
  touch(dead, "b.ev", "dead b");
  touch(dead, "notes.txt", "not an event");
  touch(queue, "b.ev", "queued b");

  ck_assert_int_eq(mailoauth_queue_oldest(queue, &oldest), 1);
  ck_assert(oldest > 0);

  /* b.ev is in both: the queued one is not overwritten, the dead one
   * stays where it is.
   */
  ck_assert_int_eq(mailoauth_queue_move_all(dead, queue), 1);
  snprintf(path, sizeof(path), "%s/a.ev", queue);
  ck_assert_int_eq(access(path, F_OK), 0);
  snprintf(path, sizeof(path), "%s/b.ev", queue);
  f = fopen(path, "r");
  ck_assert_ptr_nonnull(f);
  ck_assert_ptr_nonnull(fgets(buf, sizeof(buf), f));
  fclose(f);
  ck_assert_str_eq(buf, "queued b");
  snprintf(path, sizeof(path), "%s/b.ev", dead);
  ck_assert_int_eq(access(path, F_OK), 0);
  ck_assert_int_eq(mailoauth_queue_count(queue), 2);
  ck_assert_int_eq(mailoauth_queue_count(dead), 1);

  ck_assert_int_eq(mailoauth_queue_oldest(dead, &oldest), 1);
  snprintf(path, sizeof(path), "rm -rf '%s'", base);
  ck_assert_int_eq(system(path), 0);
}
END_TEST

int main(void) {
  Suite *s = suite_create("metrics");
  TCase *tc = tcase_create("core");
  SRunner *sr;
  int failed;

  tcase_add_test(tc, test_render);
  tcase_add_test(tc, test_render_empty);
  tcase_add_test(tc, test_move_all);
  suite_add_tcase(s, tc);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
