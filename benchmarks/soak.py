"""
Soak: does primed's memory stay flat under a long mixed load?

    python benchmarks/soak.py [--minutes 10] [--warmup 60] [--sample 5]
                              [--limit-mib 5] [--primed-arg=...]

It starts primed (C{twistd -n primed}, ports 0, C{--metrics} on a port 0 of
its own), then, for C{--minutes}, drives at once:

  - pipelined TCP: connections sending 16 requests per write;
  - one-by-one TCP: a request, its reply, the next;
  - UDP: datagrams, one in flight per socket, some of them empty;
  - big numbers: 1000-digit primes and composites, through the pool;
  - churn: connections that open, ask one thing and close, some of them
    without reading the answer, some resetting, some sending an over-long
    line;
  - a client that never reads: it writes until primed stops reading it,
    then sits there, and is replaced every minute.

Every C{--sample} seconds it reads C{process_resident_memory_bytes} from
primed's C{/metrics} (so the metrics endpoint is soaked too) and prints it.
At the end it prints RSS at start, after C{--warmup} seconds, at the end and
at its highest after warm-up, and exits 1 if RSS grew by more than
C{--limit-mib} after warm-up.  Each worker paces itself a little, so the
soak does not take a shared machine's cores for ten minutes.

Never part of the tests: it takes minutes.
"""

import argparse
import random
import re
import socket
import sys
import threading
import time
import urllib.request

try:
    from benchmarks import _servers
except ImportError:  # run as a script: benchmarks/ is sys.path[0]
    import _servers

_METRICS = re.compile(rb"Serving metrics on http://([0-9.]+:\d+)/metrics")
HOST = _servers.HOST


def metric(text, name):
    """
    The value of the unlabelled sample C{name} in a Prometheus text page.
    """
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def labelled(text, name):
    """
    C{{labels: value}} of every sample of C{name}.
    """
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            found[labels[len(name):]] = float(value)
    return found


class Load:
    """
    The workers, each a thread with a blocking socket, stopping at
    C{self.stop}; C{self.counts} says what each achieved.
    """

    def __init__(self, tcpPort, udpPort, seed=12):
        self.tcpPort = tcpPort
        self.udpPort = udpPort
        self.stop = threading.Event()
        self.counts = {}
        self.errors = {}
        self._lock = threading.Lock()
        import gmpy2

        rng = random.Random(seed)
        self.small = [b"%d\n" % rng.randrange(-10, 2**64) for _ in range(4096)]
        self.small += [b"foo\n", b"\n", b"1e5\n", b"17\r\n"]
        bigPrime = int(gmpy2.next_prime(rng.randrange(10**999, 10**1000)))
        self.big = [b"%d\n" % bigPrime, b"%d\n" % (bigPrime * 3)]
        self.threads = []

    def _count(self, name, n=1):
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + n

    def _run(self, name, body):
        def loop():
            rng = random.Random(name)
            while not self.stop.is_set():
                try:
                    body(rng)
                except OSError as e:
                    with self._lock:
                        self.errors[name] = self.errors.get(name, 0) + 1
                        self.errors[name + " last"] = repr(e)
                    self.stop.wait(0.1)

        thread = threading.Thread(target=loop, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _connect(self):
        sock = socket.create_connection((HOST, self.tcpPort), timeout=10)
        return sock

    @staticmethod
    def _readReplies(sock, n):
        got = b""
        while got.count(b"\n") < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed early")
            got += chunk
        return got

    def pipelined(self, rng):
        with self._connect() as sock:
            for _ in range(200):
                if self.stop.is_set():
                    return
                batch = b"".join(rng.choice(self.small) for _ in range(16))
                sock.sendall(batch)
                self._readReplies(sock, 16)
                self._count("pipelined", 16)
                time.sleep(0.002)

    def oneByOne(self, rng):
        with self._connect() as sock:
            for _ in range(500):
                if self.stop.is_set():
                    return
                sock.sendall(rng.choice(self.small))
                self._readReplies(sock, 1)
                self._count("one-by-one")
                time.sleep(0.001)

    def udp(self, rng):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(1.0)
            for _ in range(500):
                if self.stop.is_set():
                    return
                if rng.random() < 0.01:
                    sock.sendto(b"", (HOST, self.udpPort))  # ignored: no reply
                    self._count("udp empty")
                    continue
                sock.sendto(rng.choice(self.small), (HOST, self.udpPort))
                try:
                    sock.recvfrom(16)
                    self._count("udp")
                except socket.timeout:
                    self._count("udp lost")
                time.sleep(0.001)

    def bigNumbers(self, rng):
        with self._connect() as sock:
            for _ in range(20):
                if self.stop.is_set():
                    return
                sock.sendall(rng.choice(self.big) + rng.choice(self.small))
                self._readReplies(sock, 2)
                self._count("big")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2.0)
            sock.sendto(rng.choice(self.big), (HOST, self.udpPort))
            try:
                sock.recvfrom(16)
                self._count("udp big")
            except socket.timeout:
                self._count("udp big lost")

    def churn(self, rng):
        sock = self._connect()
        kind = rng.randrange(4)
        try:
            if kind == 0:  # ask, read, close
                sock.sendall(rng.choice(self.small))
                self._readReplies(sock, 1)
            elif kind == 1:  # ask and close without reading
                sock.sendall(b"".join(rng.choice(self.small) for _ in range(50)))
            elif kind == 2:  # reset
                sock.sendall(rng.choice(self.small))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            else:  # an over-long line, then a good one
                sock.sendall(b"7" * 20000 + b"\n17\n")
                self._readReplies(sock, 2)
            self._count("churn")
        finally:
            sock.close()
        time.sleep(0.005)

    def neverReads(self, rng):
        sock = self._connect()
        sock.settimeout(0.5)
        line = b"".join(self.small[:64])
        deadline = time.monotonic() + 60
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    sock.sendall(line)
                    self._count("never-reads lines", 64)
                    time.sleep(0.005)
                except socket.timeout:
                    self.stop.wait(1.0)  # primed stopped reading us: good
        finally:
            sock.close()

    def start(self):
        for i in range(4):
            self._run(f"pipelined-{i}", self.pipelined)
        for i in range(4):
            self._run(f"one-by-one-{i}", self.oneByOne)
        for i in range(2):
            self._run(f"udp-{i}", self.udp)
        self._run("big", self.bigNumbers)
        self._run("churn", self.churn)
        self._run("never-reads", self.neverReads)

    def join(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(15)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the load (10)")
    parser.add_argument("--warmup", type=float, default=60.0,
                        help="seconds before the reference RSS is taken (60)")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples (5)")
    parser.add_argument("--limit-mib", type=float, default=5.0,
                        help="allowed RSS growth after warm-up, MiB (5)")
    parser.add_argument("--primed-arg", action="append", default=[],
                        help="extra option for primed (repeatable)")
    args = parser.parse_args(argv)

    server = _servers.startPrimed(
        extra=["--metrics", f"tcp:0:interface={HOST}", *args.primed_arg]
    )
    try:
        [match] = server._waitFor(server._procs[0], server._logs[0], [_METRICS])
        url = f"http://{match.group(1).decode()}/metrics"

        def scrape():
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.read().decode()

        samples = []  # (seconds since start, rss bytes)
        load = Load(server.tcpPort, server.udpPort)
        start = time.monotonic()
        samples.append((0.0, metric(scrape(), "process_resident_memory_bytes")))
        print(f"primed tcp {server.tcpPort} udp {server.udpPort}, metrics {url}", flush=True)
        print(f"{0:7.0f} s  RSS {samples[0][1] / 2**20:8.2f} MiB (before load)", flush=True)
        load.start()
        end = start + args.minutes * 60
        while time.monotonic() < end:
            time.sleep(max(0.0, min(args.sample, end - time.monotonic())))
            if not server.alive():
                raise RuntimeError(f"primed died:\n{server.outputTail()}")
            rss = metric(scrape(), "process_resident_memory_bytes")
            samples.append((time.monotonic() - start, rss))
            print(f"{samples[-1][0]:7.0f} s  RSS {rss / 2**20:8.2f} MiB  "
                  f"open {metric(scrape(), 'primed_tcp_connections'):.0f}", flush=True)
        load.join()
        page = scrape()
    finally:
        server.stop()

    mib = 2**20
    warm = [s for s in samples if s[0] >= args.warmup]
    reference = warm[0][1]
    peak = max(rss for _, rss in warm)
    growth = samples[-1][1] - reference
    print()
    print(f"load: {args.minutes:g} min; {sorted(load.counts.items())}")
    if load.errors:
        print(f"client-side errors: {sorted(load.errors.items())}")
    print("primed counted:", {k: int(v) for k, v in labelled(page, "primed_requests_total").items()})
    print(f"RSS at start        {samples[0][1] / mib:8.2f} MiB")
    print(f"RSS after warm-up   {reference / mib:8.2f} MiB  ({warm[0][0]:.0f} s)")
    print(f"RSS at the end      {samples[-1][1] / mib:8.2f} MiB  ({samples[-1][0]:.0f} s)")
    print(f"RSS peak after w-u  {peak / mib:8.2f} MiB")
    print(f"growth after warm-up: end {growth / mib:+.2f} MiB, peak {(peak - reference) / mib:+.2f} MiB "
          f"(limit {args.limit_mib:g} MiB): {'ok' if peak - reference <= args.limit_mib * mib else 'MISS'}")
    return 0 if peak - reference <= args.limit_mib * mib else 1


if __name__ == "__main__":
    sys.exit(main())
