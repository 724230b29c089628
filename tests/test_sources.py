"""
Tests for L{primed.sources}: which source a peer belongs to.
"""

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial import unittest

from primed.sources import sourceKey


class SourceKeyTests(unittest.SynchronousTestCase):
    def test_ipv4(self):
        """
        An IPv4 address is its own source, whatever the port.
        """
        self.assertEqual(sourceKey(IPv4Address("TCP", "192.0.2.7", 1)), "192.0.2.7")
        self.assertEqual(sourceKey(("192.0.2.7", 2)), "192.0.2.7")
        self.assertEqual(sourceKey("192.0.2.7"), "192.0.2.7")
        self.assertEqual(sourceKey("1.2.3.4"), "1.2.3.4")
        self.assertNotEqual(sourceKey("192.0.2.7"), sourceKey("192.0.2.8"))

    def test_ipv6Slash64(self):
        """
        IPv6 addresses in one /64 are one source; the next /64 is another.
        """
        a = sourceKey(IPv6Address("TCP", "2001:db8:1:2::7", 1))
        b = sourceKey(("2001:db8:1:2:ffff:ffff:ffff:ffff", 5, 0, 0))
        c = sourceKey("2001:db8:1:3::7")
        self.assertEqual(a, "2001:db8:1:2::/64")
        self.assertEqual(a, b)
        self.assertEqual(c, "2001:db8:1:3::/64")

    def test_ipv6Spellings(self):
        """
        One address however it is written, and a zone does not make another
        source.
        """
        self.assertEqual(sourceKey("2001:DB8:0:0:1::1"), sourceKey("2001:db8::1:0:0:1"))
        self.assertEqual(sourceKey("fe80::1%eth0"), "fe80::/64")
        self.assertEqual(sourceKey("fe80::1%eth0"), sourceKey("fe80::2"))

    def test_ipv4Mapped(self):
        """
        A dual-stack socket's view of an IPv4 peer is that IPv4 address.
        """
        self.assertEqual(sourceKey("::ffff:192.0.2.7"), "192.0.2.7")

    def test_noAddress(self):
        """
        UNIX sockets and anything else without an IP address have no source.
        """
        self.assertIsNone(sourceKey(UNIXAddress(b"/run/x")))
        self.assertIsNone(sourceKey(UNIXAddress(None)))
        self.assertIsNone(sourceKey(None))
        self.assertIsNone(sourceKey(()))
        self.assertIsNone(sourceKey("not-an-address:"))
        self.assertIsNone(sourceKey("localhost"))


class UnattributedTests(unittest.SynchronousTestCase):
    def test_noSourceButReadable(self):
        """
        A balancer's connection before its header has no source, and logs
        say whose it is.
        """
        from primed.sources import Unattributed

        balancer = Unattributed(IPv4Address("TCP", "10.0.0.9", 40000))
        self.assertIsNone(sourceKey(balancer))
        self.assertEqual(repr(balancer), "balancer 10.0.0.9:40000")
        self.assertEqual(repr(Unattributed(UNIXAddress(b"/run/lb"))),
                         "balancer " + str(UNIXAddress(b"/run/lb")))
        self.assertEqual(balancer.address, IPv4Address("TCP", "10.0.0.9", 40000))
