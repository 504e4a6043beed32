"""The stop of the real `casethread serve` under traffic (issue 6), over the milter protocol.

A stop signal (SIGTERM; SIGINT and SIGHUP alike) must not cut the messages under way: new
connections are refused at once (the MTA then applies its milter default action), the messages
already under way get their end-of-message reply with our edits, and only then does libmilter
stop. A message that does not finish is cut after `milter.drain_timeout`, or at once on a
second stop signal.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from miltertest import constants as c

from .conftest import STOP_TIMEOUT, MilterProcess, MilterStarter
from .milterclient import Endpoint, MtaSession, values
from .scenario import CONFIG, SUPPORT, customer_headers

LOG_TIMEOUT = 10.0
CONNECT_MACROS = {"j": "mx.example.com", "{daemon_name}": "mx"}
CUSTOMER = "pat@customer.example.org"


def config(drain_timeout: int) -> str:
    return CONFIG.replace("  timeout: 30\n", f"  timeout: 30\n  drain_timeout: {drain_timeout}\n")


def wait_for_log(proc: MilterProcess, text: str) -> None:
    deadline = time.monotonic() + LOG_TIMEOUT
    while text not in proc.log():
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{proc.log()}"
        time.sleep(0.05)


def connected(proc: MilterProcess) -> MtaSession:
    mta = MtaSession.open(proc.endpoint)
    mta.negotiate()
    assert mta.connect(CONNECT_MACROS) == c.SMFIR_CONTINUE
    return mta


class Interrupted(Exception):
    """Raised from `midway` to leave a message unfinished."""


def unfinished(mta: MtaSession, queue_id: str, midway: Callable[[], None] | None = None) -> None:
    """MAIL, RCPT, DATA and the headers of a message that never gets to its end."""

    def stop() -> None:
        if midway is not None:
            midway()
        raise Interrupted

    with contextlib.suppress(Interrupted):
        # Postfix's default (smtpd_delay_open_until_valid_rcpt): the queue id from DATA on.
        mta.message(CUSTOMER, [SUPPORT], customer_headers(f"<{queue_id}@customer.example.org>"),
                    data_macros={"i": queue_id}, midway=stop)


def inbound(mta: MtaSession, queue_id: str, midway: Callable[[], None]) -> None:
    headers = customer_headers(f"<{queue_id}@customer.example.org>", ("X-Case-ID", "C-999999"))
    t = mta.message(CUSTOMER, [SUPPORT], headers, "Hello\r\n", rcpt_macros={"i": queue_id},
                    eom_macros={"i": queue_id}, midway=midway)
    after = t.result(headers)
    assert t.disposition == c.SMFIR_CONTINUE, t
    assert values(after, "X-Case-ID") not in ([], ["C-999999"]), t.actions  # filtered


@pytest.mark.parametrize(
    ("where", "signum"),
    [("tcp", signal.SIGTERM), ("unix", signal.SIGTERM), ("tcp", signal.SIGINT),
     ("tcp", signal.SIGHUP)],
    ids=["tcp-SIGTERM", "unix-SIGTERM", "tcp-SIGINT", "tcp-SIGHUP"],
)
def test_a_stop_finishes_the_message_in_flight_and_refuses_new_connections(
    milters: MilterStarter, tmp_path: Path, where: str, signum: signal.Signals
) -> None:
    endpoint = Endpoint.unix(str(tmp_path / "drain.sock")) if where == "unix" else None
    # A drain timeout far above the test's bound: the stop must come from the drained message.
    proc = milters.start(config(drain_timeout=600), endpoint=endpoint, name="drain")
    idle = connected(proc)  # between messages: must not hold the stop up
    aborted = connected(proc)
    unfinished(aborted, "QABORT")
    aborted.abort()  # RSET: that message is over
    busy = connected(proc)
    refused: list[type[OSError]] = []

    def stop_and_knock() -> None:
        proc.send_term(signum)
        wait_for_log(proc, "stopping: new connections refused")
        try:
            proc.endpoint.connect(timeout=2.0).close()
        except OSError as exc:
            refused.append(type(exc))

    inbound(busy, "QBUSY", stop_and_knock)
    assert refused == [ConnectionRefusedError]
    busy.quit()
    status, seconds = proc.terminate()
    assert status == 0, proc.log()
    assert seconds < STOP_TIMEOUT
    log = proc.log()
    assert "waiting up to 600 s for 1 message(s) in flight on 3 connection(s)" in log, log
    assert "drained in" in log and log.rstrip().endswith("stopped"), log
    assert "Traceback" not in log and " ERROR " not in log, log
    idle.close()
    aborted.close()


@pytest.mark.parametrize("how", ["timeout", "second-signal"])
def test_a_message_that_does_not_finish_is_cut_by_the_timeout_or_a_second_term(
    milters: MilterStarter, how: str
) -> None:
    proc = milters.start(config(drain_timeout=1 if how == "timeout" else 600), name=how)
    stalled = connected(proc)
    status: list[int] = []

    def stop_meanwhile() -> None:
        proc.send_term()
        wait_for_log(proc, "for 1 message(s) in flight")
        if how == "second-signal":
            proc.proc.send_signal(signal.SIGTERM)
        status.append(proc.proc.wait(STOP_TIMEOUT))

    unfinished(stalled, "QSTALL", stop_meanwhile)
    assert status == [0], proc.log()
    # The MTA finds the connection closed and applies its milter default action.
    stalled.sock.settimeout(5.0)
    with contextlib.suppress(ConnectionResetError):
        assert stalled.sock.recv(1) == b""
    stalled.close()
    log = proc.log()
    # Named by queue id, so the operator can follow each in the MTA's log.
    cut = ("drain timed out after 1 s: " if how == "timeout" else
           "second stop signal: stopping now: ") + \
        "1 message(s) still in flight are cut, queue_id=QSTALL"
    assert cut in log and log.rstrip().endswith("stopped"), log

