"""
The TCP connections of one primed service: L{PrimeLineFactory} builds
L{primed.tcp.PrimeLineProtocol}s and keeps the set of those alive.

It is the service's one view of TCP: the connection limits, the shared
settings each protocol reads when it connects, and a stop's two steps,
draining every connection and then cutting what is left.  Listeners of every
kind (plain, TLS, PROXY, systemd) share one factory, so the limits and the
drain cover them all.

Two limits, both applied when a connection is accepted (a connection over
one is closed at once, and established ones are not disturbed):

  - C{--max-connections-per-source}: one source (L{primed.sources}) may not
    hold more; on a C{haproxy:} listener the source is the client the PROXY
    header names, counted once the header is read (L{attribute}).

  - C{--max-connections}, over all sources.  When it is reached, room is
    made by closing the I{oldest connection that has not sent a complete
    request} (a TLS handshake never finished, a PROXY header never sent, a
    line never ended): such connections cost a client nothing to hold and
    are what a flood of silent connections consists of, so they, not the
    next client, give way.  Only when every connection has sent a request
    is the new one refused.
"""

from typing import Any, Optional, cast

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from primed import wire
from primed.counters import Counters
from primed.ratelog import LineBudget, Throttle
from primed.sources import SourceCounts, sourceKey
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
        maxPerSource: int = 0,
        verboseLines: Optional[LineBudget] = None,
    ):
        """
        @param counters: where to count requests and connections; a fresh
            L{Counters} by default.
        @param maxPerSource: connections one source may hold; 0 for no limit.
        @param verboseLines: the budget of C{--verbose} lines, shared with
            UDP; a new one by default.
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
        #: Connections refused over --max-connections or during a stop.
        self.refused = 0
        #: Connections closed to make room under --max-connections.
        self.evicted = 0
        self.sources = SourceCounts(maxPerSource)
        self.verboseLines = LineBudget(reactor) if verboseLines is None else verboseLines
        self.draining = False
        #: Open connections in the order they arrived, those that have sent
        #: a request dropped lazily (L{_makeRoom}).
        self._arrivals: dict[PrimeLineProtocol, None] = {}
        self._refusalLog = Throttle(reactor)
        self._perSourceLog = Throttle(reactor)
        self._evictionLog = Throttle(reactor)
        self._drainWaiters: list[Deferred] = []

    @property
    def maxPerSource(self) -> int:
        return self.sources.limit

    def buildProtocol(self, addr):
        """
        Over a limit, return L{None}: Twisted then closes the new connection
        at once, and the established ones are not disturbed.  Over
        C{--max-connections}, make room first if a connection without a
        request can go.

        @param addr: the peer's address, or a L{primed.sources.Unattributed}
            one (a balancer's, whose clients are counted by L{attribute}).
        """
        if self.draining:
            return self._refuse(addr)
        key = sourceKey(addr)
        if not self.sources.admit(key):
            self._refusedPerSource(addr)
            return None
        if len(self.protocols) >= self.maxConnections and not self._makeRoom():
            self.sources.release(key)
            return self._refuse(addr)
        # Factory.buildProtocol always builds one (typed Optional for subclasses).
        protocol = cast(PrimeLineProtocol, Factory.buildProtocol(self, addr))
        protocol.source = key
        return protocol

    def attribute(self, protocol: PrimeLineProtocol, address) -> bool:
        """
        A PROXY header says that C{protocol}'s connection comes from
        C{address}: count it against that source from now on.

        @return: whether it may stay; if not, the caller closes it (it is
            counted and logged here).
        """
        key = sourceKey(address)
        if protocol.source is not None or protocol not in self.protocols:
            return True  # counted already, or closed meanwhile
        if not self.sources.admit(key):
            self._refusedPerSource(address)
            return False
        protocol.source = key
        return True

    def _refuse(self, addr) -> None:
        self.refused += 1
        if self._refusalLog.ready():
            self._log.warn(
                "Connection limit of {limit} reached: closed new connection "
                "from {peer} ({refused} refused so far)",
                limit=self.maxConnections,
                peer=getattr(addr, "host", addr),
                refused=self.refused,
            )
        return None

    def _refusedPerSource(self, addr) -> None:
        if self._perSourceLog.ready():
            self._log.warn(
                "Per-source connection limit of {limit} reached: closed new "
                "connection from {peer} ({refused} refused so far)",
                limit=self.sources.limit,
                peer=getattr(addr, "host", addr),
                refused=self.sources.refused,
            )

    def _makeRoom(self) -> bool:
        """
        Close the oldest connection that has not sent a complete request.

        @return: whether one was closed.
        """
        arrivals = self._arrivals
        requested = []
        victim = None
        for protocol in arrivals:
            if protocol.hasRequested():
                requested.append(protocol)  # never a candidate again
            else:
                victim = protocol
                break
        for protocol in requested:
            del arrivals[protocol]
        if victim is None:
            return False
        self.evicted += 1
        if self._evictionLog.ready():
            self._log.warn(
                "Connection limit of {limit} reached: closed the oldest connection "
                "without a request, from {peer}, to make room ({evicted} so far)",
                limit=self.maxConnections,
                peer=victim._peer(),
                evicted=self.evicted,
            )
        self._forget(victim)
        victim.transport.abortConnection()
        return True

    def connected(self, protocol: PrimeLineProtocol) -> None:
        self.protocols.add(protocol)
        self._arrivals[protocol] = None
        self.counters.tcpAccepted += 1

    def _forget(self, protocol: PrimeLineProtocol) -> None:
        self.protocols.discard(protocol)
        self._arrivals.pop(protocol, None)
        self.sources.release(protocol.source)
        protocol.source = None

    def disconnected(self, protocol: PrimeLineProtocol) -> None:
        if protocol in self.protocols:
            self._forget(protocol)
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
