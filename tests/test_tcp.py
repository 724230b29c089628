"""
Tests for L{primed.tcp}: framing, ordering, backpressure, half-close, idle
timeout, connection limit and draining, through a L{StringTransport}.
"""

from hypothesis import given, settings, strategies as st
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from twisted.internet.address import IPv4Address
from twisted.logger import globalLogPublisher, formatEvent

from fakes import HandDrivenPool, SynchronousPool, ThreadlessReactor, connect, makeChecker, makeFactory
from primed import wire
from primed.primality import INLINE_MAX_BITS, is_prime

BIG_PRIME = 2**607 - 1  # above INLINE_MAX_BITS: goes to the pool
BIG_COMPOSITE = (2**607 - 1) * (2**521 - 1)


class CountingTransport(StringTransport):
    """
    Counts writes, to check that one read's replies leave in one write.
    """

    writes = 0

    def write(self, data):
        self.writes += 1
        StringTransport.write(self, data)


def captureLog(testCase):
    """
    Every log event from now to the end of C{testCase}, formatted.
    """
    events = []
    globalLogPublisher.addObserver(events.append)
    testCase.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def logged(events, fragment):
    return [formatEvent(e) for e in events if fragment in formatEvent(e)]


class Harness:
    """
    A factory on a hand-driven pool and a fake clock, and helpers to open
    connections to it.
    """

    def __init__(self, pool=None, maxQueued=64, maxQueuedPerSource=None, **options):
        self.reactor = ThreadlessReactor()
        self.pool = pool if pool is not None else HandDrivenPool()
        # Every connection here comes from one address: by default, the
        # quota of that one source is the whole queue.
        self.checker = makeChecker(
            self.pool, self.reactor, maxQueued=maxQueued,
            maxQueuedPerSource=maxQueuedPerSource or maxQueued)
        self.factory = makeFactory(self.checker, self.reactor, **options)

    def connect(self, transport=None):
        return connect(self.factory, transport or CountingTransport())


class FramingTests(unittest.TestCase):
    def setUp(self):
        self.harness = Harness()
        self.protocol, self.transport = self.harness.connect()

    def test_seedValues(self):
        for value, reply in zip(
            ["4j", 4, 5, -5, 17, 29, 2**50, 2**50 - 1],
            [b"E\n", b"F\n", b"T\n", b"F\n", b"T\n", b"T\n", b"F\n", b"F\n"],
        ):
            self.transport.clear()
            self.protocol.dataReceived(b"%s\n" % str(value).encode())
            self.assertEqual(self.transport.value(), reply)

    def test_smallestNumbersOnTheGeneralPath(self):
        """
        0 to 4 get their verdicts on the general path (L{_process}) too, not
        only on the short paths of L{primed.tcpreads}: a line completed
        across reads, lines after one the short paths do not take, a signed
        or padded line.  (2 is the smallest prime: a bound of C{<= 2} for
        "not prime" would answer it F.)
        """
        for read in [b"2", b"\n", b"x\n2\n3\n1\n0\n4\n", b"+2\n", b" 3\r\n"]:
            self.protocol.dataReceived(read)
        self.assertEqual(self.transport.value(), b"T\nE\nT\nT\nF\nF\nF\nT\nT\n")

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(
        st.integers(min_value=-10, max_value=2**200).map(lambda n: b"%d" % n),
        st.binary(max_size=30).filter(lambda b: b"\n" not in b),
        st.sampled_from([b"0" * 60 + b"17", b"1" + b"0" * 4300, b"9" * 4301,
                         b"+17", b" 17\r", b"\xef\xbc\x91"]),
    ))
    def test_oneLineReadMatchesReference(self, line):
        """
        A read holding exactly one line takes the one-line fast path; its
        reply is the reference one, and the same as in a batch.
        """
        harness = Harness(pool=SynchronousPool())
        protocol, transport = harness.connect()
        protocol.dataReceived(line + b"\n")
        expected = wire.replyFor(line, is_prime)
        self.assertEqual(transport.value(), expected)
        protocol.dataReceived(b"5\n" + line + b"\n")
        self.assertEqual(transport.value(), expected + b"T\n" + expected)

    def test_severalLinesOneWrite(self):
        self.protocol.dataReceived(b"2\n3\n4\r\n5\nx\n")
        self.assertEqual(self.transport.value(), b"T\nT\nF\nT\nE\n")
        self.assertEqual(self.transport.writes, 1)

    def test_byteByByte(self):
        for byte in b"17\r\n18\n":
            self.protocol.dataReceived(bytes([byte]))
        self.assertEqual(self.transport.value(), b"T\nF\n")

    def test_splitAcrossReads(self):
        self.protocol.dataReceived(b"1")
        self.assertEqual(self.transport.value(), b"")
        self.protocol.dataReceived(b"3\n1")
        self.protocol.dataReceived(b"5\n")
        self.assertEqual(self.transport.value(), b"T\nF\n")

    def test_connectionSurvivesErrors(self):
        self.protocol.dataReceived(b"nope\n\n1.5\n7\n")
        self.assertEqual(self.transport.value(), b"E\nE\nE\nT\n")
        self.assertFalse(self.transport.disconnecting)

    def test_overLongLineAnsweredAndSkipped(self):
        """
        A line past the limit is answered E as soon as it is too long, the
        buffer never holds more than the limit plus one read, and the line
        after it is answered.
        """
        limit = wire.maxLineLength(wire.DEFAULT_MAX_DIGITS)
        chunk = b"9" * 65536
        for _ in range(64):  # 4 MiB without a newline
            self.protocol.dataReceived(chunk)
            self.assertLessEqual(len(self.protocol._buffer), limit + len(chunk))
        self.assertEqual(self.transport.value(), b"E\n")
        self.protocol.dataReceived(b"99\n13\n")
        self.assertEqual(self.transport.value(), b"E\nT\n")

    def test_discardingEndsAtTheNewline(self):
        """
        Skipping an over-long line ends at its newline, even when that newline
        and each later request arrive in reads of their own.
        """
        limit = wire.maxLineLength(wire.DEFAULT_MAX_DIGITS)
        self.protocol.dataReceived(b"9" * (limit + 1))
        self.assertEqual(self.transport.value(), b"E\n")
        self.protocol.dataReceived(b"99\n")  # the end of the long line
        for request in [b"13\n", b"17\n", b"4\n"]:
            self.protocol.dataReceived(request)
        self.assertEqual(self.transport.value(), b"E\nT\nT\nF\n")

    def test_discardingEndsWhereTheReadBegins(self):
        """
        The newline that ends an over-long line may be the first byte of a
        read; the request right after it is answered whole.
        """
        limit = wire.maxLineLength(wire.DEFAULT_MAX_DIGITS)
        self.protocol.dataReceived(b"9" * (limit + 1))
        self.protocol.dataReceived(b"\n15\n")
        self.protocol.dataReceived(b"9" * (limit + 1))
        self.protocol.dataReceived(b"99\n15\n")
        self.assertEqual(self.transport.value(), b"E\nF\nE\nF\n")

    def test_shortReadsSkipTheBatchPath(self):
        """
        A read of complete lines of plain digits, each short enough to be
        checked inline (L{wire.inlineDigitsLimit}), with nothing owed, held or
        buffered, is answered without L{_process} (the commonest reads, one
        line or pipelined: L{primed.tcpreads}); any other line goes through
        it, alone, and so does a line completed across reads, and the
        connection's first request (noted for the connection limit).
        """
        batches = []
        process = self.protocol._process
        self.protocol._process = lambda lines, *rest: (batches.append(list(lines)),
                                                       process(lines, *rest))
        fast = wire.inlineDigitsLimit(wire.DEFAULT_MAX_DIGITS, INLINE_MAX_BITS)
        shortest = b"9" * fast  # not prime, and the longest that skips
        largestInline = b"%d" % (2**INLINE_MAX_BITS - 1)  # not prime, longer
        for read in [b"17\n", b"18\n", shortest + b"\n", b"19\n" + shortest + b"\n23\n",
                     b"xy\n", b"-3\n", b" 13\r\n", largestInline + b"\n"]:
            self.protocol.dataReceived(read)
        self.assertEqual(self.transport.value(), b"T\nF\nF\nT\nF\nT\nE\nF\nT\nF\n")
        self.assertEqual(batches, [[b"17"], [b"xy"], [b"-3"], [b" 13\r"], [largestInline]])
        del batches[:]
        self.transport.clear()
        self.protocol.dataReceived(b"29")
        self.protocol.dataReceived(b"\n")
        self.assertEqual(batches, [[b"29"]])
        self.assertEqual(self.transport.value(), b"T\n")

    def test_lineOfExactlyTheLimitIsKept(self):
        """
        A line of exactly the length limit is still a request.
        """
        limit = wire.maxLineLength(wire.DEFAULT_MAX_DIGITS)
        self.protocol.dataReceived(b" " * (limit - 1) + b"7")
        self.assertEqual(self.transport.value(), b"")
        self.protocol.dataReceived(b"\n")
        self.assertEqual(self.transport.value(), b"T\n")

    def test_inlineUpToInlineMaxBits(self):
        """
        Numbers of up to C{INLINE_MAX_BITS} bits are checked at once, in the
        reactor thread; one bit more goes to the pool.
        """
        self.protocol.dataReceived(b"%d\n" % (2**INLINE_MAX_BITS - 1))
        self.assertEqual(self.transport.value(), b"F\n")
        self.assertEqual(self.harness.pool.work, [])
        self.protocol.dataReceived(b"5\n%d\n" % (2**INLINE_MAX_BITS - 1))  # a batch
        self.assertEqual(self.transport.value(), b"F\nT\nF\n")
        self.assertEqual(self.harness.pool.work, [])
        self.protocol.dataReceived(b"%d\n" % (2**INLINE_MAX_BITS + 1))
        self.assertEqual(len(self.harness.pool.work), 1)

    def test_overLongLinesRespectInflightBound(self):
        """
        E answers for over-long lines queue behind pool work like any reply:
        the connection stops reading at --max-inflight instead of queueing
        them without bound.
        """
        harness = Harness(maxInflight=2)
        protocol, transport = harness.connect()
        protocol.dataReceived(b"%d\n%d\n" % (BIG_PRIME, BIG_COMPOSITE))
        protocol.dataReceived(b"9" * 5000)
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(len(protocol._pending), 2)
        harness.pool.runAll()
        self.assertEqual(transport.value(), b"T\nF\nE\n")
        self.assertEqual(transport.producerState, "producing")

    def test_tooManyDigits(self):
        self.protocol.dataReceived(b"1" * 4301 + b"\n" + b"0" * 5000 + b"7\n")
        self.assertEqual(self.transport.value(), b"E\nE\n")

    def test_maxDigitsOption(self):
        protocol, transport = Harness(maxDigits=3).connect()
        protocol.dataReceived(b"997\n1009\n0000997\n")
        self.assertEqual(transport.value(), b"T\nE\nT\n")

    def test_lineReceived(self):
        """
        L{LineReceiver}'s interface still works, and keeps request order
        while lines are held back.
        """
        self.protocol.lineReceived(b"13")
        self.assertEqual(self.transport.value(), b"T\n")
        harness = Harness(maxInflight=1)
        protocol, transport = harness.connect()
        protocol.lineReceived(b"%d" % BIG_PRIME)
        protocol.lineReceived(b"4")
        protocol.lineReceived(b"5")
        self.assertEqual(transport.value(), b"")
        harness.pool.run()
        self.assertEqual(transport.value(), b"T\nF\nT\n")


class OrderingTests(unittest.TestCase):
    def setUp(self):
        self.harness = Harness()
        self.pool = self.harness.pool
        self.protocol, self.transport = self.harness.connect()

    def test_smallWaitsBehindBig(self):
        self.protocol.dataReceived(b"4\n%d\n5\n6\n" % BIG_PRIME)
        self.assertEqual(self.transport.value(), b"F\n")
        self.assertEqual(len(self.pool.work), 1)
        self.pool.run()
        self.assertEqual(self.transport.value(), b"F\nT\nT\nF\n")

    def test_bigOnesFinishOutOfOrder(self):
        self.protocol.dataReceived(b"%d\n%d\n7\n" % (BIG_COMPOSITE, BIG_PRIME))
        self.pool.run(1)  # the second finishes first
        self.assertEqual(self.transport.value(), b"")
        self.pool.run(0)
        self.assertEqual(self.transport.value(), b"F\nT\nT\n")

    def test_synchronousPoolKeepsOrder(self):
        protocol, transport = Harness(pool=SynchronousPool()).connect()
        protocol.dataReceived(b"4\n5\n%d\n9\n" % BIG_PRIME)
        self.assertEqual(transport.value(), b"F\nT\nT\nF\n")

    def test_failedCheckAnswersE(self):
        self.protocol.dataReceived(b"%d\n3\n" % BIG_PRIME)
        onResult, f, args, kwargs = self.pool.work.pop()
        events = captureLog(self)
        onResult(False, RuntimeError("boom"))
        self.assertEqual(self.transport.value(), b"E\nT\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(logged(events, "number failed"), ["Checking a 183-digit number failed"])


class BackpressureTests(unittest.TestCase):
    def test_inflightBoundPausesReading(self):
        harness = Harness(maxInflight=2)
        protocol, transport = harness.connect()
        protocol.dataReceived(b"%d\n%d\n3\n5\n" % (BIG_PRIME, BIG_PRIME))
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(len(harness.pool.work), 2)
        harness.pool.run()
        self.assertEqual(transport.value(), b"T\n")
        self.assertEqual(transport.producerState, "paused")  # 2 pending again
        harness.pool.run()
        self.assertEqual(transport.value(), b"T\nT\nT\nT\n")
        self.assertEqual(transport.producerState, "producing")

    def test_inflightBoundCountsPoolChecks(self):
        """
        The bound holds for pool checks too: the third big number waits, and
        every line is answered exactly once.
        """
        harness = Harness(maxInflight=2)
        protocol, transport = harness.connect()
        protocol.dataReceived(b"%d\n%d\n%d\n7\n" % (BIG_PRIME, BIG_COMPOSITE, BIG_PRIME))
        self.assertEqual(len(harness.pool.work), 2)
        self.assertEqual(transport.producerState, "paused")
        harness.pool.runAll()
        self.assertEqual(transport.value(), b"T\nF\nT\nT\n")
        self.assertEqual(transport.producerState, "producing")

    def test_lostWhileWaitingForPoolRoom(self):
        """
        A connection that goes away while waiting for room in the pool is
        no longer waiting: the checker keeps no reference to it.  Also after
        a half-close arrived in the meantime.
        """
        for halfClosed in (False, True):
            harness = Harness(maxQueued=1)
            first, _ = harness.connect()
            second, _ = harness.connect()
            first.dataReceived(b"%d\n" % BIG_PRIME)
            second.dataReceived(b"%d\n3\n" % BIG_PRIME)
            self.assertEqual(harness.checker.queue.roomWaiters(), 1)
            if halfClosed:
                second.readConnectionLost()
            second.connectionLost(None)
            self.assertEqual(harness.checker.queue.roomWaiters(), 0, halfClosed)

    def test_poolFullPausesUntilRoom(self):
        """
        With room for one pool check, a second connection's big number waits:
        that connection stops reading, and resumes when the pool frees up.
        """
        harness = Harness(maxQueued=1)
        first, firstTransport = harness.connect()
        second, secondTransport = harness.connect()
        first.dataReceived(b"%d\n" % BIG_PRIME)
        second.dataReceived(b"3\n%d\n5\n" % BIG_COMPOSITE)
        self.assertEqual(secondTransport.value(), b"T\n")
        self.assertEqual(secondTransport.producerState, "paused")
        self.assertEqual(len(harness.pool.work), 1)
        harness.pool.run()
        self.assertEqual(firstTransport.value(), b"T\n")
        self.assertEqual(len(harness.pool.work), 1)  # second's number, now
        harness.pool.run()
        self.assertEqual(secondTransport.value(), b"T\nF\nT\n")
        self.assertEqual(secondTransport.producerState, "producing")

    def test_consumerPauseStopsReading(self):
        """
        When the client does not read (the transport pauses us), reading
        stops until the transport resumes us, whatever else happens.
        """
        harness = Harness(maxInflight=1)
        protocol, transport = harness.connect()
        self.assertIs(transport.producer, protocol)
        # Streaming: only a push producer is paused when the buffer fills.
        self.assertTrue(transport.streaming)
        protocol.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        protocol.dataReceived(b"%d\n7\n" % BIG_PRIME)  # inflight pause too
        harness.pool.runAll()
        self.assertEqual(transport.producerState, "paused")
        protocol.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(transport.value(), b"T\nT\n")


class HalfCloseTests(unittest.TestCase):
    def setUp(self):
        self.harness = Harness()
        self.protocol, self.transport = self.harness.connect()

    def test_declaresHalfClose(self):
        """
        Twisted's transports tell only an L{IHalfCloseableProtocol} about a
        half-close (others are disconnected), and stream only to a declared
        L{IPushProducer}.
        """
        from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
        from zope.interface.verify import verifyObject

        verifyObject(IHalfCloseableProtocol, self.protocol)
        verifyObject(IPushProducer, self.protocol)

    def test_answersThenCloses(self):
        self.protocol.dataReceived(b"17\n%d\n18\n" % BIG_PRIME)
        self.protocol.readConnectionLost()
        self.assertFalse(self.transport.disconnecting)
        self.harness.pool.run()
        self.assertEqual(self.transport.value(), b"T\nT\nF\n")
        self.assertTrue(self.transport.disconnecting)

    def test_unterminatedLastLine(self):
        self.protocol.dataReceived(b"17\n19")
        self.protocol.readConnectionLost()
        self.assertEqual(self.transport.value(), b"T\nT\n")
        self.assertTrue(self.transport.disconnecting)

    def test_closingUnregistersProducer(self):
        """
        The connection stops being the transport's producer before it
        closes: a transport that paused it would otherwise resume it, not
        close, once its buffer drained.
        """
        self.protocol.pauseProducing()  # the client is not reading
        self.protocol.dataReceived(b"7\n")
        self.protocol.readConnectionLost()
        self.assertIsNone(self.transport.producer)
        self.assertTrue(self.transport.disconnecting)

    def test_nothingPending(self):
        self.protocol.readConnectionLost()
        self.assertTrue(self.transport.disconnecting)

    def test_lostThenCheckFailsQuietly(self):
        """
        A check that fails after its connection is gone has nobody to
        answer: nothing is logged, nothing written.
        """
        events = captureLog(self)
        self.protocol.dataReceived(b"%d\n" % BIG_PRIME)
        self.protocol.connectionLost(None)
        onResult, f, args, kwargs = self.harness.pool.work.pop()
        onResult(False, RuntimeError("boom"))
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(logged(events, "failed"), [])

    def test_drainWhileClosing(self):
        """
        A stop that finds a connection already closing (its half-close
        answered, the last bytes still leaving) leaves it be.
        """
        self.protocol.dataReceived(b"7\n")
        self.protocol.readConnectionLost()
        self.assertTrue(self.transport.disconnecting)
        self.assertIsNone(self.transport.producer)
        drained = self.harness.factory.drain()
        self.assertIsNone(self.transport.producer)
        self.assertEqual(self.transport.value(), b"T\n")
        self.protocol.connectionLost(None)
        self.successResultOf(drained)

    def test_lostWithPendingDropsQuietly(self):
        self.protocol.dataReceived(b"%d\n5\n" % BIG_PRIME)
        self.transport.loseConnection()
        self.protocol.connectionLost(None)
        self.harness.pool.run()
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.harness.factory.protocols, set())


class IdleTimeoutTests(unittest.TestCase):
    def setUp(self):
        self.harness = Harness(idleTimeout=300)
        self.clock = self.harness.reactor
        self.protocol, self.transport = self.harness.connect()

    def test_idleConnectionClosed(self):
        self.clock.advance(299)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)

    def test_idleCloseLogged(self):
        events = captureLog(self)
        self.clock.advance(300)
        self.assertEqual(
            logged(events, "idle"), ["Closing idle connection from 192.168.1.1:54321"]
        )

    def test_idleCloseLoggedForAnyPeer(self):
        """
        A peer without host and port (a unix: socket) is named as it is.
        """
        events = captureLog(self)
        harness = Harness(idleTimeout=1)
        transport = CountingTransport(peerAddress=object())
        harness.connect(transport)
        harness.reactor.advance(1)
        [line] = logged(events, "idle")
        self.assertIn("from <object object at", line)

    def test_requestsKeepItOpen(self):
        for _ in range(5):
            self.clock.advance(200)
            self.protocol.dataReceived(b"7\n")
        self.assertFalse(self.transport.disconnecting)

    def test_idleTimeCountsFromLastRequest(self):
        """
        The timer is not moved on every read, but the connection still
        closes exactly one idle period after the last request.
        """
        self.clock.advance(250)
        self.protocol.dataReceived(b"7\n")
        self.clock.advance(299)  # the first timer fired at 300 and re-armed
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)

    def test_halfLineDoesNotKeepItOpen(self):
        """
        Slowloris: dribbling digits without a newline is idle.
        """
        for _ in range(3):
            self.protocol.dataReceived(b"1")
            self.clock.advance(100)
        self.assertTrue(self.transport.disconnecting)

    def test_pendingReplyKeepsItOpen(self):
        """
        A client waiting for a reply is not idle; once it has it, idle time
        counts from that reply, not from the last request nor from the timer's
        own re-arms.
        """
        self.protocol.dataReceived(b"%d\n" % BIG_PRIME)
        # In steps, so the spent timer re-arms at 300, 600 and 900 (one big
        # advance would re-arm it at 1300, just when the reply's would end).
        self.clock.pump([100] * 10)
        self.assertFalse(self.transport.disconnecting)
        self.harness.pool.run()
        self.assertEqual(self.transport.value(), b"T\n")
        self.clock.advance(299)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)

    def test_closingClientThatDoesNotRead(self):
        """
        After a half-close is answered, a client that never reads the last
        replies cannot hold the connection forever: the idle timer aborts it.
        """
        self.protocol.dataReceived(b"7\n")
        self.protocol.readConnectionLost()
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(self.transport.disconnected)
        self.clock.advance(300)
        self.assertTrue(self.transport.disconnected)

    def test_zeroMeansNever(self):
        harness = Harness(idleTimeout=0)
        protocol, transport = harness.connect()
        harness.reactor.advance(10**6)
        self.assertFalse(transport.disconnecting)


class FactoryTests(unittest.TestCase):
    def test_connectionLimit(self):
        """
        Over the limit, with every connection having sent a request, a new
        connection is refused and counted.
        """
        harness = Harness(maxConnections=2)
        for _ in range(2):
            protocol, transport = harness.connect()
            protocol.dataReceived(b"7\n")
        self.assertIsNone(harness.factory.buildProtocol(None))
        self.assertEqual(harness.factory.refused, 1)
        self.assertIsNone(harness.factory.buildProtocol(None))
        self.assertEqual(harness.factory.refused, 2)

    def test_refusalsLoggedAtALimitedRate(self):
        """
        One warning per 10 seconds at most, counting every refusal.
        """
        events = captureLog(self)
        harness = Harness(maxConnections=1)
        harness.reactor.advance(100)
        harness.connect()[0].dataReceived(b"7\n")
        peer = IPv4Address("TCP", "192.0.2.7", 4000)
        for _ in range(3):
            self.assertIsNone(harness.factory.buildProtocol(peer))
        harness.reactor.advance(9.5)
        harness.factory.buildProtocol(peer)
        harness.reactor.advance(0.5)
        harness.factory.buildProtocol(peer)
        self.assertEqual(logged(events, "Connection limit"), [
            "Connection limit of 1 reached: closed new connection from 192.0.2.7 "
            "(1 refused so far)",
            "Connection limit of 1 reached: closed new connection from 192.0.2.7 "
            "(5 refused so far)",
        ])

    def test_quietByDefault(self):
        """
        Neither the factory's start and stop nor verdicts are logged unless
        asked for.
        """
        events = captureLog(self)
        harness = Harness()
        harness.factory.doStart()
        protocol, transport = harness.connect()
        protocol.dataReceived(b"17\n%d\n" % BIG_PRIME)
        harness.pool.run()
        harness.factory.doStop()
        self.assertEqual(transport.value(), b"T\nT\n")
        self.assertEqual([formatEvent(e) for e in events], [])

    def test_drainAnswersThenCloses(self):
        harness = Harness()
        busy, busyTransport = harness.connect()
        idle, idleTransport = harness.connect()
        busy.dataReceived(b"%d\n3\n" % BIG_PRIME)
        drained = harness.factory.drain()
        self.assertTrue(idleTransport.disconnecting)
        self.assertFalse(busyTransport.disconnecting)
        self.assertEqual(busyTransport.producerState, "paused")
        idle.connectionLost(None)
        harness.pool.run()
        self.assertEqual(busyTransport.value(), b"T\nT\n")
        self.assertTrue(busyTransport.disconnecting)
        self.assertNoResult(drained)
        busy.connectionLost(None)
        self.successResultOf(drained)
        self.assertIsNone(harness.factory.buildProtocol(None))

    def test_abortAllCountsUnanswered(self):
        harness = Harness()
        protocol, transport = harness.connect()
        protocol.dataReceived(b"%d\n3\n4\n" % BIG_PRIME)
        self.assertEqual(harness.factory.abortAll(), 3)  # two answers wait behind it
        self.assertTrue(transport.disconnected)

    def test_abortAllCountsEveryConnection(self):
        harness = Harness()
        for payload in [b"%d\n3\n" % BIG_PRIME, b"%d\n" % BIG_PRIME, b""]:
            protocol, transport = harness.connect()
            protocol.dataReceived(payload)
        self.assertEqual(harness.factory.abortAll(), 3)

    def test_verboseLogsVerdicts(self):
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        harness = Harness(verbose=True)
        protocol, transport = harness.connect()
        protocol.dataReceived(b"17\n")
        self.assertTrue(any(e.get("request") == b"17" and e.get("verdict") == "T"
                            for e in events))
        protocol.dataReceived(b"%d\n" % BIG_PRIME + b"x" * 200 + b"\n")
        harness.pool.run()
        self.assertEqual(transport.value(), b"T\nT\nE\n")
        self.assertEqual(logged(events, "asked"), [
            "192.168.1.1:54321 asked b'17': T",
            "192.168.1.1:54321 asked %r: E" % (b"x" * 80),
            "192.168.1.1:54321 asked %r: T" % (b"%d" % BIG_PRIME)[:80],
        ])


# Fuzzing: random byte streams, cut at random points.

_lines = st.one_of(
    st.binary(max_size=12),
    st.integers(-(10**30), 10**30).map(lambda n: str(n).encode()),
    st.sampled_from([BIG_PRIME, BIG_COMPOSITE]).map(lambda n: b"%d" % n),
    st.sampled_from([b" 7\r", b"+13\t", b"0007", b"-0", b"\r", b"4j", "\u0661".encode()]),
)


@st.composite
def _streams(draw):
    lines = draw(st.lists(_lines.filter(lambda l: b"\n" not in l), max_size=40))
    stream = b"".join(line + b"\n" for line in lines)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    pieces = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
    return lines, pieces


class FuzzTests(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(_streams(), st.booleans())
    def test_oneVerdictPerLineInOrder(self, streamAndPieces, handDriven):
        """
        Exactly one reply per complete line, equal to what L{wire} gives that
        line alone, in order; no exception escapes.
        """
        lines, pieces = streamAndPieces
        harness = Harness(pool=None if handDriven else SynchronousPool(), maxInflight=8)
        protocol, transport = harness.connect()
        for piece in pieces:
            protocol.dataReceived(piece)
            harness.pool.runAll()
        expected = b"".join(wire.replyFor(line, is_prime) for line in lines)
        self.assertEqual(transport.value(), expected)


class VerboseLogTests(unittest.TestCase):
    """
    C{--verbose} logs each request once, when its verdict is known, however
    long it was held back.
    """

    def verdicts(self):
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events

    def logged(self, events):
        return [(e["request"], e["verdict"]) for e in events if "verdict" in e]

    def test_heldBackByInflightLoggedOnce(self):
        events = self.verdicts()
        harness = Harness(verbose=True, maxInflight=1)
        protocol, transport = harness.connect()
        protocol.dataReceived(b"%d\n5\n%d\n6\n%d\n7\n" % (BIG_PRIME, BIG_COMPOSITE, BIG_PRIME))
        big, composite = (b"%d" % BIG_PRIME)[:80], (b"%d" % BIG_COMPOSITE)[:80]
        self.assertEqual(self.logged(events), [])  # the first verdict is not known yet
        harness.pool.run()
        self.assertEqual(self.logged(events), [(big, "T"), (b"5", "T")])
        harness.pool.runAll()
        harness.pool.runAll()
        self.assertEqual(transport.value(), b"T\nT\nF\nF\nT\nT\n")
        self.assertEqual(self.logged(events), [
            (big, "T"), (b"5", "T"), (composite, "F"), (b"6", "F"), (big, "T"), (b"7", "T"),
        ])

    def test_peerAddressForms(self):
        """
        The log names an IPv4 peer as host:port and an IPv6 one as
        [host]:port, so the port never reads as part of the address.
        """
        from twisted.internet.address import IPv4Address, IPv6Address

        events = self.verdicts()
        harness = Harness(verbose=True)
        for peer in (IPv4Address("TCP", "10.0.0.7", 5000), IPv6Address("TCP", "2001:db8::7", 5000)):
            protocol, transport = harness.connect(CountingTransport(peerAddress=peer))
            protocol.dataReceived(b"17\n")
        self.assertEqual([e["peer"] for e in events if "verdict" in e],
                         ["10.0.0.7:5000", "[2001:db8::7]:5000"])

    @settings(max_examples=200, deadline=None)
    @given(_streams(), st.integers(1, 4))
    def test_eachLineLoggedOnce(self, streamAndPieces, maxInflight):
        lines, pieces = streamAndPieces
        events = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        try:
            harness = Harness(verbose=True, maxInflight=maxInflight, maxQueued=2)
            protocol, transport = harness.connect()
            for piece in pieces:
                protocol.dataReceived(piece)
                harness.pool.runAll()
        finally:
            globalLogPublisher.removeObserver(events.append)
        replies = transport.value().split(b"\n")[:-1]
        self.assertEqual(len(replies), len(lines))
        logged = sorted((e["request"], e["verdict"]) for e in events if "verdict" in e)
        self.assertEqual(logged, sorted((line[:80], reply.decode())
                                        for line, reply in zip(lines, replies)))
