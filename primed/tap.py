"""
Command-line options and service construction for C{twistd primed} and
C{twist primed}, in the manner of L{twisted.names.tap}.
"""

import os

from twisted.application import service
from twisted.internet import endpoints
from twisted.python import usage

from primed import sdnotify, wire
from primed.checker import DEFAULT_MAX_QUEUED
from primed.service import DEFAULT_DRAIN_TIMEOUT, PrimedService, UDPAddress
from primed.tcp import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_INFLIGHT

# Twisted's own default backlog (50) drops SYNs when a few hundred clients
# connect at once, and they retry only after a second: match --max-connections.
DEFAULT_LISTEN = "tcp:8809:interface=127.0.0.1:backlog=1024"
DEFAULT_UDP = "127.0.0.1:8808"


def _positiveInt(name):
    def coerce(value):
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number < 1:
            raise ValueError(f"--{name} must be a whole number, at least 1, not {value!r}")
        return number

    coerce.coerceDoc = "A whole number, at least 1."
    return coerce


def _seconds(name):
    def coerce(value):
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not 0 <= number < float("inf"):
            raise ValueError(f"--{name} must be a number of seconds, 0 or more, not {value!r}")
        return number

    coerce.coerceDoc = "Seconds, 0 or more."
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
         "Bind TCP (tcp:/tcp6: endpoints) and UDP with SO_REUSEPORT, so several "
         "primed processes can share the ports, one core each."],
        ["verbose", "v", "Log every request and its verdict."],
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
        ["max-inflight", None, DEFAULT_MAX_INFLIGHT,
         "Replies pending on one TCP connection before it stops reading.",
         _positiveInt("max-inflight")],
        ["max-connections", None, DEFAULT_MAX_CONNECTIONS,
         "Open TCP connections; new ones beyond it are closed at once.",
         _positiveInt("max-connections")],
        ["idle-timeout", None, DEFAULT_IDLE_TIMEOUT,
         "Seconds a TCP connection may stay with no complete request and no "
         "reply owed before it is closed; 0 never closes.",
         _seconds("idle-timeout")],
        ["drain-timeout", None, DEFAULT_DRAIN_TIMEOUT,
         "Seconds a stop waits for pending replies before closing connections.",
         _seconds("drain-timeout")],
    ]

    def __init__(self):
        usage.Options.__init__(self)
        self["listen"] = []
        self["udp"] = []

    def opt_listen(self, description):
        """
        Serve TCP on this Twisted server endpoint (tcp:PORT:interface=HOST,
        tcp6:…, unix:PATH, ssl:…, systemd:domain=INET:name=NAME); repeatable,
        replaces the default [default: tcp:8809:interface=127.0.0.1:backlog=1024].
        """
        self["listen"].append(description)

    def opt_udp(self, address):
        """
        Serve UDP on [HOST:]PORT, [IPV6]:PORT or an inherited socket
        systemd:name=NAME; repeatable, replaces the default
        [default: 127.0.0.1:8808].
        """
        try:
            self["udp"].append(UDPAddress.fromString(address))
        except ValueError as e:
            raise usage.UsageError(f"--udp: {e}")

    def postOptions(self):
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        if self["no-udp"]:
            self["udp"] = []
        elif not self["udp"]:
            self["udp"] = [UDPAddress.fromString(DEFAULT_UDP)]
        # primed's own reactor, unless twistd --reactor chose one already:
        # options are parsed before anything imports the reactor.
        try:
            from primed.reactor import installDefault
        except ImportError:  # no epoll on this platform: Twisted's default
            pass
        else:
            installDefault()
        from twisted.internet import reactor

        for description in self["listen"]:
            _serverEndpoint(reactor, description)  # refuse bad ones now


def _serverEndpoint(reactor, description: str):
    try:
        return endpoints.serverFromString(reactor, description)
    except Exception as e:  # the parsers raise anything from KeyError to SSLError
        raise usage.UsageError(f"--listen {description!r}: {e}")


def makeService(config, reactor=None):
    """
    Build the primed service from parsed L{Options}: a L{MultiService}
    whose child C{"primed"} is the L{PrimedService}.

    @param reactor: the reactor to serve with; the global one by default.
    """
    if reactor is None:
        from twisted.internet import reactor
    primed = PrimedService(
        reactor,
        tcpEndpoints=[
            (description, _serverEndpoint(reactor, description))
            for description in config["listen"]
        ],
        udpAddresses=config["udp"],
        threads=config["threads"],
        maxDigits=config["max-digits"],
        maxQueued=config["max-queued"],
        maxInflight=config["max-inflight"],
        maxConnections=config["max-connections"],
        idleTimeout=config["idle-timeout"],
        drainTimeout=config["drain-timeout"],
        reusePort=config["reuseport"],
        verbose=config["verbose"],
    )
    top = service.MultiService()
    primed.setName("primed")
    primed.setServiceParent(top)
    # Under systemd (Type=notify): READY=1 once every listener is bound,
    # STOPPING=1 when a stop begins, WATCHDOG=1 if asked.  A no-op elsewhere.
    sdnotify.notifySystemd(primed, reactor, os.environ)
    return top
