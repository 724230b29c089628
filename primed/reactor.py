"""
primed's reactor: Twisted's epoll reactor with a leaner path from a ready
socket to its protocol.  C{twistd -n primed} installs it unless another
reactor was asked for (C{twistd --reactor=epoll -n primed}); it is also a
reactor plugin, C{twistd --reactor=primed}.

Why: with one request per read, most of the CPU primed spent above an
asyncio server on uvloop was Twisted's per-event Python path, not primed's
(C{benchmarks/README.rst}, "Where primed's time goes").  For every ready
descriptor, L{EPollReactor.doPoll} calls C{log.callWithLogger}, which asks
the descriptor for its log prefix, copies a logging-context dictionary,
pushes it on a thread-local stack and pops it again: six Python calls and
a dictionary copy, so that a legacy C{log.msg} made while handling the
event is labelled with the connection.  Then C{_doReadOrWrite} decodes the
event mask.

Here the common event, readable and nothing else, goes straight to
C{doRead} (for an accepted TCP connection, L{tcp.Server}, its five lines
are inlined: a C{read} of its descriptor, then C{protocol.dataReceived},
or the connection's end), and the logging context is one frame per poll whose C{system}
is set to each descriptor's prefix in turn: a legacy log call sees what it
would under Twisted's reactor (Twisted's own reactor tests check this, and
run against this reactor in C{tests/test_reactor.py}).  Every other event
(writable, hang-up, error, several at once) takes Twisted's own path
unchanged.  Nothing else differs: the same
poller, timers, threads, signals and transports, so TLS, UNIX sockets,
systemd-inherited sockets and every other endpoint work as under the
default reactor.
"""

import errno
import os
import select
import socket
import sys
from errno import EWOULDBLOCK
from select import EPOLLIN
from typing import Optional

from twisted.internet import udp
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST, installReactor
from twisted.internet.tcp import Server
from twisted.python import context, log

from primed.internals import lookup, present

# Twisted's private names used here (L{primed.internals}): without them,
# Twisted's own code for that part, and one warning at start.
_topHandler = lookup(
    "twisted.internet.base", "_topHandler",
    "the reactor runs Twisted's main loop (about 10 000 instructions more per turn)")
_doReadOrWrite = lookup(
    "twisted.internet.epollreactor", "EPollReactor._doReadOrWrite",
    "the reactor dispatches every event with Twisted's doPoll")
_disconnectSelectable = lookup(
    "twisted.internet.epollreactor", "EPollReactor._disconnectSelectable",
    "the reactor dispatches every event with Twisted's doPoll")
_sockErrReadIgnore = lookup(
    "twisted.internet.udp", "_sockErrReadIgnore", "UDP ports read with Twisted's loop")
_sockErrReadRefuse = lookup(
    "twisted.internet.udp", "_sockErrReadRefuse", "UDP ports read with Twisted's loop")
_fromListeningDescriptor = lookup(
    "twisted.internet.udp", "Port._fromListeningDescriptor",
    "adopted UDP sockets read with Twisted's loop")
_LEAN_UDP = present(_sockErrReadIgnore, _sockErrReadRefuse)

__all__ = ["PrimedReactor", "DatagramPort", "install"]

#: L{ReactorBase.timeout}'s cap: epoll_wait takes an int of milliseconds.
_LONGEST_TIMEOUT = 2147483

#: What a TCP connection reads per event while its reads are short.  A
#: bytes object of this size comes from CPython's small-object allocator
#: (requests up to 512 bytes, the object's header included); a read of
#: Twisted's C{bufferSize} (64 KiB) is a C{malloc} of 64 KiB and a
#: C{realloc} down to what arrived, whose freed remainder makes glibc
#: consolidate its heap: 950 instructions per read against about 200 here,
#: a twentieth of all primed spends on a one-request read (callgrind).
SMALL_READ = 448

#: What a TCP connection reads per event otherwise: Twisted's.
_FULL_READ = Server.bufferSize


def _adaptReadSize(connection, size: int, got: int) -> None:
    """
    Choose C{connection}'s next read size from its last read, which asked
    for C{size} bytes and got C{got}: a read that filled its size means
    more is flowing (a bulk client), so read L{_FULL_READ} again, one system
    call per 64 KiB as before; a short read means the client is not
    streaming, so read small.

    The size is the connection's C{primedReadSize} attribute (set on its
    first read), not its C{bufferSize}: Twisted reads that as the limit of
    its write buffer too (C{_isSendBufferFull}: past it, a streaming
    producer is paused, and primed's connection stops reading), so setting
    it to L{SMALL_READ} would pause a connection on 448 bytes of unsent
    replies (a TLS connection, whose replies all pass through that buffer,
    on a short read of 300 empty lines); and events that take Twisted's own
    path (readable and writable at once, hang-ups) read C{bufferSize},
    which must not stay 448 for a client whose replies back up.
    """
    if got == size:
        connection.primedReadSize = _FULL_READ
    elif got < SMALL_READ:
        connection.primedReadSize = SMALL_READ


class DatagramPort(udp.Port):
    """
    A UDP port that learns whether another datagram is waiting without
    provoking C{EAGAIN}, as long as few are waiting, and that lets its
    protocol run the read loop.

    L{udp.Port.doRead} reads until C{recvfrom} fails with C{EAGAIN}: in
    Python that failure is an exception, 1.5 us of CPU here, paid on every
    read event; when the server keeps up with its clients that is one per
    datagram, as much as answering it.  Here, after each datagram, a
    private epoll set holding only this socket is asked (timeout 0, 0.3 us)
    whether another one is queued.  After L{PEEKS} datagrams in one event
    the queue is long and the read goes on until C{EAGAIN}, as Twisted's
    does, whose one exception is then cheaper than more peeks.  Everything
    else, errors included, is L{udp.Port}'s.

    A protocol with a C{readDatagrams(port)} method may run the loop itself
    (on an unconnected socket; it returns false to leave this event to the
    port): a method call and the port's per-datagram checks cost as much as
    primed's answer to a small request, and a server under load finds a
    dozen or more datagrams queued per event.  Such a reader keeps this
    loop's rules, with the parts it needs here: L{peek}, L{PEEKS},
    C{maxThroughput}, L{readFailed}, and L{deliverDatagram} for any
    datagram it leaves to C{datagramReceived}.
    """

    #: Datagrams read with a peek after each before draining to EAGAIN.
    PEEKS = 4

    #: C{peek(0, 1)}: a zero-timeout poll of this socket alone, truthy when
    #: a datagram is queued.  Made on the first read event.
    peek = None

    #: The protocol's C{readDatagrams}, or C{None}; looked up with L{peek}.
    _reader = None

    def doRead(self):
        """
        Called when my socket is ready for reading: deliver datagrams while
        more are waiting, up to C{maxThroughput} bytes.
        """
        waiting = self.peek
        if waiting is None:
            self._pendingSet = select.epoll()
            self._pendingSet.register(self.fileno(), select.EPOLLIN)
            waiting = self.peek = self._pendingSet.poll
            self._reader = getattr(self.protocol, "readDatagrams", None)
        if self._reader is not None and not self._connectedAddr and self._reader(self):
            return
        recvfrom = self.socket.recvfrom
        size = self.maxPacketSize
        datagramReceived = self.protocol.datagramReceived
        ipv6 = self.addressFamily == socket.AF_INET6
        read = 0
        peeks = self.PEEKS
        while True:
            try:
                data, addr = recvfrom(size)
            except OSError as se:
                self.readFailed(se)
                return
            read += len(data)
            if ipv6:
                addr = addr[:2]
            try:
                datagramReceived(data, addr)
            except BaseException:
                log.err()
            if read >= self.maxThroughput:
                return
            if peeks:
                peeks -= 1
                if not waiting(0, 1):
                    return

    def readFailed(self, error: OSError) -> None:
        """
        C{recvfrom} failed with C{error}, as L{udp.Port.doRead} handles it:
        nothing left to read or a transient error, quietly; a refusal (an
        ICMP error for an earlier send) told to a connected protocol;
        anything else raised.
        """
        no = error.args[0]
        if no in _sockErrReadIgnore:
            return
        if no in _sockErrReadRefuse:
            if self._connectedAddr:
                self.protocol.connectionRefused()
            return
        raise error

    def deliverDatagram(self, data: bytes, addr) -> None:
        """
        Hand one datagram read by a C{readDatagrams} loop to the protocol's
        C{datagramReceived}, as this port's own loop would: an IPv6 source
        cut to (host, port), an exception logged, not raised.
        """
        if self.addressFamily == socket.AF_INET6:
            addr = addr[:2]
        try:
            self.protocol.datagramReceived(data, addr)
        except BaseException:
            log.err()

    def connectionLost(self, reason=None):
        if self.peek is not None:
            self.peek = None
            self._pendingSet.close()
        udp.Port.connectionLost(self, reason)


class PrimedReactor(EPollReactor):
    """
    L{EPollReactor} dispatching plain read events with one logging context
    per poll instead of one per event.
    """

    #: (the context frame below ours, a copy of it, our frame, its log
    #: context), kept from one poll to the next.
    _logFrame = None

    #: When the last poll that found something ready returned, by
    #: C{seconds()}: the time of every read that poll dispatches, for
    #: protocols that note when they last heard from their peer (libuv's
    #: loop time, C{uv_now}, is kept the same way).  One clock read per poll
    #: instead of one per read: 60 ns, most of a 20-digit number's parsing.
    polledAt = 0.0

    def __init__(self):
        EPollReactor.__init__(self)
        # Twisted sets these in __init__: looked up on this instance.  Any
        # missing, Twisted's own doPoll or mainLoop runs instead of ours.
        where = "twisted.internet.epollreactor.EPollReactor"
        poll = [
            lookup(where, name, "the reactor dispatches every event with Twisted's doPoll", self)
            for name in ("_poller", "_selectables")
        ]
        # (Instance attributes hiding the methods, on purpose.)
        if not present(*poll, _doReadOrWrite, _disconnectSelectable):
            self.doPoll = EPollReactor.doPoll.__get__(self)  # type: ignore[method-assign]
            self.doIteration = self.doPoll  # type: ignore[method-assign]
        loop = [
            lookup(where, name, "the reactor runs Twisted's main loop", self)
            for name in ("_started", "_justStopped", "_pendingTimedCalls",
                         "_newTimedCalls", "_cancellations")
        ]
        if not present(*loop, _topHandler):
            self.mainLoop = EPollReactor.mainLoop.__get__(self)  # type: ignore[method-assign]

    def doPoll(self, timeout):
        """
        Poll once and dispatch what is ready.

        Legacy log calls made while a descriptor handles its event still
        carry that descriptor's C{logPrefix()} as C{system}, as under
        L{EPollReactor}: one context frame is pushed for the whole batch and
        its C{system} set before each event, instead of a frame built and
        torn down per event by C{log.callWithLogger}.
        """
        if timeout is None:
            timeout = -1
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        if not events:
            return
        self.polledAt = self.seconds()
        selectables = self._selectables
        read = os.read
        contexts = context.theContextTracker.currentContext().contexts
        below = contexts[-1]
        cached = self._logFrame
        if cached is None or cached[0] is not below or cached[1] != below:
            # The frame below changed (or is another, in a nested poll):
            # build ours again.  Otherwise the last poll's is reused, which
            # saves two dictionary copies per poll (2 300 instructions).
            frame = below.copy()
            frame[log.ILogContext] = dict(frame.get(log.ILogContext) or {})
            cached = self._logFrame = (below, below.copy(), frame, frame[log.ILogContext])
        frame, logContext = cached[2], cached[3]
        why: Optional[BaseException]
        contexts.append(frame)
        try:
            for fd, event in events:
                try:
                    selectable = selectables[fd]
                except KeyError:
                    continue  # removed by an earlier event of this batch
                server = type(selectable) is Server
                if event != EPOLLIN or (not server and selectable.fileno() == -1):
                    # Anything unusual: Twisted's own dispatch, unchanged.
                    # (A Server's fileno() is -1 only once its connection
                    # is lost, and then it is no longer in selectables.)
                    log.callWithLogger(selectable, self._doReadOrWrite, selectable, fd, event)
                    continue
                try:
                    if server:
                        # tcp.Connection.doRead and _dataReceived, inline:
                        # three Python calls fewer on the hottest path.
                        logContext["system"] = selectable.logstr
                        try:
                            size = selectable.primedReadSize
                        except AttributeError:  # its first read
                            size = selectable.primedReadSize = _FULL_READ
                        try:
                            # os.read, not socket.recv: the same system
                            # call, 500 instructions fewer around it.
                            data = read(fd, size)
                        except OSError as se:
                            if se.args[0] == EWOULDBLOCK:
                                continue
                            why = CONNECTION_LOST
                        else:
                            if data:
                                if size != SMALL_READ or len(data) == size:
                                    _adaptReadSize(selectable, size, len(data))
                                selectable.protocol.dataReceived(data)
                                continue
                            why = CONNECTION_DONE
                    else:
                        logContext["system"] = selectable.logPrefix()
                        why = selectable.doRead()
                except BaseException:
                    # As Twisted does: log it, then disconnect (not as a
                    # read-side close).
                    why = sys.exc_info()[1]
                    log.err()
                    self._disconnect(selectable, why, False)
                    continue
                if why:
                    self._disconnect(selectable, why, True)
        finally:
            contexts.pop()

    def _disconnect(self, selectable, why, isRead):
        """
        L{_disconnectSelectable}, with what it raises (a protocol's
        C{connectionLost} may) logged and the batch going on, as under
        L{EPollReactor}, where C{log.callWithLogger} wraps the whole event:
        otherwise the error would end this poll's batch and reach the main
        loop as a critical "Unexpected error in main loop".
        """
        try:
            self._disconnectSelectable(selectable, why, isRead)
        except KeyboardInterrupt:
            raise
        except BaseException:
            log.err()

    doIteration = doPoll

    def mainLoop(self):
        """
        Twisted's main loop, with lighter turns.

        L{ReactorBase.mainLoop} enters its error handler, runs
        C{runUntilCurrent} and C{timeout} on every turn: about 10 000
        instructions with nothing to do, as much as answering a request.
        Here the handler is entered once, and a turn calls them only when
        something may be due: a call from a thread, a new or expired timer,
        cancelled timers to sweep, a stop.  Otherwise the poll timeout is
        the next timer's delay, computed as C{timeout} would.
        """
        while self._started:
            with _topHandler:
                while self._started:
                    pending = self._pendingTimedCalls
                    if (
                        self.threadCallQueue
                        or self._newTimedCalls
                        or self._justStopped
                        or self._cancellations > 50
                    ):
                        timeout = None  # let Twisted decide
                    elif not pending:
                        self.doIteration(self.running and None)
                        continue
                    else:
                        timeout = pending[0].time - self.seconds()
                    if timeout is None or timeout <= 0:
                        self.runUntilCurrent()
                        timeout = self.timeout()
                    else:
                        timeout = min(_LONGEST_TIMEOUT, timeout)
                    self.doIteration(self.running and timeout)

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        if not _LEAN_UDP:
            return EPollReactor.listenUDP(self, port, protocol, interface, maxPacketSize)
        p = DatagramPort(port, protocol, interface, maxPacketSize, self)
        p.startListening()
        return p

    def adoptDatagramPort(self, fileDescriptor, addressFamily, protocol, maxPacketSize=8192):
        if addressFamily not in (socket.AF_INET, socket.AF_INET6) or not (
            _LEAN_UDP and present(_fromListeningDescriptor)
        ):
            return EPollReactor.adoptDatagramPort(
                self, fileDescriptor, addressFamily, protocol, maxPacketSize
            )
        p = DatagramPort._fromListeningDescriptor(
            self, fileDescriptor, addressFamily, protocol, maxPacketSize=maxPacketSize
        )
        p.startListening()
        return p


def install():
    """
    Install L{PrimedReactor} as the global reactor.
    """
    installReactor(PrimedReactor())


def installDefault() -> bool:
    """
    Install L{PrimedReactor} unless a reactor is installed already (chosen
    with C{twistd --reactor}, or imported by someone): what C{twistd -n
    primed} and C{twist primed} call before touching the reactor.

    @return: whether this call installed it.
    """
    if "twisted.internet.reactor" in sys.modules:
        return False
    install()
    return True
