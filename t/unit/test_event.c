/*
 * Unit tests: upload event records (framing, hostile field contents,
 * partial and damaged input).
 */

#include "mailoauth/event.h"

#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

static ssize_t build(unsigned char *buf, size_t size, const char *path,
    size_t path_len) {
  struct mailoauth_event_buf b;

  mailoauth_event_buf_init(&b, buf, size);
  ck_assert_int_eq(mailoauth_event_add(&b, MAILOAUTH_EVENT_F_PATH, path,
    path_len), 0);
  ck_assert_int_eq(mailoauth_event_add_str(&b, MAILOAUTH_EVENT_F_USER,
    "alice"), 0);
  ck_assert_int_eq(mailoauth_event_add_str(&b, MAILOAUTH_EVENT_F_SIZE,
    "12345"), 0);
  return mailoauth_event_finish(&b);
}

START_TEST(test_roundtrip_binary_safe) {
  /* CR, LF, NUL and invalid UTF-8 must survive untouched. */
  static const char path[] = "/srv/in/a\r\nb\0c\xff\xfe.txt";
  unsigned char buf[512];
  struct mailoauth_event ev;
  const struct mailoauth_event_field *f;
  ssize_t len;

  len = build(buf, sizeof(buf), path, sizeof(path) - 1);
  ck_assert_int_gt(len, 0);
  ck_assert_int_eq(mailoauth_event_parse(buf, (size_t) len, &ev), len);
  ck_assert_uint_eq(ev.nfields, 3);

  f = mailoauth_event_get(&ev, MAILOAUTH_EVENT_F_PATH);
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(f->len, sizeof(path) - 1);
  ck_assert_mem_eq(f->value, path, sizeof(path) - 1);

  f = mailoauth_event_get(&ev, MAILOAUTH_EVENT_F_USER);
  ck_assert_uint_eq(f->len, 5);
  ck_assert_mem_eq(f->value, "alice", 5);
  ck_assert_ptr_null(mailoauth_event_get(&ev, MAILOAUTH_EVENT_F_PROTOCOL));
}
END_TEST

START_TEST(test_every_prefix_is_incomplete) {
  unsigned char buf[256];
  struct mailoauth_event ev;
  ssize_t len, i;

  len = build(buf, sizeof(buf), "/x", 2);
  for (i = 0; i < len; i++) {
    ck_assert_msg(mailoauth_event_parse(buf, (size_t) i, &ev) == 0,
      "prefix of %ld bytes not reported incomplete", (long) i);
  }
}
END_TEST

START_TEST(test_any_flipped_byte_is_rejected) {
  unsigned char buf[256], copy[256];
  struct mailoauth_event ev;
  ssize_t len, i;

  len = build(buf, sizeof(buf), "/some/file", 10);
  for (i = 0; i < len; i++) {
    ssize_t res;

    memcpy(copy, buf, (size_t) len);
    copy[i] ^= 0x40;
    res = mailoauth_event_parse(copy, (size_t) len, &ev);
    /* A flipped length byte may make the record look longer (incomplete);
     * it must never parse as a valid record.
     */
    ck_assert_msg(res <= 0, "corruption at byte %ld accepted", (long) i);
  }
}
END_TEST

START_TEST(test_two_records_back_to_back) {
  unsigned char buf[512];
  struct mailoauth_event ev;
  ssize_t a, b;

  a = build(buf, sizeof(buf), "/first", 6);
  b = build(buf + a, sizeof(buf) - (size_t) a, "/second", 7);
  ck_assert_int_eq(mailoauth_event_parse(buf, (size_t) (a + b), &ev), a);
  ck_assert_int_eq(mailoauth_event_parse(buf + a, (size_t) b, &ev), b);
  ck_assert_mem_eq(mailoauth_event_get(&ev, MAILOAUTH_EVENT_F_PATH)->value,
    "/second", 7);
}
END_TEST

START_TEST(test_buffer_limits) {
  unsigned char buf[32];
  struct mailoauth_event_buf b;
  char big[64];

  memset(big, 'x', sizeof(big));
  mailoauth_event_buf_init(&b, buf, sizeof(buf));
  errno = 0;
  ck_assert_int_eq(mailoauth_event_add(&b, 'p', big, sizeof(big)), -1);
  ck_assert_int_eq(errno, ENOSPC);
  /* What fits still fits, and leaves room for the trailer. */
  ck_assert_int_eq(mailoauth_event_add(&b, 'p', big, 15), 0);
  ck_assert_int_eq(mailoauth_event_add(&b, 'u', big, 1), -1);
  ck_assert_int_eq(mailoauth_event_finish(&b), 32);
}
END_TEST

START_TEST(test_garbage_and_oversize) {
  unsigned char junk[16] = "not a record....";
  unsigned char huge[12] = { 'M', 'O', 'E', '1', 0x7f, 0xff, 0xff, 0xff };
  struct mailoauth_event ev;

  ck_assert_int_eq(mailoauth_event_parse(junk, sizeof(junk), &ev), -1);
  ck_assert_int_eq(errno, EILSEQ);
  ck_assert_int_eq(mailoauth_event_parse(huge, sizeof(huge), &ev), -1);
  ck_assert_int_eq(errno, EILSEQ);
}
END_TEST

START_TEST(test_field_length_overrun) {
  unsigned char buf[256];
  struct mailoauth_event ev;
  ssize_t len;

  /* A field claiming more bytes than the payload holds: fix up the
   * checksum so only the field framing is wrong.
   */
  len = build(buf, sizeof(buf), "/x", 2);
  buf[MAILOAUTH_EVENT_HEADER_LEN + 4] = 200;
  {
    uint32_t h = 2166136261u;
    size_t i, plen = (size_t) len - MAILOAUTH_EVENT_HEADER_LEN -
      MAILOAUTH_EVENT_TRAILER_LEN;

    for (i = 0; i < plen; i++) {
      h ^= buf[MAILOAUTH_EVENT_HEADER_LEN + i];
      h *= 16777619u;
    }
    buf[len - 4] = (unsigned char) (h >> 24);
    buf[len - 3] = (unsigned char) (h >> 16);
    buf[len - 2] = (unsigned char) (h >> 8);
    buf[len - 1] = (unsigned char) h;
  }
  ck_assert_int_eq(mailoauth_event_parse(buf, (size_t) len, &ev), -1);
}
END_TEST

START_TEST(test_u64_fields) {
  unsigned char buf[512];
  struct mailoauth_event_buf b;
  struct mailoauth_event ev;
  uint64_t v = 7;
  ssize_t len;

  mailoauth_event_buf_init(&b, buf, sizeof(buf));
  ck_assert_int_eq(mailoauth_event_add_str(&b, MAILOAUTH_EVENT_F_INODE,
    "18446744073709551615"), 0);
  ck_assert_int_eq(mailoauth_event_add_str(&b, MAILOAUTH_EVENT_F_DEVICE,
    "18446744073709551616"), 0);
  ck_assert_int_eq(mailoauth_event_add_str(&b, MAILOAUTH_EVENT_F_STAT_SIZE,
    "12x"), 0);
  ck_assert_int_eq(mailoauth_event_add_str(&b, MAILOAUTH_EVENT_F_SIZE, ""),
    0);
  len = mailoauth_event_finish(&b);
  ck_assert_int_gt(mailoauth_event_parse(buf, (size_t) len, &ev), 0);

  ck_assert_int_eq(mailoauth_event_u64(&ev, MAILOAUTH_EVENT_F_INODE, &v), 0);
  ck_assert(v == UINT64_MAX);
  errno = 0;
  ck_assert_int_eq(mailoauth_event_u64(&ev, MAILOAUTH_EVENT_F_DEVICE, &v),
    -1);
  ck_assert_int_eq(errno, EINVAL);
  ck_assert_int_eq(mailoauth_event_u64(&ev, MAILOAUTH_EVENT_F_STAT_SIZE,
    &v), -1);
  ck_assert_int_eq(mailoauth_event_u64(&ev, MAILOAUTH_EVENT_F_SIZE, &v), -1);
  errno = 0;
  ck_assert_int_eq(mailoauth_event_u64(&ev, MAILOAUTH_EVENT_F_PATH, &v), -1);
  ck_assert_int_eq(errno, ENOENT);
}
END_TEST

int main(void) {
  Suite *s = suite_create("event");
  TCase *tc = tcase_create("records");
  SRunner *sr;
  int failed;

  tcase_add_test(tc, test_roundtrip_binary_safe);
  tcase_add_test(tc, test_every_prefix_is_incomplete);
  tcase_add_test(tc, test_any_flipped_byte_is_rejected);
  tcase_add_test(tc, test_two_records_back_to_back);
  tcase_add_test(tc, test_buffer_limits);
  tcase_add_test(tc, test_garbage_and_oversize);
  tcase_add_test(tc, test_field_length_overrun);
  tcase_add_test(tc, test_u64_fields);
  suite_add_tcase(s, tc);

  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
