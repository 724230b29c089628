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

import os
import socket
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _micro  # noqa: E402


def rounds(count, perRead, raw):
    from twisted.internet import reactor

    from primed import wire
    from primed.checker import PrimeChecker
    from primed.reactor import DatagramPort
    from primed.udp import PrimeDatagramProtocol, receiveBufferSize

    sys.path.insert(0, HERE)
    from _measure import makeRequests

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


def main():
    return _micro.main(__file__, __doc__, rounds, 10, 1000,
                       lambda cost, perRead: f"{cost / perRead:,.0f} instructions per datagram")


if __name__ == "__main__":
    sys.exit(main())
