"""Engine flows (DESIGN §3.1-3.2, §5, §6) on a MemoryIndex with a fixed clock."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from casethread.core import msgid, outbound, thread_index
from casethread.core.edits import AddHeader, ChangeHeader
from casethread.core.message import Message
from casethread.core.model import AliasKind, CaseState, Direction
from casethread.index import LmdbIndex

NEW_ID = re.compile(r"<[0-9a-z]+\.[0-9a-z]+@([^<>@\s]+)>")
CUSTOMER = ("From", "Pat Customer <pat@customer.example.org>")
AGENT = ("From", "Dana Agent <dana@support.example.com>")
TO_PAT = ("To", "Pat Customer <pat@customer.example.org>")

Build = Callable[..., Message]


def removals_are_highest_first(edits: tuple[Any, ...]) -> None:
    """Per field name, deletions go from the highest index down (DESIGN: MTA renumbering)."""
    by_name: dict[str, list[int]] = {}
    for e in edits:
        if isinstance(e, ChangeHeader) and not e.value:
            by_name.setdefault(e.name.lower(), []).append(e.index)
    for name, indexes in by_name.items():
        assert indexes == sorted(indexes, reverse=True), (name, indexes)
        assert indexes == list(range(len(indexes), 0, -1)), (name, indexes)


# --------------------------------------------------------------------------- outbound


def test_outbound_new_case_gets_case_id_and_message_id(harness: Any) -> None:
    r = harness.outbound(AGENT, ("Subject", "Hello"))
    assert r.decision.direction is Direction.OUTBOUND
    assert r.decision.case_ids == ("C-000001",)
    assert r.decision.match == "new"
    assert r.case_id == "C-000001"
    mid = r.one("Message-ID")
    m = NEW_ID.fullmatch(mid)
    assert m, mid
    # No configured domain: the From domain.
    assert m.group(1) == "support.example.com"
    assert "message-id-added" in r.decision.notes
    # The new id is recorded, so a reply to it finds the case.
    assert harness.index.case_for_message(msgid.normalise(mid)) == "C-000001"
    assert harness.index.get_case("C-000001") is not None
    # Threading stamps (DESIGN §3.3, 3.5, 3.6): token in the Subject, the signed anchor in
    # References, a 22-byte Thread-Index root (recorded) and the Thread-Topic.
    tok = harness.token("C-000001")
    assert r.one("Subject") == f"Hello [ref:{tok}]"
    assert r.one("References") == f"<{tok}.case@support.example.com>"
    raw = thread_index.decode(r.one("Thread-Index"))
    assert raw is not None and len(raw) == thread_index.HEADER_LEN
    assert raw == outbound.case_thread_root(harness.case("C-000001"))
    assert harness.index.find(AliasKind.THREAD_ROOT, raw.hex()).case_id == "C-000001"
    assert r.one("Thread-Topic") == "Hello"


def test_outbound_second_new_mail_gets_next_case(harness: Any) -> None:
    assert harness.outbound(AGENT).case_id == "C-000001"
    assert harness.outbound(AGENT).case_id == "C-000002"


def test_outbound_message_id_domain_from_config(make_harness: Any, tweak: Any) -> None:
    h = make_harness(tweak(outbound={"message_id_domain": "ids.example.net"}))
    m = NEW_ID.fullmatch(h.outbound(AGENT).one("Message-ID"))
    assert m and m.group(1) == "ids.example.net"


@pytest.mark.parametrize(
    "sender",
    [None, "undisclosed", "x@[192.0.2.1]", "x@-bad-.example.com", "x@localhost", "x@host."],
)
def test_outbound_message_id_domain_falls_back_to_hostname(harness: Any, sender: Any) -> None:
    headers = [("From", sender)] if sender is not None else []
    m = NEW_ID.fullmatch(harness.outbound(*headers).one("Message-ID"))
    assert m and m.group(1) == "mx.host.example.net"


def test_outbound_message_id_domain_of_an_internationalised_from_is_its_a_label(
        harness: Any) -> None:
    """RFC 5322 §3.6.4 allows no U-label in a Message-ID; the host name was used instead."""
    m = NEW_ID.fullmatch(harness.outbound(("From", "Jürgen <j@Exämple.de>")).one("Message-ID"))
    assert m and m.group(1) == "xn--exmple-cua.de"


@pytest.mark.parametrize("hostname", ["localhost", "mailhost", "bad_name.example"])
def test_a_host_name_that_is_no_domain_gives_way_to_a_support_domain(
        make_harness: Any, tweak: Any, hostname: str) -> None:
    """A container's bare host name (`localhost` at worst) in every Message-ID and anchor
    shows an internal name and is no domain of ours: the support address's domain is."""
    from casethread.core.outbound import fallback_domain

    addresses = ("*@*.lists.example.org", "@Support.Example.COM", "help@other.example")
    assert fallback_domain(hostname, addresses) == "support.example.com"
    assert fallback_domain(hostname, ()) == hostname  # nothing better to take
    assert fallback_domain("mx.host.example.net", addresses) == "mx.host.example.net"


def test_outbound_keeps_existing_message_id(harness: Any) -> None:
    r = harness.outbound(AGENT, ("Message-ID", "<App.1@Helpdesk.Example.com>"))
    assert r.one("Message-ID") == "<App.1@Helpdesk.Example.com>"
    assert not any(
        getattr(e, "name", "").lower() == "message-id" for e in r.decision.edits
    )
    assert "message-id-added" not in r.decision.notes
    assert harness.index.case_for_message("App.1@helpdesk.example.com") == "C-000001"


def test_outbound_unusable_message_id_is_replaced_not_duplicated(harness: Any) -> None:
    r = harness.outbound(AGENT, ("Message-ID", "<>"))
    assert NEW_ID.fullmatch(r.one("Message-ID"))
    assert ChangeHeader("Message-ID", 1, r.one("Message-ID")) in r.decision.edits


def test_outbound_adopts_app_case_id(harness: Any) -> None:
    r = harness.outbound(AGENT, ("X-Case-ID", "TICKET-4711"), ("Message-ID", "<t1@app.example>"))
    assert r.decision.case_ids == ("TICKET-4711",)
    assert r.decision.match == "app"
    assert r.case_id == "TICKET-4711"
    # Already exactly right: the X-Case-ID goes out as the app wrote it, untouched; the only
    # edits are the threading stamps of a new case (no Subject: one holding just the tag).
    tok = harness.token("TICKET-4711")
    root = outbound.case_thread_root(harness.case("TICKET-4711"))
    assert r.decision.edits == (
        AddHeader("Subject", f"[ref:{tok}]"),
        AddHeader("References", f"<{tok}.case@support.example.com>"),
        AddHeader("Thread-Index", thread_index.encode(root)),
    )
    assert harness.index.get_case("TICKET-4711") is not None
    assert harness.index.case_for_message("t1@app.example") == "TICKET-4711"
    # Adopting again finds the same case, and generated ids carry on from C-000001.
    again = harness.outbound(AGENT, ("X-Case-ID", "TICKET-4711 "))
    assert again.decision.case_ids == ("TICKET-4711",)
    assert again.case_id.strip() == "TICKET-4711"
    assert harness.outbound(AGENT).case_id.startswith("C-")


@pytest.mark.parametrize("dirty", ["APP-9\x00", "APP-9\x1f", "APP-9 ", "APP-9\t"])
def test_outbound_app_case_id_with_control_characters_goes_out_clean(
    harness: Any, dirty: str
) -> None:
    r = harness.outbound(AGENT, ("X-Case-ID", dirty))
    assert r.decision.case_ids == ("APP-9",)
    assert r.all("X-Case-ID") == ["APP-9"]  # rewritten, not passed on as the app wrote it


def test_outbound_app_case_id_wins_over_reply_headers(harness: Any) -> None:
    first = harness.outbound(AGENT)
    r = harness.outbound(
        AGENT, ("In-Reply-To", first.one("Message-ID")), ("X-Case-ID", "OTHER-1")
    )
    assert r.case_id == "OTHER-1"
    assert r.decision.match == "app"


@pytest.mark.parametrize("bad", ["", "has space", "x" * 65, "C-1;rm", "tick\u00e9t", "a\r\n b",
                                 "-", "..", ":", "-.:_"])
def test_outbound_invalid_app_case_id_is_ignored_noted_and_removed(
    harness: Any, bad: str
) -> None:
    r = harness.outbound(AGENT, ("X-Case-ID", bad))
    assert "bad-app-case-id" in r.decision.notes
    assert r.decision.match == "new"
    assert r.case_id == "C-000001"  # the only X-Case-ID left is ours
    assert ChangeHeader("X-Case-ID", 1, "") in r.decision.edits
    assert harness.index.get_case(bad) is None


def test_outbound_leaves_exactly_one_case_id(harness: Any) -> None:
    r = harness.outbound(
        AGENT,
        ("X-Case-ID", "APP-1"),
        ("x-case-id", "APP-2"),
        ("X-Case-Match", "token"),
        ("X-CASE-ID", "APP-3"),
    )
    assert r.case_id == "APP-1"
    assert [h.name for h in r.headers if h.name.lower().startswith("x-case-")] == ["X-Case-ID"]
    removals_are_highest_first(r.decision.edits)


def test_outbound_follow_up_keeps_the_case(harness: Any) -> None:
    first = harness.outbound(AGENT, ("Subject", "Hello"))
    r = harness.outbound(AGENT, ("Subject", "Also"), ("In-Reply-To", first.one("Message-ID")))
    assert r.case_id == "C-000001"
    assert r.decision.match == "in-reply-to"
    assert harness.index.get_case("C-000002") is None
    # The follow-up's own new Message-ID is recorded too.
    assert harness.index.case_for_message(msgid.normalise(r.one("Message-ID"))) == "C-000001"


def test_outbound_follow_up_of_a_customer_mail(harness: Any) -> None:
    harness.inbound(CUSTOMER, ("Message-ID", "<q1@customer.example.org>"))
    r = harness.outbound(AGENT, ("References", "<q1@customer.example.org>"))
    assert r.case_id == "C-000001"
    assert r.decision.match == "references"


def test_outbound_new_case_skip(make_harness: Any, tweak: Any) -> None:
    h = make_harness(tweak(outbound={"new_case": "skip"}))
    r = h.outbound(AGENT, ("X-Case-Match", "forged"))
    assert r.decision.case_ids == ()
    assert r.decision.match == "none"
    assert r.all("X-Case-ID") == []
    assert r.all("X-Case-Match") == []
    assert h.index.get_case("C-000001") is None
    # A follow-up of a known case is still stamped under skip.
    h.inbound(CUSTOMER, ("Message-ID", "<q1@customer.example.org>"))
    r = h.outbound(AGENT, ("In-Reply-To", "<q1@customer.example.org>"))
    assert r.case_id == "C-000001"


def test_outbound_mail_to_internal_recipients_only_opens_no_case(
        make_harness: Any, tweak: Any) -> None:
    """An app's notice to its agents, an agent's note to a colleague: no case, no stamp. Mail
    that names a case still continues it, and one outside recipient makes it a customer's."""
    internal = ("@example.com", "ops+*@corp.example")
    h = make_harness(tweak(outbound={"internal_recipients": internal}))
    colleagues = ("dana@example.com", "OPS+alerts@corp.example")
    r = h.outbound(AGENT, ("Subject", "Ticket #4 assigned to you"), rcpts=colleagues)
    assert (r.decision.case_ids, r.decision.match) == ((), "none")
    assert "internal-recipients" in r.decision.notes
    assert r.all("X-Case-ID") == [] and r.one("Subject") == "Ticket #4 assigned to you"
    assert h.index.get_case("C-000001") is None
    assert r.one("Message-ID")  # a missing one is still added, as to all outbound mail
    # To a customer too: a case, as before.
    first = h.outbound(AGENT, rcpts=("dana@example.com", "pat@customer.example.org"))
    assert first.case_id == "C-000001" and first.decision.match == "new"
    # A colleague's copy of the case's mail continues the case.
    r = h.outbound(AGENT, ("In-Reply-To", first.one("Message-ID")), rcpts=colleagues)
    assert (r.case_id, r.decision.match) == ("C-000001", "in-reply-to")
    # No recipient at all (a file run without --rcpt) is no internal mail.
    assert h.outbound(AGENT, rcpts=()).decision.match == "new"


@pytest.mark.parametrize("rcpts", [("support@example.com",),
                                   ("dana@example.com", "Support@Example.com"),
                                   ("desk@help.example.com",)])
def test_outbound_mail_to_a_support_address_is_no_internal_mail(
        make_harness: Any, tweak: Any, rcpts: tuple[str, ...]) -> None:
    """A support address is the helpdesk's, also where `internal_recipients` names its domain
    (as the README's `["@example.com"]` beside `support@example.com`): an agent's forward of a
    customer's mail to it, or a colleague's note copied to it, opens a case as before, and the
    copy delivered to the support mailbox carries its X-Case-ID."""
    h = make_harness(tweak(outbound={"internal_recipients": ("@example.com", "*@*.example.com")}))
    r = h.outbound(AGENT, ("Subject", "Fwd: printer broken"), rcpts=rcpts)
    assert (r.case_id, r.decision.match) == ("C-000001", "new")
    assert "internal-recipients" not in r.decision.notes
    assert r.all("X-Case-ID") == ["C-000001"]


# --------------------------------------------------------------------------- inbound


def test_inbound_reply_by_in_reply_to(harness: Any) -> None:
    out = harness.outbound(AGENT, ("To", CUSTOMER[1]))
    r = harness.inbound(
        CUSTOMER,
        ("Message-ID", "<r1@customer.example.org>"),
        ("In-Reply-To", out.one("Message-ID")),
    )
    assert r.decision.direction is Direction.INBOUND
    assert r.case_id == "C-000001"
    assert r.ours() == [
        ("X-Case-ID", "C-000001"),
        ("X-Case-Match", "in-reply-to"),
        ("X-Case-State", "open"),
        # A case opened by outbound mail has no queue: its first inbound mail routes it.
        ("X-Case-Queue", "support"),
        ("X-Case-Auto", "no"),
        # Pat was a recipient of the case's mail, so a participant.
        ("X-Case-Sender", "known"),
    ]
    assert r.decision.match == "in-reply-to"
    assert harness.case("C-000001").queue == "support"


def test_inbound_reply_from_a_non_participant_is_sender_unknown(harness: Any) -> None:
    out = harness.outbound(AGENT)  # no To: nobody but Dana takes part yet
    r = harness.inbound(CUSTOMER, ("In-Reply-To", out.one("Message-ID")))
    assert r.case_id == "C-000001"
    assert r.one("X-Case-Sender") == "unknown"
    # A Message-ID proves no more than that its sender saw some mail of the conversation:
    # Pat does not take part yet (resolve.adds_people).
    r = harness.inbound(CUSTOMER, ("In-Reply-To", out.one("Message-ID")))
    assert r.one("X-Case-Sender") == "unknown"
    # Our case anchor (or tag) proves Pat saw our mail: from now on Pat takes part.
    harness.inbound(CUSTOMER, ("References", out.one("References")))
    r = harness.inbound(CUSTOMER, ("In-Reply-To", out.one("Message-ID")))
    assert r.one("X-Case-Sender") == "known"


def test_inbound_in_reply_to_matches_despite_case_and_spacing(harness: Any) -> None:
    harness.outbound(AGENT, ("Message-ID", "<Out.1@Support.Example.com>"))
    r = harness.inbound(CUSTOMER, ("In-Reply-To", "\r\n < Out.1@SUPPORT.example.COM > (x)"))
    assert r.case_id == "C-000001"


def test_inbound_reply_by_references_newest_first(harness: Any) -> None:
    harness.outbound(AGENT, ("Message-ID", "<old@support.example.com>"))
    harness.outbound(AGENT, ("Message-ID", "<new@support.example.com>"))
    r = harness.inbound(
        CUSTOMER,
        ("In-Reply-To", "<unknown@customer.example.org>"),
        ("References", "<old@support.example.com> <new@support.example.com>"),
    )
    assert r.case_id == "C-000002"
    assert r.one("X-Case-Match") == "references"


def test_inbound_references_limit_is_respected(make_harness: Any, tweak: Any) -> None:
    h = make_harness(tweak(inbound={"references_limit": 3, "addresses": ("support@example.com",)}))
    h.outbound(AGENT, ("Message-ID", "<anchor@support.example.com>"))
    four_newer = " ".join(f"<n{i}@customer.example.org>" for i in range(4))
    r = h.inbound(CUSTOMER, ("References",
                             f"<first@customer.example.org> <anchor@support.example.com> "
                             f"{four_newer}"))
    # Our mail is the 5th newest id: beyond the limit of 3, never looked up (the first ID
    # is, and is unknown).
    assert r.one("X-Case-Match") == "new"
    assert r.case_id == "C-000002"
    two_newer = " ".join(f"<m{i}@customer.example.org>" for i in range(2))
    r = h.inbound(CUSTOMER, ("References", f"<anchor@support.example.com> {two_newer}"))
    assert r.one("X-Case-Match") == "references"
    assert r.case_id == "C-000001"


# Our fields on inbound mail that opens C-000001 with the default routing. Nothing matched:
# no X-Case-Sender, and no token was seen, so no X-Case-Token.
NEW_CASE_FIELDS = [
    ("X-Case-ID", "C-000001"),
    ("X-Case-Match", "new"),
    ("X-Case-State", "new"),
    ("X-Case-Queue", "support"),
    ("X-Case-Auto", "no"),
]


def test_inbound_new_case(harness: Any) -> None:
    r = harness.inbound(CUSTOMER, ("Subject", "Help"), ("Message-ID", "<n1@customer.example.org>"))
    assert r.decision.case_ids == ("C-000001",)
    assert r.ours() == NEW_CASE_FIELDS
    assert harness.case("C-000001").queue == "support"
    # Inbound mail is never given a token, anchor or Thread-Index.
    assert r.all("Subject") == ["Help"]
    assert r.all("References") == r.all("Thread-Index") == []
    assert harness.index.case_for_message("n1@customer.example.org") == "C-000001"
    assert harness.inbound(CUSTOMER).case_id == "C-000002"


def test_inbound_forged_case_headers_removed_any_case_several(harness: Any) -> None:
    r = harness.inbound(
        ("X-Case-ID", "C-000999"),
        CUSTOMER,
        ("x-case-id", "C-000998"),
        ("X-CASE-MATCH", "token"),
        ("X-Case-Duplicate", "yes"),
        ("X-Case-ID", "C-000997"),
        ("x-case-state", "closed"),
        ("X-Case-Queue", "vip"),
        ("X-Case-Auto", "no"),
        ("X-Case-Loop", "no"),
        ("X-Case-Related", "C-000001"),
        ("X-Case-Sender", "known"),
        ("X-Case-Token", "valid"),
        ("X-Case-Token", "valid"),
        ("X-Case", "not under the prefix"),
        ("X-Cases", "not under the prefix either"),
    )
    assert r.ours() == NEW_CASE_FIELDS
    assert r.one("X-Case") == "not under the prefix"
    assert r.one("X-Cases") == "not under the prefix either"
    removals = r.removals()
    assert sorted((e.name.lower(), e.index) for e in removals) == [
        ("x-case-auto", 1),
        ("x-case-duplicate", 1),
        ("x-case-id", 1), ("x-case-id", 2), ("x-case-id", 3),
        ("x-case-loop", 1),
        ("x-case-match", 1),
        ("x-case-queue", 1),
        ("x-case-related", 1),
        ("x-case-sender", 1),
        ("x-case-state", 1),
        ("x-case-token", 1), ("x-case-token", 2),
    ]
    removals_are_highest_first(r.decision.edits)
    # Removals come before our additions (they refer to the message as received).
    kinds = [type(e) for e in r.decision.edits]
    assert kinds == sorted(kinds, key=lambda k: k is AddHeader)


def test_inbound_forged_headers_do_not_steer_matching(harness: Any) -> None:
    harness.inbound(CUSTOMER)  # C-000001 exists
    r = harness.inbound(CUSTOMER, ("X-Case-ID", "C-000001"))
    assert r.case_id == "C-000002"


def test_duplicate_delivery(harness: Any) -> None:
    first = harness.inbound(CUSTOMER, ("Message-ID", "<dup@customer.example.org>"))
    again = harness.inbound(
        CUSTOMER, ("Message-ID", "<dup@Customer.Example.org>"), ("X-Case-Duplicate", "no")
    )
    assert first.case_id == again.case_id == "C-000001"
    assert again.decision.match == "duplicate"
    assert again.one("X-Case-Match") == "duplicate"
    assert again.one("X-Case-Duplicate") == "yes"
    assert again.one("X-Case-Sender") == "known"  # Pat's first mail made Pat a participant
    assert again.one("X-Case-Queue") == "support"
    assert first.all("X-Case-Duplicate") == []
    assert harness.index.get_case("C-000002") is None


def test_duplicate_wins_over_reply_headers(harness: Any) -> None:
    harness.outbound(AGENT, ("Message-ID", "<a@support.example.com>"))  # C-000001
    harness.inbound(CUSTOMER, ("Message-ID", "<x@customer.example.org>"))  # C-000002
    r = harness.inbound(
        CUSTOMER,
        ("Message-ID", "<x@customer.example.org>"),
        ("In-Reply-To", "<a@support.example.com>"),
    )
    assert r.case_id == "C-000002"
    assert r.one("X-Case-Match") == "duplicate"


def test_reply_to_a_reply_threads(harness: Any) -> None:
    out = harness.outbound(AGENT)
    harness.inbound(
        CUSTOMER,
        ("Message-ID", "<r1@customer.example.org>"),
        ("In-Reply-To", out.one("Message-ID")),
    )
    # The customer replies to their own mail (or a colleague to it): only r1 is known from it.
    r = harness.inbound(
        ("From", "colleague@customer.example.org"),
        ("Message-ID", "<r2@customer.example.org>"),
        ("In-Reply-To", "<r1@customer.example.org>"),
    )
    assert r.case_id == "C-000001"
    # And an agent's answer to that threads as well.
    assert harness.outbound(AGENT, ("In-Reply-To", "<r2@customer.example.org>")).case_id == (
        "C-000001"
    )


def test_inbound_without_message_id_is_noted_and_not_recorded(harness: Any) -> None:
    r = harness.inbound(CUSTOMER)
    assert "no-message-id" in r.decision.notes
    assert r.case_id == "C-000001"
    assert r.all("Message-ID") == []  # inbound mail is not given one


def test_configurable_header_prefix(make_harness: Any, tweak: Any) -> None:
    h = make_harness(tweak(headers={"prefix": "X-Ticket-"}))
    r = h.inbound(
        CUSTOMER, ("x-ticket-id", "T-9"), ("X-Case-ID", "C-000777"), ("X-TICKET-MATCH", "token")
    )
    assert r.ours("X-Ticket-") == [
        ("X-Ticket-ID", "C-000001"),
        ("X-Ticket-Match", "new"),
        ("X-Ticket-State", "new"),
        ("X-Ticket-Queue", "support"),
        ("X-Ticket-Auto", "no"),
    ]
    # Not under our prefix any more: left alone.
    assert r.one("X-Case-ID") == "C-000777"
    removals_are_highest_first(r.decision.edits)
    out = h.outbound(AGENT, ("X-Ticket-ID", "APP-5"))
    assert out.one("X-Ticket-ID") == "APP-5"
    assert out.decision.match == "app"


def test_configurable_case_id_format(make_harness: Any, tweak: Any) -> None:
    h = make_harness(tweak(cases={"id_prefix": "SUP", "id_digits": 3}))
    assert h.inbound(CUSTOMER).case_id == "SUP001"


def test_other_direction_strips_only(harness: Any, build: Build) -> None:
    msg = build(
        ("From", "x@elsewhere.example"),
        ("X-Case-ID", "C-1"),
        ("Message-ID", "<o1@elsewhere.example>"),
        ("x-case-id", "C-2"),
        ("X-Case-Match", "token"),
        mail_from="x@elsewhere.example",
        rcpts=("someone@elsewhere.example",),
    )
    r = harness.run(msg)  # classified from the envelope
    assert r.decision.direction is Direction.OTHER
    assert r.decision.case_ids == ()
    assert [(h.name, h.value) for h in r.headers] == [
        ("From", "x@elsewhere.example"), ("Message-ID", "<o1@elsewhere.example>"),
    ]
    assert all(isinstance(e, ChangeHeader) and not e.value for e in r.decision.edits)
    removals_are_highest_first(r.decision.edits)
    # An app that sent through a path that is not outbound sees why its X-Case-ID vanished.
    assert r.decision.notes == ("case-fields-removed",)
    assert harness.index.get_case("C-000001") is None
    assert harness.index.case_for_message("o1@elsewhere.example") is None


def test_other_direction_without_our_headers_has_no_edits(harness: Any, build: Build) -> None:
    r = harness.run(build(CUSTOMER, rcpts=("nobody@elsewhere.example",)))
    assert r.decision.direction is Direction.OTHER
    assert r.decision.edits == ()
    assert r.decision.notes == ()


def test_direction_is_classified_from_the_envelope(harness: Any, build: Build) -> None:
    r = harness.run(build(AGENT, rcpts=("pat@customer.example.org",), daemon_name="ORIGINATING"))
    assert r.decision.direction is Direction.OUTBOUND
    r = harness.run(build(CUSTOMER, rcpts=("anyone@help.example.com",)))
    assert r.decision.direction is Direction.INBOUND


def test_log_fields_is_one_line(harness: Any) -> None:
    r = harness.outbound(AGENT, ("X-Case-ID", "bad id"))
    line = r.decision.log_fields()
    assert "\n" not in line
    assert line.startswith("direction=outbound case=C-000001 match=new state=open edits=")
    assert line.endswith("notes=bad-app-case-id,message-id-added,body-not-stamped:empty")


def test_log_line_of_a_follow_up_names_the_earlier_case(
        make_harness: Callable[..., Any], tmp_path: Path) -> None:
    """As X-Case-Related does: the log line is what is read across all mail. Only the reply
    that opened the follow-up says so; the next one threads into the follow-up."""
    index = LmdbIndex(tmp_path / "index", 1 << 24)
    try:
        h = make_harness(index=index)
        tok = h.token(h.outbound(AGENT, TO_PAT, ("Subject", "Hello")).case_id)
        h.set_case("C-000001", state=CaseState.CLOSED)
        lines = [h.inbound(CUSTOMER, ("Subject", f"Re: Hello [ref:{tok}]"),
                           ("Message-ID", f"<r{n}@customer.example.org>")).decision.log_fields()
                 for n in (1, 2)]
        assert lines == [
            "direction=inbound case=C-000002 match=token state=new related=C-000001 edits=7",
            "direction=inbound case=C-000002 match=token state=open edits=6",
        ]
    finally:
        index.close()


def test_recorded_times_follow_the_clock(harness: Any) -> None:
    harness.clock.now = 2_000_000_000.9
    r = harness.inbound(CUSTOMER)
    case = harness.index.get_case(r.case_id)
    assert case.created == 2_000_000_001  # the harness ticks one second per message


@pytest.mark.parametrize("ctype", ["image/png", "message/rfc822"])
def test_outbound_body_without_a_text_part_says_why_it_was_not_stamped(
    harness: Any, ctype: str
) -> None:
    r = harness.outbound(AGENT, ("Content-Type", ctype), body=b"Subject: x\n\nhello\n")
    assert r.decision.body_splices == ()
    assert "body-not-stamped:no-text-part" in r.decision.notes
    assert "body-not-stamped:no-text-part" not in harness.outbound(AGENT).decision.notes


def test_outbound_body_with_an_unparsable_content_type_names_it(harness: Any) -> None:
    """`Content-Type: text/html Content-Transfer-Encoding: 8bit` (a phishing mail's) was noted
    `no-text-part`; the note names the field instead, its blanks escaped (the log line turns
    a note's blanks into hyphens), as a quoted-printable spelled with a blank is."""
    r = harness.outbound(AGENT, ("Content-Type", "text/html Content-Transfer-Encoding: 8bit"),
                         body=b"<p>hello</p>\n")
    assert r.decision.body_splices == ()
    assert r.decision.notes[-1] == ("body-not-stamped:unparsable-content-type-"
                                    "'text/html\\x20Content-Transfer-Encoding:\\x208bi'")
    r = harness.outbound(AGENT, ("Content-Type", "text/plain"),
                         ("Content-Transfer-Encoding", "quoted printable"), body=b"hello\n")
    assert "text-not-stamped:unsupported-transfer-encoding-'quoted\\x20printable'" in (
        r.decision.notes)


def test_log_line_of_a_refused_message_says_refused(make_harness: Callable[..., Any]) -> None:
    """More case fields than can be removed: the message is refused (550), and its log line,
    what is read across all mail, says so beside its note."""
    from casethread.core.case_headers import MAX_OWN_FIELDS
    h = make_harness()
    forged = [("X-Case-ID", f"C-{n}") for n in range(MAX_OWN_FIELDS + 1)]
    r = h.inbound(CUSTOMER, ("Subject", "Hello"), *forged)
    assert r.decision.refused
    assert r.decision.log_fields() == (
        "direction=inbound case=- match=none refused edits=0 notes=too-many-case-fields")
