"""
What the stop signals mean to primed, beyond what Twisted's reactor does.

The reactor starts a stop on SIGTERM and SIGINT, and twistd (or twist)
then exits by the same signal, which systemd counts as a clean stop.  Two
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

A signal the daemon was started with ignored (C{nohup}, a shell's
background job) stays ignored.
"""

import signal
from typing import Any

from twisted.logger import Logger

_log = Logger()

#: Signals that start a stop, and end its drain when repeated.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """
    Install, once the reactor runs, primed's meaning of SIGHUP, and once a
    stop begins, that of a second stop signal.

    @ivar primed: the L{primed.service.PrimedService}, whose C{endDrain}
        ends a drain.
    """

    def __init__(self, primed: Any, reactor: Any, signals: Any = signal):
        """
        @param signals: provides C{signal}, C{getsignal}, C{SIG_IGN} like
            the L{signal} module; a fake in tests.
        """
        self.primed = primed
        self.reactor = reactor
        self.signals = signals

    def hook(self) -> None:
        """
        Register with the reactor; nothing is installed before it runs
        (Twisted installs its own handlers as it starts).
        """
        self.reactor.callWhenRunning(self._running)
        self.reactor.addSystemEventTrigger("before", "shutdown", self._stopping)

    def _install(self, number: int, handler) -> None:
        if self.signals.getsignal(number) == self.signals.SIG_IGN:
            return
        self.signals.signal(number, handler)

    def _running(self) -> None:
        self._install(signal.SIGHUP, self._hangup)

    def _hangup(self, number: int, frame=None) -> None:
        _log.info("Received SIGHUP, shutting down.")
        # What the reactor's own SIGTERM handler does: twistd and twist exit
        # by the signal recorded here once the reactor has stopped.
        self.reactor._exitSignal = number
        self.reactor.callFromThread(self.reactor.stop)

    def _stopping(self) -> None:
        for number in STOP_SIGNALS:
            self._install(number, self._again)
        self._install(signal.SIGHUP, self._hangupWhileStopping)

    def _again(self, number: int, frame=None) -> None:
        _log.info("Received {signal} while stopping: ending the drain now.",
                  signal=signal.Signals(number).name)
        self.reactor.callFromThread(self.primed.endDrain)

    def _hangupWhileStopping(self, number: int, frame=None) -> None:
        _log.info("Received SIGHUP while stopping: already stopping.")


def handleStopSignals(primed: Any, reactor: Any) -> StopSignals:
    """
    Give SIGHUP and repeated stop signals their meaning for C{primed}
    served by C{reactor}.
    """
    stopSignals = StopSignals(primed, reactor)
    stopSignals.hook()
    return stopSignals
