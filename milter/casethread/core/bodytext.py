"""Readable text of a message body, for token scanning (DESIGN §5), and raw parts for bounces.

Best effort and bounded: malformed MIME is read as far as it can be, undecodable bytes become
U+FFFD, and no more than `budget` transfer-decoded bytes are read in total.
"""

from __future__ import annotations

import html
import re
from collections.abc import Collection, Iterator

from . import mime
from .frozen import frozen
from .message import parse_raw
from .mime import Data, Part
from .subject import decode_subject

DEFAULT_BUDGET = 1 << 20
TEXT_TYPES = frozenset({"text/plain", "text/html"})
# What a delivery status notification returns of the original message (RFC 3462, 6533).
BOUNCE_TYPES = frozenset(
    {"message/rfc822", "message/global", "text/rfc822-headers", "message/global-headers",
     "message/delivery-status", "message/global-delivery-status"}
)

# A tag ends at the next "<" as well as at ">": with "[^>]*" every unclosed "<" of hostile
# markup ("<a <a <a ...") scanned to the end of the text, quadratic time under the GIL that
# stalled every session of the milter. ("<" inside a quoted attribute value is legal but rare;
# such a tag is then read as text, which costs a token scan nothing.) The blanks after "<"
# are taken possessively: "<\s*/?\s*" could split a run of n blanks n ways, each rescanned.
_BLOCK_TAG = re.compile(
    r"<\s*+(?:/\s*+)?(?:br|p|div|tr|td|th|li|ul|ol|h[1-6]|blockquote|table|pre|hr)\b[^<>]*>",
    re.I,
)
_ANY_TAG = re.compile(r"</?[A-Za-z!?][^<>]*>")
_RAW_TEXT_OPEN = re.compile(r"<(script|style)\b[^<>]*>", re.I)
_RAW_TEXT_CLOSE = {name: re.compile(rf"</{name}\s*>", re.I) for name in ("script", "style")}


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
    include_attachments: bool = False,
    tree: Part | None = None,
) -> Iterator[str]:
    """Decoded text of the text/plain and text/html parts, from the top; HTML as plain text.

    An attached message (message/rfc822, also one attached as a file: "forward as
    attachment") is read like an inline forward: its Subject (decoded), then its parts. Other
    attachments only with `include_attachments`. A multipart or message that could not be
    split is read as text. `tree` is `mime.parse` of this body and these fields, when the
    caller has it already.
    """
    if tree is None:
        tree = mime.parse(body, top_content_type, top_cte, top_disposition)
    remaining = budget
    for part in _readable(tree, include_attachments):
        if _attached_message_file(part):
            # Read as a message of its own, once decoded; its attachments cost no budget.
            for text in _attached_message_texts(body, part, remaining):
                remaining -= len(text)
                yield text
            continue
        if part.kind == "message":
            found = next((h.value for h in part.children[0].headers
                          if h.name.lower() == "subject"), None)
            if found is not None and remaining > 0:
                text = decode_subject(found)
                remaining -= len(text)
                yield text
            continue
        if not (part.kind == "opaque" or (part.kind == "leaf" and part.mime_type in TEXT_TYPES)):
            continue
        if remaining <= 0:
            return
        data = _decoded_body(body, part, remaining)
        remaining -= len(data)
        # No (or an unknown) charset: UTF-8 is the likeliest, and ASCII reads the same in it.
        text = data.decode(mime.codec_for(part.charset, "utf-8") or "utf-8", "replace")
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


def _readable(tree: Part, include_attachments: bool) -> Iterator[Part]:
    stack = [tree]
    while stack:
        part = stack.pop()
        if (part.is_attachment and not include_attachments and part is not tree
                and part.kind != "message" and not _attached_message_file(part)):
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
        (part.filename or "").lower().endswith(".eml"))


# A line of a header section: a field name, a colon.
_FIELD_LINE = re.compile(rb"[!-9;-~]{1,76}:")


def _attached_message_texts(body: Data, part: Part, budget: int) -> Iterator[str]:
    """The Subject and texts of an attached message file, decoded: at most four budgets of
    it are decoded, and only if it starts like a message (not any file named .eml)."""
    data = _decoded_body(body, part, 4 * budget)
    if not _FIELD_LINE.match(data):
        return
    headers, inner = parse_raw(data)
    subject = next((h.value for h in headers if h.name.lower() == "subject"), None)
    if subject is not None:
        yield decode_subject(subject)
    top = mime.top_fields(headers)
    yield from iter_texts(top.content_type, top.cte, inner, budget,
                          top_disposition=top.disposition)


def _decoded_body(body: Data, part: Part, limit: int) -> bytes:
    # Encoded forms are at most about 3x (quoted-printable) their decoded size: read no more.
    encoded_limit = limit if part.cte in mime.IDENTITY_ENCODINGS else 3 * limit + 1024
    raw = body[part.body_start : min(part.end, part.body_start + encoded_limit)]
    return mime.decode_transfer(raw, part.cte)[:limit]


def html_to_text(markup: str) -> str:
    """Visible text of HTML: comments, scripts and styles dropped, tags removed, entities decoded.

    Block tags become line breaks so words of adjacent blocks do not run together.
    """
    text = _drop_between(markup, "<!--", "-->")
    text = _drop_raw_text_elements(text)
    text = _BLOCK_TAG.sub("\n", text)
    text = _ANY_TAG.sub("", text)
    return html.unescape(text)


def _drop_between(text: str, opener: str, closer: str) -> str:
    out: list[str] = []
    pos = 0
    while True:
        start = text.find(opener, pos)
        if start < 0:
            break
        out.append(text[pos:start])
        end = text.find(closer, start + len(opener))
        if end < 0:
            return "".join(out)
        pos = end + len(closer)
    out.append(text[pos:])
    return "".join(out)


def _drop_raw_text_elements(text: str) -> str:
    """Remove <script> and <style> elements; an unclosed one runs to the end (as browsers do)."""
    out: list[str] = []
    pos = 0
    while True:
        opened = _RAW_TEXT_OPEN.search(text, pos)
        if opened is None:
            break
        out.append(text[pos : opened.start()])
        name = opened.group(1)
        closing = _RAW_TEXT_CLOSE[name.lower()]
        closer = closing.search(text, opened.end())
        if closer is None:
            return "".join(out)
        pos = closer.end()
    out.append(text[pos:])
    return "".join(out)
