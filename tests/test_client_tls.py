"""
L{primed.client.tls} and TLS in L{primed.client.tcp}: L{client.connect} over
TLS against a real primed service in this process.
"""

from twisted.trial import unittest

from support import CertificatesMixin
from primed import client
from primed.client import tls as clienttls
from primed.client import PrimedClientProtocol
from primed.wire import Verdict


class TLSTests(CertificatesMixin, unittest.TestCase):
    """
    L{client.connect} over TLS against a real primed service in this
    process, its certificate made by C{openssl}: ready only once the
    certificate and the name are verified, and a clear L{PrimedTLSError}
    when they are not.
    """

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.trustRoots = cls.paths["trust"]

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


class HandshakeFailureTests(unittest.TestCase):
    """
    L{clienttls.handshakeFailure} on the failures a handshake ends with, one
    by one: the exact words, since they are all the user sees.
    """

    def failure(self, exception):
        from twisted.python.failure import Failure

        return Failure(exception)

    def mismatch(self, *identities):
        from service_identity import VerificationError
        from service_identity.hazmat import DNSMismatch, IPAddressMismatch

        errors = [
            IPAddressMismatch(mismatched_id=i) if hasattr(i, "ip") else DNSMismatch(mismatched_id=i)
            for i in identities
        ]
        return clienttls.handshakeFailure(self.failure(VerificationError(errors=errors)), None)

    def test_nameMismatch(self):
        from service_identity.hazmat import DNS_ID

        e = self.mismatch(DNS_ID("wrong.example"))
        self.assertIs(type(e), client.PrimedTLSError)
        self.assertEqual(str(e), "TLS: certificate is not for wrong.example")

    def test_addressMismatch(self):
        from service_identity.hazmat import IPAddress_ID

        e = self.mismatch(IPAddress_ID("127.0.0.2"))
        self.assertEqual(str(e), "TLS: certificate is not for 127.0.0.2")

    def test_severalMismatches(self):
        from service_identity.hazmat import DNS_ID, IPAddress_ID

        e = self.mismatch(DNS_ID("a.example"), IPAddress_ID("::1"))
        self.assertEqual(str(e), "TLS: certificate is not for a.example or ::1")

    def test_mismatchWithoutNames(self):
        """
        A mismatch that names nothing (an identity of another kind, or no
        errors at all) still reads as a sentence.
        """
        from service_identity import VerificationError

        class Other:
            mismatched_id = object()

        for errors in ([], [Other()], [object()]):
            e = clienttls.handshakeFailure(
                self.failure(VerificationError(errors=errors)), None
            )
            self.assertEqual(str(e), "TLS: certificate is not for the host name")

    def test_untrustedWithoutDetail(self):
        """
        A verify failure whose transport cannot say why still says that the
        certificate was not trusted.
        """
        from OpenSSL import SSL

        reason = self.failure(SSL.Error([("SSL routines", "", "certificate verify failed")]))
        e = clienttls.handshakeFailure(reason, None)
        self.assertIs(type(e), client.PrimedTLSError)
        self.assertEqual(
            str(e), "TLS: certificate not trusted (certificate verify failed)"
        )

    def test_otherSSLErrors(self):
        """
        Any other OpenSSL failure: its reasons, joined; or its text.
        """
        from OpenSSL import SSL

        for error, words in [
            (SSL.Error([("SSL routines", "", "no protocols available"), (),
                        ("SSL routines", "", "wrong version number")]),
             "no protocols available; wrong version number"),
            (SSL.Error("unusual"), "unusual"),
            (SSL.Error(), "TLS handshake failed: "),
        ]:
            e = clienttls.handshakeFailure(self.failure(error), None)
            self.assertIs(type(e), client.PrimedTLSError)
            if words.startswith("TLS"):
                self.assertTrue(str(e).startswith(words), str(e))
            else:
                self.assertEqual(str(e), f"TLS handshake failed: {words}")

    def test_lostDuringHandshake(self):
        from twisted.internet.error import ConnectionDone

        e = clienttls.handshakeFailure(self.failure(ConnectionDone("bye")), None)
        self.assertIs(type(e), client.PrimedConnectionLost)
        self.assertEqual(
            str(e), "connection lost during the TLS handshake (Connection was closed cleanly: bye.)"
        )

    def test_isTLS(self):
        from twisted.internet.testing import StringTransport
        from twisted.protocols.tls import TLSMemoryBIOProtocol

        self.assertFalse(clienttls.isTLS(StringTransport()))
        self.assertFalse(clienttls.isTLS(None))
        tls = TLSMemoryBIOProtocol.__new__(TLSMemoryBIOProtocol)
        self.assertTrue(clienttls.isTLS(tls))

    def test_withoutPyOpenSSL(self):
        """
        Without pyOpenSSL (nor service_identity) nothing is TLS, and a
        connection lost early is just lost.
        """
        import sys

        from twisted.internet.error import ConnectionDone
        from twisted.internet.testing import StringTransport

        # In place: the import system holds the dict itself, not the name.
        for name in ("twisted.protocols.tls", "OpenSSL", "service_identity"):
            if name in sys.modules:
                self.addCleanup(sys.modules.__setitem__, name, sys.modules[name])
            else:
                self.addCleanup(sys.modules.pop, name, None)
            sys.modules[name] = None
        self.assertFalse(clienttls.isTLS(StringTransport()))
        e = clienttls.handshakeFailure(self.failure(ConnectionDone("bye")), None)
        self.assertIs(type(e), client.PrimedConnectionLost)
