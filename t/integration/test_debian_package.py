"""The Debian package proftpd-mod-mailoauth, built from this tree.

dpkg-buildpackage -us -uc -b in a copy of the tree, lintian on the result,
then on this machine: apt-get install ./proftpd-mod-mailoauth_*.deb, the
files, owners and modes, proftpd -t with Debian's own proftpd.conf, a
private proftpd (never the system's on port 21) loading the installed
conf.d snippet, module and mailoauthd, an upload logged by the worker, then
apt-get remove and purge.  The package is purged at the end whatever
happened, and whatever the test left in the state directory is removed.
"""

import fnmatch
import ftplib
import glob
import grp
import io
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile

import pytest

from proftpd import ProFTPD, proc_status

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORK_BASE = os.environ.get("MAILOAUTH_TEST_WORKDIR", "/tmp/mailoauth-tests")

PKG = "proftpd-mod-mailoauth"
MODULE = "/usr/lib/proftpd/mod_mailoauth.so"
PROGRAM = "/usr/lib/proftpd/mailoauthd"
TOOL = "/usr/sbin/ftpmailoauth"
MANPAGE = "/usr/share/man/man8/ftpmailoauth.8.gz"
DOCDIR = "/usr/share/doc/proftpd-mod-mailoauth"
CONFFILE = "/etc/proftpd/conf.d/mailoauth.conf"
STATE_PARENT = "/var/lib/proftpd"
STATE_DIR = "/var/lib/proftpd/mailoauth"
DEBIAN_CONF = "/etc/proftpd/proftpd.conf"

APT_ENV = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
# Other jobs on the machine may hold the dpkg lock for a moment.
APT_OPTS = ["-y", "-q", "-o", "DPkg::Lock::Timeout=120"]


def run(cmd, timeout=300, check=True, **kwargs):
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         universal_newlines=True, timeout=timeout, **kwargs)
    if check:
        assert res.returncode == 0, "%s failed (%d):\n%s" % (
            " ".join(cmd), res.returncode, res.stdout)
    return res


def dpkg_status(pkg=PKG):
    """dpkg's two-letter state of pkg: 'ii', 'rc', or '' when unknown."""
    res = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", pkg],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         universal_newlines=True)
    return res.stdout.strip() if res.returncode == 0 else ""


def copy_tree(dest):
    """The source tree as a checkout would have it: tracked files and new
    ones, nothing ignored (no build/, no Makefile from ./configure)."""
    res = subprocess.run(["git", "-C", TOP, "ls-files", "-z", "-c", "-o",
                          "--exclude-standard"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    if res.returncode == 0 and res.stdout:
        for name in res.stdout.decode().split("\0"):
            src = os.path.join(TOP, name)
            if not name or not os.path.lexists(src):
                continue
            os.makedirs(os.path.join(dest, os.path.dirname(name)),
                        exist_ok=True)
            shutil.copy2(src, os.path.join(dest, name), follow_symlinks=False)
    else:
        shutil.copytree(TOP, dest, symlinks=True, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(
                            ".git", "build", "__pycache__", ".pytest_cache"))
        for name in ("Makefile", os.path.join("mod_mailoauth", "Makefile")):
            if os.path.exists(os.path.join(dest, name)):
                os.unlink(os.path.join(dest, name))


@pytest.fixture(scope="module")
def built():
    """Builds the package; returns (directory, .deb path, .changes path)."""
    if shutil.which("dpkg-buildpackage") is None or shutil.which("dh") is None:
        pytest.fail("dpkg-dev and debhelper are needed (t/setup-debian.sh)")
    os.makedirs(WORK_BASE, exist_ok=True)
    os.chmod(WORK_BASE, 0o755)
    work = tempfile.mkdtemp(prefix="debian-package.", dir=WORK_BASE)
    # apt's unprivileged _apt user reads the .deb from here.
    os.chmod(work, 0o755)
    src = os.path.join(work, "src")
    os.mkdir(src)
    copy_tree(src)
    # The unit tests are run by make check-unit: not again here.
    env = dict(os.environ, DEB_BUILD_OPTIONS="nocheck parallel=2")
    for var in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "CFLAGS", "LDFLAGS"):
        env.pop(var, None)
    res = run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, env=env,
              timeout=600, check=False)
    with open(os.path.join(work, "build.log"), "w") as f:
        f.write(res.stdout)
    assert res.returncode == 0, "dpkg-buildpackage failed:\n" + res.stdout[-6000:]
    debs = glob.glob(os.path.join(work, PKG + "_*.deb"))
    changes = glob.glob(os.path.join(work, PKG + "_*.changes"))
    assert len(debs) == 1 and len(changes) == 1, os.listdir(work)
    yield work, debs[0], changes[0], res.stdout
    shutil.rmtree(work, ignore_errors=True)


def test_build_has_no_warnings(built):
    _, _, _, log = built
    warnings = [line for line in log.splitlines()
                if re.search(r"warning:", line, re.I)]
    assert warnings == [], "\n".join(warnings)


def test_lintian_clean(built):
    """No error and no warning at lintian's default level, on the binary
    package and on the .changes (which adds the .buildinfo's checks)."""
    if shutil.which("lintian") is None:
        pytest.fail("lintian is needed (t/setup-debian.sh)")
    _, deb, changes, _ = built
    res = run(["lintian", "--fail-on", "error,warning", deb, changes],
              check=False)
    tags = [line for line in res.stdout.splitlines()
            if re.match(r"[EW]: ", line)]
    assert tags == [] and res.returncode == 0, res.stdout


def test_control_fields(built):
    _, deb, _, _ = built
    fields = run(["dpkg-deb", "-f", deb]).stdout
    depends = re.search(r"^Depends: (.*)$", fields, re.M).group(1)
    deps = [d.strip() for d in depends.split(",")]
    # The ProFTPD ABI from proftpd-dev's proftpd-substvars, as Debian's
    # module packages have it, and the libraries found by dpkg-shlibdeps.
    with open("/usr/share/proftpd/proftpd-substvars") as f:
        abi = re.search(r"proftpd:Depends=(\S+)", f.read()).group(1)
    assert abi == "proftpd-abi-1.3.8"
    assert abi in deps
    assert any(d.startswith("libcurl4 ") for d in deps), deps
    assert any(d.startswith("libytnef0") for d in deps), deps
    listed = subprocess.run(
        "dpkg-deb --ctrl-tarfile %s | tar -xOf - ./conffiles" % deb,
        shell=True, stdout=subprocess.PIPE, universal_newlines=True).stdout
    assert listed.split() == [CONFFILE]
    contents = run(["dpkg-deb", "-c", deb]).stdout
    # The state directory is postinst's, not dpkg's (dpkg would give it
    # back to root on every upgrade).
    assert "./var/" not in contents
    for path in (MODULE, PROGRAM, TOOL, MANPAGE, CONFFILE,
                 DOCDIR + "/mod_mailoauth.html"):
        assert " ." + path + "\n" in contents, contents


def dpkg_excludes(path):
    """Whether dpkg is told not to install path (path-exclude, as minimal
    container images do for /usr/share/man and /usr/share/doc)."""
    excluded = False
    for cfg in sorted(glob.glob("/etc/dpkg/dpkg.cfg.d/*")):
        try:
            with open(cfg) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split()
            if len(words) == 2 and fnmatch.fnmatch(path, words[1]):
                if words[0] == "path-exclude":
                    excluded = True
                elif words[0] == "path-include":
                    excluded = False
    return excluded


def mode_owner(path):
    st = os.lstat(path)
    return (stat.S_IMODE(st.st_mode), pwd.getpwuid(st.st_uid).pw_name,
            grp.getgrgid(st.st_gid).gr_name)


class PackagedProFTPD(ProFTPD):
    """A private proftpd on a loopback port that loads the module the way
    the package does: Debian's module directory and the installed conf.d
    snippet; mailoauthd and the state directory at their defaults; User
    and Group those of Debian's proftpd.conf."""

    def config_text(self):
        text = super().config_text()
        lines = []
        for line in text.splitlines(True):
            if line.startswith("ModulePath "):
                line = "ModulePath /usr/lib/proftpd\nInclude %s\n" % CONFFILE
            elif line.startswith("LoadModule mod_mailoauth.c"):
                continue
            elif line.startswith(("MailOAuthProgram ", "MailOAuthStateDir ")):
                continue
            lines.append(line)
        text = "".join(lines)
        assert "Include %s\n" % CONFFILE in text
        assert "MailOAuthProgram" not in text
        assert "MailOAuthStateDir" not in text
        return text


def uncommented_example(snippet):
    """The snippet's commented <IfModule mod_mailoauth.c> block, with one
    level of comment taken off (comments within it stay comments)."""
    out, inside = [], False
    for line in snippet.splitlines():
        if line.startswith("#<IfModule mod_mailoauth.c>"):
            inside = True
        if inside:
            out.append(line[1:] if line.startswith("#") else line)
            if line.startswith("#</IfModule>"):
                break
    return "\n".join(out) + "\n"


def upload(srv, name, data):
    ftp = ftplib.FTP()
    ftp.connect(srv.host, srv.port, timeout=30)
    try:
        ftp.login("alice", srv.password)
        ftp.storbinary("STOR " + name, io.BytesIO(data))
    finally:
        try:
            ftp.quit()
        except (OSError, EOFError, ftplib.Error):
            ftp.close()


def apt_get(*args):
    return run(["apt-get"] + list(args[:1]) + APT_OPTS + list(args[1:]),
               env=APT_ENV, timeout=300)


def test_install_run_remove_purge(built):
    work, deb, _, _ = built
    if dpkg_status():
        pytest.skip("%s is already known to dpkg (%s): not touching it"
                    % (PKG, dpkg_status()))
    for path in (MODULE, PROGRAM, TOOL, CONFFILE):
        if os.path.lexists(path):
            pytest.skip("%s exists (make install?): installing the package "
                        "would replace it" % path)
    try:
        pwd.getpwnam("proftpd")
    except KeyError:
        pytest.skip("no proftpd user (proftpd-core not installed)")
    parent_existed = os.path.isdir(STATE_PARENT)
    srv = None
    try:
        # -- install ---------------------------------------------------
        apt_get("install", "--no-install-recommends", deb)
        assert dpkg_status() == "ii"

        assert mode_owner(MODULE) == (0o644, "root", "root")
        assert mode_owner(PROGRAM) == (0o755, "root", "root")
        assert mode_owner(TOOL) == (0o755, "root", "root")
        assert mode_owner(CONFFILE) == (0o644, "root", "root")
        html = os.path.join(DOCDIR, "mod_mailoauth.html")
        if not dpkg_excludes(html):
            assert mode_owner(html) == (0o644, "root", "root")
        res = run([TOOL, "--help"], check=False)
        assert res.returncode == 0 and "signin" in res.stdout, res.stdout
        # Where the module looks for mailoauthd by default.
        with open(MODULE, "rb") as f:
            assert PROGRAM.encode() + b"\0" in f.read()
        if not dpkg_excludes(MANPAGE):
            assert mode_owner(MANPAGE) == (0o644, "root", "root")
        if not dpkg_excludes(MANPAGE) and shutil.which("man"):
            res = run(["man", "-P", "cat", "ftpmailoauth"],
                      env=dict(os.environ, MANWIDTH="80"), check=False)
            assert "signin" in res.stdout, res.stdout
        if not parent_existed:
            assert mode_owner(STATE_PARENT) == (0o755, "root", "root")
        assert not os.path.islink(STATE_DIR)
        assert mode_owner(STATE_DIR) == (0o700, "proftpd", "nogroup")
        with open(CONFFILE) as f:
            snippet = f.read()
        assert "Include /usr/lib/proftpd/mod_mailoauth.loa[d]" in snippet
        with open("/usr/lib/proftpd/mod_mailoauth.load") as f:
            assert re.search(r"^\s*LoadModule mod_mailoauth\.c$", f.read(),
                             re.M)

        # -- proftpd -t: Debian's proftpd.conf (which includes conf.d/),
        # with the engine on -------------------------------------------
        check_dir = tempfile.mkdtemp(prefix="debian-check.", dir=work)
        os.chmod(check_dir, 0o755)
        conf = os.path.join(check_dir, "check.conf")
        with open(conf, "w") as f:
            f.write("Include %s\n<IfModule mod_mailoauth.c>\n"
                    "  MailOAuthEngine on\n  MailOAuthLog %s/mailoauth.log\n"
                    "</IfModule>\n" % (DEBIAN_CONF, check_dir))
        res = run(["/usr/sbin/proftpd", "-t", "-c", conf], check=False)
        assert res.returncode == 0 and "fatal" not in res.stdout, res.stdout
        # The module is loaded and the engine on: a bad value is refused.
        with open(conf, "a") as f:
            f.write("<IfModule mod_mailoauth.c>\n  MailOAuthEngine maybe\n"
                    "</IfModule>\n")
        res = run(["/usr/sbin/proftpd", "-t", "-c", conf], check=False)
        assert res.returncode != 0 and "MailOAuthEngine" in res.stdout, \
            res.stdout

        # The commented example, uncommented, is a working configuration
        # (with a client secret file of ours and a log in our directory).
        secret = os.path.join(check_dir, "notify.secret")
        with open(secret, "w") as f:
            f.write("not-a-real-secret\n")
        os.chmod(secret, 0o600)
        example = uncommented_example(snippet)
        assert "MailOAuthAccount notify" in example, snippet
        example = example.replace("/etc/proftpd/notify.secret", secret)
        example = example.replace("/var/log/proftpd/mailoauth.log",
                                  os.path.join(check_dir, "example.log"))
        with open(conf, "w") as f:
            f.write("Include %s\n%s" % (DEBIAN_CONF, example))
        res = run(["/usr/sbin/proftpd", "-t", "-c", conf], check=False)
        assert res.returncode == 0 and "fatal" not in res.stdout, \
            res.stdout + "\n" + example

        # -- a private server: an upload reaches the worker ---------------
        srv_dir = tempfile.mkdtemp(prefix="debian-proftpd.", dir=work)
        os.chmod(srv_dir, 0o755)
        srv = PackagedProFTPD(srv_dir, MODULE, daemon_user="proftpd",
                              daemon_group="nogroup")
        srv.start()
        workers = srv.worker_pids()
        assert len(workers) == 1, srv.diagnostics()
        assert os.readlink("/proc/%d/exe" % workers[0]) == PROGRAM
        assert proc_status(workers[0])["Uid"].split()[0] == \
            str(pwd.getpwnam("proftpd").pw_uid)
        upload(srv, "from-the-package.txt", b"packaged\n")
        text = srv.wait_log("upload event", timeout=20)
        assert "from-the-package.txt" in text, text
        srv.stop()
        srv = None
        # The server used the package's state directory.
        assert os.listdir(STATE_DIR), "nothing in %s" % STATE_DIR

        # -- remove: programs gone, configuration and state kept ----------
        apt_get("remove", PKG)
        assert dpkg_status() == "rc"
        for path in (MODULE, PROGRAM, TOOL, MANPAGE):
            assert not os.path.lexists(path), path
        assert os.path.isfile(CONFFILE)
        assert mode_owner(STATE_DIR) == (0o700, "proftpd", "nogroup")
        # The conffile stays, and proftpd still starts: it loads the module
        # through a file that went with the package.
        assert not os.path.exists("/usr/lib/proftpd/mod_mailoauth.load")
        res = run(["/usr/sbin/proftpd", "-t", "-c", DEBIAN_CONF], check=False)
        assert res.returncode == 0, res.stdout + res.stderr

        # -- purge: the conffile goes; the state directory keeps what the
        # server stored (a token file here) and loses its empty
        # directories ---------------------------------------------------
        tokens = os.path.join(STATE_DIR, "tokens")
        os.makedirs(tokens, exist_ok=True)
        token = os.path.join(tokens, "kept.json")
        with open(token, "w") as f:
            f.write("{}\n")
        empty = os.path.join(STATE_DIR, "empty-subdir")
        os.makedirs(empty, exist_ok=True)
        apt_get("purge", PKG)
        assert dpkg_status() == ""
        assert not os.path.lexists(CONFFILE)
        assert os.path.isfile(token)
        assert not os.path.lexists(empty)
        shutil.rmtree(STATE_DIR)

        # -- install and purge again: an empty state directory goes, and
        # its parent if the package made it --------------------------------
        apt_get("install", "--no-install-recommends", deb)
        assert mode_owner(STATE_DIR) == (0o700, "proftpd", "nogroup")
        apt_get("purge", PKG)
        assert not os.path.lexists(STATE_DIR)
        assert os.path.isdir(STATE_PARENT) == parent_existed
    finally:
        if srv is not None:
            srv.stop()
        if dpkg_status():
            subprocess.run(["apt-get", "purge"] + APT_OPTS + [PKG],
                           env=APT_ENV, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=300)
        shutil.rmtree(STATE_DIR, ignore_errors=True)
        if not parent_existed:
            try:
                os.rmdir(STATE_PARENT)
            except OSError:
                pass
