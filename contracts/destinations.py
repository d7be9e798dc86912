"""Where a webhook may be sent: the one rule the registry's validator and notify's sender both apply.

A webhook URL comes from a registry entry, and notify posts to it from inside the task force's network:
it must never become a way into that network (SSRF). So a destination that is loopback, private
(RFC 1918, ULA fc00::/7, CGNAT and the other ranges that are not globally routable) is refused unless the
registry entry says `allow_private_network: true` explicitly; link-local (169.254.0.0/16 and fe80::/10,
where cloud metadata answers), unspecified, multicast and reserved addresses, and Alur's own HTTP ports on
loopback, are refused even then: no agency's receiver lives there.

The validator sees only what the URL spells (IP literals, in any form the resolver would accept, and the
reserved name `localhost`): it does no DNS, so a registry entry never turns invalid because a resolver is
down. The sender applies the same rule to every address the name resolves to, then connects to the
address it checked (a name that resolves differently on the second lookup cannot slip through).
"""

from __future__ import annotations

import ipaddress
import re
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALUR_HTTP_PORTS = frozenset({8081, 8082, 8083, 8084})
"""The default HTTP ports of intake, routing, notify and the board (DESIGN.md); the sender adds the
ports the running services were given."""

NEVER = frozenset({"unspecified", "multicast", "reserved", "link-local"})
"""Kinds of address no registry flag opens: nothing an agency runs answers there."""

_NUMERIC = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$", re.IGNORECASE)


def literal_address(host: str) -> IPAddress | None:
    """The address a host spells literally (`10.0.0.1`, `::1`, and the shorthand `127.1` or `0x7f000001`
    that resolvers also accept), or None for a name. IPv4-mapped IPv6 is read as the IPv4 it maps."""
    text = host.strip("[]").rstrip(".")
    try:
        address: IPAddress = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        if not _NUMERIC.match(text):
            return None
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def address_kind(address: IPAddress) -> str | None:
    """What makes an address one webhooks are not sent to, or None for a globally routable unicast one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    if address.is_link_local:
        return "link-local"
    if address.is_loopback:
        return "loopback"
    if isinstance(address, ipaddress.IPv4Address) and address.is_reserved:
        return "reserved"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "not globally routable"
    return None


def is_localhost_name(host: str) -> bool:
    """`localhost` and its subdomains (RFC 6761): loopback by definition, whatever DNS says."""
    name = host.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


def _verdict(what: str, kind: str, port: int | None, allow_private: bool, own_ports: frozenset[int]) -> str | None:
    if kind in NEVER:
        extra = " (cloud metadata answers there)" if kind == "link-local" else ""
        return f"{what} is {kind}{extra}: webhooks are never sent there"
    if kind == "loopback" and port in own_ports:
        return f"{what} is Alur's own HTTP port {port} on loopback: webhooks are never sent there"
    if allow_private:
        return None
    return f"{what} is {kind}: refused unless the registry entry sets allow_private_network explicitly"


def host_problem(
    host: str, port: int | None, *, allow_private: bool, own_ports: frozenset[int] = ALUR_HTTP_PORTS
) -> str | None:
    """Why a webhook URL's host (as written, no DNS) is refused, or None: the registry validator's check."""
    if is_localhost_name(host):
        return _verdict(f"host {host}", "loopback", port, allow_private, own_ports)
    address = literal_address(host)
    if address is None:
        return None
    kind = address_kind(address)
    return None if kind is None else _verdict(f"host {host}", kind, port, allow_private, own_ports)


def resolved_problem(
    host: str, addresses: list[str], port: int | None, *, allow_private: bool,
    own_ports: frozenset[int] = ALUR_HTTP_PORTS,
) -> str | None:
    """Why the addresses a host resolved to are refused, or None: every one must pass (DNS rebinding)."""
    if not addresses:
        return f"host {host} resolved to no address"
    for text in addresses:
        address = literal_address(text)
        if address is None:
            return f"host {host} resolved to something that is not an address"
        kind = address_kind(address)
        if kind is not None:
            problem = _verdict(f"host {host} resolves to {address}, which", kind, port, allow_private, own_ports)
            if problem is not None:
                return problem
    return None
