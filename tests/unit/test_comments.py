"""Comments and text that holds no markup, as WHATWG HTML's tokenizer reads them (HTML Living
Standard §13.2.5: the markup declaration open, comment and bogus comment states; RAWTEXT,
RCDATA and the script data states): `markup.hidden_spans`, on which the token scan
(`bodytext.html_to_text`) and stamping (`placement`) rely, against a character-by-character
reader of those states. Tags are read as every tag pattern here reads them: a tag ends at its
`>` before any other `<` (else it is text), and an end tag at its first `>`."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casethread.core import bodytext, markup, mime, placement

_ENDS = "\t\n\f\r />"


def _alpha(c: str) -> bool:
    return c in string.ascii_letters


def _tag_at(text: str, at: int) -> tuple[str, int] | None:
    """A start tag at `at` as the patterns read it: its lower-case name and its end."""
    end = at + 1
    while end < len(text) and text[end] not in _ENDS and text[end] != "<":
        end += 1
    if end == len(text) or text[end] == "<":
        return None
    close = text.find(">", end)
    if close < 0 or "<" in text[end:close]:
        return None
    return text[at + 1 : end].lower(), close + 1


def _end_tag_named(text: str, at: int, name: str) -> int | None:
    """An appropriate end tag of `name` at `at` (`</name` and a name end): where it ends."""
    end = at + 2 + len(name)
    if (text[at : at + 2] != "</" or text[at + 2 : end].lower() != name
            or end >= len(text) or text[end] not in _ENDS):
        return None
    close = text.find(">", end)
    return len(text) if close < 0 else close + 1


# The comment states of §13.2.5.43-52, each: {character: the state it moves to}, and the
# state any other character moves to, and whether that state reconsumes it (reads it again).
_COMMENT_STATES: dict[str, tuple[dict[str, str], str, bool]] = {
    "start": ({"-": "start dash", ">": "done"}, "comment", True),
    "start dash": ({"-": "end", ">": "done"}, "comment", True),
    "comment": ({"<": "lt", "-": "end dash"}, "comment", False),
    "lt": ({"!": "lt bang", "<": "lt"}, "comment", True),
    "lt bang": ({"-": "lt bang dash"}, "comment", True),
    "lt bang dash": ({"-": "lt bang dash dash"}, "end dash", True),
    # `>` or not (a nested-comment error): reconsumed in the end state
    "lt bang dash dash": ({}, "end", True),
    "end dash": ({"-": "end"}, "comment", True),
    "end": ({">": "done", "!": "end bang", "-": "end"}, "comment", True),
    "end bang": ({"-": "end dash", ">": "done"}, "comment", True),
}


def _comment(text: str, at: int) -> int:
    """Where the comment opened by `<!--` at `at` ends: §13.2.5.43-52, a state a character."""
    state, i = "start", at + 4
    while i < len(text):
        moves, other, reconsume = _COMMENT_STATES[state]
        if text[i] in moves:
            state, i = moves[text[i]], i + 1
        else:
            state, i = other, i if reconsume else i + 1
        if state == "done":
            return i
    return len(text)


def _script(text: str, at: int) -> int:
    """Where the script whose text starts at `at` ends (after its end tag): §13.2.5.4, 15-30."""
    state, i = "data", at
    while i < len(text):
        c = text[i]
        if state in ("data", "escaped", "escaped dash", "escaped dash dash"):
            if c == "<":
                closing = _end_tag_named(text, i, "script")
                if closing is not None:
                    return closing  # script data, or escaped: the end tag
                if state == "data":
                    if text.startswith("<!--", i):
                        state, i = "escaped dash dash", i + 4
                        continue
                else:
                    name_end = i + 7
                    if (text[i + 1 : name_end].lower() == "script" and name_end < len(text)
                            and text[name_end] in _ENDS):
                        state, i = "double", name_end + 1
                        continue
                    state = "escaped"
            elif state != "data":
                if c == "-":
                    state = "escaped dash" if state == "escaped" else "escaped dash dash"
                elif c == ">" and state == "escaped dash dash":
                    state = "data"
                else:
                    state = "escaped"
        else:  # double escaped, its dash states
            if c == "<":
                state = "double"
                if _end_tag_named(text, i, "script") is not None:
                    state, i = "escaped", i + 9
                    continue
            elif c == "-":
                state = "double dash" if state == "double" else "double dash dash"
            elif c == ">" and state == "double dash dash":
                state = "data"
            else:
                state = "double"
        i += 1
    return len(text)


def whatwg_spans(text: str) -> list[tuple[int, int, str]]:
    """The comments (bogus ones too) and raw text elements, read a character at a time."""
    spans: list[tuple[int, int, str]] = []
    i = 0
    while i < len(text):
        if text[i] != "<" or i + 1 >= len(text):
            i += 1
            continue
        c = text[i + 1]
        if c == "!" and text.startswith("<!--", i):
            end, kind = _comment(text, i), "comment"
        elif c in "!?" or (c == "/" and i + 2 < len(text) and not _alpha(text[i + 2])
                           and text[i + 2] != ">"):
            close = text.find(">", i + 2)
            end, kind = (len(text) if close < 0 else close + 1), "comment"
        elif _alpha(c) and (tag := _tag_at(text, i)) is not None and tag[0] in markup.RAW_TEXT:
            kind = tag[0]
            if kind == "script":
                end = _script(text, tag[1])
            else:
                end = next((e for j in range(tag[1], len(text))
                            if (e := _end_tag_named(text, j, kind)) is not None), len(text))
        else:
            i += 1
            continue
        spans.append((i, end, kind))
        i = end
    return spans


PIECES = st.sampled_from(
    ["<", ">", "!", "-", "--", "?", "/", " ", "x", "3", "\n", "<!--", "-->", "--!>", "<!-->",
     "<!--->", "<!---->", "--!", "<!", "<?", "</", "</ ", "<![if !supportLists]>", "<![endif]>",
     "<!--[if gte mso 9]>", "<![endif]-->", "<!DOCTYPE html>", "<p>", "</p>", "<style>",
     "</style>", "<STYLE media=x>", "</style x>", "<script>", "</script>", "<SCRIPT>",
     "</script ", "<script", "script", "<title>", "</title>", "<textarea>", "</textarea>",
     "<xmp>", "</xmp>", "<b>", "</b>", "<style-x>", "</stylex>", "\u017f", "[ref:AB]", "<!-", "!>",
     "<!---", "-<"])
MARKUP = st.lists(PIECES, max_size=16).map("".join)


@settings(max_examples=3000, deadline=None)
@given(MARKUP)
def test_hidden_spans_read_as_whatwg(text: str) -> None:
    assert [tuple(s) for s in markup.hidden_spans(text)] == whatwg_spans(text), text


@pytest.mark.parametrize(("text", "spans"), [
    ("a<!-->b", [(1, 6, "comment")]),  # abrupt closing of an empty comment
    ("a<!--->b", [(1, 7, "comment")]),
    ("a<!---->b", [(1, 8, "comment")]),
    ("a<!--!>b-->c", [(1, 11, "comment")]),  # `<!--!>` closes nothing
    ("a<!-- x --!>b", [(1, 12, "comment")]),  # incorrectly closed, closed all the same
    ("<![if !supportLists]>1.<![endif]>x", [(0, 21, "comment"), (23, 33, "comment")]),
    ("<!--[if gte mso 9]><xml>x</xml><![endif]-->y", [(0, 43, "comment")]),
    ("<!--[if !mso]><!-->x<!--<![endif]-->", [(0, 19, "comment"), (20, 36, "comment")]),
    ("</ 3>x<?xml a?>", [(0, 5, "comment"), (6, 15, "comment")]),
    ("</>x", []),
    ("<style><!-- p{}</style>x", [(0, 23, "style")]),
    ("<script><!-- a</script>x", [(0, 23, "script")]),
    ("<script><!--<script></script>x</script>y", [(0, 39, "script")]),
    ("<script><!--<script>--></script>x", [(0, 32, "script")]),
    ("a<!---<!-->b", [(1, 11, "comment")]),
])
def test_comment_shapes(text: str, spans: list[tuple[int, int, str]]) -> None:
    assert [tuple(s) for s in markup.hidden_spans(text)] == spans == whatwg_spans(text)


# --- what the token scan reads, where the stamp goes ----------------------------------------

@pytest.mark.parametrize("html", [
    "<p>Hi</p><!--><p>[ref:ABC]</p><!-- x -->",  # an empty comment hides nothing after it
    "<p>Hi</p><!---><p>[ref:ABC]</p>",
    "<!-- a --!><p>[ref:ABC]</p>",  # closed by `--!>`
    "<style><!-- p{}</style><p>[ref:ABC]</p>",  # `<!--` in a style is text
    "<script><!-- a</script><p>[ref:ABC]</p>",
    "<title><!--</title><p>[ref:ABC]</p>",
    "<p><![if !supportLists]>1.<![endif]>[ref:ABC]<![if !vml]><img src=x><![endif]></p>",
])
def test_a_token_after_comment_like_markup_is_read(html: str) -> None:
    assert "[ref:ABC]" in bodytext.html_to_text(html)


@pytest.mark.parametrize("html", [
    "<!--[if gte mso 9]><xml>[ref:ABC]</xml><![endif]--><p>Hi</p>",
    "<!-- [ref:ABC] --!><p>Hi</p>",
    "<!x [ref:ABC] <br><p>Hi</p>",  # a bogus comment runs to the first `>`
    "<p>Hi</p></ [ref:ABC]>",
])
def test_a_token_in_a_comment_is_not_read(html: str) -> None:
    assert "[ref:ABC]" not in bodytext.html_to_text(html)


@pytest.mark.parametrize(("html", "expected"), [
    ("<html><body><p>x</p><!--></body></html>", "</body></html>"),
    ("<html><body><p>x</p><!--->\n</body></html>", "</body></html>"),
    ("<html><body><p>x</p><!-- a --!></body></html>", "</body></html>"),
    ("<html><head><style><!-- p{}</style></head><body><p>x</p></body></html>", "</body></html>"),
    ("<html><body><p>x</p></body><!-- </body> --!></html>", "</body><!-- </body>"),
])
def test_the_hidden_tag_goes_before_the_body_end_browsers_read(html: str, expected: str) -> None:
    assert placement.html_insertion_index(html) == html.index(expected)


def test_a_signature_after_an_empty_comment_is_read() -> None:
    html = "<html><body><p>Hi</p><!--><div>-- <br>Dana</div></body></html>"
    assert placement.html_insertion_index(html) == html.index("<div>-- ")
    # and one inside a comment closed by `--!>` is none
    html = "<html><body><p>Hi</p><!-- <div>-- <br>Dana</div> --!></body></html>"
    assert placement.html_insertion_index(html) == html.index("</body>")


@pytest.mark.parametrize(("head", "charset"), [
    (b"<!--><meta charset=koi8-r>", "koi8-r"),  # `<!-->` is a whole comment to the prescan
    (b"<!--->\n<meta charset=koi8-r>", "koi8-r"),
    (b"<!-- x --!><meta charset=koi8-r> -->", None),  # `--!>` closes none there
    (b"<![if x]><meta charset=koi8-r><![endif]>", "koi8-r"),
    (b"<!x <meta charset=koi8-r>", None),  # passed over to the first `>`
    (b"<? <meta charset=koi8-r> ?>", None),
    # what is passed over joins nothing: no `<meta` starts before it, and it ends a <meta>
    (b"<<!x>meta charset=koi8-r>", None),
    (b"<<!-- -->meta charset=koi8-r>", None),
    (b"<meta <!x> charset=koi8-r>", None),
    (b'<meta charset="<?x>koi8-r">', None),
    (b"<!x><meta charset=koi8-r>", "koi8-r"),
])
def test_the_meta_prescan_skips_comments_as_html5_does(head: bytes, charset: str | None) -> None:
    part = mime.parse(b"", "text/html")
    assert mime.part_charset(part, head + b"<p>x</p>") == charset
