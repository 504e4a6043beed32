#!/usr/bin/env python3
"""Core benchmarks (issue 5, item 2): engine time per message and index lookups at scale.

    .venv/bin/python bench/core.py            # engine + lookups at 0, 1k, 1M and 10M
                                              # Message-IDs (~5 minutes on 2 cores, ~1 GB in /tmp)
    .venv/bin/python bench/core.py --small    # without the 10M step (~2 minutes)
    .venv/bin/python bench/core.py --quick    # smoke run (seconds)
    .venv/bin/python bench/core.py --profile  # also: where the engine's time goes (cProfile)

Engine: `casethread.engine.Engine.process` on the benchmark's messages (bench/messages.py),
one fresh Message-ID per message, over
- the LMDB index in a temporary directory, durable as the milter runs it (every write
  transaction fsync'd): what a message costs the milter, and
- the in-memory index: the engine's own CPU time, without storage.
Three paths: outbound stamping of the 60 KB html+plain mail (a new case, token in Subject,
both body parts stamped), inbound resolution by headers (token in Subject), and inbound
resolution by a token found in the body (the customer's client dropped it from the Subject).

Index: `LmdbIndex.find(AliasKind.MESSAGE, id)` on an index prefilled with N recorded
Message-IDs, written straight into the `aliases` database with py-lmdb, in casethread's own key
encoding (`casethread.index.keys`: a digest, so keys land in random places whatever the order
the IDs come in), in the order casethread makes its IDs (by time), 100 records per transaction:
the milter commits each message's few aliases on their own, and big transactions would leave a
transaction's worth of freed pages in the file (10k per transaction: ~2x the bytes per record).
A 1M index filled in shuffled order is measured too: the same, since the keys are digests.
Lookups are random, half of existing IDs and half of missing ones, each timed alone; the page
cache is warm. The empty index answers every lookup before any tree walk, so the 1k index (half
hits too) is the like-for-like base of the lookup ratio. Bytes per record = data.mdb size /
records; live bytes per record count only the pages of the tree (the rest of the file is pages
freed by earlier transactions, reused by later ones).

Results are appended to bench/results.jsonl and printed.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import datetime
import gc
import hashlib
import io
import json
import os
import platform
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lmdb
import messages

from casethread.core.message import Envelope, Header, Message, parse_raw
from casethread.core.model import Alias, AliasKind, Direction
from casethread.core.msgid import base36
from casethread.core.settings import FloodSettings, Settings
from casethread.core.stamp import apply_splices
from casethread.core.store import CaseIndex
from casethread.core.token import Keyring
from casethread.engine import Engine
from casethread.index import LmdbIndex, MemoryIndex, keys
from casethread.index.lmdb_env import MAX_DBS

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results.jsonl"
HOSTNAME = "mx.bench.example"
MAP_SIZE = 8 << 30
NOW = 1_772_442_900  # 2026-03-02: recorded times of prefilled aliases
FILL_TXN = 100  # records per transaction of the loader


def _settings(index_path: str) -> Settings:
    base = Settings()
    return dataclasses.replace(
        base,
        index=dataclasses.replace(base.index, path=index_path, map_size=MAP_SIZE),
        # One sender repeats: keep it below the flood limit, as many real senders would be.
        inbound=dataclasses.replace(base.inbound, addresses=(messages.SUPPORT,),
                                    flood=FloodSettings(limit=100_000, window=3600)),
    )


def _crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _parse(raw: bytes) -> tuple[tuple[Header, ...], bytes]:
    # The milter gets the body as SMTP carries it: CRLF line endings.
    return parse_raw(_crlf(raw))


OUTBOUND_ENV = Envelope(mail_from=messages.SUPPORT, rcpts=(messages.CUSTOMER,),
                        client_address="127.0.0.1", daemon_name="ORIGINATING", queue_id="B")
INBOUND_ENV = Envelope(mail_from=messages.CUSTOMER, rcpts=(messages.SUPPORT,),
                       client_address="192.0.2.7", daemon_name=HOSTNAME, queue_id="B")


def _with_id(headers: tuple[Header, ...], i: int, tag: str) -> tuple[Header, ...]:
    return (*headers, Header("Message-ID", f"<{tag}{i:08d}.k3j5h2g1f0@customer.example>"))


# --------------------------------------------------------------------------- engine


@dataclasses.dataclass
class EngineCase:
    name: str
    direction: Direction
    messages: list[Message]
    expect_match: str
    check_body: bool = False


def _stats_ms(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(ordered), 4),
        "mean_ms": round(statistics.fmean(ordered), 4),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 4),
        "min_ms": round(ordered[0], 4),
    }


def engine_cases(engine: Engine, index: CaseIndex, keyring: Keyring, n: int) -> list[EngineCase]:
    """The three paths, n messages each, plus what each must decide (checked, not assumed)."""
    case = index.create_case(NOW)
    token = keyring.make(case.number)
    out_headers, out_body = _parse(messages.html_60k("outbound"))
    in_headers, in_body = _parse(messages.html_60k("inbound", token))
    # A reply whose Subject lost the token: the stamped outbound body comes back quoted.
    stamped = engine.process(Message(OUTBOUND_ENV, _with_id(out_headers, 0, "seed"), out_body))
    if not stamped.body_splices:
        raise RuntimeError(f"outbound mail was not stamped: {stamped.log_fields()}")
    reply_body = apply_splices(out_body, stamped.body_splices)
    reply_headers = tuple(
        Header("Subject", "Re: Your printer keeps jamming") if h.name == "Subject" else h
        for h in in_headers if h.name not in ("In-Reply-To", "References")
    )
    return [
        EngineCase("outbound stamp 60k", Direction.OUTBOUND,
                   [Message(OUTBOUND_ENV, _with_id(out_headers, i, "out"), out_body)
                    for i in range(n)], "new", check_body=True),
        EngineCase("inbound by headers 60k", Direction.INBOUND,
                   [Message(INBOUND_ENV, _with_id(in_headers, i, "hdr"), in_body)
                    for i in range(n)], "token"),
        EngineCase("inbound by body token 60k", Direction.INBOUND,
                   [Message(INBOUND_ENV, _with_id(reply_headers, i, "body"), reply_body)
                    for i in range(n)], "token"),
    ]


# Larger than any L3 cache here: writing it evicts what the engine had in the CPU caches.
EVICT = bytearray(64 << 20)
EVICT_STEP = 1 << 20
_BLANK = bytes(EVICT_STEP)


def evict_caches() -> None:
    """Fill the CPU caches with other data, as Postfix and the other sessions do between two
    of a milter's messages on a busy machine."""
    for offset in range(0, len(EVICT), EVICT_STEP):
        EVICT[offset : offset + EVICT_STEP] = _BLANK


def _process_checked(engine: Engine, case: EngineCase, msg: Message,
                     profiler: cProfile.Profile | None = None) -> int:
    """Nanoseconds `Engine.process` took for `msg`; its decision is checked, not assumed."""
    if profiler is not None:
        profiler.enable()
    start = time.perf_counter_ns()
    decision = engine.process(msg)
    elapsed = time.perf_counter_ns() - start
    if profiler is not None:
        profiler.disable()
    if decision.match != case.expect_match or decision.direction is not case.direction:
        raise RuntimeError(f"{case.name}: unexpected decision {decision.log_fields()}")
    if case.check_body and not decision.body_splices:
        raise RuntimeError(f"{case.name}: body not stamped: {decision.log_fields()}")
    return elapsed


def bench_engine(store: str, n: int, warmup: int, profile: bool, cold: int,
                 rounds: int) -> list[dict[str, Any]]:
    """Each case's n messages in `rounds` rounds, the cases alternating within a round: a burst
    of other work on the machine (seconds long, here) then spoils one round of one case, and
    the median of the round medians passes over it."""
    tmp = Path(tempfile.mkdtemp(prefix="casethread-core-"))
    keyring = Keyring([(1, bytes(range(32)))])
    index: CaseIndex = LmdbIndex(tmp / "index", MAP_SIZE) if store == "lmdb" else MemoryIndex()
    per_round = n // rounds
    try:
        engine = Engine(_settings(str(tmp / "index")), index, keyring, hostname=HOSTNAME)
        cases = engine_cases(engine, index, keyring, warmup + per_round * rounds + cold)
        data_mdb = tmp / "index" / "data.mdb"
        grown = dict.fromkeys([c.name for c in cases], 0)
        samples: dict[str, list[list[float]]] = {c.name: [] for c in cases}
        profiler = cProfile.Profile() if profile else None
        for case in cases:
            for msg in case.messages[:warmup]:
                engine.process(msg)
        for r in range(rounds):
            for case in cases:
                batch = case.messages[warmup + r * per_round : warmup + (r + 1) * per_round]
                size_before = data_mdb.stat().st_size if data_mdb.exists() else 0
                gc.collect()
                samples[case.name].append(
                    [_process_checked(engine, case, msg, profiler) / 1e6 for msg in batch])
                if store == "lmdb":
                    grown[case.name] += data_mdb.stat().st_size - size_before
        rows = []
        for case in cases:
            pooled = [x for batch in samples[case.name] for x in batch]
            medians = [statistics.median(batch) for batch in samples[case.name]]
            row: dict[str, Any] = {"kind": "core-engine", "case": case.name, "store": store,
                                   "messages": len(pooled), "rounds": rounds, **_stats_ms(pooled),
                                   "median_ms": round(statistics.median(medians), 4),
                                   "round_medians_ms": [round(m, 4) for m in medians]}
            if store == "lmdb":
                row["data_mdb_bytes_per_message"] = round(grown[case.name] / len(pooled), 1)
            # The same path with the CPU caches emptied before each message: a milter's lot on
            # a machine busy with Postfix (bench/README.md).
            cold_ns = []
            for msg in case.messages[warmup + per_round * rounds :]:
                evict_caches()
                cold_ns.append(_process_checked(engine, case, msg))
            row["cold_median_ms"] = round(statistics.median(cold_ns) / 1e6, 4)
            row["cold_messages"] = cold
            rows.append(row)
        if profiler is not None:
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("cumulative").print_stats(25)
            print(f"\n--- profile: all cases, {store} index ({n} messages each) ---")
            print(_trim_profile(out.getvalue()))
        return rows
    finally:
        index.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _trim_profile(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(lines[start:])


# --------------------------------------------------------------------------- index


def message_id(i: int, salt: bytes = b"") -> str:
    """The i-th recorded Message-ID, normalised as the index keys it: casethread's own shape
    (`base36-millis.base36-96-random-bits@domain`), times increasing with i, so sorted by i.
    Deterministic, so a lookup can name any of them again; another salt names missing ones."""
    rand = int.from_bytes(hashlib.blake2b(i.to_bytes(8, "big") + salt, digest_size=12).digest())
    return f"{base36(1_772_442_900_000 + i)}.{base36(rand)}@mail.example.com"


def _open_raw(path: Path) -> tuple[lmdb.Environment, Any]:
    # Bulk loading only: no fsync per transaction; one sync at the end makes it durable.
    env = lmdb.open(str(path), map_size=MAP_SIZE, subdir=True, max_dbs=MAX_DBS,
                    sync=False, metasync=False)
    return env, env.open_db(b"aliases")


def fill(path: Path, start: int, stop: int, shuffled: bool = False) -> float:
    """Record Message-IDs [start, stop) in the index at `path`; returns seconds taken."""
    began = time.monotonic()
    order: Sequence[int] = range(start, stop)
    if shuffled:
        order = list(order)
        random.Random(7).shuffle(order)
    env, db = _open_raw(path)
    try:
        for chunk in range(0, len(order), FILL_TXN):
            # Encoded as the milter writes them; ~3 messages per case (a question, a reply and
            # a follow-up).
            items = keys.alias_items(
                [Alias(AliasKind.MESSAGE, message_id(i), f"C-{i // 3 + 1:07d}")
                 for i in order[chunk : chunk + FILL_TXN]], NOW)
            with env.begin(write=True, db=db) as txn, txn.cursor() as cursor:
                added, _ = cursor.putmulti(items, overwrite=False)
                if added != len(items):
                    raise RuntimeError(f"added {added} of {len(items)} records at {chunk}")
        env.sync(True)
        return time.monotonic() - began
    finally:
        env.close()


def index_figures(path: Path, records: int, lookups: int) -> dict[str, Any]:
    rng = random.Random(records + 1)
    hits = [message_id(rng.randrange(records)) for _ in range(lookups // 2)] if records else []
    misses = [message_id(rng.randrange(max(records, 1)), b"missing")
              for _ in range(lookups - len(hits))]
    queries = [(q, True) for q in hits] + [(q, False) for q in misses]
    rng.shuffle(queries)
    index = LmdbIndex(path, MAP_SIZE)
    hit_ns: list[int] = []
    miss_ns: list[int] = []
    try:
        for q, _ in queries[:1000]:  # warm the code paths, not the data
            index.find(AliasKind.MESSAGE, q)
        gc.collect()
        for q, exists in queries:
            # Each lookup pays for its key's digest, as a Message-ID not seen lately does: the
            # small levels repeat their few keys and would otherwise hit the digest cache.
            keys.alias_key.cache_clear()
            start = time.perf_counter_ns()
            found = index.find(AliasKind.MESSAGE, q)
            elapsed = time.perf_counter_ns() - start
            if (found is not None) != exists:
                raise RuntimeError(f"lookup of {q}: found={found}, expected exists={exists}")
            (hit_ns if exists else miss_ns).append(elapsed)
    finally:
        index.close()
    size = (path / "data.mdb").stat().st_size
    env, db = _open_raw(path)
    try:
        with env.begin() as txn:
            stat = txn.stat(db)
        entries = int(stat["entries"])
        tree_bytes = int(stat["psize"]) * sum(
            int(stat[name]) for name in ("branch_pages", "leaf_pages", "overflow_pages"))
    finally:
        env.close()
    if entries != records:
        raise RuntimeError(f"index holds {entries} Message-IDs, expected {records}")
    all_ns = hit_ns + miss_ns

    def us(values: list[int]) -> float | None:
        return round(statistics.median(values) / 1000, 2) if values else None

    return {
        "records": records,
        "lookup_median_us": us(all_ns),
        "hit_median_us": us(hit_ns),
        "miss_median_us": us(miss_ns),
        "lookup_p90_us": round(sorted(all_ns)[int(0.9 * (len(all_ns) - 1))] / 1000, 2),
        "lookups": len(all_ns),
        "data_mdb_bytes": size,
        "bytes_per_record": round(size / records, 1) if records else None,
        "live_bytes_per_record": round(tree_bytes / records, 1) if records else None,
        "btree_depth": stat["depth"],
        "leaf_pages": stat["leaf_pages"],
        "mean_key_bytes": round(statistics.fmean(
            len(keys.alias_key(AliasKind.MESSAGE, message_id(i))) for i in range(1000)), 1),
    }


def bench_index(levels: Sequence[int], lookups: int, shuffled_1m: bool) -> list[dict[str, Any]]:
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="casethread-core-index-"))
    try:
        path = tmp / "index"
        LmdbIndex(path, MAP_SIZE).close()  # casethread creates its databases and schema
        filled = 0
        for level in sorted(levels):
            seconds = fill(path, filled, level) if level > filled else 0.0
            filled = level
            row = {"kind": "core-index", "fill": "time", "fill_s_step": round(seconds, 1),
                   **index_figures(path, level, lookups)}
            rows.append(row)
            _print_index_row(row)
        if shuffled_1m:
            rpath = tmp / "shuffled"
            LmdbIndex(rpath, MAP_SIZE).close()
            seconds = fill(rpath, 0, 1_000_000, shuffled=True)
            row = {"kind": "core-index", "fill": "shuffled", "fill_s_step": round(seconds, 1),
                   **index_figures(rpath, 1_000_000, lookups)}
            rows.append(row)
            _print_index_row(row)
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _print_index_row(row: dict[str, Any]) -> None:
    print(f"  {row['records']:>11,} ids ({row['fill']:6}, filled in {row['fill_s_step']:6.1f} s):"
          f" lookup median {row['lookup_median_us']} us (hit {row['hit_median_us']}, miss "
          f"{row['miss_median_us']}), p90 {row['lookup_p90_us']} us, "
          f"{row['bytes_per_record']} B/record ({row['live_bytes_per_record']} live), "
          f"depth {row['btree_depth']}", flush=True)


# --------------------------------------------------------------------------- targets


def core_targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's engine and index targets, judged on this run; printed and returned."""
    checks: list[dict[str, Any]] = []

    def add(name: str, value: float | None, op: str, limit: float) -> None:
        if value is not None:
            ok = value <= limit if op == "<=" else value >= limit
            checks.append({"target": name, "value": value, "op": op, "limit": limit, "ok": ok})

    engine = {(r["case"], r["store"]): r for r in rows if r["kind"] == "core-engine"}
    for case, limit in (("outbound stamp 60k", 0.5), ("inbound by headers 60k", 0.05)):
        for store in ("memory", "lmdb"):
            row = engine.get((case, store))
            add(f"engine {case} ms ({store} index)", row["median_ms"] if row else None, "<=", limit)
    index = {(r["records"], r["fill"]): r for r in rows if r["kind"] == "core-index"}
    top = max((n for n, fill in index if fill == "time"), default=0)
    if top:
        big = index[(top, "time")]
        add(f"lookup median us at {top:,}", big["lookup_median_us"], "<=", 20.0)
        # Like for like: half hits against the smallest filled index; misses against empty.
        base = min((n for n, fill in index if fill == "time" and n), default=top)
        if base < top:
            add(f"lookup median at {top:,} / at {base:,}", round(
                big["lookup_median_us"] / index[(base, "time")]["lookup_median_us"], 2),
                "<=", 1.2)
        zero = index.get((0, "time"))
        if zero:
            add(f"miss median at {top:,} / at 0", round(
                big["miss_median_us"] / zero["miss_median_us"], 2), "<=", 1.2)
    for (records, fill), row in sorted(index.items()):
        if records >= 100_000:  # a tiny index is mostly its fixed pages
            add(f"bytes per Message-ID record ({records:,}, {fill} fill)",
                row["bytes_per_record"], "<=", 150)
    print("\ntargets:")
    for c in checks:
        print(f"  {'ok  ' if c['ok'] else 'MISS'} {c['target']}: {c['value']} {c['op']} "
              f"{c['limit']}")
    return {"kind": "core-targets", "checks": checks}


# --------------------------------------------------------------------------- main


def _meta(quick: bool) -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    commit = subprocess.run(["git", "-C", str(BENCH.parent), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    return {
        "run": uuid.uuid4().hex[:12],
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit or "unknown",
        "machine": {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
                    # Which build: a distribution's (PGO, LTO) or a plain one, ~20 % apart.
                    "interpreter": os.path.realpath(sys.executable),
                    "lmdb": ".".join(map(str, lmdb.version()))},
        "quick": quick,
    }


def add_count_options(parser: argparse.ArgumentParser, n: int, warmup: int) -> None:
    """`-n`, `--warmup` and `--step`, as `bench/instructions.py` and `bench/calls.py` take
    them: messages counted, messages before them, seconds the clock moves a message."""
    parser.add_argument("-n", type=int, default=n, help=f"messages counted (default {n})")
    parser.add_argument("--warmup", type=int, default=warmup,
                        help=f"messages before (default {warmup})")
    parser.add_argument("--step", type=int, default=0,
                        help="seconds the clock moves a message (default 0)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run (seconds)")
    parser.add_argument("--small", action="store_true", help="skip the 10M Message-ID step")
    parser.add_argument("--profile", action="store_true", help="cProfile the engine cases")
    parser.add_argument("--skip-index", action="store_true", help="engine figures only")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON lines appended here")
    args = parser.parse_args(argv)
    meta = _meta(args.quick)
    n, warmup = (200, 20) if args.quick else (2500, 50)
    rounds = 2 if args.quick else 5
    rows: list[dict[str, Any]] = []
    machine = meta["machine"]
    print(f"casethread core bench {meta['date']}  commit {meta['commit']}  "
          f"{machine['cpus']} x {machine['cpu']}  Python {machine['python']} "
          f"({machine['interpreter']})")
    cold = 50 if args.quick else 300
    print(f"\nengine per message (ms; median of {rounds} round medians; mean, p90 and min over "
          f"all; cold: caches emptied)")
    print("                                  index   median    mean     p90     min  "
          "data.mdb B/msg  cold median")
    for store in ("memory", "lmdb"):
        for row in bench_engine(store, n, warmup, args.profile, cold, rounds):
            rows.append(row)
            grown = row.get("data_mdb_bytes_per_message")
            print(f"  {row['case']:31} {store:6} {row['median_ms']:8.3f} {row['mean_ms']:7.3f} "
                  f"{row['p90_ms']:7.3f} {row['min_ms']:7.3f}  "
                  f"{grown if grown is not None else '-':>14}  {row['cold_median_ms']:11.3f}",
                  flush=True)
    if not args.skip_index:
        levels = [0, 1_000, 100_000] if args.quick else [0, 1_000, 1_000_000]
        if not (args.quick or args.small):
            levels.append(10_000_000)
        print("\nindex lookups: LmdbIndex.find(AliasKind.MESSAGE, id), half hits, half misses")
        rows += bench_index(levels, 20_000 if args.quick else 100_000, shuffled_1m=not args.quick)
    rows.append(core_targets(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as out:
        for row in rows:
            out.write(json.dumps({**meta, **row}) + "\n")
    print(f"\n{len(rows)} results appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
