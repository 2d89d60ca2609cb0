/*
 * Unit tests for contrib/confread.c, the sign-in tool's proftpd.conf
 * reader: ProFTPD's word rules, line continuation, Include (files, globs,
 * directories, loops), sections, and where errors are reported.
 *
 * The unit-test build links mod_mailoauth/'s units only; this tool helper
 * is compiled in here.
 */

#include "../../contrib/confread.c"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[64];

static void setup(void) {
  strcpy(dir, "/tmp/mailoauth-conf-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void) {
  char cmd[PATH_MAX + 32];

  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  if (system(cmd) != 0) {
    fprintf(stderr, "cannot remove %s\n", dir);
  }
}

static const char *write_conf(const char *name, const char *text) {
  static char path[PATH_MAX];
  FILE *fh;

  snprintf(path, sizeof(path), "%s/%s", dir, name);
  fh = fopen(path, "w");
  ck_assert_ptr_nonnull(fh);
  ck_assert_int_ge(fputs(text, fh), 0);
  fclose(fh);
  return path;
}

static int read_conf(const char *path, struct ftpmailoauth_conf *conf,
    char *err, size_t errlen) {
  memset(conf, 0, sizeof(*conf));
  return ftpmailoauth_conf_read(path, conf, err, errlen);
}

START_TEST(test_split_words) {
  char **w = NULL;
  int n;

  n = ftpmailoauth_conf_split("  MailOAuthAccount  a\tb=c  ", &w);
  ck_assert_int_eq(n, 3);
  ck_assert_str_eq(w[0], "MailOAuthAccount");
  ck_assert_str_eq(w[1], "a");
  ck_assert_str_eq(w[2], "b=c");
  ftpmailoauth_conf_free_words(w, n);

  /* Quotes only at the start of a word; backslash escapes inside them. */
  n = ftpmailoauth_conf_split("x \"scopes=a b\" \"say \\\"hi\\\"\" k=\"v\"",
    &w);
  ck_assert_int_eq(n, 4);
  ck_assert_str_eq(w[1], "scopes=a b");
  ck_assert_str_eq(w[2], "say \"hi\"");
  ck_assert_str_eq(w[3], "k=\"v\"");
  ftpmailoauth_conf_free_words(w, n);

  /* A word starting with '#' ends the line; one containing it does not. */
  n = ftpmailoauth_conf_split("User ftp # the daemon", &w);
  ck_assert_int_eq(n, 2);
  ftpmailoauth_conf_free_words(w, n);
  n = ftpmailoauth_conf_split("a x#y", &w);
  ck_assert_int_eq(n, 2);
  ck_assert_str_eq(w[1], "x#y");
  ftpmailoauth_conf_free_words(w, n);

  n = ftpmailoauth_conf_split("   # only a comment", &w);
  ck_assert_int_eq(n, 0);
  ftpmailoauth_conf_free_words(w, n);
}
END_TEST

START_TEST(test_env_expansion) {
  char **w = NULL;
  int n;

  setenv("CONFREAD_TEST_TENANT", "contoso.test", 1);
  unsetenv("CONFREAD_TEST_UNSET");

  n = ftpmailoauth_conf_split("a %{env:CONFREAD_TEST_TENANT} "
    "tenant=%{env:CONFREAD_TEST_TENANT}/x %{env:CONFREAD_TEST_UNSET} "
    "k=%{env:CONFREAD_TEST_UNSET}", &w);
  ck_assert_int_eq(n, 5);
  ck_assert_str_eq(w[1], "contoso.test");
  ck_assert_str_eq(w[2], "tenant=contoso.test/x");
  ck_assert_str_eq(w[3], "");
  ck_assert_str_eq(w[4], "k=%{env:CONFREAD_TEST_UNSET}");
  ftpmailoauth_conf_free_words(w, n);
}
END_TEST

START_TEST(test_accounts_and_settings) {
  struct ftpmailoauth_conf conf;
  const struct ftpmailoauth_conf_account *a;
  const char *path;
  char err[1024];

  path = write_conf("proftpd.conf",
    "# comment\n"
    "ServerName \"x y\"\n"
    "User proftpd\n"
    "Group nogroup\n"
    "<IfModule mod_mailoauth.c>\n"
    "  MailOAuthStateDir /var/lib/x\n"
    "  MailOAuthAccount sales client-id=1 \\\n"
    "      mailbox=a@b.test \\\n"
    "      \"scopes=s1 s2\"\n"
    "  mailoauthaccount other client-id=2\\\n"
    "mailbox=c@d.test\r\n"
    "</IfModule>\n"
    "<VirtualHost 127.0.0.1>\n"
    "  User nobody\n"
    "  <Anonymous /srv/ftp>\n"
    "    User ftp\n"
    "  </Anonymous>\n"
    "</VirtualHost>\n");

  ck_assert_msg(read_conf(path, &conf, err, sizeof(err)) == 0, "%s", err);
  ck_assert_uint_eq(conf.naccounts, 2);

  a = ftpmailoauth_conf_find(&conf, "sales");
  ck_assert_ptr_nonnull(a);
  ck_assert_int_eq(a->argc, 3);
  ck_assert_str_eq(a->argv[0], "client-id=1");
  ck_assert_str_eq(a->argv[1], "mailbox=a@b.test");
  ck_assert_str_eq(a->argv[2], "scopes=s1 s2");
  ck_assert_ptr_nonnull(strstr(a->where, "proftpd.conf:7"));

  /* Joined without a space, as ProFTPD joins them. */
  a = ftpmailoauth_conf_find(&conf, "other");
  ck_assert_ptr_nonnull(a);
  ck_assert_int_eq(a->argc, 1);
  ck_assert_str_eq(a->argv[0], "client-id=2mailbox=c@d.test");
  ck_assert_ptr_null(ftpmailoauth_conf_find(&conf, "nosuch"));

  /* The daemon's User, not a virtual host's or <Anonymous>'s. */
  ck_assert_str_eq(conf.user.value, "proftpd");
  ck_assert_ptr_nonnull(strstr(conf.user.where, "proftpd.conf:3"));
  ck_assert_str_eq(conf.group.value, "nogroup");
  ck_assert_str_eq(conf.state_dir.value, "/var/lib/x");
  ftpmailoauth_conf_free(&conf);
}
END_TEST

START_TEST(test_include) {
  struct ftpmailoauth_conf conf;
  char sub[128], text[512], err[1024];
  const char *path;

  snprintf(sub, sizeof(sub), "%s/conf.d", dir);
  ck_assert_int_eq(mkdir(sub, 0755), 0);
  write_conf("conf.d/b.conf", "MailOAuthAccount b client-id=2\n");
  write_conf("conf.d/a.conf", "MailOAuthAccount a client-id=1\n");
  write_conf("conf.d/a.conf~", "MailOAuthAccount backup client-id=0\n");
  write_conf("conf.d/.hidden", "MailOAuthAccount hidden client-id=0\n");
  write_conf("one.conf", "MailOAuthAccount one client-id=3\n");

  /* A glob, a directory, a relative file, and a glob matching nothing. */
  snprintf(text, sizeof(text), "Include %s/conf.d/*.conf\n"
    "Include one.conf\nInclude %s/none/*.conf\n", dir, dir);
  path = write_conf("proftpd.conf", text);
  ck_assert_msg(read_conf(path, &conf, err, sizeof(err)) == 0, "%s", err);
  ck_assert_uint_eq(conf.naccounts, 3);
  ck_assert_str_eq(conf.accounts[0].name, "a");
  ck_assert_str_eq(conf.accounts[1].name, "b");
  ck_assert_str_eq(conf.accounts[2].name, "one");
  ck_assert_ptr_nonnull(strstr(conf.accounts[0].where, "conf.d/a.conf:1"));
  ftpmailoauth_conf_free(&conf);

  snprintf(text, sizeof(text), "Include %s/conf.d\n", dir);
  path = write_conf("proftpd.conf", text);
  ck_assert_msg(read_conf(path, &conf, err, sizeof(err)) == 0, "%s", err);
  ck_assert_uint_eq(conf.naccounts, 2);
  ftpmailoauth_conf_free(&conf);

  /* A named file that is missing is an error, with the line. */
  path = write_conf("proftpd.conf", "\nInclude /nonexistent/x.conf\n");
  ck_assert_int_eq(read_conf(path, &conf, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "proftpd.conf:2"));
  ck_assert_ptr_nonnull(strstr(err, "/nonexistent/x.conf"));
  ftpmailoauth_conf_free(&conf);
}
END_TEST

START_TEST(test_errors) {
  struct ftpmailoauth_conf conf;
  char err[1024];
  const char *path;

  /* An Include loop ends, with an error. */
  path = write_conf("loop.conf", "Include loop.conf\n");
  ck_assert_int_eq(read_conf(path, &conf, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "loop"));
  ftpmailoauth_conf_free(&conf);

  path = write_conf("dup.conf", "MailOAuthAccount a client-id=1\n\n"
    "MailOAuthAccount a client-id=2\n");
  ck_assert_int_eq(read_conf(path, &conf, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "dup.conf:3"));
  ck_assert_ptr_nonnull(strstr(err, "dup.conf:1"));
  ftpmailoauth_conf_free(&conf);

  path = write_conf("noname.conf", "MailOAuthAccount\n");
  ck_assert_int_eq(read_conf(path, &conf, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "noname.conf:1"));
  ftpmailoauth_conf_free(&conf);

  path = write_conf("open.conf", "<IfModule mod_x.c>\nUser a\n");
  ck_assert_int_eq(read_conf(path, &conf, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "never closed"));
  ftpmailoauth_conf_free(&conf);

  path = write_conf("close.conf", "</Directory>\n");
  ck_assert_int_eq(read_conf(path, &conf, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "close.conf:1"));
  ftpmailoauth_conf_free(&conf);

  ck_assert_int_eq(read_conf("/nonexistent/proftpd.conf", &conf, err,
    sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "/nonexistent/proftpd.conf"));
  ftpmailoauth_conf_free(&conf);

  /* A continuation at the end of the file still yields the line. */
  path = write_conf("tail.conf", "MailOAuthAccount t client-id=1 \\\n");
  ck_assert_msg(read_conf(path, &conf, err, sizeof(err)) == 0, "%s", err);
  ck_assert_uint_eq(conf.naccounts, 1);
  ftpmailoauth_conf_free(&conf);
}
END_TEST

static Suite *confread_suite(void) {
  Suite *s = suite_create("confread");
  TCase *tc = tcase_create("confread");

  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_split_words);
  tcase_add_test(tc, test_env_expansion);
  tcase_add_test(tc, test_accounts_and_settings);
  tcase_add_test(tc, test_include);
  tcase_add_test(tc, test_errors);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr;
  int failed;

  sr = srunner_create(confread_suite());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
