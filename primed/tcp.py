"""
The TCP face of primed: a line protocol that answers every request in order,
never buffers more than it must, and finishes its work when a client
half-closes.

Three things shape it beyond a plain L{LineReceiver}:

  - Framing is linear.  L{LineReceiver} re-splits its whole buffer once per
    line (twisted/twisted#6357), which is quadratic in the lines of one read;
    here each read is split once and all the replies it produces leave in one
    write.  A read holding exactly one line, the commonest shape, is not
    split at all.

  - Backpressure.  The connection stops reading, the producer/consumer way
    C{twisted.web}'s C{HTTPChannel} does, whenever one of several independent
    reasons says so: the client does not read its replies (the transport's
    buffer is full), too many replies are pending on this connection, the
    thread pool has no room for this connection's big number, or the service
    is draining.  It resumes only when every reason is gone, so at most one
    read's worth of lines is ever held.

  - Half-close.  C{printf '17\\n' | nc -N host port} shuts down its sending
    side straight after the last line; every request received before that EOF
    is still answered, then the connection is closed.

  - Loss.  A connection that is lost (reset by the peer, a failed write)
    drops its checks still waiting in the pool's fair queue
    (L{primed.fairqueue}) without running them; a check already running
    finishes and its result is discarded.  A connection that is not reading
    (paused, half-closed) would learn of a reset only from its next write;
    when a pool reply is due on it, or pool room, its socket's pending error
    is read first (L{_peerReset}), so the rest of its work is dropped
    before the pool starts any more of it.
"""

from collections import deque
from typing import Any, Optional

from twisted.internet import interfaces
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from primed import wire
from primed.checker import CheckAbandoned, CheckCancelled
from primed.fastpath import resetProbe, streamWriter
from primed.proofpool import ProofUnavailable
from primed.sources import sourceKey
from primed.tcpreads import FastReads, readClock
from primed.wire import INVALID_REPLY, NOT_PRIME_REPLY, PRIME_REPLY, REPLIES, parseRequest

#: Replies that may be pending on one connection before it stops reading.
DEFAULT_MAX_INFLIGHT = 1024
#: Seconds a connection may stay without a complete request or pending reply.
DEFAULT_IDLE_TIMEOUT = 300.0

# Why a connection is not reading.  Any one of them is enough.
PAUSED_BY_CONSUMER = "consumer"  # the client does not read our replies
PAUSED_BY_INFLIGHT = "inflight"  # too many replies pending on this connection
PAUSED_BY_POOL = "pool"  # the thread pool has no room for our big number
PAUSED_BY_DRAIN = "drain"  # the service is stopping
# Reasons that also stop the lines already read from being processed.
_HOLDING = frozenset([PAUSED_BY_INFLIGHT, PAUSED_BY_POOL])
# A connection's source before its first pool check (None is a source: UNIX).
_UNKNOWN = object()


@implementer(interfaces.IHalfCloseableProtocol, interfaces.IPushProducer)
class PrimeLineProtocol(FastReads, LineReceiver, TimeoutMixin):
    """
    One TCP connection: requests in, one reply per request out, in order.

    Replies that can be given at once are written at once.  From the first
    request sent to the pool until it is answered, replies queue behind it in
    C{_pending}, a deque of one-item lists each holding its reply or L{None}.
    """

    #: Set by makeConnection.  Twisted types it Optional[ITransport], which
    #: has neither the producer nor the abort methods its TCP transports have.
    transport: Any

    delimiter = b"\n"
    _log = Logger()
    #: The client's address when a PROXY header gave it (L{primed.proxy}).
    peerAddress = None
    #: The source (L{primed.sources.sourceKey}) this connection is counted
    #: against by the connection limits, or L{None}; kept by the factory.
    source: Optional[str] = None
    #: The fair queue's source key, found at the first pool check.
    _source = _UNKNOWN
    #: L{resetProbe} of the transport, made when first needed.
    _resetProbe = None

    def __init__(self):
        self._buffer = b""
        self._discarding = False
        self._held: deque[bytes] = deque()
        self._pending: deque[list] = deque()
        self._paused: set[str] = set()
        self._readClosed = False
        self._closing = False
        self._lost = False
        self._draining = False
        self._processing = 0
        self._clear = False  # see FastReads._checkClear
        # Whether a complete request has arrived.  Until then _checkClear
        # keeps the short paths off, so only _framedDataReceived needs to
        # note the first one: nothing per read once it has.
        self._requested = False

    # Connection life.

    def connectionMade(self):
        factory = self.factory
        self.checker = factory.checker
        self.maxDigits = factory.maxDigits
        self.MAX_LENGTH = wire.maxLineLength(factory.maxDigits)
        self.maxInflight = factory.maxInflight
        self.counters = factory.counters
        self._write = streamWriter(self.transport)
        self._seconds = factory.reactor.seconds
        self._clock = readClock(factory.reactor)
        self._activeAt = self._clock.polledAt
        self._inlineMaxBits = self.checker.inlineMaxBits
        self._plainDigits = wire.plainDigitsLimit(factory.maxDigits)
        self._fastDigits = wire.inlineDigitsLimit(factory.maxDigits, self._inlineMaxBits)
        self._isPrime = self.checker.checkInline
        self.transport.registerProducer(self, True)
        self.setTimeout(factory.idleTimeout or None)
        factory.connected(self)
        self._checkClear()

    def connectionLost(self, reason):  # type: ignore[override]  # Twisted always passes the reason
        """
        Results still running for this connection are dropped quietly when
        they arrive; only the factory's bookkeeping needs updating.
        """
        self._lost = True
        self.setTimeout(None)
        self._held.clear()
        self._pending.clear()
        if self._source is not _UNKNOWN:  # something was sent to the pool
            self._dropQueuedChecks()
        self.factory.disconnected(self)

    def _dropQueuedChecks(self) -> None:
        """
        Nobody will read this connection's answers: its checks still
        waiting for a thread never run (counted by the queue).
        """
        if PAUSED_BY_POOL in self._paused:
            self.checker.cancelRoomWaiter(self._poolHasRoom)
        self.checker.cancel(self)

    def readConnectionLost(self):
        """
        The client will send nothing more.  An unterminated last line is a
        request too (C{printf 17 | nc -N} deserves an answer); once everything
        received is answered, the connection is closed.
        """
        self._readClosed = True
        if self._buffer and not self._discarding:
            self._held.append(self._buffer)
        self._buffer = b""
        self._processHeld()
        self._finishIfDone()

    def writeConnectionLost(self):
        """
        We never half-close our side, so there is nothing to do.
        """

    def resetTimeout(self):
        """
        Idle time counts from now.  Rather than moving L{TimeoutMixin}'s
        timer on every read (a C{DelayedCall.reset} and a clock read, 2 200
        instructions: a tenth of a one-request read), note the time; when
        the timer fires, L{timeoutConnection} re-arms it for what is left.
        """
        self._activeAt = self._clock.polledAt

    def timeoutConnection(self):
        """
        Idle means no complete request and no reply owed: a client waiting
        for a long check is not idle, a client dribbling half a line is.
        """
        idle = self.factory.idleTimeout
        left = self._activeAt + idle - self._seconds()
        if left > 0:
            self.setTimeout(left)  # active since the timer was set
            return
        if self._pending or self._held:
            self.setTimeout(idle)  # the timer is spent: re-arm
            return
        self._log.info("Closing idle connection from {peer}", peer=self._peer())
        self.counters.tcpIdleClosed += 1
        self.transport.abortConnection()

    def callLater(self, period, func):
        # TimeoutMixin's clock: the factory's reactor, so tests can use Clock.
        return self.factory.reactor.callLater(period, func)

    # Framing.

    def _framedDataReceived(self, data: bytes):
        """
        Any read: L{FastReads.dataReceived} passes on what its short paths
        do not take.
        """
        if self._discarding:
            end = data.find(b"\n")
            if end < 0:
                return
            data = data[end + 1 :]
            self._discarding = False
        if self._buffer:
            data = self._buffer + data
        lines = data.split(b"\n")
        self._buffer = lines.pop()
        if lines:
            self._requested = True
            self.resetTimeout()
            if self._held or self._paused & _HOLDING:
                self._held.extend(lines)
            else:
                self._process(lines)
        if len(self._buffer) > self.MAX_LENGTH:
            # No useful request is this long; answer it now, in its place,
            # and skip whatever is left of it.
            self._buffer = b""
            self._discarding = True
            self.lineLengthExceeded(b"")

    def lineLengthExceeded(self, line):
        self.counters.linesTooLong += 1
        if self._held or self._paused & _HOLDING:
            self._held.append(b"!")  # any non-request answers E
        else:
            self._process([b"!"])  # honours --max-inflight like any line

    def lineReceived(self, line: bytes):
        """
        L{LineReceiver}'s interface: handle one request line.
        """
        self._requested = True
        if self._held or self._paused & _HOLDING:
            self._held.append(line)
        else:
            self._process([line])
        self._checkClear()

    def _process(self, lines: list[bytes], out: Optional[list[bytes]] = None) -> None:
        """
        Answer C{lines} in order; everything answerable at once leaves in one
        write, after C{out}, replies to earlier lines of the same read not
        written yet (already counted).  Stops, keeping the rest in C{_held},
        when a big number cannot be handed to the pool yet or too many
        replies are pending.
        """
        self._processing += 1
        checker = self.checker
        pending = self._pending
        maxDigits = self.maxDigits
        inlineMaxBits = checker.inlineMaxBits
        isPrime = checker.checkInline
        verbose = self.factory.verbose
        counters = self.counters
        plainDigits = self._plainDigits
        if out is None:
            out = []
        for index, line in enumerate(lines):
            if pending and len(pending) >= self.maxInflight:
                # Before the line is parsed: a held line is counted and
                # logged once, when it is processed again.  (--max-inflight
                # is at least 1, so an empty queue is never full.)
                self._hold(lines, index, PAUSED_BY_INFLIGHT)
                break
            number: Optional[int]
            if line.isdigit() and len(line) <= plainDigits:
                number = int(line)  # parseRequest's first step, inline
            else:
                number = parseRequest(line, maxDigits)
            if number is None:
                reply = INVALID_REPLY
                counters.tcpInvalid += 1
                if len(line) > self.MAX_LENGTH:  # whole in one read
                    counters.linesTooLong += 1
            elif number < 2:
                reply = NOT_PRIME_REPLY
                counters.tcpNotPrime += 1
            elif number.bit_length() <= inlineMaxBits:
                if isPrime(number):
                    reply = PRIME_REPLY
                    counters.tcpPrime += 1
                else:
                    reply = NOT_PRIME_REPLY
                    counters.tcpNotPrime += 1
            else:
                source = self._source
                if source is _UNKNOWN:
                    source = self._findSource()
                if not checker.hasRoom(source):
                    self._hold(lines, index, PAUSED_BY_POOL)
                    if not checker.queue.isFull():
                        counters.tcpSourceQuota += 1
                    checker.notifyRoom(source, self._poolHasRoom)
                    break
                if out:
                    # Keep order even when the pool answers synchronously.
                    self._write(b"".join(out))
                    out = []
                slot = [None]
                pending.append(slot)
                checker.submit(number, source, self).addCallbacks(
                    self._checked, self._checkFailed, (slot, line), None, (slot, line)
                )
                continue
            if pending:
                pending.append([reply])
            else:
                out.append(reply)
            if verbose:
                self._logVerdict(line, reply)
        if out:
            self._write(b"".join(out))
        self._processing -= 1

    def _hold(self, lines: list[bytes], start: int, reason: str) -> None:
        self._held.extendleft(reversed(lines[start:]))
        self._pause(reason)

    def _processHeld(self) -> None:
        """
        Answer lines read earlier, now that nothing holds them back.
        """
        if self._held and not self._paused & _HOLDING and not self._lost:
            held, self._held = self._held, deque()
            self._process(list(held))

    # Results from the pool.

    def _findSource(self):
        """
        The fair queue's source of this connection: the PROXY header's
        address once read, the socket's otherwise.  Peers without an
        address (UNIX sockets) are all one source, L{None}.
        """
        self._source = source = sourceKey(self.peerAddress or self.transport.getPeer())
        return source

    def _peerReset(self) -> bool:
        """
        Whether the peer reset this connection, unseen by the reactor while
        it does not read (paused, or half-closed: Twisted stops at the FIN).
        A half-close (FIN) is no reset: its answers are still owed.
        """
        probe = self._resetProbe
        if probe is None:
            probe = self._resetProbe = resetProbe(self.transport)
        return probe()

    def _checked(self, isPrime: bool, slot: list, line: bytes) -> None:
        if self._lost:
            self.counters.poolDiscarded += 1
            return  # nobody to answer: not counted as answered
        if (self._paused or self._readClosed) and self._peerReset():
            self.counters.poolDiscarded += 1
            self._lose()
            return
        slot[0] = REPLIES[isPrime]
        if isPrime:
            self.counters.tcpPrime += 1
        else:
            self.counters.tcpNotPrime += 1
        if self.factory.verbose:
            self._logVerdict(line, slot[0])
        self._flushPending()

    def _checkFailed(self, failure, slot: list, line: bytes) -> None:
        if self._lost or failure.check(CheckAbandoned, CheckCancelled):
            return  # nobody to answer: gone, or cut off by a stop
        if not failure.check(ProofUnavailable):  # --prove: E, counted and logged there
            self._log.failure("Checking a {digits}-digit number failed", failure,
                              digits=len(line))
        slot[0] = INVALID_REPLY
        self.counters.tcpInvalid += 1
        self._flushPending()

    def _flushPending(self) -> None:
        """
        Write every reply at the head of the queue that is ready, then let
        reading and held lines go on if the queue has room again.
        """
        if self._lost:
            return
        pending = self._pending
        ready = []
        while pending and pending[0][0] is not None:
            ready.append(pending.popleft()[0])
        if ready:
            self._write(b"".join(ready))
            # Idle time counts from the last reply.  Not resetTimeout: this
            # is no read, and the poll time it would note may predate the
            # reply (the pool's wake-up can be handled in a turn that did
            # not poll, after a check that took minutes).
            self._activeAt = self._seconds()
        if PAUSED_BY_INFLIGHT in self._paused and len(pending) < self.maxInflight:
            self._unpause(PAUSED_BY_INFLIGHT)
        self._finishIfDone()
        self._checkClear()

    def _poolHasRoom(self) -> None:
        if self._peerReset():
            # Reset while it waited: start no check for its held lines.
            self._lose()
            return
        self._unpause(PAUSED_BY_POOL)

    def _lose(self) -> None:
        """
        The peer reset a paused connection: drop its work now, before the
        pool starts more of it, and close; L{connectionLost} follows.
        """
        self._log.info("Connection from {peer} reset: dropping its queued checks",
                       peer=self._peer())
        self._lost = True
        self._held.clear()
        self._pending.clear()
        self._dropQueuedChecks()
        self.transport.abortConnection()

    # Pausing, for any number of reasons at once.

    def _pause(self, reason: str) -> None:
        if not self._paused and not self._closing and not self._lost:
            self.transport.pauseProducing()
        self._paused.add(reason)
        self._clear = False

    def _unpause(self, reason: str) -> None:
        if reason not in self._paused:
            return
        self._paused.discard(reason)
        if reason in _HOLDING:
            self._processHeld()
        if not (self._paused or self._readClosed or self._closing or self._lost):
            self.transport.resumeProducing()
        self._finishIfDone()
        self._checkClear()

    def pauseProducing(self):
        """
        The transport's buffer is full: the client is not reading.  Stop
        reading its requests until it catches up.
        """
        self._pause(PAUSED_BY_CONSUMER)

    def resumeProducing(self):
        self._unpause(PAUSED_BY_CONSUMER)

    def stopProducing(self):
        self._held.clear()
        self._buffer = b""

    # Ending.

    def drain(self) -> None:
        """
        Stop reading: answer what was received, then close.
        """
        self._draining = True
        self._pause(PAUSED_BY_DRAIN)
        self._finishIfDone()

    def hasRequested(self) -> bool:
        """
        Whether a complete request has arrived on this connection: one that
        has not (a TLS handshake or PROXY header never finished, a line never
        ended) is the first to go when the connection limit is reached.
        """
        return self._requested

    def unansweredCount(self) -> int:
        """
        Complete requests received and not answered yet.
        """
        return len(self._held) + len(self._pending)

    def _finishIfDone(self) -> None:
        if (
            (self._readClosed or self._draining)
            and not self._closing
            and not self._processing
            and not self._held
            and not self._pending
            and not self._lost
        ):
            # The idle timer keeps running: a client that never reads its
            # last replies would otherwise hold the connection open forever.
            self._closing = True
            # A producer the transport paused would be resumed, not closed,
            # once its buffer drains: unregister first.
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    # Logging.

    def _peer(self) -> str:
        peer = self.peerAddress or self.transport.getPeer()
        host, port = getattr(peer, "host", None), getattr(peer, "port", None)
        if host is None:
            return str(peer)
        # [::1]:5000, not ::1:5000, where the port would read as a group.
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _logVerdict(self, line: bytes, reply: bytes) -> None:
        if not self.factory.verboseLines.allow():
            return
        self._log.info(
            "{peer} asked {request!r}: {verdict}",
            peer=self._peer(),
            request=line[:80],
            verdict=reply[:1].decode(),
        )
