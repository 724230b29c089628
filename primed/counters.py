"""
What primed counts while it serves: plain integers, nothing else.

The request path pays for a metric with one attribute increment on an object
it already holds (C{counters.tcpPrime += 1}): no label lookup, no lock, no
call into a metrics library.  L{primed.metrics} turns these integers into
Prometheus metrics only when it is scraped, so a primed nobody scrapes pays
nothing more, and one that is scraped pays per scrape, not per request.

Everything here is touched from the reactor thread only, except
L{CheckTimes.observe}, which pool threads call; it takes a lock, which costs
far less than the big-number check it times.
"""

import threading
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

#: Upper bounds, in seconds, of the pool check duration histogram: from
#: 100 µs (the smallest numbers the pool gets) to 10 s (far above a
#: --max-digits 4300 check, about 0.1 s).
CHECK_SECONDS_BUCKETS = (
    0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05,
    0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
    10.0,
)


class Counters:
    """
    Monotonic event counts, shared by every protocol of one service.

    Gauges (open connections, queued checks) are not here: they are read from
    the objects that already know them, at scrape time.
    """

    __slots__ = (
        "tcpPrime",
        "tcpNotPrime",
        "tcpInvalid",
        "udpPrime",
        "udpNotPrime",
        "udpInvalid",
        "udpIgnored",
        "tcpAccepted",
        "tcpIdleClosed",
        "linesTooLong",
        "drainUnanswered",
        "tlsHandshakeTimeouts",
        "proxyUntrusted",
        "proxyRefused",
        "tcpSourceQuota",
        "udpSourceQuota",
        "poolDiscarded",
        "tlsPlainTextClosed",
    )

    # The slots' types, for mypy (annotations without values make no class
    # attributes: the slots stay slots; tests/test_counters.py keeps both lists equal).
    tcpPrime: int
    tcpNotPrime: int
    tcpInvalid: int
    udpPrime: int
    udpNotPrime: int
    udpInvalid: int
    udpIgnored: int
    tcpAccepted: int
    tcpIdleClosed: int
    linesTooLong: int
    drainUnanswered: int
    tlsHandshakeTimeouts: int
    proxyUntrusted: int
    proxyRefused: int
    tcpSourceQuota: int
    udpSourceQuota: int
    poolDiscarded: int
    tlsPlainTextClosed: int

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def snapshot(self) -> dict:
        """
        Every count by name, for tests and debugging.
        """
        return {name: getattr(self, name) for name in self.__slots__}


class CheckTimes:
    """
    A histogram of pool check durations kept as a fixed list of integers,
    one per bucket (not cumulative; L{cumulative} adds them up), plus their
    sum and count.
    """

    def __init__(self, bounds: Sequence[float] = CHECK_SECONDS_BUCKETS):
        self.bounds = tuple(bounds)
        #: One count per bound, then one for everything above the last.
        self.buckets: list[int] = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        """
        Record one check that took C{seconds}.  Safe from any thread.
        """
        index = bisect_left(self.bounds, seconds)  # bounds are inclusive (le)
        with self._lock:
            self.buckets[index] += 1
            self.sum += seconds
            self.count += 1

    def cumulative(self):
        """
        @return: C{([(le, cumulativeCount), ..., (inf, count)], sum)},
            consistent with each other (taken under the lock).
        """
        with self._lock:
            buckets = list(self.buckets)
            total = self.sum
        result: list[Any] = []
        running = 0
        for bound, count in zip(self.bounds, buckets):
            running += count
            result.append((bound, running))
        running += buckets[-1]
        result.append((float("inf"), running))
        return result, total
