"""
Tests for L{primed.reactor}: Twisted's own reactor test suites (TCP, UDP,
half-close, abort, system events, time, threads) run against
L{PrimedReactor}, so its lean read path is held to everything Twisted
promises of a reactor; and C{twistd} installs it by default but honours
C{--reactor}.
"""

import contextlib
import errno
import inspect
import os
import select
import socket
import struct
import subprocess
import sys
import time

from twisted.internet.test import (
    test_core,
    test_tcp,
    test_threads,
    test_time,
    test_udp,
)
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import (
    ConnectionDone,
    ConnectionFdescWentAway,
    ConnectionLost,
    UnsupportedAddressFamily,
)
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.tcp import Server
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

import primed.reactor
from primed.reactor import SMALL_READ, DatagramPort, PrimedReactor

from support import Daemon, ask, askUDP, readAll, twistdCommand

_PRIMED = "primed.reactor.PrimedReactor"


def _forPrimed(builder):
    """
    Twisted's test classes for C{builder}, made for L{PrimedReactor} only.
    """
    builder._reactors = [_PRIMED]
    try:
        classes = builder.makeTestCaseClasses()
    finally:
        del builder._reactors
    for cls in classes.values():
        # runReactor's limit (trial's 120 s by default): a reactor that
        # never stops fails the test after this long.  Each test takes well
        # under a second; a mutant of the reactor that hangs one
        # (tests/mutate.py) costs this, not the run's whole HANG.
        cls.timeout = 15
    return {f"Primed_{name}": cls for name, cls in classes.items()}


class DatagramPortTests(SynchronousTestCase):
    """
    L{DatagramPort} reads every queued datagram in one read event, within
    C{maxThroughput}, and stops without an error when none is left.
    """

    def setUp(self):
        self.reactor = PrimedReactor()
        self.received = []
        protocol = DatagramProtocol()
        protocol.datagramReceived = lambda data, addr: self.received.append(data)
        self.port = self.reactor.listenUDP(0, protocol, interface="127.0.0.1")
        # The reactor never runs: close the port by hand.
        self.addCleanup(self.port.connectionLost)
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(self.sender.close)
        self.sender.connect(("127.0.0.1", self.port.getHost().port))

    def _queue(self, count, size=10):
        for i in range(count):
            self.sender.send(b"%0*d" % (size, i))
        # Loopback delivery is synchronous, but be sure they are queued.
        waiting = select.epoll()
        waiting.register(self.port.fileno(), select.EPOLLIN)
        self.assertTrue(waiting.poll(5))
        waiting.close()

    def test_allQueuedInOneEvent(self):
        """
        Whether few (peeked) or many (drained to EAGAIN) are queued.
        """
        self.assertIsInstance(self.port, DatagramPort)
        for count in [1, 3, DatagramPort.PEEKS + 1, 20]:
            del self.received[:]
            self._queue(count)
            self.port.doRead()
            self.assertEqual(self.received, [b"%010d" % i for i in range(count)])
            self.port.doRead()  # nothing left: EAGAIN is handled quietly
            self.assertEqual(len(self.received), count)

    def test_maxThroughput(self):
        self.port.maxThroughput = 250
        self._queue(5, size=100)
        self.port.doRead()
        self.assertEqual(len(self.received), 3)  # stops once 250 bytes are read
        self.port.doRead()
        self.assertEqual(len(self.received), 5)

    def test_maxThroughputReachedExactly(self):
        """
        Reading exactly C{maxThroughput} bytes ends the event; a byte less
        does not.
        """
        self.port.maxThroughput = 300
        self._queue(7, size=100)
        self.port.doRead()
        self.assertEqual(len(self.received), 3)
        self.port.maxThroughput = 201
        self.port.doRead()
        self.assertEqual(len(self.received), 6)  # 200 bytes were not enough

    def test_peeksThenDrains(self):
        """
        After each of the first L{DatagramPort.PEEKS} datagrams of an event
        the loop peeks, without waiting: a short queue ends without a failed
        read; a longer one is then drained to C{EAGAIN}.  The protocol has
        no C{readDatagrams}: this is the port's own loop.
        """
        self._queue(1)
        self.port.doRead()  # makes the port's peek
        peeks, failures = [], []
        peek, readFailed = self.port.peek, self.port.readFailed
        self.port.peek = lambda *args: (peeks.append(args), peek(*args))[1]
        self.port.readFailed = lambda error: (failures.append(error), readFailed(error))
        for count in range(1, DatagramPort.PEEKS + 1):
            del peeks[:], self.received[:]
            self._queue(count)
            self.port.doRead()
            self.assertEqual(len(self.received), count)
            self.assertEqual(([timeout for timeout, _ in peeks], failures), ([0] * count, []))
        del peeks[:], self.received[:]
        count = DatagramPort.PEEKS + 1
        self._queue(count)
        self.port.doRead()
        self.assertEqual(len(self.received), count)
        self.assertEqual([timeout for timeout, _ in peeks], [0] * DatagramPort.PEEKS)
        self.assertEqual([type(error) for error in failures], [BlockingIOError])


class DatagramPortMakingTests(SynchronousTestCase):
    """
    L{PrimedReactor.listenUDP} and C{adoptDatagramPort} make
    L{DatagramPort}s with Twisted's defaults, and refuse what Twisted's
    reactor refuses.
    """

    def setUp(self):
        self.reactor = PrimedReactor()
        self.addCleanup(self.reactor._poller.close)

    def test_twistedsDefaults(self):
        """
        The same parameters and defaults as Twisted's (all interfaces,
        8192-byte datagrams): checked on the signatures, so that no test
        listens on every interface.
        """
        for name in ("listenUDP", "adoptDatagramPort"):
            self.assertEqual(inspect.signature(getattr(PrimedReactor, name)),
                             inspect.signature(getattr(EPollReactor, name)))

    def test_listen(self):
        port = self.reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        self.addCleanup(port.connectionLost)
        self.assertIsInstance(port, DatagramPort)
        self.assertEqual(port.maxPacketSize, 8192)

    def _socket(self, family, address):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(address)
        sock.setblocking(False)
        return sock

    def test_adopt(self):
        for family, host in [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]:
            sock = self._socket(family, (host, 0))
            port = self.reactor.adoptDatagramPort(sock.fileno(), family, DatagramProtocol())
            self.addCleanup(port.connectionLost)
            self.assertIsInstance(port, DatagramPort)
            self.assertEqual((port.getHost().host, port.maxPacketSize), (host, 8192))

    def test_adoptOtherFamily(self):
        sock = self._socket(socket.AF_UNIX, "")
        self.assertRaises(UnsupportedAddressFamily, self.reactor.adoptDatagramPort,
                          sock.fileno(), socket.AF_UNIX, DatagramProtocol())


def _reactorClassAfter(code):
    """
    Run C{code} in a fresh interpreter, then report the installed
    reactor's class.
    """
    script = code + "\nfrom twisted.internet import reactor\nprint(type(reactor).__name__)"
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.strip()


class InstallDefaultTests(TestCase):
    """
    L{installDefault} and primed's options (which C{twistd primed} and
    C{twist primed} parse before anything imports the reactor).
    """

    def test_installsWhenNoneChosen(self):
        """
        With no reactor installed yet, L{installDefault} installs
        L{PrimedReactor}.
        """
        self.assertEqual(
            _reactorClassAfter("from primed.reactor import installDefault; print(installDefault())"),
            "True\nPrimedReactor",
        )

    def test_keepsAChosenReactor(self):
        """
        A reactor installed before (C{twistd --reactor=...}) is kept.
        """
        self.assertEqual(
            _reactorClassAfter(
                "from twisted.internet import pollreactor; pollreactor.install()\n"
                "from primed.reactor import installDefault; print(installDefault())"
            ),
            "False\nPollReactor",
        )

    def test_optionsInstallIt(self):
        """
        Parsing primed's options (what C{twistd primed} does first) installs
        it.
        """
        self.assertEqual(
            _reactorClassAfter("from primed import tap; tap.Options().parseOptions([])"),
            "PrimedReactor",
        )


class DaemonReactorTests(TestCase):
    """
    The installed daemon runs on L{PrimedReactor} unless told otherwise,
    and serves the same either way.
    """

    def _serves(self, daemon):
        self.assertEqual(ask(daemon.tcpPort, b"17\n18\n"), b"T\nF\n")
        self.assertEqual(askUDP(daemon.udpPort, b"29"), b"T\n")
        # Half-close: the unterminated last line is answered, then EOF.
        with socket.create_connection(("127.0.0.1", daemon.tcpPort), timeout=10) as sock:
            sock.sendall(b"4\n13")
            sock.shutdown(socket.SHUT_WR)
            self.assertEqual(readAll(sock), b"F\nT\n")

    def test_twistdDefault(self):
        with Daemon() as d:
            d.waitForLog("reactor class: primed.reactor.PrimedReactor")
            self._serves(d)

    def test_twistdChosenReactor(self):
        with Daemon(runnerArgs=["--reactor=epoll"]) as d:
            d.waitForLog("reactor class: twisted.internet.epollreactor.EPollReactor")
            self._serves(d)

    def test_twistdReactorPlugin(self):
        with Daemon(runnerArgs=["--reactor=primed"]) as d:
            d.waitForLog("reactor class: primed.reactor.PrimedReactor")
            self._serves(d)
        out = subprocess.run(twistdCommand() + ["--help-reactors"], capture_output=True,
                             text=True, timeout=60).stdout
        self.assertIn("primed", out)


class _Selectable:
    """
    A readable descriptor that notes the logging context it is read in.
    """

    def __init__(self, prefix, seen):
        self.prefix = prefix
        self.seen = seen

    def fileno(self):
        return 99

    def logPrefix(self):
        return self.prefix

    def doRead(self):
        from twisted.python import context, log

        logContext = context.get(log.ILogContext)
        self.seen.append((logContext["system"], context.get("primed-test-key")))


class LogContextTests(SynchronousTestCase):
    """
    Legacy log calls made while a descriptor handles its event see its
    C{logPrefix()} as C{system}, as under Twisted's reactor; the frame
    carrying it is kept from one poll to the next, and built again when the
    context below it changed.
    """

    def setUp(self):
        from twisted.python import context

        self.reactor = PrimedReactor()
        self.addCleanup(self.reactor._poller.close)
        self.seen = []
        self.events = []
        self.reactor._poller = type("Poller", (), {"poll": lambda _, t, n: self.events})()
        self.reactor._selectables = {5: _Selectable("first", self.seen),
                                     6: _Selectable("second", self.seen)}
        self.addCleanup(context.defaultContextDict.pop, "primed-test-key", None)

    def test_systemPerDescriptor(self):
        from twisted.python import context, log

        self.events = [(5, select.EPOLLIN), (6, select.EPOLLIN)]
        self.reactor.doPoll(0)
        self.events = [(6, select.EPOLLIN), (5, select.EPOLLIN)]
        self.reactor.doPoll(0)
        self.assertEqual([s for s, _ in self.seen], ["first", "second", "second", "first"])
        self.assertEqual(context.get(log.ILogContext)["system"], "-")  # popped

    def test_contextBelowChanged(self):
        from twisted.python import context

        self.events = [(5, select.EPOLLIN)]
        context.setDefault("primed-test-key", "before")
        self.reactor.doPoll(0)
        context.setDefault("primed-test-key", "changed between polls")
        self.reactor.doPoll(0)
        self.assertEqual(self.seen, [("first", "before"), ("first", "changed between polls")])

    def test_frameKept(self):
        """
        Polls over the same context reuse one frame: two dictionary copies
        fewer per poll.
        """
        from twisted.python import context

        frames = []
        self.reactor._selectables[5].doRead = lambda: frames.append(
            context.theContextTracker.currentContext().contexts[-1])
        self.events = [(5, select.EPOLLIN)]
        self.reactor.doPoll(0)
        self.reactor.doPoll(0)
        self.assertEqual(len(frames), 2)
        self.assertIs(frames[0], frames[1])

    def test_logContextBelowKept(self):
        """
        The log context a descriptor is read in is the one below with its
        C{system}, as C{log.callWithLogger} makes it: other keys stay.
        """
        from twisted.python import context, log

        seen = []
        self.reactor._selectables[5].doRead = lambda: seen.append(
            dict(context.get(log.ILogContext)))
        self.events = [(5, select.EPOLLIN)]
        below = {"system": "outer", "primed-test": "kept"}
        context.call({log.ILogContext: below}, self.reactor.doPoll, 0)
        self.assertEqual(seen, [{"system": "first", "primed-test": "kept"}])


class PollTimeTests(SynchronousTestCase):
    """
    C{polledAt} is when the last poll that found something ready returned:
    read once per such poll, after it.
    """

    setUp = LogContextTests.setUp

    def test_polledAt(self):
        now = [1.0]

        def poll(timeout, size):
            now[0] += 6  # the poll waited
            return self.events

        self.reactor._poller = type("Poller", (), {"poll": lambda _, t, n: poll(t, n)})()
        self.reactor.seconds = lambda: now[0]
        self.events = []
        self.reactor.doPoll(0)
        self.assertEqual(self.reactor.polledAt, 0.0)  # nothing ready
        self.events = [(5, select.EPOLLIN), (6, select.EPOLLIN)]
        self.reactor.doPoll(0)
        self.assertEqual(self.reactor.polledAt, 13.0)
        self.assertEqual(len(self.seen), 2)


class _Closed(_Selectable):
    """
    A descriptor closed under the reactor (C{fileno()} is -1), noting how
    it was disconnected.
    """

    def fileno(self):
        return -1

    def connectionLost(self, reason):
        self.seen.append(("lost", reason.type))


class PollTests(SynchronousTestCase):
    """
    L{PrimedReactor.doPoll}'s poll and the events it skips: no timeout
    waits as long as it takes; a poll interrupted by a signal is an empty
    one, any other error is raised; an event of a descriptor removed by an
    earlier one of its batch is skipped, and one closed under the reactor
    is disconnected as Twisted's dispatch does, never read.
    """

    setUp = LogContextTests.setUp

    def _poll(self, poll):
        self.reactor._poller = type("Poller", (), {"poll": lambda _, t, n: poll(t)})()

    def test_noTimeout(self):
        timeouts = []
        self._poll(lambda timeout: timeouts.append(timeout) or [])
        self.reactor.doPoll(None)
        self.reactor.doPoll(2.5)
        self.assertEqual(len(timeouts), 2)
        # epoll: wait indefinitely (None or any negative), not wake each second
        self.assertTrue(timeouts[0] is None or timeouts[0] < 0, timeouts)
        self.assertEqual(timeouts[1], 2.5)

    def _fails(self, number):
        def poll(timeout):
            raise OSError(number, os.strerror(number))

        self._poll(poll)

    def test_interrupted(self):
        self._fails(errno.EINTR)
        self.reactor.doPoll(0)
        self.assertEqual(self.seen, [])

    def test_pollFails(self):
        self._fails(errno.EBADF)
        failure = self.assertRaises(OSError, self.reactor.doPoll, 0)
        self.assertEqual(failure.errno, errno.EBADF)

    def test_removedEarlierInTheBatch(self):
        self.events = [(7, select.EPOLLIN), (5, select.EPOLLIN)]
        self.reactor.doPoll(0)
        self.assertEqual([system for system, _ in self.seen], ["first"])

    def test_closedDescriptor(self):
        self.reactor._selectables[5] = _Closed("closed", self.seen)
        self.events = [(5, select.EPOLLIN), (6, select.EPOLLIN)]
        self.reactor.doPoll(0)
        self.assertEqual(self.seen, [("lost", ConnectionFdescWentAway), ("second", None)])


class _Broken(_Selectable):
    """
    A descriptor whose read fails and whose C{connectionLost} fails too.
    """

    def doRead(self):
        raise ValueError("read failed")

    def connectionLost(self, reason):
        raise RuntimeError("connectionLost failed")


class DisconnectErrorTests(SynchronousTestCase):
    """
    An error raised while a descriptor is disconnected is logged and the
    rest of the poll's events are still handled, as under Twisted's reactor
    (where C{log.callWithLogger} wraps each event), instead of escaping to
    the main loop as a critical error.
    """

    setUp = LogContextTests.setUp

    def test_connectionLostRaises(self):
        self.reactor._selectables[5] = _Broken("broken", self.seen)
        self.events = [(5, select.EPOLLIN), (6, select.EPOLLIN)]
        self.reactor.doPoll(0)
        self.assertEqual([s for s, _ in self.seen], ["second"])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class _Reads(Protocol):
    """
    Notes the size of every read it is given.
    """

    def connectionMade(self):
        self.factory.connections.append(self)
        self.reads = []

    def dataReceived(self, data):
        self.reads.append(len(data))


class ReadSizeTests(SynchronousTestCase):
    """
    An accepted TCP connection reads L{SMALL_READ} bytes per event while its
    reads are short (one small allocation instead of a 64 KiB one), and
    Twisted's C{bufferSize} again once a read fills that: a bulk client still
    gets one system call per 64 KiB.  Real sockets, a real poller, the
    reactor's own dispatch (C{doPoll}), not run.
    """

    def setUp(self):
        self.reactor = PrimedReactor()
        factory = Factory.forProtocol(_Reads)
        factory.connections = []
        port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(self._close, port)
        self._pollUntil(lambda: factory.connections)
        [self.protocol] = factory.connections

    def _close(self, port):
        self.client.close()
        for selectable in self.reactor.removeAll():
            selectable.socket.close()
        self.reactor._poller.close()

    def _pollUntil(self, condition):
        deadline = time.monotonic() + 10
        while not condition():
            self.assertLess(time.monotonic(), deadline, "nothing arrived")
            self.reactor.doPoll(0.1)

    def _send(self, size, reads):
        """
        Send C{size} bytes, as much at once as the socket takes, polling
        until they all arrived: return the sizes of the reads they came in
        (at most C{reads} of them).
        """
        before = len(self.protocol.reads)
        left = memoryview(b"7" * size)
        self.client.setblocking(False)
        deadline = time.monotonic() + 10
        while left or sum(self.protocol.reads[before:]) < size:
            self.assertLess(time.monotonic(), deadline, "nothing arrived")
            try:
                while left:
                    left = left[self.client.send(left):]
            except BlockingIOError:
                pass
            self.reactor.doPoll(0.1)
        got = self.protocol.reads[before:]
        self.assertLessEqual(len(got), reads, got)
        return got

    def test_shortThenBulk(self):
        # The first read is Twisted's size; a short one makes the next small.
        self.assertEqual(self._send(10, 1), [10])
        # 1 000 bytes arrive: one small read, then a full-size one.
        self.assertEqual(self._send(1000, 2), [SMALL_READ, 1000 - SMALL_READ])
        # Still full size: 200 000 bytes come in reads of more than
        # SMALL_READ, as many as the socket's buffers hold at once.
        got = self._send(200_000, 200_000 // SMALL_READ)
        self.assertLessEqual(max(got), Server.bufferSize)
        self.assertGreater(sum(got) / len(got), SMALL_READ)
        # A short read again: small reads again.
        self.assertEqual(self._send(5, 1), [5])
        self.assertEqual(self._send(600, 2), [SMALL_READ, 600 - SMALL_READ])

    def test_writeBufferLimit(self):
        """
        Reading small does not shrink the transport's write buffer: Twisted
        pauses a streaming producer (primed's connection stops reading) once
        more than C{bufferSize} bytes wait to be sent, so that limit stays
        Twisted's 64 KiB, not L{SMALL_READ}.
        """
        self.assertEqual(self._send(10, 1), [10])  # reads are small now

        class Producer:
            paused = False

            def pauseProducing(self):
                self.paused = True

            def resumeProducing(self):
                self.paused = False

            def stopProducing(self):
                pass

        producer = Producer()
        transport = self.protocol.transport
        transport.registerProducer(producer, True)
        transport.write(b"F\n" * 500)  # 1 000 bytes, buffered until writable
        self.assertFalse(producer.paused)
        transport.write(b"F\n" * Server.bufferSize)
        self.assertTrue(producer.paused)

    def test_twistedPathReadsFull(self):
        """
        A read event that takes Twisted's own dispatch (readable and
        writable at once: the connection has replies waiting to be sent)
        reads Twisted's C{bufferSize}, however small the fast path's last
        reads were: a client whose replies back up is not read 448 bytes a
        poll.
        """
        self.assertEqual(self._send(10, 1), [10])  # reads are small now
        self.protocol.transport.startWriting()  # EPOLLIN|EPOLLOUT next
        self.assertEqual(self._send(2000, 1), [2000])

    def test_fullReadOfExactlySmallRead(self):
        """
        A full-size read that got exactly L{SMALL_READ} bytes is not short:
        a small read would have been filled by them, and gone back to full
        size.  Reads stay full size.
        """
        self.assertEqual(self._send(SMALL_READ, 1), [SMALL_READ])
        self.assertEqual(self._send(1000, 1), [1000])


class _Readable:
    """
    A descriptor that stays readable (a byte is waiting, never read), so a
    poll returns at once whatever its timeout.
    """

    def __init__(self):
        self.ends = socket.socketpair()
        self.ends[1].send(b"x")

    def fileno(self):
        return self.ends[0].fileno()

    def logPrefix(self):
        return "readable"

    def doRead(self):
        pass

    def close(self):
        for end in self.ends:
            end.close()


class MainLoopTimeoutTests(SynchronousTestCase):
    """
    L{PrimedReactor.mainLoop}'s turns poll as long as Twisted's would: until
    the next timer, never longer than epoll_wait's int of milliseconds takes,
    forever with no timer.
    """

    def setUp(self):
        self.reactor = PrimedReactor()
        self.addCleanup(self.reactor._poller.close)
        readable = _Readable()
        self.addCleanup(readable.close)
        self.reactor.addReader(readable)
        self.addCleanup(self.reactor.removeReader, readable)

    def _timeouts(self, turns):
        """
        Run C{turns} turns of the main loop, each polling for real: the
        timeouts they polled with.
        """
        reactor = self.reactor
        timeouts = []

        def doIteration(timeout):
            timeouts.append(timeout)
            if len(timeouts) == turns:
                reactor._started = False
            PrimedReactor.doPoll(reactor, timeout)

        reactor.doIteration = doIteration
        reactor._started = reactor.running = True
        # An error fails the test instead of being logged turn after turn.
        self.patch(primed.reactor, "_topHandler", contextlib.nullcontext())
        reactor.mainLoop()
        return timeouts

    def test_farTimerCapped(self):
        """
        A timer 30 days away (further than epoll_wait's 2 ** 31 ms) polls
        for Twisted's longest timeout, which epoll takes, on every turn:
        not an C{OverflowError} per turn.
        """
        self.reactor.callLater(30 * 86400, lambda: None)
        longest = 2147483  # ReactorBase.timeout's
        self.assertEqual(self._timeouts(3), [longest] * 3)

    def test_nearTimer(self):
        self.reactor.seconds = lambda: 1000.0  # the clock stands still
        self.reactor.callLater(5, lambda: None)
        self.assertEqual(self._timeouts(3), [5] * 3)

    def test_noTimer(self):
        self.assertEqual(self._timeouts(2), [None, None])

    def test_timersRunWhenDue(self):
        """
        A turn enters Twisted's timer handling (C{runUntilCurrent}, 10 000
        instructions) only when a timer may be due: for a new timer, and for
        the first one once its time has come (exactly), not before.  The
        clock only moves when the test moves it.
        """
        now = [1000.0]
        self.reactor.seconds = lambda: now[0]
        called = []
        self.reactor.callLater(0.5, called.append, "due")
        runs = []
        runUntilCurrent = self.reactor.runUntilCurrent
        self.reactor.runUntilCurrent = lambda: (runs.append(now[0]), runUntilCurrent())
        self.assertEqual(self._timeouts(3), [0.5] * 3)
        self.assertEqual((runs, called), ([1000.0], []))
        now[0] += 0.5
        self._timeouts(1)
        self.assertEqual((runs, called), ([1000.0, 1000.5], ["due"]))

    def test_cancelledTimersSwept(self):
        """
        Past 50 cancelled timers the turn lets Twisted sweep them, as its
        own main loop does: they do not stay in the heap (nor set the poll's
        timeout) until a timer is due.
        """
        calls = [self.reactor.callLater(100, lambda: None) for _ in range(51)]
        self.reactor.runUntilCurrent()  # they are in the heap now
        for call in calls:
            call.cancel()
        self.assertEqual(self._timeouts(1), [None])
        self.assertEqual(self.reactor._pendingTimedCalls, [])


@implementer(IHalfCloseableProtocol)
class _Notes(Protocol):
    """
    Notes what it is given and how its connection ends; a read of C{b"!"}
    raises L{ConnectionDone}, as a protocol's bug may.
    """

    def connectionMade(self):
        self.factory.connections.append(self)
        self.notes = []

    def dataReceived(self, data):
        self.notes.append(data)
        if data == b"!":
            raise ConnectionDone("from dataReceived")

    def readConnectionLost(self):
        self.notes.append("readConnectionLost")

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.notes.append(("connectionLost", reason.type))


class _MadeUpEvents:
    """
    A poller whose poll returns C{events}; the rest is C{poller}'s.
    """

    def __init__(self, poller, events):
        self._poller = poller
        self._events = events

    def poll(self, timeout, size):
        return self._events

    def __getattr__(self, name):
        return getattr(self._poller, name)


class ServerDispatchTests(SynchronousTestCase):
    """
    L{PrimedReactor.doPoll}'s inlined read of accepted TCP connections,
    against Twisted's dispatch: every ready connection of a poll is read, a
    read that would block is no end, an EOF is a half-close, and an
    exception from C{dataReceived} closes the connection whatever it is.
    Real sockets, a real poller, the reactor not run.
    """

    def setUp(self):
        self.reactor = PrimedReactor()
        factory = Factory.forProtocol(_Notes)
        factory.connections = []
        port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.clients = [socket.create_connection(("127.0.0.1", port.getHost().port))
                        for _ in range(2)]
        self.addCleanup(self._close)
        self._pollUntil(lambda: len(factory.connections) == 2)
        self.protocols = factory.connections
        self.protocols.sort(key=lambda p: p.transport.getPeer().port)
        self.clients.sort(key=lambda c: c.getsockname()[1])

    def _close(self):
        for client in self.clients:
            client.close()
        for selectable in self.reactor.removeAll():
            selectable.socket.close()
        self.reactor._poller.close()

    _pollUntil = ReadSizeTests._pollUntil

    def _readable(self, protocols):
        """
        Wait until the server side of each of C{protocols} is readable.
        """
        waiting = select.epoll()
        self.addCleanup(waiting.close)
        for p in protocols:
            waiting.register(p.transport.fileno(), select.EPOLLIN)
        deadline = time.monotonic() + 10
        while len(waiting.poll(0.1)) < len(protocols):
            self.assertLess(time.monotonic(), deadline, "nothing arrived")

    def test_allReadyReadInOnePoll(self):
        for client, data in zip(self.clients, [b"1\n", b"2\n"]):
            client.sendall(data)
        self._readable(self.protocols)
        self.reactor.doPoll(0)
        self.assertEqual([p.notes for p in self.protocols], [[b"1\n"], [b"2\n"]])

    def test_wouldBlock(self):
        """
        A read event whose read finds nothing (another reader got there
        first) leaves the connection as it was, and the rest of the batch
        is read.
        """
        quiet, busy = self.protocols
        self.clients[1].sendall(b"2\n")
        self._readable([busy])
        self._pollEvents(self.protocols)
        self.assertEqual((quiet.notes, busy.notes), ([], [b"2\n"]))
        self.assertFalse(quiet.transport.disconnected)

    def _pollEvents(self, protocols):
        """
        Poll once, with a plain read event for each of C{protocols}.
        """
        poller = self.reactor._poller
        self.reactor._poller = _MadeUpEvents(
            poller, [(p.transport.fileno(), select.EPOLLIN) for p in protocols])
        try:
            self.reactor.doPoll(0)
        finally:
            self.reactor._poller = poller

    def test_readFails(self):
        """
        A read that fails (the client reset the connection) loses the
        connection: no clean close, no half-close.  (epoll reports a reset
        as more than readable: a plain read event is made up here.)
        """
        protocol = self.protocols[0]
        self.clients[0].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.clients[0].close()  # a reset
        self._readable([protocol])
        self._pollEvents([protocol])
        self.assertEqual(protocol.notes, [("connectionLost", ConnectionLost)])

    def test_halfClose(self):
        """
        The client's EOF is a read-side close for a half-closeable protocol.
        """
        protocol = self.protocols[0]
        self.clients[0].shutdown(socket.SHUT_WR)
        self._pollUntil(lambda: protocol.notes)
        self.assertEqual(protocol.notes, ["readConnectionLost"])

    def test_dataReceivedRaises(self):
        """
        An exception from C{dataReceived}, even L{ConnectionDone}, is logged
        and closes the connection both ways, as Twisted's dispatch does (it
        is no read-side close).
        """
        protocol = self.protocols[0]
        self.clients[0].sendall(b"!")
        self._pollUntil(lambda: len(protocol.notes) > 1)
        self.assertEqual(protocol.notes, [b"!", ("connectionLost", ConnectionDone)])
        self.assertEqual(len(self.flushLoggedErrors(ConnectionDone)), 1)


# Last, so that a run stopping at its first failure (C{pytest -x}, as
# tests/mutate.py runs) tries the quick tests above first: a reactor broken
# in its poll makes these loop on logged errors until their timeout.
for _builder in [
    test_tcp.TCP4ClientTestsBuilder,
    test_tcp.TCP6ClientTestsBuilder,
    test_tcp.TCPPortTestsBuilder,
    test_tcp.TCPConnectionTestsBuilder,
    test_tcp.TCPTransportTestsBuilder,
    test_tcp.AbortConnectionTests,
    test_udp.UDPServerTestsBuilder,
    test_udp.UDPFDServerTestsBuilder,
    test_core.SystemEventTestsBuilder,
    test_time.TimeTestsBuilder,
    test_threads.ThreadTestsBuilder,
]:
    globals().update(_forPrimed(_builder))
del _builder
