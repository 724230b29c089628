"""
What the stop signals mean to primed, beyond what Twisted's reactor does.

The reactor starts a stop on SIGTERM and SIGINT, and twistd (or twist)
then exits by the same signal, which systemd counts as a clean stop.  Three
gaps are filled here:

  - SIGHUP (the terminal went away, or C{kill -HUP}) starts the same
    graceful stop, and the daemon then exits by SIGHUP.  It does not reopen
    logs: primed logs to standard output (the journal, under systemd) and
    has no configuration file to reread; twistd already reopens a
    C{--logfile} on SIGUSR1.
  - During a stop, a second SIGTERM or SIGINT ends the drain at once, as its
    deadline would: what is cut off is logged with a count.  The reactor
    alone would log a C{ReactorNotRunning} traceback and go on waiting.  A
    SIGHUP then changes nothing (systemd's C{SendSIGHUP=} sends one right
    after SIGTERM).
  - Signals that arrive together are one request to stop.  systemd's
    C{SendSIGHUP=yes} sends SIGHUP right after SIGTERM, and Python runs the
    handler of the lower-numbered signal first: each handler only notes its
    signal, and the reactor thread decides once for all the signals noted
    by then.  The reactor's own handlers would each ask for a stop, and the
    second would raise C{ReactorNotRunning}.

Every handler is a note and a C{callFromThread}, so it is installed at once,
before the reactor runs: the daemon says it is ready (C{Limits:}) before
that, and a signal then must not kill it silently.  The reactor installs
its SIGTERM handler as it starts; ours replaces it once it runs.

A signal the daemon was started with ignored (C{nohup}, a shell's
background job) stays ignored.
"""

import signal
from typing import Any

from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

from primed.internals import lookup

# twistd and twist read the reactor's private _exitSignal once it stops
# (L{primed.internals}): without it, a stop by signal exits with status 0.
_exitSignal = lookup(
    "twisted.internet.base", "ReactorBase._exitSignal",
    "a stop by signal exits with status 0, not by the signal")

_log = Logger()

#: Signals that start a stop, and end its drain when repeated.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

#: Every signal handled here.
HANDLED = STOP_SIGNALS + (signal.SIGHUP,)


def _name(number: int) -> str:
    return signal.Signals(number).name


class StopSignals:
    """
    Install primed's meaning of SIGTERM, SIGINT and SIGHUP.

    @ivar primed: the L{primed.service.PrimedService}, whose C{endDrain}
        ends a drain.
    @ivar stopping: whether a stop has begun.
    """

    def __init__(self, primed: Any, reactor: Any, signals: Any = signal):
        """
        @param signals: provides C{signal}, C{getsignal}, C{SIG_IGN} like
            the L{signal} module; a fake in tests.
        """
        self.primed = primed
        self.reactor = reactor
        self.signals = signals
        self.stopping = False
        self._noted: list[int] = []

    def hook(self) -> None:
        """
        Install the handlers now, and again once the reactor runs (it
        installs its own SIGTERM handler as it starts).
        """
        self._installAll()
        self.reactor.callWhenRunning(self._installAll)
        self.reactor.addSystemEventTrigger("before", "shutdown", self._stopping)

    def _installAll(self) -> None:
        for number in HANDLED:
            if self.signals.getsignal(number) not in (self.signals.SIG_IGN, self._received):
                self.signals.signal(number, self._received)

    def _received(self, number: int, frame=None) -> None:
        # In the main thread, between two bytecodes: note, and let the
        # reactor thread decide.
        self._noted.append(number)
        if len(self._noted) == 1:
            self.reactor.callFromThread(self._handle)

    def _handle(self) -> None:
        noted, self._noted = self._noted, []
        stops = [number for number in noted if number in STOP_SIGNALS]
        if self.stopping:
            if stops:
                _log.info("Received {signal} while stopping: ending the drain now.",
                          signal=_name(stops[0]))
                self.primed.endDrain()
            else:
                _log.info("Received SIGHUP while stopping: already stopping.")
            return
        first = (stops or noted)[0]
        _log.info("Received {signal}, shutting down.", signal=_name(first))
        for number in sorted(set(noted) - {first}):
            _log.info("Received {signal} with {first}: one stop.",
                      signal=_name(number), first=_name(first))
        self.stopping = True
        # twistd and twist exit by the signal recorded here once the
        # reactor has stopped, as after the reactor's own handlers.
        self.reactor._exitSignal = first
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass  # a stop begun elsewhere, its shutdown not fired yet

    def _stopping(self) -> None:
        self.stopping = True


def handleStopSignals(primed: Any, reactor: Any) -> StopSignals:
    """
    Give SIGTERM, SIGINT and SIGHUP their meaning for C{primed} served by
    C{reactor}.
    """
    stopSignals = StopSignals(primed, reactor)
    stopSignals.hook()
    return stopSignals
