"""
The figures of issue 5 (stays up, stays small), measured on the real daemon:

  - RSS growth, and another client's latency, while a hog pipelines small
    numbers as fast as it can for 8 s and never reads (targets < 32 MiB,
    < 250 ms); the same with a hog sending 183-digit primes (pool work);
  - p99 of small requests while every pool thread checks the biggest prime
    that needs no search below the digit limit (target < 50 ms);
  - RSS with 1000 idle connections;
  - a 4 MiB line without a newline and a 200 000-digit number: time to the
    answer (E or a close; target < 1 s), RSS growth (< 64 MiB), and whether
    the next client is served.

Run through C{python benchmarks/load.py --robustness}.  Each figure gets a
fresh primed, so RSS baselines do not carry over.  Every loop is bounded by
a deadline; these are measurements, never assertions.
"""

import resource
import select
import socket
import threading
import time

try:
    from benchmarks import _servers
except ImportError:
    import _servers

#: 2**11213 - 1, a Mersenne prime of 3376 digits: the biggest prime below
#: primed's default 4300-digit limit that takes no search to produce (a
#: random 4300-digit prime takes minutes to find).  Primes are the worst
#: case: every round of the test runs.
BIG_PRIME = (1 << 11213) - 1


def rssBytes(pid):
    """
    The resident set size of process C{pid}.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for {pid}")


def ask(port, line, timeout=5.0):
    """
    One request on a new connection.

    @return: C{(reply, seconds)}; the reply is C{b""} if the connection was
        closed without one, L{None} on timeout.
    """
    start = time.monotonic()
    with socket.create_connection((_servers.HOST, port), timeout=timeout) as sock:
        sock.sendall(line)
        reply = b""
        deadline = start + timeout
        while not reply.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None, time.monotonic() - start
            sock.settimeout(remaining)
            try:
                data = sock.recv(64)
            except socket.timeout:
                return None, time.monotonic() - start
            except ConnectionResetError:
                data = b""
            if not data:
                break
            reply += data
    return reply, time.monotonic() - start


class Prober(threading.Thread):
    """
    Another client: one small request every C{interval} seconds on its own
    connection, latencies kept, until stopped (bounded by C{maxSeconds}).
    """

    def __init__(self, port, interval=0.02, maxSeconds=60.0):
        super().__init__(daemon=True)
        self.port = port
        self.interval = interval
        self.maxSeconds = maxSeconds
        self.latencies = []
        self.failures = 0
        self._stopping = threading.Event()

    def run(self):
        deadline = time.monotonic() + self.maxSeconds
        sock = socket.create_connection((_servers.HOST, self.port), timeout=5)
        try:
            while not self._stopping.is_set() and time.monotonic() < deadline:
                start = time.monotonic()
                try:
                    sock.sendall(b"1000000007\n")
                    reply = sock.recv(16)
                except OSError:
                    reply = b""
                if reply == b"T\n":
                    self.latencies.append(time.monotonic() - start)
                else:
                    self.failures += 1
                    sock.close()
                    sock = socket.create_connection((_servers.HOST, self.port), timeout=5)
                self._stopping.wait(self.interval)
        finally:
            sock.close()

    def stop(self):
        self._stopping.set()
        self.join(10)

    def quantile(self, q):
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def hog(port, line, seconds):
    """
    Pipeline C{line} as fast as the server takes it for C{seconds}, never
    reading a reply.

    @return: bytes sent.
    """
    sent = 0
    chunk = line * max(1, 65536 // len(line))
    with socket.create_connection((_servers.HOST, port), timeout=5) as sock:
        sock.setblocking(False)
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                select.select([], [sock], [], min(0.05, remaining))
            except OSError:
                break
    return sent


def hogFigure(primedArgs, line, seconds=8.0):
    """
    RSS growth and another client's latency while one hog pipelines C{line}.
    """
    server = _servers.startPrimed(extra=primedArgs)
    try:
        pid = server.pids[0]
        ask(server.tcpPort, b"2\n")  # warm the daemon up before the baseline
        baseline = rssBytes(pid)
        prober = Prober(server.tcpPort, maxSeconds=seconds + 10)
        prober.start()
        peak = baseline
        result = {}

        def sample():
            nonlocal peak
            deadline = time.monotonic() + seconds + 1
            while not prober._stopping.is_set() and time.monotonic() < deadline:
                peak = max(peak, rssBytes(pid))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        result["sent"] = hog(server.tcpPort, line, seconds)
        peak = max(peak, rssBytes(pid))
        prober.stop()
        sampler.join(5)
        result["rssGrowth"] = peak - baseline
        result["otherMax"] = max(prober.latencies) if prober.latencies else None
        result["otherP99"] = prober.quantile(0.99)
        result["otherCount"] = len(prober.latencies)
        result["otherFailures"] = prober.failures
        result["alive"] = server.alive()
        return result
    finally:
        server.stop()


def poolSaturatedFigure(primedArgs, threads=2, seconds=8.0):
    """
    p99 of small requests while C{threads * 2} connections keep the pool
    busy with L{BIG_PRIME}, each re-sending as soon as it is answered.
    """
    server = _servers.startPrimed(extra=[f"--threads={threads}", *primedArgs])
    stop = threading.Event()
    bigAnswers = []

    def bigClient():
        with socket.create_connection((_servers.HOST, server.tcpPort), timeout=30) as sock:
            line = b"%d\n" % BIG_PRIME
            while not stop.is_set():
                sock.sendall(line)
                if sock.recv(16) != b"T\n":
                    return
                bigAnswers.append(time.monotonic())

    try:
        clients = [threading.Thread(target=bigClient, daemon=True) for _ in range(threads * 2)]
        for client in clients:
            client.start()
        time.sleep(1.0)  # let every pool thread start on a big one
        prober = Prober(server.tcpPort, maxSeconds=seconds + 5)
        prober.start()
        time.sleep(seconds)
        prober.stop()
        stop.set()
        for client in clients:
            client.join(30)
        return {
            "p50": prober.quantile(0.5),
            "p99": prober.quantile(0.99),
            "max": max(prober.latencies) if prober.latencies else None,
            "count": len(prober.latencies),
            "bigPerSecond": len(bigAnswers) / (seconds + 1.0),
        }
    finally:
        stop.set()
        server.stop()


def idleConnectionsFigure(primedArgs, count=1000):
    """
    RSS of primed with C{count} idle connections, each having asked one
    question (so each is surely accepted and set up).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 256), hard))
    server = _servers.startPrimed(extra=primedArgs)
    socks = []
    try:
        pid = server.pids[0]
        ask(server.tcpPort, b"2\n")
        baseline = rssBytes(pid)
        answered = 0
        deadline = time.monotonic() + 60
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            sock = socket.create_connection((_servers.HOST, server.tcpPort), timeout=5)
            socks.append(sock)
            sock.sendall(b"7\n")
            try:
                answered += sock.recv(16) == b"T\n"
            except socket.timeout:
                pass
        time.sleep(0.5)
        rss = rssBytes(pid)
        reply, seconds = ask(server.tcpPort, b"13\n")
        return {
            "connections": len(socks),
            "answered": answered,
            "baseline": baseline,
            "rss": rss,
            "perConnection": (rss - baseline) / max(1, len(socks)),
            "nextServed": reply,
        }
    finally:
        for sock in socks:
            sock.close()
        server.stop()


def oversizeFigure(primedArgs, payload, label):
    """
    Send C{payload}; time from the last byte sent to the answer (or close),
    RSS growth, and whether a new client is served afterwards.
    """
    server = _servers.startPrimed(extra=primedArgs)
    try:
        pid = server.pids[0]
        ask(server.tcpPort, b"2\n")
        baseline = rssBytes(pid)
        peak = baseline
        outcome = None
        with socket.create_connection((_servers.HOST, server.tcpPort), timeout=5) as sock:
            sock.setblocking(False)
            view = memoryview(payload)
            reply = b""
            deadline = time.monotonic() + 20
            while view and time.monotonic() < deadline:
                readable, writable, _ = select.select([sock], [sock], [], 0.1)
                if writable:
                    try:
                        view = view[sock.send(view[:262144]) :]
                    except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                        if not readable:
                            break
                if readable:
                    try:
                        data = sock.recv(64)
                    except ConnectionResetError:
                        data = b""
                    if not data:
                        outcome = "closed while sending"
                        break
                    reply += data
                peak = max(peak, rssBytes(pid))
            doneSending = time.monotonic()
            while outcome is None and not reply.endswith(b"\n"):
                remaining = doneSending + 5 - time.monotonic()
                if remaining <= 0:
                    outcome = "no answer in 5 s"
                    break
                readable, _, _ = select.select([sock], [], [], min(0.1, remaining))
                peak = max(peak, rssBytes(pid))
                if readable:
                    try:
                        data = sock.recv(64)
                    except ConnectionResetError:
                        data = b""
                    if not data:
                        outcome = "closed"
                        break
                    reply += data
            if outcome is None:
                outcome = repr(reply)
            answerSeconds = time.monotonic() - doneSending
            sentAll = not view
        peak = max(peak, rssBytes(pid))
        nextReply, _ = ask(server.tcpPort, b"13\n")
        return {
            "label": label,
            "outcome": outcome,
            "sentAll": sentAll,
            "answerSeconds": answerSeconds,
            "rssGrowth": peak - baseline,
            "nextServed": nextReply,
        }
    finally:
        server.stop()


def _mib(n):
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def _ms(s):
    return "-" if s is None else f"{s * 1000:.1f} ms"


def run(primedArgs=(), log=print):
    """
    Measure every figure and print one table.
    """
    primedArgs = list(primedArgs)
    rows = []
    small = hogFigure(primedArgs, b"12345\n")
    rows.append(
        ("hog, small numbers, never reads, 8 s: RSS growth", _mib(small["rssGrowth"]), "< 32 MiB",
         small["rssGrowth"] < 32 * 2**20)
    )
    rows.append(
        ("  other client latency max (p99)", f"{_ms(small['otherMax'])} ({_ms(small['otherP99'])})",
         "< 250 ms", small["otherMax"] is not None and small["otherMax"] < 0.25)
    )
    log(f"small hog: {small}")
    import gmpy2

    prime183 = int(gmpy2.next_prime(7 * 10**182))
    big = hogFigure(primedArgs, b"%d\n" % prime183)
    rows.append(
        ("hog, 183-digit primes (pool), 8 s: RSS growth", _mib(big["rssGrowth"]), "< 32 MiB",
         big["rssGrowth"] < 32 * 2**20)
    )
    rows.append(
        ("  other client latency max (p99)", f"{_ms(big['otherMax'])} ({_ms(big['otherP99'])})",
         "< 250 ms", big["otherMax"] is not None and big["otherMax"] < 0.25)
    )
    log(f"183-digit hog: {big}")
    pool = poolSaturatedFigure(primedArgs)
    rows.append(
        (f"pool saturated with {len(str(BIG_PRIME))}-digit primes: small p99 (max)",
         f"{_ms(pool['p99'])} ({_ms(pool['max'])})", "p99 < 50 ms",
         pool["p99"] is not None and pool["p99"] < 0.05)
    )
    log(f"pool saturated: {pool}")
    idle = idleConnectionsFigure(primedArgs)
    rows.append(
        (f"{idle['connections']} idle connections: RSS (per connection)",
         f"{_mib(idle['rss'])} ({idle['perConnection'] / 1024:.1f} KiB)", "-", None)
    )
    log(f"idle connections: {idle}")
    for payload, label in [
        (b"1" * (4 * 2**20), "4 MiB line, no newline"),
        (b"7" * 200_000 + b"\n", "200 000-digit number"),
    ]:
        over = oversizeFigure(primedArgs, payload, label)
        rows.append(
            (f"{label}: answer; RSS growth", f"{over['outcome']} in {_ms(over['answerSeconds'])}; "
             f"{_mib(over['rssGrowth'])}", "< 1 s, < 64 MiB",
             over["answerSeconds"] < 1 and over["rssGrowth"] < 64 * 2**20)
        )
        rows.append(("  next client served", repr(over["nextServed"]), "b'T\\n'",
                     over["nextServed"] == b"T\n"))
        log(f"oversize: {over}")

    width = max(len(r[0]) for r in rows)
    print(f"\n{'figure':<{width}}  {'measured':<34}  {'target':<16}  ")
    print("-" * (width + 60))
    for name, value, target, ok in rows:
        verdict = "" if ok is None else ("ok" if ok else "MISS")
        print(f"{name:<{width}}  {value:<34}  {target:<16}  {verdict}")
