"""
End-to-end tests of C{--metrics} against the installed daemon, scraped by a
real Prometheus server (Debian's C{prometheus}; tests/install-tools installs
it where missing) that each test starts on loopback with a 1 s scrape
interval and its own storage directory, and stops.

Known traffic goes in (TCP primes, composites and invalid lines, a big
number through the pool, UDP datagrams, connections refused over
C{--max-connections}); Prometheus's HTTP API must then report exactly those
counts.  Also: C{promtool check metrics} on the live page, C{promtool check
rules} on the shipped alert rules, C{/healthz} through a drain, and one
metrics endpoint per C{--reuseport} process.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

from twisted.trial import unittest

from support import Daemon, ask, askUDP

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALERTS = os.path.join(ROOT, "contrib", "prometheus", "alerts.yml")
_METRICS = re.compile(r"Serving metrics on http://([0-9.]+):(\d+)/metrics")
BIG_PRIME = 2**607 - 1  # checked in the pool


def tool(name):
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} not found: run tests/install-tools (Debian's prometheus)")
    return path


def freePort():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def metricsAddress(daemon):
    match = _METRICS.search(daemon.waitForLog("Serving metrics on"))
    return f"{match.group(1)}:{match.group(2)}"


def httpGet(url, timeout=10.0):
    """
    @return: C{(status, body)}; HTTP errors are answers too.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Prometheus:
    """
    A real Prometheus server scraping C{targets} every second, on a free
    loopback port, storing into a temporary directory.  Always stopped.
    """

    def __init__(self, testCase, targets):
        self.directory = tempfile.mkdtemp(prefix="primed-prometheus-")
        testCase.addCleanup(shutil.rmtree, self.directory, True)
        config = os.path.join(self.directory, "prometheus.yml")
        with open(config, "w") as f:
            f.write(
                "global:\n"
                "  scrape_interval: 1s\n"
                "  scrape_timeout: 1s\n"
                "  evaluation_interval: 1s\n"
                "rule_files: [" + json.dumps(ALERTS) + "]\n"
                "scrape_configs:\n"
                "  - job_name: primed\n"
                "    static_configs:\n"
                "      - targets: " + json.dumps(list(targets)) + "\n"
            )
        self.port = freePort()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(self.directory, "prometheus.log"), "w+b")
        self.process = subprocess.Popen(
            [
                tool("prometheus"),
                "--config.file=" + config,
                "--storage.tsdb.path=" + os.path.join(self.directory, "data"),
                "--web.listen-address=127.0.0.1:%d" % self.port,
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
        )
        testCase.addCleanup(self.stop)
        self.waitUntil(lambda: httpGet(self.url + "/-/ready", 2)[0] == 200, "ready", 60)

    def output(self):
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-4000:]

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.close()

    def waitUntil(self, condition, what, timeout=60.0):
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{self.output()}")
            try:
                if condition():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"prometheus not {what} in {timeout}s:\n{self.output()}")
            time.sleep(0.2)

    def query(self, expression):
        """
        An instant query: C{{frozenset(labels minus instance and job): value}}.
        """
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        status, body = httpGet(url)
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", body
        found = {}
        for item in answer["data"]["result"]:
            labels = {
                k: v for k, v in item["metric"].items()
                if k not in ("instance", "job", "__name__")
            }
            found[frozenset(labels.items())] = float(item["value"][1])
        return found


def readmeQueries():
    """
    The PromQL queries docs/operating/monitoring.rst shows.
    """
    with open(os.path.join(ROOT, "docs", "operating", "monitoring.rst"), encoding="utf-8") as f:
        section = f.read()
    queries = re.findall(r"``([^`]*\brate\([^`]*)``", section)
    assert len(queries) == 3, queries
    return queries


def scalar(value):
    return {frozenset(): float(value)}


class PrometheusTests(unittest.TestCase):
    """
    One daemon, scraped by one Prometheus server.
    """

    def setUp(self):
        self.daemon = Daemon(
            "--listen", "tcp:0:interface=127.0.0.1",
            "--udp", "127.0.0.1:0",
            "--metrics", "tcp:0:interface=127.0.0.1",
            "--max-connections", "3",
            "--max-connections-per-source", "0",
            "--drain-timeout", "4",
        )
        self.daemon.start()
        self.addCleanup(self.daemon.stop)
        self.metrics = metricsAddress(self.daemon)

    def sendKnownTraffic(self):
        """
        TCP: 9 primes, 3 composites, 2 invalid lines (one of them longer
        than a read, so skipped unbuffered),
        a big prime through the pool; 3 more primes on connections held open
        while 2 more are refused.  UDP: 2 primes, 1 composite, 1 invalid, 1
        empty datagram.
        """
        port = self.daemon.tcpPort
        payload = b"2\n3\n5\n7\n11\n4\n6\n8\nx\n" + b"9" * 200000 + b"\n%d\n" % BIG_PRIME
        self.assertEqual(ask(port, payload), b"T\nT\nT\nT\nT\nF\nF\nF\nE\nE\nT\n")
        held = []
        try:
            for _ in range(3):
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                held.append(sock)
                sock.sendall(b"13\n")
                self.assertEqual(sock.recv(16), b"T\n")
            for _ in range(2):
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    self.assertEqual(sock.recv(16), b"")  # closed at once
        finally:
            for sock in held:
                sock.close()
        udp = self.daemon.udpPort
        for datagram, reply in [(b"17", b"T\n"), (b"18\n", b"F\n"), (b"19", b"T\n"),
                                (b"y", b"E\n")]:
            self.assertEqual(askUDP(udp, datagram), reply)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"", ("127.0.0.1", udp))

    maxDiff = None

    def test_prometheusSeesExactCounts(self):
        prometheus = Prometheus(self, [self.metrics])
        self.sendKnownTraffic()
        expected = {
            "primed_requests_total": {
                frozenset({"transport": t, "verdict": v}.items()): n
                for (t, v), n in {
                    ("tcp", "prime"): 9, ("tcp", "not_prime"): 3, ("tcp", "invalid"): 2,
                    ("udp", "prime"): 2, ("udp", "not_prime"): 1, ("udp", "invalid"): 1,
                }.items()
            },
            "primed_tcp_connections_accepted_total": scalar(4),
            "primed_tcp_connections_refused_total": {
                frozenset({"reason": r}.items()): n
                for r, n in {"limit": 2, "per_source": 0, "untrusted_proxy": 0,
                             "proxy_header": 0, "handshake_rate": 0}.items()
            },
            "primed_tcp_connections": scalar(0),
            "primed_udp_ignored_total": scalar(1),
            "primed_udp_dropped_total": scalar(0),
            "primed_lines_too_long_total": scalar(1),
            "primed_pool_check_seconds_count": scalar(1),
            'primed_pool_check_seconds_bucket{le="+Inf"}': {
                frozenset({"le": "+Inf"}.items()): 1.0
            },
            "primed_drain_unanswered_total": scalar(0),
            'up{job="primed"}': scalar(1),
        }
        seen = {}

        def allSeen():
            for expression in expected:
                seen[expression] = prometheus.query(expression)
            return seen == expected

        try:
            prometheus.waitUntil(allSeen, "reporting the traffic", 60)
        finally:
            self.assertEqual(seen, expected)
        for expression in readmeQueries():
            prometheus.query(expression)  # asserts Prometheus accepts it
        # A rate needs two scrapes of the series.
        prometheus.waitUntil(lambda: len(prometheus.query(readmeQueries()[0])) == 3,
                             "rating requests by verdict", 30)
        byVerdict = prometheus.query(readmeQueries()[0])
        self.assertEqual(sorted(dict(labels)["verdict"] for labels in byVerdict),
                         ["invalid", "not_prime", "prime"])
        rss = prometheus.query("process_resident_memory_bytes")
        self.assertGreater(list(rss.values())[0], 1 << 20)
        info = prometheus.query("primed_build_info")
        [(labels, value)] = info.items()
        self.assertEqual(value, 1)
        self.assertEqual(sorted(dict(labels)),
                         ["gmpy2", "python", "python_flint", "twisted", "version"])

    def test_promtoolCheckMetrics(self):
        self.sendKnownTraffic()
        for accept in ["text/plain", "application/openmetrics-text; version=1.0.0"]:
            request = urllib.request.Request(
                f"http://{self.metrics}/metrics", headers={"Accept": accept}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                page = response.read()
            if accept == "text/plain":
                result = subprocess.run(
                    [tool("promtool"), "check", "metrics"], input=page,
                    capture_output=True, timeout=60,
                )
                self.assertEqual((result.returncode, result.stdout, result.stderr),
                                 (0, b"", b""), page.decode())
            else:
                self.assertTrue(page.endswith(b"# EOF\n"))

    def test_healthThroughDrain(self):
        """
        200 while serving; after SIGTERM, 503 while a client that never
        reads keeps the drain going; the port closes with the daemon.
        """
        url = f"http://{self.metrics}/healthz"
        self.assertEqual(httpGet(url), (200, b"ok\n"))
        stuck = socket.create_connection(("127.0.0.1", self.daemon.tcpPort), timeout=1)
        self.addCleanup(stuck.close)
        chunk = b"4\n" * 65536
        try:
            for _ in range(10000):  # until primed stops reading us
                stuck.sendall(chunk)
        except socket.timeout:
            pass
        else:
            self.fail("primed never stopped reading a client that does not read")
        self.daemon.process.send_signal(signal.SIGTERM)
        self.daemon.waitForLog("Stopping")
        status, body = httpGet(url)
        self.assertEqual(status, 503)
        self.assertIn(b"stopping", body)
        self.assertIn(self.daemon.wait(30), (0, -signal.SIGTERM), "\n".join(self.daemon.log))
        self.assertRaises(OSError, httpGet, url, 2)


class ReusePortTests(unittest.TestCase):
    def test_eachProcessItsOwnEndpoint(self):
        """
        Two --reuseport processes share the prime ports; each serves its own
        metrics, and their counts add up to the traffic sent.
        """
        tcp = freePort()
        args = ["--reuseport", "--listen", f"tcp:{tcp}:interface=127.0.0.1", "--no-udp",
                "--metrics", "tcp:0:interface=127.0.0.1"]
        with Daemon(*args) as first, Daemon(*args) as second:
            addresses = [metricsAddress(first), metricsAddress(second)]
            self.assertNotEqual(addresses[0], addresses[1])
            for _ in range(40):
                self.assertEqual(ask(tcp, b"7\n8\n"), b"T\nF\n")
            totals = []
            for address in addresses:
                _, page = httpGet(f"http://{address}/metrics")
                match = re.search(
                    rb'^primed_tcp_connections_accepted_total (\S+)$', page, re.M
                )
                totals.append(float(match.group(1)))
            self.assertEqual(sum(totals), 40)


class RulesTests(unittest.TestCase):
    def test_promtoolCheckRules(self):
        result = subprocess.run(
            [tool("promtool"), "check", "rules", ALERTS], capture_output=True, timeout=60
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn(b"SUCCESS", result.stdout)

    def test_udpDropsAlertLeavesQuotaDropsOut(self):
        """
        C{promtool test rules}: PrimedUDPDrops fires when UDP requests are
        dropped because the pool is full, not when one source is held to
        its share (--max-queued-per-source): 10% of requests dropped either
        way, for 15 minutes.
        """
        directory = tempfile.mkdtemp(prefix="primed-rules-")
        self.addCleanup(shutil.rmtree, directory, True)

        def case(instance, quotaPerMinute):
            return (
                f"      - series: 'primed_udp_dropped_total{{instance=\"{instance}\"}}'\n"
                f"        values: '0+60x20'\n"
                f"      - series: 'primed_pool_source_quota_total"
                f"{{instance=\"{instance}\",transport=\"udp\"}}'\n"
                f"        values: '0+{quotaPerMinute}x20'\n"
                f"      - series: 'primed_requests_total"
                f"{{instance=\"{instance}\",transport=\"udp\",verdict=\"prime\"}}'\n"
                f"        values: '0+540x20'\n"
            )

        tests = os.path.join(directory, "tests.yml")
        with open(tests, "w") as f:
            f.write(
                f"rule_files: [{ALERTS}]\n"
                "evaluation_interval: 1m\n"
                "tests:\n"
                "  - interval: 1m\n"
                "    input_series:\n"
                + case("full", 0) + case("quota", 60)
                + "    alert_rule_test:\n"
                "      - eval_time: 15m\n"
                "        alertname: PrimedUDPDrops\n"
                "        exp_alerts:\n"
                "          - exp_labels: {severity: warning, instance: full}\n"
                "            exp_annotations:\n"
                "              summary: 'primed full drops UDP requests'\n"
                "              description: '10% of UDP requests dropped (pool full) over 5 minutes.'\n"
            )
        result = subprocess.run([tool("promtool"), "test", "rules", tests],
                                capture_output=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
