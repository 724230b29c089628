"""
A pool of prover processes (L{primed.prover}) driven from the reactor.

Why processes: a proof holds the GIL for seconds (PARI and FLINT both), and
cypari2 works only in a process's main thread.  Why C{spawnProcess}: each
worker is a fresh interpreter, exec'ed, never a fork of the threaded daemon
carrying its locks along; the reactor reads the workers' pipes and reaps
them (C{SIGCHLD}) like any other descriptor, no thread waits on them.

What the pool promises:

  - Workers start once and are reused; one that dies (killed, crashed) is
    replaced, after a back-off when it dies before it is ready (a missing
    library must not make the daemon spin).
  - A proof runs at most C{timeout} seconds: then its askers get
    L{ProofUnavailable} (C{"timeout"}) and the worker is interrupted
    (C{SIGINT}, PARI) or killed and replaced (FLINT).
  - A number asked again while it waits or runs joins that proof.
  - Waiting proofs are bounded: C{maxQueued} in all and C{perSource} per
    source, served round-robin by source
    (L{primed.sourcequeue.SourceQueue}); beyond either bound the ask fails
    at once with L{ProofUnavailable} (C{"busy"}).
  - Cancelling an ask's L{Deferred} (the client is gone) drops its proof
    when nobody else waits for it: unstarted, it never runs; running, the
    worker is interrupted.
  - A worker that dies mid-proof costs a retry on another worker, once;
    a second death answers L{ProofUnavailable} (C{"crashed"}).  Never a
    wrong answer, never a request left hanging.
  - L{stop} leaves no process behind: the workers' input is closed (they
    exit) and busy ones are killed.
"""

import os
import sys
from typing import Any, Optional

from twisted.internet import defer, error
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

import primed
from primed.counters import CheckTimes
from primed.sourcequeue import SourceQueue

#: Upper bounds, in seconds, of the proof duration histogram.
PROOF_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

DEFAULT_PROVE_TIMEOUT = 60.0
DEFAULT_PROVE_MAX_QUEUED = 32
#: Seconds an interrupted worker may take to answer before it is killed.
INTERRUPT_GRACE = 2.0
#: Longest wait before replacing a worker that died before it was ready.
MAX_RESPAWN_DELAY = 30.0

#: Every result a proof can have, as counted in C{primed_proofs_total}.
RESULTS = ("prime", "composite", "too_big", "timeout", "crashed", "undecided", "busy",
           "cancelled", "stopped")


class ProofUnavailable(Exception):
    """
    No proof could be given: primed answers E.

    @ivar reason: one of L{RESULTS}.
    """

    def __init__(self, reason: str):
        Exception.__init__(self, reason)
        self.reason = reason


class _Job:
    __slots__ = ("number", "source", "waiters", "retried", "worker", "started", "timer",
                 "ident")

    def __init__(self, number: int, source):
        self.number = number
        self.source = source
        self.waiters: list[defer.Deferred] = []
        self.retried = False
        self.worker: Optional[_Worker] = None
        self.started = 0.0
        self.timer = None
        self.ident = 0


class _Worker(ProcessProtocol):
    """
    One prover process: its pipe, its state, at most one job at a time.
    """

    #: Set by spawnProcess (makeConnection) before the pool uses the worker.
    transport: IProcessTransport

    def __init__(self, pool: "ProofPool"):
        self.pool = pool
        self.ready = False
        self.job: Optional[_Job] = None
        self.jobIdent = 0  # the job the worker is computing (even abandoned)
        self.startedIdent = 0  # the last job it said it started
        self.interrupted = False
        self.killer = None
        self.ended = False
        self.stopped: Optional[defer.Deferred] = None
        self._out = b""
        self._err = b""

    @property
    def pid(self) -> Optional[int]:
        return getattr(self.transport, "pid", None)

    def outReceived(self, data: bytes) -> None:
        self._out += data
        while b"\n" in self._out:
            line, self._out = self._out.split(b"\n", 1)
            self.pool._lineReceived(self, line.decode("ascii", "replace"))

    def errReceived(self, data: bytes) -> None:
        self._err += data
        while b"\n" in self._err:
            line, self._err = self._err.split(b"\n", 1)
            self.pool._log.warn("Prover {pid}: {line}", pid=self.pid,
                                line=line.decode("utf-8", "replace"))
        if len(self._err) > 4096:
            self._err = b""

    def send(self, job: _Job) -> None:
        self.jobIdent = job.ident
        self.transport.write(b"%d %x\n" % (job.ident, job.number))

    def signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)
        except (error.ProcessExitedAlready, OSError):
            pass

    def interrupt(self, interruptible: bool) -> None:
        """
        Abandon the proof in progress: C{SIGINT} where the engine takes it,
        C{SIGKILL} otherwise or if the worker does not answer in time.  The
        worker takes no other job until it has answered (or died).
        """
        job, self.job = self.job, None
        if job is not None:
            job.worker = None
        if self.interrupted:
            return
        self.interrupted = True
        if not interruptible:
            self.signal("KILL")
            return
        if self.startedIdent == self.jobIdent:
            self.sendInterrupt()
        # else: sent when the worker says it started (started).

    def started(self, ident: int) -> None:
        self.startedIdent = ident
        if self.interrupted and ident == self.jobIdent and self.killer is None:
            self.sendInterrupt()

    def sendInterrupt(self) -> None:
        self.signal("INT")
        self.killer = self.pool.reactor.callLater(INTERRUPT_GRACE, self.signal, "KILL")

    def processEnded(self, reason) -> None:
        self.ended = True
        if self.killer is not None and self.killer.active():
            self.killer.cancel()
        self.pool._workerEnded(self, reason)


class ProofPool:
    """
    Prove primality in C{size} worker processes.

    @ivar proverName: the engine the workers run (from their first
        C{ready} line), or L{None} before one is ready.
    @ivar results: how many proofs ended each way (L{RESULTS}).
    @ivar proofTimes: how long each proof ran, in wall-clock seconds.
    @ivar restarts: workers replaced since start.
    """

    _log = Logger()

    def __init__(self, reactor, size: int, timeout: float = DEFAULT_PROVE_TIMEOUT,
                 maxQueued: int = DEFAULT_PROVE_MAX_QUEUED, perSource: Optional[int] = None,
                 engine: str = "auto", argv: Optional[list[str]] = None):
        """
        @param perSource: proofs one source may have waiting; by default a
            quarter of C{maxQueued} (at least 1).
        @param engine: C{"auto"}, C{"pari"} or C{"flint"} (L{primed.prover.loadProver}).
        @param argv: the command starting a worker, for tests; by default
            this interpreter running L{primed.prover}.
        """
        self.reactor = reactor
        self.size = size
        self.timeout = timeout
        self.maxQueued = maxQueued
        self.perSource = max(1, maxQueued // 4) if perSource is None else perSource
        self.engine = engine
        self.argv = argv or [sys.executable, "-m", "primed.prover", engine]
        self.proverName: Optional[str] = None
        self.interruptible = True
        self.workers: list[_Worker] = []
        self.queue = SourceQueue()
        self.results = dict.fromkeys(RESULTS, 0)
        self.proofTimes = CheckTimes(PROOF_SECONDS_BUCKETS)
        self.restarts = 0
        self._jobs: dict[int, _Job] = {}
        self._nextIdent = 0
        self._failedStarts = 0
        self._respawns: list = []
        self._stopping = False
        self._stopped: Optional[defer.Deferred] = None
        self._readyWaiters: list[defer.Deferred] = []
        self._roomWaiters: list = []

    # Life.

    def start(self) -> defer.Deferred:
        """
        Start the workers.

        @return: a L{Deferred} firing with L{proverName} once one worker is
            ready.
        """
        for _ in range(self.size):
            self._spawn()
        return self.whenReady()

    def whenReady(self) -> defer.Deferred:
        if self.proverName is not None:
            return defer.succeed(self.proverName)
        d: defer.Deferred[Any] = defer.Deferred()
        self._readyWaiters.append(d)
        return d

    def _spawn(self) -> None:
        if self._stopping:
            return
        worker = _Worker(self)
        self.workers.append(worker)
        env = dict(os.environ)
        # The workers import this very primed, wherever it was imported from.
        here = os.path.dirname(os.path.dirname(os.path.abspath(primed.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
        try:
            self.reactor.spawnProcess(worker, self.argv[0], self.argv, env=env,
                                      childFDs={0: "w", 1: "r", 2: "r"})
        except OSError as e:
            self.workers.remove(worker)
            self._log.error("Cannot start a prover: {error}", error=e)
            self._respawnLater()

    def _respawnLater(self) -> None:
        delay = min(MAX_RESPAWN_DELAY, 0.5 * 2 ** self._failedStarts)
        self._failedStarts += 1
        if self._failedStarts >= 3 and not any(w.ready for w in self.workers):
            # Nobody can prove: do not leave askers waiting for a worker.
            for job in self.queue.clear():
                self._fail(job, "crashed")
        call = self.reactor.callLater(delay, self._respawned)
        self._respawns.append(call)

    def _respawned(self) -> None:
        self._respawns = [c for c in self._respawns if c.active()]
        self._spawn()

    def stop(self) -> defer.Deferred:
        """
        Answer nothing more: waiting asks fail (C{"stopped"}), idle workers
        exit, busy ones are killed (nobody is left to read their answer).

        @return: a L{Deferred} firing once every worker has exited.
        """
        if self._stopped is not None:
            return self._stopped
        self._stopping = True
        for call in self._respawns:
            if call.active():
                call.cancel()
        for job in self.queue.clear():
            self._fail(job, "stopped")
        ended = []
        for worker in list(self.workers):
            if worker.job is not None:
                self._fail(worker.job, "stopped")
            d: defer.Deferred[Any] = defer.Deferred()
            worker.stopped = d
            ended.append(d)
            worker.transport.closeStdin()
            if worker.jobIdent and (worker.job is not None or worker.interrupted):
                worker.signal("KILL")
            elif worker.killer is None:
                worker.killer = self.reactor.callLater(INTERRUPT_GRACE, worker.signal, "KILL")
        self._stopped = defer.DeferredList(ended).addCallback(lambda _: None)
        return self._stopped

    # Asking.

    @property
    def running(self) -> int:
        """Proofs running now."""
        return sum(1 for w in self.workers if w.job is not None)

    def hasRoom(self, source) -> bool:
        """
        Whether a new proof for C{source} would be queued now rather than
        refused: the queue and C{source}'s quota are not full, or a worker
        is idle.
        """
        return (len(self.queue) < self.maxQueued
                and self.queue.countFor(source) < self.perSource) or (
            self._idleWorker() is not None)

    def notifyRoom(self, callback) -> None:
        """
        Call C{callback} once, when a waiting proof leaves the queue (it
        starts, or is cancelled): room, perhaps, for the caller's source,
        which asks L{hasRoom} again.
        """
        self._roomWaiters.append(callback)

    def cancelRoomWaiter(self, callback) -> None:
        if callback in self._roomWaiters:
            self._roomWaiters.remove(callback)

    def _roomSoon(self) -> None:
        """
        Tell the room waiters, in a later reactor turn: the caller may be
        in the middle of a waiter's own processing.
        """
        if self._roomWaiters:
            self.reactor.callLater(0, self._roomMade)

    def _roomMade(self) -> None:
        waiters, self._roomWaiters = self._roomWaiters, []
        for callback in waiters:
            callback()

    def prove(self, number: int, source=None, admitted: bool = False) -> defer.Deferred:
        """
        Prove C{number} (a probable prime, usually) prime or composite.

        @param source: who asks (an address): the unit of fairness.
        @param admitted: the caller asked L{hasRoom} when the request came
            (before its thread-pool check): queue it even if the queue
            filled since, by at most the checks in flight.
        @return: a L{Deferred} firing with C{True} (proven prime) or
            C{False} (composite), or failing with L{ProofUnavailable};
            cancel it when nobody needs the answer any more.
        """
        job = self._jobs.get(number)
        if job is None:
            if self._stopping:
                return self._refuse("stopped")
            if self._failedStarts >= 3 and not any(w.ready for w in self.workers):
                return self._refuse("crashed")
            if not admitted and not self.hasRoom(source):
                return self._refuse("busy")
            job = self._jobs[number] = _Job(number, source)
            self._nextIdent += 1
            job.ident = self._nextIdent
            self.queue.push(source, job)
        d: defer.Deferred[Any] = defer.Deferred(lambda d: self._cancelled(job, d))
        job.waiters.append(d)
        self._dispatch()
        return d

    def _refuse(self, reason: str) -> defer.Deferred:
        self.results[reason] += 1
        return defer.fail(ProofUnavailable(reason))

    def _idleWorker(self) -> Optional[_Worker]:
        for worker in self.workers:
            if worker.ready and worker.job is None and not worker.interrupted:
                return worker
        return None

    def _dispatch(self) -> None:
        while len(self.queue):
            worker = self._idleWorker()
            if worker is None:
                return
            job = self.queue.pop()
            self._roomSoon()
            job.worker = worker
            job.started = self.reactor.seconds()
            job.timer = self.reactor.callLater(self.timeout, self._timedOut, job)
            worker.job = job
            worker.send(job)

    def _cancelled(self, job: _Job, d: defer.Deferred) -> None:
        if d in job.waiters:
            job.waiters.remove(d)
        if job.waiters:
            return
        self.results["cancelled"] += 1
        self._forget(job)
        if job.worker is None:
            self.queue.remove(job.source, job)
            self._roomSoon()
        else:
            job.worker.interrupt(self.interruptible)

    def _forget(self, job: _Job) -> None:
        if self._jobs.get(job.number) is job:
            del self._jobs[job.number]
        if job.timer is not None and job.timer.active():
            job.timer.cancel()

    def _fail(self, job: _Job, reason: str) -> None:
        self._forget(job)
        waiters, job.waiters = job.waiters, []
        if waiters:
            self.results[reason] += 1
        for d in waiters:
            d.errback(ProofUnavailable(reason))

    def _timedOut(self, job: _Job) -> None:
        self._log.warn(
            "A proof of a {digits}-digit number ran out of time ({timeout}s): answered E",
            digits=len(str(job.number)), timeout=self.timeout,
        )
        self.proofTimes.observe(self.reactor.seconds() - job.started)
        worker = job.worker
        # The timer runs only while a worker has the job: every place that
        # takes the job off its worker cancels the timer too.
        assert worker is not None
        self._fail(job, "timeout")
        worker.interrupt(self.interruptible)

    # From the workers.

    def _lineReceived(self, worker: _Worker, line: str) -> None:
        if not worker.ready:
            if not line.startswith("ready "):
                self._log.warn("Prover {pid} said {line!r}", pid=worker.pid, line=line)
                return
            worker.ready = True
            self._failedStarts = 0
            if self.proverName is None:
                self.proverName = line[len("ready "):]
                self.interruptible = not self.proverName.startswith("FLINT")
                waiters, self._readyWaiters = self._readyWaiters, []
                for d in waiters:
                    d.callback(self.proverName)
            self._dispatch()
            return
        ident, verdict, _ = (line.split(" ") + ["", ""])[:3]
        if verdict == "S":
            if ident.isdigit():
                worker.started(int(ident))
            return
        job = worker.job
        if job is None or str(job.ident) != ident:
            # The answer to a proof abandoned (timed out, cancelled): the
            # worker is free again once that answer comes.
            if ident == str(worker.jobIdent):
                self._workerFree(worker)
            return
        worker.job = None
        self._workerFree(worker)
        if verdict == "C" and not job.retried:
            # Interrupted, though nobody asked: a late interruption meant
            # for the worker's previous proof.  Run it again.
            job.retried = True
            job.worker = None
            if job.timer is not None and job.timer.active():
                job.timer.cancel()
            self.queue.push(job.source, job, first=True)
            self._dispatch()
            return
        self.proofTimes.observe(self.reactor.seconds() - job.started)
        self._forget(job)
        waiters, job.waiters = job.waiters, []
        if verdict in ("T", "F"):
            self.results["prime" if verdict == "T" else "composite"] += 1
            for d in waiters:
                d.callback(verdict == "T")
        else:
            reason = "undecided" if verdict == "X" else "cancelled"
            self.results[reason] += 1
            for d in waiters:
                d.errback(ProofUnavailable(reason))
        self._dispatch()

    def _workerFree(self, worker: _Worker) -> None:
        worker.jobIdent = 0
        worker.job = None
        if worker.interrupted:
            worker.interrupted = False
            if worker.killer is not None and worker.killer.active():
                worker.killer.cancel()
            worker.killer = None
        self._dispatch()

    def _workerEnded(self, worker: _Worker, reason) -> None:
        self.workers.remove(worker)
        if worker.stopped is not None:
            worker.stopped.callback(None)
        job = worker.job
        if job is not None and job.waiters and not self._stopping:
            job.worker = None
            if job.retried:
                self._log.error("A prover died twice proving a {digits}-digit number: answered E",
                                digits=len(str(job.number)))
                self._fail(job, "crashed")
            else:
                job.retried = True
                if job.timer is not None and job.timer.active():
                    job.timer.cancel()
                self.queue.push(job.source, job, first=True)
        if self._stopping:
            return
        self.restarts += 1
        if worker.ready:
            if not worker.interrupted:
                self._log.warn("Prover {pid} ended ({reason}); starting another",
                               pid=worker.pid, reason=reason.value)
            self._spawn()
        else:
            self._log.error("A prover ended before it was ready ({reason})",
                            reason=reason.value)
            self._respawnLater()
        self._dispatch()
