/*
 * mod_mailoauth - a pull task's state on disk: NAME.json (UIDVALIDITY and
 * the next UID) and NAME.ledger (what was deposited, and what was asked
 * for, so that a crash neither loses nor duplicates a file)
 */

#include "mailoauth/io.h"
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
  return mailoauth_spool_write_atomic(ing->tasks_dir, name, buf,
    (size_t) len, 0600);
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
    uint64_t size, const char *name) {
  char *copy = NULL;

  if (!intent && name != NULL) {
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
      if (sscanf(line, "? %lu %lu %lu %lld %llu ", &uv, &uid, &part,
            &started, &size) == 5 &&
          ingest_ledger_add_mem(t, (uint32_t) uv, (uint32_t) uid,
            (unsigned int) part, 1, (time_t) started, size, NULL) < 0) {
        fclose(fp);
        return -1;
      }

    } else if (sscanf(line, "%lu %lu %lu %n", &uv, &uid, &part,
          &name_at) == 3 && name_at > 0) {
      *strchr(line, '\n') = '\0';
      if (ingest_ledger_add_mem(t, (uint32_t) uv, (uint32_t) uid,
          (unsigned int) part, 0, 0, 0, line + name_at) < 0) {
        fclose(fp);
        return -1;
      }
    }
  }

  fclose(fp);
  return 0;
}

/* intent: the "?" line written before asking for a deposit (with when
 * and the size), else the line saying it is done.
 */
int mailoauth_ingest_ledger_append(struct mailoauth_ingest *ing,
    struct ingest_task *t, uint32_t uid, unsigned int part,
    const char *final_name, int intent, time_t started, uint64_t size) {
  char *path, line[MAILOAUTH_DEPOSIT_NAME_MAX + 64];
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
  if (intent) {
    len = snprintf(line, sizeof(line), "? %" PRIu32 " %" PRIu32 " %u %lld "
      "%" PRIu64 " %s\n", t->uidvalidity, uid, part, (long long) started,
      size, final_name);
  } else {
    len = snprintf(line, sizeof(line), "%" PRIu32 " %" PRIu32 " %u %s\n",
      t->uidvalidity, uid, part, final_name);
  }
  if (len < 0 || (size_t) len >= sizeof(line)) {
    len = snprintf(line, sizeof(line), "%" PRIu32 " %" PRIu32 " %u -\n",
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

  return ingest_ledger_add_mem(t, t->uidvalidity, uid, part, intent,
    started, size, final_name);
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
 * whether the deposit happened: a file of the name's family ("x.pdf",
 * "x (1).pdf", ...) owned by the owner, of the part's size, written since
 * the request.  Stat only needs search permission on the directory; when
 * even that is refused the answer is "no", and the part is deposited once
 * more rather than risk losing it.
 */
struct ingest_probe {
  int dirfd;
  const struct ingest_ledger_entry *intent;
  uid_t uid;
  int found;
  char name[MAILOAUTH_DEPOSIT_NAME_MAX + 1];
};

static int ingest_probe_exists(const char *name, void *arg) {
  struct ingest_probe *pr = arg;
  struct stat st;

  if (fstatat(pr->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
    return errno == ENOENT ? 0 : -1;
  }

  if (S_ISREG(st.st_mode) &&
      st.st_uid == pr->uid &&
      (uint64_t) st.st_size == pr->intent->size &&
      st.st_mtime >= pr->intent->started) {
    pr->found = 1;
    snprintf(pr->name, sizeof(pr->name), "%s", name);
    return 0;
  }

  return 1;
}

int mailoauth_ingest_already_deposited(const struct ingest_dest *dest,
    const struct ingest_ledger_entry *intent, const char *name,
    char *found, size_t foundsz) {
  struct ingest_probe pr;
  char out[MAILOAUTH_DEPOSIT_NAME_MAX + 1];

  memset(&pr, 0, sizeof(pr));
  pr.dirfd = open(dest->dir, O_RDONLY|O_DIRECTORY|O_CLOEXEC);
  if (pr.dirfd < 0) {
    return 0;
  }
  pr.intent = intent;
  pr.uid = dest->uid;

  (void) mailoauth_names_unique(name, ingest_probe_exists, &pr, out,
    sizeof(out));
  (void) close(pr.dirfd);

  if (pr.found) {
    snprintf(found, foundsz, "%s", pr.name);
  }
  return pr.found;
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

