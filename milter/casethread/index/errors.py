"""Errors the case index raises; callers catch `CaseIndexError` alone."""

from __future__ import annotations


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
    return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror


class IndexUnavailable(CaseIndexError):
    """The index cannot be opened: missing or unwritable directory, corrupt file, ..."""


class SchemaMismatch(CaseIndexError):
    """The index was written by a newer casethread; refusing to touch it."""
