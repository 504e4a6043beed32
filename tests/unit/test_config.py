"""casethread.config: YAML -> Settings, and every error naming FILE:LINE: key.path."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from casethread.config import ConfigError, load_config, render_defaults
from casethread.core.settings import (
    CaseSettings,
    HeaderSettings,
    InboundSettings,
    IndexSettings,
    MilterSettings,
    OutboundSettings,
    Settings,
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


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "~\n", "null\n"])
def test_empty_file_means_defaults(tmp_path: Path, text: str) -> None:
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
            - 10.20.1.2/16
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
            # Normalised: host bits cleared, a bare address becomes a /32, IPv6 lower-cased.
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
    assert str(exc) == f"{exc.file}:2: cases.zzz: unknown key; known keys: id_prefix, id_digits"


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
        """,
    )
    assert settings.inbound.addresses == (
        "support@example.com",
        "@help.example.com",
        "support+*@example.com",
        "help-?@example.com",
        "[st]upport@example.com",
    )


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

    sections = {path.split(".")[0] for path in schema_paths()}
    known = schema_paths() | sections
    assert {key.removesuffix("[]") for key in _RULES} <= known


def test_path_like_is_accepted(tmp_path: Path) -> None:
    path = Path(write(tmp_path, "cases:\n  id_digits: 4\n"))
    assert load_config(path).cases.id_digits == 4


# --------------------------------------------------------------------------- documents


def test_render_defaults_round_trips(tmp_path: Path) -> None:
    text = render_defaults()
    assert load(tmp_path, text) == Settings()


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
        "support+*@example.com",
        "@help.example.com",
    )
    # Apart from the example addresses, the file shows the defaults.
    assert dataclasses.replace(settings, inbound=InboundSettings()) == Settings()


def test_contrib_example_lists_every_key() -> None:
    root = yaml.compose(CONTRIB.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    assert isinstance(root, yaml.MappingNode)
    assert yaml_paths(root) == schema_paths()
