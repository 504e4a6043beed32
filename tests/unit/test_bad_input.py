"""Hostile and broken mail: it is always delivered, with a sensible result (DESIGN §8).

Each case runs through the engine (a decision comes back, no exception) and, where the raw
bytes matter, through `casethread filter`, which must print the message and exactly one log
line (the engine itself does not log; the CLI and the milter adapter do).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casethread.core import msgid
from casethread.core.edits import AddHeader, ChangeHeader, Edit
from casethread.core.message import Message, parse_raw
from casethread.core.model import AliasHit, AliasKind, Direction
from casethread.index import MemoryIndex

Build = Callable[..., Message]
CUSTOMER = ("From", "Pat Customer <pat@customer.example.org>")
AGENT = ("From", "Dana Agent <dana@support.example.com>")
INBOUND_ARGS = ("--direction", "inbound", "--rcpt", "support@example.com", "-")
OUTBOUND_ARGS = ("--direction", "outbound", "-")
CONTROL = re.compile(r"[\r\n\x00]")
NOT_FOLDING = re.compile(r"[\r\x00]|\n(?![ \t])")


class CountingIndex:
    """A MemoryIndex that counts Message-ID lookups, to bound work without timing anything.

    Both ways of asking for a Message-ID are counted; everything else (`record`,
    `case_for_number`, ...) is delegated unchanged.
    """

    def __init__(self) -> None:
        self.inner = MemoryIndex()
        self.looked_up: list[str] = []

    def find(self, kind: AliasKind, key: str) -> AliasHit | None:
        if kind is AliasKind.MESSAGE:
            self.looked_up.append(key)
        return self.inner.find(kind, key)

    def case_for_message(self, message_id: str) -> str | None:
        hit = self.find(AliasKind.MESSAGE, message_id)
        return None if hit is None else hit.case_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def assert_clean_edits(edits: tuple[Edit, ...]) -> None:
    """Nothing we write may carry CR, LF or NUL (header injection, broken MTAs), but for
    folding: a LF followed by a blank that starts a line which is not blank."""
    for e in edits:
        # A removal names a field as received; what we add or write must be clean.
        if isinstance(e, AddHeader):
            assert not CONTROL.search(e.name), e
        else:
            assert e.index >= 1
        assert not NOT_FOLDING.search(e.value), e
        assert all(line.strip() for line in e.value.split("\n")) or not e.value, e


def filtered(run_filter: Any, args: tuple[str, ...], raw: bytes, *logged: str,
             **kw: Any) -> Any:
    """`casethread filter ARGS` on `raw`: it exits 0 and logs one line, which holds each of
    `logged`; the finished process."""
    p = run_filter(*args, stdin=raw, **kw)
    assert p.returncode == 0, p.stderr[-2000:]
    # The first run in a fresh index also logs, once, that it generated the token key.
    lines = [
        line
        for line in p.stderr.decode("utf-8", "replace").splitlines()
        if "generated token key" not in line
    ]
    assert len(lines) == 1, lines
    for part in logged:
        assert part in lines[0], lines[0]
    return p


def header_of(output: bytes, name: str) -> list[str]:
    headers, _ = parse_raw(output)
    return [h.value for h in headers if h.name.lower() == name.lower()]


ALL_DIRECTIONS = [Direction.INBOUND, Direction.OUTBOUND, Direction.OTHER]


def as_new_case(head: bytes, body: bytes = b"") -> bytes:
    """The filter's output for inbound mail that opens C-000001 with the default routing
    (DESIGN §6): our fields after its header `head`, then the body as it came."""
    return (head + b"\nX-Case-ID: C-000001\nX-Case-Match: new\nX-Case-State: new\n"
            b"X-Case-Queue: support\nX-Case-Auto: no\n\n" + body)


# --------------------------------------------------------------------------- no headers


@pytest.mark.parametrize("direction", ALL_DIRECTIONS)
def test_no_headers_at_all_engine(harness: Any, build: Build, direction: Direction) -> None:
    r = harness.run(build(body=b"hello\n"), direction)
    assert r.decision.direction is direction
    assert_clean_edits(r.decision.edits)
    if direction is Direction.INBOUND:
        assert r.case_id == "C-000001"
        assert "no-message-id" in r.decision.notes
    elif direction is Direction.OUTBOUND:
        assert r.case_id == "C-000001"
        mid = r.one("Message-ID")
        assert mid.endswith("@mx.host.example.net>")  # no From: the host name
        tok = harness.token("C-000001")
        assert r.one("Subject") == f"[ref:{tok}]"  # a Subject holding just the tag
        assert r.one("References") == f"<{tok}.case@mx.host.example.net>"
        assert len(r.all("Thread-Index")) == 1
        assert r.all("Thread-Topic") == []  # no Subject to take a topic from
    else:
        assert r.decision.edits == ()


def test_no_headers_at_all_filter(run_filter: Any) -> None:
    body = b"no header here, just text\nsecond line\n"
    p = filtered(run_filter, INBOUND_ARGS, body,
                 "direction=inbound", "case=C-000001", "match=new")
    _, sep, rest = p.stdout.partition(b"\n\n")
    assert sep and rest == body
    assert header_of(p.stdout, "X-Case-ID") == ["C-000001"]


def test_empty_input_filter(run_filter: Any) -> None:
    p = filtered(run_filter, OUTBOUND_ARGS, b"", "direction=outbound", "case=C-000001")
    assert header_of(p.stdout, "X-Case-ID") == ["C-000001"]
    assert p.stdout.endswith(b"\n\n")


# --------------------------------------------------------------------------- no colon


def test_header_without_colon_engine(harness: Any) -> None:
    raw = b"From: pat@customer.example.org\nGarbage line without colon\nSubject: x\n\nbody\n"
    headers, body = parse_raw(raw)
    assert [h.name for h in headers] == ["From"]
    msg = Message(harness.inbound().msg.envelope, headers, body)
    r = harness.run(msg, Direction.INBOUND)
    assert r.case_id == "C-000002"
    assert_clean_edits(r.decision.edits)


def test_header_without_colon_filter(run_filter: Any) -> None:
    raw = (
        b"From: pat@customer.example.org\n"
        b"Message-ID: <nocolon@customer.example.org>\n"
        b"This line has no colon\n"
        b"X-Case-ID: C-424242\n"
        b"\n"
        b"body\n"
    )
    p = filtered(run_filter, INBOUND_ARGS, raw, "direction=inbound", "match=new")
    # The MTA's view: the colon-less line starts the body, so the "X-Case-ID" after it is body
    # text, delivered as it came; our header block has exactly one.
    assert header_of(p.stdout, "X-Case-ID") == ["C-000001"]
    assert p.stdout.endswith(b"\n\nThis line has no colon\nX-Case-ID: C-424242\n\nbody\n")
    assert p.stdout.startswith(
        b"From: pat@customer.example.org\nMessage-ID: <nocolon@customer.example.org>\n"
    )


# --------------------------------------------------------------------------- 8-bit bytes


EIGHT_BIT = (
    b"From: =?utf-8?q?J=C3=BCrgen?= <j\xfcrgen@customer.example.org>\n"
    b"To: support@example.com\n"
    b"Subject: caf\xe9 \xc3\xa9 \xff\n"
    b"Message-ID: <\xe9t\xe9.1@Customer.example.org>\n"
    b"X-Case-Queue: \xfe\n"
    b"\n"
    b"body \x80\n"
)


def test_8bit_headers_engine_records_and_finds_the_id(harness: Any) -> None:
    headers, body = parse_raw(EIGHT_BIT)
    first = harness.run(Message(harness.inbound().msg.envelope, headers, body), Direction.INBOUND)
    assert first.case_id == "C-000002"
    assert_clean_edits(first.decision.edits)
    reply = harness.inbound(CUSTOMER, ("In-Reply-To", headers[3].value))
    assert reply.case_id == "C-000002"
    assert reply.one("X-Case-Match") == "in-reply-to"


def test_8bit_headers_filter_byte_exact(run_filter: Any) -> None:
    p = filtered(run_filter, INBOUND_ARGS, EIGHT_BIT,
                 "direction=inbound", "case=C-000001", "match=new")
    kept = EIGHT_BIT.replace(b"X-Case-Queue: \xfe\n", b"")
    head, _, body = kept.partition(b"\n\n")
    assert p.stdout == as_new_case(head, body)
    # The 8-bit Message-ID went into the (LMDB) index and is found again.
    reply = b"From: x@customer.example.org\nIn-Reply-To: <\xe9t\xe9.1@customer.EXAMPLE.org>\n\nhi\n"
    filtered(run_filter, INBOUND_ARGS, reply, "case=C-000001", "match=in-reply-to")


def test_8bit_outbound_filter(run_filter: Any) -> None:
    raw = b"From: Dana <dana@support.example.com>\nSubject: r\xe9ponse \xff\n\nbody\n"
    # A Subject that is not UTF-8 cannot be written back exactly: it is left alone, and noted.
    p = filtered(run_filter, OUTBOUND_ARGS, raw,
                 "direction=outbound", "case=C-000001", "subject-8bit")
    assert p.stdout.startswith(b"From: Dana <dana@support.example.com>\nSubject: r\xe9ponse \xff\n")
    # The token still travels: the anchor in References, and the token line in the body.
    (refs,) = header_of(p.stdout, "References")
    anchor = re.fullmatch(r"<([0-9A-Z]{19,31})\.case@support\.example\.com>", refs)
    assert anchor, refs
    assert p.stdout.endswith(b"\n\nbody\n\n[ref:" + anchor.group(1).encode() + b"]\n")
    assert header_of(p.stdout, "Thread-Topic") == []


# --------------------------------------------------------------------------- CR / LF / NUL


NASTY = ["a\r\nX-Injected: yes", "a\nb", "a\rb", "a\x00b", "\r\n", "\x00", "<id\r\n@x.org>"]


@pytest.mark.parametrize("nasty", NASTY)
@pytest.mark.parametrize("direction", ALL_DIRECTIONS)
def test_control_characters_in_values_never_reach_our_headers(
    harness: Any, build: Build, nasty: str, direction: Direction
) -> None:
    msg = build(
        ("From", f"dana{nasty}@support.example.com"),
        ("Subject", nasty),
        ("Message-ID", nasty),
        ("In-Reply-To", nasty),
        ("References", f"<r{nasty}1@x.org> {nasty}"),
        ("X-Case-ID", nasty),
        ("X-Case-Match", nasty),
    )
    r = harness.run(msg, direction)
    assert r.decision.direction is direction
    assert_clean_edits(r.decision.edits)
    if direction is Direction.INBOUND:
        assert r.decision.case_ids == ("C-000001",)
    if direction is not Direction.OTHER:
        # Outbound, "a\nb" unfolds to the valid app id "ab" (bare line breaks are dropped).
        assert len(r.decision.case_ids) == 1
        assert r.case_id == r.decision.case_ids[0]
    if direction is Direction.OUTBOUND and msgid.first_id(nasty) is None:
        # A Message-ID that normalises to nothing is replaced by a clean one.
        assert not CONTROL.search(r.one("Message-ID"))


def test_message_id_with_nul_is_recorded_without_it(harness: Any) -> None:
    harness.inbound(CUSTOMER, ("Message-ID", "<nul\x00@customer.example.org>"))
    r = harness.inbound(CUSTOMER, ("In-Reply-To", "<nul@customer.example.org>"))
    assert r.case_id == "C-000001"
    assert r.one("X-Case-Match") == "in-reply-to"


def test_nul_and_bare_cr_in_header_values_filter(run_filter: Any) -> None:
    raw = (
        b"From: pat@customer.example.org\n"
        b"Subject: a\x00b\n"
        b"X-Note: one\rtwo\n"
        b"Message-ID: <crnul@customer.example.org>\n"
        b"\n"
        b"body\n"
    )
    p = filtered(run_filter, INBOUND_ARGS, raw, "direction=inbound", "case=C-000001", "match=new")
    head, _, body = raw.partition(b"\n\n")
    # Postfix splits lines on LF only: the bare CR is a byte of X-Note, and Message-ID stays
    # a header (so it is recorded).
    assert p.stdout == as_new_case(head, body)


# --------------------------------------------------------------------------- reply headers


@pytest.mark.parametrize(
    "garbage",
    ["garbage", "<<<>>>", "<", ">", "@", "<@>", "(((", ")))<>", "\x00\x01\x02", "a@" * 5000],
)
def test_in_reply_to_garbage(harness: Any, garbage: str) -> None:
    harness.outbound(AGENT, ("Message-ID", "<known@support.example.com>"))
    r = harness.inbound(CUSTOMER, ("In-Reply-To", garbage), ("References", garbage))
    assert r.case_id == "C-000002"
    assert r.one("X-Case-Match") == "new"
    assert_clean_edits(r.decision.edits)


def test_in_reply_to_garbage_filter(run_filter: Any) -> None:
    raw = b"From: pat@customer.example.org\nIn-Reply-To: <<<>>> (((junk\nReferences: <\n\nhi\n"
    filtered(run_filter, INBOUND_ARGS, raw, "direction=inbound", "case=C-000001", "match=new")


@pytest.mark.parametrize("direction", [Direction.INBOUND, Direction.OUTBOUND])
def test_references_of_10000_ids_does_bounded_lookups(
    make_harness: Any, tweak: Any, build: Build, direction: Direction
) -> None:
    limit = 100
    index = CountingIndex()
    h = make_harness(tweak(inbound={"references_limit": limit}), index=index)
    # The only known id is far beyond the limit, so it must not be looked up: only the
    # newest IDs and the thread's first one are.
    h.inbound(CUSTOMER, ("Message-ID", "<ref5000@customer.example.org>"))
    ids = [f"<ref{i}@customer.example.org>" for i in range(10_000)]
    index.looked_up.clear()
    r = h.run(build(CUSTOMER, ("References", "\r\n ".join(ids))), direction)
    assert len(index.looked_up) <= limit + 1
    assert index.looked_up == [
        *(f"ref{i}@customer.example.org" for i in range(9_999, 9_899, -1)),
        "ref0@customer.example.org",
    ]
    assert r.decision.match == "new"
    assert r.case_id == "C-000002"
    if direction is Direction.OUTBOUND:
        # Written back trimmed: the anchor first, then at most the first and newest IDs.
        refs = r.one("References").split()
        assert len(refs) <= 20
        assert refs[0] == f"<{h.token('C-000002')}.case@customer.example.org>"
        assert refs[-1] == ids[-1]


def test_in_reply_to_of_10000_ids_is_bounded_too(make_harness: Any, tweak: Any) -> None:
    index = CountingIndex()
    h = make_harness(tweak(inbound={"references_limit": 10}), index=index)
    many = " ".join(f"<irt{i}@x.org>" for i in range(10_000))
    h.inbound(CUSTOMER, ("In-Reply-To", many), ("References", many))
    # Each reply header is bounded by the limit (and its first ID).
    assert len(index.looked_up) <= 2 * (10 + 1)


def test_references_of_10000_ids_filter(run_filter: Any) -> None:
    ids = b"\n ".join(b"<f%d@customer.example.org>" % i for i in range(10_000))
    raw = b"From: pat@customer.example.org\nReferences: " + ids + b"\n\nhi\n"
    p = filtered(run_filter, INBOUND_ARGS, raw, "match=new")
    assert p.stdout.startswith(raw.partition(b"\n\n")[0])


# --------------------------------------------------------------------------- long Message-ID


LONG_LOCAL = "x" * 1_980
LONG_ID = f"<{LONG_LOCAL}@customer.example.org>"


def test_message_id_of_2000_characters_engine(harness: Any) -> None:
    assert len(LONG_ID) >= 2_000
    first = harness.inbound(CUSTOMER, ("Message-ID", LONG_ID))
    assert first.case_id == "C-000001"
    reply = harness.inbound(CUSTOMER, ("In-Reply-To", LONG_ID))
    assert reply.case_id == "C-000001"
    assert reply.one("X-Case-Match") == "in-reply-to"
    again = harness.inbound(CUSTOMER, ("Message-ID", LONG_ID))
    assert again.one("X-Case-Match") == "duplicate"
    out = harness.outbound(AGENT, ("Message-ID", LONG_ID.replace("x", "y")))
    assert out.one("Message-ID") == LONG_ID.replace("x", "y")
    assert harness.inbound(CUSTOMER, ("References", LONG_ID.replace("x", "y"))).case_id == (
        out.case_id
    )


def test_message_id_of_2000_characters_filter(run_filter: Any) -> None:
    """Through the LMDB index, whose keys are limited to 511 bytes."""
    first = f"From: pat@customer.example.org\nMessage-ID: {LONG_ID}\n\nhi\n".encode()
    filtered(run_filter, INBOUND_ARGS, first, "case=C-000001", "match=new")
    reply = f"From: pat@customer.example.org\nIn-Reply-To: {LONG_ID}\n\nagain\n".encode()
    filtered(run_filter, INBOUND_ARGS, reply, "case=C-000001", "match=in-reply-to")


# --------------------------------------------------------------------------- nested comments


DEEP = 5_000


@pytest.mark.parametrize("field", ["From", "To", "Cc"])
def test_deeply_nested_comments_in_an_address_field(harness: Any, field: str) -> None:
    """The stdlib's address parser recurses once per nested "(": 5,000 of them raised
    RecursionError (adversarial audit), and the message passed without any X-Case-* field
    (the failure policy), so downstream rules holding `X-Case-Sender: unknown` mail never saw
    it. Such a field is read with its comments dropped: the address outside them counts."""
    value = "Eve " + "(" * DEEP + "x" + ")" * DEEP + " <eve@evil.example>"
    unclosed = "(" * DEEP + "bob@customer.example.org"  # all comment: no address
    headers = {"From": "Eve <eve@evil.example>", "To": "<support@example.com>", "Cc": ""}
    headers[field] = value if field == "From" else f"{value}, {unclosed}"
    r = harness.inbound(*((k, v) for k, v in headers.items() if v),
                        ("X-Case-ID", "C-999999"), ("Subject", "hi"))
    assert r.all("X-Case-ID") == ["C-000001"] and r.one("X-Case-Match") == "new"
    assert r.removals and "C-999999" not in [v for _, v in r.ours()]
    case = harness.case("C-000001")
    participants = {p for p in ("eve@evil.example", "bob@customer.example.org")
                    if harness.index.find(AliasKind.PARTICIPANT, f"C-000001 {p}") is not None}
    assert participants == {"eve@evil.example"}, case


# --------------------------------------------------------------------------- bodies


def test_empty_body_engine(harness: Any) -> None:
    r = harness.outbound(AGENT, body=b"")
    assert r.case_id == "C-000001"


@pytest.mark.parametrize(
    "raw",
    [
        b"From: pat@customer.example.org\nSubject: empty\n\n",
        b"From: pat@customer.example.org\nSubject: no separator\n",
    ],
)
def test_empty_body_filter(run_filter: Any, raw: bytes) -> None:
    p = filtered(run_filter, INBOUND_ARGS, raw, "case=C-000001")
    head = raw.rstrip(b"\n")
    assert p.stdout == as_new_case(head)


def big_body() -> bytes:
    """30 MB of arbitrary bytes: 8-bit, NULs, CR, LF, lines that look like headers."""
    rng = random.Random(20260302)
    chunk = rng.randbytes(1 << 20) + b"\nFrom: fake@x\r\nX-Case-ID: C-1\n\n\r\n\x00"
    return (chunk * 30)[: 30 * 1024 * 1024]


def test_30mb_body_engine(harness: Any) -> None:
    body = big_body()
    r = harness.outbound(AGENT, body=body)
    assert r.case_id == "C-000001"
    # Edits are header edits only; a text part this large is not stamped, and that is noted.
    assert all(isinstance(e, AddHeader | ChangeHeader) for e in r.decision.edits)
    assert r.decision.body_splices == ()
    assert any(n.startswith("text-not-stamped:") for n in r.decision.notes), r.decision.notes
    assert r.msg.body is body


def test_30mb_body_filter(run_filter: Any) -> None:
    body = big_body()
    head = b"From: Dana <dana@support.example.com>\nSubject: big\n"
    p = filtered(run_filter, OUTBOUND_ARGS, head + b"\n" + body,
                 "direction=outbound", "case=C-000001", timeout=120)
    out_head, sep, out_body = p.stdout.partition(b"\n\n")
    assert sep
    # Whole and unchanged, but its last line ends, as SMTP and sendmail(1) end it.
    assert not body.endswith(b"\n")
    assert out_body == body + b"\n"
    assert out_head.startswith(head.rstrip(b"\n"))
    assert b"\nX-Case-ID: C-000001" in out_head


# --------------------------------------------------------------------------- anything at all


HEADER_NAMES = st.sampled_from(
    ["From", "Message-ID", "In-Reply-To", "References", "X-Case-ID", "x-case-match", "Subject"]
)
# Any character, and any bytes as the MTA may send them. Header values reach the engine decoded
# with surrogateescape (pymilter, `filter`), so the only lone surrogates that can occur are
# U+DC80..U+DCFF: escaped undecodable bytes, which the second branch makes. Other lone
# surrogates cannot be produced by decoding and are not encodable back; they are left out.
VALUES = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60) | st.builds(
    lambda raw: raw.decode("utf-8", "surrogateescape"), st.binary(max_size=60)
)


# The fixtures used here are factories (no per-test state), so sharing them across examples is
# safe; each example makes its own engine and index.
@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    headers=st.lists(st.tuples(HEADER_NAMES, VALUES), max_size=8),
    direction=st.sampled_from(ALL_DIRECTIONS),
)
def test_any_headers_give_a_decision_with_clean_edits(
    make_harness: Any, build: Build, headers: list[tuple[str, str]], direction: Direction
) -> None:
    h = make_harness()
    first = h.run(build(*headers), direction)
    again = h.run(build(*headers), direction)
    for r in (first, again):
        assert r.decision.direction is direction
        assert_clean_edits(r.decision.edits)
        ours = [x for x in r.headers if x.name.lower().startswith("x-case-")]
        if direction is Direction.OTHER:
            assert ours == []
        else:
            assert len(r.all("X-Case-ID")) == 1
            assert r.decision.case_ids == (r.case_id.strip(),)


@pytest.mark.parametrize("blank", ["", " ", "\r\n "])
def test_a_blank_message_id_field_before_the_real_one_is_passed_over(
    harness: Any, blank: str
) -> None:
    """Sendmail hands milters no blank Message-ID (nor Date, From: fields it writes itself),
    Postfix and `casethread filter` do: the first *filled* Message-ID is the message's, so
    the decision is the same behind both MTAs and in `filter` (found by delivering such mail
    through Sendmail and comparing with filter). Before, the blank one counted: outbound got
    a second, new Message-ID (message-id-added), inbound was read as having none."""
    agent = ("From", "dana@support.example.com")
    out = harness.outbound(agent, ("To", "pat@customer.example.org"), ("Subject", "Printer"),
                           ("Message-ID", blank), ("Message-ID", "<real@support.example.com>"))
    assert "message-id-added" not in out.decision.log_fields()
    assert not [e for e in out.decision.edits if e.name.lower() == "message-id"]
    reply = harness.inbound(CUSTOMER, ("Subject", "Re: Printer"),
                            ("In-Reply-To", "<real@support.example.com>"))
    assert reply.case_id == out.case_id
    first = harness.inbound(CUSTOMER, ("Subject", "New"), ("Message-ID", blank),
                            ("Message-ID", "<n1@customer.example.org>"))
    assert "no-message-id" not in first.decision.log_fields()
    again = harness.inbound(CUSTOMER, ("Subject", "New"),
                            ("Message-ID", "<n1@customer.example.org>"))
    assert again.case_id == first.case_id
    assert again.one("X-Case-Match") == "duplicate"


def test_only_blank_message_id_fields_are_replaced_in_place(harness: Any) -> None:
    out = harness.outbound(("From", "dana@support.example.com"), ("To", "pat@customer.example.org"),
                           ("Subject", "Printer"), ("Message-ID", " "), ("Message-ID", ""))
    ids = [e for e in out.decision.edits if e.name.lower() == "message-id"]
    assert len(ids) == 1 and isinstance(ids[0], ChangeHeader) and ids[0].index == 1
