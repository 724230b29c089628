"""
A client for primed: the Twisted APIs a program imports to ask primed over
TCP, TLS and UDP.  The C{primed-client} command is built on them in
L{primed.clientcmd}.

Over TCP one connection carries any number of requests: primed answers them
in order, so L{PrimedClientProtocol} just keeps a queue of Deferreds and
fires the oldest with each reply.  Over UDP a reply carries nothing that
names its request, so L{PrimedUDPClient} (in L{primed.udpclient}) gives
each request a connected socket of its own and matches replies by the port
they arrive at.  Everything is importable from here.
"""

import collections

from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IHandshakeListener
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from primed.clientbase import (
    DEFAULT_HOST,
    DEFAULT_RETRIES,
    DEFAULT_TCP_PORT,
    DEFAULT_TCP_TIMEOUT,
    DEFAULT_UDP_PORT,
    DEFAULT_UDP_TIMEOUT,
    PrimedConnectionLost,
    PrimedError,
    PrimedProtocolError,
    PrimedRefused,
    PrimedRequestTooLong,
    PrimedTimeout,
    PrimedTLSError,
    _request,
)
from primed.udpclient import PrimedUDPClient
from primed.wire import Verdict

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_RETRIES",
    "DEFAULT_TCP_PORT",
    "DEFAULT_TCP_TIMEOUT",
    "DEFAULT_UDP_PORT",
    "DEFAULT_UDP_TIMEOUT",
    "PrimedClientProtocol",
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

# Reply lines as LineReceiver hands them over, so the hot path is one dict
# lookup; anything else goes through Verdict.fromReply.
_VERDICT_OF_LINE = {verdict.reply.rstrip(b"\n"): verdict for verdict in Verdict}


@implementer(IHandshakeListener)
class PrimedClientProtocol(LineReceiver):
    """
    Pipelined requests on one TCP connection.

    primed answers a connection's requests in order, so the oldest pending
    request is always the one a reply belongs to.  L{check} does not limit
    how many requests are in flight: that is the caller's policy (the
    command keeps L{primed.clientcmd.TCP_WINDOW}).

    @ivar timeout: L{None}, or the seconds of silence tolerated while answers
        are owed; then the connection is dropped and the pending requests
        fail with L{PrimedTimeout}.
    @ivar lostIdle: whether the connection closed owing no answer (primed's
        idle timeout, say): nothing was lost with it, and a new connection
        can carry on.
    @ivar ready: whether the connection can carry requests: from
        C{connectionMade} over TCP, from the end of the handshake (the
        server's certificate verified) over TLS.  Requests made earlier wait
        in the TLS layer.
    """

    delimiter = b"\n"
    # Replies are one letter: a long line means the peer is not primed.
    MAX_LENGTH = 64

    def __init__(self, timeout=None, clock=None):
        if timeout is not None and clock is None:
            raise ValueError("a timeout needs a clock")
        self.timeout = timeout
        self._clock = clock
        self._pending = collections.deque()
        self._error = None
        self._lost = False
        self.lostIdle = False
        self._timer = None
        self._lastHeard = 0.0
        self.ready = False
        self._readyWaiters = []

    def connectionMade(self):
        if not _isTLS(self.transport):
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
        d = defer.Deferred()
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
        d = defer.Deferred()
        self.request(number, d)
        return d

    def request(self, number, receiver):
        """
        L{check} without the Deferred, for callers sending numbers by the
        thousand: the answer goes to C{receiver.callback(verdict)} or
        C{receiver.errback(failure)} (a L{Deferred} is such a receiver).

        @raise ValueError: if C{number}'s text spans several lines.
        """
        request = _request(number)
        if self._lost:
            receiver.errback(Failure(PrimedConnectionLost("the connection is closed")))
            return
        if not self._pending and self.timeout is not None:
            self._lastHeard = self._clock.seconds()
            if self._timer is None:
                self._timer = self._clock.callLater(self.timeout, self._checkSilence)
        self._pending.append(receiver)
        self.transport.write(request)

    def dataReceived(self, data):
        # After a protocol error nothing more is trusted: a real transport's
        # abortConnection does not stop LineReceiver from delivering the
        # replies still in this segment.
        if self._error is not None:
            return
        if self.timeout is not None:
            self._lastHeard = self._clock.seconds()
        LineReceiver.dataReceived(self, data)

    def lineReceived(self, line):
        if self._error is not None:
            return
        verdict = _VERDICT_OF_LINE.get(line)
        if verdict is None:
            try:
                verdict = Verdict.fromReply(line)
            except ValueError:
                self._abort(PrimedProtocolError(f"unexpected reply {line[:20]!r}"))
                return
        if not self._pending:
            self._abort(PrimedProtocolError("a reply to no request"))
            return
        self._pending.popleft().callback(verdict)

    def lineLengthExceeded(self, line):
        if self._error is not None:
            return
        self._abort(PrimedProtocolError(f"unexpected reply {line[:20]!r}..."))

    def _checkSilence(self):
        self._timer = None
        if not self._pending or self._lost:
            return
        silence = self._clock.seconds() - self._lastHeard
        if silence >= self.timeout:
            self._abort(PrimedTimeout(f"no reply for {self.timeout:g} s"))
        else:
            self._timer = self._clock.callLater(
                self.timeout - silence, self._checkSilence
            )

    def _abort(self, exception):
        """
        Give up on this connection: every pending request fails with
        C{exception}, since later replies could no longer be trusted.
        """
        if self._error is None:
            self._error = exception
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self._lost = True
        if not self.ready:
            # Whatever was asked before the handshake failed with it.
            if self._error is None:
                self._error = _handshakeFailure(reason, self.transport)
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
        else:
            error_ = PrimedConnectionLost(
                f"connection lost before {len(pending)} answers arrived"
                f" ({reason.getErrorMessage()})"
            )
        for receiver in pending:
            receiver.errback(Failure(error_))


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


def _isTLS(transport) -> bool:
    try:
        from twisted.protocols.tls import TLSMemoryBIOProtocol
    except ImportError:  # no pyOpenSSL: no TLS either
        return False
    return isinstance(transport, TLSMemoryBIOProtocol)


def _handshakeFailure(reason, transport) -> PrimedError:
    """
    Why a TLS connection closed before its handshake completed, in words.
    """
    try:
        from OpenSSL import SSL
        from service_identity import VerificationError
    except ImportError:
        SSL = VerificationError = None
    if VerificationError is not None and reason.check(VerificationError):
        return PrimedTLSError(f"TLS: {_mismatch(reason.value)}")
    if SSL is not None and reason.check(SSL.Error):
        messages = [entry[-1] for entry in reason.value.args[0] if entry] if (
            reason.value.args and isinstance(reason.value.args[0], list)
        ) else []
        if "certificate verify failed" in messages:
            return PrimedTLSError(
                f"TLS: certificate not trusted ({_whyUntrusted(transport)})"
            )
        detail = "; ".join(messages) or reason.getErrorMessage()
        return PrimedTLSError(f"TLS handshake failed: {detail}")
    return PrimedConnectionLost(
        f"connection lost during the TLS handshake ({reason.getErrorMessage()})"
    )


def _mismatch(verificationError) -> str:
    """
    C{"certificate is not for NAME"}: the handshake failed, so the
    certificate itself is gone and its names cannot be shown.
    """
    asked = []
    for mismatch in getattr(verificationError, "errors", []):
        identity = getattr(mismatch, "mismatched_id", None)
        name = getattr(identity, "hostname", None) or getattr(identity, "ip", None)
        if name is not None:
            asked.append(name.decode() if isinstance(name, bytes) else str(name))
    return f"certificate is not for {' or '.join(asked) or 'the host name'}"


def _whyUntrusted(transport) -> str:
    """
    OpenSSL's reason for refusing the server's certificate (C{"self-signed
    certificate"}, C{"unable to get local issuer certificate"}, ...), as
    C{openssl s_client} prints it.  pyOpenSSL has no public call for it: its
    bindings are used, and a change in them only costs the detail.
    """
    try:
        from OpenSSL.SSL import _ffi, _lib

        code = _lib.SSL_get_verify_result(transport.getHandle()._ssl)
        return _ffi.string(_lib.X509_verify_cert_error_string(code)).decode()
    except Exception:
        return "certificate verify failed"
