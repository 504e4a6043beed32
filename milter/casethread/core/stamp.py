"""Body stamping (DESIGN §3.4): a hidden tag in the main text/html part, a token line at the end
of the main text/plain part, changing nothing else.

Works on the raw body through `mime.parse`: `plan_stamp` (or `plan_message_stamp`, given the
header fields) returns splices (offsets into the body and the bytes that replace them) and, per
target, what happened and why. Every byte outside a splice is the original byte; an adapter can
stream a spooled body through `iter_spliced` without holding it twice.

A part is changed only when its content survives a strict round trip: transfer decoding,
charset decoding, then re-encoding with the same charset and transfer encoding gives back the
original bytes for everything but the insertion. The result is checked by decoding it again;
any doubt skips the part and says why in its `Outcome`.
"""

from __future__ import annotations

import binascii
import bisect
import functools
import html
import re
from collections.abc import Iterable, Iterator
from typing import Literal, Protocol

from . import mime
from .frozen import frozen
from .message import Data, Header, unfold
from .mime import Part
from .settings import StampSettings
from .token import DEFAULT_TEMPLATE, PLACEHOLDER, check_template, find_tokens, normalise

# Bigger text parts are left alone: decoding them costs memory and time for no reader's benefit.
MAX_PART_BYTES = 16 << 20

# Never rewritten, wherever they are: rewriting would break a signature or is meaningless.
_SEALED_TYPES = frozenset(
    {"multipart/signed", "multipart/encrypted", "application/pkcs7-mime",
     "application/x-pkcs7-mime"}
)
# The multiparts not searched for the main text: their parts are a report, digested or signed
# mail, a file's forks, form fields, byte ranges, translations or frames, no body of ours.
# Every other one is: mixed, alternative, related, parallel, and any subtype a reader does not
# know, which RFC 2046 §5.1.7 has it read as multipart/mixed (Outlook's `multipart/*`).
_NOT_CONTAINERS = frozenset({
    "multipart/report", "multipart/digest", "multipart/signed", "multipart/encrypted",
    "multipart/appledouble", "multipart/form-data", "multipart/byteranges",
    "multipart/header-set", "multipart/multilingual", "multipart/voice-message",
    "multipart/x-mixed-replace",
})
_LABEL_MAX = 40  # characters of a charset or transfer encoding name quoted in a note
_LABEL_ESCAPES = str.maketrans({" ": "\\x20", ",": "\\x2c"})
# How 8-bit text without any charset is read: byte for byte (latin-1 maps each byte to one
# character and back), so the insertion point is found and every byte is kept.
_UNLABELLED = "latin-1"
# The byte order marks of UTF-16 (and so UTF-32's): text without a charset that starts with
# one is read in that form, in which ASCII is no single byte.
_WIDE_BOMS = (b"\xfe\xff", b"\xff\xfe", b"\x00\x00\xfe\xff")
# Codecs that switch between character sets by escapes or shifts (ISO-2022-JP, HZ): in text
# that is not valid in them, a reader may still be in a double-byte set where ASCII reads as
# something else.
_SHIFTING = ("iso2022", "hz")
_ASCII = bytes(range(128))
_MAX_LINE = 998  # RFC 5322 line limit, without CRLF, for 7bit/8bit
_QP_LINE = 76
_CLOSING_TAGS = (re.compile(r"</body\s*>", re.I), re.compile(r"</html\s*>", re.I))
_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)  # unclosed: to the end
_BLOCKQUOTE = re.compile(r"<\s*(/\s*)?blockquote\b[^<>]*>", re.I)
_RAW_TEXT = ("script", "style", "title", "textarea", "xmp", "iframe", "noembed", "noframes")
_RAW_TEXT_END = re.compile(rf"</({'|'.join(_RAW_TEXT)})\s*>", re.I)
_RAW_TEXT_START = {name: re.compile(rf"<{name}\b", re.I) for name in _RAW_TEXT}
# An armor line of inline PGP. Searched without `^` and re.M, which would try every position
# of the part (~35 us for 7 KB); the line start is checked per match instead.
_PGP_ARMOR = re.compile(r"-----BEGIN PGP (?:SIGNED )?MESSAGE-----")
# osTicket ends the text of its mail with `Ref-Mid: <its Message-ID>` and, when a reply's
# headers name none of its mail, reads the quoted line back only at the body's end (its
# pattern `Ref-Mid: ([^"\s]*)$`): our token line goes above that last line, not below it.
# Read in the part's last 2 KB only (the line and the blank lines after it).
_TRAILING_MARK_START = "Ref-Mid: "
_TRAILING_MARK = re.compile(r"Ref-Mid: [^\s\"]+[ \t]*(?:\r?\n[ \t]*)*\Z")
_TRAILING_MARK_TAIL = 2048
_SIGNATURE = "-- "  # the signature separator line (RFC 3676 §4.3, Usenet's)
_SIGNATURE_LINE = "\n" + _SIGNATURE
# The same separator in HTML, as K-9 Mail and Thunderbird for Android read it when they quote a
# reply (HtmlSignatureRemover, on by default): a text `--` and a blank or no-break space, alone
# between line breaks (`<br>`, a block element's start or end; inline tags such as Gmail's
# `<span class="gmail_signature_prefix">` may wrap it), outside <blockquote>. They drop
# everything after it in document order, to the end of the first enclosing element that keeps
# other content: a tag before </body> below Thunderbird's `<div class="moz-signature">-- <br>`
# went with it. `_HTML_DASH` finds candidates; the tags around are checked backwards/forwards.
_HTML_DASH = re.compile(r"--(?:[ \xa0]|&nbsp;|&#160;|&#x[aA]0;)")
_HTML_BLOCKS = frozenset({
    "address", "article", "aside", "blockquote", "body", "center", "dd", "details", "dir",
    "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3",
    "h4", "h5", "h6", "header", "hr", "li", "main", "menu", "nav", "ol", "p", "pre", "section",
    "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul"})
# Elements whose start tag begins more than the signature: our tag goes inside them.
_HTML_HOLDERS = frozenset({"body", "td", "th", "li", "dd", "dt"})
_HTML_TAG = re.compile(r"<(/?)\s*([A-Za-z][A-Za-z0-9]*)\b[^<>]*>")
_HTML_TAG_AFTER = re.compile(r"\s*<(/?)\s*([A-Za-z][A-Za-z0-9]*)\b[^<>]*>")
_HTML_DASH_CANDIDATES = 20  # `-- ` strings checked per part at most
_HTML_TAGS_BACK = 64  # tags looked at before a separator for a block boundary
_HTML_INLINE_TAGS = 16  # inline start tags (<span>, <font>, <b>) around a separator at most

Target = Literal["html", "text"]
Status = Literal["stamped", "already", "skipped", "absent"]


@frozen
class Splice:
    """Replace body[start:end] with data (start == end: a pure insertion)."""

    start: int
    end: int
    data: bytes


@frozen
class Outcome:
    target: Target
    status: Status
    reason: str = ""


@frozen
class StampPlan:
    splices: tuple[Splice, ...]
    outcomes: tuple[Outcome, ...]


class Unusable(Exception):
    """This part cannot be changed safely; the message says why."""


@frozen
class _Request:
    target: Target
    token: str
    template: str
    newline: bytes  # the message's, for a body with no line break at all
    max_part_bytes: int


def plan_stamp(
    top_content_type: str | None,
    top_cte: str | None,
    body: Data,
    token_html: str,
    token_text: str,
    options: StampSettings | None = None,
    *,
    top_disposition: str | None = None,
    newline: bytes = b"\r\n",
    max_part_bytes: int = MAX_PART_BYTES,
    tree: Part | None = None,
) -> StampPlan:
    """What to change in the body, and for each target why it was or was not stamped.

    `newline` is the message's line ending, used only when the body has no line break at all
    (milters see CRLF; `casethread filter` passes the file's own). `tree` is `mime.parse` of
    this body and these fields, when the caller has it already.
    """
    requests = _requests(options, token_html, token_text, newline, max_part_bytes)
    if tree is None:
        tree = mime.parse(body, top_content_type, top_cte, top_disposition)
    refusal = _refusal(tree)
    if refusal:
        return _refused(requests, refusal)
    main = main_parts(tree)
    splices: list[Splice] = []
    outcomes: list[Outcome] = []
    for request in requests:
        part = main.get(request.target)
        if part is None:
            outcomes.append(Outcome(request.target, "absent",
                                    _unreadable_type(tree, top_content_type)))
            continue
        outcome, splice = _stamp_part(body, part, request)
        outcomes.append(outcome)
        if splice is not None:
            splices.append(splice)
    return StampPlan(tuple(sorted(splices, key=lambda s: s.start)), tuple(outcomes))


def plan_message_stamp(
    headers: Iterable[Header],
    body: Data,
    token_html: str,
    token_text: str,
    options: StampSettings | None = None,
    *,
    newline: bytes = b"\r\n",
    max_part_bytes: int = MAX_PART_BYTES,
    tree: Part | None = None,
) -> StampPlan:
    """`plan_stamp` for a message's header fields: refuses when a MIME field is repeated, as
    readers may then disagree about the structure."""
    top = mime.top_fields(headers)
    if top.ambiguous:
        requests = _requests(options, token_html, token_text, newline, max_part_bytes)
        return _refused(requests, "a MIME header field is repeated")
    return plan_stamp(top.content_type, top.cte, body, token_html, token_text, options,
                      top_disposition=top.disposition, newline=newline,
                      max_part_bytes=max_part_bytes, tree=tree)


def _requests(
    options: StampSettings | None, token_html: str, token_text: str, newline: bytes,
    max_part_bytes: int,
) -> list[_Request]:
    options = options or StampSettings()
    requests: list[_Request] = []
    if options.html:
        requests.append(_Request("html", token_html, options.html_template, newline,
                                 max_part_bytes))
    if options.text:
        requests.append(_Request("text", token_text, options.text_template, newline,
                                 max_part_bytes))
    return requests


def _refused(requests: list[_Request], reason: str) -> StampPlan:
    return StampPlan((), tuple(Outcome(r.target, "skipped", reason) for r in requests))


def apply_splices(body: Data, splices: tuple[Splice, ...] | list[Splice]) -> bytes:
    return b"".join(iter_spliced(body, splices, chunk_size=max(len(body), 1)))


def iter_spliced(
    body: Data, splices: tuple[Splice, ...] | list[Splice], chunk_size: int = 1 << 20
) -> Iterator[bytes]:
    """The new body in chunks of at most `chunk_size` original bytes (splices whole)."""
    pos = 0
    for splice in sorted(splices, key=lambda s: s.start):
        yield from _chunks(body, pos, splice.start, chunk_size)
        if splice.data:
            yield splice.data
        pos = splice.end
    yield from _chunks(body, pos, len(body), chunk_size)


def _chunks(body: Data, start: int, end: int, size: int) -> Iterator[bytes]:
    for pos in range(start, end, size):
        yield body[pos : min(pos + size, end)]


def main_parts(tree: Part) -> dict[Target, Part]:
    """The first non-attachment text/html and text/plain leaves, found through multipart/mixed,
    /alternative, /related and the others a body may be made of (`_NOT_CONTAINERS`)."""
    found: dict[Target, Part] = {}
    for part in _reachable(tree):
        target = _target_of(part)
        if target is not None and target not in found:
            found[target] = part
    return found


def _reachable(part: Part) -> Iterator[Part]:
    """The part and, when it is a container we may look into, everything reachable below it."""
    yield part
    if part.kind == "multipart" and _is_container(part.mime_type):
        for child in part.children:
            yield from _reachable(child)


def _is_container(mime_type: str) -> bool:
    return mime_type.startswith("multipart/") and mime_type not in _NOT_CONTAINERS


def _target_of(part: Part) -> Target | None:
    if part.kind != "leaf" or part.is_attachment:
        return None
    if part.depth and part.end == part.start:
        # No bytes at all between two delimiter lines: most readers see no part there, and
        # stamping would make one appear.
        return None
    if part.mime_type == "text/html":
        return "html"
    if part.mime_type == "text/plain":
        return "text"
    return None


def _unreadable_type(tree: Part, top_content_type: str | None) -> str:
    """Why a body part that could be the text went unread: the first non-attachment part whose
    Content-Type does not parse (`text/html Content-Transfer-Encoding: 8bit` on one line, a
    phishing mail's), which readers take for text/plain (RFC 2045 §5.2), or for the type they
    make out of it, and no two alike. "" when there is none."""
    for part in _reachable(tree):
        if part.kind == "leaf" and not part.is_attachment and not part.mime_type:
            raw = top_content_type if part is tree else next(
                (h.value for h in part.headers if h.name.lower() == "content-type"), None)
            return f"unparsable content type {_label(unfold(raw or '').strip())}"
    return ""


def _refusal(tree: Part) -> str:
    """Why the body as a whole must not be touched, or ""."""
    if _is_sealed(tree):
        return f"{tree.mime_type} is signed or encrypted"
    for part in _reachable(tree):
        # A defect inside an attachment cannot move the delimiters around it; it does not count.
        structural = part is tree or _is_container(part.mime_type) or _target_of(part) is not None
        defects = [d for d in part.defects if d != mime.NO_BODY]
        if defects and structural:
            return f"malformed MIME ({', '.join(defects)})"
    return ""


def _is_sealed(part: Part) -> bool:
    return part.mime_type in _SEALED_TYPES or part.mime_type.startswith("application/pgp")


# --- one part -----------------------------------------------------------------------------


def _stamp_part(body: Data, part: Part, request: _Request) -> tuple[Outcome, Splice | None]:
    try:
        return _try_stamp_part(body, part, request)
    except Unusable as why:
        return Outcome(request.target, "skipped", str(why)), None


def _try_stamp_part(
    body: Data, part: Part, request: _Request
) -> tuple[Outcome, Splice | None]:
    target, token = request.target, request.token
    if not token:
        raise Unusable("no token")
    if part.end - part.body_start > request.max_part_bytes:
        raise Unusable(f"part larger than {request.max_part_bytes} bytes")
    encoding = _encoding_for(part.cte)
    raw = part.body(body)
    decoded = encoding.decode(raw)
    charset = mime.part_charset(part, decoded)
    codec, text = _read_text(decoded, charset)
    wire_newline = _wire_newline(body, part, request.newline)
    cut = _insertion_index(text, target)
    # Plain text: only what is above the cut counts, where our line goes and a reply's quote
    # keeps it; a token of ours below the signature separator (in the quote of our earlier
    # mail under an agent's signature) goes when the customer's client drops the signature.
    if _already_stamped(text[:cut], token, request.template):
        return Outcome(target, "already"), None
    if target == "text" and _inline_pgp(text):
        raise Unusable("inline PGP")
    # A quoted-printable insertion's line breaks are hard line breaks, which decode as the
    # wire's: text whose own breaks are encoded (`=0D=0A`, a fax gateway's) has no say.
    newline = (wire_newline.decode("ascii") if isinstance(encoding, _QuotedPrintable)
               else _text_newline(text, wire_newline))
    insertion = _render(request, newline)
    if target == "text" and cut < len(text) and not insertion.endswith("\n"):
        # Above a signature separator or osTicket's last line (`_TRAILING_MARK`): a template
        # without a line break at its end would join that line (`[ref:...]-- `).
        insertion += newline
    if target == "text" and _flows_on(part, text[:cut], insertion):
        insertion = newline + insertion  # an empty line ends the paragraph (RFC 3676 §4.2)
    if codec in (_UNLABELLED, "ascii") and not _ascii_at(text, cut):
        raise Unusable("insertion inside an iso-2022 shift")
    prefix, suffix = _encode_halves(text, cut, codec, decoded)
    start, end, new, added = encoding.insert(raw, len(prefix),
                                             _encode_insertion(insertion, codec, charset),
                                             wire_newline)
    _check(encoding, raw[:start] + new + raw[end:], prefix + added + suffix)
    if mime.NO_BODY in part.defects:
        # Fields run to the part's end: the token written there would be read as one more
        # header line (or a field, for a template with a colon). The empty line that ends a
        # header section goes first, after the last field's line break if it has none.
        ended = body[part.end - 1 : part.end] == b"\n"
        new = (b"" if ended else wire_newline) + wire_newline + new
    return Outcome(target, "stamped"), Splice(part.body_start + start, part.body_start + end, new)


def _label(value: str | None) -> str:
    """A sender's label as the log note quotes it: a 2 KB charset name is no note. A blank or a
    comma in it is escaped (`'quoted\\x20printable'`): the log line turns a note's blanks into
    hyphens and separates notes with commas, and the label must still read as it was sent."""
    return repr((value or "")[:_LABEL_MAX]).translate(_LABEL_ESCAPES)


def _already_stamped(text: str, token: str, template: str) -> bool:
    """The text holds our token, and no other token after it. A reply quoting the mail of
    another case (the app moved the conversation back) has ours deeper in the quote and that
    case's after it: it needs our line at its end, one quote level above the other's.
    Tokens are found in the form this part's template writes them (another case's were
    written by the same template), else in the default bracket form."""
    if token.lower() not in text.lower():
        return False
    template = template.strip()  # the text line's own line breaks
    try:
        check_template(template)
    except ValueError:  # e.g. two {token}s (the HTML tag) or no closing literal
        template = DEFAULT_TEMPLATE
    found = list(find_tokens(text, template))
    return not found or found[-1] == normalise(token)


def _flows_on(part: Part, before: str, insertion: str) -> bool:
    """format=flowed text where the line before our token line ends in a blank: a soft
    break, and a reader would join our line onto it (`Dana[ref:...]`)."""
    if (part.content_type.param("format") or "").lower() != "flowed":
        return False
    head = before + insertion[: len(insertion) - len(insertion.lstrip("\r\n"))]
    if not head.endswith("\n"):
        return False  # a template without a leading line break shares the line anyway
    line = head[:-1].removesuffix("\r").rpartition("\n")[2]
    return line.endswith(" ")  # never the signature separator: our line goes above it


def _inline_pgp(text: str) -> bool:
    """An armor line starts a line (as `^` in re.M: the text's start or after a LF)."""
    return any(m.start() == 0 or text[m.start() - 1] == "\n" for m in _PGP_ARMOR.finditer(text))


def _codec_of(charset: str | None, decoded: bytes) -> str:
    codec = mime.codec_for(charset)
    if codec is None:
        if charset is not None and _utf16_label(charset):
            raise Unusable(f"unknown charset {_label(charset)}")
    elif codec != "ascii" or decoded.isascii():
        return codec
    # 8-bit text without a charset or under an ASCII label (PHP's and many scripts' default
    # `us-ascii` over UTF-8 or Latin-1 text), or text under a label nobody knows (Apple Mail's
    # `charset="charset=us-ascii"`, a typo, which readers ignore): no two readers agree on
    # what it is (Thunderbird reads us-ascii as windows-1252, WHATWG's label; others sniff
    # UTF-8), but every one reads ASCII as ASCII: the part is read byte for byte, and only an
    # ASCII insertion is written (`_encode_insertion`).
    if _wide(decoded):
        raise Unusable(_byte_for_byte_refusal(charset, codec))
    return _UNLABELLED


def _wide(decoded: bytes) -> bool:
    """UTF-16 or UTF-32 (a BOM names it, and readers sniff it first; ASCII in it holds NUL
    bytes): an ASCII byte written into it reads as no ASCII at all."""
    return 0 in decoded or decoded.startswith(_WIDE_BOMS)


def _byte_for_byte_refusal(charset: str | None, codec: str | None) -> str:
    """Why text read byte for byte (`_UNLABELLED`) for want of a usable label takes no
    insertion: no charset, a label nobody knows (`codec` None), or an ASCII one."""
    if charset is None:
        return "8bit without charset"
    if codec is None:
        return f"unknown charset {_label(charset)}"
    return f"8bit under charset {_label(charset)}"


# ISO-2022 escapes that designate G0 (`ESC ( F`, `ESC $ F`, `ESC $ ( F`), and SO and SI.
_ISO2022_SHIFT = re.compile(r"\x1b\([@-~]|\x1b\$\(?[@-~]|[\x0e\x0f]")
_ISO2022_ASCII = frozenset({"\x1b(B", "\x1b(J"})  # ASCII, JIS-Roman


def _ascii_at(text: str, cut: int) -> bool:
    """ASCII written at `cut` reads as ASCII to a reader that follows ISO-2022 escapes (one
    that sniffs ISO-2022-JP, -KR or -CN in 7-bit text under a label it does not know, or
    none): no double-byte set is in force there. RFC 1468 text ends in ASCII; text cut off
    after its last kanji does not."""
    if "\x1b" not in text and "\x0e" not in text:
        return True
    g0_ascii, shifted_out = True, False
    for found in _ISO2022_SHIFT.finditer(text, 0, cut):
        shift = found.group()
        if shift in ("\x0e", "\x0f"):
            shifted_out = shift == "\x0e"
        else:
            g0_ascii = shift in _ISO2022_ASCII
    return g0_ascii and not shifted_out


def _utf16_label(charset: str) -> bool:
    """A UTF-16 or UTF-32 name Python does not know (`unicode`, Outlook's; IANA's
    `UNICODE-1-1` and `ISO-10646-UCS-*`, UCS-2 and UCS-4): ASCII is no ASCII there."""
    folded = charset.strip().strip('"').lower()
    return folded in mime.UTF16_LABELS or folded == "unicode-1-1" or folded.startswith(
        ("utf-16", "utf-32", "ucs", "iso-10646-ucs"))


def _read_text(decoded: bytes, charset: str | None) -> tuple[str, str]:
    """The codec the part is written back in, and its text. A narrow label is read as the
    superset clients read it as (mime); where that superset does not give the part's bytes
    back (big5's box drawing ═╭╮ in Big5-HKSCS), the label's own codec may."""
    codec = _codec_of(charset, decoded)
    if codec == _UNLABELLED:
        return codec, decoded.decode(codec)
    own = mime.codec_for(charset, superset=False)
    if own is not None and own != codec:
        for candidate in (codec, own):
            text = _round_trip(decoded, candidate)
            if text is not None:
                return candidate, text
    try:
        return codec, decoded.decode(codec)
    except UnicodeDecodeError:
        pass
    # Bytes not valid in their label (Latin-1 text under `charset=utf-8`, an old template's;
    # UTF-8 under `charset=big5`): each reader reads the valid part alike and ASCII as ASCII
    # (WHATWG's decoders give back an ASCII byte that ends a broken sequence), so the part is
    # read byte for byte, as one without a charset is, and only ASCII goes in
    # (`_encode_insertion`). Not where ASCII is no ASCII: a wide or shifting form.
    if _wide(decoded) or not _ascii_compatible(codec):
        raise Unusable(f"content is not valid {codec}")
    return _UNLABELLED, decoded.decode(_UNLABELLED)


@functools.lru_cache(maxsize=64)
def _ascii_compatible(codec: str) -> bool:
    """ASCII is itself in the codec, both ways, and no escape or shift changes that."""
    if codec.startswith(_SHIFTING):
        return False
    try:
        return _ASCII.decode(codec) == _ASCII.decode("ascii") and (
            _ASCII.decode("ascii").encode(codec) == _ASCII)
    except UnicodeError:
        return False


@functools.lru_cache(maxsize=64)
def _single_byte(codec: str) -> bool:
    """Each byte is a character of its own: no ASCII byte can be the second of a pair."""
    return len(bytes(range(256)).decode(codec, "replace")) == 256


def _round_trip(decoded: bytes, codec: str) -> str | None:
    """The text, when encoding it again gives back `decoded` exactly."""
    try:
        text = decoded.decode(codec)
        return text if text.encode(codec) == decoded else None
    except UnicodeError:
        return None


def _encode(text: str, codec: str) -> bytes:
    try:
        return text.encode(codec)
    except UnicodeEncodeError:
        raise Unusable(f"insertion cannot be written in {codec}") from None


def _encode_insertion(insertion: str, codec: str, charset: str | None) -> bytes:
    """The insertion in the part's codec; written in a label's own codec (`_read_text`), it
    must read the same in the superset clients read it as. Into 8-bit text without a charset
    or under an ASCII label, and into text under a label nobody knows, only ASCII goes, which
    reads alike in whatever charset a reader guesses."""
    reader = mime.codec_for(charset)  # "ascii" for none
    if codec == _UNLABELLED and reader not in (None, "ascii", _UNLABELLED):
        # Content not valid in its label (`_read_text`): ASCII only, and in a double-byte
        # charset not a byte a dangling lead byte before it could take as its second one
        # (`\n` and `<`, which the default templates start with, are below any of them).
        if not insertion.isascii() or not (
                reader == "utf-8" or _single_byte(reader) or insertion[:1] < "@"):
            raise Unusable(f"content is not valid {reader}")
    elif codec == _UNLABELLED and not insertion.isascii():
        raise Unusable(_byte_for_byte_refusal(charset, reader))
    data = _encode(insertion, codec)
    if reader is not None and reader != codec and data.decode(reader, "replace") != insertion:
        raise Unusable(f"insertion reads otherwise in {reader}")
    return data


def _encode_halves(text: str, cut: int, codec: str, decoded: bytes) -> tuple[bytes, bytes]:
    """The bytes before and after the cut; they must re-create the original exactly."""
    prefix, suffix = _encode(text[:cut], codec), _encode(text[cut:], codec)
    if prefix + suffix != decoded:
        raise Unusable(f"{codec} does not round-trip")
    return prefix, suffix


def _check(encoding: _Encoding, new_raw: bytes, expected: bytes) -> None:
    if encoding.decode(new_raw) != expected:
        raise Unusable("re-encoded part does not decode as expected")


def _render(request: _Request, newline: str) -> str:
    """The template (StampSettings) with its placeholder replaced by the token, HTML-escaped in
    the HTML one, and each "\n" as the part's own line ending."""
    value = html.escape(request.token) if request.target == "html" else request.token
    text = request.template.replace(PLACEHOLDER, value)
    return text.replace("\r\n", "\n").replace("\n", newline)


def _insertion_index(text: str, target: Target) -> int:
    """HTML: before the last </body> (else </html>, else the end); plain text: the end, or
    above the signature separator (`_signature_start`), or before a helpdesk's own last line
    that its reader finds only at the end (`_TRAILING_MARK`), whichever comes first."""
    if target == "html":
        end = len(text)
        for closing in _CLOSING_TAGS:
            found = _last_match(closing, text)
            if found is not None:
                end = found
                break
        return _html_signature_start(text, end)
    return min(_signature_start(text), _trailing_mark_start(text))


def _html_signature_start(text: str, end: int) -> int:
    """Where our tag goes above an HTML signature separator (`_HTML_DASH`) before `end`, else
    `end`: right after the line break that precedes it, or before the block element it starts
    (`<div class="moz-signature">`, `<p>`), so the tag stays out of the signature's element."""
    quotes = (0, 0)  # blockquote depth up to a position: the candidates come in order
    for count, match in enumerate(_HTML_DASH.finditer(text, 0, end)):
        if count >= _HTML_DASH_CANDIDATES:
            break
        at = match.start()
        before = _html_line_break_before(text, at)
        if before is None or not _html_line_break_after(text, match.end(), end):
            continue
        quotes = _blockquote_depth(text, at, quotes)
        if quotes[1] > 0 or _in_comment(text, at) or _in_raw_text(text, at):
            continue  # `<title>-- </title>` in <head>: the tag went before <html>
        boundary = _html_block_boundary(text, at)
        return before if boundary is None else boundary
    return end


def _html_block_boundary(text: str, at: int) -> int | None:
    """The nearest block boundary at or before `at`: after a block's end tag (or a holder's
    start tag, `<body>`, `<td>`), before a block's start tag. A <div> there stays one block
    among others; right after a `<br>` inside a <p> it would end that paragraph early (HTML
    closes a <p> at a <div>) and leave an empty one where its `</p>` was."""
    pos = at
    for _ in range(_HTML_TAGS_BACK):
        start = text.rfind("<", 0, pos)
        if start < 0:
            return None
        closed = text.find("-->", start, pos)
        if closed >= 0:  # a comment ends here: its `<p>` is no boundary, and our tag in it lost
            pos = text.rfind("<!--", 0, closed)
            if pos < 0:
                return None
            continue
        found = _HTML_TAG.match(text, start)
        if found is not None and found.end() <= at:
            closing, name = found.group(1), found.group(2).lower()
            if name in _HTML_BLOCKS:
                return found.end() if closing or name in _HTML_HOLDERS else start
        pos = start
    return None


def _html_line_break_before(text: str, at: int) -> int | None:
    """Only blanks and inline start tags between `at` and a `<br>` or a block element's tag
    before it: where our tag goes (after a `<br>` or an end tag, before a start tag)."""
    for _ in range(_HTML_INLINE_TAGS):
        start = text.rfind("<", 0, at)
        if start < 0:
            return 0 if not text[:at].strip() else None  # the part's first line
        found = _HTML_TAG.match(text, start)
        if found is None or text[found.end():at].strip():
            return None  # text before it on its line
        closing, name = found.group(1), found.group(2).lower()
        if name == "br" or (closing and name in _HTML_BLOCKS) or name in _HTML_HOLDERS:
            return found.end()
        if name in _HTML_BLOCKS:
            return start
        if closing:
            return None  # `</b>-- `: the separator continues a line
        at = start  # an inline start tag around the separator: look before it
    return None  # deeper in inline tags than any mail client writes it


def _html_line_break_after(text: str, at: int, end: int) -> bool:
    """Only blanks and inline end tags between `at` and a `<br>` or a block element's tag."""
    while at < end:
        found = _HTML_TAG_AFTER.match(text, at, end)
        if found is None:
            return not text[at:end].strip()  # the part's end (no </body>) ends the line
        name = found.group(2).lower()
        if name == "br" or name in _HTML_BLOCKS:
            return True
        if not found.group(1):
            return False  # an inline start tag: the separator's line goes on
        at = found.end()
    return True


def _blockquote_depth(text: str, at: int, since: tuple[int, int]) -> tuple[int, int]:
    """`at` and the <blockquote> depth there (a quote: K-9 does not look for signatures in
    it), counted on from `since` (a position and the depth there): each candidate re-counting
    from the part's start took 20 passes over a part of many <blockquote>s (2.9 s for 5 MB)."""
    pos, depth = since
    for match in _BLOCKQUOTE.finditer(text, pos, at):
        depth = max(0, depth - 1) if match.group(1) else depth + 1
    return at, depth


def _in_comment(text: str, at: int) -> bool:
    """`at` is inside an HTML comment (one never closed runs to the end). One position, so
    the nearest opener before it is enough; `_last_match` checks many against all comments."""
    start = text.rfind("<!--", 0, at)
    if start < 0:
        return False
    close = text.find("-->", start + 4)
    return close < 0 or close >= at


def _signature_start(text: str) -> int:
    """Where the first signature separator line (`-- ` alone on its line) starts, else the
    end. Mail clients drop the signature from the text they quote in a reply, from that line
    to the end (Thunderbird's `mail.strip_sig_on_reply` and Roundcube's `strip_existing_sig`,
    both on by default), and a token line below it went with it. Only line starts are looked
    at (`find`; a regex search tried every position)."""
    found = text.find(_SIGNATURE_LINE)
    at = 0 if text.startswith(_SIGNATURE) else found + 1 if found >= 0 else -1
    while at >= 0:
        end = at + len(_SIGNATURE)
        if text.startswith(("\n", "\r\n"), end) or end == len(text) or (
                end + 1 == len(text) and text[end] == "\r"):
            return at
        found = text.find(_SIGNATURE_LINE, end - 1)
        at = found + 1 if found >= 0 else -1
    return len(text)


def _trailing_mark_start(text: str) -> int:
    """Before osTicket's last `Ref-Mid:` line (`_TRAILING_MARK`), else the end.
    Only the last occurrence can be followed by nothing but blank lines: matched there, not
    searched for (a search tried every position of the tail: ~20 us a part)."""
    tail = text[-_TRAILING_MARK_TAIL:]
    last = tail.rfind(_TRAILING_MARK_START)
    if last < 0 or _TRAILING_MARK.match(tail, last) is None:
        return len(text)
    at = len(text) - len(tail) + last
    return at if at == 0 or text[at - 1] == "\n" else len(text)  # a line's start, not the cut's


def _last_match(pattern: re.Pattern[str], text: str) -> int | None:
    """The last match outside HTML comments (Outlook ends some mail with
    `<!--[if mso]></body><![endif]-->`, which no client renders) and outside another tag
    (`<a title="</body>">`: the tag would be cut open and our hidden text shown)."""
    comments = [m.span() for m in _HTML_COMMENT.finditer(text)] if "<!--" in text else []
    starts = [a for a, _ in comments]
    found = []
    for match in pattern.finditer(text):
        at = match.start()
        # The comments are sorted and apart: only the last one opening before it can hold it.
        i = bisect.bisect_right(starts, at) - 1
        in_comment = i >= 0 and at < comments[i][1]
        if not in_comment and text.rfind("<", 0, at) <= text.rfind(">", 0, at):
            found.append(at)
    # Checked from the last, a few at most: each check reads on to the next closing tag.
    return next((at for at in reversed(found[-4:]) if not _in_raw_text(text, at)), None)


def _in_raw_text(text: str, at: int) -> bool:
    """`at` is inside a <script>, <style>, <title>, <textarea>, <xmp>, <iframe>, <noembed> or
    <noframes> element, whose text is no markup (WHATWG HTML §13.2.5:
    `p::after{content:"</body>"}` closes no body): the next closing tag of such an element
    comes before any opening of it. (One never closed is not seen: it would need a scan of
    the whole part for every HTML mail.)"""
    end = _RAW_TEXT_END.search(text, at)
    return end is not None and _RAW_TEXT_START[end.group(1).lower()].search(
        text, at, end.start()) is None


def _text_newline(text: str, fallback: bytes) -> str:
    first = text.find("\n")
    if first < 0:
        return fallback.decode("ascii")
    return "\r\n" if first > 0 and text[first - 1] == "\r" else "\n"


def _wire_newline(body: Data, part: Part, default: bytes) -> bytes:
    """The line ending the part is written with, else the body's, else the message's."""
    for start, end in ((part.start, part.end), (0, len(body))):
        first = body.find(b"\n", start, min(end, start + 65536))
        if first >= 0:
            return b"\r\n" if first > start and body[first - 1] == 0x0D else b"\n"
    return default


# --- transfer encodings -------------------------------------------------------------------


class _Encoding(Protocol):
    def decode(self, raw: bytes) -> bytes:
        """Strict decoding; raises Unusable on anything it could not re-create."""
        ...

    def insert(
        self, raw: bytes, at: int, added: bytes, newline: bytes
    ) -> tuple[int, int, bytes, bytes]:
        """Insert `added` at decoded offset `at`: (start, end, new bytes, decoded insertion)."""
        ...


def _encoding_for(cte: str) -> _Encoding:
    if cte in mime.IDENTITY_ENCODINGS:
        return _Identity(seven_bit=cte == "7bit")
    if cte == "quoted-printable":
        return _QuotedPrintable()
    if cte == "base64":
        return _Base64()
    raise Unusable(f"unsupported transfer encoding {_label(cte)}")


class _Identity:
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
        # insertion goes on a line of its own.
        limit = max(_MAX_LINE, _line_length_with(raw, at, b""))
        if _line_length_with(raw, at, added) > limit:
            added = newline + added.strip(b"\r\n") + newline
            if _line_length_with(raw, at, added) > limit:
                raise Unusable("a line would exceed 998 octets")
        return at, at, added, added


def _line_length_with(raw: bytes, at: int, added: bytes) -> int:
    """The longest line around the insertion point once `added` is inserted there."""
    line_start = raw.rfind(b"\n", 0, at) + 1
    line_end = raw.find(b"\n", at)
    line_end = len(raw) if line_end < 0 else line_end
    joined = raw[line_start:at] + added + raw[at:line_end]
    return max(len(line.rstrip(b"\r")) for line in joined.split(b"\n"))


_QP_ESCAPE = re.compile(rb"=[0-9A-Fa-f]{2}")
# "=" then a CR that ends no line: binascii drops what follows it, so the text we would read
# is not the part's.
_QP_BARE_CR = re.compile(rb"=[ \t]*+\r(?!\n)")
# What binascii (`mime.decode_qp`) reads from an "=", left to right: "=XX" one byte, "=="
# one "=" (its "broken python qp" case: a URL's base64 padding written unescaped,
# `id=YWJjZA==`), any other "=" itself, or a soft break when it ends the line.
_QP_UNIT = re.compile(rb"=(?:=|[0-9A-Fa-f]{2})?")


class _QuotedPrintable:
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


class _Base64:
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
