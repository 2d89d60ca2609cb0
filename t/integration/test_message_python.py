"""Notification mail read back by Python's email package: a second, independent
parser for what mod_mailoauth/lib/mail/message.c builds (the unit tests use their own).

A small helper program, compiled here from message.c, renders a message from
hex-encoded arguments (so that any byte, NUL included, reaches the builder);
the email package must parse it without defects and find the same subject,
names, addresses, text and file bytes that went in.  No servers needed.
"""

import email
import email.policy
import os
import shutil
import subprocess

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SRC = os.path.join(TOP, "mod_mailoauth")
INCLUDE = os.path.join(SRC, "include")

HELPER_C = r"""
#include "mailoauth/message.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *unhex(const char *h, size_t *len) {
  size_t n = strlen(h) / 2, i;
  char *out = malloc(n + 1);

  for (i = 0; i < n; i++) {
    unsigned int v;
    sscanf(h + 2 * i, "%2x", &v);
    out[i] = (char) v;
  }
  out[n] = '\0';
  *len = n;
  return out;
}

/* Arguments, in pairs or triples:
 *   from ADDR NAMEHEX | to ADDR NAMEHEX | cc ADDR NAMEHEX | bcc ADDR
 *   subject HEX | body HEX | digest ITEMHEX | attach PATH NAMEHEX
 *   date SECONDS
 */
int main(int argc, char **argv) {
  struct mailoauth_message *msg = mailoauth_message_create();
  const char *items[64];
  size_t nitems = 0, len;
  char *out;
  int i;

  for (i = 1; i < argc; i++) {
    const char *op = argv[i];
    char *v;
    size_t vl;
    int res = 0;

    if (strcmp(op, "from") == 0 || strcmp(op, "to") == 0 ||
        strcmp(op, "cc") == 0) {
      v = unhex(argv[i + 2], &vl);
      res = strcmp(op, "from") == 0 ?
        mailoauth_message_set_from(msg, argv[i + 1], v) :
        mailoauth_message_add_recipient(msg, strcmp(op, "to") == 0 ?
          MAILOAUTH_MESSAGE_TO : MAILOAUTH_MESSAGE_CC, argv[i + 1], v);
      i += 2;
    } else if (strcmp(op, "bcc") == 0) {
      res = mailoauth_message_add_recipient(msg, MAILOAUTH_MESSAGE_BCC,
        argv[++i], NULL);
    } else if (strcmp(op, "subject") == 0) {
      v = unhex(argv[++i], &vl);
      res = mailoauth_message_set_subject(msg, v, vl);
    } else if (strcmp(op, "body") == 0) {
      v = unhex(argv[++i], &vl);
      res = mailoauth_message_set_body(msg, v, vl);
    } else if (strcmp(op, "digest") == 0) {
      items[nitems++] = unhex(argv[++i], &vl);
      res = mailoauth_message_set_digest_body(msg, "Uploads:", items,
        nitems, NULL);
    } else if (strcmp(op, "attach") == 0) {
      v = unhex(argv[i + 2], &vl);
      res = mailoauth_message_attach_file(msg, argv[i + 1], v, vl, NULL);
      i += 2;
    } else if (strcmp(op, "date") == 0) {
      res = mailoauth_message_set_date(msg, (time_t) atol(argv[++i]), 1);
    } else {
      fprintf(stderr, "unknown argument %s\n", op);
      return 2;
    }

    if (res < 0) {
      perror(op);
      return 1;
    }
  }

  if (mailoauth_message_render(msg, &out, &len) < 0) {
    perror("render");
    return 1;
  }
  fwrite(out, 1, len, stdout);
  free(out);
  mailoauth_message_free(msg);
  return 0;
}
"""

FFFD = "\ufffd"


@pytest.fixture(scope="module")
def helper(tmp_path_factory):
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("message-helper")
    src = d / "render.c"
    src.write_text(HELPER_C)
    exe = d / "render"
    subprocess.run(
        [cc, "-std=gnu99", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror",
         "-I", INCLUDE, "-o", str(exe), str(src),
         os.path.join(SRC, "lib", "mail", "message.c"),
         os.path.join(SRC, "lib", "util", "trace.c"),
         os.path.join(SRC, "lib", "util", "buf.c"),
         "-lcrypto"],
        check=True)
    return str(exe)


def hx(value):
    if isinstance(value, str):
        value = value.encode("utf-8")
    return value.hex()


def render(helper, *args):
    argv = [helper]
    for a in args:
        argv.extend(a)
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          check=True)
    return proc.stdout


def parse(raw):
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.defects == []
    # Header defects too; the one tolerated is Python noting that filename
    # and filename* name the same parameter (the ASCII fallback we add on
    # purpose), and it still picks the RFC 2231 value.
    for part in msg.walk():
        for name, value in part.items():
            defects = [d for d in getattr(value, "defects", ())
                       if "duplicate parameter" not in str(d)]
            assert defects == [], (name, value, defects)
    return msg


def base(**kw):
    args = [("from", "ftp@files.example.com", hx(kw.get("from_name", ""))),
            ("to", "alice@example.com", hx(kw.get("to_name", "Alice")))]
    if "subject" in kw:
        args.append(("subject", hx(kw["subject"])))
    if "body" in kw:
        args.append(("body", hx(kw["body"])))
    args.append(("date", "1700000000"))
    return args


def text_of(msg):
    part = msg.get_body(preferencelist=("plain",))
    return part.get_content().replace("\r\n", "\n").rstrip("\n")


def test_utf8_everywhere_with_attachment(helper, tmp_path):
    data = os.urandom(300000)
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    name = "Résumé – final version of the quarterly report 日本語 😀.pdf"
    raw = render(helper, *base(
        from_name="Dateiserver Ü", to_name="山田 太郎",
        subject="Neue Datei: Résumé 日本語 😀 " + "x" * 50,
        body="Hallo,\nDatei: Résumé.pdf\n.dot\nFrom here\n"),
        ("cc", "carol@example.org", hx('Doe, "Carol"')),
        ("bcc", "auditor@hidden.example"),
        ("attach", str(path), hx(name)))
    assert b"hidden.example" not in raw
    msg = parse(raw)

    assert str(msg["subject"]) == "Neue Datei: Résumé 日本語 😀 " + "x" * 50
    assert msg["from"].addresses[0].display_name == "Dateiserver Ü"
    assert msg["from"].addresses[0].addr_spec == "ftp@files.example.com"
    to = msg["to"].addresses
    assert [(a.display_name, a.addr_spec) for a in to] == [
        ("山田 太郎", "alice@example.com")]
    cc = msg["cc"].addresses
    assert [(a.display_name, a.addr_spec) for a in cc] == [
        ('Doe, "Carol"', "carol@example.org")]
    assert msg["bcc"] is None
    assert msg["auto-submitted"] == "auto-generated"
    assert str(msg["date"]) == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert msg["message-id"].endswith("@files.example.com>")

    assert text_of(msg) == "Hallo,\nDatei: Résumé.pdf\n.dot\nFrom here"
    atts = list(msg.iter_attachments())
    assert len(atts) == 1
    assert atts[0].get_filename() == name
    assert atts[0].get_content_type() == "application/pdf"
    assert atts[0].get_payload(decode=True) == data

    # A parser without RFC 2231 gets the ASCII stand-in.
    old = email.message_from_bytes(raw, policy=email.policy.compat32)
    fallback = [p for p in old.walk() if p.get_filename()][0].get_filename()
    assert fallback.isascii() and fallback.endswith(".pdf")
    assert fallback.startswith("Resume - final")


@pytest.mark.parametrize("size", [0, 1, 57, 1024 * 1024])
def test_attachment_bytes(helper, tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    raw = render(helper, *base(subject="sizes"),
                 ("attach", str(path), hx("data.csv")))
    msg = parse(raw)
    att = list(msg.iter_attachments())[0]
    assert att.get_filename() == "data.csv"
    assert att.get_content_type() == "text/csv"
    assert att.get_payload(decode=True) == data
    assert text_of(msg) == ""


def test_hostile_input_injects_nothing(helper, tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"abc")
    raw = render(helper, *base(
        from_name="Evil\r\nBcc: a@b.example",
        to_name='"\r\n\tTo: c@d.example',
        subject=b"Upload\r\nBcc: victim@x.example\r\n\r\nbody \xff\x00end",
        body=b"line\rtwo\n\x00\xc0\xaf\n"),
        ("attach", str(path),
         hx(b"x\r\nContent-Type: text/html\r\n\r\n<b>\x00\xff.pdf")))
    msg = parse(raw)
    assert sorted(set(k.lower() for k in msg.keys())) == sorted([
        "date", "from", "to", "subject", "message-id", "mime-version",
        "auto-submitted", "x-auto-response-suppress", "content-type"])
    assert str(msg["subject"]) == (
        "Upload Bcc: victim@x.example body " + FFFD + FFFD + "end")
    assert msg["from"].addresses[0].display_name == "Evil Bcc: a@b.example"
    assert msg["to"].addresses[0].display_name == '" To: c@d.example'
    assert len(msg["to"].addresses) == 1
    assert text_of(msg) == "line\ntwo\n" + FFFD * 3
    att = list(msg.iter_attachments())[0]
    assert att.get_filename() == (
        "x  Content-Type: text_html    <b>" + FFFD + FFFD + ".pdf")
    assert att.get_content_type() == "application/pdf"
    assert sorted(k.lower() for k in att.keys()) == [
        "content-disposition", "content-transfer-encoding", "content-type"]


def test_long_subject_and_lines(helper):
    subject = "日本語のファイル名" * 250
    body = ("x" * 1500 + "\n") * 3
    raw = render(helper, *base(subject=subject, body=body))
    for line in raw.split(b"\r\n"):
        assert len(line) <= 998
    head = raw.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        assert len(line) <= 78
    msg = parse(raw)
    got = str(msg["subject"])
    assert subject.startswith(got) and len(got.encode()) <= 2048
    assert len(got.encode()) > 2040
    assert msg["content-transfer-encoding"] == "quoted-printable"
    assert text_of(msg) == body.rstrip("\n")


def test_digest(helper):
    raw = render(helper, *base(subject="3 uploads"),
                 ("digest", hx("/in/a.txt (1 KB)")),
                 ("digest", hx("/in/b\nBcc: v@x.example")),
                 ("digest", hx("/in/日本.pdf")))
    msg = parse(raw)
    assert text_of(msg) == (
        "Uploads:\n/in/a.txt (1 KB)\n/in/b Bcc: v@x.example\n/in/日本.pdf")
