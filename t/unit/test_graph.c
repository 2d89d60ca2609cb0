/*
 * Unit tests: how Microsoft Graph's answers are classified for the queue,
 * and the hints their error codes get.
 */

#include "mailoauth/graph.h"
#include "mailoauth/mailauth.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

START_TEST(test_classify) {
  static const struct {
    long status;
    const char *code;
    mailoauth_smtp_status_t want;
  } cases[] = {
    { 202, NULL, MAILOAUTH_SMTP_SENT },
    { 201, NULL, MAILOAUTH_SMTP_SENT },
    /* A refused token: refresh and try once more. */
    { 401, "InvalidAuthenticationToken", MAILOAUTH_SMTP_AUTHFAIL },
    /* Throttling and outages: later, with Retry-After. */
    { 429, "ApplicationThrottled", MAILOAUTH_SMTP_TEMPFAIL },
    { 503, "ServiceUnavailable", MAILOAUTH_SMTP_TEMPFAIL },
    { 504, NULL, MAILOAUTH_SMTP_TEMPFAIL },
    { 0, NULL, MAILOAUTH_SMTP_TEMPFAIL },
    /* The tenant must change: keep the mail, a person must look. */
    { 403, "ErrorAccessDenied", MAILOAUTH_SMTP_CONFIG },
    { 403, "ErrorSendAsDenied", MAILOAUTH_SMTP_CONFIG },
    { 404, "ErrorInvalidUser", MAILOAUTH_SMTP_CONFIG },
    { 400, "MailboxNotEnabledForRESTAPI", MAILOAUTH_SMTP_CONFIG },
    /* This message never will go. */
    { 400, "ErrorMimeContentInvalidBase64String", MAILOAUTH_SMTP_PERMFAIL },
    { 413, "ErrorRequestEntityTooLarge", MAILOAUTH_SMTP_PERMFAIL },
  };
  size_t i;

  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    ck_assert_msg(mailoauth_graph_classify(cases[i].status, cases[i].code) ==
      cases[i].want, "HTTP %ld %s", cases[i].status,
      cases[i].code ? cases[i].code : "");
  }
}
END_TEST

START_TEST(test_hints) {
  const char *h;

  h = mailoauth_mailauth_hint("HTTP 403 ErrorAccessDenied: Access is "
    "denied.");
  ck_assert_ptr_nonnull(h);
  ck_assert_ptr_nonnull(strstr(h, "Mail.Send"));
  h = mailoauth_mailauth_hint("HTTP 403 ErrorSendAsDenied: ...");
  ck_assert_ptr_nonnull(h);
  ck_assert_ptr_nonnull(strstr(h, "Send As"));
  /* A draft refused: the large-file path needs Mail.ReadWrite. */
  h = mailoauth_mailauth_hint("draft for a large file refused: HTTP 403 "
    "ErrorAccessDenied: Access is denied.");
  ck_assert_ptr_nonnull(h);
  ck_assert_ptr_nonnull(strstr(h, "Mail.ReadWrite"));
  h = mailoauth_mailauth_hint("HTTP 400 MailboxNotEnabledForRESTAPI: x");
  ck_assert_ptr_nonnull(h);
  /* SMTP AUTH switched off: the way out is Graph. */
  h = mailoauth_mailauth_hint("535 5.7.139 Authentication unsuccessful, "
    "SmtpClientAuthentication is disabled for the Tenant.");
  ck_assert_ptr_nonnull(h);
  ck_assert_ptr_nonnull(strstr(h, "transport=graph"));
  h = mailoauth_mailauth_hint("535 5.7.139 Authentication unsuccessful, "
    "the request did not meet the criteria to be authenticated "
    "successfully.");
  ck_assert_ptr_nonnull(h);
  ck_assert_ptr_nonnull(strstr(h, "transport=graph"));
}
END_TEST

int main(void) {
  Suite *s = suite_create("graph");
  TCase *tc = tcase_create("graph");
  SRunner *sr;
  int failed;

  tcase_add_test(tc, test_classify);
  tcase_add_test(tc, test_hints);
  suite_add_tcase(s, tc);

  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
