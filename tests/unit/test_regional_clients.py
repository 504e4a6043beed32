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
from casethread.core.subject import BIDI_CONTROLS

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
