"""
C{primed-client}'s progress line as a user sees it: the installed command
with standard error (and, in one test, standard input) on a real
pseudo-terminal the test reads, against the installed daemon.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time

from support import SharedDaemonTestCase
from test_client_cli import clientCommand


class TerminalRun:
    """
    C{primed-client} with standard error on a pseudo-terminal this test
    reads (the terminal a user watches), standard input a pipe the test
    writes, standard output a file.
    """

    def __init__(self, test, *args, stdinTerminal=False):
        import pty

        self.test = test
        master, slave = pty.openpty()
        self.master = master
        test.addCleanup(os.close, master)
        self.outPath = test.tempPath()
        with open(self.outPath, "wb") as out:
            self.process = subprocess.Popen(
                clientCommand() + [str(a) for a in args],
                stdin=slave if stdinTerminal else subprocess.PIPE, stdout=out, stderr=slave,
            )
        os.close(slave)
        test.addCleanup(self.kill)
        self.screen = b""
        self.started = time.monotonic()

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()

    def readUntil(self, condition, timeout=60):
        """
        Read the terminal until C{condition(screen)} or the client closes
        it; bounded by C{timeout}.
        """
        import select

        deadline = time.monotonic() + timeout
        while not condition(self.screen):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"not seen on the terminal: {self.screen[-300:]!r}")
            ready, _, _ = select.select([self.master], [], [], left)
            if not ready:
                continue
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                data = b""
            if not data:
                return False
            self.screen += data
        return True

    def finish(self):
        """
        Close standard input, read the terminal to its end, wait for the
        exit status; return it and the output.
        """
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.readUntil(lambda screen: False)
        code = self.process.wait(60)
        self.elapsed = time.monotonic() - self.started
        with open(self.outPath, "rb") as f:
            return code, f.read()


def renderRow(text):
    """
    What a terminal row shows after C{text}: a carriage return goes back to
    the first column, and what follows writes over what is there.
    """
    row, column = bytearray(), 0
    for byte in text:
        if byte == 13:
            column = 0
            continue
        if column < len(row):
            row[column] = byte
        else:
            row.append(byte)
        column += 1
    return bytes(row).rstrip()


class ProgressTests(SharedDaemonTestCase):
    """
    The progress line, seen on a real pseudo-terminal.
    """

    def tempPath(self):
        directory = tempfile.mkdtemp(prefix="primed-client-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        return os.path.join(directory, "output")

    def test_progressWhileReading(self):
        """
        Numbers on standard input, standard error a terminal: the line
        shows the answers so far while the client waits for more, is
        redrawn at most ten times a second, and is gone at the end; the
        terminal then holds nothing, the output every answer.
        """
        run = TerminalRun(self, "--port", self.daemon.tcpPort)
        run.process.stdin.write(b"17\n" * 1000)
        run.process.stdin.flush()
        self.assertTrue(run.readUntil(lambda screen: b"1,000 answered, " in screen))
        run.process.stdin.write(b"18\n" * 234)
        run.process.stdin.flush()
        self.assertTrue(run.readUntil(lambda screen: b"1,234 answered, " in screen))
        code, output = run.finish()
        self.assertEqual(code, 0)
        self.assertEqual(output, b"17\tprime\n" * 1000 + b"18\tnot prime\n" * 234)
        self.assertNotIn(b"\n", run.screen)
        self.assertEqual(renderRow(run.screen), b"")
        draws = run.screen.count(b" answered, ")
        self.assertLessEqual(draws, run.elapsed * 10 + 1)
        last = run.screen.rsplit(b"\r", 3)
        self.assertRegex(last[-3], rb"^1,234 answered, [0-9,]+/s, 0:[0-9]{2} *$")

    def test_bulk(self):
        """
        The independent check's run: 400 000 numbers through the client,
        a progress line seen, every answer printed.
        """
        run = TerminalRun(self, "--port", self.daemon.tcpPort)
        numbers = b"".join(b"%d\n" % n for n in range(1, 400001))
        run.process.stdin.write(numbers)
        code, output = run.finish()
        self.assertEqual(code, 0)
        self.assertEqual(output.count(b"\n"), 400000)
        self.assertRegex(run.screen, rb"\r[0-9,]+ answered, [0-9,]+/s, [0-9]+:[0-9]{2}")
        self.assertEqual(renderRow(run.screen), b"")

    def test_noProgress(self):
        """
        C{--no-progress}: nothing on the terminal, though the run lasts
        several redraw intervals (it waits for its input).
        """
        run = TerminalRun(self, "--no-progress", "--port", self.daemon.tcpPort)
        run.process.stdin.write(b"17\n")
        run.process.stdin.flush()
        for _ in range(1200):  # until the answer is out: the run then waits
            with open(run.outPath, "rb") as f:
                if f.read() == b"17\tprime\n":
                    break
            with self.assertRaises(AssertionError):
                run.readUntil(lambda screen: screen != b"", timeout=0.05)
        # Half a second more: five redraw intervals, with nothing drawn.
        with self.assertRaises(AssertionError):
            run.readUntil(lambda screen: screen != b"", timeout=0.5)
        code, output = run.finish()
        self.assertEqual((code, output, run.screen), (0, b"17\tprime\n", b""))

    def test_typedOnTerminal(self):
        """
        Standard input the terminal too: numbers typed one at a time draw no
        line over what is typed; numbers pasted or piped in by the thousand
        do.
        """
        run = TerminalRun(self, "--port", self.daemon.tcpPort, stdinTerminal=True)
        os.write(run.master, b"17\n")
        self.assertTrue(run.readUntil(lambda screen: screen == b"17\r\n"))  # the echo
        for _ in range(1200):  # until the answer is out: the run then waits
            with open(run.outPath, "rb") as f:
                if f.read() == b"17\tprime\n":
                    break
            with self.assertRaises(AssertionError):
                run.readUntil(lambda screen: screen != b"17\r\n", timeout=0.05)
        with self.assertRaises(AssertionError):  # five redraw intervals
            run.readUntil(lambda screen: screen != b"17\r\n", timeout=0.5)
        os.write(run.master, b"18\n" * 1000)
        self.assertTrue(run.readUntil(lambda screen: b"1,001 answered, " in screen))
        os.write(run.master, b"\x04")  # end of input
        code, output = run.finish()
        self.assertEqual((code, output), (0, b"17\tprime\n" + b"18\tnot prime\n" * 1000))

    def test_errorLineAlone(self):
        """
        A run that fails: the line is erased first, and the error line is
        all the terminal keeps.
        """
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            server.settimeout(30)
            port = server.getsockname()[1]
            run = TerminalRun(self, "--port", port)
            connection, _ = server.accept()
            with connection:
                connection.settimeout(30)
                run.process.stdin.write(b"17\n")
                run.process.stdin.flush()
                self.assertEqual(connection.recv(16), b"17\n")
                connection.sendall(b"T\n")
                self.assertTrue(run.readUntil(lambda screen: b"1 answered, " in screen))
                run.process.stdin.write(b"18\n")
                run.process.stdin.flush()
                self.assertEqual(connection.recv(16), b"18\n")
                connection.sendall(b"nope\n")
                code, output = run.finish()
        self.assertEqual((code, output), (1, b"17\tprime\n"))
        [row, end] = run.screen.split(b"\n")
        self.assertRegex(row, rb"answered, .*\r +\rprimed-client: ")
        self.assertEqual(
            renderRow(row),
            b"primed-client: 127.0.0.1:%d: the server sent b'nope\\n', not a verdict" % port,
        )
        self.assertEqual(end, b"")
