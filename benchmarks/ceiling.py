"""
The ceiling: the fastest any Twisted line daemon can be on this machine.

A bare L{LineReceiver} answers every line with a constant C{b"T\\n"} and a
bare L{DatagramProtocol} answers every datagram the same way.  Nothing is
parsed, nothing is checked: whatever primed does per request on top of this
is primed's own cost, so C{benchmarks/load.py} runs both side by side and
reports primed/ceiling.

It runs under the default reactor (epoll on Linux), the one C{twistd}
installs for primed, so both pay the same event-loop cost.

    python benchmarks/ceiling.py --tcp-port 0 --udp-port 0

prints one line C{ceiling tcp=PORT udp=PORT} once both ports are bound.
C{--reuseport} binds with C{SO_REUSEPORT}, so several ceilings can share one
port (the two-core comparison for primed's own multi-process mode).
"""

import argparse
import socket
import sys

from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.protocols.basic import LineReceiver

REPLY = b"T\n"


class ConstantLine(LineReceiver):
    """
    One constant reply per line, one C{write} per reply: what a naive
    Twisted line daemon costs before it does any work.
    """

    delimiter = b"\n"

    def lineReceived(self, line):
        self.transport.write(REPLY)


class ConstantDatagram(DatagramProtocol):
    """
    One constant reply datagram per request datagram.
    """

    def datagramReceived(self, data, addr):
        self.transport.write(REPLY, addr)


def _reusePortSocket(kind, host, port):
    """
    A bound (and, for TCP, listening) non-blocking socket with
    C{SO_REUSEPORT}, for L{IReactorSocket.adoptStreamPort}: Twisted's own
    listeners do not set that option.
    """
    sock = socket.socket(socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if kind == socket.SOCK_STREAM:
        sock.listen(1024)
    sock.setblocking(False)
    return sock


def listen(reactor, host, tcpPort, udpPort, reusePort=False):
    """
    Start both ceiling servers on C{reactor}.

    @return: the bound C{(tcpPort, udpPort)}.
    """
    factory = Factory.forProtocol(ConstantLine)
    datagram = ConstantDatagram()
    if not reusePort:
        tcp = reactor.listenTCP(tcpPort, factory, interface=host)
        udp = reactor.listenUDP(udpPort, datagram, interface=host)
        return tcp.getHost().port, udp.getHost().port
    tcpSock = _reusePortSocket(socket.SOCK_STREAM, host, tcpPort)
    udpSock = _reusePortSocket(socket.SOCK_DGRAM, host, udpPort)
    reactor.adoptStreamPort(tcpSock.fileno(), socket.AF_INET, factory)
    reactor.adoptDatagramPort(udpSock.fileno(), socket.AF_INET, datagram)
    ports = tcpSock.getsockname()[1], udpSock.getsockname()[1]
    # The reactor holds duplicates of the descriptors.
    tcpSock.close()
    udpSock.close()
    return ports


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tcp-port", type=int, default=0)
    parser.add_argument("--udp-port", type=int, default=0)
    parser.add_argument(
        "--reuseport",
        action="store_true",
        help="bind with SO_REUSEPORT so several processes can share the ports",
    )
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    tcpPort, udpPort = listen(
        reactor, args.host, args.tcp_port, args.udp_port, args.reuseport
    )
    print(f"ceiling tcp={tcpPort} udp={udpPort}", flush=True)
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
