"""Subject lines: reply/forward prefixes, list tags, and a normal form for subject matching.

`strip_prefixes` removes the run of reply/forward prefixes at the start of a subject, in the forms
mail clients write in many languages, repeated and mixed (`Re: AW: WG: x` -> `x`). A prefix is a
known word, an optional counter (`[2]` or `(2)`), an optional dot, optional blanks and a colon
(ASCII `:` or full-width `：`). Without the colon nothing is stripped, so `Re-installation`,
`Recall` and `Re 5` stay. `Ref:` is kept on purpose (it often introduces a reference number);
only the French `Réf.:` counts as a prefix.

List tags: a bracketed tag is stripped only inside that leading run (`[users] Re: x`,
`Re: [users] x`), never later in the subject, and only when it looks like a list name (letters
and `-_.+`, no digits, no blanks, at most 40 chars). So `[EXTERNAL]` and `[python-dev]` go, while
`[Ticket#123]`, `[Case C-000123]`, `[ref:...]` and `[PATCH 1/2]` stay: those identify something.
Spam filters' tags go in that run too, in the forms their defaults write besides `[SPAM]`:
Amavis's `***SPAM***` (also spaced, `*** SPAM ***`), SpamAssassin's `*****SPAM*****`,
MailScanner's `{Spam?}`, Cisco's `[SUSPECTED SPAM]` and `[SUSPICIOUS MESSAGE]` (a bracketed
name may hold blanks between its words and end in `?` or `!`: Barracuda's `[SPAM?]`), and so
do the tags a mail flow rule puts on mail from outside (`[EXTERNAL]`, `*EXTERNAL*`,
`EXTERNAL:`, `#External:`). A filter tags a customer's mail it lets through, so a follow-up
that got the tag and one that did not are one subject.

`untagged` is the Subject as the readers of its first words see it (an out-of-office phrase,
a calendar reply's "Accepted:", a delivery notice's "Undeliverable"): decoded, after those
tags, which a gateway in front of us puts before them.

The stripping is case-insensitive and bounded (at most 50 prefixes/tags), so hostile input stays
linear.
"""

from __future__ import annotations

import binascii
import itertools
import re
import unicodedata
from collections.abc import Iterator
from typing import NamedTuple

from . import mime
from .message import unfold
from .text_decoding import decode_text

# Reply and forward words. Sources: the peers' lists (Zammad, Znuny, OTRS-CE #14 for `VS`) and
# the prefixes localised Outlook, Thunderbird and webmail clients write.
_WORDS = (
    # English and many others
    "re", "fw", "fwd",
    # German
    "aw", "wg",
    # Dutch
    "antw", "doorst",
    # Scandinavian and Finnish: svar, videresendt, vidarebefordrat, vastaus, välitetty
    "sv", "vs", "vb", "vl",
    # Italian: risposta, riferimento, inoltro
    "r", "rif", "i",
    # French: transféré, référence
    "tr", "réf",
    # Spanish and Portuguese: reenviado, resposta, encaminhado
    "rv", "res", "enc",
    # Greek
    "απ", "σχετ", "πρθ",
    # Hebrew: reply, answer; forward, forwarded
    "תגובה", "השב", "תשובה", "העבר", "הועבר",
    # Arabic (Outlook): reply, forward (also without the hamza, as typed)
    "رد", "إعادة توجيه", "اعادة توجيه",
    # Chinese (simplified and traditional)
    "回复", "回覆", "答复", "答覆", "转发", "轉發", "转寄", "轉寄",
    # Japanese: reply, forward (mobile carriers' and webmail clients; Outlook writes RE:)
    "返信", "転送",
    # Korean: reply, forward; reply as Naver, Daum and phone mail apps write it
    "회신", "전달", "답장",
    # Turkish: yanıt, ilet
    "ynt", "ilt", "İlt",
    # Polish: odpowiedź, przekazanie dalej
    "odp", "pd",
    # Czech and Slovak: přeposlat
    "př",
    # Slovenian and Croatian: odgovor
    "odg",
    # Hungarian
    "vá", "továbbítás",
    # Latvian, Welsh and others
    "ang", "atb", "yml",
    # Russian (Mail.ru, Yandex and other webmail clients)
    "ответ", "отв", "пересл",
    # Vietnamese: reply, forward
    "trả lời", "chuyển tiếp",
    # Indonesian and Malay: reply, forward (Outlook abbreviates them)
    "balas", "bls", "teruskan", "trs",
    # Thai: reply, forward
    "ตอบกลับ", "ส่งต่อ",
    # Full-width Latin as written by some East Asian clients
    "ｒｅ", "ｆｗ", "ｆｗｄ",
)
# Unicode's Bidi_Control characters (UAX #9): LRM, RLM, ALM, the embeddings and overrides
# (U+202A-U+202E) and the isolates (U+2066-U+2069). Hebrew and Arabic clients and users put
# them around a left-to-right `Re:` or tag in right-to-left text; they are invisible, so they
# read as blanks.
BIDI_CONTROLS = "\u200e\u200f\u061c\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
# The words are written composed (NFC), as `normalise` (NFKC) reads what a client wrote.
_WORD_ALT = "|".join(re.escape(w) for w in sorted(set(_WORDS), key=len, reverse=True))
# What a Subject's words and tags are set apart by.
_BLANKS = " \t\u00a0\u3000" + BIDI_CONTROLS
_BLANK = f"[{_BLANKS}]"
# A counter, `[2]` or `(2)`, in ASCII or full width (`［２］`, as a CJK input method types it).
_COUNTER = r"(?:[\[［]\d{1,4}[\]］]|[(（]\d{1,4}[)）])"
_PREFIX = re.compile(
    rf"{_BLANK}*(?:{_WORD_ALT}){_COUNTER}?\.?{_BLANK}*[:：]{_BLANK}*",
    re.IGNORECASE,
)
_LIST_TAG = re.compile(
    # A bracketed name: a list's, or a gateway's words ("[SUSPICIOUS MESSAGE]", "[SPAM?]").
    rf"{_BLANK}*(?:\[[^\W\d](?:[^\W\d]|[-.+]|{_BLANK}(?=[^\W\d])){{0,39}}[?!]?\]"
    # Spam filters' and gateways' starred words, MailScanner's braces, a rule's "EXTERNAL:".
    rf"|\*{{1,5}}{_BLANK}?(?:spam|external|ext){_BLANK}?\*{{1,5}}|\{{spam\?\}}"
    rf"|#?(?:external|ext){_BLANK}*[:：]){_BLANK}*",
    re.IGNORECASE)
_MAX_STRIPS = 50
_SPACES = re.compile(r"\s+")


def strip_prefixes(subject: str, *, list_tags: bool = True) -> str:
    """The subject without its leading reply/forward prefixes (and list tags, see module doc).

    Folding is undone; the rest of the text is returned as it was (case, inner spacing).
    """
    return _stripped(unfold(subject), (_PREFIX, _LIST_TAG) if list_tags else (_PREFIX,)).strip()


# What a `_LIST_TAG` match starts with after its blanks (no other character matches `e` under
# re.IGNORECASE): most Subjects start otherwise, and are not matched against the pattern.
_TAG_FIRST = frozenset("[*{#eE")


def strip_list_tags(subject: str) -> str:
    """The subject without the list tags before it (`[Support] `, `_LIST_TAG`): what a list
    that relays mail puts in front (Mailman's default `subject_prefix`)."""
    if subject.lstrip(_BLANKS)[:1] not in _TAG_FIRST:
        return subject
    return _stripped(subject, (_LIST_TAG,))


def untagged(subject: str) -> str:
    """A Subject field's decoded text without the list, gateway and spam tags before it
    (`strip_list_tags`): what the readers of its first words match (`autoreply`,
    `calendar_replies`, `feedback`). A gateway in front of us tags mail from outside
    (`[EXTERNAL] Accepted: ...`, `[SUSPECTED SPAM] Undeliverable: ...`), and a reply's first
    words after the tag are the client's or the mail system's."""
    return strip_list_tags(decode_subject(subject))


def _stripped(text: str, leading: tuple[re.Pattern[str], ...]) -> str:
    """`text` without the run of `leading` matches it starts with (at most `_MAX_STRIPS`)."""
    pos = 0
    for _ in range(_MAX_STRIPS):
        for pattern in leading:
            m = pattern.match(text, pos)
            if m is not None:
                pos = m.end()
                break
        else:  # none matched: the run ends here
            break
    return text[pos:]


# At most this much of a Subject is decoded (to look for a token or a reference, too), so the
# work on a hostile megabyte Subject stays small.
DECODE_MAX = 8192


def decode_subject(subject: str, read_unknown: bool = False) -> str:
    """RFC 2047 decoding that never fails: each encoded word is decoded on its own (RFC 2047
    §6), so a word in a charset we do not know, or whose base64 is broken, stays as written
    while the others are decoded. With `read_unknown`, a word whose charset label Python does
    not know (Exchange's `_iso-2022-jp$ESC`, `unknown-8bit`) is read as a body part so
    labelled is (`text_decoding.decode_text`): an ASCII tag reads alike in every charset mail
    uses, where B encoding hid it from the token search, routing rules and subject-match.
    Bytes a word's charset cannot decode become U+FFFD. Encoded words past the first
    `DECODE_MAX` characters stay as written.

    Raw 8-bit bytes (carried as surrogate escapes) that are not UTF-8 become U+FFFD.
    Raw ISO-2022-JP (`_iso_2022`) is read as such.
    """
    text = unfold(subject)
    if "=?" in text:
        text = _decoded(text[:DECODE_MAX], read_unknown) + text[DECODE_MAX:]
    if "\x1b" in text:
        text = _ISO_2022_RUN.sub(_iso_2022, text[:DECODE_MAX]) + text[DECODE_MAX:]
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
        raw = text.encode("utf-8", "replace")
    return raw.decode("utf-8", "replace")


# A run of ISO-2022-JP text: from an escape that designates a character set (ESC $ @, ESC $ B,
# ESC $ ( D, ESC $ A, ESC $ ( C for JIS X 0208, 0212, GB 2312, KS C 5601; ESC ( B, ESC ( J,
# ESC ( I for ASCII, JIS-Roman, half-width katakana) up to the last such escape's text.
_ISO_2022_RUN = re.compile(r"\x1b(?:\$[@AB]|\$\([CD]|\([BIJ])[^\x1b]*"
                           r"(?:\x1b(?:\$[@AB]|\$\([CD]|\([BIJ])[^\x1b]*)*")


def _iso_2022(run: re.Match[str]) -> str:
    """Raw ISO-2022-JP text, decoded: Japanese mailers and apps of old write a Subject so,
    without RFC 2047 (RFC 1468 §3 asks for encoded words). Its escapes were no text, and
    Thread-Topic showed `$B%W%j%s%?!<(B` for プリンター. ISO-2022-JP-2 reads its
    supersets' escapes too."""
    text = run.group()
    if not text.isascii():  # 8-bit bytes are no ISO-2022 (surrogate escapes, decoded text)
        return text
    return text.encode("ascii").decode("iso2022_jp_2", "replace")


# RFC 2047 §2: an encoded word is at most 75 characters; "=?utf-8?q?" and "?=" take 12.
_WORD_ROOM = 75 - 12
_Q_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!*+-/")


def _q_char(char: str) -> str:
    if char in _Q_SAFE:
        return char
    if char == " ":
        return "_"
    return "".join(f"={byte:02X}" for byte in char.encode("utf-8", "replace"))


def encode_words(text: str, first: int = 75) -> str:
    """`text` as UTF-8 Q encoded words of at most 75 characters each (the first at most
    `first`: what the field's name leaves of its line), never splitting a character,
    separated by blanks (where a caller folds; RFC 2047 §2, §5 rule 3)."""
    words: list[str] = []
    word = ""
    room = min(first, 75) - (75 - _WORD_ROOM)
    for char in text:
        encoded = _q_char(char)
        if word and len(word) + len(encoded) > room:
            words.append(word)
            word, room = "", _WORD_ROOM
        word += encoded
    words.append(word)
    return " ".join(f"=?utf-8?q?{w}?=" for w in words if w)


# An encoded word (RFC 2047 §2): charset, an RFC 2231 §5 language (=?UTF-8*en?Q?...?=),
# encoding, encoded text. The text is read as the stdlib decoder read it, up to the first `?=`,
# raw `?` and blanks included: PHP's `'=?UTF-8?Q?'.quoted_printable_encode($s).'?='` writes
# `=?UTF-8?Q?Is it ok??=`. It never runs into a following `=?` (an `=` before the closing `?=`
# is text): an unclosed word stops at the next word, so the scan stays linear.
_ENCODED_TEXT = r"(?:[\t -<>@-~]++|\?(?!=)|=(?!\?(?!=)))*+"
ENCODED_WORD = rf"=\?([^?*\s]+)(?:\*[^?\s]*)?\?([QqBb])\?({_ENCODED_TEXT})\?="
_WORD_PARTS = re.compile(ENCODED_WORD)
# A run of encoded words with blanks between them: the blanks are no text (RFC 2047 §6.2).
_ENCODED_RUN = re.compile(rf"{ENCODED_WORD}(?:\s*{ENCODED_WORD})*")


def _decoded(text: str, read_unknown: bool) -> str:
    """`text` with its encoded words decoded; the text around them stays as written (raw
    UTF-8 beside an encoded word, as SMTPUTF8 clients write, too). Leniently, as the stdlib
    (`email.header`) reads them: a word longer than 75 characters, or with no blank between it
    and the text around it, is decoded too (RFC 2047 §2, §5 (1) make neither a word)."""
    out: list[str] = []
    end = 0
    for run in _ENCODED_RUN.finditer(text):
        out.append(text[end:run.start()])
        out.append(_decoded_run(run.group(), read_unknown))
        end = run.end()
    out.append(text[end:])
    return "".join(out)


class _Word(NamedTuple):
    start: int
    end: int
    codec: str | None  # None: the word cannot be decoded
    data: bytes
    label: str = ""  # a charset label Python does not know, read by `decode_text` (no codec)


def _decoded_run(run: str, read_unknown: bool) -> str:
    """A run of encoded words, decoded. Neighbouring words of one charset are decoded together
    (clients split a character over two words); words that cannot be decoded stay as written,
    with the blanks around them."""
    out: list[str] = []
    end = 0
    kept = False
    for (codec, label), group in itertools.groupby(_words(run, read_unknown),
                                                   key=lambda word: (word.codec, word.label)):
        words = list(group)
        start = words[0].start
        text = _read(b"".join(word.data for word in words), codec, label)
        if text is None or kept:
            out.append(run[end:start])
        out.append(run[start:words[-1].end] if text is None else text)
        kept, end = text is None, words[-1].end
    return "".join(out)


def _read(data: bytes, codec: str | None, label: str) -> str | None:
    """Encoded words' bytes as text, or None when they stay as written."""
    if codec is not None:
        return data.decode(codec, "replace")
    return decode_text(data, label) if label else None


def _words(run: str, read_unknown: bool) -> Iterator[_Word]:
    for word in _WORD_PARTS.finditer(run):
        codec = mime.codec_for(word.group(1))
        data = _word_bytes(word.group(2), word.group(3))
        if data is not None and codec is None and read_unknown:
            yield _Word(word.start(), word.end(), None, data, word.group(1))
        elif codec is None or data is None:
            yield _Word(word.start(), word.end(), None, b"")
        else:
            yield _Word(word.start(), word.end(), codec, data)


_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=]")


def _word_bytes(encoding: str, encoded: str) -> bytes | None:
    """An encoded word's bytes, or None when its base64 is broken."""
    if encoding in "Qq":
        return binascii.a2b_qp(encoded, header=True)
    encoded = _NOT_BASE64.sub("", encoded)  # blanks and a raw "?" would skew the padding
    try:
        return binascii.a2b_base64(encoded + "=" * (-len(encoded) % 4))
    except binascii.Error:
        return None


def variants(subject: str) -> tuple[str, ...]:
    """The Subject as written (unfolded), then decoded if it holds encoded words: where to
    look for a case number or another system's reference.

    Clients that reply to a non-ASCII subject often re-encode all of it, our ASCII tag
    included, so a tag may be visible only once decoded. The text as written comes first: a
    tag appended in clear is the newest (outbound appends ours so when the encoded part holds
    another case's). Words of a charset label Python does not know are read as the token
    search reads them (Exchange's `_iso-2022-jp$ESC`): a reference is ASCII, read alike.
    """
    text = unfold(subject)
    decoded = decoded_if_encoded(text, read_unknown=True)
    return (text,) if decoded is None else (text, decoded)


def decoded_if_encoded(text: str, read_unknown: bool = False) -> str | None:
    """Unfolded `text` RFC 2047-decoded (`decode_subject`), or None when decoding changes
    nothing. Only the first `DECODE_MAX` characters: a hostile 100 KB subject would cost a
    tenth of a second."""
    if "=?" not in text:
        return None
    head = text[:DECODE_MAX]
    decoded = decode_subject(head, read_unknown)
    return decoded if decoded != head else None


def normalise(subject: str, token_re: re.Pattern[str] | str | None = None) -> str:
    """The form used to compare subjects: decoded (`decode_subject`, also words of charset
    labels Python does not know: Exchange re-encodes a Japanese reply's Subject as
    `_iso-2022-jp$ESC`), in Unicode's compatibility form (NFKC), without bidirectional
    controls, the token tag removed, prefixes stripped, whitespace collapsed, case-folded.

    NFKC makes one subject of what a reply's charset or client changes but a reader does
    not see: ISO-2022-JP cannot carry half-width katakana (`ﾌﾟﾘﾝﾀｰ`), so a Japanese reply
    writes them full width (`プリンター`); windows-1258 writes Vietnamese tone marks apart
    (`Lô\u0303i`, NFKC `Lỗi`); a CJK input method types full-width letters and digits. A
    Hebrew or Arabic client's marks (`BIDI_CONTROLS`) are invisible.

    `token_re` (our tag: `token.tag_pattern(template)`) is removed everywhere in the subject,
    before prefixes are stripped, so a tag in front of `Re:` does not hide the prefix.
    """
    text = unicodedata.normalize("NFKC", decode_subject(subject, read_unknown=True))
    text = text.translate(_NO_BIDI)
    if token_re is not None:
        text = re.sub(token_re, " ", text)
    text = strip_prefixes(text)
    # Case folding can leave what NFKC composes (`ΐ`): again, so a second pass changes nothing.
    return unicodedata.normalize("NFKC", _SPACES.sub(" ", text).strip().casefold())


_NO_BIDI = dict.fromkeys(map(ord, BIDI_CONTROLS))
