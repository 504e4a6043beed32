"""The byte-exact MIME splitter (core.mime): field parsing, part offsets, malformed input."""

from __future__ import annotations

import base64
import binascii
import codecs
import encodings
import encodings.aliases
import mmap
import os
import pkgutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casethread.core import mime
from casethread.core.message import Header
from casethread.core.mime import Part
from casethread.core.subject import decode_subject
from casethread.core.text_decoding import decode_text

FUZZ_EXAMPLES = int(os.environ.get("CASETHREAD_FUZZ_EXAMPLES", "200"))


def parts_of(body: bytes, ctype: str | None, cte: str | None = None) -> list[Part]:
    return list(mime.parse(body, ctype, cte).walk())


def body_of(body: bytes, part: Part) -> bytes:
    return body[part.body_start : part.end]


# --- field values -------------------------------------------------------------------------


def test_content_type_value_is_lowercased_and_params_are_read() -> None:
    ct = mime.content_type('Text/HTML; Charset="UTF-8"; format=flowed')
    assert ct.value == "text/html"
    assert ct.param("charset") == "UTF-8"
    assert ct.param("FORMAT") == "flowed"
    assert ct.param("missing") is None


def test_quoted_boundary_keeps_semicolons_spaces_and_escapes() -> None:
    ct = mime.content_type('multipart/mixed; boundary="a;b \\"c\\" d"; x=1')
    assert ct.param("boundary") == 'a;b "c" d'
    assert ct.param("x") == "1"


def test_folded_value_with_whitespace_around_equals() -> None:
    ct = mime.content_type('multipart/alternative;\r\n\tboundary = "----=_NextPart_000"')
    assert ct.value == "multipart/alternative"
    assert ct.param("boundary") == "----=_NextPart_000"


def test_comments_are_dropped_from_the_type() -> None:
    assert mime.content_type("text/plain (the body); charset=us-ascii").value == "text/plain"
    assert mime.transfer_encoding(" Base64 (encoded)") == "base64"


def test_comments_after_a_parameter_value_are_dropped() -> None:
    """RFC 2045 §5.1 allows comments around a value: the boundary was read as
    `b1 (by Mailer 2.0)`, found in no line, and the whole body stayed opaque (its base64
    parts unread, nothing stamped); the charset was one nobody knows."""
    body = b"--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b1--\r\n"
    tree = mime.parse(body, "multipart/mixed; boundary=b1 (by Mailer 2.0)")
    assert (tree.kind, tree.boundary, tree.defects) == ("multipart", "b1", ())
    assert [body_of(body, p) for p in tree.children] == [b"hello"]
    ct = mime.content_type("text/plain; charset=iso-8859-1\r\n (Latin (West) 1); format=flowed")
    assert (ct.param("charset"), ct.param("format")) == ("iso-8859-1", "flowed")
    # Parentheses inside a value (tspecials, yet written so) are no comment of it.
    assert mime.parse_field("attachment; filename=report(1).pdf").param("filename") == (
        "report(1).pdf")
    assert mime.parse_field('attachment; filename="a (1).pdf" (x)').param("filename") == (
        "a (1).pdf")


def test_a_semicolon_inside_a_comment_splits_no_parameter() -> None:
    """`boundary=b1 (by Mailer; v2)` was split at the comment's `;`: the boundary's piece kept
    an unclosed comment, read as `b1 (by Mailer`, and the body stayed unsplit."""
    body = b"--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b1--\r\n"
    tree = mime.parse(body, "multipart/mixed; boundary=b1 (by Mailer; v2)")
    assert (tree.kind, tree.boundary, tree.defects) == ("multipart", "b1", ())
    ct = mime.content_type('text/plain (a; b="c); charset=utf-8 (x;y); format=flowed')
    assert (ct.value, ct.param("charset"), ct.param("format")) == ("text/plain", "utf-8",
                                                                  "flowed")
    # A `(` inside a value, or a comment left open, splits as before.
    assert mime.parse_field("attachment; filename=a(1;2).pdf").param("filename") == "a(1"
    assert mime.content_type("text/plain; charset=utf-8 (open; format=flowed").param(
        "format") == "flowed"


def test_absent_type_gives_the_default_and_garbage_gives_nothing() -> None:
    assert mime.content_type(None).value == "text/plain"
    assert mime.content_type(None, "message/rfc822").value == "message/rfc822"
    # A lone `text` (no subtype) is text/plain, as readers show it; another lone word is not.
    assert mime.content_type("text").value == "text/plain"
    assert mime.content_type("html").value == ""
    assert mime.content_type("").value == ""
    assert mime.content_type("text/plain garbage").value == ""


def test_transfer_encoding_defaults_to_7bit() -> None:
    assert mime.transfer_encoding(None) == "7bit"
    assert mime.transfer_encoding("") == "7bit"
    assert mime.transfer_encoding("Quoted-Printable") == "quoted-printable"


def test_transfer_encoding_is_its_first_token() -> None:
    """`quoted-printable;` (a bulk mailer's) was an unknown encoding: its part was neither
    stamped nor read. What follows a `;` is no part of the token (Thunderbird reads it so);
    a blank inside is no separator: `quoted printable` stays unknown, as there."""
    assert mime.transfer_encoding("quoted-printable;") == "quoted-printable"
    assert mime.transfer_encoding(" Base64 ; x=y") == "base64"
    assert mime.transfer_encoding("quoted printable") == "quoted printable"


@pytest.mark.parametrize(("raw", "cte"), [
    ("7-bit", "7bit"), ("7 bit", "7bit"), ("8bits", "8bit"), ("8-Bit", "8bit"),
    ("7\tbit", "7bit"), ("8  bit", "8bit"), ("7\r\n bit", "7bit"),
])
def test_misspelled_identity_encodings_are_read_as_such(raw: str, cte: str) -> None:
    """A newsletter's `7-bit` and `8bits` parts were left unstamped
    (`unsupported-transfer-encoding-'7-bit'`); readers show their bytes as they are."""
    assert mime.transfer_encoding(raw) == cte


def test_rfc2231_extended_value_is_decoded() -> None:
    field = mime.parse_field("attachment; filename*=utf-8''na%C3%AFve%20file.txt")
    assert field.value == "attachment"
    assert field.param("filename") == "naïve file.txt"


def test_rfc2231_value_with_an_empty_charset_is_read_as_utf8() -> None:
    field = mime.parse_field("attachment; filename*=''caf%C3%A9.pdf")
    assert field.param("filename") == "café.pdf"


def test_rfc2231_continuations_are_joined_in_order_and_win_over_plain() -> None:
    field = mime.parse_field(
        "attachment; filename=fallback.txt; filename*1*=%20part; "
        "filename*0*=iso-8859-1'en'caf%E9; filename*2=\" two\""
    )
    assert field.param("filename") == "café part two"


def test_unknown_charsets_and_non_charset_codecs_are_refused() -> None:
    assert mime.codec_for("ISO-8859-2") == "iso8859-2"
    assert mime.codec_for(None) == "ascii"
    assert mime.codec_for("x-unknown") is None
    assert mime.codec_for("base64") is None
    assert mime.codec_for("unicode_escape") is None


def test_lenient_transfer_decoding_does_not_raise() -> None:
    assert mime.decode_transfer(b"QUJD\r\nRA", "base64") == b"ABCD"
    assert mime.decode_transfer(b"QUJ!D\r\nR", "base64") == b"ABC"
    assert mime.decode_transfer(b"caf=E9 =\r\nau lait", "quoted-printable") == b"caf\xe9 au lait"
    assert mime.decode_transfer(b"as is=", "8bit") == b"as is="


def test_base64_written_in_padded_pieces_decodes_each_piece() -> None:
    """Some encoders write base64 in pieces, each with its padding: read as one stream, all
    after the first piece came out shifted (garbage, the token lost)."""
    raw = b"aGkhIXg=\r\nW3JlZjpYXQ==\r\n" + b"QQ==QkM=\r\n"
    assert mime.decode_transfer(raw, "base64") == b"hi!!x[ref:X]ABC"
    # Beyond MAX_BASE64_PIECES pieces, the rest is read as one stream, as before.
    many = b"QQ==" * (mime.MAX_BASE64_PIECES + 10)
    decoded = mime.decode_transfer(many, "base64")
    assert decoded.startswith(b"A" * mime.MAX_BASE64_PIECES) and len(decoded) < len(many)


def test_uuencoded_parts_are_decoded() -> None:
    """Content-Transfer-Encoding: x-uuencode (older clients; not RFC 2045): the part was read
    as its encoded form, a token in it lost."""
    data = bytes(range(256)) * 4 + b"> [ref:X]\r\n"
    lines = [binascii.b2a_uu(data[i : i + 45]) for i in range(0, len(data), 45)]
    uu = b"begin 644 reply.txt\n" + b"".join(lines) + b"`\nend\n"
    for label in ("x-uuencode", "uuencode", "x-uue"):
        assert mime.decode_transfer(uu, label) == data
    assert mime.decode_transfer(uu.replace(b"\n", b"\r\n"), "x-uuencode") == data
    assert mime.decode_transfer(b"Hello\n\n" + uu + b"-- \nsig\n", "x-uuencode") == data
    # Transport strips a line's trailing blanks, which are zeros; no "begin" line; a line that
    # does not decode is skipped.
    stripped = b"".join(line.rstrip(b"\n").rstrip(b" ") + b"\n" for line in lines)
    assert mime.decode_transfer(stripped, "x-uuencode") == data
    assert mime.decode_transfer(b"ab\n" + lines[0], "uue") == data[:45]
    # Never more bytes than the encoded form has: a line claims up to 63 bytes.
    assert len(mime.decode_transfer(b"_!\n" * 1000, "x-uuencode")) == 3000


def test_top_fields_reads_the_first_and_flags_duplicates() -> None:
    headers = (
        Header("Subject", "x"),
        Header("content-type", "text/html"),
        Header("Content-Transfer-Encoding", "base64"),
    )
    top = mime.top_fields(headers)
    assert (top.content_type, top.cte, top.disposition, top.ambiguous) == (
        "text/html", "base64", None, False,
    )
    assert mime.top_fields((*headers, Header("Content-Type", "text/plain"))).ambiguous


# --- splitting ----------------------------------------------------------------------------

MIXED = (
    b"This is a preamble.\r\n"
    b"--XYZ\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"first part\r\n"
    b"--XYZ   \r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment; filename=\"a.bin\"\r\n"
    b"\r\n"
    b"AAEC\r\n"
    b"--XYZ--\t\r\n"
    b"epilogue\r\n"
)


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"])
def test_multipart_offsets_cover_parts_exactly(newline: bytes) -> None:
    body = MIXED.replace(b"\r\n", newline)
    root, text, attachment = parts_of(body, 'multipart/mixed; boundary="XYZ"')
    assert root.kind == "multipart" and root.boundary == "XYZ" and root.defects == ()
    assert (root.start, root.body_start, root.end) == (0, 0, len(body))
    assert body_of(body, text) == b"first part"
    assert body[text.start : text.body_start].startswith(b"Content-Type: text/plain")
    assert text.charset == "us-ascii" and not text.is_attachment
    assert body_of(body, attachment) == b"AAEC"
    assert attachment.is_attachment and attachment.filename == "a.bin"
    assert attachment.cte == "base64"
    # Delimiter lines own the line break before them; transport padding is part of the line.
    spans = [body[a:b] for a, b in root.delimiters]
    assert spans == [
        b"\r\n--XYZ\r\n".replace(b"\r\n", newline),
        b"\r\n--XYZ   \r\n".replace(b"\r\n", newline),
        b"\r\n--XYZ--\t\r\n".replace(b"\r\n", newline),
    ]
    assert body[: root.delimiters[0][0]] == b"This is a preamble."
    assert body[root.delimiters[-1][1] :] == b"epilogue" + newline


def test_preamble_delimiters_parts_and_epilogue_tile_the_body() -> None:
    root = mime.parse(MIXED, 'multipart/mixed; boundary="XYZ"')
    for (_, delimiter_end), child, (next_start, _) in zip(
        root.delimiters, root.children, root.delimiters[1:], strict=False
    ):
        assert (child.start, child.end) == (delimiter_end, next_start)
    pieces = [(0, root.delimiters[0][0]), *root.delimiters, (root.delimiters[-1][1], len(MIXED))]
    pieces += [(c.start, c.end) for c in root.children]
    assert b"".join(MIXED[a:b] for a, b in sorted(pieces)) == MIXED


def test_boundary_at_the_very_start_means_an_empty_preamble() -> None:
    body = b"--b\nContent-Type: text/plain\n\nx\n--b--\n"
    root, part = parts_of(body, "multipart/mixed; boundary=b")
    assert root.delimiters[0] == (0, 4)
    assert body_of(body, part) == b"x"


def test_a_longer_boundary_sharing_a_prefix_is_not_a_delimiter() -> None:
    body = b"--b\n\nkeep\n--bb\nstill body\n--b--\n"
    _, part = parts_of(body, "multipart/mixed; boundary=b")
    assert body_of(body, part) == b"keep\n--bb\nstill body"


def test_a_delimiter_must_start_a_line() -> None:
    body = b"--b\n\ntext with --b inside\n--b--\n"
    _, part = parts_of(body, "multipart/mixed; boundary=b")
    assert body_of(body, part) == b"text with --b inside"


def test_trailing_garbage_on_the_line_makes_it_content() -> None:
    body = b"--b\n\nx\n--b garbage\ny\n--b--\n"
    root, part = parts_of(body, "multipart/mixed; boundary=b")
    assert body_of(body, part) == b"x\n--b garbage\ny"
    assert root.defects == ()


def test_nested_multiparts_each_split_on_their_own_boundary() -> None:
    body = (
        b"--outer\n"
        b"Content-Type: multipart/alternative; boundary=\"inner\"\n\n"
        b"--inner\nContent-Type: text/plain\n\nplain\n"
        b"--inner\nContent-Type: text/html\n\n<p>html</p>\n"
        b"--inner--\n"
        b"--outer\nContent-Type: image/png\nContent-Transfer-Encoding: base64\n\niVBO\n"
        b"--outer--\n"
    )
    parts = parts_of(body, "multipart/mixed; boundary=outer")
    kinds = [(p.mime_type, p.depth) for p in parts]
    assert kinds == [
        ("multipart/mixed", 0), ("multipart/alternative", 1), ("text/plain", 2),
        ("text/html", 2), ("image/png", 1),
    ]
    assert [body_of(body, p) for p in parts[2:]] == [b"plain", b"<p>html</p>", b"iVBO"]
    assert all(p.defects == () for p in parts)


def test_part_without_headers_starts_with_an_empty_line() -> None:
    body = b"--b\n\nno headers here\n--b--\n"
    _, part = parts_of(body, "multipart/mixed; boundary=b")
    assert part.headers == () and part.mime_type == "text/plain" and part.defects == ()
    assert part.start + 1 == part.body_start
    assert body_of(body, part) == b"no headers here"


def test_part_starting_with_body_text_is_flagged() -> None:
    body = b"--b\nno separator line\n--b--\n"
    _, part = parts_of(body, "multipart/mixed; boundary=b")
    assert part.body_start == part.start
    assert part.defects == ("missing-header-separator",)


def test_folded_part_headers_keep_their_raw_bytes() -> None:
    body = b"--b\r\nContent-Type: text/plain;\r\n charset=utf-8\r\nX-A: 1\r\n\r\nx\r\n--b--\r\n"
    _, part = parts_of(body, "multipart/mixed; boundary=b")
    assert [h.name for h in part.headers] == ["Content-Type", "X-A"]
    assert part.headers[0].raw == b"Content-Type: text/plain;\r\n charset=utf-8\r\n"
    assert part.charset == "utf-8"


def test_digest_children_default_to_message_rfc822() -> None:
    body = b"--d\n\nFrom: a@example.com\nSubject: s\n\nhello\n--d--\n"
    parts = parts_of(body, "multipart/digest; boundary=d")
    assert [p.mime_type for p in parts] == ["multipart/digest", "message/rfc822", "text/plain"]
    inner = parts[2]
    assert [h.name for h in inner.headers] == ["From", "Subject"]
    assert body_of(body, inner) == b"hello"


def test_embedded_message_is_opened_with_its_own_headers() -> None:
    body = (
        b"--m\nContent-Type: message/rfc822\n\n"
        b"Subject: inner\nContent-Type: multipart/mixed; boundary=i\n\n"
        b"--i\nContent-Type: text/html\n\n<b>x</b>\n--i--\n"
        b"--m--\n"
    )
    parts = parts_of(body, "multipart/mixed; boundary=m")
    assert [(p.kind, p.mime_type) for p in parts] == [
        ("multipart", "multipart/mixed"), ("message", "message/rfc822"),
        ("multipart", "multipart/mixed"), ("leaf", "text/html"),
    ]
    assert body_of(body, parts[3]) == b"<b>x</b>"


def test_encoded_embedded_message_stays_opaque() -> None:
    body = (b"--m\nContent-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n"
            b"U3ViamVjdDog\n--m--\n")
    parts = parts_of(body, "multipart/mixed; boundary=m")
    assert parts[1].kind == "opaque" and parts[1].defects == ("encoded-message",)


# --- malformed input ----------------------------------------------------------------------


def test_missing_closing_boundary_runs_to_the_end_and_is_flagged() -> None:
    body = b"--b\n\none\n--b\n\ntwo\n"
    root, first, second = parts_of(body, "multipart/mixed; boundary=b")
    assert root.defects == ("unclosed",)
    assert body_of(body, first) == b"one"
    assert body_of(body, second) == b"two\n"


def test_boundary_absent_from_the_body_is_opaque() -> None:
    body = b"just text, no parts\n"
    (root,) = parts_of(body, "multipart/mixed; boundary=zzz")
    assert root.kind == "opaque" and root.defects == ("boundary-absent",)
    assert (root.body_start, root.end) == (0, len(body))


def test_multipart_without_boundary_parameter_is_opaque() -> None:
    (root,) = parts_of(b"--x\n\ny\n--x--\n", "multipart/alternative")
    assert root.kind == "opaque" and root.defects == ("no-boundary",)


def test_encoded_multipart_is_split_but_flagged() -> None:
    root, _ = parts_of(b"--b\n\ny\n--b--\n", "multipart/mixed; boundary=b", "base64")
    assert root.defects == ("encoded-multipart",)


def test_duplicate_content_type_in_a_part_is_flagged() -> None:
    body = b"--b\nContent-Type: text/plain\nContent-Type: text/html\n\ny\n--b--\n"
    _, part = parts_of(body, "multipart/mixed; boundary=b")
    assert part.mime_type == "text/plain" and part.defects == ("duplicate-mime-field",)


def nested(levels: int) -> tuple[str, bytes]:
    body = b"leaf\n"
    for level in reversed(range(1, levels)):
        body = (b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (level - 1, level)
                + body + b"\n--b%d--\n" % (level - 1))
    return "multipart/mixed; boundary=b0", body


def test_depth_is_bounded_and_deeper_levels_stay_opaque() -> None:
    ctype, body = nested(80)
    parts = parts_of(body, ctype)
    assert max(p.depth for p in parts) == mime.MAX_DEPTH
    (deepest,) = [p for p in parts if p.depth == mime.MAX_DEPTH]
    assert deepest.kind == "opaque" and deepest.defects == ("too-deep",)


def test_part_count_is_bounded() -> None:
    body = b"".join(b"--b\n\n%d\n" % i for i in range(50)) + b"--b--\n"
    root = mime.parse(body, "multipart/mixed; boundary=b", max_parts=10)
    assert len(root.children) == 10
    assert root.defects == ("too-many-parts",)


def test_a_flood_of_delimiters_is_not_all_collected() -> None:
    body = b"--b\n" * 200_000
    root = mime.parse(body, "multipart/mixed; boundary=b")
    assert len(root.children) == mime.MAX_PARTS
    assert len(root.delimiters) == mime.MAX_PARTS + 1
    assert root.defects == ("too-many-parts",)


class CountingBytes(bytes):
    """A body that counts the Python-level `find` calls made on it (regex searches run in C)."""

    finds = 0

    def find(self, *args: object) -> int:
        self.finds += 1
        return super().find(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize("near_miss", [b"--bx", b"--b-x", b"--b x", b"--b--x", b"--b\rx",
                                       b"x--b", b"--bb--"],
                         ids=lambda line: line.decode().replace("\r", "CR"))
@pytest.mark.parametrize("newline", [b"\r\n", b"\n"], ids=["CRLF", "LF"])
def test_lines_that_only_start_like_a_delimiter_are_skipped_in_c(
    near_miss: bytes, newline: bytes
) -> None:
    """200,000 lines that start `--b` (or hold it) but are no delimiter line cost Python a few
    hundred steps, not one each (0.6 us a line: 1.2 s for 10 MB), and the delimiter lines after
    them are found as before: padded, closing, at the end of the body without a line break."""
    lines = 200_000
    body = CountingBytes(
        b"--b" + newline + newline + (near_miss + newline) * lines
        + b"--b \t" + newline + newline + b"second" + newline + b"--b--  \r"
    )
    root = mime.parse(body, "multipart/mixed; boundary=b")
    assert body.finds < 1_000
    first, second = root.children
    assert body_of(body, first) == (near_miss + newline) * (lines - 1) + near_miss
    assert body_of(body, second) == b"second"
    assert [body[a:b] for a, b in root.delimiters] == [
        b"--b" + newline, newline + b"--b \t" + newline, newline + b"--b--  \r"]
    assert root.defects == ()


def test_a_nested_boundary_the_outer_one_is_a_prefix_of() -> None:
    """The inner delimiter lines (`--bx`) are lines the outer search (`--b`) skips."""
    inner = b"".join(b"--bx\r\n\r\npart %d\r\n" % n for n in range(600)) + b"--bx--\r\n"
    body = (b"--b\r\nContent-Type: multipart/mixed; boundary=bx\r\n\r\n" + inner
            + b"--b\r\n\r\nlast\r\n--b--\r\n")
    root = mime.parse(body, "multipart/mixed; boundary=b")
    nested, last = root.children
    assert root.defects == () and nested.defects == ()
    assert [body_of(body, p) for p in nested.children] == [b"part %d" % n for n in range(600)]
    assert body_of(body, last) == b"last"


def test_mmap_of_a_spooled_body_parses_like_bytes(tmp_path: Path) -> None:
    path = tmp_path / "body"
    path.write_bytes(MIXED)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        from_map = mime.parse(mapped, 'multipart/mixed; boundary="XYZ"')
        assert from_map == mime.parse(MIXED, 'multipart/mixed; boundary="XYZ"')
        assert from_map.children[0].body(mapped) == b"first part"


# --- fuzzing: any input parses, and every span stays inside its parent ---------------------


def assert_well_formed(part: Part, lo: int, hi: int) -> None:
    assert lo <= part.start <= part.body_start <= part.end <= hi
    cursor = part.body_start
    for child in part.children:
        assert child.start >= cursor
        assert_well_formed(child, part.body_start, part.end)
        cursor = child.end
    for start, end in part.delimiters:
        assert part.body_start <= start <= end <= part.end


LINES = st.sampled_from([
    b"--b", b"--b--", b"--b  ", b"--bb", b"--c", b"--c--", b"", b"text", b"=3D",
    b"Content-Type: multipart/mixed; boundary=c", b"Content-Type: multipart/alternative",
    b"Content-Type: message/rfc822", b"Content-Type: text/html; charset=utf-8",
    b"Content-Transfer-Encoding: base64", b" folded", b"X:", b"\xff\xfe",
])


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(LINES, max_size=40),
    newline=st.sampled_from([b"\r\n", b"\n", b"\r"]),
    ctype=st.sampled_from(["multipart/mixed; boundary=b", "message/rfc822", "multipart/digest; "
                           "boundary=c", "text/plain", None]),
)
def test_fuzz_structured_lines(lines: list[bytes], newline: bytes, ctype: str | None) -> None:
    body = newline.join(lines)
    root = mime.parse(body, ctype, max_depth=6, max_parts=30)
    assert_well_formed(root, 0, len(body))


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(body=st.binary(max_size=2000), boundary=st.text(max_size=12))
def test_fuzz_random_bytes(body: bytes, boundary: str) -> None:
    root = mime.parse(body, f'multipart/mixed; boundary="{boundary}"')
    assert_well_formed(root, 0, len(body))


@pytest.mark.parametrize(("label", "codec"), [
    ("windows-874", "cp874"), ("Windows-31J", "cp932"), ("x-sjis", "cp932"),
    ("x-mac-roman", "mac-roman"), ("iso-8859-8-i", "iso8859-8"), ("x-euc-jp", "euc_jp"),
    # SendBlaster's newsletters say x-mac-cyrillic; Windows calls KOI8-U koi8-ru; Outlook
    # Express wrote RFC 1642's unicode-1-1-utf-7.
    ("x-mac-cyrillic", "mac-cyrillic"), ("x-mac-ukrainian", "mac-cyrillic"),
    ("koi8-ru", "koi8-u"), ("x-cp1251", "cp1251"), ("iso88592", "iso8859-2"),
    ("unicode-1-1-utf-8", "utf-8"), ("unicode-1-1-utf-7", "utf-7"), ("logical", "iso8859-8"),
])
def test_charset_labels_python_lacks_map_to_its_codecs(label: str, codec: str) -> None:
    assert mime.codec_for(label) == codec


@pytest.mark.parametrize(("label", "codec"), [
    ("EUC-KR", "cp949"), ("ks_c_5601-1987", "cp949"), ("KS_C_5601-1989", "cp949"),
    ("Shift_JIS", "cp932"), ("sjis", "cp932"), ("gb2312", "gb18030"), ("GB_2312-80", "gb18030"),
    ("euc-cn", "gb18030"), ("gbk", "gb18030"), ("big5", "big5hkscs"), ("cn-big5", "big5hkscs"),
    ("ISO-8859-1", "windows-1252-whatwg"), ("latin1", "windows-1252-whatwg"),
    ("cp1252", "windows-1252-whatwg"),
])
def test_narrow_charsets_are_read_as_the_superset_clients_read(label: str, codec: str) -> None:
    """WHATWG Encoding Standard: Outlook writes cp949 as ks_c_5601-1987, cp932 as Shift_JIS."""
    assert mime.codec_for(label) == codec


def registry_names() -> list[str]:
    """Every name Python's codec registry answers to: its aliases, its codec modules (the
    bytes-to-bytes `hex`, `zlib`, `base64`, `uu`, `bz2`, `quopri`, the text-to-text `rot13`
    among them), and labels a sender may write for them."""
    names = set(encodings.aliases.aliases) | set(encodings.aliases.aliases.values())
    names |= {module.name for module in pkgutil.iter_modules(encodings.__path__)}
    return sorted(names | {"rot13", "mbcs", "oem", "undefined", "unicode_escape", "idna"})


SAMPLES = (bytes(range(256)), b"+AGEA-+", b"\x1b$B\x1b(J", b"xn--\xff", b"\xfe\xff\x00", b"=E9")


def test_a_label_of_every_codec_python_knows_is_read_as_text_or_refused() -> None:
    """A charset label comes from the message: whichever codec it names, reading gives text or
    the label is refused, never an exception or bytes (`hex` or `zlib` decode to bytes,
    `idna` or `punycode` raise on what is no domain)."""
    names = registry_names()
    assert len(names) > 300 and "hex" in names and "rot13" in names
    for label in (variant for name in names for variant in (name, name.upper().replace("_", "-"))):
        codec = mime.codec_for(label)
        if codec is not None:
            assert codecs.lookup(codec)._is_text_encoding  # type: ignore[attr-defined]
            assert all(isinstance(data.decode(codec, "replace"), str) for data in SAMPLES)
        assert all(isinstance(decode_text(data, label), str) for data in SAMPLES)
        word = f"=?{label}?b?{base64.b64encode(SAMPLES[0]).decode()}?= =?{label}?q?caf=E9?="
        assert isinstance(decode_subject(word, read_unknown=True), str)
        assert mime.parse_field(f"text/plain; title*={label}''caf%E9").param("title") is not None
