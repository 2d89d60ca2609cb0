/*
 * Unit tests: MailOAuthIngest settings (the parts of ingest.c that need no
 * mail server; the runs themselves are tested in
 * t/integration/test_ingest.py).
 */

#include "mailoauth/ingest.h"

#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int parse(struct mailoauth_ingest_config *cfg, const char *key,
    const char *value, char *err, size_t errlen) {
  /* files= splits its value in place: give it a writable copy that lives
   * as long as the test.
   */
  static char buf[8][256];
  static unsigned int n;
  char *copy = buf[n++ % 8];

  strncpy(copy, value, 255);
  copy[255] = '\0';
  err[0] = '\0';
  return mailoauth_ingest_parse_setting(cfg, key, copy, err, errlen);
}

START_TEST(test_defaults) {
  struct mailoauth_ingest_config cfg;

  mailoauth_ingest_config_init(&cfg);
  ck_assert_str_eq(cfg.folder, "INBOX");
  ck_assert_int_eq(cfg.after, MAILOAUTH_INGEST_AFTER_SEEN);
  ck_assert_int_eq(cfg.failed, MAILOAUTH_INGEST_AFTER_LEAVE);
  ck_assert_ptr_null(cfg.files[0]);
  ck_assert_int_eq(cfg.inline_parts, 0);
  ck_assert_int_eq(cfg.save_message, 0);
  ck_assert_int_eq(cfg.metadata, 0);
  ck_assert_int_eq(cfg.tnef, 1);
  ck_assert_uint_eq(cfg.min_free, 100 * 1024 * 1024);
  ck_assert_uint_eq(cfg.nroutes, 0);
  ck_assert_ptr_null(cfg.filter.from[0]);
}
END_TEST

START_TEST(test_settings) {
  struct mailoauth_ingest_config cfg;
  char err[512];

  mailoauth_ingest_config_init(&cfg);
  ck_assert_int_eq(parse(&cfg, "account", "notify", err, sizeof(err)), 0);
  ck_assert_str_eq(cfg.account, "notify");
  ck_assert_int_eq(parse(&cfg, "files", "*.pdf,,*.xml", err, sizeof(err)),
    0);
  ck_assert_str_eq(cfg.files[0], "*.pdf");
  ck_assert_str_eq(cfg.files[1], "*.xml");
  ck_assert_ptr_null(cfg.files[2]);
  ck_assert_int_eq(parse(&cfg, "max-size", "25M", err, sizeof(err)), 0);
  ck_assert_uint_eq(cfg.max_size, 25 * 1024 * 1024);
  ck_assert_int_eq(parse(&cfg, "max-size", "100", err, sizeof(err)), 0);
  ck_assert_uint_eq(cfg.max_size, 100);
  ck_assert_int_eq(parse(&cfg, "after", "move:Done/2024", err, sizeof(err)),
    0);
  ck_assert_int_eq(cfg.after, MAILOAUTH_INGEST_AFTER_MOVE);
  ck_assert_str_eq(cfg.after_folder, "Done/2024");
  ck_assert_int_eq(parse(&cfg, "after", "delete", err, sizeof(err)), 0);
  ck_assert_int_eq(cfg.after, MAILOAUTH_INGEST_AFTER_DELETE);
  ck_assert_int_eq(parse(&cfg, "failed", "move:Failed", err, sizeof(err)),
    0);
  ck_assert_int_eq(cfg.failed, MAILOAUTH_INGEST_AFTER_MOVE);
  ck_assert_int_eq(parse(&cfg, "inline", "on", err, sizeof(err)), 0);
  ck_assert_int_eq(cfg.inline_parts, 1);
  ck_assert_int_eq(parse(&cfg, "name", "%Y/%{filename}", err, sizeof(err)),
    0);
  ck_assert_int_eq(parse(&cfg, "subject", "Scan *", err, sizeof(err)), 0);
  ck_assert_str_eq(cfg.filter.subject, "Scan *");
  ck_assert_int_eq(parse(&cfg, "from", "contoso.com,*@fabrikam.com", err,
    sizeof(err)), 0);
  ck_assert_str_eq(cfg.filter.from[0], "contoso.com");
  ck_assert_str_eq(cfg.filter.from[1], "*@fabrikam.com");
  ck_assert_ptr_null(cfg.filter.from[2]);
  ck_assert_int_eq(parse(&cfg, "to", "+scans", err, sizeof(err)), 0);
  ck_assert_str_eq(cfg.filter.to[0], "+scans");
  ck_assert_int_eq(parse(&cfg, "dir", "/srv//a", err, sizeof(err)), -1);
  ck_assert_int_eq(parse(&cfg, "dir", "/srv/ftp/a//", err, sizeof(err)), 0);
  ck_assert_str_eq(cfg.dir, "/srv/ftp/a");
  ck_assert_int_eq(parse(&cfg, "eml", "on", err, sizeof(err)), 0);
  ck_assert_int_eq(cfg.save_message, 1);
  ck_assert_int_eq(parse(&cfg, "metadata", "on", err, sizeof(err)), 0);
  ck_assert_int_eq(cfg.metadata, 1);
  ck_assert_int_eq(parse(&cfg, "min-free", "0", err, sizeof(err)), 0);
  ck_assert_uint_eq(cfg.min_free, 0);
  ck_assert_int_eq(parse(&cfg, "tnef", "off", err, sizeof(err)), 0);
  ck_assert_int_eq(cfg.tnef, 0);
}
END_TEST

START_TEST(test_mistakes_say_what_to_write) {
  static const struct {
    const char *key, *value, *hint;
  } bad[] = {
    { "max-size", "lots", "write e.g. max-size=25M" },
    { "max-size", "-1", "write e.g. max-size=25M" },
    { "max-size", "5T", "write e.g. max-size=25M" },
    { "after", "leave", "write after=seen" },
    { "after", "move:", "write after=seen" },
    { "failed", "seen", "write failed=leave" },
    { "inline", "yes", "write inline=on" },
    { "files", ",", "write files=GLOB" },
    { "name", "/etc/%{filename}", "not a valid template" },
    { "name", "../%{filename}", "not a valid template" },
    { "account", "", "write account=NAME" },
    { "eml", "yes", "write eml=on" },
    { "min-free", "lots", "write e.g. min-free=1G" },
    { "metadata", "1", "write metadata=on" },
    { "from", "a.test,", "from= has an empty pattern" },
    { "to", "+", "to=+invoices" },
    { "dir", "relative/x", "must be an absolute path" },
    { "dir", "/srv/../etc", "must be an absolute path" },
    { "colour", "blue", "unknown setting 'colour'" },
  };
  unsigned int i;

  for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    struct mailoauth_ingest_config cfg;
    char err[512];

    mailoauth_ingest_config_init(&cfg);
    ck_assert_int_eq(parse(&cfg, bad[i].key, bad[i].value, err,
      sizeof(err)), -1);
    ck_assert_msg(strstr(err, bad[i].hint) != NULL, "%s=%s: %s",
      bad[i].key, bad[i].value, err);
  }
}
END_TEST

START_TEST(test_task_names) {
  ck_assert_int_eq(mailoauth_ingest_valid_name("t1"), 1);
  ck_assert_int_eq(mailoauth_ingest_valid_name("acme_scans-2.x"), 1);
  ck_assert_int_eq(mailoauth_ingest_valid_name(""), 0);
  ck_assert_int_eq(mailoauth_ingest_valid_name(".hidden"), 0);
  ck_assert_int_eq(mailoauth_ingest_valid_name("-x"), 0);
  ck_assert_int_eq(mailoauth_ingest_valid_name("a/b"), 0);
  ck_assert_int_eq(mailoauth_ingest_valid_name("a b"), 0);
  ck_assert_int_eq(mailoauth_ingest_valid_name(
    "0123456789012345678901234567890123456789012345678901234567890123"), 1);
  ck_assert_int_eq(mailoauth_ingest_valid_name(
    "01234567890123456789012345678901234567890123456789012345678901234"), 0);
}
END_TEST

START_TEST(test_add_refuses_bad_tasks) {
  struct mailoauth_ingest *ing;
  struct mailoauth_ingest_config cfg;

  ing = mailoauth_ingest_create("/nonexistent", NULL, -1);
  ck_assert_ptr_nonnull(ing);

  mailoauth_ingest_config_init(&cfg);
  cfg.name = "t1";
  cfg.account = "a";
  cfg.every = 60;
  cfg.dir = "/srv/in";
  cfg.uid = 0;
  cfg.gid = 2001;
  ck_assert_int_eq(mailoauth_ingest_add(ing, &cfg), -1);
  ck_assert_int_eq(errno, EINVAL);

  cfg.uid = 2001;
  cfg.dir = "relative";
  ck_assert_int_eq(mailoauth_ingest_add(ing, &cfg), -1);

  cfg.dir = "/srv/in";
  ck_assert_int_eq(mailoauth_ingest_add(ing, &cfg), 0);
  mailoauth_ingest_destroy(ing);
}
END_TEST

int main(void) {
  Suite *s = suite_create("ingest");
  TCase *tc = tcase_create("ingest");
  SRunner *sr;
  int failed;

  tcase_add_test(tc, test_defaults);
  tcase_add_test(tc, test_settings);
  tcase_add_test(tc, test_mistakes_say_what_to_write);
  tcase_add_test(tc, test_task_names);
  tcase_add_test(tc, test_add_refuses_bad_tasks);
  suite_add_tcase(s, tc);

  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
