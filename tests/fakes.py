"""
Test doubles for what primed is handed: a reactor that runs thread callbacks
at once and keeps a fake clock, a thread pool the test drives by hand, and a
datagram transport that records what was sent.
"""

from typing import List, Tuple

from twisted.internet import defer, task
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport

from primed.checker import PrimeChecker
from primed.client import PrimedClientProtocol
from primed.tcpfactory import PrimeLineFactory
from primed.udp import PrimeDatagramProtocol


class ThreadlessReactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} whose C{callFromThread} runs the call at once:
    the hand-driven pool below calls it from the test's own thread.
    """

    def __init__(self):
        MemoryReactorClock.__init__(self)
        self.udpServers = []

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        """
        Record the call, as L{MemoryReactor} does for TCP, and connect the
        protocol to a fake transport.
        """
        self.udpServers.append((port, protocol, interface, maxPacketSize))
        transport = FakeDatagramTransport(IPv4Address("UDP", interface or "0.0.0.0", port))
        protocol.makeConnection(transport)
        return transport


class HandDrivenPool:
    """
    Provides C{callInThreadWithCallback} like
    L{twisted.python.threadpool.ThreadPool}, but only runs work when the test
    says so, in any order it likes.
    """

    def __init__(self):
        self.work: List[Tuple] = []

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs):
        self.work.append((onResult, f, args, kwargs))

    def run(self, index: int = 0) -> None:
        onResult, f, args, kwargs = self.work.pop(index)
        try:
            result = f(*args, **kwargs)
        except BaseException as e:
            onResult(False, e)
        else:
            onResult(True, result)

    def runAll(self) -> None:
        while self.work:
            self.run()


class SynchronousPool(HandDrivenPool):
    """
    Runs work the moment it is handed over.
    """

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs):
        HandDrivenPool.callInThreadWithCallback(self, onResult, f, *args, **kwargs)
        self.run()


class FakeDatagramTransport:
    """
    Records C{write(data, addr)} calls, like a UDP port would send them.
    """

    def __init__(self, host=None):
        self.written: List[Tuple[bytes, tuple]] = []
        self.host = host
        self.listening = True

    def write(self, data, addr):
        self.written.append((data, addr))

    def getHost(self):
        return self.host

    def stopListening(self):
        self.listening = False


def makeChecker(pool=None, reactor=None, **limits) -> PrimeChecker:
    return PrimeChecker(
        reactor or ThreadlessReactor(), pool or HandDrivenPool(), **limits
    )


def connect(factory: PrimeLineFactory, transport=None):
    """
    Build a protocol from C{factory} and connect it to a L{StringTransport}.
    """
    protocol = factory.buildProtocol(None)
    transport = transport or StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def makeFactory(checker=None, reactor=None, **options) -> PrimeLineFactory:
    reactor = reactor or ThreadlessReactor()
    checker = checker or makeChecker(reactor=reactor)
    return PrimeLineFactory(checker, reactor, **options)


def makeService(reactor=None, pool=None, threads=1, **options):
    """
    A L{primed.service.PrimedService} on one fake TCP port and one fake UDP
    port of C{reactor}, checking big numbers in C{pool}; not started.
    """
    from twisted.internet.endpoints import serverFromString

    from primed.service import PrimedService, UDPAddress

    reactor = reactor or ThreadlessReactor()
    return PrimedService(
        reactor,
        [("tcp:0", serverFromString(reactor, "tcp:0"))],
        [UDPAddress("127.0.0.1", 0)],
        threads=threads,
        threadpool=pool or HandDrivenPool(),
        **options,
    )


def makeDatagramProtocol(checker=None, **options):
    checker = checker or makeChecker()
    protocol = PrimeDatagramProtocol(checker, checker.reactor, **options)
    transport = FakeDatagramTransport()
    protocol.makeConnection(transport)
    return protocol, transport


__all__ = [
    "Clock",
    "ThreadlessReactor",
    "HandDrivenPool",
    "SynchronousPool",
    "FakeDatagramTransport",
    "makeChecker",
    "makeFactory",
    "makeDatagramProtocol",
    "makeService",
    "connect",
]


# The client's doubles.


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


class FakeDatagramPort:
    """
    What C{listenUDP} returns and its protocol writes to: records the
    datagrams, the connected address and whether it was stopped; refuses,
    as the kernel does, a datagram longer than 65 507 bytes (IPv4's limit).
    """

    MAX_DATAGRAM = 65507

    def __init__(self, protocol):
        self.protocol = protocol
        self.written = []
        self.connectedTo = None
        self.stopped = False

    def connect(self, host, port):
        self.connectedTo = (host, port)

    def write(self, datagram, address=None):
        if len(datagram) > self.MAX_DATAGRAM:
            from twisted.internet.error import MessageLengthError

            raise MessageLengthError("message too long")
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
