"""Security checks as tests (issue 6): what a stranger can put in a message never steers us.

- Forged `X-Case-*` fields (any letter case, folded, RFC 2047-encoded values, repeated, at the
  top, the bottom and in between) are removed in every generated message, by the engine in all
  three directions and by `casethread filter`. Look-alike names that are not ours
  (`=?utf-8?q?X-Case-ID?=`, `X-Cases-ID`) are left alone.
- Forged tokens (random token-shaped strings, structurally valid tokens with a random MAC,
  every one-character substitution of a real token, tokens of another key, truncated tokens,
  a retired key after rotation) are accepted 0 times.
- A guessable subject or body reference (`[Case C-000001]`) from a stranger never threads.

The edits are applied by a model of the MTA written here (Postfix semantics: names compared
ASCII case-insensitively, a deletion renumbers the fields after it, added fields go last), not
by the code under test. Counts are printed (capsys.disabled) so they can be quoted.
"""

from __future__ import annotations

import base64
import random
import re
import string
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casethread.core import token as token_mod
from casethread.core.edits import AddHeader, Edit
from casethread.core.message import Envelope, Header, Message
from casethread.core.model import Direction
from casethread.core.settings import InboundSettings, Settings
from casethread.core.token import ALPHABET, MAX_LENGTH, MIN_LENGTH, Keyring
from casethread.engine import Engine
from casethread.index import MemoryIndex

PREFIX = "x-case-"
OUR_SUFFIXES = ("ID", "Match", "Duplicate", "State", "Queue", "Auto", "Loop", "Related",
                "Sender", "Token")
SUPPORT = "support@example.com"
AGENT = "Dana Agent <dana@support.example.com>"
CUSTOMER = "pat@customer.example.org"
SHAPE_CHARS = string.ascii_letters + string.digits
FORGED_EXAMPLES = 500
MARK = "FORGED"
DECOY = "DECOY"


# --- a model of the MTA applying milter edits ---------------------------------------------------

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def ascii_lower(text: str) -> str:
    """Case folding as an MTA does it (strcasecmp): ASCII letters only."""
    return text.translate(_ASCII_LOWER)


def is_ours(name: str) -> bool:
    return ascii_lower(name.strip()).startswith(PREFIX)


def mta_apply(headers: Sequence[Header], edits: Sequence[Edit]) -> list[Header]:
    """Apply edits one by one as Postfix's cleanup does: a change or deletion names the
    `index`-th field of that name in the header as it is *now*; additions go last."""
    current = list(headers)
    added: list[Header] = []
    for edit in edits:
        if isinstance(edit, AddHeader):
            added.append(Header(edit.name, edit.value))
            continue
        wanted = ascii_lower(edit.name)
        positions = [i for i, h in enumerate(current) if ascii_lower(h.name) == wanted]
        if not 1 <= edit.index <= len(positions):
            continue  # the MTA ignores a change of a field that is not there
        at = positions[edit.index - 1]
        if edit.value:
            current[at] = Header(current[at].name, edit.value)
        else:
            del current[at]
    return current + added


BAD_VALUE = re.compile(r"\r|\x00|\n(?![ \t])")


def assert_writable(edits: Sequence[Edit]) -> None:
    """Whatever we write: no CR, no NUL, and a LF only as folding (followed by SP/HT)."""
    for e in edits:
        if isinstance(e, AddHeader):
            assert re.fullmatch(r"[!-9;-~]+", e.name), e
        if e.value:
            assert not BAD_VALUE.search(e.value), e


# --- forged fields ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForgedCase:
    headers: tuple[Header, ...]
    forged: int  # fields under our prefix
    decoys: int  # look-alike names that are not ours


def mixed_case(draw: Any, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if f else c.lower() for c, f in zip(text, flips, strict=True))


def encoded_word(text: str, kind: str) -> str:
    if kind == "b":
        return f"=?utf-8?b?{base64.b64encode(text.encode()).decode()}?="
    q = "".join(c if c.isalnum() else f"={ord(c):02X}" for c in text)
    return f"=?iso-8859-1?q?{q}?="


@st.composite
def forged_value(draw: Any) -> str:
    core = draw(st.sampled_from(["C-000001", "C-999999", "new", "known", "yes", "token",
                                 "resolved", "", "vip queue"]))
    kind = draw(st.sampled_from(["plain", "b", "q", "folded", "long-fold", "unicode"]))
    if kind == "plain":
        return f"{core} {MARK}".strip()
    if kind in ("b", "q"):
        return f"{encoded_word(core or 'x', kind)} {MARK}"
    if kind == "unicode":
        return f"{core} Grüße ✉ {MARK}"
    fold: str = draw(st.sampled_from(["\r\n\t", "\r\n ", "\n\t", "\n "]))
    parts = [core or "x", MARK] if kind == "folded" else [core or "x"] * 5 + [MARK]
    return fold.join(parts)


@st.composite
def forged_field(draw: Any) -> Header:
    suffix = draw(st.one_of(
        st.sampled_from(OUR_SUFFIXES),
        st.text(alphabet=string.ascii_letters + string.digits + "-_.", max_size=12),
    ))
    name = mixed_case(draw, "X-Case-" + suffix)
    return Header(name, draw(forged_value()))


DECOY_NAMES = ("=?utf-8?q?X-Case-ID?=", "=?UTF-8?B?WC1DYXNlLUlE?=", "X-Cases-ID", "XX-Case-ID",
               "X-Case", "X_Case-ID", "Case-ID")


@st.composite
def forged_messages(draw: Any) -> ForgedCase:
    base = [
        Header("From", "Eve Stranger <eve@evil.example>"),
        Header("To", f"<{SUPPORT}>"),
        Header("Subject", "Re: hello"),
        Header("Date", "Mon, 02 Mar 2026 10:00:00 +0000"),
        Header("Message-ID", f"<{draw(st.integers(0, 10**9))}@evil.example>"),
    ]
    forged = draw(st.lists(forged_field(), min_size=1, max_size=12))
    # Repeat some of them verbatim: the same name several times.
    forged += draw(st.lists(st.sampled_from(forged), max_size=4))
    decoys = [Header(n, f"{DECOY} C-000001")
              for n in draw(st.lists(st.sampled_from(DECOY_NAMES), max_size=3))]
    where = draw(st.sampled_from(["top", "bottom", "both", "interleaved"]))
    extra = forged + decoys
    if where == "top":
        headers = extra + base
    elif where == "bottom":
        headers = base + extra
    elif where == "both":
        half = len(extra) // 2
        headers = extra[:half] + base + extra[half:]
    else:
        headers = list(base)
        for field in extra:
            headers.insert(draw(st.integers(0, len(headers))), field)
    return ForgedCase(tuple(headers), len(forged), len(decoys))


def check_forged_removed(harness: Any, case: ForgedCase, direction: Direction) -> list[Header]:
    msg = Message(Envelope(rcpts=(SUPPORT,), mail_from="eve@evil.example"), case.headers,
                  b"Hello\r\n")
    decision = harness.engine.process(msg, direction)
    assert_writable(decision.edits)
    out = mta_apply(msg.headers, decision.edits)
    ours_added = [(e.name, e.value) for e in decision.edits
                  if isinstance(e, AddHeader) and is_ours(e.name)]
    ours_left = [h for h in out if is_ours(h.name)]
    if direction is Direction.OUTBOUND:
        # Outbound fields under our prefix come from the trusted app: its X-Case-ID is adopted
        # (DESIGN §3.1), the rest consumed. Exactly one X-Case-ID leaves, naming the case.
        assert [(h.name.lower(), h.value) for h in ours_left] == [
            ("x-case-id", decision.case_ids[0])
        ]
        return out
    # No input field under our prefix survives (identity: a forged value may equal ours).
    survivors = [h for h in ours_left if any(h is f for f in case.headers)]
    assert not survivors, survivors
    assert [(h.name, h.value) for h in ours_left] == ours_added
    assert all(MARK not in h.value for h in out), out
    # Look-alikes are not ours and stay, in order.
    decoys_in = [h for h in case.headers if h.value.startswith(DECOY)]
    assert [h for h in out if h.value.startswith(DECOY)] == decoys_in
    if direction is Direction.INBOUND:
        others_in = [h for h in msg.headers if not is_ours(h.name)]
        assert [h for h in out if not is_ours(h.name)] == others_in
        assert [n for n, _ in ours_added].count("X-Case-Match") == 1
    else:
        assert ours_added == [] and ours_left == []
    return out


def test_forged_case_headers_are_removed_by_the_engine(
    make_harness: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    counts: Counter[str] = Counter()

    @settings(max_examples=FORGED_EXAMPLES, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(case=forged_messages())
    def run(case: ForgedCase) -> None:
        harness = make_harness()
        for direction in Direction:
            check_forged_removed(harness, case, direction)
            if direction is not Direction.OUTBOUND:  # outbound fields are the app's own
                counts["forged"] += case.forged
                counts["decoys"] += case.decoys
        counts["messages"] += 1

    run()
    with capsys.disabled():
        print(f"\n[forgery] engine: {counts['messages']} generated messages, inbound and other "
              f"(outbound checked too); forged X-Case-* fields tried {counts['forged']}, left 0; "
              f"look-alike fields kept {counts['decoys']}")
    assert counts["messages"] >= FORGED_EXAMPLES // 2
    assert counts["forged"] > counts["messages"]


# --- the same through `casethread filter` ------------------------------------------------------


def raw_forged_message(rng: random.Random, n: int) -> tuple[bytes, int]:
    """A message file with forged fields written as raw lines, folds and obs-syntax included."""
    def name() -> str:
        suffix = rng.choice([*OUR_SUFFIXES, "Whatever", "", "Queue-Override"])
        return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in "X-Case-" + suffix)

    def line() -> str:
        kind = rng.choice(["plain", "b", "q", "folded", "obs", "nospace", "empty-first"])
        value = rng.choice(["C-000001", "C-424242", "new", "known"])
        if kind == "plain":
            return f"{name()}: {value} {MARK}"
        if kind in ("b", "q"):
            return f"{name()}: {encoded_word(value, kind)} {MARK}"
        if kind == "folded":
            return f"{name()}: {value}\r\n\t{MARK}\r\n  more"
        if kind == "obs":
            return f"{name()} : {value} {MARK}"  # obsolete: WSP before the colon
        if kind == "nospace":
            return f"{name()}:{value}{MARK}"
        return f"{name()}:\r\n {value} {MARK}"

    forged = [line() for _ in range(rng.randint(2, 10))]
    forged += rng.sample(forged, rng.randint(0, len(forged)))  # verbatim repeats
    base = [f"From: Eve <eve{n}@evil.example>", f"To: <{SUPPORT}>", "Subject: Re: hello",
            f"Message-ID: <{n}.forged@evil.example>", "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=utf-8"]
    decoys = [f"{d}: {DECOY}" for d in rng.sample(DECOY_NAMES, rng.randint(0, 2))]
    fields = base + decoys
    split = rng.randint(0, len(forged))
    fields = forged[:split] + fields + forged[split:]
    raw = "\r\n".join(fields) + "\r\n\r\nHello, no marker in here.\r\n"
    return raw.encode(), len(forged)


def header_section(raw: bytes) -> list[tuple[str, str]]:
    """(name, unfolded value) of each field in the output's header section (LF or CRLF)."""
    text = raw.decode("utf-8", "surrogateescape").replace("\r\n", "\n")
    head = text.split("\n\n", 1)[0]
    fields: list[tuple[str, str]] = []
    for line in head.split("\n"):
        if line[:1] in (" ", "\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + line)
        else:
            name, _, value = line.partition(":")
            fields.append((name, value.strip()))
    return fields


FILTER_MESSAGES = 48


def test_forged_case_headers_are_removed_by_casethread_filter(
    run_filter: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "casethread.yaml"
    config.write_text(f"inbound:\n  addresses: [{SUPPORT}]\n")
    rng = random.Random(20260302)
    jobs = []
    for n in range(FILTER_MESSAGES):
        raw, forged = raw_forged_message(rng, n)
        direction = ("inbound", "outbound", "auto")[n % 3]
        args = ["--config", str(config), "--direction", direction, "-"]
        if direction == "inbound":
            args[-1:-1] = ["--rcpt", SUPPORT]
        elif direction == "auto":
            args[-1:-1] = ["--rcpt", "someone@else.example"]  # neither in nor out: other
        jobs.append((direction, raw, forged, args))
    # The first run creates the index: do it alone, then run the rest in parallel.
    first, rest = jobs[0], jobs[1:]
    results = [run_filter(*first[3], stdin=first[1])]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results += list(pool.map(lambda job: run_filter(*job[3], stdin=job[1]), rest))
    tried = 0
    for (direction, raw, forged, _), result in zip(jobs, results, strict=True):
        assert result.returncode == 0, result.stderr.decode()
        assert b"Traceback" not in result.stderr, result.stderr.decode()
        out = result.stdout
        fields = header_section(out)
        ours = [(n, v) for n, v in fields if is_ours(n)]
        names = [n for n, _ in ours]
        if direction == "outbound":
            # The app's X-Case-ID is adopted (it may carry the marker); nothing else of ours.
            assert [n.lower() for n in names] == ["x-case-id"], ours
            out = out.replace(f"{names[0]}: {ours[0][1]}".encode(), b"")
        else:
            tried += forged
        assert MARK.encode() not in out, (direction, out.decode(errors="replace"))
        if direction == "inbound":
            assert names.count("X-Case-Match") == 1 and names.count("X-Case-ID") == 1, ours
        elif direction == "auto":
            assert names == [], ours
        assert out.count(DECOY.encode()) == raw.count(DECOY.encode())
        # Everything else arrives: the body as sent.
        assert b"\r\n\r\nHello, no marker in here.\r\n" in out
    with capsys.disabled():
        print(f"\n[forgery] casethread filter: {len(jobs)} messages ({len(jobs) * 2 // 3} inbound "
              f"or other); forged X-Case-* fields tried {tried}, left 0")


# --- forged tokens ------------------------------------------------------------------------------

TEST_SECRET = bytes(range(32))


def new_case_and_token(harness: Any) -> tuple[str, str, Any]:
    """An agent's outbound mail to the customer: the case, its genuine token, its Message-ID."""
    out = harness.outbound(("From", AGENT), ("To", f"Pat <{CUSTOMER}>"), ("Subject", "Hello"),
                           body=b"Hi Pat\r\n")
    case_id = out.one("X-Case-ID")
    return case_id, harness.token(case_id), out


def stranger_mail(n: int, forged: str, where: str) -> Message:
    subject = "Re: Hello"
    body = b"Thanks\r\n"
    headers = [("From", f"Someone <stranger{n}@evil.example>"), ("To", SUPPORT),
               ("Message-ID", f"<t{n}.{where}@evil.example>")]
    if where == "subject":
        subject += f" [ref:{forged}]"
    elif where == "body":
        body = f"Thanks\r\n\r\n> earlier [ref:{forged}]\r\n".encode()
    else:
        headers.append(("References", f"<x{n}@evil.example> <{forged}.case@support.example.com>"))
    headers.append(("Subject", subject))
    return Message(Envelope(rcpts=(SUPPORT,)), tuple(Header(k, v) for k, v in headers), body)


@dataclass
class TokenTally:
    tried: Counter[str]
    accepted: Counter[str]
    flagged: Counter[str]  # X-Case-Token: invalid

    def __init__(self) -> None:
        self.tried, self.accepted, self.flagged = Counter(), Counter(), Counter()


def try_through_engine(harness: Any, real_case: str, forged: Iterator[str], kind: str,
                       tally: TokenTally, start: int = 0) -> None:
    for n, candidate in enumerate(forged, start):
        where = ("subject", "body", "anchor")[n % 3]
        result = harness.run(stranger_mail(n, candidate, where), Direction.INBOUND)
        tally.tried[kind] += 1
        if result.decision.match == "token" or real_case in result.decision.case_ids:
            tally.accepted[kind] += 1
        if result.all("X-Case-Token") == ["invalid"]:
            tally.flagged[kind] += 1


def substitutions(tok: str) -> Iterator[str]:
    """Every token that differs from `tok` in one symbol (aliases of the same symbol excluded:
    Crockford decoding makes `o`/`O`/`0` one symbol, so they are the same token)."""
    for i, old in enumerate(tok):
        for new in SHAPE_CHARS:
            if token_mod.normalise(new) != token_mod.normalise(old):
                yield tok[:i] + new + tok[i + 1 :]


def random_shaped(rng: random.Random) -> str:
    return "".join(rng.choice(SHAPE_CHARS) for _ in range(rng.randint(MIN_LENGTH, MAX_LENGTH)))


def random_structured(rng: random.Random, key_id: int = 1) -> str:
    """A token with the right layout (key id, length symbol, number) and a random MAC."""
    digits = token_mod._encode_number(rng.randint(0, 2**20))
    mac = "".join(rng.choice(ALPHABET) for _ in range(token_mod.MAC_SYMBOLS))
    return ALPHABET[key_id] + ALPHABET[len(digits)] + digits + mac


def test_forged_tokens_are_accepted_zero_times(
    make_harness: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    harness = make_harness()
    real_case, genuine, _ = new_case_and_token(harness)
    keyring: Keyring = harness.keyring
    rng = random.Random(6)
    tally = TokenTally()

    # Positive control: the genuine token threads, even from a stranger (it is not guessable).
    control = harness.run(stranger_mail(0, genuine, "subject"), Direction.INBOUND)
    assert (control.decision.match, control.decision.case_ids) == ("token", (real_case,))

    # 1. Verification alone, in bulk.
    bulk = {
        "random token-shaped": [random_shaped(rng) for _ in range(20_000)],
        "random MAC, valid layout": [random_structured(rng) for _ in range(20_000)],
        "other key, same id": [Keyring([(1, rng.randbytes(32))]).make(n) for n in range(1, 2001)],
        "other key id": [Keyring([(rng.randint(2, 31), rng.randbytes(32))]).make(n)
                         for n in range(1, 2001)],
    }
    for kind, candidates in bulk.items():
        tally.tried[f"verify: {kind}"] += len(candidates)
        tally.accepted[f"verify: {kind}"] += sum(keyring.verify(c) is not None
                                                 for c in candidates)

    # 2. Through the engine (Subject, quoted body, References anchor in turn).
    subs = list(substitutions(genuine))
    assert len(subs) > 20 * len(genuine)
    try_through_engine(harness, real_case, iter(subs), "one symbol changed", tally, 1)
    truncated = [genuine[:k] for k in range(1, len(genuine))]
    truncated += [genuine[k:] for k in range(1, len(genuine))]
    try_through_engine(harness, real_case, iter(truncated), "truncated", tally, 10_000)
    number = harness.case(real_case).number
    other_keys = [Keyring([(1, rng.randbytes(32))]).make(number) for _ in range(100)]
    other_keys += [Keyring([(k, rng.randbytes(32))]).make(number) for k in range(0, 32)
                   if k != 1]
    try_through_engine(harness, real_case, iter(other_keys), "another key", tally, 20_000)
    randoms = [random_shaped(rng) for _ in range(300)]
    randoms += [random_structured(rng) for _ in range(300)]
    try_through_engine(harness, real_case, iter(randoms), "random", tally, 30_000)

    with capsys.disabled():
        print("\n[forgery] forged tokens tried / accepted (X-Case-Token: invalid added):")
        for kind in tally.tried:
            print(f"  {kind:40} {tally.tried[kind]:7} / {tally.accepted[kind]}"
                  + (f"  ({tally.flagged[kind]})" if kind in tally.flagged else ""))
        print(f"  {'total':40} {sum(tally.tried.values()):7} / {sum(tally.accepted.values())}")
    assert sum(tally.accepted.values()) == 0, tally.accepted
    # Every changed symbol keeps the token's shape: each one is reported as invalid.
    assert tally.flagged["one symbol changed"] == tally.tried["one symbol changed"]
    assert tally.flagged["another key"] == tally.tried["another key"]


def _engine(index: MemoryIndex, keyring: Keyring) -> Engine:
    settings = Settings(inbound=InboundSettings(addresses=(SUPPORT,)))
    return Engine(settings, index, keyring, clock=lambda: 1_772_442_900.0,
                  hostname="mx.example.net")


def _reply(subject: str, n: int) -> Message:
    headers = (("From", f"Pat <{CUSTOMER}>"), ("To", SUPPORT), ("Subject", subject),
               ("Message-ID", f"<rot{n}@customer.example.org>"))
    return Message(Envelope(rcpts=(SUPPORT,)), tuple(Header(k, v) for k, v in headers), b"Hi\r\n")


def test_retired_key_tokens_stop_matching_after_rotation() -> None:
    index = MemoryIndex()
    old_secret, new_secret = bytes(range(32)), bytes(range(100, 132))
    old = _engine(index, Keyring([(1, old_secret)]))
    out = old.process(Message(Envelope(), (Header("From", AGENT), Header("To", CUSTOMER),
                                           Header("Subject", "Hello"))), Direction.OUTBOUND)
    [case_id] = out.case_ids
    subject = next(e.value for e in out.edits if e.name == "Subject")
    tok = subject.rsplit("[ref:", 1)[1].rstrip("]")
    # Grace: the new key signs, the old one still verifies.
    rotated = _engine(index, Keyring([(2, new_secret), (1, old_secret)]))
    grace = rotated.process(_reply(f"Re: Hello [ref:{tok}]", 1), Direction.INBOUND)
    assert (grace.match, grace.case_ids) == ("token", (case_id,))
    # After the grace: the old key is gone, its tokens are forgeries.
    retired = _engine(index, Keyring([(2, new_secret)]))
    after = retired.process(_reply(f"Re: Hello [ref:{tok}]", 2), Direction.INBOUND)
    assert after.match != "token"
    assert AddHeader("X-Case-Token", "invalid") in after.edits
    # Same number, new key: that token is genuine.
    fresh = Keyring([(2, new_secret)]).make(index.get_case(case_id).number)  # type: ignore[union-attr]
    again = retired.process(_reply(f"Re: Hello [ref:{fresh}]", 3), Direction.INBOUND)
    assert (again.match, again.case_ids) == ("token", (case_id,))


def test_retired_key_file_after_rotation_through_the_cli(
    casethread_bin: Path, run_filter: Any, tmp_path: Path
) -> None:
    """The same with real key files: `keygen`, `tokens.keys` and `casethread filter`."""
    keys = {}
    for key_id in (1, 2):
        keys[key_id] = tmp_path / f"token-{key_id}.key"
        made = subprocess.run([str(casethread_bin), "keygen", str(keys[key_id]), "--id",
                               str(key_id)], capture_output=True, timeout=30, check=False)
        assert made.returncode == 0, made.stderr

    def config(name: str, *key_ids: int) -> str:
        path = tmp_path / name
        listed = ", ".join(str(keys[k]) for k in key_ids)
        path.write_text(f"inbound:\n  addresses: [{SUPPORT}]\ntokens:\n  keys: [{listed}]\n")
        return str(path)

    agent = (f"From: {AGENT}\r\nTo: {CUSTOMER}\r\nSubject: Hello\r\n\r\nHi\r\n").encode()
    sent = run_filter("--config", config("one.yaml", 1), "--direction", "outbound", "-",
                      stdin=agent)
    assert sent.returncode == 0, sent.stderr
    tok = dict(header_section(sent.stdout))["Subject"].rsplit("[ref:", 1)[1].rstrip("]")

    def reply(config_path: str, n: int) -> dict[str, str]:
        raw = (f"From: <{CUSTOMER}>\r\nTo: {SUPPORT}\r\nMessage-ID: <cli{n}@c.example>\r\n"
               f"Subject: Re: Hello [ref:{tok}]\r\n\r\nThanks\r\n").encode()
        got = run_filter("--config", config_path, "--direction", "inbound", "--rcpt", SUPPORT,
                         "-", stdin=raw)
        assert got.returncode == 0, got.stderr
        return dict(header_section(got.stdout))

    grace = reply(config("grace.yaml", 2, 1), 1)
    assert (grace["X-Case-ID"], grace["X-Case-Match"]) == ("C-000001", "token")
    assert "X-Case-Token" not in grace
    after = reply(config("after.yaml", 2), 2)
    assert after["X-Case-Match"] != "token" and after["X-Case-ID"] != "C-000001"
    assert after["X-Case-Token"] == "invalid"


# --- guessable case references -----------------------------------------------------------------


def test_subject_and_body_reference_from_a_stranger_never_threads(
    make_harness: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    harness = make_harness()
    case_id, _, _ = new_case_and_token(harness)
    assert case_id == "C-000001"
    refs = ["[Case C-000001]", "[case c-000001]", "[CASE  C-000001]", "[Case\tC-000001]"]
    strangers = ["eve@evil.example", "Pat Customer <eve@evil.example>",
                 f'"{CUSTOMER}" <eve@evil.example>', "eve@customer.example.org",
                 "PAT@customer.example.org.evil.example"]
    tried = threaded = 0
    n = 0
    for ref in refs:
        for sender in strangers:
            for where in ("subject", "body"):
                n += 1
                subject = f"Re: Hello {ref}" if where == "subject" else "Re: Hello"
                body = f"About {ref}, thanks\r\n".encode() if where == "body" else b"Hi\r\n"
                got = harness.inbound(("From", sender), ("To", SUPPORT), ("Subject", subject),
                                      ("Message-ID", f"<ref{n}@evil.example>"), body=body)
                tried += 1
                if case_id in got.decision.case_ids or got.decision.match.endswith("-ref"):
                    threaded += 1
    # Control: the case's participant threads by the same reference.
    known = harness.inbound(("From", f"Pat <{CUSTOMER}>"), ("To", SUPPORT),
                            ("Subject", "Re: Hello [Case C-000001]"),
                            ("Message-ID", "<ref-known@customer.example.org>"))
    assert (known.decision.match, known.decision.case_ids) == ("subject-ref", (case_id,))
    assert known.one("X-Case-Sender") == "known"
    with capsys.disabled():
        print(f"\n[forgery] case references from strangers: tried {tried}, threaded {threaded}")
    assert threaded == 0
