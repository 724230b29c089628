"""
A fair queue in front of an executor: expensive jobs served round-robin by
source, then by connection within a source, each source held to a quota of
the queue, and a connection's waiting jobs dropped when it goes away.

Why: the thread pool behind L{primed.checker} serves its own queue first
come, first served, so one client that pipelines a few hundred big numbers
made every other client's big number wait behind all of them (issue 21,
item 5), and kept the pool busy for minutes on answers nobody would read
once it disconnected (item 4).  Here, the executor is handed at most
C{concurrency} jobs at a time (one per thread), and the rest wait in this
queue, which decides what runs next:

  - Round-robin by B{source} (a client address: see
    L{primed.sources.sourceKey}), then by
    B{connection} within the source.  A source that queued a hundred jobs
    and a source that queued one take turns; a source that opens more
    connections gets no more turns, only the same turns spread over its
    connections.  A source with nothing running or waiting is a
    B{newcomer}: newcomers wait in a line of their own, in the order they
    came, and take every other turn with the sources already busy, so a
    client asking one number at a time waits for about one running job,
    not a round; a source that already has a job running or waiting goes
    to the back of the ring, so sending often gains nothing, and
    newcomers, however many, cannot starve the ring (nor, first come first
    served, each other).  A connection's own jobs run in the order they
    were submitted, so its replies stay in order.

  - B{Bounds.}  At most C{maxQueued} jobs running or waiting over all
    sources (the memory bound, as before); at most C{perSource} of them
    from one source; and the last C{reserve} places (a quarter of
    C{maxQueued}) are kept for sources that have nothing queued, one each,
    so a queue filled by a few greedy sources still takes a new source's
    job.  L{hasRoom} answers for one source: a TCP connection without room
    stops reading until L{notifyRoom} calls it back, a UDP request is
    dropped.

  - B{Cancelling.}  L{cancel} drops every job of a connection that has not
    started: its L{Deferred} fails with L{JobCancelled} and the job never
    reaches the executor.  A job already running finishes; what is done
    with its result is the caller's business.

The interface is small on purpose, so another executor (a process pool for
proofs) can share the same rules by sharing or copying this queue::

    queue = FairQueue(run, concurrency, maxQueued, perSource)
    if queue.hasRoom(source):
        d = queue.submit(source, connection, job)   # Deferred: run(job)'s result
    else:
        queue.notifyRoom(source, callback)            # called once there is room
    queue.cancel(connection)                         # connection lost: drop its jobs

C{run(job)} is called in the reactor thread and returns a L{Deferred} firing
(in the reactor thread) with the job's result; the queue never calls it for
more than C{concurrency} jobs at once.  Sources and connections are any
hashable values (a TCP protocol, a source address string).  Everything here
runs in the reactor thread.
"""

from collections import deque
from collections.abc import Hashable
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


class JobCancelled(Exception):
    """
    A queued job dropped before it ran, because its connection was lost.
    """


def defaultPerSource(maxQueued: int, concurrency: int = 1) -> int:
    """
    The per-source quota when none is given: a quarter of the queue, but
    never fewer than the executor's workers, so that a lone client (a bulk
    run on a many-core host: C{--threads 8 --max-queued 8}) can still keep
    every thread busy.
    """
    return max(1, concurrency, maxQueued // 4)


class _Source:
    """
    One source's share: jobs counted (running and waiting), and its
    connections that have jobs waiting, in their round-robin order.
    """

    __slots__ = ("key", "count", "connections")

    def __init__(self, key):
        self.key = key
        self.count = 0
        self.connections: deque[Hashable] = deque()


class FairQueue:
    """
    Jobs for an executor, served round-robin by source then by connection;
    see the module docstring.

    @ivar queued: jobs running or waiting, over all sources.
    @ivar running: jobs handed to the executor and not finished.
    @ivar cancelled: jobs dropped by L{cancel} without running, ever.
    """

    def __init__(
        self,
        run: Callable[[object], Deferred],
        concurrency: int,
        maxQueued: int,
        perSource: int = 0,
    ):
        """
        @param run: starts one job, returning a L{Deferred} of its result.
        @param concurrency: jobs handed to C{run} at once, at most: the
            executor's workers.  More would queue in the executor, first
            come, first served, out of this queue's reach.
        @param maxQueued: jobs running or waiting at once, at most.
        @param perSource: jobs of one source running or waiting at once, at
            most; 0 for L{defaultPerSource}.
        """
        self._run = run
        self.concurrency = max(1, concurrency)
        self.maxQueued = maxQueued
        self.perSource = perSource or defaultPerSource(maxQueued, self.concurrency)
        #: Places kept for sources with nothing queued.
        self.reserve = maxQueued // 4
        self.queued = 0
        self.running = 0
        self.cancelled = 0
        self._sources: dict[Hashable, _Source] = {}
        # Sources with jobs waiting, in round-robin order.
        self._ready: deque[_Source] = deque()
        # Newcomers (their first job waiting), in the order they came, and
        # whether the next turn is theirs when the ring waits too.
        self._fresh: deque[_Source] = deque()
        self._freshTurn = True
        # Each connection with jobs waiting: its source and its jobs.
        self._waiting: dict[Hashable, tuple[_Source, deque]] = {}
        # Callers waiting for room, by source (in the order sources first
        # asked), each source's in the order they asked.
        self._roomWaiters: dict[Hashable, deque[Callable[[], None]]] = {}
        self._idleWaiters: list = []

    def roomWaiters(self) -> int:
        """
        How many callers wait for room (L{notifyRoom}) now.
        """
        return sum(len(callbacks) for callbacks in self._roomWaiters.values())

    def sources(self) -> int:
        """
        How many sources have jobs running or waiting now.
        """
        return len(self._sources)

    def hasRoom(self, source) -> bool:
        """
        Whether C{source} may L{submit} a job now: the queue is not full,
        the source is under its quota, and a source that already has jobs
        queued leaves the reserve to sources that have none.
        """
        queued = self.queued
        if queued >= self.maxQueued:
            return False
        share = self._sources.get(source)
        if share is None:
            return True
        return share.count < self.perSource and queued < self.maxQueued - self.reserve

    def isFull(self) -> bool:
        """
        Whether no source at all may submit: C{maxQueued} jobs queued.
        """
        return self.queued >= self.maxQueued

    def submit(self, source, connection, job) -> Deferred:
        """
        Queue C{job} for C{connection} of C{source}.  Callers check
        L{hasRoom} first: whether to wait or to drop is theirs to decide.

        @return: a L{Deferred} firing with C{run(job)}'s result, or failing
            with L{JobCancelled} if L{cancel} drops it first.
        """
        share = self._sources.get(source)
        if share is None:
            share = self._sources[source] = _Source(source)
        share.count += 1
        self.queued += 1
        d: Deferred[Any] = Deferred()
        if self.running < self.concurrency and not self._ready and not self._fresh:
            self._start(job, d, share)
            return d
        waiting = self._waiting.get(connection)
        if waiting is None:
            waiting = self._waiting[connection] = (share, deque())
            if not share.connections:
                if share.count == 1:
                    # Nothing running or waiting before: a newcomer.
                    self._fresh.append(share)
                else:
                    self._ready.append(share)
            share.connections.append(connection)
        waiting[1].append((job, d))
        return d

    def cancel(self, connection) -> int:
        """
        Drop every job of C{connection} that has not started; its running
        jobs go on.  The dropped jobs' L{Deferred}s fail with
        L{JobCancelled}.

        @return: how many were dropped.
        """
        entry = self._waiting.pop(connection, None)
        if entry is None:
            return 0
        share, jobs = entry
        share.connections.remove(connection)
        if not share.connections:
            (self._fresh if share in self._fresh else self._ready).remove(share)
        dropped = len(jobs)
        share.count -= dropped
        self.queued -= dropped
        self.cancelled += dropped
        if not share.count:
            del self._sources[share.key]
        for _job, d in jobs:
            d.errback(Failure(JobCancelled()))
        self._roomMade()
        return dropped

    def cancelAll(self, reason: Exception) -> int:
        """
        Fail every job that has not started with C{reason} (a stop that
        gave up: nobody will read them).

        @return: how many were dropped.
        """
        dropped = 0
        for connection in list(self._waiting):
            share, jobs = self._waiting.pop(connection)
            share.connections.remove(connection)
            share.count -= len(jobs)
            self.queued -= len(jobs)
            dropped += len(jobs)
            if not share.count:
                del self._sources[share.key]
            for _job, d in jobs:
                d.errback(Failure(reason))
        self._ready.clear()
        self._fresh.clear()
        self._roomMade()
        return dropped

    # Room and idleness.

    def notifyRoom(self, source, callback: Callable[[], None]) -> None:
        """
        Call C{callback} once, when C{source} has room again.  A source's
        waiters are called in the order they asked, as long as it has room.
        """
        callbacks = self._roomWaiters.get(source)
        if callbacks is None:
            callbacks = self._roomWaiters[source] = deque()
        callbacks.append(callback)

    def cancelRoomWaiter(self, callback: Callable[[], None]) -> None:
        """
        Forget a waiter registered with L{notifyRoom}, if it still waits.
        """
        for source, callbacks in self._roomWaiters.items():
            if callback in callbacks:
                callbacks.remove(callback)
                if not callbacks:
                    del self._roomWaiters[source]
                return

    def whenIdle(self) -> Deferred:
        """
        @return: a L{Deferred} that fires once no job is running or waiting.
        """
        d: Deferred[Any] = Deferred()
        if self.queued == 0:
            d.callback(None)
        else:
            self._idleWaiters.append(d)
        return d

    # Running.

    def _start(self, job, d: Deferred, share: _Source) -> None:
        self.running += 1
        started: Any
        try:
            started = self._run(job)
        except BaseException:
            started = Failure()
            self._finished(started, d, share)
            return
        started.addBoth(self._finished, d, share)

    def _finished(self, result, d: Deferred, share: _Source) -> None:
        """
        One job is done: deliver its result first (its caller may cancel
        more work in response, which must not be started), then give its
        place to a waiting job, and its room to a waiting caller.  The
        source counts the job until its result is delivered: what its
        caller submits in response (a connection's next held line) comes
        from a busy source, for the back of the line, not from a newcomer
        for the head, ahead of the sources waiting.
        """
        self.running -= 1
        self.queued -= 1
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)
        share.count -= 1
        if not share.count and not share.connections:
            del self._sources[share.key]
        self._dispatch()
        self._roomMade()

    def _dispatch(self) -> None:
        """
        Hand waiting jobs to the executor while it has a free worker: the
        next source in turn (the first newcomer, or the ring's next, turn
        about), its next connection in turn, that connection's oldest job.
        """
        ready = self._ready
        fresh = self._fresh
        while (fresh or ready) and self.running < self.concurrency:
            if fresh and (self._freshTurn or not ready):
                share = fresh.popleft()
                self._freshTurn = not ready  # the ring waits: its turn next
            else:
                share = ready.popleft()
                self._freshTurn = True
            connection = share.connections.popleft()
            jobs = self._waiting[connection][1]
            job, d = jobs.popleft()
            if jobs:
                share.connections.append(connection)
            else:
                del self._waiting[connection]
            if share.connections:
                ready.append(share)
            self._start(job, d, share)

    def _roomMade(self) -> None:
        """
        Call the waiters of every source that has room now: one look per
        source, however many of its connections wait.
        """
        waiters = self._roomWaiters
        if waiters:
            for source in list(waiters):
                if self.queued >= self.maxQueued:
                    break
                callbacks = waiters.get(source)
                # Bounded: a callback that finds no room asks again, at the end.
                for _ in range(len(callbacks) if callbacks else 0):
                    if not callbacks or not self.hasRoom(source):
                        break
                    callbacks.popleft()()
                if callbacks is not None and not callbacks and waiters.get(source) is callbacks:
                    del waiters[source]
        if self.queued == 0 and self._idleWaiters:
            idle, self._idleWaiters = self._idleWaiters, []
            for d in idle:
                d.callback(None)
