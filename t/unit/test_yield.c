/*
 * Unit tests: the yield hook runs at most once per interval, never inside
 * itself, and polls are cut into slices only while a hook is set.
 */

#include "mailoauth/yield.h"

#include <check.h>
#include <stdlib.h>
#include <time.h>

static int calls;

static void sleep_ms(long ms) {
  struct timespec ts;

  ts.tv_sec = ms / 1000;
  ts.tv_nsec = (ms % 1000) * 1000000L;
  nanosleep(&ts, NULL);
}

static long long now_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void count_hook(void *arg) {
  (void) arg;
  calls++;
}

static void nested_hook(void *arg) {
  (void) arg;
  calls++;
  /* The hook's own waits yield too: that must not recurse, and inside
   * it no poll is cut short.
   */
  mailoauth_yield();
  ck_assert_int_eq(mailoauth_yield_slice(5000), 5000);
}

START_TEST(test_no_hook) {
  calls = 0;
  mailoauth_yield_set(NULL, NULL);
  mailoauth_yield();
  ck_assert_int_eq(calls, 0);
  ck_assert_int_eq(mailoauth_yield_slice(5000), 5000);
  ck_assert_int_eq(mailoauth_yield_slice(-1), -1);
}
END_TEST

START_TEST(test_interval) {
  long long t0;
  int i;

  calls = 0;
  mailoauth_yield_set(count_hook, NULL);
  /* Just set: not before an interval has passed. */
  mailoauth_yield();
  ck_assert_int_eq(calls, 0);
  sleep_ms(MAILOAUTH_YIELD_INTERVAL_MS + 20);
  t0 = now_ms();
  for (i = 0; i < 1000; i++) {
    mailoauth_yield();
  }
  /* Once, however many calls; more only if the machine stalled for an
   * interval in between.
   */
  ck_assert_int_ge(calls, 1);
  ck_assert_int_le(calls, 1 + (now_ms() - t0) / MAILOAUTH_YIELD_INTERVAL_MS);
  calls = 1;
  sleep_ms(MAILOAUTH_YIELD_INTERVAL_MS + 20);
  mailoauth_yield();
  ck_assert_int_eq(calls, 2);
  mailoauth_yield_set(NULL, NULL);
}
END_TEST

START_TEST(test_slices) {
  mailoauth_yield_set(count_hook, NULL);
  ck_assert_int_eq(mailoauth_yield_slice(-1), MAILOAUTH_YIELD_SLICE_MS);
  ck_assert_int_eq(mailoauth_yield_slice(60000), MAILOAUTH_YIELD_SLICE_MS);
  ck_assert_int_eq(mailoauth_yield_slice(30), 30);
  ck_assert_int_eq(mailoauth_yield_slice(0), 0);
  mailoauth_yield_set(NULL, NULL);
}
END_TEST

START_TEST(test_not_reentrant) {
  calls = 0;
  mailoauth_yield_set(nested_hook, NULL);
  sleep_ms(MAILOAUTH_YIELD_INTERVAL_MS + 20);
  mailoauth_yield();
  ck_assert_int_eq(calls, 1);
  mailoauth_yield_set(NULL, NULL);
}
END_TEST

int main(void) {
  Suite *s = suite_create("yield");
  TCase *tc = tcase_create("yield");
  SRunner *sr;
  int failed;

  tcase_add_test(tc, test_no_hook);
  tcase_add_test(tc, test_interval);
  tcase_add_test(tc, test_slices);
  tcase_add_test(tc, test_not_reentrant);
  suite_add_tcase(s, tc);

  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
