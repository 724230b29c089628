"""
A client for primed: the Twisted APIs a program imports to ask primed over
TCP and UDP.  The C{primed-client} command is built on them in
L{primed.clientcmd}.

Over TCP one connection carries any number of requests: primed answers them
in order, so L{PrimedClientProtocol} just keeps a queue of Deferreds and
fires the oldest with each reply.  Over UDP a reply carries nothing that
names its request, so L{PrimedUDPClient} gives each request a connected
socket of its own and matches replies by the port they arrive at.
"""

import collections
import errno

from twisted.internet import defer, endpoints, error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.protocol import DatagramProtocol
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from primed.wire import Verdict, encodeRequest

DEFAULT_HOST = "127.0.0.1"
DEFAULT_TCP_PORT = 8809
DEFAULT_UDP_PORT = 8808

#: Seconds: over TCP, to connect and the longest silence while answers are
#: owed (a 4300-digit check may take a while); over UDP, per attempt.
DEFAULT_TCP_TIMEOUT = 10.0
DEFAULT_UDP_TIMEOUT = 1.0
DEFAULT_RETRIES = 3

# Reply lines as LineReceiver hands them over, so the hot path is one dict
# lookup; anything else goes through Verdict.fromReply.
_VERDICT_OF_LINE = {verdict.reply.rstrip(b"\n"): verdict for verdict in Verdict}


class PrimedError(Exception):
    """
    A request that primed did not answer.
    """


class PrimedConnectionLost(PrimedError):
    """
    The TCP connection closed before primed answered the request.
    """


class PrimedTimeout(PrimedError):
    """
    primed did not answer in time: after every UDP retry, or within the
    silence a TCP connection tolerates.
    """


class PrimedProtocolError(PrimedError):
    """
    The server sent something that is not a verdict, so it is not primed (or
    the replies can no longer be matched to the requests).
    """


class PrimedRefused(PrimedError):
    """
    Nothing listens where the UDP request was sent (ICMP port unreachable).
    """


def _request(number) -> bytes:
    """
    The request line for C{number}, refusing text that would make it two
    lines: over TCP the replies would then no longer match the requests.
    """
    request = encodeRequest(number)
    if request.find(b"\n") != len(request) - 1:
        raise ValueError(f"{number!r} is not one line")
    return request


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
    C{"unix:path=..."}, C{"ssl:..."}).

    @param timeout: see L{PrimedClientProtocol.timeout}.
    @return: a Deferred firing with a connected L{PrimedClientProtocol}.
    """
    endpoint = endpoints.clientFromString(reactor, description)
    return endpoints.connectProtocol(endpoint, PrimedClientProtocol(timeout, reactor))


class _UDPRequest(DatagramProtocol):
    """
    One request on a connected socket of its own.  Any verdict arriving on
    it answers this request: the socket never carried another, and retries
    of the same request all get the same answer.
    """

    # Two log events per request would cost more than the request.
    noisy = False

    def __init__(self, clock, request, timeout, retries):
        self._clock = clock
        self._request = request
        self._timeout = timeout
        self._retries = retries
        self._sent = 0
        self._timer = None
        self._done = False
        self.deferred = defer.Deferred(lambda d: self._stop())

    def send(self):
        # Arm first: a write may report "refused" synchronously.
        self._sent += 1
        self._timer = self._clock.callLater(self._timeout, self._timedOut)
        try:
            self.transport.write(self._request)
        except error.MessageLengthError:
            # Too long for a datagram: more than primed accepts, so invalid,
            # as primed answers E to an over-long line over TCP.
            self._finish(Verdict.INVALID)
        except Exception as e:
            if isinstance(e, OSError) and e.errno == errno.EMSGSIZE:
                self._finish(Verdict.INVALID)
            else:
                # No retry will help.
                self._finish(Failure())

    def _timedOut(self):
        self._timer = None
        if self._sent <= self._retries:
            self.send()
        else:
            self._finish(
                Failure(
                    PrimedTimeout(
                        f"no reply after {self._sent} attempts"
                        f" of {self._timeout:g} s each"
                    )
                )
            )

    def datagramReceived(self, datagram, address):
        try:
            verdict = Verdict.fromReply(datagram)
        except ValueError:
            return  # Not an answer; keep waiting for one.
        self._finish(verdict)

    def connectionRefused(self):
        self._finish(Failure(PrimedRefused("port unreachable")))

    def stopProtocol(self):
        # Twisted's epoll reactor reports the ICMP "port unreachable" of a
        # connected UDP socket by dropping the port rather than calling
        # connectionRefused: a port closing under an unanswered request
        # means the same thing.
        self.connectionRefused()

    def _stop(self):
        # Closing the port calls stopProtocol: mark this request done first.
        self._done = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.transport is not None:
            self.transport.stopListening()

    def _finish(self, result):
        if self._done:
            return
        self._stop()
        self.deferred.callback(result)


class PrimedUDPClient:
    """
    Ask primed over UDP, retrying lost requests.

    A reply is just C{T}, C{F} or C{E}: it does not say which request it
    answers.  Sharing one socket between requests would therefore be wrong
    as soon as a datagram is lost, duplicated or reordered (a late reply to
    a retried request would answer the next one).  So each request gets a
    fresh socket connected to the server: the kernel delivers only the
    server's datagrams to it, the socket is closed when the answer arrives,
    and an ICMP "port unreachable" fails the request at once instead of
    waiting for every retry.  The price is a bind and a close per request.

    @ivar timeout: seconds to wait for each attempt.
    @ivar retries: attempts after the first before giving up with
        L{PrimedTimeout}.
    """

    def __init__(
        self, reactor, host, port, timeout=DEFAULT_UDP_TIMEOUT, retries=DEFAULT_RETRIES
    ):
        self._reactor = reactor
        self.host = host
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self._address = host if _isIPAddress(host) else None

    def check(self, number) -> defer.Deferred:
        """
        Ask whether C{number} (an int, or the text of one) is prime.

        @return: a Deferred firing with a L{Verdict}, or failing with
            L{PrimedTimeout} or L{PrimedRefused}; unlike TCP, in the order
            the answers arrive.
        @raise ValueError: if C{number}'s text spans several lines.
        """
        request = _request(number)
        if self._address is not None:
            return defer.maybeDeferred(self._ask, self._address, request)
        d = self._reactor.resolve(self.host)
        d.addCallback(self._resolved)
        d.addCallback(self._ask, request)
        return d

    def _resolved(self, address):
        self._address = address
        return address

    def _ask(self, address, request):
        asking = _UDPRequest(
            self._reactor,
            request,
            self.timeout,
            self.retries,
        )
        interface = "::" if isIPv6Address(address) else ""
        port = self._reactor.listenUDP(0, asking, interface=interface)
        port.connect(address, self.port)
        asking.send()
        return asking.deferred


def _isIPAddress(host):
    return isIPAddress(host) or isIPv6Address(host)
