"""
The client library without a network: TCP over a L{StringTransport}, UDP
over a fake reactor, time from a L{task.Clock}; then against a real primed
service in this process.
"""

from twisted.internet import defer, task
from twisted.trial import unittest

from fakes import AbortingTransport, FakeUDPReactor, connected, lose
from primed import client
from primed.client import (
    PrimedClientProtocol,
    PrimedConnectionLost,
    PrimedProtocolError,
    PrimedRefused,
    PrimedTimeout,
    PrimedUDPClient,
)
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
            self.assertIn("2 answers", str(failure.value))

    def test_checkAfterConnectionLost(self):
        protocol, transport = connected()
        lose(protocol, transport)
        self.failureResultOf(protocol.check(17), PrimedConnectionLost)
        self.assertEqual(transport.value(), b"")

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
            self.failureResultOf(d, PrimedProtocolError)

    def test_repliesAfterErrorIgnored(self):
        """
        Replies already received behind a bad one are not matched to the
        pending requests: the connection is aborted, but a real transport
        leaves C{disconnecting} False, so only the protocol can refuse them.
        """
        protocol, transport = connected(transport=AbortingTransport())
        ds = [protocol.check(n) for n in (4, 9, 5)]
        protocol.dataReceived(b"X\nT\n")
        protocol.dataReceived(b"T\n" + b"T" * 1000)
        self.assertTrue(transport.aborted)
        lose(protocol, transport)
        for d in ds:
            failure = self.failureResultOf(d, PrimedProtocolError)
            self.assertIn("unexpected reply b'X'", str(failure.value))

    def test_replyToNoRequest(self):
        protocol, transport = connected(transport=AbortingTransport())
        protocol.dataReceived(b"T\nT\n")
        self.assertTrue(transport.aborted)
        d = protocol.check(2)
        protocol.dataReceived(b"T\n")
        self.assertNoResult(d)
        lose(protocol, transport)
        self.failureResultOf(d, PrimedProtocolError)

    def test_longReplyLine(self):
        protocol, transport = connected(transport=AbortingTransport())
        ds = [protocol.check(n) for n in (2, 3)]
        protocol.dataReceived(b"T" * 1000 + b"\nT\n")
        self.assertTrue(transport.aborted)
        lose(protocol, transport)
        for d in ds:
            self.failureResultOf(d, PrimedProtocolError)

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
        self.assertRaises(ValueError, PrimedClientProtocol, 5.0)

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
        self.failureResultOf(d, PrimedTimeout)

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

    def test_tooLongIsInvalid(self):
        """
        A request too long for a datagram is invalid, as primed answers over
        TCP (E for an over-long line), at once and leaving no socket or
        timer behind.
        """
        from twisted.internet.error import MessageLengthError

        def write(datagram, address=None):
            raise MessageLengthError("message too long")

        self.reactor.listenUDP = self._wrapListen(write)
        d = self.client.check("9" * 70000)
        self.assertEqual(self.successResultOf(d), Verdict.INVALID)
        self.assertTrue(self.reactor.ports[0].stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_tooLongOSErrorIsInvalid(self):
        """
        The same when the socket raises a bare C{EMSGSIZE}.
        """
        import errno

        def write(datagram, address=None):
            raise OSError(errno.EMSGSIZE, "Message too long")

        self.reactor.listenUDP = self._wrapListen(write)
        d = self.client.check("9" * 70000)
        self.assertEqual(self.successResultOf(d), Verdict.INVALID)

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


class RealServiceTests(unittest.TestCase):
    """
    The client APIs against a real primed service, in this process, on
    ephemeral loopback ports.
    """

    def setUp(self):
        from twisted.internet import reactor

        from primed import tap

        self.reactor = reactor
        config = tap.Options()
        config.parseOptions(
            ["--listen", "tcp:0:interface=127.0.0.1", "--udp", "127.0.0.1:0", "--threads", "1"]
        )
        top = tap.makeService(config, reactor)
        self.service = top.getServiceNamed("primed")
        top.startService()
        self.addCleanup(top.stopService)
        self.tcpPort = self.service.tcpPorts[0].getHost().port
        self.udpPort = self.service.udpPorts[0].getHost().port

    async def connect(self):
        protocol = await client.connect(
            self.reactor, f"tcp:host=127.0.0.1:port={self.tcpPort}", timeout=30
        )
        self.addCleanup(protocol.transport.loseConnection)
        return protocol

    async def test_seedValuesPipelined(self):
        from support import SEED_REPLIES, SEED_VALUES

        protocol = await self.connect()
        verdicts = await defer.gatherResults([protocol.check(v) for v in SEED_VALUES])
        self.assertEqual([v.reply for v in verdicts], SEED_REPLIES)

    async def test_orderWithBigAndSmall(self):
        """
        A big prime (checked in the service's pool) ahead of small numbers:
        the answers still come back in request order.
        """
        import gmpy2

        big = int(gmpy2.next_prime(10**1000))
        numbers = [big, 4, 5, big + 2, 7, -1, 2] * 5
        protocol = await self.connect()
        verdicts = await defer.gatherResults([protocol.check(n) for n in numbers])
        expected = [Verdict.PRIME if n > 1 and gmpy2.is_prime(n) else Verdict.NOT_PRIME
                    for n in numbers]
        self.assertEqual(verdicts, expected)

    async def test_udpSeedValues(self):
        from support import SEED_REPLIES, SEED_VALUES

        udp = PrimedUDPClient(self.reactor, "127.0.0.1", self.udpPort, timeout=2.0)
        verdicts = await defer.gatherResults([udp.check(v) for v in SEED_VALUES])
        self.assertEqual([v.reply for v in verdicts], SEED_REPLIES)

    async def test_udpRefused(self):
        """
        Nothing listening on a loopback UDP port: the request fails with
        L{PrimedRefused}, which only the ICMP port unreachable can produce;
        its single attempt, were it left to time out, would fail with
        L{PrimedTimeout} instead.
        """
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        udp = PrimedUDPClient(self.reactor, "127.0.0.1", port, timeout=30.0, retries=0)
        with self.assertRaises(PrimedRefused):
            await udp.check(17)


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
