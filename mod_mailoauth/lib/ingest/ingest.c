/*
 * mod_mailoauth - mail-to-folder ingestion tasks
 *
 * See ingest.h for the crash-safety contract.  The order of one message's
 * steps is what makes it hold:
 *
 *   fetch -> parse -> for each wanted part: (skip if in the ledger) deposit,
 *   append to the ledger, fsync -> after-action -> state file (next UID)
 *   -> empty the ledger.
 *
 * A crash before the state file is written takes the message up again; the
 * ledger makes the deposits already done be skipped, and an after-action
 * already done is harmless to repeat (or the message is gone, and then
 * there is nothing to do).
 */

#include "mailoauth/io.h"
#include "mailoauth/crashpoint.h"
#include "mailoauth/ingest.h"
#include "mailoauth/deposit.h"
#include "mailoauth/imap.h"
#include "mailoauth/jsonwrap.h"
#include "mailoauth/mime.h"
#include "mailoauth/mimeproc.h"
#include "mailoauth/meta.h"
#include "mailoauth/names.h"
#include "mailoauth/route.h"
#include "mailoauth/spool.h"
#include "mailoauth/tnef.h"
#include "mailoauth/trace.h"
#include "mailoauth/worker.h"
#include "mailoauth/yield.h"
#include "ingest/ingestint.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <limits.h>
#include <openssl/evp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *trace_channel = "mailoauth.ingest";

/* UIDs asked for per search. */
#define INGEST_SEARCH_BATCH     200

/* The helper may have to write a large file to a slow disk. */
#define INGEST_DEPOSIT_TIMEOUT_MS  (10 * 60 * 1000)

/* A message that made the parser die or misbehave this many times in a
 * row is handled as failed=, so that it cannot hold up the task forever.
 */
#define INGEST_PARSER_TRIES     3

/* A run lets the worker do other work after this many seconds or this
 * many messages, whichever comes first: the count keeps a backlog of small
 * messages from starving notifications on a fast link as surely as the
 * clock does on a slow one.
 */
#define INGEST_RUN_SLICE        2
#define INGEST_RUN_SLICE_MSGS   16

/* Mode of deposited files. */
#define INGEST_FILE_MODE        0640

/* Configuration
 */

void mailoauth_ingest_config_init(struct mailoauth_ingest_config *cfg) {
  memset(cfg, 0, sizeof(*cfg));
  cfg->folder = "INBOX";
  cfg->uid = (uid_t) -1;
  cfg->gid = (gid_t) -1;
  cfg->after = MAILOAUTH_INGEST_AFTER_SEEN;
  cfg->failed = MAILOAUTH_INGEST_AFTER_LEAVE;
  cfg->tnef = 1;
  cfg->idle = 1;
  cfg->min_free = MAILOAUTH_INGEST_DEFAULT_MIN_FREE;
}

int mailoauth_ingest_valid_name(const char *name) {
  size_t i, len = strlen(name);

  if (len == 0 ||
      len > MAILOAUTH_INGEST_NAME_MAX ||
      name[0] == '.' ||
      name[0] == '-') {
    return 0;
  }

  for (i = 0; i < len; i++) {
    char c = name[i];

    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.')) {
      return 0;
    }
  }

  return 1;
}

static int ingest_parse_size(const char *s, uint64_t *out) {
  char *end = NULL;
  unsigned long long v;
  uint64_t mult = 1;

  errno = 0;
  v = strtoull(s, &end, 10);
  if (errno != 0 || end == s || *s == '-') {
    return -1;
  }

  if (strcasecmp(end, "") == 0 || strcasecmp(end, "B") == 0) {
    mult = 1;
  } else if (strcasecmp(end, "K") == 0 || strcasecmp(end, "KB") == 0) {
    mult = 1024;
  } else if (strcasecmp(end, "M") == 0 || strcasecmp(end, "MB") == 0) {
    mult = 1024 * 1024;
  } else if (strcasecmp(end, "G") == 0 || strcasecmp(end, "GB") == 0) {
    mult = 1024ULL * 1024 * 1024;
  } else {
    return -1;
  }

  if (v > UINT64_MAX / mult) {
    return -1;
  }

  *out = (uint64_t) v * mult;
  return 0;
}

/* "move:Folder" for after= and failed=. */
static int ingest_parse_action(const char *value, int allow_leave,
    int *action, const char **folder) {
  if (strcasecmp(value, "seen") == 0 && !allow_leave) {
    *action = MAILOAUTH_INGEST_AFTER_SEEN;
  } else if (strcasecmp(value, "delete") == 0 && !allow_leave) {
    *action = MAILOAUTH_INGEST_AFTER_DELETE;
  } else if (strcasecmp(value, "leave") == 0 && allow_leave) {
    *action = MAILOAUTH_INGEST_AFTER_LEAVE;
  } else if (strncasecmp(value, "move:", 5) == 0 && value[5] != '\0') {
    char wire[MAILOAUTH_IMAP_NAME_MAX + 1];

    if (mailoauth_imap_folder_name(value + 5, wire, sizeof(wire)) < 0) {
      return -1;
    }
    *action = MAILOAUTH_INGEST_AFTER_MOVE;
    *folder = value + 5;
  } else {
    return -1;
  }

  return 0;
}

int mailoauth_ingest_check_dir(char *value, char *errbuf, size_t errlen) {
  size_t len = strlen(value);

  while (len > 1 && value[len-1] == '/') {
    value[--len] = '\0';
  }

  if (value[0] != '/' ||
      strstr(value, "//") != NULL ||
      strstr(value, "/../") != NULL ||
      strstr(value, "/./") != NULL ||
      (len >= 3 && strcmp(value + len - 3, "/..") == 0) ||
      (len >= 2 && strcmp(value + len - 2, "/.") == 0)) {
    mailoauth_errf(errbuf, errlen, "dir '%s' must be an absolute path "
      "without '.' or '..' components, e.g. dir=/srv/ftp/alice/inbox", value);
    return -1;
  }

  return 0;
}

static int ingest_parse_onoff(const char *key, const char *value, int *out,
    char *errbuf, size_t errlen) {
  if (strcasecmp(value, "on") == 0) {
    *out = 1;
  } else if (strcasecmp(value, "off") == 0) {
    *out = 0;
  } else {
    mailoauth_errf(errbuf, errlen, "write %s=on or %s=off", key, key);
    return -1;
  }
  return 0;
}

int mailoauth_ingest_parse_setting(struct mailoauth_ingest_config *cfg,
    const char *key, char *value, char *errbuf, size_t errlen) {
  int res;

  res = mailoauth_route_parse_setting(&cfg->filter, key, value, errbuf,
    errlen);
  if (res <= 0) {
    return res;
  }

  if (strcasecmp(key, "account") == 0) {
    if (*value == '\0') {
      mailoauth_errf(errbuf, errlen, "write account=NAME of a "
        "MailOAuthAccount");
      return -1;
    }
    cfg->account = value;

  } else if (strcasecmp(key, "folder") == 0) {
    char wire[MAILOAUTH_IMAP_NAME_MAX + 1];

    if (mailoauth_imap_folder_name(value, wire, sizeof(wire)) < 0) {
      mailoauth_errf(errbuf, errlen, "folder '%s' is not a folder name: "
        "write e.g. folder=INBOX or folder=INBOX/Scans", value);
      return -1;
    }
    cfg->folder = value;

  } else if (strcasecmp(key, "dir") == 0) {
    if (mailoauth_ingest_check_dir(value, errbuf, errlen) < 0) {
      return -1;
    }
    cfg->dir = value;

  } else if (strcasecmp(key, "files") == 0) {
    /* The caller's copy is split in place: globs hold no commas. */
    char *p = value, *comma;
    size_t n = 0;

    while (p != NULL && *p != '\0') {
      comma = strchr(p, ',');
      if (comma != NULL) {
        *comma = '\0';
      }
      if (*p != '\0') {
        if (n >= MAILOAUTH_INGEST_MAX_GLOBS - 1) {
          mailoauth_errf(errbuf, errlen, "files= takes at most %d globs",
            MAILOAUTH_INGEST_MAX_GLOBS - 1);
          return -1;
        }
        cfg->files[n++] = p;
      }
      p = comma ? comma + 1 : NULL;
    }
    cfg->files[n] = NULL;
    if (n == 0) {
      mailoauth_errf(errbuf, errlen, "write files=GLOB[,GLOB...], e.g. "
        "files=*.pdf,*.xml");
      return -1;
    }

  } else if (strcasecmp(key, "max-size") == 0) {
    if (ingest_parse_size(value, &cfg->max_size) < 0) {
      mailoauth_errf(errbuf, errlen, "max-size '%s' is not a size: write "
        "e.g. max-size=25M (units B, K, M, G)", value);
      return -1;
    }

  } else if (strcasecmp(key, "min-free") == 0) {
    if (ingest_parse_size(value, &cfg->min_free) < 0) {
      mailoauth_errf(errbuf, errlen, "min-free '%s' is not a size: write "
        "e.g. min-free=1G (units B, K, M, G; 0 turns the check off)", value);
      return -1;
    }

  } else if (strcasecmp(key, "after") == 0) {
    if (ingest_parse_action(value, 0, &cfg->after, &cfg->after_folder) < 0) {
      mailoauth_errf(errbuf, errlen, "after '%s': write after=seen, "
        "after=delete or after=move:Folder", value);
      return -1;
    }

  } else if (strcasecmp(key, "failed") == 0) {
    if (ingest_parse_action(value, 1, &cfg->failed,
        &cfg->failed_folder) < 0) {
      mailoauth_errf(errbuf, errlen, "failed '%s': write failed=leave or "
        "failed=move:Folder", value);
      return -1;
    }

  } else if (strcasecmp(key, "name") == 0) {
    if (mailoauth_names_template_check(value) < 0) {
      mailoauth_errf(errbuf, errlen, "name '%s' is not a valid template: "
        "write e.g. name=%%Y-%%m-%%d/%%{filename} (fields %%{sender}, "
        "%%{subject}, %%{uid}, %%{filename}, %%{basename}, %%{ext}, "
        "%%{counter}; relative, no '..')", value);
      return -1;
    }
    cfg->name_tmpl = value;

  } else if (strcasecmp(key, "inline") == 0) {
    if (strcasecmp(value, "auto") == 0) {
      cfg->inline_parts = MAILOAUTH_INGEST_INLINE_AUTO;
    } else if (strcasecmp(value, "on") == 0) {
      cfg->inline_parts = MAILOAUTH_INGEST_INLINE_ON;
    } else if (strcasecmp(value, "off") == 0) {
      cfg->inline_parts = MAILOAUTH_INGEST_INLINE_OFF;
    } else {
      mailoauth_errf(errbuf, errlen, "inline='%s' is not a choice: write "
        "inline=on, inline=off or inline=auto", value);
      return -1;
    }

  } else if (strcasecmp(key, "eml") == 0) {
    return ingest_parse_onoff(key, value, &cfg->save_message, errbuf,
      errlen);

  } else if (strcasecmp(key, "metadata") == 0) {
    return ingest_parse_onoff(key, value, &cfg->metadata, errbuf, errlen);

  } else if (strcasecmp(key, "tnef") == 0) {
    return ingest_parse_onoff(key, value, &cfg->tnef, errbuf, errlen);

  } else if (strcasecmp(key, "idle") == 0) {
    return ingest_parse_onoff(key, value, &cfg->idle, errbuf, errlen);

  } else if (strcasecmp(key, "idle-renew") == 0) {
    /* Not documented: lets a test see IDLE re-issued in seconds. */
    char *end = NULL;
    unsigned long secs = strtoul(value, &end, 10);

    if (end == value || *end != '\0' || secs == 0 || secs > 3600) {
      mailoauth_errf(errbuf, errlen, "write idle-renew=SECONDS (1-3600)");
      return -1;
    }
    cfg->idle_renew = (unsigned int) secs;

  } else {
    mailoauth_errf(errbuf, errlen, "unknown setting '%s' (known: account, "
      "folder, every, dir, owner, from, to, subject, files, max-size, "
      "min-free, after, failed, name, inline, eml, metadata, tnef, idle)",
      key);
    return -1;
  }

  return 0;
}

/* Anonymous temporary files in <statedir>/tmp: nothing to clean up after a
 * crash.
 */
static int ingest_tmpfile(struct mailoauth_ingest *ing) {
  int fd;

#ifdef O_TMPFILE
  fd = open(ing->tmp_dir, O_TMPFILE|O_RDWR|O_CLOEXEC, 0600);
  if (fd >= 0) {
    return fd;
  }
  if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL) {
    return -1;
  }
#endif

  {
    size_t len = strlen(ing->tmp_dir) + 32;
    char *path = malloc(len);

    if (path == NULL) {
      return -1;
    }
    snprintf(path, len, "%s/ingest.XXXXXX", ing->tmp_dir);
    fd = mkostemp(path, O_CLOEXEC);
    if (fd >= 0) {
      (void) unlink(path);
    }
    free(path);
  }

  return fd;
}

/* Logging an error once
 */

static void ingest_error(struct ingest_task *t, const char *fmt, ...)
#ifdef __GNUC__
  __attribute__((format(printf, 2, 3)))
#endif
  ;

static void ingest_error(struct ingest_task *t, const char *fmt, ...) {
  char msg[sizeof(t->last_error)];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  t->errors++;

  /* A task failing the same way every minute would flood the log. */
  if (strcmp(msg, t->last_error) != 0) {
    mailoauth_log("ingest %s: %s", t->cfg.name, msg);
    memcpy(t->last_error, msg, sizeof(msg));
  } else {
    mailoauth_trace(trace_channel, 5, "task %s: %s (again)", t->cfg.name,
      msg);
  }
}

/* A name a sender chose, as MailOAuthLog shows it: control characters,
 * quotes, backslashes and non-ASCII bytes as \xNN, as in upload lines, so
 * that no name can forge or garble a line.  Sanitizing has removed most
 * of these already; the log does not rely on it.
 */
#define INGEST_SHOWN_MAX  (MAILOAUTH_DEPOSIT_NAME_MAX * 4 + 1)

static const char *ingest_shown(const char *name, char *buf, size_t bufsz) {
  return mailoauth_worker_printable(name, strlen(name), buf, bufsz);
}

static void ingest_ok(struct ingest_task *t) {
  if (t->last_error[0] != '\0') {
    mailoauth_log("ingest %s: working again", t->cfg.name);
    t->last_error[0] = '\0';
  }
}

/* One message
 */

/* Ledger keys of what is not a MIME part of its own. */
#define INGEST_KEY_EML          0xfffffffeU
#define INGEST_KEY_META         0xffffffffU
#define INGEST_KEY_TNEF(part, k) \
  (0x40000000U | ((unsigned int) (part) << 12) | ((unsigned int) (k) & 0xfffU))

/* A parser fed while fetching that neither reads nor says anything for
 * this long is taken for broken.
 */
#define INGEST_STREAM_QUIET_MS  (10L * 60L * 1000L)

struct ingest_msg {
  struct mailoauth_ingest *ing;
  struct ingest_task *t;
  uint32_t uid;
  const struct ingest_dest *dest;
  int filtered_out;             /* from=/to=/subject= did not match */
  unsigned int wanted;          /* parts selected */
  unsigned int deposited;       /* parts deposited (or found in the ledger) */
  int failed;                   /* a deposit or a local error: stop */
  int stop_run;                 /* also stop the task's run */
  int mime_error;               /* the parser stopped at this limit */
  int related_depth;            /* depth of the innermost open
                                 * multipart/related, -1 when none */
  /* Per depth, whether the last entity begun there is a
   * multipart/alternative: a leaf's parent is the one at its depth - 1.
   */
  unsigned char alt_at[MAILOAUTH_MIME_MAX_DEPTH_LIMIT + 2];
  /* inline=auto: the cid: references of the HTML bodies so far, and the
   * HTML part being read for them (scanning).
   */
  struct mailoauth_mime_cids *cids;
  int scanning;
  unsigned int scan_index;

  /* The message's headers, kept for eml= and metadata= once parsing ends. */
  char *from, *from_addr, *recipients, *subject, *date, *message_id;

  /* metadata=on: what went into the directory. */
  struct mailoauth_meta_file *files;
  size_t nfiles;

  /* The part asked for: its decoded body (part_fd, the parser's file,
   * during part_end only) is deposited, or only hashed (hash_only: it was
   * deposited before a restart, and metadata wants its digest).
   */
  int part_fd;
  int hash_only;
  unsigned int part_index;
  uint64_t part_bytes;
  char part_name[MAILOAUTH_NAMES_MAX + 1];
  char *orig_name;
  char *done_name;              /* hash_only: the name it has */

  /* Fed while fetched: the connection cut the message, so a part the
   * parser ends unterminated is the transfer's fault, not the sender's.
   */
  int input_cut;
  struct mailoauth_mimeproc_callbacks cb;
};

static int ingest_glob(const char *pattern, const char *s) {
  return fnmatch(pattern, s, FNM_CASEFOLD) == 0;
}

static int ingest_is_signature(const char *type) {
  return strcmp(type, "application/pkcs7-signature") == 0 ||
    strcmp(type, "application/x-pkcs7-signature") == 0 ||
    strcmp(type, "application/pgp-signature") == 0 ||
    strcmp(type, "application/pgp-keys") == 0;
}

static int ingest_is_tnef(const struct mailoauth_mime_part *part) {
  return strcmp(part->content_type, "application/ms-tnef") == 0 ||
    strcmp(part->content_type, "application/vnd.ms-tnef") == 0 ||
    (part->filename != NULL &&
     strcasecmp(part->filename, "winmail.dat") == 0);
}

/* files=: any glob matches (no globs: every name). */
static int ingest_files_match(const struct ingest_task *t, const char *name) {
  size_t i;

  if (t->cfg.files[0] == NULL) {
    return 1;
  }
  for (i = 0; t->cfg.files[i] != NULL; i++) {
    if (ingest_glob(t->cfg.files[i], name)) {
      return 1;
    }
  }
  return 0;
}

/* Whether a leaf part is an attachment the task wants.  in_alternative:
 * its parent is a multipart/alternative; cid_shown: an HTML body before it
 * showed its Content-ID.
 */
static int ingest_part_wanted(const struct ingest_task *t,
    const struct mailoauth_mime_part *part, const char *safe_name,
    int in_related, int in_alternative, int cid_shown) {
  int is_calendar;

  if (part->is_multipart) {
    return 0;
  }

  /* The text of a single-part message is not an attachment; a nameless
   * PDF or image as the whole message (a scanner's) is.
   */
  if (part->depth == 0 && part->filename == NULL &&
      (strcmp(part->content_type, "text/plain") == 0 ||
       strcmp(part->content_type, "text/html") == 0)) {
    return 0;
  }

  if (ingest_is_signature(part->content_type)) {
    return 0;
  }

  is_calendar = strcmp(part->content_type, "text/calendar") == 0;
  if (part->disposition != MAILOAUTH_MIME_DISP_ATTACHMENT) {
    /* A nameless part is the body unless its type says it is a file
     * (scanners and scripts send PDFs and CSVs without a name); it is then
     * saved as "attachment" with the type's extension.
     */
    if (t->cfg.inline_parts == MAILOAUTH_INGEST_INLINE_OFF) {
      return 0;
    }
    if (part->filename == NULL &&
        (in_related ||
         strncmp(part->content_type, "multipart/", 10) == 0 ||
         strncmp(part->content_type, "message/", 8) == 0 ||
         strcmp(part->content_type, "text/plain") == 0 ||
         strcmp(part->content_type, "text/html") == 0)) {
      return 0;
    }
    /* A text/calendar next to the body's text/plain and text/html is the
     * invitation the mail client shows (Outlook's meeting request); one
     * of its own in a multipart/mixed is an attached .ics.
     */
    if (is_calendar && in_alternative &&
        (t->cfg.inline_parts == MAILOAUTH_INGEST_INLINE_AUTO ||
         part->filename == NULL)) {
      return 0;
    }
    if (t->cfg.inline_parts == MAILOAUTH_INGEST_INLINE_AUTO) {
      /* What a person sees as attachments: an inline PDF (Apple Mail) or
       * photo (iPhone) is one; an image the HTML body shows (a signature
       * logo, inside multipart/related, or referenced by cid: from an
       * HTML body that came before it wherever it is) is part of the
       * message's look.
       */
      if (in_related) {
        return 0;
      }
      if (cid_shown && strncmp(part->content_type, "image/", 6) == 0) {
        return 0;
      }
    }
  }

  /* files= applies to what the winmail.dat carries, not to its name. */
  if (t->cfg.tnef && ingest_is_tnef(part)) {
    return 1;
  }

  return ingest_files_match(t, safe_name) ||
    (part->filename != NULL && ingest_files_match(t, part->filename));
}

static char *ingest_strdup(const char *s) {
  return strdup(s ? s : "");
}

/* At the top-level header: whether the task takes the message, and where
 * its files go.
 */
static int ingest_route(struct ingest_msg *m,
    const struct mailoauth_mime_message *msg) {
  struct ingest_task *t = m->t;
  unsigned int i;

  m->from = ingest_strdup(msg ? msg->from : NULL);
  m->from_addr = ingest_strdup(msg ? msg->from_addr : NULL);
  m->recipients = ingest_strdup(msg ? msg->recipients : NULL);
  m->subject = ingest_strdup(msg ? msg->subject : NULL);
  m->date = ingest_strdup(msg ? msg->date : NULL);
  m->message_id = ingest_strdup(msg ? msg->message_id : NULL);
  if (m->from == NULL || m->from_addr == NULL || m->recipients == NULL ||
      m->subject == NULL || m->date == NULL || m->message_id == NULL) {
    ingest_error(t, "out of memory reading UID %" PRIu32, m->uid);
    m->failed = m->stop_run = 1;
    return -1;
  }

  if (!mailoauth_route_match(&t->cfg.filter, m->from_addr, m->recipients,
      m->subject, msg ? msg->auth_results : NULL)) {
    m->filtered_out = 1;
    return -1;
  }

  m->dest = &t->dests[0];
  for (i = 0; i < t->cfg.nroutes; i++) {
    if (mailoauth_route_match(t->cfg.routes[i], m->from_addr, m->recipients,
        m->subject, msg ? msg->auth_results : NULL)) {
      m->dest = &t->dests[i + 1];
      mailoauth_trace(trace_channel, 8, "task %s: UID %" PRIu32 " takes "
        "route %u (%s)", t->cfg.name, m->uid, i + 1, m->dest->dir);
      break;
    }

    if (t->cfg.routes[i]->auth != 0) {
      /* Why mail that looks like the partner's went elsewhere. */
      struct mailoauth_route unauth = *t->cfg.routes[i];

      unauth.auth = 0;
      if (mailoauth_route_match(&unauth, m->from_addr, m->recipients,
          m->subject, NULL)) {
        mailoauth_trace(trace_channel, 8, "task %s: UID %" PRIu32 " from "
          "%s: route %u not taken, no pass of authserv-id %s for its "
          "auth=", t->cfg.name, m->uid, m->from_addr, i + 1,
          unauth.authserv_id ? unauth.authserv_id : "-");
      }
    }
  }

  return 0;
}

/* metadata=on: the file goes into the list with its digest. */
static int ingest_note_file(struct ingest_msg *m, const char *name,
    const char *orig, const char *content_type, uint64_t size,
    const unsigned char *digest, int is_message, int incomplete) {
  struct mailoauth_meta_file f;

  if (!m->t->cfg.metadata) {
    return 0;
  }

  memset(&f, 0, sizeof(f));
  f.name = (char *) name;
  f.original = (char *) orig;
  f.content_type = (char *) content_type;
  f.size = size;
  f.is_message = is_message;
  f.incomplete = incomplete;
  memcpy(f.sha256, digest, sizeof(f.sha256));
  if (mailoauth_meta_add_file(&m->files, &m->nfiles, &f) < 0) {
    ingest_error(m->t, "out of memory listing the files of UID %" PRIu32,
      m->uid);
    m->failed = m->stop_run = 1;
    return -1;
  }
  return 0;
}

/* SHA-256 of a whole file, for the metadata of what was not hashed as it
 * streamed by.
 */
static int ingest_hash_fd(int fd, unsigned char *digest, uint64_t *size) {
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  unsigned char buf[65536];
  off_t off = 0;
  int res = -1;

  if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
    EVP_MD_CTX_free(ctx);
    errno = ENOMEM;
    return -1;
  }

  for (;;) {
    ssize_t n = pread(fd, buf, sizeof(buf), off);

    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      break;
    }
    if (n == 0) {
      res = EVP_DigestFinal_ex(ctx, digest, NULL) == 1 ? 0 : -1;
      break;
    }
    (void) EVP_DigestUpdate(ctx, buf, (size_t) n);
    off += n;
  }

  *size = (uint64_t) off;
  EVP_MD_CTX_free(ctx);
  return res;
}

static void ingest_tmpl_name(struct ingest_msg *m, const char *safe_name,
    const char *orig, const char *content_type, unsigned long counter,
    char *out, size_t outsz) {
  struct ingest_task *t = m->t;
  struct mailoauth_names_fields f;
  char uidbuf[16];
  struct tm tm;
  time_t now = time(NULL);

  snprintf(out, outsz, "%s", safe_name);
  if (t->cfg.name_tmpl == NULL) {
    return;
  }

  memset(&f, 0, sizeof(f));
  snprintf(uidbuf, sizeof(uidbuf), "%" PRIu32, m->uid);
  localtime_r(&now, &tm);
  f.sender = m->from_addr;
  f.subject = m->subject;
  f.uid = uidbuf;
  f.filename = orig ? orig : safe_name;
  f.content_type = content_type;
  f.tm = &tm;
  f.counter = counter;
  if (mailoauth_names_expand(t->cfg.name_tmpl, &f, out, outsz) < 0) {
    ingest_error(t, "name template gives no usable name for UID %" PRIu32
      ": %s; using the attachment's name", m->uid, strerror(errno));
    snprintf(out, outsz, "%s", safe_name);
  }
}

/* Deposits the content of fd as name under key in the ledger, unless a
 * previous worker did so already; final gets the name it has.
 */
static int ingest_deposit_fd(struct ingest_msg *m, unsigned int key, int fd,
    const char *name, char *final, size_t finalsz) {
  struct ingest_task *t = m->t;
  const struct ingest_dest *dest = m->dest;
  const struct ingest_ledger_entry *intent;
  struct mailoauth_deposit_request req;
  struct mailoauth_deposit_result res;
  char desc[512], found[MAILOAUTH_DEPOSIT_NAME_MAX + 1];
  char shown[INGEST_SHOWN_MAX];
  unsigned char digest[MAILOAUTH_META_SHA256_LEN];
  uint64_t size = 0;
  int done;

  /* The digest names the part exactly in the request line, so that after
   * a crash the file found is known to be this part and no other.
   */
  if (ingest_hash_fd(fd, digest, &size) < 0) {
    ingest_error(t, "cannot read a temporary file: %s", strerror(errno));
    m->stop_run = 1;
    return -1;
  }

  /* Looked for as it was asked for then, whatever the part is now: a
   * metadata file made again differs in its time of taking.
   */
  intent = mailoauth_ingest_ledger_intent(t, m->uid, key);
  done = 0;
  if (intent != NULL) {
    done = mailoauth_ingest_already_deposited(m->ing, dest, intent, name,
      found, sizeof(found));
    if (done < 0) {
      /* Depositing now could make a second copy. */
      ingest_error(t, "cannot tell whether '%s' (UID %" PRIu32 ") was "
        "deposited into %s before a restart: %s; the message stays in %s "
        "and is tried again next run", ingest_shown(name, shown,
        sizeof(shown)), m->uid, dest->dir, strerror(errno), t->cfg.folder);
      m->stop_run = 1;
      return -1;
    }
  }
  if (done) {
    /* The previous worker died after the file was in place but before it
     * could record it.
     */
    mailoauth_log("ingest %s: UID %" PRIu32 ": %s/%s was deposited before "
      "a restart; not deposited again", t->cfg.name, m->uid, dest->dir,
      ingest_shown(found, shown, sizeof(shown)));
    if (mailoauth_ingest_ledger_append(m->ing, t, m->uid, key, found, 0, 0, 0,
        NULL) < 0) {
      ingest_error(t, "cannot record the deposit of '%s' in the ledger: "
        "%s", shown, strerror(errno));
      m->stop_run = 1;
      return -1;
    }
    snprintf(final, finalsz, "%s", found);
    m->deposited++;
    return 0;
  }

  /* Written first, so that a crash while the helper works leaves a trace
   * to find its file by.
   */
  if (mailoauth_ingest_ledger_append(m->ing, t, m->uid, key, name, 1, time(NULL),
      size, digest) < 0) {
    ingest_error(t, "cannot write the ledger: %s", strerror(errno));
    m->stop_run = 1;
    return -1;
  }

  memset(&req, 0, sizeof(req));
  req.dir = dest->dir;
  req.name = name;
  req.uid = dest->uid;
  req.gid = dest->gid;
  req.mode = INGEST_FILE_MODE;
  req.min_free = t->cfg.min_free;

  memset(&res, 0, sizeof(res));
  if (mailoauth_deposit_client_file(m->ing->deposit_sock, &req, fd,
      INGEST_DEPOSIT_TIMEOUT_MS, &res) < 0) {
    ingest_error(t, "cannot deposit '%s' (UID %" PRIu32 ") into %s: %s; "
      "the message stays in %s and is tried again next run",
      ingest_shown(name, shown, sizeof(shown)), m->uid,
      dest->dir, mailoauth_deposit_describe(&res, desc, sizeof(desc)),
      t->cfg.folder);
    /* Disk full, quota, permissions, a missing directory or a gone helper
     * hit every message alike: stop the run.
     */
    m->stop_run = 1;
    return -1;
  }

  if (mailoauth_ingest_ledger_append(m->ing, t, m->uid, key, res.name, 0, 0, 0,
      NULL) < 0) {
    /* The file is there but not recorded: stop before the after-action,
     * so that at worst it is deposited once more, never lost.
     */
    ingest_error(t, "cannot record the deposit of '%s' in the ledger: %s",
      ingest_shown(res.name, shown, sizeof(shown)), strerror(errno));
    m->stop_run = 1;
    return -1;
  }

  mailoauth_log("ingest %s: UID %" PRIu32 ": deposited %s/%s (%" PRIu64
    " bytes)", t->cfg.name, m->uid, dest->dir,
    ingest_shown(res.name, shown, sizeof(shown)), res.size);
  snprintf(final, finalsz, "%s", res.name);
  m->deposited++;
  return 0;
}

/* tnef=on: each file a winmail.dat carries, deposited like an attachment
 * of its own.
 */
struct ingest_tnef_ctx {
  struct ingest_msg *m;
  unsigned int part;
  unsigned int k;
};

static int ingest_tnef_file(const char *name, int fd, uint64_t size,
    void *arg) {
  struct ingest_tnef_ctx *c = arg;
  struct ingest_msg *m = c->m;
  char safe[MAILOAUTH_NAMES_MAX + 1], want[MAILOAUTH_DEPOSIT_NAME_MAX + 1];
  char final[MAILOAUTH_DEPOSIT_NAME_MAX + 1];
  unsigned char digest[MAILOAUTH_META_SHA256_LEN];
  unsigned int key = INGEST_KEY_TNEF(c->part, c->k);
  const char *done;
  uint64_t hashed = 0;

  /* The decoder's size is the file's; the digest pass counts it again. */
  (void) size;
  c->k++;
  if (mailoauth_names_sanitize(name ? name : "", name ? strlen(name) : 0,
      NULL, safe, sizeof(safe)) < 0 ||
      !ingest_files_match(m->t, safe)) {
    return 0;
  }

  m->wanted++;
  done = mailoauth_ingest_ledger_has(m->t, m->t->uidvalidity, m->uid, key);
  if (done != NULL) {
    m->deposited++;
    snprintf(final, sizeof(final), "%s", done);

  } else {
    ingest_tmpl_name(m, safe, name, "application/octet-stream", key & 0xfff,
      want, sizeof(want));
    if (ingest_deposit_fd(m, key, fd, want, final, sizeof(final)) < 0) {
      m->failed = 1;
      errno = EIO;
      return -1;
    }
  }

  if (m->t->cfg.metadata) {
    if (ingest_hash_fd(fd, digest, &hashed) < 0) {
      m->failed = m->stop_run = 1;
      return -1;
    }
    if (ingest_note_file(m, final, name, "application/octet-stream", hashed,
        digest, 0, 0) < 0) {
      return -1;
    }
  }
  return 0;
}

static int ingest_unpack_tnef(struct ingest_msg *m,
    const struct mailoauth_mime_part *part) {
  struct mailoauth_tnef_limits lim;
  struct ingest_tnef_ctx c;
  unsigned int before = m->wanted, nfiles = 0;

  mailoauth_tnef_limits_init(&lim);
  memset(&c, 0, sizeof(c));
  c.m = m;
  c.part = part->index;

  if (mailoauth_tnef_unpack(m->part_fd, m->ing->tmp_dir, &lim,
      ingest_tnef_file, &c, &nfiles) < 0) {
    if (m->failed) {
      return -1;
    }
    /* Not a TNEF we can read: the sender's file is still worth having as
     * it came.  When unpacking is off altogether (no helper, or no
     * verified sandbox), that was logged once, not for every message.
     */
    int xerrno = errno;
    char shown[INGEST_SHOWN_MAX];

    ingest_shown(m->part_name, shown, sizeof(shown));
    if (xerrno == ESRCH || xerrno == ENOTSUP) {
      mailoauth_trace(trace_channel, 8, "task %s: UID %" PRIu32 ": '%s' "
        "deposited as it is: unpacking is off", m->t->cfg.name, m->uid,
        shown);
    } else if (xerrno == EBADMSG && nfiles > 0) {
      /* Read as far as it goes: what came out is kept, and the file as
       * sent too, for what could not be read.
       */
      mailoauth_log("ingest %s: UID %" PRIu32 ": '%s' cannot be unpacked "
        "whole (damaged): %u file%s taken from it; deposited as it is too",
        m->t->cfg.name, m->uid, shown, nfiles, nfiles == 1 ? "" : "s");
      return 1;
    } else {
      mailoauth_log("ingest %s: UID %" PRIu32 ": '%s' cannot be unpacked "
        "(%s); deposited as it is", m->t->cfg.name, m->uid, shown,
        strerror(xerrno));
    }
    m->wanted = before;
    return 1;
  }

  mailoauth_trace(trace_channel, 8, "task %s: UID %" PRIu32 ": %s carried "
    "%u file%s", m->t->cfg.name, m->uid, m->part_name, nfiles,
    nfiles == 1 ? "" : "s");
  /* The winmail.dat itself counted as wanted; what it carried replaces it. */
  m->wanted--;
  return 0;
}

static int ingest_part_begin(const struct mailoauth_mime_part *part,
    void *arg) {
  struct ingest_msg *m = arg;
  struct ingest_task *t = m->t;
  const char *name, *done;

  if (m->failed) {
    return -1;
  }

  if (part->index == 0 &&
      ingest_route(m, part->message) < 0) {
    return -1;
  }

  /* Leaving a multipart/related shows as the next part at its depth or
   * above.
   */
  if (m->related_depth >= 0 && (int) part->depth <= m->related_depth) {
    m->related_depth = -1;
  }
  if (part->depth < sizeof(m->alt_at)) {
    m->alt_at[part->depth] = part->is_multipart &&
      strcmp(part->content_type, "multipart/alternative") == 0;
  }
  if (part->is_multipart) {
    if (m->related_depth < 0 &&
        strcmp(part->content_type, "multipart/related") == 0) {
      m->related_depth = (int) part->depth;
    }
    return MAILOAUTH_MIME_SKIP;
  }

  /* A forwarded message not marked attachment is part of what the sender
   * wrote: its files are taken by the same rules as the message's own.
   * One marked attachment is a file of its own, the .eml.
   */
  if (part->is_message &&
      part->disposition != MAILOAUTH_MIME_DISP_ATTACHMENT) {
    return MAILOAUTH_MIME_DESCEND;
  }

  name = part->filename;
  if (name == NULL && part->is_message) {
    name = "message.eml";
  } else if (name == NULL &&
      strcmp(part->content_type, "text/calendar") == 0) {
    name = "invite.ics";
  }
  if (mailoauth_names_sanitize(name ? name : "", name ? strlen(name) : 0,
      part->content_type, m->part_name, sizeof(m->part_name)) < 0) {
    return MAILOAUTH_MIME_SKIP;
  }

  if (!ingest_part_wanted(t, part, m->part_name, m->related_depth >= 0,
      part->depth > 0 && part->depth - 1 < sizeof(m->alt_at) &&
        m->alt_at[part->depth - 1],
      m->cids != NULL && mailoauth_mime_cids_has(m->cids, part->content_id))) {
    /* The HTML body is read (not kept) for the cid: references that make
     * later images part of it.
     */
    if (t->cfg.inline_parts == MAILOAUTH_INGEST_INLINE_AUTO &&
        strcmp(part->content_type, "text/html") == 0 &&
        part->disposition != MAILOAUTH_MIME_DISP_ATTACHMENT) {
      if (m->cids == NULL) {
        m->cids = malloc(sizeof(*m->cids));
        if (m->cids == NULL) {
          return MAILOAUTH_MIME_SKIP;
        }
        mailoauth_mime_cids_init(m->cids);
      }
      m->scanning = 1;
      m->scan_index = part->index;
      return MAILOAUTH_MIME_BODY;
    }
    return MAILOAUTH_MIME_SKIP;
  }

  m->wanted++;
  m->part_index = part->index;
  m->part_bytes = 0;
  m->hash_only = 0;
  free(m->orig_name);
  m->orig_name = name ? strdup(name) : NULL;

  done = mailoauth_ingest_ledger_has(t, t->uidvalidity, m->uid, part->index);
  if (done != NULL) {
    mailoauth_trace(trace_channel, 8, "task %s: UID %" PRIu32 " part %u "
      "was deposited before a restart; skipped", t->cfg.name, m->uid,
      part->index);
    m->deposited++;
    if (!t->cfg.metadata) {
      return MAILOAUTH_MIME_SKIP;
    }
    free(m->done_name);
    m->done_name = strdup(done);
    m->hash_only = 1;
  }

  return MAILOAUTH_MIME_BODY;
}

/* The cid: references of an HTML body, read from its decoded file.  A
 * read error only leaves images it shows to be taken as files.
 */
static void ingest_scan_cids(struct ingest_msg *m, int fd) {
  unsigned char buf[16384];
  off_t off = 0;
  ssize_t n;

  while ((n = pread(fd, buf, sizeof(buf), off)) > 0) {
    mailoauth_mime_cids_feed(m->cids, buf, (size_t) n);
    off += n;
  }
  mailoauth_mime_cids_end(m->cids);
}

/* The parser's decoded body of a part asked for.  The digest and the
 * size are this process's own reading of the file, never the parser's.
 */
static int ingest_part_end(const struct mailoauth_mime_part *part,
    unsigned int status, const struct mailoauth_mimeproc_body *body,
    void *arg) {
  struct ingest_msg *m = arg;
  struct ingest_task *t = m->t;
  unsigned char digest[MAILOAUTH_META_SHA256_LEN];
  char want[MAILOAUTH_DEPOSIT_NAME_MAX + 1];
  char final[MAILOAUTH_DEPOSIT_NAME_MAX + 1];
  int res = 0, hash_only = m->hash_only;
  /* Kept, since what could be decoded is often all of it, but not listed
   * as the whole file.
   */
  int incomplete = (status & (MAILOAUTH_MIME_ST_BAD_ENCODING|
    MAILOAUTH_MIME_ST_UNTERMINATED)) != 0;

  if (m->scanning && part->index == m->scan_index) {
    m->scanning = 0;
    if (body->error == 0) {
      ingest_scan_cids(m, body->fd);
    }
    return 0;
  }

  m->hash_only = 0;
  if (part->index != m->part_index) {
    return 0;
  }

  if (m->input_cut && incomplete) {
    /* The rest comes with the next fetch of the whole message. */
    m->failed = 1;
    return 0;
  }

  if (body->error != 0) {
    /* A parser that broke is reported once, by ingest_parse(). */
    if (body->error != EPIPE && body->error != EPROTO &&
        body->error != ETIMEDOUT) {
      ingest_error(t, "the parser cannot write a temporary file in %s: %s",
        m->ing->tmp_dir, strerror(body->error));
    }
    m->failed = m->stop_run = 1;
    return -1;
  }

  memset(digest, 0, sizeof(digest));
  m->part_bytes = body->size;
  if (t->cfg.metadata) {
    uint64_t hashed = 0;

    if (ingest_hash_fd(body->fd, digest, &hashed) < 0 ||
        hashed != body->size) {
      ingest_error(t, "UID %" PRIu32 ": cannot read back the decoded part "
        "'%s' (%s)", m->uid, m->part_name, hashed != body->size ?
        "its size changed" : strerror(errno));
      m->failed = m->stop_run = 1;
      return -1;
    }
  }

  if (hash_only) {
    return ingest_note_file(m, m->done_name, m->orig_name,
      part->content_type, m->part_bytes, digest, 0, incomplete);
  }

  m->part_fd = body->fd;
  if (status & (MAILOAUTH_MIME_ST_TRUNCATED|MAILOAUTH_MIME_ST_ABORTED)) {
    /* A part cut at a limit is not the file that was sent. */
    char shown[INGEST_SHOWN_MAX];

    ingest_error(t, "UID %" PRIu32 ": attachment '%s' exceeds the parser's "
      "limits; not deposited", m->uid,
      ingest_shown(m->part_name, shown, sizeof(shown)));
    m->failed = 1;
    res = -1;

  } else {
    int unpacked = 1;

    if (t->cfg.tnef && ingest_is_tnef(part)) {
      unpacked = ingest_unpack_tnef(m, part);
      if (unpacked < 0) {
        res = -1;
      }
    }

    if (unpacked == 1) {
      ingest_tmpl_name(m, m->part_name, m->orig_name, part->content_type,
        part->index, want, sizeof(want));
      if (ingest_deposit_fd(m, part->index, m->part_fd, want, final,
          sizeof(final)) < 0 ||
          ingest_note_file(m, final, m->orig_name, part->content_type,
            m->part_bytes, digest, 0, incomplete) < 0) {
        m->failed = 1;
        res = -1;

      } else if (status & (MAILOAUTH_MIME_ST_BAD_ENCODING|
          MAILOAUTH_MIME_ST_UNTERMINATED)) {
        /* What could be decoded is kept (it is often all of it), but the
         * recipient should know to check it.
         */
        char shown[INGEST_SHOWN_MAX];

        mailoauth_log("ingest %s: UID %" PRIu32 ": %s/%s may be incomplete: "
          "%s; deposited as received", t->cfg.name, m->uid, m->dest->dir,
          ingest_shown(final, shown, sizeof(shown)), (status & MAILOAUTH_MIME_ST_BAD_ENCODING) ?
          "its base64 or uuencode encoding is broken" :
          "the message ends before its MIME parts are closed");
      }
    }
  }

  /* The client closes it. */
  m->part_fd = -1;
  return res;
}

static void ingest_mime_error(int code, const struct mailoauth_mime_part *part,
    void *arg) {
  struct ingest_msg *m = arg;

  (void) part;
  mailoauth_trace(trace_channel, 5, "task %s: UID %" PRIu32 ": %s",
    m->t->cfg.name, m->uid, mailoauth_mime_strerror(code));

  /* Warnings (>= 100) leave the message readable; our own stop (ABORTED)
   * has been logged by whoever stopped.
   */
  if (code < 100 && code != MAILOAUTH_MIME_E_ABORTED && m->mime_error == 0) {
    m->mime_error = code;
  }
}

/* The message's own name: its subject, else its UID. */
static void ingest_message_name(struct ingest_msg *m, const char *ext,
    const char *content_type, unsigned int key, char *out, size_t outsz) {
  char base[MAILOAUTH_NAMES_MAX + 64], safe[MAILOAUTH_NAMES_MAX + 1];

  if (m->subject != NULL && m->subject[0] != '\0') {
    char *p;

    snprintf(base, sizeof(base), "%.*s%s", MAILOAUTH_NAMES_MAX,
      m->subject, ext);
    /* A subject is text, not a path: "Order 12/2024" keeps its "Order". */
    for (p = base; *p != '\0'; p++) {
      if (*p == '/' || *p == '\\') {
        *p = '_';
      }
    }
  } else {
    snprintf(base, sizeof(base), "message-%" PRIu32 "%s", m->uid, ext);
  }
  if (mailoauth_names_sanitize(base, strlen(base), content_type, safe,
      sizeof(safe)) < 0) {
    snprintf(safe, sizeof(safe), "message-%" PRIu32 "%s", m->uid, ext);
  }
  ingest_tmpl_name(m, safe, base, content_type, key & 0xff, out, outsz);
}

/* eml=on: the message as fetched, beside its attachments. */
static int ingest_save_message(struct ingest_msg *m, int fd) {
  unsigned char digest[MAILOAUTH_META_SHA256_LEN];
  char want[MAILOAUTH_DEPOSIT_NAME_MAX + 1];
  char final[MAILOAUTH_DEPOSIT_NAME_MAX + 1];
  const char *done;
  uint64_t size = 0;

  m->wanted++;
  done = mailoauth_ingest_ledger_has(m->t, m->t->uidvalidity, m->uid, INGEST_KEY_EML);
  if (done != NULL) {
    m->deposited++;
    snprintf(final, sizeof(final), "%s", done);
  } else {
    ingest_message_name(m, ".eml", "message/rfc822", INGEST_KEY_EML, want,
      sizeof(want));
    if (ingest_deposit_fd(m, INGEST_KEY_EML, fd, want, final,
        sizeof(final)) < 0) {
      return -1;
    }
  }

  if (m->t->cfg.metadata) {
    if (ingest_hash_fd(fd, digest, &size) < 0) {
      ingest_error(m->t, "cannot read back UID %" PRIu32 ": %s", m->uid,
        strerror(errno));
      m->stop_run = 1;
      return -1;
    }
    return ingest_note_file(m, final, NULL, "message/rfc822", size, digest,
      1, 0);
  }
  return 0;
}

/* metadata=on: written last, so that it lists every file. */
static int ingest_save_metadata(struct ingest_msg *m) {
  struct ingest_task *t = m->t;
  struct mailoauth_meta meta;
  char want[MAILOAUTH_DEPOSIT_NAME_MAX + 1];
  char final[MAILOAUTH_DEPOSIT_NAME_MAX + 1];
  char *doc;
  size_t len = 0;
  int fd, res;

  if (m->nfiles == 0 ||
      mailoauth_ingest_ledger_has(t, t->uidvalidity, m->uid, INGEST_KEY_META) != NULL) {
    return 0;
  }

  memset(&meta, 0, sizeof(meta));
  meta.task = t->cfg.name;
  meta.account = t->cfg.account;
  meta.folder = t->cfg.folder;
  meta.uidvalidity = t->uidvalidity;
  meta.uid = m->uid;
  meta.message_id = m->message_id;
  meta.from = m->from;
  meta.from_addr = m->from_addr;
  meta.recipients = m->recipients;
  meta.subject = m->subject;
  meta.date = m->date;
  meta.taken = time(NULL);
  meta.files = m->files;
  meta.nfiles = m->nfiles;

  doc = mailoauth_meta_json(&meta, &len);
  if (doc == NULL) {
    ingest_error(t, "cannot build the metadata of UID %" PRIu32 ": %s",
      m->uid, strerror(errno));
    m->stop_run = 1;
    return -1;
  }

  fd = ingest_tmpfile(m->ing);
  if (fd >= 0 && mailoauth_io_write_all(fd, doc, len) < 0) {
    (void) close(fd);
    fd = -1;
  }
  free(doc);
  if (fd < 0) {
    ingest_error(t, "cannot write a temporary file in %s: %s",
      m->ing->tmp_dir, strerror(errno));
    m->stop_run = 1;
    return -1;
  }

  ingest_message_name(m, ".json", "application/json", INGEST_KEY_META, want,
    sizeof(want));
  res = ingest_deposit_fd(m, INGEST_KEY_META, fd, want, final,
    sizeof(final));
  (void) close(fd);
  return res;
}

static void ingest_msg_clear(struct ingest_msg *m) {
  free(m->from);
  free(m->from_addr);
  free(m->recipients);
  free(m->subject);
  free(m->date);
  free(m->message_id);
  free(m->orig_name);
  free(m->done_name);
  free(m->cids);
  mailoauth_meta_free_files(m->files, m->nfiles);
  memset(m, 0, sizeof(*m));
  m->part_fd = -1;
}

/* The fetched message, read-only for the parser. */
static int ingest_reopen_rdonly(int fd) {
  char path[64];
  int ro;

  snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
  ro = open(path, O_RDONLY|O_CLOEXEC);
  return ro >= 0 ? ro : dup(fd);
}

/* Has the parser process parse the fetched message in fd; deposits its
 * wanted parts.  0, or -1 (m says why).
 */
/* Hands the message on msg_fd (a file, or a pipe fed while fetching) to
 * the parser process; NULL when there is none (the message stays).
 */
static struct mailoauth_mimeproc_run *ingest_parse_begin(struct ingest_msg *m,
    int msg_fd, int *sock_out) {
  static const struct mailoauth_mimeproc_callbacks cb = {
    ingest_part_begin, ingest_part_end, ingest_mime_error, NULL
  };
  struct mailoauth_ingest *ing = m->ing;
  struct ingest_task *t = m->t;
  struct mailoauth_mimeproc_run *run;
  int sock, dirfd;

  sock = ing->parser ? ing->parser(ing->parser_broken, ing->parser_arg) :
    -1;
  ing->parser_broken = 0;
  if (sock < 0) {
    ingest_error(t, "UID %" PRIu32 " not read: no parser process; it "
      "stays for the next run", m->uid);
    m->failed = m->stop_run = 1;
    return NULL;
  }

  dirfd = open(ing->tmp_dir, O_RDONLY|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC);
  if (dirfd < 0) {
    ingest_error(t, "cannot open %s: %s", ing->tmp_dir, strerror(errno));
    m->failed = m->stop_run = 1;
    return NULL;
  }

  m->cb = cb;
  m->cb.arg = m;
  run = mailoauth_mimeproc_begin(sock, msg_fd, dirfd, &m->cb);
  (void) close(dirfd);
  if (run == NULL) {
    ingest_error(t, "UID %" PRIu32 " not read: %s; it stays for the next "
      "run", m->uid, strerror(errno));
    m->failed = m->stop_run = 1;
    return NULL;
  }
  if (sock_out != NULL) {
    *sock_out = sock;
  }
  return run;
}

static int ingest_parse_end(struct ingest_msg *m,
    struct mailoauth_mimeproc_run *run) {
  struct mailoauth_ingest *ing = m->ing;
  struct ingest_task *t = m->t;
  int res, code = MAILOAUTH_MIME_OK;

  res = mailoauth_mimeproc_finish(run, &code);
  free(m->orig_name);
  m->orig_name = NULL;
  m->part_fd = -1;

  if (res == MAILOAUTH_MIMEPROC_BROKEN) {
    int xerrno = errno;

    /* Whatever it said of this message is not to be trusted, and the
     * process is replaced.  The message stays where it is, unless it is
     * the one that keeps breaking it.
     */
    ing->parser_broken = 1;
    if (t->broke_uid == m->uid) {
      t->broke_count++;
    } else {
      t->broke_uid = m->uid;
      t->broke_count = 1;
    }
    m->failed = 1;
    if (t->broke_count >= INGEST_PARSER_TRIES) {
      mailoauth_log("ingest %s: UID %" PRIu32 ": the parser %s (%s), %u "
        "times on this message; it is handled as failed=", t->cfg.name,
        m->uid, xerrno == EPROTO ? "sent what it may not" : "died",
        strerror(xerrno), t->broke_count);
      t->broke_count = 0;
    } else {
      mailoauth_log("ingest %s: UID %" PRIu32 ": the parser %s (%s); it is "
        "restarted, the message stays for the next run", t->cfg.name,
        m->uid, xerrno == EPROTO ? "sent what it may not" : "died",
        strerror(xerrno));
      m->stop_run = 1;
    }
    return -1;
  }

  if (res != MAILOAUTH_MIMEPROC_OK) {
    if (MAILOAUTH_MIME_IS_FATAL(code) && code != MAILOAUTH_MIME_E_ABORTED &&
        m->mime_error == 0) {
      m->mime_error = code;
    }
    return -1;
  }
  return 0;
}

static int ingest_parse(struct ingest_msg *m, int fd) {
  struct mailoauth_mimeproc_run *run;
  int ro;

  ro = ingest_reopen_rdonly(fd);
  if (ro < 0) {
    ingest_error(m->t, "cannot read a temporary file: %s", strerror(errno));
    m->failed = m->stop_run = 1;
    return -1;
  }
  run = ingest_parse_begin(m, ro, NULL);
  (void) close(ro);
  if (run == NULL) {
    return -1;
  }
  return ingest_parse_end(m, run);
}

/* Parsing while fetching: with no copy of the raw message wanted (eml=off)
 * the fetched bytes go through a pipe straight to the parser, which
 * decodes them as they come, so the raw message is never written and
 * decoding overlaps the transfer.  A full pipe means the parser waits for
 * an answer or is busy: its messages are handled then.
 */
struct ingest_stream {
  struct ingest_msg *m;
  struct mailoauth_mimeproc_run *run;
  int sock;                     /* the parser's, for poll() */
  int pipe_w;                   /* -1 before the first bytes */
  int done;                     /* the parser has finished: the rest of
                                 * the message is read and dropped */
  int failed;                   /* no parser, or it broke while fed */
};

static int ingest_stream_start(struct ingest_stream *st) {
  int p[2];

  if (pipe2(p, O_CLOEXEC) < 0) {
    ingest_error(st->m->t, "cannot make a pipe: %s", strerror(errno));
    st->m->failed = st->m->stop_run = 1;
    return -1;
  }
  (void) fcntl(p[1], F_SETFL, O_NONBLOCK);
  st->run = ingest_parse_begin(st->m, p[0], &st->sock);
  (void) close(p[0]);
  if (st->run == NULL) {
    (void) close(p[1]);
    return -1;
  }
  st->pipe_w = p[1];
  return 0;
}

static int ingest_stream_sink(const char *data, size_t len, void *arg) {
  struct ingest_stream *st = arg;
  long quiet_ms = 0;

  if (st->failed) {
    return -1;
  }
  if (st->pipe_w < 0 && st->run == NULL && ingest_stream_start(st) < 0) {
    st->failed = 1;
    return -1;
  }

  while (len > 0 && !st->done) {
    struct pollfd p[2];
    ssize_t n = write(st->pipe_w, data, len);
    int k;

    if (n > 0) {
      data += n;
      len -= (size_t) n;
      quiet_ms = 0;
      continue;
    }
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0 && errno == EPIPE) {
      /* The parser stopped reading: its answer says why. */
      st->done = 1;
      break;
    }
    if (n < 0 && errno != EAGAIN) {
      st->failed = 1;
      return -1;
    }

    p[0].fd = st->pipe_w;
    p[0].events = POLLOUT;
    p[0].revents = 0;
    p[1].fd = st->sock;
    p[1].events = POLLIN;
    p[1].revents = 0;
    k = poll(p, 2, MAILOAUTH_YIELD_SLICE_MS);
    if (k < 0 && errno != EINTR) {
      st->failed = 1;
      return -1;
    }
    if (k == 0) {
      quiet_ms += MAILOAUTH_YIELD_SLICE_MS;
      if (quiet_ms > INGEST_STREAM_QUIET_MS) {
        /* Neither reading nor saying anything: it is broken. */
        st->failed = 1;
        return -1;
      }
      mailoauth_yield();
      continue;
    }
    if (p[1].revents != 0) {
      k = mailoauth_mimeproc_pump(st->run, 0);
      if (k < 0) {
        st->failed = 1;
        return -1;
      }
      if (k == 0) {
        st->done = 1;
      }
      quiet_ms = 0;
    }
  }
  return 0;
}

/* Fetches and parses UID at once; the parse's result as ingest_parse()
 * gives it, or -2 with *st the fetch's failure (nothing parsed).
 */
static int ingest_fetch_parse(struct ingest_msg *m,
    struct mailoauth_imap_fetched *fetched, mailoauth_imap_status_t *st) {
  struct ingest_task *t = m->t;
  struct ingest_stream stream;

  memset(&stream, 0, sizeof(stream));
  stream.m = m;
  stream.pipe_w = -1;
  stream.sock = -1;

  memset(fetched, 0, sizeof(*fetched));
  *st = mailoauth_imap_fetch(t->imap, m->uid, t->cfg.max_size,
    ingest_stream_sink, &stream, fetched);

  if (stream.run == NULL) {
    /* No byte reached the parser: gone, too big, or the fetch failed
     * before the body.
     */
    if (*st == MAILOAUTH_IMAP_OK) {
      *st = MAILOAUTH_IMAP_TEMPFAIL;
    }
    return -2;
  }

  if (*st != MAILOAUTH_IMAP_OK && !stream.done && !stream.failed) {
    /* The message is cut short by the connection, not by its sender:
     * what the parser makes of the end is not to be deposited.
     */
    m->input_cut = 1;
  }
  (void) close(stream.pipe_w);
  return ingest_parse_end(m, stream.run);
}

/* IMAP
 */

static mailoauth_imap_status_t ingest_action(struct ingest_task *t,
    uint32_t uid, int action, const char *folder) {
  switch (action) {
    case MAILOAUTH_INGEST_AFTER_SEEN:
      return mailoauth_imap_set_seen(t->imap, uid, 1);

    case MAILOAUTH_INGEST_AFTER_DELETE:
      return mailoauth_imap_delete(t->imap, uid);

    case MAILOAUTH_INGEST_AFTER_MOVE:
      return mailoauth_imap_move(t->imap, uid, folder, 1, NULL);

    case MAILOAUTH_INGEST_AFTER_LEAVE:
    default:
      /* Fetched with BODY.PEEK[]: the message is as it was found. */
      return MAILOAUTH_IMAP_OK;
  }
}

#ifdef MAILOAUTH_CRASHPOINTS
/* The crash tests' point after the flag, move or delete (crashpoint.h). */
static mailoauth_imap_status_t ingest_action_crashpoint(struct ingest_task *t,
    uint32_t uid, int action, const char *folder) {
  mailoauth_imap_status_t st = ingest_action(t, uid, action, folder);

  MAILOAUTH_CRASHPOINT("after-action");
  return st;
}
# define ingest_action ingest_action_crashpoint
#endif

static char *ingest_imap_url(const char *base, const char *folder) {
  char *esc, *url;
  size_t len;

  /* imap.c URL-decodes the path: a folder with '%', '#' or '?' must reach
   * it escaped; '/' stays a hierarchy separator.
   */
  esc = curl_easy_escape(NULL, folder, 0);
  if (esc == NULL) {
    return NULL;
  }

  len = strlen(base) + strlen(esc) * 3 + 2;
  url = malloc(len);
  if (url != NULL) {
    const char *s;
    char *d;

    snprintf(url, len, "%s%s", base, base[strlen(base) - 1] == '/' ? "" :
      "/");
    d = url + strlen(url);
    for (s = esc; *s != '\0'; s++) {
      if (strncasecmp(s, "%2F", 3) == 0) {
        *d++ = '/';
        s += 2;
      } else {
        *d++ = *s;
      }
    }
    *d = '\0';
  }

  curl_free(esc);
  return url;
}

static int ingest_probe_write(const char *data, size_t len, void *arg) {
  const int *fd = arg;

  return mailoauth_io_write_all(*fd, data, len);
}

/* The header alone decides: the top-level part's header goes through the
 * same route check as a whole message, and the parse stops there.
 */
static int ingest_probe_begin(const struct mailoauth_mime_part *part,
    void *arg) {
  struct ingest_msg *m = arg;

  if (part->index == 0) {
    (void) ingest_route(m, part->message);
  }
  return -1;
}

static int ingest_probe_end(const struct mailoauth_mime_part *part,
    unsigned int status, const struct mailoauth_mimeproc_body *body,
    void *arg) {
  (void) part;
  (void) status;
  (void) body;
  (void) arg;
  return 0;
}

static void ingest_probe_error(int code,
    const struct mailoauth_mime_part *part, void *arg) {
  (void) code;
  (void) part;
  (void) arg;
}

/* A header too large for this is downloaded whole and decided on then. */
#define INGEST_PROBE_MAX        (256 * 1024)

/* With from=/to=/subject=: whether the task may take message uid, from
 * its header alone (BODY.PEEK[HEADER]), parsed in the parser process like
 * any mail.  0 when it surely does not, 1 when it may (or the header could
 * not be had: the whole message decides then), -1 when the message is
 * gone.
 */
static int ingest_probe(struct mailoauth_ingest *ing, struct ingest_task *t,
    uint32_t uid) {
  struct mailoauth_mimeproc_callbacks cb;
  struct ingest_msg m;
  mailoauth_imap_status_t st;
  int fd, ro = -1, dirfd = -1, sock, res, code = MAILOAUTH_MIME_OK;
  int may = 1;

  if (t->cfg.filter.from[0] == NULL && t->cfg.filter.to[0] == NULL &&
      t->cfg.filter.subject == NULL && t->cfg.filter.auth == 0) {
    return 1;
  }

  fd = ingest_tmpfile(ing);
  if (fd < 0) {
    return 1;
  }
  st = mailoauth_imap_fetch_header(t->imap, uid, INGEST_PROBE_MAX,
    ingest_probe_write, &fd);
  if (st == MAILOAUTH_IMAP_GONE) {
    (void) close(fd);
    return -1;
  }
  if (st != MAILOAUTH_IMAP_OK) {
    mailoauth_trace(trace_channel, 5, "task %s: UID %" PRIu32 ": no header "
      "alone (%s): the whole message decides", t->cfg.name, uid,
      mailoauth_imap_reply(t->imap));
    (void) close(fd);
    return 1;
  }

  sock = ing->parser ? ing->parser(ing->parser_broken, ing->parser_arg) :
    -1;
  ing->parser_broken = 0;
  dirfd = open(ing->tmp_dir, O_RDONLY|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC);
  ro = ingest_reopen_rdonly(fd);
  if (sock >= 0 && dirfd >= 0 && ro >= 0) {
    memset(&m, 0, sizeof(m));
    m.part_fd = -1;
    m.ing = ing;
    m.t = t;
    m.uid = uid;
    m.related_depth = -1;
    m.dest = &t->dests[0];

    memset(&cb, 0, sizeof(cb));
    cb.part_begin = ingest_probe_begin;
    cb.part_end = ingest_probe_end;
    cb.error = ingest_probe_error;
    cb.arg = &m;
    res = mailoauth_mimeproc_parse(sock, ro, dirfd, &cb, &code);
    if (res == MAILOAUTH_MIMEPROC_BROKEN) {
      ing->parser_broken = 1;
    } else if (m.filtered_out && !m.failed) {
      may = 0;
    }
    ingest_msg_clear(&m);
  }

  if (ro >= 0) {
    (void) close(ro);
  }
  if (dirfd >= 0) {
    (void) close(dirfd);
  }
  (void) close(fd);
  return may;
}

/* Returns 1 when the run should go on with the next message, 0 when it
 * must stop (the message stays for the next run).
 */
static void ingest_msg_init(struct ingest_msg *m,
    struct mailoauth_ingest *ing, struct ingest_task *t, uint32_t uid) {
  memset(m, 0, sizeof(*m));
  m->part_fd = -1;
  m->ing = ing;
  m->t = t;
  m->uid = uid;
  m->related_depth = -1;
  m->dest = &t->dests[0];
}

static int ingest_message(struct mailoauth_ingest *ing, struct ingest_task *t,
    uint32_t uid) {
  struct mailoauth_imap_fetched fetched;
  struct ingest_msg m;
  mailoauth_imap_status_t st;
  int fd, res, action, stop_run, failed;
  unsigned int wanted, deposited;
  const char *folder;

  /* Mail the task will not take is neither downloaded nor touched. */
  res = ingest_probe(ing, t, uid);
  if (res <= 0) {
    mailoauth_trace(trace_channel, res < 0 ? 5 : 8, "task %s: UID %" PRIu32
      " %s", t->cfg.name, uid, res < 0 ? "is gone" :
      "does not match from=/to=/subject= (header only)");
    return 1;
  }

  ingest_msg_init(&m, ing, t, uid);

  if (!t->cfg.save_message) {
    /* No raw copy wanted: parsed while it arrives. */
    fd = -1;
    res = ingest_fetch_parse(&m, &fetched, &st);
    if (st == MAILOAUTH_IMAP_TEMPFAIL &&
        mailoauth_imap_token_expired(t->imap)) {
      /* The session ended with its token mid-message: the parts that
       * came whole are in the ledger; the message is fetched whole once
       * more with the fresh token the session took.
       */
      mailoauth_trace(trace_channel, 5, "task %s: UID %" PRIu32 ": the "
        "session ended with its token; fetching again", t->cfg.name, uid);
      ingest_msg_clear(&m);
      ingest_msg_init(&m, ing, t, uid);
      res = ingest_fetch_parse(&m, &fetched, &st);
    }
    if (res != -2 && st != MAILOAUTH_IMAP_OK) {
      /* Cut by the connection: nothing of it passes for done, and it
       * stays where it is for the next run.
       */
      m.failed = m.stop_run = 1;
      ingest_error(t, "cannot fetch UID %" PRIu32 " from %s: %s (%s)", uid,
        t->cfg.folder, mailoauth_imap_status_name(st),
        mailoauth_imap_reply(t->imap));
    }
    if (res == -2) {
      ingest_msg_clear(&m);
      goto fetch_failed;
    }
    goto parsed;
  }

  fd = ingest_tmpfile(ing);
  if (fd < 0) {
    ingest_error(t, "cannot create a temporary file in %s: %s", ing->tmp_dir,
      strerror(errno));
    return 0;
  }

  memset(&fetched, 0, sizeof(fetched));
  st = mailoauth_imap_fetch_fd(t->imap, uid, t->cfg.max_size, fd, &fetched);
  if (st == MAILOAUTH_IMAP_TEMPFAIL && mailoauth_imap_token_expired(t->imap) &&
      ftruncate(fd, 0) == 0 && lseek(fd, 0, SEEK_SET) == 0) {
    /* The session ended with its token mid-message: the bytes so far are
     * thrown away and the message fetched whole once more, with the fresh
     * token the session took.
     */
    mailoauth_trace(trace_channel, 5, "task %s: UID %" PRIu32 ": the "
      "session ended with its token; fetching again", t->cfg.name, uid);
    memset(&fetched, 0, sizeof(fetched));
    st = mailoauth_imap_fetch_fd(t->imap, uid, t->cfg.max_size, fd,
      &fetched);
  }
fetch_failed:
  if (st == MAILOAUTH_IMAP_GONE) {
    /* Deleted or moved meanwhile (by us before a crash, or by someone). */
    if (fd >= 0) {
      (void) close(fd);
    }
    mailoauth_trace(trace_channel, 5, "task %s: UID %" PRIu32 " is gone",
      t->cfg.name, uid);
    return 1;
  }

  if (st == MAILOAUTH_IMAP_TOOBIG) {
    if (fd >= 0) {
      (void) close(fd);
    }
    mailoauth_log("ingest %s: UID %" PRIu32 " is larger than max-size "
      "(%" PRIu64 " bytes); not taken", t->cfg.name, uid, t->cfg.max_size);
    st = ingest_action(t, uid, t->cfg.failed, t->cfg.failed_folder);
    return st == MAILOAUTH_IMAP_OK || st == MAILOAUTH_IMAP_GONE;
  }

  if (st != MAILOAUTH_IMAP_OK) {
    if (fd >= 0) {
      (void) close(fd);
    }
    ingest_error(t, "cannot fetch UID %" PRIu32 " from %s: %s (%s)", uid,
      t->cfg.folder, mailoauth_imap_status_name(st),
      mailoauth_imap_reply(t->imap));
    return 0;
  }

  res = ingest_parse(&m, fd);

parsed:
  if (m.filtered_out) {
    /* Not addressed to this task: leave it exactly as it was. */
    if (fd >= 0) {
      (void) close(fd);
    }
    ingest_msg_clear(&m);
    mailoauth_trace(trace_channel, 8, "task %s: UID %" PRIu32 " does not "
      "match from=/to=/subject=", t->cfg.name, uid);
    return 1;
  }

  /* The message itself and the metadata come after the attachments, and
   * only when they all made it: a failed message is tried again whole.
   */
  if (!m.failed && res == 0 && t->cfg.save_message &&
      ingest_save_message(&m, fd) < 0) {
    m.failed = 1;
  }
  if (!m.failed && res == 0 && t->cfg.metadata &&
      ingest_save_metadata(&m) < 0) {
    m.failed = 1;
  }
  if (fd >= 0) {
    (void) close(fd);
  }

  if (!m.failed && res < 0 && m.mime_error != 0) {
    /* The rest of the message was not read: it must not pass for done. */
    mailoauth_log("ingest %s: UID %" PRIu32 ": %s; %u file%s taken before "
      "that, the rest is not; the message is handled as failed=",
      t->cfg.name, uid, mailoauth_mime_strerror(m.mime_error), m.deposited,
      m.deposited == 1 ? "" : "s");
    m.failed = 1;
  }

  stop_run = m.stop_run;
  failed = m.failed;
  wanted = m.wanted;
  deposited = m.deposited;
  ingest_msg_clear(&m);

  if (failed || (res < 0 && wanted > deposited)) {
    /* Left as it was found (BODY.PEEK[]), to be tried again. */
    if (stop_run) {
      return 0;
    }
    /* A message whose part cannot be taken (limits): failed= applies. */
    action = t->cfg.failed;
    folder = t->cfg.failed_folder;

  } else if (wanted == 0) {
    mailoauth_log("ingest %s: UID %" PRIu32 " has no wanted attachment",
      t->cfg.name, uid);
    action = t->cfg.failed;
    folder = t->cfg.failed_folder;

  } else {
    action = t->cfg.after;
    folder = t->cfg.after_folder;
  }

  st = ingest_action(t, uid, action, folder);
  if (st != MAILOAUTH_IMAP_OK && st != MAILOAUTH_IMAP_GONE) {
    /* The files are deposited and recorded: the next run skips them and
     * only repeats the action.
     */
    ingest_error(t, "UID %" PRIu32 ": after-action failed: %s (%s)", uid,
      mailoauth_imap_status_name(st), mailoauth_imap_reply(t->imap));
    return 0;
  }

  t->messages++;
  t->bytes += fetched.bytes;
  return 1;
}

static int ingest_get_token(struct mailoauth_ingest *ing,
    struct ingest_task *t, time_t now, int invalidate) {
  struct mailoauth_tokens *tok;
  mailoauth_oauth_class_t cls;
  const char *token;

  tok = mailoauth_registry_tokens(ing->reg, t->cfg.account);
  if (tok == NULL) {
    ingest_error(t, "account '%s' is not ready (see its start-up line)",
      t->cfg.account);
    return -1;
  }

  if (invalidate) {
    mailoauth_tokens_invalidate(tok);
  }

  /* TRANSIENT and REAUTH: the token code has logged why; try next run. */
  token = mailoauth_tokens_get(tok, now, &cls);
  if (token == NULL) {
    return -1;
  }

  if (mailoauth_imap_set_token(t->imap, token) < 0) {
    return -1;
  }

  /* So that the session logs in again before Exchange ends it. */
  {
    struct mailoauth_tokens_info info;

    mailoauth_tokens_info(tok, now, &info);
    mailoauth_imap_set_token_expiry(t->imap, info.access_expires);
  }
  return 0;
}

/* The IMAP session's token is about to expire, or the server said it has. */
static int ingest_token_source(struct mailoauth_imap *s, int force,
    void *arg) {
  struct mailoauth_ingest *ing = arg;
  size_t i;

  for (i = 0; i < ing->ntasks; i++) {
    if (ing->tasks[i].imap == s) {
      return ingest_get_token(ing, &ing->tasks[i], time(NULL), force);
    }
  }
  return -1;
}

static int ingest_open(struct mailoauth_ingest *ing, struct ingest_task *t) {
  const struct mailoauth_account *acct;
  char *url;
  size_t i;

  if (t->imap != NULL) {
    return 0;
  }

  /* Tasks on the same folder of one account share a session (one login,
   * its connections): they run one after the other, each with its own
   * place in the folder.
   */
  for (i = 0; i < ing->ntasks; i++) {
    const struct ingest_task *u = &ing->tasks[i];

    if (u != t && u->imap != NULL &&
        strcmp(u->cfg.account, t->cfg.account) == 0 &&
        strcmp(u->cfg.folder, t->cfg.folder) == 0) {
      t->imap = u->imap;
      return 0;
    }
  }

  acct = mailoauth_registry_account(ing->reg, t->cfg.account);
  if (acct == NULL || acct->imap_url == NULL) {
    ingest_error(t, "account '%s' is unknown", t->cfg.account);
    return -1;
  }

  url = ingest_imap_url(acct->imap_url, t->cfg.folder);
  if (url == NULL) {
    return -1;
  }

  t->imap = mailoauth_imap_create(url, acct->mailbox, acct->oauth.ca_file);
  if (t->imap == NULL) {
    ingest_error(t, "cannot use IMAP URL '%s': %s", url, strerror(errno));
  } else {
    mailoauth_imap_set_token_source(t->imap, ingest_token_source, ing);
  }
  free(url);
  return t->imap ? 0 : -1;
}

/* A worker killed while its helper was writing leaves a hidden temporary
 * file; no deposit of this task is under way now, so any of ours found in
 * its directories is such a leftover.
 */
static void ingest_cleanup(struct mailoauth_ingest *ing,
    struct ingest_task *t) {
  unsigned int depth = 0;
  const char *p;
  size_t i;

  for (p = t->cfg.name_tmpl; p != NULL && *p != '\0'; p++) {
    if (*p == '/' && depth < MAILOAUTH_DEPOSIT_MAX_DEPTH) {
      depth++;
    }
  }

  for (i = 0; i < t->ndests; i++) {
    struct ingest_dest *d = &t->dests[i];
    struct mailoauth_deposit_request req;
    struct mailoauth_deposit_result res;
    char desc[256];

    if (d->cleaned) {
      continue;
    }

    memset(&req, 0, sizeof(req));
    req.dir = d->dir;
    req.uid = d->uid;
    req.gid = d->gid;
    req.max_age = 0;
    req.depth = depth;
    memset(&res, 0, sizeof(res));
    if (mailoauth_deposit_client_cleanup(ing->deposit_sock, &req,
        INGEST_DEPOSIT_TIMEOUT_MS, &res) == 0) {
      d->cleaned = 1;
      if (res.removed > 0) {
        mailoauth_log("ingest %s: removed %u unfinished temporary file%s "
          "from %s", t->cfg.name, res.removed, res.removed == 1 ? "" : "s",
          d->dir);
      }
    } else {
      mailoauth_trace(trace_channel, 3, "task %s: cleanup of %s failed: %s",
        t->cfg.name, d->dir,
        mailoauth_deposit_describe(&res, desc, sizeof(desc)));
    }
  }
}

static void ingest_run(struct mailoauth_ingest *ing, struct ingest_task *t,
    time_t now) {
  struct mailoauth_imap_mailbox mb;
  mailoauth_imap_status_t st;
  uint32_t uids[INGEST_SEARCH_BATCH];
  size_t count, i, taken = 0;
  int retried = 0;

  if (ingest_open(ing, t) < 0 ||
      ingest_get_token(ing, t, now, 0) < 0) {
    return;
  }

  for (;;) {
    memset(&mb, 0, sizeof(mb));
    st = mailoauth_imap_select(t->imap, &mb);
    if (st == MAILOAUTH_IMAP_AUTHFAIL && !retried) {
      /* The token was refused: one fresh token, on a new connection. */
      retried = 1;
      mailoauth_imap_reconnect(t->imap);
      if (ingest_get_token(ing, t, now, 1) < 0) {
        return;
      }
      continue;
    }
    break;
  }

  if (st != MAILOAUTH_IMAP_OK) {
    const char *hint = mailoauth_imap_hint(t->imap);

    ingest_error(t, "cannot open folder %s: %s (%s)%s%s", t->cfg.folder,
      mailoauth_imap_status_name(st), mailoauth_imap_reply(t->imap),
      hint ? "; " : "", hint ? hint : "");
    if (st == MAILOAUTH_IMAP_AUTHFAIL) {
      mailoauth_imap_reconnect(t->imap);
    }
    return;
  }

  ingest_cleanup(ing, t);

  if (mailoauth_ingest_ledger_load(ing, t) < 0) {
    ingest_error(t, "cannot read the ledger: %s", strerror(errno));
    return;
  }

  if (t->uidvalidity != mb.uidvalidity) {
    if (t->uidvalidity != 0 || t->next_uid == 0) {
      /* UIDs mean other messages now: taking everything again would
       * duplicate every file, so only mail arriving from now on counts.
       */
      mailoauth_log("ingest %s: folder %s was recreated (UIDVALIDITY %"
        PRIu32 " -> %" PRIu32 "); taking only new mail from UID %" PRIu32,
        t->cfg.name, t->cfg.folder, t->uidvalidity, mb.uidvalidity,
        mb.uidnext);
      t->next_uid = mb.uidnext ? mb.uidnext : 1;
    } else {
      /* The first run takes the mail already waiting. */
      t->next_uid = 1;
    }
    t->uidvalidity = mb.uidvalidity;
    mailoauth_ingest_ledger_reset(ing, t);
    if (mailoauth_ingest_state_save(ing, t) < 0) {
      ingest_error(t, "cannot write the state file: %s", strerror(errno));
      return;
    }
  }

  for (;;) {
    st = mailoauth_imap_search(t->imap, t->next_uid, 0, uids,
      INGEST_SEARCH_BATCH, &count);
    if (st != MAILOAUTH_IMAP_OK) {
      ingest_error(t, "cannot search folder %s: %s (%s)", t->cfg.folder,
        mailoauth_imap_status_name(st), mailoauth_imap_reply(t->imap));
      return;
    }

    for (i = 0; i < count; i++) {
      if (uids[i] < t->next_uid) {
        continue;
      }

      if (!ingest_message(ing, t, uids[i])) {
        return;
      }

      t->next_uid = uids[i] + 1;
      if (mailoauth_ingest_state_save(ing, t) < 0) {
        ingest_error(t, "cannot write the state file: %s", strerror(errno));
        return;
      }
      mailoauth_ingest_ledger_reset(ing, t);

      /* A long backlog must not hold up notifications and the other
       * tasks: the run goes on at the next tick, where it stopped.
       */
      taken++;
      if (time(NULL) - now >= INGEST_RUN_SLICE ||
          taken >= INGEST_RUN_SLICE_MSGS) {
        mailoauth_trace(trace_channel, 8, "task %s: run paused after UID %"
          PRIu32, t->cfg.name, uids[i]);
        t->more = 1;
        t->last_success = time(NULL);
        return;
      }
    }

    if (count < INGEST_SEARCH_BATCH) {
      break;
    }
  }

  t->last_success = time(NULL);
  ingest_ok(t);
}

/* The task set
 */

struct mailoauth_ingest *mailoauth_ingest_create(const char *state_dir,
    struct mailoauth_registry *reg, int deposit_sock) {
  struct mailoauth_ingest *ing;

  ing = calloc(1, sizeof(*ing));
  if (ing == NULL) {
    return NULL;
  }

  ing->state_dir = strdup(state_dir);
  ing->tasks_dir = mailoauth_ingest_path(state_dir, "tasks", "");
  ing->tmp_dir = mailoauth_ingest_path(state_dir, "tmp", "");
  if (ing->state_dir == NULL || ing->tasks_dir == NULL ||
      ing->tmp_dir == NULL) {
    mailoauth_ingest_destroy(ing);
    errno = ENOMEM;
    return NULL;
  }

  ing->reg = reg;
  ing->deposit_sock = deposit_sock;
  return ing;
}

void mailoauth_ingest_set_parser(struct mailoauth_ingest *ing,
    int (*get)(int restart, void *arg), void *arg) {
  ing->parser = get;
  ing->parser_arg = arg;
}

int mailoauth_ingest_add(struct mailoauth_ingest *ing,
    const struct mailoauth_ingest_config *cfg) {
  struct ingest_task *tasks, *t;
  unsigned int i;

  if (cfg->name == NULL || !mailoauth_ingest_valid_name(cfg->name) ||
      cfg->account == NULL || cfg->dir == NULL || cfg->dir[0] != '/' ||
      cfg->uid == 0 || cfg->every == 0 ||
      cfg->nroutes > MAILOAUTH_INGEST_MAX_ROUTES) {
    errno = EINVAL;
    return -1;
  }

  for (i = 0; i < cfg->nroutes; i++) {
    if (cfg->routes[i] == NULL || cfg->routes[i]->dir == NULL ||
        cfg->routes[i]->dir[0] != '/' || cfg->routes[i]->uid == 0) {
      errno = EINVAL;
      return -1;
    }
  }

  tasks = realloc(ing->tasks, (ing->ntasks + 1) * sizeof(*tasks));
  if (tasks == NULL) {
    return -1;
  }
  ing->tasks = tasks;

  t = &ing->tasks[ing->ntasks];
  memset(t, 0, sizeof(*t));
  t->cfg = *cfg;

  t->dests = calloc(cfg->nroutes + 1, sizeof(*t->dests));
  if (t->dests == NULL) {
    return -1;
  }
  t->ndests = cfg->nroutes + 1;
  t->dests[0].dir = cfg->dir;
  t->dests[0].uid = cfg->uid;
  t->dests[0].gid = cfg->gid;
  for (i = 0; i < cfg->nroutes; i++) {
    t->dests[i + 1].dir = cfg->routes[i]->dir;
    t->dests[i + 1].uid = cfg->routes[i]->uid;
    t->dests[i + 1].gid = cfg->routes[i]->gid;
  }

  if (mailoauth_ingest_state_load(ing, t) < 0) {
    free(t->dests);
    return -1;
  }
  ing->ntasks++;
  return 0;
}

time_t mailoauth_ingest_tick(struct mailoauth_ingest *ing, time_t now) {
  time_t next = 0;
  size_t i;

  if (ing == NULL) {
    return 0;
  }

  for (i = 0; i < ing->ntasks; i++) {
    struct ingest_task *t = &ing->tasks[i];

    if (t->next_due <= now) {
      mailoauth_trace(trace_channel, 9, "task %s: run", t->cfg.name);
      t->more = 0;
      t->last_run = now;
      ingest_run(ing, t, now);

      /* Counted from the end of the run: a run longer than the interval
       * does not make the next one start at once, nor overlap.  A run
       * paused at its slice goes on as soon as the worker is free.
       */
      t->next_due = t->more ? time(NULL) : time(NULL) + t->cfg.every;
    }

    if (next == 0 || t->next_due < next) {
      next = t->next_due;
    }
  }

  return next;
}

void mailoauth_ingest_destroy(struct mailoauth_ingest *ing) {
  size_t i;

  if (ing == NULL) {
    return;
  }

  for (i = 0; i < ing->ntasks; i++) {
    size_t j;

    /* A session shared by tasks (ingest_open) goes once. */
    for (j = i + 1; j < ing->ntasks; j++) {
      if (ing->tasks[j].imap == ing->tasks[i].imap) {
        ing->tasks[j].imap = NULL;
      }
    }
    mailoauth_imap_destroy(ing->tasks[i].imap);
    mailoauth_ingest_ledger_forget(&ing->tasks[i]);
    free(ing->tasks[i].ledger);
    free(ing->tasks[i].dests);
  }

  free(ing->tasks);
  free(ing->state_dir);
  free(ing->tasks_dir);
  free(ing->tmp_dir);
  free(ing);
}

int mailoauth_ingest_run_now(struct mailoauth_ingest *ing, const char *name,
    time_t now) {
  size_t i;

  for (i = 0; ing != NULL && i < ing->ntasks; i++) {
    if (strcmp(ing->tasks[i].cfg.name, name) == 0) {
      ing->tasks[i].next_due = now;
      return 0;
    }
  }

  errno = ENOENT;
  return -1;
}

static json_t *ingest_time(time_t t) {
  return t != 0 ? json_integer((json_int_t) t) : json_null();
}

struct json_t *mailoauth_ingest_status(const struct mailoauth_ingest *ing,
    time_t now) {
  json_t *list = json_array();
  size_t i;

  (void) now;
  for (i = 0; list != NULL && ing != NULL && i < ing->ntasks; i++) {
    const struct ingest_task *t = &ing->tasks[i];

    (void) json_array_append_new(list, json_pack(
      "{s:s, s:s, s:I, s:o, s:o, s:o, s:o, s:I, s:I, s:I}",
      "name", t->cfg.name,
      "account", t->cfg.account,
      "every", (json_int_t) t->cfg.every,
      "last_run", ingest_time(t->last_run),
      "next_run", ingest_time(t->next_due),
      "last_success", ingest_time(t->last_success),
      "last_error", t->last_error[0] != '\0' ?
        mailoauth_json_text(t->last_error) : json_null(),
      "errors", (json_int_t) t->errors,
      "messages", (json_int_t) t->messages,
      "bytes", (json_int_t) t->bytes));
  }

  return list;
}
