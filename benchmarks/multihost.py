"""
primed on several hosts, measured on the test network of
C{tests/test_multihost_e2e.py} (network namespaces; needs root, nginx with
its stream module, HAProxy):

  1. Throughput of one 100 000-number C{primed-client} run: straight to a
     backend, through nginx, through HAProxy; interleaved, C{--rounds} times
     each, median and spread.
  2. HAProxy with C{contrib/haproxy/haproxy.cfg}: how long after a SIGKILL
     the killed backend is marked DOWN, and how long after a restarted one
     is ready it is marked UP again; same for a SIGTERM (graceful stop).
  3. What a bulk client through each balancer sees when its backend is
     killed.

Run from a checkout with primed installed in the venv::

    sudo .venv/bin/python benchmarks/multihost.py [--rounds 3]
"""

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))

from cluster import SERVER_NAMES, Cluster  # noqa: E402
from netns import venvScript  # noqa: E402

from primed.primality import is_prime  # noqa: E402

COUNT = 100_000
DIRECT_PORT = 8810


def bulk(cluster, host, port, payload, expected):
    started = time.perf_counter()
    result = cluster.network.run(
        "client", [venvScript("primed-client"), "--host", host, "--port", str(port), "--raw"],
        input=payload, timeout=300)
    elapsed = time.perf_counter() - started
    if result.returncode != 0 or result.stdout != expected:
        raise SystemExit(f"bulk run via {host}:{port} failed: {result.stderr!r}")
    return elapsed


def throughput(cluster, rounds):
    payload = b"".join(b"%d\n" % n for n in range(1, COUNT + 1))
    expected = b"".join(b"T\n" if is_prime(n) else b"F\n" for n in range(1, COUNT + 1))
    targets = {
        "direct": (cluster.address("b1"), DIRECT_PORT),
        "nginx": (cluster.balancers["nginx"], 8809),
        "haproxy": (cluster.balancers["haproxy"], 8809),
    }
    times = {name: [] for name in targets}
    for _ in range(rounds):
        for name, (host, port) in targets.items():
            times[name].append(bulk(cluster, host, port, payload, expected))
    print(f"1. {COUNT}-number primed-client run, {rounds} rounds (seconds; numbers/s of the median)")
    base = statistics.median(times["direct"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"   {name:8s} median {median:.2f}s  min {min(values):.2f}  max {max(values):.2f}"
              f"  {COUNT / median:,.0f}/s  {median / base:.2f}x direct")


def waitLog(process, text, start, timeout=60):
    """
    Seconds until C{text} appears after byte C{start}, polled every 10 ms.
    """
    began = time.monotonic()
    while text not in process.text(start):
        if time.monotonic() - began > timeout:
            raise SystemExit(f"no {text!r} within {timeout}s")
        time.sleep(0.01)
    return time.monotonic() - began


def healthChecks(cluster):
    haproxy = cluster.haproxy
    print("2. HAProxy marking (inter 1s, fall 2, rise 2)")
    for how in (signal.SIGKILL, signal.SIGTERM):
        name = SERVER_NAMES["b2"]
        start = haproxy.size()
        began = time.monotonic()
        cluster.backends["b2"].stop(how)
        stopped = time.monotonic() - began
        down = waitLog(haproxy, f"{name} is DOWN", start) + stopped
        start = haproxy.size()
        began = time.monotonic()
        cluster.startBackend("b2")
        ready = time.monotonic() - began
        up = waitLog(haproxy, f"{name} is UP", start)
        print(f"   {signal.Signals(how).name}: DOWN {down:.2f}s after the signal "
              f"(process gone after {stopped:.2f}s); UP {up:.2f}s after the restarted "
              f"primed was ready (start took {ready:.2f}s)")


def failover(cluster, balancer):
    """
    A steady bulk run through C{balancer}; SIGKILL its backend mid-run.
    Reports the exit status, whether every answer is right, and the longest
    time the client's output stood still after the kill.
    """
    output = tempfile.NamedTemporaryFile()
    client = cluster.startClient("failover", ["--host", cluster.balancers[balancer], "--raw"],
                                 output)
    first, chunk, sent = 5_000_000, 1000, 0
    killedAt = victim = None
    stall, lastSize, lastGrowth = 0.0, 0, None
    began = time.monotonic()
    try:
        while sent < 100_000:
            client.stdin.write(b"".join(b"%d\n" % n for n in range(first + sent, first + sent + chunk)))
            client.stdin.flush()
            sent += chunk
            time.sleep(0.01)
            now = time.monotonic()
            if victim is not None:
                size = os.path.getsize(output.name)
                if size > lastSize:
                    stall = max(stall, now - lastGrowth)
                    lastSize, lastGrowth = size, now
            elif sent >= 30_000:
                for host in ("b1", "b2"):
                    backend = cluster.backends[host]
                    if f"{cluster.address('client')}:" in backend.text(backend.startOffset):
                        victim = host
                victim = victim or "b1"
                cluster.kill(victim)
                killedAt = now - began
                lastSize, lastGrowth = os.path.getsize(output.name), now
    except BrokenPipeError:
        pass
    finally:
        try:
            client.stdin.close()
        except BrokenPipeError:
            pass
    status = client.wait(120)
    ended = time.monotonic() - began
    output.seek(0)
    answered = output.read().count(b"\n")
    expected = b"".join(b"T\n" if is_prime(n) else b"F\n" for n in range(first, first + answered))
    output.seek(0)
    correct = output.read() == expected
    print(f"3. bulk run through {balancer}, its backend ({victim}) SIGKILLed at {killedAt:.2f}s: "
          f"exit {status} after {ended:.2f}s, {answered} of {sent} answered "
          f"({'all correct' if correct else 'WRONG ANSWERS'}), output stood still at most "
          f"{stall:.2f}s after the kill; stderr: "
          f"{client.stderr.read().decode().strip() or '(empty)'}")
    cluster.startBackend(victim)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    # Throughput without --verbose (a log line per request would be measured
    # too); a plain listener beside the PROXY one for the direct runs.
    direct = ("--listen", "tcp:%d:interface={address}:backlog=1024" % DIRECT_PORT)
    with Cluster(verbose=False, backendArgs=direct) as cluster:
        throughput(cluster, args.rounds)
        healthChecks(cluster)
    for balancer in ("haproxy", "nginx"):
        with Cluster(balancers=(balancer,), verbose=True) as cluster:
            failover(cluster, balancer)


if __name__ == "__main__":
    main()
