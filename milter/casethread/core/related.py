"""Finding the case a message belongs to through the Message-IDs it refers to."""

from __future__ import annotations

from dataclasses import dataclass

from . import msgid
from .message import Message
from .model import CaseRecord
from .store import CaseReader


@dataclass(frozen=True)
class Found:
    case: CaseRecord
    via: str  # "in-reply-to" or "references"


def _live_case(reader: CaseReader, message_id: str) -> CaseRecord | None:
    case_id = reader.case_for_message(message_id)
    return reader.get_case(case_id) if case_id else None


def by_reply_headers(msg: Message, reader: CaseReader, references_limit: int) -> Found | None:
    """In-Reply-To first, then References newest (rightmost) first, bounded."""
    for mid in msgid.id_list(msg.get("In-Reply-To"), references_limit):
        case = _live_case(reader, mid)
        if case:
            return Found(case, "in-reply-to")
    for mid in msgid.id_list(msg.get("References"), references_limit):
        case = _live_case(reader, mid)
        if case:
            return Found(case, "references")
    return None


def duplicate_of(own_id: str | None, reader: CaseReader) -> CaseRecord | None:
    """The case already recorded for this very Message-ID (a second delivery of one mail)."""
    return _live_case(reader, own_id) if own_id else None
