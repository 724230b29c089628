"""
The floor for a UDP server in Python, for C{benchmarks/udpprofile.py}: one
epoll loop, C{recvfrom_into} and C{sendto} per datagram, every datagram
answered C{F} without being read.  It does not do primed's job: it measures
what Python's socket calls alone cost per request.

    python floorudp.py --host 127.0.0.1 --udp-port 0

prints C{floorudp tcp=0 udp=PORT} once bound.
"""

import argparse
import select
import socket


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--udp-port", type=int, default=0)
    parser.add_argument("--tcp-port", type=int, default=0)  # ignored
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.host, args.udp_port))
    sock.setblocking(False)
    poller = select.epoll()
    poller.register(sock.fileno(), select.EPOLLIN)
    print(f"floorudp tcp=0 udp={sock.getsockname()[1]}", flush=True)
    buffer = bytearray(8192)
    recvfrom, sendto = sock.recvfrom_into, sock.sendto
    while True:
        poller.poll()
        try:
            while True:
                size, addr = recvfrom(buffer)
                sendto(b"F\n", addr)
        except BlockingIOError:
            pass


if __name__ == "__main__":
    main()
