"""The `casethread` command (DESIGN §7).

Exit codes: 0 success; 1 runtime failure (index cannot be opened, milter cannot start);
2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import __version__, logsetup
from .config import ConfigError, load_config, override
from .core.edits import apply_edits
from .core.message import Envelope, Message, newline_of, parse_raw, serialize
from .core.model import Direction
from .core.settings import Settings
from .core.store import CaseIndex
from .engine import Engine
from .index import CaseIndexError, MemoryIndex, index_exists, open_index
from .index.overlay_index import OverlayIndex

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
    return serve(settings)


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
    )
    index: CaseIndex
    if args.dry_run and not index_exists(settings):
        # Nothing to read yet, and a dry run must not create the index.
        index = MemoryIndex(settings.cases.id_prefix, settings.cases.id_digits)
    else:
        index = open_index(settings)
    try:
        engine = Engine(settings, OverlayIndex(index, settings.cases) if args.dry_run else index)
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
    sys.stdout.buffer.write(serialize(apply_edits(headers, list(decision.edits)), body,
                                      newline_of(raw)))
    return EXIT_OK


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


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
    p.add_argument("file", nargs="?", default="-", metavar="FILE|-")
    p.set_defaults(func=cmd_filter)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"casethread: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (CaseIndexError, OSError) as exc:
        print(f"casethread: {exc}", file=sys.stderr)
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
