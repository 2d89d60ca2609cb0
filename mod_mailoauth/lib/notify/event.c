/*
 * mod_mailoauth - upload event records
 *
 * Record layout (all integers big-endian):
 *   "MOE1" | u32 payload length | payload | u32 FNV-1a of payload
 * Payload: a sequence of fields, each  u8 tag | u32 length | bytes.
 */

#include "mailoauth/event.h"

#include <errno.h>
#include <string.h>

static void mailoauth_event_put32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char) (v >> 24);
  p[1] = (unsigned char) (v >> 16);
  p[2] = (unsigned char) (v >> 8);
  p[3] = (unsigned char) v;
}

static uint32_t mailoauth_event_get32(const unsigned char *p) {
  return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) |
    ((uint32_t) p[2] << 8) | (uint32_t) p[3];
}

/* A checksum only has to catch torn or stale bytes in the worker's own queue
 * files, not an adversary: in the journals, records are authenticated by the
 * journal's framing (spool.h).
 */
static uint32_t mailoauth_event_fnv1a(const unsigned char *p, size_t len) {
  uint32_t h = 2166136261u;
  size_t i;

  for (i = 0; i < len; i++) {
    h ^= p[i];
    h *= 16777619u;
  }

  return h;
}

void mailoauth_event_buf_init(struct mailoauth_event_buf *b,
    unsigned char *storage, size_t size) {
  b->data = storage;
  b->size = size;
  b->len = MAILOAUTH_EVENT_HEADER_LEN;
}

int mailoauth_event_add(struct mailoauth_event_buf *b, unsigned char tag,
    const char *value, size_t len) {
  size_t need;

  if (value == NULL) {
    value = "";
    len = 0;
  }

  need = 5 + len;
  if (b->len > b->size ||
      need > b->size - b->len ||
      b->size - b->len - need < MAILOAUTH_EVENT_TRAILER_LEN ||
      b->len - MAILOAUTH_EVENT_HEADER_LEN + need >
        MAILOAUTH_EVENT_MAX_PAYLOAD) {
    errno = ENOSPC;
    return -1;
  }

  b->data[b->len] = tag;
  mailoauth_event_put32(b->data + b->len + 1, (uint32_t) len);
  memcpy(b->data + b->len + 5, value, len);
  b->len += need;
  return 0;
}

int mailoauth_event_add_str(struct mailoauth_event_buf *b, unsigned char tag,
    const char *value) {
  return mailoauth_event_add(b, tag, value, value ? strlen(value) : 0);
}

ssize_t mailoauth_event_finish(struct mailoauth_event_buf *b) {
  size_t payload_len;

  if (b->len < MAILOAUTH_EVENT_HEADER_LEN ||
      b->size - b->len < MAILOAUTH_EVENT_TRAILER_LEN) {
    errno = ENOSPC;
    return -1;
  }

  payload_len = b->len - MAILOAUTH_EVENT_HEADER_LEN;
  memcpy(b->data, MAILOAUTH_EVENT_MAGIC, 4);
  mailoauth_event_put32(b->data + 4, (uint32_t) payload_len);
  mailoauth_event_put32(b->data + b->len,
    mailoauth_event_fnv1a(b->data + MAILOAUTH_EVENT_HEADER_LEN, payload_len));
  b->len += MAILOAUTH_EVENT_TRAILER_LEN;
  return (ssize_t) b->len;
}

ssize_t mailoauth_event_parse(const unsigned char *data, size_t len,
    struct mailoauth_event *ev) {
  uint32_t payload_len;
  size_t total, off, end;

  ev->nfields = 0;

  /* A prefix of the magic may be a record still being appended. */
  if (len < 4) {
    if (memcmp(data, MAILOAUTH_EVENT_MAGIC, len) != 0) {
      errno = EILSEQ;
      return -1;
    }
    return 0;
  }

  if (memcmp(data, MAILOAUTH_EVENT_MAGIC, 4) != 0) {
    errno = EILSEQ;
    return -1;
  }

  if (len < MAILOAUTH_EVENT_HEADER_LEN) {
    return 0;
  }

  payload_len = mailoauth_event_get32(data + 4);
  if (payload_len > MAILOAUTH_EVENT_MAX_PAYLOAD) {
    errno = EILSEQ;
    return -1;
  }

  total = MAILOAUTH_EVENT_HEADER_LEN + (size_t) payload_len +
    MAILOAUTH_EVENT_TRAILER_LEN;
  if (len < total) {
    return 0;
  }

  end = MAILOAUTH_EVENT_HEADER_LEN + payload_len;
  if (mailoauth_event_get32(data + end) !=
      mailoauth_event_fnv1a(data + MAILOAUTH_EVENT_HEADER_LEN, payload_len)) {
    errno = EILSEQ;
    return -1;
  }

  off = MAILOAUTH_EVENT_HEADER_LEN;
  while (off < end) {
    uint32_t flen;
    struct mailoauth_event_field *f;

    if (end - off < 5 ||
        ev->nfields >= MAILOAUTH_EVENT_MAX_FIELDS) {
      errno = EILSEQ;
      return -1;
    }

    flen = mailoauth_event_get32(data + off + 1);
    if (flen > end - off - 5) {
      errno = EILSEQ;
      return -1;
    }

    f = &ev->fields[ev->nfields++];
    f->tag = data[off];
    f->value = (const char *) data + off + 5;
    f->len = flen;
    off += 5 + flen;
  }

  return (ssize_t) total;
}

const struct mailoauth_event_field *mailoauth_event_get(
    const struct mailoauth_event *ev, unsigned char tag) {
  unsigned int i;

  for (i = 0; i < ev->nfields; i++) {
    if (ev->fields[i].tag == tag) {
      return &ev->fields[i];
    }
  }

  return NULL;
}

const struct mailoauth_event_field *mailoauth_event_next(
    const struct mailoauth_event *ev, unsigned char tag,
    const struct mailoauth_event_field *prev) {
  unsigned int i = 0;

  if (prev != NULL) {
    i = (unsigned int) (prev - ev->fields) + 1;
  }

  for (; i < ev->nfields; i++) {
    if (ev->fields[i].tag == tag) {
      return &ev->fields[i];
    }
  }

  return NULL;
}

const char *mailoauth_event_str(const struct mailoauth_event *ev,
    unsigned char tag, char *buf, size_t bufsz) {
  const struct mailoauth_event_field *f = mailoauth_event_get(ev, tag);
  size_t len = 0;

  if (bufsz == 0) {
    return "";
  }

  if (f != NULL) {
    len = f->len < bufsz - 1 ? f->len : bufsz - 1;
    memcpy(buf, f->value, len);
  }

  buf[len] = '\0';
  return buf;
}

int mailoauth_event_u64(const struct mailoauth_event *ev, unsigned char tag,
    uint64_t *out) {
  const struct mailoauth_event_field *f = mailoauth_event_get(ev, tag);
  uint64_t v = 0;
  uint32_t i;

  if (f == NULL) {
    errno = ENOENT;
    return -1;
  }

  if (f->len == 0 ||
      f->len > 20) {
    errno = EINVAL;
    return -1;
  }

  for (i = 0; i < f->len; i++) {
    unsigned int d = (unsigned char) f->value[i] - '0';

    if (d > 9 ||
        v > (UINT64_MAX - d) / 10) {
      errno = EINVAL;
      return -1;
    }
    v = v * 10 + d;
  }

  *out = v;
  return 0;
}
