"""
L{primed.client.progress}: the progress line of C{primed-client}, drawn by a
L{task.Clock} on a L{io.StringIO}; and when the command shows it, decided on
real pseudo-terminals (no mocked C{isatty}).
"""

import io
import os
import pty

from twisted.internet import task
from twisted.trial import unittest

from primed.client import cmd as clientcmd
from primed.client.cmd import Options
from primed.client.io import Output
from primed.client.progress import INTERVAL, Progress, SharedTerminal, formatElapsed
from primed.wire import Verdict


def render(text):
    """
    What a terminal shows of C{text} written on one row: each carriage
    return goes back to the first column, and writes over what is there.
    """
    row, column = [], 0
    for char in text:
        if char == "\r":
            column = 0
            continue
        if column < len(row):
            row[column] = char
        else:
            row.append(char)
        column += 1
    return "".join(row).rstrip()


class FormatTests(unittest.TestCase):
    def test_formatElapsed(self):
        self.assertEqual(
            [formatElapsed(s) for s in (0, 7.9, 60, 754, 3599, 3600, 3723, 36000)],
            ["0:00", "0:07", "1:00", "12:34", "59:59", "1:00:00", "1:02:03", "10:00:00"],
        )


class ProgressTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.stream = io.StringIO()
        self.answered = 0
        self.progress = Progress(self.clock, self.stream, lambda: self.answered)

    def advanceTo(self, seconds):
        """
        To C{seconds} after the start, a hair past: sums of tenths are not
        exact in binary.
        """
        self.clock.advance(seconds + 1e-9 - self.clock.seconds())

    def test_drawnTenTimesASecond(self):
        """
        Nothing before the first tenth of a second (a short run shows no
        line); then one redraw per tenth, never more, whatever happens in
        between.
        """
        self.progress.start()
        self.assertEqual(self.stream.getvalue(), "")
        self.assertFalse(self.progress.drawn)
        for tick in range(1, 21):
            self.answered += 1000
            self.advanceTo((tick - 0.5) * INTERVAL)
            self.assertEqual(self.stream.getvalue().count("\r"), tick - 1)
            self.advanceTo(tick * INTERVAL)
            self.assertEqual(self.stream.getvalue().count("\r"), tick)
        self.assertTrue(self.progress.drawn)
        self.assertEqual(render(self.stream.getvalue()), "20,000 answered, 10,000/s, 0:02")

    def test_rateOverRecentWindow(self):
        """
        The rate is that of the last 2 seconds or so, not of the whole run:
        a run that slows down shows it.
        """
        self.progress.start()
        for tick in range(1, 51):  # 5 s at 10,000 a second
            self.answered += 1000
            self.advanceTo(tick * INTERVAL)
        self.assertEqual(render(self.stream.getvalue()), "50,000 answered, 10,000/s, 0:05")
        for tick in range(51, 81):  # then 3 s at 1,000 a second
            self.answered += 100
            self.advanceTo(tick * INTERVAL)
        self.assertEqual(render(self.stream.getvalue()), "53,000 answered, 1,000/s, 0:08")

    def test_shorterLineCoversLonger(self):
        """
        A shorter line is padded over a longer one, and the erase covers
        the longest drawn last; the row ends empty.
        """
        self.progress.start()
        self.answered = 123456
        self.clock.advance(INTERVAL)
        self.answered = 123457
        self.clock.advance(5)  # the rate falls: a shorter line
        self.assertEqual(render(self.stream.getvalue()), "123,457 answered, 0/s, 0:05")
        self.progress.stop()
        self.assertFalse(self.progress.drawn)
        self.assertEqual(render(self.stream.getvalue()), "")
        self.assertTrue(self.stream.getvalue().endswith("\r"))
        drawn = len(self.stream.getvalue())
        self.clock.advance(1)
        self.assertEqual(len(self.stream.getvalue()), drawn)  # stopped

    def test_waitForFlow(self):
        """
        C{waitForFlow}: nothing while answers come as fast as a person
        types (here 9 a tenth of a second, and none); from the first tenth
        with 10, the usual line, kept even when answers slow down.
        """
        progress = Progress(self.clock, self.stream, lambda: self.answered, waitForFlow=True)
        progress.start()
        for tick, more in enumerate([1, 0, 9, 0, 5], 1):
            self.answered += more
            self.advanceTo(tick * INTERVAL)
        self.assertEqual(self.stream.getvalue(), "")
        self.answered += 10
        self.advanceTo(6 * INTERVAL)
        self.assertTrue(progress.drawn)
        self.assertEqual(render(self.stream.getvalue())[:13], "25 answered, ")
        self.advanceTo(7 * INTERVAL)
        self.assertEqual(self.stream.getvalue().count("\r"), 2)
        progress.stop()

    def test_stopBeforeDrawn(self):
        """
        A run over before the first redraw writes nothing at all.
        """
        self.progress.start()
        self.clock.advance(INTERVAL / 2)
        self.progress.stop()
        self.clock.advance(1)
        self.assertEqual(self.stream.getvalue(), "")

    def test_beforeDraw(self):
        """
        Each redraw first calls C{beforeDraw}: the command flushes the
        answers there, when they go to the same terminal.
        """
        calls = []
        progress = Progress(
            self.clock, self.stream, lambda: 0,
            beforeDraw=lambda: calls.append(self.stream.getvalue()),
        )
        progress.start()
        self.clock.advance(INTERVAL)
        self.clock.advance(INTERVAL)
        self.assertEqual(len(calls), 2)
        self.assertEqual(calls[0], "")

    def test_streamGone(self):
        """
        Standard error that can no longer be written stops the redraws,
        not the run.
        """
        stream = io.StringIO()
        progress = Progress(self.clock, stream, lambda: 0)
        progress.start()
        stream.close()
        self.clock.advance(INTERVAL)
        self.assertFalse(progress.drawn)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        progress.stop()


class SharedTerminalTests(unittest.TestCase):
    def test_answerErasesTheLine(self):
        """
        Standard output on the progress line's terminal: an answer first
        erases the line, so it starts at the first column, and the line
        comes back at the next redraw.
        """
        clock, screen = task.Clock(), io.StringIO()

        class Bytes:
            def write(self, data):
                screen.write(data.decode())

            def flush(self):
                pass

        output = Output(Bytes(), raw=False)
        progress = Progress(clock, screen, lambda: 1, beforeDraw=output.flush)
        output.shareTerminal(progress)
        progress.start()
        clock.advance(INTERVAL)
        self.assertTrue(progress.drawn)
        output.write(b"17", Verdict.PRIME)
        output.write(b"18", Verdict.NOT_PRIME)
        self.assertFalse(progress.drawn)
        self.assertEqual(
            [render(row) for row in screen.getvalue().split("\n")],
            ["17\tprime", "18\tnot prime", ""],
        )
        clock.advance(INTERVAL)
        self.assertTrue(progress.drawn)

    def test_passesThrough(self):
        stream = io.BytesIO()
        progress = Progress(task.Clock(), io.StringIO(), lambda: 0)
        shared = SharedTerminal(stream, progress)
        shared.write(b"x")
        shared.flush()
        self.assertEqual(stream.getvalue(), b"x")
        self.assertRaises(io.UnsupportedOperation, shared.fileno)


class WhenShownTests(unittest.TestCase):
    """
    Whether the command shows the line, on real pseudo-terminals and
    pipes.
    """

    def terminal(self):
        master, slave = pty.openpty()
        self.addCleanup(os.close, master)
        stream = open(slave, "w", closefd=True)
        self.addCleanup(stream.close)
        return stream

    def pipe(self):
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        stream = open(write, "w", closefd=True)
        self.addCleanup(stream.close)
        return stream

    def progress(self, argv, stdout, stderr, stdin=None):
        options = Options()
        options.parseOptions(argv)
        output = Output(stdout, False)
        progress = clientcmd._progress(task.Clock(), options, stdin, stdout, stderr, output)
        return progress, output

    def test_decision(self):
        terminal, pipe = self.terminal(), self.pipe()
        for argv, stderr, shown in [
            ([], terminal, True),  # standard input, a terminal: shown
            (["17"], terminal, False),  # numbers as arguments
            ([], pipe, False),  # standard error not a terminal
            (["--progress"], pipe, True),
            (["--progress", "17"], pipe, True),
            (["--no-progress"], terminal, False),
        ]:
            progress, output = self.progress(argv, io.BytesIO(), stderr)
            self.assertEqual(progress is not None, shown, (argv, stderr))

    def test_typedOnTerminal(self):
        """
        Standard input a terminal: the line waits for answers faster than
        typing, unless C{--progress}; a pipe or a file does not wait.
        """
        terminal, pipe = self.terminal(), self.pipe()
        for argv, stdin, waits in [
            ([], terminal.fileno(), True),
            (["--progress"], terminal.fileno(), False),
            ([], pipe.fileno(), False),
            ([], None, False),
        ]:
            progress, output = self.progress(argv, io.BytesIO(), terminal, stdin)
            self.assertEqual(progress._waiting, waits, (argv, stdin))

    def test_sharedTerminal(self):
        """
        Standard output on a terminal too: it erases the line first.
        """
        terminal = self.terminal()
        stdout = open(os.dup(terminal.fileno()), "wb")
        self.addCleanup(stdout.close)
        progress, output = self.progress([], stdout, terminal)
        self.assertIsInstance(output._stream, SharedTerminal)
        progress, output = self.progress([], io.BytesIO(), terminal)
        self.assertNotIsInstance(output._stream, SharedTerminal)

    def test_bothFlags(self):
        from twisted.python import usage

        self.assertRaises(usage.UsageError, Options().parseOptions,
                          ["--progress", "--no-progress"])
