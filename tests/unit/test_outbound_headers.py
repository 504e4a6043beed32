"""The header fields outbound mail leaves with: valid by RFC 5322 / 2047 / 5256 and MS-OXOMSG,
and nothing of the agent's text lost. Each case was found writing agent mail by hand."""

from __future__ import annotations

import base64
import re
import time
from typing import Any

import pytest

from casethread.core import msgid, thread_index, token
from casethread.core.message import unfold
from casethread.core.subject import decode_subject
from casethread.engine import Engine

AGENT = ("From", "Dana Agent <dana@support.example.com>")
TO_CUSTOMER = ("To", "Pat Customer <pat@customer.example.org>")
ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[QqBb]\?[^?\s]*\?=")


def lines_of(name: str, value: str) -> list[str]:
    return f"{name}: {value}".split("\n")


def assert_rfc2047_lines(name: str, value: str) -> None:
    """RFC 2047 §2: an encoded word is at most 75 characters, a line holding one at most 76."""
    for line in lines_of(name, value):
        words = ENCODED_WORD.findall(line)
        assert all(len(w) <= 75 for w in words), line
        if words:
            assert len(line) <= 76, line


def test_a_reply_with_only_in_reply_to_gets_its_parent_last_in_references(harness: Any) -> None:
    """RFC 5256 REFERENCES and JWZ threading take the parent from the last References ID and
    read In-Reply-To only when References has none: the anchor alone hung the reply under a
    message nobody sent, apart from the customer's own."""
    parent = "<CAJ0abc123@mail.gmail.com>"
    r = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Re: Printer"),
                         ("In-Reply-To", parent))
    anchor = f"<{harness.token(r.case_id)}.case@support.example.com>"
    assert unfold(r.one("References")).split() == [anchor, parent]
    assert r.one("In-Reply-To") == parent


def test_an_in_reply_to_of_free_text_gives_no_parent(harness: Any) -> None:
    """An address is no message ID: not a made-up parent every such reply would share."""
    r = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Re: Printer"), (
        "In-Reply-To", "Your message of Mon, 1 Jan 2024 from pat@customer.example.org"))
    assert r.one("References") == f"<{harness.token(r.case_id)}.case@support.example.com>"


def test_an_in_reply_to_of_several_ids_gives_the_first_as_parent(harness: Any) -> None:
    """RFC 5256: the first valid message-id of the In-Reply-To."""
    r = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Re: Printer"), (
        "In-Reply-To", "<a1@customer.example.org> (Pat) <a2@customer.example.org>"))
    assert unfold(r.one("References")).split()[1:] == ["<a1@customer.example.org>"]


def test_bare_ids_are_written_back_as_msg_ids(harness: Any) -> None:
    """References without brackets (an ID cut before its `>`, bare IDs separated by commas)
    were copied as `<<cut@...>` and `<one@...,>`: no msg-id by RFC 5322 §3.6.4."""
    r = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Re: Printer"),
                         ("References", "<cut@customer.example.org one@x.example.org,"))
    assert unfold(r.one("References")).split()[1:] == [
        "<cut@customer.example.org>", "<one@x.example.org>"]
    for value in ("one@x.example.org, two@x.example.org", "one@x.example.org,two@x.example.org"):
        assert msgid.id_list(value, 5) == ["two@x.example.org", "one@x.example.org"]


def test_references_are_folded_between_ids(harness: Any) -> None:
    """500 IDs as Thunderbird folds them: trimmed to 20, and written on lines of at most 78
    characters (RFC 5322 §2.1.1), not on one line of ~900."""
    ids = [f"<{i:04d}.tb@customer.example.org>" for i in range(500)]
    r = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Re: Printer"),
                         ("References", "\n ".join(ids)))
    value = r.one("References")
    assert all(len(line) <= 78 for line in lines_of("References", value))
    written = unfold(value).split()
    assert len(written) == 20 and written[1] == ids[0] and written[-1] == ids[-1]


def test_an_id_whose_quoted_local_part_holds_parentheses_is_copied_as_written(
        harness: Any) -> None:
    odd = '<"odd quoted(x)"@legacy.example.net>'
    r = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Re: Printer"),
                         ("References", f"{odd} (a comment) <m2@customer.example.org>"))
    assert unfold(r.one("References")).split()[1:] == [
        '<"odd', 'quoted(x)"@legacy.example.net>', "<m2@customer.example.org>"]


def test_comments_around_ids_still_go_and_scanning_stays_linear() -> None:
    assert msgid.written_ids("(via <gw@x>) <id@y> ((a) <b@c>) <d@e>") == ["<id@y>", "<d@e>"]
    for hostile in ('"' + '\\"' * 50_000 + "(x)", "<" * 100_000 + "(x)", "(" * 100_000):
        started = time.process_time()
        msgid.written_ids(hostile)
        msgid.first_id(hostile)
        assert time.process_time() - started < 0.5


def test_a_customers_own_bracket_reference_stays_when_the_case_moves(harness: Any) -> None:
    """Only our tags that verify are replaced: `[Ref: 4711]` is the customer's invoice."""
    old = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Your invoice"))
    subject = f"Re: Your invoice [Ref: 4711] is overdue [ref:{harness.token(old.case_id)}]"
    moved = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", subject), ("X-Case-ID", "TKT-2"))
    assert unfold(moved.one("Subject")) == (
        f"Re: Your invoice [Ref: 4711] is overdue [ref:{harness.token('TKT-2')}]")
    assert moved.one("Thread-Topic") == "Your invoice [Ref: 4711] is overdue"


def test_a_moved_tag_between_encoded_words_keeps_the_words_apart(harness: Any) -> None:
    """Blanks between two encoded words are dropped by decoders (RFC 2047 §6.2): removing the
    tag between them must not make "Grüße Köln" of "Grüße [ref:..] Köln"."""
    old = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Order"))
    subject = (f"=?utf-8?q?Gr=C3=BC=C3=9Fe?= [ref:{harness.token(old.case_id)}] "
               "=?utf-8?q?K=C3=B6ln?=")
    moved = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", subject), ("X-Case-ID", "TKT-2"))
    assert decode_subject(moved.one("Subject")) == (
        f"Grüße Köln [ref:{harness.token('TKT-2')}]")
    assert_rfc2047_lines("Subject", moved.one("Subject"))


def test_a_tag_without_a_leading_blank_keeps_off_an_encoded_word(
        make_harness: Any, tweak: Any) -> None:
    """RFC 2047 §5 (1): an encoded word is followed by a blank, not by text. A template
    without a leading blank wrote `=?utf-8?q?Caf=C3=A9?=[ref:...]`, which a strict reader
    shows as it is; plain text still takes the tag as the template writes it."""
    h = make_harness(tweak(tokens={"subject_template": "[ref:{token}]"}))
    r = h.outbound(AGENT, TO_CUSTOMER, ("Subject", "=?utf-8?q?Caf=C3=A9?="))
    tag = f"[ref:{h.token(r.case_id)}]"
    assert unfold(r.one("Subject")) == "=?utf-8?q?Caf=C3=A9?= " + tag
    r = h.outbound(AGENT, TO_CUSTOMER, ("Subject", "Order=?x?q?y?="))
    assert unfold(r.one("Subject")) == f"Order=?x?q?y?=[ref:{h.token(r.case_id)}]"


def test_a_tag_signed_by_a_key_no_longer_signing_is_re_signed(harness: Any) -> None:
    """After a key rotation (a new key signs, the old one still verifies) the agent's answer
    keeps the Subject's tag of the old key: it is replaced by the new key's, or replies that
    kept only the Subject stop threading when the old key is retired."""
    first = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Order"))
    old_tag = first.one("Subject")
    rotated = token.Keyring([(2, b"n" * 32), (1, bytes(range(32)))])  # the harness's key 1
    harness.engine = Engine(harness.settings, harness.index, rotated, clock=harness.clock,
                            hostname="mx.host.example.net")
    answer = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", f"Re: {old_tag}"))
    new_tok = rotated.make(harness.case(first.case_id).number)
    assert unfold(answer.one("Subject")) == f"Re: Order [ref:{new_tok}]"
    again = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", f"Re: {answer.one('Subject')}"))
    assert not [e for e in again.decision.edits if e.name == "Subject"]


def test_a_tag_that_does_not_verify_stays_when_the_case_moves(harness: Any) -> None:
    """Another installation's tag in the same form beside ours: on a move ours is replaced,
    theirs kept (it is theirs to thread by)."""
    theirs = token.Keyring([(4, b"t" * 32)]).make(12)
    old = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Order"))
    subject = f"Re: Order [ref:{theirs}] [ref:{harness.token(old.case_id)}]"
    moved = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", subject), ("X-Case-ID", "TKT-2"))
    assert unfold(moved.one("Subject")) == (
        f"Re: Order [ref:{theirs}] [ref:{harness.token('TKT-2')}]")


@pytest.mark.parametrize("template", [" [ref: {token} ]", " (Case {token} )", " [ref:{token}]"])
def test_a_moved_conversation_loses_the_old_tag_whatever_the_templates_blanks(
        make_harness: Any, tweak: Any, template: str) -> None:
    """A template with blanks inside its brackets: the old tag was kept, and replies went
    back to the old case."""
    h = make_harness(tweak(tokens={"subject_template": template}))
    old = h.outbound(AGENT, TO_CUSTOMER, ("Subject", "Printer"))
    moved = h.outbound(AGENT, TO_CUSTOMER, ("Subject", "Re: " + old.one("Subject")),
                       ("X-Case-ID", "TKT-9"))
    assert unfold(moved.one("Subject")) == "Re: Printer" + template.replace(
        "{token}", h.token("TKT-9"))
    reply = h.inbound(("From", "pat@customer.example.org"), ("To", "support@example.com"),
                      ("Subject", "Re: " + moved.one("Subject")))
    assert reply.case_id == "TKT-9"


def test_the_tag_pattern_is_linear_on_long_blank_runs() -> None:
    pattern = token.tag_pattern(token.DEFAULT_TEMPLATE)
    started = time.process_time()
    pattern.sub("", "a" + " " * 100_000 + "b")
    assert time.process_time() - started < 0.5


@pytest.mark.parametrize("length", [45, 80, 300])
def test_thread_topic_encoded_words_keep_to_rfc2047_lengths(harness: Any, length: int) -> None:
    """Python's `Header` made words of 76-77 characters and a 78-character first line."""
    text = ("Réclamation commande 4711 — livraison incomplète " * 10)[:length]
    encoded = "=?UTF-8?B?" + base64.b64encode(text.encode()).decode() + "?="
    r = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", f"Re: {encoded}"))
    topic = r.one("Thread-Topic")
    assert_rfc2047_lines("Thread-Topic", topic)
    assert decode_subject(topic) == text[:thread_index.TOPIC_MAX].rstrip()


def test_a_subject_holding_an_encoded_word_keeps_its_lines_to_76(harness: Any) -> None:
    """Apple Mail's `=?utf-8?Q?...?=` of 52 characters plus our tag made a 78-character line."""
    r = harness.outbound(AGENT, TO_CUSTOMER,
                         ("Subject", "=?utf-8?Q?Angebot_f=C3=BCr_M=C3=BCller_KG?="))
    assert_rfc2047_lines("Subject", r.one("Subject"))
    assert decode_subject(r.one("Subject")).startswith("Angebot für Müller KG [ref:")


@pytest.mark.parametrize(("label", "codec", "text"), [
    ("ks_c_5601-1987", "cp949", "똠방각하 문의"), ("shift_jis", "cp932", "①髙橋さん"),
    ("gb2312", "gb18030", "关于 喆"), ("big5", "big5hkscs", "香港㗎"),
])
def test_thread_topic_reads_a_narrow_charset_as_its_superset(
        harness: Any, label: str, codec: str, text: str) -> None:
    """Characters only the superset has were U+FFFD in Thread-Topic (`�c방각하 문의`)."""
    encoded = f"=?{label}?B?" + base64.b64encode(f"RE: {text}".encode(codec)).decode() + "?="
    r = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", encoded))
    assert decode_subject(r.one("Thread-Topic")) == text


def test_thread_topic_never_carries_control_characters(harness: Any) -> None:
    r = harness.outbound(AGENT, TO_CUSTOMER, (
        "Subject", "=?utf-8?Q?Bell=07_and_esc=1B[31m_red=0D=0AX-Case-ID:_C-000777?="))
    topic = r.one("Thread-Topic")
    assert not re.search(r"[\x00-\x1f\x7f]", decode_subject(topic) + topic)
    assert "red X-Case-ID" in decode_subject(topic)  # the words stay apart


def test_thread_topic_reads_latin1_as_windows_1252_and_blanks_c1_controls(harness: Any) -> None:
    """`=?iso-8859-1?Q?=93question=94?=` gave C1 controls (U+0093, U+0094) in Thread-Topic:
    every client reads the word as windows-1252's curly quotes. A C1 control that remains (a
    byte cp1252 leaves undefined, an encoded NEL) becomes a blank like a C0 one."""
    r = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Your =?iso-8859-1?Q?=93question=94?="))
    assert decode_subject(r.one("Thread-Topic")) == "Your “question”"
    r = harness.outbound(AGENT, TO_CUSTOMER, (
        "Subject", "=?iso-8859-1?Q?a=81b?= =?utf-8?Q?c=C2=85d=C2=9Fe?="))
    assert decode_subject(r.one("Thread-Topic")) == "a bc d e"


def test_thread_topic_drops_a_russian_webmail_reply_prefix(harness: Any) -> None:
    encoded = "=?koi8-r?B?" + base64.b64encode("Ответ: Вопрос о принтере".encode("koi8-r")).decode()
    r = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", encoded + "?="))
    assert decode_subject(r.one("Thread-Topic")) == "Вопрос о принтере"


def test_an_empty_subject_gets_the_tag_without_a_leading_blank(harness: Any) -> None:
    r = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", ""))
    assert r.one("Subject") == f"[ref:{harness.token(r.case_id)}]"


def test_a_case_opened_by_the_agents_outlook_mail_keeps_its_conversation(harness: Any) -> None:
    """The agent wrote first from Outlook: the app's later answers continue that Outlook
    conversation (its GUID) rather than one made up for the case."""
    root = thread_index.new_root(harness.clock.now, bytes(range(16, 32)))
    first = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Maintenance window"),
                             ("Thread-Index", thread_index.encode(root)))
    assert first.one("Thread-Index") == thread_index.encode(root)
    assert harness.case(first.case_id).thread_root == root.hex()
    later = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Maintenance window"),
                             ("X-Case-ID", first.case_id))
    sent = thread_index.decode(later.one("Thread-Index"))
    assert sent is not None and thread_index.root_of(sent) == root and len(sent) == 27
