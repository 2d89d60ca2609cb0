/*
 * Unit tests: the MailOAuthAccount parser and client secret loading.
 */

#include "mailoauth/account.h"

#include <check.h>
#include <stdarg.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int parse(struct mailoauth_account *a, const char *name, char *err,
    size_t errlen, ...) {
  char *argv[32];
  int argc = 0;
  va_list ap;
  const char *arg;

  va_start(ap, errlen);
  while ((arg = va_arg(ap, const char *)) != NULL && argc < 32) {
    argv[argc++] = (char *) arg;
  }
  va_end(ap);

  err[0] = '\0';
  return mailoauth_account_parse(a, name, argc, argv, err, errlen);
}

START_TEST(test_microsoft_delegated_defaults) {
  struct mailoauth_account a;
  char err[512];

  ck_assert_int_eq(parse(&a, "notify", err, sizeof(err),
    "tenant=contoso.onmicrosoft.com", "client-id=11111111-2222-3333-4444-555555555555",
    "mailbox=ftp@contoso.com", NULL), 0);
  ck_assert_str_eq(a.name, "notify");
  ck_assert_str_eq(a.mailbox, "ftp@contoso.com");
  ck_assert_int_eq(a.oauth.provider, MAILOAUTH_OAUTH_PROVIDER_MICROSOFT);
  ck_assert_int_eq(a.oauth.grant, MAILOAUTH_OAUTH_GRANT_DELEGATED);
  ck_assert_str_eq(a.smtp_url, "smtp://smtp.office365.com:587");
  ck_assert_str_eq(a.imap_url, "imaps://outlook.office365.com:993");
  ck_assert_str_eq(a.redirect_uri, MAILOAUTH_ACCOUNT_DEFAULT_REDIRECT);
  ck_assert_ptr_null(a.oauth.client_secret);
  mailoauth_account_clear(&a);
}
END_TEST

START_TEST(test_sovereign_clouds_have_their_servers) {
  struct mailoauth_account a;
  char err[512];

  ck_assert_int_eq(parse(&a, "gov", err, sizeof(err), "provider=microsoft-usgov",
    "tenant=agency.onmicrosoft.us", "client-id=abc", "mailbox=a@agency.gov",
    NULL), 0);
  ck_assert_str_eq(a.smtp_url, "smtp://smtp.office365.us:587");
  mailoauth_account_clear(&a);

  ck_assert_int_eq(parse(&a, "cn", err, sizeof(err), "provider=microsoft-china",
    "tenant=x.partner.onmschina.cn", "client-id=abc", "mailbox=a@x.cn", NULL), 0);
  ck_assert_str_eq(a.imap_url, "imaps://partner.outlook.cn:993");
  mailoauth_account_clear(&a);
}
END_TEST

START_TEST(test_inline_secret_refused_without_echo) {
  struct mailoauth_account a;
  char err[512];

  ck_assert_int_eq(parse(&a, "x", err, sizeof(err), "tenant=t", "client-id=c",
    "mailbox=a@b.c", "client-secret=Sup3rS3cr3tValue~", NULL), -1);
  ck_assert_ptr_null(strstr(err, "Sup3rS3cr3tValue"));
  ck_assert_ptr_nonnull(strstr(err, "client-secret=file:/"));
  mailoauth_account_clear(&a);
}
END_TEST

START_TEST(test_typo_gets_suggestion) {
  struct mailoauth_account a;
  char err[512];

  ck_assert_int_eq(parse(&a, "x", err, sizeof(err), "tennant=t", "client-id=c",
    "mailbox=a@b.c", NULL), -1);
  ck_assert_ptr_nonnull(strstr(err, "did you mean 'tenant='"));
  mailoauth_account_clear(&a);

  ck_assert_int_eq(parse(&a, "x", err, sizeof(err), "colour=blue", NULL), -1);
  ck_assert_ptr_nonnull(strstr(err, "known: provider"));
  mailoauth_account_clear(&a);
}
END_TEST

START_TEST(test_required_and_invalid_values) {
  struct mailoauth_account a;
  char err[512];

  ck_assert_int_eq(parse(&a, "x", err, sizeof(err), "tenant=t",
    "mailbox=a@b.c", NULL), -1);
  ck_assert_ptr_nonnull(strstr(err, "client-id= is required"));
  mailoauth_account_clear(&a);

  ck_assert_int_eq(parse(&a, "x", err, sizeof(err), "client-id=c",
    "mailbox=not-an-address", NULL), -1);
  ck_assert_ptr_nonnull(strstr(err, "is not an email address"));
  mailoauth_account_clear(&a);

  ck_assert_int_eq(parse(&a, "../evil", err, sizeof(err), "client-id=c",
    "mailbox=a@b.c", NULL), -1);
  ck_assert_ptr_nonnull(strstr(err, "is not usable"));
  mailoauth_account_clear(&a);

  ck_assert_int_eq(parse(&a, "x", err, sizeof(err), "client-id=c",
    "mailbox=a@b.c", "smtp=http://mail", NULL), -1);
  ck_assert_ptr_nonnull(strstr(err, "smtp://host:587"));
  mailoauth_account_clear(&a);

  ck_assert_int_eq(parse(&a, "x", err, sizeof(err), "client-id=c",
    "mailbox=a@b.c", "grant=sometimes", NULL), -1);
  ck_assert_ptr_nonnull(strstr(err, "grant=app-only"));
  mailoauth_account_clear(&a);

  ck_assert_int_eq(parse(&a, "x", err, sizeof(err), "client-id=c",
    "mailbox=a@b.c", "noequals", NULL), -1);
  ck_assert_ptr_nonnull(strstr(err, "expected key=value"));
  mailoauth_account_clear(&a);
}
END_TEST

START_TEST(test_app_only_needs_secret_and_tenant) {
  struct mailoauth_account a;
  char err[512];

  ck_assert_int_eq(parse(&a, "app", err, sizeof(err), "grant=app-only",
    "tenant=contoso.onmicrosoft.com", "client-id=c", "mailbox=a@b.c", NULL), -1);
  ck_assert_ptr_nonnull(strstr(err, "needs client-secret"));
  mailoauth_account_clear(&a);

  ck_assert_int_eq(parse(&a, "app", err, sizeof(err), "grant=app-only",
    "tenant=organizations", "client-id=c", "mailbox=a@b.c",
    "client-secret=env:X", NULL), -1);
  ck_assert_ptr_nonnull(strstr(err, "real tenant"));
  mailoauth_account_clear(&a);

  ck_assert_int_eq(parse(&a, "app", err, sizeof(err), "grant=app-only",
    "tenant=contoso.onmicrosoft.com", "client-id=c", "mailbox=a@b.c",
    "client-secret=env:X", NULL), 0);
  ck_assert_int_eq(a.oauth.grant, MAILOAUTH_OAUTH_GRANT_APP_ONLY);
  mailoauth_account_clear(&a);
}
END_TEST

START_TEST(test_secret_from_file_and_env) {
  struct mailoauth_account a;
  char err[512], path[] = "/tmp/mailoauth-secret-XXXXXX", arg[128];
  int fd;

  fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq((int) write(fd, "s3cret-value\n", 13), 13);
  close(fd);
  snprintf(arg, sizeof(arg), "client-secret=file:%s", path);

  ck_assert_int_eq(parse(&a, "f", err, sizeof(err), "tenant=t", "client-id=c",
    "mailbox=a@b.c", arg, NULL), 0);
  ck_assert_int_eq(mailoauth_account_load_secret(&a, err, sizeof(err)), 0);
  /* The editor's newline is not part of the secret. */
  ck_assert_str_eq(a.oauth.client_secret, "s3cret-value");
  mailoauth_account_clear(&a);

  /* A secret others can read is refused, without quoting it. */
  ck_assert_int_eq(chmod(path, 0644), 0);
  ck_assert_int_eq(parse(&a, "f", err, sizeof(err), "tenant=t", "client-id=c",
    "mailbox=a@b.c", arg, NULL), 0);
  ck_assert_int_eq(mailoauth_account_load_secret(&a, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "chmod 0600"));
  ck_assert_ptr_null(strstr(err, "s3cret"));
  mailoauth_account_clear(&a);
  unlink(path);

  setenv("MAILOAUTH_TEST_SECRET", "from-env", 1);
  ck_assert_int_eq(parse(&a, "e", err, sizeof(err), "tenant=t", "client-id=c",
    "mailbox=a@b.c", "client-secret=env:MAILOAUTH_TEST_SECRET", NULL), 0);
  ck_assert_int_eq(mailoauth_account_load_secret(&a, err, sizeof(err)), 0);
  ck_assert_str_eq(a.oauth.client_secret, "from-env");
  mailoauth_account_clear(&a);

  ck_assert_int_eq(parse(&a, "e", err, sizeof(err), "tenant=t", "client-id=c",
    "mailbox=a@b.c", "client-secret=env:MAILOAUTH_TEST_UNSET", NULL), 0);
  ck_assert_int_eq(mailoauth_account_load_secret(&a, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "not set"));
  mailoauth_account_clear(&a);
}
END_TEST

START_TEST(test_check_secret_keeps_nothing_and_says_what_to_do) {
  struct mailoauth_account a;
  char err[512], path[] = "/tmp/mailoauth-secret-XXXXXX", arg[128];
  int fd;

  fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq((int) write(fd, "s3cret-value\n", 13), 13);
  close(fd);
  snprintf(arg, sizeof(arg), "client-secret=file:%s", path);

  ck_assert_int_eq(parse(&a, "f", err, sizeof(err), "tenant=t", "client-id=c",
    "mailbox=a@b.c", arg, NULL), 0);
  ck_assert_int_eq(mailoauth_account_check_secret(&a, err, sizeof(err)), 0);
  ck_assert_ptr_null(a.oauth.client_secret);

  /* Gone: the message names the file and the fix. */
  ck_assert_int_eq(unlink(path), 0);
  ck_assert_int_eq(mailoauth_account_check_secret(&a, err, sizeof(err)), -1);
  ck_assert_int_eq(errno, ENOENT);
  ck_assert_ptr_nonnull(strstr(err, path));
  ck_assert_ptr_nonnull(strstr(err, "install -m 0600"));
  ck_assert_ptr_nonnull(strstr(err, "then reload"));

  /* Empty counts as unusable too. */
  fd = open(path, O_WRONLY|O_CREAT|O_EXCL, 0600);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq((int) write(fd, "\n", 1), 1);
  close(fd);
  ck_assert_int_eq(mailoauth_account_check_secret(&a, err, sizeof(err)), -1);
  ck_assert_ptr_nonnull(strstr(err, "empty"));
  ck_assert_ptr_null(a.oauth.client_secret);
  mailoauth_account_clear(&a);
  unlink(path);
}
END_TEST

int main(void) {
  Suite *s = suite_create("account");
  TCase *tc = tcase_create("parse");
  SRunner *sr;
  int failed;

  tcase_add_test(tc, test_microsoft_delegated_defaults);
  tcase_add_test(tc, test_sovereign_clouds_have_their_servers);
  tcase_add_test(tc, test_inline_secret_refused_without_echo);
  tcase_add_test(tc, test_typo_gets_suggestion);
  tcase_add_test(tc, test_required_and_invalid_values);
  tcase_add_test(tc, test_app_only_needs_secret_and_tenant);
  tcase_add_test(tc, test_secret_from_file_and_env);
  tcase_add_test(tc, test_check_secret_keeps_nothing_and_says_what_to_do);
  suite_add_tcase(s, tc);

  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
