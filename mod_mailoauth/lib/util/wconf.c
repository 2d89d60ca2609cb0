/*
 * mod_mailoauth - the configuration the master hands to mailoauthd
 */

#include "mailoauth/wconf.h"
#include "mailoauth/imsg.h"
#include "mailoauth/jsonwrap.h"
#include "mailoauth/trace.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static void *wconf_keep(struct mailoauth_wconf *w, void *ptr) {
  if (ptr == NULL) {
    return NULL;
  }

  if (w->nallocs == w->allocs_size) {
    size_t n = w->allocs_size ? w->allocs_size * 2 : 32;
    void **grown = realloc(w->allocs, n * sizeof(*grown));

    if (grown == NULL) {
      free(ptr);
      return NULL;
    }
    w->allocs = grown;
    w->allocs_size = n;
  }

  w->allocs[w->nallocs++] = ptr;
  return ptr;
}

static void *wconf_calloc(struct mailoauth_wconf *w, size_t n, size_t size) {
  return wconf_keep(w, calloc(n ? n : 1, size));
}

static char *wconf_strdup(struct mailoauth_wconf *w, const char *s) {
  return wconf_keep(w, strdup(s));
}

void mailoauth_wconf_free(struct mailoauth_wconf *w) {
  size_t i;

  for (i = 0; i < w->nallocs; i++) {
    free(w->allocs[i]);
  }
  free(w->allocs);
  memset(w, 0, sizeof(*w));
}

/* A string of the document, copied; NULL when absent or not a string. */
static const char *wconf_str(struct mailoauth_wconf *w, json_t *obj,
    const char *key) {
  json_t *v = json_object_get(obj, key);

  return json_is_string(v) ? wconf_strdup(w, json_string_value(v)) : NULL;
}

static int wconf_id(json_t *obj, const char *key, unsigned long *id) {
  json_t *v = json_object_get(obj, key);

  if (!json_is_integer(v) ||
      json_integer_value(v) < 0 ||
      json_integer_value(v) > (json_int_t) UINT32_MAX) {
    return -1;
  }

  *id = (unsigned long) json_integer_value(v);
  return 0;
}

/* "key=value" split in a copy; NULL when there is no '='. */
static char *wconf_split(struct mailoauth_wconf *w, json_t *item,
    char **value) {
  char *arg, *eq;

  if (!json_is_string(item)) {
    return NULL;
  }

  arg = wconf_strdup(w, json_string_value(item));
  if (arg == NULL ||
      (eq = strchr(arg, '=')) == NULL) {
    return NULL;
  }

  *eq = '\0';
  *value = eq + 1;
  return arg;
}

static int wconf_owner(const char *value, uid_t *uid, gid_t *gid) {
  char *end = NULL;
  unsigned long u, g;

  u = strtoul(value, &end, 10);
  if (end == value || *end != ':') {
    return -1;
  }
  value = end + 1;
  g = strtoul(value, &end, 10);
  if (end == value || *end != '\0' || u == 0 || g == 0) {
    return -1;
  }

  *uid = (uid_t) u;
  *gid = (gid_t) g;
  return 0;
}

static int wconf_route(struct mailoauth_wconf *w,
    struct mailoauth_ingest_config *cfg, json_t *args, char *errbuf,
    size_t errlen) {
  struct mailoauth_route *route;
  json_t *item;
  size_t i;

  if (cfg->nroutes >= MAILOAUTH_INGEST_MAX_ROUTES ||
      !json_is_array(args)) {
    mailoauth_errf(errbuf, errlen, "task %s: bad route list", cfg->name);
    return -1;
  }

  route = wconf_calloc(w, 1, sizeof(*route));
  if (route == NULL) {
    mailoauth_errf(errbuf, errlen, "out of memory");
    return -1;
  }
  route->uid = cfg->uid;
  route->gid = cfg->gid;
  route->authserv_id = cfg->filter.authserv_id;

  json_array_foreach(args, i, item) {
    char *key, *value = NULL;

    key = wconf_split(w, item, &value);
    if (key == NULL) {
      mailoauth_errf(errbuf, errlen, "task %s: bad route setting",
        cfg->name);
      return -1;
    }

    if (strcasecmp(key, "dir") == 0) {
      if (mailoauth_ingest_check_dir(value, errbuf, errlen) < 0) {
        return -1;
      }
      route->dir = value;

    } else if (strcasecmp(key, "owner") == 0) {
      if (wconf_owner(value, &route->uid, &route->gid) < 0) {
        mailoauth_errf(errbuf, errlen, "task %s: bad route owner",
          cfg->name);
        return -1;
      }

    } else if (mailoauth_route_parse_setting(route, key, value, errbuf,
        errlen) != 0) {
      return -1;
    }
  }

  if (route->dir == NULL) {
    mailoauth_errf(errbuf, errlen, "task %s: route without dir", cfg->name);
    return -1;
  }

  cfg->routes[cfg->nroutes++] = route;
  return 0;
}

static int wconf_task(struct mailoauth_wconf *w, json_t *task,
    struct mailoauth_ingest_config **out, char *errbuf, size_t errlen) {
  struct mailoauth_ingest_config *cfg;
  json_t *args, *routes, *item;
  size_t i;

  args = json_object_get(task, "args");
  routes = json_object_get(task, "routes");
  if (!json_is_array(args) ||
      json_array_size(args) < 1 ||
      !json_is_string(json_array_get(args, 0))) {
    mailoauth_errf(errbuf, errlen, "a task without arguments");
    return -1;
  }

  cfg = wconf_calloc(w, 1, sizeof(*cfg));
  if (cfg == NULL) {
    mailoauth_errf(errbuf, errlen, "out of memory");
    return -1;
  }
  mailoauth_ingest_config_init(cfg);
  cfg->name = wconf_strdup(w, json_string_value(json_array_get(args, 0)));

  json_array_foreach(args, i, item) {
    char *key, *value = NULL;

    if (i == 0) {
      continue;
    }

    key = wconf_split(w, item, &value);
    if (key == NULL) {
      mailoauth_errf(errbuf, errlen, "task %s: bad setting", cfg->name);
      return -1;
    }

    if (strcasecmp(key, "every") == 0) {
      char *end = NULL;
      unsigned long secs = strtoul(value, &end, 10);

      if (end == value || *end != '\0' || secs == 0 || secs > UINT32_MAX) {
        mailoauth_errf(errbuf, errlen, "task %s: bad every=", cfg->name);
        return -1;
      }
      cfg->every = (unsigned int) secs;

    } else if (strcasecmp(key, "owner") == 0) {
      if (wconf_owner(value, &cfg->uid, &cfg->gid) < 0) {
        mailoauth_errf(errbuf, errlen, "task %s: bad owner=", cfg->name);
        return -1;
      }

    } else if (mailoauth_ingest_parse_setting(cfg, key, value, errbuf,
        errlen) < 0) {
      return -1;
    }
  }

  if (cfg->account == NULL || cfg->dir == NULL || cfg->every == 0 ||
      cfg->uid == 0) {
    mailoauth_errf(errbuf, errlen, "task %s: incomplete", cfg->name);
    return -1;
  }

  if (routes != NULL) {
    json_array_foreach(routes, i, item) {
      if (wconf_route(w, cfg, item, errbuf, errlen) < 0) {
        return -1;
      }
    }
  }

  *out = cfg;
  return 0;
}

static int wconf_accounts(struct mailoauth_wconf *w, json_t *list,
    char *errbuf, size_t errlen) {
  json_t *acct;
  size_t i;

  w->accounts = wconf_calloc(w, json_array_size(list), sizeof(*w->accounts));
  if (w->accounts == NULL) {
    mailoauth_errf(errbuf, errlen, "out of memory");
    return -1;
  }

  json_array_foreach(list, i, acct) {
    struct mailoauth_wconf_account *a = &w->accounts[i];
    size_t j, n = json_array_size(acct);

    if (!json_is_array(acct) || n < 1) {
      mailoauth_errf(errbuf, errlen, "bad account entry");
      return -1;
    }

    a->argv = wconf_calloc(w, n, sizeof(char *));
    if (a->argv == NULL) {
      mailoauth_errf(errbuf, errlen, "out of memory");
      return -1;
    }
    for (j = 0; j < n; j++) {
      json_t *s = json_array_get(acct, j);

      if (!json_is_string(s)) {
        mailoauth_errf(errbuf, errlen, "bad account entry");
        return -1;
      }
      if (j == 0) {
        a->name = wconf_strdup(w, json_string_value(s));
      } else {
        a->argv[a->argc++] = wconf_strdup(w, json_string_value(s));
      }
    }
    w->naccounts++;
  }

  return 0;
}

/* MailOAuthRedis's words, checked again by the worker's own parse. */
static int wconf_redis(struct mailoauth_wconf *w, json_t *list,
    char *errbuf, size_t errlen) {
  json_t *s;
  size_t i, n;

  if (list == NULL) {
    return 0;
  }

  n = json_array_size(list);
  if (!json_is_array(list) || n < 1) {
    mailoauth_errf(errbuf, errlen, "configuration: bad redis entry");
    return -1;
  }

  w->redis_argv = wconf_calloc(w, n + 1, sizeof(char *));
  if (w->redis_argv == NULL) {
    mailoauth_errf(errbuf, errlen, "out of memory");
    return -1;
  }

  json_array_foreach(list, i, s) {
    if (!json_is_string(s) ||
        (w->redis_argv[i] = wconf_strdup(w, json_string_value(s))) == NULL) {
      mailoauth_errf(errbuf, errlen, "configuration: bad redis entry");
      return -1;
    }
  }
  w->redis_argc = (int) n;
  return 0;
}

static int wconf_trace(struct mailoauth_wconf *w, json_t *obj) {
  const char *key;
  json_t *v;
  size_t n = 0;

  w->trace_channels = wconf_calloc(w, json_object_size(obj) + 1,
    sizeof(char *));
  w->trace_levels = wconf_calloc(w, json_object_size(obj) + 1, sizeof(int));
  if (w->trace_channels == NULL ||
      w->trace_levels == NULL) {
    return -1;
  }

  json_object_foreach(obj, key, v) {
    if (json_is_integer(v)) {
      w->trace_channels[n] = wconf_strdup(w, key);
      w->trace_levels[n] = (int) json_integer_value(v);
      n++;
    }
  }

  return 0;
}

int mailoauth_wconf_parse(struct mailoauth_wconf *w, const char *json,
    size_t len, char *errbuf, size_t errlen) {
  json_error_t jerr;
  json_t *root, *v;
  unsigned long id;
  size_t i;
  int res = -1;

  memset(w, 0, sizeof(*w));

  root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
  if (root == NULL) {
    mailoauth_errf(errbuf, errlen, "configuration: %s", jerr.text);
    return -1;
  }

  if (!json_is_object(root) ||
      json_integer_value(json_object_get(root, "version")) != 1) {
    mailoauth_errf(errbuf, errlen, "configuration: not version 1");
    goto out;
  }

  w->state_dir = wconf_str(w, root, "state_dir");
  w->signin_fmt = wconf_str(w, root, "signin");
  w->program = wconf_str(w, root, "program");
  if (w->state_dir == NULL ||
      w->signin_fmt == NULL ||
      w->program == NULL) {
    mailoauth_errf(errbuf, errlen, "configuration: state_dir, signin or "
      "program missing");
    goto out;
  }

  v = json_object_get(root, "metrics_file");
  if (v != NULL) {
    w->metrics_file = wconf_str(w, root, "metrics_file");
    if (w->metrics_file == NULL ||
        w->metrics_file[0] != '/') {
      mailoauth_errf(errbuf, errlen, "configuration: metrics_file must be "
        "an absolute path");
      goto out;
    }
  }

  if (wconf_id(root, "uid", &id) < 0) {
    mailoauth_errf(errbuf, errlen, "configuration: bad uid");
    goto out;
  }
  w->uid = (uid_t) id;
  if (wconf_id(root, "gid", &id) < 0) {
    mailoauth_errf(errbuf, errlen, "configuration: bad gid");
    goto out;
  }
  w->gid = (gid_t) id;

  if (wconf_trace(w, json_object_get(root, "trace")) < 0 ||
      wconf_accounts(w, json_object_get(root, "accounts"), errbuf,
        errlen) < 0 ||
      wconf_redis(w, json_object_get(root, "redis"), errbuf, errlen) < 0) {
    goto out;
  }

  v = json_object_get(root, "tasks");
  w->tasks = wconf_calloc(w, json_array_size(v), sizeof(*w->tasks));
  if (w->tasks == NULL) {
    goto out;
  }
  for (i = 0; i < json_array_size(v); i++) {
    if (wconf_task(w, json_array_get(v, i), &w->tasks[i], errbuf,
        errlen) < 0) {
      goto out;
    }
    w->ntasks++;
  }

  res = 0;

out:
  json_decref(root);
  if (res < 0) {
    mailoauth_wconf_free(w);
  }
  return res;
}

int mailoauth_wconf_trace_level(const struct mailoauth_wconf *w,
    const char *channel) {
  size_t i;

  for (i = 0; w->trace_channels != NULL && w->trace_channels[i] != NULL;
       i++) {
    if (strcmp(w->trace_channels[i], channel) == 0) {
      return w->trace_levels[i];
    }
  }

  return 0;
}

/* The document goes in imsg chunks: a configuration may be larger than
 * one datagram.
 */
#define WCONF_IMSG_PART         1
#define WCONF_IMSG_END          2
#define WCONF_CHUNK             (MAILOAUTH_IMSG_MAX - 1024)

int mailoauth_wconf_send(int fd, const char *json, size_t len) {
  size_t off = 0;

  if (len > MAILOAUTH_WCONF_MAX) {
    errno = EMSGSIZE;
    return -1;
  }

  while (len - off > WCONF_CHUNK) {
    if (mailoauth_imsg_send(fd, WCONF_IMSG_PART, 0, json + off, WCONF_CHUNK,
        NULL, 0) < 0) {
      return -1;
    }
    off += WCONF_CHUNK;
  }

  return mailoauth_imsg_send(fd, WCONF_IMSG_END, 0, json + off, len - off,
    NULL, 0);
}

char *mailoauth_wconf_recv(int fd, size_t *len) {
  unsigned char *buf;
  char *doc = NULL;
  size_t have = 0;
  int xerrno = 0;

  buf = malloc(MAILOAUTH_IMSG_HDR + MAILOAUTH_IMSG_MAX);
  if (buf == NULL) {
    return NULL;
  }

  for (;;) {
    struct mailoauth_imsg msg;
    char *grown;
    int res;

    res = mailoauth_imsg_recv(fd, &msg, buf,
      MAILOAUTH_IMSG_HDR + MAILOAUTH_IMSG_MAX, 0);
    if (res < 0 && errno == EINTR) {
      continue;
    }
    if (res <= 0) {
      xerrno = res == 0 ? EPIPE : errno;
      break;
    }
    mailoauth_imsg_close_fds(&msg);

    if ((msg.type != WCONF_IMSG_PART && msg.type != WCONF_IMSG_END) ||
        have + msg.len > MAILOAUTH_WCONF_MAX) {
      xerrno = EBADMSG;
      break;
    }

    grown = realloc(doc, have + msg.len + 1);
    if (grown == NULL) {
      xerrno = ENOMEM;
      break;
    }
    doc = grown;
    memcpy(doc + have, msg.data, msg.len);
    have += msg.len;
    doc[have] = '\0';

    if (msg.type == WCONF_IMSG_END) {
      free(buf);
      *len = have;
      return doc;
    }
  }

  free(buf);
  free(doc);
  errno = xerrno;
  return NULL;
}
