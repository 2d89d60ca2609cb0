/*
 * mod_mailoauth - the IMAP response parser
 *
 * Pure: lines in, a struct mailoauth_imap_resp out (imap.h).  It reads
 * what a hostile or broken server may send, so it is fuzzed
 * (t/fuzz/fuzz_imap.c) and never trusts a count or a length.
 */

#include "mailoauth/imap.h"

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct imap_cur {
  const char *p;
  const char *end;
};

void mailoauth_imap_resp_init(struct mailoauth_imap_resp *r) {
  memset(r, 0, sizeof(*r));
}

static int imap_at_end(const struct imap_cur *c) {
  return c->p >= c->end;
}

static int imap_peek(const struct imap_cur *c) {
  return c->p < c->end ? (unsigned char) *c->p : -1;
}

static void imap_skip_spaces(struct imap_cur *c) {
  while (c->p < c->end && *c->p == ' ') {
    c->p++;
  }
}

/* An atom-ish word: up to a space, a bracket, a parenthesis or the end. */
static size_t imap_word(struct imap_cur *c, const char **start) {
  *start = c->p;
  while (c->p < c->end && *c->p != ' ' && *c->p != '(' && *c->p != ')' &&
         *c->p != '[' && *c->p != ']') {
    c->p++;
  }
  return (size_t) (c->p - *start);
}

static int imap_word_is(const char *w, size_t n, const char *s) {
  return strlen(s) == n && strncasecmp(w, s, n) == 0;
}

/* A number of at most 64 bits; -1 without digits or on overflow. */
static int imap_number64(struct imap_cur *c, uint64_t *out) {
  uint64_t v = 0;
  const char *start = c->p;

  while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
    unsigned d = (unsigned) (*c->p - '0');

    if (v > (UINT64_MAX - d) / 10) {
      return -1;
    }
    v = v * 10 + d;
    c->p++;
  }

  if (c->p == start) {
    return -1;
  }
  *out = v;
  return 0;
}

static int imap_number32(struct imap_cur *c, uint32_t *out) {
  uint64_t v;

  if (imap_number64(c, &v) < 0 || v > UINT32_MAX) {
    return -1;
  }
  *out = (uint32_t) v;
  return 0;
}

/* Skips one value: quoted string, parenthesized list (nested, with quoted
 * strings inside), or an atom/number/NIL.  A literal ({n}) cannot be
 * skipped on this line: 1.  -1 when malformed.
 */
static int imap_skip_value(struct imap_cur *c) {
  int depth = 0;

  do {
    int ch = imap_peek(c);

    if (ch < 0) {
      return -1;
    }

    if (ch == '"') {
      c->p++;
      while (c->p < c->end && *c->p != '"') {
        if (*c->p == '\\') {
          c->p++;
        }
        if (c->p < c->end) {
          c->p++;
        }
      }
      if (c->p >= c->end) {
        return -1;
      }
      c->p++;

    } else if (ch == '(') {
      depth++;
      c->p++;

    } else if (ch == ')') {
      if (depth == 0) {
        return -1;
      }
      depth--;
      c->p++;

    } else if (ch == '{') {
      return 1;

    } else if (ch == ' ') {
      c->p++;

    } else {
      /* An atom; "BODY[HEADER.FIELDS (A B)]" keeps its brackets. */
      int bracket = 0;

      while (c->p < c->end) {
        char x = *c->p;

        if (x == '[') {
          bracket++;
        } else if (x == ']' && bracket > 0) {
          bracket--;
        } else if (bracket == 0 && (x == ' ' || x == '(' || x == ')' ||
                   x == '"')) {
          break;
        }
        c->p++;
      }
    }
  } while (depth > 0);

  return 0;
}

static unsigned imap_flag_bit(const char *w, size_t n) {
  static const struct {
    const char *name;
    unsigned bit;
  } flags[] = {
    { "\\Seen", MAILOAUTH_IMAP_FLAG_SEEN },
    { "\\Deleted", MAILOAUTH_IMAP_FLAG_DELETED },
    { "\\Flagged", MAILOAUTH_IMAP_FLAG_FLAGGED },
    { "\\Answered", MAILOAUTH_IMAP_FLAG_ANSWERED },
    { "\\Draft", MAILOAUTH_IMAP_FLAG_DRAFT }
  };
  size_t i;

  for (i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
    if (imap_word_is(w, n, flags[i].name)) {
      return flags[i].bit;
    }
  }
  return 0;
}

/* "(\Seen \Deleted ...)" */
static int imap_flag_list(struct imap_cur *c, unsigned *flags) {
  *flags = 0;

  if (imap_peek(c) != '(') {
    return -1;
  }
  c->p++;

  for (;;) {
    const char *w;
    size_t n;

    imap_skip_spaces(c);
    if (imap_peek(c) == ')') {
      c->p++;
      return 0;
    }

    n = imap_word(c, &w);
    if (n == 0) {
      return -1;
    }
    *flags |= imap_flag_bit(w, n);
  }
}

/* Capability atoms up to the end or a closing bracket: the last list seen
 * is the one in force (the greeting's is replaced by the one after login).
 */
static void imap_capabilities(struct mailoauth_imap_resp *r,
    struct imap_cur *c) {
  unsigned caps = 0;

  for (;;) {
    const char *w;
    size_t n;

    imap_skip_spaces(c);
    if (imap_at_end(c) || imap_peek(c) == ']') {
      break;
    }

    n = imap_word(c, &w);
    if (n == 0) {
      c->p++;
      continue;
    }

    if (imap_word_is(w, n, "IMAP4rev1")) {
      caps |= MAILOAUTH_IMAP_CAP_IMAP4REV1;
    } else if (imap_word_is(w, n, "MOVE")) {
      caps |= MAILOAUTH_IMAP_CAP_MOVE;
    } else if (imap_word_is(w, n, "UIDPLUS")) {
      caps |= MAILOAUTH_IMAP_CAP_UIDPLUS;
    } else if (imap_word_is(w, n, "IDLE")) {
      caps |= MAILOAUTH_IMAP_CAP_IDLE;
    } else if (imap_word_is(w, n, "AUTH=XOAUTH2")) {
      caps |= MAILOAUTH_IMAP_CAP_XOAUTH2;
    } else if (imap_word_is(w, n, "SASL-IR")) {
      caps |= MAILOAUTH_IMAP_CAP_SASL_IR;
    }
  }

  r->caps = caps;
  r->have |= MAILOAUTH_IMAP_HAVE_CAPS;
}

void mailoauth_imap_copy_text(char *dst, size_t dstlen, const char *src,
    size_t n) {
  size_t i, k = 0;

  if (dstlen == 0) {
    return;
  }
  for (i = 0; i < n && k + 1 < dstlen; i++) {
    unsigned char ch = (unsigned char) src[i];

    dst[k++] = (ch < 0x20 || ch == 0x7f) ? '?' : (char) ch;
  }
  dst[k] = '\0';
}

/* "[CODE args]" at c (optional); the code goes to code (may be NULL).
 * -1 when a code we use is malformed.
 */
static int imap_resp_code(struct mailoauth_imap_resp *r, struct imap_cur *c,
    char *code, size_t codelen) {
  const char *w, *close;
  size_t n;
  int rc = 0;

  if (code != NULL && codelen > 0) {
    code[0] = '\0';
  }

  if (imap_peek(c) != '[') {
    return 0;
  }
  c->p++;

  n = imap_word(c, &w);
  if (code != NULL) {
    mailoauth_imap_copy_text(code, codelen, w, n);
  }

  if (imap_word_is(w, n, "UIDVALIDITY") || imap_word_is(w, n, "UIDNEXT")) {
    uint32_t v;

    imap_skip_spaces(c);
    if (imap_number32(c, &v) < 0 || imap_peek(c) != ']') {
      rc = -1;

    } else if (imap_word_is(w, n, "UIDVALIDITY")) {
      r->uidvalidity = v;
      r->have |= MAILOAUTH_IMAP_HAVE_UIDVALIDITY;

    } else {
      r->uidnext = v;
      r->have |= MAILOAUTH_IMAP_HAVE_UIDNEXT;
    }

  } else if (imap_word_is(w, n, "READ-ONLY")) {
    r->read_only = 1;

  } else if (imap_word_is(w, n, "READ-WRITE")) {
    r->read_only = 0;

  } else if (imap_word_is(w, n, "CAPABILITY")) {
    imap_capabilities(r, c);

  } else if (imap_word_is(w, n, "COPYUID")) {
    uint32_t validity, src, dst;

    /* Only a single message's answer is kept: "COPYUID v 12 345". */
    imap_skip_spaces(c);
    if (imap_number32(c, &validity) == 0 && imap_peek(c) == ' ') {
      imap_skip_spaces(c);
      if (imap_number32(c, &src) == 0 && imap_peek(c) == ' ') {
        imap_skip_spaces(c);
        if (imap_number32(c, &dst) == 0 && imap_peek(c) == ']') {
          r->copyuid_validity = validity;
          r->copyuid_uid = dst;
          r->have |= MAILOAUTH_IMAP_HAVE_COPYUID;
        }
      }
    }
  }

  close = memchr(c->p, ']', (size_t) (c->end - c->p));
  if (close == NULL) {
    r->malformed++;
    c->p = c->end;
    return -1;
  }
  c->p = close + 1;
  imap_skip_spaces(c);

  if (rc < 0) {
    r->malformed++;
  }
  return rc;
}

static int imap_want_index(const struct mailoauth_imap_resp *r, uint32_t uid,
    size_t *idx) {
  size_t i;

  if (r->want == NULL || r->info == NULL) {
    return -1;
  }
  for (i = 0; i < r->n_want; i++) {
    if (r->want[i] == uid) {
      *idx = i;
      return 0;
    }
  }
  return -1;
}

/* "(UID 5 RFC822.SIZE 1234 FLAGS (\Seen) ...)" after "* n FETCH ". */
static int imap_fetch(struct mailoauth_imap_resp *r, struct imap_cur *c) {
  uint32_t uid = 0;
  uint64_t size = 0;
  unsigned flags = 0;
  int have_uid = 0, have_size = 0, have_flags = 0;
  size_t idx;

  if (imap_peek(c) != '(') {
    return -1;
  }
  c->p++;

  for (;;) {
    const char *name;
    size_t n;
    int skipped;

    imap_skip_spaces(c);
    if (imap_peek(c) == ')') {
      c->p++;
      break;
    }
    if (imap_at_end(c)) {
      return -1;
    }

    /* The item name, brackets and all ("BODY[HEADER.FIELDS (X)]<0>"). */
    name = c->p;
    {
      int bracket = 0;

      while (c->p < c->end && (bracket > 0 || *c->p != ' ')) {
        if (*c->p == '[') {
          bracket++;
        } else if (*c->p == ']' && bracket > 0) {
          bracket--;
        } else if (bracket == 0 && (*c->p == '(' || *c->p == ')')) {
          break;
        }
        c->p++;
      }
    }
    n = (size_t) (c->p - name);
    if (n == 0 || imap_peek(c) != ' ') {
      return -1;
    }
    imap_skip_spaces(c);

    if (imap_word_is(name, n, "UID")) {
      if (imap_number32(c, &uid) < 0) {
        return -1;
      }
      have_uid = 1;

    } else if (imap_word_is(name, n, "RFC822.SIZE")) {
      if (imap_number64(c, &size) < 0) {
        return -1;
      }
      have_size = 1;

    } else if (imap_word_is(name, n, "FLAGS")) {
      if (imap_flag_list(c, &flags) < 0) {
        return -1;
      }
      have_flags = 1;

    } else {
      skipped = imap_skip_value(c);
      if (skipped < 0) {
        return -1;
      }
      if (skipped > 0) {
        /* A literal follows on the next lines: what came so far counts. */
        break;
      }
    }
  }

  if (have_uid && uid != 0 && imap_want_index(r, uid, &idx) == 0) {
    struct mailoauth_imap_msginfo *info = &r->info[idx];

    if (info->uid == 0) {
      r->fetches++;
    }
    info->uid = uid;
    if (have_size) {
      info->size = size;
    }
    if (have_flags) {
      info->flags = flags;
    }
  }
  return 0;
}

/* "* SEARCH 1 2 3" (maybe with "(MODSEQ n)" at the end). */
static int imap_search(struct mailoauth_imap_resp *r, struct imap_cur *c) {
  r->have |= MAILOAUTH_IMAP_HAVE_SEARCH;

  for (;;) {
    uint32_t uid;

    imap_skip_spaces(c);
    if (imap_at_end(c) || imap_peek(c) == '(') {
      return 0;
    }

    if (imap_number32(c, &uid) < 0 || uid == 0 ||
        (!imap_at_end(c) && imap_peek(c) != ' ')) {
      return -1;
    }

    if (uid < r->search_lo || (r->search_hi != 0 && uid > r->search_hi)) {
      continue;
    }

    if (r->uids == NULL) {
      continue;
    }
    if (r->n_uids >= r->max_uids) {
      r->uids_overflow = 1;
      continue;
    }
    r->uids[r->n_uids++] = uid;
  }
}

/* A mailbox name: quoted (unescaped into buf) or an atom.  1 for a
 * literal, which cannot be read on this line; -1 when malformed.
 */
static int imap_mailbox(struct imap_cur *c, char *buf, size_t buflen) {
  size_t k = 0;

  if (imap_peek(c) == '{') {
    return 1;
  }

  if (imap_peek(c) == '"') {
    c->p++;
    while (c->p < c->end && *c->p != '"') {
      if (*c->p == '\\') {
        c->p++;
        if (c->p >= c->end) {
          return -1;
        }
      }
      if (k + 1 < buflen) {
        buf[k++] = *c->p;
      }
      c->p++;
    }
    if (c->p >= c->end) {
      return -1;
    }
    c->p++;

  } else {
    const char *w;
    size_t n = imap_word(c, &w);

    if (n == 0) {
      return -1;
    }
    for (; k < n && k + 1 < buflen; k++) {
      buf[k] = w[k];
    }
  }

  buf[k] = '\0';
  return 0;
}

/* "* LIST (\HasNoChildren) "/" name" */
static int imap_list(struct mailoauth_imap_resp *r, struct imap_cur *c) {
  char name[MAILOAUTH_IMAP_NAME_MAX + 1];
  unsigned ignored;
  int rc;

  r->have |= MAILOAUTH_IMAP_HAVE_LIST;

  if (imap_flag_list(c, &ignored) < 0) {
    return -1;
  }
  imap_skip_spaces(c);
  if (imap_skip_value(c) != 0) {       /* the delimiter: "/" or NIL */
    return -1;
  }
  imap_skip_spaces(c);

  rc = imap_mailbox(c, name, sizeof(name));
  if (rc != 0) {
    return rc < 0 ? -1 : 0;
  }

  if (r->list_name != NULL &&
      (strcmp(name, r->list_name) == 0 ||
       (strcasecmp(name, "INBOX") == 0 &&
        strcasecmp(r->list_name, "INBOX") == 0))) {
    r->list_found = 1;
  }
  return 0;
}

/* "* STATUS name (MESSAGES n ...)": only whether it came matters. */
static int imap_status(struct mailoauth_imap_resp *r, struct imap_cur *c) {
  if (imap_skip_value(c) != 0) {
    return -1;
  }
  imap_skip_spaces(c);
  if (imap_peek(c) != '(') {
    return -1;
  }
  r->have |= MAILOAUTH_IMAP_HAVE_STATUS;
  return 0;
}

static int imap_untagged(struct mailoauth_imap_resp *r, struct imap_cur *c) {
  const char *w;
  size_t n;

  if (imap_peek(c) >= '0' && imap_peek(c) <= '9') {
    uint32_t num;

    if (imap_number32(c, &num) < 0 || imap_peek(c) != ' ') {
      return -1;
    }
    imap_skip_spaces(c);
    n = imap_word(c, &w);
    imap_skip_spaces(c);

    if (imap_word_is(w, n, "EXISTS")) {
      r->exists = num;
      r->have |= MAILOAUTH_IMAP_HAVE_EXISTS;

    } else if (imap_word_is(w, n, "EXPUNGE")) {
      r->expunged++;

    } else if (imap_word_is(w, n, "FETCH")) {
      return imap_fetch(r, c);
    }
    return 0;
  }

  n = imap_word(c, &w);
  imap_skip_spaces(c);

  if (imap_word_is(w, n, "OK") || imap_word_is(w, n, "NO") ||
      imap_word_is(w, n, "BAD") || imap_word_is(w, n, "PREAUTH")) {
    return imap_resp_code(r, c, NULL, 0);
  }

  if (imap_word_is(w, n, "BYE")) {
    r->bye = 1;
    (void) imap_resp_code(r, c, NULL, 0);
    mailoauth_imap_copy_text(r->bye_text, sizeof(r->bye_text), c->p,
      (size_t) (c->end - c->p));
    return 0;
  }

  if (imap_word_is(w, n, "CAPABILITY")) {
    imap_capabilities(r, c);
    return 0;
  }

  if (imap_word_is(w, n, "SEARCH")) {
    return imap_search(r, c);
  }

  if (imap_word_is(w, n, "STATUS")) {
    return imap_status(r, c);
  }

  if (imap_word_is(w, n, "LIST")) {
    return imap_list(r, c);
  }

  return 0;
}

static int imap_tag_char(char ch) {
  return isalnum((unsigned char) ch) || ch == '.' || ch == '-' || ch == '_';
}

static void imap_tagged(struct mailoauth_imap_resp *r, struct imap_cur *c,
    const char *status) {
  if (r->bye && strcmp(status, "OK") == 0) {
    /* "* BYE" then a tagged OK: a LOGOUT was answered, nobody hung up. */
    r->bye = 0;
    r->bye_text[0] = '\0';
    r->logouts++;
    return;
  }

  snprintf(r->tagged_status, sizeof(r->tagged_status), "%s", status);
  r->have |= MAILOAUTH_IMAP_HAVE_TAGGED;
  (void) imap_resp_code(r, c, r->tagged_code, sizeof(r->tagged_code));
  mailoauth_imap_copy_text(r->tagged_text, sizeof(r->tagged_text), c->p,
    (size_t) (c->end - c->p));
}

int mailoauth_imap_parse_line(struct mailoauth_imap_resp *r,
    const char *line, size_t len) {
  struct imap_cur c;
  unsigned before;
  int rc = 0;

  if (r == NULL || (line == NULL && len > 0)) {
    errno = EINVAL;
    return -1;
  }

  while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) {
    len--;
  }
  if (len == 0) {
    return 0;
  }

  c.p = line;
  c.end = line + len;
  before = r->malformed;

  if (len >= 2 && line[0] == '*' && line[1] == ' ') {
    c.p += 2;
    imap_skip_spaces(&c);
    rc = imap_untagged(r, &c);
    if (rc < 0) {
      r->malformed++;
    }

  } else if (imap_tag_char(line[0])) {
    /* "<tag> OK|NO|BAD ...": anything else (a continuation, a stray
     * line) says nothing we use.
     */
    const char *w;
    size_t n;

    while (c.p < c.end && imap_tag_char(*c.p)) {
      c.p++;
    }
    if (imap_peek(&c) == ' ' && c.p - line <= 32) {
      imap_skip_spaces(&c);
      n = imap_word(&c, &w);
      if (n > 0 && (imap_at_end(&c) || imap_peek(&c) == ' ')) {
        imap_skip_spaces(&c);
        if (imap_word_is(w, n, "OK")) {
          imap_tagged(r, &c, "OK");
        } else if (imap_word_is(w, n, "NO")) {
          imap_tagged(r, &c, "NO");
        } else if (imap_word_is(w, n, "BAD")) {
          imap_tagged(r, &c, "BAD");
        }
      }
    }
  }

  if (rc < 0 || r->malformed != before) {
    errno = EINVAL;
    return -1;
  }
  return 0;
}


int mailoauth_imap_literal(const char *line, size_t len, uint64_t *n,
    int *is_body) {
  const char *open, *p;
  uint64_t v = 0;
  size_t digits = 0;

  *n = 0;
  *is_body = 0;
  while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) {
    len--;
  }
  if (len < 3 || line[len - 1] != '}') {
    return 0;
  }

  for (p = line + len - 1; p > line && p[-1] >= '0' && p[-1] <= '9'; p--) {
    digits++;
  }
  if (p == line || p[-1] != '{') {
    return 0;
  }
  open = p - 1;
  if (digits == 0 || digits > 18) {
    /* A literal past 10^18 bytes is no message anyone sends. */
    return -1;
  }
  for (; *p != '}'; p++) {
    v = v * 10 + (uint64_t) (*p - '0');
  }
  *n = v;

  /* "* <n> FETCH (... BODY[] {N}": the value of BODY[] (which is what
   * BODY.PEEK[] is answered as), or of BODY[HEADER]; not some other
   * literal of the line.
   */
  if (line[0] == '*' && line[1] == ' ') {
    const char *q = line + 2;
    int which = 0;

    if ((size_t) (open - line) >= 7 &&
        strncasecmp(open - 7, "BODY[] ", 7) == 0) {
      which = MAILOAUTH_IMAP_LITERAL_BODY;
    } else if ((size_t) (open - line) >= 13 &&
        strncasecmp(open - 13, "BODY[HEADER] ", 13) == 0) {
      which = MAILOAUTH_IMAP_LITERAL_HEADER;
    }

    while (q < open && *q >= '0' && *q <= '9') {
      q++;
    }
    if (which != 0 && q > line + 2 && (size_t) (open - q) >= 8 &&
        strncasecmp(q, " FETCH (", 8) == 0) {
      *is_body = which;
    }
  }
  return 1;
}
