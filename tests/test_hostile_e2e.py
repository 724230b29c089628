"""
End to end, issue 21's hostile clients against the installed C{twistd -n
primed}, on loopback: slow clients on the C{--metrics} port, silent TLS
connections from one address, an untrusted PROXY sender, a C{--verbose}
flood, and testssl.sh (Debian's C{testssl.sh}; tests/install-tools installs
it) judging the TLS settings.

Loopback has a whole /8: a client "from another address" binds 127.0.0.2,
127.0.0.3, ...  What is asserted is what happened (answered, closed,
counted); every wait is bounded, generously, so a broken daemon fails
rather than hangs.
"""

import json
import os
import re
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

from twisted.trial import unittest

from support import CertificatesMixin, Daemon, ask, askTLS, readAll

V1 = b"PROXY TCP4 203.0.113.9 127.0.0.1 4444 8809\r\n"
_METRICS = re.compile(r"Serving metrics on http://([0-9.]+):(\d+)/metrics")


def connectFrom(source, port, timeout=10.0):
    """
    A TCP connection to loopback C{port} from loopback address C{source}.
    """
    return socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                    source_address=(source, 0))


def metricsURL(daemon):
    match = _METRICS.search(daemon.waitForLog("Serving metrics on"))
    return f"http://{match.group(1)}:{match.group(2)}"


def scrape(url):
    """
    C{/metrics} as C{{(name, frozenset(labels)): value}}.
    """
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def refused(page, reason):
    return page["primed_tcp_connections_refused_total", frozenset({("reason", reason)})]


def closedByPeer(sock):
    """
    Whether the daemon has closed C{sock} (FIN or reset), without waiting.
    """
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(4096) == b""
    except (ConnectionResetError, ConnectionAbortedError):
        return True


def askUnanswered(port, payload):
    """
    What comes back for C{payload} on a new connection; a reset (the daemon
    closed with our bytes unread) counts as nothing.
    """
    try:
        return ask(port, payload)
    except (ConnectionResetError, BrokenPipeError):
        return b""


def waitFor(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout}s")
        time.sleep(0.05)


class Trickler(threading.Thread):
    """
    C{count} connections to C{port}, each sending one byte of an HTTP
    request head every C{interval} seconds and never finishing it;
    reconnecting as soon as the daemon closes one (slowloris).
    """

    HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10000

    def __init__(self, port, count, interval=0.5):
        threading.Thread.__init__(self, daemon=True)
        self.port, self.count, self.interval = port, count, interval
        self.stopping = threading.Event()
        self.reconnects = 0
        self.socks = []

    def _open(self):
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.connect(("127.0.0.1", self.port))
        except BlockingIOError:
            pass
        return [sock, 0]

    def run(self):
        self.socks = [self._open() for _ in range(self.count)]
        try:
            while not self.stopping.wait(self.interval):
                for entry in self.socks:
                    sock, sent = entry
                    try:
                        if closedByPeer(sock):
                            raise ConnectionResetError
                        sock.send(self.HEAD[sent:sent + 1])
                        entry[1] = sent + 1
                    except OSError:
                        sock.close()
                        entry[:] = self._open()
                        self.reconnects += 1
        finally:
            for sock, _ in self.socks:
                sock.close()

    def stop(self):
        self.stopping.set()
        self.join(10)


def healthz(url, timeout=5.0):
    """
    C{(status or the error, seconds)} of a fresh C{GET /healthz}.
    """
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as e:
        status = e.code
    except OSError as e:
        status = repr(e)
    return status, time.monotonic() - started


class MetricsSlowlorisTests(unittest.TestCase):
    def test_healthzAnsweredUnderSlowClients(self):
        """
        40 connections trickle a request head into the metrics port (16
        connections allowed), reconnecting whenever closed; fresh
        C{/healthz} requests are still answered 200, quickly, because the
        oldest unfinished connection is closed to make room; the evictions
        are counted.  (Before issue 21, the 16 slow connections held the
        port for 10 s each and fresh requests were refused.)
        """
        with Daemon("--listen", "tcp:0:interface=127.0.0.1", "--no-udp",
                    "--metrics", "tcp:0:interface=127.0.0.1") as d:
            url = metricsURL(d)
            port = int(url.rsplit(":", 1)[1])
            trickler = Trickler(port, 40)
            trickler.start()
            try:
                time.sleep(1.5)  # the port fills with slow clients
                results = []
                for _ in range(20):
                    results.append(healthz(url))
                    time.sleep(0.1)
            finally:
                trickler.stop()
            page = scrape(url)
        statuses = [status for status, _ in results]
        self.assertGreaterEqual(statuses.count(200), 19, results)
        slowest = max(seconds for status, seconds in results if status == 200)
        self.assertLess(slowest, 3.0, results)  # measured: a few ms
        self.assertGreater(trickler.reconnects, 0)
        evicted = page["primed_metrics_connections_closed_total",
                       frozenset({("reason", "evicted")})]
        self.assertGreater(evicted, 0)


class SilentTLSTests(CertificatesMixin, unittest.TestCase):
    def test_silentTLSConnectionsDoNotLockOthersOut(self):
        """
        C{--max-connections 40}, so 10 per source by default.  30 silent
        connections to the C{ssl:} listener from 127.0.0.2: 20 are closed at
        once (per source).  30 more from three other addresses fill the
        limit; a probe from 127.0.0.1 to the plain listener is still
        answered (the oldest connection without a request makes room).
        Every silent connection is closed once C{--handshake-timeout}
        passes, counted and logged.  (Before: the first 40 silent
        connections stayed for --idle-timeout, 300 s, and the probe was
        refused.)
        """
        paths = self.paths
        with Daemon("--listen", "tcp:0:interface=127.0.0.1",
                    "--listen", f"ssl:0:interface=127.0.0.1:privateKey={paths['key']}"
                                f":certKey={paths['cert']}",
                    "--no-udp", "--max-connections", "40", "--handshake-timeout", "3",
                    "--metrics", "tcp:0:interface=127.0.0.1") as d:
            url = metricsURL(d)
            silent = []
            try:
                for _ in range(30):
                    silent.append(connectFrom("127.0.0.2", d.tlsPort))
                waitFor(lambda: refused(scrape(url), "per_source") == 20, 10,
                        "20 refused per source")
                self.assertEqual(ask(d.tcpPort, b"7\n"), b"T\n")
                for source in ("127.0.0.3", "127.0.0.4", "127.0.0.5"):
                    for _ in range(10):
                        silent.append(connectFrom(source, d.tlsPort))
                self.assertEqual(ask(d.tcpPort, b"13\n"), b"T\n")
                closed = set()

                def allClosed():
                    closed.update(i for i, s in enumerate(silent)
                                  if i not in closed and closedByPeer(s))
                    return len(closed) == len(silent)

                waitFor(allClosed, 30, "all silent connections closed")
                page = scrape(url)
                d.waitForLog("no handshake within 3s")
            finally:
                for sock in silent:
                    sock.close()
        self.assertEqual(refused(page, "per_source"), 20)
        self.assertEqual(refused(page, "limit"), 0)
        self.assertGreaterEqual(page["primed_tcp_connections_evicted_total", frozenset()], 1)
        self.assertGreaterEqual(page["primed_tls_handshake_timeouts_total", frozenset()], 1)
        self.assertEqual(page["primed_tcp_connections_per_source_limit", frozenset()], 10)
        # Rate-limited logs: one line per 10 s per kind, not one per connection.
        self.assertLessEqual(len([l for l in d.log if "Per-source connection limit" in l]), 2)
        self.assertLessEqual(len([l for l in d.log if "no handshake within" in l]), 2)


class HandshakeRateTests(CertificatesMixin, unittest.TestCase):
    def test_newTLSConnectionsPerSourceBounded(self):
        """
        With C{--max-handshakes-per-source 5}, 30 TLS connections opened at
        once from 127.0.0.2: about 5 are kept (a few more as the allowance
        refills), the rest are closed at once, counted and logged; a TLS
        client from 127.0.0.1 meanwhile is served.
        """
        paths = self.paths
        with Daemon("--listen", f"ssl:0:interface=127.0.0.1:privateKey={paths['key']}"
                                f":certKey={paths['cert']}", "--no-udp",
                    "--max-handshakes-per-source", "5",
                    "--metrics", "tcp:0:interface=127.0.0.1") as d:
            url = metricsURL(d)
            socks = [connectFrom("127.0.0.2", d.tlsPort) for _ in range(30)]
            try:
                waitFor(lambda: refused(scrape(url), "handshake_rate") >= 20, 10,
                        "20 refused over the rate")
                reply, _ = askTLS(d.tlsPort, b"17\n", paths["ca"])
                d.waitForLog("new TLS connections a second from one source")
            finally:
                for sock in socks:
                    sock.close()
        self.assertEqual(reply, b"T\n")


class TrustedBalancerTests(unittest.TestCase):
    def test_untrustedSenderClosedUnanswered(self):
        """
        With C{--proxy-from 127.0.0.2}, a PROXY header from 127.0.0.1 is
        not believed: the connection is closed unanswered, counted and
        logged; from 127.0.0.2 it is answered.  The listening line says the
        listener expects a header, and from whom.
        """
        with Daemon("--listen", "haproxy:tcp:0:interface=127.0.0.1", "--no-udp",
                    "--proxy-from", "127.0.0.2", "--verbose",
                    "--metrics", "tcp:0:interface=127.0.0.1") as d:
            url = metricsURL(d)
            self.assertEqual(askUnanswered(d.tcpPort, V1 + b"17\n"), b"")
            with connectFrom("127.0.0.2", d.tcpPort) as sock:
                sock.sendall(V1 + b"17\n")
                sock.shutdown(socket.SHUT_WR)
                self.assertEqual(readAll(sock), b"T\n")
            d.waitForLog("203.0.113.9:4444 asked b'17': T")
            d.waitForLog("not a trusted balancer")
            page = scrape(url)
        self.assertEqual(refused(page, "untrusted_proxy"), 1)
        listening = [line for line in d.log if "Listening for TCP" in line]
        self.assertIn("(expects a PROXY header from 127.0.0.2/32)", listening[0])
        self.assertFalse([line for line in d.log if "accepted from any address" in line])
        self.assertEqual(len([line for line in d.log if "asked" in line]), 1)

    def test_warningWithoutProxyFrom(self):
        with Daemon("--listen", "haproxy:tcp:0:interface=127.0.0.1", "--no-udp") as d:
            d.waitForLog("PROXY headers are accepted from any address")
            line = d.waitForLog("Listening for TCP")
        self.assertIn("(expects a PROXY header from any address)", line)

    def test_perSourceCountsTheNamedClient(self):
        """
        Behind a balancer, connections count against the client the header
        names: the balancer's own 5 connections are accepted, the third
        naming one client is closed unanswered.
        """
        with Daemon("--listen", "haproxy:tcp:0:interface=127.0.0.1", "--no-udp",
                    "--max-connections-per-source", "2", "--proxy-from", "127.0.0.1") as d:
            held = [socket.create_connection(("127.0.0.1", d.tcpPort), timeout=10)
                    for _ in range(5)]
            try:
                replies = []
                for index, sock in enumerate(held):
                    client = b"203.0.113.9" if index < 3 else b"203.0.113.%d" % index
                    sock.sendall(V1.replace(b"203.0.113.9", client) + b"7\n")
                    try:
                        replies.append(readAll(sock, 10) if index == 2 else sock.recv(16))
                    except ConnectionResetError:
                        replies.append(b"")  # closed with the request unread
                d.waitForLog("Per-source connection limit of 2 reached")
            finally:
                for sock in held:
                    sock.close()
        self.assertEqual(replies, [b"T\n", b"T\n", b"", b"T\n", b"T\n"])


class VerboseFloodTests(unittest.TestCase):
    def test_verboseLinesRateLimited(self):
        """
        2000 requests in well under a second with C{--verbose}: every one
        is answered, at most 100 verdict lines a second are written, and the
        lines left out are counted in the log, so logged plus left out is
        every request.
        """
        count = 2000
        with Daemon("--listen", "tcp:0:interface=127.0.0.1", "--no-udp", "--verbose") as d:
            started = time.monotonic()
            reply = ask(d.tcpPort, b"7\n" * count, 30)
            elapsed = time.monotonic() - started
            d.waitForLog("left out in the last second", 10)
            time.sleep(1.5)  # the window after the last request closes, reported
            d.waitForLog("Limits:")  # reads what was logged since
        self.assertEqual(reply, b"T\n" * count)
        logged = len([line for line in d.log if "asked b'7'" in line])
        leftOut = sum(int(m.group(1)) for m in
                      (re.search(r"--verbose: (\d+) request line", line) for line in d.log) if m)
        self.assertEqual(logged + leftOut, count)
        self.assertLessEqual(logged, 100 * (int(elapsed) + 2))


class TestSSLTests(CertificatesMixin, unittest.TestCase):
    def test_mozillaIntermediate(self):
        """
        testssl.sh against an C{ssl:} listener: TLS 1.2 and 1.3 only, no
        CBC ("obsolete") suite or anything weaker offered, and no check
        reports VULNERABLE or potentially VULNERABLE.  (Protocols, cipher
        categories and vulnerabilities only: about 45 s.)
        """
        testssl = shutil.which("testssl") or shutil.which("testssl.sh")
        if testssl is None:
            raise AssertionError("testssl not found: run tests/install-tools (Debian's testssl.sh)")
        paths = self.paths
        out = tempfile.mkdtemp(prefix="primed-testssl-")
        self.addCleanup(shutil.rmtree, out, True)
        report = os.path.join(out, "report.json")
        with Daemon("--listen", f"ssl:0:interface=127.0.0.1:privateKey={paths['key']}"
                                f":certKey={paths['cert']}", "--no-udp") as d:
            result = subprocess.run(
                [testssl, "--quiet", "--color", "0", "--warnings", "off", "--nodns", "none",
                 "-p", "-s", "-U", "--jsonfile", report, f"127.0.0.1:{d.tlsPort}"],
                stdin=subprocess.DEVNULL, capture_output=True, timeout=300, cwd=out)
        with open(report) as f:
            findings = {entry["id"]: entry for entry in json.load(f)}
        text = result.stdout.decode("utf-8", "replace")

        def finding(name):
            self.assertIn(name, findings, text)
            return findings[name]["finding"]

        self.assertEqual(finding("TLS1"), "not offered")
        self.assertEqual(finding("TLS1_1"), "not offered")
        self.assertEqual(finding("TLS1_2"), "offered")
        self.assertTrue(finding("TLS1_3").startswith("offered"))
        self.assertEqual(finding("cipherlist_AVERAGE"), "not offered")  # CBC
        self.assertEqual(finding("cipherlist_3DES_IDEA"), "not offered")
        self.assertEqual(finding("cipherlist_STRONG"), "offered")
        self.assertIn("LUCKY13", findings)
        self.assertIn("heartbleed", findings)
        bad = [(entry["id"], entry["severity"], entry["finding"])
               for entry in findings.values()
               if "VULNERABLE" in entry["finding"]
               or entry["severity"] in ("LOW", "MEDIUM", "HIGH", "CRITICAL")]
        self.assertEqual(bad, [], text)
