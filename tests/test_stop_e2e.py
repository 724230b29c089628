"""
End to end, how the installed daemon stops: C{--drain-timeout} bounds a stop
whatever is still running in the pool, and the stop signals (SIGTERM,
SIGINT, SIGHUP; a second one during a drain) do what docs/operating/signals.rst says.

The work is sized so that what is tested does not depend on the machine:
a single check of 2**86243 - 1 (25 962 digits) takes minutes here, dozens of
times the bound a stop is allowed.  The daemon is gone long before, and the
check with it.
"""

import os
import signal
import socket
import subprocess
import time

import gmpy2
from twisted.trial import unittest

import support
from support import Daemon, readAll

#: 2**86243 - 1, a Mersenne prime of 25 962 digits: one check takes minutes.
HUGE_PRIME = gmpy2.mpz(2) ** 86243 - 1
HUGE_LINE = gmpy2.digits(HUGE_PRIME).encode() + b"\n"

#: How long a stop may take beyond --drain-timeout: generous (a loaded
#: machine, twistd's own shutdown), and still a small part of one check.
STOP_SLACK = 15.0


def _received(sock: socket.socket) -> bytes:
    """
    What comes before the daemon closes or resets C{sock}.
    """
    try:
        return readAll(sock, 5)
    except ConnectionResetError:
        return b""


# The tests below read the --verbose lines to know what the daemon received:
# every one of them must be logged (--verbose-rate 0; the default is 100 a
# second).


def _hugeDaemon(*extra: str) -> Daemon:
    return Daemon("--listen", "tcp:0:interface=127.0.0.1", "--udp", "127.0.0.1:0",
                  "--threads", "1", "--max-digits", "26000", "--verbose", "--verbose-rate", "0",
                  *extra)


def _startHugeChecks(d: Daemon) -> socket.socket:
    """
    Give the daemon two huge checks, one on a TCP connection (with a small
    request behind it) and one over UDP, and return once both are in the
    pool (one running, one waiting for the only thread): each small request
    behind a huge one is logged once the huge one has been handed over.
    """
    tcp = socket.create_connection(("127.0.0.1", d.tcpPort), timeout=30)
    tcp.sendall(HUGE_LINE + b"4\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(30)
        udp.sendto(HUGE_LINE, ("127.0.0.1", d.udpPort))
        udp.sendto(b"4", ("127.0.0.1", d.udpPort))
        assert udp.recvfrom(16)[0] == b"F\n"
    deadline = time.monotonic() + 30
    while sum("asked b'4': F" in line for line in d.log) < 2:
        assert time.monotonic() < deadline, "\n".join(d.log)
        d.waitForLog("asked b'4': F", 1)
        time.sleep(0.05)
    return tcp


class DrainDeadlineTests(unittest.TestCase):
    def test_deadlineBoundsTheStop(self):
        """
        With checks still running at the deadline, the daemon exits within
        --drain-timeout plus a small constant (minutes before the running
        check could end), logs what it cut off, and exits by SIGTERM.
        """
        drain = 2.0
        with _hugeDaemon("--drain-timeout", str(drain)) as d:
            tcp = _startHugeChecks(d)
            with tcp:
                start = time.monotonic()
                d.process.send_signal(signal.SIGTERM)
                status = d.wait(drain + STOP_SLACK)
                took = time.monotonic() - start
                self.assertEqual(_received(tcp), b"")  # cut, nothing owed sent
        self.assertEqual(status, -signal.SIGTERM)
        self.assertGreaterEqual(took, drain)
        cut = [line for line in d.log if "Drain timeout of 2.0s reached" in line]
        self.assertEqual(len(cut), 1, d.log)
        self.assertIn("cut 1 connection(s), 3 received request(s) left unanswered", cut[0])
        self.assertTrue(any("Stopped" in line for line in d.log), d.log)


class SignalTests(unittest.TestCase):
    def secondSignalEndsTheDrain(self, first, second):
        """
        A second stop signal during a drain (with a deadline far away)
        ends it at once, quietly: the cut-off is logged with a count, and
        no traceback.
        """
        with _hugeDaemon("--drain-timeout", "600") as d:
            with _startHugeChecks(d) as tcp:
                d.process.send_signal(first)
                d.waitForLog("Stopping: answering")
                d.process.send_signal(second)
                status = d.wait(STOP_SLACK)
                self.assertEqual(_received(tcp), b"")
        self.assertEqual(status, -first)
        cut = [line for line in d.log if "left unanswered" in line]
        self.assertEqual(len(cut), 1, d.log)
        self.assertIn("Drain ended by a second stop signal: cut 1 connection(s), "
                      "3 received request(s) left unanswered", cut[0])
        self.assertFalse([line for line in d.log if "Traceback" in line
                          or "ReactorNotRunning" in line or "Unhandled" in line], d.log)

    def test_secondSIGINT(self):
        self.secondSignalEndsTheDrain(signal.SIGINT, signal.SIGINT)

    def test_SIGTERMThenSIGINT(self):
        self.secondSignalEndsTheDrain(signal.SIGTERM, signal.SIGINT)

    def test_sighupStopsGracefully(self):
        """
        SIGHUP stops like SIGTERM: everything received is answered, then
        the daemon exits by SIGHUP (which systemd counts as clean).
        """
        big = 2**4253 - 1  # tens of ms each, in one thread
        requests = [big] * 20 + list(range(1000))
        with Daemon("--listen", "tcp:0:interface=127.0.0.1", "--no-udp",
                    "--threads", "1", "--verbose", "--verbose-rate", "0") as d:
            with socket.create_connection(("127.0.0.1", d.tcpPort), timeout=30) as s:
                s.sendall(b"".join(b"%d\n" % n for n in requests))
                d.waitForLog("asked b'999': F", 30)  # all received
                d.process.send_signal(signal.SIGHUP)
                data = readAll(s, 60)
            self.assertEqual(d.wait(), -signal.SIGHUP)
        self.assertEqual(data.count(b"\n"), len(requests))
        self.assertTrue(data.startswith(b"T\n" * 20 + b"F\nF\nT\nT\nF\nT\n"))
        self.assertTrue(any("Received SIGHUP" in line for line in d.log), d.log)
        self.assertTrue(any("Stopped" in line for line in d.log), d.log)

    def test_signalsTogetherStopOnce(self):
        """
        SIGTERM and SIGHUP sent back to back, as systemd does with
        C{SendSIGHUP=yes}, are one graceful stop: everything received is
        answered, no traceback, exit by SIGTERM.  (Python runs the handler
        of the lower-numbered signal first, SIGHUP's, and the second stop
        used to raise ReactorNotRunning in the reactor.)
        """
        big = 2**4253 - 1  # tens of ms each, in one thread
        requests = [big] * 10 + list(range(100))
        with Daemon("--listen", "tcp:0:interface=127.0.0.1", "--no-udp",
                    "--threads", "1", "--verbose", "--verbose-rate", "0") as d:
            with socket.create_connection(("127.0.0.1", d.tcpPort), timeout=30) as s:
                s.sendall(b"".join(b"%d\n" % n for n in requests))
                d.waitForLog("asked b'99': F", 30)  # all received
                os.kill(d.process.pid, signal.SIGTERM)
                os.kill(d.process.pid, signal.SIGHUP)
                data = readAll(s, 60)
            self.assertEqual(d.wait(), -signal.SIGTERM)
        self.assertEqual(data.count(b"\n"), len(requests))
        self.assertFalse([line for line in d.log if "Traceback" in line
                          or "ReactorNotRunning" in line or "left unanswered" in line], d.log)
        self.assertTrue(any("Stopped" in line for line in d.log), d.log)

    def test_sighupAsSoonAsReady(self):
        """
        SIGHUP the moment the daemon logs its limits (its ports are bound),
        which is before its reactor runs, is a graceful stop too; it used
        to kill the daemon at once, with nothing logged.  The log is read
        line by line, blocking, to signal as early as a script would.
        """
        process = subprocess.Popen(
            support._runnerArgv("twistd", ["--listen", "tcp:0:interface=127.0.0.1",
                                           "--no-udp"]),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=support._defaultStopSignals,
        )
        try:
            log = []
            for line in process.stdout:
                log.append(line.decode("utf-8", "replace"))
                if "Limits:" in log[-1]:
                    process.send_signal(signal.SIGHUP)
                    break
            log += [line.decode("utf-8", "replace") for line in process.stdout]
            self.assertEqual(process.wait(30), -signal.SIGHUP, log)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()
        self.assertTrue(any("Received SIGHUP, shutting down." in line for line in log), log)
        self.assertTrue(any("Stopped" in line for line in log), log)
