"""
Does --prove keep primed responsive?  Small requests' latency while big
proofs run, measured against the same daemon with no proof running.

    python benchmarks/proving.py [--proofs 4] [--bits 1536] [--clients 2]

Starts C{twistd -n primed --prove --prove-max-digits 700 --threads 2}
(two prover processes: this machine's CPUs), then:

  1. idle: C{--clients} connections each send small requests in a closed
     loop (one request, wait for its reply, the next) for a few seconds;
  2. proving: the same, while C{--proofs} random primes of C{--bits} bits
     are being proved (each asked on its own connection; two run, the
     others wait for a worker), until the last proof is answered.

The small requests are random integers below 10**18, half of them primes
(checked inline, in the reactor thread).  Prints the round-trip times'
median, 99th percentile and maximum for both phases, and the proofs' times.
Nothing is asserted: the figures are what a run on this machine gives.
"""

import argparse
import os
import random
import socket
import statistics
import sys
import threading
import time

import gmpy2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _servers  # noqa: E402


def smallRequests(seed: int, count: int = 4096):
    rng = random.Random(seed)
    numbers = []
    for i in range(count):
        n = rng.randrange(2, 10**18)
        numbers.append(int(gmpy2.next_prime(n)) if i % 2 else n)
    return [b"%d\n" % n for n in numbers]


def closedLoop(port: int, requests, stop: threading.Event, times: list) -> None:
    with socket.create_connection((_servers.HOST, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        i = 0
        while not stop.is_set():
            request = requests[i % len(requests)]
            i += 1
            start = time.perf_counter()
            sock.sendall(request)
            reply = sock.recv(16)
            times.append(time.perf_counter() - start)
            assert reply in (b"T\n", b"F\n"), reply


def prove(port: int, number: int, results: list) -> None:
    start = time.perf_counter()
    with socket.create_connection((_servers.HOST, port), timeout=600) as sock:
        sock.sendall(b"%d\n" % number)
        reply = sock.recv(16)
    results.append((reply, time.perf_counter() - start))


def phase(port: int, clients: int, proofs) -> tuple:
    stop = threading.Event()
    times: list = []
    loops = [threading.Thread(target=closedLoop, args=(port, smallRequests(i), stop, times))
             for i in range(clients)]
    for t in loops:
        t.start()
    results: list = []
    if proofs:
        provers = [threading.Thread(target=prove, args=(port, n, results)) for n in proofs]
        for t in provers:
            t.start()
        for t in provers:
            t.join()
    else:
        time.sleep(5)
    stop.set()
    for t in loops:
        t.join()
    return sorted(times), results


def describe(name: str, times) -> str:
    p99 = times[min(len(times) - 1, len(times) * 99 // 100)]
    return (f"  {name:9s} {len(times):7d} requests   median {statistics.median(times) * 1e3:6.2f} ms"
            f"   p99 {p99 * 1e3:6.2f} ms   max {times[-1] * 1e3:7.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proofs", type=int, default=4)
    parser.add_argument("--bits", type=int, default=1536)
    parser.add_argument("--clients", type=int, default=2)
    options = parser.parse_args()
    rng = random.Random(1536)
    proofs = []
    while len(proofs) < options.proofs:
        p = int(gmpy2.next_prime(rng.getrandbits(options.bits) | (1 << (options.bits - 1))))
        if p.bit_length() == options.bits:
            proofs.append(p)
    print("command: python " + " ".join(sys.argv))
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    server = _servers.startPrimed(extra=["--prove", "--prove-max-digits", "700",
                                         "--threads", "2"])
    try:
        time.sleep(2)  # the prover processes start
        idle, _ = phase(server.tcpPort, options.clients, None)
        busy, results = phase(server.tcpPort, options.clients, proofs)
    finally:
        server.stop()
    print(f"small requests ({options.clients} closed-loop TCP connections, numbers < 1e18):")
    print(describe("idle", idle))
    print(describe("proving", busy))
    print(f"{options.proofs} proofs of {options.bits}-bit primes, asked at once: "
          + ", ".join(f"{reply.decode().strip()} in {took:.2f} s" for reply, took in results))


if __name__ == "__main__":
    main()
