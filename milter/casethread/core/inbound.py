"""Inbound mail (DESIGN §5, §6): which case a reply belongs to, and the headers that say so."""

from __future__ import annotations

from dataclasses import dataclass

from . import msgid, related
from .case_headers import CaseHeaderNames, strip_ours
from .edits import AddHeader, Edit
from .message import Message
from .model import CaseRecord
from .store import CaseReader


@dataclass(frozen=True)
class Resolution:
    case: CaseRecord | None  # None: open a new case
    match: str
    duplicate: bool = False


def resolve(msg: Message, reader: CaseReader, references_limit: int) -> Resolution:
    known = related.duplicate_of(msgid.first_id(msg.get("Message-ID")), reader)
    if known:
        return Resolution(known, "duplicate", duplicate=True)
    found = related.by_reply_headers(msg, reader, references_limit)
    if found:
        return Resolution(found.case, found.via)
    return Resolution(None, "new")


def edits(
    msg: Message, names: CaseHeaderNames, case_id: str, resolution: Resolution, state: str
) -> list[Edit]:
    """Forged fields out first, then ours; the order matters to the MTA's field indexes."""
    result: list[Edit] = list(strip_ours(msg, names))
    result.append(AddHeader(names.case_id, case_id))
    result.append(AddHeader(names.match, resolution.match))
    if resolution.duplicate:
        result.append(AddHeader(names.duplicate, "yes"))
    result.append(AddHeader(names.state, state))
    return result
