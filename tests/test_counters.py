"""
Tests for L{primed.counters}: the histogram's arithmetic, and that the
counts follow what the TCP and UDP protocols and the service actually do
(StringTransport, a fake datagram transport, a fake clock, a hand-driven
pool).
"""

from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from fakes import (
    HandDrivenPool, ThreadlessReactor, connect, makeChecker, makeDatagramProtocol, makeFactory,
    makeService,
)
from primed.counters import CHECK_SECONDS_BUCKETS, CheckTimes, Counters

BIG_PRIME = 2**607 - 1  # goes to the pool
BIG_COMPOSITE = (2**607 - 1) * (2**521 - 1)
ADDR = ("127.0.0.1", 40000)


class SlotsTests(unittest.TestCase):
    """
    L{Counters}' slots and their annotations (what mypy sees) name the same
    counts, every one an int starting at 0; the slots stay slots.
    """

    def test_annotated(self):
        from primed.counters import Counters

        self.assertEqual(sorted(Counters.__slots__), sorted(Counters.__annotations__))
        self.assertEqual(set(Counters.__annotations__.values()), {int})
        counters = Counters()
        self.assertEqual(set(counters.snapshot().values()), {0})
        self.assertFalse(hasattr(counters, "__dict__"))


class CheckTimesTests(unittest.TestCase):
    def test_bucketsInclusiveAndCumulative(self):
        times = CheckTimes((0.001, 0.01, 1.0))
        for seconds in [0.0005, 0.001, 0.002, 0.5, 3.0]:
            times.observe(seconds)
        buckets, total = times.cumulative()
        self.assertEqual(
            buckets, [(0.001, 2), (0.01, 3), (1.0, 4), (float("inf"), 5)]
        )
        self.assertAlmostEqual(total, 3.5035)
        self.assertEqual(times.count, 5)

    def test_defaultBounds(self):
        self.assertEqual(CHECK_SECONDS_BUCKETS[0], 0.0001)
        self.assertEqual(CHECK_SECONDS_BUCKETS[-1], 10.0)
        self.assertEqual(list(CHECK_SECONDS_BUCKETS), sorted(CHECK_SECONDS_BUCKETS))

    def test_poolChecksTimed(self):
        """
        Checks that ran in the pool are timed; inline ones and abandoned
        ones are not.
        """
        pool = HandDrivenPool()
        checker = makeChecker(pool)
        checker.submit(BIG_PRIME)
        abandoned = checker.submit(BIG_COMPOSITE)
        pool.run()
        self.assertEqual(checker.checkTimes.count, 1)
        checker.abandon()
        pool.run()
        self.failureResultOf(abandoned)
        self.assertEqual(checker.checkTimes.count, 1)
        buckets, total = checker.checkTimes.cumulative()
        self.assertEqual(buckets[-1], (float("inf"), 1))
        self.assertGreater(total, 0)


class TCPCountTests(unittest.TestCase):
    def setUp(self):
        self.reactor = ThreadlessReactor()
        self.pool = HandDrivenPool()
        self.checker = makeChecker(self.pool, self.reactor, maxQueued=1)
        self.factory = makeFactory(
            self.checker, self.reactor, maxDigits=400, maxConnections=2, idleTimeout=30
        )
        self.counters = self.factory.counters

    def count(self, *names):
        snapshot = self.counters.snapshot()
        return [snapshot[name] for name in names]

    def test_verdicts(self):
        protocol, transport = connect(self.factory)
        protocol.dataReceived(b"2\n3\n4\n-7\n0\nx\n\n17\r\n9\n")
        self.assertEqual(transport.value(), b"T\nT\nF\nF\nF\nE\nE\nT\nF\n")
        self.assertEqual(self.count("tcpPrime", "tcpNotPrime", "tcpInvalid"), [3, 4, 2])

    def test_oneRequestPerRead(self):
        """
        A read holding one whole request takes the protocol's one-line path
        (the common shape: telnet, nc, one request per round trip); it counts
        like any other.
        """
        protocol, transport = connect(self.factory)
        for request in [b"2\n", b"4\n", b"-7\n", b"x\n", b"17\n", b"9" * 500 + b"\n", b"9\n"]:
            protocol.dataReceived(request)
        self.assertEqual(transport.value(), b"T\nF\nF\nE\nT\nE\nF\n")
        self.assertEqual(self.count("tcpPrime", "tcpNotPrime", "tcpInvalid", "linesTooLong"),
                         [2, 3, 2, 1])

    def test_poolVerdictsCountedWhenAnswered(self):
        """
        A big number counts when its verdict is known, not when it is read;
        lines held behind a full pool count once they are checked.
        """
        protocol, transport = connect(self.factory)
        protocol.dataReceived(b"%d\n%d\n5\n" % (BIG_PRIME, BIG_COMPOSITE))
        self.assertEqual(self.count("tcpPrime", "tcpNotPrime"), [0, 0])
        self.pool.run()  # BIG_PRIME; then BIG_COMPOSITE goes in, 5 is checked
        self.assertEqual(self.count("tcpPrime", "tcpNotPrime"), [2, 0])
        self.pool.run()
        self.assertEqual(transport.value(), b"T\nF\nT\n")
        self.assertEqual(self.count("tcpPrime", "tcpNotPrime"), [2, 1])
        protocol.dataReceived(b"%d\n" % BIG_COMPOSITE)
        self.pool.run()
        self.assertEqual(self.count("tcpPrime", "tcpNotPrime"), [2, 2])

    def test_heldLinesCountOnce(self):
        """
        Lines held back by C{--max-inflight} count once, when answered, not
        also when they were first read and held.
        """
        factory = makeFactory(self.checker, self.reactor, maxDigits=400, maxInflight=1)
        protocol, transport = connect(factory)
        protocol.dataReceived(b"%d\n5\n4\nx\n%s\n" % (BIG_PRIME, b"1" * 500))
        self.pool.run()
        self.assertEqual(transport.value(), b"T\nT\nF\nE\nE\n")
        self.assertEqual(
            [factory.counters.snapshot()[name]
             for name in ("tcpPrime", "tcpNotPrime", "tcpInvalid", "linesTooLong")],
            [2, 1, 2, 1],
        )
        protocol.dataReceived(b"%d\n9\n" % BIG_PRIME)
        self.pool.run()
        self.assertEqual(transport.value(), b"T\nT\nF\nE\nE\nT\nF\n")
        self.assertEqual(factory.counters.snapshot()["tcpNotPrime"], 2)

    def test_goneBeforeVerdictNotCounted(self):
        """
        A big number whose client closed the connection before its verdict
        was known is not counted as answered (no reply left), like a failed
        check for a gone client and the lines it had not had read yet.
        """
        protocol, transport = connect(self.factory)
        protocol.dataReceived(b"%d\n" % BIG_PRIME)
        protocol.connectionLost(None)
        self.pool.run()
        self.assertEqual(self.count("tcpPrime", "tcpNotPrime", "tcpInvalid"), [0, 0, 0])
        self.assertEqual(transport.value(), b"")

    def test_failedCheckCountsInvalid(self):
        protocol, transport = connect(self.factory)
        protocol.dataReceived(b"x\n%d\n" % BIG_PRIME)
        onResult, f, args, kwargs = self.pool.work.pop()
        onResult(False, RuntimeError("boom"))
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(transport.value(), b"E\nE\n")
        self.assertEqual(self.count("tcpInvalid"), [2])

    def test_lineTooLong(self):
        protocol, transport = connect(self.factory)
        protocol.dataReceived(b"1" * 1000)
        protocol.dataReceived(b"1" * 1000 + b"\n7\n")
        self.assertEqual(transport.value(), b"E\nT\n")
        self.assertEqual(self.count("linesTooLong", "tcpInvalid", "tcpPrime"), [1, 1, 1])
        protocol.dataReceived(b"1" * 1000)
        protocol.dataReceived(b"\n")
        self.assertEqual(self.count("linesTooLong", "tcpInvalid"), [2, 2])

    def test_lineTooLongWhateverTheReads(self):
        """
        An over-long line counts in C{linesTooLong} however TCP delivered
        it: whole in one read, or cut so that its end arrived before the
        buffer passed the limit, as when it was skipped unbuffered.
        """
        longLine = b"1" * 1000
        protocol, transport = connect(self.factory)
        protocol.dataReceived(longLine + b"\n7\n")
        protocol.dataReceived(longLine[:400])
        protocol.dataReceived(longLine[400:] + b"\n")
        self.assertEqual(transport.value(), b"E\nT\nE\n")
        self.assertEqual(self.count("linesTooLong", "tcpInvalid", "tcpPrime"), [2, 2, 1])

    def test_lineTooLongFromTheLimitOn(self):
        """
        A line of exactly the length limit is a request (here an invalid
        one), not too long; one byte more is.  Each counts, whether the
        read held it alone or with other lines.
        """
        limit = 400 + 64  # maxLineLength(maxDigits=400)
        atLimit, overLimit = b" " * (limit - 1) + b"x", b"1" * (limit + 1)
        protocol, transport = connect(self.factory)
        for read in [atLimit + b"\n", overLimit + b"\n", overLimit + b"\n"]:
            protocol.dataReceived(read)
        self.assertEqual(self.count("linesTooLong", "tcpInvalid"), [2, 3])
        protocol.dataReceived(b"7\n" + atLimit + b"\n" + overLimit + b"\n" + overLimit + b"\n")
        self.assertEqual(transport.value(), b"E\n" * 3 + b"T\n" + b"E\n" * 3)
        self.assertEqual(self.count("linesTooLong", "tcpInvalid"), [4, 6])

    def test_connections(self):
        """
        Accepted and refused connections are counted; open ones are the
        factory's set.
        """
        for _ in range(2):
            connect(self.factory)[0].dataReceived(b"7\n")
        self.assertIsNone(self.factory.buildProtocol(None))
        self.assertEqual(self.count("tcpAccepted"), [2])
        self.assertEqual(self.factory.refused, 1)
        self.assertEqual(len(self.factory.protocols), 2)

    def test_idleClosed(self):
        protocol, transport = connect(self.factory)
        other, otherTransport = connect(self.factory)
        self.reactor.advance(29)
        self.assertEqual(self.count("tcpIdleClosed"), [0])
        self.reactor.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(otherTransport.disconnecting)
        self.assertEqual(self.count("tcpIdleClosed"), [2])

    def test_waitingForAnswerIsNotIdle(self):
        protocol, transport = connect(self.factory)
        protocol.dataReceived(b"%d\n" % BIG_PRIME)
        self.reactor.advance(30)
        self.assertEqual(self.count("tcpIdleClosed"), [0])

    def test_sharedCounters(self):
        counters = Counters()
        factory = makeFactory(counters=counters)
        protocol, _ = connect(factory)
        protocol.dataReceived(b"7\n")
        self.assertIs(factory.counters, counters)
        self.assertEqual(counters.tcpPrime, 1)


class UDPCountTests(unittest.TestCase):
    def setUp(self):
        self.pool = HandDrivenPool()
        self.checker = makeChecker(self.pool, maxQueued=1)
        self.protocol, self.transport = makeDatagramProtocol(self.checker, maxDigits=400)
        self.counters = self.protocol.counters

    def count(self, *names):
        snapshot = self.counters.snapshot()
        return [snapshot[name] for name in names]

    def test_verdicts(self):
        for datagram in [b"2", b"4\n", b"-1", b"x", b"17\r\n", b"1" * 1000]:
            self.protocol.datagramReceived(datagram, ADDR)
        self.assertEqual(self.count("udpPrime", "udpNotPrime", "udpInvalid"), [2, 2, 2])
        self.assertEqual(self.count("linesTooLong"), [1])
        self.assertEqual(len(self.transport.written), 6)

    def test_eachCounts(self):
        """
        Every datagram adds one to its own count.
        """
        for datagram in [b"", b"", b"x", b"y", b"4", b"9", b"1" * 1000, b"1" * 1000]:
            self.protocol.datagramReceived(datagram, ADDR)
        self.assertEqual(self.count("udpIgnored", "udpInvalid", "udpNotPrime", "linesTooLong"),
                         [2, 4, 2, 2])

    def test_poolVerdictsCountEach(self):
        for number in [BIG_PRIME, BIG_COMPOSITE, BIG_PRIME, BIG_COMPOSITE]:
            self.protocol.datagramReceived(b"%d" % number, ADDR)
            self.pool.run()
        self.assertEqual(self.count("udpPrime", "udpNotPrime"), [2, 2])

    def test_failedCheckCountsInvalid(self):
        self.protocol.datagramReceived(b"x", ADDR)
        self.protocol.datagramReceived(b"%d" % BIG_PRIME, ADDR)
        onResult, f, args, kwargs = self.pool.work.pop()
        onResult(False, RuntimeError("boom"))
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual([data for data, addr in self.transport.written], [b"E\n", b"E\n"])
        self.assertEqual(self.count("udpInvalid", "udpPrime"), [2, 0])

    def test_ignoredAndDropped(self):
        self.protocol.datagramReceived(b"", ADDR)
        self.protocol.datagramReceived(b"%d" % BIG_PRIME, ADDR)
        self.protocol.datagramReceived(b"%d" % BIG_COMPOSITE, ADDR)  # pool full
        self.assertEqual(self.count("udpIgnored"), [1])
        self.assertEqual(self.protocol.dropped, 1)
        self.assertEqual(self.count("udpPrime", "udpNotPrime"), [0, 0])
        self.pool.run()
        self.assertEqual(self.count("udpPrime", "udpNotPrime", "udpInvalid"), [1, 0, 0])


class ServiceCountTests(unittest.TestCase):
    def setUp(self):
        self.reactor = ThreadlessReactor()
        self.pool = HandDrivenPool()
        self.service = makeService(self.reactor, self.pool, drainTimeout=10)
        self.service.startService()

    def test_oneCountersForAll(self):
        counters = self.service.counters
        self.assertIs(self.service.factory.counters, counters)
        self.assertIs(self.service.datagramProtocols[0].counters, counters)

    def test_drainUnanswered(self):
        """
        Requests cut off by the drain deadline are counted: here a big one
        in the pool and the small one queued behind it.
        """
        protocol, transport = connect(self.service.factory, StringTransport())
        protocol.dataReceived(b"%d\n4\n" % BIG_PRIME)
        stopped = self.service.stopService()
        self.assertEqual(self.service.counters.drainUnanswered, 0)
        self.reactor.advance(10)
        self.successResultOf(stopped)
        self.assertEqual(self.service.counters.drainUnanswered, 2)
