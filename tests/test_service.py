"""
Tests for L{primed.service}: UDP addresses, and the order of a graceful stop
(through a L{MemoryReactor} and a hand-driven pool).
"""

import os
import shutil
import socket
import tempfile

from twisted.internet import tcp
from twisted.internet.endpoints import serverFromString
from twisted.python.failure import Failure
from twisted.trial import unittest

from fakes import HandDrivenPool, ThreadlessReactor, connect
from support import CertificatesMixin
from primed.checker import CheckAbandoned
from primed.service import PrimedService, UDPAddress

BIG_PRIME = 2**607 - 1


class UDPAddressTests(unittest.TestCase):
    def test_forms(self):
        for text, expected in [
            ("8808", ("", 8808, None)),
            ("127.0.0.1:8808", ("127.0.0.1", 8808, None)),
            ("[::1]:8808", ("::1", 8808, None)),
            ("systemd:name=primed-udp", ("", 0, "primed-udp")),
        ]:
            address = UDPAddress.fromString(text)
            self.assertEqual((address.host, address.port, address.systemdName), expected)

    def test_refused(self):
        for text in ["", "host:port", "70000", "1:-1", "systemd:fd=3", "systemd:name=",
                     "[::1]", "[::1:8808", "::1]:8808", "::1:8808", "[]:8808", "[[::1]]:8808",
                     # Twisted's listenUDP binds IP addresses only: a name
                     # used to pass here and fail at listen time, exit 1.
                     "localhost:8808", "nosuchhost.invalid:8808", "[127.0.0.1]:8808",
                     # str.isdigit() is true for these; int() takes the first
                     # as port 3 and refuses the second.
                     "\u0663", "\u00b2"]:
            self.assertRaises(ValueError, UDPAddress.fromString, text)

    def test_ipAddresses(self):
        for text, host in [("[::ffff:127.0.0.1]:0", "::ffff:127.0.0.1"),
                           ("[fe80::1%lo]:0", "fe80::1%lo"), ("0.0.0.0:0", "0.0.0.0")]:
            self.assertEqual(UDPAddress.fromString(text).host, host)


class UDPAddressBoundsTests(unittest.TestCase):
    def test_portBounds(self):
        self.assertEqual(UDPAddress.fromString("0").port, 0)
        self.assertEqual(UDPAddress.fromString("65535").port, 65535)
        error = self.assertRaises(ValueError, UDPAddress.fromString, "65536")
        self.assertEqual(
            str(error), "expected [HOST:]PORT with a port from 0 to 65535, not '65536'"
        )

    def test_brackets(self):
        """
        Brackets hold an IPv6 address, whole and alone; a bare IPv6 address
        or a stray bracket is refused with a message saying why.
        """
        self.assertEqual(UDPAddress.fromString("[::1]:1").host, "::1")
        for text in ["[]:1", "[[::1]]:1", "[::1]]:1", "[[::1]:1"]:
            error = self.assertRaises(ValueError, UDPAddress.fromString, text)
            self.assertEqual(str(error), f"expected [IPV6]:PORT, not {text!r}")
        for text in ["::1:1", "a[b:1", "a]b:1", "[::1:1"]:
            error = self.assertRaises(ValueError, UDPAddress.fromString, text)
            self.assertEqual(
                str(error),
                f"expected [HOST:]PORT, an IPv6 address in brackets, not {text!r}",
            )

    def test_systemd(self):
        address = UDPAddress.fromString("systemd:name=primed-udp")
        self.assertEqual(repr(address), "systemd:name=primed-udp")
        error = self.assertRaises(ValueError, UDPAddress.fromString, "systemd:name=")
        self.assertEqual(str(error), "expected systemd:name=NAME, not 'systemd:name='")

    def test_family(self):
        import socket

        from primed.service import _family

        self.assertEqual(_family("::1"), socket.AF_INET6)
        self.assertEqual(_family("127.0.0.1"), socket.AF_INET)
        self.assertEqual(_family(""), socket.AF_INET)


class DescribeTests(unittest.TestCase):
    def test_addresses(self):
        from twisted.internet.address import IPv4Address, UNIXAddress

        describe = PrimedService._describe
        self.assertEqual(describe(IPv4Address("TCP", "127.0.0.1", 8809), "x"), "127.0.0.1:8809")
        self.assertEqual(describe(UNIXAddress(b"/run/primed.sock"), "x"), "/run/primed.sock")
        self.assertEqual(describe(object(), "fallback"), "fallback")


class StopTests(unittest.TestCase):
    def setUp(self):
        self.reactor = ThreadlessReactor()
        self.pool = HandDrivenPool()
        self.service = PrimedService(
            self.reactor,
            [("tcp:0", serverFromString(self.reactor, "tcp:0"))],
            [UDPAddress("127.0.0.1", 0)],
            threads=1,
            drainTimeout=10,
            threadpool=self.pool,
        )
        self.service.startService()

    def test_stopAnswersPendingThenCloses(self):
        protocol, transport = connect(self.service.factory)
        protocol.dataReceived(b"%d\n4\n" % BIG_PRIME)
        stopped = self.service.stopService()
        self.assertNoResult(stopped)
        self.pool.run()
        self.assertEqual(transport.value(), b"T\nF\n")
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(None)
        self.successResultOf(stopped)
        # The drain deadline's timer is cancelled, not left to fire later.
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stopDoesNotWaitForChecksOwedToNobody(self):
        """
        A check whose connection is gone (reset by its client) is owed to
        nobody: the stop ends at once, not at the drain deadline with a
        warning that cuts nothing.
        """
        protocol, transport = connect(self.service.factory)
        protocol.dataReceived(b"%d\n" % BIG_PRIME)
        protocol.connectionLost(None)
        self.assertEqual(self.service.checker.queued, 1)
        stopped = self.service.stopService()
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.pool.run()  # it never starts: the checker was abandoned
        self.assertEqual(self.service.checker.queued, 0)

    def test_drainTimeoutCutsOff(self):
        protocol, transport = connect(self.service.factory)
        protocol.dataReceived(b"%d\n4\n" % BIG_PRIME)
        waiting = self.service.checker.submit(BIG_PRIME + 2)
        stopped = self.service.stopService()
        self.reactor.advance(10)
        self.successResultOf(stopped)
        self.assertTrue(transport.disconnected)
        self.assertEqual(transport.value(), b"")
        # Checks that never got a thread do not run once the deadline passed:
        # they fail at once, so stopping the pool waits for none of them.
        self.assertEqual(len(self.pool.work), 2)
        self.pool.runAll()
        self.failureResultOf(waiting, CheckAbandoned)
        self.assertEqual(self.service.checker.queued, 0)

    def udpProtocol(self):
        [protocol] = self.service.datagramProtocols
        return protocol, protocol.transport

    def test_stopAnswersDatagramsInThePool(self):
        """
        A datagram whose check is in the pool when the stop begins is still
        answered; one that arrives after is not; then the stop completes.
        """
        protocol, transport = self.udpProtocol()
        addr = ("127.0.0.1", 40000)
        protocol.datagramReceived(b"%d\n" % BIG_PRIME, addr)
        stopped = self.service.stopService()
        protocol.datagramReceived(b"7\n", addr)
        self.assertNoResult(stopped)
        self.pool.run()
        self.assertEqual(transport.written, [(b"T\n", addr)])
        self.successResultOf(stopped)
        self.assertFalse(transport.listening)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_drainTimeoutCutsOffDatagrams(self):
        """
        A datagram still waiting for a thread at the deadline is counted as
        cut off, and never answered.
        """
        from twisted.logger import globalLogPublisher

        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        protocol, transport = self.udpProtocol()
        protocol.datagramReceived(b"%d\n" % BIG_PRIME, ("127.0.0.1", 40000))
        stopped = self.service.stopService()
        self.reactor.advance(10)
        self.successResultOf(stopped)
        from twisted.logger import formatEvent

        self.assertIn(
            "Drain timeout of 10s reached: cut 0 connection(s), "
            "1 received request(s) left unanswered",
            [formatEvent(e) for e in logged],
        )
        self.pool.runAll()
        self.assertEqual(transport.written, [])
        self.assertEqual(protocol.inflight, 0)

    def test_endDrainCutsOffAtOnce(self):
        """
        A second stop signal ends the drain as the deadline would: the
        connection owed a reply is cut and the count is logged.
        """
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        protocol, transport = connect(self.service.factory)
        protocol.dataReceived(b"%d\n4\n" % BIG_PRIME)
        self.service.endDrain()  # not stopping yet: nothing happens
        self.assertFalse(transport.disconnected)
        stopped = self.service.stopService()
        self.assertNoResult(stopped)
        self.service.endDrain()
        self.successResultOf(stopped)
        self.assertTrue(transport.disconnected)
        self.assertEqual(transport.value(), b"")
        self.service.endDrain()  # stopped: nothing happens
        self.reactor.advance(10)  # and the deadline no longer comes
        (cut,) = [e for e in events if "left unanswered" in e.get("log_format", "")]
        self.assertEqual((cut["why"], cut["connections"], cut["requests"]),
                         ("Drain ended by a second stop signal", 1, 2))


def _captureLog(test):
    """
    Collect the formatted text of every event logged while C{test} runs.
    """
    from twisted.logger import formatEvent, globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    test.addCleanup(globalLogPublisher.removeObserver, events.append)
    return lambda: [formatEvent(e) for e in events]


class ReusePortSocketTests(unittest.TestCase):
    """
    L{_reusePortSocket} on real loopback sockets: the options that let other
    primed processes share the port, listening or not by kind, non-blocking.
    """

    def check(self, kind, host, family):
        import socket

        from primed.service import _reusePortSocket

        sock = _reusePortSocket(kind, host, 0, 5)
        self.addCleanup(sock.close)
        self.assertEqual((sock.family, sock.type), (family, kind))
        self.assertEqual(sock.getsockname()[0], host)
        self.assertNotEqual(sock.getsockname()[1], 0)
        self.assertTrue(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR))
        self.assertTrue(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
        self.assertFalse(sock.getblocking())
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        self.assertEqual(bool(listening), kind == socket.SOCK_STREAM)
        # A second socket may bind the same port: what --reuseport is for.
        again = _reusePortSocket(kind, host, sock.getsockname()[1], 5)
        again.close()

    def test_tcp(self):
        import socket

        self.check(socket.SOCK_STREAM, "127.0.0.1", socket.AF_INET)

    def test_udp(self):
        import socket

        self.check(socket.SOCK_DGRAM, "127.0.0.1", socket.AF_INET)

    def test_ipv6(self):
        import socket

        self.check(socket.SOCK_STREAM, "::1", socket.AF_INET6)

    def test_cannotBind(self):
        """
        An address that is not ours is a L{CannotListenError} naming it, and
        the socket is closed.
        """
        import socket

        from twisted.internet.error import CannotListenError

        from primed import service as module

        made = []
        Socket = socket.socket

        class Recording(Socket):
            def __init__(self, *args, **kwargs):
                Socket.__init__(self, *args, **kwargs)
                made.append(self)

        self.patch(module.socket, "socket", Recording)
        error = self.assertRaises(
            CannotListenError, module._reusePortSocket, socket.SOCK_STREAM, "192.0.2.1", 7
        )
        self.assertEqual((error.interface, error.port), ("192.0.2.1", 7))
        self.assertIsInstance(error.socketError, OSError)
        [sock] = made
        self.assertEqual(sock.fileno(), -1)


class FakeSystemd:
    def __init__(self, descriptors):
        self.descriptors = descriptors

    def inheritedNamedDescriptors(self):
        return dict(self.descriptors)


class InheritedDescriptorTests(unittest.TestCase):
    def setUp(self):
        from twisted.internet.endpoints import _SystemdParser

        self.patch(_SystemdParser, "_sddaemon", FakeSystemd({"primed-udp": 7}))

    def test_named(self):
        from primed.service import _inheritedDescriptor

        self.assertEqual(_inheritedDescriptor("primed-udp"), 7)

    def test_missing(self):
        from primed.service import _inheritedDescriptor

        error = self.assertRaises(ValueError, _inheritedDescriptor, "other")
        self.assertEqual(str(error), "no socket named 'other' was inherited from systemd")


class FailingEndpoint:
    """
    An endpoint whose C{listen} fails with C{reason}, or never answers.
    """

    def __init__(self, reason=None):
        self.reason = reason

    def listen(self, factory):
        from twisted.internet import defer

        if self.reason is None:
            return defer.Deferred()
        return defer.fail(self.reason)


class RecordingPort:
    """
    A listening port that records being stopped (reading, then listening).
    """

    def __init__(self):
        self.calls = []

    def getHost(self):
        from twisted.internet.address import IPv4Address

        return IPv4Address("UDP", "127.0.0.1", 8808)

    def stopReading(self):
        self.calls.append("stopReading")

    def stopListening(self):
        self.calls.append("stopListening")


class StartTests(unittest.TestCase):
    """
    What a start binds, on a L{MemoryReactor}, how it says so, and the
    one-line exit when a listener cannot bind.
    """

    def setUp(self):
        self.reactor = ThreadlessReactor()
        self.logged = _captureLog(self)

    def make(self, tcp=(), udp=(), **options):
        options.setdefault("threadpool", HandDrivenPool())
        return PrimedService(self.reactor, list(tcp), list(udp), threads=3, **options)

    def tcp(self, description="tcp:8809:interface=127.0.0.1"):
        return (description, serverFromString(self.reactor, description))

    def test_defaults(self):
        """
        Not verbose, not sharing ports, and with a pool of its own, named, of
        C{threads} threads.
        """
        from primed.checker import CheckPool

        service = PrimedService(self.reactor, [], [], threads=3)
        self.assertFalse(service.verbose)
        self.assertFalse(service.factory.verbose)
        self.assertIs(service.reusePort, False)
        self.assertIs(service.ownsPool, True)
        self.assertIsInstance(service.threadpool, CheckPool)
        self.assertIs(service.checker.threadpool, service.threadpool)
        self.assertEqual((service.threadpool.min, service.threadpool.max), (3, 3))
        self.assertEqual(service.threadpool.name, "primed-check")
        self.assertEqual(service._served, [])
        pool = HandDrivenPool()
        self.assertIs(self.make(threadpool=pool).ownsPool, False)

    def test_verbose(self):
        service = self.make(udp=[UDPAddress("127.0.0.1", 0)], verbose=True)
        service.startService()
        self.assertTrue(service.factory.verbose)
        [protocol] = service.datagramProtocols
        self.assertTrue(protocol.verbose)

    def test_listensAndLogs(self):
        from primed.udp import receiveBufferSize

        service = self.make([self.tcp()], [UDPAddress("127.0.0.1", 8808)], maxDigits=123,
                            maxQueued=4, maxQueuedPerSource=2, maxInflight=5,
                            maxConnections=6, idleTimeout=7.5, drainTimeout=8.5)
        served = []
        service.listening.addCallback(served.append)
        service.startService()
        [(port, factory, backlog, host)] = self.reactor.tcpServers
        self.assertEqual((port, factory, host), (8809, service.factory, "127.0.0.1"))
        [(port, protocol, host, size)] = self.reactor.udpServers
        self.assertEqual((port, host, size), (8808, "127.0.0.1", receiveBufferSize(123)))
        self.assertEqual(served, [[("TCP", "0.0.0.0:8809"), ("UDP", "127.0.0.1:8808")]])
        logged = self.logged()
        self.assertIn("Listening for TCP on 0.0.0.0:8809", logged)
        self.assertIn("Listening for UDP on 127.0.0.1:8808", logged)
        self.assertIn(
            "Limits: 123 digits, 3 check threads, 4 pool checks queued (2 per source), "
            "5 replies in flight per connection, 6 connections, no limit per source, "
            "idle timeout 7.5s, handshake timeout 10.0s, drain timeout 8.5s",
            logged,
        )

    def test_privilegedStartBindsOnce(self):
        """
        C{twistd} binds in C{privilegedStartService}; C{startService} then
        does not bind again, whichever kinds of listener there are.
        """
        for tcp, udp in [([self.tcp()], []), ([], [UDPAddress("127.0.0.1", 0)])]:
            self.reactor = ThreadlessReactor()
            service = self.make([self.tcp()] if tcp else [], udp)
            service.privilegedStartService()
            service.startService()
            self.assertEqual(len(self.reactor.tcpServers) + len(self.reactor.udpServers), 1)

    def test_ownPoolStartsAndStops(self):
        service = self.make(threadpool=None)
        service.startService()
        self.assertTrue(service.threadpool.started)
        self.assertEqual(len(service.threadpool.threads), 3)
        threads = list(service.threadpool.threads)
        self.successResultOf(service.stopService())
        self.assertFalse(service.threadpool.started)
        # Nothing was queued: the idle workers were joined, not left behind.
        self.assertFalse(any(thread.is_alive() for thread in threads))
        self.assertIn("Stopped", self.logged())

    def test_cannotStartThreads(self):
        """
        A pool that cannot start its threads (a task or memory limit, a huge
        C{--threads}) stops the daemon with one line, as a port that cannot
        bind does, after closing the listeners already bound; no traceback.
        """
        bound = RecordingPort()
        self.patch(self.reactor, "listenTCP", lambda *a, **k: bound)
        service = self.make([self.tcp()], threadpool=None)

        def start():
            raise RuntimeError("can't start new thread")

        self.patch(service.threadpool, "start", start)
        error = self.assertRaises(SystemExit, service.startService)
        self.assertEqual(str(error), "primed: cannot start 3 check threads: can't start new thread")
        self.assertEqual(bound.calls, ["stopListening"])
        self.assertEqual((service.tcpPorts, service.udpPorts), ([], []))
        self.assertNotIn("Limits:", self.logged())

    def test_tlsWithoutWriteExecute(self):
        """
        An C{ssl:} listener whose OpenSSL context cannot be built for want
        of writable and executable memory (cffi's callbacks, under
        C{MemoryDenyWriteExecute=yes}) stops the start with one line naming
        the listener and the systemd setting, and binds nothing.
        """
        from twisted.internet.endpoints import SSL4ServerEndpoint
        from twisted.internet.ssl import CertificateOptions

        options = CertificateOptions()

        def getContext():
            raise MemoryError("Cannot allocate write+execute memory for ffi.callback()")

        options.getContext = getContext
        endpoint = SSL4ServerEndpoint(self.reactor, 8443, options)
        service = self.make([("ssl:8443", endpoint)])
        error = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertEqual(
            str(error),
            "primed: cannot listen on ssl:8443: TLS needs memory both writable and "
            "executable (pyOpenSSL's callbacks), which this process may not map; "
            "under systemd, set MemoryDenyWriteExecute=no")
        self.assertEqual(self.reactor.tcpServers, [])

    def test_tls(self):
        """
        An C{ssl:} listener is bound by primed itself, its factory wrapped
        in the TLS layer that keeps half-closes, and reported as TLS.
        """
        from twisted.internet.endpoints import SSL4ServerEndpoint
        from twisted.internet.ssl import CertificateOptions

        from primed.tls import HalfCloseableTLSFactory

        context = CertificateOptions()
        endpoint = SSL4ServerEndpoint(self.reactor, 8443, context, backlog=9,
                                      interface="127.0.0.1")
        service = self.make([("ssl:8443", endpoint)])
        served = []
        service.listening.addCallback(served.append)
        service.startService()
        [(port, factory, backlog, host)] = self.reactor.tcpServers
        self.assertEqual((port, backlog, host), (8443, 9, "127.0.0.1"))
        self.assertIsInstance(factory, HalfCloseableTLSFactory)
        self.assertIs(factory.wrappedFactory, service.factory)
        self.assertEqual(served, [[("TLS", "0.0.0.0:8443")]])

    def adopting(self):
        """
        Record, for every socket the reactor adopts, its options at that
        moment (primed closes its own copy right after).
        """
        import socket

        seen = []
        for name in ("adoptStreamPort", "adoptDatagramPort"):
            original = getattr(self.reactor, name)

            def adopt(fileno, family, *args, original=original):
                sock = socket.socket(fileno=os.dup(fileno))
                try:
                    seen.append((sock.type, sock.getsockname(), os.get_blocking(fileno),
                                 sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)))
                finally:
                    sock.close()
                return original(fileno, family, *args)

            setattr(self.reactor, name, adopt)
        return seen

    def test_reusePort(self):
        import socket

        from primed.udp import receiveBufferSize

        seen = self.adopting()
        service = self.make([self.tcp("tcp:0:interface=127.0.0.1:backlog=7")],
                            [UDPAddress("127.0.0.1", 0)], reusePort=True, maxDigits=99)
        service.startService()
        [(_, tcpFamily, factory), (_, udpFamily, protocol, size)] = self.reactor.adoptedPorts
        self.assertEqual((tcpFamily, udpFamily), (socket.AF_INET, socket.AF_INET))
        self.assertIs(factory, service.factory)
        self.assertEqual(size, receiveBufferSize(99))
        self.assertEqual([(kind, host[0], blocking, bool(reuse))
                          for kind, host, blocking, reuse in seen],
                         [(socket.SOCK_STREAM, "127.0.0.1", False, True),
                          (socket.SOCK_DGRAM, "127.0.0.1", False, True)])
        self.assertEqual(self.reactor.tcpServers, [])

    def test_reusePortTLS(self):
        import socket

        from twisted.internet.endpoints import SSL4ServerEndpoint
        from twisted.internet.ssl import CertificateOptions

        from primed.tls import HalfCloseableTLSFactory

        seen = self.adopting()
        endpoint = SSL4ServerEndpoint(self.reactor, 0, CertificateOptions(),
                                      interface="127.0.0.1")
        service = self.make([("ssl:0", endpoint)], reusePort=True)
        service.startService()
        [(_, family, factory)] = self.reactor.adoptedPorts
        self.assertIsInstance(factory, HalfCloseableTLSFactory)
        self.assertEqual([kind for kind, *_ in seen], [socket.SOCK_STREAM])

    def test_reusePortOtherEndpoint(self):
        service = self.make([("unix:/nowhere", serverFromString(self.reactor, "unix:/nowhere"))],
                            reusePort=True)
        error = self.assertRaises(SystemExit, service.startService)
        self.assertEqual(
            str(error),
            "primed: cannot listen: --reuseport works with tcp:, tcp6: and ssl: "
            "endpoints, not 'unix:/nowhere'",
        )

    def test_systemdDatagramSocket(self):
        """
        A datagram socket inherited from systemd is adopted with its family
        and made non-blocking (systemd-socket-activate passes it blocking).
        """
        import socket

        from twisted.internet.endpoints import _SystemdParser

        from primed.udp import receiveBufferSize

        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(("::1", 0))
        self.assertTrue(os.get_blocking(sock.fileno()))
        self.patch(_SystemdParser, "_sddaemon", FakeSystemd({"dgram": sock.fileno()}))
        service = self.make(udp=[UDPAddress(systemdName="dgram")], maxDigits=77)
        served = []
        service.listening.addCallback(served.append)
        service.startService()
        [(fileno, family, protocol, size)] = self.reactor.adoptedPorts
        self.assertEqual((fileno, family, size),
                         (sock.fileno(), socket.AF_INET6, receiveBufferSize(77)))
        self.assertEqual(protocol, service.datagramProtocols[0])
        self.assertFalse(os.get_blocking(sock.fileno()))
        sock.getsockname()  # still open
        self.assertEqual(served, [[("UDP", ":::1234")]])

    def test_systemdMissing(self):
        from twisted.internet.endpoints import _SystemdParser

        self.patch(_SystemdParser, "_sddaemon", FakeSystemd({}))
        service = self.make(udp=[UDPAddress(systemdName="dgram")])
        error = self.assertRaises(SystemExit, service.startService)
        self.assertEqual(
            str(error), "primed: cannot listen: no socket named 'dgram' was inherited from systemd"
        )

    def test_cannotListen(self):
        """
        A listener that fails to bind stops every one already bound, and
        exits with one line naming the listener and why.
        """
        from twisted.internet.error import CannotListenError

        refused = CannotListenError("127.0.0.1", 80, OSError(13, "Permission denied"))
        service = self.make([("tcp:80", FailingEndpoint(refused))])
        error = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertEqual(str(error),
                         "primed: cannot listen on tcp:80: [Errno 13] Permission denied")
        self.assertEqual((service.tcpPorts, service.udpPorts), ([], []))

    def test_cannotListenStopsBound(self):
        from twisted.internet.error import CannotListenError

        bound = RecordingPort()
        self.patch(self.reactor, "listenTCP", lambda *a, **k: bound)
        refused = CannotListenError(None, 80, OSError(13, "no"))
        service = self.make([self.tcp(), ("tcp:80", FailingEndpoint(refused))])
        self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertEqual(bound.calls, ["stopListening"])
        self.assertEqual((service.tcpPorts, service.udpPorts), ([], []))

    def test_cannotListenUDPStopsTCP(self):
        """
        A UDP address that cannot bind (here: not ours, with --reuseport)
        stops the TCP listener bound before it; the exit names host and port.
        """
        bound = RecordingPort()
        self.patch(self.reactor, "adoptStreamPort", lambda *a, **k: bound)
        service = self.make([self.tcp("tcp:0:interface=127.0.0.1")],
                            [UDPAddress("192.0.2.1", 9)], reusePort=True)
        error = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertTrue(str(error).startswith("primed: cannot listen on 192.0.2.1:9: [Errno "),
                        str(error))
        self.assertEqual(bound.calls, ["stopListening"])
        self.assertEqual((service.tcpPorts, service.udpPorts), ([], []))

    def test_cannotListenOtherReason(self):
        """
        A failure without a socket error is given as it is.
        """
        service = self.make([("weird:1", FailingEndpoint(RuntimeError("no such thing")))])
        error = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertEqual(str(error), "primed: cannot listen on weird:1: no such thing")

    def test_listenNotAtOnce(self):
        service = self.make([("slow:1", FailingEndpoint())])
        error = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertEqual(str(error), "primed: cannot listen: slow:1 did not listen at once")


class StopOrderTests(unittest.TestCase):
    def test_udpStopsReadingThenListening(self):
        """
        A stop first stops reading datagrams, and stops listening once the
        replies are out; it says so in the log.
        """
        reactor = ThreadlessReactor()
        port = RecordingPort()
        self.patch(reactor, "listenUDP", lambda *a, **k: port)
        logged = _captureLog(self)
        service = PrimedService(reactor, [], [UDPAddress("127.0.0.1", 0)], threads=1,
                                threadpool=HandDrivenPool())
        service.startService()
        stopped = service.stopService()
        self.successResultOf(stopped)
        self.assertEqual(port.calls, ["stopReading", "stopListening"])
        self.assertIn("Stopping: answering the requests already received", logged())
        self.assertIn("Stopped", logged())

    def test_failedStopListening(self):
        """
        A TCP port that fails to stop listening does not stop the stop, and
        leaves no unhandled error behind.
        """
        import gc

        reactor = ThreadlessReactor()

        class Broken(RecordingPort):
            def stopListening(self):
                raise RuntimeError("broken")

        self.patch(reactor, "listenTCP", lambda *a, **k: Broken())
        service = PrimedService(reactor, [("tcp:1", serverFromString(reactor, "tcp:1"))], [],
                                threads=1, threadpool=HandDrivenPool())
        service.startService()
        self.successResultOf(service.stopService())
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(RuntimeError), [])


class ProxyListenerTests(unittest.TestCase):
    """
    C{haproxy:ENDPOINT}: the PROXY header layer goes outside everything,
    TLS included, and the listener binds where the inner endpoint says.
    """

    def setUp(self):
        self.reactor = ThreadlessReactor()

    def serve(self, description, inner, **options):
        from primed.proxy import ProxyHeaderEndpoint, ProxyHeaderFactory

        endpoint = ProxyHeaderEndpoint(inner, self.reactor)
        service = PrimedService(self.reactor, [(description, endpoint)], [], threads=1,
                                threadpool=HandDrivenPool(), **options)
        service.startService()
        factories = [server[1] for server in self.reactor.tcpServers] + [
            adopted[2] for adopted in self.reactor.adoptedPorts]
        [factory] = factories
        self.assertIsInstance(factory, ProxyHeaderFactory)
        return service, factory.wrapped

    def test_tcp(self):
        service, inner = self.serve("haproxy:tcp:8809",
                                    serverFromString(self.reactor, "tcp:8809"))
        self.assertIs(inner, service.factory)

    def test_tls(self):
        from twisted.internet.endpoints import SSL4ServerEndpoint
        from twisted.internet.ssl import CertificateOptions

        from primed.tls import HalfCloseableTLSFactory

        service, inner = self.serve(
            "haproxy:ssl:8443", SSL4ServerEndpoint(self.reactor, 8443, CertificateOptions()))
        self.assertIsInstance(inner, HalfCloseableTLSFactory)
        self.assertIs(inner.wrappedFactory, service.factory)
        # Reported (log, READY status, listening) as TLS, as without haproxy:.
        self.assertEqual([kind for kind, _ in service._served], ["TLS"])

    def test_reusePort(self):
        service, inner = self.serve(
            "haproxy:tcp:0", serverFromString(self.reactor, "tcp:0:interface=127.0.0.1"),
            reusePort=True)
        self.assertIs(inner, service.factory)


class StopStateTests(unittest.TestCase):
    def test_stopping(self):
        service = PrimedService(ThreadlessReactor(), [], [], threads=1,
                                threadpool=HandDrivenPool())
        service.startService()
        self.assertFalse(service.stopping)
        service.stopService()
        self.assertTrue(service.stopping)

    def test_unansweredAddUp(self):
        """
        What a cut leaves unanswered is added to the counter, not set.
        """
        reactor = ThreadlessReactor()
        service = PrimedService(reactor, [("tcp:0", serverFromString(reactor, "tcp:0"))], [],
                                threads=1, threadpool=HandDrivenPool(), drainTimeout=5)
        service.startService()
        service.counters.drainUnanswered = 5
        protocol, transport = connect(service.factory)
        protocol.dataReceived(b"%d\n4\n" % BIG_PRIME)
        service.stopService()
        reactor.advance(5)
        self.assertEqual(service.counters.drainUnanswered, 7)


class UDPAddressMessageTests(unittest.TestCase):
    def test_hostName(self):
        error = self.assertRaises(ValueError, UDPAddress.fromString, "localhost:8808")
        self.assertEqual(str(error), "expected an IP address as HOST, not 'localhost'")


class NoDelayTests(unittest.TestCase):
    """
    Every TCP listener has Nagle's algorithm off, and so every connection
    it accepts (a reply written while the previous one is unacknowledged
    would otherwise wait up to a delayed ACK's 40 ms); a UNIX listener is
    left alone, without the error Twisted logs when asked.  Real sockets on
    a reactor that is not run.
    """

    def setUp(self):
        from primed.reactor import PrimedReactor

        self.reactor = PrimedReactor()
        self.logged = _captureLog(self)
        # Not trial's mktemp: under pytest it litters the working directory.
        # Removed after _close, which unlinks a UNIX socket in it.
        self.directory = tempfile.mkdtemp(prefix="primed-service-test-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.addCleanup(self._close)
        self.clients = []

    def _close(self):
        from twisted.internet.error import ConnectionDone

        for client in self.clients:
            client.close()
        for selectable in self.reactor.removeAll():
            selectable.connectionLost(Failure(ConnectionDone()))
        self.reactor._poller.close()

    def _accepted(self, service, connect):
        """
        Connect with C{connect()}, get an answer, return the protocol that
        answered.
        """
        client = connect()
        self.clients.append(client)
        client.sendall(b"17\n")
        client.setblocking(False)
        got = b""
        for _ in range(100):
            if got.endswith(b"\n"):
                break
            self.reactor.doPoll(0.1)
            try:
                got += client.recv(16)
            except BlockingIOError:
                pass
        self.assertEqual(got, b"T\n")
        [protocol] = service.factory.protocols
        return protocol

    def test_tcp(self):
        service = PrimedService(
            self.reactor,
            [("tcp:0:interface=127.0.0.1",
              serverFromString(self.reactor, "tcp:0:interface=127.0.0.1"))],
            [], threads=1, threadpool=HandDrivenPool(),
        )
        service.privilegedStartService()
        [port] = service.tcpPorts
        self.assertEqual(port.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
        protocol = self._accepted(
            service, lambda: socket.create_connection(("127.0.0.1", port.getHost().port))
        )
        self.assertTrue(protocol.transport.getTcpNoDelay())

    def test_unix(self):
        path = os.path.join(self.directory, "socket")
        service = PrimedService(
            self.reactor, [(f"unix:{path}", serverFromString(self.reactor, f"unix:{path}"))],
            [], threads=1, threadpool=HandDrivenPool(),
        )
        service.privilegedStartService()

        def connect():
            client = socket.socket(socket.AF_UNIX)
            client.connect(path)
            return client

        self._accepted(service, connect)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual([e for e in self.logged() if "NODELAY" in e], [])


class NoDelayKindsTests(CertificatesMixin, NoDelayTests):
    """
    Every kind of TCP listener gets it, not only C{tcp:}: C{tcp6:},
    C{ssl:}, C{haproxy:} in front of either, C{--reuseport}'s own socket and
    an inherited one (what C{systemd:} adopts), each checked on the
    listening socket and on a connection it accepted (raw TCP: no TLS
    handshake or PROXY header is needed to be accepted).
    """

    def _serve(self, description, reusePort=False, endpoint=None):
        from primed.tap import _serverEndpoint

        if endpoint is None:
            endpoint = _serverEndpoint(self.reactor, description)
        service = PrimedService(
            self.reactor, [(description, endpoint)], [], threads=1,
            threadpool=HandDrivenPool(), reusePort=reusePort,
        )
        service.privilegedStartService()
        self.addCleanup(service._stopListening)
        [port] = service.tcpPorts
        self.assertEqual(port.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
        host = port.getHost()
        client = socket.create_connection((host.host, host.port))
        self.clients.append(client)
        for _ in range(100):
            if service.factory.protocols:
                break
            self.reactor.doPoll(0.1)
        [protocol] = service.factory.protocols
        transport = protocol.transport
        while not isinstance(transport, tcp.Server):  # under TLS, PROXY layers
            transport = transport.transport
        accepted = transport.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        self.assertEqual(accepted, 1)
        self.assertEqual(self.flushLoggedErrors(), [])

    def _ssl(self, port="0", interface="127.0.0.1"):
        return (f"ssl:{port}:interface={interface}:privateKey={self.paths['key']}"
                f":certKey={self.paths['cert']}")

    def test_tcp6(self):
        self._serve("tcp6:0:interface=\\:\\:1")

    def test_ssl(self):
        self._serve(self._ssl())

    def test_haproxyTCP(self):
        self._serve("haproxy:tcp:0:interface=127.0.0.1")

    def test_haproxySSL(self):
        self._serve("haproxy:" + self._ssl())

    def test_reusePort(self):
        self._serve("tcp:0:interface=127.0.0.1", reusePort=True)
        self._serve(self._ssl(), reusePort=True)

    def test_inherited(self):
        from twisted.internet.endpoints import AdoptedStreamServerEndpoint

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(5)
        sock.setblocking(False)
        fd = os.dup(sock.fileno())
        sock.close()
        self._serve(
            "systemd:domain=INET:index=0",
            endpoint=AdoptedStreamServerEndpoint(self.reactor, fd, socket.AF_INET),
        )
