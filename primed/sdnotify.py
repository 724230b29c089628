# -*- test-case-name: tests.test_sdnotify -*-
"""
A tiny implementation of systemd's C{sd_notify} protocol for Twisted programs.

The protocol is one datagram of newline-separated C{KEY=VALUE} lines sent on
an C{AF_UNIX}/C{SOCK_DGRAM} socket to the address in C{$NOTIFY_SOCKET} (see
sd_notify(3)).  Twisted has no helper for it and the PyPI wrappers are
unmaintained, so this module carries its own, deliberately small:

  - L{Notifier} sends C{READY=1}, C{STOPPING=1}, C{STATUS=...} and
    C{WATCHDOG=1}.  When C{$NOTIFY_SOCKET} is unset every method is a no-op,
    so the daemon behaves identically outside systemd.
  - L{watchdogInterval} and L{startWatchdog} keep a C{WatchdogSec=} service
    alive from the reactor with a L{task.LoopingCall}.
  - L{notifySystemd} ties both to a service's life: ready once it listens,
    stopping when the reactor begins to shut down.

Nothing here imports the global reactor or reads C{os.environ} by itself:
the environment mapping and the reactor are passed in, so tests drive it with
fakes (a dict, L{task.Clock}).

Sending never raises: a daemon must not die, and a reactor callback must not
blow up, because the supervisor's socket went away or its queue is full.
Failures are logged as warnings instead.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping
from typing import Any, Callable

from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

__all__ = ["Notifier", "watchdogInterval", "startWatchdog", "notifySystemd"]


def _notifyAddress(value: str) -> bytes | None:
    """
    Turn C{$NOTIFY_SOCKET} into an address for C{socket.sendto}.

    A leading C{@} names a socket in Linux's abstract namespace, whose real
    address starts with a NUL byte (systemd spells it C{@} because an
    environment variable cannot hold NUL).  Anything that is neither
    absolute nor abstract (e.g. C{vsock:} addresses of newer systemd) is not
    supported: L{None}.
    """
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return os.fsencode(value)
    return None


def _oneLine(text: str) -> str:
    """
    Flatten C{text} to a single line: a newline inside a C{STATUS=} value
    would start a new C{KEY=VALUE} assignment in the datagram.
    """
    return " ".join(str(text).splitlines())


class Notifier:
    """
    Send state changes to the service manager named by C{$NOTIFY_SOCKET}.

    @ivar address: The socket address, or L{None} when notification is
        disabled (variable unset, empty or unsupported).
    """

    log = Logger()

    def __init__(
        self,
        environ: Mapping[str, str],
        socketFactory: Callable[..., socket.socket] = socket.socket,
    ) -> None:
        """
        @param environ: The process environment (pass C{os.environ}); only
            C{NOTIFY_SOCKET} is read, once, here.
        @param socketFactory: Makes the sending socket; tests replace it to
            provoke errors.
        """
        self._socketFactory = socketFactory
        value = environ.get("NOTIFY_SOCKET", "")
        self.address = _notifyAddress(value) if value else None
        if value and self.address is None:
            self.log.warn(
                "Ignoring unsupported NOTIFY_SOCKET={value!r}", value=value
            )

    @property
    def enabled(self) -> bool:
        """
        Whether a service manager is listening (C{$NOTIFY_SOCKET} usable).
        """
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """
        Send C{assignments} (each C{"KEY=VALUE"}) in one datagram.

        The socket is non-blocking so a supervisor that stops reading can
        never stall the reactor: a full queue is just a logged warning.  A
        fresh socket per message keeps no state to go stale across a
        supervisor restart, and these messages are rare (at most one per half
        watchdog interval).

        @return: C{True} if the datagram was sent, C{False} if notification
            is disabled or sending failed (already logged).
        """
        if self.address is None:
            return False
        # surrogateescape: a status may name a path that is not UTF-8 (a
        # unix: socket), and sending must never raise.
        data = "\n".join(assignments).encode("utf-8", "surrogateescape") + b"\n"
        try:
            sock = self._socketFactory(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.sendto(data, self.address)
            finally:
                sock.close()
        except OSError as e:
            self.log.warn(
                "Could not notify the service manager at {address!r} "
                "of {assignments!r}: {error}",
                address=self.address,
                assignments=assignments,
                error=e,
            )
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """
        Tell systemd start-up is complete (C{Type=notify}: units ordered
        after us start now, and C{systemctl start} returns).  Send this only
        once every listener is bound.
        """
        extra = () if status is None else ("STATUS=" + _oneLine(status),)
        return self.notify("READY=1", *extra)

    def stopping(self, status: str | None = None) -> bool:
        """
        Tell systemd a shutdown has begun, so it reports C{deactivating}
        rather than treating the coming exit as a crash.
        """
        extra = () if status is None else ("STATUS=" + _oneLine(status),)
        return self.notify("STOPPING=1", *extra)

    def status(self, text: str) -> bool:
        """
        Set the free-form line C{systemctl status} shows for the service.
        """
        return self.notify("STATUS=" + _oneLine(text))

    def watchdog(self) -> bool:
        """
        Keep-alive ping for C{WatchdogSec=}: proves the reactor still turns.
        """
        return self.notify("WATCHDOG=1")


def watchdogInterval(
    environ: Mapping[str, str], pid: int | None = None
) -> float | None:
    """
    The interval, in seconds, at which to send C{WATCHDOG=1}: half of
    C{$WATCHDOG_USEC}, as sd_watchdog_enabled(3) recommends, so that one late
    ping does not get the service killed.

    @param environ: The process environment.
    @param pid: Our process id (default L{os.getpid}).  When
        C{$WATCHDOG_PID} is set and names another process, the watchdog is
        meant for that process (e.g. our parent), not us.

    @return: L{None} when no watchdog is requested of this process, or the
        variables are malformed.
    """
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    watchdogPid = environ.get("WATCHDOG_PID")
    if watchdogPid is not None:
        if pid is None:
            pid = os.getpid()
        try:
            if int(watchdogPid) != pid:
                return None
        except ValueError:
            return None
    return usec / 2_000_000


def startWatchdog(
    notifier: Notifier,
    reactor: IReactorTime,
    environ: Mapping[str, str],
    pid: int | None = None,
) -> task.LoopingCall | None:
    """
    Send C{WATCHDOG=1} from C{reactor} every half C{$WATCHDOG_USEC}.

    Pings come from a reactor timer on purpose: if the reactor is wedged
    (a blocking call in a callback), the pings stop and systemd restarts us.

    @return: The running L{task.LoopingCall} (the caller stops it when the
        service stops), or L{None} if no watchdog applies or notification
        is disabled.
    """
    interval = watchdogInterval(environ, pid)
    if interval is None or not notifier.enabled:
        return None
    call = task.LoopingCall(notifier.watchdog)
    call.clock = reactor
    call.start(interval, now=True)
    return call


def _describeEndpoints(served: Iterable[Any]) -> str:
    """
    A C{STATUS=} line from what the service listens on: strings, or
    C{(transport, address)} pairs such as C{("TCP", "127.0.0.1:8809")}.
    """
    parts = [
        " ".join(str(x) for x in item) if isinstance(item, tuple) else str(item)
        for item in served
    ]
    return "Serving " + ", ".join(parts) if parts else "Serving nothing"


def notifySystemd(
    service: Any,
    reactor: Any,
    environ: Mapping[str, str],
    notifier: Notifier | None = None,
) -> Notifier | None:
    """
    Speak systemd's notify protocol for C{service}, doing nothing at all
    unless C{$NOTIFY_SOCKET} is set.

      - C{READY=1} and C{STATUS=Serving TCP 127.0.0.1:8809, ...} once
        C{service.listening} fires (every listener bound) I{and} the reactor
        runs.  twistd starts services before C{reactor.run()}; waiting for
        the reactor means a client told "ready" is answered, not just queued
        in a backlog.  The watchdog starts then too.
      - C{STOPPING=1} from a C{before shutdown} trigger, registered here,
        i.e. before twistd registers the service's C{stopService}, so systemd
        learns of the stop before the graceful drain starts.  The watchdog
        keeps pinging during the drain and stops after shutdown.

    @param service: Has C{listening}, a L{Deferred} that fires with what it
        serves (see L{_describeEndpoints}) once every listener is bound.
    @param reactor: Provides C{callWhenRunning}, C{addSystemEventTrigger}
        and L{IReactorTime}.
    @param environ: The process environment (C{os.environ}).
    @param notifier: For tests; by default one made from C{environ}.

    @return: The L{Notifier} in use, or L{None} when not under systemd.
    """
    if notifier is None:
        notifier = Notifier(environ)
    if not notifier.enabled:
        return None
    state: dict = {"watchdog": None, "stopping": False}

    def ready(served: Any) -> None:
        if state["stopping"]:
            return
        notifier.ready(_describeEndpoints(served))
        state["watchdog"] = startWatchdog(notifier, reactor, environ)

    def listening(served: Any) -> Any:
        reactor.callWhenRunning(ready, served)
        return served

    def stopping() -> None:
        state["stopping"] = True
        notifier.stopping("Stopping: answering the requests already received")

    def stopped() -> None:
        call = state["watchdog"]
        if call is not None and call.running:
            call.stop()

    service.listening.addCallback(listening)
    reactor.addSystemEventTrigger("before", "shutdown", stopping)
    reactor.addSystemEventTrigger("after", "shutdown", stopped)
    return notifier
