"""ProFTPD 1.3.8 built from source with mod_mailoauth compiled in statically.

Runs t/intree-build.sh: a copy of a ProFTPD source tree with the module in
contrib/, ./configure --with-modules=mod_mailoauth, make, then proftpd -l and
proftpd -t checks.  The source tree comes from $PROFTPD_SRC when set, else the
script fetches it once (apt-get source proftpd-dfsg) into its cache.
"""

import os
import subprocess
import sys

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(TOP, "t", "intree-build.sh")

# Fetching the source and building ProFTPD takes about a minute; leave room
# for a slow machine.
TIMEOUT_SECS = 1800


def test_intree_static_build():
    proc = subprocess.run(
        ["sh", SCRIPT], cwd=TOP,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        universal_newlines=True, timeout=TIMEOUT_SECS)
    sys.stdout.write(proc.stdout)
    assert proc.returncode == 0, "t/intree-build.sh failed:\n" + proc.stdout
    assert "proftpd -l lists mod_mailoauth.c" in proc.stdout
    assert any(line.strip() == "mod_mailoauth.c"
               for line in proc.stdout.splitlines()), proc.stdout
