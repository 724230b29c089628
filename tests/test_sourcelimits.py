"""
Tests for the connection limits of L{primed.tcpfactory} with
L{primed.sources}: connections per source, making room at
C{--max-connections}, and on C{haproxy:} listeners (L{primed.proxy}) the
trusted balancers and the source a PROXY header names.
"""

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from fakes import HandDrivenPool, ThreadlessReactor, makeChecker, makeFactory
from primed.proxy import ProxyHeaderFactory, isTrusted, parseNetwork

BALANCER = IPv4Address("TCP", "10.0.0.9", 40000)


def header(host, port=5000):
    family = "TCP6" if ":" in host else "TCP4"
    target = "::1" if ":" in host else "127.0.0.1"
    return b"PROXY %s %s %s %d 8809\r\n" % (family.encode(), host.encode(), target.encode(), port)


class Harness:
    def __init__(self, testCase, trusted=None, **options):
        self.reactor = ThreadlessReactor()
        self.pool = HandDrivenPool()
        self.factory = makeFactory(makeChecker(self.pool, self.reactor), self.reactor, **options)
        self.proxyFactory = ProxyHeaderFactory(self.factory, self.reactor, trusted=trusted)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        testCase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def connect(self, peer, viaProxy=False):
        """
        @return: the outermost protocol and its transport, or C{(None,
            None)} if refused.
        """
        factory = self.proxyFactory if viaProxy else self.factory
        protocol = factory.buildProtocol(peer)
        if protocol is None:
            return None, None
        transport = StringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        return protocol, transport

    def logged(self, fragment):
        return [formatEvent(e) for e in self.events if fragment in formatEvent(e)]


def ip(host, port=1000):
    return (IPv6Address if ":" in host else IPv4Address)("TCP", host, port)


class PerSourceTests(unittest.TestCase):
    def test_limitPerAddress(self):
        """
        A source's connections beyond the limit are refused at once and
        counted; other sources are not affected; a closed connection gives
        its source room again.
        """
        harness = Harness(self, maxPerSource=2)
        first, _ = harness.connect(ip("192.0.2.1"))
        harness.connect(ip("192.0.2.1", 2))
        self.assertEqual(harness.connect(ip("192.0.2.1", 3)), (None, None))
        self.assertEqual(harness.connect(ip("192.0.2.1", 4)), (None, None))
        self.assertIsNotNone(harness.connect(ip("192.0.2.2"))[0])
        self.assertEqual(harness.factory.sources.refused, 2)
        self.assertEqual(harness.factory.refused, 0)
        self.assertEqual(harness.factory.sources.open, {"192.0.2.1": 2, "192.0.2.2": 1})
        first.connectionLost(None)
        self.assertIsNotNone(harness.connect(ip("192.0.2.1", 5))[0])
        self.assertEqual(harness.logged("Per-source"), [
            "Per-source connection limit of 2 reached: closed new connection from "
            "192.0.2.1 (1 refused so far)"])

    def test_ipv6Slash64(self):
        """
        IPv6 addresses of one /64 share one allowance.
        """
        harness = Harness(self, maxPerSource=2)
        harness.connect(ip("2001:db8:1:2::1"))
        harness.connect(ip("2001:db8:1:2::2"))
        self.assertEqual(harness.connect(ip("2001:db8:1:2:ffff::3")), (None, None))
        self.assertIsNotNone(harness.connect(ip("2001:db8:1:3::1"))[0])

    def test_noLimit(self):
        """
        C{0}: no per-source limit, nothing counted.
        """
        harness = Harness(self, maxPerSource=0)
        for port in range(50):
            self.assertIsNotNone(harness.connect(ip("192.0.2.1", port))[0])
        self.assertEqual(harness.factory.sources.open, {})

    def test_unixNotLimited(self):
        harness = Harness(self, maxPerSource=1)
        for _ in range(3):
            self.assertIsNotNone(harness.connect(UNIXAddress(b"/run/p"))[0])

    def test_refusedWhenFullReleasesItsSource(self):
        """
        A connection refused over --max-connections does not keep its
        source's count.
        """
        harness = Harness(self, maxConnections=1, maxPerSource=5)
        protocol, _ = harness.connect(ip("192.0.2.1"))
        protocol.dataReceived(b"7\n")
        self.assertEqual(harness.connect(ip("192.0.2.2")), (None, None))
        self.assertEqual(harness.factory.sources.open, {"192.0.2.1": 1})


class MakeRoomTests(unittest.TestCase):
    def test_oldestWithoutRequestClosed(self):
        """
        At --max-connections, the oldest connection that has not sent a
        complete request is aborted to make room; older connections that
        have sent one stay, and so does a newer one without.
        """
        harness = Harness(self, maxConnections=3)
        answered, answeredTransport = harness.connect(ip("192.0.2.1"))
        answered.dataReceived(b"7\n")
        silent, silentTransport = harness.connect(ip("192.0.2.2"))
        partial, partialTransport = harness.connect(ip("192.0.2.3"))
        partial.dataReceived(b"1234")  # no newline: not a request yet
        newcomer, _ = harness.connect(ip("192.0.2.4"))
        self.assertIsNotNone(newcomer)
        self.assertEqual(
            [answeredTransport.disconnected, silentTransport.disconnected,
             partialTransport.disconnected], [False, True, False])
        self.assertEqual((harness.factory.evicted, harness.factory.refused), (1, 0))
        self.assertEqual(len(harness.factory.protocols), 3)
        self.assertNotIn(silent, harness.factory.protocols)
        silent.connectionLost(None)  # the abort's later report changes nothing
        self.assertEqual(len(harness.factory.protocols), 3)
        self.assertEqual(len(harness.logged("to make room")), 1)
        self.assertIn("from 192.0.2.2:1000", harness.logged("to make room")[0])

    def test_refusedWhenAllHaveRequested(self):
        harness = Harness(self, maxConnections=2)
        for host in ("192.0.2.1", "192.0.2.2"):
            harness.connect(ip(host))[0].dataReceived(b"4\n")
        self.assertEqual(harness.connect(ip("192.0.2.3")), (None, None))
        self.assertEqual((harness.factory.evicted, harness.factory.refused), (0, 1))

    def test_evictedReleasesItsSource(self):
        harness = Harness(self, maxConnections=1, maxPerSource=1)
        harness.connect(ip("192.0.2.1"))
        harness.connect(ip("192.0.2.2"))
        self.assertEqual(harness.factory.sources.open, {"192.0.2.2": 1})
        self.assertIsNotNone(harness.connect(ip("192.0.2.1"))[0])


class ProxySourceTests(unittest.TestCase):
    def test_balancerNotLimitedClientsAre(self):
        """
        Behind a haproxy: listener the balancer's own address is not counted
        at accept; each connection counts against the client its header
        names, and a client over the limit is closed unanswered.
        """
        harness = Harness(self, maxPerSource=2)
        opened = [harness.connect(BALANCER, viaProxy=True) for _ in range(5)]
        self.assertTrue(all(p is not None for p, _ in opened))
        self.assertEqual(harness.factory.sources.open, {})
        for (protocol, transport), client in zip(
                opened, ["203.0.113.1", "203.0.113.1", "203.0.113.1", "203.0.113.2", "::1"]):
            protocol.dataReceived(header(client) + b"7\n")
        replies = [transport.value() for _, transport in opened]
        self.assertEqual(replies, [b"T\n", b"T\n", b"", b"T\n", b"T\n"])
        self.assertTrue(opened[2][1].disconnecting)
        self.assertEqual(harness.factory.sources.refused, 1)
        self.assertEqual(harness.factory.sources.open,
                         {"203.0.113.1": 2, "203.0.113.2": 1, "::/64": 1})
        self.assertEqual(len(harness.logged("Per-source connection limit of 2 reached")), 1)
        opened[0][0].connectionLost(None)
        self.assertEqual(harness.factory.sources.open["203.0.113.1"], 1)

    def test_localHeaderNotCounted(self):
        """
        A v2 LOCAL header (the balancer's own health check) names nobody:
        not counted.
        """
        harness = Harness(self, maxPerSource=1)
        for _ in range(3):
            protocol, transport = harness.connect(BALANCER, viaProxy=True)
            protocol.dataReceived(b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00" + b"7\n")
            self.assertEqual(transport.value(), b"T\n")


class TrustedBalancerTests(unittest.TestCase):
    def test_untrustedClosedBeforeReading(self):
        """
        With --proxy-from, a peer outside the trusted networks is refused
        at accept (nothing read), counted and logged at a limited rate;
        trusted peers (IPv4, IPv6, IPv4-mapped) are served.
        """
        trusted = [parseNetwork("10.0.0.0/8"), parseNetwork("2001:db8::1")]
        harness = Harness(self, trusted=trusted)
        self.assertEqual(harness.connect(ip("192.0.2.7"), viaProxy=True), (None, None))
        self.assertEqual(harness.connect(ip("2001:db8::2"), viaProxy=True), (None, None))
        for peer in (BALANCER, ip("2001:db8::1"), ip("::ffff:10.1.2.3")):
            protocol, transport = harness.connect(peer, viaProxy=True)
            protocol.dataReceived(header("203.0.113.5") + b"17\n")
            self.assertEqual(transport.value(), b"T\n")
        self.assertEqual(harness.proxyFactory.untrustedCount, 2)
        self.assertEqual(harness.factory.counters.proxyUntrusted, 2)
        self.assertEqual(harness.logged("not a trusted balancer"), [
            "Closed connection from 192.0.2.7:1000: not a trusted balancer "
            "(--proxy-from) (1 refused so far)"])

    def test_anyoneWithoutProxyFrom(self):
        harness = Harness(self, trusted=None)
        protocol, transport = harness.connect(ip("192.0.2.7"), viaProxy=True)
        protocol.dataReceived(header("203.0.113.5") + b"17\n")
        self.assertEqual(transport.value(), b"T\n")

    def test_isTrusted(self):
        trusted = [parseNetwork("127.0.0.1"), parseNetwork("fd00::/8")]
        self.assertTrue(isTrusted(ip("127.0.0.1"), trusted))
        self.assertFalse(isTrusted(ip("127.0.0.2"), trusted))
        self.assertTrue(isTrusted(ip("fd12::1"), trusted))
        self.assertTrue(isTrusted(ip("fe80::1%eth0"), [parseNetwork("fe80::/10")]))
        self.assertFalse(isTrusted(ip("fe00::1"), trusted))
        self.assertTrue(isTrusted(UNIXAddress(b"/run/primed.sock"), trusted))
        self.assertFalse(isTrusted(ip("nonsense"), trusted))

    def test_parseNetwork(self):
        self.assertEqual(str(parseNetwork("10.1.2.3/8")), "10.0.0.0/8")
        self.assertEqual(str(parseNetwork("::1")), "::1/128")
        for bad in ("", "10.0.0.0/33", "host.example", "1.2.3"):
            self.assertRaises(ValueError, parseNetwork, bad)


class SourceRatesTests(unittest.TestCase):
    def test_burstThenRate(self):
        """
        A source may open C{rate} connections at once, then C{rate} a
        second; other sources have their own allowance.
        """
        from twisted.internet.task import Clock

        from primed.sources import SourceRates

        clock = Clock()
        rates = SourceRates(3, clock)
        self.assertEqual([rates.admit("a") for _ in range(4)], [True, True, True, False])
        self.assertTrue(rates.admit("b"))
        clock.advance(0.34)
        self.assertEqual([rates.admit("a") for _ in range(2)], [True, False])
        clock.advance(10)
        self.assertEqual([rates.admit("a") for _ in range(4)], [True, True, True, False])
        self.assertEqual(rates.refused, 3)
        self.assertTrue(all(rates.admit(None) for _ in range(10)))

    def test_noLimit(self):
        from twisted.internet.task import Clock

        from primed.sources import SourceRates

        rates = SourceRates(0, Clock())
        self.assertTrue(all(rates.admit("a") for _ in range(1000)))
        self.assertEqual(rates.buckets, {})

    def test_refilledSourcesForgotten(self):
        """
        The table keeps only sources whose bucket is not full again.
        """
        from twisted.internet.task import Clock

        from primed.sources import SourceRates

        clock = Clock()
        clock.advance(100)
        rates = SourceRates(5, clock)
        rates.SWEEP_EVERY = rates._untilSweep = 10
        for _ in range(5):
            rates.admit("203.0.113.1")  # spent: kept by every sweep
        for n in range(4):
            rates.admit(f"192.0.2.{n}")
        clock.advance(0.2)  # the four refilled, the spent one not yet
        self.assertEqual(len(rates.buckets), 5)  # no sweep before the tenth
        rates.admit("198.51.100.1")  # the tenth: a sweep
        self.assertEqual(sorted(rates.buckets), ["198.51.100.1", "203.0.113.1"])
        for n in range(10):
            rates.admit(f"198.51.100.{n + 2}")  # and the count starts again
        self.assertEqual(len(rates.buckets), 12)

    def test_partialTokensKept(self):
        """
        A refused connection keeps what has refilled: at 2 a second, a
        quarter second gives half a token, not enough; another quarter
        gives a whole one.  A sweep right after spending keeps the spent
        bucket.
        """
        from twisted.internet.task import Clock

        from primed.sources import SourceRates

        clock = Clock()
        clock.advance(100)
        rates = SourceRates(2, clock)
        self.assertEqual([rates.admit("a"), rates.admit("a")], [True, True])
        clock.advance(0.25)
        self.assertFalse(rates.admit("a"))
        clock.advance(0.25)
        self.assertTrue(rates.admit("a"))
        rates._sweep(clock.seconds())
        self.assertFalse(rates.admit("a"))


class HandshakeRateTests(unittest.TestCase):
    def test_tlsFactoryRefusesOverRate(self):
        """
        The TLS factory refuses a source's connections over its rate before
        building anything, logs once, and leaves other sources alone; a
        balancer's connection (unattributed) is not limited.
        """
        from twisted.internet import protocol
        from twisted.internet.task import Clock

        from primed.sources import SourceRates, Unattributed
        from primed.tls import HalfCloseableTLSFactory

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock = Clock()
        rates = SourceRates(2, clock)
        from twisted.internet.ssl import CertificateOptions

        factory = HalfCloseableTLSFactory(
            CertificateOptions(), protocol.Factory.forProtocol(protocol.Protocol), clock,
            handshakeTimeout=0, rates=rates)
        built = [factory.buildProtocol(ip("192.0.2.1", n)) for n in range(4)]
        self.assertEqual([p is not None for p in built], [True, True, False, False])
        self.assertIsNotNone(factory.buildProtocol(ip("192.0.2.2")))
        for _ in range(5):
            self.assertIsNotNone(factory.buildProtocol(Unattributed(ip("10.0.0.9"))))
        self.assertEqual(rates.refused, 2)
        lines = [formatEvent(e) for e in events if "new TLS connections" in formatEvent(e)]
        self.assertEqual(lines, [
            "Closed new TLS connection from 192.0.2.1: over 2 new TLS connections a "
            "second from one source (1 refused so far)"])
