"""The case index: LMDB for the milter and the CLI, in memory for tests and dry runs."""

from __future__ import annotations

from ..core.settings import Settings
from .errors import CaseIndexError, IndexFull, IndexNotWritable, IndexUnavailable, SchemaMismatch
from .lmdb_index import LmdbIndex
from .memory_index import MemoryIndex

__all__ = [
    "CaseIndexError",
    "IndexFull",
    "IndexNotWritable",
    "IndexUnavailable",
    "LmdbIndex",
    "MemoryIndex",
    "SchemaMismatch",
    "index_exists",
    "open_index",
]


def index_exists(settings: Settings) -> bool:
    return LmdbIndex.exists(settings.index.path)


def open_index(settings: Settings) -> LmdbIndex:
    """The LMDB index the settings describe."""
    return LmdbIndex(
        settings.index.path,
        settings.index.map_size,
        id_prefix=settings.cases.id_prefix,
        id_digits=settings.cases.id_digits,
        max_map_size=settings.index.max_map_size,
        sync=settings.index.sync == "full",
    )
