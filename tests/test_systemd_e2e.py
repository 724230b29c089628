"""
End to end under systemd's protocols, without a running systemd: the real
C{twistd} of this venv runs the command lines of C{contrib/systemd/*.service}
(ports swapped for ephemeral ones), with

  - C{NOTIFY_SOCKET} pointing at a Unix datagram socket the test owns, to
    check C{READY=1}, C{STATUS=}, C{WATCHDOG=1} and C{STOPPING=1};
  - C{systemd-socket-activate} (nested, for TCP plus UDP) handing it the
    listening sockets, named like the socket units' C{FileDescriptorName=},
    to check socket activation with the seed client's exchange.

Every process started here is stopped here (SIGTERM, then SIGKILL), every
wait is bounded.  C{systemd-socket-activate} comes with Debian's C{systemd}
package, which C{.ci/run} installs where missing; no test skips without it.
"""

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

from twisted.trial import unittest

from support import SEED_REPLIES, SEED_VALUES, askUDP, twistdCommand

UNITS_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "contrib", "systemd"
)
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
_SYSTEMD_VARIABLES = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
)
_STATUS = re.compile(r"(TCP|UDP) (\S+):(\d+)")


def unitSetting(name, key):
    """
    The one value of C{key} in unit file C{name}.
    """
    found = []
    with open(os.path.join(UNITS_DIR, name), encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith(key + "="):
                found.append(line[len(key) + 1 :])
    assert len(found) == 1, (name, key, found)
    return found[0]


def unitCommand(name, replacements=()):
    """
    The unit's ExecStart, run with this venv's twistd instead of
    /opt/primed/bin/twistd, each C{(old, new)} of C{replacements} applied to
    primed's own arguments (to swap fixed ports for test ones).
    """
    argv = shlex.split(unitSetting(name, "ExecStart"))
    assert os.path.basename(argv[0]) == "twistd", argv
    plugin = argv.index("primed")
    options = argv[plugin + 1 :]
    for old, new in replacements:
        options = [option.replace(old, new) for option in options]
    return twistdCommand() + argv[1 : plugin + 1] + options


def unitEnvironment(name):
    """
    The unit's Environment= assignments as a dict.
    """
    return dict(
        word.split("=", 1) for word in shlex.split(unitSetting(name, "Environment"))
    )


def freePort(kind):
    """
    A loopback port free right now, for tools that need a number up front
    (systemd-socket-activate, SO_REUSEPORT pairs).
    """
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seedExchange(port):
    """
    The seed chapter's client: a connection per value, C{"%s\\n"}, a single
    C{recv(1024)}.
    """
    replies = []
    for value in SEED_VALUES:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
            s.sendall(("%s\n" % value).encode("ascii"))
            replies.append(s.recv(1024))
    return replies


def udpExchange(port):
    return [askUDP(port, ("%s\n" % value).encode("ascii")) for value in SEED_VALUES]


class NotifySocket:
    """
    The service manager's end: a bound AF_UNIX datagram socket.
    """

    def __init__(self, testCase, abstract=False):
        if abstract:
            name = "primed-test-" + uuid.uuid4().hex
            self.address = "@" + name
            bindTo = "\0" + name
        else:
            directory = tempfile.mkdtemp(prefix="primed-notify-")
            testCase.addCleanup(shutil.rmtree, directory)
            self.address = bindTo = os.path.join(directory, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        testCase.addCleanup(self.sock.close)
        self.sock.bind(bindTo)
        self.received = []

    def waitFor(self, key, process, timeout=START_TIMEOUT):
        """
        Collect datagrams until one assigns C{key} (e.g. C{"READY=1"});
        return its assignments as a dict.
        """
        deadline = time.monotonic() + timeout
        for _ in range(10000):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.sock.settimeout(min(remaining, 0.5))
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                if process.poll() is not None:
                    raise AssertionError(
                        f"the daemon exited ({process.returncode}) before {key}:\n"
                        + process.output()
                    )
                continue
            lines = data.decode("utf-8").splitlines()
            self.received.append(lines)
            if key in lines:
                return dict(line.split("=", 1) for line in lines)
        raise AssertionError(
            f"no {key} within {timeout}s; got {self.received}:\n" + process.output()
        )

    def keys(self):
        return [line for lines in self.received for line in lines if "=1" in line]


class Process:
    """
    A subprocess whose output goes to a file (no pipe to fill up) and that
    the test always stops.
    """

    def __init__(self, testCase, argv, env):
        self.logFile = tempfile.NamedTemporaryFile(prefix="primed-e2e-", suffix=".log")
        testCase.addCleanup(self.logFile.close)
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self.logFile,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tempfile.gettempdir(),
        )
        testCase.addCleanup(self.kill)

    @property
    def returncode(self):
        return self.popen.returncode

    def poll(self):
        return self.popen.poll()

    def output(self):
        with open(self.logFile.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def waitForOutput(self, text, timeout=START_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.poll() is not None:
                raise AssertionError(
                    f"exited ({self.returncode}) before printing {text!r}:\n"
                    + self.output()
                )
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not printed within {timeout}s:\n" + self.output())

    def terminate(self, timeout=STOP_TIMEOUT):
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"no exit within {timeout}s of SIGTERM:\n" + self.output()
            )

    def kill(self):
        """
        Cleanup, whatever happened: SIGTERM, then SIGKILL after a bound.
        """
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


def daemonEnvironment(unit, **extra):
    """
    This environment without any systemd variables the test runner may have
    inherited, plus the unit's Environment= and C{extra}.
    """
    env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_VARIABLES}
    env.update(unitEnvironment(unit))
    env.update(extra)
    return env


def servedPorts(status):
    """
    C{{"TCP": port, "UDP": port}} from C{STATUS=Serving TCP 127.0.0.1:N, ...}.
    """
    found = {}
    for transport, host, port in _STATUS.findall(status):
        assert host == "127.0.0.1", status
        found.setdefault(transport, int(port))
    return found


def socketActivate(addresses, command, passEnv=()):
    """
    Wrap C{command} in one C{systemd-socket-activate} per C{(kind, port,
    name)}, outermost first.  Each inner one passes on what it inherited,
    and its C{--fdname} must name every descriptor, inherited ones first:
    a single name would be given to all of them.  The tool hands its child
    only PATH, HOME, USER, TERM and what C{--setenv} names, so every other
    variable in C{passEnv} is named at every level.
    """
    tool = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"
    if not os.access(tool, os.X_OK):
        raise AssertionError(
            "systemd-socket-activate not found: install Debian's systemd "
            "package (.ci/run does)"
        )
    argv = []
    names = []
    for kind, port, name in addresses:
        names.append(name)
        argv += [tool]
        if kind == "udp":
            argv += ["--datagram"]
        argv += ["--listen", f"127.0.0.1:{port}", "--fdname=" + ":".join(names)]
        argv += ["--setenv=" + variable for variable in passEnv]
    return argv + command


class ReadinessTests(unittest.TestCase):
    """
    primed.service's command line with NOTIFY_SOCKET set.
    """

    def startService(self, notify, **extra):
        command = unitCommand(
            "primed.service", [(":8809", ":0"), (":8808", ":0")]
        )
        env = daemonEnvironment(
            "primed.service", NOTIFY_SOCKET=notify.address, **extra
        )
        return Process(self, command, env)

    def test_readyStatusWatchdogStopping(self):
        """
        READY=1 comes once, with a STATUS= naming both endpoints, and both
        answer at once; WATCHDOG=1 follows every half WATCHDOG_USEC;
        SIGTERM brings STOPPING=1 and an exit.
        """
        notify = NotifySocket(self)
        daemon = self.startService(notify, WATCHDOG_USEC="600000")
        ready = notify.waitFor("READY=1", daemon)
        ports = servedPorts(ready.get("STATUS", ""))
        self.assertEqual(sorted(ports), ["TCP", "UDP"], ready)

        # Ready means answering, on both transports.
        with socket.create_connection(("127.0.0.1", ports["TCP"]), timeout=5) as s:
            s.sendall(b"17\n")
            self.assertEqual(s.recv(1024), b"T\n")
        self.assertEqual(askUDP(ports["UDP"], b"17\n", timeout=5), b"T\n")

        # Pings every 0.3 s: the first with READY=1, then two more.
        for _ in range(3):
            notify.waitFor("WATCHDOG=1", daemon, timeout=10)

        daemon.terminate()
        notify.waitFor("STOPPING=1", daemon, timeout=STOP_TIMEOUT)
        keys = notify.keys()
        self.assertEqual(keys.count("READY=1"), 1, keys)
        self.assertEqual(keys.count("STOPPING=1"), 1, keys)
        self.assertLess(keys.index("READY=1"), keys.index("STOPPING=1"))

    def test_abstractNamespace(self):
        """
        NOTIFY_SOCKET=@name, as systemd often sets it.
        """
        notify = NotifySocket(self, abstract=True)
        daemon = self.startService(notify)
        ready = notify.waitFor("READY=1", daemon)
        self.assertIn("Serving TCP 127.0.0.1:", ready["STATUS"])
        daemon.terminate()
        notify.waitFor("STOPPING=1", daemon, timeout=STOP_TIMEOUT)
        self.assertNotIn("WATCHDOG=1", notify.keys())

    def test_reusePortInstances(self):
        """
        Two primed@.service instances share one TCP and one UDP port with
        SO_REUSEPORT; both become ready and the seed exchange works.
        (Their metrics ports, the instance names, are ports 0 here.)
        """
        tcpPort, udpPort = freePort(socket.SOCK_STREAM), freePort(socket.SOCK_DGRAM)
        command = unitCommand(
            "primed@.service",
            [(":8809", f":{tcpPort}"), (":8808", f":{udpPort}"), ("tcp:%i:", "tcp:0:")],
        )
        notify = NotifySocket(self, abstract=True)
        env = daemonEnvironment("primed@.service", NOTIFY_SOCKET=notify.address)
        first = Process(self, command, env)
        notify.waitFor("READY=1", first)
        second = Process(self, command, env)
        ready = notify.waitFor("READY=1", second)
        self.assertEqual(
            servedPorts(ready["STATUS"]), {"TCP": tcpPort, "UDP": udpPort}
        )
        self.assertEqual(first.poll(), None, first.output())
        self.assertEqual(seedExchange(tcpPort), SEED_REPLIES)
        self.assertEqual(udpExchange(udpPort), SEED_REPLIES)


def exchange(process, function, port):
    """
    Run an exchange against a socket-activated daemon; on a timeout or
    reset, fail with the daemon's output.  (A reactor that stops answering
    everything after its first datagram has adopted a blocking UDP socket:
    systemd passes non-blocking ones, systemd-socket-activate does not, and
    Twisted's adoptDatagramPort needs non-blocking.)
    """
    try:
        return function(port)
    except OSError as e:
        raise AssertionError(
            f"{function.__name__} on port {port}: {e!r}; the daemon said:\n"
            + process.output()
        )


class SocketActivationTests(unittest.TestCase):
    """
    primed-activated.service's command line, handed its sockets by
    C{systemd-socket-activate} under the socket units' names.  The tool
    waits for the first connection or datagram before it starts the daemon,
    so each test's first request is the one that activates primed.
    """

    def setUp(self):
        self.tcpName = unitSetting("primed-tcp.socket", "FileDescriptorName")
        self.udpName = unitSetting("primed-udp.socket", "FileDescriptorName")

    def activate(self, addresses, command, **extra):
        """
        Start the tools on fresh ports; retry (bounded) if another process
        took a port between L{freePort} and the tools' bind.
        """
        for attempt in range(3):
            ports = {kind: freePort(socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
                     for kind, _ in addresses}
            passEnv = list(unitEnvironment("primed-activated.service")) + list(extra)
            argv = socketActivate(
                [(kind, ports[kind], name) for kind, name in addresses],
                command,
                passEnv,
            )
            env = daemonEnvironment("primed-activated.service", **extra)
            process = Process(self, argv, env)
            kind = addresses[0][0]
            try:
                process.waitForOutput(f"Listening on 127.0.0.1:{ports[kind]} as 3.")
            except AssertionError:
                if attempt == 2 or "Address already in use" not in process.output():
                    raise
                continue
            return process, ports
        raise AssertionError("unreachable")

    def test_tcp(self):
        """
        One inherited TCP socket, named primed-tcp, and UDP off.
        """
        command = twistdCommand() + [
            "--nodaemon",
            "--pidfile=",
            "primed",
            "--listen",
            f"systemd:domain=INET:name={self.tcpName}",
            "--no-udp",
        ]
        process, ports = self.activate([("tcp", self.tcpName)], command)
        self.assertEqual(exchange(process, seedExchange, ports["tcp"]), SEED_REPLIES)
        self.assertIn("Execing", process.output())

    def test_tcpAndUdp(self):
        """
        The unit's exact arguments with both sockets inherited, TCP first; a
        TCP connection activates primed, which then tells systemd it serves
        the inherited addresses.
        """
        notify = NotifySocket(self)
        process, ports = self.activate(
            [("tcp", self.tcpName), ("udp", self.udpName)],
            unitCommand("primed-activated.service"),
            NOTIFY_SOCKET=notify.address,
        )
        self.assertEqual(exchange(process, seedExchange, ports["tcp"]), SEED_REPLIES)
        ready = notify.waitFor("READY=1", process)
        self.assertEqual(
            servedPorts(ready["STATUS"]), {"TCP": ports["tcp"], "UDP": ports["udp"]}
        )
        self.assertEqual(exchange(process, udpExchange, ports["udp"]), SEED_REPLIES)
        # And TCP still answers after UDP traffic.
        self.assertEqual(exchange(process, seedExchange, ports["tcp"]), SEED_REPLIES)
        process.terminate()
        notify.waitFor("STOPPING=1", process, timeout=STOP_TIMEOUT)

    def test_udpFirst(self):
        """
        UDP outermost: a datagram activates primed and is answered by it;
        the descriptors come in the other order and are still found by name.
        """
        process, ports = self.activate(
            [("udp", self.udpName), ("tcp", self.tcpName)],
            unitCommand("primed-activated.service"),
        )
        first = exchange(
            process, lambda port: askUDP(port, b"17\n", timeout=START_TIMEOUT), ports["udp"]
        )
        self.assertEqual(first, b"T\n")
        self.assertEqual(exchange(process, udpExchange, ports["udp"]), SEED_REPLIES)
        self.assertEqual(exchange(process, seedExchange, ports["tcp"]), SEED_REPLIES)
