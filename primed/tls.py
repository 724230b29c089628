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

This module overrides one private method of L{TLSMemoryBIOProtocol},
C{_flushReceiveBIO}, and uses its private state; the method has kept its
shape since Twisted 11 and the tests cover both ways of half-closing.
Each name is checked at import (L{PRIVATE}): without one, no public path
keeps the promise, so C{ssl:} listeners are refused with one line naming
the Twisted primed needs (L{requireHalfClose}).
"""

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from primed.internals import lookup, require

_where = "twisted.protocols.tls"

#: The private names of L{TLSMemoryBIOProtocol} this module uses.
PRIVATE = [
    lookup(_where, f"TLSMemoryBIOProtocol.{name}", None)
    for name in ("_flushReceiveBIO", "_flushSendBIO", "_shutdownTLS", "_tlsShutdownFinished",
                 "_handshakeDone", "_lostTLSConnection", "_aborted")
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



@implementer(IHalfCloseableProtocol)
class HalfCloseableTLSProtocol(TLSMemoryBIOProtocol):
    """
    A server-side TLS connection whose peer may stop sending (with
    C{close_notify} or a FIN) and still be answered.

    @ivar readClosed: whether the peer will send nothing more.
    """

    readClosed = False

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


class HalfCloseableTLSFactory(TLSMemoryBIOFactory):
    """
    A server-side L{TLSMemoryBIOFactory} building
    L{HalfCloseableTLSProtocol}s, refusing a connection its wrapped factory
    refuses.
    """

    protocol = HalfCloseableTLSProtocol

    def __init__(self, contextFactory, wrappedFactory):
        TLSMemoryBIOFactory.__init__(self, contextFactory, False, wrappedFactory)

    def buildProtocol(self, addr):
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self.protocol(self, wrapped)
