"""
Tests for L{primed.fairqueue}: the order jobs reach the executor in, the
bounds, cancelling and room waiters.  The executor is the
test's: it records each job it is handed and finishes it when told.
"""

from twisted.internet.defer import Deferred, fail
from twisted.trial import unittest

from primed.fairqueue import FairQueue, JobCancelled, defaultPerSource


class Executor:
    """
    C{run(job)} for L{FairQueue}: remembers the job and a L{Deferred} the
    test fires with L{finish}.
    """

    def __init__(self):
        self.started = []  # every job ever handed over, in order
        self.running = {}

    def __call__(self, job):
        d = Deferred()
        self.started.append(job)
        self.running[job] = d
        return d

    def finish(self, job, result=True):
        self.running.pop(job).callback(result)


class OrderTests(unittest.TestCase):
    def setUp(self):
        self.executor = Executor()

    def make(self, concurrency=1, maxQueued=64, perSource=64):
        self.queue = FairQueue(self.executor, concurrency, maxQueued, perSource)
        return self.queue

    def drain(self):
        """
        Finish jobs one at a time, oldest running first, until none is
        left; the order every job started in.
        """
        for _ in range(1000):
            if not self.executor.running:
                break
            self.executor.finish(next(iter(self.executor.running)))
        return self.executor.started

    def test_concurrencyBound(self):
        """
        At most C{concurrency} jobs are handed to the executor at once; the
        next starts when one finishes.
        """
        queue = self.make(concurrency=2)
        results = [queue.submit("a", "c", n) for n in range(4)]
        self.assertEqual(self.executor.started, [0, 1])
        self.assertEqual((queue.running, queue.queued), (2, 4))
        self.executor.finish(1, "one")
        self.assertEqual(self.successResultOf(results[1]), "one")
        self.assertEqual(self.executor.started, [0, 1, 2])
        self.assertEqual((queue.running, queue.queued), (2, 3))

    def test_roundRobinBySource(self):
        """
        A source that queued one job after another source queued many waits
        for one of the other's jobs, not all of them.
        """
        queue = self.make()
        for n in range(5):
            queue.submit("hog", "h", f"hog{n}")
        queue.submit("victim", "v", "victim")
        self.assertEqual(self.drain(), ["hog0", "victim", "hog1", "hog2", "hog3", "hog4"])

    def test_busySourceGoesToTheBack(self):
        """
        Only a source with nothing running or waiting goes to the head of
        the line: one that sends a job whenever its last one starts goes
        to the back, behind a backlog's next turn.
        """
        queue = self.make()
        queue.submit("busy", "b", "busy0")  # runs
        for n in range(3):
            queue.submit("hog", "h", f"hog{n}")  # a newcomer: next
        queue.submit("busy", "b", "busy1")  # busy has one running: the back
        self.assertEqual(self.drain(), ["busy0", "hog0", "busy1", "hog1", "hog2"])

    def test_newcomersCannotStarveAnybody(self):
        """
        Sources asking one number at a time (each asks again once its
        answer is out) are newcomers every time; more of them than threads
        must neither starve each other (a newcomer put ahead of the ones
        already waiting) nor a source with a backlog.
        """
        queue = self.make()
        for n in range(4):
            queue.submit("busy", "d", f"d{n}")  # d0 runs
        for source in "abc":
            queue.submit(source, source, f"{source}0")
        asked = {source: 0 for source in "abc"}
        for _ in range(12):
            job = next(iter(self.executor.running))
            self.executor.finish(job)
            source = job[0]
            if source in asked:
                asked[source] += 1
                queue.submit(source, source, f"{source}{asked[source]}")
        # Turn about: d1, a newcomer, d2, a newcomer...
        started = self.executor.started[:10]
        self.assertIn("d1", started)
        self.assertIn("d2", started)
        for source in "abc":
            self.assertIn(f"{source}1", started)

    def test_newcomerAndRingTakeTurns(self):
        """
        After the ring's turn comes a newcomer's: a backlog cannot keep a
        newcomer waiting for more than one of its jobs.
        """
        queue = self.make()
        for n in range(5):
            queue.submit("hog", "h", f"hog{n}")  # hog0 runs
        queue.submit("a", "a", "a0")
        self.executor.finish("hog0")  # a0, a newcomer's turn
        queue.submit("b", "b", "b0")
        self.executor.finish("a0")  # hog1, the ring's turn
        self.executor.finish("hog1")  # b0, a newcomer's again
        self.assertEqual(self.executor.started, ["hog0", "a0", "hog1", "b0"])

    def test_roundRobinByConnectionWithinASource(self):
        queue = self.make()
        for n in range(4):
            queue.submit("a", "a1", f"a1-{n}")
        queue.submit("a", "a2", "a2-0")
        self.assertEqual(self.drain(), ["a1-0", "a1-1", "a2-0", "a1-2", "a1-3"])

    def test_moreConnectionsWinNoShares(self):
        """
        A source with three connections and a source with one take turns
        job for job: the turns are the source's, split over its
        connections.
        """
        queue = self.make()
        queue.submit("first", "x", "x")  # starts at once
        for n in range(3):
            for connection in ("a1", "a2", "a3"):
                queue.submit("a", connection, f"{connection}-{n}")
        for n in range(3):
            queue.submit("b", "b1", f"b1-{n}")
        order = self.drain()[1:]
        # a, then b, came with nothing queued: newcomers in that order,
        # then turns.
        self.assertEqual(order[:6], ["a1-0", "b1-0", "a2-0", "b1-1", "a3-0", "b1-2"])
        self.assertEqual(order[6:], ["a1-1", "a2-1", "a3-1", "a1-2", "a2-2", "a3-2"])

    def test_connectionOrderKept(self):
        """
        Whatever the interleaving, each connection's jobs start in the
        order it submitted them.
        """
        queue = self.make(concurrency=3)
        for n in range(6):
            for source, connection in (("a", "a1"), ("a", "a2"), ("b", "b1")):
                queue.submit(source, connection, (connection, n))
        started = self.drain()
        for connection in ("a1", "a2", "b1"):
            self.assertEqual([n for c, n in started if c == connection], list(range(6)))
        self.assertEqual(len(started), 18)

    def test_resultAndFailureDelivered(self):
        queue = self.make(concurrency=2)
        ok = queue.submit("a", "c", "ok")
        bad = queue.submit("a", "c", "bad")
        self.executor.running.pop("bad").errback(ValueError("boom"))
        self.failureResultOf(bad, ValueError)
        self.executor.finish("ok", False)
        self.assertIs(self.successResultOf(ok), False)
        self.assertEqual((queue.queued, queue.running, queue.sources()), (0, 0, 0))

    def test_runRaising(self):
        """
        An executor that raises instead of returning a L{Deferred} fails
        that job only; the next one still runs.
        """
        calls = []

        def run(job):
            calls.append(job)
            if job == "bad":
                raise RuntimeError("no worker")
            return fail(ValueError(job)) if job == "fails" else Deferred()

        queue = FairQueue(run, 1, 8, 8)
        bad = queue.submit("a", "c", "bad")
        self.failureResultOf(bad, RuntimeError)
        self.failureResultOf(queue.submit("a", "c", "fails"), ValueError)
        queue.submit("a", "c", "next")
        self.assertEqual(calls, ["bad", "fails", "next"])
        self.assertEqual((queue.queued, queue.running), (1, 1))


class BoundTests(unittest.TestCase):
    def setUp(self):
        self.executor = Executor()

    def test_defaultPerSourceIsAQuarter(self):
        self.assertEqual(defaultPerSource(64), 16)
        self.assertEqual(defaultPerSource(3), 1)
        self.assertEqual(defaultPerSource(7), 1)  # whole numbers: 7 // 4
        queue = FairQueue(self.executor, 1, 64)
        self.assertEqual((queue.perSource, queue.reserve), (16, 16))
        self.assertEqual(FairQueue(self.executor, 1, 64, 5).perSource, 5)

    def test_defaultPerSourceKeepsEveryThreadBusy(self):
        """
        A quarter of a short queue is fewer than the threads: the default
        quota is then the threads, so one client alone can use them all.
        """
        self.assertEqual(defaultPerSource(8, 8), 8)
        self.assertEqual(defaultPerSource(64, 8), 16)
        self.assertEqual(FairQueue(self.executor, 8, 8).perSource, 8)

    def test_perSourceQuota(self):
        queue = FairQueue(self.executor, 1, 64, 3)
        for n in range(3):
            self.assertTrue(queue.hasRoom("a"))
            queue.submit("a", "c%d" % n, n)  # more connections: same quota
        self.assertFalse(queue.hasRoom("a"))
        self.assertTrue(queue.hasRoom("b"))
        self.executor.finish(0)
        self.assertTrue(queue.hasRoom("a"))

    def test_reserveForNewSources(self):
        """
        With C{maxQueued} 8 the last 2 places go to sources with nothing
        queued, one each: a greedy source stops at 6, each new source gets
        one place, and at 8 nobody gets in.
        """
        queue = FairQueue(self.executor, 1, 8, 8)
        self.assertEqual(queue.reserve, 2)
        for n in range(6):
            self.assertTrue(queue.hasRoom("greedy"))
            queue.submit("greedy", "g", n)
        self.assertFalse(queue.hasRoom("greedy"))
        self.assertFalse(queue.isFull())
        self.assertTrue(queue.hasRoom("new1"))
        queue.submit("new1", "n1", "n1")
        self.assertFalse(queue.hasRoom("new1"))
        self.assertTrue(queue.hasRoom("new2"))
        queue.submit("new2", "n2", "n2")
        self.assertTrue(queue.isFull())
        self.assertFalse(queue.hasRoom("new3"))

    def test_noReserveForATinyQueue(self):
        queue = FairQueue(self.executor, 1, 3, 3)
        self.assertEqual(queue.reserve, 0)
        for n in range(3):
            self.assertTrue(queue.hasRoom("a"))
            queue.submit("a", "c", n)
        self.assertFalse(queue.hasRoom("a"))
        self.assertFalse(queue.hasRoom("b"))


class CancelTests(unittest.TestCase):
    def setUp(self):
        self.executor = Executor()
        self.queue = FairQueue(self.executor, 1, 64, 64)

    def test_waitingJobsDroppedRunningJobFinishes(self):
        queue = self.queue
        running = queue.submit("a", "lost", "run")
        waiting = [queue.submit("a", "lost", n) for n in range(3)]
        other = queue.submit("a", "kept", "kept")
        self.assertEqual(queue.cancel("lost"), 3)
        for d in waiting:
            self.failureResultOf(d, JobCancelled)
        self.assertEqual((queue.queued, queue.cancelled), (2, 3))
        self.executor.finish("run", "done")
        self.assertEqual(self.successResultOf(running), "done")
        self.assertEqual(self.executor.started, ["run", "kept"])
        self.executor.finish("kept")
        self.successResultOf(other)
        self.assertEqual((queue.queued, queue.sources()), (0, 0))
        self.assertEqual(queue.cancel("lost"), 0)
        self.assertEqual(queue.cancel("unknown"), 0)

    def test_cancelledAddsUp(self):
        queue = self.queue
        queue.submit("a", "run", "run")
        dropped = [queue.submit("a", c, n) for c, n in (("x", 1), ("x", 2), ("y", 3))]
        self.assertEqual((queue.cancel("x"), queue.cancel("y")), (2, 1))
        self.assertEqual(queue.cancelled, 3)
        for d in dropped:
            self.failureResultOf(d, JobCancelled)

    def test_cancelAllBookkeeping(self):
        """
        After L{FairQueue.cancelAll}, the sources whose jobs were all
        dropped are gone and have their quota back; counts are exact.
        """
        queue = FairQueue(self.executor, 1, 64, 3)
        queue.submit("a", "a1", "run")
        waiting = [queue.submit("a", "a1", n) for n in range(2)]
        waiting += [queue.submit("b", "b1", n) for n in range(3)]
        self.assertFalse(queue.hasRoom("b"))
        self.assertEqual(queue.cancelAll(KeyError("stop")), 5)
        for d in waiting:
            self.failureResultOf(d, KeyError)
        self.assertEqual((queue.queued, queue.sources()), (1, 1))
        self.assertTrue(queue.hasRoom("b"))
        queue.submit("a", "a1", "again")
        queue.submit("a", "a1", "again2")
        self.assertFalse(queue.hasRoom("a"))  # 3 of a: the running one counts

    def test_cancelLastConnectionOfASourceLeavesTheRing(self):
        queue = self.queue
        queue.submit("x", "x", "x")
        cancelled = queue.submit("a", "a1", "a")
        queue.submit("b", "b1", "b")
        queue.cancel("a1")
        self.failureResultOf(cancelled, JobCancelled)
        self.executor.finish("x")
        self.assertEqual(self.executor.started, ["x", "b"])
        self.assertEqual(queue.sources(), 1)

    def test_cancelInTheResultCallbackStartsNothingOfIt(self):
        """
        The result of a job is delivered before the next job starts: a
        caller that learns from it that its connection is gone cancels the
        rest before any of it reaches the executor.
        """
        queue = self.queue
        first = queue.submit("a", "c", "first")
        second = queue.submit("a", "c", "second")
        queue.submit("b", "d", "other")
        first.addCallback(lambda _: queue.cancel("c"))
        self.executor.finish("first")
        self.failureResultOf(second, JobCancelled)
        self.assertEqual(self.executor.started, ["first", "other"])
        self.assertEqual(queue.cancelled, 1)

    def test_cancelMakesRoom(self):
        queue = FairQueue(self.executor, 1, 4, 2)
        queue.submit("a", "c", 1)
        waiting = queue.submit("a", "c", 2)
        woken = []
        queue.notifyRoom("a", lambda: woken.append("a"))
        queue.cancel("c")
        self.assertEqual(woken, ["a"])
        self.failureResultOf(waiting, JobCancelled)

    def test_cancelAll(self):
        queue = self.queue
        running = queue.submit("a", "c", "run")
        waiting = [queue.submit(s, s, s) for s in "bcd"]
        idle = queue.whenIdle()
        self.assertEqual(queue.cancelAll(KeyError("stop")), 3)
        for d in waiting:
            self.failureResultOf(d, KeyError)
        self.assertNoResult(idle)
        self.assertEqual(queue.queued, 1)
        self.executor.finish("run")
        self.successResultOf(running)
        self.successResultOf(idle)
        self.assertEqual(self.executor.started, ["run"])


class RoomWaiterTests(unittest.TestCase):
    def setUp(self):
        self.executor = Executor()
        self.queue = FairQueue(self.executor, 1, 64, 2)

    def test_wokenOnlyWhenTheirSourceHasRoom(self):
        queue = self.queue
        for source in ("a", "b"):
            queue.submit(source, source, source + "1")
            queue.submit(source, source, source + "2")
        woken = []
        queue.notifyRoom("a", lambda: woken.append("a"))
        queue.notifyRoom("b", lambda: woken.append("b"))
        self.executor.finish("a1")  # b1 starts (b came in idle); a is down to one
        self.assertEqual(woken, ["a"])
        self.executor.finish("b1")  # a2 starts; b is down to one
        self.assertEqual(woken, ["a", "b"])

    def test_oneLookPerSource(self):
        """
        However many connections of a source without room wait, a finished
        job looks at that source once (the 60-digit pool work of a busy
        server finishes tens of thousands of jobs a second).
        """
        queue = FairQueue(self.executor, 1, 64, 1)
        queue.submit("a", "a", 1)
        for n in range(100):
            queue.notifyRoom("a", lambda: None)  # never takes the room
        queue.submit("b", "b", 2)
        looks = []
        hasRoom = queue.hasRoom
        queue.hasRoom = lambda source: looks.append(source) or hasRoom(source)
        queue.notifyRoom("b", lambda: None)
        self.executor.finish(1)  # a has room: its 100 are called
        self.assertEqual(queue.roomWaiters(), 1)
        del looks[:]
        queue.submit("a", "a", 3)  # a full again
        for n in range(100):
            queue.notifyRoom("a", lambda: None)
        self.executor.finish(2)  # b has room, a has not
        self.assertEqual(sorted(looks), ["a", "b"])
        self.assertEqual(queue.roomWaiters(), 100)

    def test_fullQueueLooksNoFurther(self):
        """
        Once a waiter's callback has filled the queue, the other sources'
        waiters are not even looked at.
        """
        queue = FairQueue(self.executor, 1, 2, 2)
        queue.submit("a", "a", 1)
        queue.submit("a", "a", 2)
        looks = []
        hasRoom = queue.hasRoom
        queue.hasRoom = lambda source: looks.append(source) or hasRoom(source)
        queue.notifyRoom("b", lambda: queue.submit("b", "b", "b"))
        queue.notifyRoom("c", lambda: None)
        self.executor.finish(1)
        self.assertEqual(looks, ["b"])
        self.assertEqual(queue.roomWaiters(), 1)

    def test_calledWaitersLeaveNoEntry(self):
        queue = self.queue
        queue.submit("a", "a", 1)
        queue.submit("a", "a", 2)
        queue.notifyRoom("a", lambda: None)
        queue.notifyRoom("b", lambda: None)
        queue.cancelRoomWaiter(queue._roomWaiters["b"][0])
        self.assertEqual(list(queue._roomWaiters), ["a"])
        self.executor.finish(1)
        self.assertEqual(queue._roomWaiters, {})

    def test_waiterTakingTheRoomStopsTheOthers(self):
        queue = FairQueue(self.executor, 1, 2, 2)
        queue.submit("a", "a", 1)
        queue.submit("a", "a", 2)
        woken = []

        def taker(name):
            def wake():
                woken.append(name)
                queue.submit(name, name, name)
            return wake

        queue.notifyRoom("b", taker("b"))
        queue.notifyRoom("c", taker("c"))
        self.executor.finish(1)
        self.assertEqual(woken, ["b"])
        self.executor.finish(2)
        self.assertEqual(woken, ["b", "c"])

    def test_cancelRoomWaiter(self):
        queue = FairQueue(self.executor, 1, 1, 1)
        queue.submit("a", "a", 1)
        woken = []
        first, second = (lambda: woken.append(1)), (lambda: woken.append(2))
        queue.notifyRoom("b", first)
        queue.notifyRoom("b", second)
        queue.cancelRoomWaiter(first)
        queue.cancelRoomWaiter(first)  # no longer waiting: ignored
        self.executor.finish(1)
        self.assertEqual(woken, [2])

    def test_waiterCancellingAnotherOne(self):
        """
        A waiter's callback may cancel a later waiter (its connection
        closed meanwhile): that one is not called.
        """
        queue = FairQueue(self.executor, 1, 1, 1)
        queue.submit("a", "a", 1)
        woken = []

        def second():
            woken.append(2)

        def first():
            woken.append(1)
            queue.cancelRoomWaiter(second)

        queue.notifyRoom("b", first)
        queue.notifyRoom("c", second)
        self.executor.finish(1)
        self.assertEqual(woken, [1])

    def test_whenIdle(self):
        queue = self.queue
        self.successResultOf(queue.whenIdle())
        queue.submit("a", "a", 1)
        queue.submit("a", "a", 2)
        idle = queue.whenIdle()
        self.executor.finish(1)
        self.assertNoResult(idle)
        self.executor.finish(2)
        self.successResultOf(idle)
