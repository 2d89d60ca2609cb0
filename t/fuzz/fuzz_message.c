/*
 * libFuzzer target: building notification mail.
 *
 * Input: a flags byte, a read-size byte, a 32-bit time, then fields, each a
 * 16-bit big-endian length and its bytes: subject, body, From name, To name,
 * Cc name, attachment name, attachment content, an address, a media type
 * (missing fields are empty).  Whatever the fields hold, the message must
 * have CRLF line ends only, no NUL, no line over 998 octets, header lines
 * within 78 columns when every address is short, only the header fields the
 * builder writes (each at most once, never Bcc), the expected MIME parts,
 * base64 of exactly the file's length, and the same bytes whether rendered
 * whole or read in chunks.
 */

#ifndef _GNU_SOURCE
# define _GNU_SOURCE    /* memmem() */
#endif

#include "mailoauth/message.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FUZZ_BCC        "bcc-secret@hidden.example"

enum {
  F_SUBJECT = 0, F_BODY, F_FROM_NAME, F_TO_NAME, F_CC_NAME, F_ATT_NAME,
  F_ATT_DATA, F_ADDR, F_TYPE, F_COUNT
};

static char fuzz_path[64];
static int fuzz_fd = -1;

static const char *fuzz_top_headers[] = { "Date", "From", "Reply-To", "To",
  "Cc", "Subject", "Message-ID", "MIME-Version", "Auto-Submitted",
  "X-Auto-Response-Suppress", "X-Mailer", "Content-Type",
  "Content-Transfer-Encoding", NULL };

static void fuzz_cleanup(void) {
  (void) unlink(fuzz_path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void) argc;
  (void) argv;

  snprintf(fuzz_path, sizeof(fuzz_path), "/tmp/fuzz_message.XXXXXX");
  fuzz_fd = mkstemp(fuzz_path);
  if (fuzz_fd < 0) {
    abort();
  }
  atexit(fuzz_cleanup);
  return 0;
}

/* A NUL-terminated copy (fields may hold NULs: the copy stops there). */
static char *fuzz_cstr(const uint8_t *p, size_t len) {
  char *s = malloc(len + 1);

  if (s == NULL) {
    abort();
  }
  memcpy(s, p, len);
  s[len] = '\0';
  return s;
}

static size_t fuzz_line_len(const char *p, const char *end) {
  const char *eol = memmem(p, (size_t) (end - p), "\r\n", 2);

  if (eol == NULL) {
    abort();
  }
  return (size_t) (eol - p);
}

/* Encoded words (as written here: after a space, then a space or the end
 * of the line) stay within RFC 2047's 75 characters.  Address and
 * Message-ID text that merely looks like one is not preceded by a space
 * and followed by one.
 */
static void fuzz_check_words(const char *p, size_t len) {
  const char *w = p, *lend = p + len;

  while ((w = memmem(w, (size_t) (lend - w), " =?UTF-8?", 9)) != NULL) {
    const char *e;

    w++;
    if (lend - w < 12) {
      break;
    }
    e = memmem(w + 10, (size_t) (lend - w - 10), "?=", 2);
    if (e != NULL && (e + 2 == lend || e[2] == ' ') && e + 2 - w > 75) {
      abort();
    }
  }
}

/* Checks the header block at p; returns the start of the body.  names:
 * the allowed field names, each at most once.
 */
static const char *fuzz_check_headers(const char *p, const char *end,
    const char **names, size_t fold_limit, int *seen, const char **ctype) {
  int first = 1;

  for (;;) {
    size_t len = fuzz_line_len(p, end), k;

    if (len == 0) {
      return p + 2;
    }

    if (len > fold_limit) {
      abort();
    }
    fuzz_check_words(p, len);

    if (p[0] == ' ' || p[0] == '\t') {
      int blank = 1;

      if (first) {
        abort();
      }
      for (k = 0; k < len; k++) {
        if (p[k] != ' ' && p[k] != '\t') {
          blank = 0;
        }
      }
      if (blank) {
        abort();
      }

    } else {
      const char *colon = memchr(p, ':', len);
      size_t nlen;
      int i, known = -1;

      if (colon == NULL) {
        abort();
      }
      nlen = (size_t) (colon - p);
      for (i = 0; names[i] != NULL; i++) {
        if (strlen(names[i]) == nlen && memcmp(names[i], p, nlen) == 0) {
          known = i;
        }
      }
      if (known < 0 || seen[known]++) {
        abort();
      }
      if (strcmp(names[known], "Content-Type") == 0) {
        *ctype = colon + 1;
      }
    }

    first = 0;
    p += len + 2;
  }
}


static void fuzz_check_base64(const char *p, size_t len, size_t want) {
  size_t i = 0, chars = 0;

  while (i < len) {
    size_t l = fuzz_line_len(p + i, p + len + 2), k;

    if (l > 76 || l % 4 != 0) {
      abort();
    }
    for (k = 0; k < l; k++) {
      char c = p[i + k];

      if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
            (c >= '0' && c <= '9') || c == '+' || c == '/' || c == '=')) {
        abort();
      }
    }
    chars += l;
    i += l + 2;
  }

  if (chars != 4 * ((want + 2) / 3)) {
    abort();
  }
}

static void fuzz_check_text(const char *cte, const char *p, size_t len) {
  size_t i;

  if (strncmp(cte, "7bit\r\n", 6) == 0) {
    for (i = 0; i < len; i++) {
      if ((unsigned char) p[i] >= 0x80) {
        abort();
      }
    }
    return;
  }

  if (strncmp(cte, "quoted-printable\r\n", 18) != 0) {
    abort();
  }

  i = 0;
  while (i < len) {
    size_t l = fuzz_line_len(p + i, p + len + 2), k;

    if (l > 76 || (l > 0 && (p[i + l - 1] == ' ' || p[i + l - 1] == '\t'))) {
      abort();
    }
    for (k = 0; k < l; k++) {
      unsigned char c = (unsigned char) p[i + k];

      if (c >= 0x7f || (c < 0x20 && c != '\t')) {
        abort();
      }
      if (c == '=' && k + 1 < l &&
          (strchr("0123456789ABCDEF", p[i + k + 1]) == NULL ||
           k + 2 >= l || strchr("0123456789ABCDEF", p[i + k + 2]) == NULL)) {
        abort();
      }
    }
    i += l + 2;
  }
}

static void fuzz_check(const char *m, size_t len, size_t fold_limit,
    int attached, size_t att_len, int bcc_in_input) {
  static const char *text_headers[] = { "Content-Type",
    "Content-Transfer-Encoding", NULL };
  static const char *att_headers[] = { "Content-Type", "Content-Disposition",
    "Content-Transfer-Encoding", NULL };
  const char *end = m + len, *body, *ctype = NULL;
  int seen[16], i;
  size_t line = 0, k;

  /* The wire: CRLF only, no NUL, no line over 998. */
  if (len < 2 || memcmp(end - 2, "\r\n", 2) != 0) {
    abort();
  }
  for (k = 0; k < len; k++) {
    if (m[k] == '\0' ||
        (m[k] == '\r' && (k + 1 == len || m[k + 1] != '\n')) ||
        (m[k] == '\n' && (k == 0 || m[k - 1] != '\r'))) {
      abort();
    }
    if (m[k] == '\n') {
      line = 0;
    } else if (m[k] != '\r' && ++line > 998) {
      abort();
    }
  }

  if (!bcc_in_input && memmem(m, len, FUZZ_BCC, strlen(FUZZ_BCC)) != NULL) {
    abort();
  }

  memset(seen, 0, sizeof(seen));
  body = fuzz_check_headers(m, end, fuzz_top_headers, fold_limit, seen,
    &ctype);
  for (i = 0; fuzz_top_headers[i] != NULL; i++) {
    int required = strcmp(fuzz_top_headers[i], "Reply-To") != 0 &&
      strcmp(fuzz_top_headers[i], "Cc") != 0 &&
      strcmp(fuzz_top_headers[i], "X-Mailer") != 0 &&
      strcmp(fuzz_top_headers[i], "Content-Transfer-Encoding") != 0;

    if (required && seen[i] != 1) {
      abort();
    }
  }

  if (!attached) {
    const char *cte;

    if (ctype == NULL ||
        strncmp(ctype, " text/plain; charset=UTF-8\r\n", 28) != 0) {
      abort();
    }
    cte = strstr(m, "\r\nContent-Transfer-Encoding: ");
    if (cte == NULL || cte > body) {
      abort();
    }
    fuzz_check_text(cte + 29, body, (size_t) (end - body));

  } else {
    const char *b, *p, *q, *cte;
    char delim[64];
    size_t blen, dlen, delims = 0;

    b = ctype != NULL ? strstr(ctype, "boundary=\"") : NULL;
    if (b == NULL || b > body) {
      abort();
    }
    b += 10;
    blen = (size_t) (strchr(b, '"') - b);
    if (blen == 0 || blen > 50) {
      abort();
    }
    dlen = (size_t) snprintf(delim, sizeof(delim), "--%.*s", (int) blen, b);

    /* Exactly two delimiter lines and the closing one, the latter last. */
    for (p = body; p < end; p += fuzz_line_len(p, end) + 2) {
      if ((size_t) (end - p) >= dlen && memcmp(p, delim, dlen) == 0) {
        delims++;
      }
    }
    if (delims != 3 ||
        memcmp(body, delim, dlen) != 0 ||
        memcmp(end - dlen - 4, delim, dlen) != 0 ||
        memcmp(end - 4, "--\r\n", 4) != 0) {
      abort();
    }

    /* The text part. */
    p = body + dlen + 2;
    memset(seen, 0, sizeof(seen));
    ctype = NULL;
    q = fuzz_check_headers(p, end, text_headers, fold_limit, seen, &ctype);
    if (seen[0] != 1 || seen[1] != 1) {
      abort();
    }
    cte = strstr(p, "Content-Transfer-Encoding: ");
    p = memmem(q, (size_t) (end - q), delim, dlen);
    if (p == NULL || p - 2 < q) {
      abort();
    }
    fuzz_check_text(cte + 27, q, (size_t) (p - 2 - q));

    /* The file. */
    p += dlen + 2;
    memset(seen, 0, sizeof(seen));
    q = fuzz_check_headers(p, end, att_headers, fold_limit, seen, &ctype);
    if (seen[0] != 1 || seen[1] != 1 || seen[2] != 1) {
      abort();
    }
    p = end - dlen - 4;
    fuzz_check_base64(q, (size_t) (p - 2 - q), att_len);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const uint8_t *field[F_COUNT];
  size_t flen[F_COUNT], off, i, len, fold_limit = 78, chunk;
  struct mailoauth_message *msg;
  uint8_t flags, rsize;
  const char *cc = "cc@example.org";
  char *addr, *type, *out, *streamed;
  int attached = 0;
  uint32_t when;

  if (size < 6) {
    return 0;
  }
  flags = data[0];
  rsize = data[1];
  when = (uint32_t) data[2] << 24 | (uint32_t) data[3] << 16 |
    (uint32_t) data[4] << 8 | data[5];

  off = 6;
  for (i = 0; i < F_COUNT; i++) {
    size_t n = 0;

    if (off + 2 <= size) {
      n = (size_t) data[off] << 8 | data[off + 1];
      off += 2;
      if (n > size - off) {
        n = size - off;
      }
    }
    field[i] = data + (off <= size ? off : size);
    flen[i] = n;
    off += n;
  }

  addr = fuzz_cstr(field[F_ADDR], flen[F_ADDR]);
  type = fuzz_cstr(field[F_TYPE], flen[F_TYPE]);

  /* Whatever the validator accepts is usable in a header as it is. */
  if (mailoauth_message_check_address(addr) == 0) {
    if (strpbrk(addr, " \t\r\n<>,\"()[]\\;:") != NULL ||
        strchr(addr, '@') != strrchr(addr, '@') ||
        strlen(addr) > 254) {
      abort();
    }
    cc = addr;
    if (strlen(addr) > 40) {
      fold_limit = 998;
    }
  }
  if (strlen(type) > 40) {
    /* A media type is one token: it cannot be folded. */
    fold_limit = 998;
  }

  msg = mailoauth_message_create();
  if (msg == NULL) {
    abort();
  }

  {
    char *from_name = fuzz_cstr(field[F_FROM_NAME], flen[F_FROM_NAME]);
    char *to_name = fuzz_cstr(field[F_TO_NAME], flen[F_TO_NAME]);
    char *cc_name = fuzz_cstr(field[F_CC_NAME], flen[F_CC_NAME]);

    if (mailoauth_message_set_from(msg, "ftp@example.com", from_name) < 0 ||
        mailoauth_message_add_recipient(msg, MAILOAUTH_MESSAGE_TO,
          "to@example.com", to_name) < 0 ||
        mailoauth_message_add_recipient(msg, MAILOAUTH_MESSAGE_CC, cc,
          cc_name) < 0 ||
        mailoauth_message_add_recipient(msg, MAILOAUTH_MESSAGE_BCC, FUZZ_BCC,
          to_name) < 0) {
      abort();
    }
    if ((flags & 0x10) &&
        mailoauth_message_set_reply_to(msg, "reply@example.com",
          from_name) < 0) {
      abort();
    }
    free(from_name);
    free(to_name);
    free(cc_name);
  }

  if (mailoauth_message_set_subject(msg, (const char *) field[F_SUBJECT],
      flen[F_SUBJECT]) < 0 ||
      mailoauth_message_set_date(msg, (time_t) when, flags & 0x01) < 0) {
    abort();
  }

  if (flags & 0x04) {
    /* A digest: items are the body split at 0x1f. */
    char *body = fuzz_cstr(field[F_BODY], flen[F_BODY]), *p, *items[64];
    size_t n = 0;

    for (p = body; n < 64; ) {
      char *sep = strchr(p, 0x1f);

      items[n++] = p;
      if (sep == NULL) {
        break;
      }
      *sep = '\0';
      p = sep + 1;
    }
    if (mailoauth_message_set_digest_body(msg, "Uploads:",
        (const char *const *) items, n, "--\n") < 0) {
      abort();
    }
    free(body);

  } else if (mailoauth_message_set_body(msg, (const char *) field[F_BODY],
      flen[F_BODY]) < 0) {
    abort();
  }

  if ((flags & 0x08) &&
      mailoauth_message_set_mailer(msg, "mod_mailoauth/1.0 (fuzz)") < 0) {
    abort();
  }

  if ((flags & 0x40) && mailoauth_message_check_address(addr) == 0 &&
      mailoauth_message_set_message_id(msg, addr) < 0) {
    abort();
  }

  if (flags & 0x02) {
    if (ftruncate(fuzz_fd, 0) < 0 ||
        pwrite(fuzz_fd, field[F_ATT_DATA], flen[F_ATT_DATA], 0) !=
          (ssize_t) flen[F_ATT_DATA]) {
      abort();
    }

    if (mailoauth_message_attach_file(msg, fuzz_path,
        (const char *) field[F_ATT_NAME], flen[F_ATT_NAME],
        type[0] ? type : NULL) < 0) {
      if (errno != EINVAL || type[0] == '\0' ||
          mailoauth_message_attach_file(msg, fuzz_path,
            (const char *) field[F_ATT_NAME], flen[F_ATT_NAME], NULL) < 0) {
        abort();
      }
    }
    attached = 1;
  }

  if (mailoauth_message_render(msg, &out, &len) < 0) {
    abort();
  }
  /* The fuzzer learns the Bcc address from the comparison above. */
  fuzz_check(out, len, fold_limit, attached, flen[F_ATT_DATA],
    memmem(data, size, FUZZ_BCC, strlen(FUZZ_BCC)) != NULL);

  /* The read callback, in chunks, with a rewind half way when asked. */
  streamed = malloc(len + 65536);
  if (streamed == NULL) {
    abort();
  }
  chunk = rsize == 0 ? 65536 : (size_t) rsize * 7;
  for (i = 0; i < 1 + ((flags & 0x20) != 0); i++) {
    size_t got = 0, n;

    while ((n = mailoauth_message_read(streamed + got, 1, chunk, msg)) > 0) {
      if (n == MAILOAUTH_MESSAGE_READ_ABORT || n > chunk) {
        abort();
      }
      got += n;
      if (got > len) {
        abort();
      }
      if (i == 0 && (flags & 0x20) && got > len / 2) {
        break;
      }
    }
    if (i == 0 && (flags & 0x20)) {
      if (mailoauth_message_rewind(msg) < 0) {
        abort();
      }
      continue;
    }
    if (got != len || memcmp(streamed, out, len) != 0) {
      abort();
    }
  }

  free(streamed);
  free(out);
  free(addr);
  free(type);
  mailoauth_message_free(msg);
  return 0;
}
