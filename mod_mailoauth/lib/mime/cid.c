/*
 * mod_mailoauth - cid: references of an HTML body
 *
 * Not an HTML parser: "cid:" anywhere (src=, background=, CSS url()) is a
 * reference, as mail clients resolve it wherever it appears.  A false
 * match can only make a part whose Content-ID happens to be quoted in the
 * text count as shown in the body.
 */

#include "mailoauth/mime.h"
#include "mime/mimeint.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

void mailoauth_mime_cids_init(struct mailoauth_mime_cids *c) {
  memset(c, 0, sizeof(*c));
  c->prev = -1;
}

/* Ends an id: %-decoded (RFC 2392 writes the Content-ID as a URL), kept
 * when it fits and is new.
 */
static void cids_keep(struct mailoauth_mime_cids *c) {
  char id[MAILOAUTH_MIME_CID_LEN + 1];
  size_t i, n = 0;
  unsigned int k;

  c->collecting = 0;
  if (c->overflow || c->rawlen == 0 || c->n >= MAILOAUTH_MIME_CIDS_MAX) {
    c->overflow = 0;
    c->rawlen = 0;
    return;
  }

  for (i = 0; i < c->rawlen; i++) {
    int ch = (unsigned char) c->raw[i];

    if (ch == '%' && i + 2 < c->rawlen &&
        mailoauth_mime_hexval((unsigned char) c->raw[i + 1]) >= 0 &&
        mailoauth_mime_hexval((unsigned char) c->raw[i + 2]) >= 0) {
      ch = mailoauth_mime_hexval((unsigned char) c->raw[i + 1]) * 16 +
        mailoauth_mime_hexval((unsigned char) c->raw[i + 2]);
      i += 2;
    }
    if (ch == 0 || n >= MAILOAUTH_MIME_CID_LEN) {
      c->rawlen = 0;
      return;
    }
    id[n++] = (char) ch;
  }
  id[n] = '\0';
  c->rawlen = 0;

  for (k = 0; k < c->n; k++) {
    if (strcmp(c->ids[k], id) == 0) {
      return;
    }
  }
  memcpy(c->ids[c->n++], id, n + 1);
}

static int cids_delim(int ch) {
  return ch <= ' ' || ch == '"' || ch == '\'' || ch == '<' || ch == '>' ||
    ch == '(' || ch == ')' || ch == '\\' || ch == 0x7f;
}

void mailoauth_mime_cids_feed(struct mailoauth_mime_cids *c,
    const unsigned char *p, size_t len) {
  static const char word[] = "cid:";
  size_t i;

  for (i = 0; i < len; i++) {
    int ch = p[i];

    if (c->collecting) {
      if (cids_delim(ch)) {
        cids_keep(c);
      } else if (c->rawlen < sizeof(c->raw) - 1) {
        c->raw[c->rawlen++] = (char) ch;
      } else {
        c->overflow = 1;
      }
      c->prev = ch;
      continue;
    }

    if (tolower(ch) == word[c->matched] &&
        (c->matched > 0 || c->prev < 0 ||
         !(isalnum(c->prev) || c->prev == '-' || c->prev == '.' ||
           c->prev == '_'))) {
      if (++c->matched == sizeof(word) - 1) {
        c->matched = 0;
        c->collecting = 1;
        c->rawlen = 0;
        c->overflow = 0;
      }
    } else {
      c->matched = 0;
    }
    c->prev = ch;
  }
}

void mailoauth_mime_cids_end(struct mailoauth_mime_cids *c) {
  if (c->collecting) {
    cids_keep(c);
  }
  c->matched = 0;
  c->prev = -1;
}

int mailoauth_mime_cids_has(const struct mailoauth_mime_cids *c,
    const char *content_id) {
  unsigned int k;

  if (content_id == NULL || *content_id == '\0') {
    return 0;
  }
  for (k = 0; k < c->n; k++) {
    if (strcmp(c->ids[k], content_id) == 0) {
      return 1;
    }
  }
  return 0;
}
