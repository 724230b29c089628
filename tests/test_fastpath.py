"""
Tests for L{primed.fastpath}, on real sockets driven without a reactor.
"""

import socket

from twisted.internet import tcp, udp
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from fakes import FakeDatagramTransport
from primed.fastpath import datagramWriter, streamWriter


class FDSet:
    """
    The part of a reactor a Twisted transport registers with.
    """

    def __init__(self):
        self.writers = set()

    def addWriter(self, writer):
        self.writers.add(writer)

    def removeWriter(self, writer):
        self.writers.discard(writer)

    def addReader(self, reader):
        pass

    def removeReader(self, reader):
        pass


class StreamWriterTests(unittest.TestCase):
    def setUp(self):
        self.ours, self.peer = socket.socketpair()
        self.addCleanup(self.ours.close)
        self.addCleanup(self.peer.close)
        self.ours.setblocking(False)
        self.peer.settimeout(5)
        self.fds = FDSet()
        self.transport = tcp.Connection(self.ours, Protocol(), self.fds)
        self.transport.connected = True
        self.write = streamWriter(self.transport)

    def test_sendsAtOnce(self):
        self.write(b"T\n")
        self.assertEqual(self.peer.recv(16), b"T\n")
        self.assertEqual(self.fds.writers, set())

    def test_queuesBehindBufferedData(self):
        """
        Once Twisted holds data, later writes go behind it, in order.
        """
        self.transport.write(b"F\n")
        self.write(b"E\n")
        self.assertEqual(self.transport._tempDataBuffer, [b"F\n", b"E\n"])
        self.assertEqual(self.fds.writers, {self.transport})

    def test_remainderBuffered(self):
        """
        What the kernel does not take is handed to Twisted, not lost.
        """
        data = b"T\n" * 2_000_000
        self.write(data)
        buffered = b"".join(self.transport._tempDataBuffer)
        self.assertTrue(0 < len(buffered) < len(data))
        self.assertTrue(data.endswith(buffered))

    def test_afterLoseConnectionSentBeforeTheClose(self):
        """
        Written after C{loseConnection}, with nothing buffered: sent, and
        the connection closes after it, as Twisted's own write would do.
        """
        self.transport.loseConnection()
        self.write(b"T\n")
        self.assertEqual(self.peer.recv(16), b"T\n")
        self.assertEqual(self.fds.writers, {self.transport})  # the close is due
        self.assertTrue(self.transport.disconnecting)

    def test_afterLoseConnectionBehindBufferedData(self):
        self.transport.write(b"F\n")
        self.transport.loseConnection()
        self.write(b"T\n")
        self.assertEqual(self.transport._tempDataBuffer, [b"F\n", b"T\n"])

    def test_afterConnectionLostDropped(self):
        """
        Once the connection is lost, a write sends nothing and raises
        nothing: the socket is closed, and Twisted's write drops the data.
        """
        lost = []
        self.transport.protocol.connectionLost = lost.append
        self.transport.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(lost), 1)
        self.write(b"T\n")
        self.assertEqual(self.transport._tempDataBuffer, [])
        self.assertEqual(self.fds.writers, set())
        self.peer.settimeout(0.5)
        self.assertEqual(self.peer.recv(16), b"")  # closed, nothing sent

    def test_descriptorReusedAfterConnectionLost(self):
        """
        The writer sends to its connection's descriptor only while the
        connection is up: once it is lost, the number may be another
        connection's, which must get nothing.
        """
        fd = self.ours.fileno()
        self.transport.protocol.connectionLost = lambda reason: None
        self.transport.connectionLost(Failure(ConnectionDone()))
        other, otherPeer = socket.socketpair()
        self.addCleanup(other.close)
        self.addCleanup(otherPeer.close)
        if other.fileno() != fd:
            other, otherPeer = otherPeer, other
        self.assertEqual(other.fileno(), fd)  # the lowest free number
        self.write(b"T\n")
        otherPeer.setblocking(False)
        self.assertRaises(BlockingIOError, otherPeer.recv, 16)

    def test_otherTransports(self):
        transport = StringTransport()
        self.assertEqual(streamWriter(transport), transport.write)


class DatagramWriterTests(unittest.TestCase):
    def test_sendsFromThePortsSocket(self):
        port = udp.Port(0, DatagramProtocol(), "127.0.0.1", reactor=FDSet())
        port.socket = port.createInternetSocket()
        port.socket.bind(("127.0.0.1", 0))
        self.addCleanup(port.socket.close)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            peer.settimeout(5)
            datagramWriter(port)(b"F\n", peer.getsockname())
            self.assertEqual(peer.recvfrom(16)[0], b"F\n")

    def test_otherTransports(self):
        transport = FakeDatagramTransport()
        self.assertEqual(datagramWriter(transport), transport.write)
