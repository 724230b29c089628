"""
Tests for L{primed.proofpool}: real worker processes under the real
reactor, small numbers (a proof of milliseconds) except where a proof must
still be running when the test acts (a 1024-bit prime: a second).
"""

import os
import signal

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from hardnumbers import STRONG_PSEUDOPRIMES, randomPrime
from primed.proofpool import ProofPool, ProofUnavailable

#: A proof that takes about a second (1024 bits), long enough for the test
#: to act while it runs.
SLOW_PRIME = randomPrime(1024, 1)
M127 = 2**127 - 1
M521 = 2**521 - 1


async def waitFor(condition, what: str, timeout: float = 30.0):
    """
    Let the reactor run until C{condition()} holds, at most C{timeout}
    seconds of polls.
    """
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class PoolMixin:
    engine = "auto"

    def makePool(self, **kwargs) -> ProofPool:
        kwargs.setdefault("engine", self.engine)
        pool = ProofPool(reactor, kwargs.pop("size", 1), **kwargs)
        self.addCleanup(self.stopPool, pool)
        return pool

    async def stopPool(self, pool):
        pids = [w.pid for w in pool.workers if w.pid]
        await pool.stop()
        self.assertEqual(pool.workers, [])
        self.assertEqual([pid for pid in pids if alive(pid)], [])

    async def readyPool(self, **kwargs) -> ProofPool:
        pool = self.makePool(**kwargs)
        await pool.start()
        await waitFor(lambda: all(w.ready for w in pool.workers), "every worker ready")
        return pool


class ProofPoolTests(PoolMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_provesAndReusesWorkers(self):
        pool = yield defer.ensureDeferred(self.readyPool(size=2))
        self.assertTrue(pool.proverName.startswith("PARI"), pool.proverName)
        pids = sorted(w.pid for w in pool.workers)
        numbers = [M127, M127 + 2, M521, STRONG_PSEUDOPRIMES[0], randomPrime(300, 2)]
        results = yield defer.gatherResults([pool.prove(n, "a") for n in numbers])
        self.assertEqual(results, [True, False, True, False, True])
        self.assertEqual(sorted(w.pid for w in pool.workers), pids)
        self.assertEqual(pool.results["prime"], 3)
        self.assertEqual(pool.results["composite"], 2)
        self.assertEqual(pool.proofTimes.count, 5)

    @defer.inlineCallbacks
    def test_sameNumberJoins(self):
        pool = yield defer.ensureDeferred(self.readyPool())
        first = pool.prove(SLOW_PRIME, "a")
        yield defer.ensureDeferred(waitFor(lambda: pool.running, "the proof to start"))
        second = pool.prove(SLOW_PRIME, "b")
        self.assertEqual(len(pool.queue), 0)
        results = yield defer.gatherResults([first, second])
        self.assertEqual(results, [True, True])
        self.assertEqual(pool.results["prime"], 1)  # one proof for both

    @defer.inlineCallbacks
    def test_timeoutInterruptsAndKeepsTheWorker(self):
        pool = yield defer.ensureDeferred(self.readyPool(timeout=0.3))
        pid = pool.workers[0].pid
        failure = yield self.assertFailure(pool.prove(SLOW_PRIME, "a"), ProofUnavailable)
        self.assertEqual(failure.reason, "timeout")
        self.assertEqual(pool.results["timeout"], 1)
        self.assertIs((yield pool.prove(M127, "a")), True)
        self.assertEqual([w.pid for w in pool.workers], [pid])  # PARI is interrupted

    @defer.inlineCallbacks
    def test_killedWorkerRetriesOnce(self):
        pool = yield defer.ensureDeferred(self.readyPool())
        d = pool.prove(SLOW_PRIME, "a")
        yield defer.ensureDeferred(waitFor(lambda: pool.running, "the proof to start"))
        os.kill(pool.workers[0].pid, signal.SIGKILL)
        yield defer.ensureDeferred(waitFor(lambda: pool.restarts, "the worker to be replaced"))
        yield defer.ensureDeferred(waitFor(lambda: pool.running, "the retry to start"))
        self.assertIs((yield d), True)
        self.assertEqual(pool.results["crashed"], 0)

    @defer.inlineCallbacks
    def test_killedTwiceAnswersE(self):
        pool = yield defer.ensureDeferred(self.readyPool())
        d = pool.prove(SLOW_PRIME, "a")
        for restarts in (1, 2):
            yield defer.ensureDeferred(waitFor(lambda: pool.running, "the proof to start"))
            os.kill(pool.workers[0].pid, signal.SIGKILL)
            yield defer.ensureDeferred(waitFor(lambda: pool.restarts == restarts, "a restart"))
        failure = yield self.assertFailure(d, ProofUnavailable)
        self.assertEqual(failure.reason, "crashed")
        self.assertIs((yield pool.prove(M521, "a")), True)  # the new worker works

    @defer.inlineCallbacks
    def test_cancelQueuedNeverRuns(self):
        pool = yield defer.ensureDeferred(self.readyPool(timeout=5))
        running = pool.prove(SLOW_PRIME, "a")
        queued = pool.prove(M521, "b")
        self.assertEqual(len(pool.queue), 1)
        queued.cancel()
        self.failureResultOf(queued, defer.CancelledError)
        self.assertEqual(len(pool.queue), 0)
        self.assertEqual(pool.results["cancelled"], 1)
        running.cancel()
        self.failureResultOf(running, defer.CancelledError)
        self.assertEqual(pool.results["cancelled"], 2)
        # The worker was interrupted, not replaced, and proves again.
        self.assertIs((yield pool.prove(M127, "a")), True)
        self.assertEqual(pool.restarts, 0)
        self.assertEqual(pool.proofTimes.count, 1)

    @defer.inlineCallbacks
    def test_oneOfTwoAskersCancels(self):
        pool = yield defer.ensureDeferred(self.readyPool())
        first, second = pool.prove(M521, "a"), pool.prove(M521, "b")
        first.cancel()
        self.failureResultOf(first, defer.CancelledError)
        self.assertIs((yield second), True)

    @defer.inlineCallbacks
    def test_queueBounds(self):
        pool = yield defer.ensureDeferred(self.readyPool(maxQueued=3, perSource=2))
        asks = [pool.prove(SLOW_PRIME, "a")]  # runs
        asks += [pool.prove(M127 + 2 * i, "a") for i in (1, 2)]  # queued: a's quota
        busy = pool.prove(M521, "a")
        failure = self.failureResultOf(busy, ProofUnavailable)
        self.assertEqual(failure.value.reason, "busy")
        asks.append(pool.prove(M521, "b"))  # another source still has room
        asks.append(pool.prove(M127, "a"))
        self.assertEqual(self.failureResultOf(asks[-1], ProofUnavailable).value.reason, "busy")
        self.assertEqual(pool.results["busy"], 2)
        self.assertFalse(pool.hasRoom("a"))
        self.assertFalse(pool.hasRoom("c"))  # the queue is full
        admitted = pool.prove(M127 + 8, "a", admitted=True)  # asked hasRoom earlier
        self.assertEqual(len(pool.queue), 4)
        room = []
        pool.notifyRoom(lambda: room.append(pool.hasRoom("c")))
        asks[1].cancel()  # a's first waiting proof leaves the queue
        self.failureResultOf(asks[1])
        yield task.deferLater(reactor, 0, lambda: None)
        self.assertEqual(room, [False])  # still 3 waiting: full
        for d in asks[2:-1] + [asks[0], admitted]:
            d.cancel()
            self.failureResultOf(d)

    @defer.inlineCallbacks
    def test_stopFailsWaitingAndKillsRunning(self):
        pool = self.makePool()
        yield pool.start()
        running = pool.prove(SLOW_PRIME, "a")
        waiting = pool.prove(M521, "b")
        yield defer.ensureDeferred(waitFor(lambda: pool.running, "the proof to start"))
        yield defer.ensureDeferred(self.stopPool(pool))
        for d in (running, waiting):
            self.assertEqual(self.failureResultOf(d, ProofUnavailable).value.reason, "stopped")
        self.assertEqual(self.failureResultOf(pool.prove(M127), ProofUnavailable)
                         .value.reason, "stopped")

    @defer.inlineCallbacks
    def test_workerThatCannotStart(self):
        """
        A worker that dies before it is ready is replaced after a back-off;
        after three such deaths, asks fail at once instead of waiting.
        """
        pool = self.makePool(argv=[os.sys.executable, "-c", "raise SystemExit(3)"])
        pool.start()
        yield defer.ensureDeferred(waitFor(lambda: pool._failedStarts >= 3, "three failures",
                                           timeout=20))
        self.assertEqual(self.failureResultOf(pool.prove(M127), ProofUnavailable)
                         .value.reason, "crashed")


class FlintPoolTests(PoolMixin, unittest.TestCase):
    engine = "flint"

    @defer.inlineCallbacks
    def test_arnault(self):
        """
        FLINT 3's fmpz_is_prime does not return on Arnault's 397-digit
        strong pseudoprime; the prover's BPSW test first answers F at once
        (without it this proof runs out of time).
        """
        pool = yield defer.ensureDeferred(self.readyPool(timeout=10))
        self.assertIs((yield pool.prove(STRONG_PSEUDOPRIMES[2], "a")), False)

    @defer.inlineCallbacks
    def test_timeoutReplacesTheWorker(self):
        """
        FLINT cannot be interrupted: its worker is killed and replaced.
        """
        pool = yield defer.ensureDeferred(self.readyPool(timeout=0.3))
        self.assertTrue(pool.proverName.startswith("FLINT"))
        pid = pool.workers[0].pid
        failure = yield self.assertFailure(pool.prove(SLOW_PRIME, "a"), ProofUnavailable)
        self.assertEqual(failure.reason, "timeout")
        self.assertIs((yield pool.prove(M127, "a")), True)
        self.assertNotEqual([w.pid for w in pool.workers], [pid])
        self.assertFalse(alive(pid))
