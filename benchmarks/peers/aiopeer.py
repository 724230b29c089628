"""
The asyncio peer: primed's job written the way a careful asyncio programmer
would, for C{benchmarks/load.py} to compare primed with.

    python benchmarks/peers/aiopeer.py [--uvloop] --tcp-port 0 --udp-port 0
                                       [--host 127.0.0.1] [--max-digits 4300]

prints C{aiopeer tcp=PORT udp=PORT} once both ports are bound.

It uses asyncio's low-level C{Protocol} API (not streams, which cost a
coroutine switch per line) and primed's own grammar and engine
(C{primed.wire.parseRequest}, C{primed.primality.is_prime}), so the
difference from primed is the event loop and the transport, nothing else.
Every check runs inline, as in most single-threaded servers: a big number
blocks every client until it is decided (scenario (e) shows the cost).

TCP: each read is split once, every complete line answered, the replies of
one read leave in one C{write}.  A line longer than C{maxLineLength} is
answered C{E} as soon as it is that long and the rest of it skipped.  After
the client's EOF an unterminated last line is a request too, then the
connection closes once everything is written.  Backpressure: reading pauses
while the transport's buffer is above its high-water mark.
UDP: one request per datagram (a trailing newline dropped), empty datagrams
ignored, one reply datagram each.
"""

import argparse
import asyncio
import sys

from primed.primality import is_prime
from primed.wire import (
    DEFAULT_MAX_DIGITS,
    INVALID_REPLY,
    NOT_PRIME_REPLY,
    REPLIES,
    maxLineLength,
    parseRequest,
)


def reply(line, maxDigits):
    number = parseRequest(line, maxDigits)
    if number is None:
        return INVALID_REPLY
    if number < 2:
        return NOT_PRIME_REPLY
    return REPLIES[is_prime(number)]


class LineServer(asyncio.Protocol):
    def __init__(self, maxDigits):
        self.maxDigits = maxDigits
        self.maxLength = maxLineLength(maxDigits)
        self.buffer = b""
        self.discarding = False
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if self.discarding:
            end = data.find(b"\n")
            if end < 0:
                return
            data = data[end + 1 :]
            self.discarding = False
        if self.buffer:
            data = self.buffer + data
        lines = data.split(b"\n")
        self.buffer = lines.pop()
        maxDigits = self.maxDigits
        out = [reply(line, maxDigits) for line in lines]
        if len(self.buffer) > self.maxLength:
            self.buffer = b""
            self.discarding = True
            out.append(INVALID_REPLY)
        if out:
            self.transport.write(b"".join(out))

    def eof_received(self):
        if self.buffer and not self.discarding:
            self.transport.write(reply(self.buffer, self.maxDigits))
        self.buffer = b""
        self.transport.close()  # after what is buffered has been written
        return True

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        if not self.transport.is_closing():
            self.transport.resume_reading()


class DatagramServer(asyncio.DatagramProtocol):
    def __init__(self, maxDigits):
        self.maxDigits = maxDigits
        self.maxLength = maxLineLength(maxDigits)

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        if not data:
            return
        line = data[:-1] if data[-1:] == b"\n" else data
        if len(line) > self.maxLength:
            answer = INVALID_REPLY
        else:
            answer = reply(line, self.maxDigits)
        self.transport.sendto(answer, addr)

    def error_received(self, exc):
        pass


async def serve(host, tcpPort, udpPort, maxDigits):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: LineServer(maxDigits), host, tcpPort, backlog=1024)
    transport, _ = await loop.create_datagram_endpoint(
        lambda: DatagramServer(maxDigits), local_addr=(host, udpPort)
    )
    tcp = server.sockets[0].getsockname()[1]
    udp = transport.get_extra_info("sockname")[1]
    print(f"aiopeer tcp={tcp} udp={udp}", flush=True)
    await asyncio.Event().wait()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tcp-port", type=int, default=0)
    parser.add_argument("--udp-port", type=int, default=0)
    parser.add_argument("--max-digits", type=int, default=DEFAULT_MAX_DIGITS)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    args = parser.parse_args(argv)
    run = asyncio.run
    if args.uvloop:
        import uvloop

        run = uvloop.run
    run(serve(args.host, args.tcp_port, args.udp_port, args.max_digits))


if __name__ == "__main__":
    sys.exit(main())
