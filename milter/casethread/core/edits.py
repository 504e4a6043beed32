"""Edits the core asks for, as values. The pymilter adapter and `filter` apply the same list.

Indexes follow the milter protocol: 1-based, counted among fields of the same name
(case-insensitive), in the message as received. Removals are emitted highest index first so an
MTA that renumbers after a deletion still removes the right fields.
"""

from __future__ import annotations

from .frozen import frozen
from .message import Header


@frozen
class AddHeader:
    name: str
    value: str


@frozen
class ChangeHeader:
    """Replace the value of the `index`-th field called `name`; an empty value deletes it."""

    name: str
    index: int
    value: str


Edit = AddHeader | ChangeHeader


def remove_header(name: str, index: int) -> ChangeHeader:
    return ChangeHeader(name, index, "")


def as_written(headers: tuple[Header, ...], edits: tuple[Edit, ...]) -> tuple[Edit, ...]:
    """`edits` with each field change named as the message writes that field (`SUBJECT`,
    `references`). Postfix writes a changed field under the name the milter gives, Sendmail
    under the name it had: so both keep the sender's spelling, as `apply_edits` does."""
    if not any(isinstance(edit, ChangeHeader) and edit.value for edit in edits):
        return edits
    spelled: dict[tuple[str, int], str] = {}
    seen: dict[str, int] = {}
    for h in headers:
        key = h.name.lower()
        seen[key] = seen.get(key, 0) + 1
        spelled[(key, seen[key])] = h.name
    return tuple(
        ChangeHeader(spelled.get((edit.name.lower(), edit.index), edit.name), edit.index,
                     edit.value)
        if isinstance(edit, ChangeHeader) and edit.value else edit
        for edit in edits
    )


def apply_edits(headers: tuple[Header, ...], edits: list[Edit]) -> tuple[Header, ...]:
    """The header list as the MTA would leave it (added fields go last: the adapter inserts
    them past the last field, which Postfix and Sendmail both append)."""
    changes: dict[tuple[str, int], str] = {}
    added: list[Header] = []
    for edit in edits:
        if isinstance(edit, ChangeHeader):
            changes[(edit.name.lower(), edit.index)] = edit.value
        else:
            added.append(Header(edit.name, edit.value))
    seen: dict[str, int] = {}
    result: list[Header] = []
    for h in headers:
        key = h.name.lower()
        seen[key] = seen.get(key, 0) + 1
        new_value = changes.get((key, seen[key]))
        if new_value is None:
            result.append(h)
        elif new_value:
            result.append(Header(h.name, new_value))
    return tuple(result + added)
