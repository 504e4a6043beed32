"""The README's Postfix snippets are the tested ones: every line of them is a line of
contrib/postfix/, which the end-to-end tests render their Postfix from. (A comment after a
main.cf value once made Postfix read `tempfail     # ...` as the default action.) Its
*Configuration* table names every setting, and only those."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from casethread.config import render_defaults

REPO_ROOT = Path(__file__).resolve().parents[2]
README = (REPO_ROOT / "README.md").read_text()
CONTRIB = REPO_ROOT / "contrib" / "postfix"


def _postfix_blocks() -> list[list[str]]:
    section = README.split("\n## Postfix\n", 1)[1].split("\n## ", 1)[0]
    return [block.strip("\n").splitlines()
            for block in re.findall(r"^```\n(.*?)^```$", section, re.S | re.M)]


def test_the_main_cf_snippet_is_contrib_main_cf() -> None:
    main_cf = _postfix_blocks()[0]
    contrib = [line for line in (CONTRIB / "main.cf").read_text().splitlines()
               if line and not line.startswith("#")]
    assert main_cf == contrib
    assert not any("#" in line for line in main_cf)


def test_the_master_cf_snippet_is_contrib_master_cf() -> None:
    master_cf = _postfix_blocks()[1]
    contrib = (CONTRIB / "master.cf").read_text().splitlines()
    assert master_cf[0].startswith("submission ")
    start = contrib.index(master_cf[0])
    assert contrib[start : start + len(master_cf)] == master_cf
    assert any("smtpd_relay_restrictions" in line and line.endswith(",reject")
               for line in master_cf)


def test_the_pickup_snippet_is_the_commented_block_of_contrib_master_cf() -> None:
    [pickup] = [block for block in _postfix_blocks() if block[0].startswith("pickup ")]
    contrib = (CONTRIB / "master.cf").read_text().splitlines()
    start = contrib.index("#" + pickup[0])
    assert contrib[start : start + len(pickup)] == ["#" + line for line in pickup]
    assert any("milter_macro_daemon_name=ORIGINATING" in line for line in pickup)


def _sendmail_section() -> str:
    return README.split("\n## Sendmail\n", 1)[1].split("\n## ", 1)[0]


def test_the_sendmail_steps_name_the_snippets_socket_and_debians_submission_daemon() -> None:
    """The README's Sendmail steps: casethread's default socket is the snippet's S=, and
    Debian's own submission daemon, which the snippet's takes the port of (both kept,
    Sendmail exits after about 45 s), is named as Debian's sendmail.mc spells it."""
    from casethread.core.settings import MilterSettings

    section = _sendmail_section()
    flat = " ".join(section.split())
    snippet = (REPO_ROOT / "contrib" / "sendmail" / "casethread.mc").read_text()
    default = MilterSettings().socket
    assert f"S={default}," in snippet
    assert f"listens on `{default}` by default, the snippet's `S=`" in flat
    debian_msp = ("``DAEMON_OPTIONS(`Family=inet,  Name=MSP-v4, Port=submission, M=Ea, "
                  "Addr=127.0.0.1')dnl``")
    assert debian_msp in section
    assert "(`server SMTP socket wedged: exiting`): no mail is taken on any port" in flat


def test_the_install_clears_the_units_postfix_group_for_a_sendmail_host() -> None:
    """The unit asks for group postfix, which a Sendmail host lacks: the Install says how to
    clear it, with the drop-in key the unit itself names."""
    unit = (REPO_ROOT / "contrib" / "systemd" / "casethread.service").read_text()
    assert "\nSupplementaryGroups=postfix\n" in unit
    install = README.split("\n## Install (Debian)\n", 1)[1].split("\n## ", 1)[0]
    drop_in = ("printf '[Service]\\nSupplementaryGroups=\\n' "
               ">/etc/systemd/system/casethread.service.d/")
    assert drop_in in install


def _configuration_table_keys() -> set[str]:
    """The keys the README's *Configuration* table names: `a.b`, `a.b` / `a.c` and
    `a.b.c` / `.d` (a sibling of the key before it) in each row's first cell."""
    section = README.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    keys: set[str] = set()
    for row in section.splitlines():
        if not row.startswith("| `"):
            continue
        first = row.split("|")[1]
        previous = ""
        for name in re.findall(r"`([^`]+)`", first):
            if name.startswith("."):
                name = previous.rsplit(".", 1)[0] + name
            keys.add(name)
            previous = name
    return keys


def _default_keys(node: object, path: str = "") -> set[str]:
    """Every setting's dotted path in the embedded defaults (a list is one setting)."""
    if not isinstance(node, dict) or not node:
        return {path}
    return set().union(*(_default_keys(value, f"{path}{key}.") if isinstance(value, dict)
                         and value else {f"{path}{key}"} for key, value in node.items()))


def test_the_configuration_table_names_every_setting_and_no_other() -> None:
    """A sysadmin looks a key up in the README's table: every setting `check-config
    --defaults` prints is there, and the table names none that the configuration lacks."""
    defaults = _default_keys(yaml.safe_load(render_defaults()))
    assert _configuration_table_keys() == defaults
