"""
The primed wire format, in one place, shared by TCP, UDP and the client.

A request is one line of ASCII: optional blanks (space or tab), an optional
single sign, one or more digits 0-9, optional blanks.  The reply is one
verdict byte followed by a newline::

    T  the number is prime
    F  the number is not prime (0, 1 and every negative number included)
    E  the request is not an integer in the grammar above, or has more
       significant digits than the server's limit

The grammar is deliberately narrower than Python's ``int()``: it refuses
underscores, non-ASCII digits, and anything with a radix prefix, so what a
client may send does not depend on the server's implementation language.
"""

import enum
import re
from typing import Optional

#: CPython's own cap on int/str conversion (CVE-2020-10735), our default.
DEFAULT_MAX_DIGITS = 4300

#: Bytes a request line may carry beyond its digits (blanks, sign, CR).
LINE_SLACK = 64

_INT_STR_DIGITS = 4300

# No "0*" before the digits: two repetitions competing for the same zeros
# would make a long line of zeros that fails to match quadratic to reject.
_REQUEST = re.compile(rb"[ \t]*([+-]?)([0-9]+)[ \t]*\r?")


class Verdict(enum.Enum):
    """
    The three answers primed can give.  C{value} is the verdict letter and
    L{reply} the exact bytes sent back on the wire.
    """

    PRIME = "T"
    NOT_PRIME = "F"
    INVALID = "E"

    @property
    def reply(self) -> bytes:
        return _REPLY_OF[self]

    @classmethod
    def fromReply(cls, reply: bytes) -> "Verdict":
        """
        Decode one reply (C{b"T"}, C{b"T\\n"} or C{b"T\\r\\n"}).

        @raise ValueError: if C{reply} is not a verdict.
        """
        return cls(reply.rstrip(b"\r\n").decode("ascii", "replace"))


PRIME_REPLY = b"T\n"
NOT_PRIME_REPLY = b"F\n"
INVALID_REPLY = b"E\n"

_REPLY_OF = {
    Verdict.PRIME: PRIME_REPLY,
    Verdict.NOT_PRIME: NOT_PRIME_REPLY,
    Verdict.INVALID: INVALID_REPLY,
}

#: C{REPLIES[is_prime(n)]} is the reply for a parsed number: no branch and
#: no enum lookup on the hot path.
REPLIES = (NOT_PRIME_REPLY, PRIME_REPLY)


def maxLineLength(maxDigits: int) -> int:
    """
    The longest request line worth buffering for C{maxDigits}.  A longer line
    can only be answered C{E}, so receivers need not keep it.
    """
    return maxDigits + LINE_SLACK


def plainDigitsLimit(maxDigits: int) -> int:
    """
    A line of nothing but ASCII digits at most this long is a request whose
    value is C{int(line)}: what L{parseRequest} does first, for receivers
    that inline this check on their hottest path (a Python call is a fifth
    of a one-request read).
    """
    return min(maxDigits, _INT_STR_DIGITS)


def inlineDigitsLimit(maxDigits: int, inlineMaxBits: int) -> int:
    """
    A line of nothing but ASCII digits at most this long is a request whose
    value, C{int(line)}, has at most C{inlineMaxBits} bits: it can be
    checked inline at once, with no bound to look at but this one (0 and 1
    included: the engine says they are not prime, which is their verdict).
    The largest C{d} with C{10**d <= 2**inlineMaxBits}, within
    L{plainDigitsLimit}.
    """
    plain = plainDigitsLimit(maxDigits)
    if inlineMaxBits < 4:
        return 0
    if inlineMaxBits >= 4 * plain:  # 10**plain < 16**plain
        return plain
    limit = 1 << inlineMaxBits
    digits = min(plain + 1, int(inlineMaxBits * 0.30103))  # log10(2), about
    while 10**digits > limit:
        digits -= 1
    while digits < plain and 10 ** (digits + 1) <= limit:
        digits += 1
    return min(digits, plain)


def parseRequest(line: bytes, maxDigits: int = DEFAULT_MAX_DIGITS) -> Optional[int]:
    """
    Parse one request line (without its C{\\n}; a trailing C{\\r} is allowed).

    @return: the integer, or L{None} when the answer must be C{E}: the line is
        not in the grammar, has more than C{maxDigits} significant digits
        (leading zeros do not count), or is longer than L{maxLineLength} —
        the limit a stream receiver enforces before a line is complete, so
        the answer never depends on how the bytes were segmented.  Oversized
        numbers are refused before any conversion, so their cost is one regular-expression scan.
    """
    if line.isdigit() and len(line) <= maxDigits and len(line) <= _INT_STR_DIGITS:
        # The common case, 7x cheaper than the expression below: bytes'
        # isdigit() is ASCII-only, so int() sees nothing but 0-9.
        return int(line)
    if len(line) > maxDigits + LINE_SLACK:
        return None
    match = _REQUEST.fullmatch(line)
    if match is None:
        return None
    sign, digits = match.groups()
    digits = digits.lstrip(b"0") or b"0"
    if len(digits) > maxDigits:
        return None
    if len(digits) > _INT_STR_DIGITS:
        number = _bigInt(digits)
    else:
        number = int(digits)
    return -number if sign == b"-" else number


def _bigInt(digits: bytes) -> int:
    """
    Convert more digits than CPython's int() accepts by default, for servers
    configured above 4300 digits; GMP's conversion is subquadratic.
    """
    import gmpy2

    return int(gmpy2.mpz(digits.decode("ascii"), 10))


def replyFor(line: bytes, isPrime, maxDigits: int = DEFAULT_MAX_DIGITS) -> bytes:
    """
    The complete reply to one request line, checked with C{isPrime}: the
    reference behaviour every transport must match.
    """
    number = parseRequest(line, maxDigits)
    if number is None:
        return INVALID_REPLY
    return REPLIES[number > 1 and bool(isPrime(number))]


def encodeRequest(number) -> bytes:
    """
    The request line for C{number} (an int, or text sent as given), newline
    included, as a client sends it.  Only a line ending the text already
    has is dropped: stripping more (Unicode spaces, say) would let a client
    send something other than what it was given.
    """
    try:
        text = str(number)
    except ValueError:
        if not isinstance(number, int):
            raise
        # More digits than CPython's int/str limit: GMP writes them, for a
        # server whose --max-digits is larger.
        import gmpy2

        text = gmpy2.mpz(number).digits(10)
    text = text.rstrip("\r\n")
    return text.encode("utf-8", "surrogateescape") + b"\n"
