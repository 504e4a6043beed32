"""The real `casethread serve` with `milter.metrics_listen`: drive one message over the milter
protocol, then scrape GET /metrics over loopback HTTP and read the counters back."""

from __future__ import annotations

import re
import socket
import time
import urllib.error
import urllib.request

import pytest
from miltertest import constants as c

from .conftest import MilterProcess, MilterStarter, free_port
from .milterclient import Endpoint, MtaSession, Transaction
from .scenario import SUPPORT

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SCRAPE_READY_TIMEOUT = 10.0
SAMPLE_RE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{.*\})?) (\S+)")


def config(metrics_port: int) -> str:
    return f"""\
milter:
  timeout: 30
  metrics_listen: 127.0.0.1:{metrics_port}
index:
  map_size: 64MiB
inbound:
  addresses: [{SUPPORT}]
"""


def scrape(url: str, timeout: float = SCRAPE_READY_TIMEOUT) -> tuple[str, dict[str, float]]:
    """The body and its samples ({'name{labels}': value}); retries until the port answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == CONTENT_TYPE
                body: str = resp.read().decode("utf-8")
                break
        except urllib.error.URLError as exc:
            if isinstance(exc, urllib.error.HTTPError) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    samples = {}
    for line in body.splitlines():
        if line.startswith("#"):
            continue
        m = SAMPLE_RE.fullmatch(line)
        assert m is not None, line
        samples[m.group(1)] = float(m.group(2))
    return body, samples


def inbound_message(endpoint: Endpoint, queue_id: str) -> Transaction:
    with MtaSession.open(endpoint) as mta:
        mta.negotiate()
        macros = {"j": "mx.example.com", "{daemon_name}": "mx.example.com"}
        assert mta.connect(macros) == c.SMFIR_CONTINUE
        t = mta.message(
            "pat@customer.example.org", [SUPPORT],
            [
                ("From", "Pat Customer <pat@customer.example.org>"),
                ("To", f"Support <{SUPPORT}>"),
                ("Subject", "My printer is on fire"),
                ("Message-ID", "<metrics.1@customer.example.org>"),
            ],
            "Hello,\r\nthe printer.\r\n",
            mail_macros={"{mail_addr}": "pat@customer.example.org"},
            rcpt_macros={"i": queue_id}, eom_macros={"i": queue_id},
        )
        mta.quit()
    return t


def test_scrape_counts_a_message_through_the_real_milter(milters: MilterStarter) -> None:
    port = free_port()
    proc: MilterProcess = milters.start(config(port), name="metrics")
    url = f"http://127.0.0.1:{port}/metrics"

    _body, before = scrape(url)
    assert 'casethread_messages_total{direction="inbound",match="new"}' not in before
    assert before["casethread_eom_seconds_count"] == 0
    assert before["casethread_cases_total"] == 0

    t = inbound_message(proc.endpoint, "QMETRICS1")
    assert t.disposition == c.SMFIR_CONTINUE
    assert t.added("X-Case-Match") == ["new"], t.actions

    body, after = scrape(url)
    assert 'casethread_messages_total{direction="inbound",match="new"} 1\n' in body
    assert after["casethread_eom_seconds_count"] == 1
    assert after['casethread_eom_seconds_bucket{le="+Inf"}'] == 1
    assert 0 < after["casethread_eom_seconds_sum"] < 5
    assert after["casethread_cases_total"] == 1
    assert after["casethread_index_bytes"] > 0
    assert 0 < after["casethread_index_map_used_ratio"] < 1
    assert not any(name.startswith("casethread_errors_total") and value
                   for name, value in after.items()), body
    assert "# TYPE casethread_messages_total counter" in body

    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
    assert info.value.code == 404

    # SIGTERM still stops the milter cleanly with the endpoint's threads running, and the
    # endpoint goes with it.
    status, _seconds = proc.terminate()
    assert status == 0, proc.log()
    assert "Traceback" not in proc.log()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
