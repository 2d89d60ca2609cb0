/*
 * mod_mailoauth - sending one message over SMTP with SASL XOAUTH2
 *
 * One handle per account keeps its libcurl easy handle, so consecutive
 * messages of a batch travel over one logged-in connection.  Each send
 * ends in one of a few outcomes the queue acts on.
 *
 * No ProFTPD headers.
 */

#ifndef MOD_MAILOAUTH_SMTP_H
#define MOD_MAILOAUTH_SMTP_H

#include "mailoauth/message.h"

#include <stddef.h>

typedef enum {
  MAILOAUTH_SMTP_SENT = 0,      /* 250: the server took responsibility */
  MAILOAUTH_SMTP_TEMPFAIL,      /* 4xx, network, timeout: retry later */
  MAILOAUTH_SMTP_PERMFAIL,      /* 5xx after login: this message never will */
  MAILOAUTH_SMTP_AUTHFAIL,      /* the token was refused */
  MAILOAUTH_SMTP_CONFIG         /* TLS or server set-up wrong: retry later,
                                 * but a person must look */
} mailoauth_smtp_status_t;

struct mailoauth_smtp;

struct mailoauth_smtp *mailoauth_smtp_create(const char *url,
  const char *mailbox, const char *ca_file);
void mailoauth_smtp_destroy(struct mailoauth_smtp *s);

/* Sends msg (prepared) with the access token.  reply gets the server's
 * last line or libcurl's reason, with no secrets.
 */
mailoauth_smtp_status_t mailoauth_smtp_send(struct mailoauth_smtp *s,
  const char *token, struct mailoauth_message *msg, char *reply,
  size_t replylen);

/* The next send opens a new connection (after a refused token). */
void mailoauth_smtp_reconnect(struct mailoauth_smtp *s);

/* How many connections were opened so far (for benchmarks). */
unsigned long mailoauth_smtp_connections(const struct mailoauth_smtp *s);

const char *mailoauth_smtp_status_name(mailoauth_smtp_status_t status);

#endif /* MOD_MAILOAUTH_SMTP_H */
