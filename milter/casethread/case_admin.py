"""Case administration (DESIGN §5, §7): look up cases and change their state and links.

Behind `casethread lookup` and `casethread case show|set-state|merge|split|parent`. Everything
goes through the index Protocol, one short transaction per call, so it works while the milter
runs. Each operation validates everything before its first write: a refusal changes nothing.

Links are checked against the bounds the case rules follow (`rules.MAX_HOPS`,
`rules.MAX_SPLIT_CHILDREN`): a link the milter would not follow, or one that makes a cycle,
is refused here instead of being silently ignored at delivery time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from itertools import chain
from typing import Any

from .core import msgid, thread_index
from .core.model import AliasKind, CaseRecord, CaseState, case_fields, is_valid_case_id
from .core.rules import MAX_HOPS, MAX_SPLIT_CHILDREN, Target, apply, survivor, with_state
from .core.store import CaseIndex, CaseReader
from .core.token import DEFAULT_TEMPLATE, Keyring, find_tokens, token_from_anchor

# Nodes visited when looking for a split cycle: every child, each followed a full rule walk.
MAX_WALK = MAX_SPLIT_CHILDREN * MAX_HOPS * 4
STATES = tuple(state.value for state in CaseState)


class AdminError(Exception):
    """A refused operation; the message says why and what to do instead."""


class CaseNotFound(AdminError):
    """A case named on the command line does not exist."""


class BadLookupKey(ValueError):
    """A lookup key that cannot name any case: an invalid token, a malformed Thread-Index."""


# --- reading ----------------------------------------------------------------------------------


def find_case(reader: CaseReader, ref: str) -> CaseRecord | None:
    """The case `ref` names: a case id, else (all digits) a case number."""
    ref = ref.strip()
    if not is_valid_case_id(ref):
        return None
    case = reader.get_case(ref)
    if case is None and ref.isdigit():
        case_id = reader.case_for_number(int(ref))
        case = reader.get_case(case_id) if case_id else None
    return case


def require(reader: CaseReader, ref: str) -> CaseRecord:
    if not is_valid_case_id(ref.strip()):
        raise CaseNotFound(f"{ref!r} is not a case id")
    case = find_case(reader, ref)
    if case is None:
        raise CaseNotFound(f"no case {ref.strip()}")
    return case


@dataclass(frozen=True)
class Found:
    """A lookup result: `case` is where mail goes (merges followed); `named` what the key named."""

    case: CaseRecord
    named: CaseRecord
    via: str


def _found(reader: CaseReader, case_id: str | None, via: str) -> Found | None:
    named = reader.get_case(case_id) if case_id else None
    if named is None:
        return None
    return Found(survivor(named, reader), named, via)


def lookup_case(reader: CaseReader, ref: str) -> Found | None:
    named = find_case(reader, ref)
    return None if named is None else Found(survivor(named, reader), named, "case")


def lookup_message_id(reader: CaseReader, value: str) -> Found | None:
    mid = msgid.first_id(value)
    if mid is None:
        raise BadLookupKey(f"{value!r} is not a Message-ID")
    return _found(reader, reader.case_for_message(mid), "message-id")


def lookup_token(
    reader: CaseReader, keyring: Keyring, value: str, template: str = DEFAULT_TEMPLATE
) -> Found | None:
    """A bare token, or one pasted with its Subject bracket or as a References anchor."""
    text = value.strip()
    candidates = chain(
        [text], find_tokens(text, template), filter(None, [token_from_anchor(text)])
    )
    for candidate in candidates:
        number = keyring.verify(candidate)
        if number is not None:
            return _found(reader, reader.case_for_number(number), "token")
    raise BadLookupKey(
        f"invalid token {text!r}: it does not verify with the configured keys "
        "(mistyped, forged, or signed with a key that is no longer configured)"
    )


def lookup_thread_index(reader: CaseReader, value: str) -> Found | None:
    root = thread_index.conversation_root(value)
    if root is None:
        raise BadLookupKey(f"{value!r} is not a Thread-Index value (base64 of 22 + 5n bytes "
                           "naming a conversation GUID)")
    hit = reader.find(AliasKind.THREAD_ROOT, root.hex())
    return _found(reader, hit.case_id if hit else None, "thread-index")


def reply_targets(reader: CaseReader, found: Found, now: int,
                  reopen_within: int) -> list[Target]:
    """Where a person's reply to what the key named would go now, and what it would do
    there: the case rules' own walk (`rules.apply`) from the case the key named, as the
    milter takes it (merges, a split's children, a closed case's open parent or follow-up,
    a resolved case reopened or, past `cases.reopen_within`, continued in a new case)."""
    return apply(found.named, reader, automatic=False, now=now, reopen_within=reopen_within)


# --- changing ---------------------------------------------------------------------------------


def set_state(index: CaseIndex, ref: str, state: str, now: int) -> CaseRecord:
    """The case with its new state, as the app's `X-Case-State` sets it (`rules.with_state`:
    the state it has already writes nothing)."""
    try:
        new_state = CaseState(state)
    except ValueError:
        raise AdminError(f"unknown state {state!r}; choose one of {', '.join(STATES)}") from None
    case = require(index, ref)
    _refuse_merged(index, case, "its state changes nothing", "set the state of")
    # One read-modify-write: the milter may be changing the case (its queue, its state) now.
    return _change(index, case.case_id, partial(with_state, state=new_state, now=now))


def _refuse_merged(reader: CaseReader, case: CaseRecord, effect: str, instead: str) -> None:
    """A change to a merged case, which no mail reaches, is refused with where mail goes."""
    if case.merged_into is not None:
        raise AdminError(
            f"case {case.case_id} is merged into {case.merged_into}: its mail goes there, so "
            f"{effect}; {instead} {survivor(case, reader).case_id} instead"
        )


def _merge_path(reader: CaseReader, start: CaseRecord, stop: str) -> list[str]:
    """Case ids along `start`'s merge chain, `start` first, ending early at `stop`.

    The walk ends where the rules' walk would: at a case not merged further, at a dangling
    link, or one step past MAX_HOPS (the caller refuses such a chain). A loop is refused.
    """
    path = [start.case_id]
    case = start
    while case.merged_into is not None and case.case_id != stop and len(path) <= MAX_HOPS:
        if case.merged_into in path:
            raise AdminError(
                f"the merge chain of {start.case_id} loops ({' -> '.join(path)} -> "
                f"{case.merged_into}); merge one of these cases elsewhere first"
            )
        following = reader.get_case(case.merged_into)
        if following is None:
            break
        path.append(following.case_id)
        case = following
    return path


def merge(index: CaseIndex, from_ref: str, into_ref: str, now: int) -> tuple[CaseRecord, str]:
    """Merge FROM into INTO: FROM's mail goes to INTO from now on.

    Returns FROM's new record and the surviving case id (INTO, or where INTO's own merges lead).
    """
    source = require(index, from_ref)
    target = require(index, into_ref)
    if source.case_id == target.case_id:
        raise AdminError(f"cannot merge case {source.case_id} into itself")
    path = _merge_path(index, target, stop=source.case_id)
    if path[-1] == source.case_id:
        raise AdminError(
            f"cannot merge {source.case_id} into {target.case_id}: {' -> '.join(path)} is "
            "already merged the other way, so this would make a cycle"
        )
    # The rules follow at most MAX_HOPS merge links from the case a message names; FROM would
    # be one link more than INTO's chain (len(path) - 1 links).
    if len(path) > MAX_HOPS:
        raise AdminError(
            f"cannot merge {source.case_id} into {target.case_id}: {target.case_id}'s merge "
            f"chain is {MAX_HOPS} or more links long, past what the rules follow; merge into "
            "the case at its end instead"
        )
    record = _change(index, source.case_id,
                     lambda cur: replace(cur, merged_into=target.case_id, updated=now))
    return record, path[-1]


def _reaches(reader: CaseReader, start: CaseRecord, goal: str) -> bool:
    """True when `goal` is reachable from `start` through children and merge links."""
    seen = {start.case_id}
    todo = [start]
    while todo:
        case = todo.pop()
        for link in chain(case.children, [case.merged_into] if case.merged_into else []):
            if link == goal:
                return True
            if link in seen:
                continue
            if len(seen) >= MAX_WALK:
                raise AdminError(
                    f"cannot check {start.case_id} for cycles: its splits and merges link more "
                    f"than {MAX_WALK} cases"
                )
            seen.add(link)
            following = reader.get_case(link)
            if following is not None:
                todo.append(following)
    return False


def split(
    index: CaseIndex, ref: str, child_refs: Sequence[str], create: int, now: int
) -> tuple[CaseRecord, list[CaseRecord]]:
    """Split a case: mail for it goes to each of its children from now on.

    `child_refs` name existing cases; `create` new cases are made (in the case's queue, with
    their parent link set to it). Returns the case's new record and the created children.
    """
    case = require(index, ref)
    if create < 0:
        raise AdminError("--create needs a number of new cases, 0 or more")
    if not child_refs and not create:
        raise AdminError(f"name the cases {case.case_id} splits into, or --create N new ones")
    _refuse_merged(index, case, f"children of {case.case_id} would never be used", "split")
    added: list[str] = []
    for child_ref in child_refs:
        child = require(index, child_ref)
        if child.case_id == case.case_id:
            raise AdminError(f"cannot split case {case.case_id} into itself")
        if child.case_id in case.children or child.case_id in added:
            continue
        if _reaches(index, child, case.case_id):
            raise AdminError(
                f"cannot split {case.case_id} into {child.case_id}: {case.case_id} is already "
                f"among the children or merge targets of {child.case_id}, so this would make "
                "a cycle"
            )
        added.append(child.case_id)
    total = len(case.children) + len(added) + create
    if total > MAX_SPLIT_CHILDREN:
        raise AdminError(
            f"cannot split {case.case_id} into {total} cases: mail goes to at most "
            f"{MAX_SPLIT_CHILDREN} children"
        )
    created: list[CaseRecord] = []
    for _ in range(create):
        # A random Outlook root, as the engine gives every case it opens: a derived one could
        # be worked out by a stranger (outbound.new_case_root).
        fresh = index.create_case(now, queue=case.queue,
                                  thread_root=thread_index.new_root(now).hex())
        created.append(_change(index, fresh.case_id,
                               lambda cur: replace(cur, parent=case.case_id)))
    new_ids = [*added, *(c.case_id for c in created)]

    def add_children(cur: CaseRecord) -> CaseRecord:
        more = tuple(c for c in new_ids if c not in cur.children)
        return replace(cur, children=(*cur.children, *more), updated=now)

    return _change(index, case.case_id, add_children), created


def set_parent(index: CaseIndex, ref: str, parent_ref: str | None, now: int) -> CaseRecord:
    """Set (or with None clear) the parent a closed case's mail walks up to."""
    case = require(index, ref)
    if parent_ref is None:
        return _change(index, case.case_id, lambda cur: replace(cur, parent=None, updated=now))
    parent = require(index, parent_ref)
    if parent.case_id == case.case_id:
        raise AdminError(f"a case cannot be its own parent ({case.case_id})")
    live = survivor(parent, index)
    if live.children:  # the rules never walk up to it: it would be a parent in name only
        raise AdminError(
            f"cannot make {parent.case_id} the parent of {case.case_id}: "
            f"{live.case_id} was split into {', '.join(live.children)}, and a closed case "
            "never walks up to a split case; make one of its children the parent instead")
    # Walk up the way the rules do (each parent through its merges), looking for `case`.
    walked = [case.case_id]
    step: CaseRecord | None = parent
    for hops in range(MAX_HOPS + 1):
        if step is None or step.case_id in walked[1:]:
            break  # the end, or a loop above us that the rules stop at anyway
        if hops == MAX_HOPS:
            raise AdminError(
                f"cannot make {parent.case_id} the parent of {case.case_id}: its parent chain "
                f"is longer than {MAX_HOPS - 1} links, which the rules do not follow"
            )
        live = survivor(step, index)
        for name in dict.fromkeys((step.case_id, live.case_id)):
            walked.append(name)
            if name == case.case_id:
                raise AdminError(
                    f"cannot make {parent.case_id} the parent of {case.case_id}: "
                    f"{' -> '.join(walked)} would be a cycle"
                )
        step = index.get_case(live.parent) if live.parent else None
    return _change(index, case.case_id,
                   lambda cur: replace(cur, parent=parent.case_id, updated=now))


def _change(
    index: CaseIndex, case_id: str, change: Callable[[CaseRecord], CaseRecord | None]
) -> CaseRecord:
    """One read-modify-write (the milter may be changing the same case right now); `change`
    returns None to write nothing."""
    record = index.modify_case(case_id, change)
    if record is None:
        raise CaseNotFound(f"no case {case_id}")
    return record


# --- output -----------------------------------------------------------------------------------


def record_dict(case: CaseRecord) -> dict[str, Any]:
    """A case as the case commands print it: export's fields, the id as `case_id`."""
    return case_fields(case, "case_id")


def found_dict(found: Found, reply: Sequence[Target] = ()) -> dict[str, Any]:
    data = record_dict(found.case)
    data["via"] = found.via
    # Differs from case_id when the key named a case that was merged away.
    data["named"] = found.named.case_id
    if reply:
        # Each case a reply goes to and what it does there (`new-related`: a new case is
        # opened, related to that one), as `filter --explain` writes the rules' line.
        data["reply"] = [{"case_id": t.case.case_id, "action": t.action.value} for t in reply]
    return data


def _text_value(key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return ", ".join(" ".join(str(x) for x in v.values()) for v in value)
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    if key in {"created", "updated", "state_changed"} and isinstance(value, int):
        stamp = dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"{stamp} ({value})"
    return str(value)


def as_text(data: dict[str, Any]) -> str:
    """`key: value` lines (lists space-separated, times as UTC and Unix seconds)."""
    lines = []
    for key, value in data.items():
        text = _text_value(key, value)
        lines.append(f"{key}: {text}" if text else f"{key}:")
    return "\n".join(lines)
