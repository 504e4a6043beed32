"""Customers' replies as clients outside the US/EU mainstream write them (our own fixtures,
after what those clients and their users are documented to write): Hebrew, Arabic and Persian
text around our left-to-right tag (Unicode's bidirectional controls), reply prefixes of
further languages, and the character forms a reply's charset or client changes."""

from __future__ import annotations

import base64
import quopri
from typing import Any

import pytest

from casethread.core import token
from casethread.core.message import unfold
from casethread.core.subject import BIDI_CONTROLS, decode_subject

AGENT = ("From", "Dana Agent <dana@support.example.com>")
TO_CUSTOMER = ("To", "Pat Customer <pat@customer.example.org>")
CUSTOMER = ("From", "Pat Customer <pat@customer.example.org>")
SUPPORT = ("To", "support@example.com")
TOKEN = "1D7K2M9QX4RT8VB3ZPQ"  # token-shaped; the scan does not verify
RLM, LRM, RLE, PDF, RLI, PDI = "\u200f", "\u200e", "\u202b", "\u202c", "\u2067", "\u2069"


def encoded(text: str, charset: str) -> str:
    return f"=?{charset}?B?{base64.b64encode(text.encode(charset)).decode()}?="


# Where a right-to-left writer's client or keyboard puts the controls: around the tag, after
# its colon, inside the token (a paste), inside the opening literal, before the closing
# bracket, on a quoted, wrapped line.
BIDI_FORMS = [
    f"{RLM}[ref:{TOKEN}]{RLM}",
    f"{RLE}[ref:{TOKEN}]{PDF}",
    f"[ref:{RLM}{TOKEN}]",
    f"[ref:{TOKEN[:8]}{LRM}{TOKEN[8:]}]",
    f"[ref:{RLI}{TOKEN}{PDI}]",
    f"[ref:\u061c{TOKEN}\u202e]",
    f"[{RLM}ref:{TOKEN}]",
    f"{RLM}[ref:{RLM}\n{RLM}> {TOKEN[:9]}\n> {RLM}{TOKEN[9:]}{RLM}]",
]


@pytest.mark.parametrize("text", BIDI_FORMS)
def test_the_token_search_reads_bidirectional_controls_as_blanks(text: str) -> None:
    """Unicode's Bidi_Control characters are invisible: a token broken by one was no token."""
    assert list(token.find_tokens(text)) == [TOKEN]
    assert token.last_token("x " + text + " y") == TOKEN


@pytest.mark.parametrize("text", [t for t in BIDI_FORMS if "\n" not in t])
def test_the_tag_pattern_removes_a_tag_with_bidirectional_controls(text: str) -> None:
    """What the token search reads as a tag is removed as one, from a Subject re-tagged or
    compared."""
    assert token.tag_pattern(token.DEFAULT_TEMPLATE).sub("", f"Printer {text}").strip(
        BIDI_CONTROLS + " ") == "Printer"


def test_the_tag_patterns_literal_keeps_its_own_blanks() -> None:
    template = " Ticket [ref:{token}]"
    pattern = token.tag_pattern(template)
    assert pattern.sub("", f"x Ticket{RLM} [ref:{TOKEN}]") == "x"
    assert pattern.sub("", f"x Ticket[ref:{TOKEN}]") == f"x Ticket[ref:{TOKEN}]"


def test_a_hebrew_reply_with_marks_in_the_subject_tag_threads(harness: Any) -> None:
    first = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", encoded("תקלה במדפסת", "utf-8")))
    tok = harness.token(first.case_id)
    # windows-1255 holds the marks (LRM, RLM), not the embeddings.
    subject = encoded(f"השב: {RLM}תקלה במדפסת {RLM}[ref:{RLM}{tok}]{RLM}", "windows-1255")
    reply = harness.inbound(CUSTOMER, SUPPORT, ("Subject", subject))
    assert (reply.case_id, reply.one("X-Case-Match")) == (first.case_id, "token")
    assert not reply.all("X-Case-Token")


def test_an_arabic_reply_with_marks_in_the_quoted_token_line_threads(harness: Any) -> None:
    first = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", encoded("عطل الطابعة", "utf-8")))
    tok = harness.token(first.case_id)
    text = (f"شكرا\n\n> مرحبا\n>\n> {RLM}[ref:{RLM}{tok[:10]}{LRM}\n> {tok[10:]}]{RLM}\n")
    reply = harness.inbound(CUSTOMER, SUPPORT, ("Subject", encoded("رد: عطل الطابعة", "utf-8")),
                            ("MIME-Version", "1.0"),
                            ("Content-Type", "text/plain; charset=windows-1256"),
                            ("Content-Transfer-Encoding", "quoted-printable"),
                            body=quopri.encodestring(text.encode("windows-1256")))
    assert (reply.case_id, reply.one("X-Case-Match")) == (first.case_id, "token")


def test_a_moved_conversation_loses_an_old_tag_with_bidirectional_controls(
        harness: Any) -> None:
    """The agent's client kept the customer's marks in the old tag: left beside the new
    one, it came first, and replies went back to the old case."""
    old = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Printer"))
    subject = f"Re: Printer [ref:{RLM}{harness.token(old.case_id)}{RLM}]"
    moved = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", subject), ("X-Case-ID", "TKT-2"))
    assert unfold(moved.one("Subject")) == f"Re: Printer [ref:{harness.token('TKT-2')}]"


def subject_matching(make_harness: Any, tweak: Any) -> Any:
    strategies = make_harness().settings.inbound.strategies
    return make_harness(tweak(inbound={"strategies": (*strategies, "subject-match")}))


# (our Subject, the customer's reply's Subject as written): the reply keeps neither our tag
# nor In-Reply-To/References (a phone's mail app, a retyped reply).
SAME_SUBJECT = [
    ("عطل الطابعة", encoded("رد: عطل الطابعة", "windows-1256")),
    ("عطل الطابعة", encoded("إعادة توجيه: عطل الطابعة", "utf-8")),
    ("תקלה במדפסת", encoded("תשובה: תקלה במדפסת", "windows-1255")),
    ("תקלה במדפסת", encoded("\u200fהשב: \u200fתקלה במדפסת\u200f", "windows-1255")),
    ("Lỗi máy in", encoded("Trả lời: Lỗi máy in", "utf-8")),
    # windows-1258 writes the tone marks apart: "Tra\u0309 lơ\u0300i: Lô\u0303i ma\u0301y in"
    ("Lỗi máy in", encoded("Tra\u0309 l\u01a1\u0300i: L\u00f4\u0303i ma\u0301y in", "cp1258")),
    ("เครื่องพิมพ์เสีย", encoded("ตอบกลับ: เครื่องพิมพ์เสีย", "tis-620")),
    ("Printer rusak", "Balas: Printer rusak"),
    ("Printer rusak", "BLS: Printer rusak"),
    # ISO-2022-JP has no half-width katakana: a Japanese client writes them full width.
    ("ﾌﾟﾘﾝﾀｰ故障", encoded("Re: プリンター故障", "iso-2022-jp")),
    ("プリンター故障", encoded("Re［2］：プリンター故障", "utf-8")),
]


@pytest.mark.parametrize(("ours", "reply"), SAME_SUBJECT)
def test_subject_match_sees_one_subject(make_harness: Any, tweak: Any, ours: str,
                                        reply: str) -> None:
    h = subject_matching(make_harness, tweak)
    first = h.outbound(AGENT, TO_CUSTOMER, ("Subject", encoded(ours, "utf-8")))
    r = h.inbound(CUSTOMER, SUPPORT, ("Subject", reply))
    assert (r.case_id, r.one("X-Case-Match")) == (first.case_id, "subject-match")


@pytest.mark.parametrize(("subject", "topic"), [
    (f"{RLM}השב: {RLM}תקלה במדפסת", "תקלה במדפסת"),
    ("رد: عطل الطابعة", "عطل الطابعة"),
    ("Trả lời: Lỗi máy in", "Lỗi máy in"),
    ("Re［2］：プリンター故障", "プリンター故障"),
])
def test_thread_topic_of_a_regional_reply_prefix(harness: Any, subject: str, topic: str) -> None:
    """Outlook shows Thread-Topic as the conversation's name: the prefix is no part of it."""
    r = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", encoded(subject, "utf-8")))
    assert decode_subject(r.one("Thread-Topic")) == topic


def raw_jis(text: str) -> str:
    """`text` in ISO-2022-JP as old Japanese mailers write a Subject: raw, no RFC 2047."""
    return text.encode("iso-2022-jp").decode("ascii")


def test_a_raw_iso_2022_jp_subject_gets_a_readable_thread_topic(harness: Any) -> None:
    """Its escapes were written out as blanks: `$B%W%j%s%?!<$N8N>c (B`."""
    subject = raw_jis("RE: プリンターの故障")
    r = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", subject))
    assert decode_subject(r.one("Thread-Topic")) == "プリンターの故障"
    # The Subject itself is not re-encoded: the tag follows the text as written.
    assert r.one("Subject") == f"{subject} [ref:{harness.token(r.case_id)}]"


def test_subject_match_reads_a_raw_iso_2022_jp_reply(make_harness: Any, tweak: Any) -> None:
    h = subject_matching(make_harness, tweak)
    first = h.outbound(AGENT, TO_CUSTOMER, ("Subject", encoded("プリンターの故障", "utf-8")))
    r = h.inbound(CUSTOMER, SUPPORT, ("Subject", raw_jis("Re: プリンターの故障")))
    assert (r.case_id, r.one("X-Case-Match")) == (first.case_id, "subject-match")


@pytest.mark.parametrize("text", ["a \x1b$Bxx", "a \x1b[31m red", "\x1b(B", "\x1b$B\x1b$B\x1b",
                                  "\x1b$B%W\udcff", "x" * 9000 + "\x1b$B%W"])
def test_stray_escapes_in_a_subject_never_fail(text: str) -> None:
    decode_subject(text)
