"""
End to end on loopback: the installed C{twistd -n primed} behind a
C{haproxy:} listener, spoken to by real clients (C{nc -N} sending a PROXY
header by hand, and sockets).
"""

import socket
import subprocess
import threading
import time

from twisted.trial import unittest

import shutil
import tempfile

from support import Daemon, SharedDaemonTestCase, ask, askTLS, makeCertificates, readAll

V1 = b"PROXY TCP4 203.0.113.5 127.0.0.1 40123 8809\r\n"
V2_LOCAL = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"


class ProxyListenerTests(SharedDaemonTestCase):
    daemonArgs = ("--listen", "haproxy:tcp:0:interface=127.0.0.1", "--no-udp", "--verbose",
                  "--proxy-timeout", "1")

    def test_ncHalfClose(self):
        """
        C{nc -N} half-closes after the input: every line is answered, and
        the address from the header is the one logged.
        """
        result = subprocess.run(["nc", "-N", "127.0.0.1", str(self.daemon.tcpPort)],
                                input=V1 + b"4j\n4\n5\n-5\n17\n29", capture_output=True,
                                timeout=20)
        self.assertEqual(result.stdout, b"E\nF\nT\nF\nT\nT\n")
        self.daemon.waitForLog("203.0.113.5:40123 asked b'29': T")

    def test_v2Local(self):
        self.assertEqual(ask(self.daemon.tcpPort, V2_LOCAL + b"2\n"), b"T\n")

    def test_missingHeader(self):
        """
        No header: no answer, the connection is closed, one log line.
        """
        self.assertEqual(ask(self.daemon.tcpPort, b"17\n"), b"")
        self.daemon.waitForLog("without answering: no PROXY header")

    def test_silentClientTimedOut(self):
        with socket.create_connection(("127.0.0.1", self.daemon.tcpPort), timeout=10) as sock:
            sock.sendall(b"PROXY TCP4")
            started = time.monotonic()
            self.assertEqual(readAll(sock, 10), b"")
            self.assertLess(time.monotonic() - started, 9)  # closed by primed, not by readAll


class QuietListenerTests(unittest.TestCase):
    def test_manyRequestsOneConnection(self):
        """
        100 000 pipelined requests behind a header, sent while the replies
        are read (backpressure works both ways), then a half-close.
        """
        payload = V1 + b"".join(b"%d\n" % n for n in range(100000))
        with Daemon("--listen", "haproxy:tcp:0:interface=127.0.0.1", "--no-udp") as daemon:
            with socket.create_connection(("127.0.0.1", daemon.tcpPort), timeout=30) as sock:
                def send():
                    sock.sendall(payload)
                    sock.shutdown(socket.SHUT_WR)

                sender = threading.Thread(target=send)
                sender.start()
                reply = readAll(sock, 60)
                sender.join(30)
        self.assertEqual(reply.count(b"\n"), 100000)
        self.assertEqual(reply.count(b"T"), 9592)

    def test_reusePortWithHeader(self):
        with Daemon("--listen", "haproxy:tcp:0:interface=127.0.0.1", "--no-udp",
                    "--reuseport") as daemon:
            self.assertEqual(ask(daemon.tcpPort, V1 + b"17\n"), b"T\n")
            self.assertEqual(ask(daemon.tcpPort, b"17\n"), b"")


class TLSTests(unittest.TestCase):
    def test_headerThenTLS(self):
        """
        C{haproxy:ssl:…}: the header in clear, then TLS; a client that
        half-closes gets its answers, and the header's address is logged.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        paths = makeCertificates(directory)
        with Daemon("--listen", f"haproxy:ssl:0:interface=127.0.0.1:privateKey={paths['key']}"
                    f":certKey={paths['cert']}", "--no-udp", "--verbose") as daemon:
            for stop in ("fin", "close_notify"):
                reply, _ = askTLS(daemon.tlsPort, b"17\n18", paths["ca"], stop=stop, prefix=V1)
                self.assertEqual(reply, b"T\nF\n")
            daemon.waitForLog("203.0.113.5:40123 asked b'18': F")
            reply, _ = askTLS(daemon.tlsPort, b"17\n", paths["ca"], prefix=V2_LOCAL)
            self.assertEqual(reply, b"T\n")
