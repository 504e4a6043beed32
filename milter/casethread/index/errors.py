"""Errors the case index raises; callers catch `CaseIndexError` alone."""

from __future__ import annotations


class CaseIndexError(Exception):
    """Base of every index failure (also raised for calls on a closed index)."""


class IndexFull(CaseIndexError):
    """The LMDB map is full; the write was rolled back."""


class IndexUnavailable(CaseIndexError):
    """The index cannot be opened: missing or unwritable directory, corrupt file, ..."""


class SchemaMismatch(CaseIndexError):
    """The index was written by a newer casethread; refusing to touch it."""
