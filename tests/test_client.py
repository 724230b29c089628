"""
L{primed.client.PrimedClient}, the connection that survives a lost backend,
over L{StringTransport}s and a L{task.Clock}; then the client APIs against a
real primed service in this process.
"""

import errno

from twisted.internet import defer, task
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.trial import unittest

from fakes import AbortingTransport, lose
from primed import client
from primed.client import (
    PrimedClient,
    PrimedTimeout,
    PrimedConnectionLost,
    PrimedProtocolError,
    PrimedRefused,
    PrimedTLSError,
    PrimedUDPClient,
)
from primed.wire import Verdict


class FakeEndpoint:
    """
    A client endpoint whose connection attempts the test completes or fails
    by hand, each connection over a L{StringTransport}.
    """

    def __init__(self):
        self.attempts = []

    def connect(self, factory):
        d = defer.Deferred()
        self.attempts.append((factory, d))
        return d

    def succeed(self):
        """
        Complete the latest attempt; return its protocol and transport.
        """
        factory, d = self.attempts[-1]
        protocol = factory.buildProtocol(None)
        transport = AbortingTransport()
        protocol.makeConnection(transport)
        d.callback(protocol)
        return protocol, transport

    def fail(self, exception):
        self.attempts[-1][1].errback(exception)


class Receiver:
    """
    Records every call, so an answer given twice shows.
    """

    def __init__(self, got, name):
        self.got, self.name = got, name

    def callback(self, verdict):
        self.got.append((self.name, verdict))

    def errback(self, reason):
        self.got.append((self.name, Failure(reason).value))


class PrimedClientTests(unittest.TestCase):
    """
    L{PrimedClient}: a lost connection is made again, and what it had not
    answered is resent, in order, each answer given once.
    """

    def setUp(self):
        self.clock = task.Clock()
        self.endpoint = FakeEndpoint()
        self.got = []

    def connected(self, retries=3, timeout=10.0):
        self.client = PrimedClient(self.clock, self.endpoint, timeout, retries)
        d = self.client.connect()
        protocol, transport = self.endpoint.succeed()
        self.assertIs(self.successResultOf(d), self.client)
        return protocol, transport

    def ask(self, *numbers):
        for number in numbers:
            self.client.request(number, Receiver(self.got, str(number)))

    def test_pipelined(self):
        protocol, transport = self.connected()
        self.ask(2, 4, "4j")
        self.assertEqual(transport.value(), b"2\n4\n4j\n")
        protocol.dataReceived(b"T\nF\nE\n")
        self.assertEqual(
            self.got, [("2", Verdict.PRIME), ("4", Verdict.NOT_PRIME), ("4j", Verdict.INVALID)]
        )
        self.assertEqual(len(self.endpoint.attempts), 1)

    def test_resendsUnansweredAtOnce(self):
        """
        The connection is lost after answering the first of four requests:
        a new one is made at once, the other three are sent on it, in order,
        and each receiver gets one answer.
        """
        protocol, transport = self.connected()
        self.ask(2, 3, 4, 5)
        protocol.dataReceived(b"T\n")
        lose(protocol, transport)
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.clock.advance(0)
        self.assertEqual(len(self.endpoint.attempts), 2)
        second, transport2 = self.endpoint.succeed()
        self.assertEqual(transport2.value(), b"3\n4\n5\n")
        self.ask(6)
        second.dataReceived(b"T\nF\nT\nF\n")
        self.assertEqual(
            self.got,
            [("2", Verdict.PRIME), ("3", Verdict.PRIME), ("4", Verdict.NOT_PRIME),
             ("5", Verdict.PRIME), ("6", Verdict.NOT_PRIME)],
        )
        self.assertEqual(self.client.reconnections, 1)

    def test_requestsWhileReconnecting(self):
        """
        Requests made while the new connection is under way wait for it,
        after the ones being resent.
        """
        protocol, transport = self.connected()
        self.ask(2)
        lose(protocol, transport)
        self.ask(3)
        self.clock.advance(0)
        self.ask(4)
        second, transport2 = self.endpoint.succeed()
        self.assertEqual(transport2.value(), b"2\n3\n4\n")

    def test_retriesWithDelays(self):
        """
        Attempts that fail to connect are repeated after 0, 0.5, 1, 2, 4
        and then 5 seconds; after C{retries} of them every unanswered
        request fails, once, with a reason naming the loss and the last
        failure.
        """
        protocol, transport = self.connected(retries=6)
        self.ask(2, 3)
        lose(protocol, transport)
        delays = []
        for attempt in range(6):
            before = self.clock.seconds()
            while len(self.endpoint.attempts) < attempt + 2:
                self.clock.advance(0.25)
            delays.append(self.clock.seconds() - before)
            self.endpoint.fail(ConnectionRefusedError(osError=errno.ECONNREFUSED))
        self.assertEqual(delays[1:], [0.5, 1.0, 2.0, 4.0, 5.0])
        self.assertEqual([name for name, _ in self.got], ["2", "3"])
        [error] = {type(e) for _, e in self.got}
        self.assertIs(error, PrimedConnectionLost)
        self.assertEqual(
            str(self.got[0][1]),
            "the server closed the connection without answering (perhaps over its connection limit);"
            " then 6 reconnection attempts failed (Connection refused)",
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_answerResetsRetries(self):
        """
        Any answer resets the count: isolated losses, each followed by an
        answer, never use up the retries.
        """
        protocol, transport = self.connected(retries=1)
        for number in range(5):
            self.ask(number)
            lose(protocol, transport)
            self.clock.advance(0)
            protocol, transport = self.endpoint.succeed()
            protocol.dataReceived(b"F\n")
        self.assertEqual(len(self.got), 5)
        self.assertEqual({v for _, v in self.got}, {Verdict.NOT_PRIME})
        self.assertEqual(self.client.reconnections, 5)

    def test_lostAgainWithoutAnswer(self):
        """
        A new connection lost again before any answer counts as a retry.
        """
        protocol, transport = self.connected(retries=2)
        self.ask(2)
        for _ in range(3):
            lose(protocol, transport)
            self.clock.advance(5)
            if len(self.got):
                break
            protocol, transport = self.endpoint.succeed()
        self.assertEqual(len(self.endpoint.attempts), 3)
        [(name, error)] = self.got
        self.assertIsInstance(error, PrimedConnectionLost)

    def test_noRetries(self):
        """
        C{retries=0}: a connection lost owing answers fails them, as before.
        """
        protocol, transport = self.connected(retries=0)
        self.ask(2)
        lose(protocol, transport)
        self.clock.advance(10)
        self.assertEqual(len(self.endpoint.attempts), 1)
        [(name, error)] = self.got
        self.assertEqual(
            str(error), "the server closed the connection without answering (perhaps over its connection limit)"
        )

    def test_silenceReconnects(self):
        """
        A connection silent for the timeout while owing answers (a backend
        that hangs, a host gone without a reset) is dropped and replaced.
        """
        protocol, transport = self.connected(timeout=10.0)
        self.ask(3)
        protocol.dataReceived(b"T\n")
        self.ask(2)
        self.clock.advance(10)
        self.assertTrue(transport.aborted)
        lose(protocol, transport)  # what the real transport then does
        self.clock.advance(0)
        second, transport2 = self.endpoint.succeed()
        self.assertEqual(transport2.value(), b"2\n")
        second.dataReceived(b"T\n")
        self.assertEqual(self.got, [("3", Verdict.PRIME), ("2", Verdict.PRIME)])

    def test_silentFromTheStart(self):
        """
        A server that has answered nothing and stays silent for the timeout
        is not tried again: it is not known to be primed (a TLS or HTTP
        server waiting for more), and another attempt would only wait as
        long.  The error flags the --tls advice.
        """
        protocol, transport = self.connected(timeout=10.0)
        self.ask(2, 3)
        self.clock.advance(10)
        self.assertTrue(transport.aborted)
        lose(protocol, transport)
        self.clock.advance(10)
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.assertEqual([type(e) for _, e in self.got], [PrimedTimeout] * 2)
        self.assertEqual(str(self.got[0][1]), "no reply for 10 s")
        self.assertTrue(self.got[0][1].tlsHint)

    def test_slowFirstAnswerRetried(self):
        """
        A primed whose pool is busy may be silent for the timeout before
        its first answer.  Requests of five bytes or more would have drawn
        an alert or a close from a TLS server (a whole record header), so
        this silence is a slow primed: tried again, as before, and answered
        on the new connection; the error it would carry has no TLS advice.
        """
        big = 2 ** 127 - 1
        protocol, transport = self.connected(timeout=10.0)
        self.ask(big)
        self.clock.advance(10)
        self.assertTrue(transport.aborted)
        lose(protocol, transport)
        self.clock.advance(0)
        self.assertEqual(len(self.endpoint.attempts), 2)
        second, transport2 = self.endpoint.succeed()
        self.assertEqual(transport2.value(), b"%d\n" % big)
        second.dataReceived(b"T\n")
        self.assertEqual(self.got, [(str(big), Verdict.PRIME)])

    def test_closedLateFromTheStart(self):
        """
        The same for a server that closes the connection without a byte,
        but only after a silence (2 s or more: an HTTP server's timeout);
        one that closes at once (its connection limit) is tried again.
        """
        protocol, transport = self.connected(timeout=10.0)
        self.ask(2)
        self.clock.advance(1.9)
        lose(protocol, transport)
        self.clock.advance(0)
        self.assertEqual(len(self.endpoint.attempts), 2)
        protocol, transport = self.endpoint.succeed()
        self.clock.advance(2)
        lose(protocol, transport)
        self.clock.advance(10)
        self.assertEqual(len(self.endpoint.attempts), 2)
        [(name, error)] = self.got
        self.assertIsInstance(error, PrimedConnectionLost)
        self.assertEqual(
            str(error),
            "the server closed the connection without answering (perhaps over its connection"
            " limit); then 1 reconnection attempt failed (the server closed the connection"
            " after 2 s without answering)",
        )
        self.assertTrue(error.tlsHint)

    def test_silenceAfterAnAnswerRetried(self):
        """
        Once the server has answered, a timeout or a late close is a hung or
        lost backend, tried again as any loss is.
        """
        protocol, transport = self.connected(timeout=10.0)
        self.ask(2)
        protocol.dataReceived(b"T\n")
        self.ask(3)
        self.clock.advance(3)
        lose(protocol, transport)
        self.clock.advance(0)
        second, transport2 = self.endpoint.succeed()
        self.ask(5)
        self.clock.advance(10)
        lose(second, transport2)
        self.clock.advance(0.5)
        self.assertEqual(len(self.endpoint.attempts), 3)

    def test_idleCloseCostsNothing(self):
        """
        A connection closed owing nothing (primed's idle timeout) is made
        again for the next request, without using a retry.
        """
        protocol, transport = self.connected(retries=0)
        lose(protocol, transport)
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.ask(7)
        self.assertEqual(len(self.endpoint.attempts), 2)
        second, transport2 = self.endpoint.succeed()
        second.dataReceived(b"T\n")
        self.assertEqual(self.got, [("7", Verdict.PRIME)])

    def test_protocolErrorNotRetried(self):
        """
        A server that is not primed will not become primed on reconnection.
        """
        protocol, transport = self.connected()
        self.ask(2, 3)
        protocol.dataReceived(b"HTTP/1.1 400 Bad Request\n")
        lose(protocol, transport)
        self.clock.advance(10)
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.assertEqual([type(e) for _, e in self.got], [PrimedProtocolError] * 2)

    def test_tlsErrorNotRetried(self):
        protocol, transport = self.connected()
        self.ask(2)
        lose(protocol, transport)
        self.clock.advance(0)
        self.endpoint.fail(PrimedTLSError("TLS: certificate is not for x"))
        self.clock.advance(10)
        self.assertEqual(len(self.endpoint.attempts), 2)
        [(name, error)] = self.got
        self.assertEqual(
            str(error),
            "the server closed the connection without answering (perhaps over its connection limit);"
            " then 1 reconnection attempt failed (TLS: certificate is not for x)",
        )

    def test_firstConnectNotRetried(self):
        self.client = PrimedClient(self.clock, self.endpoint, 10.0, 3)
        d = self.client.connect()
        self.endpoint.fail(ConnectionRefusedError())
        self.failureResultOf(d, ConnectionRefusedError)
        self.clock.advance(10)
        self.assertEqual(len(self.endpoint.attempts), 1)

    def test_afterFirstConnectFailed(self):
        """
        A request made after the first connection failed is not left waiting
        forever for that attempt: it gets a connection of its own (and one
        made while the first attempt was under way fails with it).
        """
        self.client = PrimedClient(self.clock, self.endpoint, 10.0, 3)
        d = self.client.connect()
        self.ask(5)
        self.endpoint.fail(ConnectionRefusedError())
        self.failureResultOf(d, ConnectionRefusedError)
        [(name, error)] = self.got
        self.assertIsInstance(error, ConnectionRefusedError)
        self.ask(7)
        self.assertEqual(len(self.endpoint.attempts), 2)
        protocol, transport = self.endpoint.succeed()
        self.assertEqual(transport.value(), b"7\n")
        protocol.dataReceived(b"T\n")
        self.assertEqual(self.got[1:], [("7", Verdict.PRIME)])

    def test_close(self):
        protocol, transport = self.connected()
        self.ask(2)
        lose(protocol, transport)
        self.client.close()
        self.clock.advance(10)
        self.assertEqual(len(self.endpoint.attempts), 1)
        [(name, error)] = self.got
        self.assertIsInstance(error, PrimedConnectionLost)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_requestAfterClose(self):
        """
        A request made after L{PrimedClient.close} fails at once; it made a
        connection, closed it, and was never answered.
        """
        protocol, transport = self.connected()
        self.client.close()
        self.ask(2)
        [(name, error)] = self.got
        self.assertIsInstance(error, PrimedConnectionLost)
        self.assertEqual(len(self.endpoint.attempts), 1)

    def test_closeClosesTheConnection(self):
        """
        L{PrimedClient.close} closes a live connection, and what was
        unanswered fails saying the client was closed.
        """
        protocol, transport = self.connected()
        self.ask(2)
        self.client.close()
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(self.client.protocol)
        [(name, error)] = self.got
        self.assertEqual((type(error), str(error)), (PrimedConnectionLost, "the client was closed"))
        self.ask(3)
        self.assertEqual(str(self.got[1][1]), "the client was closed")

    def test_requestConnects(self):
        """
        A client never told to L{connect <PrimedClient.connect>} connects
        for its first request.
        """
        self.client = PrimedClient(self.clock, self.endpoint, 10.0, 3)
        self.ask(17)
        protocol, transport = self.endpoint.succeed()
        self.assertEqual(transport.value(), b"17\n")
        protocol.dataReceived(b"T\n")
        self.assertEqual(self.got, [("17", Verdict.PRIME)])
        self.assertEqual(self.client.reconnections, 0)

    def test_oneAttemptAtATime(self):
        """
        Requests made while a new connection is being made, or waited for,
        start no other attempt; close cancels the one under way.
        """
        protocol, transport = self.connected()
        self.ask(2)
        lose(protocol, transport)
        self.clock.advance(0)
        self.ask(3, 4)
        self.assertEqual(len(self.endpoint.attempts), 2)
        attempt = self.endpoint.attempts[-1][1]
        self.assertFalse(attempt.called)
        self.client.close()
        self.assertTrue(attempt.called)  # cancelled

    def test_afterGivingUp(self):
        """
        Once the retries are spent and the unanswered requests failed, the
        next request makes a connection of its own.
        """
        protocol, transport = self.connected(retries=1)
        self.ask(2)
        lose(protocol, transport)
        self.clock.advance(0)
        self.endpoint.fail(ConnectionRefusedError(osError=errno.ECONNREFUSED))
        self.assertIsInstance(self.got[0][1], PrimedConnectionLost)
        self.ask(3)
        self.assertEqual(len(self.endpoint.attempts), 3)
        protocol, transport = self.endpoint.succeed()
        self.assertEqual(transport.value(), b"3\n")
        # The retries start afresh: this loss is retried too.
        lose(protocol, transport)
        self.clock.advance(0)
        self.assertEqual(len(self.endpoint.attempts), 4)
        protocol, transport = self.endpoint.succeed()
        protocol.dataReceived(b"T\n")
        self.assertEqual(self.got[1:], [("3", Verdict.PRIME)])

    def test_attemptCancelledElsewhere(self):
        """
        An attempt cancelled by something other than L{PrimedClient.close}
        is a failed attempt like any other: retried.
        """
        protocol, transport = self.connected()
        self.ask(2)
        lose(protocol, transport)
        self.clock.advance(0)
        self.endpoint.fail(defer.CancelledError())
        self.clock.advance(0.5)
        self.assertEqual(len(self.endpoint.attempts), 3)
        self.assertEqual(self.got, [])

    def test_closeWhileConnecting(self):
        """
        Closing while a connection is being made cancels the attempt.
        """
        self.client = PrimedClient(self.clock, self.endpoint, 10.0, 3)
        d = self.client.connect()
        self.client.close()
        self.failureResultOf(d, defer.CancelledError)
        self.clock.advance(20)
        self.assertEqual(len(self.endpoint.attempts), 1)

    def test_connectTimeout(self):
        """
        A connection attempt that never completes (an endpoint with no
        timeout of its own, a TLS handshake that stalls) fails a second
        after the timeout.
        """
        self.client = PrimedClient(self.clock, self.endpoint, 10.0, 3)
        d = self.client.connect()
        self.clock.advance(10.999)
        self.assertNoResult(d)
        self.clock.advance(0.001)
        self.failureResultOf(d, defer.TimeoutError)

    def test_answerForgetsTheLoss(self):
        """
        Once answered, a loss is forgotten: giving up later names the loss
        that started the failed attempts, not an earlier one.
        """
        protocol, transport = self.connected(retries=1)
        self.ask(2)
        lose(protocol, transport)
        self.clock.advance(0)
        protocol, transport = self.endpoint.succeed()
        protocol.dataReceived(b"T\n")
        self.ask(3, 4)
        protocol.connectionLost(Failure(ConnectionRefusedError("second loss")))
        self.clock.advance(0)
        self.endpoint.fail(ConnectionRefusedError(osError=errno.ECONNREFUSED))
        self.assertEqual(
            str(self.got[1][1]),
            "connection lost with 2 answers owed (Connection was refused by other side:"
            " second loss.); then 1 reconnection attempt failed (Connection refused)",
        )

    def test_check(self):
        protocol, transport = self.connected()
        d = self.client.check(17)
        protocol.dataReceived(b"T\n")
        self.assertEqual(self.successResultOf(d), Verdict.PRIME)
        self.assertRaises(ValueError, self.client.check, "1\n2")


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

    async def test_primedClientSurvivesCut(self):
        """
        L{PrimedClient} against the real service: its connection cut by the
        server while answers are owed (a 2917-digit check running in the
        pool holds back the others), it reconnects and resends, and every
        answer arrives once, in order.
        """
        from twisted.internet import task

        connection = PrimedClient(
            self.reactor, f"tcp:host=127.0.0.1:port={self.tcpPort}", timeout=30
        )
        await connection.connect()
        self.addCleanup(connection.close)
        factory = self.service.factory
        big = 2**9689 - 1  # a Mersenne prime
        checks = [connection.check(n) for n in [4, big, 5, big, 7]]
        for _ in range(100000):
            if sum(p.unansweredCount() for p in factory.protocols):
                break
            await task.deferLater(self.reactor, 0, lambda: None)
        self.assertGreater(factory.abortAll(), 0)
        verdicts = await defer.gatherResults(checks)
        self.assertEqual(
            verdicts,
            [Verdict.NOT_PRIME, Verdict.PRIME, Verdict.PRIME, Verdict.PRIME, Verdict.PRIME],
        )
        self.assertEqual(connection.reconnections, 1)

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
