"""Mail-to-folder ingestion end to end: mail with attachments delivered into
a real Dovecot is fetched by proftpd's worker over IMAPS (XOAUTH2 checked by
the token stand-in), and its attachments are deposited, as the FTP user,
into that user's directory, where an FTP client can download them."""

import email.message
import email.policy
import hashlib
import os
import re
import signal
import subprocess
import time
import uuid

import pytest

from test_accounts import ALICE, AccountServer, wait_for

UID = 2001


def make_mail(attachments, subject=None, sender="scanner@contoso.test",
              text="See attached."):
    """attachments: [(filename, bytes, maintype/subtype, disposition)]."""
    msg = email.message.EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sender
    msg["To"] = ALICE
    msg["Subject"] = subject or "mail %s" % uuid.uuid4().hex[:8]
    msg["Message-ID"] = "<%s@contoso.test>" % uuid.uuid4().hex
    msg.set_content(text)
    for att in attachments:
        name, data, ctype = att[:3]
        disp = att[3] if len(att) > 3 else "attachment"
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype,
                           filename=name, disposition=disp)
    return msg.as_bytes()


def clear_mailbox(dovecot):
    for box in ("INBOX", "Done", "Failed"):
        dovecot.doveadm("expunge", "-u", ALICE, "mailbox", box, "all",
                        check=False)


def flags(dovecot, uid, mailbox="INBOX"):
    r = dovecot.doveadm("-f", "flow", "fetch", "-u", ALICE, "flags",
                        "mailbox", mailbox, "uid", str(uid))
    return r.stdout.decode().strip()


def uids(dovecot, mailbox="INBOX"):
    r = dovecot.doveadm("search", "-u", ALICE, "mailbox", mailbox, "all",
                        check=False)
    return [int(line.split()[1]) for line in r.stdout.decode().splitlines()]


def sha(data):
    return hashlib.sha256(data).hexdigest()


def listing(d):
    return sorted(os.listdir(d))


@pytest.fixture
def ingester(make_proftpd, tokensvc, tokensvc_app, pki, dovecot):
    """factory(settings, every=1) -> (AccountServer, inbox dir), started."""

    def factory(settings="", every=1, start=True, task="t1"):
        clear_mailbox(dovecot)
        a = AccountServer(make_proftpd, tokensvc, tokensvc_app, pki,
                          extra="imap=imaps://%s:%d"
                          % (dovecot.host, dovecot.imaps_port))
        inbox = os.path.join(a.srv.home("alice"), "inbox")
        a.srv.extra_conf += (
            "\nMailOAuthIngest %s account=notify every=%d dir=%s "
            "owner=%d:%d %s\n" % (task, every, inbox, UID, UID, settings))
        a.seed()
        a.inbox = inbox

        def go():
            a.srv._prepare()
            os.makedirs(inbox, exist_ok=True)
            os.chown(inbox, UID, UID)
            os.chmod(inbox, 0o755)
            a.srv.start()
            return a
        a.go = go
        if start:
            go()
        return a

    return factory


def wait_files(d, n, timeout=20):
    return wait_for(lambda: len(visible(d)) >= n and visible(d),
                    timeout=timeout, what="%d files in %s" % (n, d))


def visible(d):
    if not os.path.isdir(d):
        return []
    return [f for f in os.listdir(d) if not f.startswith(".")]


def test_attachment_is_deposited_and_mail_flagged(ingester, dovecot):
    data = os.urandom(200000)
    a = ingester(start=False)
    dovecot.deliver(ALICE, make_mail([("report.pdf", data,
                                       "application/pdf")]))
    a.go()
    wait_files(a.inbox, 1)
    a.srv.wait_log("deposited", timeout=10)
    path = os.path.join(a.inbox, "report.pdf")
    with open(path, "rb") as f:
        assert sha(f.read()) == sha(data)
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (UID, UID)
    assert listing(a.inbox) == ["report.pdf"]        # no hidden temp file
    uid = uids(dovecot)[0]
    wait_for(lambda: "\\Seen" in flags(dovecot, uid), timeout=10,
             what="\\Seen")
    # Later runs (every second) take nothing again.
    time.sleep(3)
    assert listing(a.inbox) == ["report.pdf"]
    # New mail after the first run is taken by a later run.
    dovecot.deliver(ALICE, make_mail([("second.txt", b"two\n",
                                       "text/plain")]))
    wait_files(a.inbox, 2)
    with open(os.path.join(a.inbox, "second.txt"), "rb") as f:
        assert f.read() == b"two\n"
    time.sleep(2)
    assert listing(a.inbox) == ["report.pdf", "second.txt"]
    tasks = os.path.join(a.srv.state_dir, "tasks")
    assert os.path.exists(os.path.join(tasks, "t1.json"))
    assert listing(os.path.join(a.srv.state_dir, "tmp")) == []


def test_files_filter_and_inline_parts(ingester, dovecot):
    a = ingester('files=*.pdf,*.PDF', start=False)
    dovecot.deliver(ALICE, make_mail([
        ("a.pdf", b"%PDF-1.4 a", "application/pdf"),
        ("b.docx", b"PK docx", "application/octet-stream"),
        ("logo.png", b"\x89PNG logo", "image/png", "inline"),
        ("C.PDF", b"%PDF-1.4 c", "application/pdf")]))
    a.go()
    wait_files(a.inbox, 2)
    time.sleep(2)
    assert sorted(visible(a.inbox)) == ["C.PDF", "a.pdf"]


def test_inline_on_takes_named_inline_parts(ingester, dovecot):
    a = ingester('inline=on', start=False)
    dovecot.deliver(ALICE, make_mail([
        ("logo.png", b"\x89PNG logo", "image/png", "inline"),
        ("x.bin", b"x", "application/octet-stream")]))
    a.go()
    wait_files(a.inbox, 2)
    assert sorted(visible(a.inbox)) == ["logo.png", "x.bin"]


def test_traversal_name_lands_sanitized_inside_dir(ingester, dovecot):
    a = ingester(start=False)
    dovecot.deliver(ALICE, make_mail([("../../etc/x", b"evil",
                                       "application/octet-stream")]))
    a.go()
    files = wait_files(a.inbox, 1)
    assert files == ["x"]
    home = a.srv.home("alice")
    assert not os.path.exists(os.path.join(home, "etc"))
    assert not os.path.exists(os.path.join(os.path.dirname(home), "etc", "x"))
    with open(os.path.join(a.inbox, "x"), "rb") as f:
        assert f.read() == b"evil"


def test_subject_filter_and_after_delete(ingester, dovecot):
    a = ingester('"subject=Scan *" after=delete', start=False)
    dovecot.deliver(ALICE, make_mail([("other.txt", b"o", "text/plain")],
                                     subject="Invoice 7"))
    dovecot.deliver(ALICE, make_mail([("scan.txt", b"s", "text/plain")],
                                     subject="Scan 42"))
    a.go()
    wait_files(a.inbox, 1)
    time.sleep(2)
    assert visible(a.inbox) == ["scan.txt"]
    # The matching message is deleted, the other left unread.
    left = uids(dovecot)
    assert len(left) == 1
    assert "\\Seen" not in flags(dovecot, left[0])


def test_after_move_and_failed_move(ingester, dovecot):
    dovecot.doveadm("mailbox", "create", "-u", ALICE, "Done", check=False)
    a = ingester("after=move:Done failed=move:Failed", start=False)
    dovecot.deliver(ALICE, make_mail([("m.txt", b"m", "text/plain")]))
    dovecot.deliver(ALICE, make_mail([], text="no attachment here"))
    a.go()
    wait_files(a.inbox, 1)
    wait_for(lambda: len(uids(dovecot, "Done")) == 1 and
             len(uids(dovecot, "Failed")) == 1, timeout=15,
             what="messages moved")
    assert uids(dovecot) == []


def test_ftp_download_matches(ingester, dovecot):
    data = os.urandom(123457)
    a = ingester(start=False)
    dovecot.deliver(ALICE, make_mail([("dl.bin", data,
                                       "application/octet-stream")]))
    a.go()
    wait_files(a.inbox, 1)
    out = os.path.join(a.srv.dir, "downloaded")
    r = subprocess.run(["curl", "-sS", "--max-time", "30", "-u",
                        "alice:%s" % a.srv.password, "-o", out,
                        "ftp://%s:%d/inbox/dl.bin" % (a.srv.host,
                                                      a.srv.port)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    with open(out, "rb") as f:
        assert sha(f.read()) == sha(data)


def test_name_collision_gets_a_number(ingester, dovecot):
    a = ingester(start=False)
    for i in range(2):
        dovecot.deliver(ALICE, make_mail([("same.txt", b"v%d" % i,
                                           "text/plain")]))
    a.go()
    files = wait_files(a.inbox, 2)
    assert sorted(files) == ["same (1).txt", "same.txt"]


def test_kill_worker_mid_run_neither_loses_nor_duplicates(ingester, dovecot):
    a = ingester(start=False)
    n = 10
    payloads = {}
    for i in range(n):
        name = "f%02d.bin" % i
        payloads[name] = os.urandom(300000)
        dovecot.deliver(ALICE, make_mail([(name, payloads[name],
                                           "application/octet-stream")]))
    a.go()
    # Kill the worker (and so its helper) right after deposits, when the
    # file may be in place but not yet recorded, several times: each
    # replacement carries on where the last one stopped.
    for k in (1, 3, 5, 7):
        wait_for(lambda: len(visible(a.inbox)) >= k, timeout=30,
                 what="%d deposits" % k)
        for pid in a.srv.worker_pids():
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: len(visible(a.inbox)) >= n, timeout=60,
             what="all deposits")
    time.sleep(3)
    files = sorted(visible(a.inbox))
    assert files == sorted(payloads), files
    for name, data in payloads.items():
        with open(os.path.join(a.inbox, name), "rb") as f:
            assert sha(f.read()) == sha(data), name
    # No temporary file left behind, every message flagged.
    assert sorted(os.listdir(a.inbox)) == files
    for uid in uids(dovecot):
        assert "\\Seen" in flags(dovecot, uid)


@pytest.mark.parametrize("setting, hint", [
    ("owner=0:0", "must not be root"),
    ("dir=relative/path", "absolute path"),
    ("after=sometimes", "write after=seen"),
    ("max-size=lots", "is not a size"),
    ("colour=blue", "unknown setting 'colour'"),
])
def test_bad_ingest_settings_fail_syntax_check(make_proftpd, tokensvc,
                                               tokensvc_app, pki, setting,
                                               hint):
    a = AccountServer(make_proftpd, tokensvc, tokensvc_app, pki)
    a.srv.extra_conf += ("\nMailOAuthIngest t1 account=notify every=60 "
                         "dir=/srv/in owner=2001:2001 %s\n" % setting)
    r = a.srv.syntax_check()
    assert r.returncode != 0
    assert hint in r.stderr + r.stdout, r.stderr


def test_unknown_account_fails(make_proftpd, tokensvc, tokensvc_app, pki):
    a = AccountServer(make_proftpd, tokensvc, tokensvc_app, pki)
    a.srv.extra_conf += ("\nMailOAuthIngest t1 account=nosuch every=60 "
                         "dir=/srv/in owner=2001:2001\n")
    r = a.srv.syntax_check()
    assert r.returncode != 0
    assert "no MailOAuthAccount named 'nosuch'" in r.stderr + r.stdout


def test_name_template_makes_subdirectories(ingester, dovecot):
    a = ingester("name=%Y/%{uid}-%{filename}", start=False)
    dovecot.deliver(ALICE, make_mail([("t.txt", b"t", "text/plain")]))
    a.go()
    year = time.strftime("%Y")
    sub = os.path.join(a.inbox, year)
    files = wait_for(lambda: visible(sub), timeout=20, what="subdirectory")
    assert len(files) == 1 and files[0].endswith("-t.txt"), files
    st = os.stat(sub)
    assert (st.st_uid, st.st_gid) == (UID, UID)


def test_metadata_file_follows_the_name_template(ingester, dovecot):
    """The metadata file is named through name= like the files, as
    <Subject>.json: its folder is the one the template makes for that
    name (documented under metadata=)."""
    a = ingester("metadata=on name=%Y/%{ext}/%{filename}", start=False)
    dovecot.deliver(ALICE, make_mail([("t.txt", b"t", "text/plain")],
                                      subject="Week 49"))
    a.go()
    year = time.strftime("%Y")
    meta = wait_for(lambda: visible(os.path.join(a.inbox, year, "json")),
                    timeout=20, what="the metadata file")
    assert meta == ["Week 49.json"], meta
    assert visible(os.path.join(a.inbox, year, "txt")) == ["t.txt"]


def test_max_size_leaves_big_mail_unread(ingester, dovecot):
    a = ingester("max-size=10K", start=False)
    dovecot.deliver(ALICE, make_mail([("big.bin", os.urandom(50000),
                                       "application/octet-stream")]))
    dovecot.deliver(ALICE, make_mail([("small.txt", b"s", "text/plain")]))
    a.go()
    wait_files(a.inbox, 1)
    a.srv.wait_log("larger than max-size", timeout=10)
    assert visible(a.inbox) == ["small.txt"]
    big = uids(dovecot)[0]
    assert "\\Seen" not in flags(dovecot, big)


def test_unwritable_dir_leaves_mail_and_logs_once(ingester, dovecot):
    a = ingester(start=False)
    dovecot.deliver(ALICE, make_mail([("p.txt", b"p", "text/plain")]))
    a.srv._prepare()
    os.makedirs(a.inbox, exist_ok=True)
    os.chown(a.inbox, 0, 0)
    os.chmod(a.inbox, 0o755)
    a.srv.start()
    a.srv.wait_log("cannot deposit", timeout=15)
    time.sleep(3)
    assert a.srv.log_text().count("cannot deposit") == 1
    uid = uids(dovecot)[0]
    assert "\\Seen" not in flags(dovecot, uid)
    # Fixed: the next run takes it.
    os.chown(a.inbox, UID, UID)
    wait_files(a.inbox, 1)
    a.srv.wait_log("working again", timeout=10)


@pytest.fixture
def share_owner():
    """A system user whose write access to a directory comes only through
    a supplementary group: (uid, gid, share gid)."""
    import grp
    import pwd
    user, group = "moa_owner_t", "moa_share_t"
    subprocess.run(["userdel", user], capture_output=True)
    subprocess.run(["groupdel", user], capture_output=True)
    subprocess.run(["groupdel", group], capture_output=True)
    subprocess.run(["groupadd", "-r", group], check=True)
    subprocess.run(["useradd", "-r", "-M", "-U", "-G", group, "-s",
                    "/usr/sbin/nologin", user], check=True)
    try:
        pw = pwd.getpwnam(user)
        yield pw.pw_uid, pw.pw_gid, grp.getgrnam(group).gr_gid
    finally:
        subprocess.run(["userdel", user], capture_output=True)
        subprocess.run(["groupdel", user], capture_output=True)
        subprocess.run(["groupdel", group], capture_output=True)


def test_owner_writes_through_a_supplementary_group(ingester, dovecot,
                                                    share_owner):
    """The deposit holds the owner's supplementary groups, as a login
    would: a root:group 2770 share the owner may write only as a member of
    that group takes the file."""
    uid, gid, share = share_owner
    a = ingester(start=False)
    a.srv.extra_conf = a.srv.extra_conf.replace(
        "owner=%d:%d" % (UID, UID), "owner=%d:%d" % (uid, gid))
    dovecot.deliver(ALICE, make_mail([("s.txt", b"shared\n", "text/plain")]))
    a.srv._prepare()
    os.makedirs(a.inbox, exist_ok=True)
    os.chown(a.inbox, 0, share)
    os.chmod(a.inbox, 0o2770)
    a.srv.start()
    wait_files(a.inbox, 1)
    a.srv.wait_log("deposited", timeout=10)
    path = os.path.join(a.inbox, "s.txt")
    with open(path, "rb") as f:
        assert f.read() == b"shared\n"
    st = os.stat(path)
    assert st.st_uid == uid
    assert "cannot deposit" not in a.srv.log_text()


def test_recreated_folder_takes_only_new_mail(ingester, dovecot):
    dovecot.doveadm("mailbox", "delete", "-u", ALICE, "Scans", check=False)
    dovecot.doveadm("mailbox", "create", "-u", ALICE, "Scans")
    a = ingester("folder=Scans", start=False)
    dovecot.deliver(ALICE, make_mail([("one.txt", b"1", "text/plain")]),
                    mailbox="Scans")
    a.go()
    wait_files(a.inbox, 1)
    # The folder is replaced by one holding old mail and then new mail.
    dovecot.doveadm("mailbox", "delete", "-u", ALICE, "Scans")
    dovecot.doveadm("mailbox", "create", "-u", ALICE, "Scans")
    dovecot.deliver(ALICE, make_mail([("old.txt", b"o", "text/plain")]),
                    mailbox="Scans")
    a.srv.wait_log("was recreated", timeout=15)
    dovecot.deliver(ALICE, make_mail([("new.txt", b"n", "text/plain")]),
                    mailbox="Scans")
    wait_files(a.inbox, 2)
    time.sleep(2)
    assert sorted(visible(a.inbox)) == ["new.txt", "one.txt"]
    assert a.srv.log_text().count("was recreated") == 1


def test_deposit_unrecorded_before_a_crash_is_not_repeated(ingester, dovecot):
    """The worker died after the helper put the file in place but before
    the ledger said so: the next worker finds the file, not a duplicate."""
    data = os.urandom(4321)
    a = ingester(start=False)
    dovecot.deliver(ALICE, make_mail([("r.bin", data,
                                       "application/octet-stream")]))
    uid = uids(dovecot)[0]
    status = dovecot.doveadm("mailbox", "status", "-u", ALICE,
                             "uidvalidity", "INBOX").stdout.decode()
    uidvalidity = int(status.split("=")[1])
    a.srv._prepare()
    # What the dead worker left: its state, the request in the ledger
    # (part 2: the attachment after the multipart and the text), the file.
    tasks = os.path.join(a.srv.state_dir, "tasks")
    os.makedirs(tasks, exist_ok=True)
    for path, text in (
            (os.path.join(tasks, "t1.json"),
             '{"uidvalidity": %d, "next": %d}\n' % (uidvalidity, uid)),
            (os.path.join(tasks, "t1.ledger"),
             "? %d %d 2 %d %d r.bin\n" % (uidvalidity, uid,
                                          int(time.time()) - 5, len(data)))):
        with open(path, "w") as f:
            f.write(text)
    os.makedirs(a.inbox, exist_ok=True)
    os.chown(a.inbox, UID, UID)
    with open(os.path.join(a.inbox, "r.bin"), "wb") as f:
        f.write(data)
    os.chown(os.path.join(a.inbox, "r.bin"), UID, UID)
    for d in (a.srv.state_dir, tasks):
        os.chown(d, 65534, 65534)
        os.chmod(d, 0o700)
    for f in os.listdir(tasks):
        os.chown(os.path.join(tasks, f), 65534, 65534)
    a.go()
    a.srv.wait_log("was deposited before a restart", timeout=15)
    wait_for(lambda: "\\Seen" in flags(dovecot, uid), timeout=10,
             what="\\Seen")
    time.sleep(2)
    assert visible(a.inbox) == ["r.bin"]


ROUTED_UID = 2002


def routed_dir(a, name, uid=ROUTED_UID):
    d = os.path.join(os.path.dirname(a.srv.home("alice")), name)
    os.makedirs(d, exist_ok=True)
    os.chown(d, uid, uid)
    os.chmod(d, 0o755)
    return d


def test_routes_send_messages_to_their_directories(ingester, dovecot):
    """Routes by sender domain, plus-address tag and subject; the first
    matching route wins; unmatched mail goes to the task's dir=."""
    a = ingester(start=False)
    contoso = routed_dir(a, "contoso")
    scans = routed_dir(a, "scans", uid=2003)
    invoices = routed_dir(a, "invoices")
    a.srv.extra_conf += (
        "MailOAuthIngestRoute t1 from=contoso.test dir=%s owner=%d:%d\n"
        "MailOAuthIngestRoute t1 to=+scans dir=%s owner=2003:2003\n"
        "MailOAuthIngestRoute t1 \"subject=Invoice *\" dir=%s owner=%d:%d\n"
        % (contoso, ROUTED_UID, ROUTED_UID, scans, invoices, ROUTED_UID,
           ROUTED_UID))

    def mail(name, sender, to=ALICE, subject=None):
        m = make_mail([(name, name.encode() * 10, "application/pdf")],
                      sender=sender, subject=subject)
        return m.replace(b"To: %s" % ALICE.encode(), b"To: %s" % to.encode(),
                         1)

    plus = ALICE.replace("@", "+Scans@")
    dovecot.deliver(ALICE, mail("c.pdf", "Partner <bob@CONTOSO.test>"))
    dovecot.deliver(ALICE, mail("s.pdf", "copier@example.org",
                                to="Someone <x@y.test>, %s" % plus))
    # Both contoso.test and +scans: the first route in the file wins.
    dovecot.deliver(ALICE, mail("both.pdf", "bob@contoso.test", to=plus))
    dovecot.deliver(ALICE, mail("i.pdf", "ap@fabrikam.test",
                                subject="invoice 2024-17"))
    # A subdomain is not the domain; nothing matches: the default dir.
    dovecot.deliver(ALICE, mail("d.pdf", "bob@mail.contoso.test"))
    a.go()
    wait_files(a.inbox, 1)
    wait_files(invoices, 1)
    time.sleep(2)
    assert sorted(visible(contoso)) == ["both.pdf", "c.pdf"]
    assert visible(scans) == ["s.pdf"]
    assert visible(invoices) == ["i.pdf"]
    assert visible(a.inbox) == ["d.pdf"]
    for d, owner in ((contoso, ROUTED_UID), (scans, 2003),
                     (invoices, ROUTED_UID), (a.inbox, UID)):
        for f in visible(d):
            st = os.stat(os.path.join(d, f))
            assert (st.st_uid, st.st_gid) == (owner, owner), (d, f)
            with open(os.path.join(d, f), "rb") as fh:
                assert fh.read() == f.encode() * 10
    assert all("\\Seen" in flags(dovecot, u) for u in uids(dovecot))


EXO_AR = ("Authentication-Results: spf=%s (sender IP is 192.0.2.7)\r\n"
          " smtp.mailfrom=%s; dkim=none (message not signed)\r\n"
          " header.d=none;dmarc=%s action=none header.from=%s;compauth=%s\r\n"
          " reason=100\r\n")


def exo_ar(result, domain):
    return (EXO_AR % (result, domain, result, domain, result)).encode()


def test_routes_with_auth_trust_only_the_receiving_servers_verdict(
        ingester, dovecot):
    """auth=dmarc: a From: forged, with no Authentication-Results, one the
    sender wrote, or one of the receiving server below the sender's, does
    not take the route; the receiving server's pass for the From: domain
    does."""
    a = ingester("authserv-id=exchange-online", start=False)
    contoso = routed_dir(a, "contoso")
    fabrikam = routed_dir(a, "fabrikam")
    a.srv.extra_conf += (
        "MailOAuthIngestRoute t1 from=contoso.test auth=dmarc "
        "dir=%s owner=%d:%d\n"
        "MailOAuthIngestRoute t1 from=fabrikam.test auth=dmarc "
        "authserv-id=mx.example.test dir=%s owner=%d:%d\n"
        % (contoso, ROUTED_UID, ROUTED_UID, fabrikam, ROUTED_UID,
           ROUTED_UID))

    def mail(name, sender, headers=b""):
        return headers + make_mail(
            [(name, name.encode() * 10, "application/pdf")], sender=sender)

    bob, ap = "Bob <bob@contoso.test>", "ap@fabrikam.test"
    for m in (
            # Exchange Online's pass for contoso.test, on top.
            mail("good.pdf", bob, exo_ar("pass", "contoso.test")),
            # Forged From:, nothing else.
            mail("forged.pdf", bob),
            # The sender's own header, with its own authserv-id.
            mail("foreign.pdf", bob, b"Authentication-Results: mx.evil.test;"
                 b" dmarc=pass header.from=contoso.test\r\n"),
            # Exchange's fail on top, the sender's "pass" below it.
            mail("below.pdf", bob, exo_ar("fail", "contoso.test") +
                 exo_ar("pass", "contoso.test")),
            # A pass for another domain than the From:.
            mail("other.pdf", bob, exo_ar("pass", "evil.test")),
            # The trusted server by name, for fabrikam.test.
            mail("fab.pdf", ap, b"Authentication-Results: mx.example.test;\r\n"
                 b"\tdmarc=pass (p=reject) header.from=fabrikam.test\r\n"),
            # Its name below a header of another server.
            mail("fab-below.pdf", ap,
                 b"Authentication-Results: mx.evil.test; none\r\n"
                 b"Authentication-Results: mx.example.test;"
                 b" dmarc=pass header.from=fabrikam.test\r\n")):
        dovecot.deliver(ALICE, m)
    a.go()
    wait_files(a.inbox, 5)
    time.sleep(2)
    assert visible(contoso) == ["good.pdf"]
    assert visible(fabrikam) == ["fab.pdf"]
    assert sorted(visible(a.inbox)) == ["below.pdf", "fab-below.pdf",
                                        "foreign.pdf", "forged.pdf",
                                        "other.pdf"]
    for f in visible(contoso):
        assert os.stat(os.path.join(contoso, f)).st_uid == ROUTED_UID


def test_task_to_filter_takes_only_its_tag(ingester, dovecot):
    a = ingester("to=+in,inbox@partner.test", start=False)
    plus = ALICE.replace("@", "+in@")
    m1 = make_mail([("tagged.txt", b"t", "text/plain")])
    m1 = m1.replace(b"To: %s" % ALICE.encode(), b"To: %s" % plus.encode())
    m2 = make_mail([("other.txt", b"o", "text/plain")])
    m3 = make_mail([("cc.txt", b"c", "text/plain")])
    m3 = m3.replace(b"To: %s" % ALICE.encode(),
                    b"To: %s\r\nCc: INBOX@Partner.test" % ALICE.encode())
    for m in (m1, m2, m3):
        dovecot.deliver(ALICE, m)
    a.go()
    wait_files(a.inbox, 2)
    time.sleep(2)
    assert sorted(visible(a.inbox)) == ["cc.txt", "tagged.txt"]
    seen = ["\\Seen" in flags(dovecot, u) for u in uids(dovecot)]
    assert seen == [True, False, True]


@pytest.mark.parametrize("line,hint", [
    ("MailOAuthIngestRoute nosuch from=a.test dir=/srv/x",
     "no MailOAuthIngest task named 'nosuch'"),
    ("MailOAuthIngestRoute t1 dir=/srv/x",
     "a route needs from=, to= or subject="),
    ("MailOAuthIngestRoute t1 from=a.test",
     "missing dir=/abs/path"),
    ("MailOAuthIngestRoute t1 from=a.test dir=srv/x",
     "must be an absolute path"),
    ("MailOAuthIngestRoute t1 from=a.test dir=/srv/x owner=root",
     "must not be root"),
    ("MailOAuthIngestRoute t1 form=a.test dir=/srv/x",
     "unknown setting 'form'"),
    ("MailOAuthIngestRoute t1 to=+ dir=/srv/x", "to=+invoices"),
    ("MailOAuthIngestRoute t1 from=a.test auth=dmarc dir=/srv/x",
     "add authserv-id=exchange-online"),
    ("MailOAuthIngestRoute t1 from=a.test auth=dmarc,arc "
     "authserv-id=exchange-online dir=/srv/x", "write auth=dmarc"),
    ("MailOAuthIngestRoute t1 from=a.test auth=dmarc \"authserv-id=a b\" "
     "dir=/srv/x", "authserv-id=mx.example.com"),
    ("MailOAuthIngest t2 account=notify every=60 dir=/srv/in "
     "owner=2001:2001 from=a.test auth=spf", "add authserv-id="),
])
def test_bad_routes_fail_syntax_check(make_proftpd, tokensvc, tokensvc_app,
                                      pki, line, hint):
    a = AccountServer(make_proftpd, tokensvc, tokensvc_app, pki)
    a.srv.extra_conf += ("\nMailOAuthIngest t1 account=notify every=60 "
                         "dir=/srv/in owner=2001:2001\n%s\n" % line)
    r = a.srv.syntax_check()
    out = r.stderr + r.stdout
    assert r.returncode != 0
    assert hint in out, out
    # The file and line of the mistake are named.
    assert "line" in out and ".conf" in out, out


def test_eml_and_metadata_beside_attachments(ingester, dovecot):
    import json
    a = ingester("eml=on metadata=on", start=False)
    pdf, txt = os.urandom(30000), "grüße\n".encode()
    msg = make_mail([("a.pdf", pdf, "application/pdf"),
                     ("b.txt", txt, "text/plain")],
                    subject="Lieferschein März/42",
                    sender="Jürgen <j@contoso.test>")
    dovecot.deliver(ALICE, msg)
    a.go()
    wait_files(a.inbox, 4)
    time.sleep(1)
    names = sorted(visible(a.inbox))
    assert names == ["Lieferschein März_42.eml", "Lieferschein März_42.json",
                     "a.pdf", "b.txt"], names
    with open(os.path.join(a.inbox, "Lieferschein März_42.eml"), "rb") as f:
        eml = f.read()
    assert eml.replace(b"\r\n", b"\n") == msg.replace(b"\r\n", b"\n")
    with open(os.path.join(a.inbox, "Lieferschein März_42.json")) as f:
        meta = json.load(f)
    assert meta["task"] == "t1"
    assert meta["subject"] == "Lieferschein März/42"
    assert meta["from_address"] == "j@contoso.test"
    assert meta["recipients"] == [ALICE.lower()]
    assert meta["uid"] == uids(dovecot)[0]
    assert meta["uidvalidity"] > 0
    files = {f["name"]: f for f in meta["files"]}
    assert sorted(files) == ["Lieferschein März_42.eml", "a.pdf", "b.txt"]
    for name, f in files.items():
        with open(os.path.join(a.inbox, name), "rb") as fh:
            data = fh.read()
        assert f["size"] == len(data)
        assert f["sha256"] == sha(data)
    assert files["a.pdf"]["content_type"] == "application/pdf"
    assert files["Lieferschein März_42.eml"]["message"] is True
    st = os.stat(os.path.join(a.inbox, "Lieferschein März_42.json"))
    assert st.st_uid == UID
    # MailOAuthLog shows names with non-ASCII bytes escaped, as documented.
    log = a.srv.log_text()
    assert "deposited %s/Lieferschein M\\xc3\\xa4rz_42.eml (" % a.inbox \
        in log, log
    assert "März" not in log


def test_raw_utf8_subject_and_from_in_metadata(ingester, dovecot):
    """8-bit header bytes that are valid UTF-8 are UTF-8 (RFC 6532 mailers
    send them unencoded): no mojibake in the metadata or the names."""
    import json
    a = ingester("eml=on metadata=on", start=False)
    msg = make_mail([("a.bin", b"x" * 100, "application/octet-stream")],
                    subject="SUBJ", sender="SENDER <j@contoso.test>")
    msg = msg.replace(b"Subject: SUBJ", "Subject: Ümläut grüße".encode())
    msg = msg.replace(b"From: SENDER", "From: Jürgen Müller".encode())
    dovecot.deliver(ALICE, msg)
    a.go()
    wait_files(a.inbox, 3)
    time.sleep(1)
    names = sorted(visible(a.inbox))
    assert names == ["a.bin", "Ümläut grüße.eml", "Ümläut grüße.json"], names
    with open(os.path.join(a.inbox, "Ümläut grüße.json")) as f:
        meta = json.load(f)
    assert meta["subject"] == "Ümläut grüße"
    assert "Jürgen Müller" in meta["from"], meta["from"]


def test_broken_part_is_marked_incomplete_and_unpadded_is_not(ingester,
                                                              dovecot):
    """A part kept from broken base64 says "complete": false in the
    metadata and is logged; base64 left unpadded is exact and is neither."""
    import base64
    import json
    good = os.urandom(1000)            # 1000 % 3 == 1: two '=' left out
    enc = base64.encodebytes(good).rstrip(b"\n").rstrip(b"=")
    msg = ("From: scanner@contoso.test\r\nTo: %s\r\n"
           "Subject: parts\r\nMessage-ID: <%s@contoso.test>\r\n"
           "MIME-Version: 1.0\r\n"
           "Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
           "--XX\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
           "--XX\r\nContent-Type: application/octet-stream\r\n"
           "Content-Disposition: attachment; filename=good.bin\r\n"
           "Content-Transfer-Encoding: base64\r\n\r\n"
           % (ALICE, uuid.uuid4().hex)).encode() + enc + \
        (b"\r\n--XX\r\nContent-Type: application/octet-stream\r\n"
         b"Content-Disposition: attachment; filename=bad.bin\r\n"
         b"Content-Transfer-Encoding: base64\r\n\r\n"
         b"YWJj*ZGVm!\r\n--XX--\r\n")
    a = ingester("metadata=on", start=False)
    dovecot.deliver(ALICE, msg)
    a.go()
    wait_files(a.inbox, 3)
    time.sleep(1)
    with open(os.path.join(a.inbox, "good.bin"), "rb") as f:
        assert f.read() == good
    with open(os.path.join(a.inbox, "bad.bin"), "rb") as f:
        assert f.read() == b"abcdef"
    with open(os.path.join(a.inbox, "parts.json")) as f:
        meta = json.load(f)
    files = {f["name"]: f for f in meta["files"]}
    assert files["good.bin"]["complete"] is True
    assert files["bad.bin"]["complete"] is False
    log = a.srv.log_text()
    assert "bad.bin may be incomplete" in log, log
    assert "good.bin may be incomplete" not in log, log


def test_uuencoded_part_is_decoded(ingester, dovecot):
    """A Content-Transfer-Encoding: x-uuencode part is deposited decoded,
    byte for byte."""
    import binascii
    import io
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("data.bin", os.urandom(50000))
        z.writestr("notes.txt", "hello\n" * 1000)
    data = buf.getvalue()
    lines = [b"begin 644 archive.zip"]
    for i in range(0, len(data), 45):
        lines.append(binascii.b2a_uu(data[i:i + 45], backtick=True)
                     .rstrip(b"\n"))
    lines += [b"`", b"end", b""]
    msg = ("From: scanner@contoso.test\r\nTo: %s\r\n"
           "Subject: uu %s\r\nMessage-ID: <%s@contoso.test>\r\n"
           "MIME-Version: 1.0\r\n"
           "Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
           "--XX\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
           "--XX\r\nContent-Type: application/zip; name=archive.zip\r\n"
           "Content-Disposition: attachment; filename=archive.zip\r\n"
           "Content-Transfer-Encoding: x-uuencode\r\n\r\n"
           % (ALICE, uuid.uuid4().hex[:8], uuid.uuid4().hex)).encode() + \
        b"\r\n".join(lines) + b"--XX--\r\n"
    a = ingester(start=False)
    dovecot.deliver(ALICE, msg)
    a.go()
    wait_files(a.inbox, 1)
    a.srv.wait_log("deposited", timeout=10)
    with open(os.path.join(a.inbox, "archive.zip"), "rb") as f:
        got = f.read()
    assert len(got) == len(data)
    assert got == data
    assert "may be incomplete" not in a.srv.log_text()


def test_eml_takes_a_message_without_attachments(ingester, dovecot):
    dovecot.doveadm("mailbox", "create", "-u", ALICE, "Done", check=False)
    a = ingester("eml=on after=move:Done", start=False)
    msg = make_mail([], text="just text")
    msg = b"".join(l for l in msg.splitlines(True)
                   if not l.startswith(b"Subject:"))
    dovecot.deliver(ALICE, msg)
    a.go()
    files = wait_files(a.inbox, 1)
    assert len(files) == 1 and files[0].startswith("message-") and \
        files[0].endswith(".eml"), files
    with open(os.path.join(a.inbox, files[0]), "rb") as f:
        assert b"just text" in f.read()
    wait_for(lambda: uids(dovecot, "Done"), timeout=10, what="moved")
    assert uids(dovecot) == []


def test_min_free_keeps_the_disk_from_filling(ingester, dovecot):
    """A deposit that would leave less than min-free is not written: the
    message stays unread, the shortage is logged once."""
    st = os.statvfs("/")
    free = st.f_bavail * st.f_frsize
    a = ingester("min-free=%dM" % (free // (1 << 20) + 1024), start=False)
    dovecot.deliver(ALICE, make_mail([("p.txt", b"p" * 1000,
                                       "text/plain")]))
    a.go()
    a.srv.wait_log("cannot deposit", timeout=15)
    time.sleep(3)
    log = a.srv.log_text()
    assert log.count("cannot deposit") == 1
    line = [l for l in log.splitlines() if "cannot deposit" in l][0]
    assert "free space" in line and "No space left" in line, line
    assert visible(a.inbox) == []
    assert "\\Seen" not in flags(dovecot, uids(dovecot)[0])


def test_long_run_pauses_for_other_work_and_takes_everything(ingester,
                                                            dovecot):
    """A backlog is taken in slices (the worker gets to its other work in
    between) and still exactly once, in UID order."""
    n = 30
    # More messages than one slice takes (INGEST_RUN_SLICE_MSGS), however
    # fast the machine.
    blobs = [os.urandom(256 << 10) for _ in range(n)]
    a = ingester(start=False)
    for i, b in enumerate(blobs):
        dovecot.deliver(ALICE, make_mail([("f%02d.bin" % i, b,
                                           "application/octet-stream")]))
    a.go()
    wait_files(a.inbox, n, timeout=120)
    time.sleep(2)
    assert sorted(visible(a.inbox)) == ["f%02d.bin" % i for i in range(n)]
    for i, b in enumerate(blobs):
        with open(os.path.join(a.inbox, "f%02d.bin" % i), "rb") as f:
            assert sha(f.read()) == sha(b)
    with open(a.srv.tracelog, errors="replace") as f:
        trace = f.read()
    assert "run paused after UID" in trace
    assert a.srv.log_text().count("deposited") == n


TNEF_SAMPLES = os.path.join(os.path.dirname(__file__), "..", "unit",
                            "tnef-samples")


def tnef_sample(name):
    with open(os.path.join(TNEF_SAMPLES, name), "rb") as f:
        return f.read()


def test_winmail_dat_is_unpacked(ingester, dovecot):
    """Outlook's winmail.dat: the files it carries arrive (checksums from
    an independent extraction, see t/unit/tnef-samples/README); files=
    applies to them; metadata lists them."""
    import json
    a = ingester("files=*.jpg,*.htm metadata=on", start=False)
    dovecot.deliver(ALICE, make_mail([
        ("winmail.dat", tnef_sample("winmail.dat"), "application/ms-tnef"),
        ("skipped.txt", b"not wanted", "text/plain")], subject="tnef"))
    a.go()
    wait_files(a.inbox, 3)
    time.sleep(2)
    assert sorted(visible(a.inbox)) == ["bookmark.htm", "tnef.json",
                                        "zappa_av1.jpg"]
    with open(os.path.join(a.inbox, "zappa_av1.jpg"), "rb") as f:
        assert sha(f.read()) == ("bea844f30e0fcc20fad419a0d11032a6465da93c"
                                 "1da185a1196949955994409a")
    with open(os.path.join(a.inbox, "bookmark.htm"), "rb") as f:
        assert sha(f.read()) == ("1e08d6e23c75ff80ac992eebc24c2943c7843b7d"
                                 "fee235966b37de5eb4362599")
    with open(os.path.join(a.inbox, "tnef.json")) as f:
        meta = json.load(f)
    assert sorted(x["name"] for x in meta["files"]) == ["bookmark.htm",
                                                        "zappa_av1.jpg"]
    assert "\\Seen" in flags(dovecot, uids(dovecot)[0])
    # The decoder ran (the test below relies on this trace to show that
    # none did).
    with open(a.srv.tracelog, errors="replace") as f:
        assert re.search(r"decoder \d+ unpacking \d+ bytes", f.read())


def test_winmail_dat_deposited_unchanged_without_seccomp(ingester, dovecot,
                                                        monkeypatch):
    """Seccomp made unavailable (the test hook: decoders skip their filter
    and say they are ready all the same): the TNEF helper sees in /proc that
    its decoder is not filtered and gives it nothing to decode.  Every
    winmail.dat is deposited byte for byte, nothing is extracted, the log
    says once that unpacking is off and why, and the messages are marked
    seen as usual."""
    monkeypatch.setenv("MAILOAUTH_TEST_NO_SECCOMP", "1")
    a = ingester("metadata=on", start=False)
    one = tnef_sample("one-file.tnef")
    two = tnef_sample("winmail.dat")
    dovecot.deliver(ALICE, make_mail([("winmail.dat", one,
                                       "application/ms-tnef")],
                                     subject="first"))
    dovecot.deliver(ALICE, make_mail([("second.dat", two,
                                       "application/ms-tnef")],
                                     subject="second"))
    a.go()
    for uid in uids(dovecot):
        wait_for(lambda: "\\Seen" in flags(dovecot, uid), timeout=20,
                 what="\\Seen on UID %d" % uid)
    assert sorted(visible(a.inbox)) == ["first.json", "second.dat",
                                        "second.json", "winmail.dat"]
    with open(os.path.join(a.inbox, "winmail.dat"), "rb") as f:
        assert f.read() == one
    with open(os.path.join(a.inbox, "second.dat"), "rb") as f:
        assert f.read() == two

    log = a.srv.log_text()
    assert log.count("unpacking is off") == 1, log
    assert ("/proc/PID/status does not show a decoder under its seccomp "
            "filter") in log
    assert "cannot be unpacked" not in log
    with open(a.srv.tracelog, errors="replace") as f:
        trace = f.read()
    assert not re.search(r"decoder \d+ unpacking", trace)


def test_winmail_dat_kept_as_is_when_off_or_broken(ingester, dovecot):
    a = ingester("tnef=off", start=False)
    dat = tnef_sample("one-file.tnef")
    dovecot.deliver(ALICE, make_mail([("winmail.dat", dat,
                                       "application/ms-tnef")]))
    a.go()
    wait_files(a.inbox, 1)
    with open(os.path.join(a.inbox, "winmail.dat"), "rb") as f:
        assert f.read() == dat


def test_broken_winmail_dat_is_deposited_unchanged(ingester, dovecot):
    a = ingester(start=False)
    broken = tnef_sample("winmail.dat")[:5000]
    dovecot.deliver(ALICE, make_mail([("winmail.dat", broken,
                                       "application/ms-tnef")]))
    a.go()
    a.srv.wait_log("cannot be unpacked", timeout=15)
    files = wait_files(a.inbox, 1)
    time.sleep(1)
    # Whatever could be read from it may arrive too; the file as sent
    # always does, and the worker carries on.
    assert "winmail.dat" in visible(a.inbox), files
    with open(os.path.join(a.inbox, "winmail.dat"), "rb") as f:
        assert f.read() == broken
    dovecot.deliver(ALICE, make_mail([("after.txt", b"ok", "text/plain")]))
    wait_for(lambda: "after.txt" in visible(a.inbox), timeout=15,
             what="next message")


def b64(data):
    import base64
    return base64.encodebytes(data).decode().replace("\n", "\r\n")


def apple_mail(pdf, logo):
    """Shaped like Apple Mail: an inline PDF between the text parts, the
    HTML body and its signature logo in multipart/related."""
    return ("""From: Anna <anna@contoso.test>
To: %s
Subject: Apple inline pdf %s
Message-Id: <%s@contoso.test>
Mime-Version: 1.0 (Mac OS X Mail 16.0)
Content-Type: multipart/alternative; boundary="Apple-Mail=_A"

--Apple-Mail=_A
Content-Transfer-Encoding: 7bit
Content-Type: text/plain; charset=us-ascii

See the contract.

--Apple-Mail=_A
Content-Type: multipart/mixed; boundary="Apple-Mail=_M"

--Apple-Mail=_M
Content-Type: multipart/related; type="text/html"; boundary="Apple-Mail=_R"

--Apple-Mail=_R
Content-Transfer-Encoding: 7bit
Content-Type: text/html; charset=us-ascii

<html><body>See the contract.<img src="cid:logo@apple"></body></html>
--Apple-Mail=_R
Content-Transfer-Encoding: base64
Content-Disposition: inline; filename=logo.png
Content-Type: image/png; name="logo.png"
Content-Id: <logo@apple>

%s
--Apple-Mail=_R--

--Apple-Mail=_M
Content-Disposition: inline; filename=Contract.pdf
Content-Type: application/pdf; x-unix-mode=0644; name="Contract.pdf"
Content-Transfer-Encoding: base64

%s
--Apple-Mail=_M
Content-Transfer-Encoding: 7bit
Content-Type: text/html; charset=us-ascii

<html><body><br>Regards</body></html>
--Apple-Mail=_M--

--Apple-Mail=_A--
""" % (ALICE, uuid.uuid4().hex[:6], uuid.uuid4().hex, b64(logo),
       b64(pdf))).replace("\n", "\r\n").encode()


def iphone_mail(photos):
    """Shaped like iPhone Mail: photos inline in multipart/mixed."""
    parts = ""
    for name, data in photos:
        parts += """--Apple-Mail-B
Content-Type: image/jpeg; name="%s"
Content-Disposition: inline; filename="%s"
Content-Transfer-Encoding: base64
Content-Id: <%s>

%s
""" % (name, name, uuid.uuid4().hex, b64(data))
    return ("""From: Ben <ben@contoso.test>
To: %s
Subject: photos
Message-Id: <%s@contoso.test>
Mime-Version: 1.0 (1.0)
Content-Type: multipart/mixed; boundary=Apple-Mail-B

--Apple-Mail-B
Content-Type: text/plain; charset=us-ascii
Content-Transfer-Encoding: 7bit


%s--Apple-Mail-B
Content-Type: text/plain; charset=us-ascii
Content-Transfer-Encoding: 7bit

Sent from my iPhone
--Apple-Mail-B--
""" % (ALICE, uuid.uuid4().hex, parts)).replace("\n", "\r\n").encode()


def test_apple_mail_inline_pdf_taken_signature_logo_not(ingester, dovecot):
    pdf = b"%PDF-1.4\n" + os.urandom(30000)
    a = ingester(start=False)
    dovecot.deliver(ALICE, apple_mail(pdf, b"\x89PNG logo"))
    a.go()
    wait_files(a.inbox, 1)
    a.srv.wait_log("deposited", timeout=10)
    time.sleep(2)
    assert visible(a.inbox) == ["Contract.pdf"]
    with open(os.path.join(a.inbox, "Contract.pdf"), "rb") as f:
        assert sha(f.read()) == sha(pdf)
    uid = uids(dovecot)[0]
    wait_for(lambda: "\\Seen" in flags(dovecot, uid), timeout=10,
             what="\\Seen")


def test_iphone_inline_photos_taken(ingester, dovecot):
    p1, p2 = b"\xff\xd8" + os.urandom(5000), b"\xff\xd8" + os.urandom(6000)
    a = ingester(start=False)
    dovecot.deliver(ALICE, iphone_mail([("IMG_0001.jpeg", p1),
                                        ("IMG_0002.jpeg", p2)]))
    a.go()
    wait_files(a.inbox, 2)
    time.sleep(2)
    assert sorted(visible(a.inbox)) == ["IMG_0001.jpeg", "IMG_0002.jpeg"]
    with open(os.path.join(a.inbox, "IMG_0002.jpeg"), "rb") as f:
        assert f.read() == p2


def test_inline_on_takes_logo_off_takes_no_inline_part(ingester, dovecot):
    a = ingester("inline=on", start=False)
    dovecot.deliver(ALICE, apple_mail(b"%PDF-1.4 x", b"\x89PNG logo"))
    a.go()
    wait_files(a.inbox, 2)
    time.sleep(2)
    assert sorted(visible(a.inbox)) == ["Contract.pdf", "logo.png"]


def test_inline_off_takes_only_attachments(ingester, dovecot):
    a = ingester("inline=off", start=False)
    dovecot.deliver(ALICE, make_mail([
        ("Contract.pdf", b"%PDF-1.4 x", "application/pdf", "inline"),
        ("x.bin", b"x", "application/octet-stream")]))
    a.go()
    wait_files(a.inbox, 1)
    time.sleep(2)
    assert visible(a.inbox) == ["x.bin"]


def test_scanner_nameless_pdf_saved_under_generated_name(ingester, dovecot):
    pdf = b"%PDF-1.4\n" + os.urandom(20000)
    raw = ("""From: scanner@contoso.test
To: %s
Subject: Scan
Message-Id: <%s@contoso.test>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=SCAN

--SCAN
Content-Type: text/plain

Scanned document.
--SCAN
Content-Type: application/pdf
Content-Transfer-Encoding: base64

%s
--SCAN--
""" % (ALICE, uuid.uuid4().hex, b64(pdf))).replace("\n", "\r\n").encode()
    a = ingester(start=False)
    dovecot.deliver(ALICE, raw)
    a.go()
    wait_files(a.inbox, 1)
    time.sleep(2)
    assert visible(a.inbox) == ["attachment.pdf"]
    with open(os.path.join(a.inbox, "attachment.pdf"), "rb") as f:
        assert f.read() == pdf
