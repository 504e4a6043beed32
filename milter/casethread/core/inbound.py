"""Inbound mail (DESIGN §5, §6): the facts about one message and the headers that state them."""

from __future__ import annotations

import functools
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


# Our fields but X-Case-ID and X-Case-Related take a value of a few (a strategy's name, a state,
# a configured queue, `yes`...): each such field is made once, not once a message.
_field = functools.lru_cache(maxsize=256)(AddHeader)


def edits(names: CaseHeaderNames, forged: Sequence[Edit], verdict: Verdict) -> list[Edit]:
    """Forged fields out first, then ours (the order matters to the MTA's field indexes)."""
    result: list[Edit] = list(forged)
    for case in verdict.cases:
        result.append(AddHeader(names.case_id, case.case_id))
    result.append(_field(names.match, verdict.match))
    if verdict.duplicate:
        result.append(_field(names.duplicate, "yes"))
    for case in verdict.cases:
        result.append(_field(names.state, case.state))
    if verdict.cases:
        result.append(_field(names.queue, verdict.cases[0].queue))
    result.append(_field(names.auto, verdict.auto))
    if verdict.loop:
        result.append(_field(names.loop, "yes"))
    for case in verdict.cases:
        if case.related:
            result.append(AddHeader(names.related, case.related))
    if verdict.sender_known is not None:
        result.append(_field(names.sender, "known" if verdict.sender_known else "unknown"))
    if verdict.token_failures:
        result.append(_field(names.token, "invalid"))
    return result

