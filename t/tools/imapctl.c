/*
 * imapctl - drives one mod_mailoauth IMAP session for the integration
 * tests (t/integration/test_imap.py).
 *
 *   imapctl --url imaps://127.0.0.1:PORT/Folder --user MAILBOX
 *           [--ca FILE] [--token-file FILE] [--timeout-ms N]
 *           [--max-idle S] [--trace]
 *
 * Reads operations from stdin, one a line, fields separated by TABs, and
 * answers each with one JSON object on stdout (flushed), so a test can act
 * on the server between two operations of the same session:
 *
 *   select
 *   search FROM [unseen] [MAX]
 *   info UID[,UID...]
 *   fetch UID PATH [MAX_BYTES]       the message into PATH
 *   seen UID 1|0
 *   move UID FOLDER [create]
 *   delete UID
 *   create FOLDER
 *   caps
 *   token FILE                       use the token in FILE from now on
 *   reconnect
 *   stats                            connections, requests, VmHWM
 *
 * Every answer has "op", "status" (mailoauth_imap_status_name), "reply",
 * "hint" (or null), "connections" and "requests".
 */

#include "mailoauth/imap.h"
#include "mailoauth/jsonwrap.h"
#include "mailoauth/trace.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_FIELDS 8

static void trace_to_stderr(const char *channel, int level, const char *fmt,
    va_list ap) {
  fprintf(stderr, "[%s:%d] ", channel, level);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
}

static char *read_token(const char *path) {
  char buf[16384];
  size_t n;
  FILE *fp = fopen(path, "r");

  if (fp == NULL) {
    return NULL;
  }
  n = fread(buf, 1, sizeof(buf) - 1, fp);
  fclose(fp);
  buf[n] = '\0';
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' ||
         buf[n - 1] == ' ')) {
    buf[--n] = '\0';
  }
  return strdup(buf);
}

static long vm_hwm_kb(void) {
  char line[256];
  long kb = -1;
  FILE *fp = fopen("/proc/self/status", "r");

  if (fp == NULL) {
    return -1;
  }
  while (fgets(line, sizeof(line), fp) != NULL) {
    if (strncmp(line, "VmHWM:", 6) == 0) {
      kb = strtol(line + 6, NULL, 10);
      break;
    }
  }
  fclose(fp);
  return kb;
}

static uint32_t parse_uid(const char *s) {
  char *end;
  unsigned long v;

  if (s == NULL) {
    return 0;
  }
  errno = 0;
  v = strtoul(s, &end, 10);
  if (errno != 0 || *end != '\0' || v > UINT32_MAX) {
    return 0;
  }
  return (uint32_t) v;
}

static json_t *flags_json(unsigned flags) {
  json_t *a = json_array();

  if (flags & MAILOAUTH_IMAP_FLAG_SEEN) {
    json_array_append_new(a, json_string("\\Seen"));
  }
  if (flags & MAILOAUTH_IMAP_FLAG_DELETED) {
    json_array_append_new(a, json_string("\\Deleted"));
  }
  if (flags & MAILOAUTH_IMAP_FLAG_FLAGGED) {
    json_array_append_new(a, json_string("\\Flagged"));
  }
  if (flags & MAILOAUTH_IMAP_FLAG_ANSWERED) {
    json_array_append_new(a, json_string("\\Answered"));
  }
  if (flags & MAILOAUTH_IMAP_FLAG_DRAFT) {
    json_array_append_new(a, json_string("\\Draft"));
  }
  return a;
}

static void emit(struct mailoauth_imap *s, json_t *out,
    mailoauth_imap_status_t status) {
  const char *hint = mailoauth_imap_hint(s);
  char *text;

  json_object_set_new(out, "status",
    json_string(mailoauth_imap_status_name(status)));
  json_object_set_new(out, "reply", json_string(mailoauth_imap_reply(s)));
  json_object_set_new(out, "hint", hint ? json_string(hint) : json_null());
  json_object_set_new(out, "connections",
    json_integer((json_int_t) mailoauth_imap_connections(s)));
  json_object_set_new(out, "requests",
    json_integer((json_int_t) mailoauth_imap_requests(s)));

  text = json_dumps(out, JSON_COMPACT);
  if (text != NULL) {
    fprintf(stdout, "%s\n", text);
    free(text);
  }
  fflush(stdout);
  json_decref(out);
}

static void usage_error(const char *what) {
  json_t *out = json_object();
  char *text;

  json_object_set_new(out, "op", json_string("?"));
  json_object_set_new(out, "status", json_string("usage"));
  json_object_set_new(out, "reply", json_string(what));
  text = json_dumps(out, JSON_COMPACT);
  if (text != NULL) {
    fprintf(stdout, "%s\n", text);
    free(text);
  }
  fflush(stdout);
  json_decref(out);
}

static void run(struct mailoauth_imap *s, char **f, int n) {
  mailoauth_imap_status_t status = MAILOAUTH_IMAP_OK;
  json_t *out = json_object();

  json_object_set_new(out, "op", json_string(f[0]));

  if (strcmp(f[0], "select") == 0) {
    struct mailoauth_imap_mailbox mb;

    status = mailoauth_imap_select(s, &mb);
    json_object_set_new(out, "uidvalidity", json_integer(mb.uidvalidity));
    json_object_set_new(out, "uidnext", json_integer(mb.uidnext));
    json_object_set_new(out, "exists", json_integer(mb.exists));
    json_object_set_new(out, "read_only", json_boolean(mb.read_only));

  } else if (strcmp(f[0], "search") == 0 && n >= 2) {
    unsigned flags = 0;
    size_t max = 100000, count = 0, i;
    uint32_t *uids;
    json_t *a = json_array();
    int k;

    for (k = 2; k < n; k++) {
      if (strcmp(f[k], "unseen") == 0) {
        flags |= MAILOAUTH_IMAP_SEARCH_UNSEEN;
      } else {
        max = (size_t) strtoul(f[k], NULL, 10);
      }
    }
    uids = calloc(max > 0 ? max : 1, sizeof(*uids));
    status = mailoauth_imap_search(s, (uint32_t) strtoul(f[1], NULL, 10),
      flags, uids, max, &count);
    for (i = 0; i < count; i++) {
      json_array_append_new(a, json_integer(uids[i]));
    }
    free(uids);
    json_object_set_new(out, "uids", a);

  } else if (strcmp(f[0], "info") == 0 && n >= 2) {
    uint32_t uids[1000];
    struct mailoauth_imap_msginfo info[1000];
    size_t count = 0, found = 0, i;
    char *copy = strdup(f[1]), *tok, *save = NULL;
    json_t *a = json_array();

    for (tok = strtok_r(copy, ",", &save); tok != NULL && count < 1000;
         tok = strtok_r(NULL, ",", &save)) {
      uids[count++] = parse_uid(tok);
    }
    free(copy);
    status = mailoauth_imap_info(s, uids, count, info, &found);
    for (i = 0; status == MAILOAUTH_IMAP_OK && i < count; i++) {
      json_t *o = json_object();

      json_object_set_new(o, "uid", json_integer(info[i].uid));
      json_object_set_new(o, "size", json_integer((json_int_t) info[i].size));
      json_object_set_new(o, "flags", flags_json(info[i].flags));
      json_array_append_new(a, o);
    }
    json_object_set_new(out, "info", a);
    json_object_set_new(out, "found", json_integer((json_int_t) found));

  } else if (strcmp(f[0], "fetch") == 0 && n >= 3) {
    struct mailoauth_imap_fetched got;
    uint64_t max = n >= 4 ? strtoull(f[3], NULL, 10) : 0;
    int fd = open(f[2], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

    if (fd < 0) {
      usage_error(strerror(errno));
      json_decref(out);
      return;
    }
    status = mailoauth_imap_fetch_fd(s, parse_uid(f[1]), max, fd, &got);
    close(fd);
    json_object_set_new(out, "bytes", json_integer((json_int_t) got.bytes));
    json_object_set_new(out, "size", json_integer((json_int_t) got.size));
    json_object_set_new(out, "was_seen", json_boolean(got.was_seen));

  } else if (strcmp(f[0], "seen") == 0 && n >= 3) {
    status = mailoauth_imap_set_seen(s, parse_uid(f[1]), atoi(f[2]));

  } else if (strcmp(f[0], "move") == 0 && n >= 3) {
    uint32_t new_uid = 0;

    status = mailoauth_imap_move(s, parse_uid(f[1]), f[2],
      n >= 4 && strcmp(f[3], "create") == 0, &new_uid);
    json_object_set_new(out, "new_uid", json_integer(new_uid));

  } else if (strcmp(f[0], "delete") == 0 && n >= 2) {
    status = mailoauth_imap_delete(s, parse_uid(f[1]));

  } else if (strcmp(f[0], "create") == 0 && n >= 2) {
    status = mailoauth_imap_create_folder(s, f[1]);

  } else if (strcmp(f[0], "caps") == 0) {
    unsigned caps = 0;
    json_t *a = json_array();

    status = mailoauth_imap_capabilities(s, &caps);
    if (caps & MAILOAUTH_IMAP_CAP_IMAP4REV1) {
      json_array_append_new(a, json_string("IMAP4rev1"));
    }
    if (caps & MAILOAUTH_IMAP_CAP_MOVE) {
      json_array_append_new(a, json_string("MOVE"));
    }
    if (caps & MAILOAUTH_IMAP_CAP_UIDPLUS) {
      json_array_append_new(a, json_string("UIDPLUS"));
    }
    if (caps & MAILOAUTH_IMAP_CAP_IDLE) {
      json_array_append_new(a, json_string("IDLE"));
    }
    json_object_set_new(out, "caps", a);

  } else if (strcmp(f[0], "token") == 0 && n >= 2) {
    char *token = read_token(f[1]);

    if (token == NULL || mailoauth_imap_set_token(s, token) < 0) {
      free(token);
      usage_error("cannot read the token file");
      json_decref(out);
      return;
    }
    free(token);

  } else if (strcmp(f[0], "reconnect") == 0) {
    mailoauth_imap_reconnect(s);

  } else if (strcmp(f[0], "stats") == 0) {
    json_object_set_new(out, "vmhwm_kb", json_integer(vm_hwm_kb()));
    json_object_set_new(out, "folder", json_string(mailoauth_imap_folder(s)));
    json_object_set_new(out, "folder_wire",
      json_string(mailoauth_imap_folder_wire(s)));

  } else {
    usage_error("unknown operation or missing arguments");
    json_decref(out);
    return;
  }

  emit(s, out, status);
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
    { "url", required_argument, NULL, 'u' },
    { "user", required_argument, NULL, 'm' },
    { "ca", required_argument, NULL, 'c' },
    { "token-file", required_argument, NULL, 't' },
    { "timeout-ms", required_argument, NULL, 'T' },
    { "max-idle", required_argument, NULL, 'I' },
    { "trace", no_argument, NULL, 'v' },
    { NULL, 0, NULL, 0 }
  };
  const char *url = NULL, *user = NULL, *ca = NULL, *token_file = NULL;
  long timeout_ms = 0, max_idle = 0;
  struct mailoauth_imap *s;
  char line[8192];
  int opt;

  while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (opt) {
      case 'u': url = optarg; break;
      case 'm': user = optarg; break;
      case 'c': ca = optarg; break;
      case 't': token_file = optarg; break;
      case 'T': timeout_ms = strtol(optarg, NULL, 10); break;
      case 'I': max_idle = strtol(optarg, NULL, 10); break;
      case 'v': mailoauth_trace_set_sink(trace_to_stderr); break;
      default:
        fprintf(stderr, "usage: imapctl --url URL --user MAILBOX [--ca FILE] "
          "[--token-file FILE] [--timeout-ms N] [--max-idle S] [--trace]\n");
        return 2;
    }
  }

  if (url == NULL || user == NULL) {
    fprintf(stderr, "imapctl: --url and --user are required\n");
    return 2;
  }

  curl_global_init(CURL_GLOBAL_DEFAULT);

  s = mailoauth_imap_create(url, user, ca);
  if (s == NULL) {
    fprintf(stderr, "imapctl: cannot use %s: %s\n", url, strerror(errno));
    return 2;
  }
  mailoauth_imap_set_timeouts(s, 0, timeout_ms, max_idle);

  if (token_file != NULL) {
    char *token = read_token(token_file);

    if (token == NULL || mailoauth_imap_set_token(s, token) < 0) {
      fprintf(stderr, "imapctl: cannot read %s\n", token_file);
      free(token);
      mailoauth_imap_destroy(s);
      return 2;
    }
    free(token);
  }

  while (fgets(line, sizeof(line), stdin) != NULL) {
    char *f[MAX_FIELDS], *p = line;
    int n = 0;

    line[strcspn(line, "\r\n")] = '\0';
    if (line[0] == '\0') {
      continue;
    }
    if (strcmp(line, "quit") == 0) {
      break;
    }

    while (n < MAX_FIELDS) {
      f[n++] = p;
      p = strchr(p, '\t');
      if (p == NULL) {
        break;
      }
      *p++ = '\0';
    }
    run(s, f, n);
  }

  mailoauth_imap_destroy(s);
  curl_global_cleanup();
  return 0;
}
