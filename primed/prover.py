"""
Primality B{proofs}, and the worker process that runs them for
L{primed.proofpool}.

Two engines, the best one installed is used:

  - PARI/GP through cypari2 (C{pip install 'primed[prove]'}): APR-CL for
    small numbers and ECPP from L{ECPP_MIN_BITS} bits, where forcing it
    (C{isprime(n, 3)}) is 2-3 times faster than PARI's own choice of
    APR-CL (measured: 1.17 s against 0.42 s at 768 bits).
  - FLINT's C{fmpz_is_prime} (python-flint, always installed): slower from
    about 1000 bits (C{benchmarks/primality.py --prove}) but still a proof.

Both hold the GIL for the whole proof and cypari2 must run in a process's
main thread, so proofs never run in primed's own process: each worker is a
fresh interpreter (C{python -m primed.prover}), started by exec, never a
fork of the threaded daemon.  It speaks lines on its standard input and
output:

  - worker: C{ready NAME} once its engine is loaded;
  - parent: C{ID HEX}, one number to prove, in hexadecimal (linear to
    convert, where decimal is quadratic);
  - worker: C{ID S} as it starts (only from then on may the parent
    interrupt it: a signal sent earlier could land before the proof);
  - worker: C{ID VERDICT SECONDS}, VERDICT one of C{T} (proven prime),
    C{F} (composite), C{C} (interrupted by C{SIGINT}) or C{X} (the engine
    failed or could not decide), SECONDS the CPU time it took.

The parent bounds a proof's time by interrupting it: C{SIGINT}, which
cysignals turns into C{KeyboardInterrupt} inside PARI, or C{SIGKILL} where
the engine cannot be interrupted (FLINT).  The end of the standard input
ends the worker, and so does the death of its parent (C{PR_SET_PDEATHSIG}),
so a stopped or killed daemon leaves no worker behind.

This module imports nothing from Twisted: the worker stays small.
"""

import signal
import sys
import time
from typing import Callable, Optional

__all__ = ["ECPP_MIN_BITS", "Prover", "flintProver", "pariProver", "loadProver", "main"]

#: From this bit length up PARI is asked for ECPP (C{isprime(n, 3)})
#: rather than its default (APR-CL below about 800 bits, ECPP above).
#: Measured with PARI 2.15.4 (cypari2 2.2.0), CPU seconds per random
#: prime, default / ECPP: 512 bits 0.16 / 0.20, 640 bits 0.43 / 0.33,
#: 768 bits 1.17 / 0.42, 1024 bits 1.06 / 1.08.
ECPP_MIN_BITS = 600

#: PARI's stack: 256 MiB at first, up to 4 GiB on demand.  PARI's default
#: (8 MB) overflows in ECPP from about 200 bits; the maximum is only
#: address space until a proof needs it.
PARI_STACK = 256 << 20
PARI_STACK_MAX = 4 << 30


class Prover:
    """
    One proving engine.

    @ivar name: what it is, for logs and C{primed_build_info}.
    @ivar interruptible: whether C{SIGINT} interrupts a proof in progress
        (else only C{SIGKILL} stops one).
    @ivar prove: C{int -> bool}, C{True} exactly when the number is proven
        prime; raises when the engine cannot decide.
    """

    def __init__(self, name: str, prove: Callable[[int], bool], interruptible: bool):
        self.name = name
        self.prove = prove
        self.interruptible = interruptible


def pariProver() -> Prover:
    """
    PARI through cypari2, set up as proofs need it: a bigger stack and one
    PARI thread (the pool's processes are the parallelism).

    @raise ImportError: cypari2 is not installed.
    """
    from importlib.metadata import version

    import cypari2

    pari = cypari2.Pari()
    pari.allocatemem(PARI_STACK, PARI_STACK_MAX, silent=True)
    pari.default("nbthreads", 1)
    isprime = pari.isprime

    def prove(n: int) -> bool:
        return bool(isprime(n, 3 if n.bit_length() >= ECPP_MIN_BITS else 0))

    major, minor, patch = (int(part) for part in pari.version()[:3])
    name = f"PARI {major}.{minor}.{patch} (cypari2 {version('cypari2')})"
    return Prover(name, prove, interruptible=True)


def flintProver() -> Prover:
    """
    FLINT's C{fmpz_is_prime}, which proves (Pocklington, APR-CL) and says
    when it could not (-1, raised as L{ValueError}).
    """
    import flint

    from primed.primality import is_prime as bpsw

    fmpz = flint.fmpz

    def prove(n: int) -> bool:
        # BPSW first, and not only for speed: FLINT 3's fmpz_is_prime does
        # not return (minutes, at least) on Arnault's 397-digit strong
        # pseudoprime to every prime base below 307, which BPSW rejects in
        # microseconds.
        if not bpsw(n):
            return False
        result = fmpz(n).is_prime()
        if result < 0:
            raise ValueError("FLINT could not decide")
        return result == 1

    return Prover(f"FLINT (python-flint {flint.__version__})", prove, interruptible=False)


def loadProver(engine: str = "auto") -> Prover:
    """
    The engine named (C{"pari"}, C{"flint"}), or the best one installed
    (C{"auto"}: PARI, else FLINT).
    """
    if engine == "flint":
        return flintProver()
    if engine == "pari":
        return pariProver()
    try:
        return pariProver()
    except ImportError:
        return flintProver()


def _dieWithParent() -> None:
    """
    Ask Linux to kill this process when its parent dies, even mid-proof
    (a proof does not read its standard input's end).  Elsewhere a no-op.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def serve(prover: Prover, stdin, stdout, clock=time.process_time) -> None:
    """
    Answer requests from C{stdin} (binary, line by line) on C{stdout}
    until C{stdin} ends.

    An interruption (C{KeyboardInterrupt}, from C{SIGINT}) may land
    anywhere, also just before or after the proof it was meant for: one
    during a proof answers C{C}; one between proofs is ignored, and a
    request read but not yet proved is answered C{C} too.  Every request
    read gets exactly one answer (or, at worst, the same answer twice,
    which the parent ignores).
    """
    _write(stdout, f"ready {prover.name}\n")
    reply = None
    while True:
        jobId = None
        try:
            if reply is not None:
                _write(stdout, reply)
                reply = None
            line = stdin.readline()
            if not line:
                return
            jobId, _, number = line.decode("ascii").partition(" ")
            _write(stdout, f"{jobId} S\n")
            start = clock()
            try:
                verdict = "T" if prover.prove(int(number, 16)) else "F"
            except KeyboardInterrupt:
                verdict = "C"
            except Exception as e:  # the engine's own errors: never a wrong answer
                sys.stderr.write(f"primed prover: {jobId}: {type(e).__name__}: {e}\n")
                sys.stderr.flush()
                verdict = "X"
            reply = f"{jobId} {verdict} {clock() - start:.6f}\n"
        except KeyboardInterrupt:
            if reply is None and jobId is not None:
                reply = f"{jobId} C 0\n"


def _write(stdout, text: str) -> None:
    stdout.write(text.encode())
    stdout.flush()


def main(argv: Optional[list] = None) -> None:
    """
    The worker: C{python -m primed.prover [auto|pari|flint]}.
    """
    argv = sys.argv[1:] if argv is None else argv
    _dieWithParent()
    # SIGINT interrupts a proof (cysignals raises KeyboardInterrupt inside
    # PARI); the parent's terminal's Ctrl-C must not reach us otherwise.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # A stop is the parent's to manage (it drains, then closes our input):
    # systemd's SIGTERM to the whole unit must not cut proofs it waits for.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    prover = loadProver(argv[0] if argv else "auto")
    serve(prover, sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
