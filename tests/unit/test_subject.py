"""Reply/forward prefixes, list tags and the subject normal form (core.subject)."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from casethread.core.message import unfold
from casethread.core.subject import (
    ENCODED_WORD,
    decode_subject,
    normalise,
    strip_prefixes,
)
from casethread.core.token import DEFAULT_TEMPLATE, tag_pattern

# Our tag as the engine removes it from a subject it compares (the default template).
OUR_TAG = tag_pattern(DEFAULT_TEMPLATE)
TOKEN = "1D7K2M9QX4RT8VB3ZPQ"  # token-shaped (a token's length); tags need no valid MAC

# One case per language form: (subject, expected after stripping).
LANGUAGE_FORMS = [
    ("Re: Printer broken", "Printer broken"),
    ("RE: Printer broken", "Printer broken"),
    ("re: Printer broken", "Printer broken"),
    ("Re[2]: Printer broken", "Printer broken"),
    ("Re(2): Printer broken", "Printer broken"),
    ("Re[12] : Printer broken", "Printer broken"),
    ("Fwd: Printer broken", "Printer broken"),
    ("Fw: Printer broken", "Printer broken"),
    ("FW: Printer broken", "Printer broken"),
    ("FWD: Printer broken", "Printer broken"),
    ("AW: Drucker defekt", "Drucker defekt"),
    ("WG: Drucker defekt", "Drucker defekt"),
    ("SV: Skrivare trasig", "Skrivare trasig"),
    ("VS: Skriver i stykker", "Skriver i stykker"),
    ("VB: Skrivare trasig", "Skrivare trasig"),
    ("VL: Tulostin rikki", "Tulostin rikki"),
    ("Antw: Printer kapot", "Printer kapot"),
    ("Doorst: Printer kapot", "Printer kapot"),
    ("RIF: Stampante rotta", "Stampante rotta"),
    ("I: Stampante rotta", "Stampante rotta"),
    ("R: Stampante rotta", "Stampante rotta"),
    ("TR: Imprimante en panne", "Imprimante en panne"),
    ("TR : Imprimante en panne", "Imprimante en panne"),
    ("RE : Imprimante en panne", "Imprimante en panne"),
    ("Réf.: Imprimante en panne", "Imprimante en panne"),
    ("Réf. : Imprimante en panne", "Imprimante en panne"),
    ("RV: Impresora rota", "Impresora rota"),
    ("RES: Impressora quebrada", "Impressora quebrada"),
    ("ENC: Impressora quebrada", "Impressora quebrada"),
    ("ΑΠ: Εκτυπωτής", "Εκτυπωτής"),
    ("απ: Εκτυπωτής", "Εκτυπωτής"),
    ("ΣΧΕΤ: Εκτυπωτής", "Εκτυπωτής"),
    ("ΠΡΘ: Εκτυπωτής", "Εκτυπωτής"),
    ("תגובה: מדפסת", "מדפסת"),
    ("השב: מדפסת", "מדפסת"),
    ("העבר: מדפסת", "מדפסת"),
    ("回复: 打印机坏了", "打印机坏了"),
    ("回复：打印机坏了", "打印机坏了"),
    ("回覆: 印表機壞了", "印表機壞了"),
    ("转发: 打印机坏了", "打印机坏了"),
    ("答复: 打印机坏了", "打印机坏了"),
    ("轉寄: 印表機壞了", "印表機壞了"),
    ("회신: 프린터", "프린터"),
    ("전달: 프린터", "프린터"),
    ("Ynt: Yazıcı bozuk", "Yazıcı bozuk"),
    ("YNT: Yazıcı bozuk", "Yazıcı bozuk"),
    ("İLT: Yazıcı bozuk", "Yazıcı bozuk"),
    ("Odp: Drukarka", "Drukarka"),
    ("PD: Drukarka", "Drukarka"),
    ("PŘ: Tiskárna", "Tiskárna"),
    ("Odg: Tiskalnik", "Tiskalnik"),
    ("Vá: Nyomtató", "Nyomtató"),
    ("VÁ: Nyomtató", "Nyomtató"),
    ("Továbbítás: Nyomtató", "Nyomtató"),
    ("Ang: Printeris", "Printeris"),
    ("Atb: Printeris", "Printeris"),
    ("ATB: Argraffydd", "Argraffydd"),
    ("Отв: Принтер", "Принтер"),
    ("Ответ: Принтер", "Принтер"),
    ("ОТВЕТ: Принтер", "Принтер"),
    ("返信: プリンター", "プリンター"),
    ("転送：プリンター", "プリンター"),
    ("답장: 프린터", "프린터"),
    ("Ｒｅ：プリンター", "プリンター"),
    ("ＦＷ：プリンター", "プリンター"),
    ("תשובה: מדפסת", "מדפסת"),
    ("הועבר: מדפסת", "מדפסת"),
    ("رد: طابعة", "طابعة"),
    ("إعادة توجيه: طابعة", "طابعة"),
    ("اعادة توجيه: طابعة", "طابعة"),
    ("Trả lời: Máy in", "Máy in"),
    ("TRẢ LỜI: Máy in", "Máy in"),
    ("Chuyển tiếp: Máy in", "Máy in"),
    ("Balas: Printer", "Printer"),
    ("BLS: Printer", "Printer"),
    ("Teruskan: Printer", "Printer"),
    ("TRS: Printer", "Printer"),
    ("ตอบกลับ: เครื่องพิมพ์", "เครื่องพิมพ์"),
    ("ส่งต่อ: เครื่องพิมพ์", "เครื่องพิมพ์"),
    ("Re［2］：プリンター", "プリンター"),
    ("Ｒｅ［２］：プリンター", "プリンター"),
    ("Re（3）: プリンター", "プリンター"),
    # Hebrew and Arabic text's bidirectional controls around a prefix
    ("\u200fהשב: \u200fמדפסת", "מדפסת"),
    ("\u202bRE: \u202bرد:\u200f طابعة", "طابعة"),
    ("\u2067Re:\u2069 מדפסת", "מדפסת"),
    ("Re:Printer broken", "Printer broken"),
    ("Re：Printer broken", "Printer broken"),
    ("   Re:   Printer broken  ", "Printer broken"),
]


@pytest.mark.parametrize(("subject", "expected"), LANGUAGE_FORMS)
def test_each_language_form_is_stripped(subject: str, expected: str) -> None:
    assert strip_prefixes(subject) == expected


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Re: Re: Re: Printer", "Printer"),
        ("RE: AW: WG: Fwd: Printer", "Printer"),
        ("Re: FW: R: I: TR: SV: VS: Printer", "Printer"),
        ("Re[2]: Re(3): ΑΠ: 回复：Printer", "Printer"),
        ("Re:Re:Fwd:Printer", "Printer"),
    ],
)
def test_repeated_and_mixed_prefixes_are_stripped(subject: str, expected: str) -> None:
    assert strip_prefixes(subject) == expected


@pytest.mark.parametrize(
    "subject",
    [
        "Re-installation needed",
        "Ref: 12",
        "Recall",
        "Request: new laptop",
        "Fwding rules",
        "Re 5 apples",
        "Invoice: March",
        "Balasan: terima kasih",
        "Trs123: x",
        "Rediff: x",
        "I need help",
        "Aware: a",
        "Reply needed",
        "Printer: Re: broken",
        "[Ticket#123] Printer",
        "[Case C-000123] Printer",
        "[PATCH 1/2] Printer",
        "[ref:ABCD1234] Printer",
        "[123] Printer",
    ],
)
def test_things_that_must_not_be_stripped(subject: str) -> None:
    assert strip_prefixes(subject) == subject


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("[users] Printer", "Printer"),
        ("[python-dev] Printer", "Printer"),
        ("[EXTERNAL] RE: Printer", "Printer"),
        ("Re: [users] Printer", "Printer"),
        ("[users] Re: [users] Re: Printer", "Printer"),
        ("Printer [users]", "Printer [users]"),
        ("Printer: [users] x", "Printer: [users] x"),
        # A non-list tag ends the leading run: what follows it is kept.
        ("[Ticket#12] Re: Printer", "[Ticket#12] Re: Printer"),
        ("Re: [Case C-1] Printer", "[Case C-1] Printer"),
        # Spam filters' default tags (Amavis, SpamAssassin, MailScanner), in that run only.
        ("***SPAM*** Re: Printer", "Printer"),
        ("RE: *** SPAM *** [EXTERNAL] Printer", "Printer"),
        ("*****SPAM***** Printer", "Printer"),
        ("{Spam?} Printer", "Printer"),
        ("Printer ***SPAM***", "Printer ***SPAM***"),
        ("**** Important **** Printer", "**** Important **** Printer"),
        ("**SPAM Printer", "**SPAM Printer"),
    ],
)
def test_list_tags_only_in_the_leading_run(subject: str, expected: str) -> None:
    assert strip_prefixes(subject) == expected


def test_list_tags_can_be_kept() -> None:
    assert strip_prefixes("Re: [users] Printer", list_tags=False) == "[users] Printer"


def test_folded_subject_is_unfolded() -> None:
    assert strip_prefixes("Re: AW:\r\n Printer\n\tbroken") == "Printer\tbroken"


def test_inner_text_and_case_are_kept() -> None:
    assert strip_prefixes("RE: Printer  BROKEN: Re: x") == "Printer  BROKEN: Re: x"


def test_only_prefixes_leaves_empty() -> None:
    assert strip_prefixes("Re: Fwd:") == ""
    assert strip_prefixes("") == ""


def test_hostile_input_is_bounded() -> None:
    # Far more prefixes than the bound: stripping stops, and quickly.
    text = "Re: " * 10_000 + "x"
    out = strip_prefixes(text)
    assert out.endswith("x")
    assert len(out) < len(text)


# normalise


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Re: Printer   Broken", "printer broken"),
        ("=?utf-8?q?AW=3A_Bestellung_=C3=BCber_M=C3=BCnchen?=", "bestellung über münchen"),
        ("Re: =?iso-8859-1?q?Caf=E9?= menu", "café menu"),
        ("=?UTF-8?B?5Zue5aSN77ya5omT5Y2w5py6?=", "打印机"),  # "回复：打印机"
        ("Re: STRASSE", "strasse"),
        ("Re: Straße", "strasse"),  # casefold, not lower
        ("RE:\r\n AW: Folded\r\n\tsubject", "folded subject"),
        # What a reply's charset or client changes but a reader does not see (NFKC): the
        # half-width katakana ISO-2022-JP cannot carry, written full width; windows-1258's
        # tone marks apart; full-width letters; Hebrew and Arabic text's marks.
        ("Re: ﾌﾟﾘﾝﾀｰ故障", "プリンター故障"),
        ("=?ISO-2022-JP?B?GyRCJVclaiVzJT8hPDhOPmMbKEI=?=", "プリンター故障"),
        ("TL: Lô\u0303i ma\u0301y in", "tl: lỗi máy in"),
        ("Trả lời: Lô\u0303i ma\u0301y in", "lỗi máy in"),
        ("Tra\u0309 lơ\u0300i: Lô\u0303i ma\u0301y in", "lỗi máy in"),
        ("Va\u0301: Nyomtato\u0301", "nyomtató"),  # decomposed, as macOS types it
        ("ＦＷ：Ｐｒｉｎｔｅｒ", "printer"),
        ("\u202bהשב: \u200fתקלה\u200f במדפסת\u202c", "תקלה במדפסת"),
    ],
)
def test_normalise(subject: str, expected: str) -> None:
    assert normalise(subject) == expected


def test_normalise_removes_the_token_tag_anywhere() -> None:
    assert normalise(f"Re: Printer broken [ref:{TOKEN}]", OUR_TAG) == "printer broken"
    assert normalise(f"[ref:{TOKEN}] Re: Printer broken", OUR_TAG) == "printer broken"
    assert normalise(f"Printer [REF: {TOKEN} ] broken", OUR_TAG) == "printer broken"
    # Without the regex the tag stays.
    assert normalise(f"Re: Printer [ref:{TOKEN}]") == f"printer [ref:{TOKEN.lower()}]"


def test_normalise_accepts_a_pattern_string() -> None:
    assert normalise("Re: Printer {CASE-9}", r"\{CASE-\d+\}") == "printer"
    assert normalise("Re: Printer {case-9}", re.compile(r"\{CASE-\d+\}", re.I)) == "printer"


def test_same_thread_normalises_equal() -> None:
    original = f"Printer broken [ref:{TOKEN}]"
    replies = [
        f"Re: Printer broken [ref:{TOKEN}]",
        f"AW: WG: printer   broken [ref:{TOKEN}]",
        f"=?utf-8?q?Re=3A_Printer_broken?= [ref:{TOKEN}]",
    ]
    want = normalise(original, OUR_TAG)
    assert want == "printer broken"
    assert all(normalise(r, OUR_TAG) == want for r in replies)
    assert normalise("Re: Printer fixed", OUR_TAG) != want


@pytest.mark.parametrize(
    "subject",
    [
        "=?bogus-charset?q?abc?= Re: x",
        "=?utf-8?B?!!!?=",
        "=?utf-8?q?unterminated",
        "=?=?=?",
        "Re: \udcff\udcfe raw bytes",
        "\ud800 lone surrogate",
        "\x00\x01 control",
    ],
)
def test_normalise_never_fails_on_garbage(subject: str) -> None:
    out = normalise(subject, OUR_TAG)
    assert isinstance(out, str)
    out.encode("utf-8")  # no surrogates left: safe to log and to store


def test_decode_subject_keeps_undecodable_text() -> None:
    assert decode_subject("=?bogus-charset?q?abc?=") == "=?bogus-charset?q?abc?="
    assert decode_subject("plain") == "plain"
    assert decode_subject("Re: caf\udcc3\udca9") == "Re: café"  # UTF-8 bytes via surrogateescape
    assert decode_subject("x \udcff") == "x \ufffd"


def test_decode_subject_reads_an_encoded_word_with_a_language() -> None:
    """RFC 2231 section 5 lets an encoded word name its language after the charset."""
    assert decode_subject("=?UTF-8*en?Q?Re=3A_x_=5Bref=3AABC=5D?=") == "Re: x [ref:ABC]"
    assert decode_subject("=?iso-8859-1*de-DE?q?Gr=FC=DFe?= a*b") == "Grüße a*b"
    assert decode_subject("a*b =?utf-8?q?x?=") == "a*b x"


@given(st.text(max_size=200))
def test_normalise_is_total_and_idempotent(text: str) -> None:
    once = normalise(text)
    assert once == once.strip()
    assert "  " not in once
    # RFC 2047 decoding of the output could change it again; otherwise idempotent.
    if "=?" not in once:
        assert normalise(once) == once


@given(st.text(max_size=200))
def test_strip_prefixes_returns_a_suffix(text: str) -> None:
    out = strip_prefixes(text)
    assert out.strip() == out
    assert out == "" or unfold(text).rstrip().endswith(out)


def test_raw_utf8_beside_an_encoded_word_is_decoded() -> None:
    """An SMTPUTF8 client's Subject: an encoded word and raw UTF-8 side by side. The stdlib's
    make_header refused it, so the Subject stayed undecoded and Thread-Topic re-encoded the
    literal `=?utf-8?...` text."""
    assert decode_subject("Re: =?utf-8?q?Gr=C3=BC=C3=9Fe?= aus Köln") == "Re: Grüße aus Köln"
    assert decode_subject("=?x-unknown?q?a?= Köln") == "=?x-unknown?q?a?= Köln"  # as it was
    # The rest is kept as written: a backslash is no escape.
    assert decode_subject("=?utf-8?q?Gr=C3=BC=C3=9Fe?= C:\\u0041 Köln") == "Grüße C:\\u0041 Köln"
    assert decode_subject("Köln =?utf-8?q?a?= =?utf-8?q?b?=  c") == "Köln ab  c"
    # A character split over two words, beside raw UTF-8; bytes its charset cannot decode.
    assert decode_subject("=?utf-8?b?ww==?==?utf-8?b?vA==?= Köln") == "ü Köln"
    assert decode_subject("Köln =?utf-8?q?R=E9sum=E9?=") == "Köln R\ufffdsum\ufffd"


def test_a_word_that_cannot_be_decoded_stays_as_written_beside_the_others() -> None:
    """RFC 2047 §6: each word on its own. One bad word left the whole Subject undecoded."""
    broken = "=?utf-8?b?Zm9vY?="  # base64 one character short
    words = f"=?utf-8?q?Gr=C3=BC=C3=9Fe?= {broken} =?utf-8?q?K=C3=B6ln?="
    assert decode_subject(words) == f"Grüße {broken} Köln"
    assert decode_subject("=?x-unknown?q?a?= =?x-unknown?q?b?==?utf-8?q?c?=") == (
        "=?x-unknown?q?a?= =?x-unknown?q?b?=c")


def test_a_word_with_a_raw_question_mark_or_blanks_is_read_up_to_the_first_close() -> None:
    """PHP's `'=?UTF-8?Q?'.quoted_printable_encode($s).'?='` leaves `?` and blanks raw; the
    stdlib decoder read such words up to the first `?=`, and so does this one."""
    assert decode_subject("=?UTF-8?Q?Hello World?=") == "Hello World"
    assert decode_subject("=?utf-8?Q?Is_it_ok??=") == "Is it ok?"
    assert decode_subject("=?utf-8?Q?=C2=BFQu=C3=A9 tal??= [ref:X]") == "¿Qué tal? [ref:X]"
    assert decode_subject("=?utf-8?q?x??= =?utf-8?q?y?=") == "x?y"
    assert decode_subject("=?utf-8?B?SGVs bG8?=") == "Hello"  # the blank skews no padding
    assert normalise("Re: =?UTF-8?Q?Is it ok??=") == "is it ok?"


def test_an_unclosed_word_never_runs_into_the_next_one() -> None:
    assert decode_subject("=?utf-8?q?a b =?utf-8?q?c?=") == "=?utf-8?q?a b c"
    assert decode_subject("=?utf-8?q?a?==?utf-8?q?b?=") == "ab"
    assert decode_subject("=?utf-8?b?YQ==?= =?utf-8?q?100=?=") == "a100"


def test_the_encoded_word_pattern_is_linear_on_unclosed_words_holding_question_marks() -> None:
    """Each unclosed word stops at the next `=?`: a pattern reading lazily up to any later
    `?=` scanned the rest of the Subject from each word (quadratic: 1.7 s for this one)."""
    hostile = "=?utf-8?q?a? b" * 5_000
    started = time.process_time()
    found = re.findall(ENCODED_WORD, hostile)
    assert time.process_time() - started < 0.5
    assert found == []
    assert re.findall(ENCODED_WORD, hostile + "?=") == [("utf-8", "q", "a? b")]  # the last
