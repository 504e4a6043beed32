"""Readable text of a message body, for token scanning (DESIGN §5), and raw parts for bounces.

Best effort and bounded: malformed MIME is read as far as it can be, undecodable bytes become
U+FFFD, and no more than `budget` transfer-decoded bytes are read in total.
"""

from __future__ import annotations

import html
import re
from collections.abc import Collection, Iterator, Sequence
from itertools import chain

from . import mime
from .frozen import frozen
from .markup import TAG_NAME_END, hidden_spans
from .message import Data, Header, parse_raw
from .mime import Part
from .subject import decode_subject
from .text_decoding import decode_text

DEFAULT_BUDGET = 1 << 20
TEXT_TYPES = frozenset({"text/plain", "text/html"})
# What a delivery status notification returns of the original message (RFC 3462, 6533; Bigfoot's
# LiteMail returns it as message/partial, the first fragment of which starts with the
# message's header, RFC 2046 §5.2.2; `message/rfc822-headers`, no registered type, is what
# some bounce generators write for `text/rfc822-headers`), and the report part of a read
# receipt, which may name it only by its Original-Message-ID (RFC 8098 §3.2.10; Thunderbird
# sends no third part).
BOUNCE_TYPES = frozenset(
    {"message/rfc822", "message/global", "message/partial", "text/rfc822-headers",
     "message/rfc822-headers",
     "message/global-headers", "message/delivery-status", "message/global-delivery-status",
     "message/disposition-notification", "message/global-disposition-notification"}
)
# Of those, the parts that return the message itself (its header fields at least), not a
# report about it.
RETURNED_MESSAGE_TYPES = frozenset(
    {"message/rfc822", "message/global", "message/partial", "text/rfc822-headers",
     "message/rfc822-headers",
     "message/global-headers"}
)

# A tag ends at the next "<" as well as at ">": with "[^>]*" every unclosed "<" of hostile
# markup ("<a <a <a ...") scanned to the end of the text, quadratic time under the GIL that
# stalled every session of the milter. ("<" inside a quoted attribute value is legal but rare;
# such a tag is then read as text, which costs a token scan nothing.) The blanks after "<"
# are taken possessively: "<\s*/?\s*" could split a run of n blanks n ways, each rescanned.
# A tag name ends at a tab, line feed, form feed, carriage return (a line feed once the
# input is normalised), space, "/" or ">" only (WHATWG HTML §13.2.5.8), and is matched ASCII
# case-insensitively (`(?a:...)`): `<p-x>`, `<style:x>`, `<script.x>`, `<style\u00a0>` are
# other elements (`\b` after the name ended it at any non-word character), and `<d\u0130v>`
# no div (re.I alone reads a dotted capital I as "i", a Kelvin sign as "k").
_BLOCK_TAG = re.compile(
    r"<\s*+(?:/\s*+)?(?a:br|p|div|tr|td|th|li|ul|ol|h[1-6]|blockquote|table|pre|hr)"
    + TAG_NAME_END + r"[^<>]*>",
    re.I,
)
_ANY_TAG = re.compile(r"</?[A-Za-z!?][^<>]*>")
# A quote in HTML mail: Gmail's gmail_quote, Apple Mail's type=cite, Thunderbird's cite (also
# what stamping counts as a quote around a signature: `placement`).
BLOCKQUOTE_TAG = re.compile(r"<\s*+(/\s*+)?(?a:blockquote)" + TAG_NAME_END + r"[^<>]*>", re.I)
# Quote marks a line gets at most: each line pays for its own, and 10,000 nested blockquotes
# must not make the text 10,000 times as long. Deeper quotes rank alike; a reply's newest
# quoted mail is one level deep.
MAX_HTML_QUOTE_MARKS = 8
# Where `hidden_spans` can find a span the token scan drops (`_DROPPED`), or `BLOCKQUOTE_TAG`
# a quote, this matches too (at its start, without what must follow): one pass tells the usual
# HTML, which has no comment, script, style or quote, from the rest. A bogus comment that ends
# at its `>` before any `<` (`<!DOCTYPE html>`, `<?xml ...?>`, most HTML mail's first line) is
# what `_ANY_TAG` removes too, so it needs no other pass; one holding a `<`, or never closed,
# does. (A <title> or <textarea> matters only when one of those follows it: only then can it
# hold what would open one. re.I without re.A for the names and blanks: a superset.)
_DROPPED_OR_QUOTE = re.compile(
    r"<(?:[!?](?:--|[^<>]*+(?!>))|/(?a:[^A-Za-z>])|script|style|\s*+(?:/\s*+)?blockquote)",
    re.I)
# Of the spans no markup is read in, those the token scan drops: comments, scripts, styles (the
# text of a <title>, <textarea> or <xmp> is read, as before; it only opens no comment).
_DROPPED = frozenset({"comment", "script", "style"})
# The base64 payload of a `data:` URI (RFC 2397, `data:image/png;base64,...`): an image pasted
# into an HTML editor that sends it inline (web mail and CRM editors) instead of as a part of
# its own. Found by its `;base64,` alone (a search for `data:` and its parameters first cost
# 0.4 s per MiB of hostile "data:x;"): the run after it holds no token either way, as base64's
# letters, digits, blanks and line breaks (browsers ignore those) hold no `[`. A run under
# 1 KiB (an icon) is left as it is, so a hostile part of tiny ones costs no edit per run.
_DATA_URI_PAYLOAD = re.compile(r"(?i:;base64,)[A-Za-z0-9+/=\s]{1024,}+")
_DATA_URI_START = re.compile(r"(?i:;base64,)")
# How much of an HTML part with such images is decoded, in budgets: 16 MiB by default, a
# phone's photo pasted whole (a 32 MiB base64 part took 180 ms to decode and edit).
INLINE_IMAGE_BUDGETS = 16


@frozen
class FoundPart:
    content_type: str
    data: bytes  # transfer-decoded, at most the budget


def iter_texts(
    top_content_type: str | None,
    top_cte: str | None,
    body: Data,
    budget: int = DEFAULT_BUDGET,
    *,
    top_disposition: str | None = None,
    tree: Part | None = None,
    open_files: bool = True,
) -> Iterator[str]:
    """Decoded text of the text/plain and text/html parts; HTML as plain text.

    The message's own parts come first, from the top; then each message it forwards (an
    attached message/rfc822: "forward as attachment"), read like an inline forward: its
    Subject (decoded), then its parts. A forwarded message the parser could not open in place
    (base64 message/rfc822, an .eml attached as a file) is decoded and read so too, when
    `open_files` (one level: such a file inside it is not opened). Other attachments are not
    read. A multipart or message that could not be split is read as text.
    `tree` is `mime.parse` of this body and these fields, when the caller has it already.
    """
    if tree is None:
        tree = mime.parse(body, top_content_type, top_cte, top_disposition)
    remaining = budget
    forwarded: list[Part] = []
    # A list iterator sees what is appended while it runs: each forwarded message found while
    # reading is read in its turn, after the text around it.
    for root in chain((tree,), forwarded):
        if _attached_message_file(root):
            if open_files:
                for text in _attached_message_texts(body, root, remaining):
                    remaining -= len(text)
                    yield text
            continue
        if root is not tree and remaining > 0:  # a forwarded message: its Subject first
            for text in _subject_of(root.children[0].headers):
                remaining -= len(text)
                yield text
        for part in _readable(root, forwarded):
            if not (part.kind == "opaque" or (part.kind == "leaf" and _is_text(part))):
                continue
            if remaining <= 0:
                return
            text, used = _part_text(body, part, remaining)
            remaining -= used
            yield html_to_text(text) if part.mime_type == "text/html" else text


def iter_parts_of_type(
    top_content_type: str | None,
    top_cte: str | None,
    body: Data,
    types: Collection[str] = BOUNCE_TYPES,
    budget: int = DEFAULT_BUDGET,
    *,
    top_disposition: str | None = None,
    tree: Part | None = None,
) -> Iterator[FoundPart]:
    """Transfer-decoded bodies of the parts of those types, from the top (not looking inside a
    part once it is yielded). `tree` as for `iter_texts`."""
    if tree is None:
        tree = mime.parse(body, top_content_type, top_cte, top_disposition)
    remaining = budget
    stack = [tree]
    while stack and remaining > 0:
        part = stack.pop()
        if part.mime_type in types:
            data = _decoded_body(body, part, remaining)
            remaining -= len(data)
            yield FoundPart(part.mime_type, data)
            continue
        stack.extend(reversed(part.children))


# The line a bounce written as plain text puts before the message it returns, and the blank
# lines after it: qmail's (also Yahoo's), Exim's without DSNs, Sendmail's without MIME
# ("----- Original message follows -----", "----- Message header follows -----", V5's
# "----- Unsent message follows -----"), Gmail's former text bounce ("----- Original message
# -----"), Lotus Notes' ("------- Returned Message --------"), m-FILTER's ("-------original
# message") and others' ("--- Original message follows."), Exchange's text NDR ("Original
# message headers:"). A line holding nothing but such a phrase, between dashes or none, and
# a message's header after it (`_Paragraphs`): Outlook's quote separator ("-----Original
# Message-----") in the returned body stands above a quote's header block, which may name
# another case's mail. The blanks and dashes before the phrase are possessive: a line of
# blanks alone was split between the two blank runs every way (O(n^2): 12 s for a 20 KB
# line, hours for the 1 MiB a bounce's text is read to); the phrase starts with a letter, so
# no match needs them to give anything back.
_RETURNED_COPY = re.compile(
    rb"^[ \t]*+-*+[ \t]*+(?:below this line is a copy of the message"
    rb"|this is a copy of the message(?:, including all the headers|'s headers)"
    rb"|(?:original|unsent|returned) message(?:[ \t]+(?:follows|headers))?"
    rb"|message headers?[ \t]+follows?)"
    rb"[ \t.:-]*\r?\n(?:[ \t]*\r?\n)*", re.I | re.M)


# A header field of the returned mail that names it, at the start of a line: where a text
# bounce without a known marker line returns it (1&1's and GMX's "--- The header of the
# original message is following. ---", MXLogic's "Included is a copy of the message header:"
# over a line of dashes, EZweb's line of dashes under its notice: no list of such lines is
# ever complete). The notice's own words indent what they quote of the mail ("  Subject:").
# Such a line counts only in a paragraph that is a message's header, which holds a Message-ID
# or a Received field: a quote's header block in the returned mail's body (Outlook's "From: /
# Sent: / To: / Subject:", a forward's) holds neither, and may name another case's mail.
_RETURNED_FIELD_LINE = re.compile(rb"^(?:message-id|in-reply-to|references|subject)[ \t]*:",
                                  re.I | re.M)
_HEADER_MARK = re.compile(rb"^(?:message-id|received)[ \t]*:", re.I | re.M)
_BLANK_LINE = re.compile(rb"\n[ \t]*\r?\n")


def returned_copy(
    top_content_type: str | None,
    top_cte: str | None,
    body: Data,
    budget: int = DEFAULT_BUDGET,
    *,
    top_disposition: str | None = None,
    tree: Part | None = None,
) -> bytes:
    """The message a bounce written as plain text returns (its header fields first), from its
    first text/plain part, within `budget` decoded bytes: what follows a known marker line;
    without one, the first paragraph holding a line that starts with a field naming the
    mail (Message-ID, In-Reply-To, References, Subject) and one that starts with Message-ID
    or Received (a message's header, no quote's), and what follows it. Else a later
    text/plain part that is a message's header from its first line (the header attached as a
    text file: "mailheaders-....txt"), or a part whose own header section is the returned
    message's (`_pasted_header`). b"" when there is none. `tree` as for `iter_texts`."""
    if tree is None:
        tree = mime.parse(body, top_content_type, top_cte, top_disposition)
    texts = iter_parts_of_type(top_content_type, top_cte, body, ("text/plain",), budget,
                               top_disposition=top_disposition, tree=tree)
    text = next(texts, None)
    if text is None:
        return b""
    copy = _copy_in_text(text.data)
    if copy:
        return copy
    for later in texts:
        start = _HEADER_START.match(later.data)
        if start is not None and _Paragraphs(later.data).hold_header(start.end()):
            return later.data[start.end():]
    return _pasted_header(tree, body, budget)


def _pasted_header(tree: Part, body: Data, budget: int) -> bytes:
    """The header section of a body part that is the returned message pasted in without a
    part header of its own (its Message-ID or Received fields stand where the part's MIME
    fields would: no body part carries those), up to `budget` bytes; b"" when none does.
    Messages inside the body are not looked into (their header is a message's anyway)."""
    stack = list(reversed(tree.children))
    while stack:
        part = stack.pop()
        if any(h.name.lower() in ("message-id", "received") for h in part.headers):
            return bytes(body[part.start:min(part.body_start, part.start + budget)])
        if part.kind != "message":
            stack.extend(reversed(part.children))
    return b""


# A part that starts with a header field (blank lines before it allowed).
_HEADER_START = re.compile(rb"(?:[ \t]*\r?\n)*(?=[!-9;-~]{1,76}:)")


def _copy_in_text(data: bytes) -> bytes:
    """`returned_copy` of one text: after a marker line, or the paragraph of a message's
    header; b"" when neither."""
    paragraphs = _Paragraphs(data)
    for found in _RETURNED_COPY.finditer(data):
        if paragraphs.hold_header(found.end()):
            return data[found.end():]
    pos = start = 0
    while (field := _RETURNED_FIELD_LINE.search(data, pos)) is not None:
        for blank in _BLANK_LINE.finditer(data, pos, field.start()):
            start = blank.end()
        if paragraphs.hold_header(start):
            return data[start:]
        after = _BLANK_LINE.search(data, field.end())
        if after is None:
            break
        pos = start = after.end()
    return b""


class _Paragraphs:
    """Whether the paragraph at a position holds a line that starts with Message-ID or
    Received (`_HEADER_MARK`): a message's header, no quote's header block. Asked at growing
    positions (marker lines may follow each other in one paragraph), the searches go on from
    where the last one stopped: a search to the paragraph's end per marker line took 93 s for
    1 MiB of them."""

    def __init__(self, data: bytes) -> None:
        self._size = len(data)
        self._blanks = _Following(_BLANK_LINE, data)
        self._marks = _Following(_HEADER_MARK, data)

    def hold_header(self, start: int) -> bool:
        after = self._blanks.at(start)
        # The first mark at or after `start`, if it ends in the paragraph: a mark is one
        # line's start, so none that starts later can end sooner.
        mark = self._marks.at(start)
        return mark is not None and mark.end() <= (after.start() + 1 if after else self._size)


class _Following:
    """The first match of `pattern` in `data` at or after a position, for positions that only
    grow: a search is made again only when the last one found a match before the position
    (or the position went back)."""

    def __init__(self, pattern: re.Pattern[bytes], data: bytes) -> None:
        self._pattern, self._data = pattern, data
        self._searched: int | None = None
        self._found: re.Match[bytes] | None = None

    def at(self, pos: int) -> re.Match[bytes] | None:
        found = self._found
        if self._searched is None or pos < self._searched or (
                found is not None and found.start() < pos):
            found = self._found = self._pattern.search(self._data, pos)
            self._searched = pos
        return found


def _is_text(part: Part) -> bool:
    """Text, HTML and, as RFC 2046 §4.1.4 has them shown, other text/* types as plain text
    (text/enriched, text/calendar; not a bounce's returned header fields); and a part whose
    Content-Type is not understood, plain text by RFC 2045 §5.2 ("text/plain charset=utf-8",
    without its semicolon)."""
    kind = part.mime_type
    return (kind in TEXT_TYPES or kind == ""
            or (kind.startswith("text/") and kind not in BOUNCE_TYPES))


def _readable(tree: Part, forwarded: list[Part]) -> Iterator[Part]:
    """The parts of `tree` to read, from the top; forwarded messages inside it are put in
    `forwarded` instead, to be read after the text around them."""
    stack = [tree]
    while stack:
        part = stack.pop()
        if part is not tree and (part.kind == "message" or _attached_message_file(part)):
            forwarded.append(part)
            continue
        if part.is_attachment and part is not tree:
            continue
        yield part
        stack.extend(reversed(part.children))


def _attached_message_file(part: Part) -> bool:
    """A forwarded message the parser could not open in place: message/rfc822 in base64 or
    quoted-printable (invalid, RFC 2046 5.2.1, yet sent by phones and gateways) or a .eml
    file attached as application/octet-stream and the like."""
    if part.kind == "message" or not part.is_attachment:
        return False
    return part.mime_type in mime.EMBEDDED_MESSAGE_TYPES or (
        _file_name(part).lower().endswith(".eml"))


def _file_name(part: Part) -> str:
    """The part's file name, its RFC 2047 encoded words decoded: RFC 2047 §5 allows none in
    a parameter, yet Outlook and Gmail write a non-ASCII name so (`=?UTF-8?B?...?=`), as
    every client reads it, and B encoding hid the `.eml` of a forwarded message's file."""
    name = part.filename or ""
    return decode_subject(name) if "=?" in name else name


# A message file's start: a BOM, blank lines or an mbox "From " line may come before its first
# header field (a field name, a colon).
_MESSAGE_START = re.compile(
    rb"(?:\xef\xbb\xbf)?(?:[ \t]*\r?\n)*(?:From [^\n]*\n)?(?=[!-9;-~]{1,76}:)")


def _subject_of(headers: Sequence[Header]) -> Iterator[str]:
    """A forwarded message's Subject, decoded as the token search reads the mail's own (words
    of a charset label Python does not know too), if it has one."""
    found = next((h.value for h in headers if h.name.lower() == "subject"), None)
    if found is not None:
        yield decode_subject(found, read_unknown=True)


def _attached_message_texts(body: Data, part: Part, budget: int) -> Iterator[str]:
    """The Subject and texts of an attached message file, decoded (at most four budgets of
    it); a file that does not start like a message is read as text."""
    data = _decoded_body(body, part, 4 * budget)
    start = _MESSAGE_START.match(data)
    if start is None:
        yield data[:budget].decode("utf-8", "replace")
        return
    headers, inner = parse_raw(data[start.end():])
    del data
    yield from _subject_of(headers)
    top = mime.top_fields(headers)
    yield from iter_texts(top.content_type, top.cte, inner, budget,
                          top_disposition=top.disposition, open_files=False)


def _decoded_body(body: Data, part: Part, limit: int) -> bytes:
    # Encoded forms are at most about 3x (quoted-printable) their decoded size: read no more.
    encoded_limit = limit if part.cte in mime.IDENTITY_ENCODINGS else 3 * limit + 1024
    raw = body[part.body_start : min(part.end, part.body_start + encoded_limit)]
    return mime.decode_transfer(raw, part.cte)[:limit]


def _part_text(body: Data, part: Part, limit: int) -> tuple[str, int]:
    """A part's text, decoded, and the budget it used: its decoded bytes, at most `limit`.

    An HTML part's inline images' base64 is not counted: a screenshot pasted above the quote
    is 1-2 MB of it, and counted as text it used up the budget before our tag in the quote
    below. Where the budget ran out with one in it, up to `INLINE_IMAGE_BUDGETS` budgets of
    the part are decoded, the payloads left out (on the text: a UTF-16 part's too) and the
    rest cut to `limit` characters, which is what it used."""
    data = _decoded_body(body, part, limit)
    text = decode_text(data, mime.part_charset(part, data))
    if part.mime_type != "text/html" or len(data) < limit or not _DATA_URI_START.search(text):
        return text, len(data)
    data = _decoded_body(body, part, INLINE_IMAGE_BUDGETS * limit)
    text = _DATA_URI_PAYLOAD.sub(";base64,", decode_text(data, mime.part_charset(part, data)))
    return text[:limit], min(len(text), limit)


def html_to_text(markup: str) -> str:
    """Visible text of HTML: comments, scripts and styles dropped, tags removed, entities decoded.

    Comments and the text no markup is read in are found as browsers find them
    (`markup.hidden_spans`). Block tags become line breaks so words of adjacent blocks do not
    run together. A line inside <blockquote>s starts with a ">" per level, as a plain-text
    reply quotes it: the token scan ranks tokens by these marks (`resolve._quote_depth`). An
    unclosed blockquote runs to the end, a closing one without an opener closes nothing.
    """
    if _DROPPED_OR_QUOTE.search(markup) is None:
        return _visible(markup)
    return _every_pass(markup)


def _every_pass(markup: str) -> str:
    """`html_to_text` without its shortcut. Tags are taken out of each stretch between dropped
    spans apart, so that dropping a span joins no tag (`</p<!x>>` holds none, as the shortcut
    reads it); entities are decoded per quote level, as in the shortcut."""
    pieces: list[str] = []
    run: list[str] = []
    depth = 0
    for start, end in _kept(markup):
        pos = start
        for tag in BLOCKQUOTE_TAG.finditer(markup, start, end):
            run.append(_tagless(markup[pos : tag.start()]))
            pieces += (_quoted(html.unescape("".join(run)), depth), "\n")
            run.clear()
            depth = max(depth - 1, 0) if tag.group(1) else depth + 1
            pos = tag.end()
        run.append(_tagless(markup[pos:end]))
    pieces.append(_quoted(html.unescape("".join(run)), depth))
    return "".join(pieces)


def _kept(text: str) -> Iterator[tuple[int, int]]:
    """The stretches of `text` between its comments, scripts and styles (`_DROPPED`); a span
    that runs to the end (never closed) drops the rest. Read from the start: what
    `_DROPPED_OR_QUOTE` finds may lie in a <title> or <textarea>, where it opens nothing."""
    pos = 0
    for span in hidden_spans(text):
        if span.kind in _DROPPED:
            yield pos, span.start
            pos = span.end
    yield pos, len(text)


def _tagless(markup: str) -> str:
    return _ANY_TAG.sub("", _BLOCK_TAG.sub("\n", markup))


def _visible(markup: str) -> str:
    return html.unescape(_tagless(markup))


def _quoted(text: str, depth: int) -> str:
    """`text` with quote marks for `depth` blockquotes before each line (one allocation:
    a substitution per line made an object per line, 40 MiB for a megabyte of them)."""
    if not depth:
        return text
    marks = ">" * min(depth, MAX_HTML_QUOTE_MARKS) + " "
    return marks + text.replace("\n", "\n" + marks)

