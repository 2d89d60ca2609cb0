#!/usr/bin/python3
"""A self-contained local sandbox: mod_mailoauth doing its job on 127.0.0.1.

It starts, all on loopback and with no Azure account or network:
  * a stand-in for Microsoft's token service (HTTPS, test CA),
  * Dovecot (IMAPS, XOAUTH2) and Postfix (submission with STARTTLS and
    XOAUTH2) playing Exchange Online,
  * proftpd with mod_mailoauth: an OAuth account, a notification rule, an
    FTP user;
then signs the account in with ftpmailoauth (device code flow), uploads a
file with curl and shows the notification that arrives in the mailbox, then
mails a file to the account's mailbox and shows it arriving in the FTP
user's folder, where curl fetches it back.
It keeps running for you to try more, until Ctrl-C.

  sandbox.py [--no-wait]   start (and with --no-wait, stop after the demo)
  sandbox.py stop          remove what a previous run left behind
"""

import os
import re
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "lib"))

from certs import TestPKI  # noqa: E402
from mailservers import Dovecot, Postfix  # noqa: E402
from proftpd import ProFTPD  # noqa: E402
from tokensvc import TokenService  # noqa: E402

BASE = os.environ.get("MAILOAUTH_SANDBOX", "/tmp/mailoauth-sandbox")
FTP_USER = "demo"
MAILBOX = "ftp-notify@contoso.test"
TEAM = "partner-team@contoso.test"


def say(text=""):
    print(text, flush=True)


def stop_leftovers():
    """A previous sandbox killed hard may have left servers running."""
    for pidfile in ("ftp/proftpd.pid",):
        try:
            with open(os.path.join(BASE, pidfile)) as f:
                os.kill(int(f.read().split()[0]), signal.SIGTERM)
        except (OSError, ValueError, IndexError):
            pass
    subprocess.run(["pkill", "-f", BASE], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    subprocess.run(["rm", "-rf", BASE])


def sign_in(tool, conf, svc):
    """ftpmailoauth signin --device, with the sandbox approving the code as
    the person would on their phone."""
    proc = subprocess.Popen([tool, "-c", conf, "signin", "--device", "notify"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    out = []
    code = None
    for line in proc.stdout:
        out.append(line)
        say("    | " + line.rstrip())
        m = re.match(r"^User code: (\S+)$", line.strip())
        if m and code is None:
            code = m.group(1)
            say("    (the sandbox enters the code and approves, as %s)"
                % MAILBOX)
            svc.approve_device(code, MAILBOX)
    if proc.wait() != 0:
        sys.exit("sign-in failed:\n" + "".join(out))


def main():
    if os.geteuid() != 0:
        sys.exit("the sandbox starts proftpd, Dovecot and Postfix: run it as "
                 "root")
    module = os.environ.get("MAILOAUTH_MODULE",
                            os.path.join(TOP, "build", "mod_mailoauth.so"))
    tool = os.environ.get("MAILOAUTH_TOOL",
                          os.path.join(TOP, "build", "ftpmailoauth"))
    for path in (module, tool):
        if not os.path.exists(path):
            sys.exit("%s is missing: run ./configure && make first" % path)
    if len(sys.argv) > 1 and sys.argv[1] == "stop":
        stop_leftovers()
        return
    wait = "--no-wait" not in sys.argv

    stop_leftovers()
    os.makedirs(BASE)
    os.chmod(BASE, 0o755)
    started = []
    try:
        say("Starting the sandbox in %s ..." % BASE)
        pki = TestPKI(os.path.join(BASE, "pki")).create()
        svc = TokenService(os.path.join(BASE, "login"), pki).start()
        started.append(svc)
        svc.set_config(device_interval=1)
        app = svc.add_app(redirect_uris=["http://localhost:9090/"
                                         "register_microsoft_graph_api/"])
        svc.add_user(MAILBOX, display_name="FTP notifications")
        mail = os.path.join(BASE, "mail")
        os.makedirs(mail)
        os.chmod(mail, 0o755)
        dovecot = Dovecot(mail, pki, svc.introspect_url, users=[]).start()
        started.append(dovecot)
        postfix = Postfix(mail, pki, dovecot).start()
        started.append(postfix)

        ftp = os.path.join(BASE, "ftp")
        os.makedirs(ftp)
        secret = os.path.join(ftp, "notify.secret")
        with open(secret, "w") as f:
            f.write(app["secret"] + "\n")
        os.chmod(secret, 0o600)
        conf = ("MailOAuthAccount notify authority=%s tenant=contoso.test "
                "client-id=%s client-secret=file:%s mailbox=%s ca-file=%s "
                "proxy=none smtp=smtp://127.0.0.1:%d imap=imaps://127.0.0.1:%d"
                % (svc.url, app["client_id"], secret, MAILBOX, pki.ca_cert,
                   postfix.smtp_port, dovecot.imaps_port))
        rule = ('MailOAuthNotify notify to=%s "subject=%%u sent %%{basename}" '
                'attach=1M' % TEAM)
        inbox = os.path.join(ftp, "home", FTP_USER, "from-mail")
        conf += ("\nMailOAuthIngest partner-mail account=notify every=2 "
                 "dir=%s owner=2001:2001 after=seen" % inbox)
        srv = ProFTPD(ftp, module, users={FTP_USER: 2001}, pki=pki, tls=True,
                      sftp=True, trace_level=10, extra_conf=conf,
                      global_conf="<Global>\n%s\n</Global>" % rule)
        srv.password = FTP_USER
        srv._prepare()
        os.makedirs(inbox)
        os.chown(inbox, 2001, 2001)
        srv.start()
        started.append(srv)

        say()
        say("1. An operator signs the account in once (device code flow):")
        say("   ftpmailoauth -c %s signin --device notify" % srv.conf)
        sign_in(tool, srv.conf, svc)

        say()
        say("2. A partner uploads a file:")
        sample = os.path.join(BASE, "invoice-2026-11.txt")
        with open(sample, "w") as f:
            f.write("Invoice 2026-11: 42 widgets\n")
        cmd = ["curl", "-sS", "-T", sample, "-u",
               "%s:%s" % (FTP_USER, srv.password),
               "ftp://127.0.0.1:%d/invoice-2026-11.txt" % srv.port]
        say("   " + " ".join(cmd))
        subprocess.run(cmd, check=True)

        say()
        say("3. The notification arrives in %s's mailbox:" % TEAM)
        raw = dovecot.wait_for_messages(TEAM, 1, timeout=30)[0]
        head, _, body = raw.decode(errors="replace").partition("\n\n")
        for line in head.splitlines():
            if re.match(r"^(From|To|Subject|Date|Message-ID):", line):
                say("   " + line)
        for line in body.splitlines()[:14]:
            say("   " + line)

        say()
        say("4. A partner mails a file to %s:" % MAILBOX)
        import email.message
        mail = email.message.EmailMessage()
        mail["From"] = "partner@example.test"
        mail["To"] = MAILBOX
        mail["Subject"] = "Delivery note"
        mail.set_content("Please find the delivery note attached.\n")
        note = b"Delivery note 77: 42 widgets shipped\n"
        mail.add_attachment(note, maintype="text", subtype="plain",
                            filename="delivery-note-77.txt")
        dovecot.deliver(MAILBOX, mail.as_bytes())
        deposited = os.path.join(inbox, "delivery-note-77.txt")
        deadline = time.monotonic() + 30
        while not os.path.exists(deposited) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not os.path.exists(deposited):
            sys.exit("the attachment did not arrive in %s" % inbox)
        st = os.stat(deposited)
        say("   the pull task put its attachment into the FTP user's folder:")
        say("   %s (%d bytes, owner uid %d)" % (deposited, st.st_size,
                                               st.st_uid))
        cmd = ["curl", "-sS", "-u", "%s:%s" % (FTP_USER, srv.password),
               "ftp://127.0.0.1:%d/from-mail/delivery-note-77.txt" % srv.port]
        say("   " + " ".join(cmd))
        got = subprocess.run(cmd, check=True, capture_output=True).stdout
        say("   | " + got.decode(errors="replace").rstrip())

        say()
        say("The worker's log (%s):" % srv.log)
        for line in srv.log_text().splitlines():
            say("   " + line)

        say()
        say("Try it yourself:")
        say("  curl -T FILE ftp://%s:%s@127.0.0.1:%d/"
            % (FTP_USER, srv.password, srv.port))
        say("  curl -k -T FILE sftp://%s:%s@127.0.0.1:%d/~/"
            % (FTP_USER, srv.password, srv.sftp_port))
        say("  doveadm -c %s fetch -u %s text mailbox INBOX all"
            % (dovecot.config, TEAM))
        say("  %s -c %s status" % (tool, srv.conf))
        say("  %s -c %s test notify" % (tool, srv.conf))
        say("  tail -f %s" % srv.log)
        if wait:
            say("Press Ctrl-C to stop the sandbox.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                say()
    finally:
        for s in reversed(started):
            try:
                s.stop()
            except Exception:
                pass
        say("Sandbox stopped.")


if __name__ == "__main__":
    main()
