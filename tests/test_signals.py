"""
Tests for L{primed.signals}, with a fake signal module and a reactor that
records what it is asked.
"""

import signal

from twisted.trial import unittest

from fakes import ThreadlessReactor
from primed.signals import StopSignals


class FakeSignals:
    """
    C{signal}, C{getsignal} and C{SIG_IGN} like the L{signal} module, on a
    table of its own.
    """

    SIG_IGN = signal.SIG_IGN

    def __init__(self, **initial):
        self.handlers = {getattr(signal, name): handler for name, handler in initial.items()}

    def getsignal(self, number):
        return self.handlers.get(number, signal.SIG_DFL)

    def signal(self, number, handler):
        self.handlers[number] = handler


class FakePrimed:
    def __init__(self):
        self.drainsEnded = 0

    def endDrain(self):
        self.drainsEnded += 1


class StopSignalsTests(unittest.TestCase):
    def setUp(self):
        self.reactor = ThreadlessReactor()
        self.stopped = 0
        self.reactor.stop = self.countStop
        self.primed = FakePrimed()

    def countStop(self):
        self.stopped += 1

    def hooked(self, **initial):
        signals = FakeSignals(**initial)
        StopSignals(self.primed, self.reactor, signals).hook()
        return signals

    def start(self):
        self.reactor.running = True
        for f, args, kwargs in self.reactor.whenRunningHooks:
            f(*args, **kwargs)

    def beginStop(self):
        for f, args, kwargs in self.reactor.triggers["before"]["shutdown"]:
            f(*args, **kwargs)

    def test_nothingInstalledBeforeTheReactorRuns(self):
        signals = self.hooked()
        self.assertEqual(signals.handlers, {})

    def test_hangupStopsAndExitsBySIGHUP(self):
        signals = self.hooked()
        self.start()
        signals.handlers[signal.SIGHUP](signal.SIGHUP, None)
        self.assertEqual(self.stopped, 1)
        self.assertEqual(self.reactor._exitSignal, signal.SIGHUP)
        self.assertNotIn(signal.SIGTERM, signals.handlers)  # the reactor's

    def test_ignoredHangupStaysIgnored(self):
        signals = self.hooked(SIGHUP=signal.SIG_IGN)
        self.start()
        self.assertEqual(signals.handlers[signal.SIGHUP], signal.SIG_IGN)

    def test_secondStopSignalEndsTheDrain(self):
        signals = self.hooked(SIGINT=signal.SIG_IGN)
        self.start()
        self.beginStop()
        signals.handlers[signal.SIGTERM](signal.SIGTERM, None)
        self.assertEqual(self.primed.drainsEnded, 1)
        self.assertEqual(signals.handlers[signal.SIGINT], signal.SIG_IGN)
        signals.handlers[signal.SIGHUP](signal.SIGHUP, None)  # changes nothing
        self.assertEqual((self.primed.drainsEnded, self.stopped), (1, 0))
