/*
 * Unit tests: unpacking winmail.dat (TNEF) in a sandboxed child.
 *
 * Real samples (tnef-samples/, see its README for where they come from and
 * how the expected sums were obtained) and streams built here per
 * [MS-OXTNEF] for what the samples do not show.  Every test that forks the
 * decoder checks that no descriptor and no child process is left behind.
 *
 * Each test starts a TNEF helper in its fixture, as the worker does: the
 * decoders are the helper's children, never this process's.
 */

#include "mailoauth/tnef.h"
#include "tnef/tnefint.h"
#include "mailoauth/trace.h"

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/filter.h>
#include <linux/seccomp.h>

#include <openssl/evp.h>

/* libytnef itself, to show what it refuses on its own. */
#include <ytnef.h>

#define MAX_GOT         16

static char tmp_dir[64];

/* Trace lines of the unit, one after the other. */
static char traces[16384];

static void trace_sink(const char *channel, int level, const char *fmt,
    va_list ap) {
  size_t n = strlen(traces);

  (void) level;
  if (strcmp(channel, "mailoauth.tnef") != 0 || n + 2 >= sizeof(traces)) {
    return;
  }
  vsnprintf(traces + n, sizeof(traces) - n - 1, fmt, ap);
  strcat(traces, "\n");
}

/* MailOAuthLog lines of the unit. */
static char logs[4096];

static void log_sink(const char *fmt, va_list ap) {
  size_t n = strlen(logs);

  if (n + 2 >= sizeof(logs)) {
    return;
  }
  vsnprintf(logs + n, sizeof(logs) - n - 1, fmt, ap);
  strcat(logs, "\n");
}

static unsigned int count_str(const char *hay, const char *needle) {
  unsigned int n = 0;

  while ((hay = strstr(hay, needle)) != NULL) {
    n++;
    hay += strlen(needle);
  }
  return n;
}

/* ------------------------------------------------------------------------
 * Fixture and helpers.
 */

/* The caller's end of the helper's socket. */
static int helper_sock = -1;

static void setup(void) {
  strcpy(tmp_dir, "/tmp/mailoauth-tnef-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(tmp_dir));
  traces[0] = '\0';
  logs[0] = '\0';
  mailoauth_trace_set_sink(trace_sink);
  mailoauth_log_set_sink(log_sink);
  helper_sock = mailoauth_tnef_helper_start(NULL, NULL);
  ck_assert_int_gt(helper_sock, 2);
  ck_assert_int_gt(mailoauth_tnef_helper_pid(), 0);
}

static void teardown(void) {
  /* Tests that kill the helper have seen to it themselves. */
  if (mailoauth_tnef_helper_pid() > 0) {
    ck_assert_int_eq(mailoauth_tnef_helper_stop(), 0);
  }
  helper_sock = -1;
  mailoauth_trace_set_sink(NULL);
  mailoauth_log_set_sink(NULL);
  /* O_TMPFILE leaves nothing; the mkostemp() fallback unlinks at once. */
  ck_assert_int_eq(rmdir(tmp_dir), 0);
}

static int count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  struct dirent *de;
  int n = 0;

  ck_assert_ptr_nonnull(d);
  while ((de = readdir(d)) != NULL) {
    if (de->d_name[0] != '.') {
      n++;
    }
  }
  closedir(d);
  return n;
}

/* The parent of pid, and its state letter in *state (may be NULL), from
 * /proc; -1 when there is no such process.
 */
static long parent_of(pid_t pid, char *state) {
  char path[64], buf[512], *p, st = '?';
  long ppid = -1;
  FILE *fp;

  snprintf(path, sizeof(path), "/proc/%ld/stat", (long) pid);
  fp = fopen(path, "r");
  if (fp == NULL) {
    return -1;
  }
  if (fgets(buf, sizeof(buf), fp) == NULL ||
      (p = strrchr(buf, ')')) == NULL ||
      sscanf(p + 1, " %c %ld", &st, &ppid) != 2) {
    ppid = -1;
  }
  fclose(fp);
  if (state != NULL) {
    *state = st;
  }
  return ppid;
}

/* How many processes have parent as their parent; the first in *first
 * (may be NULL).
 */
static int children_of(pid_t parent, pid_t *first) {
  DIR *d = opendir("/proc");
  struct dirent *de;
  int n = 0;

  ck_assert_ptr_nonnull(d);
  while ((de = readdir(d)) != NULL) {
    pid_t pid;

    if (de->d_name[0] < '0' || de->d_name[0] > '9') {
      continue;
    }
    pid = (pid_t) atol(de->d_name);
    if (parent_of(pid, NULL) == (long) parent) {
      if (n == 0 && first != NULL) {
        *first = pid;
      }
      n++;
    }
  }
  closedir(d);
  return n;
}

/* No decoder and no zombie left: this process's only child is the helper
 * (when there is one), and the helper has none.
 */
static void assert_no_children(void) {
  pid_t helper = mailoauth_tnef_helper_pid(), only = -1;

  errno = 0;
  if (helper > 0) {
    ck_assert_int_eq(waitpid(-1, NULL, WNOHANG), 0);
    ck_assert_int_eq(children_of(getpid(), &only), 1);
    ck_assert_int_eq(only, helper);
    ck_assert_int_eq(children_of(helper, NULL), 0);
  } else {
    ck_assert_int_eq(waitpid(-1, NULL, WNOHANG), -1);
    ck_assert_int_eq(errno, ECHILD);
    ck_assert_int_eq(children_of(getpid(), NULL), 0);
  }
}

/* The running decoder: the helper's only child. */
static pid_t find_decoder(void) {
  pid_t helper = mailoauth_tnef_helper_pid(), found = -1;

  ck_assert_int_gt(helper, 0);
  ck_assert_int_eq(children_of(helper, &found), 1);
  return found;
}

/* The Seccomp: line of pid's /proc status (read here, not with the code
 * under test), -1 when there is none.
 */
static int seccomp_mode(pid_t pid) {
  char path[64], line[256];
  int mode = -1;
  FILE *fp;

  snprintf(path, sizeof(path), "/proc/%ld/status", (long) pid);
  fp = fopen(path, "r");
  ck_assert_ptr_nonnull(fp);
  while (fgets(line, sizeof(line), fp) != NULL) {
    if (sscanf(line, "Seccomp:\t%d", &mode) == 1) {
      break;
    }
  }
  fclose(fp);
  return mode;
}

/* Whether pid has ended (gone, or a zombie nobody here reaps). */
static int ended(pid_t pid) {
  char state = '?';

  return parent_of(pid, &state) < 0 || state == 'Z' || state == 'X';
}

static void wait_ended(pid_t pid) {
  int i;

  for (i = 0; i < 500 && !ended(pid); i++) {
    usleep(10000);
  }
  ck_assert_msg(ended(pid), "process %ld still runs", (long) pid);
}

static long long now_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sha256_hex(const void *data, size_t len, char out[65]) {
  unsigned char md[32];
  unsigned int mdlen = 0;
  int i;

  ck_assert_int_eq(EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL), 1);
  ck_assert_uint_eq(mdlen, 32);
  for (i = 0; i < 32; i++) {
    snprintf(out + 2 * i, 3, "%02x", md[i]);
  }
}

static unsigned char *load_file(const char *path, size_t *len) {
  unsigned char *data;
  FILE *fp;
  long size;

  fp = fopen(path, "rb");
  ck_assert_msg(fp != NULL, "cannot open %s", path);
  fseek(fp, 0, SEEK_END);
  size = ftell(fp);
  fseek(fp, 0, SEEK_SET);
  data = malloc((size_t) size + 1);
  ck_assert_ptr_nonnull(data);
  ck_assert_uint_eq(fread(data, 1, (size_t) size, fp), (size_t) size);
  fclose(fp);
  *len = (size_t) size;
  return data;
}

static unsigned char *load_sample(const char *name, size_t *len) {
  char path[4096], *dir, *slash;
  unsigned char *data;

  dir = strdup(__FILE__);
  slash = strrchr(dir, '/');
  if (slash != NULL) {
    *slash = '\0';
    snprintf(path, sizeof(path), "%s/tnef-samples/%s", dir, name);
  } else {
    snprintf(path, sizeof(path), "tnef-samples/%s", name);
  }
  free(dir);

  data = load_file(path, len);
  return data;
}

/* An unlinked regular file holding data, as the caller gives one. */
static int mem_fd(const void *data, size_t len) {
  char path[128];
  int fd;

  snprintf(path, sizeof(path), "%s/in.XXXXXX", tmp_dir);
  fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(unlink(path), 0);
  ck_assert_int_eq(write(fd, data, len), (ssize_t) len);
  /* The offset must not matter. */
  ck_assert_int_eq(lseek(fd, 3, SEEK_SET), 3);
  return fd;
}

/* A secret-looking string this process holds and no decoder may: made
 * at run time (it is not in the program), once the helper is running (the
 * helper never had it).  A decoder forked from this process would have it
 * at the same addresses.
 */
static char marker[48];
static char *marker_heap;

static void marker_make(void) {
  unsigned char rnd[16];
  FILE *fp = fopen("/dev/urandom", "rb");
  size_t i;

  ck_assert_ptr_nonnull(fp);
  ck_assert_uint_eq(fread(rnd, 1, sizeof(rnd), fp), sizeof(rnd));
  fclose(fp);
  strcpy(marker, "tok-");
  for (i = 0; i < sizeof(rnd); i++) {
    snprintf(marker + 4 + 2 * i, 3, "%02x", rnd[i]);
  }
  marker_heap = strdup(marker);
  ck_assert_ptr_nonnull(marker_heap);
}

/* Reads len bytes at addr in pid's memory.  Returns 1 when they were read,
 * 0 when nothing is mapped there, -1 when this process may not look
 * (ptrace rights: the decoder is not dumpable, so it takes root).
 */
static int peek(pid_t pid, const void *addr, void *buf, size_t len) {
  char path[64];
  ssize_t n;
  int fd;

  snprintf(path, sizeof(path), "/proc/%ld/mem", (long) pid);
  fd = open(path, O_RDONLY);
  if (fd < 0) {
    return -1;
  }
  n = pread(fd, buf, len, (off_t) (uintptr_t) addr);
  close(fd);
  return n == (ssize_t) len ? 1 : 0;
}

/* Whether pid holds the marker where this process does: 1 yes, 0 no, -1
 * cannot tell.
 */
static int holds_marker(pid_t pid, const char *where) {
  char buf[sizeof(marker)];
  size_t len = strlen(marker) + 1;
  int rc = peek(pid, where, buf, len);

  if (rc <= 0) {
    return rc;
  }
  return memcmp(buf, marker, len) == 0;
}

/* What a callback found out about the decoder while it ran. */
struct probe {
  pid_t decoder;
  long ppid;
  int seccomp;                  /* its Seccomp: in /proc, -1 unknown */
  int global, heap;             /* holds_marker() at the two places */
};

/* What the callbacks saw. */
struct got {
  unsigned int n;
  int has_name[MAX_GOT];
  char name[MAX_GOT][MAILOAUTH_TNEF_MAX_NAME + 1];
  unsigned int codepage[MAX_GOT];
  uint64_t size[MAX_GOT];
  char sha[MAX_GOT][65];

  unsigned int fail_at;         /* callback number that returns -1 */
  int fail_errno;
  unsigned int kill_at;         /* ... that SIGKILLs the decoder */
  unsigned int stop_at;         /* ... that SIGSTOPs the decoder */
  unsigned int kill_helper_at;  /* ... that SIGKILLs the helper */
  unsigned int probe_at;        /* ... that looks at the decoder */
  struct probe probe;
};

static void got_add(struct got *g, const char *name, size_t name_len,
    const void *data, uint64_t size) {
  ck_assert_uint_lt(g->n, MAX_GOT);
  g->has_name[g->n] = name != NULL;
  if (name != NULL) {
    ck_assert_uint_le(name_len, MAILOAUTH_TNEF_MAX_NAME);
    memcpy(g->name[g->n], name, name_len);
    g->name[g->n][name_len] = '\0';
  }
  g->size[g->n] = size;
  sha256_hex(data, (size_t) size, g->sha[g->n]);
  g->n++;
}

static int got_file(const char *name, int fd, uint64_t size, void *arg) {
  struct got *g = arg;
  unsigned char *data;
  struct stat st;
  unsigned int n;

  ck_assert_int_eq(fstat(fd, &st), 0);
  ck_assert(S_ISREG(st.st_mode));
  ck_assert_uint_eq((uint64_t) st.st_size, size);
  ck_assert_uint_eq(st.st_mode & 0777, 0600);
  data = malloc(size > 0 ? (size_t) size : 1);
  ck_assert_ptr_nonnull(data);
  ck_assert_int_eq(pread(fd, data, (size_t) size, 0), (ssize_t) size);
  got_add(g, name, name != NULL ? strlen(name) : 0, data, size);
  free(data);

  n = g->n;
  if (n == g->kill_at || n == g->stop_at) {
    pid_t child = find_decoder();

    ck_assert_int_gt(child, 0);
    ck_assert_int_eq(kill(child, n == g->kill_at ? SIGKILL : SIGSTOP), 0);
  }
  if (n == g->probe_at) {
    /* The decoder is blocked writing the next file: it is there to see. */
    g->probe.decoder = find_decoder();
    g->probe.ppid = parent_of(g->probe.decoder, NULL);
    g->probe.seccomp = seccomp_mode(g->probe.decoder);
    g->probe.global = holds_marker(g->probe.decoder, marker);
    g->probe.heap = holds_marker(g->probe.decoder, marker_heap);
  }
  if (n == g->kill_helper_at) {
    /* The decoder, blocked on the pipe, goes with its helper before it
     * can write more.
     */
    g->probe.decoder = find_decoder();
    ck_assert_int_eq(kill(mailoauth_tnef_helper_pid(), SIGKILL), 0);
    wait_ended(g->probe.decoder);
  }
  if (n == g->fail_at) {
    errno = g->fail_errno;
    return -1;
  }
  return 0;
}

static int got_found(const struct mailoauth_tnef_file *f, void *arg) {
  struct got *g = arg;

  if (f->name != NULL) {
    ck_assert_uint_eq(strlen(f->name), f->name_len);
  }
  g->codepage[g->n] = f->codepage;
  got_add(g, f->name, f->name_len, f->data, f->size);
  if (g->n == g->fail_at) {
    errno = g->fail_errno;
    return -1;
  }
  return 0;
}

/* Unpacks data through the child; checks for leaks of descriptors and
 * processes whatever the outcome.
 */
static int unpack(const void *data, size_t len,
    const struct mailoauth_tnef_limits *lim, struct got *g,
    unsigned int *nfiles) {
  int fds = count_fds(), fd, rc, xerrno;

  fd = mem_fd(data, len);
  rc = mailoauth_tnef_unpack(fd, tmp_dir, lim, got_file, g, nfiles);
  xerrno = errno;
  close(fd);

  ck_assert_int_eq(count_fds(), fds);
  assert_no_children();
  errno = xerrno;
  return rc;
}

static int decode(const void *data, size_t len,
    const struct mailoauth_tnef_limits *lim, struct got *g) {
  return mailoauth_tnef_decode_mem(data, len, lim, got_found, g, NULL);
}

/* ------------------------------------------------------------------------
 * Building TNEF streams ([MS-OXTNEF]): a signature, a legacy key, then
 * attributes: level (1 message, 2 attachment), id (type << 16 | number),
 * length, data, and a checksum (the sum of the data bytes, mod 65536).
 */

struct buf {
  unsigned char *d;
  size_t len, cap;
};

static void buf_add(struct buf *b, const void *p, size_t n) {
  if (b->len + n > b->cap) {
    b->cap = (b->len + n) * 2 + 64;
    b->d = realloc(b->d, b->cap);
    ck_assert_ptr_nonnull(b->d);
  }
  if (n > 0) {
    memcpy(b->d + b->len, p, n);
  }
  b->len += n;
}

static void buf_u16(struct buf *b, uint16_t v) {
  unsigned char p[2] = { (unsigned char) v, (unsigned char) (v >> 8) };

  buf_add(b, p, 2);
}

static void buf_u32(struct buf *b, uint32_t v) {
  buf_u16(b, (uint16_t) v);
  buf_u16(b, (uint16_t) (v >> 16));
}

#define LVL_MSG                 1
#define LVL_ATT                 2

#define A_TNEF_VERSION          0x00089006U
#define A_OEM_CODEPAGE          0x00069007U
#define A_MESSAGE_CLASS         0x00078008U
#define A_SUBJECT               0x00018004U
#define A_BODY                  0x0002800cU
#define A_MAPI_PROPS            0x00069003U
#define A_ATTACH_RENDDATA       0x00069002U
#define A_ATTACH_TITLE          0x00018010U
#define A_ATTACH_DATA           0x0006800fU
#define A_ATTACH_METAFILE       0x00068011U
#define A_ATTACHMENT            0x00069005U

#define P_LONG                  0x0003
#define P_OBJECT                0x000d
#define P_STRING8               0x001e
#define P_UNICODE               0x001f
#define P_BINARY                0x0102

#define PR_SUBJECT_ID           0x0037
#define PR_ATTACH_DATA          0x3701
#define PR_ATTACH_FILENAME_ID   0x3704
#define PR_ATTACH_METHOD_ID     0x3705
#define PR_ATTACH_LONG_NAME     0x3707

static void tnef_begin(struct buf *b) {
  memset(b, 0, sizeof(*b));
  buf_u32(b, 0x223e9f78U);
  buf_u16(b, 0x4d2);
}

static void tnef_attr(struct buf *b, int level, uint32_t id, const void *data,
    size_t n) {
  const unsigned char *p = data;
  unsigned int sum = 0;
  unsigned char lvl = (unsigned char) level;
  size_t i;

  for (i = 0; i < n; i++) {
    sum += p[i];
  }
  buf_add(b, &lvl, 1);
  buf_u32(b, id);
  buf_u32(b, (uint32_t) n);
  buf_add(b, data, n);
  buf_u16(b, (uint16_t) sum);
}

static void tnef_str_attr(struct buf *b, int level, uint32_t id,
    const char *s) {
  tnef_attr(b, level, id, s, strlen(s) + 1);
}

/* A message header as Outlook writes it. */
static void tnef_message(struct buf *b, const char *subject, uint32_t cp) {
  unsigned char v[4] = { 0, 0, 1, 0 };
  unsigned char c[8] = { 0 };

  tnef_begin(b);
  tnef_attr(b, LVL_MSG, A_TNEF_VERSION, v, sizeof(v));
  c[0] = (unsigned char) cp;
  c[1] = (unsigned char) (cp >> 8);
  tnef_attr(b, LVL_MSG, A_OEM_CODEPAGE, c, sizeof(c));
  tnef_str_attr(b, LVL_MSG, A_MESSAGE_CLASS, "IPM.Note");
  if (subject != NULL) {
    tnef_str_attr(b, LVL_MSG, A_SUBJECT, subject);
  }
}

/* MAPI properties: a count, then tag and value for each. */
struct props {
  struct buf b;
  uint32_t count;
};

static void props_pad(struct props *p, size_t n) {
  static const unsigned char zero[4] = { 0 };

  buf_add(&p->b, zero, (4 - n % 4) % 4);
}

static void props_long(struct props *p, uint16_t id, uint32_t v) {
  buf_u32(&p->b, ((uint32_t) id << 16) | P_LONG);
  buf_u32(&p->b, v);
  p->count++;
}

/* PT_STRING8, PT_UNICODE, PT_BINARY, PT_OBJECT: a count of values (1),
 * then the length and the padded bytes.
 */
static void props_var(struct props *p, uint16_t type, uint16_t id,
    const void *d, size_t n) {
  buf_u32(&p->b, ((uint32_t) id << 16) | type);
  buf_u32(&p->b, 1);
  buf_u32(&p->b, (uint32_t) n);
  buf_add(&p->b, d, n);
  props_pad(p, n);
  p->count++;
}

static void props_str8(struct props *p, uint16_t id, const char *s) {
  props_var(p, P_STRING8, id, s, strlen(s) + 1);
}

/* UTF-16LE from code points, NUL-terminated. */
static void props_unicode(struct props *p, uint16_t id, const uint32_t *cps,
    size_t n) {
  struct buf u;
  size_t i;

  memset(&u, 0, sizeof(u));
  for (i = 0; i < n; i++) {
    if (cps[i] >= 0x10000) {
      uint32_t v = cps[i] - 0x10000;

      buf_u16(&u, (uint16_t) (0xd800 | (v >> 10)));
      buf_u16(&u, (uint16_t) (0xdc00 | (v & 0x3ff)));
    } else {
      buf_u16(&u, (uint16_t) cps[i]);
    }
  }
  buf_u16(&u, 0);
  props_var(p, P_UNICODE, id, u.d, u.len);
  free(u.d);
}

static void props_attr(struct buf *b, int level, uint32_t id,
    struct props *p) {
  struct buf all;

  memset(&all, 0, sizeof(all));
  buf_u32(&all, p->count);
  buf_add(&all, p->b.d, p->b.len);
  tnef_attr(b, level, id, all.d, all.len);
  free(all.d);
  free(p->b.d);
  memset(p, 0, sizeof(*p));
}

static void tnef_renddata(struct buf *b) {
  unsigned char rd[14] = { 1, 0, 0xff, 0xff, 0xff, 0xff };

  tnef_attr(b, LVL_ATT, A_ATTACH_RENDDATA, rd, sizeof(rd));
}

/* One attached file the way Outlook sends it: rendering data, title,
 * content, then the properties with the method and the long name.
 */
static void tnef_file(struct buf *b, const char *title, const char *long_name,
    const void *data, size_t n) {
  struct props p;

  tnef_renddata(b);
  if (title != NULL) {
    tnef_str_attr(b, LVL_ATT, A_ATTACH_TITLE, title);
  }
  tnef_attr(b, LVL_ATT, A_ATTACH_DATA, data, n);
  memset(&p, 0, sizeof(p));
  props_long(&p, PR_ATTACH_METHOD_ID, 1);
  if (long_name != NULL) {
    props_str8(&p, PR_ATTACH_LONG_NAME, long_name);
  }
  props_attr(b, LVL_ATT, A_ATTACHMENT, &p);
}

static unsigned char *pattern(size_t n, unsigned int seed) {
  unsigned char *d = malloc(n > 0 ? n : 1);
  size_t i;

  ck_assert_ptr_nonnull(d);
  for (i = 0; i < n; i++) {
    seed = seed * 1103515245U + 12345U;
    d[i] = (unsigned char) (seed >> 16);
  }
  return d;
}

/* ------------------------------------------------------------------------
 * The samples.
 */

struct expect {
  const char *name;
  uint64_t size;
  const char *sha;
};

struct sample {
  const char *file;
  unsigned int n;
  struct expect files[4];
};

/* Names, sizes and SHA-256 from the tnef program (see tnef-samples/README),
 * in stream order.
 */
static const struct sample samples[] = {
  { "one-file.tnef", 1, {
    { "AUTHORS", 244,
      "36c47da7d11846caf0474a4b3df83bb4eba9ea01d2bca500c288fa108e123d28" } } },
  { "long-filename.tnef", 1, {
    { "allproductsmar2000.dat", 279,
      "de2ad5d4e20a2456ad12808dee82af2d0d1236ddf5bd55832581a7886cdcd807" } } },
  { "multi-value-attribute.tnef", 1, {
    { "208225 (5 seconds) Voice Mail.mp3", 10656,
      "cf2e3cd4175a3acd5cd193623cd8f79fda1c22f4823560213e561851c3fdd4e8" } } },
  { "winmail.dat", 2, {
    { "zappa_av1.jpg", 2937,
      "bea844f30e0fcc20fad419a0d11032a6465da93c1da185a1196949955994409a" },
    { "bookmark.htm", 85805,
      "1e08d6e23c75ff80ac992eebc24c2943c7843b7dfee235966b37de5eb4362599" } } },
  { "missing-filenames.tnef", 4, {
    { "generpts.src", 61210,
      "69ebd0e9c298f62d1bcced07a66fce16c43f0e6e0228336e1a56d8df8874b3b9" },
    { "TechlibDEC99.doc", 33792,
      "d1a592c2e3729270860ec3dcac357799e2667fa9859febd1b258c6ca3612f532" },
    { "TechlibDEC99-JAN00.doc", 34304,
      "360db5c11b1f21c60ffbf7aa040a91f48fdef402663c303cfeddd4ef4a3dc9cd" },
    { "TechlibNOV99.doc", 33792,
      "b1e6b103cc5a9b759dd0a436d45bba131e69ca06a8b4c99d9beebf76d95cde93" } } },
};

#define NSAMPLES (sizeof(samples) / sizeof(samples[0]))

static void assert_sample(const struct sample *s, const struct got *g) {
  unsigned int i;

  ck_assert_uint_eq(g->n, s->n);
  for (i = 0; i < s->n; i++) {
    ck_assert_msg(g->has_name[i], "%s: file %u has no name", s->file, i);
    ck_assert_str_eq(g->name[i], s->files[i].name);
    ck_assert_uint_eq(g->size[i], s->files[i].size);
    ck_assert_str_eq(g->sha[i], s->files[i].sha);
  }
}

/* Through the helper (the fixture's), the same files as decoding in this
 * process gives (test_samples_decode_mem).
 */
START_TEST(test_samples_unpack) {
  size_t i;

  for (i = 0; i < NSAMPLES; i++) {
    struct got g;
    unsigned int nfiles = 99;
    unsigned char *data;
    size_t len;

    memset(&g, 0, sizeof(g));
    data = load_sample(samples[i].file, &len);
    ck_assert_msg(unpack(data, len, NULL, &g, &nfiles) == 0, "%s: %s",
      samples[i].file, strerror(errno));
    ck_assert_uint_eq(nfiles, samples[i].n);
    assert_sample(&samples[i], &g);
    free(data);
  }
}
END_TEST

START_TEST(test_samples_decode_mem) {
  size_t i;

  for (i = 0; i < NSAMPLES; i++) {
    struct got g;
    unsigned int nfiles = 99, j;
    unsigned char *data;
    size_t len;

    memset(&g, 0, sizeof(g));
    data = load_sample(samples[i].file, &len);
    ck_assert_int_eq(mailoauth_tnef_decode_mem(data, len, NULL, got_found,
      &g, &nfiles), 0);
    ck_assert_uint_eq(nfiles, samples[i].n);
    assert_sample(&samples[i], &g);
    /* Their 8-bit names are in the stream's code page. */
    for (j = 0; j < g.n; j++) {
      ck_assert_uint_eq(g.codepage[j], 1252);
    }
    free(data);
  }
}
END_TEST

/* ------------------------------------------------------------------------
 * Broken input.
 */

START_TEST(test_not_tnef) {
  static const char *const inputs[] = {
    "",
    "x",
    "hello, world\n",
    "%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n",
    "\x78\x9f\x3e",                      /* a signature cut short */
    "\x9f\x78\x22\x3e\x00\x00",          /* the signature byte-swapped */
  };
  size_t i;

  for (i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
    struct got g;
    unsigned int nfiles = 99;

    memset(&g, 0, sizeof(g));
    errno = 0;
    ck_assert_int_eq(unpack(inputs[i], strlen(inputs[i]), NULL, &g, &nfiles),
      -1);
    ck_assert_int_eq(errno, EBADMSG);
    ck_assert_uint_eq(nfiles, 0);
    ck_assert_uint_eq(g.n, 0);

    errno = 0;
    ck_assert_int_eq(decode(inputs[i], strlen(inputs[i]), NULL, &g), -1);
    ck_assert_int_eq(errno, EBADMSG);
  }
}
END_TEST

START_TEST(test_empty_and_padded) {
  struct buf b;
  struct got g;
  static const unsigned char zeros[7] = { 0 };

  /* A valid stream with no attachment (an RTF-only message). */
  tnef_message(&b, "no files", 1252);
  memset(&g, 0, sizeof(g));
  ck_assert_int_eq(unpack(b.d, b.len, NULL, &g, NULL), 0);
  ck_assert_uint_eq(g.n, 0);

  /* Zeros after the last attribute are padding, not an attribute. */
  tnef_file(&b, "A.TXT", "a.txt", "abc", 3);
  buf_add(&b, zeros, sizeof(zeros));
  memset(&g, 0, sizeof(g));
  ck_assert_int_eq(unpack(b.d, b.len, NULL, &g, NULL), 0);
  ck_assert_uint_eq(g.n, 1);
  ck_assert_str_eq(g.name[0], "a.txt");

  /* Anything else after it is not. */
  b.d[b.len - 1] = 1;
  errno = 0;
  ck_assert_int_eq(decode(b.d, b.len, NULL, &g), -1);
  ck_assert_int_eq(errno, EBADMSG);
  free(b.d);
}
END_TEST

/* Every cut of a small sample and many of a large one: an error or a clean
 * stop at an attribute boundary, never a crash.  A cut stream still yields
 * the files whose content came whole (the first ones, the same bytes), and
 * says EBADMSG.
 */
START_TEST(test_truncated) {
  static const char *const files[] = { "one-file.tnef", "winmail.dat" };
  size_t f;

  for (f = 0; f < 2; f++) {
    unsigned char *data;
    size_t len, cut, step, i;
    struct got *full = calloc(1, sizeof(*full));

    ck_assert_ptr_nonnull(full);
    data = load_sample(files[f], &len);
    ck_assert_int_eq(decode(data, len, NULL, full), 0);
    step = len > 10000 ? 97 : 1;
    for (cut = 0; cut < len; cut += step) {
      struct got g;
      int rc;

      memset(&g, 0, sizeof(g));
      errno = 0;
      rc = decode(data, cut, NULL, &g);
      if (rc < 0) {
        ck_assert_int_eq(errno, EBADMSG);
      }
      ck_assert_uint_le(g.n, full->n);
      for (i = 0; i < g.n; i++) {
        ck_assert_uint_eq(g.size[i], full->size[i]);
        ck_assert_str_eq(g.sha[i], full->sha[i]);
      }
    }
    free(full);

    /* And a few through the child. */
    for (cut = 1; cut < len; cut += len / 7) {
      struct got g;
      int rc;

      memset(&g, 0, sizeof(g));
      errno = 0;
      rc = unpack(data, cut, NULL, &g, NULL);
      ck_assert_msg(rc == 0 || errno == EBADMSG, "cut %lu: %s",
        (unsigned long) cut, strerror(errno));
    }
    free(data);
  }
}
END_TEST

START_TEST(test_corrupted) {
  unsigned char *data;
  size_t len, pos;
  unsigned int errors = 0;

  data = load_sample("winmail.dat", &len);

  for (pos = 0; pos < len; pos += 13) {
    struct got g;
    unsigned char saved = data[pos];
    int rc;

    data[pos] ^= 0x5a;
    memset(&g, 0, sizeof(g));
    errno = 0;
    rc = decode(data, len, NULL, &g);
    if (rc < 0) {
      /* Read as far as it goes, damage noted. */
      ck_assert_int_eq(errno, EBADMSG);
      ck_assert_uint_le(g.n, 2);
      errors++;
    }
    data[pos] = saved;
  }
  /* Checksums catch nearly every flipped byte. */
  ck_assert_uint_gt(errors, len / 13 * 9 / 10);

  /* A flipped attribute id escapes the checksums: the attribute is then
   * unknown and ignored, at worst a file is missing.
   */
  for (pos = 7; pos < len; pos += len / 5) {
    struct got g;
    int rc;

    data[pos] ^= 0xff;
    memset(&g, 0, sizeof(g));
    errno = 0;
    rc = unpack(data, len, NULL, &g, NULL);
    ck_assert_msg(rc == 0 || errno == EBADMSG, "flip at %lu: %s",
      (unsigned long) pos, strerror(errno));
    data[pos] ^= 0xff;
  }
  free(data);
}
END_TEST

/* ------------------------------------------------------------------------
 * Limits and callbacks.
 */

START_TEST(test_limits) {
  struct mailoauth_tnef_limits lim;
  unsigned char *data;
  unsigned int nfiles;
  struct got g;
  size_t len;

  data = load_sample("missing-filenames.tnef", &len);

  mailoauth_tnef_limits_init(&lim);
  ck_assert_uint_eq(lim.max_files, MAILOAUTH_TNEF_DEFAULT_MAX_FILES);
  ck_assert_uint_eq(lim.timeout_ms, MAILOAUTH_TNEF_DEFAULT_TIMEOUT_MS);

  /* Four files. */
  lim.max_files = 3;
  memset(&g, 0, sizeof(g));
  errno = 0;
  ck_assert_int_eq(unpack(data, len, &lim, &g, &nfiles), -1);
  ck_assert_int_eq(errno, EFBIG);
  ck_assert_uint_eq(nfiles, 0);
  ck_assert_uint_eq(g.n, 0);

  lim.max_files = 4;
  memset(&g, 0, sizeof(g));
  ck_assert_int_eq(unpack(data, len, &lim, &g, &nfiles), 0);
  ck_assert_uint_eq(nfiles, 4);

  /* 163098 bytes in all, 61210 the largest. */
  mailoauth_tnef_limits_init(&lim);
  lim.max_total_bytes = 163097;
  memset(&g, 0, sizeof(g));
  errno = 0;
  ck_assert_int_eq(unpack(data, len, &lim, &g, NULL), -1);
  ck_assert_int_eq(errno, EFBIG);
  ck_assert_uint_eq(g.n, 0);

  lim.max_total_bytes = 163098;
  memset(&g, 0, sizeof(g));
  ck_assert_int_eq(unpack(data, len, &lim, &g, NULL), 0);

  mailoauth_tnef_limits_init(&lim);
  lim.max_file_bytes = 61209;
  memset(&g, 0, sizeof(g));
  errno = 0;
  ck_assert_int_eq(unpack(data, len, &lim, &g, NULL), -1);
  ck_assert_int_eq(errno, EFBIG);
  errno = 0;
  ck_assert_int_eq(decode(data, len, &lim, &g), -1);
  ck_assert_int_eq(errno, EFBIG);
  ck_assert_uint_eq(g.n, 0);

  /* The input itself: refused before any child is forked. */
  mailoauth_tnef_limits_init(&lim);
  lim.max_input = len - 1;
  memset(&g, 0, sizeof(g));
  errno = 0;
  ck_assert_int_eq(unpack(data, len, &lim, &g, NULL), -1);
  ck_assert_int_eq(errno, EFBIG);
  errno = 0;
  ck_assert_int_eq(decode(data, len, &lim, &g), -1);
  ck_assert_int_eq(errno, EFBIG);

  /* Zero fields mean the defaults. */
  memset(&lim, 0, sizeof(lim));
  memset(&g, 0, sizeof(g));
  ck_assert_int_eq(unpack(data, len, &lim, &g, NULL), 0);
  ck_assert_uint_eq(g.n, 4);

  free(data);
}
END_TEST

/* Attachments that are not files still cannot pile up without end. */
START_TEST(test_limit_skipped_attachments) {
  struct mailoauth_tnef_limits lim;
  struct got g;
  struct buf b;
  int i;

  tnef_message(&b, NULL, 1252);
  for (i = 0; i < 200; i++) {
    tnef_renddata(&b);
  }
  mailoauth_tnef_limits_init(&lim);
  lim.max_files = 10;
  memset(&g, 0, sizeof(g));
  errno = 0;
  ck_assert_int_eq(decode(b.d, b.len, &lim, &g), -1);
  ck_assert_int_eq(errno, EFBIG);

  /* A few are just skipped. */
  lim.max_files = 1000;
  ck_assert_int_eq(decode(b.d, b.len, &lim, &g), 0);
  ck_assert_uint_eq(g.n, 0);
  free(b.d);
}
END_TEST

START_TEST(test_callback_stops) {
  unsigned char *data;
  unsigned int nfiles = 0;
  struct got g;
  size_t len;

  data = load_sample("missing-filenames.tnef", &len);

  memset(&g, 0, sizeof(g));
  g.fail_at = 2;
  g.fail_errno = EDQUOT;
  errno = 0;
  ck_assert_int_eq(unpack(data, len, NULL, &g, &nfiles), -1);
  ck_assert_int_eq(errno, EDQUOT);
  ck_assert_uint_eq(nfiles, 2);
  ck_assert_uint_eq(g.n, 2);

  /* A callback that forgets errno still stops with an error. */
  memset(&g, 0, sizeof(g));
  g.fail_at = 1;
  g.fail_errno = 0;
  errno = 0;
  ck_assert_int_eq(unpack(data, len, NULL, &g, &nfiles), -1);
  ck_assert_int_ne(errno, 0);
  ck_assert_uint_eq(nfiles, 1);

  memset(&g, 0, sizeof(g));
  g.fail_at = 3;
  g.fail_errno = ENOSPC;
  errno = 0;
  ck_assert_int_eq(decode(data, len, NULL, &g), -1);
  ck_assert_int_eq(errno, ENOSPC);
  ck_assert_uint_eq(g.n, 3);

  free(data);
}
END_TEST

START_TEST(test_bad_arguments) {
  struct got g;
  int fd, fds = count_fds();

  memset(&g, 0, sizeof(g));
  errno = 0;
  ck_assert_int_eq(mailoauth_tnef_unpack(-1, tmp_dir, NULL, got_file, &g,
    NULL), -1);
  ck_assert_int_eq(errno, EINVAL);

  fd = mem_fd("x", 1);
  errno = 0;
  ck_assert_int_eq(mailoauth_tnef_unpack(fd, NULL, NULL, got_file, &g, NULL),
    -1);
  ck_assert_int_eq(errno, EINVAL);
  errno = 0;
  ck_assert_int_eq(mailoauth_tnef_unpack(fd, tmp_dir, NULL, NULL, &g, NULL),
    -1);
  ck_assert_int_eq(errno, EINVAL);
  close(fd);

  /* Not a regular file. */
  fd = open("/dev/null", O_RDONLY);
  ck_assert_int_ge(fd, 0);
  errno = 0;
  ck_assert_int_eq(mailoauth_tnef_unpack(fd, tmp_dir, NULL, got_file, &g,
    NULL), -1);
  ck_assert_int_eq(errno, EINVAL);
  close(fd);

  /* A temporary directory that does not exist: the first file fails. */
  {
    unsigned char *data;
    size_t len;

    data = load_sample("one-file.tnef", &len);
    fd = mem_fd(data, len);
    errno = 0;
    ck_assert_int_eq(mailoauth_tnef_unpack(fd, "/nonexistent/mailoauth",
      NULL, got_file, &g, NULL), -1);
    ck_assert_int_eq(errno, ENOENT);
    close(fd);
    free(data);
  }

  ck_assert_int_eq(count_fds(), fds);
  assert_no_children();
  ck_assert_uint_eq(g.n, 0);
}
END_TEST

/* ------------------------------------------------------------------------
 * The child dying or hanging.
 */

/* A small file, then one far larger than a pipe holds: the decoder is
 * still writing when the first callback runs.
 */
static unsigned char *two_files(size_t *len, unsigned char **big) {
  struct buf b;

  *big = pattern(1 << 20, 7);
  tnef_message(&b, "two", 1252);
  tnef_file(&b, "SMALL.TXT", "small.txt", "small", 5);
  tnef_file(&b, "BIG.BIN", "big.bin", *big, 1 << 20);
  *len = b.len;
  return b.d;
}

START_TEST(test_child_killed) {
  unsigned char *data, *big;
  unsigned int nfiles = 0;
  struct got g;
  size_t len;

  data = two_files(&len, &big);

  /* Untouched, both files come out. */
  memset(&g, 0, sizeof(g));
  ck_assert_int_eq(unpack(data, len, NULL, &g, &nfiles), 0);
  ck_assert_uint_eq(nfiles, 2);
  ck_assert_str_eq(g.name[1], "big.bin");
  ck_assert_uint_eq(g.size[1], 1 << 20);

  memset(&g, 0, sizeof(g));
  g.kill_at = 1;
  errno = 0;
  ck_assert_int_eq(unpack(data, len, NULL, &g, &nfiles), -1);
  ck_assert_int_eq(errno, ECHILD);
  ck_assert_uint_eq(nfiles, 1);
  ck_assert_uint_eq(g.n, 1);
  ck_assert_str_eq(g.name[0], "small.txt");
  ck_assert_msg(strstr(traces, "killed by signal 9") != NULL, "%s", traces);

  free(data);
  free(big);
}
END_TEST

START_TEST(test_child_timeout) {
  struct mailoauth_tnef_limits lim;
  unsigned char *data, *big;
  unsigned int nfiles = 0;
  struct got g;
  size_t len;

  data = two_files(&len, &big);

  mailoauth_tnef_limits_init(&lim);
  lim.timeout_ms = 300;
  memset(&g, 0, sizeof(g));
  g.stop_at = 1;
  errno = 0;
  ck_assert_int_eq(unpack(data, len, &lim, &g, &nfiles), -1);
  ck_assert_int_eq(errno, ETIMEDOUT);
  ck_assert_uint_eq(nfiles, 1);

  free(data);
  free(big);
}
END_TEST

/* ------------------------------------------------------------------------
 * The helper.
 */

/* The decoder is the helper's child and a copy of it: what this process
 * came to hold once the helper ran is not in the decoder.
 */
START_TEST(test_decoder_forked_by_helper) {
  unsigned char *data, *big;
  struct got g;
  size_t len;
  pid_t control;
  int ctl[2], control_global, control_heap;
  char c;

  marker_make();

  /* The check can tell: a process forked from here holds the marker. */
  ck_assert_int_eq(pipe(ctl), 0);
  control = fork();
  ck_assert_int_ge(control, 0);
  if (control == 0) {
    close(ctl[1]);
    _exit(read(ctl[0], &c, 1) == 0 ? 0 : 1);
  }
  close(ctl[0]);
  control_global = holds_marker(control, marker);
  control_heap = holds_marker(control, marker_heap);
  close(ctl[1]);
  ck_assert_int_eq(waitpid(control, NULL, 0), control);

  data = two_files(&len, &big);
  memset(&g, 0, sizeof(g));
  g.probe_at = 1;
  ck_assert_int_eq(unpack(data, len, NULL, &g, NULL), 0);
  ck_assert_uint_eq(g.n, 2);

  ck_assert_int_gt(g.probe.decoder, 0);
  ck_assert_int_eq(g.probe.ppid, mailoauth_tnef_helper_pid());
  ck_assert_int_ne(g.probe.ppid, getpid());
  /* ... under its seccomp filter. */
  ck_assert_int_eq(g.probe.seccomp, 2);

  ck_assert_int_eq(control_global, 1);
  ck_assert_int_eq(control_heap, 1);
  ck_assert_int_ne(g.probe.global, 1);
  ck_assert_int_ne(g.probe.heap, 1);
  if (geteuid() == 0) {
    /* Root may look into a process that is not dumpable: it did look. */
    ck_assert_int_eq(g.probe.global, 0);
  } else if (g.probe.global < 0) {
    fprintf(stderr, "test_decoder_forked_by_helper: the decoder's memory "
      "takes root to read; only its parent was checked\n");
  }

  free(marker_heap);
  marker_heap = NULL;
  free(data);
  free(big);
}
END_TEST

/* Every decoder ends by itself with status 0 once its end record is sent,
 * whatever it decoded: none dies of its own filter on the way out (as
 * sanitizer builds made them do at _exit()), and one given nothing to
 * decode still waits for its filter to be verified, so the helper never
 * finds it gone or dying and unpacking stays on.
 */
START_TEST(test_decoder_exits_cleanly) {
  static const char *const inputs[] = { "", "x", "hello, world\n" };
  unsigned char *data;
  unsigned int nfiles = 0;
  pid_t helper = mailoauth_tnef_helper_pid();
  struct got g;
  size_t len, i;
  int round;

  data = load_sample("one-file.tnef", &len);
  memset(&g, 0, sizeof(g));
  ck_assert_int_eq(unpack(data, len, NULL, &g, &nfiles), 0);
  ck_assert_uint_eq(nfiles, 1);

  for (round = 0; round < 5; round++) {
    for (i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
      memset(&g, 0, sizeof(g));
      errno = 0;
      ck_assert_int_eq(unpack(inputs[i], strlen(inputs[i]), NULL, &g,
        &nfiles), -1);
      ck_assert_int_eq(errno, EBADMSG);
    }
  }

  /* 16 decoders, all through to their end record. */
  ck_assert_uint_eq(count_str(traces, " unpacking "), 16);
  ck_assert_msg(strstr(traces, "did not exit cleanly") == NULL, "%s",
    traces);
  ck_assert_msg(logs[0] == '\0', "%s", logs);
  ck_assert_int_eq(mailoauth_tnef_helper_pid(), helper);
  free(data);
}
END_TEST

/* A helper that was killed (a crash, the OOM killer): unpacking fails at
 * once with ESRCH, forking nothing, and the helper is reaped and its
 * socket closed.
 */
START_TEST(test_helper_killed) {
  unsigned char *data;
  pid_t helper = mailoauth_tnef_helper_pid();
  int fds = count_fds(), fd, i;
  struct got g;
  size_t len;

  data = load_sample("one-file.tnef", &len);
  ck_assert_int_eq(kill(helper, SIGKILL), 0);
  wait_ended(helper);

  fd = mem_fd(data, len);
  for (i = 0; i < 2; i++) {
    long long t0 = now_ms();

    memset(&g, 0, sizeof(g));
    errno = 0;
    ck_assert_int_eq(mailoauth_tnef_unpack(fd, tmp_dir, NULL, got_file, &g,
      NULL), -1);
    ck_assert_int_eq(errno, ESRCH);
    ck_assert_int_lt(now_ms() - t0, 500);
    ck_assert_uint_eq(g.n, 0);
  }
  close(fd);

  ck_assert_int_eq(mailoauth_tnef_helper_pid(), -1);
  ck_assert_int_lt(parent_of(helper, NULL), 0);
  ck_assert_int_eq(count_fds(), fds - 1);
  assert_no_children();
  ck_assert_msg(strstr(traces, "no TNEF helper") != NULL, "%s", traces);
  free(data);
}
END_TEST

/* Killed while its decoder runs: the decoder goes with it, and the files
 * already passed on stay passed.
 */
START_TEST(test_helper_killed_mid_unpack) {
  unsigned char *data, *big;
  unsigned int nfiles = 0;
  int fds = count_fds(), fd;
  struct got g;
  size_t len;

  data = two_files(&len, &big);
  fd = mem_fd(data, len);
  memset(&g, 0, sizeof(g));
  g.kill_helper_at = 1;
  errno = 0;
  ck_assert_int_eq(mailoauth_tnef_unpack(fd, tmp_dir, NULL, got_file, &g,
    &nfiles), -1);
  ck_assert_int_eq(errno, ESRCH);
  ck_assert_uint_eq(nfiles, 1);
  ck_assert_str_eq(g.name[0], "small.txt");
  close(fd);

  ck_assert_int_eq(mailoauth_tnef_helper_pid(), -1);
  ck_assert_int_eq(count_fds(), fds - 1);
  assert_no_children();
  free(data);
  free(big);
}
END_TEST

/* The helper ends by itself once its socket is closed; then nothing is
 * unpacked, and no decoder is forked from here instead.
 */
START_TEST(test_helper_ends_with_its_socket) {
  unsigned char *data;
  pid_t helper = mailoauth_tnef_helper_pid();
  int fds = count_fds(), fd;
  struct got g;
  size_t len;

  ck_assert_int_eq(mailoauth_tnef_helper_stop(), 0);
  ck_assert_int_lt(parent_of(helper, NULL), 0);
  ck_assert_int_eq(count_fds(), fds - 1);
  ck_assert_int_eq(mailoauth_tnef_helper_pid(), -1);
  errno = 0;
  ck_assert_int_eq(mailoauth_tnef_helper_stop(), -1);
  ck_assert_int_eq(errno, ESRCH);

  data = load_sample("one-file.tnef", &len);
  memset(&g, 0, sizeof(g));
  fd = mem_fd(data, len);
  errno = 0;
  ck_assert_int_eq(mailoauth_tnef_unpack(fd, tmp_dir, NULL, got_file, &g,
    NULL), -1);
  ck_assert_int_eq(errno, ESRCH);
  close(fd);
  assert_no_children();
  free(data);
}
END_TEST

/* ... and when its caller dies without closing it.  The caller here is a
 * fork of this process, which also shows that a helper inherited through
 * fork() is left to its owner.
 */
START_TEST(test_helper_ends_with_its_caller) {
  pid_t caller, helper = -1;
  int p[2];

  ck_assert_int_eq(pipe(p), 0);
  caller = fork();
  ck_assert_int_ge(caller, 0);
  if (caller == 0) {
    pid_t h;

    close(p[0]);
    if (mailoauth_tnef_helper_pid() != -1 ||
        mailoauth_tnef_helper_start(NULL, NULL) < 0) {
      _exit(1);
    }
    h = mailoauth_tnef_helper_pid();
    if (write(p[1], &h, sizeof(h)) != sizeof(h)) {
      _exit(1);
    }
    pause();
    _exit(0);
  }

  close(p[1]);
  ck_assert_int_eq(read(p[0], &helper, sizeof(helper)), sizeof(helper));
  close(p[0]);
  ck_assert_int_gt(helper, 0);
  ck_assert_int_ne(helper, mailoauth_tnef_helper_pid());
  ck_assert_int_eq(parent_of(helper, NULL), caller);

  ck_assert_int_eq(kill(caller, SIGKILL), 0);
  ck_assert_int_eq(waitpid(caller, NULL, 0), caller);
  wait_ended(helper);
  assert_no_children();
}
END_TEST

/* What the helper does not understand gets an error answer, which the
 * next unpacking passes over.
 */
START_TEST(test_helper_passes_over_garbage) {
  unsigned char bad[45] = { 'U' }, *data;
  unsigned int nfiles = 0;
  struct got g;
  size_t len;

  /* Not a message at all. */
  ck_assert_int_eq(send(helper_sock, "junk", 4, 0), 4);
  /* An unpack request without its descriptors. */
  ck_assert_int_eq(mailoauth_tnef_sock_send(helper_sock, bad, sizeof(bad),
    NULL, 0), 0);

  data = load_sample("one-file.tnef", &len);
  memset(&g, 0, sizeof(g));
  ck_assert_int_eq(unpack(data, len, NULL, &g, &nfiles), 0);
  ck_assert_uint_eq(nfiles, 1);
  ck_assert_str_eq(g.name[0], "AUTHORS");
  ck_assert_msg(strstr(traces, "stale answer") != NULL, "%s", traces);
  free(data);
}
END_TEST

static int init_report(void *arg) {
  pid_t self = getpid();

  return write(*(int *) arg, &self, sizeof(self)) == sizeof(self) ? 0 : -1;
}

static int init_refuse(void *arg) {
  (void) arg;
  errno = EACCES;
  return -1;
}

/* The helper keeps only its socket and /dev/null (when this process may
 * look: it is not dumpable), and its environment is wiped.
 */
static void assert_helper_bare(pid_t helper) {
  char path[64], target[256], env[4096];
  struct dirent *de;
  ssize_t n, i;
  int nfds = 0, fd;
  DIR *d;

  snprintf(path, sizeof(path), "/proc/%ld/fd", (long) helper);
  d = opendir(path);
  if (d == NULL) {
    fprintf(stderr, "assert_helper_bare: %s takes root to read\n", path);
    return;
  }
  while ((de = readdir(d)) != NULL) {
    char link[sizeof(path) + sizeof(de->d_name) + 1];

    if (de->d_name[0] == '.') {
      continue;
    }
    nfds++;
    snprintf(link, sizeof(link), "%s/%s", path, de->d_name);
    n = readlink(link, target, sizeof(target) - 1);
    ck_assert_int_gt(n, 0);
    target[n] = '\0';
    if (atoi(de->d_name) == 3) {
      ck_assert_msg(strncmp(target, "socket:", 7) == 0, "fd 3: %s", target);
    } else {
      ck_assert_msg(atoi(de->d_name) <= 2 && strcmp(target, "/dev/null") == 0,
        "fd %s: %s", de->d_name, target);
    }
  }
  closedir(d);
  ck_assert_int_eq(nfds, 4);

  snprintf(path, sizeof(path), "/proc/%ld/environ", (long) helper);
  fd = open(path, O_RDONLY);
  ck_assert_int_ge(fd, 0);
  n = read(fd, env, sizeof(env));
  close(fd);
  for (i = 0; i < n; i++) {
    ck_assert_msg(env[i] == '\0', "environment left: %.40s", env + i);
  }
}

/* The init function runs in the helper, before it closes what it
 * inherited; one that fails stops it starting.
 */
START_TEST(test_helper_init) {
  pid_t reported = -1;
  int p[2], fds;
  char c;

  assert_helper_bare(mailoauth_tnef_helper_pid());
  ck_assert_int_eq(mailoauth_tnef_helper_stop(), 0);

  fds = count_fds();
  errno = 0;
  ck_assert_int_eq(mailoauth_tnef_helper_start(init_refuse, NULL), -1);
  ck_assert_int_eq(errno, EACCES);
  ck_assert_int_eq(count_fds(), fds);
  assert_no_children();

  ck_assert_int_eq(pipe(p), 0);
  helper_sock = mailoauth_tnef_helper_start(init_report, &p[1]);
  ck_assert_int_gt(helper_sock, 2);
  close(p[1]);
  ck_assert_int_eq(read(p[0], &reported, sizeof(reported)),
    sizeof(reported));
  ck_assert_int_eq(reported, mailoauth_tnef_helper_pid());
  /* Its copy of the pipe is closed: end of file. */
  ck_assert_int_eq(read(p[0], &c, 1), 0);
  close(p[0]);
  assert_helper_bare(reported);

  errno = 0;
  ck_assert_int_eq(mailoauth_tnef_helper_start(NULL, NULL), -1);
  ck_assert_int_eq(errno, EBUSY);
}
END_TEST

/* ------------------------------------------------------------------------
 * What the samples do not show.
 */

/* libytnef alone refuses a whole stream for a subject of 100 bytes or
 * more, a title over 100 bytes or an attachment icon over 10 KB; none of
 * them costs a file here.
 */
/* ------------------------------------------------------------------------
 * The sandbox, verified from outside the decoder.
 */

/* Seccomp made unavailable with the test hook (decoders skip their filter
 * but say they are armed all the same): the helper sees in /proc that the
 * decoder is not filtered and gives it nothing to decode; unpacking goes
 * off for good, with one log line that says why.
 */
START_TEST(test_no_seccomp_never_decodes) {
  unsigned char *data;
  unsigned int nfiles = 99;
  int fds, fd, i;
  pid_t helper;
  struct got g;
  size_t len;

  ck_assert_int_eq(mailoauth_tnef_helper_stop(), 0);
  ck_assert_int_eq(setenv("MAILOAUTH_TEST_NO_SECCOMP", "1", 1), 0);
  helper_sock = mailoauth_tnef_helper_start(NULL, NULL);
  ck_assert_int_eq(unsetenv("MAILOAUTH_TEST_NO_SECCOMP"), 0);
  ck_assert_int_gt(helper_sock, 2);
  helper = mailoauth_tnef_helper_pid();
  fds = count_fds();

  data = load_sample("one-file.tnef", &len);
  fd = mem_fd(data, len);
  for (i = 0; i < 3; i++) {
    memset(&g, 0, sizeof(g));
    errno = 0;
    ck_assert_int_eq(mailoauth_tnef_unpack(fd, tmp_dir, NULL, got_file, &g,
      &nfiles), -1);
    ck_assert_int_eq(errno, i == 0 ? ENOTSUP : ESRCH);
    ck_assert_uint_eq(nfiles, 0);
    ck_assert_uint_eq(g.n, 0);
  }
  close(fd);

  /* The parent never heard of a decoder: none was let run. */
  ck_assert_msg(strstr(traces, " unpacking ") == NULL, "%s", traces);
  ck_assert_uint_eq(count_str(logs, "unpacking is off"), 1);
  ck_assert_msg(strstr(logs, "/proc/PID/status does not show a decoder "
    "under its seccomp filter") != NULL, "%s", logs);

  ck_assert_int_eq(mailoauth_tnef_helper_pid(), -1);
  ck_assert_int_lt(parent_of(helper, NULL), 0);
  ck_assert_int_eq(count_fds(), fds - 1);
  assert_no_children();
  free(data);
}
END_TEST

/* Installs a filter on this process that lets everything through but the
 * installing of further filters, which fails with EPERM (as under a
 * service manager's filter that forbids it).
 */
static int forbid_seccomp(void) {
  struct sock_filter filter[] = {
    BPF_STMT(BPF_LD|BPF_W|BPF_ABS, offsetof(struct seccomp_data, nr)),
#ifdef __NR_seccomp
    BPF_JUMP(BPF_JMP|BPF_JEQ|BPF_K, __NR_seccomp, 4, 0),
#else
    BPF_JUMP(BPF_JMP|BPF_JEQ|BPF_K, 0xffffffffU, 4, 0),
#endif
    BPF_JUMP(BPF_JMP|BPF_JEQ|BPF_K, __NR_prctl, 0, 2),
    BPF_STMT(BPF_LD|BPF_W|BPF_ABS, offsetof(struct seccomp_data, args[0])),
    BPF_JUMP(BPF_JMP|BPF_JEQ|BPF_K, PR_SET_SECCOMP, 1, 0),
    BPF_STMT(BPF_RET|BPF_K, SECCOMP_RET_ALLOW),
    BPF_STMT(BPF_RET|BPF_K, SECCOMP_RET_ERRNO | EPERM)
  };
  struct sock_fprog prog;

  prog.len = (unsigned short) (sizeof(filter) / sizeof(filter[0]));
  prog.filter = filter;
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
    return -1;
  }
  return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}

/* Where the filter cannot be installed, nothing is decoded (a decoder
 * used to decode without it).  Run in a process of its own, which the
 * filter is put on: its exit status says what went wrong.
 */
START_TEST(test_filter_refused_never_decodes) {
  pid_t pid;
  int status = 0;

  ck_assert_int_eq(mailoauth_tnef_helper_stop(), 0);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    unsigned char *data;
    unsigned int nfiles = 99;
    struct got g;
    size_t len;
    int fd, rc;

    data = load_sample("one-file.tnef", &len);
    fd = mem_fd(data, len);
    if (forbid_seccomp() < 0) {
      _exit(10);
    }
    if (mailoauth_tnef_helper_start(NULL, NULL) < 0) {
      _exit(11);
    }
    memset(&g, 0, sizeof(g));
    errno = 0;
    rc = mailoauth_tnef_unpack(fd, tmp_dir, NULL, got_file, &g, &nfiles);
    if (rc != -1 || errno != ENOTSUP) {
      _exit(12);
    }
    if (nfiles != 0 || g.n != 0) {
      _exit(13);
    }
    if (count_str(logs, "unpacking is off") != 1 ||
        strstr(logs, "could not install its seccomp filter") == NULL) {
      _exit(14);
    }
    if (mailoauth_tnef_helper_pid() != -1 ||
        waitpid(-1, NULL, WNOHANG) != -1 || errno != ECHILD) {
      _exit(15);
    }
    close(fd);
    _exit(0);
  }
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
    "status 0x%x", status);
}
END_TEST

/* A helper under a filter of its own already (as under a service manager
 * that filters): its decoders inherit it, so their "Seccomp: 2" proves
 * nothing by itself, but they add one more filter, which the kernel
 * counts: unpacking works.
 */
START_TEST(test_filtered_helper_still_verifies) {
  pid_t pid;
  int status = 0;

  ck_assert_int_eq(mailoauth_tnef_helper_stop(), 0);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    struct sock_filter allow[] = {
      BPF_STMT(BPF_RET|BPF_K, SECCOMP_RET_ALLOW)
    };
    struct sock_fprog prog = { 1, allow };
    unsigned char *data;
    unsigned int nfiles = 0;
    struct got g;
    size_t len;
    int fd;

    data = load_sample("one-file.tnef", &len);
    fd = mem_fd(data, len);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0) {
      _exit(10);
    }
    if (mailoauth_tnef_helper_start(NULL, NULL) < 0) {
      _exit(11);
    }
    memset(&g, 0, sizeof(g));
    if (mailoauth_tnef_unpack(fd, tmp_dir, NULL, got_file, &g,
        &nfiles) < 0) {
      /* A kernel that does not count filters cannot tell: then the
       * decoder must not run.
       */
      _exit(errno == ENOTSUP && strstr(logs, "no Seccomp_filters") != NULL ?
        20 : 12);
    }
    if (nfiles != 1 || strcmp(g.name[0], "AUTHORS") != 0) {
      _exit(13);
    }
    if (mailoauth_tnef_helper_stop() < 0) {
      _exit(14);
    }
    close(fd);
    _exit(0);
  }
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert_msg(WIFEXITED(status), "status 0x%x", status);
  if (WEXITSTATUS(status) == 20) {
    fprintf(stderr, "test_filtered_helper_still_verifies: the kernel does "
      "not count seccomp filters; unpacking was refused, as it must\n");
  } else {
    ck_assert_int_eq(WEXITSTATUS(status), 0);
  }
}
END_TEST

/* The Seccomp: field of /proc/PID/status, read strictly. */
START_TEST(test_status_seccomp) {
  long f = 99;

  ck_assert_int_eq(mailoauth_tnef_status_seccomp("Name:\ttnef decoder\n"
    "Seccomp:\t2\nSeccomp_filters:\t1\nSpeculation_Store_Bypass:\tx\n",
    &f), 2);
  ck_assert_int_eq(f, 1);
  ck_assert_int_eq(mailoauth_tnef_status_seccomp("Seccomp:\t0\n", &f), 0);
  ck_assert_int_eq(f, -1);
  ck_assert_int_eq(mailoauth_tnef_status_seccomp("Seccomp_filters:\t3\n"
    "Seccomp:\t2", &f), 2);
  ck_assert_int_eq(f, 3);
  ck_assert_int_eq(mailoauth_tnef_status_seccomp("Seccomp:\t1\n", NULL), 1);

  /* Only a whole field at the start of a line counts. */
  ck_assert_int_eq(mailoauth_tnef_status_seccomp("", &f), -1);
  ck_assert_int_eq(mailoauth_tnef_status_seccomp("Seccomp_filters:\t2\n",
    &f), -1);
  ck_assert_int_eq(mailoauth_tnef_status_seccomp("NoSeccomp:\t2\n", &f), -1);
  ck_assert_int_eq(mailoauth_tnef_status_seccomp("Name:\tSeccomp:\t2\n",
    &f), -1);
  ck_assert_int_eq(mailoauth_tnef_status_seccomp("Seccomp:\t2x\n", &f), -1);
  ck_assert_int_eq(mailoauth_tnef_status_seccomp("Seccomp:\t\n", &f), -1);
  ck_assert_int_eq(mailoauth_tnef_status_seccomp("Seccomp:\t7\n", &f), -1);
  ck_assert_int_eq(mailoauth_tnef_status_seccomp("Seccomp:\t"
    "99999999999999999999\n", &f), -1);
}
END_TEST

START_TEST(test_libytnef_limits_avoided) {
  char subject[201], title[151];
  unsigned char *icon;
  TNEFStruct t;
  struct got g;
  struct buf b;
  struct props p;
  int saved, null_fd, rc;

  memset(subject, 's', sizeof(subject) - 1);
  subject[sizeof(subject) - 1] = '\0';
  memset(title, 't', sizeof(title) - 1);
  title[sizeof(title) - 1] = '\0';
  icon = pattern(20000, 3);

  tnef_message(&b, subject, 1252);
  tnef_file(&b, "A.TXT", "first.txt", "first", 5);

  tnef_renddata(&b);
  tnef_str_attr(&b, LVL_ATT, A_ATTACH_TITLE, title);
  tnef_attr(&b, LVL_ATT, A_ATTACH_METAFILE, icon, 20000);
  tnef_attr(&b, LVL_ATT, A_ATTACH_DATA, "second", 6);
  memset(&p, 0, sizeof(p));
  props_long(&p, PR_ATTACH_METHOD_ID, 1);
  props_str8(&p, PR_ATTACH_LONG_NAME, "second.txt");
  props_attr(&b, LVL_ATT, A_ATTACHMENT, &p);

  /* The message's own properties with a long subject, too. */
  memset(&p, 0, sizeof(p));
  props_str8(&p, PR_SUBJECT_ID, subject);
  props_attr(&b, LVL_MSG, A_MAPI_PROPS, &p);

  /* (It says so on stdout, which is kept out of the test's output.) */
  fflush(stdout);
  saved = dup(STDOUT_FILENO);
  null_fd = open("/dev/null", O_WRONLY);
  ck_assert_int_ge(saved, 0);
  ck_assert_int_ge(null_fd, 0);
  dup2(null_fd, STDOUT_FILENO);
  memset(&t, 0, sizeof(t));
  TNEFInitialize(&t);
  t.Debug = 0;
  rc = TNEFParseMemory(b.d, (long) b.len, &t);
  TNEFFree(&t);
  fflush(stdout);
  dup2(saved, STDOUT_FILENO);
  close(saved);
  close(null_fd);
  ck_assert_int_lt(rc, 0);

  memset(&g, 0, sizeof(g));
  ck_assert_int_eq(unpack(b.d, b.len, NULL, &g, NULL), 0);
  ck_assert_uint_eq(g.n, 2);
  ck_assert_str_eq(g.name[0], "first.txt");
  ck_assert_str_eq(g.name[1], "second.txt");
  ck_assert_uint_eq(g.size[1], 6);

  free(icon);
  free(b.d);
}
END_TEST

/* Properties libytnef cannot take (a value over 512 KB) cost the long name,
 * not the file: the title is used.
 */
START_TEST(test_mapi_refused_falls_back_to_title) {
  unsigned char *blob;
  struct got g;
  struct buf b;
  struct props p;

  blob = pattern(600000, 5);
  tnef_message(&b, "big property", 1252);
  tnef_renddata(&b);
  tnef_str_attr(&b, LVL_ATT, A_ATTACH_TITLE, "REPORT~1.PDF");
  tnef_attr(&b, LVL_ATT, A_ATTACH_DATA, "%PDF", 4);
  memset(&p, 0, sizeof(p));
  props_long(&p, PR_ATTACH_METHOD_ID, 1);
  props_str8(&p, PR_ATTACH_LONG_NAME, "report for the year.pdf");
  props_var(&p, P_BINARY, 0x3702, blob, 600000);
  props_attr(&b, LVL_ATT, A_ATTACHMENT, &p);

  memset(&g, 0, sizeof(g));
  ck_assert_int_eq(unpack(b.d, b.len, NULL, &g, NULL), 0);
  ck_assert_uint_eq(g.n, 1);
  ck_assert_str_eq(g.name[0], "REPORT~1.PDF");
  ck_assert_uint_eq(g.size[0], 4);

  free(blob);
  free(b.d);
}
END_TEST

START_TEST(test_names) {
  /* "résumé 😀.txt": a character beyond the BMP (a surrogate pair). */
  static const uint32_t cps[] = { 'r', 0xe9, 's', 'u', 'm', 0xe9, ' ',
    0x1f600, '.', 't', 'x', 't' };
  /* U+07FF, which libytnef encodes in three bytes. */
  static const uint32_t nko[] = { 0x7ff, '.', 'b', 'i', 'n' };
  struct got g;
  struct buf b;
  struct props p;

  tnef_message(&b, "names", 1252);

  /* 1: the Unicode long name wins over the 8-bit one and the title. */
  tnef_renddata(&b);
  tnef_str_attr(&b, LVL_ATT, A_ATTACH_TITLE, "RSUM~1.TXT");
  tnef_attr(&b, LVL_ATT, A_ATTACH_DATA, "1", 1);
  memset(&p, 0, sizeof(p));
  props_str8(&p, PR_ATTACH_LONG_NAME, "r?sum? ?.txt");
  props_unicode(&p, PR_ATTACH_LONG_NAME, cps, sizeof(cps) / sizeof(cps[0]));
  props_attr(&b, LVL_ATT, A_ATTACHMENT, &p);

  /* 2: only a title, in windows-1252. */
  tnef_renddata(&b);
  tnef_str_attr(&b, LVL_ATT, A_ATTACH_TITLE, "caf\xe9.txt");
  tnef_attr(&b, LVL_ATT, A_ATTACH_DATA, "22", 2);

  /* 3: an empty title and PR_ATTACH_FILENAME. */
  tnef_renddata(&b);
  tnef_str_attr(&b, LVL_ATT, A_ATTACH_TITLE, "");
  tnef_attr(&b, LVL_ATT, A_ATTACH_DATA, "333", 3);
  memset(&p, 0, sizeof(p));
  props_str8(&p, PR_ATTACH_FILENAME_ID, "SHORT.DOC");
  props_attr(&b, LVL_ATT, A_ATTACHMENT, &p);

  /* 4: no name at all, and an empty file. */
  tnef_renddata(&b);
  tnef_attr(&b, LVL_ATT, A_ATTACH_DATA, "", 0);

  /* 5: U+07FF. */
  tnef_renddata(&b);
  tnef_attr(&b, LVL_ATT, A_ATTACH_DATA, "5", 1);
  memset(&p, 0, sizeof(p));
  props_unicode(&p, PR_ATTACH_LONG_NAME, nko, sizeof(nko) / sizeof(nko[0]));
  props_attr(&b, LVL_ATT, A_ATTACHMENT, &p);

  memset(&g, 0, sizeof(g));
  ck_assert_int_eq(unpack(b.d, b.len, NULL, &g, NULL), 0);
  ck_assert_uint_eq(g.n, 5);
  ck_assert_str_eq(g.name[0], "r\xc3\xa9sum\xc3\xa9 \xf0\x9f\x98\x80.txt");
  ck_assert_str_eq(g.name[1], "caf\xc3\xa9.txt");
  ck_assert_str_eq(g.name[2], "SHORT.DOC");
  ck_assert(!g.has_name[3]);
  ck_assert_uint_eq(g.size[3], 0);
  ck_assert_str_eq(g.name[4], "\xdf\xbf.bin");

  /* In process: 8-bit names come raw, with their code page. */
  memset(&g, 0, sizeof(g));
  ck_assert_int_eq(decode(b.d, b.len, NULL, &g), 0);
  ck_assert_uint_eq(g.n, 5);
  ck_assert_uint_eq(g.codepage[0], 65001);
  ck_assert_str_eq(g.name[1], "caf\xe9.txt");
  ck_assert_uint_eq(g.codepage[1], 1252);

  free(b.d);
}
END_TEST

START_TEST(test_codepages) {
  struct got g;
  struct buf b;

  /* Shift_JIS (932) for "日本.txt"; no code page at all means windows-1252
   * unless the bytes are UTF-8.
   */
  tnef_message(&b, NULL, 932);
  tnef_renddata(&b);
  tnef_str_attr(&b, LVL_ATT, A_ATTACH_TITLE, "\x93\xfa\x96\x7b.txt");
  tnef_attr(&b, LVL_ATT, A_ATTACH_DATA, "x", 1);
  memset(&g, 0, sizeof(g));
  ck_assert_int_eq(unpack(b.d, b.len, NULL, &g, NULL), 0);
  ck_assert_uint_eq(g.n, 1);
  ck_assert_str_eq(g.name[0], "\xe6\x97\xa5\xe6\x9c\xac.txt");
  free(b.d);

  tnef_begin(&b);
  tnef_renddata(&b);
  tnef_str_attr(&b, LVL_ATT, A_ATTACH_TITLE, "na\xefve.txt");
  tnef_attr(&b, LVL_ATT, A_ATTACH_DATA, "x", 1);
  memset(&g, 0, sizeof(g));
  ck_assert_int_eq(unpack(b.d, b.len, NULL, &g, NULL), 0);
  ck_assert_str_eq(g.name[0], "na\xc3\xafve.txt");
  free(b.d);
}
END_TEST

START_TEST(test_attachment_kinds) {
  /* IID_IStorage (an OLE object) and IID_IMessage, as stored. */
  static const unsigned char iid_storage[16] = { 0x0b, 0, 0, 0, 0, 0, 0, 0,
    0xc0, 0, 0, 0, 0, 0, 0, 0x46 };
  static const unsigned char iid_message[16] = { 0x07, 0x03, 0x02, 0, 0, 0,
    0, 0, 0xc0, 0, 0, 0, 0, 0, 0, 0x46 };
  unsigned char obj[16 + 10];
  struct got g;
  struct buf b;
  struct props p;

  tnef_message(&b, "kinds", 1252);

  /* Attachment attributes before any attAttachRenddata: no attachment. */
  tnef_attr(&b, LVL_ATT, A_ATTACH_DATA, "orphan", 6);

  /* An attached Outlook item: its own TNEF stream, named by its title. */
  tnef_renddata(&b);
  tnef_str_attr(&b, LVL_ATT, A_ATTACH_TITLE, "Forwarded");
  memset(&p, 0, sizeof(p));
  props_long(&p, PR_ATTACH_METHOD_ID, 5);
  memcpy(obj, iid_message, 16);
  memcpy(obj + 16, "\x78\x9f\x3e\x22\x00\x00xxxx", 10);
  props_var(&p, P_OBJECT, PR_ATTACH_DATA, obj, sizeof(obj));
  props_attr(&b, LVL_ATT, A_ATTACHMENT, &p);

  /* An object whose content is in the properties only. */
  tnef_renddata(&b);
  memset(&p, 0, sizeof(p));
  props_long(&p, PR_ATTACH_METHOD_ID, 6);
  props_str8(&p, PR_ATTACH_LONG_NAME, "sheet.xls");
  memcpy(obj, iid_storage, 16);
  memcpy(obj + 16, "0123456789", 10);
  props_var(&p, P_OBJECT, PR_ATTACH_DATA, obj, sizeof(obj));
  props_attr(&b, LVL_ATT, A_ATTACHMENT, &p);

  /* PR_ATTACH_DATA_BIN in the properties. */
  tnef_renddata(&b);
  memset(&p, 0, sizeof(p));
  props_str8(&p, PR_ATTACH_LONG_NAME, "bin.dat");
  props_var(&p, P_BINARY, PR_ATTACH_DATA, "abcdefg", 7);
  props_attr(&b, LVL_ATT, A_ATTACHMENT, &p);

  /* A reference (no content anywhere): skipped. */
  tnef_renddata(&b);
  memset(&p, 0, sizeof(p));
  props_long(&p, PR_ATTACH_METHOD_ID, 2);
  props_str8(&p, PR_ATTACH_LONG_NAME, "\\\\server\\share\\file.doc");
  props_attr(&b, LVL_ATT, A_ATTACHMENT, &p);

  memset(&g, 0, sizeof(g));
  ck_assert_int_eq(unpack(b.d, b.len, NULL, &g, NULL), 0);
  ck_assert_uint_eq(g.n, 3);
  ck_assert_str_eq(g.name[0], "Forwarded.tnef");
  ck_assert_uint_eq(g.size[0], 10);
  ck_assert_str_eq(g.name[1], "sheet.xls");
  ck_assert_uint_eq(g.size[1], 10);
  ck_assert_str_eq(g.name[2], "bin.dat");
  ck_assert_uint_eq(g.size[2], 7);
  free(b.d);
}
END_TEST


/* What libytnef calls a bad message is read as far as it goes: a wrong
 * checksum costs nothing, an item that cannot be kept is noted; either way
 * the caller learns (EBADMSG) after the files.
 */
START_TEST(test_damaged_streams) {
  static const unsigned char iid_message[16] = { 0x07, 0x03, 0x02, 0, 0, 0,
    0, 0, 0xc0, 0, 0, 0, 0, 0, 0, 0x46 };
  unsigned char obj[16 + 4];
  struct got g;
  struct buf b;
  struct props p;
  size_t sum_at;

  tnef_message(&b, "damaged", 1252);
  tnef_file(&b, "ONE.TXT", "one.txt", "first", 5);
  tnef_renddata(&b);
  tnef_str_attr(&b, LVL_ATT, A_ATTACH_TITLE, "two.txt");
  tnef_attr(&b, LVL_ATT, A_ATTACH_DATA, "second", 6);
  sum_at = b.len - 2;
  b.d[sum_at] ^= 0x01;
  memset(&g, 0, sizeof(g));
  errno = 0;
  ck_assert_int_eq(decode(b.d, b.len, NULL, &g), -1);
  ck_assert_int_eq(errno, EBADMSG);
  ck_assert_uint_eq(g.n, 2);
  ck_assert_str_eq(g.name[0], "one.txt");
  ck_assert_str_eq(g.name[1], "two.txt");
  ck_assert_uint_eq(g.size[1], 6);
  b.d[sum_at] ^= 0x01;

  /* The same through the sandboxed child. */
  b.d[sum_at] ^= 0x01;
  memset(&g, 0, sizeof(g));
  errno = 0;
  ck_assert_int_eq(unpack(b.d, b.len, NULL, &g, NULL), -1);
  ck_assert_int_eq(errno, EBADMSG);
  ck_assert_uint_eq(g.n, 2);
  b.d[sum_at] ^= 0x01;

  /* An attached Outlook item not held as TNEF cannot be kept: noted. */
  tnef_renddata(&b);
  memset(&p, 0, sizeof(p));
  props_long(&p, PR_ATTACH_METHOD_ID, 5);
  memcpy(obj, iid_message, 16);
  memcpy(obj + 16, "abcd", 4);
  props_var(&p, P_OBJECT, PR_ATTACH_DATA, obj, sizeof(obj));
  props_attr(&b, LVL_ATT, A_ATTACHMENT, &p);
  memset(&g, 0, sizeof(g));
  errno = 0;
  ck_assert_int_eq(decode(b.d, b.len, NULL, &g), -1);
  ck_assert_int_eq(errno, EBADMSG);
  ck_assert_uint_eq(g.n, 2);
  free(b.d);

  /* An item named by its display name; the whole stream is fine. */
  tnef_message(&b, NULL, 1252);
  tnef_renddata(&b);
  memset(&p, 0, sizeof(p));
  props_long(&p, PR_ATTACH_METHOD_ID, 5);
  props_str8(&p, 0x3001, "Budget review");
  {
    unsigned char item[16 + 6] = { 0 };

    memcpy(item, iid_message, 16);
    memcpy(item + 16, "\x78\x9f\x3e\x22\x00\x00", 6);
    props_var(&p, P_OBJECT, PR_ATTACH_DATA, item, sizeof(item));
  }
  props_attr(&b, LVL_ATT, A_ATTACHMENT, &p);
  memset(&g, 0, sizeof(g));
  ck_assert_int_eq(decode(b.d, b.len, NULL, &g), 0);
  ck_assert_uint_eq(g.n, 1);
  ck_assert_str_eq(g.name[0], "Budget review.tnef");
  ck_assert_uint_eq(g.size[0], 6);
  free(b.d);
}
END_TEST

/* An attached Outlook item too big for libytnef's property limit (an
 * e-mail carrying a large file) is still found in the properties.
 */
START_TEST(test_large_embedded_item) {
  static const unsigned char iid_message[16] = { 0x07, 0x03, 0x02, 0, 0, 0,
    0, 0, 0xc0, 0, 0, 0, 0, 0, 0, 0x46 };
  size_t n = 700 * 1024;
  unsigned char *item = pattern(16 + n, 7);
  struct got g;
  struct buf b;
  struct props p;

  memcpy(item, iid_message, 16);
  memcpy(item + 16, "\x78\x9f\x3e\x22\x00\x00", 6);

  tnef_message(&b, NULL, 1252);
  tnef_renddata(&b);
  tnef_str_attr(&b, LVL_ATT, A_ATTACH_TITLE, "Big report");
  memset(&p, 0, sizeof(p));
  /* A named property first, as Outlook writes them. */
  buf_u32(&p.b, ((uint32_t) 0x8005 << 16) | P_LONG);
  buf_add(&p.b, iid_message, 16);
  buf_u32(&p.b, 0);
  buf_u32(&p.b, 0x8510);
  buf_u32(&p.b, 42);
  p.count++;
  props_long(&p, PR_ATTACH_METHOD_ID, 5);
  props_var(&p, P_OBJECT, PR_ATTACH_DATA, item, 16 + n);
  props_attr(&b, LVL_ATT, A_ATTACHMENT, &p);
  tnef_file(&b, "X.TXT", "x.txt", "x", 1);

  memset(&g, 0, sizeof(g));
  errno = 0;
  ck_assert_int_eq(decode(b.d, b.len, NULL, &g), 0);
  ck_assert_uint_eq(g.n, 2);
  ck_assert_str_eq(g.name[0], "Big report.tnef");
  ck_assert_uint_eq(g.size[0], n);
  ck_assert_str_eq(g.name[1], "x.txt");
  free(item);
  free(b.d);
}
END_TEST

/* ------------------------------------------------------------------------
 * The parent's reader, with records no decoder would send.
 */

static void rec_file(struct buf *b, uint32_t cp, const char *name,
    uint32_t name_len, uint64_t size, const void *data, size_t n) {
  unsigned char t = 'F';

  buf_add(b, &t, 1);
  buf_u32(b, cp);
  buf_u32(b, name_len);
  buf_add(b, name, name != NULL ? strlen(name) : 0);
  buf_u32(b, (uint32_t) size);
  buf_u32(b, (uint32_t) (size >> 32));
  buf_add(b, data, n);
}

static void rec_end(struct buf *b, uint32_t status, uint32_t reserved) {
  unsigned char t = 'E';

  buf_add(b, &t, 1);
  buf_u32(b, status);
  buf_u32(b, reserved);
}

/* Feeds in chunks of step bytes (0: all at once); returns finish()'s
 * result, errno set.
 */
static int read_records(const struct buf *b, size_t step,
    const struct mailoauth_tnef_limits *lim, struct got *g,
    unsigned int *nfiles) {
  struct mailoauth_tnef_reader *r;
  int fds = count_fds(), rc, xerrno;
  size_t off = 0;

  r = mailoauth_tnef_reader_new(tmp_dir, lim, got_file, g);
  ck_assert_ptr_nonnull(r);
  rc = 0;
  while (off < b->len && rc == 0) {
    size_t n = step == 0 || step > b->len - off ? b->len - off : step;

    rc = mailoauth_tnef_reader_feed(r, b->d + off, n);
    off += n;
  }
  if (rc == 0) {
    rc = mailoauth_tnef_reader_finish(r, nfiles);
  } else {
    xerrno = errno;
    /* The error sticks. */
    ck_assert_int_eq(mailoauth_tnef_reader_feed(r, "E", 1), -1);
    ck_assert_int_eq(errno, xerrno);
    ck_assert_int_eq(mailoauth_tnef_reader_finish(r, nfiles), -1);
    ck_assert_int_eq(errno, xerrno);
  }
  xerrno = errno;
  mailoauth_tnef_reader_free(r);
  ck_assert_int_eq(count_fds(), fds);
  errno = xerrno;
  return rc;
}

START_TEST(test_reader_records) {
  size_t steps[] = { 0, 1, 3, 7 };
  size_t i;

  for (i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
    unsigned int nfiles = 0;
    struct got g;
    struct buf b;
    char sha[65];

    memset(&b, 0, sizeof(b));
    rec_file(&b, 0, "a.txt", 5, 3, "abc", 3);
    rec_file(&b, 1252, "caf\xe9", 4, 0, NULL, 0);
    rec_file(&b, 0, NULL, 0, 2, "zz", 2);
    rec_end(&b, 0, 0);

    memset(&g, 0, sizeof(g));
    ck_assert_int_eq(read_records(&b, steps[i], NULL, &g, &nfiles), 0);
    ck_assert_uint_eq(nfiles, 3);
    ck_assert_str_eq(g.name[0], "a.txt");
    sha256_hex("abc", 3, sha);
    ck_assert_str_eq(g.sha[0], sha);
    ck_assert_str_eq(g.name[1], "caf\xc3\xa9");
    ck_assert_uint_eq(g.size[1], 0);
    ck_assert(!g.has_name[2]);
    free(b.d);
  }
}
END_TEST

/* The records in b end in error err, whole or fed a byte at a time, after
 * files callbacks; b is emptied for the next case.
 */
static void reader_fails(struct buf *b, const struct mailoauth_tnef_limits *lim,
    int err, unsigned int files) {
  size_t steps[] = { 0, 1 };
  size_t i;

  for (i = 0; i < 2; i++) {
    struct got g;

    memset(&g, 0, sizeof(g));
    errno = 0;
    ck_assert_int_eq(read_records(b, steps[i], lim, &g, NULL), -1);
    ck_assert_int_eq(errno, err);
    ck_assert_uint_eq(g.n, files);
  }
  free(b->d);
  memset(b, 0, sizeof(*b));
}

START_TEST(test_reader_garbage) {
  struct mailoauth_tnef_limits lim;
  unsigned char *d;
  struct buf b;

  mailoauth_tnef_limits_init(&lim);
  lim.max_files = 2;
  lim.max_file_bytes = 100;
  lim.max_total_bytes = 150;
  memset(&b, 0, sizeof(b));

  /* Nothing at all, or cut anywhere: the decoder died. */
  reader_fails(&b, &lim, ECHILD, 0);
  rec_file(&b, 0, "a", 1, 3, "ab", 2);
  reader_fails(&b, &lim, ECHILD, 0);

  /* An unknown record type. */
  buf_add(&b, "X", 1);
  reader_fails(&b, &lim, EIO, 0);

  /* A name too long, or with a NUL in it. */
  rec_file(&b, 0, NULL, MAILOAUTH_TNEF_MAX_NAME + 1, 0, NULL, 0);
  reader_fails(&b, &lim, EIO, 0);
  buf_add(&b, "F", 1);
  buf_u32(&b, 0);
  buf_u32(&b, 3);
  buf_add(&b, "a\0b", 3);
  buf_u32(&b, 0);
  buf_u32(&b, 0);
  reader_fails(&b, &lim, EIO, 0);

  /* Lengths over the limits are refused before anything is read. */
  rec_file(&b, 0, "huge", 4, UINT64_MAX, NULL, 0);
  reader_fails(&b, &lim, EFBIG, 0);
  d = pattern(100, 1);
  rec_file(&b, 0, "a", 1, 100, d, 100);
  free(d);
  rec_file(&b, 0, "b", 1, 51, NULL, 0);
  reader_fails(&b, &lim, EFBIG, 1);

  /* More files than allowed. */
  rec_file(&b, 0, "a", 1, 0, NULL, 0);
  rec_file(&b, 0, "b", 1, 0, NULL, 0);
  rec_file(&b, 0, "c", 1, 0, NULL, 0);
  reader_fails(&b, &lim, EFBIG, 2);

  /* End records: bad status, a reserved field that is not 0 (once it
   * said "sandboxed", which the decoder is not to be believed about),
   * bytes after the end.
   */
  rec_end(&b, 99, 0);
  reader_fails(&b, &lim, EIO, 0);
  rec_end(&b, 0, 0x80);
  reader_fails(&b, &lim, EIO, 0);
  rec_end(&b, 0, 1);
  reader_fails(&b, &lim, EIO, 0);
  rec_end(&b, 0, 0);
  buf_add(&b, "F", 1);
  reader_fails(&b, &lim, EIO, 0);

  /* The decoder's own errors come through. */
  rec_end(&b, 1, 0);
  reader_fails(&b, &lim, EBADMSG, 0);
  rec_end(&b, 2, 0);
  reader_fails(&b, &lim, EFBIG, 0);
  rec_end(&b, 3, 0);
  reader_fails(&b, &lim, ENOMEM, 0);
  rec_end(&b, 4, 0);
  reader_fails(&b, &lim, EIO, 0);
}
END_TEST

int main(void) {
  Suite *s = suite_create("tnef");
  TCase *tc = tcase_create("tnef");
  SRunner *sr;
  int failed;

  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_samples_unpack);
  tcase_add_test(tc, test_samples_decode_mem);
  tcase_add_test(tc, test_not_tnef);
  tcase_add_test(tc, test_empty_and_padded);
  tcase_add_test(tc, test_truncated);
  tcase_add_test(tc, test_corrupted);
  tcase_add_test(tc, test_limits);
  tcase_add_test(tc, test_limit_skipped_attachments);
  tcase_add_test(tc, test_callback_stops);
  tcase_add_test(tc, test_bad_arguments);
  tcase_add_test(tc, test_child_killed);
  tcase_add_test(tc, test_child_timeout);
  tcase_add_test(tc, test_decoder_forked_by_helper);
  tcase_add_test(tc, test_decoder_exits_cleanly);
  tcase_add_test(tc, test_helper_killed);
  tcase_add_test(tc, test_helper_killed_mid_unpack);
  tcase_add_test(tc, test_helper_ends_with_its_socket);
  tcase_add_test(tc, test_helper_ends_with_its_caller);
  tcase_add_test(tc, test_helper_passes_over_garbage);
  tcase_add_test(tc, test_helper_init);
  tcase_add_test(tc, test_no_seccomp_never_decodes);
  tcase_add_test(tc, test_filter_refused_never_decodes);
  tcase_add_test(tc, test_filtered_helper_still_verifies);
  tcase_add_test(tc, test_status_seccomp);
  tcase_add_test(tc, test_libytnef_limits_avoided);
  tcase_add_test(tc, test_mapi_refused_falls_back_to_title);
  tcase_add_test(tc, test_names);
  tcase_add_test(tc, test_codepages);
  tcase_add_test(tc, test_attachment_kinds);
  tcase_add_test(tc, test_damaged_streams);
  tcase_add_test(tc, test_large_embedded_item);
  tcase_add_test(tc, test_reader_records);
  tcase_add_test(tc, test_reader_garbage);
  suite_add_tcase(s, tc);

  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
