"""
L{primed.client.tcp}: one pipelined connection over a L{StringTransport},
time from a L{task.Clock}.
"""

from twisted.internet import defer, task
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial import unittest

from fakes import AbortingTransport, connected, lose
from primed.client import (
    PrimedConnectionLost,
    PrimedProtocolError,
    PrimedTimeout,
)
from primed.client.tcp import PrimedClientProtocol
from primed.wire import Verdict

class TCPProtocolTests(unittest.TestCase):
    def test_pipelined(self):
        """
        Requests go out at once, without waiting for replies; the replies,
        in one segment, fire the Deferreds in request order.
        """
        protocol, transport = connected()
        ds = [protocol.check(n) for n in (17, "4", "4j", 2**50 - 1)]
        self.assertEqual(transport.value(), b"17\n4\n4j\n1125899906842623\n")
        fired = []
        for d in ds:
            d.addCallback(fired.append)
        protocol.dataReceived(b"T\nF\nE\nF\n")
        self.assertEqual(
            fired, [Verdict.PRIME, Verdict.NOT_PRIME, Verdict.INVALID, Verdict.NOT_PRIME]
        )

    def test_repliesByteByByte(self):
        protocol, transport = connected()
        ds = [protocol.check(n) for n in (2, 3, 4)]
        for byte in b"T\r\nT\nF\n":
            protocol.dataReceived(bytes([byte]))
        self.assertEqual(
            [self.successResultOf(d) for d in ds],
            [Verdict.PRIME, Verdict.PRIME, Verdict.NOT_PRIME],
        )

    def test_laterRequestWaitsForEarlier(self):
        protocol, transport = connected()
        first, second = protocol.check(4), protocol.check(5)
        protocol.dataReceived(b"F\n")
        self.assertEqual(self.successResultOf(first), Verdict.NOT_PRIME)
        self.assertNoResult(second)

    def test_multiLineTextRefused(self):
        """
        Text that would be two requests is refused before anything is sent:
        it would shift every later reply onto the wrong request.
        """
        protocol, transport = connected()
        self.assertRaises(ValueError, protocol.check, "1\n2")
        self.assertEqual(transport.value(), b"")

    def test_connectionLostFailsPending(self):
        protocol, transport = connected()
        ds = [protocol.check(n) for n in (2, 3, 4)]
        protocol.dataReceived(b"T\n")
        lose(protocol, transport)
        self.assertEqual(self.successResultOf(ds[0]), Verdict.PRIME)
        for d in ds[1:]:
            failure = self.failureResultOf(d, PrimedConnectionLost)
            self.assertEqual(
                str(failure.value),
                "connection lost with 2 answers owed (closed by the server)",
            )

    def test_checkAfterConnectionLost(self):
        protocol, transport = connected()
        lose(protocol, transport)
        failure = self.failureResultOf(protocol.check(17), PrimedConnectionLost)
        self.assertEqual(str(failure.value), "the connection is closed")
        self.assertEqual(transport.value(), b"")

    def test_lostIdle(self):
        """
        C{lostIdle} says whether a closed connection owed nothing (a new one
        may carry on): not before it closes, not when answers were owed or
        a protocol error ended it.
        """
        protocol, transport = connected()
        self.assertFalse(protocol.lostIdle)
        protocol.check(2)
        protocol.dataReceived(b"T\n")
        self.assertFalse(protocol.lostIdle)
        lose(protocol, transport)
        self.assertIs(protocol.lostIdle, True)
        owing, transport = connected()
        owing.check(2).addErrback(lambda f: None)
        lose(owing, transport)
        self.assertIs(owing.lostIdle, False)
        broken, transport = connected(transport=AbortingTransport())
        broken.dataReceived(b"T\n")
        lose(broken, transport)
        self.assertIs(broken.lostIdle, False)

    def test_unexpectedReply(self):
        """
        A reply that is not a verdict drops the connection and fails every
        pending request: later replies could not be trusted.
        """
        protocol, transport = connected(transport=AbortingTransport())
        ds = [protocol.check(n) for n in (2, 3)]
        protocol.dataReceived(b"HTTP/1.1 400 Bad Request\r\nT\n")
        self.assertTrue(transport.aborted)
        for d in ds:
            self.assertNoResult(d)
        lose(protocol, transport)
        for d in ds:
            failure = self.failureResultOf(d, PrimedProtocolError)
            self.assertEqual(
                str(failure.value),
                "the server sent b'HTTP/1.1 400 Bad Request\\r\\nT\\n', not a verdict",
            )
            self.assertFalse(failure.value.tlsHint)

    def test_notAReplyFailsAtOnce(self):
        """
        A first byte no verdict begins with fails at once, newline or not:
        a TLS alert or an HTTP status line cut short would otherwise wait
        for a newline, or for the server to close.  A TLS record is named,
        and flagged for the command's advice (C{--tls}).
        """
        for data, message, tls in [
            (b"\x15\x03\x03", "the server sent b'\\x15\\x03\\x03', not a verdict;"
             " it looks like TLS", True),
            (b"\x16", "the server sent b'\\x16', not a verdict; it looks like TLS", True),
            (b"\x15\x01", "the server sent b'\\x15\\x01', not a verdict", False),
            (b"HTTP/1.1 400", "the server sent b'HTTP/1.1 400', not a verdict", False),
        ]:
            protocol, transport = connected(transport=AbortingTransport())
            d = protocol.check(2)
            protocol.dataReceived(data)
            self.assertTrue(getattr(transport, "aborted", False), data)
            lose(protocol, transport)
            failure = self.failureResultOf(d, PrimedProtocolError)
            self.assertEqual((str(failure.value), failure.value.tlsHint), (message, tls))

    def test_emptyRead(self):
        """
        An empty read (no transport makes one, but a wrapper might) changes
        nothing: the next read still starts a line.
        """
        protocol, transport = connected(transport=AbortingTransport())
        d = protocol.check(2)
        protocol.dataReceived(b"")
        self.assertIs(protocol.heard, False)
        protocol.dataReceived(b"X")
        self.assertTrue(transport.aborted)
        lose(protocol, transport)
        self.failureResultOf(d, PrimedProtocolError)

    def test_notAReplyAfterReplies(self):
        """
        A bad first byte is caught at the start of any read that begins a
        line; in the middle of a line, the line is judged when it ends.
        """
        protocol, transport = connected(transport=AbortingTransport())
        ds = [protocol.check(n) for n in (2, 3, 4)]
        protocol.dataReceived(b"T\nT\n")
        protocol.dataReceived(b"X")
        self.assertTrue(transport.aborted)
        lose(protocol, transport)
        self.assertEqual(self.successResultOf(ds[1]), Verdict.PRIME)
        failure = self.failureResultOf(ds[2], PrimedProtocolError)
        self.assertEqual(str(failure.value), "the server sent b'X', not a verdict")
        protocol, transport = connected(transport=AbortingTransport())
        ds = [protocol.check(n) for n in (2, 3)]
        protocol.dataReceived(b"T\nF")
        protocol.dataReceived(b"X")
        self.assertFalse(getattr(transport, "aborted", False))
        protocol.dataReceived(b"\n")
        self.assertTrue(transport.aborted)
        lose(protocol, transport)
        failure = self.failureResultOf(ds[1], PrimedProtocolError)
        self.assertEqual(str(failure.value), "the server sent b'FX\\n', not a verdict")

    def test_closedWithoutAnswering(self):
        """
        A connection closed (or reset) before the server sent a byte, though
        requests were sent: L{PrimedClosed}, which says so and flags the
        command's advice; after some answers, how many were still owed, in
        plain grammar.
        """
        from twisted.internet.error import ConnectionLost

        from primed.client import PrimedClosed

        for reason in [ConnectionDone(), ConnectionLost()]:
            protocol, transport = connected()
            d = protocol.check(2)
            protocol.connectionLost(Failure(reason))
            failure = self.failureResultOf(d, PrimedClosed)
            self.assertEqual(
                str(failure.value),
                "the server closed the connection without answering"
                " (perhaps over its connection limit)",
            )
            self.assertTrue(failure.value.tlsHint)
        for reason, how in [(ConnectionDone(), "closed by the server"),
                            (ConnectionLost(), "reset")]:
            protocol, transport = connected()
            ds = [protocol.check(n) for n in (2, 3)]
            protocol.dataReceived(b"T\n")
            protocol.connectionLost(Failure(reason))
            failure = self.failureResultOf(ds[1], PrimedConnectionLost)
            self.assertNotIsInstance(failure.value, PrimedClosed)
            self.assertEqual(str(failure.value), f"connection lost with 1 answer owed ({how})")
            self.assertFalse(failure.value.tlsHint)

    def test_repliesAfterErrorIgnored(self):
        """
        Replies already received behind a bad one are not matched to the
        pending requests: the connection is aborted, but a real transport
        leaves C{disconnecting} False, so only the protocol can refuse them.
        """
        protocol, transport = connected(transport=AbortingTransport())
        ds = [protocol.check(n) for n in (4, 9, 5)]
        protocol.dataReceived(b"TX\nT\n")
        protocol.dataReceived(b"T\n" + b"T" * 1000)
        self.assertTrue(transport.aborted)
        lose(protocol, transport)
        for d in ds:
            failure = self.failureResultOf(d, PrimedProtocolError)
            self.assertEqual(str(failure.value), "the server sent b'TX\\n', not a verdict")

    def test_replyToNoRequest(self):
        protocol, transport = connected(transport=AbortingTransport())
        protocol.dataReceived(b"T\nT\n")
        self.assertTrue(transport.aborted)
        d = protocol.check(2)
        protocol.dataReceived(b"T\n")
        self.assertNoResult(d)
        lose(protocol, transport)
        failure = self.failureResultOf(d, PrimedProtocolError)
        self.assertEqual(str(failure.value), "a reply to no request")

    def test_longReplyLine(self):
        protocol, transport = connected(transport=AbortingTransport())
        ds = [protocol.check(n) for n in (2, 3)]
        protocol.dataReceived(b"T" * 1000 + b"\nT\n")
        self.assertTrue(transport.aborted)
        lose(protocol, transport)
        for d in ds:
            failure = self.failureResultOf(d, PrimedProtocolError)
            self.assertEqual(
                str(failure.value), "the server sent %r..., not a verdict" % (b"T" * 32)
            )

    def test_replyLineLimit(self):
        """
        A reply line of up to 64 bytes is judged as a reply when its newline
        comes; one longer fails at its 65th byte, newline or not.  What is
        shown of it is cut at 32 bytes.
        """
        shown = "the server sent %r..., not a verdict" % (b"F" + b"x" * 31)
        for data, aborted in [(b"F" + b"x" * 63, False), (b"F" + b"x" * 64, True)]:
            protocol, transport = connected(transport=AbortingTransport())
            d = protocol.check(2)
            protocol.dataReceived(data)
            self.assertEqual(getattr(transport, "aborted", False), aborted, len(data))
            protocol.dataReceived(b"\n")
            self.assertTrue(transport.aborted)
            lose(protocol, transport)
            self.assertEqual(str(self.failureResultOf(d, PrimedProtocolError).value), shown)

    def test_cancelledRequestKeepsItsPlace(self):
        """
        Cancelling cannot unsend a request: its reply still arrives and must
        not be taken for the next request's.
        """
        protocol, transport = connected()
        first, second = protocol.check(4), protocol.check(5)
        first.cancel()
        self.failureResultOf(first, defer.CancelledError)
        protocol.dataReceived(b"F\nT\n")
        self.assertEqual(self.successResultOf(second), Verdict.PRIME)


class TCPTimeoutTests(unittest.TestCase):
    def test_needsClock(self):
        error = self.assertRaises(ValueError, PrimedClientProtocol, 5.0)
        self.assertEqual(str(error), "a timeout needs a clock")

    def test_idleConnectionNeverTimesOut(self):
        clock = task.Clock()
        protocol, transport = connected(5.0, clock)
        clock.advance(60)
        self.assertFalse(transport.disconnected)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_silenceWhileOwed(self):
        clock = task.Clock()
        protocol, transport = connected(5.0, clock)
        d = protocol.check(17)
        clock.advance(4.9)
        self.assertFalse(transport.disconnected)
        clock.advance(0.1)
        self.assertTrue(transport.disconnected)
        lose(protocol, transport)
        failure = self.failureResultOf(d, PrimedTimeout)
        self.assertEqual(str(failure.value), "no reply for 5 s")
        self.assertIs(failure.value.tlsHint, True)  # not a byte: TLS, perhaps

    def test_silenceAfterAWholeRecordHeader(self):
        """
        Silent from the start, but after five bytes or more (a TLS record
        header: a TLS server would have sent an alert or closed): a slow
        primed, not TLS; no TLS advice.
        """
        clock = task.Clock()
        protocol, transport = connected(5.0, clock)
        d = protocol.check(2 ** 127 - 1)
        clock.advance(5)
        lose(protocol, transport)
        self.assertIs(self.failureResultOf(d, PrimedTimeout).value.tlsHint, False)

    def test_silenceAfterBytes(self):
        """
        A timeout after the server said something: no TLS advice.
        """
        clock = task.Clock()
        protocol, transport = connected(5.0, clock)
        protocol.check(2)
        d = protocol.check(17)
        protocol.dataReceived(b"T\n")
        clock.advance(5)
        lose(protocol, transport)
        self.assertIs(self.failureResultOf(d, PrimedTimeout).value.tlsHint, False)

    def test_closedQuickOrLate(self):
        """
        Closed without a byte: right after the first request (under 2 s),
        L{PrimedClosed.quick}; later, how long the server waited.
        """
        from primed.client import PrimedClosed

        for waited, quick, message in [
            (0, True, "the server closed the connection without answering"
                      " (perhaps over its connection limit)"),
            (1.9, True, "the server closed the connection without answering"
                        " (perhaps over its connection limit)"),
            (2, False, "the server closed the connection after 2 s without answering"),
            (9.6, False, "the server closed the connection after 10 s without answering"),
        ]:
            clock = task.Clock()
            protocol, transport = connected(30.0, clock)
            clock.advance(7)
            d = protocol.check(2)
            clock.advance(waited)
            protocol.check(3).addErrback(lambda f: None)
            lose(protocol, transport)
            error = self.failureResultOf(d, PrimedClosed).value
            self.assertEqual((error.quick, str(error)), (quick, message), waited)

    def test_progressPostpones(self):
        """
        Each arriving reply restarts the count: a slow stream of answers is
        not a silent server.
        """
        clock = task.Clock()
        protocol, transport = connected(5.0, clock)
        ds = [protocol.check(n) for n in (2, 3, 4)]
        clock.advance(4)
        protocol.dataReceived(b"T\n")
        clock.advance(4)
        protocol.dataReceived(b"T\n")
        clock.advance(4)
        self.assertFalse(transport.disconnected)
        clock.advance(1)
        self.assertTrue(transport.disconnected)
        lose(protocol, transport)
        self.failureResultOf(ds[2], PrimedTimeout)

    def test_timerGoneAfterAnswers(self):
        clock = task.Clock()
        protocol, transport = connected(5.0, clock)
        protocol.check(2)
        protocol.dataReceived(b"T\n")
        clock.advance(5)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertFalse(transport.disconnected)

    def test_lossCancelsTimer(self):
        clock = task.Clock()
        protocol, transport = connected(5.0, clock)
        d = protocol.check(2)
        lose(protocol, transport)
        self.failureResultOf(d, PrimedConnectionLost)
        self.assertEqual(clock.getDelayedCalls(), [])


class ReceiverTests(unittest.TestCase):
    def test_requestWithoutDeferred(self):
        """
        L{PrimedClientProtocol.request} hands the answer to any object with
        C{callback} and C{errback}.
        """
        protocol, transport = connected()

        class Receiver:
            def __init__(self):
                self.got = []
                self.callback = self.errback = self.got.append

        first, second = Receiver(), Receiver()
        protocol.request(2, first)
        protocol.request(3, second)
        protocol.dataReceived(b"T\n")
        lose(protocol, transport)
        self.assertEqual(first.got, [Verdict.PRIME])
        [failure] = second.got
        self.assertIsInstance(failure.value, PrimedConnectionLost)


class ReadyTests(unittest.TestCase):
    def test_readyOverTCP(self):
        protocol, transport = connected()
        self.assertTrue(protocol.ready)
        self.assertIs(self.successResultOf(protocol.whenReady()), protocol)

    def test_cancelledWaitClosesTheConnection(self):
        """
        Waiting for a handshake that never ends is given up by cancelling
        (the connect timeout): the connection is closed, not left open
        behind the caller's back; its later loss fails nothing twice.
        """
        protocol = PrimedClientProtocol()
        protocol.transport = transport = AbortingTransport()  # handshake under way
        waiting = protocol.whenReady()
        waiting.cancel()
        self.failureResultOf(waiting, defer.CancelledError)
        self.assertTrue(getattr(transport, "aborted", False))
        protocol.connectionLost(Failure(ConnectionDone()))


class HandshakeTests(unittest.TestCase):
    """
    Before it is ready (a TLS handshake under way) a connection's loss fails
    the waiters and the requests with the handshake's reason, unless the
    client had already given up for a reason of its own.
    """

    def pending(self, timeout=None, clock=None):
        protocol = PrimedClientProtocol(timeout, clock)
        protocol.transport = transport = AbortingTransport()  # handshake under way
        return protocol, transport

    def test_lostDuringHandshake(self):
        protocol, transport = self.pending()
        waiting = protocol.whenReady()
        asked = protocol.check(17)
        protocol.connectionLost(Failure(ConnectionDone("bye")))
        expected = "connection lost during the TLS handshake (Connection was closed cleanly: bye.)"
        for d in (waiting, asked, protocol.whenReady()):
            failure = self.failureResultOf(d, PrimedConnectionLost)
            self.assertEqual(str(failure.value), expected)
        self.assertFalse(protocol.lostIdle)

    def test_timeoutDuringHandshake(self):
        clock = task.Clock()
        protocol, transport = self.pending(5.0, clock)
        waiting = protocol.whenReady()
        asked = protocol.check(17)
        clock.advance(5)
        self.assertTrue(transport.aborted)
        protocol.connectionLost(Failure(ConnectionDone("bye")))
        for d in (waiting, asked):
            failure = self.failureResultOf(d, PrimedTimeout)
            self.assertEqual(str(failure.value), "no reply for 5 s")

    def test_handshakeListener(self):
        """
        Twisted's TLS layer tells only an L{IHandshakeListener} that the
        handshake completed; it is what makes the connection ready.
        """
        from twisted.internet.interfaces import IHandshakeListener

        protocol, transport = self.pending()
        self.assertTrue(IHandshakeListener.providedBy(protocol))
        waiting = protocol.whenReady()
        self.assertNoResult(waiting)
        protocol.handshakeCompleted()
        self.assertIs(self.successResultOf(waiting), protocol)

    def test_lost(self):
        protocol, transport = connected()
        self.assertIs(protocol.lost, False)
        lose(protocol, transport)
        self.assertIs(protocol.lost, True)


class ConnectTests(unittest.TestCase):
    def test_connect(self):
        """
        L{connect} parses a client endpoint string and fires with a ready
        protocol, timed by the reactor.
        """
        from twisted.internet.testing import MemoryReactorClock, StringTransport

        from primed.client.tcp import connect

        reactor = MemoryReactorClock()
        d = connect(reactor, "tcp:host=127.0.0.1:port=8809", timeout=5.0)
        [(host, port, factory, _, _)] = reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 8809))
        self.assertNoResult(d)
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        result = self.successResultOf(d)
        self.assertIsInstance(result, PrimedClientProtocol)
        self.assertTrue(result.ready)
        self.assertEqual(result.timeout, 5.0)
        self.assertIs(result._clock, reactor)
