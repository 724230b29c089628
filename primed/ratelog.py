"""
Logging what clients cause, at a rate clients cannot choose.

Anyone who can reach a port decides how often primed refuses, times out or
answers them; a log line per event would let them fill the disk (a fuzz run
with C{--verbose} wrote 185 MB).  Two shapes:

  - L{Throttle}: warnings about refusals and timeouts, at most one per
    C{interval} seconds (10 by default, as for the connection limit since
    issue 5), each carrying a running count so nothing is hidden;

  - L{LineBudget}: C{--verbose}'s per-request lines, at most C{perSecond}
    a second (100); when some were left out, one line once the second is
    over says how many, so the log still accounts for every request.
"""

from typing import Optional

from twisted.logger import Logger

#: Seconds between two log lines about the same kind of refusal.
DEFAULT_INTERVAL = 10.0
#: C{--verbose} request lines a second.
VERBOSE_LINES_PER_SECOND = 100


class Throttle:
    """
    Says whether a line about one kind of event may be logged now: at most
    one per C{interval} seconds.
    """

    def __init__(self, reactor, interval: float = DEFAULT_INTERVAL):
        self.reactor = reactor
        self.interval = interval
        self._last: Optional[float] = None

    def ready(self) -> bool:
        """
        @return: whether to log now; if so, the next line waits C{interval}
            seconds.
        """
        now = self.reactor.seconds()
        if self._last is None or now - self._last >= self.interval:
            self._last = now
            return True
        return False


class LineBudget:
    """
    At most C{perSecond} lines in each second (a window starting at the
    first line after the last one closed); the lines left out are counted
    in L{leftOut} and reported in one line when their window closes.  0:
    no limit.
    """

    _log = Logger()

    def __init__(self, reactor, perSecond: int = VERBOSE_LINES_PER_SECOND):
        self.reactor = reactor
        self.perSecond = perSecond
        #: Lines left out since the start, for C{/metrics}.
        self.leftOut = 0
        self._windowEnd = float("-inf")
        self._used = 0
        self._leftOutInWindow = 0
        self._report = None

    def allow(self) -> bool:
        """
        @return: whether one more line may be logged now; if not, it is
            counted as left out.  Always, when C{perSecond} is 0.
        """
        if not self.perSecond:
            return True
        now = self.reactor.seconds()
        if now >= self._windowEnd:
            self._windowEnd = now + 1.0
            self._used = 0
        if self._used < self.perSecond:
            self._used += 1
            return True
        self.leftOut += 1
        self._leftOutInWindow += 1
        if self._report is None:
            self._report = self.reactor.callLater(self._windowEnd - now, self._reportLeftOut)
        return False

    def _reportLeftOut(self) -> None:
        self._report = None
        count, self._leftOutInWindow = self._leftOutInWindow, 0
        self._log.info(
            "--verbose: {count} request line(s) left out in the last second "
            "(at most {limit} a second; {total} since start)",
            count=count, limit=self.perSecond, total=self.leftOut,
        )

    def stop(self) -> None:
        """
        Report what is left out now rather than after the second ends (a
        stopping service's reactor may not run that long).
        """
        if self._report is not None and self._report.active():
            self._report.cancel()
            self._reportLeftOut()
