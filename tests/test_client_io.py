"""
The command's plumbing (L{primed.client.io}): the run's window and order, the
standard input reader on real pipes.
"""

import os
import queue
import threading

from twisted.python.failure import Failure
from twisted.trial import unittest

from fakes import FakeUDPReactor
from primed import client
from primed.client import io as clientio
from primed.client import PrimedRefused, PrimedTimeout, PrimedUDPClient
from primed.wire import Verdict


class RunTests(unittest.TestCase):
    """
    L{clientio.Run}: bounded in flight, printed in input order.
    """

    def setUp(self):
        self.pending = {}
        self.printed = []
        self.flushes = 0
        self.wanted = 0

    def send(self, text, receiver):
        self.pending[text] = receiver

    def flush(self):
        self.flushes += 1

    def want(self):
        self.wanted += 1

    def run_(self, window=2):
        return clientio.Run(
            self.send, window, lambda t, v: self.printed.append((t, v)), self.flush, self.want
        )

    def test_windowAndOrder(self):
        run = self.run_()
        run.feed([b"2", b"3", b"4"])
        run.end()
        self.assertEqual(sorted(self.pending), ["2", "3"])
        self.pending["3"].callback(Verdict.PRIME)
        self.assertEqual(self.printed, [])
        self.assertEqual(sorted(self.pending), ["2", "3", "4"])
        self.pending["2"].callback(Verdict.PRIME)
        self.assertEqual(self.printed, [(b"2", Verdict.PRIME), (b"3", Verdict.PRIME)])
        self.assertNoResult(run.finished)
        self.pending["4"].callback(Verdict.NOT_PRIME)
        self.assertEqual(self.printed[-1], (b"4", Verdict.NOT_PRIME))
        self.successResultOf(run.finished)
        self.assertTrue(self.flushes)

    def test_synchronousAnswers(self):
        """
        A check that answers at once (a cached or local verdict) neither
        recurses nor stalls.
        """
        run = clientio.Run(
            lambda t, r: r.callback(Verdict.PRIME), 2, lambda t, v: self.printed.append(t),
            self.flush,
        )
        run.feed([b"%d" % i for i in range(5000)])
        run.end()
        self.successResultOf(run.finished)
        self.assertEqual(len(self.printed), 5000)

    def test_multiLineIsInvalid(self):
        def send(text, receiver):
            client._request(text)
            receiver.callback(Verdict.PRIME)

        run = clientio.Run(send, 2, lambda t, v: self.printed.append((t, v)), self.flush)
        run.feed([b"1\n2", b"3"])
        run.end()
        self.assertEqual(self.printed, [(b"1\n2", Verdict.INVALID), (b"3", Verdict.PRIME)])

    def test_firstFailureStops(self):
        """
        The output stays a prefix of the inputs: answers after a failure
        are not printed and nothing more is sent.
        """
        run = self.run_(window=3)
        run.feed([b"2", b"3", b"4", b"5"])
        run.end()
        self.pending["2"].callback(Verdict.PRIME)
        self.pending["4"].callback(Verdict.NOT_PRIME)
        self.pending["3"].errback(PrimedTimeout("no reply"))
        self.failureResultOf(run.finished, PrimedTimeout)
        self.pending["5"].callback(Verdict.PRIME)
        run.feed([b"6"])
        self.assertNotIn("6", self.pending)
        self.assertEqual(self.printed, [(b"2", Verdict.PRIME)])

    def test_laterFailureWaitsForEarlier(self):
        """
        Over UDP answers come out of order: a later input failing first
        stops the sending at once, but the run ends only when every earlier
        input is printed, so the output stops at the first unanswered input.
        """
        run = self.run_(window=3)
        run.feed([b"2", b"3", b"4", b"5", b"6"])
        run.end()
        self.pending["3"].callback(Verdict.PRIME)
        self.pending["4"].errback(PrimedTimeout("no reply"))
        self.pending["5"].callback(Verdict.PRIME)
        self.assertNoResult(run.finished)
        self.assertNotIn("6", self.pending)
        self.assertEqual(self.printed, [])
        self.pending["2"].callback(Verdict.PRIME)
        self.failureResultOf(run.finished, PrimedTimeout)
        self.assertEqual(self.printed, [(b"2", Verdict.PRIME), (b"3", Verdict.PRIME)])
        self.assertNotIn("6", self.pending)

    def test_firstOfSeveralFailuresWins(self):
        run = self.run_(window=3)
        run.feed([b"2", b"3", b"4"])
        run.end()
        self.pending["4"].errback(PrimedTimeout("no reply"))
        self.pending["3"].errback(PrimedRefused("port unreachable"))
        self.pending["2"].callback(Verdict.PRIME)
        self.failureResultOf(run.finished, PrimedRefused)
        self.assertEqual(self.printed, [(b"2", Verdict.PRIME)])

    def test_udpOutOfOrder(self):
        """
        The command's UDP path on the fake reactor: an input too long for a
        datagram is invalid and echoed shortened (its first 40 bytes and an
        ellipsis, as an over-long line); a refused later input does not hide
        the earlier answers that arrive after it.
        """
        reactor = FakeUDPReactor()
        udp = PrimedUDPClient(reactor, "127.0.0.1", 8808, timeout=1.0, retries=0)

        def send(text, receiver):
            udp.check(text).addCallbacks(receiver.callback, receiver.errback)

        run = clientio.Run(send, 64, lambda t, v: self.printed.append((t, v)), self.flush)
        big = b"1" * 70000
        run.feed([b"17", big, b"19", b"20", b"21"])
        run.end()
        # Ports: 17, big (closed at once), 19, 20, 21.
        ports = reactor.ports
        self.assertEqual(len(ports), 5)
        ports[4].protocol.connectionRefused()
        ports[3].reply(b"F\n")
        ports[2].reply(b"T\n")
        self.assertNoResult(run.finished)
        ports[0].reply(b"T\n")
        self.failureResultOf(run.finished, PrimedRefused)
        self.assertEqual(
            self.printed,
            [
                (b"17", Verdict.PRIME),
                (b"1" * 40 + "\N{HORIZONTAL ELLIPSIS}".encode(), Verdict.INVALID),
                (b"19", Verdict.PRIME),
                (b"20", Verdict.NOT_PRIME),
            ],
        )
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_overLongIsInvalid(self):
        """
        An over-long stdin line is answered invalid without being sent.
        """
        run = self.run_()
        marker = clientio._overLong(b"9" * 100)
        run.feed([marker, b"2"])
        run.end()
        self.assertEqual(sorted(self.pending), ["2"])
        self.pending["2"].callback(Verdict.PRIME)
        self.assertEqual(self.printed, [(marker, Verdict.INVALID), (b"2", Verdict.PRIME)])
        self.successResultOf(run.finished)

    def test_failingFlushFailsOnce(self):
        """
        A flush that itself fails the run (standard output gone) while the
        run is failing for another reason: L{_Run.finished} fails once, with
        the output's error, and nothing raises.
        """
        broken = []

        def flush():
            # As _Output.flush: the first failure only.
            if not broken:
                broken.append(True)
                run.fail(Failure(OSError(28, "No space left on device")))

        run = clientio.Run(self.send, 2, lambda t, v: None, flush)
        run.feed([b"2"])
        run.fail(Failure(PrimedTimeout("no reply")))
        self.failureResultOf(run.finished, OSError)

    def test_failingFlushAtEnd(self):
        """
        The last flush failing the run: L{_Run.finished} fails, and is not
        then called back as if everything had been printed.
        """
        broken = []

        def flush():
            # As _Output.flush: the first failure only.
            if not broken:
                broken.append(True)
                run.fail(Failure(OSError(28, "No space left on device")))

        run = clientio.Run(self.send, 2, lambda t, v: None, flush)
        run.end()
        self.failureResultOf(run.finished, OSError)

    def test_asksForInputWhenLow(self):
        run = self.run_()
        run.feed([])
        self.assertEqual(self.wanted, 1)
        run.feed([])
        self.assertEqual(self.wanted, 2)
        run.feed([b"2", b"3", b"4", b"5"])
        # Queue at 2, window 2: enough waiting, nothing asked.
        self.assertEqual(self.wanted, 2)

    def test_noInputEnds(self):
        run = self.run_()
        run.end()
        self.successResultOf(run.finished)
        self.assertEqual(self.printed, [])

    def test_overLongDoesNotStall(self):
        """
        The inputs after an over-long one are sent at once, not when more
        input or the end arrives.
        """
        run = self.run_()
        run.feed([clientio._overLong(b"9" * 100), b"2"])
        self.assertEqual(sorted(self.pending), ["2"])

    def test_undecodableSentAsGiven(self):
        """
        Bytes that are not UTF-8 reach C{send} surrogate-escaped (primed
        answers them invalid), not as an error of the run.
        """
        run = self.run_()
        run.feed([b"\xff7"])
        self.assertEqual(list(self.pending), ["\udcff7"])

    def test_asksOncePerFeed(self):
        """
        Input is asked for once until it arrives, however many answers come
        in meanwhile: the reader reads ahead no more than asked.
        """
        run = self.run_(window=4)
        run.feed([b"2", b"3"])
        self.assertEqual(self.wanted, 1)
        self.pending["2"].callback(Verdict.PRIME)
        self.pending["3"].callback(Verdict.PRIME)
        self.assertEqual(self.wanted, 1)
        run.feed([b"4"])
        self.assertEqual(self.wanted, 2)

    def test_noInputAskedAfterFailure(self):
        """
        Once an input failed, input that still arrives is not sent and no
        more is asked for.
        """
        run = self.run_()
        run.feed([b"2", b"3"])
        self.assertEqual(self.wanted, 1)
        self.pending.pop("3").errback(Failure(PrimedTimeout("no reply")))
        run.feed([b"4"])
        self.assertEqual(self.wanted, 1)
        self.assertEqual(list(self.pending), ["2"])

    def test_secondAnswerIgnored(self):
        """
        An input answered twice counts once: the window stays full.
        """
        run = self.run_(window=1)
        run.feed([b"2", b"3", b"4"])
        first = self.pending["2"]
        first.callback(Verdict.PRIME)
        self.assertEqual(sorted(self.pending), ["2", "3"])
        first.callback(Verdict.PRIME)
        self.assertEqual(sorted(self.pending), ["2", "3"])
        self.assertEqual(self.printed, [(b"2", Verdict.PRIME)])


class StdinReaderTests(unittest.TestCase):
    """
    L{clientio.StdinReader} on a pipe, its reactor calls collected in a queue
    (bounded waits throughout).
    """

    def read(self, data, chunk=None, maxLine=None):
        readFd, writeFd = os.pipe()
        self.addCleanup(os.close, readFd)
        calls = queue.Queue()

        class Reactor:
            def callFromThread(self, f, *args):
                calls.put((f, args))

        lines, ended, failed = [], [], []
        reader = clientio.StdinReader(
            Reactor(), readFd, lines.extend, lambda: ended.append(True), failed.append
        )
        if chunk:
            reader.CHUNK = chunk
        if maxLine:
            reader.MAX_LINE = maxLine
        self.reader = reader

        # A thread, as data may be more than the pipe holds.
        def write():
            with os.fdopen(writeFd, "wb") as w:
                w.write(data)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        reader.start()
        for _ in range(10000):
            reader.more()
            f, args = calls.get(timeout=10)
            f(*args)
            if ended or failed:
                break
        writer.join(10)
        self.assertFalse(writer.is_alive())
        return lines, ended, failed

    def test_documentedLimit(self):
        """
        docs/client.rst: "An input line over 1 MiB" is answered invalid unsent; one
        of exactly 1 MiB is sent as it is.
        """
        mib = 1 << 20
        lines, ended, failed = self.read(b"9" * mib + b"\n" + b"8" * (mib + 1) + b"\n")
        self.assertEqual([line.__class__ for line in lines], [bytes, clientio.OverLong])
        self.assertEqual(len(lines[0]), mib)
        self.assertTrue(lines[1].startswith(b"8" * 40))

    def test_lines(self):
        lines, ended, failed = self.read(b"17\r\n\n  5 \n1_000\n18", chunk=3)
        self.assertEqual(lines, [b"17", b"", b"  5 ", b"1_000", b"18"])
        self.assertEqual(ended, [True])

    def test_empty(self):
        self.assertEqual(self.read(b""), ([], [True], []))

    def test_longLine(self):
        """
        An 8 MiB line on a real pipe: read in chunks, at most MAX_LINE of it
        kept, passed on as an over-long marker echoing its start; the lines
        around it are untouched.
        """
        long = b"12345" * ((8 << 20) // 5)
        lines, ended, failed = self.read(b"2\n" + long + b"\n3\n" + long)
        ellipsis = "\N{HORIZONTAL ELLIPSIS}".encode()
        self.assertEqual(lines, [b"2", long[:40] + ellipsis, b"3", long[:40] + ellipsis])
        self.assertIs(type(lines[1]), clientio.OverLong)
        self.assertIs(type(lines[3]), clientio.OverLong)
        self.assertEqual((ended, failed), ([True], []))
        self.assertLessEqual(self.reader.partialHigh, clientio.StdinReader.MAX_LINE)
        self.assertGreater(self.reader.partialHigh, clientio.StdinReader.MAX_LINE // 2)

    def test_lineAtTheLimit(self):
        """
        A line of exactly MAX_LINE bytes, over several chunks, is a line; one
        byte more is over-long, whatever the chunks.
        """
        lines, ended, failed = self.read(
            b"1234567890\n12345678901\n1\n12345678901", chunk=3, maxLine=10
        )
        ellipsis = "\N{HORIZONTAL ELLIPSIS}".encode()
        self.assertEqual(
            lines, [b"1234567890", b"12345678901" + ellipsis, b"1", b"12345678901" + ellipsis]
        )
        self.assertEqual(self.reader.partialHigh, 10)

    def test_lineAtTheLimitAfterALongOne(self):
        """
        An over-long line leaves nothing counted against the next one: a
        line of exactly MAX_LINE bytes after it, over several chunks, is a
        line.
        """
        # Chunks: 1234 5678 9012 3456 7\n12 3456 7890 \n
        lines, ended, failed = self.read(
            b"12345678901234567\n1234567890\n", chunk=4, maxLine=10
        )
        ellipsis = "\N{HORIZONTAL ELLIPSIS}".encode()
        self.assertEqual(lines, [b"123456789012" + ellipsis, b"1234567890"])
        self.assertIs(type(lines[1]), bytes)

    def test_longLineInOneChunk(self):
        lines, ended, failed = self.read(b"1234567890123\n5\n", chunk=100, maxLine=10)
        self.assertEqual(lines, [b"1234567890123" + "\N{HORIZONTAL ELLIPSIS}".encode(), b"5"])

    def test_readError(self):
        calls = queue.Queue()

        class Reactor:
            def callFromThread(self, f, *args):
                calls.put((f, args))

        failed = []
        readFd, writeFd = os.pipe()
        os.close(readFd)
        os.close(writeFd)
        reader = clientio.StdinReader(Reactor(), readFd, None, None, failed.append)
        reader.start()
        reader.more()
        f, args = calls.get(timeout=10)
        f(*args)
        self.assertEqual(str(failed[0].value),
                         "cannot read standard input: Bad file descriptor")

    def test_noPartialLine(self):
        lines, ended, failed = self.read(b"17\n18\n")
        self.assertEqual(lines, [b"17", b"18"])
        self.assertEqual(self.reader.partialHigh, 0)

    def test_daemonThread(self):
        """
        The reading thread does not hold up exit while blocked on a read.
        """
        import threading

        readFd, writeFd = os.pipe()
        self.addCleanup(os.close, readFd)
        reader = clientio.StdinReader(None, readFd, None, None, None)
        before = set(threading.enumerate())
        reader.start()
        [thread] = set(threading.enumerate()) - before
        self.assertEqual((thread.name, thread.daemon), ("stdin", True))
        reader._reactor = type("Reactor", (), {"callFromThread": lambda self, f, *a: None})()
        reader.more()
        os.close(writeFd)  # the read returns b"": the thread ends
        thread.join(10)
        self.assertFalse(thread.is_alive())


class OutputTests(unittest.TestCase):
    """
    L{clientio.Output}: each verdict's line, exactly, in both forms.  Every
    verdict, so a form that printed C{T} for C{F} cannot pass.
    """

    def written(self, raw):
        import io

        stream = io.BytesIO()
        output = clientio.Output(stream, raw)
        for text, verdict in ((b"17", Verdict.PRIME), (b"18", Verdict.NOT_PRIME),
                              (b"4j", Verdict.INVALID)):
            output.write(text, verdict)
        output.flush()
        return stream.getvalue()

    def test_raw(self):
        self.assertEqual(self.written(raw=True), b"T\nF\nE\n")

    def test_plain(self):
        self.assertEqual(self.written(raw=False), b"17\tprime\n18\tnot prime\n4j\tinvalid\n")


class OutputErrorTests(unittest.TestCase):
    """
    L{clientio.Output} when standard output fails: broken once, quietly
    for a reader gone away, with the error for anything else; pointed at
    C{/dev/null} so the interpreter's own flush at exit cannot fail again.
    """

    class Failing:
        """
        A stream whose writes, or flushes, raise C{error}.
        """

        def __init__(self, error, on="write"):
            self.error = error
            self.on = on
            self.written = []

        def write(self, data):
            if self.on == "write":
                raise self.error
            self.written.append(data)

        def flush(self):
            if self.on == "flush":
                raise self.error

        def fileno(self):
            raise ValueError("no descriptor")

    def output(self, stream, raw=False):
        output = clientio.Output(stream, raw)
        self.broke = []
        output.onBroken = lambda: self.broke.append(output.broken)
        return output

    def test_fullDisk(self):
        import errno

        error = OSError(errno.ENOSPC, "No space left on device")
        stream = self.Failing(error)
        output = self.output(stream)
        self.assertEqual((output.broken, output.error), (False, None))
        output.write(b"17", Verdict.PRIME)
        self.assertEqual((output.broken, output.error, self.broke), (True, error, [True]))
        stream.on = None
        output.write(b"18", Verdict.NOT_PRIME)
        output.flush()
        self.assertEqual((stream.written, self.broke), ([], [True]))

    def test_fullDiskRaw(self):
        import errno

        output = self.output(self.Failing(OSError(errno.ENOSPC, "full")), raw=True)
        output.write(b"17", Verdict.PRIME)
        self.assertTrue(output.broken)
        self.assertEqual(output.error.errno, errno.ENOSPC)

    def test_readerGone(self):
        output = self.output(self.Failing(BrokenPipeError()))
        output.write(b"17", Verdict.PRIME)
        self.assertEqual((output.broken, output.error, self.broke), (True, None, [True]))

    def test_flushFails(self):
        import errno

        stream = self.Failing(OSError(errno.EIO, "I/O error"), on="flush")
        output = self.output(stream)
        output.write(b"17", Verdict.PRIME)
        self.assertEqual(stream.written, [b"17\tprime\n"])
        output.flush()
        self.assertEqual((output.broken, output.error.errno, self.broke), (True, errno.EIO, [True]))
        stream.on = None
        output.flush()
        output.write(b"18", Verdict.NOT_PRIME)
        self.assertEqual((stream.written, self.broke), ([b"17\tprime\n"], [True]))

    def test_noOnBroken(self):
        """
        Nobody told (no C{onBroken} set): the output breaks all the same.
        """
        output = clientio.Output(self.Failing(BrokenPipeError()), False)
        output.write(b"17", Verdict.PRIME)
        self.assertTrue(output.broken)

    def test_pointedAtDevNull(self):
        """
        On a real descriptor (a pipe whose reader is gone), the descriptor
        then points at C{/dev/null}, still open.
        """
        readFd, writeFd = os.pipe()
        os.close(readFd)
        stream = os.fdopen(writeFd, "wb", buffering=0)
        self.addCleanup(stream.close)
        output = self.output(stream)
        before = len(os.listdir("/proc/self/fd"))
        output.write(b"17", Verdict.PRIME)
        self.assertEqual((output.broken, output.error), (True, None))
        self.assertEqual(os.readlink(f"/proc/self/fd/{writeFd}"), os.devnull)
        stream.write(b"more")  # /dev/null takes anything
        # The descriptor opened to /dev/null was closed once copied.
        self.assertEqual(len(os.listdir("/proc/self/fd")), before)
