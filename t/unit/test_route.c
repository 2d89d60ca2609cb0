/*
 * Unit tests: routing rules of mail-to-folder tasks (address patterns,
 * plus-addressing, rule matching, setting parser).
 */

#include "mailoauth/route.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

START_TEST(test_addr_patterns) {
  static const struct {
    const char *pattern, *addr;
    int match;
  } cases[] = {
    { "contoso.com", "bob@contoso.com", 1 },
    { "contoso.com", "bob@CONTOSO.COM", 1 },
    { "contoso.com", "bob@mail.contoso.com", 0 },
    { "contoso.com", "contoso.com@evil.test", 0 },
    { "contoso.com", "bob@contoso.com.evil.test", 0 },
    { "@contoso.com", "bob@contoso.com", 1 },
    { "*.contoso.com", "bob@mail.contoso.com", 1 },
    { "*.contoso.com", "bob@contoso.com", 0 },
    { "bob@contoso.com", "Bob@Contoso.com", 1 },
    { "bob@contoso.com", "bob2@contoso.com", 0 },
    { "*@contoso.com", "anyone@contoso.com", 1 },
    { "scanner-*@contoso.com", "scanner-3@contoso.com", 1 },
    { "+invoices", "alice+invoices@contoso.com", 1 },
    { "+invoices", "alice+Invoices@contoso.com", 1 },
    { "+invoices", "alice+invoices2@contoso.com", 0 },
    { "+invoices", "alice@contoso.com", 0 },
    { "+invoices", "invoices@contoso.com", 0 },
    /* The tag is in the local part, never in the domain. */
    { "+x", "alice@a+x.test", 0 },
    /* Only the first '+' starts the tag. */
    { "+a+b", "alice+a+b@contoso.com", 1 },
    { "+inv*", "alice+invoices@contoso.com", 1 },
    { "contoso.com", "", 0 },
    { "contoso.com", "no-at-sign", 0 },
  };
  size_t i;

  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    ck_assert_msg(mailoauth_route_addr_match(cases[i].pattern,
      cases[i].addr) == cases[i].match, "%s vs %s: expected %d",
      cases[i].pattern, cases[i].addr, cases[i].match);
  }
  ck_assert_int_eq(mailoauth_route_addr_match(NULL, "a@b"), 0);
  ck_assert_int_eq(mailoauth_route_addr_match("b", NULL), 0);
}
END_TEST

/* Parsed settings point into their value: keep the copies until the
 * test ends.
 */
static char *kept[32];
static size_t nkept;

static char *keep(const char *s) {
  ck_assert_uint_lt(nkept, 32);
  kept[nkept] = strdup(s);
  ck_assert_ptr_nonnull(kept[nkept]);
  return kept[nkept++];
}

static void drop_kept(void) {
  while (nkept > 0) {
    free(kept[--nkept]);
  }
}

static struct mailoauth_route *route(const char *from, const char *to,
    const char *subject) {
  struct mailoauth_route *r = calloc(1, sizeof(*r));
  char err[256];

  ck_assert_ptr_nonnull(r);
  if (from != NULL) {
    ck_assert_int_eq(mailoauth_route_parse_setting(r, "from", keep(from),
      err, sizeof(err)), 0);
  }
  if (to != NULL) {
    ck_assert_int_eq(mailoauth_route_parse_setting(r, "To", keep(to),
      err, sizeof(err)), 0);
  }
  if (subject != NULL) {
    ck_assert_int_eq(mailoauth_route_parse_setting(r, "subject",
      keep(subject), err, sizeof(err)), 0);
  }
  return r;
}

START_TEST(test_match) {
  struct mailoauth_route *r;
  const char *rcpts = "inbox@partner.test,alice+scans@contoso.com";

  r = route("contoso.com,fabrikam.com", NULL, NULL);
  ck_assert(mailoauth_route_match(r, "x@fabrikam.com", rcpts, "s", NULL));
  ck_assert(mailoauth_route_match(r, "x@contoso.com", NULL, NULL, NULL));
  ck_assert(!mailoauth_route_match(r, "x@other.test", rcpts, "s", NULL));
  ck_assert(!mailoauth_route_match(r, NULL, rcpts, "s", NULL));
  free(r);

  r = route(NULL, "+scans", NULL);
  ck_assert(mailoauth_route_match(r, "x@y.test", rcpts, "s", NULL));
  ck_assert(!mailoauth_route_match(r, "x@y.test", "inbox@partner.test",
    "s", NULL));
  ck_assert(!mailoauth_route_match(r, "x@y.test", "", "s", NULL));
  ck_assert(!mailoauth_route_match(r, "x@y.test", NULL, "s", NULL));
  free(r);

  /* Every condition given must hold. */
  r = route("contoso.com", "+scans", "Scan *");
  ck_assert(mailoauth_route_match(r, "a@contoso.com", rcpts, "scan 0042",
    NULL));
  ck_assert(!mailoauth_route_match(r, "a@contoso.com", rcpts, "Invoice",
    NULL));
  ck_assert(!mailoauth_route_match(r, "a@other.test", rcpts, "Scan 1",
    NULL));
  ck_assert(!mailoauth_route_match(r, "a@contoso.com", "b@c.d", "Scan 1",
    NULL));
  free(r);

  /* A rule without conditions takes everything. */
  r = route(NULL, NULL, NULL);
  ck_assert(mailoauth_route_match(r, NULL, NULL, NULL, NULL));
  free(r);
  drop_kept();
}
END_TEST

START_TEST(test_parse_errors) {
  struct mailoauth_route r;
  char err[256], many[256];
  int i;

  memset(&r, 0, sizeof(r));
  ck_assert_int_eq(mailoauth_route_parse_setting(&r, "dir", keep("/x"),
    err, sizeof(err)), 1);

  err[0] = '\0';
  ck_assert_int_eq(mailoauth_route_parse_setting(&r, "from",
    keep("a.test,,b.test"), err, sizeof(err)), -1);
  ck_assert(strstr(err, "from=") != NULL);

  ck_assert_int_eq(mailoauth_route_parse_setting(&r, "to", keep("+"),
    err, sizeof(err)), -1);
  ck_assert(strstr(err, "to=+invoices") != NULL);

  ck_assert_int_eq(mailoauth_route_parse_setting(&r, "subject", keep(""),
    err, sizeof(err)), -1);

  many[0] = '\0';
  for (i = 0; i <= MAILOAUTH_ROUTE_MAX_PATTERNS; i++) {
    strcat(many, i ? ",d.test" : "d.test");
  }
  ck_assert_int_eq(mailoauth_route_parse_setting(&r, "from", keep(many),
    err, sizeof(err)), -1);
  ck_assert(strstr(err, "at most") != NULL);
  drop_kept();
}
END_TEST

int main(void) {
  Suite *s = suite_create("route");
  TCase *tc = tcase_create("route");
  SRunner *sr;
  int failed;

  tcase_add_test(tc, test_addr_patterns);
  tcase_add_test(tc, test_match);
  tcase_add_test(tc, test_parse_errors);
  suite_add_tcase(s, tc);

  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
