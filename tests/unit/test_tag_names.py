"""Tag names as WHATWG HTML reads them (§13.2.5.6-13.2.5.8, §13.2.5.11): every pattern that
reads a tag name in core.bodytext and core.placement against a character-by-character reader.
A name starts with an ASCII letter after `<` or `</`, runs to a tab, line feed, form feed,
carriage return (a line feed once the input is normalised), space, "/" or ">" (or the end:
then it is no tag), and is compared ASCII case-insensitively."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from casethread.core import bodytext, markup, placement

_ENDS = "\t\n\f\r />"
_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def whatwg_tag(text: str, at: int) -> tuple[bool, str, int] | None:
    """At `at`, a tag's (closing, name as written, where the name ends) if a name ends there
    before the text does, else None."""
    if not text.startswith("<", at):
        return None
    closing = text.startswith("</", at)
    start = at + 2 if closing else at + 1
    if start >= len(text) or text[start] not in string.ascii_letters:
        return None
    end = start
    while end < len(text) and text[end] not in _ENDS:
        end += 1
    if end == len(text):
        return None
    return closing, text[start:end], end


def ascii_lower(name: str) -> str:
    return name.translate(_LOWER)


def ends_before_a_less_than(text: str, at: int) -> bool:
    """A ">" follows before any "<" (how the patterns bound a tag: `[^<>]*>`)."""
    close, opener = text.find(">", at), text.find("<", at)
    return close >= 0 and (opener < 0 or close < opener)


PIECES = st.sampled_from(
    ["<", "</", ">", "/", " ", "\t", "\n", "\f", "\r", "\v", "\xa0", "\x00", "-", ":", ".", "=",
     "x", "\u017f", "\u212a", "\u0130", "\u00e9", "script", "SCRIPT", "style", "Style", "body",
     "BODY", "html", "title", "textarea", "blockquote", "bloc", "quote", "p", "div", "br",
     "d\u0130v", "o:p"])
MARKUP = st.lists(PIECES, max_size=14).map("".join)


@settings(max_examples=2000, deadline=None)
@given(MARKUP)
def test_raw_text_and_closing_tags_read_names_as_whatwg(text: str) -> None:
    for at in range(len(text)):
        tag = whatwg_tag(text, at)
        opening = tag is not None and not tag[0]
        closing = tag is not None and tag[0]
        name = ascii_lower(tag[1]) if tag else ""
        found = markup._OPENER.match(text, at)
        opens = (opening and name in markup.RAW_TEXT and tag is not None
                 and ends_before_a_less_than(text, tag[2]))
        assert (found is not None and found.group(2) is not None) == opens, (text, at)
        assert found is None or found.group(2) is None or found.group(2).lower() == name
        for raw in markup.RAW_TEXT:
            closes = closing and name == raw
            assert (markup.RAW_TEXT_CLOSE[raw].match(text, at) is not None) == closes
        # The body's end: a tag ended by ">" before any "<", as the other tag patterns read it.
        for raw, pattern in zip(("body", "html"), placement._CLOSING_TAGS, strict=True):
            ends = (closing and name == raw and tag is not None
                    and ends_before_a_less_than(text, tag[2]))
            assert (pattern.match(text, at) is not None) == ends, (text, at)


BLOCKS = frozenset({"br", "p", "div", "tr", "td", "th", "li", "ul", "ol", "h1", "h2", "h3", "h4",
                    "h5", "h6", "blockquote", "table", "pre", "hr"})


@settings(max_examples=2000, deadline=None)
@given(MARKUP)
def test_block_quote_and_signature_tags_read_names_as_whatwg(text: str) -> None:
    """Where a name follows `<` or `</` at once (the patterns also allow blanks between, as
    before: `< blockquote >` counts as a quote), a block tag, a quote and the tags around an
    HTML signature are those WHATWG names so."""
    for at in range(len(text)):
        tag = whatwg_tag(text, at)
        if tag is None:
            continue
        _, written, name_end = tag
        name = ascii_lower(written)
        bounded = ends_before_a_less_than(text, name_end)
        blocks = bounded and name in BLOCKS
        assert (bodytext._BLOCK_TAG.match(text, at) is not None) == blocks, (text, at)
        quotes = bounded and name == "blockquote"
        assert (bodytext.BLOCKQUOTE_TAG.match(text, at) is not None) == quotes, (text, at)
        assert (placement.BLOCKQUOTE_TAG.match(text, at) is not None) == quotes, (text, at)
        found = placement._HTML_TAG.match(text, at)
        # The pattern's name ends at a "<" too, as its tag does.
        assert (found is not None) == (bounded and "<" not in written), (text, at)
        if found is not None:
            assert found.group(2) == written
            assert placement._tag_name(found) == (name if written.isascii() else written)
