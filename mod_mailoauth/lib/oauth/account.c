/*
 * mod_mailoauth - OAuth mail accounts (the MailOAuthAccount directive)
 */

#include "mailoauth/trace.h"
#include "mailoauth/account.h"
#include "mailoauth/assertion.h"
#include "mailoauth/tokenstore.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#define MAILOAUTH_ACCOUNT_SECRET_MAX    4096

/* A PEM key of 8192 bits with its certificate chain fits easily. */
#define MAILOAUTH_ACCOUNT_PEM_MAX       (64 * 1024)

struct mailoauth_account_defaults {
  mailoauth_oauth_provider_t provider;
  const char *smtp_url;
  const char *imap_url;
  const char *graph_url;
};

/* Where each provider's mail servers are, so that a usual account needs no
 * server settings at all.
 */
static const struct mailoauth_account_defaults mailoauth_account_servers[] = {
  { MAILOAUTH_OAUTH_PROVIDER_MICROSOFT,
    "smtp://smtp.office365.com:587", "imaps://outlook.office365.com:993",
    "https://graph.microsoft.com" },
  { MAILOAUTH_OAUTH_PROVIDER_MICROSOFT_USGOV,
    "smtp://smtp.office365.us:587", "imaps://outlook.office365.us:993",
    "https://graph.microsoft.us" },
  { MAILOAUTH_OAUTH_PROVIDER_MICROSOFT_CHINA,
    "smtp://smtp.partner.outlook.cn:587", "imaps://partner.outlook.cn:993",
    "https://microsoftgraph.chinacloudapi.cn" },
  { MAILOAUTH_OAUTH_PROVIDER_GOOGLE,
    "smtp://smtp.gmail.com:587", "imaps://imap.gmail.com:993", NULL },
};

static const char *mailoauth_account_keys[] = {
  "provider", "tenant", "client-id", "client-secret", "mailbox", "grant",
  "scopes", "authority", "authorize-url", "token-url", "device-url",
  "redirect-uri", "proxy", "ca-file", "smtp", "imap", "send-rate",
  "client-cert", "secret-expires", "transport", "graph", NULL
};

static const char *mailoauth_account_keep(struct mailoauth_account *acct,
    const char *value) {
  char *copy;

  if (acct->nowned >= sizeof(acct->owned) / sizeof(acct->owned[0])) {
    errno = E2BIG;
    return NULL;
  }

  copy = strdup(value);
  if (copy != NULL) {
    acct->owned[acct->nowned++] = copy;
  }
  return copy;
}

static int mailoauth_account_set(char **field, const char *value) {
  char *copy = strdup(value);

  if (copy == NULL) {
    return -1;
  }

  free(*field);
  *field = copy;
  return 0;
}

/* Two keys differ by at most one edit: enough to catch "tennant". */
static int mailoauth_account_near(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b), i = 0, j = 0;
  int edits = 0;

  if (la > lb + 1 || lb > la + 1) {
    return 0;
  }

  while (i < la && j < lb) {
    if (a[i] == b[j]) {
      i++;
      j++;
      continue;
    }

    if (++edits > 1) {
      return 0;
    }

    if (la > lb) {
      i++;
    } else if (lb > la) {
      j++;
    } else {
      i++;
      j++;
    }
  }

  return edits + (int) (la - i) + (int) (lb - j) <= 1;
}

static void mailoauth_account_unknown(const char *key, char *errbuf,
    size_t errlen) {
  char list[512] = "";
  size_t i;

  for (i = 0; mailoauth_account_keys[i] != NULL; i++) {
    if (mailoauth_account_near(key, mailoauth_account_keys[i])) {
      mailoauth_errf(errbuf, errlen, "unknown setting '%s': did you "
        "mean '%s='?", key, mailoauth_account_keys[i]);
      return;
    }
  }

  for (i = 0; mailoauth_account_keys[i] != NULL; i++) {
    strncat(list, i ? ", " : "", sizeof(list) - strlen(list) - 1);
    strncat(list, mailoauth_account_keys[i], sizeof(list) - strlen(list) - 1);
  }

  mailoauth_errf(errbuf, errlen, "unknown setting '%s' (known: %s)",
    key, list);
}

static int mailoauth_account_url_scheme(const char *url, const char *a,
    const char *b) {
  return strncasecmp(url, a, strlen(a)) == 0 ||
    (b != NULL && strncasecmp(url, b, strlen(b)) == 0);
}

int mailoauth_account_parse(struct mailoauth_account *acct, const char *name,
    int argc, char *const *argv, char *errbuf, size_t errlen) {
  struct mailoauth_oauth_config *oc = &acct->oauth;
  int i, have_provider = 0;
  size_t k;

  memset(acct, 0, sizeof(*acct));
  oc->provider = MAILOAUTH_OAUTH_PROVIDER_MICROSOFT;
  oc->grant = MAILOAUTH_OAUTH_GRANT_DELEGATED;
  oc->want_identity = 1;

  if (name == NULL ||
      !mailoauth_tokenstore_valid_account(name)) {
    mailoauth_errf(errbuf, errlen, "account name '%s' is not usable: "
      "use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'",
      name ? name : "");
    errno = EINVAL;
    return -1;
  }

  if (mailoauth_account_set(&acct->name, name) < 0) {
    return -1;
  }

  for (i = 0; i < argc; i++) {
    const char *arg = argv[i], *eq, *value;
    char key[32];
    size_t klen;

    eq = strchr(arg, '=');
    if (eq == NULL ||
        eq == arg) {
      mailoauth_errf(errbuf, errlen, "expected key=value, got '%s' "
        "(e.g. tenant=contoso.onmicrosoft.com)", arg);
      errno = EINVAL;
      return -1;
    }

    klen = (size_t) (eq - arg);
    if (klen >= sizeof(key)) {
      klen = sizeof(key) - 1;
    }
    memcpy(key, arg, klen);
    key[klen] = '\0';
    value = eq + 1;

    for (k = 0; mailoauth_account_keys[k] != NULL; k++) {
      if (strcasecmp(key, mailoauth_account_keys[k]) == 0) {
        break;
      }
    }

    if (mailoauth_account_keys[k] == NULL) {
      mailoauth_account_unknown(key, errbuf, errlen);
      errno = EINVAL;
      return -1;
    }

    if (*value == '\0') {
      mailoauth_errf(errbuf, errlen, "%s= needs a value", key);
      errno = EINVAL;
      return -1;
    }

    if (strcasecmp(key, "provider") == 0) {
      if (mailoauth_oauth_provider_parse(value, &oc->provider) < 0) {
        mailoauth_errf(errbuf, errlen, "unknown provider '%s': write "
          "provider=microsoft, microsoft-usgov, microsoft-china, google or "
          "generic", value);
        errno = EINVAL;
        return -1;
      }
      have_provider = 1;

    } else if (strcasecmp(key, "grant") == 0) {
      if (mailoauth_oauth_grant_parse(value, &oc->grant) < 0) {
        mailoauth_errf(errbuf, errlen, "unknown grant '%s': write "
          "grant=delegated (a person signs in once) or grant=app-only "
          "(client credentials)", value);
        errno = EINVAL;
        return -1;
      }

    } else if (strcasecmp(key, "client-secret") == 0) {
      if (strncmp(value, "file:/", 6) != 0 &&
          strncmp(value, "env:", 4) != 0) {
        /* Never echo it: it may be the secret itself. */
        mailoauth_errf(errbuf, errlen, "client-secret must name where "
          "the secret is, not be the secret: write client-secret=file:/etc/"
          "proftpd/%s.secret (a file only root can read) or "
          "client-secret=env:VARIABLE", name);
        errno = EINVAL;
        return -1;
      }
      if (mailoauth_account_set(&acct->secret_source, value) < 0) {
        return -1;
      }

    } else if (strcasecmp(key, "client-cert") == 0) {
      const char *comma = strchr(value, ',');

      if (strncmp(value, "file:/", 6) != 0 ||
          (comma != NULL && comma[1] != '/')) {
        mailoauth_errf(errbuf, errlen, "client-cert must name the private "
          "key file and, if it is not in the same file, the certificate: "
          "write client-cert=file:/etc/proftpd/%s.key or "
          "client-cert=file:/etc/proftpd/%s.key,/etc/proftpd/%s.crt "
          "(absolute paths)", name, name, name);
        errno = EINVAL;
        return -1;
      }

      free(acct->cert_key_file);
      acct->cert_key_file = comma != NULL ?
        strndup(value + 5, (size_t) (comma - value - 5)) : strdup(value + 5);
      if (acct->cert_key_file == NULL ||
          (comma != NULL &&
           mailoauth_account_set(&acct->cert_file, comma + 1) < 0)) {
        return -1;
      }

    } else if (strcasecmp(key, "secret-expires") == 0) {
      struct tm tm;
      const char *end;

      memset(&tm, 0, sizeof(tm));
      end = strptime(value, "%Y-%m-%d", &tm);
      if (end == NULL || *end != '\0' || tm.tm_year < 100) {
        mailoauth_errf(errbuf, errlen, "secret-expires '%s' must be the "
          "date the client secret expires, as YYYY-MM-DD (the Expires "
          "column under Certificates & secrets)", value);
        errno = EINVAL;
        return -1;
      }
      /* The end of that day, UTC: the portal shows dates only. */
      tm.tm_hour = 23;
      tm.tm_min = 59;
      tm.tm_sec = 59;
      acct->secret_expires = timegm(&tm);

    } else if (strcasecmp(key, "mailbox") == 0) {
      if (strchr(value, '@') == NULL ||
          strpbrk(value, " \t\r\n<>\",;") != NULL) {
        mailoauth_errf(errbuf, errlen, "mailbox '%s' is not an email "
          "address: write e.g. mailbox=ftp-notify@contoso.com", value);
        errno = EINVAL;
        return -1;
      }
      if (mailoauth_account_set(&acct->mailbox, value) < 0) {
        return -1;
      }

    } else if (strcasecmp(key, "smtp") == 0) {
      if (!mailoauth_account_url_scheme(value, "smtp://", "smtps://")) {
        mailoauth_errf(errbuf, errlen, "smtp '%s' must be "
          "smtp://host:587 (STARTTLS) or smtps://host:465", value);
        errno = EINVAL;
        return -1;
      }
      if (mailoauth_account_set(&acct->smtp_url, value) < 0) {
        return -1;
      }

    } else if (strcasecmp(key, "imap") == 0) {
      if (!mailoauth_account_url_scheme(value, "imaps://", "imap://")) {
        mailoauth_errf(errbuf, errlen, "imap '%s' must be "
          "imaps://host:993 (or imap://host:143, with STARTTLS required)",
          value);
        errno = EINVAL;
        return -1;
      }
      if (mailoauth_account_set(&acct->imap_url, value) < 0) {
        return -1;
      }

    } else if (strcasecmp(key, "transport") == 0) {
      if (strcasecmp(value, "smtp") == 0) {
        acct->transport = MAILOAUTH_ACCOUNT_TRANSPORT_SMTP;
      } else if (strcasecmp(value, "graph") == 0) {
        acct->transport = MAILOAUTH_ACCOUNT_TRANSPORT_GRAPH;
      } else {
        mailoauth_errf(errbuf, errlen, "transport '%s' must be smtp (SMTP "
          "AUTH with XOAUTH2, the default) or graph (Microsoft Graph "
          "sendMail, where SMTP AUTH is switched off)", value);
        errno = EINVAL;
        return -1;
      }

    } else if (strcasecmp(key, "graph") == 0) {
      if (!mailoauth_account_url_scheme(value, "https://", "https://")) {
        mailoauth_errf(errbuf, errlen, "graph '%s' must be an https:// URL, "
          "e.g. graph=https://graph.microsoft.com", value);
        errno = EINVAL;
        return -1;
      }
      if (mailoauth_account_set(&acct->graph_url, value) < 0) {
        return -1;
      }

    } else if (strcasecmp(key, "redirect-uri") == 0) {
      if (!mailoauth_account_url_scheme(value, "http://", "https://")) {
        mailoauth_errf(errbuf, errlen, "redirect-uri '%s' must be an "
          "http:// or https:// URL, e.g. " MAILOAUTH_ACCOUNT_DEFAULT_REDIRECT,
          value);
        errno = EINVAL;
        return -1;
      }
      if (mailoauth_account_set(&acct->redirect_uri, value) < 0) {
        return -1;
      }

    } else if (strcasecmp(key, "send-rate") == 0) {
      char *end = NULL;
      long rate = strtol(value, &end, 10);

      if (end == value || *end != '\0' || rate < 1 || rate > 1000) {
        mailoauth_errf(errbuf, errlen, "send-rate '%s' must be the "
          "number of mails a minute, 1 to 1000 (Exchange Online allows "
          "about 30)", value);
        errno = EINVAL;
        return -1;
      }
      acct->send_rate = (unsigned int) rate;

    } else if (strcasecmp(key, "ca-file") == 0 &&
               value[0] != '/') {
      mailoauth_errf(errbuf, errlen, "ca-file '%s' is not an absolute "
        "path", value);
      errno = EINVAL;
      return -1;

    } else {
      const char *copy;

      /* proxy=none: no proxy, even if https_proxy is set. */
      if (strcasecmp(key, "proxy") == 0 &&
          strcasecmp(value, "none") == 0) {
        value = "";
      }

      copy = mailoauth_account_keep(acct, value);
      if (copy == NULL) {
        return -1;
      }

      if (strcasecmp(key, "tenant") == 0) {
        oc->tenant = copy;
      } else if (strcasecmp(key, "client-id") == 0) {
        oc->client_id = copy;
      } else if (strcasecmp(key, "scopes") == 0) {
        oc->scopes = copy;
      } else if (strcasecmp(key, "authority") == 0) {
        oc->authority = copy;
      } else if (strcasecmp(key, "authorize-url") == 0) {
        oc->authorize_url = copy;
      } else if (strcasecmp(key, "token-url") == 0) {
        oc->token_url = copy;
      } else if (strcasecmp(key, "device-url") == 0) {
        oc->devicecode_url = copy;
      } else if (strcasecmp(key, "proxy") == 0) {
        oc->proxy = copy;
      } else if (strcasecmp(key, "ca-file") == 0) {
        oc->ca_file = copy;
      }
    }
  }

  (void) have_provider;

  if (oc->client_id == NULL) {
    mailoauth_errf(errbuf, errlen, "client-id= is required: the "
      "Application (client) ID from the app registration's Overview page");
    errno = EINVAL;
    return -1;
  }

  if (acct->mailbox == NULL) {
    mailoauth_errf(errbuf, errlen, "mailbox= is required: the address "
      "the account sends and reads mail as");
    errno = EINVAL;
    return -1;
  }

  if (acct->secret_source != NULL &&
      acct->cert_key_file != NULL) {
    mailoauth_errf(errbuf, errlen, "client-secret= and client-cert= "
      "exclude each other: the app proves who it is with one of them "
      "(remove the one you do not use)");
    errno = EINVAL;
    return -1;
  }

  if (oc->grant == MAILOAUTH_OAUTH_GRANT_APP_ONLY) {
    if (acct->secret_source == NULL &&
        acct->cert_key_file == NULL) {
      mailoauth_errf(errbuf, errlen, "grant=app-only needs "
        "client-secret=file:/path, client-secret=env:NAME or "
        "client-cert=file:/path/key.pem[,/path/cert.pem]");
      errno = EINVAL;
      return -1;
    }

    if (oc->provider != MAILOAUTH_OAUTH_PROVIDER_GENERIC &&
        oc->provider != MAILOAUTH_OAUTH_PROVIDER_GOOGLE &&
        (oc->tenant == NULL ||
         strcasecmp(oc->tenant, "common") == 0 ||
         strcasecmp(oc->tenant, "organizations") == 0 ||
         strcasecmp(oc->tenant, "consumers") == 0)) {
      mailoauth_errf(errbuf, errlen, "grant=app-only needs the real "
        "tenant: write tenant=<Directory (tenant) ID> or "
        "tenant=contoso.onmicrosoft.com");
      errno = EINVAL;
      return -1;
    }
  }

  for (k = 0; k < sizeof(mailoauth_account_servers) /
      sizeof(mailoauth_account_servers[0]); k++) {
    if (mailoauth_account_servers[k].provider != oc->provider) {
      continue;
    }

    if ((acct->smtp_url == NULL &&
         mailoauth_account_set(&acct->smtp_url,
           mailoauth_account_servers[k].smtp_url) < 0) ||
        (acct->imap_url == NULL &&
         mailoauth_account_set(&acct->imap_url,
           mailoauth_account_servers[k].imap_url) < 0) ||
        (acct->graph_url == NULL &&
         mailoauth_account_servers[k].graph_url != NULL &&
         mailoauth_account_set(&acct->graph_url,
           mailoauth_account_servers[k].graph_url) < 0)) {
      return -1;
    }
  }

  if (acct->transport == MAILOAUTH_ACCOUNT_TRANSPORT_GRAPH) {
    if (acct->graph_url == NULL) {
      mailoauth_errf(errbuf, errlen, "transport=graph needs graph=https://"
        "... for this provider (Microsoft Graph exists for the microsoft, "
        "microsoft-usgov and microsoft-china providers)");
      errno = EINVAL;
      return -1;
    }
    /* The token's audience must be Graph's: one resource per request. */
    oc->graph = 1;
  }

  if (acct->redirect_uri == NULL &&
      mailoauth_account_set(&acct->redirect_uri,
        MAILOAUTH_ACCOUNT_DEFAULT_REDIRECT) < 0) {
    return -1;
  }

  /* The secret itself is read later, by the process that will use it; for
   * the check, that there will be one is what matters.
   */
  if (acct->secret_source != NULL &&
      oc->client_secret == NULL) {
    int res;

    oc->client_secret = "placeholder";
    res = mailoauth_oauth_config_check(oc, errbuf, errlen);
    oc->client_secret = NULL;
    return res;
  }

  if (acct->cert_key_file != NULL &&
      oc->client_key_pem == NULL) {
    int res;

    oc->client_key_pem = "placeholder";
    oc->client_cert_pem = "placeholder";
    res = mailoauth_oauth_config_check(oc, errbuf, errlen);
    oc->client_key_pem = NULL;
    oc->client_cert_pem = NULL;
    return res;
  }

  return mailoauth_oauth_config_check(oc, errbuf, errlen);
}

/* What to do about a secret file that cannot be used, for every message. */
#define MAILOAUTH_ACCOUNT_SECRET_HOWTO \
  "create it with install -m 0600 /dev/null FILE, write the secret's value " \
  "into it (owner root or the server's User), then reload"

#define MAILOAUTH_ACCOUNT_KEY_HOWTO \
  "check the path in client-cert=; the key file must be a PEM file owned " \
  "by root or the server's User, mode 0600"

static int mailoauth_account_read_file(const char *what, const char *path,
    int private, char *buf, size_t bufsz, char *errbuf, size_t errlen) {
  struct stat st;
  ssize_t n;
  size_t have = 0;
  int fd, xerrno;

  fd = open(path, O_RDONLY|O_NOFOLLOW|O_NONBLOCK|O_NOCTTY|O_CLOEXEC);
  if (fd < 0) {
    xerrno = errno;
    mailoauth_errf(errbuf, errlen, "cannot read %s file "
      "'%s': %s (%s)", what, path, strerror(xerrno),
      xerrno == ELOOP ? "symbolic links are refused: name the file itself" :
      private && strcmp(what, "client secret") == 0 ?
      MAILOAUTH_ACCOUNT_SECRET_HOWTO : private ? MAILOAUTH_ACCOUNT_KEY_HOWTO :
      "check the path in client-cert=");
    errno = xerrno;
    return -1;
  }

  if (fstat(fd, &st) < 0 ||
      !S_ISREG(st.st_mode)) {
    (void) close(fd);
    mailoauth_errf(errbuf, errlen, "%s file '%s' is not a "
      "regular file (%s)", what, path, MAILOAUTH_ACCOUNT_SECRET_HOWTO);
    errno = EINVAL;
    return -1;
  }

  if (private &&
      (st.st_mode & 077) != 0) {
    (void) close(fd);
    mailoauth_errf(errbuf, errlen, "%s file '%s' is "
      "readable by others (mode %04o): chmod 0600 '%s'", what, path,
      (unsigned int) (st.st_mode & 07777), path);
    errno = EPERM;
    return -1;
  }

  while (have < bufsz - 1) {
    n = read(fd, buf + have, bufsz - 1 - have);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      break;
    }
    have += (size_t) n;
  }
  (void) close(fd);

  if (have == bufsz - 1 &&
      (size_t) st.st_size >= bufsz) {
    mailoauth_errf(errbuf, errlen, "%s file '%s' is too large (at most "
      "%lu bytes)", what, path, (unsigned long) (bufsz - 1));
    errno = EFBIG;
    return -1;
  }

  buf[have] = '\0';
  return 0;
}

/* The secret, trimmed, into buf (which the caller wipes). */
static int mailoauth_account_fetch_secret(const struct mailoauth_account *acct,
    char *buf, size_t bufsz, char *errbuf, size_t errlen) {
  const char *src = acct->secret_source;
  size_t len;

  if (strncmp(src, "env:", 4) == 0) {
    const char *value = getenv(src + 4);

    if (value == NULL ||
        *value == '\0') {
      mailoauth_errf(errbuf, errlen, "client secret variable '%s' is "
        "not set in proftpd's environment (set it where proftpd is started, "
        "e.g. Environment= in its systemd unit)", src + 4);
      errno = ENOENT;
      return -1;
    }

    snprintf(buf, bufsz, "%s", value);

  } else if (mailoauth_account_read_file("client secret", src + 5, 1, buf,
      bufsz, errbuf, errlen) < 0) {
    return -1;
  }

  /* Editors and `echo` add a newline that is not part of the secret. */
  len = strlen(buf);
  while (len > 0 &&
         (buf[len-1] == '\n' || buf[len-1] == '\r' || buf[len-1] == ' ' ||
          buf[len-1] == '\t')) {
    buf[--len] = '\0';
  }

  if (len == 0) {
    mailoauth_errf(errbuf, errlen, "the client secret from '%s' is "
      "empty (put the application's client secret value there)", src);
    errno = EINVAL;
    return -1;
  }

  return 0;
}

static const char mailoauth_account_cert_begin[] =
  "-----BEGIN CERTIFICATE-----";

/* The certificate PEM: its own file, or the certificate blocks of the key
 * file (never a copy of the key).
 */
static int mailoauth_account_cert_text(const struct mailoauth_account *acct,
    const char *keytext, char **pem, char *errbuf, size_t errlen) {
  const char *begin;

  *pem = NULL;

  if (acct->cert_file != NULL) {
    char *buf = malloc(MAILOAUTH_ACCOUNT_PEM_MAX);

    if (buf == NULL) {
      return -1;
    }

    if (mailoauth_account_read_file("certificate", acct->cert_file, 0, buf,
        MAILOAUTH_ACCOUNT_PEM_MAX, errbuf, errlen) < 0) {
      int xerrno = errno;

      free(buf);
      errno = xerrno;
      return -1;
    }

    *pem = buf;
    return 0;
  }

  begin = strstr(keytext, mailoauth_account_cert_begin);
  if (begin == NULL) {
    mailoauth_errf(errbuf, errlen, "the key file '%s' holds no certificate: "
      "append it (cat cert.pem >> '%s') or name it: "
      "client-cert=file:%s,/path/cert.pem", acct->cert_key_file,
      acct->cert_key_file, acct->cert_key_file);
    errno = EINVAL;
    return -1;
  }

  /* Keys written after the certificate are left out too. */
  {
    const char *end = strstr(begin, "-----END CERTIFICATE-----");
    size_t len = end != NULL ? (size_t) (end - begin) + 25 : strlen(begin);

    *pem = strndup(begin, len);
  }
  return *pem != NULL ? 0 : -1;
}

/* Key and certificate; *key (malloc'd, MAILOAUTH_ACCOUNT_PEM_MAX) must be
 * wiped by the caller, also on failure.
 */
static int mailoauth_account_fetch_cert(const struct mailoauth_account *acct,
    char **key, char **cert, char *errbuf, size_t errlen) {
  *cert = NULL;
  *key = malloc(MAILOAUTH_ACCOUNT_PEM_MAX);
  if (*key == NULL) {
    mailoauth_errf(errbuf, errlen, "out of memory");
    return -1;
  }
  (*key)[0] = '\0';

  if (mailoauth_account_read_file("private key", acct->cert_key_file, 1,
      *key, MAILOAUTH_ACCOUNT_PEM_MAX, errbuf, errlen) < 0 ||
      mailoauth_account_cert_text(acct, *key, cert, errbuf, errlen) < 0) {
    return -1;
  }

  if (mailoauth_assertion_check_pair(*key, strlen(*key), *cert,
      strlen(*cert), errbuf, errlen) < 0) {
    char why[384];

    snprintf(why, sizeof(why), "%s", errbuf);
    mailoauth_errf(errbuf, errlen, "client-cert '%s'%s%s: %s",
      acct->cert_key_file, acct->cert_file ? "," : "",
      acct->cert_file ? acct->cert_file : "", why);
    errno = EINVAL;
    return -1;
  }

  return 0;
}

static void mailoauth_account_wipe(char **key) {
  if (*key != NULL) {
    OPENSSL_cleanse(*key, MAILOAUTH_ACCOUNT_PEM_MAX);
    free(*key);
    *key = NULL;
  }
}

static int mailoauth_account_load_cert(struct mailoauth_account *acct,
    char *errbuf, size_t errlen) {
  char *key = NULL, *cert = NULL;
  int res = -1;

  if (mailoauth_account_fetch_cert(acct, &key, &cert, errbuf, errlen) == 0) {
    const char *k = mailoauth_account_keep(acct, key);
    const char *c = k != NULL ? mailoauth_account_keep(acct, cert) : NULL;

    if (c != NULL) {
      acct->oauth.client_key_pem = k;
      acct->oauth.client_cert_pem = c;
      res = 0;
    }
  }

  mailoauth_account_wipe(&key);
  free(cert);
  return res;
}

int mailoauth_account_load_secret(struct mailoauth_account *acct,
    char *errbuf, size_t errlen) {
  char buf[MAILOAUTH_ACCOUNT_SECRET_MAX];
  const char *copy;
  int res;

  if (acct->cert_key_file != NULL) {
    return mailoauth_account_load_cert(acct, errbuf, errlen);
  }

  if (acct->secret_source == NULL) {
    return 0;
  }

  res = mailoauth_account_fetch_secret(acct, buf, sizeof(buf), errbuf,
    errlen);
  if (res == 0) {
    copy = mailoauth_account_keep(acct, buf);
    if (copy == NULL) {
      res = -1;

    } else {
      acct->oauth.client_secret = copy;
    }
  }

  OPENSSL_cleanse(buf, sizeof(buf));
  return res;
}

int mailoauth_account_check_secret(const struct mailoauth_account *acct,
    char *errbuf, size_t errlen) {
  char buf[MAILOAUTH_ACCOUNT_SECRET_MAX];
  int res, xerrno;

  if (acct->cert_key_file != NULL) {
    char *key = NULL, *cert = NULL;

    res = mailoauth_account_fetch_cert(acct, &key, &cert, errbuf, errlen);
    xerrno = errno;
    mailoauth_account_wipe(&key);
    free(cert);
    errno = xerrno;
    return res;
  }

  if (acct->secret_source == NULL) {
    return 0;
  }

  res = mailoauth_account_fetch_secret(acct, buf, sizeof(buf), errbuf,
    errlen);
  xerrno = errno;
  OPENSSL_cleanse(buf, sizeof(buf));
  errno = xerrno;
  return res;
}

int mailoauth_account_read_cert(const struct mailoauth_account *acct,
    char **pem, char *errbuf, size_t errlen) {
  char *key = NULL;
  int res, xerrno;

  *pem = NULL;
  if (acct->cert_key_file == NULL) {
    mailoauth_errf(errbuf, errlen, "account %s has no client-cert=",
      acct->name);
    errno = ENOENT;
    return -1;
  }

  if (acct->cert_file != NULL) {
    return mailoauth_account_cert_text(acct, NULL, pem, errbuf, errlen);
  }

  key = malloc(MAILOAUTH_ACCOUNT_PEM_MAX);
  if (key == NULL) {
    return -1;
  }
  key[0] = '\0';

  res = mailoauth_account_read_file("private key", acct->cert_key_file, 1,
    key, MAILOAUTH_ACCOUNT_PEM_MAX, errbuf, errlen);
  if (res == 0) {
    res = mailoauth_account_cert_text(acct, key, pem, errbuf, errlen);
  }

  xerrno = errno;
  mailoauth_account_wipe(&key);
  errno = xerrno;
  return res;
}

void mailoauth_account_clear(struct mailoauth_account *acct) {
  unsigned int i;

  for (i = 0; i < acct->nowned; i++) {
    OPENSSL_cleanse(acct->owned[i], strlen(acct->owned[i]));
    free(acct->owned[i]);
  }

  free(acct->name);
  free(acct->mailbox);
  free(acct->smtp_url);
  free(acct->imap_url);
  free(acct->graph_url);
  free(acct->redirect_uri);
  free(acct->secret_source);
  free(acct->cert_key_file);
  free(acct->cert_file);
  memset(acct, 0, sizeof(*acct));
}
