"""
End to end: primed.service's command line with C{--prove}, as systemd would
run it (its environment, C{NOTIFY_SOCKET}), checked against the unit's own
limits without a running systemd:

  - the prover processes fit C{TasksMax=} and C{MemoryMax=} (peak resident
    memory of the daemon and its workers after proofs, and their threads);
  - every system call the daemon and its workers make, from start to stop,
    passes the unit's C{SystemCallFilter=} (traced with C{strace -f},
    the filter expanded by C{systemd-analyze syscall-filter});
  - a stop the way C{KillMode=control-group} (the default) does it,
    C{SIGTERM} to every process of the unit at once, still answers the
    proof in progress (the workers ignore C{SIGTERM}; the daemon stops
    them), and leaves no process behind.

strace and systemd-analyze come from tests/install-tools; nothing skips.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile

from twisted.trial import unittest

from hardnumbers import randomPrime
from support import waitUntilRead
from test_systemd_e2e import (
    STOP_TIMEOUT,
    UNITS_DIR,
    NotifySocket,
    Process,
    daemonEnvironment,
    servedPorts,
    unitCommand,
    unitSetting,
)

UNIT = "primed.service"


def unitValues(name, key):
    with open(os.path.join(UNITS_DIR, name), encoding="utf-8") as f:
        return [line.strip()[len(key) + 1:] for line in f if line.startswith(key + "=")]


def expandFilter(groups) -> set:
    """
    The system calls C{groups} (C{@name} or plain names) stand for.
    """
    listing = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    members, current = {}, None
    for line in listing.splitlines():
        if line.startswith("@"):
            current = members.setdefault(line.split()[0], [])
        elif line.startswith("    ") and current is not None and not line.strip().startswith("#"):
            current.append(line.strip())
    calls = set()
    for group in groups:
        if group.startswith("@"):
            calls |= expandFilter(members[group]) if group in members else set()
        else:
            calls.add(group)
    return calls


def allowedCalls():
    """
    The unit's SystemCallFilter=: the allow lists, less the deny (~) lists.
    """
    allowed, denied = set(), set()
    for value in unitValues(UNIT, "SystemCallFilter"):
        if value.startswith("~"):
            denied |= expandFilter(value[1:].split())
        else:
            allowed |= expandFilter(value.split())
    return allowed - denied


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


def status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def ask(port, number, timeout=60):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"%d\n" % number)
        return s.recv(16)


def sizeInBytes(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


class ProveUnderTheUnitTests(unittest.TestCase):
    def test_proveFitsTheUnit(self):
        strace = shutil.which("strace")
        self.assertIsNotNone(strace, "strace not found: tests/install-tools installs it")
        directory = tempfile.mkdtemp(prefix="primed-strace-")
        self.addCleanup(shutil.rmtree, directory)
        trace = os.path.join(directory, "calls")
        notify = NotifySocket(self)
        command = unitCommand(UNIT, [(":8809", ":0"), (":8808", ":0")])
        command += ["--prove", "--prove-workers", "2"]
        process = Process(self, [strace, "-f", "-qq", "-c", "-o", trace] + command,
                          daemonEnvironment(UNIT, NOTIFY_SOCKET=notify.address))
        ports = servedPorts(notify.waitFor("READY=1", process).get("STATUS", ""))
        process.waitForOutput("Proving with PARI")
        [daemon] = children(process.popen.pid)
        workers = children(daemon)
        self.assertEqual(len(workers), 2)

        for bits in (512, 1024):
            self.assertEqual(ask(ports["TCP"], randomPrime(bits, 24)), b"T\n")
        self.assertEqual(ask(ports["TCP"], 2**607 - 1), b"T\n")
        pids = [daemon] + workers
        tasks = sum(len(os.listdir(f"/proc/{pid}/task")) for pid in pids)
        self.assertLessEqual(tasks, int(unitSetting(UNIT, "TasksMax")))
        peak = sum(status(pid, "VmHWM") for pid in pids) * 1024
        self.assertLess(peak, sizeInBytes(unitSetting(UNIT, "MemoryMax")))

        # KillMode=control-group: SIGTERM to every process of the unit,
        # once the daemon has read a request whose proof takes a second.
        with socket.create_connection(("127.0.0.1", ports["TCP"]), timeout=60) as s:
            s.sendall(b"%d\n" % randomPrime(1024, 25))
            waitUntilRead(s)
            for pid in pids:
                os.kill(pid, signal.SIGTERM)
            self.assertEqual(s.recv(16), b"T\n")
        notify.waitFor("STOPPING=1", process, timeout=STOP_TIMEOUT)
        self.assertEqual(process.popen.wait(STOP_TIMEOUT), -signal.SIGTERM)
        self.assertEqual([pid for pid in pids if os.path.exists(f"/proc/{pid}")], [])

        with open(trace) as f:
            calls = {line.split()[-1] for line in f
                     if re.match(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+\d+", line)} - {"total"}
        self.assertGreater(len(calls), 20)
        self.assertEqual(sorted(calls - allowedCalls()), [])
