/*
 * mailoauthd - the programs of mod_mailoauth's roles: entry point, logging
 *
 * Usage (by the module only): mailoauthd supervisor|worker|deposit|parser|tnef
 * with argv[0] the process title.
 */

#include "mailoauthd.h"
#include "mailoauth/trace.h"
#include "mailoauth/version.h"

#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const struct mailoauth_wconf *mailoauthd_conf = NULL;

/* The line layout of ProFTPD's own log writers, so that MailOAuthLog and
 * TraceLog read the same whichever process wrote a line.
 */
static size_t mailoauthd_stamp(char *buf, size_t bufsz) {
  struct timeval now;
  struct tm tm;
  size_t len;

  gettimeofday(&now, NULL);
  localtime_r(&now.tv_sec, &tm);
  len = strftime(buf, bufsz, "%Y-%m-%d %H:%M:%S", &tm);
  len += (size_t) snprintf(buf + len, bufsz - len, ",%03lu",
    (unsigned long) (now.tv_usec / 1000));
  return len;
}

static void mailoauthd_write_line(int fd, char *buf, size_t len,
    size_t bufsz) {
  if (len >= bufsz - 1) {
    len = bufsz - 2;
  }
  buf[len++] = '\n';
  if (write(fd, buf, len) < 0) {
    /* Nowhere left to say so. */
  }
}

static void mailoauthd_log_sink(const char *fmt, va_list ap) {
  char buf[8192];
  size_t len;
  int n;

  len = mailoauthd_stamp(buf, sizeof(buf));
  len += (size_t) snprintf(buf + len, sizeof(buf) - len, " %s[%u]: ",
    MOD_MAILOAUTH_VERSION, (unsigned int) getpid());
  n = vsnprintf(buf + len, sizeof(buf) - len, fmt, ap);
  if (n > 0) {
    len += (size_t) n;
  }
  mailoauthd_write_line(MAILOAUTHD_LOG_FD, buf, len, sizeof(buf));
}

static void mailoauthd_trace_sink(const char *channel, int level,
    const char *fmt, va_list ap) {
  char buf[8192];
  size_t len;
  int n;

  if (mailoauthd_conf == NULL ||
      level > mailoauth_wconf_trace_level(mailoauthd_conf, channel)) {
    return;
  }

  len = mailoauthd_stamp(buf, sizeof(buf));
  len += (size_t) snprintf(buf + len, sizeof(buf) - len, " [%u] <%s:%d>: ",
    (unsigned int) getpid(), channel, level);
  n = vsnprintf(buf + len, sizeof(buf) - len, fmt, ap);
  if (n > 0) {
    len += (size_t) n;
  }
  mailoauthd_write_line(MAILOAUTHD_TRACE_FD, buf, len, sizeof(buf));
}

void mailoauthd_sinks(const struct mailoauth_wconf *conf) {
  mailoauthd_conf = conf;
  mailoauth_log_set_sink(mailoauthd_log_sink);
  mailoauth_trace_set_sink(mailoauthd_trace_sink);
}

int mailoauthd_drop_privs(uid_t uid, gid_t gid) {
  if (getuid() != 0 &&
      geteuid() != 0) {
    /* Not started as root (a test run as one user): nothing to drop. */
    return 0;
  }

  if (setgroups(1, &gid) < 0 ||
      setresgid(gid, gid, gid) < 0 ||
      setresuid(uid, uid, uid) < 0) {
    return -1;
  }

  return 0;
}

/* The supervisor and the worker start from the configuration on their
 * control socket.
 */
static int mailoauthd_load(struct mailoauthd *d) {
  char err[512];

  d->conf_json = mailoauth_wconf_recv(MAILOAUTHD_CONTROL_FD, &d->conf_len);
  if (d->conf_json == NULL) {
    return -1;
  }

  if (mailoauth_wconf_parse(&d->conf, d->conf_json, d->conf_len, err,
      sizeof(err)) < 0) {
    mailoauth_log_set_sink(mailoauthd_log_sink);
    mailoauth_log("cannot read the configuration from the server: %s", err);
    errno = EINVAL;
    return -1;
  }

  mailoauthd_sinks(&d->conf);
  return 0;
}

static int mailoauthd_usage(void) {
  fprintf(stderr, "mailoauthd is started by mod_mailoauth, not by hand "
    "(roles: supervisor, worker, deposit, parser, tnef)\n");
  return 2;
}

int main(int argc, char **argv) {
  struct mailoauthd d;
  struct stat st;
  const char *role;

  if (argc < 2) {
    return mailoauthd_usage();
  }
  role = argv[1];

  (void) umask(077);

  if (strcmp(role, "deposit") == 0) {
    return mailoauthd_deposit_main(argc - 2, argv + 2);
  }
  if (strcmp(role, "tnef") == 0) {
    return mailoauthd_tnef_main(argc - 2, argv + 2);
  }
  if (strcmp(role, "parser") == 0) {
    return mailoauthd_parser_main(argc - 2, argv + 2);
  }

  /* The others need what the module hands them on descriptor 3. */
  if (fstat(MAILOAUTHD_CONTROL_FD, &st) < 0 ||
      !S_ISSOCK(st.st_mode)) {
    return mailoauthd_usage();
  }

  memset(&d, 0, sizeof(d));
  if (mailoauthd_load(&d) < 0) {
    return 1;
  }

  if (strcmp(role, "supervisor") == 0) {
    return mailoauthd_supervisor_main(&d);
  }
  if (strcmp(role, "worker") == 0) {
    return mailoauthd_worker_main(&d);
  }

  return mailoauthd_usage();
}
