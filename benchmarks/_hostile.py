"""
Issue 21's attacks for C{benchmarks/robustness.py}: scenarios M (slowloris
on the C{--metrics} port), T (silent TLS connections from one address) and
F (a flood of complete TLS handshakes from one address).  Each starts its
own daemon through robustness's L{Primed}, talks to it over loopback only
(a second loopback address, 127.0.0.2, is "another address"), and stops it.

  M  C{--metrics-slow} connections (300) each send one byte of a request
     head a second, reconnecting whenever primed closes one; meanwhile a
     fresh C{GET /healthz} every 100 ms for C{--hostile-seconds}: the share
     answered 200, and their p50/p95/max latency (targets: >= 95 %, p95 <=
     500 ms)
  T  C{--silent-tls} connections (1100) to an C{ssl:} listener from
     127.0.0.1 that never send a byte; meanwhile a probe from 127.0.0.2, a
     new connection to the plain port with one request each 100 ms: its
     worst latency and failures (target: every probe answered, <= 2 s), and
     the share of the silent connections primed closed within 30 s
     (target: >= 95 %)
  F  C{--flooders} (4) processes of 8 asyncio tasks each (at nice 19: an
     attacker's handshakes cost its own CPU, here they share the cores with
     the daemon) completing TLS handshakes in a loop from 127.0.0.1, going
     on when refused; the
     same probe from 127.0.0.2 without a flood, with the flood against a
     second daemon (what the flood costs the machine), with the flood
     against the probed daemon (C{--max-handshakes-per-source} at its
     default, 50), and against one without that limit: p50/p99/max, the
     probed daemon's CPU and the handshakes a second achieved.  Does one source's handshake flood slow
     the others enough to need a per-source rate limit?
"""

import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

try:
    from benchmarks._measure import ms, percentile
except ImportError:  # run as a script: benchmarks/ is sys.path[0]
    from _measure import ms, percentile

HOST = "127.0.0.1"
OTHER = "127.0.0.2"
_METRICS = re.compile(r"Serving metrics on http://([0-9.]+):(\d+)/metrics")
_TLS = re.compile(r"Listening for TLS on [0-9.]+:(\d+)")


def _waitLog(daemon, pattern, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = pattern.search(daemon.output())
        if match:
            return match
        time.sleep(0.05)
    raise RuntimeError(f"daemon did not log {pattern.pattern}")


def _certificate(directory):
    """
    A self-signed P-256 key and certificate for localhost, by openssl.
    """
    key, cert = os.path.join(directory, "key.pem"), os.path.join(directory, "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=60)
    return key, cert


def _scrape(url):
    """
    The C{/metrics} samples without labels or with one, as C{{text: value}}.
    """
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def _closed(sock):
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


# M: slowloris on the metrics port.


class Trickler(threading.Thread):
    """
    C{count} connections each sending one byte of an endless request head a
    second; one closed by the daemon is opened again at once.
    """

    HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100000

    def __init__(self, port, count):
        threading.Thread.__init__(self, daemon=True)
        self.port, self.count = port, count
        self.stopping = threading.Event()
        self.reconnects = 0

    def _open(self):
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.connect((HOST, self.port))
        except BlockingIOError:
            pass
        return [sock, 0]

    def run(self):
        socks = [self._open() for _ in range(self.count)]
        try:
            while not self.stopping.is_set():
                started = time.monotonic()
                for entry in socks:
                    sock, sent = entry
                    try:
                        if _closed(sock):
                            raise ConnectionResetError
                        sock.send(self.HEAD[sent:sent + 1])
                        entry[1] = sent + 1
                    except OSError:
                        sock.close()
                        entry[:] = self._open()
                        self.reconnects += 1
                self.stopping.wait(max(0.0, 1.0 - (time.monotonic() - started)))
        finally:
            for sock, _ in socks:
                sock.close()


def healthz(url, timeout=5.0):
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as e:
        status = e.code
    except OSError:
        status = None
    return status, time.perf_counter() - started


def scenarioM(table, args, Primed, raiseFileLimit):
    count = args.metrics_slow
    name = f"M {count} slow /metrics clients"
    raiseFileLimit(count + 300)
    with Primed(["--metrics", f"tcp:0:interface={HOST}"]) as daemon:
        print(f"{name}: {daemon.describe()}", flush=True)
        match = _waitLog(daemon, _METRICS)
        url = f"http://{match.group(1)}:{match.group(2)}"
        trickler = Trickler(int(match.group(2)), count)
        trickler.start()
        try:
            time.sleep(3)  # every slow client connected and trickling
            results = []
            deadline = time.monotonic() + args.hostile_seconds
            while time.monotonic() < deadline:
                results.append(healthz(url))
                time.sleep(0.1)
        finally:
            trickler.stopping.set()
            trickler.join(10)
        page = _scrape(url)
    ok = [seconds for status, seconds in results if status == 200]
    share = len(ok) / len(results) if results else 0.0
    table.add(name, "fresh /healthz answered 200", f"{len(ok)}/{len(results)} ({share:.1%})",
              ">= 95 %", share >= 0.95)
    p95 = percentile([s for _, s in results], 0.95)
    table.add(name, "/healthz p50 / p95 / max",
              f"{ms(percentile(ok, 0.5))} / {ms(p95)} / {ms(max(ok, default=float('nan')))}",
              "p95 <= 500 ms", p95 <= 0.5)
    table.add(name, "slow clients reconnected", f"{trickler.reconnects}")
    closed = [page.get('primed_metrics_connections_closed_total{reason="%s"}' % reason)
              for reason in ("evicted", "timeout", "refused")]
    table.add(name, "closed to make room / timed out / refused", " / ".join(map(str, closed)))


# T and F: TLS from one address, a probe from another.


class Prober(threading.Thread):
    """
    A new connection from C{OTHER} to C{port} every C{interval} seconds,
    one request, half-close, the reply: latency of each, and failures.
    """

    def __init__(self, port, interval=0.1, timeout=10.0):
        threading.Thread.__init__(self, daemon=True)
        self.port, self.interval, self.timeout = port, interval, timeout
        self.stopping = threading.Event()
        self.samples = []  # (start, seconds, ok)

    def run(self):
        while not self.stopping.is_set():
            started = time.monotonic()
            ok = False
            try:
                with socket.create_connection((HOST, self.port), timeout=self.timeout,
                                              source_address=(OTHER, 0)) as sock:
                    sock.sendall(b"7\n")
                    sock.shutdown(socket.SHUT_WR)
                    reply = b""
                    while True:
                        chunk = sock.recv(16)
                        if not chunk:
                            break
                        reply += chunk
                    ok = reply == b"T\n"
            except OSError:
                pass
            self.samples.append((started, time.monotonic() - started, ok))
            self.stopping.wait(self.interval)

    def stop(self):
        self.stopping.set()
        self.join(self.timeout + 5)


def scenarioT(table, args, Primed, raiseFileLimit):
    count = args.silent_tls
    name = f"T {count} silent TLS, one address"
    raiseFileLimit(2 * count + 400)
    directory = tempfile.mkdtemp(prefix="primed-bench-tls-")
    key, cert = _certificate(directory)
    extra = ["--listen", f"ssl:0:interface={HOST}:privateKey={key}:certKey={cert}",
             "--metrics", f"tcp:0:interface={HOST}"]
    with Primed(extra) as daemon:
        print(f"{name}: {daemon.describe()}", flush=True)
        tlsPort = int(_waitLog(daemon, _TLS).group(1))
        match = _waitLog(daemon, _METRICS)
        url = f"http://{match.group(1)}:{match.group(2)}"
        prober = Prober(daemon.tcpPort)
        prober.start()
        time.sleep(1)
        silent, opened, closedAt = [], [], {}
        started = time.monotonic()
        try:
            for _ in range(count):
                try:
                    sock = socket.create_connection((HOST, tlsPort), timeout=10)
                except OSError:
                    continue
                sock.setblocking(False)
                silent.append(sock)
                opened.append(time.monotonic())
            poller = select.epoll()
            for index, sock in enumerate(silent):
                poller.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
            fds = {sock.fileno(): index for index, sock in enumerate(silent)}
            deadline = started + args.silent_wait
            while len(closedAt) < len(silent) and time.monotonic() < deadline:
                for fd, _ in poller.poll(0.2):
                    index = fds[fd]
                    if index not in closedAt and _closed(silent[index]):
                        closedAt[index] = time.monotonic()
                        poller.unregister(fd)
            poller.close()
            time.sleep(1)
        finally:
            prober.stop()
            for sock in silent:
                sock.close()
        page = _scrape(url)
    within = sum(1 for index, at in closedAt.items() if at - opened[index] <= 30)
    share = within / count
    table.add(name, "silent connections opened", f"{len(silent)}/{count}")
    table.add(name, "closed by primed within 30 s", f"{within}/{count} ({share:.1%})",
              ">= 95 %", share >= 0.95)
    latencies = [seconds for _, seconds, ok in prober.samples if ok]
    failed = sum(1 for _, _, ok in prober.samples if not ok)
    worst = max((s for _, s, _ in prober.samples), default=float("nan"))
    table.add(name, "probe from 127.0.0.2: answered", f"{len(latencies)}/{len(prober.samples)}",
              "all", failed == 0)
    table.add(name, "probe p50 / p99 / worst",
              f"{ms(percentile(latencies, 0.5))} / {ms(percentile(latencies, 0.99))} / "
              f"{ms(worst)}", "worst <= 2 s", failed == 0 and worst <= 2.0)
    refused = 'primed_tcp_connections_refused_total{reason="%s"}'
    figures = [page.get(refused % "per_source"),
               page.get(refused % "limit", page.get("primed_tcp_connections_refused_total")),
               page.get("primed_tcp_connections_evicted_total"),
               page.get("primed_tls_handshake_timeouts_total")]
    table.add(name, "refused per source / over limit; evicted; handshake timeouts",
              "{} / {}; {}; {}".format(*figures))


def scenarioF(table, args, Primed, raiseFileLimit):
    name = f"F TLS handshake flood, {args.flooders} x 8 tasks"
    directory = tempfile.mkdtemp(prefix="primed-bench-tls-")
    key, cert = _certificate(directory)
    extra = ["--listen", f"ssl:0:interface={HOST}:privateKey={key}:certKey={cert}"]
    unlimited = extra + ["--max-handshakes-per-source", "0"]
    with Primed(extra) as daemon, Primed(unlimited) as open_:
        print(f"{name}: {daemon.describe()}; and {open_.describe()}", flush=True)
        # "flood elsewhere" floods a second daemon and probes the first: what
        # the flood's CPU costs the machine, not the probed reactor.
        # "flood, no rate limit" floods and probes a third daemon, without
        # --max-handshakes-per-source.
        targets = {"quiet": (daemon, None), "flood elsewhere": (daemon, open_),
                   "flood": (daemon, daemon), "flood, no rate limit": (open_, open_)}
        phases = {}
        for phase, (probed, flooded) in targets.items():
            flooders = []
            if flooded is not None:
                tlsPort = int(_waitLog(flooded, _TLS).group(1))
                # niced: an attacker's handshakes cost its own machine's CPU,
                # not the server's; here they share two cores with it.
                flooders = [subprocess.Popen(
                    ["nice", "-n", "19", sys.executable, "-c", _FLOODER, HOST, str(tlsPort),
                     str(args.hostile_seconds + 2), "8"],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                    for _ in range(args.flooders)]
                time.sleep(1)
            cpu = _cpu(probed.proc.pid)
            prober = Prober(probed.tcpPort, interval=0.05)
            prober.start()
            time.sleep(args.hostile_seconds)
            prober.stop()
            cpu = (_cpu(probed.proc.pid) - cpu) / args.hostile_seconds
            handshakes = refusedCount = 0
            for flooder in flooders:
                out, _ = flooder.communicate(timeout=60)
                found = re.search(rb"handshakes (\d+) refused (\d+)", out)
                if found:
                    handshakes += int(found.group(1))
                    refusedCount += int(found.group(2))
            phases[phase] = (prober.samples, handshakes, refusedCount, cpu)
    for phase, (samples, handshakes, refusedCount, cpu) in phases.items():
        latencies = [seconds for _, seconds, ok in samples if ok]
        failed = sum(1 for _, _, ok in samples if not ok)
        table.add(name, f"probe {phase}: p50 / p99 / max",
                  f"{ms(percentile(latencies, 0.5))} / {ms(percentile(latencies, 0.99))} / "
                  f"{ms(max(latencies, default=float('nan')))}, {failed} failed",
                  "max <= 2 s", failed == 0 and max(latencies, default=9) <= 2.0)
        seconds = args.hostile_seconds + 2
        table.add(name, f"daemon CPU {phase}", f"{cpu:.2f} cores"
                  + (f"; flood: {handshakes / seconds:.0f} handshakes/s, "
                     f"{refusedCount / seconds:.0f} refused/s"
                     if handshakes or refusedCount else ""))


#: One flooding process: C{argv[4]} asyncio tasks each completing TLS
#: handshakes (no certificate check) with C{argv[1]:argv[2]} in a loop for
#: C{argv[3]} seconds, going on whatever happens to a connection.
_FLOODER = """
import asyncio, ssl, sys, time
host, port, seconds, tasks = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
counts = [0, 0]
async def flood(deadline):
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=context), 5)
            counts[0] += 1
            writer.transport.abort()
        except Exception:
            counts[1] += 1
async def main():
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(flood(deadline) for _ in range(tasks)))
asyncio.run(main())
print("handshakes %d refused %d" % tuple(counts))
"""


def _cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def addArguments(parser):
    parser.add_argument("--metrics-slow", type=int, default=300,
                        help="slow clients on the metrics port in scenario M (300)")
    parser.add_argument("--silent-tls", type=int, default=1100,
                        help="silent TLS connections in scenario T (1100)")
    parser.add_argument("--silent-wait", type=float, default=40.0,
                        help="seconds scenario T waits for primed to close them (40)")
    parser.add_argument("--flooders", type=int, default=4,
                        help="flooding processes (8 connections each) in scenario F (4)")
    parser.add_argument("--hostile-seconds", type=float, default=15.0,
                        help="probing time in scenarios M and F, per phase (15)")
