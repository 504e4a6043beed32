"""Work bounds of the inbound body scans, counted (third complexity audit)."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest

from casethread.core import bodytext
from casethread.core.message import Envelope, Header, Message
from casethread.core.model import Direction
from casethread.core.token import MAX_CANDIDATES

SUPPORT = "support@example.com"


class _CountingText(str):
    """Body text that counts the line starts looked for (`_quote_depth`)."""

    rfinds = 0

    def rfind(self, *args: Any) -> int:
        type(self).rfinds += 1
        return super().rfind(*args)


def test_a_line_of_tokens_has_only_the_judged_candidates_read(make_harness: Any) -> None:
    """Of a text's tokens, no more than MAX_CANDIDATES are ever judged: the scan read them all
    (36,000 in 1 MiB on one line, 0.65 s), each line start searched for from its token back."""
    harness = make_harness()
    token = harness.keyring.make(123456)  # signed by our key, but no such case
    text = _CountingText(f"[ref:{token}] " * 20_000)
    resolver = harness.engine._resolver
    found = list(resolver._body_tokens(SimpleNamespace(body_texts=[text, text])))
    assert [len(candidates) for candidates in found] == [MAX_CANDIDATES, MAX_CANDIDATES]
    assert _CountingText.rfinds == 2 * MAX_CANDIDATES
    assert found[0][0] == (0, 0, found[0][0][2])


def test_the_least_quoted_token_among_the_first_candidates_still_wins(
        make_harness: Any) -> None:
    harness = make_harness()
    opened = harness.inbound(("From", "Pat <pat@customer.example.org>"), ("To", SUPPORT),
                             ("Subject", "printer"))
    token = harness.token(opened.case_id)
    other = harness.keyring.make(999_999)
    body = (f"> [ref:{other}]\r\n" * (MAX_CANDIDATES - 1) + f"[ref:{token}]\r\n"
            + f"[ref:{other}]\r\n" * 1000).encode()
    msg = Message(Envelope(rcpts=(SUPPORT,)), tuple(Header(n, v) for n, v in (
        ("From", "Pat <pat@customer.example.org>"), ("To", SUPPORT), ("Subject", "Re: printer"),
        ("Message-ID", "<r.2@customer.example.org>"), ("Content-Type", "text/plain"))), body)
    result = harness.run(msg, Direction.INBOUND)
    assert result.case_id == opened.case_id
    assert result.one("X-Case-Match") == "token"


class _CountingPattern:
    def __init__(self, pattern: re.Pattern[bytes]) -> None:
        self.pattern, self.searches = pattern, 0

    def search(self, *args: Any) -> re.Match[bytes] | None:
        self.searches += 1
        return self.pattern.search(*args)


def test_marker_lines_of_a_text_bounce_search_the_text_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each marker line ("--- Below this line is a copy of the message.") had its paragraph
    searched for a Message-ID or Received line to the paragraph's end: 1 MiB of marker lines
    took 93 s of CPU inbound. The searches now go on from where the last one stopped."""
    blank = _CountingPattern(bodytext._BLANK_LINE)
    mark = _CountingPattern(bodytext._HEADER_MARK)
    monkeypatch.setattr(bodytext, "_BLANK_LINE", blank)
    monkeypatch.setattr(bodytext, "_HEADER_MARK", mark)
    marker = b"--- Below this line is a copy of the message.\r\n"
    assert bodytext._copy_in_text(marker * 5000) == b""
    assert blank.searches + mark.searches <= 4
    returned = b"Received: from mx\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n"
    assert bodytext._copy_in_text(marker * 5000 + returned) == marker * 4999 + returned
    assert bodytext._copy_in_text(marker * 3 + b"\r\n" + returned) == returned
    paragraphs = marker + b"no header\r\n\r\n" + marker + b"Subject: x\r\n\r\n" + marker + returned
    assert bodytext._copy_in_text(paragraphs) == returned
