"""
Running the installed daemon for end-to-end tests: C{twistd -n primed} as a
subprocess on ephemeral loopback ports, always stopped by the test.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Tuple

from twisted.trial import unittest

SEED_VALUES = ["4j", 4, 5, -5, 17, 29, 2**50, 2**50 - 1]
SEED_REPLIES = [b"E\n", b"F\n", b"T\n", b"F\n", b"T\n", b"T\n", b"F\n", b"F\n"]

_LISTENING = re.compile(r"Listening for (TCP|TLS|UDP) on (\S+):(\d+)")


def twistdCommand() -> List[str]:
    """
    The twistd of the environment running the tests, so the installed
    dropin is the one under test.
    """
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def _runnerArgv(runner: str, args, runnerArgs=()) -> List[str]:
    if runner == "twist":
        return [sys.executable, "-m", "twisted", "--log-format", "text", *runnerArgs,
                "primed"] + list(args)
    return twistdCommand() + ["-n", "-l", "-", "--pidfile=", *runnerArgs, "primed"] + list(args)


def _defaultStopSignals() -> None:
    """
    In the daemon's process, before it runs: stop signals do what they do by
    default.  A test run started in the background (C{nohup}, C{&}) passes
    SIGINT and SIGHUP on ignored, and twistd leaves ignored signals alone.
    """
    for number in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(number, signal.SIG_DFL)


class Daemon:
    """
    A running C{twistd -n primed} (or C{twist primed}).  Use as a context manager; leaving it stops
    the process (SIGTERM, then SIGKILL after a bound).

    @ivar tcpPort: the TCP port it listens on (first one), or L{None}.
    @ivar tlsPort: the TLS (C{ssl:}) port it listens on (first one), or
        L{None}.
    @ivar udpPort: the UDP port it listens on (first one), or L{None}.
    @ivar log: every line it logged so far (read by L{waitForLog}).
    """

    def __init__(self, *args: str, env=None, pass_fds=(), startTimeout: float = 20.0,
                 runner: str = "twistd", runnerArgs=(), preexec_fn=None):
        self.args = args
        self.preexec_fn = preexec_fn
        self.runnerArgs = runnerArgs
        self.env = env
        self.pass_fds = pass_fds
        self.startTimeout = startTimeout
        self.runner = runner
        self.tcpPort: Optional[int] = None
        self.tlsPort: Optional[int] = None
        self.udpPort: Optional[int] = None
        self.udpPorts: List[int] = []
        self.log: List[str] = []
        self.process: Optional[subprocess.Popen] = None

    def __enter__(self) -> "Daemon":
        self.start()
        return self

    def __exit__(self, excType, exc, tb) -> None:
        # A failure already on its way out is the one worth reporting; a
        # daemon that does not stop is reported only when nothing else went
        # wrong (it is killed either way).
        self.stop(check=excType is None)

    def start(self) -> None:
        argv = _runnerArgv(
            self.runner,
            self.args
            or ["--listen", "tcp:0:interface=127.0.0.1:backlog=1024", "--udp", "127.0.0.1:0"],
            self.runnerArgs,
        )
        self.process = subprocess.Popen(
            argv,
            preexec_fn=self._preexec,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            pass_fds=self.pass_fds,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        )
        os.set_blocking(self.process.stdout.fileno(), False)
        try:
            self.waitForLog("Limits:", self.startTimeout)
        except BaseException:
            self.stop(check=False)
            raise

    def _preexec(self) -> None:
        _defaultStopSignals()
        if self.preexec_fn is not None:
            self.preexec_fn()

    def _readLog(self) -> None:
        chunk = self.process.stdout.read()
        if chunk:
            self._partial = getattr(self, "_partial", b"") + chunk
            *lines, self._partial = self._partial.split(b"\n")
            for line in lines:
                text = line.decode("utf-8", "replace")
                self.log.append(text)
                match = _LISTENING.search(text)
                if match:
                    kind, _, port = match.groups()
                    if kind == "TCP" and self.tcpPort is None:
                        self.tcpPort = int(port)
                    elif kind == "TLS" and self.tlsPort is None:
                        self.tlsPort = int(port)
                    elif kind == "UDP":
                        self.udpPorts.append(int(port))
                        self.udpPort = self.udpPorts[0]

    def waitForLog(self, text: str, timeout: float = 10.0) -> str:
        """
        Wait until a logged line contains C{text}; return it.
        """
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            self._readLog()
            for line in self.log[seen:]:
                if text in line:
                    return line
            seen = len(self.log)
            if self.process.poll() is not None:
                self._readLog()
                raise AssertionError(
                    f"twistd exited ({self.process.returncode}) before logging "
                    f"{text!r}:\n" + "\n".join(self.log)
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"twistd did not log {text!r} within {timeout}s:\n" + "\n".join(self.log)
                )
            time.sleep(0.02)

    def terminate(self, timeout: float = 20.0) -> int:
        """
        Send SIGTERM and wait for the exit status.
        """
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            self._readLog()
            time.sleep(0.02)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
            self._readLog()
            raise AssertionError(
                f"twistd did not exit within {timeout}s (killed); it logged:\n"
                + "\n".join(self.log[-20:])
            )
        self._readLog()
        return self.process.returncode

    #: Seconds a daemon may take to exit after SIGTERM: its drain timeout
    #: (10 s by default) and a margin for a loaded machine.
    stopTimeout = 20.0

    def stop(self, check: bool = True) -> None:
        """
        SIGTERM the daemon if it still runs, and wait for it to exit.

        @raise AssertionError: if C{check} and it did not exit within
            L{stopTimeout} (it is SIGKILLed then): a shutdown that hangs is a
            bug, not something to clean up quietly.
        """
        if self.process is None or self.process.stdout.closed:
            return
        try:
            if self.process.poll() is None:
                self.terminate(self.stopTimeout)
        except AssertionError:
            if check:
                raise
        finally:
            self.process.stdout.close()

    def rss(self) -> int:
        """
        The daemon's resident set size, in bytes.
        """
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")


class SharedDaemonTestCase(unittest.TestCase):
    """
    A test case whose tests share one daemon, started with C{daemonArgs}:
    starting Python and Twisted costs more than most exchanges.
    """

    daemonArgs: Tuple[str, ...] = ()

    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon(*cls.daemonArgs)
        cls.daemon.start()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()


def ask(port: int, payload: bytes, timeout: float = 10.0, host: str = "127.0.0.1") -> bytes:
    """
    Send C{payload} on a new TCP connection, half-close, and return all
    that comes back before the server closes.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return readAll(sock, timeout)


def readAll(sock: socket.socket, timeout: float = 10.0) -> bytes:
    deadline = time.monotonic() + timeout
    chunks = []
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _tcpTable():
    """
    The kernel's TCP sockets, from C{/proc/net/tcp} and C{tcp6}: for each,
    C{(local port, remote port, state, send queue, receive queue, inode)}.
    """
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                lines = list(f)
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            tx, rx = fields[4].split(":")
            yield (int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16),
                   int(fields[3], 16), int(tx, 16), int(rx, 16), int(fields[9]))


def _tcpQueues(localPort: int, remotePort: int) -> Optional[Tuple[int, int]]:
    """
    The C{(send queue, receive queue)} byte counts of the connected TCP
    socket from C{localPort} to C{remotePort}, or L{None} if there is none.
    """
    for local, remote, state, tx, rx, inode in _tcpTable():
        if (local, remote) == (localPort, remotePort):
            return tx, rx
    return None


def socketsOf(pid: int) -> int:
    """
    How many sockets process C{pid} has open.  A client that noticed its
    only connection closed has closed its descriptor: it is down to none.
    """
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except FileNotFoundError:
            pass
    return count


def waitUntilRead(sock: socket.socket, timeout: float = 30.0) -> None:
    """
    Wait until the process at the other end of C{sock} (a loopback
    connection) has read every byte sent on it: nothing left unacknowledged
    in our send queue, nothing left unread in its receive queue.  A daemon
    that stopped reading fails the wait.
    """
    ours, theirs = sock.getsockname()[1], sock.getpeername()[1]
    deadline = time.monotonic() + timeout
    while True:
        sending, unread = _tcpQueues(ours, theirs), _tcpQueues(theirs, ours)
        if sending is not None and unread is not None and sending[0] == unread[1] == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not all read within {timeout}s: ours (tx, rx) {sending}, theirs {unread}"
            )
        time.sleep(0.01)


def askUDP(port: int, payload: bytes, timeout: float = 5.0, host: str = "127.0.0.1") -> bytes:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(payload, (host, port))
        data, _ = sock.recvfrom(65536)
        return data


def makeCertificates(directory: str) -> dict:
    """
    With C{openssl}, as docs/operating/tls.rst shows: a CA (C{ca.pem}), a server key
    and certificate it signs for C{localhost}, 127.0.0.1 and ::1
    (C{key.pem}, C{cert.pem}), a second CA that signed nothing primed
    serves (C{other-ca.pem}), and a directory holding the first CA alone,
    for Twisted's C{tls:...:trustRoots=DIR} (C{trust}).

    @return: the paths, by those names without C{.pem}.
    """

    def openssl(*args: str) -> None:
        subprocess.run(
            ["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60
        )

    for name in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-days", "2",
                "-subj", f"/CN=primed test {name}",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout", f"{name}.key", "-out", f"{name}.pem")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", "/CN=localhost",
            "-keyout", "key.pem", "-out", "server.csr")
    # keyUsage on both, extendedKeyUsage on the server's: Python 3.13
    # verifies strictly (VERIFY_X509_STRICT) and refuses a CA without it.
    with open(os.path.join(directory, "server.cnf"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n"
                "keyUsage=digitalSignature\n"
                "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "server.cnf", "-out", "cert.pem")
    paths = {name: os.path.join(directory, name + ".pem")
             for name in ("ca", "other-ca", "key", "cert")}
    paths["trust"] = os.path.join(directory, "trust")
    os.mkdir(paths["trust"])
    shutil.copy(paths["ca"], paths["trust"])
    return paths


def askTLS(port: int, payload: bytes, caFile: str, stop: str = "close_notify",
           timeout: float = 30.0, host: str = "127.0.0.1",
           prefix: bytes = b"") -> Tuple[bytes, str]:
    """
    Send C{payload} over TLS (verifying the server against C{caFile}), stop
    sending, and read until the server closes.  C{stop} is how: with a
    C{close_notify} alert and the TCP connection left open
    (C{"close_notify"}), or with a bare TCP FIN (C{"fin"}).  Python's
    C{ssl} module, over memory BIOs so each step is explicit.  C{prefix} is
    sent in clear first (a PROXY header).

    @return: what came back, and how it ended: C{"close_notify"} (the
        server's alert) or C{"eof"} (the TCP connection closed without it).
    """
    import ssl

    context = ssl.create_default_context(cafile=caFile)
    # As Python 3.13 verifies by default, on every Python: a certificate
    # that 3.13 would refuse fails the TLS tests everywhere.
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(prefix)  # in clear, before TLS: a PROXY header

        def flush() -> None:
            data = outgoing.read()
            if data:
                sock.sendall(data)

        def receive() -> bool:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = sock.recv(65536)
            if not data:
                incoming.write_eof()
                return False
            incoming.write(data)
            return True

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                flush()
                if not receive():
                    raise AssertionError("connection closed during the TLS handshake")
        tls.write(payload)
        flush()
        if stop == "close_notify":
            try:
                tls.unwrap()  # sends close_notify; the server's comes later
            except ssl.SSLWantReadError:
                pass
            flush()
        else:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = tls.read(65536)
            except ssl.SSLWantReadError:
                if not receive():
                    return b"".join(chunks), "eof"
                continue
            except ssl.SSLZeroReturnError:
                return b"".join(chunks), "close_notify"
            except ssl.SSLEOFError:
                return b"".join(chunks), "eof"
            if not chunk:
                return b"".join(chunks), "close_notify"
            chunks.append(chunk)


class CertificatesMixin:
    """
    For a test case that needs L{makeCertificates}' files: made once for the
    class in a directory of its own (C{cls.directory}), removed after it;
    C{cls.paths} as L{makeCertificates} returns them.
    """

    @classmethod
    def setUpClass(cls):
        cls.directory = tempfile.mkdtemp(prefix="primed-certificates-")
        cls.paths = makeCertificates(cls.directory)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.directory, ignore_errors=True)
