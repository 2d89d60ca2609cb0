/*
 * Unit tests: the IDLE watcher's line reader (split reads, long lines,
 * literals) and line classification (EXISTS, RECENT, "+", BYE, tagged).
 */

#include "mailoauth/imapidle.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N(a) (sizeof(a) / sizeof((a)[0]))

struct lines {
  char text[16][MAILOAUTH_IMAPIDLE_LINE_MAX + 1];
  size_t len[16];
  int cont[16];
  unsigned n;
};

static int collect(const char *line, size_t len, int cont, void *arg) {
  struct lines *l = arg;

  ck_assert_uint_lt(l->n, 16);
  ck_assert_uint_le(len, MAILOAUTH_IMAPIDLE_LINE_MAX);
  ck_assert_int_eq(line[len], '\0');
  memcpy(l->text[l->n], line, len + 1);
  l->len[l->n] = len;
  l->cont[l->n] = cont;
  l->n++;
  return 0;
}

START_TEST(test_reader_split_reads) {
  static const char data[] = "* 3 EXISTS\r\n+ idling\r\ni3 OK done\n";
  struct mailoauth_imapidle_reader r;
  struct lines l;
  size_t i;

  memset(&l, 0, sizeof(l));
  mailoauth_imapidle_reader_init(&r);
  /* One byte at a time: lines come out whole all the same. */
  for (i = 0; i < sizeof(data) - 1; i++) {
    ck_assert_int_eq(mailoauth_imapidle_feed(&r, data + i, 1, collect, &l),
      0);
  }
  ck_assert_uint_eq(l.n, 3);
  ck_assert_str_eq(l.text[0], "* 3 EXISTS");
  ck_assert_str_eq(l.text[1], "+ idling");
  ck_assert_str_eq(l.text[2], "i3 OK done");
}
END_TEST

START_TEST(test_reader_literal_is_skipped) {
  /* A literal that looks like responses must never be read as them. */
  static const char data[] =
    "* 1 FETCH (BODY[HEADER] {22}\r\n* 9 EXISTS\r\n+ idling\r\n)\r\n"
    "* 2 EXISTS\r\n";
  struct mailoauth_imapidle_reader r;
  struct lines l;

  memset(&l, 0, sizeof(l));
  mailoauth_imapidle_reader_init(&r);
  ck_assert_int_eq(mailoauth_imapidle_feed(&r, data, sizeof(data) - 1,
    collect, &l), 0);
  ck_assert_uint_eq(l.n, 3);
  ck_assert_int_eq(l.cont[0], 0);
  ck_assert_str_eq(l.text[1], ")");
  ck_assert_int_eq(l.cont[1], 1);
  ck_assert_str_eq(l.text[2], "* 2 EXISTS");
  ck_assert_int_eq(l.cont[2], 0);
}
END_TEST

START_TEST(test_reader_long_line_is_clipped) {
  struct mailoauth_imapidle_reader r;
  struct lines l;
  char *big;
  size_t n = 3 * MAILOAUTH_IMAPIDLE_LINE_MAX;

  big = malloc(n + 64);
  ck_assert_ptr_nonnull(big);
  memset(big, 'x', n);
  /* A literal announced at the end of a clipped line is still seen. */
  memcpy(big + n, " {5}\r\nAAAAA\r\n* 7 EXISTS\r\n", 25);
  memset(&l, 0, sizeof(l));
  mailoauth_imapidle_reader_init(&r);
  ck_assert_int_eq(mailoauth_imapidle_feed(&r, big, n + 25, collect, &l), 0);
  ck_assert_uint_eq(l.n, 3);
  ck_assert_uint_eq(l.len[0], MAILOAUTH_IMAPIDLE_LINE_MAX);
  ck_assert_str_eq(l.text[1], "");
  ck_assert_int_eq(l.cont[1], 1);
  ck_assert_str_eq(l.text[2], "* 7 EXISTS");
  free(big);
}
END_TEST

struct class_case {
  const char *line;
  const char *tag;
  int kind;
  const char *status;
  int idle;
};

static const struct class_case class_cases[] = {
  { "* 3 EXISTS", "i3", MAILOAUTH_IMAPIDLE_L_NEWMAIL, "", 0 },
  { "* 0 EXISTS", "i3", MAILOAUTH_IMAPIDLE_L_NEWMAIL, "", 0 },
  { "* 2 RECENT", "i3", MAILOAUTH_IMAPIDLE_L_NEWMAIL, "", 0 },
  { "* 0 RECENT", "i3", MAILOAUTH_IMAPIDLE_L_OTHER, "", 0 },
  { "* 4 EXPUNGE", "i3", MAILOAUTH_IMAPIDLE_L_OTHER, "", 0 },
  { "* 5 FETCH (FLAGS (\\Seen))", "i3", MAILOAUTH_IMAPIDLE_L_OTHER, "", 0 },
  { "* OK Still here", "i3", MAILOAUTH_IMAPIDLE_L_OTHER, "", 0 },
  { "+ idling", "i3", MAILOAUTH_IMAPIDLE_L_CONTINUE, "", 0 },
  { "+", "i3", MAILOAUTH_IMAPIDLE_L_CONTINUE, "", 0 },
  { "* BYE Session invalidated - AccessTokenExpired", "i3",
    MAILOAUTH_IMAPIDLE_L_BYE, "", 0 },
  { "i3 OK Idle completed", "i3", MAILOAUTH_IMAPIDLE_L_TAGGED, "OK", 0 },
  { "i3 NO not now", "i3", MAILOAUTH_IMAPIDLE_L_TAGGED, "NO", 0 },
  { "i3 BAD what", "i3", MAILOAUTH_IMAPIDLE_L_TAGGED, "BAD", 0 },
  /* Another command's tag, or a tag that only starts like ours. */
  { "i2 OK old", "i3", MAILOAUTH_IMAPIDLE_L_OTHER, "", 0 },
  { "i33 OK other", "i3", MAILOAUTH_IMAPIDLE_L_OTHER, "", 0 },
  { "i3 OK x", "", MAILOAUTH_IMAPIDLE_L_OTHER, "", 0 },
  { "* CAPABILITY IMAP4rev1 IDLE MOVE", "i1", MAILOAUTH_IMAPIDLE_L_CAPS,
    "", 1 },
  { "* CAPABILITY IMAP4rev1 MOVE IDLEX", "i1", MAILOAUTH_IMAPIDLE_L_CAPS,
    "", 0 },
  { "i1 OK [CAPABILITY IMAP4rev1 IDLE] done", "i1",
    MAILOAUTH_IMAPIDLE_L_TAGGED, "OK", 1 },
  { "* 99999999999999 EXISTS", "i3", MAILOAUTH_IMAPIDLE_L_OTHER, "", 0 },
  { "*", "i3", MAILOAUTH_IMAPIDLE_L_OTHER, "", 0 },
  { "", "i3", MAILOAUTH_IMAPIDLE_L_OTHER, "", 0 },
};

START_TEST(test_classify) {
  const struct class_case *c = &class_cases[_i];
  struct mailoauth_imapidle_line l;

  mailoauth_imapidle_classify(c->line, strlen(c->line), c->tag, &l);
  ck_assert_msg(l.kind == c->kind, "'%s': kind %d, expected %d", c->line,
    l.kind, c->kind);
  ck_assert_str_eq(l.status, c->status);
  ck_assert_msg(l.idle == c->idle, "'%s': idle %d", c->line, l.idle);
}
END_TEST

int main(void) {
  Suite *s = suite_create("imapidle");
  TCase *tc = tcase_create("lines");
  SRunner *sr;
  int failed;

  tcase_add_test(tc, test_reader_split_reads);
  tcase_add_test(tc, test_reader_literal_is_skipped);
  tcase_add_test(tc, test_reader_long_line_is_clipped);
  tcase_add_loop_test(tc, test_classify, 0, N(class_cases));
  suite_add_tcase(s, tc);

  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
