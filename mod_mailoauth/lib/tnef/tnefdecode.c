/*
 * mod_mailoauth - winmail.dat: the TNEF decoder
 *
 * This program is free software; you can redistribute it and/or modify
 * it under the terms of the GNU General Public License as published by
 * the Free Software Foundation; either version 2 of the License, or
 * (at your option) any later version.
 *
 * The decoder walks the TNEF stream itself (it is a flat list of
 * checksummed attributes) and hands libytnef, one attachment at a time,
 * only the title and the MAPI properties (the long name, the attachment
 * method, content kept in the properties): libytnef's hard-coded limits
 * reject a whole stream over parts nobody here needs (a subject of 100
 * bytes or more, an icon over 10 KB, a body over 100 KB, any empty
 * attribute), and one attachment whose properties it cannot take must not
 * cost the others.  The content of a file is its attAttachData attribute,
 * verbatim, which is all libytnef would give for it.
 *
 * It runs in the sandboxed child (tnefhelper.c).
 */

#ifndef _GNU_SOURCE
# define _GNU_SOURCE
#endif

#include "mailoauth/tnef.h"
#include "tnefint.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* libytnef's headers #define BYTE, WORD and DWORD and need stdio.h and
 * stddef.h first: they come last.
 */
#include <ytnef.h>
#include <mapidefs.h>

#define TNEF_SIGNATURE          0x223e9f78U

#define TNEF_LVL_MESSAGE        1
#define TNEF_LVL_ATTACHMENT     2

/* Level, id, length before an attribute's data, checksum after it. */
#define TNEF_ATTR_HDR           9
#define TNEF_ATTR_SUM           2

/* libytnef refuses a title longer than this (and an empty one). */
#define TNEF_YTNEF_MAX_TITLE    100

/* Attachments that yield no file (embedded messages, references) allowed
 * beyond max_files before the stream counts as over the limit.
 */
#define TNEF_MAX_SKIPPED        64

/* PR_ATTACH_METHOD values. */
#define TNEF_ATTACH_EMBEDDED_MSG        5

/* A PT_OBJECT value starts with the interface identifier of the object. */
#define TNEF_IID_LEN            16

/* IID_IMessage, {00020307-0000-0000-C000-000000000046}, as stored. */
static const unsigned char tnef_iid_imessage[TNEF_IID_LEN] = {
  0x07, 0x03, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
  0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x46
};

/* ------------------------------------------------------------------------
 * The decoder.  It runs in the child, where tracing is impossible (the
 * trace sink's descriptors are gone, their numbers possibly reused): it
 * must never call mailoauth_trace() or mailoauth_log().
 */

/* A whole attribute of the input: header, data and checksum. */
struct tnef_span {
  size_t off;
  size_t len;
};

struct tnef_att {
  struct tnef_span title;       /* attAttachTitle, len 0: none */
  struct tnef_span mapi;        /* attAttachment (MAPI properties) */
  size_t data_off;              /* attAttachData's data */
  size_t data_len;
  int has_data;
};

struct tnef_walk {
  struct tnef_att *atts;
  size_t natts, cap;
  unsigned int codepage;        /* attOemCodepage, 0 when absent */
  int damaged;                  /* a checksum was wrong, or the stream
                                 * broke off: what came before is read */
};

struct tnef_found {
  char *name;                   /* malloc()ed, NUL-terminated, or NULL */
  size_t name_len;
  unsigned int codepage;
  const unsigned char *data;
  uint64_t size;
  unsigned char *owned;         /* data, when it is a copy */
};

static int tnef_all_zero(const unsigned char *p, size_t n) {
  size_t i;

  for (i = 0; i < n; i++) {
    if (p[i] != 0) {
      return 0;
    }
  }
  return 1;
}

static int tnef_walk_add(struct tnef_walk *w, size_t max_atts) {
  if (w->natts >= max_atts) {
    errno = EFBIG;
    return -1;
  }

  if (w->natts == w->cap) {
    size_t cap = w->cap == 0 ? 8 : w->cap * 2;
    struct tnef_att *atts;

    if (cap > max_atts) {
      cap = max_atts;
    }
    atts = realloc(w->atts, cap * sizeof(*atts));
    if (atts == NULL) {
      errno = ENOMEM;
      return -1;
    }
    w->atts = atts;
    w->cap = cap;
  }

  memset(&w->atts[w->natts], 0, sizeof(w->atts[0]));
  w->natts++;
  return 0;
}

/* Splits the stream into attachments (attAttachRenddata starts one, as in
 * libytnef), checking the framing and every checksum.  A stream that
 * libytnef would call a bad message is read as far as it goes, as tnef(1)
 * and MimeKit do: a wrong checksum is noted (w->damaged) and the attribute
 * taken, a broken frame (cut short, impossible length or level) ends the
 * walk there, noted too; an attribute cut by it is not kept.  Only a
 * stream without the TNEF signature is refused.
 */
static int tnef_walk(const unsigned char *buf, size_t len, size_t max_atts,
    struct tnef_walk *w) {
  size_t pos;

  if (len < 6 || mailoauth_tnef_get32(buf) != TNEF_SIGNATURE) {
    errno = EBADMSG;
    return -1;
  }

  /* The signature, then a "legacy key" nobody uses. */
  pos = 6;

  while (pos < len) {
    const unsigned char *a = buf + pos, *data;
    size_t left = len - pos, alen, i;
    uint32_t id, sum = 0;
    int level;

    /* Some mailers pad the attachment with zeros. */
    if (a[0] == 0 && tnef_all_zero(a, left)) {
      break;
    }

    if (left < TNEF_ATTR_HDR + TNEF_ATTR_SUM) {
      w->damaged = 1;
      break;
    }

    level = a[0];
    id = mailoauth_tnef_get32(a + 1);
    alen = mailoauth_tnef_get32(a + 5);
    if ((level != TNEF_LVL_MESSAGE && level != TNEF_LVL_ATTACHMENT) ||
        alen > left - TNEF_ATTR_HDR - TNEF_ATTR_SUM) {
      w->damaged = 1;
      break;
    }

    data = a + TNEF_ATTR_HDR;
    for (i = 0; i < alen; i++) {
      sum += data[i];
    }
    if ((sum & 0xffff) != (uint32_t) (data[alen] | (data[alen + 1] << 8))) {
      w->damaged = 1;
    }

    if (level == TNEF_LVL_MESSAGE) {
      if (id == attOemCodepage && alen >= 4) {
        w->codepage = mailoauth_tnef_get32(data);
      }

    } else if (id == attAttachRenddata) {
      if (tnef_walk_add(w, max_atts) < 0) {
        return -1;
      }

    } else if (w->natts > 0) {
      struct tnef_att *att = &w->atts[w->natts - 1];
      struct tnef_span span;

      span.off = pos;
      span.len = TNEF_ATTR_HDR + alen + TNEF_ATTR_SUM;

      /* A repeated attribute replaces the earlier one, as in libytnef. */
      if (id == attAttachData) {
        att->data_off = pos + TNEF_ATTR_HDR;
        att->data_len = alen;
        att->has_data = 1;

      } else if (id == attAttachTitle) {
        if (alen > 0 && alen <= TNEF_YTNEF_MAX_TITLE) {
          att->title = span;
        }

      } else if (id == attAttachment) {
        if (alen > 0) {
          att->mapi = span;
        }
      }
    }
    /* Attachment attributes before the first attAttachRenddata belong to
     * no attachment; libytnef drops them too.
     */

    pos += TNEF_ATTR_HDR + alen + TNEF_ATTR_SUM;
  }

  return 0;
}

/* Sets the checksum of a whole attribute (a damaged stream's attribute
 * is taken as it is; libytnef need not judge it again).
 */
static void tnef_fix_sum(unsigned char *a, size_t len) {
  uint32_t sum = 0;
  size_t i;

  if (len < TNEF_ATTR_HDR + TNEF_ATTR_SUM) {
    return;
  }
  for (i = TNEF_ATTR_HDR; i < len - TNEF_ATTR_SUM; i++) {
    sum += a[i];
  }
  a[len - 2] = (unsigned char) sum;
  a[len - 1] = (unsigned char) (sum >> 8);
}

/* Runs libytnef on a stream of its own holding one attachment: a blank
 * attAttachRenddata (which makes libytnef start an attachment), the title
 * and, when with_mapi, the MAPI properties.  Returns libytnef's result;
 * *t must be given to TNEFFree() whatever it is.
 */
static int tnef_ytnef_parse(const unsigned char *buf, const struct tnef_att *a,
    int with_mapi, TNEFStruct *t) {
  enum { REND_LEN = 14 };
  unsigned char *s, *p;
  size_t len;
  int rc;

  len = 6 + TNEF_ATTR_HDR + REND_LEN + TNEF_ATTR_SUM + a->title.len +
    (with_mapi ? a->mapi.len : 0);

  /* TNEFInitialize() leaves Debug alone. */
  memset(t, 0, sizeof(*t));
  TNEFInitialize(t);
  t->Debug = 0;

  s = malloc(len);
  if (s == NULL) {
    errno = ENOMEM;
    return -1;
  }

  p = s;
  mailoauth_tnef_put32(p, TNEF_SIGNATURE);
  p[4] = p[5] = 0;
  p += 6;

  memset(p, 0, TNEF_ATTR_HDR + REND_LEN + TNEF_ATTR_SUM);
  p[0] = TNEF_LVL_ATTACHMENT;
  mailoauth_tnef_put32(p + 1, attAttachRenddata);
  mailoauth_tnef_put32(p + 5, REND_LEN);
  p += TNEF_ATTR_HDR + REND_LEN + TNEF_ATTR_SUM;

  memcpy(p, buf + a->title.off, a->title.len);
  tnef_fix_sum(p, a->title.len);
  p += a->title.len;
  if (with_mapi) {
    memcpy(p, buf + a->mapi.off, a->mapi.len);
    tnef_fix_sum(p, a->mapi.len);
  }

  rc = TNEFParseMemory(s, (long) len, t);
  free(s);
  if (rc < 0) {
    errno = EBADMSG;
  }
  return rc < 0 ? -1 : 0;
}

/* A MAPI value with data, or NULL. */
static variableLength *tnef_prop(Attachment *p, unsigned int type,
    unsigned int id) {
  variableLength *v = MAPIFindProperty(&p->MAPI, PROP_TAG(type, id));

  if (v == MAPI_UNDEFINED || v == NULL || v->data == NULL || v->size <= 0) {
    return NULL;
  }
  return v;
}

/* libytnef's UTF-16 to UTF-8 conversion encodes each half of a surrogate
 * pair on its own (CESU-8) and U+07FF in three bytes: both are invalid
 * UTF-8, and would cost the name its characters.  Repairs them in place
 * (the result is never longer).
 */
static size_t tnef_utf8_repair(unsigned char *s, size_t len) {
  size_t i = 0, o = 0;

  while (i < len) {
    if (i + 6 <= len && s[i] == 0xed && (s[i + 1] & 0xf0) == 0xa0 &&
        (s[i + 2] & 0xc0) == 0x80 && s[i + 3] == 0xed &&
        (s[i + 4] & 0xf0) == 0xb0 && (s[i + 5] & 0xc0) == 0x80) {
      uint32_t hi = 0xd000 | ((uint32_t) (s[i + 1] & 0x3f) << 6) |
        (s[i + 2] & 0x3f);
      uint32_t lo = 0xd000 | ((uint32_t) (s[i + 4] & 0x3f) << 6) |
        (s[i + 5] & 0x3f);
      uint32_t cp = 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);

      s[o++] = (unsigned char) (0xf0 | (cp >> 18));
      s[o++] = (unsigned char) (0x80 | ((cp >> 12) & 0x3f));
      s[o++] = (unsigned char) (0x80 | ((cp >> 6) & 0x3f));
      s[o++] = (unsigned char) (0x80 | (cp & 0x3f));
      i += 6;

    } else if (i + 3 <= len && s[i] == 0xe0 && (s[i + 1] & 0xe0) == 0x80 &&
        (s[i + 2] & 0xc0) == 0x80) {
      uint32_t cp = ((uint32_t) (s[i + 1] & 0x3f) << 6) | (s[i + 2] & 0x3f);

      s[o++] = (unsigned char) (0xc0 | (cp >> 6));
      s[o++] = (unsigned char) (0x80 | (cp & 0x3f));
      i += 3;

    } else {
      s[o++] = s[i++];
    }
  }

  return o;
}

/* Copies a name candidate of at most max bytes (up to a NUL) into f.
 * Returns 1 when taken, 0 when empty or too long, -1 (ENOMEM).
 */
static int tnef_take_name(struct tnef_found *f, const BYTE *data, size_t max,
    unsigned int codepage, int unicode) {
  size_t n = strnlen((const char *) data, max);

  if (n == 0 || n > MAILOAUTH_TNEF_MAX_NAME) {
    return 0;
  }

  f->name = malloc(n + 1);
  if (f->name == NULL) {
    errno = ENOMEM;
    return -1;
  }
  memcpy(f->name, data, n);
  if (unicode) {
    n = tnef_utf8_repair((unsigned char *) f->name, n);
  }
  f->name[n] = '\0';
  f->name_len = n;
  f->codepage = unicode ? TNEF_CP_UTF8 : codepage;
  return 1;
}

/* The long file name (PR_ATTACH_LONG_FILENAME) before the title (the 8.3
 * name, in older mail), then PR_ATTACH_FILENAME.  PR_DISPLAY_NAME is no
 * file name ("AUTHORS file for tnef").  Unicode values come from libytnef
 * as UTF-8 in a buffer of 3 * size / 2 + 1 bytes, NUL-terminated, where
 * size still counts the UTF-16 bytes.
 */
static int tnef_pick_name(struct tnef_found *f, Attachment *p,
    unsigned int codepage) {
  static const unsigned int ids[] = { PR_ATTACH_LONG_FILENAME, 0,
    PR_ATTACH_FILENAME };
  size_t i;
  int rc;

  for (i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
    variableLength *v;

    if (ids[i] == 0) {
      if (p->Title.data != NULL && p->Title.size > 0) {
        rc = tnef_take_name(f, p->Title.data, (size_t) p->Title.size,
          codepage, 0);
        if (rc != 0) {
          return rc;
        }
      }
      continue;
    }

    v = tnef_prop(p, PT_UNICODE, ids[i]);
    if (v != NULL) {
      rc = tnef_take_name(f, v->data, 3 * (size_t) v->size / 2 + 1, 0, 1);
      if (rc != 0) {
        return rc;
      }
    }

    v = tnef_prop(p, PT_STRING8, ids[i]);
    if (v != NULL) {
      rc = tnef_take_name(f, v->data, (size_t) v->size, codepage, 0);
      if (rc != 0) {
        return rc;
      }
    }
  }

  return 0;
}

/* Fixed-size MAPI value lengths in a TNEF property list ([MS-OXTNEF]
 * 2.1.3.4: every value padded to 4 bytes), 0 for variable-size types,
 * -1 for a type that cannot be walked.
 */
static long tnef_fixed_len(uint32_t type) {
  switch (type) {
  case 0x0002: case 0x0003: case 0x0004: case 0x000a: case 0x000b:
  case 0x0001:
    return 4;
  case 0x0005: case 0x0006: case 0x0007: case 0x0014: case 0x0040:
    return 8;
  case 0x0048:
    return 16;
  case 0x000d: case 0x001e: case 0x001f: case 0x0102:
    return 0;
  default:
    return -1;
  }
}

/* Finds, by walking the property list of an attAttachment attribute
 * (data, len) by hand, the attach method and the PR_ATTACH_DATA_OBJ
 * object: for the values libytnef refuses (over its size limit), which
 * are what large embedded items are.  Returns 0 when the list could be
 * walked to the properties sought or to its end, -1 otherwise.
 */
static int tnef_mapi_walk(const unsigned char *d, size_t len,
    uint32_t *method, const unsigned char **obj, size_t *objlen) {
  size_t pos = 4;
  uint32_t count, i;

  *method = 0;
  *obj = NULL;
  *objlen = 0;
  if (len < 4) {
    return -1;
  }
  count = mailoauth_tnef_get32(d);

  for (i = 0; i < count; i++) {
    uint32_t tag, type, id, nvals = 1, k;
    long fixed;

    if (len - pos < 4) {
      return -1;
    }
    tag = mailoauth_tnef_get32(d + pos);
    pos += 4;
    type = tag & 0xffff;
    id = tag >> 16;

    if (id >= 0x8000) {
      /* A named property: GUID, kind, then a number or a name. */
      uint32_t kind;

      if (len - pos < 20) {
        return -1;
      }
      kind = mailoauth_tnef_get32(d + pos + 16);
      pos += 20;
      if (kind == 0) {
        if (len - pos < 4) {
          return -1;
        }
        pos += 4;
      } else {
        uint32_t nlen;

        if (len - pos < 4) {
          return -1;
        }
        nlen = mailoauth_tnef_get32(d + pos);
        pos += 4;
        if (nlen > len - pos || ((nlen + 3) & ~3U) > len - pos) {
          return -1;
        }
        pos += (nlen + 3) & ~3U;
      }
    }

    fixed = tnef_fixed_len(type & ~0x1000U);
    if (fixed < 0) {
      return -1;
    }
    if ((type & 0x1000) || fixed == 0) {
      if (len - pos < 4) {
        return -1;
      }
      nvals = mailoauth_tnef_get32(d + pos);
      pos += 4;
    }

    for (k = 0; k < nvals; k++) {
      size_t vlen = (size_t) fixed;
      size_t at;

      if (fixed == 0) {
        if (len - pos < 4) {
          return -1;
        }
        vlen = mailoauth_tnef_get32(d + pos);
        pos += 4;
      }
      if (vlen > len - pos) {
        return -1;
      }
      at = pos;
      pos += vlen;
      pos += (len - pos < ((4 - vlen % 4) % 4)) ? len - pos :
        (4 - vlen % 4) % 4;

      if (nvals == 1 && id == PR_ATTACH_METHOD && type == PT_LONG) {
        *method = mailoauth_tnef_get32(d + at);
      } else if (nvals == 1 && id == PR_ATTACH_DATA_OBJ &&
          type == PT_OBJECT) {
        *obj = d + at;
        *objlen = vlen;
      }
    }
    if (*method != 0 && *obj != NULL) {
      break;
    }
  }
  return 0;
}

/* An attached Outlook item (attach method 5): the item as Outlook encoded
 * it, a TNEF stream of its own (in attAttachData, or in PR_ATTACH_DATA_OBJ
 * after IID_IMessage), named by its display name (its subject) or title
 * with ".tnef" added.  Returns 0 (*skip 2 when it holds no such stream),
 * -1 (ENOMEM).
 */
static int tnef_embedded_bytes(const unsigned char *d, size_t n,
  int in_input, Attachment *p, unsigned int codepage, struct tnef_found *f);

static int tnef_embedded(const unsigned char *buf, const struct tnef_att *a,
    Attachment *p, unsigned int codepage, struct tnef_found *f, int *skip) {
  const unsigned char *d = NULL;
  size_t n = 0;
  variableLength *v;
  int in_input = 0;

  if (a->has_data && a->data_len >= 4 &&
      mailoauth_tnef_get32(buf + a->data_off) == TNEF_SIGNATURE) {
    d = buf + a->data_off;
    n = a->data_len;
    in_input = 1;
  } else {
    v = tnef_prop(p, PT_OBJECT, PR_ATTACH_DATA_OBJ);
    if (v != NULL && (size_t) v->size >= TNEF_IID_LEN + 4 &&
        mailoauth_tnef_get32(v->data + TNEF_IID_LEN) == TNEF_SIGNATURE) {
      d = v->data + TNEF_IID_LEN;
      n = (size_t) v->size - TNEF_IID_LEN;
    }
  }
  if (d == NULL) {
    /* An item in a form not kept (not TNEF): lost, and said so. */
    *skip = 2;
    return 0;
  }
  return tnef_embedded_bytes(d, n, in_input, p, codepage, f);
}

/* The item's bytes (d, n; in_input: inside the stream, which outlives
 * the file, else copied), named by its display name or title + ".tnef".
 * Returns 0, -1 (ENOMEM).
 */
static int tnef_embedded_bytes(const unsigned char *d, size_t n,
    int in_input, Attachment *p, unsigned int codepage,
    struct tnef_found *f) {
  static const char ext[] = ".tnef";
  variableLength *v;
  char *name;
  int rc = 0;

  if (in_input) {
    f->data = d;
  } else {
    f->owned = malloc(n > 0 ? n : 1);
    if (f->owned == NULL) {
      errno = ENOMEM;
      return -1;
    }
    memcpy(f->owned, d, n);
    f->data = f->owned;
  }
  f->size = n;

  v = tnef_prop(p, PT_UNICODE, PR_DISPLAY_NAME);
  if (v != NULL) {
    rc = tnef_take_name(f, v->data, 3 * (size_t) v->size / 2 + 1, 0, 1);
  }
  if (rc == 0 && (v = tnef_prop(p, PT_STRING8, PR_DISPLAY_NAME)) != NULL) {
    rc = tnef_take_name(f, v->data, (size_t) v->size, codepage, 0);
  }
  if (rc == 0 && p->Title.data != NULL && p->Title.size > 0) {
    rc = tnef_take_name(f, p->Title.data, (size_t) p->Title.size, codepage,
      0);
  }
  if (rc < 0) {
    return -1;
  }

  if (f->name != NULL && f->name_len + sizeof(ext) - 1 >
      MAILOAUTH_TNEF_MAX_NAME) {
    free(f->name);
    f->name = NULL;
  }
  if (f->name == NULL) {
    f->name_len = 4;
    f->codepage = TNEF_CP_UTF8;
    f->name = strdup("item");
    if (f->name == NULL) {
      errno = ENOMEM;
      return -1;
    }
  }
  name = realloc(f->name, f->name_len + sizeof(ext));
  if (name == NULL) {
    errno = ENOMEM;
    return -1;
  }
  memcpy(name + f->name_len, ext, sizeof(ext));
  f->name = name;
  f->name_len += sizeof(ext) - 1;
  return 0;
}

/* What libytnef tells about one attachment: its name, whether it is an
 * embedded message, and the content when it lives in the properties only
 * (PR_ATTACH_DATA_OBJ / _BIN without attAttachData).  Returns 0 (*skip set
 * for attachments that are no file: 1 for what carries no content, such
 * as a reference, 2 for content that cannot be read), -1 (ENOMEM).
 */
static int tnef_describe(const unsigned char *buf, const struct tnef_att *a,
    unsigned int codepage, struct tnef_found *f, int *skip) {
  TNEFStruct t;
  Attachment *p;
  variableLength *v;
  int rc = 0, parsed, mapi_lost = 0;

  *skip = 0;
  if (a->title.len == 0 && a->mapi.len == 0) {
    *skip = !a->has_data;
    return 0;
  }

  /* Properties libytnef cannot take (a value over 512 KB, such as a large
   * embedded message) should not cost the file its title.
   */
  parsed = tnef_ytnef_parse(buf, a, a->mapi.len > 0, &t) == 0;
  if (!parsed && a->mapi.len > 0 && a->title.len > 0) {
    TNEFFree(&t);
    parsed = tnef_ytnef_parse(buf, a, 0, &t) == 0;
    mapi_lost = 1;
  }

  p = t.starting_attach.next;
  if (!parsed || p == NULL) {
    TNEFFree(&t);
    /* Content in properties libytnef cannot read: lost, and said so. */
    *skip = a->has_data ? 0 : a->mapi.len > 0 ? 2 : 1;
    return 0;
  }

  v = tnef_prop(p, PT_LONG, PR_ATTACH_METHOD);
  if (v != NULL && v->size >= 4) {
    uint32_t method;

    memcpy(&method, v->data, sizeof(method));
    if (method == TNEF_ATTACH_EMBEDDED_MSG) {
      rc = tnef_embedded(buf, a, p, codepage, f, skip);
      TNEFFree(&t);
      return rc;
    }
  }

  if (!a->has_data) {
    const unsigned char *d = NULL;
    size_t n = 0;

    v = tnef_prop(p, PT_OBJECT, PR_ATTACH_DATA_OBJ);
    if (v != NULL && (size_t) v->size >= TNEF_IID_LEN) {
      d = v->data + TNEF_IID_LEN;
      n = (size_t) v->size - TNEF_IID_LEN;
      if (memcmp(v->data, tnef_iid_imessage, TNEF_IID_LEN) == 0 ||
          (n >= 4 && mailoauth_tnef_get32(d) == TNEF_SIGNATURE)) {
        d = NULL;
      }

    } else {
      /* Same property id, binary type: PR_ATTACH_DATA_BIN. */
      v = tnef_prop(p, PT_BINARY, PR_ATTACH_DATA_OBJ);
      if (v != NULL) {
        d = v->data;
        n = (size_t) v->size;
      }
    }

    if (d == NULL && mapi_lost) {
      /* The properties libytnef refused: an item too large for it? */
      const unsigned char *obj;
      uint32_t method;
      size_t objlen;

      if (tnef_mapi_walk(buf + a->mapi.off + TNEF_ATTR_HDR,
          a->mapi.len - TNEF_ATTR_HDR - TNEF_ATTR_SUM, &method, &obj,
          &objlen) == 0 && method == TNEF_ATTACH_EMBEDDED_MSG &&
          obj != NULL && objlen >= TNEF_IID_LEN + 4 &&
          mailoauth_tnef_get32(obj + TNEF_IID_LEN) == TNEF_SIGNATURE) {
        rc = tnef_embedded_bytes(obj + TNEF_IID_LEN, objlen - TNEF_IID_LEN,
          1, p, codepage, f);
        TNEFFree(&t);
        return rc;
      }
    }
    if (d == NULL) {
      TNEFFree(&t);
      *skip = mapi_lost ? 2 : 1;
      return 0;
    }

    f->owned = malloc(n > 0 ? n : 1);
    if (f->owned == NULL) {
      TNEFFree(&t);
      errno = ENOMEM;
      return -1;
    }
    memcpy(f->owned, d, n);
    f->data = f->owned;
    f->size = n;
  }

  if (tnef_pick_name(f, p, codepage) < 0) {
    rc = -1;
  }

  TNEFFree(&t);
  return rc;
}

static void tnef_found_free(struct tnef_found *found, size_t n) {
  size_t i;

  for (i = 0; i < n; i++) {
    free(found[i].name);
    free(found[i].owned);
  }
  free(found);
}

int mailoauth_tnef_decode_mem(const unsigned char *buf, size_t len,
    const struct mailoauth_tnef_limits *lim, mailoauth_tnef_found_fn fn,
    void *arg, unsigned int *nfiles) {
  struct mailoauth_tnef_limits l;
  struct tnef_walk w;
  struct tnef_found *found = NULL;
  size_t nfound = 0, i;
  uint64_t total = 0;
  int xerrno = 0;

  if (nfiles != NULL) {
    *nfiles = 0;
  }
  if ((buf == NULL && len > 0) || fn == NULL) {
    errno = EINVAL;
    return -1;
  }

  mailoauth_tnef_limits_resolve(lim, &l);
  if (len > l.max_input) {
    errno = EFBIG;
    return -1;
  }

  memset(&w, 0, sizeof(w));
  if (tnef_walk(buf, len, (size_t) l.max_files + TNEF_MAX_SKIPPED, &w) < 0) {
    xerrno = errno;
    free(w.atts);
    errno = xerrno;
    return -1;
  }

  if (w.natts > 0) {
    found = calloc(w.natts, sizeof(*found));
    if (found == NULL) {
      free(w.atts);
      errno = ENOMEM;
      return -1;
    }
  }

  for (i = 0; i < w.natts; i++) {
    const struct tnef_att *a = &w.atts[i];
    struct tnef_found *f = &found[nfound];
    int skip;

    if (tnef_describe(buf, a, w.codepage, f, &skip) < 0) {
      xerrno = errno;
      break;
    }

    if (skip) {
      if (skip == 2) {
        w.damaged = 1;
      }
      free(f->name);
      free(f->owned);
      memset(f, 0, sizeof(*f));
      continue;
    }

    if (f->data == NULL && a->has_data) {
      f->data = buf + a->data_off;
      f->size = a->data_len;
    }
    nfound++;

    if (nfound > l.max_files || f->size > l.max_file_bytes ||
        f->size > l.max_total_bytes - total) {
      xerrno = EFBIG;
      break;
    }
    total += f->size;
  }

  for (i = 0; xerrno == 0 && i < nfound; i++) {
    struct mailoauth_tnef_file file;

    file.name = found[i].name;
    file.name_len = found[i].name_len;
    file.codepage = found[i].codepage;
    file.data = found[i].data;
    file.size = found[i].size;

    if (nfiles != NULL) {
      (*nfiles)++;
    }
    errno = 0;
    if (fn(&file, arg) < 0) {
      xerrno = errno != 0 ? errno : ECANCELED;
    }
  }

  /* A failed describe may have left a name in the next slot. */
  tnef_found_free(found, w.natts);
  free(w.atts);

  /* The files of a damaged stream went out; the caller still learns that
   * it was damaged (and keeps the winmail.dat as sent, too).
   */
  if (xerrno == 0 && w.damaged) {
    xerrno = EBADMSG;
  }
  if (xerrno != 0) {
    errno = xerrno;
    return -1;
  }
  return 0;
}
