"""
A client for primed: the Twisted APIs a program imports to ask primed over
TCP, TLS and UDP, all importable from here.  The C{primed-client} command
is built on them in L{primed.client.cmd}.

Over TCP one connection carries any number of requests: primed answers them
in order, so L{PrimedClientProtocol} (L{primed.client.tcp}) just keeps a
queue of Deferreds and fires the oldest with each reply; L{PrimedClient},
here, makes a lost connection again and resends what it had not answered.
Over UDP a reply carries nothing that names its request, so
L{PrimedUDPClient} (L{primed.client.udp}) gives each request a connected
socket of its own and matches replies by the port they arrive at.
"""

import collections
from typing import Any

from twisted.internet import defer, endpoints
from twisted.python.failure import Failure

from primed.client.base import (
    DEFAULT_HOST,
    DEFAULT_RETRIES,
    DEFAULT_TCP_PORT,
    DEFAULT_TCP_TIMEOUT,
    DEFAULT_UDP_PORT,
    DEFAULT_UDP_TIMEOUT,
    PrimedClosed,
    PrimedConnectionLost,
    PrimedError,
    PrimedProtocolError,
    PrimedRefused,
    PrimedRequestTooLong,
    PrimedTimeout,
    PrimedTLSError,
    _request,
    describeError,
    plural,
)
from primed.client.tcp import PrimedClientProtocol, connect, connectEndpoint
from primed.client.udp import PrimedUDPClient

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_RETRIES",
    "DEFAULT_TCP_PORT",
    "DEFAULT_TCP_TIMEOUT",
    "DEFAULT_UDP_PORT",
    "DEFAULT_UDP_TIMEOUT",
    "PrimedClient",
    "PrimedClientProtocol",
    "PrimedClosed",
    "PrimedConnectionLost",
    "PrimedError",
    "PrimedProtocolError",
    "PrimedRefused",
    "PrimedRequestTooLong",
    "PrimedTimeout",
    "PrimedTLSError",
    "PrimedUDPClient",
    "connect",
    "connectEndpoint",
]


def _reconnectDelay(attempt):
    """
    Seconds before reconnection attempt C{attempt} (1, 2, ...): the first at
    once (through a load balancer it reaches a live backend), then 0.5, 1,
    2, 4, and 5 from then on, so a daemon restarting on the same host has
    time to come back without the client hammering it.
    """
    if attempt <= 1:
        return 0.0
    return min(5.0, 0.25 * 2 ** (attempt - 1))


class _Ask:
    """
    One request of a L{PrimedClient}: its line, its receiver, and the
    connection it was last sent on.
    """

    __slots__ = ("client", "line", "receiver", "protocol")

    def __init__(self, client, line, receiver):
        self.client = client
        self.line = line
        self.receiver = receiver
        self.protocol = None

    def callback(self, verdict):
        self.client._answered(self, verdict)

    def errback(self, reason):
        self.client._failed(self, reason)


class PrimedClient:
    """
    Ask primed over a stream connection (C{tcp:}, C{tls:}, C{unix:}) that is
    made again when it is lost, resending every request not yet answered.

    A prime check is idempotent, so resending is safe; and primed answers a
    connection's requests in order, so the requests a lost connection had
    not answered are exactly those after its last answer.  Each receiver is
    answered once, in request order.

    A connection lost owing answers, or silent for L{timeout} while owing
    them, is replaced: at once, then after L{_reconnectDelay}; up to
    L{retries} attempts in a row that get no answer, after which every
    unanswered request fails with the reason.  Any answer resets the count,
    so a long run survives any number of isolated losses (a rolling
    restart).  A connection closed owing nothing (primed's idle timeout) is
    replaced when the next request comes, for free.  What no new
    connection would change fails at once: a certificate refused
    (L{PrimedTLSError}), a server that is not primed (L{PrimedProtocolError}),
    and, until the server has answered once, silence (a timeout, or a close
    long after the requests: L{_silentFromTheStart}).

    @ivar protocol: the connection in use, or L{None} between connections.
    @ivar reconnections: connections made after the first, for the curious.
    """

    def __init__(self, reactor, endpoint, timeout=DEFAULT_TCP_TIMEOUT, retries=DEFAULT_RETRIES):
        """
        @param endpoint: an L{IStreamClientEndpoint}, or a client endpoint
            string for L{endpoints.clientFromString}.
        @param timeout: seconds to connect (and shake hands), and the
            longest silence while answers are owed.
        """
        if isinstance(endpoint, str):
            endpoint = endpoints.clientFromString(reactor, endpoint)
        self._reactor = reactor
        self._endpoint = endpoint
        self.timeout = timeout
        self.retries = retries
        self.protocol = None
        self.reconnections = 0
        self._unanswered: collections.deque[Any] = collections.deque()  # _Asks, in request order
        self._connecting = None  # a connection attempt or its delayed call
        self._attempts = 0  # reconnection attempts since the last answer
        self._firstLoss = None  # what started them
        self._closed = False
        self._everConnected = False
        self._everAnswered = False

    def connect(self) -> defer.Deferred:
        """
        Make the first connection now, without retrying: a server that is
        not there at all is reported at once.

        @return: a Deferred firing with this client once connected.
        """
        connecting = self._connectOnce()
        self._connecting = connecting
        return connecting.addCallbacks(self._connected, self._firstFailed).addCallback(
            lambda _: self
        )

    def _firstFailed(self, reason):
        # Not retried; but the attempt is over: requests made during it fail
        # with it, and a later request makes a connection of its own.
        self._connecting = None
        self._fail(reason)
        return reason

    def check(self, number) -> defer.Deferred:
        """
        Ask whether C{number} (an int, or the text of one) is prime.

        @return: a Deferred firing with a L{Verdict}, after those of every
            earlier request; or failing with a L{PrimedError} (or the
            connection error) once the retries are spent.
        @raise ValueError: if C{number}'s text spans several lines.
        """
        d: defer.Deferred[Any] = defer.Deferred()
        self.request(number, d)
        return d

    def request(self, number, receiver):
        """
        L{check} with a receiver (see L{PrimedClientProtocol.request}).
        """
        ask = _Ask(self, _request(number), receiver)
        if self._closed:
            receiver.errback(Failure(PrimedConnectionLost("the client was closed")))
            return
        self._unanswered.append(ask)
        protocol = self.protocol
        if protocol is not None and protocol.lost:
            # Closed while owing nothing: every request sent on it has its
            # answer.
            self.protocol = protocol = None
        if protocol is not None:
            ask.protocol = protocol
            protocol.requestLine(ask.line, ask)
        elif self._connecting is None:
            self._reconnect()
        # Otherwise it is sent once the connection under way is made.

    def close(self):
        """
        Close the connection and stop reconnecting; unanswered requests
        fail.
        """
        self._closed = True
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
        protocol, self.protocol = self.protocol, None
        if protocol is not None and not protocol.lost:
            protocol.transport.loseConnection()
        self._fail(Failure(PrimedConnectionLost("the client was closed")))

    # Connections.

    def _connectOnce(self) -> defer.Deferred:
        connecting = connectEndpoint(self._endpoint, self.timeout, self._reactor)
        # Endpoints with no timeout of their own (unix:, the TLS handshake)
        # get one too.
        return connecting.addTimeout(self.timeout + 1, self._reactor)

    def _reconnect(self):
        connecting = self._connectOnce()
        self._connecting = connecting
        connecting.addCallbacks(self._connected, self._connectFailed)

    def _connected(self, protocol):
        self._connecting = None
        if self._closed:
            protocol.transport.loseConnection()
            return
        if self._everConnected:
            self.reconnections += 1
        self._everConnected = True
        self.protocol = protocol
        for ask in self._unanswered:
            ask.protocol = protocol
            protocol.requestLine(ask.line, ask)

    def _connectFailed(self, reason):
        self._connecting = None
        if reason.check(defer.CancelledError) and self._closed:
            return
        self._lost(reason)

    def _lost(self, reason):
        """
        The connection is gone, or could not be made: try again, or give up.
        """
        if self._closed:
            return
        if self._firstLoss is None:
            self._firstLoss = reason
        if (
            reason.check(PrimedTLSError, PrimedProtocolError)
            or self._attempts >= self.retries
            or self._silentFromTheStart(reason)
        ):
            self._giveUp(reason)
            return
        self._attempts += 1
        self._connecting = self._reactor.callLater(
            _reconnectDelay(self._attempts), self._reconnect
        )

    def _silentFromTheStart(self, reason) -> bool:
        """
        Whether C{reason} is silence from a server that has answered
        nothing yet: a timeout after less than a TLS record header
        (its C{tlsHint}), or a close that came only after one.  Such
        a server is not known to be primed (a TLS server, an HTTP server
        waiting for a request), and trying again would only wait as long
        again; a close right after the requests (a connection limit, a
        balancer without a backend) is retried as any loss is.
        """
        if self._everAnswered:
            return False
        if reason.check(PrimedTimeout):
            # Only a silence a TLS server explains (less than a record
            # header sent): a primed slow to give its first answer (a busy
            # pool) is tried again.
            return reason.value.tlsHint
        return bool(reason.check(PrimedClosed)) and not reason.value.quick

    def _giveUp(self, reason):
        first, attempts = self._firstLoss, self._attempts
        self._firstLoss, self._attempts = None, 0
        if attempts:
            # Attempts were made, so this reason is the last one's, not the
            # loss that started them (both are reset together).
            assert first is not None  # set before the first attempt
            message = firstWords = describeError(first.value)
            lastWords = describeError(reason.value)
            if lastWords == firstWords:
                message += f"; the same on {plural(attempts, 'reconnection attempt')}"
            else:
                message += f"; then {plural(attempts, 'reconnection attempt')} failed"
                message += f" ({lastWords})"
            lost = PrimedConnectionLost(message)
            lost.tlsHint = getattr(reason.value, "tlsHint", False)
            reason = Failure(lost)
        self._fail(reason)

    def _fail(self, reason):
        asks, self._unanswered = self._unanswered, collections.deque()
        for ask in asks:
            ask.receiver.errback(reason)

    # Answers.

    def _answered(self, ask, verdict):
        unanswered = self._unanswered
        if unanswered and unanswered[0] is ask:
            unanswered.popleft()
        else:  # pragma: no cover (answers come in request order)
            unanswered.remove(ask)
        self._attempts = 0
        self._firstLoss = None
        self._everAnswered = True
        ask.receiver.callback(verdict)

    def _failed(self, ask, reason):
        if ask.protocol is not self.protocol or self.protocol is None:
            # Its connection's loss is already being handled: the request
            # stays unanswered, to be resent.
            return
        self.protocol = None
        self._lost(reason)
