"""
Tests for L{primed.ratelog}: log lines clients cannot multiply, and
C{--verbose}'s budget end to end through the TCP and UDP protocols.
"""

from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from fakes import connect, makeService
from primed.ratelog import LineBudget, Throttle


def capture(testCase):
    events = []
    globalLogPublisher.addObserver(events.append)
    testCase.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


class ThrottleTests(unittest.TestCase):
    def test_oncePerInterval(self):
        clock = Clock()
        throttle = Throttle(clock, 10)
        self.assertEqual([throttle.ready(), throttle.ready()], [True, False])
        clock.advance(9.9)
        self.assertFalse(throttle.ready())
        clock.advance(0.1)
        self.assertEqual([throttle.ready(), throttle.ready()], [True, False])


class DefaultsTests(unittest.TestCase):
    def test_defaults(self):
        """
        One line per 10 seconds; 100 --verbose lines a second.
        """
        clock = Clock()
        throttle = Throttle(clock)
        self.assertTrue(throttle.ready())
        clock.advance(9.99)
        self.assertFalse(throttle.ready())
        clock.advance(0.01)
        self.assertTrue(throttle.ready())
        budget = LineBudget(clock)
        self.assertEqual(sum(budget.allow() for _ in range(150)), 100)


class LineBudgetTests(unittest.TestCase):
    def test_reportAtTheWindowsEnd(self):
        """
        The count of lines left out is logged when their second is over,
        not later; the next window's count starts
        from nothing; a stop with nothing left out logs nothing.
        """
        events = capture(self)
        clock = Clock()
        clock.advance(1000)
        budget = LineBudget(clock, perSecond=1)
        budget.stop()  # nothing pending
        budget.allow()
        clock.advance(0.5)
        self.assertFalse(budget.allow())
        clock.advance(0.49)
        self.assertEqual([e for e in events if "left out" in formatEvent(e)], [])
        clock.advance(0.01)
        reports = [e for e in events if "left out" in formatEvent(e)]
        self.assertEqual([e["count"] for e in reports], [1])
        self.assertEqual(reports[0]["log_namespace"], "primed.ratelog.LineBudget")
        budget.allow()
        budget.allow()
        clock.advance(1)
        self.assertEqual([e["count"] for e in events if "left out" in formatEvent(e)], [1, 1])

    def test_perSecondThenCount(self):
        """
        At most C{perSecond} lines in a second; the rest are counted, and
        one line reports them when the second is over.
        """
        events = capture(self)
        clock = Clock()
        budget = LineBudget(clock, perSecond=3)
        self.assertEqual([budget.allow() for _ in range(5)], [True, True, True, False, False])
        self.assertEqual(budget.leftOut, 2)
        reports = [formatEvent(e) for e in events if "left out" in formatEvent(e)]
        self.assertEqual(reports, [])
        clock.advance(1)
        reports = [formatEvent(e) for e in events if "left out" in formatEvent(e)]
        self.assertEqual(reports, [
            "--verbose: 2 request line(s) left out in the last second "
            "(at most 3 a second; 2 since start)"])
        self.assertEqual([budget.allow() for _ in range(4)], [True, True, True, False])
        self.assertEqual(budget.leftOut, 3)
        budget.stop()
        self.assertEqual(len([e for e in events if "left out" in formatEvent(e)]), 2)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_noLimit(self):
        """
        C{0}: every line, nothing counted or scheduled.
        """
        clock = Clock()
        budget = LineBudget(clock, perSecond=0)
        self.assertTrue(all(budget.allow() for _ in range(1000)))
        self.assertEqual((budget.leftOut, clock.getDelayedCalls()), (0, []))

    def test_nothingLeftOutNothingReported(self):
        clock = Clock()
        budget = LineBudget(clock, perSecond=3)
        for _ in range(3):
            self.assertTrue(budget.allow())
            clock.advance(0.5)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(budget.leftOut, 0)


class VerboseBudgetTests(unittest.TestCase):
    def test_tcpAndUdpShareTheBudget(self):
        """
        A service's --verbose lines, TCP and UDP together, stop at 100 in a
        second; every request is still answered.
        """
        events = capture(self)
        service = makeService(verbose=True)
        service.startService()
        protocol, transport = connect(service.factory)
        protocol.dataReceived(b"7\n" * 80)
        udp = service.datagramProtocols[0]
        for _ in range(40):
            udp.datagramReceived(b"9", ("192.0.2.1", 5000))
        self.assertEqual(transport.value(), b"T\n" * 80)
        verdicts = [e for e in events if "verdict" in e]
        self.assertEqual(len(verdicts), 100)
        self.assertEqual(service.verboseLines.leftOut, 20)
        protocol.connectionLost(None)
        self.successResultOf(service.stopService())
        # The stop reports what was left out at once.
        self.assertEqual(len([e for e in events if "left out" in formatEvent(e)]), 1)
