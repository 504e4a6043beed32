"""The `casethread` command (DESIGN §7).

Exit codes: 0 success; 1 runtime failure (index cannot be opened, milter cannot start);
2 usage or configuration error; 3 `filter` only: the milter would refuse the message; 141 the
reader of the output went away.
"""

from __future__ import annotations

import argparse
import faulthandler
import io
import json
import logging
import os
import secrets
import select
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import __version__, case_admin, logsetup
from .config import (
    ConfigError,
    group_id,
    load_config,
    override,
    render,
    render_defaults,
    unix_socket_path,
)
from .config import warnings as config_warnings
from .core.decision import Decision
from .core.direction import client_ip
from .core.edits import apply_edits
from .core.message import Envelope, Message, newline_of, parse_raw, serialize
from .core.model import Direction
from .core.settings import Settings
from .core.stamp import apply_splices
from .core.store import CaseIndex
from .core.token import MAX_KEY_ID, Keyring
from .engine import Engine
from .index import CaseIndexError, LmdbIndex, MemoryIndex, index_exists, maintenance, open_index
from .index.errors import known_cause, os_problem
from .index.keys import MAX_NUMBER
from .index.overlay_index import OverlayIndex
from .keyfile import (
    DEFAULT_KEY_NAME,
    KeyFileError,
    check_default_key_kept,
    keyring_for,
    write_key_file,
)

log = logging.getLogger("casethread")

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2
# `filter`: the milter would refuse this message (550); nothing is printed.
EXIT_REFUSED = 3
# The reader of our output went away (`casethread stats | head`): what the shell reports for a
# writer killed by SIGPIPE, without Python's error line.
EXIT_BROKEN_PIPE = 141

EPILOG = """\
examples:
  casethread serve --config /etc/casethread/casethread.yaml
  casethread check-config --config /etc/casethread/casethread.yaml
  casethread filter --direction outbound agent-mail.eml
  casethread filter --direction inbound --rcpt support@example.com reply.eml
"""


SERVE_EPILOG = """\
examples:
  casethread serve --config /etc/casethread/casethread.yaml
  casethread serve --socket unix:/var/spool/postfix/casethread/casethread.sock
  casethread serve --socket inet6:8894@::1 --index /var/lib/casethread

Logs one line per message to stderr (or syslog: milter.log_target). SIGUSR1 re-reads the
configuration; SIGTERM, SIGINT and SIGHUP stop it after the messages under way finish.
exit status: 0 stopped cleanly; 1 cannot start (index, key file, socket); 2 configuration
"""

CHECK_EPILOG = """\
examples:
  casethread check-config --config /etc/casethread/casethread.yaml
  casethread check-config --config /etc/casethread/casethread.yaml --show
  casethread check-config --defaults

Checks what `serve` checks at start: the YAML (one line naming file, line, key and problem),
the index's schema version (read without a lock, so it works as any user who may read it),
the token key files (missing, readable by others, two with one id; INDEX/token.key missing
beside an index that holds cases) and milter.socket_group. --show prints, once all is checked,
every key in effect (the file's values and the defaults for the rest) as YAML with comments,
which reads back the same; --defaults prints the embedded defaults, as `postconf -d` does.
exit status: 0 OK; 1 an index or key file problem; 2 a configuration error
"""

FILTER_EPILOG = """\
examples:
  casethread filter --config /etc/casethread/casethread.yaml --direction outbound agent.eml
  casethread filter --direction inbound --rcpt support@example.com --explain reply.eml
  casethread filter --direction auto --daemon-name ORIGINATING --dry-run - < mail.eml

Runs the milter's engine on one message and prints it as it would leave the MTA; the log line
(and --explain's reasons) go to stderr. --dry-run reads the index and writes nothing.
exit status: 0 done (an internal error passes the message unchanged, as the milter does);
1 the message file, the index or a key file cannot be read or used; 2 usage or configuration
error; 3 the milter would refuse the message (more than 100 X-Case-* fields): nothing is
printed; 141 the reader of the output went away
"""


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_config(args.config)
    # Checked when given at all: an empty one (`--index "$DIR"` with DIR unset) is an error,
    # not the configured or default index and socket, where a new index and key would start.
    if getattr(args, "index", None) is not None:
        settings = override(settings, "index.path", args.index, "--index")
    if getattr(args, "socket", None) is not None:
        settings = override(settings, "milter.socket", args.socket, "--socket")
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    from .service import serve  # pymilter is only needed to serve

    settings = _settings(args)
    logsetup.configure(settings.milter.log_level, settings.milter.log_target)
    _check_group(settings, args.config)  # before the index is opened or the socket bound
    return serve(settings, load=lambda: _settings(args))


def _check_group(settings: Settings, file: str | None) -> None:
    """A unix socket's `milter.socket_group` must exist (an inet socket has no group)."""
    group = settings.milter.socket_group
    if group is not None and unix_socket_path(settings.milter.socket):
        group_id(group, file)


def cmd_check_config(args: argparse.Namespace) -> int:
    if args.defaults:  # as `postconf -d`: nothing is read, nothing checked
        sys.stdout.write(render_defaults())
        return EXIT_OK
    settings = load_config(args.config)
    # What `serve` would refuse at start, so a reload checked by this fails too: the socket's
    # group, an index of another schema and the token key files (a missing one, loose
    # permissions, two with one id).
    _check_group(settings, args.config)
    held = index_exists(settings)
    if held:
        LmdbIndex.check_schema(settings.index.path)
    if settings.tokens.keys or _default_key(settings).exists():
        keyring_for(settings, create=False)
    elif held:
        # serve would make a key; right only for an index without cases.
        check_default_key_kept(settings.index.path, LmdbIndex.held_cases(settings.index.path))
    for problem in config_warnings(settings):  # valid, but most likely not meant
        print(f"warning: {problem}", file=sys.stderr)
    if args.show:
        source = args.config or "none given"
        sys.stdout.write(render(settings, f"casethread configuration in effect (--config: "
                                          f"{source}), defaults filled in."))
    else:
        print("OK")
    return EXIT_OK


def _default_key(settings: Settings) -> Path:
    return Path(settings.index.path) / DEFAULT_KEY_NAME


def _client_address(value: str) -> str:
    """An address `outbound.client_networks` can hold: a typo would leave a message the milter
    takes for outbound classed as other, and stamp nothing."""
    if client_ip(value) is None:
        raise argparse.ArgumentTypeError(f"{value!r} is no IP address")
    return value


def cmd_filter(args: argparse.Namespace) -> int:
    settings = _settings(args)
    logsetup.configure(settings.milter.log_level)
    raw = sys.stdin.buffer.read() if args.file == "-" else _read(args.file)
    # A mailbox's "From " line on top is read as Postfix reads it (README: filter).
    headers, body = parse_raw(raw, postmarks=True)
    if body and not body.endswith(b"\n"):
        # SMTP and sendmail(1) end a body's last line: the milter never sees one without.
        body += newline_of(raw)
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
        log.warning("dry run: no case index at %s: no recorded mail or case is known",
                    settings.index.path)
        index = MemoryIndex(settings.cases.id_prefix, settings.cases.id_digits)
    else:
        index = on_disk = open_index(settings)
    try:
        if args.dry_run:
            view = OverlayIndex(index, settings.cases)
            engine = Engine(settings, view, _dry_run_keyring(settings), explain=args.explain)
        else:
            engine = Engine(settings, index, keyring_for(settings, held_cases=on_disk.case_count),
                            explain=args.explain)
        try:
            # As the milter: the direction at end of headers, and only as much of the body as
            # `body_wanted` keeps (inbound mail: up to inbound.read_limit, none when its header
            # fields name the case); the message printed keeps all of it.
            given = None if args.direction == "auto" else Direction(args.direction)
            direction = engine.classify(msg, given)
            if (direction is Direction.OUTBOUND and not msg.envelope.rcpts
                    and settings.outbound.internal_recipients):
                # The milter always has the envelope's: without them no mail is internal.
                log.warning("no --rcpt: outbound.internal_recipients cannot apply, so this "
                            "mail is decided as if it went to a customer; give its "
                            "recipients with --rcpt")
            plan = engine.body_wanted(Message(msg.envelope, headers), direction)
            skipped = direction is Direction.INBOUND and not plan.room
            read = (Message(msg.envelope, headers, body[: plan.room], msg.newline)
                    if len(body) > plan.room else msg)
            decision = engine.process(read, direction, plan.found)
            log.info("queue_id=filter %s%s", decision.log_fields(),
                     " body=skipped" if skipped else "")
        except Exception as exc:
            # The milter's policy: the message as it came, but for forged X-Case-* fields.
            _log_failure(exc, "internal error", "error")
            decision = _unchanged(engine, msg)
    finally:
        index.close()
    if args.explain:
        # Escaped as log lines are: the trace quotes the mail's addresses and subject.
        steps = (f"  {logsetup.one_line(step)}" for step in decision.trace)
        print("\n".join(["explain:", *steps]), file=sys.stderr)
    if decision.refused:
        return _refused(decision.refused)
    new_body = apply_splices(body, decision.body_splices) if decision.body_splices else body
    _write_all(serialize(apply_edits(headers, list(decision.edits)), new_body, msg.newline))
    return EXIT_OK


def _log_failure(exc: Exception, unknown: str, known: str) -> None:
    """One line: `known: cause` for an expected condition (a full disk, a permission), else
    `unknown` with the traceback."""
    cause = known_cause(exc)
    if cause is None:
        log.exception("queue_id=filter %s; message passed unchanged", unknown)
    else:
        log.error("queue_id=filter %s: %s; message passed unchanged", known, cause)


def _unchanged(engine: Engine, msg: Message) -> Decision:
    """The failure policy's decision: forged X-Case-* fields removed; should that fail too,
    the message as it came, as the milter passes it (`CaseMilter._fallback`)."""
    try:
        return engine.unchanged(msg)
    except Exception as exc:
        _log_failure(exc, "could not remove forged fields", "could not remove forged fields")
        return Decision(Direction.OTHER)


def _write_all(data: bytes) -> None:
    """All of `data` to stdout, or an error (BrokenPipeError: exit status 141). Under
    PYTHONUNBUFFERED=1 or `python -u`, sys.stdout.buffer is the raw file, whose write may take
    only part (a pipe's reader that leaves while a long message is written, a signal) and tell
    it only by the count it returns: the rest of the message was lost, with status 0."""
    out = sys.stdout.buffer
    view = memoryview(data)
    while view:
        written = out.write(view)
        if written is None:  # a non-blocking stdout that is full: wait until it takes more
            select.select([], [out], [])
            continue
        view = view[written:]
    out.flush()


def _refused(text: str) -> int:
    """As the milter: the MTA answers 550 and the message does not leave. Nothing is printed,
    and the status says so: a pipeline must not deliver such a message either."""
    log.warning("queue_id=filter refused: %s", text)
    return EXIT_REFUSED


def _dry_run_keyring(settings: Settings) -> Keyring:
    """The keys a real run uses, refused for the same reasons. A dry run never creates a key
    file: before the first real run made one, a throwaway key stands in, and says so."""
    if settings.tokens.keys or _default_key(settings).exists():
        return keyring_for(settings, create=False)
    log.warning("dry run: no token key at %s yet: no token in this message can verify, and "
                "the ones shown are signed by a throwaway key", _default_key(settings))
    return Keyring([(1, secrets.token_bytes(32))])


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# --- case administration (DESIGN §5, §7): each run opens the index, makes short transactions
# and closes it, so these work while the milter runs. ------------------------------------------

CASE_EXIT = """\
exit status: 0 success; 1 nothing found, invalid token or index problem; 2 usage error or
refused change (unknown case, self-merge, cycle, too many children, a merged case's state or
split, a split case as a parent); 141 the reader of the output went away (a change is made
all the same)"""

LOOKUP_EPILOG = f"""\
examples:
  casethread lookup --message-id '<mx0mx9y1.2nej2j2vrz4ngn7q7jy@support.example.com>'
  casethread lookup --token 1112G2MVPAVE3DGZSFX --json
  casethread lookup --case C-000123
  casethread lookup --thread-index AQHdf1bywrkDR8tEzK//5etmG/WL0g==

The case printed is where mail goes: merges are followed (`named` is the case the key named).
`reply` is where a person's reply would go now, by the case rules (a split's children, a
closed case's open parent or follow-up, reopening), and what it would do there: thread,
activate (a waiting case opens), reopen, or new-related (a new case, related to that one).
{CASE_EXIT}
"""

CASE_EPILOG = f"""\
examples:
  casethread case show C-000123 --json
  casethread case set-state C-000123 resolved
  casethread case merge C-000124 C-000123
  casethread case split C-000123 C-000130 --create 1
  casethread case parent C-000140 C-000123
  casethread case counter 1500
{CASE_EXIT}
"""

KEYGEN_EPILOG = """\
example:
  casethread keygen /etc/casethread/token-2.key --id 2

Then list the new file first under tokens.keys (the first key signs, all keys verify).
exit status: 0 written; 1 the file exists (keys are never overwritten) or cannot be written;
2 usage error
"""


def _no_index(settings: Settings) -> CaseIndexError:
    """No index where the settings say. A relative path is named with the directory it is
    relative to; the embedded default (`./casethread-data`) is most often a command run
    without the milter's `--config`: say so."""
    path = settings.index.path
    hint = ""
    if not os.path.isabs(path):
        try:
            where = f"the current directory {os.getcwd()}"
        except OSError:  # removed under the shell: the path still names nothing
            where = "the current directory, which no longer exists"
        # The config hint only for the embedded default: a relative --index DIR or a
        # relative index.path in the given --config was given on purpose.
        if path == Settings().index.path:
            where += ": give the milter's --config FILE, or --index DIR"
        hint = f" (relative to {where})"
    return CaseIndexError(f"no case index at {path}{hint}")


@contextmanager
def _lmdb_index(settings: Settings, create: bool = False) -> Iterator[LmdbIndex]:
    """The index for one admin command; never creates one (a mistyped --index must not)
    unless `create` (`import`)."""
    if not create and not index_exists(settings):
        raise _no_index(settings)
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
    with _lmdb_index(settings) as index:
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
        reply = case_admin.reply_targets(index, found, int(time.time()),
                                         settings.cases.reopen_within)
    _emit(args, case_admin.found_dict(found, reply))
    return EXIT_OK


def cmd_case_show(args: argparse.Namespace) -> int:
    with _lmdb_index(_settings(args)) as index:
        case = case_admin.find_case(index, args.case_id)
    if case is None:
        return _fail(Exception(f"no case {args.case_id}"), EXIT_RUNTIME)
    _emit(args, case_admin.record_dict(case))
    return EXIT_OK


def cmd_case_set_state(args: argparse.Namespace) -> int:
    with _lmdb_index(_settings(args)) as index:
        try:
            case = case_admin.set_state(index, args.case_id, args.state, int(time.time()))
        except case_admin.AdminError as exc:
            return _fail(exc, EXIT_USAGE)
    _emit(args, case_admin.record_dict(case), f"{case.case_id}: state {case.state}")
    return EXIT_OK


def cmd_case_merge(args: argparse.Namespace) -> int:
    with _lmdb_index(_settings(args)) as index:
        before = case_admin.find_case(index, args.from_id)
        try:
            case, final = case_admin.merge(index, args.from_id, args.into_id, int(time.time()))
        except case_admin.AdminError as exc:
            return _fail(exc, EXIT_USAGE)
    text = f"{case.case_id}: merged into {case.merged_into}"
    if final != case.merged_into:
        text += f" (its mail goes on to {final})"
    # Merging again is how a wrong merge is corrected: say what it replaced.
    if before is not None and before.merged_into not in (None, case.merged_into):
        text += f"; was merged into {before.merged_into}"
    _emit(args, {**case_admin.record_dict(case), "survivor": final}, text)
    return EXIT_OK


def cmd_case_split(args: argparse.Namespace) -> int:
    with _lmdb_index(_settings(args)) as index:
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
    # Not "created": that is the case's own opening time.
    _emit(args, {**case_admin.record_dict(case), "children_created": new_ids}, text)
    return EXIT_OK


def cmd_case_parent(args: argparse.Namespace) -> int:
    if (args.parent_id is None) == (not args.clear):
        print("casethread case parent: give either PARENT_ID or --clear", file=sys.stderr)
        return EXIT_USAGE
    with _lmdb_index(_settings(args)) as index:
        try:
            case = case_admin.set_parent(index, args.case_id, args.parent_id, int(time.time()))
        except case_admin.AdminError as exc:
            return _fail(exc, EXIT_USAGE)
    text = f"{case.case_id}: parent {case.parent}" if case.parent else f"{case.case_id}: no parent"
    _emit(args, case_admin.record_dict(case), text)
    return EXIT_OK


def cmd_case_counter(args: argparse.Namespace) -> int:
    with _lmdb_index(_settings(args)) as index:
        before, after = maintenance.raise_counter(index, args.number)
    text = (f"case counter: {before} -> {after}: the next case is number {after + 1}"
            if after != before else
            f"case counter: {before}, already at least {args.number}: unchanged")
    _emit(args, {"before": before, "after": after, "next": after + 1}, text)
    return EXIT_OK


def _int_in(low: int, high: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer from `low` to `high`, or a line saying what it must be."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} is {low}..{high}, not {value}")
        return value
    return parse


_case_number = _int_in(1, MAX_NUMBER, "a case number")


def _add_case_actions(case_parser: argparse.ArgumentParser) -> None:
    actions = case_parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help_text: str, example: str,
               json_help: str = "print the case as one JSON object") -> argparse.ArgumentParser:
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
        a.add_argument("--json", action="store_true", help=json_help)
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

    a = action("counter", "raise the last case number handed out to at least N, before "
               "starting the milter on a restored index (README: Restore); never lowers it",
               "casethread case counter 1500 --json",
               json_help="print the counter before and after, and the next case number, as one "
                         "JSON object (before, after, next)")
    a.add_argument("number", type=_case_number, metavar="N",
                   help="a number at least as high as any case number already in mail")
    a.set_defaults(func=cmd_case_counter)


_key_id = _int_in(0, MAX_KEY_ID, "a key id")


def cmd_keygen(args: argparse.Namespace) -> int:
    key_id, _secret = write_key_file(args.path, args.id)
    print(f"{args.path}: new token key id {key_id} (mode 0600)")
    return EXIT_OK


# --- index operations (issue 7): LMDB only; safe while the milter runs. -----------------------

OPS_EXIT = """\
exit status: 0 success; 1 index or file problem; 2 usage error or refused (nothing changed);
141 the reader of the output went away (what the command changes is changed all the same)"""

STATS_EPILOG = f"""\
examples:
  casethread stats
  casethread stats --json --index /var/lib/casethread

Counts records per kind, shows the schema version, the last case number, the size of data.mdb,
and how full the LMDB map is (it grows by itself, doubling, up to index.max_map_size: by
default the larger of 16 x index.map_size and 64 GiB): "used" is the high-water mark of the
file, which a prune does not lower (freed pages are reused first); "live data" is what the
records take now; `backup` writes a compacted copy. Then the reader slots: active ones, and
those of dead processes (their snapshots keep freed space from reuse; opening the index clears
them, and says so).
{OPS_EXIT}
"""

BACKUP_EPILOG = f"""\
examples:
  casethread backup /var/backups/casethread-$(date +%F)

A consistent, compacted copy taken while the milter runs, in a new directory (mode 0700) with
the index's token.key (mode 0600): without the key, tokens in mail will not verify against the
backup. Key files configured under tokens.keys live elsewhere: back them up too. To restore,
stop the milter, put data.mdb and token.key into the index directory and raise the case
counter past every number handed out since the backup (`casethread case counter N`; README:
Restore): tokens in mail sent since name those numbers.
{OPS_EXIT}
"""

PRUNE_EPILOG = f"""\
examples:
  casethread prune --older-than 365 --dry-run
  casethread prune --older-than 365

Deletes Message-ID and subject records written more than DAYS days ago (when the mail was
first recorded: later mail that refers to it does not renew a record), and flood counters
whose window has passed. Cases, case numbers, thread roots, external references and
participants stay: replies after that still thread by a token (Subject, body, References
anchor), an Outlook Thread-Index or a case reference from a participant, but no longer by
In-Reply-To or References alone (README: Operations). Runs in batches of 10,000 deletes per
transaction, so the milter is never blocked for long. The file does not shrink: freed pages
are reused (`stats`: live data); `backup` writes a compacted copy.
{OPS_EXIT}
"""

EXPORT_EPILOG = f"""\
examples:
  casethread export > casethread.jsonl
  casethread export --kind case --kind message | jq .

JSON lines on stdout, one record each: a meta line, then cases, aliases and counters, from one
consistent snapshot. Alias keys (Message-IDs, subjects, addresses...) and counter keys are
stored hashed and export as {{"hash": HEX}}; they import back byte for byte.
{OPS_EXIT}
"""

IMPORT_EPILOG = f"""\
examples:
  casethread import casethread.jsonl --index /var/lib/casethread
  casethread import new-records.jsonl --merge

Reads what `casethread export` wrote ('-' reads stdin). The whole file is checked before
anything is written. A non-empty index is refused unless --merge (then the newer record wins,
and a case id or number that would name two different cases refuses the import: a case is
the same case when its id, number and opening time (to the second) agree, and its Outlook
root when both have one, so another index's C-000001 is refused, unless it was opened in the
same second). An export of index schema 1 imports too, its alias keys re-keyed (README:
Upgrading). Bring the old token.key along (or configure tokens.keys), or tokens in earlier
mail will not verify. A meta line alone makes an index with its counter at that number (a
lost index, README: Restore).
{OPS_EXIT}
"""


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"DAYS must be at least 1, not {value}")
    return value


def cmd_stats(args: argparse.Namespace) -> int:
    with _lmdb_index(_settings(args)) as index:
        data = maintenance.stats(index)
    print(json.dumps(data) if args.json else maintenance.format_stats(data))
    return EXIT_OK


def cmd_backup(args: argparse.Namespace) -> int:
    settings = _settings(args)
    key = Path(settings.index.path) / DEFAULT_KEY_NAME
    with _lmdb_index(settings) as index:
        try:
            done = maintenance.backup(index, args.dest, [key] if key.is_file() else [])
        except maintenance.MaintenanceError as exc:
            return _fail(exc, EXIT_USAGE)
    counts = done.counts
    notes = [f"token key copied to {path} (mode 0600)" for path in done.copied]
    # The README's rotation lists INDEX/token.key in tokens.keys beside the new key: that one
    # was just copied, and is no key "elsewhere"; listed but missing, it is missing.
    own = key.resolve()
    elsewhere = [k for k in settings.tokens.keys if Path(k).resolve() != own]
    if elsewhere:
        notes.append("token keys configured elsewhere, back them up too: " + " ".join(elsewhere))
    listed_own = len(elsewhere) < len(settings.tokens.keys)
    if not done.copied and (listed_own or not settings.tokens.keys):
        notes.append(f"no {key}: without the token key, tokens in mail will not verify")
    data = {"dest": done.dest, "data_bytes": done.data_bytes, "copied": list(done.copied),
            "notes": notes, **counts}
    text = (f"backup written to {done.dest}: {counts['cases']} cases, "
            f"{counts['aliases_total']} aliases, {counts['counters']} counters "
            f"(data.mdb {maintenance.human_size(done.data_bytes)}, opened and checked)")
    print(json.dumps(data) if args.json else "\n".join([text, *notes]))
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with _lmdb_index(settings) as index:
        result = maintenance.prune(
            index, args.older_than * maintenance.DAY, settings.inbound.flood.window,
            dry_run=args.dry_run, pause=0.002,
        )
    data = result.as_dict()
    if args.json:
        print(json.dumps(data))
        return EXIT_OK
    verb = "would delete" if args.dry_run else "deleted"
    for name, count in result.deleted.items():
        print(f"{name}: {verb} {count}, kept {result.kept[name]}")
    print(f"total: {verb} {data['deleted_total']} in {result.transactions} transactions")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    with _lmdb_index(_settings(args)) as index:
        counts = maintenance.export(index, sys.stdout.buffer, args.kind)
    sys.stdout.buffer.flush()
    summary = ", ".join(f"{name} {count}" for name, count in counts.items())
    print(f"casethread: exported {summary}", file=sys.stderr)
    return EXIT_OK


def _source(path: str) -> Callable[[], Iterable[bytes]]:
    if path == "-":
        data = sys.stdin.buffer.read()  # read twice (check, then write): keep it
        return lambda: io.BytesIO(data)

    def read() -> Iterator[bytes]:
        with open(path, "rb") as f:
            yield from f

    with open(path, "rb"):
        pass  # a missing or unreadable file fails here, before the index is created
    return read


def cmd_import(args: argparse.Namespace) -> int:
    settings = _settings(args)
    source = _source(args.file)
    try:
        # Checked before the index is opened: a file that cannot go in leaves no new index.
        checked = maintenance.check_import(source())
    except maintenance.BadImport as exc:  # the file's fault: name it with the line
        print(f"casethread: {'stdin' if args.file == '-' else args.file}: {exc}",
              file=sys.stderr)
        return EXIT_USAGE
    with _lmdb_index(settings, create=True) as index:
        try:
            result = maintenance.import_lines(index, source, merge=args.merge, checked=checked)
        except maintenance.MaintenanceError as exc:
            return _fail(exc, EXIT_USAGE)
        held = index.case_count()
    data = {"lines": result.lines, "written": result.written, "kept": result.kept,
            "last_number": result.last_number, "transactions": result.transactions}
    if args.json:
        print(json.dumps(data))
        return EXIT_OK
    # Records are the file's cases, aliases and counters: each one is written or kept. The
    # meta line is none: it raises the case counter (the last case number).
    records = {name: count for name, count in result.lines.items() if name != "meta"}
    parts = ", ".join(f"{name} {count}" for name, count in records.items())
    parts = f" ({parts})" if parts else ""  # none in a counter alone (README, Restore)
    print(f"imported {result.written} of {sum(records.values())} records{parts}; kept "
          f"{result.kept} the index already had as new or newer; last case number "
          f"{result.last_number}")
    key = Path(settings.index.path) / DEFAULT_KEY_NAME
    if not settings.tokens.keys and not key.exists():
        if held:
            print(f"note: no {key}: copy the old index's token.key there; the milter will not "
                  "start beside these cases without it (tokens in earlier mail could not "
                  "verify)")
        elif result.last_number:
            # A counter alone (a lost index's, raised: README Restore): the milter starts
            # and makes a new key, under which earlier mail's tokens fail.
            print(f"note: no {key}: copy the old index's token.key there before the milter "
                  "starts; without it the milter makes a new key (id 1), and the tokens in "
                  "earlier mail fail to verify (token-invalid:bad-mac, or :unknown-key for "
                  "another key id)")
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
    p.epilog, p.formatter_class = SERVE_EPILOG, argparse.RawDescriptionHelpFormatter
    p.add_argument("--socket", metavar="SPEC",
                   help="inet:PORT@HOST, inet6:PORT@HOST or unix:/path (local:/path)")
    p.add_argument("--index", metavar="DIR", help="index directory")
    p.set_defaults(func=cmd_serve)

    p = command("check-config", "validate the configuration and its key files; prints OK or "
                "the error")
    p.epilog, p.formatter_class = CHECK_EPILOG, argparse.RawDescriptionHelpFormatter
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--show", action="store_true",
                       help="once checked, print the configuration in effect instead of OK")
    shown.add_argument("--defaults", action="store_true",
                       help="print the embedded defaults (reads and checks nothing)")
    p.set_defaults(func=cmd_check_config)

    p = command("filter", "run the milter's engine on one message file; print the result")
    p.epilog, p.formatter_class = FILTER_EPILOG, argparse.RawDescriptionHelpFormatter
    p.add_argument("--index", metavar="DIR", help="index directory")
    p.add_argument("--direction", choices=["inbound", "outbound", "auto"], required=True,
                   help="auto classifies from the envelope options, as the milter does")
    p.add_argument("--client-address", metavar="IP", type=_client_address,
                   help="the SMTP client's IP address, as the MTA's {client_addr} macro")
    p.add_argument("--auth-user", metavar="U", help="as if authenticated with SMTP AUTH")
    p.add_argument("--daemon-name", metavar="N", help="the MTA's {daemon_name} macro")
    p.add_argument("--mail-from", metavar="A", default="",
                   help="the envelope sender (MAIL FROM), '<>' the null sender; without "
                        "it, a saved mail's Return-Path stands in")
    p.add_argument("--rcpt", metavar="A", action="append", default=[],
                   help="an envelope recipient; one address, repeat it for each")
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

    p = command("case", "show a case or change it: show, set-state, merge, split, parent; "
                "counter raises the case counter")
    p.epilog, p.formatter_class = CASE_EPILOG, argparse.RawDescriptionHelpFormatter
    p.add_argument("--index", metavar="DIR", help="index directory")
    _add_case_actions(p)

    p = command("keygen", "write a new token key file (mode 0600); never overwrites one")
    p.epilog, p.formatter_class = KEYGEN_EPILOG, argparse.RawDescriptionHelpFormatter
    p.add_argument("path", metavar="PATH", help="the key file to create")
    p.add_argument("--id", type=_key_id, default=1, metavar="N",
                   help="key id 0..31 that tokens name (default 1; a new id for each rotation)")
    p.set_defaults(func=cmd_keygen)

    def ops_command(name: str, help_text: str, epilog: str) -> argparse.ArgumentParser:
        p = command(name, help_text)
        p.epilog, p.formatter_class = epilog, argparse.RawDescriptionHelpFormatter
        p.add_argument("--index", metavar="DIR", help="index directory")
        return p

    p = ops_command("stats", "show what the index holds and how full it is", STATS_EPILOG)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_stats)

    p = ops_command("backup", "copy the index (and its token key) while the milter runs",
                    BACKUP_EPILOG)
    p.add_argument("dest", metavar="DEST", help="a new (or empty) directory for the copy")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_backup)

    p = ops_command("prune", "delete Message-ID records older than DAYS; cases stay",
                    PRUNE_EPILOG)
    p.add_argument("--older-than", type=_days, required=True, metavar="DAYS",
                   help="records written (first recorded) more than DAYS days ago go")
    p.add_argument("--dry-run", action="store_true", help="only count what would go")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_prune)

    p = ops_command("export", "write the index as JSON lines to stdout", EXPORT_EPILOG)
    p.add_argument("--kind", action="append", choices=maintenance.EXPORT_KINDS,
                   help="export only these kinds (repeatable; default: all)")
    p.set_defaults(func=cmd_export)

    p = ops_command("import", "load JSON lines written by export into the index",
                    IMPORT_EPILOG)
    p.add_argument("file", metavar="FILE", help="an export file, or - for stdin")
    p.add_argument("--merge", action="store_true",
                   help="import into a non-empty index (the newer record wins)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_import)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # A fatal signal (SIGSEGV in py-lmdb on a corrupt page, SIGBUS) then leaves the Python
    # traceback of every thread on stderr, for `serve` the journal, not just an exit status.
    faulthandler.enable()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # Nothing more can be written; point stdout at nothing so the interpreter's final
        # flush stays quiet. Not 0: a cut `export` or `filter` output is no success.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except ConfigError as exc:
        print(f"casethread: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (CaseIndexError, KeyFileError) as exc:
        print(f"casethread: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except OSError as exc:  # a file we may not read: `FILE: Permission denied`
        print(f"casethread: {os_problem(exc)}", file=sys.stderr)
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
