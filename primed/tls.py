"""
TLS listeners that answer a half-closed connection as plain TCP does.

primed answers everything a client sent before it stopped sending, then
closes (C{printf '17\\n' | nc -N}).  Over TLS a client says it has stopped
sending with a C{close_notify} alert, or just with the TCP FIN under it.
Twisted's L{TLSMemoryBIOProtocol} treats either as the end of the whole
connection: on C{close_notify} it answers with its own and closes, and it
does not provide L{IHalfCloseableProtocol}, so a FIN becomes a full close.
Every answer still owed is lost.

L{HalfCloseableTLSProtocol} instead tells the wrapped protocol that its
peer will send nothing more (C{readConnectionLost}) and keeps the sending
side open; once the wrapped protocol closes, it sends its C{close_notify}
and closes the TCP connection, without waiting for the peer's: a client
that already stopped sending may never send one, and a connection that a
graceful stop is finishing is no longer read.  TLS 1.3 defines
C{close_notify} as closing one direction only (RFC 8446, 6.1), and OpenSSL
lets a side keep writing after receiving one, so this is TLS as specified.

A FIN without C{close_notify} is treated the same way: whole records
received before it are authentic, and the rest of a record cut short
cannot be read anyway.

L{HalfCloseableTLSFactory} also lets the wrapped factory refuse a
connection (primed's connection limit returns L{None}), which Twisted's
L{TLSMemoryBIOFactory} turns into an unhandled error.

A handshake has a deadline (C{--handshake-timeout}): a connection that
never starts or never finishes one costs its client nothing but holds a
descriptor and a slot under C{--max-connections}; without the deadline
only C{--idle-timeout} (minutes) closed it.  Timeouts are counted and
logged at most once per 10 seconds.

A handshake costs the reactor thread about 0.6 ms of CPU, a plain
connection a tenth of that: one source completing handshakes in a loop
delayed every other client's answers by tens of milliseconds
(C{benchmarks/robustness.py}, scenario F).  So each source may start at
most C{--max-handshakes-per-source} TLS connections at once and then as
many a second (L{primed.sources.SourceRates}); more are closed as soon as
they are accepted, before any handshake work.

The TLS settings follow Mozilla's "intermediate" profile: TLS 1.2 and 1.3
only, and on TLS 1.2 only AEAD suites with forward secrecy (ECDHE with
AES-GCM or ChaCha20-Poly1305; L{INTERMEDIATE_CIPHERS}).  Twisted's default
list still offers CBC suites, which testssl.sh reports as obsolete and
LUCKY13-prone.

A plain-text client on a TLS port (C{primed-client} without C{--tls},
C{nc}) sends C{17\n}; OpenSSL waits for the 5 bytes of a record header,
so the client waits for its timeout and learns nothing.  Every TLS
connection starts with the client's handshake record, whose first byte is
22 (0x16); a connection whose first byte is anything else is answered
with a fatal C{unexpected_message} alert, as RFC 8446 (section 5) asks of
an unexpected record type, and closed at once.  The alert tells a client
that reads it (C{primed-client} does) that this port speaks TLS.  Behind
C{haproxy:} the PROXY header is read first, by the layer outside this
one, so the check sees the first byte of TLS.  Plain TCP listeners never
build this protocol: the check costs them nothing.

This module overrides one private method of L{TLSMemoryBIOProtocol},
C{_flushReceiveBIO}, and uses its private state; the method has kept its
shape since Twisted 11 and the tests cover both ways of half-closing.
Each name is checked at import (L{PRIVATE}): without one, no public path
keeps the promise, so C{ssl:} listeners are refused with one line naming
the Twisted primed needs (L{requireHalfClose}).
"""

import os
import stat
from typing import Any

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from primed.internals import lookup, require
from primed.ratelog import Throttle
from primed.sources import sourceKey

_where = "twisted.protocols.tls"

#: The private names of L{TLSMemoryBIOProtocol} this module uses.
PRIVATE = [
    lookup(_where, f"TLSMemoryBIOProtocol.{name}", None)
    for name in ("_flushReceiveBIO", "_flushSendBIO", "_shutdownTLS", "_tlsShutdownFinished",
                 "_handshakeDone", "_lostTLSConnection", "_aborted", "_reason")
]
# Set when the connection is made: looked for among the names
# makeConnection assigns.
if "_tlsConnection" not in getattr(
    getattr(TLSMemoryBIOProtocol.makeConnection, "__code__", None), "co_names", ()
):
    PRIVATE.append(lookup(_where, "TLSMemoryBIOProtocol._tlsConnection", None, None))


def requireHalfClose() -> None:
    """
    Refuse TLS listeners, with one line, unless Twisted has every private
    name L{HalfCloseableTLSProtocol} needs.

    @raise RuntimeError: naming what is missing.
    """
    require(PRIVATE, "A TLS listener (ssl:), answering clients that half-close,")


#: Seconds a TLS connection may take to complete its handshake.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: New TLS connections one source may open at once, and then per second.
DEFAULT_HANDSHAKES_PER_SOURCE = 50

#: Mozilla's "intermediate" TLS 1.2 suites (OpenSSL names), in its order:
#: ECDHE key exchange, AEAD ciphers only.  TLS 1.3's suites are all AEAD and
#: are not set by this list.
INTERMEDIATE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


def restrictContext(context) -> None:
    """
    Hold an OpenSSL context to Mozilla's intermediate profile: TLS 1.2 and
    1.3, and on 1.2 only L{INTERMEDIATE_CIPHERS}.  Every context a listener
    serves goes through here: the one built at start and each one a
    certificate rotation (L{primed.certreload}) builds by parsing the
    listener's description again, which would otherwise offer Twisted's
    defaults, CBC suites among them.
    """
    from OpenSSL import SSL

    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_cipher_list(INTERMEDIATE_CIPHERS.encode("ascii"))


@implementer(IHalfCloseableProtocol)
class HalfCloseableTLSProtocol(TLSMemoryBIOProtocol):
    """
    A server-side TLS connection whose peer may stop sending (with
    C{close_notify} or a FIN) and still be answered.

    @ivar readClosed: whether the peer will send nothing more.
    """

    factory: "HalfCloseableTLSFactory"

    #: Set by makeConnection.  Twisted types it Optional[ITransport], which
    #: has neither the producer nor the abort methods its TCP transports have.
    transport: Any

    readClosed = False
    _handshakeTimer = None

    def makeConnection(self, transport):
        timeout = self.factory.handshakeTimeout
        if timeout:
            self._handshakeTimer = self.factory.reactor.callLater(
                timeout, self._handshakeTimedOut)
        TLSMemoryBIOProtocol.makeConnection(self, transport)

    def _checkHandshakeStatus(self):
        TLSMemoryBIOProtocol._checkHandshakeStatus(self)
        if self._handshakeDone:
            self._cancelHandshakeTimer()

    def _cancelHandshakeTimer(self):
        timer, self._handshakeTimer = self._handshakeTimer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _handshakeTimedOut(self):
        self._handshakeTimer = None
        self.factory.handshakeTimedOut(self.transport.getPeer())
        self.transport.abortConnection()

    def connectionLost(self, reason):  # type: ignore[override]  # Twisted always passes the reason
        self._cancelHandshakeTimer()
        TLSMemoryBIOProtocol.connectionLost(self, reason)

    _firstByteSeen = False

    def dataReceived(self, data):
        if not self._firstByteSeen:
            self._firstByteSeen = True
            if data[:1] != HANDSHAKE_RECORD:
                self._refusePlainText(data)
                return
        if self._lostTLSConnection:
            return
        TLSMemoryBIOProtocol.dataReceived(self, data)

    def _refusePlainText(self, data):
        """
        The first bytes of this connection cannot begin a TLS handshake:
        send a fatal alert and close, without OpenSSL (which would wait for
        a whole record header).  The wrapped protocol sees a connection
        closed cleanly before its handshake, and so answers nothing.
        """
        self.factory.refusedPlainText(self.transport.getPeer(), data)
        # Nothing more goes through OpenSSL: what TLSMemoryBIOProtocol
        # would do after its own fatal error.
        self._lostTLSConnection = True
        self._reason = Failure(ConnectionDone("not TLS"))
        self.transport.write(UNEXPECTED_MESSAGE_ALERT)
        # Closed like a finished connection: the wrapped protocol may be the
        # transport's producer, which would be resumed rather than closed.
        if getattr(self.transport, "producer", None) is not None:
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    def _wrappedHalfCloseable(self):
        if self.disconnecting or not self._handshakeDone:
            return None
        return IHalfCloseableProtocol(self.wrappedProtocol, None)

    def _flushReceiveBIO(self):
        # TLSMemoryBIOProtocol._flushReceiveBIO, except for close_notify.
        while not self._lostTLSConnection and not self.readClosed:
            try:
                data = self._tlsConnection.recv(2**15)
            except WantReadError:
                break
            except ZeroReturnError:
                self._peerStoppedSending(notified=True)
            except Error:
                self._tlsShutdownFinished(Failure())
            else:
                if not self._aborted:
                    ProtocolWrapper.dataReceived(self, data)
        self._flushSendBIO()

    def readConnectionLost(self):
        """
        The TCP FIN: the peer will send nothing more.
        """
        if self._lostTLSConnection or self.readClosed:
            return
        self._peerStoppedSending(notified=False)

    def writeConnectionLost(self):
        """
        Never called: we do not half-close the TCP connection ourselves.
        """

    def _peerStoppedSending(self, notified):
        wrapped = self._wrappedHalfCloseable()
        if wrapped is None:
            # Not half-closeable, closing already, or mid-handshake: what
            # Twisted does.
            if notified:
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            else:
                self.readClosed = True
                self._lostTLSConnection = True
                self.transport.loseConnection()
            return
        self.readClosed = True
        wrapped.readConnectionLost()

    def _shutdownTLS(self):
        # Our close_notify is sent.  Twisted then waits for the peer's; but
        # a peer that stopped sending may never send it, and a connection
        # told to finish by a drain is no longer read, so it would not be
        # seen: close now, as a plain TCP connection does.  RFC 8446, 6.1:
        # a side need not wait for close_notify before closing its read
        # side.
        TLSMemoryBIOProtocol._shutdownTLS(self)
        self.transport.loseConnection()


#: The first byte of a TLS handshake record (RFC 8446, 5.1), which every
#: TLS connection starts with: the client's hello.
HANDSHAKE_RECORD = b"\x16"

#: A TLS record (type 21, alert; version 3.1, as OpenSSL writes before a
#: version is agreed; length 2) holding a fatal (2) C{unexpected_message}
#: (10) alert.
UNEXPECTED_MESSAGE_ALERT = b"\x15\x03\x01\x00\x02\x02\x0a"


class HalfCloseableTLSFactory(TLSMemoryBIOFactory):
    """
    A server-side L{TLSMemoryBIOFactory} building
    L{HalfCloseableTLSProtocol}s, refusing a connection its wrapped factory
    refuses.

    @ivar plainTextRefused: connections closed because their first byte
        cannot begin a TLS handshake; also counted in C{counters}.
    """

    protocol = HalfCloseableTLSProtocol
    _log = Logger()

    def __init__(self, contextFactory, wrappedFactory, reactor=None, counters=None,
                 handshakeTimeout: float = DEFAULT_HANDSHAKE_TIMEOUT, rates=None):
        """
        @param reactor: the clock of the handshake deadline and of the
            rate-limited logs; the global reactor by default.
        @param counters: a L{primed.counters.Counters} to count in
            (C{tlsPlainTextClosed}, C{tlsHandshakeTimeouts}), or L{None}.
        @param handshakeTimeout: seconds a connection may take to complete
            its handshake; 0 for no limit.
        @param rates: the L{primed.sources.SourceRates} new connections are
            admitted by, shared by every TLS listener; L{None} for no limit.
        """
        TLSMemoryBIOFactory.__init__(self, contextFactory, False, wrappedFactory)
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.counters = counters
        self.plainTextRefused = 0
        self._lastLog = None
        self.handshakeTimeout = handshakeTimeout
        self.timedOut = 0
        self.rates = rates
        self._timeoutLog = Throttle(reactor)
        self._rateLog = Throttle(reactor)

    def refusedPlainText(self, peer, data):
        """
        Count a connection closed for not speaking TLS; log it unless one
        was logged in the last 10 seconds (anyone may connect: the log must
        not flood).
        """
        self.plainTextRefused += 1
        if self.counters is not None:
            self.counters.tlsPlainTextClosed += 1
        now = self.reactor.seconds()
        if self._lastLog is None or now - self._lastLog >= 10:
            self._lastLog = now
            self._log.warn(
                "Closed connection from {peer} to a TLS port: it began with {start!r}, "
                "not a TLS handshake (a client without TLS?); {refused} so far",
                peer=_describe(peer),
                start=data[:16],
                refused=self.plainTextRefused,
            )

    def handshakeTimedOut(self, peer) -> None:
        """
        Count and (at most every 10 seconds) log a handshake that missed its
        deadline.
        """
        self.timedOut += 1
        if self.counters is not None:
            self.counters.tlsHandshakeTimeouts += 1
        if self._timeoutLog.ready():
            self._log.warn(
                "Closed TLS connection from {peer}: no handshake within {timeout:g}s "
                "({count} so far)",
                peer=_describe(peer),
                timeout=self.handshakeTimeout,
                count=self.counters.tlsHandshakeTimeouts if self.counters else self.timedOut,
            )

    def buildProtocol(self, addr):
        rates = self.rates
        if rates is not None and not rates.admit(sourceKey(addr)):
            if self._rateLog.ready():
                self._log.warn(
                    "Closed new TLS connection from {peer}: over {rate:g} new TLS "
                    "connections a second from one source ({refused} refused so far)",
                    peer=getattr(addr, "host", addr), rate=rates.rate, refused=rates.refused)
            return None
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)


def _describe(peer) -> str:
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    return f"{host}:{port}" if host is not None else str(peer)


def privateKeyPath(description: str) -> str:
    """
    The private key file of an C{ssl:} server endpoint string (behind
    C{haproxy:} or not), as Twisted's parser reads it: C{privateKey=}, by
    default C{server.pem}.  Fields are split at colons a backslash does not
    escape, as Twisted splits them.
    """
    fields, current, escaped = [], [], False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    for field in fields:
        name, equals, value = field.partition("=")
        if equals and name == "privateKey":
            return value
    return "server.pem"


def readableByOthers(path: str) -> bool:
    """
    Whether every user of the machine may read C{path}.  Readable by its
    group is fine: Debian's C{ssl-cert} group exists for that.  A file that
    cannot be looked at says nothing (Twisted has read it already).  The
    file (a symlink's target) must be readable by others and every
    directory above it enterable by them: a key of mode 0644 in a
    directory of mode 0700 (or Debian's 0710 C{/etc/ssl/private}) is
    private.
    """
    real = os.path.realpath(path)
    try:
        if not os.stat(real).st_mode & stat.S_IROTH:
            return False
        directory = os.path.dirname(real)
        while True:
            if not os.stat(directory).st_mode & stat.S_IXOTH:
                return False
            parent = os.path.dirname(directory)
            if parent == directory:
                return True
            directory = parent
    except OSError:
        return False
