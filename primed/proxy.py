"""
The PROXY protocol (versions 1 and 2) in front of primed's TCP protocol, for
backends behind nginx or HAProxy: C{--listen haproxy:tcp:8809:interface=HOST}.

A load balancer that relays TCP hides the client: primed sees the balancer's
address.  With the PROXY protocol the balancer opens each connection with a
header naming the real client, and primed logs and reports that address.

Twisted has a C{haproxy:} endpoint of its own, but its wrapper hides the
half-close (it does not provide L{IHalfCloseableProtocol}, so C{nc -N}'s FIN
becomes a full close before any reply leaves), wraps the transport (so the
direct-send fast path cannot apply), and its parsers accept malformed headers
(non-numeric ports raise C{ValueError}, v2 buffers up to 64 KiB).  Here:

  - L{parseHeader} is strict and bounded: v1 is at most 107 bytes (the
    specification's limit), v2 at most C{maxLength}; a byte that cannot
    start a header is refused at once, without waiting for more.

  - L{ProxyHeaderProtocol} sits between the transport and a
    L{primed.tcp.PrimeLineProtocol} only until the header is read.  The inner
    protocol is connected at once to the I{real} transport, so it counts
    towards the connection limit, is drained by a stop, runs its idle timer,
    registers itself as the transport's producer and writes through the fast
    path exactly as on a plain listener.  Once the header is parsed, the
    wrapper hands every later read straight to the inner protocol (an
    instance attribute replaces its C{dataReceived}: no per-read cost), and
    forwards the half-close.

  - A connection that does not send a valid header within C{timeout}
    seconds is closed without an answer: answering it would let anyone who
    reaches the backend directly spoof their address.  Refusals are logged at
    most once per 10 seconds, with a running count.

  - Only trusted balancers may send a header (C{--proxy-from
    ADDRESS[/PREFIX]}, like nginx's C{set_real_ip_from}): a connection from
    any other address is closed before anything is read.  Without
    C{--proxy-from} any address is trusted, as before, and primed warns at
    start.  A C{haproxy:unix:} listener has no peer address: whoever may
    open the socket file is trusted.

  - Per-source limits (L{primed.tcpfactory}) count a balancer's connection
    against the client its header names, not against the balancer: until
    the header is read the wrapped factory sees a
    L{primed.sources.Unattributed} address.
"""

import ipaddress
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, Union, cast

from twisted.internet import address, interfaces
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from primed.ratelog import Throttle
from primed.sources import Unattributed

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

#: Seconds a connection may take to send its PROXY header.
DEFAULT_HEADER_TIMEOUT = 5.0
#: Longest version 2 header accepted, in bytes (16 fixed bytes, addresses and
#: TLVs); HAProxy's own are far shorter.  Version 1 is at most 107 bytes.
DEFAULT_MAX_HEADER = 2048
#: Shortest C{DEFAULT_MAX_HEADER} that still holds any address block.
MIN_MAX_HEADER = 16 + 216

V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

_V2_ADDRESS_LENGTHS = {0x11: 12, 0x21: 36, 0x31: 216}  # TCP4, TCP6, UNIX stream


class BadHeader(Exception):
    """
    What arrived is not a valid PROXY header; the message says why.
    """


class ProxyHeader(NamedTuple):
    """
    A parsed header.  C{source} is L{None} for a v2 LOCAL command (the
    balancer's own health check) and for v1 C{UNKNOWN} or v2 C{UNSPEC}: then
    the socket's own peer is the one to use.
    """

    version: int
    source: Optional[interfaces.IAddress]
    destination: Optional[interfaces.IAddress]


def parseHeader(
    data: bytes, maxLength: int = DEFAULT_MAX_HEADER
) -> Optional[tuple[ProxyHeader, int]]:
    """
    Parse the PROXY header at the start of C{data}.

    @return: L{None} while C{data} is a valid but incomplete header, else the
        header and how many bytes of C{data} it took.
    @raise BadHeader: C{data} cannot be the start of a valid header.
    """
    if not data:
        return None
    if data[:1] == b"P":
        return _parseV1(data)
    if data[:1] == b"\r":
        return _parseV2(data, maxLength)
    raise BadHeader("no PROXY header")


def _parseV1(data: bytes) -> Optional[tuple[ProxyHeader, int]]:
    if not V1_PREFIX.startswith(data[:6]):
        raise BadHeader("no PROXY header")
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if b"\n" in data[:V1_MAX_LENGTH]:
            raise BadHeader("v1 header ends without CR")
        if len(data) >= V1_MAX_LENGTH:
            raise BadHeader("v1 header longer than 107 bytes")
        return None
    try:
        fields = data[:end].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise BadHeader("v1 header is not ASCII") from None
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return ProxyHeader(1, None, None), end + 2
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise BadHeader("malformed v1 header")
    _, family, source, destination, sourcePort, destinationPort = fields
    kind, addressClass = (
        (ipaddress.IPv4Address, address.IPv4Address)
        if family == "TCP4"
        else (ipaddress.IPv6Address, address.IPv6Address)
    )
    try:
        if "%" in source or "%" in destination:  # an IPv6 zone: not an address here
            raise ValueError(source)
        kind(source), kind(destination)
    except ValueError:
        raise BadHeader(f"v1 header has a bad {family} address") from None
    return (
        ProxyHeader(
            1,
            addressClass("TCP", source, _port(sourcePort)),
            addressClass("TCP", destination, _port(destinationPort)),
        ),
        end + 2,
    )


def _port(text: str) -> int:
    if (
        not (text.isdigit() and text.isascii())
        or (text[0] == "0" and text != "0")
        or int(text) > 65535
    ):
        raise BadHeader("v1 header has a bad port")
    return int(text)


def _parseV2(data: bytes, maxLength: int) -> Optional[tuple[ProxyHeader, int]]:
    if not V2_SIGNATURE.startswith(data[:12]):
        raise BadHeader("no PROXY header")
    if len(data) < 16:
        if len(data) > 12 and data[12] >> 4 != 2:
            raise BadHeader("v2 header of an unknown version")
        return None
    versionCommand, family, length = struct.unpack("!BBH", data[12:16])
    if versionCommand >> 4 != 2 or versionCommand & 0xF > 1:
        raise BadHeader("v2 header of an unknown version or command")
    total = 16 + length
    if total > maxLength:
        raise BadHeader(f"v2 header of {total} bytes, over the limit of {maxLength}")
    if len(data) < total:
        return None
    if versionCommand & 0xF == 0 or family == 0x00:  # LOCAL, or UNSPEC
        return ProxyHeader(2, None, None), total
    needed = _V2_ADDRESS_LENGTHS.get(family)
    if needed is None:
        raise BadHeader(f"v2 header for an unsupported family 0x{family:02x}")
    if length < needed:
        raise BadHeader("v2 header too short for its addresses")
    # What follows the addresses must be whole TLVs (type, 16-bit length,
    # value) filling the header exactly, as HAProxy checks: a length field
    # running on into the requests would swallow them unanswered.
    offset = 16 + needed
    while offset < total:
        if offset + 3 > total:
            raise BadHeader("v2 header ends inside a TLV")
        offset += 3 + struct.unpack("!H", data[offset + 1:offset + 3])[0]
    if offset != total:
        raise BadHeader("v2 header's last TLV runs past its length")
    block = data[16:16 + needed]
    make: Callable[[bytes, int], Union[address.IPv4Address, address.IPv6Address]]
    if family == 0x11:
        source, destination, sourcePort, destinationPort = struct.unpack("!4s4sHH", block)
        make = lambda raw, port: address.IPv4Address(  # noqa: E731
            "TCP", str(ipaddress.IPv4Address(raw)), port)
    elif family == 0x21:
        source, destination, sourcePort, destinationPort = struct.unpack("!16s16sHH", block)
        make = lambda raw, port: address.IPv6Address(  # noqa: E731
            "TCP", str(ipaddress.IPv6Address(raw)), port)
    else:
        source, destination = block[:108], block[108:]
        return (
            ProxyHeader(2, address.UNIXAddress(source.rstrip(b"\x00")),
                        address.UNIXAddress(destination.rstrip(b"\x00"))),
            total,
        )
    return ProxyHeader(2, make(source, sourcePort), make(destination, destinationPort)), total


if TYPE_CHECKING:
    class _HalfCloseable(Protocol):
        """
        For the type checker only: the protocol L{ProxyHeaderProtocol}
        wraps, which gets both halves of a close (L{IHalfCloseableProtocol}).
        """

        def readConnectionLost(self) -> None: ...

        def writeConnectionLost(self) -> None: ...


@implementer(interfaces.IHalfCloseableProtocol)
class ProxyHeaderProtocol(Protocol):
    """
    Reads the PROXY header of one connection, then gets out of the way of
    C{wrapped}, which was connected to the same transport from the start.
    """

    #: Set by makeConnection.  Twisted types it Optional[ITransport], which
    #: has neither the producer nor the abort methods its TCP transports have.
    transport: Any

    def __init__(self, factory: "ProxyHeaderFactory", wrapped: "_HalfCloseable"):
        self.proxyFactory = factory
        self.wrapped = wrapped
        self._buffer = b""
        self._timer = None
        self._refused = False
        self.header: Optional[ProxyHeader] = None

    def logPrefix(self):
        return self.wrapped.__class__.__name__

    def connectionMade(self):
        factory = self.proxyFactory
        if factory.timeout:
            self._timer = factory.reactor.callLater(factory.timeout, self._timedOut)
        self.wrapped.makeConnection(self.transport)

    def dataReceived(self, data: bytes):
        """
        Until the header is complete: gather it.  (Replaced by the wrapped
        protocol's own C{dataReceived} once it is.)
        """
        if self._refused:
            return
        data = self._buffer + data
        try:
            parsed = parseHeader(data, self.proxyFactory.maxLength)
        except BadHeader as e:
            self._buffer = b""
            self._refuse(str(e))
            return
        if parsed is None:
            self._buffer = data
            return
        self.header, used = parsed
        self._buffer = b""
        self._cancelTimer()
        wrapped = self.wrapped
        if self.header.source is not None:
            # Down to primed's protocol, through a TLS layer if there is one.
            layer: Any  # any layer may wrap another (wrappedProtocol)
            layer = inner = wrapped
            while layer is not None:
                layer.peerAddress = self.header.source
                inner, layer = layer, getattr(layer, "wrappedProtocol", None)
            # Counted against the client from now on (per-source limits).
            attribute = getattr(getattr(inner, "factory", None), "attribute", None)
            if attribute is not None and not attribute(inner, self.header.source):
                self._refused = True  # counted and logged by attribute
                self.transport.unregisterProducer()
                self.transport.loseConnection()
                return
        # Deliberately replaces the method on this instance.
        self.dataReceived = wrapped.dataReceived  # type: ignore[method-assign]
        if len(data) > used:
            wrapped.dataReceived(data[used:])

    def readConnectionLost(self):
        if self._refused:
            return
        if self.header is None:
            self._refuse("closed before a complete PROXY header")
        else:
            self.wrapped.readConnectionLost()

    def writeConnectionLost(self):
        if self.header is not None:
            self.wrapped.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancelTimer()
        self.wrapped.connectionLost(reason)

    def _timedOut(self):
        self._timer = None
        self._refuse(f"no PROXY header within {self.proxyFactory.timeout:g}s")

    def _cancelTimer(self):
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _refuse(self, reason: str) -> None:
        self._refused = True
        self._cancelTimer()
        self.proxyFactory.refused(self.transport.getPeer(), reason)
        # Closed like a finished connection (FIN, not RST): the wrapped
        # protocol is the transport's producer, and a registered producer
        # would be resumed rather than closed.
        self.transport.unregisterProducer()
        self.transport.loseConnection()


class ProxyHeaderFactory(Factory):
    """
    Wraps the factory of a listener (primed's L{primed.tcpfactory.PrimeLineFactory})
    so that every connection it builds must start with a PROXY header.  The
    wrapped factory keeps deciding whether a connection is accepted at all.
    """

    noisy = False
    _log = Logger()

    def __init__(self, wrapped: Factory, reactor, timeout: float = DEFAULT_HEADER_TIMEOUT,
                 maxLength: int = DEFAULT_MAX_HEADER,
                 trusted: Optional[Sequence[Network]] = None):
        """
        @param trusted: the networks a header is accepted from; L{None}
            for any address.
        """
        self.wrapped = wrapped
        self.reactor = reactor
        self.timeout = timeout
        self.maxLength = maxLength
        self.trusted = trusted
        self.refusedCount = 0
        self.untrustedCount = 0
        self._lastLog: Optional[float] = None
        self._untrustedLog = Throttle(reactor)
        #: The service's counters (through a TLS factory if there is one).
        self.counters = getattr(wrapped, "counters", None)

    def doStart(self):
        self.wrapped.doStart()

    def doStop(self):
        self.wrapped.doStop()

    def logPrefix(self):
        return self.wrapped.logPrefix()

    def buildProtocol(self, addr):
        """
        Refuse a peer that is not a trusted balancer (Twisted closes it
        before reading anything); let the wrapped factory decide about the
        others, not counting them against the balancer's address.
        """
        if self.trusted is not None and not isTrusted(addr, self.trusted):
            self.untrustedCount += 1
            if self.counters is not None:
                self.counters.proxyUntrusted += 1
            if self._untrustedLog.ready():
                self._log.warn(
                    "Closed connection from {peer}: not a trusted balancer "
                    "(--proxy-from) ({refused} refused so far)",
                    peer=_describe(addr),
                    refused=self.untrustedCount,
                )
            return None
        # Not an IAddress until the header names the source (sourceKey
        # knows Unattributed).
        inner = self.wrapped.buildProtocol(cast(interfaces.IAddress, Unattributed(addr)))
        if inner is None:
            return None
        # primed's protocols (and TLS around them) are half-closeable.
        return ProxyHeaderProtocol(self, cast("_HalfCloseable", inner))

    def refused(self, peer, reason: str) -> None:
        """
        Count a refused connection; log it unless one was logged in the last
        10 seconds (anyone can open connections: the log must not flood).
        """
        self.refusedCount += 1
        if self.counters is not None:
            self.counters.proxyRefused += 1
        now = self.reactor.seconds()
        if self._lastLog is None or now - self._lastLog >= 10:
            self._lastLog = now
            self._log.warn(
                "Closed connection from {peer} without answering: {reason} "
                "({refused} refused so far)",
                peer=_describe(peer),
                reason=reason,
                refused=self.refusedCount,
            )


def parseNetwork(text: str) -> Network:
    """
    C{ADDRESS} or C{ADDRESS/PREFIX}, IPv4 or IPv6, for C{--proxy-from}; host
    bits set under the prefix are ignored (C{10.0.0.7/8} is C{10.0.0.0/8}).

    @raise ValueError: with a message fit for a usage error.
    """
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(
            f"expected ADDRESS or ADDRESS/PREFIX (IPv4 or IPv6), not {text!r}"
        ) from None


def isTrusted(peer, trusted: Sequence[Network]) -> bool:
    """
    Whether C{peer} may send PROXY headers: its IP address is in one of
    C{trusted}, or it has none (a UNIX socket, whose file permissions
    decide who may connect).  An IPv4-mapped IPv6 address is its IPv4
    address.
    """
    host = getattr(peer, "host", None)
    if not isinstance(host, str):
        return True  # UNIX socket
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return any(address in network for network in trusted)


def _describe(peer) -> str:
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    return f"{host}:{port}" if host is not None else str(peer)


@implementer(interfaces.IStreamServerEndpoint)
class ProxyHeaderEndpoint:
    """
    C{haproxy:ENDPOINT}: listen on C{wrapped}, expecting a PROXY header on
    every connection.
    """

    def __init__(self, wrapped, reactor, timeout: float = DEFAULT_HEADER_TIMEOUT,
                 maxLength: int = DEFAULT_MAX_HEADER,
                 trusted: Optional[Sequence[Network]] = None):
        self.wrapped = wrapped
        self.reactor = reactor
        self.timeout = timeout
        self.maxLength = maxLength
        self.trusted = trusted

    def wrapFactory(self, factory: Factory) -> ProxyHeaderFactory:
        return ProxyHeaderFactory(factory, self.reactor, self.timeout, self.maxLength,
                                  self.trusted)

    def listen(self, factory: interfaces.IProtocolFactory):
        # Twisted's listeners are given Factory instances (logPrefix and all).
        return self.wrapped.listen(self.wrapFactory(cast(Factory, factory)))


PREFIX = "haproxy:"


def serverFromString(reactor, description: str, parse, timeout: float = DEFAULT_HEADER_TIMEOUT,
                     maxLength: int = DEFAULT_MAX_HEADER,
                     trusted: Optional[Sequence[Network]] = None):
    """
    C{parse(reactor, description)} (Twisted's C{serverFromString}), except
    that a C{haproxy:} prefix gives a L{ProxyHeaderEndpoint} around the rest.
    """
    if description.startswith(PREFIX):
        inner = description[len(PREFIX):]
        if not inner:
            raise ValueError("haproxy: needs an endpoint after it")
        return ProxyHeaderEndpoint(parse(reactor, inner), reactor, timeout, maxLength, trusted)
    return parse(reactor, description)
