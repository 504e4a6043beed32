"""Case rules (DESIGN §5): what a resolved case means for this message.

merged -> the surviving case; split -> every live child; closed -> the first open ancestor
that was not split, else a new related case; resolved -> reopened, unless older than
`cases.reopen_within` (a new related case). Automatic mail (`is_automatic` says which) goes
to a closed case's open parent too, but never reopens, opens or changes a case. A new related case
is opened once per conversation: the old case names it as its follow-up, and later replies go
there. Link chains are followed a bounded number of steps and cycles stop the walk, so a
corrupt or hostile index cannot hang us.
"""

from __future__ import annotations

from enum import StrEnum

from . import autoreply
from .frozen import frozen
from .model import CaseRecord, CaseState
from .store import CaseLookup

MAX_HOPS = 16
MAX_SPLIT_CHILDREN = 16
# The strategies whose evidence is our own mail, answered: a signed token or case anchor, one
# of our recorded Message-IDs, our Outlook thread root. Not a guessable case number or subject,
# nor another system's ticket number, nor a report that returns our mail.
ANSWERING_MATCHES = frozenset({"token", "in-reply-to", "references", "thread-index"})


def is_automatic(kind: str, match: str) -> bool:
    """Whether mail of this `X-Case-Auto` kind, matched by this strategy, counts as automatic
    for the case rules (no state change, reopen, follow-up or routing).

    Bulk mail that answers our mail is a person's reply relayed by a mailing list, or sent by
    a ticket system that marks all its mail `Precedence: bulk` (RT): RFC 3834 only
    says not to auto-respond to it, and Zammad and RT let it update and reopen tickets. Mail
    that also says it is machine-made (`Auto-Submitted`, a null sender, a report...) is
    `auto-generated`, never `bulk` (autoreply's order), and stays automatic; so does bulk mail
    matched otherwise (a newsletter naming a case number)."""
    if kind == autoreply.BULK and match in ANSWERING_MATCHES:
        return False
    return autoreply.is_auto(kind)


class Action(StrEnum):
    THREAD = "thread"  # the message joins the case; its state stays
    ACTIVATE = "activate"  # a customer answered a waiting case: back to open
    REOPEN = "reopen"  # a resolved case is reopened
    NEW_RELATED = "new-related"  # open a new case, related to `case`


@frozen
class Target:
    case: CaseRecord
    action: Action


def survivor(case: CaseRecord, reader: CaseLookup) -> CaseRecord:
    """Follow merges to the surviving case; a cycle or a dangling link stops at the last good."""
    seen = {case.case_id}
    for _ in range(MAX_HOPS):
        if not case.merged_into or case.merged_into in seen:
            return case
        following = reader.get_case(case.merged_into)
        if following is None:
            return case
        seen.add(following.case_id)
        case = following
    return case


def _live_children(case: CaseRecord, reader: CaseLookup) -> list[CaseRecord]:
    children: list[CaseRecord] = []
    for child_id in case.children[:MAX_SPLIT_CHILDREN]:
        child = reader.get_case(child_id)
        if child is not None:
            child = survivor(child, reader)
            if child.case_id not in {c.case_id for c in children}:
                children.append(child)
    return children


def _open_ancestor(case: CaseRecord, reader: CaseLookup) -> CaseRecord | None:
    seen = {case.case_id}
    for _ in range(MAX_HOPS):
        if not case.parent or case.parent in seen:
            return None
        parent = reader.get_case(case.parent)
        if parent is None:
            return None
        parent = survivor(parent, reader)
        # A case that was split is nobody's open ancestor: its conversation went on in its
        # children (`case split --create` makes it their parent), and mail to it goes to them.
        if parent.state is not CaseState.CLOSED and not parent.children:
            return parent
        seen.add(parent.case_id)
        case = parent
    return None


def _followup(case: CaseRecord, reader: CaseLookup) -> CaseRecord | None:
    """The last case of `case`'s follow-up chain (where its conversation went), if any."""
    seen = {case.case_id}
    found = None
    for _ in range(MAX_HOPS):
        if not case.followup or case.followup in seen:
            break
        following = reader.get_case(case.followup)
        if following is None:
            break
        case = found = survivor(following, reader)
        seen.add(case.case_id)
    return found


class _Walk:
    """One message's walk over the case links: what it is, and a bound on how far it goes."""

    def __init__(self, reader: CaseLookup, automatic: bool, now: int,
                 reopen_within: int) -> None:
        self.reader = reader
        self.automatic = automatic
        self.now = now
        self.reopen_within = reopen_within
        # Splits fan out and follow-ups chain: a corrupt or hostile index stops here.
        self.steps = MAX_HOPS * MAX_SPLIT_CHILDREN
        self.followed: set[str] = set()
        self.depth = 0  # follow-ups being followed now, one inside the other


def _targets(case: CaseRecord, walk: _Walk) -> list[Target]:
    case = survivor(case, walk.reader)
    cases = _live_children(case, walk.reader) if case.children else [case]
    return [t for c in cases for t in _target(c, walk)]


def _target(case: CaseRecord, walk: _Walk) -> list[Target]:
    walk.steps -= 1
    if walk.automatic:
        return _automatic_target(case, walk)
    if walk.steps < 0:  # a corrupt or hostile index: never into a closed or expired case
        live = case.state in (CaseState.OPEN, CaseState.WAITING)
        return [Target(case, Action.THREAD if live else Action.NEW_RELATED)]
    if case.state is CaseState.CLOSED:
        ancestor = _open_ancestor(case, walk.reader)
        if ancestor is None:
            return _continued(case, walk)
        case = ancestor
    if case.state is CaseState.RESOLVED:
        if walk.now - case.state_changed > walk.reopen_within:
            return _continued(case, walk)
        return [Target(case, Action.REOPEN)]
    if case.state is CaseState.WAITING:
        return [Target(case, Action.ACTIVATE)]
    return [Target(case, Action.THREAD)]


def _automatic_target(case: CaseRecord, walk: _Walk) -> list[Target]:
    """Automatic mail changes no case and opens none, but a closed case's open parent takes
    it, as it would a person's reply: an out-of-office or a bounce belongs with the live case
    its agent works. Not a follow-up: a person's reply may have opened it for another
    customer (a new question in an old thread), and a bounce reports on one case's mail."""
    if walk.steps >= 0 and case.state is CaseState.CLOSED:
        ancestor = _open_ancestor(case, walk.reader)
        if ancestor is not None:
            return [Target(ancestor, Action.THREAD)]
    return [Target(case, Action.THREAD)]


def _continued(case: CaseRecord, walk: _Walk) -> list[Target]:
    """A case this mail cannot continue: the follow-up an earlier reply opened takes it (one
    conversation, one new case, however many replies), as any case would (split, closed...:
    its own follow-ups too), else a new related case. The mail is handed on so at most
    MAX_HOPS times, one inside the other (each hand-over reads up to MAX_HOPS links of a
    plain chain, `_followup`): each is a level of recursion, and the steps' bound alone let a
    hostile or corrupt index (follow-ups each split into one closed child naming the next) go
    past Python's recursion limit: a RecursionError on every mail to that case. (A depth, not
    a count: a split case's children may each have a follow-up of their own.)"""
    followup = _followup(case, walk.reader)
    if followup is None or followup.case_id in walk.followed or walk.depth >= MAX_HOPS:
        return [Target(case, Action.NEW_RELATED)]
    walk.followed.add(followup.case_id)
    walk.depth += 1
    try:
        return _targets(followup, walk)
    finally:
        walk.depth -= 1


def apply(case: CaseRecord, reader: CaseLookup, *, automatic: bool, now: int,
          reopen_within: int) -> list[Target]:
    """The cases this message goes to, and what it does to each (at least one target).

    One target per case (a split case's children may lead to one parent), and one new case at
    most: when some of the cases can take the mail, no new one is opened for the others."""
    if not (case.merged_into or case.children):
        # Most mail: its case is open or waiting, and neither merged nor split. It takes the
        # mail itself, as the walk would find (a reply activates a waiting case).
        if case.state is CaseState.OPEN or (case.state is CaseState.WAITING and automatic):
            return [Target(case, Action.THREAD)]
        if case.state is CaseState.WAITING:
            return [Target(case, Action.ACTIVATE)]
    return _walked(case, reader, automatic=automatic, now=now, reopen_within=reopen_within)


def _walked(case: CaseRecord, reader: CaseLookup, *, automatic: bool, now: int,
            reopen_within: int) -> list[Target]:
    """`apply` by the walk over the case's links, whatever they are."""
    targets: dict[str, Target] = {}
    for target in _targets(case, _Walk(reader, automatic, now, reopen_within)):
        targets.setdefault(target.case.case_id, target)
    found = list(targets.values())
    return [t for t in found if t.action is not Action.NEW_RELATED] or found[:1]


def takes_replies(case: CaseRecord, *, now: int, reopen_within: int) -> bool:
    """Whether a person's reply to `case` stays with it: not closed, and not resolved longer
    ago than `reopen_within` (either hands the reply on, `_target`)."""
    if case.state is CaseState.CLOSED:
        return False
    return case.state is not CaseState.RESOLVED or now - case.state_changed <= reopen_within


def taking_replies(case: CaseRecord, reader: CaseLookup, *, now: int,
                   reopen_within: int) -> CaseRecord | None:
    """The one other case a person's reply to `case` goes to now without opening a case (a
    closed case's open parent, or the follow-up an earlier reply opened), else None: an
    agent's answer with that case's token belongs where its replies will go."""
    targets = apply(case, reader, automatic=False, now=now, reopen_within=reopen_within)
    if len(targets) != 1 or targets[0].action is Action.NEW_RELATED:
        return None
    found = targets[0].case
    return None if found.case_id == case.case_id else found


def followup_after(case: CaseRecord, state: CaseState) -> str | None:
    """The case's follow-up once it is in `state`: reopened (or waiting again), the case has
    its conversation back, and a later close must not send replies on to the follow-up an
    earlier close left."""
    return None if state in (CaseState.OPEN, CaseState.WAITING) else case.followup


def transition(target: Target, now: int) -> CaseRecord | None:
    """The case's new record after this message, or None when it does not change."""
    case = target.case
    if target.action is Action.REOPEN or target.action is Action.ACTIVATE:
        # `case` is the record current in the write, which another writer may have moved
        # since the decision: a case closed meanwhile stays closed, an open one is touched.
        if case.state is CaseState.WAITING or case.state is CaseState.RESOLVED:
            return _touched(case, now, CaseState.OPEN)
        return _touched(case, now)
    if target.action is Action.THREAD:
        return _touched(case, now)
    return None


def _touched(case: CaseRecord, now: int, state: CaseState | None = None) -> CaseRecord:
    """The case updated at `now`, moved to `state` if given. Built field by field, in the
    fields' order: every inbound mail does this, `dataclasses.replace` costs twice as much,
    and keyword arguments (a dictionary to unpack) a third more."""
    if state is None:
        state, state_changed = case.state, case.state_changed
    else:
        state_changed = now
    return CaseRecord(case.case_id, case.number, state, case.queue, case.created, now,
                      state_changed, case.parent, case.merged_into, case.children,
                      followup_after(case, state), case.thread_root, case.follows)


def with_state(case: CaseRecord, state: CaseState, now: int) -> CaseRecord | None:
    """The case set to `state` at `now` by the app's `X-Case-State` or `case set-state`, or
    None when that changes nothing: no write, and `updated` (what an import --merge compares)
    stays. `state_changed` moves only with the state: `cases.reopen_within` counts from it."""
    if case.state is state and followup_after(case, state) == case.followup:
        return None
    return _touched(case, now, None if case.state is state else state)
