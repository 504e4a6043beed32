"""Typed, validated settings the core runs on.

`casethread.config` builds these from YAML; the core only ever sees these frozen values, so it
never depends on a file format. Defaults here are the embedded defaults (DESIGN §7).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

OnError = Literal["accept", "tempfail"]
NewCasePolicy = Literal["create", "skip"]
LogLevel = Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True)
class MilterSettings:
    socket: str = "inet:8894@127.0.0.1"
    # Mode of a unix socket; the MTA's user (postfix) must be able to write it.
    socket_mode: int = 0o660
    on_error: OnError = "accept"
    # libmilter's I/O timeout: seconds to wait on a silent MTA connection. How long the MTA
    # waits for us is Postfix's milter_*_timeout.
    timeout: int = 60
    log_level: LogLevel = "info"


@dataclass(frozen=True)
class IndexSettings:
    path: str = "./casethread-data"
    # LMDB reserves this much address space; the file grows only as data is written.
    map_size: int = 1 << 30


@dataclass(frozen=True)
class HeaderSettings:
    prefix: str = "X-Case-"


@dataclass(frozen=True)
class CaseSettings:
    id_prefix: str = "C-"
    id_digits: int = 6


@dataclass(frozen=True)
class OutboundSettings:
    daemon_names: tuple[str, ...] = ("ORIGINATING",)
    authenticated: bool = True
    client_networks: tuple[str, ...] = ()
    new_case: NewCasePolicy = "create"
    # Domain for Message-IDs we add; None means the From domain (then the hostname).
    message_id_domain: str | None = None


@dataclass(frozen=True)
class InboundSettings:
    # Exact addresses, "@domain", or glob patterns ("support+*@example.com"), case-insensitive.
    addresses: tuple[str, ...] = ()
    # How many of the newest References IDs are looked up.
    references_limit: int = 100


@dataclass(frozen=True)
class Settings:
    milter: MilterSettings = field(default_factory=MilterSettings)
    index: IndexSettings = field(default_factory=IndexSettings)
    headers: HeaderSettings = field(default_factory=HeaderSettings)
    cases: CaseSettings = field(default_factory=CaseSettings)
    outbound: OutboundSettings = field(default_factory=OutboundSettings)
    inbound: InboundSettings = field(default_factory=InboundSettings)
