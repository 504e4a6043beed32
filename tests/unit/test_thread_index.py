"""Outlook Thread-Index per [MS-OXOMSG] §2.2.1.3 (core.thread_index)."""

from __future__ import annotations

import base64
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from casethread.core import thread_index as ti

from ..helpers.conversation_index import filetime_to_unix, parse

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
GUID = bytes(range(16))

# Worked by hand from the spec (no example value is given there): 1_700_000_000 s after 1970
# is 133_444_736_000_000_000 FILETIME ticks; its top 40 bits are 0x01DA1747C6.
ROOT_HEX = "01" + "01da1747c6" + GUID.hex()
ROOT_B64 = "AQHaF0fGAAECAwQFBgcICQoLDA0ODw=="


def test_known_root_layout() -> None:
    ft = 1_700_000_000 * 10**7 + 116_444_736_000_000_000
    assert ft == 133_444_736_000_000_000
    assert (ft >> 24).to_bytes(5, "big").hex() == "01da1747c6"
    root = ti.new_root(NOW, GUID)
    assert root.hex() == ROOT_HEX
    assert len(root) == 22
    assert root[0] == 0x01
    assert ti.encode(root) == ROOT_B64
    # The shape of Exchange-written values for 2023/24: "AQHa...".
    assert ROOT_B64.startswith("AQHa")


def test_known_child_block() -> None:
    root = bytes.fromhex(ROOT_HEX)
    header_ft = 0x01DA1747C6 << 24
    # 100 s later: diff from the (truncated) header time, then bits 48..18.
    diff = (1_700_000_100 * 10**7 + 116_444_736_000_000_000) - header_ft
    assert diff == 1_007_143_424
    assert diff >> 18 == 0xF01
    out = ti.child(root, NOW + 100, rand=0x5A)
    assert out[:22] == root
    assert out[22:].hex() == "00000f01" + "5a"
    assert ti.encode(out) == "AQHaF0fGAAECAwQFBgcICQoLDA0ODwAADwFa"


def test_known_dc1_child_block() -> None:
    root = bytes.fromhex(ROOT_HEX)
    later = NOW + 3 * 365 * 86400  # three years: beyond the DC=0 range (~1.78 years)
    out = ti.child(root, later, rand=0)
    word = int.from_bytes(out[22:26], "big")
    assert word >> 31 == 1
    diff = round(later * 10**7) + 116_444_736_000_000_000 - (0x01DA1747C6 << 24)
    assert word & 0x7FFFFFFF == diff >> 23


def test_config_object_form_from_ms_oxocfg() -> None:
    # [MS-OXOCFG] §2.2.8.8: IndexPrefix 0x010000000000 + ConversationID, a valid 22-byte index.
    raw = bytes.fromhex("010000000000") + GUID
    assert ti.decode(ti.encode(raw)) == raw
    assert ti.root_of(raw) == raw
    assert parse(raw).guid == GUID
    # A child of it has a huge delay and is clamped, not wrapped.
    out = ti.child(raw, NOW, rand=0)
    assert out[22:26] == b"\xff\xff\xff\xff"


def test_desktop_outlook_layout_header_time() -> None:
    # Outlook's MAPI writes FILETIME bits 63..16 into bytes 0..5 ("Ad..." values).
    ft = ti.unix_to_filetime(NOW)
    raw = (ft >> 16).to_bytes(6, "big") + GUID
    assert raw[0] == 0x01 and raw[1] != 0x01
    assert ti.encode(raw).startswith("Ad")
    assert ti.header_filetime(raw) == (ft >> 16) << 16
    assert abs(parse(raw).time - NOW) < 2**16 / 10**7
    # Children of such an index are relative to that (finer) header time.
    out = ti.child(raw, NOW + 10, rand=0)
    assert abs(parse(out).child_times[0] - (NOW + 10)) <= 2**18 / 10**7


def test_new_root_defaults_to_a_random_guid() -> None:
    a, b = ti.new_root(NOW), ti.new_root(NOW)
    assert a[:6] == b[:6]
    assert a[6:] != b[6:]
    uuid.UUID(bytes=a[6:])  # any 16 bytes; shows the order is RFC 4122's


def test_new_root_rejects_bad_guid_and_time() -> None:
    with pytest.raises(ValueError):
        ti.new_root(NOW, b"short")
    for bad in (-1e12, 1e13, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            ti.new_root(bad)


def test_header_time_resolution() -> None:
    root = ti.new_root(NOW, GUID)
    t = parse(root).time
    assert NOW - 2**24 / 10**7 < t <= NOW


@given(
    start=st.floats(min_value=946_684_800, max_value=2_524_608_000),  # 2000..2050
    # The DC=1 range is 2**54 ticks (~57.08 years); beyond it the delta is clamped (tested below).
    delays=st.lists(st.floats(min_value=0, max_value=56 * 365 * 86400), max_size=12),
)
def test_children_decode_back_within_resolution(start: float, delays: list[float]) -> None:
    raw = ti.new_root(start, GUID)
    for n, delay in enumerate(delays, 1):
        raw = ti.child(raw, start + delay)
        assert len(raw) == 22 + 5 * n
        assert ti.root_of(raw) == ti.new_root(start, GUID)
    parsed = parse(raw)
    assert parsed.depth == len(delays)
    assert parsed.guid == GUID
    for delay, c, when in zip(delays, parsed.children, parsed.child_times, strict=True):
        diff = ti.unix_to_filetime(start + delay) - parsed.filetime
        assert c.delta_code == (0 if diff < 2**49 else 1)
        resolution = 2**18 if c.delta_code == 0 else 2**23
        assert c.delta <= diff < c.delta + resolution
        expected = start + delay
        assert expected - resolution / 10**7 - 1e-6 <= when <= expected + 1e-6


def test_delta_code_boundary_and_clamp() -> None:
    root = ti.new_root(NOW, GUID)
    header_s = filetime_to_unix(ti.header_filetime(root))
    just_below = ti.child(root, header_s + (2**49 - 2**18) / 10**7, rand=0)
    assert just_below[22:26] == (0x7FFFFFFF).to_bytes(4, "big")  # DC=0, all 31 bits set
    # (a few ticks of margin: a float timestamp near 1.7e9 s resolves ~2 ticks)
    at_limit = ti.child(root, header_s + (2**49 + 2**12) / 10**7, rand=0)
    assert at_limit[22:26] == ((1 << 31) | (2**49 >> 23)).to_bytes(4, "big")
    beyond = ti.child(root, header_s + 2**55 / 10**7, rand=0)
    assert beyond[22:26] == b"\xff\xff\xff\xff"


def test_child_before_header_time_is_zero_delay() -> None:
    root = ti.new_root(NOW, GUID)
    out = ti.child(root, NOW - 3600, rand=7)
    assert out[22:] == b"\x00\x00\x00\x00\x07"


def test_child_random_byte() -> None:
    root = ti.new_root(NOW, GUID)
    assert ti.child(root, NOW, rand=0x1FF)[-1] == 0xFF
    seen = {ti.child(root, NOW)[-1] for _ in range(64)}
    assert len(seen) > 1


def test_child_rejects_invalid_parent() -> None:
    for bad in (b"", b"\x01" * 21, b"\x01" * 23, b"\x02" + b"\x00" * 21):
        with pytest.raises(ValueError):
            ti.child(bad, NOW)


valid_index = st.builds(
    lambda head, guid, kids: b"\x01" + head + guid + b"".join(kids),
    st.binary(min_size=5, max_size=5),
    st.binary(min_size=16, max_size=16),
    st.lists(st.binary(min_size=5, max_size=5), max_size=20),
)


@given(valid_index)
def test_encode_decode_round_trip(raw: bytes) -> None:
    value = ti.encode(raw)
    assert value.isascii()
    assert ti.decode(value) == raw
    assert ti.root_of(raw) == raw[:22]
    assert parse(raw).depth == (len(raw) - 22) // 5


@given(valid_index, st.integers(min_value=1, max_value=30))
def test_decode_tolerates_folding_and_missing_padding(raw: bytes, width: int) -> None:
    value = ti.encode(raw)
    chunks = [value[i : i + width] for i in range(0, len(value), width)]
    assert ti.decode("\r\n\t".join(chunks)) == raw
    assert ti.decode("  " + value + " \n") == raw
    assert ti.decode(value.rstrip("=")) == raw


@pytest.mark.parametrize("length", [0, 1, 5, 21, 23, 26, 28, 31, 100])
def test_decode_rejects_bad_lengths(length: int) -> None:
    raw = b"\x01" + bytes(max(0, length - 1))
    raw = raw[:length]
    assert ti.decode(base64.b64encode(raw).decode()) is None


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "not base64 at all!",
        "AQHaF0fGAAECAwQFBgcICQoLDA0ODw==garbage",
        "AQHaF0fGAAECAwQFBgcICQoLDA0OD",  # 29 chars: not a base64 length
        "AQHaF0fG*AECAwQFBgcICQoLDA0ODw==",
        "=AQHaF0fGAAECAwQFBgcICQoLDA0ODw=",
        "AQHaF0fGAAECAwQFBgcICQoLDA0ODw===",
        "\x00\x01",
        "AQHaF0fGAAECAwQFBgcICQoLDA0ODw==\udcff",
        "A" * (ti.MAX_ENCODED_CHARS + 4),
        # Blanks beyond what folding adds: not read (a hostile field's millions of words).
        ROOT_B64 + " " * 2 * ti.MAX_ENCODED_CHARS,
        ROOT_B64[:8] + "\xa0" + ROOT_B64[8:],  # no folding white space (RFC 5322 §3.2.2)
    ],
)
def test_decode_rejects_garbage(value: str) -> None:
    assert ti.decode(value) is None


def test_decode_rejects_wrong_reserved_byte() -> None:
    raw = b"\x02" + bytes(21)
    assert ti.decode(base64.b64encode(raw).decode()) is None


@given(st.text(max_size=80))
def test_decode_never_raises(value: str) -> None:
    out = ti.decode(value)
    assert out is None or ti.is_valid(out)


@pytest.mark.parametrize("guid", [bytes(16), b"\xff" * 16], ids=["nil", "max"])
def test_a_nil_or_max_guid_names_no_conversation(guid: bytes) -> None:
    """RFC 9562's Nil and Max UUIDs are generated for nothing: an index with one is a
    writer's constant (a template's), shared by all its mail, not a conversation."""
    value = ti.encode(ti.child(ti.new_root(NOW, guid), NOW + 60))
    assert ti.decode(value) is not None  # well-formed all the same
    assert ti.conversation_root(value) is None
    assert ti.conversation_root(ti.encode(ti.new_root(NOW, GUID))) == bytes.fromhex(ROOT_HEX)
    # Nothing else is: a GUID of one set byte names a conversation.
    assert ti.conversation_root(ti.encode(ti.new_root(NOW, bytes(15) + b"\x01"))) is not None


def test_first_root_reads_past_fields_that_name_none() -> None:
    root = ti.new_root(NOW, GUID)
    reply = ti.encode(ti.child(root, NOW + 60))
    nil = ti.encode(ti.new_root(NOW, bytes(16)))
    assert ti.first_root([]) is None
    assert ti.first_root(["garbage!", nil, reply]) == root
    other = ti.new_root(NOW, b"\x42" * 16)
    assert ti.first_root([ti.encode(other), reply]) == other  # the first that names one
    # A hostile mail's thousands of fields: the first MAX_FIELDS are read.
    assert ti.first_root(["x"] * (ti.MAX_FIELDS - 1) + [reply]) == root
    assert ti.first_root(["x"] * ti.MAX_FIELDS + [reply]) is None


def test_encode_and_root_of_reject_invalid() -> None:
    for fn in (ti.encode, ti.root_of, ti.header_filetime):
        with pytest.raises(ValueError):
            fn(b"\x01" * 24)


# Thread-Topic


@pytest.mark.parametrize(
    ("subject", "topic"),
    [
        ("Printer broken", "Printer broken"),
        ("RE: AW: Printer broken", "Printer broken"),
        ("Re: [users] Printer", "[users] Printer"),  # like Outlook: list tags stay
        ("=?utf-8?q?AW=3A_Printer?=", "Printer"),
        ("Re: Printer\r\n broken", "Printer broken"),
    ],
)
def test_thread_topic(subject: str, topic: str) -> None:
    assert ti.thread_topic(subject) == topic


def test_thread_topic_reencodes_non_ascii() -> None:
    topic = ti.thread_topic("=?utf-8?q?AW=3A_Bestellung_=C3=BCber_M=C3=BCnchen?=")
    assert topic.isascii()
    assert "\n" not in topic
    assert topic.startswith("=?utf-8?")
    from casethread.core.subject import decode_subject

    assert decode_subject(topic) == "Bestellung über München"


def test_thread_topic_keeps_raw_8bit_text() -> None:
    assert ti.thread_topic("AW: Bestellung über") == "Bestellung über"


@pytest.mark.parametrize("encoded", [False, True])
def test_thread_topic_of_a_huge_subject_is_cut_at_topic_max(encoded: bool) -> None:
    from casethread.core.subject import decode_subject

    text = "Drucker über " * 200_000  # ~2.6 MB on one line
    subject = (
        "Re: " + "".join(f"=?utf-8?B?{base64.b64encode(text[i:i + 40].encode()).decode()}?="
                         for i in range(0, 4000, 40))
        if encoded else f"Re: {text}"
    )
    topic = ti.thread_topic(subject)
    shown = decode_subject(topic)
    assert shown == text[: ti.TOPIC_MAX].rstrip()
    assert len(topic) < 2000  # encoded words included
