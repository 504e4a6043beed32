"""The signed threading token (DESIGN §4): make, verify, and find it in mail text.

Layout
------
A token is a string of Crockford base32 symbols (alphabet ``0123456789ABCDEFGHJKMNPQRSTVWXYZ``,
no padding, no check symbol), read left to right::

    K L D...D M...M
    | |   |     +-- 16 symbols: the MAC (80 bits, exactly 16 x 5, so no padding bits)
    | |   +-------- L symbols: the case number, big-endian base32, no leading zeros
    | |             (the number 0 is the single symbol "0"); the number is < 2**64
    | +------------ 1 symbol: L, the number of case-number symbols, 1..13
    +-------------- 1 symbol: the key id, 0..31

    MAC = HMAC-SHA256(secret[K], b"casethread-token-v1\\x00" || byte(K) || uint64_be(number))[:10]

The length is self-describing (the second symbol) and lies between 19 (cases 0..31) and 31
symbols; cases below 32,768 take at most 21 symbols, below 1,048,576 at most 22. Every symbol
carries information, so any substitution by a *different* symbol breaks the structure or the MAC.
The case number is readable by anyone (the token is signed, not encrypted); it is not a secret.

Decoding is tolerant, as Crockford specifies: lower case is accepted and the aliases ``O``->``0``,
``I``/``L``->``1`` decode to the same symbol (so a token retyped by a human still verifies).
``U`` and hyphens are not accepted. Tokens are always rendered in upper case.

Where tokens appear
-------------------
- Subject and body: the bracket form of the configured template, default ``[ref:TOKEN]``.
  :func:`find_tokens` finds them from the top, case-insensitively, tolerating spaces and line
  breaks (each optionally followed by a quote prefix such as ``> `` or ``>> ``) anywhere between
  the brackets, inside the opening literal (``[re`` / ``> f:``) too, as mail clients wrap and
  quote long lines; the full-width forms a CJK input method writes (``［ref：TOKEN］``, the
  ideographic space) read as their ASCII characters, as NFKC maps them, and so do the
  brackets it writes for ``[`` ``]`` in its punctuation mode (``【ref：TOKEN】``, ``「`` ``」``,
  ``〔`` ``〕``).
- In-Reply-To / References: the anchor ``<TOKEN.case@DOMAIN>`` (:func:`anchor`,
  :func:`token_from_anchor`).

Scanning is linear: the opening literal is located by a regular expression with no nested
quantifiers, and each candidate is read by a hand-written loop that gives up after
``MAX_SPAN`` characters.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NoReturn

from .frozen import frozen
from .message import unfold
from .subject import BIDI_CONTROLS, decoded_if_encoded

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
DEFAULT_TEMPLATE = " [ref:{token}]"
PLACEHOLDER = "{token}"

MAC_SYMBOLS = 16
MAC_BYTES = 10  # 80 bits = MAC_SYMBOLS * 5
MAX_KEY_ID = 31
MAX_NUMBER_SYMBOLS = 13  # 65 bits hold any uint64
MAX_CASE_NUMBER = 2**64 - 1
MIN_LENGTH = 2 + 1 + MAC_SYMBOLS
MAX_LENGTH = 2 + MAX_NUMBER_SYMBOLS + MAC_SYMBOLS
# Secrets shorter than this are refused; generated keys are 32 bytes.
MIN_SECRET_BYTES = 16
# How far past the opening literal a candidate may reach: the longest token plus room for
# wrapping and quote prefixes. Bounds the work per candidate, hence the whole scan.
MAX_SPAN = MAX_LENGTH + 96
# Candidates Keyring.resolve verifies at most (each costs one HMAC).
MAX_CANDIDATES = 64
# Tokens a keyring keeps as verified (`Keyring._judge_normalised`), ~100 bytes each.
MAX_KEPT_TOKENS = 4096
# Why a token-shaped string does not verify (`Keyring.judge`; the log's `token-invalid:` notes):
# no token's structure (a damaged or made-up one); a key id no configured key has (a retired
# key, or never ours); a MAC that does not match (forged or damaged, or signed by a lost key
# that had this id).
MALFORMED = "malformed"
UNKNOWN_KEY = "unknown-key"
BAD_MAC = "bad-mac"

_CONTEXT = b"casethread-token-v1\x00"
_VALUE = {symbol: i for i, symbol in enumerate(ALPHABET)}
_ALPHABET_SET = frozenset(ALPHABET)
_AS_INT_DIGITS = bytes.maketrans(ALPHABET.encode("ascii"), b"0123456789abcdefghijklmnopqrstuv")
# Lower case and Crockford's aliases map onto the canonical symbols.
_NORMALISE = str.maketrans(
    {
        **{c.lower(): c for c in ALPHABET if c.isalpha()},
        "O": "0",
        "o": "0",
        "I": "1",
        "i": "1",
        "L": "1",
        "l": "1",
    }
)
_NORMALISE_ASCII = bytes(
    ord(chr(i).translate(_NORMALISE)) for i in range(128)
) + bytes(range(128, 256))
# "Token-shaped": what a token (possibly retyped, mangled or forged) may consist of. Wider than
# the alphabet on purpose, so that a forged token using U still counts as an invalid token.
_SHAPE_CHARS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_ANCHOR_SUFFIX = ".case"
_MAC_SHIFTS = tuple(5 * i for i in reversed(range(MAC_SYMBOLS)))


def normalise(token: str) -> str:
    """Upper case with Crockford's aliases resolved; other characters are left as they are."""
    if token.isascii():  # always, for a token: a byte table is several times faster
        return token.encode("ascii").translate(_NORMALISE_ASCII).decode("ascii")
    return token.translate(_NORMALISE)


def is_token_shaped(text: str) -> bool:
    """True when `text` looks like a token (ASCII letters/digits, plausible length).

    A token-shaped string that does not verify is a forgery, a damaged token or one signed
    with a retired key (the engine reports it as ``X-Case-Token: invalid``).
    """
    return MIN_LENGTH <= len(text) <= MAX_LENGTH and _SHAPE_CHARS.issuperset(text)


def _encode_number(number: int) -> str:
    digits = []
    while True:
        number, low = divmod(number, 32)
        digits.append(ALPHABET[low])
        if not number:
            break
    return "".join(reversed(digits))


class _Hmac:
    """HMAC-SHA256 (RFC 2104) with the key's inner and outer pads hashed once: a token costs
    two hash copies instead of `hmac.digest` deriving both pads again (0.6 us against 1.6)."""

    __slots__ = ("_inner", "_outer")
    _BLOCK = 64  # SHA-256's block size

    def __init__(self, secret: bytes) -> None:
        if len(secret) > self._BLOCK:
            secret = hashlib.sha256(secret).digest()
        secret = secret.ljust(self._BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in secret))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in secret))

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def _mac(key: _Hmac, key_id: int, number: int) -> bytes:
    return key.digest(_CONTEXT + bytes((key_id,)) + number.to_bytes(8, "big"))[:MAC_BYTES]


def _mac_to_symbols(mac: bytes) -> str:
    bits = int.from_bytes(mac, "big")
    return "".join([ALPHABET[(bits >> shift) & 31] for shift in _MAC_SHIFTS])


@frozen
class ParsedToken:
    """The parts of a structurally valid token. The MAC is not checked here."""

    key_id: int
    case_number: int
    mac: bytes


def _parse_normalised(text: str) -> ParsedToken | None:
    """Split a normalised token into its parts, or None when its structure is wrong (no MAC
    check)."""
    if not MIN_LENGTH <= len(text) <= MAX_LENGTH or not _ALPHABET_SET.issuperset(text):
        return None
    key_id, count = _VALUE[text[0]], _VALUE[text[1]]
    if not 1 <= count <= MAX_NUMBER_SYMBOLS or len(text) != 2 + count + MAC_SYMBOLS:
        return None
    if count > 1 and text[2] == "0":
        return None  # one number, one spelling
    # Base-32 numerals in Python's digits (0-9, a-v), read by int() in C; a byte table is
    # several times faster than a str one (the text is ASCII by now).
    digits = text.encode("ascii").translate(_AS_INT_DIGITS)
    number = int(digits[2 : 2 + count], 32)
    if number > MAX_CASE_NUMBER:
        return None
    mac_bits = int(digits[2 + count :], 32)
    return ParsedToken(key_id, number, mac_bits.to_bytes(MAC_BYTES, "big"))


@frozen
class TokenResult:
    """What `Keyring.resolve` found among candidates.

    `case_number`/`token` come from the first candidate that verified (None if none did);
    `failures` says why each token-shaped candidate before it failed (`Keyring.judge`).
    """

    case_number: int | None = None
    token: str | None = None
    failures: tuple[str, ...] = ()


class Keyring:
    """Token keys by id: the first signs new tokens, all of them verify.

    The secrets never appear in str()/repr() or in any exception message.
    """

    __slots__ = ("_secrets", "_signing_id", "_verified")

    def __init__(self, keys: Sequence[tuple[int, bytes]]) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        secrets: dict[int, _Hmac] = {}
        for key_id, secret in keys:
            if isinstance(key_id, bool) or not isinstance(key_id, int):
                raise ValueError(f"token key id must be an integer, not {type(key_id).__name__}")
            if not 0 <= key_id <= MAX_KEY_ID:
                raise ValueError(f"token key id {key_id} is outside 0..{MAX_KEY_ID}")
            if key_id in secrets:
                raise ValueError(f"token key id {key_id} is listed twice")
            if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
                raise ValueError(
                    f"token key {key_id} must be at least {MIN_SECRET_BYTES} bytes of secret"
                )
            secrets[key_id] = _Hmac(bytes(secret))
        self._secrets = secrets
        self._signing_id = keys[0][0]
        # The tokens that verified, each with its case number: a conversation's replies carry
        # its token again and again, checked by its MAC once (an HMAC and the token's parse:
        # some 27,000 instructions of the ~480,000 of a reply resolved by its Subject's
        # token). Only genuine tokens are kept: a forged one is checked every time.
        self._verified: dict[str, int] = {}

    @property
    def signing_key_id(self) -> int:
        return self._signing_id

    @property
    def key_ids(self) -> tuple[int, ...]:
        """Every key id that verifies, the signing one first."""
        return tuple(self._secrets)

    def __repr__(self) -> str:
        return f"Keyring(key_ids={list(self._secrets)}, signing_key_id={self._signing_id})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        # Pickling would copy the secrets into wherever the pickle goes.
        raise TypeError("a Keyring cannot be pickled")

    def make(self, case_number: int) -> str:
        """The token for `case_number`, signed with the first key."""
        if isinstance(case_number, bool) or not isinstance(case_number, int):
            raise TypeError("case number must be an integer")
        if not 0 <= case_number <= MAX_CASE_NUMBER:
            raise ValueError(f"case number {case_number} is outside 0..2**64-1")
        key_id = self._signing_id
        digits = _encode_number(case_number)
        mac = _mac(self._secrets[key_id], key_id, case_number)
        return ALPHABET[key_id] + ALPHABET[len(digits)] + digits + _mac_to_symbols(mac)

    def verify(self, token: str) -> int | None:
        """The case number a genuine token carries, or None (bad shape, unknown key, bad MAC)."""
        verdict = self._judge_normalised(normalise(token))
        return verdict if isinstance(verdict, int) else None

    def judge(self, token: str) -> int | str:
        """The case number a genuine token carries, else why it fails: MALFORMED, UNKNOWN_KEY
        or BAD_MAC."""
        return self._judge_normalised(normalise(token))

    def _judge_normalised(self, text: str) -> int | str:
        number = self._verified.get(text)
        if number is not None:
            return number
        parsed = _parse_normalised(text)
        if parsed is None:
            return MALFORMED
        secret = self._secrets.get(parsed.key_id)
        if secret is None:
            return UNKNOWN_KEY  # a retired (or never known) key
        expected = _mac(secret, parsed.key_id, parsed.case_number)
        if not hmac.compare_digest(expected, parsed.mac):
            return BAD_MAC
        if len(self._verified) >= MAX_KEPT_TOKENS:
            self._verified.clear()  # bounded: a busy day's conversations, kept afresh
        self._verified[text] = parsed.case_number
        return parsed.case_number

    def resolve(self, candidates: Iterable[str], limit: int = MAX_CANDIDATES) -> TokenResult:
        """The first candidate that verifies, in order, looking at no more than `limit`.

        Candidates that are not token-shaped are skipped without counting as invalid; the
        iterable is consumed lazily, so scanning stops at the first valid token.
        """
        failures: tuple[str, ...] = ()  # the usual: none, and no list made for them
        for seen, candidate in enumerate(candidates):
            if seen >= limit:
                break
            if not is_token_shaped(candidate):
                continue
            text = normalise(candidate)  # once: verified and returned in this form
            verdict = self._judge_normalised(text)
            if isinstance(verdict, int):
                return TokenResult(verdict, text, failures)
            failures += (verdict,)
        return TokenResult(None, None, failures)


# --- Rendering -------------------------------------------------------------------------------


def check_template(template: str) -> None:
    """Raise ValueError unless `template` has one ``{token}`` between non-blank literals.

    Both literals are needed: they are what finds the token again in text that was wrapped.
    """
    if template.count(PLACEHOLDER) != 1:
        raise ValueError(f"the token template must contain {PLACEHOLDER} exactly once")
    before, after = template.split(PLACEHOLDER)
    if not before.strip() or not after.strip():
        raise ValueError(
            "the token template needs text on both sides of {token}, e.g. ' [ref:{token}]'"
        )
    if any(c in "\r\n" for c in template):
        raise ValueError("the token template must be on one line")
    if any(c in _SHAPE_CHARS for c in after.strip()[:1]):
        raise ValueError("the text after {token} must not start with a letter or digit")


# Full-width forms (U+FF01-U+FF5E) of the ASCII characters U+0021-U+007E, and the ideographic
# space: a CJK input method in full-width mode writes the brackets, colon, letters and digits of
# a retyped or pasted tag so (`［ref：TOKEN］`); NFKC maps each to its ASCII character, one code
# point to one, so positions in the text stay where they are. The brackets an input method
# writes for `[` `]` in its default punctuation mode are read so too, though NFKC keeps them: a
# Chinese one's `【` `】` (what Chinese writers call the full-width square brackets), a
# Japanese one's `「` `」`, and `〔` `〕` among its conversions (`【ref：TOKEN】`); and a Chinese
# one's `《` `》` for `<` `>`. The token is signed: a bracket read leniently names no case
# the token does not.
_FULLWIDTH_OFFSET = 0xFEE0
_IME_BRACKETS = {"[": "【「〔", "]": "】」〕", "<": "《", ">": "》"}
# Each ASCII character's other forms.
_WIDE_FORMS = {chr(c): chr(c + _FULLWIDTH_OFFSET) + _IME_BRACKETS.get(chr(c), "")
               for c in range(0x21, 0x7F)}
_FULLWIDTH = str.maketrans({wide: c for c, forms in _WIDE_FORMS.items() for wide in forms})


def _literal(text: str) -> str:
    """A pattern for `text` that also matches the other forms of each of its characters."""
    parts = []
    for c in text:
        if "!" <= c <= "~":
            parts.append(f"[{re.escape(c + _WIDE_FORMS[c])}]")
        else:
            parts.append(re.escape(c))
    return "".join(parts)


@lru_cache(maxsize=16)
def tag_pattern(template: str) -> re.Pattern[str]:
    """Our tag around anything token-shaped (a token's length in letters and digits, blanks
    between them as clients rewrap), in any case: what is removed when a Subject is re-tagged
    or compared. A customer's own `[Ref: 4711]` is no token. Compiled once per template."""
    before, after = template.strip().split(PLACEHOLDER)
    # Between the symbols, the blanks `find_tokens` reads there (`_BLANKS`), or a tag it finds
    # would stay beside the new one.
    blank = f"[{re.escape(_BLANKS)}]*+"
    symbols = (rf"{blank}(?:[0-9A-Za-z\uff10-\uff19\uff21-\uff3a\uff41-\uff5a]"
               rf"{blank}){{{MIN_LENGTH},{MAX_LENGTH}}}")
    # The blanks before the tag go with it; matched from the start of their run only, or a
    # long run of blanks is rescanned from each of its positions (quadratic).
    # The literals' own blanks next to the token are left to `symbols` (` [ref: {token} ]`).
    def literal(text: str) -> str:
        """Blanks between its characters too, as `find_tokens` reads them; some where it
        has white space of its own."""
        words = (blank.join(_literal(c) for c in word) for word in text.split())
        return f"{blank}(?<=[\\s{re.escape(_BLANKS)}])".join(words)
    return re.compile(rf"(?<!\s)\s*+{literal(before.rstrip())}{symbols}"
                      rf"{literal(after.lstrip())}", re.I)


def subject_tag(token: str, template: str = DEFAULT_TEMPLATE) -> str:
    """The text appended to a Subject, e.g. ``" [ref:TOKEN]"``."""
    check_template(template)
    return template.replace(PLACEHOLDER, token)


def anchor(token: str, domain: str) -> str:
    """The signed case anchor for References, ``<TOKEN.case@DOMAIN>``."""
    if not is_token_shaped(token):
        raise ValueError("not a token")
    if not domain or any(c in domain for c in "<>@ \t\r\n"):
        raise ValueError(f"unusable anchor domain {domain!r}")
    return f"<{token}{_ANCHOR_SUFFIX}@{domain}>"


def token_from_anchor(msgid: str) -> str | None:
    """The (normalised, unverified) token in an anchor Message-ID, or None if it is not one.

    Accepts the ID with or without angle brackets, in any case.
    """
    text = msgid.strip().strip("<>")
    local, at, _domain = text.rpartition("@")
    if not at or not local.lower().endswith(_ANCHOR_SUFFIX):
        return None
    candidate = local[: -len(_ANCHOR_SUFFIX)]
    return normalise(candidate) if is_token_shaped(candidate) else None


# --- Scanning --------------------------------------------------------------------------------


_SYMBOL_RUN = re.compile(r"[0-9A-Za-z]+")
# Blanks a token may be broken by: HTML mail turns spaces into no-break spaces (&nbsp;) and
# lets long words wrap at zero-width spaces, soft hyphens (&shy;) and joiners, a CJK input
# method writes the ideographic space (U+3000), and Hebrew, Arabic and Persian text around
# our left-to-right tag gets Unicode's bidirectional controls (`BIDI_CONTROLS`) inside it;
# the signature keeps this leniency safe.
_BLANKS = " \t\u00a0\u202f\u3000\u200b\ufeff\u00ad\u200c\u200d\u2060" + BIDI_CONTROLS
# Quote marks: ">" (RFC 3676), and "|", which some clients and users set as their quote
# prefix ("| text", "| | text").
_QUOTE_CHARS = ">|"
_QUOTE_PREFIX = _BLANKS + _QUOTE_CHARS
_QUOTE_CLASS = re.escape(_QUOTE_CHARS)  # the marks inside a pattern's character class


@dataclass(frozen=True)
class _Bracket:
    opening: re.Pattern[str]
    # The same, each character also in its full-width form: for text that holds such forms
    # (a character class per character is several times slower to search than the literal).
    opening_wide: re.Pattern[str]
    closing: str  # lower case
    # The other forms of the opening literal's characters, any letter case: where the text
    # holds none, the literal's own pattern finds every opening (CJK text holds full-width
    # parentheses and `「」` quotes, rarely a full-width `［ｒｅｆ：`).
    wide_chars: re.Pattern[str] | None

    def is_wide(self, text: str) -> bool:
        """Whether `opening_wide` must search `text`."""
        return not (text.isascii() or self.wide_chars is None
                    or self.wide_chars.search(text) is None)

    def openings(self, text: str) -> Iterator[re.Match[str]]:
        return (self.opening_wide if self.is_wide(text) else self.opening).finditer(text)


# What `_read_candidate` skips between a token's symbols, as a pattern for the opening literal
# ("[ref:"), which clients wrap alike (Apple Mail's format=flowed delsp=yes breaks "[re" /
# "f:"): blanks (any white space but a line break, too), and line breaks, each followed by a
# quote prefix. Possessive, and every character fits one class only: linear.
_LITERAL_BLANKS = re.escape("".join(sorted(
    set(_BLANKS) | {chr(i) for i in range(0x3001) if chr(i).isspace()} - {"\r", "\n"})))
_SEPARATORS = rf"[{_LITERAL_BLANKS}]*+(?:[\r\n][{_LITERAL_BLANKS}{_QUOTE_CLASS}]*+)*+"


@lru_cache(maxsize=16)
def _bracket(template: str) -> _Bracket:
    check_template(template)
    before, after = template.split(PLACEHOLDER)
    # Separators may break the literal anywhere; where it has white space of its own, there
    # must be some.
    def pattern(literal: Callable[[str], str]) -> re.Pattern[str]:
        words = [_SEPARATORS.join(literal(c) for c in word) for word in before.split()]
        return re.compile(rf"(?=[\s{_LITERAL_BLANKS}]){_SEPARATORS}".join(words),
                          re.IGNORECASE)
    # The second: each character also in its full-width form (`_FULLWIDTH`).
    wide = "".join(sorted({form for c in before if "!" <= c <= "~"
                           for form in _WIDE_FORMS[c.lower()] + _WIDE_FORMS[c.upper()]}))
    return _Bracket(pattern(re.escape), pattern(_literal), after.strip().lower(),
                    re.compile(f"[{re.escape(wide)}]") if wide else None)


def _read_candidate(text: str, start: int, closing: str) -> str | None:
    """The token-shaped text between `start` and the closing literal, separators removed."""
    # The usual case, a token written in one piece, without the loop below: it would collect
    # the same run of symbols (the closing literal starts with no symbol) and stop there.
    run = _SYMBOL_RUN.match(text, start)
    if run is not None:
        after = run.end()
        if after - start <= MAX_LENGTH and text[after : after + len(closing)].lower() == closing:
            return run.group() if is_token_shaped(run.group()) else None
    symbols: list[str] = []
    end = min(len(text), start + MAX_SPAN)
    i = start
    while i < end:
        c = text[i].translate(_FULLWIDTH)
        if (c.lower() == closing[0]
                and text[i : i + len(closing)].translate(_FULLWIDTH).lower() == closing):
            return "".join(symbols) if is_token_shaped("".join(symbols)) else None
        if c in _SHAPE_CHARS:
            if len(symbols) >= MAX_LENGTH:
                return None
            symbols.append(c)
            i += 1
        elif c in _BLANKS:
            i += 1
        elif c in "\r\n":
            i += 1
            # A wrapped line in a quoted reply starts with a quote prefix: "> ", ">> ", "> > ",
            # "| " (a "|" that is the closing literal's first character ends the token: a
            # template such as "|ref:{token}|"; a ">" never does, as before "|" was read,
            # or "<ref:{token}>" would lose a token wrapped in a ">"-quoted reply).
            while i < end and text[i] in _QUOTE_PREFIX and not text[i] == "|" == closing[0]:
                i += 1
        else:
            return None
    return None


def decoded_subject_tokens(subject: str, template: str = DEFAULT_TEMPLATE) -> Iterator[str]:
    """Candidates in the RFC 2047-decoded Subject (clients re-encode a whole non-ASCII subject,
    our tag included), newest first: outbound appends its tag after an encoded one it cannot
    remove. Nothing (and no decoding) for a Subject without encoded words. Search the Subject
    as written first, with `find_tokens`. A word in a charset Python does not know is read as
    a body part so labelled is (`subject.decode_subject`)."""
    decoded = decoded_if_encoded(unfold(subject), read_unknown=True)
    if decoded is not None:
        yield from reversed(list(find_tokens(decoded, template)))


def find_tokens(text: str, template: str = DEFAULT_TEMPLATE) -> Iterator[str]:
    """Token-shaped candidates in the template's bracket form, from the top, normalised.

    The candidates are not verified: pass them to `Keyring.resolve` (or `verify`).
    """
    # Its own loop, not a view of find_tokens_at: every inbound Subject comes through here.
    bracket = _bracket(template)
    for match in bracket.openings(text):
        candidate = _read_candidate(text, match.end(), bracket.closing)
        if candidate is not None:
            yield normalise(candidate)


def last_token(text: str, template: str = DEFAULT_TEMPLATE) -> str | None:
    """The last candidate `find_tokens` yields, or None: without reading every candidate
    before it when the template allows (`_candidates_pattern`). Outbound stamping asks it of
    a whole part (up to 16 MB): 2 million `[ref:` openers before our token took 2.2 s read
    one by one, each a step of a Python loop."""
    bracket = _bracket(template)
    pattern = _candidates_pattern(template, bracket.is_wide(text))
    if pattern is None:
        found = deque(find_tokens(text, template), maxlen=1)
        return found[0] if found else None
    # Where a candidate may start (a superset of where one reads, exactly those for a
    # closing literal of one character) is found by the regular expression engine, in
    # windows from the end back: openings cannot overlap, so those found from a window's
    # start are all there are. Each window's search runs on to the end of the text (a
    # search cannot be told to stop, and a shorter text would hide what a lookahead sees):
    # windows eight times the last, the rest merged into the last but one when it is
    # shorter, keep that within 1.3 times one search of it all.
    end, size = len(text), _LAST_WINDOW
    while end > 0:
        begin = end - size
        if begin < size:  # what is left before it: the last window, not one more search
            begin = 0
        starts = []
        for match in pattern.finditer(text, begin):
            if match.start() >= end:
                break
            starts.append(match.end())
        for start in reversed(starts):
            candidate = _read_candidate(text, start, bracket.closing)
            if candidate is not None:
                return normalise(candidate)
        end, size = begin, size * 8
    return None


_LAST_WINDOW = 1 << 14  # characters `last_token` searches first, from the end


_SHAPE_CLASS = "0-9A-Za-z\uff10-\uff19\uff21-\uff3a\uff41-\uff5a"  # ASCII and full width


@lru_cache(maxsize=16)
def _candidates_pattern(template: str, wide: bool) -> re.Pattern[str] | None:
    """The template's opening literal followed by what `_read_candidate` reads as a
    candidate up to the first character of the closing literal: a token's number of symbols,
    separated by blanks and line breaks with their quote prefixes, within `MAX_SPAN`.
    None when the openings could overlap or the closing literal's first character could be
    read as part of a candidate (then `finditer` of this pattern could find other openings
    than `find_tokens` does): the first character of the opening literal must be ASCII
    punctuation found nowhere else in it, and so must the closing literal's first; neither may
    be a quote mark (`_QUOTE_CHARS`), which a candidate's wrapped lines may start with."""
    before, after = template.split(PLACEHOLDER)
    opening, closing = before.strip(), after.strip()
    first, close = opening[:1], closing[:1]
    punctuation = [c for c in (first, close)
                   if len(c) == 1 and c.isascii() and not c.isalnum() and not c.isspace()]
    if (len(punctuation) < 2 or any(mark in (first, close) for mark in _QUOTE_CHARS)
            or first in opening[1:].translate(_FULLWIDTH)):
        return None
    bracket = _bracket(template)
    blanks = re.escape(_BLANKS)
    unit = rf"(?:[{blanks}]|[\r\n][{blanks}{_QUOTE_CLASS}]*+)"
    closes = f"[{re.escape(close + _WIDE_FORMS[close])}]"
    reads = (rf"(?=[{_SHAPE_CLASS}{blanks}\r\n{_QUOTE_CLASS}]{{0,{MAX_SPAN - 1}}}+{closes})"
             rf"(?={unit}*+(?:[{_SHAPE_CLASS}]{unit}*+){{{MIN_LENGTH},{MAX_LENGTH}}}+{closes})")
    opening_pattern = bracket.opening_wide if wide else bracket.opening
    return re.compile(opening_pattern.pattern + reads, opening_pattern.flags)


def find_tokens_at(text: str, template: str = DEFAULT_TEMPLATE) -> Iterator[tuple[int, str]]:
    """`find_tokens` with where each candidate's bracket opens in `text`."""
    bracket = _bracket(template)
    for match in bracket.openings(text):
        candidate = _read_candidate(text, match.end(), bracket.closing)
        if candidate is not None:
            yield match.start(), normalise(candidate)
