"""
The TCP connections of one primed service: L{PrimeLineFactory} builds
L{primed.tcp.PrimeLineProtocol}s and keeps the set of those alive.

It is the service's one view of TCP: the connection limit (a connection over
it is accepted and closed at once, so established ones are not disturbed),
the shared settings each protocol reads when it connects, and a stop's two
steps, draining every connection and then cutting what is left.  Listeners of
every kind (plain, TLS, PROXY, systemd) share one factory, so the limit and
the drain cover them all.
"""

from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from primed import wire
from primed.counters import Counters
from primed.tcp import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_INFLIGHT, PrimeLineProtocol

#: Simultaneous connections; more are closed as soon as they are accepted.
DEFAULT_MAX_CONNECTIONS = 1024


class PrimeLineFactory(Factory):
    """
    Builds L{PrimeLineProtocol}s sharing one L{primed.checker.PrimeChecker},
    and knows every live connection so a stop can drain them.
    """

    protocol = PrimeLineProtocol
    noisy = False
    _log = Logger()

    def __init__(
        self,
        checker,
        reactor,
        maxDigits: int = wire.DEFAULT_MAX_DIGITS,
        maxInflight: int = DEFAULT_MAX_INFLIGHT,
        maxConnections: int = DEFAULT_MAX_CONNECTIONS,
        idleTimeout: float = DEFAULT_IDLE_TIMEOUT,
        verbose: bool = False,
        counters: Optional[Counters] = None,
    ):
        """
        @param counters: where to count requests and connections; a fresh
            L{Counters} by default.
        """
        self.checker = checker
        self.reactor = reactor
        self.maxDigits = maxDigits
        self.maxInflight = maxInflight
        self.maxConnections = maxConnections
        self.idleTimeout = idleTimeout
        self.verbose = verbose
        self.counters = Counters() if counters is None else counters
        self.protocols: set[PrimeLineProtocol] = set()
        self.refused = 0
        self.draining = False
        self._lastRefusalLog: Optional[float] = None
        self._drainWaiters: list[Deferred] = []

    def buildProtocol(self, addr):
        """
        Over the connection limit, return L{None}: Twisted then closes the new
        connection at once, and the established ones are not disturbed.
        """
        if self.draining or len(self.protocols) >= self.maxConnections:
            self.refused += 1
            now = self.reactor.seconds()
            if self._lastRefusalLog is None or now - self._lastRefusalLog >= 10:
                self._lastRefusalLog = now
                self._log.warn(
                    "Connection limit of {limit} reached: closed new connection "
                    "from {peer} ({refused} refused so far)",
                    limit=self.maxConnections,
                    peer=getattr(addr, "host", addr),
                    refused=self.refused,
                )
            return None
        return Factory.buildProtocol(self, addr)

    def connected(self, protocol: PrimeLineProtocol) -> None:
        self.protocols.add(protocol)
        self.counters.tcpAccepted += 1

    def disconnected(self, protocol: PrimeLineProtocol) -> None:
        self.protocols.discard(protocol)
        if not self.protocols:
            waiters, self._drainWaiters = self._drainWaiters, []
            for d in waiters:
                d.callback(None)

    def drain(self) -> Deferred:
        """
        Refuse new connections and ask every open one to finish: answer what
        it received, then close.

        @return: a L{Deferred} that fires when every connection has closed.
        """
        self.draining = True
        d: Deferred[Any] = Deferred()
        if self.protocols:
            self._drainWaiters.append(d)
            for protocol in list(self.protocols):
                protocol.drain()
        else:
            d.callback(None)
        return d

    def abortAll(self) -> int:
        """
        Cut every remaining connection at once.

        @return: how many received requests go unanswered.
        """
        cutOff = 0
        for protocol in list(self.protocols):
            cutOff += protocol.unansweredCount()
            protocol.transport.abortConnection()
        return cutOff
