"""
Tests for L{primed.checker}: inline versus pool, and the global bound.
"""

from twisted.trial import unittest

from fakes import HandDrivenPool, makeChecker
from primed.primality import INLINE_MAX_BITS

BIG_PRIME = 2**607 - 1


class PrimeCheckerTests(unittest.TestCase):
    def setUp(self):
        self.pool = HandDrivenPool()
        self.checker = makeChecker(self.pool, maxQueued=2, maxQueuedPerSource=2)

    def test_inlineThreshold(self):
        self.assertTrue(self.checker.isInline(2**INLINE_MAX_BITS - 1))
        self.assertFalse(self.checker.isInline(2**INLINE_MAX_BITS))
        self.assertTrue(self.checker.checkInline(2**61 - 1))
        self.assertFalse(self.checker.checkInline(2**61 + 1))

    def test_submitRunsInThePool(self):
        d = self.checker.submit(BIG_PRIME)
        self.assertNoResult(d)
        self.assertEqual(self.checker.queued, 1)
        self.pool.run()
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(self.checker.queued, 0)

    def test_bound(self):
        self.checker.submit(BIG_PRIME)
        self.assertTrue(self.checker.hasRoom(None))
        self.checker.submit(BIG_PRIME + 2)
        self.assertFalse(self.checker.hasRoom(None))
        self.pool.run()
        self.assertTrue(self.checker.hasRoom(None))

    def test_roomWaitersFirstComeFirstServed(self):
        calls = []
        for _ in range(2):
            self.checker.submit(BIG_PRIME)

        def waiter(name):
            def w():
                calls.append(name)
                self.checker.submit(BIG_PRIME)  # takes the room it was given
            return w

        first, second = waiter("first"), waiter("second")
        self.checker.notifyRoom(None, first)
        self.checker.notifyRoom(None, second)
        self.pool.run()
        self.assertEqual(calls, ["first"])
        self.pool.run()
        self.assertEqual(calls, ["first", "second"])

    def test_cancelledWaiterIsNotCalled(self):
        self.checker.submit(BIG_PRIME)
        self.checker.submit(BIG_PRIME)
        calls = []
        self.checker.notifyRoom(None, lambda: calls.append(1))
        self.checker.cancelRoomWaiter(self.checker.queue._roomWaiters[None][0])
        self.checker.cancelRoomWaiter(lambda: None)  # unknown: ignored
        self.pool.runAll()
        self.assertEqual(calls, [])

    def test_fairQueueDefaults(self):
        """
        One source may have a quarter of C{maxQueued}, but never fewer
        checks than the pool has threads; the pool is handed one check per
        thread (its C{max}), or every check for a pool without one.
        """
        from primed.checker import PrimeChecker

        class Pool(HandDrivenPool):
            max = 3

        checker = PrimeChecker(None, Pool(), maxQueued=8)
        self.assertEqual((checker.maxQueuedPerSource, checker.queue.concurrency), (3, 3))
        checker = PrimeChecker(None, Pool(), maxQueued=16)
        self.assertEqual((checker.maxQueuedPerSource, checker.queue.concurrency), (4, 3))
        self.assertEqual(makeChecker(maxQueued=8).queue.concurrency, 8)

    def test_cancelledCheckFailsWithCheckCancelled(self):
        from primed.checker import CheckCancelled

        checker = makeChecker(self.pool, maxQueued=4, concurrency=1)
        checker.submit(BIG_PRIME, "a", "c")
        waiting = checker.submit(BIG_PRIME, "a", "c")
        self.assertEqual(checker.cancel("c"), 1)
        self.failureResultOf(waiting, CheckCancelled)
        self.assertEqual(checker.queued, 1)

    def test_whenIdle(self):
        self.successResultOf(self.checker.whenIdle())
        self.checker.submit(BIG_PRIME)
        idle = self.checker.whenIdle()
        self.assertNoResult(idle)
        self.pool.run()
        self.successResultOf(idle)

    def test_whenIdleWaitsForEveryCheck(self):
        self.checker.submit(BIG_PRIME)
        self.checker.submit(BIG_PRIME + 2)
        idle = self.checker.whenIdle()
        self.pool.run()
        self.assertNoResult(idle)
        self.pool.run()
        self.successResultOf(idle)

    def test_failurePropagates(self):
        d = self.checker.submit(BIG_PRIME)
        onResult, f, args, kwargs = self.pool.work.pop()
        onResult(False, ValueError("boom"))
        self.failureResultOf(d, ValueError)
        self.assertEqual(self.checker.queued, 0)

    def test_checkTimeIsTheCheckDuration(self):
        """
        C{checkTimes} records how long the check ran: the clock after it
        minus the clock before it (a fake clock here, read twice).
        """
        from primed import checker as checkerModule

        readings = iter([1000.0, 1000.25])
        self.patch(checkerModule, "perf_counter", lambda: next(readings))
        self.checker.submit(BIG_PRIME)
        self.pool.run()
        self.assertEqual(self.checker.checkTimes.cumulative()[1], 0.25)

    def test_abandonSkipsChecksNotStarted(self):
        """
        After L{PrimeChecker.abandon} (a stop past its deadline), checks still
        waiting for a thread fail at once instead of running.
        """
        from primed.checker import CheckAbandoned

        first = self.checker.submit(BIG_PRIME)
        second = self.checker.submit(BIG_PRIME)
        self.pool.run()
        self.checker.abandon()
        self.pool.run()
        self.assertIs(self.successResultOf(first), True)
        self.failureResultOf(second, CheckAbandoned)
        self.assertEqual(self.checker.queued, 0)


class CheckPoolTests(unittest.TestCase):
    """
    L{CheckPool} with real threads: a worker busy with a check that never
    ends (here, until the test lets it) must not hold a stop.
    """

    def test_stopWithoutWaitingLeavesABusyWorker(self):
        import threading

        from primed.checker import CheckPool

        pool = CheckPool(1, 1, name="test-check")
        pool.start()
        running, release = threading.Event(), threading.Event()
        self.addCleanup(release.set)

        def check():
            running.set()
            release.wait(60)

        pool.callInThread(check)
        self.assertTrue(running.wait(10))
        self.assertTrue(all(thread.daemon for thread in pool.threads))
        worker = pool.threads[0]
        pool.stop(wait=False)  # returns with the worker still busy
        self.assertTrue(worker.is_alive())
        self.assertFalse(pool.started)
        release.set()
        worker.join(10)  # it exits once its check is done
        self.assertFalse(worker.is_alive())

    def test_stopWaitsByDefault(self):
        from primed.checker import CheckPool

        pool = CheckPool(2, 2)
        pool.start()
        pool.callInThread(lambda: None)
        threads = list(pool.threads)
        pool.stop()
        self.assertFalse(any(thread.is_alive() for thread in threads))
