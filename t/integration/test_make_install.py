"""make install: the files where the module expects them, and the state
directory (MailOAuthStateDir's default) made for the server's User, except
under DESTDIR (packaging), where the package's postinst gives it an owner.

Every run installs below a temporary directory (DESTDIR, or the path
variables pointed there), never into the system.
"""

import grp
import os
import pwd
import shutil
import stat
import subprocess
import tempfile

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_install(*assignments):
    if not os.path.exists(os.path.join(TOP, "Makefile")):
        pytest.fail("run ./configure first (make check-integration does)")
    # -o: the programs are never rebuilt here (MODULE_DIR=... would build
    # another default mailoauthd path into the module).
    keep = ["-o", "build/mod_mailoauth.so", "-o", "build/mailoauthd",
            "-o", "build/ftpmailoauth"]
    res = subprocess.run(["make", "-s", "-C", TOP] + keep + ["install"] +
                         list(assignments),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         universal_newlines=True, timeout=300)
    assert res.returncode == 0, res.stdout
    return res.stdout


def mode_owner(path):
    st = os.lstat(path)
    return (stat.S_IMODE(st.st_mode), pwd.getpwuid(st.st_uid).pw_name,
            grp.getgrgid(st.st_gid).gr_name)


def module_dir():
    with open(os.path.join(TOP, "Makefile")) as f:
        for line in f:
            if line.startswith("MODULE_DIR = "):
                return line.split("=", 1)[1].strip()
    raise AssertionError("no MODULE_DIR in Makefile")


@pytest.fixture
def dest():
    path = tempfile.mkdtemp(prefix="mailoauth-install.")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_destdir_install_makes_the_state_directory_without_owner(dest):
    out = make_install("DESTDIR=" + dest)
    mdir = dest + module_dir()
    assert mode_owner(os.path.join(mdir, "mod_mailoauth.so"))[0] == 0o644
    assert mode_owner(os.path.join(mdir, "mailoauthd"))[0] == 0o755
    assert mode_owner(dest + "/usr/sbin/ftpmailoauth")[0] == 0o755
    assert mode_owner(dest + "/usr/share/man/man8/ftpmailoauth.8")[0] == 0o644
    # Root's: the package's postinst hands it to the server's User.
    assert mode_owner(dest + "/var/lib/proftpd") == (0o755, "root", "root")
    assert mode_owner(dest + "/var/lib/proftpd/mailoauth") == \
        (0o700, "root", "root")
    assert "chown" not in out, out


def test_install_gives_the_state_directory_to_proftpd(dest):
    try:
        pwd.getpwnam("proftpd")
        grp.getgrnam("nogroup")
    except KeyError:
        pytest.skip("no proftpd user or nogroup group (proftpd-core)")
    state = os.path.join(dest, "state", "mailoauth")
    make_install("MODULE_DIR=%s/lib" % dest, "SBINDIR=%s/sbin" % dest,
                 "MANDIR=%s/man" % dest, "STATE_DIR=" + state)
    assert mode_owner(os.path.dirname(state))[0] == 0o755
    # STATE_OWNER's default: Debian's User and Group.
    assert mode_owner(state) == (0o700, "proftpd", "nogroup")


def test_install_leaves_an_existing_state_directory_alone(dest):
    state = os.path.join(dest, "state")
    os.mkdir(state, 0o750)
    os.chmod(state, 0o750)
    os.chown(state, 65534, 65534)
    make_install("MODULE_DIR=%s/lib" % dest, "SBINDIR=%s/sbin" % dest,
                 "MANDIR=%s/man" % dest, "STATE_DIR=" + state,
                 "STATE_OWNER=root:root")
    st = os.lstat(state)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == \
        (0o750, 65534, 65534)


def test_state_owner_can_be_chosen(dest):
    state = os.path.join(dest, "state")
    make_install("MODULE_DIR=%s/lib" % dest, "SBINDIR=%s/sbin" % dest,
                 "MANDIR=%s/man" % dest, "STATE_DIR=" + state,
                 "STATE_OWNER=nobody:nogroup")
    assert mode_owner(state) == (0o700, "nobody", "nogroup")
