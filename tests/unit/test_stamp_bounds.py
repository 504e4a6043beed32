"""Work bounds of body stamping on hostile parts: counted, not timed.

Stamping reads a part of up to `MAX_PART_BYTES` (16 MB) whole, unlike the inbound scans and
their budget; a loop in Python per tag or per line of such a part costs seconds. Each test
counts the calls the per-item loop made, on a part where the count before the fix was the
number of items.
"""

from __future__ import annotations

import random
import re
from typing import Any

import pytest

from casethread.core import placement, stamp, token
from casethread.core.token import Keyring

TEST_KEYRING = Keyring([(1, bytes(range(32)))])  # a fixed key, never a real one


class _CountingPattern:
    """A compiled pattern whose `match` calls are counted."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.calls = 0

    def match(self, *args: Any) -> re.Match[str] | None:
        self.calls += 1
        return self.pattern.match(*args)


class _CountingText(str):
    """A text whose `find` and `rfind` calls are counted."""

    finds = 0

    def find(self, *args: Any) -> int:  # type: ignore[override]
        _CountingText.finds += 1
        return super().find(*args)

    def rfind(self, *args: Any) -> int:  # type: ignore[override]
        _CountingText.finds += 1
        return super().rfind(*args)


def test_a_separator_before_more_inline_end_tags_than_a_client_writes_is_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """200,000 `</b>` after a `-- `: read tag by tag, a 10 MB part of them took 1.6 s to stamp.
    At most 16 are read, as the inline start tags before a separator: deeper is no signature
    line, and the tag goes before </body>. 16 still end the separator's line."""
    counting = _CountingPattern(placement._HTML_TAG_AFTER)
    monkeypatch.setattr(placement, "_HTML_TAG_AFTER", counting)
    html = "<html><body><p>Hello</p><br>-- " + "</b>" * 200_000 + "<br>Dana</body></html>"
    assert placement.html_insertion_index(html) == html.index("</body>")
    assert counting.calls < 20
    html = "<html><body><p>Hello</p><br>-- " + "</b>" * 16 + "<br>Dana</body></html>"
    assert placement.html_insertion_index(html) == html.index("<br>-- ")  # after the </p>


def test_dashes_that_start_no_separator_line_are_passed_in_one_search() -> None:
    """200,000 lines starting `-- ` and going on: a `find` per line took 0.7 s for 10 MB."""
    _CountingText.finds = 0
    text = _CountingText("Hello\n" + "-- x\n" * 200_000 + "-- \nDana\n")
    assert placement._signature_start(text) == len(text) - len("-- \nDana\n")
    assert _CountingText.finds < 10


def test_the_last_closing_tag_is_looked_for_from_the_end() -> None:
    """A part of 100,000 `</body>`: each was checked for a tag around it (0.7 s for 10 MB);
    from the last back, the first outside any tag is the answer."""
    _CountingText.finds = 0
    body = "<html><body><p>Hello</p>" + "</body>" * 100_000 + "</html>"
    text = _CountingText(body)
    assert placement.html_insertion_index(text) == len(body) - len("</body></html>")
    assert _CountingText.finds < 10


def test_closing_tags_in_quoted_values_read_the_tags_before_them_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """100,000 `<a title="x></body>">`: each `</body>` may be in a quoted value, which only
    reading the tags from the last comment's end tells; read per `</body>` (16 of them), a
    16 MB part took 1.2 s. One reading a closing tag's name: an earlier one is passed over.
    A `</body>` after a tag's end, in no value, needs none."""
    counting = _CountingPattern(placement._DATA)
    monkeypatch.setattr(placement, "_DATA", counting)
    html = '<a title="x></body>">' * 100_000
    assert placement.html_insertion_index(html) == len(html)
    assert counting.calls == 1
    html = "<body><p>x</p>" + '<a title="x></body>">' * 100 + "</body></html>"
    assert placement.html_insertion_index(html) == len(html) - len("</body></html>")
    assert counting.calls == 1


@pytest.mark.parametrize(("depth", "signature"), [(15, True), (16, True), (17, False)])
def test_a_separator_in_16_inline_tags_is_one_and_in_17_none(depth: int, signature: bool) -> None:
    """README: a `-- ` wrapped in more than 16 inline tags, before or after it, is no
    signature. The tags before it were read 15 deep: 16 `<b>` around one were no signature
    while 16 `</b>` after one were."""
    html = ("<html><body><p>Hello</p><br>" + "<b>" * depth + "-- " + "</b>" * depth
            + "<br>Dana</body></html>")
    expected = html.index("<br><b>") if signature else html.index("</body>")
    assert placement.html_insertion_index(html) == expected


def _counting_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    read = token._read_candidate

    def counted(*args: Any) -> str | None:
        calls[0] += 1
        return read(*args)

    monkeypatch.setattr(token, "_read_candidate", counted)
    return calls


def test_already_stamped_finds_the_last_token_without_reading_every_opener(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An agent's reply quoting a customer's mail that quoted our token among 2 million
    `[ref:` openers: each opener was read as a candidate (2.2 s for 10 MB). The openers that
    start no candidate are passed by one search; tokens before the last are not read."""
    ours = TEST_KEYRING.make(7)
    other = TEST_KEYRING.make(8)
    calls = _counting_reads(monkeypatch)
    text = f"Thanks\n> [ref:{ours}]\n> " + "[ref:" * 200_000 + "\n"
    assert stamp._already_stamped(text, ours, " [ref:{token}]")
    assert calls[0] < 5
    calls[0] = 0
    text = f"> [ref:{other}]\n" * 50_000 + f"[ref:{ours}]\n" + "[ref:" * 50_000
    assert stamp._already_stamped(text, ours, " [ref:{token}]")
    assert calls[0] < 5
    calls[0] = 0
    text = f"[ref:{ours}]\n" + f"> [ref:{other}]\n" * 50_000
    assert not stamp._already_stamped(text, ours, " [ref:{token}]")
    assert calls[0] < 5


@pytest.mark.parametrize("seed", range(4))
def test_the_last_token_is_the_last_that_find_tokens_yields(
    seed: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`last_token` against the full scan on random text of openers, tokens (whole, broken,
    cut, wrapped, quoted, full width), blanks and closers, with windows of a few characters."""
    rng = random.Random(seed)
    tokens = [TEST_KEYRING.make(n) for n in (1, 31, 4711, 2**64 - 1)]
    templates = [" [ref:{token}]", " (case:{token})", " [ref {token}]", "#x{token}#",
                 " [ref:{token}]]", " <{token}>", "{{ {token} }}", " ref:{token}."]
    pieces = ["[", "ref", ":", "[ref:", "\uff3b\uff52\uff45\uff46\uff1a", "]", "\uff3d", " ",
              "\u00a0", "\u3000", "\u200b", "\r\n", "\n", "> ", ">", "\r\n> ", "A", "0", "x",
              "K", "\u212a", "(", ")", "<", "#", ".", "{", "}", "case:", "r\ne", "f\r\n>:"]
    for _ in range(3000):
        template = rng.choice(templates)
        before, after = (side.strip() for side in template.split("{token}"))
        monkeypatch.setattr(token, "_LAST_WINDOW", rng.choice([1, 2, 3, 7, 1 << 14]))
        parts = []
        for _ in range(rng.randint(0, 12)):
            if rng.random() < 0.3:
                tok = rng.choice(tokens)
                tok = tok.lower() if rng.random() < 0.5 else tok
                if rng.random() < 0.4:
                    cut = rng.randrange(len(tok) + 1)
                    tok = tok[:cut] + rng.choice(pieces) + tok[cut:]
                if rng.random() < 0.3:
                    tok = tok[: rng.randrange(len(tok) + 1)]
                parts.append(before + tok + (after if rng.random() < 0.8 else rng.choice(pieces)))
            else:
                parts.append(rng.choice([*pieces, before, after]))
        text = "".join(parts)
        found = list(token.find_tokens(text, template))
        assert token.last_token(text, template) == (found[-1] if found else None), (template,
                                                                                     text)
