#!/bin/sh
# Builds ProFTPD 1.3.8 from source with mod_mailoauth compiled in statically
# (contrib/mod_mailoauth, ./configure --with-modules=mod_mailoauth) and checks
# the result:
#   - no compiler or linker warning from the module's files,
#   - the glue and every lib/<area>/*.c end up in mod_mailoauth.a,
#   - no library symbol the module calls is shadowed by one of ProFTPD's own,
#   - proftpd -l lists mod_mailoauth.c,
#   - proftpd -t accepts a configuration using the module's directives and
#     rejects a bad value, naming the line.
#
# Usage: t/intree-build.sh [PROFTPD_SOURCE_TREE]
#
# Without an argument (or $PROFTPD_SRC), the Debian 12 source of ProFTPD
# (apt-get source proftpd-dfsg) is fetched once into $MAILOAUTH_SRC_CACHE
# (default /var/cache/mailoauth-src); that needs root, a deb-src entry is
# added to the apt sources when there is none.  The tree is never modified:
# the build happens in a copy under $TMPDIR, removed afterwards unless
# MAILOAUTH_KEEP_BUILD=1.  MAKE_JOBS (default 2) sets make's -j.

set -eu

me=intree-build
top=$(cd "$(dirname "$0")/.." && pwd)
src=${1:-${PROFTPD_SRC:-}}
cache=${MAILOAUTH_SRC_CACHE:-/var/cache/mailoauth-src}
jobs=${MAKE_JOBS:-2}
parts=/etc/apt/sources.list.d
eval "$(apt-config shell parts Dir::Etc::sourceparts/d 2>/dev/null)" || true
apt_sources=${parts%/}/mailoauth-src.sources

say() { echo "$me: $*"; }
die() { echo "$me: error: $*" >&2; exit 1; }

now() { date +%s; }

# stdin's lines as one line of words.
oneline() { tr -s '\n' ' ' | sed 's/ $//'; }

# Debian packages, installed on demand (only when fetching the source).
apt_updated=
apt_install() {
  [ "$(id -u)" = 0 ] || die "need root to install $* (or pass a ProFTPD source tree)"
  if [ -z "$apt_updated" ]; then
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
    >/dev/null || die "apt-get install $* failed"
}

have_deb_src() {
  apt-cache showsrc proftpd-dfsg 2>/dev/null | grep -q '^Package: proftpd-dfsg'
}

fetch_source() {
  [ "$(id -u)" = 0 ] || die "need root to fetch the ProFTPD source into $cache (or pass a source tree)"
  command -v dpkg-source >/dev/null 2>&1 || apt_install dpkg-dev
  if ! have_deb_src; then
    # Maybe only the package lists are missing.
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt_updated=1
  fi
  if ! have_deb_src; then
    say "adding $apt_sources (deb-src)"
    cat > "$apt_sources" <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    apt-get update -qq >/dev/null || die "apt-get update failed"
    have_deb_src || die "apt knows no source package proftpd-dfsg (see $apt_sources)"
  fi
  say "fetching the ProFTPD source (apt-get source proftpd-dfsg) into $cache"
  fetch=$(mktemp -d "$cache/.fetch.XXXXXX")
  if ! (cd "$fetch" && apt-get source -qq proftpd-dfsg) > "$fetch.log" 2>&1; then
    cat "$fetch.log" >&2
    rm -rf "$fetch" "$fetch.log"
    die "apt-get source proftpd-dfsg failed"
  fi
  for d in "$fetch"/proftpd-dfsg-*/; do
    [ -f "$d/configure.in" ] || continue
    name=$(basename "$d")
    rm -rf "${cache:?}/$name"
    mv "${d%/}" "$cache/$name"
  done
  rm -rf "$fetch" "$fetch.log"
}

find_cached() {
  for d in "$cache"/proftpd-dfsg-1.3.8*/; do
    [ -f "$d/configure.in" ] && { echo "${d%/}"; return 0; }
  done
  return 1
}

# 1. A ProFTPD 1.3.8 source tree.
if [ -z "$src" ]; then
  mkdir -p "$cache"
  # One fetch at a time.
  exec 9> "$cache/.lock"
  flock 9
  src=$(find_cached) || { fetch_source; src=$(find_cached) ||
    die "no proftpd-dfsg-1.3.8* tree in $cache after apt-get source"; }
  exec 9>&-
fi
if [ ! -f "$src/configure" ] || [ ! -f "$src/include/version.h" ]; then
  die "$src is not a ProFTPD source tree"
fi
version=$(sed -n 's/^#define PROFTPD_VERSION_TEXT[[:space:]]*"\(.*\)"/\1/p' "$src/include/version.h")
case "$version" in
  1.3.8*) ;;
  *) die "$src is ProFTPD '$version', 1.3.8 is required" ;;
esac
src=$(cd "$src" && pwd)
# The Debian tree's Make.rules calls dpkg-buildflags.
if grep -q dpkg-buildflags "$src/Make.rules.in" && ! command -v dpkg-buildflags >/dev/null 2>&1; then
  apt_install dpkg-dev
fi

# 2. A copy of it, with the module in contrib/.
work=$(mktemp -d "${TMPDIR:-/tmp}/mailoauth-intree.XXXXXX")
chmod 0755 "$work"
# shellcheck disable=SC2317 # called from the trap
cleanup() {
  if [ "${MAILOAUTH_KEEP_BUILD:-0}" = 1 ]; then
    say "build kept in $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM

tree=$work/proftpd
say "ProFTPD $version from $src, building in $tree"
cp -a "$src" "$tree"
if [ -f "$tree/Makefile" ]; then
  (cd "$tree" && make distclean) >/dev/null 2>&1 || true
fi
rm -rf "$tree/contrib/mod_mailoauth"
cp -a "$top/mod_mailoauth" "$tree/contrib/mod_mailoauth"
# Leftovers of a build in the module directory itself (e.g. through a
# symlinked contrib/mod_mailoauth) must not leak into this one.
(cd "$tree/contrib/mod_mailoauth" &&
  rm -rf Makefile config.log ./*.o ./*.lo ./*.a ./*.la .libs mailoauthd \
    lib/*/*.o lib/*/*.lo)

# 3. configure && make.
cd "$tree"
t0=$(now)
if ! ./configure --with-modules=mod_mailoauth --disable-nls > "$work/configure.log" 2>&1; then
  tail -n 30 "$work/configure.log" >&2
  die "ProFTPD's configure failed (log above)"
fi
t1=$(now)
if ! make -j"$jobs" > "$work/make.log" 2>&1; then
  grep -E -A3 'error:|undefined reference|\*\*\*' "$work/make.log" | tail -n 40 >&2 || true
  die "make failed (errors above; MAILOAUTH_KEEP_BUILD=1 keeps $work/make.log)"
fi
t2=$(now)
say "configure $((t1 - t0))s, make -j$jobs $((t2 - t1))s"

failed=0
ok() { say "ok    $*"; }
bad() { say "FAIL  $*"; failed=1; }

# Compiler and linker warnings.  The module is also rebuilt on its own, so
# that a warning located in a ProFTPD or library header it includes counts
# too; the full log has the linker's ("mod_mailoauth.a(x.o): warning: ...").
if (make -C contrib/mod_mailoauth clean && make -j"$jobs" -C contrib/mod_mailoauth static) \
    > "$work/module.log" 2>&1; then
  { grep 'warning:' "$work/module.log" || true
    grep -E 'mod_mailoauth/.*warning' "$work/make.log" || true
  } | sort -u > "$work/warnings.log"
  if [ -s "$work/warnings.log" ]; then
    bad "warnings from mod_mailoauth:"
    sed 's/^/    /' "$work/warnings.log"
  else
    ok "no compiler/linker warnings from mod_mailoauth/"
  fi
else
  bad "rebuilding contrib/mod_mailoauth alone failed:"
  tail -n 20 "$work/module.log" | sed 's/^/    /'
fi

# Every unit of the directory is in the archive.
archive=contrib/mod_mailoauth/mod_mailoauth.a
expected=$(for f in contrib/mod_mailoauth/*.c contrib/mod_mailoauth/lib/*/*.c; do
  basename "$f" .c; done |
  sed 's/$/.o/' | sort | oneline)
members=$(ar t "$archive" | sort | oneline)
if [ "$expected" = "$members" ]; then
  ok "mod_mailoauth.a holds the glue and every unit of lib/: $members"
else
  bad "mod_mailoauth.a holds [$members], expected [$expected]"
fi

# ProFTPD defines (and exports) some names that the module's libraries also
# define, e.g. json_delete (its bundled ccan-json) vs jansson's: a call from
# the module to such a name binds to ProFTPD's function, statically here and
# at run time in the DSO build.
nm -u "$archive" 2>/dev/null | awk 'NF == 2 { print $2 }' | sed 's/@.*//' | sort -u > "$work/mod.undef"
nm -g --defined-only "$archive" 2>/dev/null | awk 'NF == 3 { print $3 }' | sort -u > "$work/mod.def"
nm -g --defined-only proftpd | awk 'NF == 3 { print $3 }' | sort -u |
  comm -23 - "$work/mod.def" > "$work/proftpd.def"
: > "$work/libs.def"
for lib in curl jansson ssl crypto ytnef; do
  so=$(${CC:-cc} -print-file-name="lib$lib.so")
  [ -f "$so" ] || continue
  nm -D --defined-only "$so" | awk 'NF == 3 { print $3 }' | sed 's/@.*//' >> "$work/libs.def"
done
sort -u -o "$work/libs.def" "$work/libs.def"
clash=$(comm -12 "$work/mod.undef" "$work/proftpd.def" | comm -12 - "$work/libs.def")
if [ -n "$clash" ]; then
  bad "the module calls library functions that ProFTPD itself defines, so ProFTPD's are called instead:"
  for sym in $clash; do
    users=$(nm -A -u "$archive" | awk -v s="$sym" '$NF == s { n = split($1, f, ":"); print f[n - 1] }' | sort -u | oneline)
    echo "    $sym (used by: $users)"
  done
else
  ok "no library symbol used by the module is shadowed by ProFTPD's own"
fi

# 4. The binary.
if ./proftpd -l | grep -Eq '^[[:space:]]*mod_mailoauth\.c$'; then
  ok "proftpd -l lists mod_mailoauth.c"
  ./proftpd -l | grep -E 'mod_mailoauth\.c'
else
  bad "proftpd -l does not list mod_mailoauth.c:"
  ./proftpd -l | sed 's/^/    /'
fi

group=nogroup
getent group nogroup >/dev/null 2>&1 || group=nobody
conf=$work/conf
mkdir -p "$conf"
chmod 0755 "$conf"
cat > "$conf/ok.conf" <<EOF
ServerName "mod_mailoauth in-tree build check"
ServerType standalone
Port 2121
User nobody
Group $group
DelayEngine off
ScoreboardFile $conf/proftpd.scoreboard
MailOAuthEngine on
MailOAuthLog $conf/mailoauth.log
MailOAuthStateDir $conf/state
MailOAuthProgram $tree/contrib/mod_mailoauth/mailoauthd
EOF
if out=$(./proftpd -t -c "$conf/ok.conf" 2>&1) && ! echo "$out" | grep -q 'fatal'; then
  ok "proftpd -t accepts MailOAuthEngine on / MailOAuthLog / MailOAuthStateDir"
else
  bad "proftpd -t rejects a valid configuration:"
  echo "$out" | sed 's/^/    /'
fi

sed 's/^MailOAuthEngine on$/MailOAuthEngine maybe/' "$conf/ok.conf" > "$conf/bad.conf"
line=$(grep -n '^MailOAuthEngine maybe$' "$conf/bad.conf" | cut -d: -f1)
if out=$(./proftpd -t -c "$conf/bad.conf" 2>&1); then
  bad "proftpd -t accepts 'MailOAuthEngine maybe':"
  echo "$out" | sed 's/^/    /'
elif echo "$out" | grep 'MailOAuthEngine' | grep -Eq "line $line([^0-9]|\$)"; then
  ok "proftpd -t rejects 'MailOAuthEngine maybe', naming line $line"
else
  bad "proftpd -t rejects 'MailOAuthEngine maybe' without naming MailOAuthEngine and line $line:"
  echo "$out" | sed 's/^/    /'
fi

if [ "$failed" = 0 ]; then
  say "PASS: ProFTPD $version with static mod_mailoauth ($((t2 - t0))s to build)"
else
  say "FAILED (MAILOAUTH_KEEP_BUILD=1 keeps the build tree and logs)"
fi
exit "$failed"
