"""
Where a UDP request's CPU goes, server by server: user against system time,
context switches, system calls and user-space instructions per request.

    python benchmarks/udpprofile.py [--servers primed,c,uvloop] [--repeat 3]
        [--duration 5] [--sockets 10] [--depth 5] [--syscalls] [--callgrind]
        [--baseline-python OTHER-VENV/bin/python] [--keep PREFIX]

Servers: C{primed}, C{base} (the primed of C{--baseline-python}), the peers
C{c}, C{uvloop}, C{asyncio}, C{ceiling}, and C{floor}
(C{peers/floorudp.py}: Python's two socket calls per datagram and nothing
else).  Each gets C{load.py}'s scenario (d) load (C{--sockets} connected UDP
sockets, C{--depth} datagrams in flight on each) from one generator
process, runs interleaved (A B B A ...), the leanest of C{--repeat} shown,
per answered request:

* C{cpu}: microseconds of server CPU (the scheduler's nanosecond counts);
  C{user}, C{sys}: its split (C{/proc/PID/task/*/stat}, 10 ms ticks, so
  noisy); page faults, sleeps (voluntary context switches) and
  preemptions (involuntary ones);
* with C{--syscalls}: system calls per request, counted by C{perf stat} on
  the kernel's tracepoints (no slowdown, unlike strace), with the reads
  that failed with C{EAGAIN};
* with C{--callgrind}: user-space instructions per request, the server run
  under C{valgrind --tool=callgrind} (zeroed once the load is up, dumped
  after the window; C{--keep} copies the dump for C{callgrind_annotate}).
  Steady on a shared machine, where times are not.  Under valgrind the
  server is the bottleneck and finds its queue full on every read event,
  as (d) does at full speed.
"""

import argparse
import glob
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

try:
    from benchmarks import _loadgen, _servers
    from benchmarks._measure import makeRequests
except ImportError:
    import _loadgen
    import _servers
    from _measure import makeRequests

_TICKS = os.sysconf("SC_CLK_TCK")


def _times(pids):
    """
    User and system seconds, minor page faults, voluntary (sleeps) and
    involuntary context switches of every thread of C{pids}.
    """
    user = system = faults = sleeps = preempted = 0
    for pid in pids:
        for task in glob.glob(f"/proc/{pid}/task/*"):
            try:
                with open(f"{task}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"{task}/status") as f:
                    status = dict(line.split(":", 1) for line in f if ":" in line)
            except OSError:
                continue
            faults += int(fields[7])
            user += int(fields[11])
            system += int(fields[12])
            sleeps += int(status["voluntary_ctxt_switches"])
            preempted += int(status["nonvoluntary_ctxt_switches"])
    return user / _TICKS, system / _TICKS, faults, sleeps, preempted


def _load(pipe, port, sockets, depth, requests, startAt, endAt):
    try:
        result = _loadgen.runUDP(_servers.HOST, port, sockets, depth, requests, startAt, endAt)
    except BaseException as e:
        result = {"error": repr(e)}
    pipe.send(result)


def measure(server, args, requests, warmup=1.0, before=None, after=None):
    ctx = multiprocessing.get_context("fork")
    ours, theirs = ctx.Pipe(duplex=False)
    startAt = time.monotonic() + warmup
    endAt = startAt + args.duration
    proc = ctx.Process(
        target=_load,
        args=(theirs, server.udpPort, args.sockets, args.depth, requests, startAt, endAt),
        daemon=True,
    )
    proc.start()
    time.sleep(max(0.0, startAt - time.monotonic()))
    extra = before() if before else None
    t0 = _times(server.pids)
    cpu = server.cpuSeconds()
    time.sleep(max(0.0, endAt - time.monotonic()))
    cpu = server.cpuSeconds() - cpu
    t1 = _times(server.pids)
    found = after(extra) if after else None
    result = ours.recv()
    proc.join(10)
    if "error" in result:
        raise RuntimeError(result["error"])
    n = result["completed"]
    return {
        "requests": n,
        "cpu": cpu / n * 1e6,
        "user": (t1[0] - t0[0]) / n * 1e6,
        "sys": (t1[1] - t0[1]) / n * 1e6,
        "faults": (t1[2] - t0[2]) / n,
        "sleeps": (t1[3] - t0[3]) / n,
        "preempted": (t1[4] - t0[4]) / n,
        "extra": found,
    }


#: System calls counted with C{--syscalls}, and failed reads (EAGAIN).
_CALLS = ["recvfrom", "sendto", "recvmsg", "sendmsg", "epoll_wait", "epoll_pwait",
          "epoll_ctl", "ioctl", "read", "write", "futex", "brk", "mmap", "munmap", "madvise"]


def _perf(server):
    argv = ["perf", "stat", "-x", ",", "-p", str(server.pids[0])]
    for call in _CALLS:
        argv += ["-e", f"syscalls:sys_enter_{call}"]
    argv += ["-e", "raw_syscalls:sys_enter"]
    argv += ["-e", "syscalls:sys_exit_recvfrom", "--filter", "ret == -11"]
    argv += ["-e", "syscalls:sys_exit_recvmsg", "--filter", "ret == -11"]
    out = tempfile.NamedTemporaryFile(suffix=".perf", delete=False)
    out.close()
    proc = subprocess.Popen(argv + ["-o", out.name], stderr=subprocess.DEVNULL)
    time.sleep(0.2)
    return proc, out.name


def _perfDone(started):
    proc, path = started
    proc.send_signal(2)
    proc.wait(10)
    counts = {}
    with open(path) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) > 2 and parts[0].isdigit():
                name = parts[2].split(":")[1].replace("sys_enter_", "")
                name = "all" if name == "sys_enter" else name
                name = name.replace("sys_exit_", "EAGAIN ")
                counts[name] = int(parts[0])
    os.unlink(path)
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="primed,c,uvloop")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--sockets", type=int, default=10)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--syscalls", action="store_true")
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--primed-arg", action="append", default=[])
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per server, interleaved (A B B A ...); the leanest is shown")
    parser.add_argument("--baseline-python",
                        help="server 'base': the primed installed for this interpreter")
    parser.add_argument("--keep", help="with --callgrind: copy callgrind's dump here")
    args = parser.parse_args(argv)
    requests = makeRequests()
    rows = []
    names = args.servers.split(",")
    if args.callgrind:
        rows = [(name, callgrind(name, args, requests)) for name in names]
    else:
        servers = {name: _start(name, args) for name in names}
        try:
            runs = {name: [] for name in names}
            for i in range(args.repeat):
                for name in names if i % 2 == 0 else names[::-1]:
                    server = servers[name]
                    before = after = None
                    if args.syscalls:
                        before, after = (lambda: _perf(server)), _perfDone
                    runs[name].append(measure(server, args, requests, before=before, after=after))
            rows = [(name, min(runs[name], key=lambda r: r["cpu"]))
                    for name in names]
        finally:
            for server in servers.values():
                server.stop()
    for name, row in rows:
        line = f"{name:8s} {row['requests'] / args.duration:9,.0f} req/s"
        if "instructions" in row:
            line += f"  {row['instructions'] / 1000:6.1f}k instructions/req"
        else:
            line += (f"  cpu {row['cpu']:5.2f} (user {row['user']:5.2f}  sys {row['sys']:5.2f}) us/req;"
                     f"  per request: faults {row['faults']:.3f}, sleeps {row['sleeps']:.3f},"
                     f" preempted {row['preempted']:.3f}")
        if row.get("extra"):
            n = row["requests"]
            calls = ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(
                row["extra"].items(), key=lambda kv: -kv[1]) if v / n >= 0.01)
            line += f"\n         per request: {calls}"
        print(line)
    return 0


def _start(name, args, wrap=None):
    if name == "primed":
        server = _servers.startPrimed(extra=args.primed_arg, python=wrap)
    elif name == "base":
        server = _servers.startPrimed(extra=args.primed_arg, python=args.baseline_python,
                                      name="base")
    elif name == "ceiling":
        server = _servers.startCeiling()
    elif name == "floor":
        server = _servers.Server(name)
        proc, log = server._spawn([sys.executable, os.path.join(_servers.PEERS_DIR, "floorudp.py"),
                                   "--host", _servers.HOST])
        [m] = server._waitFor(proc, log, [re.compile(rb"floorudp tcp=0 udp=(\d+)")])
        server.udpPort = int(m.group(1))
    else:
        server = _servers.startPeer(name)
    return server


def callgrind(name, args, requests):
    """
    Instructions per request: the server under callgrind, zeroed after the
    warm-up, dumped after the window.
    """
    outdir = tempfile.mkdtemp(prefix="udpprofile-")
    wrapper = os.path.join(outdir, "python")
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={outdir}/cg.%p"]
    if name == "c":
        target = _servers.buildCPeer()
    else:
        target = sys.executable
    with open(wrapper, "w") as f:
        f.write(f"#!/bin/sh\nexec {' '.join(valgrind)} {target} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    if name == "primed":
        server = _servers.startPrimed(extra=args.primed_arg, python=wrapper)
    elif name == "c":
        server = _servers.Server("c")
        proc, log = server._spawn([wrapper, "--host", _servers.HOST, "--tcp-port", "0",
                                   "--udp-port", "0"])
        [m] = server._waitFor(proc, log, [_servers._PEER], timeout=120)
        server.tcpPort, server.udpPort = int(m.group(1)), int(m.group(2))
    elif name == "floor":
        server = _servers.Server(name)
        proc, log = server._spawn([wrapper, os.path.join(_servers.PEERS_DIR, "floorudp.py"),
                                   "--host", _servers.HOST])
        [m] = server._waitFor(proc, log, [re.compile(rb"floorudp tcp=0 udp=(\d+)")],
                              timeout=120)
        server.udpPort = int(m.group(1))
    else:
        argv = [wrapper, os.path.join(_servers.PEERS_DIR, "aiopeer.py")]
        if name == "uvloop":
            argv.append("--uvloop")
        server = _servers.Server(name)
        proc, log = server._spawn(argv + ["--host", _servers.HOST, "--tcp-port", "0",
                                          "--udp-port", "0"])
        [m] = server._waitFor(proc, log, [_servers._PEER], timeout=120)
        server.tcpPort, server.udpPort = int(m.group(1)), int(m.group(2))
    try:
        pid = str(server.pids[0])

        def zero():
            subprocess.run(["callgrind_control", "-z", pid], capture_output=True, check=True)

        def dump(_):
            for f in glob.glob(f"{outdir}/cg.*"):
                os.unlink(f)
            subprocess.run(["callgrind_control", "-d", pid], capture_output=True, check=True)
            total = 0
            for f in glob.glob(f"{outdir}/cg.*"):
                with open(f) as fh:
                    for line in fh:
                        m = re.match(r"(?:summary|totals): (\d+)", line)
                        if m:
                            total = max(total, int(m.group(1)))
            if args.keep:
                for f in glob.glob(f"{outdir}/cg.*"):
                    shutil.copy(f, f"{args.keep}.{name}")
            return total

        row = measure(server, args, requests, warmup=5.0, before=zero, after=dump)
        row["instructions"] = row.pop("extra") / row["requests"]
        return row
    finally:
        server.stop(timeout=30)
        shutil.rmtree(outdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
