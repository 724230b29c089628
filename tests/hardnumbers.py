"""
Numbers that primality tests get wrong, and primes of given sizes, for the
proof tests (L{primed.prover}, L{primed.proofpool}, the --prove end-to-end
tests).
"""

import random

import gmpy2

#: Exponents p of the Mersenne primes 2**p - 1 up to 1300 digits.
MERSENNE_EXPONENTS = (2, 3, 5, 7, 13, 17, 19, 31, 61, 89, 107, 127, 521, 607, 1279, 2203,
                      2281, 3217, 4253)
#: Prime exponents p below 700 whose 2**p - 1 is composite (a prime
#: exponent is necessary, not sufficient).
MERSENNE_COMPOSITE_EXPONENTS = (11, 23, 29, 37, 41, 43, 47, 53, 59, 67, 71, 73, 79, 83, 97,
                                101, 103, 109, 113, 131, 137, 139, 149, 151, 157, 163, 167,
                                173, 179, 181, 191, 193, 197, 199, 211, 223, 227, 229, 233,
                                239, 241, 251, 257, 263, 269, 271, 277, 281, 283, 293, 307,
                                311, 313, 317, 331, 337, 347, 349, 353, 359, 367, 373, 379,
                                383, 389, 397, 401, 409, 419, 421, 431, 433, 439, 443, 449,
                                457, 461, 463, 467, 479, 487, 491, 499, 503, 509, 523, 541,
                                547, 557, 563, 569, 571, 577, 587, 593, 599, 601, 613, 617,
                                619, 631, 641, 643, 647, 653, 659, 661, 673, 677, 683, 691)

#: Carmichael numbers: Fermat liars to every coprime base.
CARMICHAEL = (561, 1105, 1729, 2465, 2821, 6601, 8911, 41041, 825265, 321197185,
              5394826801, 232250619601, 9746347772161)


def chernick(k: int) -> int:
    """
    Chernick's (6k+1)(12k+1)(18k+1), a Carmichael number when all three
    factors are prime.
    """
    return (6 * k + 1) * (12 * k + 1) * (18 * k + 1)


#: A 64-digit Carmichael number: the first k from 10**20 up whose three
#: Chernick factors are prime.
BIG_CARMICHAEL = chernick(10**20 + 8960)


#: Strong pseudoprimes to many bases.
STRONG_PSEUDOPRIMES = (
    # To every prime base up to 37 (Jiang & Deng, 2014): 3.3e24 is the next.
    318665857834031151167461,
    # To every prime base up to 41 (Sorenson & Webster): DETERMINISTIC_LIMIT.
    3317044064679887385961981,
    # Arnault (1995): a 397-digit strong pseudoprime to every prime base
    # below 307, the product of three primes.
    int(
        "2887148238050771212671429597130393991977609459279722700926516024197432303799152733116328983144639225941977803110929349655578418949441740933805615113979999421542416933972905423711002751042080134966731755152859226962916775325475044445856101949404200039904432116776619949629539250452698719329070373564032273701278453899126120309244841494728976885406024976768122077071687938121709811322297802059565867"
    ),
)


def randomPrime(bits: int, seed: int) -> int:
    """
    A prime of exactly C{bits} bits, the same for the same seed.
    """
    rng = random.Random(seed * 7919 + bits)
    while True:
        p = int(gmpy2.next_prime(rng.getrandbits(bits) | (1 << (bits - 1))))
        if p.bit_length() == bits:
            return p


def semiprime(bits: int, seed: int) -> int:
    """
    The product of two primes of C{bits // 2} bits.
    """
    return randomPrime(bits // 2, seed) * randomPrime(bits - bits // 2, seed + 1000)
