/*
 * ftpmailoauth - reading what the sign-in tool needs from proftpd.conf
 */

#include "confread.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <glob.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

/* Deep enough for any real layout, shallow enough to stop an Include
 * loop.
 */
#define CONF_MAX_DEPTH      16
#define CONF_MAX_SECTIONS   64
#define CONF_MAX_LINE       (64 * 1024)

struct conf_reader {
  struct ftpmailoauth_conf *conf;
  char *errbuf;
  size_t errlen;
  unsigned int depth;

  /* Names of the open <Section>s, across included files. */
  char *sections[CONF_MAX_SECTIONS];
  unsigned int nsections;
};

static void conf_err(struct conf_reader *r, const char *fmt, ...)
#ifdef __GNUC__
  __attribute__((format(printf, 2, 3)))
#endif
  ;

static void conf_err(struct conf_reader *r, const char *fmt, ...) {
  va_list ap;

  if (r->errbuf == NULL || r->errlen == 0) {
    return;
  }

  va_start(ap, fmt);
  vsnprintf(r->errbuf, r->errlen, fmt, ap);
  va_end(ap);
}

static char *conf_where(const char *path, unsigned int line) {
  size_t len = strlen(path) + 16;
  char *where = malloc(len);

  if (where != NULL) {
    snprintf(where, len, "%s:%u", path, line);
  }
  return where;
}

/* ------------------------------------------------------------------------
 * Words.
 */

void ftpmailoauth_conf_free_words(char **words, int n) {
  int i;

  if (words == NULL) {
    return;
  }

  for (i = 0; i < n; i++) {
    free(words[i]);
  }
  free(words);
}

/* %{env:NAME} anywhere in a word, as ProFTPD expands it; an unset variable
 * stays as written (a whole-word one becomes empty).
 */
static char *conf_expand_env(const char *word) {
  size_t len = strlen(word);
  char *out, *p;

  if (len > 7 && strncmp(word, "%{env:", 6) == 0 &&
      word[len - 1] == '}' && strchr(word + 6, '}') == word + len - 1) {
    char name[256];
    const char *value;

    snprintf(name, sizeof(name), "%.*s", (int) (len - 7), word + 6);
    value = getenv(name);
    return strdup(value != NULL ? value : "");
  }

  out = strdup(word);
  while (out != NULL && (p = strstr(out, "%{env:")) != NULL) {
    char *end = strchr(p + 6, '}'), name[256], *bigger;
    const char *value;
    size_t pre, post;

    if (end == NULL || (size_t) (end - p - 6) >= sizeof(name)) {
      break;
    }

    snprintf(name, sizeof(name), "%.*s", (int) (end - p - 6), p + 6);
    value = getenv(name);
    if (value == NULL) {
      break;
    }

    pre = (size_t) (p - out);
    post = strlen(end + 1);
    bigger = malloc(pre + strlen(value) + post + 1);
    if (bigger == NULL) {
      free(out);
      return NULL;
    }
    memcpy(bigger, out, pre);
    strcpy(bigger + pre, value);
    strcat(bigger, end + 1);
    free(out);
    out = bigger;
  }

  return out;
}

/* One word starting at *cp: ProFTPD's rules (a word starting with '#'
 * ends the line; double quotes only at the start of a word, with
 * backslash escapes inside).  NULL at the end of the line.
 */
static char *conf_next_word(const char **cp, int *error) {
  const char *p = *cp;
  char *word, *dst;
  int quoted = 0;

  while (*p != '\0' && isspace((unsigned char) *p)) {
    p++;
  }

  if (*p == '\0' || *p == '#') {
    *cp = p;
    return NULL;
  }

  word = dst = malloc(strlen(p) + 1);
  if (word == NULL) {
    *error = 1;
    return NULL;
  }

  if (*p == '"') {
    quoted = 1;
    p++;
  }

  while (*p != '\0' && (quoted ? *p != '"' : !isspace((unsigned char) *p))) {
    if (quoted && *p == '\\' && p[1] != '\0') {
      p++;
    }
    *dst++ = *p++;
  }

  if (*p != '\0') {
    p++;
  }

  *dst = '\0';
  *cp = p;
  return word;
}

int ftpmailoauth_conf_split(const char *line, char ***words) {
  char **list = NULL, *word;
  int n = 0, size = 0, error = 0;

  *words = NULL;
  while ((word = conf_next_word(&line, &error)) != NULL) {
    char *expanded = conf_expand_env(word);

    free(word);
    if (expanded == NULL) {
      error = 1;
      break;
    }

    if (n + 1 >= size) {
      char **bigger;

      size = size > 0 ? size * 2 : 8;
      bigger = realloc(list, (size_t) size * sizeof(char *));
      if (bigger == NULL) {
        free(expanded);
        error = 1;
        break;
      }
      list = bigger;
    }

    list[n++] = expanded;
    list[n] = NULL;
  }

  if (error) {
    ftpmailoauth_conf_free_words(list, n);
    errno = ENOMEM;
    return -1;
  }

  *words = list;
  return n;
}

/* ------------------------------------------------------------------------
 * Sections.
 */

/* "<IfModule" -> "IfModule"; NULL for "</...>" or anything else. */
static int conf_section_name(const char *word, char *name, size_t namelen,
    int *closing) {
  size_t len;

  if (word[0] != '<') {
    return -1;
  }

  *closing = word[1] == '/';
  word += *closing ? 2 : 1;
  len = strcspn(word, ">");
  if (len == 0 || len >= namelen) {
    return -1;
  }

  memcpy(name, word, len);
  name[len] = '\0';
  return 0;
}

static int conf_section(struct conf_reader *r, const char *word,
    const char *where) {
  char name[64];
  int closing;

  if (conf_section_name(word, name, sizeof(name), &closing) < 0) {
    return 0;
  }

  if (!closing) {
    if (r->nsections >= CONF_MAX_SECTIONS) {
      conf_err(r, "%s: sections nested too deeply", where);
      errno = E2BIG;
      return -1;
    }

    r->sections[r->nsections] = strdup(name);
    if (r->sections[r->nsections] == NULL) {
      errno = ENOMEM;
      return -1;
    }
    r->nsections++;
    return 0;
  }

  if (r->nsections == 0 ||
      strcasecmp(r->sections[r->nsections - 1], name) != 0) {
    conf_err(r, "%s: </%s> without a matching <%s>", where, name, name);
    errno = EINVAL;
    return -1;
  }

  free(r->sections[--r->nsections]);
  return 0;
}

/* The daemon's own User/Group: not those of a <VirtualHost> or
 * <Anonymous>, which the worker never runs as.
 */
static int conf_server_level(const struct conf_reader *r) {
  unsigned int i;

  for (i = 0; i < r->nsections; i++) {
    if (strncasecmp(r->sections[i], "If", 2) != 0 &&
        strcasecmp(r->sections[i], "Global") != 0) {
      return 0;
    }
  }
  return 1;
}

/* ------------------------------------------------------------------------
 * Directives.
 */

static int conf_set(struct ftpmailoauth_conf_value *v, const char *value,
    const char *where) {
  char *nv = strdup(value), *nw = strdup(where);

  if (nv == NULL || nw == NULL) {
    free(nv);
    free(nw);
    errno = ENOMEM;
    return -1;
  }

  free(v->value);
  free(v->where);
  v->value = nv;
  v->where = nw;
  return 0;
}

static int conf_add_account(struct conf_reader *r, char **words, int n,
    const char *where) {
  struct ftpmailoauth_conf *conf = r->conf;
  struct ftpmailoauth_conf_account *acct, *bigger;
  const struct ftpmailoauth_conf_account *dup;
  int i;

  if (n < 2) {
    conf_err(r, "%s: MailOAuthAccount needs a name and key=value settings",
      where);
    errno = EINVAL;
    return -1;
  }

  dup = ftpmailoauth_conf_find(conf, words[1]);
  if (dup != NULL) {
    conf_err(r, "%s: MailOAuthAccount %s is already defined at %s", where,
      words[1], dup->where);
    errno = EEXIST;
    return -1;
  }

  bigger = realloc(conf->accounts, (conf->naccounts + 1) * sizeof(*bigger));
  if (bigger == NULL) {
    errno = ENOMEM;
    return -1;
  }
  conf->accounts = bigger;

  acct = &conf->accounts[conf->naccounts];
  memset(acct, 0, sizeof(*acct));
  acct->name = strdup(words[1]);
  acct->where = strdup(where);
  acct->argv = calloc((size_t) n, sizeof(char *));
  if (acct->name == NULL || acct->where == NULL || acct->argv == NULL) {
    free(acct->name);
    free(acct->where);
    free(acct->argv);
    errno = ENOMEM;
    return -1;
  }

  for (i = 2; i < n; i++) {
    acct->argv[acct->argc] = strdup(words[i]);
    if (acct->argv[acct->argc] == NULL) {
      conf->naccounts++;
      errno = ENOMEM;
      return -1;
    }
    acct->argc++;
  }

  conf->naccounts++;
  return 0;
}

static int conf_read_file(struct conf_reader *r, const char *path);

static int conf_include_dir(struct conf_reader *r, const char *dir) {
  struct dirent **names = NULL;
  int n, i, res = 0;

  n = scandir(dir, &names, NULL, alphasort);
  if (n < 0) {
    return -1;
  }

  for (i = 0; i < n; i++) {
    const char *name = names[i]->d_name;
    size_t len = strlen(name);
    char path[PATH_MAX];
    struct stat st;

    /* Hidden files and editors' backups are not configuration. */
    if (res == 0 &&
        name[0] != '.' &&
        name[len - 1] != '~' &&
        snprintf(path, sizeof(path), "%s/%s", dir, name) < (int) sizeof(path) &&
        stat(path, &st) == 0 &&
        S_ISREG(st.st_mode)) {
      res = conf_read_file(r, path);
    }
    free(names[i]);
  }

  free(names);
  return res;
}

static int conf_include(struct conf_reader *r, const char *pattern,
    const char *from, const char *where) {
  char path[PATH_MAX];
  glob_t g;
  size_t i;
  int res;

  /* Relative to the including file. */
  if (pattern[0] != '/') {
    const char *slash = strrchr(from, '/');
    int dirlen = slash != NULL ? (int) (slash - from) : 1;

    snprintf(path, sizeof(path), "%.*s/%s", dirlen, slash != NULL ? from : ".",
      pattern);
    pattern = path;
  }

  /* No GLOB_ERR: a pattern over a directory that is not there matches
   * nothing, which is fine.
   */
  memset(&g, 0, sizeof(g));
  res = glob(pattern, 0, NULL, &g);
  if (res == GLOB_NOMATCH) {
    globfree(&g);

    /* A pattern matching nothing is fine; a named file must exist. */
    if (strpbrk(pattern, "*?[") != NULL) {
      return 0;
    }
    conf_err(r, "%s: Include %s: %s", where, pattern, strerror(ENOENT));
    errno = ENOENT;
    return -1;
  }

  if (res != 0) {
    globfree(&g);
    conf_err(r, "%s: Include %s: cannot read it", where, pattern);
    errno = EIO;
    return -1;
  }

  for (i = 0; i < g.gl_pathc; i++) {
    struct stat st;

    if (stat(g.gl_pathv[i], &st) == 0 && S_ISDIR(st.st_mode)) {
      res = conf_include_dir(r, g.gl_pathv[i]);
      if (res < 0 && r->errbuf != NULL && r->errbuf[0] == '\0') {
        conf_err(r, "%s: Include %s: %s", where, g.gl_pathv[i],
          strerror(errno));
      }

    } else {
      res = conf_read_file(r, g.gl_pathv[i]);
    }

    if (res < 0) {
      break;
    }
  }

  globfree(&g);
  return res;
}

static int conf_directive(struct conf_reader *r, char **words, int n,
    const char *path, const char *where) {
  const char *d = words[0];

  if (d[0] == '<') {
    return conf_section(r, d, where);
  }

  if (strcasecmp(d, "MailOAuthAccount") == 0) {
    return conf_add_account(r, words, n, where);
  }

  if (strcasecmp(d, "Include") == 0) {
    if (n < 2) {
      conf_err(r, "%s: Include needs a path", where);
      errno = EINVAL;
      return -1;
    }
    return conf_include(r, words[1], path, where);
  }

  if (n < 2) {
    return 0;
  }

  if (strcasecmp(d, "MailOAuthStateDir") == 0) {
    return conf_set(&r->conf->state_dir, words[1], where);
  }

  /* The sign-in must reach every node of a cluster: the tool writes the
   * tokens to the cluster's Redis too.
   */
  if (strcasecmp(d, "MailOAuthRedis") == 0) {
    struct ftpmailoauth_conf_account *rd = &r->conf->redis;
    int i;

    if (rd->argv != NULL) {
      conf_err(r, "%s: MailOAuthRedis is already set at %s", where,
        rd->where);
      errno = EEXIST;
      return -1;
    }
    if (n == 2 && strcasecmp(words[1], "off") == 0) {
      return 0;
    }
    rd->where = strdup(where);
    rd->argv = calloc((size_t) n, sizeof(char *));
    if (rd->where == NULL || rd->argv == NULL) {
      errno = ENOMEM;
      return -1;
    }
    for (i = 1; i < n; i++) {
      if ((rd->argv[rd->argc] = strdup(words[i])) == NULL) {
        errno = ENOMEM;
        return -1;
      }
      rd->argc++;
    }
    return 0;
  }

  if (conf_server_level(r)) {
    if (strcasecmp(d, "User") == 0) {
      return conf_set(&r->conf->user, words[1], where);
    }

    if (strcasecmp(d, "Group") == 0) {
      return conf_set(&r->conf->group, words[1], where);
    }
  }

  return 0;
}

/* A logical line: physical lines joined where one ends in a backslash
 * (the backslash and the line end removed, as ProFTPD does).
 */
static ssize_t conf_logical_line(FILE *fh, char **line, size_t *size,
    unsigned int *lineno, unsigned int *first) {
  char *phys = NULL;
  size_t physsize = 0, len = 0;
  ssize_t n;

  *first = *lineno + 1;
  if (*line != NULL) {
    (*line)[0] = '\0';
  }

  while ((n = getline(&phys, &physsize, fh)) >= 0) {
    size_t plen = (size_t) n;
    int more = 0;

    (*lineno)++;
    while (plen > 0 && (phys[plen - 1] == '\n' || phys[plen - 1] == '\r')) {
      plen--;
    }

    if (plen > 0 && phys[plen - 1] == '\\') {
      plen--;
      more = 1;
    }

    if (len + plen + 1 > CONF_MAX_LINE) {
      free(phys);
      errno = E2BIG;
      return -1;
    }

    if (len + plen + 1 > *size) {
      char *bigger = realloc(*line, len + plen + 1);

      if (bigger == NULL) {
        free(phys);
        errno = ENOMEM;
        return -1;
      }
      *line = bigger;
      *size = len + plen + 1;
    }

    memcpy(*line + len, phys, plen);
    len += plen;
    (*line)[len] = '\0';

    if (!more) {
      free(phys);
      return (ssize_t) len;
    }
  }

  free(phys);
  return len > 0 ? (ssize_t) len : -1;
}

static int conf_read_file(struct conf_reader *r, const char *path) {
  unsigned int lineno = 0, first = 0;
  char *line = NULL;
  size_t size = 0;
  int res = 0;
  FILE *fh;

  if (r->depth >= CONF_MAX_DEPTH) {
    conf_err(r, "%s: Include nested more than %d deep (an Include loop?)",
      path, CONF_MAX_DEPTH);
    errno = ELOOP;
    return -1;
  }

  fh = fopen(path, "re");
  if (fh == NULL) {
    int xerrno = errno;

    conf_err(r, "cannot read %s: %s", path, strerror(xerrno));
    errno = xerrno;
    return -1;
  }

  r->depth++;
  while (res == 0) {
    char **words = NULL, *where;
    ssize_t len;
    int n;

    errno = 0;
    len = conf_logical_line(fh, &line, &size, &lineno, &first);
    if (len < 0) {
      if (errno != 0) {
        conf_err(r, "%s:%u: %s", path, first, strerror(errno));
        res = -1;
      }
      break;
    }

    n = ftpmailoauth_conf_split(line, &words);
    if (n <= 0) {
      ftpmailoauth_conf_free_words(words, n < 0 ? 0 : n);
      if (n < 0) {
        conf_err(r, "%s:%u: out of memory", path, first);
        res = -1;
      }
      continue;
    }

    where = conf_where(path, first);
    res = where != NULL ? conf_directive(r, words, n, path, where) : -1;
    free(where);
    ftpmailoauth_conf_free_words(words, n);
  }

  r->depth--;
  free(line);
  fclose(fh);
  return res;
}

int ftpmailoauth_conf_read(const char *path, struct ftpmailoauth_conf *conf,
    char *errbuf, size_t errlen) {
  struct conf_reader r;
  unsigned int i;
  int res;

  if (path == NULL || conf == NULL) {
    errno = EINVAL;
    return -1;
  }

  memset(&r, 0, sizeof(r));
  r.conf = conf;
  r.errbuf = errbuf;
  r.errlen = errlen;
  if (errbuf != NULL && errlen > 0) {
    errbuf[0] = '\0';
  }

  res = conf_read_file(&r, path);
  if (res == 0 && r.nsections > 0) {
    conf_err(&r, "%s: <%s> is never closed", path,
      r.sections[r.nsections - 1]);
    errno = EINVAL;
    res = -1;
  }

  for (i = 0; i < r.nsections; i++) {
    free(r.sections[i]);
  }
  return res;
}

const struct ftpmailoauth_conf_account *ftpmailoauth_conf_find(
    const struct ftpmailoauth_conf *conf, const char *name) {
  unsigned int i;

  for (i = 0; conf != NULL && name != NULL && i < conf->naccounts; i++) {
    if (strcmp(conf->accounts[i].name, name) == 0) {
      return &conf->accounts[i];
    }
  }
  return NULL;
}

static void conf_value_free(struct ftpmailoauth_conf_value *v) {
  free(v->value);
  free(v->where);
  v->value = v->where = NULL;
}

void ftpmailoauth_conf_free(struct ftpmailoauth_conf *conf) {
  unsigned int i;
  int j;

  if (conf == NULL) {
    return;
  }

  for (i = 0; i < conf->naccounts; i++) {
    struct ftpmailoauth_conf_account *a = &conf->accounts[i];

    for (j = 0; j < a->argc; j++) {
      free(a->argv[j]);
    }
    free(a->argv);
    free(a->name);
    free(a->where);
  }

  free(conf->accounts);
  for (j = 0; j < conf->redis.argc; j++) {
    free(conf->redis.argv[j]);
  }
  free(conf->redis.argv);
  free(conf->redis.where);
  conf_value_free(&conf->state_dir);
  conf_value_free(&conf->user);
  conf_value_free(&conf->group);
  memset(conf, 0, sizeof(*conf));
}
