"""Which parts of real clients' mail become files (inline=auto, the
default): signature logos shown by the HTML body are not files even outside
multipart/related, a meeting request's calendar alternative is not a file
but an attached .ics is, a scanner's single-part PDF is, forwarded mail is
looked into, and a winmail.dat's attached Outlook item arrives."""

import os
import struct
import time
import uuid

from test_accounts import ALICE
from test_ingest import (b64, flags, ingester, make_mail, sha, uids,  # noqa
                         visible, wait_files)

assert ingester  # the fixture, imported for pytest


def crlf(s):
    return s.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def header(subject, ctype):
    return ("From: Anna <anna@contoso.test>\nTo: %s\nSubject: %s\n"
            "Message-Id: <%s@contoso.test>\nMime-Version: 1.0\n"
            "Content-Type: %s\n" % (ALICE, subject, uuid.uuid4().hex, ctype))


def wait_unread_logged(a, n):
    from test_accounts import wait_for
    wait_for(lambda: a.srv.log_text().count("has no wanted attachment") >= n,
             timeout=20, what="%d messages without files" % n)


def apple_mixed(pdf, logo, logo_disposition="inline"):
    """Apple Mail with an inline PDF: multipart/mixed holding the HTML
    body, its signature logo (referenced by cid:, not in multipart/related)
    and the PDF."""
    return crlf(header("Apple mixed %s" % uuid.uuid4().hex[:6],
                       'multipart/mixed; boundary="Apple-Mail=_M"') + """
--Apple-Mail=_M
Content-Transfer-Encoding: quoted-printable
Content-Type: text/html; charset=us-ascii

<html><body>Here is the contract.<br><img src=3D"cid:F2A1B3C4-logo@apple=
.mail" width=3D"120"></body></html>
--Apple-Mail=_M
Content-Transfer-Encoding: base64
Content-Disposition: %s; filename=logo.png
Content-Type: image/png; name="logo.png"
Content-Id: <F2A1B3C4-logo@apple.mail>

%s
--Apple-Mail=_M
Content-Disposition: inline; filename=Contract.pdf
Content-Type: application/pdf; x-unix-mode=0644; name="Contract.pdf"
Content-Transfer-Encoding: base64

%s
--Apple-Mail=_M--
""" % (logo_disposition, b64(logo), b64(pdf)))


def test_logo_shown_by_cid_outside_related_not_taken(ingester, dovecot):
    pdf = b"%PDF-1.4\n" + os.urandom(20000)
    a = ingester(start=False)
    dovecot.deliver(ALICE, apple_mixed(pdf, b"\x89PNG logo"))
    a.go()
    wait_files(a.inbox, 1)
    a.srv.wait_log("deposited", timeout=10)
    time.sleep(2)
    assert visible(a.inbox) == ["Contract.pdf"]
    with open(os.path.join(a.inbox, "Contract.pdf"), "rb") as f:
        assert sha(f.read()) == sha(pdf)
    uid = uids(dovecot)[0]
    assert "\\Seen" in flags(dovecot, uid)
    # Marked attachment, the same image is a file the sender attached.
    dovecot.deliver(ALICE, apple_mixed(b"%PDF-1.4 y", b"\x89PNG badge",
                                       "attachment"))
    wait_files(a.inbox, 3)
    time.sleep(1)
    assert sorted(visible(a.inbox)) == ["Contract (1).pdf", "Contract.pdf",
                                        "logo.png"]
    with open(os.path.join(a.inbox, "logo.png"), "rb") as f:
        assert f.read() == b"\x89PNG badge"


def outlook_meeting_request():
    """Outlook's meeting request: the invitation is the third alternative
    of the body, named (Outlook names it) but not an attachment."""
    return crlf(header("Invitation: review",
                       'multipart/alternative; boundary="_000_OUT"') + """
--_000_OUT
Content-Type: text/plain; charset="us-ascii"

When: Monday
--_000_OUT
Content-Type: text/html; charset="us-ascii"

<html><body>When: Monday</body></html>
--_000_OUT
Content-Type: text/calendar; charset="utf-8"; method=REQUEST;
\tname="meeting.ics"
Content-Transfer-Encoding: base64

%s
--_000_OUT--
""" % b64(b"BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n"))


def calendar_of_its_own(ics):
    """A nameless text/calendar leaf of its own in multipart/mixed."""
    return crlf(header("Calendar file",
                       'multipart/mixed; boundary="MIX"') + """
--MIX
Content-Type: text/plain

The calendar for next week.
--MIX
Content-Type: text/calendar; charset=utf-8; method=PUBLISH

%s
--MIX--
""" % ics.decode())


def test_meeting_request_alternative_not_taken_attached_ics_is(ingester,
                                                               dovecot):
    ics = "BEGIN:VCALENDAR\r\nMETHOD:PUBLISH\r\nEND:VCALENDAR\r\n".encode()
    a = ingester(start=False)
    dovecot.deliver(ALICE, outlook_meeting_request())
    dovecot.deliver(ALICE, calendar_of_its_own(ics))
    dovecot.deliver(ALICE, make_mail([("team.ics", b"BEGIN:VCALENDAR\r\n",
                                       "text/calendar")]))
    a.go()
    wait_files(a.inbox, 2)
    wait_unread_logged(a, 1)
    time.sleep(1)
    assert sorted(visible(a.inbox)) == ["invite.ics", "team.ics"]
    with open(os.path.join(a.inbox, "invite.ics"), "rb") as f:
        assert f.read().replace(b"\r\n", b"\n") == ics.replace(b"\r\n",
                                                               b"\n")
    first = uids(dovecot)[0]
    assert "\\Seen" not in flags(dovecot, first)


def test_single_part_nameless_pdf_and_csv_taken(ingester, dovecot):
    """A scanner script's mail: the whole message is a nameless PDF."""
    pdf = b"%PDF-1.4\n" + os.urandom(15000)
    scan = crlf(header("Scan", "application/pdf") +
                "Content-Transfer-Encoding: base64\n\n" + b64(pdf))
    csv = crlf(header("Export", "text/csv; charset=utf-8") +
               "\na,b\n1,2\n")
    a = ingester(start=False)
    dovecot.deliver(ALICE, scan)
    dovecot.deliver(ALICE, csv)
    # The text of a plain single-part message is still no file.
    dovecot.deliver(ALICE, crlf(header("Hello", "text/plain") + "\nhi\n"))
    a.go()
    wait_files(a.inbox, 2)
    wait_unread_logged(a, 1)
    time.sleep(1)
    assert sorted(visible(a.inbox)) == ["attachment.csv", "attachment.pdf"]
    with open(os.path.join(a.inbox, "attachment.pdf"), "rb") as f:
        assert f.read() == pdf
    with open(os.path.join(a.inbox, "attachment.csv"), "rb") as f:
        assert f.read().replace(b"\r\n", b"\n") == b"a,b\n1,2\n"


def forwarded(pdf, disposition, ctype="message/rfc822", name="invoice.pdf"):
    """A reply forwarding a message that carries a PDF: inline (Outlook's
    and Gmail's "Forward" in some setups, Apple Mail's forward of a
    message with attachments) or as an attachment."""
    disp = ("Content-Disposition: %s\n" % disposition) if disposition else ""
    return crlf(header("Fwd: invoice", 'multipart/mixed; boundary="OUT"') + """
--OUT
Content-Type: text/plain

See the forwarded message.
--OUT
Content-Type: %s
%s
From: Supplier <billing@supplier.test>
To: anna@contoso.test
Subject: Invoice 42
Message-Id: <inner-%s@supplier.test>
Mime-Version: 1.0
Content-Type: multipart/mixed; boundary="IN"

--IN
Content-Type: text/plain

Please find the invoice attached.
--IN
Content-Type: application/pdf; name="%s"
Content-Disposition: attachment; filename="%s"
Content-Transfer-Encoding: base64

%s
--IN--

--OUT--
""" % (ctype, disp, uuid.uuid4().hex, name, name, b64(pdf)))


def test_forwarded_inline_message_files_taken(ingester, dovecot):
    pdf = b"%PDF-1.4\n" + os.urandom(12000)
    pdf2 = b"%PDF-1.4\n" + os.urandom(9000)
    a = ingester(start=False)
    dovecot.deliver(ALICE, forwarded(pdf, None))
    dovecot.deliver(ALICE, forwarded(pdf2, "inline", "message/global",
                                     "receipt.pdf"))
    a.go()
    wait_files(a.inbox, 2)
    time.sleep(2)
    assert sorted(visible(a.inbox)) == ["invoice.pdf", "receipt.pdf"]
    with open(os.path.join(a.inbox, "invoice.pdf"), "rb") as f:
        assert f.read() == pdf
    with open(os.path.join(a.inbox, "receipt.pdf"), "rb") as f:
        assert f.read() == pdf2
    for uid in uids(dovecot):
        assert "\\Seen" in flags(dovecot, uid)


def test_forwarded_as_attachment_arrives_as_eml(ingester, dovecot):
    """Forwarded as an attachment, the message is the file the sender
    attached: it arrives whole as .eml (its PDF inside it, byte for
    byte), and its PDF is not taken a second time."""
    import email
    import email.policy
    pdf = b"%PDF-1.4\n" + os.urandom(8000)
    a = ingester(start=False)
    dovecot.deliver(ALICE, forwarded(
        pdf, 'attachment; filename="Invoice 42.eml"'))
    a.go()
    wait_files(a.inbox, 1)
    time.sleep(2)
    assert visible(a.inbox) == ["Invoice 42.eml"]
    with open(os.path.join(a.inbox, "Invoice 42.eml"), "rb") as f:
        inner = email.message_from_bytes(f.read(), policy=email.policy.SMTP)
    assert inner["Subject"] == "Invoice 42"
    got = [p.get_content() for p in inner.iter_attachments()]
    assert got == [pdf]


# -- winmail.dat with an attached Outlook item ------------------------------

def tnef_attr(level, aid, data):
    return (struct.pack("<BII", level, aid, len(data)) + data +
            struct.pack("<H", sum(data) & 0xffff))


def mapi_props(props):
    """props: [(tag, bytes-or-int)]: PT_LONG ints, else one
    variable-length value."""
    out = struct.pack("<I", len(props))
    for tag, val in props:
        out += struct.pack("<I", tag)
        if isinstance(val, int):
            out += struct.pack("<I", val)
        else:
            out += struct.pack("<II", 1, len(val)) + val
            out += b"\0" * ((4 - len(val) % 4) % 4)
    return out


TNEF_SIG = struct.pack("<IH", 0x223e9f78, 0x4d2)
LVL_MSG, LVL_ATT = 1, 2
ATT_VERSION, ATT_CODEPAGE, ATT_CLASS = 0x00089006, 0x00069007, 0x00078008
ATT_RENDDATA, ATT_TITLE, ATT_DATA = 0x00069002, 0x00018010, 0x0006800f
ATT_ATTACHMENT = 0x00069005
PR_ATTACH_METHOD = 0x37050003
PR_ATTACH_DATA_OBJ = 0x3701000d
PR_DISPLAY_NAME = 0x3001001e
PR_ATTACH_LONG_FILENAME = 0x3707001e
IID_IMESSAGE = bytes.fromhex("0703020000000000c000000000000046")


def tnef_head(cls="IPM.Note"):
    return (TNEF_SIG + tnef_attr(LVL_MSG, ATT_VERSION, b"\0\0\1\0") +
            tnef_attr(LVL_MSG, ATT_CODEPAGE, struct.pack("<II", 1252, 0)) +
            tnef_attr(LVL_MSG, ATT_CLASS, cls.encode() + b"\0"))


def tnef_file(name, data):
    return (tnef_attr(LVL_ATT, ATT_RENDDATA, b"\1\0" + b"\xff" * 4 +
                      b"\0" * 8) +
            tnef_attr(LVL_ATT, ATT_TITLE, name.encode() + b"\0") +
            tnef_attr(LVL_ATT, ATT_DATA, data) +
            tnef_attr(LVL_ATT, ATT_ATTACHMENT, mapi_props([
                (PR_ATTACH_METHOD, 1),
                (PR_ATTACH_LONG_FILENAME, name.encode() + b"\0")])))


def tnef_embedded(display, inner):
    """An attached Outlook item: attach method 5, the item itself a TNEF
    stream in PR_ATTACH_DATA_OBJ after IID_IMessage."""
    return (tnef_attr(LVL_ATT, ATT_RENDDATA, b"\1\0" + b"\xff" * 4 +
                      b"\0" * 8) +
            tnef_attr(LVL_ATT, ATT_TITLE, display.encode() + b"\0") +
            tnef_attr(LVL_ATT, ATT_ATTACHMENT, mapi_props([
                (PR_ATTACH_METHOD, 5),
                (PR_DISPLAY_NAME, display.encode() + b"\0"),
                (PR_ATTACH_DATA_OBJ, IID_IMESSAGE + inner)])))


def test_winmail_dat_with_attached_outlook_item(ingester, dovecot):
    inner = tnef_head() + tnef_file("minutes.txt", b"minutes of the meeting")
    dat = tnef_head() + tnef_embedded("Meeting notes", inner)
    a = ingester(start=False)
    dovecot.deliver(ALICE, make_mail([("winmail.dat", dat,
                                       "application/ms-tnef")],
                                     subject="outlook item"))
    a.go()
    wait_files(a.inbox, 1)
    time.sleep(2)
    assert visible(a.inbox) == ["Meeting notes.tnef"]
    with open(os.path.join(a.inbox, "Meeting notes.tnef"), "rb") as f:
        assert f.read() == inner
    assert "\\Seen" in flags(dovecot, uids(dovecot)[0])
    # An item carrying a large file: beyond libytnef's property limit.
    big = tnef_head() + tnef_file("scan.pdf", os.urandom(2 << 20))
    dovecot.deliver(ALICE, make_mail([("winmail.dat", tnef_head() +
                                       tnef_embedded("Scan", big),
                                       "application/ms-tnef")],
                                     subject="big outlook item"))
    wait_files(a.inbox, 2)
    time.sleep(1)
    assert sorted(visible(a.inbox)) == ["Meeting notes.tnef", "Scan.tnef"]
    with open(os.path.join(a.inbox, "Scan.tnef"), "rb") as f:
        assert f.read() == big


def test_winmail_dat_cut_short_yields_its_whole_files(ingester, dovecot):
    """A stream libytnef calls a bad message (cut in its last attribute,
    one checksum wrong): the files before the damage arrive, and the
    winmail.dat as sent too, so nothing is lost."""
    one, two = os.urandom(3000), os.urandom(4000)
    first = tnef_file("one.bin", one)
    bad_sum = bytearray(tnef_file("two.bin", two))
    # The checksum of attAttachData of two.bin (after renddata and title).
    off = len(tnef_attr(LVL_ATT, ATT_RENDDATA, b"\0" * 14)) + \
        len(tnef_attr(LVL_ATT, ATT_TITLE, b"two.bin\0")) + 9 + len(two)
    bad_sum[off] ^= 0xff
    dat = tnef_head() + first + bytes(bad_sum) + \
        tnef_file("three.bin", os.urandom(5000))[:-100]
    a = ingester(start=False)
    dovecot.deliver(ALICE, make_mail([("winmail.dat", dat,
                                       "application/ms-tnef")]))
    a.go()
    wait_files(a.inbox, 3)
    time.sleep(2)
    assert sorted(visible(a.inbox)) == ["one.bin", "two.bin", "winmail.dat"]
    with open(os.path.join(a.inbox, "one.bin"), "rb") as f:
        assert f.read() == one
    with open(os.path.join(a.inbox, "two.bin"), "rb") as f:
        assert f.read() == two
    with open(os.path.join(a.inbox, "winmail.dat"), "rb") as f:
        assert f.read() == dat
    assert ("'winmail.dat' cannot be unpacked whole (damaged): 2 files "
            "taken from it; deposited as it is too") in a.srv.log_text()
