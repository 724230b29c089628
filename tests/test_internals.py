"""
L{primed.internals}: every private Twisted name primed uses is looked up at
import; when one is missing, primed falls back to Twisted's public path
with one warning at start naming it, or refuses the feature with one line
naming the Twisted it needs.  The missing names are simulated: deleted from
Twisted in a child Python before primed is imported, which then serves (or
refuses) for real on loopback.
"""

import json
import subprocess
import sys
import tempfile

from support import makeCertificates
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial import unittest

from primed import fastpath, internals

# The child: delete the names given as MODULE:ATTR.PATH (MODULE:CLASS().ATTR:
# an attribute its __init__ sets) while primed's modules are imported, then
# put them back (Twisted's own code uses some of them, where a Twisted
# without them would not), then parse primed's
# options (after "--"), serve, ask over TCP and UDP, stop, and print what
# happened as JSON.
_CHILD = r"""
import importlib, json, socket, sys, threading
cut = sys.argv.index("--")
restore = []
for spec in sys.argv[1:cut]:
    module, path = spec.split(":")
    owner = importlib.import_module(module)
    *parents, last = path.split(".")
    for name in parents:
        owner = getattr(owner, name.rstrip("()"))
    if parents and parents[-1].endswith("()"):
        def init(self, *a, __init__=owner.__init__, __last=last, **k):
            __init__(self, *a, **k)
            delattr(self, __last)
        restore.append((owner, "__init__", owner.__init__))
        owner.__init__ = init
    else:
        restore.append((owner, last, getattr(owner, last)))
        delattr(owner, last)
import primed.fastpath, primed.reactor, primed.service, primed.signals, primed.tap, primed.tls
for owner, name, value in restore:
    setattr(owner, name, value)
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
warnings = []
globalLogPublisher.addObserver(
    lambda e: warnings.append(formatEvent(e)) if e.get("log_level") == LogLevel.warn else None)
from twisted.python import usage
from primed import tap
config = tap.Options()
try:
    config.parseOptions(sys.argv[cut + 1:])
except usage.UsageError as e:
    print(json.dumps({"refused": str(e)}))
    sys.exit(0)
from twisted.internet import reactor
from twisted.internet.epollreactor import EPollReactor
top = tap.makeService(config, reactor)
top.startService()
primed = top.getServiceNamed("primed")
answers = {}
def ask():
    try:
        host = primed.tcpPorts[0].getHost()
        with socket.create_connection((host.host, host.port), timeout=10) as s:
            s.sendall(b"17\n18\n")
            s.shutdown(socket.SHUT_WR)
            answers["tcp"] = s.makefile("rb").read().decode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(10)
            s.sendto(b"17\n", ("127.0.0.1", primed.udpPorts[0].getHost().port))
            answers["udp"] = s.recv(10).decode()
    except Exception as e:
        answers["error"] = repr(e)
    finally:
        reactor.callFromThread(reactor.stop)
reactor.callWhenRunning(reactor.callInThread, ask)
reactor.run(installSignalHandlers=False)
print(json.dumps({
    "warnings": warnings,
    "answers": answers,
    "twistedMainLoop": type(reactor).__name__ != "PrimedReactor"
        or reactor.mainLoop.__func__ is EPollReactor.mainLoop,
    "twistedDoPoll": reactor.doPoll.__func__ is EPollReactor.doPoll,
    "udpPort": type(primed.udpPorts[0]).__module__ + "." + type(primed.udpPorts[0]).__name__,
}))
"""

_SERVE = ["--listen", "tcp:0:interface=127.0.0.1", "--udp", "127.0.0.1:0"]


def runWithout(names, args=_SERVE) -> dict:
    """
    Run the child with C{names} deleted from Twisted; what it printed.
    """
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, *names, "--", *args],
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


class LookupTests(unittest.TestCase):
    """
    L{internals.lookup}, L{internals.present}, L{internals.require} and
    L{internals.warnMissing} on names made up for the test.
    """

    def setUp(self):
        saved = dict(internals._missing)
        self.addCleanup(lambda: (internals._missing.clear(), internals._missing.update(saved)))
        internals._missing.clear()

    def test_found(self):
        from twisted.internet import base

        found = internals.lookup("twisted.internet.base", "ReactorBase.callLater", "never")
        self.assertIs(found, base.ReactorBase.callLater)
        self.assertEqual(internals.missing(), [])

    def test_foundFalse(self):
        """
        A name whose value is false (an empty dictionary) is present.
        """

        class Probe:
            _empty: dict = {}

        found = internals.lookup("m", "Probe._empty", "never", Probe())
        self.assertEqual(found, {})
        self.assertTrue(internals.present(found))

    def test_missing(self):
        gone = internals.lookup("twisted.internet.base", "ReactorBase._noSuchName", "it falls back")
        noModule = internals.lookup("twisted.noSuchModule", "x", None)
        onInstance = internals.lookup("m", "C._attr", "instead", object())
        self.assertFalse(gone or noModule or onInstance)
        self.assertFalse(internals.present(1, gone))
        self.assertFalse(internals.present(noModule))
        self.assertFalse(internals.present(onInstance))
        self.assertEqual(
            internals.missing(),
            [("twisted.internet.base.ReactorBase._noSuchName", "it falls back"),
             ("twisted.noSuchModule.x", None),
             ("m.C._attr", "instead")],
        )

    def test_warnOnce(self):
        """
        One warning names every missing name primed falls back from, and
        what it does instead; the refused ones are left to L{require}.
        """
        internals.lookup("m", "a", "A is slower")
        internals.lookup("m", "b", "B is slower")
        internals.lookup("m", "c", None)
        events = []
        self.assertTrue(internals.warnMissing(Logger(observer=events.append)))
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["log_level"], LogLevel.warn)
        text = formatEvent(events[0])
        self.assertIn("m.a missing, so A is slower; m.b missing, so B is slower", text)
        self.assertIn(internals.TESTED, text)
        self.assertNotIn("m.c", text)

    def test_noWarning(self):
        events = []
        self.assertFalse(internals.warnMissing(Logger(observer=events.append)))
        self.assertEqual(events, [])

    def test_require(self):
        internals.require([1, {}], "anything")  # nothing missing: no error
        gone = internals.lookup("m", "gone", None)
        e = self.assertRaises(RuntimeError, internals.require, [1, gone], "A feature")
        self.assertEqual(len(str(e).splitlines()), 1)
        self.assertIn(f"A feature needs {internals.TESTED}", str(e))
        self.assertIn("lacks m.gone", str(e))


class FastPathFallbackTests(unittest.TestCase):
    """
    Without the transports' private attributes, L{fastpath}'s writers are
    the transports' own C{write}.
    """

    def test_stream(self):
        from twisted.internet import tcp

        transport = tcp.Connection.__new__(tcp.Connection)
        transport.write = StringTransport().write
        transport.fileno = lambda: -1
        self.assertIsNot(fastpath.streamWriter(transport), transport.write)  # writeNow
        self.patch(fastpath, "STREAM", False)
        self.assertIs(fastpath.streamWriter(transport), transport.write)

    def test_datagram(self):
        from twisted.internet import udp

        port = udp.Port(0, None, reactor=object())
        port.socket = StringTransport()
        port.socket.sendto = object()
        self.assertIs(fastpath.datagramWriter(port), port.socket.sendto)
        self.patch(fastpath, "DATAGRAM", False)
        self.assertEqual(fastpath.datagramWriter(port), port.write)

    def test_probeFails(self):
        """
        A transport Twisted no longer builds without a reactor counts as
        missing its attributes.
        """
        self.assertIsNone(fastpath._probe(lambda: 1 / 0))


class MissingNameTests(unittest.TestCase):
    """
    A child Python with private Twisted names deleted serves TCP and UDP on
    Twisted's public path, with one warning naming them, or refuses a
    listener with one line.
    """

    def test_nothingMissing(self):
        result = runWithout([])
        self.assertEqual(result["answers"], {"tcp": "T\nF\n", "udp": "T\n"})
        self.assertEqual(result["warnings"], [])
        self.assertFalse(result["twistedMainLoop"])
        self.assertEqual(result["udpPort"], "primed.reactor.DatagramPort")

    def test_topHandler(self):
        """
        Twisted before 24.7 has no C{_topHandler}: Twisted's main loop, one
        warning naming it (not "no epoll": primed's reactor still runs).
        """
        result = runWithout(["twisted.internet.base:_topHandler"])
        self.assertEqual(result["answers"], {"tcp": "T\nF\n", "udp": "T\n"})
        self.assertTrue(result["twistedMainLoop"])
        self.assertFalse(result["twistedDoPoll"])
        self.assertEqual(len(result["warnings"]), 1)
        self.assertIn("twisted.internet.base._topHandler missing, so the reactor runs "
                      "Twisted's main loop", result["warnings"][0])

    def test_udpErrors(self):
        result = runWithout(["twisted.internet.udp:_sockErrReadRefuse"])
        self.assertEqual(result["answers"], {"tcp": "T\nF\n", "udp": "T\n"})
        self.assertEqual(result["udpPort"], "twisted.internet.udp.Port")
        self.assertEqual(len(result["warnings"]), 1)
        self.assertIn("twisted.internet.udp._sockErrReadRefuse missing", result["warnings"][0])

    def test_severalOneWarning(self):
        result = runWithout(["twisted.internet.base:_topHandler",
                             "twisted.internet.base:ReactorBase._exitSignal"])
        self.assertEqual(result["answers"], {"tcp": "T\nF\n", "udp": "T\n"})
        self.assertEqual(len(result["warnings"]), 1)
        self.assertIn("_topHandler missing", result["warnings"][0])
        self.assertIn("ReactorBase._exitSignal missing, so a stop by signal exits with "
                      "status 0", result["warnings"][0])

    def test_tlsRefused(self):
        """
        No public path answers a TLS client that half-closes: an C{ssl:}
        listener is refused with one line naming the missing name and the
        Twisted primed needs.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(subprocess.run, ["rm", "-rf", directory])
        paths = makeCertificates(directory)
        listen = f"ssl:0:interface=127.0.0.1:privateKey={paths['key']}:certKey={paths['cert']}"
        result = runWithout(["twisted.protocols.tls:TLSMemoryBIOProtocol._flushReceiveBIO"],
                            ["--listen", listen])
        message = result["refused"]
        self.assertEqual(len(message.splitlines()), 1)
        self.assertIn(internals.TESTED, message)
        self.assertIn("twisted.protocols.tls.TLSMemoryBIOProtocol._flushReceiveBIO", message)
        # With the name there, the same listener serves.
        result = runWithout([], [*_SERVE, "--listen", listen])
        self.assertEqual(result["answers"], {"tcp": "T\nF\n", "udp": "T\n"})

    def test_reusePortRefused(self):
        """
        C{--reuseport} binds a socket of its own, from the endpoint's
        private host, port and backlog: refused without them, with one line.
        """
        result = runWithout(["twisted.internet.endpoints:TCP4ServerEndpoint()._backlog"],
                            [*_SERVE, "--reuseport"])
        self.assertIn("--reuseport needs", result["refused"])
        self.assertIn("TCP4ServerEndpoint._backlog", result["refused"])
        self.assertEqual(len(result["refused"].splitlines()), 1)

