/*
 * mod_mailoauth - what the pull tasks' files share (lib/ingest only):
 * ingest.c runs the tasks, ledger.c keeps their state and ledgers on disk
 */

#ifndef MOD_MAILOAUTH_INGESTINT_H
#define MOD_MAILOAUTH_INGESTINT_H

#include "mailoauth/imap.h"
#include "mailoauth/ingest.h"

#include <stdint.h>
#include <sys/types.h>
#include <time.h>

struct ingest_ledger_entry {
  uint32_t uidvalidity;
  uint32_t uid;
  unsigned int part;
  int intent;                   /* "?" line: a deposit was asked for */
  time_t started;               /* intent: when */
  uint64_t size;                /* intent: the part's size */
  int has_sha256;               /* intent: sha256 known (newer ledgers) */
  unsigned char sha256[32];     /* intent: the part's SHA-256 */
  char *name;                   /* done: the name it was deposited as;
                                 * intent: the name asked for */
};

/* Where a task's files go: its own dir= and owner, or a route's. */
struct ingest_dest {
  const char *dir;
  uid_t uid;
  gid_t gid;
  int cleaned;                  /* stale temporary files removed */
};

struct ingest_task {
  struct mailoauth_ingest_config cfg;
  struct mailoauth_imap *imap;
  time_t next_due;
  uint32_t uidvalidity;         /* from the state file; 0: never ran */
  uint32_t next_uid;
  char last_error[512];         /* logged once until it changes */
  int more;                     /* the run stopped at its time slice */

  /* Since the worker started, for the status file and the metrics. */
  time_t last_run, last_success;
  unsigned long errors, messages;
  uint64_t bytes;

  struct ingest_dest *dests;    /* [0]: dir=/owner=, then one per route */
  size_t ndests;

  struct ingest_ledger_entry *ledger;
  size_t nledger, ledger_size;

  uint32_t broke_uid;           /* the last message the parser broke on */
  unsigned int broke_count;
};

struct mailoauth_ingest {
  char *state_dir;
  char *tasks_dir;
  char *tmp_dir;
  struct mailoauth_registry *reg;
  int deposit_sock;
  int (*parser)(int restart, void *arg);
  void *parser_arg;
  int parser_broken;            /* replace it before the next message */
  struct ingest_task *tasks;
  size_t ntasks;
};

int mailoauth_ingest_already_deposited(struct mailoauth_ingest *ing, const struct ingest_dest *dest, const struct ingest_ledger_entry *intent, const char *name, char *found, size_t foundsz);
int mailoauth_ingest_ledger_append(struct mailoauth_ingest *ing, struct ingest_task *t, uint32_t uid, unsigned int part, const char *final_name, int intent, time_t started, uint64_t size, const unsigned char *sha256);
void mailoauth_ingest_ledger_forget(struct ingest_task *t);
const char * mailoauth_ingest_ledger_has(const struct ingest_task *t, uint32_t uv, uint32_t uid, unsigned int part);
const struct ingest_ledger_entry * mailoauth_ingest_ledger_intent(const struct ingest_task *t, uint32_t uid, unsigned int part);
int mailoauth_ingest_ledger_load(struct mailoauth_ingest *ing, struct ingest_task *t);
void mailoauth_ingest_ledger_reset(struct mailoauth_ingest *ing, struct ingest_task *t);
char * mailoauth_ingest_path(const char *dir, const char *name, const char *suffix);
int mailoauth_ingest_state_load(struct mailoauth_ingest *ing, struct ingest_task *t);
int mailoauth_ingest_state_save(struct mailoauth_ingest *ing, struct ingest_task *t);

#endif /* MOD_MAILOAUTH_INGESTINT_H */
