"""
Where a primality check runs: inline in the reactor thread when it is cheap,
in a dedicated thread pool when it is not, with a global bound on the work
waiting for that pool.

Inline checks cost a few microseconds; a Deferred and two thread hops cost
more than that, so only numbers above L{primed.primality.INLINE_MAX_BITS} bits
go to the pool.  The bound keeps memory and latency finite when clients send
big numbers faster than the pool can check them: TCP connections wait (they
stop reading) until there is room, UDP requests are dropped.
"""

from collections import deque
from functools import partial
from threading import Thread
from time import perf_counter
from typing import Callable, Deque

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from primed.counters import CheckTimes
from primed.primality import INLINE_MAX_BITS, is_prime, is_prime_releasing_gil

#: Pool checks that may be running or waiting at once, over all clients.
DEFAULT_MAX_QUEUED = 64


class CheckPool(ThreadPool):
    """
    The thread pool big checks run in, which never holds a stopping process.

    L{ThreadPool.stop} joins every worker, in the reactor thread, and the
    interpreter joins every non-daemon thread before it exits: either would
    keep a stop past its drain deadline waiting for checks nobody will read,
    minutes at a large C{--max-digits}.  Workers here are daemon threads, and
    L{stop} can leave them to finish their check on their own.
    """

    threadFactory = staticmethod(partial(Thread, daemon=True))

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
    Run primality checks inline or in C{threadpool}, bounded by C{maxQueued}.

    @ivar queued: checks handed to the pool and not finished yet.
    @ivar checkTimes: how long each pool check ran (waiting not included).
    """

    def __init__(
        self,
        reactor,
        threadpool,
        maxQueued: int = DEFAULT_MAX_QUEUED,
        inlineMaxBits: int = INLINE_MAX_BITS,
    ):
        """
        @param reactor: provides C{callFromThread}; the pool's results are
            delivered in its thread.
        @param threadpool: provides C{callInThreadWithCallback}, usually a
            L{twisted.python.threadpool.ThreadPool} the caller owns.
        """
        self.reactor = reactor
        self.threadpool = threadpool
        self.maxQueued = maxQueued
        self.inlineMaxBits = inlineMaxBits
        self.queued = 0
        self.checkTimes = CheckTimes()
        self.abandoned = False
        self._roomWaiters: Deque[Callable[[], None]] = deque()
        self._idleWaiters: list = []

    def isInline(self, number: int) -> bool:
        """
        Whether C{number} is cheap enough to check in the reactor thread.
        """
        return number.bit_length() <= self.inlineMaxBits

    checkInline = staticmethod(is_prime)

    def hasRoom(self) -> bool:
        """
        Whether L{submit} may be called now without exceeding the bound.
        """
        return self.queued < self.maxQueued

    def submit(self, number: int, requester=None) -> Deferred:
        """
        Check C{number} in the pool.  Callers check L{hasRoom} first: the
        bound is theirs to honour because only they know whether to wait or to
        drop.

        @param requester: who asks (a TCP protocol, a UDP C{(host, port)});
            unused here, L{primed.proving.ProvingChecker} shares its proofs
            fairly between requesters' sources.

        @return: a L{Deferred} firing with C{True} or C{False} in the reactor
            thread.
        """
        self.queued += 1
        d = deferToThreadPool(self.reactor, self.threadpool, self._check, number)
        d.addBoth(self._finished)
        return d

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

    def requesterLost(self, requester) -> None:
        """
        A TCP connection that may have submitted checks is gone.  Nothing to
        do here: a thread cannot be stopped, and its result is dropped.
        """

    def abandon(self) -> None:
        """
        Let no waiting check start: those not running yet fail at once with
        L{CheckAbandoned}, so stopping the pool waits only for the checks
        already running (L{ThreadPool.stop} runs every queued task first).
        """
        self.abandoned = True

    def notifyRoom(self, callback: Callable[[], None]) -> None:
        """
        Call C{callback} once, when L{submit} has room again.  Waiters are
        served first come, first served, so no connection starves.
        """
        self._roomWaiters.append(callback)

    def cancelRoomWaiter(self, callback: Callable[[], None]) -> None:
        """
        Forget a waiter registered with L{notifyRoom}, if it is still waiting.
        """
        try:
            self._roomWaiters.remove(callback)
        except ValueError:
            pass

    def whenIdle(self) -> Deferred:
        """
        @return: a L{Deferred} that fires once no pool check is running or
            waiting, so a stop can wait for results nobody will read.
        """
        d = Deferred()
        if self.queued == 0:
            d.callback(None)
        else:
            self._idleWaiters.append(d)
        return d

    def _finished(self, result):
        self.queued -= 1
        waiters = self._roomWaiters
        while waiters and self.hasRoom():
            waiters.popleft()()
        if self.queued == 0 and self._idleWaiters:
            idle, self._idleWaiters = self._idleWaiters, []
            for d in idle:
                d.callback(None)
        return result
