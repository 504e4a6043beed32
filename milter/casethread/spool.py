"""A message body as the milter receives it: in memory while small, in a temporary file past a
threshold, so a 50 MB message costs the milter no more than a few chunks of heap.

The spooled file is read back through `mmap`: the core splits and stamps it in place (its
parsers take `bytes | mmap`), and the new body streams out of it in chunks.

A spool that cannot be written (a full or read-only TMPDIR) is no error of the milter's: `write`
says so and drops what it had, and the adapter passes that message by the failure policy.
"""

from __future__ import annotations

import errno
import mmap
import os
import tempfile
from typing import IO

from .core.message import Data


class BodySpool:
    def __init__(self, threshold: int) -> None:
        self._threshold = threshold
        # The chunks as the MTA sent them, joined once at the end: a body of one chunk (up to
        # 64 KiB from Postfix) is never copied, where a bytearray took a copy of each chunk
        # and another of the whole body.
        self._chunks: list[bytes] = []
        self._held = 0
        # Unbuffered: every write reaches the file at once, so a full disk shows in `write`,
        # never later in a flush at end of message.
        self._file: IO[bytes] | None = None
        self._map: mmap.mmap | None = None
        self.failure: str | None = None  # why the body could not be kept, once it could not

    def write(self, chunk: bytes) -> bool:
        """Keep `chunk`; False when the body can no longer be kept (see `failure`)."""
        if self.failure is not None:
            return False
        if self._file is not None:
            return self._to_file(chunk)
        self._chunks.append(chunk)
        self._held += len(chunk)
        if self._held <= self._threshold:
            return True
        # Over the threshold: the body so far goes from memory to a file.
        try:
            # Kept open across callbacks and closed by close(): no `with` can span that.
            self._file = tempfile.TemporaryFile(  # noqa: SIM115
                prefix="casethread-body-", buffering=0
            )
        except OSError as exc:
            return self._failed(exc)
        spilled, self._chunks, self._held = self._chunks, [], 0
        return all(self._to_file(part) for part in spilled)  # stops at the first failure

    def _to_file(self, data: bytes) -> bool:
        assert self._file is not None
        try:
            _write_all(self._file, data)
        except OSError as exc:
            return self._failed(exc)
        return True

    def _failed(self, exc: OSError) -> bool:
        self.failure = f"cannot spool the body in {tempfile.gettempdir()}: {exc.strerror}"
        self._drop()
        return False

    def data(self) -> Data:
        """The whole body; valid until `close()`."""
        if self._file is None:
            if len(self._chunks) != 1:
                self._chunks = [b"".join(self._chunks)]
            return self._chunks[0]
        if self._map is None:
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map

    def close(self) -> None:
        """Forget the body (the spool can be reused for the next message)."""
        self._drop()
        self.failure = None

    def _drop(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._file is not None:
            self._file.close()  # a TemporaryFile is already unlinked: closing frees it
            self._file = None
        self._chunks, self._held = [], 0


def _write_all(file: IO[bytes], data: bytes) -> None:
    """An unbuffered write may be short (a disk that fills up meanwhile): go on, so that it
    ends in all written or in the OSError that says why not."""
    view = memoryview(data)
    while view:
        written = file.write(view)
        if not written:  # no progress and no error: take it for a full disk, not a spin
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def spool_dir_problem() -> str | None:
    """Why bodies past the threshold would not spool where the operator said, else None. Python
    passes over a TMPDIR it cannot write and takes the next of /tmp, /var/tmp, /usr/tmp and
    the working directory without a word (`tempfile.gettempdir`), so a typo in the unit's
    TMPDIR would put message bodies somewhere nobody meant; and with none usable, every
    message past the threshold passes by the failure policy."""
    wanted = os.environ.get("TMPDIR")
    tempfile.tempdir = None  # read the environment again (a reload, a test)
    try:
        used = tempfile.gettempdir()
    except OSError as exc:  # FileNotFoundError: "No usable temporary directory found in ..."
        return (f"no usable temporary directory ({exc}): a message body past "
                "stamp.spool_threshold cannot be kept and passes by milter.on_error")
    if wanted and os.path.abspath(wanted) != os.path.abspath(used):
        return (f"TMPDIR={wanted} is not a writable directory: message bodies past "
                f"stamp.spool_threshold spool in {used} instead")
    return None
