/*
 * mod_mailoauth - building notification mail (RFC 5322, MIME)
 *
 * Shape of what is built:
 *   without an attachment: one text/plain part, 7bit or quoted-printable;
 *   with one: multipart/mixed holding that text part and the file, base64.
 * Headers and the text part are built in memory by
 * mailoauth_message_prepare(); the file is encoded while it is read.
 *
 * Header lines are folded at 76 columns: the RFC 2047 limit for lines that
 * hold encoded words, and within RFC 5322's 78.  Only a single token that
 * cannot be split (a long address or media type) may exceed it, and the
 * input limits keep those far below 998.
 */

#ifndef _GNU_SOURCE
/* memmem(), tm_gmtoff: the fuzzing build compiles this file on its own. */
# define _GNU_SOURCE
#endif

#include "mailoauth/buf.h"
#include "mailoauth/message.h"
#include "mailoauth/trace.h"

#include <errno.h>
#include <fcntl.h>
#include <iconv.h>
#include <limits.h>
#include <locale.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#define MESSAGE_HAS_ATT(msg)    ((msg)->att_fd >= 0 && !(msg)->omit_att)

static const char *trace_channel = "mailoauth.message";

#define MAILOAUTH_MESSAGE_FOLD          76
#define MAILOAUTH_MESSAGE_EW_MAX        75    /* RFC 2047 encoded word */
#define MAILOAUTH_MESSAGE_MAX_LINE      998
#define MAILOAUTH_MESSAGE_FALLBACK_MAX  60
#define MAILOAUTH_MESSAGE_MAX_TYPE      127
#define MAILOAUTH_MESSAGE_MAX_MAILER    200
#define MAILOAUTH_MESSAGE_MAX_ADDR      254
#define MAILOAUTH_MESSAGE_MAX_ID        250

/* 57 input octets are one 76-character base64 line. */
#define MAILOAUTH_MESSAGE_B64_IN        57
#define MAILOAUTH_MESSAGE_B64_LINES     1024
#define MAILOAUTH_MESSAGE_INBUF \
  (MAILOAUTH_MESSAGE_B64_IN * MAILOAUTH_MESSAGE_B64_LINES)
#define MAILOAUTH_MESSAGE_OUTBUF        (78 * MAILOAUTH_MESSAGE_B64_LINES)

/* Sanitizing modes. */
#define MAILOAUTH_MESSAGE_CLEAN_LINE      1   /* subject, display names */
#define MAILOAUTH_MESSAGE_CLEAN_FILENAME  2
#define MAILOAUTH_MESSAGE_CLEAN_ITEM      3   /* one line of a digest */
#define MAILOAUTH_MESSAGE_CLEAN_BODY      4

enum mailoauth_message_state {
  MAILOAUTH_MESSAGE_ST_START = 0,
  MAILOAUTH_MESSAGE_ST_HEAD,
  MAILOAUTH_MESSAGE_ST_ATTACH,
  MAILOAUTH_MESSAGE_ST_TAIL,
  MAILOAUTH_MESSAGE_ST_DONE,
  MAILOAUTH_MESSAGE_ST_FAILED
};

struct mailoauth_message_mailbox {
  char *addr;
  char *name;           /* cleaned, may be NULL */
  size_t name_len;
};

/* A growing output buffer that remembers where its current line began (for
 * folding) and whether an allocation failed (checked once at the end, which
 * keeps the header code free of error plumbing).
 */
/* The message being built, and where its current line began (for
 * folding).
 */
struct mailoauth_message_buf {
  struct mailoauth_buf out;
  size_t bol;
};

struct mailoauth_message {
  struct mailoauth_message_mailbox from, reply_to;
  int have_from, have_reply_to;

  struct mailoauth_message_mailbox *rcpts[3];
  size_t nrcpts[3];

  char **envelope;
  size_t nenvelope;

  /* For senders that take recipients from the header (Graph's MIME
   * sendMail strips the Bcc header itself).
   */
  int bcc_header;

  /* The attachment travels separately (Graph's upload session). */
  int omit_att;

  char *subject;
  size_t subject_len;
  char *body;
  size_t body_len;

  time_t date;
  int have_date, date_utc;

  char *msgid;
  int msgid_auto;
  char *mailer;

  int att_fd;
  char *att_name;
  size_t att_name_len;
  char *att_type;
  off_t att_size;

  /* Built by prepare. */
  int prepared;
  char boundary[40];
  struct mailoauth_message_buf head;

  /* Stream position. */
  enum mailoauth_message_state state;
  size_t head_off;
  off_t att_done;
  unsigned char *inbuf;
  char *outbuf;
  size_t out_len, out_off;
  const char *tail;
  size_t tail_len, tail_off;
  char tail_buf[64];
  int err;
};

/* Buffer helpers
 */

static int mailoauth_message_buf_grow(struct mailoauth_message_buf *b,
    size_t more) {
  return mailoauth_buf_reserve(&b->out, more);
}

static void mailoauth_message_buf_add(struct mailoauth_message_buf *b,
    const void *s, size_t n) {
  (void) mailoauth_buf_add(&b->out, s, n);
}

static void mailoauth_message_buf_str(struct mailoauth_message_buf *b,
    const char *s) {
  (void) mailoauth_buf_adds(&b->out, s);
}

static void mailoauth_message_buf_char(struct mailoauth_message_buf *b,
    char c) {
  (void) mailoauth_buf_addc(&b->out, c);
}

static void mailoauth_message_buf_free(struct mailoauth_message_buf *b) {
  mailoauth_buf_free(&b->out);
  b->bol = 0;
}

/* Hands the contents over as a NUL-terminated malloc'd string. */
static char *mailoauth_message_buf_take(struct mailoauth_message_buf *b,
    size_t *len) {
  b->bol = 0;
  return mailoauth_buf_take(&b->out, len);
}

/* UTF-8
 *
 * glibc's decoders (mbrtowc in a UTF-8 locale, iconv) accept code points
 * above U+10FFFF and five-byte forms, which mail clients and the tests'
 * parsers reject, so the strict decoder is ours.
 */

/* Decodes one character; invalid input yields U+FFFD for its maximal
 * ill-formed prefix (at least one byte), as the Unicode standard recommends.
 */
static size_t mailoauth_message_utf8_next(const unsigned char *s, size_t len,
    uint32_t *cp) {
  unsigned char c = s[0], lo = 0x80, hi = 0xbf;
  size_t n, i;
  uint32_t v;

  if (c < 0x80) {
    *cp = c;
    return 1;
  }

  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
    v = c & 0x1f;

  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    v = c & 0x0f;
    if (c == 0xe0) {
      lo = 0xa0;            /* overlong */
    } else if (c == 0xed) {
      hi = 0x9f;            /* surrogates */
    }

  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    v = c & 0x07;
    if (c == 0xf0) {
      lo = 0x90;            /* overlong */
    } else if (c == 0xf4) {
      hi = 0x8f;            /* above U+10FFFF */
    }

  } else {
    *cp = 0xfffd;
    return 1;
  }

  for (i = 1; i < n; i++) {
    if (i >= len || s[i] < lo || s[i] > hi) {
      *cp = 0xfffd;
      return i;
    }
    v = (v << 6) | (s[i] & 0x3f);
    lo = 0x80;
    hi = 0xbf;
  }

  *cp = v;
  return n;
}

static void mailoauth_message_utf8_put(struct mailoauth_message_buf *b,
    uint32_t cp) {
  unsigned char u[4];
  size_t n;

  if (cp < 0x80) {
    u[0] = (unsigned char) cp;
    n = 1;

  } else if (cp < 0x800) {
    u[0] = (unsigned char) (0xc0 | (cp >> 6));
    u[1] = (unsigned char) (0x80 | (cp & 0x3f));
    n = 2;

  } else if (cp < 0x10000) {
    u[0] = (unsigned char) (0xe0 | (cp >> 12));
    u[1] = (unsigned char) (0x80 | ((cp >> 6) & 0x3f));
    u[2] = (unsigned char) (0x80 | (cp & 0x3f));
    n = 3;

  } else {
    u[0] = (unsigned char) (0xf0 | (cp >> 18));
    u[1] = (unsigned char) (0x80 | ((cp >> 12) & 0x3f));
    u[2] = (unsigned char) (0x80 | ((cp >> 6) & 0x3f));
    u[3] = (unsigned char) (0x80 | (cp & 0x3f));
    n = 4;
  }

  mailoauth_message_buf_add(b, u, n);
}

/* Length of the (valid) UTF-8 character starting with byte c. */
static size_t mailoauth_message_utf8_len(unsigned char c) {
  if (c < 0x80) {
    return 1;
  }
  if (c < 0xe0) {
    return 2;
  }
  if (c < 0xf0) {
    return 3;
  }
  return 4;
}

static int mailoauth_message_is_control(uint32_t cp) {
  return cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp < 0xa0);
}

/* Characters that end a line for some reader or other. */
static int mailoauth_message_is_linebreak(uint32_t cp) {
  return cp == '\r' || cp == '\n' || cp == '\v' || cp == '\f' ||
    cp == 0x85 || cp == 0x2028 || cp == 0x2029;
}

/* Embedding, override and isolate controls: in a file name they can make
 * "invoice<RLO>fdp.exe" display as "invoiceexe.pdf".
 */
static int mailoauth_message_is_bidi_control(uint32_t cp) {
  return (cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069);
}

/* Makes text safe for its place: valid UTF-8 with no control characters
 * (for the body: lines ended by CRLF, TABs kept; elsewhere one line, with
 * no bidirectional overrides either).  The result is cut at a
 * character boundary so as not to exceed max bytes.
 */
static char *mailoauth_message_clean(const char *s, size_t len, int mode,
    size_t max, size_t *out_len) {
  struct mailoauth_message_buf b;
  const unsigned char *p = (const unsigned char *) s;
  size_t i = 0;
  int pending_space = 0;

  memset(&b, 0, sizeof(b));
  mailoauth_message_buf_grow(&b, len < 4096 ? len : 4096);

  while (i < len) {
    uint32_t cp;
    size_t n, before;

    n = mailoauth_message_utf8_next(p + i, len - i, &cp);

    if (mode == MAILOAUTH_MESSAGE_CLEAN_BODY) {
      if (cp == '\r' || cp == '\n') {
        /* CRLF, lone CR and lone LF all end one line. */
        if (cp == '\r' && i + 1 < len && p[i + 1] == '\n') {
          n = 2;
        }
        if (b.out.len + 2 > max) {
          break;
        }
        mailoauth_message_buf_add(&b, "\r\n", 2);
        i += n;
        continue;
      }

      if (cp != '\t' && mailoauth_message_is_control(cp)) {
        cp = 0xfffd;
      }

    } else {
      if (cp == '\t' || cp == ' ' || mailoauth_message_is_linebreak(cp)) {
        if (mode == MAILOAUTH_MESSAGE_CLEAN_LINE) {
          /* Runs of white space become one space, and none is kept at
           * either end: folding must never produce a blank line.
           */
          pending_space = b.out.len > 0;
          i += n;
          continue;
        }
        cp = ' ';

      } else if (mailoauth_message_is_control(cp) ||
                 mailoauth_message_is_bidi_control(cp)) {
        cp = 0xfffd;

      } else if (mode == MAILOAUTH_MESSAGE_CLEAN_FILENAME &&
                 (cp == '/' || cp == '\\')) {
        cp = '_';
      }
    }

    before = b.out.len;
    if (pending_space) {
      mailoauth_message_buf_char(&b, ' ');
      pending_space = 0;
    }
    mailoauth_message_utf8_put(&b, cp);
    if (b.out.len > max) {
      b.out.len = before;
      break;
    }
    i += n;
  }

  if (mode == MAILOAUTH_MESSAGE_CLEAN_BODY && b.out.len > 0 &&
      (b.out.len < 2 || memcmp(b.out.data + b.out.len - 2, "\r\n", 2) != 0)) {
    mailoauth_message_buf_add(&b, "\r\n", 2);
  }

  return mailoauth_message_buf_take(&b, out_len);
}

char *mailoauth_message_escape(const char *s, size_t len, size_t *out_len) {
  struct mailoauth_message_buf b;
  const unsigned char *p;
  size_t i = 0;

  if (s == NULL) {
    s = "";
    len = 0;
  }
  if (len == MAILOAUTH_MESSAGE_STRLEN) {
    len = strlen(s);
  }
  p = (const unsigned char *) s;

  memset(&b, 0, sizeof(b));
  mailoauth_message_buf_grow(&b, len);

  while (i < len) {
    char esc[16];
    uint32_t cp;
    size_t n, k;

    n = mailoauth_message_utf8_next(p + i, len - i, &cp);

    if (cp == 0xfffd &&
        !(n == 3 && memcmp(p + i, "\xef\xbf\xbd", 3) == 0)) {
      /* Invalid UTF-8: show the bytes themselves. */
      for (k = 0; k < n; k++) {
        snprintf(esc, sizeof(esc), "\\x%02X", p[i + k]);
        mailoauth_message_buf_str(&b, esc);
      }

    } else if (cp == '\n') {
      mailoauth_message_buf_add(&b, "\\n", 2);
    } else if (cp == '\r') {
      mailoauth_message_buf_add(&b, "\\r", 2);
    } else if (cp == '\t') {
      mailoauth_message_buf_add(&b, "\\t", 2);

    } else if (cp < 0x20 || cp == 0x7f) {
      snprintf(esc, sizeof(esc), "\\x%02X", (unsigned int) cp);
      mailoauth_message_buf_str(&b, esc);

    } else if (mailoauth_message_is_control(cp) ||
               mailoauth_message_is_linebreak(cp) ||
               mailoauth_message_is_bidi_control(cp)) {
      /* C1 controls (NEL among them), U+2028/9 and bidi overrides: some
       * readers break lines at them or reorder the text around them.
       */
      snprintf(esc, sizeof(esc), "\\u%04X", (unsigned int) cp);
      mailoauth_message_buf_str(&b, esc);

    } else {
      mailoauth_message_buf_add(&b, p + i, n);
    }

    i += n;
  }

  return mailoauth_message_buf_take(&b, out_len);
}

/* Header writing
 */

static size_t mailoauth_message_col(const struct mailoauth_message_buf *b) {
  return b->out.len - b->bol;
}

static void mailoauth_message_hdr_begin(struct mailoauth_message_buf *b,
    const char *name) {
  b->bol = b->out.len;
  mailoauth_message_buf_str(b, name);
  mailoauth_message_buf_char(b, ':');
}

static void mailoauth_message_hdr_end(struct mailoauth_message_buf *b) {
  mailoauth_message_buf_add(b, "\r\n", 2);
  b->bol = b->out.len;
}

static void mailoauth_message_fold(struct mailoauth_message_buf *b) {
  mailoauth_message_buf_add(b, "\r\n", 2);
  b->bol = b->out.len;
}

/* Appends " token", first folding the line if the token would not fit. */
static void mailoauth_message_hdr_token(struct mailoauth_message_buf *b,
    const char *tok, size_t n) {
  if (mailoauth_message_col(b) + 1 + n > MAILOAUTH_MESSAGE_FOLD &&
      mailoauth_message_col(b) > 1) {
    mailoauth_message_fold(b);
  }

  mailoauth_message_buf_char(b, ' ');
  mailoauth_message_buf_add(b, tok, n);
}

/* Characters an RFC 2047 "Q" word may carry as themselves in any context,
 * phrases included (RFC 2047 section 5, rule 3).
 */
static int mailoauth_message_q_literal(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
    (c >= '0' && c <= '9') || c == '!' || c == '*' || c == '+' ||
    c == '-' || c == '/';
}

static size_t mailoauth_message_q_cost(unsigned char c) {
  return (mailoauth_message_q_literal(c) || c == ' ') ? 1 : 3;
}

static const char mailoauth_message_hex[] = "0123456789ABCDEF";

/* Writes s (valid UTF-8) as a sequence of RFC 2047 encoded words, each
 * preceded by folding white space, none longer than 75 characters, none
 * ending inside a character.
 */
static void mailoauth_message_hdr_encoded(struct mailoauth_message_buf *b,
    const char *s, size_t len) {
  const unsigned char *p = (const unsigned char *) s;
  size_t i, qlen = 0, blen, pos = 0;
  int use_b;

  for (i = 0; i < len; i++) {
    qlen += mailoauth_message_q_cost(p[i]);
  }
  blen = 4 * ((len + 2) / 3);
  use_b = blen < qlen;

  while (pos < len) {
    char word[MAILOAUTH_MESSAGE_EW_MAX + 1];
    size_t avail, end, cost = 0, wlen;

    /* "=?UTF-8?Q?" and "?=" take 12 characters; a 4-byte character needs
     * at most 12 more.  Start a new line unless that much fits here.
     */
    if (mailoauth_message_col(b) > 1 &&
        mailoauth_message_col(b) + 1 + 24 > MAILOAUTH_MESSAGE_FOLD) {
      mailoauth_message_fold(b);
    }
    avail = MAILOAUTH_MESSAGE_FOLD - 1 - mailoauth_message_col(b);
    if (avail > MAILOAUTH_MESSAGE_EW_MAX) {
      avail = MAILOAUTH_MESSAGE_EW_MAX;
    }
    avail -= 12;

    /* Take whole characters while they fit. */
    end = pos;
    while (end < len) {
      size_t clen = mailoauth_message_utf8_len(p[end]), ccost = 0, k;

      if (clen > len - end) {
        clen = len - end;
      }

      if (use_b) {
        ccost = 4 * ((end + clen - pos + 2) / 3) - cost;
      } else {
        for (k = 0; k < clen; k++) {
          ccost += mailoauth_message_q_cost(p[end + k]);
        }
      }

      if (cost + ccost > avail && end > pos) {
        break;
      }
      cost += ccost;
      end += clen;
    }

    memcpy(word, use_b ? "=?UTF-8?B?" : "=?UTF-8?Q?", 10);
    wlen = 10;
    if (use_b) {
      wlen += (size_t) EVP_EncodeBlock((unsigned char *) word + wlen,
        p + pos, (int) (end - pos));

    } else {
      for (i = pos; i < end; i++) {
        if (mailoauth_message_q_literal(p[i])) {
          word[wlen++] = (char) p[i];

        } else if (p[i] == ' ') {
          word[wlen++] = '_';

        } else {
          word[wlen++] = '=';
          word[wlen++] = mailoauth_message_hex[p[i] >> 4];
          word[wlen++] = mailoauth_message_hex[p[i] & 0x0f];
        }
      }
    }
    word[wlen++] = '?';
    word[wlen++] = '=';

    mailoauth_message_buf_char(b, ' ');
    mailoauth_message_buf_add(b, word, wlen);
    pos = end;
  }
}

static int mailoauth_message_is_printable_ascii(const char *s, size_t len) {
  size_t i;

  for (i = 0; i < len; i++) {
    if ((unsigned char) s[i] < 0x20 || (unsigned char) s[i] > 0x7e) {
      return 0;
    }
  }

  return 1;
}

/* Unstructured text (Subject): as itself when it is printable ASCII that
 * folds well and cannot be mistaken for encoded words, else encoded.
 */
static void mailoauth_message_hdr_text(struct mailoauth_message_buf *b,
    const char *s, size_t len) {
  size_t i, start;

  if (len == 0) {
    return;
  }

  if (mailoauth_message_is_printable_ascii(s, len) &&
      memmem(s, len, "=?", 2) == NULL) {
    size_t run = 0;

    for (i = 0; i < len; i++) {
      run = s[i] == ' ' ? 0 : run + 1;
      if (run > MAILOAUTH_MESSAGE_FOLD - 2) {
        break;
      }
    }

    if (i == len) {
      /* The cleaner left single spaces between words. */
      start = 0;
      for (i = 0; i <= len; i++) {
        if (i == len || s[i] == ' ') {
          mailoauth_message_hdr_token(b, s + start, i - start);
          start = i + 1;
        }
      }
      return;
    }
  }

  mailoauth_message_hdr_encoded(b, s, len);
}

/* A display name followed by the address, as one list member. */
static void mailoauth_message_hdr_mailbox(struct mailoauth_message_buf *b,
    const struct mailoauth_message_mailbox *mb, int last) {
  char tok[MAILOAUTH_MESSAGE_MAX_ADDR + 8];
  size_t n;

  if (mb->name != NULL && mb->name_len > 0) {
    const char *name = mb->name;
    size_t i, quoted = 2;

    for (i = 0; i < mb->name_len; i++) {
      quoted += (name[i] == '"' || name[i] == '\\') ? 2 : 1;
    }

    if (mailoauth_message_is_printable_ascii(name, mb->name_len) &&
        memmem(name, mb->name_len, "=?", 2) == NULL &&
        quoted <= MAILOAUTH_MESSAGE_FOLD - 2) {
      char q[MAILOAUTH_MESSAGE_FOLD];

      n = 0;
      q[n++] = '"';
      for (i = 0; i < mb->name_len; i++) {
        if (name[i] == '"' || name[i] == '\\') {
          q[n++] = '\\';
        }
        q[n++] = name[i];
      }
      q[n++] = '"';
      mailoauth_message_hdr_token(b, q, n);

    } else {
      mailoauth_message_hdr_encoded(b, name, mb->name_len);
    }

    n = (size_t) snprintf(tok, sizeof(tok), "<%s>%s", mb->addr,
      last ? "" : ",");

  } else {
    n = (size_t) snprintf(tok, sizeof(tok), "%s%s", mb->addr,
      last ? "" : ",");
  }

  mailoauth_message_hdr_token(b, tok, n);
}

static void mailoauth_message_hdr_mailboxes(struct mailoauth_message_buf *b,
    const char *name, const struct mailoauth_message_mailbox *list,
    size_t n) {
  size_t i;

  mailoauth_message_hdr_begin(b, name);
  for (i = 0; i < n; i++) {
    mailoauth_message_hdr_mailbox(b, &list[i], i + 1 == n);
  }
  mailoauth_message_hdr_end(b);
}

/* Addresses
 */

static int mailoauth_message_atext(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
    (c >= '0' && c <= '9') || (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c)
    != NULL);
}

int mailoauth_message_check_address(const char *addr) {
  const char *at, *p, *label;
  size_t local_len, labels = 1;

  if (addr == NULL ||
      strlen(addr) > MAILOAUTH_MESSAGE_MAX_ADDR) {
    errno = EINVAL;
    return -1;
  }

  at = strchr(addr, '@');
  if (at == NULL ||
      strchr(at + 1, '@') != NULL) {
    errno = EINVAL;
    return -1;
  }

  /* Local part: a dot-atom, no empty atoms. */
  local_len = (size_t) (at - addr);
  if (local_len == 0 || local_len > 64 ||
      addr[0] == '.' || at[-1] == '.') {
    errno = EINVAL;
    return -1;
  }

  for (p = addr; p < at; p++) {
    if (*p == '.') {
      if (p[1] == '.') {
        errno = EINVAL;
        return -1;
      }

    } else if (!mailoauth_message_atext((unsigned char) *p)) {
      errno = EINVAL;
      return -1;
    }
  }

  /* Domain: LDH labels of 1 to 63 characters, at least two of them. */
  label = at + 1;
  for (p = label; ; p++) {
    if (*p == '.' || *p == '\0') {
      if (p == label || p - label > 63 ||
          *label == '-' || p[-1] == '-') {
        errno = EINVAL;
        return -1;
      }

      if (*p == '\0') {
        break;
      }

      labels++;
      label = p + 1;
      continue;
    }

    if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
          (*p >= '0' && *p <= '9') || *p == '-')) {
      errno = EINVAL;
      return -1;
    }
  }

  if (labels < 2) {
    errno = EINVAL;
    return -1;
  }

  return 0;
}

static void mailoauth_message_mailbox_clear(
    struct mailoauth_message_mailbox *mb) {
  free(mb->addr);
  free(mb->name);
  memset(mb, 0, sizeof(*mb));
}

static int mailoauth_message_mailbox_init(
    struct mailoauth_message_mailbox *mb, const char *addr,
    const char *name) {
  memset(mb, 0, sizeof(*mb));

  if (mailoauth_message_check_address(addr) < 0) {
    return -1;
  }

  mb->addr = strdup(addr);
  if (mb->addr == NULL) {
    errno = ENOMEM;
    return -1;
  }

  if (name != NULL && *name != '\0') {
    mb->name = mailoauth_message_clean(name, strlen(name),
      MAILOAUTH_MESSAGE_CLEAN_LINE, MAILOAUTH_MESSAGE_MAX_NAME,
      &mb->name_len);
    if (mb->name == NULL) {
      mailoauth_message_mailbox_clear(mb);
      errno = ENOMEM;
      return -1;
    }
  }

  return 0;
}

/* The message object
 */

struct mailoauth_message *mailoauth_message_create(void) {
  struct mailoauth_message *msg;

  msg = calloc(1, sizeof(*msg));
  if (msg == NULL) {
    errno = ENOMEM;
    return NULL;
  }

  msg->att_fd = -1;
  msg->att_size = -1;
  msg->state = MAILOAUTH_MESSAGE_ST_START;
  return msg;
}

static void mailoauth_message_detach(struct mailoauth_message *msg) {
  if (msg->att_fd >= 0) {
    (void) close(msg->att_fd);
  }
  msg->att_fd = -1;
  msg->att_size = -1;
  free(msg->att_name);
  msg->att_name = NULL;
  free(msg->att_type);
  msg->att_type = NULL;
}

void mailoauth_message_free(struct mailoauth_message *msg) {
  size_t i, k;

  if (msg == NULL) {
    return;
  }

  mailoauth_message_mailbox_clear(&msg->from);
  mailoauth_message_mailbox_clear(&msg->reply_to);
  for (k = 0; k < 3; k++) {
    for (i = 0; i < msg->nrcpts[k]; i++) {
      mailoauth_message_mailbox_clear(&msg->rcpts[k][i]);
    }
    free(msg->rcpts[k]);
  }
  for (i = 0; i < msg->nenvelope; i++) {
    free(msg->envelope[i]);
  }
  free(msg->envelope);
  free(msg->subject);
  free(msg->body);
  free(msg->msgid);
  free(msg->mailer);
  mailoauth_message_detach(msg);
  mailoauth_message_buf_free(&msg->head);
  free(msg->inbuf);
  free(msg->outbuf);
  free(msg);
}

/* Changes are refused while the message is being read: the headers already
 * sent would no longer match.
 */
static int mailoauth_message_modify(struct mailoauth_message *msg) {
  if (msg == NULL) {
    errno = EINVAL;
    return -1;
  }

  if (msg->state != MAILOAUTH_MESSAGE_ST_START) {
    errno = EBUSY;
    return -1;
  }

  msg->prepared = 0;
  return 0;
}

int mailoauth_message_set_from(struct mailoauth_message *msg,
    const char *addr, const char *name) {
  struct mailoauth_message_mailbox mb;

  if (mailoauth_message_modify(msg) < 0 ||
      mailoauth_message_mailbox_init(&mb, addr, name) < 0) {
    return -1;
  }

  mailoauth_message_mailbox_clear(&msg->from);
  msg->from = mb;
  msg->have_from = 1;

  /* A generated Message-ID names the From domain. */
  if (msg->msgid_auto) {
    free(msg->msgid);
    msg->msgid = NULL;
    msg->msgid_auto = 0;
  }

  return 0;
}

int mailoauth_message_set_reply_to(struct mailoauth_message *msg,
    const char *addr, const char *name) {
  struct mailoauth_message_mailbox mb;

  if (mailoauth_message_modify(msg) < 0 ||
      mailoauth_message_mailbox_init(&mb, addr, name) < 0) {
    return -1;
  }

  mailoauth_message_mailbox_clear(&msg->reply_to);
  msg->reply_to = mb;
  msg->have_reply_to = 1;
  return 0;
}

int mailoauth_message_add_recipient(struct mailoauth_message *msg, int kind,
    const char *addr, const char *name) {
  struct mailoauth_message_mailbox mb, *list;
  size_t i;
  int in_envelope = 0;

  if (mailoauth_message_modify(msg) < 0) {
    return -1;
  }

  if (kind != MAILOAUTH_MESSAGE_TO &&
      kind != MAILOAUTH_MESSAGE_CC &&
      kind != MAILOAUTH_MESSAGE_BCC) {
    errno = EINVAL;
    return -1;
  }

  if (msg->nenvelope >= MAILOAUTH_MESSAGE_MAX_RCPTS) {
    errno = E2BIG;
    return -1;
  }

  /* Bcc names would only ever be dropped. */
  if (mailoauth_message_mailbox_init(&mb, addr,
      kind == MAILOAUTH_MESSAGE_BCC ? NULL : name) < 0) {
    return -1;
  }

  for (i = 0; i < msg->nenvelope; i++) {
    if (strcasecmp(msg->envelope[i], addr) == 0) {
      in_envelope = 1;
      break;
    }
  }

  if (!in_envelope) {
    char **env, *copy;

    env = realloc(msg->envelope, (msg->nenvelope + 1) * sizeof(*env));
    if (env == NULL) {
      mailoauth_message_mailbox_clear(&mb);
      errno = ENOMEM;
      return -1;
    }
    msg->envelope = env;

    copy = strdup(addr);
    if (copy == NULL) {
      mailoauth_message_mailbox_clear(&mb);
      errno = ENOMEM;
      return -1;
    }
    msg->envelope[msg->nenvelope++] = copy;
  }

  list = realloc(msg->rcpts[kind], (msg->nrcpts[kind] + 1) * sizeof(*list));
  if (list == NULL) {
    mailoauth_message_mailbox_clear(&mb);
    errno = ENOMEM;
    return -1;
  }
  msg->rcpts[kind] = list;
  list[msg->nrcpts[kind]++] = mb;
  return 0;
}

static int mailoauth_message_replace(char **dst, size_t *dst_len,
    const char *s, size_t len, int mode, size_t max) {
  char *clean;
  size_t clean_len;

  clean = mailoauth_message_clean(s, len, mode, max, &clean_len);
  if (clean == NULL) {
    return -1;
  }

  free(*dst);
  *dst = clean;
  *dst_len = clean_len;
  return 0;
}

int mailoauth_message_set_subject(struct mailoauth_message *msg,
    const char *subject, size_t len) {
  if (mailoauth_message_modify(msg) < 0) {
    return -1;
  }

  if (subject == NULL) {
    subject = "";
    len = 0;
  }
  if (len == MAILOAUTH_MESSAGE_STRLEN) {
    len = strlen(subject);
  }

  return mailoauth_message_replace(&msg->subject, &msg->subject_len, subject,
    len, MAILOAUTH_MESSAGE_CLEAN_LINE, MAILOAUTH_MESSAGE_MAX_SUBJECT);
}

int mailoauth_message_set_body(struct mailoauth_message *msg,
    const char *text, size_t len) {
  if (mailoauth_message_modify(msg) < 0) {
    return -1;
  }

  if (text == NULL) {
    text = "";
    len = 0;
  }
  if (len == MAILOAUTH_MESSAGE_STRLEN) {
    len = strlen(text);
  }

  return mailoauth_message_replace(&msg->body, &msg->body_len, text, len,
    MAILOAUTH_MESSAGE_CLEAN_BODY, SIZE_MAX);
}

int mailoauth_message_set_digest_body(struct mailoauth_message *msg,
    const char *intro, const char *const *items, size_t nitems,
    const char *outro) {
  struct mailoauth_message_buf b;
  size_t i, len;
  char *text;
  int res;

  if (mailoauth_message_modify(msg) < 0) {
    return -1;
  }

  if (items == NULL && nitems > 0) {
    errno = EINVAL;
    return -1;
  }

  memset(&b, 0, sizeof(b));
  if (intro != NULL && *intro != '\0') {
    mailoauth_message_buf_str(&b, intro);
    if (!b.out.failed && b.out.data[b.out.len - 1] != '\n') {
      mailoauth_message_buf_char(&b, '\n');
    }
  }

  for (i = 0; i < nitems; i++) {
    char *line;
    size_t line_len;

    if (items[i] == NULL) {
      continue;
    }

    /* The body cleaner would take a CR or LF inside an item for a line
     * break: flatten each item to one line first.
     */
    line = mailoauth_message_clean(items[i], strlen(items[i]),
      MAILOAUTH_MESSAGE_CLEAN_ITEM, SIZE_MAX, &line_len);
    if (line == NULL) {
      mailoauth_message_buf_free(&b);
      errno = ENOMEM;
      return -1;
    }
    mailoauth_message_buf_add(&b, line, line_len);
    mailoauth_message_buf_char(&b, '\n');
    free(line);
  }

  if (outro != NULL && *outro != '\0') {
    mailoauth_message_buf_str(&b, outro);
  }

  if (b.out.failed) {
    mailoauth_message_buf_free(&b);
    errno = ENOMEM;
    return -1;
  }

  text = b.out.data != NULL ? b.out.data : (char *) "";
  len = b.out.len;
  res = mailoauth_message_replace(&msg->body, &msg->body_len, text, len,
    MAILOAUTH_MESSAGE_CLEAN_BODY, SIZE_MAX);
  mailoauth_message_buf_free(&b);
  return res;
}

int mailoauth_message_set_date(struct mailoauth_message *msg, time_t when,
    int utc) {
  if (mailoauth_message_modify(msg) < 0) {
    return -1;
  }

  msg->date = when;
  msg->date_utc = utc ? 1 : 0;
  msg->have_date = 1;
  return 0;
}

/* dot-atom-text, as RFC 5322's msg-id halves are in practice. */
static int mailoauth_message_dot_atom(const char *s, size_t len) {
  size_t i;

  if (len == 0 || s[0] == '.' || s[len - 1] == '.') {
    return 0;
  }

  for (i = 0; i < len; i++) {
    if (s[i] == '.') {
      if (s[i + 1] == '.') {
        return 0;
      }
    } else if (!mailoauth_message_atext((unsigned char) s[i])) {
      return 0;
    }
  }

  return 1;
}

int mailoauth_message_set_message_id(struct mailoauth_message *msg,
    const char *id) {
  const char *at;
  char *copy;

  if (mailoauth_message_modify(msg) < 0) {
    return -1;
  }

  if (id == NULL ||
      strlen(id) > MAILOAUTH_MESSAGE_MAX_ID ||
      (at = strchr(id, '@')) == NULL ||
      !mailoauth_message_dot_atom(id, (size_t) (at - id)) ||
      !mailoauth_message_dot_atom(at + 1, strlen(at + 1))) {
    errno = EINVAL;
    return -1;
  }

  copy = strdup(id);
  if (copy == NULL) {
    errno = ENOMEM;
    return -1;
  }

  free(msg->msgid);
  msg->msgid = copy;
  msg->msgid_auto = 0;
  return 0;
}

int mailoauth_message_set_mailer(struct mailoauth_message *msg,
    const char *product) {
  char *copy = NULL;

  if (mailoauth_message_modify(msg) < 0) {
    return -1;
  }

  if (product != NULL) {
    size_t len = strlen(product);

    if (len == 0 || len > MAILOAUTH_MESSAGE_MAX_MAILER ||
        !mailoauth_message_is_printable_ascii(product, len) ||
        product[0] == ' ' || product[len - 1] == ' ' ||
        strstr(product, "  ") != NULL) {
      errno = EINVAL;
      return -1;
    }

    copy = strdup(product);
    if (copy == NULL) {
      errno = ENOMEM;
      return -1;
    }
  }

  free(msg->mailer);
  msg->mailer = copy;
  return 0;
}

/* Media types
 */

static const struct {
  const char *ext;
  const char *type;
} mailoauth_message_types[] = {
  { "7z", "application/x-7z-compressed" },
  { "avi", "video/x-msvideo" },
  { "bmp", "image/bmp" },
  { "bz2", "application/x-bzip2" },
  { "csv", "text/csv" },
  { "doc", "application/msword" },
  { "docx", "application/vnd.openxmlformats-officedocument."
      "wordprocessingml.document" },
  { "gif", "image/gif" },
  { "gz", "application/gzip" },
  { "heic", "image/heic" },
  { "htm", "text/html" },
  { "html", "text/html" },
  { "jpeg", "image/jpeg" },
  { "jpg", "image/jpeg" },
  { "json", "application/json" },
  { "log", "text/plain" },
  { "md", "text/markdown" },
  { "mov", "video/quicktime" },
  { "mp3", "audio/mpeg" },
  { "mp4", "video/mp4" },
  { "odp", "application/vnd.oasis.opendocument.presentation" },
  { "ods", "application/vnd.oasis.opendocument.spreadsheet" },
  { "odt", "application/vnd.oasis.opendocument.text" },
  { "pdf", "application/pdf" },
  { "png", "image/png" },
  { "ppt", "application/vnd.ms-powerpoint" },
  { "pptx", "application/vnd.openxmlformats-officedocument."
      "presentationml.presentation" },
  { "rar", "application/vnd.rar" },
  { "rtf", "application/rtf" },
  { "svg", "image/svg+xml" },
  { "tar", "application/x-tar" },
  { "tgz", "application/gzip" },
  { "tif", "image/tiff" },
  { "tiff", "image/tiff" },
  { "txt", "text/plain" },
  { "wav", "audio/wav" },
  { "webp", "image/webp" },
  { "xls", "application/vnd.ms-excel" },
  { "xlsx", "application/vnd.openxmlformats-officedocument."
      "spreadsheetml.sheet" },
  { "xml", "application/xml" },
  { "zip", "application/zip" },
  /* message/rfc822 is left out on purpose: RFC 2046 forbids base64 for it,
   * and a forwarded .eml travels fine as octets.
   */
  { NULL, NULL }
};

const char *mailoauth_message_content_type(const char *name, size_t len) {
  const char *dot = NULL;
  size_t i, ext_len;

  if (name == NULL) {
    return "application/octet-stream";
  }
  if (len == MAILOAUTH_MESSAGE_STRLEN) {
    len = strlen(name);
  }

  for (i = len; i > 0; i--) {
    if (name[i - 1] == '.') {
      dot = name + i;
      break;
    }
    if (name[i - 1] == '/') {
      break;
    }
  }

  if (dot == NULL) {
    return "application/octet-stream";
  }

  ext_len = (size_t) (name + len - dot);
  for (i = 0; mailoauth_message_types[i].ext != NULL; i++) {
    if (strlen(mailoauth_message_types[i].ext) == ext_len &&
        strncasecmp(mailoauth_message_types[i].ext, dot, ext_len) == 0) {
      return mailoauth_message_types[i].type;
    }
  }

  return "application/octet-stream";
}

/* type "/" subtype, RFC 2045 tokens. */
static int mailoauth_message_check_type(const char *type) {
  size_t len = strlen(type), i, slashes = 0;

  if (len == 0 || len > MAILOAUTH_MESSAGE_MAX_TYPE ||
      type[0] == '/' || type[len - 1] == '/') {
    return -1;
  }

  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char) type[i];

    if (c == '/') {
      slashes++;
      continue;
    }
    if (c <= 0x20 || c >= 0x7f || strchr("()<>@,;:\\\"[]?=", c) != NULL) {
      return -1;
    }
  }

  return slashes == 1 ? 0 : -1;
}

/* Attachment
 */

/* Cuts a cleaned file name to the limit at a character boundary, keeping
 * a short extension: the recipient's mail client picks the program to open
 * the file with by it.
 */
static void mailoauth_message_shorten_name(char *name, size_t *len) {
  size_t i, ext_len = 0, cut;

  if (*len <= MAILOAUTH_MESSAGE_MAX_FILENAME) {
    return;
  }

  for (i = *len; i > 0 && *len - i < 16; i--) {
    if (name[i - 1] == '.') {
      ext_len = *len - (i - 1);
      break;
    }
  }

  cut = MAILOAUTH_MESSAGE_MAX_FILENAME - ext_len;
  while (cut > 0 && ((unsigned char) name[cut] & 0xc0) == 0x80) {
    cut--;
  }

  memmove(name + cut, name + *len - ext_len, ext_len);
  *len = cut + ext_len;
  name[*len] = '\0';
}

int mailoauth_message_attach_fd(struct mailoauth_message *msg, int fd,
    const char *name, size_t name_len, const char *content_type,
    off_t max_size) {
  struct stat st;
  char *clean_name, *type;
  size_t clean_len;

  if (mailoauth_message_modify(msg) < 0) {
    return -1;
  }

  if (fd < 0 ||
      name == NULL ||
      (content_type != NULL &&
       mailoauth_message_check_type(content_type) < 0)) {
    errno = EINVAL;
    return -1;
  }

  if (name_len == MAILOAUTH_MESSAGE_STRLEN) {
    name_len = strlen(name);
  }

  if (fstat(fd, &st) < 0) {
    return -1;
  }

  if (!S_ISREG(st.st_mode)) {
    errno = EINVAL;
    return -1;
  }

  /* The size noted here bounds what is read, so the limit holds for a
   * file that grows while it is sent.
   */
  if (max_size >= 0 &&
      st.st_size > max_size) {
    errno = EFBIG;
    return -1;
  }

  clean_name = mailoauth_message_clean(name, name_len,
    MAILOAUTH_MESSAGE_CLEAN_FILENAME, SIZE_MAX, &clean_len);
  if (clean_name != NULL) {
    mailoauth_message_shorten_name(clean_name, &clean_len);
  }
  if (clean_name != NULL && clean_len == 0) {
    free(clean_name);
    clean_name = strdup("attachment");
    clean_len = clean_name != NULL ? strlen(clean_name) : 0;
  }

  type = strdup(content_type != NULL ? content_type :
    mailoauth_message_content_type(clean_name != NULL ? clean_name : "",
      clean_len));
  if (clean_name == NULL || type == NULL) {
    free(clean_name);
    free(type);
    errno = ENOMEM;
    return -1;
  }

  mailoauth_message_detach(msg);
  msg->att_fd = fd;
  msg->att_size = st.st_size;
  msg->att_name = clean_name;
  msg->att_name_len = clean_len;
  msg->att_type = type;
  return 0;
}

int mailoauth_message_attach_file(struct mailoauth_message *msg,
    const char *path, const char *name, size_t name_len,
    const char *content_type) {
  int fd, xerrno;

  if (mailoauth_message_modify(msg) < 0) {
    return -1;
  }

  if (path == NULL) {
    errno = EINVAL;
    return -1;
  }

  if (name == NULL) {
    const char *slash = strrchr(path, '/');

    name = slash != NULL ? slash + 1 : path;
    name_len = MAILOAUTH_MESSAGE_STRLEN;
  }

  /* O_NONBLOCK: a FIFO put in the file's place must not hang the worker
   * (it is refused by the type check); O_NOFOLLOW: nor may a symlink
   * pointing somewhere the uploader could not read.
   */
  fd = open(path, O_RDONLY|O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC);
  if (fd < 0) {
    xerrno = errno;
    mailoauth_trace(trace_channel, 3, "cannot open attachment: %s",
      strerror(xerrno));
    errno = xerrno;
    return -1;
  }

  if (mailoauth_message_attach_fd(msg, fd, name, name_len, content_type,
      -1) < 0) {
    xerrno = errno;
    (void) close(fd);
    errno = xerrno;
    return -1;
  }

  return 0;
}

off_t mailoauth_message_attachment_size(const struct mailoauth_message *msg) {
  return msg != NULL && msg->att_fd >= 0 ? msg->att_size : -1;
}

/* An ASCII stand-in for the file name, for readers without RFC 2231:
 * glibc's transliteration (in the C.UTF-8 locale, set for this thread only)
 * turns "Résumé" into "Resume"; whatever it cannot map, and characters that
 * are unsafe in a quoted string or a Windows file name, become '_'.  The
 * extension is kept when the name is shortened.
 */
static void mailoauth_message_fallback_name(const char *name, size_t len,
    char *out, size_t outsz) {
  struct mailoauth_message_buf b;
  locale_t loc;
  size_t i, n, ext = 0;

  memset(&b, 0, sizeof(b));

  loc = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t) 0);
  if (loc != (locale_t) 0) {
    locale_t old = uselocale(loc);
    iconv_t cd = iconv_open("ASCII//TRANSLIT", "UTF-8");

    if (cd != (iconv_t) -1) {
      char *in = (char *) name, tmp[256];
      size_t in_left = len;

      while (in_left > 0) {
        char *o = tmp;
        size_t o_left = sizeof(tmp);

        if (iconv(cd, &in, &in_left, &o, &o_left) == (size_t) -1 &&
            errno != E2BIG) {
          /* Not expected for cleaned UTF-8; skip the byte. */
          in++;
          in_left--;
          *o++ = '_';
        }
        mailoauth_message_buf_add(&b, tmp, (size_t) (o - tmp));
      }
      (void) iconv_close(cd);
    }

    (void) uselocale(old);
    freelocale(loc);
  }

  if (b.out.data == NULL || b.out.failed) {
    /* No locale or no memory: one '_' per character. */
    mailoauth_message_buf_free(&b);
    for (i = 0; i < len; i += mailoauth_message_utf8_len(
        (unsigned char) name[i])) {
      mailoauth_message_buf_char(&b, (unsigned char) name[i] < 0x80 ?
        name[i] : '_');
    }
  }

  for (i = 0; i < b.out.len && b.out.data != NULL; i++) {
    unsigned char c = (unsigned char) b.out.data[i];

    if (c < 0x20 || c > 0x7e || strchr("\"\\/:*?<>|", c) != NULL) {
      b.out.data[i] = '_';
    }
    if (c == '.') {
      ext = i;
    }
  }

  n = b.out.data != NULL ? b.out.len : 0;
  if (n >= outsz) {
    size_t ext_len = n - ext;

    if (ext == 0 || ext_len > 12) {
      ext_len = 0;
    }
    memcpy(out, b.out.data, outsz - 1 - ext_len);
    memcpy(out + outsz - 1 - ext_len, b.out.data + n - ext_len, ext_len);
    out[outsz - 1] = '\0';

  } else if (n > 0) {
    memcpy(out, b.out.data, n);
    out[n] = '\0';

  } else {
    (void) snprintf(out, outsz, "attachment");
  }

  mailoauth_message_buf_free(&b);
}

/* RFC 2231 attribute-char: sent as itself in an extended value. */
static int mailoauth_message_attr_char(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
    (c >= '0' && c <= '9') || (c != '\0' && strchr("!#$&+-.^_`|~", c)
    != NULL);
}

/* filename*=UTF-8''..., or when too long for one line, the continuations
 * filename*0*=UTF-8''...; filename*1*=...; each on its own line, split
 * only between characters.  Every parameter ends with ';' (a fallback
 * follows).
 */
static void mailoauth_message_hdr_rfc2231(struct mailoauth_message_buf *b,
    const char *param, const char *s, size_t len) {
  const unsigned char *p = (const unsigned char *) s;
  size_t i, total = 0, pos = 0, seg = 0;
  char tok[MAILOAUTH_MESSAGE_FOLD + 1];

  for (i = 0; i < len; i++) {
    total += mailoauth_message_attr_char(p[i]) ? 1 : 3;
  }

  while (pos < len || seg == 0) {
    size_t n, end, cost = 0;

    if (seg == 0 &&
        strlen(param) + 9 + total + 1 <= MAILOAUTH_MESSAGE_FOLD - 1) {
      n = (size_t) snprintf(tok, sizeof(tok), "%s*=UTF-8''", param);
      end = len;

    } else {
      n = (size_t) snprintf(tok, sizeof(tok), "%s*%u*=%s", param,
        (unsigned int) seg, seg == 0 ? "UTF-8''" : "");

      /* Whole characters while they fit, and ';' after them. */
      end = pos;
      while (end < len) {
        size_t clen = mailoauth_message_utf8_len(p[end]), ccost = 0, k;

        if (clen > len - end) {
          clen = len - end;
        }
        for (k = 0; k < clen; k++) {
          ccost += mailoauth_message_attr_char(p[end + k]) ? 1 : 3;
        }
        if (n + cost + ccost + 1 > MAILOAUTH_MESSAGE_FOLD - 1 &&
            end > pos) {
          break;
        }
        cost += ccost;
        end += clen;
      }
    }

    for (i = pos; i < end; i++) {
      if (mailoauth_message_attr_char(p[i])) {
        tok[n++] = (char) p[i];
      } else {
        tok[n++] = '%';
        tok[n++] = mailoauth_message_hex[p[i] >> 4];
        tok[n++] = mailoauth_message_hex[p[i] & 0x0f];
      }
    }
    tok[n++] = ';';

    mailoauth_message_hdr_token(b, tok, n);
    pos = end;
    seg++;
  }
}

static void mailoauth_message_attachment_headers(
    struct mailoauth_message *msg, struct mailoauth_message_buf *b) {
  char fallback[MAILOAUTH_MESSAGE_FALLBACK_MAX + 1];
  char tok[MAILOAUTH_MESSAGE_MAX_TYPE + 32];
  size_t n;

  mailoauth_message_fallback_name(msg->att_name, msg->att_name_len,
    fallback, sizeof(fallback));

  mailoauth_message_hdr_begin(b, "Content-Type");
  n = (size_t) snprintf(tok, sizeof(tok), "%s;", msg->att_type);
  mailoauth_message_hdr_token(b, tok, n);
  n = (size_t) snprintf(tok, sizeof(tok), "name=\"%s\"", fallback);
  mailoauth_message_hdr_token(b, tok, n);
  mailoauth_message_hdr_end(b);

  mailoauth_message_hdr_begin(b, "Content-Disposition");
  mailoauth_message_hdr_token(b, "attachment;", 11);

  /* The extended form only when the plain one is not the exact name.  It
   * goes first: parsers that know both forms take it whatever the order,
   * and some (Python's email package among them) take the first.
   */
  if (strlen(fallback) != msg->att_name_len ||
      memcmp(fallback, msg->att_name, msg->att_name_len) != 0) {
    mailoauth_message_hdr_rfc2231(b, "filename", msg->att_name,
      msg->att_name_len);
  }
  n = (size_t) snprintf(tok, sizeof(tok), "filename=\"%s\"", fallback);
  mailoauth_message_hdr_token(b, tok, n);
  mailoauth_message_hdr_end(b);

  mailoauth_message_buf_str(b, "Content-Transfer-Encoding: base64\r\n\r\n");
}

/* Body
 */

/* 7bit needs ASCII without NUL and lines of at most 998 octets. */
static int mailoauth_message_body_is_7bit(const char *s, size_t len) {
  size_t i, line = 0;

  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char) s[i];

    if (c >= 0x80 || c == '\0') {
      return 0;
    }

    if (c == '\r' && i + 1 < len && s[i + 1] == '\n') {
      line = 0;
      i++;
      continue;
    }

    if (++line > MAILOAUTH_MESSAGE_MAX_LINE) {
      return 0;
    }
  }

  return 1;
}

/* Quoted-printable (RFC 2045 6.7) of CRLF-separated text.  Encoded lines
 * stay within 76 characters.  A '.' or "From " at the start of a line is
 * encoded too, so that neither a relay that does not dot-stuff nor an mbox
 * writer can alter the text.
 */
static void mailoauth_message_put_qp(struct mailoauth_message_buf *b,
    const char *s, size_t len) {
  size_t i = 0;

  while (i < len) {
    size_t eol, col = 0;
    const char *nl;

    nl = memmem(s + i, len - i, "\r\n", 2);
    eol = nl != NULL ? (size_t) (nl - s) : len;

    for (; i < eol; i++) {
      unsigned char c = (unsigned char) s[i];
      int last = i + 1 == eol, enc;

      for (;;) {
        enc = c == '=' || c >= 0x7f || (c < 0x20 && c != '\t') ||
          ((c == ' ' || c == '\t') && last) ||
          (col == 0 && c == '.') ||
          (col == 0 && c == 'F' && eol - i >= 5 &&
            memcmp(s + i, "From ", 5) == 0);

        /* A soft break ("=") needs the 76th column unless this is the
         * line's last character.
         */
        if (col + (enc ? 3 : 1) + (last ? 0 : 1) > MAILOAUTH_MESSAGE_FOLD) {
          mailoauth_message_buf_add(b, "=\r\n", 3);
          col = 0;
          continue;
        }
        break;
      }

      if (enc) {
        mailoauth_message_buf_char(b, '=');
        mailoauth_message_buf_char(b, mailoauth_message_hex[c >> 4]);
        mailoauth_message_buf_char(b, mailoauth_message_hex[c & 0x0f]);
        col += 3;

      } else {
        mailoauth_message_buf_char(b, (char) c);
        col++;
      }
    }

    mailoauth_message_buf_add(b, "\r\n", 2);
    i = eol + 2;
  }
}

static void mailoauth_message_text_part(struct mailoauth_message *msg,
    struct mailoauth_message_buf *b) {
  const char *body = msg->body != NULL ? msg->body : "";
  int sevenbit = mailoauth_message_body_is_7bit(body, msg->body_len);

  mailoauth_message_buf_str(b, "Content-Type: text/plain; charset=UTF-8\r\n");
  mailoauth_message_buf_str(b, sevenbit ?
    "Content-Transfer-Encoding: 7bit\r\n\r\n" :
    "Content-Transfer-Encoding: quoted-printable\r\n\r\n");

  if (sevenbit) {
    mailoauth_message_buf_add(b, body, msg->body_len);
  } else {
    mailoauth_message_put_qp(b, body, msg->body_len);
  }
}

/* Assembly
 */

static int mailoauth_message_random_hex(char *out, size_t nbytes) {
  unsigned char rnd[32];
  size_t i;

  if (nbytes > sizeof(rnd) ||
      RAND_bytes(rnd, (int) nbytes) != 1) {
    errno = EIO;
    return -1;
  }

  for (i = 0; i < nbytes; i++) {
    out[2 * i] = "0123456789abcdef"[rnd[i] >> 4];
    out[2 * i + 1] = "0123456789abcdef"[rnd[i] & 0x0f];
  }
  out[2 * nbytes] = '\0';
  return 0;
}

/* RFC 5322 date-time; the names are fixed English, never the locale's. */
static int mailoauth_message_format_date(time_t when, int utc, char *out,
    size_t outsz) {
  static const char *days[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri",
    "Sat" };
  static const char *months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
  struct tm tm;
  long off;
  char sign = '+';

  if ((utc ? gmtime_r(&when, &tm) : localtime_r(&when, &tm)) == NULL ||
      tm.tm_year < 0 || tm.tm_year > 9999 - 1900 ||
      tm.tm_wday < 0 || tm.tm_wday > 6 || tm.tm_mon < 0 || tm.tm_mon > 11) {
    errno = EINVAL;
    return -1;
  }

  off = utc ? 0 : tm.tm_gmtoff / 60;
  if (off < 0) {
    sign = '-';
    off = -off;
  }

  (void) snprintf(out, outsz, "%s, %d %s %04d %02d:%02d:%02d %c%02ld%02ld",
    days[tm.tm_wday], tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900,
    tm.tm_hour, tm.tm_min, tm.tm_sec, sign, off / 60, off % 60);
  return 0;
}

int mailoauth_message_set_bcc_header(struct mailoauth_message *msg,
    int on) {
  if (mailoauth_message_modify(msg) < 0) {
    return -1;
  }
  msg->bcc_header = on ? 1 : 0;
  return 0;
}

int mailoauth_message_set_omit_attachment(struct mailoauth_message *msg,
    int on) {
  if (mailoauth_message_modify(msg) < 0) {
    return -1;
  }
  msg->omit_att = on ? 1 : 0;
  return 0;
}

int mailoauth_message_get_attachment(const struct mailoauth_message *msg,
    int *fd, const char **name, const char **type, off_t *size) {
  if (msg == NULL || msg->att_fd < 0) {
    errno = ENOENT;
    return -1;
  }
  *fd = msg->att_fd;
  *name = msg->att_name;
  *type = msg->att_type;
  *size = msg->att_size;
  return 0;
}

int mailoauth_message_prepare(struct mailoauth_message *msg) {
  struct mailoauth_message_buf b;
  char date[64];
  size_t i;

  if (msg == NULL) {
    errno = EINVAL;
    return -1;
  }

  if (msg->prepared) {
    return 0;
  }

  if (!msg->have_from || msg->nenvelope == 0) {
    mailoauth_trace(trace_channel, 3, "cannot build message: %s",
      !msg->have_from ? "no From address" : "no recipients");
    errno = EINVAL;
    return -1;
  }

  if (!msg->have_date) {
    msg->date = time(NULL);
    msg->have_date = 1;
  }
  if (mailoauth_message_format_date(msg->date, msg->date_utc, date,
      sizeof(date)) < 0) {
    return -1;
  }

  if (msg->msgid == NULL) {
    const char *domain = strchr(msg->from.addr, '@') + 1;
    char rnd[33];

    if (mailoauth_message_random_hex(rnd, 16) < 0) {
      return -1;
    }

    msg->msgid = malloc(sizeof(rnd) + 1 + strlen(domain));
    if (msg->msgid == NULL) {
      errno = ENOMEM;
      return -1;
    }
    (void) sprintf(msg->msgid, "%s@%s", rnd, domain);
    msg->msgid_auto = 1;
  }

  if (MESSAGE_HAS_ATT(msg)) {
    /* "=_" cannot occur in base64 or quoted-printable text; a 7bit body
     * gets checked.
     */
    do {
      memcpy(msg->boundary, "=_mo_", 5);
      if (mailoauth_message_random_hex(msg->boundary + 5, 12) < 0) {
        return -1;
      }
    } while (msg->body != NULL &&
      memmem(msg->body, msg->body_len, msg->boundary,
        strlen(msg->boundary)) != NULL);

    if (msg->inbuf == NULL) {
      msg->inbuf = malloc(MAILOAUTH_MESSAGE_INBUF);
      msg->outbuf = malloc(MAILOAUTH_MESSAGE_OUTBUF);
      if (msg->inbuf == NULL || msg->outbuf == NULL) {
        errno = ENOMEM;
        return -1;
      }
    }
  }

  memset(&b, 0, sizeof(b));

  mailoauth_message_buf_str(&b, "Date: ");
  mailoauth_message_buf_str(&b, date);
  mailoauth_message_hdr_end(&b);

  mailoauth_message_hdr_mailboxes(&b, "From", &msg->from, 1);
  if (msg->have_reply_to) {
    mailoauth_message_hdr_mailboxes(&b, "Reply-To", &msg->reply_to, 1);
  }

  if (msg->nrcpts[MAILOAUTH_MESSAGE_TO] + msg->nrcpts[MAILOAUTH_MESSAGE_CC]
      == 0) {
    /* Only Bcc: an empty group says so without naming anyone. */
    mailoauth_message_buf_str(&b, "To: undisclosed-recipients:;");
    mailoauth_message_hdr_end(&b);
  }
  if (msg->nrcpts[MAILOAUTH_MESSAGE_TO] > 0) {
    mailoauth_message_hdr_mailboxes(&b, "To",
      msg->rcpts[MAILOAUTH_MESSAGE_TO], msg->nrcpts[MAILOAUTH_MESSAGE_TO]);
  }
  if (msg->nrcpts[MAILOAUTH_MESSAGE_CC] > 0) {
    mailoauth_message_hdr_mailboxes(&b, "Cc",
      msg->rcpts[MAILOAUTH_MESSAGE_CC], msg->nrcpts[MAILOAUTH_MESSAGE_CC]);
  }
  if (msg->bcc_header && msg->nrcpts[MAILOAUTH_MESSAGE_BCC] > 0) {
    mailoauth_message_hdr_mailboxes(&b, "Bcc",
      msg->rcpts[MAILOAUTH_MESSAGE_BCC], msg->nrcpts[MAILOAUTH_MESSAGE_BCC]);
  }

  mailoauth_message_hdr_begin(&b, "Subject");
  if (msg->subject != NULL) {
    mailoauth_message_hdr_text(&b, msg->subject, msg->subject_len);
  }
  mailoauth_message_hdr_end(&b);

  mailoauth_message_buf_str(&b, "Message-ID: <");
  mailoauth_message_buf_str(&b, msg->msgid);
  mailoauth_message_buf_char(&b, '>');
  mailoauth_message_hdr_end(&b);

  mailoauth_message_buf_str(&b, "MIME-Version: 1.0\r\n");

  /* RFC 3834 keeps auto-responders quiet; Exchange honours its own header
   * for out-of-office replies and read receipts.
   */
  mailoauth_message_buf_str(&b, "Auto-Submitted: auto-generated\r\n");
  mailoauth_message_buf_str(&b, "X-Auto-Response-Suppress: All\r\n");

  if (msg->mailer != NULL) {
    size_t start = 0, len = strlen(msg->mailer);

    mailoauth_message_hdr_begin(&b, "X-Mailer");
    for (i = 0; i <= len; i++) {
      if (i == len || msg->mailer[i] == ' ') {
        mailoauth_message_hdr_token(&b, msg->mailer + start, i - start);
        start = i + 1;
      }
    }
    mailoauth_message_hdr_end(&b);
  }

  if (!MESSAGE_HAS_ATT(msg)) {
    mailoauth_message_text_part(msg, &b);

  } else {
    mailoauth_message_buf_str(&b, "Content-Type: multipart/mixed;\r\n"
      " boundary=\"");
    mailoauth_message_buf_str(&b, msg->boundary);
    mailoauth_message_buf_str(&b, "\"\r\n\r\n");

    mailoauth_message_buf_str(&b, "--");
    mailoauth_message_buf_str(&b, msg->boundary);
    mailoauth_message_buf_str(&b, "\r\n");
    mailoauth_message_text_part(msg, &b);
    if (msg->body_len == 0) {
      /* The delimiter's CRLF must not be taken for the part's blank line. */
      mailoauth_message_buf_str(&b, "\r\n");
    }

    mailoauth_message_buf_str(&b, "--");
    mailoauth_message_buf_str(&b, msg->boundary);
    mailoauth_message_buf_str(&b, "\r\n");
    mailoauth_message_attachment_headers(msg, &b);

    (void) snprintf(msg->tail_buf, sizeof(msg->tail_buf), "\r\n--%s--\r\n",
      msg->boundary);
  }

  if (b.out.failed) {
    mailoauth_message_buf_free(&b);
    errno = ENOMEM;
    return -1;
  }

  mailoauth_message_buf_free(&msg->head);
  msg->head = b;
  msg->prepared = 1;

  mailoauth_trace(trace_channel, 9, "message <%s>: %lu envelope recipients, "
    "%lu header and text octets, attachment %lld octets", msg->msgid,
    (unsigned long) msg->nenvelope, (unsigned long) msg->head.out.len,
    (long long) (MESSAGE_HAS_ATT(msg) ? msg->att_size : 0));
  return 0;
}

const char *mailoauth_message_get_message_id(
    const struct mailoauth_message *msg) {
  return msg != NULL && msg->prepared ? msg->msgid : NULL;
}

const char *mailoauth_message_get_from(const struct mailoauth_message *msg) {
  return msg != NULL && msg->have_from ? msg->from.addr : NULL;
}

const char *const *mailoauth_message_get_recipients(
    const struct mailoauth_message *msg, size_t *count) {
  if (msg == NULL) {
    if (count != NULL) {
      *count = 0;
    }
    return NULL;
  }

  if (count != NULL) {
    *count = msg->nenvelope;
  }
  return (const char *const *) msg->envelope;
}

/* Streaming
 */

/* Reads and encodes the next chunk of the file: whole 57-octet groups
 * except at the end, so every base64 line but the last has 76 characters.
 */
static int mailoauth_message_refill(struct mailoauth_message *msg) {
  size_t want = MAILOAUTH_MESSAGE_INBUF, got = 0, i;
  off_t left = msg->att_size - msg->att_done;

  if (left < (off_t) want) {
    want = (size_t) left;
  }

  while (got < want) {
    ssize_t n = read(msg->att_fd, msg->inbuf + got, want - got);

    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return -1;
    }

    if (n == 0) {
      /* Truncated since it was opened: end the attachment here. */
      mailoauth_trace(trace_channel, 2, "attachment shrank from %lld to "
        "%lld octets while being sent", (long long) msg->att_size,
        (long long) (msg->att_done + (off_t) got));
      msg->att_size = msg->att_done + (off_t) got;
      break;
    }

    got += (size_t) n;
  }

  msg->out_len = 0;
  msg->out_off = 0;
  for (i = 0; i < got; i += MAILOAUTH_MESSAGE_B64_IN) {
    size_t n = got - i < MAILOAUTH_MESSAGE_B64_IN ? got - i :
      MAILOAUTH_MESSAGE_B64_IN;

    msg->out_len += (size_t) EVP_EncodeBlock(
      (unsigned char *) msg->outbuf + msg->out_len, msg->inbuf + i, (int) n);
    msg->outbuf[msg->out_len++] = '\r';
    msg->outbuf[msg->out_len++] = '\n';
  }

  msg->att_done += (off_t) got;
  return 0;
}

size_t mailoauth_message_read(char *buf, size_t size, size_t nitems,
    void *userdata) {
  struct mailoauth_message *msg = userdata;
  size_t room, done = 0;

  if (msg == NULL || buf == NULL) {
    return MAILOAUTH_MESSAGE_READ_ABORT;
  }

  if (msg->state == MAILOAUTH_MESSAGE_ST_FAILED) {
    return MAILOAUTH_MESSAGE_READ_ABORT;
  }

  room = (size != 0 && nitems > SIZE_MAX / size) ? SIZE_MAX : size * nitems;

  if (msg->state == MAILOAUTH_MESSAGE_ST_START) {
    if (mailoauth_message_prepare(msg) < 0) {
      msg->err = errno;
      msg->state = MAILOAUTH_MESSAGE_ST_FAILED;
      return MAILOAUTH_MESSAGE_READ_ABORT;
    }
    msg->state = MAILOAUTH_MESSAGE_ST_HEAD;
  }

  while (done < room) {
    const char *src;
    size_t avail, *off;

    switch (msg->state) {
      case MAILOAUTH_MESSAGE_ST_HEAD:
        src = msg->head.out.data;
        avail = msg->head.out.len;
        off = &msg->head_off;
        if (*off == avail) {
          if (MESSAGE_HAS_ATT(msg)) {
            msg->state = MAILOAUTH_MESSAGE_ST_ATTACH;
            msg->out_len = msg->out_off = 0;
          } else {
            msg->state = MAILOAUTH_MESSAGE_ST_DONE;
          }
          continue;
        }
        break;

      case MAILOAUTH_MESSAGE_ST_ATTACH:
        if (msg->out_off == msg->out_len &&
            msg->att_done < msg->att_size &&
            mailoauth_message_refill(msg) < 0) {
          msg->err = errno;
          mailoauth_trace(trace_channel, 3, "cannot read attachment: %s",
            strerror(msg->err));
          msg->state = MAILOAUTH_MESSAGE_ST_FAILED;
          return MAILOAUTH_MESSAGE_READ_ABORT;
        }

        if (msg->out_off == msg->out_len) {
          /* Base64 lines end with CRLF, which then starts the closing
           * delimiter; an empty attachment needs its own.
           */
          msg->tail = msg->tail_buf;
          msg->tail_len = strlen(msg->tail_buf);
          msg->tail_off = msg->att_done > 0 ? 2 : 0;
          msg->state = MAILOAUTH_MESSAGE_ST_TAIL;
          continue;
        }
        src = msg->outbuf;
        avail = msg->out_len;
        off = &msg->out_off;
        break;

      case MAILOAUTH_MESSAGE_ST_TAIL:
        src = msg->tail;
        avail = msg->tail_len;
        off = &msg->tail_off;
        if (*off == avail) {
          msg->state = MAILOAUTH_MESSAGE_ST_DONE;
          continue;
        }
        break;

      default:
        return done;
    }

    avail -= *off;
    if (avail > room - done) {
      avail = room - done;
    }
    memcpy(buf + done, src + *off, avail);
    *off += avail;
    done += avail;
  }

  return done;
}

int mailoauth_message_rewind(struct mailoauth_message *msg) {
  if (msg == NULL) {
    errno = EINVAL;
    return -1;
  }

  if (msg->att_fd >= 0 &&
      lseek(msg->att_fd, 0, SEEK_SET) < 0) {
    return -1;
  }

  msg->state = MAILOAUTH_MESSAGE_ST_START;
  msg->head_off = 0;
  msg->att_done = 0;
  msg->out_len = msg->out_off = 0;
  msg->tail_off = 0;
  msg->err = 0;
  return 0;
}

int mailoauth_message_stream_error(const struct mailoauth_message *msg) {
  return msg != NULL ? msg->err : 0;
}

int mailoauth_message_render(struct mailoauth_message *msg, char **out,
    size_t *len) {
  struct mailoauth_message_buf b;
  int xerrno;

  if (msg == NULL || out == NULL) {
    errno = EINVAL;
    return -1;
  }

  if (mailoauth_message_rewind(msg) < 0) {
    return -1;
  }

  memset(&b, 0, sizeof(b));
  for (;;) {
    size_t n;

    if (mailoauth_message_buf_grow(&b, 65536) < 0) {
      (void) mailoauth_message_rewind(msg);
      mailoauth_message_buf_free(&b);
      errno = ENOMEM;
      return -1;
    }

    n = mailoauth_message_read(b.out.data + b.out.len, 1, 65536, msg);
    if (n == MAILOAUTH_MESSAGE_READ_ABORT) {
      xerrno = msg->err;
      (void) mailoauth_message_rewind(msg);
      mailoauth_message_buf_free(&b);
      errno = xerrno;
      return -1;
    }
    if (n == 0) {
      break;
    }
    b.out.len += n;
  }

  if (mailoauth_message_rewind(msg) < 0) {
    xerrno = errno;
    mailoauth_message_buf_free(&b);
    errno = xerrno;
    return -1;
  }

  *out = mailoauth_message_buf_take(&b, len);
  return *out != NULL ? 0 : -1;
}
