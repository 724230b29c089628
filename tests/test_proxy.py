"""
Tests for L{primed.proxy}: the PROXY header parser, and primed's TCP
protocol behind it (through a L{StringTransport}), keeping half-close, the
connection limit, draining, the idle timer and backpressure.
"""

import socket
import struct

from hypothesis import given, settings, strategies as st
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from fakes import HandDrivenPool, ThreadlessReactor, makeChecker, makeFactory
from primed import proxy, tap
from primed.proxy import BadHeader, ProxyHeaderEndpoint, ProxyHeaderFactory, parseHeader

BIG_PRIME = 2**607 - 1
SOCKET_PEER = IPv4Address("TCP", "10.0.0.9", 40000)  # the balancer
V1_TCP4 = b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 8809\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 8809\r\n"


def v2(command=1, family=0x11, body=None, version=2):
    if body is None:
        body = {
            0x11: socket.inet_pton(socket.AF_INET, "192.0.2.7")
            + socket.inet_pton(socket.AF_INET, "198.51.100.1") + struct.pack("!HH", 51234, 8809),
            0x21: socket.inet_pton(socket.AF_INET6, "2001:db8::7")
            + socket.inet_pton(socket.AF_INET6, "2001:db8::1") + struct.pack("!HH", 51234, 8809),
            0x31: b"/run/client".ljust(108, b"\0") + b"/run/primed".ljust(108, b"\0"),
        }.get(family, b"")
    return (proxy.V2_SIGNATURE + struct.pack("!BBH", version << 4 | command, family, len(body))
            + body)


class ParserTests(unittest.TestCase):
    def test_v1TCP4(self):
        header, used = parseHeader(V1_TCP4 + b"17\n")
        self.assertEqual(used, len(V1_TCP4))
        self.assertEqual(header.source, IPv4Address("TCP", "192.0.2.7", 51234))
        self.assertEqual(header.destination, IPv4Address("TCP", "198.51.100.1", 8809))

    def test_v1TCP6(self):
        header, _ = parseHeader(V1_TCP6)
        self.assertEqual(header.source, IPv6Address("TCP", "2001:db8::7", 51234))

    def test_v1Unknown(self):
        for line in [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff:f...f:ffff 1 2\r\n"]:
            header, used = parseHeader(line)
            self.assertIsNone(header.source)
            self.assertEqual(used, len(line))

    def test_v2(self):
        for family, source in [
            (0x11, IPv4Address("TCP", "192.0.2.7", 51234)),
            (0x21, IPv6Address("TCP", "2001:db8::7", 51234)),
            (0x31, UNIXAddress(b"/run/client")),
        ]:
            data = v2(family=family)
            header, used = parseHeader(data + b"17\n")
            self.assertEqual((header.version, header.source, used), (2, source, len(data)))

    def test_v2WithTLVs(self):
        data = v2(body=v2()[16:] + b"\x04\x00\x03abc")  # a NOOP TLV after the addresses
        header, used = parseHeader(data)
        self.assertEqual((header.source.host, used), ("192.0.2.7", len(data)))

    def test_v2LocalAndUnspec(self):
        for data in [v2(command=0, family=0x11), v2(command=0, family=0), v2(family=0)]:
            header, used = parseHeader(data)
            self.assertIsNone(header.source)
            self.assertEqual(used, len(data))

    def test_incompleteIsNone(self):
        for whole in [V1_TCP4, v2(), v2(family=0x21)]:
            for end in range(len(whole)):
                self.assertIsNone(parseHeader(whole[:end]), (whole, end))

    def test_malformed(self):
        for data in [
            b"17\n",
            b"GET / HTTP/1.0\r\n",
            b"PROXYTCP4",
            b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n",
            b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.400 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 ::1 1.2.3.4 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            # A zone index is no part of the header's address (HAProxy's
            # inet_pton refuses it); Python's ipaddress accepts any text
            # after the %, control characters included, into the logs.
            b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
            b"PROXY TCP6 ::1 fe80::1%\x1b[2J 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 http 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 \xd9\xa1 2\r\n",
            b"PROXY " + b"A" * 101,  # no CRLF within 107 bytes
            b"\r\n\r\n\x00\r\nQUIX\n",
            v2(version=1),
            v2(command=2),
            v2(family=0x12),  # UDP over IPv4: not a stream
            v2(family=0x11, body=b"\0" * 11),  # too short for its addresses
            # A length that runs past the TLVs into the requests: they
            # would be swallowed unanswered, and every later reply matched
            # to the wrong request.
            v2(body=v2()[16:] + b"4\n5\n6\n7\n8\n9\n10"),
            v2(body=v2()[16:] + b"\x04\x00\x03abc" + b"\x04\x00"),  # a cut TLV
            v2(body=v2()[16:] + b"\x04\x00\x04abc"),  # a TLV longer than what is left
            proxy.V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, 5000),  # over the limit
        ]:
            self.assertRaises(BadHeader, parseHeader, data)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300))
    def test_anyBytes(self, data):
        """
        Whatever arrives, the parser returns or raises L{BadHeader}; a
        complete header never takes more than it was given.
        """
        for candidate in [data, b"PROXY " + data, proxy.V2_SIGNATURE + data]:
            try:
                result = parseHeader(candidate)
            except BadHeader:
                continue
            if result is not None:
                self.assertLessEqual(result[1], len(candidate))


class Harness:
    def __init__(self, timeout=5.0, **options):
        self.reactor = ThreadlessReactor()
        self.pool = HandDrivenPool()
        self.checker = makeChecker(self.pool, self.reactor)
        self.factory = makeFactory(self.checker, self.reactor, **options)
        self.proxyFactory = ProxyHeaderFactory(self.factory, self.reactor, timeout=timeout)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)

    def close(self):
        globalLogPublisher.removeObserver(self.events.append)

    def connect(self):
        wrapper = self.proxyFactory.buildProtocol(SOCKET_PEER)
        if wrapper is None:
            return None, None, None
        transport = StringTransport(peerAddress=SOCKET_PEER)
        transport.protocol = wrapper
        wrapper.makeConnection(transport)
        return wrapper, wrapper.wrapped, transport

    def refusals(self):
        return [e for e in self.events if "reason" in e and "refused" in e]


class ProtocolTests(unittest.TestCase):
    def setUp(self):
        self.harness = Harness(verbose=True)
        self.addCleanup(self.harness.close)
        self.wrapper, self.inner, self.transport = self.harness.connect()

    def verdictPeers(self):
        return [e["peer"] for e in self.harness.events if "verdict" in e]

    def test_v1ThenRequests(self):
        self.wrapper.dataReceived(V1_TCP4 + b"17\n4j\n")
        self.assertEqual(self.transport.value(), b"T\nE\n")
        self.assertEqual(self.verdictPeers(), ["192.0.2.7:51234", "192.0.2.7:51234"])

    def test_v2IPv6(self):
        self.wrapper.dataReceived(v2(family=0x21))
        self.wrapper.dataReceived(b"5\n")
        self.assertEqual(self.transport.value(), b"T\n")
        self.assertEqual(self.verdictPeers(), ["[2001:db8::7]:51234"])

    def test_v2LocalKeepsSocketPeer(self):
        """
        HAProxy's health check (C{check-send-proxy} with C{send-proxy-v2})
        sends LOCAL: answered, with the socket's own address.
        """
        self.wrapper.dataReceived(v2(command=0) + b"2\n")
        self.assertEqual(self.transport.value(), b"T\n")
        self.assertEqual(self.verdictPeers(), ["10.0.0.9:40000"])

    def test_headerByteByByte(self):
        for byte in V1_TCP4 + b"29\n":
            self.wrapper.dataReceived(bytes([byte]))
        self.assertEqual(self.transport.value(), b"T\n")
        self.assertEqual(self.verdictPeers(), ["192.0.2.7:51234"])

    def test_laterReadsGoStraightToTheProtocol(self):
        self.wrapper.dataReceived(V1_TCP4)
        self.assertEqual(self.wrapper.dataReceived, self.inner.dataReceived)

    def test_halfClose(self):
        """
        Everything received before the FIN is answered (a big check
        included, and an unterminated last line), then the connection closes.
        """
        self.wrapper.dataReceived(V1_TCP4 + b"%d\n17\n18" % BIG_PRIME)
        self.wrapper.readConnectionLost()
        self.assertFalse(self.transport.disconnecting)
        self.harness.pool.run()
        self.assertEqual(self.transport.value(), b"T\nT\nF\n")
        self.assertTrue(self.transport.disconnecting)

    def test_halfCloseBeforeHeader(self):
        self.wrapper.dataReceived(b"PROXY TCP4 1.2")
        self.wrapper.readConnectionLost()
        self.assertEqual(self.transport.value(), b"")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(len(self.harness.refusals()), 1)

    def test_missingHeaderNeverAnswered(self):
        self.wrapper.dataReceived(b"17\n")
        self.wrapper.dataReceived(b"19\n")
        self.wrapper.readConnectionLost()
        self.assertEqual(self.transport.value(), b"")
        self.assertTrue(self.transport.disconnecting)
        self.assertIsNone(self.transport.producer)  # or a resume would reopen reading
        self.assertEqual(self.harness.proxyFactory.refusedCount, 1)

    def test_overLongHeader(self):
        self.wrapper.dataReceived(b"PROXY TCP4 " + b"1" * 200)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.transport.value(), b"")

    def test_headerTimeout(self):
        self.wrapper.dataReceived(b"PROXY ")
        self.harness.reactor.advance(4.9)
        self.assertFalse(self.transport.disconnecting)
        self.harness.reactor.advance(0.1)
        self.assertTrue(self.transport.disconnecting)
        self.assertIn("no PROXY header within 5s", self.harness.refusals()[0]["reason"])

    def test_timerCancelledByHeader(self):
        self.wrapper.dataReceived(V1_TCP4)
        self.harness.reactor.advance(60)
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.harness.reactor.getDelayedCalls()[0].getTime(), 300.0)  # idle timer

    def test_idleTimeoutStillApplies(self):
        self.wrapper.dataReceived(V1_TCP4 + b"3\n")
        self.harness.reactor.advance(300)
        self.assertTrue(self.transport.disconnected)

    def test_innerIsTheProducer(self):
        """
        The wrapped protocol is registered with the real transport, so the
        transport's backpressure reaches it directly.
        """
        self.assertIs(self.transport.producer, self.inner)
        self.wrapper.dataReceived(V1_TCP4)
        self.inner.pauseProducing()
        self.assertEqual(self.transport.producerState, "paused")

    def test_connectionLostReachesFactory(self):
        self.assertEqual(len(self.harness.factory.protocols), 1)
        self.transport.protocol.connectionLost(None)
        self.assertEqual(len(self.harness.factory.protocols), 0)

    def test_refusalsRateLimited(self):
        for _ in range(5):
            wrapper, _, transport = self.harness.connect()
            wrapper.dataReceived(b"x")
            wrapper.connectionLost(None)
        self.assertEqual(len(self.harness.refusals()), 1)
        self.harness.reactor.advance(10)
        wrapper, _, _ = self.harness.connect()
        wrapper.dataReceived(b"x")
        self.assertEqual([e["refused"] for e in self.harness.refusals()], [1, 6])


class FuzzTests(unittest.TestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from([V1_TCP4, V1_TCP6, v2(), v2(family=0x21), v2(command=0)]),
           st.lists(st.sampled_from([b"17", b"4j", b"-5", b"", b"%d" % BIG_PRIME, b"2" * 30]),
                    max_size=20),
           st.lists(st.integers(0, 10_000), max_size=8))
    def test_anySplit(self, header, lines, cuts):
        """
        However the header and the requests after it are cut into reads,
        the replies are those a plain listener gives, in order.
        """
        harness = Harness(timeout=0)
        self.addCleanup(harness.close)
        wrapper, _, transport = harness.connect()
        stream = header + b"".join(line + b"\n" for line in lines)
        cuts = sorted(cut % (len(stream) + 1) for cut in cuts)
        for start, end in zip([0] + cuts, cuts + [len(stream)]):
            wrapper.dataReceived(stream[start:end])
        harness.pool.runAll()
        expected = b"".join(
            b"E\n" if line in (b"4j", b"") else b"F\n" if line in (b"-5", b"2" * 30) else b"T\n"
            for line in lines)
        self.assertEqual(transport.value(), expected)


class LimitTests(unittest.TestCase):
    def test_connectionLimitCountsHeaderlessConnections(self):
        """
        Connections waiting for their header count towards the connection
        limit; at the limit the oldest of them gives way to a new one.
        Once each has sent a request, a new connection is refused.
        """
        harness = Harness(maxConnections=2)
        self.addCleanup(harness.close)
        _, _, oldest = harness.connect()
        second, _, secondTransport = harness.connect()
        third, _, thirdTransport = harness.connect()
        self.assertIsNotNone(third)
        self.assertTrue(oldest.disconnecting)
        self.assertFalse(secondTransport.disconnecting)
        self.assertEqual((harness.factory.refused, harness.factory.evicted), (0, 1))
        second.dataReceived(V1_TCP4 + b"7\n")
        third.dataReceived(V1_TCP4 + b"7\n")
        self.assertEqual(harness.connect(), (None, None, None))
        self.assertEqual(harness.factory.refused, 1)

    def test_drainClosesConnectionsWaitingForHeader(self):
        harness = Harness()
        self.addCleanup(harness.close)
        waiting, _, waitingTransport = harness.connect()
        busy, _, busyTransport = harness.connect()
        busy.dataReceived(V1_TCP4 + b"%d\n" % BIG_PRIME)
        drained = harness.factory.drain()
        self.assertTrue(waitingTransport.disconnecting)
        self.assertFalse(busyTransport.disconnecting)
        waiting.connectionLost(None)
        harness.pool.run()
        self.assertEqual(busyTransport.value(), b"T\n")
        busy.connectionLost(None)
        self.successResultOf(drained)

    def test_maxInflight(self):
        harness = Harness(maxInflight=1)
        self.addCleanup(harness.close)
        wrapper, inner, transport = harness.connect()
        wrapper.dataReceived(V1_TCP4 + b"%d\n%d\n" % (BIG_PRIME, BIG_PRIME))
        self.assertEqual(transport.producerState, "paused")
        harness.pool.run()
        harness.pool.run()
        self.assertEqual(transport.value(), b"T\nT\n")
        self.assertEqual(transport.producerState, "producing")


class TapTests(unittest.TestCase):
    def test_haproxyPrefix(self):
        options = tap.Options()
        options.parseOptions(["--listen", "haproxy:tcp:0:interface=127.0.0.1",
                              "--proxy-timeout", "2", "--proxy-max-header", "600"])
        endpoint = tap._serverEndpoint(ThreadlessReactor(), options["listen"][0], options)
        self.assertIsInstance(endpoint, ProxyHeaderEndpoint)
        self.assertIsInstance(endpoint.wrapped, TCP4ServerEndpoint)
        self.assertEqual((endpoint.timeout, endpoint.maxLength), (2.0, 600))

    def test_badValues(self):
        from twisted.python import usage

        for args in [["--listen", "haproxy:"], ["--proxy-max-header", "100"],
                     ["--proxy-timeout", "-1"]]:
            self.assertRaises(usage.UsageError, tap.Options().parseOptions, args)


class RealTransportTests(unittest.TestCase):
    """
    Over a real loopback connection: the direct-send fast path applies
    behind the header, and the half-close reaches primed's protocol.
    """

    @defer.inlineCallbacks
    def test_fastPathAndHalfClose(self):
        from twisted.internet import reactor

        checker = makeChecker(HandDrivenPool(), reactor)
        factory = makeFactory(checker, reactor)
        port = yield ProxyHeaderEndpoint(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), reactor
        ).listen(factory)
        self.addCleanup(port.stopListening)

        received = []
        writers = []
        closed = defer.Deferred()

        class Client(Protocol):
            def dataReceived(self, data):
                received.append(data)
                writers.extend(p._write.__name__ for p in factory.protocols)

            def connectionLost(self, reason):
                closed.callback(None)

        client = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            _factoryFor(Client))
        client.transport.write(V1_TCP4 + b"17\n18\n19")
        client.transport.loseWriteConnection()
        yield closed
        self.assertEqual(b"".join(received), b"T\nF\nT\n")
        self.assertEqual(set(writers), {"writeNow"})  # primed.fastpath's


def _factoryFor(protocolClass):
    from twisted.internet.protocol import Factory

    return Factory.forProtocol(protocolClass)
