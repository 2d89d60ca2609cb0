#!/bin/sh
# Installs, from Debian 12's archive, everything needed to build mod_mailoauth
# and its Debian package (dpkg-buildpackage, debhelper, lintian), and to run
# its tests, sandbox and benchmarks.  Run as root.  Safe to re-run.

set -e

if [ "$(id -u)" != 0 ]; then
  echo "setup-debian.sh: run as root (it installs Debian packages)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive

PACKAGES="
  gcc make pkg-config clang
  proftpd-dev proftpd-core proftpd-mod-crypto
  libcurl4-openssl-dev libjansson-dev libssl-dev libytnef0-dev libhiredis-dev check
  redis-server redis-sentinel
  libgmime-3.0-dev
  curl openssl openssh-client python3 python3-pytest python3-prometheus-client
  python3-cryptography
  dovecot-core dovecot-imapd dovecot-lmtpd postfix msmtp
  getmail6 mpack time
  dpkg-dev debhelper fakeroot lintian man-db
"

# Skip the network when everything is already there (repeated runs).
missing=
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
    missing="$missing $p"
done

if [ -n "$missing" ]; then
  # Postfix asks how it should deliver mail: the tests run their own
  # instances, so the system one stays unconfigured.
  echo "postfix postfix/main_mailer_type select No configuration" |
    debconf-set-selections
  apt-get update
  # shellcheck disable=SC2086
  apt-get install -y --no-install-recommends $missing
fi

# The packages' own daemons are not used (the tests start private
# instances); keep them from holding ports or files.
for svc in proftpd dovecot postfix; do
  if command -v service >/dev/null 2>&1; then
    service "$svc" stop >/dev/null 2>&1 || true
  fi
done
echo "setup-debian.sh: all packages present"
