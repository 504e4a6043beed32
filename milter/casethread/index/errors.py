"""Errors the case index raises; callers catch `CaseIndexError` alone."""

from __future__ import annotations

import errno


class CaseIndexError(Exception):
    """Base of every index failure (also raised for calls on a closed index)."""


class IndexFull(CaseIndexError):
    """The LMDB map is at its ceiling, or the disk is full; the write was rolled back."""


class IndexNotWritable(CaseIndexError):
    """A write was refused by the system: read-only file system, permission denied."""


def os_problem(exc: OSError) -> str:
    """`FILE: problem` (or just the problem), without Python's `[Errno N]` and quotes."""
    if exc.strerror is None:
        return str(exc)
    if exc.filename is None:
        return exc.strerror
    return f"{exc.filename or repr(exc.filename)}: {exc.strerror}"  # '' shown, not ': ...'


class IndexUnavailable(CaseIndexError):
    """The index cannot be opened: missing or unwritable directory, corrupt file, ..."""


class SchemaMismatch(CaseIndexError):
    """The index was written by a newer casethread; refusing to touch it."""


# The machine's state, not a bug: one line naming the cause and the path is what the operator
# needs, and a traceback per message would bury it (hundreds of lines a minute on a full disk).
_KNOWN_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def known_cause(exc: BaseException) -> str | None:
    """The one-line cause of an expected failure (a full disk or map, a read-only file system,
    a permission), else None: an unexpected error keeps its traceback. The milter's and
    `casethread filter`'s error boundaries log by it."""
    if isinstance(exc, (IndexFull, IndexNotWritable)):
        return str(exc)  # each names the index and the cause
    if isinstance(exc, OSError) and exc.errno in _KNOWN_ERRNOS:
        return os_problem(exc)
    return None
