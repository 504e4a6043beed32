"""The milter's body buffer (`spool.BodySpool`): in memory up to its threshold, then a file."""

from __future__ import annotations

import errno
import mmap
import tempfile
from typing import Any

import pytest

from casethread.spool import BodySpool


def test_a_body_of_one_chunk_is_kept_as_it_came() -> None:
    # Postfix sends up to 64 KiB a chunk: most mail is one chunk, never copied.
    chunk = b"Hello Pat,\r\nthe invoice is attached.\r\n" * 100
    spool = BodySpool(1 << 20)
    assert spool.write(chunk)
    assert spool.data() is chunk


def test_chunks_are_joined_in_order() -> None:
    spool = BodySpool(1 << 20)
    for chunk in (b"first\r\n", b"", b"second\r\n", b"third\r\n"):
        assert spool.write(chunk)
    assert spool.data() == b"first\r\nsecond\r\nthird\r\n"
    spool.close()
    assert spool.data() == b""


def test_a_body_past_the_threshold_is_read_back_from_its_file() -> None:
    spool = BodySpool(1024)
    chunks = [bytes([65 + i]) * 700 for i in range(4)]
    for chunk in chunks:
        assert spool.write(chunk)
    body = spool.data()
    assert isinstance(body, mmap.mmap)
    assert body[:] == b"".join(chunks)
    spool.close()
    assert spool.write(b"next message") and spool.data() == b"next message"


def test_a_spool_that_cannot_be_made_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", full)
    spool = BodySpool(1024)
    assert spool.write(b"x" * 1000)
    assert not spool.write(b"y" * 100)
    assert spool.failure is not None and "No space left on device" in spool.failure
    assert not spool.write(b"z")
    assert spool.data() == b""
