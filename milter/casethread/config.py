"""YAML configuration -> the frozen `Settings` dataclasses, strictly validated (DESIGN §7, §8).

The file is composed into PyYAML's node tree rather than loaded into dicts, so every error can
name its line and PyYAML's silent "last duplicate key wins" can be rejected. The schema is the
dataclasses themselves: `_Builder.build` walks their field types generically, and `_RULES` adds
what a type cannot say (ranges, formats, unit strings, comments for `render_defaults`), keyed by
the key path (`section.key`, with `[]` standing for any list index). Lists of mappings (routing
rules, external refs) are built item by item as dataclasses; a field without a default is a
required key. A check on a list or section can blame one item or key below it (`_Invalid.at`).
"""

from __future__ import annotations

import dataclasses
import difflib
import grp
import ipaddress
import json
import os
import re
import textwrap
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .core import token
from .core.addresses import ascii_domain, is_glob
from .core.bodytext import html_to_text
from .core.msgid import is_plain_domain
from .core.settings import (
    STRATEGY_NAMES,
    ExternalRefRule,
    InboundSettings,
    RoutingRule,
    Settings,
)

__all__ = ["ConfigError", "load_config", "override", "render_defaults"]

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_NULL_TAG = "tag:yaml.org,2002:null"


class ConfigError(Exception):
    """A configuration problem, rendered as one line: `FILE:LINE: KEY.PATH: problem`."""

    def __init__(self, file: str, line: int | None, path: str, problem: str) -> None:
        self.file = file
        self.line = line
        self.path = path
        self.problem = problem
        where = file if line is None else f"{file}:{line}"
        text = f"{where}: {path}: {problem}" if path else f"{where}: {problem}"
        # One line whatever a library put in the reason.
        super().__init__(re.sub(r"\s*\n\s*", " ", text))


class _Invalid(Exception):
    """Raised by converters and checks; `_Builder` adds the file, line and key path.

    `at` points below the checked value (`("strategies", 3)`, `(2, "name")`), so a check on a
    list or a section can blame the one item or key that is wrong, with that item's line.
    """

    def __init__(self, problem: str, at: tuple[str | int, ...] = ()) -> None:
        super().__init__(problem)
        self.at = at


@dataclass(frozen=True)
class _Rule:
    # Replaces the generic type conversion: gets the plain YAML scalar (e.g. "512MiB" for an int
    # field) and returns the typed value. `expects` describes what it accepts.
    parse: Callable[[Any], Any] | None = None
    expects: str = ""
    # Runs on the typed value; returns the value to store (which may be normalised).
    check: Callable[[Any], Any] | None = None
    # Comment for render_defaults (and the reason this key exists).
    doc: str = ""
    # YAML text for the default, when the generic rendering would be unreadable (1073741824).
    render: Callable[[Any], str] | None = None


# --------------------------------------------------------------------------- value checks


def _int_range(low: int, high: int) -> Callable[[int], int]:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise _Invalid(f"{value} is out of range ({low}-{high})")
        return value

    return check


def _non_empty(value: str) -> str:
    if not value.strip():
        raise _Invalid("must not be empty")
    return value


def _domain(value: str) -> str:
    value = ascii_domain(value)  # an internationalised domain as its A-label (RFC 5322 msg-id)
    if not is_plain_domain(value):
        raise _Invalid(f"{value!r} is not a domain name (letters, digits, hyphens and dots)")
    return value


_KIB = 1024
_MIB = 1024**2
_UNITS = {
    "": 1,
    "b": 1,
    "k": _KIB,
    "kib": _KIB,
    "m": _MIB,
    "mib": _MIB,
    "g": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"\s*(\d+)\s*([A-Za-z]*)\s*")


_SIZE_EXPECTS = "a size in bytes (an integer or a string like '512MiB')"


def _size(minimum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise _Invalid(f"expected {_SIZE_EXPECTS}, got {_describe_value(value)}")
        if isinstance(value, int):
            size = value
        else:
            match = _SIZE_RE.fullmatch(value)
            if match is None:
                raise _Invalid(f"{value!r} is not a size (e.g. 512MiB, 1GiB, 2G)")
            unit = match.group(2).lower()
            if unit in ("kb", "mb", "gb", "tb"):
                # 1000- or 1024-based is anyone's guess; make the reader say which.
                binary = unit[0].upper() + "iB"
                raise _Invalid(
                    f"ambiguous unit {match.group(2)!r}: write {binary} (powers of 1024)"
                )
            if unit not in _UNITS:
                units = "KiB, MiB, GiB, TiB or K, M, G, T"
                raise _Invalid(f"unknown unit {match.group(2)!r} (use {units})")
            size = int(match.group(1)) * _UNITS[unit]
        if size < minimum:
            raise _Invalid(f"{value!r} is too small: at least {_render_size(minimum)}")
        return size

    return parse


def _render_size(size: int) -> str:
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", _MIB), ("KiB", _KIB)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?")


def _socket_host(family: str, host: str) -> None:
    want: type[ipaddress.IPv4Address | ipaddress.IPv6Address]
    want = ipaddress.IPv4Address if family == "inet" else ipaddress.IPv6Address
    # libmilter takes a host name, an address, or an address literal in brackets.
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        numeric = re.fullmatch(r"[\d.]+", host) is not None
        if bracketed or numeric or not _HOSTNAME_RE.fullmatch(host):
            raise _Invalid(f"{host!r} is not a host name or IP address") from None
        return
    if not isinstance(address, want):
        other = "inet6" if family == "inet" else "inet"
        raise _Invalid(f"{host!r} is an IPv{address.version} address: use {other}:PORT@{host}")


# libmilter: `len(path) + 1 >= sizeof(sun_path)` (108 on Linux) fails at start-up.
_SUN_PATH_MAX = 106


def _milter_socket(value: str) -> str:
    """The socket spec with its family in lower case (`UNIX:/run/x.sock` -> `unix:...`): serve
    tells the families apart as libmilter writes them."""
    family, sep, rest = value.partition(":")
    family = family.lower()
    value = f"{family}{sep}{rest}"
    if not sep or family not in ("inet", "inet6", "unix", "local"):
        raise _Invalid(
            f"{value!r} is not a milter socket "
            "(inet:PORT@HOST, inet6:PORT@HOST, unix:/PATH or local:/PATH)"
        )
    if family in ("unix", "local"):
        if not rest.startswith("/"):
            raise _Invalid(f"{value!r}: the socket path must be absolute")
        if len(rest.encode()) > _SUN_PATH_MAX:
            raise _Invalid(f"{value!r}: the socket path is longer than {_SUN_PATH_MAX} bytes")
        return value
    port, at, host = rest.partition("@")
    if not at:
        if re.fullmatch(r".+:\d+", rest):
            # Postfix's main.cf writes inet:HOST:PORT; libmilter wants inet:PORT@HOST.
            hint = f"{family}:{rest.rsplit(':', 1)[1]}@{rest.rsplit(':', 1)[0]}"
            raise _Invalid(f"{value!r}: libmilter's form is {family}:PORT@HOST (e.g. {hint!r})")
        raise _Invalid(f"{value!r}: name the host ({family}:PORT@HOST), e.g. 127.0.0.1")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _Invalid(f"{value!r}: port {port!r} is not a number in 1-65535")
    if not host:
        raise _Invalid(f"{value!r}: the host after '@' is empty")
    _socket_host(family, host)
    return value


_MODE_EXPECTS = "a file mode in octal (e.g. 0660)"


def _parse_mode(value: Any) -> int:
    # YAML 1.1 reads `0660` as octal already; a string is taken as octal too ("660", "0o660").
    if isinstance(value, str) and re.fullmatch(r"(0o?)?[0-7]{3,4}", value.strip()):
        value = int(value.strip().removeprefix("0o"), 8)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"expected {_MODE_EXPECTS}, got {_describe_value(value)}")
    if not 0 <= value <= 0o777:
        raise _Invalid(f"{value} is not a file mode: write it in octal with a leading 0 (0660)")
    return value


def _header_prefix(value: str) -> str:
    # RFC 5322 field names are printable ASCII (33-126) except ':'.
    if not 1 <= len(value) <= 40:
        raise _Invalid(f"{value!r} must be 1-40 characters")
    bad = [c for c in value if not 33 <= ord(c) <= 126 or c == ":"]
    if bad:
        raise _Invalid(f"{value!r} contains {bad[0]!r}: header names allow no spaces or colons")
    return value


_ID_PREFIX_RE = re.compile(r"[A-Za-z0-9._:-]{0,16}")


def _id_prefix(value: str) -> str:
    if not _ID_PREFIX_RE.fullmatch(value):
        raise _Invalid(f"{value!r} must be 0-16 characters of A-Z a-z 0-9 . _ : -")
    return value


def _cidr(value: str) -> str:
    try:
        network = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise _Invalid(f"{value!r} is not a CIDR network") from None
    # 10.0.0.1/8 is a host someone meant, or all of 10/8: refuse to guess (a wider network
    # makes strangers' mail outbound), as Postfix's cidr tables do.
    if "/" in value and network.network_address != ipaddress.ip_interface(value.strip()).ip:
        raise _Invalid(f"{value!r} has host bits set: write {network} for the network, or "
                       f"the address alone for one host")
    return str(network)


def _recipient(value: str) -> str:
    address = value.strip().lower()
    if not address or any(c.isspace() for c in address) or "<" in address or ">" in address:
        raise _Invalid(f"{value!r} is not an address (write it bare: support@example.com)")
    if "@" not in address:
        raise _Invalid(f"{value!r} has no '@' (local@domain, @domain or a pattern like *@domain)")
    if is_glob(address):
        return address
    local, _, domain = address.rpartition("@")
    domain = ascii_domain(domain)  # an internationalised domain as its A-label
    if "@" in local or not is_plain_domain(domain):
        raise _Invalid(f"{value!r} is not an address (local@domain, @domain or a pattern)")
    return f"{local}@{domain}"


_DURATION_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION_RE = re.compile(r"\s*(\d+)\s*([A-Za-z]*)\s*")
_DURATION_EXPECTS = "a duration (seconds, or a string like '90s', '30m', '12h', '14d', '2w')"
# Ten years: far beyond any sensible window, and it catches milliseconds typed as seconds.
_DURATION_MAX = 3650 * 86400


def _parse_duration(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _Invalid(f"expected {_DURATION_EXPECTS}, got {_describe_value(value)}")
    if isinstance(value, int):
        seconds = value
    else:
        match = _DURATION_RE.fullmatch(value)
        if match is None:
            raise _Invalid(f"{value!r} is not a duration (e.g. 90s, 30m, 12h, 14d, 2w)")
        unit = match.group(2)
        # Case-sensitive on purpose: is "30M" minutes or months?
        if unit and unit not in _DURATION_UNITS:
            raise _Invalid(f"unknown unit {unit!r} (use s, m, h, d or w: 90s, 30m, 12h, 14d, 2w)")
        seconds = int(match.group(1)) * _DURATION_UNITS.get(unit, 1)
    if seconds <= 0:
        raise _Invalid(f"{value!r} is not positive: at least 1s")
    if seconds > _DURATION_MAX:
        raise _Invalid(f"{value!r} is too long: at most {_render_duration(_DURATION_MAX)}")
    return seconds


def _render_duration(seconds: int) -> str:
    for unit, factor in _DURATION_UNITS.items():
        if seconds % factor == 0:
            return f"{seconds // factor}{unit}"
    return str(seconds)  # unreachable: "s" divides everything


_REGEX_MAX = 1000


def _regex(*, groups: int = 0, flags: int = 0, empty_ok: bool = True) -> Callable[[str], str]:
    def check(value: str) -> str:
        if len(value) > _REGEX_MAX:
            limit = _REGEX_MAX
            raise _Invalid(f"the regular expression is {len(value)} characters: at most {limit}")
        if not value:
            # The matchers read "" as "no condition": refuse it rather than guess.
            raise _Invalid("the regular expression is empty")
        try:
            compiled = re.compile(value, flags)
        except re.error as exc:
            where = "" if exc.pos is None else f" at position {exc.pos}"
            raise _Invalid(f"invalid regular expression: {exc.msg}{where}") from None
        if compiled.groups < groups:
            raise _Invalid("the regular expression needs a group: (...) around the part to extract")
        if not empty_ok and compiled.search("") is not None:
            # It would "find" an empty reference in every message.
            raise _Invalid(f"{value!r} matches an empty string")
        return value

    return check


_QUEUE_RE = re.compile(r"[A-Za-z0-9._:/-]{1,64}")


def _queue(value: str) -> str:
    if not _QUEUE_RE.fullmatch(value):
        raise _Invalid(f"{value!r} must be 1-64 characters of A-Z a-z 0-9 . _ : / -")
    return value


def _header_name(value: str) -> str:
    # RFC 5322 field names: printable ASCII (33-126) except ':'.
    if not 1 <= len(value) <= 76 or any(not 33 <= ord(c) <= 126 or c == ":" for c in value):
        raise _Invalid(f"{value!r} is not a header name (1-76 characters, no spaces or colons)")
    return value


def _has_condition(rule: RoutingRule) -> bool:
    return bool(rule.rcpt or rule.sender) or rule.subject is not None or rule.header is not None


def _routing_rule(rule: RoutingRule) -> RoutingRule:
    if rule.header is not None and rule.header_regex is None:
        raise _Invalid("header needs header_regex (the regex its value must match)", ("header",))
    if rule.header_regex is not None and rule.header is None:
        raise _Invalid("header_regex needs header (the header to match)", ("header_regex",))
    return rule


def _routing_rules(rules: tuple[RoutingRule, ...]) -> tuple[RoutingRule, ...]:
    for i, rule in enumerate(rules[:-1]):
        if not _has_condition(rule):
            # It matches every message, so every rule after it would be dead.
            raise _Invalid(
                "a rule without a condition (rcpt, sender, subject, header) matches every "
                "message: only the last rule may be a catch-all",
                (i,),
            )
    return rules


_STRATEGIES = STRATEGY_NAMES


def _strategy(value: str) -> str:
    if value in _STRATEGIES:
        return value
    if value == "duplicate":
        raise _Invalid("'duplicate' is not a strategy: duplicates are always recognised first")
    close = difflib.get_close_matches(value.lower(), _STRATEGIES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else " (known: " + ", ".join(_STRATEGIES) + ")"
    raise _Invalid(f"{value!r} is not a strategy{hint}")


def _no_duplicates(what: str) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    def check(values: tuple[Any, ...]) -> tuple[Any, ...]:
        for i, value in enumerate(values):
            if value in values[:i]:
                first = values.index(value)
                raise _Invalid(f"{what} {value!r} is listed twice (first as item {first})", (i,))
        return values

    return check


def _strategies(values: tuple[str, ...]) -> tuple[str, ...]:
    if not values:
        raise _Invalid("list at least one strategy (no strategy: every message is a new case)")
    result: tuple[str, ...] = _no_duplicates("strategy")(values)
    return result


def _inbound(inbound: InboundSettings) -> InboundSettings:
    if "external-ref" in inbound.strategies and not inbound.external_refs:
        at = ("strategies", inbound.strategies.index("external-ref"))
        raise _Invalid("'external-ref' needs at least one rule in inbound.external_refs", at)
    return inbound


_REF_NAME_RE = re.compile(r"[a-z0-9_-]{1,32}")


def _ref_name(value: str) -> str:
    if not _REF_NAME_RE.fullmatch(value):
        raise _Invalid(f"{value!r} must be 1-32 characters of a-z 0-9 _ - (lower case)")
    return value


def _external_ref(rule: ExternalRefRule) -> ExternalRefRule:
    if not rule.search_subject and not rule.search_body:
        raise _Invalid("search_subject and search_body are both false: the rule never matches")
    return rule


def _external_refs(rules: tuple[ExternalRefRule, ...]) -> tuple[ExternalRefRule, ...]:
    names = [rule.name for rule in rules]
    for i, name in enumerate(names):
        if name in names[:i]:
            first = names.index(name)
            raise _Invalid(f"{name!r} is used twice (first by item {first})", (i, "name"))
    return rules


_TEMPLATE_MAX = 2000


def _template(value: str) -> str:
    if len(value) > _TEMPLATE_MAX:
        raise _Invalid(f"the template is {len(value)} characters: at most {_TEMPLATE_MAX}")
    if token.PLACEHOLDER not in value:
        raise _Invalid(f"the template must contain {token.PLACEHOLDER}")
    return value


def _subject_template(value: str) -> str:
    _template(value)
    if not value.isascii():
        # Written into the Subject as it is: raw 8-bit there breaks RFC 5322 §2.2 without
        # SMTPUTF8, and clients show it as mojibake.
        raise _Invalid("the Subject tag must be ASCII (a Subject carries no raw 8-bit text; "
                       "stamp.text_template may hold any text)")
    try:
        token.check_template(value)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None
    return value


def _absolute_path(value: str) -> str:
    if not os.path.isabs(value):
        raise _Invalid(f"{value!r} is not an absolute path")
    return value


def _metrics_listen(value: str) -> str:
    """HOST:PORT of the metrics endpoint: one IP address (IPv6 in brackets), never a wildcard."""
    host, sep, port = value.rpartition(":")
    example = "e.g. 127.0.0.1:9894 or [::1]:9894"
    if not sep or not host:
        raise _Invalid(f"{value!r} is not HOST:PORT ({example})")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        if not bracketed and ":" in host:
            raise _Invalid(f"{value!r}: write an IPv6 address in brackets ({example})") from None
        # A name may resolve to several addresses, or to a public one: bind what is written.
        raise _Invalid(f"{value!r}: the host must be an IP address ({example})") from None
    if address.version == 6 and not bracketed:
        raise _Invalid(f"{value!r}: write an IPv6 address in brackets ({example})")
    if address.version == 4 and bracketed:
        raise _Invalid(f"{value!r}: brackets are for IPv6 only ({example})")
    if address.is_unspecified:
        # The endpoint has no authentication: it must not appear on every interface by accident.
        raise _Invalid(f"{value!r}: {host} listens on every interface; name one ({example})")
    if address.is_multicast:
        raise _Invalid(f"{value!r}: {host} is a multicast address ({example})")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _Invalid(f"{value!r}: port {port!r} is not a number in 1-65535")
    return value


# One row per key path that needs more than its type. `[]` stands for any list index.
_RULES: dict[str, _Rule] = {
    "milter": _Rule(doc="How the MTA reaches the milter, and what happens when it fails."),
    "milter.socket": _Rule(
        check=_milter_socket,
        doc="libmilter socket: inet:PORT@HOST, inet6:PORT@HOST or unix:/abs/path.",
    ),
    "milter.socket_mode": _Rule(
        parse=_parse_mode,
        expects=_MODE_EXPECTS,
        render=lambda mode: f"0{mode:o}",
        doc="Mode of a unix socket (octal); the MTA's user must be able to write it.",
    ),
    "milter.socket_group": _Rule(
        check=_non_empty,
        doc="Group of a unix socket (e.g. postfix); null keeps the milter's own group.",
    ),
    "milter.on_error": _Rule(
        doc="On an internal error: accept (pass the message unchanged) or tempfail (4xx)."
    ),
    "milter.timeout": _Rule(
        check=_int_range(1, 3600),
        doc="libmilter I/O timeout: seconds to wait on a silent MTA connection (1-3600).",
    ),
    "milter.drain_timeout": _Rule(
        check=_int_range(0, 3600),
        doc="On SIGTERM: seconds the messages under way may take to finish (0-3600).",
    ),
    "milter.log_level": _Rule(doc="debug, info, warning or error."),
    "milter.log_target": _Rule(
        doc="stderr (the journal under systemd) or syslog (facility mail, via /dev/log)."
    ),
    "milter.metrics_listen": _Rule(
        check=_metrics_listen,
        doc="Prometheus endpoint HOST:PORT (e.g. 127.0.0.1:9894, [::1]:9894); null = off.",
    ),
    "index": _Rule(doc="The case index (LMDB)."),
    "index.path": _Rule(check=_non_empty, doc="Directory of the index (and its token key)."),
    "index.map_size": _Rule(
        parse=_size(_MIB),
        expects=_SIZE_EXPECTS,
        render=_render_size,
        doc="Address space LMDB reserves at start (e.g. 512MiB, 1GiB); it doubles when full.",
    ),
    "index.max_map_size": _Rule(
        parse=_size(_MIB),
        expects=_SIZE_EXPECTS,
        render=_render_size,
        doc="Ceiling of that growth; null = the larger of 16 x map_size and 64GiB.",
    ),
    "index.sync": _Rule(
        doc="full: fsync each message's index writes before answering the MTA; async: flush "
        "once a second (faster; a power cut can lose the last second of index writes).",
    ),
    "headers": _Rule(doc="Headers added to inbound mail."),
    "headers.prefix": _Rule(
        check=_header_prefix, doc="Prefix of every header casethread adds or strips."
    ),
    "cases": _Rule(doc="Case ids."),
    "cases.id_prefix": _Rule(check=_id_prefix, doc="Prefix of new case ids (0-16 characters)."),
    "cases.id_digits": _Rule(
        check=_int_range(1, 12), doc="Zero-padded digits of new case ids (1-12)."
    ),
    "cases.reopen_within": _Rule(
        parse=_parse_duration,
        expects=_DURATION_EXPECTS,
        render=_render_duration,
        doc="A reply to a case resolved longer ago opens a new related case (90s, 12h, 14d, 2w).",
    ),
    "outbound": _Rule(doc="Mail counts as outbound when any of these signals holds."),
    "outbound.daemon_names[]": _Rule(
        check=_non_empty, doc="{daemon_name} macro values that mark a submission service."
    ),
    "outbound.authenticated": _Rule(doc="Authenticated (SASL) sessions are outbound."),
    "outbound.client_networks[]": _Rule(
        check=_cidr, doc="Client networks (CIDR) whose mail is outbound, e.g. app servers."
    ),
    "outbound.new_case": _Rule(
        doc="Outbound mail matching no case: create a new case, or skip it."
    ),
    "outbound.internal_recipients[]": _Rule(
        check=_recipient,
        doc="Recipients (local@domain, @domain, pattern) whose mail opens no case when it "
        "goes to none but them: an app's notices to agents, notes to colleagues; a support "
        "address never counts as one.",
    ),
    "outbound.message_id_domain": _Rule(
        check=_domain, doc="Domain of Message-IDs we add; null = the From domain."
    ),
    "inbound.addresses[]": _Rule(
        check=_recipient,
        doc="Support addresses: local@domain, @domain, or a pattern (support+*@example.com).",
    ),
    "inbound.references_limit": _Rule(
        check=_int_range(1, 10000), doc="How many of the newest References IDs are looked up."
    ),
    "inbound.strategies": _Rule(
        check=_strategies,
        doc="Match strategies in order, the first live case wins: bounce, token, in-reply-to, "
        "references, thread-index, subject-ref, body-ref, external-ref, subject-match.",
    ),
    "inbound.strategies[]": _Rule(check=_strategy),
    "inbound.scan_budget": _Rule(
        parse=_size(_KIB),
        expects=_SIZE_EXPECTS,
        render=_render_size,
        doc="Decoded body text the token and reference scans read at most (at least 1KiB).",
    ),
    "inbound.read_limit": _Rule(
        parse=_size(_KIB),
        expects=_SIZE_EXPECTS,
        render=_render_size,
        doc="Body bytes the milter reads of inbound mail its header fields do not resolve "
        "(spooled past stamp.spool_threshold; at least 1KiB).",
    ),
    "inbound.case_ref_pattern": _Rule(
        check=_regex(groups=1, flags=re.IGNORECASE, empty_ok=False),
        doc="Regex of a human case reference in Subject/body; group 1 is the case id.",
    ),
    "inbound.external_refs": _Rule(
        check=_external_refs,
        doc="Other systems' ticket numbers (strategy external-ref); names must be unique.",
    ),
    "inbound.external_refs[]": _Rule(check=_external_ref),
    "inbound.external_refs[].name": _Rule(
        check=_ref_name, doc="The other system, e.g. servicenow: 1-32 of a-z 0-9 _ -."
    ),
    "inbound.external_refs[].pattern": _Rule(
        check=_regex(empty_ok=False),
        doc="Regex of its ticket number; group 1 (or the whole match) is the reference.",
    ),
    "inbound.external_refs[].sender[]": _Rule(
        check=_recipient, doc="Only mail From these (address, @domain, pattern); empty: anyone."
    ),
    "inbound.external_refs[].search_subject": _Rule(doc="Look for the number in the Subject."),
    "inbound.external_refs[].search_body": _Rule(doc="Look for the number in the body text."),
    "inbound.subject_match": _Rule(
        doc="Strategy subject-match: same subject from a participant of a recent case."
    ),
    "inbound.subject_match.window": _Rule(
        parse=_parse_duration,
        expects=_DURATION_EXPECTS,
        render=_render_duration,
        doc="How recent that case's last message must be (90s, 30m, 12h, 14d, 2w).",
    ),
    "inbound": _Rule(
        check=_inbound,
        doc="Mail that is not outbound is inbound when a recipient matches.",
    ),
    "inbound.flood": _Rule(doc="Loop protection: more than limit messages within window."),
    "inbound.flood.limit": _Rule(
        check=_int_range(1, 100000),
        doc="Messages one sender may send within window (1-100000); a report the bounce "
            "strategy matched counts per sender and case.",
    ),
    "inbound.flood.window": _Rule(
        parse=_parse_duration,
        expects=_DURATION_EXPECTS,
        render=_render_duration,
        doc="The flood window (90s, 30m, 12h, 14d, 2w).",
    ),
    "tokens": _Rule(doc="The signed threading token."),
    "tokens.keys": _Rule(
        check=_no_duplicates("key file"),
        doc="Key files (absolute paths): the first signs, all verify; [] = INDEX/token.key.",
    ),
    "tokens.keys[]": _Rule(check=_absolute_path),
    "tokens.subject_template": _Rule(
        check=_subject_template,
        doc="Appended to the Subject; {token} once, with text on both sides, one line, "
        "ASCII only.",
    ),
    "tokens.anchor_domain": _Rule(
        check=_domain, doc="Domain of the References anchor; null = the Message-ID domain."
    ),
    "stamp": _Rule(doc="Outbound body stamping."),
    "stamp.html": _Rule(doc="Add a hidden tag with the token to the main text/html part."),
    "stamp.text": _Rule(doc="Add a token line to the end of the main text/plain part."),
    "stamp.html_template": _Rule(
        check=_template, doc="The HTML tag; {token} is replaced (at most 2000 characters)."
    ),
    "stamp.text_template": _Rule(
        check=_template, doc="The text line; {token} is replaced (at most 2000 characters)."
    ),
    "stamp.dkim_signed": _Rule(
        doc="Mail already DKIM-signed: keep (leave the body and every field the signature "
        "covers) or stamp (all of it; a signer after casethread signs it again)."
    ),
    "stamp.spool_threshold": _Rule(
        parse=_size(64 * _KIB),
        expects=_SIZE_EXPECTS,
        render=_render_size,
        doc="Bodies larger than this are spooled to a temporary file (at least 64KiB).",
    ),
    "routing": _Rule(doc="Queues for new cases: the first matching rule wins."),
    "routing.default_queue": _Rule(
        check=_queue, doc="Queue when no rule matches: 1-64 of A-Z a-z 0-9 . _ : / -."
    ),
    "routing.rules": _Rule(
        check=_routing_rules,
        doc="Rules in order; all conditions given must hold; a rule with none (a catch-all) "
        "may only be last.",
    ),
    "routing.rules[]": _Rule(check=_routing_rule),
    "routing.rules[].queue": _Rule(check=_queue, doc="The queue (required)."),
    "routing.rules[].rcpt[]": _Rule(
        check=_recipient, doc="Envelope recipients: address, @domain or pattern."
    ),
    "routing.rules[].sender[]": _Rule(
        check=_recipient, doc="From addresses: address, @domain or pattern."
    ),
    "routing.rules[].subject": _Rule(
        check=_regex(flags=re.IGNORECASE), doc="Regex searched in the Subject, ignoring case."
    ),
    "routing.rules[].header": _Rule(
        check=_header_name, doc="A header name; its value must match header_regex."
    ),
    "routing.rules[].header_regex": _Rule(
        check=_regex(flags=re.IGNORECASE),
        doc="Regex searched in that header's value, ignoring case (needs header).",
    ),
    "routing.rules[].override": _Rule(doc="Also move an existing case to this queue."),
}


# --------------------------------------------------------------------------- the type walk


def _required(cls: Any) -> list[str]:
    """Fields without a default: the file must give them (e.g. a routing rule's queue)."""
    return [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


def _describe_type(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        item = _describe_type(args[0])
        plural = {"a mapping": "mappings", "a string": "strings", "an integer": "integers"}
        return f"a list of {plural.get(item, item)}"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe_type(a) for a in args if a is not type(None)) + " or null"
    return repr(tp)


def _describe_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def _describe_node(node: Node, value: Any) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return _describe_value(value)


def _locate(node: Node, path: str, at: tuple[str | int, ...]) -> tuple[Node, str]:
    """The node and key path `at` points to below `node`; the deepest node the file has."""
    found = True
    for step in at:
        nxt: Node | None = None
        if isinstance(step, int):
            path = f"{path}[{step}]"
            if found and isinstance(node, SequenceNode) and step < len(node.value):
                nxt = node.value[step]
        else:
            path = f"{path}.{step}" if path else step
            if found and isinstance(node, MappingNode):
                nxt = next((v for k, v in node.value if k.value == step), None)
        found = nxt is not None
        node = nxt or node
    return node, path


class _Builder:
    def __init__(self, file: str) -> None:
        self.file = file
        self._constructor = SafeConstructor()

    def error(self, node: Node, path: str, problem: str) -> ConfigError:
        return ConfigError(self.file, node.start_mark.line + 1, path, problem)

    def scalar(self, node: Node, path: str) -> Any:
        """The plain value of a scalar node (None for a mapping or a list)."""
        if not isinstance(node, ScalarNode):
            return None
        if node.tag in (_INT_TAG, _FLOAT_TAG) and ":" in node.value:
            # YAML 1.1 reads `1:30` as 90 (base 60): never what a reader of `window: 1:30` means.
            problem = f"{node.value!r} is a base-60 number in YAML 1.1: write it without ':'"
            raise self.error(node, path, problem)
        try:
            return self._constructor.construct_object(node)
        except yaml.MarkedYAMLError as exc:
            raise self.error(node, path, str(exc.problem)) from None

    def plain_tag(self, node: Node, path: str) -> None:
        # `!!set`, `!!omap` and local tags compose as mappings/lists but mean something else.
        if isinstance(node, MappingNode):
            plain: str | None = _MAP_TAG
        else:
            plain = _SEQ_TAG if isinstance(node, SequenceNode) else None
        if plain is not None and node.tag != plain:
            raise self.error(node, path, f"unsupported YAML tag {node.tag!r}")

    def build(self, tp: Any, node: Node, path: str, key: str) -> Any:
        rule = _RULES.get(key)
        value = self._convert(tp, node, path, key, rule)
        if rule is not None and rule.check is not None and value is not None:
            try:
                value = rule.check(value)
            except _Invalid as exc:
                where, where_path = _locate(node, path, exc.at)
                raise self.error(where, where_path, str(exc)) from None
        return value

    def _convert(self, tp: Any, node: Node, path: str, key: str, rule: _Rule | None) -> Any:
        if rule is not None and rule.parse is not None:
            if not isinstance(node, ScalarNode):
                got = _describe_node(node, None)
                raise self.error(node, path, f"expected {rule.expects}, got {got}")
            scalar = self.scalar(node, path)
            if scalar is None and type(None) in get_args(tp):
                return None  # an optional key written as null
            try:
                return rule.parse(scalar)
            except _Invalid as exc:
                raise self.error(node, path, str(exc)) from None
        if dataclasses.is_dataclass(tp):
            return self.dataclass(tp, node, path, key)
        origin, args = get_origin(tp), get_args(tp)
        if origin is tuple:
            if len(args) != 2 or args[1] is not Ellipsis:
                raise TypeError(f"unsupported settings type {tp!r} at {key}")
            return self.sequence(args[0], node, path, key)
        if origin in (Union, types.UnionType):
            others = [a for a in args if a is not type(None)]
            if len(others) != 1 or len(args) != 2:
                raise TypeError(f"unsupported settings type {tp!r} at {key}")
            if isinstance(node, ScalarNode) and self.scalar(node, path) is None:
                return None
            if others[0] in (bool, int, str):
                return self.plain(others[0], node, path, expected=_describe_type(tp))
            return self._convert(others[0], node, path, key, None)
        if tp in (bool, int, str):
            return self.plain(tp, node, path, expected=_describe_type(tp))
        value = self.scalar(node, path)
        if origin is Literal:
            if any(value == a and type(value) is type(a) for a in args):
                return value
            shown = repr(value) if isinstance(value, str) else _describe_node(node, value)
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f"; did you mean {close[0]!r}?" if close and isinstance(value, str) else ""
            raise self.error(node, path, f"{shown} is not {_describe_type(tp)}{hint}")
        raise TypeError(f"unsupported settings type {tp!r} at {key}")

    def plain(self, tp: type, node: Node, path: str, expected: str) -> Any:
        value = self.scalar(node, path)
        # bool is an int subclass in Python; `timeout: yes` must not become 1.
        ok = isinstance(value, tp) and (tp is bool or not isinstance(value, bool))
        if isinstance(node, ScalarNode) and ok:
            return value
        raise self.error(node, path, f"expected {expected}, got {_describe_node(node, value)}")

    def sequence(self, item_tp: Any, node: Node, path: str, key: str) -> tuple[Any, ...]:
        self.plain_tag(node, path)
        if not isinstance(node, SequenceNode):
            got = _describe_node(node, self.scalar(node, path))
            problem = f"expected {_describe_type(tuple[item_tp, ...])}, got {got}"
            if got == "a string":
                problem += " (write a one-item list: [value] or '- value' lines)"
            raise self.error(node, path, problem)
        return tuple(
            self.build(item_tp, item, f"{path}[{i}]", f"{key}[]")
            for i, item in enumerate(node.value)
        )

    def dataclass(self, cls: Any, node: Node, path: str, key: str) -> Any:
        empty = isinstance(node, ScalarNode) and self.scalar(node, path) is None
        if empty and not _required(cls):
            # `section:` with every key commented out means the section's defaults.
            return cls()
        self.plain_tag(node, path)
        if not isinstance(node, MappingNode):
            got = _describe_node(node, self.scalar(node, path))
            problem = f"expected a mapping of {'sections' if not path else 'settings'}, got {got}"
            raise self.error(node, path, problem)
        hints = get_type_hints(cls)
        known = [f.name for f in dataclasses.fields(cls)]
        seen: dict[str, int] = {}
        kwargs: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise self.error(key_node, path, "YAML merge keys ('<<') are not supported")
            name = self.scalar(key_node, path)
            if not isinstance(key_node, ScalarNode) or not isinstance(name, str):
                shown = key_node.value if isinstance(key_node, ScalarNode) else "?"
                raise self.error(key_node, path, f"key {shown!r} is not a string")
            child = f"{path}.{name}" if path else name
            line = key_node.start_mark.line + 1
            if name in seen:
                raise self.error(key_node, child, f"duplicate key (first on line {seen[name]})")
            seen[name] = line
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"did you mean {close[0]!r}?" if close else "known keys: " + ", ".join(known)
                raise self.error(key_node, child, f"unknown key; {hint}")
            child_key = f"{key}.{name}" if key else name
            kwargs[name] = self.build(hints[name], value_node, child, child_key)
        missing = [name for name in _required(cls) if name not in kwargs]
        if missing:
            names = ", ".join(repr(name) for name in missing)
            plural = "s" if len(missing) > 1 else ""
            raise self.error(node, path, f"missing required key{plural} {names}")
        return cls(**kwargs)


# --------------------------------------------------------------------------- entry points


def unix_socket_path(spec: str) -> str | None:
    """The path of a unix `milter.socket` (`unix:` or `local:`; `_milter_socket` keeps the
    family in lower case), else None."""
    family, _, path = spec.partition(":")
    return path if family in ("unix", "local") else None


def group_id(name: str, file: str | None = None) -> int:
    """The id of `milter.socket_group`; a ConfigError naming the configuration `file` (the
    key's line is not kept past loading) when the system has no such group."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(file or "configuration", None, "milter.socket_group",
                          f"no such group {name!r}") from None


# Any token's shape: the check below reads only where a template puts it.
_SAMPLE_TOKEN = token.Keyring([(1, bytes(32))]).make(1)


def warnings(settings: Settings) -> list[str]:
    """What a valid configuration does that its author most likely did not mean: `serve` logs
    each at start and after a reload, `check-config` prints them."""
    found = []
    if not settings.inbound.addresses:
        found.append("inbound.addresses is empty: no mail is inbound, so no reply is "
                     "threaded; list the support addresses in the configuration")
    tag = settings.tokens.subject_template.strip()
    stamps = (("text", settings.stamp.text, settings.stamp.text_template, str),
              ("html", settings.stamp.html, settings.stamp.html_template, html_to_text))
    for name, on, template, as_read in stamps:
        if not on:
            continue
        # Inbound reads body tokens only in the Subject tag's form: a body tag in another
        # form is stamped on every mail and never read back.
        written = as_read(template.replace(token.PLACEHOLDER, _SAMPLE_TOKEN))
        if next(token.find_tokens(written, settings.tokens.subject_template), None) is None:
            found.append(f"stamp.{name}_template does not hold {{token}} in the form of "
                         f"tokens.subject_template ({tag}): a reply that keeps only the body's "
                         f"tag is not threaded by it; write it as {tag} there")
    return found


def load_config(path: str | os.PathLike[str] | None) -> Settings:
    """Settings from a YAML file; None means the embedded defaults (a file that sets nothing
    is refused, see `_load_text`). Raises ConfigError."""
    if path is None:
        return Settings()
    file = os.fspath(path)
    try:
        with open(file, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ConfigError(file, None, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(file, line, "", "not UTF-8 text") from None
    return _load_text(text, file)


def _load_text(text: str, file: str) -> Settings:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = None if mark is None else mark.line + 1
        # PyYAML splits its messages: "while scanning a simple key" + "could not find ':'".
        context = exc.context
        start = exc.context_mark
        if context and context.startswith("while ") and start and start.line + 1 != line:
            context += f" started on line {start.line + 1}"
        parts = [str(p) for p in (context, exc.problem) if p]
        problem = ", ".join(parts) or "syntax error"
        raise ConfigError(file, line, "", f"invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(file, None, "", f"invalid YAML: {exc}") from None
    if root is None or _sets_nothing(root):
        # A file without a single setting is a truncated write or a template that rendered
        # nothing, not a wish for the defaults (whose inbound.addresses is empty, so a reload
        # would stop threading replies): refused, and the defaults are one flag away.
        raise ConfigError(file, None, "", "empty configuration; run without --config for the "
                          "embedded defaults")
    settings = _Builder(file).build(Settings, root, "", "")
    assert isinstance(settings, Settings)
    return settings


def _sets_nothing(root: Node) -> bool:
    """Whether a document (comments or `---` alone compose to None, not here) holds no key
    below its sections: null, `{}`, or section names with nothing under them (`inbound:`).
    Any key inside a section is a setting, an explicit `null` or `[]` too."""
    if isinstance(root, MappingNode):
        return all(_is_null(value) or (isinstance(value, MappingNode) and not value.value)
                   for _key, value in root.value)
    return _is_null(root)


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


def _plain(value: Any) -> Any:
    """Lists and dicts for yaml.safe_dump (which knows neither tuples nor dataclasses)."""
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def _render_value(value: Any, rule: _Rule | None) -> str:
    if rule is not None and rule.render is not None and value is not None:
        return rule.render(value)
    if isinstance(value, str) and any(ord(c) < 0x20 for c in value):
        # One line: a JSON string is a YAML double-quoted scalar ("\n[ref:{token}]\n").
        return json.dumps(value, ensure_ascii=False)
    value = _plain(value)
    dumped = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return dumped.removesuffix("...").strip()


def render_defaults() -> str:
    """The embedded defaults as a commented YAML document; `load_config` reads it back equal."""
    lines = [
        "# casethread configuration: the embedded defaults.",
        "# Every key is optional; a missing key takes the value shown here.",
    ]

    def walk(obj: Any, key: str, indent: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            child = f"{key}.{f.name}" if key else f.name
            rules = (_RULES.get(child), _RULES.get(f"{child}[]"))
            doc = next((r.doc for r in rules if r is not None and r.doc), "")
            if doc:
                width = max(40, 99 - len(indent))
                lines.extend(f"{indent}# {part}" for part in textwrap.wrap(doc, width))
            if dataclasses.is_dataclass(value):
                lines.append(f"{indent}{f.name}:")
                walk(value, child, indent + "  ")
                if not key:
                    lines.append("")
            else:
                lines.append(f"{indent}{f.name}: {_render_value(value, _RULES.get(child))}")

    lines.append("")
    walk(Settings(), "", "")
    return "\n".join(lines).rstrip("\n") + "\n"


def override(settings: Settings, key: str, value: Any, source: str = "command line") -> Settings:
    """`settings` with one `section.key` replaced, checked by the same rule as in YAML."""
    rule = _RULES.get(key)
    try:
        if rule is not None and rule.check is not None:
            value = rule.check(value)
    except _Invalid as exc:
        raise ConfigError(source, None, key, str(exc)) from None
    section, _, name = key.partition(".")
    changed = dataclasses.replace(getattr(settings, section), **{name: value})
    return dataclasses.replace(settings, **{section: changed})
