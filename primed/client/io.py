"""
The plumbing of the C{primed-client} command: L{StdinReader} reads the
numbers, L{Run} keeps a window of them in flight and puts the answers back
in input order, L{Output} prints them.  None of it knows TCP from UDP: the
command (L{primed.client.cmd}) hands L{Run} a C{send} function.
"""

import collections
import os
import threading
from typing import Any, ClassVar

from twisted.internet import defer
from twisted.python.failure import Failure

from primed.client.base import PrimedRequestTooLong
from primed.client.progress import SharedTerminal
from primed.wire import Verdict

_WORDS = {
    Verdict.PRIME: b"\tprime\n",
    Verdict.NOT_PRIME: b"\tnot prime\n",
    Verdict.INVALID: b"\tinvalid\n",
}
_LETTERS = {verdict: verdict.reply for verdict in Verdict}


class _Slot:
    """
    One input of a L{Run}, in input order, and the receiver of its answer
    (see L{primed.client.PrimedClientProtocol.request}).
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


class Run:
    """
    Feed inputs to C{send(number, receiver)} with at most C{window}
    unanswered, and print the answers in input order.

    The output is always a prefix of the inputs: the first request primed
    does not answer stops the run, and L{finished} fails with its error.
    Answers may arrive out of order (over UDP): a failure stops the sending
    at once, but ends the run only once every earlier input is printed.

    @ivar finished: fires with L{None} once every input given before L{end}
        is printed.
    @ivar answered: how many answers were printed (for the progress line).
    """

    def __init__(self, send, window, write, flush, wantInput=lambda: None):
        self._send = send
        self._window = window
        self._write = write
        self._flush = flush
        self._wantInput = wantInput
        self._queued: collections.deque[Any] = collections.deque()  # inputs not sent yet
        self._sent: collections.deque[Any] = collections.deque()  # _Slots, input order
        self._inFlight = 0
        self._pumping = False
        self._asked = False
        self._ended = False
        self._failing = False  # an input failed: send nothing more
        self.answered = 0
        self.finished: defer.Deferred[Any] = defer.Deferred()

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
                if slot.text.__class__ is OverLong:
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
        if isinstance(getattr(failure, "value", failure), PrimedRequestTooLong):
            # Too long for a datagram: invalid, and echoed shortened, as an
            # over-long line is.
            slot.text = _overLong(slot.text)
            verdict, failure = Verdict.INVALID, None
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
            self.answered += 1
            if self.finished.called:
                return  # The output broke.
        self._pump()


class InputError(Exception):
    """
    The numbers to ask about could not be read.
    """


class OverLong(bytes):
    """
    An input line longer than L{StdinReader.MAX_LINE}, as it is echoed: its
    start and an ellipsis.  Far more than primed accepts, it is answered
    C{invalid} without asking.
    """

    #: How many bytes of the line are shown (set below).
    SHOWN: ClassVar[int]


def _overLong(head):
    return OverLong(head[: OverLong.SHOWN] + "\N{HORIZONTAL ELLIPSIS}".encode())


OverLong.SHOWN = 40


class StdinReader:
    """
    Read a file descriptor in chunks, in a daemon thread, one chunk per
    L{more}.

    A thread rather than the reactor: standard input may be a regular file
    or C{/dev/null}, which epoll refuses, and a non-blocking descriptor
    would leak into whoever shares it.  A daemon thread rather than the
    reactor's pool: a read blocked on a terminal must not hold up exit.

    A line is kept until its newline arrives, but at most L{MAX_LINE}
    bytes of it: the rest of a longer line is discarded as it arrives, and
    the line passed on as an L{OverLong}.

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
                self._parts.append(rest[: OverLong.SHOWN])
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


class Output:
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

    def shareTerminal(self, progress):
        """
        Standard output is the terminal L{progress} draws on: erase its line
        before each write.
        """
        self._stream = SharedTerminal(self._stream, progress)

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
