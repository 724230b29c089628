"""
End to end: C{twistd -n primed --prove}, the installed daemon, asked over
TCP and UDP for primes, for composites built to fool weak tests and for
numbers around every limit; a worker SIGKILLed mid-proof; a client that
goes away; a stop while a proof runs.  Proofs here stay small (at most 320
digits, a second or two) but for those that must outlast the test's
actions (1024 and 1060 bits).
"""

import os
import re
import signal
import socket
import struct
import time
import unittest
import urllib.request

from hardnumbers import (
    BIG_CARMICHAEL,
    CARMICHAEL,
    MERSENNE_COMPOSITE_EXPONENTS,
    MERSENNE_EXPONENTS,
    STRONG_PSEUDOPRIMES,
    randomPrime,
    semiprime,
)
from support import Daemon, ask, askUDP, readAll
from primed.primality import DETERMINISTIC_LIMIT, INLINE_MAX_BITS

import gmpy2

MAX_DIGITS = 320  # 1024-bit primes (309 digits) are proved
_METRICS = re.compile(r"Serving metrics on http://([0-9.]+):(\d+)/metrics")


def proveArgs(*extra: str):
    return ("--listen", "tcp:0:interface=127.0.0.1", "--udp", "127.0.0.1:0",
            "--metrics", "tcp:0:interface=127.0.0.1", "--prove", "--prove-workers", "2",
            "--prove-max-digits", str(MAX_DIGITS), *extra)


def expected(n: int) -> bytes:
    """
    What --prove must answer: E for a probable prime over the limit.
    """
    if n < 2:
        return b"F\n"
    if not gmpy2.is_prime(n, 40):
        return b"F\n"
    return b"E\n" if len(str(n)) > MAX_DIGITS else b"T\n"


def cases():
    numbers = [2**p - 1 for p in MERSENNE_EXPONENTS]
    numbers += [2**p - 1 for p in MERSENNE_COMPOSITE_EXPONENTS[::4]]
    numbers += list(CARMICHAEL) + [BIG_CARMICHAEL] + list(STRONG_PSEUDOPRIMES)
    numbers += [semiprime(bits, 3) for bits in (160, 512, 1024)]
    numbers += [randomPrime(bits, 4) for bits in (82, 100, 192, 193, 256, 512, 768, 900)]
    for limit in (DETERMINISTIC_LIMIT, 2**INLINE_MAX_BITS, 10**MAX_DIGITS):
        below = int(gmpy2.next_prime(limit - 2000))
        while below >= limit:  # the last prime below the limit
            below -= 2000
            below = int(gmpy2.next_prime(below))
        above = int(gmpy2.next_prime(limit))
        numbers += [below, above, limit - 1, limit, limit + 1]
    return numbers


class ProveTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon(*proveArgs())
        cls.daemon.start()
        host, port = _METRICS.search(cls.daemon.waitForLog("Serving metrics on")).groups()
        cls.metricsURL = f"http://{host}:{port}/metrics"
        cls.daemon.waitForLog("Proving with PARI", 30)

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(self.metricsURL, timeout=10) as page:
            for line in page.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[-1])
        raise AssertionError(f"no {name} in /metrics")

    def waitForMetric(self, name: str, predicate, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        while True:
            value = self.metric(name)
            if predicate(value):
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} stayed {value}")
            time.sleep(0.02)

    def workers(self):
        children = f"/proc/{self.daemon.process.pid}/task/{self.daemon.process.pid}/children"
        with open(children) as f:
            return [int(pid) for pid in f.read().split()]

    def test_tcpVerdicts(self):
        """
        Pipelined on one connection, answered in order, each proven.
        """
        numbers = cases()
        payload = b"".join(b"%d\n" % n for n in numbers)
        replies = ask(self.daemon.tcpPort, payload, timeout=120).splitlines(keepends=True)
        self.assertEqual(
            [(n, reply) for n, reply in zip(numbers, replies) if reply != expected(n)], [])
        self.assertEqual(len(replies), len(numbers))

    def test_udpVerdicts(self):
        for n in cases():
            if len(str(n)) < 1200:  # a datagram's --max-digits bound is the same
                self.assertEqual(askUDP(self.daemon.udpPort, b"%d\n" % n, timeout=60),
                                 expected(n), n)

    def test_buildInfoAndWorkers(self):
        with urllib.request.urlopen(self.metricsURL, timeout=10) as page:
            text = page.read().decode()
        self.assertRegex(text, r'primed_build_info\{[^}]*prover="PARI 2\.')
        self.assertIn("primed_prove_workers 2.0", text)
        self.assertEqual(len(self.workers()), 2)

    def test_overTheLimit(self):
        before = self.metric('primed_proofs_total{result="too_big"}')
        self.assertEqual(ask(self.daemon.tcpPort, b"%d\n" % (2**1279 - 1)), b"E\n")
        self.assertEqual(self.metric('primed_proofs_total{result="too_big"}'), before + 1)

    def test_killedWorker(self):
        """
        SIGKILL every worker mid-proof: the proof is retried on a new
        worker (T) or, at worst, answered E; never F, never left hanging.
        """
        restarts = self.metric("primed_prove_worker_restarts_total")
        prime = randomPrime(1024, 7)
        with socket.create_connection(("127.0.0.1", self.daemon.tcpPort), timeout=60) as sock:
            sock.sendall(b"%d\n" % prime)
            sock.shutdown(socket.SHUT_WR)
            self.waitForMetric("primed_prove_running", lambda v: v == 1)
            for pid in self.workers():
                os.kill(pid, signal.SIGKILL)
            self.assertIn(readAll(sock, 60), (b"T\n", b"E\n"))
        self.assertGreaterEqual(self.metric("primed_prove_worker_restarts_total"), restarts + 2)
        self.waitForMetric("primed_prove_running", lambda v: v == 0)
        self.assertEqual(ask(self.daemon.tcpPort, b"%d\n" % (2**521 - 1), timeout=60), b"T\n")
        self.assertEqual(len(self.workers()), 2)

    def test_lostClientCancels(self):
        cancelled = self.metric('primed_proofs_total{result="cancelled"}')
        sock = socket.create_connection(("127.0.0.1", self.daemon.tcpPort), timeout=60)
        sock.sendall(b"%d\n" % randomPrime(1024, 8))
        self.waitForMetric("primed_prove_running", lambda v: v == 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset
        self.waitForMetric('primed_proofs_total{result="cancelled"}',
                           lambda v: v == cancelled + 1)
        self.waitForMetric("primed_prove_running", lambda v: v == 0)

    def test_sameNumberJoins(self):
        """
        A UDP client retrying while its proof runs joins it.
        """
        prime = randomPrime(1024, 9)
        proofs = self.metric('primed_proofs_total{result="prime"}')
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(60)
            sock.sendto(b"%d\n" % prime, ("127.0.0.1", self.daemon.udpPort))
            self.waitForMetric("primed_prove_running", lambda v: v == 1)
            sock.sendto(b"%d\n" % prime, ("127.0.0.1", self.daemon.udpPort))
            self.assertEqual([sock.recv(10), sock.recv(10)], [b"T\n", b"T\n"])
        self.assertEqual(self.metric('primed_proofs_total{result="prime"}'), proofs + 1)


class StopTests(unittest.TestCase):
    def children(self, daemon):
        pid = daemon.process.pid
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(child) for child in f.read().split()]

    def waitForRunning(self, daemon):
        deadline = time.monotonic() + 30
        while "running" not in self.state(daemon):
            self.assertLess(time.monotonic(), deadline, "no proof started")
            time.sleep(0.02)

    def state(self, daemon) -> str:
        host, port = _METRICS.search(daemon.waitForLog("Serving metrics on")).groups()
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as page:
            text = page.read().decode()
        return "running" if "primed_prove_running 1.0" in text else "idle"

    def test_drainAnswersARunningProof(self):
        with Daemon(*proveArgs()) as daemon:
            daemon.waitForLog("Proving with", 30)
            workers = self.children(daemon)
            with socket.create_connection(("127.0.0.1", daemon.tcpPort), timeout=60) as sock:
                sock.sendall(b"%d\n" % randomPrime(1024, 10))
                self.waitForRunning(daemon)
                daemon.process.send_signal(signal.SIGTERM)
                self.assertEqual(readAll(sock, 30), b"T\n")
            self.assertEqual(daemon.wait(), -signal.SIGTERM)
        self.assertEqual([pid for pid in workers if _alive(pid)], [])

    def test_drainTimeoutCutsAProof(self):
        with Daemon(*proveArgs("--drain-timeout", "0.1")) as daemon:
            daemon.waitForLog("Proving with", 30)
            workers = self.children(daemon)
            with socket.create_connection(("127.0.0.1", daemon.tcpPort), timeout=60) as sock:
                sock.sendall(b"%d\n" % randomPrime(1060, 11))
                self.waitForRunning(daemon)
                start = time.monotonic()
                daemon.process.send_signal(signal.SIGTERM)
                self.assertEqual(daemon.wait(), -signal.SIGTERM)
                self.assertLess(time.monotonic() - start, 10)  # generous: a 0.1 s drain
                try:
                    reply = readAll(sock, 5)
                except ConnectionResetError:  # the cut aborts connections
                    reply = b""
                self.assertEqual(reply, b"")
        self.assertEqual([pid for pid in workers if _alive(pid)], [])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
