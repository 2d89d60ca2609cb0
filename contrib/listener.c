/*
 * ftpmailoauth - the local web server that receives the browser sign-in
 */

#include "mailoauth/trace.h"
#include "listener.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/crypto.h>

#define LISTENER_MAX_SOCKS        8
#define LISTENER_MAX_CLIENTS      16
#define LISTENER_REQUEST_MAX      16384

/* Browsers open connections they may never use (preconnect): one of those
 * must not hold up the real request, nor live forever.
 */
#define LISTENER_CLIENT_TIMEOUT   15

struct listener_client {
  int fd;
  time_t started;
  size_t len;
  char buf[LISTENER_REQUEST_MAX];
};

struct ftpmailoauth_listener {
  int socks[LISTENER_MAX_SOCKS];
  unsigned int nsocks;
  char *path;
  char port[16];
  char where[512];
  struct listener_client clients[LISTENER_MAX_CLIENTS];
  int pending_fd;
};

/* ------------------------------------------------------------------------
 * Binding.
 */

static void listener_add_where(struct ftpmailoauth_listener *l,
    const struct sockaddr *sa, const char *port) {
  char host[INET6_ADDRSTRLEN];
  size_t len = strlen(l->where);
  const void *addr = sa->sa_family == AF_INET6 ?
    (const void *) &((const struct sockaddr_in6 *) sa)->sin6_addr :
    (const void *) &((const struct sockaddr_in *) sa)->sin_addr;

  if (inet_ntop(sa->sa_family, addr, host, sizeof(host)) == NULL) {
    return;
  }

  snprintf(l->where + len, sizeof(l->where) - len,
    sa->sa_family == AF_INET6 ? "%s[%s]:%s" : "%s%s:%s", len > 0 ? ", " : "",
    host, port);
}

static int listener_bind_one(struct ftpmailoauth_listener *l,
    const struct addrinfo *ai, const char *port) {
  int fd, one = 1, xerrno;

  if (l->nsocks >= LISTENER_MAX_SOCKS) {
    return 0;
  }

  fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
    ai->ai_protocol);
  if (fd < 0) {
    return -1;
  }

  (void) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (ai->ai_family == AF_INET6) {
    (void) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  }

  if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 ||
      listen(fd, 16) < 0) {
    xerrno = errno;
    close(fd);
    errno = xerrno;
    return -1;
  }

  l->socks[l->nsocks++] = fd;
  listener_add_where(l, ai->ai_addr, port);
  return 0;
}

/* "localhost" is both loopback addresses whatever /etc/hosts says: the
 * browser may try either.
 */
static int listener_bind(struct ftpmailoauth_listener *l, const char *host,
    const char *port, char *errbuf, size_t errlen) {
  static const char *loopback[] = { "127.0.0.1", "::1", NULL };
  const char *one[2] = { host, NULL };
  const char **hosts = strcasecmp(host, "localhost") == 0 ? loopback : one;
  int first_errno = 0, res;
  unsigned int i;

  for (i = 0; hosts[i] != NULL; i++) {
    struct addrinfo hints, *ai = NULL, *p;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;

    res = getaddrinfo(hosts[i], port, &hints, &ai);
    if (res != 0) {
      if (first_errno == 0) {
        mailoauth_errf(errbuf, errlen, "cannot resolve redirect host '%s': %s",
          hosts[i], gai_strerror(res));
        first_errno = ENOENT;
      }
      continue;
    }

    for (p = ai; p != NULL; p = p->ai_next) {
      int xerrno;

      if (listener_bind_one(l, p, port) == 0) {
        continue;
      }

      /* An address this host lacks (often ::1) is no loss; one that
       * another program holds is: the browser might reach that program.
       */
      xerrno = errno;
      if (xerrno == EADDRNOTAVAIL || xerrno == EAFNOSUPPORT) {
        if (first_errno == 0) {
          first_errno = xerrno;
        }
        continue;
      }

      freeaddrinfo(ai);
      mailoauth_errf(errbuf, errlen, "cannot listen on %s port %s: %s%s",
        hosts[i], port, strerror(xerrno), xerrno == EADDRINUSE ?
        " (another program, or another sign-in, is using it)" : "");
      errno = xerrno;
      return -1;
    }
    freeaddrinfo(ai);
  }

  if (l->nsocks == 0) {
    if (first_errno == EADDRNOTAVAIL) {
      mailoauth_errf(errbuf, errlen, "cannot listen on %s port %s: the "
        "redirect URI names a host that is not this machine", host, port);
    }
    errno = first_errno != 0 ? first_errno : EADDRNOTAVAIL;
    return -1;
  }
  return 0;
}

static int listener_parse_uri(const char *uri, char **host, char **port,
    char **path, char *errbuf, size_t errlen) {
  char *scheme = NULL;
  CURLU *u = curl_url();
  int res = -1;

  *host = *port = *path = NULL;
  if (u == NULL ||
      curl_url_set(u, CURLUPART_URL, uri, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_HOST, host, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_PORT, port, CURLU_DEFAULT_PORT) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_PATH, path, 0) != CURLUE_OK) {
    mailoauth_errf(errbuf, errlen, "cannot parse redirect URI '%s'", uri);
    goto out;
  }

  if (strcasecmp(scheme, "http") != 0) {
    mailoauth_errf(errbuf, errlen, "redirect URI '%s' is not http://: a local "
      "listener cannot serve it (use --no-listen and paste the address the "
      "browser ends up at)", uri);
    goto out;
  }

  /* IPv6 literals come bracketed. */
  if ((*host)[0] == '[') {
    size_t len = strlen(*host);

    memmove(*host, *host + 1, len - 1);
    (*host)[len - 2] = '\0';
  }
  res = 0;

out:
  curl_free(scheme);
  curl_url_cleanup(u);
  if (res < 0) {
    curl_free(*host);
    curl_free(*port);
    curl_free(*path);
    *host = *port = *path = NULL;
    errno = EINVAL;
  }
  return res;
}

struct ftpmailoauth_listener *ftpmailoauth_listener_open(
    const char *redirect_uri, char *errbuf, size_t errlen) {
  struct ftpmailoauth_listener *l;
  char *host, *port, *path;
  unsigned int i;

  if (listener_parse_uri(redirect_uri, &host, &port, &path, errbuf,
      errlen) < 0) {
    return NULL;
  }

  l = calloc(1, sizeof(*l));
  if (l == NULL) {
    curl_free(host);
    curl_free(port);
    curl_free(path);
    errno = ENOMEM;
    return NULL;
  }

  l->pending_fd = -1;
  for (i = 0; i < LISTENER_MAX_CLIENTS; i++) {
    l->clients[i].fd = -1;
  }

  snprintf(l->port, sizeof(l->port), "%s", port);
  l->path = strdup(path[0] != '\0' ? path : "/");
  if (l->path == NULL ||
      listener_bind(l, host, port, errbuf, errlen) < 0) {
    int xerrno = errno;

    ftpmailoauth_listener_close(l);
    l = NULL;
    errno = xerrno;
  }

  curl_free(host);
  curl_free(port);
  curl_free(path);
  return l;
}

const char *ftpmailoauth_listener_where(
    const struct ftpmailoauth_listener *l) {
  return l != NULL ? l->where : "";
}

const char *ftpmailoauth_listener_port(
    const struct ftpmailoauth_listener *l) {
  return l != NULL ? l->port : "";
}

/* ------------------------------------------------------------------------
 * Serving.
 */

static int listener_send_all(int fd, const char *data, size_t len) {
  while (len > 0) {
    ssize_t n = send(fd, data, len, MSG_NOSIGNAL);

    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return -1;
    }
    data += n;
    len -= (size_t) n;
  }
  return 0;
}

static int listener_respond(int fd, int status, const char *html) {
  struct timeval tv = { 5, 0 };
  const char *reason;
  char head[512];
  int n, flags;

  switch (status) {
    case 200: reason = "OK"; break;
    case 400: reason = "Bad Request"; break;
    case 404: reason = "Not Found"; break;
    case 405: reason = "Method Not Allowed"; break;
    case 431: reason = "Request Header Fields Too Large"; break;
    default: reason = "Error"; break;
  }

  /* The answer is small: write it blocking, but not forever. */
  flags = fcntl(fd, F_GETFL);
  if (flags >= 0) {
    (void) fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  }
  (void) setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));

  /* no-referrer: the page's address holds the authorization code. */
  n = snprintf(head, sizeof(head), "HTTP/1.1 %d %s\r\n"
    "Content-Type: text/html; charset=utf-8\r\n"
    "Content-Length: %lu\r\n"
    "Cache-Control: no-store\r\n"
    "Referrer-Policy: no-referrer\r\n"
    "X-Content-Type-Options: nosniff\r\n"
    "Connection: close\r\n\r\n", status, reason,
    (unsigned long) strlen(html));

  if (listener_send_all(fd, head, (size_t) n) < 0 ||
      listener_send_all(fd, html, strlen(html)) < 0) {
    return -1;
  }
  return 0;
}

/* A request's buffer may hold an authorization code: wipe it. */
static void listener_drop(struct listener_client *c) {
  if (c->fd >= 0) {
    close(c->fd);
  }
  if (c->len > 0) {
    OPENSSL_cleanse(c->buf, c->len);
  }
  c->fd = -1;
  c->len = 0;
}

static void listener_accept(struct ftpmailoauth_listener *l, int sock,
    time_t now) {
  struct listener_client *slot = NULL;
  unsigned int i;
  int fd;

  fd = accept4(sock, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) {
    return;
  }

  for (i = 0; i < LISTENER_MAX_CLIENTS; i++) {
    if (l->clients[i].fd < 0) {
      slot = &l->clients[i];
      break;
    }
  }

  if (slot == NULL) {
    close(fd);
    return;
  }

  slot->fd = fd;
  slot->len = 0;
  slot->started = now;
}

/* The path and query of "GET /path?query HTTP/1.1"; -1 when the request
 * line is not one we serve.
 */
static int listener_target(char *req, char **path, char **query,
    int *bad_method) {
  char *sp1, *sp2, *q;

  *bad_method = 0;
  req[strcspn(req, "\r\n")] = '\0';
  sp1 = strchr(req, ' ');
  if (sp1 == NULL) {
    return -1;
  }
  *sp1++ = '\0';

  sp2 = strchr(sp1, ' ');
  if (sp2 != NULL) {
    *sp2 = '\0';
  }

  if (strcmp(req, "GET") != 0) {
    *bad_method = 1;
    return -1;
  }

  /* Absolute form, as sent to proxies. */
  if (strncasecmp(sp1, "http://", 7) == 0) {
    sp1 = strchr(sp1 + 7, '/');
    if (sp1 == NULL) {
      return -1;
    }
  }

  q = strchr(sp1, '?');
  if (q != NULL) {
    *q++ = '\0';
  }

  *path = sp1;
  *query = q != NULL ? q : "";
  return 0;
}

static const char listener_not_found[] =
  "<!DOCTYPE html><html><head><title>Not found</title></head><body>"
  "<p>Not found.</p></body></html>";

/* 1: the callback (query set, connection kept); 0: answered or waiting. */
static int listener_read(struct ftpmailoauth_listener *l,
    struct listener_client *c, char **query) {
  char *path, *q;
  int bad_method;
  ssize_t n;

  n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len, 0);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
    return 0;
  }

  if (n <= 0) {
    listener_drop(c);
    return 0;
  }

  c->len += (size_t) n;
  c->buf[c->len] = '\0';

  if (strstr(c->buf, "\r\n\r\n") == NULL &&
      strstr(c->buf, "\n\n") == NULL) {
    if (c->len >= sizeof(c->buf) - 1) {
      (void) listener_respond(c->fd, 431, listener_not_found);
      listener_drop(c);
    }
    return 0;
  }

  if (listener_target(c->buf, &path, &q, &bad_method) < 0 ||
      strcmp(path, l->path) != 0) {
    (void) listener_respond(c->fd, bad_method ? 405 : 404,
      listener_not_found);
    listener_drop(c);
    return 0;
  }

  *query = strdup(q);
  if (*query == NULL) {
    listener_drop(c);
    return 0;
  }

  l->pending_fd = c->fd;
  c->fd = -1;
  listener_drop(c);
  return 1;
}

int ftpmailoauth_listener_wait(struct ftpmailoauth_listener *l,
    time_t deadline, char **query, char *errbuf, size_t errlen) {
  struct pollfd pfds[LISTENER_MAX_SOCKS + LISTENER_MAX_CLIENTS];
  struct listener_client *polled[LISTENER_MAX_SOCKS + LISTENER_MAX_CLIENTS];

  if (l == NULL || query == NULL) {
    errno = EINVAL;
    return -1;
  }

  *query = NULL;
  for (;;) {
    time_t now = time(NULL);
    unsigned int i, n = 0;
    int res;

    if (now >= deadline) {
      mailoauth_errf(errbuf, errlen, "nobody came back from the sign-in page "
        "in time");
      errno = ETIMEDOUT;
      return -1;
    }

    for (i = 0; i < l->nsocks; i++) {
      pfds[n].fd = l->socks[i];
      pfds[n].events = POLLIN;
      polled[n++] = NULL;
    }

    for (i = 0; i < LISTENER_MAX_CLIENTS; i++) {
      struct listener_client *c = &l->clients[i];

      if (c->fd >= 0 && now - c->started > LISTENER_CLIENT_TIMEOUT) {
        listener_drop(c);
      }

      if (c->fd >= 0) {
        pfds[n].fd = c->fd;
        pfds[n].events = POLLIN;
        polled[n++] = c;
      }
    }

    res = poll(pfds, n, 1000);
    if (res < 0) {
      if (errno == EINTR) {
        continue;
      }
      mailoauth_errf(errbuf, errlen, "waiting for the browser: %s",
        strerror(errno));
      return -1;
    }

    for (i = 0; i < n && res > 0; i++) {
      if (pfds[i].revents == 0) {
        continue;
      }

      if (polled[i] == NULL) {
        listener_accept(l, pfds[i].fd, now);

      } else if (listener_read(l, polled[i], query) == 1) {
        return 0;
      }
    }
  }
}

int ftpmailoauth_listener_reply(struct ftpmailoauth_listener *l, int status,
    const char *html) {
  int res;

  if (l == NULL || l->pending_fd < 0) {
    errno = EINVAL;
    return -1;
  }

  res = listener_respond(l->pending_fd, status, html);
  close(l->pending_fd);
  l->pending_fd = -1;
  return res;
}

void ftpmailoauth_listener_close(struct ftpmailoauth_listener *l) {
  unsigned int i;

  if (l == NULL) {
    return;
  }

  for (i = 0; i < l->nsocks; i++) {
    close(l->socks[i]);
  }

  for (i = 0; i < LISTENER_MAX_CLIENTS; i++) {
    listener_drop(&l->clients[i]);
  }

  if (l->pending_fd >= 0) {
    close(l->pending_fd);
  }

  free(l->path);
  free(l);
}
