"""
Start, watch and stop the servers a benchmark measures: primed (under
C{twistd}) and the bare ceiling (C{benchmarks/ceiling.py}).

Each server's output goes to a temporary file, not a pipe: a server that logs
into a pipe nobody drains would block mid-benchmark.  Ports are read from that
output, so every server binds port 0 and no two runs collide.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HOST = "127.0.0.1"
HERE = os.path.dirname(os.path.abspath(__file__))

#: twistd from the running interpreter's environment (C{python -m twisted}
#: is C{twist}, not C{twistd}).
_TWISTD = "import sys; from twisted.scripts.twistd import run; sys.exit(run())"

_PRIMED_TCP = re.compile(rb"Listening for TCP on [0-9.]+:(\d+)")
_PRIMED_UDP = re.compile(rb"Listening for UDP on [0-9.]+:(\d+)")
_CEILING = re.compile(rb"ceiling tcp=(\d+) udp=(\d+)")

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machineBusySeconds():
    """
    CPU seconds the whole machine has spent busy (all but idle and iowait),
    summed over its cores: what others' processes take shows as the busy
    time that neither the server nor the load generator accounts for.
    """
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    # guest and guest_nice (9, 10) are already counted in user and nice.
    return (sum(fields[:8]) - idle) / _CLOCK_TICKS


def waitForQuiet(maxWait, threshold=0.25, sample=0.25):
    """
    Wait, at most C{maxWait} seconds, until the machine's busy cores over
    C{sample} seconds drop to C{threshold} or below: on a shared machine a
    run that starts while someone else's tests hog a core measures them.

    @return: the busy cores of the last sample.
    """
    deadline = time.monotonic() + maxWait
    while True:
        before = machineBusySeconds()
        time.sleep(sample)
        busy = (machineBusySeconds() - before) / sample
        if busy <= threshold or time.monotonic() >= deadline:
            return busy


def _schedstatSeconds(pid):
    """
    Seconds on a CPU of every live thread of C{pid}.
    """
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as f:
            total += int(f.read().split()[0])
    if not total:
        raise ValueError("no schedstat accounting")
    return total / 1e9


class ServerError(Exception):
    """
    A server did not start; the message carries the tail of its output.
    """


class Server:
    """
    One or more processes answering on one TCP and one UDP port.

    @ivar name: the label used in result tables.
    @ivar tcpPort: the bound TCP port.
    @ivar udpPort: the bound UDP port.
    """

    def __init__(self, name):
        self.name = name
        self.tcpPort = None
        self.udpPort = None
        self._procs = []
        self._logs = []

    @property
    def pids(self):
        return [proc.pid for proc in self._procs]

    def _spawn(self, argv, env=None):
        log = tempfile.NamedTemporaryFile(prefix="primed-bench-", suffix=".log")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tempfile.gettempdir(),
            env=env,
        )
        self._procs.append(proc)
        self._logs.append(log)
        return proc, log

    def _waitFor(self, proc, log, patterns, timeout=30.0):
        """
        Poll C{log} until every pattern matched or C{timeout} passed.

        @return: the match of each pattern.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(log.name, "rb") as f:
                text = f.read()
            found = [p.search(text) for p in patterns]
            if all(found):
                return found
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise ServerError(
            f"{self.name} did not report its ports "
            f"(exit status {proc.poll()}):\n{self.outputTail()}"
        )

    def outputTail(self, size=4000):
        """
        The last C{size} bytes of every process's output, for error messages.
        """
        parts = []
        for log in self._logs:
            with open(log.name, "rb") as f:
                parts.append(f.read()[-size:].decode("utf-8", "replace"))
        return "\n---\n".join(parts)

    def cpuSeconds(self):
        """
        CPU time consumed so far by all the server's processes, all their
        threads included: the scheduler's nanosecond count
        (C{/proc/PID/task/*/schedstat}) where the kernel keeps it, else
        user plus system time in clock ticks (10 ms steps: too coarse for
        short runs of a slow server).
        """
        total = 0.0
        for pid in self.pids:
            try:
                total += _schedstatSeconds(pid)
                continue
            except (OSError, ValueError):
                pass
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # Fields 14 and 15 (utime, stime); the split above starts at 3.
            total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
        return total

    def alive(self):
        return bool(self._procs) and all(p.poll() is None for p in self._procs)

    def stop(self, timeout=15.0):
        """
        SIGTERM every process, SIGKILL what is still there after C{timeout}.
        Safe to call twice.
        """
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for log in self._logs:
            log.close()
        self._logs = []


def startCeiling(processes=1):
    """
    Start the bare ceiling; with C{processes > 1}, that many sharing one
    port through C{SO_REUSEPORT}.
    """
    server = Server("ceiling" if processes == 1 else f"ceiling x{processes}")
    script = os.path.join(HERE, "ceiling.py")
    try:
        tcpPort = udpPort = 0
        for i in range(processes):
            argv = [sys.executable, script, "--host", HOST]
            argv += ["--tcp-port", str(tcpPort), "--udp-port", str(udpPort)]
            if processes > 1:
                argv.append("--reuseport")
            proc, log = server._spawn(argv)
            [match] = server._waitFor(proc, log, [_CEILING])
            tcpPort, udpPort = int(match.group(1)), int(match.group(2))
        server.tcpPort, server.udpPort = tcpPort, udpPort
    except BaseException:
        server.stop()
        raise
    return server


def startPrimed(processes=1, extra=(), reactor=None, name=None, python=None):
    """
    Start primed under C{twistd -n}; with C{processes > 1}, that many with
    C{--reuseport} on one port (the first binds port 0, the others its port).

    @param extra: further C{primed} options, e.g. C{["--threads", "2"]}.
    @param name: the label in result tables, if not the usual one.
    @param python: the interpreter whose primed to run (another virtualenv's,
        to compare versions); this one by default.
    @param reactor: C{twistd --reactor} name; primed's own by default.
    """
    server = Server(name or ("primed" if processes == 1 else f"primed x{processes}"))
    try:
        tcpPort = udpPort = 0
        for i in range(processes):
            argv = [python or sys.executable, "-c", _TWISTD, "-n", "-l", "-", "--pidfile="]
            if reactor:
                argv.append(f"--reactor={reactor}")
            argv += ["primed", "--listen", f"tcp:{tcpPort}:interface={HOST}"]
            argv += ["--udp", f"{HOST}:{udpPort}", *extra]
            if processes > 1:
                argv.append("--reuseport")
            proc, log = server._spawn(argv)
            found = server._waitFor(proc, log, [_PRIMED_TCP, _PRIMED_UDP])
            tcpPort, udpPort = (int(m.group(1)) for m in found)
        server.tcpPort, server.udpPort = tcpPort, udpPort
    except BaseException:
        server.stop()
        raise
    return server


_PEER = re.compile(rb"(?:cpeer|aiopeer) tcp=(\d+) udp=(\d+)")
PEERS_DIR = os.path.join(HERE, "peers")


def buildCPeer():
    """
    Compile C{peers/cpeer.c} with the system compiler (C{cc}, FLINT and GMP
    from Debian's C{libflint-dev} and C{libgmp-dev}) into a temporary
    directory.

    @return: the executable's path.
    """
    out = os.path.join(tempfile.mkdtemp(prefix="primed-cpeer-"), "cpeer")
    source = os.path.join(PEERS_DIR, "cpeer.c")
    result = subprocess.run(
        ["cc", "-O2", "-o", out, source, "-lflint", "-lgmp"], capture_output=True, text=True
    )
    if result.returncode:
        raise ServerError(f"cc could not build {source} (apt-get install libflint-dev "
                          f"libgmp-dev):\n{result.stderr}")
    return out


def startPeer(name, extra=()):
    """
    Start one peer: C{"c"} (the C server, compiled here), C{"uvloop"} or
    C{"asyncio"} (C{peers/aiopeer.py} with and without uvloop).
    """
    if name == "c":
        argv = [buildCPeer()]
    elif name in ("uvloop", "asyncio"):
        argv = [sys.executable, os.path.join(PEERS_DIR, "aiopeer.py")]
        if name == "uvloop":
            argv.append("--uvloop")
    else:
        raise ValueError(f"unknown peer {name!r}")
    server = Server(name)
    try:
        argv += ["--host", HOST, "--tcp-port", "0", "--udp-port", "0", *extra]
        proc, log = server._spawn(argv)
        [match] = server._waitFor(proc, log, [_PEER])
        server.tcpPort, server.udpPort = int(match.group(1)), int(match.group(2))
    except BaseException:
        server.stop()
        raise
    finally:
        if name == "c":  # a running executable may be unlinked
            shutil.rmtree(os.path.dirname(argv[0]), ignore_errors=True)
    return server
