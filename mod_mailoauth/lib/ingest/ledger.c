/*
 * mod_mailoauth - a pull task's state on disk: NAME.json (UIDVALIDITY and
 * the next UID) and NAME.ledger (what was deposited, and what was asked
 * for, so that a crash neither loses nor duplicates a file)
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
#include "ingest/ingestint.h"

#include <curl/curl.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* Reading back a large part to compare digests takes a while. */
#define INGEST_PROBE_TIMEOUT_MS         (10 * 60 * 1000)

static const char *trace_channel = "mailoauth.ingest";

/* Task state: NAME.json and NAME.ledger
 */

char *mailoauth_ingest_path(const char *dir, const char *name,
    const char *suffix) {
  size_t len = strlen(dir) + strlen(name) + strlen(suffix) + 2;
  char *path = malloc(len);

  if (path != NULL) {
    snprintf(path, len, "%s/%s%s", dir, name, suffix);
  }
  return path;
}

int mailoauth_ingest_state_load(struct mailoauth_ingest *ing,
    struct ingest_task *t) {
  json_t *root, *v, *n;
  json_error_t jerr;
  char *path;

  path = mailoauth_ingest_path(ing->tasks_dir, t->cfg.name, ".json");
  if (path == NULL) {
    return -1;
  }

  root = json_load_file(path, 0, &jerr);
  free(path);
  if (root == NULL) {
    /* Missing: the task never ran. */
    t->uidvalidity = 0;
    t->next_uid = 1;
    return 0;
  }

  v = json_object_get(root, "uidvalidity");
  n = json_object_get(root, "next");
  if (json_is_integer(v) && json_is_integer(n) &&
      json_integer_value(v) >= 0 && json_integer_value(v) <= UINT32_MAX &&
      json_integer_value(n) >= 1 && json_integer_value(n) <= UINT32_MAX) {
    t->uidvalidity = (uint32_t) json_integer_value(v);
    t->next_uid = (uint32_t) json_integer_value(n);
  } else {
    mailoauth_log("ingest %s: state file is damaged; starting over from "
      "the folder's next new message", t->cfg.name);
    t->uidvalidity = 0;
    t->next_uid = 0;    /* 0: take UIDNEXT at the next select */
  }

  json_decref(root);
  return 0;
}

int mailoauth_ingest_state_save(struct mailoauth_ingest *ing,
    struct ingest_task *t) {
  char buf[128], name[MAILOAUTH_INGEST_NAME_MAX + 8];
  int len;

  len = snprintf(buf, sizeof(buf), "{\"uidvalidity\": %" PRIu32
    ", \"next\": %" PRIu32 "}\n", t->uidvalidity, t->next_uid);
  snprintf(name, sizeof(name), "%s.json", t->cfg.name);
  if (mailoauth_spool_write_atomic(ing->tasks_dir, name, buf,
      (size_t) len, 0600) < 0) {
    return -1;
  }
  MAILOAUTH_CRASHPOINT("state-written");
  return 0;
}

void mailoauth_ingest_ledger_forget(struct ingest_task *t) {
  size_t i;

  for (i = 0; i < t->nledger; i++) {
    free(t->ledger[i].name);
  }
  t->nledger = 0;
}

static int ingest_ledger_add_mem(struct ingest_task *t, uint32_t uv,
    uint32_t uid, unsigned int part, int intent, time_t started,
    uint64_t size, const unsigned char *sha256, const char *name) {
  char *copy = NULL;

  if (name != NULL) {
    copy = strdup(name);
    if (copy == NULL) {
      return -1;
    }
  }

  if (t->nledger == t->ledger_size) {
    size_t cap = t->ledger_size ? t->ledger_size * 2 : 16;
    struct ingest_ledger_entry *e = realloc(t->ledger, cap * sizeof(*e));

    if (e == NULL) {
      free(copy);
      return -1;
    }
    t->ledger = e;
    t->ledger_size = cap;
  }

  t->ledger[t->nledger].uidvalidity = uv;
  t->ledger[t->nledger].uid = uid;
  t->ledger[t->nledger].part = part;
  t->ledger[t->nledger].intent = intent;
  t->ledger[t->nledger].started = started;
  t->ledger[t->nledger].size = size;
  t->ledger[t->nledger].has_sha256 = sha256 != NULL;
  if (sha256 != NULL) {
    memcpy(t->ledger[t->nledger].sha256, sha256,
      sizeof(t->ledger[t->nledger].sha256));
  }
  t->ledger[t->nledger].name = copy;
  t->nledger++;
  return 0;
}

/* The name a part was deposited as, or NULL when it was not. */
const char *mailoauth_ingest_ledger_has(const struct ingest_task *t,
    uint32_t uv, uint32_t uid, unsigned int part) {
  size_t i;

  for (i = 0; i < t->nledger; i++) {
    if (!t->ledger[i].intent &&
        t->ledger[i].uidvalidity == uv &&
        t->ledger[i].uid == uid &&
        t->ledger[i].part == part) {
      return t->ledger[i].name ? t->ledger[i].name : "-";
    }
  }
  return NULL;
}

/* "sha256=<64 hex> " at s: 0 with the digest, else -1. */
static int ingest_ledger_parse_sha256(const char *s, unsigned char *digest) {
  size_t i;

  if (strncmp(s, "sha256=", 7) != 0) {
    return -1;
  }
  s += 7;
  for (i = 0; i < 64; i++) {
    if (!isxdigit((unsigned char) s[i]) || isupper((unsigned char) s[i])) {
      return -1;
    }
  }
  if (s[64] != ' ') {
    return -1;
  }
  for (i = 0; i < 32; i++) {
    unsigned int v;

    if (sscanf(s + 2 * i, "%2x", &v) != 1) {
      return -1;
    }
    digest[i] = (unsigned char) v;
  }
  return 0;
}

int mailoauth_ingest_ledger_load(struct mailoauth_ingest *ing,
    struct ingest_task *t) {
  char *path, line[2048];
  FILE *fp;

  mailoauth_ingest_ledger_forget(t);
  path = mailoauth_ingest_path(ing->tasks_dir, t->cfg.name, ".ledger");
  if (path == NULL) {
    return -1;
  }

  fp = fopen(path, "re");
  free(path);
  if (fp == NULL) {
    return errno == ENOENT ? 0 : -1;
  }

  while (fgets(line, sizeof(line), fp) != NULL) {
    unsigned long uv, uid, part;
    long long started;
    unsigned long long size;
    int name_at = 0;

    /* A line cut short by a crash has no name and no newline; its deposit
     * was not confirmed, but the line is written after the deposit, so
     * counting it done would be right too: only complete lines count.
     */
    if (strchr(line, '\n') == NULL) {
      continue;
    }
    if (line[0] == '?') {
      unsigned char digest[32], *dp = NULL;
      const char *rest;

      if (sscanf(line, "? %lu %lu %lu %lld %llu %n", &uv, &uid, &part,
            &started, &size, &name_at) != 5 || name_at == 0) {
        continue;
      }
      *strchr(line, '\n') = '\0';
      rest = line + name_at;

      /* Lines written before digests have the name right after the size. */
      if (ingest_ledger_parse_sha256(rest, digest) == 0) {
        dp = digest;
        rest += 7 + 64 + 1;
      }
      if (ingest_ledger_add_mem(t, (uint32_t) uv, (uint32_t) uid,
          (unsigned int) part, 1, (time_t) started, size, dp,
          *rest ? rest : NULL) < 0) {
        fclose(fp);
        return -1;
      }

    } else if (sscanf(line, "%lu %lu %lu %n", &uv, &uid, &part,
          &name_at) == 3 && name_at > 0) {
      *strchr(line, '\n') = '\0';
      if (ingest_ledger_add_mem(t, (uint32_t) uv, (uint32_t) uid,
          (unsigned int) part, 0, 0, 0, NULL, line + name_at) < 0) {
        fclose(fp);
        return -1;
      }
    }
  }

  fclose(fp);
  return 0;
}

/* intent: the "?" line written before asking for a deposit (with when,
 * the size and the SHA-256), else the line saying it is done.
 */
int mailoauth_ingest_ledger_append(struct mailoauth_ingest *ing,
    struct ingest_task *t, uint32_t uid, unsigned int part,
    const char *final_name, int intent, time_t started, uint64_t size,
    const unsigned char *sha256) {
  char *path, line[MAILOAUTH_DEPOSIT_NAME_MAX + 160], hex[80];
  size_t i;
  int fd, len, xerrno;
  ssize_t n;

  path = mailoauth_ingest_path(ing->tasks_dir, t->cfg.name, ".ledger");
  if (path == NULL) {
    return -1;
  }

  fd = open(path, O_WRONLY|O_APPEND|O_CREAT|O_CLOEXEC|O_NOFOLLOW, 0600);
  free(path);
  if (fd < 0) {
    return -1;
  }

  /* The name is for a person reading the ledger; newlines cannot occur in
   * a deposited name (control characters are sanitized away).
   */
  hex[0] = '\0';
  if (intent && sha256 != NULL) {
    memcpy(hex, "sha256=", 7);
    for (i = 0; i < 32; i++) {
      snprintf(hex + 7 + 2 * i, 3, "%02x", sha256[i]);
    }
    hex[7 + 64] = ' ';
    hex[7 + 64 + 1] = '\0';
  }

  if (intent) {
    len = snprintf(line, sizeof(line), "? %" PRIu32 " %" PRIu32 " %u %lld "
      "%" PRIu64 " %s%s\n", t->uidvalidity, uid, part, (long long) started,
      size, hex, final_name);
  } else {
    len = snprintf(line, sizeof(line), "%" PRIu32 " %" PRIu32 " %u %s\n",
      t->uidvalidity, uid, part, final_name);
  }
  if (len < 0 || (size_t) len >= sizeof(line)) {
    /* Never turn a request into a "done" line. */
    len = intent ?
      snprintf(line, sizeof(line), "? %" PRIu32 " %" PRIu32 " %u %lld %"
        PRIu64 " %s-\n", t->uidvalidity, uid, part, (long long) started,
        size, hex) :
      snprintf(line, sizeof(line), "%" PRIu32 " %" PRIu32 " %u -\n",
        t->uidvalidity, uid, part);
  }

  n = write(fd, line, (size_t) len);
  xerrno = errno;
  if (n != len || fsync(fd) < 0) {
    xerrno = n != len ? (n < 0 ? xerrno : EIO) : errno;
    (void) close(fd);
    errno = xerrno;
    return -1;
  }

  if (close(fd) < 0) {
    return -1;
  }
  MAILOAUTH_CRASHPOINT(intent ? "intent-written" : "ledger-written");

  return ingest_ledger_add_mem(t, t->uidvalidity, uid, part, intent,
    started, size, intent ? sha256 : NULL, final_name);
}

const struct ingest_ledger_entry *mailoauth_ingest_ledger_intent(
    const struct ingest_task *t, uint32_t uid, unsigned int part) {
  size_t i;

  for (i = t->nledger; i > 0; i--) {
    const struct ingest_ledger_entry *e = &t->ledger[i-1];

    if (e->intent &&
        e->uidvalidity == t->uidvalidity &&
        e->uid == uid &&
        e->part == part) {
      return e;
    }
  }
  return NULL;
}

/* After a crash between asking for a deposit and recording its success,
 * whether the deposit happened.  The worker cannot look: the owner's
 * directory may be closed to it (0700), so the deposit helper looks, as
 * the owner and through descriptors (mailoauth_deposit_probe()), for a
 * file of the name's family with the part's size and SHA-256, changed
 * since the request.  1: found (its name in found), 0: not there (deposit
 * it), -1: cannot tell (errno; keep the mail for a later run rather than
 * risk a second copy).
 */
int mailoauth_ingest_already_deposited(struct mailoauth_ingest *ing,
    const struct ingest_dest *dest, const struct ingest_ledger_entry *intent,
    const char *name, char *found, size_t foundsz) {
  struct mailoauth_deposit_request req;
  struct mailoauth_deposit_result res;
  struct mailoauth_deposit_ident ident;

  memset(&req, 0, sizeof(req));
  req.dir = dest->dir;
  /* The name asked for then: a dated template may give another today. */
  req.name = intent->name != NULL ? intent->name : name;
  req.uid = dest->uid;
  req.gid = dest->gid;

  memset(&ident, 0, sizeof(ident));
  ident.size = intent->size;
  ident.not_before = intent->started;
  ident.has_sha256 = intent->has_sha256;
  memcpy(ident.sha256, intent->sha256, sizeof(ident.sha256));

  memset(&res, 0, sizeof(res));
  if (mailoauth_deposit_client_probe(ing->deposit_sock, &req, &ident,
      INGEST_PROBE_TIMEOUT_MS, &res) == 0) {
    snprintf(found, foundsz, "%s", res.name);
    return 1;
  }

  if (res.error == ENOENT || res.error == ENOTDIR) {
    return 0;
  }
  errno = res.error ? res.error : EIO;
  return -1;
}

/* Once the state file says a message is done, its ledger lines are of no
 * use; emptying the ledger keeps it to one message's parts.
 */
void mailoauth_ingest_ledger_reset(struct mailoauth_ingest *ing,
    struct ingest_task *t) {
  char *path = mailoauth_ingest_path(ing->tasks_dir, t->cfg.name, ".ledger");

  if (path != NULL) {
    if (truncate(path, 0) < 0 && errno != ENOENT) {
      mailoauth_trace(trace_channel, 3, "task %s: cannot empty the ledger: "
        "%s", t->cfg.name, strerror(errno));
    }
    free(path);
  }
  mailoauth_ingest_ledger_forget(t);
}

