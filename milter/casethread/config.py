"""YAML configuration -> the frozen `Settings` dataclasses, strictly validated (DESIGN §7, §8).

The file is composed into PyYAML's node tree rather than loaded into dicts, so every error can
name its line and PyYAML's silent "last duplicate key wins" can be rejected. The schema is the
dataclasses themselves: `_Builder.build` walks their field types generically, and `_RULES` adds
what a type cannot say (ranges, formats, unit strings, comments for `render_defaults`), keyed by
the key path (`section.key`, with `[]` standing for any list index). Lists of mappings (routing
rules, external refs) are built item by item as dataclasses; a field without a default is a
required key. The value checks are `config_checks`; one on a list or section can blame one item
or key below it (`config_checks.Invalid.at`).
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

from . import config_checks as checks
from .core import token
from .core.addresses import AddressMatcher, is_glob
from .core.bodytext import html_to_text
from .core.direction import unmapped
from .core.settings import (
    Settings,
)

__all__ = ["ConfigError", "load_config", "override", "render", "render_defaults"]

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


def _size_rule(minimum: int, doc: str) -> _Rule:
    """A size written with its unit (`512MiB`), at least `minimum` bytes."""
    return _Rule(parse=checks.size(minimum), expects=checks.SIZE_EXPECTS,
                 render=checks.render_size, doc=doc)


def _duration_rule(doc: str) -> _Rule:
    return _Rule(parse=checks.parse_duration, expects=checks.DURATION_EXPECTS,
                 render=checks.render_duration, doc=doc)


# One row per key path that needs more than its type. `[]` stands for any list index.
_RULES: dict[str, _Rule] = {
    "milter": _Rule(doc="How the MTA reaches the milter, and what happens when it fails."),
    "milter.socket": _Rule(
        check=checks.milter_socket,
        doc="libmilter socket: inet:PORT@HOST, inet6:PORT@HOST or unix:/abs/path.",
    ),
    "milter.socket_mode": _Rule(
        parse=checks.parse_mode,
        expects=checks.MODE_EXPECTS,
        render=lambda mode: f"0{mode:o}",
        doc="Mode of a unix socket (octal); the MTA's user must be able to write it.",
    ),
    "milter.socket_group": _Rule(
        check=checks.non_empty,
        doc="Group of a unix socket (e.g. postfix); null keeps the milter's own group.",
    ),
    "milter.on_error": _Rule(
        doc="On an internal error: accept (pass the message unchanged) or tempfail (4xx)."
    ),
    "milter.timeout": _Rule(
        check=checks.int_range(1, 3600),
        doc="libmilter I/O timeout: seconds to wait on a silent MTA connection (1-3600).",
    ),
    "milter.drain_timeout": _Rule(
        check=checks.int_range(0, 3600),
        doc="On SIGTERM: seconds the messages under way may take to finish (0-3600).",
    ),
    "milter.log_level": _Rule(doc="debug, info, warning or error."),
    "milter.log_target": _Rule(
        doc="stderr (the journal under systemd) or syslog (facility mail, via /dev/log)."
    ),
    "milter.metrics_listen": _Rule(
        check=checks.metrics_listen,
        doc="Prometheus endpoint HOST:PORT (e.g. 127.0.0.1:9894, [::1]:9894); null = off.",
    ),
    "index": _Rule(doc="The case index (LMDB)."),
    "index.path": _Rule(check=checks.non_empty, doc="Directory of the index (and its token key)."),
    "index.map_size": _size_rule(
        checks.MIB,
        "Address space LMDB reserves at start (e.g. 512MiB, 1GiB); it doubles when full.",
    ),
    "index.max_map_size": _size_rule(
        checks.MIB,
        "Ceiling of that growth; null = the larger of 16 x map_size and 64GiB.",
    ),
    "index.sync": _Rule(
        doc="full: fsync each message's index writes before answering the MTA; async: flush "
        "once a second (faster; a power cut can lose the last second of index writes).",
    ),
    "headers": _Rule(doc="Headers added to inbound mail."),
    "headers.prefix": _Rule(
        check=checks.header_prefix, doc="Prefix of every header casethread adds or strips."
    ),
    "cases": _Rule(doc="Case ids."),
    "cases.id_prefix": _Rule(
        check=checks.id_prefix, doc="Prefix of new case ids (0-16 characters)."
    ),
    "cases.id_digits": _Rule(
        check=checks.int_range(1, 12), doc="Zero-padded digits of new case ids (1-12)."
    ),
    "cases.reopen_within": _duration_rule(
        "A reply to a case resolved longer ago opens a new related case (90s, 12h, 14d, 2w).",
    ),
    "outbound": _Rule(doc="Mail counts as outbound when any of these signals holds."),
    "outbound.daemon_names[]": _Rule(
        check=checks.non_empty, doc="{daemon_name} macro values that mark a submission service."
    ),
    "outbound.authenticated": _Rule(doc="Authenticated (SASL) sessions are outbound."),
    "outbound.client_networks[]": _Rule(
        check=checks.cidr, doc="Client networks (CIDR) whose mail is outbound, e.g. app servers."
    ),
    "outbound.new_case": _Rule(
        doc="Outbound mail matching no case: create a new case, or skip it."
    ),
    "outbound.internal_recipients[]": _Rule(
        check=checks.recipient,
        doc="Recipients (local@domain, @domain, pattern) whose mail opens no case when it "
        "goes to none but them: an app's notices to agents, notes to colleagues; a support "
        "address never counts as one.",
    ),
    "outbound.message_id_domain": _Rule(
        check=checks.domain, doc="Domain of Message-IDs we add; null = the From domain."
    ),
    "inbound.addresses[]": _Rule(
        check=checks.recipient,
        doc="Support addresses: local@domain, @domain, or a pattern (support+*@example.com).",
    ),
    "inbound.references_limit": _Rule(
        check=checks.int_range(1, 10000), doc="How many of the newest References IDs are looked up."
    ),
    "inbound.strategies": _Rule(
        check=checks.strategies,
        doc="Match strategies in order, the first live case wins: bounce, token, in-reply-to, "
        "references, thread-index, subject-ref, body-ref, external-ref, subject-match.",
    ),
    "inbound.strategies[]": _Rule(check=checks.strategy),
    "inbound.scan_budget": _size_rule(
        checks.KIB,
        "Decoded body text the token and reference scans read at most (at least 1KiB).",
    ),
    "inbound.read_limit": _size_rule(
        checks.KIB,
        "Body bytes the milter reads of inbound mail its header fields do not resolve "
        "(spooled past stamp.spool_threshold; at least 1KiB).",
    ),
    "inbound.case_ref_pattern": _Rule(
        check=checks.regex(groups=1, flags=re.IGNORECASE, empty_ok=False),
        doc="Regex of a human case reference in Subject/body; group 1 is the case id.",
    ),
    "inbound.external_refs": _Rule(
        check=checks.external_refs,
        doc="Other systems' ticket numbers (strategy external-ref); names must be unique.",
    ),
    "inbound.external_refs[]": _Rule(check=checks.external_ref),
    "inbound.external_refs[].name": _Rule(
        check=checks.ref_name, doc="The other system, e.g. servicenow: 1-32 of a-z 0-9 _ -."
    ),
    "inbound.external_refs[].pattern": _Rule(
        check=checks.regex(empty_ok=False),
        doc="Regex of its ticket number; group 1 (or the whole match) is the reference.",
    ),
    "inbound.external_refs[].sender[]": _Rule(
        check=checks.recipient,
        doc="Only mail From these (address, @domain, pattern); empty: anyone.",
    ),
    "inbound.external_refs[].search_subject": _Rule(doc="Look for the number in the Subject."),
    "inbound.external_refs[].search_body": _Rule(doc="Look for the number in the body text."),
    "inbound.list_authors": _Rule(
        doc="A support address is a Google Group or Mailman list: its copy of a customer's "
        "mail under its own From is the customer's (X-Original-From, a one-address Reply-To). "
        "Only where our domain's DMARC rejects forged mail.",
    ),
    "inbound.notice_senders[]": _Rule(
        check=checks.recipient,
        doc="From addresses (address, @domain, pattern) of a mail filter's notices: a "
        "quarantine digest, held or blocked mail. Their mail is auto-generated: it threads by "
        "the tag it quotes, moves no case, adds nobody, opens none.",
    ),
    "inbound.subject_match": _Rule(
        doc="Strategy subject-match: same subject from a participant of a recent case."
    ),
    "inbound.subject_match.window": _duration_rule(
        "How recent that case's last message must be (90s, 30m, 12h, 14d, 2w).",
    ),
    "inbound": _Rule(
        check=checks.inbound,
        doc="Mail that is not outbound is inbound when a recipient matches.",
    ),
    "inbound.flood": _Rule(doc="Loop protection: more than limit messages within window."),
    "inbound.flood.limit": _Rule(
        check=checks.int_range(1, 100000),
        doc="Messages one sender may send within window (1-100000); a report the bounce "
            "strategy matched counts per sender and case.",
    ),
    "inbound.flood.window": _duration_rule(
        "The flood window (90s, 30m, 12h, 14d, 2w).",
    ),
    "tokens": _Rule(doc="The signed threading token."),
    "tokens.keys": _Rule(
        check=checks.no_duplicates("key file"),
        doc="Key files (absolute paths): the first signs, all verify; [] = INDEX/token.key.",
    ),
    "tokens.keys[]": _Rule(check=checks.absolute_path),
    "tokens.subject_template": _Rule(
        check=checks.subject_template,
        doc="Appended to the Subject; {token} once, with text on both sides, one line, "
        "ASCII only.",
    ),
    "tokens.anchor_domain": _Rule(
        check=checks.domain,
        doc="Domain of the References anchor; null = the domain of Message-IDs casethread "
        "adds (outbound.message_id_domain, else the From domain).",
    ),
    "stamp": _Rule(doc="Outbound body stamping."),
    "stamp.html": _Rule(doc="Add a hidden tag with the token to the main text/html part."),
    "stamp.text": _Rule(doc="Add a token line to the end of the main text/plain part."),
    "stamp.html_template": _Rule(
        check=checks.template, doc="The HTML tag; {token} is replaced (at most 2000 characters)."
    ),
    "stamp.text_template": _Rule(
        check=checks.template, doc="The text line; {token} is replaced (at most 2000 characters)."
    ),
    "stamp.dkim_signed": _Rule(
        doc="Mail already DKIM-signed: keep (leave the body and every field the signature "
        "covers) or stamp (all of it; a signer after casethread signs it again)."
    ),
    "stamp.spool_threshold": _size_rule(
        64 * checks.KIB,
        "Bodies larger than this are spooled to a temporary file (at least 64KiB).",
    ),
    "routing": _Rule(doc="Queues for new cases: the first matching rule wins."),
    "routing.default_queue": _Rule(
        check=checks.queue, doc="Queue when no rule matches: 1-64 of A-Z a-z 0-9 . _ : / -."
    ),
    "routing.rules": _Rule(
        check=checks.routing_rules,
        doc="Rules in order; all conditions given must hold; a rule with none (a catch-all) "
        "may only be last.",
    ),
    "routing.rules[]": _Rule(check=checks.routing_rule),
    "routing.rules[].queue": _Rule(check=checks.queue, doc="The queue (required)."),
    "routing.rules[].rcpt[]": _Rule(
        check=checks.recipient, doc="Envelope recipients: address, @domain or pattern."
    ),
    "routing.rules[].sender[]": _Rule(
        check=checks.recipient, doc="From addresses: address, @domain or pattern."
    ),
    "routing.rules[].subject": _Rule(
        check=checks.regex(flags=re.IGNORECASE), doc="Regex searched in the Subject, ignoring case."
    ),
    "routing.rules[].header": _Rule(
        check=checks.header_name, doc="A header name; its value must match header_regex."
    ),
    "routing.rules[].header_regex": _Rule(
        check=checks.regex(flags=re.IGNORECASE),
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


def _describe_node(node: Node, value: Any) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return checks.describe_value(value)


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
            except checks.Invalid as exc:
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
            except checks.Invalid as exc:
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
    """The path of a unix `milter.socket` (`unix:` or `local:`; `checks.milter_socket` keeps the
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
    found += _wildcard_lead_warnings(settings)
    found += _notice_sender_warnings(settings)
    found += _socket_warnings(settings)
    found += _client_network_warnings(settings)
    return found


# Clients whose mail is surely not all our own people's: Postfix presents its own bounces as
# from localhost, and a network of every address takes in every stranger (and the customer
# mail a gateway or a backup MX relays).
_LOOPBACKS = tuple(ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "::ffff:127.0.0.1"))


def _client_network_warnings(settings: Settings) -> list[str]:
    """`outbound.client_networks` entries of every address, or holding loopback."""
    found = []
    for i, entry in enumerate(settings.outbound.client_networks):
        # As the classifier reads it: `::ffff:0:0/96` is every IPv4 client, not loopback alone.
        net = unmapped(ipaddress.ip_network(entry, strict=False))
        if net.prefixlen == 0:
            what = "every client"
        elif any(ip in net for ip in _LOOPBACKS if ip.version == net.version):
            what = "loopback, where Postfix's own bounces and every local process's mail come from"
        else:
            continue
        found.append(f"outbound.client_networks[{i}] ({entry}) covers {what}: all that mail "
                     "is outbound, so it is stamped, opens cases, and its X-Case-ID and "
                     "X-Case-State close or move any case; list the app servers' own "
                     "addresses, or use a submission service (outbound.daemon_names)")
    return found


# Whoever may connect to the milter socket speaks for the MTA: its macros make mail outbound,
# whose X-Case-ID and X-Case-State close or move any case and whose stamped Subject hands back
# that case's token (README, *Who can attach mail to a case*).
_SPEAKS_FOR_THE_MTA = ("speaks for the MTA: it can close or move any case and get any case's "
                       "token")


def _socket_warnings(settings: Settings) -> list[str]:
    """A milter socket open to more than the MTA: a TCP one on every address, a unix one
    that every local user may connect to."""
    spec, mode = settings.milter.socket, settings.milter.socket_mode
    if unix_socket_path(spec) is not None:
        if not mode & 0o002:
            return []
        return [f"milter.socket_mode {mode:04o} lets every local user connect to the socket, and "
                f"whoever connects {_SPEAKS_FOR_THE_MTA}; use 0660 with milter.socket_group "
                "set to the MTA's group"]
    host = spec.partition("@")[2].strip("[]")
    try:
        everywhere = ipaddress.ip_address(host).is_unspecified
    except ValueError:  # a host name: whatever it names was chosen
        everywhere = False
    if not everywhere:
        return []
    return [f"milter.socket {spec} listens on every address of the host, and whoever reaches "
            f"the port {_SPEAKS_FOR_THE_MTA}; name the one address the MTA connects to "
            "(127.0.0.1, or a private address behind a firewall)"]


def _notice_sender_warnings(settings: Settings) -> list[str]:
    """`inbound.notice_senders` entries that cover a support address, so most likely the
    domain our own people write from: their mail to support would thread, add nobody and
    open no case. Told by the support addresses written out (`@domain` ones as `x@domain`)."""
    ours = {entry: "x" + entry if entry.startswith("@") else entry
            for entry in settings.inbound.addresses if not is_glob(entry)}
    found = []
    for i, entry in enumerate(settings.inbound.notice_senders):
        matcher = AddressMatcher((entry,))
        covered = [support for support, written in ours.items() if matcher.matches(written)]
        if covered:
            found.append(
                f"inbound.notice_senders[{i}] ({entry}) covers the support address "
                f"{covered[0]}: mail from there, and from whoever writes from its domain, "
                "would be taken for a mail filter's notice (it threads but opens no case and "
                "adds nobody); name the filter's own sender instead")
    return found


def _wildcard_lead_warnings(settings: Settings) -> list[str]:
    patterns = [("inbound.case_ref_pattern", settings.inbound.case_ref_pattern)]
    patterns += [(f"inbound.external_refs[{i}].pattern", rule.pattern)
                 for i, rule in enumerate(settings.inbound.external_refs)]
    for i, rule in enumerate(settings.routing.rules):
        patterns += [(f"routing.rules[{i}].{key}", value)
                     for key, value in (("subject", rule.subject),
                                        ("header_regex", rule.header_regex)) if value]
    # A lookahead's wildcard is part of what it says ("(?=.*a)(?=.*b)": both, anywhere after
    # the position; "(?!.*x)"): dropping it would change the pattern, anchoring it does not.
    return [f"{key} starts with a wildcard ('.*', '.+' or the like): a search finds the rest "
            "anywhere without it, and with it takes time quadratic in the length of a line "
            "(Python's regular expressions have no timeout); drop it, or where it must stay "
            "(a lookahead: '(?=.*a)(?=.*b)') anchor the pattern: '^' or '(?m)^'"
            for key, pattern in patterns if checks.wildcard_lead(pattern)]


def load_config(path: str | os.PathLike[str] | None) -> Settings:
    """Settings from a YAML file; None means the embedded defaults (a file that sets nothing
    is refused, see `_load_text`). Raises ConfigError."""
    if path is None:
        return Settings()
    file = os.fspath(path)
    if not file:  # `--config "$FILE"` with FILE unset: not the defaults, and no ": cannot read"
        raise ConfigError("--config", None, "", "an empty file name; leave --config out for "
                          "the embedded defaults")
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


_DEFAULTS_HEADING = ("casethread configuration: the embedded defaults.\n"
                     "Every key is optional; a missing key takes the value shown here.")


def render_defaults() -> str:
    """The embedded defaults as a commented YAML document (`check-config --defaults`)."""
    return render(Settings(), _DEFAULTS_HEADING)


def render(settings: Settings, heading: str) -> str:
    """`settings` as a YAML document, every key with its comment, that `load_config` reads
    back equal (`check-config --show`: what is in effect, defaults filled in)."""
    lines = [f"# {line}" for line in heading.splitlines()]

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
            elif value and isinstance(value, tuple) and dataclasses.is_dataclass(value[0]):
                lines.append(f"{indent}{f.name}:")  # routing rules, external refs: a block each
                for item in value:
                    pairs = [f"{g.name}: " + _render_value(getattr(item, g.name),
                                                           _RULES.get(f"{child}[].{g.name}"))
                             for g in dataclasses.fields(item)]
                    lines.append(f"{indent}  - {pairs[0]}")
                    lines.extend(f"{indent}    {pair}" for pair in pairs[1:])
            else:
                lines.append(f"{indent}{f.name}: {_render_value(value, _RULES.get(child))}")

    lines.append("")
    walk(settings, "", "")
    return "\n".join(lines).rstrip("\n") + "\n"


def override(settings: Settings, key: str, value: Any, source: str = "command line") -> Settings:
    """`settings` with one `section.key` replaced, checked by the same rule as in YAML."""
    rule = _RULES.get(key)
    try:
        if rule is not None and rule.check is not None:
            value = rule.check(value)
    except checks.Invalid as exc:
        raise ConfigError(source, None, key, str(exc)) from None
    section, _, name = key.partition(".")
    changed = dataclasses.replace(getattr(settings, section), **{name: value})
    return dataclasses.replace(settings, **{section: changed})
