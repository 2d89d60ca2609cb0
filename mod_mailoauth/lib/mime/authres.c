/*
 * mod_mailoauth - Authentication-Results (RFC 8601) verdicts for routes
 *
 * This program is free software; you can redistribute it and/or modify
 * it under the terms of the GNU General Public License as published by
 * the Free Software Foundation; either version 2 of the License, or
 * (at your option) any later version.
 *
 * The header comes from the network: every loop below advances by at least
 * one byte, nesting is counted rather than recursed, and values are copied
 * only into fixed buffers (too long: the result is dropped, never cut, so
 * that "contoso.com.evil.test" cannot become "contoso.com").
 */

#include "mailoauth/authres.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

/* Characters that end a token (besides white space and controls). */
#define AUTHRES_STOPS_KEY       "();=\"/"
#define AUTHRES_STOPS_VALUE     "();\""

static int authres_is_space(unsigned char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* White space and (possibly nested) comments; an unterminated comment runs
 * to the end.
 */
static size_t authres_skip_cfws(const char *s, size_t n, size_t i) {
  while (i < n) {
    if (authres_is_space((unsigned char) s[i])) {
      i++;

    } else if (s[i] == '(') {
      size_t depth = 0;

      for (; i < n; i++) {
        if (s[i] == '\\' && i + 1 < n) {
          i++;
        } else if (s[i] == '(') {
          depth++;
        } else if (s[i] == ')') {
          if (--depth == 0) {
            i++;
            break;
          }
        }
      }

    } else {
      break;
    }
  }
  return i;
}

/* Past the next ';' outside comments and quoted strings (or to the end). */
static size_t authres_skip_item(const char *s, size_t n, size_t i) {
  while (i < n) {
    if (s[i] == '(') {
      i = authres_skip_cfws(s, n, i);
    } else if (s[i] == '"') {
      for (i++; i < n && s[i] != '"'; i++) {
        if (s[i] == '\\' && i + 1 < n) {
          i++;
        }
      }
      if (i < n) {
        i++;
      }
    } else if (s[i] == ';') {
      return i + 1;
    } else {
      i++;
    }
  }
  return i;
}

/* A token (up to a stop character, white space or a control) or a quoted
 * string, lowercased into out.  Returns its length; -1 when there is none
 * or a quoted string is unterminated, -2 when it does not fit.  *i moves
 * past what was read either way.
 */
static int authres_word(const char *s, size_t n, size_t *i, const char *stops,
    char *out, size_t outlen) {
  size_t k = *i, w = 0;
  int fits = 1;

  if (k < n && s[k] == '"') {
    for (k++; k < n && s[k] != '"'; k++) {
      if (s[k] == '\\' && k + 1 < n) {
        k++;
      }
      if (w + 1 < outlen) {
        out[w++] = (char) tolower((unsigned char) s[k]);
      } else {
        fits = 0;
      }
    }
    if (k >= n) {
      *i = k;
      return -1;
    }
    *i = k + 1;

  } else {
    while (k < n && (unsigned char) s[k] > 0x20 && s[k] != 0x7f &&
        strchr(stops, s[k]) == NULL) {
      if (w + 1 < outlen) {
        out[w++] = (char) tolower((unsigned char) s[k]);
      } else {
        fits = 0;
      }
      k++;
    }
    *i = k;
    if (w == 0) {
      return -1;
    }
  }

  out[w] = '\0';
  return fits ? (int) w : -2;
}

static unsigned int authres_method(const char *name) {
  if (strcmp(name, "spf") == 0) {
    return MAILOAUTH_AUTHRES_SPF;
  }
  if (strcmp(name, "dkim") == 0) {
    return MAILOAUTH_AUTHRES_DKIM;
  }
  if (strcmp(name, "dmarc") == 0) {
    return MAILOAUTH_AUTHRES_DMARC;
  }
  return 0;
}

/* Whether a name read (perhaps from a quoted string) is one word. */
static int authres_clean(const char *s) {
  for (; *s != '\0'; s++) {
    if ((unsigned char) *s <= 0x20 || *s == 0x7f) {
      return 0;
    }
  }
  return 1;
}

/* The domain of "user@domain", "@domain" or "domain"; "" when none or not
 * one word.
 */
static const char *authres_domain_of(const char *v) {
  const char *at = strrchr(v, '@');

  v = at ? at + 1 : v;
  return authres_clean(v) ? v : "";
}

/* One resinfo ("method=result props...") from s[*i] up to the next ';'.
 * A malformed one is skipped whole.
 */
static void authres_resinfo(const char *s, size_t n, size_t *i,
    struct mailoauth_authres *ar) {
  char name[64], result[64], key[64];
  char value[MAILOAUTH_AUTHRES_NAME_MAX + 1];
  char dom[MAILOAUTH_AUTHRES_NAME_MAX + 1] = "", hdr_i[sizeof(dom)] = "";
  unsigned int method = 0;
  size_t k = authres_skip_cfws(s, n, *i);
  int dup = 0, bad = 0, have_dom = 0, have_i = 0;

  if (authres_word(s, n, &k, AUTHRES_STOPS_KEY, name, sizeof(name)) < 0) {
    goto skip;
  }
  method = authres_method(name);
  k = authres_skip_cfws(s, n, k);
  if (k < n && s[k] == '/') {
    char version[16];

    k = authres_skip_cfws(s, n, k + 1);
    if (authres_word(s, n, &k, AUTHRES_STOPS_KEY, version,
        sizeof(version)) < 0) {
      goto skip;
    }
    k = authres_skip_cfws(s, n, k);
  }
  if (k >= n || s[k] != '=') {
    goto skip;
  }
  k = authres_skip_cfws(s, n, k + 1);
  if (authres_word(s, n, &k, AUTHRES_STOPS_KEY, result, sizeof(result)) < 0) {
    goto skip;
  }

  /* reason= and ptype.property= pairs */
  for (;;) {
    int vlen;

    k = authres_skip_cfws(s, n, k);
    if (k >= n || s[k] == ';') {
      break;
    }
    if (authres_word(s, n, &k, AUTHRES_STOPS_KEY, key, sizeof(key)) < 0) {
      goto skip;
    }
    k = authres_skip_cfws(s, n, k);
    if (k >= n || s[k] != '=') {
      goto skip;
    }
    k = authres_skip_cfws(s, n, k + 1);
    vlen = authres_word(s, n, &k, AUTHRES_STOPS_VALUE, value, sizeof(value));
    if (vlen == -1) {
      /* "smtp.mailfrom=" with nothing after it: no domain */
      if (k < n && s[k] == ')') {
        goto skip;
      }
      value[0] = '\0';
    }

    if ((method == MAILOAUTH_AUTHRES_SPF &&
         strcmp(key, "smtp.mailfrom") == 0) ||
        (method == MAILOAUTH_AUTHRES_DKIM && strcmp(key, "header.d") == 0) ||
        (method == MAILOAUTH_AUTHRES_DMARC &&
         strcmp(key, "header.from") == 0)) {
      /* Never cut: what is left could be another name.  Other long
       * values (a reason=, a header.b=) do not matter.
       */
      bad |= vlen == -2;
      dup |= have_dom;
      have_dom = 1;
      strcpy(dom, vlen == -2 ? "" : authres_domain_of(value));

    } else if (method == MAILOAUTH_AUTHRES_DKIM &&
        strcmp(key, "header.i") == 0) {
      bad |= vlen == -2;
      dup |= have_i;
      have_i = 1;
      strcpy(hdr_i, vlen == -2 ? "" : authres_domain_of(value));
    }
  }
  *i = k;

  if (method == 0) {
    return;
  }
  if (bad) {
    ar->overflow = 1;
    return;
  }
  if (ar->nresults >= MAILOAUTH_AUTHRES_MAX_RESULTS) {
    ar->overflow = 1;
    return;
  }

  {
    struct mailoauth_authres_result *r = &ar->results[ar->nresults++];

    r->method = method;
    /* Two identities of one kind in one result: which one passed is not
     * clear, so it passed for neither.
     */
    r->pass = strcmp(result, "pass") == 0 && !dup;
    strcpy(r->domain, have_dom ? dom : hdr_i);
  }
  return;

skip:
  /* An spf, dkim or dmarc result that cannot be read may be the one that
   * failed: the header is not to be relied on.
   */
  if (method != 0) {
    ar->overflow = 1;
  }
  *i = authres_skip_item(s, n, k);
  if (*i > 0 && s[*i - 1] == ';') {
    (*i)--;
  }
}

void mailoauth_authres_parse(const char *s, size_t n,
    struct mailoauth_authres *ar) {
  size_t i, start;
  char id[MAILOAUTH_AUTHRES_NAME_MAX + 1];
  int wlen;

  memset(ar, 0, sizeof(*ar));
  if (s == NULL) {
    return;
  }

  i = start = authres_skip_cfws(s, n, 0);
  wlen = authres_word(s, n, &i, AUTHRES_STOPS_KEY, id, sizeof(id));
  if (wlen == -2) {
    return;             /* nothing to trust in it */
  }
  if (wlen >= 0) {
    size_t k = authres_skip_cfws(s, n, i);

    if (k < n && (s[k] == '=' || s[k] == '/')) {
      /* "spf=pass ...": no authserv-id (Exchange Online). */
      i = start;

    } else {
      if (!authres_clean(id)) {
        return;         /* a quoted id no server writes */
      }
      ar->has_id = 1;
      strcpy(ar->authserv_id, id);
      i = k;
      /* authres-version */
      while (i < n && isdigit((unsigned char) s[i])) {
        i++;
      }
      i = authres_skip_cfws(s, n, i);
      if (i < n && s[i] != ';') {
        /* Something else follows the id: not a header we can read. */
        ar->has_id = 0;
        ar->authserv_id[0] = '\0';
        return;
      }
    }

  } else if (i < n && s[i] != ';') {
    return;             /* an unterminated quoted string */
  }

  while (i < n) {
    size_t before = i;

    if (s[i] == ';') {
      i++;
    }
    authres_resinfo(s, n, &i, ar);
    if (i <= before) {
      i = before + 1;
    }
  }
}

int mailoauth_authres_methods(const char *list, unsigned int *methods) {
  const char *p = list;

  *methods = 0;
  if (list == NULL || *list == '\0') {
    return -1;
  }

  while (*p != '\0') {
    const char *comma = strchr(p, ',');
    size_t len = comma ? (size_t) (comma - p) : strlen(p);
    char name[8];
    unsigned int m = 0;

    if (len > 0 && len < sizeof(name)) {
      size_t k;

      for (k = 0; k < len; k++) {
        name[k] = (char) tolower((unsigned char) p[k]);
      }
      name[len] = '\0';
      m = authres_method(name);
    }
    if (m == 0) {
      return -1;
    }
    *methods |= m;
    p += len + (comma ? 1 : 0);
    if (comma != NULL && *p == '\0') {
      return -1;
    }
  }

  return 0;
}

/* a equals b, ignoring case and one trailing dot on either. */
static int authres_same_domain(const char *a, size_t alen, const char *b,
    size_t blen) {
  if (alen > 0 && a[alen - 1] == '.') {
    alen--;
  }
  if (blen > 0 && b[blen - 1] == '.') {
    blen--;
  }
  return alen > 0 && alen == blen && strncasecmp(a, b, alen) == 0;
}

/* Whether child is parent or below it ("mail.contoso.com", "contoso.com"). */
static int authres_within(const char *child, const char *parent) {
  size_t clen = strlen(child), plen = strlen(parent);

  if (clen > 0 && child[clen - 1] == '.') {
    clen--;
  }
  if (plen > 0 && parent[plen - 1] == '.') {
    plen--;
  }
  if (plen == 0 || memchr(parent, '.', plen) == NULL) {
    return 0;           /* never a top-level domain */
  }
  if (authres_same_domain(child, clen, parent, plen)) {
    return 1;
  }
  return clen > plen && child[clen - plen - 1] == '.' &&
    authres_same_domain(child + clen - plen, plen, parent, plen);
}

static int authres_aligned(const struct mailoauth_authres_result *r,
    const char *from_dom) {
  if (r->method == MAILOAUTH_AUTHRES_DMARC) {
    return authres_same_domain(r->domain, strlen(r->domain), from_dom,
      strlen(from_dom));
  }
  return authres_within(r->domain, from_dom) ||
    authres_within(from_dom, r->domain);
}

/* The headers the receiving system wrote, at most this many. */
#define AUTHRES_MAX_TRUSTED     8

int mailoauth_authres_verify(const char *headers, const char *authserv_id,
    unsigned int methods, const char *from_addr) {
  static const unsigned int all[] = {
    MAILOAUTH_AUTHRES_SPF, MAILOAUTH_AUTHRES_DKIM, MAILOAUTH_AUTHRES_DMARC
  };
  struct mailoauth_authres trusted[AUTHRES_MAX_TRUSTED];
  size_t ntrusted = 0, m, h, r;
  const char *p = headers, *from_dom;

  if (headers == NULL || from_addr == NULL || methods == 0 ||
      strchr(from_addr, '@') == NULL) {
    return 0;
  }
  from_dom = strrchr(from_addr, '@') + 1;
  if (*from_dom == '\0') {
    return 0;
  }

  while (*p != '\0' && ntrusted < AUTHRES_MAX_TRUSTED) {
    const char *nl = strchr(p, '\n');
    size_t len = nl ? (size_t) (nl - p) : strlen(p);
    struct mailoauth_authres *ar = &trusted[ntrusted];

    mailoauth_authres_parse(p, len, ar);
    if (authserv_id == NULL) {
      if (ar->has_id) {
        return 0;
      }
      ntrusted = 1;
      break;
    }
    if (!ar->has_id || strcasecmp(ar->authserv_id, authserv_id) != 0) {
      break;
    }
    ntrusted++;
    p += len + (nl ? 1 : 0);
  }

  for (m = 0; m < sizeof(all) / sizeof(all[0]); m++) {
    int decided = 0, ok = 0;

    if ((methods & all[m]) == 0) {
      continue;
    }
    for (h = 0; h < ntrusted && !decided; h++) {
      if (trusted[h].overflow) {
        return 0;
      }
      for (r = 0; r < trusted[h].nresults; r++) {
        const struct mailoauth_authres_result *res = &trusted[h].results[r];

        if (res->method != all[m]) {
          continue;
        }
        decided = 1;
        if (res->pass && authres_aligned(res, from_dom)) {
          ok = 1;
        }
      }
    }
    if (!ok) {
      return 0;
    }
  }

  return 1;
}
