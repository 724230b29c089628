"""
Asking primed over UDP: L{PrimedUDPClient}, one connected socket per
request so that a reply can only answer its own request.
"""

import errno
from typing import Any

from twisted.internet import defer, error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure

from primed.client.base import (
    DEFAULT_RETRIES,
    DEFAULT_UDP_TIMEOUT,
    PrimedRefused,
    PrimedRequestTooLong,
    PrimedTimeout,
    _request,
    plural,
)
from primed.wire import Verdict


class _UDPRequest(DatagramProtocol):
    """
    One request on a connected socket of its own.  Any verdict arriving on
    it answers this request: the socket never carried another, and retries
    of the same request all get the same answer.
    """

    #: Set by makeConnection.  Twisted types it Optional[ITransport], which
    #: has neither the producer nor the abort methods its TCP transports have.
    transport: Any

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
        self.deferred: defer.Deferred[Any] = defer.Deferred(lambda d: self._stop())

    def send(self):
        # Arm first: a write may report "refused" synchronously.
        self._sent += 1
        self._timer = self._clock.callLater(self._timeout, self._timedOut)
        try:
            self.transport.write(self._request)
        except Exception as e:
            # No retry will help either way.
            if isinstance(e, error.MessageLengthError) or (
                isinstance(e, OSError) and e.errno == errno.EMSGSIZE
            ):
                # Not primed's answer, so not a verdict: the caller decides
                # (the command answers it invalid, as primed would).
                self._finish(Failure(PrimedRequestTooLong(
                    f"a request of {len(self._request)} bytes does not fit in a datagram"
                )))
            else:
                self._finish(Failure())

    def _timedOut(self):
        self._timer = None
        if self._sent <= self._retries:
            self.send()
        else:
            self._finish(
                Failure(
                    PrimedTimeout(
                        f"no reply after {plural(self._sent, 'attempt')}"
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
            L{PrimedTimeout}, L{PrimedRefused} or L{PrimedRequestTooLong};
            unlike TCP, in the order the answers arrive.
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
        try:
            port.connect(address, self.port)
        except BaseException:
            # Not sendable (broadcast, a link-local address without its
            # zone): the error is the answer.  Close the socket as a done
            # request, or closing it would fail asking.deferred, held by
            # nobody, with PrimedRefused.
            asking._stop()
            raise
        asking.send()
        return asking.deferred


def _isIPAddress(host):
    return isIPAddress(host) or isIPv6Address(host)
