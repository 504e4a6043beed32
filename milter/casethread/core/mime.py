"""A byte-exact, boundary-aware MIME splitter (RFC 2045/2046), plus the field parsers it needs.

`parse()` maps a message body to a tree of `Part`s that are only offsets into the body: nothing
is copied or re-serialised, so a caller can change one part and leave every other byte as it
was. Malformed input never raises; the affected multipart becomes "opaque" and the tree records
a defect, so a cautious caller (stamping) can refuse to touch the body while a best-effort caller
(token scanning) still reads what it can.

The body may be `bytes` or an `mmap` of a spooled body: only `find`, regex search, indexing and
slicing are used, and only small pieces (header sections) are copied.
"""

from __future__ import annotations

import binascii
import codecs
import encodings.cp1252
import functools
import itertools
import re
from collections.abc import Iterable, Iterator
from typing import Any, Literal, NamedTuple, cast
from urllib.parse import unquote_to_bytes

from .frozen import frozen
from .message import Data, Header, decode_bytes, encode_str, unfold

MAX_DEPTH = 50
MAX_PARTS = 1000
# One part's header section; a longer one is treated as body (and flagged).
MAX_HEADER_BYTES = 256 * 1024

IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary"})
# The defect of a part whose header section is not ended by an empty line: readers agree it
# has an empty body, so it is no malformation that puts its neighbours in doubt.
NO_BODY = "no-body"
EMBEDDED_MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})
# windows-1252 as WHATWG defines it, which is how every client reads iso-8859-1 and latin1 text
# (“smart quotes”, € from Windows mail so labelled): cp1252, with the five bytes it leaves
# undefined (0x81 0x8D 0x8F 0x90 0x9D) read as latin-1 reads them, so every byte decodes and
# encodes back to itself. Registered as a codec: callers decode by the name `codec_for` gives.
_WINDOWS_1252 = "windows-1252-whatwg"
_WINDOWS_1252_TABLE = "".join(chr(byte) if char == "\ufffe" else char
                              for byte, char in enumerate(encodings.cp1252.decoding_table))
_WINDOWS_1252_ENCODING = codecs.charmap_build(_WINDOWS_1252_TABLE)


def _encode_1252(text: str, errors: str = "strict") -> tuple[bytes, int]:
    return codecs.charmap_encode(text, errors, _WINDOWS_1252_ENCODING)


def _decode_1252(data: bytes, errors: str = "strict") -> tuple[str, int]:
    return codecs.charmap_decode(data, errors, _WINDOWS_1252_TABLE)


def _windows_1252(name: str) -> codecs.CodecInfo | None:
    if name != _WINDOWS_1252.replace("-", "_"):  # lookup passes the name so normalised
        return None
    # typeshed asks for any buffer (`collections.abc.Buffer`, Python 3.12): mail gives bytes.
    return codecs.CodecInfo(_encode_1252, cast(Any, _decode_1252), name=_WINDOWS_1252)


codecs.register(_windows_1252)

# The charset table, for bodies, subjects and parameters alike. First the labels mail carries
# that Python does not know, for the charsets it does (every such label of WHATWG Encoding
# Standard's table but the UTF-16 ones, which `UTF16_LABELS` reads).
_CHARSET_ALIASES = {
    "windows-874": "cp874", "dos-874": "cp874", "x-mac-roman": "mac_roman",
    "csmacintosh": "mac_roman", "iso-8859-8-i": "iso8859_8",
    "x-sjis": "cp932", "windows-31j": "cp932", "x-euc-jp": "euc_jp",
    "cseucpkdfmtjapanese": "euc_jp",
    "gb_2312-80": "gb2312", "gb_2312": "gb2312", "csgb2312": "gb2312", "x-gbk": "gbk",
    "ks_c_5601-1989": "cp949", "ksc_5601": "cp949", "windows-949": "cp949",
    "csksc56011987": "cp949", "iso-ir-149": "cp949", "cseuckr": "cp949",
    "cn-big5": "big5", "x-x-big5": "big5",
    "x-mac-cyrillic": "mac_cyrillic", "x-mac-ukrainian": "mac_cyrillic", "mac": "mac_roman",
    "koi": "koi8_r", "koi8": "koi8_r", "koi8-ru": "koi8_u",
    "x-cp1250": "cp1250", "x-cp1251": "cp1251", "x-cp1252": "cp1252", "x-cp1253": "cp1253",
    "x-cp1254": "cp1254", "x-cp1255": "cp1255", "x-cp1256": "cp1256", "x-cp1257": "cp1257",
    "x-cp1258": "cp1258",
    "iso88591": "latin_1", "iso88592": "iso8859_2", "iso88593": "iso8859_3",
    "iso88594": "iso8859_4", "iso88595": "iso8859_5", "iso88596": "iso8859_6",
    "iso88597": "iso8859_7", "iso88598": "iso8859_8", "iso88599": "iso8859_9",
    "iso885910": "iso8859_10", "iso885911": "iso8859_11", "iso885913": "iso8859_13",
    "iso885914": "iso8859_14", "iso885915": "iso8859_15", "csisolatin9": "iso8859_15",
    "iso-8859-6-e": "iso8859_6", "iso-8859-6-i": "iso8859_6", "csiso88596e": "iso8859_6",
    "csiso88596i": "iso8859_6", "iso-8859-8-e": "iso8859_8", "csiso88598e": "iso8859_8",
    "csiso88598i": "iso8859_8", "visual": "iso8859_8", "logical": "iso8859_8",
    "sun_eu_greek": "iso8859_7",
    "unicode-1-1-utf-8": "utf_8", "unicode11utf8": "utf_8", "unicode20utf8": "utf_8",
    "x-unicode20utf8": "utf_8",
    # Not WHATWG's (browsers read no UTF-7), but UTF-7's name in RFC 1642, which Outlook
    # Express wrote on its mail.
    "unicode-1-1-utf-7": "utf_7",
}
# Then the narrow charsets every client reads as their superset (WHATWG): Outlook labels cp949
# text `ks_c_5601-1987` and cp932 text `shift_jis`. Keyed by Python's codec name, so every label
# of one charset goes the same way. GB2312 and GBK are read as GB18030, as WHATWG's decoder does
# (Thunderbird, browsers, webmail): it reads every GBK sequence alike and 4-byte ones too.
_SUPERSETS = {
    "euc_kr": "cp949", "shift_jis": "cp932", "gb2312": "gb18030", "gbk": "gb18030",
    "big5": "big5hkscs", "iso8859-1": _WINDOWS_1252, "cp1252": _WINDOWS_1252,
}
# Text codecs that are not charsets: decoding mail with them would interpret the content.
_NOT_CHARSETS = frozenset(
    {"idna", "punycode", "unicode-escape", "raw-unicode-escape", "undefined"}
)

_FIELD_NAME = re.compile(rb"[!-9;-~]+")  # RFC 5322 ftext
_MIME_TYPE = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+/[!#$%&'*+.^_`|~0-9a-z-]+")
_LF, _CR = 0x0A, 0x0D
# Bytes that are no base64 symbol, deleted by `bytes.translate` (a regex substitution made an
# object per match: 256 MiB and 2.7 s for 3 MB of "a!a!...").
_NOT_BASE64 = bytes(sorted(set(range(256)) - set(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")))
# A soft line break with blanks after its "=": transport added them (RFC 2045 6.7 (3): they are
# deleted when decoding). binascii reads "=" and blanks as text and keeps the line break.
QP_PADDED_SOFT_BREAK = re.compile(rb"=[ \t]++(?=\r?\n|\Z)")

# leaf: a body; multipart: split into children; message: an attached message, whose one child
# is that message; opaque: a multipart or message that could not (or may not) be opened.
Kind = Literal["leaf", "multipart", "message", "opaque"]


# --- field values -------------------------------------------------------------------------


@frozen
class FieldValue:
    """A structured field value: `text/html; charset=utf-8` -> "text/html", charset param."""

    value: str  # lower-cased; "" when absent or unparsable
    params: tuple[tuple[str, str], ...] = ()

    def param(self, name: str) -> str | None:
        wanted = name.lower()
        for key, val in self.params:
            if key == wanted:
                return val
        return None


def parse_field(raw: str | None) -> FieldValue:
    """Parse a Content-Type / Content-Disposition value, with RFC 2231 parameters."""
    if raw is None:
        return _ABSENT_FIELD
    if len(raw) > _KEPT_FIELD_MAX:
        return _parse_field(raw)
    return _kept_field(raw)


# A field a part does not have (most parts' Content-Disposition): one value for all, as values
# are never changed.
_ABSENT_FIELD = FieldValue("")
# One message reads a part's Content-Type and -Disposition a few times (splitting it, choosing
# what to stamp, naming attachments), and mail repeats the usual values (`text/plain;
# charset=utf-8`, `inline`): the values are kept. Not a longer one (a part's long file name):
# no sender fills the cache with its own.
_KEPT_FIELD_MAX = 256


def _parse_field(raw: str) -> FieldValue:
    if "*" not in raw and "(" not in raw and "\n" not in raw:
        # The usual value: nothing to unfold, no comment, no RFC 2231 section (its names hold
        # a `*`): each parameter's first value stands, as `_collapse_rfc2231` keeps it.
        pieces = _split_params(raw)
        params: dict[str, str] = {}
        for name, value in _param_pairs(pieces[1:]):
            params.setdefault(name, value)
        return FieldValue(pieces[0].strip().lower(), tuple(params.items()))
    pieces = _split_params(unfold(raw))
    value = _strip_comments(pieces[0]).strip().lower()
    return FieldValue(value, _collapse_rfc2231(_param_pairs(pieces[1:])))


_kept_field = functools.lru_cache(maxsize=1024)(_parse_field)


def _known_type(value: str) -> str:
    """A parsed type as we read it: `type/subtype`, or "" (nothing we understand). A lone
    `text` (an old script's `Content-Type: text; charset=...`, no subtype) is text/plain:
    Thunderbird shows it so, as RFC 2046 §4.1.4 reads a text subtype it does not know."""
    if _MIME_TYPE.fullmatch(value):
        return value
    return "text/plain" if value == "text" else ""


def media_type(raw: str | None) -> str:
    """`content_type(raw).value` without reading the parameters."""
    if raw is None:
        return "text/plain"
    text = unfold(raw)
    if "(" in text:  # a `;` in a comment splits nothing
        first = _split_params(text)[0]
    else:
        first = text.split(";", 1)[0] if '"' not in text else _first_piece(text)
    return _known_type(_strip_comments(first).strip().lower())


def is_report(raw: str | None) -> bool:
    """Whether a Content-Type is `multipart/report` (delivery reports, read receipts)."""
    # Most mail is told apart by a substring: a type's name is a token, never split.
    return raw is not None and "report" in raw.lower() and media_type(raw) == "multipart/report"


def content_type(raw: str | None, default: str = "text/plain") -> FieldValue:
    """The Content-Type; `default` when absent, "" (nothing we understand) when unparsable."""
    if raw is None:
        return FieldValue(default)
    if len(raw) > _KEPT_FIELD_MAX:
        return _content_type(raw)
    return _kept_content_type(raw)


def _content_type(raw: str) -> FieldValue:
    parsed = parse_field(raw)
    known = _known_type(parsed.value)
    return parsed if known == parsed.value else FieldValue(known, parsed.params)


# Kept as the field values are (`_kept_field`), with the type checked once (a regex match).
_kept_content_type = functools.lru_cache(maxsize=1024)(_content_type)


# 7bit and 8bit as bulk mailers misspell them (`Content-Transfer-Encoding: 7-bit`, `8bits`):
# every reader shows such a part's bytes as they are, as it does any encoding it does not know.
_PLAIN_ENCODINGS = frozenset({"7bit", "8bit", "binary", "base64", "quoted-printable"})
_IDENTITY_SPELLINGS = {"7-bit": "7bit", "7 bit": "7bit", "7bits": "7bit",
                       "8-bit": "8bit", "8 bit": "8bit", "8bits": "8bit"}


def transfer_encoding(raw: str | None) -> str:
    """The Content-Transfer-Encoding, lower-cased; 7bit when absent or empty. It is one token
    (RFC 2045 §6.1): a `;` and what follows (`quoted-printable;`, as some bulk mailers
    write it) are no part of it, as Thunderbird reads the field's first token."""
    if raw is None:
        return "7bit"
    if raw in _PLAIN_ENCODINGS:  # as written by nearly every client: the loop gives it back
        return raw
    # Blanks inside count as one: `7\tbit`, `7  bit` are `7 bit`.
    value = " ".join(_strip_comments(unfold(raw)).split(";", 1)[0].split()).lower()
    return _IDENTITY_SPELLINGS.get(value, value) or "7bit"


# One `;`-separated piece of a field value: a quoted string (a backslash escapes the next
# character; an unclosed one runs to the end) may hold `;`. No nested quantifier can backtrack:
# each repetition of the outer group starts at a quote.
_PIECE = re.compile(r'[^";]*(?:"(?:[^"\\]|\\[\s\S])*(?:"|\\?\Z)[^";]*)*')


def _split_params(text: str) -> list[str]:
    """Split on `;` outside quoted strings and comments (both stay in the pieces)."""
    if "(" in text:
        outside = _split_outside_comments(text)
        if outside is not None:
            return outside
    split = text.split(";")
    # Without a backslash, a piece between two `;` with an even number of quotes closes each
    # quoted string it opens: no `;` is quoted (`boundary="=_x"`, the usual quoted value).
    if '"' not in text or ("\\" not in text and not any(p.count('"') % 2 for p in split)):
        return split
    pieces: list[str] = []
    pos = 0
    while True:
        piece = _first_piece(text, pos)
        pieces.append(piece)
        pos += len(piece) + 1  # past the `;`, or past the end
        if pos > len(text):
            return pieces


# A field with more comment openers than this is split as if it had none: mail writes one or
# two (`boundary=b1 (by Mailer; v2)`), and a field of thousands, read one by one, cost up to
# eight times the CPU of the plain split (review27: 128 KB fields of ` (x;y)`).
_COMMENTS_READ = 16
# What ends each state of the reading, searched for in C: outside (a separator, a quoted
# string or a comment), in a quoted string, in a comment (`\` escapes the next character).
_OUTSIDE_SPLIT = re.compile(r'[;"(]')
_IN_QUOTES = re.compile(r'["\\]')
_IN_COMMENT = re.compile(r"[()\\]")


def _split_outside_comments(text: str) -> list[str] | None:
    """`_split_params` for a value with a comment: `boundary=b1 (by Mailer; v2)` is one piece.
    As `_without_trailing_comments` reads them, a `(` opens a comment only after a blank or a
    `;` (an unquoted `name=report(1;2).pdf` is split as before). A comment or quoted string
    left open, or more than `_COMMENTS_READ` openers: None, split as before, so that it does
    not swallow the rest of the field."""
    if text.count("(") > _COMMENTS_READ:
        return None
    reading = _read_field(text, split=True)
    if reading.left_open:
        return None
    pieces: list[str] = []
    start = 0
    for at in reading.separators:
        pieces.append(text[start:at])
        start = at + 1
    pieces.append(text[start:])
    return pieces


class _Reading(NamedTuple):
    comments: list[tuple[int, int]]  # outermost comments, `(` to past `)`; an open one to the end
    separators: list[int]  # `;` outside quoted strings and comments (`split` only)
    left_open: bool  # a quoted string or a comment is not closed


def _read_field(text: str, *, split: bool) -> _Reading:
    """Where a field value's comments and separators are, quoted strings and escapes read: for
    `_split_outside_comments` (`split`: a `(` opens a comment after a blank or a `;` only)
    and `_strip_comments` (any `(` outside a quoted string does). Each state's end is searched
    for in C: a field is read by the characters that change the reading, not one by one."""
    comments: list[tuple[int, int]] = []
    separators: list[int] = []
    outside = _OUTSIDE_SPLIT if split else _OUTSIDE_COMMENTS
    pos = depth = opened = 0
    quoted = False
    while True:
        found = (_IN_QUOTES if quoted else _IN_COMMENT if depth else outside).search(text, pos)
        if found is None:
            break
        i = found.start()
        pos = i + 1
        ch = text[i]
        if ch == "\\":
            pos += 1  # the escaped character
        elif quoted:
            quoted = False
        elif depth:
            depth += 1 if ch == "(" else -1
            if not depth:
                comments.append((opened, pos))
        elif ch == '"':
            quoted = True
        elif ch == "(":
            if not split or i == 0 or text[i - 1] in " \t;":
                depth, opened = 1, i
        else:
            separators.append(i)
    if depth:
        comments.append((opened, len(text)))
    return _Reading(comments, separators, bool(depth or quoted))


def _first_piece(text: str, pos: int = 0) -> str:
    match = _PIECE.match(text, pos)
    assert match is not None  # the pattern matches the empty string
    return match.group()


_OUTSIDE_COMMENTS = re.compile(r'["(]')


def _strip_comments(text: str) -> str:
    """Remove RFC 5322 comments outside quoted strings (nesting allowed, unclosed ones too)."""
    if "(" not in text:
        return text
    out: list[str] = []
    kept = 0  # where the text to keep starts
    for start, end in _read_field(text, split=False).comments:
        out.append(text[kept:start])
        kept = end
    out.append(text[kept:])
    return "".join(out)


def _unquote(value: str) -> str:
    if not value.startswith('"'):
        return value
    if "\\" not in value:
        end = value.find('"', 1)
        return value[1:end] if end > 0 else value[1:]
    return _unquote_escaped(value)


def _unquote_escaped(value: str) -> str:
    """A quoted-string with backslash escapes, character by character."""
    out: list[str] = []
    escaped = False
    for ch in value[1:]:
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            break
        else:
            out.append(ch)
    return "".join(out)


def _param_pairs(pieces: Iterable[str]) -> list[tuple[str, str]]:
    pairs = []
    for piece in pieces:
        name, eq, value = piece.partition("=")
        name = name.strip().lower()
        if eq and name:
            pairs.append((name, _unquote(_without_trailing_comments(value.strip()))))
    return pairs


def _without_trailing_comments(value: str) -> str:
    """A parameter value without the comments after it (RFC 2045 §5.1 allows CFWS there):
    `boundary=abc (by Mailer)` is `abc`, `charset=iso-8859-1 (Latin-1)` is iso-8859-1.
    Only a comment after a blank goes: an unquoted `name=report(1).pdf` (parentheses are
    tspecials, yet mailers write them so) keeps its name. A quoted value needs none of
    this: `_unquote` stops at its closing quote."""
    if not value.endswith(")") or value.startswith('"'):
        return value
    end = len(value)  # where the value ends so far: one copy, not one a comment
    while end and value[end - 1] == ")":
        start = _comment_start(value, end)
        if start <= 0 or value[start - 1] not in " \t":
            break
        end = start - 1
        while end and value[end - 1] in " \t":
            end -= 1
    return value[:end]


def _comment_start(text: str, end: int) -> int:
    """Where the comment that ends at `end` (nested ones inside it) opens; -1 when none does.
    Read from the start, parenthesis by parenthesis (`text[end - 1]` is a `)`): the match of
    the last one is where a walk back from it would stop."""
    opened: list[int] = []
    start = -1
    for paren in _PARENS.finditer(text, 0, end):
        if text[paren.start()] == "(":
            opened.append(paren.start())
        else:
            start = opened.pop() if opened else -1
    return start


_PARENS = re.compile(r"[()]")


_MAX_SECTION_DIGITS = 9


def _collapse_rfc2231(pairs: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Join `name*0*=`, `name*1=` ... continuations and decode `charset'lang'%XX` values.

    An RFC 2231 value wins over a plain parameter of the same name (the plain one is the
    fallback for old readers).
    """
    plain: dict[str, str] = {}
    sections: dict[str, list[tuple[int, bool, str]]] = {}
    for name, value in pairs:
        base, star, rest = name.partition("*")
        number = rest.rstrip("*")
        # A section number is ASCII digits (RFC 2231 §3): str.isdigit() also takes "²", which
        # int() refuses, and int() refuses more than 4,300 digits; both raised out of the engine.
        if not star or not (number == "" or (number.isascii() and number.isdigit()
                                             and len(number) <= _MAX_SECTION_DIGITS)):
            plain.setdefault(name, value)
            continue
        extended = name.endswith("*")
        sections.setdefault(base, []).append((int(number or 0), extended, value))
    for base, parts in sections.items():
        plain[base] = _decode_sections(sorted(parts))
    return tuple(plain.items())


def _decode_sections(parts: list[tuple[int, bool, str]]) -> str:
    charset = "utf-8"
    raw = bytearray()
    for index, (_, extended, value) in enumerate(parts):
        if not extended:
            raw += encode_str(value)
            continue
        if index == 0 and value.count("'") >= 2:
            charset, _, rest = value.split("'", 2)
            value = rest
        raw += unquote_to_bytes(encode_str(value))  # 8-bit bytes arrive as surrogates
    # An empty charset (`filename*=''%C3%A9.pdf`, RFC 2231 §4 lets it be left out) is UTF-8, as
    # clients write it, not codec_for's US-ASCII default for a part with no label.
    return bytes(raw).decode(codec_for(charset or "utf-8") or "utf-8", "replace")


def codec_for(
    charset: str | None, default: str = "us-ascii", *, superset: bool = True
) -> str | None:
    """Python's codec name for a MIME charset, or None when it is unknown or not a charset.

    A narrow charset gives the superset clients read it as; `superset=False` gives the
    label's own codec (stamping writes a part in it where the superset does not give every
    byte back)."""
    if charset is not None and len(charset) > _CACHED_NAME_MAX:
        return _codec_for(charset, default, superset)
    return _cached_codec_for(charset, default, superset)


# A part's charset is looked up several times a message (reading, stamping, re-encoding), by a
# handful of names. A name longer than any charset's is looked up, never kept: no sender fills
# the cache with its own.
_CACHED_NAME_MAX = 40


def _codec_for(charset: str | None, default: str, superset: bool) -> str | None:
    name = (charset or default).strip().strip('"').lower()
    name = _CHARSET_ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):  # ValueError: NUL or 8-bit bytes in the name
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_CHARSETS:
        return None
    return _SUPERSETS.get(info.name, info.name) if superset else info.name


_cached_codec_for = functools.lru_cache(maxsize=256)(_codec_for)


# HTML5's prescan reads a <meta> charset in the first 1024 bytes only (WHATWG HTML §13.2.3.2):
# `<meta charset=...>` or `<meta http-equiv="Content-Type" content="...; charset=...">`.
_PRESCAN_BYTES = 1024
# What the prescan passes over (its own rules, not the tokenizer's: `markup` reads those): a
# comment to the first `>` after two dashes, which may be those of `<!--` itself (`<!-->` and
# `<!--->` are whole comments; `--!>` closes none), and `<!`, `<?` or `</` followed by no ASCII
# letter to the first `>` (`<![if !vml]>`, `<?xml ...?>`). Unclosed: to the end. (The str
# patterns of `markup` cannot serve: this reads bytes, and reads <style> text as markup.)
# Each is replaced by a `>`, not removed: the prescan reads on after it, where no `<meta`
# begins that starts before it (`<<!x>meta charset=...>` declares nothing), and it ends a
# <meta> it is in (`<meta <!x> charset=...>` holds no charset: `<!x` is an attribute name).
_PRESCAN_SKIPPED = re.compile(rb"<!--(?:>|->|.*?-->|.*)|<(?:[!?]|/(?![A-Za-z]))[^>]*+>?", re.S)
# `<meta` is followed by a tab, line feed, form feed, carriage return, space or "/" (the
# prescan's own test): `<meta/charset=...>` is one, `<meta\vcharset=...>` or `<meta-x ...>` none.
_META_CHARSET = re.compile(
    rb"<meta[\t\n\f\r /][^<>]*?charset\s*=\s*[\"']?\s*([A-Za-z0-9._:()+-]{1,40})", re.I)
# WHATWG's labels of UTF-16. Outlook's and Word's HTML says `charset=unicode` (a leftover of
# their UTF-16 internal form) while the part itself is ASCII-compatible, as the prescan
# found the label in ASCII bytes.
UTF16_LABELS = frozenset({"csunicode", "iso-10646-ucs-2", "ucs-2", "unicode", "unicodefeff",
                          "unicodefffe"})  # and every utf-16* label
# Microsoft's own names of ISO-2022-JP (code pages 50221 and 50222), which Exchange writes on
# a Japanese Subject it re-encodes and on body parts (`charset="_iso-2022-jp$ESC"`); Python
# knows neither. Read as ISO-2022-JP with JIS X 0201 katakana (`ESC ( I`, 50221's half-width
# form); 50222's SO/SI katakana come out as ASCII letters. Only for reading
# (`text_decoding.decode_text`): stamping leaves a part so labelled as it leaves any unknown
# label.
READ_AS = {"_iso-2022-jp$esc": "iso2022_jp_ext", "_iso-2022-jp$sio": "iso2022_jp_ext"}


def part_charset(part: Part, content: bytes) -> str | None:
    """The part's charset parameter; for text/html without one, the charset its <meta>
    declares (`content` is the part transfer-decoded), as every browser and client reads it."""
    if part.mime_type != "text/html" or part.charset is not None:
        return part.charset
    head = content[:_PRESCAN_BYTES]
    if b"<!" in head or b"<?" in head or b"</" in head:
        head = _PRESCAN_SKIPPED.sub(b">", head)
    for found in _META_CHARSET.finditer(head):
        label = _prescanned(found.group(1).decode("ascii"))
        if label is not None:
            return label
    return None


def _prescanned(label: str) -> str | None:
    """What a <meta> label declares (WHATWG): a UTF-16 label found by an ASCII prescan cannot
    be right, the text is UTF-8; a label it does not know declares nothing (the prescan
    goes on)."""
    folded = label.lower()
    if folded in UTF16_LABELS or folded.startswith("utf-16"):
        return "utf-8"
    return label if codec_for(label) is not None else None


def decode_transfer(raw: bytes, cte: str) -> bytes:
    """Lenient transfer decoding, for reading (never for rewriting): bad input does not raise."""
    if cte == "base64":
        # Padding ends a piece, and some encoders write the text in pieces, each padded
        # ("aGk=" "IQ=="): each piece decodes on its own (read as one stream, all after the
        # first padding came out shifted by its missing bits: garbage).
        pieces = _BASE64_PADDING.split(raw, MAX_BASE64_PIECES)
        return b"".join([_decode_base64_piece(piece) for piece in pieces])
    if cte == "quoted-printable":
        return decode_qp(raw)
    if cte in UUENCODE_LABELS:
        return decode_uu(raw)
    return raw


_BASE64_PADDING = re.compile(rb"=+")
# Pieces decoded on their own at most (the rest is read as one, its padding ignored as
# before): a run of "a=a=a=..." costs a call per piece.
MAX_BASE64_PIECES = 4096
# Content-Transfer-Encoding labels of uuencoded parts (not in RFC 2045; older clients send
# them).
UUENCODE_LABELS = frozenset({"x-uuencode", "uuencode", "x-uue", "uue"})
_UU_BEGIN = re.compile(rb"^begin[ \t]+[0-7]{3,4}[ \t][^\r\n]*\r?\n", re.M)
# A line that may be uuencoded data: a length character, then symbols (an empty line would
# decode to 32 zeros; other lines are skipped by the regex, not one by one).
_UU_LINE = re.compile(rb"^[!-`][ -`]+", re.M)
_UU_END = re.compile(rb"^end[ \t]*\r?$", re.M)


def _decode_base64_piece(piece: bytes) -> bytes:
    cleaned = piece.translate(None, _NOT_BASE64)
    cleaned = cleaned[: len(cleaned) - (len(cleaned) % 4 == 1)]
    return binascii.a2b_base64(cleaned + b"=" * (-len(cleaned) % 4))


def decode_uu(raw: bytes) -> bytes:
    """uuencoded data: the lines after `begin <mode> <name>` (from the start when there is
    none) up to `end`; a line that does not decode is skipped. A line shorter than its length
    character says (transport strips trailing blanks, which are zeros) decodes with zeros for
    the rest, up to as many bytes as `raw` has in all."""
    begin = _UU_BEGIN.search(raw)
    start = begin.end() if begin is not None else 0
    end = _UU_END.search(raw, start)
    out = bytearray()  # not a list: a million 1-byte lines would be a million objects
    for line in _UU_LINE.finditer(raw, start, end.start() if end is not None else len(raw)):
        if len(out) >= len(raw):
            break
        try:
            out += binascii.a2b_uu(line.group())
        except binascii.Error:
            continue
    return bytes(out[: len(raw)])


def decode_qp(raw: bytes) -> bytes:
    """Quoted-printable, a soft line break followed by blanks included (RFC 2045 6.7 (3));
    the usual text, without "=" before a blank, is not copied first."""
    if b"= " in raw or b"=\t" in raw:
        raw = QP_PADDED_SOFT_BREAK.sub(b"=", raw)
    return binascii.a2b_qp(raw)


# --- the part tree ------------------------------------------------------------------------


@frozen
class Part:
    """One MIME entity as offsets into the body buffer it was parsed from.

    `start` is its first byte (its header section), `body_start` the first byte of its own body,
    `end` one past its last byte. The line break before a delimiter line belongs to the
    delimiter (RFC 2046), so it is not in the part. For the top-level part, start == body_start
    == 0 (its header fields are the message's).
    """

    start: int
    body_start: int
    end: int
    headers: tuple[Header, ...]
    content_type: FieldValue
    cte: str
    disposition: FieldValue
    depth: int
    kind: Kind
    children: tuple[Part, ...] = ()
    boundary: str | None = None
    # Each delimiter line: (start, end), start including the line break before it.
    delimiters: tuple[tuple[int, int], ...] = ()
    defects: tuple[str, ...] = ()

    @property
    def mime_type(self) -> str:
        return self.content_type.value

    @property
    def charset(self) -> str | None:
        return self.content_type.param("charset")

    @property
    def filename(self) -> str | None:
        return self.disposition.param("filename") or self.content_type.param("name")

    @property
    def is_attachment(self) -> bool:
        return self.disposition.value == "attachment" or self.filename is not None

    def walk(self) -> Iterator[Part]:
        """This part and every part below it, in document order."""
        stack: list[Part] = [self]
        while stack:
            part = stack.pop()
            yield part
            stack.extend(reversed(part.children))

    def body(self, data: Data) -> bytes:
        return data[self.body_start : self.end]


@frozen
class TopFields:
    content_type: str | None
    cte: str | None
    disposition: str | None
    # A MIME field appears more than once: readers may disagree about the structure.
    ambiguous: bool = False


# Where `top_fields` keeps the first value of each MIME field.
_TOP_FIELD_SLOTS = {"content-type": 0, "content-transfer-encoding": 1, "content-disposition": 2}


def top_fields(headers: Iterable[Header]) -> TopFields:
    """The MIME fields of a header section (first of each), as `parse()` and the stampers take
    them for a message's own header fields."""
    (ctype, cte, disposition), repeated = _first_fields(headers)
    return TopFields(ctype, cte, disposition, repeated)


def _first_fields(headers: Iterable[Header]) -> tuple[list[str | None], bool]:
    """Content-Type, -Transfer-Encoding and -Disposition (first of each; `_TOP_FIELD_SLOTS`),
    and whether one is repeated: `top_fields` without its value, for each part `parse()`
    reads."""
    # One loop and no dict of lists, closure or generator: every part of every body is read
    # here, and each of those was a call or an object of its own.
    first: list[str | None] = [None, None, None]
    repeated = False
    for h in headers:
        slot = _TOP_FIELD_SLOTS.get(h.name.lower())
        if slot is None:
            continue
        if first[slot] is None:
            first[slot] = h.value
        else:
            repeated = True
    return first, repeated


class _Limits:
    def __init__(self, max_depth: int, max_parts: int) -> None:
        self.max_depth = max_depth
        self.parts_left = max_parts


def parse(
    body: Data,
    content_type_value: str | None = None,
    cte: str | None = None,
    disposition: str | None = None,
    *,
    max_depth: int = MAX_DEPTH,
    max_parts: int = MAX_PARTS,
) -> Part:
    """Split a message body, given the message's Content-Type / -Transfer-Encoding / -Disposition.

    Never raises on any input; below `max_depth` levels, or beyond `max_parts` parts, the rest
    stays opaque.
    """
    limits = _Limits(max_depth, max_parts)
    return _build(
        body, 0, 0, len(body), (),
        content_type(content_type_value), transfer_encoding(cte), parse_field(disposition),
        0, limits, (),
    )


def _parse_part(
    data: Data, start: int, end: int, depth: int, default_type: str, limits: _Limits
) -> Part:
    headers, body_start, defects = _scan_headers(data, start, end)
    (ctype, cte, disposition), repeated = _first_fields(headers)
    if repeated:
        defects += ("duplicate-mime-field",)
    return _build(
        data, start, body_start, end, headers,
        content_type(ctype, default_type), transfer_encoding(cte), parse_field(disposition),
        depth, limits, defects,
    )


def _build(
    data: Data, start: int, body_start: int, end: int, headers: tuple[Header, ...],
    ctype: FieldValue, cte: str, disposition: FieldValue, depth: int, limits: _Limits,
    defects: tuple[str, ...],
) -> Part:
    part = Part(start, body_start, end, headers, ctype, cte, disposition, depth, "leaf",
                defects=defects)
    is_multipart = ctype.value.startswith("multipart/")
    if not is_multipart and ctype.value not in EMBEDDED_MESSAGE_TYPES:
        return part
    if depth >= limits.max_depth:
        return _opaque(part, "too-deep")
    if is_multipart:
        return _split_multipart(data, part, limits)
    return _open_embedded(data, part, limits)


def _opened(
    leaf: Part, kind: Kind, defects: tuple[str, ...], children: tuple[Part, ...] = (),
    boundary: str | None = None, delimiters: tuple[tuple[int, int], ...] = (),
) -> Part:
    """`leaf` (as `_build` makes it: no children, boundary or delimiters) as `kind`: what
    `dataclasses.replace` gives, without its walk over the fields (twice a message)."""
    return Part(leaf.start, leaf.body_start, leaf.end, leaf.headers, leaf.content_type, leaf.cte,
                leaf.disposition, leaf.depth, kind, children, boundary, delimiters, defects)


def _opaque(part: Part, defect: str) -> Part:
    return _opened(part, "opaque", (*part.defects, defect))


def _open_embedded(data: Data, part: Part, limits: _Limits) -> Part:
    # An encoded message/rfc822 is invalid (RFC 2046 5.2.1); its inside is not at any offset.
    if part.cte not in IDENTITY_ENCODINGS:
        return _opaque(part, "encoded-message")
    if limits.parts_left <= 0:
        return _opaque(part, "too-many-parts")
    limits.parts_left -= 1
    inner = _parse_part(data, part.body_start, part.end, part.depth + 1, "text/plain", limits)
    return _opened(part, "message", part.defects, (inner,))


def _split_multipart(data: Data, part: Part, limits: _Limits) -> Part:
    boundary = (part.content_type.param("boundary") or "").rstrip()
    if not boundary:
        return _opaque(part, "no-boundary")
    defects = part.defects
    if part.cte not in IDENTITY_ENCODINGS:
        defects += ("encoded-multipart",)
    # One delimiter more than parts allowed is enough to know there are too many.
    delimiters, closed = _find_delimiters(data, part.body_start, part.end,
                                          encode_str(boundary), limits.parts_left + 1)
    if not delimiters:
        return _opaque(part, "boundary-absent")
    stopped_early = len(delimiters) > limits.parts_left
    if not closed and not stopped_early:
        defects += ("unclosed",)
    elif len(delimiters) == 1:
        defects += ("no-parts",)
    child_type = "message/rfc822" if part.mime_type == "multipart/digest" else "text/plain"
    children: list[Part] = []
    for start, end in _part_ranges(delimiters, closed, part.end):
        if limits.parts_left <= 0:
            defects += ("too-many-parts",)
            break
        limits.parts_left -= 1
        children.append(_parse_part(data, start, end, part.depth + 1, child_type, limits))
    return _opened(part, "multipart", defects, tuple(children), boundary, tuple(delimiters))


def _part_ranges(delimiters: list[tuple[int, int]], closed: bool,
                 end: int) -> Iterator[tuple[int, int]]:
    for (_, current_end), (following_start, _) in itertools.pairwise(delimiters):
        yield current_end, max(current_end, following_start)
    if not closed:
        yield delimiters[-1][1], end


# What follows `--boundary` on a delimiter line: `(--)?[ \t]*(?:\r?\n|\r?\Z)`, its quantifiers
# possessive (what one gave back could not match what follows it), so that a line that is no
# delimiter fails at once: a search takes ~45 ns for a `--bx` line, not twice that.
_DELIMITER_TAIL = re.compile(rb"(--)?+[ \t]*+\r?+(?:\n|\Z)")
# Lines that start `--boundary` but are no delimiter line (`--bx` against boundary `b`) that
# `_find_delimiters` checks one by one (~0.5 us each), two more a byte of boundary, before it
# compiles a search for the boundary's delimiter lines (0.15 ms, and 0.75 us a byte of
# boundary): the usual body pays for no compiling, and a body of a few hundred such lines a
# multipart (999 multiparts of 300) no more than twice what it did without one (170 ms, 94).
_NEAR_MISSES = 256


class _DelimiterLines:
    """Where the delimiter lines of one boundary start, in order: `find` looks for
    `LF--boundary` (a multiline regex search is ~20x slower on a large body) and a match checks
    the rest of the line; past `_NEAR_MISSES` lines that start so and are no delimiter, a
    search with `LF--boundary` as its literal prefix (which re scans for as `find` does) finds
    each next one: Python steps once a delimiter, not once a line that starts like one."""

    def __init__(self, data: Data, hi: int, boundary: bytes) -> None:
        self._data, self._hi = data, hi
        self._needle = b"--" + boundary
        self._line_needle = b"\n" + self._needle
        self._near_misses = 0
        self._search: re.Pattern[bytes] | None = None

    def next(self, pos: int) -> tuple[int, re.Match[bytes]] | None:
        """The first delimiter line at or after `pos` (a line starts at the start of the data
        or after a LF, as (?m)^ means it: the LF may be just before `pos`): where it starts,
        and the match of what follows the boundary."""
        data, hi, needle = self._data, self._hi, self._needle
        if pos == 0 and hi >= len(needle) and data[: len(needle)] == needle:
            match = _DELIMITER_TAIL.match(data, len(needle), hi)
            if match is not None:
                return 0, match
        while self._search is None:
            at = data.find(self._line_needle, max(pos - 1, 0), hi) + 1
            if at == 0:
                return None
            match = _DELIMITER_TAIL.match(data, at + len(needle), hi)
            if match is not None:
                return at, match
            pos = at + 1
            self._near_misses += 1
            if self._near_misses > _NEAR_MISSES + 2 * len(needle):
                self._search = re.compile(re.escape(self._line_needle) + _DELIMITER_TAIL.pattern)
        found = self._search.search(data, max(pos - 1, 0), hi)
        return None if found is None else (found.start() + 1, found)


def _find_delimiters(
    data: Data, lo: int, hi: int, boundary: bytes, max_count: int
) -> tuple[list[tuple[int, int]], bool]:
    """Delimiter lines `--boundary[--][WSP]*EOL` in [lo, hi), up to the first close delimiter
    (or `max_count` of them): each line's (start, end), the start including the line break
    before it, and whether the last is the close delimiter (only the last can be one)."""
    lines = _DelimiterLines(data, hi, boundary)
    found: list[tuple[int, int]] = []
    pos = lo
    while len(found) < max_count and (line := lines.next(pos)) is not None:
        at, match = line
        previous_end = found[-1][1] if found else lo
        pos = match.end()
        found.append((max(previous_end, _line_start_with_break(data, lo, at)), pos))
        if match.group(1) is not None:
            return found, True
    return found, False


def _line_start_with_break(data: Data, lo: int, at: int) -> int:
    if at > lo and data[at - 1] == _LF:
        at -= 1
        if at > lo and data[at - 1] == _CR:
            at -= 1
    return at


def _scan_headers(
    data: Data, start: int, end: int
) -> tuple[tuple[Header, ...], int, tuple[str, ...]]:
    """A part's header fields and where its body starts.

    The header section ends at an empty line (which is neither header nor body) or at the
    first line that is neither a field nor a continuation (which starts the body). A part whose
    fields run to its end has no body at all (`NO_BODY`: `Content-Type: text/plain` just above
    the next delimiter line, whose line break belongs to the delimiter, RFC 2046 §5.1.1).
    """
    fields: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        newline = data.find(b"\n", pos, end)
        line_end = end if newline < 0 else newline + 1
        line = data[pos:line_end].rstrip(b"\r\n")
        if not line:
            return _headers_from(data, fields), line_end, ()
        # The colon from the partition: `b":" in line` raises and clears a TypeError inside
        # (bytes' `in` tries its operand as an integer first), ~1,700 instructions a line.
        name, colon, _ = line.partition(b":")
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] = (fields[-1][0], line_end)
        elif colon and _is_field_name(name.rstrip(b" \t")):
            fields.append((pos, line_end))
        else:
            return _headers_from(data, fields), pos, ("missing-header-separator",)
        pos = line_end
        if pos - start > MAX_HEADER_BYTES:
            return _headers_from(data, fields), pos, ("header-too-long",)
    return _headers_from(data, fields), end, (NO_BODY,) if fields else ()


def _is_field_name(name: bytes) -> bool:
    """RFC 5322 ftext (`_FIELD_NAME`). Nearly every name is letters, digits and hyphens,
    which two bytes methods tell without a regex match's setup (each part's header lines)."""
    return name.replace(b"-", b"").isalnum() or _FIELD_NAME.fullmatch(name) is not None


def _headers_from(data: Data, fields: list[tuple[int, int]]) -> tuple[Header, ...]:
    headers = []
    for start, end in fields:
        raw = data[start:end]
        name, _, value = raw.partition(b":")
        headers.append(Header(decode_bytes(name.rstrip(b" \t")),
                              decode_bytes(value.lstrip(b" \t").rstrip(b"\r\n")), raw))
    return tuple(headers)
