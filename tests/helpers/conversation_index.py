"""Outlook's conversation index read back, for tests of what `core.thread_index` writes
([MS-OXOMSG] §2.2.1.3: the header block, then 5-byte child blocks)."""

from __future__ import annotations

from dataclasses import dataclass

from casethread.core import thread_index as ti

TICKS_PER_SECOND = 10_000_000
# A child's TimeDelta holds bits 48..18 of the time difference (delta code 0) or 53..23 (1).
DELTA_SHIFT = {0: 18, 1: 23}


def filetime_to_unix(filetime: int) -> float:
    return (filetime - ti.unix_to_filetime(0)) / TICKS_PER_SECOND


@dataclass(frozen=True)
class Child:
    """One response level; `delta` in FILETIME ticks (the dropped low bits zero)."""

    delta_code: int
    delta: int
    random: int


@dataclass(frozen=True)
class ConversationIndex:
    filetime: int  # the header time, its dropped bits zero
    guid: bytes
    children: tuple[Child, ...]

    @property
    def time(self) -> float:
        """The header time as a Unix timestamp."""
        return filetime_to_unix(self.filetime)

    @property
    def child_times(self) -> tuple[float, ...]:
        """Each child's time as a Unix timestamp: the header time plus its delta."""
        return tuple(filetime_to_unix(self.filetime + c.delta) for c in self.children)

    @property
    def depth(self) -> int:
        return len(self.children)


def parse(raw: bytes) -> ConversationIndex:
    """Header time, GUID and children of a conversation index (ValueError if invalid)."""
    header_time = ti.header_filetime(raw)  # checks the layout first
    children = []
    for at in range(ti.HEADER_LEN, len(raw), ti.CHILD_LEN):
        word = int.from_bytes(raw[at : at + 4], "big")
        code = word >> 31
        children.append(Child(code, (word & 0x7FFF_FFFF) << DELTA_SHIFT[code], raw[at + 4]))
    return ConversationIndex(header_time, bytes(raw[6 : ti.HEADER_LEN]), tuple(children))
