"""Message-IDs: normalised index keys, reply lists, and the ids we mint (core.msgid)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from casethread.core import msgid

NEW_ID = re.compile(r"<([0-9a-z]+)\.([0-9a-z]+)@([^<>@\s]+)>")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("<abc@example.com>", "abc@example.com"),
        ("abc@example.com", "abc@example.com"),
        ("  <abc@example.com>  ", "abc@example.com"),
        ("< abc @ example.com >", "abc@example.com"),
        ("<abc@\r\n example.com>", "abc@example.com"),
        ("<abc@\n\texample.com>", "abc@example.com"),
        ("<abc(a comment)@example.com>", "abc@example.com"),
        ("<abc@example.com> (added by a gateway)", "abc@example.com"),
        ("<abc@ex(nested (comment))ample.com>", "abc@example.com"),
        # Domains are case-insensitive; local parts are not.
        ("<MixedCase.Local@Example.COM>", "MixedCase.Local@example.com"),
        ('<"quoted@local"@Example.com>', '"quoted@local"@example.com'),
        ("<no-at-sign-AT-ALL>", "no-at-sign-AT-ALL"),
        ("<@Example.COM>", "@Example.COM"),  # no local part: nothing to split, kept verbatim
    ],
)
def test_normalise(raw: str, expected: str) -> None:
    assert msgid.normalise(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "<>", "<<>>", "(only a comment)", "\r\n ", "<\x00>"])
def test_normalise_nothing_usable(raw: str) -> None:
    assert msgid.normalise(raw) is None


def test_normalise_is_idempotent() -> None:
    for raw in ["<A.b@EXAMPLE.com>", "<x (c) @Y.org>", "<q\x00@z.net>"]:
        once = msgid.normalise(raw)
        assert once is not None
        assert msgid.normalise(once) == once
        assert "\x00" not in once


@given(st.text(alphabet=st.sampled_from("aZ9.-_@\"%é<>() \t\r\n\x00\xa0"), max_size=30))
def test_plain_ids_take_the_short_way_to_the_same_result(raw: str) -> None:
    # A trailing space sends any ID the general way (the space goes); a plain one is read
    # without it: both must agree.
    assert msgid.normalise(raw) == msgid.normalise(raw + " ")


def test_hostile_nested_comments_are_bounded() -> None:
    raw = "(" * 50_000 + "x" + ")" * 50_000 + "<id@example.com>"
    # Must return (the bound keeps it linear); what it returns for such junk is not specified.
    msgid.normalise(raw)
    assert msgid.first_id(raw) == "id@example.com"


def test_first_id() -> None:
    assert msgid.first_id(None) is None
    assert msgid.first_id("") is None
    assert msgid.first_id("<one@Example.com> <two@example.com>") == "one@example.com"
    assert msgid.first_id("\r\n <folded@Example.ORG>") == "folded@example.org"
    assert msgid.first_id("bare-id@Example.Net") == "bare-id@example.net"
    assert msgid.first_id("<>") is None


def test_first_id_skips_a_comment_that_contains_angle_brackets() -> None:
    """RFC 5322 allows CFWS around msg-id; a comment is not the id."""
    assert msgid.first_id("(relayed for <gw@example.net>) <real@example.com>") == (
        "real@example.com"
    )


def test_id_list_newest_first_with_dedup_and_limit() -> None:
    value = "<a@x.org> <b@x.org>\r\n <c@X.ORG> <b@x.org> <d@x.org>"
    assert msgid.id_list(value, 100) == ["d@x.org", "b@x.org", "c@x.org", "a@x.org"]
    assert msgid.id_list(value, 2) == ["d@x.org", "b@x.org"]
    assert msgid.id_list(value, 1) == ["d@x.org"]


def test_id_list_dedup_counts_distinct_ids_against_the_limit() -> None:
    value = "<a@x.org> <b@x.org> <b@X.org> <b@x.ORG>"
    assert msgid.id_list(value, 2) == ["b@x.org", "a@x.org"]


def test_id_list_dedup_uses_normalised_form_only_on_domain() -> None:
    # Local parts differ in case: two different ids.
    assert msgid.id_list("<Abc@x.org> <abc@x.org>", 10) == ["abc@x.org", "Abc@x.org"]


def test_id_list_bare_ids_without_brackets() -> None:
    assert msgid.id_list("one@x.org two@X.org\r\n three@x.org", 10) == [
        "three@x.org", "two@x.org", "one@x.org",
    ]
    # Words without an @ are not ids.
    assert msgid.id_list("see one@x.org thanks", 10) == ["one@x.org"]


def test_id_list_brackets_win_over_bare_words() -> None:
    assert msgid.id_list("junk@x.org <real@x.org>", 10) == ["real@x.org"]


@pytest.mark.parametrize("value", [None, "", "garbage", "<>", "<<<>>>", "   ", "(comment)"])
def test_id_list_garbage_is_empty(value: str | None) -> None:
    assert msgid.id_list(value, 10) == []


def test_id_list_many_ids_is_bounded_by_limit() -> None:
    value = " ".join(f"<id{i}@x.org>" for i in range(10_000))
    got = msgid.id_list(value, 100)
    assert got == [f"id{i}@x.org" for i in range(9_999, 9_899, -1)]


def _base36(text: str) -> int:
    return int(text, 36)


def test_new_message_id_format_and_time() -> None:
    now = 1_772_442_900.123
    value = msgid.new_message_id("mail.example.com", now)
    m = NEW_ID.fullmatch(value)
    assert m, value
    assert _base36(m.group(1)) == int(now * 1000)
    assert m.group(3) == "mail.example.com"
    # It is its own normal form (minus the brackets), so recording it finds it again.
    assert msgid.normalise(value) == value[1:-1]
    assert msgid.first_id(value) == value[1:-1]


def test_new_message_id_unique_with_at_least_96_random_bits() -> None:
    now = 1_772_442_900.0
    values = [msgid.new_message_id("example.com", now) for _ in range(10_000)]
    assert len(set(values)) == 10_000
    randoms = []
    for value in values:
        m = NEW_ID.fullmatch(value)
        assert m, value
        randoms.append(_base36(m.group(2)))
    # Uniform over 96+ bits: the chance that none of 10,000 draws reaches 2**95 is 2**-10000,
    # while a 64- or 80-bit random part can never get there.
    assert max(randoms) >= 2**95


@pytest.mark.parametrize(
    ("domain", "plain"),
    [
        ("example.com", True),
        ("a-b.example.co.uk", True),
        ("localhost", True),
        ("-bad.example.com", False),
        ("bad-.example.com", False),
        ("exa mple.com", False),
        ("example.com.", False),
        ("[192.0.2.1]", False),
        ("exämple.com", False),
        ("", False),
        ("a" * 64 + ".com", False),
        (".".join(["a" * 63] * 4), False),  # 255 characters
    ],
)
def test_is_plain_domain(domain: str, plain: bool) -> None:
    assert msgid.is_plain_domain(domain) is plain


def test_written_ids_are_copied_once_and_fit_a_line() -> None:
    long_id = "x" * 950 + "@example.org"
    value = f"<A@Ex.ORG>\r\n <b@x> <A@Ex.ORG> <{long_id}> <c\r\n @x>"
    assert msgid.written_ids(value) == ["<A@Ex.ORG>", "<b@x>", "<c @x>"]
