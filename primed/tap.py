"""
Command-line options and service construction for C{twistd primed} and
C{twist primed}, in the manner of L{twisted.names.tap}.
"""

import os
import re
import select
import sys

from twisted.application import service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage

from primed import certreload, fdlimit, internals, proxy, sdnotify, signals, wire
from primed import service as _service
from primed.checker import DEFAULT_MAX_QUEUED
from primed.proofpool import DEFAULT_PROVE_MAX_QUEUED, DEFAULT_PROVE_TIMEOUT
from primed.proving import DEFAULT_PROVE_MAX_DIGITS
from primed.ratelog import VERBOSE_LINES_PER_SECOND
from primed.service import DEFAULT_DRAIN_TIMEOUT, PrimedService, UDPAddress
from primed.tcp import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_INFLIGHT
from primed.tcpfactory import DEFAULT_MAX_CONNECTIONS
from primed.tls import DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_HANDSHAKES_PER_SOURCE

# Twisted's own default backlog (50) drops SYNs when a few hundred clients
# connect at once, and they retry only after a second: match --max-connections.
DEFAULT_LISTEN = "tcp:8809:interface=127.0.0.1:backlog=1024"
DEFAULT_UDP = "127.0.0.1:8808"
# primed.metrics.MAX_CONNECTIONS and TIMEOUT, not imported: prometheus-client
# and twisted.web load only when --metrics is given (a test keeps them equal).
METRICS_MAX_CONNECTIONS = 16
METRICS_TIMEOUT = 2.0


def _positiveInt(name):
    def coerce(value):
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number < 1:
            raise usage.UsageError(f"--{name} must be a whole number, at least 1, not {value!r}")
        return number

    coerce.coerceDoc = "A whole number, at least 1."  # type: ignore[attr-defined]  # usage.Options reads it
    return coerce


def _atLeast(name, least):
    def coerce(value):
        try:
            number = int(value)
        except ValueError:
            number = least - 1
        if number < least:
            raise usage.UsageError(
                f"--{name} must be a whole number, at least {least}, not {value!r}"
            )
        return number

    coerce.coerceDoc = f"A whole number, at least {least}."  # type: ignore[attr-defined]  # usage.Options reads it
    return coerce


def _choice(name, choices):
    def coerce(value):
        if value not in choices:
            raise usage.UsageError(f"--{name} must be one of {', '.join(choices)}, not {value!r}")
        return value

    coerce.coerceDoc = f"One of {', '.join(choices)}."  # type: ignore[attr-defined]  # usage.Options reads it
    return coerce


def _seconds(name):
    def coerce(value):
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not 0 <= number < float("inf"):
            raise usage.UsageError(
                f"--{name} must be a number of seconds, 0 or more, not {value!r}"
            )
        return number

    coerce.coerceDoc = "Seconds, 0 or more."  # type: ignore[attr-defined]  # usage.Options reads it
    return coerce


class Options(usage.Options):
    """
    Every limit primed enforces is an option here, with its default shown in
    C{--help}.
    """

    synopsis = "[options]"
    longdesc = (
        "Answer 'is this integer prime?' over TCP and UDP: one decimal number "
        "per line or datagram, replies T (prime), F (not prime) or E (not an "
        "integer, or too long)."
    )

    optFlags = [
        ["no-udp", None, "Do not serve UDP."],
        ["reuseport", None,
         "Bind TCP (tcp:, tcp6: and ssl: endpoints) and UDP with SO_REUSEPORT, so several "
         "primed processes can share the ports, one core each."],
        ["verbose", "v",
         "Log every request and its verdict, once, when it is known; at most "
         "--verbose-rate lines a second, then a count of those left out."],
        ["prove", None,
         "Answer T only for proven primes: probable primes above 3.3e24 are proved "
         "(PARI's APR-CL and ECPP with primed[prove], FLINT otherwise) in worker "
         "processes; E when no proof can be given (too long, out of time)."],
    ]

    optParameters = [
        ["threads", "t", os.cpu_count() or 1,
         "Threads checking big numbers.", _positiveInt("threads")],
        ["max-digits", None, wire.DEFAULT_MAX_DIGITS,
         "Longest number checked, in significant digits; longer ones are "
         "answered E.", _positiveInt("max-digits")],
        ["max-queued", None, DEFAULT_MAX_QUEUED,
         "Big-number checks running or waiting for a thread, over all clients; "
         "beyond it TCP clients wait and UDP requests are dropped.",
         _positiveInt("max-queued")],
        ["max-queued-per-source", None, 0,
         "Big-number checks one source (an IPv4 address, an IPv6 /64) may have "
         "running or waiting; beyond it its TCP connections wait and its UDP "
         "requests are dropped. 0: a quarter of --max-queued, at least --threads. The last quarter "
         "of --max-queued is kept for sources with nothing queued.",
         _atLeast("max-queued-per-source", 0)],
        ["max-inflight", None, DEFAULT_MAX_INFLIGHT,
         "Replies pending on one TCP connection before it stops reading.",
         _positiveInt("max-inflight")],
        ["max-connections", None, DEFAULT_MAX_CONNECTIONS,
         "Open TCP connections, over all listeners. When it is reached, the oldest "
         "connection that has not sent a complete request is closed to make room; "
         "if there is none, the new one is closed at once.",
         _positiveInt("max-connections")],
        ["max-connections-per-source", None, None,
         "Open TCP connections from one source (an IPv4 address, an IPv6 /64, or the "
         "client a PROXY header names); more are closed at once; 0 for no limit. "
         "[default: a quarter of --max-connections]",
         _atLeast("max-connections-per-source", 0)],
        ["idle-timeout", None, DEFAULT_IDLE_TIMEOUT,
         "Seconds a TCP connection may stay with no complete request and no "
         "reply owed before it is closed; 0 never closes.",
         _seconds("idle-timeout")],
        ["proxy-timeout", None, proxy.DEFAULT_HEADER_TIMEOUT,
         "Seconds a connection to a haproxy: listener may take to send its "
         "PROXY header before it is closed unanswered; 0 never closes.",
         _seconds("proxy-timeout")],
        ["handshake-timeout", None, DEFAULT_HANDSHAKE_TIMEOUT,
         "Seconds a connection to an ssl: listener may take to complete its TLS "
         "handshake before it is closed; 0 never closes.",
         _seconds("handshake-timeout")],
        ["max-handshakes-per-source", None, DEFAULT_HANDSHAKES_PER_SOURCE,
         "New connections to ssl: listeners one source may open at once, and then "
         "per second; more are closed at once, before any TLS work; 0 for no limit.",
         _atLeast("max-handshakes-per-source", 0)],
        ["proxy-max-header", None, proxy.DEFAULT_MAX_HEADER,
         "Longest PROXY v2 header accepted on a haproxy: listener, in bytes "
         f"(at least {proxy.MIN_MAX_HEADER}; v1 headers are at most 107).",
         _atLeast("proxy-max-header", proxy.MIN_MAX_HEADER)],
        ["drain-timeout", None, DEFAULT_DRAIN_TIMEOUT,
         "Seconds a stop may take: it waits that long for pending replies, "
         "then closes connections and exits.",
         _seconds("drain-timeout")],
        ["verbose-rate", None, VERBOSE_LINES_PER_SECOND,
         "Most --verbose request lines a second; those left out are counted in one "
         "line a second. 0 for no limit.",
         _atLeast("verbose-rate", 0)],
        ["prove-workers", None, os.cpu_count() or 1,
         "With --prove: worker processes proving primes.", _positiveInt("prove-workers")],
        ["prove-max-digits", None, DEFAULT_PROVE_MAX_DIGITS,
         "With --prove: longest probable prime proved, in digits; longer ones are "
         "answered E at once (composites still F).", _positiveInt("prove-max-digits")],
        ["prove-timeout", None, DEFAULT_PROVE_TIMEOUT,
         "With --prove: seconds one proof may run; then it is answered E and its "
         "worker interrupted.", _seconds("prove-timeout")],
        ["prove-max-queued", None, DEFAULT_PROVE_MAX_QUEUED,
         "With --prove: proofs waiting for a worker, over all clients (a quarter of "
         "it per source); beyond it TCP clients wait and UDP requests are dropped.",
         _positiveInt("prove-max-queued")],
        ["prover", None, "auto",
         "With --prove: auto (PARI when cypari2 is installed, else FLINT), pari or flint.",
         _choice("prover", ("auto", "pari", "flint"))],
        ["tls-reload-interval", None, certreload.DEFAULT_INTERVAL,
         "Seconds between two reads of each ssl: listener's key and certificate "
         "files: new connections get a new pair, a pair that does not load is "
         "logged and the one in use kept; 0 never reads them again.",
         _seconds("tls-reload-interval")],
        ["metrics", None, None,
         "Serve Prometheus metrics (/metrics) and a health check (/healthz) over "
         "HTTP on this Twisted server endpoint, e.g. "
         "tcp:9809:interface=127.0.0.1; off by default."],
        ["metrics-max-connections", None, METRICS_MAX_CONNECTIONS,
         "Open connections to the --metrics port. When it is reached, the oldest one "
         "without a complete request is closed to make room; if there is none, the "
         "new one is closed at once.",
         _positiveInt("metrics-max-connections")],
        ["metrics-timeout", None, METRICS_TIMEOUT,
         "Seconds a --metrics connection may take, from connecting, to be answered; "
         "0 never closes.",
         _seconds("metrics-timeout")],
    ]

    def __init__(self):
        usage.Options.__init__(self)
        self["listen"] = []
        self["udp"] = []
        self["proxy-from"] = []
        # Docstrings keep their indentation; --help should not.
        self.docs = {name: " ".join(doc.split()) if doc else doc
                     for name, doc in self.docs.items()}

    def parseOptions(self, options=None):
        """
        As L{usage.Options.parseOptions}; but run by twistd or twist (as a
        subcommand), a usage error prints its one-line message and a hint to
        C{--help} on standard error, and exits with status 2, where they
        would print the whole C{--help} first.
        """
        try:
            usage.Options.parseOptions(self, options)
        except usage.UsageError as e:
            if self.parent is None:
                raise  # called from code: the caller reports it
            runner = _runnerName()
            sys.stderr.write(f"{runner} primed: {e}\n"
                             f"Run '{runner} primed --help' for the options.\n")
            raise SystemExit(2) from e

    def opt_version(self):
        """
        Display primed's version, then Twisted's, and exit.
        """
        from importlib.metadata import PackageNotFoundError, version

        import twisted

        try:
            primed = version("primed")
        except PackageNotFoundError:  # run from a source tree
            primed = "(not installed)"
        print(f"primed {primed}")
        print(f"Twisted {twisted.__version__}")
        sys.exit(0)

    def opt_listen(self, description):
        """
        Serve TCP on this Twisted server endpoint (tcp:PORT:interface=HOST,
        tcp6:PORT:interface=\\:\\:1 with an IPv6 address's colons escaped,
        unix:PATH, ssl:…, systemd:domain=INET:name=NAME; haproxy: in front of
        any of them expects a PROXY v1/v2 header); repeatable,
        replaces the default [default: tcp:8809:interface=127.0.0.1:backlog=1024].
        """
        self["listen"].append(description)

    def opt_proxy_from(self, network):
        """
        Accept PROXY headers on haproxy: listeners only from this balancer
        address or network, ADDRESS[/PREFIX], IPv4 or IPv6; connections from
        elsewhere are closed unread. Repeatable. [default: from any address,
        with a warning at start]
        """
        try:
            self["proxy-from"].append(proxy.parseNetwork(network))
        except ValueError as e:
            raise usage.UsageError(f"--proxy-from: {e}") from e

    def opt_udp(self, address):
        """
        Serve UDP on [HOST:]PORT (an IPv4 address; PORT alone is every
        interface), [IPV6]:PORT (an IPv6 address in brackets)
        or an inherited socket systemd:name=NAME; repeatable, replaces the
        default [default: 127.0.0.1:8808].
        """
        try:
            self["udp"].append(UDPAddress.fromString(address))
        except ValueError as e:
            raise usage.UsageError(f"--udp: {e}") from e

    def postOptions(self):
        if self["prove-timeout"] <= 0:
            raise usage.UsageError("--prove-timeout must be more than 0 seconds")
        if self["prover"] == "pari" and self["prove"]:
            try:
                import cypari2  # noqa: F401
            except ImportError:
                raise usage.UsageError("--prover pari: cypari2 is not installed "
                                       "(pip install 'primed[prove]')") from None
        if self["max-connections-per-source"] is None:
            self["max-connections-per-source"] = max(1, self["max-connections"] // 4)
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        if self["no-udp"]:
            self["udp"] = []
        elif not self["udp"]:
            self["udp"] = [UDPAddress.fromString(DEFAULT_UDP)]
        # primed's own reactor, unless twistd --reactor chose one already:
        # options are parsed before anything imports the reactor.
        # Without epoll (not Linux), Twisted's default.  Asked directly:
        # an ImportError from primed.reactor is a bug, not "no epoll".
        if hasattr(select, "epoll"):
            from primed.reactor import installDefault

            installDefault()
        from twisted.internet import reactor

        for description in self["listen"]:
            endpoint = _serverEndpoint(reactor, description)  # refuse bad ones now
            _requirePrivateNames(endpoint, description, self["reuseport"])
        if any(address.systemdName is not None for address in self["udp"]):
            try:
                internals.require([_service._sddaemon], "--udp systemd:NAME")
            except RuntimeError as e:
                raise usage.UsageError(str(e)) from e
        if self["metrics"] is not None:
            _serverEndpoint(reactor, self["metrics"], option="--metrics")


def _requirePrivateNames(endpoint, description: str, reusePort: bool) -> None:
    """
    Refuse, with one line, a listener that needs a private Twisted name
    this Twisted lacks (L{primed.internals}): TLS, C{--reuseport}.
    """
    inner = getattr(endpoint, "wrapped", endpoint)  # haproxy:ENDPOINT
    try:
        if isinstance(inner, endpoints.SSL4ServerEndpoint):
            from primed.tls import requireHalfClose

            internals.require([_service._sslContextFactory, *_service._binding],
                              "An ssl: listener")
            requireHalfClose()
        elif reusePort:
            internals.require(_service._binding, "--reuseport")
    except RuntimeError as e:
        raise usage.UsageError(f"--listen {description!r}: {e}") from e


def _runnerName() -> str:
    """
    C{twistd} or C{twist}, whichever is running primed, for messages.
    """
    name = os.path.basename(sys.argv[0] if sys.argv else "")
    return "twist" if name in ("twist", "__main__.py") else "twistd"


#: An IPv6 interface whose colons Twisted's endpoint syntax splits on: a
#: colon after C{interface=} not followed by the next C{name=} field.
_UNESCAPED_IPV6 = re.compile(r"interface=[0-9A-Fa-f.]*:(?![A-Za-z_]+=)")


def _serverEndpoint(reactor, description: str, config=None, option: str = "--listen"):
    limits = {}
    if config is not None:
        limits = dict(timeout=config["proxy-timeout"], maxLength=config["proxy-max-header"],
                      trusted=config["proxy-from"] or None)
    try:
        return proxy.serverFromString(reactor, description, endpoints.serverFromString, **limits)
    except Exception as e:  # the parsers raise anything from KeyError to SSLError
        message = f"{option} {description!r}: {e}"
        if _UNESCAPED_IPV6.search(description):
            message = (f"{option} {description!r}: escape the colons of an IPv6 "
                       f"interface with backslashes, as in tcp6:8809:interface=\\:\\:1")
        raise usage.UsageError(message) from e


_log = Logger(namespace="primed")


def _proofPool(reactor, config):
    """
    With C{--prove}, the pool of prover processes; L{None} otherwise.
    """
    if not config["prove"]:
        return None
    from primed.proofpool import ProofPool

    return ProofPool(
        reactor,
        config["prove-workers"],
        timeout=config["prove-timeout"],
        maxQueued=config["prove-max-queued"],
        engine=config["prover"],
    )


def makeService(config, reactor=None):
    """
    Build the primed service from parsed L{Options}: a L{MultiService}
    whose child C{"primed"} is the L{PrimedService}.

    @param reactor: the reactor to serve with; the global one by default.
    """
    if reactor is None:
        from twisted.internet import reactor
    # One warning, at start, naming any private Twisted name primed falls
    # back from (primed.internals).
    internals.warnMissing(_log)
    connections = config["max-connections"]
    option = f"--max-connections {connections}"
    if config["metrics"] is not None:
        connections += config["metrics-max-connections"]
        option += f" and --metrics-max-connections {config['metrics-max-connections']}"
    fdlimit.ensureOpenFiles(connections, option)
    tcpEndpoints = [
        (description, _serverEndpoint(reactor, description, config))
        for description in config["listen"]
    ]
    # ssl: listeners whose files are read again (certificates rotated in place).
    reloading = []
    if config["tls-reload-interval"] > 0:
        reloading = certreload.makeReloadable(
            tcpEndpoints, lambda description: _serverEndpoint(reactor, description, config))
    primed = PrimedService(
        reactor,
        tcpEndpoints=tcpEndpoints,
        udpAddresses=config["udp"],
        threads=config["threads"],
        maxDigits=config["max-digits"],
        maxQueued=config["max-queued"],
        maxQueuedPerSource=config["max-queued-per-source"],
        maxInflight=config["max-inflight"],
        maxConnections=config["max-connections"],
        maxPerSource=config["max-connections-per-source"],
        handshakeTimeout=config["handshake-timeout"],
        handshakesPerSource=config["max-handshakes-per-source"],
        verboseRate=config["verbose-rate"],
        idleTimeout=config["idle-timeout"],
        drainTimeout=config["drain-timeout"],
        reusePort=config["reuseport"],
        verbose=config["verbose"],
        proofPool=_proofPool(reactor, config),
        proveMaxDigits=config["prove-max-digits"],
    )
    top = service.MultiService()
    primed.setName("primed")
    primed.setServiceParent(top)
    if config["metrics"] is not None:
        # Imported here: prometheus-client and twisted.web load only when asked for.
        from primed.metrics import MetricsService

        metrics = MetricsService(
            primed,
            config["metrics"],
            _serverEndpoint(reactor, config["metrics"], option="--metrics"),
            maxConnections=config["metrics-max-connections"],
            timeout=config["metrics-timeout"] or None,  # type: ignore[arg-type]  # None: no timeout
        )
        metrics.setName("metrics")
        metrics.setServiceParent(top)
    if reloading:
        reloader = certreload.CertificateReloader(
            reloading, config["tls-reload-interval"], reactor)
        reloader.setName("tls-reload")
        reloader.setServiceParent(top)
    # Under systemd (Type=notify): READY=1 once every listener is bound,
    # STOPPING=1 when a stop begins, WATCHDOG=1 if asked.  A no-op elsewhere.
    sdnotify.notifySystemd(primed, reactor, os.environ)
    # SIGHUP stops gracefully too; a second stop signal ends the drain.
    signals.handleStopSignals(primed, reactor)
    return top
