"""
The UDP face of primed: one datagram in, at most one two-byte datagram out.

A reply is never longer than its request could be useful, so the service
cannot amplify traffic towards a spoofed source.  UDP is lossy by contract:
when the thread pool has no room, big requests are dropped and counted rather
than queued without bound.  Room is per source (L{primed.fairqueue}): a
source flooding big numbers fills its own quota and loses its own requests,
and each source's requests take their turn in the pool with every other
source's, TCP or UDP.
"""

from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from primed import wire
from primed.checker import CheckAbandoned
from primed.counters import Counters
from primed.fastpath import datagramWriter
from primed.proofpool import ProofUnavailable
from primed.sources import sourceKey
from primed.wire import INVALID_REPLY, NOT_PRIME_REPLY, PRIME_REPLY, REPLIES, parseRequest

#: Seconds between two log lines about dropped datagrams.
DROP_LOG_INTERVAL = 10.0

#: The largest UDP payload, over IPv6 (65 535 - 8); IPv4's is 65 507.
MAX_DATAGRAM = 65527


def receiveBufferSize(maxDigits: int) -> int:
    """
    How many bytes to read per datagram.  The kernel silently cuts a
    datagram longer than the read, and what is left may parse as another
    number, so either every request that could be checked fits with room to
    spare (a cut datagram then fills the read, is longer than any request,
    and is answered E), or the read is larger than any datagram at all.
    Neither costs anything per datagram, and both hold for adopted sockets.
    """
    room = wire.maxLineLength(maxDigits) + 2  # a longest line and its CRLF
    return max(8192, min(room, MAX_DATAGRAM + 1))


class PrimeDatagramProtocol(DatagramProtocol):
    """
    Answer each datagram (one request, trailing C{\\n} or C{\\r\\n} optional)
    with C{T\\n}, C{F\\n} or C{E\\n}, sent back to its source.  Empty datagrams
    are ignored: the seed chapter's server stopped on one, this one neither
    stops nor answers.

    @ivar dropped: requests dropped because the pool had no room.
    """

    #: Set by makeConnection.  Twisted types it Optional[ITransport], which
    #: has neither the producer nor the abort methods its TCP transports have.
    transport: Any

    noisy = False
    _log = Logger()
    #: The budget of C{--verbose} lines (L{primed.ratelog.LineBudget}),
    #: shared with TCP; set by the service.  L{None}: no limit.
    verboseLines = None

    def __init__(
        self,
        checker,
        reactor,
        maxDigits: int = wire.DEFAULT_MAX_DIGITS,
        verbose: bool = False,
        counters: Optional[Counters] = None,
    ):
        """
        @param counters: where to count requests; a fresh L{Counters} by
            default.
        """
        self.checker = checker
        self.reactor = reactor
        self.maxDigits = maxDigits
        self.maxLength = wire.maxLineLength(maxDigits)
        self._plainDigits = wire.plainDigitsLimit(maxDigits)
        self._inlineMaxBits = checker.inlineMaxBits
        # Digit strings this short are below 10**n <= 2**inlineMaxBits: no
        # bit_length() needed to know they are checked inline.
        self._inlineDigits = min(
            self._plainDigits, len(str(2**checker.inlineMaxBits)) - 1
        )
        self._isPrime = checker.checkInline
        self.verbose = verbose
        self.counters = Counters() if counters is None else counters
        self.dropped = 0
        self.inflight = 0
        self._droppedSinceLog = 0
        self._lastDropLog: Optional[float] = None
        self._idleWaiters: list = []
        self._stopped = False
        self._buffer: Optional[bytearray] = None

    def startProtocol(self) -> None:
        self._send = datagramWriter(self.transport)

    def datagramReceived(self, data: bytes, addr) -> None:
        if not data or self._stopped:
            if not data:
                self.counters.udpIgnored += 1
            return
        line = data[:-1] if data[-1:] == b"\n" else data
        counters = self.counters
        if len(line) > self.maxLength:
            counters.linesTooLong += 1
            counters.udpInvalid += 1
            self._reply(INVALID_REPLY, line[:80], addr)
            return
        number: Optional[int]
        if line.isdigit() and len(line) <= self._plainDigits:
            number = int(line)  # parseRequest's first step, inline
        else:
            number = parseRequest(line, self.maxDigits)
        checker = self.checker
        if number is None:
            reply = INVALID_REPLY
            counters.udpInvalid += 1
        elif number < 2:
            reply = NOT_PRIME_REPLY
            counters.udpNotPrime += 1
        elif number.bit_length() <= self._inlineMaxBits:  # checker.isInline
            if self._isPrime(number):
                reply = PRIME_REPLY
                counters.udpPrime += 1
            else:
                reply = NOT_PRIME_REPLY
                counters.udpNotPrime += 1
        else:
            source = sourceKey(addr)
            if checker.hasRoom(source):
                self.inflight += 1
                # A source's datagrams are one "connection" of the fair queue.
                checker.submit(number, source, source).addCallbacks(
                    self._checked, self._checkFailed, (line, addr), None, (line, addr)
                )
            else:
                if not checker.queue.isFull():
                    counters.udpSourceQuota += 1
                self._drop()
            return
        self._reply(reply, line, addr)

    def readDatagrams(self, port) -> bool:
        """
        Read and answer what is queued on C{port}, a
        L{primed.reactor.DatagramPort}, following its rules (peeks, then
        drained to C{EAGAIN}, within C{maxThroughput}).

        Why: under load a dozen datagrams or more wait per read event, and
        most are a short run of digits (a trailing C{\\n} optional) checked
        inline.  Those are answered here, in one frame: no call into
        L{datagramReceived} and L{_reply}, none of their per-datagram checks
        and attribute loads, 14% of primed's instructions per UDP request
        (C{benchmarks/README.rst}).  Anything else (empty, signed, padded,
        over-long, too big to check inline) goes to L{datagramReceived}
        through the port, as if the port had read it.  Datagrams are read
        into one buffer of the port's C{maxPacketSize}, kept between
        events: C{recvfrom} would allocate that much (8 KiB or more, from
        C{malloc}) per datagram and shrink it, a thousand instructions.

        @return: C{False} (the port's own loop then reads) while verbose
            logging or after L{drain}: replies are logged in L{_reply}, and
            a stopped server answers nothing.
        """
        if self.verbose or self._stopped:
            return False
        sock = port.socket
        recvfrom = sock.recvfrom_into
        sendto = sock.sendto
        buffer = self._buffer
        if buffer is None or len(buffer) != port.maxPacketSize:
            buffer = self._buffer = bytearray(port.maxPacketSize)
        limit = port.maxThroughput
        peek = port.peek
        peeks = port.PEEKS
        short = self._inlineDigits
        isPrime = self._isPrime
        read = answered = primes = 0
        try:
            while True:
                try:
                    size, addr = recvfrom(buffer)
                except OSError as e:
                    port.readFailed(e)
                    return True
                read += size
                line = buffer[: size - 1] if size and buffer[size - 1] == 10 else buffer[:size]
                if line.isdigit() and len(line) <= short:
                    answered += 1
                    if isPrime(int(line)):
                        reply = PRIME_REPLY
                        primes += 1
                    else:
                        reply = NOT_PRIME_REPLY
                    try:
                        sendto(reply, addr)
                    except OSError as e:
                        self._lost(addr, e)
                else:
                    port.deliverDatagram(bytes(buffer[:size]), addr)
                if read >= limit:
                    return True
                if peeks:
                    peeks -= 1
                    if not peek(0, 1):
                        return True
        finally:
            # Counted once per event: a local is cheaper than an attribute.
            counters = self.counters
            counters.udpPrime += primes
            counters.udpNotPrime += answered - primes

    def _checked(self, isPrime: bool, line: bytes, addr) -> None:
        if isPrime:
            self.counters.udpPrime += 1
        else:
            self.counters.udpNotPrime += 1
        self._reply(REPLIES[isPrime], line, addr)
        self._done()

    def _checkFailed(self, failure, line: bytes, addr) -> None:
        if failure.check(CheckAbandoned):
            self._done()  # a stop past its deadline: no reply
            return
        if not failure.check(ProofUnavailable):  # --prove: E, counted and logged there
            self._log.failure("Checking a {digits}-digit number failed", failure,
                              digits=len(line))
        self.counters.udpInvalid += 1
        self._reply(INVALID_REPLY, line, addr)
        self._done()

    def _reply(self, reply: bytes, request: bytes, addr) -> None:
        if self.verbose and (self.verboseLines is None or self.verboseLines.allow()):
            self._log.info(
                "{peer} asked {request!r}: {verdict}",
                peer=addr,
                request=request[:80],
                verdict=reply[:1].decode(),
            )
        if self.transport is None:
            return  # stopped listening while the pool was busy
        try:
            self._send(reply, addr)
        except OSError as e:
            self._lost(addr, e)

    def _lost(self, addr, error: OSError) -> None:
        """
        A full socket buffer or an unreachable source: UDP may lose a reply,
        it must not lose the server.
        """
        self._log.debug("Reply to {peer} lost: {error}", peer=addr, error=error)

    def _drop(self) -> None:
        self.dropped += 1
        self._droppedSinceLog += 1
        now = self.reactor.seconds()
        if self._lastDropLog is None or now - self._lastDropLog >= DROP_LOG_INTERVAL:
            self._log.warn(
                "Thread pool full: dropped {count} UDP request(s) "
                "({total} since start)",
                count=self._droppedSinceLog,
                total=self.dropped,
            )
            self._lastDropLog = now
            self._droppedSinceLog = 0

    # Stopping.

    def drain(self) -> Deferred:
        """
        Stop answering new datagrams and wait for those in the pool.

        @return: a L{Deferred} that fires when every accepted request has
            been answered.
        """
        self._stopped = True
        d: Deferred[Any] = Deferred()
        if self.inflight:
            self._idleWaiters.append(d)
        else:
            d.callback(None)
        return d

    def _done(self) -> None:
        self.inflight -= 1
        if not self.inflight and self._idleWaiters:
            waiters, self._idleWaiters = self._idleWaiters, []
            for d in waiters:
                d.callback(None)
