"""The message as the core sees it, and a raw-bytes reader/writer for `casethread filter`.

Header values are `str` decoded as UTF-8 with surrogateescape (pymilter's default), so any 8-bit
byte survives a round trip. Values keep their folding line breaks exactly as received; use
`unfold()` before interpreting one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import field
from itertools import repeat
from mmap import mmap

from .frozen import frozen
from .lazy import lazy

# A body in memory, or a spooled one mapped from its file.
Data = bytes | mmap

_FIELD_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext: printable ASCII except ':'


def unfold(value: str) -> str:
    """RFC 5322 unfolding; bare line breaks (bad input) are dropped too: every LF and the CR
    right before one go. Not a regex substitution, which made a match object of each fold
    (a 120 KB field folded every 4 characters: 7.5 ms that way, 0.5 ms so)."""
    return value.replace("\r\n", "").replace("\n", "") if "\n" in value else value


_COMMENT = re.compile(r"\([^()]*\)")
# Nested comments are rare; a bound keeps hostile input (((((...))))) linear.
_MAX_COMMENT_PASSES = 8


def without_comments(text: str, pattern: re.Pattern[str] = _COMMENT, repl: str = "") -> str:
    """`text` without its RFC 5322 comments, nested ones too (innermost first), each
    replaced by `repl`. `pattern` may keep other parts whole: it matches a comment, or what
    its `repl` puts back. Unlike RFC 5322, parentheses in a quoted string or after a
    backslash count too: the keywords, paths and IDs read so hold none that matter."""
    if "(" not in text:
        return text
    for _ in range(_MAX_COMMENT_PASSES):
        stripped = pattern.sub(repl, text)
        if stripped == text:
            break
        text = stripped
    return text


def decode_bytes(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def encode_str(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@frozen
class Header:
    name: str
    value: str
    # The original bytes of the field (name, colon, value, line endings) when read from a file,
    # so `filter` reproduces untouched headers byte for byte.
    raw: bytes | None = field(default=None, compare=False, repr=False)


@frozen
class Envelope:
    """SMTP envelope and MTA macros: what classification needs beyond the headers."""

    mail_from: str = ""
    rcpts: tuple[str, ...] = ()
    client_address: str | None = None
    auth_user: str | None = None
    daemon_name: str | None = None
    queue_id: str = ""


@frozen
class Message:
    envelope: Envelope
    headers: tuple[Header, ...]
    body: Data = b""
    # The body's line ending: CRLF as SMTP carries it; a message file may use LF.
    newline: bytes = b"\r\n"

    @lazy
    def _by_name(self) -> dict[str, list[str]]:
        """Values by lower-cased field name, in order; built on first use, as one message's
        fields are looked up a few dozen times."""
        index: dict[str, list[str]] = {}
        for h in self.headers:
            index.setdefault(h.name.lower(), []).append(h.value)
        return index

    def get(self, name: str) -> str | None:
        """The first field of that name (case-insensitive), or None."""
        values = self._by_name.get(name.lower())
        return values[0] if values else None

    def get_filled(self, name: str) -> str | None:
        """The first field of that name whose value is more than blanks, or None. Sendmail
        hands milters no blank Message-ID, Date or From field (it writes its own there);
        Postfix and `filter` do: passing over them decides alike behind both."""
        # A loop, not next() of a generator: Python 3.11 closes a generator left unfinished
        # by raising GeneratorExit in it when it is freed.
        for value in self._by_name.get(name.lower(), ()):
            if value.strip(" \t\r\n"):
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        values = self._by_name.get(name.lower())
        return list(values) if values else []

    def present(self, names: AbstractSet[str]) -> dict[str, Sequence[str]]:
        """The values of those fields (lower-cased names) the message has, by name: one pass
        for a caller that asks about many names, most of them absent. It walks the smaller
        side: an ordinary reply has fewer fields than the ~30 names the auto-reply signals ask
        about (`dict.keys() & frozenset` walks every name of the frozenset)."""
        index = self._by_name
        # Loops, not comprehensions (each a function call on Python 3.11).
        found: dict[str, Sequence[str]] = {}
        if len(index) < len(names):
            for name, values in index.items():
                if name in names:
                    found[name] = values
        else:
            for name in index.keys() & names:
                found[name] = index[name]
        return found

    def with_body(self, envelope: Envelope, body: Data) -> Message:
        """The message at its end (the milter's end of message): `envelope` as it is then,
        `body`, the same header fields, and what was worked out of them at their end (the
        index by name, a few dozen fields' worth of work), not worked out again."""
        msg = Message(envelope, self.headers, body, self.newline)
        for name in _HEADER_WORK:
            if name in self.__dict__:
                msg.__dict__[name] = self.__dict__[name]
        return msg

    def has_prefix(self, prefix: str) -> bool:
        """Whether any field name starts with `prefix` (lower case). Asked of every message,
        twice (refusal, forged fields): one substring search in the names, each after a line
        break, tells the mail that has none (each `str.startswith` call costs as much as the
        search), and only a hit is checked name by name (a name may hold a line break)."""
        names = self._by_name
        if "\n" + prefix not in "\n" + "\n".join(names):
            return False  # most mail
        return any(map(str.startswith, names, repeat(prefix)))


# What a Message keeps of its header fields (`lazy`: in its __dict__ once worked out).
_HEADER_WORK = ("_by_name",)


def _lines(raw: bytes) -> Iterator[tuple[int, bytes]]:
    """(offset, line) pairs split on LF only, as Postfix does; lazy, so a body is never split."""
    pos, end = 0, len(raw)
    while pos < end:
        nl = raw.find(b"\n", pos)
        stop = end if nl < 0 else nl + 1
        yield pos, raw[pos:stop]
        pos = stop


def _content(line: bytes) -> bytes:
    """The line without its LF and the one CR before it (a bare CR elsewhere is data)."""
    if line.endswith(b"\n"):
        line = line[:-1]
    return line[:-1] if line.endswith(b"\r") else line


# What Postfix makes of a mailbox's "From sender date" line at the top of a message.
MAILBOX_LINE = "X-Mailbox-Line"


def parse_raw(raw: bytes, postmarks: bool = False) -> tuple[tuple[Header, ...], bytes]:
    """Split a message file into header fields and body, as an MTA would.

    The header section ends at the first empty line, or at the first line that is neither a
    field nor a continuation (that line then starts the body, like Postfix does). With
    `postmarks`, "From " lines before the first field (a message saved from a mailbox, a
    `git format-patch` file) become `X-Mailbox-Line` fields, as Postfix's cleanup makes them;
    otherwise such a line starts the body.
    """
    # Per field: name, value parts, raw parts, joined once at the end so folding stays linear.
    fields: list[tuple[str, list[bytes], list[bytes]]] = []
    body = b""
    for pos, line in _lines(raw):
        content = _content(line)
        if not content:
            body = raw[pos + len(line) :]
            break
        if postmarks and content.startswith(b"From ") and all(
                name == MAILBOX_LINE for name, _, _ in fields):
            fields.append((MAILBOX_LINE, [content], [f"{MAILBOX_LINE}: ".encode() + line]))
            continue
        if line[:1] in (b" ", b"\t") and fields:
            _, values, raws = fields[-1]
            values.append(_line_break(raws[-1]) + content)
            raws.append(line)
            continue
        name, colon, value = content.partition(b":")
        name = name.rstrip(b" \t")  # obs-fields allow WSP before the colon
        if not colon or not _FIELD_NAME.fullmatch(decode_bytes(name)):
            body = raw[pos:]
            break
        fields.append((decode_bytes(name), [value.lstrip(b" \t")], [line]))
    headers = tuple(
        Header(name, decode_bytes(b"".join(values)), b"".join(raws))
        for name, values, raws in fields
    )
    return headers, body


def _line_break(raw_so_far: bytes) -> bytes:
    return b"\r\n" if raw_so_far.endswith(b"\r\n") else b"\n"


def serialize(headers: tuple[Header, ...], body: bytes, newline: bytes = b"\n") -> bytes:
    """Headers then an empty line then the body; untouched headers keep their original bytes."""
    out = bytearray()
    for h in headers:
        if h.raw is not None:
            out += h.raw if h.raw.endswith(b"\n") else h.raw + newline
        else:
            # Values we generate fold with a bare "\n" (as milters send them to the MTA).
            out += encode_str(f"{h.name}: {h.value}").replace(b"\n", newline) + newline
    out += newline
    out += body
    return bytes(out)


def newline_of(raw: bytes) -> bytes:
    """The line ending a file uses, judged by its first line."""
    first = raw.find(b"\n")
    return b"\r\n" if first > 0 and raw[first - 1 : first] == b"\r" else b"\n"
