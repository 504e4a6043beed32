"""The per-message shortcuts (issue 5) give exactly what the general code gives.

Each shortcut skips a slow, general reader for the common shape of its input; here each is
checked against that reader (the stdlib's address parser, a character loop, the slow token
loop) on hand-picked hard cases and on generated input made of the characters that matter.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from email.utils import getaddresses, parseaddr
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from casethread.core import (
    addresses,
    autoreply,
    bodytext,
    inbound,
    mail_lists,
    mime,
    placement,
    rules,
    stamp,
    subject,
    token,
)
from casethread.core.addresses import ascii_address, first_address, header_addresses
from casethread.core.case_headers import CaseHeaderNames
from casethread.core.decision import Decision
from casethread.core.edits import AddHeader
from casethread.core.message import Envelope, Header, Message, unfold
from casethread.core.model import Alias, AliasKind, CaseRecord, CaseState, Direction
from casethread.core.resolve import Resolver
from casethread.core.settings import Settings
from casethread.engine import Engine
from casethread.index import MemoryIndex, keys

# --- addresses ------------------------------------------------------------------------------


def stdlib_addresses(values: list[str]) -> list[str]:
    """What `header_addresses` promises: the stdlib's reading, lower-cased, with an "@", an
    internationalised domain as its A-label; when that is none of several fields (a strict
    stdlib gives none of a call with one field it cannot read), its reading of each alone."""
    found = []
    for _name, addr in getaddresses([unfold(v) for v in values]):
        addr = addr.strip().lower()
        if "@" in addr:
            found.append(ascii_address(addr))
    if not found and len(values) > 1:
        return [a for v in values for a in stdlib_addresses([v])]
    return found


HARD_FIELDS = [
    "Pat Customer <Pat@Customer.Example>",
    "pat@customer.example",
    "  J. R. Doe\t<j.r.doe+tag@sub.example.org>  ",
    "a@b.example, C <c@d.example>,e@f.example",
    "=?utf-8?q?J=C3=B6rg?= <joerg@example.de>",
    "Doe, John <john@example.com>",  # unquoted comma: the stdlib sees two addresses
    '"Doe, John" <john@example.com>',
    "john@example.com (John Doe)",
    "Pat <pat@example.com> junk",
    "a@b.example,,c@d.example",
    "undisclosed-recipients:;",
    "Team: a@b.example, c@d.example;",
    "<@route.example:pat@example.com>",
    "pat@example.com@evil.example",
    "pat.@example.com",
    "pat@example.com.",
    "MAILER-DAEMON",
    "Pat <pat@example.com",
    "Pat\r\n <pat@example.com>",
    "Pat\r <pat@example.com>",
    "Pät \udcc3 <pat@example.com>",
    "Pat\xa0Customer <pat@example.com>",
    "",
    "   ",
    '"unclosed <a@b.example>, c@d.example',
    "(unclosed <a@b.example>, c@d.example",
]


def assert_addresses_as_the_stdlib_reads_them(values: list[str]) -> None:
    assert header_addresses(values) == stdlib_addresses(values)
    for value in values:
        assert first_address(value) == parseaddr(unfold(value))[1]


@pytest.mark.parametrize("value", HARD_FIELDS)
def test_addresses_of_one_field_as_the_stdlib_reads_them(value: str) -> None:
    assert_addresses_as_the_stdlib_reads_them([value])


@pytest.mark.parametrize("value, found", [
    ("pat@[192.0.2.1]", "pat@[192.0.2.1]"),
    ("Pat <Pat@[IPv6:2001:db8::1]>", "pat@[ipv6:2001:db8::1]"),
    ("pat@[192.0.2.1 ]", ""),  # no blank inside: the stdlib's reading
    ("pat@[]", ""),
])
def test_a_domain_literal_is_an_address(value: str, found: str) -> None:
    """RFC 5322 §3.4.1 allows `user@[192.0.2.1]`; a strict stdlib (the CVE-2023-27043 fix)
    refuses every one, and mail From one would have no sender (no flood count). In a simple
    field it is read as the lenient stdlib reads it; other fields as the stdlib reads them."""
    assert header_addresses([value]) == ([found] if found else stdlib_addresses([value]))
    assert first_address(value).lower() == (found or parseaddr(value)[1])


@pytest.mark.parametrize("value, found", [
    ("pat@example.org <pat@example.org>", ["pat@example.org"]),
    ("=?utf-8?Q?pat@example.org?= <pat@example.org>", ["pat@example.org"]),
    # An encoded name holding another address: the angle address is the mailbox.
    ("=?utf-8?Q?Customer=2C_Pat_=3Cboss@example.org=3E?= <pat@example.org>",
     ["pat@example.org"]),
    ("sales@example.org <evil@attacker.example>", ["evil@attacker.example"]),
    ("@Jhon Due <info@example.com>", ["info@example.com"]),
    ("[EXT] pat@example.org<pat@example.org>", ["pat@example.org"]),
    ("pat@example.org <pat@example.org>, Lee <lee@example.org>",
     ["pat@example.org", "lee@example.org"]),
])
def test_a_display_name_holding_an_address_is_read_as_clients_read_it(
        value: str, found: list[str]) -> None:
    """Mailers write an address for a name, unquoted (`pat@example.org <pat@example.org>`)
    or in an encoded word: a strict stdlib (the CVE-2023-27043 fix) reads no address at all
    (the reply's sender was unknown, its human case reference ignored), a lenient one two.
    The mailbox is the angle address, as mail clients show it and DMARC verifiers read it."""
    assert header_addresses([value]) == found
    assert first_address(value) == (found[0] if len(found) == 1 else "")


@pytest.mark.parametrize("value, found", [
    ("a@x.example; b@y.example", ["a@x.example", "b@y.example"]),
    ("Pat <pat@x.example>; Lee <Lee@y.example>;", ["pat@x.example", "lee@y.example"]),
    ("pat@x.example;", ["pat@x.example"]),
    ("a@x.example, b@y.example; c@z.example", ["a@x.example", "b@y.example", "c@z.example"]),
    # A group still ends at its semicolon; a quoted one is part of a name.
    ("Team: a@x.example, b@y.example;", ["a@x.example", "b@y.example"]),
    ('"Doe; John" <j@x.example>', ["j@x.example"]),
    # Shapes the stdlib reads (quoted names, comments, empty entries): ";" outside them too.
    ('"Doe, Jane" <jane@x.example>; bob@y.example', ["jane@x.example", "bob@y.example"]),
    ('"Doe, Jane" <jane@x.example>;', ["jane@x.example"]),
    ('"Support: Jane" <jane@x.example>; bob@y.example', ["jane@x.example", "bob@y.example"]),
    ("a@x.example (home; old); b@y.example", ["a@x.example", "b@y.example"]),
    ("a@x.example;; b@y.example", ["a@x.example", "b@y.example"]),
    ("undisclosed-recipients:;", []),
])
def test_semicolons_between_addresses_separate_them(value: str, found: list[str]) -> None:
    """Outlook's address line, scripts and apps write `a@x; b@y`; RFC 5322 reads `;` only as
    a group's end, and the stdlib found no address at all in such a field: its people were
    never participants, and a From so written had no sender."""
    assert header_addresses([value]) == found
    assert first_address(value) == (found[0] if len(found) == 1 else "")


@pytest.mark.parametrize("value, found", [
    ("a@b.example,", ["a@b.example"]),
    ("Pat <pat@x.example>, Lee <lee@y.example>, ", ["pat@x.example", "lee@y.example"]),
    (",a@b.example", ["a@b.example"]),
    ('"Doe, Jane" <jane@x.example>,', ["jane@x.example"]),
    ("a@b.example,,c@d.example", ["a@b.example", "c@d.example"]),
    (",", []),
])
def test_empty_list_elements_are_skipped(value: str, found: list[str]) -> None:
    """RFC 5322 §4.4 (obs-addr-list) allows empty elements; scripts that join addresses leave
    a comma at the end. A strict stdlib (the CVE-2023-27043 fix) found no address at all in
    `a@b.example,`: a To so written made nobody a participant, a From so written no sender."""
    assert header_addresses([value]) == found
    assert first_address(value) == (found[0] if len(found) == 1 else "")


def _empty_element(values: list[str]) -> bool:
    """A list element that is empty or blank: test_empty_list_elements_are_skipped."""
    return any(re.search(r"(?:^|,)[ \t\r\n]*(?:,|$)", v) for v in values)


def _semicolon_list(values: list[str]) -> bool:
    """Semicolons outside any group: test_semicolons_between_addresses_separate_them."""
    return any(";" in v and (":" not in v or addresses._commas(v) != v) for v in values)


def _comma_in_a_comment(values: list[str]) -> bool:
    """A comma inside a comment, which the strict stdlib takes for a separator and then gives
    no address of the call: a blank to casethread (`addresses._commas`;
    test_a_comma_in_a_comment_is_a_blank)."""
    return any(char == "," and depth for v in values
               for _i, char, depth, _quoted in addresses._lexed(unfold(v)))


@pytest.mark.parametrize("value,expected", [
    ("(,)a.b@c.example", ["a.b@c.example"]),
    ("jdoe@example.org (Doe, Jane)", ["jdoe@example.org"]),
    ("Jane (Sales, EMEA) <jane@example.org>, bob@example.org",
     ["jane@example.org", "bob@example.org"]),
])
def test_a_comma_in_a_comment_is_a_blank(value: str, expected: list[str]) -> None:
    assert header_addresses([value]) == expected


def _names_an_address(values: list[str]) -> bool:
    """A display name holding `@` or brackets unquoted before an angle address:
    test_a_display_name_holding_an_address_is_read_as_clients_read_it."""
    return any(re.search(r'(?:^|,)[^,<>"()]*[@\[\]][^,<>"()]*<', v) for v in values)


def test_an_unusual_field_among_simple_ones_is_read_with_them() -> None:
    # An unclosed quote in From swallows the To addresses when the fields are read together,
    # and the strict stdlib then gives none of the call: each field is read alone then, as the
    # stdlib reads it (and as it read it last among the others).
    values = ['"Pat <pat@example.com>', "Sam <sam@example.com>"]
    assert getaddresses(values) == [("", "")]
    assert header_addresses(values) == stdlib_addresses(values) == [
        "pat <pat@example.com>", "sam@example.com"]
    assert header_addresses(values[::-1]) == stdlib_addresses(values[::-1])
    assert header_addresses(["a@b.example", "C <c@d.example>"]) == ["a@b.example", "c@d.example"]


def test_only_short_fields_are_kept_for_the_next_message() -> None:
    long_field = ", ".join(f"user{i}@example.com" for i in range(40))
    addresses._cached_simple_addresses.cache_clear()
    assert header_addresses([long_field]) == stdlib_addresses([long_field])
    assert addresses._cached_simple_addresses.cache_info().currsize == 0
    assert header_addresses(["Pat <pat@example.com>"]) == ["pat@example.com"]
    assert addresses._cached_simple_addresses.cache_info().currsize == 1


ADDRESS_PIECES = st.sampled_from(
    ["Pat", " ", "\t", "<", ">", "@", ".", ",", ";", ":", '"', "(", ")", "[", "]", "\\",
     "pat", "example.com", "a.b@c.example", "<x@y.example>", "\r\n ", "\xa0", "é", "=?"]
)
FIELD_VALUES = st.lists(ADDRESS_PIECES, max_size=8).map("".join)


@settings(max_examples=1500, deadline=None)
@given(st.lists(FIELD_VALUES, max_size=3))
def test_addresses_match_the_stdlib_on_generated_fields(values: list[str]) -> None:
    # A domain literal, which a strict stdlib refuses: test_a_domain_literal_is_an_address.
    assume("@[" not in "".join(values))
    assume(not _names_an_address(values))
    assume(not _semicolon_list(values))
    assume(not _empty_element(values))
    assume(not _comma_in_a_comment(values))
    assert_addresses_as_the_stdlib_reads_them(values)


# --- Content-Type parameters ----------------------------------------------------------------


def split_by_characters(text: str) -> list[str]:
    """`;` outside quoted strings and comments, read one character at a time (the shortcut's
    oracle). A `(` opens a comment after a blank or a `;` only; with a comment or quoted string
    left open, or more than `_COMMENTS_READ` openers, the comments are not told apart."""
    pieces = _split_by_characters(text, comments=text.count("(") <= mime._COMMENTS_READ)
    return pieces if pieces is not None else _split_by_characters(text, comments=False) or []


def _split_by_characters(text: str, comments: bool) -> list[str] | None:
    pieces: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    depth = 0
    previous = ";"
    for ch in text:
        if escaped:
            escaped = False
        elif (quoted or depth) and ch == "\\":
            escaped = True
        elif depth:
            depth += {"(": 1, ")": -1}.get(ch, 0)
        elif ch == '"':
            quoted = not quoted
        elif comments and ch == "(" and not quoted and previous in " \t;":
            depth = 1
        elif ch == ";" and not quoted:
            pieces.append("".join(current))
            current = []
            previous = ch
            continue
        current.append(ch)
        previous = ch
    if comments and (depth or quoted):
        return None
    pieces.append("".join(current))
    return pieces


PARAM_TEXT = st.lists(
    st.sampled_from(['"', ";", "\\", " ", "=", "a", "b", "*", "'", "%", "(", ")", "\n ",
                     "text/plain", "multipart/report", "Multipart/REPORT", "boundary",
                     "charset"]),
    max_size=14,
).map("".join)


@pytest.mark.parametrize("text", [
    "", ";", 'a;b', '"a;b";c', '"a\\";b";c', '"unclosed;x', '"ends in backslash\\',
    'x="q\\\\";y', 'multipart/mixed; boundary="=_mixed;7f3a"; charset=utf-8',
])
def test_parameters_split_outside_quotes(text: str) -> None:
    assert_parameters_as_the_character_loop(text)


def assert_parameters_as_the_character_loop(text: str) -> None:
    assert mime._split_params(text) == split_by_characters(text)
    assert mime._unquote(text) == (
        mime._unquote_escaped(text) if text.startswith('"') else text)


@settings(max_examples=1500, deadline=None)
@given(PARAM_TEXT)
def test_parameter_shortcuts_match_the_character_loop(text: str) -> None:
    assert_parameters_as_the_character_loop(text)
    assert mime.media_type(text) == mime.content_type(text).value
    assert mime.is_report(text) == (mime.media_type(text) == "multipart/report")


def general_parse_field(raw: str) -> mime.FieldValue:
    """`mime.parse_field` without its shortcuts: unfolded, split one character at a time,
    comments stripped, RFC 2231 sections collapsed."""
    pieces = split_by_characters(unfold(raw))
    value = mime._strip_comments(pieces[0]).strip().lower()
    return mime.FieldValue(value, mime._collapse_rfc2231(mime._param_pairs(pieces[1:])))


@pytest.mark.parametrize("raw", [
    'multipart/mixed; boundary="=_mixed_7f3a"', "text/plain; charset=us-ascii",
    'attachment; filename="a;b.pdf"', 'x; a="1"; A=2; a=3', 'x; name="q\\"x"; b=1',
    "x; title*=utf-8''%C3%A9; title=e", "x (c); a=1", "text/plain;\r\n charset=utf-8",
    'x; a="' + ";" * 100_000, "x" + '; a="b"' * 20_000, ";" * 100_000,
    "x; a=1 " + "(c;d) " * 16 + "; b=2", "x; a=1 " + "(c;d) " * 17 + "; b=2",
    'x; a=1 (c\\;d"; b=2) ; e="f;(g" (h\\)i;j)',
])
def test_field_values_read_as_through_the_general_path(raw: str) -> None:
    assert mime.parse_field(raw) == general_parse_field(raw)


@settings(max_examples=1500, deadline=None)
@given(PARAM_TEXT)
def test_field_value_shortcut_matches_the_general_path(raw: str) -> None:
    assert mime.parse_field(raw) == general_parse_field(raw)
    assert mime.parse_field(raw) == general_parse_field(raw)  # from the cache


def test_a_long_field_value_is_never_kept() -> None:
    mime._kept_field.cache_clear()
    long_value = "attachment; filename=" + "x" * 300
    assert mime.parse_field(long_value) == general_parse_field(long_value)
    assert mime._kept_field.cache_info().currsize == 0
    assert mime.parse_field("text/plain; charset=utf-8") == general_parse_field(
        "text/plain; charset=utf-8")
    assert mime._kept_field.cache_info().currsize == 1


# --- inline PGP -----------------------------------------------------------------------------

ARMOR_PIECES = st.sampled_from(
    ["-----BEGIN PGP MESSAGE-----", "-----BEGIN PGP SIGNED MESSAGE-----", "-----BEGIN PGP ",
     "MESSAGE-----", "-", "\n", "\r", "\r\n", "x", " ", "> "]
)


@settings(max_examples=1500, deadline=None)
@given(st.lists(ARMOR_PIECES, max_size=8).map("".join))
def test_inline_pgp_is_found_where_a_multiline_anchor_finds_it(text: str) -> None:
    anchored = re.compile(r"^-----BEGIN PGP (?:SIGNED )?MESSAGE-----", re.M)
    assert stamp._inline_pgp(text) == (anchored.search(text) is not None)


# Pieces of a part's text around a token: the token in its cases, its digits, characters whose
# lower case is ASCII or longer (a Kelvin sign, a dotted capital I), full-width digits.
FOLDED_PIECES = st.sampled_from(
    ["1", "12", "123", "9", "0", "A", "a", "K", "k", "\u212a", "\u0130", "I", "i",
     "\uff11", "\uff12", "x", " ", "\n", "[ref:", "]", "\u00df"])


@settings(max_examples=1500, deadline=None)
@given(number=st.integers(0, 2**64 - 1), key_id=st.integers(0, 31),
       pieces=st.lists(FOLDED_PIECES, max_size=12), at=st.integers(0, 12),
       form=st.sampled_from(["none", "upper", "lower", "swapped", "kelvin", "dotted"]))
def test_a_token_is_found_in_a_part_as_lowering_both_finds_it(
        number: int, key_id: int, pieces: list[str], at: int, form: str) -> None:
    tok = token.Keyring([(key_id, bytes(range(32)))]).make(number)
    written = {"none": "", "upper": tok, "lower": tok.lower(), "swapped": tok.swapcase(),
               "kelvin": tok.replace("K", "\u212a"), "dotted": tok.replace("I", "\u0130")}[form]
    text = "".join(pieces[:at]) + written + "".join(pieces[at:])
    assert stamp._holds_folded(text, tok) == (tok.lower() in text.lower())
    assert stamp._holds_folded(text, "ABCDEFGH") == ("abcdefgh" in text.lower())


# --- tokens ---------------------------------------------------------------------------------


@settings(max_examples=1000, deadline=None)
@given(
    symbols=st.text(alphabet="0123456789ABCDEFGHJKMNPQRSTVWXYZabcdefoilOILU", max_size=40),
    closing=st.sampled_from(["]", " ]", "", "]]", "x]", "\n> ]"]),
)
def test_token_in_one_piece_reads_as_through_the_general_loop(symbols: str,
                                                                closing: str) -> None:
    # A leading blank makes the reader take its general loop, which skips the blank.
    direct = list(token.find_tokens(f"[ref:{symbols}{closing}"))
    assert direct == list(token.find_tokens(f"[ref: {symbols}{closing}"))


def crockford(c: str) -> str:
    """Crockford's reading of one character, spelled out: O is 0, I and L are 1, a symbol's
    lower case is the symbol; anything else stays."""
    if c in "oO":
        return "0"
    if c in "iIlL":
        return "1"
    return c.upper() if c.upper() in token.ALPHABET else c


def test_normalise_reads_every_character_as_crockford_does() -> None:
    every_ascii = "".join(map(chr, range(128)))
    assert token.normalise(every_ascii) == "".join(map(crockford, every_ascii))
    assert token.normalise("oil\u00e9OIL") == "011\u00e9011"  # the non-ASCII path


def test_token_parsing_reads_what_make_wrote() -> None:
    keyring = token.Keyring([(3, bytes(range(32)))])
    for number in (0, 1, 31, 32, 1023, 1024, 2**40 + 7, 2**64 - 1):
        assert keyring.judge(keyring.make(number).lower()) == number  # key 3's MAC matched
    assert keyring.judge("3" + "2" + "01" + "0" * 16) == token.MALFORMED  # a leading zero digit
    assert keyring.judge("1U" + "0" * 17) == token.MALFORMED  # U is not a symbol


SIGNING = [(1, bytes(range(32))), (2, bytes(range(1, 33)))]


@settings(max_examples=1000, deadline=None)
@given(st.integers(0, 2**64 - 1), st.sampled_from([1, 2, 3]), st.integers(0, 40),
       st.sampled_from(["", "0", "Z", "o", "U", "-"]), st.booleans())
def test_a_kept_token_is_judged_as_when_first_seen(number: int, key_id: int, at: int,
                                                   symbol: str, lower: bool) -> None:
    # A keyring keeps the tokens that verified: judged again, each is what a keyring that
    # never saw it judges, and so is any forgery or retyping of it (key 3 is retired).
    made = token.Keyring([SIGNING[0], SIGNING[1], (3, bytes(32))][key_id - 1:]).make(number)
    variant = made[:at] + symbol + made[at + 1:] if symbol else made
    variant = variant.lower() if lower else variant
    keyring = token.Keyring(SIGNING)
    for candidate in (made, variant, made, variant):
        assert keyring.judge(candidate) == token.Keyring(SIGNING).judge(candidate)
        assert keyring.resolve([candidate]) == token.Keyring(SIGNING).resolve([candidate])


def test_only_genuine_tokens_are_kept_and_no_more_than_the_bound() -> None:
    keyring = token.Keyring(SIGNING)
    forged = keyring.make(7)[:-1] + ("0" if keyring.make(7)[-1] != "0" else "1")
    assert keyring.judge(forged) == token.BAD_MAC and not keyring._verified
    for number in range(token.MAX_KEPT_TOKENS + 5):
        assert keyring.judge(keyring.make(number)) == number
    assert 0 < len(keyring._verified) <= token.MAX_KEPT_TOKENS


# --- one message ----------------------------------------------------------------------------


def test_message_field_lookup_is_case_insensitive_and_copies() -> None:
    msg = Message(Envelope(), (Header("To", "a"), Header("Subject", "s"), Header("TO", "b")))
    assert msg.get("to") == "a" and msg.get("X-None") is None
    values = msg.get_all("To")
    values.append("c")
    assert msg.get_all("tO") == ["a", "b"]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["x-case-", "X-Case", "x-", "case-", "id", "\n", "a",
                                          "-"]), max_size=4).map("".join), max_size=5),
       st.sampled_from(["x-case-", "x-", "a\nx-", "\n"]))
def test_a_field_name_prefix_is_found_as_name_by_name(names: list[str], prefix: str) -> None:
    # One search of the joined names tells mail without the prefix; a name may hold a line
    # break, which the search could take for the start of a name.
    msg = Message(Envelope(), tuple(Header(name, "v") for name in names))
    assert msg.has_prefix(prefix) is any(name.lower().startswith(prefix) for name in names)


def test_outbound_body_is_split_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_parse = mime.parse

    def counting(*args: object, **kwargs: object) -> mime.Part:
        calls.append(1)
        return real_parse(*args, **kwargs)  # type: ignore[arg-type]

    # Every caller reaches the splitter as `mime.parse`, so this counts them all.
    monkeypatch.setattr(mime, "parse", counting)
    keyring = token.Keyring([(1, bytes(32))])
    engine = Engine(Settings(), MemoryIndex(), keyring, hostname="h.example")
    body = (b"--b\r\nContent-Type: text/plain\r\n\r\nHello\r\n"
            b"--b\r\nContent-Type: text/html\r\n\r\n<html><body>Hi</body></html>\r\n--b--\r\n")
    headers = (Header("From", "Support <support@example.com>"), Header("To", "pat@example.org"),
               Header("Subject", "Hello"), Header("MIME-Version", "1.0"),
               Header("Content-Type", 'multipart/alternative; boundary="b"'))
    env = Envelope("support@example.com", ("pat@example.org",), daemon_name="ORIGINATING")
    decision = engine.process(Message(env, headers, body))
    assert decision.match == "new" and len(decision.body_splices) == 2
    assert calls == [1]


def inbound_reply() -> tuple[Engine, Message, bytes]:
    """An engine whose index holds a case, and a customer's reply with its token in the
    Subject (its header fields, and its body)."""
    keyring = token.Keyring([(1, bytes(32))])
    index = MemoryIndex()
    settings = dataclasses.replace(Settings(), inbound=dataclasses.replace(
        Settings().inbound, addresses=("support@example.com",)))
    engine = Engine(settings, index, keyring, hostname="h.example")
    case = index.create_case(int(time.time()))
    env = Envelope("pat@example.org", ("support@example.com",))
    head = Message(env, (Header("From", "Pat <pat@example.org>"),
                         Header("To", "support@example.com"),
                         Header("Subject", f"Re: Hello [ref:{keyring.make(case.number)}]"),
                         Header("Message-ID", "<1@example.org>"),
                         Header("Content-Type", 'multipart/mixed; boundary="b"')))
    return engine, head, b"--b\r\nContent-Type: text/plain\r\n\r\nThanks\r\n--b--\r\n"


def test_a_reply_s_signals_are_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The classifier, the bounce strategy and the milter's body plan share one read of an
    inbound mail's signals (`autoreply.Signals`), in one step and in the milter's two."""
    asked: list[str | None] = []
    real_is_report = mime.is_report

    def counting(raw: str | None) -> bool:
        asked.append(raw)
        return real_is_report(raw)

    # Every reader of a report's Content-Type asks `mime.is_report`.
    monkeypatch.setattr(mime, "is_report", counting)
    engine, head, body = inbound_reply()
    assert engine.process(head.with_body(head.envelope, body)).match == "token"
    assert len(asked) == 1
    asked.clear()
    reply = Message(head.envelope, (*head.headers[:3], Header("Message-ID", "<2@example.org>"),
                                    *head.headers[4:]))
    plan = engine.body_wanted(reply, Direction.INBOUND)
    assert plan.found is not None
    decision = engine.process(reply.with_body(reply.envelope, body), Direction.INBOUND,
                              plan.found)
    assert decision.match == "token" and len(asked) == 1


def test_a_reply_is_decided_without_comprehensions_or_generators() -> None:
    """On Python 3.11 each comprehension and generator expression is a function call of its
    own (and a generator left unfinished is closed by an exception): an ordinary reply, a
    second after its case changed, is decided without one, in one step and in the
    milter's two."""
    engine, head, body = inbound_reply()
    clock = [time.time()]
    engine._clock = lambda: clock[0]
    made: list[str] = []

    def profile(frame: Any, event: str, _arg: object) -> None:
        code = frame.f_code
        if event == "call" and code.co_name in ("<listcomp>", "<dictcomp>", "<setcomp>",
                                                "<genexpr>"):
            made.append(f"{code.co_filename}:{code.co_firstlineno}")

    for n in range(3):
        reply = Message(head.envelope, (*head.headers[:3],
                                        Header("Message-ID", f"<{n}@example.org>"),
                                        *head.headers[4:]))
        clock[0] += 1
        sys.setprofile(profile)
        try:
            if n == 2:
                plan = engine.body_wanted(reply, Direction.INBOUND)
                decision = engine.process(reply.with_body(reply.envelope, body),
                                          Direction.INBOUND, plan.found)
            else:
                decision = engine.process(reply.with_body(reply.envelope, body))
        finally:
            sys.setprofile(None)
        assert decision.match == "token"
        # The first reply may make what is made once (a field of a few values, the key's
        # tables); the next ones make nothing of the kind.
        if n:
            assert [where for where in made if "casethread" in where] == []
        made.clear()


def test_a_reply_s_trace_is_formatted_when_read() -> None:
    # The milter reads no trace: the steps of a reply's are kept as templates and values,
    # made the lines f-strings made of them when read (`casethread filter --explain`).
    engine, head, body = inbound_reply()
    decision = engine.process(head.with_body(head.envelope, body))
    assert [step for step in decision.steps if not isinstance(step, str)]
    assert decision.trace == ("auto: no", "bounce: no match", "token: -> C-000001",
                              "rules: C-000001 -> C-000001 thread")
    case = CaseRecord("C-1", 1, CaseState.OPEN, "", 100, 100)
    assert Decision(Direction.INBOUND, steps=(
        "as it is", ("{}: -> {.case_id} {}", ("token", case, rules.Action.REOPEN)),
        ("{} ({})", ("auto", "x")))).trace == (
        "as it is", f"token: -> {case.case_id} {rules.Action.REOPEN}", "auto (x)")


# --- transfer encodings ---------------------------------------------------------------------


def general_transfer_encoding(raw: str) -> str:
    """`mime.transfer_encoding` without its shortcut for the usual spellings."""
    value = " ".join(mime._strip_comments(unfold(raw)).split(";", 1)[0].split()).lower()
    return mime._IDENTITY_SPELLINGS.get(value, value) or "7bit"


@pytest.mark.parametrize("raw", sorted(mime._PLAIN_ENCODINGS))
def test_usual_transfer_encodings_read_as_through_the_general_path(raw: str) -> None:
    assert mime.transfer_encoding(raw) == general_transfer_encoding(raw) == raw


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(["7bit", "8bit", "Base64", "base64", "quoted-printable", " ",
                                 "\t", ";", "(", ")", "\r\n ", "-", "7", "bit", "x"]),
                max_size=6).map("".join))
def test_transfer_encoding_matches_the_general_path(raw: str) -> None:
    assert mime.transfer_encoding(raw) == general_transfer_encoding(raw)


# --- HTML text ------------------------------------------------------------------------------


def general_html_to_text(markup: str) -> str:
    """`bodytext.html_to_text` without its shortcut for HTML with no comment, script, style or
    blockquote: every pass made, from the start."""
    return bodytext._every_pass(markup)


HTML_PIECES = st.sampled_from(
    ["<", ">", "/", " ", "\t", "\n", "script", "SCRIPT", "style", "Style", "blockquote",
     "BlockQuote", "\u017ftyle", "\u212a", "<!--", "-->", "<p>", "</p>", "<br>", "x", "&amp;",
     "<script>", "</script>", "<style type=x>", "</style >", "<blockquote>", "< / blockquote>",
     "<<!-- -->", "<div>", "-", ":", ".", "\xa0", "\v", "\f", "\r", "\u0130", "=", "x>",
     "<style-x>", "<script:x>", "</style/>", "</script x>", "</stylex>", "<blockquote-x>",
     "<p-x>", "<d\u0130v>", "</style", "<blockquote/>", "<!-->", "--!>", "<!", "<?", "</ ",
     "</\u017f", "<title>", "<![if x]>", "<!DOCTYPE html>", "<?xml x?>", "<!x", "<?"]
)


@pytest.mark.parametrize("markup", [
    "", "<p>Hello</p>", "<<!-- -->script>x</script>y", "<SCRIPT>x</SCRIPT>y",
    "<\u017ftyle>x</style>y",  # long s: re.I reads it as "s"
    "< / blockquote>a<blockquote >b", "<blockquote>a<br>b</blockquote>c",
    "<" * 50_000 + " " * 50_000 + "blockquote",  # hostile: long runs before a name
    "<p>" + "x" * 100_000 + "</p>",
    # A "<" left open before a dropped span is text: dropping the span makes no tag of it.
    "</style<![if x]>>", "x <a <b<!x>c>", "<blockquote<!x>>q",
])
def test_html_text_as_through_every_pass(markup: str) -> None:
    assert bodytext.html_to_text(markup) == general_html_to_text(markup)


@settings(max_examples=1500, deadline=None)
@given(st.lists(HTML_PIECES, max_size=12).map("".join))
def test_html_text_shortcut_matches_every_pass(markup: str) -> None:
    assert bodytext.html_to_text(markup) == general_html_to_text(markup)


@settings(max_examples=1500, deadline=None)
@given(st.lists(HTML_PIECES, max_size=12).map("".join))
def test_the_shortcut_search_finds_whatever_the_exact_patterns_find(markup: str) -> None:
    """`_DROPPED_OR_QUOTE` is a superset of what `_every_pass` drops and of `BLOCKQUOTE_TAG`:
    wherever one of them starts, it matches at the same place; but for a bogus comment that
    ends at its `>` before any `<`, which `_ANY_TAG` removes whole."""
    for found in bodytext.BLOCKQUOTE_TAG.finditer(markup):
        assert bodytext._DROPPED_OR_QUOTE.match(markup, found.start()), markup
    for span in bodytext.hidden_spans(markup):
        dropped = markup[span.start:span.end]
        if span.kind in bodytext._DROPPED and not bodytext._DROPPED_OR_QUOTE.match(markup,
                                                                                 span.start):
            assert dropped[1] in "!?" and "<" not in dropped[1:], markup
            assert bodytext._ANY_TAG.fullmatch(dropped), markup


# --- MIME parts -----------------------------------------------------------------------------

PART_BODY = st.lists(st.sampled_from(
    ["--b\r\n", "--b--\r\n", "--c\r\n", "\r\n", "Content-Type: multipart/mixed; boundary=c\r\n",
     "Content-Type: message/rfc822\r\n", "Content-Transfer-Encoding: base64\r\n",
     "Content-Type: text/plain\r\n", "x\r\n", "Subject: s\r\n"]), max_size=14).map("".join)


@settings(max_examples=500, deadline=None)
@given(PART_BODY, st.sampled_from(["multipart/mixed; boundary=b", "multipart/digest; boundary=b",
                                    "multipart/mixed", "message/rfc822", "text/plain"]))
def test_parts_are_opened_as_dataclasses_replace_opens_them(body: str, ctype: str) -> None:
    """`mime._opened` builds each multipart, message and opaque part field by field: what
    `dataclasses.replace` of the leaf gives (a field added to Part must be passed on)."""
    def check(part: mime.Part) -> None:
        leaf = mime.Part(part.start, part.body_start, part.end, part.headers, part.content_type,
                         part.cte, part.disposition, part.depth, "leaf")
        opened = mime._opened(leaf, part.kind, part.defects, part.children, part.boundary,
                              part.delimiters)
        assert opened == part == dataclasses.replace(
            leaf, kind=part.kind, defects=part.defects, children=part.children,
            boundary=part.boundary, delimiters=part.delimiters)
        for child in part.children:
            check(child)

    check(mime.parse(body.encode(), ctype, max_depth=3, max_parts=6))


def test_opened_parts_pass_every_field_on() -> None:
    assert [f.name for f in dataclasses.fields(mime.Part)] == [
        "start", "body_start", "end", "headers", "content_type", "cte", "disposition", "depth",
        "kind", "children", "boundary", "delimiters", "defects"]


# --- charsets -------------------------------------------------------------------------------

CHARSET_NAMES = st.one_of(
    st.none(),
    st.sampled_from(["us-ascii", "US-ASCII", '"utf-8"', " utf-8 ", "iso-8859-1", "latin1",
                     "windows-1252", "ks_c_5601-1987", "gb2312", "shift_jis", "unicode",
                     "utf-16", "idna", "rot13", "hex", "", "\x00", "\udcff", "x" * 41]),
    st.text(alphabet="abcISO-_8859 1\"ut\x00", max_size=45),
)


@settings(max_examples=1000, deadline=None)
@given(CHARSET_NAMES, st.sampled_from(["us-ascii", "utf-8"]), st.booleans())
def test_cached_codec_names_as_looked_up(charset: str | None, default: str,
                                          superset: bool) -> None:
    expected = mime._codec_for(charset, default, superset)
    assert mime.codec_for(charset, default, superset=superset) == expected
    assert mime.codec_for(charset, default, superset=superset) == expected  # from the cache


def test_a_long_charset_name_is_never_kept() -> None:
    mime._cached_codec_for.cache_clear()
    assert mime.codec_for("utf-8" + " " * 100_000) == "utf-8"
    assert mime.codec_for("x" * 100_000) is None
    assert mime._cached_codec_for.cache_info().currsize == 0
    assert mime.codec_for("x" * 40) is None
    assert mime._cached_codec_for.cache_info().currsize == 1


# --- where the HTML tag goes ----------------------------------------------------------------

CLOSING_PIECES = st.sampled_from(
    ["</body>", "</BODY >", "</body", "</html>", "</html\n>", "<", ">", "/", " ", "x", "\n",
     "<!--", "-->", "<a title=\"", "\">", "<style>", "</style>", "y" * 300, "</body/>",
     "</body x=1>", "</bodyx>", "\xa0", "\v", "</HTML\t"])


@pytest.mark.parametrize("text", [
    "", "</body>", "x" * 5000 + "</body>" + "x" * 5000,  # only before the tail
    "</body>" * 200_000, "<" * 100_000 + "/body>", "</body" + " " * 100_000 + ">",
    "</body>" + "x" * (placement._TAIL - 3) + "</body>",  # one match across the tail's start
])
def test_closing_tags_from_the_end_as_a_whole_part_search_finds_them(text: str) -> None:
    for pattern in placement._CLOSING_TAGS:
        whole = [m.start() for m in pattern.finditer(text)]
        assert list(placement._starts_from_the_end(pattern, text)) == whole[::-1]


@settings(max_examples=1000, deadline=None)
@given(st.lists(CLOSING_PIECES, max_size=20).map("".join), st.integers(0, 3000))
def test_closing_tags_from_the_end_match_a_whole_part_search(text: str, pad: int) -> None:
    text = text[: len(text) // 2] + "z" * pad + text[len(text) // 2 :]
    for pattern in placement._CLOSING_TAGS:
        whole = [m.start() for m in pattern.finditer(text)]
        assert list(placement._starts_from_the_end(pattern, text)) == whole[::-1]


# --- a mail's list addresses ------------------------------------------------------------------

LIST_FIELD_NAMES = st.sampled_from(["List-Id", "LIST-POST", "list-post", "List-Unsubscribe",
                                    "From", "Precedence"])
LIST_FIELD_VALUES = st.sampled_from(
    ["<team.lists.example.org>", "Team <team.example.org>", "<mailto:Team@Example.org>",
     "NO (posting not allowed)", "", " ", "team.example.org", "<a@b.example>", "bulk"])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(LIST_FIELD_NAMES, LIST_FIELD_VALUES), max_size=4))
def test_list_addresses_as_the_general_path_reads_them(fields: list[tuple[str, str]]) -> None:
    # Mail without List-Post or List-Id (most) is answered without the general path's steps.
    msg = Message(Envelope(), tuple(Header(name, value) for name, value in fields))
    general = frozenset(a.lower() for a in mail_lists._list_addresses(
        msg.present(mail_lists._LIST_ADDRESS_FIELDS)))
    assert mail_lists.list_addresses(msg) == general


def test_no_address_field_has_no_addresses() -> None:
    # The shortcut for a field the mail lacks; the generated tests above pass empty lists too.
    assert header_addresses([]) == [] == addresses._stdlib_addresses([])


# --- case rules -----------------------------------------------------------------------------

CASE_IDS = ["C-1", "C-2", "C-3"]
MAYBE_LINK = st.one_of(st.none(), st.sampled_from(CASE_IDS))


@st.composite
def case_records(draw: st.DrawFn, case_id: str) -> CaseRecord:
    return CaseRecord(
        case_id, CASE_IDS.index(case_id) + 1, draw(st.sampled_from(list(CaseState))),
        draw(st.sampled_from(["", "support"])), 100, draw(st.integers(100, 200)),
        draw(st.integers(100, 200)), draw(MAYBE_LINK), draw(MAYBE_LINK),
        tuple(draw(st.lists(st.sampled_from(CASE_IDS), max_size=2))), draw(MAYBE_LINK),
        None, draw(MAYBE_LINK))


class _Cases:
    def __init__(self, cases: list[CaseRecord]) -> None:
        self._cases = {c.case_id: c for c in cases}

    def get_case(self, case_id: str) -> CaseRecord | None:
        return self._cases.get(case_id)


@settings(max_examples=1500, deadline=None)
@given(st.tuples(*(case_records(case_id) for case_id in CASE_IDS)), st.booleans(),
       st.integers(100, 400), st.sampled_from([0, 50, 1000]))
def test_case_rules_shortcut_matches_the_walk(cases: tuple[CaseRecord, ...], automatic: bool,
                                              now: int, reopen_within: int) -> None:
    # An open or waiting case of its own (neither merged nor split) is answered without the
    # walk over its links.
    reader = _Cases(list(cases))
    for case in cases:
        args = {"automatic": automatic, "now": now, "reopen_within": reopen_within}
        assert rules.apply(case, reader, **args) == rules._walked(case, reader, **args)


@settings(max_examples=1500, deadline=None)
@given(case_records("C-1"), case_records("C-1"), st.sampled_from(
    [{}, {"updated": 150}, {"state": CaseState.OPEN}, {"children": ()}, {"queue": "other"}]))
def test_case_records_compare_field_by_field(a: CaseRecord, b: CaseRecord,
                                             change: dict[str, Any]) -> None:
    c = dataclasses.replace(a, **change)
    for x, y in ((a, b), (a, c), (a, a), (b, c)):
        fields = [(f, getattr(x, f.name) == getattr(y, f.name)) for f in dataclasses.fields(x)]
        assert (x == y) is all(equal for _, equal in fields) is not (x != y)
    assert a.__eq__(1) is NotImplemented


@settings(max_examples=500, deadline=None)
@given(case_records("C-1"), st.sampled_from([None, *CaseState]), st.integers(100, 400))
def test_a_touched_case_is_what_replace_makes(case: CaseRecord, state: CaseState | None,
                                              now: int) -> None:
    new_state = case.state if state is None else state
    assert rules._touched(case, now, state) == dataclasses.replace(
        case, state=new_state, updated=now,
        state_changed=case.state_changed if state is None else now,
        followup=rules.followup_after(case, new_state))


# --- support addresses ------------------------------------------------------------------------

SUPPORT_PATTERNS = ("support@example.com", "@help.example.org", "team-*@example.net")


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(
    ["support@example.com", "SUPPORT@Example.COM", "<support@example.com>", "pat@example.com",
     "x@help.example.org", "team-a@example.net", "", "support@example.com" + " " * 300,
     "a" * 300 + "@help.example.org"]), max_size=6))
def test_kept_answers_are_the_matchers(addresses_asked: list[str]) -> None:
    matcher = addresses.AddressMatcher(SUPPORT_PATTERNS)
    matches = addresses.cached_matches(matcher)
    for address in addresses_asked * 2:  # the second time from what was kept
        assert matches(address) == matcher.matches(address)


# --- inbound fields ---------------------------------------------------------------------------


def test_fields_of_a_few_values_are_made_once() -> None:
    names = CaseHeaderNames()
    verdicts = [inbound.Verdict((inbound.CaseOutcome(case_id, "open", "support"),), "token", "no",
                                sender_known=True) for case_id in ("C-000001", "C-000002")]
    first, second = (inbound.edits(names, [], v) for v in verdicts)
    assert first == [AddHeader("X-Case-ID", "C-000001"), AddHeader("X-Case-Match", "token"),
                     AddHeader("X-Case-State", "open"), AddHeader("X-Case-Queue", "support"),
                     AddHeader("X-Case-Auto", "no"), AddHeader("X-Case-Sender", "known")]
    assert second[0] == AddHeader("X-Case-ID", "C-000002")
    # The same value objects for the next message: made once, as they are equal anyway.
    assert all(a is b for a, b in zip(first[1:], second[1:], strict=True))


# --- case records -----------------------------------------------------------------------------

JSON_PIECES = st.sampled_from(
    ['{', '}', '"n"', ":", "1", ",", " ", "\n", '"s"', '"open"', "[", "]", "\x00", "x", "é",
     '"\\ud800"', "null", '"q"', "\ufeff"])
JSON_BYTES = st.one_of(
    st.binary(max_size=12),
    st.tuples(st.lists(JSON_PIECES, max_size=10).map("".join),
              st.sampled_from(["utf-8", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig"]))
    .map(lambda text_codec: text_codec[0].encode(text_codec[1], "surrogatepass")))


def outcome(read: Any, data: Any) -> tuple[str, Any]:
    """What `read(data)` gives, or the type and text of what it raises."""
    try:
        return "value", read(data)
    except Exception as error:  # the same error, whichever reads it
        return type(error).__name__, str(error)


@settings(max_examples=2000, deadline=None)
@given(JSON_BYTES)
def test_case_json_reads_as_json_loads(data: bytes) -> None:
    assert outcome(keys._json_object, data) == outcome(json.loads, data)


def general_decode_case(case_id: str, data: bytes) -> CaseRecord:
    """`keys.decode_case` as it read a record before its shortcuts."""
    fields = json.loads(data)
    created = int(fields["c"])
    parent, merged_into, followup = fields.get("p"), fields.get("m"), fields.get("f")
    follows = fields.get("fo")
    return CaseRecord(
        case_id=case_id, number=int(fields["n"]), state=CaseState(fields["s"]),
        queue=str(fields["q"]), created=created, updated=int(fields["u"]),
        state_changed=int(fields.get("sc", created)),
        parent=None if parent is None else str(parent),
        merged_into=None if merged_into is None else str(merged_into),
        children=tuple(str(child) for child in fields.get("ch", ())),
        followup=None if followup is None else str(followup),
        thread_root=keys._valid_root(fields.get("r")),
        follows=None if follows is None else str(follows))


FIELD_VALUES_JSON = st.one_of(st.none(), st.integers(-2, 2), st.sampled_from(
    ["open", "waiting", "closed", "OPEN", "", "C-1", "a" * 44, "0" * 44]), st.lists(
        st.sampled_from(["C-2", 3]), max_size=2))


@settings(max_examples=2000, deadline=None)
@given(st.dictionaries(st.sampled_from(["n", "s", "q", "c", "u", "sc", "p", "m", "ch", "f", "r",
                                        "fo"]), FIELD_VALUES_JSON))
def test_case_records_read_as_through_the_general_path(fields: dict[str, Any]) -> None:
    data = json.dumps(fields).encode()
    keys.decode_case.cache_clear()
    assert outcome(lambda d: keys.decode_case("C-1", d), data) == outcome(
        lambda d: general_decode_case("C-1", d), data)


def test_the_message_at_its_end_keeps_what_its_fields_gave() -> None:
    # The milter's end of message: the same fields, and their index by name not built again.
    fields = (Header("From", "a@b.example"), Header("X-Case-ID", "C-1"),
              Header("from", "c@d.example"))
    head = Message(Envelope(queue_id=""), fields)
    assert head.get_all("FROM") == ["a@b.example", "c@d.example"]
    assert head.has_prefix("x-case-")
    end = head.with_body(Envelope(queue_id="Q1"), b"body\r\n")
    assert (end.envelope.queue_id, end.headers, end.body, end.newline) == (
        "Q1", head.headers, b"body\r\n", head.newline)
    assert end.__dict__["_by_name"] is head.__dict__["_by_name"]
    assert end.get_all("From") == ["a@b.example", "c@d.example"] and end.has_prefix("x-case-")
    assert end == Message(Envelope(queue_id="Q1"), head.headers, b"body\r\n")
    # A message whose fields were never read has nothing to pass on: worked out when asked.
    fresh = Message(Envelope(), head.headers).with_body(Envelope(), b"")
    assert "_by_name" not in fresh.__dict__ and fresh.get("from") == "a@b.example"


# --- auto-reply signals -----------------------------------------------------------------------

# Quiet mail and its near misses: each field's values the signals read, and mail's own.
SIGNAL_ROLES = (
    ("From", ["Pat Customer <pat@customer.example>", "MAILER-DAEMON",
              "Mail Delivery System <MAILER-DAEMON@mx.example>", '"mailer\\-daemon"@mx.example',
              "mailer(x)-daemon@mx.example", "postmaster@customer.example",
              '"post\\master"@mx.example', "<>", "MAILER-DAEMON <>", "x@y.example (postmaster)",
              "quarantine@messaging.microsoft.com", "staff@hotmail.com",
              "no-reply@sns.amazonaws.com", "notices@gateway.example", "support@example.com"]),
    ("Subject", ["Re: printer [ref:X]", "Accepted: call", "=?utf-8?q?Accepted=3A?= call",
                 "Undelivered Mail Returned", "Warning: message 1ABC delayed 24 hours",
                 "Automatic reply: x", "complaint about message from 192.0.2.1"]),
    ("Content-Type", ["text/plain", "multipart/mixed; boundary=b", "Multipart/Report",
                      "multipart/report; report-type=delivery-status; boundary=b",
                      "multipart/report; report-type=disposition-notification; boundary=b",
                      "text/calendar; method=REPLY"]),
    # FreeScout's auto-reply, told by its Message-ID on quiet mail too, and its agent's reply.
    ("Message-ID", ["<autoreply-4711-5f4dcc3b5aa765d6@customer.example>",
                    "<reply-4711-5f4dcc3b5aa765d6@customer.example>"]),
    ("Content-Class", ["urn:content-classes:mdn", "urn:content-classes:message",
                       "urn:content-classes:calendarmessage",
                       "urn:content-classes:recallmessage"]),
)
OTHER_SIGNAL_FIELDS = st.sampled_from([
    ("Delivered-To", "pat@customer.example"), ("Delivered-To", "Autoresponder"),
    ("X-Apple-Action", "MOVE_TO_FOLDER/INBOX"), ("Auto-Submitted", "no"),
    ("Auto-Submitted", "auto-replied"), ("X-Failed-Recipients", "a@b.example"),
    ("Return-Path", "<>"), ("Return-Path", "<pat@customer.example>"), ("Precedence", "bulk"),
    ("List-Id", "<team.example.org>"), ("X-Loop", "x"), ("X-List-Administrivia", "yes"),
    ("X-MS-Exchange-Inbox-Rules-Loop", "support@example.com"),
    ("X-MS-Exchange-Inbox-Rules-Loop", "pat@customer.example"),
    ("X-MS-Exchange-RecallReportGenerated", "true"), ("To", "support@example.com"),
])
SIGNAL_SENDERS = ["", "<>", " < > ", "pat@customer.example", "MAILER-DAEMON"]
RETURNED = b"Message-ID: <ours@example.com>\r\nSubject: Printer\r\n\r\nHello\r\n"
SIGNAL_BODIES = [
    b"",
    b"--b\r\nContent-Type: text/plain\r\n\r\nNot delivered.\r\n--b\r\n"
    b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
    b"Final-Recipient: rfc822; a@b.example\r\nAction: failed\r\n--b\r\n"
    b"Content-Type: message/rfc822\r\n\r\n" + RETURNED + b"--b--\r\n",
    b"This is the mail system.\r\n\r\n------ This is a copy of the message\r\n\r\n" + RETURNED,
    b"BEGIN:VCALENDAR\r\nMETHOD:REPLY\r\nEND:VCALENDAR\r\n",
]
# One mail for each thing that makes mail not quiet, beside what is generated.
NOT_QUIET = [
    ([("Content-Type", "text/calendar")], "", SIGNAL_BODIES[3]),
    ([("Content-Type", "multipart/report; boundary=b")], "", SIGNAL_BODIES[1]),
    ([("From", "staff@hotmail.com"), ("Subject", "complaint about message from 192.0.2.1")],
     "", b""),
    ([("From", "quarantine@messaging.microsoft.com")], "", b""),
    ([("From", "mailer(x)-daemon@mx.example")], "x@mx.example", SIGNAL_BODIES[2]),
    ([("From", "MAILER-DAEMON <>"), ("Content-Type", "multipart/mixed; boundary=b")], "",
     SIGNAL_BODIES[1]),
    ([("Content-Class", "urn:content-classes:mdn")], "", b""),
    ([("X-MS-Exchange-RecallReportGenerated", "true")], "", b""),
]


@st.composite
def signal_mail(draw: st.DrawFn) -> tuple[list[tuple[str, str]], str, bytes]:
    fields = [(name, value) for name, values in SIGNAL_ROLES
              for value in [draw(st.sampled_from([None, *values]))] if value is not None]
    fields += draw(st.lists(OTHER_SIGNAL_FIELDS, max_size=2))
    return fields, draw(st.sampled_from(SIGNAL_SENDERS)), draw(st.sampled_from(SIGNAL_BODIES))


def _mail(fields: list[tuple[str, str]], sender: str, body: bytes) -> Message:
    return Message(Envelope(mail_from=sender), tuple(Header(n, v) for n, v in fields), body)


def _general(signals: autoreply.Signals) -> autoreply.Signals:
    """The same signals, without the one test for quiet mail: the whole path runs."""
    return dataclasses.replace(signals, quiet=False)


@pytest.mark.parametrize("mail", NOT_QUIET)
def test_what_makes_mail_not_quiet(mail: tuple[list[tuple[str, str]], str, bytes]) -> None:
    assert not autoreply.read_signals(_mail(*mail)).quiet
    check_quiet_mail_classified(mail)
    check_quiet_mail_bounce(mail)


@settings(max_examples=1500, deadline=None)
@given(signal_mail())
def test_quiet_mail_is_decided_as_through_the_whole_path(
        mail: tuple[list[tuple[str, str]], str, bytes]) -> None:
    check_quiet_mail_classified(mail)
    check_quiet_mail_bounce(mail)


def check_quiet_mail_classified(mail: tuple[list[tuple[str, str]], str, bytes]) -> None:
    msg = _mail(*mail)
    signals = autoreply.read_signals(msg)
    ours = addresses.cached_matches(addresses.AddressMatcher(("support@example.com",)))
    notices = addresses.AddressMatcher(("notices@gateway.example",)).matches
    for known, named in ((None, None), (ours, None), (ours, notices)):
        assert autoreply.classify_auto_detail(msg, known, None, named, signals) == (
            autoreply.classify_auto_detail(msg, known, None, named, _general(signals)))


def check_quiet_mail_bounce(mail: tuple[list[tuple[str, str]], str, bytes]) -> None:
    # A quiet mail is no report or notice of the mail system: its body is not read, and it
    # names no case, where the mail it could return is recorded.
    index = MemoryIndex()
    case = index.create_case(100)
    index.record([Alias(AliasKind.MESSAGE, "ours@example.com", case.case_id)], 100)
    resolver = Resolver(Settings(), token.Keyring([(1, bytes(range(32)))]))
    msg = _mail(*mail)
    found = []
    for general in (False, True):
        ev = resolver.evidence(msg, index, 100)
        signals = autoreply.read_signals(msg)
        ev.signals = _general(signals) if general else signals  # type: ignore[misc]
        hit = resolver.by_bounce(ev)
        found.append((hit and (hit.case.case_id, hit.match), ev.body_read))
    assert found[0] == found[1]


# --- counters ---------------------------------------------------------------------------------


def general_bump(previous: keys.Window | None, now: int, window: int) -> keys.Window:
    """`keys.bump` as it counted before it asked its checks only of the values they change."""
    keys._check_window(window)
    now = keys._clamp(now)
    if previous is None or abs(now - previous.start) >= window:
        return keys.Window(now, 1)
    return keys.Window(previous.start, min(previous.count + 1, 2**32 - 1))


@settings(max_examples=1500, deadline=None)
@given(st.one_of(st.none(), st.builds(keys.Window, st.integers(0, 2**32 - 1),
                                      st.sampled_from([1, 7, 2**32 - 1]))),
       st.one_of(st.integers(-5, 5), st.integers(2**32 - 5, 2**32 + 5),
                 st.integers(-2**40, 2**40)),
       st.one_of(st.integers(-2, 3), st.sampled_from([60, 3600, 2**33])))
def test_a_count_is_the_general_path_s(previous: keys.Window | None, now: int,
                                       window: int) -> None:
    assert outcome(lambda w: keys.bump(previous, now, w), window) == outcome(
        lambda w: general_bump(previous, now, w), window)


TAGGED_SUBJECTS = st.lists(
    st.sampled_from(["[", "]", "*", "{", "}", "#", "e", "E", "ext", "EXTERNAL", "spam", "?",
                     ":", " ", "\t", "\u00a0", "\u3000", "a", "1", "Re", "É", "ℯ", "K"]),
    max_size=12,
).map("".join)


@settings(max_examples=1500, deadline=None)
@given(TAGGED_SUBJECTS)
def test_list_tag_shortcut_matches_the_pattern(text: str) -> None:
    """`strip_list_tags` leaves a Subject whose first character starts no tag unmatched."""
    assert subject.strip_list_tags(text) == subject._stripped(text, (subject._LIST_TAG,))


def strip_comments_by_characters(text: str) -> str:
    """`mime._strip_comments`' oracle, one character at a time."""
    out: list[str] = []
    depth = 0
    quoted = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\" and (quoted or depth):
            escaped = True
        elif ch == '"' and not depth:
            quoted = not quoted
        elif ch == "(" and not quoted:
            depth += 1
            continue
        elif ch == ")" and depth:
            depth -= 1
            continue
        if not depth:
            out.append(ch)
    return "".join(out)


def comment_start_walking_back(text: str, end: int) -> int:
    """`mime._comment_start`'s oracle, walking back from `end`."""
    depth = 0
    for i in range(end - 1, -1, -1):
        if text[i] == ")":
            depth += 1
        elif text[i] == "(":
            depth -= 1
            if not depth:
                return i
    return -1


COMMENT_TEXT = st.lists(st.sampled_from(["(", ")", '"', "\\", ";", " ", "a", "b=c"]),
                        max_size=16).map("".join)


@settings(max_examples=2000, deadline=None)
@given(COMMENT_TEXT)
def test_comment_readers_match_the_character_loops(text: str) -> None:
    assert mime._strip_comments(text) == strip_comments_by_characters(text)
    if text.endswith(")"):
        assert mime._comment_start(text, len(text)) == comment_start_walking_back(text, len(text))
