"""
The client library and the command's logic, without a network: TCP over a
L{StringTransport}, UDP over a fake reactor, time from a L{task.Clock}.
"""

import os
import queue
import threading

from twisted.internet import defer, task
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial import unittest

from primed import client
from primed.client import (
    Options,
    PrimedClientProtocol,
    PrimedConnectionLost,
    PrimedProtocolError,
    PrimedRefused,
    PrimedTimeout,
    PrimedUDPClient,
)
from primed.wire import Verdict


class AbortingTransport(StringTransport):
    """
    A L{StringTransport} whose C{abortConnection} behaves like a real TCP
    transport's: it marks the transport disconnected but leaves
    C{disconnecting} False, so L{LineReceiver} would go on delivering the
    lines already received.
    """

    def abortConnection(self):
        self.disconnected = True
        self.aborted = True


def connected(timeout=None, clock=None, transport=None):
    protocol = PrimedClientProtocol(timeout, clock)
    if transport is None:
        transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def lose(protocol, transport):
    """
    Complete a disconnection the way a real transport would.
    """
    protocol.connectionLost(Failure(ConnectionDone()))


class TCPProtocolTests(unittest.TestCase):
    def test_pipelined(self):
        """
        Requests go out at once, without waiting for replies; the replies,
        in one segment, fire the Deferreds in request order.
        """
        protocol, transport = connected()
        ds = [protocol.check(n) for n in (17, "4", "4j", 2**50 - 1)]
        self.assertEqual(transport.value(), b"17\n4\n4j\n1125899906842623\n")
        fired = []
        for d in ds:
            d.addCallback(fired.append)
        protocol.dataReceived(b"T\nF\nE\nF\n")
        self.assertEqual(
            fired, [Verdict.PRIME, Verdict.NOT_PRIME, Verdict.INVALID, Verdict.NOT_PRIME]
        )

    def test_repliesByteByByte(self):
        protocol, transport = connected()
        ds = [protocol.check(n) for n in (2, 3, 4)]
        for byte in b"T\r\nT\nF\n":
            protocol.dataReceived(bytes([byte]))
        self.assertEqual(
            [self.successResultOf(d) for d in ds],
            [Verdict.PRIME, Verdict.PRIME, Verdict.NOT_PRIME],
        )

    def test_laterRequestWaitsForEarlier(self):
        protocol, transport = connected()
        first, second = protocol.check(4), protocol.check(5)
        protocol.dataReceived(b"F\n")
        self.assertEqual(self.successResultOf(first), Verdict.NOT_PRIME)
        self.assertNoResult(second)

    def test_multiLineTextRefused(self):
        """
        Text that would be two requests is refused before anything is sent:
        it would shift every later reply onto the wrong request.
        """
        protocol, transport = connected()
        self.assertRaises(ValueError, protocol.check, "1\n2")
        self.assertEqual(transport.value(), b"")

    def test_connectionLostFailsPending(self):
        protocol, transport = connected()
        ds = [protocol.check(n) for n in (2, 3, 4)]
        protocol.dataReceived(b"T\n")
        lose(protocol, transport)
        self.assertEqual(self.successResultOf(ds[0]), Verdict.PRIME)
        for d in ds[1:]:
            failure = self.failureResultOf(d, PrimedConnectionLost)
            self.assertIn("2 answers", str(failure.value))

    def test_checkAfterConnectionLost(self):
        protocol, transport = connected()
        lose(protocol, transport)
        self.failureResultOf(protocol.check(17), PrimedConnectionLost)
        self.assertEqual(transport.value(), b"")

    def test_unexpectedReply(self):
        """
        A reply that is not a verdict drops the connection and fails every
        pending request: later replies could not be trusted.
        """
        protocol, transport = connected(transport=AbortingTransport())
        ds = [protocol.check(n) for n in (2, 3)]
        protocol.dataReceived(b"HTTP/1.1 400 Bad Request\r\nT\n")
        self.assertTrue(transport.aborted)
        for d in ds:
            self.assertNoResult(d)
        lose(protocol, transport)
        for d in ds:
            self.failureResultOf(d, PrimedProtocolError)

    def test_repliesAfterErrorIgnored(self):
        """
        Replies already received behind a bad one are not matched to the
        pending requests: the connection is aborted, but a real transport
        leaves C{disconnecting} False, so only the protocol can refuse them.
        """
        protocol, transport = connected(transport=AbortingTransport())
        ds = [protocol.check(n) for n in (4, 9, 5)]
        protocol.dataReceived(b"X\nT\n")
        protocol.dataReceived(b"T\n" + b"T" * 1000)
        self.assertTrue(transport.aborted)
        lose(protocol, transport)
        for d in ds:
            failure = self.failureResultOf(d, PrimedProtocolError)
            self.assertIn("unexpected reply b'X'", str(failure.value))

    def test_replyToNoRequest(self):
        protocol, transport = connected(transport=AbortingTransport())
        protocol.dataReceived(b"T\nT\n")
        self.assertTrue(transport.aborted)
        d = protocol.check(2)
        protocol.dataReceived(b"T\n")
        self.assertNoResult(d)
        lose(protocol, transport)
        self.failureResultOf(d, PrimedProtocolError)

    def test_longReplyLine(self):
        protocol, transport = connected(transport=AbortingTransport())
        ds = [protocol.check(n) for n in (2, 3)]
        protocol.dataReceived(b"T" * 1000 + b"\nT\n")
        self.assertTrue(transport.aborted)
        lose(protocol, transport)
        for d in ds:
            self.failureResultOf(d, PrimedProtocolError)

    def test_cancelledRequestKeepsItsPlace(self):
        """
        Cancelling cannot unsend a request: its reply still arrives and must
        not be taken for the next request's.
        """
        protocol, transport = connected()
        first, second = protocol.check(4), protocol.check(5)
        first.cancel()
        self.failureResultOf(first, defer.CancelledError)
        protocol.dataReceived(b"F\nT\n")
        self.assertEqual(self.successResultOf(second), Verdict.PRIME)


class TCPTimeoutTests(unittest.TestCase):
    def test_needsClock(self):
        self.assertRaises(ValueError, PrimedClientProtocol, 5.0)

    def test_idleConnectionNeverTimesOut(self):
        clock = task.Clock()
        protocol, transport = connected(5.0, clock)
        clock.advance(60)
        self.assertFalse(transport.disconnected)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_silenceWhileOwed(self):
        clock = task.Clock()
        protocol, transport = connected(5.0, clock)
        d = protocol.check(17)
        clock.advance(4.9)
        self.assertFalse(transport.disconnected)
        clock.advance(0.1)
        self.assertTrue(transport.disconnected)
        lose(protocol, transport)
        self.failureResultOf(d, PrimedTimeout)

    def test_progressPostpones(self):
        """
        Each arriving reply restarts the count: a slow stream of answers is
        not a silent server.
        """
        clock = task.Clock()
        protocol, transport = connected(5.0, clock)
        ds = [protocol.check(n) for n in (2, 3, 4)]
        clock.advance(4)
        protocol.dataReceived(b"T\n")
        clock.advance(4)
        protocol.dataReceived(b"T\n")
        clock.advance(4)
        self.assertFalse(transport.disconnected)
        clock.advance(1)
        self.assertTrue(transport.disconnected)
        lose(protocol, transport)
        self.failureResultOf(ds[2], PrimedTimeout)

    def test_timerGoneAfterAnswers(self):
        clock = task.Clock()
        protocol, transport = connected(5.0, clock)
        protocol.check(2)
        protocol.dataReceived(b"T\n")
        clock.advance(5)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertFalse(transport.disconnected)

    def test_lossCancelsTimer(self):
        clock = task.Clock()
        protocol, transport = connected(5.0, clock)
        d = protocol.check(2)
        lose(protocol, transport)
        self.failureResultOf(d, PrimedConnectionLost)
        self.assertEqual(clock.getDelayedCalls(), [])


class FakeDatagramPort:
    """
    What C{listenUDP} returns and its protocol writes to: records the
    datagrams, the connected address and whether it was stopped.
    """

    def __init__(self, protocol):
        self.protocol = protocol
        self.written = []
        self.connectedTo = None
        self.stopped = False

    def connect(self, host, port):
        self.connectedTo = (host, port)

    def write(self, datagram, address=None):
        self.written.append(datagram)

    def stopListening(self):
        self.stopped = True
        self.protocol.doStop()

    def reply(self, datagram):
        self.protocol.datagramReceived(datagram, self.connectedTo)


class FakeUDPReactor(task.Clock):
    def __init__(self):
        super().__init__()
        self.ports = []
        self.resolved = []

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        assert port == 0
        fake = FakeDatagramPort(protocol)
        fake.interface = interface
        self.ports.append(fake)
        protocol.makeConnection(fake)
        return fake

    def resolve(self, name):
        self.resolved.append(name)
        return defer.succeed("127.0.0.2")


class UDPTests(unittest.TestCase):
    def setUp(self):
        self.reactor = FakeUDPReactor()
        self.client = PrimedUDPClient(self.reactor, "127.0.0.1", 8808, timeout=1.0, retries=2)

    def test_oneConnectedSocketPerRequest(self):
        self.client.check(17)
        self.client.check("4j")
        [first, second] = self.reactor.ports
        self.assertEqual(first.connectedTo, ("127.0.0.1", 8808))
        self.assertEqual(first.written, [b"17\n"])
        self.assertEqual(second.written, [b"4j\n"])

    def test_answerClosesSocket(self):
        d = self.client.check(17)
        [port] = self.reactor.ports
        port.reply(b"T\n")
        self.assertEqual(self.successResultOf(d), Verdict.PRIME)
        self.assertTrue(port.stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_retry(self):
        d = self.client.check(17)
        [port] = self.reactor.ports
        self.reactor.advance(0.99)
        self.assertEqual(port.written, [b"17\n"])
        self.reactor.advance(0.01)
        self.assertEqual(port.written, [b"17\n", b"17\n"])
        port.reply(b"T")
        self.assertEqual(self.successResultOf(d), Verdict.PRIME)

    def test_timeoutAfterRetries(self):
        d = self.client.check(17)
        [port] = self.reactor.ports
        self.reactor.pump([1.0] * 2)
        self.assertNoResult(d)
        self.reactor.advance(1.0)
        failure = self.failureResultOf(d, PrimedTimeout)
        self.assertIn("3 attempts", str(failure.value))
        self.assertEqual(port.written, [b"17\n"] * 3)
        self.assertTrue(port.stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_noRetries(self):
        self.client.retries = 0
        d = self.client.check(17)
        self.reactor.advance(1.0)
        self.failureResultOf(d, PrimedTimeout)
        self.assertEqual(self.reactor.ports[0].written, [b"17\n"])

    def test_reordered(self):
        """
        Replies arriving in the reverse order still answer their own
        requests: each arrives on its request's socket.
        """
        first, second = self.client.check(17), self.client.check(18)
        self.reactor.ports[1].reply(b"F\n")
        self.reactor.ports[0].reply(b"T\n")
        self.assertEqual(self.successResultOf(first), Verdict.PRIME)
        self.assertEqual(self.successResultOf(second), Verdict.NOT_PRIME)

    def test_lateDuplicateIgnored(self):
        """
        After a retry both replies may arrive; the second is dropped.
        """
        d = self.client.check(17)
        self.reactor.advance(1.0)
        port = self.reactor.ports[0]
        port.reply(b"T\n")
        port.protocol.datagramReceived(b"T\n", ("127.0.0.1", 8808))
        self.assertEqual(self.successResultOf(d), Verdict.PRIME)

    def test_garbageIgnored(self):
        d = self.client.check(17)
        self.reactor.ports[0].reply(b"hello")
        self.assertNoResult(d)
        self.reactor.ports[0].reply(b"T\n")
        self.assertEqual(self.successResultOf(d), Verdict.PRIME)

    def test_refused(self):
        d = self.client.check(17)
        self.reactor.ports[0].protocol.connectionRefused()
        self.failureResultOf(d, PrimedRefused)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_portLostIsRefused(self):
        """
        The epoll reactor reports ICMP port unreachable by dropping the
        port; the request fails at once instead of retrying on nothing.
        """
        d = self.client.check(17)
        self.reactor.ports[0].protocol.doStop()
        self.failureResultOf(d, PrimedRefused)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_tooLongIsInvalid(self):
        """
        A request too long for a datagram is invalid, as primed answers over
        TCP (E for an over-long line), at once and leaving no socket or
        timer behind.
        """
        from twisted.internet.error import MessageLengthError

        def write(datagram, address=None):
            raise MessageLengthError("message too long")

        self.reactor.listenUDP = self._wrapListen(write)
        d = self.client.check("9" * 70000)
        self.assertEqual(self.successResultOf(d), Verdict.INVALID)
        self.assertTrue(self.reactor.ports[0].stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_tooLongOSErrorIsInvalid(self):
        """
        The same when the socket raises a bare C{EMSGSIZE}.
        """
        import errno

        def write(datagram, address=None):
            raise OSError(errno.EMSGSIZE, "Message too long")

        self.reactor.listenUDP = self._wrapListen(write)
        d = self.client.check("9" * 70000)
        self.assertEqual(self.successResultOf(d), Verdict.INVALID)

    def test_writeFails(self):
        """
        A request the socket refuses to send for another reason fails at
        once and leaves no socket or timer behind.
        """
        import errno

        def write(datagram, address=None):
            raise OSError(errno.ENETUNREACH, "Network is unreachable")

        self.reactor.listenUDP = self._wrapListen(write)
        d = self.client.check(17)
        self.failureResultOf(d, OSError)
        self.assertTrue(self.reactor.ports[0].stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def _wrapListen(self, write):
        listen = FakeUDPReactor.listenUDP.__get__(self.reactor)

        def listenUDP(*args, **kwargs):
            port = listen(*args, **kwargs)
            port.write = write
            return port

        return listenUDP

    def test_cancel(self):
        d = self.client.check(17)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertTrue(self.reactor.ports[0].stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_hostnameResolvedOnce(self):
        client_ = PrimedUDPClient(self.reactor, "primed.example", 8808)
        client_.check(2)
        client_.check(3)
        self.assertEqual(self.reactor.resolved, ["primed.example"])
        self.assertEqual(self.reactor.ports[1].connectedTo, ("127.0.0.2", 8808))

    def test_IPv6(self):
        PrimedUDPClient(self.reactor, "::1", 8808).check(2)
        self.assertEqual(self.reactor.ports[0].interface, "::")

    def test_multiLineTextRefused(self):
        self.assertRaises(ValueError, self.client.check, "1\n2")
        self.assertEqual(self.reactor.ports, [])


class RunTests(unittest.TestCase):
    """
    L{client._Run}: bounded in flight, printed in input order.
    """

    def setUp(self):
        self.pending = {}
        self.printed = []
        self.flushes = 0
        self.wanted = 0

    def send(self, text, receiver):
        self.pending[text] = receiver

    def flush(self):
        self.flushes += 1

    def want(self):
        self.wanted += 1

    def run_(self, window=2):
        return client._Run(
            self.send, window, lambda t, v: self.printed.append((t, v)), self.flush, self.want
        )

    def test_windowAndOrder(self):
        run = self.run_()
        run.feed([b"2", b"3", b"4"])
        run.end()
        self.assertEqual(sorted(self.pending), ["2", "3"])
        self.pending["3"].callback(Verdict.PRIME)
        self.assertEqual(self.printed, [])
        self.assertEqual(sorted(self.pending), ["2", "3", "4"])
        self.pending["2"].callback(Verdict.PRIME)
        self.assertEqual(self.printed, [(b"2", Verdict.PRIME), (b"3", Verdict.PRIME)])
        self.assertNoResult(run.finished)
        self.pending["4"].callback(Verdict.NOT_PRIME)
        self.assertEqual(self.printed[-1], (b"4", Verdict.NOT_PRIME))
        self.successResultOf(run.finished)
        self.assertTrue(self.flushes)

    def test_synchronousAnswers(self):
        """
        A check that answers at once (a cached or local verdict) neither
        recurses nor stalls.
        """
        run = client._Run(
            lambda t, r: r.callback(Verdict.PRIME), 2, lambda t, v: self.printed.append(t),
            self.flush,
        )
        run.feed([b"%d" % i for i in range(5000)])
        run.end()
        self.successResultOf(run.finished)
        self.assertEqual(len(self.printed), 5000)

    def test_multiLineIsInvalid(self):
        def send(text, receiver):
            client._request(text)
            receiver.callback(Verdict.PRIME)

        run = client._Run(send, 2, lambda t, v: self.printed.append((t, v)), self.flush)
        run.feed([b"1\n2", b"3"])
        run.end()
        self.assertEqual(self.printed, [(b"1\n2", Verdict.INVALID), (b"3", Verdict.PRIME)])

    def test_firstFailureStops(self):
        """
        The output stays a prefix of the inputs: answers after a failure
        are not printed and nothing more is sent.
        """
        run = self.run_(window=3)
        run.feed([b"2", b"3", b"4", b"5"])
        run.end()
        self.pending["2"].callback(Verdict.PRIME)
        self.pending["4"].callback(Verdict.NOT_PRIME)
        self.pending["3"].errback(PrimedTimeout("no reply"))
        self.failureResultOf(run.finished, PrimedTimeout)
        self.pending["5"].callback(Verdict.PRIME)
        run.feed([b"6"])
        self.assertNotIn("6", self.pending)
        self.assertEqual(self.printed, [(b"2", Verdict.PRIME)])

    def test_laterFailureWaitsForEarlier(self):
        """
        Over UDP answers come out of order: a later input failing first
        stops the sending at once, but the run ends only when every earlier
        input is printed, so the output stops at the first unanswered input.
        """
        run = self.run_(window=3)
        run.feed([b"2", b"3", b"4", b"5", b"6"])
        run.end()
        self.pending["3"].callback(Verdict.PRIME)
        self.pending["4"].errback(PrimedTimeout("no reply"))
        self.pending["5"].callback(Verdict.PRIME)
        self.assertNoResult(run.finished)
        self.assertNotIn("6", self.pending)
        self.assertEqual(self.printed, [])
        self.pending["2"].callback(Verdict.PRIME)
        self.failureResultOf(run.finished, PrimedTimeout)
        self.assertEqual(self.printed, [(b"2", Verdict.PRIME), (b"3", Verdict.PRIME)])
        self.assertNotIn("6", self.pending)

    def test_firstOfSeveralFailuresWins(self):
        run = self.run_(window=3)
        run.feed([b"2", b"3", b"4"])
        run.end()
        self.pending["4"].errback(PrimedTimeout("no reply"))
        self.pending["3"].errback(PrimedRefused("port unreachable"))
        self.pending["2"].callback(Verdict.PRIME)
        self.failureResultOf(run.finished, PrimedRefused)
        self.assertEqual(self.printed, [(b"2", Verdict.PRIME)])

    def test_udpOutOfOrder(self):
        """
        The command's UDP path on the fake reactor: a too-long input is
        invalid, a refused later input does not hide the earlier answers
        that arrive after it.
        """
        from twisted.internet.error import MessageLengthError

        reactor = FakeUDPReactor()
        udp = PrimedUDPClient(reactor, "127.0.0.1", 8808, timeout=1.0, retries=0)
        listen = FakeUDPReactor.listenUDP.__get__(reactor)

        def listenUDP(*args, **kwargs):
            port = listen(*args, **kwargs)
            original = port.write

            def write(datagram, address=None):
                if len(datagram) > 65507:
                    raise MessageLengthError("message too long")
                original(datagram, address)

            port.write = write
            return port

        reactor.listenUDP = listenUDP

        def send(text, receiver):
            udp.check(text).addCallbacks(receiver.callback, receiver.errback)

        run = client._Run(send, 64, lambda t, v: self.printed.append((t, v)), self.flush)
        big = b"1" * 70000
        run.feed([b"17", big, b"19", b"20", b"21"])
        run.end()
        # Ports: 17, big (closed at once), 19, 20, 21.
        ports = reactor.ports
        self.assertEqual(len(ports), 5)
        ports[4].protocol.connectionRefused()
        ports[3].reply(b"F\n")
        ports[2].reply(b"T\n")
        self.assertNoResult(run.finished)
        ports[0].reply(b"T\n")
        self.failureResultOf(run.finished, PrimedRefused)
        self.assertEqual(
            self.printed,
            [
                (b"17", Verdict.PRIME),
                (big, Verdict.INVALID),
                (b"19", Verdict.PRIME),
                (b"20", Verdict.NOT_PRIME),
            ],
        )
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_overLongIsInvalid(self):
        """
        An over-long stdin line is answered invalid without being sent.
        """
        run = self.run_()
        marker = client._overLong(b"9" * 100)
        run.feed([marker, b"2"])
        run.end()
        self.assertEqual(sorted(self.pending), ["2"])
        self.pending["2"].callback(Verdict.PRIME)
        self.assertEqual(self.printed, [(marker, Verdict.INVALID), (b"2", Verdict.PRIME)])
        self.successResultOf(run.finished)

    def test_failingFlushFailsOnce(self):
        """
        A flush that itself fails the run (standard output gone) while the
        run is failing for another reason: L{_Run.finished} fails once, with
        the output's error, and nothing raises.
        """
        broken = []

        def flush():
            # As _Output.flush: the first failure only.
            if not broken:
                broken.append(True)
                run.fail(Failure(OSError(28, "No space left on device")))

        run = client._Run(self.send, 2, lambda t, v: None, flush)
        run.feed([b"2"])
        run.fail(Failure(PrimedTimeout("no reply")))
        self.failureResultOf(run.finished, OSError)

    def test_failingFlushAtEnd(self):
        """
        The last flush failing the run: L{_Run.finished} fails, and is not
        then called back as if everything had been printed.
        """
        broken = []

        def flush():
            # As _Output.flush: the first failure only.
            if not broken:
                broken.append(True)
                run.fail(Failure(OSError(28, "No space left on device")))

        run = client._Run(self.send, 2, lambda t, v: None, flush)
        run.end()
        self.failureResultOf(run.finished, OSError)

    def test_asksForInputWhenLow(self):
        run = self.run_()
        run.feed([])
        self.assertEqual(self.wanted, 1)
        run.feed([])
        self.assertEqual(self.wanted, 2)
        run.feed([b"2", b"3", b"4", b"5"])
        # Queue at 2, window 2: enough waiting, nothing asked.
        self.assertEqual(self.wanted, 2)

    def test_noInputEnds(self):
        run = self.run_()
        run.end()
        self.successResultOf(run.finished)
        self.assertEqual(self.printed, [])


class StdinReaderTests(unittest.TestCase):
    """
    L{client._StdinReader} on a pipe, its reactor calls collected in a queue
    (bounded waits throughout).
    """

    def read(self, data, chunk=None, maxLine=None):
        readFd, writeFd = os.pipe()
        self.addCleanup(os.close, readFd)
        calls = queue.Queue()

        class Reactor:
            def callFromThread(self, f, *args):
                calls.put((f, args))

        lines, ended, failed = [], [], []
        reader = client._StdinReader(
            Reactor(), readFd, lines.extend, lambda: ended.append(True), failed.append
        )
        if chunk:
            reader.CHUNK = chunk
        if maxLine:
            reader.MAX_LINE = maxLine
        self.reader = reader

        # A thread, as data may be more than the pipe holds.
        def write():
            with os.fdopen(writeFd, "wb") as w:
                w.write(data)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        reader.start()
        for _ in range(10000):
            reader.more()
            f, args = calls.get(timeout=10)
            f(*args)
            if ended or failed:
                break
        writer.join(10)
        self.assertFalse(writer.is_alive())
        return lines, ended, failed

    def test_lines(self):
        lines, ended, failed = self.read(b"17\r\n\n  5 \n1_000\n18", chunk=3)
        self.assertEqual(lines, [b"17", b"", b"  5 ", b"1_000", b"18"])
        self.assertEqual(ended, [True])

    def test_empty(self):
        self.assertEqual(self.read(b""), ([], [True], []))

    def test_longLine(self):
        """
        An 8 MiB line on a real pipe: read in chunks, at most MAX_LINE of it
        kept, passed on as an over-long marker echoing its start; the lines
        around it are untouched.
        """
        long = b"12345" * ((8 << 20) // 5)
        lines, ended, failed = self.read(b"2\n" + long + b"\n3\n" + long)
        ellipsis = "\N{HORIZONTAL ELLIPSIS}".encode()
        self.assertEqual(lines, [b"2", long[:40] + ellipsis, b"3", long[:40] + ellipsis])
        self.assertIs(type(lines[1]), client._OverLong)
        self.assertIs(type(lines[3]), client._OverLong)
        self.assertEqual((ended, failed), ([True], []))
        self.assertLessEqual(self.reader.partialHigh, client._StdinReader.MAX_LINE)
        self.assertGreater(self.reader.partialHigh, client._StdinReader.MAX_LINE // 2)

    def test_lineAtTheLimit(self):
        """
        A line of exactly MAX_LINE bytes, over several chunks, is a line; one
        byte more is over-long, whatever the chunks.
        """
        lines, ended, failed = self.read(
            b"1234567890\n12345678901\n1\n12345678901", chunk=3, maxLine=10
        )
        ellipsis = "\N{HORIZONTAL ELLIPSIS}".encode()
        self.assertEqual(
            lines, [b"1234567890", b"12345678901" + ellipsis, b"1", b"12345678901" + ellipsis]
        )
        self.assertEqual(self.reader.partialHigh, 10)

    def test_longLineInOneChunk(self):
        lines, ended, failed = self.read(b"1234567890123\n5\n", chunk=100, maxLine=10)
        self.assertEqual(lines, [b"1234567890123" + "\N{HORIZONTAL ELLIPSIS}".encode(), b"5"])

    def test_readError(self):
        calls = queue.Queue()

        class Reactor:
            def callFromThread(self, f, *args):
                calls.put((f, args))

        failed = []
        readFd, writeFd = os.pipe()
        os.close(readFd)
        os.close(writeFd)
        reader = client._StdinReader(Reactor(), readFd, None, None, failed.append)
        reader.start()
        reader.more()
        f, args = calls.get(timeout=10)
        f(*args)
        self.assertIn("standard input", str(failed[0].value))


class OptionsTests(unittest.TestCase):
    def parse(self, *argv):
        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_defaults(self):
        options = self.parse("17")
        self.assertEqual(options["host"], "127.0.0.1")
        self.assertEqual(options["port"], 8809)
        self.assertEqual(options["timeout"], client.DEFAULT_TCP_TIMEOUT)
        self.assertEqual(options["numbers"], ["17"])
        self.assertEqual(options.where(), "127.0.0.1:8809")

    def test_udpDefaults(self):
        options = self.parse("--udp")
        self.assertEqual(options["port"], 8808)
        self.assertEqual(options["timeout"], client.DEFAULT_UDP_TIMEOUT)
        self.assertEqual(options["retries"], client.DEFAULT_RETRIES)
        self.assertEqual(options["numbers"], [])

    def test_explicit(self):
        options = self.parse("-u", "-H", "::1", "-p", "9", "-t", "0.5", "-n", "0", "-r", "4")
        self.assertEqual(
            (options["port"], options["timeout"], options["retries"], options["raw"]),
            (9, 0.5, 0, True),
        )
        self.assertEqual(options.where(), "[::1]:9")

    def test_negativeNumbers(self):
        self.assertEqual(self.parse("-5", "17")["numbers"], ["-5", "17"])
        self.assertEqual(self.parse("--raw", "-5")["numbers"], ["-5"])
        self.assertEqual(self.parse("-p", "9", "-5")["numbers"], ["-5"])
        self.assertEqual(self.parse("--", "-5")["numbers"], ["-5"])

    def test_negativeNumbersAfterClusters(self):
        """
        A cluster of short options ending in one that takes a value takes
        the next argument; one holding its value does not.
        """
        options = self.parse("-up", "8808", "-5")
        self.assertEqual((options["udp"], options["port"]), (True, 8808))
        self.assertEqual(options["numbers"], ["-5"])
        options = self.parse("-rt", "2", "-5", "7")
        self.assertEqual((options["raw"], options["timeout"]), (True, 2.0))
        self.assertEqual(options["numbers"], ["-5", "7"])
        options = self.parse("-up8808", "-5")
        self.assertEqual((options["port"], options["numbers"]), (8808, ["-5"]))
        options = self.parse("-p9", "-5")
        self.assertEqual((options["port"], options["numbers"]), (9, ["-5"]))
        options = self.parse("--port=9", "-ur", "-5")
        self.assertEqual((options["port"], options["numbers"]), (9, ["-5"]))
        options = self.parse("-urp", "9", "-5")
        self.assertEqual((options["raw"], options["port"], options["numbers"]), (True, 9, ["-5"]))

    def test_endpoint(self):
        options = self.parse("--endpoint", "unix:path=/run/primed", "2")
        self.assertEqual(options.where(), "unix:path=/run/primed")

    def test_usageErrors(self):
        for argv in (
            ["--port", "x"],
            ["--port", "0"],
            ["--port", "65536"],
            ["--port", "-5"],
            ["--timeout", "0"],
            ["--timeout", "nan"],
            ["--timeout", "inf"],
            ["--retries", "-1"],
            ["--bogus"],
            ["--udp", "--endpoint", "tcp:localhost:1"],
            ["--endpoint", "tcp:localhost:1", "--port", "2"],
            ["--endpoint", "nonsense:1"],
            ["--endpoint", "tcp:host=localhost:port=x"],
        ):
            self.assertRaises(usage.UsageError, self.parse, *argv)


class RealServiceTests(unittest.TestCase):
    """
    The client APIs against a real primed service, in this process, on
    ephemeral loopback ports.
    """

    def setUp(self):
        from twisted.internet import reactor

        from primed import tap

        self.reactor = reactor
        config = tap.Options()
        config.parseOptions(
            ["--listen", "tcp:0:interface=127.0.0.1", "--udp", "127.0.0.1:0", "--threads", "1"]
        )
        top = tap.makeService(config, reactor)
        self.service = top.getServiceNamed("primed")
        top.startService()
        self.addCleanup(top.stopService)
        self.tcpPort = self.service.tcpPorts[0].getHost().port
        self.udpPort = self.service.udpPorts[0].getHost().port

    async def connect(self):
        protocol = await client.connect(
            self.reactor, f"tcp:host=127.0.0.1:port={self.tcpPort}", timeout=30
        )
        self.addCleanup(protocol.transport.loseConnection)
        return protocol

    async def test_seedValuesPipelined(self):
        from support import SEED_REPLIES, SEED_VALUES

        protocol = await self.connect()
        verdicts = await defer.gatherResults([protocol.check(v) for v in SEED_VALUES])
        self.assertEqual([v.reply for v in verdicts], SEED_REPLIES)

    async def test_orderWithBigAndSmall(self):
        """
        A big prime (checked in the service's pool) ahead of small numbers:
        the answers still come back in request order.
        """
        import gmpy2

        big = int(gmpy2.next_prime(10**1000))
        numbers = [big, 4, 5, big + 2, 7, -1, 2] * 5
        protocol = await self.connect()
        verdicts = await defer.gatherResults([protocol.check(n) for n in numbers])
        expected = [Verdict.PRIME if n > 1 and gmpy2.is_prime(n) else Verdict.NOT_PRIME
                    for n in numbers]
        self.assertEqual(verdicts, expected)

    async def test_udpSeedValues(self):
        from support import SEED_REPLIES, SEED_VALUES

        udp = PrimedUDPClient(self.reactor, "127.0.0.1", self.udpPort, timeout=2.0)
        verdicts = await defer.gatherResults([udp.check(v) for v in SEED_VALUES])
        self.assertEqual([v.reply for v in verdicts], SEED_REPLIES)

    async def test_udpRefused(self):
        """
        Nothing listening on a loopback UDP port: the request fails with
        L{PrimedRefused}, which only the ICMP port unreachable can produce;
        its single attempt, were it left to time out, would fail with
        L{PrimedTimeout} instead.
        """
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        udp = PrimedUDPClient(self.reactor, "127.0.0.1", port, timeout=30.0, retries=0)
        with self.assertRaises(PrimedRefused):
            await udp.check(17)


class RunCommandTests(unittest.TestCase):
    """
    L{client.run}, the command after option parsing, over the fake UDP
    reactor: no sockets, no clock but L{task.Clock}.
    """

    def run_(self, *argv):
        import io

        options = Options()
        options.parseOptions(["--udp", "--timeout", "1", "--retries", "1", *argv])
        self.reactor = FakeUDPReactor()
        self.stdout, self.stderr = io.BytesIO(), io.StringIO()
        return defer.ensureDeferred(
            client.run(self.reactor, options, None, self.stdout, self.stderr)
        )

    def test_answersInInputOrder(self):
        d = self.run_("17", "4j", "18")
        for port, reply in reversed(list(zip(self.reactor.ports, [b"T\n", b"E\n", b"F\n"]))):
            port.reply(reply)
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(self.stdout.getvalue(), b"17\tprime\n4j\tinvalid\n18\tnot prime\n")
        self.assertEqual(self.stderr.getvalue(), "")

    def test_raw(self):
        d = self.run_("--raw", "17")
        self.reactor.ports[0].reply(b"T\n")
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(self.stdout.getvalue(), b"T\n")

    def test_timeoutPrintsPrefix(self):
        """
        The first unanswered input ends the run: what came before it is
        printed, then one line on standard error, and the status is 1.
        """
        d = self.run_("2", "3", "4")
        self.reactor.ports[0].reply(b"T\n")
        self.reactor.ports[2].reply(b"F\n")
        self.reactor.pump([1.0, 1.0])
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(self.stdout.getvalue(), b"2\tprime\n")
        self.assertEqual(
            self.stderr.getvalue(),
            "primed-client: 127.0.0.1:8808: no reply after 2 attempts of 1 s each\n",
        )


class ReceiverTests(unittest.TestCase):
    def test_requestWithoutDeferred(self):
        """
        L{PrimedClientProtocol.request} hands the answer to any object with
        C{callback} and C{errback}.
        """
        protocol, transport = connected()

        class Receiver:
            def __init__(self):
                self.got = []
                self.callback = self.errback = self.got.append

        first, second = Receiver(), Receiver()
        protocol.request(2, first)
        protocol.request(3, second)
        protocol.dataReceived(b"T\n")
        lose(protocol, transport)
        self.assertEqual(first.got, [Verdict.PRIME])
        [failure] = second.got
        self.assertIsInstance(failure.value, PrimedConnectionLost)


class ReconnectingTests(unittest.TestCase):
    """
    L{client._Reconnecting}: the command's TCP sender outlives primed's idle
    timeout.
    """

    def setUp(self):
        self.first, self.firstTransport = connected()
        self.connecting = []
        self.sender = client._Reconnecting(self.connect, self.first)
        self.got = []

    def connect(self):
        d = defer.Deferred()
        self.connecting.append(d)
        return d

    def receiver(self):
        got = []
        self.got.append(got)
        return type("Receiver", (), {"callback": got.append, "errback": got.append})

    def test_sameConnectionWhileOpen(self):
        self.sender.request(2, self.receiver())
        self.assertEqual(self.firstTransport.value(), b"2\n")
        self.assertEqual(self.connecting, [])

    def test_reconnectAfterIdleClose(self):
        lose(self.first, self.firstTransport)
        self.assertTrue(self.first.lostIdle)
        self.sender.request(2, self.receiver())
        self.sender.request(3, self.receiver())
        [d] = self.connecting
        second, transport = connected()
        d.callback(second)
        self.assertEqual(transport.value(), b"2\n3\n")
        second.dataReceived(b"T\nT\n")
        self.assertEqual(self.got, [[Verdict.PRIME], [Verdict.PRIME]])
        self.assertIs(self.sender.protocol, second)

    def test_noReconnectAfterLosingAnswers(self):
        """
        A connection that closed owing answers ends the run: the next
        request fails at once.
        """
        self.sender.request(2, self.receiver())
        lose(self.first, self.firstTransport)
        self.assertFalse(self.first.lostIdle)
        self.sender.request(3, self.receiver())
        self.assertEqual(self.connecting, [])
        self.assertIsInstance(self.got[1][0].value, PrimedConnectionLost)

    def test_reconnectFails(self):
        lose(self.first, self.firstTransport)
        self.sender.request(2, self.receiver())
        self.connecting[0].errback(ConnectionRefusedError())
        self.assertIsInstance(self.got[0][0].value, ConnectionRefusedError)

    def test_multiLineRefusedWhileReconnecting(self):
        lose(self.first, self.firstTransport)
        self.assertRaises(ValueError, self.sender.request, "1\n2", self.receiver())
        self.assertEqual(self.connecting, [])
