"""
End to end, C{primed-client} surviving a lost backend: the installed daemon
killed with SIGKILL in the middle of a bulk run, and the run still completes
with exit status 0 and every answer right, once each and in input order;
directly (another daemon started on the same port) and through a small
load balancer in the test (the new connection lands on the live backend).
When no backend comes back, the run ends with exit status 1 once the
retries are spent, its output a correct prefix, and one line on standard
error.
"""

import os
import select
import socket
import subprocess
import threading
import time

from twisted.trial import unittest

from support import Daemon
from test_client_cli import clientCommand, expectedLines, freePort

NUMBERS = [str(n) for n in range(1, 100001)]
INPUT = "".join(n + "\n" for n in NUMBERS).encode()


class BulkRun:
    """
    C{primed-client ARGS} reading L{INPUT} on its standard input, fed by a
    thread, its output read as it comes.
    """

    def __init__(self, *args):
        self.process = subprocess.Popen(
            clientCommand() + [str(a) for a in args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.out = b""
        self._writer = threading.Thread(target=self._write, daemon=True)
        self._writer.start()

    def _write(self):
        try:
            self.process.stdin.write(INPUT)
            self.process.stdin.close()
        except BrokenPipeError:
            pass  # The run ended early; the test looks at why.

    def readLines(self, count, timeout=60.0):
        """
        Read until C{count} lines in all have come, or the output ends.
        """
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while self.out.count(b"\n") < count and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    return
                self.out += chunk

    def finish(self, timeout=120.0):
        """
        Read the rest; return the exit status and standard error.
        """
        self.readLines(len(NUMBERS) + 1, timeout)
        try:
            status = self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(10)
            self._writer.join(10)
            self.process.stdout.close()
        stderr = self.process.stderr.read()
        self.process.stderr.close()
        return status, stderr.decode()


def forwarder(backends):
    """
    A small TCP load balancer: each connection goes to the first backend
    port that accepts it, bytes both ways, a half-close passed on.

    @return: its port, and a function that stops it.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    stopping = threading.Event()
    sockets = []

    def pump(source, sink):
        try:
            while True:
                data = source.recv(1 << 16)
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
        except OSError:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve():
        while not stopping.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            for port in backends:
                try:
                    backend = socket.create_connection(("127.0.0.1", port), timeout=5)
                    backend.settimeout(None)
                    break
                except OSError:
                    continue
            else:
                client.close()
                continue
            sockets.extend((client, backend))
            threading.Thread(target=pump, args=(client, backend), daemon=True).start()
            threading.Thread(target=pump, args=(backend, client), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def stop():
        stopping.set()
        listener.close()
        for s in sockets:
            s.close()
        thread.join(10)

    return listener.getsockname()[1], stop


def daemonOn(port):
    return Daemon("--listen", f"tcp:{port}:interface=127.0.0.1", "--no-udp", "--threads", "1")


class LostBackendTests(unittest.TestCase):
    def killMidRun(self, run, daemon):
        """
        Once a fifth of the answers are in, kill C{daemon} with SIGKILL.
        """
        run.readLines(len(NUMBERS) // 5)
        self.assertEqual(run.process.poll(), None, "the run ended before the kill")
        daemon.process.kill()
        daemon.wait(10)

    def test_daemonReplaced(self):
        """
        The daemon killed mid-run and another started on the same port: the
        client reconnects (retrying while it starts) and resends what was
        not answered; the run completes, exit status 0, every answer right.
        """
        port = freePort()
        first = daemonOn(port)
        first.start()
        second = None
        try:
            run = BulkRun("--port", port, "--retries", "10")
            self.killMidRun(run, first)
            second = daemonOn(port)
            second.start()
            status, stderr = run.finish()
        finally:
            first.stop()
            if second is not None:
                second.stop()
        self.assertEqual((status, stderr), (0, ""))
        self.assertEqual(run.out, expectedLines(NUMBERS))

    def test_throughBalancer(self):
        """
        Through a load balancer: with the default retries, the connection
        made again at once lands on the live backend.
        """
        ports = [freePort(), freePort()]
        backends = [daemonOn(port) for port in ports]
        stop = None
        try:
            for daemon in backends:
                daemon.start()
            balancer, stop = forwarder(ports)
            run = BulkRun("--port", balancer)
            self.killMidRun(run, backends[0])
            status, stderr = run.finish()
        finally:
            if stop is not None:
                stop()
            for daemon in backends:
                daemon.stop()
        self.assertEqual((status, stderr), (0, ""))
        self.assertEqual(run.out, expectedLines(NUMBERS))

    def test_retriesSpent(self):
        """
        No backend comes back: once the retries are spent the run ends with
        exit status 1, its output a correct prefix of the answers, and one
        line on standard error naming the server and what happened.
        """
        port = freePort()
        daemon = daemonOn(port)
        daemon.start()
        try:
            run = BulkRun("--port", port, "--retries", "2")
            self.killMidRun(run, daemon)
            status, stderr = run.finish()
        finally:
            daemon.stop()
        self.assertEqual(status, 1)
        lines = run.out.decode().splitlines(keepends=True)
        self.assertGreaterEqual(len(lines), len(NUMBERS) // 5)
        self.assertLess(len(lines), len(NUMBERS))
        self.assertEqual("".join(lines).encode(), expectedLines(NUMBERS[: len(lines)]))
        [line] = stderr.splitlines()
        self.assertTrue(line.startswith(f"primed-client: 127.0.0.1:{port}: "), line)
        self.assertIn("then 2 reconnection attempts failed (Connection refused)", line)
