/*
 * Unit tests: MIME parsing in a process of its own (mimeproc.h).  A forked
 * parser serves real messages over a socketpair; scripted parsers send what
 * a compromised one could, and the client must refuse each of them without
 * reporting anything of it.
 */

#include "mailoauth/imsg.h"
#include "mailoauth/mimeproc.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ------------------------------------------------------------------------
 * Recorder
 */

struct rec {
  int begins, ends, errors;
  int stop_at;                  /* part_begin of this index returns -1 */
  int end_result;               /* what part_end returns */
  int descend;                  /* attached messages are looked into */
  char log[8192];
  char bodies[4][256];
  int nbodies;
  int last_body_error;
  char subject[256], from_addr[256], recipients[256], auth[512];
};

static void rec_add(struct rec *r, const char *fmt, ...)
  __attribute__((format(printf, 2, 3)));

static void rec_add(struct rec *r, const char *fmt, ...) {
  size_t len = strlen(r->log);
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(r->log + len, sizeof(r->log) - len, fmt, ap);
  va_end(ap);
}

static int rec_begin(const struct mailoauth_mime_part *part, void *arg) {
  struct rec *r = arg;

  r->begins++;
  rec_add(r, "B%u:%s:%s;", part->index, part->content_type,
    part->filename ? part->filename : "-");
  if (part->index == 0) {
    snprintf(r->subject, sizeof(r->subject), "%s", part->message->subject);
    snprintf(r->from_addr, sizeof(r->from_addr), "%s",
      part->message->from_addr);
    snprintf(r->recipients, sizeof(r->recipients), "%s",
      part->message->recipients);
    snprintf(r->auth, sizeof(r->auth), "%s", part->message->auth_results);
  }
  if ((int) part->index == r->stop_at) {
    return -1;
  }
  if (part->is_message && r->descend) {
    return MAILOAUTH_MIME_DESCEND;
  }
  return part->filename != NULL ? MAILOAUTH_MIME_BODY : MAILOAUTH_MIME_SKIP;
}

static int rec_end(const struct mailoauth_mime_part *part,
    unsigned int status, const struct mailoauth_mimeproc_body *body,
    void *arg) {
  struct rec *r = arg;

  r->ends++;
  rec_add(r, "E%u:%u;", part->index, status);
  r->last_body_error = body->error;
  if (body->fd >= 0 && r->nbodies < 4) {
    char *b = r->bodies[r->nbodies++];
    ssize_t n = pread(body->fd, b, 255, 0);

    ck_assert_int_ge(n, 0);
    b[n] = '\0';
    ck_assert_uint_eq((uint64_t) n, body->size);
  }
  return r->end_result;
}

static void rec_error(int code, const struct mailoauth_mime_part *part,
    void *arg) {
  struct rec *r = arg;

  (void) part;
  r->errors++;
  rec_add(r, "X%d;", code);
}

static struct mailoauth_mimeproc_callbacks rec_cb(struct rec *r) {
  struct mailoauth_mimeproc_callbacks cb;

  memset(r, 0, sizeof(*r));
  r->stop_at = -1;
  memset(&cb, 0, sizeof(cb));
  cb.part_begin = rec_begin;
  cb.part_end = rec_end;
  cb.error = rec_error;
  cb.arg = r;
  return cb;
}

/* ------------------------------------------------------------------------
 * Fixtures
 */

static char tmpdir[64];

static int msg_file(const char *text, size_t len) {
  char path[128];
  int fd;

  snprintf(path, sizeof(path), "%s/msg.XXXXXX", tmpdir);
  fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  (void) unlink(path);
  ck_assert_int_eq(write(fd, text, len), (ssize_t) len);
  return fd;
}

static int dir_fd(void) {
  int fd = open(tmpdir, O_RDONLY|O_DIRECTORY|O_CLOEXEC);

  ck_assert_int_ge(fd, 0);
  return fd;
}

static void setup(void) {
  snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_mimeproc.XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(tmpdir));
  (void) signal(SIGPIPE, SIG_IGN);
}

static void teardown(void) {
  (void) rmdir(tmpdir);
}

/* A real parser in a child. */
static pid_t start_parser(int *sock) {
  int sv[2];
  pid_t pid;

  ck_assert_int_eq(mailoauth_imsg_socketpair(sv), 0);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    (void) close(sv[0]);
    _exit(mailoauth_mimeproc_serve(sv[1], NULL) == 0 ? 0 : 1);
  }
  (void) close(sv[1]);
  *sock = sv[0];
  return pid;
}

static int wait_exit(pid_t pid) {
  int status = 0;

  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static const char mail[] =
  "From: \"Alice\" <Alice@Example.COM>\r\n"
  "To: bob@example.org, Carol <carol@example.net>\r\n"
  "Subject: =?UTF-8?B?UmVwb3J0IOKCrA==?=\r\n"
  "Authentication-Results: mx.example.org; dmarc=pass\r\n"
  "MIME-Version: 1.0\r\n"
  "Content-Type: multipart/mixed; boundary=\"b1\"\r\n"
  "\r\n"
  "--b1\r\n"
  "Content-Type: text/plain\r\n"
  "\r\n"
  "hello\r\n"
  "--b1\r\n"
  "Content-Type: application/pdf; name=\"a.pdf\"\r\n"
  "Content-Disposition: attachment; filename=\"a.pdf\"\r\n"
  "Content-Transfer-Encoding: base64\r\n"
  "\r\n"
  "UERGIGJ5dGVz\r\n"
  "--b1\r\n"
  "Content-Type: text/csv\r\n"
  "Content-Disposition: attachment; filename=\"b.csv\"\r\n"
  "\r\n"
  "x,y\r\n"
  "--b1--\r\n";

/* ------------------------------------------------------------------------
 * A real parser
 */

/* What the parser makes of mail[]. */
static void check_mail_parts(const struct rec *r) {
  ck_assert_str_eq(r->log, "B0:multipart/mixed:-;B1:text/plain:-;"
    "B2:application/pdf:a.pdf;E2:0;B3:text/csv:b.csv;E3:0;");
  ck_assert_int_eq(r->nbodies, 2);
  ck_assert_str_eq(r->bodies[0], "PDF bytes");
  ck_assert_str_eq(r->bodies[1], "x,y");
}

START_TEST(test_round_trip) {
  struct mailoauth_mimeproc_callbacks cb;
  struct rec r;
  int sock, fd, dfd, code = -1, round;
  pid_t pid = start_parser(&sock);

  fd = msg_file(mail, sizeof(mail) - 1);
  dfd = dir_fd();

  /* The same process serves one message after another. */
  for (round = 0; round < 2; round++) {
    cb = rec_cb(&r);
    ck_assert_int_eq(mailoauth_mimeproc_parse(sock, fd, dfd, &cb, &code),
      MAILOAUTH_MIMEPROC_OK);
    ck_assert_int_eq(code, MAILOAUTH_MIME_OK);
    check_mail_parts(&r);
    ck_assert_str_eq(r.subject, "Report \xe2\x82\xac");
    ck_assert_str_eq(r.from_addr, "Alice@Example.COM");
    ck_assert_str_eq(r.recipients, "bob@example.org,carol@example.net");
    ck_assert_str_eq(r.auth, " mx.example.org; dmarc=pass\n");
  }

  (void) close(fd);
  (void) close(dfd);
  /* EOF ends it, cleanly. */
  (void) close(sock);
  ck_assert_int_eq(wait_exit(pid), 0);
}
END_TEST


/* Fed through a pipe a few bytes at a time while the parser answers, as
 * ingestion does while a message is fetched: the same result as from a
 * file.
 */
START_TEST(test_fed_through_a_pipe) {
  struct mailoauth_mimeproc_callbacks cb;
  struct mailoauth_mimeproc_run *run;
  struct rec r;
  int sock, dfd, p[2], code = -1;
  size_t off = 0;
  pid_t pid = start_parser(&sock);

  dfd = dir_fd();
  ck_assert_int_eq(pipe(p), 0);
  cb = rec_cb(&r);
  run = mailoauth_mimeproc_begin(sock, p[0], dfd, &cb);
  ck_assert_ptr_nonnull(run);
  (void) close(p[0]);

  while (off < sizeof(mail) - 1) {
    size_t n = sizeof(mail) - 1 - off < 7 ? sizeof(mail) - 1 - off : 7;

    ck_assert_int_eq(write(p[1], mail + off, n), (ssize_t) n);
    off += n;
    /* Whatever the parser has to say so far, without waiting. */
    ck_assert_int_ge(mailoauth_mimeproc_pump(run, 0), 0);
  }
  (void) close(p[1]);
  ck_assert_int_eq(mailoauth_mimeproc_finish(run, &code),
    MAILOAUTH_MIMEPROC_OK);
  ck_assert_int_eq(code, MAILOAUTH_MIME_OK);
  check_mail_parts(&r);

  (void) close(dfd);
  (void) close(sock);
  ck_assert_int_eq(wait_exit(pid), 0);
}
END_TEST

/* An attached message asked to be descended into: its parts follow,
 * numbered on, their bodies delivered like the message's own.
 */
START_TEST(test_descend_into_attached_message) {
  static const char fwd[] =
    "From: a@example.org\r\nSubject: Fwd\r\nMIME-Version: 1.0\r\n"
    "Content-Type: multipart/mixed; boundary=O\r\n\r\n"
    "--O\r\nContent-Type: text/plain\r\n\r\nsee below\r\n"
    "--O\r\nContent-Type: message/rfc822\r\n\r\n"
    "From: b@example.org\r\nSubject: Inner\r\nMIME-Version: 1.0\r\n"
    "Content-Type: multipart/mixed; boundary=I\r\n\r\n"
    "--I\r\nContent-Type: text/plain\r\n\r\ninner text\r\n"
    "--I\r\nContent-Type: application/pdf; name=in.pdf\r\n\r\n"
    "inner pdf\r\n--I--\r\n"
    "--O--\r\n";
  struct mailoauth_mimeproc_callbacks cb;
  struct rec r;
  int sock, fd, dfd, code = -1;
  pid_t pid = start_parser(&sock);

  fd = msg_file(fwd, sizeof(fwd) - 1);
  dfd = dir_fd();

  cb = rec_cb(&r);
  ck_assert_int_eq(mailoauth_mimeproc_parse(sock, fd, dfd, &cb, &code),
    MAILOAUTH_MIMEPROC_OK);
  ck_assert_str_eq(r.log, "B0:multipart/mixed:-;B1:text/plain:-;"
    "B2:message/rfc822:-;");

  cb = rec_cb(&r);
  r.descend = 1;
  ck_assert_int_eq(mailoauth_mimeproc_parse(sock, fd, dfd, &cb, &code),
    MAILOAUTH_MIMEPROC_OK);
  ck_assert_int_eq(code, MAILOAUTH_MIME_OK);
  ck_assert_str_eq(r.log, "B0:multipart/mixed:-;B1:text/plain:-;"
    "B2:message/rfc822:-;B3:multipart/mixed:-;B4:text/plain:-;"
    "B5:application/pdf:in.pdf;E5:0;");
  ck_assert_int_eq(r.nbodies, 1);
  ck_assert_str_eq(r.bodies[0], "inner pdf");
  /* The top-level message's headers, for every part. */
  ck_assert_str_eq(r.subject, "Fwd");

  (void) close(fd);
  (void) close(dfd);
  (void) close(sock);
  ck_assert_int_eq(wait_exit(pid), 0);
}
END_TEST

START_TEST(test_stops) {
  struct mailoauth_mimeproc_callbacks cb;
  struct rec r;
  int sock, fd, dfd, code = -1;
  pid_t pid = start_parser(&sock);

  fd = msg_file(mail, sizeof(mail) - 1);
  dfd = dir_fd();

  /* part_begin says stop: nothing more is reported. */
  cb = rec_cb(&r);
  r.stop_at = 0;
  ck_assert_int_eq(mailoauth_mimeproc_parse(sock, fd, dfd, &cb, &code),
    MAILOAUTH_MIMEPROC_STOPPED);
  ck_assert_int_eq(r.begins, 1);
  ck_assert_int_eq(r.ends, 0);

  /* part_end says stop: the parts after it are not reported, the stop
   * is (as the in-process parser reports it).
   */
  cb = rec_cb(&r);
  r.end_result = -1;
  ck_assert_int_eq(mailoauth_mimeproc_parse(sock, fd, dfd, &cb, &code),
    MAILOAUTH_MIMEPROC_STOPPED);
  ck_assert_str_eq(r.log, "B0:multipart/mixed:-;B1:text/plain:-;"
    "B2:application/pdf:a.pdf;E2:0;X6;");

  /* And the parser is still good for the next message. */
  cb = rec_cb(&r);
  ck_assert_int_eq(mailoauth_mimeproc_parse(sock, fd, dfd, &cb, &code),
    MAILOAUTH_MIMEPROC_OK);
  ck_assert_int_eq(r.nbodies, 2);

  (void) close(fd);
  (void) close(dfd);
  (void) close(sock);
  ck_assert_int_eq(wait_exit(pid), 0);
}
END_TEST

START_TEST(test_parser_limit_reported) {
  struct mailoauth_mimeproc_callbacks cb;
  struct rec r;
  size_t len = 300 * 1024, i;
  char *big = malloc(len + 64);
  int sock, fd, dfd, code = -1;
  pid_t pid = start_parser(&sock);

  ck_assert_ptr_nonnull(big);
  strcpy(big, "Subject: ");
  for (i = strlen(big); i < len; i++) {
    big[i] = 'a';
  }
  strcpy(big + len, "\r\n\r\nbody\r\n");
  fd = msg_file(big, strlen(big));
  free(big);
  dfd = dir_fd();

  cb = rec_cb(&r);
  ck_assert_int_eq(mailoauth_mimeproc_parse(sock, fd, dfd, &cb, &code),
    MAILOAUTH_MIMEPROC_STOPPED);
  ck_assert_int_eq(code, MAILOAUTH_MIME_E_HEADER_TOO_BIG);
  ck_assert_int_ge(r.errors, 1);

  (void) close(fd);
  (void) close(dfd);
  (void) close(sock);
  ck_assert_int_eq(wait_exit(pid), 0);
}
END_TEST

START_TEST(test_parser_killed_mid_part) {
  struct mailoauth_mimeproc_callbacks cb;
  struct rec r;
  int sv[2], fd, dfd, code;
  pid_t pid;

  /* A parser that dies once the worker has asked for a body. */
  ck_assert_int_eq(mailoauth_imsg_socketpair(sv), 0);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    unsigned char buf[MAILOAUTH_IMSG_HDR + 64];
    struct mailoauth_imsg m;
    unsigned char p[256];
    size_t n = 0;

    (void) close(sv[0]);
    if (mailoauth_imsg_recv(sv[1], &m, buf, sizeof(buf), 0) != 1) {
      _exit(3);
    }
    memset(p, 0, sizeof(p));
    /* index 0, depth 0, no flags, attachment, 7bit, in_message 0 */
    p[15] = 2;
    n = 32;
    memcpy(p + n, "\0\0\0\0", 4); n += 4;                     /* section */
    memcpy(p + n, "\0\0\0\x0atext/plain", 14); n += 14;
    memcpy(p + n, "\0\0\0\0", 4); n += 4;                     /* charset */
    memcpy(p + n, "\0\0\0\x05" "a.txt", 9); n += 9;
    memcpy(p + n, "\xff\xff\xff\xff", 4); n += 4;             /* cid */
    memcpy(p + n, "\0\0\0\0", 4); n += 4;                     /* encoding */
    (void) mailoauth_imsg_send(sv[1], MAILOAUTH_MIMEPROC_PART_BEGIN, 0, p, n,
      NULL, 0);
    (void) mailoauth_imsg_recv(sv[1], &m, buf, sizeof(buf), 0);
    _exit(0);
  }
  (void) close(sv[1]);

  fd = msg_file(mail, sizeof(mail) - 1);
  dfd = dir_fd();
  cb = rec_cb(&r);
  ck_assert_int_eq(mailoauth_mimeproc_parse(sv[0], fd, dfd, &cb, &code),
    MAILOAUTH_MIMEPROC_BROKEN);
  ck_assert_int_eq(errno, EPIPE);
  /* The part asked for is ended, with no file, so that nothing stays
   * open on the worker's side.
   */
  ck_assert_str_eq(r.log, "B0:text/plain:a.txt;E0:8;");
  ck_assert_int_eq(r.last_body_error, EPIPE);
  ck_assert_int_eq(wait_exit(pid), 0);
  (void) close(sv[0]);
  (void) close(fd);
  (void) close(dfd);
}
END_TEST

/* ------------------------------------------------------------------------
 * Scripted parsers: what a compromised one could send
 */

struct out {
  unsigned char b[MAILOAUTH_IMSG_MAX];
  size_t n;
};

static void put32(struct out *o, uint32_t v) {
  o->b[o->n++] = (unsigned char) (v >> 24);
  o->b[o->n++] = (unsigned char) (v >> 16);
  o->b[o->n++] = (unsigned char) (v >> 8);
  o->b[o->n++] = (unsigned char) v;
}

static void put64(struct out *o, uint64_t v) {
  put32(o, (uint32_t) (v >> 32));
  put32(o, (uint32_t) v);
}

static void putstr(struct out *o, const char *s, size_t len) {
  if (s == NULL) {
    put32(o, 0xffffffffU);
    return;
  }
  put32(o, (uint32_t) len);
  memcpy(o->b + o->n, s, len);
  o->n += len;
}

/* PART_BEGIN of a leaf; name "" stands for none. */
static void part_begin(struct out *o, uint32_t index, uint32_t depth,
    const char *ctype, const char *name, size_t namelen) {
  o->n = 0;
  put32(o, index);
  put32(o, depth);
  put32(o, 0);
  put32(o, MAILOAUTH_MIME_DISP_ATTACHMENT);
  put32(o, MAILOAUTH_MIME_ENC_BASE64);
  put32(o, 0);
  put64(o, 0);
  putstr(o, "", 0);
  putstr(o, ctype, strlen(ctype));
  putstr(o, "", 0);
  putstr(o, namelen ? name : NULL, namelen);
  putstr(o, NULL, 0);
  putstr(o, "base64", 6);
}

#define SCRIPT_MAX 6

struct step {
  uint32_t type;
  struct out payload;
  int fd;                       /* -1: none */
};

static struct step script[SCRIPT_MAX];
static int nscript;

static struct step *add_step(uint32_t type) {
  struct step *s = &script[nscript++];

  memset(s, 0, sizeof(*s));
  s->type = type;
  s->fd = -1;
  return s;
}

static void add_end(uint32_t index, uint64_t size, int fd) {
  struct step *s = add_step(MAILOAUTH_MIMEPROC_PART_END);

  put32(&s->payload, index);
  put32(&s->payload, 0);
  put64(&s->payload, size);
  put32(&s->payload, 0);
  s->fd = fd;
}

static void add_done(uint32_t result, uint32_t code) {
  struct step *s = add_step(MAILOAUTH_MIMEPROC_DONE);

  put32(&s->payload, result);
  put32(&s->payload, code);
}

/* An anonymous file with content, as the parser makes them. */
static int body_file(const char *content) {
  int fd = open(tmpdir, O_TMPFILE|O_RDWR, 0600);

  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, content, strlen(content)),
    (ssize_t) strlen(content));
  return fd;
}

/* Runs the script as the parser; returns the client's result. */
static int run_script(struct rec *r) {
  struct mailoauth_mimeproc_callbacks cb;
  int sv[2], fd, dfd, res, code, xerrno, i;
  pid_t pid;

  ck_assert_int_eq(mailoauth_imsg_socketpair(sv), 0);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    unsigned char buf[MAILOAUTH_IMSG_HDR + 64];
    struct mailoauth_imsg m;

    (void) close(sv[0]);
    if (mailoauth_imsg_recv(sv[1], &m, buf, sizeof(buf), 0) != 1) {
      _exit(3);
    }
    for (i = 0; i < nscript; i++) {
      if (mailoauth_imsg_send(sv[1], script[i].type, 0, script[i].payload.b,
          script[i].payload.n, &script[i].fd, script[i].fd >= 0 ? 1 : 0) < 0) {
        _exit(0);
      }
      if (script[i].type == MAILOAUTH_MIMEPROC_PART_BEGIN &&
          mailoauth_imsg_recv(sv[1], &m, buf, sizeof(buf), 0) != 1) {
        _exit(0);
      }
    }
    /* Until the client hangs up. */
    while (mailoauth_imsg_recv(sv[1], &m, buf, sizeof(buf), 0) > 0) {
    }
    _exit(0);
  }
  (void) close(sv[1]);

  fd = msg_file(mail, sizeof(mail) - 1);
  dfd = dir_fd();
  cb = rec_cb(r);
  res = mailoauth_mimeproc_parse(sv[0], fd, dfd, &cb, &code);
  xerrno = errno;
  (void) close(sv[0]);
  (void) close(fd);
  (void) close(dfd);
  ck_assert_int_eq(wait_exit(pid), 0);
  for (i = 0; i < nscript; i++) {
    if (script[i].fd >= 0) {
      (void) close(script[i].fd);
    }
  }
  nscript = 0;
  errno = xerrno;
  return res;
}

START_TEST(test_script_well_formed) {
  struct rec r;
  struct step *s;

  /* The scripts below differ from this one in one thing each. */
  s = add_step(MAILOAUTH_MIMEPROC_FIELD);
  put32(&s->payload, MAILOAUTH_MIMEPROC_F_SUBJECT);
  putstr(&s->payload, "Hi", 2);
  s = add_step(MAILOAUTH_MIMEPROC_PART_BEGIN);
  part_begin(&s->payload, 0, 0, "application/pdf", "a.pdf", 5);
  add_end(0, 3, body_file("abc"));
  add_done(0, 0);

  ck_assert_int_eq(run_script(&r), MAILOAUTH_MIMEPROC_OK);
  ck_assert_str_eq(r.log, "B0:application/pdf:a.pdf;E0:0;");
  ck_assert_str_eq(r.subject, "Hi");
  ck_assert_str_eq(r.bodies[0], "abc");
}
END_TEST

/* Each hostile script: the client stops with EPROTO, and reports nothing
 * of the message part it refused.
 */
static void expect_refused(const char *log) {
  struct rec r;
  int res = run_script(&r);

  ck_assert_int_eq(res, MAILOAUTH_MIMEPROC_BROKEN);
  ck_assert_int_eq(errno, EPROTO);
  ck_assert_str_eq(r.log, log);
}

START_TEST(test_script_hostile) {
  struct step *s;
  int fd;

  switch (_i) {
    case 0:
      /* The first part is not part 0. */
      s = add_step(MAILOAUTH_MIMEPROC_PART_BEGIN);
      part_begin(&s->payload, 1, 1, "text/plain", "a", 1);
      expect_refused("");
      break;

    case 1:
      /* A NUL inside a name ("a.pdf\0.exe"). */
      s = add_step(MAILOAUTH_MIMEPROC_PART_BEGIN);
      part_begin(&s->payload, 0, 0, "text/plain", "a.pdf\0.exe", 10);
      expect_refused("");
      break;

    case 2:
      /* A body nobody asked for. */
      s = add_step(MAILOAUTH_MIMEPROC_PART_BEGIN);
      part_begin(&s->payload, 0, 0, "text/plain", "", 0);
      add_end(0, 3, body_file("abc"));
      expect_refused("B0:text/plain:-;");
      break;

    case 3:
      /* A file with a name: not the parser's anonymous file. */
      s = add_step(MAILOAUTH_MIMEPROC_PART_BEGIN);
      part_begin(&s->payload, 0, 0, "text/plain", "a", 1);
      {
        char path[128];

        snprintf(path, sizeof(path), "%s/named", tmpdir);
        fd = open(path, O_CREAT|O_RDWR|O_TRUNC, 0600);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write(fd, "abc", 3), 3);
        add_end(0, 3, fd);
        expect_refused("B0:text/plain:a;E0:8;");
        (void) unlink(path);
      }
      break;

    case 4:
      /* A size that is not the file's. */
      s = add_step(MAILOAUTH_MIMEPROC_PART_BEGIN);
      part_begin(&s->payload, 0, 0, "text/plain", "a", 1);
      add_end(0, 1000, body_file("abc"));
      /* The part is ended for the caller, with no file. */
      expect_refused("B0:text/plain:a;E0:8;");
      break;

    case 5:
      /* A control character in a header field. */
      s = add_step(MAILOAUTH_MIMEPROC_FIELD);
      put32(&s->payload, MAILOAUTH_MIMEPROC_F_SUBJECT);
      putstr(&s->payload, "a\r\nBcc: x", 9);
      expect_refused("");
      break;

    case 6:
      /* DONE while a body is due. */
      s = add_step(MAILOAUTH_MIMEPROC_PART_BEGIN);
      part_begin(&s->payload, 0, 0, "text/plain", "a", 1);
      add_done(0, 0);
      expect_refused("B0:text/plain:a;E0:8;");
      break;

    case 7:
      /* A message type the parser does not send. */
      add_step(MAILOAUTH_MIMEPROC_REPLY);
      expect_refused("");
      break;

    case 8:
      /* A string longer than it may be. */
      s = add_step(MAILOAUTH_MIMEPROC_PART_BEGIN);
      {
        static char longname[MAILOAUTH_MIMEPROC_MAX_STR + 1];

        memset(longname, 'a', sizeof(longname));
        part_begin(&s->payload, 0, 0, "text/plain", longname,
          sizeof(longname));
      }
      expect_refused("");
      break;

    case 9:
      /* A field after the parts began. */
      s = add_step(MAILOAUTH_MIMEPROC_PART_BEGIN);
      part_begin(&s->payload, 0, 0, "text/plain", "", 0);
      s = add_step(MAILOAUTH_MIMEPROC_FIELD);
      put32(&s->payload, MAILOAUTH_MIMEPROC_F_FROM_ADDR);
      putstr(&s->payload, "ceo@example.com", 15);
      expect_refused("B0:text/plain:-;");
      break;

    case 10:
      /* A success that reports an error code. */
      add_done(0, MAILOAUTH_MIME_E_NOMEM);
      expect_refused("");
      break;
  }
}
END_TEST

START_TEST(test_decode_part_bounds) {
  struct mailoauth_mime_part part;
  struct out o;
  char store[MAILOAUTH_IMSG_MAX + 16];
  size_t cut;

  part_begin(&o, 3, 2, "image/png", "logo.png", 8);
  ck_assert_int_eq(mailoauth_mimeproc_decode_part(o.b, o.n, &part, store,
    sizeof(store)), 0);
  ck_assert_uint_eq(part.index, 3);
  ck_assert_str_eq(part.filename, "logo.png");
  ck_assert_ptr_null(part.content_id);

  /* Every shorter or longer payload is refused. */
  for (cut = 0; cut < o.n; cut++) {
    ck_assert_int_eq(mailoauth_mimeproc_decode_part(o.b, cut, &part, store,
      sizeof(store)), -1);
  }
  o.b[o.n] = 0;
  ck_assert_int_eq(mailoauth_mimeproc_decode_part(o.b, o.n + 1, &part,
    store, sizeof(store)), -1);

  /* Out-of-range numbers. */
  part_begin(&o, 3, 2, "image/png", "logo.png", 8);
  o.b[15] = 9;                  /* disposition */
  ck_assert_int_eq(mailoauth_mimeproc_decode_part(o.b, o.n, &part, store,
    sizeof(store)), -1);
  part_begin(&o, 3, 0, "image/png", "logo.png", 8);
  ck_assert_int_eq(mailoauth_mimeproc_decode_part(o.b, o.n, &part, store,
    sizeof(store)), -1);
}
END_TEST

int main(void) {
  Suite *s = suite_create("mimeproc");
  TCase *tc = tcase_create("mimeproc");
  SRunner *sr;
  int failed;

  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_round_trip);
  tcase_add_test(tc, test_fed_through_a_pipe);
  tcase_add_test(tc, test_descend_into_attached_message);
  tcase_add_test(tc, test_stops);
  tcase_add_test(tc, test_parser_limit_reported);
  tcase_add_test(tc, test_parser_killed_mid_part);
  tcase_add_test(tc, test_script_well_formed);
  tcase_add_loop_test(tc, test_script_hostile, 0, 11);
  tcase_add_test(tc, test_decode_part_bounds);
  suite_add_tcase(s, tc);

  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
