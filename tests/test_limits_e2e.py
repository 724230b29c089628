"""
End to end, the limits of issue 5 on the installed C{twistd -n primed}:
connection limit, idle timeout and slowloris, over-long input, a client that
never reads, UDP over-size and UDP drops.  The protocol-level behaviour is
unit-tested in test_tcp and test_udp; here the real daemon, its sockets and
its memory are what is checked.

No assertion is about wall-clock time: every wait has a generous bound only
so that a broken daemon fails the test instead of hanging it.
"""

import select
import socket
import threading
import time

from twisted.trial import unittest

from support import Daemon, SharedDaemonTestCase, ask, askUDP, readAll

MiB = 1 << 20

#: 10**4299 + 3187, the next prime after 10**4299: the largest number the
#: daemon checks by default (4300 digits), about a second per check.
MAX_PRIME_LINE = b"1" + b"0" * 4295 + b"3187\n"
#: 2**4253 - 1, a Mersenne prime of 1281 digits: pool work, tens of ms.
MERSENNE_4253 = b"%d" % (2**4253 - 1)

_TCP_ONLY = ["--listen", "tcp:0:interface=127.0.0.1", "--no-udp"]


def waitClosed(sock, limit=10.0):
    """
    Whether the daemon closes C{sock} within C{limit} seconds; anything it
    sends first is returned too.

    @return: (closed, bytes received before the close)
    """
    deadline = time.monotonic() + limit
    received = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            return True, received
        if not chunk:
            return True, received
        received += chunk
    return False, received


def readReplies(sock, count, limit=60.0):
    """
    Read C{count} two-byte replies without half-closing (which would end
    the connection's idle life), or fewer if the daemon closes first.
    """
    deadline = time.monotonic() + limit
    data = b""
    while data.count(b"\n") < count and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(4096)
        except (socket.timeout, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
    return data


class Hog(threading.Thread):
    """
    Pipelines small requests and never reads, until C{limitBytes} are sent
    or C{seconds} have passed, whichever comes first.
    """

    chunk = b"".join(b"%d\n" % n for n in range(10**6, 10**6 + 100_000))  # 800 KB

    def __init__(self, port, limitBytes, seconds):
        threading.Thread.__init__(self, daemon=True)
        self.limitBytes = limitBytes
        self.seconds = seconds
        self.sent = 0
        self.error = None
        # A small receive buffer, set before connecting: the replies then
        # back up into the daemon within the test, not into this side's
        # autotuned kernel buffer.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))

    def run(self):
        deadline = time.monotonic() + self.seconds
        view = memoryview(self.chunk)
        offset = 0
        self.sock.settimeout(0.1)
        while self.sent < self.limitBytes and time.monotonic() < deadline:
            try:
                n = self.sock.send(view[offset : offset + 65536])
            except socket.timeout:
                continue
            except OSError as e:
                self.error = e
                return
            self.sent += n
            offset = (offset + n) % len(view)


class DefaultLimitsTests(SharedDaemonTestCase):
    """
    One daemon with the default limits for the whole class.
    """


    def assertServed(self):
        self.assertEqual(ask(self.daemon.tcpPort, b"13\n"), b"T\n")

    def test_fourMiBLineWithoutNewline(self):
        """
        4 MiB of digits and no newline: C{E}, the rest of the line is
        skipped, and the same connection then answers the next request;
        the daemon does not buffer the line.
        """
        before = self.daemon.rss()
        with socket.create_connection(("127.0.0.1", self.daemon.tcpPort), timeout=30) as s:
            s.sendall(b"7" * (4 * MiB))
            self.assertEqual(readReplies(s, 1, 30), b"E\n")
            growth = self.daemon.rss() - before
            s.sendall(b"\n13\n")
            s.shutdown(socket.SHUT_WR)
            self.assertEqual(readAll(s, 30), b"T\n")
        self.assertLess(growth, 64 * MiB)
        self.assertLess(self.daemon.rss() - before, 64 * MiB)
        self.assertServed()

    def test_200000Digits(self):
        """
        A 200 000-digit number is answered C{E}, and the connection goes on.
        """
        before = self.daemon.rss()
        payload = b"1" + b"0" * 199_999 + b"\n13\n"
        self.assertEqual(ask(self.daemon.tcpPort, payload, 30), b"E\nT\n")
        self.assertLess(self.daemon.rss() - before, 64 * MiB)
        self.assertServed()

    def test_clientThatNeverReads(self):
        """
        A client pipelining up to 50 MB of requests without reading a reply
        does not grow the daemon's memory by more than 64 MiB: it stops
        reading that client.  Another client is answered meanwhile.
        """
        before = self.daemon.rss()
        hog = Hog(self.daemon.tcpPort, limitBytes=50 * 10**6, seconds=8)
        peak = before
        answers = []
        try:
            hog.start()
            with socket.create_connection(("127.0.0.1", self.daemon.tcpPort), timeout=30) as s:
                for _ in range(400):  # bounded; ends with the hog
                    s.sendall(b"17\n")
                    answers.append(readReplies(s, 1, 30))
                    peak = max(peak, self.daemon.rss())
                    if not hog.is_alive():
                        break
                    time.sleep(0.02)
            hog.join(30)
            peak = max(peak, self.daemon.rss())
            self.assertServed()
        finally:
            hog.sock.close()
            hog.join(5)
        self.assertIsNone(hog.error)
        self.assertGreater(hog.sent, 0)
        self.assertTrue(answers)
        self.assertEqual(set(answers), {b"T\n"})
        self.assertLess(peak - before, 64 * MiB, f"{hog.sent} bytes sent by the hog")

    def test_udpOversize(self):
        """
        A datagram longer than any request could be is answered C{E}, even
        when the kernel truncates it to the daemon's buffer.
        """
        port = self.daemon.udpPort
        self.assertEqual(askUDP(port, b"1" * 5000), b"E\n")
        self.assertEqual(askUDP(port, b"7" * 60_000), b"E\n")
        self.assertEqual(askUDP(port, b"13"), b"T\n")


class ConnectionLimitTests(unittest.TestCase):
    def test_fourthConnectionClosedFirstThreeServed(self):
        """
        With C{--max-connections 3}, a fourth connection is closed at once
        and the first three keep working; once one of them closes, a new
        connection is served.
        """
        with Daemon(*_TCP_ONLY, "--max-connections", "3",
                    "--max-connections-per-source", "0") as d:
            address = ("127.0.0.1", d.tcpPort)
            first = [socket.create_connection(address, timeout=10) for _ in range(3)]
            try:
                for s in first:
                    s.sendall(b"13\n")
                    self.assertEqual(readReplies(s, 1, 10), b"T\n")
                with socket.create_connection(address, timeout=10) as fourth:
                    closed, received = waitClosed(fourth)
                    self.assertTrue(closed)
                    self.assertEqual(received, b"")
                for s in first:
                    s.sendall(b"4\n17\n")
                    self.assertEqual(readReplies(s, 2, 10), b"F\nT\n")
                first.pop().close()
                # The daemon learns of the close asynchronously: retry a
                # bounded number of times.
                for attempt in range(100):
                    try:
                        with socket.create_connection(address, timeout=10) as s:
                            s.sendall(b"29\n")
                            s.shutdown(socket.SHUT_WR)
                            reply = readAll(s, 10)
                    except (ConnectionResetError, BrokenPipeError):
                        reply = b""  # still refused
                    if reply:
                        break
                    time.sleep(0.05)
                self.assertEqual(reply, b"T\n")
            finally:
                for s in first:
                    s.close()
        self.assertTrue(any("Connection limit of 3 reached" in line for line in d.log))


class OpenFileLimitTests(unittest.TestCase):
    def test_softLimitRaisedForMaxConnections(self):
        """
        Started with a soft open-file limit below C{--max-connections} (a
        shell's is often 1024, under the default 1024 connections plus
        primed's own descriptors), primed raises it up to the hard limit:
        every allowed connection is served, the next meets the documented
        limit (closed at once, counted, logged once), and none fails in
        C{accept()}, which Twisted answers with a log line per
        connection.
        """
        import resource

        def lowSoftLimit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (40, 4096))

        with Daemon(*_TCP_ONLY, "--max-connections", "60", "--max-connections-per-source", "0",
                    preexec_fn=lowSoftLimit) as d:
            address = ("127.0.0.1", d.tcpPort)
            held = []
            try:
                for _ in range(60):
                    s = socket.create_connection(address, timeout=10)
                    held.append(s)
                    s.sendall(b"13\n")
                    self.assertEqual(readReplies(s, 1, 10), b"T\n")
                with socket.create_connection(address, timeout=10) as extra:
                    closed, received = waitClosed(extra)
                    self.assertEqual((closed, received), (True, b""))
                d.waitForLog("Connection limit of 60 reached")
            finally:
                for s in held:
                    s.close()
        log = "\n".join(d.log)
        self.assertIn("Raised the open-file limit from 40 to 124 (--max-connections 60)", log)
        self.assertNotIn("EMFILE", log)


class IdleTimeoutTests(SharedDaemonTestCase):
    """
    C{--idle-timeout 1}, one pool thread so that big checks take turns.
    """

    daemonArgs = (*_TCP_ONLY, "--idle-timeout", "1", "--threads", "1")

    def connect(self):
        return socket.create_connection(("127.0.0.1", self.daemon.tcpPort), timeout=10)

    def test_idleConnectionClosed(self):
        with self.connect() as s:
            self.assertEqual(waitClosed(s), (True, b""))

    def test_answeredThenIdleClosed(self):
        with self.connect() as s:
            s.sendall(b"13\n")
            self.assertEqual(waitClosed(s), (True, b"T\n"))

    def test_slowlorisClosed(self):
        """
        A digit every 0.3 s, never a newline: the half-sent line does not
        keep the connection open.
        """
        with self.connect() as s:
            deadline = time.monotonic() + 10
            sent, closed = 0, False
            while not closed and time.monotonic() < deadline:
                readable, _, _ = select.select([s], [], [], 0.3)
                if readable:
                    closed, received = waitClosed(s, 1)
                    self.assertEqual(received, b"")
                    break
                try:
                    s.send(b"1")
                    sent += 1
                except OSError:
                    closed = True
            self.assertTrue(closed, f"still open after {sent} digits")



class AwaitingAnswersTests(unittest.TestCase):
    def test_awaitingAnswersNotClosed(self):
        """
        A connection waiting for checks that take longer than the idle
        timeout is not idle: every answer arrives.  Idle afterwards, it is
        closed.

        The idle timeout is a small fraction of one check, and the test
        measures that some wait for an answer did outlast it several times
        over: on hardware fast enough to make that false, the test fails
        rather than passing without testing anything.
        """
        idle = 0.25
        with Daemon(*_TCP_ONLY, "--idle-timeout", str(idle), "--threads", "1") as d:
            with socket.create_connection(("127.0.0.1", d.tcpPort), timeout=10) as s:
                s.sendall(MAX_PRIME_LINE * 2 + b"13\n")
                times, data = [time.monotonic()], b""
                while data.count(b"\n") < 3:
                    s.settimeout(60)
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                    times.append(time.monotonic())
                self.assertEqual(data, b"T\n" * 3)
                longest = max(b - a for a, b in zip(times, times[1:]))
                self.assertGreater(longest, 3 * idle, "no check outlasted the idle timeout")
                self.assertEqual(waitClosed(s), (True, b""))
        self.assertFalse(
            [line for line in d.log if "Checking a" in line and "failed" in line]
        )


class UDPDropTests(unittest.TestCase):
    def test_floodDropsAndLogsAtALimitedRate(self):
        """
        With one pool slot, a burst of big numbers over UDP is partly
        dropped; the drops are logged at most once per 10 seconds, however
        many there are; small requests are still answered.
        """
        flood = 100
        with Daemon("--listen", "tcp:0:interface=127.0.0.1", "--udp", "127.0.0.1:0",
                    "--max-queued", "1", "--threads", "1") as d:
            start = time.monotonic()
            replies = []
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                target = ("127.0.0.1", d.udpPort)
                s.settimeout(30)
                for burst in range(2):
                    for _ in range(flood):
                        s.sendto(MERSENNE_4253, target)
                    # Datagrams from one socket are read in order: once
                    # this small one is answered, the burst has been seen.
                    s.sendto(b"4", target)
                    for _ in range(flood + 2):
                        reply = s.recvfrom(16)[0]
                        replies.append(reply)
                        if reply == b"F\n":
                            break
                    if burst == 0:
                        first = d.waitForLog("Thread pool full: dropped", 10)
                # The pool's last answers may come after the small one's.
                s.settimeout(2)
                try:
                    for _ in range(2 * flood):
                        replies.append(s.recvfrom(16)[0])
                except socket.timeout:
                    pass
            elapsed = time.monotonic() - start
            self.assertEqual(askUDP(d.udpPort, b"13"), b"T\n")
            d.waitForLog("Limits:")  # reads what was logged since
            drops = [line for line in d.log if "Thread pool full: dropped" in line]
        self.assertEqual(replies.count(b"F\n"), 2)
        bigAnswers = replies.count(b"T\n")
        self.assertEqual(len(replies), 2 + bigAnswers)
        self.assertGreaterEqual(bigAnswers, 1)
        self.assertLess(bigAnswers, 2 * flood)
        self.assertIn("UDP request(s)", first)
        # At most one line per started 10 s (the rate limit), whatever the
        # machine's speed.
        self.assertLessEqual(len(drops), 1 + int(elapsed // 10), drops)


def askUDPFamily(family, host, port, payload, timeout=10.0):
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(payload, (host, port))
        return sock.recvfrom(16)[0]


class UDPLargestDatagramTests(unittest.TestCase):
    """
    With C{--max-digits 70000} a request may be as long as any datagram:
    the daemon must read the largest one whole (IPv6 carries up to 65 527
    bytes, IPv4 up to 65 507), never check what the kernel left of a cut
    one.
    """

    #: 17 * 10**13 (composite) behind leading zeros; truncated to 65 507
    #: bytes, what is left reads 17, a prime.
    IPV6_LARGEST = b"0" * 65505 + b"17" + b"0" * 13  # 65 520 bytes

    def test_largestDatagrams(self):
        with Daemon("--listen", "tcp:0:interface=127.0.0.1",
                    "--udp", "[::1]:0", "--udp", "127.0.0.1:0",
                    "--max-digits", "70000") as d:
            six, four = d.udpPorts
            ask6 = lambda payload: askUDPFamily(socket.AF_INET6, "::1", six, payload)
            ask4 = lambda payload: askUDPFamily(socket.AF_INET, "127.0.0.1", four, payload)
            self.assertEqual(len(self.IPV6_LARGEST), 65520)
            self.assertEqual(ask6(self.IPV6_LARGEST), b"F\n")
            # The largest of all: 65 527 bytes, 17 * 10**20.
            self.assertEqual(ask6(b"0" * 65504 + b"17" + b"0" * 20 + b"\n"), b"F\n")
            self.assertEqual(ask6(b"0" * 65525 + b"17"), b"T\n")
            # IPv4's largest, 65 507 bytes.
            self.assertEqual(ask4(b"0" * 65492 + b"17" + b"0" * 13), b"F\n")
            self.assertEqual(ask4(b"0" * 65505 + b"17"), b"T\n")

    def test_truncatedIsInvalid(self):
        """
        With a limit below the largest datagram, the daemon reads a little
        more than the longest request: a longer datagram, cut or not, is
        answered C{E}, over IPv4 and IPv6.
        """
        with Daemon("--listen", "tcp:0:interface=127.0.0.1",
                    "--udp", "[::1]:0", "--udp", "127.0.0.1:0",
                    "--max-digits", "65000") as d:
            six, four = d.udpPorts
            for family, host, port, size in [
                (socket.AF_INET6, "::1", six, 65527),
                (socket.AF_INET, "127.0.0.1", four, 65507),
            ]:
                payload = b"0" * (size - 15) + b"17" + b"0" * 13
                self.assertEqual(askUDPFamily(family, host, port, payload), b"E\n")
                self.assertEqual(askUDPFamily(family, host, port, b"0" * 65000 + b"17"), b"T\n")
