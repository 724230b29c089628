"""
C{benchmarks/primality.py --prove}: proofs through primed's own path, the
process pool of L{primed.proofpool} (a worker process per proof, started
once), with PARI and with FLINT side by side on the same primes.

Prints:

  - bits x seconds: the wall-clock time one proof takes through the pool
    (one worker, nothing else queued) and the CPU time the worker reports,
    per engine, the median of the primes of each size;
  - the pool's overhead: a round trip for a proof that costs nothing (a
    27-digit Mersenne prime), against the same proof called in-process;
  - throughput with 1 and 2 workers: proofs of 1024-bit primes per second.
"""

import random
import statistics
import time

import gmpy2
from twisted.internet import defer, task

from primed import prover
from primed.proofpool import ProofPool


def primes(bits: int, count: int, seed: int = 24):
    rng = random.Random(seed * 100003 + bits)
    found = []
    while len(found) < count:
        p = int(gmpy2.next_prime(rng.getrandbits(bits) | (1 << (bits - 1))))
        if p.bit_length() == bits:
            found.append(p)
    return found


async def startPool(reactor, engine: str, size: int) -> ProofPool:
    pool = ProofPool(reactor, size, timeout=600, maxQueued=1000, perSource=1000, engine=engine)
    recordCpu(pool)
    await pool.start()
    while not all(w.ready for w in pool.workers):
        await task.deferLater(reactor, 0.01, lambda: None)
    return pool


async def timed(reactor, pool, number):
    start = time.perf_counter()
    before = pool.proofTimes.sum
    result = await pool.prove(number)
    assert result is True, number
    return time.perf_counter() - start, pool.proofTimes.sum - before


async def table(reactor, sizes, count):
    pools = {engine: await startPool(reactor, engine, 1) for engine in ("pari", "flint")}
    names = {engine: pool.proverName for engine, pool in pools.items()}
    print(f"\nOne proof through the pool (1 worker), median of {count} random primes per size;")
    print("wall = ask to answer in the daemon's process, cpu = the worker's CPU time")
    print(f"  PARI:  {names['pari']}, ECPP forced from {prover.ECPP_MIN_BITS} bits")
    print(f"  FLINT: {names['flint']}")
    print(f"{'bits':>6} {'digits':>6} | {'PARI wall':>10} {'PARI cpu':>9} | "
          f"{'FLINT wall':>10} {'FLINT cpu':>9} | FLINT/PARI")
    for bits in sizes:
        walls = {"pari": [], "flint": []}
        cpus = {"pari": [], "flint": []}
        for p in primes(bits, count):
            for engine, pool in pools.items():  # in turn, same primes
                wall, _ = await timed(reactor, pool, p)
                walls[engine].append(wall)
                cpus[engine].append(await workerCpu(pool, p))
        med = {k: statistics.median(v) for k, v in walls.items()}
        cpu = {k: statistics.median(v) for k, v in cpus.items()}
        print(f"{bits:>6} {len(str(1 << bits)):>6} | {med['pari']:>9.3f}s {cpu['pari']:>8.3f}s | "
              f"{med['flint']:>9.3f}s {cpu['flint']:>8.3f}s | {med['flint'] / med['pari']:>6.2f}x",
              flush=True)
    for pool in pools.values():
        await pool.stop()


_cpu = {}


async def workerCpu(pool, number):
    return _cpu.pop((id(pool), number), float("nan"))


def recordCpu(pool):
    """
    Keep the CPU seconds each worker reports (the third field of its
    answer), by number, for L{workerCpu}.
    """
    original = pool._lineReceived

    def lineReceived(worker, line):
        parts = line.split(" ")
        job = worker.job
        if job is not None and len(parts) == 3 and parts[1] in "TF":
            _cpu[(id(pool), job.number)] = float(parts[2])
        original(worker, line)

    pool._lineReceived = lineReceived


async def overhead(reactor, rounds=2000):
    number = 2**89 - 1
    pool = await startPool(reactor, "pari", 1)
    await pool.prove(number)
    start = time.perf_counter()
    for _ in range(rounds):
        await pool.prove(number)
    through = (time.perf_counter() - start) / rounds
    await pool.stop()
    direct = prover.loadProver("pari")
    start = time.perf_counter()
    for _ in range(rounds):
        direct.prove(number)
    inProcess = (time.perf_counter() - start) / rounds
    print(f"\nPool overhead: a proof of 2**89-1 (27 digits), {rounds} in a row")
    print(f"  through the pool {through * 1e3:.3f} ms, in-process {inProcess * 1e3:.3f} ms: "
          f"round trip {(through - inProcess) * 1e3:.3f} ms")


async def throughput(reactor, bits=1024, count=8):
    numbers = primes(bits, count, seed=99)
    print(f"\nThroughput: {count} different {bits}-bit primes asked at once, PARI")
    base = None
    for size in (1, 2):
        pool = await startPool(reactor, "pari", size)
        start = time.perf_counter()
        await defer.gatherResults([pool.prove(n, f"s{i}") for i, n in enumerate(numbers)])
        took = time.perf_counter() - start
        await pool.stop()
        rate = count / took
        base = base or rate
        print(f"  {size} worker(s): {took:6.2f} s, {rate:5.2f} proofs/s ({rate / base:.2f}x)",
              flush=True)


def run(sizes, count):
    async def main(reactor):
        await overhead(reactor)
        await throughput(reactor)
        await table(reactor, sizes, count)

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
