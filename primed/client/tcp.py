"""
Asking primed over one TCP (or TLS, or unix) connection:
L{PrimedClientProtocol} pipelines any number of requests and matches each
reply to the oldest request waiting, since primed answers in order.
L{primed.client.PrimedClient} builds on it to survive a lost connection.
"""

import collections
from typing import Any

from twisted.internet import defer, endpoints
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHandshakeListener
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from primed.client.base import (
    PrimedClosed,
    PrimedConnectionLost,
    PrimedProtocolError,
    PrimedTimeout,
    _request,
    notAVerdict,
    plural,
)
from primed.client.tls import handshakeFailure, isTLS
from primed.wire import Verdict

# Reply lines as LineReceiver hands them over, so the hot path is one dict
# lookup; anything else goes through Verdict.fromReply.
_VERDICT_OF_LINE = {verdict.reply.rstrip(b"\n"): verdict for verdict in Verdict}
# The bytes a reply line may begin with: anything else at the start of a
# line (a TLS alert, an HTTP status line) fails at once, not only once a
# newline or MAX_LENGTH bytes arrive, which may be never.
_REPLY_STARTS = frozenset(verdict.reply[0] for verdict in Verdict)
#: Seconds: a server that closes a connection sooner than this after a
#: request, without a byte, refused it (L{PrimedClosed.quick}); later, it
#: gave up waiting for something else.
QUICK_CLOSE = 2.0
#: Bytes in a TLS record header: a TLS server sent plain text stays silent
#: only until it has this many (then it sends an alert or closes); a server
#: silent after more is slow, not TLS.
TLS_RECORD_HEADER = 5


@implementer(IHandshakeListener)
class PrimedClientProtocol(LineReceiver):
    """
    Pipelined requests on one TCP connection.

    primed answers a connection's requests in order, so the oldest pending
    request is always the one a reply belongs to.  L{check} does not limit
    how many requests are in flight: that is the caller's policy (the
    command keeps L{primed.client.cmd.TCP_WINDOW}).

    @ivar timeout: L{None}, or the seconds of silence tolerated while answers
        are owed; then the connection is dropped and the pending requests
        fail with L{PrimedTimeout}.
    @ivar lostIdle: whether the connection closed owing no answer (primed's
        idle timeout, say): nothing was lost with it, and a new connection
        can carry on.
    @ivar heard: whether the server has sent anything on this connection.
    @ivar ready: whether the connection can carry requests: from
        C{connectionMade} over TCP, from the end of the handshake (the
        server's certificate verified) over TLS.  Requests made earlier wait
        in the TLS layer.
    """

    #: Set by makeConnection.  Twisted types it Optional[ITransport], which
    #: has neither the producer nor the abort methods its TCP transports have.
    transport: Any

    delimiter = b"\n"
    # Replies are one letter: a long line means the peer is not primed.
    MAX_LENGTH = 64

    def __init__(self, timeout=None, clock=None):
        if timeout is not None and clock is None:
            raise ValueError("a timeout needs a clock")
        self.timeout = timeout
        self._clock = clock
        self._pending: collections.deque[Any] = collections.deque()
        self._error = None
        self._lost = False
        self.lostIdle = False
        self._timer = None
        self._lastHeard = 0.0
        self._atLineStart = True
        self.heard = False
        self._sent = 0
        self.ready = False
        self._readyWaiters = []

    def connectionMade(self):
        if not isTLS(self.transport):
            self._becomeReady()

    def handshakeCompleted(self):
        """
        The TLS handshake succeeded: the server is who it should be.
        """
        self._becomeReady()

    def _becomeReady(self):
        self.ready = True
        waiters, self._readyWaiters = self._readyWaiters, []
        for d in waiters:
            d.callback(self)

    def whenReady(self) -> defer.Deferred:
        """
        @return: a Deferred firing with this protocol once it is L{ready};
            failing with L{PrimedTLSError} if the TLS handshake fails, or
            L{PrimedConnectionLost} if the connection closes first.
        """
        if self.ready:
            return defer.succeed(self)
        if self._lost:
            return defer.fail(self._notReady)

        def cancel(d):
            # Given up on (a connect timeout during the handshake): close the
            # connection, which nobody will use or close otherwise.
            self._readyWaiters.remove(d)
            self.transport.abortConnection()

        d: defer.Deferred[Any] = defer.Deferred(cancel)
        self._readyWaiters.append(d)
        return d

    def check(self, number) -> defer.Deferred:
        """
        Ask whether C{number} (an int, or the text of one: it is sent as
        given, and primed judges it) is prime.

        @return: a Deferred firing with a L{Verdict}, after those of every
            earlier request; or failing with a L{PrimedError}.
        @raise ValueError: if C{number}'s text spans several lines.
        """
        d: defer.Deferred[Any] = defer.Deferred()
        self.request(number, d)
        return d

    def request(self, number, receiver):
        """
        L{check} without the Deferred, for callers sending numbers by the
        thousand: the answer goes to C{receiver.callback(verdict)} or
        C{receiver.errback(failure)} (a L{Deferred} is such a receiver).

        @raise ValueError: if C{number}'s text spans several lines.
        """
        self.requestLine(_request(number), receiver)

    def requestLine(self, request, receiver):
        """
        L{request} for a request line already encoded by C{_request}.
        """
        if self._lost:
            receiver.errback(Failure(PrimedConnectionLost("the connection is closed")))
            return
        if not self._pending and self.timeout is not None:
            self._lastHeard = self._clock.seconds()
            if self._timer is None:
                self._timer = self._clock.callLater(self.timeout, self._checkSilence)
        self._pending.append(receiver)
        self._sent += len(request)
        self.transport.write(request)

    @property
    def lost(self):
        """
        Whether the connection has closed.
        """
        return self._lost

    def dataReceived(self, data):
        # After a protocol error nothing more is trusted: a real transport's
        # abortConnection does not stop LineReceiver from delivering the
        # replies still in this segment.
        if self._error is not None:
            return
        if self.timeout is not None:
            self._lastHeard = self._clock.seconds()
        if not data:
            return
        self.heard = True
        # One look per read, not per line: a read that starts a line (most
        # do, replies being 2 bytes) must start it with T, F or E.
        if self._atLineStart and data[0] not in _REPLY_STARTS:
            self._abort(notAVerdict(data))
            return
        self._atLineStart = data[-1] == 10  # b"\n"
        LineReceiver.dataReceived(self, data)

    def lineReceived(self, line):
        if self._error is not None:
            return
        verdict = _VERDICT_OF_LINE.get(line)
        if verdict is None:
            try:
                verdict = Verdict.fromReply(line)
            except ValueError:
                self._abort(notAVerdict(line + self.delimiter))
                return
        if not self._pending:
            self._abort(PrimedProtocolError("a reply to no request"))
            return
        self._pending.popleft().callback(verdict)

    def lineLengthExceeded(self, line):
        if self._error is not None:
            return
        # Longer than MAX_LENGTH, so longer than what is shown of it.
        self._abort(notAVerdict(line))

    def _checkSilence(self):
        self._timer = None
        if not self._pending or self._lost:
            return
        silence = self._clock.seconds() - self._lastHeard
        if silence >= self.timeout:
            timeout = PrimedTimeout(f"no reply for {self.timeout:g} s")
            # Silent from the start, sent less than a record header: perhaps
            # a TLS server waiting for the rest of it.  Silent after more, a
            # slow primed (its pool busy): retried, no TLS advice.
            timeout.tlsHint = not self.heard and self._sent < TLS_RECORD_HEADER
            self._abort(timeout)
        else:
            self._timer = self._clock.callLater(
                self.timeout - silence, self._checkSilence
            )

    def _closedUnanswered(self):
        """
        Closed before the server sent a byte: at once, or after a silence
        (measured from the first request, when there is a clock).
        """
        if self._clock is None:
            return PrimedClosed()
        waited = self._clock.seconds() - self._lastHeard
        if waited < QUICK_CLOSE:
            return PrimedClosed()
        return PrimedClosed(
            f"the server closed the connection after {waited:.0f} s without answering",
            quick=False,
        )

    def _abort(self, exception):
        """
        Give up on this connection: every pending request fails with
        C{exception}, since later replies could no longer be trusted.
        """
        if self._error is None:
            self._error = exception
        self.transport.abortConnection()

    def connectionLost(self, reason):  # type: ignore[override]  # Twisted always passes the reason
        self._lost = True
        if not self.ready:
            # Whatever was asked before the handshake failed with it.
            if self._error is None:
                self._error = handshakeFailure(reason, self.transport)
            self._notReady = self._error
            waiters, self._readyWaiters = self._readyWaiters, []
            for d in waiters:
                d.errback(Failure(self._notReady))
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        pending, self._pending = self._pending, collections.deque()
        if not pending:
            self.lostIdle = self._error is None
            return
        if self._error is not None:
            error_ = self._error
        elif not self.heard and reason.check(ConnectionDone, ConnectionLost):
            error_ = self._closedUnanswered()
        else:
            error_ = PrimedConnectionLost(
                f"connection lost with {plural(len(pending), 'answer')} owed"
                f" ({_howLost(reason)})"
            )
        for receiver in pending:
            receiver.errback(Failure(error_))


def _howLost(reason) -> str:
    """
    How a connection was lost, in a few words.
    """
    if reason.check(ConnectionDone):
        return "closed by the server"
    if reason.check(ConnectionLost):
        return "reset"
    return reason.getErrorMessage()


def connect(reactor, description, timeout=None) -> defer.Deferred:
    """
    Connect to primed at a client endpoint string (C{"tcp:host=...:port=..."},
    C{"unix:path=..."}, C{"tls:HOST:PORT:trustRoots=DIR"}).

    @param timeout: see L{PrimedClientProtocol.timeout}.
    @return: a Deferred firing with a L{ready <PrimedClientProtocol.ready>}
        L{PrimedClientProtocol}; over TLS, failing with L{PrimedTLSError} if
        the server's certificate is not trusted or not for the host name.
    """
    endpoint = endpoints.clientFromString(reactor, description)
    return connectEndpoint(endpoint, timeout, reactor)


def connectEndpoint(endpoint, timeout=None, reactor=None) -> defer.Deferred:
    """
    L{connect} to an L{IStreamClientEndpoint}.

    @param reactor: the clock for C{timeout}.
    """
    connecting = endpoints.connectProtocol(endpoint, PrimedClientProtocol(timeout, reactor))
    return connecting.addCallback(lambda protocol: protocol.whenReady())
