"""
Framing cost: lines/s through a protocol fed 4, 64 and 256 KiB reads.

    python benchmarks/framing.py [--seconds 1.0] [--rounds 3]

Each protocol gets the same stream of small requests (C{b"12345\\n"}-style
lines) through a L{StringTransport}, cut into reads of each size at
arbitrary byte offsets (as TCP does), and answers them; no network, no
reactor, so only framing and per-line work are measured.

Twisted's L{LineReceiver} re-splits its buffer once per line
(twisted/twisted#6357), so its cost per read grows with the square of the
lines in the read; L{LineOnlyReceiver} splits each read once.  primed's
protocol must stay linear: its lines/s at 256 KiB should be at least 0.9x
its lines/s at 4 KiB.  The bare receivers answer a constant, so they are the
ceiling for framing alone; primed parses and checks each number too.

A second table gives the cost per request, in microseconds, at the read
shapes of C{benchmarks/load.py}: one 20-digit request per read (scenario a)
and 16 per read (scenario b).  That is the protocol's share of a request's
cost, without the reactor and the system calls around it.
"""

import argparse
import sys
import time

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.basic import LineOnlyReceiver, LineReceiver

KIB = 1024
READ_SIZES = (4 * KIB, 64 * KIB, 256 * KIB)
#: The stream fed round and round: long enough for a few 256 KiB reads.
STREAM_SIZE = 2 * KIB * KIB
#: Requests per read in load.py's scenarios (a) and (b).
LOAD_SHAPES = (1, 16)


class BareLineReceiver(LineReceiver):
    """
    Twisted's L{LineReceiver}, answering a constant.
    """

    delimiter = b"\n"

    def lineReceived(self, line):
        self.transport.write(b"T\n")


class BareLineOnlyReceiver(LineOnlyReceiver):
    """
    Twisted's L{LineOnlyReceiver}, answering a constant.
    """

    delimiter = b"\n"

    def lineReceived(self, line):
        self.transport.write(b"T\n")


def bareFactory(protocolClass):
    def build():
        return protocolClass()

    return build


def primedFactory():
    """
    primed's TCP protocol as C{twistd primed} builds it, with defaults for
    every limit.  Small numbers are checked inline, so the pool is never
    used; a L{Clock} stands in for the reactor (timeouts only).
    """
    from primed.checker import PrimeChecker
    from primed.tcpfactory import PrimeLineFactory

    clock = Clock()
    factory = PrimeLineFactory(PrimeChecker(clock, threadpool=None), clock)
    address = IPv4Address("TCP", "127.0.0.1", 40000)

    def build():
        return factory.buildProtocol(address)

    return build


def stream(size=STREAM_SIZE):
    """
    Request lines of 5-digit numbers, C{size} bytes give or take a line.
    """
    lines = []
    total = 0
    n = 10000
    while total < size:
        line = b"%d\n" % n
        lines.append(line)
        total += len(line)
        n = n + 7 if n < 99990 else 10000
    return b"".join(lines)


def chunks(data, readSize):
    """
    C{data} cut into reads of C{readSize} bytes, with each read's count of
    complete lines it ends (lines straddling two reads count once, in the
    read that completes them).
    """
    pieces = [data[i : i + readSize] for i in range(0, len(data), readSize)]
    return [(piece, piece.count(b"\n")) for piece in pieces]


def requestStream(count=4096, seed=8):
    """
    20-digit requests below 2**64, as C{benchmarks/load.py} sends them.
    """
    import random

    rng = random.Random(seed)
    return [b"%d\n" % rng.randrange(10**19, 2**64) for _ in range(count)]


def shapedReads(lines, perRead):
    """
    C{lines} grouped C{perRead} to a read, each read ending on a line.
    """
    return [
        (b"".join(lines[i : i + perRead]), perRead)
        for i in range(0, len(lines) - perRead + 1, perRead)
    ]


def measure(build, reads, seconds):
    """
    Feed C{reads} to a new protocol, round and round, until C{seconds}
    passed (at least one read, at most one read past the deadline).

    @return: lines/s.
    """
    proto = build()
    transport = StringTransport()
    proto.makeConnection(transport)
    lines = 0
    start = time.perf_counter()
    deadline = start + seconds
    first = True
    while True:
        for data, count in reads:
            proto.dataReceived(data)
            lines += count
            if first:
                # Every complete line got exactly one reply.
                replies = transport.value().count(b"\n")
                if replies != count:
                    raise AssertionError(f"{count} lines, {replies} replies")
                first = False
            transport.clear()
            now = time.perf_counter()
            if now >= deadline:
                proto.connectionLost(None)
                return lines / (now - start)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement (1.0)")
    parser.add_argument("--rounds", type=int, default=3, help="best of this many (3)")
    parser.add_argument("--no-primed", action="store_true", help="bare receivers only")
    args = parser.parse_args(argv)

    protocols = [
        ("LineReceiver", bareFactory(BareLineReceiver)),
        ("LineOnlyReceiver", bareFactory(BareLineOnlyReceiver)),
    ]
    if not args.no_primed:
        protocols.append(("primed", primedFactory()))
    data = stream()
    reads = {size: chunks(data, size) for size in READ_SIZES}
    requests = requestStream()
    shapes = {n: shapedReads(requests, n) for n in LOAD_SHAPES}
    best = {}
    # Interleaved rounds, best kept: a busy machine only ever slows a run.
    for _ in range(args.rounds):
        for name, build in protocols:
            for size in READ_SIZES:
                rate = measure(build, reads[size], args.seconds)
                best[name, size] = max(best.get((name, size), 0.0), rate)
            for n in LOAD_SHAPES:
                rate = measure(build, shapes[n], args.seconds / 2)
                best[name, "shape", n] = max(best.get((name, "shape", n), 0.0), rate)

    header = f"{'lines/s':<18}" + "".join(f"{s // KIB:>9} KiB" for s in READ_SIZES)
    header += "   256K/4K"
    print(header)
    print("-" * len(header))
    for name, _ in protocols:
        rates = [best[name, size] for size in READ_SIZES]
        row = f"{name:<18}" + "".join(f"{r:>13,.0f}" for r in rates)
        row += f"   {rates[-1] / rates[0]:7.2f}"
        print(row)
    if not args.no_primed:
        ratio = best["primed", READ_SIZES[-1]] / best["primed", READ_SIZES[0]]
        verdict = "ok" if ratio >= 0.9 else "MISS"
        print(f"\nprimed 256 KiB / 4 KiB: {ratio:.2f} (target >= 0.9: {verdict})")
        for size in READ_SIZES:
            share = best["primed", size] / best["LineOnlyReceiver", size]
            print(f"primed / LineOnlyReceiver at {size // KIB} KiB: {share:.2f}")

    print()
    header = f"{'us per request':<18}" + "".join(
        f"{f'{n} line(s)/read':>18}" for n in LOAD_SHAPES
    )
    print(header)
    print("-" * len(header))
    for name, _ in protocols:
        row = f"{name:<18}" + "".join(
            f"{1e6 / best[name, 'shape', n]:>18.2f}" for n in LOAD_SHAPES
        )
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
