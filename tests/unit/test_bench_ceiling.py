"""bench/ceiling.py: the benchmark's mail, cut into what an MTA sends a milter."""

from __future__ import annotations

import pytest

from ..helpers.bench_scripts import load_bench_script

ceiling = load_bench_script("ceiling.py")


@pytest.mark.parametrize(("direction", "size"), ceiling.WORKLOADS)
def test_message_is_the_benchmark_mail_as_fields_and_a_crlf_body(direction: str,
                                                                  size: str) -> None:
    raw = ceiling.messages.message(direction, size, "TOKEN").decode("ascii")
    fields, body = ceiling._message(direction, size, "TOKEN")
    rebuilt = "".join(f"{name}: {value}\r\n" for name, value in fields) + "\r\n" + body
    assert rebuilt == raw.replace("\n", "\r\n")
    assert "\n" not in body.replace("\r\n", "")
    assert all(":" not in name and name == name.strip() for name, _ in fields)


def test_a_folded_field_keeps_its_continuation_lines() -> None:
    original = ceiling.messages.message
    try:
        ceiling.messages.message = lambda *_: (
            b"Subject: a long\n subject\n\tline\nTo: x@y\n\nbody\n")
        fields, body = ceiling._message("outbound", "5k", None)
    finally:
        ceiling.messages.message = original
    assert fields == [("Subject", "a long\r\n subject\r\n\tline"), ("To", "x@y")]
    assert body == "body\r\n"
