/*
 * libFuzzer target: winmail.dat (TNEF) decoding and the parent's reader of
 * the decoder's records.  Neither the TNEF helper nor the child process is
 * forked here (t/unit/test_tnef.c covers them): the decoder runs in this
 * process, and the reader is fed the bytes a misbehaving child could
 * send.
 *
 * Input: a selector byte (bit 0: reader instead of decoder), a byte for
 * the limits and the failing callback, then the TNEF stream or the
 * records.  The decoder runs twice (the same files must come out) and once
 * more with a callback that fails; the reader is fed the whole input at
 * once and again in chunks of pseudo-random sizes, with the same outcome.
 * Every file must be within the limits, every name a NUL-terminated string
 * of the announced length.
 */

#include "mailoauth/tnef.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct fuzz_run {
  struct mailoauth_tnef_limits lim;
  uint64_t hash;
  uint64_t total;
  unsigned int calls;
  unsigned int fail_at;         /* callback number that returns -1, 0: none */
};

static uint64_t fuzz_fnv(uint64_t h, const void *d, size_t n) {
  const unsigned char *p = d;
  size_t i;

  for (i = 0; i < n; i++) {
    h ^= p[i];
    h *= 1099511628211ULL;
  }
  return h;
}

static void fuzz_limits(struct fuzz_run *r, unsigned char cfg) {
  mailoauth_tnef_limits_init(&r->lim);
  if (cfg & 0x01) {
    r->lim.max_files = 1 + (cfg >> 5);
  }
  if (cfg & 0x02) {
    r->lim.max_file_bytes = 64;
  }
  if (cfg & 0x04) {
    r->lim.max_total_bytes = 300;
  }
  if (cfg & 0x08) {
    r->lim.max_input = 4096;
  }
  r->hash = 14695981039346656037ULL;
  r->total = 0;
  r->calls = 0;
  r->fail_at = 0;
}

static void fuzz_account(struct fuzz_run *r, const char *name,
    size_t name_len, uint64_t size) {
  r->calls++;
  if (r->calls > r->lim.max_files || size > r->lim.max_file_bytes) {
    abort();
  }
  r->total += size;
  if (r->total > r->lim.max_total_bytes) {
    abort();
  }
  if (name != NULL) {
    if (name_len == 0 || strlen(name) != name_len) {
      abort();
    }
    r->hash = fuzz_fnv(r->hash, name, name_len + 1);
  } else {
    r->hash = fuzz_fnv(r->hash, "\xff", 1);
  }
  r->hash = fuzz_fnv(r->hash, &size, sizeof(size));
}

static int fuzz_found(const struct mailoauth_tnef_file *f, void *arg) {
  struct fuzz_run *r = arg;

  if (f->name != NULL && f->name_len > MAILOAUTH_TNEF_MAX_NAME) {
    abort();
  }
  fuzz_account(r, f->name, f->name_len, f->size);
  r->hash = fuzz_fnv(r->hash, &f->codepage, sizeof(f->codepage));
  /* Every byte is read: a bad pointer or length shows up here. */
  r->hash = fuzz_fnv(r->hash, f->data, (size_t) f->size);

  if (r->calls == r->fail_at) {
    errno = EXDEV;
    return -1;
  }
  return 0;
}

static int fuzz_file(const char *name, int fd, uint64_t size, void *arg) {
  struct fuzz_run *r = arg;
  unsigned char buf[4096];
  uint64_t off = 0;
  struct stat st;

  if (fstat(fd, &st) < 0 || (uint64_t) st.st_size != size) {
    abort();
  }
  fuzz_account(r, name, name != NULL ? strlen(name) : 0, size);
  while (off < size) {
    ssize_t n = pread(fd, buf, sizeof(buf), (off_t) off);

    if (n <= 0) {
      abort();
    }
    r->hash = fuzz_fnv(r->hash, buf, (size_t) n);
    off += (uint64_t) n;
  }

  if (r->calls == r->fail_at) {
    errno = EXDEV;
    return -1;
  }
  return 0;
}

static void fuzz_decoder(unsigned char cfg, const uint8_t *data,
    size_t size) {
  struct fuzz_run a, b;
  unsigned int n = 0;
  int rc, rc2, e, e2;

  fuzz_limits(&a, cfg);
  errno = 0;
  rc = mailoauth_tnef_decode_mem(data, size, &a.lim, fuzz_found, &a, &n);
  e = errno;
  if (n != a.calls) {
    abort();
  }
  if (rc < 0 && e != EBADMSG && e != EFBIG && e != ENOMEM) {
    abort();
  }
  /* A stream over a limit makes no call; a damaged one may yield the
   * files before the damage.
   */
  if (rc < 0 && e != EBADMSG && a.calls != 0) {
    abort();
  }

  fuzz_limits(&b, cfg);
  errno = 0;
  rc2 = mailoauth_tnef_decode_mem(data, size, &b.lim, fuzz_found, &b, NULL);
  e2 = errno;
  if (rc2 != rc || (rc < 0 && e2 != e) || b.hash != a.hash ||
      b.calls != a.calls) {
    abort();
  }

  if (rc == 0 && a.calls > 0) {
    fuzz_limits(&b, cfg);
    b.fail_at = 1 + (cfg >> 4) % a.calls;
    errno = 0;
    if (mailoauth_tnef_decode_mem(data, size, &b.lim, fuzz_found, &b,
        NULL) != -1 || errno != EXDEV || b.calls != b.fail_at) {
      abort();
    }
  }
}

static int fuzz_read(struct fuzz_run *r, const uint8_t *data, size_t size,
    unsigned int seed, int *err) {
  struct mailoauth_tnef_reader *rd;
  unsigned int n = 0;
  size_t off = 0;
  int rc = 0;

  rd = mailoauth_tnef_reader_new("/tmp", &r->lim, fuzz_file, r);
  if (rd == NULL) {
    abort();
  }

  while (off < size && rc == 0) {
    size_t chunk = size - off;

    if (seed != 0) {
      seed = seed * 1103515245U + 12345U;
      chunk = 1 + (seed >> 16) % 23;
      if (chunk > size - off) {
        chunk = size - off;
      }
    }
    rc = mailoauth_tnef_reader_feed(rd, data + off, chunk);
    off += chunk;
  }

  errno = 0;
  rc = mailoauth_tnef_reader_finish(rd, &n);
  *err = errno;
  if (n != r->calls) {
    abort();
  }
  mailoauth_tnef_reader_free(rd);
  return rc;
}

static void fuzz_reader(unsigned char cfg, const uint8_t *data, size_t size) {
  struct fuzz_run a, b;
  int rc, rc2, e, e2;

  fuzz_limits(&a, cfg);
  a.fail_at = cfg >> 6;
  rc = fuzz_read(&a, data, size, 0, &e);
  if (rc < 0 && e != EBADMSG && e != EFBIG && e != ENOMEM && e != EIO &&
      e != ECHILD && e != EXDEV) {
    abort();
  }

  fuzz_limits(&b, cfg);
  b.fail_at = cfg >> 6;
  rc2 = fuzz_read(&b, data, size, 1U + cfg, &e2);
  if (rc2 != rc || (rc < 0 && e2 != e) || b.hash != a.hash ||
      b.calls != a.calls) {
    abort();
  }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  int fd;

  (void) argc;
  (void) argv;

  /* libytnef prints its complaints on stdout; libFuzzer talks on stderr. */
  fd = open("/dev/null", O_WRONLY);
  if (fd >= 0) {
    (void) dup2(fd, STDOUT_FILENO);
    (void) close(fd);
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) {
    return 0;
  }

  if (data[0] & 0x01) {
    fuzz_reader(data[1], data + 2, size - 2);
  } else {
    fuzz_decoder(data[1], data + 2, size - 2);
  }
  return 0;
}
