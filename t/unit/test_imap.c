/*
 * Unit tests: the IMAP response parser, folder names (modified UTF-7,
 * quoting) and what a session decides without a server.  Table-driven;
 * hostile and very long lines included.
 */

#include "mailoauth/imap.h"

#include <check.h>
#include <curl/curl.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* ------------------------------------------------------------------ */
/* SELECT, status responses, capabilities                             */
/* ------------------------------------------------------------------ */

struct select_case {
  const char *line;
  int rc;
  unsigned have;               /* bits that must be set */
  uint32_t uidvalidity, uidnext, exists;
};

static const struct select_case select_cases[] = {
  { "* OK [UIDVALIDITY 3857529045] UIDs valid\r\n", 0,
    MAILOAUTH_IMAP_HAVE_UIDVALIDITY, 3857529045u, 0, 0 },
  { "* OK [UIDNEXT 4392] Predicted next UID", 0,
    MAILOAUTH_IMAP_HAVE_UIDNEXT, 0, 4392, 0 },
  { "* 172 EXISTS\r\n", 0, MAILOAUTH_IMAP_HAVE_EXISTS, 0, 0, 172 },
  { "* ok [uidvalidity 7]", 0, MAILOAUTH_IMAP_HAVE_UIDVALIDITY, 7, 0, 0 },
  { "*  OK  [UIDNEXT 9]", 0, MAILOAUTH_IMAP_HAVE_UIDNEXT, 0, 9, 0 },
  { "* OK [UIDVALIDITY 4294967295]", 0, MAILOAUTH_IMAP_HAVE_UIDVALIDITY,
    4294967295u, 0, 0 },
  /* Exchange's wording. */
  { "* OK [UIDVALIDITY 14] UIDVALIDITY value", 0,
    MAILOAUTH_IMAP_HAVE_UIDVALIDITY, 14, 0, 0 },
  { "* OK [UIDNEXT 1] The next unique identifier value", 0,
    MAILOAUTH_IMAP_HAVE_UIDNEXT, 0, 1, 0 },
  { "* 0 EXISTS", 0, MAILOAUTH_IMAP_HAVE_EXISTS, 0, 0, 0 },
  /* Malformed numbers are refused, not truncated. */
  { "* OK [UIDVALIDITY 4294967296]", -1, 0, 0, 0, 0 },
  { "* OK [UIDVALIDITY 99999999999999999999999]", -1, 0, 0, 0, 0 },
  { "* OK [UIDVALIDITY -1]", -1, 0, 0, 0, 0 },
  { "* OK [UIDVALIDITY ]", -1, 0, 0, 0, 0 },
  { "* OK [UIDVALIDITY 12", -1, 0, 0, 0, 0 },
  { "* OK [UIDNEXT 12x]", -1, 0, 0, 0, 0 },
  { "* 99999999999 EXISTS", -1, 0, 0, 0, 0 },
  { "* 12EXISTS", -1, 0, 0, 0, 0 },
  /* Harmless lines. */
  { "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)", 0, 0, 0, 0, 0 },
  { "* OK [PERMANENTFLAGS (\\Deleted \\Seen \\*)] Limited", 0, 0, 0, 0, 0 },
  { "* 3 RECENT", 0, 0, 0, 0, 0 },
  { "* OK [UNSEEN 12] Message 12 is first unseen", 0, 0, 0, 0, 0 },
  { "* OK [HIGHESTMODSEQ 715194045007]", 0, 0, 0, 0, 0 },
  { "* OK Still here", 0, 0, 0, 0, 0 },
  { "+ idling", 0, 0, 0, 0, 0 },
  { "", 0, 0, 0, 0, 0 },
  { "\r\n", 0, 0, 0, 0, 0 },
  { "*", 0, 0, 0, 0, 0 },
  { "garbage", 0, 0, 0, 0, 0 },
  { ")", 0, 0, 0, 0, 0 }
};

START_TEST(test_select_lines) {
  const struct select_case *c = &select_cases[_i];
  struct mailoauth_imap_resp r;
  int rc;

  mailoauth_imap_resp_init(&r);
  rc = mailoauth_imap_parse_line(&r, c->line, strlen(c->line));
  ck_assert_msg(rc == c->rc, "%s: rc %d", c->line, rc);
  ck_assert_msg((r.have & c->have) == c->have, "%s: have %x", c->line,
    r.have);
  if (c->have & MAILOAUTH_IMAP_HAVE_UIDVALIDITY) {
    ck_assert_uint_eq(r.uidvalidity, c->uidvalidity);
  }
  if (c->have & MAILOAUTH_IMAP_HAVE_UIDNEXT) {
    ck_assert_uint_eq(r.uidnext, c->uidnext);
  }
  if (c->have & MAILOAUTH_IMAP_HAVE_EXISTS) {
    ck_assert_uint_eq(r.exists, c->exists);
  }
  if (c->rc < 0) {
    ck_assert_uint_ge(r.malformed, 1);
  }
}
END_TEST

START_TEST(test_whole_select) {
  static const char *lines[] = {
    "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n",
    "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft "
      "\\*)] Flags permitted.\r\n",
    "* 2 EXISTS\r\n",
    "* 0 RECENT\r\n",
    "* OK [UNSEEN 1] First unseen.\r\n",
    "* OK [UIDVALIDITY 1795885086] UIDs valid\r\n",
    "* OK [UIDNEXT 4] Predicted next UID\r\n",
    "A003 OK [READ-WRITE] Select completed (0.001 + 0.000 secs).\r\n"
  };
  struct mailoauth_imap_resp r;
  size_t i;

  mailoauth_imap_resp_init(&r);
  for (i = 0; i < N(lines); i++) {
    ck_assert_int_eq(mailoauth_imap_parse_line(&r, lines[i],
      strlen(lines[i])), 0);
  }
  ck_assert_uint_eq(r.uidvalidity, 1795885086u);
  ck_assert_uint_eq(r.uidnext, 4);
  ck_assert_uint_eq(r.exists, 2);
  ck_assert_int_eq(r.read_only, 0);
  ck_assert_str_eq(r.tagged_status, "OK");
  ck_assert_str_eq(r.tagged_code, "READ-WRITE");
  ck_assert_uint_eq(r.malformed, 0);

  mailoauth_imap_resp_init(&r);
  ck_assert_int_eq(mailoauth_imap_parse_line(&r,
    "a1 OK [READ-ONLY] EXAMINE completed.", 36), 0);
  ck_assert_int_eq(r.read_only, 1);
}
END_TEST

struct tagged_case {
  const char *line;
  const char *status, *code, *text;
};

static const struct tagged_case tagged_cases[] = {
  { "A003 NO [NONEXISTENT] Mailbox doesn't exist: Foo\r\n", "NO",
    "NONEXISTENT", "Mailbox doesn't exist: Foo" },
  { "A004 NO [TRYCREATE] Mailbox doesn't exist: Processed", "NO",
    "TRYCREATE", "Mailbox doesn't exist: Processed" },
  { "A002 NO [AUTHENTICATIONFAILED] Authentication failed.", "NO",
    "AUTHENTICATIONFAILED", "Authentication failed." },
  { "B007 BAD User is authenticated but not connected.", "BAD", "",
    "User is authenticated but not connected." },
  { "a OK LOGOUT completed.", "OK", "", "LOGOUT completed." },
  { "A5 OK", "OK", "", "" },
  { "A5 ok [COPYUID 38505 304 3956] Done", "OK", "COPYUID", "Done" },
  { "A6 NO [ALREADYEXISTS] Mailbox already exists", "NO", "ALREADYEXISTS",
    "Mailbox already exists" },
  /* Control bytes never reach a log line. */
  { "A7 NO bad\x01\x1b[31mred", "NO", "", "bad??[31mred" },
  /* Not status lines: nothing recorded. */
  { "A8 FETCH completed", "", "", "" },
  { "A8 OKAY", "", "", "" },
  { "+ eyJzdGF0dXMiOiI0MDEifQ==", "", "", "" },
  { "A9 NO [UNTERMINATED code", "NO", "UNTERMINATED", "" }
};

START_TEST(test_tagged_lines) {
  const struct tagged_case *c = &tagged_cases[_i];
  struct mailoauth_imap_resp r;

  mailoauth_imap_resp_init(&r);
  (void) mailoauth_imap_parse_line(&r, c->line, strlen(c->line));
  ck_assert_str_eq(r.tagged_status, c->status);
  ck_assert_str_eq(r.tagged_code, c->code);
  ck_assert_str_eq(r.tagged_text, c->text);
}
END_TEST

START_TEST(test_logout_after_failure) {
  static const char *lines[] = {
    "A003 NO [ALREADYEXISTS] Mailbox already exists (0.001 + 0.000 secs).",
    "* BYE Logging out",
    "A004 OK Logout completed (0.001 + 0.000 secs)."
  };
  struct mailoauth_imap_resp r;
  size_t i;

  /* libcurl logs out after a failed command: the failure stays. */
  mailoauth_imap_resp_init(&r);
  for (i = 0; i < N(lines); i++) {
    ck_assert_int_eq(mailoauth_imap_parse_line(&r, lines[i],
      strlen(lines[i])), 0);
  }
  ck_assert_str_eq(r.tagged_status, "NO");
  ck_assert_str_eq(r.tagged_code, "ALREADYEXISTS");
  ck_assert_int_eq(r.bye, 0);
  ck_assert_uint_eq(r.logouts, 1);

  /* A BYE with no tagged answer: the server hung up. */
  mailoauth_imap_resp_init(&r);
  ck_assert_int_eq(mailoauth_imap_parse_line(&r,
    "* BYE Disconnected for inactivity.", 34), 0);
  ck_assert_int_eq(r.bye, 1);
  ck_assert_str_eq(r.bye_text, "Disconnected for inactivity.");
  ck_assert_int_eq(mailoauth_imap_parse_line(&r,
    "A1 NO [UNAVAILABLE] going", 25), 0);
  ck_assert_int_eq(r.bye, 1);
  ck_assert_str_eq(r.tagged_code, "UNAVAILABLE");
}
END_TEST

struct caps_case {
  const char *line;
  unsigned caps;
};

static const struct caps_case caps_cases[] = {
  { "* CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT "
    "THREAD=REFERENCES MULTIAPPEND UIDPLUS LIST-EXTENDED MOVE",
    MAILOAUTH_IMAP_CAP_IMAP4REV1 | MAILOAUTH_IMAP_CAP_SASL_IR |
    MAILOAUTH_IMAP_CAP_IDLE | MAILOAUTH_IMAP_CAP_UIDPLUS |
    MAILOAUTH_IMAP_CAP_MOVE },
  /* Exchange Online */
  { "* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS "
    "MOVE ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+",
    MAILOAUTH_IMAP_CAP_IMAP4REV1 | MAILOAUTH_IMAP_CAP_XOAUTH2 |
    MAILOAUTH_IMAP_CAP_SASL_IR | MAILOAUTH_IMAP_CAP_UIDPLUS |
    MAILOAUTH_IMAP_CAP_MOVE | MAILOAUTH_IMAP_CAP_IDLE },
  { "* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=XOAUTH2] Dovecot ready.",
    MAILOAUTH_IMAP_CAP_IMAP4REV1 | MAILOAUTH_IMAP_CAP_XOAUTH2 },
  { "A2 OK [CAPABILITY IMAP4rev1 move uidplus] Logged in",
    MAILOAUTH_IMAP_CAP_IMAP4REV1 | MAILOAUTH_IMAP_CAP_MOVE |
    MAILOAUTH_IMAP_CAP_UIDPLUS },
  /* Look-alikes are not capabilities. */
  { "* CAPABILITY IMAP4rev1 MOVEX XUIDPLUS AUTH=XOAUTH2X",
    MAILOAUTH_IMAP_CAP_IMAP4REV1 },
  { "* CAPABILITY", 0 },
  /* Garbage ends the list. */
  { "* CAPABILITY (((] ]]] MOVE", 0 }
};

START_TEST(test_capabilities) {
  const struct caps_case *c = &caps_cases[_i];
  struct mailoauth_imap_resp r;

  mailoauth_imap_resp_init(&r);
  (void) mailoauth_imap_parse_line(&r, c->line, strlen(c->line));
  ck_assert_msg(r.have & MAILOAUTH_IMAP_HAVE_CAPS, "%s", c->line);
  ck_assert_msg(r.caps == c->caps, "%s: %x", c->line, r.caps);
}
END_TEST

START_TEST(test_capabilities_last_list_wins) {
  struct mailoauth_imap_resp r;
  const char *pre = "* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2] ready";
  const char *post = "* CAPABILITY IMAP4rev1 MOVE";

  mailoauth_imap_resp_init(&r);
  mailoauth_imap_parse_line(&r, pre, strlen(pre));
  mailoauth_imap_parse_line(&r, post, strlen(post));
  ck_assert_uint_eq(r.caps, MAILOAUTH_IMAP_CAP_IMAP4REV1 |
    MAILOAUTH_IMAP_CAP_MOVE);
}
END_TEST

/* ------------------------------------------------------------------ */
/* SEARCH                                                             */
/* ------------------------------------------------------------------ */

struct search_case {
  const char *line;
  uint32_t lo, hi;
  int rc;
  size_t n;
  uint32_t uids[8];
  int overflow;
};

static const struct search_case search_cases[] = {
  { "* SEARCH 2 84 882\r\n", 1, 0, 0, 3, { 2, 84, 882 }, 0 },
  { "* SEARCH", 1, 0, 0, 0, { 0 }, 0 },
  { "* SEARCH\r\n", 1, 0, 0, 0, { 0 }, 0 },
  /* "UID SEARCH UID 5:*" with no UID >= 5 still matches the highest. */
  { "* SEARCH 4", 5, 0, 0, 0, { 0 }, 0 },
  { "* SEARCH 3 4 5 6", 5, 0, 0, 2, { 5, 6 }, 0 },
  { "* SEARCH 1 5 9 10 11", 5, 10, 0, 3, { 5, 9, 10 }, 0 },
  /* CONDSTORE's trailer. */
  { "* SEARCH 7 8 (MODSEQ 917162500)", 1, 0, 0, 2, { 7, 8 }, 0 },
  { "* search 7", 1, 0, 0, 1, { 7 }, 0 },
  { "* SEARCH  7   8 ", 1, 0, 0, 2, { 7, 8 }, 0 },
  { "* SEARCH 4294967295", 1, 0, 0, 1, { 4294967295u }, 0 },
  /* More than the caller keeps: marked, never written past. */
  { "* SEARCH 1 2 3 4 5 6 7 8 9 10", 1, 0, 0, 4, { 1, 2, 3, 4 }, 1 },
  /* Malformed: what came before stays, the rest is refused. */
  { "* SEARCH 1 2 x 4", 1, 0, -1, 2, { 1, 2 }, 0 },
  { "* SEARCH 1 4294967296", 1, 0, -1, 1, { 1 }, 0 },
  { "* SEARCH 0", 1, 0, -1, 0, { 0 }, 0 },
  { "* SEARCH 12a", 1, 0, -1, 0, { 0 }, 0 },
  { "* SEARCH -3", 1, 0, -1, 0, { 0 }, 0 }
};

START_TEST(test_search_lines) {
  const struct search_case *c = &search_cases[_i];
  struct mailoauth_imap_resp r;
  uint32_t uids[4];
  size_t i;
  int rc;

  memset(uids, 0, sizeof(uids));
  mailoauth_imap_resp_init(&r);
  r.search_lo = c->lo;
  r.search_hi = c->hi;
  r.uids = uids;
  r.max_uids = N(uids);

  rc = mailoauth_imap_parse_line(&r, c->line, strlen(c->line));
  ck_assert_msg(rc == c->rc, "%s: rc %d", c->line, rc);
  ck_assert(r.have & MAILOAUTH_IMAP_HAVE_SEARCH);
  ck_assert_msg(r.n_uids == c->n, "%s: %zu UIDs", c->line, r.n_uids);
  for (i = 0; i < c->n; i++) {
    ck_assert_uint_eq(uids[i], c->uids[i]);
  }
  ck_assert_int_eq(r.uids_overflow, c->overflow);
}
END_TEST

START_TEST(test_search_long_line) {
  /* 2000 ten-digit UIDs: the largest answer a range search can get. */
  size_t len = 0, size = 2000 * 11 + 32, i;
  char *line = malloc(size);
  uint32_t *uids = calloc(2000, sizeof(uint32_t));
  struct mailoauth_imap_resp r;

  len += (size_t) snprintf(line + len, size - len, "* SEARCH");
  for (i = 0; i < 2000; i++) {
    len += (size_t) snprintf(line + len, size - len, " %lu",
      (unsigned long) (4000000000u + i));
  }

  mailoauth_imap_resp_init(&r);
  r.search_lo = 4000000000u;
  r.uids = uids;
  r.max_uids = 2000;
  ck_assert_int_eq(mailoauth_imap_parse_line(&r, line, len), 0);
  ck_assert_uint_eq(r.n_uids, 2000);
  ck_assert_uint_eq(uids[1999], 4000001999u);
  ck_assert_int_eq(r.uids_overflow, 0);

  /* Without storage: counted as seen, nothing written. */
  mailoauth_imap_resp_init(&r);
  ck_assert_int_eq(mailoauth_imap_parse_line(&r, line, len), 0);
  ck_assert_uint_eq(r.n_uids, 0);

  free(line);
  free(uids);
}
END_TEST

/* ------------------------------------------------------------------ */
/* FETCH                                                              */
/* ------------------------------------------------------------------ */

struct fetch_case {
  const char *line;
  int rc;
  uint32_t uid;                 /* the one expected in info[], 0: none */
  uint64_t size;
  unsigned flags;
};

static const struct fetch_case fetch_cases[] = {
  { "* 12 FETCH (UID 5 RFC822.SIZE 1234 FLAGS (\\Seen))\r\n", 0, 5, 1234,
    MAILOAUTH_IMAP_FLAG_SEEN },
  /* Any order, any case. */
  { "* 1 FETCH (flags (\\Deleted \\Flagged) rfc822.size 99 uid 7)", 0, 7, 99,
    MAILOAUTH_IMAP_FLAG_DELETED | MAILOAUTH_IMAP_FLAG_FLAGGED },
  { "* 1 FETCH (UID 5 FLAGS (\\Answered \\Draft $Junk \\Recent))", 0, 5, 0,
    MAILOAUTH_IMAP_FLAG_ANSWERED | MAILOAUTH_IMAP_FLAG_DRAFT },
  { "* 1 FETCH (UID 5 RFC822.SIZE 18446744073709551615)", 0, 5,
    UINT64_MAX, 0 },
  /* Items we skip, with nesting, quotes and brackets. */
  { "* 2 FETCH (MODSEQ (12345) UID 8 INTERNALDATE \"17-Jul-1996 02:44:25 "
    "-0700\" ENVELOPE (\"date\" \"su(b)j \\\"q\\\"\" NIL ((NIL NIL \"a\" "
    "\"b\"))) BODY[HEADER.FIELDS (FROM TO)] NIL RFC822.SIZE 44 FLAGS ())",
    0, 8, 44, 0 },
  /* A literal ends what can be read on this line. */
  { "* 3 FETCH (UID 9 RFC822.SIZE 10 BODY[] {10}", 0, 9, 10, 0 },
  /* Unsolicited: no UID, or one not asked about. */
  { "* 3 FETCH (FLAGS (\\Seen))", 0, 0, 0, 0 },
  { "* 3 FETCH (UID 1234 FLAGS (\\Seen))", 0, 0, 0, 0 },
  /* Malformed. */
  { "* 3 FETCH UID 5", -1, 0, 0, 0 },
  { "* 3 FETCH (UID 5 RFC822.SIZE)", -1, 0, 0, 0 },
  { "* 3 FETCH (UID x)", -1, 0, 0, 0 },
  { "* 3 FETCH (UID 5 FLAGS \\Seen)", -1, 0, 0, 0 },
  { "* 3 FETCH (UID 5 FLAGS (\\Seen", -1, 0, 0, 0 },
  { "* 3 FETCH (UID 5 X \"unterminated)", -1, 0, 0, 0 },
  { "* 3 FETCH (UID 5 X (((nested)) RFC822.SIZE 3", -1, 0, 0, 0 },
  { "* 3 FETCH (UID 5 RFC822.SIZE 99999999999999999999)", -1, 0, 0, 0 },
  { "* 3 FETCH (UID 5 X", -1, 0, 0, 0 },
  { "* 3 FETCH (", -1, 0, 0, 0 },
  { "* 3 FETCH", -1, 0, 0, 0 }
};

START_TEST(test_fetch_lines) {
  const struct fetch_case *c = &fetch_cases[_i];
  static const uint32_t want[] = { 5, 7, 8, 9 };
  struct mailoauth_imap_msginfo info[N(want)];
  struct mailoauth_imap_resp r;
  size_t i;
  int rc;

  memset(info, 0, sizeof(info));
  mailoauth_imap_resp_init(&r);
  r.want = want;
  r.info = info;
  r.n_want = N(want);

  rc = mailoauth_imap_parse_line(&r, c->line, strlen(c->line));
  ck_assert_msg(rc == c->rc, "%s: rc %d", c->line, rc);

  for (i = 0; i < N(want); i++) {
    if (want[i] == c->uid) {
      ck_assert_uint_eq(info[i].uid, c->uid);
      ck_assert_msg(info[i].size == c->size, "%s: size %llu", c->line,
        (unsigned long long) info[i].size);
      ck_assert_uint_eq(info[i].flags, c->flags);
    } else {
      ck_assert_msg(info[i].uid == 0, "%s: UID %u answered", c->line,
        want[i]);
    }
  }
  ck_assert_uint_eq(r.fetches, c->uid != 0 ? 1 : 0);
}
END_TEST

START_TEST(test_expunge_copyuid_status_list) {
  struct mailoauth_imap_resp r;
  static const char *move[] = {
    "* OK [COPYUID 1795885099 2 1] Moved UIDs.",
    "* 2 EXPUNGE",
    "A010 OK Move completed (0.008 + 0.000 + 0.007 secs)."
  };
  size_t i;

  mailoauth_imap_resp_init(&r);
  for (i = 0; i < N(move); i++) {
    ck_assert_int_eq(mailoauth_imap_parse_line(&r, move[i],
      strlen(move[i])), 0);
  }
  ck_assert(r.have & MAILOAUTH_IMAP_HAVE_COPYUID);
  ck_assert_uint_eq(r.copyuid_validity, 1795885099u);
  ck_assert_uint_eq(r.copyuid_uid, 1);
  ck_assert_uint_eq(r.expunged, 1);

  /* A set of UIDs is not one message's answer. */
  mailoauth_imap_resp_init(&r);
  mailoauth_imap_parse_line(&r, "A1 OK [COPYUID 9 1:2 5:6] Done", 30);
  ck_assert(!(r.have & MAILOAUTH_IMAP_HAVE_COPYUID));

  mailoauth_imap_resp_init(&r);
  ck_assert_int_eq(mailoauth_imap_parse_line(&r,
    "* STATUS \"Sent Items\" (UIDVALIDITY 5)", 37), 0);
  ck_assert(r.have & MAILOAUTH_IMAP_HAVE_STATUS);
  ck_assert_int_eq(mailoauth_imap_parse_line(&r, "* STATUS \"x", 11), -1);

  mailoauth_imap_resp_init(&r);
  r.list_name = "Sent Items";
  mailoauth_imap_parse_line(&r, "* LIST (\\HasNoChildren) \"/\" Sent", 32);
  ck_assert_int_eq(r.list_found, 0);
  mailoauth_imap_parse_line(&r,
    "* LIST (\\HasNoChildren \\Sent) \"/\" \"Sent Items\"", 46);
  ck_assert_int_eq(r.list_found, 1);

  mailoauth_imap_resp_init(&r);
  r.list_name = "a\"b\\c";
  mailoauth_imap_parse_line(&r, "* LIST () NIL \"a\\\"b\\\\c\"", 23);
  ck_assert_int_eq(r.list_found, 1);

  mailoauth_imap_resp_init(&r);
  r.list_name = "INBOX";
  mailoauth_imap_parse_line(&r, "* LIST (\\HasChildren) \"/\" inbox", 31);
  ck_assert_int_eq(r.list_found, 1);

  mailoauth_imap_resp_init(&r);
  r.list_name = "X";
  ck_assert_int_eq(mailoauth_imap_parse_line(&r, "* LIST () \"/\" {1}", 17),
    0);
  ck_assert_int_eq(r.list_found, 0);
  ck_assert_int_eq(mailoauth_imap_parse_line(&r, "* LIST \"/\" X", 12), -1);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Hostile input                                                      */
/* ------------------------------------------------------------------ */

START_TEST(test_hostile_lines) {
  static const char *lines[] = {
    "* 1 FETCH ((((((((((((((((((((((((((((((((((((((((",
    "* 1 FETCH (UID 5 X \"\\",
    "* 1 FETCH (UID 5 X [",
    "* 1 FETCH (UID 5 BODY[(((((((((( ]",
    "* OK [",
    "* OK [[[[[[[[[[",
    "* OK []",
    "* OK ]",
    "* BYE",
    "* LIST (",
    "* LIST () \"",
    "* STATUS",
    "* SEARCH (",
    "* 4294967295 FETCH (UID 4294967295)",
    "*\t1 FETCH",
    "* \r\n\r\n",
    "A NO [",
    "A NO [" "CAPABILITY",
    "A OK [COPYUID 1 2",
  };
  uint32_t want = 5;
  struct mailoauth_imap_msginfo info;
  struct mailoauth_imap_resp r;
  size_t i;

  for (i = 0; i < N(lines); i++) {
    memset(&info, 0, sizeof(info));
    mailoauth_imap_resp_init(&r);
    r.want = &want;
    r.info = &info;
    r.n_want = 1;
    (void) mailoauth_imap_parse_line(&r, lines[i], strlen(lines[i]));
    ck_assert_msg(strlen(r.tagged_text) < sizeof(r.tagged_text), "%s",
      lines[i]);
  }

  /* The line is not NUL-terminated: nothing past len is read. */
  {
    char buf[32];

    memset(buf, '9', sizeof(buf));
    memcpy(buf, "* OK [UIDNEXT 12", 16);
    mailoauth_imap_resp_init(&r);
    ck_assert_int_eq(mailoauth_imap_parse_line(&r, buf, 16), -1);
    ck_assert(!(r.have & MAILOAUTH_IMAP_HAVE_UIDNEXT));

    memcpy(buf, "* 7 EXISTS", 10);
    mailoauth_imap_resp_init(&r);
    ck_assert_int_eq(mailoauth_imap_parse_line(&r, buf, 3), -1);
  }

  /* A NUL inside a line is just a byte. */
  mailoauth_imap_resp_init(&r);
  ck_assert_int_eq(mailoauth_imap_parse_line(&r, "* 7 EXISTS \0junk", 16), 0);
  ck_assert_uint_eq(r.exists, 7);
  mailoauth_imap_resp_init(&r);
  ck_assert_int_eq(mailoauth_imap_parse_line(&r, "* 7 EXISTS\0junk", 15), 0);
  ck_assert(!(r.have & MAILOAUTH_IMAP_HAVE_EXISTS));

  ck_assert_int_eq(mailoauth_imap_parse_line(NULL, "x", 1), -1);
  ck_assert_int_eq(errno, EINVAL);
  ck_assert_int_eq(mailoauth_imap_parse_line(&r, NULL, 0), 0);
}
END_TEST

START_TEST(test_hostile_long_lines) {
  size_t size = 1024 * 1024, i;
  char *line = malloc(size);
  struct mailoauth_imap_resp r;

  /* A megabyte of nested parentheses, brackets, quotes, text. */
  static const char fill[] = { '(', '[', '"', 'x', ' ', '\\', ')', ']' };
  static const char *heads[] = {
    "* 1 FETCH (UID 5 X ", "* OK [", "A1 NO [", "* SEARCH 1 ",
    "* CAPABILITY ", "* LIST (", "* BYE ", "A1 OK "
  };
  size_t h, f;

  for (h = 0; h < N(heads); h++) {
    for (f = 0; f < N(fill); f++) {
      size_t hl = strlen(heads[h]);

      memcpy(line, heads[h], hl);
      for (i = hl; i < size; i++) {
        line[i] = fill[(f + (i % 3 == 0 ? i : 0)) % N(fill)];
      }
      mailoauth_imap_resp_init(&r);
      (void) mailoauth_imap_parse_line(&r, line, size);
      ck_assert(strlen(r.bye_text) < sizeof(r.bye_text));
      ck_assert(strlen(r.tagged_text) < sizeof(r.tagged_text));
    }
  }
  free(line);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Folder names                                                       */
/* ------------------------------------------------------------------ */

struct utf7_case {
  const char *utf8;
  const char *mutf7;
};

static const struct utf7_case utf7_cases[] = {
  { "INBOX", "INBOX" },
  { "Sent Items", "Sent Items" },
  { "R&D", "R&-D" },
  { "&", "&-" },
  { "&&", "&-&-" },
  { "Entwürfe", "Entw&APw-rfe" },
  { "Eingänge/Ärger & Co", "Eing&AOQ-nge/&AMQ-rger &- Co" },
  /* RFC 3501's example */
  { "~peter/mail/\xe5\x8f\xb0\xe5\x8c\x97/\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e",
    "~peter/mail/&U,BTFw-/&ZeVnLIqe-" },
  { "\xe2\x82\xac", "&IKw-" },
  /* Beyond the BMP: a surrogate pair. */
  { "\xf0\x9f\x93\xa7 Mail", "&2D3c5w- Mail" },
  { "\xc3\xa4\xc3\xb6\xc3\xbc", "&AOQA9gD8-" },
  { "~!@#$%^*()_+{}|:\"<>?`-=[]\\;',./", "~!@#$%^*()_+{}|:\"<>?`-=[]\\;',./" },
  { "", "" }
};

START_TEST(test_utf7_table) {
  const struct utf7_case *c = &utf7_cases[_i];
  char buf[256];

  ck_assert_int_eq(mailoauth_imap_utf7_encode(c->utf8, buf, sizeof(buf)), 0);
  ck_assert_str_eq(buf, c->mutf7);
  ck_assert_int_eq(mailoauth_imap_utf7_decode(c->mutf7, buf, sizeof(buf)), 0);
  ck_assert_str_eq(buf, c->utf8);
}
END_TEST

START_TEST(test_utf7_refused) {
  static const char *bad_utf8[] = {
    "a\tb", "a\nb", "a\x7f", "\xc3", "\xc3\x28", "\xc0\xaf",
    "\xe0\x80\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xff",
    "\xf8\x88\x80\x80\x80"
  };
  static const char *bad_mutf7[] = {
    "&", "&AOQ", "&AOQ=", "&A-", "&AOQA-", "&AGE-", "&2D0-", "&3Dc-",
    "&AAk-", "a\xc3\xa4", "a\tb", "&AOR-", "&AOQ/-", "&2D3YPQ-"
  };
  char buf[64];
  size_t i;

  for (i = 0; i < N(bad_utf8); i++) {
    errno = 0;
    ck_assert_msg(mailoauth_imap_utf7_encode(bad_utf8[i], buf,
      sizeof(buf)) == -1, "encoded #%zu", i);
    ck_assert_int_eq(errno, EILSEQ);
  }
  for (i = 0; i < N(bad_mutf7); i++) {
    errno = 0;
    ck_assert_msg(mailoauth_imap_utf7_decode(bad_mutf7[i], buf,
      sizeof(buf)) == -1, "decoded %s", bad_mutf7[i]);
    ck_assert_int_eq(errno, EILSEQ);
  }

  /* Too small: refused, never cut. */
  ck_assert_int_eq(mailoauth_imap_utf7_encode("Entwürfe", buf, 8), -1);
  ck_assert_int_eq(errno, ENAMETOOLONG);
  ck_assert_int_eq(mailoauth_imap_utf7_decode("Entw&APw-rfe", buf, 5), -1);
  ck_assert_int_eq(errno, ENAMETOOLONG);
  ck_assert_int_eq(mailoauth_imap_utf7_encode("x", buf, 0), -1);
  ck_assert_int_eq(errno, EINVAL);
}
END_TEST

struct name_case {
  const char *name;
  const char *wire;
  const char *quoted;
};

static const struct name_case name_cases[] = {
  { "INBOX", "INBOX", "\"INBOX\"" },
  { "Sent Items", "Sent Items", "\"Sent Items\"" },
  { "Entwürfe", "Entw&APw-rfe", "\"Entw&APw-rfe\"" },
  /* Already modified UTF-7: kept. */
  { "Entw&APw-rfe", "Entw&APw-rfe", "\"Entw&APw-rfe\"" },
  { "R&-D", "R&-D", "\"R&-D\"" },
  /* Not valid modified UTF-7: an ampersand of its own. */
  { "R&D", "R&-D", "\"R&-D\"" },
  { "AT&T-Mail", "AT&-T-Mail", "\"AT&-T-Mail\"" },
  { "Quote\"Back\\slash", "Quote\"Back\\slash",
    "\"Quote\\\"Back\\\\slash\"" },
  { "100%", "100%", "\"100%\"" }
};

START_TEST(test_folder_names) {
  const struct name_case *c = &name_cases[_i];
  char wire[128], quoted[256];

  ck_assert_int_eq(mailoauth_imap_folder_name(c->name, wire, sizeof(wire)),
    0);
  ck_assert_str_eq(wire, c->wire);
  ck_assert_int_eq(mailoauth_imap_quote(wire, quoted, sizeof(quoted)), 0);
  ck_assert_str_eq(quoted, c->quoted);
}
END_TEST

START_TEST(test_folder_names_refused) {
  char buf[16];

  ck_assert_int_eq(mailoauth_imap_folder_name("", buf, sizeof(buf)), -1);
  ck_assert_int_eq(errno, EINVAL);
  ck_assert_int_eq(mailoauth_imap_folder_name("a\r\nb", buf, sizeof(buf)),
    -1);
  ck_assert_int_eq(mailoauth_imap_quote("a\r\nb", buf, sizeof(buf)), -1);
  ck_assert_int_eq(errno, EINVAL);
  ck_assert_int_eq(mailoauth_imap_quote("\xc3\xa4", buf, sizeof(buf)), -1);
  ck_assert_int_eq(mailoauth_imap_quote("0123456789abcdef", buf,
    sizeof(buf)), -1);
  ck_assert_int_eq(errno, ENAMETOOLONG);
  ck_assert_int_eq(mailoauth_imap_quote("0123456789abc", buf, sizeof(buf)),
    0);
}
END_TEST

/* ------------------------------------------------------------------ */
/* A session, without a server                                        */
/* ------------------------------------------------------------------ */

struct url_case {
  const char *url;
  const char *folder;           /* NULL: refused */
  const char *wire;
};

static const struct url_case url_cases[] = {
  { "imaps://outlook.office365.com:993", "INBOX", "INBOX" },
  { "imaps://outlook.office365.com:993/", "INBOX", "INBOX" },
  { "imaps://outlook.office365.com:993/INBOX", "INBOX", "INBOX" },
  { "imaps://outlook.office365.com/Sent%20Items/", "Sent Items",
    "Sent Items" },
  { "imaps://h/Eing%C3%A4nge/%C3%84rger%20%26%20Co", "Eingänge/Ärger & Co",
    "Eing&AOQ-nge/&AMQ-rger &- Co" },
  { "IMAPS://h/Archive/2024", "Archive/2024", "Archive/2024" },
  { "imap://h:143/INBOX", "INBOX", "INBOX" },
  { "imaps://user:pw@h/INBOX", "INBOX", "INBOX" },
  { "imaps://h/100%25", "100%", "100%" },
  { "imaps://h/INBOX;UID=5", NULL, NULL },
  { "imaps://h/INBOX?NEW", NULL, NULL },
  { "imaps://h/a%0Db", NULL, NULL },
  { "imaps://h/%FF", NULL, NULL },
  { "smtps://h/INBOX", NULL, NULL },
  { "https://h/INBOX", NULL, NULL },
  { "outlook.office365.com", NULL, NULL },
  { "", NULL, NULL }
};

START_TEST(test_session_urls) {
  const struct url_case *c = &url_cases[_i];
  struct mailoauth_imap *s;

  errno = 0;
  s = mailoauth_imap_create(c->url, "alice@example.com", NULL);
  if (c->folder == NULL) {
    ck_assert_msg(s == NULL, "%s accepted", c->url);
    ck_assert_int_eq(errno, EINVAL);
    return;
  }
  ck_assert_msg(s != NULL, "%s refused: %s", c->url, strerror(errno));
  ck_assert_str_eq(mailoauth_imap_folder(s), c->folder);
  ck_assert_str_eq(mailoauth_imap_folder_wire(s), c->wire);
  ck_assert_uint_eq(mailoauth_imap_connections(s), 0);
  mailoauth_imap_destroy(s);
}
END_TEST

START_TEST(test_session_without_server) {
  struct mailoauth_imap_mailbox mb;
  struct mailoauth_imap *s;
  uint32_t uids[4];
  size_t n = 99;

  ck_assert_ptr_null(mailoauth_imap_create("imaps://h/", "", NULL));
  ck_assert_ptr_null(mailoauth_imap_create(NULL, "a@b", NULL));
  mailoauth_imap_destroy(NULL);

  s = mailoauth_imap_create("imaps://127.0.0.1:1/INBOX", "a@b", NULL);
  ck_assert_ptr_nonnull(s);

  /* No token: the caller is told to get one, nothing is sent. */
  ck_assert_int_eq(mailoauth_imap_select(s, &mb), MAILOAUTH_IMAP_AUTHFAIL);
  ck_assert_ptr_nonnull(strstr(mailoauth_imap_reply(s), "no access token"));
  ck_assert_uint_eq(mailoauth_imap_requests(s), 0);

  ck_assert_int_eq(mailoauth_imap_set_token(s, ""), -1);
  ck_assert_int_eq(mailoauth_imap_set_token(s, "tok"), 0);
  ck_assert_int_eq(mailoauth_imap_set_token(s, "tok2"), 0);

  /* Nothing listens on port 1: a temporary failure, a reason. */
  mailoauth_imap_set_timeouts(s, 2000, 2000, 0);
  ck_assert_int_eq(mailoauth_imap_select(s, &mb), MAILOAUTH_IMAP_TEMPFAIL);
  ck_assert_str_ne(mailoauth_imap_reply(s), "");
  ck_assert_uint_eq(mailoauth_imap_requests(s), 1);

  ck_assert_int_eq(mailoauth_imap_search(s, 1, 0, uids, 0, &n),
    MAILOAUTH_IMAP_PERM);
  ck_assert_uint_eq(n, 0);
  ck_assert_int_eq(mailoauth_imap_info(s, uids, 0, NULL, NULL),
    MAILOAUTH_IMAP_PERM);
  uids[0] = 0;
  {
    struct mailoauth_imap_msginfo info;

    ck_assert_int_eq(mailoauth_imap_info(s, uids, 1, &info, NULL),
      MAILOAUTH_IMAP_PERM);
  }
  ck_assert_int_eq(mailoauth_imap_set_seen(s, 0, 1), MAILOAUTH_IMAP_PERM);
  ck_assert_int_eq(mailoauth_imap_delete(s, 0), MAILOAUTH_IMAP_PERM);
  ck_assert_int_eq(mailoauth_imap_move(s, 1, "a\nb", 0, NULL),
    MAILOAUTH_IMAP_PERM);
  ck_assert_int_eq(mailoauth_imap_create_folder(s, ""), MAILOAUTH_IMAP_PERM);
  ck_assert_int_eq(mailoauth_imap_fetch(s, 0, 0, NULL, NULL, NULL),
    MAILOAUTH_IMAP_PERM);
  ck_assert_uint_eq(mailoauth_imap_requests(s), 1);

  mailoauth_imap_reconnect(s);
  mailoauth_imap_destroy(s);
}
END_TEST

START_TEST(test_status_names) {
  ck_assert_str_eq(mailoauth_imap_status_name(MAILOAUTH_IMAP_OK), "ok");
  ck_assert_str_eq(mailoauth_imap_status_name(MAILOAUTH_IMAP_AUTHFAIL),
    "login refused");
  ck_assert_str_eq(mailoauth_imap_status_name(MAILOAUTH_IMAP_MAILBOX),
    "mailbox problem");
  ck_assert_str_eq(mailoauth_imap_status_name((mailoauth_imap_status_t) 99),
    "unknown");
}
END_TEST

/* The fetch connection frames bodies by the "{N}" announced at a line's
 * end; only BODY[] of an untagged FETCH is a body.
 */
START_TEST(test_literal_announcements) {
  static const struct {
    const char *line;
    int rc;
    uint64_t n;
    int body;
  } cases[] = {
    { "* 3 FETCH (UID 9 BODY[] {10}\r\n", 1, 10, 1 },
    { "* 3 FETCH (UID 9 body[] {0}", 1, 0, 1 },
    { "* 12 FETCH (BODY[] {123456789012})", 0, 0, 0 },
    { "* 3 FETCH (UID 9 BODY[HEADER] {10}", 1, 10, 2 },
    { "* 3 FETCH (UID 9 BODY[HEADER.FIELDS (FROM)] {10}", 1, 10, 0 },
    { "* 3 FETCH (UID 9 BODY[TEXT] {10}", 1, 10, 0 },
    { "* OK BODY[HEADER] {10}", 1, 10, 0 },
    { "* 3 FETCH (UID 9 X-BODY[] {10}", 1, 10, 1 },
    { "* 3 FETCH (UID 9 FLAGS (\\Seen) BODY[] {7}\r\n", 1, 7, 1 },
    { "* OK [ALERT] BODY[] {5}", 1, 5, 0 },
    { "M2 OK BODY[] {5}", 1, 5, 0 },
    { "* 3 FETCH (UID 9 BODY[] {}", -1, 0, 0 },
    { "* 3 FETCH (UID 9 BODY[] {1x}", 0, 0, 0 },
    { "* 3 FETCH (UID 9 BODY[] 10}", 0, 0, 0 },
    { "* 3 FETCH (UID 9 BODY[] {9999999999999999999}", -1, 0, 0 },
    { "* 3 FETCH (UID 9 BODY[] {999999999999999999}", 1,
      999999999999999999ULL, 1 },
    { "{5}", 1, 5, 0 },
    { "}", 0, 0, 0 },
    { "", 0, 0, 0 },
    { "* x FETCH (BODY[] {5}", 1, 5, 0 },
    { "* 3 FETCHED (BODY[] {5}", 1, 5, 0 },
  };
  size_t i;

  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    uint64_t n = 77;
    int body = 77;
    size_t len = strlen(cases[i].line);
    char *copy = malloc(len + 1);
    int rc;

    /* Exactly the line's bytes: nothing may be read past them. */
    memcpy(copy, cases[i].line, len);
    rc = mailoauth_imap_literal(copy, len, &n, &body);
    ck_assert_msg(rc == cases[i].rc, "%s: %d", cases[i].line, rc);
    if (rc == 1) {
      ck_assert_msg(n == cases[i].n, "%s: %llu", cases[i].line,
        (unsigned long long) n);
    }
    ck_assert_msg(body == cases[i].body, "%s: body %d", cases[i].line,
      body);
    free(copy);
  }
}
END_TEST

int main(void) {
  Suite *s = suite_create("imap");
  TCase *tc;
  SRunner *sr;
  int failed;

  curl_global_init(CURL_GLOBAL_DEFAULT);

  tc = tcase_create("parser");
  tcase_add_loop_test(tc, test_select_lines, 0, N(select_cases));
  tcase_add_test(tc, test_whole_select);
  tcase_add_loop_test(tc, test_tagged_lines, 0, N(tagged_cases));
  tcase_add_test(tc, test_logout_after_failure);
  tcase_add_loop_test(tc, test_capabilities, 0, N(caps_cases));
  tcase_add_test(tc, test_capabilities_last_list_wins);
  tcase_add_loop_test(tc, test_search_lines, 0, N(search_cases));
  tcase_add_test(tc, test_search_long_line);
  tcase_add_loop_test(tc, test_fetch_lines, 0, N(fetch_cases));
  tcase_add_test(tc, test_expunge_copyuid_status_list);
  tcase_add_test(tc, test_hostile_lines);
  tcase_add_test(tc, test_literal_announcements);
  tcase_add_test(tc, test_hostile_long_lines);
  tcase_set_timeout(tc, 60);
  suite_add_tcase(s, tc);

  tc = tcase_create("names");
  tcase_add_loop_test(tc, test_utf7_table, 0, N(utf7_cases));
  tcase_add_test(tc, test_utf7_refused);
  tcase_add_loop_test(tc, test_folder_names, 0, N(name_cases));
  tcase_add_test(tc, test_folder_names_refused);
  suite_add_tcase(s, tc);

  tc = tcase_create("session");
  tcase_add_loop_test(tc, test_session_urls, 0, N(url_cases));
  tcase_add_test(tc, test_session_without_server);
  tcase_add_test(tc, test_status_names);
  tcase_set_timeout(tc, 30);
  suite_add_tcase(s, tc);

  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  curl_global_cleanup();
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

