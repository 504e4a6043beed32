"""What the engine fuzz tests share: CPython's MIME corpus (read in place, never copied), and the
checks of a decision against the message as the MTA would pass it on."""

from __future__ import annotations

import email
import importlib
import mmap
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from casethread.core.edits import AddHeader, ChangeHeader, Edit, apply_edits
from casethread.core.message import Header, parse_raw, serialize
from casethread.core.stamp import apply_splices

# CPython's own test package, as installed with this Python: its MIME corpus is read in place.
CPYTHON_CORPUS = Path(str(importlib.import_module("test").__file__)).parent / "test_email" / "data"


def without_unix_from(raw: bytes) -> bytes:
    """An MTA never passes the mbox "From " line to a filter."""
    return raw.split(b"\n", 1)[1] if raw.startswith(b"From ") else raw


def corpus_messages() -> list[bytes]:
    """CPython's MIME test messages, as an MTA would pass them."""
    return [without_unix_from(p.read_bytes()) for p in sorted(CPYTHON_CORPUS.glob("msg_*.txt"))]


def as_body(data: bytes, use_mmap: bool) -> bytes | mmap.mmap:
    """`data`, or a map of it as the milter passes a spooled body."""
    if not use_mmap or not data:
        return data
    mapped = mmap.mmap(-1, len(data))
    mapped.write(data)
    mapped.seek(0)
    return mapped


BAD_NAME = re.compile(r"[!-9;-~]+")
BAD_VALUE = re.compile(r"\r|\x00|\n(?![ \t])|\n[ \t]*(?:\n|$)")


def check_edits(edits: Sequence[Edit]) -> None:
    """Nothing we write carries CR or NUL, a LF only as folding; names are RFC 5322 ftext."""
    for e in edits:
        if isinstance(e, AddHeader):
            assert BAD_NAME.fullmatch(e.name), e
        else:
            assert isinstance(e, ChangeHeader) and e.index >= 1, e
        if e.value:
            assert not BAD_VALUE.search(e.value), e


def unfolded(value: str) -> str:
    return re.sub(r"\r?\n(?=[ \t])", "", value).strip()


def check_output(headers: tuple[Header, ...], body: bytes, newline: bytes, decision: Any,
                 tally: Counter[str]) -> bytes:
    """The message as the MTA would pass it on (edits and body splices applied) parses, with
    exactly the fields expected (none injected) and ours as written; returns it."""
    expected = apply_edits(headers, list(decision.edits))
    new_body = apply_splices(body, decision.body_splices)
    out = serialize(expected, new_body, newline)
    # Our own reader (the MTA's view): the same fields, none injected, ours as written.
    got, _ = parse_raw(out)
    assert [h.name for h in got] == [h.name for h in expected]
    added = [e for e in decision.edits if isinstance(e, AddHeader)]
    tail = got[len(got) - len(added) :] if added else ()
    assert [(h.name, unfolded(h.value)) for h in tail] == [
        (e.name, unfolded(e.value)) for e in added
    ]
    # The stdlib parser reads it, every part of it.
    parsed = email.message_from_bytes(out)
    parts = list(parsed.walk())
    assert parts
    for part in parts:
        part.get_content_type()
        part.get_payload(decode=True)
    # Where the stdlib reads the header section as we do, it sees our fields as written.
    if len(parsed.keys()) == len(got):
        assert parsed.keys()[len(got) - len(added) :] == [e.name for e in added]
        tally["stdlib agrees"] += 1
    else:
        tally["stdlib reads the header differently (input)"] += 1
    if decision.body_splices:
        tally["body stamped"] += 1
    return out
