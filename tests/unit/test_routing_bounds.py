"""Routing rules' regexes read a bounded text (Python's re has no timeout): a rule searches
the first `MAX_VALUE_TEXT` characters of the Subject and of each field of its `header`, at most
`MAX_RULE_TEXT` characters of those fields together. Found by the third complexity audit: a
rule `subject: ".*urgent"` took 47 s of CPU for a 100 KB Subject (Postfix's
header_size_limit), quadratic in the text it searched."""

from __future__ import annotations

import base64
import re
import time
from typing import Any

import pytest

from casethread.core import routing
from casethread.core.message import Envelope, Header, Message
from casethread.core.routing import MAX_RULE_TEXT, MAX_VALUE_TEXT, Router
from casethread.core.settings import RoutingRule, RoutingSettings

CPU_LIMIT = 5.0  # seconds (measured: ~0.6 s; minutes before the bound)


def _message(*fields: tuple[str, str]) -> Message:
    return Message(Envelope(rcpts=("support@example.com",)),
                   tuple(Header(n, v) for n, v in fields))


class _Counting:
    """A compiled pattern that counts the characters it is asked to search."""

    def __init__(self, pattern: str) -> None:
        self._pattern = re.compile(pattern, re.I)
        self.searched: list[int] = []

    def search(self, text: str) -> Any:
        self.searched.append(len(text))
        return self._pattern.search(text)


def _router(**rule: Any) -> tuple[Router, _Counting]:
    router = Router(RoutingSettings(rules=(RoutingRule(queue="vip", **rule),)))
    compiled = router._rules[0]
    counting = _Counting(rule.get("subject") or rule["header_regex"])
    if rule.get("subject"):
        compiled._subject = counting  # type: ignore[assignment]
    else:
        compiled._header_regex = counting  # type: ignore[assignment]
    return router, counting


def test_a_subject_rule_reads_the_first_characters_of_a_100_kb_subject() -> None:
    router, counting = _router(subject=r"urgent")
    assert router.route(_message(("Subject", "a" * 100_000 + " urgent"))).queue == "support"
    assert counting.searched == [MAX_VALUE_TEXT]
    assert router.route(_message(("Subject", "x" * (MAX_VALUE_TEXT - 7) + " urgent"))).queue \
        == "vip"


def test_a_header_rule_reads_its_fields_to_a_budget() -> None:
    router, counting = _router(header="X-Priority", header_regex=r"high")
    fields = [("X-Priority", "low\r\n " + "b" * 100_000)] * 100 + [("X-Priority", "high")]
    assert router.route(_message(*fields)).queue == "support"
    assert sum(counting.searched) == MAX_RULE_TEXT
    assert max(counting.searched) == MAX_VALUE_TEXT
    counting.searched.clear()
    # 100,000 empty fields: each counts as a character, so the loop stops too.
    assert router.route(_message(*[("X-Priority", "")] * 100_000)).queue == "support"
    assert len(counting.searched) == MAX_RULE_TEXT


def test_normal_fields_route_as_before() -> None:
    router = Router(RoutingSettings(rules=(
        RoutingRule(queue="vip", subject=r"urgent"),
        RoutingRule(queue="partner", header="Received", header_regex=r"from mx\.partner\."),
    )))
    received = [("Received", f"from relay{n}.example.net by mx{n}.example.org; "
                 "Mon, 2 Mar 2026 10:00:00 +0000") for n in range(20)]
    assert router.route(_message(("Subject", "Re: URGENT printer"))).queue == "vip"
    partner = ("Received", "from mx.partner.example by mx.example.org")
    assert router.route(_message(("Subject", "hello"), *received, partner)).queue == "partner"
    assert router.route(_message(("Subject", "hello"), *received)).queue == "support"


def test_a_quadratic_pattern_on_hostile_fields_costs_bounded_cpu() -> None:
    router = Router(RoutingSettings(rules=(
        RoutingRule(queue="vip", subject=r".*urgent"),
        RoutingRule(queue="high", header="X-Priority", header_regex=r".*high"),
    )))
    msg = _message(("Subject", "a" * 100_000), *[("X-Priority", "b" * 100_000)] * 100)
    started = time.process_time()
    assert router.route(msg).queue == "support"
    cpu = time.process_time() - started
    assert cpu < CPU_LIMIT, f"{cpu:.2f} s"
    assert routing.MAX_VALUE_TEXT <= routing.MAX_RULE_TEXT


def test_a_subject_rule_reads_an_encoded_subject_decoded() -> None:
    """A client encodes a whole non-ASCII Subject (RFC 2047): a rule for `Mahnung für` read
    only `=?UTF-8?B?...?=` and sent the customer's reminder to the default queue. The Subject
    as written is searched first, so a rule written for the encoded form matches as before."""
    router = Router(RoutingSettings(rules=(
        RoutingRule(queue="billing", subject=r"Mahnung für"),
        RoutingRule(queue="raw", subject=r"=\?iso-8859-1\?"),
    )))
    for subject in ("Mahnung für Rechnung 12",
                    "=?UTF-8?B?TWFobnVuZyBmw7xyIFJlY2hudW5nIDEy?=",
                    "=?UTF-8?Q?Mahnung_f=C3=BCr_Rechnung_12?=",
                    "Re: =?iso-8859-1?q?Mahnung_f=FCr?=\r\n =?iso-8859-1?q?_Rechnung_12?="):
        assert router.route(_message(("Subject", subject))).queue == "billing", subject
    assert router.route(_message(("Subject", "=?iso-8859-1?q?Gr=FC=DFe?="))).queue == "raw"
    assert router.route(_message(("Subject", "=?UTF-8?B?R3LDvMOfZQ==?="))).queue == "support"


def _word(label: str, codec: str, text: str) -> str:
    return f"=?{label}?B?{base64.b64encode(text.encode(codec)).decode()}?="


# (label, how its bytes are written, the Subject): Exchange re-encodes a Japanese Subject
# under Microsoft's names for ISO-2022-JP (code pages 50221, 50222); `unknown-8bit` (RFC
# 1428) labels bytes of no known charset, read as UTF-8 as a body part so labelled is.
UNKNOWN_LABEL_SUBJECTS = [
    ("_iso-2022-jp$ESC", "iso2022_jp", "RE: 請求書の再発行"),
    ("_iso-2022-jp$SIO", "iso2022_jp", "RE: 請求書の再発行"),
    ("_ISO-2022-JP$ESC", "iso2022_jp_ext", "RE: ｾｲｷｭｳ 請求書の再発行"),
    ("unknown-8bit", "utf-8", "RE: 請求書の再発行"),
]


@pytest.mark.parametrize(("label", "codec", "subject"), UNKNOWN_LABEL_SUBJECTS)
def test_a_subject_rule_reads_a_word_of_an_unknown_charset_as_the_token_search_does(
        label: str, codec: str, subject: str) -> None:
    """Such a word stayed as written for routing (its B encoding hiding the text), while the
    token search read it (session 23): a rule for `請求書` sent the customer's mail to the
    default queue. It is read as the token search reads it, Microsoft's names for ISO-2022-JP
    as ISO-2022-JP."""
    router = Router(RoutingSettings(rules=(RoutingRule(queue="billing", subject="請求書"),)))
    assert router.route(_message(("Subject", _word(label, codec, subject)))).queue == "billing"
    # A word of another charset's label names nothing it does not hold.
    other = _word(label, codec, "RE: プリンター")
    assert router.route(_message(("Subject", other))).queue == "support"
