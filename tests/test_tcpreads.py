"""
Tests for L{primed.tcpreads}: the short paths for reads of complete lines
give every line the reply and the count the general path gives it.
"""

from hypothesis import given, settings, strategies as st
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from fakes import HandDrivenPool, SynchronousPool, ThreadlessReactor, connect, makeChecker, makeFactory
from primed import wire
from primed.tcp import PrimeLineProtocol

BIG_PRIME = 2**607 - 1  # above INLINE_MAX_BITS: goes to the pool
FAST_DIGITS = wire.inlineDigitsLimit(wire.DEFAULT_MAX_DIGITS, 192)  # 57

COUNTED = ("tcpPrime", "tcpNotPrime", "tcpInvalid", "linesTooLong")


class CountingTransport(StringTransport):
    writes = 0

    def write(self, data):
        self.writes += 1
        StringTransport.write(self, data)


class GeneralPathProtocol(PrimeLineProtocol):
    """
    primed's protocol with the short paths turned off: the reference.
    """

    def dataReceived(self, data):
        self._framedDataReceived(data)


def harness(protocolClass=PrimeLineProtocol, pool=None, **options):
    reactor = ThreadlessReactor()
    checker = makeChecker(pool if pool is not None else SynchronousPool(), reactor)
    factory = makeFactory(checker, reactor, **options)
    factory.protocol = protocolClass
    return factory


def counted(factory):
    snapshot = factory.counters.snapshot()
    return [snapshot[name] for name in COUNTED]


def assertQueuedBehindBigNumber(testCase, askBig):
    """
    After C{askBig(protocol)} hands a big prime to the pool, one-line and
    pipelined reads of small numbers are answered after it, in order.
    """
    pool = HandDrivenPool()
    factory = harness(pool=pool)
    protocol, transport = connect(factory)
    askBig(protocol)
    protocol.dataReceived(b"5\n6\n")
    protocol.dataReceived(b"7\n")
    testCase.assertEqual(transport.value(), b"")
    pool.run()
    testCase.assertEqual(transport.value(), b"T\nT\nF\nT\n")


class OneLineTests(unittest.TestCase):
    """
    A read holding one complete line.
    """

    def test_verdicts(self):
        factory = harness()
        protocol, transport = connect(factory, CountingTransport())
        for request in [b"2\n", b"4\n", b"0\n", b"1\n", b"18446744073709551557\n",
                        b"18446744073709551559\n", b"0017\n"]:
            protocol.dataReceived(request)
        self.assertEqual(transport.value(), b"T\nF\nF\nF\nT\nF\nT\n")
        self.assertEqual(transport.writes, 7)
        self.assertEqual(counted(factory), [3, 4, 0, 0])

    def test_longestFastLine(self):
        """
        The longest line of digits the path takes, and one digit more (the
        general path's), both answered; so is a line with a carriage return.
        """
        prime = 10**56 + 7  # not necessarily prime: the engine decides
        from primed.primality import is_prime

        factory = harness()
        protocol, transport = connect(factory)
        fast = b"%d" % prime
        self.assertEqual(len(fast), FAST_DIGITS)
        protocol.dataReceived(fast + b"\n")
        protocol.dataReceived(b"1" + b"0" * FAST_DIGITS + b"\n")
        protocol.dataReceived(b"17\r\n")
        self.assertEqual(transport.value(), wire.REPLIES[is_prime(prime)] + b"F\nT\n")

    def test_othersTakeTheGeneralPath(self):
        """
        Invalid lines, over-long lines and big numbers for the pool, one per
        read, are answered and counted as anywhere else.
        """
        pool = HandDrivenPool()
        factory = harness(pool=pool, maxDigits=400)
        protocol, transport = connect(factory)
        for request in [b"x\n", b"-7\n", b"9" * 500 + b"\n", b"%d\n" % BIG_PRIME]:
            protocol.dataReceived(request)
        self.assertEqual(transport.value(), b"E\nF\nE\n")
        pool.run()
        self.assertEqual(transport.value(), b"E\nF\nE\nT\n")
        self.assertEqual(counted(factory), [1, 1, 2, 1])

    def test_idleClockMoves(self):
        """
        A read on the short path counts as activity for the idle timeout.
        """
        factory = harness(idleTimeout=10)
        protocol, transport = connect(factory)
        factory.reactor.advance(9)
        protocol.dataReceived(b"7\n")
        factory.reactor.advance(9)
        self.assertFalse(transport.disconnecting)
        factory.reactor.advance(1.5)
        self.assertTrue(transport.disconnecting)


class PipelinedTests(unittest.TestCase):
    """
    A read holding several complete lines.
    """

    def test_oneWrite(self):
        factory = harness()
        protocol, transport = connect(factory, CountingTransport())
        protocol.dataReceived(b"2\n3\n4\n0\n1\n0017\n18446744073709551557\n")
        self.assertEqual(transport.value(), b"T\nT\nF\nF\nF\nT\nT\n")
        self.assertEqual(transport.writes, 1)
        self.assertEqual(counted(factory), [4, 3, 0, 0])

    def test_restAfterAnOtherLine(self):
        """
        From the first line the path does not take, the rest of the read
        goes through the general path, in order, after the replies so far.
        """
        pool = HandDrivenPool()
        factory = harness(pool=pool)
        protocol, transport = connect(factory, CountingTransport())
        protocol.dataReceived(b"2\n4\nx\n5\n%d\n6\n" % BIG_PRIME)
        self.assertEqual(transport.value(), b"T\nF\nE\nT\n")
        self.assertEqual(transport.writes, 1)  # all that was ready, at once
        pool.run()
        self.assertEqual(transport.value(), b"T\nF\nE\nT\nT\nF\n")
        self.assertEqual(counted(factory), [3, 2, 1, 0])

    def test_otherLineFirst(self):
        factory = harness()
        protocol, transport = connect(factory)
        protocol.dataReceived(b"\n5\n")
        self.assertEqual(transport.value(), b"E\nT\n")

    def test_verbose(self):
        """
        With C{--verbose} every verdict is logged: the general path's job.
        """
        from twisted.logger import globalLogPublisher, formatEvent

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        factory = harness(verbose=True)
        protocol, transport = connect(factory)
        protocol.dataReceived(b"5\n6\n")
        protocol.dataReceived(b"7\n")
        verdicts = [formatEvent(e) for e in events if "asked" in formatEvent(e)]
        self.assertEqual(len(verdicts), 3)
        self.assertEqual(transport.value(), b"T\nF\nT\n")

    def test_notWhileAnswersPending(self):
        """
        Lines read while a big number's answer is pending queue behind it.
        """
        assertQueuedBehindBigNumber(
            self, lambda protocol: protocol.dataReceived(b"%d\n" % BIG_PRIME))


class ClearFlagTests(unittest.TestCase):
    """
    The short paths are taken only when nothing is owed: every way a reply
    can become owed turns them off until it is written.
    """

    def test_afterLineReceived(self):
        """
        L{LineReceiver}'s C{lineReceived}, called directly, counts too.
        """
        assertQueuedBehindBigNumber(
            self, lambda protocol: protocol.lineReceived(b"%d" % BIG_PRIME))

    def test_afterPartialLine(self):
        factory = harness()
        protocol, transport = connect(factory)
        protocol.dataReceived(b"1")
        protocol.dataReceived(b"3\n")
        protocol.dataReceived(b"2")
        protocol.dataReceived(b"9\n31\n")
        self.assertEqual(transport.value(), b"T\nT\nT\n")

    def test_backAfterAnswers(self):
        """
        Once the owed replies are written, the short paths are taken again.
        """
        pool = HandDrivenPool()
        factory = harness(pool=pool)
        protocol, transport = connect(factory)
        protocol.dataReceived(b"%d\n" % BIG_PRIME)
        self.assertFalse(protocol._clear)
        pool.run()
        self.assertTrue(protocol._clear)
        protocol.dataReceived(b"5\n")
        self.assertEqual(transport.value(), b"T\nT\n")

    def test_pausedByTheTransport(self):
        factory = harness()
        protocol, transport = connect(factory)
        protocol.dataReceived(b"5\n")  # the first request: general path
        self.assertTrue(protocol._clear)
        protocol.pauseProducing()
        self.assertFalse(protocol._clear)
        protocol.resumeProducing()
        self.assertTrue(protocol._clear)


_LINES = st.one_of(
    st.integers(0, 10**30).map(lambda n: b"%d" % n),
    st.integers(0, 60).map(lambda n: b"1" + b"0" * n),  # around the digits limit
    st.sampled_from([b"", b"x", b"-3", b"007", b"17\r", b"%d" % BIG_PRIME, b"9" * 300]),
)


class EquivalenceTests(unittest.TestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.lists(_LINES, min_size=1, max_size=8), min_size=1, max_size=6),
           st.booleans())
    def test_sameAsGeneralPath(self, reads, unterminatedLast):
        """
        Whatever the reads, the short paths give the replies and the counts
        the general path gives.
        """
        data = [b"".join(line + b"\n" for line in read) for read in reads]
        if unterminatedLast:
            data[-1] = data[-1][:-1]
        results = []
        for protocolClass in (PrimeLineProtocol, GeneralPathProtocol):
            factory = harness(protocolClass, maxDigits=200)
            protocol, transport = connect(factory)
            for chunk in data:
                if chunk:
                    protocol.dataReceived(chunk)
            results.append((transport.value(), counted(factory)))
        self.assertEqual(results[0], results[1])


class PolledReactor(ThreadlessReactor):
    """
    A reactor that notes when its poll returned, as
    L{primed.reactor.PrimedReactor} does.
    """

    polledAt = 0.0


class PollTimeTests(unittest.TestCase):
    """
    On a reactor that notes when its poll returned, the time of a read (for
    the idle timeout) is the poll's, not a clock read per read.
    """

    def _idleAfter(self, *reads):
        reactor = PolledReactor()
        factory = makeFactory(makeChecker(SynchronousPool(), reactor), reactor, idleTimeout=10)
        protocol, transport = connect(factory)
        reactor.advance(9)
        reactor.polledAt = 5.0  # the poll that delivers the read returned at 5
        for read in reads:
            protocol.dataReceived(read)
        self.assertEqual(transport.value(), b"T\n")
        reactor.advance(5.5)  # 9.5 s after the poll
        self.assertFalse(transport.disconnecting)
        reactor.advance(1)  # 10.5 s after it
        self.assertTrue(transport.disconnecting)

    def test_shortPath(self):
        self._idleAfter(b"7\n")

    def test_generalPath(self):
        self._idleAfter(b"1", b"7\n")  # a line completed across reads

    def test_otherReactors(self):
        """
        Any other reactor's clock is read.
        """
        from primed.tcpreads import readClock

        reactor = ThreadlessReactor()
        reactor.advance(3)
        self.assertEqual(readClock(reactor).polledAt, 3)
        polled = PolledReactor()
        self.assertIs(readClock(polled), polled)

    def test_poolReply(self):
        """
        A reply from the pool is not a read: idle time counts from when it
        was written, even when no poll returned between the pool's answer
        and its handling (the worker's wake-up raced a reactor turn that
        ran timers without polling), so C{polledAt} is still the request's.
        """
        reactor = PolledReactor()
        pool = HandDrivenPool()
        factory = makeFactory(makeChecker(pool, reactor), reactor, idleTimeout=300)
        protocol, transport = connect(factory)
        reactor.polledAt = 0.0  # the poll that delivers the request
        protocol.dataReceived(b"%d\n" % BIG_PRIME)
        reactor.pump([100] * 10)  # the check takes 1 000 s
        pool.run()
        self.assertEqual(transport.value(), b"T\n")
        reactor.advance(299)
        self.assertFalse(transport.disconnecting)
        reactor.advance(1)
        self.assertTrue(transport.disconnecting)
