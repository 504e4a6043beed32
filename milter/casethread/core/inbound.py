"""Inbound mail (DESIGN §5, §6): the facts about one message and the headers that state them."""

from __future__ import annotations

from collections.abc import Sequence

from .case_headers import CaseHeaderNames
from .edits import AddHeader, Edit
from .frozen import frozen


@frozen
class CaseOutcome:
    case_id: str
    state: str  # the X-Case-State value: new, open, reopened, waiting, resolved, closed
    queue: str
    related: str | None = None  # the earlier case, when a new one was opened instead


@frozen
class Verdict:
    """Everything the inbound headers say; `cases` is empty when no case was assigned."""

    cases: tuple[CaseOutcome, ...]
    match: str
    auto: str
    duplicate: bool = False
    loop: bool = False
    sender_known: bool | None = None  # None: nothing matched, so the question does not arise
    # Why token-shaped strings failed verification (X-Case-Token: invalid, and log notes).
    token_failures: tuple[str, ...] = ()


def edits(names: CaseHeaderNames, forged: Sequence[Edit], verdict: Verdict) -> list[Edit]:
    """Forged fields out first, then ours (the order matters to the MTA's field indexes)."""
    result: list[Edit] = list(forged)
    for case in verdict.cases:
        result.append(AddHeader(names.case_id, case.case_id))
    result.append(AddHeader(names.match, verdict.match))
    if verdict.duplicate:
        result.append(AddHeader(names.duplicate, "yes"))
    for case in verdict.cases:
        result.append(AddHeader(names.state, case.state))
    if verdict.cases:
        result.append(AddHeader(names.queue, verdict.cases[0].queue))
    result.append(AddHeader(names.auto, verdict.auto))
    if verdict.loop:
        result.append(AddHeader(names.loop, "yes"))
    for case in verdict.cases:
        if case.related:
            result.append(AddHeader(names.related, case.related))
    if verdict.sender_known is not None:
        result.append(AddHeader(names.sender, "known" if verdict.sender_known else "unknown"))
    if verdict.token_failures:
        result.append(AddHeader(names.token, "invalid"))
    return result

