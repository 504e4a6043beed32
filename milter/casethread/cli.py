"""The `casethread` command (DESIGN §7).

Exit codes: 0 success; 1 runtime failure (index cannot be opened, milter cannot start);
2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from . import __version__, case_admin, logsetup
from .config import ConfigError, load_config, override
from .core.edits import apply_edits
from .core.message import Envelope, Message, newline_of, parse_raw, serialize
from .core.model import Direction
from .core.settings import Settings
from .core.stamp import apply_splices
from .core.store import CaseIndex
from .core.token import MAX_KEY_ID, Keyring
from .engine import Engine
from .index import CaseIndexError, MemoryIndex, index_exists, open_index
from .index.overlay_index import OverlayIndex
from .keyfile import KeyFileError, keyring_for, write_key_file

log = logging.getLogger("casethread")

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2

EPILOG = """\
examples:
  casethread serve --config /etc/casethread/casethread.yaml
  casethread check-config --config /etc/casethread/casethread.yaml
  casethread filter --direction outbound agent-mail.eml
  casethread filter --direction inbound --rcpt support@example.com reply.eml
"""


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_config(args.config)
    if getattr(args, "index", None):
        settings = override(settings, "index.path", args.index, "--index")
    if getattr(args, "socket", None):
        settings = override(settings, "milter.socket", args.socket, "--socket")
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    from .service import serve  # pymilter is only needed to serve

    settings = _settings(args)
    logsetup.configure(settings.milter.log_level)
    return serve(settings, load=lambda: _settings(args))


def cmd_check_config(args: argparse.Namespace) -> int:
    load_config(args.config)
    print("OK")
    return EXIT_OK


def cmd_filter(args: argparse.Namespace) -> int:
    settings = _settings(args)
    logsetup.configure(settings.milter.log_level)
    raw = sys.stdin.buffer.read() if args.file == "-" else _read(args.file)
    headers, body = parse_raw(raw)
    msg = Message(
        Envelope(
            mail_from=args.mail_from,
            rcpts=tuple(args.rcpt),
            client_address=args.client_address,
            auth_user=args.auth_user,
            daemon_name=args.daemon_name,
            queue_id="filter",
        ),
        headers,
        body,
        newline_of(raw),
    )
    index: CaseIndex
    if args.dry_run and not index_exists(settings):
        # Nothing to read yet, and a dry run must not create the index.
        index = MemoryIndex(settings.cases.id_prefix, settings.cases.id_digits)
    else:
        index = open_index(settings)
    try:
        if args.dry_run:
            view = OverlayIndex(index, settings.cases)
            engine = Engine(settings, view, _dry_run_keyring(settings))
        else:
            engine = Engine(settings, index, keyring_for(settings))
        direction = None if args.direction == "auto" else Direction(args.direction)
        try:
            decision = engine.process(msg, direction)
        except Exception:
            # The same policy as the milter: the message goes out unchanged.
            log.exception("queue_id=filter internal error; message passed unchanged")
            sys.stdout.buffer.write(raw)
            return EXIT_OK
    finally:
        index.close()
    log.info("queue_id=filter %s", decision.log_fields())
    if args.explain:
        print("\n".join(["explain:", *(f"  {line}" for line in decision.trace)]),
              file=sys.stderr)
    new_body = apply_splices(body, decision.body_splices) if decision.body_splices else body
    sys.stdout.buffer.write(
        serialize(apply_edits(headers, list(decision.edits)), new_body, msg.newline)
    )
    return EXIT_OK


def _dry_run_keyring(settings: Settings) -> Keyring:
    """The real keys when they exist; a dry run never creates a key file (a throwaway key
    then stands in, so tokens in the output will not verify later)."""
    try:
        return keyring_for(settings, create=False)
    except KeyFileError:
        return Keyring([(1, secrets.token_bytes(32))])


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# --- case administration (DESIGN §5, §7): each run opens the index, makes short transactions
# and closes it, so these work while the milter runs. ------------------------------------------

CASE_EXIT = """\
exit status: 0 success; 1 nothing found, invalid token or index problem; 2 usage error or
refused change (unknown case, self-merge, cycle, too many children)"""

LOOKUP_EPILOG = f"""\
examples:
  casethread lookup --message-id '<mx0mx9y1.2nej2j2vrz4ngn7q7jy@support.example.com>'
  casethread lookup --token 1112G2MVPAVE3DGZSFX --json
  casethread lookup --case C-000123
  casethread lookup --thread-index AQHdf1bywrkDR8tEzK//5etmG/WL0g==

The case printed is where mail goes: merges are followed (`named` is the case the key named).
{CASE_EXIT}
"""

CASE_EPILOG = f"""\
examples:
  casethread case show C-000123 --json
  casethread case set-state C-000123 resolved
  casethread case merge C-000124 C-000123
  casethread case split C-000123 C-000130 --create 1
  casethread case parent C-000140 C-000123
{CASE_EXIT}
"""

KEYGEN_EPILOG = """\
example:
  casethread keygen /etc/casethread/token-2.key --id 2

Then list the new file first under tokens.keys (the first key signs, all keys verify).
exit status: 0 written; 1 the file exists (keys are never overwritten) or cannot be written;
2 usage error
"""


@contextmanager
def _existing_index(settings: Settings) -> Iterator[CaseIndex]:
    """The index for one admin command; never creates one (a mistyped --index must not)."""
    if not index_exists(settings):
        raise CaseIndexError(f"no case index at {settings.index.path}")
    index = open_index(settings)
    try:
        yield index
    finally:
        index.close()


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str | None = None) -> None:
    if args.json:
        print(json.dumps(data))
    else:
        print(case_admin.as_text(data) if text is None else text)


def _fail(exc: Exception, code: int) -> int:
    print(f"casethread: {exc}", file=sys.stderr)
    return code


def cmd_lookup(args: argparse.Namespace) -> int:
    settings = _settings(args)
    # The keyring first: without keys no token can be checked, so the index is not needed.
    keyring = keyring_for(settings, create=False) if args.token is not None else None
    with _existing_index(settings) as index:
        try:
            if args.message_id is not None:
                key, found = args.message_id, case_admin.lookup_message_id(index, args.message_id)
            elif keyring is not None:
                key, found = args.token, case_admin.lookup_token(
                    index, keyring, args.token, settings.tokens.subject_template
                )
            elif args.case is not None:
                key, found = args.case, case_admin.lookup_case(index, args.case)
            else:
                key, found = args.thread_index, case_admin.lookup_thread_index(
                    index, args.thread_index
                )
        except case_admin.BadLookupKey as exc:
            return _fail(exc, EXIT_RUNTIME)
    if found is None:
        return _fail(Exception(f"no case found for {key}"), EXIT_RUNTIME)
    _emit(args, case_admin.found_dict(found))
    return EXIT_OK


def cmd_case_show(args: argparse.Namespace) -> int:
    with _existing_index(_settings(args)) as index:
        case = case_admin.find_case(index, args.case_id)
    if case is None:
        return _fail(Exception(f"no case {args.case_id}"), EXIT_RUNTIME)
    _emit(args, case_admin.record_dict(case))
    return EXIT_OK


def cmd_case_set_state(args: argparse.Namespace) -> int:
    with _existing_index(_settings(args)) as index:
        try:
            case = case_admin.set_state(index, args.case_id, args.state, int(time.time()))
        except case_admin.AdminError as exc:
            return _fail(exc, EXIT_USAGE)
    _emit(args, case_admin.record_dict(case), f"{case.case_id}: state {case.state}")
    return EXIT_OK


def cmd_case_merge(args: argparse.Namespace) -> int:
    with _existing_index(_settings(args)) as index:
        try:
            case, final = case_admin.merge(index, args.from_id, args.into_id, int(time.time()))
        except case_admin.AdminError as exc:
            return _fail(exc, EXIT_USAGE)
    text = f"{case.case_id}: merged into {case.merged_into}"
    if final != case.merged_into:
        text += f" (its mail goes on to {final})"
    _emit(args, {**case_admin.record_dict(case), "survivor": final}, text)
    return EXIT_OK


def cmd_case_split(args: argparse.Namespace) -> int:
    with _existing_index(_settings(args)) as index:
        try:
            case, created = case_admin.split(
                index, args.case_id, args.children, args.create, int(time.time())
            )
        except case_admin.AdminError as exc:
            return _fail(exc, EXIT_USAGE)
    new_ids = [c.case_id for c in created]
    text = f"{case.case_id}: split into {' '.join(case.children)}"
    if new_ids:
        text += f" (created {' '.join(new_ids)})"
    _emit(args, {**case_admin.record_dict(case), "created": new_ids}, text)
    return EXIT_OK


def cmd_case_parent(args: argparse.Namespace) -> int:
    if (args.parent_id is None) == (not args.clear):
        print("casethread case parent: give either PARENT_ID or --clear", file=sys.stderr)
        return EXIT_USAGE
    with _existing_index(_settings(args)) as index:
        try:
            case = case_admin.set_parent(index, args.case_id, args.parent_id, int(time.time()))
        except case_admin.AdminError as exc:
            return _fail(exc, EXIT_USAGE)
    text = f"{case.case_id}: parent {case.parent}" if case.parent else f"{case.case_id}: no parent"
    _emit(args, case_admin.record_dict(case), text)
    return EXIT_OK


def _add_case_actions(case_parser: argparse.ArgumentParser) -> None:
    actions = case_parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help_text: str, example: str) -> argparse.ArgumentParser:
        a = actions.add_parser(
            name, help=help_text, description=help_text,
            epilog=f"example:\n  {example}\n{CASE_EXIT}\n",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        # Accepted before or after the action; SUPPRESS keeps a value given before it.
        a.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                       help="YAML configuration (default: built-in)")
        a.add_argument("--index", metavar="DIR", default=argparse.SUPPRESS,
                       help="index directory")
        a.add_argument("--json", action="store_true", help="print the case as one JSON object")
        return a

    a = action("show", "print a case (key: value lines, or --json)",
               "casethread case show C-000123 --json")
    a.add_argument("case_id", metavar="ID", help="case id (or case number)")
    a.set_defaults(func=cmd_case_show)

    a = action("set-state", "set a case's state (resets the reopen window when it changes)",
               "casethread case set-state C-000123 resolved")
    a.add_argument("case_id", metavar="ID")
    a.add_argument("state", choices=case_admin.STATES)
    a.set_defaults(func=cmd_case_set_state)

    a = action("merge", "merge FROM_ID into INTO_ID: FROM's mail goes to INTO from now on",
               "casethread case merge C-000124 C-000123")
    a.add_argument("from_id", metavar="FROM_ID")
    a.add_argument("into_id", metavar="INTO_ID")
    a.set_defaults(func=cmd_case_merge)

    a = action("split", "split a case: its mail goes to each child case from now on",
               "casethread case split C-000123 C-000130 --create 1")
    a.add_argument("case_id", metavar="ID")
    a.add_argument("children", nargs="*", metavar="CHILD_ID", help="existing cases")
    a.add_argument("--create", type=int, default=0, metavar="N",
                   help="also create N new cases (same queue, parent ID) as children")
    a.set_defaults(func=cmd_case_split)

    a = action("parent", "set the parent a closed case's mail walks up to",
               "casethread case parent C-000140 C-000123")
    a.add_argument("case_id", metavar="ID")
    a.add_argument("parent_id", nargs="?", metavar="PARENT_ID")
    a.add_argument("--clear", action="store_true", help="remove the parent link")
    a.set_defaults(func=cmd_case_parent)


def _key_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= MAX_KEY_ID:
        raise argparse.ArgumentTypeError(f"a key id is 0..{MAX_KEY_ID}, not {value}")
    return value


def cmd_keygen(args: argparse.Namespace) -> int:
    key_id, _secret = write_key_file(args.path, args.id)
    print(f"{args.path}: new token key id {key_id} (mode 0600)")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="casethread",
        description="Milter that threads support mail to cases.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"casethread {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", metavar="FILE", help="YAML configuration (default: built-in)")
        return p

    p = command("serve", "run the milter in the foreground; SIGTERM stops it")
    p.add_argument("--socket", metavar="SPEC", help="inet:PORT@HOST or unix:/path")
    p.add_argument("--index", metavar="DIR", help="index directory")
    p.set_defaults(func=cmd_serve)

    p = command("check-config", "validate the configuration; prints OK or the error")
    p.set_defaults(func=cmd_check_config)

    p = command("filter", "run the milter's engine on one message file; print the result")
    p.add_argument("--index", metavar="DIR", help="index directory")
    p.add_argument("--direction", choices=["inbound", "outbound", "auto"], required=True,
                   help="auto classifies from the envelope options, as the milter does")
    p.add_argument("--client-address", metavar="IP")
    p.add_argument("--auth-user", metavar="U", help="as if authenticated with SMTP AUTH")
    p.add_argument("--daemon-name", metavar="N", help="the MTA's {daemon_name} macro")
    p.add_argument("--mail-from", metavar="A", default="")
    p.add_argument("--rcpt", metavar="A", action="append", default=[])
    p.add_argument("--dry-run", action="store_true", help="do not write to the index")
    p.add_argument("--explain", action="store_true",
                   help="print on stderr which strategies were tried and why the winner won")
    p.add_argument("file", nargs="?", default="-", metavar="FILE|-")
    p.set_defaults(func=cmd_filter)

    p = command("lookup", "print the case a Message-ID, token, case id or Thread-Index leads to")
    p.epilog, p.formatter_class = LOOKUP_EPILOG, argparse.RawDescriptionHelpFormatter
    p.add_argument("--index", metavar="DIR", help="index directory")
    key = p.add_mutually_exclusive_group(required=True)
    key.add_argument("--message-id", metavar="ID", help="a Message-ID we saw or sent")
    key.add_argument("--token", metavar="TOKEN", help="a signed token, e.g. from [ref:TOKEN]")
    key.add_argument("--case", metavar="ID", help="a case id or case number")
    key.add_argument("--thread-index", metavar="B64", help="an Outlook Thread-Index value")
    p.add_argument("--json", action="store_true", help="print the case as one JSON object")
    p.set_defaults(func=cmd_lookup)

    p = command("case", "show a case or change it: show, set-state, merge, split, parent")
    p.epilog, p.formatter_class = CASE_EPILOG, argparse.RawDescriptionHelpFormatter
    p.add_argument("--index", metavar="DIR", help="index directory")
    _add_case_actions(p)

    p = command("keygen", "write a new token key file (mode 0600); never overwrites one")
    p.epilog, p.formatter_class = KEYGEN_EPILOG, argparse.RawDescriptionHelpFormatter
    p.add_argument("path", metavar="PATH", help="the key file to create")
    p.add_argument("--id", type=_key_id, default=1, metavar="N",
                   help="key id 0..31 that tokens name (default 1; a new id for each rotation)")
    p.set_defaults(func=cmd_keygen)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"casethread: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (CaseIndexError, KeyFileError, OSError) as exc:
        print(f"casethread: {exc}", file=sys.stderr)
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
