"""
User-space instructions per datagram of primed's UDP port and protocol
alone, on loopback: no reactor, no load generator.

    python benchmarks/udpmicro.py [--per-read 10] [--source DIR]

A client socket sends C{--per-read} requests (C{load.py}'s 20-digit
numbers), the L{primed.reactor.DatagramPort} reads them in one C{doRead}
as the reactor would call it, the client reads the replies.  The loop runs
N and 3N times, each under C{valgrind --tool=callgrind}, and the
difference over 2N rounds is the cost of one datagram, the client's
C{send} and C{recv} included (about 5k; C{--raw} replaces the port by a
bare C{recvfrom}/C{sendto} loop to show it).  C{--source} runs another
checkout's C{primed} (e.g. one made with C{git worktree add}) to compare
versions.
"""

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def rounds(count, perRead, raw):
    from twisted.internet import reactor

    from primed import wire
    from primed.checker import PrimeChecker
    from primed.reactor import DatagramPort
    from primed.udp import PrimeDatagramProtocol, receiveBufferSize

    sys.path.insert(0, HERE)
    from load import makeRequests

    class Clock:
        def seconds(self):
            return 0.0

    requests = makeRequests(bigCount=0)
    protocol = PrimeDatagramProtocol(PrimeChecker(None, None), Clock())
    port = DatagramPort(
        0, protocol, "127.0.0.1", receiveBufferSize(wire.DEFAULT_MAX_DIGITS), reactor
    )
    port._bindSocket()
    port._connectToProtocol()
    if raw:

        def bare():
            for _ in range(perRead):
                data, addr = port.socket.recvfrom(8192)
                port.socket.sendto(b"F\n", addr)

        port.doRead = bare
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.connect(port.socket.getsockname())
    payload = [requests.small(i, 1) for i in range(4096)]
    j = 0
    for _ in range(count):
        for _ in range(perRead):
            client.send(payload[j & 4095])
            j += 1
        port.doRead()
        for _ in range(perRead):
            client.recv(64)


def _instructions(args, count):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        env = dict(os.environ)
        if args.source:
            env["PYTHONPATH"] = args.source
        argv = [sys.executable, __file__, "--run", str(count), "--per-read", str(args.per_read)]
        if args.raw:
            argv.append("--raw")
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv],
            env=env, check=True, capture_output=True,
        )
        with open(out) as f:
            return int(re.search(r"^summary: (\d+)", f.read(), re.M).group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-read", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--source", help="a checkout whose primed/ to import")
    parser.add_argument("--raw", action="store_true")
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run is not None:
        rounds(args.run, args.per_read, args.raw)
        return 0
    n = args.rounds
    low, high = _instructions(args, n), _instructions(args, 3 * n)
    print(f"{(high - low) / (2 * n * args.per_read):,.0f} instructions per datagram")
    return 0


if __name__ == "__main__":
    sys.exit(main())
