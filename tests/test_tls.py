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
from primed.counters import Counters
from primed.tls import (
    UNEXPECTED_MESSAGE_ALERT,
    HalfCloseableTLSFactory,
    HalfCloseableTLSProtocol,
)
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


    def plainRequest(self, port, payload, prefix=b""):
        """
        Send C{payload} in clear and read until the server closes; in a
        thread, so the service in this process can answer.
        """

        def talk():
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(prefix + payload)
                received = []
                while True:
                    chunk = sock.recv(4096)
                    if not chunk:
                        return b"".join(received)
                    received.append(chunk)

        return threads.deferToThread(talk)

    async def test_plainTextClosedAtOnce(self):
        """
        A request in clear (no TLS) is answered with a fatal TLS alert and
        the connection closed, at once: OpenSSL alone would wait for a
        5-byte record header that C{17\n} never completes.  Counted, and
        logged once per 10 seconds; TLS clients are still served.
        """
        from twisted.logger import globalLogPublisher

        warnings = []

        def observe(event):
            if "not a TLS handshake" in str(event.get("log_format", "")):
                warnings.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        port = self.serve()
        self.assertEqual(await self.plainRequest(port, b"17\n"), UNEXPECTED_MESSAGE_ALERT)
        self.assertEqual(await self.plainRequest(port, b"GET / HTTP/1.0\r\n\r\n"),
                         UNEXPECTED_MESSAGE_ALERT)
        self.assertEqual(self.service.counters.tlsPlainTextClosed, 2)
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["start"], b"17\n")
        data, ending = await self.ask(port, b"17\n", "close_notify")
        self.assertEqual(data, b"T\n")
        self.assertEqual(self.service.counters.tlsPlainTextClosed, 2)

    async def test_plainTextBehindProxy(self):
        """
        Behind C{haproxy:ssl:} the PROXY header comes first, in clear: the
        check looks at the first byte after it, and a TLS client with a
        header is still served.
        """
        from twisted.internet import reactor

        config = tap.Options()
        config.parseOptions([
            "--listen",
            f"haproxy:ssl:0:interface=127.0.0.1:privateKey={self.paths['key']}"
            f":certKey={self.paths['cert']}",
            "--no-udp", "--threads", "1",
        ])
        top = tap.makeService(config, reactor)
        top.startService()
        self.addCleanup(top.stopService)
        service = top.getServiceNamed("primed")
        port = service.tcpPorts[0].getHost().port
        header = b"PROXY TCP4 192.0.2.1 127.0.0.1 4000 8443\r\n"
        self.assertEqual(await self.plainRequest(port, b"17\n", prefix=header),
                         UNEXPECTED_MESSAGE_ALERT)
        self.assertEqual(service.counters.tlsPlainTextClosed, 1)
        data, ending = await threads.deferToThread(
            askTLS, port, b"17\n", self.paths["ca"], "close_notify", prefix=header
        )
        self.assertEqual(data, b"T\n")
        self.assertEqual(service.counters.tlsPlainTextClosed, 1)


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

    def connect(self, wrapped, counters=None, clock=None, **options):
        self.clock = clock if clock is not None else Clock()
        factory = HalfCloseableTLSFactory(
            self.options(), protocol.Factory.forProtocol(lambda: wrapped), self.clock,
            counters, **options
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
            self.options(), protocol.Factory.forProtocol(NotHalfCloseable), clock,
            handshakeTimeout=5)
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


    def test_firstByteNotHandshake(self):
        """
        A first byte other than 0x16 (a handshake record) draws the alert and
        a close, before OpenSSL sees anything; the wrapped protocol learns
        the connection closed cleanly; nothing sent later is read.
        """
        from twisted.internet import task
        from twisted.internet.error import ConnectionDone

        for first in [b"1", b"\x15\x03\x01\x00\x02\x02\x0a", b"\x17", b"G"]:
            wrapped, counters = NotHalfCloseable(), Counters()
            tls, transport = self.connect(wrapped, counters, task.Clock())
            tls.dataReceived(first + b"7\n")
            self.assertEqual(transport.value(), UNEXPECTED_MESSAGE_ALERT, first)
            self.assertTrue(transport.disconnecting)
            self.assertEqual(counters.tlsPlainTextClosed, 1)
            self.assertEqual(tls.factory.plainTextRefused, 1)
            transport.clear()
            tls.dataReceived(b"\x16\x03\x01\x00\x05hello")
            self.assertEqual(transport.value(), b"")
            tls.connectionLost(Failure(ConnectionDone()))
            self.assertTrue(wrapped.lost.check(ConnectionDone), wrapped.lost)

    def test_handshakeByteAccepted(self):
        """
        A first byte of 0x16 goes to OpenSSL, whatever comes next: a
        ClientHello cut short is waited for, not refused.
        """
        from twisted.internet import task

        counters = Counters()
        tls, transport = self.connect(NotHalfCloseable(), counters, task.Clock())
        tls.dataReceived(b"\x16")
        tls.dataReceived(b"\x03")
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)
        self.assertEqual(counters.tlsPlainTextClosed, 0)

    def test_logRateLimited(self):
        """
        One log line per 10 seconds, however many plain-text clients come;
        each counted.
        """
        from twisted.internet import task
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock, counters = task.Clock(), Counters()
        factory = HalfCloseableTLSFactory(
            self.options(), protocol.Factory.forProtocol(NotHalfCloseable), clock, counters
        )
        for advance in [0, 1, 8.9, 0.1, 3]:
            clock.advance(advance)
            tls = factory.buildProtocol(None)
            tls.makeConnection(StringTransport())
            tls.dataReceived(b"17\n")
        logged = [e for e in events if "not a TLS handshake" in e.get("log_format", "")]
        self.assertEqual([e["refused"] for e in logged], [1, 4])
        self.assertEqual(counters.tlsPlainTextClosed, 5)


class KeyPermissionTests(CertificatesMixin, unittest.TestCase):
    """
    A private key file every user may read draws one warning when the
    listener starts, naming the file and the fix; group-readable (Debian's
    C{ssl-cert} convention) does not.
    """

    def keyWithMode(self, mode, name="key.pem"):
        import os
        import shutil
        import tempfile

        directory = tempfile.mkdtemp(prefix="primed-key-")
        self.addCleanup(shutil.rmtree, directory, True)
        os.chmod(directory, 0o755)  # mkdtemp's 0700 would hide any key
        path = os.path.join(directory, name)
        shutil.copy(self.paths["key"], path)
        os.chmod(path, mode)
        return path

    def warnings(self, *keys):
        from twisted.internet import reactor
        from twisted.logger import globalLogPublisher

        events = []

        def observe(event):
            if "private key" in str(event.get("log_format", "")):
                events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        argv = []
        for key in keys:
            escaped = key.replace(":", "\\:")
            argv += ["--listen", f"ssl:0:interface=127.0.0.1:privateKey={escaped}"
                                 f":certKey={self.paths['cert']}"]
        config = tap.Options()
        config.parseOptions([*argv, "--no-udp", "--threads", "1"])
        top = tap.makeService(config, reactor)
        top.startService()
        self.addCleanup(top.stopService)
        return events

    def test_worldReadable(self):
        from twisted.logger import formatEvent

        key = self.keyWithMode(0o644)
        [event] = self.warnings(key)
        self.assertEqual(event["log_level"].name, "warn")
        self.assertEqual(
            formatEvent(event),
            f"The private key file {key} is readable by every user: run "
            f"'chmod o-r {key}' (or 'chmod 640 {key}', group-readable)",
        )

    def test_onceForTwoListeners(self):
        key = self.keyWithMode(0o604, name="a:key.pem")  # a colon, escaped
        self.assertEqual([e["path"] for e in self.warnings(key, key)], [key])

    def test_inAClosedDirectory(self):
        """
        A key file of mode 0644 in a directory others may not enter (0700;
        Debian's /etc/ssl/private is 0710) is not readable by every user:
        no warning, which would say it is.  Nor for a symlink (mode 0777)
        to a key of mode 0600.
        """
        import os

        key = self.keyWithMode(0o644)
        os.chmod(os.path.dirname(key), 0o700)
        private = self.keyWithMode(0o600)
        link = private + ".link"
        os.symlink(private, link)
        self.assertEqual(self.warnings(key, link), [])

    def test_ownerOrGroupOnly(self):
        self.assertEqual(self.warnings(self.keyWithMode(0o600), self.keyWithMode(0o640)), [])


class PrivateKeyPathTests(unittest.TestCase):
    def test_paths(self):
        from primed.tls import privateKeyPath

        for description, path in [
            ("ssl:8443:privateKey=/etc/primed/key.pem:certKey=/etc/primed/cert.pem",
             "/etc/primed/key.pem"),
            ("haproxy:ssl:8443:certKey=c.pem:privateKey=k.pem", "k.pem"),
            ("ssl:8443:privateKey=C\\:\\\\keys\\\\k.pem", "C:\\keys\\k.pem"),
            ("ssl:8443:certKey=both.pem", "server.pem"),
            ("ssl:8443", "server.pem"),
        ]:
            self.assertEqual(privateKeyPath(description), path, description)


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
