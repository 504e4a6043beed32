"""Prometheus metrics: a small thread-safe registry and a `GET /metrics` endpoint.

Stdlib only (no client library): counters and one histogram updated by the milter's threads,
gauges read at scrape time through callbacks, rendered in the Prometheus text format 0.0.4.
The endpoint has no authentication; `milter.metrics_listen` names one address to bind.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import signal
import socket
import socketserver
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from .core.autoreply import KINDS as AUTO_KINDS
from .core.autoreply import NO as AUTO_NO
from .core.decision import Decision
from .core.store import CaseIndex
from .index.lmdb_index import LmdbIndex
from .signals import STOP_SIGNALS

log = logging.getLogger("casethread")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
EOM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Label values come from the code, not from mail; the cap only keeps a bug from growing a
# metric without bound. Label sets past it are counted under the value "other".
MAX_SERIES = 200
OVERFLOW = "other"

Number = int | float
GaugeCallback = Callable[[], Number | None]


# --------------------------------------------------------------------------- text format


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: Number) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _sample(name: str, labels: Sequence[tuple[str, str]], value: Number) -> str:
    if not labels:
        return f"{name} {format_value(value)}"
    inner = ",".join(f'{key}="{escape_label(val)}"' for key, val in labels)
    return f"{name}{{{inner}}} {format_value(value)}"


# --------------------------------------------------------------------------- the registry


class _Family:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: Sequence[str],
                 lock: threading.RLock) -> None:
        self.name = name
        self.help = help_text
        self.labels = tuple(labels)
        self._lock = lock

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def _key(self, values: Sequence[str], series: dict[tuple[str, ...], Any]) -> tuple[str, ...]:
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {tuple(values)}")
        key = tuple(values)
        if key not in series and len(series) >= MAX_SERIES:
            return (OVERFLOW,) * len(self.labels)
        return key

    def render(self) -> list[str]:
        raise NotImplementedError


class Counter(_Family):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str],
                 lock: threading.RLock) -> None:
        super().__init__(name, help_text, labels, lock)
        self._values: dict[tuple[str, ...], int] = {} if labels else {(): 0}

    def inc(self, *values: str, amount: int = 1) -> None:
        with self._lock:
            key = self._key(values, self._values)
            self._values[key] = self._values.get(key, 0) + amount

    def value(self, *values: str) -> int:
        with self._lock:
            return self._values.get(tuple(values), 0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [
            _sample(self.name, list(zip(self.labels, key, strict=True)), value)
            for key, value in items
        ]


class Histogram(_Family):
    """Unlabelled: one series of cumulative `le` buckets, a sum and a count."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float],
                 lock: threading.RLock) -> None:
        super().__init__(name, help_text, (), lock)
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        with self._lock:
            # `le` is inclusive: a value equal to a bound counts in that bucket.
            self._counts[bisect.bisect_left(self.buckets, value)] += 1
            self._sum += value
            self._count += 1

    def render(self) -> list[str]:
        with self._lock:
            counts, total, count = list(self._counts), self._sum, self._count
        lines = self.header()
        cumulative = 0
        for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
            cumulative += n
            le = "+Inf" if math.isinf(bound) else repr(float(bound))
            lines.append(_sample(f"{self.name}_bucket", [("le", le)], cumulative))
        lines.append(_sample(f"{self.name}_sum", (), total))
        lines.append(_sample(f"{self.name}_count", (), count))
        return lines


class CallbackGauge(_Family):
    """A value read when scraped; a callback that fails or returns None gives no sample."""

    def __init__(self, name: str, help_text: str, callback: GaugeCallback,
                 kind: str = "gauge") -> None:
        super().__init__(name, help_text, (), threading.RLock())
        self.kind = kind
        self._callback = callback

    def render(self) -> list[str]:
        try:
            value = self._callback()
        except Exception as exc:  # a closed or broken index must not break the scrape
            log.debug("metrics: %s unavailable: %s", self.name, exc)
            value = None
        lines = self.header()
        if value is not None:
            lines.append(_sample(self.name, (), value))
        return lines


class Registry:
    """Metric families in registration order; one lock, so a scrape sees whole messages."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._families: list[_Family] = []
        self._names: set[str] = set()

    def _add(self, family: _Family) -> None:
        if family.name in self._names:
            raise ValueError(f"metric {family.name} registered twice")
        self._names.add(family.name)
        self._families.append(family)

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        counter = Counter(name, help_text, labels, self.lock)
        self._add(counter)
        return counter

    def histogram(self, name: str, help_text: str, buckets: Sequence[float]) -> Histogram:
        histogram = Histogram(name, help_text, buckets, self.lock)
        self._add(histogram)
        return histogram

    def gauge(self, name: str, help_text: str, callback: GaugeCallback,
              kind: str = "gauge") -> CallbackGauge:
        gauge = CallbackGauge(name, help_text, callback, kind)
        self._add(gauge)
        return gauge

    def render(self) -> str:
        # Counters and histograms under the lock, so a scrape never sees half of an observe();
        # gauge callbacks (index reads) after it, so a slow one never holds up the milter.
        with self.lock:
            rendered = [
                None if isinstance(f, CallbackGauge) else f.render() for f in self._families
            ]
        lines: list[str] = []
        for family, done in zip(self._families, rendered, strict=True):
            lines.extend(family.render() if done is None else done)
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- index gauges


def lmdb_file_bytes(index: LmdbIndex) -> int:
    """data.mdb's size on disk (it grows as pages are first written, never shrinks)."""
    return os.stat(os.path.join(index.path, "data.mdb")).st_size


def lmdb_map_used_ratio(index: LmdbIndex) -> float:
    """The file's high-water mark over the map (the map doubles by itself when full, up to
    its ceiling). A prune does not lower it: freed pages are reused first."""
    info = index.map_info()
    return float((info["last_pgno"] + 1) * info["psize"] / info["map_size"])


def lmdb_live_ratio(index: LmdbIndex) -> float:
    """Pages of live data over the map: what the records take now (falls after a prune)."""
    info = index.map_info()
    return float(info["live_pages"] * info["psize"] / info["map_size"])


# --------------------------------------------------------------------------- casethread's metrics


class Metrics:
    """casethread's metrics; `observe` is called once per message at end of message."""

    def __init__(self, index: CaseIndex | None = None) -> None:
        self.registry = r = Registry()
        self.messages = r.counter(
            "casethread_messages_total",
            "Messages at end of message, by direction and how the case was found (X-Case-Match).",
            ("direction", "match"),
        )
        self.auto = r.counter(
            "casethread_auto_total",
            "Inbound automatic mail by kind (X-Case-Auto): it threads but opens no case.",
            ("kind",),
        )
        self.errors = r.counter(
            "casethread_errors_total",
            "Internal errors by milter callback; the message passed or was tempfailed (on_error).",
            ("stage",),
        )
        self.body_stamped = r.counter(
            "casethread_body_stamped_total", "Outbound messages whose body got the token."
        )
        self.notes = r.counter(
            "casethread_notes_total",
            "Anomalies noted in the log line (notes=...), by note.",
            ("note",),
        )
        self.eom_seconds = r.histogram(
            "casethread_eom_seconds",
            "Time spent at end of message: resolving, recording and applying the edits.",
            EOM_BUCKETS,
        )
        # Zero from the start, so a rate over the first automatic message is not lost.
        for kind in AUTO_KINDS:
            if kind != AUTO_NO:
                self.auto.inc(kind, amount=0)
        if index is not None:
            self._index_gauges(index)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _index_gauges(self, index: CaseIndex) -> None:
        if isinstance(index, LmdbIndex):
            lmdb_index = index
            self.registry.gauge(
                "casethread_index_bytes", "Size of the case index file (data.mdb) in bytes.",
                lambda: lmdb_file_bytes(lmdb_index),
            )
            self.registry.gauge(
                "casethread_index_map_used_ratio",
                "Share of the index's current map up to its high-water mark (it doubles when "
                "full, up to index.max_map_size; a prune does not lower it).",
                lambda: lmdb_map_used_ratio(lmdb_index),
            )
            self.registry.gauge(
                "casethread_index_live_ratio",
                "Share of the index's current map that live records take (at most "
                "casethread_index_map_used_ratio; the difference is free pages, reused first).",
                lambda: lmdb_live_ratio(lmdb_index),
            )
        # The last case number only grows: a counter, so rate() gives new cases per second.
        self.registry.gauge(
            "casethread_cases_total", "Cases created so far (the last case number handed out).",
            index.last_number, kind="counter",
        )

    def observe(self, decision: Decision, seconds: float) -> None:
        """Count one message the engine decided, and the time its end of message took."""
        # X-Case-Auto: Decision.auto of inbound mail ("" for other directions).
        auto = decision.auto
        with self.registry.lock:
            self.messages.inc(decision.direction.value, decision.match)
            if auto and auto != AUTO_NO:
                self.auto.inc(auto)
            if decision.body_splices:
                self.body_stamped.inc()
            for note in decision.notes:
                self.notes.inc(note)
            self.eom_seconds.observe(seconds)

    def error(self, stage: str) -> None:
        self.errors.inc(stage)

    def render(self) -> str:
        return self.registry.render()

    # -- the endpoint ---------------------------------------------------------------------------

    def start(self, listen: str) -> ThreadingHTTPServer:
        """Serve GET /metrics on `listen` (HOST:PORT, IPv6 as [::1]:PORT) in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("the metrics endpoint is already running")
        host, port, family = split_listen(listen)
        try:
            server = _Server((host, port), family, self)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot listen for metrics on {listen}: {exc.strerror or exc}"
            ) from exc
        thread = threading.Thread(
            target=_serve, args=(server,), name="casethread-metrics", daemon=True
        )
        thread.start()
        self._server, self._thread = server, thread
        return server

    def stop(self, timeout: float = 5.0) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout)


def split_listen(listen: str) -> tuple[str, int, socket.AddressFamily]:
    """`127.0.0.1:9894` or `[::1]:9894` -> (host, port, family); config checks the rest."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{listen!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1], int(port), socket.AF_INET6
    return host, int(port), socket.AF_INET


def _serve(server: ThreadingHTTPServer) -> None:
    # The stop signals are serve's main thread's, whose handlers are installed before this
    # thread starts: one taken here would still wake it (Python's C handler writes the wakeup
    # fd from any thread), not kill the process. Blocked, as in libmilter's threads, so the
    # kernel hands them to the main thread. Request threads inherit this mask.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    server.serve_forever(poll_interval=0.5)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily,
                 metrics: Metrics) -> None:
        self.address_family = family
        self.metrics = metrics
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN: a DNS query we do not need.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # A client that stalls mid-request gives up its thread after this many seconds.
    timeout = 10
    server_version = "casethread"
    sys_version = ""

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _respond(self, send_body: bool) -> None:
        if urlsplit(self.path).path != "/metrics":
            self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics\n", send_body)
            return
        try:
            body = self.server.metrics.render().encode("utf-8")
        except Exception:
            log.exception("metrics: rendering failed")
            self._send(500, "text/plain; charset=utf-8", b"internal error\n", send_body)
            return
        self._send(200, CONTENT_TYPE, body, send_body)

    def _send(self, status: int, content_type: str, body: bytes, send_body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # BaseHTTPRequestHandler writes every request to stderr; one debug line is enough.
        log.debug("metrics: %s %s", self.address_string(), format % args)
