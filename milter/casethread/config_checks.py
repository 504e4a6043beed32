"""The value checks of the configuration (`config._RULES`): each takes a key's typed (or plain
YAML) value and returns it, maybe normalised, or raises `Invalid` saying what is wrong in
words a sysadmin can act on. They know nothing of YAML nodes or lines: `config` adds the
file, line and key path.
"""

from __future__ import annotations

import difflib
import importlib
import ipaddress
import os
import re
from collections.abc import Callable
from typing import Any

from .core import token
from .core.addresses import ascii_domain, is_glob
from .core.msgid import is_plain_domain
from .core.settings import STRATEGY_NAMES, ExternalRefRule, InboundSettings, RoutingRule


class Invalid(Exception):
    """Raised by converters and checks; `config._Builder` adds the file, line and key path.

    `at` points below the checked value (`("strategies", 3)`, `(2, "name")`), so a check on a
    list or a section can blame the one item or key that is wrong, with that item's line.
    """

    def __init__(self, problem: str, at: tuple[str | int, ...] = ()) -> None:
        super().__init__(problem)
        self.at = at


def int_range(low: int, high: int) -> Callable[[int], int]:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise Invalid(f"{value} is out of range ({low}-{high})")
        return value

    return check


def non_empty(value: str) -> str:
    if not value.strip():
        raise Invalid("must not be empty")
    return value


def domain(value: str) -> str:
    value = ascii_domain(value)  # an internationalised domain as its A-label (RFC 5322 msg-id)
    if not is_plain_domain(value):
        raise Invalid(f"{value!r} is not a domain name (letters, digits, hyphens and dots)")
    return value


KIB = 1024
MIB = 1024**2
_UNITS = {
    "": 1,
    "b": 1,
    "k": KIB,
    "kib": KIB,
    "m": MIB,
    "mib": MIB,
    "g": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tib": 1024**4,
}
# A number and maybe a unit: sizes and durations.
_AMOUNT_RE = re.compile(r"\s*(\d+)\s*([A-Za-z]*)\s*")


def _amount(value: Any, expects: str, what: str, examples: str) -> tuple[int, str | None]:
    """An integer as it is (unit None), or a string's number and unit as written."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise Invalid(f"expected {expects}, got {describe_value(value)}")
    if isinstance(value, int):
        return value, None
    match = _AMOUNT_RE.fullmatch(value)
    if match is None:
        raise Invalid(f"{value!r} is not a {what} (e.g. {examples})")
    return int(match.group(1)), match.group(2)


SIZE_EXPECTS = "a size in bytes (an integer or a string like '512MiB')"


def size(minimum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        size, written = _amount(value, SIZE_EXPECTS, "size", "512MiB, 1GiB, 2G")
        unit = (written or "").lower()
        if unit in ("kb", "mb", "gb", "tb"):
            # 1000- or 1024-based is anyone's guess; make the reader say which.
            binary = unit[0].upper() + "iB"
            raise Invalid(f"ambiguous unit {written!r}: write {binary} (powers of 1024)")
        if unit not in _UNITS:
            units = "KiB, MiB, GiB, TiB or K, M, G, T"
            raise Invalid(f"unknown unit {written!r} (use {units})")
        size *= _UNITS[unit]
        if size < minimum:
            raise Invalid(f"{value!r} is too small: at least {render_size(minimum)}")
        return size

    return parse


def render_size(size: int) -> str:
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", MIB), ("KiB", KIB)):
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
            raise Invalid(f"{host!r} is not a host name or IP address") from None
        return
    if not isinstance(address, want):
        other = "inet6" if family == "inet" else "inet"
        raise Invalid(f"{host!r} is an IPv{address.version} address: use {other}:PORT@{host}")


# libmilter: `len(path) + 1 >= sizeof(sun_path)` (108 on Linux) fails at start-up.
_SUN_PATH_MAX = 106


def milter_socket(value: str) -> str:
    """The socket spec with its family in lower case (`UNIX:/run/x.sock` -> `unix:...`): serve
    tells the families apart as libmilter writes them."""
    family, sep, rest = value.partition(":")
    family = family.lower()
    value = f"{family}{sep}{rest}"
    if not sep or family not in ("inet", "inet6", "unix", "local"):
        raise Invalid(
            f"{value!r} is not a milter socket "
            "(inet:PORT@HOST, inet6:PORT@HOST, unix:/PATH or local:/PATH)"
        )
    if family in ("unix", "local"):
        if not rest.startswith("/"):
            raise Invalid(f"{value!r}: the socket path must be absolute")
        if len(rest.encode()) > _SUN_PATH_MAX:
            raise Invalid(f"{value!r}: the socket path is longer than {_SUN_PATH_MAX} bytes")
        return value
    port, at, host = rest.partition("@")
    if not at:
        if re.fullmatch(r".+:\d+", rest):
            # Postfix's main.cf writes inet:HOST:PORT; libmilter wants inet:PORT@HOST.
            hint = f"{family}:{rest.rsplit(':', 1)[1]}@{rest.rsplit(':', 1)[0]}"
            raise Invalid(f"{value!r}: libmilter's form is {family}:PORT@HOST (e.g. {hint!r})")
        raise Invalid(f"{value!r}: name the host ({family}:PORT@HOST), e.g. 127.0.0.1")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise Invalid(f"{value!r}: port {port!r} is not a number in 1-65535")
    if not host:
        raise Invalid(f"{value!r}: the host after '@' is empty")
    _socket_host(family, host)
    return value


MODE_EXPECTS = "a file mode in octal (e.g. 0660)"


def parse_mode(value: Any) -> int:
    # YAML 1.1 reads `0660` as octal already; a string is taken as octal too ("660", "0o660").
    if isinstance(value, str) and re.fullmatch(r"(0o?)?[0-7]{3,4}", value.strip()):
        value = int(value.strip().removeprefix("0o"), 8)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"expected {MODE_EXPECTS}, got {describe_value(value)}")
    if not 0 <= value <= 0o777:
        raise Invalid(f"{value} is not a file mode: write it in octal with a leading 0 (0660)")
    return value


def _field_name(longest: int, what: str = "") -> Callable[[str], str]:
    """A check that the value is an RFC 5322 field name (printable ASCII, 33-126, but ':') of
    at most `longest` characters; `what` leads the predicate in its error."""

    def check(value: str) -> str:
        if not 1 <= len(value) <= longest:
            raise Invalid(f"{value!r} {what}must be 1-{longest} characters")
        bad = next((c for c in value if not 33 <= ord(c) <= 126 or c == ":"), None)
        if bad is not None:
            raise Invalid(f"{value!r} {what}contains {bad!r}: header names allow no spaces or "
                          "colons")
        return value

    return check


# Fields mail must keep: RFC 5322's, MIME's (RFC 2045, 2183), the list fields (RFC 2369, 2919,
# 8058), Auto-Submitted (RFC 3834) and Precedence, trace and authentication fields a filter or
# a Sieve script after casethread reads, Outlook's threading fields, and X- fields casethread
# and spam filters read. Every inbound field whose name starts with the prefix is removed (and
# an outbound one taken as the app's), so a prefix one of these starts with ("Content-", "Re",
# "X-") would strip it from every message.
_KEPT_FIELDS = (
    "Return-Path", "Received", "Date", "From", "Sender", "Reply-To", "To", "Cc", "Bcc",
    "Message-ID", "In-Reply-To", "References", "Subject", "Comments", "Keywords",
    "Resent-Date", "Resent-From", "Resent-Sender", "Resent-To", "Resent-Cc", "Resent-Bcc",
    "Resent-Message-ID", "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
    "Content-ID", "Content-Description", "Content-Disposition", "Content-Language",
    "List-Id", "List-Help", "List-Unsubscribe", "List-Unsubscribe-Post", "List-Subscribe",
    "List-Post", "List-Owner", "List-Archive", "Auto-Submitted", "Precedence",
    "Disposition-Notification-To", "Delivered-To", "DKIM-Signature", "ARC-Seal",
    "ARC-Message-Signature", "ARC-Authentication-Results", "Authentication-Results",
    "Received-SPF", "Thread-Index", "Thread-Topic", "X-Original-From", "X-Loop",
    "X-Auto-Response-Suppress", "X-Autoreply", "X-Failed-Recipients", "X-Spam-Status",
)
_prefix_spelling = _field_name(40)


def header_prefix(value: str) -> str:
    """A field-name prefix under which no field mail must keep falls (`_KEPT_FIELDS`)."""
    _prefix_spelling(value)
    kept = next((name for name in _KEPT_FIELDS if name.lower().startswith(value.lower())), None)
    if kept is not None:
        raise Invalid(f"{value!r} would remove every {kept} field: casethread removes each "
                      "inbound field whose name starts with it; choose one no mail field "
                      "starts with, such as X-Case-")
    return value


header_name = _field_name(76, "is not a header name: it ")


def _spelled(pattern: str, spelling: str) -> Callable[[str], str]:
    """A check that the whole value matches `pattern`; `spelling` says what that allows."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise Invalid(f"{value!r} must be {spelling}")
        return value

    return check


id_prefix = _spelled(r"[A-Za-z0-9._:-]{0,16}", "0-16 characters of A-Z a-z 0-9 . _ : -")
queue = _spelled(r"[A-Za-z0-9._:/-]{1,64}", "1-64 characters of A-Z a-z 0-9 . _ : / -")
ref_name = _spelled(r"[a-z0-9_-]{1,32}", "1-32 characters of a-z 0-9 _ - (lower case)")


def cidr(value: str) -> str:
    try:
        network = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise Invalid(f"{value!r} is not a CIDR network") from None
    # 10.0.0.1/8 is a host someone meant, or all of 10/8: refuse to guess (a wider network
    # makes strangers' mail outbound), as Postfix's cidr tables do.
    if "/" in value and network.network_address != ipaddress.ip_interface(value.strip()).ip:
        raise Invalid(f"{value!r} has host bits set: write {network} for the network, or "
                       f"the address alone for one host")
    return str(network)


def recipient(value: str) -> str:
    address = value.strip().lower()
    if not address or any(c.isspace() for c in address) or "<" in address or ">" in address:
        raise Invalid(f"{value!r} is not an address (write it bare: support@example.com)")
    if "@" not in address:
        raise Invalid(f"{value!r} has no '@' (local@domain, @domain or a pattern like *@domain)")
    if is_glob(address):
        return address
    local, _, domain = address.rpartition("@")
    domain = ascii_domain(domain)  # an internationalised domain as its A-label
    if "@" in local or not is_plain_domain(domain):
        raise Invalid(f"{value!r} is not an address (local@domain, @domain or a pattern)")
    return f"{local}@{domain}"


_DURATION_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
DURATION_EXPECTS = "a duration (seconds, or a string like '90s', '30m', '12h', '14d', '2w')"
# Ten years: far beyond any sensible window, and it catches milliseconds typed as seconds.
_DURATION_MAX = 3650 * 86400


def parse_duration(value: Any) -> int:
    seconds, unit = _amount(value, DURATION_EXPECTS, "duration", "90s, 30m, 12h, 14d, 2w")
    # Case-sensitive on purpose: is "30M" minutes or months?
    if unit and unit not in _DURATION_UNITS:
        raise Invalid(f"unknown unit {unit!r} (use s, m, h, d or w: 90s, 30m, 12h, 14d, 2w)")
    seconds *= _DURATION_UNITS.get(unit or "", 1)
    if seconds <= 0:
        raise Invalid(f"{value!r} is not positive: at least 1s")
    if seconds > _DURATION_MAX:
        raise Invalid(f"{value!r} is too long: at most {render_duration(_DURATION_MAX)}")
    return seconds


def render_duration(seconds: int) -> str:
    for unit, factor in _DURATION_UNITS.items():
        if seconds % factor == 0:
            return f"{seconds // factor}{unit}"
    return str(seconds)  # unreachable: "s" divides everything


_REGEX_MAX = 1000


def regex(*, groups: int = 0, flags: int = 0, empty_ok: bool = True) -> Callable[[str], str]:
    def check(value: str) -> str:
        if len(value) > _REGEX_MAX:
            limit = _REGEX_MAX
            raise Invalid(f"the regular expression is {len(value)} characters: at most {limit}")
        if not value:
            # The matchers read "" as "no condition": refuse it rather than guess.
            raise Invalid("the regular expression is empty")
        try:
            compiled = re.compile(value, flags)
        except re.error as exc:
            where = "" if exc.pos is None else f" at position {exc.pos}"
            raise Invalid(f"invalid regular expression: {exc.msg}{where}") from None
        except RecursionError:
            # Python's parser recurses at each group: 499 nested `(` raised here, and
            # check-config printed a traceback, not the key.
            raise Invalid("invalid regular expression: its groups nest too deep") from None
        if compiled.groups < groups:
            raise Invalid("the regular expression needs a group: (...) around the part to extract")
        if not empty_ok and compiled.search("") is not None:
            # It would "find" an empty reference in every message.
            raise Invalid(f"{value!r} matches an empty string")
        return value

    return check


def _has_condition(rule: RoutingRule) -> bool:
    return bool(rule.rcpt or rule.sender) or rule.subject is not None or rule.header is not None


def routing_rule(rule: RoutingRule) -> RoutingRule:
    if rule.header is not None and rule.header_regex is None:
        raise Invalid("header needs header_regex (the regex its value must match)", ("header",))
    if rule.header_regex is not None and rule.header is None:
        raise Invalid("header_regex needs header (the header to match)", ("header_regex",))
    return rule


def routing_rules(rules: tuple[RoutingRule, ...]) -> tuple[RoutingRule, ...]:
    for i, rule in enumerate(rules[:-1]):
        if not _has_condition(rule):
            # It matches every message, so every rule after it would be dead.
            raise Invalid(
                "a rule without a condition (rcpt, sender, subject, header) matches every "
                "message: only the last rule may be a catch-all",
                (i,),
            )
    return rules


_STRATEGIES = STRATEGY_NAMES


def strategy(value: str) -> str:
    if value in _STRATEGIES:
        return value
    if value == "duplicate":
        raise Invalid("'duplicate' is not a strategy: duplicates are always recognised first")
    close = difflib.get_close_matches(value.lower(), _STRATEGIES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else " (known: " + ", ".join(_STRATEGIES) + ")"
    raise Invalid(f"{value!r} is not a strategy{hint}")


def no_duplicates(what: str) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    def check(values: tuple[Any, ...]) -> tuple[Any, ...]:
        for i, value in enumerate(values):
            if value in values[:i]:
                first = values.index(value)
                raise Invalid(f"{what} {value!r} is listed twice (first as item {first})", (i,))
        return values

    return check


def strategies(values: tuple[str, ...]) -> tuple[str, ...]:
    if not values:
        raise Invalid("list at least one strategy (no strategy: every message is a new case)")
    result: tuple[str, ...] = no_duplicates("strategy")(values)
    return result


def inbound(inbound: InboundSettings) -> InboundSettings:
    if "external-ref" in inbound.strategies and not inbound.external_refs:
        at = ("strategies", inbound.strategies.index("external-ref"))
        raise Invalid("'external-ref' needs at least one rule in inbound.external_refs", at)
    return inbound


def external_ref(rule: ExternalRefRule) -> ExternalRefRule:
    if not rule.search_subject and not rule.search_body:
        raise Invalid("search_subject and search_body are both false: the rule never matches")
    return rule


def external_refs(rules: tuple[ExternalRefRule, ...]) -> tuple[ExternalRefRule, ...]:
    names = [rule.name for rule in rules]
    for i, name in enumerate(names):
        if name in names[:i]:
            first = names.index(name)
            raise Invalid(f"{name!r} is used twice (first by item {first})", (i, "name"))
    return rules


_TEMPLATE_MAX = 2000


def template(value: str) -> str:
    if len(value) > _TEMPLATE_MAX:
        raise Invalid(f"the template is {len(value)} characters: at most {_TEMPLATE_MAX}")
    if token.PLACEHOLDER not in value:
        raise Invalid(f"the template must contain {token.PLACEHOLDER}")
    if "\0" in value:
        # RFC 5322 §2.3 and RFC 2045 §2.8: no NUL in mail text, whatever its encoding.
        raise Invalid("the template holds a NUL character, which no mail text may carry")
    return value


def subject_template(value: str) -> str:
    template(value)
    if not value.isascii():
        # Written into the Subject as it is: raw 8-bit there breaks RFC 5322 §2.2 without
        # SMTPUTF8, and clients show it as mojibake.
        raise Invalid("the Subject tag must be ASCII (a Subject carries no raw 8-bit text; "
                       "stamp.text_template may hold any text)")
    try:
        token.check_template(value)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    control = next((c for c in value if (c < " " and c != "\t") or c == "\x7f"), None)
    if control is not None:
        # pymilter refuses a field value with a NUL (every outbound mail would fail half
        # edited); the others are written into every Subject as they are.
        raise Invalid(f"the Subject tag holds the control character {control!r}")
    return value


def absolute_path(value: str) -> str:
    if not os.path.isabs(value):
        raise Invalid(f"{value!r} is not an absolute path")
    return value


def metrics_listen(value: str) -> str:
    """HOST:PORT of the metrics endpoint: one IP address (IPv6 in brackets), never a wildcard."""
    host, sep, port = value.rpartition(":")
    example = "e.g. 127.0.0.1:9894 or [::1]:9894"
    if not sep or not host:
        raise Invalid(f"{value!r} is not HOST:PORT ({example})")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        if not bracketed and ":" in host:
            raise Invalid(f"{value!r}: write an IPv6 address in brackets ({example})") from None
        # A name may resolve to several addresses, or to a public one: bind what is written.
        raise Invalid(f"{value!r}: the host must be an IP address ({example})") from None
    if address.version == 6 and not bracketed:
        raise Invalid(f"{value!r}: write an IPv6 address in brackets ({example})")
    if address.version == 4 and bracketed:
        raise Invalid(f"{value!r}: brackets are for IPv6 only ({example})")
    if address.is_unspecified:
        # The endpoint has no authentication: it must not appear on every interface by accident.
        raise Invalid(f"{value!r}: {host} listens on every interface; name one ({example})")
    if address.is_multicast:
        raise Invalid(f"{value!r}: {host} is a multicast address ({example})")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise Invalid(f"{value!r}: port {port!r} is not a number in 1-65535")
    return value


def describe_value(value: Any) -> str:
    """What a YAML value is, in a word, for "expected ..., got ..."."""
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


# A pattern led by a wildcard (`.*`, `.+`, `.{2,}`, lazy or possessive too), in any group or
# branch it starts with, after flags, comments or a verbose pattern's blanks (`(?x) .* x`): a
# search finds what follows it anywhere already, and Python's re, which has no timeout, then
# retries the wildcard from every position of a line: time quadratic in the line (a 1 MiB line
# of body text, a long Subject). The parsed pattern is looked at, not its text. What may match
# nothing at any position comes before it in vain: a word boundary (`\b.*x`), an empty group
# (`().*x`), a lookaround (`(?<=a).*x`), an optional item (`a*.*x`); either branch of a
# conditional group (`(a)?(?(1).*x|y)`) may lead, as a branch does; an optional group may
# start with the wildcard (`(?:.*)?x`), and so may a lookahead (`(?=.*x)`, `(?!.*x)y`), whose
# wildcard is run again at each position. An anchor (`^`, `\A`, `$`) stops the search there:
# one position, or one a line.
# Not a pattern that is the wildcard alone (`header_regex: '.*'`, "the field is there", or
# `.+`, "is not empty", also in a group): it matches, or fails, at a line's first position, in
# one pass; without it a rule has no regex to give (`header` needs `header_regex`). Nor the
# wildcard followed only by an anchor that holds where it stops: `(?m).*$` (the line's end),
# `(?s).*$`, `(?s).*\Z` (the text's). Without those flags `.*$` fails at each position of every
# line but the last, and is warned of (2.6 s for a 20,000-character line followed by another).
# The stdlib's own pattern parser (`sre_parse`, deprecated under that name since 3.11; no stub).
sre_parse: Any = importlib.import_module("re._parser")
sre_constants: Any = importlib.import_module("re._constants")
_REPEATS = (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT,
            sre_constants.POSSESSIVE_REPEAT)
_LOOKAROUNDS = (sre_constants.ASSERT, sre_constants.ASSERT_NOT)
# Zero-width and true at many positions of a line: `\b`, `\B`.
_BOUNDARIES = (sre_constants.AT_BOUNDARY, sre_constants.AT_NON_BOUNDARY)
_MULTILINE: int = sre_constants.SRE_FLAG_MULTILINE
_DOTALL: int = sre_constants.SRE_FLAG_DOTALL


def wildcard_lead(pattern: str) -> bool:
    """Whether a search with `pattern` starts with an unbounded wildcard that something
    follows (see above). A pattern the parser refuses is no warning (the config check
    reports it), nor one nested deeper than this walk recurses: it takes at most the parser's
    frames at each level of groups and alternations, and a conditional group, which the parser
    nests in fewer, one (some 800 levels, 5,000 characters, past the 1,000 a configured
    pattern has)."""
    try:
        parsed = sre_parse.parse(pattern)
    except (re.error, RecursionError, OverflowError):
        return False
    try:
        return _led(list(parsed), False, parsed.state.flags)
    except RecursionError:
        return False


def _led(items: list[tuple[Any, Any]], followed: bool, flags: int) -> bool:
    """Whether `items` start with the wildcard, maybe after items that may match nothing at any
    position, and something comes after it (`followed`: what follows `items` in the groups
    around them, an anchor that holds where the wildcard stops aside)."""
    # Where the items that end it (`_ends`) begin: one pass, not one per item (a slice and
    # a look at what follows each of 40,000 items that may match nothing took 6 s).
    tail = len(items)
    while tail and _ends(items[tail - 1:tail], flags):
        tail -= 1
    for i, (op, arg) in enumerate(items):
        after = followed or i + 1 < tail
        if op in _REPEATS:
            _low, high, repeated = arg
            stops = _wildcard(list(repeated), flags)
            if stops is not None:
                # Where it stops: a line's end, or the text's (`[\s\S]`, `(?s).`).
                return high == sre_constants.MAXREPEAT and (
                    followed or not _ends(items[i + 1:], stops))
            inner: list[tuple[Any, Any]] = list(repeated)
        elif op is sre_constants.SUBPATTERN:
            inner = list(arg[3])
            flags_inside = (flags | arg[1]) & ~arg[2]
            if _led(inner, after, flags_inside):
                return True
            if not _passes(op, arg):
                return False
            continue
        elif op is sre_constants.ATOMIC_GROUP:
            inner = list(arg)
        elif op is sre_constants.BRANCH or op is sre_constants.GROUPREF_EXISTS:
            # A loop, not any() of a generator, whose frame at each level made this walk
            # recurse deeper than the parser: 250 groups `(|` (753 characters) raised.
            for branch in _branches(op, arg):
                if _led(branch, after, flags):
                    return True
            if not _passes(op, arg):
                return False
            continue
        elif op in _LOOKAROUNDS:
            inner = list(arg[1]) if arg[0] == 1 else []  # a lookbehind has a fixed width
        else:
            inner = []
        if inner and _led(inner, after, flags):
            return True
        if not _passes(op, arg):
            return False
    return False


# Classes that match any character (`[\s\S]`, the JavaScript idiom for "anything"), as a pair
# of a category and its complement.
_COMPLEMENTS = {frozenset(pair) for pair in (
    (sre_constants.CATEGORY_SPACE, sre_constants.CATEGORY_NOT_SPACE),
    (sre_constants.CATEGORY_WORD, sre_constants.CATEGORY_NOT_WORD),
    (sre_constants.CATEGORY_DIGIT, sre_constants.CATEGORY_NOT_DIGIT))}
_LINE_BREAKS = {(sre_constants.LITERAL, 10), (sre_constants.LITERAL, 13)}


def _wildcard(items: list[tuple[Any, Any]], flags: int) -> int | None:
    r"""The flags an anchor after `items` is judged with (`_ends`) if they are one wildcard:
    `.`, `[^\n]` (`[^\r\n]`), also in a group (`(.)`: 13 s for a 20,000-letter line); with
    the dotall flag for one that matches a line break too (`[\s\S]`, `[\w\W]`: 3 s). Else
    None."""
    if len(items) != 1:
        return None
    op, arg = items[0]
    if op is sre_constants.ANY:
        return flags
    if op is sre_constants.NOT_LITERAL and arg == 10:
        return flags & ~_DOTALL
    if op is sre_constants.IN:
        codes = list(arg)
        if codes[:1] == [(sre_constants.NEGATE, None)] and set(codes[1:]) <= _LINE_BREAKS:
            return (flags & ~_DOTALL) if len(codes) > 1 else None
        categories = {a for o, a in codes if o is sre_constants.CATEGORY}
        if len(codes) == 2 and frozenset(categories) in _COMPLEMENTS:
            return flags | _DOTALL
        return None
    if op is sre_constants.SUBPATTERN:
        return _wildcard(list(arg[3]), (flags | arg[1]) & ~arg[2])
    if op is sre_constants.ATOMIC_GROUP:
        return _wildcard(list(arg), flags)
    return None


def _passes(op: Any, arg: Any) -> bool:
    """Whether the item may match nothing at any position of a line (an anchor does not).
    Loops, not all() or any() of generators: their frames made three to five at each level
    of `(|(|...y))`, which raised at 250 levels (754 characters) where the parser takes two."""
    if op is sre_constants.AT:
        return arg in _BOUNDARIES
    if op in _LOOKAROUNDS:
        return True
    if op is sre_constants.SUBPATTERN:
        branches: list[Any] = [arg[3]]
    elif op is sre_constants.ATOMIC_GROUP:
        branches = [arg]
    elif op is sre_constants.BRANCH or op is sre_constants.GROUPREF_EXISTS:
        branches = _branches(op, arg)
    elif op in _REPEATS:
        low, _high, repeated = arg
        if low == 0:
            return True
        branches = [repeated]
    else:
        return False
    for branch in branches:
        for o, a in branch:
            if not _passes(o, a):
                break
        else:
            return True
    return False


def _branches(op: Any, arg: Any) -> list[list[tuple[Any, Any]]]:
    """The branches of an alternation (`a|b`), or the two of a conditional group
    (`(?(1)yes|no)`, `(?(name)yes)`: a missing `no` matches nothing), either of which a search
    may take at a position: the group it asks about may have matched there or not."""
    if op is sre_constants.BRANCH:
        return [list(branch) for branch in arg[1]]
    _group, yes, no = arg
    return [list(yes), list(no) if no is not None else []]


def _ends(items: list[tuple[Any, Any]], flags: int) -> bool:
    r"""Whether `items` are nothing, or only anchors that hold where a wildcard stops: `$` at
    a line's end (multiline) or the text's (dotall), `\Z` at the text's (dotall)."""
    return all(op is sre_constants.AT and (
        (arg is sre_constants.AT_END and flags & (_MULTILINE | _DOTALL))
        or (arg is sre_constants.AT_END_STRING and flags & _DOTALL))
        for op, arg in items)
