"""
The C{primed-client} command: option parsing, the run over TCP or UDP, and
the console script.

The command reads numbers in a thread, keeps L{TCP_WINDOW} of them in flight
on one connection, and prints the answers in input order; its output is
always a prefix of its input, complete when the exit status is 0.
"""

import os
import re
import signal
import sys

from twisted.internet import endpoints, task
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python import usage
from twisted.python.failure import Failure

from primed.client import (
    DEFAULT_HOST,
    DEFAULT_RETRIES,
    DEFAULT_TCP_PORT,
    DEFAULT_TCP_TIMEOUT,
    DEFAULT_UDP_PORT,
    DEFAULT_UDP_TIMEOUT,
    PrimedClient,
    PrimedProtocolError,
    PrimedUDPClient,
)
from primed.client.base import describeError
from primed.client.io import InputError, Output, Run, StdinReader
from primed.client.progress import Progress

#: Requests the command keeps unanswered at once: enough to hide the round
#: trip, few enough to bound the memory of both ends.  A UDP request holds a
#: socket, hence the smaller figure.
TCP_WINDOW = 256
UDP_WINDOW = 64


class Options(usage.Options):
    synopsis = "primed-client [options] [NUMBER ...]"
    longdesc = (
        "Ask primed whether each NUMBER is prime; with no NUMBER, read them "
        "from standard input, one per line. Prints each input, a tab and "
        "'prime', 'not prime' or 'invalid', in input order. Exit status: 0 "
        "if every input was answered, 1 if not (the output then stops at the "
        "first unanswered input, and one line on standard error says why), "
        "2 for a usage error. Options go before the numbers."
    )

    optFlags = [
        ["udp", "u", f"Ask over UDP (default port {DEFAULT_UDP_PORT})."],
        ["raw", "r", "Print only the verdict letter: T, F or E."],
        [
            "progress",
            None,
            "Show a progress line on standard error (answered so far, rate, "
            "elapsed), redrawn up to ten times a second and erased at the end "
            "[default: when standard error is a terminal and the numbers come "
            "from standard input].",
        ],
        ["no-progress", None, "Never show the progress line."],
        [
            "tls",
            None,
            "Ask over TLS, verifying the server's certificate (against --ca, "
            "or the system's CAs) and its name (--server-name, or --host).",
        ],
    ]
    optParameters = [
        ["host", "H", DEFAULT_HOST, "Server address or name."],
        [
            "port",
            "p",
            None,
            f"Server port [default: {DEFAULT_TCP_PORT}, or {DEFAULT_UDP_PORT} with --udp].",
        ],
        [
            "endpoint",
            "e",
            None,
            "A Twisted client endpoint string (tcp:, unix:, "
            "tls:HOST:PORT:trustRoots=DIR) instead of --host and --port; "
            "TCP only.",
        ],
        ["ca", None, None, "With --tls: a PEM file of the CA certificates to trust."],
        [
            "server-name",
            None,
            None,
            "With --tls: the name the certificate must carry, and the SNI sent "
            "[default: --host].",
        ],
        [
            "timeout",
            "t",
            None,
            "Seconds: over TCP, to connect and the longest silence while "
            f"answers are owed [default: {DEFAULT_TCP_TIMEOUT:g}]; over UDP, per attempt "
            f"[default: {DEFAULT_UDP_TIMEOUT:g}].",
        ],
        [
            "retries",
            "n",
            str(DEFAULT_RETRIES),
            "Over UDP, attempts after the first before giving up. Over TCP, "
            "after a lost connection: attempts in a row to connect again and "
            "resend what it had not answered (at once, then after 0.5, 1, 2, "
            "4, then 5 s), before giving up.",
        ],
    ]

    # Options that take a value, for _protectNegatives.
    _valued = {"-H", "-p", "-e", "-t", "-n", "--host", "--port", "--endpoint",
               "--timeout", "--retries", "--ca", "--server-name"}

    def __init__(self):
        usage.Options.__init__(self)
        self["numbers"] = []

    def parseOptions(self, options=None):
        if options is None:
            options = sys.argv[1:]
        usage.Options.parseOptions(self, self._protectNegatives(list(options)))

    def _protectNegatives(self, arguments):
        """
        Let C{primed-client -5 17} mean numbers, not an unknown option C{-5}:
        insert C{--} before the first argument that looks like a negative
        number and is not an option's value.
        """
        index = 0
        while index < len(arguments):
            argument = arguments[index]
            if argument == "--" or not argument.startswith("-"):
                break
            if re.match(r"-[0-9]", argument):
                return arguments[:index] + ["--"] + arguments[index:]
            index += 2 if self._takesNext(argument) else 1
        return arguments

    def _takesNext(self, argument):
        """
        Whether option C{argument} takes the next argument as its value:
        C{--port}, C{-p}, or a cluster of short options ending in one that
        takes a value (C{-up}).  C{--port=1} and C{-p1} hold theirs.
        """
        if argument.startswith("--"):
            return argument in self._valued
        for position, letter in enumerate(argument[1:], 1):
            if "-" + letter in self._valued:
                return position == len(argument) - 1
        return False

    def opt_version(self):
        """
        Display the version and exit.
        """
        from importlib.metadata import PackageNotFoundError, version

        try:
            print("primed-client", version("primed"))
        except PackageNotFoundError:
            print("primed-client (not installed)")
        sys.exit(0)

    def parseArgs(self, *numbers):
        self["numbers"] = list(numbers)

    def postOptions(self):
        udp = self["udp"]
        if self["endpoint"] is not None:
            if udp:
                raise usage.UsageError("--endpoint is for TCP; use --host with --udp")
            if self["port"] is not None or self["host"] != DEFAULT_HOST:
                raise usage.UsageError("give either --endpoint or --host/--port")
            from twisted.internet import reactor

            try:
                endpoints.clientFromString(reactor, self["endpoint"])
            except Exception as e:  # the parsers raise anything at all
                reason = str(e) or type(e).__name__
                if type(e).__name__ == "UnlistableError":
                    reason = "trustRoots is not a directory that can be read"
                raise usage.UsageError(f"--endpoint {self['endpoint']!r}: {reason}") from e
        self["port"] = _number(
            "--port", self["port"], int, DEFAULT_UDP_PORT if udp else DEFAULT_TCP_PORT
        )
        if not 0 < self["port"] < 65536:
            raise usage.UsageError("--port must be between 1 and 65535")
        self["timeout"] = _number(
            "--timeout",
            self["timeout"],
            float,
            DEFAULT_UDP_TIMEOUT if udp else DEFAULT_TCP_TIMEOUT,
        )
        if not 0 < self["timeout"] < float("inf"):
            raise usage.UsageError("--timeout must be a positive number of seconds")
        self["retries"] = _number("--retries", self["retries"], int, DEFAULT_RETRIES)
        if self["retries"] < 0:
            raise usage.UsageError("--retries must be 0 or more")
        self.tlsOptions = None
        if self["tls"]:
            if udp or self["endpoint"] is not None:
                raise usage.UsageError(
                    "--tls is for --host/--port over TCP (or give --endpoint tls:...)"
                )
            self.tlsOptions = _tlsOptions(self["ca"], self["server-name"] or self["host"])
        elif self["ca"] is not None or self["server-name"] is not None:
            raise usage.UsageError("--ca and --server-name go with --tls")
        if self["progress"] and self["no-progress"]:
            raise usage.UsageError("give --progress or --no-progress, not both")

    def where(self):
        """
        The server, as the error messages name it.
        """
        if self["endpoint"] is not None:
            return self["endpoint"]
        return _hostPort(self["host"], self["port"])


def _tlsOptions(caFile, serverName):
    """
    Client TLS options verifying the server's certificate against the CA
    certificates in PEM file C{caFile} (the system's if L{None}) and its
    name against C{serverName}, as C{openssl s_client -CAfile FILE
    -verify_hostname NAME} or C{curl --cacert FILE} do.
    """
    try:
        from twisted.internet import ssl
    except ImportError as e:  # pragma: no cover (Twisted[tls] is required)
        raise usage.UsageError(f"--tls needs pyOpenSSL: {e}") from e
    trustRoot = None
    if caFile is not None:
        try:
            with open(caFile, "rb") as f:
                pem = f.read()
        except OSError as e:
            raise usage.UsageError(f"--ca {caFile}: {e.strerror}") from e
        blocks = re.findall(
            rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.S
        )
        if not blocks:
            raise usage.UsageError(f"--ca {caFile}: no PEM certificate in it")
        try:
            trustRoot = ssl.trustRootFromCertificates(
                [ssl.Certificate.loadPEM(block) for block in blocks]
            )
        except Exception as e:
            raise usage.UsageError(f"--ca {caFile}: {e}") from e
    try:
        return ssl.optionsForClientTLS(serverName, trustRoot)
    except Exception as e:  # an invalid name, say
        raise usage.UsageError(f"--server-name {serverName!r}: {e}") from e


def _number(name, text, kind, default):
    if text is None:
        return default
    try:
        return kind(text)
    except ValueError:
        raise usage.UsageError(f"{name}: not a number: {text!r}") from None



def _hostPort(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"



async def run(reactor, options, stdin, stdout, stderr) -> int:
    """
    The command, given parsed L{Options}.

    @param stdin: the descriptor to read numbers from when none were given.
    @param stdout: a binary stream for the answers.
    @param stderr: a text stream for the one-line error.
    @return: the exit status.
    """
    output = Output(stdout, options["raw"])
    where = options.where()
    if options["udp"]:
        client = PrimedUDPClient(
            reactor, options["host"], options["port"], options["timeout"], options["retries"]
        )

        def send(number, receiver):
            client.check(number).addCallbacks(receiver.callback, receiver.errback)

        window, connection = UDP_WINDOW, None
    else:
        # A lost connection is made again and what it had not answered is
        # resent (--retries); only the first connection fails at once.
        connection = PrimedClient(
            reactor, _endpoint(reactor, options), options["timeout"], options["retries"]
        )
        try:
            await connection.connect()
        except Exception as e:
            stderr.write(f"primed-client: cannot connect to {where}: {describeError(e)}\n")
            return 1
        send, window = connection.request, TCP_WINDOW

    def wantInput():
        if reader is not None:
            reader.more()

    reader = None
    progress = _progress(reactor, options, stdin, stdout, stderr, output)
    job = Run(send, window, output.write, output.flush, wantInput)
    if progress is not None:
        progress.count = lambda: job.answered
        progress.start()
    output.onBroken = lambda: job.fail(Failure(output.error or BrokenPipeError()))
    if options["numbers"]:
        job.feed([os.fsencode(number) for number in options["numbers"]])
        job.end()
    else:
        reader = StdinReader(reactor, stdin, job.feed, job.end, job.fail)
        reader.start()
        job.feed([])
    try:
        try:
            await job.finished
        finally:
            if progress is not None:
                progress.stop()
    except InputError as e:
        stderr.write(f"primed-client: {e}\n")
        return 1
    except Exception as e:
        if output.error is not None:
            reason = output.error.strerror or describeError(output.error)
            stderr.write(f"primed-client: cannot write standard output: {reason}\n")
        elif not output.broken:
            stderr.write(f"primed-client: {where}: {describeError(e)}{_tlsHint(e, options)}\n")
        return 1
    finally:
        if connection is not None:
            connection.close()
    return 1 if output.broken else 0


def _isDescriptorTerminal(fd) -> bool:
    try:
        return os.isatty(fd)
    except (TypeError, OSError):  # not a descriptor
        return False


def _isTerminal(stream) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):  # not a real descriptor
        return False


def _progress(reactor, options, stdin, stdout, stderr, output):
    """
    The progress line, if this run shows one: C{--progress}; or, unless
    C{--no-progress}, when standard error is a terminal and the numbers
    come from standard input (a long run: the arguments' are over at once).
    When standard output is a terminal too, each answer first erases the
    line, and each redraw first prints the answers.  When standard input is
    a terminal, the line waits for answers faster than anyone types
    (L{Progress}'s C{waitForFlow}), unless C{--progress}.
    """
    if options["no-progress"]:
        return None
    if not options["progress"] and (options["numbers"] or not _isTerminal(stderr)):
        return None
    typed = not options["progress"] and _isDescriptorTerminal(stdin)
    progress = Progress(reactor, stderr, lambda: 0, beforeDraw=output.flush,
                        waitForFlow=typed)
    if _isTerminal(stdout) and _isTerminal(stderr):
        output.shareTerminal(progress)
    return progress


def _tlsHint(e, options) -> str:
    """
    The advice to add to error C{e}'s line when the server may be speaking
    TLS to us in clear (see L{PrimedError.tlsHint}): C{--tls}, or a C{tls:}
    endpoint.
    """
    if not getattr(e, "tlsHint", False) or options["udp"] or options["tls"]:
        return ""
    if options["endpoint"] is not None:
        if options["endpoint"].startswith("tls:"):
            return ""
        advice = "give a tls: endpoint"
    else:
        advice = "try --tls"
    if isinstance(e, PrimedProtocolError):
        return f": {advice}"
    return f"; if it expects TLS, {advice}"


def _endpoint(reactor, options):
    """
    The server's endpoint: C{--endpoint}, or C{--host} and C{--port}, over
    TLS with C{--tls}.
    """
    if options["endpoint"] is not None:
        return endpoints.clientFromString(reactor, options["endpoint"])
    endpoint: IStreamClientEndpoint = endpoints.HostnameEndpoint(
        reactor, options["host"], options["port"], timeout=options["timeout"]
    )
    if options.tlsOptions is not None:
        endpoint = endpoints.wrapClientTLS(options.tlsOptions, endpoint)
    return endpoint


def main(argv=None):
    """
    The C{primed-client} console script.
    """
    options = Options()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        sys.stderr.write(f"primed-client: {e}\nTry 'primed-client --help'.\n")
        sys.exit(2)

    async def command(reactor):
        reactor.callWhenRunning(_defaultSignals)
        # Buffered whatever PYTHONUNBUFFERED says: the run flushes whenever
        # it waits for input, so a terminal still sees each answer at once.
        stdout = open(1, "wb", buffering=1 << 16, closefd=False)
        code = await run(reactor, options, 0, stdout, sys.stderr)
        if code:
            raise SystemExit(code)

    task.react(command)


def _defaultSignals():
    """
    Let SIGINT and SIGTERM kill the command, as they kill C{cat}.  Twisted's
    handlers only ask the reactor to stop, which never happens while it is
    blocked writing to a full pipe; and a client holds nothing that needs
    an orderly shutdown.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


if __name__ == "__main__":
    main()
