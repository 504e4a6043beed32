"""Mail addresses in envelopes and headers, and the patterns that select support mailboxes."""

from __future__ import annotations

import fnmatch
import re
from email.utils import getaddresses

from .message import unfold

_GLOB_CHARS = re.compile(r"[*?\[]")


def envelope_address(value: str) -> str:
    """`<User@Example.COM>` -> `user@example.com`; empty for the null sender."""
    return value.strip().strip("<>").strip().lower()


def header_addresses(values: list[str]) -> list[str]:
    """Lower-cased addr-specs found in address fields (From, To, Cc); garbage is skipped."""
    found = []
    for _name, addr in getaddresses([unfold(v) for v in values]):
        addr = addr.strip().lower()
        if "@" in addr:
            found.append(addr)
    return found


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]


class AddressMatcher:
    """Matches addresses against `inbound.addresses`: exact, `@domain`, or glob patterns."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self._exact: set[str] = set()
        self._domains: set[str] = set()
        self._globs: list[str] = []
        for raw in patterns:
            pattern = raw.lower()
            if _GLOB_CHARS.search(pattern):
                self._globs.append(pattern)
            elif pattern.startswith("@"):
                self._domains.add(pattern[1:])
            else:
                self._exact.add(pattern)

    def matches(self, address: str) -> bool:
        addr = envelope_address(address)
        if not addr:
            return False
        if addr in self._exact or domain_of(addr) in self._domains:
            return True
        return any(fnmatch.fnmatchcase(addr, g) for g in self._globs)
