"""casethread.core.token: layout, signing, verification, aliases and scanning mail text."""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import pickle
import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from casethread.core.token import (
    ALPHABET,
    BAD_MAC,
    DEFAULT_TEMPLATE,
    MALFORMED,
    MAX_CASE_NUMBER,
    MAX_LENGTH,
    MIN_LENGTH,
    UNKNOWN_KEY,
    Keyring,
    anchor,
    check_template,
    find_tokens,
    find_tokens_at,
    is_token_shaped,
    last_token,
    normalise,
    subject_tag,
    tag_pattern,
    token_from_anchor,
)

SECRET_A = bytes(range(32))
SECRET_B = bytes(range(100, 132))
RING = Keyring([(1, SECRET_A)])
NUMBERS = st.integers(min_value=0, max_value=MAX_CASE_NUMBER)
# Characters a token can be damaged into: every printable ASCII character, plus some others.
REPLACEMENTS = st.sampled_from(sorted(set(string.printable) | set("ÄéßİıЅ\u00a0")))


def test_round_trip_for_chosen_numbers() -> None:
    for number in [0, 1, 31, 32, 1023, 1024, 123_456, 2**32, 2**40 + 7, 2**63, MAX_CASE_NUMBER]:
        token = RING.make(number)
        assert RING.verify(token) == number
        assert set(token) <= set(ALPHABET)
        assert MIN_LENGTH <= len(token) <= MAX_LENGTH


def test_layout_is_as_documented() -> None:
    token = RING.make(123_456)  # 123456 = 3*32**3 + 24*32**2 + 18*32 + 0 -> "3RJ0"
    assert token[0] == "1"  # key id 1
    assert token[1] == "4"  # four number symbols
    assert token[2:6] == "3RJ0"
    message = b"casethread-token-v1\x00" + bytes([1]) + (123_456).to_bytes(8, "big")
    mac = hmac.new(SECRET_A, message, hashlib.sha256).digest()[:10]
    bits = int.from_bytes(mac, "big")
    assert token[6:] == "".join(ALPHABET[(bits >> (5 * i)) & 31] for i in reversed(range(16)))
    assert len(token) == 22


@given(st.binary(min_size=16, max_size=200), st.integers(0, MAX_CASE_NUMBER))
def test_mac_is_hmac_sha256_for_any_key_length(secret: bytes, number: int) -> None:
    # The pads are hashed once per key (keys longer than SHA-256's block are hashed first).
    token = Keyring([(5, secret)]).make(number)
    message = b"casethread-token-v1\x00" + bytes([5]) + number.to_bytes(8, "big")
    bits = int.from_bytes(hmac.digest(secret, message, "sha256")[:10], "big")
    assert token[-16:] == "".join(ALPHABET[(bits >> (5 * i)) & 31] for i in reversed(range(16)))


def test_lengths() -> None:
    assert len(RING.make(0)) == MIN_LENGTH == 19
    assert len(RING.make(31)) == 19
    assert len(RING.make(32)) == 20
    assert len(RING.make(32_767)) == 21
    assert len(RING.make(32_768)) == 22
    assert len(RING.make(MAX_CASE_NUMBER)) == MAX_LENGTH == 31


def test_make_refuses_numbers_outside_the_range() -> None:
    with pytest.raises(ValueError):
        RING.make(-1)
    with pytest.raises(ValueError):
        RING.make(MAX_CASE_NUMBER + 1)
    with pytest.raises(TypeError):
        RING.make(True)


@given(NUMBERS)
def test_round_trip(number: int) -> None:
    token = RING.make(number)
    assert RING.verify(token) == number
    assert RING.verify(token.lower()) == number


@given(NUMBERS, st.data())
def test_any_one_character_change(number: int, data: st.DataObject) -> None:
    token = RING.make(number)
    position = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(REPLACEMENTS)
    assume(replacement != token[position])
    changed = token[:position] + replacement + token[position + 1 :]
    if normalise(replacement) == token[position]:
        # Lower case or a Crockford alias (O->0, I/L->1) of the same symbol.
        assert RING.verify(changed) == number
    else:
        assert RING.verify(changed) is None


def test_aliases_decode_to_the_same_symbol() -> None:
    number = next(n for n in itertools.count(1000) if "0" in (t := RING.make(n)) and "1" in t)
    token = RING.make(number)
    assert RING.verify(token.replace("0", "O").replace("1", "I")) == number
    assert RING.verify(token.replace("0", "o").replace("1", "l")) == number
    assert RING.verify(token.replace("1", "L").lower()) == number
    assert RING.verify(token.replace("0", "U")) is None  # U is not a symbol


@given(NUMBERS, st.data())
def test_deleting_or_inserting_a_character_fails(number: int, data: st.DataObject) -> None:
    token = RING.make(number)
    position = data.draw(st.integers(0, len(token)))
    inserted = data.draw(st.sampled_from(ALPHABET))
    assert RING.verify(token[:position] + inserted + token[position:]) is None
    if position < len(token):
        assert RING.verify(token[:position] + token[position + 1 :]) is None


@given(NUMBERS)
def test_truncated_fails(number: int) -> None:
    token = RING.make(number)
    for cut in range(len(token)):
        assert RING.verify(token[:cut]) is None


@given(NUMBERS)
def test_a_wrong_key_fails(number: int) -> None:
    token = RING.make(number)
    other = Keyring([(1, SECRET_B)])  # same id, different secret
    assert other.verify(token) is None


def test_rotation_first_key_signs_all_verify() -> None:
    old = Keyring([(1, SECRET_A)])
    rotated = Keyring([(2, SECRET_B), (1, SECRET_A)])
    old_token = old.make(42)
    new_token = rotated.make(42)
    assert new_token[0] == "2" and old_token[0] == "1"
    assert rotated.verify(old_token) == 42
    assert rotated.verify(new_token) == 42
    assert old.verify(new_token) is None  # key 2 is unknown to the old ring
    assert rotated.signing_key_id == 2
    assert rotated.key_ids == (2, 1)


def test_a_retired_key_id_fails() -> None:
    token = Keyring([(1, SECRET_A)]).make(7)
    retired = Keyring([(2, SECRET_B)])
    assert retired.verify(token) is None
    result = retired.resolve(find_tokens(f"Re: help [ref:{token}]"))
    assert result.failures == (UNKNOWN_KEY,) and result.case_number is None


def test_relabelled_key_id_fails() -> None:
    # The key id is under the MAC: a token moved to another id of the same ring fails.
    ring = Keyring([(1, SECRET_A), (2, SECRET_A)])
    token = ring.make(99)
    assert ring.verify("2" + token[1:]) is None


def test_non_canonical_number_fails() -> None:
    token = RING.make(5)  # "1" "1" "5" MAC
    padded = token[0] + "2" + "0" + token[2:]  # 05 instead of 5: one number, one spelling
    assert RING.judge(padded) == MALFORMED  # not a bad MAC: no token's structure
    assert RING.verify(padded) is None


def test_keyring_validation() -> None:
    with pytest.raises(ValueError):
        Keyring([])
    with pytest.raises(ValueError):
        Keyring([(32, SECRET_A)])
    with pytest.raises(ValueError):
        Keyring([(1, SECRET_A), (1, SECRET_B)])
    with pytest.raises(ValueError) as info:
        Keyring([(1, b"short")])
    assert "short" not in str(info.value)


def test_secrets_never_in_repr_str_or_copies() -> None:
    ring = Keyring([(3, SECRET_A), (4, SECRET_B)])
    for text in (repr(ring), str(ring), f"{ring}", f"{ring!r}"):
        assert "3, 4" in text
        for secret in (SECRET_A, SECRET_B):
            assert secret.hex() not in text
            assert repr(secret)[2:-1] not in text
    with pytest.raises(TypeError):
        pickle.dumps(ring)
    with pytest.raises(TypeError):
        copy.copy(ring)


def test_verify_rejects_junk() -> None:
    for junk in ["", "x", "[ref:]", "0" * 18, "Z" * 31, "1" * 40, "1D" + "0" * 16 + "é"]:
        assert RING.verify(junk) is None


# --- Templates, anchors --------------------------------------------------------------------


def test_subject_tag() -> None:
    token = RING.make(12)
    assert subject_tag(token) == f" [ref:{token}]"
    assert subject_tag(token, " (Case ref {token})") == f" (Case ref {token})"
    for bad in ["[ref:]", "{token}", "[ref:{token}", "{token}]", "[{token}{token}]", "[{token}x]"]:
        with pytest.raises(ValueError):
            check_template(bad)


def test_anchor_round_trip() -> None:
    token = RING.make(2**32)
    msgid = anchor(token, "example.com")
    assert msgid == f"<{token}.case@example.com>"
    assert token_from_anchor(msgid) == token
    assert token_from_anchor(msgid.strip("<>")) == token
    assert token_from_anchor(f"<{token.lower()}.CASE@Example.COM>") == token
    assert RING.verify(token_from_anchor(msgid) or "") == 2**32
    for other in ["<abc@example.com>", f"<{token}@example.com>", f"<{token}.case>", "", "<>"]:
        assert token_from_anchor(other) is None
    with pytest.raises(ValueError):
        anchor(token, "bad domain")
    with pytest.raises(ValueError):
        anchor("short", "example.com")


# --- Scanning ------------------------------------------------------------------------------


def test_finds_the_first_valid_token_from_the_top() -> None:
    first, second = RING.make(10), RING.make(20)
    forged = first[:-1] + ("0" if first[-1] != "0" else "1")
    text = f"Hello [ref:{forged}]\nsee [ref:{first}] and [ref:{second}]"
    assert list(find_tokens(text)) == [forged, first, second]
    result = RING.resolve(find_tokens(text))
    assert result.case_number == 10 and result.token == first
    assert result.failures == (BAD_MAC,)


def test_scanning_tolerates_case_spaces_and_quoted_line_breaks() -> None:
    token = RING.make(777_777)
    head, tail = token[:9], token[9:]
    texts = [
        f"Re: Printer broken [REF:{token.lower()}]",
        f"Re: x [Ref: {token} ]",
        f"> see [ref:{head}\n> {tail}]",
        f"> see [ref:{head}\r\n>> {tail}]",
        f"> see [ref:{head}\n> > {tail}\n> ]",
        f"[ref:\n{token}]",
        f"[ref:{head} {tail}]",
        f"Subject: Re: help\r\n [ref:{head}\r\n {tail}]",  # a folded header
        # HTML mail's blanks: no-break spaces (&nbsp;), a zero-width break inside a long word.
        f"[ref:\u00a0{head}\u200b{tail}\u00a0]",
        f">\u00a0see [ref:{head}\n>\u00a0{tail}]",
        f"[ref:{head}\u202f{tail}\ufeff]",
        f"[ref:{head}\u00ad{tail}]", f"[ref:{head}\u200d{tail[:3]}\u2060{tail[3:]}\u200c]",
    ]
    for text in texts:
        assert list(find_tokens(text)) == [token], text
        assert RING.resolve(find_tokens(text)).case_number == 777_777


def test_scanning_tolerates_line_breaks_inside_the_opening_literal() -> None:
    """Clients wrap "[ref:" as they wrap the token: Apple Mail's format=flowed delsp=yes
    breaks a word with a blank before the line break, quoted lines start with ">"."""
    token = RING.make(777_777)
    texts = [
        f"> could you tell us the model? Dana [re \r\n> f:{token}]",  # Apple Mail, delsp=yes
        f"> could you tell us the model? Dana [ \r\n> ref:{token}]",
        f"See our guide. Dana [ref\r\n:{token}]",  # a hard wrap, unquoted
        f"ana [\r\n> ref:{token}]",
        f"> > Dana [r\n> >  e\u00a0f\n> > :{token[:5]}\n> > {token[5:]}]",
    ]
    for text in texts:
        assert list(find_tokens(text)) == [token], text
    # Only blanks and line breaks with their quote marks: other text still breaks the literal.
    for text in (f"[re-f:{token}]", f"[re > f:{token}]", f"[re\nx> f:{token}]"):
        assert list(find_tokens(text)) == [], text


def full_width(text: str) -> str:
    """`text` as a CJK input method in full-width mode writes it (U+FF01-U+FF5E)."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


# The brackets CJK input methods write for `[` and `]` in their punctuation mode: Chinese
# (Microsoft Pinyin, Sogou) `【】`, Japanese (MS-IME, in kana mode) `「」`, and `〔〕` among a
# Japanese one's conversions of them.
IME_BRACKETS = [("【", "】"), ("「", "」"), ("〔", "〕")]


def test_scanning_reads_full_width_forms_as_ascii() -> None:
    """A Japanese or Chinese input method in full-width mode writes the brackets, the colon
    (and letters and digits) of a retyped tag as U+FF01-U+FF5E, which NFKC maps to ASCII,
    and a blank as the ideographic space: `［ref：TOKEN］` read as nothing, and the reply
    opened a new case. So did the brackets one writes in its punctuation mode (`IME_BRACKETS`;
    Chinese writers call `【】` the full-width square brackets), which NFKC keeps."""
    token = RING.make(777_777)
    head, tail = token[:9], token[9:]
    texts = [
        f"Re: x {full_width('[')}ref{full_width(':')}{token}{full_width(']')}",
        f"Re: x [ref{full_width(':')}{token}]",
        f"Re: x {full_width('[')}ref:{token}{full_width(']')}",
        f"Re: x {full_width(f'[ref:{token}]')}",  # every character
        f"> {full_width('[ref:')}\u3000{head}\n> {tail}{full_width(']')}",
        f"> {full_width(f'[REF:{head}')}\u3000{tail}]",
        f"> [ref:\u3000{head}\u3000{tail}\u3000]",
        f"> ［ｒｅ\n> ｆ：{head}\n> {full_width(tail)}］",
    ]
    for opening, closing in IME_BRACKETS:
        texts += [f"Re: x {opening}ref：{token}{closing}", f"Re: x {opening}ref:{token}]",
                  f"Re: x [ref:{token}{closing}",
                  f"> {opening}REF：\u3000{head}\n> {tail}{closing}",
                  f"見積もり{opening}ref:{token}{closing}について"]
    for text in texts:
        assert list(find_tokens(text)) == [token], text
        assert last_token(text) == token, text
        assert RING.resolve(find_tokens(text)).case_number == 777_777
    # The positions are the text's own: one code point for one.
    for opening in ("［", *(opening for opening, _ in IME_BRACKETS)):
        assert list(find_tokens_at(f"ab {opening}ref:{token}]")) == [(3, token)]
    # Our tag in any of these forms is what outbound removes or replaces.
    for text in (texts[3], *texts[8::5]):  # every character, and each bracket's first
        assert tag_pattern(DEFAULT_TEMPLATE).sub("", text) == "Re: x", text
    subject = f"Re: 印刷 ［ｒｅｆ：{full_width(token)}］ more"
    assert tag_pattern(DEFAULT_TEMPLATE).sub("", subject) == "Re: 印刷 more"
    # Other characters still break the bracket; other look-alike brackets are no literal,
    # and a full-width hyphen still breaks the token. The brackets alone, as Japanese text
    # quotes with them, hold no token.
    for text in (f"{full_width('[')}ref{full_width(';')}{token}]", f"〈ref:{token}〉",
                 f"[ref:{head}－{tail}]", f"『ref：{token}』", f"（ref：{token}）",
                 f"「ref」と「{token}」"):
        assert list(find_tokens(text)) == [], text


def test_a_template_with_angle_brackets_reads_a_chinese_input_methods() -> None:
    """A Chinese input method writes `《` `》` for `<` `>`."""
    token = RING.make(5)
    template = " <ref:{token}>"
    assert list(find_tokens(f"Re: x 《ref：{token}》", template)) == [token]
    assert list(find_tokens(f"Re: x 【ref：{token}】", template)) == []


def test_scanning_with_a_custom_template() -> None:
    token = RING.make(5)
    template = " (Case ref {token})"
    assert list(find_tokens(f"Re: x (case  REF {token})", template)) == [token]
    assert list(find_tokens(f"Re: x [ref:{token}]", template)) == []
    # The literal is what the template says: its breaks are tolerated as "[ref:"'s are, and
    # where it has a blank, some separator must be there.
    assert list(find_tokens(f"> (Ca \r\n> se\r\n> ref {token})", template)) == [token]
    assert list(find_tokens(f"(case\n> ref {token})", template)) == [token]
    assert list(find_tokens(f"(caseref {token})", template)) == []


def test_judge_says_why_a_token_fails() -> None:
    token = RING.make(42)
    rotated = Keyring([(2, SECRET_B), (1, SECRET_A)])
    retired = Keyring([(2, SECRET_B)])  # key 1 removed from tokens.keys
    lost = Keyring([(1, SECRET_B)])  # a new key under the lost key's id
    assert RING.judge(token) == rotated.judge(token.lower()) == 42
    assert retired.judge(token) == UNKNOWN_KEY
    assert lost.judge(token) == BAD_MAC
    small = RING.make(7)  # one case-number symbol: claiming two breaks its length
    assert RING.judge(small[:1] + "2" + small[2:]) == MALFORMED
    assert retired.verify(token) is None and lost.verify(token) is None
    result = retired.resolve([token, lost.make(7), retired.make(9)])
    assert (result.case_number, result.failures) == (9, (UNKNOWN_KEY, UNKNOWN_KEY))
    assert RING.resolve(["1D" + "U" * 17, "not a token"]).failures == (MALFORMED,)


def test_no_token_is_told_apart_from_an_invalid_one() -> None:
    nothing = RING.resolve(find_tokens("Re: hello [ref:abc] [ref:] [see: x]"))
    assert nothing.failures == () and nothing.case_number is None
    forged = RING.resolve(find_tokens("Re: [ref:1D" + "U" * 17 + "]"))  # token-shaped, bad
    assert forged.failures == (MALFORMED,) and forged.case_number is None
    assert is_token_shaped("1D" + "U" * 17)
    assert not is_token_shaped("abc")
    anchors = [token_from_anchor("<" + "2" * 20 + ".case@x.org>")]
    assert RING.resolve(t for t in anchors if t).failures == (UNKNOWN_KEY,)


def test_no_match_when_bracket_holds_other_characters() -> None:
    token = RING.make(3)
    for text in [f"[ref:{token}", f"[ref:{token}x]", f"[ref:{token}-]", f"[ref:<{token}>]"]:
        assert RING.resolve(find_tokens(text)).case_number is None, text


def test_resolve_stops_at_the_limit() -> None:
    token = RING.make(8)
    text = "[ref:" + "2" * 20 + "] " + f"[ref:{token}]"
    assert RING.resolve(find_tokens(text), limit=1).case_number is None
    assert RING.resolve(find_tokens(text), limit=2).case_number == 8


ADVERSARIAL = [
    "[ref:" * 200_000,
    "[ref:" + "A" * 1_000_000,
    "[ref:" + "A " * 500_000,
    "[ref:" + "\n> " * 330_000,
    "[" * 1_000_000,
    ("[ref:" + "1" * 30 + "\n>") * 28_000,
    ("[ref:" + "2" * 20 + "]") * 38_000,
    "\n" * 1_000_000,
    "> " * 500_000,
    "［ｒｅｆ：" * 200_000,
    "［ref:" + "Ａ" * 1_000_000,
    "［ref:" + "\u3000" * 1_000_000,
    "【ｒｅｆ：" * 200_000,
    "「ref:" + "Ａ" * 1_000_000,
    "「" * 1_000_000,
]


@pytest.mark.parametrize("junk", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_megabyte(junk: str) -> None:
    token = RING.make(4242)
    text = junk + f" [ref:{token}]"
    assert len(junk) >= 900_000
    found = RING.resolve(find_tokens(text), limit=10**6)
    assert found.case_number == 4242
    # A scan that looks at every candidate still ends, and finds the genuine one last.
    assert list(find_tokens(text))[-1] == token


def test_a_pipe_quote_prefix_inside_a_wrapped_token() -> None:
    """"| " is a quote prefix as "> " is (mangling audit), also inside the opening literal;
    but never the template's own closing literal: "|ref:...|" ends at a "|" on the next line."""
    token = RING.make(777_777)
    head, tail = token[:9], token[9:]
    for text in (f"| see [ref:{head}\n| {tail}]", f"| | [ref:{head}\r\n| | {tail}]",
                 f"| [re\n| f:{token}]"):
        assert list(find_tokens(text)) == [token], text
        assert last_token(text) == token, text
    assert list(find_tokens(f"|ref:{token}\n|", " |ref:{token}|")) == [token]


def test_a_template_closing_with_a_quote_mark_keeps_its_wrapped_quoted_tokens() -> None:
    """Review: with "|" read as a quote mark, the closing literal's first character stopped
    being skipped after a line break; for a template closing with ">" ("<ref:{token}>") a
    token wrapped in a ">"-quoted reply ("> <ref:HEAD" / "> TAIL>") was no longer read, as it
    was before. A closing "|" still ends the token."""
    token = RING.make(777_777)
    head, tail = token[:9], token[9:]
    for template in ("<ref:{token}>", " ref:{token}>"):
        before, after = template.strip().split("{token}")
        for text in (f"{before}{head}\n> {tail}{after}",
                     f"> {before}{head}\r\n> > {tail}{after}"):
            assert list(find_tokens(text, template)) == [token], (template, text)
            assert last_token(text, template) == token, (template, text)
    assert list(find_tokens(f"|ref:{token}\n|", " |ref:{token}|")) == [token]
