"""
Primality testing for primed (first version; see issue 3).

Guarantees:
  - n < 3,317,044,064,679,887,385,961,981: deterministic, strong
    Miller-Rabin with the first 13 prime bases (Sorenson & Webster 2016).
  - above: BPSW (strong base-2 Miller-Rabin + strong Lucas, Selfridge
    method A parameters), which has no known counterexample.
"""

import gmpy2
from gmpy2 import mpz

__all__ = ["is_prime", "is_prime_releasing_gil", "INLINE_MAX_BITS"]

#: Below this every answer is proven (13-base Miller-Rabin).
DETERMINISTIC_LIMIT = 3317044064679887385961981

_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
_SMALL_PRIMES = _BASES
_PRIMORIAL = mpz(1)
for _p in _BASES:
    _PRIMORIAL *= _p

#: Provisional; to be measured.
INLINE_MAX_BITS = 512


def _small_verdict(n):
    if n < 2:
        return False
    if n in _SMALL_PRIMES:
        return True
    if gmpy2.gcd(n, _PRIMORIAL) != 1:
        return False
    return None


def is_prime(n: int) -> bool:
    v = _small_verdict(n)
    if v is not None:
        return v
    n = mpz(n)
    if n < DETERMINISTIC_LIMIT:
        return all(gmpy2.is_strong_prp(n, b) for b in _BASES)
    return gmpy2.is_strong_bpsw_prp(n)


def is_prime_releasing_gil(n: int) -> bool:
    v = _small_verdict(n)
    if v is not None:
        return v
    n = mpz(n)
    if n < DETERMINISTIC_LIMIT:
        return all(gmpy2.is_strong_prp(n, b) for b in _BASES)
    with gmpy2.context(allow_release_gil=True):
        m = n - 1
        s = gmpy2.bit_scan1(m)
        x = gmpy2.powmod(2, m >> s, n)
        if x != 1 and x != m:
            for _ in range(s - 1):
                x = gmpy2.powmod(x, 2, n)
                if x == m:
                    break
            else:
                return False
    return gmpy2.is_strong_selfridge_prp(n)
