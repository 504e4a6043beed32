"""The message as the core sees it, and a raw-bytes reader/writer for `casethread filter`.

Header values are `str` decoded as UTF-8 with surrogateescape (pymilter's default), so any 8-bit
byte survives a round trip. Values keep their folding line breaks exactly as received; use
`unfold()` before interpreting one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_FOLD = re.compile(r"\r?\n(?=[ \t])|\r?\n")
_FIELD_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext: printable ASCII except ':'


def unfold(value: str) -> str:
    """RFC 5322 unfolding; bare line breaks (bad input) are dropped too."""
    return _FOLD.sub("", value)


def decode_bytes(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def encode_str(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Header:
    name: str
    value: str
    # The original bytes of the field (name, colon, value, line endings) when read from a file,
    # so `filter` reproduces untouched headers byte for byte.
    raw: bytes | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Envelope:
    """SMTP envelope and MTA macros: what classification needs beyond the headers."""

    mail_from: str = ""
    rcpts: tuple[str, ...] = ()
    client_address: str | None = None
    auth_user: str | None = None
    daemon_name: str | None = None
    queue_id: str = ""


@dataclass(frozen=True)
class Message:
    envelope: Envelope
    headers: tuple[Header, ...]
    body: bytes = b""

    def get(self, name: str) -> str | None:
        """The first field of that name (case-insensitive), or None."""
        wanted = name.lower()
        for h in self.headers:
            if h.name.lower() == wanted:
                return h.value
        return None

    def get_all(self, name: str) -> list[str]:
        wanted = name.lower()
        return [h.value for h in self.headers if h.name.lower() == wanted]


def parse_raw(raw: bytes) -> tuple[tuple[Header, ...], bytes]:
    """Split a message file into header fields and body, as an MTA would.

    The header section ends at the first empty line, or at the first line that is neither a
    field nor a continuation (that line then starts the body, like Postfix does).
    """
    headers: list[Header] = []
    lines = raw.splitlines(keepends=True)
    pos = 0
    for i, line in enumerate(lines):
        stripped = line.rstrip(b"\r\n")
        if not stripped:
            return tuple(headers), raw[pos + len(line) :]
        if line[:1] in (b" ", b"\t") and headers:
            last = headers[-1]
            assert last.raw is not None
            headers[-1] = Header(
                last.name, last.value + decode_bytes(_line_break(last.raw) + stripped),
                last.raw + line,
            )
        else:
            name, colon, value = stripped.partition(b":")
            name = name.rstrip(b" \t")  # obs-fields allow WSP before the colon
            if not colon or not _FIELD_NAME.fullmatch(decode_bytes(name)):
                return tuple(headers), b"".join(lines[i:])
            headers.append(Header(decode_bytes(name), decode_bytes(value.lstrip(b" \t")), line))
        pos += len(line)
    return tuple(headers), b""


def _line_break(raw_so_far: bytes) -> bytes:
    return b"\r\n" if raw_so_far.endswith(b"\r\n") else b"\n"


def serialize(headers: tuple[Header, ...], body: bytes, newline: bytes = b"\n") -> bytes:
    """Headers then an empty line then the body; untouched headers keep their original bytes."""
    out = bytearray()
    for h in headers:
        if h.raw is not None:
            out += h.raw if h.raw.endswith(b"\n") else h.raw + newline
        else:
            out += encode_str(f"{h.name}: {h.value}") + newline
    out += newline
    out += body
    return bytes(out)


def newline_of(raw: bytes) -> bytes:
    """The line ending a file uses, judged by its first line."""
    first = raw.find(b"\n")
    return b"\r\n" if first > 0 and raw[first - 1 : first] == b"\r" else b"\n"
