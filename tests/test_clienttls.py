"""
L{primed.clienttls} and TLS in L{primed.tcpclient}: L{client.connect} over
TLS against a real primed service in this process.
"""

from twisted.trial import unittest

from primed import client
from primed.client import PrimedClientProtocol
from primed.wire import Verdict


class TLSTests(unittest.TestCase):
    """
    L{client.connect} over TLS against a real primed service in this
    process, its certificate made by C{openssl}: ready only once the
    certificate and the name are verified, and a clear L{PrimedTLSError}
    when they are not.
    """

    @classmethod
    def setUpClass(cls):
        import tempfile

        from support import makeCertificates

        cls.directory = tempfile.mkdtemp(prefix="primed-client-tls-")
        cls.paths = makeCertificates(cls.directory)
        cls.trustRoots = cls.paths["trust"]

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
