"""
The client library without a network: TCP over a L{StringTransport}, UDP
over a fake reactor, time from a L{task.Clock}; then against a real primed
service in this process.
"""

from twisted.internet import defer, task
from twisted.trial import unittest

from fakes import AbortingTransport, connected, lose
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
            self.assertEqual(
                str(failure.value),
                "connection lost before 2 answers arrived (Connection was closed cleanly.)",
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
            self.assertEqual(str(failure.value), "unexpected reply b'HTTP/1.1 400 Bad Req'")

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
            self.assertEqual(str(failure.value), "unexpected reply %r..." % (b"T" * 20))

    def test_replyLineLimit(self):
        """
        A reply line of up to 64 bytes is judged as a reply; a longer one is
        cut short as not primed's.
        """
        for length, message in [(64, "unexpected reply %r" % (b"x" * 20)),
                                (65, "unexpected reply %r..." % (b"x" * 20))]:
            protocol, transport = connected(transport=AbortingTransport())
            d = protocol.check(2)
            protocol.dataReceived(b"x" * length + b"\n")
            lose(protocol, transport)
            self.assertEqual(str(self.failureResultOf(d, PrimedProtocolError).value), message)

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


class ReadyTests(unittest.TestCase):
    def test_readyOverTCP(self):
        protocol, transport = connected()
        self.assertTrue(protocol.ready)
        self.assertIs(self.successResultOf(protocol.whenReady()), protocol)


class TLSTests(unittest.TestCase):
    """
    L{client.connect} over TLS against a real primed service in this
    process, its certificate made by C{openssl}: ready only once the
    certificate and the name are verified, and a clear L{PrimedTLSError}
    when they are not.
    """

    @classmethod
    def setUpClass(cls):
        import os
        import shutil
        import tempfile

        from support import makeCertificates

        cls.directory = tempfile.mkdtemp(prefix="primed-client-tls-")
        cls.paths = makeCertificates(cls.directory)
        cls.trustRoots = os.path.join(cls.directory, "trust")
        os.mkdir(cls.trustRoots)
        shutil.copy(cls.paths["ca"], cls.trustRoots)

    @classmethod
    def tearDownClass(cls):
        import shutil

        shutil.rmtree(cls.directory, ignore_errors=True)

    def setUp(self):
        from twisted.internet import reactor

        from primed import tap

        self.reactor = reactor
        config = tap.Options()
        config.parseOptions(
            ["--listen", f"ssl:0:interface=127.0.0.1:privateKey={self.paths['key']}"
             f":certKey={self.paths['cert']}", "--no-udp", "--threads", "1"]
        )
        top = tap.makeService(config, reactor)
        top.startService()
        self.addCleanup(top.stopService)
        self.port = top.getServiceNamed("primed").tcpPorts[0].getHost().port

    def endpoint(self, name, ca):
        from twisted.internet import endpoints, ssl

        with open(ca) as f:
            trust = ssl.Certificate.loadPEM(f.read())
        return endpoints.wrapClientTLS(
            ssl.optionsForClientTLS(name, trust),
            endpoints.HostnameEndpoint(self.reactor, "127.0.0.1", self.port),
        )

    async def test_connectString(self):
        protocol = await client.connect(
            self.reactor, f"tls:localhost:{self.port}:trustRoots={self.trustRoots}", timeout=30
        )
        self.addCleanup(protocol.transport.loseConnection)
        self.assertTrue(protocol.ready)
        self.assertEqual(await protocol.check(17), Verdict.PRIME)

    async def test_ipAddressName(self):
        protocol = await client.connectEndpoint(self.endpoint("127.0.0.1", self.paths["ca"]))
        self.addCleanup(protocol.transport.loseConnection)
        self.assertEqual(await protocol.check("4j"), Verdict.INVALID)

    async def test_untrusted(self):
        with self.assertRaises(client.PrimedTLSError) as caught:
            await client.connectEndpoint(self.endpoint("localhost", self.paths["other-ca"]))
        self.assertEqual(
            str(caught.exception),
            "TLS: certificate not trusted (unable to get local issuer certificate)",
        )

    async def test_nameMismatch(self):
        with self.assertRaises(client.PrimedTLSError) as caught:
            await client.connectEndpoint(self.endpoint("wrong.example", self.paths["ca"]))
        self.assertEqual(str(caught.exception), "TLS: certificate is not for wrong.example")

    async def test_requestBeforeHandshake(self):
        """
        A request made before the handshake (not waiting for C{whenReady})
        fails with the handshake's reason.
        """
        from twisted.internet import endpoints

        protocol = await endpoints.connectProtocol(
            self.endpoint("wrong.example", self.paths["ca"]), PrimedClientProtocol()
        )
        self.assertFalse(protocol.ready)
        with self.assertRaises(client.PrimedTLSError):
            await protocol.check(17)
        with self.assertRaises(client.PrimedTLSError):
            await protocol.whenReady()
