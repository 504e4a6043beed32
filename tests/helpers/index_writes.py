"""Index writes tests set up, made through the contract's own calls (`record`, `modify_case`),
as the engine and `casethread case ...` make them."""

from __future__ import annotations

from casethread.core.model import Alias, AliasKind, CaseRecord, CounterBump
from casethread.core.store import CaseIndex


def record_message(index: CaseIndex, message_id: str, case_id: str, now: int) -> None:
    """Record one Message-ID of a case."""
    index.record([Alias(AliasKind.MESSAGE, message_id, case_id)], now)


def count_event(index: CaseIndex, key: str, now: int, window: int) -> int:
    """Count one event for `key`; the count its window holds afterwards (read after the write:
    under threads, read the total at the end instead)."""
    index.record((), now, [CounterBump(key, window)])
    counted = index.peek_counter(key)
    assert counted is not None
    return counted.count


def store(index: CaseIndex, record: CaseRecord) -> None:
    """Replace a case's record (its state, links), whatever the case rules would say."""
    if index.modify_case(record.case_id, lambda _current: record) is None:
        raise KeyError(record.case_id)
