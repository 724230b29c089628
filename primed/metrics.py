"""
The monitoring face of primed (C{--metrics ENDPOINT}): Prometheus metrics at
C{/metrics} and a health check at C{/healthz}, served by C{twisted.web} in
the reactor thread.

Nothing here runs per request.  The protocols count into the plain integers
of L{primed.counters}; L{PrimedCollector} reads them, and the gauges the
service's objects already keep (open connections, queued checks), only when
Prometheus scrapes.  The text itself is written by prometheus-client's own
exposition code, in the Prometheus text format or in OpenMetrics when the
scraper asks for it (C{Accept}).

The port cannot disturb the prime service: it takes at most
L{MAX_CONNECTIONS} connections (C{--metrics-max-connections}), each closed
L{TIMEOUT} seconds after it was opened (C{--metrics-timeout}) and after its
first answer (L{_Channel}), twisted.web bounds the size of a request's
headers, bodies are not kept, and a scrape costs the reactor well under a
millisecond.

Nor can slow clients shut out the scraper or a balancer's C{/healthz}
(slowloris): the deadline runs from the connection, not from the last byte,
and when the port is full the oldest connection that has not sent a whole
request head is closed to make room for the new one (L{_LimitedFactory}),
so a client that sends its request at once is always answered, however
many connections trickle bytes or sit idle.

A stop keeps this port open until the service has drained, so that
C{/healthz} answers 503 while primed finishes its work and a balancer can
take it out of rotation first.
"""

import platform
import time
from io import BytesIO
from typing import Any, Optional

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.web import http, pages, resource, server

from primed.tcp import (
    PAUSED_BY_CONSUMER,
    PAUSED_BY_DRAIN,
    PAUSED_BY_INFLIGHT,
    PAUSED_BY_POOL,
)

#: Simultaneous connections to the metrics port; more are closed at once.
MAX_CONNECTIONS = 16
#: Seconds a metrics connection may stay open: a request head takes
#: milliseconds to send, a scrape's answer milliseconds to read; HAProxy's
#: usual C{timeout http-request} is a few seconds.
TIMEOUT = 2.0

_PAUSE_REASONS = (PAUSED_BY_CONSUMER, PAUSED_BY_INFLIGHT, PAUSED_BY_POOL, PAUSED_BY_DRAIN)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for label, distribution in (
        ("version", "primed"),
        ("twisted", "Twisted"),
        ("gmpy2", "gmpy2"),
        ("python_flint", "python-flint"),
    ):
        try:
            found[label] = version(distribution)
        except PackageNotFoundError:
            found[label] = "unknown"
    found["python"] = platform.python_version()
    return found


class PrimedCollector:
    """
    A prometheus-client collector reading a L{primed.service.PrimedService}
    at scrape time.
    """

    def __init__(self, primed):
        self.primed = primed
        self.versions = _versions()
        #: The metrics port's L{_LimitedFactory}, once it exists.
        self.metricsFactory = None

    def collect(self):
        primed = self.primed
        counters = primed.counters
        factory = primed.factory
        checker = primed.checker
        protocols = list(factory.protocols)

        requests = CounterMetricFamily(
            "primed_requests",
            "Requests answered, by transport and verdict (T prime, F not_prime, E invalid).",
            labels=["transport", "verdict"],
        )
        for transport, prime, notPrime, invalid in (
            ("tcp", counters.tcpPrime, counters.tcpNotPrime, counters.tcpInvalid),
            ("udp", counters.udpPrime, counters.udpNotPrime, counters.udpInvalid),
        ):
            requests.add_metric([transport, "prime"], prime)
            requests.add_metric([transport, "not_prime"], notPrime)
            requests.add_metric([transport, "invalid"], invalid)
        yield requests

        yield CounterMetricFamily(
            "primed_udp_dropped",
            "UDP requests dropped unanswered because the check pool was full (--max-queued) "
            "or their source's share of it (--max-queued-per-source).",
            value=sum(p.dropped for p in primed.datagramProtocols),
        )
        yield CounterMetricFamily(
            "primed_udp_ignored",
            "Empty UDP datagrams, ignored.",
            value=counters.udpIgnored,
        )
        yield GaugeMetricFamily(
            "primed_tcp_connections", "TCP connections open now.", value=len(protocols)
        )
        yield GaugeMetricFamily(
            "primed_tcp_connections_limit",
            "Open TCP connections allowed (--max-connections).",
            value=factory.maxConnections,
        )
        yield CounterMetricFamily(
            "primed_tcp_connections_accepted",
            "TCP connections accepted and served.",
            value=counters.tcpAccepted,
        )
        refused = CounterMetricFamily(
            "primed_tcp_connections_refused",
            "TCP connections closed at once, by reason: limit (over --max-connections "
            "with none to close instead, or during a stop), per_source "
            "(--max-connections-per-source), untrusted_proxy (a haproxy: listener's "
            "peer not in --proxy-from), proxy_header (no valid PROXY header within "
            "--proxy-timeout), handshake_rate (--max-handshakes-per-source).",
            labels=["reason"],
        )
        refused.add_metric(["limit"], factory.refused)
        refused.add_metric(["per_source"], factory.sources.refused)
        refused.add_metric(["untrusted_proxy"], counters.proxyUntrusted)
        refused.add_metric(["proxy_header"], counters.proxyRefused)
        refused.add_metric(["handshake_rate"], primed.handshakeRates.refused)
        yield refused
        yield GaugeMetricFamily(
            "primed_tcp_connections_per_source_limit",
            "Open TCP connections allowed from one source (--max-connections-per-source; "
            "0: no limit).",
            value=factory.maxPerSource,
        )
        yield GaugeMetricFamily(
            "primed_tcp_sources",
            "Sources with TCP connections open now (counted only under a per-source limit).",
            value=len(factory.sources.open),
        )
        yield CounterMetricFamily(
            "primed_tcp_connections_evicted",
            "TCP connections without a complete request closed to make room for a new "
            "one at --max-connections.",
            value=factory.evicted,
        )
        yield CounterMetricFamily(
            "primed_tls_handshake_timeouts",
            "TLS connections closed for not completing their handshake within "
            "--handshake-timeout.",
            value=counters.tlsHandshakeTimeouts,
        )
        yield CounterMetricFamily(
            "primed_verbose_lines_left_out",
            "--verbose request lines not logged, over --verbose-rate.",
            value=primed.verboseLines.leftOut,
        )
        metricsPort = self.metricsFactory
        if metricsPort is not None:
            closed = CounterMetricFamily(
                "primed_metrics_connections_closed",
                "Connections to the --metrics port closed unanswered, by reason: "
                "refused (full of connections that all sent a request), evicted "
                "(the oldest without a whole request, to make room), timeout "
                "(--metrics-timeout).",
                labels=["reason"],
            )
            closed.add_metric(["refused"], metricsPort.refused)
            closed.add_metric(["evicted"], metricsPort.evicted)
            closed.add_metric(["timeout"], metricsPort.timedOut)
            yield closed
        yield CounterMetricFamily(
            "primed_tcp_connections_idle_closed",
            "TCP connections closed after --idle-timeout without a request.",
            value=counters.tcpIdleClosed,
        )
        paused = GaugeMetricFamily(
            "primed_tcp_paused_connections",
            "TCP connections not reading now, by reason (one connection may have several).",
            labels=["reason"],
        )
        for reason in _PAUSE_REASONS:
            paused.add_metric(
                [reason], sum(1 for p in protocols if reason in p._paused)
            )
        yield paused
        yield CounterMetricFamily(
            "primed_lines_too_long",
            "Over-long requests answered E: TCP lines and datagrams longer than "
            "--max-digits plus 64 bytes.",
            value=counters.linesTooLong,
        )
        yield CounterMetricFamily(
            "primed_tls_plaintext_closed",
            "Connections to a TLS listener closed at once because their first byte "
            "cannot begin a TLS handshake (a client without TLS).",
            value=counters.tlsPlainTextClosed,
        )
        yield GaugeMetricFamily(
            "primed_pool_threads", "Threads checking big numbers (--threads).",
            value=primed.threads,
        )
        yield GaugeMetricFamily(
            "primed_pool_queued", "Big-number checks running or waiting for a thread now.",
            value=checker.queued,
        )
        yield GaugeMetricFamily(
            "primed_pool_queued_limit",
            "Big-number checks allowed to run or wait at once (--max-queued).",
            value=checker.maxQueued,
        )
        queue = checker.queue
        yield GaugeMetricFamily(
            "primed_pool_queued_per_source_limit",
            "Big-number checks one source (an IPv4 address, an IPv6 /64) may have running "
            "or waiting at once (--max-queued-per-source).",
            value=queue.perSource,
        )
        yield GaugeMetricFamily(
            "primed_pool_running", "Big-number checks running in a pool thread now.",
            value=queue.running,
        )
        yield GaugeMetricFamily(
            "primed_pool_sources",
            "Sources with big-number checks running or waiting now.",
            value=queue.sources(),
        )
        quota = CounterMetricFamily(
            "primed_pool_source_quota",
            "Big-number requests that found their source's share of the check pool full "
            "(--max-queued-per-source, or the places kept for new sources) while the pool "
            "had room: TCP connections paused, UDP requests dropped.",
            labels=["transport"],
        )
        quota.add_metric(["tcp"], counters.tcpSourceQuota)
        quota.add_metric(["udp"], counters.udpSourceQuota)
        yield quota
        yield CounterMetricFamily(
            "primed_pool_cancelled",
            "Big-number checks dropped before they ran because their TCP connection was lost.",
            value=queue.cancelled,
        )
        yield CounterMetricFamily(
            "primed_pool_discarded",
            "Big-number checks that ran for a TCP connection lost meanwhile; their results "
            "were discarded.",
            value=counters.poolDiscarded,
        )
        buckets, total = checker.checkTimes.cumulative()
        yield HistogramMetricFamily(
            "primed_pool_check_seconds",
            "Time one big-number check ran in the pool (waiting for a thread excluded).",
            buckets=[(floatToGoString(le), count) for le, count in buckets],
            sum_value=total,
        )
        yield CounterMetricFamily(
            "primed_drain_unanswered",
            "Requests received but left unanswered because a stop reached --drain-timeout.",
            value=counters.drainUnanswered,
        )
        versions = self.versions
        proofPool = getattr(primed, "proofPool", None)
        if proofPool is not None:
            from primed.proving import proofMetrics

            yield from proofMetrics(proofPool)
            versions = dict(versions, prover=proofPool.proverName or "starting")
        info = GaugeMetricFamily(
            "primed_build_info",
            "Versions of primed and of what it runs on (and with --prove, the prover); "
            "always 1.",
            labels=sorted(versions),
        )
        info.add_metric([versions[k] for k in sorted(versions)], 1)
        yield info


def health(primed) -> Optional[str]:
    """
    Why C{primed} should not get traffic now, or L{None} when it is healthy:
    every listener bound and no stop begun.
    """
    if primed.stopping:
        return "stopping: answering the requests already received"
    if not primed.running:
        return "not running"
    if len(primed.tcpPorts) != len(primed.tcpEndpoints) or len(
        primed.udpPorts
    ) != len(primed.udpAddresses):
        return "not every listener is bound"
    return None


_NOT_FOUND = pages.notFound("Not Found", "Only /metrics and /healthz are here.")


class _Page(resource.Resource):
    """
    A leaf answering GET and HEAD (twisted.web answers HEAD with GET's
    headers and no body), any other method with 405; anything below it
    is 404.
    """

    isLeaf = True
    allowedMethods = (b"GET", b"HEAD")

    def render(self, request):
        if request.postpath:
            return _NOT_FOUND.render(request)
        if request.method not in self.allowedMethods:
            request.setResponseCode(405)
            request.setHeader(b"allow", b", ".join(self.allowedMethods))
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"method not allowed: use GET or HEAD\n"
        return resource.Resource.render(self, request)


class MetricsPage(_Page):
    def __init__(self, registry):
        _Page.__init__(self)
        self.registry = registry

    def render_GET(self, request):
        accept = request.getHeader(b"accept")
        encoder, contentType = choose_encoder(accept.decode("latin-1") if accept else "")
        request.setHeader(b"content-type", contentType.encode("ascii"))
        return encoder(self.registry)


class HealthPage(_Page):
    def __init__(self, primed):
        _Page.__init__(self)
        self.primed = primed

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        problem = health(self.primed)
        if problem is None:
            return b"ok\n"
        request.setResponseCode(503)
        return problem.encode("utf-8") + b"\n"


class Root(resource.Resource):
    """
    Exactly C{/metrics} and C{/healthz}; every other path is 404.
    """

    def __init__(self, primed, registry):
        resource.Resource.__init__(self)
        self.putChild(b"metrics", MetricsPage(registry))
        self.putChild(b"healthz", HealthPage(primed))

    def getChild(self, path, request):
        return _NOT_FOUND

    def render(self, request):
        return _NOT_FOUND.render(request)


class _BodilessRequest(server.Request):
    """
    A request whose body, if a client sends one, is read and thrown away:
    GET and HEAD need none, and twisted.web would otherwise keep it in
    memory, or in a temporary file past 100 kB.
    """

    def gotLength(self, length):
        self.content = BytesIO()

    def handleContentChunk(self, data):
        pass


class _Channel(http.HTTPChannel):
    """
    twisted.web's HTTP/1.1 channel, except that:

      - its timeout runs from the connection to a complete request.
        C{HTTPChannel} restarts the timer on every read, so a client sending
        a byte every few seconds (slowloris) kept its connection forever,
        and C{--metrics-max-connections} of them shut Prometheus out;

      - it answers one request per connection, then closes it
        (C{Connection: close}).  C{HTTPChannel} answers every pipelined
        request of a read at once, and keeps reading while it does: one
        client pipelining C{GET /metrics} held the reactor a second per
        read (prime replies waited that long) and piled up hundreds of
        megabytes of pages it did not read.  Prometheus opens a connection
        per scrape at most; a scrape costs well under a millisecond either
        way.
    """

    #: Whether a whole request head has arrived: until then this connection
    #: is the first to go when the port is full.
    headReceived = False

    #: Set by Site.buildProtocol (not in Twisted's annotations).
    site: server.Site

    def resetTimeout(self):
        pass

    def allHeadersReceived(self):
        self.headReceived = True
        http.HTTPChannel.allHeadersReceived(self)

    def timeoutConnection(self):
        counter = getattr(self.site, "timedOut", None)
        if counter is not None:
            counter()
        http.HTTPChannel.timeoutConnection(self)

    def checkPersistence(self, request, version):
        request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        return False


class _QuietSite(server.Site):
    """
    No access log (Prometheus scrapes every few seconds), no
    "Starting factory" lines, no request bodies kept.
    """

    noisy = False
    # Twisted types this as its HTTP/2-negotiating channel factory; a plain
    # HTTPChannel subclass is what Site builds otherwise.
    protocol = _Channel  # type: ignore[assignment]
    requestFactory = _BodilessRequest

    #: Set by L{makeSite}.
    collector: "PrimedCollector"

    def log(self, request):
        pass


class _LimitedFactory(WrappingFactory):
    """
    At most C{limit} connections at once.  When full, the oldest connection
    that has not sent a whole request head is closed to make room for the
    new one (slow or idle clients cannot keep a scraper out); only when
    every connection has sent one is the new connection closed as soon as
    it is accepted, like primed's own TCP port does.
    """

    noisy = False

    def __init__(self, wrapped, limit: int):
        # mypy cannot match self with the generic WrappingFactory[WP] here.
        WrappingFactory.__init__(self, wrapped)  # type: ignore[arg-type]
        self.limit = limit
        self.refused = 0
        self.evicted = 0
        self.timedOut = 0
        wrapped.timedOut = self._timedOut

    def _timedOut(self):
        self.timedOut += 1

    def logPrefix(self):
        return "PrimedMetrics"

    def buildProtocol(self, addr):
        if len(self.protocols) >= self.limit and not self._makeRoom():
            self.refused += 1
            return None
        return WrappingFactory.buildProtocol(self, addr)

    def _makeRoom(self) -> bool:
        # self.protocols is a dict: in the order the connections arrived.
        for wrapper in self.protocols:
            if not getattr(wrapper.wrappedProtocol, "headReceived", True):
                del self.protocols[wrapper]
                self.evicted += 1
                wrapper.transport.abortConnection()
                return True
        return False

    def unregisterProtocol(self, p):
        self.protocols.pop(p, None)  # gone already if evicted


class _ProcessCollector(ProcessCollector):
    """
    prometheus-client's process collector, which reads the boot time (for
    C{process_start_time_seconds}) from C{/proc/stat} and reports nothing
    at all without it.  The systemd units' C{ProcSubset=pid} hides that
    file (the process's own C{/proc/self} stays): the boot time then comes
    from the clocks, as the kernel computes it.
    """

    def _boot_time(self):
        try:
            return ProcessCollector._boot_time(self)
        except OSError:
            return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def makeRegistry(primed, proc: str = "/proc", collector: Optional[PrimedCollector] = None
                 ) -> CollectorRegistry:
    """
    A registry of its own (not prometheus-client's global one) with primed's
    collector and the process collector (RSS, CPU, open files, start time).

    @param proc: where procfs is mounted.
    @param collector: primed's collector; a new one by default.
    """
    if collector is None:
        collector = PrimedCollector(primed)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    _ProcessCollector(registry=registry, proc=proc)
    return registry


def makeSite(primed, timeout: float = TIMEOUT) -> _QuietSite:
    """
    The site, its L{PrimedCollector} as its C{collector}.
    """
    collector = PrimedCollector(primed)
    site = _QuietSite(
        Root(primed, makeRegistry(primed, collector=collector)), timeout=timeout,
        reactor=primed.reactor,
    )
    site.collector = collector
    return site


class MetricsService(service.Service):
    """
    Serve L{Root} on C{endpoint} for C{primed}, a
    L{primed.service.PrimedService}; stop listening only once it has stopped.
    """

    _log = Logger()

    def __init__(self, primed, description: str, endpoint,
                 maxConnections: int = MAX_CONNECTIONS, timeout: float = TIMEOUT):
        self.primed = primed
        self.description = description
        self.endpoint = endpoint
        site = makeSite(primed, timeout)
        self.factory = _LimitedFactory(site, maxConnections)
        site.collector.metricsFactory = self.factory
        self.port: Optional[Any] = None

    def privilegedStartService(self):
        service.Service.privilegedStartService(self)
        result: list[Any] = []
        self.endpoint.listen(self.factory).addBoth(result.append)
        if not result or isinstance(result[0], Failure):
            reason = result[0].value if result else "did not listen at once"
            raise SystemExit(f"primed: cannot listen: --metrics {self.description}: {reason}")
        self.port = result[0]

    def startService(self):
        if self.port is None:
            self.privilegedStartService()
        service.Service.startService(self)
        assert self.port is not None  # or privilegedStartService raised
        host = self.port.getHost()
        where = f"{host.host}:{host.port}" if hasattr(host, "port") else self.description
        self._log.info("Serving metrics on http://{address}/metrics", address=where)

    def stopService(self):
        """
        Keep answering (C{/healthz} says 503) until the prime service has
        drained; then close the port.
        """
        service.Service.stopService(self)
        done: defer.Deferred[Any] = defer.Deferred()
        stopped = self.primed.stopService()  # the same stop, started once

        def close(result):
            port, self.port = self.port, None
            if port is not None:
                defer.maybeDeferred(port.stopListening).addBoth(done.callback)
            else:
                done.callback(None)
            return result

        if isinstance(stopped, defer.Deferred):
            stopped.addBoth(close)
        else:
            close(None)
        return done
