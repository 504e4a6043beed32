"""Which way a message travels (DESIGN §2), decided once per message from the envelope."""

from __future__ import annotations

import ipaddress

from .addresses import AddressMatcher, cached_matches
from .message import Envelope
from .model import Direction
from .settings import Settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Classifier:
    """Compiled once at start-up; `classify` is on the per-message path."""

    def __init__(self, settings: Settings) -> None:
        out = settings.outbound
        # Postfix's daemon names are the admin's words: ORIGINATING and originating agree.
        self._daemon_names = frozenset(n.casefold() for n in out.daemon_names)
        self._authenticated = out.authenticated
        self._networks: tuple[Network, ...] = tuple(
            unmapped(ipaddress.ip_network(n, strict=False)) for n in out.client_networks
        )
        self._inbound = AddressMatcher(settings.inbound.addresses)
        self._to_support = cached_matches(self._inbound)  # every inbound mail's recipients
        self._internal = (AddressMatcher(out.internal_recipients)
                          if out.internal_recipients else None)

    def is_outbound(self, env: Envelope) -> bool:
        # The sender domain never counts: it is forgeable. Only what the MTA vouches for does.
        if env.daemon_name is not None and env.daemon_name.casefold() in self._daemon_names:
            return True
        if self._authenticated and env.auth_user:
            return True
        return bool(self._networks) and self._from_our_network(env.client_address)

    def _from_our_network(self, address: str | None) -> bool:
        if not address or not self._networks:
            return False
        ip = client_ip(address)
        return ip is not None and any(ip in net for net in self._networks)

    def to_support(self, env: Envelope) -> bool:
        """Whether a recipient is one of our support addresses (`inbound.addresses`)."""
        return any(map(self._to_support, env.rcpts))

    def to_internal_only(self, env: Envelope) -> bool:
        """Whether every recipient is one of `outbound.internal_recipients` (and there is
        one). A support address (`inbound.addresses`) never is, also where a pattern of
        both names it (`@example.com` and `support@example.com`): mail to the helpdesk is a
        case's mail, an agent's forward to it too."""
        internal = self._internal
        return (internal is not None and bool(env.rcpts)
                and all(internal.matches(r) and not self._inbound.matches(r)
                        for r in env.rcpts))

    def classify(self, env: Envelope) -> Direction:
        if self.is_outbound(env):
            return Direction.OUTBOUND
        return Direction.INBOUND if self.to_support(env) else Direction.OTHER


def client_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The MTA's client address (`{client_addr}`: `192.0.2.1`, `2001:db8::1`, Sendmail's
    `IPv6:2001:db8::1`, bracketed or not) as an address, an IPv4-mapped one in its IPv4 form;
    None when it is none (Postfix's `unknown`)."""
    try:
        ip = ipaddress.ip_address(address.strip("[]").removeprefix("IPv6:"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def unmapped(net: Network) -> Network:
    """An IPv4-mapped IPv6 network (`::ffff:192.0.2.0/120`) as the IPv4 network it maps:
    clients are compared in their IPv4 form."""
    mapped = ipaddress.IPv6Network("::ffff:0:0/96")
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(mapped):
        first = net.network_address.ipv4_mapped
        if first is not None:
            return ipaddress.ip_network(f"{first}/{net.prefixlen - 96}")
    return net
