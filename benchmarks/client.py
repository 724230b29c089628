"""
primed-client against the seed chapter's way of asking: numbers per second.

The seed client opens one TCP connection per number with a blocking socket,
sends C{"%s\\n"}, waits for the reply with one C{recv(1024)} and closes.
C{primed-client} pipelines every number on one connection, at most
L{primed.client.TCP_WINDOW} unanswered.  Both ask the same daemon, started
here on ephemeral loopback ports (or the one at C{--port}).

The seed style is bounded to C{--seed-count} numbers and extrapolated: a
hundred thousand connections would only measure TIME_WAIT.  The
C{primed-client} figure is wall-clock time for the literal shell pipeline
C{seq 1 N | primed-client --port P}, process start-up included; start-up
alone (C{primed-client < /dev/null}) is shown too.

C{--progress} also times the same pipeline with the progress line drawn
(C{--progress}, standard error a pipe) and with it off (C{--no-progress}),
and C{--baseline CLIENT} another build's C{primed-client} (a venv of an
earlier commit): the runs interleave, so a busy machine slows them all
alike, and the table gives each median's ratio to the first.

Usage::

    python benchmarks/client.py [--count 100000] [--seed-count 2000]
                                [--repeat 3] [--port PORT]
                                [--progress] [--baseline CLIENT]
"""

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _servers import HOST, startPrimed  # noqa: E402


def clientCommand():
    script = os.path.join(os.path.dirname(sys.executable), "primed-client")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-m", "primed.client"]


def seedStyle(port, numbers):
    """
    Ask the seed chapter's way; return (seconds, replies).
    """
    replies = []
    started = time.perf_counter()
    for number in numbers:
        with socket.create_connection((HOST, port), timeout=10) as s:
            s.send(("%s\n" % number).encode("utf8"))
            replies.append(s.recv(1024))
    return time.perf_counter() - started, replies


def primedClient(port, count, outPath, client=None, extra=""):
    """
    Time C{seq 1 count | primed-client --port port > outPath}.
    """
    client = " ".join(clientCommand()) if client is None else client
    command = f"{client} --port {port} {extra} > {outPath}"
    if shutil.which("seq"):
        argv, stdin = ["sh", "-c", f"seq 1 {count} | {command}"], None
    else:
        data = b"".join(b"%d\n" % n for n in range(1, count + 1))
        argv, stdin = ["sh", "-c", command], data
    started = time.perf_counter()
    result = subprocess.run(argv, input=stdin, capture_output=True, timeout=600)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"primed-client failed: {result.stderr.decode()}")
    return seconds


def cpuOfChildren():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def startup(port):
    started = time.perf_counter()
    subprocess.run(
        clientCommand() + ["--port", str(port)],
        stdin=subprocess.DEVNULL,
        check=True,
        timeout=60,
    )
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100000)
    parser.add_argument("--seed-count", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--port", type=int, help="an already running primed")
    parser.add_argument("--progress", action="store_true",
                        help="compare runs with and without the progress line")
    parser.add_argument("--baseline", help="another primed-client to compare with")
    args = parser.parse_args()
    if args.progress or args.baseline:
        return compare(args)

    server = None
    port = args.port
    if port is None:
        server = startPrimed()
        port = server.tcpPort
    try:
        with tempfile.TemporaryDirectory() as tmp:
            outPath = os.path.join(tmp, "out")
            runs = [primedClient(port, args.count, outPath) for _ in range(args.repeat)]
            with open(outPath, "rb") as f:
                lines = f.read().splitlines()
            if len(lines) != args.count:
                raise SystemExit(f"primed-client printed {len(lines)} lines")
            starts = [startup(port) for _ in range(args.repeat)]
            seeds = [seedStyle(port, range(1, args.seed_count + 1)) for _ in range(args.repeat)]
        # The same question, the same answers.
        letters = {b"prime": b"T\n", b"not prime": b"F\n", b"invalid": b"E\n"}
        expected = [letters[line.split(b"\t")[1]] for line in lines[: args.seed_count]]
        if seeds[0][1] != expected:
            raise SystemExit("the seed-style replies differ from primed-client's")
    finally:
        if server is not None:
            server.stop()

    client = statistics.median(runs)
    seed = statistics.median(s for s, _ in seeds)
    seedRate = args.seed_count / seed
    print(f"primed on 127.0.0.1:{port}; median of {args.repeat} runs each\n")
    print(f"{'client':<44} {'numbers':>8} {'seconds':>8} {'numbers/s':>10}")
    print(
        f"{f'seq 1 {args.count} | primed-client':<44} {args.count:>8} "
        f"{client:>8.2f} {args.count / client:>10.0f}"
    )
    print(f"{'  of which start-up (primed-client </dev/null)':<44} {'':>8} "
          f"{statistics.median(starts):>8.2f}")
    print(
        f"{'seed style (connection per number)':<44} {args.seed_count:>8} "
        f"{seed:>8.2f} {seedRate:>10.0f}"
    )
    print(
        f"{f'  extrapolated to {args.count}':<44} {args.count:>8} "
        f"{args.count / seedRate:>8.2f} {seedRate:>10.0f}"
    )
    print(f"\nprimed-client is {args.count / client / seedRate:.1f}x the seed style")


def compare(args):
    """
    The bulk pipeline in each variant, interleaved, C{--repeat} times.
    """
    variants = [("primed-client --no-progress", None, "--no-progress")]
    if args.progress:
        variants.append(("primed-client --progress (drawn)", None, "--progress"))
    if args.baseline:
        variants.append((f"baseline {args.baseline}", args.baseline, ""))
    server = None
    port = args.port
    if port is None:
        server = startPrimed()
        port = server.tcpPort
    times = {name: [] for name, _, _ in variants}
    cpu = {name: [] for name, _, _ in variants}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            outPath = os.path.join(tmp, "out")
            for _ in range(args.repeat):
                for name, client, extra in variants:
                    before = cpuOfChildren()
                    times[name].append(primedClient(port, args.count, outPath, client, extra))
                    cpu[name].append(cpuOfChildren() - before)
                    with open(outPath, "rb") as f:
                        if f.read().count(b"\n") != args.count:
                            raise SystemExit(f"{name} did not answer every number")
    finally:
        if server is not None:
            server.stop()
    print(f"primed on 127.0.0.1:{port}; seq 1 {args.count} | CLIENT > file;"
          f" {args.repeat} interleaved runs each\n")
    # CPU seconds (the client, seq and sh: user + system) suffer less than
    # wall-clock time from other work on the machine.
    print(f"{'client':<46} {'median s':>9} {'min s':>7} {'numbers/s':>10} {'ratio':>6}"
          f" {'CPU s':>7} {'ratio':>6}")
    first = statistics.median(times[variants[0][0]])
    firstCPU = statistics.median(cpu[variants[0][0]])
    for name, _, _ in variants:
        median = statistics.median(times[name])
        medianCPU = statistics.median(cpu[name])
        print(f"{name:<46} {median:>9.3f} {min(times[name]):>7.3f} "
              f"{args.count / median:>10.0f} {median / first:>6.3f}"
              f" {medianCPU:>7.3f} {medianCPU / firstCPU:>6.3f}")


if __name__ == "__main__":
    main()
