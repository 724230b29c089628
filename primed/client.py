"""
A client for primed: Twisted APIs for TCP and UDP, and the C{primed-client}
command built on them.

Over TCP one connection carries any number of requests: primed answers them
in order, so L{PrimedClientProtocol} just keeps a queue of Deferreds and
fires the oldest with each reply.  Over UDP a reply carries nothing that
names its request, so L{PrimedUDPClient} gives each request a connected
socket of its own and matches replies by the port they arrive at.

The command reads numbers in a thread, keeps L{TCP_WINDOW} of them in flight
on one connection, and prints the answers in input order; its output is
always a prefix of its input, complete when the exit status is 0.
"""

import collections
import errno
import os
import re
import signal
import sys
import threading

from twisted.internet import defer, endpoints, error, task
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.protocol import DatagramProtocol
from twisted.protocols.basic import LineReceiver
from twisted.python import usage
from twisted.python.failure import Failure

from primed.wire import Verdict, encodeRequest

DEFAULT_HOST = "127.0.0.1"
DEFAULT_TCP_PORT = 8809
DEFAULT_UDP_PORT = 8808

#: Seconds: over TCP, to connect and the longest silence while answers are
#: owed (a 4300-digit check may take a while); over UDP, per attempt.
DEFAULT_TCP_TIMEOUT = 10.0
DEFAULT_UDP_TIMEOUT = 1.0
DEFAULT_RETRIES = 3

#: Requests the command keeps unanswered at once: enough to hide the round
#: trip, few enough to bound the memory of both ends.  A UDP request holds a
#: socket, hence the smaller figure.
TCP_WINDOW = 256
UDP_WINDOW = 64

# Reply lines as LineReceiver hands them over, so the hot path is one dict
# lookup; anything else goes through Verdict.fromReply.
_VERDICT_OF_LINE = {verdict.reply.rstrip(b"\n"): verdict for verdict in Verdict}


class PrimedError(Exception):
    """
    A request that primed did not answer.
    """


class PrimedConnectionLost(PrimedError):
    """
    The TCP connection closed before primed answered the request.
    """


class PrimedTimeout(PrimedError):
    """
    primed did not answer in time: after every UDP retry, or within the
    silence a TCP connection tolerates.
    """


class PrimedProtocolError(PrimedError):
    """
    The server sent something that is not a verdict, so it is not primed (or
    the replies can no longer be matched to the requests).
    """


class PrimedRefused(PrimedError):
    """
    Nothing listens where the UDP request was sent (ICMP port unreachable).
    """


def _request(number) -> bytes:
    """
    The request line for C{number}, refusing text that would make it two
    lines: over TCP the replies would then no longer match the requests.
    """
    request = encodeRequest(number)
    if request.find(b"\n") != len(request) - 1:
        raise ValueError(f"{number!r} is not one line")
    return request


class PrimedClientProtocol(LineReceiver):
    """
    Pipelined requests on one TCP connection.

    primed answers a connection's requests in order, so the oldest pending
    request is always the one a reply belongs to.  L{check} does not limit
    how many requests are in flight: that is the caller's policy (the
    command keeps L{TCP_WINDOW}).

    @ivar timeout: L{None}, or the seconds of silence tolerated while answers
        are owed; then the connection is dropped and the pending requests
        fail with L{PrimedTimeout}.
    @ivar lostIdle: whether the connection closed owing no answer (primed's
        idle timeout, say): nothing was lost with it, and a new connection
        can carry on.
    """

    delimiter = b"\n"
    # Replies are one letter: a long line means the peer is not primed.
    MAX_LENGTH = 64

    def __init__(self, timeout=None, clock=None):
        if timeout is not None and clock is None:
            raise ValueError("a timeout needs a clock")
        self.timeout = timeout
        self._clock = clock
        self._pending = collections.deque()
        self._error = None
        self._lost = False
        self.lostIdle = False
        self._timer = None
        self._lastHeard = 0.0

    def check(self, number) -> defer.Deferred:
        """
        Ask whether C{number} (an int, or the text of one: it is sent as
        given, and primed judges it) is prime.

        @return: a Deferred firing with a L{Verdict}, after those of every
            earlier request; or failing with a L{PrimedError}.
        @raise ValueError: if C{number}'s text spans several lines.
        """
        d = defer.Deferred()
        self.request(number, d)
        return d

    def request(self, number, receiver):
        """
        L{check} without the Deferred, for callers sending numbers by the
        thousand: the answer goes to C{receiver.callback(verdict)} or
        C{receiver.errback(failure)} (a L{Deferred} is such a receiver).

        @raise ValueError: if C{number}'s text spans several lines.
        """
        request = _request(number)
        if self._lost:
            receiver.errback(Failure(PrimedConnectionLost("the connection is closed")))
            return
        if not self._pending and self.timeout is not None:
            self._lastHeard = self._clock.seconds()
            if self._timer is None:
                self._timer = self._clock.callLater(self.timeout, self._checkSilence)
        self._pending.append(receiver)
        self.transport.write(request)

    def dataReceived(self, data):
        # After a protocol error nothing more is trusted: a real transport's
        # abortConnection does not stop LineReceiver from delivering the
        # replies still in this segment.
        if self._error is not None:
            return
        if self.timeout is not None:
            self._lastHeard = self._clock.seconds()
        LineReceiver.dataReceived(self, data)

    def lineReceived(self, line):
        if self._error is not None:
            return
        verdict = _VERDICT_OF_LINE.get(line)
        if verdict is None:
            try:
                verdict = Verdict.fromReply(line)
            except ValueError:
                self._abort(PrimedProtocolError(f"unexpected reply {line[:20]!r}"))
                return
        if not self._pending:
            self._abort(PrimedProtocolError("a reply to no request"))
            return
        self._pending.popleft().callback(verdict)

    def lineLengthExceeded(self, line):
        if self._error is not None:
            return
        self._abort(PrimedProtocolError(f"unexpected reply {line[:20]!r}..."))

    def _checkSilence(self):
        self._timer = None
        if not self._pending or self._lost:
            return
        silence = self._clock.seconds() - self._lastHeard
        if silence >= self.timeout:
            self._abort(PrimedTimeout(f"no reply for {self.timeout:g} s"))
        else:
            self._timer = self._clock.callLater(
                self.timeout - silence, self._checkSilence
            )

    def _abort(self, exception):
        """
        Give up on this connection: every pending request fails with
        C{exception}, since later replies could no longer be trusted.
        """
        if self._error is None:
            self._error = exception
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self._lost = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        pending, self._pending = self._pending, collections.deque()
        if not pending:
            self.lostIdle = self._error is None
            return
        if self._error is not None:
            error_ = self._error
        else:
            error_ = PrimedConnectionLost(
                f"connection lost before {len(pending)} answers arrived"
                f" ({reason.getErrorMessage()})"
            )
        for receiver in pending:
            receiver.errback(Failure(error_))


def connect(reactor, description, timeout=None) -> defer.Deferred:
    """
    Connect to primed at a client endpoint string (C{"tcp:host=...:port=..."},
    C{"unix:path=..."}, C{"ssl:..."}).

    @param timeout: see L{PrimedClientProtocol.timeout}.
    @return: a Deferred firing with a connected L{PrimedClientProtocol}.
    """
    endpoint = endpoints.clientFromString(reactor, description)
    return endpoints.connectProtocol(endpoint, PrimedClientProtocol(timeout, reactor))


class _UDPRequest(DatagramProtocol):
    """
    One request on a connected socket of its own.  Any verdict arriving on
    it answers this request: the socket never carried another, and retries
    of the same request all get the same answer.
    """

    # Two log events per request would cost more than the request.
    noisy = False

    def __init__(self, clock, request, timeout, retries):
        self._clock = clock
        self._request = request
        self._timeout = timeout
        self._retries = retries
        self._sent = 0
        self._timer = None
        self._done = False
        self.deferred = defer.Deferred(lambda d: self._stop())

    def send(self):
        # Arm first: a write may report "refused" synchronously.
        self._sent += 1
        self._timer = self._clock.callLater(self._timeout, self._timedOut)
        try:
            self.transport.write(self._request)
        except error.MessageLengthError:
            # Too long for a datagram: more than primed accepts, so invalid,
            # as primed answers E to an over-long line over TCP.
            self._finish(Verdict.INVALID)
        except Exception as e:
            if isinstance(e, OSError) and e.errno == errno.EMSGSIZE:
                self._finish(Verdict.INVALID)
            else:
                # No retry will help.
                self._finish(Failure())

    def _timedOut(self):
        self._timer = None
        if self._sent <= self._retries:
            self.send()
        else:
            self._finish(
                Failure(
                    PrimedTimeout(
                        f"no reply after {self._sent} attempts"
                        f" of {self._timeout:g} s each"
                    )
                )
            )

    def datagramReceived(self, datagram, address):
        try:
            verdict = Verdict.fromReply(datagram)
        except ValueError:
            return  # Not an answer; keep waiting for one.
        self._finish(verdict)

    def connectionRefused(self):
        self._finish(Failure(PrimedRefused("port unreachable")))

    def stopProtocol(self):
        # Twisted's epoll reactor reports the ICMP "port unreachable" of a
        # connected UDP socket by dropping the port rather than calling
        # connectionRefused: a port closing under an unanswered request
        # means the same thing.
        self.connectionRefused()

    def _stop(self):
        # Closing the port calls stopProtocol: mark this request done first.
        self._done = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.transport is not None:
            self.transport.stopListening()

    def _finish(self, result):
        if self._done:
            return
        self._stop()
        self.deferred.callback(result)


class PrimedUDPClient:
    """
    Ask primed over UDP, retrying lost requests.

    A reply is just C{T}, C{F} or C{E}: it does not say which request it
    answers.  Sharing one socket between requests would therefore be wrong
    as soon as a datagram is lost, duplicated or reordered (a late reply to
    a retried request would answer the next one).  So each request gets a
    fresh socket connected to the server: the kernel delivers only the
    server's datagrams to it, the socket is closed when the answer arrives,
    and an ICMP "port unreachable" fails the request at once instead of
    waiting for every retry.  The price is a bind and a close per request.

    @ivar timeout: seconds to wait for each attempt.
    @ivar retries: attempts after the first before giving up with
        L{PrimedTimeout}.
    """

    def __init__(
        self, reactor, host, port, timeout=DEFAULT_UDP_TIMEOUT, retries=DEFAULT_RETRIES
    ):
        self._reactor = reactor
        self.host = host
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self._address = host if _isIPAddress(host) else None

    def check(self, number) -> defer.Deferred:
        """
        Ask whether C{number} (an int, or the text of one) is prime.

        @return: a Deferred firing with a L{Verdict}, or failing with
            L{PrimedTimeout} or L{PrimedRefused}; unlike TCP, in the order
            the answers arrive.
        @raise ValueError: if C{number}'s text spans several lines.
        """
        request = _request(number)
        if self._address is not None:
            return defer.maybeDeferred(self._ask, self._address, request)
        d = self._reactor.resolve(self.host)
        d.addCallback(self._resolved)
        d.addCallback(self._ask, request)
        return d

    def _resolved(self, address):
        self._address = address
        return address

    def _ask(self, address, request):
        asking = _UDPRequest(
            self._reactor,
            request,
            self.timeout,
            self.retries,
        )
        interface = "::" if isIPv6Address(address) else ""
        port = self._reactor.listenUDP(0, asking, interface=interface)
        port.connect(address, self.port)
        asking.send()
        return asking.deferred


def _isIPAddress(host):
    return isIPAddress(host) or isIPv6Address(host)


def _hostPort(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# The command.


class Options(usage.Options):
    synopsis = "primed-client [options] [NUMBER ...]"
    longdesc = (
        "Ask primed whether each NUMBER is prime; with no NUMBER, read them "
        "from standard input, one per line. Prints each input, a tab and "
        "'prime', 'not prime' or 'invalid', in input order. Exit status: 0 "
        "if every input was answered, 1 if not (the output then stops at the "
        "first unanswered input, and one line on standard error says why), "
        "2 for a usage error. Options go before the numbers."
    )

    optFlags = [
        ["udp", "u", "Ask over UDP (default port %d)." % DEFAULT_UDP_PORT],
        ["raw", "r", "Print only the verdict letter: T, F or E."],
    ]
    optParameters = [
        ["host", "H", DEFAULT_HOST, "Server address or name."],
        [
            "port",
            "p",
            None,
            "Server port [default: %d, or %d with --udp]."
            % (DEFAULT_TCP_PORT, DEFAULT_UDP_PORT),
        ],
        [
            "endpoint",
            "e",
            None,
            "A Twisted client endpoint string (tcp:, unix:, ssl:) "
            "instead of --host and --port; TCP only.",
        ],
        [
            "timeout",
            "t",
            None,
            "Seconds: over TCP, to connect and the longest silence while "
            "answers are owed [default: %g]; over UDP, per attempt "
            "[default: %g]." % (DEFAULT_TCP_TIMEOUT, DEFAULT_UDP_TIMEOUT),
        ],
        [
            "retries",
            "n",
            str(DEFAULT_RETRIES),
            "UDP attempts after the first before giving up.",
        ],
    ]

    # Options that take a value, for _protectNegatives.
    _valued = {"-H", "-p", "-e", "-t", "-n", "--host", "--port", "--endpoint",
               "--timeout", "--retries"}

    def __init__(self):
        usage.Options.__init__(self)
        self["numbers"] = []

    def parseOptions(self, options=None):
        if options is None:
            options = sys.argv[1:]
        usage.Options.parseOptions(self, self._protectNegatives(list(options)))

    def _protectNegatives(self, arguments):
        """
        Let C{primed-client -5 17} mean numbers, not an unknown option C{-5}:
        insert C{--} before the first argument that looks like a negative
        number and is not an option's value.
        """
        index = 0
        while index < len(arguments):
            argument = arguments[index]
            if argument == "--" or not argument.startswith("-"):
                break
            if re.match(r"-[0-9]", argument):
                return arguments[:index] + ["--"] + arguments[index:]
            index += 2 if self._takesNext(argument) else 1
        return arguments

    def _takesNext(self, argument):
        """
        Whether option C{argument} takes the next argument as its value:
        C{--port}, C{-p}, or a cluster of short options ending in one that
        takes a value (C{-up}).  C{--port=1} and C{-p1} hold theirs.
        """
        if argument.startswith("--"):
            return argument in self._valued
        for position, letter in enumerate(argument[1:], 1):
            if "-" + letter in self._valued:
                return position == len(argument) - 1
        return False

    def opt_version(self):
        """
        Display the version and exit.
        """
        from importlib.metadata import PackageNotFoundError, version

        try:
            print("primed-client", version("primed"))
        except PackageNotFoundError:
            print("primed-client (not installed)")
        sys.exit(0)

    def parseArgs(self, *numbers):
        self["numbers"] = list(numbers)

    def postOptions(self):
        udp = self["udp"]
        if self["endpoint"] is not None:
            if udp:
                raise usage.UsageError("--endpoint is for TCP; use --host with --udp")
            if self["port"] is not None or self["host"] != DEFAULT_HOST:
                raise usage.UsageError("give either --endpoint or --host/--port")
            from twisted.internet import reactor

            try:
                endpoints.clientFromString(reactor, self["endpoint"])
            except Exception as e:  # the parsers raise anything at all
                raise usage.UsageError(f"--endpoint {self['endpoint']!r}: {e}")
        self["port"] = _number(
            "--port", self["port"], int, DEFAULT_UDP_PORT if udp else DEFAULT_TCP_PORT
        )
        if not 0 < self["port"] < 65536:
            raise usage.UsageError("--port must be between 1 and 65535")
        self["timeout"] = _number(
            "--timeout",
            self["timeout"],
            float,
            DEFAULT_UDP_TIMEOUT if udp else DEFAULT_TCP_TIMEOUT,
        )
        if not 0 < self["timeout"] < float("inf"):
            raise usage.UsageError("--timeout must be a positive number of seconds")
        self["retries"] = _number("--retries", self["retries"], int, DEFAULT_RETRIES)
        if self["retries"] < 0:
            raise usage.UsageError("--retries must be 0 or more")

    def where(self):
        """
        The server, as the error messages name it.
        """
        if self["endpoint"] is not None:
            return self["endpoint"]
        return _hostPort(self["host"], self["port"])


def _number(name, text, kind, default):
    if text is None:
        return default
    try:
        return kind(text)
    except ValueError:
        raise usage.UsageError(f"{name}: not a number: {text!r}") from None


_WORDS = {
    Verdict.PRIME: b"\tprime\n",
    Verdict.NOT_PRIME: b"\tnot prime\n",
    Verdict.INVALID: b"\tinvalid\n",
}
_LETTERS = {verdict: verdict.reply for verdict in Verdict}


class _Slot:
    """
    One input of a L{_Run}, in input order, and the receiver of its answer
    (see L{PrimedClientProtocol.request}).
    """

    __slots__ = ("run", "text", "verdict", "failure")

    def __init__(self, run, text):
        self.run = run
        self.text = text
        self.verdict = None
        self.failure = None

    def callback(self, verdict):
        self.run._answered(self, verdict)

    def errback(self, reason):
        self.run._answered(self, None, reason)


class _Run:
    """
    Feed inputs to C{send(number, receiver)} with at most C{window}
    unanswered, and print the answers in input order.

    The output is always a prefix of the inputs: the first request primed
    does not answer stops the run, and L{finished} fails with its error.
    Answers may arrive out of order (over UDP): a failure stops the sending
    at once, but ends the run only once every earlier input is printed.

    @ivar finished: fires with L{None} once every input given before L{end}
        is printed.
    """

    def __init__(self, send, window, write, flush, wantInput=lambda: None):
        self._send = send
        self._window = window
        self._write = write
        self._flush = flush
        self._wantInput = wantInput
        self._queued = collections.deque()  # inputs not sent yet
        self._sent = collections.deque()  # _Slots, input order
        self._inFlight = 0
        self._pumping = False
        self._asked = False
        self._ended = False
        self._failing = False  # an input failed: send nothing more
        self.finished = defer.Deferred()

    def feed(self, inputs):
        """
        Queue C{inputs} (the bytes each was given as).
        """
        self._asked = False
        self._queued.extend(inputs)
        self._pump()

    def end(self):
        """
        No more inputs.
        """
        self._ended = True
        self._pump()

    def fail(self, reason):
        """
        Stop, and fail L{finished} with C{reason}.
        """
        if self.finished.called:
            return
        try:
            self._flush()
        finally:
            # The flush may itself have failed the run (standard output
            # gone): the first reason stands.
            if not self.finished.called:
                self.finished.errback(reason)

    def _pump(self):
        # Replies may fire synchronously, calling back here: the flag turns
        # that recursion into another turn of this loop.
        if self._pumping:
            return
        self._pumping = True
        queued, sent, send, finished = self._queued, self._sent, self._send, self.finished
        try:
            while (
                queued
                and self._inFlight < self._window
                and not self._failing
                and not finished.called
            ):
                slot = _Slot(self, queued.popleft())
                sent.append(slot)
                self._inFlight += 1
                if slot.text.__class__ is _OverLong:
                    slot.callback(Verdict.INVALID)
                    continue
                try:
                    send(slot.text.decode("utf-8", "surrogateescape"), slot)
                except ValueError:
                    slot.callback(Verdict.INVALID)
        finally:
            self._pumping = False
        if self.finished.called or self._failing:
            return
        if self._inFlight == 0 and not self._queued:
            self._flush()
            if self._ended and not self.finished.called:
                self.finished.callback(None)
                return
        if not (self._ended or self._asked) and len(self._queued) < self._window:
            self._asked = True
            self._wantInput()

    def _answered(self, slot, verdict, failure=None):
        if self.finished.called or slot.verdict is not None or slot.failure is not None:
            return
        slot.verdict, slot.failure = verdict, failure
        if failure is not None:
            self._failing = True
        self._inFlight -= 1
        sent, write = self._sent, self._write
        while sent:
            slot = sent[0]
            if slot.failure is not None:
                self.fail(slot.failure)
                return
            if slot.verdict is None:
                break
            sent.popleft()
            write(slot.text, slot.verdict)
            if self.finished.called:
                return  # The output broke.
        self._pump()


class InputError(Exception):
    """
    The numbers to ask about could not be read.
    """


class _Reconnecting:
    """
    The command's TCP sender.  primed closes connections left idle, as a
    command reading a slow pipe or a terminal easily leaves one: a connection
    that closed owing nothing is replaced for the next request instead of
    ending the run.  One that closed owing answers still ends it.
    """

    def __init__(self, connect, protocol):
        self._connect = connect
        self.protocol = protocol
        self._waiting = None

    def request(self, number, receiver):
        if self._waiting is None and not self.protocol.lostIdle:
            self.protocol.request(number, receiver)
            return
        _request(number)  # Refuse now what the new connection would refuse.
        if self._waiting is not None:
            self._waiting.append((number, receiver))
            return
        self._waiting = [(number, receiver)]
        connecting = defer.ensureDeferred(self._connect())
        connecting.addCallbacks(self._connected, self._failed)

    def _connected(self, protocol):
        self.protocol = protocol
        waiting, self._waiting = self._waiting, None
        for number, receiver in waiting:
            protocol.request(number, receiver)

    def _failed(self, reason):
        waiting, self._waiting = self._waiting, None
        for number, receiver in waiting:
            receiver.errback(reason)


class _OverLong(bytes):
    """
    An input line longer than L{_StdinReader.MAX_LINE}, as it is echoed: its
    start and an ellipsis.  Far more than primed accepts, it is answered
    C{invalid} without asking.
    """


def _overLong(head):
    return _OverLong(head[: _OverLong.SHOWN] + "\N{HORIZONTAL ELLIPSIS}".encode())


_OverLong.SHOWN = 40


class _StdinReader:
    """
    Read a file descriptor in chunks, in a daemon thread, one chunk per
    L{more}.

    A thread rather than the reactor: standard input may be a regular file
    or C{/dev/null}, which epoll refuses, and a non-blocking descriptor
    would leak into whoever shares it.  A daemon thread rather than the
    reactor's pool: a read blocked on a terminal must not hold up exit.

    A line is kept until its newline arrives, but at most L{MAX_LINE}
    bytes of it: the rest of a longer line is discarded as it arrives, and
    the line passed on as an L{_OverLong}.

    @ivar partialHigh: the most bytes of an unfinished line held at once.
    """

    CHUNK = 1 << 16
    #: Far above primed's longest valid request (thousands of digits).
    MAX_LINE = 1 << 20

    def __init__(self, reactor, fd, lines, end, fail):
        self._reactor = reactor
        self._fd = fd
        self._lines = lines
        self._end = end
        self._fail = fail
        self._wanted = threading.Event()
        # The unfinished line: its chunks (joined once, at its newline) and
        # their length; or, once it is too long, its echo.
        self._parts = []
        self._partLength = 0
        self._discarding = None
        self.partialHigh = 0

    def start(self):
        threading.Thread(target=self._read, name="stdin", daemon=True).start()

    def more(self):
        """
        Ask for the next chunk.
        """
        self._wanted.set()

    def _read(self):
        while True:
            self._wanted.wait()
            self._wanted.clear()
            try:
                data = os.read(self._fd, self.CHUNK)
            except OSError as e:
                failure = Failure(InputError(f"cannot read standard input: {e.strerror}"))
                self._reactor.callFromThread(self._fail, failure)
                return
            self._reactor.callFromThread(self._received, data)
            if not data:
                return

    def _unfinished(self, last):
        """
        The unfinished line, completed by C{last}.
        """
        if self._discarding is not None:
            line, self._discarding = self._discarding, None
            return line
        if self._parts:
            self._parts.append(last)
            last = b"".join(self._parts)
            self._parts, self._partLength = [], 0
        return self._line(last)

    def _line(self, line):
        if len(line) > self.MAX_LINE:
            return _overLong(line)
        return _displayed(line)

    def _received(self, data):
        if not data:
            if self._parts or self._discarding is not None:
                self._lines([self._unfinished(b"")])
            self._end()
            return
        # Only this chunk is searched for newlines: a long line costs its
        # length, not its length squared.
        lines = data.split(b"\n")
        rest = lines.pop()
        if lines:
            lines[0] = self._unfinished(lines[0])
            if len(data) > self.MAX_LINE:
                lines[1:] = [self._line(line) for line in lines[1:]]
            else:
                lines[1:] = [_displayed(line) for line in lines[1:]]
        if rest and self._discarding is None:
            if self._partLength + len(rest) > self.MAX_LINE:
                self._parts.append(rest[: _OverLong.SHOWN])
                self._discarding = _overLong(b"".join(self._parts))
                self._parts, self._partLength = [], 0
            else:
                self._parts.append(rest)
                self._partLength += len(rest)
                if self._partLength > self.partialHigh:
                    self.partialHigh = self._partLength
        self._lines(lines)


def _displayed(line):
    # A CR before the newline belongs to the line ending, not the input.
    return line[:-1] if line.endswith(b"\r") else line


class _Output:
    """
    Answer lines on standard output, flushed when the run waits or ends; a
    reader gone away (C{| head}) stops the run quietly, any other write
    error (a full disk, C{> /dev/full}) stops it with L{error} set.

    @ivar broken: whether standard output failed; it then points at
        C{/dev/null}, and nothing more is written.
    @ivar error: the L{OSError} that broke it, unless that was a broken
        pipe.
    """

    def __init__(self, stream, raw):
        self._stream = stream
        self._words = _LETTERS if raw else _WORDS
        self._raw = raw
        self.broken = False
        self.error = None
        self.onBroken = lambda: None

    def write(self, text, verdict):
        if self.broken:
            return
        try:
            if self._raw:
                self._stream.write(self._words[verdict])
            else:
                self._stream.write(text + self._words[verdict])
        except OSError as e:
            self._broke(e)

    def flush(self):
        if self.broken:
            return
        try:
            self._stream.flush()
        except OSError as e:
            self._broke(e)

    def _broke(self, e):
        # As the Python documentation advises: point stdout at /dev/null so
        # the interpreter's own flush at exit cannot complain again (the
        # stream still holds what it could not write).
        self.broken = True
        if not isinstance(e, BrokenPipeError):
            self.error = e
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._stream.fileno())
            finally:
                os.close(devnull)
        except (OSError, ValueError):
            pass  # Not a real descriptor: nothing will flush it at exit.
        self.onBroken()


async def run(reactor, options, stdin, stdout, stderr) -> int:
    """
    The command, given parsed L{Options}.

    @param stdin: the descriptor to read numbers from when none were given.
    @param stdout: a binary stream for the answers.
    @param stderr: a text stream for the one-line error.
    @return: the exit status.
    """
    output = _Output(stdout, options["raw"])
    where = options.where()
    if options["udp"]:
        client = PrimedUDPClient(
            reactor, options["host"], options["port"], options["timeout"], options["retries"]
        )

        def send(number, receiver):
            client.check(number).addCallbacks(receiver.callback, receiver.errback)

        window, connection = UDP_WINDOW, None
    else:
        try:
            protocol = await _connectTCP(reactor, options)
        except Exception as e:
            stderr.write(f"primed-client: cannot connect to {where}: {_reason(e)}\n")
            return 1
        connection = _Reconnecting(lambda: _connectTCP(reactor, options), protocol)
        send, window = connection.request, TCP_WINDOW

    def wantInput():
        if reader is not None:
            reader.more()

    reader = None
    job = _Run(send, window, output.write, output.flush, wantInput)
    output.onBroken = lambda: job.fail(Failure(output.error or BrokenPipeError()))
    if options["numbers"]:
        job.feed([os.fsencode(number) for number in options["numbers"]])
        job.end()
    else:
        reader = _StdinReader(reactor, stdin, job.feed, job.end, job.fail)
        reader.start()
        job.feed([])
    try:
        await job.finished
    except InputError as e:
        stderr.write(f"primed-client: {e}\n")
        return 1
    except Exception as e:
        if output.error is not None:
            reason = output.error.strerror or _reason(output.error)
            stderr.write(f"primed-client: cannot write standard output: {reason}\n")
        elif not output.broken:
            stderr.write(f"primed-client: {where}: {_reason(e)}\n")
        return 1
    finally:
        if connection is not None:
            connection.protocol.transport.loseConnection()
    return 1 if output.broken else 0


async def _connectTCP(reactor, options):
    timeout = options["timeout"]
    if options["endpoint"] is not None:
        endpoint = endpoints.clientFromString(reactor, options["endpoint"])
    else:
        endpoint = endpoints.HostnameEndpoint(
            reactor, options["host"], options["port"], timeout=timeout
        )
    connecting = endpoints.connectProtocol(
        endpoint, PrimedClientProtocol(timeout, reactor)
    )
    # Endpoints without a timeout of their own (unix:, ssl: as given) still
    # get one.
    connecting.addTimeout(timeout + 1, reactor)
    return await connecting


def _reason(e):
    if isinstance(e, defer.TimeoutError):
        return "timed out"
    if isinstance(e, error.ConnectError) and isinstance(e.osError, int):
        return os.strerror(e.osError)
    message = str(e).strip()
    return message or type(e).__name__


def main(argv=None):
    """
    The C{primed-client} console script.
    """
    options = Options()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        sys.stderr.write(f"primed-client: {e}\nTry 'primed-client --help'.\n")
        sys.exit(2)

    async def command(reactor):
        reactor.callWhenRunning(_defaultSignals)
        # Buffered whatever PYTHONUNBUFFERED says: the run flushes whenever
        # it waits for input, so a terminal still sees each answer at once.
        stdout = open(1, "wb", buffering=1 << 16, closefd=False)
        code = await run(reactor, options, 0, stdout, sys.stderr)
        if code:
            raise SystemExit(code)

    task.react(command)


def _defaultSignals():
    """
    Let SIGINT and SIGTERM kill the command, as they kill C{cat}.  Twisted's
    handlers only ask the reactor to stop, which never happens while it is
    blocked writing to a full pipe; and a client holds nothing that needs
    an orderly shutdown.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


if __name__ == "__main__":
    main()
