"""casethread.metrics: the registry, the Prometheus text format (parsed back line by line),
the index gauges, and the endpoint scraped over loopback HTTP with urllib."""

from __future__ import annotations

import http.client
import math
import os
import re
import signal
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from casethread.core.decision import Decision
from casethread.core.model import Alias, AliasKind, Direction
from casethread.core.stamp import Splice
from casethread.index import LmdbIndex, MemoryIndex, maintenance
from casethread.metrics import (
    CONTENT_TYPE,
    EOM_BUCKETS,
    MAX_SERIES,
    Metrics,
    Registry,
    escape_help,
    escape_label,
    format_value,
    split_listen,
)

# --------------------------------------------------------------------------- a format parser

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
SAMPLE_RE = re.compile(rf"({NAME})(?:\{{(.*)\}})? (\S+)")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
Labels = tuple[tuple[str, str], ...]


@dataclass
class Exposition:
    helps: dict[str, str] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)

    def get(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, tuple(sorted(labels.items()))))

    def names(self) -> set[str]:
        return {name for name, _labels in self.samples}


def parse_labels(text: str) -> Labels:
    labels: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = LABEL_RE.match(text, pos)
        assert m is not None, f"bad label set at {text[pos:]!r}"
        value = re.sub(r'\\[\\"n]', lambda e: UNESCAPE[e.group(0)], m.group(2))
        labels.append((m.group(1), value))
        pos = m.end()
        if pos < len(text):
            assert text[pos] == ",", text
            pos += 1
    names = [k for k, _v in labels]
    assert len(names) == len(set(names)), f"repeated label in {text!r}"
    return tuple(sorted(labels))


def parse_value(text: str) -> float:
    special = {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}
    return special[text] if text in special else float(text)


def family_of(name: str, types: dict[str, str]) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and types.get(base) == "histogram":
            return base
    return name


def parse(text: str) -> Exposition:
    """Text format 0.0.4, strictly: HELP then TYPE before a family's samples, one TYPE per
    family, families not interleaved, no duplicate sample, a final newline."""
    assert text.endswith("\n")
    out = Exposition()
    seen_families: list[str] = []
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[len("# HELP "):].partition(" ")
            assert name not in out.helps, f"second HELP for {name}"
            out.helps[name] = re.sub(r"\\[\\n]", lambda e: UNESCAPE[e.group(0)], help_text)
        elif line.startswith("# TYPE "):
            name, _, kind = line[len("# TYPE "):].partition(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name in out.helps, f"TYPE before HELP for {name}"
            assert name not in out.types, f"second TYPE for {name}"
            out.types[name] = kind
        else:
            m = SAMPLE_RE.fullmatch(line)
            assert m is not None, f"not a sample line: {line!r}"
            family = family_of(m.group(1), out.types)
            assert family in out.types, f"sample before its TYPE: {line!r}"
            if not seen_families or seen_families[-1] != family:
                assert family not in seen_families, f"{family} interleaved"
                seen_families.append(family)
            key = (m.group(1), parse_labels(m.group(2) or ""))
            assert key not in out.samples, f"duplicate sample {line!r}"
            out.samples[key] = parse_value(m.group(3))
    return out


def buckets(expo: Exposition, name: str) -> list[tuple[float, float]]:
    found = [
        (parse_value(dict(labels)["le"]), value)
        for (sample, labels), value in expo.samples.items()
        if sample == f"{name}_bucket"
    ]
    return sorted(found)


# --------------------------------------------------------------------------- decisions


def inbound(match: str = "new", case: str = "C-000001", **kw: Any) -> Decision:
    return Decision(Direction.INBOUND, (case,), match, "new", **kw)


def outbound(stamped: bool = True, notes: tuple[str, ...] = ()) -> Decision:
    splices = (Splice(0, 0, b"[ref:x]"),) if stamped else ()
    return Decision(Direction.OUTBOUND, ("C-000001",), "new", "new", notes=notes,
                    body_splices=splices)


# --------------------------------------------------------------------------- format


def test_escaping() -> None:
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    assert escape_help('say "hi"\\now\nplease') == 'say "hi"\\\\now\\nplease'
    assert format_value(3) == "3"
    assert format_value(0.25) == "0.25"
    assert format_value(math.inf) == "+Inf"
    assert format_value(-math.inf) == "-Inf"
    assert format_value(math.nan) == "NaN"


def test_a_fresh_registry_renders_every_family() -> None:
    expo = parse(Metrics().render())
    assert expo.types == {
        "casethread_messages_total": "counter",
        "casethread_auto_total": "counter",
        "casethread_errors_total": "counter",
        "casethread_body_stamped_total": "counter",
        "casethread_notes_total": "counter",
        "casethread_eom_seconds": "histogram",
    }
    assert all(expo.helps[name] for name in expo.types)
    assert expo.get("casethread_body_stamped_total") == 0
    # Known auto kinds start at zero; "no" is not an automatic kind.
    for kind in ("auto-replied", "auto-generated", "bounce", "bulk"):
        assert expo.get("casethread_auto_total", kind=kind) == 0
    assert expo.get("casethread_auto_total", kind="no") is None
    assert [v for _le, v in buckets(expo, "casethread_eom_seconds")] == [0] * 13
    assert expo.get("casethread_eom_seconds_count") == 0
    assert expo.get("casethread_eom_seconds_sum") == 0
    assert "casethread_messages_total" not in expo.names()


def test_observe_counts_direction_match_notes_and_stamping() -> None:
    metrics = Metrics()
    metrics.observe(inbound("new"), 0.002)
    metrics.observe(inbound("new", "C-000002"), 0.004)
    metrics.observe(inbound("token", notes=("no-message-id",)), 0.02)
    metrics.observe(outbound(notes=("message-id-added",)), 0.03)
    metrics.observe(outbound(stamped=False, notes=("html-not-stamped:signed",)), 0.01)
    metrics.observe(Decision(Direction.OTHER), 0.0001)
    metrics.error("eom")
    metrics.error("eom")
    metrics.error("header")
    expo = parse(metrics.render())
    msgs = "casethread_messages_total"
    assert expo.get(msgs, direction="inbound", match="new") == 2
    assert expo.get(msgs, direction="inbound", match="token") == 1
    assert expo.get(msgs, direction="outbound", match="new") == 2
    assert expo.get(msgs, direction="other", match="none") == 1
    assert len([n for n, _l in expo.samples if n == msgs]) == 4
    assert expo.get("casethread_body_stamped_total") == 1
    assert expo.get("casethread_notes_total", note="no-message-id") == 1
    assert expo.get("casethread_notes_total", note="message-id-added") == 1
    assert expo.get("casethread_notes_total", note="html-not-stamped:signed") == 1
    assert expo.get("casethread_errors_total", stage="eom") == 2
    assert expo.get("casethread_errors_total", stage="header") == 1
    assert expo.get("casethread_eom_seconds_count") == 6
    assert expo.get("casethread_eom_seconds_sum") == pytest.approx(0.0661)


def test_auto_kinds_are_counted_from_the_decision() -> None:
    # Needs Decision.auto (the X-Case-Auto value), which the engine sets for inbound mail.
    metrics = Metrics()
    metrics.observe(inbound("none", auto="auto-replied"), 0.001)
    metrics.observe(inbound("token", auto="auto-replied"), 0.001)
    metrics.observe(inbound("new", auto="no"), 0.001)
    expo = parse(metrics.render())
    assert expo.get("casethread_auto_total", kind="auto-replied") == 2
    assert expo.get("casethread_auto_total", kind="bulk") == 0
    assert expo.get("casethread_auto_total", kind="no") is None


def test_histogram_buckets_are_cumulative_and_le_inclusive() -> None:
    metrics = Metrics()
    for seconds in (0.001, 0.003, 0.003, 0.6, 7.0):
        metrics.observe(Decision(Direction.OTHER), seconds)
    got = dict(buckets(parse(metrics.render()), "casethread_eom_seconds"))
    assert sorted(got) == [*EOM_BUCKETS, math.inf]
    assert got[0.001] == 1  # equal to the bound: in that bucket
    assert got[0.0025] == 1
    assert got[0.005] == 3
    assert got[0.5] == 3
    assert got[1.0] == 4
    assert got[5.0] == 4
    assert got[math.inf] == 5
    values = [got[le] for le in sorted(got)]
    assert values == sorted(values)


def test_label_values_are_escaped_and_parse_back() -> None:
    metrics = Metrics()
    odd = 'quote " backslash \\ newline \n end'
    metrics.observe(outbound(notes=(odd,)), 0.001)
    text = metrics.render()
    assert 'note="quote \\" backslash \\\\ newline \\n end"} 1\n' in text
    assert parse(text).get("casethread_notes_total", note=odd) == 1


def test_series_are_capped() -> None:
    registry = Registry()
    counter = registry.counter("test_total", "capped", ("note",))
    for i in range(MAX_SERIES + 50):
        counter.inc(f"n{i}")
    counter.inc("n0")  # an existing series still counts as itself
    expo = parse(registry.render())
    assert len(expo.samples) == MAX_SERIES + 1
    assert expo.get("test_total", note="other") == 50
    assert expo.get("test_total", note="n0") == 2


def test_wrong_label_count_and_duplicate_names_are_bugs() -> None:
    registry = Registry()
    counter = registry.counter("a_total", "a", ("x", "y"))
    with pytest.raises(ValueError, match="takes labels"):
        counter.inc("only-one")
    with pytest.raises(ValueError, match="registered twice"):
        registry.counter("a_total", "again")


def test_concurrent_observations_are_all_counted() -> None:
    metrics = Metrics()
    threads, each = 8, 2000
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait(timeout=10)
        for _ in range(each):
            metrics.observe(inbound("new"), 0.001)
            metrics.error("eom")

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert not any(w.is_alive() for w in workers)
    expo = parse(metrics.render())
    total = threads * each
    assert expo.get("casethread_messages_total", direction="inbound", match="new") == total
    assert expo.get("casethread_errors_total", stage="eom") == total
    assert expo.get("casethread_eom_seconds_count") == total
    assert expo.get("casethread_eom_seconds_sum") == pytest.approx(total * 0.001)


# --------------------------------------------------------------------------- index gauges


def test_lmdb_gauges_read_the_index_at_scrape_time(tmp_path: Path) -> None:
    index = LmdbIndex(tmp_path / "idx", 4 << 20)
    try:
        metrics = Metrics(index)
        expo = parse(metrics.render())
        assert expo.types["casethread_index_bytes"] == "gauge"
        assert expo.types["casethread_index_map_used_ratio"] == "gauge"
        assert expo.types["casethread_cases_total"] == "counter"
        assert expo.get("casethread_cases_total") == 0
        before = expo.get("casethread_index_map_used_ratio")
        assert before is not None and 0 < before < 0.05
        for now in range(300):
            index.create_case(1_772_442_900 + now)
        expo = parse(metrics.render())
        assert expo.get("casethread_cases_total") == 300
        size = os.stat(tmp_path / "idx" / "data.mdb").st_size
        assert expo.get("casethread_index_bytes") == size > 0
        after = expo.get("casethread_index_map_used_ratio")
        assert after is not None and before < after < 1
        # Pages in use never exceed the file: ratio * map <= file size.
        assert after * (4 << 20) <= size
    finally:
        index.close()
    # A closed index: the gauges have no sample, the scrape still works.
    expo = parse(metrics.render())
    assert {"casethread_index_bytes", "casethread_index_map_used_ratio"} <= set(expo.types)
    assert expo.get("casethread_cases_total") is None
    assert expo.get("casethread_index_map_used_ratio") is None
    assert expo.get("casethread_body_stamped_total") == 0


def test_the_live_ratio_falls_after_a_prune_while_the_used_ratio_stays(tmp_path: Path) -> None:
    """used_ratio is the file's high-water mark: after a prune only live_ratio tells how much
    room the records take."""
    index = LmdbIndex(tmp_path / "idx", 16 << 20)
    try:
        metrics = Metrics(index)
        case = index.create_case(1_700_000_000)
        index.record([Alias(AliasKind.MESSAGE, f"<m{n}@example.org>", case.case_id)
                      for n in range(20_000)], now=1_700_000_000)
        before = parse(metrics.render())
        maintenance.prune(index, 86400, 3600, now=1_800_000_000)
        after = parse(metrics.render())
    finally:
        index.close()
    assert after.types["casethread_index_live_ratio"] == "gauge"
    used, used_before = (expo.get("casethread_index_map_used_ratio") for expo in (after, before))
    assert used is not None and used_before is not None and used >= used_before
    live_before = before.get("casethread_index_live_ratio")
    live = after.get("casethread_index_live_ratio")
    assert live_before is not None and live is not None
    assert live < live_before / 10 and live_before <= used_before


def test_memory_index_has_only_the_case_count() -> None:
    index = MemoryIndex()
    index.create_case(1_772_442_900)
    expo = parse(Metrics(index).render())
    assert expo.get("casethread_cases_total") == 1
    assert "casethread_index_bytes" not in expo.types


# --------------------------------------------------------------------------- the endpoint


@pytest.fixture
def served() -> Iterator[tuple[Metrics, str]]:
    """An endpoint on a kernel-chosen loopback port: (metrics, base URL)."""
    metrics = Metrics()
    server = metrics.start("127.0.0.1:0")
    host, port = server.server_address[:2]
    try:
        yield metrics, f"http://{host}:{port}"
    finally:
        metrics.stop()


def scrape(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.headers["Content-Type"], resp.read().decode("utf-8")


def test_split_listen() -> None:
    assert split_listen("127.0.0.1:9894") == ("127.0.0.1", 9894, socket.AF_INET)
    assert split_listen("[::1]:9894") == ("::1", 9894, socket.AF_INET6)
    with pytest.raises(ValueError):
        split_listen("9894")


def test_scrape_over_http(served: tuple[Metrics, str]) -> None:
    metrics, base = served
    metrics.observe(inbound("new"), 0.003)
    metrics.observe(inbound("references", "C-000007"), 0.2)
    metrics.observe(outbound(), 0.04)
    metrics.error("eom")
    status, ctype, body = scrape(base + "/metrics")
    assert status == 200
    assert ctype == CONTENT_TYPE
    expo = parse(body)
    assert expo.get("casethread_messages_total", direction="inbound", match="new") == 1
    assert expo.get("casethread_messages_total", direction="inbound", match="references") == 1
    assert expo.get("casethread_messages_total", direction="outbound", match="new") == 1
    assert expo.get("casethread_body_stamped_total") == 1
    assert expo.get("casethread_errors_total", stage="eom") == 1
    assert expo.get("casethread_eom_seconds_count") == 3
    assert dict(buckets(expo, "casethread_eom_seconds"))[0.005] == 1
    # Each scrape reads the current values.
    metrics.observe(inbound("new", "C-000008"), 0.003)
    expo = parse(scrape(base + "/metrics?x=1")[2])
    assert expo.get("casethread_messages_total", direction="inbound", match="new") == 2


def test_other_paths_are_404_and_head_has_no_body(served: tuple[Metrics, str]) -> None:
    _metrics, base = served
    for path in ("/", "/metrics/", "/favicon.ico"):
        with pytest.raises(urllib.error.HTTPError) as info:
            scrape(base + path)
        assert info.value.code == 404
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("HEAD", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) > 100
        assert resp.read() == b""
    finally:
        conn.close()


def test_ipv6_loopback(tmp_path: Path) -> None:
    metrics = Metrics()
    server = metrics.start("[::1]:0")
    try:
        assert server.socket.family == socket.AF_INET6
        port = server.server_address[1]
        status, _ctype, body = scrape(f"http://[::1]:{port}/metrics")
        assert status == 200 and "casethread_eom_seconds_count 0" in body
        # Bound to ::1 only: the IPv4 loopback has nothing on that port.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        metrics.stop()


def test_stop_closes_the_port_and_a_busy_port_is_a_clear_error() -> None:
    metrics = Metrics()
    server = metrics.start("127.0.0.1:0")
    port = server.server_address[1]
    other = Metrics()
    with pytest.raises(OSError, match=f"cannot listen for metrics on 127.0.0.1:{port}"):
        other.start(f"127.0.0.1:{port}")
    with pytest.raises(RuntimeError, match="already running"):
        metrics.start("127.0.0.1:0")
    metrics.stop()
    metrics.stop()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def signals_blocked(native_id: int) -> set[int]:
    status = Path(f"/proc/self/task/{native_id}/status").read_text()
    (mask,) = re.findall(r"^SigBlk:\s*([0-9a-f]+)$", status, re.M)
    bits = int(mask, 16)
    return {n for n in range(1, 65) if bits & (1 << (n - 1))}


def test_server_threads_leave_milter_signals_to_libmilter(
    served: tuple[Metrics, str],
) -> None:
    # The stop signals go to serve's main thread, which drains on them: the endpoint's threads
    # block them, as libmilter's threads do.
    metrics, base = served
    assert scrape(base + "/metrics")[0] == 200
    thread = metrics._thread
    assert thread is not None and thread.native_id is not None
    blocked = signals_blocked(thread.native_id)
    assert {signal.SIGTERM, signal.SIGINT, signal.SIGHUP} <= blocked
    # The test's own thread is untouched.
    assert signal.SIGTERM not in signals_blocked(threading.get_native_id())


def test_engine_decisions_scraped(harness: Any, build: Any) -> None:
    """Real engine decisions, observed as the milter will, then scraped."""
    metrics = Metrics(harness.index)
    server = metrics.start("127.0.0.1:0")
    port = server.server_address[1]
    try:
        first = harness.inbound(
            ("From", "pat@customer.example.org"), ("To", "support@example.com"),
            ("Subject", "printer"), ("Message-ID", "<m1@customer.example.org>"),
        )
        metrics.observe(first.decision, 0.002)
        reply = harness.inbound(
            ("From", "pat@customer.example.org"), ("To", "support@example.com"),
            ("Subject", "Re: printer"), ("Message-ID", "<m2@customer.example.org>"),
            ("In-Reply-To", "<m1@customer.example.org>"),
        )
        metrics.observe(reply.decision, 0.002)
        ooo = harness.inbound(
            ("From", "pat@customer.example.org"), ("To", "support@example.com"),
            ("Subject", "Out of office"), ("Message-ID", "<m3@customer.example.org>"),
            ("Auto-Submitted", "auto-replied"), ("In-Reply-To", "<m1@customer.example.org>"),
        )
        metrics.observe(ooo.decision, 0.002)
        expo = parse(scrape(f"http://127.0.0.1:{port}/metrics")[2])
    finally:
        metrics.stop()
    msgs = "casethread_messages_total"
    assert expo.get(msgs, direction="inbound", match="new") == 1
    assert expo.get(msgs, direction="inbound", match="in-reply-to") == 2
    assert expo.get("casethread_cases_total") == 1
    assert ooo.one("X-Case-Auto") == "auto-replied"
    # Needs Decision.auto from the engine (X-Case-Auto).
    assert expo.get("casethread_auto_total", kind="auto-replied") == 1
