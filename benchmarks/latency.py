"""
Round trips whose replies leave in two writes: a read holding a small
number, answered at once, and a number big enough for the check pool,
answered a little later.

    python benchmarks/latency.py [--rounds 40] [--baseline-python VENV/bin/python]
                                 [--against uvloop,c]

One connection sends both lines in one C{send}, waits for both replies,
pauses 10 ms (so the client's ACKs are delayed ones, as in any
conversation that is not a bulk transfer), and again.  With Nagle's
algorithm on, the second reply waits for the client to acknowledge the
first, and a client waiting for both replies sends nothing: its delayed
ACK comes after about 40 ms.  primed turns Nagle off on its listeners
(C{TCP_NODELAY}); C{--baseline-python} runs another virtualenv's primed
next to it (e.g. one from before that change), C{--against} the peers (which
check inline, so their two replies leave in one write: no wait to show).
Prints the median and the slowest round trip, and how many took over 30 ms.
"""

import argparse
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _servers  # noqa: E402

#: A prime of 201 bits: above primed's inline bound (192 bits), so checked
#: in the pool.
POOLED = 2**200 + 235


def roundTrips(port, rounds):
    request = b"7\n%d\n" % POOLED
    times = []
    with socket.create_connection((_servers.HOST, port)) as client:
        for _ in range(rounds):
            start = time.monotonic()
            client.sendall(request)
            got = b""
            deadline = start + 5
            while got.count(b"\n") < 2:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no reply in 5 s (got {got!r})")
                chunk = client.recv(64)
                if not chunk:
                    raise RuntimeError(f"connection closed (got {got!r})")
                got += chunk
            times.append(time.monotonic() - start)
            if got != b"T\nT\n":
                raise RuntimeError(f"wrong replies {got!r}")
            time.sleep(0.01)
    return sorted(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--baseline-python")
    parser.add_argument("--against", default="", help="peers too: uvloop, asyncio, c")
    args = parser.parse_args(argv)
    starts = [("primed", lambda: _servers.startPrimed())]
    if args.baseline_python:
        starts.append(("baseline", lambda: _servers.startPrimed(
            python=args.baseline_python, name="baseline")))
    for peer in filter(None, args.against.split(",")):
        starts.append((peer, lambda peer=peer: _servers.startPeer(peer)))
    for name, start in starts:
        server = start()
        try:
            times = roundTrips(server.tcpPort, args.rounds)
        finally:
            server.stop()
        slow = sum(t > 0.030 for t in times)
        print(f"{name:9s} median {times[len(times) // 2] * 1000:6.2f} ms"
              f"  slowest {times[-1] * 1000:6.2f} ms  over 30 ms: {slow}/{len(times)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
