"""Reading and writing message files the way an MTA splits them (core.message)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casethread.core.edits import AddHeader, ChangeHeader, Edit, apply_edits
from casethread.core.message import (
    Envelope,
    Header,
    Message,
    decode_bytes,
    encode_str,
    newline_of,
    parse_raw,
    serialize,
    unfold,
)

DATA = Path(__file__).resolve().parents[1] / "data"
FIXTURES = ["agent-first.eml", "customer-reply.eml", "folded.eml"]


def roundtrip(raw: bytes) -> bytes:
    headers, body = parse_raw(raw)
    return serialize(headers, body, newline_of(raw))


@pytest.mark.parametrize("name", FIXTURES)
def test_lf_file_round_trips_byte_identically(name: str) -> None:
    raw = (DATA / name).read_bytes()
    assert b"\r" not in raw
    assert roundtrip(raw) == raw


@pytest.mark.parametrize("name", FIXTURES)
def test_crlf_file_round_trips_byte_identically(name: str) -> None:
    raw = (DATA / name).read_bytes().replace(b"\n", b"\r\n")
    assert newline_of(raw) == b"\r\n"
    assert roundtrip(raw) == raw


def test_fixture_headers_are_split_as_expected() -> None:
    headers, body = parse_raw((DATA / "agent-first.eml").read_bytes())
    assert [h.name for h in headers] == [
        "From", "To", "Subject", "Date", "MIME-Version", "Content-Type",
    ]
    assert headers[2].value == "Your printer question"
    assert body.startswith(b"Hello Pat,\n")


def test_folded_headers_keep_their_line_breaks_and_unfold() -> None:
    headers, body = parse_raw((DATA / "folded.eml").read_bytes())
    msg = Message(Envelope(), headers, body)
    subject = msg.get("subject")
    assert subject == (
        "A rather long subject line that the sending\n"
        " mail program decided to fold\n"
        "\tover three lines"
    )
    assert unfold(subject) == (
        "A rather long subject line that the sending mail program decided to fold\tover three lines"
    )
    assert msg.get("Message-ID") == "\n <folded.1@Customer.Example.ORG>"
    assert len(msg.get_all("References")) == 1
    # A body line that starts with a space is body, not a continuation.
    assert body == (
        b"Body line one.\n Body line starting with a space is not a continuation.\n"
    )


def test_crlf_folding_keeps_crlf_in_value() -> None:
    headers, _ = parse_raw(b"Subject: one\r\n two\r\n\r\nbody\r\n")
    assert headers[0].value == "one\r\n two"
    assert unfold(headers[0].value) == "one two"


def test_line_without_colon_ends_the_header_block() -> None:
    raw = b"From: a@example.com\nThis is not a header\nSubject: lost\n\nbody\n"
    headers, body = parse_raw(raw)
    assert [h.name for h in headers] == ["From"]
    # Like Postfix: that line and everything after it is body.
    assert body == b"This is not a header\nSubject: lost\n\nbody\n"
    out = serialize(headers, body)
    assert out == b"From: a@example.com\n\nThis is not a header\nSubject: lost\n\nbody\n"


def test_name_with_space_or_8bit_is_not_a_field() -> None:
    for bad in (b"Bad Name: x\n", b"N\xe4me: x\n", b": empty name\n"):
        headers, body = parse_raw(b"From: a@example.com\n" + bad + b"\nbody\n")
        assert [h.name for h in headers] == ["From"], bad
        assert body.startswith(bad)


def test_whitespace_before_colon_is_an_obsolete_but_valid_field() -> None:
    headers, _ = parse_raw(b"Subject : hi\n\n")
    assert headers == (Header("Subject", "hi"),)


def test_no_headers_at_all() -> None:
    headers, body = parse_raw(b"just a body line\nand another\n")
    assert headers == ()
    assert body == b"just a body line\nand another\n"
    headers, body = parse_raw(b"\nbody after an empty header section\n")
    assert headers == ()
    assert body == b"body after an empty header section\n"
    assert roundtrip(b"\nbody after an empty header section\n") == (
        b"\nbody after an empty header section\n"
    )


def test_empty_input() -> None:
    assert parse_raw(b"") == ((), b"")


def test_headers_without_body_or_final_newline() -> None:
    headers, body = parse_raw(b"From: a@example.com\nSubject: x")
    assert [(h.name, h.value) for h in headers] == [("From", "a@example.com"), ("Subject", "x")]
    assert body == b""
    # The missing line end is supplied in the file's own style.
    assert serialize(headers, body, b"\n") == b"From: a@example.com\nSubject: x\n\n"


def test_8bit_header_bytes_survive_byte_exact() -> None:
    raw = (
        b"From: J\xc3\xbcrgen <j@example.org>\n"
        b"Subject: caf\xe9 \xff\xfe latin-1 and junk\n"
        b"X-Mixed: \xc3\xa9t\xe9\n"
        b"\n"
        b"body \xe9\n"
    )
    headers, body = parse_raw(raw)
    assert headers[0].value == "Jürgen <j@example.org>"
    # Invalid UTF-8 becomes lone surrogates and encodes back to the same bytes.
    assert encode_str(headers[1].value) == b"caf\xe9 \xff\xfe latin-1 and junk"
    assert roundtrip(raw) == raw
    # Also when the fields are rebuilt from name/value only (as after a ChangeHeader elsewhere).
    rebuilt = tuple(Header(h.name, h.value) for h in headers)
    assert serialize(rebuilt, body) == raw


def test_decode_encode_are_inverse_on_all_bytes() -> None:
    every = bytes(range(256))
    assert encode_str(decode_bytes(every)) == every


def test_edit_keeps_untouched_headers_byte_exact_and_uses_file_newline() -> None:
    raw = (DATA / "folded.eml").read_bytes().replace(b"\n", b"\r\n")
    headers, body = parse_raw(raw)
    edited = apply_edits(headers, [AddHeader("X-Case-ID", "C-000001")])
    out = serialize(edited, body, newline_of(raw))
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert out == head + b"\r\nX-Case-ID: C-000001\r\n\r\n" + rest


def test_change_header_replaces_and_deletes_by_case_insensitive_index() -> None:
    headers = (
        Header("X-Case-ID", "a"), Header("Subject", "s"), Header("x-case-id", "b"),
        Header("X-CASE-ID", "c"),
    )
    edits: list[Edit] = [ChangeHeader("X-Case-Id", 3, ""), ChangeHeader("X-Case-ID", 1, "z")]
    edited = apply_edits(headers, edits)
    assert [(h.name, h.value) for h in edited] == [
        ("X-Case-ID", "z"), ("Subject", "s"), ("x-case-id", "b"),
    ]


def test_newline_of() -> None:
    assert newline_of(b"A: b\r\n\r\n") == b"\r\n"
    assert newline_of(b"A: b\n\n") == b"\n"
    assert newline_of(b"") == b"\n"
    assert newline_of(b"\r\nbody only\n") == b"\r\n"


def test_bare_cr_inside_a_header_value_is_not_a_line_break() -> None:
    """Postfix splits lines on LF only (a CRLF's CR is dropped); a lone CR is a value byte."""
    raw = b"Subject: a\rb\nFrom: x@example.com\n\nbody\n"
    headers, body = parse_raw(raw)
    assert [h.name for h in headers] == ["Subject", "From"]
    assert encode_str(headers[0].value) == b"a\rb"
    assert body == b"body\n"
    assert roundtrip(raw) == raw


FIELD_NAMES = st.from_regex(r"[!-9;-~]{1,20}", fullmatch=True)
# Value bytes: anything but line breaks (a bare CR is covered by its own test above).
VALUE_BYTES = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))


@settings(max_examples=300, deadline=None)
@given(
    fields=st.lists(
        st.tuples(FIELD_NAMES, VALUE_BYTES, st.lists(VALUE_BYTES, max_size=2)), max_size=6
    ),
    newline=st.sampled_from([b"\n", b"\r\n"]),
    body=st.binary(max_size=200),
)
def test_round_trip_is_byte_identical(
    fields: list[tuple[str, bytes, list[bytes]]], newline: bytes, body: bytes
) -> None:
    raw = b""
    for name, value, continuations in fields:
        raw += name.encode() + b": " + value.lstrip(b" \t") + newline
        for more in continuations:
            raw += b" " + more + newline
    raw += newline + body
    headers, parsed_body = parse_raw(raw)
    assert [h.name for h in headers] == [name for name, _, _ in fields]
    assert parsed_body == body
    assert serialize(headers, parsed_body, newline) == raw


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_and_the_body_is_a_suffix(raw: bytes) -> None:
    headers, body = parse_raw(raw)
    assert raw.endswith(body)
    for h in headers:
        assert h.raw is not None and h.raw in raw


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["From", "to", "X-Loop", "x-loop", "Precedence", "Subject",
                                 "Auto-Submitted", "Received", "X-Other"]), max_size=12),
       st.frozensets(st.sampled_from(["from", "to", "x-loop", "precedence", "auto-submitted",
                                      "list-id", "x-missing", "received"])))
def test_present_is_the_same_whichever_side_is_walked(names: list[str],
                                                        asked: frozenset[str]) -> None:
    """`present` walks the message's fields when it has fewer than the names asked, else the
    names: the same fields, with all their values in order, either way."""
    m = Message(Envelope(mail_from="<a@example.org>", rcpts=("b@example.com",)),
                tuple(Header(n, f"v{i}") for i, n in enumerate(names)))
    expected = {n: [f"v{i}" for i, h in enumerate(names) if h.lower() == n]
                for n in asked if any(h.lower() == n for h in names)}
    assert m.present(asked) == expected
