"""
End to end: the installed C{twistd -n primed}, probed the ways its users
probe it — the seed chapter's client, netcat, telnet, hundreds of clients.
"""

import os
import re
import socket
import subprocess
import sys
import time

from twisted.trial import unittest

from support import (
    SEED_REPLIES, SEED_VALUES, Daemon, SharedDaemonTestCase, ask, askUDP, readAll, twistdCommand,
    waitUntilRead,
)


class DaemonTests(SharedDaemonTestCase):
    """
    One daemon for the whole class: starting Python and Twisted costs more
    than every exchange below.
    """

    def test_seedClientExchange(self):
        """
        The seed chapter's client: one connection per number, C{"%s\\n"},
        a single C{recv(1024)}.
        """
        replies = []
        for value in SEED_VALUES:
            with socket.create_connection(("127.0.0.1", self.daemon.tcpPort), timeout=10) as s:
                s.send(("%s\n" % value).encode("utf8"))
                replies.append(s.recv(1024))
        self.assertEqual(replies, SEED_REPLIES)

    def test_seedValuesOverUDP(self):
        replies = [askUDP(self.daemon.udpPort, ("%s\n" % v).encode()) for v in SEED_VALUES]
        self.assertEqual(replies, SEED_REPLIES)

    def test_netcatHalfClose(self):
        """
        C{printf '17\\n18\\n' | nc -N} and C{nc -q1}: both lines answered,
        then the server closes.  Plain C{nc -w1} (no half-close) gets its
        answers too, and leaves when idle.
        """
        for flags in (["-N"], ["-q1"], ["-w1"]):
            result = subprocess.run(
                ["nc"] + flags + ["127.0.0.1", str(self.daemon.tcpPort)],
                input=b"17\n18\n", capture_output=True, timeout=20,
            )
            self.assertEqual(result.stdout, b"T\nF\n", flags)

    def test_netcatUDP(self):
        result = subprocess.run(
            ["nc", "-u", "-w1", "127.0.0.1", str(self.daemon.udpPort)],
            input=b"17\n", capture_output=True, timeout=20,
        )
        self.assertEqual(result.stdout, b"T\n")

    def test_telnet(self):
        """
        telnet sends CRLF and keeps the connection open: the answers come
        while it is still connected.
        """
        process = subprocess.Popen(
            ["telnet", "127.0.0.1", str(self.daemon.tcpPort)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        out = b""
        try:
            process.stdin.write(b"17\n1.0\n")
            process.stdin.flush()
            os.set_blocking(process.stdout.fileno(), False)
            deadline = time.monotonic() + 20
            while b"T\nE\n" not in out.replace(b"\r", b"") and time.monotonic() < deadline:
                out += process.stdout.read() or b""
                time.sleep(0.02)
            self.assertIsNone(process.poll())  # answered while still connected
        finally:
            process.kill()
            process.wait(10)
            process.stdin.close()
            process.stdout.close()
        self.assertIn(b"T\nE\n", out.replace(b"\r", b""))

    def test_framing(self):
        """
        Requests split across segments, several in one segment, CRLF, and one
        byte at a time all get the same answers.
        """
        with socket.create_connection(("127.0.0.1", self.daemon.tcpPort), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for piece in [b"1", b"7\n2", b"9\r\n4\n5\n", b"x\n"]:
                s.sendall(piece)
                time.sleep(0.05)
            for byte in b"0007\r\n":
                s.sendall(bytes([byte]))
                time.sleep(0.01)
            s.shutdown(socket.SHUT_WR)
            self.assertEqual(readAll(s), b"T\nT\nF\nT\nE\nT\n")

    def test_grammar(self):
        lines = [b"4j", b"1.0", b"1e5", b"0x11", b"1_000", "\u0661\u0667".encode(),
                 b"--5", b"5 5", b"\x005", b"\xff", b"", b"  ", b"0007", b"-0", b"+7", b"\t 13 \t"]
        expected = b"E\n" * 12 + b"T\nF\nT\nT\n"
        self.assertEqual(ask(self.daemon.tcpPort, b"\n".join(lines) + b"\n"), expected)

    def test_orderWithBigAndSmallPipelined(self):
        """
        A big prime (pool) then small numbers (inline): replies keep request
        order.
        """
        big = 2**3217 - 1
        payload = b"".join(b"%d\n" % n for n in [big, 4, 5, big, 7, 2**521 - 1, 9])
        self.assertEqual(ask(self.daemon.tcpPort, payload), b"T\nF\nT\nT\nT\nT\nF\n")

    def test_overLongLine(self):
        """
        A line beyond the limit is answered E, the rest of it skipped, and
        the connection goes on.
        """
        payload = b"7" * 100_000 + b"\n13\n" + b"1" * 4301 + b"\n"
        self.assertEqual(ask(self.daemon.tcpPort, payload), b"E\nT\nE\n")

    def test_manyConcurrentClients(self):
        """
        300 clients connected at once, each answered.  They come from three
        loopback addresses, 100 each: one address may hold at most 256
        (--max-connections-per-source, a quarter of --max-connections).
        """
        sockets = [socket.create_connection(("127.0.0.1", self.daemon.tcpPort), timeout=10,
                                            source_address=(f"127.0.0.{1 + i % 3}", 0))
                   for i in range(300)]
        try:
            for i, s in enumerate(sockets):
                s.sendall(b"%d\n" % (i,))
            for i, s in enumerate(sockets):
                expected = b"T\n" if i in _PRIMES_BELOW_300 else b"F\n"
                self.assertEqual(s.recv(16), expected)
        finally:
            for s in sockets:
                s.close()

    def test_emptyDatagramIgnored(self):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            s.sendto(b"", ("127.0.0.1", self.daemon.udpPort))
            self.assertRaises(socket.timeout, s.recvfrom, 16)
        self.assertEqual(askUDP(self.daemon.udpPort, b"29"), b"T\n")


_PRIMES_BELOW_300 = {n for n in range(2, 300) if all(n % d for d in range(2, n))}


class LifecycleTests(unittest.TestCase):
    def test_sigtermAnswersWhatWasReceived(self):
        """
        SIGTERM while big primes are in the pool and small requests queue
        behind them: every reply still arrives, then the daemon exits cleanly.
        """
        with Daemon("--listen", "tcp:0:interface=127.0.0.1", "--no-udp", "--threads", "1") as d:
            big = 2**4253 - 1
            requests = [big] * 20 + list(range(1000))  # ~1 s of pool work
            with socket.create_connection(("127.0.0.1", d.tcpPort), timeout=30) as s:
                s.sendall(b"".join(b"%d\n" % n for n in requests))
                # Every request received (a draining connection stops
                # reading), and the pool still busy: that is the case tested.
                waitUntilRead(s)
                d.process.send_signal(15)
                s.setblocking(False)
                try:
                    before = s.recv(1 << 20)
                except BlockingIOError:
                    before = b""
                s.setblocking(True)
                self.assertLess(before.count(b"\n"), len(requests),
                                "all answered before SIGTERM: nothing was drained")
                data = before + readAll(s, 30)
            # twistd ends by re-raising the signal it stopped on, which
            # systemd counts as a clean exit.
            self.assertEqual(d.wait(), -15)
        self.assertEqual(data.count(b"\n"), len(requests))
        self.assertTrue(data.startswith(b"T\n" * 20 + b"F\nF\nT\nT\nF\nT\n"))
        self.assertTrue(any("Stopping" in line for line in d.log))

    def test_twistListsAndRunsPrimed(self):
        """
        The dropin is visible to both twistd and twist.
        """
        out = subprocess.run(twistdCommand() + ["--help"], capture_output=True,
                             timeout=60).stdout
        self.assertIn(b"primed", out)
        out = subprocess.run([sys.executable, "-m", "twisted", "--help"],
                             capture_output=True, timeout=60).stdout
        self.assertIn(b"primed", out)

    def test_twistServes(self):
        with Daemon(runner="twist") as d:
            self.assertEqual(ask(d.tcpPort, b"17\n18\n"), b"T\nF\n")
            self.assertEqual(askUDP(d.udpPort, b"29"), b"T\n")

    def test_usageErrors(self):
        """
        Bad values print a one-line message naming the option and a hint to
        --help (not the whole --help), on standard error, and exit with
        status 2, with twistd and twist alike.
        """
        twist = [sys.executable, "-m", "twisted", "primed"]
        for command, args, option in [
            (twistdCommand() + ["-n", "primed"], ["--threads", "0"], "--threads"),
            (twistdCommand() + ["-n", "primed"], ["--max-digits", "-1"], "--max-digits"),
            (twistdCommand() + ["-n", "primed"], ["--listen", "bogus:nope"], "--listen"),
            (twistdCommand() + ["-n", "primed"], ["--udp", "host:port"], "--udp"),
            (twistdCommand() + ["-n", "primed"], ["--udp", "[::1]"], "--udp"),
            (twistdCommand() + ["-n", "primed"], ["--udp", "[::1:8808"], "--udp"),
            (twistdCommand() + ["-n", "primed"], ["--idle-timeout", "nan"], "--idle-timeout"),
            (twistdCommand() + ["-n", "primed"], ["--listen", "tcp6:0:interface=::1"],
             "interface=\\:\\:1"),
            (twistdCommand() + ["-n", "primed"], ["--bogus"], "--bogus"),
            (twist, ["--threads", "0"], "--threads"),
        ]:
            result = subprocess.run(command + args, capture_output=True, timeout=60)
            self.assertEqual(result.returncode, 2, (args, result))
            self.assertEqual(result.stdout, b"", args)
            runner = b"twist" if command is twist else b"twistd"
            message, hint = result.stderr.decode().splitlines()
            self.assertTrue(message.startswith(runner.decode() + " primed: "), message)
            self.assertIn(option, message)
            self.assertEqual(hint, f"Run '{runner.decode()} primed --help' for the options.")

    def test_helpIsSingleSpaced(self):
        result = subprocess.run(twistdCommand() + ["-n", "primed", "--help"],
                                capture_output=True, timeout=60)
        self.assertEqual(result.returncode, 0)
        text = " ".join(result.stdout.decode().split())
        self.assertIn("(tcp:PORT:interface=HOST, tcp6:PORT:interface=\\:\\:1 with", text)
        self.assertIn("an inherited socket systemd:name=NAME; repeatable, replaces the default "
                      "[default: 127.0.0.1:8808]", text)
        for line in result.stdout.decode().splitlines():
            # Runs of spaces only before an option and between it and its help.
            line = line.strip()
            allowed = 1 if line.startswith("-") else 0
            self.assertLessEqual(len(re.findall(r"\S {2,}\S", line)), allowed, line)

    def test_severalUDPPorts(self):
        with Daemon("--udp", "127.0.0.1:0", "--udp", "127.0.0.1:0",
                    "--listen", "tcp:0:interface=127.0.0.1") as d:
            self.assertEqual(len(d.udpPorts), 2)
            self.assertEqual([askUDP(port, b"17") for port in d.udpPorts], [b"T\n", b"T\n"])

    def test_portInUse(self):
        """
        A port in use stops the daemon with one line naming the address
        (TCP, UDP, with --reuseport too), ending in a single period at most.
        """
        with socket.socket() as taken, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            udp.bind(("127.0.0.1", 0))
            udpPort = udp.getsockname()[1]
            for args, expected in [
                (["--no-udp", "--listen", f"tcp:{port}:interface=127.0.0.1"],
                 f"tcp:{port}:interface=127.0.0.1"),
                (["--listen", "tcp:0:interface=127.0.0.1", "--udp", f"127.0.0.1:{udpPort}"],
                 f"127.0.0.1:{udpPort}"),
                (["--reuseport", "--no-udp", "--listen", f"tcp:{port}:interface=127.0.0.1"],
                 f"127.0.0.1:{port}"),
            ]:
                result = subprocess.run(twistdCommand() + ["-n", "--pidfile=", "primed"] + args,
                                        capture_output=True, timeout=60)
                self.assertNotEqual(result.returncode, 0)
                output = (result.stdout + result.stderr).decode()
                self.assertIn(f"primed: cannot listen on {expected}: "
                              "[Errno 98] Address already in use\n", output)
                self.assertNotIn("..", output)


    def test_tooManyThreads(self):
        """
        C{--threads} beyond what the process may start (here an address
        space limit; under systemd, C{TasksMax=}) ends the start with one
        line and exit status 1, not a traceback.
        """
        import resource

        def limitAddressSpace():
            # 1000 threads of 8 MiB stacks (glibc's default: RLIMIT_STACK,
            # set here so a small "ulimit -s" cannot make them fit) cannot
            # fit in 1 GiB.
            stack = 8 << 20
            hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
            if hard != resource.RLIM_INFINITY:
                stack = min(stack, hard)
            resource.setrlimit(resource.RLIMIT_STACK, (stack, hard))
            resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

        result = subprocess.run(
            twistdCommand() + ["-n", "--pidfile=", "primed", "--no-udp", "--threads", "1000",
                               "--listen", "tcp:0:interface=127.0.0.1"],
            capture_output=True, timeout=120, preexec_fn=limitAddressSpace)
        output = (result.stdout + result.stderr).decode()
        self.assertEqual(result.returncode, 1, output)
        self.assertIn("primed: cannot start 1000 check threads: can't start new thread\n",
                      output)
        self.assertNotIn("Traceback", output)

class VerboseTests(unittest.TestCase):
    def test_oneLinePerRequest(self):
        """
        C{-v} with requests held back by C{--max-inflight}: one log line per
        request, with its verdict.
        """
        big = b"%d" % (2**4253 - 1)
        requests = [big, b"5", big, b"6", big, b"7"]
        with Daemon("--listen", "tcp:0:interface=127.0.0.1", "--no-udp", "--threads", "4",
                    "--max-queued", "1", "--max-inflight", "1", "-v") as d:
            self.assertEqual(ask(d.tcpPort, b"".join(r + b"\n" for r in requests), 60),
                             b"T\nT\nT\nF\nT\nT\n")
            d.waitForLog("asked b'7': T")
            d.terminate()
        logged = [line for line in d.log if " asked b'" in line]
        self.assertEqual([line.rsplit(": ", 1)[1] for line in logged], list("TTTFTT"), logged)
        self.assertEqual(sum("asked b'5'" in line for line in logged), 1, logged)
