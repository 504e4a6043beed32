"""The benchmark's mail: a 5 KB plain message and a 60 KB html+plain message with an attachment,
outbound (an agent writes to a customer) and inbound (the customer replies).

Deterministic (seeded), LF line endings (smtp-source -F sends each line with CRLF), 7-bit
ASCII. No Message-ID: Postfix's cleanup adds a fresh one for loopback clients before the milter
sees the headers, so each of smtp-source's identical copies is a distinct message (a repeated
Message-ID would take casethread's duplicate-delivery shortcut instead of its real work).
"""

from __future__ import annotations

import base64
import random
import textwrap

AGENT = "agent@example.com"
SUPPORT = "support@example.com"
CUSTOMER = "pat@customer.example"
SIZES = ("5k", "60k")
DIRECTIONS = ("outbound", "inbound")

_WORDS = (
    "printer", "paper", "jam", "tray", "toner", "invoice", "order", "delivery", "account",
    "password", "reset", "login", "error", "screen", "update", "version", "install", "please",
    "thanks", "regards", "hello", "issue", "problem", "again", "still", "working", "office",
    "network", "cable", "replace", "warranty", "serial", "number", "model", "shipped",
    "tomorrow", "today", "yesterday", "customer", "support", "ticket", "reply", "attached",
    "file", "report", "monday", "friday",
)


def _prose(rng: random.Random, size: int, width: int = 72) -> str:
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    text = " ".join(words)[:size]
    paragraphs = [text[i : i + 600] for i in range(0, len(text), 600)]
    return "\n\n".join(textwrap.fill(p, width) for p in paragraphs) + "\n"


def _headers(direction: str, token: str | None) -> list[str]:
    if direction == "outbound":
        return [
            f"From: Support <{SUPPORT}>",
            f"To: Pat Customer <{CUSTOMER}>",
            "Subject: Your printer keeps jamming",
            "Date: Mon, 02 Mar 2026 10:15:00 +0000",
        ]
    if token is None:
        raise ValueError("inbound mail replies to a case: it needs its token")
    # A reply as a mail client writes it: the token in the Subject, the agent's Message-ID in
    # In-Reply-To; resolution by headers (DESIGN §5 "token", Subject first).
    return [
        f"From: Pat Customer <{CUSTOMER}>",
        f"To: Support <{SUPPORT}>",
        f"Subject: Re: Your printer keeps jamming [ref:{token}]",
        "Date: Mon, 02 Mar 2026 11:20:00 +0000",
        "In-Reply-To: <mx0abc12.3q9zk2m1xy7w0f@example.com>",
        "References: <mx0abc12.3q9zk2m1xy7w0f@example.com>",
    ]


def plain_5k(direction: str, token: str | None = None, seed: int = 5) -> bytes:
    rng = random.Random(seed)
    body = _prose(rng, 4850)
    lines = [
        *_headers(direction, token),
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Transfer-Encoding: 7bit",
        "",
    ]
    return ("\n".join(lines) + "\n" + body).encode("ascii")


def html_60k(direction: str, token: str | None = None, seed: int = 60) -> bytes:
    """multipart/mixed: multipart/alternative (text/plain, text/html) + a base64 PDF."""
    rng = random.Random(seed)
    text = _prose(rng, 7000)
    paragraphs = text.strip().split("\n\n")
    html_body = "\n".join(
        f"<p style=\"font-family:Arial,sans-serif;font-size:14px\">{p}</p>" for p in paragraphs
    )
    html = (
        "<!DOCTYPE html>\n<html><head><meta charset=\"us-ascii\"><title>Reply</title></head>\n"
        f"<body>\n<div class=\"msg\">\n{html_body}\n</div>\n</body></html>\n"
    )
    pdf = b"%PDF-1.4\n" + rng.randbytes(34_000) + b"\n%%EOF\n"
    attachment = "\n".join(textwrap.wrap(base64.b64encode(pdf).decode("ascii"), 76))
    lines = [
        *_headers(direction, token),
        "MIME-Version: 1.0",
        'Content-Type: multipart/mixed; boundary="=_mixed_7f3a"',
        "",
        "This is a multi-part message in MIME format.",
        "",
        "--=_mixed_7f3a",
        'Content-Type: multipart/alternative; boundary="=_alt_91c2"',
        "",
        "--=_alt_91c2",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Transfer-Encoding: 7bit",
        "",
        text,
        "--=_alt_91c2",
        "Content-Type: text/html; charset=us-ascii",
        "Content-Transfer-Encoding: 7bit",
        "",
        html,
        "--=_alt_91c2--",
        "",
        "--=_mixed_7f3a",
        'Content-Type: application/pdf; name="report.pdf"',
        'Content-Disposition: attachment; filename="report.pdf"',
        "Content-Transfer-Encoding: base64",
        "",
        attachment,
        "--=_mixed_7f3a--",
        "",
    ]
    return "\n".join(lines).encode("ascii")


def message(direction: str, size: str, token: str | None = None) -> bytes:
    if size == "5k":
        return plain_5k(direction, token)
    if size == "60k":
        return html_60k(direction, token)
    raise ValueError(f"unknown size {size!r}")
