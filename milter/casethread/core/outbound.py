"""Outbound mail (DESIGN §3): the case it is sent for, its Message-ID, and one X-Case-ID."""

from __future__ import annotations

from dataclasses import dataclass

from . import msgid, related
from .addresses import domain_of, header_addresses
from .case_headers import CaseHeaderNames, strip_ours
from .edits import AddHeader, ChangeHeader, Edit
from .message import Message, unfold
from .model import CaseRecord, is_valid_case_id
from .store import CaseReader


@dataclass(frozen=True)
class Plan:
    app_case_id: str | None  # the app's own X-Case-ID: adopt it
    related: related.Found | None
    bad_app_case_id: bool = False


def plan(msg: Message, reader: CaseReader, names: CaseHeaderNames, references_limit: int) -> Plan:
    raw_app_id = msg.get(names.case_id)
    if raw_app_id is not None:
        app_id = unfold(raw_app_id).strip()
        if is_valid_case_id(app_id):
            return Plan(app_id, None)
    found = related.by_reply_headers(msg, reader, references_limit)
    return Plan(None, found, bad_app_case_id=raw_app_id is not None)


def message_id_domain(msg: Message, configured: str | None, fallback: str) -> str:
    """Config first, then the From domain when it is a plain DNS name, then the host name."""
    if configured:
        return configured
    for address in header_addresses(msg.get_all("From")):
        domain = domain_of(address)
        if msgid.is_plain_domain(domain):
            return domain
    return fallback


@dataclass(frozen=True)
class MessageId:
    normalised: str
    edit: Edit | None  # None when the message already had a usable one


def ensure_message_id(msg: Message, domain: str, now: float) -> MessageId:
    present = msg.get("Message-ID")
    existing = msgid.first_id(present)
    if existing:
        return MessageId(existing, None)
    new = msgid.new_message_id(domain, now)
    normalised = msgid.normalise(new)
    assert normalised is not None
    # An unusable Message-ID field is replaced in place rather than duplicated.
    edit: Edit = ChangeHeader("Message-ID", 1, new) if present is not None else AddHeader(
        "Message-ID", new
    )
    return MessageId(normalised, edit)


def edits(
    msg: Message, names: CaseHeaderNames, case: CaseRecord | None, message_id: MessageId
) -> list[Edit]:
    """Exactly one X-Case-ID for the case; the app's own fields under our prefix are consumed."""
    result: list[Edit] = []
    if message_id.edit is not None:
        result.append(message_id.edit)
    ours = [h for h in msg.headers if names.is_ours(h.name)]
    already_right = (
        case is not None
        and len(ours) == 1
        and ours[0].name.lower() == names.case_id.lower()
        and unfold(ours[0].value).strip() == case.case_id
    )
    if not already_right:
        result.extend(strip_ours(msg, names))
        if case is not None:
            result.append(AddHeader(names.case_id, case.case_id))
    return result
