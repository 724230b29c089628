"""
The primed service: one thread pool, one TCP factory and one UDP protocol
shared by every listener, and the order in which they start and stop.

A stop is graceful: listeners close first, then every request already
received is answered (those in the pool included), then connections close,
then the pool stops.  A deadline bounds the wait; what it cuts off is logged.
"""

import os
import socket
from collections.abc import Sequence
from typing import Any, Optional

from twisted.application import service
from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure

from primed import wire
from primed.checker import DEFAULT_MAX_QUEUED, CheckPool, PrimeChecker
from primed.counters import Counters
from primed.internals import lookup, require
from primed.ratelog import VERBOSE_LINES_PER_SECOND, LineBudget
from primed.sources import SourceRates
from primed.tcp import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_INFLIGHT
from primed.tcpfactory import DEFAULT_MAX_CONNECTIONS, PrimeLineFactory
from primed.tls import DEFAULT_HANDSHAKE_TIMEOUT
from primed.udp import PrimeDatagramProtocol, receiveBufferSize

# Twisted's private names used here (L{primed.internals}), set by the
# endpoints' __init__: looked up on endpoints made for the purpose.  No
# public path gives them: without them the features are refused.
_binding = [
    lookup("twisted.internet.endpoints", f"TCP4ServerEndpoint.{name}", None,
           TCP4ServerEndpoint(None, 0))
    for name in ("_interface", "_port", "_backlog")
]
_sslContextFactory = lookup(
    "twisted.internet.endpoints", "SSL4ServerEndpoint._sslContextFactory", None,
    SSL4ServerEndpoint(None, 0, None))
_sddaemon = lookup("twisted.internet.endpoints", "_SystemdParser._sddaemon", None)

#: Seconds a stop waits for pending answers before cutting connections.
DEFAULT_DRAIN_TIMEOUT = 10.0


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
        # str.isdigit() alone takes "\u0663" (port 3) and "\u00b2" (no port).
        if not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected [HOST:]PORT with a port from 0 to 65535, not {text!r}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            if not isIPv6Address(host):
                raise ValueError(f"expected [IPV6]:PORT, not {text!r}")
        elif "[" in host or "]" in host or ":" in host:
            raise ValueError(f"expected [HOST:]PORT, an IPv6 address in brackets, not {text!r}")
        elif host and not isIPAddress(host):
            # Twisted's listenUDP binds addresses, not names: refuse one now
            # rather than fail to listen.
            raise ValueError(f"expected an IP address as HOST, not {host!r}")
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
        try:
            sock.bind((host, port))
        except OSError as e:
            raise CannotListenError(host, port, e) from e
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
    require([_sddaemon], "A UDP socket inherited from systemd (--udp systemd:NAME)")
    from twisted.internet.endpoints import _SystemdParser

    try:
        return _SystemdParser._sddaemon.inheritedNamedDescriptors()[name]
    except KeyError:
        raise ValueError(f"no socket named {name!r} was inherited from systemd") from None


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
        tcpEndpoints: Sequence[tuple[str, object]],
        udpAddresses: Sequence[UDPAddress],
        threads: int,
        maxDigits: int = wire.DEFAULT_MAX_DIGITS,
        maxQueued: int = DEFAULT_MAX_QUEUED,
        maxQueuedPerSource: int = 0,
        maxInflight: int = DEFAULT_MAX_INFLIGHT,
        maxConnections: int = DEFAULT_MAX_CONNECTIONS,
        idleTimeout: float = DEFAULT_IDLE_TIMEOUT,
        drainTimeout: float = DEFAULT_DRAIN_TIMEOUT,
        reusePort: bool = False,
        verbose: bool = False,
        threadpool=None,
        maxPerSource: int = 0,
        handshakeTimeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        handshakesPerSource: float = 0,
        verboseRate: int = VERBOSE_LINES_PER_SECOND,
        proofPool=None,
        proveMaxDigits: Optional[int] = None,
    ):
        """
        @param tcpEndpoints: C{(description, endpoint)} pairs, the endpoint
            providing L{IStreamServerEndpoint}.
        @param threadpool: the pool to check big numbers in; by default a new
            L{ThreadPool} of C{threads} threads, started and stopped with the
            service.
        @param proofPool: with C{--prove}, the L{primed.proofpool.ProofPool}
            probable primes are proved in, started and stopped with the
            service; C{proveMaxDigits} bounds what it is given.
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
            threadpool = CheckPool(threads, threads, name="primed-check")
        self.threadpool = threadpool
        self.proofPool = proofPool
        if proofPool is None:
            self.checker = PrimeChecker(
                reactor, threadpool, maxQueued=maxQueued, maxQueuedPerSource=maxQueuedPerSource
            )
        else:
            from primed.proving import DEFAULT_PROVE_MAX_DIGITS, ProvingChecker

            self.checker = ProvingChecker(
                reactor, threadpool, proofPool, maxQueued=maxQueued,
                maxQueuedPerSource=maxQueuedPerSource,
                maxDigits=proveMaxDigits or DEFAULT_PROVE_MAX_DIGITS,
            )
        #: What every protocol counts; L{primed.metrics} reads it.
        self.counters = Counters()
        #: --verbose's lines, TCP and UDP together.
        self.verboseLines = LineBudget(reactor, verboseRate)
        self.handshakeTimeout = handshakeTimeout
        #: New TLS connections per source and second, over every ssl: listener.
        self.handshakeRates = SourceRates(handshakesPerSource, reactor)
        self.factory = PrimeLineFactory(
            self.checker,
            reactor,
            maxDigits=maxDigits,
            maxInflight=maxInflight,
            maxConnections=maxConnections,
            idleTimeout=idleTimeout,
            verbose=verbose,
            counters=self.counters,
            maxPerSource=maxPerSource,
            verboseLines=self.verboseLines,
        )
        self.verbose = verbose
        #: One per UDP port: a protocol is bound to a single transport.
        self.datagramProtocols: list[PrimeDatagramProtocol] = []
        self.tcpPorts: list = []
        self.udpPorts: list = []
        self._served: list[tuple[str, str]] = []
        self._keysChecked: set[str] = set()
        self.listening: defer.Deferred[Any] = defer.Deferred()
        self._stopping: Optional[defer.Deferred] = None
        self._deadline = None

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
                _noDelay(port)
                inner = getattr(endpoint, "wrapped", endpoint)  # haproxy:ssl: is TLS too
                kind = "TLS" if _tlsContext(inner) is not None else "TCP"
                where = self._describe(port.getHost(), description)
                if inner is not endpoint:  # haproxy:
                    trusted = getattr(endpoint, "trusted", None)
                    where += (" (expects a PROXY header from "
                              + (", ".join(map(str, trusted)) if trusted
                                 else "any address") + ")")
                served.append((kind, where))
            for address in self.udpAddresses:
                port = self._listenUDP(address)
                self.udpPorts.append(port)
                served.append(("UDP", self._describe(port.getHost(), repr(address))))
        except (CannotListenError, OSError, ValueError) as e:
            self._stopListening()
            if isinstance(e, CannotListenError):  # its own text ends in "."
                where = e.port if e.interface is None else f"{e.interface}:{e.port}"
                raise SystemExit(f"primed: cannot listen on {where}: {e.socketError}") from e
            raise SystemExit(f"primed: cannot listen: {e}") from e
        self._served = served

    def startService(self):
        if not self.tcpPorts and not self.udpPorts:
            self.privilegedStartService()
        service.Service.startService(self)
        if self.ownsPool:
            try:
                self.threadpool.start()
            except RuntimeError as e:
                # More threads than the process may start (TasksMax=, an
                # address space limit): as for a port, one line and exit 1.
                # The workers already started are daemon threads, and the
                # pool cannot be stopped cleanly after a failed start.
                self._stopListening()
                raise SystemExit(f"primed: cannot start {self.threads} check threads: {e}") from e
        if self.proofPool is not None:
            self._startProving()
        for transport, address in self._served:
            self._log.info("Listening for {transport} on {address}",
                           transport=transport, address=address)
        if any(hasattr(endpoint, "wrapFactory") and getattr(endpoint, "trusted", None) is None
               for _, endpoint in self.tcpEndpoints):
            self._log.warn(
                "PROXY headers are accepted from any address: anyone who reaches a "
                "haproxy: listener can claim any client address; name the balancers "
                "with --proxy-from ADDRESS[/PREFIX]")
        self._log.info(
            "Limits: {maxDigits} digits, {threads} check threads, "
            "{maxQueued} pool checks queued ({perSource} per source), "
            "{maxInflight} replies in flight per "
            "connection, {maxConnections} connections, {connectionsPerSource} per source, "
            "idle timeout {idle}s, handshake timeout {handshake}s, "
            "drain timeout {drain}s",
            maxDigits=self.maxDigits,
            threads=self.threads,
            maxQueued=self.checker.maxQueued,
            perSource=self.checker.maxQueuedPerSource,
            maxInflight=self.factory.maxInflight,
            maxConnections=self.factory.maxConnections,
            connectionsPerSource=self.factory.maxPerSource or "no limit",
            handshake=self.handshakeTimeout,
            idle=self.factory.idleTimeout,
            drain=self.drainTimeout,
        )
        self.listening.callback(list(self._served))

    def _startProving(self) -> None:
        pool = self.proofPool
        self._log.info(
            "Proving: probable primes up to {digits} digits are proved in {workers} "
            "worker process(es), {timeout}s each at most, {queued} waiting at most",
            digits=self.checker.proveMaxDigits, workers=pool.size, timeout=pool.timeout,  # type: ignore[attr-defined]  # set by the proof pool
            queued=pool.maxQueued,
        )

        def ready(name):
            if name.startswith("FLINT"):
                self._log.warn(
                    "Proving with {prover}: cypari2 is not installed (pip install "
                    "'primed[prove]' for PARI, 2-3 times faster from 1000 bits)",
                    prover=name,
                )
            else:
                self._log.info("Proving with {prover}", prover=name)

        pool.start().addCallback(ready)

    def _stopListening(self) -> None:
        """
        Close every listener bound so far: a start that fails leaves none.
        """
        for port in self.tcpPorts + self.udpPorts:
            port.stopListening()
        self.tcpPorts, self.udpPorts = [], []

    def _listenTCP(self, description: str, endpoint):
        factory: Any = self.factory  # or the TLS factory wrapping it
        proxyEndpoint = None
        if hasattr(endpoint, "wrapFactory"):  # haproxy:ENDPOINT (primed.proxy)
            proxyEndpoint, endpoint = endpoint, endpoint.wrapped
        tlsContext = _tlsContext(endpoint)
        if tlsContext is not None:
            _buildTLSContext(description, tlsContext)
            # Twisted's ssl: endpoint would wrap the factory in a TLS layer
            # that drops the answers owed to a client that half-closes.
            from primed.tls import HalfCloseableTLSFactory, requireHalfClose

            requireHalfClose()
            factory = HalfCloseableTLSFactory(
                tlsContext, self.factory, self.reactor, self.counters,
                self.handshakeTimeout, self.handshakeRates,
            )
            self._warnReadableKey(description)
        if proxyEndpoint is not None:
            # The PROXY header comes first, in clear, before any TLS.
            factory = proxyEndpoint.wrapFactory(factory)
        if self.reusePort:
            host, port, backlog = _tcpBinding(description, endpoint)
            sock = _reusePortSocket(socket.SOCK_STREAM, host, port, backlog)
            try:
                return self.reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
            finally:
                sock.close()
        if tlsContext is not None:
            host, port, backlog = _tcpBinding(description, endpoint)
            return self.reactor.listenTCP(port, factory, backlog, host)
        result: list[Any] = []
        endpoint.listen(factory).addBoth(result.append)
        if not result:
            raise ValueError(f"{description} did not listen at once")
        if isinstance(result[0], Failure):
            reason = result[0].value
            raise CannotListenError(None, description, getattr(reason, "socketError", reason))
        return result[0]

    def _warnReadableKey(self, description: str) -> None:
        """
        One warning per private key file that every user may read: a key
        others can read is no longer private (the TLS documentation says
        so; Twisted accepts it silently).
        """
        from primed.tls import privateKeyPath, readableByOthers

        path = os.path.abspath(privateKeyPath(description))
        if path in self._keysChecked:
            return
        self._keysChecked.add(path)
        if readableByOthers(path):
            self._log.warn(
                "The private key file {path} is readable by every user: run "
                "'chmod o-r {path}' (or 'chmod 640 {path}', group-readable)",
                path=path,
            )

    def _listenUDP(self, address: UDPAddress):
        protocol = PrimeDatagramProtocol(
            self.checker, self.reactor, maxDigits=self.maxDigits, verbose=self.verbose,
            counters=self.counters,
        )
        protocol.verboseLines = self.verboseLines  # type: ignore[assignment]  # None or a budget
        self.datagramProtocols.append(protocol)
        # A datagram the kernel cuts is never checked: see receiveBufferSize.
        maxPacketSize = receiveBufferSize(self.maxDigits)
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
        # Not the pool's idleness: a check whose connection is gone is owed
        # to nobody, and _closed leaves it to its daemon thread.
        drained = defer.gatherResults(
            [defer.maybeDeferred(port.stopListening) for port in self.tcpPorts]
            + [protocol.drain() for protocol in self.datagramProtocols]
            + [self.factory.drain()],
            consumeErrors=True,
        )
        done: defer.Deferred[Any] = defer.Deferred()
        timeout = self.reactor.callLater(
            self.drainTimeout, self._cutOff, done, f"Drain timeout of {self.drainTimeout}s reached"
        )
        drained.addBoth(lambda _: done.called or done.callback(None))  # type: ignore[call-overload,func-returns-value]  # result unused
        done.addCallback(self._closed, timeout)
        self._stopping = done
        self._deadline = timeout
        return done

    @property
    def stopping(self) -> bool:
        """
        Whether a stop has begun (it may still be draining).
        """
        return self._stopping is not None

    def endDrain(self) -> None:
        """
        End a stop's drain now, as its deadline would (a second stop
        signal); nothing happens outside a drain.
        """
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
            self._cutOff(self._stopping, "Drain ended by a second stop signal")

    def _cutOff(self, done: defer.Deferred, why: str) -> None:
        connections = len(self.factory.protocols)
        requests = self.factory.abortAll() + sum(
            protocol.inflight for protocol in self.datagramProtocols
        )
        self.counters.drainUnanswered += requests
        self._log.warn(
            "{why}: cut {connections} connection(s), "
            "{requests} received request(s) left unanswered",
            why=why,
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
        # Checks still waiting for a thread have nobody left to answer (the
        # drain deadline passed, or their connection is gone): skip them, or
        # ThreadPool.stop would run every one of them before joining.
        self.checker.abandon()
        self.verboseLines.stop()
        if self.ownsPool:
            # With no check left the workers are idle and join at once;
            # otherwise a running check may take minutes, and nobody waits
            # for its answer: leave it to its daemon thread.
            self.threadpool.stop(wait=not self.checker.queued)
        if self.proofPool is not None:
            # Proofs still running are owed to nobody now: the workers are
            # killed, and the stop waits until none is left.
            return self.proofPool.stop().addCallback(lambda _: self._log.info("Stopped"))
        self._log.info("Stopped")


def _noDelay(port) -> None:
    """
    Turn Nagle's algorithm off for every connection C{port} accepts, as
    asyncio, uvloop and most servers of request-reply protocols do: with it
    on, a reply written while the previous one is still unacknowledged
    waits for that acknowledgement, which a client waiting for both replies
    delays by up to 40 ms (delayed ACK).  Twisted leaves it on.  Set on the
    listening socket, which Linux's accepted sockets inherit it from: no
    system call per connection, and nothing tried on a socket that is not
    TCP (Twisted's C{setTcpNoDelay} logs an error on a UNIX socket).
    """
    sock = getattr(port, "socket", None)
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _tcpBinding(description: str, endpoint) -> tuple[str, int, int]:
    """
    Host, port and backlog of a C{tcp:}, C{tcp6:} or C{ssl:} endpoint, to
    bind a socket of our own.  Twisted's endpoints keep these private.
    """
    require(_binding, "--reuseport and ssl: listeners")
    try:
        return endpoint._interface, endpoint._port, endpoint._backlog
    except AttributeError:
        raise ValueError(
            f"--reuseport works with tcp:, tcp6: and ssl: endpoints, not {description!r}"
        ) from None


def _buildTLSContext(description: str, tlsContext) -> None:
    """
    Build an C{ssl:} listener's OpenSSL context now, not at its first
    connection.  Its callbacks (ALPN, which Twisted always sets) are cffi
    closures, which need memory both writable and executable: where the
    process may not map any (systemd's C{MemoryDenyWriteExecute=yes}),
    every connection would fail with tracebacks; this stops the start with
    one line instead.
    """
    try:
        context = tlsContext.getContext()
    except MemoryError:
        raise CannotListenError(
            None, description,
            "TLS needs memory both writable and executable (pyOpenSSL's callbacks), "
            "which this process may not map; under systemd, set MemoryDenyWriteExecute=no"
        ) from None
    # The context is Twisted's, cached by its options.
    from primed.tls import restrictContext

    restrictContext(context)


def _tlsContext(endpoint):
    """
    The TLS context factory of an C{ssl:} endpoint, or L{None}.
    """
    if isinstance(endpoint, SSL4ServerEndpoint):
        require([_sslContextFactory], "An ssl: listener")
        return endpoint._sslContextFactory
    return None
