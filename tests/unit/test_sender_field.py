"""Mail a delegate sends on another's behalf (audit realmail24). RFC 5322 §3.6.2: `From` names
the author, `Sender` the agent who sent it (Exchange's "on behalf of": `From: boss`,
`Sender: assistant`; a shared mailbox's delegate likewise). casethread reads the author: the
From is the participant and the flood sender; the `Sender` is neither, as a web form's own
envelope sender is none. These held before this audit; the tests keep them so."""

from __future__ import annotations

from typing import Any

BOSS = ("From", "Kim Boss <kim@customer.example.org>")
ASSISTANT = "Ari Assistant <ari@customer.example.org>"
SUPPORT = ("To", "support@example.com")


def test_the_author_not_the_sender_is_the_participant(harness: Any) -> None:
    first = harness.inbound(BOSS, ("Sender", ASSISTANT), SUPPORT, ("Subject", "Order 4711"),
                            ("Message-ID", "<m1@customer.example.org>"))
    case = first.case_id
    # The author's own later mail is a participant's; the assistant's, under their own From,
    # is a stranger's (it threads by In-Reply-To, but adds nobody and is `unknown`).
    by_boss = harness.inbound(BOSS, SUPPORT, ("Subject", "Re: Order 4711"),
                              ("In-Reply-To", "<m1@customer.example.org>"))
    assert (by_boss.case_id, by_boss.one("X-Case-Sender")) == (case, "known")
    by_assistant = harness.inbound(("From", ASSISTANT), SUPPORT, ("Subject", "Re: Order 4711"),
                                   ("In-Reply-To", "<m1@customer.example.org>"))
    assert (by_assistant.case_id, by_assistant.one("X-Case-Sender")) == (case, "unknown")


def test_mail_sent_on_behalf_counts_against_its_author(harness: Any) -> None:
    """An assistant who sends for several people does not put them over the flood limit
    together; the author's own mail and the mail sent for them count as one."""
    for n in range(10):
        harness.inbound(BOSS, SUPPORT, ("Subject", f"own {n}"))
        harness.inbound(BOSS, ("Sender", ASSISTANT), SUPPORT, ("Subject", f"for Kim {n}"))
    over = harness.inbound(BOSS, ("Sender", ASSISTANT), SUPPORT, ("Subject", "for Kim 10"))
    assert over.one("X-Case-Loop") == "yes"
    for n in range(20):
        other = harness.inbound(("From", f"Author {n} <a{n}@customer.example.org>"),
                                ("Sender", ASSISTANT), SUPPORT, ("Subject", f"for {n}"))
        assert other.all("X-Case-Loop") == [], n
