"""
L{primed.client.udp}: one connected socket per request, retries, refusals,
over a fake reactor and a L{task.Clock}.
"""

from twisted.internet import defer
from twisted.trial import unittest

from fakes import FakeUDPReactor
from primed.client import PrimedRefused, PrimedRequestTooLong, PrimedTimeout, PrimedUDPClient
from primed.wire import Verdict


class UDPTests(unittest.TestCase):
    def setUp(self):
        self.reactor = FakeUDPReactor()
        self.client = PrimedUDPClient(self.reactor, "127.0.0.1", 8808, timeout=1.0, retries=2)

    def test_oneConnectedSocketPerRequest(self):
        self.client.check(17)
        self.client.check("4j")
        [first, second] = self.reactor.ports
        self.assertEqual(first.connectedTo, ("127.0.0.1", 8808))
        self.assertEqual(first.written, [b"17\n"])
        self.assertEqual(second.written, [b"4j\n"])

    def test_answerClosesSocket(self):
        d = self.client.check(17)
        [port] = self.reactor.ports
        port.reply(b"T\n")
        self.assertEqual(self.successResultOf(d), Verdict.PRIME)
        self.assertTrue(port.stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_retry(self):
        d = self.client.check(17)
        [port] = self.reactor.ports
        self.reactor.advance(0.99)
        self.assertEqual(port.written, [b"17\n"])
        self.reactor.advance(0.01)
        self.assertEqual(port.written, [b"17\n", b"17\n"])
        port.reply(b"T")
        self.assertEqual(self.successResultOf(d), Verdict.PRIME)

    def test_timeoutAfterRetries(self):
        d = self.client.check(17)
        [port] = self.reactor.ports
        self.reactor.pump([1.0] * 2)
        self.assertNoResult(d)
        self.reactor.advance(1.0)
        failure = self.failureResultOf(d, PrimedTimeout)
        self.assertIn("3 attempts", str(failure.value))
        self.assertEqual(port.written, [b"17\n"] * 3)
        self.assertTrue(port.stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_noRetries(self):
        self.client.retries = 0
        d = self.client.check(17)
        self.reactor.advance(1.0)
        self.failureResultOf(d, PrimedTimeout)
        self.assertEqual(self.reactor.ports[0].written, [b"17\n"])

    def test_reordered(self):
        """
        Replies arriving in the reverse order still answer their own
        requests: each arrives on its request's socket.
        """
        first, second = self.client.check(17), self.client.check(18)
        self.reactor.ports[1].reply(b"F\n")
        self.reactor.ports[0].reply(b"T\n")
        self.assertEqual(self.successResultOf(first), Verdict.PRIME)
        self.assertEqual(self.successResultOf(second), Verdict.NOT_PRIME)

    def test_lateDuplicateIgnored(self):
        """
        After a retry both replies may arrive; the second is dropped.
        """
        d = self.client.check(17)
        self.reactor.advance(1.0)
        port = self.reactor.ports[0]
        port.reply(b"T\n")
        port.protocol.datagramReceived(b"T\n", ("127.0.0.1", 8808))
        self.assertEqual(self.successResultOf(d), Verdict.PRIME)

    def test_garbageIgnored(self):
        d = self.client.check(17)
        self.reactor.ports[0].reply(b"hello")
        self.assertNoResult(d)
        self.reactor.ports[0].reply(b"T\n")
        self.assertEqual(self.successResultOf(d), Verdict.PRIME)

    def test_refused(self):
        d = self.client.check(17)
        self.reactor.ports[0].protocol.connectionRefused()
        self.failureResultOf(d, PrimedRefused)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_portLostIsRefused(self):
        """
        The epoll reactor reports ICMP port unreachable by dropping the
        port; the request fails at once instead of retrying on nothing.
        """
        d = self.client.check(17)
        self.reactor.ports[0].protocol.doStop()
        self.failureResultOf(d, PrimedRefused)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_tooLong(self):
        """
        A request too long for a datagram fails with L{PrimedRequestTooLong}
        (it was not sent, so there is no verdict), at once and leaving no
        socket or timer behind.
        """
        d = self.client.check("9" * 70000)
        failure = self.failureResultOf(d, PrimedRequestTooLong)
        self.assertIn("70001 bytes", str(failure.value))
        self.assertTrue(self.reactor.ports[0].stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_tooLongOSError(self):
        """
        The same when the socket raises a bare C{EMSGSIZE}.
        """
        import errno

        def write(datagram, address=None):
            raise OSError(errno.EMSGSIZE, "Message too long")

        self.reactor.listenUDP = self._wrapListen(write)
        d = self.client.check("9" * 70000)
        self.failureResultOf(d, PrimedRequestTooLong)

    def test_writeFails(self):
        """
        A request the socket refuses to send for another reason fails at
        once and leaves no socket or timer behind.
        """
        import errno

        def write(datagram, address=None):
            raise OSError(errno.ENETUNREACH, "Network is unreachable")

        self.reactor.listenUDP = self._wrapListen(write)
        d = self.client.check(17)
        self.failureResultOf(d, OSError)
        self.assertTrue(self.reactor.ports[0].stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_connectFails(self):
        """
        An address the socket cannot be connected to (broadcast: EACCES; a
        link-local IPv6 address without its zone: EINVAL) fails the request
        with that error, and closes the socket quietly: closing it used to
        fail the request's other Deferred with PrimedRefused, which nobody
        held ("Unhandled error in Deferred" after primed-client's one line).
        """
        import errno
        import gc

        listen = FakeUDPReactor.listenUDP.__get__(self.reactor)

        def listenUDP(*args, **kwargs):
            port = listen(*args, **kwargs)

            def connect(host, port_):
                raise PermissionError(errno.EACCES, "Permission denied")

            port.connect = connect
            return port

        self.reactor.listenUDP = listenUDP
        d = self.client.check(17)
        self.failureResultOf(d, PermissionError)
        [port] = self.reactor.ports
        self.assertTrue(port.stopped)
        self.assertEqual((port.written, self.reactor.getDelayedCalls()), ([], []))
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(), [])

    def _wrapListen(self, write):
        listen = FakeUDPReactor.listenUDP.__get__(self.reactor)

        def listenUDP(*args, **kwargs):
            port = listen(*args, **kwargs)
            port.write = write
            return port

        return listenUDP

    def test_cancel(self):
        d = self.client.check(17)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertTrue(self.reactor.ports[0].stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_hostnameResolvedOnce(self):
        client_ = PrimedUDPClient(self.reactor, "primed.example", 8808)
        client_.check(2)
        client_.check(3)
        self.assertEqual(self.reactor.resolved, ["primed.example"])
        self.assertEqual(self.reactor.ports[1].connectedTo, ("127.0.0.2", 8808))

    def test_IPv6(self):
        PrimedUDPClient(self.reactor, "::1", 8808).check(2)
        self.assertEqual(self.reactor.ports[0].interface, "::")

    def test_multiLineTextRefused(self):
        self.assertRaises(ValueError, self.client.check, "1\n2")
        self.assertEqual(self.reactor.ports, [])


class UDPMessageTests(unittest.TestCase):
    """
    The words a failed request gives, which the command prints, and the
    quiet log of a client that opens a socket per request.
    """

    def setUp(self):
        self.reactor = FakeUDPReactor()
        self.client = PrimedUDPClient(self.reactor, "127.0.0.1", 8808, timeout=0.5, retries=1)

    def test_timeout(self):
        d = self.client.check(17)
        self.reactor.pump([0.5, 0.5])
        failure = self.failureResultOf(d, PrimedTimeout)
        self.assertEqual(str(failure.value), "no reply after 2 attempts of 0.5 s each")

    def test_refused(self):
        d = self.client.check(17)
        self.reactor.ports[0].protocol.connectionRefused()
        failure = self.failureResultOf(d, PrimedRefused)
        self.assertEqual(str(failure.value), "port unreachable")

    def test_tooLong(self):
        d = self.client.check("9" * 70000)
        failure = self.failureResultOf(d, PrimedRequestTooLong)
        self.assertEqual(str(failure.value),
                         "a request of 70001 bytes does not fit in a datagram")

    def test_IPv4Interface(self):
        self.client.check(2)
        self.assertEqual(self.reactor.ports[0].interface, "")

    def test_quiet(self):
        """
        No "Starting protocol" / "Stopping protocol" lines per request.
        """
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        d = self.client.check(17)
        self.reactor.ports[0].reply(b"T\n")
        self.successResultOf(d)
        self.assertEqual(events, [])
