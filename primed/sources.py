"""
Per-source accounting: who a connection or datagram comes from, for limits
that one client must not be able to exhaust alone.

A "source" is what one client can cheaply have many of, grouped so that
having more of them costs something real:

  - an IPv4 address is one source;
  - an IPv6 address belongs to its /64: one host (or one customer of a
    provider) is usually given a whole /64 and can use any address in it,
    so counting single IPv6 addresses would count nothing;
  - an IPv4-mapped IPv6 address (C{::ffff:192.0.2.1}, a dual-stack socket's
    view of an IPv4 peer) is the IPv4 address it maps;
  - a UNIX socket peer has no address: L{sourceKey} gives L{None}, "no
    source", and per-source limits do not apply (the socket's file
    permissions decide who may connect).

On a C{haproxy:} listener the source is the client the PROXY header names,
once the header is read; until then the connection is the balancer's.
"""

import ipaddress
from typing import Optional

__all__ = ["sourceKey"]


def sourceKey(peer) -> Optional[str]:
    """
    The source a peer belongs to, as a short string usable as a dictionary
    key and in logs and metrics.

    @param peer: a Twisted L{IPv4Address} or L{IPv6Address} (or any object
        with a C{host} attribute), a C{(host, port)} tuple as a UDP
        protocol's C{datagramReceived} gets, or a host string.
    @return: C{"192.0.2.1"} for IPv4, C{"2001:db8:1:2::/64"} for IPv6 (the
        network of its /64), or L{None} when the peer has no IP address
        (UNIX sockets, and anything unparseable).
    """
    host: object
    if isinstance(peer, str):
        host = peer
    elif isinstance(peer, tuple):
        host = peer[0] if peer else None
    else:
        host = getattr(peer, "host", None)
    if not isinstance(host, str):
        return None
    if ":" not in host:
        # IPv4, the common case: no parsing, the text is the key (Twisted
        # gives dotted quads as the kernel wrote them, so one address has
        # one spelling).
        return host if host[:1].isdigit() else None
    return _ipv6Key(host)


def _ipv6Key(host: str) -> Optional[str]:
    host = host.partition("%")[0]  # a link-local zone is not part of the address
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        return None
    mapped = address.ipv4_mapped
    if mapped is not None:
        return str(mapped)
    network = ipaddress.IPv6Network((int(address) >> 64 << 64, 64))
    return str(network)
