"""Readable body text for token scanning, and returned parts for bounces (core.bodytext)."""

from __future__ import annotations

import base64
import importlib
import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from casethread.core import mime
from casethread.core.bodytext import (
    MAX_HTML_QUOTE_MARKS,
    html_to_text,
    iter_parts_of_type,
    iter_texts,
)
from casethread.core.message import parse_raw

CORPUS = Path(str(importlib.import_module("test").__file__)).parent / "test_email" / "data"
DATA = Path(__file__).resolve().parents[1] / "data" / "mime"
EXAMPLES = int(os.environ.get("CASETHREAD_FUZZ_EXAMPLES", "200"))


def texts_of(raw: bytes, **kwargs: object) -> list[str]:
    headers, body = parse_raw(raw)
    top = mime.top_fields(headers)
    return list(iter_texts(top.content_type, top.cte, body, top_disposition=top.disposition,
                           **kwargs))  # type: ignore[arg-type]


def test_single_plain_part() -> None:
    assert list(iter_texts(None, None, b"Hello [ref:ABC]\n")) == ["Hello [ref:ABC]\n"]


def test_html_is_read_as_visible_text() -> None:
    html = (
        "<html><head><style>p{x:1}</style><script>var t='[ref:NO]';</script></head>"
        "<body><!-- [ref:HIDDEN] --><p>Dear&nbsp;customer,</p><div>[ref:<b>AB</b>C&#93;</div>"
        "A &lt;tag&gt; &amp; more<br>line<script>unclosed"
    )
    text = html_to_text(html)
    assert "[ref:ABC]" in text
    assert "Dear\xa0customer,\n" in text
    assert "A <tag> & more\nline" in text
    assert "NO" not in text and "HIDDEN" not in text and "unclosed" not in text


def test_a_tag_name_with_a_non_ascii_letter_is_no_script_or_style() -> None:
    """Tag names are ASCII case-insensitive: `<\u017ftyle>` (long s, which a Unicode
    case-insensitive match reads as "s") is no style element, as browsers read it. It raised
    KeyError out of the token scan."""
    # Shown as text, as a browser shows it (a tag name starts with an ASCII letter).
    assert html_to_text("<\u017ftyle>a</style>b") == "<\u017ftyle>ab"
    assert html_to_text("<\u017fcript>[ref:A]") == "<\u017fcript>[ref:A]"


def test_a_script_or_style_name_running_on_in_a_non_ascii_letter_hides_nothing() -> None:
    """A tag name runs on through a non-ASCII letter: `<style\u00e9>` and `<script\u212a>`
    (Kelvin sign) are no style or script element, and the text after them is shown. With the
    whole pattern ASCII (re.A) the `\b` after the name matched before the letter: the text to
    the next `</style>` (or the end) was dropped, a token in it unseen."""
    assert html_to_text("<style\u00e9>[ref:A]</style>b") == "[ref:A]b"
    assert html_to_text("<script\u212a>[ref:A]") == "[ref:A]"
    assert html_to_text("<STYLE\u0130 x>[ref:A]") == "[ref:A]"
    assert html_to_text("<style>x</style>[ref:A]<script x>y") == "[ref:A]"  # as before


def test_a_script_or_style_name_running_on_in_punctuation_hides_nothing() -> None:
    """A tag name ends only at a tab, line feed, form feed, carriage return, space, "/" or ">"
    (WHATWG HTML §13.2.5.8): `<script-x>`, `<style:x>`, `<script.x>` (custom or prefixed
    elements) and `<style\u00a0>` are no script or style, and the text after them is shown.
    The `\\b` after the name ended it at any non-word character: the text to the next
    `</script>` (or the end) was dropped, a token in it unseen."""
    for opener in ["<script-x>", "<style:x>", "<script.x>", "<style\u00a0>", "<style\v>",
                   '<style"x">', "<SCRIPT=1>", "<style\x00>"]:
        assert html_to_text(opener + "[ref:A]</script>b</style>c") == "[ref:A]bc", opener
    # A blank, "/" or ">" ends the name: these are script and style elements, as before.
    for opener in ["<style>", "<STYLE\tmedia=x>", "<script\n>", "<style\r>", "<style\f>",
                   "<style/>", "<script/src=x>"]:
        assert html_to_text(opener + "x</style></script>[ref:A]") == "[ref:A]", opener


def test_a_script_or_style_ends_at_its_closing_tag_with_attributes_or_a_slash() -> None:
    """Raw text ends at `</style` followed by a blank, "/" or ">" (WHATWG's appropriate end
    tag), the tag running to its ">": `</style media=x>` and `</style/>` were not read as
    closing it (`</style\\s*>`), and the visible text after them, to the next `</style>` or
    the end, was dropped; `</style\\v>` (a vertical tab is no HTML blank) closed it."""
    for closer in ["</style >", "</style\n>", "</style media=x>", "</style/>", "</STYLE\t/ >",
                   "</style <p>"]:
        assert html_to_text("<style>p{}" + closer + "[ref:A]") == "[ref:A]", closer
    for closer in ["</stylex>", "</style\v>", "</style-x>", "</style\u00a0>", "</style"]:
        assert html_to_text("<style>p{}" + closer + "x</style>[ref:A]") == "[ref:A]", closer
    # A closing tag never ended by ">" ends nothing after it: browsers show nothing more.
    assert html_to_text("a<script>x</script foo [ref:A]") == "a"


def test_block_and_quote_tag_names_end_only_at_a_blank_slash_or_greater_than() -> None:
    """`<p-x>`, `<div:x>` are inline (custom, prefixed) elements, `<blockquote-x>` no quote,
    and `<d\u0130v>`, `<bloc\u212aquote>` (a dotted capital I, a Kelvin sign, which re.I alone
    reads as "i" and "k") no div or blockquote: they break no line and quote nothing (a
    quoted line ranks its token below the reply's own)."""
    assert html_to_text("a<p-x>b</p-x>c<div:x>d") == "abcd"
    assert html_to_text("a<d\u0130v>b<BR\u212a>c") == "abc"
    assert html_to_text("<blockquote-x>[ref:A]</blockquote-x>") == "[ref:A]"
    assert html_to_text("<bloc\u212aquote>[ref:A]") == "[ref:A]"
    assert html_to_text("a<p/>b<br/>c<div\tclass=x>d<blockquote/>e") == "a\nb\nc\nd\n> e"


def test_blockquotes_quote_their_lines_as_plain_text_does() -> None:
    """Each line inside <blockquote>s starts with a ">" per level (what the token scan ranks
    tokens by); malformed nesting is read as a browser lays it out, at a bounded cost."""
    html = ('Thanks<div class="gmail_quote"><BLOCKQUOTE class="gmail_quote">Hi<br>see:\n'
            '<blockquote type="cite">old [ref:A]</blockquote>\n[ref:B]</blockquote></div>')
    assert html_to_text(html) == "Thanks\n\n> Hi\n> see:\n> \n>> old [ref:A]\n> \n> [ref:B]\n\n"
    # A closer without an opener closes nothing; an opener without a closer runs to the end.
    assert html_to_text("</blockquote>a<blockquote>b< blockquote >c") == "\na\n> b\n>> c"
    # 10,000 levels: marks for the first MAX_HTML_QUOTE_MARKS only, on each line.
    markup = "<blockquote>" * 10_000 + "x<br>y" + "</blockquote>" * 9_999 + "z"
    deep = html_to_text(markup)
    marks = ">" * MAX_HTML_QUOTE_MARKS + " "
    assert f"\n{marks}x\n{marks}y\n" in deep and deep.endswith("\n> z")
    assert len(deep) < len(markup)


def test_raw_text_elements_in_any_letter_case_are_skipped() -> None:
    text = html_to_text("<SCRIPT>var a='[ref:NO]';</Script><Style>b{}</STYLE>visible")
    assert text == "visible"


def test_stamped_tag_reads_as_the_token_line() -> None:
    raw = b"Content-Type: text/html\n\n<body><p>x</p><div style=\"display:none\" " \
          b"data-casethread-ref=\"T1\">[ref:T1]</div></body>"
    assert texts_of(raw) == ["\nx\n\n[ref:T1]\n"]


def test_transfer_encodings_and_charsets_are_decoded() -> None:
    qp = b"Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: " \
         b"quoted-printable\n\nGr=FC=DFe [ref:Q=\nP]\n"
    assert texts_of(qp) == ["Grüße [ref:QP]\n"]
    b64 = b"Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: base64\n\n" + \
        base64.encodebytes("<p>日本 &amp; [ref:B64]</p>".encode())
    assert texts_of(b64) == ["\n日本 & [ref:B64]\n"]
    assert "お問い合わせ" in texts_of((DATA / "iso-2022-jp.eml").read_bytes())[0]


def test_a_transfer_encoding_followed_by_a_semicolon_is_decoded() -> None:
    qp = b"Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: " \
         b"quoted-printable;\n\nGr=FC=DFe [ref:Q=\nP]\n"
    assert texts_of(qp) == ["Grüße [ref:QP]\n"]


def test_html_without_a_charset_parameter_is_read_in_its_meta_charset() -> None:
    """Only <meta> named the charset: the part was read as UTF-8 (`Gr\ufffd\ufffde`)."""
    html = (b'<html><head><meta http-equiv="Content-Type" content="text/html; '
            b'charset=iso-8859-1"></head><body>Gr\xfc\xdfe [ref:X]</body></html>')
    assert texts_of(b"Content-Type: text/html\n\n" + html) == ["Grüße [ref:X]"]


def test_a_meta_tag_name_ends_at_a_blank_or_slash_as_the_prescan_reads_it() -> None:
    """The prescan takes `<meta` followed by a tab, line feed, form feed, carriage return,
    space or "/" (WHATWG HTML §13.2.3.2): `<meta/charset=...>` declares a charset (`<meta\\s`
    missed it), `<meta\\vcharset=...>` (a vertical tab) does not (it was read)."""
    html = b"<meta/charset=iso-8859-1><p>Gr\xfc\xdfe</p>"
    assert texts_of(b"Content-Type: text/html\n\n" + html) == ["\nGr\u00fc\u00dfe\n"]
    html = b"<meta\vcharset=iso-8859-1><p>Gr\xc3\xbc\xc3\x9fe</p>"
    assert texts_of(b"Content-Type: text/html\n\n" + html) == ["\nGr\u00fc\u00dfe\n"]


def test_utf16_and_utf32_are_read_in_the_byte_order_they_show() -> None:
    """Without a BOM, "utf-16" is big-endian (RFC 2781) and Windows writes it little-endian:
    Python's codec took the machine's order, so big-endian text read as CJK garbage."""
    text = "Grüße 日本\n> [ref:X]\n"
    for label, data in [("utf-16", text.encode("utf-16-be")), ("utf-16", text.encode("utf-16-le")),
                        ("utf-32", text.encode("utf-32-be")), ("utf-32", text.encode("utf-32-le")),
                        ("utf-16", text.encode("utf-16")), ("utf-32", text.encode("utf-32")),
                        ("unicode", text.encode("utf-16-le")), ("ucs-2", text.encode("utf-16-be"))]:
        raw = (f"Content-Type: text/plain; charset={label}\nContent-Transfer-Encoding: base64"
               "\n\n").encode() + base64.encodebytes(data)
        assert texts_of(raw) == [text], (label, data[:4])
    # Nothing tells (as many NULs either way): big-endian, as RFC 2781 says.
    assert texts_of(b"Content-Type: text/plain; charset=utf-16\n\n\x00A\x41\x00") == ["A\u4100"]


def test_microsofts_names_of_iso_2022_jp_are_read_as_iso_2022_jp() -> None:
    """Exchange labels a Japanese part `_iso-2022-jp$ESC` (code page 50221; `$SIO`, 50222),
    names Python does not know: read as UTF-8, its text was escape sequences and ASCII
    (`$B@A5a=q(B`), so a `case_ref_pattern` or `external_refs` rule in Japanese never
    matched it. The ASCII in it (a token line) reads alike either way."""
    text = "請求書 ｾｲｷｭｳ\n> [ref:X]\n"
    for label in ("_iso-2022-jp$ESC", '"_ISO-2022-JP$SIO"'):
        raw = (f"Content-Type: text/plain; charset={label}\n\n").encode()
        assert texts_of(raw + text.encode("iso2022_jp_ext")) == [text], label


def test_a_byte_order_mark_names_the_charset() -> None:
    """As browsers and clients decode (WHATWG Encoding): a BOM wins over the label and over
    none. A UTF-16 HTML part without a charset parameter was read as UTF-8 (its <meta> is not
    ASCII to the prescan), NULs between the letters."""
    html = "<meta charset=utf-16><p>Grüße</p><div>[ref:X]</div>"
    raw = b"Content-Type: text/html\nContent-Transfer-Encoding: base64\n\n" + \
        base64.encodebytes(html.encode("utf-16"))
    assert texts_of(raw) == ["\nGrüße\n\n[ref:X]\n"]
    for label in ("", "; charset=iso-8859-1"):
        for data in ("Grüße [ref:X]".encode("utf-16-be"), "Grüße [ref:X]".encode("utf-16-le")):
            bom = b"\xfe\xff" if data[0] == 0 else b"\xff\xfe"
            raw = f"Content-Type: text/plain{label}\n\n".encode() + bom + data
            assert texts_of(raw) == ["Grüße [ref:X]"], (label, bom)
    assert texts_of(b"Content-Type: text/plain; charset=iso-8859-1\n\n\xef\xbb\xbfGr\xc3\xbc") \
        == ["\ufeffGrü"]


def test_a_part_labelled_utf16_without_a_nul_byte_is_read_as_utf8() -> None:
    """Every ASCII character has a NUL byte in UTF-16 and UTF-32: a part so labelled without
    one is ASCII-compatible text under a wrong label (read as UTF-16, "[ref:" was gone)."""
    for label in ("utf-16", "utf-16le", "UTF-32BE", "unicode"):
        raw = f"Content-Type: text/plain; charset={label}\n\nGrüße [ref:X]".encode()
        assert texts_of(raw) == ["Grüße [ref:X]"], label


def test_undecodable_bytes_become_replacement_characters() -> None:
    raw = b"Content-Type: text/plain; charset=x-unknown\n\nab\xff [ref:X]"
    assert texts_of(raw) == ["ab\ufffd [ref:X]"]
    bad64 = b"Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\nW3JlZjpYXQ!!=\n"
    assert texts_of(bad64) == ["[ref:X]"]


def test_parts_come_from_the_top_and_file_attachments_only_on_request() -> None:
    raw = (DATA / "outlook-related.eml").read_bytes()
    plain, html = texts_of(raw)
    assert plain.startswith("Hello Ms Müller,") and "“quotes”" in plain
    assert "Hello Ms Müller," in html and "<p>" not in html
    with_attachments = (
        b"Content-Type: multipart/mixed; boundary=m\n\n"
        b"--m\nContent-Type: text/plain\n\nbody\n"
        b"--m\nContent-Type: text/plain\nContent-Disposition: attachment; filename=a.txt\n\nfile\n"
        b"--m\nContent-Type: message/rfc822\n\nSubject: fwd\n\nforwarded\n"
        b"--m\nContent-Type: message/rfc822\nContent-Disposition: attachment; filename=x.eml\n"
        b"\nSubject: =?utf-8?q?Drucker_=C3=BCber?=\n\nforwarded as a file\n"
        b"--m--\n"
    )
    # A message attached as a file ("forward as attachment") reads like an inline forward.
    expected = ["body", "fwd", "forwarded", "Drucker über", "forwarded as a file"]
    assert texts_of(with_attachments) == expected  # the attached a.txt is not read


def test_other_text_types_and_unreadable_content_types_are_read_as_plain_text() -> None:
    """RFC 2046 §4.1.4: a text/* subtype a reader does not know is shown as text/plain
    (text/enriched, text/calendar); RFC 2045 §5.2: a Content-Type that cannot be parsed
    means text/plain. Both were skipped, a token in them lost. Attachments and a bounce's
    returned header fields (its own strategy reads them) are still not read."""
    raw = (b"Content-Type: multipart/mixed; boundary=m\n\n"
           b"--m\nContent-Type: text/enriched\n\n<bold>Thanks</bold> [ref:E]\n"
           b"--m\nContent-Type: text/calendar; method=REPLY\n\nDESCRIPTION:[ref:C]\n"
           b"--m\nContent-Type: text plain\n\n[ref:P]\n"
           b"--m\nContent-Type: text/rfc822-headers\n\nSubject: [ref:H]\n"
           b"--m\nContent-Type: text/csv\nContent-Disposition: attachment\n\n[ref:A]\n"
           b"--m--\n")
    assert texts_of(raw) == ["<bold>Thanks</bold> [ref:E]", "DESCRIPTION:[ref:C]", "[ref:P]"]
    top = b"Content-Type: text/plain charset=utf-8\n\nGr\xc3\xbc\xc3\x9fe [ref:X]\n"
    assert texts_of(top) == ["Grüße [ref:X]\n"]


def test_malformed_multiparts_are_still_read() -> None:
    unclosed = b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\nfirst [ref:U]\n"
    assert texts_of(unclosed) == ["first [ref:U]\n"]
    absent = b"Content-Type: multipart/mixed; boundary=nowhere\n\nplain text [ref:A]\n"
    assert texts_of(absent) == ["plain text [ref:A]\n"]


def test_budget_bounds_the_bytes_read() -> None:
    raw = (b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\n" + b"a" * 100 +
           b"\n--b\nContent-Transfer-Encoding: base64\n\n" + base64.encodebytes(b"b" * 100) +
           b"--b\n\nnever read\n--b--\n")
    texts = texts_of(raw, budget=150)
    assert texts == ["a" * 100, "b" * 50]
    assert texts_of(raw, budget=100) == ["a" * 100]


def test_returned_parts_of_a_corpus_bounce() -> None:
    headers, body = parse_raw((CORPUS / "msg_16.txt").read_bytes())
    top = mime.top_fields(headers)
    found = list(iter_parts_of_type(top.content_type, top.cte, body))
    assert [f.content_type for f in found] == ["message/delivery-status", "message/rfc822"]
    assert b"Reporting-MTA:" in found[0].data
    returned_headers, _ = parse_raw(found[1].data)
    assert any(h.name.lower() == "message-id" for h in returned_headers)


def test_returned_headers_are_transfer_decoded_and_matches_are_not_entered() -> None:
    raw_headers = b"Message-ID: <ours@example.com>\n"
    body = (b"--r\nContent-Type: text/plain\n\nundeliverable\n"
            b"--r\nContent-Type: text/rfc822-headers\nContent-Transfer-Encoding: base64\n\n"
            + base64.encodebytes(raw_headers) +
            b"--r\nContent-Type: message/rfc822\n\nContent-Type: message/rfc822\n\nFrom: x\n\ny\n"
            b"--r--\n")
    found = list(iter_parts_of_type("multipart/report; boundary=r", None, body))
    assert [(f.content_type, f.data[:11]) for f in found] == [
        ("text/rfc822-headers", b"Message-ID:"), ("message/rfc822", b"Content-Typ"),
    ]
    assert list(iter_parts_of_type("multipart/report; boundary=r", None, body, budget=5)) == [
        found[0].__class__("text/rfc822-headers", b"Messa"),
    ]


@settings(max_examples=EXAMPLES, deadline=None)
@given(body=st.binary(max_size=1500), ctype=st.sampled_from([
    "multipart/mixed; boundary=b", "text/html; charset=utf-16", "message/rfc822", None,
]), cte=st.sampled_from(["base64", "quoted-printable", None]))
def test_never_raises_and_respects_the_budget(body: bytes, ctype: str | None,
                                              cte: str | None) -> None:
    texts = list(iter_texts(ctype, cte, b"--b\n\n" + body, budget=700))
    assert sum(len(t) for t in texts) <= 700  # decoding never makes more characters than bytes
    list(iter_parts_of_type(ctype, cte, body))


def test_an_image_pasted_inline_does_not_use_up_the_budget() -> None:
    """A screenshot an HTML editor sends as a `data:` URI (RFC 2397) above the quote is no
    text: its base64 is not counted (in any charset), so the tag below it is read within the
    budget, which still bounds the text and markup around it (an icon's short run is
    counted)."""
    image = b'<img src="data:image/png;BASE64,' + base64.b64encode(bytes(1500)) + b'\r\n">'
    quote = b"<blockquote>[ref:TAG]</blockquote>"
    html = b"<p>See</p>" + image + quote
    for ctype, cte, data in (("text/html", None, html),
                             ("text/html", "base64", base64.encodebytes(html)),
                             ("text/html; charset=utf-16", "base64",
                              base64.encodebytes(html.decode().encode("utf-16")))):
        texts = list(iter_texts(ctype, cte, data, budget=600))
        assert "[ref:TAG]" in "".join(texts), (ctype, cte)
        assert sum(len(t) for t in texts) <= 600
    icon = b'<img src="data:image/png;base64,' + base64.b64encode(bytes(600)) + b'">'
    assert "[ref:TAG]" not in "".join(iter_texts("text/html", None, icon + quote, budget=600))
    prose = b"<p>" + b"words " * 250 + b"</p>"
    assert "[ref:TAG]" not in "".join(iter_texts("text/html", None, prose + quote, budget=600))
