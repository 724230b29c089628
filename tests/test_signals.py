"""
Tests for L{primed.signals}, with a fake signal module and a reactor that
records what it is asked.
"""

import signal

from twisted.internet.error import ReactorNotRunning
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

    def test_installedBeforeTheReactorRuns(self):
        """
        The daemon logs that it is ready before its reactor runs: a signal
        then is noted, and the stop begins once the reactor runs (it used
        to kill the daemon silently).
        """
        calls = []
        self.reactor.callFromThread = lambda f, *a, **kw: calls.append((f, a, kw))
        signals = self.hooked()
        self.assertEqual(set(signals.handlers), {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
        signals.handlers[signal.SIGHUP](signal.SIGHUP, None)
        self.assertEqual(self.stopped, 0)
        self.start()
        for f, a, kw in calls:
            f(*a, **kw)
        self.assertEqual(self.stopped, 1)
        self.assertEqual(self.reactor._exitSignal, signal.SIGHUP)

    def test_hangupStopsAndExitsBySIGHUP(self):
        signals = self.hooked()
        self.start()
        signals.handlers[signal.SIGHUP](signal.SIGHUP, None)
        self.assertEqual(self.stopped, 1)
        self.assertEqual(self.reactor._exitSignal, signal.SIGHUP)

    def test_reactorsHandlerReplaced(self):
        """
        The reactor installs its own SIGTERM handler as it starts; ours
        replaces it once the reactor runs.
        """
        signals = self.hooked()
        signals.handlers[signal.SIGTERM] = "the reactor's"
        self.start()
        signals.handlers[signal.SIGTERM](signal.SIGTERM, None)
        self.assertEqual(self.stopped, 1)
        self.assertEqual(self.reactor._exitSignal, signal.SIGTERM)

    def test_signalsTogetherStopOnce(self):
        """
        SIGTERM and SIGHUP noted before the reactor thread handles either
        (systemd's SendSIGHUP=yes; Python runs SIGHUP's handler first) are
        one stop, by SIGTERM: the reactor is stopped once, and the drain is
        not ended.
        """
        calls = []
        signals = self.hooked()
        self.start()
        self.reactor.callFromThread = lambda f, *a, **kw: calls.append((f, a, kw))
        signals.handlers[signal.SIGHUP](signal.SIGHUP, None)
        signals.handlers[signal.SIGTERM](signal.SIGTERM, None)
        for f, a, kw in calls:
            f(*a, **kw)
        self.beginStop()
        self.assertEqual((self.stopped, self.primed.drainsEnded), (1, 0))
        self.assertEqual(self.reactor._exitSignal, signal.SIGTERM)

    def test_stopBegunElsewhere(self):
        """
        A signal handled after something else stopped the reactor, before
        its shutdown began, does not raise.
        """
        def stopped():
            raise ReactorNotRunning()

        self.reactor.stop = stopped
        signals = self.hooked()
        self.start()
        signals.handlers[signal.SIGTERM](signal.SIGTERM, None)
        self.assertEqual(self.primed.drainsEnded, 0)

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
