"""
Tests for L{primed.udp}, through a fake datagram transport.
"""

from hypothesis import given, settings, strategies as st
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from fakes import (
    FakeDatagramTransport, HandDrivenPool, SynchronousPool, makeChecker, makeDatagramProtocol,
)
from primed import wire
from primed.primality import INLINE_MAX_BITS, is_prime
from primed.udp import MAX_DATAGRAM, PrimeDatagramProtocol, receiveBufferSize

ADDR = ("127.0.0.1", 40000)


def captureLog(testCase):
    events = []
    globalLogPublisher.addObserver(events.append)
    testCase.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def logged(events, fragment):
    return [formatEvent(e) for e in events if fragment in formatEvent(e)]
BIG_PRIME = 2**607 - 1


class DatagramTests(unittest.TestCase):
    def setUp(self):
        self.pool = HandDrivenPool()
        # One source here: its quota is the whole queue.
        self.checker = makeChecker(self.pool, maxQueued=2, maxQueuedPerSource=2)
        self.protocol, self.transport = makeDatagramProtocol(self.checker)

    def replies(self):
        return [data for data, addr in self.transport.written]

    def test_seedValues(self):
        for value in ["4j", 4, 5, -5, 17, 29, 2**50, 2**50 - 1]:
            self.protocol.datagramReceived(b"%s\n" % str(value).encode(), ADDR)
        self.assertEqual(self.replies(), [b"E\n", b"F\n", b"T\n", b"F\n", b"T\n", b"T\n",
                                          b"F\n", b"F\n"])

    def test_two(self):
        """
        The smallest prime: the boundary of the "below two" shortcut.
        """
        for datagram in [b"2", b"3", b"1"]:
            self.protocol.datagramReceived(datagram, ADDR)
        self.assertEqual(self.replies(), [b"T\n", b"T\n", b"F\n"])

    def test_newlineOptional(self):
        for datagram in [b"17", b"17\n", b"17\r\n"]:
            self.protocol.datagramReceived(datagram, ADDR)
        self.assertEqual(self.replies(), [b"T\n"] * 3)

    def test_repliesToSource(self):
        self.protocol.datagramReceived(b"4", ("::1", 5, 0, 0))
        self.assertEqual(self.transport.written, [(b"F\n", ("::1", 5, 0, 0))])

    def test_emptyDatagramIgnored(self):
        self.protocol.datagramReceived(b"", ADDR)
        self.assertEqual(self.transport.written, [])
        self.protocol.datagramReceived(b"5", ADDR)
        self.assertEqual(self.replies(), [b"T\n"])

    def test_oneDatagramOneRequest(self):
        self.protocol.datagramReceived(b"17\n18\n", ADDR)
        self.assertEqual(self.replies(), [b"E\n"])

    def test_oversized(self):
        self.protocol.datagramReceived(b"1" * 60000, ADDR)
        self.protocol.datagramReceived(b"1" * 4301, ADDR)
        self.assertEqual(self.replies(), [b"E\n", b"E\n"])

    def test_lengthLimitExcludesNewline(self):
        """
        The line limit is the same as over TCP: the newline does not count.
        """
        line = b" " * (wire.maxLineLength(wire.DEFAULT_MAX_DIGITS) - 1) + b"7"
        self.protocol.datagramReceived(line + b"\n", ADDR)
        self.protocol.datagramReceived(b" " + line, ADDR)
        self.assertEqual(self.replies(), [b"T\n", b"E\n"])

    def test_bigGoesToPool(self):
        self.protocol.datagramReceived(b"%d" % BIG_PRIME, ADDR)
        self.assertEqual(self.transport.written, [])
        self.pool.run()
        self.assertEqual(self.replies(), [b"T\n"])

    def test_inlineUpToInlineMaxBits(self):
        """
        Numbers of up to C{INLINE_MAX_BITS} bits are answered at once, in the
        reactor thread; one bit more goes to the pool.
        """
        self.protocol.datagramReceived(b"%d" % (2**INLINE_MAX_BITS - 1), ADDR)
        self.assertEqual(self.replies(), [b"F\n"])
        self.assertEqual(self.pool.work, [])
        self.protocol.datagramReceived(b"%d" % (2**INLINE_MAX_BITS + 1), ADDR)
        self.assertEqual(len(self.pool.work), 1)

    def test_poolFullDrops(self):
        for _ in range(5):
            self.protocol.datagramReceived(b"%d" % BIG_PRIME, ADDR)
        self.assertEqual(len(self.pool.work), 2)
        self.assertEqual(self.protocol.dropped, 3)
        self.pool.runAll()
        self.assertEqual(self.replies(), [b"T\n", b"T\n"])

    def test_dropsLoggedAtALimitedRate(self):
        events = captureLog(self)
        for _ in range(100):
            self.protocol.datagramReceived(b"%d" % BIG_PRIME, ADDR)
        self.checker.reactor.advance(11)
        self.protocol.datagramReceived(b"%d" % BIG_PRIME, ADDR)
        drops = [e for e in events if "dropped" in e.get("log_format", "")]
        self.assertEqual([e["count"] for e in drops], [1, 98])

    def test_dropLogIntervalIsTenSeconds(self):
        """
        Exactly 10 s after a drop was logged, the next one is logged again,
        with the count since and the total.
        """
        events = captureLog(self)
        self.checker.reactor.advance(100)
        for _ in range(4):  # two go to the pool, two are dropped
            self.protocol.datagramReceived(b"%d" % BIG_PRIME, ADDR)
        self.checker.reactor.advance(9.5)
        self.protocol.datagramReceived(b"%d" % BIG_PRIME, ADDR)
        self.checker.reactor.advance(0.5)
        self.protocol.datagramReceived(b"%d" % BIG_PRIME, ADDR)
        self.assertEqual(logged(events, "dropped"), [
            "Thread pool full: dropped 1 UDP request(s) (1 since start)",
            "Thread pool full: dropped 3 UDP request(s) (4 since start)",
        ])

    def test_failedCheckAnswersE(self):
        events = captureLog(self)
        self.protocol.datagramReceived(b"%d" % BIG_PRIME, ADDR)
        onResult, f, args, kwargs = self.pool.work.pop()
        onResult(False, RuntimeError("boom"))
        self.assertEqual(self.replies(), [b"E\n"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(logged(events, "number failed"), ["Checking a 183-digit number failed"])
        self.assertEqual(self.protocol.inflight, 0)

    def test_verboseLogsVerdicts(self):
        events = captureLog(self)
        protocol, transport = makeDatagramProtocol(self.checker, verbose=True)
        for datagram in [b"17\n", b"x" * 100, b"9" * 5000, b"%d" % BIG_PRIME]:
            protocol.datagramReceived(datagram, ADDR)
        self.pool.run()
        self.assertEqual(logged(events, "asked"), [
            "('127.0.0.1', 40000) asked b'17': T",
            "('127.0.0.1', 40000) asked %r: E" % (b"x" * 80),
            "('127.0.0.1', 40000) asked %r: E" % (b"9" * 80),
            "('127.0.0.1', 40000) asked %r: T" % (b"%d" % BIG_PRIME)[:80],
        ])

    def test_quietByDefault(self):
        events = captureLog(self)
        protocol, transport = makeDatagramProtocol(self.checker)
        protocol.doStart()
        protocol.datagramReceived(b"17", ADDR)
        protocol.doStop()
        self.assertEqual([formatEvent(e) for e in events], [])

    def test_sendErrorIsNotFatal(self):
        """
        A reply the kernel refuses (full buffer, unreachable source) is lost,
        not the server: later datagrams are still answered.
        """
        transport = FakeDatagramTransport()
        refusing = [True]

        def write(data, addr):
            if refusing:
                raise OSError("no buffer space")
            transport.written.append((data, addr))

        transport.write = write
        events = captureLog(self)
        protocol = PrimeDatagramProtocol(self.checker, self.checker.reactor)
        protocol.makeConnection(transport)
        protocol.datagramReceived(b"5", ADDR)
        protocol.datagramReceived(b"%d" % BIG_PRIME, ADDR)
        self.pool.run()
        self.assertEqual((protocol.inflight, transport.written), (0, []))
        self.assertEqual(logged(events, "lost"),
                         ["Reply to ('127.0.0.1', 40000) lost: no buffer space"] * 2)
        refusing.clear()
        protocol.datagramReceived(b"7", ADDR)
        self.assertEqual(transport.written, [(b"T\n", ADDR)])

    def test_drainWaitsForEveryCheck(self):
        self.protocol.datagramReceived(b"%d" % BIG_PRIME, ADDR)
        self.protocol.datagramReceived(b"%d" % BIG_PRIME, ADDR)
        self.assertEqual(self.protocol.inflight, 2)
        drained = self.protocol.drain()
        self.pool.run()
        self.assertNoResult(drained)
        self.pool.run()
        self.successResultOf(drained)
        self.assertEqual(self.protocol.inflight, 0)

    def test_drainWaitsForThePool(self):
        self.protocol.datagramReceived(b"%d" % BIG_PRIME, ADDR)
        drained = self.protocol.drain()
        self.protocol.datagramReceived(b"7", ADDR)  # after the stop began
        self.assertNoResult(drained)
        self.pool.run()
        self.successResultOf(drained)
        self.assertEqual(self.replies(), [b"T\n"])


class ReceiveBufferTests(unittest.TestCase):
    @settings(max_examples=500, deadline=None)
    @given(st.integers(1, 10**6))
    def test_cutDatagramsAreNeverChecked(self, maxDigits):
        """
        Whatever C{--max-digits}, a datagram cut to the read size is longer
        than any request (so it is answered E), or no datagram is ever cut.
        """
        size = receiveBufferSize(maxDigits)
        tooLong = size - 1 > wire.maxLineLength(maxDigits)  # even minus a \n
        self.assertTrue(tooLong or size > MAX_DATAGRAM, size)

    def test_cutDatagramAnsweredE(self):
        """
        A datagram filling the read may have been cut: C{E}, even when it
        ends like a request; one byte less is a request like any other.
        """
        maxDigits = 10_000
        protocol, transport = makeDatagramProtocol(makeChecker(SynchronousPool()),
                                                   maxDigits=maxDigits)
        size = receiveBufferSize(maxDigits)
        protocol.datagramReceived(b"0" * (size - 3) + b"17\n", ADDR)
        protocol.datagramReceived(b"0" * (size - 2) + b"17", ADDR)
        protocol.datagramReceived(b"0" * (size - 4) + b"17\n", ADDR)
        self.assertEqual([data for data, addr in transport.written], [b"E\n", b"E\n", b"T\n"])

    def test_largestDatagram(self):
        self.assertEqual(MAX_DATAGRAM, 65535 - 8)
        self.assertGreater(receiveBufferSize(70_000), MAX_DATAGRAM)


class ReceiveBufferSizeTests(unittest.TestCase):
    def test_bounds(self):
        """
        At least 8 KiB; room for the longest line and its CRLF; and never
        more than one byte past the largest datagram there is.
        """
        from primed.udp import MAX_DATAGRAM, receiveBufferSize

        self.assertEqual(receiveBufferSize(10), 8192)
        self.assertEqual(receiveBufferSize(20000), wire.maxLineLength(20000) + 2)
        self.assertEqual(receiveBufferSize(10**6), MAX_DATAGRAM + 1)
        self.assertEqual(MAX_DATAGRAM, 65527)


class FuzzTests(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.one_of(st.binary(max_size=20),
                              st.integers(-(10**40), 10**40).map(lambda n: b"%d" % n),
                              st.just(b"%d\n" % BIG_PRIME))))
    def test_oneReplyPerDatagram(self, datagrams):
        protocol, transport = makeDatagramProtocol(makeChecker(SynchronousPool()))
        for datagram in datagrams:
            protocol.datagramReceived(datagram, ADDR)
        expected = [
            wire.replyFor(d[:-1] if d.endswith(b"\n") else d, is_prime)
            for d in datagrams if d
        ]
        self.assertEqual([data for data, addr in transport.written], expected)
        self.assertTrue(all(len(data) == 2 for data, addr in transport.written))
