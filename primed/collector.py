"""
What primed tells Prometheus (C{--metrics}): L{PrimedCollector} turns the
plain integers of L{primed.counters}, and the gauges the service's objects
already keep (open connections, queued checks), into metric families, only
when Prometheus scrapes; L{makeRegistry} adds the process collector.  The
HTTP port that serves them, and its defences against slow clients, are
L{primed.metrics}'s: the two change for different reasons.
"""

import platform
import time
from typing import Optional

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.utils import floatToGoString

from primed.tcp import (
    PAUSED_BY_CONSUMER,
    PAUSED_BY_DRAIN,
    PAUSED_BY_INFLIGHT,
    PAUSED_BY_POOL,
)

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
