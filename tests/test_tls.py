"""
L{primed.tls}: a TLS listener answers a client that stops sending, with
C{close_notify} or with a FIN, as a plain TCP listener does.  A real primed
service in this process, on an ephemeral loopback port, with a certificate
made by C{openssl}; the client is Python's C{ssl} module in a thread.
"""

import socket

from twisted.internet import protocol, threads
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial import unittest

from primed import client, tap
from primed.tls import HalfCloseableTLSFactory, HalfCloseableTLSProtocol
from primed.wire import Verdict
from support import SEED_REPLIES, SEED_VALUES, CertificatesMixin, askTLS

# A Mersenne prime of 1332 digits: checked in the service's pool, so its
# answer is still owed when the client stops sending.
BIG_PRIME = 2**4423 - 1


class HalfCloseTests(CertificatesMixin, unittest.TestCase):
    def serve(self, *extra):
        from twisted.internet import reactor

        config = tap.Options()
        config.parseOptions(
            [
                "--listen",
                f"ssl:0:interface=127.0.0.1:privateKey={self.paths['key']}"
                f":certKey={self.paths['cert']}",
                "--no-udp",
                "--threads",
                "1",
                *extra,
            ]
        )
        top = tap.makeService(config, reactor)
        service = top.getServiceNamed("primed")
        top.startService()
        self.addCleanup(top.stopService)
        self.service = service
        return service.tcpPorts[0].getHost().port

    def ask(self, port, payload, stop):
        return threads.deferToThread(askTLS, port, payload, self.paths["ca"], stop)

    async def test_seedValues(self):
        port = self.serve()
        payload = b"".join(b"%s\n" % str(v).encode() for v in SEED_VALUES)
        data, ending = await self.ask(port, payload, "close_notify")
        self.assertEqual(data, b"".join(SEED_REPLIES))
        self.assertEqual(ending, "close_notify")

    async def test_closeNotifyAnswered(self):
        """
        Everything sent before the client's close_notify is answered, a big
        check in the pool and an unterminated last line included; then the
        server sends its own close_notify and closes.
        """
        port = self.serve()
        payload = b"%d\n4\n5\n%d\n17" % (BIG_PRIME, BIG_PRIME)
        data, ending = await self.ask(port, payload, "close_notify")
        self.assertEqual((data, ending), (b"T\nF\nT\nT\nT\n", "close_notify"))

    async def test_finAnswered(self):
        """
        A bare TCP FIN (no close_notify) ends the input the same way.
        """
        port = self.serve()
        payload = b"%d\n4\n5\n%d\n17" % (BIG_PRIME, BIG_PRIME)
        data, ending = await self.ask(port, payload, "fin")
        self.assertEqual((data, ending), (b"T\nF\nT\nT\nT\n", "close_notify"))

    async def test_stopWhileClientCloses(self):
        """
        A client closing (its close_notify on the way) as a graceful stop
        begins: the stop closes the connection at once rather than wait, up
        to the drain deadline, for a close_notify it no longer reads.
        """
        from twisted.internet import endpoints, reactor, ssl
        from twisted.logger import globalLogPublisher

        port = self.serve("--drain-timeout", "60")
        with open(self.paths["ca"]) as f:
            trust = ssl.Certificate.loadPEM(f.read())
        endpoint = endpoints.wrapClientTLS(
            ssl.optionsForClientTLS("localhost", trust),
            endpoints.HostnameEndpoint(reactor, "127.0.0.1", port),
        )
        protocol = await client.connectEndpoint(endpoint)
        self.assertEqual(await protocol.check(17), Verdict.PRIME)
        warnings = []

        def observe(event):
            if "Drain timeout" in str(event.get("log_format", "")):
                warnings.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        protocol.transport.loseConnection()
        await self.service.stopService()
        self.assertEqual(warnings, [])
        self.assertEqual(self.service.factory.protocols, set())

    async def test_reusePortServesTLS(self):
        """
        With --reuseport primed binds the socket itself: an ssl: listener
        must still speak TLS (it used to serve plain text).
        """
        port = self.serve("--reuseport")
        data, ending = await self.ask(port, b"17\n18\n", "close_notify")
        self.assertEqual(data, b"T\nF\n")

    async def test_connectionLimit(self):
        """
        At the connection limit, a connection that never started its
        handshake is closed to make room for a new TLS client, which is
        served; no error is logged.
        """
        port = self.serve("--max-connections", "1", "--max-connections-per-source", "0")
        first = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(first.close)
        # Wait until the first connection is counted.
        for _ in range(500):
            if self.service.factory.protocols:
                break
            await deferLater(0.01)
        self.assertEqual(len(self.service.factory.protocols), 1)
        data, ending = await self.ask(port, b"17\n", "close_notify")
        self.assertEqual(data, b"T\n")
        self.assertEqual((self.service.factory.refused, self.service.factory.evicted), (0, 1))
        first.settimeout(10)
        try:
            self.assertEqual(first.recv(10), b"")
        except ConnectionResetError:
            pass  # aborted: what is expected

    async def test_idleHandshakeClosed(self):
        """
        A client that connects and never finishes its TLS handshake holds a
        connection slot only until --idle-timeout closes it, as a plain
        connection that sends nothing would.
        """
        port = self.serve("--idle-timeout", "0.2", "--max-connections", "1")
        stalled = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(stalled.close)
        stalled.sendall(b"\x16\x03\x01")  # the start of a ClientHello, no more
        for _ in range(1000):
            if self.service.factory.protocols:
                break
            await deferLater(0.01)
        self.assertEqual(len(self.service.factory.protocols), 1)
        for _ in range(1000):
            if not self.service.factory.protocols:
                break
            await deferLater(0.01)
        self.assertEqual(self.service.factory.protocols, set())
        data, ending = await self.ask(port, b"17\n", "close_notify")
        self.assertEqual(data, b"T\n")


def deferLater(seconds):
    from twisted.internet import reactor, task

    return task.deferLater(reactor, seconds, lambda: None)


class NotHalfCloseable(protocol.Protocol):
    lost = None

    def connectionLost(self, reason):
        self.lost = reason


class WrappedProtocolTests(CertificatesMixin, unittest.TestCase):
    """
    The TLS layer's own decisions, without a network.
    """

    def options(self):
        from twisted.internet import ssl

        with open(self.paths["key"]) as k, open(self.paths["cert"]) as c:
            return ssl.PrivateCertificate.loadPEM(k.read() + c.read()).options()

    def connect(self, wrapped, **options):
        self.clock = Clock()
        factory = HalfCloseableTLSFactory(
            self.options(), protocol.Factory.forProtocol(lambda: wrapped), self.clock,
            **options
        )
        self.factory = factory
        tls = factory.buildProtocol(None)
        transport = StringTransport()
        tls.makeConnection(transport)
        return tls, transport

    def test_refusedByWrappedFactory(self):
        """
        A wrapped factory that refuses (returns None) makes the TLS factory
        refuse too, rather than build a protocol around nothing.
        """
        refusing = protocol.Factory()
        refusing.buildProtocol = lambda addr: None
        factory = HalfCloseableTLSFactory(self.options(), refusing)
        self.assertIsNone(factory.buildProtocol(None))

    def test_handshakeTimeout(self):
        """
        A connection that has not completed its handshake within the
        deadline is aborted, counted and logged once per 10 seconds; the
        deadline is not kept after the connection is gone.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        first, transport = self.connect(NotHalfCloseable(), handshakeTimeout=3)
        self.clock.advance(2.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.factory.timedOut, 1)
        tls = self.factory.buildProtocol(None)
        tls.makeConnection(StringTransport())
        self.clock.advance(3)
        self.assertEqual(self.factory.timedOut, 2)
        messages = [formatEvent(e) for e in events if "handshake" in formatEvent(e)]
        self.assertEqual(len(messages), 1)
        self.assertIn("no handshake within 3s (1 so far)", messages[0])
        gone, _ = self.connect(NotHalfCloseable(), handshakeTimeout=3)
        gone.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_noHandshakeTimeout(self):
        """
        C{0}: no deadline at all.
        """
        self.connect(NotHalfCloseable(), handshakeTimeout=0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_handshakeDoneCancelsTimeout(self):
        """
        A completed handshake cancels the deadline.
        """
        from twisted.internet import ssl
        from twisted.test.iosim import connectedServerAndClient

        with open(self.paths["ca"]) as f:
            ca = ssl.Certificate.loadPEM(f.read())
        self.clock = clock = Clock()
        server = HalfCloseableTLSFactory(
            self.options(), protocol.Factory.forProtocol(NotHalfCloseable), clock, 5)
        client = TLSMemoryBIOFactory(
            ssl.optionsForClientTLS("localhost", trustRoot=ca), True,
            protocol.Factory.forProtocol(protocol.Protocol))
        serverProtocol, clientProtocol, pump = connectedServerAndClient(
            lambda: server.buildProtocol(None), lambda: client.buildProtocol(None),
            greet=False, clock=clock)
        pump.flush()
        self.assertTrue(serverProtocol._handshakeDone)
        clock.advance(10)
        self.assertEqual(server.timedOut, 0)
        self.assertFalse(serverProtocol.transport.disconnecting)

    def test_finBeforeHandshake(self):
        """
        A FIN before the handshake ends closes the connection: there is
        nobody to answer.
        """
        wrapped = NotHalfCloseable()
        tls, transport = self.connect(wrapped)
        self.assertIsInstance(tls, HalfCloseableTLSProtocol)
        tls.readConnectionLost()
        self.assertTrue(transport.disconnecting)
        self.assertTrue(tls.readClosed)

