"""
C{--prove}: the checker that makes every T a proof.

Below L{DETERMINISTIC_LIMIT} primed's answers are proofs already, and an F
is always one (a failed test shows a number composite).  What is left is a
T above the limit, which means "passed BPSW": with C{--prove} such a
number goes on to the proof pool (L{primed.proofpool}) and is answered T
only once proven prime.

The routing keeps everything else as it is without C{--prove}:

  - numbers below 2**81 are checked inline, as always (and proven);
  - from 2**81 to L{INLINE_MAX_BITS} bits the inline BPSW test runs here,
    in the reactor thread as before: a composite is answered at once, a
    probable prime goes to the proof pool;
  - bigger numbers take the thread pool first, as before (the bound of
    C{--max-queued} included), and only probable primes go on.

A probable prime longer than C{--prove-max-digits} digits, or one the pool
cannot prove (too busy, out of time, crashed twice), fails with
L{ProofUnavailable}, which the protocols answer E.
"""


from typing import Optional

from twisted.internet import defer

from primed.checker import DEFAULT_MAX_QUEUED, PrimeChecker
from primed.primality import DETERMINISTIC_LIMIT, INLINE_MAX_BITS, is_prime
from primed.proofpool import ProofUnavailable

__all__ = ["DEFAULT_PROVE_MAX_DIGITS", "ProvingChecker", "ProofUnavailable"]

#: Longest probable prime proved, in digits.  About 2000 bits: a proof of
#: a random prime that size takes 8-9 s here with PARI's ECPP (2 shared
#: cores, C{benchmarks/primality.py --prove}).
DEFAULT_PROVE_MAX_DIGITS = 600

#: Bit length up to which every answer is already a proof: what the
#: protocols may keep answering inline.
PROVEN_INLINE_MAX_BITS = DETERMINISTIC_LIMIT.bit_length() - 1


class ProvingChecker(PrimeChecker):
    """
    A L{PrimeChecker} whose T answers are proofs.

    The thread pool's fair queue (L{primed.fairqueue}) is used as without
    C{--prove}; the proof pool keeps its own queue with the same rules
    (round-robin by source, a quota per source, a lost connection's work
    dropped: L{cancel}).

    @ivar proofPool: the L{primed.proofpool.ProofPool} proofs run in.
    """

    def __init__(self, reactor, threadpool, proofPool,
                 maxDigits: int = DEFAULT_PROVE_MAX_DIGITS,
                 maxQueued: int = DEFAULT_MAX_QUEUED,
                 maxQueuedPerSource: int = 0):
        """
        @param maxDigits: C{--prove-max-digits}.
        """
        PrimeChecker.__init__(self, reactor, threadpool, maxQueued=maxQueued,
                              inlineMaxBits=PROVEN_INLINE_MAX_BITS,
                              maxQueuedPerSource=maxQueuedPerSource)
        self.proofPool = proofPool
        self.proveMaxDigits = maxDigits
        self._tooBig = 10**maxDigits
        self._asks: dict[object, set[defer.Deferred]] = {}
        # PrimeChecker's are the fair queue's own: proofs need room too.
        self.cancel = self._cancel
        self.hasRoom = self._hasRoom
        self.notifyRoom = self._notifyRoom
        self.cancelRoomWaiter = self._cancelRoomWaiter

    def _hasRoom(self, source) -> bool:
        """
        Whether C{source} may submit a big number now: room in the thread
        pool's fair queue and in the proof pool's, for its source.  A TCP
        connection without room stops reading until L{notifyRoom}'s call; a
        UDP request is dropped, as without C{--prove}.
        """
        return self.queue.hasRoom(source) and self.proofPool.hasRoom(source)

    def _notifyRoom(self, source, callback) -> None:
        if self.proofPool.hasRoom(source):
            self.queue.notifyRoom(source, callback)
        else:
            self.proofPool.notifyRoom(callback)

    def _cancelRoomWaiter(self, callback) -> None:
        self.queue.cancelRoomWaiter(callback)
        self.proofPool.cancelRoomWaiter(callback)

    def submit(self, number: int, source=None, connection=None) -> defer.Deferred:
        """
        Check C{number}, proving it prime when BPSW says it is.

        @param source: who asks (L{primed.sources.sourceKey}): proofs are
            shared fairly between sources.
        @param connection: the TCP protocol asking (or, for UDP, the
            source): L{cancel} cancels its checks and proofs.
        @return: a L{Deferred} firing with C{True} or C{False}, or failing
            with L{ProofUnavailable} (or, its connection lost, with
            L{primed.checker.CheckCancelled} or L{defer.CancelledError}).
        """
        if number.bit_length() <= INLINE_MAX_BITS:
            # Cheap enough for the reactor thread, as without --prove.
            if number < DETERMINISTIC_LIMIT:
                return defer.succeed(is_prime(number))
            if not is_prime(number):
                return defer.succeed(False)
            return self._track(self._prove(number, source), connection)
        outer = _Ask()
        check = PrimeChecker.submit(self, number, source, connection)
        check.addCallback(self._checked, number, source, outer).addErrback(outer.fail)
        return self._track(outer, connection)

    def _checked(self, probablyPrime: bool, number: int, source, outer: "_Ask"):
        if outer.called:
            return  # cancelled while the thread pool checked it
        if not probablyPrime:  # (above INLINE_MAX_BITS: far above the limit)
            outer.callback(False)
            return
        outer.proof = self._prove(number, source)
        outer.proof.chainDeferred(outer)

    def _prove(self, number: int, source) -> defer.Deferred:
        if number >= self._tooBig:
            self.proofPool.results["too_big"] += 1
            return defer.fail(ProofUnavailable("too_big"))
        return self.proofPool.prove(number, source, admitted=True)

    def _track(self, d: defer.Deferred, connection) -> defer.Deferred:
        if connection is None or d.called:
            return d
        asks = self._asks.setdefault(connection, set())
        asks.add(d)

        def untrack(result):
            asks.discard(d)
            if not asks and self._asks.get(connection) is asks:
                del self._asks[connection]
            return result

        d.addBoth(untrack)
        return d

    def _cancel(self, connection) -> None:
        """
        C{connection} is gone: its checks waiting for a thread are dropped
        (the fair queue's C{cancel}), and its proofs, waiting or running,
        cancelled (another asker of the same number keeps its own).
        """
        self.queue.cancel(connection)
        for d in list(self._asks.pop(connection, ())):
            d.cancel()


class _Ask(defer.Deferred):
    """
    One ask's answer, through the thread pool and then the proof pool.
    Cancelling it cancels its proof; a check still in the thread pool
    finishes there (a thread cannot be stopped) and goes no further.
    """

    proof: Optional[defer.Deferred] = None

    def __init__(self):
        defer.Deferred.__init__(self, self._cancelProof)

    def _cancelProof(self, _):
        if self.proof is not None:
            self.proof.cancel()

    def fail(self, failure) -> None:
        if not self.called:
            self.errback(failure)


def proofMetrics(pool):
    """
    The proof pool's metrics, for L{primed.metrics}: what became of every
    proof asked for, how long they ran, the workers.
    """
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.utils import floatToGoString

    proofs = CounterMetricFamily(
        "primed_proofs",
        "Proofs asked for, by result: prime, composite (T and F answers), and E answers: "
        "too_big (over --prove-max-digits), timeout (--prove-timeout), crashed (a worker "
        "died twice), undecided (the prover could not tell), busy (queue full), "
        "stopped; cancelled: the client went away.",
        labels=["result"],
    )
    for result, count in pool.results.items():
        proofs.add_metric([result], count)
    yield proofs
    buckets, total = pool.proofTimes.cumulative()
    yield HistogramMetricFamily(
        "primed_proof_seconds",
        "Time one proof ran in a worker process (waiting excluded), timed-out ones included.",
        buckets=[(floatToGoString(le), count) for le, count in buckets],
        sum_value=total,
    )
    yield GaugeMetricFamily("primed_prove_workers", "Prover processes (--prove-workers).",
                            value=pool.size)
    yield GaugeMetricFamily("primed_prove_running", "Proofs running now.", value=pool.running)
    yield GaugeMetricFamily("primed_prove_queued", "Proofs waiting for a worker now.",
                            value=len(pool.queue))
    yield CounterMetricFamily("primed_prove_worker_restarts",
                              "Prover processes replaced (killed, crashed, timed out).",
                              value=pool.restarts)
