"""Client network allowlists (a spanner config's `allowed_client_networks`): CIDR blocks, IPv4 and IPv6."""

from __future__ import annotations

import ipaddress
from typing import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> list[Network]:
    """CIDR blocks ("10.0.0.0/8", "2001:db8::/32", a single address); ValueError naming the first invalid one.
    Host bits are allowed ("10.1.2.3/8" is 10.0.0.0/8)."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP network in CIDR notation (e.g. 10.0.0.0/8)") from None
    return networks


def address_allowed(address: str | None, allowed: Iterable[str] | None) -> bool:
    """True when `allowed` is empty (no allowlist) or `address` lies in one of its networks. An unknown or
    unparsable address is refused when there is an allowlist (IPv4-mapped IPv6 addresses count as IPv4)."""
    networks = parse_networks(allowed or [])
    if not networks:
        return True
    try:
        ip = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == network.version and ip in network for network in networks)
