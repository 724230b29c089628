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

__all__ = ["sourceKey", "SourceCounts", "SourceRates", "Unattributed"]


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
    # A link-local zone (fe80::1%eth0) parses (Python 3.9+), and the /64
    # below is built from the address bits alone: the zone is dropped.
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        return None
    mapped = address.ipv4_mapped
    if mapped is not None:
        return str(mapped)
    network = ipaddress.IPv6Network((int(address) >> 64 << 64, 64))
    return str(network)


class Unattributed:
    """
    The address of a connection whose source is not known yet: a
    balancer's connection to a C{haproxy:} listener, before its PROXY
    header names the client.  L{sourceKey} gives L{None} for it, so it is
    not counted against the balancer's own address; the header's source is
    counted once it is read.
    """

    __slots__ = ("address",)

    def __init__(self, address):
        self.address = address

    def __repr__(self) -> str:
        host, port = getattr(self.address, "host", None), getattr(self.address, "port", None)
        where = f"{host}:{port}" if host is not None else str(self.address)
        return f"balancer {where}"


class SourceCounts:
    """
    Open connections per source, against a limit (C{--max-connections-per-source}).

    Touched from the reactor thread only.  Only sources with connections
    open have an entry: its size is bounded by the connection limit.

    @ivar limit: connections one source may hold open; 0 for no limit (then
        nothing is counted at all).
    @ivar refused: connections refused for being over the limit.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.refused = 0
        # Keyed by str; release() looks L{None} up too (and finds nothing).
        self.open: dict[Optional[str], int] = {}

    def admit(self, key: Optional[str]) -> bool:
        """
        Count one more connection from C{key} unless that would pass the
        limit.

        @return: L{True} if admitted (then L{release} it once closed, when
            C{key} is not L{None} and there is a limit), L{False} if
            refused (counted in L{refused}).
        """
        if key is None or not self.limit:
            return True
        count = self.open.get(key, 0)
        if count >= self.limit:
            self.refused += 1
            return False
        self.open[key] = count + 1
        return True

    def release(self, key: Optional[str]) -> None:
        """
        One connection L{admit}ted for C{key} has closed.  (Nothing was
        counted for L{None}, or without a limit: nothing to do then.)
        """
        count = self.open.get(key, 0) - 1
        if count > 0:
            self.open[key] = count
        else:
            self.open.pop(key, None)


class SourceRates:
    """
    New connections per source and second, against a limit: a token bucket
    per source holding at most C{rate} tokens, refilled at C{rate} a second,
    one token per connection.  A source may open C{rate} connections at
    once, then C{rate} a second.

    Only sources that have spent tokens recently are kept: an entry whose
    bucket has refilled is dropped when the table is swept (every
    L{SWEEP_EVERY} admissions), so the table holds at most the sources seen
    in the last second or so.

    @ivar rate: connections a second; 0 for no limit (nothing is kept).
    @ivar refused: connections refused for being over the rate.
    """

    SWEEP_EVERY = 1024

    def __init__(self, rate: float, clock):
        self.rate = rate
        self.clock = clock
        self.refused = 0
        self.buckets: dict[str, list] = {}
        self._untilSweep = self.SWEEP_EVERY

    def admit(self, key: Optional[str]) -> bool:
        """
        Take a token for one new connection from C{key}.

        @return: L{False} (counted in L{refused}) if the source has none.
        """
        if key is None or not self.rate:
            return True
        now = self.clock.seconds()
        self._untilSweep -= 1
        if self._untilSweep <= 0:
            self._sweep(now)
        bucket = self.buckets.get(key)
        if bucket is None:
            self.buckets[key] = [self.rate - 1, now]
            return True
        tokens = min(self.rate, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1:
            bucket[0] = tokens
            self.refused += 1
            return False
        bucket[0] = tokens - 1
        return True

    def _sweep(self, now: float) -> None:
        self._untilSweep = self.SWEEP_EVERY
        rate = self.rate
        full = [key for key, (tokens, last) in self.buckets.items()
                if tokens + (now - last) * rate >= rate]
        for key in full:
            del self.buckets[key]
