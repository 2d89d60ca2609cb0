/*
 * libFuzzer target: upload event records and the journal drain.
 *
 * The worker reads records that session processes wrote; a damaged journal
 * (a crash mid-write, a full disk) must cost at most the damaged records,
 * never the worker.  Any input is parsed record by record, and every field
 * must lie inside the input.
 */

#include "mailoauth/event.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  size_t pos = 0;

  while (pos < size) {
    struct mailoauth_event ev;
    ssize_t n = mailoauth_event_parse(data + pos, size - pos, &ev);
    unsigned int i;

    if (n == 0) {
      break;
    }

    if (n < 0) {
      /* Nothing after a bad record can be framed: the spool never looks
       * for a record inside data.
       */
      break;
    }

    if ((size_t) n > size - pos) {
      abort();
    }

    for (i = 0; i < ev.nfields; i++) {
      const uint8_t *v = (const uint8_t *) ev.fields[i].value;

      if (v < data + pos ||
          v + ev.fields[i].len > data + pos + (size_t) n) {
        abort();
      }
    }

    pos += (size_t) n;
  }

  /* Round trip: what the builder makes, the parser reads back. */
  if (size > 0 && size < 4096) {
    unsigned char buf[8192];
    struct mailoauth_event_buf b;
    struct mailoauth_event ev;
    ssize_t len;

    mailoauth_event_buf_init(&b, buf, sizeof(buf));
    if (mailoauth_event_add(&b, data[0], (const char *) data + 1,
        size - 1) == 0 &&
        (len = mailoauth_event_finish(&b)) > 0) {
      const struct mailoauth_event_field *f;

      if (mailoauth_event_parse(buf, (size_t) len, &ev) != len) {
        abort();
      }
      f = mailoauth_event_get(&ev, data[0]);
      if (f == NULL || f->len != size - 1 ||
          memcmp(f->value, data + 1, size - 1) != 0) {
        abort();
      }
    }
  }

  return 0;
}
