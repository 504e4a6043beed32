"""Peak memory of the milter for one 50 MB outbound message with a 45 MB attachment (issue 4).

Starts the real `casethread serve` on a unix socket, drives one message through it with the
milter protocol client of the wire tests, and reads the milter's /proc status before and after:
VmHWM (peak resident set, file-backed pages of the spooled body's mmap included) and the peak
of RssAnon sampled during the message (the heap: what spooling keeps flat).

    .venv/bin/python bench/bigmail.py [--mb 50]
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from miltertest import constants as c  # noqa: E402
from tests.wire.milterclient import Endpoint, MtaSession  # noqa: E402


def status(pid: int) -> dict[str, int]:
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            fields[name] = int(value.split()[0])
    return fields


def message_body(total_mb: int) -> str:
    attachment = base64.encodebytes(os.urandom((total_mb - 5) * 3 << 18)).decode()
    text = "Hello Pat,\r\n" + "here is the report you asked for.\r\n" * 140_000  # ~5 MB
    return (
        "--B\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + text
        + "--B\r\nContent-Type: application/octet-stream\r\n"
        "Content-Disposition: attachment; filename=\"report.bin\"\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
        + attachment.replace("\n", "\r\n") + "--B--\r\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=50)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="casethread-bigmail-"))
    sock = work / "milter.sock"
    with open(work / "log", "wb") as log:
        proc = subprocess.Popen(
            [str(ROOT / ".venv/bin/casethread"), "serve", "--socket", f"unix:{sock}",
             "--index", str(work / "index")],
            stdout=subprocess.DEVNULL, stderr=log,
        )
    try:
        deadline = time.monotonic() + 15
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        body = message_body(args.mb)
        idle = status(proc.pid)
        peak_anon = [idle["RssAnon"]]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                peak_anon.append(status(proc.pid)["RssAnon"])

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.monotonic()
        with MtaSession.open(Endpoint.unix(str(sock)), timeout=120) as mta:
            mta.negotiate()
            assert mta.connect({"{daemon_name}": "ORIGINATING"}) == c.SMFIR_CONTINUE
            t = mta.message(
                "dana@support.example.com", ["pat@customer.example.org"],
                [("From", "Dana <dana@support.example.com>"), ("To", "pat@customer.example.org"),
                 ("Subject", "Your report"), ("MIME-Version", "1.0"),
                 ("Content-Type", 'multipart/mixed; boundary="B"')],
                body, eom_macros={"i": "QBIG1"},
            )
            mta.quit()
        elapsed = time.monotonic() - started
        done.set()
        sampler.join()
        after = status(proc.pid)
        replaced = [a for a in t.actions if a.kind == c.SMFIR_REPLBODY]
        print(f"message: {len(body) / 1e6:.1f} MB body, disposition {t.disposition!r}, "
              f"{len(replaced)} replacebody chunks, {elapsed:.1f} s")
        print(f"milter idle RSS {idle['VmRSS'] / 1024:.1f} MiB; peak RSS (VmHWM) "
              f"{after['VmHWM'] / 1024:.1f} MiB; peak anonymous (heap) "
              f"{max(peak_anon) / 1024:.1f} MiB (+{(max(peak_anon) - idle['RssAnon']) / 1024:.1f})")
        return 0
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
