"""Body stamping (DESIGN §3.4): a hidden tag in the main text/html part, a token line at the end
of the main text/plain part, changing nothing else.

Works on the raw body through `mime.parse`: `plan_stamp` (or `plan_message_stamp`, given the
header fields) returns splices (offsets into the body and the bytes that replace them) and, per
target, what happened and why. Every byte outside a splice is the original byte; an adapter can
stream a spooled body through `iter_spliced` without holding it twice.

A part is changed only when its content survives a strict round trip: transfer decoding,
charset decoding, then re-encoding with the same charset and transfer encoding gives back the
original bytes for everything but the insertion. The result is checked by decoding it again;
any doubt skips the part and says why in its `Outcome`. Where in the text the stamp goes is
`placement`'s concern, the transfer encodings `transfer`'s.
"""

from __future__ import annotations

import codecs
import functools
import html
import re
from collections.abc import Iterable, Iterator
from typing import Literal

from . import mime
from .frozen import frozen
from .message import Data, Header, unfold
from .mime import Part
from .placement import html_insertion_index, text_insertion_index
from .settings import StampSettings
from .text_decoding import byte_order
from .token import DEFAULT_TEMPLATE, PLACEHOLDER, check_template, last_token, normalise
from .transfer import Encoding, QuotedPrintable, Unusable, encoding_for

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
# An armor line of inline PGP. Searched without `^` and re.M, which would try every position
# of the part (~35 us for 7 KB); the line start is checked per match instead.
_PGP_ARMOR = re.compile(r"-----BEGIN PGP (?:SIGNED )?MESSAGE-----")

Target = Literal["html", "text"]
# Only these: an invitation's text/calendar, AMP's text/x-amp-html (which must stay valid AMP)
# and Apple Watch's text/watch-html are other renderings of the mail, left as they are.
_TARGETS: dict[str, Target] = {"text/html": "html", "text/plain": "text"}
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
    reachable = _reachable(tree)
    refusal = _refusal(tree, reachable)
    if refusal:
        return _refused(requests, refusal)
    main = _first_targets(reachable)
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
    body: Data | memoryview, splices: tuple[Splice, ...] | list[Splice],
    chunk_size: int = 1 << 20,
) -> Iterator[bytes | memoryview]:
    """The new body in chunks of at most `chunk_size` original bytes (splices whole); slices
    of a memoryview are views, not copies."""
    pos = 0
    for splice in sorted(splices, key=lambda s: s.start):
        yield from _chunks(body, pos, splice.start, chunk_size)
        if splice.data:
            yield splice.data
        pos = splice.end
    yield from _chunks(body, pos, len(body), chunk_size)


def _chunks(body: Data | memoryview, start: int, end: int,
            size: int) -> Iterator[bytes | memoryview]:
    for pos in range(start, end, size):
        yield body[pos : min(pos + size, end)]


def _first_targets(reachable: list[Part]) -> dict[Target, Part]:
    """The first non-attachment text/html and text/plain leaves of `reachable` (`_reachable`:
    through multipart/mixed, /alternative, /related and the others a body may be made of,
    `_NOT_CONTAINERS`)."""
    found: dict[Target, Part] = {}
    for part in reachable:
        target = _target_of(part)
        if target is not None and target not in found:
            found[target] = part
    return found


def _reachable(tree: Part) -> list[Part]:
    """The part and, below each container we may look into, everything reachable, in document
    order: a list made once a plan (a recursive generator resumed each level of every walk
    was ~4 % of an outbound message's instructions)."""
    found: list[Part] = []
    stack = [tree]
    while stack:
        part = stack.pop()
        found.append(part)
        if part.kind == "multipart" and _is_container(part.mime_type):
            stack.extend(reversed(part.children))
    return found


def _is_container(mime_type: str) -> bool:
    return mime_type.startswith("multipart/") and mime_type not in _NOT_CONTAINERS


def _target_of(part: Part) -> Target | None:
    # The type first: most parts that are no target (containers, attachments) go at once,
    # without the parameter lookups of `is_attachment`.
    target = _TARGETS.get(part.mime_type) if part.kind == "leaf" else None
    if target is None or part.is_attachment:
        return None
    if part.depth and part.end == part.start:
        # No bytes at all between two delimiter lines: most readers see no part there, and
        # stamping would make one appear.
        return None
    return target


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


def _refusal(tree: Part, reachable: list[Part]) -> str:
    """Why the body as a whole must not be touched, or "" (`reachable`: `_reachable(tree)`)."""
    if _is_sealed(tree):
        return f"{tree.mime_type} is signed or encrypted"
    for part in reachable:
        if not part.defects:  # the usual part: nothing to weigh
            continue
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
    encoding = encoding_for(part.cte)
    if encoding is None:
        raise Unusable(f"unsupported transfer encoding {_label(part.cte)}")
    raw = part.body(body)
    decoded = encoding.decode(raw)
    charset = mime.part_charset(part, decoded)
    codec, text = _read_text(decoded, charset)
    wire_newline = _wire_newline(body, part, request.newline)
    cut = html_insertion_index(text) if target == "html" else text_insertion_index(text)
    # Plain text: only what is above the cut counts, where our line goes and a reply's quote
    # keeps it; a token of ours below the signature separator (in the quote of our earlier
    # mail under an agent's signature) goes when the customer's client drops the signature.
    if _already_stamped(text[:cut], token, request.template):
        return Outcome(target, "already"), None
    # Only the text: the HTML beside inline-PGP text is not signed, and a `-- ` in signed text is
    # dash-escaped (`- -- `, RFC 4880 §7.1), so no signature separator puts a tag inside it.
    if target == "text" and _inline_pgp(text):
        raise Unusable("inline PGP")
    # A quoted-printable insertion's line breaks are hard line breaks, which decode as the
    # wire's: text whose own breaks are encoded (`=0D=0A`, a fax gateway's) has no say.
    newline = (wire_newline.decode("ascii") if isinstance(encoding, QuotedPrintable)
               else _text_newline(text, wire_newline))
    insertion = _render(request, newline)
    if target == "text" and cut < len(text) and not insertion.endswith("\n"):
        # Above a signature separator or osTicket's last line (`placement`): a template
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
    if not _holds_folded(text, token):
        return False
    template = template.strip()  # the text line's own line breaks
    try:
        check_template(template)
    except ValueError:  # e.g. two {token}s (the HTML tag) or no closing literal
        template = DEFAULT_TEMPLATE
    last = last_token(text, template)
    return last is None or last == normalise(token)


def _holds_folded(text: str, token: str) -> bool:
    """`token.lower() in text.lower()`, mostly without lowering the whole part (~6
    instructions a character, ~5 % of an outbound message's): the token as written is in
    it, or its longest run of ASCII digits is not. Lowering leaves every character other
    than a letter as it is and makes an ASCII digit of none (U+0130 lowers to two characters,
    neither a digit), so each run of digits in the lowered text is one in the text."""
    run = _longest_digit_run(token)
    if run and run not in text:
        return False
    return token in text or token.lower() in text.lower()


_DIGIT_RUN = re.compile(r"[0-9]+")


def _longest_digit_run(token: str) -> str:
    return max(_DIGIT_RUN.findall(token), key=len, default="")


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
    """An armor line starts a line (as `^` in re.M: the text's start or after a LF). Text
    without the armor's fixed start is told by `find` (memchr-fast), not a regex pass."""
    if "-----BEGIN PGP " not in text:
        return False
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


# Python's utf-16 and utf-32 codecs write a BOM before every piece they encode, so the text
# before the cut and the insertion cannot be written apart in them.
_BOM_CODECS = frozenset({"utf-16", "utf-32"})
# The BOM of each byte order's codec.
_BOMS = {"utf-16-be": codecs.BOM_UTF16_BE, "utf-16-le": codecs.BOM_UTF16_LE,
         "utf-32-be": codecs.BOM_UTF32_BE, "utf-32-le": codecs.BOM_UTF32_LE}


def _other_order(codec: str) -> str:
    """`utf-16-le` for `utf-16-be`, and so on (a key of `_BOMS`)."""
    return codec[:-2] + ("le" if codec.endswith("be") else "be")


def _byte_order(codec: str, decoded: bytes) -> str:
    """`utf-16-be`/`-le` (`utf-32-...`) as the part's BOM names it, which then stays in the text
    as U+FEFF and is written back as it was. Without one, the byte order its ASCII characters
    show, as inbound reading takes it (`text_decoding.decode_text`): little-endian for .NET's
    `Encoding.Unicode`, which writes no BOM, big-endian for RFC 2781's default (written in
    little-endian, the token line would read as CJK there, and the part as a whole as
    neither). Content without a NUL byte shows none, and inbound reading takes it for a
    mislabelled ASCII-compatible part: it is left unstamped."""
    for ordered in (f"{codec}-be", f"{codec}-le"):
        if decoded.startswith(_BOMS[ordered]):
            return ordered
    if 0 not in decoded:
        raise Unusable(f"{codec} without a byte order mark or an ascii character")
    return byte_order(decoded, 2 if codec == "utf-16" else 4)


def _read_text(decoded: bytes, charset: str | None) -> tuple[str, str]:
    """The codec the part is written back in, and its text. A narrow label is read as the
    superset clients read it as (mime); where that superset does not give the part's bytes
    back (big5's box drawing ═╭╮ in Big5-HKSCS), the label's own codec may."""
    codec = _codec_of(charset, decoded)
    if codec == _UNLABELLED:
        return codec, decoded.decode(codec)
    if codec in _BOM_CODECS:
        codec = _byte_order(codec, decoded)
    elif codec in _BOMS and decoded.startswith(_BOMS[_other_order(codec)]):
        # Readers take a BOM's byte order over the label's (WHATWG "decode"), as inbound
        # reading does: what went in in the label's order would read otherwise.
        raise Unusable(f"byte order mark contradicts {codec}")
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
    if reader in _BOM_CODECS:
        reader = codec  # the byte order the part's BOM names (`_byte_order`)
    if reader is not None and reader != codec and data.decode(reader, "replace") != insertion:
        raise Unusable(f"insertion reads otherwise in {reader}")
    return data


def _encode_halves(text: str, cut: int, codec: str, decoded: bytes) -> tuple[bytes, bytes]:
    """The bytes before and after the cut; they must re-create the original exactly."""
    prefix, suffix = _encode(text[:cut], codec), _encode(text[cut:], codec)
    if prefix + suffix != decoded:
        raise Unusable(f"{codec} does not round-trip")
    return prefix, suffix


def _check(encoding: Encoding, new_raw: bytes, expected: bytes) -> None:
    if encoding.decode(new_raw) != expected:
        raise Unusable("re-encoded part does not decode as expected")


def _render(request: _Request, newline: str) -> str:
    """The template (StampSettings) with its placeholder replaced by the token, HTML-escaped in
    the HTML one, and each "\n" as the part's own line ending."""
    value = html.escape(request.token) if request.target == "html" else request.token
    text = request.template.replace(PLACEHOLDER, value)
    return text.replace("\r\n", "\n").replace("\n", newline)


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
