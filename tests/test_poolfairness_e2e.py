"""
End to end, issue 21's items 4 and 5 on the installed C{twistd -n primed}:
a client that pipelines big numbers and vanishes leaves no work behind, and
a client that keeps the pool busy does not make another address's big
number wait behind its backlog, over TCP and UDP.

Every client binds its own loopback address (127.0.0.2, 127.0.0.3, ...):
Linux routes all of 127/8 to loopback, so each is a distinct source to the
daemon.  The daemons run the default limits (64 checks queued, a quarter of
them per source) with two pool threads.  Time bounds are generous (several
times what was measured, and far below what the FIFO pool took: see each
test); the other assertions are counts read from C{/metrics}.
"""

import re
import socket
import struct
import threading
import time
import urllib.request

from twisted.trial import unittest

from support import Daemon, readAll

#: 2**11213 - 1, a Mersenne prime of 3376 digits: about 1.1 s per check on
#: the development machine (the issue's "~3400 digits").
HOG_LINE = b"%d\n" % (2**11213 - 1)
#: 2**4423 - 1, 1332 digits, about 0.12 s.
MID_LINE = b"%d\n" % (2**4423 - 1)
#: 2**3217 - 1, 969 digits, about 0.06 s.
SMALL_LINE = b"%d\n" % (2**3217 - 1)

_METRICS = re.compile(r"Serving metrics on http://([0-9.]+):(\d+)/metrics")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$")


def startDaemon(*extra):
    return Daemon("--listen", "tcp:0:interface=127.0.0.1", "--threads", "2",
                  "--drain-timeout", "1", "--metrics", "tcp:0:interface=127.0.0.1", *extra)


def scrape(daemon):
    """
    Every sample of the daemon's C{/metrics}, by name with its labels.
    """
    if not hasattr(daemon, "metricsURL"):
        match = _METRICS.search(daemon.waitForLog("Serving metrics on"))
        daemon.metricsURL = f"http://{match.group(1)}:{match.group(2)}/metrics"
    with urllib.request.urlopen(daemon.metricsURL, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


def waitForMetric(daemon, name, predicate, timeout=30.0):
    """
    Scrape until C{predicate(value of name)}; the last samples.
    """
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(daemon)
        if predicate(samples.get(name, 0.0)):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} = {samples.get(name)} after {timeout}s")
        time.sleep(0.05)


def connectFrom(source, port, timeout=30.0):
    return socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                    source_address=(source, 0))


def reset(sock):
    """
    Close with a reset (SO_LINGER 0), as a client killed with replies
    unread does.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def timedAsk(source, port, line, timeout=60.0):
    """
    Send C{line} from C{source} and half-close; the reply and the seconds
    it took.
    """
    with connectFrom(source, port, timeout) as sock:
        start = time.monotonic()
        sock.sendall(line)
        sock.shutdown(socket.SHUT_WR)
        reply = readAll(sock, timeout)
        return reply, time.monotonic() - start


class LostPipelinerTests(unittest.TestCase):
    def test_vanishedPipelinerLeavesNoWork(self):
        """
        A client pipelines 40 primes of 3376 digits, more than its share of
        the queue (so the daemon stops reading it), and resets its
        connection once its share is queued.  Another address's 969-digit
        prime is then answered within 15 s (it waits for one of the two
        running checks: 1 to 3 s measured, the machine idle to loaded; the
        FIFO pool of 218e289: 28 to 49 s, the whole backlog):
        the waiting checks of the lost connection were dropped without
        running (primed_pool_cancelled), the two running finished and were
        discarded (primed_pool_discarded), and the pool ran nothing else.
        """
        with startDaemon("--no-udp") as d:
            port = d.tcpPort
            hog = connectFrom("127.0.0.2", port)
            try:
                hog.sendall(HOG_LINE * 40)
                # Its share queued (the FIFO pool of 218e289 queues all 40).
                before = waitForMetric(d, "primed_pool_queued", lambda v: v >= 16)
            finally:
                reset(hog)
            reply, seconds = timedAsk("127.0.0.3", port, SMALL_LINE)
            self.assertEqual(reply, b"T\n")
            self.assertLess(seconds, 15.0)
            self.assertEqual(before["primed_pool_queued"], 16)
            self.assertEqual(before['primed_tcp_paused_connections{reason="pool"}'], 1)
            self.assertGreaterEqual(before['primed_pool_source_quota_total{transport="tcp"}'], 1)
            after = waitForMetric(d, "primed_pool_queued", lambda v: v == 0)
            waitForMetric(d, "primed_pool_discarded_total", lambda v: v == 2)
        self.assertEqual(after["primed_pool_cancelled_total"], 14)
        self.assertEqual(after["primed_pool_check_seconds_count"], 3)
        self.assertEqual(after['primed_requests_total{transport="tcp",verdict="prime"}'], 1)
        self.assertTrue(any("reset: dropping its queued checks" in line for line in d.log))

    def test_halfClosedPipelinerAnswered(self):
        """
        The same pipeline half-closed (C{nc -N}), from a client that reads:
        every answer arrives, nothing is dropped.
        """
        with startDaemon("--no-udp", "--max-digits", "1000") as d:
            with connectFrom("127.0.0.2", d.tcpPort) as sock:
                sock.sendall(SMALL_LINE * 40)
                sock.shutdown(socket.SHUT_WR)
                self.assertEqual(readAll(sock, 60), b"T\n" * 40)
            samples = scrape(d)
        self.assertEqual(samples["primed_pool_cancelled_total"], 0)
        self.assertEqual(samples["primed_pool_check_seconds_count"], 40)


class Hog(threading.Thread):
    """
    Keeps C{depth} big primes outstanding on one TCP connection from
    C{source}: one more sent for every reply read, until L{stop} (or 120 s).
    C{replies} holds the time of each reply.
    """

    def __init__(self, source, port, depth=40):
        threading.Thread.__init__(self, daemon=True)
        self.sock = connectFrom(source, port)
        self.depth = depth
        self.replies = []
        self.stopped = threading.Event()

    def run(self):
        self.sock.sendall(HOG_LINE * self.depth)
        deadline = time.monotonic() + 120
        buffered = b""
        self.sock.settimeout(0.2)
        while not self.stopped.is_set() and time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            if not chunk:
                return
            buffered += chunk
            while b"\n" in buffered:
                _, buffered = buffered.split(b"\n", 1)
                self.replies.append(time.monotonic())
                self.sock.sendall(HOG_LINE)

    def stop(self):
        self.stopped.set()
        self.join(10)
        reset(self.sock)


class FairShareTests(unittest.TestCase):
    def test_victimNotBehindTheBacklog(self):
        """
        While a client keeps 40 primes of 3376 digits queued, another
        address's 1332-digit prime is answered within 3 checks of 3376
        digits plus 1 s (the issue's target; measured: about one check),
        and at most 4 of the hog's answers come out meanwhile (today's FIFO
        pool: all 40 of them first).
        """
        with startDaemon("--no-udp") as d:
            port = d.tcpPort
            reply, check = timedAsk("127.0.0.4", port, HOG_LINE)
            self.assertEqual(reply, b"T\n")
            hog = Hog("127.0.0.2", port)
            hog.start()
            try:
                waitForMetric(d, "primed_pool_queued", lambda v: v >= 16)
                sent = time.monotonic()
                reply, seconds = timedAsk("127.0.0.3", port, MID_LINE)
                during = [t for t in hog.replies if sent <= t <= sent + seconds]
            finally:
                hog.stop()
        self.assertEqual(reply, b"T\n")
        self.assertLess(seconds, 3 * check + 1, f"one check took {check:.2f}s")
        self.assertLessEqual(len(during), 4)

    def test_udpVictimAnsweredFirstOrSecondTry(self):
        """
        One address floods 3376-digit primes over UDP (50 a second, far
        more than two threads check); another's 1332-digit prime, retried
        every 2 s, is answered on its first or second try (today: dropped
        every time, the queue is always full of the flood's).  The flood
        meets its own quota (primed_pool_source_quota_total).
        """
        with startDaemon() as d:
            target = ("127.0.0.1", d.udpPort)
            stop = threading.Event()

            def flood():
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.bind(("127.0.0.2", 0))
                    deadline = time.monotonic() + 60
                    while not stop.is_set() and time.monotonic() < deadline:
                        sock.sendto(HOG_LINE, target)
                        stop.wait(0.02)

            flooder = threading.Thread(target=flood, daemon=True)
            flooder.start()
            try:
                waitForMetric(d, "primed_udp_dropped_total", lambda v: v >= 10)
                tries = 0
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.bind(("127.0.0.3", 0))
                    sock.settimeout(2)
                    reply = None
                    while reply is None and tries < 5:
                        tries += 1
                        sock.sendto(MID_LINE, target)
                        try:
                            reply = sock.recvfrom(16)[0]
                        except socket.timeout:
                            pass
                samples = scrape(d)
            finally:
                stop.set()
                flooder.join(10)
        self.assertEqual(reply, b"T\n")
        self.assertLessEqual(tries, 2)
        self.assertLessEqual(samples["primed_pool_queued"], 17)
        self.assertGreater(samples['primed_pool_source_quota_total{transport="udp"}'], 0)
