"""Where a stamp goes in a part's decoded text (DESIGN §3.4): the hidden tag near the end of
the HTML, the token line near the end of the plain text, and in both above a signature, which
mail clients drop from the text they quote in a reply, and our token with it.

Pure string work on text `stamp` has already decoded; the offsets it returns are characters of
that text. Every search here is bounded: a hostile part costs time linear in its size.
"""

from __future__ import annotations

import bisect
import re
from array import array
from collections.abc import Iterator

from .bodytext import BLOCKQUOTE_TAG
from .markup import TAG_NAME_END, hidden_spans
from .transfer import Unusable

# A closing tag's name ends only at a blank, "/" or ">" (`TAG_NAME_END`, WHATWG HTML §13.2.5.8):
# `</body foo>` and `</body/>` end the body, `</body\u00a0>` and `</body\v>` (which `\s*>` took)
# do not. The tag must end (`>`) before the next "<", as any tag here: `_last_match` looks back
# from each match to the last ">" before it, which a part of 200,000 `</body ` without one made
# a look to the part's start for each (4 s for 1.4 MB).
_CLOSING_TAGS = tuple(re.compile(rf"</(?a:{name}){TAG_NAME_END}[^<>]*>", re.I)
                      for name in ("body", "html"))
_TAIL = 1024  # characters where `_last_match` looks for a closing tag first
# Markup in the data state, read as the WHATWG tokenizer reads it (§13.2.5.1-13, 32-40) up to
# a position: text (a "<" followed by no letter, `a < b`, is text) and whole tags: a name, then
# attributes, each a name (which may start with "=") and maybe "=" and a value, quoted or not;
# a "<" or ">" in a quoted value (`<iframe srcdoc="<p>x</p></body>">`) ends nothing. It stops
# at the "<" of a tag that does not end before that position: one that holds it. (Comments
# and raw text are `_Hidden`'s.)
_DATA = re.compile(
    r"(?:[^<]++|<(?!/?[A-Za-z])|</?[A-Za-z][^\t\n\f\r />]*+"
    r"(?:[\t\n\f\r /]++|(?:=[^\t\n\f\r />=]*+|[^\t\n\f\r />=]++)"
    r"(?:[\t\n\f\r ]*+=[\t\n\f\r ]*+(?:\"[^\"]*+\"?|'[^']*+'?|[^\t\n\f\r >]*+))?)*+>)*+")
_TAG_CHECKS = 16  # closing tags `_last_match` reads the tags before, at most
_TAG_OPEN = re.compile(r"</?[A-Za-z]")
_UNSURE = -1  # `_tag_seen_holding` cannot tell
_BLANKS_BEFORE_VALUE = 64  # read back from a quote for the "=" that makes it a value's
# Comments and raw text elements a part may hold for stamping to read them all (~1 us and 16
# bytes each): far more than any person's mail (Word writes two `<![if ...]>` a list item),
# far fewer than 16 MiB of `<?>` holds (5.6 million: seconds of the GIL).
MAX_HIDDEN_SPANS = 100_000
# osTicket ends the text of its mail with `Ref-Mid: <its Message-ID>` and, when a reply's
# headers name none of its mail, reads the quoted line back only at the body's end (its
# pattern `Ref-Mid: ([^"\s]*)$`): our token line goes above that last line, not below it.
# Read in the part's last 2 KB only (the line and the blank lines after it).
_TRAILING_MARK_START = "Ref-Mid: "
_TRAILING_MARK = re.compile(r"Ref-Mid: [^\s\"]+[ \t]*(?:\r?\n[ \t]*)*\Z")
_TRAILING_MARK_TAIL = 2048
# The signature separator, `-- ` alone on its line (RFC 3676 §4.3, Usenet's): at the text's
# start, or after a line feed (`_signature_start`).
_SIGNATURE_FIRST = re.compile(r"-- (?=\r?\n|\r?\Z)")
_SIGNATURE_LATER = re.compile(r"\n-- (?=\r?\n|\r?\Z)")
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
# A tag and its whole name, which runs to a blank, "/" or ">" (`<o:p>`, `<p-x>` are no <p>; a
# "<" ends it here, as it ends a tag: `_tag_name` reads it).
_HTML_TAG = re.compile(r"<(/?)\s*([A-Za-z][^\t\n\f\r /><]*+)[^<>]*>")
_HTML_TAG_AFTER = re.compile(r"\s*<(/?)\s*([A-Za-z][^\t\n\f\r /><]*+)[^<>]*>")
_HTML_DASH_CANDIDATES = 20  # `-- ` strings checked per part at most
_HTML_TAGS_BACK = 64  # tags looked at before a separator for a block boundary
_HTML_INLINE_TAGS = 16  # inline tags (<span>, <font>, <b>) before and after a separator at most


def html_insertion_index(text: str) -> int:
    """Before the last </body> (else </html>, else the end), or above an HTML signature
    separator before it (`_html_signature_start`); none of these inside a comment or the
    text of a raw text element (`_Hidden`, which raises `Unusable` for a part of too many).
    The end itself is not checked: HTML cut off inside a comment, a <style> or a tag gets
    the tag there (README *What casethread changes in a message*), as telling would read
    every part without a </body> (Gmail's) from its start. Tree construction is not followed:
    in a table left open, browsers move the tag above it (foster parenting), hidden all the
    same; a <template> left open or a <frameset> document takes it where none renders it,
    which no mail client writes."""
    end = len(text)
    hidden = _Hidden(text)
    for closing in _CLOSING_TAGS:
        found = _last_match(closing, text, hidden)
        if found is not None:
            end = found
            break
    return _html_signature_start(text, end, hidden)


class _Hidden:
    """Where the part holds no markup: its comments (bogus ones too) and the text of its raw
    text elements (<script>, <style>, <title>, <textarea>, ...), as browsers read them
    (`markup.hidden_spans`: `<!-->` is a whole comment, `--!>` closes one, a `<!--` in a
    <style> is text). The part is read once, when first asked; the spans are kept as two
    arrays of offsets (16 bytes a span), at most `MAX_HIDDEN_SPANS` of them: a part of more
    is `Unusable`, left unstamped."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._starts: array[int] | None = None
        self._ends = array("q")

    def span_at(self, at: int) -> tuple[int, int] | None:
        """The span that holds position `at`, if one does."""
        if self._starts is None:
            self._starts = array("q")
            for span in hidden_spans(self._text):
                if len(self._ends) == MAX_HIDDEN_SPANS:
                    raise Unusable(f"more than {MAX_HIDDEN_SPANS} comments")
                self._starts.append(span.start)
                self._ends.append(span.end)
        i = bisect.bisect_right(self._starts, at) - 1
        if i >= 0 and at < self._ends[i]:
            return self._starts[i], self._ends[i]
        return None

    def data_before(self, at: int) -> int:
        """The end of the last span before `at`, which is outside any (`span_at` was asked):
        the tokenizer is in the data state there, or at the part's start."""
        assert self._starts is not None
        i = bisect.bisect_right(self._starts, at) - 1
        return self._ends[i] if i >= 0 else 0


def text_insertion_index(text: str) -> int:
    """The end, or above the signature separator (`_signature_start`), or before a helpdesk's
    own last line that its reader finds only at the end (`_TRAILING_MARK`), whichever comes
    first."""
    return min(_signature_start(text), _trailing_mark_start(text))


def _html_signature_start(text: str, end: int, hidden: _Hidden) -> int:
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
        if quotes[1] > 0 or hidden.span_at(at) is not None:
            continue  # `<title>-- </title>` in <head>: the tag went before <html>
        boundary = _html_block_boundary(text, at, hidden)
        return before if boundary is None else boundary
    return end


def _html_block_boundary(text: str, at: int, hidden: _Hidden) -> int | None:
    """The nearest block boundary at or before `at`: after a block's end tag (or a holder's
    start tag, `<body>`, `<td>`), before a block's start tag. A <div> there stays one block
    among others; right after a `<br>` inside a <p> it would end that paragraph early (HTML
    closes a <p> at a <div>) and leave an empty one where its `</p>` was."""
    pos = at
    for _ in range(_HTML_TAGS_BACK):
        start = text.rfind("<", 0, pos)
        if start < 0:
            return None
        span = hidden.span_at(start)
        if span is not None:  # a comment: its `<p>` is no boundary, and our tag in it lost
            pos = span[0]
            continue
        found = _HTML_TAG.match(text, start)
        if found is not None and found.end() <= at:
            closing, name = found.group(1), _tag_name(found)
            if name in _HTML_BLOCKS:
                return found.end() if closing or name in _HTML_HOLDERS else start
        pos = start
    return None


def _html_line_break_before(text: str, at: int) -> int | None:
    """Only blanks and inline start tags between `at` and a `<br>` or a block element's tag
    before it: where our tag goes (after a `<br>` or an end tag, before a start tag), with
    `_HTML_INLINE_TAGS` inline start tags at most (one more look finds the line break)."""
    for _ in range(_HTML_INLINE_TAGS + 1):
        start = text.rfind("<", 0, at)
        if start < 0:
            return 0 if not text[:at].strip() else None  # the part's first line
        found = _HTML_TAG.match(text, start)
        if found is None or text[found.end():at].strip():
            return None  # text before it on its line
        closing, name = found.group(1), _tag_name(found)
        if name == "br" or (closing and name in _HTML_BLOCKS) or name in _HTML_HOLDERS:
            return found.end()
        if name in _HTML_BLOCKS:
            return start
        if closing:
            return None  # `</b>-- `: the separator continues a line
        at = start  # an inline start tag around the separator: look before it
    return None  # deeper in inline tags than any mail client writes it


def _html_line_break_after(text: str, at: int, end: int) -> bool:
    """Only blanks and inline end tags between `at` and a `<br>` or a block element's tag,
    `_HTML_INLINE_TAGS` of them at most, as before the separator: a 10 MB part of `</b>`
    after one took 1.6 s to read tag by tag (per candidate), and deeper nesting than any
    client writes is no signature."""
    for _ in range(_HTML_INLINE_TAGS + 1):
        if at >= end:
            return True
        found = _HTML_TAG_AFTER.match(text, at, end)
        if found is None:
            return not text[at:end].strip()  # the part's end (no </body>) ends the line
        name = _tag_name(found)
        if name == "br" or name in _HTML_BLOCKS:
            return True
        if not found.group(1):
            return False  # an inline start tag: the separator's line goes on
        at = found.end()
    return False


def _tag_name(found: re.Match[str]) -> str:
    """The name of a tag `_HTML_TAG` found, ASCII lower case (str.lower reads a Kelvin sign as
    "k": `<bloc\u212aquote>` is no blockquote); a name with other letters is none we know."""
    name = found.group(2)
    return name.lower() if name.isascii() else name


def _blockquote_depth(text: str, at: int, since: tuple[int, int]) -> tuple[int, int]:
    """`at` and the <blockquote> depth there (a quote: K-9 does not look for signatures in
    it), counted on from `since` (a position and the depth there): each candidate re-counting
    from the part's start took 20 passes over a part of many <blockquote>s (2.9 s for 5 MB)."""
    pos, depth = since
    for match in BLOCKQUOTE_TAG.finditer(text, pos, at):
        depth = max(0, depth - 1) if match.group(1) else depth + 1
    return at, depth


def _signature_start(text: str) -> int:
    """Where the first signature separator line (`-- ` alone on its line) starts, else the
    end. Mail clients drop the signature from the text they quote in a reply, from that line
    to the end (Thunderbird's `mail.strip_sig_on_reply` and Roundcube's `strip_existing_sig`,
    both on by default), and a token line below it went with it. Only line starts are looked
    at: the search's pattern starts with the line break, which the regex engine looks for as
    a literal (a pattern that may start anywhere tried every position), and it reads on past
    every `-- ` that is no separator in one call (a `find` per `-- ` in Python took 0.7 s
    for a 10 MB part of `\n-- x` lines)."""
    if _SIGNATURE_FIRST.match(text):
        return 0
    first = text.find("\n-- ")  # faster than the search, which starts there
    found = _SIGNATURE_LATER.search(text, first) if first >= 0 else None
    return len(text) if found is None else found.start() + 1


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


def _last_match(pattern: re.Pattern[str], text: str, hidden: _Hidden) -> int | None:
    """The last match outside HTML comments (Outlook ends some mail with
    `<!--[if mso]></body><![endif]-->`, which no client renders), outside the text of raw
    text elements (`p::after{content:"</body>"}` in a <style> closes no body) and outside
    another tag (`<a title="</body>">`, `<iframe srcdoc="<p>x</p></body>">`: the tag would be
    cut open and our hidden text shown), of `_TAG_CHECKS` candidates outside spans at most."""
    # From the last match back, so a part of a million `</body>` is not checked match by
    # match: those inside one span or tag are passed over once the first is found in it.
    floor, checks, unread = len(text), 0, True
    for at in _starts_from_the_end(pattern, text):
        if at >= floor:
            continue
        span = hidden.span_at(at)
        if span is not None:
            floor = span[0]
            continue
        if checks == _TAG_CHECKS:
            return None
        checks += 1
        start = hidden.data_before(at)
        held = _tag_seen_holding(text, start, at)
        if held == _UNSURE:
            if not unread:  # one reading a closing tag's name: each reads the part again
                return None
            unread, held = False, _tag_read_holding(text, start, at)
        if held is None:
            return at
        floor = held
    return None


def _tag_seen_holding(text: str, start: int, at: int) -> int | None:
    """Where the tag that holds position `at` starts, if one does, as the characters before it
    tell (the tokenizer is in the data state at `start`): the last "<" when it opens a tag and
    no ">" follows it; none when a ">" does, unless that ">" may be in a quoted value
    (`_may_be_quoted`), then ending no tag (`<a t="x>y</body>">`): then, and for a "<" that
    opens no tag, `_UNSURE`. (A pass of `_DATA` over every part tripled the time placing
    its tag takes: 0.7 ms for 135 KB of Word HTML.)"""
    opened, closed = text.rfind("<", start, at), text.rfind(">", start, at)
    if opened <= closed:  # both -1: neither since `start`, data (and no search to -1)
        return _UNSURE if closed >= 0 and _may_be_quoted(text, start, closed) else None
    return opened if _TAG_OPEN.match(text, opened) else _UNSURE


def _tag_read_holding(text: str, start: int, at: int) -> int | None:
    """`_tag_seen_holding`, read tag by tag from `start` (`_DATA`)."""
    found = _DATA.match(text, start, at)
    stop = start if found is None else found.end()  # never None: the pattern matches ""
    return None if stop == at else stop


def _may_be_quoted(text: str, start: int, at: int) -> bool:
    """A quoted attribute value may hold `at`: the value holds no quote of its kind, so it
    opened at the last one before `at` (none: no value holds it), which only an "=" and
    blanks before it make a value (more than `_BLANKS_BEFORE_VALUE` blanks may be too)."""
    for quote in "\"'":
        opened = text.rfind(quote, start, at)
        if opened <= start:
            continue
        before = text[max(start, opened - _BLANKS_BEFORE_VALUE) : opened].rstrip("\t\n\f\r ")
        if before.endswith("=") or (not before and opened - _BLANKS_BEFORE_VALUE > start):
            return True
    return False


def _starts_from_the_end(pattern: re.Pattern[str], text: str) -> Iterator[int]:
    """Where `pattern` (a closing tag) matches, from the last back: the last `_TAIL` characters
    first, where </body> is, then the rest only if asked for. A closing tag's match holds one
    "<", its first character, and reads nothing before it: a search from any position finds
    exactly the matches that start there or later (a whole-part search read 8 KB of HTML for
    the last 20 characters)."""
    tail = max(0, len(text) - _TAIL)
    yield from reversed([match.start() for match in pattern.finditer(text, tail)])
    if tail:
        starts = [match.start() for match in pattern.finditer(text)]
        yield from reversed(starts[: bisect.bisect_left(starts, tail)])
