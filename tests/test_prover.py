"""
Tests for L{primed.prover}: both engines prove the same answers, never a
wrong one, for primes and for the composites weak tests pass; the worker's
line protocol.
"""

import io
import subprocess
import sys

from twisted.trial import unittest

from hardnumbers import (
    BIG_CARMICHAEL,
    CARMICHAEL,
    MERSENNE_COMPOSITE_EXPONENTS,
    MERSENNE_EXPONENTS,
    STRONG_PSEUDOPRIMES,
    randomPrime,
    semiprime,
)
from primed import prover
from primed.primality import DETERMINISTIC_LIMIT


class EngineMixin:
    """
    Run in the test's own (main) thread: cypari2 may run nowhere else.
    """

    def test_mersennePrimes(self):
        for exponent in MERSENNE_EXPONENTS:
            if exponent <= 607:  # 183 digits; bigger ones end to end
                self.assertIs(self.prover.prove(2**exponent - 1), True, exponent)

    def test_mersenneComposites(self):
        for exponent in MERSENNE_COMPOSITE_EXPONENTS:
            self.assertIs(self.prover.prove(2**exponent - 1), False, exponent)

    def test_randomPrimes(self):
        for bits in (82, 100, 128, 200, 256, 384, 512, 640):
            for seed in range(2 if bits < 512 else 1):
                p = randomPrime(bits, seed)
                self.assertIs(self.prover.prove(p), True, (bits, seed))
                self.assertIs(self.prover.prove(p + 2 if p % 3 == 2 else p * 3), False)

    def test_carmichael(self):
        for n in CARMICHAEL + (BIG_CARMICHAEL,):
            self.assertIs(self.prover.prove(n), False, n)

    def test_strongPseudoprimes(self):
        for n in STRONG_PSEUDOPRIMES:
            self.assertIs(self.prover.prove(n), False, n)

    def test_semiprimes(self):
        for bits in (128, 512, 1024, 2048):
            self.assertIs(self.prover.prove(semiprime(bits, 1)), False, bits)

    def test_aroundTheLimits(self):
        """
        Around the proven-by-bases limit, and where PARI switches to ECPP.
        """
        for n in range(DETERMINISTIC_LIMIT - 60, DETERMINISTIC_LIMIT + 60):
            self.assertIs(self.prover.prove(n), _isPrime(n), n)
        for bits in (prover.ECPP_MIN_BITS - 1, prover.ECPP_MIN_BITS):
            p = randomPrime(bits, 5)
            for n in (p - 2, p, p + 2):
                self.assertIs(self.prover.prove(n), _isPrime(n), (bits, n - p))


def _isPrime(n: int) -> bool:
    """
    BPSW and trial division, for numbers whose answer is not at stake.
    """
    import gmpy2

    return bool(gmpy2.is_prime(n, 30))


class PariTests(EngineMixin, unittest.TestCase):
    def setUp(self):
        self.prover = prover.loadProver("pari")

    def test_name(self):
        self.assertRegex(self.prover.name, r"^PARI 2\.\d+\.\d+ \(cypari2 2\.\d+\.\d+\)$")
        self.assertTrue(self.prover.interruptible)

    def test_autoPrefersPari(self):
        self.assertEqual(prover.loadProver("auto").name, self.prover.name)


class FlintTests(EngineMixin, unittest.TestCase):
    def setUp(self):
        self.prover = prover.loadProver("flint")

    def test_name(self):
        self.assertRegex(self.prover.name, r"^FLINT \(python-flint \d")
        self.assertFalse(self.prover.interruptible)

    def test_undecided(self):
        """
        FLINT's -1 (could not decide) is an error, never an answer.
        """
        import flint

        self.addCleanup(setattr, flint, "fmpz", flint.fmpz)

        class Fake:
            def __init__(self, n):
                pass

            def is_prime(self):
                return -1

        flint.fmpz = Fake
        undecided = prover.flintProver()
        self.assertRaises(ValueError, undecided.prove, 2**127 - 1)


class ServeTests(unittest.TestCase):
    """
    The worker's loop, in-process: requests in, verdicts out, in order.
    """

    def serve(self, requests: bytes, prove) -> list:
        out = io.BytesIO()
        prover.serve(prover.Prover("Fake 1", prove, True), io.BytesIO(requests), out,
                     clock=iter(range(100)).__next__)
        return out.getvalue().decode().splitlines()

    def test_verdicts(self):
        lines = self.serve(b"1 61\n2 63\n", lambda n: n == 97)
        self.assertEqual(lines, ["ready Fake 1", "1 S", "1 T 1.000000", "2 S", "2 F 1.000000"])

    def test_interruptedAndFailed(self):
        def prove(n):
            if n == 1:
                raise KeyboardInterrupt()
            raise ArithmeticError("PARI stack overflow")

        err = io.StringIO()
        self.patch(sys, "stderr", err)
        lines = self.serve(b"7 1\n8 2\n", prove)
        self.assertEqual(lines, ["ready Fake 1", "7 S", "7 C 1.000000", "8 S", "8 X 1.000000"])
        self.assertIn("8: ArithmeticError: PARI stack overflow", err.getvalue())


class WorkerProcessTests(unittest.TestCase):
    """
    C{python -m primed.prover} as the pool runs it.
    """

    def test_worker(self):
        worker = subprocess.run(
            [sys.executable, "-m", "primed.prover", "flint"],
            input=b"1 %x\n2 %x\n" % (2**127 - 1, 2**127 + 1),
            capture_output=True, timeout=60, check=True,
        )
        lines = worker.stdout.decode().splitlines()
        self.assertTrue(lines[0].startswith("ready FLINT"), lines)
        self.assertEqual([line.split()[:2] for line in lines[1:]],
                         [["1", "S"], ["1", "T"], ["2", "S"], ["2", "F"]])
