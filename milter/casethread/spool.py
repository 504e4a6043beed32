"""A message body as the milter receives it: in memory while small, in a temporary file past a
threshold, so a 50 MB message costs the milter no more than a few chunks of heap.

The spooled file is read back through `mmap`: the core splits and stamps it in place (its
parsers take `bytes | mmap`), and the new body streams out of it in chunks.
"""

from __future__ import annotations

import mmap
import tempfile
from typing import IO

from .core.message import Data


class BodySpool:
    def __init__(self, threshold: int) -> None:
        self._threshold = threshold
        self._memory = bytearray()
        self._file: IO[bytes] | None = None
        self._map: mmap.mmap | None = None

    def write(self, chunk: bytes) -> None:
        if self._file is not None:
            self._file.write(chunk)
            return
        self._memory += chunk
        if len(self._memory) > self._threshold:
            # Kept open across callbacks and closed by close(): no `with` can span that.
            self._file = tempfile.TemporaryFile(prefix="casethread-body-")  # noqa: SIM115
            self._file.write(self._memory)
            self._memory = bytearray()

    def data(self) -> Data:
        """The whole body; valid until `close()`."""
        if self._file is None:
            return bytes(self._memory)
        if self._map is None:
            self._file.flush()
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map

    def close(self) -> None:
        """Forget the body (the spool can be reused for the next message)."""
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._file is not None:
            self._file.close()  # a TemporaryFile is already unlinked: closing frees it
            self._file = None
        self._memory = bytearray()
