/*
 * Unit tests: names for deposited files (sanitizing, templates,
 * collisions).
 */

#include "mailoauth/names.h"

#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What every sanitized name must be, whatever went in. */
static void assert_safe(const char *s, size_t len) {
  size_t i;

  ck_assert_uint_gt(len, 0);
  ck_assert_uint_le(len, MAILOAUTH_NAMES_MAX);
  ck_assert_uint_eq(strlen(s), len);
  ck_assert_msg(strcmp(s, ".") != 0 && strcmp(s, "..") != 0, "%s", s);
  ck_assert_msg(s[0] != '.' && s[0] != '-' && s[0] != ' ', "lead: %s", s);
  ck_assert_msg(s[len - 1] != '.' && s[len - 1] != ' ', "tail: %s", s);

  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char) s[i];

    ck_assert_msg(c >= 0x20 && c != 0x7f, "control in %s", s);
    ck_assert_msg(strchr("/\\<>:\"|?*", c) == NULL, "'%c' in %s", c, s);
    /* C1 controls, encoded U+0080..U+009F */
    ck_assert_msg(!(c == 0xc2 && i + 1 < len &&
      (unsigned char) s[i + 1] <= 0x9f), "C1 in %s", s);
  }
}

static void check_sanitize(const char *in, size_t len, const char *type,
    const char *want) {
  char out[MAILOAUTH_NAMES_MAX + 1], again[MAILOAUTH_NAMES_MAX + 1];
  ssize_t n, m;

  n = mailoauth_names_sanitize(in, len, type, out, sizeof(out));
  ck_assert_int_ge(n, 0);
  if (want != NULL) {
    ck_assert_msg(strcmp(out, want) == 0, "'%.*s' gave '%s', want '%s'",
      (int) len, in, out, want);
  }
  assert_safe(out, (size_t) n);

  /* Idempotent: a clean name is left alone. */
  m = mailoauth_names_sanitize(out, (size_t) n, type, again, sizeof(again));
  ck_assert_int_eq(m, n);
  ck_assert_str_eq(again, out);
}

static const struct {
  const char *in, *type, *out;
} sanitize_cases[] = {
  { "report.pdf", NULL, "report.pdf" },
  { "R\xc3\xa9sum\xc3\xa9 2024.docx", NULL, "R\xc3\xa9sum\xc3\xa9 2024.docx" },
  { "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e.pdf", NULL,
    "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e.pdf" },
  /* Traversal: only the last component counts. */
  { "../../etc/passwd", NULL, "passwd" },
  { "..\\..\\x", NULL, "x" },
  { "/abs", NULL, "abs" },
  { "C:\\Users\\bob\\Desktop\\invoice.pdf", NULL, "invoice.pdf" },
  { "dir/", "application/pdf", "attachment.pdf" },
  { "..", NULL, "attachment" },
  { ".", NULL, "attachment" },
  { "...", "text/csv", "attachment.csv" },
  { "", NULL, "attachment" },
  { "", "application/x-unknown", "attachment" },
  { "", "image/JPEG", "attachment.jpg" },
  /* Leading dots and dashes, trailing dots and spaces. */
  { ".bashrc", NULL, "bashrc" },
  { "-rf", NULL, "rf" },
  { "--help.txt", NULL, "help.txt" },
  { " . -x", NULL, "x" },
  { "name. . .", NULL, "name" },
  { "file.txt   ", NULL, "file.txt" },
  { "a..b", NULL, "a..b" },
  /* Characters Windows refuses, control characters. */
  { "a:b*c?.txt", NULL, "a_b_c_.txt" },
  { "<x>|\"y\".csv", NULL, "_x___y_.csv" },
  { "a\r\nb.txt", NULL, "a__b.txt" },
  { "tab\there", NULL, "tab_here" },
  { "del\x7f.txt", NULL, "del_.txt" },
  { "nel\xc2\x85.txt", NULL, "nel_.txt" },
  /* Invalid UTF-8: stray bytes, overlong '/', surrogates, beyond U+10FFFF. */
  { "a\x80" "b.txt", NULL, "a_b.txt" },
  { "a\xc0\xaf" "b", NULL, "a__b" },
  { "\xed\xa0\x80x", NULL, "___x" },
  { "\xf4\x90\x80\x80y", NULL, "____y" },
  { "trunc\xe2\x82", NULL, "trunc__" },
  /* Bidirectional overrides disguising an extension. */
  { "invoice\xe2\x80\xae" "fdp.exe", NULL, "invoice_fdp.exe" },
  /* Slash look-alikes. */
  { "a\xef\xbc\x8f" "b", NULL, "a_b" },
  { "a\xe2\x88\x95" "b", NULL, "a_b" },
  /* Reserved device names. */
  { "CON", NULL, "_CON" },
  { "con.txt", NULL, "_con.txt" },
  { "Nul.tar.gz", NULL, "_Nul.tar.gz" },
  { "COM1", NULL, "_COM1" },
  { "lpt9.log", NULL, "_lpt9.log" },
  { "COM\xc2\xb9.txt", NULL, "_COM\xc2\xb9.txt" },
  { "AUX .txt", NULL, "_AUX .txt" },
  { "CONOUT$", NULL, "_CONOUT$" },
  { "CONSOLE.txt", NULL, "CONSOLE.txt" },
  { "COM10", NULL, "COM10" },
  { "aux", NULL, "_aux" },
  { ".CON", NULL, "_CON" },
};

START_TEST(test_sanitize_table) {
  size_t i;

  for (i = 0; i < sizeof(sanitize_cases) / sizeof(sanitize_cases[0]); i++) {
    check_sanitize(sanitize_cases[i].in, strlen(sanitize_cases[i].in),
      sanitize_cases[i].type, sanitize_cases[i].out);
  }
}
END_TEST

START_TEST(test_sanitize_nul) {
  check_sanitize("a\0b.txt", 7, NULL, "a_b.txt");
  check_sanitize("evil.pdf\0.exe", 13, NULL, "evil.pdf_.exe");
  check_sanitize("\0", 1, NULL, "_");
  check_sanitize(NULL, 0, "application/pdf", "attachment.pdf");
}
END_TEST

START_TEST(test_sanitize_length) {
  char in[1200], out[MAILOAUTH_NAMES_MAX + 1];
  ssize_t n;
  size_t i;

  /* 300 ASCII bytes: cut, extension kept. */
  memset(in, 'a', 296);
  strcpy(in + 296, ".pdf");
  n = mailoauth_names_sanitize(in, 300, NULL, out, sizeof(out));
  ck_assert_int_eq(n, MAILOAUTH_NAMES_MAX);
  ck_assert_str_eq(out + n - 4, ".pdf");
  check_sanitize(in, 300, NULL, NULL);

  /* Two-byte characters: cut on a character boundary. */
  for (i = 0; i < 150; i++) {
    memcpy(in + 2 * i, "\xc3\xa9", 2);
  }
  strcpy(in + 300, ".txt");
  n = mailoauth_names_sanitize(in, 304, NULL, out, sizeof(out));
  ck_assert_int_eq(n, 254);
  ck_assert_str_eq(out + n - 4, ".txt");
  ck_assert_int_eq((unsigned char) out[n - 5], 0xa9);
  check_sanitize(in, 304, NULL, NULL);

  /* Four-byte characters, no extension. */
  for (i = 0; i < 100; i++) {
    memcpy(in + 4 * i, "\xf0\x9f\x98\x80", 4);
  }
  n = mailoauth_names_sanitize(in, 400, NULL, out, sizeof(out));
  ck_assert_int_eq(n, 252);
  check_sanitize(in, 400, NULL, NULL);

  /* An "extension" too long to be one is not kept. */
  memset(in, 'b', 300);
  in[10] = '.';
  n = mailoauth_names_sanitize(in, 300, NULL, out, sizeof(out));
  ck_assert_int_eq(n, MAILOAUTH_NAMES_MAX);
  ck_assert_int_eq(memcmp(out, in, MAILOAUTH_NAMES_MAX), 0);

  /* Cutting must not leave a trailing dot or space. */
  memset(in, 'c', 300);
  memset(in + 250, ' ', 10);
  strcpy(in + 300, ".odt");
  check_sanitize(in, 304, NULL, NULL);
  n = mailoauth_names_sanitize(in, 304, NULL, out, sizeof(out));
  ck_assert_str_eq(out + n - 5, "c.odt");

  /* Too small an output buffer. */
  ck_assert_int_eq(mailoauth_names_sanitize("x", 1, NULL, out, 10), -1);
  ck_assert_int_eq(errno, EINVAL);
}
END_TEST

/* Every byte value, alone and in context: the invariants hold. */
START_TEST(test_sanitize_all_bytes) {
  unsigned int a, b;

  for (a = 0; a < 256; a++) {
    char in[8];

    in[0] = (char) a;
    check_sanitize(in, 1, NULL, NULL);
    for (b = 0; b < 256; b += 7) {
      in[0] = 'x';
      in[1] = (char) a;
      in[2] = (char) b;
      in[3] = '.';
      in[4] = (char) b;
      check_sanitize(in, 5, "text/plain", NULL);
    }
  }
}
END_TEST

START_TEST(test_ext_for_type) {
  ck_assert_str_eq(mailoauth_names_ext_for_type("application/pdf"), ".pdf");
  ck_assert_str_eq(mailoauth_names_ext_for_type("MESSAGE/RFC822"), ".eml");
  ck_assert_str_eq(mailoauth_names_ext_for_type(
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    ".xlsx");
  ck_assert_ptr_null(mailoauth_names_ext_for_type("application/x-nope"));
  ck_assert_ptr_null(mailoauth_names_ext_for_type(NULL));
}
END_TEST

/* ------------------------------------------------------------------------
 * Templates
 */

static struct tm test_tm(void) {
  struct tm tm;

  memset(&tm, 0, sizeof(tm));
  tm.tm_year = 2024 - 1900;
  tm.tm_mon = 2;
  tm.tm_mday = 5;
  tm.tm_hour = 9;
  tm.tm_min = 4;
  tm.tm_sec = 7;
  tm.tm_yday = 64;
  return tm;
}

static const struct {
  const char *tmpl, *sender, *subject, *filename, *type, *out;
} template_cases[] = {
  { "%Y-%m-%d_%{sender}_%{filename}", "bob@example.com", "Hi", "x.pdf", NULL,
    "2024-03-05_bob@example.com_x.pdf" },
  { "%H%M%S-%y-%j-%%-%{uid}-%{counter}", NULL, NULL, "a", NULL,
    "090407-24-065-%-4711-3" },
  /* Fields can never add a separator or climb out. */
  { "%{sender}_%{filename}", "evil/../../x", NULL, "../../etc/passwd", NULL,
    "evil_.._.._x_passwd" },
  { "%{subject}.txt", NULL, "Re: Invoice 3/2024 \\ Q1?", NULL, NULL,
    "Re_ Invoice 3_2024 _ Q1_.txt" },
  { "%{sender}/%{filename}", "..", NULL, "a.pdf", NULL, "_/a.pdf" },
  { "%{sender}/%Y/%{filename}", "bob@example.com", NULL, "r.pdf", NULL,
    "bob@example.com/2024/r.pdf" },
  { "%{sender}/%{filename}", "", NULL, "r.pdf", NULL, "_/r.pdf" },
  { "in/%{subject}", NULL, "\r\n", NULL, NULL, "in/__" },
  /* Parts of the file name. */
  { "%{basename}_%{uid}.%{ext}", NULL, NULL, "report.final.xlsx", NULL,
    "report.final_4711.xlsx" },
  { "%{basename}-%{counter}.%{ext}", NULL, NULL, "README", NULL,
    "README-3" },
  /* Nameless attachment. */
  { "%{filename}", NULL, NULL, NULL, "application/pdf", "attachment.pdf" },
  { "%{uid}_%{filename}", NULL, NULL, "", "image/png",
    "4711_attachment.png" },
  /* Whole-component rules apply after substitution. */
  { "%{subject}", NULL, "CON", NULL, NULL, "_CON" },
  { "%{subject}", NULL, "...", NULL, "text/csv", "attachment.csv" },
  { ".%{subject}", NULL, "x", NULL, NULL, "x" },
  { "%{subject}", NULL, "a\xe2\x80\xae" "b", NULL, NULL, "a_b" },
};

START_TEST(test_template_expand) {
  struct tm tm = test_tm();
  size_t i;

  for (i = 0; i < sizeof(template_cases) / sizeof(template_cases[0]); i++) {
    struct mailoauth_names_fields f;
    char out[1024];
    ssize_t n;

    memset(&f, 0, sizeof(f));
    f.sender = template_cases[i].sender;
    f.subject = template_cases[i].subject;
    f.filename = template_cases[i].filename;
    f.content_type = template_cases[i].type;
    f.uid = "4711";
    f.tm = &tm;
    f.counter = 3;

    ck_assert_int_eq(mailoauth_names_template_check(template_cases[i].tmpl),
      0);
    n = mailoauth_names_expand(template_cases[i].tmpl, &f, out, sizeof(out));
    ck_assert_msg(n >= 0, "case %lu failed", (unsigned long) i);
    ck_assert_msg(strcmp(out, template_cases[i].out) == 0,
      "case %lu: '%s' gave '%s'", (unsigned long) i, template_cases[i].tmpl,
      out);
    ck_assert_uint_eq((size_t) n, strlen(out));
  }
}
END_TEST

START_TEST(test_template_long_fields) {
  struct tm tm = test_tm();
  struct mailoauth_names_fields f;
  char subject[2000], out[1024], *slash;
  ssize_t n;

  memset(subject, 's', sizeof(subject) - 1);
  subject[sizeof(subject) - 1] = '\0';
  memset(&f, 0, sizeof(f));
  f.subject = subject;
  f.filename = "scan.pdf";
  f.tm = &tm;

  /* The component is cut, the extension stays. */
  n = mailoauth_names_expand("%Y_%{subject}_%{filename}", &f, out,
    sizeof(out));
  ck_assert_int_eq(n, MAILOAUTH_NAMES_MAX);
  ck_assert_str_eq(out + n - 4, ".pdf");
  ck_assert_int_eq(strncmp(out, "2024_sss", 8), 0);

  n = mailoauth_names_expand("%{subject}/%{filename}", &f, out, sizeof(out));
  slash = strchr(out, '/');
  ck_assert_ptr_nonnull(slash);
  ck_assert_int_eq(slash - out, MAILOAUTH_NAMES_MAX);
  ck_assert_str_eq(slash + 1, "scan.pdf");

  /* Output buffer too small. */
  ck_assert_int_eq(mailoauth_names_expand("%{subject}", &f, out, 100), -1);
  ck_assert_int_eq(errno, ENAMETOOLONG);

  /* No date given: zeros. */
  f.tm = NULL;
  n = mailoauth_names_expand("%Y-%m-%d_%{filename}", &f, out, sizeof(out));
  ck_assert_str_eq(out, "0000-00-00_scan.pdf");
}
END_TEST

START_TEST(test_template_check) {
  static const char *bad[] = {
    "", "/abs/%{filename}", "a/../%{filename}", "./%{filename}", "a//b",
    "%{filename}/", "a\\b", "%{nope}", "%{filename", "%q", "%", "..", NULL
  };
  static const char *good[] = {
    "%{filename}", "%Y/%m/%{filename}", "x..y/%{filename}", "%{sender}/..x",
    "literal.txt", "%%", NULL
  };
  size_t i;

  for (i = 0; bad[i] != NULL; i++) {
    errno = 0;
    ck_assert_msg(mailoauth_names_template_check(bad[i]) == -1, "%s",
      bad[i]);
    ck_assert_int_eq(errno, EINVAL);
  }
  for (i = 0; good[i] != NULL; i++) {
    ck_assert_msg(mailoauth_names_template_check(good[i]) == 0, "%s",
      good[i]);
  }
  ck_assert_int_eq(mailoauth_names_template_check(NULL), -1);
}
END_TEST

/* ------------------------------------------------------------------------
 * Collisions
 */

struct taken {
  const char *names[16];
  unsigned int calls;
  int fail;
};

static int taken_exists(const char *name, void *arg) {
  struct taken *t = arg;
  size_t i;

  t->calls++;
  if (t->fail) {
    errno = EACCES;
    return -1;
  }
  for (i = 0; t->names[i] != NULL; i++) {
    if (strcmp(t->names[i], name) == 0) {
      return 1;
    }
  }
  return 0;
}

static int always_taken(const char *name, void *arg) {
  (void) name;
  (*(unsigned int *) arg)++;
  return 1;
}

START_TEST(test_unique) {
  struct taken t;
  char out[1024], name[300];
  ssize_t n;
  unsigned int calls = 0;

  memset(&t, 0, sizeof(t));
  t.names[0] = "a.pdf";
  t.names[1] = "a (1).pdf";
  n = mailoauth_names_unique("a.pdf", taken_exists, &t, out, sizeof(out));
  ck_assert_str_eq(out, "a (2).pdf");
  ck_assert_int_eq(n, 9);
  ck_assert_uint_eq(t.calls, 3);

  n = mailoauth_names_unique("free.pdf", taken_exists, &t, out, sizeof(out));
  ck_assert_str_eq(out, "free.pdf");

  memset(&t, 0, sizeof(t));
  t.names[0] = "README";
  mailoauth_names_unique("README", taken_exists, &t, out, sizeof(out));
  ck_assert_str_eq(out, "README (1)");

  memset(&t, 0, sizeof(t));
  t.names[0] = "in/2024/r.tar.gz";
  mailoauth_names_unique("in/2024/r.tar.gz", taken_exists, &t, out,
    sizeof(out));
  ck_assert_str_eq(out, "in/2024/r.tar (1).gz");

  /* A dot in a directory is not an extension. */
  memset(&t, 0, sizeof(t));
  t.names[0] = "v1.2/notes";
  mailoauth_names_unique("v1.2/notes", taken_exists, &t, out, sizeof(out));
  ck_assert_str_eq(out, "v1.2/notes (1)");

  /* A long name: the stem gives way, on a character boundary. */
  memset(name, 'x', 246);
  memcpy(name + 246, "\xc3\xa9", 2);
  memcpy(name + 248, "ab.pdf", 7);
  ck_assert_uint_eq(strlen(name), 254);
  memset(&t, 0, sizeof(t));
  t.names[0] = name;
  n = mailoauth_names_unique(name, taken_exists, &t, out, sizeof(out));
  ck_assert_int_eq(n, 254);
  ck_assert_str_eq(out + n - 8, " (1).pdf");
  ck_assert_int_eq(out[n - 9], 'x');

  /* Errors. */
  memset(&t, 0, sizeof(t));
  t.fail = 1;
  ck_assert_int_eq(mailoauth_names_unique("x", taken_exists, &t, out,
    sizeof(out)), -1);
  ck_assert_int_eq(errno, EACCES);

  ck_assert_int_eq(mailoauth_names_unique("x.txt", always_taken, &calls, out,
    sizeof(out)), -1);
  ck_assert_int_eq(errno, EEXIST);
  ck_assert_uint_eq(calls, MAILOAUTH_NAMES_MAX_TRIES + 1);

  ck_assert_int_eq(mailoauth_names_unique("abc", taken_exists, &t, out, 3),
    -1);
  ck_assert_int_eq(errno, ENAMETOOLONG);
}
END_TEST

int main(void) {
  Suite *s = suite_create("names");
  TCase *tc = tcase_create("names");
  SRunner *sr;
  int failed;

  tcase_add_test(tc, test_sanitize_table);
  tcase_add_test(tc, test_sanitize_nul);
  tcase_add_test(tc, test_sanitize_length);
  tcase_add_test(tc, test_sanitize_all_bytes);
  tcase_add_test(tc, test_ext_for_type);
  tcase_add_test(tc, test_template_expand);
  tcase_add_test(tc, test_template_long_fields);
  tcase_add_test(tc, test_template_check);
  tcase_add_test(tc, test_unique);
  suite_add_tcase(s, tc);

  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
