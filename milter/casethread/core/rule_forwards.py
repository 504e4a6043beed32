"""Exchange inbox rules' mail: the fields Exchange stamps on what a rule sent, whether the
only rule was our own mailbox's, and whether a rule's forward forwards mail of ours, told
by the forwarded header block at the top of its text (a From line naming one of our support
addresses and header lines after it, in any language, wrapped as Outlook wraps). Such a
forward is the customer's mailbox sending our answer back, which must not reopen the case."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence

from . import bodytext, mime
from .addresses import first_address
from .field_values import BODY_READ_MAX, field_text
from .message import Message

# Stamped by Exchange on what an inbox rule sent, a forward of a person's mail too: no sign
# of automatic mail alone (`autoreply`).
EXCHANGE_RULE_HEADERS = (
    "x-ms-exchange-inbox-rules-loop",
    "x-ms-exchange-generated-message-source",
)
# Set by Exchange on mail an inbox rule sent: a forward, a redirect, a rule's reply.
RULE_FORWARD = "x-ms-exchange-inbox-rules-loop"
# A header block's line, in any language ("From:", "Von:", "De :", "寄件者:"), and its value;
# the first may have its value on the next line (`_wrapped_from`).
_HEADER_LINE = re.compile(r"\s*[^\s:][^:\n]{0,39}:\s*(.*)")
_ADDRESS = r"(?:mailto:)?([^\s<>\[\]:;,\"()]+@[^\s<>\[\]:;,\"()]+)"
_ADDRESS_IN = re.compile(_ADDRESS, re.I)
# The address a From line names as a From does: in angle brackets, in Outlook's `[mailto:]`
# (a search that starts only at a bracket), or alone on the line (`fullmatch`).
_FRAMED_ADDRESS = re.compile(r"[<\[]\s*" + _ADDRESS, re.I)
# Outlook wraps plain text at 76 columns (30-132 as set), Exchange 2003 at 72: a From line
# and the next line's first word wider than this were one line that was wrapped. A wide
# (CJK) character takes two columns (`_columns`): in public list archives, Outlook in Chinese
# wrapped a line before a word that made it 75 characters (79 columns), another before one
# that made it 68 (73 columns); counted in characters, both would have fitted.
_WRAP = 72
# A header line holds 998 characters (RFC 5322 §2.1.1): that much of a From is read.
_LINE_MAX = 998


def our_rule_only(values: Sequence[str], ours: Callable[[str], bool]) -> bool:
    """Whether every `X-MS-Exchange-Inbox-Rules-Loop` field names one of our support
    addresses (and one does): Exchange writes there the mailbox whose inbox rule redirected,
    forwarded or answered the mail (`support@example.com` when support@ is an Exchange
    Online shared mailbox whose rule redirects its mail to us), and keeps a field per rule
    across organisations. Our own rule's redirect adds it to every customer's mail: it
    tells what our rule did, nothing of the mail, and with the `X-Auto-Response-Suppress:
    DR, OOF, AutoReply` that some Exchange Online tenants stamp on their people's ordinary
    mail (Cisco's, in public list archives) it made a customer's new question an
    `auto-replied` one, which opened no case. A rule of the customer's mailbox (its
    out-of-office reply, its forward of our answer) names the customer's address there, and
    still counts."""
    found = [first_address(text).lower() for text in map(field_text, values) if text]
    return bool(found) and all(address and ours(address) for address in found)


def forwards_our_mail(msg: Message, tree: Callable[[], mime.Part] | None,
                       ours: Callable[[str], bool]) -> bool:
    """Whether an Exchange inbox rule's forward forwards mail of ours: its first text starts,
    after blank lines and a separator line, with the forwarded mail's header block (three
    header lines at least), whose first line (its From) names one of our support addresses.
    A person who forwards types above it, and no rule adds a line; a shared mailbox's rule
    forwarding a new question forwards its sender's mail, a colleague's reply to our mail
    the colleague's: both stay a person's mail. A forward as an attachment is not read so
    (it stays a person's mail)."""
    top = mime.top_fields(msg.headers)
    texts = bodytext.iter_texts(top.content_type, top.cte, msg.body, BODY_READ_MAX,
                                top_disposition=top.disposition,
                                tree=tree() if tree is not None else None, open_files=False)
    lines = (line for line in next(texts, "").splitlines() if line.strip())
    first = next(lines, "")
    if _forward_separator(first.strip()):
        first = next(lines, "")
    header = _header_line(first)
    if header is None:
        return False
    value = header.group(1)[:_LINE_MAX].strip()
    after = next(lines, "")
    if _named_address(value) is None:
        # Outlook and Exchange wrap a long From line before its address, and an HTML
        # block's markup may put the value on a line of its own: the next line ends the From
        # then. A From of a display name alone (an internal contact) is not guessed at.
        if not _wrapped_from(first, value, after):
            return False
        value = f"{value} {after.strip()[:_LINE_MAX]}"
        after = next(lines, "")
    # A header block goes on (Sent, Date, To, Subject): Outlook and Exchange write two lines
    # after the From at least (Sent and Subject). Fewer are a person's text ("FYI:
    # support@... closed my ticket" redirected by a shared mailbox's rule; "Update: ...
    # write to" / "Example Support <support@...>" / "Serial number: 4711", read as a
    # wrapped From and one more line, took a new question for our mail and opened no case).
    if _header_line(after) is None or _header_line(next(lines, "")) is None:
        return False
    address = _named_address(value)
    return address is not None and ours(address)


def _header_line(line: str) -> re.Match[str] | None:
    """The line as "label: value" (a label of up to 40 characters, no colon), unless it is
    an address in brackets (`[mailto:a@b]`, a wrapped From's end)."""
    if line.lstrip().startswith(("[", "<")):
        return None
    return _HEADER_LINE.fullmatch(line)


def _named_address(value: str) -> str | None:
    """The address a From's value names as a From does (`Name <a@b>`, `Name [mailto:a@b]`,
    `a@b`), lower-cased: a redirected person's lines "FYI: support@... closed my ticket" /
    "Error: ..." are no header block, and in `"support@example.com" <kim@...>` the address
    is Kim's. Neither search starts at every letter (an unanchored `_ADDRESS_IN.search` was
    quadratic in a run without `@`: 1.5 s for 20,000 letters, ~5 ms for 998)."""
    found = _FRAMED_ADDRESS.search(value) or _ADDRESS_IN.fullmatch(value)
    return found.group(1).lower() if found is not None else None


def _wrapped_from(first: str, value: str, after: str) -> bool:
    """Whether `after` is the end of the From line `first` (whose `value` names no address):
    it ends with the address in its brackets, is no header line, and either `first` had no
    value ("From:" alone, its value on the markup's next line), or it is the bracketed
    address alone (Outlook for iOS), or `first` and its first word are wider than a line
    Outlook or Exchange wraps (in columns: a CJK character takes two)."""
    rest = after.strip()
    if not rest.endswith((">", "]")) or _header_line(after) is not None:
        return False
    # Nothing but the address in its brackets: a match at the start, then the bracket (a
    # fullmatch of a regex ending in the bracket backtracked at each `@`: quadratic).
    framed = _FRAMED_ADDRESS.match(rest)
    if not value or (framed is not None and rest[framed.end():].strip() in (">", "]")):
        return True
    line, word = first.strip(), rest.split(None, 1)[0]
    # Columns are counted only where the characters are too few: a few dozen of them.
    return (len(line) + 1 + len(word) > _WRAP
            or _columns(line) + 1 + _columns(word) > _WRAP)


def _columns(text: str) -> int:
    """The columns `text` takes in a fixed-width font: two for an East Asian wide or
    full-width character (Unicode's East Asian Width W, F: CJK ideographs, kana, Hangul,
    `：`), one for any other (half-width katakana too, and the ambiguous ones, which are
    narrow outside a CJK locale)."""
    if text.isascii():
        return len(text)
    return len(text) + sum(unicodedata.east_asian_width(c) in "WF" for c in text)


def _forward_separator(line: str) -> bool:
    """The line an inline forward may put above the forwarded mail's header block: Outlook's
    rule of underscores, "-----Original Message-----" or "---------- Forwarded message
    ---------", Apple Mail's "Begin forwarded message:". Told by its ends, not by a regex: a
    line of dashes that ends otherwise made `-{3,}.*-{3,}` backtrack in cubic time (32 s for
    2,000 dashes and an `x`)."""
    if line.startswith("_"):
        return len(line) >= 8 and not line.strip("_")
    return ((len(line) >= 6 and line.startswith("---") and line.endswith("---"))
            or line.lower() == "begin forwarded message:")
