"""
Where a primality check runs: inline in the reactor thread when it is cheap,
in a dedicated thread pool when it is not, through a fair queue
(L{primed.fairqueue}) that bounds the work waiting for that pool.

Inline checks cost a few microseconds; a Deferred and two thread hops cost
more than that, so only numbers above L{primed.primality.INLINE_MAX_BITS} bits
go to the pool.  The bounds keep memory and latency finite when clients send
big numbers faster than the pool can check them: TCP connections wait (they
stop reading) until there is room, UDP requests are dropped.  The pool itself
is handed one check per thread at a time; the fair queue decides which runs
next (round-robin by source, then by connection), holds each source to its
quota, and drops the waiting checks of a connection that is lost.
"""

from functools import partial
from threading import Thread
from time import perf_counter
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from primed.counters import CheckTimes
from primed.fairqueue import FairQueue, JobCancelled
from primed.primality import INLINE_MAX_BITS, is_prime, is_prime_releasing_gil

#: Pool checks that may be running or waiting at once, over all clients.
DEFAULT_MAX_QUEUED = 64

#: What a check dropped before it ran, its connection lost, fails with.
CheckCancelled = JobCancelled


class CheckPool(ThreadPool):
    """
    The thread pool big checks run in, which never holds a stopping process.

    L{ThreadPool.stop} joins every worker, in the reactor thread, and the
    interpreter joins every non-daemon thread before it exits: either would
    keep a stop past its drain deadline waiting for checks nobody will read,
    minutes at a large C{--max-digits}.  Workers here are daemon threads, and
    L{stop} can leave them to finish their check on their own.
    """

    threadFactory = staticmethod(partial(Thread, daemon=True))  # type: ignore[assignment]  # makes Threads

    def stop(self, wait: bool = True) -> None:
        """
        Let every worker exit once its current check is done.

        @param wait: whether to join the workers (block until they exit).
        """
        if not wait:
            self.threads = []  # nothing for ThreadPool.stop to join
        ThreadPool.stop(self)


class CheckAbandoned(Exception):
    """
    A pool check that had not started when the checker was abandoned (a
    stop past its drain deadline); it never ran.
    """


class PrimeChecker:
    """
    Run primality checks inline or in C{threadpool}, through a
    L{FairQueue} bounded by C{maxQueued} and C{maxQueuedPerSource}.

    @ivar queue: the L{FairQueue} in front of the pool.
    @ivar checkTimes: how long each pool check ran (waiting not included).
    """

    def __init__(
        self,
        reactor,
        threadpool,
        maxQueued: int = DEFAULT_MAX_QUEUED,
        inlineMaxBits: int = INLINE_MAX_BITS,
        maxQueuedPerSource: int = 0,
        concurrency: Optional[int] = None,
    ):
        """
        @param reactor: provides C{callFromThread}; the pool's results are
            delivered in its thread.
        @param threadpool: provides C{callInThreadWithCallback}, usually a
            L{twisted.python.threadpool.ThreadPool} the caller owns.
        @param maxQueuedPerSource: checks one source may have running or
            waiting; 0 for a quarter of C{maxQueued}.
        @param concurrency: checks handed to C{threadpool} at once; by
            default its C{max} (one per thread), or C{maxQueued} for a pool
            without one.
        """
        self.reactor = reactor
        self.threadpool = threadpool
        self.inlineMaxBits = inlineMaxBits
        self.checkTimes = CheckTimes()
        self.abandoned = False
        if concurrency is None:
            concurrency = getattr(threadpool, "max", None) or maxQueued
        self.queue = FairQueue(self._start, concurrency, maxQueued, maxQueuedPerSource)  # type: ignore[arg-type]  # its jobs are ints
        self.hasRoom = self.queue.hasRoom
        self.notifyRoom = self.queue.notifyRoom
        self.cancelRoomWaiter = self.queue.cancelRoomWaiter
        # Its result is not used (primed.proving's returns nothing).
        self.cancel: Callable[[Any], object] = self.queue.cancel
        self.whenIdle = self.queue.whenIdle

    @property
    def queued(self) -> int:
        """
        Checks running or waiting for a thread, over all sources.
        """
        return self.queue.queued

    @property
    def maxQueued(self) -> int:
        return self.queue.maxQueued

    @property
    def maxQueuedPerSource(self) -> int:
        return self.queue.perSource

    def isInline(self, number: int) -> bool:
        """
        Whether C{number} is cheap enough to check in the reactor thread.
        """
        return number.bit_length() <= self.inlineMaxBits

    checkInline = staticmethod(is_prime)

    def submit(self, number: int, source=None, connection=None) -> Deferred:
        """
        Check C{number} in the pool, in C{source}'s and C{connection}'s
        turn (L{FairQueue.submit}).  Callers check C{hasRoom(source)} first:
        the bound is theirs to honour because only they know whether to
        wait or to drop.

        @return: a L{Deferred} firing with C{True} or C{False} in the reactor
            thread, or failing with L{CheckCancelled} if C{cancel(connection)}
            dropped it before it ran.
        """
        return self.queue.submit(source, connection, number)

    def _start(self, number: int) -> Deferred:
        return deferToThreadPool(self.reactor, self.threadpool, self._check, number)

    def _check(self, number: int) -> bool:
        """
        In a pool thread: the check, unless the checker was abandoned while
        it waited for a thread.
        """
        if self.abandoned:
            raise CheckAbandoned()
        start = perf_counter()
        result = is_prime_releasing_gil(number)
        self.checkTimes.observe(perf_counter() - start)
        return result

    def abandon(self) -> None:
        """
        Let no waiting check start: those not running yet fail at once with
        L{CheckAbandoned}, so stopping the pool waits only for the checks
        already running.
        """
        self.abandoned = True
        self.queue.cancelAll(CheckAbandoned())
