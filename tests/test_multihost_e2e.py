"""
End to end on several hosts: a client host, a load-balancer host running the
real nginx and HAProxy with the configurations in C{contrib/}, and two
backend hosts running C{twistd -n primed} behind PROXY-protocol listeners,
all in network namespaces built (and removed) by the tests.  Needs root,
C{ip}, nftables, nginx with its stream module and HAProxy
(C{tests/install-tools}).

Each balancer's tests share one network; they run in the order of their
names (a killed backend is started again before the next test).
"""

import re
import signal
import subprocess
import tempfile
import threading
import time

from twisted.trial import unittest

from cluster import BACKENDS, SERVER_NAMES, Cluster
from primed.primality import is_prime
from support import SEED_REPLIES, SEED_VALUES


def numbers(first: int, count: int) -> bytes:
    return b"".join(b"%d\n" % n for n in range(first, first + count))


def verdicts(first: int, count: int) -> bytes:
    return b"".join(b"T\n" if is_prime(n) else b"F\n" for n in range(first, first + count))


SEED_INPUT = b"".join(b"%s\n" % str(v).encode() for v in SEED_VALUES)


class Feeder(threading.Thread):
    """
    Steady load: writes the numbers from C{first} on to a client's standard
    input, C{chunk} at a time every C{pause} seconds, until stopped; then
    closes it.
    """

    def __init__(self, client: subprocess.Popen, first: int = 1, chunk: int = 500,
                 pause: float = 0.02):
        threading.Thread.__init__(self, daemon=True)
        self.client = client
        self.next = first
        self.first = first
        self.chunk = chunk
        self.pause = pause
        self.stopping = threading.Event()
        self.error = None

    def run(self):
        try:
            while not self.stopping.is_set():
                self.client.stdin.write(numbers(self.next, self.chunk))
                self.client.stdin.flush()
                self.next += self.chunk
                time.sleep(self.pause)
        except OSError as e:
            self.error = e
        finally:
            try:
                self.client.stdin.close()
            except OSError:
                pass

    def finish(self) -> None:
        self.stopping.set()
        self.join(30)

    def sent(self) -> int:
        return self.next - self.first


class BalancerTests:
    """
    What every balancer must show; mixed into one test case per balancer.
    """

    balancer: str

    @classmethod
    def setUpClass(cls):
        cls.cluster = Cluster(balancers=(cls.balancer,))
        cls.cluster.__enter__()
        cls.lb = cls.cluster.balancers[cls.balancer]

    @classmethod
    def tearDownClass(cls):
        cls.cluster.__exit__(None, None, None)

    def tcpClient(self, *args):
        return ["--host", self.lb, "--raw", *args]

    def runClient(self, feeder: Feeder, output):
        """
        Stop feeding, and wait for the client's exit status and output.
        """
        feeder.finish()
        try:
            status = feeder.client.wait(60)
        except subprocess.TimeoutExpired:
            feeder.client.kill()
            status = feeder.client.wait(5)
        stderr = feeder.client.stderr.read()
        output.seek(0)
        return status, output.read(), stderr

    def restartAndWait(self, host: str, probe: int) -> float:
        self.cluster.startBackend(host)
        return self.cluster.waitUntilServing(self.balancer, host, probe)

    def ensureBackends(self):
        for host, process in self.cluster.backends.items():
            if process.process.poll() is not None:
                self.restartAndWait(host, 7883)

    def test_1_seedOverTCP(self):
        result = self.cluster.client(self.tcpClient(), SEED_INPUT)
        self.assertEqual((result.returncode, result.stdout), (0, b"".join(SEED_REPLIES)),
                         result.stderr)

    def test_2_ncHalfCloseAndClientAddress(self):
        """
        C{nc -N} half-closes after its last line; the replies still come
        (nginx: C{proxy_half_close on}; primed: the PROXY wrapper passes the
        FIN on), and the backend logs the client host's address.
        """
        result = self.cluster.network.run(
            "client", ["nc", "-N", self.lb, "8809"], input=b"4j\n4\n5\n-5\n17\n29\n7877", timeout=20)
        self.assertEqual(result.stdout, b"E\nF\nT\nF\nT\nT\nT\n")
        self.assertTrue(any(self.cluster.servedBy(host, 7877) for host in BACKENDS))

    def test_3_bulkOverBothBackends(self):
        """
        100 000 numbers in four simultaneous runs of 25 000 (one connection
        each): all answered correctly, and both backends served some.
        """
        runs = []
        for index in range(4):
            output = tempfile.TemporaryFile()
            client = self.cluster.startClient(f"bulk{index}", self.tcpClient(), output)
            runs.append((client, output, 1 + 25000 * index))
        for client, _, first in runs:
            client.stdin.write(numbers(first, 25000))
            client.stdin.close()
        for client, output, first in runs:
            self.assertEqual(client.wait(120), 0, client.stderr.read())
            output.seek(0)
            self.assertEqual(output.read(), verdicts(first, 25000))
        served = [host for host in BACKENDS
                  if any(self.cluster.servedBy(host, first + 24999) for _, _, first in runs)]
        self.assertEqual(served, list(BACKENDS))

    def test_4_backendKilledMidRun(self):
        """
        SIGKILL the backend serving a bulk run in the middle of it: the
        client reconnects through the balancer, to the other backend, resends
        what was unanswered, and the run completes correctly with exit 0.
        """
        output = tempfile.TemporaryFile()
        feeder = Feeder(self.cluster.startClient("killed", self.tcpClient(), output),
                        first=1_000_000)
        feeder.start()
        try:
            deadline = time.monotonic() + 30
            victim = None
            while victim is None and time.monotonic() < deadline:
                time.sleep(0.05)
                victim = next((host for host in BACKENDS
                               if self.cluster.servedBy(host, 1_020_000)), None)
            self.assertIsNotNone(victim, "the run did not get going")
            self.cluster.kill(victim)
            self.addCleanup(self.restartAndWait, victim, 7879)
            while feeder.sent() < 60_000 and feeder.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            status, out, stderr = self.runClient(feeder, output)
        self.assertEqual((status, stderr), (0, b""))
        self.assertEqual(out, verdicts(1_000_000, feeder.sent()))

    def test_5_rollingRestart(self):
        """
        Under steady load from two clients: SIGTERM one backend, start it
        again, wait until the balancer uses it, then the other.  No request
        fails.
        """
        self.addCleanup(self.ensureBackends)
        feeders = []
        for index in range(2):
            output = tempfile.TemporaryFile()
            feeder = Feeder(self.cluster.startClient(f"rolling{index}", self.tcpClient(), output),
                            first=2_000_000 + 10_000_000 * index)
            feeder.start()
            feeders.append((feeder, output))
        try:
            for host, probe in zip(BACKENDS, (7901, 7907)):
                time.sleep(0.5)
                # twistd exits by re-raising SIGTERM once drained.
                self.assertEqual(self.cluster.backends[host].stop(signal.SIGTERM),
                                 -signal.SIGTERM)
                self.restartAndWait(host, probe)
            time.sleep(0.5)
        finally:
            results = [self.runClient(feeder, output) for feeder, output in feeders]
        for (feeder, _), (status, out, stderr) in zip(feeders, results):
            self.assertEqual((status, stderr), (0, b""))
            self.assertEqual(out, verdicts(feeder.first, feeder.sent()))
            self.assertGreater(feeder.sent(), 10_000)


class NginxTests(BalancerTests, unittest.TestCase):
    balancer = "nginx"

    def test_1_seedOverUDP(self):
        result = self.cluster.client(["--udp", "--host", self.lb, "--raw"], SEED_INPUT)
        self.assertEqual((result.returncode, result.stdout), (0, b"".join(SEED_REPLIES)),
                         result.stderr)

    def test_6_udpWithLoss(self):
        """
        20 % of the client host's UDP datagrams to and from the balancer are
        dropped at random (nftables, in the client's namespace); with retries
        every number is still answered correctly.
        """
        net = self.cluster.network
        # On the interface itself (netdev egress and ingress hooks): a drop in
        # the output hook would fail the client's sendto() with EPERM, which
        # is not what a lossy network does.
        rules = (
            "table netdev loss {\n"
            " chain out { type filter hook egress device eth0 priority 0;"
            " udp dport 8808 numgen random mod 100 < 20 counter drop; }\n"
            " chain in { type filter hook ingress device eth0 priority 0;"
            " udp sport 8808 numgen random mod 100 < 20 counter drop; }\n"
            "}\n"
        )
        added = net.run("client", ["nft", "-f", "-"], input=rules.encode())
        self.assertEqual(added.returncode, 0, added.stderr)
        try:
            result = self.cluster.client(
                ["--udp", "--host", self.lb, "--raw", "--timeout", "0.3", "--retries", "15"],
                numbers(1, 2000))
            counters = net.run("client", ["nft", "list", "table", "netdev", "loss"]).stdout
        finally:
            net.run("client", ["nft", "delete", "table", "netdev", "loss"])
        self.assertEqual((result.returncode, result.stderr), (0, b""))
        self.assertEqual(result.stdout, verdicts(1, 2000))
        dropped = [int(n) for n in re.findall(rb"packets (\d+)", counters)]
        self.assertTrue(all(n > 100 for n in dropped), counters)


class HAProxyTests(BalancerTests, unittest.TestCase):
    balancer = "haproxy"

    def test_6_healthCheckMarksDownAndUp(self):
        """
        The health check speaks primed's protocol behind a PROXY v2 LOCAL
        header: a killed backend is marked DOWN, a restarted one UP.
        """
        haproxy = self.cluster.haproxy
        start = haproxy.size()
        self.cluster.kill("b2")
        down = haproxy.waitFor(f"{SERVER_NAMES['b2']} is DOWN", 30, start)
        self.cluster.startBackend("b2")
        haproxy.waitFor(f"{SERVER_NAMES['b2']} is UP", 30, down)
        # The checks reached primed, from the balancer's own address.
        self.cluster.backends["b2"].waitFor("asked b'2': T", 10)
