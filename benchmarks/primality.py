"""
How fast is primed's primality engine next to the libraries it could have
been?  Not a test: nothing here is asserted.

    python benchmarks/primality.py            # the comparison table (~2 min)
    python benchmarks/primality.py --quick    # fewer rounds, smaller sizes
    python benchmarks/primality.py --inline   # evidence for INLINE_MAX_BITS
    python benchmarks/primality.py --gil      # reactor stall during a check
    python benchmarks/primality.py --prove    # proofs through primed's pool (~10 min)

Times are CPU seconds of the calling thread (C{time.thread_time}) per
call, the best of several rounds in which every contender runs in turn on
the same inputs, so that a machine shared with other work still gives a
fair side-by-side comparison.  Half of the inputs at each size are prime,
half are random odd composites; each half is timed on its own and the
mixed figure is their mean.
"""

import argparse
import hashlib
import os
import platform
import random
import sys
import threading
import time

import flint
import gmpy2
import sympy

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from primed import primality  # noqa: E402


def seed_isprime(n):
    """
    The seed chapter's trial division, verbatim apart from this docstring.
    """
    # negative numbers, 0 and 1 are not primes
    if n < 2:
        return False
    # 2 is the only even prime number
    if n == 2:
        return True
    # all other even numbers are not primes
    if not n & 1:
        return False
    # range starts with 3 and only needs to go up the squareroot
    # of n for all odd numbers
    for x in range(3, int(n**0.5) + 1, 2):
        if n % x == 0:
            return False
    return True


def _fixed_start(bits, tag):
    """
    A reproducible pseudo-random odd number of exactly C{bits} bits.
    """
    raw = hashlib.shake_256(b"primed-benchmark-%d-%d" % (bits, tag)).digest((bits + 7) // 8)
    x = int.from_bytes(raw, "big") >> (8 * len(raw) - bits)
    return x | (1 << (bits - 1)) | 1


# Finding a 10 000-bit prime takes GMP half a minute or more, so these
# were found once: the first prime at or above _fixed_start(10000, tag) is
# _fixed_start(10000, tag) + offset.
_PRIME_OFFSETS_10000 = {0: 2896, 1: 6708}


def inputs(bits, count, rng):
    """
    C{count} primes and C{count} odd composites of exactly C{bits} bits.
    """
    if bits == 10000:
        primes = [_fixed_start(10000, t) + o for t, o in sorted(_PRIME_OFFSETS_10000.items())]
        primes = primes[:count]
    else:
        primes = []
        while len(primes) < count:
            p = int(gmpy2.next_prime(rng.getrandbits(bits - 1) | (1 << (bits - 1))))
            if p.bit_length() == bits:
                primes.append(p)
    composites = []
    while len(composites) < len(primes):
        c = rng.getrandbits(bits - 1) | (1 << (bits - 1)) | 1
        if not gmpy2.is_prime(c):
            composites.append(c)
    return primes, composites


def contenders(bits):
    """
    Name and function of everything to compare at this size.
    """
    fmpz = flint.fmpz
    found = [("seed isprime", seed_isprime)] if bits <= 50 else []
    found += [
        ("sympy.isprime", sympy.isprime),
        ("gmpy2.is_prime", gmpy2.is_prime),
        ("gmpy2.is_bpsw_prp", gmpy2.is_bpsw_prp),
        ("flint.is_probable_prime", lambda n: fmpz(n).is_probable_prime()),
    ]
    if bits <= 64:
        found.append(("flint.is_prime", lambda n: fmpz(n).is_prime()))
    found.append(("primed.is_prime", primality.is_prime))
    found.append(("primed.releasing_gil", primality.is_prime_releasing_gil))
    return found


def best_per_call(contestants, numbers, rounds, warm_up):
    """
    The best per-call thread CPU time of each contender over C{rounds}
    interleaved rounds.  A contender whose round takes over 3 s (sympy at
    10 000 bits) runs only once.
    """
    best = {name: float("inf") for name, _ in contestants}
    for i in range(rounds):
        for name, f in contestants:
            if i and best[name] * len(numbers) > 3:
                continue
            # Warm the caches after the previous contender: without this a
            # sub-microsecond function run right after a slow one is
            # measured up to 5x slower.
            for n in numbers if best[name] < 1e-4 else [warm_up]:
                f(n)
            start = time.thread_time()
            for n in numbers:
                f(n)
            best[name] = min(best[name], (time.thread_time() - start) / len(numbers))
    return best


def fmt(seconds):
    if seconds == float("inf"):
        return "-"
    for unit, scale in (("s", 1), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


# bits: (primes and composites each, rounds)
PLAN = {
    32: (20, 5),
    50: (2, 3),
    64: (100, 15),
    128: (100, 15),
    1024: (10, 5),
    3322: (3, 3),
    10000: (2, 2),
}
QUICK_PLAN = {32: (10, 3), 64: (50, 5), 128: (50, 5), 1024: (5, 3), 3322: (2, 2)}


def compare(plan):
    rng = random.Random(2024)
    rows = []
    for bits, (count, rounds) in plan.items():
        primes, composites = inputs(bits, count, rng)
        contestants = contenders(bits)
        for name, f in contestants:  # every contender must agree
            got = [bool(f(n)) for n in primes + composites]
            if got != [True] * len(primes) + [False] * len(composites):
                raise SystemExit(f"{name} is wrong at {bits} bits")
        prime_only = best_per_call(contestants, primes, rounds, composites[0])
        composite_only = best_per_call(contestants, composites, rounds, composites[0])
        mixed = {name: (prime_only[name] + composite_only[name]) / 2 for name in prime_only}
        rows.append((bits, mixed, prime_only))
        print(f"  measured {bits} bits", file=sys.stderr, flush=True)

    for title, column in (("half prime, half composite", 1), ("primes only", 2)):
        print(f"\nPer-call time, {title} (best of interleaved rounds, thread CPU time)\n")
        names = []
        for row in rows:
            names += [n for n in row[column] if n not in names]
        width = max(map(len, names)) + 2
        print("bits".rjust(6) + "".join(n.rjust(width) for n in names) + "   is_prime/best  releasing/best")
        for row in rows:
            bits, times = row[0], row[column]
            libraries = {n: t for n, t in times.items() if not n.startswith(("primed", "seed"))}
            fastest = min(libraries, key=libraries.get)
            line = f"{bits:6d}" + "".join(fmt(times.get(n, float("inf"))).rjust(width) for n in names)
            line += f"   {times['primed.is_prime'] / libraries[fastest]:5.2f} ({fastest})"
            line += f"  {times['primed.releasing_gil'] / libraries[fastest]:5.2f}"
            print(line)


def inline_cost():
    """
    The worst-case (prime) cost of is_prime per bit length, next to the
    cost of one trip through Twisted's thread pool.
    """
    from twisted.internet import reactor, threads

    rng = random.Random(1)
    print("\nWorst case (primes) of primed.is_prime by bit length\n")
    for bits in (64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512, 607):
        primes, _ = inputs(bits, 40, rng)
        t = best_per_call([("p", primality.is_prime)], primes, 7, primes[0])["p"]
        print(f"  {bits:4d} bits  {fmt(t)}")

    def hop_cost():
        samples = []
        reactor_cpu = time.thread_time()

        def one(_=None):
            if len(samples) == 2000:
                cpu = (time.thread_time() - reactor_cpu) / len(samples)
                samples.sort()
                print("\nOne deferToThread round trip (trivial work):")
                print(f"  wall time median {fmt(samples[len(samples) // 2])}, "
                      f"90th percentile {fmt(samples[len(samples) * 9 // 10])}; "
                      f"reactor thread CPU {fmt(cpu)} per trip")
                reactor.stop()
                return
            start = time.perf_counter()
            d = threads.deferToThread(int)
            d.addCallback(lambda _: samples.append(time.perf_counter() - start))
            d.addCallback(one)

        one()

    reactor.callWhenRunning(hop_cost)
    reactor.run()


def gil_stall():
    """
    The longest a ticking thread waits while a 10 000-bit check runs.
    """
    p = _fixed_start(10000, 0) + _PRIME_OFFSETS_10000[0]
    print("\nA thread sleeping 1 ms in a loop, while the main thread checks a"
          " 10 000-bit prime:\n")
    for name, f in (
        ("idle (no check)", lambda n: time.sleep(0.5)),
        ("primed.is_prime", primality.is_prime),
        ("primed.is_prime_releasing_gil", primality.is_prime_releasing_gil),
    ):
        for _ in range(2):
            gaps = []
            running = threading.Event()
            running.set()

            def tick():
                last = time.perf_counter()
                while running.is_set():
                    time.sleep(0.001)
                    now = time.perf_counter()
                    gaps.append(now - last)
                    last = now

            ticker = threading.Thread(target=tick)
            ticker.start()
            time.sleep(0.05)
            start = time.perf_counter()
            f(p)
            took = time.perf_counter() - start
            running.clear()
            ticker.join()
            gaps.sort()
            print(f"  {name:32s} check {took:6.3f} s   max gap {fmt(gaps[-1]):>9s}"
                  f"   99th pct {fmt(gaps[len(gaps) * 99 // 100]):>9s}   ticks {len(gaps)}")


def machine():
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print("command:  python " + " ".join(sys.argv))
    print(f"machine:  {model}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"python:   {platform.python_implementation()} {platform.python_version()}")
    print(f"versions: gmpy2 {gmpy2.version()} ({gmpy2.mp_version()}), python-flint "
          f"{flint.__version__} (FLINT {flint.__FLINT_VERSION__}), sympy {sympy.__version__}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, no 10 000 bits")
    parser.add_argument("--inline", action="store_true", help="measure for INLINE_MAX_BITS")
    parser.add_argument("--gil", action="store_true", help="measure the GIL stall")
    parser.add_argument("--prove", action="store_true",
                        help="proofs through primed's process pool, PARI and FLINT")
    parser.add_argument("--prove-sizes", default="256,512,768,1024,1536,2048",
                        help="with --prove: bit sizes (256,512,768,1024,1536,2048)")
    parser.add_argument("--prove-count", type=int, default=3,
                        help="with --prove: primes per size (3)")
    options = parser.parse_args()
    machine()
    if options.prove:
        from _prove import run

        run([int(bits) for bits in options.prove_sizes.split(",")], options.prove_count)
    elif options.inline:
        inline_cost()
    elif options.gil:
        gil_stall()
    else:
        compare(QUICK_PLAN if options.quick else PLAN)


if __name__ == "__main__":
    main()
