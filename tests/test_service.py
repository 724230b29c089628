"""
Tests for L{primed.service}: UDP addresses, and the order of a graceful stop
(through a L{MemoryReactor} and a hand-driven pool).
"""

from twisted.internet.endpoints import serverFromString
from twisted.trial import unittest

from fakes import HandDrivenPool, ThreadlessReactor, connect
from primed.service import PrimedService, UDPAddress

BIG_PRIME = 2**607 - 1


class UDPAddressTests(unittest.TestCase):
    def test_forms(self):
        for text, expected in [
            ("8808", ("", 8808, None)),
            ("127.0.0.1:8808", ("127.0.0.1", 8808, None)),
            ("[::1]:8808", ("::1", 8808, None)),
            ("systemd:name=primed-udp", ("", 0, "primed-udp")),
        ]:
            address = UDPAddress.fromString(text)
            self.assertEqual((address.host, address.port, address.systemdName), expected)

    def test_refused(self):
        for text in ["", "host:port", "70000", "1:-1", "systemd:fd=3", "systemd:name=",
                     "[::1]", "[::1:8808", "::1]:8808", "::1:8808", "[]:8808", "[[::1]]:8808"]:
            self.assertRaises(ValueError, UDPAddress.fromString, text)


class DescribeTests(unittest.TestCase):
    def test_addresses(self):
        from twisted.internet.address import IPv4Address, UNIXAddress

        describe = PrimedService._describe
        self.assertEqual(describe(IPv4Address("TCP", "127.0.0.1", 8809), "x"), "127.0.0.1:8809")
        self.assertEqual(describe(UNIXAddress(b"/run/primed.sock"), "x"), "/run/primed.sock")
        self.assertEqual(describe(object(), "fallback"), "fallback")


class StopTests(unittest.TestCase):
    def setUp(self):
        self.reactor = ThreadlessReactor()
        self.pool = HandDrivenPool()
        self.service = PrimedService(
            self.reactor,
            [("tcp:0", serverFromString(self.reactor, "tcp:0"))],
            [UDPAddress("127.0.0.1", 0)],
            threads=1,
            drainTimeout=10,
            threadpool=self.pool,
        )
        self.service.startService()

    def test_stopAnswersPendingThenCloses(self):
        protocol, transport = connect(self.service.factory)
        protocol.dataReceived(b"%d\n4\n" % BIG_PRIME)
        stopped = self.service.stopService()
        self.assertNoResult(stopped)
        self.pool.run()
        self.assertEqual(transport.value(), b"T\nF\n")
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(None)
        self.successResultOf(stopped)

    def test_drainTimeoutCutsOff(self):
        protocol, transport = connect(self.service.factory)
        protocol.dataReceived(b"%d\n4\n" % BIG_PRIME)
        stopped = self.service.stopService()
        self.reactor.advance(10)
        self.successResultOf(stopped)
        self.assertTrue(transport.disconnected)
        self.assertEqual(transport.value(), b"")

    def test_endDrainCutsOffAtOnce(self):
        """
        A second stop signal ends the drain as the deadline would: the
        connection owed a reply is cut and the count is logged.
        """
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        protocol, transport = connect(self.service.factory)
        protocol.dataReceived(b"%d\n4\n" % BIG_PRIME)
        self.service.endDrain()  # not stopping yet: nothing happens
        self.assertFalse(transport.disconnected)
        stopped = self.service.stopService()
        self.assertNoResult(stopped)
        self.service.endDrain()
        self.successResultOf(stopped)
        self.assertTrue(transport.disconnected)
        self.assertEqual(transport.value(), b"")
        self.service.endDrain()  # stopped: nothing happens
        self.reactor.advance(10)  # and the deadline no longer comes
        (cut,) = [e for e in events if "left unanswered" in e.get("log_format", "")]
        self.assertEqual((cut["why"], cut["connections"], cut["requests"]),
                         ("Drain ended by a second stop signal", 1, 2))
