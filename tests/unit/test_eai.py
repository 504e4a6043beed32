"""Internationalised addresses (RFC 6530-6532): one person, whichever spelling of the domain
(U-label or A-label) and letter case a mail uses, is one case participant."""

from __future__ import annotations

from email.utils import getaddresses
from typing import Any

import pytest

from casethread.core import addresses, resolve
from casethread.core.addresses import header_addresses, unicode_address
from casethread.core.message import unfold
from casethread.core.model import AliasKind

SUPPORT = ("To", "Support <support@example.com>")
ZOE_U = "Zoë <zoë@bücher.example>"
ZOE_A = "Zoë <zoë@xn--bcher-kva.example>"
ZOE_UPPER = "ZOË <ZOË@BÜCHER.example>"


def test_header_addresses_write_an_internationalised_domain_as_its_a_label() -> None:
    assert header_addresses([ZOE_U, "用户 <用户@例子.广告>", ZOE_A, ZOE_UPPER]) == [
        "zoë@xn--bcher-kva.example",
        "用户@xn--fsqu00a.xn--4rr70v",
        "zoë@xn--bcher-kva.example",
        "zoë@xn--bcher-kva.example",
    ]
    # ASCII addresses as before, a domain IDNA cannot encode as written.
    assert header_addresses(["Pat <Pat@Example.COM>"]) == ["pat@example.com"]
    bad = "x@" + "ü" * 70 + ".example"  # a label over 63 octets: left as written
    assert header_addresses([bad]) == [addr for _, addr in getaddresses([unfold(bad)])]


def test_unicode_address_gives_the_u_label_form_or_none() -> None:
    assert unicode_address("zoë@xn--bcher-kva.example") == "zoë@bücher.example"
    assert unicode_address("pat@example.com") is None
    assert unicode_address("pat@xn--zz.example") is None  # not a valid A-label


@pytest.mark.parametrize("first, reply", [
    (ZOE_U, ZOE_A), (ZOE_A, ZOE_U), (ZOE_U, ZOE_UPPER), (ZOE_A, ZOE_UPPER)])
def test_a_customers_reply_in_another_spelling_of_the_domain_is_known(
        harness: Any, first: str, reply: str) -> None:
    opened = harness.inbound(("From", first), SUPPORT, ("Subject", "Hilfe"),
                             ("Message-ID", "<z1@example.org>"))
    assert opened.one("X-Case-Match") == "new"
    r = harness.inbound(("From", reply), SUPPORT, ("Subject", "Re: Hilfe"),
                        ("In-Reply-To", "<z1@example.org>"))
    assert (r.case_id, r.one("X-Case-Match")) == (opened.case_id, "in-reply-to")
    assert r.one("X-Case-Sender") == "known"


def test_an_agents_recipient_in_a_label_form_knows_the_customers_u_label_reply(
        harness: Any) -> None:
    out = harness.outbound(("From", "Dana <dana@support.example.com>"),
                           ("To", "Jörg <jörg@xn--mller-kva.de>"), ("Subject", "Bestellung"),
                           rcpts=("jörg@xn--mller-kva.de",))
    r = harness.inbound(("From", "Jörg <Jörg@MÜLLER.de>"), SUPPORT, ("Subject", "AW: Bestellung"),
                        ("In-Reply-To", out.one("Message-ID")))
    assert (r.case_id, r.one("X-Case-Sender")) == (out.case_id, "known")


def test_a_participant_recorded_in_u_label_form_by_an_earlier_version_stays_known(
        harness: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def as_written(values: list[str]) -> list[str]:  # the earlier reading: no A-labels
        return [a.lower() for _, a in getaddresses([unfold(v) for v in values]) if "@" in a]

    with monkeypatch.context() as m:
        m.setattr(resolve, "header_addresses", as_written)
        opened = harness.inbound(("From", ZOE_U), SUPPORT, ("Subject", "Hilfe"),
                                 ("Message-ID", "<z1@example.org>"))
    key = f"{opened.case_id} zoë@bücher.example"
    assert harness.index.find(AliasKind.PARTICIPANT, key) is not None
    r = harness.inbound(("From", ZOE_A), SUPPORT, ("In-Reply-To", "<z1@example.org>"))
    assert r.one("X-Case-Sender") == "known"


def test_an_overlong_internationalised_domain_is_not_given_to_the_codec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Python's IDNA codec takes time quadratic in a label's length before it refuses one over
    63 octets: a domain longer than any domain can be is left as written, uncoded."""
    coded: list[str] = []
    real = addresses._a_label
    monkeypatch.setattr(addresses, "_a_label", lambda d: coded.append(d) or real(d))
    label = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 4000))
    found = addresses.header_addresses([f"x <a@{label}.example>"])
    assert found == [f"a@{label}.example"] and coded == []
    assert addresses.unicode_address("a@xn--" + "a" * 300 + ".example") is None
    assert addresses.header_addresses(["x <a@bücher.example>"]) == ["a@xn--bcher-kva.example"]
    assert coded == ["bücher.example"]


@pytest.mark.parametrize("pattern", ["support@bü*.example", "*@[bc]ücher.example",
                                     "sup?ort@bücher.example", "*@BÜCHER.*"])
def test_a_glob_with_a_wildcard_in_a_non_ascii_label_matches_either_spelling(
        pattern: str) -> None:
    # Punycode does not glob as the U-label does: `bü*` encodes to `xn--b*-xka`.
    matcher = addresses.AddressMatcher((pattern,))
    assert matcher.matches("support@bücher.example")
    assert matcher.matches("<Support@xn--bcher-kva.example>")
    assert not matcher.matches("support@bucher.example")
    assert not matcher.matches("support@xn--mller-kva.example")
