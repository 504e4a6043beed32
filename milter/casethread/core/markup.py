"""Where HTML text holds no markup, as the WHATWG HTML tokenizer reads it (HTML Living Standard
§13.2.5): comments, bogus comments and the text of raw text elements. The token scan drops the
comments and the scripts and styles (`bodytext.html_to_text`); stamping puts nothing inside any
of them and takes no `</body>` there for the body's end (`placement`).

- A comment opens at `<!--` and closes at the first `-->` or `--!>` after it (`--!>` is an
  incorrectly closed comment, which still closes); `<!-->` and `<!--->` are whole, empty
  comments (abrupt closing); one never closed runs to the end.
- A bogus comment, `<!` not followed by `--` (`<!DOCTYPE html>`, `<![CDATA[x]]>`, Word's
  downlevel-revealed `<![if !supportLists]>` and `<![endif]>`: each is one, the text between
  them is visible), `<?` (`<?xml ...?>`) or `</` followed by no ASCII letter and no `>`
  (`</ 3>`), runs to the first `>` (a `<` does not end it), or to the end.
- A start tag of a raw text element (`RAW_TEXT`) opens text no markup is read in (a `<!--` in
  a `<style>` is text) up to its appropriate end tag (`</style>`, `</style foo>`; the tag runs
  to its `>`, or to the end if none follows). In a `<script>`, `<!--` starts the escaped
  text, in which `<script` starts the double-escaped text, where `</script>` closes no script
  (it ends the double escape) and `-->` ends both (§13.2.5.4-5.30); mail holds no scripts a
  client runs, but a bounce or forward may quote one.

Read as the other tag patterns read tags (`[^<>]*>`): a tag holding a `<` in a quoted attribute
value is read as text, and a `<!--` or `<style>` in such a value opens a comment or a style.
Foreign content (`<svg>`, `<math>`: a CDATA section closes at `]]>` there) and `<plaintext>` are
not read so (no mail client writes the obsolete `<plaintext>`, which would show a stamp after
it as text; trying it at every `<p` made the span search a fifth slower on Word HTML). Time is
linear in the text: each search goes on from where the last one ended.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

# A tag name ends at a tab, line feed, form feed, carriage return, space, "/" or ">" only (WHATWG
# HTML §13.2.5.8); names are matched ASCII case-insensitively (re.A with re.I: `<\u017ftyle>`,
# a long s, is no style, and `<d\u0130v>` no div).
TAG_NAME_END = r"(?=[\t\n\f\r />])"
# RCDATA (title, textarea), RAWTEXT (style, xmp, iframe, noembed, noframes; noscript only when
# scripting is on, which no mail client does) and script data.
RAW_TEXT = ("script", "style", "title", "textarea", "xmp", "iframe", "noembed", "noframes")
# Where the data state leaves for a comment, a bogus comment or a raw text element. A raw text
# element's start tag must end (`>`) before the next "<", as every tag pattern here reads tags.
# (The names' alternatives share their first letters: each "<" of the usual HTML is tried once
# per first letter, not once per name; and the one-character set after "<" turns away most tags,
# `<div`, `<p`, `<br`, `<a`, before any alternative is tried: a quarter less time a part.)
_OPENER = re.compile(
    r"<(?=[!?/sStTxXiInN])(?:(!--)|[!?]|/(?=[^A-Za-z>])"
    r"|(s(?:cript|tyle)|t(?:itle|extarea)|xmp|iframe|no(?:embed|frames))" + TAG_NAME_END
    + "[^<>]*+>)", re.I | re.A)
# An appropriate end tag: the element's name, then a name end; it runs to its ">" or the end.
RAW_TEXT_CLOSE = {name: re.compile(rf"</{name}{TAG_NAME_END}[^>]*+>?", re.I | re.A)
                  for name in RAW_TEXT}
_COMMENT_END = re.compile(r"--!?>")
# Script data (§13.2.5.4): the end tag, or `<!--` (the escaped states).
_SCRIPT_DATA = re.compile(r"(?P<escape><!--)|</script" + TAG_NAME_END + r"[^>]*+>?", re.I | re.A)
# Escaped: `-->` back to script data, `<script` and a name end into the double escape, or the
# end tag. (The dashes of `<!--` count: `<!-->` leaves the escape at once.)
_SCRIPT_ESCAPED = re.compile(
    r"(?P<back>-->)|(?P<double><script" + TAG_NAME_END + r")|</script" + TAG_NAME_END
    + r"[^>]*+>?", re.I | re.A)
# Double escaped: `-->` back to script data, `</script` and a name end back to the escape.
_SCRIPT_DOUBLE = re.compile(r"(?P<back>-->)|</script" + TAG_NAME_END, re.I | re.A)


class Span(NamedTuple):
    """`text[start:end]` holds no markup: a comment (`kind` "comment", a bogus one too), or a
    raw text element from its start tag's "<" to its end tag's end (`kind` its name, lower
    case)."""

    start: int
    end: int
    kind: str


def hidden_spans(text: str) -> Iterator[Span]:
    """The comments and raw text elements of `text`, in order; they neither overlap nor nest.
    The last one may run to the end (never closed)."""
    pos, size = 0, len(text)
    while pos < size and (found := _OPENER.search(text, pos)) is not None:
        opened = found.start()
        name = found.group(2)
        if name is not None:
            name = name.lower()
            closer = (_script_end(text, found.end()) if name == "script"
                      else RAW_TEXT_CLOSE[name].search(text, found.end()))
            pos = size if closer is None else closer.end()
        elif found.group(1) is not None:
            pos, name = _comment_end(text, opened), "comment"
        else:
            close = text.find(">", found.end())
            pos, name = (size if close < 0 else close + 1), "comment"
        yield Span(opened, pos, name)


def _comment_end(text: str, start: int) -> int:
    """Where the comment whose `<!--` is at `start` ends: after `>` of `<!-->` or `<!--->`,
    else after the first `-->` or `--!>` from the fifth character on, else at the end."""
    after = start + 4
    if text.startswith(">", after):
        return after + 1
    if text.startswith("->", after):
        return after + 2
    found = _COMMENT_END.search(text, after)
    return len(text) if found is None else found.end()


def _script_end(text: str, pos: int) -> re.Match[str] | None:
    """The end tag of the script whose text starts at `pos`, or None (it runs to the end)."""
    while (found := _SCRIPT_DATA.search(text, pos)) is not None:
        if found.group("escape") is None:
            return found
        pos = found.start() + 2  # escaped, from the dashes of `<!--`
        while (found := _SCRIPT_ESCAPED.search(text, pos)) is not None:
            if found.group("back") is not None:
                pos = found.end()
                break
            if found.group("double") is None:
                return found
            double = _SCRIPT_DOUBLE.search(text, found.end())
            if double is None:
                return None
            pos = double.end()
            if double.group("back") is not None:
                break
        else:
            return None
    return None
