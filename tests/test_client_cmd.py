"""
The C{primed-client} command (L{primed.client.cmd}): option parsing, the run
over a fake UDP reactor, and over TCP and TLS against a primed service in
this process on loopback.
"""

from twisted.internet import defer
from twisted.python import usage
from twisted.trial import unittest

from fakes import FakeUDPReactor
from support import CertificatesMixin
from primed import client
from primed.client import cmd as clientcmd
from primed.client.cmd import Options


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

    def test_numbersBeforeParsing(self):
        """
        Options not parsed yet already hold an empty list of numbers (a
        caller building them by hand reads standard input).
        """
        self.assertEqual(Options()["numbers"], [])

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

    def test_negativeNumberAfterEveryValuedOption(self):
        """
        Every option taking a value takes the next argument, so a negative
        number after it is a number, not an unknown option.
        """
        for option, value in [("-H", "h"), ("--host", "h"), ("-p", "9"), ("--port", "9"),
                              ("-e", "tcp:h:9"), ("--endpoint", "tcp:h:9"), ("-t", "2"),
                              ("--timeout", "2"), ("-n", "1"), ("--retries", "1"),
                              ("--ca", "ca.pem"), ("--server-name", "s")]:
            options = Options()
            self.assertEqual(options._protectNegatives([option, value, "-5"]),
                             [option, value, "--", "-5"], option)

    def test_help(self):
        """
        C{--help} says what the command does, its exit statuses and every
        option (compared with the wrapping undone: Twisted wraps it).
        """
        text = " ".join(str(Options()).split())
        self.assertEqual(text, " ".join(
            "primed-client [options] [NUMBER ...] Options: "
            "-H, --host= Server address or name. [default: 127.0.0.1] "
            "--ca= With --tls: a PEM file of the CA certificates to trust. "
            "-e, --endpoint= A Twisted client endpoint string (tcp:, unix:, "
            "tls:HOST:PORT:trustRoots=DIR) instead of --host and --port; TCP only. "
            "--help Display this help and exit. "
            "-n, --retries= Over UDP, attempts after the first before giving up. Over TCP, "
            "after a lost connection: attempts in a row to connect again and resend what it "
            "had not answered (at once, then after 0.5, 1, 2, 4, then 5 s), before giving "
            "up. [default: 3] "
            "--no-progress Never show the progress line. "
            "-p, --port= Server port [default: 8809, or 8808 with --udp]. "
            "--progress Show a progress line on standard error (answered so far, rate, "
            "elapsed), redrawn up to ten times a second and erased at the end [default: "
            "when standard error is a terminal and the numbers come from standard input]. "
            "-r, --raw Print only the verdict letter: T, F or E. "
            "--server-name= With --tls: the name the certificate must carry, and the SNI "
            "sent [default: --host]. "
            "-t, --timeout= Seconds: over TCP, to connect and the longest silence while "
            "answers are owed [default: 10]; over UDP, per attempt [default: 1]. "
            "--tls Ask over TLS, verifying the server's certificate (against --ca, or the "
            "system's CAs) and its name (--server-name, or --host). "
            "-u, --udp Ask over UDP (default port 8808). "
            "--version Display the version and exit. "
            "Ask primed whether each NUMBER is prime; with no NUMBER, read them from "
            "standard input, one per line. Prints each input, a tab and 'prime', 'not "
            "prime' or 'invalid', in input order. Exit status: 0 if every input was "
            "answered, 1 if not (the output then stops at the first unanswered input, and "
            "one line on standard error says why), 2 for a usage error. Options go before "
            "the numbers.".split()))

    def test_argvByDefault(self):
        import sys

        self.patch(sys, "argv", ["primed-client", "-u", "17"])
        options = Options()
        options.parseOptions()
        self.assertEqual((options["udp"], options["numbers"]), (True, ["17"]))

    def test_documentedWindow(self):
        """
        docs/client.rst: "at most 256 requests in flight" over TCP.
        """
        import os

        readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "docs", "client.rst")
        with open(readme) as f:
            text = " ".join(f.read().split())
        self.assertIn("(at most %d requests in flight)" % clientcmd.TCP_WINDOW, text)
        self.assertEqual(clientcmd.TCP_WINDOW, 256)

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

    def test_tls(self):
        """
        C{--tls} verifies against C{--ca}'s certificates, by C{--host}'s name
        unless C{--server-name} gives another.
        """
        import shutil
        import tempfile

        from support import makeCertificates

        directory = tempfile.mkdtemp(prefix="primed-clientcmd-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        paths = makeCertificates(directory)
        options = self.parse("--tls", "--ca", paths["ca"], "-H", "localhost", "17")
        self.assertEqual(options.tlsOptions._hostname, "localhost")
        options = self.parse("--tls", "--ca", paths["ca"], "--server-name", "primed.example")
        self.assertEqual(options.tlsOptions._hostname, "primed.example")
        self.assertEqual(options.where(), "127.0.0.1:8809")
        options = self.parse("--tls")  # the system's CAs
        self.assertEqual(options.tlsOptions._hostname, "127.0.0.1")
        self.assertIsNone(self.parse("17").tlsOptions)
        for argv, message in (
            (["--tls", "--ca", paths["key"]], "no PEM certificate in it"),
            (["--tls", "--ca", directory + "/missing.pem"], "No such file or directory"),
            (["--ca", paths["ca"]], "--ca and --server-name go with --tls"),
            (["--server-name", "x"], "--ca and --server-name go with --tls"),
            (["--tls", "--udp"], "--tls is for --host/--port over TCP"),
            (["--tls", "--endpoint", "tcp:localhost:1"], "--tls is for --host/--port over TCP"),
            (["--endpoint", "tls:localhost:1:trustRoots=" + directory + "/missing"],
             "trustRoots is not a directory"),
        ):
            with self.assertRaises(usage.UsageError) as caught:
                self.parse(*argv)
            self.assertIn(message, str(caught.exception))
        # Negative numbers after the new valued options are still numbers.
        self.assertEqual(self.parse("--tls", "--server-name", "x", "-5")["numbers"], ["-5"])

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


    def test_usageErrorWords(self):
        """
        Each usage error says which option is wrong and why.
        """
        for argv, message in [
            (["--port", "x"], "--port: not a number: 'x'"),
            (["--port", "1"], None),
            (["--port", "0"], "--port must be between 1 and 65535"),
            (["--timeout", "x"], "--timeout: not a number: 'x'"),
            (["--timeout", "0"], "--timeout must be a positive number of seconds"),
            (["--retries", "x"], "--retries: not a number: 'x'"),
            (["--retries", "-1"], "--retries must be 0 or more"),
            (["--udp", "--endpoint", "tcp:h:1"],
             "--endpoint is for TCP; use --host with --udp"),
            (["--endpoint", "tcp:h:1", "--port", "2"],
             "give either --endpoint or --host/--port"),
            (["--udp", "--tls"],
             "--tls is for --host/--port over TCP (or give --endpoint tls:...)"),
            (["--ca", "x.pem"], "--ca and --server-name go with --tls"),
            (["--tls", "--ca", "/nonexistent/ca.pem"],
             "--ca /nonexistent/ca.pem: No such file or directory"),
            (["--tls", "--ca", "/dev/null"], "--ca /dev/null: no PEM certificate in it"),
        ]:
            if message is None:
                self.assertEqual(self.parse(*argv)["port"], 1)
                continue
            error = self.assertRaises(usage.UsageError, self.parse, *argv)
            self.assertEqual(str(error), message, argv)
        error = self.assertRaises(usage.UsageError, self.parse, "--endpoint", "nonsense:1")
        self.assertTrue(str(error).startswith("--endpoint 'nonsense:1': "), str(error))


class MoreOptionsTests(unittest.TestCase):
    """
    The options' rarer answers: C{--version}, and the reasons an endpoint,
    a CA file or a server name is refused.
    """

    def parse(self, *argv):
        options = Options()
        options.parseOptions(list(argv))
        return options

    def refused(self, *argv):
        return str(self.assertRaises(usage.UsageError, self.parse, *argv))

    def version(self, installed):
        """
        C{--version}'s exit status and output, primed's version being
        C{installed} (L{None}: not installed).

        Only primed's version is faked, and only while the option runs:
        pytest itself asks for others' versions when it reports a failure
        (a fake refusing those made a failing test pass).
        """
        import io
        import sys
        from importlib import metadata

        real = metadata.version

        def version(name):
            if name != "primed":
                return real(name)
            if installed is None:
                raise metadata.PackageNotFoundError(name)
            return installed

        out = io.StringIO()
        stdout = sys.stdout
        metadata.version, sys.stdout = version, out
        try:
            with self.assertRaises(SystemExit) as caught:
                self.parse("--version", "17")
        finally:
            metadata.version, sys.stdout = real, stdout
        return caught.exception.code, out.getvalue()

    def test_version(self):
        """
        C{--version}: the installed distribution's version, status 0.
        """
        self.assertEqual(self.version("9.8.7"), (0, "primed-client 9.8.7\n"))

    def test_versionNotInstalled(self):
        self.assertEqual(self.version(None), (0, "primed-client (not installed)\n"))

    def test_endpointErrorWithoutText(self):
        """
        An endpoint parser's exception with no text is named by its type;
        Twisted's unreadable C{trustRoots} directory, by what it means.
        """
        from twisted.internet import endpoints

        def clientFromString(reactor, description):
            raise KeyError()

        self.patch(endpoints, "clientFromString", clientFromString)
        self.assertEqual(self.refused("-e", "x:1"), "--endpoint 'x:1': KeyError")

    def test_endpointUnlistableTrustRoots(self):
        self.assertEqual(
            self.refused("-e", "tls:localhost:1:trustRoots=/nonexistent"),
            "--endpoint 'tls:localhost:1:trustRoots=/nonexistent': "
            "trustRoots is not a directory that can be read",
        )

    def test_endpointErrorText(self):
        self.assertEqual(
            self.refused("-e", "tcp:localhost:1:timeout=x"),
            "--endpoint 'tcp:localhost:1:timeout=x': invalid literal for int() with base 10: 'x'",
        )

    def test_caNotACertificate(self):
        """
        A C{--ca} file with a PEM block that is not a certificate is refused
        with the reason, not a traceback.
        """
        import os
        import tempfile

        fd, path = tempfile.mkstemp(suffix=".pem")
        self.addCleanup(os.remove, path)
        with os.fdopen(fd, "wb") as f:
            f.write(b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
        message = self.refused("--tls", "--ca", path)
        self.assertTrue(message.startswith(f"--ca {path}: "), message)
        self.assertGreater(len(message), len(f"--ca {path}: "))

    def test_tlsWithoutPyOpenSSL(self):
        """
        C{--tls} without pyOpenSSL (Twisted's C{tls} extra) is a usage
        error that says what is missing.
        """
        import sys

        import twisted.internet
        import twisted.internet.ssl  # imported, to be hidden

        # In place: the import system holds the dict itself, and a
        # submodule already imported is found as its package's attribute.
        self.addCleanup(setattr, twisted.internet, "ssl", twisted.internet.ssl)
        self.addCleanup(sys.modules.__setitem__, "twisted.internet.ssl",
                        sys.modules["twisted.internet.ssl"])
        del twisted.internet.ssl
        sys.modules["twisted.internet.ssl"] = None
        message = self.refused("--tls")
        self.assertTrue(message.startswith("--tls needs pyOpenSSL: "), message)

    def test_serverNameRefused(self):
        self.assertEqual(
            self.refused("--tls", "--server-name", "a..b"), "--server-name 'a..b': Empty Label"
        )


class MainTests(unittest.TestCase):
    """
    L{clientcmd.main}'s usage errors: one line and a hint on standard
    error, status 2.
    """

    def test_usageError(self):
        import io
        import sys

        err = io.StringIO()
        self.patch(sys, "stderr", err)
        with self.assertRaises(SystemExit) as caught:
            clientcmd.main(["--port", "x"])
        self.assertEqual(caught.exception.code, 2)
        self.assertEqual(
            err.getvalue(),
            "primed-client: --port: not a number: 'x'\nTry 'primed-client --help'.\n",
        )

    def command(self, argv, status):
        """
        Run L{clientcmd.main}'s command as C{task.react} would, with
        L{clientcmd.run} answering C{status}: return what C{run} was given,
        and how the command ended.
        """
        import sys

        from twisted.internet import task

        calls, reacted, opened = [], [], []
        self.patch(task, "react", reacted.append)

        async def run(*args):
            calls.append(args)
            return status

        self.patch(clientcmd, "run", run)

        def open_(*args, **kwargs):
            opened.append((args, kwargs))
            return "the stdout stream"

        clientcmd.open = open_  # found before the builtin
        self.addCleanup(delattr, clientcmd, "open")
        clientcmd.main(argv)
        [command] = reacted
        reactor = FakeUDPReactor()
        reactor.callWhenRunning = lambda f, *a: self.whenRunning.append(f)
        self.whenRunning = []
        d = defer.ensureDeferred(command(reactor))
        [(given, options, stdin, stdout, stderr)] = calls
        self.assertIs(given, reactor)
        self.assertEqual(options["numbers"], argv)
        self.assertEqual((stdin, stdout, stderr), (0, "the stdout stream", sys.stderr))
        [((fd, mode), kwargs)] = opened
        self.assertEqual((fd, mode, kwargs["closefd"]), (1, "wb", False))
        self.assertEqual(self.whenRunning, [clientcmd._defaultSignals])
        return d

    def test_commandSucceeds(self):
        """
        The console script reads numbers from descriptor 0 and writes
        answers to descriptor 1 (without closing it); status 0 ends the
        reactor quietly.
        """
        self.assertIsNone(self.successResultOf(self.command(["17"], 0)))

    def test_commandFails(self):
        failure = self.failureResultOf(self.command(["17"], 1), SystemExit)
        self.assertEqual(failure.value.code, 1)

    def test_runAsModule(self):
        """
        C{python -m primed.client.cmd} is the command too.
        """
        import os
        import subprocess
        import sys

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        done = subprocess.run(
            [sys.executable, "-m", "primed.client.cmd", "--port", "x"],
            cwd=root, capture_output=True, text=True, timeout=60,
        )
        self.assertEqual((done.returncode, done.stdout), (2, ""))
        self.assertEqual(done.stderr.splitlines()[0], "primed-client: --port: not a number: 'x'")

    def test_defaultSignals(self):
        """
        SIGINT and SIGTERM kill the command, as they kill C{cat}.
        """
        import signal

        for number in (signal.SIGINT, signal.SIGTERM):
            self.addCleanup(signal.signal, number, signal.getsignal(number))
            signal.signal(number, signal.SIG_IGN)
        clientcmd._defaultSignals()
        self.assertEqual(
            (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)),
            (signal.SIG_DFL, signal.SIG_DFL),
        )


class TLSHintTests(unittest.TestCase):
    """
    The advice added to the error line when the server may speak TLS.
    """

    def hint(self, error, *argv):
        options = Options()
        options.parseOptions([*argv, "17"])
        return clientcmd._tlsHint(error, options)

    def test_hints(self):
        from primed.client.base import PrimedClosed, notAVerdict

        alert = notAVerdict(b"\x15\x03\x01\x00\x02\x02\n")
        http = notAVerdict(b"HTTP/1.1 400 Bad Request\r\n")
        closed = PrimedClosed()
        for error, argv, hint in [
            (alert, [], ": try --tls"),
            (closed, [], "; if it expects TLS, try --tls"),
            (http, [], ""),
            (Exception("no reply for 10 s"), [], ""),
            (alert, ["--endpoint", "tcp:127.0.0.1:8443"], ": give a tls: endpoint"),
            (closed, ["--endpoint", "unix:/tmp/primed.sock"],
             "; if it expects TLS, give a tls: endpoint"),
            (alert, ["--endpoint", "tls:localhost:8443"], ""),
            (closed, ["--tls"], ""),
            (closed, ["--udp"], ""),
        ]:
            self.assertEqual(self.hint(error, *argv), hint, (error, argv))


class RunCommandTests(unittest.TestCase):
    """
    L{clientcmd.run}, the command after option parsing, over the fake UDP
    reactor: no sockets, no clock but L{task.Clock}.
    """

    def run_(self, *argv):
        import io

        options = Options()
        options.parseOptions(["--udp", "--timeout", "1", "--retries", "1", *argv])
        self.reactor = FakeUDPReactor()
        self.stdout, self.stderr = io.BytesIO(), io.StringIO()
        return defer.ensureDeferred(
            clientcmd.run(self.reactor, options, None, self.stdout, self.stderr)
        )

    def test_answersInInputOrder(self):
        d = self.run_("17", "4j", "18")
        for port, reply in reversed(list(zip(self.reactor.ports, [b"T\n", b"E\n", b"F\n"]))):
            port.reply(reply)
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(self.stdout.getvalue(), b"17\tprime\n4j\tinvalid\n18\tnot prime\n")
        self.assertEqual(self.stderr.getvalue(), "")

    def test_udpWindow(self):
        """
        Over UDP at most L{clientcmd.UDP_WINDOW} (64) requests, each a
        socket, are in flight; an answer lets the next one go.
        """
        d = self.run_(*[str(n) for n in range(100)])
        self.assertEqual(len(self.reactor.ports), 64)
        self.reactor.ports[0].reply(b"F\n")
        self.assertEqual(len(self.reactor.ports), 65)
        for port in self.reactor.ports[1:]:
            port.reply(b"F\n")
        for port in self.reactor.ports[65:]:
            port.reply(b"F\n")
        self.assertEqual(self.successResultOf(d), 0)

    def test_raw(self):
        """
        C{--raw}: the letter of each verdict, all three, in input order.
        """
        d = self.run_("--raw", "17", "18", "4j", "19")
        for port, reply in zip(self.reactor.ports, [b"T\n", b"F\n", b"E\n", b"T\n"]):
            port.reply(reply)
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(self.stdout.getvalue(), b"T\nF\nE\nT\n")

    def test_plain(self):
        d = self.run_("17", "18", "4j", "19")
        for port, reply in zip(self.reactor.ports, [b"T\n", b"F\n", b"E\n", b"T\n"]):
            port.reply(reply)
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(
            self.stdout.getvalue(),
            b"17\tprime\n18\tnot prime\n4j\tinvalid\n19\tprime\n",
        )

    def test_udpTooLongEchoedShortened(self):
        """
        Over UDP an input too long for a datagram is answered invalid and
        echoed as its first 40 bytes and an ellipsis, as docs/client.rst says
        and as an over-long line is over TCP.
        """
        big = "9" * 70000
        d = self.run_("17", big, "18")
        self.reactor.ports[0].reply(b"T\n")
        self.reactor.ports[2].reply(b"F\n")
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(
            self.stdout.getvalue().decode(),
            "17\tprime\n" + "9" * 40 + "\N{HORIZONTAL ELLIPSIS}\tinvalid\n18\tnot prime\n",
        )

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


class RunProgressTests(RunCommandTests.__bases__[0]):
    run_ = RunCommandTests.run_

    def test_progressErasedBeforeError(self):
        """
        C{--progress}: the line counts the answers printed (4's waits for
        3's, which never comes); the error line comes after the line is
        erased, and no timer is left.
        """
        d = self.run_("--progress", "2", "3", "4")
        self.reactor.ports[0].reply(b"T\n")
        self.reactor.ports[2].reply(b"F\n")
        self.reactor.pump([0.1])
        self.assertRegex(self.stderr.getvalue(), r"^\r1 answered, [0-9,]+/s, 0:00$")
        self.reactor.pump([0.9, 1.0])
        self.assertEqual(self.successResultOf(d), 1)
        drawn, error = self.stderr.getvalue().rsplit("\r", 1)
        self.assertRegex(drawn, r"1 answered, .*\r +$")
        self.assertEqual(
            error, "primed-client: 127.0.0.1:8808: no reply after 2 attempts of 1 s each\n"
        )
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class RunOverTCPTests(CertificatesMixin, unittest.TestCase):
    """
    L{clientcmd.run} over TCP and TLS against a real primed service in this
    process, on loopback: what it prints, what it says when it cannot, and
    its exit status.
    """

    def setUp(self):
        from twisted.internet import reactor

        from primed import tap

        self.reactor = reactor
        config = tap.Options()
        config.parseOptions(
            ["--listen", "tcp:0:interface=127.0.0.1",
             "--listen", f"ssl:0:interface=127.0.0.1:privateKey={self.paths['key']}"
             f":certKey={self.paths['cert']}", "--no-udp", "--threads", "1"]
        )
        top = tap.makeService(config, reactor)
        top.startService()
        self.addCleanup(top.stopService)
        ports = top.getServiceNamed("primed").tcpPorts
        self.port, self.tlsPort = (p.getHost().port for p in ports)

    async def run_(self, *argv, stdin=None, stdout=None):
        import io

        options = Options()
        options.parseOptions(list(argv))
        self.stdout = io.BytesIO() if stdout is None else stdout
        self.stderr = io.StringIO()
        return await clientcmd.run(self.reactor, options, stdin, self.stdout, self.stderr)

    def freePort(self):
        """
        A loopback port nothing listens on (a refused connection).
        """
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def pipe(self, data):
        """
        A descriptor to read C{data} from, as standard input.
        """
        import os

        readFd, writeFd = os.pipe()
        self.addCleanup(os.close, readFd)
        os.write(writeFd, data)
        os.close(writeFd)
        return readFd

    async def test_numbers(self):
        status = await self.run_("-p", str(self.port), "17", "18", "4j", "-5")
        self.assertEqual((status, self.stderr.getvalue()), (0, ""))
        self.assertEqual(
            self.stdout.getvalue(), b"17\tprime\n18\tnot prime\n4j\tinvalid\n-5\tnot prime\n"
        )

    async def test_endpoint(self):
        status = await self.run_("--raw", "-e", f"tcp:127.0.0.1:{self.port}", "17", "18")
        self.assertEqual((status, self.stdout.getvalue()), (0, b"T\nF\n"))

    async def test_tls(self):
        """
        C{--tls} goes through TLS, verifying the server by C{--ca} and the
        name: a server it cannot trust is a connection failure, said so.
        """
        status = await self.run_(
            "--tls", "--ca", self.paths["ca"], "-H", "localhost", "-p", str(self.tlsPort), "17"
        )
        self.assertEqual((status, self.stdout.getvalue()), (0, b"17\tprime\n"))
        status = await self.run_(
            "--tls", "--ca", self.paths["other-ca"], "-p", str(self.tlsPort), "17"
        )
        self.assertEqual((status, self.stdout.getvalue()), (1, b""))
        self.assertEqual(
            self.stderr.getvalue(),
            f"primed-client: cannot connect to 127.0.0.1:{self.tlsPort}: TLS: certificate"
            " not trusted (unable to get local issuer certificate)\n",
        )

    async def test_caFileOfSeveral(self):
        """
        Every certificate in the C{--ca} file is trusted, not only the first.
        """
        import os

        both = os.path.join(self.directory, "both.pem")
        with open(both, "wb") as f:
            for name in ("other-ca", "ca"):
                with open(self.paths[name], "rb") as ca:
                    f.write(ca.read())
        status = await self.run_(
            "--tls", "--ca", both, "-H", "localhost", "-p", str(self.tlsPort), "18"
        )
        self.assertEqual((status, self.stdout.getvalue()), (0, b"18\tnot prime\n"))

    async def test_stdin(self):
        """
        With no numbers on the command line, they are read from C{stdin},
        a line each.
        """
        status = await self.run_("-p", str(self.port), stdin=self.pipe(b"17\r\n4j\n\n18"))
        self.assertEqual((status, self.stderr.getvalue()), (0, ""))
        self.assertEqual(
            self.stdout.getvalue(), b"17\tprime\n4j\tinvalid\n\tinvalid\n18\tnot prime\n"
        )

    async def test_stdinUnreadable(self):
        """
        Standard input that cannot be read (a directory): status 1, and why.
        """
        import os

        fd = os.open(self.directory, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        status = await self.run_("-p", str(self.port), stdin=fd)
        self.assertEqual((status, self.stdout.getvalue()), (1, b""))
        self.assertEqual(
            self.stderr.getvalue(),
            "primed-client: cannot read standard input: Is a directory\n",
        )

    async def test_refused(self):
        port = self.freePort()
        status = await self.run_("-p", str(port), "17")
        self.assertEqual((status, self.stdout.getvalue()), (1, b""))
        self.assertEqual(
            self.stderr.getvalue(),
            f"primed-client: cannot connect to 127.0.0.1:{port}: Connection refused\n",
        )

    async def test_refusedIPv6Where(self):
        port = self.freePort()
        status = await self.run_("-H", "::1", "-p", str(port), "17")
        self.assertEqual(status, 1)
        self.assertTrue(
            self.stderr.getvalue().startswith(f"primed-client: cannot connect to [::1]:{port}: "),
            self.stderr.getvalue(),
        )

    async def test_outputFull(self):
        """
        Standard output that cannot be written (a full disk): status 1, and
        why on standard error.
        """
        import errno

        class Full:
            def write(self, data):
                raise OSError(errno.ENOSPC, "No space left on device")

            def flush(self):
                pass

            def fileno(self):
                raise ValueError("no descriptor")

        status = await self.run_("-p", str(self.port), "17", "18", stdout=Full())
        self.assertEqual(status, 1)
        self.assertEqual(
            self.stderr.getvalue(),
            "primed-client: cannot write standard output: No space left on device\n",
        )

    async def test_readerGone(self):
        """
        A reader gone away (C{| head}): status 1, quietly.
        """

        class Gone:
            def write(self, data):
                raise BrokenPipeError()

            def flush(self):
                pass

            def fileno(self):
                raise ValueError("no descriptor")

        status = await self.run_("-p", str(self.port), "17", "18", stdout=Gone())
        self.assertEqual((status, self.stderr.getvalue()), (1, ""))

    async def test_closesTheConnection(self):
        """
        The connection is closed once the run is over: the server sees it
        go.
        """
        from primed.client import PrimedClient

        made = []
        original = PrimedClient.connect

        def connect(client):
            made.append(client)
            return original(client)

        self.patch(PrimedClient, "connect", connect)
        status = await self.run_("-p", str(self.port), "17")
        self.assertEqual(status, 0)
        [client] = made
        self.assertIsNone(client.protocol)
        self.assertTrue(client._closed)
