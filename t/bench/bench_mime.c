/*
 * bench_mime - the project's streaming MIME parser against GMime 3, one
 * message file after another, for t/bench/bench_mime.py.
 *
 *   bench_mime MODE [--seccomp] FILE...
 *
 * MODE: ours        lib/mime/mime.c fed in 64 KiB reads, as the parser
 *                   process does; attached messages descended into, every
 *                   leaf decoded
 *       gmime       GMime 3 from a GMimeStreamFs on the file (seekable:
 *                   parts are kept as substreams of the file)
 *       gmime-pipe  GMime 3 from a GMimeStreamPipe fed by a child process
 *                   (not seekable, as a message parsed while it is fetched)
 *
 * --seccomp: the parser process's filter (programs/parser.c), installed
 * after the same preparation (iconv preload, and g_mime_init() for GMime
 * unless BENCH_LATE_INIT is set: then after the filter),
 * except that a forbidden call is recorded (SIGSYS) before it fails with
 * EPERM as it would there; the calls denied are printed at the end.
 *
 * Output, tab-separated, one line each:
 *   M path bytes seconds result       a message (result: ok or the error)
 *   L name size sha256 type status    a leaf in order ("-" name: none;
 *                                     bytes < 0x21, '%' and 0x7f as %XX)
 *   D syscall count                   --seccomp: denied calls
 *   R kib                             peak RSS of this process (VmHWM: the
 *                                     wait4() figure also counts the
 *                                     parent's memory before exec)
 */

#include "mailoauth/mime.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <openssl/evp.h>

#ifdef BENCH_HAVE_GMIME
# include <gmime/gmime.h>
#endif

#if defined(__linux__) && defined(__x86_64__)
# include <linux/audit.h>
# include <linux/filter.h>
# include <linux/seccomp.h>
# define BENCH_SECCOMP 1
#endif

#define BENCH_CHUNK     (64 * 1024)

/* -- output ---------------------------------------------------------------- */

static void bench_put_name(const char *s) {
  const unsigned char *p = (const unsigned char *) s;

  if (s == NULL) {
    fputs("-", stdout);
    return;
  }
  if (*p == '\0') {
    fputs("%", stdout);         /* "" differs from none */
    return;
  }
  for (; *p != '\0'; p++) {
    if (*p < 0x21 || *p == '%' || *p == 0x7f || *p == '-') {
      printf("%%%02X", *p);
    } else {
      putchar(*p);
    }
  }
}

static void bench_leaf(const char *name, uint64_t size, EVP_MD_CTX *md,
    const char *ctype, const char *status) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int dlen = 0, i;

  EVP_DigestFinal_ex(md, digest, &dlen);
  fputs("L\t", stdout);
  bench_put_name(name);
  printf("\t%llu\t", (unsigned long long) size);
  for (i = 0; i < dlen; i++) {
    printf("%02x", digest[i]);
  }
  printf("\t%s\t%s\n", ctype, status);
}

static double bench_now(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double) ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Leaves are printed after the clock stops: output kept in memory. */
static char *out_buf;
static size_t out_len;
static FILE *out_mem;

static void bench_out_begin(void) {
  out_mem = open_memstream(&out_buf, &out_len);
  if (out_mem == NULL) {
    perror("open_memstream");
    exit(2);
  }
  stdout = out_mem;
}

static void bench_out_end(FILE *real, const char *path, uint64_t bytes,
    double secs, const char *result) {
  fclose(out_mem);
  stdout = real;
  printf("M\t%s\t%llu\t%.6f\t%s\n", path, (unsigned long long) bytes, secs,
    result);
  fwrite(out_buf, 1, out_len, stdout);
  free(out_buf);
  out_buf = NULL;
  out_len = 0;
}

/* -- ours ------------------------------------------------------------------ */

struct ours_state {
  EVP_MD_CTX *md;
  uint64_t size;
};

static int ours_begin(const struct mailoauth_mime_part *part, void *arg) {
  struct ours_state *s = arg;

  if (part->is_multipart) {
    return MAILOAUTH_MIME_SKIP;
  }
  if (part->is_message) {
    return MAILOAUTH_MIME_DESCEND;
  }
  EVP_DigestInit_ex(s->md, EVP_sha256(), NULL);
  s->size = 0;
  return MAILOAUTH_MIME_BODY;
}

static int ours_data(const struct mailoauth_mime_part *part,
    const unsigned char *data, size_t len, void *arg) {
  struct ours_state *s = arg;

  (void) part;
  EVP_DigestUpdate(s->md, data, len);
  s->size += len;
  return 0;
}

static int ours_end(const struct mailoauth_mime_part *part,
    unsigned int status, void *arg) {
  struct ours_state *s = arg;
  char st[64];

  if (part->is_multipart || part->is_message) {
    return 0;
  }
  snprintf(st, sizeof(st), "%s%s%s%s",
    status == 0 ? "ok" : "",
    status & MAILOAUTH_MIME_ST_TRUNCATED ? "truncated," : "",
    status & MAILOAUTH_MIME_ST_BAD_ENCODING ? "bad-encoding," : "",
    status & MAILOAUTH_MIME_ST_UNTERMINATED ? "unterminated," : "");
  bench_leaf(part->filename, s->size, s->md, part->content_type, st);
  return 0;
}

static const char *ours_parse(int fd, uint64_t *bytes) {
  static char result[128];
  static unsigned char buf[BENCH_CHUNK];
  struct mailoauth_mime_callbacks cb;
  struct ours_state s;
  struct mailoauth_mime *p;
  ssize_t n;
  int rc = 0;

  memset(&cb, 0, sizeof(cb));
  cb.part_begin = ours_begin;
  cb.part_data = ours_data;
  cb.part_end = ours_end;
  cb.arg = &s;
  s.md = EVP_MD_CTX_new();
  p = mailoauth_mime_create(NULL, &cb);
  if (p == NULL || s.md == NULL) {
    return "nomem";
  }
  while ((n = read(fd, buf, sizeof(buf))) > 0) {
    *bytes += (uint64_t) n;
    if (rc == 0) {
      rc = mailoauth_mime_feed(p, buf, (size_t) n);
    }
  }
  if (rc == 0) {
    rc = mailoauth_mime_finish(p);
  }
  snprintf(result, sizeof(result), "%s", rc == 0 ? "ok" :
    mailoauth_mime_strerror(mailoauth_mime_error(p)));
  for (char *c = result; *c != '\0'; c++) {
    if (*c == '\t' || *c == '\n') {
      *c = ' ';
    }
  }
  mailoauth_mime_destroy(p);
  EVP_MD_CTX_free(s.md);
  return result;
}

/* -- GMime ----------------------------------------------------------------- */

#ifdef BENCH_HAVE_GMIME
static void gm_leaf(GMimePart *part, EVP_MD_CTX *md) {
  static char buf[BENCH_CHUNK];
  GMimeDataWrapper *content = g_mime_part_get_content(part);
  GMimeContentType *ct = g_mime_object_get_content_type(GMIME_OBJECT(part));
  char *ctype = ct ? g_mime_content_type_get_mime_type(ct) : NULL;
  uint64_t size = 0;

  EVP_DigestInit_ex(md, EVP_sha256(), NULL);
  if (content != NULL) {
    GMimeStream *raw = g_mime_data_wrapper_get_stream(content);
    GMimeContentEncoding enc = g_mime_data_wrapper_get_encoding(content);
    GMimeStream *fs = g_mime_stream_filter_new(raw);
    ssize_t n;

    g_mime_stream_reset(raw);
    if (enc != GMIME_CONTENT_ENCODING_DEFAULT) {
      GMimeFilter *f = g_mime_filter_basic_new(enc, FALSE);

      g_mime_stream_filter_add(GMIME_STREAM_FILTER(fs), f);
      g_object_unref(f);
    }
    while ((n = g_mime_stream_read(fs, buf, sizeof(buf))) > 0) {
      EVP_DigestUpdate(md, buf, (size_t) n);
      size += (uint64_t) n;
    }
    g_object_unref(fs);
  }
  if (ctype != NULL) {
    for (char *c = ctype; *c != '\0'; c++) {
      if (*c >= 'A' && *c <= 'Z') {
        *c = (char) (*c - 'A' + 'a');
      }
    }
  }
  bench_leaf(g_mime_part_get_filename(part), size, md,
    ctype ? ctype : "?", "ok");
  g_free(ctype);
}

static void gm_walk(GMimeObject *obj, EVP_MD_CTX *md, unsigned int depth) {
  if (obj == NULL || depth > 10000) {
    return;
  }
  if (GMIME_IS_MULTIPART(obj)) {
    int i, n = g_mime_multipart_get_count(GMIME_MULTIPART(obj));

    for (i = 0; i < n; i++) {
      gm_walk(g_mime_multipart_get_part(GMIME_MULTIPART(obj), i), md,
        depth + 1);
    }
  } else if (GMIME_IS_MESSAGE_PART(obj)) {
    GMimeMessage *m = g_mime_message_part_get_message(
      GMIME_MESSAGE_PART(obj));

    if (m != NULL) {
      gm_walk(g_mime_message_get_mime_part(m), md, depth + 1);
    }
  } else if (GMIME_IS_PART(obj)) {
    gm_leaf(GMIME_PART(obj), md);
  }
}

static const char *gm_parse(int fd, int pipe_mode, uint64_t *bytes) {
  GMimeStream *stream;
  GMimeParser *parser;
  GMimeMessage *msg;
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  const char *result = "ok";

  stream = pipe_mode ? g_mime_stream_pipe_new(fd) : g_mime_stream_fs_new(fd);
  /* The caller closes fd. */
  if (pipe_mode) {
    g_mime_stream_pipe_set_owner(GMIME_STREAM_PIPE(stream), FALSE);
  } else {
    g_mime_stream_fs_set_owner(GMIME_STREAM_FS(stream), FALSE);
  }
  parser = g_mime_parser_new_with_stream(stream);
  msg = g_mime_parser_construct_message(parser, NULL);
  *bytes = (uint64_t) g_mime_parser_tell(parser);
  if (msg == NULL) {
    result = "no message";
  } else {
    gm_walk(g_mime_message_get_mime_part(msg), md, 0);
    g_object_unref(msg);
  }
  g_object_unref(parser);
  g_object_unref(stream);
  EVP_MD_CTX_free(md);
  return result;
}
#endif

/* -- the parser process's filter ------------------------------------------- */

#ifdef BENCH_SECCOMP
static volatile sig_atomic_t denied_nr[64];
static volatile sig_atomic_t denied_count[64];

static void bench_sigsys(int sig, siginfo_t *si, void *ctx) {
  ucontext_t *uc = ctx;
  int i;

  (void) sig;
  for (i = 0; i < 64; i++) {
    if (denied_count[i] == 0 || denied_nr[i] == si->si_syscall) {
      denied_nr[i] = si->si_syscall;
      denied_count[i]++;
      break;
    }
  }
  uc->uc_mcontext.gregs[REG_RAX] = -EPERM;
}

# define ALLOW(nr) \
  BPF_JUMP(BPF_JMP|BPF_JEQ|BPF_K, (nr), 0, 1), \
  BPF_STMT(BPF_RET|BPF_K, SECCOMP_RET_ALLOW)
# define DENY   SECCOMP_RET_TRAP
# define ARG_LO(n)      offsetof(struct seccomp_data, args[n])
# define ALLOW_NOEXEC(nr) \
  BPF_JUMP(BPF_JMP|BPF_JEQ|BPF_K, (nr), 0, 4), \
  BPF_STMT(BPF_LD|BPF_W|BPF_ABS, ARG_LO(2)), \
  BPF_JUMP(BPF_JMP|BPF_JSET|BPF_K, PROT_EXEC, 1, 0), \
  BPF_STMT(BPF_RET|BPF_K, SECCOMP_RET_ALLOW), \
  BPF_STMT(BPF_RET|BPF_K, DENY)

/* The list of programs/parser.c, write() to stdout included (the parser
 * writes decoded parts), denial trapped instead of EPERM at once.
 */
static int bench_seccomp(void) {
  struct sock_filter filter[] = {
    BPF_STMT(BPF_LD|BPF_W|BPF_ABS, offsetof(struct seccomp_data, arch)),
    BPF_JUMP(BPF_JMP|BPF_JEQ|BPF_K, AUDIT_ARCH_X86_64, 1, 0),
    BPF_STMT(BPF_RET|BPF_K, SECCOMP_RET_KILL),
    BPF_STMT(BPF_LD|BPF_W|BPF_ABS, offsetof(struct seccomp_data, nr)),
    ALLOW(__NR_read),
    ALLOW(__NR_write),
    ALLOW(__NR_pread64),
    ALLOW(__NR_lseek),
    ALLOW(__NR_recvmsg),
    ALLOW(__NR_sendmsg),
    ALLOW(__NR_close),
    ALLOW(__NR_fstat),
    ALLOW(__NR_newfstatat),
    ALLOW(__NR_fcntl),
    ALLOW(__NR_brk),
    ALLOW_NOEXEC(__NR_mmap),
    ALLOW_NOEXEC(__NR_mprotect),
    ALLOW(__NR_munmap),
    ALLOW(__NR_mremap),
    ALLOW(__NR_madvise),
    ALLOW(__NR_futex),
    ALLOW(__NR_clock_gettime),
    ALLOW(__NR_rt_sigreturn),
    ALLOW(__NR_exit),
    ALLOW(__NR_exit_group),
    BPF_JUMP(BPF_JMP|BPF_JEQ|BPF_K, __NR_openat, 0, 3),
    BPF_STMT(BPF_LD|BPF_W|BPF_ABS, ARG_LO(2)),
    BPF_JUMP(BPF_JMP|BPF_JSET|BPF_K, O_TMPFILE & ~O_DIRECTORY, 0, 1),
    BPF_STMT(BPF_RET|BPF_K, SECCOMP_RET_ALLOW),
    BPF_STMT(BPF_RET|BPF_K, DENY)
  };
  struct sock_fprog prog;
  struct sigaction sa;

  memset(&sa, 0, sizeof(sa));
  sa.sa_sigaction = bench_sigsys;
  sa.sa_flags = SA_SIGINFO;
  if (sigaction(SIGSYS, &sa, NULL) < 0) {
    return -1;
  }
  prog.len = (unsigned short) (sizeof(filter) / sizeof(filter[0]));
  prog.filter = filter;
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
    return -1;
  }
  return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}

static const char *bench_sysname(int nr) {
  switch (nr) {
    case __NR_openat: return "openat";
    case __NR_open: return "open";
    case __NR_ioctl: return "ioctl";
    case __NR_getrandom: return "getrandom";
    case __NR_clone: return "clone";
    case __NR_clone3: return "clone3";
    case __NR_eventfd2: return "eventfd2";
    case __NR_pipe2: return "pipe2";
    case __NR_rt_sigprocmask: return "rt_sigprocmask";
    case __NR_rt_sigaction: return "rt_sigaction";
    case __NR_getpid: return "getpid";
    case __NR_gettid: return "gettid";
    case __NR_poll: return "poll";
    case __NR_readlink: return "readlink";
    case __NR_uname: return "uname";
    case __NR_statx: return "statx";
    case __NR_access: return "access";
    case __NR_faccessat: return "faccessat";
    case __NR_sched_getaffinity: return "sched_getaffinity";
    case __NR_prctl: return "prctl";
    case __NR_getuid: return "getuid";
    case __NR_geteuid: return "geteuid";
    case __NR_socket: return "socket";
    case __NR_connect: return "connect";
    case __NR_writev: return "writev";
    case __NR_sysinfo: return "sysinfo";
    default: return NULL;
  }
}
#endif

int main(int argc, char **argv) {
  FILE *real = stdout;
  const char *mode;
  int use_seccomp = 0, i = 2;

  if (argc < 2) {
    fprintf(stderr, "usage: bench_mime ours|gmime|gmime-pipe "
      "[--seccomp] FILE...\n");
    return 2;
  }
  mode = argv[1];
  if (argc > 2 && strcmp(argv[2], "--seccomp") == 0) {
    use_seccomp = 1;
    i = 3;
  }
#ifndef BENCH_HAVE_GMIME
  if (strncmp(mode, "gmime", 5) == 0) {
    fprintf(stderr, "bench_mime: built without GMime\n");
    return 3;
  }
#endif
  if (strcmp(mode, "ours") != 0 && strcmp(mode, "gmime") != 0 &&
      strcmp(mode, "gmime-pipe") != 0) {
    fprintf(stderr, "bench_mime: unknown mode %s\n", mode);
    return 2;
  }
  if (use_seccomp && strcmp(mode, "gmime-pipe") == 0) {
    fprintf(stderr, "bench_mime: gmime-pipe forks: no --seccomp\n");
    return 2;
  }

  /* What the parser process does before its filter; a first digest
   * loads OpenSSL's provider while files can still be opened.
   */
  (void) mailoauth_mime_preload();
  {
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int dl;

    EVP_Digest("", 0, d, &dl, EVP_sha256(), NULL);
  }
#ifdef BENCH_HAVE_GMIME
  if (strncmp(mode, "gmime", 5) == 0 && getenv("BENCH_LATE_INIT") == NULL) {
    g_mime_init();
  }
#endif
  /* The files are opened before the filter, as the parser is handed its
   * descriptors.
   */
  int nfiles = argc - i;
  int *fds = calloc((size_t) nfiles + 1, sizeof(int));

  for (int k = 0; k < nfiles; k++) {
    fds[k] = open(argv[i + k], O_RDONLY|O_CLOEXEC);
    if (fds[k] < 0) {
      perror(argv[i + k]);
      return 2;
    }
  }
  /* Opened now, read at the end with pread() (allowed by the filter). */
  int status_fd = open("/proc/self/status", O_RDONLY|O_CLOEXEC);

  if (use_seccomp) {
#ifdef BENCH_SECCOMP
    if (bench_seccomp() < 0) {
      perror("seccomp");
      return 2;
    }
#else
    fprintf(stderr, "bench_mime: --seccomp needs Linux x86_64\n");
    return 2;
#endif
  }

#ifdef BENCH_HAVE_GMIME
  /* BENCH_LATE_INIT: what GLib and GMime need to start under the filter. */
  if (strncmp(mode, "gmime", 5) == 0 && getenv("BENCH_LATE_INIT") != NULL) {
    g_mime_init();
  }
#endif

  for (int k = 0; k < nfiles; k++) {
    const char *path = argv[i + k];
    const char *result;
    uint64_t bytes = 0;
    double t0;
    int fd = fds[k];
    pid_t writer = -1;

    if (strcmp(mode, "gmime-pipe") == 0) {
      int pfd[2];

      if (pipe(pfd) < 0) {
        perror("pipe");
        return 2;
      }
      writer = fork();
      if (writer == 0) {
        static char buf[BENCH_CHUNK];
        ssize_t n;

        close(pfd[0]);
        while ((n = read(fd, buf, sizeof(buf))) > 0) {
          if (write(pfd[1], buf, (size_t) n) != n) {
            break;
          }
        }
        _exit(0);
      }
      close(pfd[1]);
      fd = pfd[0];
      /* A message that fits in the pipe is all in it before the clock
       * starts; a larger one streams while it is parsed.
       */
      if (fcntl(fd, F_SETPIPE_SZ, 1024 * 1024) >= 1024 * 1024) {
        struct stat st;

        if (fstat(fds[k], &st) == 0 && st.st_size <= 1024 * 1024) {
          (void) waitpid(writer, NULL, 0);
          writer = 0;
        }
      }
    }

    bench_out_begin();
    t0 = bench_now();
#ifdef BENCH_HAVE_GMIME
    if (strncmp(mode, "gmime", 5) == 0) {
      result = gm_parse(fd, writer >= 0, &bytes);
      if (writer >= 0) {
        /* What the parser left unread still counts as input. */
        static char buf[BENCH_CHUNK];
        ssize_t n;

        while ((n = read(fd, buf, sizeof(buf))) > 0) {
          bytes += (uint64_t) n;
        }
      }
    } else
#endif
    {
      result = ours_parse(fd, &bytes);
    }
    bench_out_end(real, path, bytes, bench_now() - t0, result);
    close(fd);
    if (fd != fds[k]) {
      close(fds[k]);
    }
    if (writer > 0) {
      (void) waitpid(writer, NULL, 0);
    }
  }

#ifdef BENCH_SECCOMP
  if (use_seccomp) {
    for (int k = 0; k < 64 && denied_count[k] != 0; k++) {
      const char *name = bench_sysname(denied_nr[k]);

      if (name != NULL) {
        printf("D\t%s\t%d\n", name, (int) denied_count[k]);
      } else {
        printf("D\t%d\t%d\n", (int) denied_nr[k], (int) denied_count[k]);
      }
    }
  }
#endif
  if (status_fd >= 0) {
    char st[4096];
    ssize_t n = pread(status_fd, st, sizeof(st) - 1, 0);
    const char *hwm;

    if (n > 0) {
      st[n] = '\0';
      hwm = strstr(st, "VmHWM:");
      if (hwm != NULL) {
        printf("R\t%ld\n", strtol(hwm + 6, NULL, 10));
      }
    }
  }
  fflush(stdout);
  return 0;
}
