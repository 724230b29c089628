"""
Tests for L{primed.metrics}: what the collector reports after known
traffic, the HTTP face (through twisted.web's real channel on a
StringTransport), the health check through a stop, the connection bound,
and C{promtool check metrics} on the real output.
"""

import os
import shutil
import subprocess
import tempfile

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from fakes import HandDrivenPool, ThreadlessReactor, connect, makeService
from primed import metrics
from primed.metrics import MAX_CONNECTIONS, MetricsService, makeRegistry, makeSite

BIG_PRIME = 2**607 - 1
ADDR = ("127.0.0.1", 40000)


def get(site, path, method=b"GET", headers=b""):
    """
    One HTTP/1.0 request through C{site}'s real channel.

    @return: C{(status, headers dict, body)}.
    """
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(method + b" " + path + b" HTTP/1.0\r\n" + headers + b"\r\n")
    raw = transport.value()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    fields = {}
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        fields[key.strip().lower()] = value.strip()
    channel.connectionLost(None)
    return status, fields, body


def samples(text):
    """
    C{{(name, frozenset(labels)): value}} of a Prometheus text page.
    """
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, frozenset(sample.labels.items())] = sample.value
    return found


class Harness:
    def __init__(self, testCase, **options):
        self.reactor = ThreadlessReactor()
        self.pool = HandDrivenPool()
        self.service = makeService(self.reactor, self.pool, threads=3, **options)
        self.site = makeSite(self.service)

    def scrape(self):
        status, headers, body = get(self.site, b"/metrics")
        assert status == 200, (status, body)
        return samples(body.decode())


class CollectorTests(unittest.TestCase):
    def setUp(self):
        self.harness = Harness(self, maxConnections=2, maxQueued=1, drainTimeout=10)
        self.service = self.harness.service
        self.service.startService()

    def value(self, page, name, **labels):
        return page[name, frozenset(labels.items())]

    def test_exactCounts(self):
        """
        Known traffic, then a scrape: every counter says what happened.
        """
        factory = self.service.factory
        protocol, transport = connect(factory)
        protocol.dataReceived(b"2\n3\n5\n4\n6\nx\n%d\n" % BIG_PRIME)
        other, _ = connect(factory)
        other.dataReceived(b"9\n")  # a request: not one to close to make room
        self.assertIsNone(factory.buildProtocol(None))  # over the limit
        udp = self.service.datagramProtocols[0]
        for datagram in [b"7", b"8", b"9", b"y", b"", b"%d" % BIG_PRIME]:
            udp.datagramReceived(datagram, ADDR)  # the big one: pool full, dropped

        page = self.harness.scrape()
        requests = "primed_requests_total"
        self.assertEqual(self.value(page, requests, transport="tcp", verdict="prime"), 3)
        self.assertEqual(self.value(page, requests, transport="tcp", verdict="not_prime"), 3)
        self.assertEqual(self.value(page, requests, transport="tcp", verdict="invalid"), 1)
        self.assertEqual(self.value(page, requests, transport="udp", verdict="prime"), 1)
        self.assertEqual(self.value(page, requests, transport="udp", verdict="not_prime"), 2)
        self.assertEqual(self.value(page, requests, transport="udp", verdict="invalid"), 1)
        self.assertEqual(self.value(page, "primed_udp_dropped_total"), 1)
        self.assertEqual(self.value(page, "primed_udp_ignored_total"), 1)
        self.assertEqual(self.value(page, "primed_tcp_connections"), 2)
        self.assertEqual(self.value(page, "primed_tcp_connections_accepted_total"), 2)
        refused = "primed_tcp_connections_refused_total"
        self.assertEqual(self.value(page, refused, reason="limit"), 1)
        self.assertEqual(self.value(page, refused, reason="per_source"), 0)
        self.assertEqual(self.value(page, refused, reason="untrusted_proxy"), 0)
        self.assertEqual(self.value(page, refused, reason="proxy_header"), 0)
        self.assertEqual(self.value(page, refused, reason="handshake_rate"), 0)
        self.assertEqual(self.value(page, "primed_tcp_connections_evicted_total"), 0)
        self.assertEqual(self.value(page, "primed_tls_handshake_timeouts_total"), 0)
        self.assertEqual(self.value(page, "primed_verbose_lines_left_out_total"), 0)
        self.assertEqual(self.value(page, "primed_tcp_connections_per_source_limit"), 0)
        self.assertEqual(self.value(page, "primed_pool_threads"), 3)
        self.assertEqual(self.value(page, "primed_pool_queued"), 1)
        self.assertEqual(self.value(page, "primed_pool_queued_limit"), 1)
        self.assertEqual(self.value(page, "primed_pool_check_seconds_count"), 0)

        self.harness.pool.run()
        self.assertEqual(transport.value(), b"T\nT\nT\nF\nF\nE\nT\n")
        page = self.harness.scrape()
        self.assertEqual(self.value(page, requests, transport="tcp", verdict="prime"), 4)
        self.assertEqual(self.value(page, "primed_pool_queued"), 0)
        self.assertEqual(self.value(page, "primed_pool_check_seconds_count"), 1)
        self.assertEqual(
            self.value(page, "primed_pool_check_seconds_bucket", le="+Inf"), 1
        )
        self.assertEqual(self.value(page, "primed_pool_check_seconds_bucket", le="0.0001"), 0)

    def test_pausedByReason(self):
        factory = self.service.factory
        first, _ = connect(factory)
        second, _ = connect(factory)
        first.pauseProducing()  # its client does not read
        first.dataReceived(b"%d\n" % BIG_PRIME)  # takes the only pool slot
        second.dataReceived(b"%d\n" % BIG_PRIME)  # waits for room
        page = self.harness.scrape()
        paused = "primed_tcp_paused_connections"
        self.assertEqual(self.value(page, paused, reason="consumer"), 1)
        self.assertEqual(self.value(page, paused, reason="pool"), 1)
        self.assertEqual(self.value(page, paused, reason="inflight"), 0)
        self.assertEqual(self.value(page, paused, reason="drain"), 0)

    def test_idleAndDrain(self):
        factory = self.service.factory
        factory.idleTimeout = 5
        idle, _ = connect(factory)
        idle.setTimeout(5)
        self.harness.reactor.advance(5)
        idle.connectionLost(None)  # StringTransport's abortConnection does not
        busy, _ = connect(factory)
        busy.dataReceived(b"%d\n4\n" % BIG_PRIME)
        self.service.stopService()
        self.harness.reactor.advance(10)
        page = self.harness.scrape()
        self.assertEqual(self.value(page, "primed_tcp_connections_idle_closed_total"), 1)
        self.assertEqual(self.value(page, "primed_drain_unanswered_total"), 2)

    def test_tlsPlainTextClosed(self):
        """
        What the TLS listener's first-byte check counts is exported.
        """
        page = self.harness.scrape()
        self.assertEqual(self.value(page, "primed_tls_plaintext_closed_total"), 0)
        self.service.counters.tlsPlainTextClosed += 3
        page = self.harness.scrape()
        self.assertEqual(self.value(page, "primed_tls_plaintext_closed_total"), 3)

    def test_buildAndProcessInfo(self):
        page = self.harness.scrape()
        [info] = [labels for (name, labels) in page if name == "primed_build_info"]
        info = dict(info)
        self.assertEqual(sorted(info), ["gmpy2", "python", "python_flint", "twisted", "version"])
        import twisted

        self.assertEqual(info["twisted"], twisted.__version__)
        self.assertGreater(self.value(page, "process_resident_memory_bytes"), 1 << 20)
        self.assertGreater(self.value(page, "process_open_fds"), 0)
        self.assertIn(("process_start_time_seconds", frozenset()), page)
        self.assertIn(("process_cpu_seconds_total", frozenset()), page)

    def test_processMetricsWithoutProcStat(self):
        """
        The process metrics are there when /proc/stat is hidden, as under
        the systemd units' ProcSubset=pid; prometheus-client's collector
        reads the boot time there and, without it, reported nothing at all.
        """
        proc = tempfile.mkdtemp(prefix="primed-proc-")
        self.addCleanup(shutil.rmtree, proc)
        os.symlink("/proc/self", os.path.join(proc, "self"))  # no "stat" beside it
        hidden = samples(generate_latest(makeRegistry(self.service, proc=proc)).decode())
        real = self.harness.scrape()
        self.assertGreater(self.value(hidden, "process_resident_memory_bytes"), 1 << 20)
        self.assertGreater(self.value(hidden, "process_open_fds"), 0)
        started = [self.value(page, "process_start_time_seconds") for page in (hidden, real)]
        self.assertLess(abs(started[0] - started[1]), 2)

    def test_histogramBuckets(self):
        page = self.harness.scrape()
        bounds = sorted(
            float(dict(labels)["le"])
            for name, labels in page
            if name == "primed_pool_check_seconds_bucket"
        )
        self.assertEqual(bounds[0], 0.0001)
        self.assertEqual(bounds[-2], 10.0)
        self.assertEqual(bounds[-1], float("inf"))


class HTTPTests(unittest.TestCase):
    def setUp(self):
        self.harness = Harness(self)
        self.site = self.harness.site

    def test_textFormat(self):
        status, headers, body = get(self.site, b"/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers[b"content-type"].startswith(b"text/plain; version=0.0.4"))
        self.assertIn(b"# TYPE primed_requests_total counter", body)

    def test_openMetrics(self):
        status, headers, body = get(
            self.site, b"/metrics",
            headers=b"Accept: application/openmetrics-text; version=1.0.0,text/plain;q=0.5\r\n",
        )
        self.assertEqual(status, 200)
        self.assertTrue(headers[b"content-type"].startswith(b"application/openmetrics-text"))
        self.assertTrue(body.endswith(b"# EOF\n"))
        self.assertIn(b"# TYPE primed_requests counter", body)

    def test_head(self):
        status, headers, body = get(self.site, b"/metrics", method=b"HEAD")
        self.assertEqual(status, 200)
        self.assertEqual(body, b"")

    def test_otherMethods(self):
        for path in [b"/metrics", b"/healthz"]:
            for method in [b"POST", b"PUT", b"DELETE"]:
                status, headers, _ = get(self.site, path, method=method)
                self.assertEqual(status, 405, (path, method))
                self.assertEqual(headers[b"allow"], b"GET, HEAD")

    def test_bodyNotKept(self):
        """
        A body sent with a request is discarded as it arrives, however long.
        """
        channel = self.site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"POST /metrics HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Length: 10000000\r\n\r\n")
        request = getattr(channel, "_channel", channel).requests[-1]
        for _ in range(99):
            channel.dataReceived(b"x" * 100000)
        self.assertEqual(request.content.getvalue(), b"")
        channel.dataReceived(b"x" * 100000)
        self.assertIn(b" 405 ", transport.value().split(b"\r\n")[0] + b" ")
        channel.connectionLost(None)

    def test_timeoutNotResetByEachByte(self):
        """
        C{--metrics-timeout} runs from the connection to a complete request:
        a client sending one byte every few seconds (slowloris) is closed
        when it expires, as one sending nothing is.  twisted.web restarts
        its timer on every read, so 16 such clients held the port forever.
        """
        channel = self.site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        reactor = self.harness.reactor
        for byte in b"GET /metrics HTTP/1.1\r\n":
            channel.dataReceived(bytes([byte]))
            reactor.advance(4)
            if transport.disconnecting:
                break
        self.assertTrue(transport.disconnecting)
        self.assertLessEqual(reactor.seconds(), 12)
        channel.connectionLost(None)

    def test_oneRequestPerConnection(self):
        """
        Pipelined requests get one answer, then the connection closes: each
        scrape costs the reactor one page, however many requests one read
        holds, and a client that does not read its answers cannot pile them
        up in memory.
        """
        channel = self.site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 100)
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 1)
        self.assertIn(b"\r\nConnection: close\r\n", transport.value())
        self.assertTrue(transport.disconnecting)
        channel.connectionLost(None)

    def test_unknownPaths(self):
        for path in [b"/", b"/metric", b"/metrics/", b"/metrics/x", b"/healthz/x",
                     b"/favicon.ico", b"//metrics"]:
            status, _, _ = get(self.site, path)
            self.assertEqual(status, 404, path)

    def test_health(self):
        """
        Not running yet: 503.  Running, every listener bound: 200 ok.
        Stopping: 503 with the reason, until the drain is over.
        """
        status, _, body = get(self.site, b"/healthz")
        self.assertEqual((status, body), (503, b"not running\n"))
        service = self.harness.service
        service.startService()
        status, headers, body = get(self.site, b"/healthz")
        self.assertEqual((status, body), (200, b"ok\n"))
        self.assertEqual(headers[b"cache-control"], b"no-store")
        protocol, _ = connect(service.factory)
        protocol.dataReceived(b"%d\n" % BIG_PRIME)
        stopped = service.stopService()
        status, _, body = get(self.site, b"/healthz")
        self.assertEqual(status, 503)
        self.assertIn(b"stopping", body)
        self.assertNoResult(stopped)

    def test_missingListener(self):
        service = self.harness.service
        service.startService()
        service.udpPorts.pop()
        status, _, body = get(self.site, b"/healthz")
        self.assertEqual((status, body), (503, b"not every listener is bound\n"))


class MetricsServiceTests(unittest.TestCase):
    def setUp(self):
        self.harness = Harness(self, drainTimeout=10)
        self.primed = self.harness.service
        self.reactor = self.harness.reactor
        self.metrics = MetricsService(
            self.primed, "tcp:9809", serverFromString(self.reactor, "tcp:9809")
        )

    def test_listens(self):
        self.metrics.startService()
        [(port, factory, backlog, interface)] = [
            s for s in self.reactor.tcpServers if s[0] == 9809
        ]
        self.assertIs(factory, self.metrics.factory)

    def test_connectionBound(self):
        """
        Past L{MAX_CONNECTIONS} open connections that have all sent a
        request, new ones are refused; a closed one makes room.
        """
        self.metrics.startService()
        factory = self.metrics.factory
        protocols = []
        for _ in range(MAX_CONNECTIONS):
            protocol = factory.buildProtocol(None)
            protocol.makeConnection(StringTransport())
            protocol.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            protocols.append(protocol)
        self.assertIsNone(factory.buildProtocol(None))
        self.assertEqual(factory.refused, 1)
        protocols[0].connectionLost(None)
        self.assertIsNotNone(factory.buildProtocol(None))

    def test_fullPortClosesOldestWithoutRequest(self):
        """
        When the port is full, the oldest connection that has not sent a
        whole request head is aborted to make room for the new one, and
        counted; those that have sent one, however old, stay.
        """
        self.metrics.startService()
        factory = self.metrics.factory
        transports = []
        for index in range(MAX_CONNECTIONS):
            protocol = factory.buildProtocol(None)
            transport = StringTransport()
            protocol.makeConnection(transport)
            transports.append(transport)
            if index == 0:
                protocol.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            else:
                protocol.dataReceived(b"GET /healthz HTTP/1.1\r\nHo")  # trickling
        factory.buildProtocol(None).makeConnection(StringTransport())
        self.assertEqual([t.disconnected for t in transports[:3]], [False, True, False])
        self.assertEqual((factory.evicted, factory.refused), (1, 0))
        factory.buildProtocol(None).makeConnection(StringTransport())
        self.assertEqual([t.disconnected for t in transports[:3]], [False, True, True])
        self.assertEqual(len(factory.protocols), MAX_CONNECTIONS)
        page = samples(get(self.metrics.factory.wrappedFactory, b"/metrics")[2].decode())
        closed = "primed_metrics_connections_closed_total"
        self.assertEqual(page[closed, frozenset({("reason", "evicted")})], 2)
        self.assertEqual(page[closed, frozenset({("reason", "refused")})], 0)

    def test_timeoutFromConnection(self):
        """
        The deadline runs from the connection, whatever arrives meanwhile,
        and is counted.
        """
        clock = self.metrics.factory.wrappedFactory.reactor  # a MemoryReactorClock
        protocol = self.metrics.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        for _ in range(19):
            clock.advance(0.1)
            protocol.dataReceived(b"G")
        self.assertFalse(transport.disconnecting)
        clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.metrics.factory.timedOut, 1)

    def test_idleTimeout(self):
        self.assertEqual(self.metrics.factory.wrappedFactory.timeOut, 2.0)
        from primed import tap

        self.assertEqual((tap.METRICS_TIMEOUT, tap.METRICS_MAX_CONNECTIONS),
                         (metrics.TIMEOUT, MAX_CONNECTIONS))

    def test_stopWaitsForDrain(self):
        """
        Stopping the metrics service stops primed (the same stop twistd
        starts) and keeps the port open, answering 503, until primed has
        drained.
        """
        self.primed.startService()
        self.metrics.startService()
        port = self.metrics.port
        protocol, transport = connect(self.primed.factory)
        protocol.dataReceived(b"%d\n" % BIG_PRIME)
        metricsStopped = self.metrics.stopService()
        primedStopped = self.primed.stopService()
        self.assertNoResult(metricsStopped)
        self.assertTrue(port.connected if hasattr(port, "connected") else True)
        status, _, _ = get(self.metrics.factory.wrappedFactory, b"/healthz")
        self.assertEqual(status, 503)
        self.harness.pool.run()
        protocol.connectionLost(None)
        self.successResultOf(primedStopped)
        self.successResultOf(metricsStopped)
        self.assertIsNone(self.metrics.port)

    def test_listenFailure(self):
        class Refusing:
            def listen(self, factory):
                from twisted.internet.defer import fail
                from twisted.internet.error import CannotListenError

                return fail(CannotListenError("127.0.0.1", 9809, OSError("in use")))

        metrics = MetricsService(self.primed, "tcp:9809", Refusing())
        error = self.assertRaises(SystemExit, metrics.privilegedStartService)
        self.assertIn("--metrics tcp:9809", str(error))


class PromtoolTests(unittest.TestCase):
    """
    C{promtool check metrics} (Debian's prometheus package; tests/install-tools
    installs it) finds nothing to say about the page, histogram filled.
    """

    def test_checkMetrics(self):
        promtool = shutil.which("promtool")
        self.assertIsNotNone(promtool, "promtool missing: run tests/install-tools")
        harness = Harness(self)
        harness.service.startService()
        harness.service.checker.checkTimes.observe(0.003)
        _, _, body = get(harness.site, b"/metrics")
        result = subprocess.run(
            [promtool, "check", "metrics"], input=body, capture_output=True, timeout=60
        )
        self.assertEqual(
            (result.returncode, result.stdout, result.stderr), (0, b"", b""), body.decode()
        )


class OptionsTests(unittest.TestCase):
    """
    C{--metrics} and its limits in L{primed.tap}.
    """

    def parse(self, *argv):
        from primed.tap import Options

        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_offByDefault(self):
        from primed.tap import makeService

        options = self.parse()
        self.assertIsNone(options["metrics"])
        top = makeService(options, ThreadlessReactor())
        self.assertEqual([s.name for s in top], ["primed"])

    def test_defaultsAreTheModule(self):
        from primed.metrics import TIMEOUT

        options = self.parse()
        self.assertEqual(options["metrics-max-connections"], MAX_CONNECTIONS)
        self.assertEqual(options["metrics-timeout"], TIMEOUT)

    def test_metricsService(self):
        from primed.tap import makeService

        reactor = ThreadlessReactor()
        options = self.parse("--metrics", "tcp:9809:interface=127.0.0.1",
                             "--metrics-max-connections", "3", "--metrics-timeout", "2.5")
        top = makeService(options, reactor)
        metrics = top.getServiceNamed("metrics")
        self.assertIs(metrics.primed, top.getServiceNamed("primed"))
        self.assertEqual(metrics.factory.limit, 3)
        self.assertEqual(metrics.factory.wrappedFactory.timeOut, 2.5)
        metrics.privilegedStartService()
        self.assertEqual([(p, i) for p, f, b, i in reactor.tcpServers if f is metrics.factory],
                         [(9809, "127.0.0.1")])

    def test_badEndpoint(self):
        from twisted.python.usage import UsageError

        error = self.assertRaises(UsageError, self.parse, "--metrics", "bogus:1")
        self.assertIn("--metrics 'bogus:1'", str(error))
        self.assertRaises(UsageError, self.parse, "--metrics-max-connections", "0")
