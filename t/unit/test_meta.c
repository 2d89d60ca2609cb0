/*
 * Unit tests: the metadata document deposited beside a message's files.
 */

#include "mailoauth/meta.h"
#include "mailoauth/jsonwrap.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

START_TEST(test_document) {
  struct mailoauth_meta_file *files = NULL, f;
  struct mailoauth_meta m;
  json_t *root, *arr, *one;
  json_error_t jerr;
  size_t n = 0, len = 0;
  char *doc;

  memset(&f, 0, sizeof(f));
  f.name = "a.pdf";
  f.original = "../a.pdf";
  f.content_type = "application/pdf";
  f.size = 12345;
  memset(f.sha256, 0xab, sizeof(f.sha256));
  ck_assert_int_eq(mailoauth_meta_add_file(&files, &n, &f), 0);

  memset(&f, 0, sizeof(f));
  f.name = "Subject.eml";
  f.content_type = "message/rfc822";
  f.size = 99;
  f.is_message = 1;
  f.incomplete = 1;
  ck_assert_int_eq(mailoauth_meta_add_file(&files, &n, &f), 0);
  ck_assert_uint_eq(n, 2);

  memset(&m, 0, sizeof(m));
  m.task = "scans";
  m.account = "notify";
  m.folder = "INBOX";
  m.uidvalidity = 1700000000U;
  m.uid = 42;
  m.message_id = "abc@x";
  m.from = "J\xc3\xbcrgen <j@contoso.test>";
  m.from_addr = "j@contoso.test";
  m.recipients = "a@b.test,c+x@d.test";
  /* A broken charset must not lose the whole document. */
  m.subject = "bad \xff utf-8";
  m.date = "Tue, 5 Mar 2024 09:14:02 +0000";
  m.taken = 0;
  m.files = files;
  m.nfiles = n;

  doc = mailoauth_meta_json(&m, &len);
  ck_assert_ptr_nonnull(doc);
  ck_assert_uint_eq(strlen(doc), len);

  root = json_loads(doc, 0, &jerr);
  ck_assert_ptr_nonnull(root);
  ck_assert_str_eq(json_string_value(json_object_get(root, "task")), "scans");
  ck_assert_int_eq(json_integer_value(json_object_get(root, "uid")), 42);
  ck_assert_int_eq(json_integer_value(json_object_get(root, "uidvalidity")),
    1700000000LL);
  ck_assert_str_eq(json_string_value(json_object_get(root, "from")),
    "J\xc3\xbcrgen <j@contoso.test>");
  ck_assert_str_eq(json_string_value(json_object_get(root, "subject")), "");
  ck_assert_str_eq(json_string_value(json_object_get(root, "taken")),
    "1970-01-01T00:00:00Z");

  arr = json_object_get(root, "recipients");
  ck_assert_uint_eq(json_array_size(arr), 2);
  ck_assert_str_eq(json_string_value(json_array_get(arr, 1)), "c+x@d.test");

  arr = json_object_get(root, "files");
  ck_assert_uint_eq(json_array_size(arr), 2);
  one = json_array_get(arr, 0);
  ck_assert_str_eq(json_string_value(json_object_get(one, "name")), "a.pdf");
  ck_assert_str_eq(json_string_value(json_object_get(one, "original_name")),
    "../a.pdf");
  ck_assert_int_eq(json_integer_value(json_object_get(one, "size")), 12345);
  ck_assert_str_eq(json_string_value(json_object_get(one, "sha256")),
    "abababababababababababababababababababababababababababababababab");
  ck_assert_ptr_null(json_object_get(one, "message"));
  ck_assert(json_is_true(json_object_get(one, "complete")));
  one = json_array_get(arr, 1);
  ck_assert(json_is_true(json_object_get(one, "message")));
  /* Kept as decoded, but the recipient must not take it for the whole. */
  ck_assert(json_is_false(json_object_get(one, "complete")));
  ck_assert_ptr_null(json_object_get(one, "original_name"));

  json_decref(root);
  free(doc);
  mailoauth_meta_free_files(files, n);
}
END_TEST

int main(void) {
  Suite *s = suite_create("meta");
  TCase *tc = tcase_create("meta");
  SRunner *sr;
  int failed;

  tcase_add_test(tc, test_document);
  suite_add_tcase(s, tc);

  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
