/*
 * Unit tests: a pull task's ledger on disk (request lines with the part's
 * SHA-256, and the lines ledgers held before digests).
 */

#include "ingest/ingestint.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[64];
static struct mailoauth_ingest ing;
static struct ingest_task task;

static void setup(void) {
  strcpy(dir, "/tmp/mailoauth-ledger-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
  memset(&ing, 0, sizeof(ing));
  ing.tasks_dir = dir;
  memset(&task, 0, sizeof(task));
  task.cfg.name = "t1";
  task.uidvalidity = 77;
}

static void teardown(void) {
  char cmd[128];

  mailoauth_ingest_ledger_forget(&task);
  free(task.ledger);
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  ck_assert_int_eq(system(cmd), 0);
}

static void write_ledger(const char *text) {
  char path[128];
  FILE *fp;

  snprintf(path, sizeof(path), "%s/t1.ledger", dir);
  fp = fopen(path, "w");
  ck_assert_ptr_nonnull(fp);
  fputs(text, fp);
  fclose(fp);
}

START_TEST(test_request_line_keeps_digest_and_name) {
  unsigned char digest[32];
  const struct ingest_ledger_entry *e;
  size_t i;

  for (i = 0; i < sizeof(digest); i++) {
    digest[i] = (unsigned char) (i * 7 + 1);
  }
  ck_assert_int_eq(mailoauth_ingest_ledger_append(&ing, &task, 5, 2,
    "2026/a b.pdf", 1, 1700000000, 1234, digest), 0);

  /* As a restarted worker reads it. */
  mailoauth_ingest_ledger_forget(&task);
  ck_assert_int_eq(mailoauth_ingest_ledger_load(&ing, &task), 0);
  e = mailoauth_ingest_ledger_intent(&task, 5, 2);
  ck_assert_ptr_nonnull(e);
  ck_assert_uint_eq(e->size, 1234);
  ck_assert_int_eq((long) e->started, 1700000000L);
  ck_assert_int_eq(e->has_sha256, 1);
  ck_assert_mem_eq(e->sha256, digest, sizeof(digest));
  ck_assert_str_eq(e->name, "2026/a b.pdf");
  ck_assert_ptr_null(mailoauth_ingest_ledger_has(&task, 77, 5, 2));

  ck_assert_int_eq(mailoauth_ingest_ledger_append(&ing, &task, 5, 2,
    "2026/a b (1).pdf", 0, 0, 0, NULL), 0);
  mailoauth_ingest_ledger_forget(&task);
  ck_assert_int_eq(mailoauth_ingest_ledger_load(&ing, &task), 0);
  ck_assert_str_eq(mailoauth_ingest_ledger_has(&task, 77, 5, 2),
    "2026/a b (1).pdf");
}
END_TEST

START_TEST(test_old_request_lines_still_read) {
  const struct ingest_ledger_entry *e;

  /* Before digests; then a line cut short by a crash, which never counts. */
  write_ledger("? 77 9 3 1700000000 42 old name.txt\n"
    "? 77 9 4 1700000000 42 sha256=00");
  ck_assert_int_eq(mailoauth_ingest_ledger_load(&ing, &task), 0);
  e = mailoauth_ingest_ledger_intent(&task, 9, 3);
  ck_assert_ptr_nonnull(e);
  ck_assert_uint_eq(e->size, 42);
  ck_assert_int_eq(e->has_sha256, 0);
  ck_assert_str_eq(e->name, "old name.txt");
  ck_assert_ptr_null(mailoauth_ingest_ledger_intent(&task, 9, 4));

  /* A name that merely starts like a digest is a name. */
  mailoauth_ingest_ledger_forget(&task);
  write_ledger("? 77 9 5 1700000000 42 sha256=notadigest.txt\n");
  ck_assert_int_eq(mailoauth_ingest_ledger_load(&ing, &task), 0);
  e = mailoauth_ingest_ledger_intent(&task, 9, 5);
  ck_assert_ptr_nonnull(e);
  ck_assert_int_eq(e->has_sha256, 0);
  ck_assert_str_eq(e->name, "sha256=notadigest.txt");
}
END_TEST

int main(void) {
  Suite *s = suite_create("ledger");
  TCase *tc = tcase_create("ledger");
  SRunner *sr;
  int failed;

  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_request_line_keeps_digest_and_name);
  tcase_add_test(tc, test_old_request_lines_still_read);
  suite_add_tcase(s, tc);

  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
