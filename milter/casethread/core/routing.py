"""Routing (first matching rule wins) to a queue: the `X-Case-Queue` of inbound mail."""

from __future__ import annotations

import re
from collections.abc import Iterator

from .addresses import AddressMatcher, header_addresses
from .frozen import frozen
from .message import Message, unfold
from .settings import RoutingSettings
from .subject import decoded_if_encoded

# Python's re has no timeout, so a rule's regex is given a bounded text, whatever the mail
# holds: a pattern such as `.*urgent` searches in time quadratic in its text (47 s of CPU for a
# 100 KB Subject, Postfix's header_size_limit; a hundred such fields for `header_regex`). A rule
# reads the first MAX_VALUE_TEXT characters of the unfolded Subject, and of each field of its
# `header` in order until MAX_RULE_TEXT characters (an empty field counts as one).
MAX_VALUE_TEXT = 4096
MAX_RULE_TEXT = 16384


def _bounded(values: list[str]) -> Iterator[str]:
    left = MAX_RULE_TEXT
    for value in values:
        if left <= 0:
            return
        text = unfold(value)[: min(left, MAX_VALUE_TEXT)]
        left -= max(len(text), 1)
        yield text


class _Subjects:
    """What a rule's `subject` regex searches: the first MAX_VALUE_TEXT characters of the
    unfolded Subject as written, then the same RFC 2047-decoded when that changes them (a
    client encodes a whole non-ASCII Subject, `=?UTF-8?B?...?=`: a rule for `Mahnung für`
    read only the encoded form and never matched); a word whose charset label Python does not
    know as the token search reads it (`subject.decode_subject`: Exchange's `_iso-2022-jp$ESC`
    as ISO-2022-JP, `unknown-8bit` as UTF-8). Read once a message, when a rule asks: most
    routing has no subject rule."""

    def __init__(self, msg: Message) -> None:
        self._msg = msg
        self._texts: list[str] | None = None

    def texts(self) -> list[str]:
        if self._texts is None:
            written = unfold(self._msg.get("Subject") or "")[:MAX_VALUE_TEXT]
            decoded = decoded_if_encoded(written, read_unknown=True)
            self._texts = [written] if decoded is None else [written, decoded[:MAX_VALUE_TEXT]]
        return self._texts


@frozen
class Route:
    queue: str
    override: bool  # an existing case moves to this queue too


class _CompiledRule:
    def __init__(self, queue: str, override: bool, rcpt: tuple[str, ...],
                 sender: tuple[str, ...], subject: str | None, header: str | None,
                 header_regex: str | None) -> None:
        self.route = Route(queue, override)
        self._rcpt = AddressMatcher(rcpt) if rcpt else None
        self._sender = AddressMatcher(sender) if sender else None
        self._subject = re.compile(subject, re.I) if subject else None
        self._header = header
        self._header_regex = re.compile(header_regex, re.I) if header_regex else None

    def matches(self, msg: Message, subjects: _Subjects) -> bool:
        if self._rcpt and not any(self._rcpt.matches(r) for r in msg.envelope.rcpts):
            return False
        if self._sender and not any(
            self._sender.matches(a) for a in header_addresses(msg.get_all("From"))
        ):
            return False
        if self._subject and not any(self._subject.search(text) for text in subjects.texts()):
            return False
        if self._header and self._header_regex:
            values = msg.get_all(self._header)
            if not any(self._header_regex.search(text) for text in _bounded(values)):
                return False
        return True


class Router:
    def __init__(self, settings: RoutingSettings) -> None:
        self._default = Route(settings.default_queue, False)
        self._rules = [
            _CompiledRule(r.queue, r.override, r.rcpt, r.sender, r.subject, r.header,
                          r.header_regex)
            for r in settings.rules
        ]

    def route(self, msg: Message) -> Route:
        if not self._rules:
            return self._default
        subjects = _Subjects(msg)
        for rule in self._rules:
            if rule.matches(msg, subjects):
                return rule.route
        return self._default
