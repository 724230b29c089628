"""
Tests for L{primed.primality}: known values from the literature, every
branch boundary, and property tests against references written here with
nothing but Python's own integers.
"""

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import gmpy2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from primed import primality
from primed.primality import (
    DETERMINISTIC_LIMIT,
    INLINE_MAX_BITS,
    RELEASE_MIN_BITS,
    is_prime,
    is_prime_releasing_gil,
)

BOTH = pytest.mark.parametrize("check", [is_prime, is_prime_releasing_gil])


def _short(n):
    """
    A readable test id for a possibly huge parameter.
    """
    return str(n) if n < 10**30 else f"{n.bit_length()}-bit"

# -- independent references ---------------------------------------------------

_REFERENCE_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71)


def trial_division(n):
    """
    The slowest possible truth, for n below 10**7.
    """
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def strong_probable_prime(n, a):
    """
    Whether odd n > 2 is a strong probable prime to base a, with Python's
    C{pow}.
    """
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    x = pow(a, d, n)
    if x == 1 or x == n - 1:
        return True
    for _ in range(s - 1):
        x = x * x % n
        if x == n - 1:
            return True
    return False


def miller_rabin(n, bases=_REFERENCE_BASES):
    """
    Strong probable-prime test to each of C{bases}.

    With the first 12 prime bases it is proven correct below
    318,665,857,834,031,151,167,461, so it is exact for 64-bit numbers.
    """
    if n < 2:
        return False
    for p in _REFERENCE_BASES:
        if n % p == 0:
            return n == p
    return all(strong_probable_prime(n, a) for a in bases)


def reference_next_prime(n, bases=_REFERENCE_BASES):
    """
    The first n' >= n that L{miller_rabin} calls prime.
    """
    n |= 1
    while not miller_rabin(n, bases):
        n += 2
    return n


def test_references():
    """
    The references agree with each other, and know a pseudoprime when they
    see one.
    """
    assert [n for n in range(100) if trial_division(n)] == [
        n for n in range(100) if miller_rabin(n)
    ]
    assert all(trial_division(n) == miller_rabin(n) for n in range(10**4))
    # 3215031751 is a strong pseudoprime to 2, 3, 5 and 7 but not to 11.
    assert miller_rabin(3215031751, (2, 3, 5, 7))
    assert not miller_rabin(3215031751)
    assert not trial_division(3215031751 // 151 * 151)


# -- known values ---------------------------------------------------------------

CARMICHAEL = [561, 1105, 1729, 41041, 825265, 321197185, 5394826801, 232250619601, 9746347772161]

# The smallest strong pseudoprimes to all of the first 4, 5, 6, 8, 11, 12
# and 13 prime bases (Jaeschke; Zhang and Tang; Sorenson and Webster).
STRONG_PSEUDOPRIMES = [
    3215031751,
    2152302898747,
    3474749660383,
    341550071728321,
    3825123056546413051,
    318665857834031151167461,
    3317044064679887385961981,
]

MERSENNE_PRIME_EXPONENTS = [61, 89, 107, 127, 521, 607, 1279, 2203]
MERSENNE_COMPOSITE_EXPONENTS = [67, 101, 1277]

LARGE_PRIMES = [2**61 - 1, 2**64 - 59, 2**64 + 13, 2**89 - 1, 2**127 - 1, 2**521 - 1, 2**1279 - 1]

PRODUCTS_OF_TWO_LARGE_PRIMES = [
    (2**31 - 1) * (2**61 - 1),
    (2**61 - 1) * (2**64 - 59),
    (2**64 - 59) * (2**64 + 13),
    (2**89 - 1) * (2**107 - 1),
    (2**127 - 1) * (2**521 - 1),
    (2**521 - 1) * (2**607 - 1),
    (2**1279 - 1) * (2**2203 - 1),
    (2**64 - 59) ** 2,
    (2**1279 - 1) ** 2,
    # 1093 and 3511 are Wieferich primes: their squares are strong
    # pseudoprimes to base 2.
    1093**2,
    3511**2,
    1093**2 * (2**1279 - 1),
]

SEED_CHAPTER = [(4, False), (5, True), (-5, False), (17, True), (29, True), (2**50, False), (2**50 - 1, False)]


@BOTH
def test_below_two(check):
    for n in [0, 1, -1, -2, -3, -5, -7, -17, -(2**64 - 59), -(2**127 - 1), -(2**2203 - 1)]:
        assert check(n) is False, n


@BOTH
def test_small_primes(check):
    assert check(2) is True
    assert check(3) is True
    assert [n for n in range(60) if check(n)] == [
        2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59,
    ]


@BOTH
@pytest.mark.parametrize("n", CARMICHAEL, ids=_short)
def test_carmichael(check, n):
    assert check(n) is False


@BOTH
@pytest.mark.parametrize("n", STRONG_PSEUDOPRIMES, ids=_short)
def test_strong_pseudoprimes(check, n):
    assert check(n) is False


def test_strong_pseudoprimes_are_hard():
    """
    The values above really are strong pseudoprimes to the first 4..13
    prime bases, so the test above means something.
    """
    for n, k in zip(STRONG_PSEUDOPRIMES, [4, 5, 6, 8, 11, 12, 13]):
        assert miller_rabin(n, _REFERENCE_BASES[:k]), n


@BOTH
@pytest.mark.parametrize("p", MERSENNE_PRIME_EXPONENTS)
def test_mersenne_primes(check, p):
    assert check(2**p - 1) is True


@BOTH
@pytest.mark.parametrize("p", MERSENNE_COMPOSITE_EXPONENTS)
def test_mersenne_composites(check, p):
    assert check(2**p - 1) is False


@BOTH
@pytest.mark.parametrize("n", LARGE_PRIMES, ids=_short)
def test_large_primes(check, n):
    assert check(n) is True


@BOTH
@pytest.mark.parametrize("n", PRODUCTS_OF_TWO_LARGE_PRIMES, ids=_short)
def test_products_of_two_large_primes(check, n):
    assert check(n) is False


@BOTH
@pytest.mark.parametrize("n, expected", SEED_CHAPTER)
def test_seed_chapter(check, n, expected):
    assert check(n) is expected


@BOTH
def test_other_integer_types(check):
    """
    gmpy2's C{mpz} and C{bool} are integers too.
    """
    assert check(gmpy2.mpz(2**127 - 1)) is True
    assert check(gmpy2.mpz(3317044064679887385961981)) is False
    assert check(True) is False


# -- branch boundaries ------------------------------------------------------------


@BOTH
@pytest.mark.parametrize(
    "centre",
    [2**63, 2**64, primality._FLINT_13_BASES_LIMIT, DETERMINISTIC_LIMIT],
    ids=["2**63", "2**64", "FLINT 13 bases", "deterministic limit"],
)
def test_around_boundaries(check, centre):
    """
    Every odd number within 300 of a point where the method changes.
    """
    answers = {n: check(n) for n in range((centre - 300) | 1, centre + 300, 2)}
    assert answers == {n: miller_rabin(n) for n in answers}
    assert 5 < sum(answers.values()) < 50


def test_release_boundary():
    """
    Just below and from L{RELEASE_MIN_BITS} bits up, both forms agree.
    """
    rng = random.Random(RELEASE_MIN_BITS)
    for bits in (RELEASE_MIN_BITS - 1, RELEASE_MIN_BITS):
        p = q = r = 0
        while p.bit_length() != bits:
            p = int(gmpy2.next_prime(rng.getrandbits(bits)))
        while (q * r).bit_length() != bits:
            q = int(gmpy2.next_prime(rng.getrandbits(bits // 2)))
            r = int(gmpy2.next_prime(rng.getrandbits(bits - bits // 2)))
        for n in (p, q * r, p * 2 + 1):
            assert is_prime_releasing_gil(n) is is_prime(n) is miller_rabin(n, (2, 3, 5))
        assert is_prime_releasing_gil(p) is True
        assert is_prime_releasing_gil(q * r) is False


def test_gmp_without_bpsw(monkeypatch):
    """
    Before GMP 6.2 C{mpz_probab_prime_p} ran random Miller-Rabin rounds
    only; then gmpy2's own strong BPSW is used.
    """
    monkeypatch.setattr(primality, "_GMP_HAS_BPSW", False)
    monkeypatch.setattr(primality.gmpy2, "is_prime", None)
    for n in [DETERMINISTIC_LIMIT, 2**127 - 1, 2**521 - 1, (2**89 - 1) * (2**107 - 1), 3 * 2**200]:
        assert is_prime(n) == miller_rabin(n), n


def test_inline_threshold():
    """
    Numbers checked inline are also those the plain form handles alone, and
    both forms agree around the threshold.
    """
    assert 64 <= INLINE_MAX_BITS < RELEASE_MIN_BITS
    for centre in (2**INLINE_MAX_BITS, 2 ** (INLINE_MAX_BITS - 1)):
        for n in range(centre - 99, centre + 100, 2):
            assert is_prime(n) == is_prime_releasing_gil(n) == miller_rabin(n)


# -- the GIL-releasing BPSW, piece by piece -----------------------------------------

# Strong Lucas pseudoprimes with Selfridge's parameters (OEIS A217255).
STRONG_LUCAS_PSEUDOPRIMES = [5459, 5777, 10877, 16109, 18971, 22499, 24569, 25199, 40309, 58519]


def test_strong_lucas_pseudoprimes():
    """
    The strong Lucas test passes its known pseudoprimes (it is not stricter
    than the textbook test), and the base-2 test catches them.
    """
    for n in STRONG_LUCAS_PSEUDOPRIMES:
        assert not trial_division(n)
        assert primality._strong_lucas_probable_prime(gmpy2.mpz(n)), n
        assert not primality._strong_probable_prime_base_2(gmpy2.mpz(n)), n


def test_strong_lucas_matches_gmpy2():
    """
    The Q = 1 ladder gives exactly gmpy2's strong Selfridge test on every
    odd number below 60 000, ten composites included.
    """
    ours = [n for n in range(3, 60000, 2) if primality._strong_lucas_probable_prime(gmpy2.mpz(n))]
    theirs = [n for n in range(3, 60000, 2) if gmpy2.is_strong_selfridge_prp(n)]
    assert ours == theirs
    assert [n for n in ours if not trial_division(n)][:10] == STRONG_LUCAS_PSEUDOPRIMES


def test_strong_base_2_matches_reference():
    ours = [n for n in range(3, 100000, 2) if primality._strong_probable_prime_base_2(gmpy2.mpz(n))]
    assert ours == [n for n in range(3, 100000, 2) if strong_probable_prime(n, 2)]
    assert {2047, 3277, 4033, 4681, 8321} <= set(ours)


def test_concurrent_releasing_checks():
    """
    Several pool threads at once: each call makes its own gmpy2 context,
    and the answers do not mix.
    """
    rng = random.Random(7)
    primes = [int(gmpy2.next_prime(rng.getrandbits(1300) | (1 << 1299))) for _ in range(6)]
    numbers = primes + [p * q for p, q in zip(primes, primes[1:])] + [p + 2 for p in primes]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(is_prime_releasing_gil, numbers * 2))
    assert answers == [is_prime(n) for n in numbers * 2]
    assert answers[:6] == [True] * 6
    assert answers[6:11] == [False] * 5


# -- properties ----------------------------------------------------------------------

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.integers(min_value=-1000, max_value=10**7 - 1))
def test_small_property(n):
    expected = trial_division(n)
    assert is_prime(n) is expected
    assert is_prime_releasing_gil(n) is expected


@FAST
@given(st.integers(min_value=2**63, max_value=2**64 - 1))
def test_64_bit_property(x):
    """
    A random 64-bit number and the next prime after it; the reference is
    exact here.
    """
    for n in (x, reference_next_prime(x)):
        if n < 2**64:
            assert is_prime(n) is miller_rabin(n)
            assert is_prime_releasing_gil(n) is miller_rabin(n)


@FAST
@given(st.integers(min_value=2**127, max_value=2**128 - 1))
def test_128_bit_property(x):
    p = reference_next_prime(x)
    for n in (x, p, p + 2):
        expected = miller_rabin(n)
        assert is_prime(n) is expected
        assert is_prime_releasing_gil(n) is expected
        assert primality._bpsw_releasing_gil(gmpy2.mpz(n)) is expected


@settings(max_examples=5, deadline=None)
@given(st.integers(min_value=10**999, max_value=10**1000 - 1))
def test_1000_digit_property(x):
    """
    A random 1000-digit number, the prime after it (found by GMP, judged by
    the reference) and products with it.  Each reference check costs up
    to six 3322-bit exponentiations in pure Python, hence the few bases.
    """
    bases = (2, 3, 5, 7, 11, 13)
    p = int(gmpy2.next_prime(x))
    for n in (x, p, p + 2, p * 3):
        expected = miller_rabin(n, bases)
        assert is_prime(n) is expected
        assert is_prime_releasing_gil(n) is expected
        assert primality._bpsw_releasing_gil(gmpy2.mpz(n)) is expected
    assert is_prime(p) is True


def test_bpsw_needs_both_halves(monkeypatch):
    """
    The releasing BPSW consults both tests: with either one forced to pass,
    the other still rejects a composite with no factor below 2**16.
    """
    n = gmpy2.mpz((2**61 - 1) * (2**89 - 1))
    assert primality._bpsw_releasing_gil(n) is False
    for half in ("_strong_probable_prime_base_2", "_strong_lucas_probable_prime"):
        with monkeypatch.context() as patch:
            patch.setattr(primality, half, lambda n: True)
            assert primality._bpsw_releasing_gil(n) is False, half


def test_strong_lucas_on_squares():
    """
    No Selfridge parameter exists for a perfect square; the search must
    notice instead of running forever (hence the thread and timeout).
    """
    squares = [1093**2, 3511**2, (2**61 - 1) ** 2, (2**1279 - 1) ** 2]
    answers = []
    worker = threading.Thread(
        target=lambda: answers.extend(
            primality._strong_lucas_probable_prime(gmpy2.mpz(n)) for n in squares
        ),
        daemon=True,
    )
    worker.start()
    worker.join(30)
    assert answers == [False] * len(squares)
