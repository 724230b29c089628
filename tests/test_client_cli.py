"""
C{primed-client} as its users run it: a subprocess, against the installed
C{twistd -n primed} on ephemeral loopback ports, or against sockets the
test owns that refuse or never answer.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import gmpy2
from twisted.trial import unittest

from support import (
    SEED_REPLIES,
    SEED_VALUES,
    CertificatesMixin,
    Daemon,
    SharedDaemonTestCase,
    socketsOf,
)

SEED_ARGS = [str(v) for v in SEED_VALUES]
SEED_WORDS = [
    {b"T\n": "prime", b"F\n": "not prime", b"E\n": "invalid"}[reply]
    for reply in SEED_REPLIES
]


def clientCommand():
    """
    The console script next to this Python, so the installed client is the
    one under test; the module when there is none.
    """
    script = os.path.join(os.path.dirname(sys.executable), "primed-client")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-m", "primed.client.cmd"]


def primedClient(*args, input=b"", stdin=None, timeout=60):
    """
    Run C{primed-client args}; return the completed process (bytes out and
    err).  Nothing is inherited: standard input is C{input} unless C{stdin}
    names a file descriptor.
    """
    return subprocess.run(
        clientCommand() + [str(a) for a in args],
        input=None if stdin is not None else input,
        stdin=stdin,
        capture_output=True,
        timeout=timeout,
    )


def freePort(kind=socket.SOCK_STREAM):
    """
    A loopback port nothing listens on (bound once, then closed).
    """
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def expectedLines(texts):
    lines = []
    for text in texts:
        n = int(text)
        lines.append(f"{text}\t{'prime' if n > 1 and gmpy2.is_prime(n) else 'not prime'}")
    return ("\n".join(lines) + "\n").encode()


class AgainstDaemonTests(SharedDaemonTestCase):
    """
    One daemon for the class: starting it costs more than every run below.
    """


    def tempPath(self):
        """
        A file name in a fresh temporary directory, removed after the test
        (trial's mktemp would litter the working directory under pytest).
        """
        directory = tempfile.mkdtemp(prefix="primed-client-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        return os.path.join(directory, "input")

    def tcp(self, *args, **kwargs):
        return primedClient("--port", self.daemon.tcpPort, *args, **kwargs)

    def assertAnswered(self, result, stdout):
        self.assertEqual((result.returncode, result.stderr), (0, b""))
        self.assertEqual(result.stdout.decode(), stdout)

    def test_seedValues(self):
        """
        The seed chapter's eight values, C{4j} sent as the text C{4j}.
        """
        result = self.tcp(*SEED_ARGS)
        self.assertAnswered(
            result, "".join(f"{a}\t{w}\n" for a, w in zip(SEED_ARGS, SEED_WORDS))
        )

    def test_seedValuesUDP(self):
        result = primedClient("--udp", "--port", self.daemon.udpPort, *SEED_ARGS)
        self.assertAnswered(
            result, "".join(f"{a}\t{w}\n" for a, w in zip(SEED_ARGS, SEED_WORDS))
        )

    def test_raw(self):
        result = self.tcp("--raw", *SEED_ARGS)
        self.assertAnswered(result, b"".join(SEED_REPLIES).decode())

    def test_rawUDP(self):
        result = primedClient("--udp", "-p", self.daemon.udpPort, "-r", "17", "18", "4j")
        self.assertAnswered(result, "T\nF\nE\n")

    def test_rawAndPlainEveryVerdict(self):
        """
        Both output forms, over TCP and UDP, from the arguments and from
        standard input: each of T, F and E printed for its own verdict.
        """
        for transport in (["--port", self.daemon.tcpPort], ["--udp", "--port", self.daemon.udpPort]):
            for raw, expected in ((["--raw"], "T\nF\nE\nF\n"),
                                  ([], "17\tprime\n18\tnot prime\n4j\tinvalid\n-5\tnot prime\n")):
                self.assertAnswered(primedClient(*transport, *raw, "17", "18", "4j", "-5"),
                                    expected)
                self.assertAnswered(primedClient(*transport, *raw, input=b"17\n18\n4j\n-5\n"),
                                    expected)

    def test_endpoint(self):
        result = primedClient(
            "--endpoint", f"tcp:host=127.0.0.1:port={self.daemon.tcpPort}", "-r", "2", "9"
        )
        self.assertAnswered(result, "T\nF\n")

    def test_negativeFirst(self):
        """
        C{primed-client -5 17}: numbers, not an unknown option C{-5}.
        """
        self.assertAnswered(self.tcp("-5", "17"), "-5\tnot prime\n17\tprime\n")

    def test_stdin(self):
        """
        Inputs echoed as given (a CR before the newline dropped), the last
        line answered even without its newline.
        """
        result = self.tcp(input=b"17\r\n\n  5 \n1_000\n\xff\n-0\n18")
        self.assertEqual((result.returncode, result.stderr), (0, b""))
        self.assertEqual(
            result.stdout,
            b"17\tprime\n\tinvalid\n  5 \tprime\n1_000\tinvalid\n\xff\tinvalid\n"
            b"-0\tnot prime\n18\tnot prime\n",
        )

    def test_stdinMany(self):
        """
        Many numbers from standard input, pipelined: every answer, in input
        order.
        """
        texts = [str(n) for n in range(-100, 30000)]
        result = self.tcp(input=("\n".join(texts) + "\n").encode())
        self.assertEqual((result.returncode, result.stderr), (0, b""))
        self.assertEqual(result.stdout, expectedLines(texts))

    def test_stdinUDP(self):
        texts = [str(n) for n in range(2000)]
        result = primedClient(
            "--udp", "--port", self.daemon.udpPort, input=("\n".join(texts)).encode()
        )
        self.assertEqual((result.returncode, result.stderr), (0, b""))
        self.assertEqual(result.stdout, expectedLines(texts))

    def test_udpTooLongForADatagram(self):
        """
        Over UDP an input too long for a datagram (70 000 digits, from the
        arguments or standard input) is answered invalid and echoed as its
        first 40 bytes and an ellipsis, as docs/client.rst says.
        """
        big = "9" * 70000
        expected = "17\tprime\n" + "9" * 40 + "\N{HORIZONTAL ELLIPSIS}\tinvalid\n18\tnot prime\n"
        result = primedClient("--udp", "--port", self.daemon.udpPort, "17", big, "18")
        self.assertAnswered(result, expected)
        result = primedClient("--udp", "--port", self.daemon.udpPort,
                              input=f"17\n{big}\n18\n".encode())
        self.assertAnswered(result, expected)

    def test_stdinRegularFileAndDevNull(self):
        """
        Standard input from a file or C{/dev/null}, which the epoll reactor
        could not watch.
        """
        path = self.tempPath()
        with open(path, "wb") as f:
            f.write(b"2\n3\n4\n")
        with open(path, "rb") as f:
            result = self.tcp("--raw", stdin=f.fileno())
        self.assertAnswered(result, "T\nT\nF\n")
        with open(os.devnull, "rb") as f:
            self.assertAnswered(self.tcp(stdin=f.fileno()), "")

    def bulkClient(self, stderr):
        """
        primed-client reading 200 000 numbers from a file, its output on a
        pipe the test reads (or not).
        """
        path = self.tempPath()
        with open(path, "wb") as f:
            f.write(b"".join(b"%d\n" % n for n in range(200000)))
        with open(path, "rb") as numbers:
            return subprocess.Popen(
                clientCommand() + ["--port", str(self.daemon.tcpPort)],
                stdin=numbers,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )

    def test_terminatedWhileBlocked(self):
        """
        SIGTERM ends a client blocked writing to a pipe nobody reads.
        """
        process = self.bulkClient(stderr=subprocess.DEVNULL)
        try:
            process.stdout.read(1)  # running, and its output pipe filling
            process.terminate()
            status = process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
            process.stdout.close()
        self.assertEqual(status, -signal.SIGTERM)

    def test_stdinLongLine(self):
        """
        An 8 MiB line is answered invalid, echoed shortened, without holding
        up the lines around it.
        """
        long = b"7" * (8 << 20)
        result = self.tcp(input=b"2\n" + long + b"\n3\n")
        self.assertAnswered(result, f"2\tprime\n{'7' * 40}\u2026\tinvalid\n3\tprime\n")

    def test_argumentsWinOverStdin(self):
        self.assertAnswered(self.tcp("-r", "2", input=b"4\n"), "T\n")

    def test_multiLineArgument(self):
        """
        An argument holding a newline is one invalid input, not two requests.
        """
        self.assertAnswered(self.tcp("-r", "1\n2", "3"), "E\nT\n")

    def test_readerGoneAway(self):
        """
        C{primed-client | head -1}: the reader closes the pipe; the client
        stops quietly.
        """
        process = self.bulkClient(stderr=subprocess.PIPE)
        # Only the first line is read, as head -1 would; then the pipe goes.
        first = process.stdout.readline()
        process.stdout.close()
        try:
            status = process.wait(60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        error = process.stderr.read()
        process.stderr.close()
        self.assertEqual(first, b"0\tnot prime\n")
        self.assertEqual(status, 1)
        self.assertNotIn(b"Traceback", error)

    def fullOutput(self, *args, input=b""):
        """
        Run C{primed-client args > /dev/full}.
        """
        with open("/dev/full", "wb") as full:
            return subprocess.run(
                clientCommand() + ["--port", str(self.daemon.tcpPort)] + list(args),
                input=input,
                stdout=full,
                stderr=subprocess.PIPE,
                timeout=60,
            )

    def assertCannotWrite(self, result):
        lines = result.stderr.decode().splitlines()
        self.assertEqual(
            (result.returncode, lines),
            (1, ["primed-client: cannot write standard output: No space left on device"]),
        )

    def test_outputFull(self):
        """
        C{> /dev/full}: exit status 1 and one line saying why, not a hang
        with a traceback.
        """
        self.assertCannotWrite(self.fullOutput("17", "18"))

    def test_outputFullStdin(self):
        """
        The same while reading standard input, the error arising mid-run.
        """
        numbers = b"".join(b"%d\n" % n for n in range(100000))
        self.assertCannotWrite(self.fullOutput(input=numbers))

    def test_outputFullUDP(self):
        with open("/dev/full", "wb") as full:
            result = subprocess.run(
                clientCommand() + ["--udp", "--port", str(self.daemon.udpPort), "17"],
                stdout=full,
                stderr=subprocess.PIPE,
                timeout=60,
            )
        self.assertCannotWrite(result)


class IdleTimeoutTests(unittest.TestCase):
    def ask(self, process, number):
        process.stdin.write(number + b"\n")
        process.stdin.flush()
        return process.stdout.readline()

    def test_outlivesIdleTimeout(self):
        """
        Input that pauses longer than primed's idle timeout: the closed
        connection is replaced and every line answered.
        """
        with Daemon(
            "--listen", "tcp:0:interface=127.0.0.1", "--no-udp", "--idle-timeout", "0.3"
        ) as daemon:
            process = subprocess.Popen(
                clientCommand() + ["--port", str(daemon.tcpPort), "--raw"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            try:
                answers = [self.ask(process, b"2")]
                # Wait until the client has seen the idle close (it closed
                # its one socket): a request written while the close is
                # still on its way would be lost with the connection, and
                # that is not what this tests.
                daemon.waitForLog("Closing idle connection", timeout=10)
                deadline = time.monotonic() + 10
                while socketsOf(process.pid):
                    self.assertLess(time.monotonic(), deadline, "the client kept its socket")
                    time.sleep(0.01)
                answers.append(self.ask(process, b"4"))
                process.stdin.close()
                status = process.wait(30)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait(10)
                process.stdout.close()
                error = process.stderr.read()
                process.stderr.close()
        self.assertEqual((answers, status, error), ([b"T\n", b"F\n"], 0, b""))


class FailureTests(unittest.TestCase):
    """
    What cannot be answered: exit status 1 and one line on standard error
    naming the server.
    """

    def assertOneLineError(self, result, *fragments):
        self.assertEqual(result.returncode, 1, result)
        lines = result.stderr.decode().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith("primed-client: "), lines)
        for fragment in fragments:
            self.assertIn(fragment, lines[0])
        return lines[0]

    def test_connectionRefused(self):
        port = freePort()
        result = primedClient("--port", port, "17")
        self.assertOneLineError(result, f"127.0.0.1:{port}", "refused")
        self.assertEqual(result.stdout, b"")

    def test_connectionRefusedStdin(self):
        port = freePort()
        result = primedClient("--port", port, input=b"17\n")
        self.assertOneLineError(result, f"127.0.0.1:{port}")

    def test_udpRefused(self):
        port = freePort(socket.SOCK_DGRAM)
        result = primedClient("--udp", "--port", port, "--timeout", "30", "17")
        self.assertOneLineError(result, f"127.0.0.1:{port}", "unreachable")

    def test_udpUnsendable(self):
        """
        An address no datagram may go to (broadcast, without SO_BROADCAST):
        one line, and no "Unhandled error in Deferred" after it.
        """
        result = primedClient("--udp", "--host", "255.255.255.255", "--port", 9, "17", "18")
        self.assertOneLineError(result, "255.255.255.255:9", "Permission denied")

    def test_udpTimeoutWithRetries(self):
        """
        A UDP socket that receives but never answers: each attempt waits
        C{--timeout}, C{--retries} more are sent, then the client gives up.
        """
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            port = silent.getsockname()[1]
            result = primedClient(
                "--udp", "--port", port, "--timeout", "0.2", "--retries", "2", "17"
            )
            silent.setblocking(False)
            received = []
            for _ in range(100):
                try:
                    received.append(silent.recv(100))
                except BlockingIOError:
                    break
        self.assertOneLineError(result, f"127.0.0.1:{port}", "3 attempts")
        self.assertEqual(received, [b"17\n"] * 3)
        self.assertEqual(result.stdout, b"")

    def test_tcpSilentServer(self):
        """
        A TCP server that accepts but never answers: given up after
        C{--timeout} seconds of silence.
        """
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(1)
            port = silent.getsockname()[1]
            result = primedClient("--port", port, "--timeout", "0.5", "17")
        # Silent from the start: not tried again (it took 4 timeouts).
        line = self.assertOneLineError(result, f"127.0.0.1:{port}", "no reply")
        self.assertEqual(
            line, f"primed-client: 127.0.0.1:{port}: no reply for 0.5 s;"
                  " if it expects TLS, try --tls")

    def test_notPrimed(self):
        """
        A server that answers something other than verdicts.
        """
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            port = server.getsockname()[1]
            process = subprocess.Popen(
                clientCommand() + ["--port", str(port), "17"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            try:
                server.settimeout(30)
                connection, _ = server.accept()
                with connection:
                    connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                    out, err = process.communicate(timeout=60)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.communicate(timeout=10)
        self.assertOneLineError(
            subprocess.CompletedProcess([], process.returncode, out, err),
            f"127.0.0.1:{port}: the server sent b'HTTP/1.1 400 Bad Request\\r\\n\\r\\n',"
            " not a verdict",
        )
        self.assertNotIn(b"--tls", err)

    def test_closedWithoutAnswering(self):
        """
        A server that reads the request and closes without a word (over its
        connection limit, or a TLS server refusing plain text): said so,
        with both likely causes, after the usual reconnection attempts.
        """
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(8)
            server.settimeout(30)
            port = server.getsockname()[1]
            process = subprocess.Popen(
                clientCommand() + ["--port", str(port), "17"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            accepted = 0
            try:
                for _ in range(4):  # the first connection and 3 retries
                    connection, _ = server.accept()
                    with connection:
                        accepted += 1
                        connection.settimeout(30)
                        self.assertEqual(connection.recv(16), b"17\n")
                out, err = process.communicate(timeout=60)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.communicate(timeout=10)
        self.assertEqual(accepted, 4)
        self.assertOneLineError(
            subprocess.CompletedProcess([], process.returncode, out, err),
            f"127.0.0.1:{port}: the server closed the connection without answering"
            " (perhaps over its connection limit); the same on 3 reconnection attempts;"
            " if it expects TLS, try --tls",
        )

    def test_udpOneAttempt(self):
        """
        Plain grammar: "1 attempt".
        """
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            port = silent.getsockname()[1]
            result = primedClient(
                "--udp", "--port", port, "--timeout", "0.2", "--retries", "0", "17"
            )
        self.assertOneLineError(result, "no reply after 1 attempt of 0.2 s each")


class PlainTextToTLSTests(CertificatesMixin, unittest.TestCase):
    """
    The client without C{--tls} against the installed daemon's C{ssl:}
    listener: the listener answers the plain request with a TLS alert, and
    the client says so at once, suggesting C{--tls}.  It waited 42 s (4
    times its 10 s timeout) before.
    """

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.daemon = Daemon(
            "--listen",
            f"ssl:0:interface=127.0.0.1:privateKey={cls.paths['key']}"
            f":certKey={cls.paths['cert']}",
            "--no-udp",
        )
        cls.daemon.start()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()
        super().tearDownClass()

    def assertToldTLS(self, result, elapsed):
        self.assertEqual(result.returncode, 1, result)
        lines = result.stderr.decode().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(
            lines[0],
            r"^primed-client: 127\.0\.0\.1:\d+: the server sent b'\\x15\\x03.*',"
            r" not a verdict; it looks like TLS: try --tls$",
        )
        self.assertEqual(result.stdout, b"")
        # Measured at about 0.3 s (most of it starting Python); 5 s is the
        # target, a loaded machine gets some slack.
        self.assertLess(elapsed, 15)

    def test_arguments(self):
        start = time.monotonic()
        result = primedClient("--port", self.daemon.tlsPort, "17", "18")
        self.assertToldTLS(result, time.monotonic() - start)

    def test_stdin(self):
        start = time.monotonic()
        result = primedClient("--port", self.daemon.tlsPort, input=b"17\n" * 1000)
        self.assertToldTLS(result, time.monotonic() - start)

    def test_withTLS(self):
        """
        The advice taken: answered.
        """
        result = primedClient("--port", self.daemon.tlsPort, "--tls", "--ca", self.paths["ca"],
                              "--server-name", "localhost", "17")
        self.assertEqual((result.returncode, result.stdout, result.stderr),
                         (0, b"17\tprime\n", b""))


class UsageTests(unittest.TestCase):
    def test_usageErrors(self):
        for args in (
            ["--bogus"],
            ["--port", "http"],
            ["--port", "70000"],
            ["--timeout", "0"],
            ["--retries", "-1"],
            ["--udp", "--endpoint", "unix:path=/x"],
            ["--endpoint", "nonsense:1"],
        ):
            result = primedClient(*args, "17")
            self.assertEqual(result.returncode, 2, (args, result))
            self.assertEqual(result.stdout, b"")
            self.assertNotIn(b"Traceback", result.stderr)
            self.assertTrue(result.stderr.startswith(b"primed-client: "), result.stderr)

    def test_help(self):
        result = primedClient("--help")
        self.assertEqual(result.returncode, 0)
        for option in (b"--host", b"--port", b"--udp", b"--timeout", b"--retries", b"--raw"):
            self.assertIn(option, result.stdout)
