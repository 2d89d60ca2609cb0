/*
 * mod_mailoauth - the version, for the module and its programs alike
 */

#ifndef MOD_MAILOAUTH_VERSION_H
#define MOD_MAILOAUTH_VERSION_H

#define MOD_MAILOAUTH_VERSION           "mod_mailoauth/0.1.0"

#endif /* MOD_MAILOAUTH_VERSION_H */
