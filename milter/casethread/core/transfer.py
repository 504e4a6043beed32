"""Transfer encodings of a part being stamped (RFC 2045 §6): strict decoding, and insertion
of the stamp at a decoded offset that leaves every other encoded byte as it was (`stamp`
checks the result by decoding it again).
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterator
from typing import Protocol

from . import mime

_MAX_LINE = 998  # RFC 5322 line limit, without CRLF, for 7bit/8bit
_QP_LINE = 76


class Unusable(Exception):
    """This part cannot be changed safely; the message says why."""


class Encoding(Protocol):
    def decode(self, raw: bytes) -> bytes:
        """Strict decoding; raises Unusable on anything it could not re-create."""
        ...

    def insert(
        self, raw: bytes, at: int, added: bytes, newline: bytes
    ) -> tuple[int, int, bytes, bytes]:
        """Insert `added` at decoded offset `at`: (start, end, new bytes, decoded insertion)."""
        ...


def encoding_for(cte: str) -> Encoding | None:
    """The encoding named by a (lower-cased) Content-Transfer-Encoding; None for one unknown."""
    if cte in mime.IDENTITY_ENCODINGS:
        return Identity(seven_bit=cte == "7bit")
    if cte == "quoted-printable":
        return QuotedPrintable()
    if cte == "base64":
        return Base64()
    return None


class Identity:
    """7bit / 8bit / binary: the bytes on the wire are the content."""

    def __init__(self, seven_bit: bool) -> None:
        self.seven_bit = seven_bit

    def decode(self, raw: bytes) -> bytes:
        return raw

    def insert(
        self, raw: bytes, at: int, added: bytes, newline: bytes
    ) -> tuple[int, int, bytes, bytes]:
        if self.seven_bit and not added.isascii():
            raise Unusable("insertion is not 7bit")
        # Lines stay within the SMTP limit (or as long as they already were): else the
        # insertion goes on a line of its own. The usual line is short enough to take all of
        # the insertion: no line of it once joined can be longer than the two together.
        start, end = _line_bounds(raw, at)
        if end - start + len(added) <= _MAX_LINE:
            return at, at, added, added
        before, after = raw[start:at], raw[at:end]
        limit = max(_MAX_LINE, _longest_line(before + after))
        if _longest_line(before + added + after) > limit:
            added = newline + added.strip(b"\r\n") + newline
            if _longest_line(before + added + after) > limit:
                raise Unusable("a line would exceed 998 octets")
        return at, at, added, added


def _line_bounds(raw: bytes, at: int) -> tuple[int, int]:
    """Where the line holding `at` starts, and where its line feed (or `raw`) ends it."""
    line_end = raw.find(b"\n", at)
    return raw.rfind(b"\n", 0, at) + 1, len(raw) if line_end < 0 else line_end


def _longest_line(joined: bytes) -> int:
    """The longest line of `joined` (the line around the insertion point, with or without the
    insertion), its CR not counted."""
    return max(len(line.rstrip(b"\r")) for line in joined.split(b"\n"))


_QP_ESCAPE = re.compile(rb"=[0-9A-Fa-f]{2}")
# "=" then a CR that ends no line: binascii drops what follows it, so the text we would read
# is not the part's.
_QP_BARE_CR = re.compile(rb"=[ \t]*+\r(?!\n)")
# What binascii (`mime.decode_qp`) reads from an "=", left to right: "=XX" one byte, "=="
# one "=" (its "broken python qp" case: a URL's base64 padding written unescaped,
# `id=YWJjZA==`), any other "=" itself, or a soft break when it ends the line.
_QP_UNIT = re.compile(rb"=(?:=|[0-9A-Fa-f]{2})?")


class QuotedPrintable:
    """Quoted-printable: the original lines are kept; the insertion gets lines of its own,
    joined to its neighbours by soft line breaks, so the decoded text changes only by it."""

    def decode(self, raw: bytes) -> bytes:
        if b"\r" in raw and _QP_BARE_CR.search(raw):
            raise Unusable("invalid quoted-printable")
        return mime.decode_qp(raw)  # an invalid "=" as it is, as most readers show it

    def insert(
        self, raw: bytes, at: int, added: bytes, newline: bytes
    ) -> tuple[int, int, bytes, bytes]:
        encoded = qp_encode(added, newline)
        found = _qp_line_at(raw, at)
        if found is None:  # at the very end, after the last line
            separator = newline if raw and not raw.endswith(b"\n") else b""
            return len(raw), len(raw), separator + encoded, added
        line_start, content, offset = found
        at_content = _qp_encoded_offset(content, offset)
        if b"==" in content or b"=" in content[max(0, at_content - 2) : at_content]:
            # A stray "=" right before the cut reads the two bytes after it, which the
            # insertion changes (`x=` and our soft break make `x==`), and readers disagree on a
            # stray "==" (binascii reads one "="). An "=XX" escape is never cut, and a stray
            # "=" further up reads the bytes it read before.
            raise Unusable("invalid quoted-printable")
        cut = line_start + at_content
        glue_after = b"" if added.endswith(b"\n") or cut == len(raw) else b"=" + newline
        head = raw[line_start:cut]
        if not head:
            return cut, cut, encoded + glue_after, added
        if len(head) + 1 <= _QP_LINE:
            return cut, cut, b"=" + newline + encoded + glue_after, added
        wrapped = _qp_wrap_head(head, newline) + b"=" + newline
        return line_start, cut, wrapped + encoded + glue_after, added


def _qp_line_at(raw: bytes, at: int) -> tuple[int, bytes, int] | None:
    """The encoded line holding decoded offset `at`: (its offset, its content without a soft
    break or line break, the decoded offset within it); None when `at` is after the last line.

    A cut at a line's start is preferred to one at the end of a soft-broken line; a cut inside
    a hard line break cannot be made. An "=XX" escape is three characters and one byte, an "="
    that ends a line, blanks after it or not, is a soft break, a stray "==" one "=", and any
    other "=" one character (`_qp_line`: `decode` reads it so).
    """
    position = pos = 0
    while pos < len(raw):
        newline_at = raw.find(b"\n", pos)
        end = len(raw) if newline_at < 0 else newline_at + 1
        body = raw[pos:end].rstrip(b"\r\n")
        content, soft, length = _qp_line(body)
        if at < position + length or (at == position + length and not soft):
            return pos, content, at - position
        position += length + (0 if soft else end - pos - len(body))
        if at < position:
            raise Unusable("insertion point inside a line break")
        pos = end
    return None


def _qp_line(body: bytes) -> tuple[bytes, bool, int]:
    """An encoded line without its line break: its content (without a soft break), whether it
    ends in one, and the content's decoded length, as `mime.decode_qp` reads it."""
    if b"=" not in body:
        return body, False, len(body)
    stripped = body.rstrip(b" \t")
    units = list(_QP_UNIT.finditer(stripped))
    soft = False
    if units[-1].end() == len(stripped) and stripped.endswith(b"="):
        # Blanks after a line's last "=" are transport's (RFC 2045 6.7 (3)): the decoder
        # drops them, also after "==", whose second "=" is no soft break.
        soft = units[-1].group() == b"="
        if soft:
            units.pop()
        content = stripped[: len(stripped) - soft]
    else:
        content = body
    return content, soft, len(content) - sum(len(u.group()) - 1 for u in units)


def _qp_encoded_offset(content: bytes, decoded_offset: int) -> int:
    pos = 0
    for _ in range(decoded_offset):
        pos += 3 if _QP_ESCAPE.match(content, pos) else 1
    return pos


def _qp_wrap_head(head: bytes, newline: bytes) -> bytes:
    """The start of a line, followed by a soft break, fitted into 76 columns.

    Only soft breaks are added, between encoded characters, so it decodes as before.
    """
    pieces = []
    while len(head) + 1 > _QP_LINE:
        cut = _QP_LINE - 1
        if b"=" in head[cut - 2 : cut]:  # do not split an "=XX" escape
            cut = head.rindex(b"=", cut - 2, cut)
        pieces.append(head[:cut])
        head = head[cut:]
    pieces.append(head)
    return (b"=" + newline).join(pieces)


def qp_encode(data: bytes, newline: bytes) -> bytes:
    """Quoted-printable for text: lines at most 76 columns, soft breaks, `newline` as line break.

    Line breaks in `data` (LF or CRLF) become hard line breaks; the result ends with a line
    break only when `data` does.
    """
    lines = data.split(b"\n")
    out = [_qp_encode_line(line.removesuffix(b"\r"), newline) for line in lines]
    return newline.join(out)


def _qp_encode_line(line: bytes, newline: bytes) -> bytes:
    tokens = [_qp_token(byte) for byte in line]
    if tokens and tokens[-1] in (b" ", b"\t"):  # trailing white space would be lost
        tokens[-1] = b"=%02X" % line[-1]
    out: list[bytes] = []
    current = b""
    for token in tokens:
        if len(current) + len(token) > _QP_LINE - 1:
            out.append(current + b"=")
            current = b""
        current += token
    out.append(current)
    return newline.join(out)


def _qp_token(byte: int) -> bytes:
    if (33 <= byte <= 126 and byte != 61) or byte in (32, 9):
        return bytes((byte,))
    return b"=%02X" % byte


class Base64:
    """Base64: original lines are kept up to the line holding the insertion point; from there
    the content is re-encoded in lines as wide as the original's (76 when unsure)."""

    def decode(self, raw: bytes) -> bytes:
        try:
            joined = raw.replace(b"\r\n", b"").replace(b"\n", b"")
            return binascii.a2b_base64(joined, strict_mode=True)
        except binascii.Error:
            raise Unusable("invalid base64") from None

    def insert(
        self, raw: bytes, at: int, added: bytes, newline: bytes
    ) -> tuple[int, int, bytes, bytes]:
        decoded = self.decode(raw)
        content_end = len(raw.rstrip(b"\r\n"))  # trailing line breaks stay as they are
        width = _b64_width(raw)
        kept = 0  # decoded length of the lines kept as they are
        for start, text in _lines(raw, content_end):
            if len(text) % 4 or text.endswith(b"=") or kept + len(text) // 4 * 3 > at:
                encoded = b64_encode(decoded[kept:at] + added + decoded[at:], width, newline)
                return start, content_end, encoded, added
            kept += len(text) // 4 * 3
        # Every line is kept: the insertion is at the end, on lines of its own.
        separator = newline if content_end else b""
        return content_end, content_end, separator + b64_encode(added, width, newline), added


def _lines(raw: bytes, end: int) -> Iterator[tuple[int, bytes]]:
    """(offset, text without its line break) of each line in raw[:end]."""
    pos = 0
    while pos < end:
        newline_at = raw.find(b"\n", pos, end)
        line_end = end if newline_at < 0 else newline_at + 1
        yield pos, raw[pos:line_end].rstrip(b"\r\n")
        pos = line_end


def _b64_width(raw: bytes) -> int:
    """The width of the first line, when there is more than one and it is a sane width."""
    first = raw.find(b"\n")
    width = len(raw[:first].rstrip(b"\r")) if 0 <= first < len(raw.rstrip(b"\r\n")) else 76
    return width if 4 <= width <= 76 and width % 4 == 0 else 76


def b64_encode(data: bytes, width: int, newline: bytes) -> bytes:
    """Base64 in lines of `width` columns (a multiple of 4), no line break after the last."""
    encoded = binascii.b2a_base64(data, newline=False)
    return newline.join(encoded[i : i + width] for i in range(0, len(encoded), width))
