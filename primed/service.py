"""
The primed service: one thread pool, one TCP factory and one UDP protocol
shared by every listener, and the order in which they start and stop.

A stop is graceful: listeners close first, then every request already
received is answered (those in the pool included), then connections close,
then the pool stops.  A deadline bounds the wait; what it cuts off is logged.
"""

import os
import socket
from typing import List, Optional, Sequence, Tuple

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from primed import wire
from primed.checker import DEFAULT_MAX_QUEUED, PrimeChecker
from primed.tcp import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_INFLIGHT,
    PrimeLineFactory,
)
from primed.udp import PrimeDatagramProtocol

#: Seconds a stop waits for pending answers before cutting connections.
DEFAULT_DRAIN_TIMEOUT = 10.0

#: Largest UDP payload; anything longer is truncated by the kernel and then
#: answered E, as any over-long request is.
_MAX_DATAGRAM = 65507


class UDPAddress:
    """
    Where to serve UDP: a host and port to bind, or the name of a datagram
    socket inherited from systemd (C{systemd:name=NAME}).
    """

    def __init__(self, host: str = "", port: int = 0, systemdName: Optional[str] = None):
        self.host = host
        self.port = port
        self.systemdName = systemdName

    @classmethod
    def fromString(cls, text: str) -> "UDPAddress":
        """
        Parse C{[HOST:]PORT}, C{[IPV6]:PORT} or C{systemd:name=NAME}.

        @raise ValueError: with a message fit for a usage error.
        """
        if text.startswith("systemd:"):
            key, _, name = text[len("systemd:"):].partition("=")
            if key != "name" or not name:
                raise ValueError(f"expected systemd:name=NAME, not {text!r}")
            return cls(systemdName=name)
        host, _, port = text.rpartition(":")
        host = host.strip("[]")
        if not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected [HOST:]PORT with a port from 0 to 65535, not {text!r}")
        return cls(host, int(port))

    def __repr__(self) -> str:
        if self.systemdName is not None:
            return f"systemd:name={self.systemdName}"
        return f"{self.host}:{self.port}"


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _reusePortSocket(kind: int, host: str, port: int, backlog: int = 50) -> socket.socket:
    """
    A bound socket that other primed processes may bind too: the kernel then
    spreads connections and datagrams over them, one core each.
    """
    sock = socket.socket(_family(host), kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _inheritedDescriptor(name: str) -> int:
    """
    The descriptor systemd passed us under C{name}.  Twisted reads (and clears)
    LISTEN_FDS once, when its endpoints module is imported; ask the same
    record so TCP and UDP agree on what was inherited.
    """
    from twisted.internet.endpoints import _SystemdParser

    try:
        return _SystemdParser._sddaemon.inheritedNamedDescriptors()[name]
    except KeyError:
        raise ValueError(f"no socket named {name!r} was inherited from systemd")


class PrimedService(service.Service):
    """
    Serve primality checks on the given TCP endpoints and UDP addresses.

    @ivar listening: a L{Deferred} fired, once every listener is bound, with
        the list of C{(transport, address)} pairs now served, so readiness can
        be announced.
    """

    _log = Logger()

    def __init__(
        self,
        reactor,
        tcpEndpoints: Sequence[Tuple[str, object]],
        udpAddresses: Sequence[UDPAddress],
        threads: int,
        maxDigits: int = wire.DEFAULT_MAX_DIGITS,
        maxQueued: int = DEFAULT_MAX_QUEUED,
        maxInflight: int = DEFAULT_MAX_INFLIGHT,
        maxConnections: int = DEFAULT_MAX_CONNECTIONS,
        idleTimeout: float = DEFAULT_IDLE_TIMEOUT,
        drainTimeout: float = DEFAULT_DRAIN_TIMEOUT,
        reusePort: bool = False,
        verbose: bool = False,
        threadpool=None,
    ):
        """
        @param tcpEndpoints: C{(description, endpoint)} pairs, the endpoint
            providing L{IStreamServerEndpoint}.
        @param threadpool: the pool to check big numbers in; by default a new
            L{ThreadPool} of C{threads} threads, started and stopped with the
            service.
        """
        self.reactor = reactor
        self.tcpEndpoints = list(tcpEndpoints)
        self.udpAddresses = list(udpAddresses)
        self.threads = threads
        self.maxDigits = maxDigits
        self.drainTimeout = drainTimeout
        self.reusePort = reusePort
        self.ownsPool = threadpool is None
        if threadpool is None:
            threadpool = ThreadPool(threads, threads, name="primed-check")
        self.threadpool = threadpool
        self.checker = PrimeChecker(reactor, threadpool, maxQueued=maxQueued)
        self.factory = PrimeLineFactory(
            self.checker,
            reactor,
            maxDigits=maxDigits,
            maxInflight=maxInflight,
            maxConnections=maxConnections,
            idleTimeout=idleTimeout,
            verbose=verbose,
        )
        self.verbose = verbose
        #: One per UDP port: a protocol is bound to a single transport.
        self.datagramProtocols: List[PrimeDatagramProtocol] = []
        self.tcpPorts: List = []
        self.udpPorts: List = []
        self._served: List[Tuple[str, str]] = []
        self.listening = defer.Deferred()
        self._stopping: Optional[defer.Deferred] = None

    # Starting.

    def privilegedStartService(self):
        """
        Bind every listener before privileges are dropped, so low ports work
        with C{twistd --uid}.  A listener that cannot bind stops the daemon
        with a one-line reason, not a traceback.
        """
        service.Service.privilegedStartService(self)
        served = []
        try:
            for description, endpoint in self.tcpEndpoints:
                port = self._listenTCP(description, endpoint)
                self.tcpPorts.append(port)
                served.append(("TCP", self._describe(port.getHost(), description)))
            for address in self.udpAddresses:
                port = self._listenUDP(address)
                self.udpPorts.append(port)
                served.append(("UDP", self._describe(port.getHost(), repr(address))))
        except (CannotListenError, OSError, ValueError) as e:
            for port in self.tcpPorts + self.udpPorts:
                port.stopListening()
            self.tcpPorts, self.udpPorts = [], []
            raise SystemExit(f"primed: cannot listen: {e}")
        self._served = served

    def startService(self):
        if not self.tcpPorts and not self.udpPorts:
            self.privilegedStartService()
        service.Service.startService(self)
        if self.ownsPool:
            self.threadpool.start()
        for transport, address in self._served:
            self._log.info("Listening for {transport} on {address}",
                           transport=transport, address=address)
        self._log.info(
            "Limits: {maxDigits} digits, {threads} check threads, "
            "{maxQueued} pool checks queued, {maxInflight} replies in flight per "
            "connection, {maxConnections} connections, idle timeout {idle}s, "
            "drain timeout {drain}s",
            maxDigits=self.maxDigits,
            threads=self.threads,
            maxQueued=self.checker.maxQueued,
            maxInflight=self.factory.maxInflight,
            maxConnections=self.factory.maxConnections,
            idle=self.factory.idleTimeout,
            drain=self.drainTimeout,
        )
        self.listening.callback(list(self._served))

    def _listenTCP(self, description: str, endpoint):
        if self.reusePort:
            factory = self.factory
            if hasattr(endpoint, "wrapFactory"):  # haproxy: (primed.proxy)
                factory = endpoint.wrapFactory(factory)
                endpoint = endpoint.wrapped
            host, port, backlog = _tcpBinding(description, endpoint)
            sock = _reusePortSocket(socket.SOCK_STREAM, host, port, backlog)
            try:
                return self.reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
            finally:
                sock.close()
        result = []
        endpoint.listen(self.factory).addBoth(result.append)
        if not result:
            raise ValueError(f"{description} did not listen at once")
        if isinstance(result[0], Failure):
            raise CannotListenError(None, description, result[0].value)
        return result[0]

    def _listenUDP(self, address: UDPAddress):
        protocol = PrimeDatagramProtocol(
            self.checker, self.reactor, maxDigits=self.maxDigits, verbose=self.verbose
        )
        self.datagramProtocols.append(protocol)
        # Room for the longest line and its CRLF: anything the kernel has to
        # truncate is longer than that, and is answered E.
        maxPacketSize = min(_MAX_DATAGRAM, max(8192, wire.maxLineLength(self.maxDigits) + 2))
        if address.systemdName is not None:
            fd = _inheritedDescriptor(address.systemdName)
            probe = socket.socket(fileno=fd)
            family = probe.family
            # The reactor needs it non-blocking; systemd's sockets are, but
            # systemd-socket-activate's are not.
            probe.setblocking(False)
            probe.detach()  # the descriptor stays open, for the reactor
            return self.reactor.adoptDatagramPort(
                fd, family, protocol, maxPacketSize
            )
        if self.reusePort:
            sock = _reusePortSocket(socket.SOCK_DGRAM, address.host, address.port)
            try:
                return self.reactor.adoptDatagramPort(
                    sock.fileno(), sock.family, protocol, maxPacketSize
                )
            finally:
                sock.close()
        return self.reactor.listenUDP(
            address.port, protocol, address.host, maxPacketSize
        )

    @staticmethod
    def _describe(host, fallback: str) -> str:
        if hasattr(host, "port"):
            return f"{host.host}:{host.port}"
        name = getattr(host, "name", None)
        if isinstance(name, bytes):
            name = os.fsdecode(name)  # unix: sockets
        return name or fallback

    # Stopping.

    def stopService(self):
        """
        Stop listening, answer what was received, close, stop the pool.

        @return: a L{Deferred} that fires when all of that is done; twistd
            waits for it before the reactor stops.
        """
        if self._stopping is not None:
            return self._stopping
        service.Service.stopService(self)
        self._log.info("Stopping: answering the requests already received")
        for port in self.udpPorts:
            # No new datagrams; replies can still leave.  (Fake ports in
            # tests may not read at all.)
            getattr(port, "stopReading", lambda: None)()
        drained = defer.gatherResults(
            [defer.maybeDeferred(port.stopListening) for port in self.tcpPorts]
            + [protocol.drain() for protocol in self.datagramProtocols]
            + [self.factory.drain(), self.checker.whenIdle()],
            consumeErrors=True,
        )
        done = defer.Deferred()
        timeout = self.reactor.callLater(self.drainTimeout, self._cutOff, done)
        drained.addBoth(lambda _: done.called or done.callback(None))
        done.addCallback(self._closed, timeout)
        self._stopping = done
        return done

    def _cutOff(self, done: defer.Deferred) -> None:
        connections = len(self.factory.protocols)
        requests = self.factory.abortAll() + sum(
            protocol.inflight for protocol in self.datagramProtocols
        )
        self._log.warn(
            "Drain timeout of {timeout}s reached: cut {connections} connection(s), "
            "{requests} received request(s) left unanswered",
            timeout=self.drainTimeout,
            connections=connections,
            requests=requests,
        )
        done.callback(None)

    def _closed(self, result, timeout) -> None:
        if timeout.active():
            timeout.cancel()
        for port in self.udpPorts:
            port.stopListening()
        self.tcpPorts, self.udpPorts = [], []
        # Checks still waiting for a thread have nobody left to answer
        # (the drain deadline passed): skip them, or ThreadPool.stop would
        # run every one of them before joining.
        self.checker.abandon()
        if self.ownsPool:
            # Joins the workers: at most one running check each, all bounded
            # by --max-digits.
            self.threadpool.stop()
        self._log.info("Stopped")


def _tcpBinding(description: str, endpoint) -> Tuple[str, int, int]:
    """
    Host, port and backlog of a C{tcp:} or C{tcp6:} endpoint, to bind a
    reusable socket of our own.  Twisted's endpoints keep these private.
    """
    try:
        return endpoint._interface, endpoint._port, endpoint._backlog
    except AttributeError:
        raise ValueError(f"--reuseport works with tcp: and tcp6: endpoints, not {description!r}")
