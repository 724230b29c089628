"""
A test network of hosts in Linux network namespaces: each host its own
namespace with one interface, C{eth0}, on a bridge that lives in a namespace
of its own, so nothing is added to the machine's own network.  Addresses
come from 10.250.0.0/24, which exists only inside these namespaces; names
carry the test process's pid, so parallel runs do not meet.  Needs root and
C{ip} (iproute2).

Processes run inside a host with C{ip netns exec}, which execs the command:
the process started is the program itself, so signals reach it directly.
"""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

SUBNET = "10.250.0"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


def venvScript(name: str) -> str:
    """
    A console script of the environment running the tests (the installed
    primed).
    """
    return os.path.join(os.path.dirname(sys.executable), name)


def _removeOrphans() -> None:
    """
    Delete the namespaces of test runs that died without cleaning up
    (SIGKILL, a power cut): their name carries the pid of a process that is
    gone.
    """
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name in re.findall(r"^(primed(\d+)-\w+)", listed, re.M):
        if not os.path.exists(f"/proc/{name[1]}"):
            _delete(name[0])


def _delete(ns: str) -> None:
    """
    Kill whatever still runs in the namespace, then delete it: deleting the
    name does not stop its programs, which would run on in a namespace nobody
    can name any more.
    """
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                          text=True, timeout=20).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


class Network:
    """
    Hosts by name, each with the address C{10.250.0.N}.  Use as a context
    manager: leaving it stops every process started through it and deletes
    every namespace, whatever happened.
    """

    def __init__(self, hosts: Dict[str, int]):
        self.tag = f"primed{os.getpid()}"
        self.hosts = dict(hosts)
        self.created: List[str] = []
        self.processes: List["Process"] = []
        self.directory = tempfile.mkdtemp(prefix=f"{self.tag}-")

    def namespace(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def address(self, host: str) -> str:
        return f"{SUBNET}.{self.hosts[host]}"

    def __enter__(self) -> "Network":
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> None:
        _removeOrphans()
        switch = self.namespace("switch")
        _ip("netns", "add", switch)
        self.created.append(switch)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for host, number in self.hosts.items():
            ns = self.namespace(host)
            _ip("netns", "add", ns)
            self.created.append(ns)
            port = f"p{number}"
            _ip("-n", switch, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "netns", ns)
            _ip("-n", switch, "link", "set", port, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def down(self) -> None:
        """
        Stop every process gracefully where it can (their logs are wanted),
        then kill anything left in the namespaces (a process started outside
        L{start}, one whose stop failed) and delete them, whatever fails.
        """
        try:
            for process in reversed(self.processes):
                try:
                    process.stop()
                except Exception:
                    pass
        finally:
            for ns in reversed(self.created):
                _delete(ns)
            self.created = []

    def command(self, host: str, argv: List[str]) -> List[str]:
        return ["ip", "netns", "exec", self.namespace(host), *argv]

    def run(self, host: str, argv: List[str], input: Optional[bytes] = None,
            timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(host, argv), input=input, capture_output=True,
                              timeout=timeout)

    def start(self, host: str, name: str, argv: List[str], **popen) -> "Process":
        process = Process(self, host, name, argv, **popen)
        self.processes.append(process)
        return process

    def received(self, host: str) -> int:
        """
        Bytes the host's C{eth0} has received so far.
        """
        return int(self.run(host, ["cat", "/sys/class/net/eth0/statistics/rx_bytes"]).stdout)

    def listening(self, host: str, needles: List[str], timeout: float = 20.0) -> None:
        """
        Wait until the host has sockets bound to every one of C{needles}
        (C{ss}'s local address column, e.g. C{10.250.0.2:8809}).
        """
        deadline = time.monotonic() + timeout
        while True:
            out = self.run(host, ["ss", "-Hltnu"]).stdout.decode()
            if all(needle in out for needle in needles):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{host}: not listening on {needles}:\n{out}")
            time.sleep(0.05)


class Process:
    """
    A long-running program on one host, its output in a file (so a chatty
    program never blocks on a full pipe).
    """

    def __init__(self, network: Network, host: str, name: str, argv: List[str], **popen):
        self.network = network
        self.host = host
        self.logPath = os.path.join(network.directory, f"{name}.log")
        self._log = open(self.logPath, "ab")
        #: Where this run's output starts (a restarted program appends).
        self.startOffset = self._log.tell()
        self.process = subprocess.Popen(
            network.command(host, argv), stdout=self._log, stderr=subprocess.STDOUT,
            stdin=popen.pop("stdin", subprocess.DEVNULL), cwd=network.directory, **popen,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def text(self, start: int = 0) -> str:
        """
        The output from byte C{start} on (latin-1: one character a byte, so
        offsets stay byte offsets).
        """
        with open(self.logPath, "rb") as f:
            f.seek(start)
            return f.read().decode("latin-1")

    def waitFor(self, text: str, timeout: float = 20.0, start: Optional[int] = None) -> int:
        """
        Wait until C{text} is in the output after byte C{start} (by default,
        this run's first); return the offset just past it.
        """
        deadline = time.monotonic() + timeout
        if start is None:
            start = self.startOffset
        while True:
            log = self.text(start)
            found = log.find(text)
            if found >= 0:
                return start + found + len(text)
            if self.process.poll() is not None:
                raise AssertionError(f"{self.logPath}: exited ({self.process.returncode}) "
                                     f"before {text!r}:\n{log[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.logPath}: no {text!r} within {timeout}s:\n"
                                     f"{log[-3000:]}")
            time.sleep(0.02)

    def size(self) -> int:
        return os.path.getsize(self.logPath)

    def sendSignal(self, number: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(number)

    def wait(self, timeout: float = 20.0) -> int:
        return self.process.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> Optional[int]:
        try:
            if self.process.poll() is None:
                self.process.send_signal(sig)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(5)
            return self.process.returncode
        finally:
            self._log.close()
