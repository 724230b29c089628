"""
Tests for L{primed.certreload}: real key and certificate files (made with
openssl), replaced under a reloading context factory, and the reloader's
schedule on a clock the tests move.  C{tests/test_certreload_e2e.py} does
the same under a running daemon, seen by C{openssl s_client}.
"""

import os
import shutil
import tempfile

from twisted.internet import endpoints
from twisted.internet.task import Clock
from OpenSSL import crypto
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.trial import unittest

from primed import certreload, tap
from primed.certreload import CertificateReloader, ReloadingContextFactory, makeReloadable
from fakes import ThreadlessReactor
from support import makeCertificates

#: The class's own logger, before any test patches it.
_CLASS_LOGGER = ReloadingContextFactory.__dict__["_log"]


class Pairs:
    """
    Two key and certificate pairs (each signed by a CA of its own), made
    once for all the tests here.
    """

    directory = None

    @classmethod
    def get(cls):
        if cls.directory is None:
            cls.directory = tempfile.mkdtemp(prefix="primed-certreload-")
            for name in ("first", "second"):
                os.mkdir(os.path.join(cls.directory, name))
                setattr(cls, name, makeCertificates(os.path.join(cls.directory, name)))
        return cls


def tearDownModule():
    if Pairs.directory is not None:
        shutil.rmtree(Pairs.directory, ignore_errors=True)


class ReloadingTests(unittest.TestCase):
    def setUp(self):
        self.pairs = Pairs.get()
        # Not trial's mktemp, which makes its directory under the current one.
        self.directory = tempfile.mkdtemp(prefix="primed-certreload-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.key = os.path.join(self.directory, "key.pem")
        self.cert = os.path.join(self.directory, "cert.pem")
        self.install(self.pairs.first)
        self.description = f"ssl:0:privateKey={self.key}:certKey={self.cert}"
        self.events = []
        self.patch(ReloadingContextFactory, "_log", Logger(observer=self.events.append))
        self.factory = ReloadingContextFactory(self.description, self.load(), self.load)

    def load(self):
        return endpoints.serverFromString(None, self.description)._sslContextFactory

    def install(self, pair, key=True, cert=True):
        """
        Replace the files as a rotation does: a new file renamed over the old.
        """
        for wanted, name, target in ((key, "key", self.key), (cert, "cert", self.cert)):
            if wanted:
                shutil.copy(pair[name], target + ".new")
                os.replace(target + ".new", target)

    def serving(self):
        """
        The certificate a new connection would present.
        """
        from OpenSSL import SSL

        return SSL.Connection(self.factory.getContext(), None).get_certificate().digest("sha256")

    def digest(self, pair):
        from OpenSSL import crypto

        with open(pair["cert"], "rb") as f:
            return crypto.load_certificate(crypto.FILETYPE_PEM, f.read()).digest("sha256")

    def messages(self):
        return [formatEvent(event) for event in self.events]

    def test_unchanged(self):
        """
        Files that did not change: same pair, nothing logged.
        """
        context = self.factory.getContext()
        self.assertFalse(self.factory.reload())
        self.assertIs(self.factory.getContext(), context)
        self.assertEqual(self.serving(), self.digest(self.pairs.first))
        self.assertEqual(self.events, [])

    def test_newPair(self):
        self.install(self.pairs.second)
        self.assertTrue(self.factory.reload())
        self.assertEqual(self.serving(), self.digest(self.pairs.second))
        [message] = self.messages()
        self.assertRegex(message, r"^TLS listener ssl:0:\S+: now serving /CN=localhost, "
                                  r"serial [0-9A-F]+, not after \d{14}Z$")
        self.assertFalse(self.factory.reload())
        self.assertEqual(len(self.events), 1)

    def test_providesTheInterface(self):
        """
        Twisted's TLS layer takes the factory as the context factory it
        declares itself, without a LegacyContextFactoryWarning.
        """
        import warnings

        from twisted.internet.interfaces import IOpenSSLContextFactory
        from twisted.protocols.tls import TLSMemoryBIOFactory
        from zope.interface.verify import verifyObject

        self.assertTrue(verifyObject(IOpenSSLContextFactory, self.factory))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            TLSMemoryBIOFactory(self.factory, False, None)
        self.assertEqual([str(w.message) for w in caught], [])

    def test_newPairKeepsTheProfile(self):
        """
        A reloaded pair's context offers what the listener's first one did:
        TLS 1.2 at least and, on 1.2, Mozilla's intermediate AEAD suites
        only (a context built by parsing the description again would offer
        Twisted's defaults, CBC suites among them).
        """
        from OpenSSL import SSL

        from primed.tls import INTERMEDIATE_CIPHERS

        self.install(self.pairs.second)
        self.assertTrue(self.factory.reload())
        offered = SSL.Connection(self.factory.getContext(), None).get_cipher_list()
        tls12 = [name for name in offered if not name.startswith("TLS_")]
        self.assertTrue(tls12)
        self.assertEqual(set(tls12) - set(INTERMEDIATE_CIPHERS.split(":")), set())
        self.assertFalse([name for name in offered if "CBC" in name or name.endswith("SHA")])

    def test_keyNotMatching(self):
        """
        A new certificate whose key is not there yet keeps the old pair,
        logged once however many times it is tried; once the key comes, the
        new pair is served.
        """
        self.install(self.pairs.second, key=False)
        self.assertFalse(self.factory.reload())
        self.assertFalse(self.factory.reload())
        self.assertEqual(self.serving(), self.digest(self.pairs.first))
        [event] = self.events
        self.assertEqual(event["log_level"].name, "error")
        self.assertIn("cannot load its new key and certificate", formatEvent(event))
        self.assertIn("still serving /CN=localhost", formatEvent(event))
        self.install(self.pairs.second, cert=False)
        self.assertTrue(self.factory.reload())
        self.assertEqual(self.serving(), self.digest(self.pairs.second))

    def test_errorMessage(self):
        """
        The error names the listener, the exception and its text, and the
        certificate still served.
        """
        self.install(self.pairs.second, key=False)
        self.factory.reload()
        [message] = self.messages()
        self.assertRegex(
            message,
            r"^TLS listener ssl:0:\S+: cannot load its new key and certificate "
            r"\(VerifyError: .+\); still serving /CN=localhost, serial [0-9A-F]+, "
            r"not after \d{14}Z$")

    def test_loggedForTwistd(self):
        """
        Unpatched, the factory logs to Twisted's global log (what twistd
        writes out), under its own namespace.
        """
        self.patch(ReloadingContextFactory, "_log", _CLASS_LOGGER)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        factory = ReloadingContextFactory(self.description, self.load(), self.load)
        self.install(self.pairs.second)
        factory.reload()
        [event] = [e for e in events if "now serving" in formatEvent(e)]
        self.assertEqual(event["log_namespace"], "primed.certreload.ReloadingContextFactory")

    def test_brokenFiles(self):
        """
        A missing file, an empty one, or one that is not PEM: the pair in
        use stays; each new error is logged.
        """
        os.unlink(self.cert)
        self.assertFalse(self.factory.reload())
        open(self.cert, "w").close()
        self.assertFalse(self.factory.reload())
        with open(self.cert, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        self.assertFalse(self.factory.reload())
        self.assertEqual(self.serving(), self.digest(self.pairs.first))
        self.assertEqual(len(self.events), 3)
        self.assertEqual(len(set(self.messages())), 3)

    def test_sameErrorAfterRecoveryLoggedAgain(self):
        self.install(self.pairs.second, key=False)
        self.factory.reload()
        self.install(self.pairs.second)
        self.factory.reload()
        self.install(self.pairs.first, key=False)
        self.factory.reload()
        self.assertEqual([e["log_level"].name for e in self.events], ["error", "info", "error"])


class IdentityTests(unittest.TestCase):
    """
    What tells pairs apart, and how a certificate is named.
    """

    def certificate(self, serial, subject=(("O", "primed"), ("CN", "localhost"))):
        key = crypto.PKey()
        key.generate_key(crypto.TYPE_RSA, 1024)
        certificate = crypto.X509()
        for name, value in subject:
            setattr(certificate.get_subject(), name, value)
        certificate.set_issuer(certificate.get_subject())
        certificate.set_serial_number(serial)
        certificate.set_notBefore(b"20260101000000Z")
        certificate.set_notAfter(b"20270301120000Z")
        certificate.set_pubkey(key)
        certificate.sign(key, "sha256")
        return certificate

    def test_describe(self):
        self.assertEqual(certreload.describe(self.certificate(0x5F1E)),
                         "/O=primed/CN=localhost, serial 5F1E, not after 20270301120000Z")

    def test_chainCounts(self):
        """
        The same certificate with another chain is another pair.
        """

        class Options:
            def __init__(self, certificate, chain=None):
                self.certificate = certificate
                if chain is not None:
                    self.extraCertChain = chain

        leaf, first, second = (self.certificate(n) for n in (1, 2, 3))
        identity = certreload._identity
        self.assertEqual(identity(Options(leaf)), identity(Options(leaf, [])))
        self.assertNotEqual(identity(Options(leaf, [first])), identity(Options(leaf, [second])))
        self.assertNotEqual(identity(Options(leaf, [first])), identity(Options(leaf)))
        self.assertEqual(identity(Options(leaf, [first])), identity(Options(leaf, [first])))


class MakeReloadableTests(unittest.TestCase):
    def test_twistedChanged(self):
        """
        An SSL4ServerEndpoint without the private attribute this relies on
        fails loudly.
        """
        endpoint = SSL4ServerEndpoint(None, 0, None)
        del endpoint._sslContextFactory
        with self.assertRaises(RuntimeError) as caught:
            makeReloadable([("ssl:0", endpoint)], None)
        self.assertEqual(str(caught.exception),
                         "Twisted's SSL4ServerEndpoint no longer keeps _sslContextFactory: "
                         "primed.certreload (and primed.service) need updating")

    def test_sslListenersOnly(self):
        """
        C{ssl:} listeners, behind C{haproxy:} too, get a reloading factory
        that the service's TLS layer then uses; others are left alone.
        """
        pairs = Pairs.get()
        ssl = f"ssl:0:privateKey={pairs.first['key']}:certKey={pairs.first['cert']}"
        config = tap.Options()
        config.parseOptions(["--listen", "tcp:0", "--listen", ssl,
                             "--listen", "haproxy:" + ssl])
        parsed = [(d, tap._serverEndpoint(None, d, config)) for d in config["listen"]]
        factories = makeReloadable(parsed, lambda d: tap._serverEndpoint(None, d, config))
        self.assertEqual([f.description for f in factories], [ssl, "haproxy:" + ssl])
        self.assertIs(parsed[1][1]._sslContextFactory, factories[0])
        self.assertIs(parsed[2][1].wrapped._sslContextFactory, factories[1])
        self.assertFalse(factories[1].reload())  # parsed again through haproxy:

    def test_makeServiceReloads(self):
        """
        The daemon reloads its ssl: listeners every --tls-reload-interval
        seconds, and not at all with 0.
        """
        pairs = Pairs.get()
        ssl = f"ssl:0:privateKey={pairs.first['key']}:certKey={pairs.first['cert']}"
        for interval, expected in (("2.5", [2.5]), ("0", [])):
            config = tap.Options()
            config.parseOptions(["--listen", ssl, "--no-udp", "--tls-reload-interval", interval])
            top = tap.makeService(config, ThreadlessReactor())
            self.assertEqual([s.interval for s in top if s.name == "tls-reload"], expected)

    def test_defaultInterval(self):
        config = tap.Options()
        config.parseOptions([])
        self.assertEqual(config["tls-reload-interval"], certreload.DEFAULT_INTERVAL)
        self.assertEqual(certreload.DEFAULT_INTERVAL, 10.0)


class ReloaderTests(unittest.TestCase):
    def test_schedule(self):
        """
        Every interval while running, never at start, not after a stop.
        """
        calls = []

        class Factory:
            def reload(self):
                calls.append(clock.seconds())

        clock = Clock()
        reloader = CertificateReloader([Factory(), Factory()], 5.0, clock)
        reloader.startService()
        clock.advance(4.9)
        self.assertEqual(calls, [])
        clock.advance(0.1)
        self.assertEqual(calls, [5.0, 5.0])
        clock.advance(5)
        self.assertEqual(calls, [5.0, 5.0, 10.0, 10.0])
        reloader.stopService()
        clock.advance(50)
        self.assertEqual(len(calls), 4)
        self.assertFalse(clock.getDelayedCalls())
