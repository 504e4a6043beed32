"""Our header contract (DESIGN §6): names under a configurable prefix, and forged-header removal."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from .edits import ChangeHeader, remove_header
from .message import Message


@dataclass(frozen=True)
class CaseHeaderNames:
    # Names are built once per instance (the engine keeps one): they are read per message.
    prefix: str = "X-Case-"

    @cached_property
    def case_id(self) -> str:
        return f"{self.prefix}ID"

    @cached_property
    def match(self) -> str:
        return f"{self.prefix}Match"

    @cached_property
    def duplicate(self) -> str:
        return f"{self.prefix}Duplicate"

    @cached_property
    def state(self) -> str:
        return f"{self.prefix}State"

    @cached_property
    def queue(self) -> str:
        return f"{self.prefix}Queue"

    @cached_property
    def auto(self) -> str:
        return f"{self.prefix}Auto"

    @cached_property
    def loop(self) -> str:
        return f"{self.prefix}Loop"

    @cached_property
    def related(self) -> str:
        return f"{self.prefix}Related"

    @cached_property
    def sender(self) -> str:
        return f"{self.prefix}Sender"

    @cached_property
    def token(self) -> str:
        return f"{self.prefix}Token"

    @cached_property
    def lower_prefix(self) -> str:
        return self.prefix.lower()

    def is_ours(self, name: str) -> bool:
        return name.lower().startswith(self.lower_prefix)


# More fields under our prefix than this, and the message is refused rather than cleaned: each
# removal is one edit, and Postfix 3.7's cleanup slows down with the square of their number
# and panics somewhere past 9,000 (one message then stalled the MTA's intake). Mail that passed
# casethread a few times carries a few dozen at most.
MAX_OWN_FIELDS = 100


def refusal(msg: Message, names: CaseHeaderNames) -> str | None:
    """Why the message is refused (an SMTP reply text), when it carries more fields under our
    prefix than can be removed; None for every other message."""
    if not msg.has_prefix(names.lower_prefix):
        return None
    count = sum(1 for h in msg.headers if names.is_ours(h.name))
    if count <= MAX_OWN_FIELDS:
        return None
    return (f"message has {count} {names.prefix}* header fields, at most {MAX_OWN_FIELDS} "
            "can be accepted")


def strip_ours(msg: Message, names: CaseHeaderNames) -> list[ChangeHeader]:
    """Remove every field under our prefix, whatever its case (downstream rules trust them).

    Highest index first per name, so renumbering after a deletion cannot skip one.
    """
    if not msg.has_prefix(names.lower_prefix):
        return []  # the usual case, seen in the message's name index without a header walk
    counts: dict[str, int] = {}
    spelled: dict[str, str] = {}
    for h in msg.headers:
        if names.is_ours(h.name):
            key = h.name.lower()
            counts[key] = counts.get(key, 0) + 1
            spelled.setdefault(key, h.name)
    return [
        remove_header(spelled[key], index)
        for key, count in counts.items()
        for index in range(count, 0, -1)
    ]
