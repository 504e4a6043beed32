"""Body stamping (core.stamp), shape by shape and encoding by encoding.

Each test states the exact bytes it expects where that is short, and otherwise checks through
the stdlib `email` parser: the stamped part decodes to the original text plus the insertion, and
every other part is byte-identical.
"""

from __future__ import annotations

import base64
import email
import mmap
import os
import quopri
import re
from email import base64mime, quoprimime
from email.message import Message as EmailMessage
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casethread.core import mime, placement
from casethread.core.bodytext import iter_texts
from casethread.core.message import newline_of, parse_raw
from casethread.core.settings import StampSettings
from casethread.core.stamp import (
    StampPlan,
    apply_splices,
    iter_spliced,
    plan_message_stamp,
    plan_stamp,
)
from casethread.core.text_decoding import decode_text
from casethread.core.token import Keyring
from casethread.core.transfer import qp_encode

DATA = Path(__file__).resolve().parents[1] / "data" / "mime"
TOKEN = "7K2M9QX4RT8VB3ZP"
TAG = StampSettings().html_template.replace("{token}", TOKEN)
LINE = f"[ref:{TOKEN}]"
QUOTE = '"'
FUZZ_EXAMPLES = int(os.environ.get("CASETHREAD_FUZZ_EXAMPLES", "200"))


def split(raw: bytes) -> tuple[bytes, bytes, mime.TopFields]:
    headers, body = parse_raw(raw)
    return raw[: len(raw) - len(body)], body, mime.top_fields(headers)


def plan_for(raw: bytes, options: StampSettings | None = None) -> StampPlan:
    _, body, top = split(raw)
    return plan_stamp(top.content_type, top.cte, body, TOKEN, TOKEN, options,
                      top_disposition=top.disposition, newline=newline_of(raw))


def stamp(raw: bytes, options: StampSettings | None = None) -> bytes:
    """The whole stamped message (the original when nothing changed)."""
    head, body, _ = split(raw)
    return head + apply_splices(body, plan_for(raw, options).splices)


def outcomes(raw: bytes, options: StampSettings | None = None) -> dict[str, tuple[str, str]]:
    return {o.target: (o.status, o.reason) for o in plan_for(raw, options).outcomes}


def leaves(raw: bytes) -> list[EmailMessage]:
    return [p for p in email.message_from_bytes(raw).walk() if not p.is_multipart()]


def text_of(part: EmailMessage) -> str:
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode(part.get_content_charset() or "us-ascii")


def only_changed_leaves(before: bytes, after: bytes) -> list[tuple[EmailMessage, EmailMessage]]:
    """Pairs of leaves that differ; asserts the structure is the same."""
    old, new = leaves(before), leaves(after)
    assert [p.get_content_type() for p in old] == [p.get_content_type() for p in new]
    return [(a, b) for a, b in zip(old, new, strict=True)
            if a.get_payload(decode=True) != b.get_payload(decode=True)]


def message(
    content_type: str, body: bytes, cte: str | None = None, newline: bytes = b"\n"
) -> bytes:
    head = b"From: a@example.com\nSubject: s\nMIME-Version: 1.0\n"
    head += b"Content-Type: " + content_type.encode()
    if cte:
        head += b"\nContent-Transfer-Encoding: " + cte.encode()
    return (head + b"\n\n").replace(b"\n", newline) + body


def fixture(name: str, newline: bytes = b"\n") -> bytes:
    return (DATA / name).read_bytes().replace(b"\n", newline)


# --- single parts -------------------------------------------------------------------------


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_plain_text_gets_a_token_line_in_its_own_line_ending(newline: bytes) -> None:
    raw = message("text/plain; charset=us-ascii", b"Hello,\nthanks.\n".replace(b"\n", newline))
    out = stamp(raw)
    expected_tail = b"Hello,\nthanks.\n\n[ref:%s]\n" % TOKEN.encode()
    assert out == raw[: raw.index(b"Hello")] + expected_tail.replace(b"\n", newline)


@pytest.mark.parametrize(("ctype", "body", "cte", "tail"), [
    # Apple Mail: quoted-printable, delsp=yes, the last line a soft break with no newline.
    ("text/plain; charset=utf-8; format=flowed; delsp=yes", b"Thanks,\nDana=20", "quoted-printable",
     "Thanks,\nDana \n\n[ref:%s]\n"),
    ("text/plain; charset=utf-8; format=flowed", b"Thanks,\nDana ", "8bit",
     "Thanks,\nDana \n\n[ref:%s]\n"),
    # A line that ends the paragraph, or text that does not flow: nothing more.
    ("text/plain; charset=utf-8; format=flowed", b"Thanks,\nDana", "8bit",
     "Thanks,\nDana\n[ref:%s]\n"),
    ("text/plain; charset=utf-8", b"Thanks,\nDana ", "8bit", "Thanks,\nDana \n[ref:%s]\n"),
    # Above a signature separator (which is no soft break) after a flowed line.
    ("text/plain; charset=utf-8; format=flowed", b"Thanks,\nDana \n-- \nDana", "8bit",
     "Thanks,\nDana \n\n[ref:%s]\n-- \nDana"),
])
def test_a_flowed_last_line_does_not_take_the_token_line_into_its_paragraph(
        ctype: str, body: bytes, cte: str, tail: str) -> None:
    """RFC 3676 §4.2: a line ending in a blank flows into the next; readers showed
    `Dana[ref:...]`. An empty line ends the paragraph."""
    [part] = leaves(stamp(message(ctype, body, cte)))
    assert text_of(part) == tail % TOKEN


MID = "<B4zR2Fw-k3j9a-AAAAAQAAAAIAAAADVQ+x/1sd-support@example.com>"


def _stamped_text(body: str, cte: str | None) -> str:
    """The text of a UTF-8 text/plain part holding `body` (in `cte`) once stamped."""
    raw_body = body.encode()
    if cte == "base64":
        raw_body = base64.encodebytes(raw_body)
    elif cte == "quoted-printable":
        raw_body = qp_encode(raw_body, b"\n")
    [part] = leaves(stamp(message("text/plain; charset=utf-8", raw_body, cte)))
    return text_of(part)


@pytest.mark.parametrize(("body", "cte", "tail"), [
    # osTicket's text: html2text of its template, then "\nRef-Mid: <Message-ID>\n".
    (f"Hello Pat,\ndone.\nRef-Mid: {MID}\n", None,
     f"Hello Pat,\ndone.\n\n[ref:{TOKEN}]\nRef-Mid: {MID}\n"),
    (f"done.\r\nRef-Mid: {MID}\r\n\r\n", None,
     f"done.\r\n\r\n[ref:{TOKEN}]\r\nRef-Mid: {MID}\r\n\r\n"),
    (f"{'x' * 70} done.\nRef-Mid: {MID}", "quoted-printable",
     f"{'x' * 70} done.\n\n[ref:{TOKEN}]\nRef-Mid: {MID}"),
    (f"{'long text ' * 400}\nRef-Mid: {MID}\n", "base64",
     f"{'long text ' * 400}\n\n[ref:{TOKEN}]\nRef-Mid: {MID}\n"),
    # Not the last line, or not at a line's start: the end, as for any text.
    (f"Ref-Mid: {MID}\nThanks\n", None, f"Ref-Mid: {MID}\nThanks\n\n[ref:{TOKEN}]\n"),
    (f"see Ref-Mid: {MID}\n", None, f"see Ref-Mid: {MID}\n\n[ref:{TOKEN}]\n"),
])
def test_the_token_line_goes_above_ostickets_last_ref_mid_line(
        body: str, cte: str | None, tail: str) -> None:
    """osTicket reads `Ref-Mid: <its Message-ID>` back from a reply's body only at the body's
    end (`Ref-Mid: ([^"\\s]*)$`), its fallback when the headers name none of its mail: below
    it, our token line (quoted in the customer's reply) hid it from osTicket."""
    assert _stamped_text(body, cte) == tail


SIG = "-- \nJane Agent\nExample Support, +1 555 0100\n"


@pytest.mark.parametrize(("body", "cte", "tail"), [
    (f"Your order left today.\n\n{SIG}", None, f"Your order left today.\n\n\n{LINE}\n{SIG}"),
    ("done.\r\n-- \r\nJane\r\n", None, f"done.\r\n\r\n{LINE}\r\n-- \r\nJane\r\n"),
    (f"{'x' * 70} done.\n{SIG}", "quoted-printable", f"{'x' * 70} done.\n\n{LINE}\n{SIG}"),
    (f"{'long text ' * 400}\n{SIG}", "base64", f"{'long text ' * 400}\n\n{LINE}\n{SIG}"),
    # The first separator: a client drops everything from it on (the quoted history too).
    ("done.\n-- \nJane\n\n> earlier\n> -- \n> Pat\n-- \nfooter", None,
     f"done.\n\n{LINE}\n-- \nJane\n\n> earlier\n> -- \n> Pat\n-- \nfooter"),
    # A separator as the last line, or the first.
    ("done.\n-- ", None, f"done.\n\n{LINE}\n-- "),
    ("-- \nJane\n", None, f"\n{LINE}\n-- \nJane\n"),
    # No separator: "--" without its blank, a blank after it, text after it, a quoted one.
    ("done.\n--\nJane\n", None, f"done.\n--\nJane\n\n{LINE}\n"),
    ("done.\n--  \nJane\n", None, f"done.\n--  \nJane\n\n{LINE}\n"),
    ("done.\n-- Jane\n", None, f"done.\n-- Jane\n\n{LINE}\n"),
    ("done.\n> -- \n> Pat\n", None, f"done.\n> -- \n> Pat\n\n{LINE}\n"),
    # With osTicket's last line too: above the separator, which comes first.
    (f"done.\n{SIG}Ref-Mid: {MID}\n", None, f"done.\n\n{LINE}\n{SIG}Ref-Mid: {MID}\n"),
])
def test_the_token_line_goes_above_the_signature_separator(
        body: str, cte: str | None, tail: str) -> None:
    """Thunderbird (`mail.strip_sig_on_reply`) and Roundcube (`strip_existing_sig`), both on
    by default, quote a reply without the signature: from the `-- ` line to the end. Our token
    line below the signature went with it, and a reply that dropped the Subject tag and the
    References (a new mail quoting ours) opened a new case."""
    assert _stamped_text(body, cte) == tail


def test_a_token_line_above_the_signature_is_there_when_another_case_is_quoted_below() -> None:
    """The signature above a quote that ends in another case's token (the app moved the
    conversation): our line above the separator is found again, and not written twice when
    the stamped mail passes once more."""
    other = "8M3N0RY5SU9WC4AQ"
    body = f"done.\n{SIG}\n> earlier answer\n> [ref:{other}]\n".encode()
    once = stamp(message("text/plain; charset=utf-8", body, "8bit"), StampSettings(html=False))
    [part] = leaves(once)
    assert text_of(part) == f"done.\n\n{LINE}\n{SIG}\n> earlier answer\n> [ref:{other}]\n"
    assert outcomes(once, StampSettings(html=False)) == {"text": ("already", "")}


def test_our_token_only_below_the_signature_is_not_there_yet() -> None:
    """An agent's reply with the signature above its quote of our earlier mail (Thunderbird
    with `sig_bottom` off, Gmail's signature before the quoted text): the quote's token is
    below the separator, and the customer's client drops it with the signature when it
    quotes the reply. The reply gets a line of its own above the separator, once."""
    body = f"Check the tray.\n{SIG}\nOn Mon, Jane wrote:\n> Restart it.\n> {LINE}\n> -- \n"
    raw = message("text/plain; charset=utf-8", body.encode(), "8bit")
    once = stamp(raw, StampSettings(html=False))
    [part] = leaves(once)
    assert text_of(part) == f"Check the tray.\n\n{LINE}\n{SIG}" + body[len("Check the tray.\n")
                                                                     + len(SIG):]
    assert outcomes(once, StampSettings(html=False)) == {"text": ("already", "")}
    # Above the separator (a bottom-posted reply quoting our mail), the quote's token is ours.
    above = f"> Restart it.\n> {LINE}\n\nDone, thanks.\n{SIG}"
    raw = message("text/plain; charset=utf-8", above.encode(), "8bit")
    assert outcomes(raw, StampSettings(html=False)) == {"text": ("already", "")}


@pytest.mark.parametrize(("template", "tail"), [
    ("\n[ref:{token}]", f"done.\n\n[ref:{TOKEN}]\nRef-Mid: {MID}\n"),
    ("[ref:{token}]", f"done.\n[ref:{TOKEN}]\nRef-Mid: {MID}\n"),
    ("\n-- \nref {token}", f"done.\n\n-- \nref {TOKEN}\nRef-Mid: {MID}\n"),
])
@pytest.mark.parametrize("cte", [None, "quoted-printable", "base64"])
def test_a_template_without_a_last_line_break_keeps_ostickets_line_its_own(
        template: str, tail: str, cte: str | None) -> None:
    """Above `Ref-Mid:`, a template that does not end in a line break (valid: `{token}` is all
    it needs) got one: it joined osTicket's line (`[ref:...]Ref-Mid: <...>`)."""
    raw_body = f"done.\nRef-Mid: {MID}\n".encode()
    if cte == "base64":
        raw_body = base64.encodebytes(raw_body)
    elif cte == "quoted-printable":
        raw_body = qp_encode(raw_body, b"\n")
    options = StampSettings(html=False, text_template=template)
    [part] = leaves(stamp(message("text/plain; charset=utf-8", raw_body, cte), options))
    assert text_of(part) == tail
    # At the end of other text, the template is written as it is.
    plain = message("text/plain; charset=utf-8", b"done.\n", cte=None)
    [part] = leaves(stamp(plain, options))
    assert text_of(part) == "done.\n" + template.replace("{token}", TOKEN)


def test_html_tag_goes_before_the_last_closing_body_tag_any_case() -> None:
    html = b"<html><body><p>quoted </body> text</p>\n</BODY >\n</html>\n"
    out = stamp(message("text/html; charset=utf-8", html, "8bit"))
    assert out.endswith(b"<p>quoted </body> text</p>\n" + TAG.encode() + b"</BODY >\n</html>\n")


def test_a_closing_body_tag_inside_a_comment_is_not_the_end_of_the_body() -> None:
    html = (b"<html><body><p>x</p></body>\n<!--[if mso]></body><![endif]-->\n"
            b"<!-- unclosed </body>\n</html>\n")
    out = stamp(message("text/html; charset=utf-8", html, "8bit"))
    assert out.endswith(b"<p>x</p>" + TAG.encode() + html[html.index(b"</body>\n<!--"):])


@pytest.mark.parametrize("piece", [b"<!-->x", b"<?>", b"<![if x]>y<![endif]>"])
def test_a_part_of_more_comments_than_stamping_reads_is_left_unstamped(piece: bytes) -> None:
    """Stamping reads every comment and raw text element of a part (`placement._Hidden`),
    ~1 us each: a part of more than `MAX_HIDDEN_SPANS`, which no person's mail holds, is left
    as it is (16 MiB of `<?>` took 6 s of CPU and 80 MiB); a part of that many is stamped."""
    count = placement.MAX_HIDDEN_SPANS // piece.count(b"<")
    for pieces, stamped in ((count, True), (count + 1, False)):
        html = b"<html><body><p>x</p>" + piece * pieces + b"</body></html>\n"
        raw = message("text/html; charset=utf-8", html, "8bit")
        result = outcomes(raw)["html"]
        if stamped:
            assert result == ("stamped", "")
            out = stamp(raw)  # one long line: broken before the tag (at most 998 octets)
            assert out.index(TAG.encode()) > out.rindex(piece), piece
        else:
            assert result == ("skipped", f"more than {placement.MAX_HIDDEN_SPANS} comments")
            assert stamp(raw) == raw


def test_a_closing_body_tag_inside_another_tag_is_not_the_end_of_the_body() -> None:
    """`</body>` in an attribute value: inserting there would cut the tag open and show our
    hidden text; the tag goes at the end instead."""
    html = b'<html><body><p>x</p><a title="</body>">y</a>'
    out = stamp(message("text/html; charset=utf-8", html, "8bit"))
    assert out.endswith(html + TAG.encode())


@pytest.mark.parametrize("html", [
    b'<html><body><p>x</p><iframe srcdoc="<p>y</p></body>"></iframe>',
    b"<html><body><p>x</p><iframe srcdoc='<p>y</p></body>'></iframe>",
    b'<html><body><p>x</p><a title="a > b </body>">y</a>',
    b'<html><body><p>x</p><a title = "a>b</body>">y</a>'])
def test_a_closing_body_tag_in_a_quoted_value_after_a_greater_than_is_no_body_end(
        html: bytes) -> None:
    """A ">" inside a quoted attribute value ends no tag (WHATWG HTML §13.2.5.36-37): the
    `</body>` after it in the value was taken for the body's end, and our tag's quotes cut the
    value open and showed `[ref:...]` and the rest of the tag as text."""
    out = stamp(message("text/html; charset=utf-8", html, "8bit"))
    assert out.endswith(html + TAG.encode())


def test_a_less_than_sign_that_opens_no_tag_hides_no_body_end() -> None:
    """`a < b` is text (a "<" not followed by a letter opens no tag): the `</body>` after it was
    taken for part of a tag, and the tag went to the part's end, inside a comment left open."""
    html = b"<html><body>Orders < 5\n</body><!-- x"
    out = stamp(message("text/html; charset=utf-8", html, "8bit"))
    assert out.endswith(b"<body>Orders < 5\n" + TAG.encode() + b"</body><!-- x")


@pytest.mark.parametrize("after", [
    '<p title="=></body>" a=">',  # a value left open at the end
    '</html><p title="=></body>"><a href="?q=">z</a>'])
def test_a_body_end_right_after_a_comment_is_read_as_data(after: str) -> None:
    """Between a comment's end and a `</body>` there is no "<" or ">": the tokenizer is in
    the data state. The look for a quoted value holding the (absent) ">" searched up to index
    -1, the text's last character, found a value's quote after the `</body>` and, with a
    `</body>` in a tag below it read already, gave up: the tag went to the part's end."""
    html = "<html><body>x<!-- c --></body>" + after
    assert placement.html_insertion_index(html) == html.index("</body>")


_BLANK = "\t\n\f\r "


def _whatwg_in_tag(text: str, at: int) -> bool:
    """Whether the WHATWG tokenizer is inside a tag (or a bogus comment) at `at`, read a
    character at a time: its tag states (§13.2.5.6-13, 32-40), without comments (`<!`)."""
    state, i = "data", 0
    while i < at:
        c = text[i]
        letter = c.isascii() and c.isalpha()
        i += 1
        if state == "data":
            state = "open" if c == "<" else "data"
        elif state == "open":
            state, i = ("name", i) if letter else ("end open", i) if c == "/" else ("data", i - 1)
        elif state == "end open":
            state = "name" if letter else "data" if c == ">" else "bogus"
        elif state == "bogus":
            state = "data" if c == ">" else "bogus"
        elif state in ("name", "attr", "unquoted"):
            if c == ">":
                state = "data"
            elif c in _BLANK:
                state = "after attr" if state == "attr" else "before attr"
            elif c == "/" and state != "unquoted":
                state = "self"
            elif c == "=" and state == "attr":
                state = "before value"
        elif state in ("before attr", "after attr", "after value", "self"):
            if c == ">":
                state = "data"
            elif c == "/":
                state = "self"
            elif c == "=" and state == "after attr":
                state = "before value"
            elif c not in _BLANK:
                state = "attr"
            elif state in ("after value", "self"):
                state = "before attr"
        elif state == "before value":
            quoted = {'"': "dq", "'": "sq", ">": "data"}
            state = quoted.get(c, "before value" if c in _BLANK else "unquoted")
        elif state in ("dq", "sq"):
            state = "after value" if c == ('"' if state == "dq" else "'") else state
    return state not in ("data", "open")


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(
    ["<a", "<b", "</p", "<", ">", " t=", "t=", '"', "'", " ", "x", " /", "a < b", "<p>",
     "</p>", '="<i>"', "='>'", '="a>b"', "\n", "="]), max_size=12).map("".join))
def test_a_closing_body_tag_is_the_end_when_the_tokenizer_is_in_no_tag(before: str) -> None:
    """The tag goes before the `</body>` that the WHATWG tokenizer reads as a tag of its own,
    and after it (at the end) when a tag, a quoted value or a bogus comment holds it. (No
    `<!`, `<?` or `</ `: `markup` reads those as comments wherever they are, a value's too.)"""
    html = before + "</body>"
    inside = _whatwg_in_tag(html, len(before))
    assert placement.html_insertion_index(html) == (len(html) if inside else len(before)), html


@pytest.mark.parametrize("element", [
    b'<style>p::after{content:"</body>"}</style>', b"<title>Why </body> matters</title>",
    b"<textarea>\n<html><body>x</body></html>\n</TEXTAREA>",
    b'<script>document.write("</body>")</script>'])
def test_a_closing_body_tag_inside_raw_text_is_not_the_end_of_the_body(element: bytes) -> None:
    """Script, style, title and textarea text is no markup (WHATWG HTML §13.2.5): our tag
    there broke a CSS string, or showed as text; it goes before </html> instead."""
    html = b"<html><head>" + element + b"</head><p>x</p>\n</html>\n"
    out = stamp(message("text/html; charset=utf-8", html, "8bit"))
    head, end, tail = html.rpartition(b"</html>")
    assert out.endswith(head + TAG.encode() + end + tail)
    # A real </body> after it is still the place.
    real = head + b"</body>" + end + tail
    out = stamp(message("text/html; charset=utf-8", real, "8bit"))
    assert out.endswith(head + TAG.encode() + b"</body>" + end + tail)


def test_a_closing_tag_name_with_a_non_ascii_letter_closes_no_raw_text() -> None:
    """`</\u017ftyle>` (long s, which a Unicode case-insensitive match reads as "s") closes no
    style element: tag names are ASCII case-insensitive. It raised KeyError out of stamping."""
    html = "<html><body><p>x</p></body></\u017ftyle></html>".encode()
    out = stamp(message("text/html; charset=utf-8", html, "8bit"))
    assert out.endswith(b"<p>x</p>" + TAG.encode() + "</body></\u017ftyle></html>".encode())


def test_an_opening_tag_name_running_on_in_a_non_ascii_letter_opens_no_raw_text() -> None:
    """`<style\u00e9>` is no style element (a tag name runs on through a non-ASCII letter): a
    style element holding it and a `</body>` in its text still holds that `</body>`. Under re.A
    the `\b` after `style` matched before the `\u00e9`: the `</body>` inside the style was
    taken for the body's end and the tag went into the style sheet."""
    tail = '<style>a{content:"</body>"} <style\u00e9> </style></html>'
    html = ("<html><body><p>x</p></body>" + tail).encode()
    out = stamp(message("text/html; charset=utf-8", html, "8bit"))
    assert out.endswith(b"<p>x</p>" + TAG.encode() + b"</body>" + tail.encode())


def test_closing_tag_names_end_only_at_a_blank_slash_or_greater_than() -> None:
    """A tag name ends at a tab, line feed, form feed, carriage return, space, "/" or ">" only
    (WHATWG HTML §13.2.5.8). `</body foo>` and `</body/>` end the body (`</body\\s*>` missed
    them: the tag went before </html>), `</body\u00a0>` does not; `</style media=x>` ends a
    style, so a `</body>` in its text is no body end (the tag went into the style sheet)."""
    for closer in ["</body foo>", "</body/>", "</BODY\t>"]:
        html = f"<html><body><p>x</p>{closer}</html>".encode()
        out = stamp(message("text/html; charset=utf-8", html, "8bit"))
        assert out.endswith(f"<p>x</p>{TAG}{closer}</html>".encode()), closer
    html = "<html><body><p>x</p></body\u00a0></html>".encode()
    out = stamp(message("text/html; charset=utf-8", html, "8bit"))
    assert out.endswith(f"<p>x</p></body\u00a0>{TAG}</html>".encode())
    for closer in ["</style media=x>", "</style/>", "</style\n>"]:
        tail = f'<style>a{{content:"</body>"}}{closer}</html>'
        html = ("<html><body><p>x</p></body>" + tail).encode()
        out = stamp(message("text/html; charset=utf-8", html, "8bit"))
        assert out.endswith(f"<p>x</p>{TAG}</body>{tail}".encode()), closer


def test_an_opening_tag_name_running_on_in_punctuation_opens_no_raw_text() -> None:
    """`<style-x>`, `<style:x>` are no style elements: a style holding one and a `</body>` in
    its text still holds that `</body>`. The `\\b` after `style` ended the name at the "-":
    the `</body>` inside the style was taken for the body's end."""
    for opener in ["<style-x>", "<style:x>", "<style.x>", "<style\v>"]:
        tail = f'<style>a{{content:"</body>"}} {opener} </style></html>'
        html = ("<html><body><p>x</p></body>" + tail).encode()
        out = stamp(message("text/html; charset=utf-8", html, "8bit"))
        assert out.endswith(b"<p>x</p>" + TAG.encode() + b"</body>" + tail.encode()), opener


def test_html_without_body_tag_goes_before_html_end_then_at_the_end() -> None:
    out = stamp(message("text/html", b"<html><p>x</p></html>"))
    assert out.endswith(b"<p>x</p>" + TAG.encode() + b"</html>")
    out = stamp(message("text/html", b"<p>fragment</p>"))
    assert out.endswith(b"<p>fragment</p>" + TAG.encode())


# An HTML signature as K-9 Mail and Thunderbird for Android find it when they quote a reply
# (HtmlSignatureRemover, on by default): they drop everything after it to the end of the first
# enclosing element that keeps other content. `@` marks where our tag goes.
@pytest.mark.parametrize("html", [
    # Thunderbird: the signature's own block.
    '<html><body>\n<p>Hi Pat,</p>\n    @<div class="moz-signature">-- <br>\n  Dana</div>\n'
    '</body>\n</html>\n',
    # K-9 Mail / Thunderbird for Android.
    "<html><body>Hi Pat,<br><br>@<div class='k9mail-signature'>-- <br>Sent</div></body></html>",
    # Gmail: no <body>, the separator in an inline span between line breaks, a block before.
    '<div dir="ltr"><div>Hi Pat,</div><br clear="all"><div><br></div>@<span class="gmail_'
    'signature_prefix">-- </span><br><div class="gmail_signature" data-smartmail="gmail_'
    'signature">Dana</div></div>',
    # Inside a paragraph (SOGo, Horde, RT): before the paragraph, as a <div> would end it.
    "<html><body><p>Hi Pat,</p>@<p><br />-- <br />Dana</p></body></html>",
    "<html><body>@<p>Hi Pat,<br>--&nbsp;<br>Dana</p></body></html>",
    # In a table cell, or the body's first line: inside it.
    "<html><body><table><tr><td>@-- <br>Dana</td></tr></table></body></html>",
    "<html><body>@-- <br>Dana</body></html>",
    # A block tag in a comment before it is no boundary: our tag went into the comment.
    "<html><body>@<div>a<!-- <p> --><br>-- <br>sig</div></body></html>",
    "<html><body>@<div>a<!--[if mso]></td><td><![endif]--><br>-- <br>sig</div></body></html>",
    # A tag whose name runs on past "blockquote" is no quote: a separator in it is read.
    "<html><body><p>Hi</p><blockquote-x>@<p>-- </p><p>Dana</p></blockquote-x></body></html>",
    # The agent's signature above a quote of the customer's mail, whose own is not looked at.
    "<html><body><p>Done.</p>@<div class=\"moz-signature\">-- <br>Dana</div><blockquote "
    "type=\"cite\"><p>Help</p><div class=\"moz-signature\">-- <br>Pat</div></blockquote>"
    "</body></html>",
])
def test_the_html_tag_goes_above_a_signature_separator(html: str) -> None:
    """Before </body>, below Thunderbird's `<div class="moz-signature">-- <br>`, our tag went
    with the signature when the customer's K-9 Mail or Thunderbird for Android quoted the
    mail, and a reply that kept neither the Subject tag nor References (the text part is not
    what an HTML reply quotes) opened a new case."""
    raw = message("text/html; charset=utf-8", html.replace("@", "").encode(), "8bit")
    [part] = leaves(stamp(raw))
    assert text_of(part) == html.replace("@", TAG)
    assert outcomes(stamp(raw)) == {"html": ("already", ""), "text": ("absent", "")}


@pytest.mark.parametrize("html", [
    # Thunderbird's plain-text signature file in HTML: `-- ` is no text of its own there.
    '<html><body><p>Hi</p><pre class="moz-signature" cols="72">-- \nDana</pre></body></html>',
    # In a quote, in a comment, inside a line, or `--` without a blank.
    "<html><body><p>Hi</p><blockquote><p>x<br>-- <br>Pat</p></blockquote></body></html>",
    "<html><body><p>Hi</p><!-- <br>-- <br> --></body></html>",
    "<html><body><p>Hi<br>a -- <br>b</p></body></html>",
    "<html><body><p>Hi<br><b>-- </b>bold<br></p></body></html>",
    "<html><body><p>Hi<br>--<br>Dana</p></body></html>",
    # Text of <title>, <style>, <script>, <textarea>: no line of the mail (the tag went before
    # <html> for a `<title>-- </title>`).
    "<html><head><title>-- </title></head><body><p>Hi</p></body></html>",
    "<html><body><p>Hi</p><textarea><br>-- <br>x</textarea></body></html>",
    # Deeper in inline tags than a client writes it: not looked through (a million `<b>`
    # before it took 0.8 s).
    "<html><body><p>Hi<br>" + "<b>" * 17 + "-- <br>Dana</p></body></html>",
    # `<p-x>` and `<bloc\u212aquote>` (a Kelvin sign) are inline elements, no line break: the
    # separator continues the line "Hi" (`\\b` read `<p-x>` as a <p>).
    "<html><body>Hi<p-x>-- <br>Dana</p-x></body></html>",
    "<html><body>Hi<bloc\u212aquote>-- <br>Dana</bloc\u212aquote></body></html>",
])
def test_html_that_no_client_reads_as_a_signature_gets_the_tag_before_the_body_end(
        html: str) -> None:
    raw = message("text/html; charset=utf-8", html.encode(), "8bit")
    [part] = leaves(stamp(raw))
    assert text_of(part) == html.replace("</body>", TAG + "</body>")


def test_our_html_tag_only_below_the_signature_is_not_there_yet() -> None:
    """An agent's HTML reply with its signature above the quote of our earlier mail
    (Thunderbird with `sig_bottom` off, Gmail): K-9 drops the quote with the signature, and our
    earlier tag with it. The reply gets a tag of its own above the signature, once."""
    quote = f"<blockquote type=\"cite\"><p>Restart it.</p>{TAG}</blockquote>"
    html = ("<html><body><p>Done.</p>@<div class=\"moz-signature\">-- <br>Dana</div>"
            + quote + "</body></html>")
    raw = message("text/html; charset=utf-8", html.replace("@", "").encode(), "8bit")
    once = stamp(raw)
    [part] = leaves(once)
    assert text_of(part) == html.replace("@", TAG)
    assert outcomes(once) == {"html": ("already", ""), "text": ("absent", "")}
    # Quoted above the signature (bottom-posted), the quote's tag is ours.
    above = (f"<html><body>{quote}<p>Done.</p><div class=\"moz-signature\">-- <br>D</div>"
             "</body></html>")
    raw = message("text/html; charset=utf-8", above.encode(), "8bit")
    assert outcomes(raw)["html"] == ("already", "")


def test_message_without_content_type_is_plain_us_ascii() -> None:
    raw = b"From: a@example.com\nSubject: s\n\nhi\n"
    assert stamp(raw) == raw + b"\n" + LINE.encode() + b"\n"


def test_token_in_html_is_escaped_and_templates_are_configurable() -> None:
    options = StampSettings(html_template="<span data-ref='{token}'>{token}</span>",
                           text_template="\n-- ref {token} --\n")
    _, body, top = split(message("text/html", b"<body></body>"))
    plan = plan_stamp(top.content_type, None, body, "a<b", "a<b", options)
    assert apply_splices(body, plan.splices) == (
        b"<body><span data-ref='a&lt;b'>a&lt;b</span></body>")
    plain = message("text/plain", b"x\r\n", newline=b"\r\n")
    assert stamp(plain, options).endswith(b"x\r\n\r\n-- ref " + TOKEN.encode() + b" --\r\n")


def test_each_target_can_be_turned_off() -> None:
    raw = fixture("outlook-related.eml")
    html_only = only_changed_leaves(raw, stamp(raw, StampSettings(text=False)))
    text_only = only_changed_leaves(raw, stamp(raw, StampSettings(html=False)))
    assert [a.get_content_type() for a, _ in html_only] == ["text/html"]
    assert [a.get_content_type() for a, _ in text_only] == ["text/plain"]
    off = plan_stamp("text/plain", None, b"x", TOKEN, TOKEN, StampSettings(html=False, text=False))
    assert off == StampPlan((), ())


# --- shapes -------------------------------------------------------------------------------


def alternative(newline: bytes = b"\n") -> bytes:
    body = (b"--alt\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
            b"Gr\xc3\xbc\xc3\x9fe\n\n--alt\nContent-Type: text/html; charset=utf-8\n"
            b"Content-Transfer-Encoding: 8bit\n\n<html><body>Gr\xc3\xbc\xc3\x9fe</body></html>\n"
            b"\n--alt--\n")
    return message('multipart/alternative; boundary="alt"', body.replace(b"\n", newline),
                   newline=newline)


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_alternative_gets_both_and_nothing_else_moves(newline: bytes) -> None:
    raw = alternative(newline)
    out = stamp(raw)
    tag = TAG.encode()
    line = b"\n[ref:%s]\n" % TOKEN.encode()
    expected = raw.replace(b"Gr\xc3\xbc\xc3\x9fe" + newline,
                           b"Gr\xc3\xbc\xc3\x9fe" + newline + line.replace(b"\n", newline), 1)
    expected = expected.replace(b"</body>", tag + b"</body>")
    assert out == expected


def test_outlook_shape_mixed_alternative_related_with_attachments() -> None:
    raw = fixture("outlook-related.eml", b"\r\n")
    out = stamp(raw)
    changed = only_changed_leaves(raw, out)
    assert [a.get_content_type() for a, _ in changed] == ["text/plain", "text/html"]
    plain_before, plain_after = (text_of(p) for p in changed[0])
    assert plain_after == plain_before + "\r\n" + LINE + "\r\n"
    html_before, html_after = (text_of(p) for p in changed[1])
    assert html_after == html_before.replace("</body>", TAG + "</body>")
    # The image and the PDF are byte-identical, headers included.
    for name in (b'name="image001.png"', b'name="invoice.pdf"'):
        assert segment_with(raw, name) == segment_with(out, name)
    assert max_line(out) <= 76


def segment_with(raw: bytes, needle: bytes) -> bytes:
    (segment,) = [s for s in re.split(rb"\r?\n------=_NextPart_\S+", raw) if needle in s]
    return segment


def max_line(raw: bytes) -> int:
    return max(len(line.rstrip(b"\r")) for line in raw.split(b"\n"))


def test_first_non_attachment_parts_win() -> None:
    body = (b"--m\nContent-Type: text/plain; name=notes.txt\n\nattached notes\n"
            b"--m\nContent-Type: text/html\nContent-Disposition: attachment\n\n<body>file</body>\n"
            b"--m\nContent-Type: text/plain\n\nthe body\n"
            b"--m\nContent-Type: text/plain\n\nsecond inline text\n--m--\n")
    raw = message("multipart/mixed; boundary=m", body)
    out = stamp(raw)
    assert out == raw.replace(b"the body", b"the body\n" + LINE.encode() + b"\n")
    assert outcomes(raw)["html"] == ("absent", "")


def test_nested_alternative_inside_mixed_with_calendar_and_message() -> None:
    body = (b"--m\nContent-Type: multipart/alternative; boundary=a\n\n"
            b"--a\nContent-Type: text/plain\n\ninvite\n"
            b"--a\nContent-Type: text/calendar; method=REQUEST\n\nBEGIN:VCALENDAR\nEND:VCALENDAR\n"
            b"--a--\n"
            b"--m\nContent-Type: message/rfc822\n\nSubject: fwd\nContent-Type: text/html\n\n"
            b"<body>forwarded</body>\n"
            b"--m--\n")
    raw = message("multipart/mixed; boundary=m", body)
    assert stamp(raw) == raw.replace(b"invite", b"invite\n" + LINE.encode() + b"\n")
    assert outcomes(raw)["html"] == ("absent", "")


def test_related_html_with_inline_image() -> None:
    image = (b"iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAA"
             b"AABJRU5ErkJggg==")
    body = (b"--r\nContent-Type: text/html; charset=us-ascii\n\n"
            b"<html><body><img src=\"cid:i1\"></body></html>\n"
            b"--r\nContent-Type: image/png\nContent-ID: <i1>\nContent-Disposition: inline\n"
            b"Content-Transfer-Encoding: base64\n\n" + image + b"\n--r--\n")
    raw = message('multipart/related; type="text/html"; boundary=r', body)
    out = stamp(raw)
    assert out == raw.replace(b"</body>", TAG.encode() + b"</body>")


# --- transfer encodings and charsets ------------------------------------------------------


def test_quoted_printable_keeps_every_original_line() -> None:
    raw = fixture("outlook-related.eml")
    out = stamp(raw, StampSettings(text=False))
    removed = [line for line in raw.split(b"\n") if line not in out.split(b"\n")]
    assert removed == []  # only lines were added (the tag's, and soft breaks)


def test_quoted_printable_cut_mid_line_uses_soft_breaks() -> None:
    html = b"<p>caf=E9</p></body></html>"
    raw = message("text/html; charset=iso-8859-1", html, "quoted-printable")
    out = stamp(raw)
    body = out[len(raw) - len(html):]
    assert body.startswith(b"<p>caf=E9</p>=\n<div style=3D")
    assert body.endswith(b"</div>=\n</body></html>")
    assert max_line(body) <= 76
    (_, after), = only_changed_leaves(raw, out)
    assert text_of(after) == "<p>café</p>" + TAG + "</body></html>"


def test_quoted_printable_body_tag_split_by_a_soft_break() -> None:
    html = b"<p>x</p></bo=\r\ndy></html>\r\n"
    raw = message("text/html", html, "quoted-printable", newline=b"\r\n")
    (_, after), = only_changed_leaves(raw, stamp(raw))
    assert text_of(after) == "<p>x</p>" + TAG + "</body></html>\r\n"


def test_quoted_printable_soft_break_with_blanks_after_it_is_stamped() -> None:
    """RFC 2045 6.7 (3): blanks after a soft break's "=" were added in transport and are
    deleted when decoding (the stdlib keeps them, so the decoding here is ours). Every
    original line stays as it is."""
    text = (b"Hello Pat, this line is long enough to need a soft line break in the mid=  \r\n"
            b"dle of a word.\r\nDana\r\n")
    raw = message("text/plain; charset=utf-8", text, "quoted-printable", newline=b"\r\n")
    assert stamp(raw) == raw + b"\r\n" + LINE.encode() + b"\r\n"
    html = b"<p>x</p></bo= \t\r\ndy></html>\r\n"
    raw = message("text/html; charset=utf-8", html, "quoted-printable", newline=b"\r\n")
    body = stamp(raw)[len(raw) - len(html):]
    assert body.startswith(b"<p>x</p>=\r\n<div style=3D")
    assert body.endswith(b"</div>=\r\n</bo= \t\r\ndy></html>\r\n")
    assert mime.decode_qp(body) == (b"<p>x</p>" + TAG.encode() + b"</body></html>\r\n")


def test_quoted_printable_full_length_last_line_is_rewrapped() -> None:
    last = b"a" * 76  # a legal 76-column last line with no line break after it
    raw = message("text/plain", b"first\n" + last, "quoted-printable")
    out = stamp(raw)
    assert max_line(out) <= 76
    (_, after), = only_changed_leaves(raw, out)
    assert text_of(after) == "first\n" + "a" * 76 + "\n" + LINE + "\n"


def test_quoted_printable_encoder_wraps_and_protects_trailing_space() -> None:
    encoded = qp_encode(b"a=b " * 30 + b"\nend \n", b"\r\n")
    assert all(len(line) <= 76 for line in encoded.split(b"\r\n"))
    assert b"end=20\r\n" in encoded
    assert quoprimime.body_decode(encoded.decode()).replace("\r\n", "\n") == (
        "a=b " * 30 + "\nend \n"
    )


def test_base64_html_keeps_the_lines_before_the_insertion() -> None:
    raw = fixture("html-base64.eml")
    out = stamp(raw)
    old_lines, new_lines = raw.split(b"\n"), out.split(b"\n")
    kept = 0
    while old_lines[kept] == new_lines[kept]:
        kept += 1
    assert kept >= len(old_lines) - 3  # only the last lines were re-encoded
    assert all(len(line) <= 76 for line in new_lines)
    (before, after), = only_changed_leaves(raw, out)
    assert text_of(after) == text_of(before).replace("</body>", TAG + "</body>")


def test_base64_with_crlf_and_full_last_line_appends_lines() -> None:
    text = b"x" * 57  # exactly one full 76-column line
    encoded = base64.encodebytes(text).replace(b"\n", b"\r\n")
    raw = message("text/plain; charset=us-ascii", encoded, "base64", newline=b"\r\n")
    out = stamp(raw)
    assert out.startswith(raw[:-2])  # the whole original line is still there
    (_, after), = only_changed_leaves(raw, out)
    # No line break in the text: the insertion takes the message's (CRLF).
    assert text_of(after) == "x" * 57 + "\r\n" + LINE + "\r\n"
    assert b"\n" not in out[len(raw) - 2 :].replace(b"\r\n", b"")


@pytest.mark.parametrize(
    ("charset", "text"),
    [("iso-8859-1", "Grüße, café"), ("windows-1252", "“quoted” – 5 €"), ("utf-8", "日本 😀 ü")],
)
@pytest.mark.parametrize("cte", ["8bit", "quoted-printable", "base64"])
def test_charsets_round_trip_in_every_encoding(charset: str, text: str, cte: str) -> None:
    content = (f"<html><body><p>{text}</p>\n</body></html>\n").encode(charset)
    body = {
        "8bit": content,
        "quoted-printable": qp_encode(content, b"\n"),
        "base64": base64mime.body_encode(content).encode(),
    }[cte]
    raw = message(f'text/html; charset="{charset}"', body, cte)
    out = stamp(raw)
    (before, after), = only_changed_leaves(raw, out)
    assert text_of(after) == text_of(before).replace("</body>", TAG + "</body>")
    assert text_of(before) == content.decode(charset)


# A label, and text with characters only its superset has (as clients read it).
SUPERSET_TEXTS = [
    ("euc-kr", "cp949", "똠방각하 문의"), ("ks_c_5601-1987", "cp949", "똠방각하"),
    ("shift_jis", "cp932", "①髙橋"), ("gb2312", "gb18030", "喆 堃"), ("big5", "big5hkscs", "㗎嘅"),
]


@pytest.mark.parametrize(("label", "codec", "text"), SUPERSET_TEXTS)
@pytest.mark.parametrize("cte", ["8bit", "quoted-printable", "base64"])
def test_a_part_in_a_narrow_charset_with_superset_characters_is_stamped(
        label: str, codec: str, text: str, cte: str) -> None:
    """Such parts were skipped as `content-is-not-valid-euc_kr`; the original bytes stay."""
    content = f"{text}\n".encode(codec)
    body = {"8bit": content, "quoted-printable": qp_encode(content, b"\n"),
            "base64": base64mime.body_encode(content).encode()}[cte]
    raw = message(f"text/plain; charset={label}", body, cte)
    assert outcomes(raw)["text"] == ("stamped", "")
    (_, after), = only_changed_leaves(raw, stamp(raw))
    assert after.get_payload(decode=True) == content + f"\n{LINE}\n".encode()
    if cte == "8bit":
        assert stamp(raw) == raw + f"\n{LINE}\n".encode()


# Big5 a Taiwanese signature holds: box drawing (0xA2A4 ═, 0xA27E ╭) that Big5-HKSCS reads
# alike but writes elsewhere, and kana (0xC6CF に) it does not read at all.
BIG5_SIGNATURE = "您好，\n╭═══════════╮\n請參考附件。に\n"


@pytest.mark.parametrize("cte", ["8bit", "quoted-printable", "base64"])
def test_a_part_its_superset_does_not_give_back_is_written_in_its_own_charset(cte: str) -> None:
    """Read as Big5-HKSCS, such a part was skipped (`big5hkscs does not round-trip`); big5
    gives every byte back, and the token line reads the same in both."""
    content = BIG5_SIGNATURE.encode("big5")
    body = {"8bit": content, "quoted-printable": qp_encode(content, b"\n"),
            "base64": base64mime.body_encode(content).encode()}[cte]
    raw = message("text/plain; charset=big5", body, cte)
    assert outcomes(raw)["text"] == ("stamped", "")
    (_, after), = only_changed_leaves(raw, stamp(raw))
    assert after.get_payload(decode=True) == content + f"\n{LINE}\n".encode()


def test_an_insertion_its_superset_reads_otherwise_is_refused() -> None:
    """Big5 0xC6A1 is ヾ, Big5-HKSCS (what clients read) reads ①: written in big5, a
    template holding it would show the reader something else."""
    raw = message("text/plain; charset=big5", BIG5_SIGNATURE.encode("big5"), "8bit")
    assert outcomes(raw, StampSettings(text_template="\nヾ {token}\n"))["text"] == (
        "skipped", "insertion reads otherwise in big5hkscs")
    assert outcomes(raw, StampSettings(text_template="\n案件 {token}\n"))["text"] == (
        "stamped", "")


@pytest.mark.parametrize("label", ["iso-8859-1", "latin1", "windows-1252"])
def test_latin1_text_is_read_as_windows_1252_and_every_byte_is_kept(label: str) -> None:
    """Every client reads iso-8859-1 as windows-1252 (WHATWG); the five bytes cp1252 leaves
    undefined are read as latin-1 reads them, so such a part still round-trips."""
    content = b"\x93quoted\x94 \x96 5 \x80 caf\xe9 \x81\x8d\x8f\x90\x9d\n"
    raw = message(f"text/plain; charset={label}", content, "8bit")
    assert stamp(raw, StampSettings(text_template="\n€ {token}\n")) == (
        raw + b"\n\x80 " + TOKEN.encode() + b"\n")
    _, body, top = split(raw)
    text, = iter_texts(top.content_type, top.cte, body)
    assert text.startswith("“quoted” – 5 € café \x81\x8d")


@pytest.mark.parametrize(("label", "codec"), [
    ("x-mac-cyrillic", "mac_cyrillic"), ("koi8-ru", "koi8_u"), ("x-cp1251", "cp1251"),
])
def test_a_part_in_a_charset_python_knows_by_another_name_is_stamped(
        label: str, codec: str) -> None:
    """A newsletter tool's `x-mac-cyrillic` part was left unstamped
    (`unknown-charset-'x-mac-cyrillic'`): Python names that charset mac_cyrillic."""
    content = "Уважаемый коллега,\nспасибо за письмо.\n".encode(codec)
    raw = message(f"text/plain; charset={label}", content, "quoted-printable")
    assert outcomes(raw)["text"] == ("stamped", "")
    (_, after), = only_changed_leaves(raw, stamp(raw))
    assert after.get_payload(decode=True) == content + f"\n{LINE}\n".encode()


def test_a_transfer_encoding_followed_by_a_semicolon_is_that_encoding() -> None:
    """`Content-Transfer-Encoding: quoted-printable;` (Outlook-styled bulk mail) left the
    HTML part unstamped (`unsupported-transfer-encoding-'quoted-printable;'`)."""
    raw = message("text/html; charset=us-ascii",
                  b"<html><body><p>Dear customer, your answ=\ner.</p></body></html>\n",
                  "quoted-printable;")
    assert outcomes(raw)["html"] == ("stamped", "")
    out = stamp(raw)
    assert out.startswith(raw[: raw.index(b"\n\n") + 2])
    decoded = quopri.decodestring(out[raw.index(b"\n\n") + 2:])
    assert decoded.startswith(b"<html><body><p>Dear customer, your answer.</p>")
    assert TAG.encode() in decoded


@pytest.mark.parametrize("cte", ["7-bit", "8bits"])
def test_a_misspelled_identity_encoding_is_stamped_as_that_encoding(cte: str) -> None:
    content = b"DISCOVER\xc6 CARD News Online\n\n\xa92002 Discover Bank.\n"
    raw = message("text/plain; charset=iso-8859-1", content, cte)
    assert outcomes(raw)["text"] == ("stamped", "")
    assert stamp(raw) == raw + f"\n{LINE}\n".encode()


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_quoted_printable_text_with_encoded_line_breaks_is_stamped(newline: bytes) -> None:
    """A fax gateway's notice writes its line breaks as `=0D=0A` inside soft-broken lines:
    the token line was made with CRLF, its hard line breaks decoded as the wire's LF, and the
    part was left unstamped (`re-encoded-part-does-not-decode-as-expected`)."""
    content = (b"A fax has arrived from remote ID ''.=0D=0A---------------=\n"
               b"-----=0D=0AResult: (0/352;0/0) Successful Send=0D=0A\n")
    raw = message("text/plain", content.replace(b"\n", newline), "quoted-printable", newline)
    assert outcomes(raw)["text"] == ("stamped", "")
    (before, after), = only_changed_leaves(raw, stamp(raw))
    old = before.get_payload(decode=True)
    assert after.get_payload(decode=True) == old + newline + LINE.encode() + newline


@pytest.mark.parametrize("content", [b"Envoy\xe9 par Bell Mobilit\xe9.\n",
                                     "Envoyé par Bell Mobilité.\n".encode()])
def test_8bit_text_without_a_charset_gets_an_ascii_token_line(content: bytes) -> None:
    """Mail without MIME (an SMS gateway's, old clients') with 8-bit text was left unstamped
    (`8bit-without-charset`): readers guess its charset, and each reads ASCII as ASCII, so an
    ASCII line appended is read alike whatever they guess, and every byte is kept."""
    raw = b"From: a@example.com\nSubject: s\n\n" + content
    assert outcomes(raw)["text"] == ("stamped", "")
    assert stamp(raw) == raw + f"\n{LINE}\n".encode()
    # A template that is not ASCII would be read otherwise by one guess or another.
    assert outcomes(raw, StampSettings(text_template="\n参照 {token}\n"))["text"] == (
        "skipped", "8bit without charset")


@pytest.mark.parametrize(("ctype", "content", "cte"), [
    ("text/plain", "\ufeffHello Pat, here it is.\r\n".encode("utf-16-le"), "base64"),
    ("text/plain", "\ufeff参照番号\r\n".encode("utf-16-be"), "base64"),
    ("text/plain", "Gr\u00fc\u00dfe, Pat.\r\n".encode("utf-16-le"), "base64"),  # no BOM: NULs
    ("text/html", "\ufeff<html><body>Hello</body></html>\r\n".encode("utf-16-le"), "base64"),
])
def test_utf16_text_without_a_charset_is_not_stamped(ctype: str, content: bytes,
                                                     cte: str) -> None:
    """Unlabelled text in UTF-16 (a BOM names it, as browsers and clients read it) is no
    ASCII-compatible guess: an ASCII token line or tag written into it byte for byte reads as
    garbage after the text, and the token is read by nobody. It stays unstamped."""
    raw = message(ctype, base64.encodebytes(content), cte)
    target = "html" if ctype == "text/html" else "text"
    assert outcomes(raw)[target] == ("skipped", "8bit without charset")
    assert stamp(raw) == raw


@pytest.mark.parametrize(("label", "writer", "bom"), [
    ("utf-16", "utf-16-le", "\ufeff"), ("UTF-16", "utf-16-be", "\ufeff"),
    ("utf-16", "utf-16-le", ""),  # no BOM: WHATWG's decoder reads the label as LE
    ("utf-32", "utf-32-le", "\ufeff"),
])
@pytest.mark.parametrize(("ctype", "text"), [
    ("text/plain", "Grüße, Pat: 参照番号\r\n"),
    ("text/html", "<html><body><p>Grüße, Pat: 参照番号</p></body></html>\r\n"),
])
def test_text_under_a_utf16_label_is_stamped_in_its_own_byte_order(
        label: str, writer: str, bom: str, ctype: str, text: str) -> None:
    """`charset=utf-16` (.NET's `Encoding.Unicode`, PowerShell's `Send-MailMessage -Encoding
    Unicode`) was left unstamped (`utf-16-does-not-round-trip`): Python's utf-16 codec starts
    every piece it writes with a BOM, so the text before the cut, written again, never gave
    the part's bytes back, and the token line would have carried a BOM of its own. The part is
    written in the byte order its BOM names (little-endian without one), every original byte
    kept and no BOM added."""
    content = (bom + text).encode(writer)
    raw = message(f'{ctype}; charset="{label}"', base64.encodebytes(content), "base64")
    target = "html" if ctype == "text/html" else "text"
    assert outcomes(raw)[target] == ("stamped", "")
    payload = leaves(stamp(raw))[0].get_payload(decode=True)
    assert isinstance(payload, bytes)
    stamped = payload.decode(writer)
    assert stamped.count("\ufeff") == len(bom)
    if target == "text":
        assert stamped == bom + text + "\r\n" + LINE + "\r\n"
    else:
        assert stamped == bom + text.replace("</body>", TAG + "</body>")


@pytest.mark.parametrize(("label", "writer"), [("utf-16", "utf-16-be"), ("utf-32", "utf-32-be"),
                                               ("utf-16", "utf-16-le")])
@pytest.mark.parametrize(("ctype", "text"), [
    ("text/plain", "Hello Pat,\r\nthanks.\r\n"),
    ("text/html", "<html><body><p>Grüße, Pat</p></body></html>\r\n"),
])
def test_utf16_without_a_bom_is_stamped_in_the_byte_order_its_ascii_shows(
        label: str, writer: str, ctype: str, text: str) -> None:
    """Big-endian under `charset=utf-16` without a BOM (RFC 2781's default) was stamped in
    little-endian: the token line read as CJK, the tag as visible CJK text after the part's
    end, and inbound reading (which takes the byte order its NULs show) found no token."""
    content = text.encode(writer)
    raw = message(f"{ctype}; charset={label}", base64.encodebytes(content), "base64")
    target = "html" if ctype == "text/html" else "text"
    assert outcomes(raw)[target] == ("stamped", "")
    payload = leaves(stamp(raw))[0].get_payload(decode=True)
    assert isinstance(payload, bytes)
    expected = (text + "\r\n" + LINE + "\r\n" if target == "text"
                else text.replace("</body>", TAG + "</body>"))
    assert payload.decode(writer) == expected
    assert LINE in decode_text(payload, label)


@pytest.mark.parametrize(("label", "writer"), [
    ("utf-16le", "utf-16-be"), ("utf-16be", "utf-16-le"), ("utf-32le", "utf-32-be"),
    ("utf-32be", "utf-32-le")])
def test_a_bom_that_contradicts_a_byte_order_label_leaves_the_part_unstamped(
        label: str, writer: str) -> None:
    """Readers follow the BOM, as inbound reading does: a token line written in the label's
    order would read as CJK (it was written so; review 21c)."""
    content = ("\ufeff" + "Hello Pat,\r\n").encode(writer)
    raw = message(f"text/plain; charset={label}", base64.encodebytes(content), "base64")
    codec = label.replace("le", "-le").replace("be", "-be")
    assert outcomes(raw)["text"] == ("skipped", f"byte order mark contradicts {codec}")
    assert stamp(raw) == raw
    assert "Hello Pat" in decode_text(content, label)


@pytest.mark.parametrize("writer", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_bom_or_an_ascii_character_is_not_stamped(writer: str) -> None:
    """No NUL byte tells the byte order (inbound reading takes such a part for mislabelled
    UTF-8): written in either, the token line could read as CJK."""
    raw = message("text/plain; charset=utf-16", base64.encodebytes("参照番号".encode(writer)),
                  "base64")
    assert outcomes(raw)["text"] == (
        "skipped", "utf-16 without a byte order mark or an ascii character")
    assert stamp(raw) == raw


@pytest.mark.parametrize(("label", "cte", "content"), [
    ("us-ascii", "8bit", "Grüße, Zoë ∑\n".encode()),
    ("US-ASCII", "8bit", b"Envoy\xe9 par Bell Mobilit\xe9.\n"),
    ('"ascii"', "quoted-printable", b"Envoy=C3=A9 par Bell Mobilit=E9.\n"),
    ("ANSI_X3.4-1968", "base64", base64.b64encode("Grüße\n".encode()) + b"\n"),
])
def test_8bit_text_under_an_ascii_label_gets_an_ascii_token_line(
    label: str, cte: str, content: bytes
) -> None:
    """PHP's and many scripts' mail says `charset=us-ascii` over UTF-8 or Latin-1 text: it was
    left unstamped (`content-is-not-valid-ascii`). Readers guess (Thunderbird reads the label
    as windows-1252, WHATWG's; others sniff UTF-8) and each reads ASCII as ASCII, so such a
    part is stamped as one without a charset is: byte for byte, with an ASCII line only."""
    raw = _stamped_byte_for_byte(label, cte, content)
    assert outcomes(raw, StampSettings(text_template="\n参照 {token}\n"))["text"] == (
        "skipped", f"8bit under charset '{label.strip(QUOTE)}'")


def _stamped_byte_for_byte(label: str, cte: str, content: bytes) -> bytes:
    """A text part under `label` and an HTML page of the same bytes are both stamped with an
    ASCII line or tag, every byte kept; returns the text part's message."""
    raw = message(f"text/plain; charset={label}", content, cte)
    assert outcomes(raw)["text"] == ("stamped", "")
    (before, after), = only_changed_leaves(raw, stamp(raw))
    old = before.get_payload(decode=True)
    assert after.get_payload(decode=True) == old + f"\n{LINE}\n".encode()
    page = b"<html><body>" + old + b"</body></html>\n"
    html = message(f"text/html; charset={label}", {
        "8bit": page, "quoted-printable": quopri.encodestring(page),
        "base64": base64.encodebytes(page)}[cte], cte)
    assert outcomes(html)["html"] == ("stamped", "")
    (before, after), = only_changed_leaves(html, stamp(html))
    assert after.get_payload(decode=True) == page.replace(b"</body>", TAG.encode() + b"</body>")
    return raw


@pytest.mark.parametrize(("label", "cte", "content"), [
    # An old template's Latin-1 text under `charset=utf-8`.
    ("utf-8", "8bit", "Café crème, merci.\n".encode("latin-1")),
    ("UTF-8", "quoted-printable", b"Caf=E9 cr=E8me, merci.\n"),
    ("utf-8", "base64", base64.encodebytes("Grüße, Ágnes\n".encode("cp1252"))),
    # UTF-8 under a CJK label (a reply of the peer-helpdesk corpus, Big5 over UTF-8).
    ("Big5", "base64", base64.encodebytes("您好！ 你今天好吗？".encode())),
    ("shift_jis", "8bit", "Grüße — 日本\n".encode()),
    ("euc-kr", "8bit", b"caf\xe9\n"),
    ("iso-8859-7", "8bit", b"\xca\xe1\xeb\xe7\xec\xdd\xf1\xe1 \xd2\xff\n"),  # two undefined
])
def test_text_not_valid_in_its_label_gets_an_ascii_token_line(
    label: str, cte: str, content: bytes
) -> None:
    """Such a part was left unstamped (`content-is-not-valid-utf-8`, `...-big5hkscs`), so a
    reply keeping only the body token opened a new case. Readers read a broken sequence as a
    replacement character and an ASCII byte after it as ASCII (WHATWG's decoders), so the
    part is read byte for byte and stamped with an ASCII line only, every byte kept."""
    raw = _stamped_byte_for_byte(label, cte, content)
    codec = mime.codec_for(label)
    assert outcomes(raw, StampSettings(text_template="\n参照 {token}\n"))["text"] == (
        "skipped", f"content is not valid {codec}")


@pytest.mark.parametrize(("label", "content", "template", "outcome"), [
    # A lead byte without its second one before the insertion: in a double-byte charset it
    # takes an ASCII byte from 0x40 up as that second one (`[`), never a line break.
    ("shift_jis", b"abc\x82", "[ref:{token}]", ("skipped", "content is not valid cp932")),
    ("shift_jis", b"abc\x82", "\n[ref:{token}]\n", ("stamped", "")),
    ("utf-8", b"abc\xe2\x82", "[ref:{token}]", ("stamped", "")),
    ("windows-1253", b"abc\xaa\n", "[ref:{token}]", ("stamped", "")),
    # Where ASCII is no ASCII, nothing goes in: a shifting charset, a wide one.
    ("iso-2022-jp", b"\x1b$B\x30\x21\xff\n", "\n[ref:{token}]\n",
     ("skipped", "content is not valid iso2022_jp")),
    ("utf-8", b"\xff\xfeH\x00i\x00", "\n[ref:{token}]\n",
     ("skipped", "content is not valid utf-8")),
    ("utf-8", b"caf\xe9 \x00\n", "\n[ref:{token}]\n", ("skipped", "content is not valid utf-8")),
])
def test_text_not_valid_in_its_label_takes_only_what_reads_alike(
    label: str, content: bytes, template: str, outcome: tuple[str, str]
) -> None:
    raw = message(f"text/plain; charset={label}", content, "8bit")
    assert outcomes(raw, StampSettings(text_template=template))["text"] == outcome


def multipart_of(subtype: str) -> bytes:
    return message(f'multipart/{subtype}; boundary="b"',
                   b"--b\nContent-Type: text/plain; charset=us-ascii\n\nHello Pat,\n"
                   b"here it is.\n--b\nContent-Type: image/png\nContent-Transfer-Encoding: "
                   b"base64\n\niVBORw0KGgo=\n--b--\n")


@pytest.mark.parametrize("subtype", ["*", "parallel", "x-unknown"])
def test_a_multipart_subtype_a_reader_does_not_know_is_read_as_mixed(subtype: str) -> None:
    """Outlook's `multipart/*` body was left unstamped (`no-text-part`): only mixed,
    alternative and related were searched. RFC 2046 §5.1.7 has readers treat a subtype they
    do not know as multipart/mixed, and they show its text part."""
    raw = multipart_of(subtype)
    assert outcomes(raw)["text"] == ("stamped", "")
    (before, after), = only_changed_leaves(raw, stamp(raw))
    assert text_of(after) == text_of(before) + f"\n{LINE}\n"


@pytest.mark.parametrize("subtype", ["report", "digest", "appledouble", "multilingual"])
def test_a_multipart_whose_parts_are_no_body_is_not_searched(subtype: str) -> None:
    raw = multipart_of(subtype)
    assert stamp(raw) == raw


META_HEADS = [
    b'<meta charset="utf-8">',
    b"<META CHARSET=UTF-8 />",
    b'<meta http-equiv="Content-Type" content="text/html; charset=utf-8">',
]


@pytest.mark.parametrize("head", META_HEADS)
def test_html_without_a_charset_parameter_is_read_in_its_meta_charset(head: bytes) -> None:
    """Such a part was skipped as `content-is-not-valid-ascii`; browsers and clients read
    the <meta> charset (HTML5 prescan)."""
    html = b"<html><head>" + head + b"</head><body><p>Gr\xc3\xbc\xc3\x9fe</p></body></html>\n"
    raw = message("text/html", html, "8bit")
    assert outcomes(raw)["html"] == ("stamped", "")
    assert stamp(raw) == raw.replace(b"</body>", TAG.encode() + b"</body>")
    _, body, top = split(raw)
    text, = iter_texts(top.content_type, top.cte, body)
    assert text.strip() == "Grüße"  # the inbound scan reads it so too


OUTLOOK_HEAD = b'<meta http-equiv=Content-Type content="text/html; charset=unicode">'


@pytest.mark.parametrize(("head", "content", "outcome"), [
    # Outlook's and Word's HTML: `unicode` is WHATWG's label of UTF-16, which a prescan of
    # ASCII bytes cannot have found rightly: read as UTF-8, as browsers read it.
    (OUTLOOK_HEAD, b"<p>Hello Pat</p>", ("stamped", "")),
    (OUTLOOK_HEAD, b"<p>Gr\xc3\xbc\xc3\x9fe</p>", ("stamped", "")),
    (b"<meta charset=UCS-2>", b"<p>Hello Pat</p>", ("stamped", "")),
    # A label WHATWG (and casethread) does not know declares nothing; the prescan goes on.
    (b"<meta charset=x-bogus>", b"<p>Hello Pat</p>", ("stamped", "")),
    # No charset at all: read byte for byte, stamped with the (ASCII) tag.
    (b"<meta charset=x-bogus>", b"<p>Gr\xc3\xbc\xc3\x9fe</p>", ("stamped", "")),
    (b"<meta charset=x-bogus><meta charset=utf-8>", b"<p>Gr\xc3\xbc\xc3\x9fe</p>",
     ("stamped", "")),
], ids=["unicode-ascii", "unicode-utf-8", "ucs-2", "unknown-ascii", "unknown-8bit",
        "unknown-then-utf-8"])
def test_a_meta_label_the_prescan_cannot_use_is_passed_over(
        head: bytes, content: bytes, outcome: tuple[str, str]) -> None:
    """Such parts were skipped as `unknown-charset`; ASCII HTML was stamped before <meta>
    labels were read."""
    raw = message("text/html", b"<html><head>" + head + b"</head><body>" + content
                  + b"</body></html>\n", "8bit")
    assert outcomes(raw)["html"] == outcome
    if outcome[0] == "stamped":
        assert stamp(raw) == raw.replace(b"</body>", TAG.encode() + b"</body>")


@pytest.mark.parametrize("html", [
    # Past the first 1024 bytes, or inside a comment, a <meta> declares nothing.
    b"<html><head>" + b" " * 1024 + b'<meta charset="utf-8"></head><body>\xc3\xbc</body>',
    b'<html><head><!-- <meta charset="utf-8"> --></head><body>\xc3\xbc</body></html>',
])
def test_only_a_meta_charset_the_prescan_sees_counts(html: bytes) -> None:
    """Told by a non-ASCII tag, which only a part of known charset takes."""
    raw = message("text/html", html, "8bit")
    options = StampSettings(html_template='<div data-ref="{token}">参照 [ref:{token}]</div>')
    assert outcomes(raw, options)["html"] == ("skipped", "8bit without charset")


def test_a_charset_parameter_wins_over_a_meta_charset() -> None:
    html = b'<html><head><meta charset="iso-8859-1"></head><body>\xc3\xbc</body></html>'
    raw = message("text/html; charset=utf-8", html, "8bit")
    _, body, top = split(raw)
    assert "ü" in "".join(iter_texts(top.content_type, top.cte, body))
    assert outcomes(raw)["html"] == ("stamped", "")


def test_iso_2022_jp_7bit_stays_7bit_and_decodes() -> None:
    raw = fixture("iso-2022-jp.eml")
    out = stamp(raw)
    assert out.isascii()
    (before, after), = only_changed_leaves(raw, out)
    assert text_of(after) == text_of(before) + "\n" + LINE + "\n"
    assert "お問い合わせ" in text_of(after)


def test_windows_1252_quoted_printable_plain_part() -> None:
    raw = fixture("outlook-related.eml")
    (before, after), = only_changed_leaves(raw, stamp(raw, StampSettings(html=False)))
    assert before.get_content_charset() == "windows-1252"
    assert text_of(after) == text_of(before) + "\n" + LINE + "\n"
    assert "“quotes” and € signs" in text_of(after).replace("\n", " ")


# --- never touched ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pgp-signed.eml", "pgp-encrypted.eml", "smime-enveloped.eml"])
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_signed_and_encrypted_mail_is_untouched(name: str, newline: bytes) -> None:
    raw = fixture(name, newline)
    assert stamp(raw) == raw
    statuses = outcomes(raw)
    assert {s for s, _ in statuses.values()} <= {"skipped", "absent"}


def test_signed_part_inside_mixed_is_not_entered() -> None:
    signed = fixture("pgp-signed.eml")
    inner_head, inner_body, _ = split(signed)
    ctype = inner_head.split(b"Content-Type: ", 1)[1].rstrip(b"\n")
    body = (b"--outer\nContent-Type: " + ctype + b"\n\n" + inner_body + b"\n--outer--\n")
    raw = message("multipart/mixed; boundary=outer", body)
    assert stamp(raw) == raw
    assert outcomes(raw) == {"html": ("absent", ""), "text": ("absent", "")}


def test_inline_pgp_text_is_skipped() -> None:
    raw = message("text/plain", b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nhi\n")
    assert stamp(raw) == raw
    assert outcomes(raw)["text"] == ("skipped", "inline PGP")


def test_already_stamped_parts_are_left_alone_and_stamping_is_idempotent() -> None:
    raw = fixture("outlook-related.eml")
    once = stamp(raw)
    assert once != raw
    assert stamp(once) == once
    assert {s for s, _ in outcomes(once).values()} == {"already"}
    quoted = message("text/plain", b"> earlier mail [ref:%s]\n" % TOKEN.lower().encode())
    assert stamp(quoted) == quoted


@pytest.mark.parametrize(
    ("ctype", "cte", "body", "reason"),
    [
        ("text/plain; charset=unicode", None, b"x", "unknown charset 'unicode'"),
        ("text/plain; charset=utf-8", "8bit", b"\xff\xfe", "content is not valid utf-8"),
        ("text/plain", "base64", b"QUJD!\n", "invalid base64"),
        ("text/plain", "base64", b"QU=D\n", "invalid base64"),
        # The token line goes onto this line (no line break ends it): an "=" reads it.
        ("text/plain", "quoted-printable", b"bad escape =Z", "invalid quoted-printable"),
        ("text/plain", "x-uuencode", b"begin 644 x\n",
         "unsupported transfer encoding 'x-uuencode'"),
        # A sender's label is quoted in the log note: at most 40 characters of it.
        (f'text/plain; charset="utf-16{"x" * 2000}"', None, b"x",
         f"unknown charset 'utf-16{'x' * 34}'"),
        ("text/plain", "x-" + "y" * 2000, b"x",
         f"unsupported transfer encoding 'x-{'y' * 38}'"),
        # The log line turns a note's blanks into hyphens and splits notes at commas: a label's
        # own blank and comma are escaped, so `quoted printable` does not read as the known
        # `quoted-printable` there.
        ("text/plain", "quoted printable", b"x",
         "unsupported transfer encoding 'quoted\\x20printable'"),
        ("text/plain; charset=\"utf-16,latin1\"", None, b"x",
         "unknown charset 'utf-16\\x2clatin1'"),
    ],
)
def test_parts_that_cannot_round_trip_are_skipped(
    ctype: str, cte: str | None, body: bytes, reason: str
) -> None:
    raw = message(ctype, body, cte)
    assert stamp(raw) == raw
    assert outcomes(raw)["text"] == ("skipped", reason)


def test_insertion_that_the_charset_or_7bit_cannot_carry_is_skipped() -> None:
    euro = StampSettings(text_template="\n€ {token}\n")
    check = StampSettings(text_template="\n✓ {token}\n")
    latin1 = message("text/plain; charset=iso-8859-1", b"x\n", "8bit")
    assert outcomes(latin1, check)["text"] == (
        "skipped", "insertion cannot be written in windows-1252-whatwg")
    utf8_7bit = message("text/plain; charset=utf-8", b"x\n", "7bit")
    assert outcomes(utf8_7bit, euro)["text"] == ("skipped", "insertion is not 7bit")
    utf8_8bit = message("text/plain; charset=utf-8", b"x\n", "8bit")
    assert stamp(utf8_8bit, euro).endswith(f"x\n\n€ {TOKEN}\n".encode())


def test_empty_token_stamps_nothing() -> None:
    plan = plan_stamp("text/plain", None, b"x", "", "")
    assert plan.splices == ()
    assert [(o.target, o.status, o.reason) for o in plan.outcomes] == [
        ("html", "absent", ""), ("text", "skipped", "no token")]


@pytest.mark.parametrize(
    ("ctype", "body", "reason"),
    [
        ("multipart/mixed; boundary=b", b"--b\n\ntext\n", "malformed MIME (unclosed)"),
        ("multipart/mixed; boundary=b", b"no delimiter\n", "malformed MIME (boundary-absent)"),
        ("multipart/mixed", b"--b\n\ntext\n--b--\n", "malformed MIME (no-boundary)"),
        ("multipart/mixed; boundary=b",
         b"--b\nContent-Type: text/plain\nContent-Type: text/html\n\nx\n--b--\n",
         "malformed MIME (duplicate-mime-field)"),
    ],
)
def test_malformed_mime_is_left_as_it_is(ctype: str, body: bytes, reason: str) -> None:
    raw = message(ctype, body)
    assert stamp(raw) == raw
    assert outcomes(raw)["text"] == ("skipped", reason)


def test_malformed_attachment_does_not_block_the_body() -> None:
    body = (b"--m\nContent-Type: text/plain\n\nbody\n"
            b"--m\nContent-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n"
            b"U3ViamVjdDog\n"
            b"--m--\n")
    raw = message("multipart/mixed; boundary=m", body)
    assert stamp(raw) == raw.replace(b"body\n", b"body\n" + LINE.encode() + b"\n\n", 1)


def test_a_line_near_the_smtp_limit_gets_the_tag_on_its_own_line() -> None:
    html = b"<html><body>" + b"x" * 900 + b"</body></html>\r\n"
    raw = message("text/html", html, "8bit", newline=b"\r\n")
    out = stamp(raw)
    assert max_line(out) <= 998
    assert out.endswith(b"x" * 900 + b"\r\n" + TAG.encode() + b"\r\n</body></html>\r\n")


def test_an_overlong_line_is_not_made_longer() -> None:
    html = b"<html><body>" + b"x" * 2000 + b"</body></html>"
    out = stamp(message("text/html", html, "8bit"))
    assert out.endswith(b"x" * 2000 + b"\n" + TAG.encode() + b"\n</body></html>")


def test_repeated_mime_fields_of_the_message_refuse_the_body() -> None:
    raw = message("text/plain", b"x\n").replace(b"MIME-Version", b"Content-Type: text/html\nM")
    headers, body = parse_raw(raw)
    plan = plan_message_stamp(headers, body, TOKEN, TOKEN, newline=b"\n")
    assert plan.splices == ()
    assert {(o.status, o.reason) for o in plan.outcomes} == {
        ("skipped", "a MIME header field is repeated"),
    }
    single = parse_raw(message("text/plain", b"x\n"))
    assert plan_message_stamp(*single, TOKEN, TOKEN).splices


def test_oversized_parts_are_skipped() -> None:
    raw = message("text/plain", b"x" * 100)
    _, body, _ = split(raw)
    plan = plan_stamp("text/plain", None, body, TOKEN, TOKEN, max_part_bytes=50)
    assert [(o.status, o.reason) for o in plan.outcomes if o.target == "text"] == [
        ("skipped", "part larger than 50 bytes"),
    ]


# --- splices ------------------------------------------------------------------------------


def test_streamed_splices_equal_the_applied_body(tmp_path: Path) -> None:
    raw = fixture("outlook-related.eml", b"\r\n")
    _, body, top = split(raw)
    path = tmp_path / "spool"
    path.write_bytes(body)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as spooled:
        plan = plan_stamp(top.content_type, top.cte, spooled, TOKEN, TOKEN)
        chunks = list(iter_spliced(spooled, plan.splices, chunk_size=100))
    assert plan == plan_stamp(top.content_type, top.cte, body, TOKEN, TOKEN)
    assert b"".join(chunks) == apply_splices(body, plan.splices)
    inserted = {s.data for s in plan.splices}
    assert all(len(c) <= 100 for c in chunks if c not in inserted)
    assert all(s.start == s.end for s in plan.splices)  # QP: pure insertions


# --- fuzzing: garbage in, never an exception, splices always inside the body ---------------

FUZZ_LINES = st.sampled_from([
    b"--b", b"--b--", b"", b"<html><body>", b"</body></html>", b"caf=E9 =", b"=3D=", b"=ZZ",
    b"QUJD", b"QU=D", b"Content-Type: text/html; charset=iso-8859-1",
    b"Content-Type: text/plain; charset=iso-2022-jp", b"Content-Transfer-Encoding: base64",
    b"Content-Transfer-Encoding: quoted-printable", b"\x1b$B$3\x1b(B", b"\xe9\xff", b"x" * 80,
])


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(lines=st.lists(FUZZ_LINES, max_size=30), newline=st.sampled_from([b"\n", b"\r\n"]),
       ctype=st.sampled_from(["multipart/alternative; boundary=b", "text/html", "text/plain"]),
       cte=st.sampled_from([None, "base64", "quoted-printable", "8bit"]))
def test_fuzz_stamping_never_raises(
    lines: list[bytes], newline: bytes, ctype: str, cte: str | None
) -> None:
    body = newline.join(lines)
    plan = plan_stamp(ctype, cte, body, TOKEN, TOKEN)
    cursor = 0
    for splice in plan.splices:
        assert cursor <= splice.start <= splice.end <= len(body)
        cursor = splice.end
    new_body = apply_splices(body, plan.splices)
    stamped = [o for o in plan.outcomes if o.status == "stamped"]
    assert len(plan.splices) == len(stamped)  # one splice per stamped part, none for the rest
    assert (new_body != body) == bool(stamped)


def test_a_part_with_another_cases_token_after_ours_gets_our_line_in_its_own_form() -> None:
    """A move back: ours deep in the quote, the other case's after it. Found in the form the
    configured template writes (here `[#TOKEN]`), so our line is added once, not again."""
    ring = Keyring([(1, bytes(range(32)))])
    ours, other = ring.make(1), ring.make(2)
    options = StampSettings(html=False, text_template="\n[#{token}]\n")
    body = f"Back to you.\n\n> > [#{ours}]\n> [#{other}]\n".encode()

    def stamped(data: bytes) -> bytes:
        plan = plan_stamp("text/plain; charset=us-ascii", None, data, ours, ours, options,
                          newline=b"\n")
        return apply_splices(data, plan.splices)

    once = stamped(body)
    assert once.endswith(f"> [#{other}]\n\n[#{ours}]\n".encode())
    assert stamped(once) == once


UNPARSABLE_HTML = "text/html Content-Transfer-Encoding: 8bit"


@pytest.mark.parametrize("nested", [False, True])
def test_a_body_part_with_an_unparsable_content_type_is_named_as_absent_text(
    nested: bool,
) -> None:
    """A phishing mail's `Content-Type: text/html Content-Transfer-Encoding: 8bit` (two fields
    on one line) does not parse: readers take the part for text/plain (RFC 2045 §5.2) or for
    text/html, so it stays unstamped, and the outcome says why instead of a bare absence
    (the log said `no-text-part`)."""
    if nested:
        raw = message('multipart/mixed; boundary="b"',
                      b"--b\nContent-Type: " + UNPARSABLE_HTML.encode()
                      + b"\n\n<p>Hi</p>\n--b\nContent-Type: image/png\n"
                      b"Content-Transfer-Encoding: base64\n\niVBORw0KGgo=\n--b--\n")
    else:
        raw = message(UNPARSABLE_HTML, b"<p>Hi</p>\n")
    assert stamp(raw) == raw
    why = "unparsable content type 'text/html\\x20Content-Transfer-Encoding:\\x208bi'"
    assert outcomes(raw) == {"html": ("absent", why), "text": ("absent", why)}


@pytest.mark.parametrize("nested", [False, True])
def test_a_text_part_without_a_subtype_is_stamped_as_plain_text(nested: bool) -> None:
    """`Content-Type: text; charset="iso-8859-1"` (an old script's, no subtype) is shown as
    plain text: Thunderbird does, and RFC 2046 §4.1.4 reads a text subtype it does not know
    as text/plain. It was left unstamped as an unparsable Content-Type, so a reply that kept
    only the body token did not thread; it is now stamped in its own charset and encoding."""
    fields = (b'Content-Type: text; charset="iso-8859-1"\n'
              b"Content-Transfer-Encoding: quoted-printable")
    body = b"Liebe Gr=FC=DFe aus =D6sterreich\n"
    if nested:
        raw = message('multipart/mixed; boundary="b"', b"--b\n" + fields + b"\n\n" + body
                      + b"--b\nContent-Type: image/png\n\nx\n--b--\n")
    else:
        raw = message('text; charset="iso-8859-1"', body, cte="quoted-printable")
    assert outcomes(raw)["text"] == ("stamped", "")
    ((old, new),) = only_changed_leaves(raw, stamp(raw))
    assert text_of(old).rstrip("\n") == "Liebe Grüße aus Österreich"
    assert text_of(new).startswith(text_of(old))
    assert text_of(new)[len(text_of(old)):].strip("\n") == LINE
    assert mime.content_type("TEXT ; charset=x").value == "text/plain"
    assert mime.media_type("text (no subtype)") == "text/plain"
    # Only a lone `text`: another type without a subtype is still nothing we understand.
    assert mime.content_type("html; charset=x").value == ""
    assert mime.media_type("application-x-gzip") == ""


def test_an_attachment_with_an_unparsable_content_type_is_no_reason() -> None:
    raw = message('multipart/mixed; boundary="b"',
                  b"--b\nContent-Type: image/png\n\nx\n--b\nContent-Type: bogus\n"
                  b"Content-Disposition: attachment\n\nx\n--b--\n")
    assert outcomes(raw) == {"html": ("absent", ""), "text": ("absent", "")}


@pytest.mark.parametrize(("part", "newline"), [
    (b"Content-Type: text/plain; charset=utf-8", b"\n"),
    (b"Content-Type: text/plain; charset=utf-8\n", b"\n"),
    (b"Content-Type: text/plain; charset=utf-8\r\n", b"\r\n"),
    (b"Content-Type: text/plain\nContent-Transfer-Encoding: quoted-printable", b"\n"),
    (b"Content-Type: text/plain\nContent-Transfer-Encoding: base64\n", b"\n"),
    (b"X-Empty: 1", b"\n"),  # no Content-Type: text/plain by default
])
def test_a_text_part_without_a_body_gets_one_below_its_fields(part: bytes, newline: bytes) -> None:
    """A part whose fields run to the next delimiter line (the line break before it is the
    delimiter's) has no body: the token line went straight below its last field, into its
    header section, where readers take it for one more header line and show an empty part.
    The empty line that ends a header section now goes first."""
    body = (b"--b\n" + part + b"\n--b\nContent-Type: image/png\n\nx\n--b--\n").replace(
        b"\n", newline).replace(b"\r\r", b"\r")
    raw = message('multipart/mixed; boundary="b"', body, newline=newline)
    assert outcomes(raw)["text"] == ("stamped", "")
    stamped = stamp(raw)
    text = leaves(stamped)[0]
    assert [(k, v) for k, v in text.items()] == [(k, v) for k, v in leaves(raw)[0].items()]
    assert not text.defects
    assert text.get_payload(decode=True) == f"\n{LINE}\n".encode().replace(b"\n", newline)
    assert leaves(stamped)[1].get_payload() == leaves(raw)[1].get_payload()


AMAZON_QP = (b"Your order: https://shop.example/gp/product/B002/ref=od_aui_detail?ie=UTF8&psc=1\n"
             b"Caf=C3=A9 cr=C3=A8me, 10 =\nitems\n")


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_quoted_printable_with_a_stray_equals_sign_elsewhere_is_stamped(newline: bytes) -> None:
    """A shop's or chat app's notice writes URLs unescaped into quoted-printable
    (`ref=od_aui`, `?ie=UTF8`): the part was left unstamped (`invalid-quoted-printable`)
    though readers disagree only on those bytes, which the insertion leaves as they are. It
    is read as most readers show it (the "=" as it is, RFC 2045 §6.7 note 2)."""
    raw = message("text/plain; charset=utf-8", AMAZON_QP.replace(b"\n", newline),
                  "quoted-printable", newline)
    assert outcomes(raw)["text"] == ("stamped", "")
    (before, after), = only_changed_leaves(raw, stamp(raw))
    old = before.get_payload(decode=True)
    assert b"ref=od_aui" in old
    assert after.get_payload(decode=True) == old + f"\n{LINE}\n".encode().replace(b"\n", newline)
    html = message("text/html; charset=utf-8", b"<html><body><p>" + AMAZON_QP
                   + b"</p>\n</body></html>\n", "quoted-printable")
    assert outcomes(html)["html"] == ("stamped", "")
    (before, after), = only_changed_leaves(html, stamp(html))
    assert after.get_payload(decode=True) == before.get_payload(decode=True).replace(
        b"</body>", TAG.encode() + b"</body>")


@pytest.mark.parametrize("body", [
    # Right before the tag: an "=" reads the bytes after it, which the tag would change.
    b"<html><body><a href=\"x?ie=UTF8\">x</a>x=</body></html>\n",
    b"<html><body><a href=\"x?ie=UTF8\">x</a>x=A</body></html>\n",
    # A stray "==" on its line: readers disagree on what it is.
    b"<html><body><a href=\"x?id=YWJj==\">x</a></body></html>\n",
    # "=" and a CR that ends no line: binascii drops what follows, so the text is not read.
    b"<html><body>a=\rb\n</body></html>\n",
])
def test_quoted_printable_with_a_stray_equals_sign_where_it_matters_is_skipped(
    body: bytes
) -> None:
    raw = message("text/html; charset=utf-8", body, "quoted-printable")
    assert stamp(raw) == raw
    assert outcomes(raw)["html"] == ("skipped", "invalid quoted-printable")


@pytest.mark.parametrize(("label", "content"), [
    ('"charset=us-ascii"', b"Test of text section\n"),  # Apple Mail's
    ("x-unknown", b"Envoy\xe9 par Bell Mobilit\xe9.\n"),
    ("utf8mb4", "Grüße\n".encode()),
])
def test_text_under_a_label_nobody_knows_gets_an_ascii_token_line(
    label: str, content: bytes
) -> None:
    """Apple Mail wrote `charset="charset=us-ascii"`: such a part was left unstamped
    (`unknown-charset-'charset=us-ascii'`). Readers fall back to the charset they guess
    without a label, and each reads ASCII as ASCII, so it is stamped as text without a charset
    is: byte for byte, with an ASCII line only. A UTF-16 name stays unknown (ASCII is none)."""
    raw = message(f"text/plain; charset={label}", content, "8bit")
    assert outcomes(raw)["text"] == ("stamped", "")
    assert stamp(raw) == raw + f"\n{LINE}\n".encode()
    assert outcomes(raw, StampSettings(text_template="\n参照 {token}\n"))["text"] == (
        "skipped", f"unknown charset '{label.strip(QUOTE)}'")


@pytest.mark.parametrize("label", ["x-unknown", "us-ascii"])
def test_utf16_text_under_a_label_read_byte_for_byte_is_not_stamped(label: str) -> None:
    """Text under a label nobody knows or an ASCII label is read byte for byte only when an
    ASCII byte reads as ASCII in it: UTF-16 (a BOM, or NUL bytes) stays unstamped."""
    content = "\ufeffHello Pat, here it is.\r\n".encode("utf-16-le")
    raw = message(f"text/plain; charset={label}", base64.encodebytes(content), "base64")
    assert outcomes(raw)["text"][0] == "skipped"
    assert stamp(raw) == raw



@pytest.mark.parametrize("line", [
    b"https://shop.example/track?id=YWJjZA==&psc=1",  # base64 padding in a URL, unescaped
    b"https://shop.example/track?id=YWJj==41",  # "==" then two hex digits
    b"https://shop.example/track?id=YWJjZA==",  # "==" ends the line: no soft break
    b"https://shop.example/track?id=YWJjZA==  ",  # ... blanks after it
    b"a=== soft broken=\nline",  # "==" then a soft break: the line goes on
])
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_quoted_printable_with_a_stray_double_equals_sign_is_stamped(
    line: bytes, newline: bytes
) -> None:
    """binascii, which reads the part, takes a stray "==" for one "=" (a URL's base64
    padding written unescaped): the line map counted both, and a line ending in "==" as
    soft-broken, so the token's place came out wrong and the check refused the part
    (`re-encoded-part-does-not-decode-as-expected`). The map reads such lines as the decoder
    does."""
    text = b"Hello,\n" + line + b"\nBye\n"
    raw = message("text/plain; charset=utf-8", text.replace(b"\n", newline),
                  "quoted-printable", newline)
    assert outcomes(raw)["text"] == ("stamped", "")
    (before, after), = only_changed_leaves(raw, stamp(raw))
    old = before.get_payload(decode=True)
    assert after.get_payload(decode=True) == old + f"\n{LINE}\n".encode().replace(b"\n", newline)
    html = message("text/html; charset=utf-8", (b"<html><body><p>" + text
                   + b"</p>\n</body></html>\n").replace(b"\n", newline), "quoted-printable",
                   newline)
    assert outcomes(html)["html"] == ("stamped", "")
    (before, after), = only_changed_leaves(html, stamp(html))
    assert after.get_payload(decode=True) == before.get_payload(decode=True).replace(
        b"</body>", TAG.encode() + b"</body>")


JIS = "こんにちは".encode("iso2022_jp")  # ESC $ B ... ESC ( B


@pytest.mark.parametrize("charset", ['"iso-2022-jp-ms"', '"charset=iso-2022-jp"', "us-ascii", None])
def test_ascii_is_not_written_inside_an_iso_2022_shift(charset: str | None) -> None:
    """ISO-2022-JP text under a label nobody knows (or an ASCII one, or none) is 7-bit and
    was stamped byte for byte with an ASCII token line; where the text ends still shifted to
    JIS X 0208 (no ESC ( B after its last kanji), a reader that follows the escapes (one that
    sniffs ISO-2022-JP) reads the token's bytes as kanji, and the stamp is lost. Such a part
    is left unstamped; one that ends in ASCII, as RFC 1468 asks, is stamped."""
    ctype = "text/plain" + (f"; charset={charset}" if charset else "")
    shifted = message(ctype, b"Hello\n" + JIS[:-3])
    assert outcomes(shifted)["text"] == ("skipped", "insertion inside an iso-2022 shift")
    assert stamp(shifted) == shifted
    ended = message(ctype, b"Hello\n" + JIS + b"\n")
    assert outcomes(ended)["text"] == ("stamped", "")
    assert stamp(ended).endswith(JIS + b"\n\n" + LINE.encode() + b"\n")
    korean = message(ctype, b"Hello\n\x1b$)C\x0e" + "안녕".encode("euc-kr").translate(
        bytes(range(128)) * 2) + b"\n")  # shifted out at the end (SO without SI)
    assert outcomes(korean)["text"] == ("skipped", "insertion inside an iso-2022 shift")


@pytest.mark.parametrize("label", ["unicode-1-1", "ISO-10646-UCS-4", "iso-10646-ucs-basic"])
def test_text_under_an_iana_ucs_name_is_not_stamped_byte_for_byte(label: str) -> None:
    """IANA's names of UCS-2 and UCS-4 (RFC 1641's UNICODE-1-1, ISO-10646-UCS-4), which Python
    does not know, are UTF-16 and UTF-32 names, where ASCII is no ASCII: text in them without
    a NUL byte (CJK only) was stamped byte for byte with an ASCII token line."""
    raw = message(f"text/plain; charset={label}", "日本語です".encode("utf-16-be"), "8bit")
    assert outcomes(raw)["text"] == ("skipped", f"unknown charset '{label}'")
    assert stamp(raw) == raw


@pytest.mark.parametrize("body", [
    # An HTML notice from an encoder that leaves "=" unescaped: its last line holds some.
    b'<html><body><p>Hi</p>\n<p style="color:#888">Shop Inc.</p></body></html>\n',
    b'<html><body><p>Hi</p>\n<a href="https://shop.example/?ie=UTF8">Shop</a>=\n</body></html>',
])
def test_a_stray_equals_sign_on_the_tags_line_away_from_it_is_no_reason(body: bytes) -> None:
    """8813f5c left a part unstamped for any stray "=" on the line the token goes into
    (`invalid-quoted-printable`), though only one the insertion stands right after reads
    otherwise (it reads the next two bytes): the tag's line of an HTML notice written so holds
    an attribute's "=" more often than not."""
    raw = message("text/html; charset=utf-8", body, "quoted-printable")
    assert outcomes(raw)["html"] == ("stamped", "")
    (before, after), = only_changed_leaves(raw, stamp(raw))
    assert after.get_payload(decode=True) == before.get_payload(decode=True).replace(
        b"</body>", TAG.encode() + b"</body>")


def test_a_stray_equals_sign_on_the_last_line_of_a_text_in_a_multipart_is_no_reason() -> None:
    """The last line of a part in a multipart has no line break of its own (it is the
    delimiter's): the token line goes onto it, after a soft break, and a footer's URL
    (`?ref=od_aui`) left the part unstamped."""
    body = (b"--b\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: "
            b"quoted-printable\n\nCaf=C3=A9\nhttps://shop.example/?ref=od_aui&ie=UTF8\n--b--\n")
    raw = message('multipart/mixed; boundary="b"', body)
    assert outcomes(raw)["text"] == ("stamped", "")
    (before, after), = only_changed_leaves(raw, stamp(raw))
    assert after.get_payload(decode=True) == before.get_payload(decode=True) + (
        f"\n{LINE}\n".encode())
