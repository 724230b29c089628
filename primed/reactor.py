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
C{doRead}, and the logging context is one frame per poll whose C{system}
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
import sys
from select import EPOLLIN

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.main import installReactor
from twisted.python import context, log

__all__ = ["PrimedReactor", "install"]


class PrimedReactor(EPollReactor):
    """
    L{EPollReactor} dispatching plain read events with one logging context
    per poll instead of one per event.
    """

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
        selectables = self._selectables
        contexts = context.theContextTracker.currentContext().contexts
        frame = contexts[-1].copy()
        logContext = frame[log.ILogContext] = dict(frame.get(log.ILogContext) or {})
        contexts.append(frame)
        try:
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is None:
                    continue  # removed by an earlier event of this batch
                if event != EPOLLIN or selectable.fileno() == -1:
                    # Anything unusual: Twisted's own dispatch, unchanged.
                    log.callWithLogger(selectable, self._doReadOrWrite, selectable, fd, event)
                    continue
                try:
                    logContext["system"] = selectable.logPrefix()
                    why = selectable.doRead()
                except BaseException:
                    # As Twisted does: log it, then disconnect (not as a
                    # read-side close).
                    why = sys.exc_info()[1]
                    log.err()
                    self._disconnectSelectable(selectable, why, False)
                    continue
                if why:
                    self._disconnectSelectable(selectable, why, True)
        finally:
            contexts.pop()

    doIteration = doPoll


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
