"""`casethread serve` with TCP_NODELAY forced on or off on its listening socket.

Usage: python ct_serve.py nodelay|nagle CASETHREAD-ARGS...   (e.g. serve --config F ...)

The benchmark measures the 1-session latency with and without `sockopts.set_listen_nodelay`.
`nodelay` calls it right after libmilter opens its socket (harmless if service.py already
does); `nagle` replaces it with a no-op wherever service.py may call it. Either way, once the
socket is open the wrapper logs the TCP_NODELAY state of the listening socket(s) it finds, so
the benchmark can check the mode took effect.
"""

from __future__ import annotations

import sys
import threading

import milter

from casethread import cli, service, sockopts


def _report_state() -> None:
    states = sockopts.listen_nodelay_state()
    shown = ",".join(f"fd{fd}={int(on)}" for fd, on in sorted(states.items())) or "none"
    print(f"bench: listening TCP sockets nodelay: {shown}", file=sys.stderr, flush=True)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("nodelay", "nagle"):
        sys.exit("usage: ct_serve.py nodelay|nagle CASETHREAD-ARGS...")
    mode, args = sys.argv[1], sys.argv[2:]
    real_opensocket = milter.opensocket
    set_nodelay = sockopts.set_listen_nodelay

    def _no_change(port: int | None = None) -> int:
        return 0

    if mode == "nagle":
        sockopts.set_listen_nodelay = _no_change
        if hasattr(service, "set_listen_nodelay"):
            service.set_listen_nodelay = _no_change

    def opensocket(rmsock: bool) -> None:
        real_opensocket(rmsock)
        if mode == "nodelay":
            changed = set_nodelay()
            print(f"bench: TCP_NODELAY set on {changed} socket(s)", file=sys.stderr, flush=True)
        # service.py may still touch the socket after opensocket returns: look a bit later.
        threading.Timer(1.0, _report_state).start()

    milter.opensocket = opensocket
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
