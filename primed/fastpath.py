"""
Sending replies without a reactor turn.

A reply written with C{transport.write} waits in Twisted's buffer for the
next reactor iteration, at the cost of two C{epoll_ctl} calls (start and stop
writing) and the iteration itself: more than primed spends deciding most
verdicts.  When Twisted's buffer is empty, sending straight to the socket
is equivalent, so that is what these writers do; anything the kernel does
not take at once goes through C{transport.write} as usual, so ordering,
backpressure and error handling stay Twisted's.  Measured with
C{benchmarks/load.py} (CPU per request against a bare Twisted server): 0.88
to 1.32 with one request per read, 0.77 to 0.99 for UDP.

They rely on private attributes of L{twisted.internet.tcp.Connection} and
L{twisted.internet.udp.Port} that have been stable for many years, checked
here at import (L{primed.internals}: without them, the plain transport's
write and one warning at start), and fall back to the plain transport for
anything else (TLS, StringTransport, …).

Beside them, L{resetProbe}: whether the peer of a connection that is not
reading has reset it, read from its socket without a reactor turn either.
"""

import os
import socket
from typing import Any, Callable

from twisted.internet import abstract, tcp, udp

from primed.internals import lookup, present


def _probe(make: Callable[[], Any]) -> Any:
    """
    A transport made without a reactor or socket, to look up the
    attributes Twisted sets in C{__init__}; L{None} if that fails.
    """
    try:
        return make()
    except Exception:
        return None


#: Stands for the reactor a transport is made with, which these never use.
_NO_REACTOR: Any = object()

_tempDataLen = lookup(
    "twisted.internet.abstract", "FileDescriptor._tempDataLen",
    "TCP replies wait for a reactor turn (transport.write)",
    _probe(lambda: abstract.FileDescriptor(reactor=_NO_REACTOR)))
_connectedAddr = lookup(
    "twisted.internet.udp", "Port._connectedAddr",
    "UDP replies go through transport.write",
    _probe(lambda: udp.Port(0, None, reactor=_NO_REACTOR)))

#: Whether the private attributes are there (tests turn these off).
STREAM = present(_tempDataLen)
DATAGRAM = present(_connectedAddr)


def streamWriter(transport) -> Callable[[bytes], None]:
    """
    A C{write(data)} for C{transport} that sends at once when nothing is
    buffered ahead of C{data}.
    """
    if not STREAM or not isinstance(transport, tcp.Connection) or getattr(transport, "TLS", False):
        return transport.write
    write = transport.write
    # os.write on the descriptor, not socket.send: the same system call for a
    # connected socket, with about 550 fewer instructions of argument
    # handling around it (callgrind).  The descriptor is only used while
    # the transport is connected: once the connection is lost its number may
    # belong to another connection.
    fd = transport.fileno()
    send = os.write

    def writeNow(data: bytes) -> None:
        # The order of the bytes, and that the descriptor is still this
        # connection's, need checking; nothing else does (it was two more
        # attribute reads per reply): after loseConnection, Twisted too sends
        # what is written before it closes (with an empty buffer it closes on
        # its next turn, so the bytes are in the kernel first either way);
        # once the connection is lost (C{connected} is false from before its
        # socket is closed), Twisted's write drops the data, as it does for
        # any write after the end.  (loseWriteConnection, after which Twisted
        # drops writes, is never used with this writer: primed does not
        # half-close.)
        if transport.dataBuffer or transport._tempDataLen or not transport.connected:
            write(data)
            return
        try:
            sent = send(fd, data)
        except OSError:
            # EAGAIN, or a dead peer: Twisted's own write finds out and
            # reports it the usual way.
            sent = 0
        if sent < len(data):
            write(data[sent:])

    return writeNow


def datagramWriter(transport) -> Callable[[bytes, tuple], None]:
    """
    A C{write(data, addr)} for a UDP C{transport}, skipping the address
    validation L{udp.Port.write} does: replies go to addresses the kernel
    itself reported as sources.
    """
    if not DATAGRAM or not isinstance(transport, udp.Port) or transport._connectedAddr:
        return transport.write
    return transport.socket.sendto  # type: ignore[return-value]  # socket.sendto's overloads


def resetProbe(transport) -> Callable[[], bool]:
    """
    A C{reset()} for C{transport}: whether the socket under it holds a
    pending error, such as a reset by the peer.  A connection that is not
    reading (paused) is not watched by the reactor, so nothing else would
    notice until its next write.  A half-close (FIN) is no error.  Through
    TLS too (whose C{getHandle} is its OpenSSL connection: the socket is
    under its transport); for a transport with no socket (a test's), never.
    """
    sock = socketOf(transport)
    if sock is None:
        return lambda: False
    getsockopt = sock.getsockopt

    def reset() -> bool:
        try:
            return getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
        except OSError:
            return True  # closed under us

    return reset


def socketOf(transport):
    """
    The socket under C{transport}, or L{None}: its own handle (ISystemHandle),
    or that of the transport it wraps (TLS).
    """
    for _ in range(4):
        getHandle = getattr(transport, "getHandle", None)
        if getHandle is not None:
            handle = getHandle()
            if isinstance(handle, socket.socket):
                return handle
        transport = getattr(transport, "transport", None)
        if transport is None:
            break
    return None
