"""casethread.case_admin on a MemoryIndex: every operation, every refusal, and lookups."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import pytest

from casethread import case_admin
from casethread.case_admin import AdminError, BadLookupKey, CaseNotFound
from casethread.core import rules, thread_index
from casethread.core.model import Alias, AliasKind, CaseRecord, CaseState
from casethread.core.token import Keyring, anchor
from casethread.index import LmdbIndex, MemoryIndex

from ..helpers.index_writes import record_message, store

T0 = 1_772_442_900
LATER = T0 + 3600
KEYRING = Keyring([(1, bytes(range(32)))])


@pytest.fixture
def index() -> MemoryIndex:
    idx = MemoryIndex("C-", 6)
    for _ in range(6):
        idx.create_case(T0, queue="support")
    return idx


def get(index: MemoryIndex, case_id: str) -> CaseRecord:
    case = index.get_case(case_id)
    assert case is not None, case_id
    return case


def link(index: MemoryIndex, case_id: str, **fields: object) -> None:
    """Set links directly, bypassing the admin checks (to build corrupt or long chains)."""
    store(index, replace(get(index, case_id), **fields))  # type: ignore[arg-type]


def snapshot(index: MemoryIndex) -> list[CaseRecord]:
    return [get(index, f"C-{n:06d}") for n in range(1, index.last_number() + 1)]


# --- set-state --------------------------------------------------------------------------------


def test_set_state_changes_state_and_times(index: MemoryIndex) -> None:
    record = case_admin.set_state(index, "C-000001", "resolved", LATER)
    assert record.state is CaseState.RESOLVED
    assert (record.updated, record.state_changed) == (LATER, LATER)
    assert get(index, "C-000001") == record


def test_set_state_to_the_state_it_has_writes_nothing(tmp_path: Path) -> None:
    """As the app's X-Case-State: neither the reopen window nor `updated` (what an import
    --merge compares) moves. On a real index: LMDB writes nothing when the change is None."""
    index = LmdbIndex(tmp_path / "index", 1 << 20)
    try:
        index.create_case(T0, queue="support")
        first = case_admin.set_state(index, "C-000001", "resolved", LATER)
        again = case_admin.set_state(index, "C-000001", "resolved", LATER + 50)
        assert again == first == index.get_case("C-000001")
        assert (again.updated, again.state_changed) == (LATER, LATER)
    finally:
        index.close()


def test_the_app_and_the_command_line_set_a_state_alike() -> None:
    """One rule for both (`rules.with_state`): a lingering follow-up of an open case is
    forgotten by `open` even without a change of state; `state_changed` moves only with it."""
    case = CaseRecord("C-000001", 1, CaseState.OPEN, "support", T0, T0, T0,
                      followup="C-000002")
    assert rules.with_state(replace(case, followup=None), CaseState.OPEN, LATER) is None
    assert rules.with_state(case, CaseState.OPEN, LATER) == replace(case, followup=None,
                                                                     updated=LATER)
    closed = rules.with_state(case, CaseState.CLOSED, LATER)
    assert closed == replace(case, state=CaseState.CLOSED, updated=LATER, state_changed=LATER)


def test_reopening_by_hand_forgets_the_follow_up(index: MemoryIndex) -> None:
    """A later close must not send replies on to the follow-up an earlier close left."""
    index.modify_case("C-000001", lambda c: replace(c, state=CaseState.CLOSED,
                                                     followup="C-000002"))
    assert case_admin.set_state(index, "C-000001", "closed", LATER).followup == "C-000002"
    assert case_admin.set_state(index, "C-000001", "open", LATER).followup is None


def test_set_state_by_case_number(index: MemoryIndex) -> None:
    assert case_admin.set_state(index, "3", "closed", LATER).case_id == "C-000003"
    assert get(index, "C-000003").state is CaseState.CLOSED


def test_set_state_refusals(index: MemoryIndex) -> None:
    case_admin.merge(index, "C-000002", "C-000001", LATER)
    before = snapshot(index)
    with pytest.raises(AdminError, match=r"merged into C-000001: .* set the state of C-000001"):
        case_admin.set_state(index, "C-000002", "closed", LATER)
    with pytest.raises(AdminError, match="unknown state 'done'"):
        case_admin.set_state(index, "C-000001", "done", LATER)
    with pytest.raises(CaseNotFound, match="no case C-000099"):
        case_admin.set_state(index, "C-000099", "open", LATER)
    with pytest.raises(CaseNotFound, match="not a case id"):
        case_admin.set_state(index, "C 1", "open", LATER)
    assert snapshot(index) == before


# --- merge ------------------------------------------------------------------------------------


def test_merge_links_and_rules_follow(index: MemoryIndex) -> None:
    record, final = case_admin.merge(index, "C-000002", "C-000001", LATER)
    assert (record.merged_into, record.updated, final) == ("C-000001", LATER, "C-000001")
    assert get(index, "C-000002") == record
    assert get(index, "C-000001").merged_into is None
    targets = rules.apply(get(index, "C-000002"), index, automatic=False, now=LATER,
                          reopen_within=3600)
    assert [t.case.case_id for t in targets] == ["C-000001"]


def test_merge_reports_the_end_of_the_target_chain(index: MemoryIndex) -> None:
    case_admin.merge(index, "C-000002", "C-000003", LATER)
    record, final = case_admin.merge(index, "C-000001", "C-000002", LATER)
    assert (record.merged_into, final) == ("C-000002", "C-000003")


def test_merge_into_itself_is_refused(index: MemoryIndex) -> None:
    with pytest.raises(AdminError, match="into itself"):
        case_admin.merge(index, "C-000001", "C-000001", LATER)
    # The same case by id and by number is still itself.
    with pytest.raises(AdminError, match="into itself"):
        case_admin.merge(index, "C-000001", "1", LATER)
    assert get(index, "C-000001").merged_into is None


def test_merge_cycles_are_refused(index: MemoryIndex) -> None:
    case_admin.merge(index, "C-000002", "C-000001", LATER)
    before = snapshot(index)
    with pytest.raises(AdminError, match=r"C-000002 -> C-000001 .*cycle"):
        case_admin.merge(index, "C-000001", "C-000002", LATER)
    # Longer: 4 -> 3 -> 1; merging 1 into 4 would close the loop.
    case_admin.merge(index, "C-000003", "C-000001", LATER)
    case_admin.merge(index, "C-000004", "C-000003", LATER)
    before = snapshot(index)
    with pytest.raises(AdminError, match=r"C-000004 -> C-000003 -> C-000001 .*cycle"):
        case_admin.merge(index, "C-000001", "C-000004", LATER)
    assert snapshot(index) == before


def test_merge_with_missing_cases_is_refused(index: MemoryIndex) -> None:
    before = snapshot(index)
    with pytest.raises(CaseNotFound, match="no case C-000077"):
        case_admin.merge(index, "C-000001", "C-000077", LATER)
    with pytest.raises(CaseNotFound, match="no case C-000077"):
        case_admin.merge(index, "C-000077", "C-000001", LATER)
    assert snapshot(index) == before


def test_merge_into_a_looping_chain_is_refused(index: MemoryIndex) -> None:
    # A corrupt index: 2 <-> 3. Merging 1 into 2 would point it into the loop.
    link(index, "C-000002", merged_into="C-000003")
    link(index, "C-000003", merged_into="C-000002")
    with pytest.raises(AdminError, match="loops"):
        case_admin.merge(index, "C-000001", "C-000002", LATER)
    assert get(index, "C-000001").merged_into is None


def test_merge_past_the_rules_hop_limit_is_refused() -> None:
    index = MemoryIndex("C-", 6)
    ids = [index.create_case(T0).case_id for _ in range(rules.MAX_HOPS + 2)]
    # ids[1] -> ids[2] -> ... -> ids[-1]: MAX_HOPS links.
    for here, there in pairwise(ids[1:]):
        link(index, here, merged_into=there)
    with pytest.raises(AdminError, match="or more links long"):
        case_admin.merge(index, ids[0], ids[1], LATER)
    # One link shorter is still followed by the rules, so it is accepted.
    _record, final = case_admin.merge(index, ids[0], ids[2], LATER)
    assert final == ids[-1]
    assert rules.survivor(get(index, ids[0]), index).case_id == ids[-1]


def test_merge_into_a_dangling_chain_stops_where_the_rules_do(index: MemoryIndex) -> None:
    link(index, "C-000002", merged_into="C-000088")  # a case that no longer exists
    _record, final = case_admin.merge(index, "C-000001", "C-000002", LATER)
    assert final == "C-000002"


# --- split ------------------------------------------------------------------------------------


def test_split_into_existing_cases(index: MemoryIndex) -> None:
    record, created = case_admin.split(index, "C-000001", ["C-000002", "C-000003"], 0, LATER)
    assert record.children == ("C-000002", "C-000003")
    assert record.updated == LATER
    assert created == []
    assert get(index, "C-000001") == record
    # Existing children keep their own links.
    assert get(index, "C-000002").parent is None
    targets = rules.apply(record, index, automatic=False, now=LATER, reopen_within=3600)
    assert [t.case.case_id for t in targets] == ["C-000002", "C-000003"]


def test_split_creates_children_with_parent_and_queue(index: MemoryIndex) -> None:
    record, created = case_admin.split(index, "C-000001", ["C-000002"], 2, LATER)
    assert [c.case_id for c in created] == ["C-000007", "C-000008"]
    assert record.children == ("C-000002", "C-000007", "C-000008")
    for child in created:
        stored = get(index, child.case_id)
        assert stored == child
        assert (stored.parent, stored.queue, stored.state) == ("C-000001", "support",
                                                               CaseState.OPEN)


def test_split_only_creating(index: MemoryIndex) -> None:
    record, created = case_admin.split(index, "C-000001", [], 1, LATER)
    assert record.children == ("C-000007",) == tuple(c.case_id for c in created)


def test_split_again_adds_children_without_duplicates(index: MemoryIndex) -> None:
    case_admin.split(index, "C-000001", ["C-000002"], 0, LATER)
    record, _ = case_admin.split(index, "C-000001", ["C-000002", "C-000003", "3"], 0, LATER)
    assert record.children == ("C-000002", "C-000003")


def test_split_refusals_change_nothing(index: MemoryIndex) -> None:
    case_admin.split(index, "C-000002", ["C-000003"], 0, LATER)  # 2 -> {3}
    case_admin.merge(index, "C-000004", "C-000001", LATER)  # 4 merged into 1
    case_admin.merge(index, "C-000006", "C-000005", LATER)  # 6 merged into 5
    before = snapshot(index)
    refusals = [
        (("C-000001", ["C-000001"], 0), "into itself"),
        (("C-000001", ["C-000002", "C-000099"], 1), "no case C-000099"),
        (("C-000099", ["C-000001"], 0), "no case C-000099"),
        # 3 is a child of 2: making 2 a child of 3 is a loop.
        (("C-000003", ["C-000002"], 0), "cycle"),
        # 4's mail goes to 1: a child of 1 that leads back to 1.
        (("C-000001", ["C-000004"], 0), "cycle"),
        # 6 is merged away: its children would never be used.
        (("C-000006", ["C-000001"], 0), "split C-000005 instead"),
        (("C-000001", [], 0), "--create N"),
        (("C-000001", [], -1), "--create"),
        (("C-000001", [], rules.MAX_SPLIT_CHILDREN + 1), "at most 16 children"),
    ]
    for call, message in refusals:
        with pytest.raises(AdminError, match=message):
            case_admin.split(index, *call, LATER)
    # Nothing was written, in particular no case was created before a refusal.
    assert index.last_number() == 6
    assert snapshot(index) == before


def test_split_cycle_through_deeper_links(index: MemoryIndex) -> None:
    # 2 -> {3}, 3 merged into 4, 4 -> {1}: making 2 a child of 1 closes 1 -> 2 -> 3 = 4 -> 1.
    case_admin.split(index, "C-000002", ["C-000003"], 0, LATER)
    case_admin.merge(index, "C-000003", "C-000004", LATER)
    case_admin.split(index, "C-000004", ["C-000001"], 0, LATER)
    with pytest.raises(AdminError, match="cycle"):
        case_admin.split(index, "C-000001", ["C-000002"], 0, LATER)
    assert get(index, "C-000001").children == ()


def test_split_counts_existing_children_against_the_limit() -> None:
    index = MemoryIndex("C-", 6)
    for _ in range(rules.MAX_SPLIT_CHILDREN + 2):
        index.create_case(T0)
    first = [f"C-{n:06d}" for n in range(2, rules.MAX_SPLIT_CHILDREN + 2)]
    record, _ = case_admin.split(index, "C-000001", first, 0, LATER)
    assert len(record.children) == rules.MAX_SPLIT_CHILDREN
    with pytest.raises(AdminError, match="17 cases"):
        case_admin.split(index, "C-000001", [f"C-{rules.MAX_SPLIT_CHILDREN + 2:06d}"], 0, LATER)


# --- parent -----------------------------------------------------------------------------------


def test_parent_set_and_clear(index: MemoryIndex) -> None:
    record = case_admin.set_parent(index, "C-000002", "C-000001", LATER)
    assert (record.parent, record.updated) == ("C-000001", LATER)
    assert get(index, "C-000002") == record
    # A closed child's mail walks up to the open parent.
    case_admin.set_state(index, "C-000002", "closed", LATER)
    targets = rules.apply(get(index, "C-000002"), index, automatic=False, now=LATER,
                          reopen_within=3600)
    assert [(t.case.case_id, t.action) for t in targets] == [("C-000001", rules.Action.THREAD)]
    cleared = case_admin.set_parent(index, "C-000002", None, LATER + 1)
    assert (cleared.parent, cleared.updated) == (None, LATER + 1)
    assert get(index, "C-000002").parent is None


def test_parent_refusals(index: MemoryIndex) -> None:
    case_admin.set_parent(index, "C-000002", "C-000001", LATER)  # 2 -> 1
    case_admin.set_parent(index, "C-000003", "C-000002", LATER)  # 3 -> 2 -> 1
    case_admin.merge(index, "C-000004", "C-000005", LATER)  # 4 merged into 5
    case_admin.split(index, "C-000006", [], 2, LATER)  # children C-000007, C-000008
    before = snapshot(index)
    refusals = [
        (("C-000001", "C-000001"), "its own parent"),
        (("C-000001", "C-000002"), "C-000001 -> C-000002 -> C-000001 would be a cycle"),
        (("C-000001", "C-000003"), "C-000001 -> C-000003 -> C-000002 -> C-000001 .*cycle"),
        # 4's mail goes to 5: 5 with parent 4 is its own parent in the rules' walk.
        (("C-000005", "C-000004"), "C-000005 -> C-000004 -> C-000005 would be a cycle"),
        (("C-000001", "C-000099"), "no case C-000099"),
        (("C-000099", "C-000001"), "no case C-000099"),
        # A split case is nobody's open ancestor (review: accepted, never walked up to).
        (("C-000003", "C-000006"), "C-000006 was split into C-000007, .*make one of its"),
    ]
    for (case_id, parent_id), message in refusals:
        with pytest.raises(AdminError, match=message):
            case_admin.set_parent(index, case_id, parent_id, LATER)
    assert snapshot(index) == before


def test_parent_chain_past_the_rules_hop_limit_is_refused() -> None:
    index = MemoryIndex("C-", 6)
    ids = [index.create_case(T0).case_id for _ in range(rules.MAX_HOPS + 2)]
    for child, parent in pairwise(ids[1:]):
        link(index, child, parent=parent)
    # ids[1] has MAX_HOPS ancestors above it.
    with pytest.raises(AdminError, match="longer than 15 links"):
        case_admin.set_parent(index, ids[0], ids[1], LATER)
    assert case_admin.set_parent(index, ids[0], ids[2], LATER).parent == ids[2]


def test_parent_above_an_existing_loop_is_accepted(index: MemoryIndex) -> None:
    # A corrupt 2 <-> 3 parent loop: the rules' walk stops there, and so does the check.
    link(index, "C-000002", parent="C-000003")
    link(index, "C-000003", parent="C-000002")
    assert case_admin.set_parent(index, "C-000001", "C-000002", LATER).parent == "C-000002"


# --- lookup -----------------------------------------------------------------------------------


def test_lookup_message_id_normalises_and_follows_merges(index: MemoryIndex) -> None:
    record_message(index, "abc.123@mail.example.com", "C-000002", T0)
    found = case_admin.lookup_message_id(index, " <abc.123@MAIL.Example.COM> ")
    assert found is not None
    assert (found.case.case_id, found.named.case_id, found.via) == ("C-000002", "C-000002",
                                                                   "message-id")
    case_admin.merge(index, "C-000002", "C-000001", LATER)
    found = case_admin.lookup_message_id(index, "abc.123@mail.example.com")
    assert found is not None
    assert (found.case.case_id, found.named.case_id) == ("C-000001", "C-000002")
    assert case_admin.lookup_message_id(index, "<other@mail.example.com>") is None
    with pytest.raises(BadLookupKey):
        case_admin.lookup_message_id(index, "<>")


WEEK = 7 * 86400
NOW = T0 + 2 * WEEK


@pytest.mark.parametrize(("links", "reply"), [
    ({}, [("C-000001", "thread")]),
    ({"C-000001": {"state": CaseState.WAITING}}, [("C-000001", "activate")]),
    ({"C-000001": {"state": CaseState.RESOLVED, "state_changed": NOW - 60}},
     [("C-000001", "reopen")]),
    # Resolved longer ago than cases.reopen_within: a new case, related to it.
    ({"C-000001": {"state": CaseState.RESOLVED}}, [("C-000001", "new-related")]),
    ({"C-000001": {"merged_into": "C-000002"}}, [("C-000002", "thread")]),
    ({"C-000001": {"children": ("C-000002", "C-000003")}},
     [("C-000002", "thread"), ("C-000003", "thread")]),
    # A closed case: its open parent, else the follow-up an earlier reply opened, else new.
    ({"C-000001": {"state": CaseState.CLOSED, "parent": "C-000004"}}, [("C-000004", "thread")]),
    ({"C-000001": {"state": CaseState.CLOSED, "followup": "C-000005"}},
     [("C-000005", "thread")]),
    ({"C-000001": {"state": CaseState.CLOSED, "followup": "C-000005"},
      "C-000005": {"state": CaseState.CLOSED, "followup": "C-000006"},
      "C-000006": {"merged_into": "C-000003"}}, [("C-000003", "thread")]),
    ({"C-000001": {"state": CaseState.CLOSED}}, [("C-000001", "new-related")]),
])
def test_lookup_says_where_a_reply_would_go(
        index: MemoryIndex, links: dict[str, dict[str, object]],
        reply: list[tuple[str, str]]) -> None:
    """Not only the merges `case` follows: the engine's walk, as a reply would take it now."""
    for case_id, fields in links.items():
        link(index, case_id, **fields)
    found = case_admin.lookup_case(index, "C-000001")
    assert found is not None
    targets = case_admin.reply_targets(index, found, NOW, reopen_within=WEEK)
    assert [(t.case.case_id, t.action.value) for t in targets] == reply
    # The same as the milter's rules for a person's reply to that case.
    assert targets == rules.apply(get(index, "C-000001"), index, automatic=False,
                                  now=NOW, reopen_within=WEEK)
    data = case_admin.found_dict(found, targets)
    assert data["reply"] == [{"case_id": c, "action": a} for c, a in reply]
    assert list(data)[-3:] == ["via", "named", "reply"]
    assert f"\nreply: {', '.join(f'{c} {a}' for c, a in reply)}" in case_admin.as_text(data)


def test_lookup_token_forms(index: MemoryIndex) -> None:
    token = KEYRING.make(get(index, "C-000003").number)
    for form in (token, token.lower(), f"Re: help [ref:{token}]", anchor(token, "example.com")):
        found = case_admin.lookup_token(index, KEYRING, form)
        assert found is not None, form
        assert (found.case.case_id, found.via) == ("C-000003", "token")


def test_lookup_token_invalid_and_unknown(index: MemoryIndex) -> None:
    token = KEYRING.make(3)
    forged = token[:-1] + ("0" if token[-1] != "0" else "1")
    with pytest.raises(BadLookupKey, match="invalid token"):
        case_admin.lookup_token(index, KEYRING, forged)
    other_key = Keyring([(1, bytes(32))])
    with pytest.raises(BadLookupKey, match="invalid token"):
        case_admin.lookup_token(index, other_key, token)
    # Genuine, but no case holds that number.
    assert case_admin.lookup_token(index, KEYRING, KEYRING.make(999)) is None


def test_lookup_thread_index(index: MemoryIndex) -> None:
    root = thread_index.new_root(T0)
    index.record([Alias(AliasKind.THREAD_ROOT, root.hex(), "C-000004")], T0)
    reply = thread_index.child(root, T0 + 60)  # a reply carries the root plus a child block
    found = case_admin.lookup_thread_index(index, thread_index.encode(reply))
    assert found is not None
    assert (found.case.case_id, found.via) == ("C-000004", "thread-index")
    other = thread_index.encode(thread_index.new_root(T0))
    assert case_admin.lookup_thread_index(index, other) is None
    with pytest.raises(BadLookupKey, match="not a Thread-Index"):
        case_admin.lookup_thread_index(index, "not base64!")
    with pytest.raises(BadLookupKey, match="conversation GUID"):
        case_admin.lookup_thread_index(index, thread_index.encode(thread_index.new_root(
            T0, bytes(16))))


def test_lookup_case_by_id_and_number(index: MemoryIndex) -> None:
    case_admin.merge(index, "C-000005", "C-000006", LATER)
    for ref in ("C-000005", "5"):
        found = case_admin.lookup_case(index, ref)
        assert found is not None
        assert (found.case.case_id, found.named.case_id, found.via) == ("C-000006", "C-000005",
                                                                       "case")
    assert case_admin.lookup_case(index, "C-000099") is None
    assert case_admin.lookup_case(index, "99") is None
    assert case_admin.lookup_case(index, "not a case") is None


# --- output -----------------------------------------------------------------------------------


def test_record_dict_and_text(index: MemoryIndex) -> None:
    case_admin.split(index, "C-000001", ["C-000002", "C-000003"], 0, LATER)
    case_admin.set_parent(index, "C-000001", "C-000004", LATER)
    data = case_admin.record_dict(get(index, "C-000001"))
    assert data == {
        "case_id": "C-000001", "number": 1, "state": "open", "queue": "support",
        "parent": "C-000004", "merged_into": None, "children": ["C-000002", "C-000003"],
        "followup": None, "thread_root": None, "created": T0, "updated": LATER, "state_changed": T0,
        "follows": None,
    }
    lines = case_admin.as_text(data).splitlines()
    assert lines[0] == "case_id: C-000001"
    assert "merged_into:" in lines
    assert "children: C-000002 C-000003" in lines
    assert "created: 2026-03-02T09:15:00Z (1772442900)" in lines


def test_found_dict_names_the_merged_case(index: MemoryIndex) -> None:
    case_admin.merge(index, "C-000002", "C-000001", LATER)
    found = case_admin.lookup_case(index, "C-000002")
    assert found is not None
    data = case_admin.found_dict(found)
    assert (data["case_id"], data["via"], data["named"]) == ("C-000001", "case", "C-000002")
