"""Message-IDs: normalising for index keys, reading ID lists, making new ones."""

from __future__ import annotations

import re
import secrets

from .message import unfold, without_comments

_ANGLED = re.compile(r"<([^<>]*)>")
# A comment, or an angle-bracketed ID kept whole (`<"odd (x)"@host>`): to find a field's IDs
# as written, only the comments around them go.
_COMMENT_OR_ID = re.compile(r"(<[^<>]*>)|\([^()]*\)")
_SPACE = re.compile(r"\s+")
# Between bare IDs: blanks, or a comma (which no msg-id holds outside a quoted local part,
# RFC 5322 §3.6.4) with or without them: `a@x.org, b@x.org`, `a@x.org,b@x.org`.
_BARE_SEPARATOR = re.compile(r"[\s,]+")
# Never copied into a field we write: line breaks and NULs would break it or inject another.
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# What `normalise` would leave as it is, but for the domain's case.
_PLAIN = re.compile(r"[^\s()<>\x00]+")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def _without_comments(text: str, ids_whole: bool = False) -> str:
    """`text` without its comments; with `ids_whole`, comments inside `<...>` stay."""
    return without_comments(text, _COMMENT_OR_ID, r"\1") if ids_whole else without_comments(text)


def normalise(raw: str) -> str | None:
    """The canonical form of one Message-ID, or None when nothing usable is left.

    Angle brackets, whitespace (including folding) and comments go; the domain part is
    lower-cased (domains are case-insensitive, local parts are not). Parentheses in a quoted
    local part go too (`"a (x)"@h` is keyed `"a"@h`, RFC 5322 reads no comment there): a
    recorded ID and a reply's copy of it are normalised alike, so they still match.
    """
    if _PLAIN.fullmatch(raw):  # the usual ID: nothing to take out
        text = raw
    else:
        text = _without_comments(unfold(raw))
        text = _SPACE.sub("", text).strip("<>")
        text = text.replace("\x00", "")
    if not text:
        return None
    local, at, domain = text.rpartition("@")
    return f"{local}@{domain.lower()}" if at and local else text


def first_id(value: str | None) -> str | None:
    """The Message-ID a Message-ID field names (the first angle-bracketed one if several)."""
    if value is None:
        return None
    # Comments first: "(via <gw@x>) <id@y>" names id@y, not gw@x.
    found = _ANGLED.search(_without_comments(value, ids_whole=True))
    return normalise(found.group(1) if found else value)


def _raw_ids(value: str) -> list[str]:
    """The IDs of an In-Reply-To/References field as written, left to right (comments out).

    IDs without angle brackets are accepted when no bracketed ones exist, as some mailers
    send them bare, separated by blanks or commas; such a word loses a lone bracket at its
    ends (an ID cut before its `>`), which a reply would copy as `<<a@x.org>`.
    """
    value = _without_comments(value, ids_whole=True)
    raw_ids = _ANGLED.findall(value)
    if not raw_ids:
        raw_ids = [t.strip("<>") for t in _BARE_SEPARATOR.split(unfold(value)) if "@" in t]
    return raw_ids


def id_list(value: str | None, limit: int, oldest_first: bool = False) -> list[str]:
    """Normalised IDs in an In-Reply-To/References field, at most `limit`, each once: newest
    (rightmost) first, or as written with `oldest_first`."""
    if not value:
        return []
    raw_ids = _raw_ids(value)
    result: list[str] = []
    seen: set[str] = set()
    for raw in raw_ids if oldest_first else reversed(raw_ids):
        norm = normalise(raw)
        if norm and norm not in seen:
            seen.add(norm)
            result.append(norm)
            if len(result) >= limit:
                break
    return result


# Folding goes between IDs only: a longer one could not be written within a line's 998 octets.
MAX_WRITTEN_ID = 900


def written_ids(value: str) -> list[str]:
    """The field's IDs as written, `<...>` each, left to right, each once: a reply copies
    them, and threading clients compare them byte for byte (RFC 5256 REFERENCES). Line
    breaks, control characters and comments go; an ID too long for a line is left out."""
    ids = (_CONTROLS.sub("", unfold(raw)).strip() for raw in _raw_ids(value))
    return list(dict.fromkeys(f"<{mid}>" for mid in ids if 0 < len(mid) <= MAX_WRITTEN_ID))


def first_written_id(value: str) -> str | None:
    """The first `<...>` ID of an In-Reply-To as written, or None: RFC 5256 threads a reply
    under "the first valid message-id of the In-Reply-To"; free text (`Your message of ...`,
    a bare address) names no message."""
    found = _ANGLED.search(_without_comments(value, ids_whole=True))
    ids = written_ids(f"<{found.group(1)}>") if found else []
    return ids[0] if ids else None


def base36(number: int) -> str:
    """`number` (>= 0) in lower-case base 36: the two parts of the Message-IDs we write."""
    digits = []
    while True:
        number, rest = divmod(number, 36)
        digits.append(_B36[rest])
        if not number:
            return "".join(reversed(digits))


def is_plain_domain(domain: str) -> bool:
    """Letters, digits and hyphens in dot-separated labels of 1 to 63 characters (no hyphen at
    either end), 253 in all: a domain as DNS names hosts."""
    return len(domain) <= 253 and _DOMAIN.fullmatch(domain) is not None


def new_message_id(domain: str, now: float) -> str:
    """`<base36-time.random@domain>` with 96 random bits: unique without coordination."""
    return f"<{base36(int(now * 1000))}.{base36(secrets.randbits(96))}@{domain}>"
