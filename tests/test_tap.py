"""
Tests for L{primed.tap}: options, and what the service listens on (through
a L{MemoryReactor}).
"""

import os

from twisted.python import usage
from twisted.trial import unittest

from fakes import HandDrivenPool, ThreadlessReactor
from primed import tap


def parse(*args):
    options = tap.Options()
    options.parseOptions(list(args))
    return options


class OptionsTests(unittest.TestCase):
    def test_defaults(self):
        options = parse()
        self.assertEqual(options["listen"], ["tcp:8809:interface=127.0.0.1:backlog=1024"])
        self.assertEqual([repr(a) for a in options["udp"]], ["127.0.0.1:8808"])
        self.assertEqual(options["threads"], os.cpu_count())
        self.assertEqual(options["max-digits"], 4300)
        self.assertEqual(options["max-queued"], 64)
        self.assertEqual(options["max-inflight"], 1024)
        self.assertEqual(options["max-connections"], 1024)
        self.assertEqual(options["idle-timeout"], 300)
        self.assertEqual(options["drain-timeout"], 10)
        self.assertFalse(options["verbose"])
        self.assertEqual(options["max-connections-per-source"], 256)
        self.assertEqual(options["handshake-timeout"], 10)
        self.assertEqual(options["max-handshakes-per-source"], 50)
        self.assertEqual(options["verbose-rate"], 100)
        self.assertEqual(options["proxy-from"], [])
        self.assertEqual(options["metrics-timeout"], 2)

    def test_perSourceDefaultFollowsMaxConnections(self):
        """
        A quarter of --max-connections, at least 1; 0 (no limit) and other
        values as given.
        """
        self.assertEqual(parse("--max-connections", "100")["max-connections-per-source"], 25)
        self.assertEqual(parse("--max-connections", "3")["max-connections-per-source"], 1)
        self.assertEqual(parse("--max-connections-per-source", "0")["max-connections-per-source"], 0)
        self.assertEqual(parse("--max-connections-per-source", "7")["max-connections-per-source"], 7)

    def test_proxyFrom(self):
        options = parse("--proxy-from", "10.0.0.7", "--proxy-from", "2001:db8::/32")
        self.assertEqual([str(n) for n in options["proxy-from"]], ["10.0.0.7/32", "2001:db8::/32"])
        with self.assertRaises(usage.UsageError) as raised:
            parse("--proxy-from", "lb.example")
        self.assertIn("--proxy-from", str(raised.exception))

    def test_newLimitsInHelp(self):
        """
        Every limit of issue 21 is in --help with its default.
        """
        text = str(tap.Options())
        for option in ("--max-connections-per-source", "--handshake-timeout", "--proxy-from",
                       "--max-handshakes-per-source", "--verbose-rate",
                       "--metrics-timeout", "--verbose"):
            self.assertIn(option, text)
        self.assertIn("a quarter of --max-connections", " ".join(text.split()))
        self.assertIn("at most --verbose-rate lines a second", " ".join(text.split()))

    def test_givenValuesReplaceDefaults(self):
        options = parse("--listen", "tcp:1234", "--listen", "tcp6:1235:interface=\\:\\:1",
                        "--udp", "9999", "--udp", "[::1]:9998")
        self.assertEqual(options["listen"], ["tcp:1234", "tcp6:1235:interface=\\:\\:1"])
        self.assertEqual([(a.host, a.port) for a in options["udp"]], [("", 9999), ("::1", 9998)])

    def test_noUDP(self):
        self.assertEqual(parse("--no-udp")["udp"], [])

    def test_systemdUDP(self):
        (address,) = parse("--udp", "systemd:name=primed-udp")["udp"]
        self.assertEqual(address.systemdName, "primed-udp")

    def test_badValues(self):
        for args, option in [
            (["--threads", "0"], "threads"),
            (["--threads", "many"], "threads"),
            (["--max-digits", "-1"], "max-digits"),
            (["--idle-timeout", "-3"], "idle-timeout"),
            (["--handshake-timeout", "-1"], "handshake-timeout"),
            (["--max-connections-per-source", "-1"], "max-connections-per-source"),
            (["--drain-timeout", "nan"], "drain-timeout"),
            (["--listen", "tcp:notaport"], "listen"),
            (["--listen", "carrier-pigeon:1"], "listen"),
            (["--udp", "host:port"], "udp"),
            (["--udp", "70000"], "udp"),
            (["--udp", "systemd:fd=3"], "udp"),
            (["--udp", "[::1]"], "udp"),
            (["--udp", "[::1:8808"], "udp"),
            (["--udp", "::1]:8808"], "udp"),
            (["--udp", "::1:8808"], "udp"),
            (["--udp", "[]:8808"], "udp"),
            (["--udp", "localhost:8808"], "udp"),
            (["--idle-timeout", "nan"], "idle-timeout"),
            (["--proxy-timeout", "-1"], "proxy-timeout"),
            (["--proxy-max-header", "10"], "proxy-max-header"),
            (["--proxy-max-header", "big"], "proxy-max-header"),
            (["--max-queued-per-source", "-1"], "max-queued-per-source"),
        ]:
            error = self.assertRaises(usage.UsageError, parse, *args)
            self.assertIn(option, str(error), args)
            self.assertNotIn("enforcement", str(error), args)
            self.assertEqual(len(str(error).splitlines()), 1, args)

    def test_unescapedIPv6Interface(self):
        """
        Twisted's endpoint syntax splits on colons: an IPv6 interface must
        escape them, and the message says how.
        """
        for description in ["tcp6:8809:interface=::1", "tcp6:8809:interface=fe80::1:backlog=5"]:
            error = self.assertRaises(usage.UsageError, parse, "--listen", description)
            self.assertIn("interface=\\:\\:1", str(error))
        error = self.assertRaises(usage.UsageError, parse, "--listen",
                                  "tcp:notaport:interface=127.0.0.1:backlog=5")
        self.assertNotIn("IPv6", str(error))

    def test_helpHasNoRunsOfSpaces(self):
        """
        Help texts are single-spaced, however their docstrings are indented.
        """
        options = tap.Options()
        for name, doc in options.docs.items():
            self.assertNotIn("  ", doc or "", name)


class VersionTests(unittest.TestCase):
    """
    C{twistd primed --version}: primed's version (the installed
    distribution's, so it follows setup.cfg), then Twisted's.
    """

    def setupVersion(self):
        import configparser

        config = configparser.ConfigParser()
        config.read(os.path.join(os.path.dirname(__file__), os.pardir, "setup.cfg"))
        return config["metadata"]["version"]

    def expected(self):
        from importlib.metadata import version

        import twisted

        return f"primed {version('primed')}\nTwisted {twisted.__version__}\n"

    def test_option(self):
        import io
        import sys

        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        with self.assertRaises(SystemExit) as caught:
            parse("--version")
        self.assertEqual(caught.exception.code, 0)
        self.assertEqual(stdout.getvalue(), self.expected())
        self.assertIn(f"primed {self.setupVersion()}\n", stdout.getvalue())

    def test_notInstalled(self):
        import io
        import sys
        from importlib import metadata

        def missing(name):
            raise metadata.PackageNotFoundError(name)

        self.patch(metadata, "version", missing)
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        self.assertRaises(SystemExit, parse, "--version")
        self.assertTrue(stdout.getvalue().startswith("primed (not installed)\nTwisted "))

    def test_twistdAndTwist(self):
        """
        Both runners, as installed: the plugin's option, not the runner's.
        """
        import subprocess
        import sys

        from support import twistdCommand

        for argv in [twistdCommand() + ["primed", "--version"],
                     [sys.executable, "-m", "twisted", "primed", "--version"]]:
            result = subprocess.run(argv, capture_output=True, timeout=60,
                                    cwd=os.path.dirname(__file__))
            self.assertEqual((result.returncode, result.stdout.decode(), result.stderr),
                             (0, self.expected(), b""), argv)


class MakeServiceTests(unittest.TestCase):
    def test_listensOnDefaults(self):
        reactor = ThreadlessReactor()
        top = tap.makeService(parse(), reactor)
        primed = top.getServiceNamed("primed")
        primed.threadpool = HandDrivenPool()
        primed.ownsPool = False
        top.privilegedStartService()
        top.startService()
        ((port, factory, backlog, interface),) = reactor.tcpServers
        self.assertEqual((port, interface), (8809, "127.0.0.1"))
        self.assertIs(factory, primed.factory)
        ((udpPort, protocol, udpInterface, size),) = reactor.udpServers
        self.assertEqual((udpPort, udpInterface), (8808, "127.0.0.1"))
        self.assertEqual(primed.datagramProtocols, [protocol])
        served = self.successResultOf(primed.listening)
        self.assertEqual([kind for kind, where in served], ["TCP", "UDP"])

    def test_limitsReachTheProtocols(self):
        reactor = ThreadlessReactor()
        primed = tap.makeService(
            parse("--max-digits", "50", "--max-inflight", "3", "--max-queued", "5",
                  "--max-connections", "7", "--idle-timeout", "9", "--verbose",
                  "--threads", "1"),
            reactor,
        ).getServiceNamed("primed")
        self.assertEqual(primed.factory.maxDigits, 50)
        self.assertEqual(primed.factory.maxInflight, 3)
        self.assertEqual(primed.factory.maxConnections, 7)
        self.assertEqual(primed.factory.idleTimeout, 9)
        self.assertTrue(primed.factory.verbose)
        self.assertEqual(primed.checker.maxQueued, 5)
        self.assertEqual(primed.checker.maxQueuedPerSource, 1)  # a quarter, at least --threads
        top = tap.makeService(parse("--max-digits", "50"), reactor)
        top.privilegedStartService()
        (udp,) = top.getServiceNamed("primed").datagramProtocols
        self.assertEqual(udp.maxDigits, 50)

    def test_fairQueueOptions(self):
        """
        C{--max-queued-per-source} reaches the fair queue (0: a quarter of
        C{--max-queued}), which hands the pool one check per thread; the
        option is in C{--help} with its default.
        """
        reactor = ThreadlessReactor()
        primed = tap.makeService(
            parse("--max-queued", "40", "--max-queued-per-source", "7", "--threads", "3"),
            reactor,
        ).getServiceNamed("primed")
        self.assertEqual((primed.checker.maxQueued, primed.checker.maxQueuedPerSource), (40, 7))
        self.assertEqual(primed.checker.queue.concurrency, 3)
        primed = tap.makeService(parse("--max-queued", "40"), reactor).getServiceNamed("primed")
        self.assertEqual(primed.checker.maxQueuedPerSource, 10)
        self.assertIn("--max-queued-per-source=", str(tap.Options()))
        self.assertIn("a quarter of --max-queued", tap.Options().docs["max-queued-per-source"])

    def test_severalUDPPorts(self):
        """
        Each UDP port gets its own protocol (a protocol has one transport);
        they share the checker.
        """
        reactor = ThreadlessReactor()
        top = tap.makeService(parse("--udp", "127.0.0.1:8808", "--udp", "[::1]:8808"), reactor)
        top.privilegedStartService()
        primed = top.getServiceNamed("primed")
        self.assertEqual([(port, host) for port, _, host, _ in reactor.udpServers],
                         [(8808, "127.0.0.1"), (8808, "::1")])
        first, second = primed.datagramProtocols
        self.assertIsNot(first, second)
        self.assertIs(first.checker, second.checker)
        self.assertIsNot(first.transport, second.transport)
