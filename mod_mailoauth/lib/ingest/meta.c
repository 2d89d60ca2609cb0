/*
 * mod_mailoauth - the metadata file deposited beside a message's files
 *
 * This program is free software; you can redistribute it and/or modify
 * it under the terms of the GNU General Public License as published by
 * the Free Software Foundation; either version 2 of the License, or
 * (at your option) any later version.
 */

#include "mailoauth/meta.h"
#include "mailoauth/jsonwrap.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int meta_set_str(json_t *obj, const char *key, const char *value) {
  /* Mail headers decode to UTF-8 already; anything that is not (a broken
   * charset) is left out rather than failing the whole document.
   */
  json_t *v = json_string(value ? value : "");

  if (v == NULL) {
    v = json_string("");
  }
  return json_object_set_new(obj, key, v);
}

static json_t *meta_recipients(const char *list) {
  json_t *arr = json_array();
  const char *p = list ? list : "";

  while (arr != NULL && *p != '\0') {
    const char *comma = strchr(p, ',');
    size_t n = comma ? (size_t) (comma - p) : strlen(p);

    if (n > 0) {
      json_t *s = json_stringn(p, n);

      if (s != NULL && json_array_append_new(arr, s) < 0) {
        json_decref(arr);
        return NULL;
      }
    }
    p += n + (comma ? 1 : 0);
  }

  return arr;
}

static json_t *meta_file(const struct mailoauth_meta_file *f) {
  static const char hex[] = "0123456789abcdef";
  char digest[MAILOAUTH_META_SHA256_LEN * 2 + 1];
  json_t *o = json_object();
  size_t i;

  if (o == NULL) {
    return NULL;
  }

  for (i = 0; i < MAILOAUTH_META_SHA256_LEN; i++) {
    digest[2*i] = hex[f->sha256[i] >> 4];
    digest[2*i+1] = hex[f->sha256[i] & 0xf];
  }
  digest[sizeof(digest) - 1] = '\0';

  if (meta_set_str(o, "name", f->name) < 0 ||
      (f->original != NULL &&
       meta_set_str(o, "original_name", f->original) < 0) ||
      meta_set_str(o, "content_type", f->content_type) < 0 ||
      json_object_set_new(o, "size", json_integer((json_int_t) f->size)) < 0 ||
      meta_set_str(o, "sha256", digest) < 0 ||
      json_object_set_new(o, "complete",
        json_boolean(!f->incomplete)) < 0 ||
      (f->is_message &&
       json_object_set_new(o, "message", json_true()) < 0)) {
    json_decref(o);
    return NULL;
  }

  return o;
}

char *mailoauth_meta_json(const struct mailoauth_meta *m, size_t *len) {
  json_t *root, *files, *rcpts;
  char taken[32], *out = NULL;
  struct tm tm;
  size_t i;

  root = json_object();
  files = json_array();
  rcpts = meta_recipients(m->recipients);
  if (root == NULL || files == NULL || rcpts == NULL) {
    goto fail;
  }

  gmtime_r(&m->taken, &tm);
  strftime(taken, sizeof(taken), "%Y-%m-%dT%H:%M:%SZ", &tm);

  for (i = 0; i < m->nfiles; i++) {
    json_t *f = meta_file(&m->files[i]);

    if (f == NULL || json_array_append_new(files, f) < 0) {
      goto fail;
    }
  }

  if (meta_set_str(root, "task", m->task) < 0 ||
      meta_set_str(root, "account", m->account) < 0 ||
      meta_set_str(root, "folder", m->folder) < 0 ||
      json_object_set_new(root, "uidvalidity",
        json_integer(m->uidvalidity)) < 0 ||
      json_object_set_new(root, "uid", json_integer(m->uid)) < 0 ||
      meta_set_str(root, "message_id", m->message_id) < 0 ||
      meta_set_str(root, "from", m->from) < 0 ||
      meta_set_str(root, "from_address", m->from_addr) < 0 ||
      json_object_set(root, "recipients", rcpts) < 0 ||
      meta_set_str(root, "subject", m->subject) < 0 ||
      meta_set_str(root, "date", m->date) < 0 ||
      meta_set_str(root, "taken", taken) < 0 ||
      json_object_set(root, "files", files) < 0) {
    goto fail;
  }

  out = json_dumps(root, JSON_INDENT(2)|JSON_PRESERVE_ORDER);
  if (out != NULL && len != NULL) {
    *len = strlen(out);
  }

fail:
  if (out == NULL) {
    errno = ENOMEM;
  }
  json_decref(files);
  json_decref(rcpts);
  json_decref(root);
  return out;
}

int mailoauth_meta_add_file(struct mailoauth_meta_file **files, size_t *n,
    const struct mailoauth_meta_file *f) {
  struct mailoauth_meta_file *grown, *d;

  grown = realloc(*files, (*n + 1) * sizeof(**files));
  if (grown == NULL) {
    return -1;
  }
  *files = grown;

  d = &grown[*n];
  *d = *f;
  d->name = strdup(f->name ? f->name : "");
  d->original = f->original ? strdup(f->original) : NULL;
  d->content_type = strdup(f->content_type ? f->content_type : "");
  if (d->name == NULL || d->content_type == NULL ||
      (f->original != NULL && d->original == NULL)) {
    free(d->name);
    free(d->original);
    free(d->content_type);
    errno = ENOMEM;
    return -1;
  }

  (*n)++;
  return 0;
}

void mailoauth_meta_free_files(struct mailoauth_meta_file *files, size_t n) {
  size_t i;

  for (i = 0; i < n; i++) {
    free(files[i].name);
    free(files[i].original);
    free(files[i].content_type);
  }
  free(files);
}
