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
# Inbound resolution strategies (DESIGN §5); `inbound.strategies` orders a subset of them.
STRATEGY_NAMES = (
    "bounce", "token", "in-reply-to", "references", "thread-index", "subject-ref", "body-ref",
    "external-ref", "subject-match",
)


@dataclass(frozen=True)
class MilterSettings:
    socket: str = "inet:8894@127.0.0.1"
    # Mode of a unix socket; the MTA's user (postfix) must be able to write it.
    socket_mode: int = 0o660
    # Group given to a unix socket (e.g. "postfix"); None keeps the process's group.
    socket_group: str | None = None
    on_error: OnError = "accept"
    # libmilter's I/O timeout: seconds to wait on a silent MTA connection. How long the MTA
    # waits for us is Postfix's milter_*_timeout.
    timeout: int = 60
    # On SIGTERM: seconds the messages under way may take to finish before the milter stops
    # anyway (new connections are refused at once). Below systemd's TimeoutStopSec, less ~5 s.
    drain_timeout: int = 20
    log_level: LogLevel = "info"
    # Where log lines go: stderr (journald under systemd) or syslog (facility mail).
    log_target: Literal["stderr", "syslog"] = "stderr"
    # Prometheus text endpoint, e.g. "127.0.0.1:9894"; None: off.
    metrics_listen: str | None = None


@dataclass(frozen=True)
class IndexSettings:
    path: str = "./casethread-data"
    # LMDB reserves this much address space at start; the file grows only as data is written,
    # and the map doubles by itself when full, up to `max_map_size`.
    map_size: int = 1 << 30
    # Ceiling of automatic growth; None: max(16 x map_size, 64 GiB).
    max_map_size: int | None = None
    # full: every message's index writes are on disk (fsync) before the MTA is answered.
    # async: commits are flushed to disk once a second; a power failure can lose that second
    # of index writes (never mail), for several times the throughput.
    sync: Literal["full", "async"] = "full"


@dataclass(frozen=True)
class HeaderSettings:
    prefix: str = "X-Case-"


@dataclass(frozen=True)
class CaseSettings:
    id_prefix: str = "C-"
    id_digits: int = 6
    # A reply to a case resolved longer ago than this opens a new related case (seconds).
    reopen_within: int = 14 * 86400


@dataclass(frozen=True)
class TokenSettings:
    # Key files, the first signs and all verify; empty: INDEX/token.key, made on first start.
    keys: tuple[str, ...] = ()
    # Where the token goes in the Subject; `{token}` is replaced.
    subject_template: str = " [ref:{token}]"
    # Domain of the signed References anchor <TOKEN.case@DOMAIN>; None: the Message-ID domain.
    anchor_domain: str | None = None


@dataclass(frozen=True)
class StampSettings:
    """Outbound body stamping (DESIGN §3.4)."""

    html: bool = True
    text: bool = True
    html_template: str = (
        '<div style="display:none;max-height:0;overflow:hidden;mso-hide:all;font-size:0;'
        'line-height:0" data-casethread-ref="{token}">[ref:{token}]</div>'
    )
    text_template: str = "\n[ref:{token}]\n"
    # Bodies above this many bytes are spooled to a temporary file by the milter.
    spool_threshold: int = 1 << 20
    # Mail that already carries a DKIM signature: keep it valid (stamp only what it does not
    # cover), or stamp it all (a signer after casethread signs it again).
    dkim_signed: Literal["keep", "stamp"] = "keep"


@dataclass(frozen=True)
class FloodSettings:
    """More than `limit` messages from one sender within `window` seconds is a loop."""

    limit: int = 20
    window: int = 3600


@dataclass(frozen=True)
class RoutingRule:
    """First matching rule sets the queue. Empty conditions match anything; all given must hold."""

    queue: str
    rcpt: tuple[str, ...] = ()  # envelope recipient patterns (address, @domain, glob)
    sender: tuple[str, ...] = ()  # From address patterns (address, @domain, glob)
    subject: str | None = None  # regex, searched case-insensitively
    header: str | None = None  # header name for `header_regex`
    header_regex: str | None = None
    # An existing case keeps its queue unless the rule says override.
    override: bool = False


@dataclass(frozen=True)
class RoutingSettings:
    default_queue: str = "support"
    rules: tuple[RoutingRule, ...] = ()


@dataclass(frozen=True)
class ExternalRefRule:
    """Another system's ticket number (like Znuny's ExternalTicketNumberRecognition)."""

    name: str  # the system, e.g. "servicenow"; part of the stored key
    pattern: str  # regex; group 1 (or the whole match) is the reference
    sender: tuple[str, ...] = ()  # From patterns; empty: any sender
    search_subject: bool = True
    search_body: bool = True


@dataclass(frozen=True)
class SubjectMatchSettings:
    """Optional subject + participant matching (off by default: it can merge wrongly)."""

    window: int = 2 * 86400


@dataclass(frozen=True)
class OutboundSettings:
    daemon_names: tuple[str, ...] = ("ORIGINATING",)
    authenticated: bool = True
    client_networks: tuple[str, ...] = ()
    new_case: NewCasePolicy = "create"
    # Recipients whose mail opens no case (as `inbound.addresses`: exact, "@domain", glob):
    # outbound mail to none but these (an app's notices to its agents, an agent's note to a
    # colleague) continues a case it names and opens none.
    internal_recipients: tuple[str, ...] = ()
    # Domain for Message-IDs we add; None means the From domain (then the hostname).
    message_id_domain: str | None = None


@dataclass(frozen=True)
class InboundSettings:
    # Exact addresses, "@domain", or glob patterns ("support+*@example.com"), case-insensitive.
    addresses: tuple[str, ...] = ()
    # How many of the newest References IDs are looked up.
    references_limit: int = 100
    # Resolution strategies in order; the first that yields a live case wins (DESIGN §5).
    strategies: tuple[str, ...] = (
        "bounce", "token", "in-reply-to", "references", "thread-index", "subject-ref", "body-ref",
    )
    # How much decoded body text the token and reference scans read at most.
    scan_budget: int = 1 << 20
    # How much of the body the milter reads of inbound mail its header fields do not resolve:
    # the text to scan may follow big attachments (a phone's photos above the quote).
    read_limit: int = 32 << 20
    # A human case reference in Subject/body: group 1 is the case id. Counts only when the
    # sender is a participant of that case (references are guessable).
    case_ref_pattern: str = r"\[Case\s+([A-Za-z0-9._:-]{1,64})\]"
    external_refs: tuple[ExternalRefRule, ...] = ()
    # Our own support address is a list (a Google Group, Mailman under DMARC mitigation):
    # the customer its copy names (X-Original-From, a one-address Reply-To) stands in for
    # its From. Off unless asked: such a copy is as forgeable as our own domain's From.
    list_authors: bool = False
    # The senders of mail filters' and gateways' notices (a quarantine digest, "held for
    # review", "blocked"), as `addresses` are written: their mail lists or quotes mail by its
    # Subject, our tag included, and is the mail system's, not a person's.
    notice_senders: tuple[str, ...] = ()
    subject_match: SubjectMatchSettings = field(default_factory=SubjectMatchSettings)
    flood: FloodSettings = field(default_factory=FloodSettings)


@dataclass(frozen=True)
class Settings:
    milter: MilterSettings = field(default_factory=MilterSettings)
    index: IndexSettings = field(default_factory=IndexSettings)
    headers: HeaderSettings = field(default_factory=HeaderSettings)
    cases: CaseSettings = field(default_factory=CaseSettings)
    outbound: OutboundSettings = field(default_factory=OutboundSettings)
    inbound: InboundSettings = field(default_factory=InboundSettings)
    tokens: TokenSettings = field(default_factory=TokenSettings)
    stamp: StampSettings = field(default_factory=StampSettings)
    routing: RoutingSettings = field(default_factory=RoutingSettings)
