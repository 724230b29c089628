"""
Tests for L{primed.udp.PrimeDatagramProtocol.readDatagrams}, the read loop
primed's UDP protocol runs on a L{primed.reactor.DatagramPort}: on real
loopback sockets, its replies and counters against those of
C{datagramReceived} (the reference) for the same datagrams.
"""

import select
import socket

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from fakes import HandDrivenPool, SynchronousPool, makeChecker, makeDatagramProtocol
from primed.reactor import DatagramPort, PrimedReactor
from primed.udp import PrimeDatagramProtocol, receiveBufferSize
from primed import wire

from test_udp import BIG_PRIME, captureLog, logged

#: Datagrams of every kind: the loop's own (digits, a trailing \n or not)
#: and those it leaves to datagramReceived.
MIXED = [
    b"17", b"18\n", b"0", b"1\n", b"2", b"000000000000000000000000000000000000000000000000000007",
    b"18446744073709551557\n", b"18446744073709551556", b"", b"\n", b"-7", b"+7", b" 7",
    b"7 \r\n", b"7\r\n", b"17\n18\n", b"4j", b"1" * 5000, b"%d" % BIG_PRIME, b"\xd9\xa3",
    b"7\n\n",
]


class ReadDatagramsTests(SynchronousTestCase):
    """
    The protocol on a real L{DatagramPort} of a L{PrimedReactor} that never
    runs: each test queues datagrams, then calls C{doRead} as the reactor
    would.
    """

    def setUp(self):
        self.pool = SynchronousPool()
        self.protocol = self.listen(PrimeDatagramProtocol(
            makeChecker(self.pool), None,
        ))

    def listen(self, protocol, interface="127.0.0.1", family=socket.AF_INET):
        reactor = PrimedReactor()
        self.port = reactor.listenUDP(
            0, protocol, interface=interface,
            maxPacketSize=receiveBufferSize(wire.DEFAULT_MAX_DIGITS),
        )
        self.addCleanup(self.stop, self.port)
        self.assertIsInstance(self.port, DatagramPort)
        self.client = socket.socket(family, socket.SOCK_DGRAM)
        self.addCleanup(self.client.close)
        self.client.connect((interface, self.port.getHost().port))
        self.client.settimeout(5)
        return protocol

    def stop(self, port):
        if "socket" in vars(port):  # connectionLost deletes it
            port.connectionLost()

    def queue(self, datagrams):
        for datagram in datagrams:
            self.client.send(datagram)
        waiting = select.epoll()
        self.addCleanup(waiting.close)
        waiting.register(self.port.fileno(), select.EPOLLIN)
        if datagrams:
            self.assertTrue(waiting.poll(5))

    def replies(self, count):
        return [self.client.recv(64) for _ in range(count)]

    def noMoreReplies(self):
        self.client.setblocking(False)
        self.assertRaises(BlockingIOError, self.client.recv, 64)

    def reference(self, datagrams, **options):
        """
        The replies and counters of C{datagramReceived} for C{datagrams}.
        """
        protocol, transport = makeDatagramProtocol(makeChecker(SynchronousPool()), **options)
        for datagram in datagrams:
            protocol.datagramReceived(datagram, ("127.0.0.1", 1))
        return [data for data, addr in transport.written], protocol.counters.snapshot()

    def test_sameAnswersAsDatagramReceived(self):
        """
        Every kind of datagram gets the reply, in the order, and is counted
        as C{datagramReceived} would; the loop answers a queue at once
        whether it is peeked or drained.
        """
        for datagrams in [MIXED[:1], MIXED[:3], MIXED]:
            self.queue(datagrams)
            self.port.doRead()
            expected, counts = self.reference(datagrams)
            self.assertEqual(self.replies(len(expected)), expected)
            self.noMoreReplies()
            self.client.setblocking(True)
        # Counted three times over: the three rounds above.
        _, once = self.reference(MIXED)
        _, first = self.reference(MIXED[:1])
        _, firstThree = self.reference(MIXED[:3])
        total = {k: once[k] + first[k] + firstThree[k] for k in once}
        self.assertEqual(self.protocol.counters.snapshot(), total)

    def test_smallMaxDigits(self):
        """
        With C{--max-digits} below the inline bound, longer digit strings
        are left to C{datagramReceived}, which refuses them (leading zeros
        do not count).
        """
        self.stop(self.port)
        protocol = self.listen(PrimeDatagramProtocol(
            makeChecker(SynchronousPool()), None, maxDigits=10,
        ))
        self.assertEqual(protocol._inlineDigits, 10)
        datagrams = [b"1000000007", b"10000000019\n", b"00001000000007", b"9" * 11]
        self.queue(datagrams)
        self.port.doRead()
        expected, counts = self.reference(datagrams, maxDigits=10)
        self.assertEqual(expected, [b"T\n", b"E\n", b"T\n", b"E\n"])
        self.assertEqual(self.replies(4), expected)
        self.assertEqual(protocol.counters.snapshot(), counts)

    def test_answeredInline(self):
        """
        Digits go no further than the loop: C{datagramReceived} is not called
        for them, and is for anything else.
        """
        delivered = []
        self.protocol.datagramReceived = lambda data, addr: delivered.append(data)
        self.queue([b"17", b"18\n", b"-7", b"%d" % BIG_PRIME])
        self.port.doRead()
        self.assertEqual(self.replies(2), [b"T\n", b"F\n"])
        self.assertEqual(delivered, [b"-7", b"%d" % BIG_PRIME])
        self.assertEqual({type(data) for data in delivered}, {bytes})

    def test_cutDatagramAnsweredE(self):
        """
        A datagram longer than the port's read is cut by the kernel and
        answered C{E}, even when what is left is digits; a long one that
        fits is read whole.
        """
        size = self.port.maxPacketSize
        self.queue([b"0" * (size + 100) + b"17", b"0" * 4000 + b"17\n"])
        self.port.doRead()
        self.assertEqual(self.replies(2), [b"E\n", b"T\n"])

    def test_inlineDigitsBound(self):
        """
        Digit strings up to C{_inlineDigits} long are below 2**inlineMaxBits:
        checked inline without C{bit_length}; longer ones go through
        C{datagramReceived}, which sends those above the bound to the pool.
        """
        bits = self.protocol._inlineMaxBits
        digits = self.protocol._inlineDigits
        self.assertLess(10**digits, 2**bits)
        self.assertGreaterEqual(10 ** (digits + 1), 2**bits)
        delivered = []
        received = self.protocol.datagramReceived

        def spy(data, addr):
            delivered.append(data)
            received(data, addr)

        self.protocol.datagramReceived = spy
        below = b"9" * digits
        above = b"%d" % (2**bits + 1)
        self.queue([below, above])
        self.port.doRead()
        self.assertEqual(delivered, [above])
        self.assertEqual(self.replies(2), [b"F\n", b"F\n"])

    def test_poolAnswerArrivesLater(self):
        protocol = PrimeDatagramProtocol(makeChecker(HandDrivenPool()), None)
        self.stop(self.port)
        self.listen(protocol)
        pool = protocol.checker.threadpool
        self.queue([b"%d" % BIG_PRIME, b"17"])
        self.port.doRead()
        self.assertEqual(self.replies(1), [b"T\n"])  # 17's
        pool.run()
        self.assertEqual(self.replies(1), [b"T\n"])

    def test_verboseLeavesItToThePort(self):
        """
        With C{--verbose} every reply is logged: the loop declines and the
        port delivers each datagram to C{datagramReceived}.
        """
        self.protocol.verbose = True
        events = captureLog(self)
        self.queue([b"17", b"18"])
        self.port.doRead()
        self.assertEqual(self.replies(2), [b"T\n", b"F\n"])
        self.assertEqual(len(logged(events, "asked b'17': T")), 1)
        self.assertEqual(len(logged(events, "asked b'18': F")), 1)

    def test_stoppedAnswersNothing(self):
        self.successResultOf(self.protocol.drain())
        self.queue([b"17", b"18"])
        self.port.doRead()
        self.noMoreReplies()
        self.assertEqual(self.protocol.counters.snapshot()["udpPrime"], 0)

    def test_maxThroughput(self):
        """
        The loop stops once C{maxThroughput} bytes are read, as the port's
        does; the next read event answers the rest.
        """
        self.port.maxThroughput = 25
        self.queue([b"1000000007\n"] * 5)  # 11 bytes each
        self.port.doRead()
        self.assertEqual(self.replies(3), [b"T\n"] * 3)
        self.noMoreReplies()
        self.port.doRead()
        self.assertEqual(self.replies(2), [b"T\n"] * 2)

    def test_maxThroughputReachedExactly(self):
        """
        Reading exactly C{maxThroughput} bytes ends the event too.
        """
        self.port.maxThroughput = 22
        self.queue([b"1000000007\n"] * 3)  # 11 bytes each
        self.port.doRead()
        self.assertEqual(self.replies(2), [b"T\n"] * 2)
        self.noMoreReplies()

    def test_peeksThenDrains(self):
        """
        After each of the first L{DatagramPort.PEEKS} datagrams of an event
        the loop peeks (timeout 0): a short queue ends without a failed read;
        a longer one is then drained to C{EAGAIN}.
        """
        self.queue([b"7"])
        self.port.doRead()  # makes the port's peek
        self.replies(1)
        peeks, failures = [], []
        peek, readFailed = self.port.peek, self.port.readFailed
        self.port.peek = lambda *args: (peeks.append(args), peek(*args))[1]
        self.port.readFailed = lambda error: (failures.append(error), readFailed(error))
        self.queue([b"11", b"13"])
        self.port.doRead()
        self.assertEqual(self.replies(2), [b"T\n"] * 2)
        self.assertEqual(([timeout for timeout, _ in peeks], failures), ([0, 0], []))
        del peeks[:]
        count = DatagramPort.PEEKS * 3
        self.queue([b"17"] * count)
        self.port.doRead()
        self.assertEqual(self.replies(count), [b"T\n"] * count)
        self.assertEqual([timeout for timeout, _ in peeks], [0] * DatagramPort.PEEKS)
        self.assertEqual([type(error) for error in failures], [BlockingIOError])

    def test_bufferKeptBetweenEvents(self):
        """
        Datagrams are read into one buffer of the port's C{maxPacketSize},
        kept from one read event to the next, and made again if that size
        changes.
        """
        self.queue([b"7"])
        self.port.doRead()
        buffer = self.protocol._buffer
        self.assertEqual(len(buffer), self.port.maxPacketSize)
        self.queue([b"8"])
        self.port.doRead()
        self.assertIs(self.protocol._buffer, buffer)
        self.port.maxPacketSize = 16384
        self.queue([b"9" * 9000])
        self.port.doRead()
        self.assertEqual(len(self.protocol._buffer), 16384)
        self.assertEqual(self.replies(3), [b"T\n", b"F\n", b"E\n"])

    def test_manyQueued(self):
        """
        Past L{DatagramPort.PEEKS} datagrams the loop drains to C{EAGAIN},
        quietly.
        """
        count = DatagramPort.PEEKS * 5
        self.queue([b"%d" % n for n in range(count)])
        self.port.doRead()
        expected, counts = self.reference([b"%d" % n for n in range(count)])
        self.assertEqual(self.replies(count), expected)
        self.noMoreReplies()
        self.port.doRead()  # nothing queued: EAGAIN, handled
        self.assertEqual(self.protocol.counters.snapshot(), counts)

    def test_sendErrorIsNotFatal(self):
        """
        A reply the kernel refuses is logged as lost; the loop goes on with
        the next datagram.
        """
        real = self.port.socket

        class Refusing:
            recvfrom_into = real.recvfrom_into

            def sendto(self, data, addr):
                if data == b"T\n":
                    raise OSError("no buffer space")
                return real.sendto(data, addr)

        self.port.socket = Refusing()
        self.addCleanup(setattr, self.port, "socket", real)
        events = captureLog(self)
        self.queue([b"17", b"18"])
        self.port.doRead()
        self.assertEqual(self.replies(1), [b"F\n"])
        self.assertEqual(len(logged(events, "lost: no buffer space")), 1)

    def test_readErrorRaised(self):
        """
        A read error other than "nothing left" or a refusal is raised to the
        reactor, as from Twisted's port, and what was answered is counted.
        """
        real = self.port.socket
        calls = []

        class Failing:
            sendto = real.sendto

            def recvfrom_into(self, buffer):
                if calls:
                    raise OSError(9, "bad file descriptor")
                calls.append(buffer)
                return real.recvfrom_into(buffer)

        self.port.socket = Failing()
        self.addCleanup(setattr, self.port, "socket", real)
        self.queue([b"17", b"19"])
        self.assertRaises(OSError, self.port.doRead)
        self.assertEqual(self.replies(1), [b"T\n"])
        self.assertEqual(self.protocol.counters.snapshot()["udpPrime"], 1)

    def test_ipv6Source(self):
        """
        Over IPv6 replies go to the full source address, and
        C{datagramReceived} gets it cut to (host, port), as from the port.
        """
        try:
            probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            probe.bind(("::1", 0))
            probe.close()
        except OSError:
            raise AssertionError("this machine has no IPv6 loopback")
        self.stop(self.port)
        protocol = self.listen(PrimeDatagramProtocol(makeChecker(SynchronousPool()), None),
                               interface="::1", family=socket.AF_INET6)
        sources = []
        received = protocol.datagramReceived

        def spy(data, addr):
            sources.append(addr)
            received(data, addr)

        protocol.datagramReceived = spy
        self.queue([b"17", b"-1"])
        self.port.doRead()
        self.assertEqual(self.replies(2), [b"T\n", b"F\n"])
        self.assertEqual(sources, [self.client.getsockname()[:2]])


class ReadDatagramsFuzzTests(SynchronousTestCase):
    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.one_of(
        st.binary(min_size=1, max_size=20),
        st.integers(-(10**70), 10**70).map(lambda n: b"%d" % n),
        st.integers(0, 10**70).map(lambda n: b"%d\n" % n),
    ), max_size=30))
    def test_sameAnswersAsDatagramReceived(self, datagrams):
        case = ReadDatagramsTests("test_sameAnswersAsDatagramReceived")
        case.setUp()
        try:
            case.queue(datagrams)
            case.port.doRead()
            expected, counts = case.reference(datagrams)
            self.assertEqual(case.replies(len(expected)), expected)
            self.assertEqual(case.protocol.counters.snapshot(), counts)
        finally:
            case.doCleanups()
