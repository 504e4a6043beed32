"""casethread.config: YAML -> Settings, and every error naming FILE:LINE: key.path."""

from __future__ import annotations

import dataclasses
import re
import textwrap
import time
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import pytest
import yaml

from casethread import config_checks as checks
from casethread.config import ConfigError, load_config, render, render_defaults, warnings
from casethread.core.settings import (
    CaseSettings,
    ExternalRefRule,
    FloodSettings,
    HeaderSettings,
    InboundSettings,
    IndexSettings,
    MilterSettings,
    OutboundSettings,
    RoutingRule,
    RoutingSettings,
    Settings,
    StampSettings,
    SubjectMatchSettings,
    TokenSettings,
)

CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "casethread.yaml"


def write(tmp_path: Path, text: str, name: str = "casethread.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return str(path)


def load(tmp_path: Path, text: str) -> Settings:
    return load_config(write(tmp_path, text))


def error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(path + ":")
    return info.value


def schema_paths(cls: Any = Settings, prefix: str = "") -> set[str]:
    """Every leaf key path of the settings dataclasses, e.g. 'milter.socket'."""
    paths: set[str] = set()
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        default = getattr(cls(), f.name)
        if dataclasses.is_dataclass(default):
            paths |= schema_paths(type(default), path + ".")
        else:
            paths.add(path)
    return paths


def rule_paths(cls: Any = Settings, prefix: str = "") -> set[str]:
    """Every key path a `_RULES` row may name: sections, keys, `[]` items and their keys."""
    paths: set[str] = set()
    for name, tp in get_type_hints(cls).items():
        path = f"{prefix}{name}"
        paths.add(path)
        if dataclasses.is_dataclass(tp):
            paths |= rule_paths(tp, path + ".")
        elif get_origin(tp) is tuple:
            item = get_args(tp)[0]
            paths.add(path + "[]")
            if dataclasses.is_dataclass(item):
                paths |= rule_paths(item, path + "[].")
    return paths


def yaml_paths(node: yaml.Node, prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for key, value in node.value:
        path = f"{prefix}{key.value}"
        if isinstance(value, yaml.MappingNode):
            paths |= yaml_paths(value, path + ".")
        else:
            paths.add(path)
    return paths


# --------------------------------------------------------------------------- defaults


def test_no_file_means_embedded_defaults() -> None:
    settings = load_config(None)
    assert settings == Settings()
    assert settings.milter.socket == "inet:8894@127.0.0.1"
    assert settings.index.path == "./casethread-data"
    assert settings.index.map_size == 1 << 30


@pytest.mark.parametrize("text", [
    "", "\n\n", "# only a comment\n", "---\n", "~\n", "null\n", "{}\n",
    "inbound:\n", "tokens:\nstamp: {}\n", "\ufeff# a BOM and a comment\n",
])
def test_a_file_without_a_setting_is_refused(tmp_path: Path, text: str) -> None:
    """A truncated write or a template that rendered nothing, not a wish for the defaults
    (running without --config is that)."""
    exc = error(tmp_path, text)
    assert (exc.line, exc.path) == (None, "")
    assert str(exc) == (f"{exc.file}: empty configuration; run without --config for the "
                        "embedded defaults")


@pytest.mark.parametrize("text", ["inbound:\n  addresses: []\n", "milter:\n  timeout: 60\n",
                                  "milter:\n  metrics_listen: null\n"])
def test_one_explicit_setting_is_a_configuration(tmp_path: Path, text: str) -> None:
    assert load(tmp_path, text) == Settings()


def test_missing_keys_take_defaults(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        """
        milter:
          timeout: 30
        inbound:
          addresses: [support@example.com]
        """,
    )
    assert settings == Settings(
        milter=MilterSettings(timeout=30),
        inbound=InboundSettings(addresses=("support@example.com",)),
    )


def test_section_with_everything_commented_out_means_its_defaults(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        """
        milter:
          # socket: unix:/run/casethread.sock
        cases:
          id_digits: 8
        """,
    )
    assert settings == Settings(cases=CaseSettings(id_digits=8))


def test_full_file_round_trips_into_the_dataclasses(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        """
        milter:
          socket: unix:/run/casethread/milter.sock
          socket_mode: 0640
          on_error: tempfail
          timeout: 120
          log_level: debug
        index:
          path: /var/lib/casethread
          map_size: 4GiB
        headers:
          prefix: X-Ticket-
        cases:
          id_prefix: SUP.
          id_digits: 8
        outbound:
          daemon_names: [ORIGINATING, submission]
          authenticated: false
          client_networks:
            - 192.0.2.10
            - 10.20.0.0/16
            - 2001:DB8::/32
          new_case: skip
          message_id_domain: mail.example.com
        inbound:
          addresses:
            - Support@Example.COM
            - "@help.example.com"
            - "support+*@example.com"
          references_limit: 50
        """,
    )
    assert settings == Settings(
        milter=MilterSettings(
            socket="unix:/run/casethread/milter.sock",
            socket_mode=0o640,
            on_error="tempfail",
            timeout=120,
            log_level="debug",
        ),
        index=IndexSettings(path="/var/lib/casethread", map_size=4 << 30),
        headers=HeaderSettings(prefix="X-Ticket-"),
        cases=CaseSettings(id_prefix="SUP.", id_digits=8),
        outbound=OutboundSettings(
            daemon_names=("ORIGINATING", "submission"),
            authenticated=False,
            # Normalised: a bare address becomes a /32, IPv6 lower-cased.
            client_networks=("192.0.2.10/32", "10.20.0.0/16", "2001:db8::/32"),
            new_case="skip",
            message_id_domain="mail.example.com",
        ),
        inbound=InboundSettings(
            addresses=("support@example.com", "@help.example.com", "support+*@example.com"),
            references_limit=50,
        ),
    )


# --------------------------------------------------------------------------- error classes


def test_unknown_key_names_its_line_and_the_closest_key(tmp_path: Path) -> None:
    exc = error(
        tmp_path,
        """
        # casethread
        milter:
          socket: inet:8894@127.0.0.1

        inbound:
          # who we answer for
          adresses: [support@example.com]
        """,
    )
    assert str(exc) == f"{exc.file}:7: inbound.adresses: unknown key; did you mean 'addresses'?"
    assert (exc.line, exc.path) == (7, "inbound.adresses")


def test_unknown_top_level_key(tmp_path: Path) -> None:
    exc = error(tmp_path, "milter: {}\nmiltre:\n  timeout: 5\n")
    assert str(exc) == f"{exc.file}:2: miltre: unknown key; did you mean 'milter'?"


def test_unknown_key_without_a_close_match_lists_the_known_keys(tmp_path: Path) -> None:
    exc = error(tmp_path, "cases:\n  zzz: 1\n")
    assert str(exc) == (
        f"{exc.file}:2: cases.zzz: unknown key; known keys: id_prefix, id_digits, reopen_within"
    )


@pytest.mark.parametrize(
    ("text", "line", "path", "problem"),
    [
        (
            "inbound:\n  addresses:\n    support: yes\n",
            3,
            "inbound.addresses",
            "expected a list of strings, got a mapping",
        ),
        ("milter:\n  timeout: yes\n", 2, "milter.timeout", "expected an integer, got a boolean"),
        ("milter:\n  timeout: 1.5\n", 2, "milter.timeout", "expected an integer, got a number"),
        ("milter:\n  timeout: '60'\n", 2, "milter.timeout", "expected an integer, got a string"),
        (
            "outbound:\n  authenticated: 1\n",
            2,
            "outbound.authenticated",
            "expected true or false, got an integer",
        ),
        ("index:\n  path: [a, b]\n", 2, "index.path", "expected a string, got a list"),
        ("index:\n  path: 42\n", 2, "index.path", "expected a string, got an integer"),
        ("index:\n  path:\n", 2, "index.path", "expected a string, got null"),
        (
            "milter: inet:8894@127.0.0.1\n",
            1,
            "milter",
            "expected a mapping of settings, got a string",
        ),
        ("milter:\n  - socket\n", 2, "milter", "expected a mapping of settings, got a list"),
        (
            "outbound:\n  message_id_domain: 123\n",
            2,
            "outbound.message_id_domain",
            "expected a string or null, got an integer",
        ),
        (
            "outbound:\n  daemon_names: [ORIGINATING, 7]\n",
            2,
            "outbound.daemon_names[1]",
            "expected a string, got an integer",
        ),
        (
            "index:\n  map_size: true\n",
            2,
            "index.map_size",
            "expected a size in bytes (an integer or a string like '512MiB'), got a boolean",
        ),
        (
            "index:\n  map_size: {GiB: 1}\n",
            2,
            "index.map_size",
            "expected a size in bytes (an integer or a string like '512MiB'), got a mapping",
        ),
    ],
)
def test_wrong_types(tmp_path: Path, text: str, line: int, path: str, problem: str) -> None:
    exc = error(tmp_path, text)
    assert str(exc) == f"{exc.file}:{line}: {path}: {problem}"


def test_a_single_string_is_not_a_list(tmp_path: Path) -> None:
    exc = error(tmp_path, "inbound:\n  addresses: support@example.com\n")
    assert str(exc).startswith(
        f"{exc.file}:2: inbound.addresses: expected a list of strings, got a string"
    )
    assert "one-item list" in exc.problem


def test_bool_is_not_an_int(tmp_path: Path) -> None:
    for key in ("milter:\n  timeout", "cases:\n  id_digits", "inbound:\n  references_limit"):
        exc = error(tmp_path, f"{key}: true\n")
        assert ":2: " in str(exc)
        assert exc.problem == "expected an integer, got a boolean"


def test_literal_value_not_in_the_list_suggests_the_closest(tmp_path: Path) -> None:
    exc = error(tmp_path, "milter:\n  on_error: tempfial\n")
    assert str(exc) == (
        f"{exc.file}:2: milter.on_error: 'tempfial' is not one of 'accept', 'tempfail'; "
        "did you mean 'tempfail'?"
    )
    exc = error(tmp_path, "outbound:\n  new_case: 3\n")
    assert str(exc) == f"{exc.file}:2: outbound.new_case: an integer is not one of 'create', 'skip'"


@pytest.mark.parametrize(
    "text",
    [
        "[milter, index]\n",
        "just a string\n",
        "42\n",
    ],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    exc = error(tmp_path, text)
    assert exc.line == 1
    assert exc.path == ""
    assert "expected a mapping of sections, got" in str(exc)
    assert str(exc).startswith(f"{exc.file}:1: expected a mapping of sections")


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        (
            "milter:\n  socket: inet:8894@127.0.0.1\n  timeout: [60\n",
            4,
            "invalid YAML: while parsing a flow sequence started on line 3, expected ',' or ']'",
        ),
        ("milter:\n  socket: a\n timeout: 60\n", 3, "invalid YAML: while parsing a block mapping"),
        ("milter:\n  socket: 'a\n", 3, "invalid YAML: while scanning a quoted scalar started on"),
        (
            "milter:\n\tsocket: x\n",
            2,
            "invalid YAML: while scanning for the next token, found character '\\t'",
        ),
        (
            "milter: {}\n---\nindex: {}\n",
            2,
            "invalid YAML: expected a single document in the stream, but found another document",
        ),
        ("a: &x 1\nb: *y\n", 2, "invalid YAML: found undefined alias 'y'"),
    ],
)
def test_yaml_syntax_errors_name_the_line(
    tmp_path: Path, text: str, line: int, fragment: str
) -> None:
    exc = error(tmp_path, text)
    assert exc.line == line
    assert str(exc).startswith(f"{exc.file}:{line}: {fragment}")


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: cannot read: No such file or directory"
    assert info.value.line is None


def test_unreadable_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path))
    assert str(info.value) == f"{tmp_path}: cannot read: Is a directory"


def test_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"milter:\n  socket: inet:8894@127.0.0.1\nheaders:\n  prefix: X-F\xe4ll-\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value) == f"{path}:4: not UTF-8 text"


def test_duplicate_top_level_key_is_rejected(tmp_path: Path) -> None:
    exc = error(
        tmp_path,
        """
        milter:
          timeout: 30
        index:
          path: /var/lib/casethread
        milter:
          timeout: 90
        """,
    )
    assert str(exc) == f"{exc.file}:5: milter: duplicate key (first on line 1)"


def test_duplicate_nested_key_is_rejected(tmp_path: Path) -> None:
    exc = error(
        tmp_path,
        """
        inbound:
          addresses: [a@example.com]
          references_limit: 10
          addresses: [b@example.com]
        """,
    )
    assert str(exc) == f"{exc.file}:4: inbound.addresses: duplicate key (first on line 2)"


def test_unsupported_yaml_features(tmp_path: Path) -> None:
    exc = error(tmp_path, "base: &b {timeout: 5}\n")
    assert exc.path == "base"  # an unknown key, not a crash
    exc = error(tmp_path, "milter:\n  <<: {timeout: 5}\n")
    assert (exc.line, exc.path) == (2, "milter")
    assert "merge keys" in exc.problem
    exc = error(tmp_path, "inbound:\n  addresses: !!set {a@example.com: null}\n")
    assert (exc.line, exc.path) == (2, "inbound.addresses")
    assert "unsupported YAML tag" in exc.problem
    exc = error(tmp_path, "index:\n  path: !env CASETHREAD_DIR\n")
    assert (exc.line, exc.path) == (2, "index.path")
    assert "'!env'" in exc.problem


def test_aliases_are_followed(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        """
        outbound:
          daemon_names: &names [ORIGINATING, submission]
        inbound:
          addresses: [support@example.com]
        """,
    )
    assert settings.outbound.daemon_names == ("ORIGINATING", "submission")


# --------------------------------------------------------------------------- field validators


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("512MiB", 512 << 20),
        ("1GiB", 1 << 30),
        ("2G", 2 << 30),
        ("100M", 100 << 20),
        ("1024KiB", 1 << 20),
        ("4096k", 4 << 20),
        ("1TiB", 1 << 40),
        ("'1 GiB'", 1 << 30),
        ("1048576", 1 << 20),
        ("'2147483648'", 2 << 30),
        ("1_073_741_824", 1 << 30),
    ],
)
def test_map_size_units(tmp_path: Path, value: str, size: int) -> None:
    assert load(tmp_path, f"index:\n  map_size: {value}\n").index.map_size == size


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("64KiB", "'64KiB' is too small: at least 1MiB"),
        ("1048575", "1048575 is too small: at least 1MiB"),
        ("0", "0 is too small: at least 1MiB"),
        ("1GB", "ambiguous unit 'GB': write GiB (powers of 1024)"),
        ("1.5GiB", "'1.5GiB' is not a size (e.g. 512MiB, 1GiB, 2G)"),
        ("-1", "-1 is too small: at least 1MiB"),
        ("12 parsecs", "unknown unit 'parsecs' (use KiB, MiB, GiB, TiB or K, M, G, T)"),
        ("lots", "'lots' is not a size (e.g. 512MiB, 1GiB, 2G)"),
    ],
)
def test_map_size_errors(tmp_path: Path, value: str, problem: str) -> None:
    exc = error(tmp_path, f"# sizes\nindex:\n  map_size: {value}\n")
    assert str(exc) == f"{exc.file}:3: index.map_size: {problem}"


@pytest.mark.parametrize(
    "socket",
    [
        "inet:8894@127.0.0.1",
        "inet:1@localhost",
        "inet:65535@mail.example.com",
        "inet:8894@[127.0.0.1]",
        "inet6:8894@::1",
        "inet6:8894@[::1]",
        "inet6:8894@localhost",
        "unix:/run/casethread/milter.sock",
        "local:/var/spool/postfix/casethread/milter.sock",
    ],
)
def test_milter_socket_valid(tmp_path: Path, socket: str) -> None:
    assert load(tmp_path, f"milter:\n  socket: '{socket}'\n").milter.socket == socket


@pytest.mark.parametrize(("written", "kept"), [
    ("UNIX:/run/casethread/milter.sock", "unix:/run/casethread/milter.sock"),
    ("Inet:8894@127.0.0.1", "inet:8894@127.0.0.1"),
])
def test_milter_socket_family_is_kept_in_lower_case(tmp_path: Path, written: str,
                                                    kept: str) -> None:
    """serve's checks (a live unix socket, a busy port, the socket's group) read the family
    as libmilter writes it: an upper-case one passed them by."""
    assert load(tmp_path, f"milter:\n  socket: '{written}'\n").milter.socket == kept


@pytest.mark.parametrize(
    ("socket", "fragment"),
    [
        ("inet:0@127.0.0.1", "port '0' is not a number in 1-65535"),
        ("inet:65536@127.0.0.1", "port '65536' is not a number in 1-65535"),
        ("inet:smtp@127.0.0.1", "port 'smtp' is not a number"),
        ("inet:127.0.0.1:8894", "libmilter's form is inet:PORT@HOST (e.g. 'inet:8894@127.0.0.1')"),
        ("inet:8894", "name the host"),
        ("inet:8894@", "the host after '@' is empty"),
        ("inet:8894@::1", "'::1' is an IPv6 address: use inet6:PORT@::1"),
        ("inet6:8894@127.0.0.1", "'127.0.0.1' is an IPv4 address: use inet:PORT@127.0.0.1"),
        ("inet:8894@127.0.0.300", "'127.0.0.300' is not a host name or IP address"),
        ("inet:8894@[mail.example.com]", "is not a host name or IP address"),
        ("inet:8894@bad host", "is not a host name or IP address"),
        ("unix:run/milter.sock", "the socket path must be absolute"),
        ("unix:/" + "d" * 120, "longer than 106 bytes"),
        ("tcp:8894@127.0.0.1", "is not a milter socket"),
        ("/run/milter.sock", "is not a milter socket"),
    ],
)
def test_milter_socket_invalid(tmp_path: Path, socket: str, fragment: str) -> None:
    exc = error(tmp_path, f"milter:\n  socket: '{socket}'\n")
    assert (exc.line, exc.path) == (2, "milter.socket")
    assert fragment in exc.problem


@pytest.mark.parametrize(
    ("text", "path", "problem"),
    [
        ("milter:\n  timeout: 0", "milter.timeout", "0 is out of range (1-3600)"),
        ("milter:\n  timeout: 3601", "milter.timeout", "3601 is out of range (1-3600)"),
        (
            "inbound:\n  references_limit: 0",
            "inbound.references_limit",
            "0 is out of range (1-10000)",
        ),
        (
            "inbound:\n  references_limit: 10001",
            "inbound.references_limit",
            "10001 is out of range (1-10000)",
        ),
        ("cases:\n  id_digits: 0", "cases.id_digits", "0 is out of range (1-12)"),
        ("cases:\n  id_digits: 13", "cases.id_digits", "13 is out of range (1-12)"),
        (
            "cases:\n  id_prefix: CASE-NUMBER-0000-",
            "cases.id_prefix",
            "'CASE-NUMBER-0000-' must be 0-16 characters of A-Z a-z 0-9 . _ : -",
        ),
        (
            "cases:\n  id_prefix: C/",
            "cases.id_prefix",
            "'C/' must be 0-16 characters of A-Z a-z 0-9 . _ : -",
        ),
        ("headers:\n  prefix: ''", "headers.prefix", "'' must be 1-40 characters"),
        (
            "headers:\n  prefix: " + "X" * 41,
            "headers.prefix",
            f"'{'X' * 41}' must be 1-40 characters",
        ),
        (
            "headers:\n  prefix: X Case-",
            "headers.prefix",
            "'X Case-' contains ' ': header names allow no spaces or colons",
        ),
        (
            "headers:\n  prefix: 'X-Case:'",
            "headers.prefix",
            "'X-Case:' contains ':': header names allow no spaces or colons",
        ),
        (
            "headers:\n  prefix: X-Café-",
            "headers.prefix",
            "'X-Café-' contains 'é': header names allow no spaces or colons",
        ),
        # Every inbound field under the prefix is removed: these would strip the MIME
        # structure, the Subject, the threading fields or every X- field of all mail.
        (
            "headers:\n  prefix: Content-",
            "headers.prefix",
            "'Content-' would remove every Content-Type field: casethread removes each inbound",
        ),
        ("headers:\n  prefix: subject", "headers.prefix", "'subject' would remove every Subject"),
        ("headers:\n  prefix: Re", "headers.prefix", "'Re' would remove every Return-Path"),
        ("headers:\n  prefix: X-", "headers.prefix", "'X-' would remove every X-Original-From"),
        (
            "outbound:\n  message_id_domain: mail_example.com",
            "outbound.message_id_domain",
            "'mail_example.com' is not a domain name (letters, digits, hyphens and dots)",
        ),
        (
            "outbound:\n  message_id_domain: -mail.example.com",
            "outbound.message_id_domain",
            "'-mail.example.com' is not a domain name (letters, digits, hyphens and dots)",
        ),
        (
            "outbound:\n  message_id_domain: example..com",
            "outbound.message_id_domain",
            "'example..com' is not a domain name (letters, digits, hyphens and dots)",
        ),
        ("outbound:\n  daemon_names: ['']", "outbound.daemon_names[0]", "must not be empty"),
        ("index:\n  path: ''", "index.path", "must not be empty"),
        (
            "milter:\n  socket_mode: 660",
            "milter.socket_mode",
            "660 is not a file mode: write it in octal with a leading 0 (0660)",
        ),
        ("milter:\n  on_error: Accept", "milter.on_error", "'Accept' is not one of 'accept', "),
    ],
)
def test_bad_values(tmp_path: Path, text: str, path: str, problem: str) -> None:
    exc = error(tmp_path, text + "\n")
    assert str(exc).startswith(f"{exc.file}:2: {path}: {problem}")


def test_client_network_error_names_the_item_and_its_line(tmp_path: Path) -> None:
    exc = error(
        tmp_path,
        """
        outbound:
          client_networks:
            - 192.0.2.0/24
            - 10.0.0.300/8
        """,
    )
    assert str(exc) == (
        f"{exc.file}:4: outbound.client_networks[1]: '10.0.0.300/8' is not a CIDR network"
    )


def test_a_client_network_with_host_bits_is_refused(tmp_path: Path) -> None:
    """`10.0.0.1/8` read as all of 10/8 made every client there outbound: their mail got our
    token and opened cases. Postfix's cidr tables refuse it too."""
    exc = error(tmp_path, "outbound:\n  client_networks: [10.0.0.1/8]\n")
    assert str(exc) == (
        f"{exc.file}:2: outbound.client_networks[0]: '10.0.0.1/8' has host bits set: write "
        "10.0.0.0/8 for the network, or the address alone for one host"
    )


def test_inbound_addresses_are_lower_cased_and_checked(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        """
        inbound:
          addresses:
            - Support@Example.com
            - "@Help.Example.com"
            - "Support+*@Example.com"
            - "help-?@example.com"
            - "[st]upport@example.com"
            - Support@Bücher.Example
            - "@bücher.example"
        """,
    )
    assert settings.inbound.addresses == (
        "support@example.com",
        "@help.example.com",
        "support+*@example.com",
        "help-?@example.com",
        "[st]upport@example.com",
        "support@xn--bcher-kva.example",  # internationalised domains as their A-labels
        "@xn--bcher-kva.example",
    )


def test_an_internationalised_message_id_or_anchor_domain_is_taken_as_its_a_label(
        tmp_path: Path) -> None:
    """A Message-ID (and our case anchor) is ASCII on the wire (RFC 5322 msg-id), as a From
    domain's is: a U-label in the configuration is written as its A-label, not refused."""
    settings = load(
        tmp_path,
        """
        outbound:
          message_id_domain: Müller.example
        tokens:
          anchor_domain: bücher.example
        """,
    )
    assert settings.outbound.message_id_domain == "xn--mller-kva.example"
    assert settings.tokens.anchor_domain == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        ("support", "has no '@'"),
        ("<support@example.com>", "write it bare"),
        ("sup port@example.com", "is not an address"),
        ("support@", "is not an address"),
        ("support@exa_mple.com", "is not an address"),
        ("a@b@example.com", "is not an address"),
        ("", "is not an address"),
    ],
)
def test_inbound_address_errors(tmp_path: Path, address: str, fragment: str) -> None:
    exc = error(tmp_path, f"inbound:\n  addresses:\n    - ok@example.com\n    - '{address}'\n")
    assert (exc.line, exc.path) == (4, "inbound.addresses[1]")
    assert fragment in exc.problem


@pytest.mark.parametrize(("section", "key"), [("outbound", "internal_recipients"),
                                            ("inbound", "notice_senders")])
def test_address_lists_are_read_as_support_addresses_are(tmp_path: Path, section: str,
                                                         key: str) -> None:
    settings = load(tmp_path, f"{section}:\n  {key}: ['@Example.COM', "
                              "'ops+*@corp.example', 'jörg@bücher.example']\n")
    assert getattr(getattr(settings, section), key) == (
        "@example.com", "ops+*@corp.example", "jörg@xn--bcher-kva.example")
    exc = error(tmp_path, f"{section}:\n  {key}:\n    - colleagues\n")
    assert (exc.line, exc.path) == (3, f"{section}.{key}[0]")
    assert "has no '@'" in exc.problem


@pytest.mark.parametrize(("text", "mode"), [("0660", 0o660), ("'0640'", 0o640), ("'0o600'", 0o600)])
def test_socket_mode_is_octal(tmp_path: Path, text: str, mode: int) -> None:
    assert load(tmp_path, f"milter:\n  socket_mode: {text}\n").milter.socket_mode == mode


def test_message_id_domain_may_be_null(tmp_path: Path) -> None:
    settings = load(tmp_path, "outbound:\n  message_id_domain: null\n")
    assert settings.outbound.message_id_domain is None
    settings = load(tmp_path, "outbound:\n  message_id_domain: mail.example.com\n")
    assert settings.outbound.message_id_domain == "mail.example.com"


def test_config_error_carries_its_parts(tmp_path: Path) -> None:
    exc = error(tmp_path, "milter:\n  timeout: 0\n")
    assert exc.file.endswith("casethread.yaml")
    assert (exc.line, exc.path, exc.problem) == (2, "milter.timeout", "0 is out of range (1-3600)")


def test_every_rule_names_a_real_key() -> None:
    # A typo in the rule table would silently drop a validation.
    from casethread.config import _RULES

    assert "routing.rules[].subject" in rule_paths()
    assert set(_RULES) - rule_paths() == set()


def test_every_key_has_a_doc_row() -> None:
    # Including the keys of list items (routing rules, external refs), which render_defaults
    # cannot show because their default lists are empty.
    from casethread.config import _RULES

    undocumented = {
        path
        for path in rule_paths()
        if not path.endswith("[]")
        and not any(r.doc for r in (_RULES.get(path), _RULES.get(path + "[]")) if r is not None)
    }
    assert undocumented == set()


def test_path_like_is_accepted(tmp_path: Path) -> None:
    path = Path(write(tmp_path, "cases:\n  id_digits: 4\n"))
    assert load_config(path).cases.id_digits == 4


# --------------------------------------------------------------------------- documents


def test_render_defaults_round_trips(tmp_path: Path) -> None:
    text = render_defaults()
    assert load(tmp_path, text) == Settings()


def test_render_round_trips_lists_of_items(tmp_path: Path) -> None:
    # The contrib example sets routing rules; external refs as well, each item in a block.
    settings = load_config(str(CONTRIB))
    refs = load(tmp_path, "inbound:\n  external_refs:\n"
                "    - {name: jira, pattern: 'SUP-([0-9]+)'}\n"
                "    - {name: rt, pattern: 'RT#(\\d+)'}\n")
    settings = dataclasses.replace(settings, inbound=refs.inbound)
    assert settings.routing.rules and len(settings.inbound.external_refs) == 2
    text = render(settings, "shown")
    assert text.startswith("# shown\n") and "\n    - name: jira\n" in text
    assert load(tmp_path, text) == settings


def test_render_defaults_lists_and_explains_every_key() -> None:
    text = render_defaults()
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    assert isinstance(root, yaml.MappingNode)
    assert yaml_paths(root) == schema_paths()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#"):
            assert lines[i - 1].lstrip().startswith("#"), f"no comment above {line!r}"
    assert "map_size: 1GiB" in text


def test_contrib_example_loads() -> None:
    settings = load_config(str(CONTRIB))
    assert settings.inbound.addresses == (
        "support@example.com",
        "billing@example.com",
        "support-*@example.com",
        "@help.example.com",
    )
    assert settings.routing.rules == (
        RoutingRule(queue="billing", rcpt=("billing@example.com",)),
        RoutingRule(queue="vip", sender=("@vip.example.com",), override=True),
    )
    # Apart from the example addresses and rules, the file shows the defaults.
    assert settings.inbound == InboundSettings(addresses=settings.inbound.addresses)
    assert settings.routing == dataclasses.replace(RoutingSettings(), rules=settings.routing.rules)
    defaults = dataclasses.replace(settings, inbound=InboundSettings(), routing=RoutingSettings())
    assert defaults == Settings()


def test_contrib_commented_external_ref_example_is_valid(tmp_path: Path) -> None:
    lines = CONTRIB.read_text(encoding="utf-8").splitlines()
    start = lines.index("  # external_refs:")
    block = ["external_refs:"]
    for line in lines[start + 1 :]:
        if not line.startswith("  #   "):
            break
        block.append(line.removeprefix("  # "))
    assert len(block) > 2
    text = "inbound:\n  strategies: [token, external-ref]\n" + "".join(
        f"  {line}\n" for line in block
    )
    refs = load(tmp_path, text).inbound.external_refs
    assert [rule.name for rule in refs] == ["servicenow"]
    assert refs[0].pattern == r"\bINC\d{7}\b"


def test_contrib_example_lists_every_key() -> None:
    root = yaml.compose(CONTRIB.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    assert isinstance(root, yaml.MappingNode)
    assert yaml_paths(root) == schema_paths()


# --------------------------------------------------------------------------- threading settings


FULL_THREADING = """
cases:
  reopen_within: 30d
inbound:
  addresses: [support@example.com, billing@example.com]
  strategies: [token, in-reply-to, references, external-ref, subject-match]
  scan_budget: 256KiB
  case_ref_pattern: '\\[Ticket#(\\d+)\\]'
  external_refs:
    - name: servicenow
      pattern: '\\bINC\\d{7}\\b'
      sender: ["@Example.Service-Now.com"]
      search_body: false
    - name: jira
      pattern: '\\b(SUP-\\d+)\\b'
  subject_match:
    window: 12h
  flood:
    limit: 50
    window: 30m
tokens:
  keys: [/etc/casethread/keys/b.key, /etc/casethread/keys/a.key]
  subject_template: " (ref {token})"
  anchor_domain: mail.example.com
stamp:
  html: false
  text: true
  html_template: "<span data-ref='{token}'></span>"
  text_template: "\\n-- ref {token}\\n"
  spool_threshold: 256KiB
routing:
  default_queue: general
  rules:
    - rcpt: [Billing@Example.com]
      queue: billing
    - sender: ["@vip.example.com", "*@board.example.com"]
      queue: vip/escalation
      override: true
    - subject: '\\burgent\\b'
      header: X-Priority
      header_regex: '^[12]'
      queue: urgent
    - queue: catch.all
"""


def test_full_file_with_routing_rules_and_external_refs(tmp_path: Path) -> None:
    settings = load(tmp_path, FULL_THREADING)
    assert settings.cases == CaseSettings(reopen_within=30 * 86400)
    assert settings.inbound == InboundSettings(
        addresses=("support@example.com", "billing@example.com"),
        strategies=("token", "in-reply-to", "references", "external-ref", "subject-match"),
        scan_budget=256 << 10,
        case_ref_pattern=r"\[Ticket#(\d+)\]",
        external_refs=(
            ExternalRefRule(
                name="servicenow",
                pattern=r"\bINC\d{7}\b",
                sender=("@example.service-now.com",),
                search_body=False,
            ),
            ExternalRefRule(name="jira", pattern=r"\b(SUP-\d+)\b"),
        ),
        subject_match=SubjectMatchSettings(window=12 * 3600),
        flood=FloodSettings(limit=50, window=1800),
    )
    assert settings.tokens == TokenSettings(
        keys=("/etc/casethread/keys/b.key", "/etc/casethread/keys/a.key"),
        subject_template=" (ref {token})",
        anchor_domain="mail.example.com",
    )
    assert settings.stamp == StampSettings(
        html=False,
        text=True,
        html_template="<span data-ref='{token}'></span>",
        text_template="\n-- ref {token}\n",
        spool_threshold=256 << 10,
    )
    assert settings.routing == RoutingSettings(
        default_queue="general",
        rules=(
            RoutingRule(queue="billing", rcpt=("billing@example.com",)),
            RoutingRule(
                queue="vip/escalation",
                sender=("@vip.example.com", "*@board.example.com"),
                override=True,
            ),
            RoutingRule(
                queue="urgent", subject=r"\burgent\b", header="X-Priority", header_regex="^[12]"
            ),
            RoutingRule(queue="catch.all"),
        ),
    )


def test_new_sections_default_when_absent_or_empty(tmp_path: Path) -> None:
    settings = load(tmp_path, "tokens:\nstamp:\nrouting:\ninbound:\n  flood:\n")
    assert settings == Settings()


# --- the type walk: lists of mappings, required keys


def test_routing_error_names_the_rule_index_and_its_line(tmp_path: Path) -> None:
    exc = error(
        tmp_path,
        """
        routing:
          rules:
            - rcpt: [billing@example.com]
              queue: billing
            - sender: ["@vip.example.com"]
              queue: vip
            - queue: urgent
              subject: 'urgent('
        """,
    )
    assert (exc.line, exc.path) == (8, "routing.rules[2].subject")
    assert exc.problem == (
        "invalid regular expression: missing ), unterminated subpattern at position 6"
    )


def test_routing_rule_without_queue_is_reported_on_the_mapping_line(tmp_path: Path) -> None:
    exc = error(
        tmp_path,
        """
        routing:
          rules:
            - rcpt: [billing@example.com]
              queue: billing
            - sender: ["@vip.example.com"]
              override: true
        """,
    )
    assert str(exc) == f"{exc.file}:5: routing.rules[1]: missing required key 'queue'"


def test_external_ref_missing_both_required_keys(tmp_path: Path) -> None:
    exc = error(tmp_path, "inbound:\n  external_refs:\n    - search_body: false\n")
    assert str(exc) == (
        f"{exc.file}:3: inbound.external_refs[0]: missing required keys 'name', 'pattern'"
    )
    exc = error(tmp_path, "inbound:\n  external_refs:\n    - {}\n")
    assert (exc.line, exc.path) == (3, "inbound.external_refs[0]")
    assert exc.problem == "missing required keys 'name', 'pattern'"


@pytest.mark.parametrize(
    ("text", "line", "path", "problem"),
    [
        (
            "routing:\n  rules:\n    -\n",
            3,
            "routing.rules[0]",
            "expected a mapping of settings, got null",
        ),
        (
            "routing:\n  rules:\n    queue: billing\n",
            3,
            "routing.rules",
            "expected a list of mappings, got a mapping",
        ),
        (
            "routing:\n  rules:\n    - billing\n",
            3,
            "routing.rules[0]",
            "expected a mapping of settings, got a string",
        ),
        (
            "routing:\n  rules:\n    - queue: a\n      subject: 5\n",
            4,
            "routing.rules[0].subject",
            "expected a string or null, got an integer",
        ),
        (
            "routing:\n  rules:\n    - queue: a\n      override: yes please\n",
            4,
            "routing.rules[0].override",
            "expected true or false, got a string",
        ),
        (
            "routing:\n  rules:\n    - queue: a\n      rcpt: a@example.com\n",
            4,
            "routing.rules[0].rcpt",
            "expected a list of strings, got a string (write a one-item list: [value] or "
            "'- value' lines)",
        ),
        (
            "inbound:\n  external_refs:\n    - name: x\n      pattern: 'X\\d+'\n"
            "      search_body: 0\n",
            5,
            "inbound.external_refs[0].search_body",
            "expected true or false, got an integer",
        ),
        (
            "stamp:\n  html: 'yes'\n",
            2,
            "stamp.html",
            "expected true or false, got a string",
        ),
        ("stamp:\n  text: 1\n", 2, "stamp.text", "expected true or false, got an integer"),
        (
            "tokens:\n  anchor_domain: [a]\n",
            2,
            "tokens.anchor_domain",
            "expected a string or null, got a list",
        ),
    ],
)
def test_new_keys_wrong_types(
    tmp_path: Path, text: str, line: int, path: str, problem: str
) -> None:
    exc = error(tmp_path, text)
    assert str(exc) == f"{exc.file}:{line}: {path}: {problem}"


def test_unknown_key_in_a_rule_lists_the_rule_keys(tmp_path: Path) -> None:
    exc = error(tmp_path, "routing:\n  rules:\n    - queue: a\n      recipient: [a@example.com]\n")
    assert (exc.line, exc.path) == (4, "routing.rules[0].recipient")
    assert exc.problem.startswith("unknown key; ")
    exc = error(tmp_path, "routing:\n  rules:\n    - queue: a\n      sendr: ['@example.com']\n")
    assert (exc.line, exc.path, exc.problem) == (
        4,
        "routing.rules[0].sendr",
        "unknown key; did you mean 'sender'?",
    )


def test_optional_strings_may_be_null(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        "tokens:\n  anchor_domain: null\nrouting:\n  rules:\n    - queue: a\n      subject: ~\n",
    )
    assert settings.tokens.anchor_domain is None
    assert settings.routing.rules == (RoutingRule(queue="a"),)


# --- durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1", 1),
        ("3600", 3600),
        ("'3600'", 3600),
        ("90s", 90),
        ("30m", 1800),
        ("12h", 43200),
        ("14d", 14 * 86400),
        ("2w", 14 * 86400),
        ("'90 s'", 90),
        ("3650d", 3650 * 86400),
    ],
)
def test_durations(tmp_path: Path, value: str, seconds: int) -> None:
    text = f"cases:\n  reopen_within: {value}\ninbound:\n  flood:\n    window: {value}\n"
    text += f"  subject_match:\n    window: {value}\n"
    settings = load(tmp_path, text)
    assert settings.cases.reopen_within == seconds
    assert settings.inbound.flood.window == seconds
    assert settings.inbound.subject_match.window == seconds


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "0 is not positive: at least 1s"),
        ("-5", "-5 is not positive: at least 1s"),
        ("0m", "'0m' is not positive: at least 1s"),
        ("-5m", "'-5m' is not a duration (e.g. 90s, 30m, 12h, 14d, 2w)"),
        ("1.5h", "'1.5h' is not a duration (e.g. 90s, 30m, 12h, 14d, 2w)"),
        ("1h30m", "'1h30m' is not a duration (e.g. 90s, 30m, 12h, 14d, 2w)"),
        ("30M", "unknown unit 'M' (use s, m, h, d or w: 90s, 30m, 12h, 14d, 2w)"),
        ("5 minutes", "unknown unit 'minutes' (use s, m, h, d or w: 90s, 30m, 12h, 14d, 2w)"),
        ("3651d", "'3651d' is too long: at most 3650d"),
        ("1209600000", "1209600000 is too long: at most 3650d"),
        (
            "1.5",
            "expected a duration (seconds, or a string like '90s', '30m', '12h', '14d', '2w'), "
            "got a number",
        ),
        (
            "true",
            "expected a duration (seconds, or a string like '90s', '30m', '12h', '14d', '2w'), "
            "got a boolean",
        ),
        (
            "",
            "expected a duration (seconds, or a string like '90s', '30m', '12h', '14d', '2w'), "
            "got null",
        ),
        ("1:30", "'1:30' is a base-60 number in YAML 1.1: write it without ':'"),
    ],
)
def test_duration_errors(tmp_path: Path, value: str, problem: str) -> None:
    exc = error(tmp_path, f"cases:\n  id_digits: 6\n  reopen_within: {value}\n")
    assert str(exc) == f"{exc.file}:3: cases.reopen_within: {problem}"
    exc = error(tmp_path, f"inbound:\n  flood:\n    limit: 5\n    window: {value}\n")
    assert str(exc) == f"{exc.file}:4: inbound.flood.window: {problem}"
    exc = error(tmp_path, f"inbound:\n  subject_match:\n    window: {value}\n")
    assert str(exc) == f"{exc.file}:3: inbound.subject_match.window: {problem}"


def test_duration_as_a_mapping_is_a_type_error(tmp_path: Path) -> None:
    exc = error(tmp_path, "inbound:\n  flood:\n    window: {h: 1}\n")
    assert (exc.line, exc.path) == (3, "inbound.flood.window")
    assert exc.problem.startswith("expected a duration") and exc.problem.endswith("got a mapping")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (1, "1s"),
        (90, "90s"),
        (1800, "30m"),
        (5400, "90m"),
        (3600, "1h"),
        (90000, "25h"),
        (86400, "1d"),
        (2 * 86400, "2d"),
        (14 * 86400, "2w"),
        (15 * 86400, "15d"),
        (86401, "86401s"),
    ],
)
def test_durations_render_in_the_shortest_exact_unit(
    tmp_path: Path, seconds: int, text: str
) -> None:
    from casethread.config_checks import render_duration

    assert render_duration(seconds) == text
    assert load(tmp_path, f"cases:\n  reopen_within: {text}\n").cases.reopen_within == seconds


def test_base60_is_refused_for_plain_integers_too(tmp_path: Path) -> None:
    exc = error(tmp_path, "milter:\n  timeout: 1:30\n")
    assert str(exc) == (
        f"{exc.file}:2: milter.timeout: '1:30' is a base-60 number in YAML 1.1: "
        "write it without ':'"
    )


def test_render_defaults_shows_units() -> None:
    text = render_defaults()
    for line in (
        "  reopen_within: 2w",
        "    window: 2d",
        "    window: 1h",
        "  scan_budget: 1MiB",
        "  spool_threshold: 1MiB",
        '  text_template: "\\n[ref:{token}]\\n"',
    ):
        assert line in text.splitlines()


# --- sizes


@pytest.mark.parametrize(
    ("text", "path", "value"),
    [
        ("stamp:\n  spool_threshold: 64KiB", "stamp.spool_threshold", 64 << 10),
        ("stamp:\n  spool_threshold: 8M", "stamp.spool_threshold", 8 << 20),
        ("inbound:\n  scan_budget: 1KiB", "inbound.scan_budget", 1024),
        ("inbound:\n  scan_budget: 4096", "inbound.scan_budget", 4096),
        ("inbound:\n  scan_budget: 16MiB", "inbound.scan_budget", 16 << 20),
    ],
)
def test_sizes(tmp_path: Path, text: str, path: str, value: int) -> None:
    section, key = path.split(".")
    assert getattr(getattr(load(tmp_path, text + "\n"), section), key) == value


@pytest.mark.parametrize(
    ("text", "path", "problem"),
    [
        (
            "stamp:\n  spool_threshold: 63KiB",
            "stamp.spool_threshold",
            "'63KiB' is too small: at least 64KiB",
        ),
        (
            "stamp:\n  spool_threshold: 1000",
            "stamp.spool_threshold",
            "1000 is too small: at least 64KiB",
        ),
        (
            "inbound:\n  scan_budget: 1023",
            "inbound.scan_budget",
            "1023 is too small: at least 1KiB",
        ),
        ("inbound:\n  scan_budget: 0", "inbound.scan_budget", "0 is too small: at least 1KiB"),
        (
            "inbound:\n  scan_budget: 1MB",
            "inbound.scan_budget",
            "ambiguous unit 'MB': write MiB (powers of 1024)",
        ),
        (
            "stamp:\n  spool_threshold: true",
            "stamp.spool_threshold",
            "expected a size in bytes (an integer or a string like '512MiB'), got a boolean",
        ),
    ],
)
def test_size_errors(tmp_path: Path, text: str, path: str, problem: str) -> None:
    exc = error(tmp_path, text + "\n")
    assert str(exc) == f"{exc.file}:2: {path}: {problem}"


# --- strategies


def test_strategies_subject_match_is_allowed_and_order_is_kept(tmp_path: Path) -> None:
    text = "inbound:\n  strategies: [subject-match, token, bounce]\n"
    assert load(tmp_path, text).inbound.strategies == ("subject-match", "token", "bounce")


@pytest.mark.parametrize(
    ("items", "index", "problem"),
    [
        (["token", "tokn"], 1, "'tokn' is not a strategy; did you mean 'token'?"),
        (["in_reply_to"], 0, "'in_reply_to' is not a strategy; did you mean 'in-reply-to'?"),
        (["Token"], 0, "'Token' is not a strategy; did you mean 'token'?"),
        (
            ["magic"],
            0,
            "'magic' is not a strategy (known: bounce, token, in-reply-to, references, "
            "thread-index, subject-ref, body-ref, external-ref, subject-match)",
        ),
        (
            ["token", "duplicate"],
            1,
            "'duplicate' is not a strategy: duplicates are always recognised first",
        ),
        (
            ["token", "references", "token"],
            2,
            "strategy 'token' is listed twice (first as item 0)",
        ),
        (
            ["token", "external-ref"],
            1,
            "'external-ref' needs at least one rule in inbound.external_refs",
        ),
    ],
)
def test_strategy_errors_name_the_item_and_its_line(
    tmp_path: Path, items: list[str], index: int, problem: str
) -> None:
    lines = "".join(f"    - {item}\n" for item in items)
    exc = error(tmp_path, f"inbound:\n  addresses: [a@example.com]\n  strategies:\n{lines}")
    assert str(exc) == f"{exc.file}:{4 + index}: inbound.strategies[{index}]: {problem}"


def test_strategies_must_not_be_empty(tmp_path: Path) -> None:
    exc = error(tmp_path, "inbound:\n  strategies: []\n")
    assert str(exc) == (
        f"{exc.file}:2: inbound.strategies: list at least one strategy "
        "(no strategy: every message is a new case)"
    )


def test_external_ref_strategy_with_a_rule_loads(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        """
        inbound:
          strategies: [token, external-ref]
          external_refs:
            - {name: servicenow, pattern: 'INC\\d{7}'}
        """,
    )
    assert settings.inbound.external_refs == (
        ExternalRefRule(name="servicenow", pattern=r"INC\d{7}"),
    )


def test_external_ref_error_points_into_strategies_when_refs_come_first(tmp_path: Path) -> None:
    exc = error(
        tmp_path,
        """
        inbound:
          external_refs: []
          strategies:
            - token
            - external-ref
        """,
    )
    assert (exc.line, exc.path) == (5, "inbound.strategies[1]")


# --- regular expressions


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        (
            "'\\[Case (C-\\d+\\]'",
            "invalid regular expression: missing ), unterminated subpattern at position 7",
        ),
        ("'[Case'", "invalid regular expression: unterminated character set at position 0"),
        (
            "'\\[Case C-\\d+\\]'",
            "the regular expression needs a group: (...) around the part to extract",
        ),
        ("'(C-\\d*)?'", "'(C-\\\\d*)?' matches an empty string"),
        ("''", "the regular expression is empty"),
        ("'(x)" + "a" * 998 + "'", "the regular expression is 1001 characters: at most 1000"),
    ],
)
def test_case_ref_pattern_errors(tmp_path: Path, pattern: str, problem: str) -> None:
    exc = error(tmp_path, f"inbound:\n  case_ref_pattern: {pattern}\n")
    assert str(exc) == f"{exc.file}:2: inbound.case_ref_pattern: {problem}"


def test_a_regex_nested_deeper_than_the_parser_recurses_is_a_config_error(
        tmp_path: Path) -> None:
    """Review: 499 nested groups (999 characters) raised RecursionError from re.compile in
    the check: check-config printed a traceback instead of naming the key."""
    pattern = "(" * 499 + "x" + ")" * 499
    exc = error(tmp_path, f"inbound:\n  case_ref_pattern: '{pattern}'\n")
    assert str(exc) == (f"{exc.file}:2: inbound.case_ref_pattern: invalid regular "
                        "expression: its groups nest too deep")


def test_regex_of_exactly_1000_characters_is_accepted(tmp_path: Path) -> None:
    pattern = "(x)" + "a" * 997
    assert load(tmp_path, f"inbound:\n  case_ref_pattern: {pattern}\n").inbound.case_ref_pattern
    assert len(pattern) == 1000


@pytest.mark.parametrize(
    ("rule", "line", "path", "fragment"),
    [
        ("subject: '(?P<x'", 4, "routing.rules[0].subject", "missing >, unterminated name"),
        ("subject: ''", 4, "routing.rules[0].subject", "the regular expression is empty"),
        (
            "header: X-Prio\n      header_regex: '*high'",
            5,
            "routing.rules[0].header_regex",
            "nothing to repeat at position 0",
        ),
    ],
)
def test_routing_regex_errors(
    tmp_path: Path, rule: str, line: int, path: str, fragment: str
) -> None:
    exc = error(tmp_path, f"routing:\n  rules:\n    - queue: a\n      {rule}\n")
    assert (exc.line, exc.path) == (line, path)
    assert fragment in exc.problem


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [
        ("'INC(\\d{7}'", "invalid regular expression: missing ), unterminated subpattern"),
        ("'INC\\d*|'", "matches an empty string"),
        ("'\\d*'", "matches an empty string"),
    ],
)
def test_external_ref_pattern_errors(tmp_path: Path, pattern: str, fragment: str) -> None:
    exc = error(
        tmp_path,
        f"inbound:\n  external_refs:\n    - name: sn\n      pattern: {pattern}\n",
    )
    assert (exc.line, exc.path) == (4, "inbound.external_refs[0].pattern")
    assert fragment in exc.problem


# --- routing rules


@pytest.mark.parametrize(
    ("queue", "ok"),
    [
        ("billing", True),
        ("Team.EU/2nd-level:vip_1", True),
        ("q" * 64, True),
        ("q" * 65, False),
        ("", False),
        ("two words", False),
        ("billing!", False),
        ("Küche", False),
    ],
)
def test_queue_names(tmp_path: Path, queue: str, ok: bool) -> None:
    for text, line, path in (
        (f"routing:\n  default_queue: '{queue}'\n", 2, "routing.default_queue"),
        (f"routing:\n  rules:\n    - queue: '{queue}'\n", 3, "routing.rules[0].queue"),
    ):
        if ok:
            load(tmp_path, text)
            continue
        exc = error(tmp_path, text)
        assert str(exc) == (
            f"{exc.file}:{line}: {path}: {queue!r} must be 1-64 characters of A-Z a-z 0-9 . _ : / -"
        )


@pytest.mark.parametrize("key", ["rcpt", "sender"])
def test_rule_addresses_are_checked_like_inbound_addresses(tmp_path: Path, key: str) -> None:
    text = f"routing:\n  rules:\n    - queue: a\n      {key}:\n        - A@Example.com\n"
    rule = load(tmp_path, text).routing.rules[0]
    assert getattr(rule, key) == ("a@example.com",)
    exc = error(tmp_path, text + "        - billing\n")
    assert str(exc) == (
        f"{exc.file}:6: routing.rules[0].{key}[1]: 'billing' has no '@' "
        "(local@domain, @domain or a pattern like *@domain)"
    )


def test_header_and_header_regex_come_together(tmp_path: Path) -> None:
    base = "routing:\n  rules:\n    - queue: a\n      subject: x\n"
    exc = error(tmp_path, base + "      header: X-Priority\n")
    assert str(exc) == (
        f"{exc.file}:5: routing.rules[0].header: header needs header_regex "
        "(the regex its value must match)"
    )
    exc = error(tmp_path, base + "      header_regex: '^1'\n")
    assert str(exc) == (
        f"{exc.file}:5: routing.rules[0].header_regex: header_regex needs header "
        "(the header to match)"
    )


@pytest.mark.parametrize("name", ["X Priority", "X-Priority:", "", "Prioritä"])
def test_header_name_is_checked(tmp_path: Path, name: str) -> None:
    exc = error(
        tmp_path,
        f"routing:\n  rules:\n    - queue: a\n      header: '{name}'\n      header_regex: x\n",
    )
    assert (exc.line, exc.path) == (4, "routing.rules[0].header")
    assert "is not a header name" in exc.problem


def test_catch_all_rule_only_last(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        "routing:\n  rules:\n    - {queue: billing, rcpt: [b@example.com]}\n    - queue: rest\n",
    )
    assert settings.routing.rules[-1] == RoutingRule(queue="rest")
    # A single catch-all rule is the last rule too.
    assert load(tmp_path, "routing:\n  rules:\n    - queue: all\n      override: true\n")
    exc = error(
        tmp_path,
        """
        routing:
          rules:
            - queue: billing
              rcpt: [b@example.com]
            - queue: everything
              override: true
            - queue: vip
              sender: ["@vip.example.com"]
        """,
    )
    assert str(exc) == (
        f"{exc.file}:5: routing.rules[1]: a rule without a condition (rcpt, sender, subject, "
        "header) matches every message: only the last rule may be a catch-all"
    )


def test_empty_condition_lists_do_not_count_as_conditions(tmp_path: Path) -> None:
    exc = error(
        tmp_path,
        "routing:\n  rules:\n    - {queue: a, rcpt: [], sender: []}\n    - {queue: b}\n",
    )
    assert (exc.line, exc.path) == (3, "routing.rules[0]")


# --- external refs


@pytest.mark.parametrize("name", ["ServiceNow", "service now", "", "x" * 33, "jira.cloud", "süd"])
def test_external_ref_name_errors(tmp_path: Path, name: str) -> None:
    exc = error(
        tmp_path,
        f"inbound:\n  external_refs:\n    - name: '{name}'\n      pattern: 'X\\d+'\n",
    )
    assert str(exc) == (
        f"{exc.file}:3: inbound.external_refs[0].name: {name!r} must be 1-32 characters of "
        "a-z 0-9 _ - (lower case)"
    )


def test_external_ref_names_are_unique(tmp_path: Path) -> None:
    exc = error(
        tmp_path,
        """
        inbound:
          external_refs:
            - name: sn
              pattern: 'INC\\d{7}'
            - name: jira
              pattern: 'SUP-\\d+'
            - pattern: 'RITM\\d{7}'
              name: sn
        """,
    )
    assert str(exc) == (
        f"{exc.file}:8: inbound.external_refs[2].name: 'sn' is used twice (first by item 0)"
    )


def test_external_ref_must_search_somewhere(tmp_path: Path) -> None:
    exc = error(
        tmp_path,
        "inbound:\n  external_refs:\n    - name: sn\n      pattern: 'INC\\d{7}'\n"
        "      search_subject: false\n      search_body: false\n",
    )
    assert str(exc) == (
        f"{exc.file}:3: inbound.external_refs[0]: search_subject and search_body are both "
        "false: the rule never matches"
    )


def test_external_ref_sender_is_checked(tmp_path: Path) -> None:
    exc = error(
        tmp_path,
        "inbound:\n  external_refs:\n    - name: sn\n      pattern: 'INC\\d{7}'\n"
        "      sender: ['<noreply@example.com>']\n",
    )
    assert (exc.line, exc.path) == (5, "inbound.external_refs[0].sender[0]")
    assert "write it bare" in exc.problem


# --- templates


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("' [ref:TOKEN]'", "must contain {token}"),
        ("' [ref:{token}] [{token}]'", "exactly once"),
        ("' {token}]'", "text on both sides"),
        ("' [ref:{token}'", "text on both sides"),
        ('" [ref:{token}]\\r\\n"', "one line"),
        ('" [ref:\\n{token}]"', "one line"),
        ("' [ref:{token}x]'", "must not start with a letter or digit"),
        ("' [" + "r" * 2000 + ":{token}]'", "the template is 2011 characters: at most 2000"),
        # Raw 8-bit bytes in a Subject (RFC 5322 §2.2, no SMTPUTF8).
        ("' 【参照:{token}】'", "the Subject tag must be ASCII"),
        ("' [réf:{token}]'", "the Subject tag must be ASCII"),
        # pymilter refuses a field value with a NUL: every outbound mail was tempfailed, half
        # edited; other controls went into every Subject.
        ('" [ref:{token}]\\u0000"', "the template holds a NUL character"),
        ('" [ref:{token}]\\u0001"', "the Subject tag holds the control character '\\x01'"),
        ('" [ref:\\e{token}]"', "the Subject tag holds the control character '\\x1b'"),
        ('" [ref:{token}]\\u007f"', "the Subject tag holds the control character '\\x7f'"),
    ],
)
def test_subject_template_errors(tmp_path: Path, template: str, fragment: str) -> None:
    exc = error(tmp_path, f"tokens:\n  subject_template: {template}\n")
    assert (exc.line, exc.path) == (2, "tokens.subject_template")
    assert fragment in exc.problem


@pytest.mark.parametrize("key", ["html_template", "text_template"])
def test_body_templates_need_the_token(tmp_path: Path, key: str) -> None:
    exc = error(tmp_path, f"stamp:\n  html: true\n  {key}: '[ref:TOKEN]'\n")
    assert str(exc) == f"{exc.file}:3: stamp.{key}: the template must contain {{token}}"
    exc = error(tmp_path, f"stamp:\n  {key}: '{{token}}{'x' * 1994}'\n")
    assert str(exc) == f"{exc.file}:2: stamp.{key}: the template is 2001 characters: at most 2000"
    exc = error(tmp_path, f'stamp:\n  {key}: "\\n[ref:{{token}}]\\u0000\\n"\n')
    assert exc.problem == "the template holds a NUL character, which no mail text may carry"
    # Several {token}s and line breaks are fine in a body template.
    text = f'stamp:\n  {key}: "\\n{{token}}\\n[ref:{{token}}]\\n"\n'
    assert getattr(load(tmp_path, text).stamp, key) == "\n{token}\n[ref:{token}]\n"


# --- tokens, flood


def test_token_keys_must_be_absolute_and_unique(tmp_path: Path) -> None:
    exc = error(tmp_path, "tokens:\n  keys:\n    - /etc/a.key\n    - keys/b.key\n")
    assert str(exc) == f"{exc.file}:4: tokens.keys[1]: 'keys/b.key' is not an absolute path"
    exc = error(
        tmp_path, "tokens:\n  keys:\n    - /etc/a.key\n    - /etc/b.key\n    - /etc/a.key\n"
    )
    assert str(exc) == (
        f"{exc.file}:5: tokens.keys[2]: key file '/etc/a.key' is listed twice (first as item 0)"
    )
    # Existence is checked at start-up, not here.
    missing = str(tmp_path / "no-such.key")
    assert load(tmp_path, f"tokens:\n  keys: ['{missing}']\n").tokens.keys == (missing,)


def test_anchor_domain_is_a_domain(tmp_path: Path) -> None:
    exc = error(tmp_path, "tokens:\n  anchor_domain: mail_example.com\n")
    assert str(exc) == (
        f"{exc.file}:2: tokens.anchor_domain: 'mail_example.com' is not a domain name "
        "(letters, digits, hyphens and dots)"
    )


@pytest.mark.parametrize(("limit", "ok"), [(1, True), (100000, True), (0, False), (100001, False)])
def test_flood_limit_range(tmp_path: Path, limit: int, ok: bool) -> None:
    text = f"inbound:\n  flood:\n    limit: {limit}\n"
    if ok:
        assert load(tmp_path, text).inbound.flood.limit == limit
    else:
        exc = error(tmp_path, text)
        assert str(exc) == f"{exc.file}:3: inbound.flood.limit: {limit} is out of range (1-100000)"


# --------------------------------------------------------------------------- logging and metrics


def test_log_target_defaults_to_stderr_and_takes_syslog(tmp_path: Path) -> None:
    assert Settings().milter.log_target == "stderr"
    assert load(tmp_path, "milter:\n  log_target: syslog\n").milter.log_target == "syslog"
    exc = error(tmp_path, "milter:\n  timeout: 5\n  log_target: journald\n")
    assert (exc.line, exc.path) == (3, "milter.log_target")
    assert exc.problem == "'journald' is not one of 'stderr', 'syslog'"
    exc = error(tmp_path, "milter:\n  log_target: sysl0g\n")
    assert exc.problem.endswith("; did you mean 'syslog'?")


@pytest.mark.parametrize(
    "listen",
    ["127.0.0.1:9894", "127.0.0.2:1", "[::1]:9894", "192.0.2.10:65535", "[2001:db8::25]:9894"],
)
def test_metrics_listen_accepts_one_address(tmp_path: Path, listen: str) -> None:
    assert Settings().milter.metrics_listen is None
    text = f'milter:\n  metrics_listen: "{listen}"\n'
    assert load(tmp_path, text).milter.metrics_listen == listen


def test_metrics_listen_null_is_off(tmp_path: Path) -> None:
    assert load(tmp_path, "milter:\n  metrics_listen: null\n").milter.metrics_listen is None


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ("9894", "'9894' is not HOST:PORT (e.g. 127.0.0.1:9894 or [::1]:9894)"),
        (":9894", "':9894' is not HOST:PORT (e.g. 127.0.0.1:9894 or [::1]:9894)"),
        ("localhost:9894",
         "'localhost:9894': the host must be an IP address (e.g. 127.0.0.1:9894 or [::1]:9894)"),
        ("0.0.0.0:9894",
         "'0.0.0.0:9894': 0.0.0.0 listens on every interface; name one "
         "(e.g. 127.0.0.1:9894 or [::1]:9894)"),
        ("[::]:9894",
         "'[::]:9894': [::] listens on every interface; name one "
         "(e.g. 127.0.0.1:9894 or [::1]:9894)"),
        ("::1:9894",
         "'::1:9894': write an IPv6 address in brackets (e.g. 127.0.0.1:9894 or [::1]:9894)"),
        ("[127.0.0.1]:9894",
         "'[127.0.0.1]:9894': brackets are for IPv6 only (e.g. 127.0.0.1:9894 or [::1]:9894)"),
        ("224.0.0.1:9894",
         "'224.0.0.1:9894': 224.0.0.1 is a multicast address (e.g. 127.0.0.1:9894 or [::1]:9894)"),
        ("127.0.0.1:0", "'127.0.0.1:0': port '0' is not a number in 1-65535"),
        ("127.0.0.1:65536", "'127.0.0.1:65536': port '65536' is not a number in 1-65535"),
        ("127.0.0.1:http", "'127.0.0.1:http': port 'http' is not a number in 1-65535"),
        ("127.0.0.1:", "'127.0.0.1:': port '' is not a number in 1-65535"),
    ],
)
def test_metrics_listen_refuses(tmp_path: Path, listen: str, problem: str) -> None:
    exc = error(tmp_path, f'milter:\n  log_level: info\n  metrics_listen: "{listen}"\n')
    assert (exc.line, exc.path, exc.problem) == (3, "milter.metrics_listen", problem)


def test_metrics_listen_must_be_a_string(tmp_path: Path) -> None:
    exc = error(tmp_path, "milter:\n  metrics_listen: 9894\n")
    assert (exc.line, exc.path) == (2, "milter.metrics_listen")
    assert exc.problem == "expected a string or null, got an integer"


def test_contrib_example_shows_the_metrics_examples_valid(tmp_path: Path) -> None:
    # The commented-out alternatives in the annotated example are valid values.
    lines = CONTRIB.read_text(encoding="utf-8").splitlines()
    examples = [line.removeprefix("  # ") for line in lines
                if line.startswith("  # metrics_listen: ")]
    assert len(examples) == 2
    for example in examples:
        value = yaml.safe_load(example)["metrics_listen"]
        assert load(tmp_path, f"milter:\n  {example}\n").milter.metrics_listen == value


SUPPORT_ONLY = "inbound:\n  addresses: [support@example.com]\n"


def test_the_defaults_warn_only_of_the_missing_support_addresses(tmp_path: Path) -> None:
    assert warnings(load(tmp_path, SUPPORT_ONLY)) == []
    (only,) = warnings(Settings())
    assert only.startswith("inbound.addresses is empty")


@pytest.mark.parametrize(("milter", "warned"), [
    ("socket: inet:8894@0.0.0.0", "milter.socket inet:8894@0.0.0.0 listens on every address"),
    ("socket: 'inet6:8894@::'", "milter.socket inet6:8894@:: listens on every address"),
    ("socket: 'inet6:8894@[::]'", "milter.socket inet6:8894@[::] listens on every address"),
    ("socket: unix:/run/casethread/casethread.sock\n  socket_mode: 0666",
     "milter.socket_mode 0666 lets every local user connect"),
    ("socket: unix:/run/casethread/casethread.sock\n  socket_mode: 0602",
     "milter.socket_mode 0602 lets every local user connect"),
    ("socket: inet:8894@127.0.0.1", None),  # the default: the host's own processes only
    ("socket: inet:8894@192.0.2.25", None),  # one address, chosen for a remote MTA
    ("socket: inet:8894@mail.example.com", None),
    ("socket: 'inet6:8894@::1'", None),
    ("socket: unix:/run/casethread/casethread.sock\n  socket_mode: 0664", None),
    ("socket: inet:8894@127.0.0.1\n  socket_mode: 0666", None),  # no file to connect to
])
def test_a_milter_socket_open_to_more_than_the_mta_is_warned_of(
    tmp_path: Path, milter: str, warned: str | None
) -> None:
    """Whoever connects speaks for the MTA: it closes and moves cases and gets their tokens."""
    settings = load(tmp_path, f"milter:\n  {milter}\n{SUPPORT_ONLY}")
    found = [w for w in warnings(settings) if w.startswith("milter.")]
    assert found == ([] if warned is None else [found[0]])
    if warned is not None:
        assert found[0].startswith(warned)
        assert "can close or move any case and get any case's token" in found[0]


@pytest.mark.parametrize(("networks", "warned"), [
    ("['0.0.0.0/0']", {0: "every client"}),
    ("['192.0.2.10', '::/0']", {1: "every client"}),
    ("['127.0.0.1']", {0: "loopback"}),
    ("['127.0.0.0/8', '10.0.0.0/8']", {0: "loopback"}),
    ("['::1/128']", {0: "loopback"}),
    ("['::ffff:127.0.0.0/104']", {0: "loopback"}),  # matches the IPv4 loopback clients
    ("['::ffff:0:0/96']", {0: "every client"}),  # every IPv4 client, as the classifier reads it
    ("['192.0.2.10', 10.20.0.0/16, '2001:db8:20::/48']", {}),  # app servers: what is meant
])
def test_client_networks_of_every_client_or_of_loopback_are_warned_of(
    tmp_path: Path, networks: str, warned: dict[int, str]
) -> None:
    """All their mail would be outbound: Postfix's own bounces (from localhost), strangers'."""
    settings = load(tmp_path, f"outbound:\n  client_networks: {networks}\n{SUPPORT_ONLY}")
    found = [w for w in warnings(settings) if w.startswith("outbound.client_networks")]
    assert [int(w.split("[")[1].split("]")[0]) for w in found] == list(warned)
    for line, (_, what) in zip(found, warned.items(), strict=True):
        assert f"covers {what}" in line and "use a submission service" in line


@pytest.mark.parametrize(("notices", "warned"), [
    ("['@example.com']", [0]),  # the domain the support address is in: our own people
    ("['*@example.com', 'quarantine@filter.example']", [0]),
    ("['support@example.com']", [0]),
    ("['@help.example.org']", [0]),  # covers the `@domain` support entry
    ("['quarantine@filter.example', '@mail.example.com']", []),  # another domain: no warning
    ("['quarantine@example.com']", []),  # one sender in our domain, named: what is meant
])
def test_a_notice_sender_that_covers_a_support_address_is_warned_of(
    tmp_path: Path, notices: str, warned: list[int]
) -> None:
    settings = load(tmp_path, "inbound:\n  addresses: [support@example.com, '@help.example.org']\n"
                    f"  notice_senders: {notices}\n")
    found = [w for w in warnings(settings) if w.startswith("inbound.notice_senders")]
    assert [int(w.split("[")[1].split("]")[0]) for w in found] == warned
    assert all("name the filter's own sender" in w for w in found)


@pytest.mark.parametrize(("stamp", "warned"), [
    ('text_template: "\\nTicket: {token}\\n"', ["text"]),
    ("html_template: '<span data-ref=\"{token}\"></span>'", ["html"]),  # never in the text
    ('text_template: "\\n[ref: {token}]\\n"', []),  # read as clients wrap it
    ('text_template: "\\n[ref:{token}]\\n"', []),
    ('text_template: "\\nTicket: {token}\\n"\n  text: false', []),  # not stamped
])
def test_a_body_tag_inbound_cannot_read_is_warned_of(
    tmp_path: Path, stamp: str, warned: list[str]
) -> None:
    found = warnings(load(tmp_path, f"{SUPPORT_ONLY}stamp:\n  {stamp}\n"))
    assert [w.split("_template", 1)[0].removeprefix("stamp.") for w in found] == warned, found
    assert all("tokens.subject_template ([ref:{token}])" in w for w in found)


@pytest.mark.parametrize(("pattern", "warned"), [
    (r".*INC(\d+)", True),
    (r"(?i).+INC(\d+)", True),
    (r"(.*INC\d+)", True),
    (r"(?:.*)INC", True),
    (r"(?i:.*INC)", True),
    (r"(?P<ref>.+INC\d+)", True),
    (r"((?-i:.*INC))", True),
    (r"(?P<all>.+)", False),
    (r"INC(\d+)", False),
    (r"\bINC\d+.*", False),  # a trailing wildcard costs one pass
    (r"\.*INC", False),  # literal dots
    (r".+", False),  # the wildcard alone matches or fails at a line's start: one pass
    (r"(?i)(.+?)", False),
    # Read in the parsed pattern, not its text: a verbose pattern's blanks and comments,
    # several flag groups, branches, atomic groups, lazy, possessive and counted wildcards.
    (r"(?x) .* INC", True),
    (r"(?x) .+ INC \d+  # the number", True),
    (r"(?i)(?s).*INC", True),
    (r"(?#lead).*INC", True),
    (r"(?:INC|.*REF)\d+", True),
    (r"(?>.*INC)", True),
    (r".*?INC", True),
    (r".*+INC", True),
    (r".{2,}INC", True),
    (r"(?x) ( .+ )", False),
    (r"(?:INC|.+)", False),
    (r".{0,40}INC", False),  # bounded: a pass of 40 at most from each position
    (r"[.]*INC", False),
    (r"^.*INC", False),  # anchored: one position of the Subject
    # What may match nothing at any position before the wildcard leaves it leading: a word
    # boundary, an empty group, a lookbehind, an optional item; an optional group or a
    # lookahead may start with it (run again at each position). An anchor still anchors.
    (r"\b.*INC", True),
    (r"\B.+INC", True),
    (r"().*INC", True),
    (r"(?<=:).*INC", True),
    (r"x*.*INC", True),
    (r"(?:.*)?INC", True),
    (r"(.*INC)+", True),
    (r"(?=.*INC)INC", True),
    (r"(?!.*REF)INC", True),
    (r"(?:\b|^).*INC", True),
    (r"(?:^).*INC", False),
    (r"\A.*INC", False),
    (r"(?:x.*)?INC", False),  # the optional group starts with x: only at an x
    (r"(?=INC)\w+", False),
    (r"(x)?(?(1).*INC|REF)", True),  # a conditional group's branch, as a branch
])
def test_a_pattern_led_by_a_wildcard_is_warned_of(tmp_path: Path, pattern: str,
                                                   warned: bool) -> None:
    """A leading `.*` adds nothing to a search but time quadratic in a line's length."""
    config = SUPPORT_ONLY + textwrap.dedent(f"""\
          case_ref_pattern: '\\[Case\\s+(C-\\d+)\\]'
          external_refs:
            - name: vendor
              pattern: '{pattern}'
        routing:
          rules:
            - queue: vip
              subject: '{pattern}'
        """)
    found = warnings(load(tmp_path, config))
    keys = [w.split(" ", 1)[0] for w in found]
    assert keys == (["inbound.external_refs[0].pattern", "routing.rules[0].subject"]
                    if warned else []), found
    # Review: "drop it" alone changed a lookahead's meaning ("(?!.*REF)INC", "(?=.*a)(?=.*b)").
    assert all("quadratic" in w and "drop it, or" in w and "anchor the pattern: '^'" in w
               for w in found)


def test_a_header_rule_of_the_wildcard_alone_is_no_warning(tmp_path: Path) -> None:
    """`header_regex: '.*'` is how a rule says "the field is there" (`header` needs a regex):
    it matches at the first position, in one pass."""
    config = SUPPORT_ONLY + textwrap.dedent("""\
        routing:
          rules:
            - queue: tickets
              header: X-Ticket-System
              header_regex: '.*'
            - queue: urgent
              header: X-Priority
              header_regex: '(?i).+'
            - queue: lines
              header: X-Note
              header_regex: '(?m).*$'
            - queue: text
              header: X-Text
              header_regex: '(?s).*\\Z'
        """)
    assert warnings(load(tmp_path, config)) == []


@pytest.mark.parametrize(("pattern", "warned"), [
    (r"(?m).*$", False),  # `$` holds at the line's end, where the wildcard stops
    (r"(?m)(.+)$", False),
    (r"(?m:.*$)", False),
    (r"(?s).*$", False),  # the wildcard stops at the text's end
    (r"(?s).+\Z", False),
    (r".*$", True),  # `$` fails at the end of every line but the last: quadratic
    (r"(?m).*\Z", True),
    (r".*\b", True),
])
def test_the_wildcard_and_an_anchor_it_stops_at_is_no_warning(pattern: str, warned: bool) -> None:
    """`(?m).*$` matches at a line's first position, in one pass; `.*$` without the flag fails
    at each position of every line but the last: 2.6 s for a 20,000-character line followed
    by another."""
    assert checks.wildcard_lead(pattern) is warned



@pytest.mark.parametrize(("pattern", "warned"), [
    (r"[\s\S]*INC", True),  # finditer over a 20,000-letter line and another: 3.0 s
    (r"[\w\W]+INC", True),
    (r"(?:[\s\S])*INC", True),
    (r"(.)*INC", True),  # 13 s: the group is entered for each character
    (r"(?s:.)*INC", True),
    (r"[^\n]*INC", True),  # 0.44 s, as `.*INC`
    (r"[^\r\n]+INC", True),
    (r"[\s\S]*", False),  # the wildcard alone
    (r"[\s\S]*$", False),  # it stops at the text's end, where `$` holds
    (r"[\s\S]*\Z", False),
    (r"(?m)[^\n]*$", False),
    (r"[^\n]*$", True),  # as `.*$`
    (r"(?s)[^\n]*$", True),  # `[^\n]` stops at a line's end also under (?s)
    (r"^[\s\S]*INC", False),
    (r"[^\]]*INC", False),  # another class: not a wildcard
    (r"[\s\d]*INC", False),
    (r"[\s\S]{0,50}INC", False),
])
def test_a_wildcard_written_as_a_class_or_in_a_group_is_warned_of(pattern: str,
                                                                  warned: bool) -> None:
    """Review: only `.` repeated was a wildcard; `[\\s\\S]*` (JavaScript's "anything"),
    `[^\\n]*` and `(.)*` lead a search the same quadratic way, `(.)*x` even slower."""
    assert checks.wildcard_lead(pattern) is warned

@pytest.mark.parametrize(("pattern", "warned"), [
    (r"(a)?(?(1).*INC|y)", True),  # where the group matched, the wildcard is tried
    (r"(?P<lt><)?(?(lt).*>|\w+)", True),
    (r"(a)?(?(1)y|.*INC)", True),  # where it did not: at every other position
    (r"(a)?(?(1)(?:.*)INC|y)", True),
    (r"(a)?(?(1)y).*INC", True),  # no "no" branch: it matches nothing there
    (r"(a)?(?(1)|y).*INC", True),
    (r"(a)?(?(1)y|z).*INC", False),  # either branch takes a character
    (r"^(a)?(?(1).*INC|y)", False),  # anchored
    (r"(a)?(?(1).+|.*)", False),  # the wildcard alone: one pass
])
def test_a_wildcard_in_a_conditional_group_is_warned_of(pattern: str, warned: bool) -> None:
    """Review: `(?(1)yes|no)` was not looked into, nor passed as what may match nothing."""
    assert checks.wildcard_lead(pattern) is warned


def test_the_wildcard_lead_check_is_linear_in_conditional_groups() -> None:
    """100,000 characters of conditional groups, in a run or nested past the walk's recursion
    (which raised RecursionError at 400 levels: the parser nests them in fewer frames)."""
    started = time.perf_counter()
    assert checks.wildcard_lead("(a)?" + "(?(1)a|)" * 12_499 + ".*x")
    assert not checks.wildcard_lead("(a)?" + "(?(1)a|b)" * 11_110 + ".*x")
    assert not checks.wildcard_lead("(a)?" + "(?(1)" * 16_000 + ".*x" + ")" * 16_000)
    # 0.3-1.7 s on a 2-core machine running two suites; a quadratic walk takes minutes.
    assert time.perf_counter() - started < 6.0


@pytest.mark.parametrize("pattern", [
    "(|" * 250 + ".*x" + ")" * 250,  # the wildcard in the last branch of each group
    "(|" * 250 + "y" + ")" * 250 + ".*x",  # after groups that may match nothing
    "(y|" * 249 + ".*x" + ")" * 249,
])
def test_a_wildcard_under_groups_nested_within_a_configured_pattern_is_warned_of(
        pattern: str) -> None:
    """Review: a generator's frame at each level of `any()` and `all()` made the walk recurse
    deeper than the parser: these patterns of 600-1,000 characters, which `re.compile`
    takes, raised RecursionError in the walk and were no warning."""
    assert len(pattern) <= 1000
    re.compile(pattern)
    assert checks.wildcard_lead(pattern)


def test_the_wildcard_lead_check_is_linear_in_a_long_run_of_empty_matches() -> None:
    """Review: each item that may match nothing looked at every item after it (a slice and
    `_ends`): 60,000 `\\b` before `.*x` took about 5 s, 100,000 `a?` 54 s, at every start
    and reload. Now one pass (about 0.15 s, mostly the stdlib's parse)."""
    started = time.perf_counter()
    assert checks.wildcard_lead(r"\b" * 60_000 + ".*x")
    assert time.perf_counter() - started < 1.5


def test_body_tags_in_another_installations_form_are_read(tmp_path: Path) -> None:
    """README: sites that mail each other give each installation its own tag form."""
    assert warnings(load(tmp_path, SUPPORT_ONLY + textwrap.dedent("""\
        tokens:
          subject_template: " [vb:{token}]"
        stamp:
          text_template: "\\n[vb:{token}]\\n"
          html_template: '<div style="display:none">[vb:{token}]</div>'
        """))) == []
    vb_only = SUPPORT_ONLY + 'tokens:\n  subject_template: " [vb:{token}]"\n'
    defaults = warnings(load(tmp_path, vb_only))
    assert [w.split(" ", 1)[0] for w in defaults] == ["stamp.text_template", "stamp.html_template"]
    assert all("([vb:{token}])" in w for w in defaults)
