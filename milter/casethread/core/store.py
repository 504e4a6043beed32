"""The index contract as the core and the engine see it.

Implementations live in `casethread.index` (LMDB and in-memory); one contract test suite runs
against both. Keys arrive already normalised by the core; hashing over-long or private keys
(participant addresses are stored hashed) is the index's business.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from .frozen import frozen
from .model import Alias, AliasHit, AliasKind, CaseRecord, CaseState, CounterBump

# The aliases a new case is created with (see CaseIndex.create_case); may run more than once.
NewCaseAliases = Callable[[CaseRecord], Sequence[Alias]]
# A case's new record from its current one (None: leave it); pure, see CaseIndex.modify_case.
CaseChange = Callable[[CaseRecord], CaseRecord | None]
# The changes to other cases that come with a new one (a closed case names its follow-up).
NewCaseChanges = Callable[[CaseRecord], Sequence[tuple[str, CaseChange]]]


class StaleDecision(Exception):
    """A write's `Expect` no longer held: another message or the CLI wrote first. Nothing was
    written; the message is decided again on what is there now."""


def _links(case: CaseRecord) -> tuple[object, ...]:
    return (case.parent, case.merged_into, case.children, case.followup)


def unchanged(read: CaseRecord, current: CaseRecord | None) -> bool:
    """Whether the case rules would read `current` as they read `read`: its state, when it
    took it, and its links (not `updated` or `queue`: every reply changes those, and two
    replies threading into one case do not contradict each other). A waiting case another
    reply opened meanwhile counts as unchanged: the mail threads into it either way
    (`rules.transition` opens only a case still waiting). Decoded records are cached, so an
    unchanged one is mostly the very object read."""
    if current is read:
        return True
    if current is None or _links(current) != _links(read):
        return False
    if current.state is read.state:
        return current.state_changed == read.state_changed
    return read.state is CaseState.WAITING and current.state is CaseState.OPEN


@frozen
class Expect:
    """What a message's decision read and relies on, checked again inside its write
    transaction: mail decided from a read taken before another writer committed (a second
    reply to a closed case, a second copy of one mail, a `case set-state` from the CLI) would
    otherwise open a second follow-up or case, or undo the other writer's change."""

    # Aliases that named no case (this mail's Message-ID: no copy of it was recorded
    # meanwhile). An alias left by a case that is gone names none.
    absent: tuple[tuple[AliasKind, str], ...] = ()
    # Cases whose state and links are still as they were read (`unchanged`).
    cases: tuple[CaseRecord, ...] = ()

    def holds(self, named: Callable[[AliasKind, str], str | None],
              current: Callable[[str], CaseRecord | None]) -> bool:
        """`named` gives the case id an alias names, `current` a case's record, as the write
        transaction sees them."""
        for kind, key in self.absent:
            case_id = named(kind, key)
            if case_id is not None and current(case_id) is not None:
                return False
        for case in self.cases:  # noqa: SIM110 (not all() of a generator: asked of every reply)
            if not unchanged(case, current(case.case_id)):
                return False
        return True

    def check(self, named: Callable[[AliasKind, str], str | None],
              current: Callable[[str], CaseRecord | None]) -> None:
        """Raise `StaleDecision` unless the expectation `holds`."""
        if not self.holds(named, current):
            raise StaleDecision("a concurrent write changed what this decision read")


class CounterWindow(Protocol):
    """A counter's window as an index holds it (`index.keys.Window`)."""

    @property
    def start(self) -> int:
        """When the window began (Unix seconds)."""

    @property
    def count(self) -> int:
        """The events counted in it."""


class CaseLookup(Protocol):
    def get_case(self, case_id: str) -> CaseRecord | None:
        """The case record, or None when no such case exists."""


class CaseReader(CaseLookup, Protocol):
    def find(self, kind: AliasKind, key: str) -> AliasHit | None:
        """The case an alias names, with when it was last recorded, or None."""

    def case_for_number(self, number: int) -> str | None:
        """The case id that holds a case number (tokens carry numbers), or None."""

    def case_for_message(self, message_id: str) -> str | None:
        """Shorthand for `find(AliasKind.MESSAGE, message_id)`'s case id."""

    def next_count(self, key: str, now: int, window: int) -> int:
        """The count one more bump of `key` at `now` would reach (a `CounterBump` of `window`
        seconds), without counting."""


class CaseIndex(CaseReader, Protocol):
    def create_case(
        self, now: int, case_id: str | None = None, queue: str = "",
        aliases: NewCaseAliases | None = None, bumps: Sequence[CounterBump] = (),
        thread_root: str | None = None, changes: NewCaseChanges | None = None,
        expect: Expect | None = None, number_above: int = 0, follows: str | None = None,
    ) -> CaseRecord:
        """Atomically create a case and return it.

        With no `case_id`, allocate the next number and name it with the configured prefix
        (skipping ids already taken by adopted cases). With a `case_id`, adopt it: return the
        existing record if the case exists, else create it with the next number.

        `aliases` gives the aliases of the new case, recorded at `now`, and `bumps` are counted,
        in the same transaction: a new case and its first message cost one commit. Both come
        with a generated case only (an adopted one may exist already, and would skip them).
        `thread_root` is the Outlook root of the mail that opens the case, if it had one.
        `changes` (generated cases only) are applied to other cases in the same transaction,
        as by `record`. With `expect`, nothing is written and `StaleDecision` is raised when
        it does not hold inside the transaction. A generated case's number is above
        `number_above` too (a token named a case the index lost: its number stays its own).
        `follows` names the case a generated follow-up continues (`CaseRecord.follows`).
        """

    def record(
        self, aliases: Sequence[Alias], now: int, bumps: Sequence[CounterBump] = (),
        changes: Sequence[tuple[str, CaseChange]] = (), expect: Expect | None = None,
    ) -> dict[str, CaseRecord]:
        """Map each alias to its case (overwriting), count `bumps` and apply `changes` (case
        id, change as for `modify_case`), all in one transaction: a message's writes at its
        end cost one commit. Returns each changed case's record as stored afterwards (an
        unknown case is left out). With `expect`, as for `create_case`.

        Counters count in fixed windows: a window older than its bump's `window` seconds
        restarts at 1, so counters expire by themselves."""

    def peek_counter(self, key: str) -> CounterWindow | None:
        """The window a counter last counted in, without counting (None: none yet). A dry
        run's overlay starts its counters from these."""

    def last_number(self) -> int:
        """The highest case number handed out so far (0 for an empty index)."""

    def modify_case(
        self, case_id: str, change: Callable[[CaseRecord], CaseRecord | None]
    ) -> CaseRecord | None:
        """Read-modify-write in one transaction: `change` gets the current record and returns
        the new one (None: leave it). Returns the record as stored, None for an unknown case.
        `change` must be pure: an index may call it more than once (e.g. on a first read that
        finds nothing to change, needing no write at all).

        The milter changes cases while the CLI may too (merge, set-state): deriving the new
        record from a fresh read inside the write transaction loses neither change.
        """

    def snapshot(self) -> AbstractContextManager[None]:
        """A context in which this thread's reads may share one view of the index (LMDB: one
        read transaction, where each read would begin its own); a write inside it ends that
        view, so what is read after a write sees it."""

    def close(self) -> None:
        """Release the index; further calls are errors."""
