"""What a client's address says about who is asking: the keys limits and counts are kept under.

A fact about addresses, shared by the throttle (whose budgets are keyed on it) and the events
(whose alerts count people per network), so neither imports the other for it.
"""

from __future__ import annotations

import ipaddress


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


def client_network(address: str | None) -> str:
    """The network a client's address belongs to, for counting *people*: its IPv4 /24 or IPv6 /64.

    Someone who holds the stolen records rents neighbouring addresses; a household, an office or
    a carrier's NAT shares a few. Counting people per /24 makes forty addresses of one block no
    stronger together than one (SECURITY.md, "The thief who holds the stolen records")."""
    client = client_key(address)
    if client == "unknown" or "/" in client:
        return client
    return str(ipaddress.IPv4Network((client, 24), strict=False))
