/*
 * mod_mailoauth - unpacking Outlook's winmail.dat (application/ms-tnef)
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
 * The parent and the child speak over a pipe, in records:
 *   'F' codepage:u32 name_len:u32 name data_len:u64 data   one file
 *   'E' status:u32 flags:u32                                the end
 * (little-endian).  The child sends files only once the whole stream was
 * decoded and found within the limits, then one end record, then exits.
 *
 * The child is forked by the TNEF helper, not by the parent, and the
 * parent talks to the helper over a SOCK_SEQPACKET socket, one message
 * each (little-endian):
 *   'U' seq:u32 in_size:u64 max_input:u64 max_files:u32 max_file_bytes:u64
 *       max_total_bytes:u64 timeout_ms:u32, with the input and the pipe's
 *       write end (SCM_RIGHTS)                     fork a decoder
 *   'K' seq:u32                                    kill it
 * and the helper answers kind:u8 seq:u32 value:u32, kind being 'R' (ready,
 * seq 0), 'P' (the decoder's pid), 'S' (its wait status, once reaped: one
 * for every 'P') or 'X' (an errno: no decoder).  Only the helper kills and
 * reaps decoders, so a pid it kills is never one the kernel reused.
 */

#ifndef _GNU_SOURCE
# define _GNU_SOURCE
#endif

#include "tnef.h"
#include "mime.h"
#include "spool.h"
#include "trace.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef __linux__
# include <sys/prctl.h>
# include <linux/audit.h>
# include <linux/filter.h>
# include <linux/seccomp.h>
#endif

/* libytnef's headers #define BYTE, WORD and DWORD and need stdio.h and
 * stddef.h first: they come last.
 */
#include <ytnef.h>
#include <mapidefs.h>

static const char *trace_channel = "mailoauth.tnef";

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

/* The Windows code page number of UTF-8. */
#define TNEF_CP_UTF8            65001

/* A PT_OBJECT value starts with the interface identifier of the object. */
#define TNEF_IID_LEN            16

/* IID_IMessage, {00020307-0000-0000-C000-000000000046}, as stored. */
static const unsigned char tnef_iid_imessage[TNEF_IID_LEN] = {
  0x07, 0x03, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
  0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x46
};

/* Records between the child and the parent. */
#define TNEF_REC_FILE           'F'
#define TNEF_REC_END            'E'

/* Status in the end record (not errno values: the parent maps them, and
 * anything else is garbage).
 */
#define TNEF_ST_OK              0
#define TNEF_ST_BADMSG          1
#define TNEF_ST_FBIG            2
#define TNEF_ST_NOMEM           3
#define TNEF_ST_INPUT           4       /* the child could not read its input */
#define TNEF_ST_MAX             4

/* Flags in the end record. */
#define TNEF_FL_SECCOMP         0x1U

/* Descriptors in the child. */
#define TNEF_CHILD_IN_FD        3
#define TNEF_CHILD_OUT_FD       4

/* The child's memory: its address space as forked, plus this, plus four
 * times the input (the input itself, libytnef's copies, the records).
 */
#define TNEF_CHILD_MEM_BASE     ((uint64_t) 256 << 20)
#define TNEF_CHILD_MEM_MAX      ((uint64_t) 4 << 30)

/* Exit status of a child that could not write to the pipe (any status
 * without an end record is an error anyway).
 */
#define TNEF_CHILD_EXIT_WRITE   2

#define TNEF_READ_CHUNK         (64 * 1024)

/* Messages between the parent and the helper. */
#define TNEF_MSG_UNPACK         'U'
#define TNEF_MSG_KILL           'K'
#define TNEF_MSG_READY          'R'
#define TNEF_MSG_PID            'P'
#define TNEF_MSG_STATUS         'S'
#define TNEF_MSG_ERROR          'X'

#define TNEF_UNPACK_LEN         45
#define TNEF_KILL_LEN           5
#define TNEF_ANSWER_LEN         9

/* Descriptors that come with an unpack request: the input and the pipe. */
#define TNEF_HELPER_FDS         2

/* The helper's socket, in the helper. */
#define TNEF_HELPER_SOCK_FD     3

/* How long the helper may take to answer what needs no decoding (ready,
 * a fork, a kill) before the parent gives up on it.
 */
#define TNEF_HELPER_ANSWER_MS   5000

/* How long a helper whose socket was closed may take to end by itself. */
#define TNEF_HELPER_STOP_MS     1000

/* ------------------------------------------------------------------------
 * Little-endian fields.
 */

static uint32_t tnef_get32(const unsigned char *p) {
  return (uint32_t) p[0] | ((uint32_t) p[1] << 8) | ((uint32_t) p[2] << 16) |
    ((uint32_t) p[3] << 24);
}

static uint64_t tnef_get64(const unsigned char *p) {
  return (uint64_t) tnef_get32(p) | ((uint64_t) tnef_get32(p + 4) << 32);
}

static void tnef_put32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char) v;
  p[1] = (unsigned char) (v >> 8);
  p[2] = (unsigned char) (v >> 16);
  p[3] = (unsigned char) (v >> 24);
}

static void tnef_put64(unsigned char *p, uint64_t v) {
  tnef_put32(p, (uint32_t) v);
  tnef_put32(p + 4, (uint32_t) (v >> 32));
}

/* ------------------------------------------------------------------------
 * Limits.
 */

void mailoauth_tnef_limits_init(struct mailoauth_tnef_limits *lim) {
  if (lim == NULL) {
    return;
  }
  lim->max_input = MAILOAUTH_TNEF_DEFAULT_MAX_INPUT;
  lim->max_files = MAILOAUTH_TNEF_DEFAULT_MAX_FILES;
  lim->max_file_bytes = MAILOAUTH_TNEF_DEFAULT_MAX_FILE_BYTES;
  lim->max_total_bytes = MAILOAUTH_TNEF_DEFAULT_MAX_TOTAL_BYTES;
  lim->timeout_ms = MAILOAUTH_TNEF_DEFAULT_TIMEOUT_MS;
}

static void tnef_limits_resolve(const struct mailoauth_tnef_limits *in,
    struct mailoauth_tnef_limits *out) {
  mailoauth_tnef_limits_init(out);
  if (in == NULL) {
    return;
  }
  if (in->max_input != 0) {
    out->max_input = in->max_input;
  }
  if (in->max_files != 0) {
    out->max_files = in->max_files;
  }
  if (in->max_file_bytes != 0) {
    out->max_file_bytes = in->max_file_bytes;
  }
  if (in->max_total_bytes != 0) {
    out->max_total_bytes = in->max_total_bytes;
  }
  if (in->timeout_ms != 0) {
    out->timeout_ms = in->timeout_ms;
  }
}

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
 * libytnef), checking the framing and every checksum: what libytnef is
 * given later is then known to be whole.
 */
static int tnef_walk(const unsigned char *buf, size_t len, size_t max_atts,
    struct tnef_walk *w) {
  size_t pos;

  if (len < 6 || tnef_get32(buf) != TNEF_SIGNATURE) {
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
      errno = EBADMSG;
      return -1;
    }

    level = a[0];
    id = tnef_get32(a + 1);
    alen = tnef_get32(a + 5);
    if ((level != TNEF_LVL_MESSAGE && level != TNEF_LVL_ATTACHMENT) ||
        alen > left - TNEF_ATTR_HDR - TNEF_ATTR_SUM) {
      errno = EBADMSG;
      return -1;
    }

    data = a + TNEF_ATTR_HDR;
    for (i = 0; i < alen; i++) {
      sum += data[i];
    }
    if ((sum & 0xffff) != (uint32_t) (data[alen] | (data[alen + 1] << 8))) {
      errno = EBADMSG;
      return -1;
    }

    if (level == TNEF_LVL_MESSAGE) {
      if (id == attOemCodepage && alen >= 4) {
        w->codepage = tnef_get32(data);
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
  tnef_put32(p, TNEF_SIGNATURE);
  p[4] = p[5] = 0;
  p += 6;

  memset(p, 0, TNEF_ATTR_HDR + REND_LEN + TNEF_ATTR_SUM);
  p[0] = TNEF_LVL_ATTACHMENT;
  tnef_put32(p + 1, attAttachRenddata);
  tnef_put32(p + 5, REND_LEN);
  p += TNEF_ATTR_HDR + REND_LEN + TNEF_ATTR_SUM;

  memcpy(p, buf + a->title.off, a->title.len);
  p += a->title.len;
  if (with_mapi) {
    memcpy(p, buf + a->mapi.off, a->mapi.len);
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

/* What libytnef tells about one attachment: its name, whether it is an
 * embedded message, and the content when it lives in the properties only
 * (PR_ATTACH_DATA_OBJ / _BIN without attAttachData).  Returns 0 (*skip set
 * for attachments that are no file), -1 (ENOMEM).
 */
static int tnef_describe(const unsigned char *buf, const struct tnef_att *a,
    unsigned int codepage, struct tnef_found *f, int *skip) {
  TNEFStruct t;
  Attachment *p;
  variableLength *v;
  int rc = 0, parsed;

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
  }

  p = t.starting_attach.next;
  if (!parsed || p == NULL) {
    TNEFFree(&t);
    *skip = !a->has_data;
    return 0;
  }

  v = tnef_prop(p, PT_LONG, PR_ATTACH_METHOD);
  if (v != NULL && v->size >= 4) {
    uint32_t method;

    memcpy(&method, v->data, sizeof(method));
    if (method == TNEF_ATTACH_EMBEDDED_MSG) {
      TNEFFree(&t);
      *skip = 1;
      return 0;
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
          (n >= 4 && tnef_get32(d) == TNEF_SIGNATURE)) {
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

    if (d == NULL) {
      TNEFFree(&t);
      *skip = 1;
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

  tnef_limits_resolve(lim, &l);
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
      free(f->name);
      free(f->owned);
      memset(f, 0, sizeof(*f));
      continue;
    }

    if (a->has_data) {
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

  if (xerrno != 0) {
    errno = xerrno;
    return -1;
  }
  return 0;
}

/* ------------------------------------------------------------------------
 * The child.  Everything here runs after fork() and ends in _exit(): no
 * tracing, no exit handlers.
 */

static int tnef_child_send(const struct mailoauth_tnef_file *f, void *arg) {
  unsigned char hdr[1 + 8];
  unsigned char size[8];
  int fd = *(int *) arg;

  hdr[0] = TNEF_REC_FILE;
  tnef_put32(hdr + 1, f->codepage);
  tnef_put32(hdr + 5, (uint32_t) f->name_len);
  tnef_put64(size, f->size);

  if (mailoauth_spool_write_all(fd, hdr, sizeof(hdr)) < 0 ||
      mailoauth_spool_write_all(fd, f->name, f->name_len) < 0 ||
      mailoauth_spool_write_all(fd, size, sizeof(size)) < 0 ||
      mailoauth_spool_write_all(fd, f->data, (size_t) f->size) < 0) {
    return -1;
  }
  return 0;
}

static void tnef_child_close_from(int lowfd) {
  long max, fd;

#ifdef SYS_close_range
  if (syscall(SYS_close_range, (unsigned int) lowfd, ~0U, 0) == 0) {
    return;
  }
#endif

  max = sysconf(_SC_OPEN_MAX);
  if (max < 0 || max > (1L << 20)) {
    max = 1L << 20;
  }
  for (fd = lowfd; fd < max; fd++) {
    (void) close((int) fd);
  }
}

/* 0, 1 and 2 become /dev/null (closed if it cannot be opened), so that
 * nothing written there reaches a descriptor of the parent's.
 */
static void tnef_stdio_null(void) {
  int null_fd = open("/dev/null", O_RDWR);

  if (null_fd >= 0) {
    (void) dup2(null_fd, 0);
    (void) dup2(null_fd, 1);
    (void) dup2(null_fd, 2);
  } else {
    (void) close(0);
    (void) close(1);
    (void) close(2);
  }
}

/* Only the input and the pipe stay, as 3 and 4; 0, 1 and 2 become
 * /dev/null, where libytnef's printf()s go.
 */
static int tnef_child_fds(int in_fd, int out_fd) {
  int in2, out2;

  in2 = fcntl(in_fd, F_DUPFD, 10);
  out2 = fcntl(out_fd, F_DUPFD, 10);
  if (in2 < 0 || out2 < 0) {
    return -1;
  }

  tnef_stdio_null();
  if (dup2(in2, TNEF_CHILD_IN_FD) < 0 || dup2(out2, TNEF_CHILD_OUT_FD) < 0) {
    return -1;
  }
  tnef_child_close_from(TNEF_CHILD_OUT_FD + 1);

  /* Unbuffered: nothing held in memory, and no fstat() on first use,
   * which the seccomp filter would punish.
   */
  (void) setvbuf(stdout, NULL, _IONBF, 0);
  (void) setvbuf(stderr, NULL, _IONBF, 0);
  return 0;
}

static void tnef_child_signals(void) {
  struct sigaction sa;
  sigset_t none;
  int sig;

  /* The worker's handlers would only set flags nobody reads here, and a
   * parent that went away should take the child with it (SIGPIPE).
   */
  memset(&sa, 0, sizeof(sa));
  sigemptyset(&sa.sa_mask);
  sa.sa_handler = SIG_DFL;
  for (sig = 1; sig < NSIG; sig++) {
    (void) sigaction(sig, &sa, NULL);
  }
  sigemptyset(&none);
  (void) sigprocmask(SIG_SETMASK, &none, NULL);
}

/* Bytes of address space in use, or 0 when unknown. */
static uint64_t tnef_child_vm_size(void) {
  char buf[128];
  unsigned long long pages;
  long pagesz = sysconf(_SC_PAGESIZE);
  ssize_t n;
  int fd;

  fd = open("/proc/self/statm", O_RDONLY|O_CLOEXEC);
  if (fd < 0) {
    return 0;
  }
  n = read(fd, buf, sizeof(buf) - 1);
  (void) close(fd);
  if (n <= 0 || pagesz <= 0) {
    return 0;
  }
  buf[n] = '\0';
  if (sscanf(buf, "%llu", &pages) != 1) {
    return 0;
  }
  return (uint64_t) pages * (uint64_t) pagesz;
}

/* Lowers a limit (never raises it: that would fail). */
static void tnef_child_limit(int resource, uint64_t soft, uint64_t hard) {
  struct rlimit rl;

  if (getrlimit(resource, &rl) < 0) {
    return;
  }
  if (rl.rlim_max == RLIM_INFINITY || hard < (uint64_t) rl.rlim_max) {
    rl.rlim_max = (rlim_t) hard;
  }
  rl.rlim_cur = soft < (uint64_t) rl.rlim_max ? (rlim_t) soft : rl.rlim_max;
  (void) setrlimit(resource, &rl);
}

static void tnef_child_limits(uint64_t in_size, unsigned int timeout_ms) {
  uint64_t vm = tnef_child_vm_size(), budget;

  if (vm > 0) {
    budget = TNEF_CHILD_MEM_BASE + 4 * in_size;
    if (budget > TNEF_CHILD_MEM_MAX) {
      budget = TNEF_CHILD_MEM_MAX;
    }
    tnef_child_limit(RLIMIT_AS, vm + budget, vm + budget);
  }

  /* SIGXCPU at the soft limit, which the parent reports as a timeout; the
   * hard one (SIGKILL) only for a child that ignores it.
   */
  tnef_child_limit(RLIMIT_CPU, timeout_ms / 1000 + 1, timeout_ms / 1000 + 2);
  tnef_child_limit(RLIMIT_CORE, 0, 0);
  tnef_child_limit(RLIMIT_FSIZE, 0, 0);
  tnef_child_limit(RLIMIT_NOFILE, TNEF_CHILD_OUT_FD + 1,
    TNEF_CHILD_OUT_FD + 1);
#ifdef RLIMIT_NPROC
  tnef_child_limit(RLIMIT_NPROC, 0, 0);
#endif
}

#if defined(__linux__) && defined(SECCOMP_MODE_FILTER) && \
  defined(PR_SET_NO_NEW_PRIVS)
# if defined(__x86_64__) && defined(AUDIT_ARCH_X86_64)
#  define TNEF_AUDIT_ARCH       AUDIT_ARCH_X86_64
# elif defined(__aarch64__) && defined(AUDIT_ARCH_AARCH64)
#  define TNEF_AUDIT_ARCH       AUDIT_ARCH_AARCH64
# elif defined(__i386__) && defined(AUDIT_ARCH_I386)
#  define TNEF_AUDIT_ARCH       AUDIT_ARCH_I386
# elif defined(__powerpc64__) && defined(AUDIT_ARCH_PPC64LE) && \
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#  define TNEF_AUDIT_ARCH       AUDIT_ARCH_PPC64LE
# elif defined(__s390x__) && defined(AUDIT_ARCH_S390X)
#  define TNEF_AUDIT_ARCH       AUDIT_ARCH_S390X
# elif defined(__riscv) && __riscv_xlen == 64 && defined(AUDIT_ARCH_RISCV64)
#  define TNEF_AUDIT_ARCH       AUDIT_ARCH_RISCV64
# endif
#endif

#ifdef TNEF_AUDIT_ARCH

# ifdef SECCOMP_RET_KILL_PROCESS
#  define TNEF_RET_KILL         SECCOMP_RET_KILL_PROCESS
# else
#  define TNEF_RET_KILL         SECCOMP_RET_KILL
# endif

/* The low 32 bits of a system call argument. */
# if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#  define TNEF_ARG_LO(n)        (offsetof(struct seccomp_data, args[n]) + 4)
# else
#  define TNEF_ARG_LO(n)        offsetof(struct seccomp_data, args[n])
# endif

# define TNEF_ALLOW(nr) \
  BPF_JUMP(BPF_JMP|BPF_JEQ|BPF_K, (nr), 0, 1), \
  BPF_STMT(BPF_RET|BPF_K, SECCOMP_RET_ALLOW)

/* Mappings, but never executable ones: no new code. */
# define TNEF_ALLOW_NOEXEC(nr) \
  BPF_JUMP(BPF_JMP|BPF_JEQ|BPF_K, (nr), 0, 4), \
  BPF_STMT(BPF_LD|BPF_W|BPF_ABS, TNEF_ARG_LO(2)), \
  BPF_JUMP(BPF_JMP|BPF_JSET|BPF_K, PROT_EXEC, 1, 0), \
  BPF_STMT(BPF_RET|BPF_K, SECCOMP_RET_ALLOW), \
  BPF_STMT(BPF_RET|BPF_K, TNEF_RET_KILL)

/* The child is a copy of the helper, which never held the worker's
 * secrets, but it still reads hostile input: whatever libytnef's bugs
 * allow, it gets to allocate memory, write to the descriptors it has (the
 * pipe and /dev/null) and exit.  No open(), no socket(), no kill(), no
 * execve().
 */
static int tnef_child_seccomp(void) {
  struct sock_filter filter[] = {
    BPF_STMT(BPF_LD|BPF_W|BPF_ABS, offsetof(struct seccomp_data, arch)),
    BPF_JUMP(BPF_JMP|BPF_JEQ|BPF_K, TNEF_AUDIT_ARCH, 1, 0),
    BPF_STMT(BPF_RET|BPF_K, TNEF_RET_KILL),
    BPF_STMT(BPF_LD|BPF_W|BPF_ABS, offsetof(struct seccomp_data, nr)),
# if defined(__x86_64__) && defined(__X32_SYSCALL_BIT)
    BPF_JUMP(BPF_JMP|BPF_JGE|BPF_K, __X32_SYSCALL_BIT, 0, 1),
    BPF_STMT(BPF_RET|BPF_K, TNEF_RET_KILL),
# endif
    TNEF_ALLOW(__NR_write),
# ifdef __NR_writev
    TNEF_ALLOW(__NR_writev),
# endif
# ifdef __NR_brk
    TNEF_ALLOW(__NR_brk),
# endif
# ifdef __NR_mmap
    TNEF_ALLOW_NOEXEC(__NR_mmap),
# endif
# ifdef __NR_mmap2
    TNEF_ALLOW_NOEXEC(__NR_mmap2),
# endif
    TNEF_ALLOW_NOEXEC(__NR_mprotect),
    TNEF_ALLOW(__NR_munmap),
    TNEF_ALLOW(__NR_mremap),
    TNEF_ALLOW(__NR_madvise),
    TNEF_ALLOW(__NR_futex),
    TNEF_ALLOW(__NR_close),
# ifdef __NR_clock_gettime
    TNEF_ALLOW(__NR_clock_gettime),
# endif
# ifdef __NR_rt_sigreturn
    TNEF_ALLOW(__NR_rt_sigreturn),
# endif
    TNEF_ALLOW(__NR_exit),
    TNEF_ALLOW(__NR_exit_group),
    BPF_STMT(BPF_RET|BPF_K, TNEF_RET_KILL)
  };
  struct sock_fprog prog;

  prog.len = (unsigned short) (sizeof(filter) / sizeof(filter[0]));
  prog.filter = filter;
  return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}

#else

static int tnef_child_seccomp(void) {
  errno = ENOSYS;
  return -1;
}

#endif /* TNEF_AUDIT_ARCH */

static int tnef_child_status(int xerrno) {
  switch (xerrno) {
    case 0:
      return TNEF_ST_OK;
    case EFBIG:
      return TNEF_ST_FBIG;
    case ENOMEM:
      return TNEF_ST_NOMEM;
    default:
      return TNEF_ST_BADMSG;
  }
}

static void tnef_child(int in_fd, int out_fd, uint64_t in_size,
    const struct mailoauth_tnef_limits *lim, pid_t parent)
#ifdef __GNUC__
  __attribute__((noreturn))
#endif
  ;

static void tnef_child(int in_fd, int out_fd, uint64_t in_size,
    const struct mailoauth_tnef_limits *lim, pid_t parent) {
  unsigned char end[1 + 8];
  unsigned char *buf = NULL;
  uint32_t flags = 0;
  int status = TNEF_ST_OK, out = TNEF_CHILD_OUT_FD;
  size_t got = 0;

  tnef_child_signals();

#ifdef PR_SET_PDEATHSIG
  /* A helper killed mid-way should not leave a decoder behind. */
  (void) prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
  if (getppid() != parent) {
    _exit(1);
  }
#else
  (void) parent;
#endif
#ifdef PR_SET_NAME
  /* Told apart from its helper in ps. */
  (void) prctl(PR_SET_NAME, "tnef decoder", 0, 0, 0);
#endif

  if (tnef_child_fds(in_fd, out_fd) < 0) {
    _exit(1);
  }

  buf = malloc(in_size > 0 ? (size_t) in_size : 1);
  if (buf == NULL) {
    status = TNEF_ST_NOMEM;
  }
  while (buf != NULL && got < in_size) {
    ssize_t n = pread(TNEF_CHILD_IN_FD, buf + got, (size_t) in_size - got,
      (off_t) got);

    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      status = TNEF_ST_INPUT;
      break;
    }
    got += (size_t) n;
  }
  (void) close(TNEF_CHILD_IN_FD);

  tnef_child_limits(in_size, lim->timeout_ms);

#ifdef __linux__
  /* No ptrace by others of the same user (FTP sessions may run as it):
   * what it decodes is someone's mail.
   */
  (void) prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
#endif

  /* A helper that kept a saved root identity must not hand it on. */
  if (setresgid(getegid(), getegid(), getegid()) < 0 ||
      setresuid(geteuid(), geteuid(), geteuid()) < 0) {
    _exit(1);
  }

#ifdef PR_SET_NO_NEW_PRIVS
  (void) prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
#endif
  if (tnef_child_seccomp() == 0) {
    flags |= TNEF_FL_SECCOMP;
  }

  if (status == TNEF_ST_OK) {
    if (mailoauth_tnef_decode_mem(buf, (size_t) in_size, lim,
        tnef_child_send, &out, NULL) < 0) {
      if (errno == EPIPE) {
        _exit(TNEF_CHILD_EXIT_WRITE);
      }
      status = tnef_child_status(errno);
    }
  }

  end[0] = TNEF_REC_END;
  tnef_put32(end + 1, (uint32_t) status);
  tnef_put32(end + 5, flags);
  if (mailoauth_spool_write_all(out, end, sizeof(end)) < 0) {
    _exit(TNEF_CHILD_EXIT_WRITE);
  }
  _exit(0);
}

/* ------------------------------------------------------------------------
 * Messages on the helper's socket, for both sides.
 */

/* Sends one message, with nfds descriptors (SCM_RIGHTS; nfds may be 0). */
static int tnef_sock_send(int sock, const void *buf, size_t len,
    const int *fds, int nfds) {
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * TNEF_HELPER_FDS)];
  } control;
  struct msghdr msg;
  struct iovec iov;
  ssize_t n;

  if (nfds < 0 || nfds > TNEF_HELPER_FDS) {
    errno = EINVAL;
    return -1;
  }

  memset(&msg, 0, sizeof(msg));
  iov.iov_base = (void *) buf;
  iov.iov_len = len;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;

  if (nfds > 0) {
    struct cmsghdr *cmsg;

    memset(&control, 0, sizeof(control));
    msg.msg_control = control.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t) nfds);
    cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * (size_t) nfds);
    memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * (size_t) nfds);
  }

  do {
    n = sendmsg(sock, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);

  if (n < 0) {
    return -1;
  }
  if ((size_t) n != len) {
    errno = EIO;
    return -1;
  }
  return 0;
}

static void tnef_close_fds(const int *fds, int nfds) {
  int i;

  for (i = 0; i < nfds; i++) {
    (void) close(fds[i]);
  }
}

/* Receives one message; up to maxfds descriptors that came with it go to
 * fds (any others are closed).  Returns its length, 0 at end of file, or
 * -1 with errno (EMSGSIZE for a message that did not fit, whose
 * descriptors are closed).
 */
static ssize_t tnef_sock_recv(int sock, void *buf, size_t bufsz, int *fds,
    int maxfds, int *nfds) {
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * TNEF_HELPER_FDS)];
  } control;
  struct msghdr msg;
  struct cmsghdr *cmsg;
  struct iovec iov;
  ssize_t n;

  *nfds = 0;
  memset(&msg, 0, sizeof(msg));
  iov.iov_base = buf;
  iov.iov_len = bufsz;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.buf;
  msg.msg_controllen = sizeof(control.buf);

  n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  if (n < 0) {
    return -1;
  }

  for (cmsg = CMSG_FIRSTHDR(&msg); cmsg != NULL;
       cmsg = CMSG_NXTHDR(&msg, cmsg)) {
    size_t i, count;

    if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) {
      continue;
    }
    count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (i = 0; i < count; i++) {
      int fd;

      memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
      if (*nfds < maxfds) {
        fds[(*nfds)++] = fd;
      } else {
        (void) close(fd);
      }
    }
  }

  if (msg.msg_flags & (MSG_TRUNC|MSG_CTRUNC)) {
    tnef_close_fds(fds, *nfds);
    *nfds = 0;
    errno = EMSGSIZE;
    return -1;
  }
  return n;
}

/* ------------------------------------------------------------------------
 * The helper.  It is forked before its parent holds anything a decoder
 * should not see, and then only forks decoders: a decoder is a copy of it.
 * Like the child, it must never trace or log once its descriptors are
 * gone (their numbers get reused); its sinks are cleared at once.
 */

static void tnef_helper_noop(int sig) {
  (void) sig;
}

/* Everything at its default but SIGHUP (the daemon's restart signal: the
 * helper goes with its parent instead) and SIGPIPE.  SIGCHLD is caught but
 * blocked, let through only while the helper waits for a decoder (ppoll()
 * with *waitmask): a decoder's end interrupts that wait, never anything
 * else, and cannot slip in between a waitpid() and the wait.
 */
static void tnef_helper_signals(sigset_t *waitmask) {
  struct sigaction sa;
  sigset_t chld;

  tnef_child_signals();

  memset(&sa, 0, sizeof(sa));
  sigemptyset(&sa.sa_mask);
  sa.sa_handler = SIG_IGN;
  (void) sigaction(SIGHUP, &sa, NULL);
  (void) sigaction(SIGPIPE, &sa, NULL);
  sa.sa_handler = tnef_helper_noop;
  sa.sa_flags = SA_NOCLDSTOP;
  (void) sigaction(SIGCHLD, &sa, NULL);

  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  (void) sigprocmask(SIG_BLOCK, &chld, waitmask);
}

/* A client secret may sit in the environment (client-secret=env:NAME),
 * and the helper needs none: the strings are wiped, not just dropped.
 */
static void tnef_helper_wipe_env(void) {
  char **e;

  for (e = environ; e != NULL && *e != NULL; e++) {
    explicit_bzero(*e, strlen(*e));
  }
  (void) clearenv();
}

/* Only the socket stays, as TNEF_HELPER_SOCK_FD; 0, 1 and 2 become
 * /dev/null.  The socket is above 2 already (see
 * mailoauth_tnef_helper_start()), so neither move can close it.
 */
static int tnef_helper_fds(int sock) {
  if (sock != TNEF_HELPER_SOCK_FD && dup2(sock, TNEF_HELPER_SOCK_FD) < 0) {
    return -1;
  }

  tnef_stdio_null();
  tnef_child_close_from(TNEF_HELPER_SOCK_FD + 1);
  return 0;
}

/* After the init function (which drops privileges where there are any to
 * drop): no saved identity that could take them back, no ptrace by the
 * processes of its user (FTP sessions may run as it), no gaining any.
 */
static int tnef_helper_lockdown(pid_t parent) {
  if (setresgid(getegid(), getegid(), getegid()) < 0 ||
      setresuid(geteuid(), geteuid(), geteuid()) < 0) {
    return -1;
  }

#ifdef __linux__
  (void) prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  (void) prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  (void) prctl(PR_SET_NAME, "tnef helper", 0, 0, 0);
#endif

#ifdef PR_SET_PDEATHSIG
  /* Set after the identity changes, which clear it.  EOF on the socket
   * ends the helper too; this covers a parent that is stopped.
   */
  (void) prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
#endif
  if (getppid() != parent) {
    errno = ECHILD;
    return -1;
  }
  return 0;
}

static int tnef_helper_answer_send(int sock, unsigned char kind,
    uint32_t seq, uint32_t value) {
  unsigned char msg[TNEF_ANSWER_LEN];

  msg[0] = kind;
  tnef_put32(msg + 1, seq);
  tnef_put32(msg + 5, value);
  return tnef_sock_send(sock, msg, sizeof(msg), NULL, 0);
}

/* Kills and reaps the decoder, and ends: the parent is gone. */
static void tnef_helper_orphaned(pid_t pid)
#ifdef __GNUC__
  __attribute__((noreturn))
#endif
  ;

static void tnef_helper_orphaned(pid_t pid) {
  int status;

  (void) kill(pid, SIGKILL);
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  _exit(0);
}

/* A message while a decoder runs: its kill request, or the parent gone.
 * Another unpack request is answered EBUSY (the parent sends one at a
 * time); anything else is passed over.
 */
static void tnef_helper_control(pid_t pid, uint32_t seq) {
  unsigned char msg[TNEF_UNPACK_LEN + 1];
  int fds[TNEF_HELPER_FDS], nfds = 0;
  ssize_t n;

  n = tnef_sock_recv(TNEF_HELPER_SOCK_FD, msg, sizeof(msg), fds,
    TNEF_HELPER_FDS, &nfds);
  tnef_close_fds(fds, nfds);
  if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN &&
      errno != EMSGSIZE)) {
    tnef_helper_orphaned(pid);
  }

  if (n == TNEF_KILL_LEN && msg[0] == TNEF_MSG_KILL &&
      tnef_get32(msg + 1) == seq) {
    (void) kill(pid, SIGKILL);
  } else if (n >= TNEF_KILL_LEN && msg[0] == TNEF_MSG_UNPACK) {
    (void) tnef_helper_answer_send(TNEF_HELPER_SOCK_FD, TNEF_MSG_ERROR,
      tnef_get32(msg + 1), EBUSY);
  }
}

/* Until the decoder is reaped; then its status goes to the parent.  Only
 * this process reaps it, so a kill() here never hits a reused pid.
 */
static void tnef_helper_watch(pid_t pid, uint32_t seq,
    const sigset_t *waitmask) {
  for (;;) {
    struct pollfd pfd;
    int status = 0;
    pid_t res = waitpid(pid, &status, WNOHANG);

    if (res == pid) {
      if (tnef_helper_answer_send(TNEF_HELPER_SOCK_FD, TNEF_MSG_STATUS, seq,
          (uint32_t) status) < 0) {
        _exit(0);
      }
      return;
    }
    if (res < 0 && errno != EINTR) {
      (void) tnef_helper_answer_send(TNEF_HELPER_SOCK_FD, TNEF_MSG_ERROR,
        seq, ECHILD);
      return;
    }

    pfd.fd = TNEF_HELPER_SOCK_FD;
    pfd.events = POLLIN;
    pfd.revents = 0;
    if (ppoll(&pfd, 1, NULL, waitmask) > 0 && pfd.revents != 0) {
      tnef_helper_control(pid, seq);
    }
  }
}

/* The limits and size of an unpack request; -1 for one that is not. */
static int tnef_helper_request(const unsigned char *msg, size_t len,
    int nfds, uint64_t *in_size, struct mailoauth_tnef_limits *lim) {
  struct mailoauth_tnef_limits in;

  if (len != TNEF_UNPACK_LEN || msg[0] != TNEF_MSG_UNPACK ||
      nfds != TNEF_HELPER_FDS) {
    return -1;
  }

  *in_size = tnef_get64(msg + 5);
  in.max_input = tnef_get64(msg + 13);
  in.max_files = tnef_get32(msg + 21);
  in.max_file_bytes = tnef_get64(msg + 25);
  in.max_total_bytes = tnef_get64(msg + 33);
  in.timeout_ms = tnef_get32(msg + 41);
  tnef_limits_resolve(&in, lim);

  /* The parent checked it; the child's allocation relies on it. */
  if (*in_size > lim->max_input || *in_size > (uint64_t) SIZE_MAX / 2) {
    return -1;
  }
  return 0;
}

/* One message received between decoders. */
static void tnef_helper_serve(const unsigned char *msg, size_t len,
    int *fds, int nfds, const sigset_t *waitmask) {
  struct mailoauth_tnef_limits lim;
  uint64_t in_size = 0;
  uint32_t seq = len >= TNEF_KILL_LEN ? tnef_get32(msg + 1) : 0;
  pid_t pid, self = getpid();
  int xerrno;

  if (len == TNEF_KILL_LEN && msg[0] == TNEF_MSG_KILL) {
    /* Late: that decoder was reaped already. */
    tnef_close_fds(fds, nfds);
    return;
  }

  if (tnef_helper_request(msg, len, nfds, &in_size, &lim) < 0) {
    tnef_close_fds(fds, nfds);
    (void) tnef_helper_answer_send(TNEF_HELPER_SOCK_FD, TNEF_MSG_ERROR, seq,
      EBADMSG);
    return;
  }

  pid = fork();
  if (pid == 0) {
    tnef_child(fds[0], fds[1], in_size, &lim, self);
  }
  xerrno = errno;
  tnef_close_fds(fds, nfds);

  if (pid < 0) {
    (void) tnef_helper_answer_send(TNEF_HELPER_SOCK_FD, TNEF_MSG_ERROR, seq,
      (uint32_t) xerrno);
    return;
  }

  if (tnef_helper_answer_send(TNEF_HELPER_SOCK_FD, TNEF_MSG_PID, seq,
      (uint32_t) pid) < 0) {
    tnef_helper_orphaned(pid);
  }
  tnef_helper_watch(pid, seq, waitmask);
}

/* Tells the parent why the helper cannot serve, and ends. */
static void tnef_helper_give_up(int sock, int xerrno)
#ifdef __GNUC__
  __attribute__((noreturn))
#endif
  ;

static void tnef_helper_give_up(int sock, int xerrno) {
  (void) tnef_helper_answer_send(sock, TNEF_MSG_ERROR, 0,
    (uint32_t) (xerrno > 0 ? xerrno : EPERM));
  _exit(1);
}

static void tnef_helper_main(int sock, pid_t parent,
    mailoauth_tnef_helper_init_fn init, void *arg)
#ifdef __GNUC__
  __attribute__((noreturn))
#endif
  ;

static void tnef_helper_main(int sock, pid_t parent,
    mailoauth_tnef_helper_init_fn init, void *arg) {
  sigset_t waitmask;

  mailoauth_trace_set_sink(NULL);
  mailoauth_log_set_sink(NULL);
  tnef_helper_signals(&waitmask);
  tnef_helper_wipe_env();

  /* The init function runs while the parent's descriptors are still
   * open: whatever it logs goes where the parent's would.
   */
  errno = 0;
  if (init != NULL && init(arg) < 0) {
    tnef_helper_give_up(sock, errno);
  }
  if (tnef_helper_fds(sock) < 0) {
    tnef_helper_give_up(sock, errno);
  }
  if (tnef_helper_lockdown(parent) < 0) {
    tnef_helper_give_up(TNEF_HELPER_SOCK_FD, errno);
  }

  if (tnef_helper_answer_send(TNEF_HELPER_SOCK_FD, TNEF_MSG_READY, 0,
      0) < 0) {
    _exit(0);
  }

  for (;;) {
    unsigned char msg[TNEF_UNPACK_LEN + 1];
    int fds[TNEF_HELPER_FDS], nfds = 0;
    ssize_t n;

    n = tnef_sock_recv(TNEF_HELPER_SOCK_FD, msg, sizeof(msg), fds,
      TNEF_HELPER_FDS, &nfds);
    if (n == 0) {
      _exit(0);
    }
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) {
        continue;
      }
      if (errno != EMSGSIZE) {
        _exit(1);
      }
      (void) tnef_helper_answer_send(TNEF_HELPER_SOCK_FD, TNEF_MSG_ERROR, 0,
        EBADMSG);
      continue;
    }
    tnef_helper_serve(msg, (size_t) n, fds, nfds, &waitmask);
  }
}

/* ------------------------------------------------------------------------
 * The parent's reader.
 */

enum tnef_rstate {
  TNEF_R_TYPE,
  TNEF_R_FILE_HDR,
  TNEF_R_NAME,
  TNEF_R_SIZE,
  TNEF_R_DATA,
  TNEF_R_END_HDR,
  TNEF_R_DONE
};

struct mailoauth_tnef_reader {
  char *tmp_dir;
  struct mailoauth_tnef_limits lim;
  mailoauth_tnef_file_fn cb;
  void *arg;

  enum tnef_rstate state;
  int error;                    /* sticky errno, 0: none */

  unsigned char hdr[8];         /* a fixed-size field being gathered */
  size_t have;

  uint32_t codepage;
  uint32_t name_len;
  char name[MAILOAUTH_TNEF_MAX_NAME + 1];

  int fd;                       /* the current file's temporary file */
  uint64_t size, left;

  unsigned int count;           /* callbacks made */
  uint64_t total;               /* bytes announced so far */

  uint32_t status, flags;       /* from the end record */
};

struct mailoauth_tnef_reader *mailoauth_tnef_reader_new(const char *tmp_dir,
    const struct mailoauth_tnef_limits *lim, mailoauth_tnef_file_fn cb,
    void *arg) {
  struct mailoauth_tnef_reader *r;

  if (tmp_dir == NULL || cb == NULL) {
    errno = EINVAL;
    return NULL;
  }

  r = calloc(1, sizeof(*r));
  if (r == NULL) {
    errno = ENOMEM;
    return NULL;
  }
  r->tmp_dir = strdup(tmp_dir);
  if (r->tmp_dir == NULL) {
    free(r);
    errno = ENOMEM;
    return NULL;
  }
  tnef_limits_resolve(lim, &r->lim);
  r->cb = cb;
  r->arg = arg;
  r->state = TNEF_R_TYPE;
  r->fd = -1;
  return r;
}

void mailoauth_tnef_reader_free(struct mailoauth_tnef_reader *r) {
  if (r == NULL) {
    return;
  }
  if (r->fd >= 0) {
    (void) close(r->fd);
  }
  free(r->tmp_dir);
  free(r);
}

/* An anonymous file: nothing to clean up after a crash. */
static int tnef_tmpfile(const char *dir) {
  char *path;
  size_t len;
  int fd;

#ifdef O_TMPFILE
  fd = open(dir, O_TMPFILE|O_RDWR|O_CLOEXEC, 0600);
  if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR &&
      errno != EINVAL)) {
    return fd;
  }
#endif

  len = strlen(dir) + sizeof("/tnef.XXXXXX");
  path = malloc(len);
  if (path == NULL) {
    errno = ENOMEM;
    return -1;
  }
  snprintf(path, len, "%s/tnef.XXXXXX", dir);
  fd = mkostemp(path, O_CLOEXEC);
  if (fd >= 0) {
    (void) unlink(path);
  }
  free(path);
  return fd;
}

/* The iconv name of a Windows code page, for the names in 8-bit strings.
 * None (0) and unknown ones are left to mailoauth_mime_to_utf8()'s guess:
 * UTF-8 if valid, else windows-1252.
 */
static const char *tnef_charset(unsigned int cp, char *buf, size_t bufsz) {
  switch (cp) {
    case 0:
      return NULL;
    case TNEF_CP_UTF8:
      return "UTF-8";
    case 20127:
      return "US-ASCII";
    case 20866:
      return "KOI8-R";
    case 21866:
      return "KOI8-U";
    case 50220:
    case 50221:
    case 50222:
      return "ISO-2022-JP";
    case 51932:
      return "EUC-JP";
    case 51949:
      return "EUC-KR";
    case 54936:
      return "GB18030";
    case 10000:
      return "MACINTOSH";
  }

  if (cp >= 28591 && cp <= 28605) {
    snprintf(buf, bufsz, "ISO-8859-%u", cp - 28590);
  } else {
    snprintf(buf, bufsz, "CP%u", cp);
  }
  return buf;
}

static int tnef_reader_fail(struct mailoauth_tnef_reader *r, int xerrno) {
  if (r->fd >= 0) {
    (void) close(r->fd);
    r->fd = -1;
  }
  r->error = xerrno;
  errno = xerrno;
  return -1;
}

static int tnef_reader_deliver(struct mailoauth_tnef_reader *r) {
  char cs[32], *conv = NULL;
  const char *name = NULL;
  int rc, xerrno;

  /* Even a UTF-8 name goes through the conversion: invalid sequences
   * become U+FFFD, so the callback always gets valid UTF-8.
   */
  if (r->name_len > 0) {
    conv = mailoauth_mime_to_utf8(tnef_charset(r->codepage, cs, sizeof(cs)),
      r->name, r->name_len, NULL);
    if (conv == NULL) {
      return tnef_reader_fail(r, ENOMEM);
    }
    name = conv;
  }

  mailoauth_trace(trace_channel, 9, "file %u: '%s', %llu bytes", r->count + 1,
    name != NULL ? name : "(no name)", (unsigned long long) r->size);

  r->count++;
  errno = 0;
  rc = r->cb(name, r->fd, r->size, r->arg);
  xerrno = errno != 0 ? errno : ECANCELED;
  free(conv);

  (void) close(r->fd);
  r->fd = -1;
  r->state = TNEF_R_TYPE;

  if (rc < 0) {
    mailoauth_trace(trace_channel, 5, "callback stopped unpacking at file "
      "%u: %s", r->count, strerror(xerrno));
    return tnef_reader_fail(r, xerrno);
  }
  return 0;
}

/* A fixed-size field is complete in r->hdr. */
static int tnef_reader_field(struct mailoauth_tnef_reader *r) {
  r->have = 0;

  switch (r->state) {
    case TNEF_R_FILE_HDR:
      r->codepage = tnef_get32(r->hdr);
      r->name_len = tnef_get32(r->hdr + 4);
      if (r->name_len > MAILOAUTH_TNEF_MAX_NAME) {
        mailoauth_trace(trace_channel, 3, "decoder sent a name of %lu bytes",
          (unsigned long) r->name_len);
        return tnef_reader_fail(r, EIO);
      }
      r->state = r->name_len > 0 ? TNEF_R_NAME : TNEF_R_SIZE;
      return 0;

    case TNEF_R_SIZE:
      r->size = tnef_get64(r->hdr);
      if (r->size > r->lim.max_file_bytes ||
          r->size > r->lim.max_total_bytes - r->total) {
        mailoauth_trace(trace_channel, 3, "decoder sent a file of %llu bytes "
          "after %llu: over the limits", (unsigned long long) r->size,
          (unsigned long long) r->total);
        return tnef_reader_fail(r, EFBIG);
      }
      r->total += r->size;

      r->fd = tnef_tmpfile(r->tmp_dir);
      if (r->fd < 0) {
        int xerrno = errno;

        mailoauth_trace(trace_channel, 3, "cannot create a temporary file in "
          "'%s': %s", r->tmp_dir, strerror(xerrno));
        return tnef_reader_fail(r, xerrno);
      }
      r->left = r->size;
      r->state = TNEF_R_DATA;
      return r->left == 0 ? tnef_reader_deliver(r) : 0;

    case TNEF_R_END_HDR:
      r->status = tnef_get32(r->hdr);
      r->flags = tnef_get32(r->hdr + 4);
      if (r->status > TNEF_ST_MAX || (r->flags & ~TNEF_FL_SECCOMP) != 0) {
        mailoauth_trace(trace_channel, 3, "decoder sent a bad end record");
        return tnef_reader_fail(r, EIO);
      }
      r->state = TNEF_R_DONE;
      return 0;

    default:
      return tnef_reader_fail(r, EIO);
  }
}

int mailoauth_tnef_reader_feed(struct mailoauth_tnef_reader *r,
    const void *buf, size_t len) {
  const unsigned char *p = buf;

  if (r == NULL || (p == NULL && len > 0)) {
    errno = EINVAL;
    return -1;
  }
  if (r->error != 0) {
    errno = r->error;
    return -1;
  }

  while (len > 0) {
    size_t n;

    switch (r->state) {
      case TNEF_R_TYPE:
        if (*p == TNEF_REC_FILE) {
          if (r->count >= r->lim.max_files) {
            mailoauth_trace(trace_channel, 3, "decoder sent more than %u files",
              r->lim.max_files);
            return tnef_reader_fail(r, EFBIG);
          }
          r->state = TNEF_R_FILE_HDR;
        } else if (*p == TNEF_REC_END) {
          r->state = TNEF_R_END_HDR;
        } else {
          mailoauth_trace(trace_channel, 3, "decoder sent record type 0x%02x",
            *p);
          return tnef_reader_fail(r, EIO);
        }
        r->have = 0;
        p++;
        len--;
        break;

      case TNEF_R_FILE_HDR:
      case TNEF_R_SIZE:
      case TNEF_R_END_HDR:
        n = sizeof(r->hdr) - r->have;
        if (n > len) {
          n = len;
        }
        memcpy(r->hdr + r->have, p, n);
        r->have += n;
        p += n;
        len -= n;
        if (r->have == sizeof(r->hdr) && tnef_reader_field(r) < 0) {
          return -1;
        }
        break;

      case TNEF_R_NAME:
        n = r->name_len - r->have;
        if (n > len) {
          n = len;
        }
        memcpy(r->name + r->have, p, n);
        r->have += n;
        p += n;
        len -= n;
        if (r->have == r->name_len) {
          if (memchr(r->name, '\0', r->name_len) != NULL) {
            mailoauth_trace(trace_channel, 3, "decoder sent a name with NUL");
            return tnef_reader_fail(r, EIO);
          }
          r->name[r->name_len] = '\0';
          r->have = 0;
          r->state = TNEF_R_SIZE;
        }
        break;

      case TNEF_R_DATA:
        n = r->left < len ? (size_t) r->left : len;
        if (mailoauth_spool_write_all(r->fd, p, n) < 0) {
          int xerrno = errno;

          mailoauth_trace(trace_channel, 3, "cannot write a temporary file in "
            "'%s': %s", r->tmp_dir, strerror(xerrno));
          return tnef_reader_fail(r, xerrno);
        }
        r->left -= n;
        p += n;
        len -= n;
        if (r->left == 0 && tnef_reader_deliver(r) < 0) {
          return -1;
        }
        break;

      case TNEF_R_DONE:
        mailoauth_trace(trace_channel, 3, "decoder sent data after its end");
        return tnef_reader_fail(r, EIO);
    }
  }

  return 0;
}

int mailoauth_tnef_reader_finish(struct mailoauth_tnef_reader *r,
    unsigned int *nfiles, int *sandboxed) {
  static const int errs[] = { 0, EBADMSG, EFBIG, ENOMEM, EIO };

  if (nfiles != NULL) {
    *nfiles = r != NULL ? r->count : 0;
  }
  if (sandboxed != NULL) {
    *sandboxed = r != NULL && r->state == TNEF_R_DONE &&
      (r->flags & TNEF_FL_SECCOMP) != 0;
  }
  if (r == NULL) {
    errno = EINVAL;
    return -1;
  }
  if (r->error != 0) {
    errno = r->error;
    return -1;
  }
  if (r->state != TNEF_R_DONE) {
    return tnef_reader_fail(r, ECHILD);
  }
  if (r->status != TNEF_ST_OK) {
    errno = errs[r->status];
    return -1;
  }
  return 0;
}

/* ------------------------------------------------------------------------
 * The parent's side: the helper, and running a decoder through it.
 */

static int tnef_helper_sock = -1;
static pid_t tnef_helper_child = -1;    /* the helper's pid */
static pid_t tnef_helper_owner = -1;    /* the process that started it */
static uint32_t tnef_helper_seq = 0;

static long long tnef_now_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reaps pid, giving it up to grace_ms to exit by itself first and killing
 * it after that.  Returns 1 with *status set, or 0 when the status is
 * unknown (the process was reaped elsewhere).
 */
static int tnef_reap(pid_t pid, long long grace_ms, int *status) {
  long long deadline = tnef_now_ms() + grace_ms;
  long pause_ns = 100000;
  pid_t res;

  for (;;) {
    res = waitpid(pid, status, WNOHANG);
    if (res == pid) {
      return 1;
    }
    if (res < 0 && errno != EINTR) {
      return 0;
    }
    if (res == 0) {
      struct timespec ts;

      if (tnef_now_ms() >= deadline) {
        break;
      }
      ts.tv_sec = 0;
      ts.tv_nsec = pause_ns;
      (void) nanosleep(&ts, NULL);
      if (pause_ns < 20000000) {
        pause_ns *= 2;
      }
    }
  }

  (void) kill(pid, SIGKILL);
  for (;;) {
    res = waitpid(pid, status, 0);
    if (res == pid) {
      return 1;
    }
    if (res < 0 && errno != EINTR) {
      return 0;
    }
  }
}

/* A helper inherited through fork() is its parent's, not this process's. */
static int tnef_helper_usable(void) {
  return tnef_helper_sock >= 0 && tnef_helper_owner == getpid();
}

static void tnef_helper_forget(void) {
  if (tnef_helper_sock >= 0) {
    (void) close(tnef_helper_sock);
  }
  tnef_helper_sock = -1;
  tnef_helper_child = -1;
  tnef_helper_owner = -1;
}

/* The helper is gone, or of no use any more: it is killed and reaped (no
 * zombie is left), and, unless why is NULL, the operator is told once:
 * nothing is unpacked from now on.
 */
static void tnef_helper_lost(const char *why) {
  pid_t pid = tnef_helper_child;
  int status;

  if (!tnef_helper_usable()) {
    return;
  }
  tnef_helper_forget();
  (void) tnef_reap(pid, 0, &status);

  if (why != NULL) {
    mailoauth_log("TNEF helper (pid %ld) %s; winmail.dat files are no longer "
      "unpacked, but deposited as they are", (long) pid, why);
  }
}

/* With proftpd -n, descriptors 0-2 may be free; a socket there would be
 * taken for standard I/O (the helper's become /dev/null).
 */
static int tnef_fd_above_stdio(int *fd) {
  int moved;

  if (*fd > STDERR_FILENO) {
    return 0;
  }
  moved = fcntl(*fd, F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
  if (moved < 0) {
    return -1;
  }
  (void) close(*fd);
  *fd = moved;
  return 0;
}

/* Waits up to timeout_ms for the helper's answer about request seq;
 * answers about other requests are stale and passed over.  Returns 1 with
 * *kind and *value set, 0 on timeout, -1 when the helper is gone or sent
 * something malformed (*why says which).
 */
static int tnef_helper_wait(uint32_t seq, long long timeout_ms,
    unsigned char *kind, uint32_t *value, const char **why) {
  long long deadline = tnef_now_ms() + timeout_ms;

  for (;;) {
    unsigned char msg[TNEF_ANSWER_LEN + 1];
    long long left = deadline - tnef_now_ms();
    struct pollfd pfd;
    ssize_t n;
    int nfds, rc;

    pfd.fd = tnef_helper_sock;
    pfd.events = POLLIN;
    pfd.revents = 0;
    rc = poll(&pfd, 1, left <= 0 ? 0 : left > INT_MAX ? INT_MAX : (int) left);
    if (rc < 0 && errno == EINTR) {
      continue;
    }
    if (rc == 0) {
      return 0;
    }

    n = rc < 0 ? -1 : tnef_sock_recv(tnef_helper_sock, msg, sizeof(msg), NULL,
      0, &nfds);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
      continue;
    }
    if (n != TNEF_ANSWER_LEN) {
      *why = n == 0 ? "ended" : n > 0 || errno == EMSGSIZE ?
        "sent a malformed message" : "cannot be reached";
      return -1;
    }

    if (tnef_get32(msg + 1) != seq) {
      mailoauth_trace(trace_channel, 5, "passing over a stale answer from "
        "the TNEF helper");
      continue;
    }
    *kind = msg[0];
    *value = tnef_get32(msg + 5);
    return 1;
  }
}

static int tnef_helper_send_kill(uint32_t seq) {
  unsigned char msg[TNEF_KILL_LEN];

  msg[0] = TNEF_MSG_KILL;
  tnef_put32(msg + 1, seq);
  if (tnef_sock_send(tnef_helper_sock, msg, sizeof(msg), NULL, 0) < 0) {
    tnef_helper_lost("is gone");
    return -1;
  }
  return 0;
}

/* Has the helper fork a decoder reading in_fd and writing to out_fd.
 * Returns its pid, or -1 with errno (ESRCH: the helper is gone).
 */
static pid_t tnef_helper_spawn(int in_fd, int out_fd, uint64_t in_size,
    const struct mailoauth_tnef_limits *l, uint32_t *seq) {
  unsigned char msg[TNEF_UNPACK_LEN], kind = 0;
  int fds[TNEF_HELPER_FDS];
  const char *why = "did not answer";
  uint32_t value = 0;
  int rc;

  /* 0 is the ready message's. */
  if (++tnef_helper_seq == 0) {
    tnef_helper_seq = 1;
  }
  *seq = tnef_helper_seq;

  msg[0] = TNEF_MSG_UNPACK;
  tnef_put32(msg + 1, *seq);
  tnef_put64(msg + 5, in_size);
  tnef_put64(msg + 13, l->max_input);
  tnef_put32(msg + 21, l->max_files);
  tnef_put64(msg + 25, l->max_file_bytes);
  tnef_put64(msg + 33, l->max_total_bytes);
  tnef_put32(msg + 41, l->timeout_ms);
  fds[0] = in_fd;
  fds[1] = out_fd;

  if (tnef_sock_send(tnef_helper_sock, msg, sizeof(msg), fds,
      TNEF_HELPER_FDS) < 0) {
    tnef_helper_lost("is gone");
    errno = ESRCH;
    return -1;
  }

  rc = tnef_helper_wait(*seq, TNEF_HELPER_ANSWER_MS, &kind, &value, &why);
  if (rc > 0 && kind == TNEF_MSG_PID && value > 0 && value <= INT_MAX) {
    return (pid_t) value;
  }
  if (rc > 0 && kind == TNEF_MSG_ERROR && value > 0 && value < 4096) {
    mailoauth_trace(trace_channel, 3, "the TNEF helper cannot fork a "
      "decoder: %s", strerror((int) value));
    errno = (int) value;
    return -1;
  }

  tnef_helper_lost(rc > 0 ? "sent a malformed message" : why);
  errno = ESRCH;
  return -1;
}

/* The decoder's wait status, from the helper once it reaped it: waited for
 * up to grace_ms (the decoder is on its way out), then the helper is told
 * to kill it (at once for a grace_ms of 0).  Returns 1 with *status set,
 * 0 when it is unknown (the helper is gone).
 */
static int tnef_helper_collect(uint32_t seq, long long grace_ms,
    int *status) {
  const char *why = "did not answer";
  unsigned char kind = 0;
  uint32_t value = 0;
  int rc = 0;

  if (grace_ms > 0) {
    rc = tnef_helper_wait(seq, grace_ms, &kind, &value, &why);
  }
  if (rc == 0) {
    if (tnef_helper_send_kill(seq) < 0) {
      return 0;
    }
    rc = tnef_helper_wait(seq, TNEF_HELPER_ANSWER_MS, &kind, &value, &why);
  }

  if (rc > 0 && kind == TNEF_MSG_STATUS) {
    *status = (int) value;
    return 1;
  }
  tnef_helper_lost(rc > 0 ? "sent a malformed message" : why);
  return 0;
}

int mailoauth_tnef_helper_start(mailoauth_tnef_helper_init_fn init,
    void *arg) {
  const char *why = NULL;
  unsigned char kind = 0;
  uint32_t value = 0;
  pid_t pid, self = getpid();
  int sv[2], rc, xerrno;

  if (tnef_helper_usable()) {
    errno = EBUSY;
    return -1;
  }
  tnef_helper_forget();

  if (socketpair(AF_UNIX, SOCK_SEQPACKET|SOCK_CLOEXEC, 0, sv) < 0) {
    return -1;
  }
  if (tnef_fd_above_stdio(&sv[0]) < 0 || tnef_fd_above_stdio(&sv[1]) < 0) {
    xerrno = errno;
    (void) close(sv[0]);
    (void) close(sv[1]);
    errno = xerrno;
    return -1;
  }

  pid = fork();
  if (pid < 0) {
    xerrno = errno;
    (void) close(sv[0]);
    (void) close(sv[1]);
    errno = xerrno;
    return -1;
  }
  if (pid == 0) {
    (void) close(sv[0]);
    tnef_helper_main(sv[1], self, init, arg);
  }

  (void) close(sv[1]);
  tnef_helper_sock = sv[0];
  tnef_helper_child = pid;
  tnef_helper_owner = self;

  rc = tnef_helper_wait(0, TNEF_HELPER_ANSWER_MS, &kind, &value, &why);
  if (rc > 0 && kind == TNEF_MSG_READY) {
    mailoauth_trace(trace_channel, 3, "TNEF helper %ld ready", (long) pid);
    return tnef_helper_sock;
  }

  xerrno = rc == 0 ? ETIMEDOUT : rc > 0 && kind == TNEF_MSG_ERROR &&
    value > 0 && value < 4096 ? (int) value : ECHILD;
  mailoauth_trace(trace_channel, 3, "TNEF helper %ld did not start: %s",
    (long) pid, strerror(xerrno));
  tnef_helper_lost(NULL);
  errno = xerrno;
  return -1;
}

pid_t mailoauth_tnef_helper_pid(void) {
  return tnef_helper_usable() ? tnef_helper_child : -1;
}

int mailoauth_tnef_helper_stop(void) {
  pid_t pid = tnef_helper_child;
  int status = 0;

  if (!tnef_helper_usable()) {
    tnef_helper_forget();
    errno = ESRCH;
    return -1;
  }

  tnef_helper_forget();
  if (tnef_reap(pid, TNEF_HELPER_STOP_MS, &status) &&
      WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    return 0;
  }
  mailoauth_trace(trace_channel, 3, "TNEF helper %ld did not end by itself",
    (long) pid);
  errno = ECHILD;
  return -1;
}

/* The error for a stream cut short, from how the child ended. */
static int tnef_child_error(int known, int status) {
  if (!known) {
    mailoauth_trace(trace_channel, 3, "decoder ended without finishing, "
      "and its helper is gone");
    return ESRCH;
  }

  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);

    mailoauth_trace(trace_channel, 3, "decoder killed by signal %d (%s)%s",
      sig, strsignal(sig), sig == SIGXCPU ? ": CPU time limit" :
      sig == SIGSYS ? ": forbidden system call" : "");
    return sig == SIGXCPU ? ETIMEDOUT : ECHILD;
  }

  mailoauth_trace(trace_channel, 3, "decoder exited with status %d without "
    "finishing", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  return ECHILD;
}

/* Feeds r what comes down the pipe, until its end or timeout_ms of waiting
 * in all (*waited).  Returns 0, or the errno that stopped it.
 */
static int tnef_pump(int fd, struct mailoauth_tnef_reader *r,
    unsigned int timeout_ms, long long *waited) {
  unsigned char buf[TNEF_READ_CHUNK];

  for (;;) {
    struct pollfd pfd;
    long long t0, left = (long long) timeout_ms - *waited;
    ssize_t n;
    int rc;

    if (left <= 0) {
      return ETIMEDOUT;
    }

    pfd.fd = fd;
    pfd.events = POLLIN;
    pfd.revents = 0;
    t0 = tnef_now_ms();
    rc = poll(&pfd, 1, left > INT_MAX ? INT_MAX : (int) left);
    *waited += tnef_now_ms() - t0;
    if (rc < 0) {
      if (errno == EINTR) {
        continue;
      }
      return errno;
    }
    if (rc == 0) {
      return ETIMEDOUT;
    }

    n = read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) {
        continue;
      }
      return errno;
    }
    if (n == 0) {
      return 0;
    }
    if (mailoauth_tnef_reader_feed(r, buf, (size_t) n) < 0) {
      return errno;
    }
  }
}

/* Checks the arguments and the input's size; -1 with errno. */
static int tnef_unpack_check(int in_fd, const char *tmp_dir,
    mailoauth_tnef_file_fn cb, const struct mailoauth_tnef_limits *l,
    uint64_t *in_size) {
  struct stat st;

  if (in_fd < 0 || tmp_dir == NULL || cb == NULL) {
    errno = EINVAL;
    return -1;
  }
  if (fstat(in_fd, &st) < 0) {
    return -1;
  }
  if (!S_ISREG(st.st_mode)) {
    errno = EINVAL;
    return -1;
  }
  if ((uint64_t) st.st_size > l->max_input) {
    mailoauth_trace(trace_channel, 5, "winmail.dat of %llu bytes, over the "
      "limit of %llu", (unsigned long long) st.st_size,
      (unsigned long long) l->max_input);
    errno = EFBIG;
    return -1;
  }

  /* Never fork from here: this process may hold what no decoder should
   * see, which is what the helper is for.
   */
  if (!tnef_helper_usable()) {
    mailoauth_trace(trace_channel, 3, "no TNEF helper: winmail.dat not "
      "unpacked");
    errno = ESRCH;
    return -1;
  }

  *in_size = (uint64_t) st.st_size;
  return 0;
}

int mailoauth_tnef_unpack(int in_fd, const char *tmp_dir,
    const struct mailoauth_tnef_limits *lim, mailoauth_tnef_file_fn cb,
    void *arg, unsigned int *nfiles) {
  struct mailoauth_tnef_limits l;
  struct mailoauth_tnef_reader *r;
  uint64_t in_size = 0;
  long long waited = 0;
  int pipefd[2], xerrno = 0, status = 0, known, sandboxed = 0;
  unsigned int count = 0;
  uint32_t seq = 0;
  pid_t pid;

  if (nfiles != NULL) {
    *nfiles = 0;
  }

  tnef_limits_resolve(lim, &l);
  if (tnef_unpack_check(in_fd, tmp_dir, cb, &l, &in_size) < 0) {
    return -1;
  }

  r = mailoauth_tnef_reader_new(tmp_dir, &l, cb, arg);
  if (r == NULL) {
    return -1;
  }

  if (pipe2(pipefd, O_CLOEXEC) < 0) {
    xerrno = errno;
    mailoauth_tnef_reader_free(r);
    errno = xerrno;
    return -1;
  }

  pid = tnef_helper_spawn(in_fd, pipefd[1], in_size, &l, &seq);
  xerrno = errno;
  (void) close(pipefd[1]);
  if (pid < 0) {
    (void) close(pipefd[0]);
    mailoauth_tnef_reader_free(r);
    errno = xerrno;
    return -1;
  }
  mailoauth_trace(trace_channel, 9, "decoder %ld unpacking %llu bytes",
    (long) pid, (unsigned long long) in_size);

  xerrno = tnef_pump(pipefd[0], r, l.timeout_ms, &waited);
  (void) close(pipefd[0]);

  if (xerrno != 0) {
    if (xerrno == ETIMEDOUT) {
      mailoauth_trace(trace_channel, 3, "decoder %ld took longer than %u ms, "
        "killed", (long) pid, l.timeout_ms);
    }
    (void) tnef_helper_collect(seq, 0, &status);
    (void) mailoauth_tnef_reader_finish(r, &count, NULL);

  } else {
    long long grace = (long long) l.timeout_ms - waited;

    known = tnef_helper_collect(seq, grace > 1000 ? grace : 1000, &status);
    if (mailoauth_tnef_reader_finish(r, &count, &sandboxed) < 0) {
      xerrno = errno;
      if (xerrno == ECHILD) {
        xerrno = tnef_child_error(known, status);
      }
    } else if (!sandboxed) {
      mailoauth_trace(trace_channel, 3, "decoder ran without its seccomp "
        "filter");
    }
  }

  mailoauth_tnef_reader_free(r);
  if (nfiles != NULL) {
    *nfiles = count;
  }

  if (xerrno != 0) {
    mailoauth_trace(trace_channel, 5, "unpacking failed after %u files: %s",
      count, strerror(xerrno));
    errno = xerrno;
    return -1;
  }

  mailoauth_trace(trace_channel, 8, "unpacked %u files", count);
  return 0;
}
