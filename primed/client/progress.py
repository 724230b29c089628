"""
The progress line of the C{primed-client} command: while a long run reads
its numbers from standard input, one line on standard error, redrawn at
most ten times a second, says how many were answered, how fast and for how
long; it is erased when the run ends, so only the answers (or the one error
line) stay.

It costs the run one integer increment per answer
(L{primed.client.io.Run.answered}) and one short write every tenth of a
second: the line is drawn by a timer, never by the answers themselves.
"""

import collections
from typing import Any

from twisted.internet import task

#: Seconds between redraws: at most ten a second.
INTERVAL = 0.1
#: Answers in one interval (100 a second) that no one typing reaches: see
#: C{waitForFlow}.
FLOW = 10
#: Seconds of history the rate is measured over: recent enough to show a
#: slowdown, long enough not to flicker.
RATE_WINDOW = 2.0


def formatElapsed(seconds: float) -> str:
    """
    C{"0:07"}, C{"12:34"}, C{"1:02:03"}.
    """
    seconds = int(seconds)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{seconds:02d}"
    return f"{minutes}:{seconds:02d}"


class Progress:
    """
    The progress line, drawn on C{stream} (a text stream: standard error)
    from C{count()}, the answers so far.

    The line is redrawn in place with a carriage return, padded with spaces
    over a longer previous line, and erased the same way: no escape
    sequence, so any terminal (even C{TERM=dumb}) shows it right.

    @ivar count: a callable returning how many inputs were answered.
    @ivar drawn: whether the line is on the screen now.
    """

    def __init__(self, clock, stream, count, beforeDraw=lambda: None, waitForFlow=False):
        """
        @param clock: an L{IReactorTime}.
        @param beforeDraw: called before each redraw: when standard output
            is the same terminal, it flushes the answers, so they never
            land after the progress line on its row.
        @param waitForFlow: draw nothing until answers come faster than
            anyone types (L{FLOW} in one interval), then go on as usual:
            for standard input on a terminal, where a person typing numbers
            must not see the line written over what they type, while
            numbers piped into a terminal (C{seq ... | script -c
            primed-client}) still get it.
        """
        self._clock = clock
        self._stream = stream
        self.count = count
        self._beforeDraw = beforeDraw
        self._loop = task.LoopingCall(self.draw)
        self._loop.clock = clock
        self._started = None
        self._samples: collections.deque[Any] = collections.deque()  # (time, count), oldest first
        self._width = 0
        self._waiting = waitForFlow
        self._lastCount = 0
        self.drawn = False

    def start(self):
        """
        Start the clock; the first line is drawn after L{INTERVAL}, so a
        short run never shows one.
        """
        self._started = self._clock.seconds()
        self._samples.append((self._started, 0))
        self._loop.start(INTERVAL, now=False)

    def text(self) -> str:
        """
        The line as it would be drawn now, and a sample for the rate.
        """
        now, answered = self._clock.seconds(), self.count()
        samples = self._samples
        samples.append((now, answered))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW:
            samples.popleft()
        then, before = samples[0]
        rate = (answered - before) / (now - then) if now > then else 0.0
        return (
            f"{answered:,} answered, {rate:,.0f}/s, "
            f"{formatElapsed(now - self._started)}"
        )

    def draw(self):
        if self._waiting:
            count = self.count()
            flowing = count - self._lastCount >= FLOW
            self._lastCount = count
            if not flowing:
                return
            self._waiting = False
        self._beforeDraw()
        text = self.text()
        if self._write("\r" + text.ljust(self._width)):
            self._width = len(text)
            self.drawn = True

    def erase(self):
        """
        Take the line off the screen (until the next redraw).
        """
        if self.drawn:
            self._write("\r" + " " * self._width + "\r")
            self._width = 0
            self.drawn = False

    def stop(self):
        """
        Stop redrawing, and erase the line.
        """
        if self._loop.running:
            self._loop.stop()
        self.erase()

    def _write(self, text) -> bool:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            # Standard error gone (a closed terminal): the run goes on.
            if self._loop.running:
                self._loop.stop()
            self.drawn = False
            return False
        return True


class SharedTerminal:
    """
    Standard output when it is the terminal the progress line is drawn on:
    each write first erases the line, so an answer never lands after it.
    Only then does the progress cost anything per write; the terminal
    itself is far slower.
    """

    def __init__(self, stream, progress):
        self._stream = stream
        self._progress = progress

    def write(self, data):
        if self._progress.drawn:
            self._progress.erase()
        return self._stream.write(data)

    def flush(self):
        return self._stream.flush()

    def fileno(self):
        return self._stream.fileno()
