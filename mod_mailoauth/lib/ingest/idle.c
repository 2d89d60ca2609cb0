/*
 * mod_mailoauth - IMAP IDLE for the pull tasks (see ingest.h, imapidle.h)
 *
 * One watcher per account and folder, shared by the tasks on it.  It
 * holds no state the tasks need: when it is down, they poll at every= as
 * they always do, and each time it starts idling again the tasks run once,
 * so that nothing that arrived meanwhile waits for the next poll.
 */

#include "ingestint.h"
#include "mailoauth/imapidle.h"
#include "mailoauth/registry.h"
#include "mailoauth/tokens.h"
#include "mailoauth/trace.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *trace_channel = "mailoauth.ingest";

/* The first news of mail runs the tasks at once; news within this long of
 * the last run asked for waits this long, so that a burst of mail makes
 * one more run, not one per message.
 */
#define IDLE_DEBOUNCE_MS        200
#define IDLE_QUIET_MS           1000

/* Reconnecting after a failure: from this, doubling, up to the cap. */
#define IDLE_BACKOFF_MIN_S      5
#define IDLE_BACKOFF_MAX_S      300

/* A fresh login this long before the access token expires (Exchange ends
 * a session whose token expired), or half the token's life if shorter.
 */
#define IDLE_TOKEN_MARGIN_S     120

/* A session the server ends for token expiry sooner than this after its
 * login is not given a quiet retry.
 */
#define IDLE_QUIET_MIN_MS       1000

struct ingest_watch {
  struct mailoauth_imapidle *w;
  const char *account;
  const char *folder;
  size_t *tasks;                /* indexes into ing->tasks */
  size_t ntasks;
  int off;                      /* polling only, for good */
  int down_logged;              /* the outage was logged */
  int quiet_retry;              /* a token-expiry BYE got its quiet retry */
  long long login_ms;           /* when the watcher last logged in */
  int logged_up;                /* "watching" was logged once */
  unsigned int backoff_s;
  long long retry_ms;           /* next connect attempt */
  long long renew_ms;           /* log in again with a fresh token then */
  long long due_ms;             /* run the tasks then (0: not asked) */
  long long last_due_ms;        /* when they were last made due */
  int pfd;                      /* index in this round's pollfds, or -1 */
};

struct mailoauth_ingest_idle {
  struct mailoauth_ingest *ing;
  struct ingest_watch *watches;
  size_t nwatches;
};

static long long idle_now_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *idle_first_task(const struct mailoauth_ingest_idle *idle,
    const struct ingest_watch *x) {
  return idle->ing->tasks[x->tasks[0]].cfg.name;
}

struct mailoauth_ingest_idle *mailoauth_ingest_idle_create(
    struct mailoauth_ingest *ing) {
  struct mailoauth_ingest_idle *idle;
  size_t i, j;

  if (ing == NULL) {
    return NULL;
  }

  idle = calloc(1, sizeof(*idle));
  if (idle == NULL) {
    return NULL;
  }
  idle->ing = ing;
  idle->watches = calloc(ing->ntasks + 1, sizeof(*idle->watches));
  if (idle->watches == NULL) {
    free(idle);
    return NULL;
  }

  for (i = 0; i < ing->ntasks; i++) {
    const struct mailoauth_ingest_config *cfg = &ing->tasks[i].cfg;
    const struct mailoauth_account *acct;
    struct ingest_watch *x = NULL;
    size_t *tasks;

    if (!cfg->idle) {
      continue;
    }

    for (j = 0; j < idle->nwatches; j++) {
      if (strcmp(idle->watches[j].account, cfg->account) == 0 &&
          strcmp(idle->watches[j].folder, cfg->folder) == 0) {
        x = &idle->watches[j];
        break;
      }
    }

    if (x == NULL) {
      acct = mailoauth_registry_account(ing->reg, cfg->account);
      if (acct == NULL || acct->imap_url == NULL) {
        continue;               /* the task says so when it runs */
      }
      x = &idle->watches[idle->nwatches];
      memset(x, 0, sizeof(*x));
      x->w = mailoauth_imapidle_create(acct->imap_url, cfg->folder,
        acct->mailbox, acct->oauth.ca_file);
      if (x->w == NULL) {
        mailoauth_log("ingest %s: IMAP IDLE cannot be used (%s); polling "
          "every %u s", cfg->name, strerror(errno), cfg->every);
        continue;
      }
      x->account = cfg->account;
      x->folder = cfg->folder;
      x->pfd = -1;
      if (cfg->idle_renew > 0) {
        mailoauth_imapidle_set_renew(x->w, cfg->idle_renew);
      }
      idle->nwatches++;
    }

    tasks = realloc(x->tasks, (x->ntasks + 1) * sizeof(*tasks));
    if (tasks == NULL) {
      continue;
    }
    x->tasks = tasks;
    x->tasks[x->ntasks++] = i;
  }

  if (idle->nwatches == 0) {
    mailoauth_ingest_idle_destroy(idle);
    return NULL;
  }
  return idle;
}

void mailoauth_ingest_idle_destroy(struct mailoauth_ingest_idle *idle) {
  size_t i;

  if (idle == NULL) {
    return;
  }
  for (i = 0; i < idle->nwatches; i++) {
    mailoauth_imapidle_destroy(idle->watches[i].w);
    free(idle->watches[i].tasks);
  }
  free(idle->watches);
  free(idle);
}

/* The shortest every= of the watch's tasks, for the log. */
static unsigned int idle_every(const struct mailoauth_ingest_idle *idle,
    const struct ingest_watch *x) {
  unsigned int every = 0;
  size_t i;

  for (i = 0; i < x->ntasks; i++) {
    unsigned int e = idle->ing->tasks[x->tasks[i]].cfg.every;

    if (every == 0 || e < every) {
      every = e;
    }
  }
  return every;
}

static void idle_backoff(struct ingest_watch *x, long long now_ms) {
  x->backoff_s = x->backoff_s == 0 ? IDLE_BACKOFF_MIN_S :
    (x->backoff_s * 2 > IDLE_BACKOFF_MAX_S ? IDLE_BACKOFF_MAX_S :
     x->backoff_s * 2);
  x->retry_ms = now_ms + (long long) x->backoff_s * 1000;
}

/* The watcher stopped or could not start: polling carries on, and the log
 * says so once (not once per retry).
 */
static void idle_failed(struct mailoauth_ingest_idle *idle,
    struct ingest_watch *x, int status, long long now_ms) {
  const char *why = mailoauth_imapidle_reply(x->w);

  if (status == MAILOAUTH_IMAPIDLE_NOIDLE ||
      status == MAILOAUTH_IMAPIDLE_CONFIG) {
    x->off = 1;
    mailoauth_log("ingest %s: IMAP IDLE cannot be used (%s); polling "
      "folder '%s' every %u s", idle_first_task(idle, x), why, x->folder,
      idle_every(idle, x));
    return;
  }

  /* Exchange ends a session when it deems the token expired (BYE
   * AccessTokenExpired), which may come before our own clock says so:
   * a fresh token and an immediate new login, not an outage.  Once per
   * login, and only after a session that lasted: a server that ends every
   * session at once is an outage, logged and retried with backoff.
   */
  if (!x->quiet_retry && why != NULL &&
      strstr(why, "AccessTokenExpired") != NULL &&
      now_ms - x->login_ms >= IDLE_QUIET_MIN_MS) {
    struct mailoauth_tokens *tok = mailoauth_registry_tokens(idle->ing->reg,
      x->account);

    x->quiet_retry = 1;
    if (tok != NULL) {
      mailoauth_tokens_invalidate(tok);
    }
    mailoauth_trace(trace_channel, 5, "ingest %s: IDLE: %s; logging in "
      "again with a fresh token", idle_first_task(idle, x), why);
    x->retry_ms = now_ms;
    return;
  }

  if (!x->down_logged) {
    x->down_logged = 1;
    mailoauth_log("ingest %s: IMAP IDLE is not available (%s); polling "
      "folder '%s' every %u s until it is back", idle_first_task(idle, x),
      why, x->folder, idle_every(idle, x));
  } else {
    mailoauth_trace(trace_channel, 5, "ingest %s: IDLE: %s",
      idle_first_task(idle, x), why);
  }

  if (status == MAILOAUTH_IMAPIDLE_AUTHFAIL) {
    struct mailoauth_tokens *tok = mailoauth_registry_tokens(idle->ing->reg,
      x->account);

    if (tok != NULL) {
      mailoauth_tokens_invalidate(tok);
    }
  }

  idle_backoff(x, now_ms);
}

static void idle_connect(struct mailoauth_ingest_idle *idle,
    struct ingest_watch *x, long long now_ms) {
  struct mailoauth_tokens *tok;
  struct mailoauth_tokens_info info;
  mailoauth_oauth_class_t cls;
  const char *token;
  time_t now = time(NULL);
  int status;

  tok = mailoauth_registry_tokens(idle->ing->reg, x->account);
  token = tok ? mailoauth_tokens_get(tok, now, &cls) : NULL;
  if (token == NULL) {
    /* The token code has logged why; the tasks say it too. */
    idle_backoff(x, now_ms);
    return;
  }

  status = mailoauth_imapidle_connect(x->w, token, now_ms);
  if (status != MAILOAUTH_IMAPIDLE_OK) {
    idle_failed(idle, x, status, now_ms);
    return;
  }

  x->renew_ms = 0;
  x->login_ms = now_ms;
  x->quiet_retry = 0;
  mailoauth_tokens_info(tok, now, &info);
  if (info.access_expires > now) {
    long long life = (long long) (info.access_expires - now);
    long long margin = life / 2 < IDLE_TOKEN_MARGIN_S ? life / 2 :
      IDLE_TOKEN_MARGIN_S;

    x->renew_ms = now_ms + (life - margin) * 1000;
  }
}

unsigned int mailoauth_ingest_idle_fds(struct mailoauth_ingest_idle *idle,
    struct pollfd *pfds, unsigned int max, long long *wait_ms) {
  unsigned int n = 0;
  long long now_ms;
  size_t i;

  if (idle == NULL) {
    return 0;
  }

  now_ms = idle_now_ms();
  for (i = 0; i < idle->nwatches; i++) {
    struct ingest_watch *x = &idle->watches[i];
    long long at[4];
    int fd, k;

    x->pfd = -1;
    if (x->off) {
      continue;
    }

    fd = mailoauth_imapidle_fd(x->w);
    if (fd < 0 && now_ms >= x->retry_ms) {
      idle_connect(idle, x, now_ms);
      fd = mailoauth_imapidle_fd(x->w);
    }

    at[0] = fd < 0 && !x->off ? x->retry_ms : 0;
    at[1] = fd >= 0 ? mailoauth_imapidle_next_ms(x->w) : 0;
    at[2] = fd >= 0 ? x->renew_ms : 0;
    at[3] = x->due_ms;
    for (k = 0; k < 4; k++) {
      if (at[k] != 0 && at[k] - now_ms < *wait_ms) {
        *wait_ms = at[k] > now_ms ? at[k] - now_ms : 0;
      }
    }

    if (fd >= 0 && n < max) {
      pfds[n].fd = fd;
      pfds[n].events = POLLIN;
      pfds[n].revents = 0;
      x->pfd = (int) n++;
    }
  }

  return n;
}

int mailoauth_ingest_idle_ready(struct mailoauth_ingest_idle *idle,
    const struct pollfd *pfds, unsigned int n) {
  long long now_ms;
  int made_due = 0;
  size_t i, j;

  if (idle == NULL) {
    return 0;
  }

  now_ms = idle_now_ms();
  for (i = 0; i < idle->nwatches; i++) {
    struct ingest_watch *x = &idle->watches[i];
    unsigned events = 0;

    if (mailoauth_imapidle_fd(x->w) >= 0) {
      long long next = mailoauth_imapidle_next_ms(x->w);
      int readable = x->pfd >= 0 && (unsigned int) x->pfd < n &&
        pfds[x->pfd].revents != 0;

      if (x->renew_ms != 0 && now_ms >= x->renew_ms) {
        /* A new login with a fresh token; idling again runs the tasks,
         * which covers the moment without a watcher.
         */
        mailoauth_trace(trace_channel, 5, "ingest %s: IDLE: logging in "
          "again before the token expires", idle_first_task(idle, x));
        mailoauth_imapidle_close(x->w);
        x->retry_ms = now_ms;

      } else if (readable || (next != 0 && now_ms >= next)) {
        int status = mailoauth_imapidle_step(x->w, now_ms, &events);

        if (status != MAILOAUTH_IMAPIDLE_OK) {
          idle_failed(idle, x, status, now_ms);
        }
      }
    }

    if (events & MAILOAUTH_IMAPIDLE_EV_IDLING) {
      x->backoff_s = 0;
      if (!x->logged_up || x->down_logged) {
        mailoauth_log("ingest %s: watching folder '%s' with IMAP IDLE",
          idle_first_task(idle, x), x->folder);
      }
      x->logged_up = 1;
      x->down_logged = 0;
    }

    if (events & (MAILOAUTH_IMAPIDLE_EV_NEWMAIL |
        MAILOAUTH_IMAPIDLE_EV_IDLING)) {
      mailoauth_trace(trace_channel, 7, "ingest %s: IDLE: %s",
        idle_first_task(idle, x), (events & MAILOAUTH_IMAPIDLE_EV_NEWMAIL) ?
        "new mail" : "idling");
      if (x->due_ms == 0) {
        x->due_ms = now_ms - x->last_due_ms >= IDLE_QUIET_MS ? now_ms :
          now_ms + IDLE_DEBOUNCE_MS;
      }
    }

    if (x->due_ms != 0 && now_ms >= x->due_ms) {
      x->due_ms = 0;
      x->last_due_ms = now_ms;
      for (j = 0; j < x->ntasks; j++) {
        struct ingest_task *t = &idle->ing->tasks[x->tasks[j]];

        mailoauth_trace(trace_channel, 7, "ingest %s: run now (IDLE)",
          t->cfg.name);
        (void) mailoauth_ingest_run_now(idle->ing, t->cfg.name, time(NULL));
      }
      made_due = 1;
    }
  }

  return made_due;
}
