"""
End to end, every listen form docs/operating/options.rst names, against the installed
daemon: C{ssl:} (a CA and certificate made here with C{openssl}, probed with
C{openssl s_client} and C{primed-client}) next to a plain listener,
C{tcp6:} and UDP on ::1, and C{unix:} with C{nc -U}.  C{systemd:} and
C{haproxy:} have tests of their own.
"""

import os
import select
import shutil
import subprocess
import tempfile
import time

from twisted.trial import unittest

from support import (
    SEED_REPLIES, SEED_VALUES, Daemon, ask, askTLS, askUDP, makeCertificates, twistdCommand,
)
from test_client_cli import expectedLines, primedClient

SEED_INPUT = "".join(f"{value}\n" for value in SEED_VALUES).encode()


def sClient(port, caFile, payload, lines, timeout=30.0):
    """
    C{printf ... | openssl s_client -quiet -CAfile CA -connect ...}: with
    C{-quiet} s_client keeps the connection after its input ends, so read
    C{lines} lines, then stop it.

    @return: the lines read, and what s_client wrote on standard error.
    """
    process = subprocess.Popen(
        ["openssl", "s_client", "-quiet", "-verify_return_error", "-CAfile", caFile,
         "-verify_hostname", "localhost", "-connect", f"127.0.0.1:{port}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        process.stdin.write(payload)
        process.stdin.close()
        out = b""
        deadline = time.monotonic() + timeout
        while out.count(b"\n") < lines and time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    break
                out += chunk
        return out, process
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(10)
        process.stdout.close()


class TLSTests(unittest.TestCase):
    """
    One daemon serving TLS and plain TCP side by side.
    """

    @classmethod
    def setUpClass(cls):
        cls.directory = tempfile.mkdtemp(prefix="primed-tls-e2e-")
        cls.paths = makeCertificates(cls.directory)
        cls.trustRoots = cls.paths["trust"]
        cls.daemon = Daemon(
            "--listen", "tcp:0:interface=127.0.0.1",
            "--listen",
            f"ssl:0:privateKey={cls.paths['key']}:certKey={cls.paths['cert']}"
            ":interface=127.0.0.1",
            "--no-udp",
        )
        try:
            cls.daemon.start()
        except BaseException:
            shutil.rmtree(cls.directory, ignore_errors=True)
            raise

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()
        shutil.rmtree(cls.directory, ignore_errors=True)

    def test_sClient(self):
        """
        C{openssl s_client -quiet}, verifying the certificate and host name,
        gets the seed's verdicts.
        """
        out, process = sClient(self.daemon.tlsPort, self.paths["ca"], SEED_INPUT, 8)
        self.assertEqual(out, b"".join(SEED_REPLIES))

    def test_sClientUntrusted(self):
        """
        The certificate checked against another CA: s_client refuses it.
        """
        result = subprocess.run(
            ["openssl", "s_client", "-quiet", "-verify_return_error",
             "-CAfile", self.paths["other-ca"], "-connect", f"127.0.0.1:{self.daemon.tlsPort}"],
            input=SEED_INPUT, capture_output=True, timeout=30,
        )
        self.assertEqual((result.returncode, result.stdout), (1, b""))
        self.assertIn(b"unable to get local issuer certificate", result.stderr)

    def test_plainNextToTLS(self):
        self.assertEqual(ask(self.daemon.tcpPort, SEED_INPUT), b"".join(SEED_REPLIES))
        self.assertIn("Listening for TLS on 127.0.0.1:%d" % self.daemon.tlsPort,
                      "\n".join(self.daemon.log))

    def test_halfClose(self):
        """
        A client that stops sending with close_notify, or with a bare FIN,
        gets every answer owed, a big check's included, then the server's
        close_notify.
        """
        big = 2**4423 - 1
        payload = b"%d\n4\n5\n%d\n17" % (big, big)
        for stop in ("close_notify", "fin"):
            data, ending = askTLS(self.daemon.tlsPort, payload, self.paths["ca"], stop)
            self.assertEqual((data, ending), (b"T\nF\nT\nT\nT\n", "close_notify"), stop)

    def test_primedClient(self):
        """
        C{primed-client --tls --ca}: verdicts, in input order, for the
        numbers given and for a bulk run on standard input.
        """
        result = primedClient("--tls", "--ca", self.paths["ca"], "--port", self.daemon.tlsPort,
                              "4j", "17", "-5")
        self.assertEqual((result.returncode, result.stderr), (0, b""))
        self.assertEqual(result.stdout, b"4j\tinvalid\n17\tprime\n-5\tnot prime\n")
        numbers = [str(n) for n in range(1, 20001)]
        result = primedClient("--tls", "--ca", self.paths["ca"], "-H", "localhost",
                              "--port", self.daemon.tlsPort,
                              input="".join(n + "\n" for n in numbers).encode())
        self.assertEqual((result.returncode, result.stderr), (0, b""))
        self.assertEqual(result.stdout, expectedLines(numbers))

    def test_primedClientEndpoint(self):
        """
        Twisted's C{tls:} client endpoint string works too.
        """
        result = primedClient(
            "--endpoint", f"tls:localhost:{self.daemon.tlsPort}:trustRoots={self.trustRoots}",
            "17", "18",
        )
        self.assertEqual((result.returncode, result.stderr), (0, b""))
        self.assertEqual(result.stdout, b"17\tprime\n18\tnot prime\n")

    def test_primedClientRefuses(self):
        """
        An untrusted certificate, or one for another name: exit 1, nothing
        on standard output, one line on standard error naming the server
        and the reason.
        """
        port = self.daemon.tlsPort
        cases = [
            (["--ca", self.paths["other-ca"]],
             f"127.0.0.1:{port}: TLS: certificate not trusted"
             " (unable to get local issuer certificate)"),
            (["--ca", self.paths["ca"], "--server-name", "wrong.example"],
             f"127.0.0.1:{port}: TLS: certificate is not for wrong.example"),
            (["--ca", self.paths["ca"], "-H", "localhost", "--server-name", "127.0.0.2"],
             f"localhost:{port}: TLS: certificate is not for 127.0.0.2"),
        ]
        for args, reason in cases:
            result = primedClient("--tls", "--port", port, *args, "17")
            self.assertEqual(result.returncode, 1, args)
            self.assertEqual(result.stdout, b"", args)
            self.assertEqual(result.stderr.decode(),
                             f"primed-client: cannot connect to {reason}\n", args)

    def test_primedClientPlainServer(self):
        """
        TLS to a plain listener fails the handshake, in one line.
        """
        result = primedClient("--tls", "--ca", self.paths["ca"],
                              "--port", self.daemon.tcpPort, "17")
        self.assertEqual(result.returncode, 1)
        [line] = result.stderr.decode().splitlines()
        self.assertTrue(line.startswith(
            f"primed-client: cannot connect to 127.0.0.1:{self.daemon.tcpPort}: TLS"), line)


def _denyWriteExecute() -> None:
    """
    In the child, before exec: refuse memory both writable and executable,
    as systemd's C{MemoryDenyWriteExecute=yes} (the units') does, with the
    kernel's own switch (C{PR_SET_MDWE}, Linux 6.3).
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")


def _kernelDeniesWriteExecute() -> bool:
    """
    Whether this kernel has C{PR_SET_MDWE} (Linux 6.3 and later).
    """
    import ctypes

    PR_GET_MDWE = 66
    return ctypes.CDLL(None, use_errno=True).prctl(PR_GET_MDWE, 0, 0, 0, 0) >= 0


class TLSWithoutWriteExecuteTests(unittest.TestCase):
    def setUp(self):
        if not _kernelDeniesWriteExecute():
            # A kernel before 6.3 cannot deny W+X memory without systemd's
            # seccomp filter; test_service.StartTests.test_tlsWithoutWriteExecute
            # covers the refusal on any kernel.
            raise unittest.SkipTest("this kernel has no PR_SET_MDWE (Linux 6.3+)")

    def test_refusedAtStart(self):
        """
        Under C{MemoryDenyWriteExecute}, pyOpenSSL cannot make the callbacks
        every TLS context needs: primed does not start, with one line saying
        so, rather than serving a port whose every connection fails with
        tracebacks (it used to).  Plain listeners are unaffected.
        """
        directory = tempfile.mkdtemp(prefix="primed-tls-mdwe-")
        self.addCleanup(shutil.rmtree, directory, True)
        paths = makeCertificates(directory)
        tls = f"ssl:0:privateKey={paths['key']}:certKey={paths['cert']}:interface=127.0.0.1"
        command = twistdCommand() + ["-n", "--pidfile=", "primed", "--no-udp",
                                     "--listen", "tcp:0:interface=127.0.0.1"]
        result = subprocess.run(command + ["--listen", tls], capture_output=True, timeout=60,
                                preexec_fn=_denyWriteExecute)
        output = (result.stdout + result.stderr).decode()
        self.assertEqual(result.returncode, 1, output)
        self.assertIn(f"primed: cannot listen on {tls}: TLS needs memory both writable and "
                      "executable (pyOpenSSL's callbacks), which this process may not map; "
                      "under systemd, set MemoryDenyWriteExecute=no\n", output)
        self.assertNotIn("Traceback", output)
        with Daemon("--listen", "tcp:0:interface=127.0.0.1", "--no-udp",
                    preexec_fn=_denyWriteExecute) as d:
            self.assertEqual(ask(d.tcpPort, SEED_INPUT), b"".join(SEED_REPLIES))


class IPv6AndUnixTests(unittest.TestCase):
    """
    C{tcp6:} on ::1 (Twisted's endpoint syntax escapes the colons), UDP on
    [::1], and a C{unix:} socket, all served by one daemon.
    """

    @classmethod
    def setUpClass(cls):
        cls.directory = tempfile.mkdtemp(prefix="primed-listen-e2e-")
        cls.socketPath = os.path.join(cls.directory, "primed.sock")
        cls.daemon = Daemon(
            "--listen", r"tcp6:0:interface=\:\:1",
            "--listen", f"unix:{cls.socketPath}",
            "--udp", "[::1]:0",
        )
        try:
            cls.daemon.start()
        except BaseException:
            shutil.rmtree(cls.directory, ignore_errors=True)
            raise

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()
        shutil.rmtree(cls.directory, ignore_errors=True)

    def test_tcp6(self):
        self.assertEqual(ask(self.daemon.tcpPort, SEED_INPUT, host="::1"),
                         b"".join(SEED_REPLIES))
        result = primedClient("-H", "::1", "--port", self.daemon.tcpPort, "17", "4j")
        self.assertEqual((result.returncode, result.stdout), (0, b"17\tprime\n4j\tinvalid\n"))

    def test_udp6(self):
        replies = [askUDP(self.daemon.udpPort, f"{v}\n".encode(), host="::1")
                   for v in SEED_VALUES]
        self.assertEqual(replies, SEED_REPLIES)
        result = primedClient("--udp", "-H", "::1", "--port", self.daemon.udpPort, "17", "4j")
        self.assertEqual((result.returncode, result.stdout), (0, b"17\tprime\n4j\tinvalid\n"))

    def test_unixNetcat(self):
        """
        C{nc -U -N}: every line answered, then the server closes.
        """
        result = subprocess.run(["nc", "-N", "-U", self.socketPath], input=SEED_INPUT,
                                capture_output=True, timeout=20)
        self.assertEqual(result.stdout, b"".join(SEED_REPLIES))

    def test_unixPrimedClient(self):
        result = primedClient("--endpoint", f"unix:path={self.socketPath}", "17", "18")
        self.assertEqual((result.returncode, result.stdout), (0, b"17\tprime\n18\tnot prime\n"))
