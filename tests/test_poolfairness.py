"""
The check pool's fairness and lost clients, as the TCP and UDP protocols
use them (L{primed.fairqueue} through L{primed.checker}): which
connection's big number runs next, per-source quotas, and the work of a
lost connection dropped.  A hand-driven pool of one thread; no sleeps.
"""

import errno
import socket

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from fakes import HandDrivenPool, ThreadlessReactor, connect, makeChecker, makeFactory
from fakes import FakeDatagramTransport
from primed.udp import PrimeDatagramProtocol

BIG_PRIME = 2**607 - 1  # above INLINE_MAX_BITS: goes to the pool
BIG_LINE = b"%d\n" % BIG_PRIME


class ResetSocket(socket.socket):
    """
    A real socket (the protocol looks for one under its transport) whose
    pending error says the peer reset the connection, or not; reading it
    clears it, as the kernel does.
    """

    error = 0

    def getsockopt(self, level, option, *args):
        if (level, option) == (socket.SOL_SOCKET, socket.SO_ERROR):
            error, self.error = self.error, 0
            return error
        return socket.socket.getsockopt(self, level, option, *args)


class SocketTransport(StringTransport):
    """
    A L{StringTransport} from C{host} with a socket under it, and
    C{abortConnection} as a real one behaves: the protocol's
    C{connectionLost} follows.
    """

    def __init__(self, host, sock=None):
        StringTransport.__init__(self, peerAddress=IPv4Address("TCP", host, 40000))
        self.sock = sock

    def getHandle(self):
        return self.sock

    def abortConnection(self):
        StringTransport.abortConnection(self)
        self.aborted = True


class Harness:
    """
    One pool thread, C{maxQueued} places, C{perSource} per source.
    """

    def __init__(self, maxQueued=64, perSource=0, concurrency=1, **options):
        self.reactor = ThreadlessReactor()
        self.pool = HandDrivenPool()
        self.checker = makeChecker(self.pool, self.reactor, maxQueued=maxQueued,
                                   maxQueuedPerSource=perSource, concurrency=concurrency)
        self.factory = makeFactory(self.checker, self.reactor, **options)
        self.counters = self.factory.counters

    def connect(self, host="192.0.2.1", sock=None):
        return connect(self.factory, SocketTransport(host, sock))

    def runOne(self):
        self.pool.run()


class FairShareTests(unittest.TestCase):
    def test_oneBacklogDelaysAnotherByOneCheck(self):
        """
        A connection that pipelined ten big numbers and a connection from
        another address that sent one: the second waits only for the check
        running (today's FIFO pool: for all ten).
        """
        harness = Harness()
        hog, hogTransport = harness.connect("192.0.2.1")
        victim, victimTransport = harness.connect("192.0.2.2")
        hog.dataReceived(BIG_LINE * 10)
        victim.dataReceived(BIG_LINE)
        runs = 0
        while not victimTransport.value():
            harness.runOne()
            runs += 1
        self.assertEqual(runs, 2)
        self.assertEqual(victimTransport.value(), b"T\n")
        while harness.pool.work:
            harness.runOne()
        self.assertEqual(hogTransport.value(), b"T\n" * 10)

    def test_moreConnectionsWinNoShares(self):
        """
        Four connections from one address, one from another: the lone one
        gets every other check, not one in five.
        """
        # The first check runs at once; then the ring alternates.
        harness = Harness()
        many = [harness.connect("192.0.2.1") for _ in range(4)]
        lone, loneTransport = harness.connect("192.0.2.2")
        for protocol, _ in many:
            protocol.dataReceived(BIG_LINE * 3)
        lone.dataReceived(BIG_LINE * 3)
        for _ in range(7):
            harness.runOne()
        self.assertEqual(loneTransport.value(), b"T\n" * 3)

    def test_nextHeldLineIsNoNewcomer(self):
        """
        A connection held by C{--max-inflight} submits its next big number
        from its previous one's result, when that source has, for a moment,
        nothing running or waiting: it is a busy source all the same, and
        goes behind the other address's waiting check, not ahead of it.
        """
        harness = Harness(maxInflight=1)
        hog, hogTransport = harness.connect("192.0.2.1")
        victim, victimTransport = harness.connect("192.0.2.2")
        hog.dataReceived(BIG_LINE * 3)
        victim.dataReceived(BIG_LINE)
        harness.runOne()
        self.assertEqual(hogTransport.value(), b"T\n")
        harness.runOne()
        self.assertEqual(victimTransport.value(), b"T\n")
        self.assertEqual(hogTransport.value(), b"T\n")
        while harness.pool.work:
            harness.runOne()
        self.assertEqual(hogTransport.value(), b"T\n" * 3)

    def test_quotaPausesOnlyThatSource(self):
        """
        A source over its quota stops reading (counted); another source's
        big number still goes in.
        """
        harness = Harness(maxQueued=8, perSource=2)
        hog, hogTransport = harness.connect("192.0.2.1")
        hog.dataReceived(BIG_LINE * 3 + b"5\n")
        self.assertEqual(hogTransport.producerState, "paused")
        self.assertEqual(harness.checker.queued, 2)
        self.assertEqual(harness.counters.tcpSourceQuota, 1)
        other, otherTransport = harness.connect("192.0.2.2")
        other.dataReceived(BIG_LINE)
        self.assertEqual(otherTransport.producerState, "producing")
        self.assertEqual(harness.checker.queued, 3)
        while harness.pool.work:
            harness.runOne()
        self.assertEqual(hogTransport.value(), b"T\n" * 3 + b"T\n")
        self.assertEqual(otherTransport.value(), b"T\n")
        self.assertEqual(hogTransport.producerState, "producing")

    def test_proxyAddressIsTheSource(self):
        """
        Behind a balancer every connection comes from its address: the
        PROXY header's address is the source, so two clients behind it
        take turns.
        """
        harness = Harness(maxQueued=8, perSource=2)
        first, _ = harness.connect("198.51.100.1")
        first.peerAddress = IPv4Address("TCP", "203.0.113.1", 1)
        second, secondTransport = harness.connect("198.51.100.1")
        second.peerAddress = IPv4Address("TCP", "203.0.113.2", 1)
        first.dataReceived(BIG_LINE * 2)
        second.dataReceived(BIG_LINE * 2)
        self.assertEqual(secondTransport.producerState, "producing")
        self.assertEqual(harness.checker.queued, 4)
        self.assertEqual(harness.checker.queue.sources(), 2)

    def test_ipv6SourcesBySlash64(self):
        harness = Harness(maxQueued=8, perSource=2)
        first, _ = harness.connect()
        first.transport.peerAddress = IPv6Address("TCP", "2001:db8::1", 1)
        second, secondTransport = harness.connect()
        second.transport.peerAddress = IPv6Address("TCP", "2001:db8::2", 1)
        first.dataReceived(BIG_LINE * 2)
        second.dataReceived(BIG_LINE)
        self.assertEqual(secondTransport.producerState, "paused")
        self.assertEqual(harness.checker.queue.sources(), 1)


class LostConnectionTests(unittest.TestCase):
    def test_queuedChecksDroppedRunningOneDiscarded(self):
        """
        A connection lost with one check running and four waiting: the four
        never run (counted), the running one finishes and its result is
        discarded (counted), nothing is written.
        """
        harness = Harness()
        protocol, transport = harness.connect()
        protocol.dataReceived(BIG_LINE * 5)
        self.assertEqual(len(harness.pool.work), 1)
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(harness.checker.queue.cancelled, 4)
        self.assertEqual(harness.checker.queued, 1)
        harness.runOne()
        self.assertEqual(harness.pool.work, [])
        self.assertEqual(harness.checker.queued, 0)
        self.assertEqual(harness.counters.poolDiscarded, 1)
        self.assertEqual(harness.counters.tcpPrime, 0)
        self.assertEqual(transport.value(), b"")

    def test_unixPeerQueuedChecksDropped(self):
        """
        A UNIX socket's peer has no address (its source is L{None}, one for
        all of them): its checks are dropped all the same when it is lost.
        """
        from twisted.internet.address import UNIXAddress

        harness = Harness()
        protocol, transport = connect(
            harness.factory, StringTransport(peerAddress=UNIXAddress(None)))
        protocol.dataReceived(BIG_LINE * 3)
        self.assertEqual(harness.checker.queue.sources(), 1)
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(harness.checker.queue.cancelled, 2)

    def test_halfClosedGetsEveryAnswer(self):
        harness = Harness()
        protocol, transport = harness.connect(sock=ResetSocket())
        self.addCleanup(transport.sock.close)
        protocol.dataReceived(BIG_LINE * 3)
        protocol.readConnectionLost()
        while harness.pool.work:
            harness.runOne()
        self.assertEqual(transport.value(), b"T\n" * 3)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(harness.checker.queue.cancelled, 0)

    def test_halfClosedThenResetNoticedAtItsNextReply(self):
        """
        A half-closed connection reads no more (Twisted stops reading at
        the FIN), so a later reset (the client killed) is as invisible as
        on a paused one: at its next reply the pending error is read and
        its waiting checks are dropped before the pool starts the next.
        """
        harness = Harness()
        sock = ResetSocket()
        self.addCleanup(sock.close)
        protocol, transport = harness.connect("192.0.2.1", sock)
        protocol.dataReceived(BIG_LINE * 3)
        protocol.readConnectionLost()
        self.assertEqual(protocol._paused, set())
        sock.error = errno.ECONNRESET
        harness.runOne()
        self.assertTrue(transport.aborted)
        self.assertEqual(harness.pool.work, [])
        self.assertEqual(harness.checker.queue.cancelled, 2)
        self.assertEqual(harness.counters.poolDiscarded, 1)

    def test_pausedConnectionNoticesResetAtItsNextReply(self):
        """
        A connection paused for the pool does not read, so it cannot see a
        reset; when its next reply is due, the socket's pending error is
        read: the rest of its checks are dropped before any of them runs,
        and the connection is aborted.  Another source's check runs next.
        """
        harness = Harness(maxQueued=8, perSource=3)
        sock = ResetSocket()
        self.addCleanup(sock.close)
        protocol, transport = harness.connect("192.0.2.1", sock)
        protocol.dataReceived(BIG_LINE * 6)
        self.assertEqual(transport.producerState, "paused")
        other, otherTransport = harness.connect("192.0.2.2")
        other.dataReceived(BIG_LINE)
        sock.error = errno.ECONNRESET
        harness.runOne()
        self.assertTrue(transport.aborted)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(harness.checker.queue.cancelled, 2)
        self.assertEqual(harness.counters.poolDiscarded, 1)
        self.assertEqual(len(harness.pool.work), 1)  # the other's
        harness.runOne()
        self.assertEqual(otherTransport.value(), b"T\n")
        self.assertEqual(harness.pool.work, [])
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(harness.checker.queued, 0)

    def test_secondRunningCheckAfterAResetDiscarded(self):
        """
        Two checks running when the reset is noticed: the second one's
        result, arriving before the transport reports the loss, is
        discarded too (counted), not counted as answered; the reset is
        logged once.
        """
        from test_tcp import captureLog, logged

        events = captureLog(self)
        harness = Harness(maxQueued=8, perSource=3, concurrency=2)
        sock = ResetSocket()
        self.addCleanup(sock.close)
        protocol, transport = harness.connect("192.0.2.1", sock)
        protocol.dataReceived(BIG_LINE * 5)
        sock.error = errno.ECONNRESET
        harness.runOne()
        harness.runOne()
        self.assertEqual(harness.counters.poolDiscarded, 2)
        self.assertEqual(harness.counters.tcpPrime, 0)
        self.assertEqual(harness.checker.queue.cancelled, 1)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(logged(events, "reset"), ["Connection from 192.0.2.1:40000 reset: "
                                                   "dropping its queued checks"])

    def test_resetsOfTwoConnectionsAddUp(self):
        harness = Harness(maxQueued=8, perSource=1)
        for host in ("192.0.2.1", "192.0.2.2"):
            sock = ResetSocket()
            self.addCleanup(sock.close)
            protocol, transport = harness.connect(host, sock)
            protocol.dataReceived(BIG_LINE * 2)
            sock.error = errno.ECONNRESET
        harness.runOne()
        harness.runOne()
        self.assertEqual(harness.counters.poolDiscarded, 2)
        self.assertEqual(harness.pool.work, [])

    def test_pausesCounted(self):
        """
        Each time a source's quota stops a connection, it is counted.
        """
        harness = Harness(maxQueued=8, perSource=1)
        protocol, _ = harness.connect()
        protocol.dataReceived(BIG_LINE * 3)
        self.assertEqual(harness.counters.tcpSourceQuota, 1)
        harness.runOne()
        self.assertEqual(harness.counters.tcpSourceQuota, 2)

    def test_pausedConnectionWithoutErrorAnswered(self):
        harness = Harness(maxQueued=8, perSource=2)
        sock = ResetSocket()
        self.addCleanup(sock.close)
        protocol, transport = harness.connect("192.0.2.1", sock)
        protocol.dataReceived(BIG_LINE * 3)
        while harness.pool.work:
            harness.runOne()
        self.assertEqual(transport.value(), b"T\n" * 3)
        self.assertFalse(getattr(transport, "aborted", False))

    def test_inflightPausedNoticesReset(self):
        """
        Paused for C{--max-inflight} rather than for the pool: the same.
        """
        harness = Harness(maxInflight=2)
        sock = ResetSocket()
        self.addCleanup(sock.close)
        protocol, transport = harness.connect("192.0.2.1", sock)
        protocol.dataReceived(BIG_LINE * 4)
        self.assertEqual(transport.producerState, "paused")
        sock.error = errno.ECONNRESET
        harness.runOne()
        self.assertTrue(transport.aborted)
        self.assertEqual(harness.checker.queue.cancelled, 1)
        self.assertEqual(harness.pool.work, [])

    def test_resetWhileWaitingForRoomRunsNothing(self):
        """
        A connection paused for its source's quota, with no check of its
        own, is reset meanwhile: when room comes it must not hand the pool
        a check first (a vanished client's work, a whole check per paused
        connection); it is aborted when woken, and nothing runs for it.
        """
        harness = Harness(maxQueued=8, perSource=2)
        socks = [ResetSocket(), ResetSocket()]
        for sock in socks:
            self.addCleanup(sock.close)
        first, firstTransport = harness.connect("192.0.2.1", socks[0])
        first.dataReceived(BIG_LINE * 3)
        second, secondTransport = harness.connect("192.0.2.1", socks[1])
        second.dataReceived(BIG_LINE * 2)
        self.assertEqual(secondTransport.producerState, "paused")
        for sock in socks:
            sock.error = errno.ECONNRESET
        harness.runOne()
        self.assertTrue(firstTransport.aborted)
        self.assertTrue(getattr(secondTransport, "aborted", False))
        self.assertEqual(harness.pool.work, [])
        self.assertEqual(harness.checker.queued, 0)
        self.assertEqual(harness.checker.queue.roomWaiters(), 0)

    def test_lostWhileWaitingForRoom(self):
        harness = Harness(maxQueued=8, perSource=1)
        protocol, _ = harness.connect()
        protocol.dataReceived(BIG_LINE * 2)
        self.assertEqual(harness.checker.queue.roomWaiters(), 1)
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(harness.checker.queue.roomWaiters(), 0)


class SocketOfTests(unittest.TestCase):
    """
    Where L{primed.fastpath.socketOf} finds the socket: the transport's own
    handle, or, under TLS (whose handle is an OpenSSL connection), the
    handle of the transport beneath.
    """

    def test_throughTLS(self):
        from primed.fastpath import socketOf as _socketOf

        sock = socket.socket()
        self.addCleanup(sock.close)

        class TCP:
            def getHandle(self):
                return sock

        class TLS:
            transport = TCP()

            def getHandle(self):
                return object()  # an OpenSSL.SSL.Connection, say

        self.assertIs(_socketOf(TCP()), sock)
        self.assertIs(_socketOf(TLS()), sock)
        self.assertIsNone(_socketOf(StringTransport()))


class DatagramFairnessTests(unittest.TestCase):
    def setUp(self):
        self.pool = HandDrivenPool()
        self.checker = makeChecker(self.pool, maxQueued=8, maxQueuedPerSource=2,
                                   concurrency=1)
        self.protocol = PrimeDatagramProtocol(self.checker, self.checker.reactor)
        self.transport = FakeDatagramTransport()
        self.protocol.makeConnection(self.transport)

    def test_floodingSourceDropsItsOwn(self):
        """
        A source over its quota loses its own requests (counted); another
        source's big request is taken, and served next.
        """
        flood, victim = ("192.0.2.1", 1000), ("192.0.2.2", 2000)
        for _ in range(5):
            self.protocol.datagramReceived(BIG_LINE, flood)
        self.assertEqual(self.protocol.dropped, 3)
        self.assertEqual(self.protocol.counters.udpSourceQuota, 3)
        self.protocol.datagramReceived(BIG_LINE, victim)
        self.assertEqual(self.protocol.dropped, 3)
        for _ in range(3):
            self.pool.run()
        self.assertEqual(self.transport.written,
                         [(b"T\n", flood), (b"T\n", victim), (b"T\n", flood)])
        self.assertEqual(self.protocol.inflight, 0)

    def test_fullPoolDropNotCountedAsQuota(self):
        for n in range(8):
            self.protocol.datagramReceived(BIG_LINE, ("192.0.2.%d" % n, 1))
        self.assertEqual(self.checker.queued, 8)
        self.protocol.datagramReceived(BIG_LINE, ("192.0.2.99", 1))
        self.assertEqual(self.protocol.dropped, 1)
        self.assertEqual(self.protocol.counters.udpSourceQuota, 0)
