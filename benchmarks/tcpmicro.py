"""
User-space instructions per one-request read of primed's TCP path alone,
on loopback: the reactor's dispatch (L{primed.reactor.PrimedReactor.doPoll}),
the protocol and the writer, without a load generator.

    python benchmarks/tcpmicro.py [--per-read 1] [--source DIR]

A client socket sends one request line (C{load.py}'s 20-digit numbers; or
C{--per-read} lines in one send), the reactor polls once and answers it as
under load, the client reads the reply.  The loop runs N and 3N times,
each under C{valgrind --tool=callgrind}, and the difference over 2N rounds
is the cost of one round, the client's C{send} and C{recv} included
(C{--raw} replaces primed by a bare C{os.read}/C{os.write} of the accepted
socket to show what the sockets alone cost).  One event per poll is the
worst case for the poll's share; under load a poll returns several.
C{--source} runs another checkout's C{primed} to compare versions.
"""

import os
import socket
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _micro  # noqa: E402


def rounds(count, perRead, raw):
    from primed.reactor import PrimedReactor

    reactor = PrimedReactor()
    from primed.checker import PrimeChecker
    from primed.tcpfactory import PrimeLineFactory

    sys.path.insert(0, HERE)
    from _measure import makeRequests

    requests = makeRequests(bigCount=0)
    factory = PrimeLineFactory(PrimeChecker(None, None), reactor)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    for _ in range(1000):
        if factory.protocols:
            break
        reactor.doPoll(0.01)
    [protocol] = factory.protocols
    if raw:
        fd = protocol.transport.fileno()

        def bare(data):
            os.write(fd, b"F\n" * perRead)

        protocol.dataReceived = bare
    payload = [requests.small(i, perRead) for i in range(4096)]
    want = 2 * perRead
    for j in range(count):
        client.send(payload[j & 4095])
        reactor.doPoll(1)
        got = 0
        while got < want:
            got += len(client.recv(4096))


def main():
    return _micro.main(__file__, __doc__, rounds, 1, 2000,
                       lambda cost, perRead: f"{cost:,.0f} instructions per round of {perRead} request(s)")


if __name__ == "__main__":
    sys.exit(main())
