"""
Robustness figures of the real daemon: memory and other clients' latency
while one client misbehaves, the reactor's latency while the pool is
saturated, idle connections, over-long input, and a graceful stop.

    python benchmarks/robustness.py [--hog-seconds 8] [--saturate-seconds 6]
                                    [--idle-connections 1000]
                                    [--hogs 50] [--scenarios ABHSILD]
                                    [--baseline-python PYTHON]
                                    [--metrics-slow 300] [--silent-tls 1100]
                                    [--flooders 4] [--hostile-seconds 15]

Every scenario starts its own C{twistd -n -l - --pidfile= primed --listen
tcp:0:interface=127.0.0.1 --udp 127.0.0.1:0} (options added per scenario
are printed with it), talks to it over loopback only, and stops it; every
process started here is stopped before exit, whatever happens.  Nothing is
asserted: the table prints each figure next to its target from issue 5.

Scenarios:
  A  hog A: one client pipelines small numbers as fast as it can and never
     reads; daemon RSS growth and another client's latency meanwhile
  B  hog B: the same with 183-digit primes (pool work); the other client
     asks both a small number and a 183-digit prime
  H  --hogs clients at once (50) like B, with 60-digit primes, the smallest
     pool work (the most pool requests per read): memory is bounded per
     connection, so this shows the per-connection bound (target: the
     issue's 64 MiB for over-long input, as a yardstick)
  S  pool saturated: 2x--threads clients keep every pool thread busy with
     4300-digit primes (the --max-digits maximum); small requests on another
     connection, p50/p99/max.  Run twice: as installed (GIL-releasing check)
     and with the check patched to primed.primality.is_prime, which holds
     the GIL, for comparison
  I  RSS with N idle connections (RLIMIT_NOFILE raised if needed; the
     daemon inherits it)
  L  a 4 MiB line without newline and a 200 000-digit number: time to E,
     RSS growth, the same connection and the next client served
  D  drain: big primes plus a pipeline of small requests, SIGTERM, time to
     exit, replies received; then the same with --drain-timeout 1 cutting
     the work off (the log line with the count is printed)
  V  the pool's fairness over TCP (issue 21): a victim's 1332-digit prime
     alone and while a neighbour keeps 40 3376-digit primes queued
  R  a neighbour pipelines 40 3376-digit primes and resets after 1 s; the
     victim's 969-digit prime then, and the CPU spent afterwards
  U  the same fairness over UDP: a neighbour floods, the victim retries
     every 2 s
  (V, R and U: see benchmarks/_fairness.py; with --baseline-python they
  also run against that interpreter's primed, e.g. a virtualenv of an
  older commit, for the figures before the change.  Not run by default.)

  M, T, F  issue 21's attacks: slowloris on the --metrics port, 1100 silent
     TLS connections from one address, a TLS handshake flood from one
     address; see benchmarks/_hostile.py

Latency is measured from the request's send to its reply's last byte, one
request in flight at a time, a probe every 10 ms.  RSS is sampled every
10 ms (VmRSS); growth is the peak minus the value just before the scenario.
The machine is shared: the load average is printed beside the table.
"""

import argparse
import os
import random
import re
import resource
import shlex
import signal
import socket
import sys
import threading
import time

try:
    from benchmarks import _fairness, _hostile, _servers
    from benchmarks._measure import ms, percentile
except ImportError:  # run as a script: benchmarks/ is sys.path[0]
    import _fairness
    import _hostile
    import _servers
    from _measure import ms, percentile

HOST = "127.0.0.1"
MiB = 1 << 20

#: The largest prime the daemon checks by default, 4300 digits: 10**4299 +
#: 3187, the next prime after 10**4299; about 1.2 s per check on the
#: development machine.  Then 10**182 + 231, a 183-digit prime: pool work
#: (above INLINE_MAX_BITS), well under a millisecond.
MAX_PRIME_LINE = b"1" + b"0" * (4299 - 4) + b"3187\n"
MID_PRIME_LINE = b"1" + b"0" * (182 - 3) + b"231\n"
#: 10**59 + 19, a 60-digit prime (196 bits): the smallest kind of pool work,
#: so the most pool requests a read can carry.
SMALL_POOL_PRIME_LINE = b"1" + b"0" * 57 + b"19\n"

_TWISTD_ARGS = ["-n", "-l", "-", "--pidfile=", "primed"]
_LISTEN = ["--listen", f"tcp:0:interface={HOST}", "--udp", f"{HOST}:0"]

_RUN = "import sys; from twisted.scripts.twistd import run; sys.exit(run())"
#: The same, with the pool's check replaced by the GIL-holding one.
_RUN_HOLDING_GIL = (
    "import sys, primed.checker, primed.primality; "
    "primed.checker.is_prime_releasing_gil = primed.primality.is_prime; "
    "from twisted.scripts.twistd import run; sys.exit(run())"
)


# Processes.


class Primed(_servers.Server):
    """
    One C{twistd -n primed}, its output in a temporary file.
    """

    def __init__(self, extra=(), holdGIL=False):
        _servers.Server.__init__(self, "primed")
        self.argv = [sys.executable, "-c", _RUN_HOLDING_GIL if holdGIL else _RUN]
        self.argv += _TWISTD_ARGS + _LISTEN + list(extra)
        self.extra = list(extra)
        self.holdGIL = holdGIL

    def start(self):
        proc, log = self._spawn(self.argv)
        found = self._waitFor(proc, log, [_servers._PRIMED_TCP, _servers._PRIMED_UDP])
        self.tcpPort, self.udpPort = (int(m.group(1)) for m in found)
        self.proc = proc
        self.logName = log.name
        return self

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop(5)
            raise

    def __exit__(self, *exc):
        self.stop(5)

    def rss(self):
        return _status(self.proc.pid, "VmRSS")

    def output(self):
        with open(self.logName, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def describe(self):
        words = ["twistd"] + _TWISTD_ARGS + _LISTEN + self.extra
        text = " ".join(shlex.quote(w) for w in words)
        if self.holdGIL:
            text += "   [check patched to primality.is_prime: holds the GIL]"
        return text


def _status(pid, key):
    """
    A C{/proc/PID/status} size field, in bytes (0 once the process is gone).
    """
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssSampler(threading.Thread):
    """
    The daemon's peak RSS, sampled every 10 ms until L{stop}.
    """

    def __init__(self, daemon):
        threading.Thread.__init__(self, daemon=True)
        self.target = daemon
        self.before = daemon.rss()
        self.peak = self.before
        self._done = threading.Event()

    def run(self):
        while not self._done.wait(0.01):
            self.peak = max(self.peak, self.target.rss())

    def stop(self):
        self._done.set()
        self.join(5)
        self.peak = max(self.peak, self.target.rss())
        return self.peak - self.before


# Clients.


def connect(port, timeout=10.0):
    return socket.create_connection((HOST, port), timeout=timeout)


def readLine(sock, deadline):
    """
    Read up to and including the next newline (replies are 2 bytes).
    """
    data = b""
    while not data.endswith(b"\n"):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(64)
        if not chunk:
            raise ConnectionError("closed by the daemon")
        data += chunk
    return data


def readAll(sock, timeout):
    deadline = time.monotonic() + timeout
    chunks = []
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def probe(port, seconds, requests, interval=0.01, timeout=10.0):
    """
    Ask C{requests} (request line, expected reply) round-robin on one
    connection for C{seconds}, one at a time.

    @return: (latencies in seconds, one list per request in C{requests};
        number of wrong or missing replies)
    """
    latencies, errors = [[] for _ in requests], 0
    deadline = time.monotonic() + seconds
    with connect(port, timeout) as sock:
        i = 0
        while time.monotonic() < deadline:
            which = i % len(requests)
            line, expected = requests[which]
            i += 1
            start = time.perf_counter()
            try:
                sock.sendall(line)
                reply = readLine(sock, time.monotonic() + timeout)
            except OSError:
                errors += 1
                break
            latencies[which].append(time.perf_counter() - start)
            if reply != expected:
                errors += 1
            time.sleep(interval)
    return latencies, errors


class Hog(threading.Thread):
    """
    Pipelines C{chunk} round and round for C{seconds} and never reads.
    C{sent} counts the bytes the kernel took; once the daemon stops reading,
    sends block and C{blocked} counts the 0.1 s waits.
    """

    def __init__(self, port, chunk, seconds):
        threading.Thread.__init__(self, daemon=True)
        self.port = port
        self.chunk = memoryview(chunk)
        self.seconds = seconds
        self.sent = 0
        self.blocked = 0
        self.error = None
        # A small receive buffer (set before connecting, so the window stays
        # small): the replies fill the daemon's socket buffer, then its
        # transport's, within the run instead of the kernel's autotuned
        # megabytes on this side.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(10)
        self.sock.connect((HOST, port))

    def run(self):
        deadline = time.monotonic() + self.seconds
        sock, chunk, offset = self.sock, self.chunk, 0
        sock.settimeout(0.1)
        while time.monotonic() < deadline:
            try:
                n = sock.send(chunk[offset : offset + 65536])
            except socket.timeout:
                self.blocked += 1
                continue
            except OSError as e:
                self.error = e
                return
            self.sent += n
            offset = (offset + n) % len(chunk)

    def close(self):
        self.join(self.seconds + 5)
        self.sock.close()


class Refiller(threading.Thread):
    """
    Asks one big request at a time, again and again, until C{until}.
    """

    def __init__(self, port, line, expected, until):
        threading.Thread.__init__(self, daemon=True)
        self.port, self.line, self.expected, self.until = port, line, expected, until
        self.answered = 0
        self.wrong = 0
        self.error = None

    def run(self):
        try:
            with connect(self.port, 60) as sock:
                while time.monotonic() < self.until:
                    sock.sendall(self.line)
                    if readLine(sock, time.monotonic() + 60) == self.expected:
                        self.answered += 1
                    else:
                        self.wrong += 1
        except OSError as e:
            self.error = e


def mib(size):
    return f"{size / MiB:.1f} MiB"


def smallNumbers(count, seed=5):
    rng = random.Random(seed)
    return b"".join(b"%d\n" % rng.getrandbits(64) for _ in range(count))


def cpuSeconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# The table.


class Table:
    def __init__(self):
        self.rows = []

    def add(self, scenario, figure, value, target="", ok=None):
        verdict = "" if ok is None else ("pass" if ok else "FAIL")
        self.rows.append((scenario, figure, value, target, verdict))
        print(f"  {figure}: {value}  {target} {verdict}", flush=True)

    def print(self):
        headers = ("scenario", "figure", "value", "target", "")
        widths = [max(len(str(r[i])) for r in self.rows + [headers]) for i in range(5)]
        line = "  ".join("{:<%d}" % w for w in widths)
        print()
        print(line.format(*headers).rstrip())
        print(line.format(*("-" * w for w in widths)).rstrip())
        last = None
        for row in self.rows:
            shown = ("" if row[0] == last else row[0],) + row[1:]
            last = row[0]
            print(line.format(*shown).rstrip())


# Scenarios.


def hog(table, name, chunk, requests, seconds, hogs=1, target=32 * MiB):
    """
    C{hogs} clients that never read, a probe meanwhile.
    """
    with Primed() as daemon:
        print(f"{name}: {daemon.describe()}", flush=True)
        # Warm up: the pool threads and the code paths the hog uses.
        probe(daemon.tcpPort, 0.2, [(MID_PRIME_LINE, b"T\n"), (b"13\n", b"T\n")])
        sampler = RssSampler(daemon)
        sampler.start()
        hoggers = [Hog(daemon.tcpPort, chunk, seconds) for _ in range(hogs)]
        for hogger in hoggers:
            hogger.start()
        time.sleep(0.2)
        latencies, errors = probe(daemon.tcpPort, seconds - 0.4, requests)
        for hogger in hoggers:
            hogger.close()
        growth = sampler.stop()
        alive = daemon.alive()
    sent = sum(h.sent for h in hoggers)
    blocked = sum(h.blocked for h in hoggers) / 10 / hogs
    table.add(name, "hog sent (never reads)" if hogs == 1 else f"{hogs} hogs sent (never read)",
              f"{sent / MiB:.1f} MiB in {seconds:.0f} s, then blocked {blocked:.1f} s"
              + (" each on average" if hogs > 1 else ""))
    table.add(name, "daemon RSS growth",
              mib(growth) + (f" ({growth / hogs / 1024:.0f} KiB per hog)" if hogs > 1 else ""),
              f"< {target // MiB} MiB", growth < target)
    count = sum(len(each) for each in latencies)
    table.add(name, "other client: probes", f"{count}, {errors} wrong/missing",
              "0 wrong", errors == 0 and count > 0)
    for (line, _), each in zip(requests, latencies):
        what = "small" if len(line) < 20 else f"{len(line) - 1}-digit"
        p99, top = percentile(each, 0.99), max(each, default=float("nan"))
        table.add(name, f"other client, {what}: p99 / max", f"{ms(p99)} / {ms(top)}",
                  "< 250 ms", top < 0.25)
    if not alive:
        table.add(name, "daemon", "EXITED", "alive", False)


def scenarioA(table, args):
    hog(table, "A hog small", smallNumbers(60_000), [(b"13\n", b"T\n")], args.hog_seconds)


def scenarioB(table, args):
    chunk = MID_PRIME_LINE * (MiB // len(MID_PRIME_LINE))
    hog(table, "B hog 183-digit", chunk, [(b"13\n", b"T\n"), (MID_PRIME_LINE, b"T\n")],
        args.hog_seconds)


def scenarioH(table, args):
    chunk = SMALL_POOL_PRIME_LINE * (MiB // len(SMALL_POOL_PRIME_LINE))
    hog(table, f"H {args.hogs} hogs, 60-digit", chunk,
        [(b"13\n", b"T\n"), (SMALL_POOL_PRIME_LINE, b"T\n")], args.hog_seconds,
        hogs=args.hogs, target=64 * MiB)


def saturated(table, args, holdGIL):
    name = "S pool full, GIL " + ("held" if holdGIL else "released")
    threads = args.threads
    with Primed(["--threads", str(threads)], holdGIL=holdGIL) as daemon:
        print(f"{name}: {daemon.describe()}", flush=True)
        probe(daemon.tcpPort, 0.1, [(b"13\n", b"T\n")])
        until = time.monotonic() + args.saturate_seconds + 0.5
        refillers = [Refiller(daemon.tcpPort, MAX_PRIME_LINE, b"T\n", until)
                     for _ in range(2 * threads)]
        for r in refillers:
            r.start()
        time.sleep(0.5)
        cpuBefore, wallBefore = cpuSeconds(daemon.proc.pid), time.monotonic()
        busyBefore = _servers.machineBusySeconds()
        [latencies], errors = probe(daemon.tcpPort, args.saturate_seconds,
                                    [(b"13\n", b"T\n")])
        wall = time.monotonic() - wallBefore
        cpu = (cpuSeconds(daemon.proc.pid) - cpuBefore) / wall
        busy = (_servers.machineBusySeconds() - busyBefore) / wall
        for r in refillers:
            r.join(30)
        answered = sum(r.answered for r in refillers)
        wrong = sum(r.wrong for r in refillers) + sum(1 for r in refillers if r.error)
    table.add(name, "pool", f"{threads} threads, {2 * threads} clients of 4300-digit primes, "
              f"{answered} answered ({wrong} wrong/failed); daemon CPU {cpu:.0%}, "
              f"machine {busy:.0%} busy (of {100 * (os.cpu_count() or 1)}%)")
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    top = max(latencies, default=float("nan"))
    table.add(name, "small requests", f"{len(latencies)}, {errors} wrong/missing")
    table.add(name, "p50 / p99 / max", f"{ms(p50)} / {ms(p99)} / {ms(top)}",
              "p99 < 50 ms" if not holdGIL else "(comparison)",
              p99 < 0.05 if not holdGIL else None)
    return p50, p99, top


def scenarioS(table, args):
    released = saturated(table, args, holdGIL=False)
    held = saturated(table, args, holdGIL=True)
    print("\nPool saturated, side by side (small requests on another connection):")
    print(f"  {'check':<32} {'p50':>10} {'p99':>10} {'max':>10}")
    for label, figures in [("releases the GIL (installed)", released),
                           ("holds the GIL (patched)", held)]:
        print(f"  {label:<32} " + " ".join(f"{ms(f):>10}" for f in figures))


def raiseFileLimit(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def scenarioI(table, args):
    count = args.idle_connections
    name = f"I {count} idle"
    limit = raiseFileLimit(count + 200)  # the daemon inherits it
    # All from one address: the per-source limit (256 by default) is not
    # what this scenario measures.
    with Primed(["--max-connections-per-source", "0"]) as daemon:
        print(f"{name}: {daemon.describe()}  (RLIMIT_NOFILE {limit})", flush=True)
        probe(daemon.tcpPort, 0.1, [(b"13\n", b"T\n"), (MID_PRIME_LINE, b"T\n")])
        time.sleep(0.3)
        before = daemon.rss()
        socks = []
        try:
            for _ in range(count):
                socks.append(connect(daemon.tcpPort))
            # Accepted (not only queued in the backlog): one request on the last.
            socks[-1].sendall(b"13\n")
            readLine(socks[-1], time.monotonic() + 10)
            time.sleep(1.0)
            during = daemon.rss()
            for s in socks:
                s.sendall(b"13\n")
            answered = 0
            deadline = time.monotonic() + 20
            for s in socks:
                try:
                    answered += readLine(s, deadline) == b"T\n"
                except OSError:
                    pass
        finally:
            for s in socks:
                s.close()
    table.add(name, "RSS before / with them", f"{mib(before)} / {mib(during)}")
    table.add(name, "RSS per connection", f"{(during - before) / count / 1024:.1f} KiB")
    table.add(name, "then each asked 13", f"{answered}/{count} answered", "all",
              answered == count)


class Sender(threading.Thread):
    def __init__(self, sock, data):
        threading.Thread.__init__(self, daemon=True)
        self.sock, self.data, self.error = sock, data, None

    def run(self):
        try:
            self.sock.sendall(self.data)
        except OSError as e:
            self.error = e


def timeToE(sock, data):
    """
    Send C{data} from another thread; how long until C{E} comes back.
    """
    sender = Sender(sock, data)
    start = time.perf_counter()
    sender.start()
    try:
        reply = readLine(sock, time.monotonic() + 10)
    except OSError as e:
        reply = repr(e).encode()
    elapsed = time.perf_counter() - start
    sender.join(30)
    return reply, elapsed, sender.error


def scenarioL(table, args):
    with Primed() as daemon:
        print(f"L long input: {daemon.describe()}", flush=True)
        probe(daemon.tcpPort, 0.1, [(b"13\n", b"T\n")])
        time.sleep(0.2)
        sampler = RssSampler(daemon)
        sampler.start()
        for name, data in [("L 4 MiB line", b"7" * (4 * MiB)),
                           ("L 200000 digits", b"1" + b"0" * 199_999 + b"\n")]:
            with connect(daemon.tcpPort) as sock:
                reply, elapsed, error = timeToE(sock, data)
                table.add(name, "time to E", f"{ms(elapsed)} ({reply!r})", "< 1 s",
                          reply == b"E\n" and elapsed < 1 and error is None)
                tail = b"\n13\n" if not data.endswith(b"\n") else b"13\n"
                try:
                    sock.sendall(tail)
                    again = readLine(sock, time.monotonic() + 10)
                except OSError as e:
                    again = repr(e).encode()
                table.add(name, "same connection, then 13", repr(again), "b'T\\n'",
                          again == b"T\n")
            [latencies], errors = probe(daemon.tcpPort, 0.001, [(b"13\n", b"T\n")], 0)
            served = bool(latencies) and not errors
            table.add(name, "next client served",
                      f"yes ({ms(latencies[0])})" if served else "NO", "yes", served)
        growth = sampler.stop()
    table.add("L both", "daemon RSS growth", mib(growth), "< 64 MiB", growth < 64 * MiB)


def drain(table, name, extra, bigs, smalls, signalAfter=0.3):
    requests = [MAX_PRIME_LINE] * bigs + [b"%d\n" % n for n in range(smalls)]
    expected = b"T\n" * bigs + b"".join(
        b"T\n" if n > 1 and all(n % d for d in range(2, int(n**0.5) + 1)) else b"F\n"
        for n in range(smalls)
    )
    with Primed(extra) as daemon:
        print(f"{name}: {daemon.describe()}", flush=True)
        with connect(daemon.tcpPort, 60) as sock:
            sock.sendall(b"".join(requests))
            time.sleep(signalAfter)
            daemon.proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            data = readAll(sock, 30)
            try:
                status = daemon.proc.wait(30)
            except Exception:
                status = None
            exited = time.monotonic() - sent
        cut = [line for line in daemon.output().splitlines() if "Drain timeout" in line]
    replies = data.count(b"\n")
    table.add(name, "requests", f"{bigs} x 4300-digit prime + {smalls} small, "
              f"SIGTERM {signalAfter:.1f} s after sending")
    return data, expected, replies, len(requests), cut, exited, status


def scenarioD(table, args):
    name = "D drain"
    threads = args.threads
    bigs = 2 * threads
    data, expected, replies, total, cut, exited, status = drain(
        table, name, ["--threads", str(threads)], bigs, 2000)
    table.add(name, "SIGTERM to exit", f"{exited:.2f} s (status {status})",
              "exits, status -15", status == -signal.SIGTERM)
    table.add(name, "replies", f"{replies}/{total}, "
              f"{'all correct' if data == expected else 'WRONG'}", "all, in order",
              data == expected)
    name = "D drain cut off"
    data, expected, replies, total, cut, exited, status = drain(
        table, name, ["--threads", "1", "--drain-timeout", "1"], 6, 2000)
    # The deadline bounds the wait: after it, only the check running when it
    # passed (about a second at 4300 digits) may delay the exit.
    table.add(name, "SIGTERM to exit", f"{exited:.2f} s (status {status})",
              "< 1 s + one check (3 s)", exited < 3 and status == -signal.SIGTERM)
    table.add(name, "replies", f"{replies}/{total}, "
              f"{'a correct prefix' if expected.startswith(data) else 'WRONG'}",
              "a correct prefix", expected.startswith(data))
    logged = cut[0].split(" [-] ", 1)[-1] if cut else "none"
    table.add(name, "logged", logged.split("] ", 1)[-1], "a count", bool(cut))
    counted = re.search(r"(\d+) received request\(s\) left unanswered", logged)
    counted = int(counted.group(1)) if counted else None
    table.add(name, "logged count vs unanswered", f"{counted} vs {total - replies}",
              "equal", counted == total - replies)


SCENARIOS = {
    "A": scenarioA,
    "B": scenarioB,
    "H": scenarioH,
    "S": scenarioS,
    "I": scenarioI,
    "L": scenarioL,
    "D": scenarioD,
    "M": lambda table, args: _hostile.scenarioM(table, args, Primed, raiseFileLimit),
    "T": lambda table, args: _hostile.scenarioT(table, args, Primed, raiseFileLimit),
    "F": lambda table, args: _hostile.scenarioF(table, args, Primed, raiseFileLimit),
    "V": lambda table, args: _fairness.scenarioV(table, args, Primed),
    "R": lambda table, args: _fairness.scenarioR(table, args, Primed),
    "U": lambda table, args: _fairness.scenarioU(table, args, Primed),
}


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--hog-seconds", type=float, default=8.0, help="per hog (8)")
    parser.add_argument("--saturate-seconds", type=float, default=6.0,
                        help="probing while the pool is full, per run (6)")
    parser.add_argument("--idle-connections", type=int, default=1000, help="(1000)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="pool threads for S and D (the daemon's default: cores)")
    parser.add_argument("--hogs", type=int, default=50, help="hogs in scenario H (50)")
    parser.add_argument("--scenarios", default="ABHSILD",
                        help="which to run (ABHSILD; also V, R, U, M, T, F)")
    parser.add_argument("--baseline-python", default=None,
                        help="for V, R and U: also run that interpreter's primed")
    _hostile.addArguments(parser)
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {''.join(sorted(unknown))}")

    command = " ".join(shlex.quote(w) for w in [sys.executable, *sys.argv])
    print(f"command: {command}")
    print(f"daemon:  {Primed().describe()}  (+ per-scenario options)")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} "
          f"(shared: figures are noisy)")
    print(flush=True)
    table = Table()
    started = time.monotonic()
    for key in args.scenarios:
        try:
            SCENARIOS[key](table, args)
        except Exception as e:  # keep the other scenarios' figures
            table.add(key, "error", f"{type(e).__name__}: {e}", "", False)
    table.print()
    print(f"\n{time.monotonic() - started:.0f} s; load average now "
          f"{os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
