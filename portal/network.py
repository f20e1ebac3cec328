"""What a client's address says about who is asking: the keys limits and counts are kept under.

A fact about addresses, shared by the throttle (whose budgets are keyed on it) and the events
(whose alerts count people per network), so neither imports the other for it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# The WSGI environ key set on a request that came through our proxies (portal/security.py): only
# then are its forwarded headers, and the request id it brings, believed.
VIA_PROXY = "portal.via_proxy"


def parse_address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` as an IP address, None when it is not one: a forwarded header's value is whatever a
    proxy (or a client) wrote. An IPv6 zone (``fe80::1%eth0``) names an interface of the sender's
    machine, nothing about a client: refused too."""
    try:
        address = ipaddress.ip_address(text or "")
    except ValueError:
        return None
    return None if getattr(address, "scope_id", None) else address


def within(address: str | None, networks: Iterable[Network]) -> bool:
    """Whether ``address`` is an IP address inside one of ``networks`` (anything else is in none)."""
    parsed = parse_address(address)
    return parsed is not None and any(parsed in network for network in networks)


def client_key(address: str | None) -> str:
    """The client as a limit sees it: an IPv4 address, or the /64 an IPv6 address belongs to (one
    subscriber is routinely given a whole /64, so counting single addresses counts nothing)."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def recorded_client(address: str | None) -> str | None:
    """The client as the audit trail and the event lines keep it: its IPv4 /24 or IPv6 /48, never the
    address. Beside a person's record a full address identifies (it is one of HIPAA's eighteen
    identifiers); the network still says where a campaign came from. None when there is no address."""
    ip = parse_address(address)
    if ip is None:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is None:
            return str(ipaddress.IPv6Network((ip, 48), strict=False))
        ip = ip.ipv4_mapped
    return str(ipaddress.IPv4Network((ip, 24), strict=False))


def client_network(address: str | None) -> str:
    """The network a client's address belongs to, for counting *people*: its IPv4 /24 or IPv6 /64.

    Someone who holds the stolen records rents neighbouring addresses; a household, an office or
    a carrier's NAT shares a few. Counting people per /24 makes forty addresses of one block no
    stronger together than one (SECURITY.md, "The thief who holds the stolen records")."""
    client = client_key(address)
    if client == "unknown" or "/" in client:
        return client
    return str(ipaddress.IPv4Network((client, 24), strict=False))
