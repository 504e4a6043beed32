"""Stamped mail and its replies, broken the ways transport and hostile senders break mail (the
bad-input standard: never a crash, never lost content, bounded work).

Each message of CPython's MIME corpus (read in place) and of tests/data is stamped outbound;
the stamped message, a reply that quotes it and the message itself are then mutated by seeded,
deterministic mutations (`random.Random`): cut at any offset, also inside a base64 line or a
delimiter line; bytes flipped; delimiter lines repeated or dropped; NUL, bare CR, bare LF and
0xFF put into the header and the body; a charset label that names a codec that is no charset
(Python's registry holds bytes-to-bytes and text-to-text codecs) in every place a label is
read; RFC 2231 sections out of order; encoded words of bad base64; Thread-Index values of odd
base64; tokens of the right shape whose MAC fails; odd transfer encodings and boundaries; and
hostile sizes (a 1 MB field, 10,000 fields, 10,000 Content-Type parameters, 100,000 IDs in
In-Reply-To, multiparts nested past the splitter's bound, 3,000 parts, a 4 MB line). Each
result runs inbound and outbound, half of them as `casethread filter` runs them, half as the
milter does (direction and body wanted at end of headers, the body cut there, a big one in a
map), and:

- no exception escapes `Engine.process`;
- what we write is clean and the message as the MTA passes it on parses (`check_output`);
- no edit removes content that is not ours: a field is removed only under our prefix or when
  it is a Message-ID that names none; Subject and References are only added to (bare line
  breaks and control characters dropped); each body splice lies in one leaf part, and that
  part, decoded by the stdlib, is its old content with one run inserted;
- the index is asked a bounded number of times (a count, not a clock).

A few of them also go through `casethread filter` in each direction.

`CASETHREAD_FUZZ_EXAMPLES` scales the rounds (`make fuzz`); the default keeps to a few seconds.
"""

from __future__ import annotations

import base64
import email
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from casethread.core import mime, msgid
from casethread.core.edits import ChangeHeader, Edit
from casethread.core.message import Envelope, Header, Message, newline_of, parse_raw, serialize
from casethread.core.model import Direction
from casethread.core.stamp import Splice
from casethread.index import MemoryIndex

from ..helpers.engine_output import as_body, check_edits, check_output, corpus_messages

DATA = Path(__file__).resolve().parents[1] / "data"
SUPPORT = "support@example.com"
# The milter keeps a body in memory to here (`stamp.spool_threshold`'s default), then maps it.
SPOOL_THRESHOLD = 1 << 20
ROUNDS = max(1, int(os.environ.get("CASETHREAD_FUZZ_EXAMPLES", "300")) // 300)
# Index calls one message may make, whatever its size: each strategy that reads References or
# In-Reply-To reads `inbound.references_limit` (100) IDs of it at most (100,000 IDs cost 416).
MAX_INDEX_CALLS = 1000
# Codecs Python's registry holds that are no charset (bytes-to-bytes, text-to-text, or ones
# that read the content as something else), names no codec knows, and broken names.
NO_CHARSETS = ("utf-7", "idna", "punycode", "rot13", "rot_13", "hex", "zlib", "base64", "uu",
               "bz2", "quopri", "unicode_escape", "raw_unicode_escape", "mbcs", "undefined",
               "charmap", "unicode", "_iso-2022-jp$ESC", "x-user-defined", "utf-8\x00", "\xff",
               "", "hz", "utf-16", "utf-32")
Mutation = Callable[[random.Random, bytes, str], bytes]


# --- where things are in a message -----------------------------------------------------------


def split(raw: bytes) -> tuple[bytes, bytes, bytes]:
    """(header section, separator, body), by the first empty line."""
    found = re.search(rb"\r?\n\r?\n", raw)
    if found is None:
        return raw, b"", b""
    return raw[: found.start()], found.group(), raw[found.end() :]


def newline(raw: bytes) -> bytes:
    return newline_of(raw)


def with_field(raw: bytes, name: bytes, value: bytes) -> bytes:
    """`raw` with its first `name` field (folded lines too) set to `value`, or one added."""
    head, sep, body = split(raw)
    field = re.compile(rb"(?im)^" + re.escape(name) + rb":.*(?:\r?\n[ \t].*)*")
    line = name + b": " + value
    if field.search(head):
        return field.sub(lambda _: line, head, count=1) + sep + body
    nl = newline(raw)
    return head + nl + line + (sep or nl + nl) + body


def delimiter_lines(raw: bytes) -> list[re.Match[bytes]]:
    return list(re.finditer(rb"(?m)^--[^\r\n]{1,80}\r?$", raw))


def base64_lines(raw: bytes) -> list[re.Match[bytes]]:
    return list(re.finditer(rb"(?m)^[A-Za-z0-9+/]{40,}={0,2}\r?$", raw))


def inside(rng: random.Random, raw: bytes, lines: list[re.Match[bytes]]) -> bytes:
    """`raw` cut inside one of `lines`, else anywhere."""
    if not lines:
        return raw[: rng.randrange(len(raw) + 1)]
    line = rng.choice(lines)
    return raw[: rng.randrange(line.start(), line.end() + 1)]


def sprinkled(rng: random.Random, data: bytes, count: int) -> bytes:
    out = bytearray(data)
    for _ in range(count):
        at = rng.randrange(len(out) + 1)
        out[at:at] = rng.choice([b"\x00", b"\r", b"\n", b"\xff", b"\r\r\n", b"\x00\xff\r"])
    return bytes(out)


def bad_mac(tok: str, rng: random.Random) -> str:
    """`tok` with one character of its MAC changed: the right shape, a failing signature."""
    at = rng.randrange(len(tok) - 4, len(tok))
    other = rng.choice([c for c in "0123456789ABCDEFGHJKMNPQRSTVWXYZ" if c != tok[at]])
    return tok[:at] + other + tok[at + 1 :]


# --- mutations: (rng, message, token of its case) -> message ---------------------------------


def truncated(rng: random.Random, raw: bytes, tok: str) -> bytes:
    where = rng.choice([[], base64_lines(raw), delimiter_lines(raw)])
    return inside(rng, raw, where)


def flipped(rng: random.Random, raw: bytes, tok: str) -> bytes:
    out = bytearray(raw)
    for _ in range(rng.randrange(1, 12)):
        if out:
            out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def delimiters_repeated_or_dropped(rng: random.Random, raw: bytes, tok: str) -> bytes:
    lines = delimiter_lines(raw)
    if not lines:
        return raw
    line = rng.choice(lines)
    repeated = (raw[line.start() : line.end()] + newline(raw)) * rng.randrange(0, 30)
    return raw[: line.start()] + repeated + raw[line.end() if not repeated else line.start() :]


def control_bytes(rng: random.Random, raw: bytes, tok: str) -> bytes:
    head, sep, body = split(raw)
    if rng.random() < 0.5:
        return sprinkled(rng, head, rng.randrange(1, 6)) + sep + body
    return head + sep + sprinkled(rng, body, rng.randrange(1, 20))


def no_charset(rng: random.Random, raw: bytes, tok: str) -> bytes:
    """A label that names no charset, in each place one is read."""
    label = rng.choice(NO_CHARSETS).encode("latin-1")
    place = rng.randrange(4)
    if place == 0 and re.search(rb"(?i)charset=", raw):
        return re.sub(rb'(?i)charset=("?)[^";\s]+', lambda m: b"charset=" + m.group(1) + label,
                      raw)
    if place == 1 and re.search(rb"(?i)<meta[^>]*charset=", raw):
        return re.sub(rb'(?i)(<meta[^>]*charset=)"?[^">\s]+', lambda m: m.group(1) + label, raw)
    if place == 2:
        return with_field(raw, b"Subject", b"=?" + label + b"?q?caf=E9_=FF?= =?" + label
                          + b"?b?Y2Fm6Q==?= [ref:" + tok.encode() + b"]")
    return with_field(raw, b"Content-Type",
                      b"text/plain; charset*=" + label + b"''%E9; name*=" + label + b"''x%FF")


def rfc2231_out_of_order(rng: random.Random, raw: bytes, tok: str) -> bytes:
    found = re.search(rb'(?i)boundary="?([^";\r\n]+)"?', raw)
    boundary = found.group(1) if found else b"b"
    half = max(1, len(boundary) // 2)
    return with_field(raw, b"Content-Type", rng.choice([
        b'multipart/mixed; boundary*1="' + boundary[half:] + b'"; boundary*0="'
        + boundary[:half] + b'"',
        b"multipart/mixed; boundary*0*=utf-8''" + boundary[:half] + b"; boundary*2="
        + boundary[half:],
        b"text/plain; charset*1=-8; charset*0=utf",
        b"multipart/alternative; boundary*0=\"\"; boundary*00=a; boundary*99999=c",
        b"text/html; charset*=''; name*0*=x%ZZ; name*1*=%E2%8",
    ]))


def bad_encoded_words(rng: random.Random, raw: bytes, tok: str) -> bytes:
    word = rng.choice([b"=?utf-8?b?!!!!?=", b"=?utf-8?b?QQ?=", b"=?utf-8?B?=?=",
                       b"=?utf-8?b?AAAAA?=", b"=?utf-16?b?2D3=?=", b"=?utf-7?q?+ZeVnLIqe-?=",
                       b"=??b??=", b"=?*?b?QQ==?=", b"=?utf-8*en?b?QUJD?="])
    name = rng.choice([b"Subject", b"From", b"To", b"Thread-Topic"])
    return with_field(raw, name, b"Re: " + word + b" " + word + b" [ref:" + tok.encode() + b"]")


def odd_thread_index(rng: random.Random, raw: bytes, tok: str) -> bytes:
    return with_field(raw, b"Thread-Index", rng.choice([
        b"AQ", b"A", b"====", b"AQID" * 5000, b"!!!" + base64.b64encode(bytes(22)),
        base64.b64encode(bytes(22))[:-1], base64.b64encode(bytes(27)), b"=?utf-8?b?QUJD?=",
        base64.b64encode(b"\xff" * 22) + b"\x00",
    ]))


def forged_token(rng: random.Random, raw: bytes, tok: str) -> bytes:
    forged = bad_mac(tok, rng).encode()
    place = rng.randrange(3)
    if place == 0:
        return with_field(raw, b"Subject", b"Re: help [ref:" + forged + b"]")
    if place == 1:
        return with_field(raw, b"References", b"<" + forged + b".case@support.example.com>")
    return raw.replace(tok.encode(), forged)


def odd_transfer_encoding(rng: random.Random, raw: bytes, tok: str) -> bytes:
    label = rng.choice([b"x-uuencode", b"base64; junk", b"BASE64", b"8bit 7bit", b"\xff",
                        b"=?utf-8?b?YmFzZTY0?=", b"", b"x-gzip64"])
    return re.sub(rb"(?im)^(content-transfer-encoding:)[^\r\n]*",
                  lambda m: m.group(1) + b" " + label, raw)


def odd_boundary(rng: random.Random, raw: bytes, tok: str) -> bytes:
    boundary = rng.choice([b'""', b'" "', b"a" * 200, b'"--"', b'"\xff\xfe"', b'"a\\"b"',
                           b"x; boundary=y"])
    return re.sub(rb'(?i)boundary=("[^"]*"|[^;\s]+)', lambda _: b"boundary=" + boundary, raw,
                  count=1)


MUTATIONS: list[Mutation] = [
    truncated, flipped, delimiters_repeated_or_dropped, control_bytes, no_charset,
    rfc2231_out_of_order, bad_encoded_words, odd_thread_index, forged_token,
    odd_transfer_encoding, odd_boundary,
]


def field_of_1mb(rng: random.Random, raw: bytes, tok: str) -> bytes:
    name = rng.choice([b"Subject", b"X-Long", b"References", b"Content-Type", b"From"])
    return with_field(raw, name, rng.choice([b"a" * (1 << 20), b"<a@b> " * (1 << 17),
                                             b"=?utf-8?b?" + b"QUFB" * (1 << 18) + b"?="]))


def fields_10000(rng: random.Random, raw: bytes, tok: str) -> bytes:
    name = rng.choice([b"Received", b"Content-Type", b"Subject", b"References", b"Thread-Index"])
    head, sep, body = split(raw)
    nl = newline(raw)
    many = nl.join(name + b": v%d <%d@x.example>" % (n, n) for n in range(10_000))
    return head + nl + many + (sep or nl + nl) + body


def parameters_10000(rng: random.Random, raw: bytes, tok: str) -> bytes:
    params = b"; ".join(b'p%d="v%d"' % (n, n) for n in range(10_000))
    kind = rng.choice([b'multipart/mixed; boundary="zz"; ', b"text/plain; charset=utf-8; "])
    return with_field(raw, b"Content-Type", kind + params)


def ids_100000(rng: random.Random, raw: bytes, tok: str) -> bytes:
    ids = b" ".join(b"<%d.%d@r%d.example>" % (n, n * 7, n % 13) for n in range(100_000))
    return with_field(raw, rng.choice([b"In-Reply-To", b"References"]), ids)


def nested(rng: random.Random, raw: bytes, tok: str) -> bytes:
    """The body wrapped in multiparts, past the splitter's depth bound (mime.MAX_DEPTH)."""
    head, _, body = split(raw)
    nl = newline(raw)
    depth = rng.choice([mime.MAX_DEPTH + 10, 300])
    inner = re.search(rb"(?im)^content-type:.*(?:\r?\n[ \t].*)*", head)
    opened = b"".join(b'--n%d%sContent-Type: multipart/mixed; boundary="n%d"%s%s'
                      % (n, nl, n + 1, nl, nl) for n in range(depth))
    leaf = inner.group() if inner else b"Content-Type: text/plain"
    opened += b"--n%d%s%s%s%s" % (depth, nl, leaf, nl, nl)
    closed = b"".join(b"%s--n%d--%s" % (nl, n, nl) for n in reversed(range(depth + 1)))
    wrapped = with_field(head + nl + nl, b"Content-Type", b'multipart/mixed; boundary="n0"')
    return wrapped + opened + body + closed


def parts_3000(rng: random.Random, raw: bytes, tok: str) -> bytes:
    nl = newline(raw)
    head, sep, _ = split(with_field(raw, b"Content-Type", b"multipart/mixed; boundary=mp"))
    part = b"--mp" + nl + b"Content-Type: text/plain" + nl + nl + b"[ref:" + tok.encode() + b"]"
    return head + (sep or nl + nl) + (part + nl) * 3000 + b"--mp--" + nl


def line_of_4mb(rng: random.Random, raw: bytes, tok: str) -> bytes:
    head, sep, body = split(raw)
    at = rng.randrange(len(body) + 1)
    return head + sep + body[:at] + rng.choice([b"=", b"<", b"\xe9", b"A"]) * (4 << 20) + body[at:]


HOSTILE_SIZES: list[Mutation] = [field_of_1mb, fields_10000, parameters_10000, ids_100000,
                                 nested, parts_3000, line_of_4mb]


# --- the run and its checks ------------------------------------------------------------------


class CountingIndex:
    """The harness's index, every call counted."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if not callable(attribute):
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return attribute(*args, **kwargs)

        return counted


def seeds() -> list[bytes]:
    return [p.read_bytes() for p in sorted(DATA.rglob("*.eml"))] + corpus_messages()


def stamped(harness: Any, raw: bytes) -> tuple[bytes, str]:
    """`raw` as an agent's mail leaves the MTA, and the token of its case (a valid token of no
    case when it opened none: an auto-reply, a bounce)."""
    headers, body = parse_raw(raw)
    out = harness.run(Message(Envelope(rcpts=("pat@customer.example.org",)), headers, body,
                              newline_of(raw)), Direction.OUTBOUND)
    case_ids = out.decision.case_ids
    tok = harness.token(case_ids[0]) if case_ids else harness.keyring.make(1)
    return serialize(out.headers, out.body, newline_of(raw)), tok


def reply_to(message: bytes, n: int) -> bytes:
    """The customer's reply, quoting the whole message: its MIME fields and body, In-Reply-To
    its Message-ID, its Subject with "Re:"."""
    head, sep, body = split(message)
    nl = newline(message)
    fields = [b"From: Pat <pat@customer.example.org>", b"To: " + SUPPORT.encode(),
              b"Message-ID: <reply.%d@customer.example.org>" % n]
    for line in re.split(rb"\r?\n(?![ \t])", head):
        name, _, value = line.partition(b":")
        key = name.lower()
        if key == b"message-id":
            fields.append(b"In-Reply-To:" + value)
        elif key == b"subject":
            fields.append(b"Subject: Re:" + value)
        elif key.startswith((b"content-", b"mime-", b"references", b"thread-")):
            fields.append(line)
    return nl.join(fields) + (sep or nl + nl) + body


def decoded(cte: str, content: bytes) -> bytes:
    """A part's content, transfer-decoded by the stdlib (not by the splitter under test)."""
    part = email.message_from_bytes(b"Content-Transfer-Encoding: " + cte.encode("ascii", "replace")
                                    + b"\r\n\r\n" + content)
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def one_run_inserted(old: bytes, new: bytes) -> bool:
    head = 0
    while head < min(len(old), len(new)) and old[head] == new[head]:
        head += 1
    tail = 0
    while tail < min(len(old), len(new)) - head and old[-1 - tail] == new[-1 - tail]:
        tail += 1
    return head + tail == len(old)


def check_splice(headers: tuple[Header, ...], body: bytes, splice: Splice) -> None:
    """The splice lies in one leaf part, which decodes to its old content plus one run."""
    top = mime.top_fields(headers)
    tree = mime.parse(body, top.content_type, top.cte, top.disposition)
    (part,) = [p for p in tree.walk() if p.kind == "leaf"
               and p.body_start <= splice.start and splice.end <= p.end]
    old = body[part.body_start : part.end]
    at, end = splice.start - part.body_start, splice.end - part.body_start
    new = old[:at] + splice.data + old[end:]
    assert one_run_inserted(decoded(part.cte, old), decoded(part.cte, new)), part


def visible(value: str) -> str:
    """A field's text but for our tags, line breaks, NUL and blanks (which writing drops or
    refolds)."""
    text = re.sub(r"[\x00-\x1f\x7f]", "", value)
    return "".join(re.sub(r"\[ref:[0-9A-Za-z]+\]", " ", text).split())


def check_change(headers: tuple[Header, ...], edit: ChangeHeader) -> None:
    """A changed or removed field is one of ours, or only gained what stamping adds."""
    name = edit.name.lower()
    old = [h.value for h in headers if h.name.lower() == name][edit.index - 1]
    if name.startswith("x-case-"):
        assert not edit.value, edit
    elif name == "message-id":
        assert msgid.first_id(old) is None, (old, edit)
    elif name == "subject":
        assert visible(edit.value).startswith(visible(old)), (old, edit)
    else:
        assert name == "references", edit
        assert all(visible(i.strip("<>")) in visible(old) or ".case@" in i
                   for i in re.findall(r"<[^<>]*>", edit.value)), (old[:300], edit)


def decide(harness: Any, headers: tuple[Header, ...], body: bytes, nl: bytes,
           direction: Direction, as_the_milter: bool) -> tuple[Any, bytes]:
    """The decision and the body it was made on: as `casethread filter` makes it (the whole
    body), or as the milter does: the direction and the body wanted known at end of headers,
    only that much of the body kept (spooled past the threshold: a map)."""
    envelope = Envelope(mail_from="pat@customer.example.org", rcpts=(SUPPORT,))
    if not as_the_milter:
        return harness.engine.process(Message(envelope, headers, body, nl), direction), body
    head = Message(envelope, headers, b"", nl)
    direction = harness.engine.classify(head, direction)
    plan = harness.engine.body_wanted(head, direction)
    kept = body[: max(plan.room, 0)]
    msg = head.with_body(envelope, as_body(kept, len(kept) > SPOOL_THRESHOLD))
    return harness.engine.process(msg, direction, plan.found), kept


def check(harness: Any, raw: bytes, as_the_milter: bool, tally: Counter[str]) -> None:
    headers, body = parse_raw(raw)
    nl = newline_of(raw)
    for direction in (Direction.INBOUND, Direction.OUTBOUND):
        harness.index.calls = 0
        decision, seen = decide(harness, headers, body, nl, direction, as_the_milter)
        assert harness.index.calls <= MAX_INDEX_CALLS, harness.index.calls
        # A body is replaced only by one made of all of it.
        assert seen == body or not decision.body_splices
        edits: tuple[Edit, ...] = decision.edits
        check_edits(edits)
        check_output(headers, body, nl, decision, tally)
        for edit in edits:
            if isinstance(edit, ChangeHeader):
                check_change(headers, edit)
        for splice in decision.body_splices:
            check_splice(headers, body, splice)
        tally[f"{direction} {decision.match}"] += 1


def cases(rng: random.Random, mutations: list[Mutation], make_harness: Any,
          raws: list[bytes], chains: tuple[int, ...], bases: int = 3
          ) -> Iterator[tuple[Any, bytes]]:
    """Per seed message: a fresh harness, and `bases` of its stamped form, its reply and itself,
    each mutated by a chain of mutations (its length drawn from `chains`)."""
    for n, raw in enumerate(raws):
        harness = make_harness(index=CountingIndex(MemoryIndex()))
        message, tok = stamped(harness, raw)
        # The agent's mail as it went out (read inbound, as a copy coming back, it would be a
        # duplicate delivery of its recorded Message-ID: a fresh one makes it resolve), the
        # customer's reply, and the mail before stamping.
        again = with_field(message, b"Message-ID", b"<again.%d@support.example.com>" % n)
        for base in rng.sample([again, reply_to(message, n), raw], bases):
            mutated = base
            for _ in range(rng.choice(chains)):
                mutated = rng.choice(mutations)(rng, mutated, tok)
            yield harness, mutated


def test_fuzz_mutated_stamped_mail_and_replies(make_harness: Any) -> None:
    tally: Counter[str] = Counter()
    rng = random.Random(25)
    all_seeds = seeds()
    assert len(all_seeds) > 50  # CPython's corpus was found
    for _ in range(3 * ROUNDS):
        for harness, mutated in cases(rng, MUTATIONS, make_harness, all_seeds, (1, 1, 2, 3)):
            check(harness, mutated, rng.random() < 0.5, tally)
            tally["inputs"] += 1
    assert tally["inputs"] == 3 * len(all_seeds) * 3 * ROUNDS
    assert tally["body stamped"] > 0  # mutated mail was stamped again, and checked


@pytest.mark.parametrize("mutation", HOSTILE_SIZES, ids=lambda m: m.__name__)
def test_fuzz_hostile_sizes_in_stamped_mail(make_harness: Any, mutation: Mutation) -> None:
    rng = random.Random(mutation.__name__)
    every = seeds()
    chosen = rng.sample(every, min(ROUNDS, len(every)))
    for harness, mutated in cases(rng, [mutation], make_harness, chosen, (1,), 1):
        check(harness, mutated, rng.random() < 0.5, Counter())


@pytest.mark.parametrize("direction", ["inbound", "outbound"])
def test_fuzz_mutated_mail_through_casethread_filter(
    run_filter: Any, make_harness: Any, direction: str
) -> None:
    """The same inputs through the command: exit 0, one log line and no error, output the
    stdlib parses; inbound mail's body comes out byte for byte."""
    rng = random.Random(direction)
    chosen = rng.sample(seeds(), 5)
    for _, mutated in cases(rng, MUTATIONS, make_harness, chosen, (1, 2), 1):
        done = run_filter("--direction", direction, "--rcpt", SUPPORT, "-", stdin=mutated)
        assert done.returncode == 0, done.stderr[-2000:]
        lines = [line for line in done.stderr.decode("utf-8", "replace").splitlines()
                 if "generated token key" not in line]
        assert len(lines) == 1 and " ERROR " not in lines[0], lines
        for part in email.message_from_bytes(done.stdout).walk():
            part.get_payload(decode=True)
        if direction == "inbound":
            assert parse_raw(done.stdout)[1] == parse_raw(mutated)[1]
