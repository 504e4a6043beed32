"""Mail addresses in envelopes and headers, and the patterns that select support mailboxes."""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable, Iterator
from email.utils import getaddresses, parseaddr

from .message import unfold

_GLOB_CHARS = re.compile(r"[*?\[]")
# The everyday address field (`Name <user@example.com>, other@example.org`), read without the
# stdlib's character-by-character parser. Only shapes where that parser returns exactly the
# addr-spec as written match: dot-atoms, a display name of plain words (no quotes, comments or
# specials), nothing else; anything else takes the stdlib path. Two shapes more, which a
# strict stdlib (Python's fix for CVE-2023-27043) refuses, so that their mail would have no
# sender at all: a domain literal (`user@[192.0.2.1]`, RFC 5322 §3.4.1: dtext, no blanks), and
# a display name that holds an `@` or brackets unquoted, as mailers write an address for a
# name (`pat@example.org <pat@example.org>`, `=?utf-8?Q?pat@example.org?= <...>`): its
# mailbox is the angle address, as mail clients show it and DMARC verifiers read it (a
# lenient stdlib split such a name off as a second address). And semicolons as separators
# (`_commas`).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOMAIN_LITERAL = r"\[[!-Z^-~]+\]"
_ADDR_SPEC = rf"{_ATOM}(?:\.{_ATOM})*@(?:{_ATOM}(?:\.{_ATOM})*|{_DOMAIN_LITERAL})"
_WORD = r'[^\s()<>,:;"\\]+'
_SIMPLE_ADDRESS = re.compile(
    rf"[ \t]*(?:(?:{_WORD}(?:[ \t]+{_WORD})*[ \t]*)?<({_ADDR_SPEC})>|({_ADDR_SPEC}))[ \t]*"
)


def envelope_address(value: str) -> str:
    """`<User@Example.COM>` -> `user@example.com` (the local part too, though RFC 5321 §2.4
    lets a host tell its letter case apart: hardly any mail system does, and one person writes
    `Pat@` and `pat@`); empty for the null sender. An
    internationalised domain becomes its A-label (`bücher.example` -> `xn--bcher-kva.example`):
    Postfix hands SMTPUTF8 mail's U-labels to milters as they came."""
    address = value.strip().strip("<>").strip().lower()
    return address if address.isascii() else ascii_address(address)


def ascii_address(address: str) -> str:
    """`address` with its domain as an A-label; unchanged when that cannot be made."""
    local, at, domain = address.rpartition("@")
    return f"{local}@{ascii_domain(domain)}" if at else address


# RFC 1035's limit for a whole domain name. Python's IDNA codec encodes a label before it
# checks the 63-octet limit, in time quadratic in its length: a hostile 15 KB From domain cost
# seconds, and every address field is read a few times a message.
MAX_DOMAIN = 253


def ascii_domain(domain: str) -> str:
    """An internationalised domain name as its (lower-case) A-label form, by Python's IDNA
    2003 codec (which maps ß to ss: such a domain is best configured as its A-label); other
    input unchanged."""
    if domain.isascii() or len(domain) > MAX_DOMAIN:
        return domain  # too long to be a domain, and the codec's time grows with its square
    try:
        return _a_label(domain)
    except UnicodeError:
        return domain


def _a_label(domain: str) -> str:
    return domain.encode("idna").decode("ascii").lower()


def _simple_addresses(value: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """The addr-specs of an unfolded field value, as written and lower-cased, when every
    address in it has a simple shape (`_SIMPLE_ADDRESS`): then `getaddresses` would find
    exactly these. Else None."""
    if len(value) <= _CACHED_LENGTH:
        return _cached_simple_addresses(value)
    return _read_simple_addresses(value)


def _read_simple_addresses(value: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    found = []
    for piece in _commas(value).split(","):
        match = _SIMPLE_ADDRESS.fullmatch(piece)
        if match is None:
            if piece.strip(" \t"):
                return None
            continue  # an empty list element (RFC 5322 §4.4 obs-addr-list: `a@x, b@y,`)
        found.append(match.group(1) or match.group(2))
    if not found:
        return None
    written = tuple(found)
    lowered = tuple(address.lower() for address in written)
    return written, written if lowered == written else lowered


# One message reads its From three times (sender, auto-reply check, participants), and the
# same people write again and again. Only short fields are kept: at most ~1 MB in all.
_CACHED_LENGTH = 512
_cached_simple_addresses = functools.lru_cache(maxsize=1024)(_read_simple_addresses)


# The stdlib's address parser reads a nested comment by recursion, one level per "(": a hostile
# From of 1,000 nested parentheses raised RecursionError, and the message passed without any
# X-Case-* field (the failure policy). Deeper nesting than this is read with its comments
# dropped, which carry no address (RFC 5322 CFWS); real mail nests two or three at most.
MAX_COMMENT_DEPTH = 32


def _lexed(text: str) -> Iterator[tuple[int, str, int, bool]]:
    """Each character of an address field as RFC 5322 reads it, in one pass: its index, the
    depth of the comments around it (a comment's parentheses count as inside it) and whether
    it is quoted (in a quoted string, or a quoted pair)."""
    depth = 0
    quoted = escaped = False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
            yield i, char, depth, True
            continue
        if char == "\\":
            escaped = True
        elif quoted:
            quoted = char != '"'
            yield i, char, depth, True
            continue
        elif char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
            yield i, char, depth + 1, False
            continue
        elif char == '"' and not depth:
            quoted = True
        yield i, char, depth, quoted


def _shallow(text: str) -> str:
    """`text`, or when its comments nest deeper than MAX_COMMENT_DEPTH, `text` with each
    outermost comment (an unclosed one runs to the end) replaced by a blank: quoted strings
    and quoted pairs kept."""
    if text.count("(") <= MAX_COMMENT_DEPTH:
        return text
    out: list[str] = []
    deepest = 0
    for _, char, depth, quoted in _lexed(text):
        deepest = max(deepest, depth)
        if not depth:
            out.append(char)
        elif depth == 1 and char == "(" and not quoted:
            out.append(" ")
    return "".join(out) if deepest > MAX_COMMENT_DEPTH else text


def _commas(text: str) -> str:
    """`text` as a comma-separated list, for both readers (`_read_simple_addresses` and the
    stdlib's parser): semicolons between addresses (outside quoted strings and comments) as
    commas where no group is written (no `:` outside them), and without the separator at its
    end. Outlook's address line and many scripts and apps write `a@example.org;
    b@example.org;`, which RFC 5322 reads as no address (`;` only ends a group), and a
    strict stdlib (Python's fix for CVE-2023-27043) finds none after a comma at the end,
    though RFC 5322 §4.4 (obs-addr-list) allows empty list elements (`a@x, b@y,`): either
    way a To made nobody a participant and a From had no sender. A comma in a comment
    (`jdoe@example.org (Doe, Jane)`, `Jane (Sales, EMEA) <jane@example.org>`) becomes a blank:
    the strict stdlib counts it as a separator, finds one address fewer than it expects and
    gives none of the call's (its From, To and Cc)."""
    if "(" in text and "," in text:
        chars = list(text)
        for i, char, depth, _quoted in _lexed(text):
            if depth and char == ",":
                chars[i] = " "
        text = "".join(chars)
    if ";" not in text:
        end = text.rstrip(" \t")
        if not end.endswith(","):
            return text
        # The last comma as a separator only: not one in a quoted string or a comment.
        *_, (_, _, depth, quoted) = _lexed(end)
        return text if depth or quoted else end.rstrip(" \t,")
    chars = list(text)
    for i, char, depth, quoted in _lexed(text):
        if depth or quoted:
            continue
        if char == ":":
            return text  # a group: its ";" ends it
        if char == ";":
            chars[i] = ","
    return "".join(chars).rstrip(" \t,")


# How much of the address fields of one call is read: some 1,400 addresses with names. A field
# may be 100 KB (Postfix's header_size_limit) and come a hundred times; the stdlib's parser reads
# hostile text (`a@a@a@...`, nested comments) at ~3 us a character, and From, To, Cc and
# Reply-To are each read a few times a message: 10-19 s of CPU for a 10 MB message of them.
MAX_ADDRESS_TEXT = 64 << 10


def _unfolded_within_budget(values: list[str]) -> list[str]:
    """The fields unfolded, up to MAX_ADDRESS_TEXT characters in all, the one that crosses it
    cut at its last separating comma before the limit (an address cut in two would read as
    another; so would a quoted name cut at its comma: `"x@example.org, Bob" <bob@...>` cut
    after `"x@example.org` reads as x@example.org)."""
    unfolded, left = [], MAX_ADDRESS_TEXT
    for value in values:
        if len(value) > left:
            cut = _last_separator(value[:left])
            if cut > 0:
                unfolded.append(unfold(value[:cut]))
            break
        unfolded.append(unfold(value))
        left -= len(value)
    return unfolded


def _last_separator(text: str) -> int:
    """Where the last comma of `text` outside quoted strings and comments is, else -1 (one
    pass, ~8 ms for MAX_ADDRESS_TEXT: only a field that crosses the budget is read so)."""
    last = -1
    for i, char, depth, quoted in _lexed(text):
        if char == "," and not depth and not quoted:
            last = i
    return last


def header_addresses(values: list[str]) -> list[str]:
    """Lower-cased addr-specs found in address fields (From, To, Cc); garbage is skipped, and
    text past MAX_ADDRESS_TEXT is not read. An internationalised domain becomes its A-label,
    as in `envelope_address`: one person writes `jörg@müller.example` in one mail and
    `jörg@xn--mller-kva.example` in another (RFC 6532 mail carries either), and a case
    participant is one address whichever form recorded it."""
    if not values:  # a field the mail lacks (Reply-To, Cc: asked of every message)
        return []
    found: list[str] = []
    unfolded = _unfolded_within_budget(values)
    for value in unfolded:
        simple = _simple_addresses(value)
        if simple is None:
            break
        found += simple[1]
    else:
        return found
    # The stdlib reads the fields joined by commas: an unclosed quote or comment in one field
    # can swallow the next, so one unusual field sends all of them this way.
    found = _stdlib_addresses(unfolded)
    if not found and len(unfolded) > 1:
        # The strict stdlib (CVE-2023-27043 fix) gives no address of the whole call when one
        # field is garbled (an unclosed `(` in a name, `Support :-( <s@example.org>`): each
        # field alone then, so a Cc nobody can parse leaves the From and To their addresses.
        for value in unfolded:
            simple = _simple_addresses(value)
            found += simple[1] if simple is not None else _stdlib_addresses([value])
    return found


def _stdlib_addresses(unfolded: list[str]) -> list[str]:
    found = []
    for _name, addr in getaddresses([_commas(_shallow(v)) for v in unfolded]):
        addr = addr.strip().lower()
        if "@" in addr:
            found.append(addr if addr.isascii() else ascii_address(addr))
    return found


def unicode_address(address: str) -> str | None:
    """`address` with its A-labels as U-labels (`jörg@xn--mller-kva.example` ->
    `jörg@müller.example`), or None when that is the same text or cannot be made: the form
    under which earlier versions recorded a participant whose mail spelled the domain that way
    (they kept header addresses as written), still looked up."""
    local, at, domain = address.rpartition("@")
    if not at or "xn--" not in domain or len(domain) > MAX_DOMAIN:
        return None
    try:
        unicode = domain.encode("ascii").decode("idna")
    except UnicodeError:
        return None
    return f"{local}@{unicode}" if unicode != domain else None


def first_address(value: str) -> str:
    """What `parseaddr` reads as the addr-spec of the field's first address (as written, not
    lower-cased; "" when there is none). It need not contain "@" (`MAILER-DAEMON`)."""
    text = unfold(value)
    simple = _simple_addresses(text)
    # Several addresses: left to parseaddr, whose answer for them differs between Python
    # releases (a strict one returns none).
    if simple is not None and len(simple[0]) == 1:
        return simple[0][0]
    return parseaddr(_commas(_shallow(text)))[1]


def is_glob(pattern: str) -> bool:
    """Whether an `inbound.addresses` entry is a glob pattern (`*`, `?` or `[`)."""
    return _GLOB_CHARS.search(pattern) is not None


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]


# Addresses up to RFC 5321's length: `cached_matches` keeps its answers for these only.
MAX_KEPT_ADDRESS = 254


def cached_matches(matcher: AddressMatcher) -> Callable[[str], bool]:
    """`matcher.matches` keeping its answers: asked of every mail's addresses, the same few
    again and again. Only addresses of a real length are kept, so hostile ones pin no memory."""
    kept = functools.lru_cache(maxsize=1024)(matcher.matches)

    def matches(address: str) -> bool:
        return kept(address) if len(address) <= MAX_KEPT_ADDRESS else matcher.matches(address)

    return matches


class AddressMatcher:
    """Matches addresses against `inbound.addresses`: exact, `@domain`, or glob patterns.

    An exact address also matches its subaddresses, `local+detail@domain` (RFC 5233): Postfix
    (`recipient_delimiter = +`, Debian's main.cf), Sendmail, Gmail and Exchange Online deliver
    them to its mailbox, and a milter sees the envelope recipient as the client wrote it, so
    a reply to an app's `support+C-000123@` passed as nobody's mail, unthreaded. The detail
    is no case reference (anyone can write one); another delimiter takes a glob."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self._exact: set[str] = set()
        self._domains: set[str] = set()
        self._globs: list[str] = []
        # A wildcard inside a non-ASCII label (`*@bü*.example`) has no A-label form that globs
        # alike: such a pattern is matched against the address's U-labels as written.
        self._unicode_globs: list[str] = []
        for raw in patterns:
            pattern = ascii_address(raw.lower())  # glob labels pass IDNA unchanged
            if is_glob(pattern):
                self._globs.append(pattern)
                if not raw.isascii():
                    self._unicode_globs.append(raw.lower())
            elif pattern.startswith("@"):
                self._domains.add(pattern[1:])
            else:
                self._exact.add(pattern)

    def matches(self, address: str) -> bool:
        addr = envelope_address(address)
        if not addr:
            return False
        if addr in self._exact or domain_of(addr) in self._domains:
            return True
        if "+" in addr and self._exact and _base_address(addr) in self._exact:
            return True
        if any(fnmatch.fnmatchcase(addr, g) for g in self._globs):
            return True
        if not self._unicode_globs:
            return False
        unicode = unicode_address(addr)
        return unicode is not None and any(
            fnmatch.fnmatchcase(unicode, g) for g in self._unicode_globs)


def _base_address(address: str) -> str:
    """`support+detail@example.com` -> `support@example.com`: the local part up to its first
    `+` (RFC 5233's user sub-part, Postfix's `recipient_delimiter`), the domain as it was."""
    local, at, domain = address.rpartition("@")
    return f"{local.partition('+')[0]}{at}{domain}"
