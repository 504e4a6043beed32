"""Direction (DESIGN §2): only what the MTA vouches for makes mail outbound."""

from __future__ import annotations

import dataclasses

import pytest

from casethread.core.addresses import (
    MAX_ADDRESS_TEXT,
    AddressMatcher,
    envelope_address,
    header_addresses,
)
from casethread.core.direction import Classifier
from casethread.core.message import Envelope
from casethread.core.model import Direction
from casethread.core.settings import InboundSettings, OutboundSettings, Settings

INBOUND = (
    "Support@Example.com", "@help.example.com", "support+*@example.com", "case-??@example.org",
)


def classifier(**outbound: object) -> Classifier:
    settings = dataclasses.replace(
        Settings(),
        outbound=dataclasses.replace(OutboundSettings(), **outbound),  # type: ignore[arg-type]
        inbound=InboundSettings(addresses=INBOUND),
    )
    return Classifier(settings)


def env(**kw: object) -> Envelope:
    return Envelope(**kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- outbound signals


def test_daemon_name_marks_outbound() -> None:
    c = classifier()
    assert c.classify(env(daemon_name="ORIGINATING")) is Direction.OUTBOUND
    # The value only (in any letter case): Postfix sends $myhostname on other services.
    assert c.classify(env(daemon_name="mx.example.com")) is Direction.OTHER
    assert c.classify(env(daemon_name="originating")) is Direction.OUTBOUND
    assert c.classify(env(daemon_name="ORIGINATING-X")) is Direction.OTHER
    assert c.classify(env(daemon_name="")) is Direction.OTHER


def test_configured_daemon_names() -> None:
    c = classifier(daemon_names=("submission", "smtps"))
    assert c.classify(env(daemon_name="smtps")) is Direction.OUTBOUND
    assert c.classify(env(daemon_name="ORIGINATING")) is Direction.OTHER
    assert classifier(daemon_names=()).classify(env(daemon_name="ORIGINATING")) is (
        Direction.OTHER
    )


def test_authenticated_session() -> None:
    assert classifier().classify(env(auth_user="dana")) is Direction.OUTBOUND
    assert classifier().classify(env(auth_user="")) is Direction.OTHER
    off = classifier(authenticated=False)
    assert off.classify(env(auth_user="dana")) is Direction.OTHER
    assert off.classify(env(auth_user="dana", rcpts=("support@example.com",))) is (
        Direction.INBOUND
    )


@pytest.mark.parametrize(
    ("address", "outbound"),
    [
        ("10.20.1.2", True),
        ("10.21.0.1", False),
        ("192.0.2.10", True),
        ("192.0.2.11", False),
        ("2001:db8:20::5", True),
        ("2001:DB8:20:0:0:0:0:5", True),
        ("2001:db8:21::5", False),
        ("::ffff:10.20.1.2", True),  # IPv4-mapped IPv6 (dual-stack sockets)
        ("::ffff:10.21.0.1", False),
        ("[10.20.1.2]", True),  # Sendmail-style brackets
        ("IPv6:2001:db8:20::5", True),  # Sendmail-style IPv6 tag
        ("[IPv6:2001:db8:20::5]", True),
        ("not-an-ip", False),
        ("", False),
        (None, False),
    ],
)
def test_client_networks(address: str | None, outbound: bool) -> None:
    c = classifier(client_networks=("10.20.0.0/16", "192.0.2.10", "2001:db8:20::/48"))
    expected = Direction.OUTBOUND if outbound else Direction.OTHER
    assert c.classify(env(client_address=address)) is expected


@pytest.mark.parametrize("address", ["192.0.2.10", "::ffff:192.0.2.10", "[IPv6:::ffff:192.0.2.10]"])
def test_an_ipv4_mapped_network_in_the_config_matches_its_ipv4_clients(address: str) -> None:
    c = classifier(client_networks=("::ffff:192.0.2.0/120",))
    assert c.classify(env(client_address=address)) is Direction.OUTBOUND
    assert c.classify(env(client_address="192.0.3.10")) is Direction.OTHER


def test_no_client_networks_configured() -> None:
    assert classifier().classify(env(client_address="127.0.0.1")) is Direction.OTHER


def test_sender_domain_never_makes_mail_outbound() -> None:
    c = classifier(client_networks=("10.20.0.0/16",))
    forged = env(
        mail_from="<dana@example.com>",
        rcpts=("support@example.com",),
        client_address="203.0.113.9",
        daemon_name="mx.example.com",
    )
    assert c.classify(forged) is Direction.INBOUND
    assert c.classify(dataclasses.replace(forged, rcpts=("pat@customer.example.org",))) is (
        Direction.OTHER
    )


def test_outbound_wins_over_inbound_recipients() -> None:
    both = env(daemon_name="ORIGINATING", rcpts=("support@example.com",))
    assert classifier().classify(both) is Direction.OUTBOUND


# --------------------------------------------------------------------------- inbound addresses


@pytest.mark.parametrize(
    ("rcpt", "inbound"),
    [
        ("support@example.com", True),
        ("SUPPORT@EXAMPLE.COM", True),
        ("<Support@Example.Com>", True),
        (" <support@example.com> ", True),
        ("support@example.com.evil.net", False),
        ("xsupport@example.com", False),
        ("anyone@help.example.com", True),
        ("Anyone@HELP.Example.com", True),
        ("anyone@sub.help.example.com", False),  # @domain is that domain only
        ("anyone@nothelp.example.com", False),
        ("support+billing@example.com", True),
        ("SUPPORT+Billing@Example.com", True),
        ("support+@example.com", True),
        ("support-billing@example.com", False),
        ("case-42@example.org", True),
        ("case-4@example.org", False),
        ("case-421@example.org", False),
        ("", False),
        ("<>", False),
    ],
)
def test_inbound_addresses(rcpt: str, inbound: bool) -> None:
    expected = Direction.INBOUND if inbound else Direction.OTHER
    assert classifier().classify(env(rcpts=(rcpt,))) is expected


def test_any_matching_recipient_makes_mail_inbound() -> None:
    c = classifier()
    assert c.classify(env(rcpts=("a@elsewhere.org", "b@help.example.com"))) is Direction.INBOUND
    assert c.classify(env(rcpts=("a@elsewhere.org", "b@elsewhere.org"))) is Direction.OTHER
    assert c.classify(env(rcpts=())) is Direction.OTHER


def test_no_inbound_addresses_means_nothing_is_inbound() -> None:
    c = Classifier(Settings())
    assert c.classify(env(rcpts=("support@example.com",))) is Direction.OTHER


@pytest.mark.parametrize(("address", "matches"), [
    ("support+C-000123@example.com", True),
    ("Support+x+y@Example.com", True),
    ("support+@example.com", True),
    ("support-x@example.com", False),  # another delimiter takes a glob
    ("supportx+y@example.com", False),
    ("support+x@other.example", False),
    ("+x@example.com", False),
    ("billing@example.com", False),  # the entry's own detail is no address of its base
])
def test_an_exact_address_matches_its_subaddresses(address: str, matches: bool) -> None:
    """RFC 5233 subaddresses: Postfix (`recipient_delimiter = +`) delivers them to the
    mailbox, and the milter sees them as the client wrote them."""
    m = AddressMatcher(("support@example.com", "billing+vip@example.com"))
    assert m.matches(address) is matches
    assert m.matches("billing+vip@example.com") and not m.matches("billing+other@example.com")


def test_matcher_glob_character_classes() -> None:
    m = AddressMatcher(("team-[ab]@example.com",))
    assert m.matches("team-a@example.com")
    assert m.matches("TEAM-B@example.com")
    assert not m.matches("team-c@example.com")


def test_envelope_address() -> None:
    assert envelope_address("<User@Example.COM>") == "user@example.com"
    assert envelope_address("  < user@example.com >  ") == "user@example.com"
    assert envelope_address("<>") == ""


def test_header_addresses_skip_garbage() -> None:
    values = ['"Pat, C." <Pat@Customer.Example.org>, dana@Example.com', "undisclosed-recipients:;"]
    assert header_addresses(values) == ["pat@customer.example.org", "dana@example.com"]
    assert header_addresses(["no address here"]) == []


def test_address_text_is_read_to_a_budget_cut_at_a_comma() -> None:
    """MAX_ADDRESS_TEXT a call: a list of 1,000 everyday addresses is read whole; past the
    budget nothing is read, and the field that crosses it is cut at a comma, never inside an
    address (which would read as another)."""
    everyday = ", ".join(f"Person {n} <person{n}@customer.example.org>" for n in range(1_000))
    assert len(everyday) < MAX_ADDRESS_TEXT
    assert len(header_addresses([everyday])) == 1_000
    long = ", ".join(f"person{n}@customer.example.org" for n in range(10_000))
    found = header_addresses(["first@customer.example.org", long, "last@customer.example.org"])
    assert found[0] == "first@customer.example.org"
    assert "last@customer.example.org" not in found
    assert 1_800 < len(found) < 2_400
    assert found[1:] == [f"person{n}@customer.example.org" for n in range(len(found) - 1)]
    assert header_addresses(["a@" * 40_000]) == []  # no comma within the budget: none read


@pytest.mark.parametrize("written", ["jdoe@example.org (Doe, Jane)",
                                     "Jane (Sales, EMEA) <jdoe@example.org>",
                                     "jdoe@example.org (Doe, (Sales, EMEA) Jane)"])
def test_a_comma_in_a_comment_loses_no_address(written: str) -> None:
    """Old-style `addr (Last, First)`: the strict stdlib took the comment's comma for a
    separator and gave no address of the whole call (the From and every To and Cc)."""
    found = header_addresses([written, "Pat <pat@customer.example.org>, dana@example.com"])
    assert found == ["jdoe@example.org", "pat@customer.example.org", "dana@example.com"]


@pytest.mark.parametrize("garbled", ["Support :-( <support@vendor.example>, bob@example.net",
                                     "Jane (ACME <jane@vendor.example>",
                                     "<@relay.example,@hub.example:jane@vendor.example>"])
def test_a_garbled_field_loses_only_its_own_addresses(garbled: str) -> None:
    """The strict stdlib gives no address of a whole call when one field is garbled (here an
    unclosed `(` in a name, an obsolete source route): the From and the other fields read
    with it kept theirs only when each field is then read alone."""
    found = header_addresses(["Pat <pat@customer.example.org>", garbled,
                              "dana@example.com (Dana, Sales)"])
    assert found[0] == "pat@customer.example.org"
    assert found[-1] == "dana@example.com"


def test_address_budget_cut_is_never_inside_a_quoted_name_or_comment() -> None:
    """The field that crosses MAX_ADDRESS_TEXT is cut at a comma that separates addresses: a
    comma in a quoted display name (`"Doe, John"`, Outlook's form) is none, and a cut there
    read the name's start as an address of its own."""
    entries = [f'"x{n}@elsewhere.example, Bob" <bob{n}@customer.example.org>'
               for n in range(3_000)]
    field = ", ".join(entries)
    # Each shift puts the budget's end somewhere else in an entry, the name's comma among them.
    for shift in range(len(entries[0]) + 2):
        found = header_addresses([f"{'p' * shift}@customer.example.org", field])
        assert [a for a in found if "elsewhere" in a] == [], shift
        assert 1_000 < len(found) < 3_000


@pytest.mark.parametrize("configured", ["support@bücher.example", "support@xn--bcher-kva.example",
                                        "@bücher.example", "support@*.example",
                                        "*@bücher.example"])
@pytest.mark.parametrize("rcpt", ["<support@bücher.example>", "<Support@BÜCHER.example>",
                                  "<support@xn--bcher-kva.example>"])
def test_an_internationalised_support_domain_matches_in_either_form(
    configured: str, rcpt: str
) -> None:
    """Postfix hands an SMTPUTF8 sender's U-labels to the milter as they came."""
    settings = dataclasses.replace(Settings(), inbound=InboundSettings(addresses=(configured,)))
    assert Classifier(settings).classify(env(rcpts=(rcpt,))) is Direction.INBOUND


def test_a_glob_with_an_internationalised_domain_matches_either_form() -> None:
    settings = dataclasses.replace(
        Settings(), inbound=InboundSettings(addresses=("support+*@help.bücher.example",)))
    c = Classifier(settings)
    for rcpt in ("<support+x@help.bücher.example>", "<support+x@help.xn--bcher-kva.example>"):
        assert c.classify(env(rcpts=(rcpt,))) is Direction.INBOUND
