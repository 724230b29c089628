"""
The monitoring face of primed (C{--metrics ENDPOINT}): Prometheus metrics at
C{/metrics} and a health check at C{/healthz}, served by C{twisted.web} in
the reactor thread.

Nothing here runs per request.  The protocols count into the plain integers
of L{primed.counters}; L{primed.collector.PrimedCollector} reads them, and
the gauges the service's objects already keep (open connections, queued
checks), only when Prometheus scrapes.  The text itself is written by prometheus-client's own
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

from io import BytesIO
from typing import Any, Optional

from prometheus_client.exposition import choose_encoder
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.web import http, pages, resource, server

from primed.collector import PrimedCollector, makeRegistry

#: Simultaneous connections to the metrics port; more are closed at once.
MAX_CONNECTIONS = 16
#: Seconds a metrics connection may stay open: a request head takes
#: milliseconds to send, a scrape's answer milliseconds to read; HAProxy's
#: usual C{timeout http-request} is a few seconds.
TIMEOUT = 2.0



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
