"""Stamping invariants over CPython's own MIME test corpus (read in place) and over generated
MIME trees: the output parses, unstamped parts are byte-identical, and the stamped parts decode
to the original text plus exactly the insertion.

The checks use the stdlib `email` parser and a plain regex over delimiter lines, not the
splitter under test.
"""

from __future__ import annotations

import base64
import email
import os
import quopri
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message as EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casethread.core import mime
from casethread.core.message import newline_of, parse_raw
from casethread.core.stamp import StampPlan, apply_splices, plan_stamp

from ..helpers.engine_output import CPYTHON_CORPUS, without_unix_from

CORPUS_FILES = sorted(CPYTHON_CORPUS.glob("msg_*.txt"))
TOKEN = "7K2M9QX4RT8VB3ZP"
TARGET_TYPES = {"html": "text/html", "text": "text/plain"}
EXAMPLES = int(os.environ.get("CASETHREAD_FUZZ_EXAMPLES", "200"))


def plan_message(raw: bytes) -> tuple[bytes, bytes, StampPlan]:
    headers, body = parse_raw(raw)
    top = mime.top_fields(headers)
    plan = plan_stamp(top.content_type, top.cte, body, TOKEN, TOKEN,
                      top_disposition=top.disposition, newline=newline_of(raw))
    return raw[: len(raw) - len(body)], body, plan


# --- the invariants -----------------------------------------------------------------------


def leaves(msg: EmailMessage) -> list[EmailMessage]:
    return [p for p in msg.walk() if not p.is_multipart()]


def decoded_text(part: EmailMessage) -> str:
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode(part.get_content_charset() or "us-ascii")


def common_prefix(a: str, b: str) -> int:
    shorter = min(len(a), len(b))
    return next((n for n in range(shorter) if a[n] != b[n]), shorter)


def insertion(old: str, new: str) -> str:
    """The run of text `new` adds to `old`, when `new` is `old` with one run inserted (else
    ""). Where the run could stand a little earlier or later (its first characters repeat what
    follows it), it is taken as early as it can be."""
    head = common_prefix(old, new)
    tail = common_prefix(old[head:][::-1], new[head:][::-1])
    return new[head : len(new) - tail] if head + tail == len(old) else ""


def delimiter_segments(body: bytes, msg: EmailMessage) -> list[bytes]:
    """The body cut at every delimiter line of every boundary the stdlib parser found."""
    boundaries = {p.get_boundary() for p in msg.walk() if p.is_multipart()} - {None}
    if not boundaries:
        return [body]
    names = b"|".join(re.escape(str(b).encode("ascii", "surrogateescape")) for b in boundaries)
    return re.split(rb"(?m)^--(?:" + names + rb")(?:--)?[ \t]*\r?$", body)


def header_block(segment: bytes) -> bytes:
    match = re.search(rb"\r?\n\r?\n", segment)
    return segment[: match.start()] if match else segment


def check_invariants(head: bytes, body: bytes, plan: StampPlan) -> list[EmailMessage]:
    """Assert the stamping invariants; returns the stamped leaves (after) for further checks."""
    new_body = apply_splices(body, plan.splices)
    before = email.message_from_bytes(head + body)
    after = email.message_from_bytes(head + new_body)
    old, new = leaves(before), leaves(after)
    assert [p.get_content_type() for p in old] == [p.get_content_type() for p in new]
    stamped = {o.target: o for o in plan.outcomes if o.status == "stamped"}
    changed = [(a, b) for a, b in zip(old, new, strict=True)
               if a.get_payload(decode=True) != b.get_payload(decode=True)]
    assert sorted(a.get_content_type() for a, _ in changed) == sorted(
        TARGET_TYPES[t] for t in stamped
    )
    for old_part, new_part in changed:
        assert TOKEN in insertion(decoded_text(old_part), decoded_text(new_part))
    old_segments = delimiter_segments(body, before)
    new_segments = delimiter_segments(new_body, before)
    assert len(old_segments) == len(new_segments)
    differing = [(a, b) for a, b in zip(old_segments, new_segments, strict=True) if a != b]
    assert len(differing) == len(stamped)
    if len(old_segments) > 1:  # each changed segment is a part: its header lines stay
        assert all(header_block(a) == header_block(b) for a, b in differing)
    return [new_part for _, new_part in changed]


# --- CPython's corpus, in place -----------------------------------------------------------


def test_corpus_is_where_the_installed_python_keeps_it() -> None:
    assert len(CORPUS_FILES) >= 40, CPYTHON_CORPUS


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_corpus_message_stamps_within_the_invariants(path: Path) -> None:
    head, body, plan = plan_message(without_unix_from(path.read_bytes()))
    check_invariants(head, body, plan)
    for outcome in plan.outcomes:
        if outcome.status == "skipped":
            assert outcome.reason.startswith(("malformed MIME", "multipart/signed"))


def test_corpus_totals() -> None:
    """Most of the corpus is stamped; what is not has a reason that names the cause."""
    stamped = skipped = 0
    for path in CORPUS_FILES:
        _, _, plan = plan_message(without_unix_from(path.read_bytes()))
        statuses = {o.status for o in plan.outcomes}
        stamped += "stamped" in statuses
        skipped += "skipped" in statuses
    # CPython 3.11's 47 files: 25 stamped; 10 skipped (8 malformed, 2 multipart/signed); the
    # rest have no main text part (digests, reports, attached messages, attachments only).
    assert stamped >= 25
    assert skipped <= 10


def splitter_leaves(raw: bytes) -> list[tuple[str, bytes]]:
    headers, body = parse_raw(raw)
    top = mime.top_fields(headers)
    tree = mime.parse(body, top.content_type, top.cte, top.disposition)
    if any(p.defects for p in tree.walk()):
        return []
    # An unparsable type ("") is what the stdlib reads as text/plain.
    return [(p.mime_type or "text/plain", mime.decode_transfer(p.body(body), p.cte))
            for p in tree.walk() if p.kind == "leaf" and p.end > p.body_start]


def stdlib_leaves(raw: bytes) -> list[tuple[str, bytes]]:
    """Leaves as the stdlib sees them, except inside types it opens and the splitter does not."""
    found: list[tuple[str, bytes]] = []
    stack = [email.message_from_bytes(raw)]
    while stack:
        part = stack.pop()
        if part.get_content_type() in ("message/delivery-status", "message/external-body"):
            found.append((part.get_content_type(), b"?"))
        elif part.is_multipart():
            stack.extend(reversed(part.get_payload()))  # type: ignore[arg-type]
        else:
            payload = part.get_payload(decode=True)
            assert payload is None or isinstance(payload, bytes)
            if payload:
                found.append((part.get_content_type(), payload))
    return found


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_splitter_agrees_with_the_stdlib_on_well_formed_corpus_mail(path: Path) -> None:
    raw = without_unix_from(path.read_bytes())
    mine = splitter_leaves(raw)
    if not mine:
        return  # malformed: the splitter says so and stamping leaves it alone
    theirs = stdlib_leaves(raw)
    assert [t for t, _ in mine] == [t for t, _ in theirs]
    for (_, a), (_, b) in zip(mine, theirs, strict=True):
        assert b == b"?" or a == b


# --- generated MIME trees -----------------------------------------------------------------

CHARSETS = {
    "us-ascii": "",
    "utf-8": "äöü€日本😀",
    "iso-8859-1": "äöüßé",
    "windows-1252": "€“”–é",
    "iso-2022-jp": "日本語のテキスト",
    "shift_jis": "日本語カナ",
    "koi8-r": "Привет",
}
ASCII = string.ascii_letters + string.digits + " .,:;!?()<>&'\"=_/\n\t"


@dataclass
class Leaf:
    ctype: str
    content: bytes
    cte: str
    attachment: bool = False
    charset: str | None = None

    def headers(self) -> list[str]:
        ctype = self.ctype + (f'; charset="{self.charset}"' if self.charset else "")
        lines = [f"Content-Type: {ctype}", f"Content-Transfer-Encoding: {self.cte}"]
        if self.attachment:
            lines.append('Content-Disposition: attachment; filename="file.bin"')
        return lines

    def body(self, counter: Iterator[int]) -> bytes:
        if self.cte == "base64":
            return base64.encodebytes(self.content)
        if self.cte == "quoted-printable":
            return quopri.encodestring(self.content)
        return self.content


@dataclass
class Multi:
    subtype: str
    children: list[Leaf | Multi]
    boundary_seed: str
    quoted: bool
    preamble: bytes
    epilogue: bytes
    padding: bytes
    boundary: str = field(default="")

    def headers(self) -> list[str]:
        value = f'"{self.boundary}"' if self.quoted else self.boundary
        return [f"Content-Type: multipart/{self.subtype};\n\tboundary={value}"]

    def body(self, counter: Iterator[int]) -> bytes:
        self.boundary = f"{self.boundary_seed}=_cb{next(counter)}_"
        delimiter = f"--{self.boundary}".encode()
        out = self.preamble
        for child in self.children:
            inner = child.body(counter)  # first, so its boundary is known for its headers
            out += delimiter + self.padding + b"\n" + render_headers(child) + b"\n\n" + inner
            out += b"\n"
        return out + delimiter + b"--" + self.padding + b"\n" + self.epilogue


def render_headers(node: Leaf | Multi) -> bytes:
    return "\n".join(node.headers()).encode()


def main_targets(node: Leaf | Multi) -> dict[str, Leaf]:
    """The model's answer: first non-attachment html / plain through mixed/alternative/related."""
    found: dict[str, Leaf] = {}
    stack: list[Leaf | Multi] = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, Multi):
            if current.subtype in ("mixed", "alternative", "related"):
                stack.extend(reversed(current.children))
        elif not current.attachment:
            for target, ctype in TARGET_TYPES.items():
                if current.ctype == ctype:
                    found.setdefault(target, current)
    return found


@st.composite
def text_leaves(draw: st.DrawFn) -> Leaf:
    charset = draw(st.sampled_from(sorted(CHARSETS)))
    text = draw(st.text(ASCII + CHARSETS[charset], max_size=160))
    ctype = draw(st.sampled_from(["text/plain", "text/html"]))
    if ctype == "text/html":
        text = draw(st.sampled_from(["<html><body>{}</body></html>\n", "<html>{}</html>",
                                     "<p>{}</p>"])).format(text)
    content = text.encode(mime.codec_for(charset) or charset)
    encodings = ["quoted-printable", "base64", "8bit"] + (["7bit"] if content.isascii() else [])
    return Leaf(ctype, content, draw(st.sampled_from(encodings)),
                attachment=draw(st.integers(0, 5)) == 0, charset=charset)


@st.composite
def other_leaves(draw: st.DrawFn) -> Leaf:
    kind = draw(st.sampled_from(["image/png", "application/pdf", "text/calendar"]))
    if kind == "text/calendar":
        return Leaf(kind, b"BEGIN:VCALENDAR\nEND:VCALENDAR\n", "7bit")
    return Leaf(kind, draw(st.binary(max_size=120)), "base64", attachment=kind != "image/png")


def multis(children: st.SearchStrategy[Leaf | Multi]) -> st.SearchStrategy[Multi]:
    return st.builds(
        Multi,
        subtype=st.sampled_from(["mixed"] * 3 + ["alternative"] * 2 + ["related"] * 2 + ["signed"]),
        children=st.lists(children, min_size=1, max_size=4),
        boundary_seed=st.text(string.ascii_letters + string.digits + "'()+_,./:=? ", max_size=20)
        .map(str.strip),
        quoted=st.booleans(),
        preamble=st.sampled_from([b"", b"This is a multi-part message in MIME format.\n"]),
        epilogue=st.sampled_from([b"", b"\n", b"epilogue text\n"]),
        padding=st.sampled_from([b"", b" ", b"\t "]),
    )


TREES = st.recursive(st.one_of(text_leaves(), other_leaves()), multis, max_leaves=8)


def serialise(tree: Leaf | Multi, newline: bytes) -> bytes:
    body = tree.body(iter(range(1000)))
    head = b"From: a@example.com\nSubject: generated\nMIME-Version: 1.0\n" + render_headers(tree)
    return (head + b"\n\n" + body).replace(b"\n", newline)


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(tree=TREES, newline=st.sampled_from([b"\n", b"\r\n"]))
def test_generated_trees_keep_the_invariants(tree: Leaf | Multi, newline: bytes) -> None:
    raw = serialise(tree, newline)
    head, body, plan = plan_message(raw)
    stamped_after = check_invariants(head, body, plan)
    expected = main_targets(tree) if not (isinstance(tree, Multi) and tree.subtype == "signed") \
        else {}
    assert {o.target for o in plan.outcomes if o.status == "stamped"} == set(expected)
    for part in stamped_after:
        if part.get("Content-Transfer-Encoding", "").lower() in ("quoted-printable", "base64"):
            encoded = part.get_payload()
            assert isinstance(encoded, str)
            assert max(len(line) for line in encoded.splitlines()) <= 76
