"""
Tests for L{primed.sdnotify}: real datagrams on a Unix socket the test owns.
"""

import os
import socket
import tempfile
import threading
import uuid

from twisted.internet import defer, task
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from primed.sdnotify import Notifier, notifySystemd, startWatchdog, watchdogInterval


class _Receiver:
    """
    A bound AF_UNIX datagram socket standing in for systemd's notify socket.
    """

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(5)

    def receive(self):
        return self.sock.recv(4096)

    def pending(self):
        """
        Every datagram already queued, without waiting.
        """
        out = []
        self.sock.setblocking(False)
        try:
            for _ in range(1000):
                out.append(self.sock.recv(4096))
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(5)
        return out

    def close(self):
        self.sock.close()


def _captureLog(testCase):
    events = []
    globalLogPublisher.addObserver(events.append)
    testCase.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


class NotifierTests(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="primed-sdnotify-")
        self.addCleanup(os.rmdir, self.dir)
        self.path = os.path.join(self.dir, "notify")
        self.receiver = _Receiver(self.path)
        self.addCleanup(os.unlink, self.path)
        self.addCleanup(self.receiver.close)
        self.notifier = Notifier({"NOTIFY_SOCKET": self.path})

    def test_ready(self):
        self.assertTrue(self.notifier.enabled)
        self.assertTrue(self.notifier.ready())
        self.assertEqual(self.receiver.receive(), b"READY=1\n")

    def test_readyWithStatus(self):
        """
        READY=1 and STATUS= travel in one datagram, so systemd sees them
        together.
        """
        self.notifier.ready("listening on tcp:8809, udp:8808")
        self.assertEqual(
            self.receiver.receive(),
            b"READY=1\nSTATUS=listening on tcp:8809, udp:8808\n",
        )

    def test_stopping(self):
        self.notifier.stopping()
        self.assertEqual(self.receiver.receive(), b"STOPPING=1\n")
        self.notifier.stopping("bye")
        self.assertEqual(self.receiver.receive(), b"STOPPING=1\nSTATUS=bye\n")

    def test_status(self):
        self.notifier.status("\u00e9t\u00e9")
        self.assertEqual(self.receiver.receive(), "STATUS=\u00e9t\u00e9\n".encode())

    def test_statusNotUTF8(self):
        """
        A status naming a path that is not UTF-8 (undecodable bytes come back
        from os.fsdecode as surrogates) is sent byte for byte, not raised.
        """
        self.notifier.ready("Serving TCP " + os.fsdecode(b"/run/caf\xe9.sock"))
        self.assertEqual(self.receiver.receive(),
                         b"READY=1\nSTATUS=Serving TCP /run/caf\xe9.sock\n")

    def test_statusNewlines(self):
        """
        A newline in a status cannot smuggle in another assignment.
        """
        self.notifier.status("a\nREADY=1\r\nb")
        self.assertEqual(self.receiver.receive(), b"STATUS=a READY=1 b\n")

    def test_watchdog(self):
        self.notifier.watchdog()
        self.assertEqual(self.receiver.receive(), b"WATCHDOG=1\n")

    def test_receiverGoneIsLoggedNotRaised(self):
        """
        If systemd's socket disappears, sending logs a warning and returns
        False; nothing propagates into the caller (a reactor callback).
        """
        events = _captureLog(self)
        self.receiver.close()
        os.unlink(self.path)
        self.addCleanup(lambda: open(self.path, "w").close())
        self.assertFalse(self.notifier.ready())
        self.assertTrue(
            [e for e in events if "Could not notify" in e.get("log_format", "")]
        )

    def test_fullQueueDoesNotBlock(self):
        """
        The sending socket is non-blocking: a receiver that never reads makes
        sends fail (logged), never hang the reactor.
        """
        events = _captureLog(self)
        results = []

        def send():
            for _ in range(2000):
                results.append(self.notifier.status("x" * 1000))

        # In a thread, so a send that blocks fails the test instead of
        # hanging it; closing the receiver then wakes the blocked send.
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        sender.join(30)
        if sender.is_alive():
            self.receiver.close()
            sender.join(5)
            self.fail(f"notify blocked after {len(results)} sends to a full queue")
        self.assertIn(False, results)
        self.assertTrue(
            [e for e in events if "Could not notify" in e.get("log_format", "")]
        )

    def test_socketErrorLogged(self):
        def broken(*args):
            raise OSError(24, "Too many open files")

        events = _captureLog(self)
        notifier = Notifier({"NOTIFY_SOCKET": self.path}, socketFactory=broken)
        self.assertFalse(notifier.watchdog())
        self.assertEqual(len([e for e in events if "error" in e]), 1)


class AbstractNamespaceTests(unittest.TestCase):
    def test_abstract(self):
        """
        A leading C{@} is Linux's abstract namespace: the address starts with
        a NUL byte instead.
        """
        name = "primed-test-" + uuid.uuid4().hex
        receiver = _Receiver("\0" + name)
        self.addCleanup(receiver.close)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        self.assertEqual(notifier.address, b"\0" + name.encode())
        self.assertTrue(notifier.ready("ok"))
        self.assertEqual(receiver.receive(), b"READY=1\nSTATUS=ok\n")


class DisabledTests(unittest.TestCase):
    def assertSilent(self, environ):
        """
        With no usable NOTIFY_SOCKET, no socket is even created and every
        call returns False without raising.
        """
        made = []

        def factory(*args):
            made.append(args)
            raise AssertionError("no socket should be made")

        notifier = Notifier(environ, socketFactory=factory)
        self.assertFalse(notifier.enabled)
        for call in (
            notifier.ready,
            notifier.stopping,
            notifier.watchdog,
            lambda: notifier.status("s"),
            lambda: notifier.ready("s"),
        ):
            self.assertFalse(call())
        self.assertEqual(made, [])

    def test_unset(self):
        self.assertSilent({})

    def test_empty(self):
        self.assertSilent({"NOTIFY_SOCKET": ""})

    def test_unsupported(self):
        events = _captureLog(self)
        self.assertSilent({"NOTIFY_SOCKET": "relative/path"})
        self.assertSilent({"NOTIFY_SOCKET": "@"})
        self.assertSilent({"NOTIFY_SOCKET": "vsock:2:1234"})
        self.assertEqual(len(events), 3)

    def test_osEnviron(self):
        """
        Works on the real environment mapping too, set or not.
        """
        directory = tempfile.mkdtemp(prefix="primed-sdnotify-")
        self.addCleanup(os.rmdir, directory)
        path = os.path.join(directory, "n")
        receiver = _Receiver(path)
        self.addCleanup(os.unlink, path)
        self.addCleanup(receiver.close)
        saved = os.environ.get("NOTIFY_SOCKET")
        self.addCleanup(
            lambda: os.environ.pop("NOTIFY_SOCKET", None) if saved is None
            else os.environ.__setitem__("NOTIFY_SOCKET", saved)
        )
        os.environ["NOTIFY_SOCKET"] = path
        notifier = Notifier(os.environ)
        self.assertTrue(notifier.ready())
        self.assertEqual(receiver.receive(), b"READY=1\n")
        del os.environ["NOTIFY_SOCKET"]
        self.assertFalse(Notifier(os.environ).enabled)


class WatchdogIntervalTests(unittest.TestCase):
    def test_half(self):
        self.assertEqual(watchdogInterval({"WATCHDOG_USEC": "30000000"}), 15.0)

    def test_unset(self):
        self.assertIsNone(watchdogInterval({}))

    def test_malformed(self):
        for value in ("", "x", "0", "-5", "1.5"):
            self.assertIsNone(watchdogInterval({"WATCHDOG_USEC": value}), value)

    def test_pidMatches(self):
        env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
        self.assertEqual(watchdogInterval(env), 1.0)
        self.assertEqual(watchdogInterval(dict(env, WATCHDOG_PID="7"), pid=7), 1.0)

    def test_pidOther(self):
        """
        C{$WATCHDOG_PID} naming another process means the watchdog is not
        ours to feed.
        """
        env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}
        self.assertIsNone(watchdogInterval(env))
        self.assertIsNone(watchdogInterval(dict(env, WATCHDOG_PID="junk")))


class StartWatchdogTests(unittest.TestCase):
    def setUp(self):
        self.sent = []
        self.notifier = Notifier({"NOTIFY_SOCKET": "/nonexistent/notify"})
        self.notifier.notify = lambda *a: self.sent.append(a) or True
        self.clock = task.Clock()

    def test_pings(self):
        """
        WATCHDOG=1 goes out at once and then every half WATCHDOG_USEC, on the
        reactor that was passed in.
        """
        call = startWatchdog(
            self.notifier, self.clock, {"WATCHDOG_USEC": "10000000"}
        )
        self.assertEqual(self.sent, [("WATCHDOG=1",)])
        self.clock.advance(4.9)
        self.assertEqual(len(self.sent), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.sent), 2)
        self.clock.pump([5] * 10)
        self.assertEqual(len(self.sent), 12)
        call.stop()
        self.clock.advance(100)
        self.assertEqual(len(self.sent), 12)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_pidGate(self):
        """
        Another process's watchdog is left alone: no ping, no timer.  Ours
        is fed at once and every half WATCHDOG_USEC.
        """
        env = {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}
        self.assertIsNone(startWatchdog(self.notifier, self.clock, env, pid=2))
        self.assertEqual(self.sent, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        call = startWatchdog(self.notifier, self.clock, env, pid=1)
        self.assertEqual(self.sent, [("WATCHDOG=1",)])
        self.clock.pump([5, 5])
        self.assertEqual(self.sent, [("WATCHDOG=1",)] * 3)
        call.stop()

    def test_noWatchdog(self):
        self.assertIsNone(startWatchdog(self.notifier, self.clock, {}))
        self.assertEqual(self.sent, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_noNotifySocket(self):
        """
        A watchdog without a notify socket has nobody to ping: no timer.
        """
        call = startWatchdog(
            Notifier({}), self.clock, {"WATCHDOG_USEC": "10000000"}
        )
        self.assertIsNone(call)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_realDatagrams(self):
        """
        End to end through a real socket, driven by a fake clock.
        """
        directory = tempfile.mkdtemp(prefix="primed-sdnotify-")
        self.addCleanup(os.rmdir, directory)
        path = os.path.join(directory, "n")
        receiver = _Receiver(path)
        self.addCleanup(os.unlink, path)
        self.addCleanup(receiver.close)
        call = startWatchdog(
            Notifier({"NOTIFY_SOCKET": path}),
            self.clock,
            {"WATCHDOG_USEC": "1000000"},
        )
        self.clock.pump([0.5, 0.5])
        call.stop()
        self.assertEqual(receiver.pending(), [b"WATCHDOG=1\n"] * 3)


class _FakeService:
    def __init__(self):
        self.listening = defer.Deferred()


class _FakeReactor(MemoryReactorClock):
    def fire(self, phase, event="shutdown"):
        for f, args, kw in self.triggers.get(phase, {}).get(event, []):
            f(*args, **kw)


class NotifySystemdTests(unittest.TestCase):
    def setUp(self):
        self.sent = []
        self.notifier = Notifier({"NOTIFY_SOCKET": "/nonexistent/notify"})
        self.notifier.notify = lambda *a: self.sent.append(a) or True
        self.reactor = _FakeReactor()
        self.service = _FakeService()

    def wire(self, environ=None):
        env = {"NOTIFY_SOCKET": "/nonexistent/notify"}
        env.update(environ or {})
        return notifySystemd(self.service, self.reactor, env, notifier=self.notifier)

    def test_readyOnceListeningAndRunning(self):
        """
        READY=1 waits for every listener and for the reactor to run; its
        STATUS= names the endpoints.
        """
        self.assertIs(self.wire(), self.notifier)
        self.assertEqual(self.sent, [])
        self.service.listening.callback(
            [("TCP", "127.0.0.1:8809"), ("UDP", "127.0.0.1:8808")]
        )
        self.assertEqual(self.sent, [])
        self.reactor.run()
        self.assertEqual(
            self.sent,
            [("READY=1", "STATUS=Serving TCP 127.0.0.1:8809, UDP 127.0.0.1:8808")],
        )

    def test_listeningResultPassedOn(self):
        self.wire()
        results = []
        self.service.listening.callback(["x"])
        self.service.listening.addCallback(results.append)
        self.assertEqual(results, [["x"]])

    def test_notListening(self):
        """
        A service that never binds never claims to be ready.
        """
        self.wire()
        self.reactor.run()
        self.assertEqual(self.sent, [])

    def test_stopping(self):
        self.wire()
        self.reactor.run()
        self.service.listening.callback([])
        self.reactor.fire("before")
        self.assertEqual(
            self.sent,
            [
                ("READY=1", "STATUS=Serving nothing"),
                (
                    "STOPPING=1",
                    "STATUS=Stopping: answering the requests already received",
                ),
            ],
        )

    def test_stopBeforeReady(self):
        """
        A stop that begins before the reactor ran never sends READY=1 after
        STOPPING=1.
        """
        self.wire()
        self.service.listening.callback([])
        self.reactor.fire("before")
        self.reactor.run()
        self.assertEqual([m[0] for m in self.sent], ["STOPPING=1"])

    def test_watchdog(self):
        """
        The watchdog starts with READY=1, pings through the drain, and stops
        after shutdown.
        """
        self.wire({"WATCHDOG_USEC": "4000000"})
        self.reactor.run()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.service.listening.callback([])
        self.reactor.advance(2)
        self.reactor.fire("before")
        self.reactor.advance(2)
        self.assertEqual(
            [m[0] for m in self.sent],
            ["READY=1", "WATCHDOG=1", "WATCHDOG=1", "STOPPING=1", "WATCHDOG=1"],
        )
        self.reactor.fire("after")
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_disabled(self):
        """
        Without NOTIFY_SOCKET nothing is hooked anywhere.
        """
        self.assertIsNone(
            notifySystemd(self.service, self.reactor, {"WATCHDOG_USEC": "1000"})
        )
        self.assertEqual(self.reactor.triggers, {})
        self.service.listening.callback([])
        self.reactor.run()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
