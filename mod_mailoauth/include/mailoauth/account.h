/*
 * mod_mailoauth - OAuth mail accounts (the MailOAuthAccount directive)
 *
 * One account is one app registration acting for one mailbox:
 *
 *   MailOAuthAccount NAME key=value ...
 *
 * The same parser serves the module (at configuration time) and the
 * sign-in tool (which reads proftpd.conf), so both always agree on what an
 * account line means.
 */

#ifndef MOD_MAILOAUTH_ACCOUNT_H
#define MOD_MAILOAUTH_ACCOUNT_H

#include "mailoauth/oauth.h"

#include <stddef.h>
#include <time.h>

#define MAILOAUTH_ACCOUNT_DEFAULT_REDIRECT \
  "http://localhost:9090/register_microsoft_graph_api/"

typedef enum {
  MAILOAUTH_ACCOUNT_TRANSPORT_SMTP = 0,
  MAILOAUTH_ACCOUNT_TRANSPORT_GRAPH
} mailoauth_account_transport_t;

struct mailoauth_account {
  char *name;
  char *mailbox;            /* XOAUTH2 user= and the default From */
  char *smtp_url;           /* smtp://host:587 (STARTTLS) or smtps://host:465 */
  char *imap_url;           /* imaps://host:993 */
  char *graph_url;          /* https://graph.microsoft.com */
  mailoauth_account_transport_t transport;  /* how notifications go */
  char *redirect_uri;       /* browser sign-in */
  char *secret_source;      /* "file:/path" or "env:NAME"; NULL: public client */
  char *cert_key_file;      /* client-cert=file:KEY[,CERT]: the private key */
  char *cert_file;          /* the certificate; NULL: in the key file */
  time_t secret_expires;    /* secret-expires=YYYY-MM-DD (UTC); 0: unknown */
  unsigned int send_rate;   /* mails a minute at most; 0: the default */

  /* Strings in here point into this struct's own allocations. */
  struct mailoauth_oauth_config oauth;

  /* Private: what oauth's const strings point to. */
  char *owned[16];
  unsigned int nowned;
};

/* Parses the arguments after the account name.  On error returns -1, with a
 * message naming the offending key and what to write instead in errbuf.
 * Release with mailoauth_account_clear() in either case.
 */
int mailoauth_account_parse(struct mailoauth_account *acct, const char *name,
  int argc, char *const *argv, char *errbuf, size_t errlen);

/* Reads the client secret from its source into acct->oauth.client_secret,
 * or the certificate credential's key and certificate into
 * acct->oauth.client_key_pem and client_cert_pem.  A secret or key file
 * must be a regular file not readable by group or others.
 */
int mailoauth_account_load_secret(struct mailoauth_account *acct,
  char *errbuf, size_t errlen);

/* Checks that the secret can be read and is not empty, as load does, but
 * keeps nothing: for a process that will not use it.  The error message
 * says what to do.
 */
int mailoauth_account_check_secret(const struct mailoauth_account *acct,
  char *errbuf, size_t errlen);

/* The certificate of a client-cert= account, as PEM text (malloc'd) in
 * *pem: from the certificate file, or from the key file when both are in
 * one (which needs the key file's reader: root).  Public data: the caller
 * only frees it.
 */
int mailoauth_account_read_cert(const struct mailoauth_account *acct,
  char **pem, char *errbuf, size_t errlen);

/* Frees everything, wiping the client secret and private key. */
void mailoauth_account_clear(struct mailoauth_account *acct);

#endif /* MOD_MAILOAUTH_ACCOUNT_H */
