"""
L{primed.tls}: a TLS listener answers a client that stops sending, with
C{close_notify} or with a FIN, as a plain TCP listener does.  A real primed
service in this process, on an ephemeral loopback port, with a certificate
made by C{openssl}; the client is Python's C{ssl} module in a thread.
"""

import socket

from twisted.internet import protocol, threads
from twisted.internet.testing import StringTransport
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
        Over the connection limit the new TLS connection is closed at once,
        with no error logged, and the open one is still served.
        """
        port = self.serve("--max-connections", "1")
        first = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(first.close)
        # Wait until the first connection is counted.
        for _ in range(500):
            if self.service.factory.protocols:
                break
            await deferLater(0.01)
        self.assertEqual(len(self.service.factory.protocols), 1)
        with self.assertRaises(Exception):
            await self.ask(port, b"17\n", "close_notify")
        self.assertEqual(self.service.factory.refused, 1)
        first.close()
        for _ in range(500):
            if not self.service.factory.protocols:
                break
            await deferLater(0.01)
        data, ending = await self.ask(port, b"17\n", "close_notify")
        self.assertEqual(data, b"T\n")

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

    def connect(self, wrapped):
        factory = HalfCloseableTLSFactory(
            self.options(), protocol.Factory.forProtocol(lambda: wrapped)
        )
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



class RecipeTests(unittest.TestCase):
    """
    The documentation's recipe for a CA and a server certificate
    (docs/operating/tls.rst) makes certificates that Python's strict
    verification accepts: C{VERIFY_X509_STRICT}, the default from Python
    3.13, which refuses a CA without C{keyUsage}.
    """

    def test_docsRecipe(self):
        import os
        import shutil
        import ssl
        import subprocess
        import tempfile

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(root, "docs", "operating", "tls.rst"), encoding="utf-8") as f:
            text = f.read()
        block = text[text.index("\n    openssl req -x509"):].split("\n\n", 1)[0]
        script = "\n".join(line[4:] for line in block.strip("\n").splitlines())
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        subprocess.run(["sh", "-ec", script], cwd=directory, check=True,
                       capture_output=True, timeout=60)

        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(os.path.join(directory, "cert.pem"),
                               os.path.join(directory, "key.pem"))
        client = ssl.create_default_context(cafile=os.path.join(directory, "ca.pem"))
        client.verify_flags |= ssl.VERIFY_X509_STRICT
        ends = []
        for context, side in ((client, {"server_hostname": "localhost"}),
                              (server, {"server_side": True})):
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            ends.append((context.wrap_bio(incoming, outgoing, **side), incoming, outgoing))
        done = [False, False]
        for _ in range(20):  # a TLS 1.3 handshake takes two round trips
            for i, (tls, _incoming, outgoing) in enumerate(ends):
                if not done[i]:
                    try:
                        tls.do_handshake()
                        done[i] = True
                    except ssl.SSLWantReadError:
                        pass
                ends[1 - i][1].write(outgoing.read())
            if all(done):
                break
        self.assertEqual(done, [True, True])
        self.assertEqual(ends[0][0].getpeercert()["subject"], ((("commonName", "localhost"),),))
