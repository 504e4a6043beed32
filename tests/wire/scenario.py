"""What the wire tests share: the support address, the milter's configuration, a customer's
header fields (test files cannot import one another: tests/conftest.py)."""

from __future__ import annotations

SUPPORT = "support@example.com"
CONFIG = """\
milter:
  timeout: 30
index:
  map_size: 64MiB
outbound:
  client_networks: [10.0.0.0/8, "2001:db8:1::/48"]
inbound:
  addresses: [support@example.com]
"""


def customer_headers(message_id: str, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [
        ("From", "Pat Customer <pat@customer.example.org>"),
        ("To", f"Support <{SUPPORT}>"),
        ("Subject", "Re: Your printer question"),
        ("Message-ID", message_id),
        *extra,
    ]
