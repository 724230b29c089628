"""
The two reads a busy primed connection sees most, answered on short paths.

Clients either ask one number per round trip (telnet, nc, health checks, a
client waiting for each answer) or pipeline many (C{primed-client}, bulk
jobs); either way, nearly every read holds only complete lines of small
numbers, and the connection has nothing buffered, held, pending or paused.
For those reads L{FastReads.dataReceived} gives each line the verdict the
general path (L{primed.tcp.PrimeLineProtocol._process}) would, with less
work per line:

  - a line of at most L{wire.inlineDigitsLimit} ASCII digits needs one
    check, C{isdigit} and a length, to know it is a request, that its value
    is C{int(line)} and that it is small enough to check inline; 0 and 1
    need no branch of their own (the engine says they are not prime);
  - the counters are bumped once per read, from the verdicts
    (C{out.count(PRIME_REPLY)}), not once per line;
  - the time of the read, for the idle timeout, is the poll's
    (L{readClock}): no clock read per read;
  - the replies leave in one write.

A read of one line, the shape of every request in the one-at-a-time case,
is not even split.  Anything else, or the first line of a read that is not
of that form, and everything after it, goes through the general path, which
handles the rest of the grammar, big numbers for the pool, limits,
backpressure and C{--verbose}.  Measured with C{benchmarks/callgrind.py}
(see C{benchmarks/README.rst}).
"""

from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Optional

from primed.counters import Counters
from primed.wire import NOT_PRIME_REPLY, PRIME_REPLY

#: C{data[_ALL_BUT_LAST]} is C{data[:-1]} without building a slice object
#: per read (CPython 3.11 does, for a literal slice): 150 instructions.
_ALL_BUT_LAST = slice(None, -1)


class _ReadNow:
    """
    The clock of a reactor that does not note when its poll returned
    (Twisted's own, a test's L{Clock}): read it.
    """

    def __init__(self, reactor):
        self.seconds = reactor.seconds

    @property
    def polledAt(self) -> float:
        return self.seconds()


def readClock(reactor):
    """
    Where a connection of C{reactor} reads the time of a read: its
    C{polledAt} (L{primed.reactor.PrimedReactor} notes once per poll when
    the poll returned, the time of every read it dispatches), or the clock
    itself on any other reactor.  Either way C{readClock(r).polledAt}.
    """
    if isinstance(getattr(type(reactor), "polledAt", None), float):
        return reactor
    return _ReadNow(reactor)


class FastReads:
    """
    A mixin for L{primed.tcp.PrimeLineProtocol}: its C{dataReceived}.

    Relies on the protocol's state (C{_buffer}, C{_discarding}, C{_pending},
    C{_held}, C{_paused}, summed up in C{_clear}), its per-connection constants (C{_fastDigits},
    C{_isPrime}, C{_clock}, C{_write}, C{counters}) and two methods:
    C{_framedDataReceived}, the general framing, and C{_process}, the
    general answering of complete lines.
    """

    # What the protocol provides, declared for mypy (annotations only: no
    # class attributes, nothing at run time).
    _buffer: bytes
    _discarding: bool
    _pending: "deque[list]"
    _held: "deque[bytes]"
    _paused: "set[str]"
    _clear: bool
    _activeAt: float
    _requested: bool
    _fastDigits: int
    _isPrime: Callable[[int], bool]
    _clock: Any  # a reactor with polledAt, or a _ReadNow
    _write: Callable[[bytes], None]
    counters: Counters
    factory: Any

    if TYPE_CHECKING:

        def _framedDataReceived(self, data: bytes) -> None: ...

        def _process(self, lines: "list[bytes]", out: "Optional[list[bytes]]" = None) -> None: ...

    def dataReceived(self, data: bytes):
        if not self._clear or not data or data[-1] != 10:  # 10: b"\n"
            self._framedDataReceived(data)
            self._checkClear()
            return
        # Only complete lines, and nothing owed, held or paused.
        self._activeAt = self._clock.polledAt
        line = data[_ALL_BUT_LAST]
        if 10 not in line:
            # One line: no split, no list.  (C{in} with an int is a memchr;
            # C{data.find} parses its arguments into a tuple first, and
            # costs more than answering a composite.)
            if line.isdigit() and len(line) <= self._fastDigits:
                counters = self.counters
                if self._isPrime(int(line)):
                    counters.tcpPrime += 1
                    self._write(PRIME_REPLY)
                else:
                    counters.tcpNotPrime += 1
                    self._write(NOT_PRIME_REPLY)
            else:
                self._process([line])
                self._checkClear()
            return
        lines = data.split(b"\n")
        lines.pop()  # the empty tail after the last newline
        fastDigits = self._fastDigits
        isPrime = self._isPrime
        out: list[bytes] = []
        answer = out.append
        for line in lines:
            if line.isdigit() and len(line) <= fastDigits:
                answer(PRIME_REPLY if isPrime(int(line)) else NOT_PRIME_REPLY)
            else:
                break
        if out:
            primes = out.count(PRIME_REPLY)
            counters = self.counters
            counters.tcpPrime += primes
            counters.tcpNotPrime += len(out) - primes
            if len(out) == len(lines):
                self._write(b"".join(out))
                return
            del lines[: len(out)]
        # The rest, after the replies so far, still in one write.
        self._process(lines, out)
        self._checkClear()

    def _checkClear(self) -> None:
        """
        Note whether the short paths may take the next read: nothing
        buffered, being discarded, owed, held or paused, no C{--verbose},
        and a first request seen (the general path notes it, for the
        connection limit).  One flag instead of six reads per read; the protocol
        calls this wherever one of them may have become empty, and sets
        C{_clear} to C{False} wherever one may have become non-empty
        (L{_pause}); a missed call here only sends reads down the general
        path.
        """
        self._clear = not (
            self._buffer or self._discarding or self._pending or self._held
            or self._paused or self.factory.verbose or not self._requested
        )
