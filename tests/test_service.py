"""
Tests for L{primed.service}: UDP addresses, and the order of a graceful stop
(through a L{MemoryReactor} and a hand-driven pool).
"""

from twisted.internet.endpoints import serverFromString
from twisted.trial import unittest

from fakes import HandDrivenPool, ThreadlessReactor, connect
from primed.checker import CheckAbandoned
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
                     "[::1]", "[::1:8808", "::1]:8808", "::1:8808", "[]:8808", "[[::1]]:8808",
                     # Twisted's listenUDP binds IP addresses only: a name
                     # used to pass here and fail at listen time, exit 1.
                     "localhost:8808", "nosuchhost.invalid:8808", "[127.0.0.1]:8808",
                     # str.isdigit() is true for these; int() takes the first
                     # as port 3 and refuses the second.
                     "\u0663", "\u00b2"]:
            self.assertRaises(ValueError, UDPAddress.fromString, text)

    def test_ipAddresses(self):
        for text, host in [("[::ffff:127.0.0.1]:0", "::ffff:127.0.0.1"),
                           ("[fe80::1%lo]:0", "fe80::1%lo"), ("0.0.0.0:0", "0.0.0.0")]:
            self.assertEqual(UDPAddress.fromString(text).host, host)


class UDPAddressBoundsTests(unittest.TestCase):
    def test_portBounds(self):
        self.assertEqual(UDPAddress.fromString("0").port, 0)
        self.assertEqual(UDPAddress.fromString("65535").port, 65535)
        error = self.assertRaises(ValueError, UDPAddress.fromString, "65536")
        self.assertEqual(
            str(error), "expected [HOST:]PORT with a port from 0 to 65535, not '65536'"
        )

    def test_brackets(self):
        """
        Brackets hold an IPv6 address, whole and alone; a bare IPv6 address
        or a stray bracket is refused with a message saying why.
        """
        self.assertEqual(UDPAddress.fromString("[::1]:1").host, "::1")
        for text in ["[]:1", "[[::1]]:1", "[::1]]:1", "[[::1]:1"]:
            error = self.assertRaises(ValueError, UDPAddress.fromString, text)
            self.assertEqual(str(error), f"expected [IPV6]:PORT, not {text!r}")
        for text in ["::1:1", "a[b:1", "a]b:1", "[::1:1"]:
            error = self.assertRaises(ValueError, UDPAddress.fromString, text)
            self.assertEqual(
                str(error),
                f"expected [HOST:]PORT, an IPv6 address in brackets, not {text!r}",
            )

    def test_systemd(self):
        address = UDPAddress.fromString("systemd:name=primed-udp")
        self.assertEqual(repr(address), "systemd:name=primed-udp")
        error = self.assertRaises(ValueError, UDPAddress.fromString, "systemd:name=")
        self.assertEqual(str(error), "expected systemd:name=NAME, not 'systemd:name='")

    def test_family(self):
        import socket

        from primed.service import _family

        self.assertEqual(_family("::1"), socket.AF_INET6)
        self.assertEqual(_family("127.0.0.1"), socket.AF_INET)
        self.assertEqual(_family(""), socket.AF_INET)


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
        # The drain deadline's timer is cancelled, not left to fire later.
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stopDoesNotWaitForChecksOwedToNobody(self):
        """
        A check whose connection is gone (reset by its client) is owed to
        nobody: the stop ends at once, not at the drain deadline with a
        warning that cuts nothing.
        """
        protocol, transport = connect(self.service.factory)
        protocol.dataReceived(b"%d\n" % BIG_PRIME)
        protocol.connectionLost(None)
        self.assertEqual(self.service.checker.queued, 1)
        stopped = self.service.stopService()
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.pool.run()  # it never starts: the checker was abandoned
        self.assertEqual(self.service.checker.queued, 0)

    def test_drainTimeoutCutsOff(self):
        protocol, transport = connect(self.service.factory)
        protocol.dataReceived(b"%d\n4\n" % BIG_PRIME)
        waiting = self.service.checker.submit(BIG_PRIME + 2)
        stopped = self.service.stopService()
        self.reactor.advance(10)
        self.successResultOf(stopped)
        self.assertTrue(transport.disconnected)
        self.assertEqual(transport.value(), b"")
        # Checks that never got a thread do not run once the deadline passed:
        # they fail at once, so stopping the pool waits for none of them.
        self.assertEqual(len(self.pool.work), 2)
        self.pool.runAll()
        self.failureResultOf(waiting, CheckAbandoned)
        self.assertEqual(self.service.checker.queued, 0)

    def udpProtocol(self):
        [protocol] = self.service.datagramProtocols
        return protocol, protocol.transport

    def test_stopAnswersDatagramsInThePool(self):
        """
        A datagram whose check is in the pool when the stop begins is still
        answered; one that arrives after is not; then the stop completes.
        """
        protocol, transport = self.udpProtocol()
        addr = ("127.0.0.1", 40000)
        protocol.datagramReceived(b"%d\n" % BIG_PRIME, addr)
        stopped = self.service.stopService()
        protocol.datagramReceived(b"7\n", addr)
        self.assertNoResult(stopped)
        self.pool.run()
        self.assertEqual(transport.written, [(b"T\n", addr)])
        self.successResultOf(stopped)
        self.assertFalse(transport.listening)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_drainTimeoutCutsOffDatagrams(self):
        """
        A datagram still waiting for a thread at the deadline is counted as
        cut off, and never answered.
        """
        from twisted.logger import globalLogPublisher

        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        protocol, transport = self.udpProtocol()
        protocol.datagramReceived(b"%d\n" % BIG_PRIME, ("127.0.0.1", 40000))
        stopped = self.service.stopService()
        self.reactor.advance(10)
        self.successResultOf(stopped)
        from twisted.logger import formatEvent

        self.assertIn(
            "Drain timeout of 10s reached: cut 0 connection(s), "
            "1 received request(s) left unanswered",
            [formatEvent(e) for e in logged],
        )
        self.pool.runAll()
        self.assertEqual(transport.written, [])
        self.assertEqual(protocol.inflight, 0)

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
