"""
Is this integer prime?  The engine behind every verdict primed gives.

Guarantees, for any Python C{int} C{n} (negative numbers, 0 and 1 are not
prime):

  - C{n < 3,317,044,064,679,887,385,961,981} (L{DETERMINISTIC_LIMIT}): the
    answer is B{proven}.  Below 2**64 FLINT's C{n_is_prime} is used (BPSW,
    checked against the Feitsma-Galway list of every base-2 pseudoprime
    below 2**64); above, strong Miller-Rabin with the first 13 prime bases
    2..41, proven correct below this limit by Sorenson and Webster (2016),
    done by FLINT's C{fmpz_is_prime} up to 179817 * 2**64 and by gmpy2 for
    the sliver above.  No randomness anywhere.
  - above: B{BPSW}, a strong base-2 Miller-Rabin test plus a strong Lucas
    test with Selfridge's parameters (method A: the first D in 5, -7, 9,
    -11, ... with Jacobi(D/n) = -1, P = 1, Q = (1 - D)/4).  No composite is
    known to pass it; a prime always does.

Speed comes from the libraries, not from us: FLINT up to 81 bits, GMP
(through gmpy2) above.  The
only arithmetic written here is the Lucas ladder of
L{is_prime_releasing_gil}, and every operation in it is one GMP call on
C{mpz} values.

The daemon asks L{INLINE_MAX_BITS} whether a number is cheap enough to
test in the reactor thread; bigger ones go to a thread pool and use
L{is_prime_releasing_gil}, which leaves the interpreter to other threads
for the long GMP calls.

This module imports nothing from Twisted, on purpose: it is pure
computation and is tested and benchmarked on its own.
"""

import operator

import gmpy2
from flint import fmpz as _fmpz
from gmpy2 import mpz

__all__ = [
    "DETERMINISTIC_LIMIT",
    "INLINE_MAX_BITS",
    "is_prime",
    "is_prime_releasing_gil",
]

#: The smallest strong pseudoprime to all of the bases 2, 3, ..., 41
#: (Sorenson & Webster, "Strong pseudoprimes to twelve prime bases",
#: Math. Comp. 86 (2017)).  Every answer below it is proven.
DETERMINISTIC_LIMIT = 3317044064679887385961981

#: Bit length up to which L{is_prime} is cheap enough to call inline in
#: the reactor thread.  Measured on the development machine (2 shared AMD
#: EPYC cores) with::
#:
#:     python benchmarks/primality.py --inline
#:
#: one C{deferToThread} round trip costs the reactor thread 38 us of CPU
#: (70 us wall); the worst case, a prime, costs 30 us at 192 bits but 48
#: us at 193-256 bits (one more 64-bit limb), 207 us at 512.
INLINE_MAX_BITS = 192

#: From this bit length up L{is_prime_releasing_gil} runs its own
#: GIL-releasing test.  Below it the plain test is used: GMP's whole
#: check of a 1279-bit prime holds the GIL for about 2 ms here, under the
#: interpreter's 5 ms switch interval, and is 1.2-1.4x faster than the
#: releasing one at these sizes (the gap closes by 3000 bits).
RELEASE_MIN_BITS = 1280

# FLINT's fmpz_is_prime proves primality with the 13 bases below this
# bound (it checks n >> 64 < 179817); a little below DETERMINISTIC_LIMIT.
_FLINT_13_BASES_LIMIT = 179817 << 64

_TWO_64 = 1 << 64
_FMPZ_TWO_64 = _fmpz(_TWO_64)
_FMPZ_ZERO = _fmpz(0)

_FIRST_13_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
_PRODUCT_OF_FIRST_13_PRIMES = gmpy2.primorial(41)

# The small-prime sieve of the GIL-releasing path: one gcd with the
# product of all primes below 2**16 (a 94 000-bit number) removes about
# 90% of odd composites before the first modular exponentiation.
_SIEVE_PRODUCT = gmpy2.primorial(1 << 16)


def _gmp_has_bpsw() -> bool:
    """
    GMP 6.2 made C{mpz_probab_prime_p} run BPSW (strong base 2 plus strong
    Lucas) before its C{reps - 24} random rounds; older GMP only ran
    C{reps} Miller-Rabin rounds with random bases.
    """
    digits = gmpy2.mp_version().split()[-1].split(".")
    return tuple(int(d) for d in digits[:2]) >= (6, 2)


_GMP_HAS_BPSW = _gmp_has_bpsw()


def is_prime(n: int) -> bool:
    """
    Whether C{n} is prime: proven below L{DETERMINISTIC_LIMIT}, BPSW above.

    This is the fastest form and the reference; it holds the GIL for the
    whole check, which is fine inline up to L{INLINE_MAX_BITS} bits.
    """
    if n < _FLINT_13_BASES_LIMIT:
        try:
            # An int added to an fmpz is converted without calling the fmpz
            # type (a Cython class: a call through tp_call with an argument
            # tuple), and makes one fmpz instead of two: 0.1-0.2 us less.
            if n >> 63 == 1:
                # python-flint converts ints in [2**63, 2**64) on a slow
                # path (0.42 us, against 0.1 us below 2**63): build it from
                # a small one instead, same value, half the cost.
                return (_FMPZ_TWO_64 + (n - _TWO_64)).is_prime() == 1
            return (_FMPZ_ZERO + n).is_prime() == 1
        except TypeError:
            # Another integer type, such as gmpy2.mpz: FLINT wants int.
            return is_prime(operator.index(n))
    if n < DETERMINISTIC_LIMIT:
        return _miller_rabin_first_13_bases(mpz(n))
    if _GMP_HAS_BPSW:
        # GMP's own trial division, then strong base-2 Miller-Rabin and a
        # strong Lucas test (Selfridge method A); with reps=1 the random
        # Miller-Rabin rounds (reps - 24) are skipped.
        return gmpy2.is_prime(n, 1)
    return gmpy2.is_strong_bpsw_prp(mpz(n))


def is_prime_releasing_gil(n: int) -> bool:
    """
    Same answers as L{is_prime}, for thread-pool workers: from
    L{RELEASE_MIN_BITS} bits up, other threads (the reactor) keep running.

    The long operations, the modular exponentiation of the Miller-Rabin
    test and every multiplication and reduction of the Lucas ladder, run
    in GMP with the GIL released (a gmpy2 context made with
    C{allow_release_gil=True}, a new one per call since one context may
    not be entered by two threads at once).  Still holding the GIL: the
    Python bytecode between those calls (the interpreter hands the GIL
    over at its switch interval), the conversion of C{n} to C{mpz}, and
    the Jacobi symbols, square test and modular inverse that pick the
    Lucas parameters (a few microseconds together at 10 000 bits).
    Below L{RELEASE_MIN_BITS} this is L{is_prime}, which holds the GIL
    for at most about 2 ms.
    """
    if n < DETERMINISTIC_LIMIT or n.bit_length() < RELEASE_MIN_BITS:
        return is_prime(n)
    return _bpsw_releasing_gil(mpz(n))


def _bpsw_releasing_gil(n: mpz) -> bool:
    """
    BPSW for n > 2**16 (smaller primes would fall to the sieve), with
    every long GMP operation releasing the GIL.
    """
    with gmpy2.context(allow_release_gil=True):
        return (
            gmpy2.gcd(n, _SIEVE_PRODUCT) == 1
            and _strong_probable_prime_base_2(n)
            and _strong_lucas_probable_prime(n)
        )


def _miller_rabin_first_13_bases(n: mpz) -> bool:
    """
    The deterministic test for 41 < n < L{DETERMINISTIC_LIMIT}.
    """
    if gmpy2.gcd(n, _PRODUCT_OF_FIRST_13_PRIMES) != 1:
        return False
    return all(gmpy2.is_strong_prp(n, base) for base in _FIRST_13_PRIMES)


def _strong_probable_prime_base_2(n: mpz) -> bool:
    """
    Strong (Miller-Rabin) probable-prime test to base 2, for odd n > 2.

    Written out rather than calling C{gmpy2.is_strong_prp} so that its
    exponentiation is C{gmpy2.powmod}, which releases the GIL.
    """
    n_minus_1 = n - 1
    s = gmpy2.bit_scan1(n_minus_1)
    x = gmpy2.powmod(2, n_minus_1 >> s, n)
    if x == 1 or x == n_minus_1:
        return True
    for _ in range(s - 1):
        x = x * x % n
        if x == n_minus_1:
            return True
    return False


def _selfridge_d(n: mpz):
    """
    Selfridge's method A: the first D in 5, -7, 9, -11, 13, ... with
    Jacobi(D/n) = -1, or L{None} if the search shows n composite (it
    shares a factor with some D, or it is a perfect square, for which no
    such D exists).
    """
    d = 5
    while True:
        jacobi = gmpy2.jacobi(d, n)
        if jacobi == -1:
            return d
        if jacobi == 0 and abs(d) != n:
            return None
        if d == 13 and gmpy2.is_square(n):
            return None
        d = -d - 2 if d > 0 else -d + 2


def _strong_lucas_probable_prime(n: mpz) -> bool:
    """
    The strong Lucas probable-prime test with Selfridge's parameters, for
    odd n > 2, computed with the cheap Q = 1 ladder (two modular
    products per bit instead of three).

    With P = 1 and Q = (1 - D)/4, let theta = alpha/beta, the quotient of
    the roots of x^2 - Px + Q in Z/n[x]/(x^2 - Px + Q).  Then theta is a
    root of x^2 - Ax + 1 with A = P^2/Q - 2, and for n + 1 = d * 2^s:

      - U_d = 0 exactly when theta^d = 1, and V_m = 0 exactly when
        theta^m = -1 (beta, alpha - beta are units since gcd(n, QD) = 1);
      - in terms of W_k = theta^k + theta^-k, the Lucas V sequence with
        parameters (A, 1): theta^d = +-1 iff D' U'_d = 2 W_{d+1} - A W_d
        = 0 and W_d = +-2, and theta^(d 2^r) = -1 iff W_(d 2^(r-1)) = 0.

    So the strong test (U_d = 0, or V_(d 2^r) = 0 for some 0 <= r < s) is
    exactly the extra strong test on (A, 1) checked below.  It is
    compared with gmpy2's C{is_strong_selfridge_prp} in the tests.
    """
    d = _selfridge_d(n)
    if d is None:
        return False
    q = (1 - d) // 4
    if gmpy2.gcd(n, q) != 1:
        return False
    a = (gmpy2.invert(q, n) - 2) % n
    s = gmpy2.bit_scan1(n + 1)
    w, w_next = _lucas_v_pair(a, (n + 1) >> s, n)
    if (w == 2 or w == n - 2) and (2 * w_next - a * w) % n == 0:
        return True
    for _ in range(s - 1):
        if w == 0:
            return True
        w = (w * w - 2) % n
    return False


def _lucas_v_pair(a: mpz, k: mpz, n: mpz):
    """
    (W_k, W_(k+1)) mod n for the Lucas sequence W_0 = 2, W_1 = a,
    W_(j+1) = a W_j - W_(j-1), by the Montgomery ladder on the bits of
    k >= 1: W_2j = W_j^2 - 2, W_(2j+1) = W_j W_(j+1) - a.
    """
    w, w_next = a, (a * a - 2) % n
    for i in range(k.bit_length() - 2, -1, -1):
        if k.bit_test(i):
            w = (w * w_next - a) % n
            w_next = (w_next * w_next - 2) % n
        else:
            w_next = (w * w_next - a) % n
            w = (w * w - 2) % n
    return w, w_next
