"""
Before a peer is measured, check that it does primed's job: the same reply
as C{primed.wire.replyFor} to every line of a set chosen to exercise the
grammar's edges, over TCP (one connection, then an unterminated last line
and a half-close) and over UDP.  A benchmark against a server that answers
differently would compare different work.
"""

import socket

from primed.primality import is_prime
from primed.wire import INVALID_REPLY, maxLineLength, replyFor

_BASE = [
    b"17", b"18", b"0", b"1", b"2", b"-7", b"+7", b"-0", b" 17 ", b"\t17\t",
    b"17\r", b"17 \r", b"17\r ", b"", b" ", b"+", b"-", b"+-7", b"+ 7", b"1_7",
    b"0x11", "\uff11\uff17".encode(), b"17a", b"00000000017", b"561",
    b"3215031751", b"18446744073709551557", b"18446744073709551556",
    b"18446744073709551629", b"%d" % (2**127 - 1), b"%d" % (2**127 + 1),
    b"%d" % (2**521 - 1), b"-%d" % (2**521 - 1),
]


def cases(maxDigits):
    """
    Request lines (without their newline) around C{maxDigits}.
    """
    limit = maxLineLength(maxDigits)
    return _BASE + [
        b"0" * 60 + b"17",  # leading zeros do not count as digits
        b"1" + b"0" * (maxDigits - 1),  # exactly the limit
        b"1" + b"0" * maxDigits,  # one digit too many
        b" " * 30 + b"1" + b"0" * (maxDigits - 1),  # blanks count for length
        b"7" * limit,
        b"7" * (limit + 1),
    ]


def _expected(line, maxDigits):
    if len(line) > maxLineLength(maxDigits):
        return INVALID_REPLY
    return replyFor(line, is_prime, maxDigits)


def _recvAll(sock):
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def check(host, tcpPort, udpPort, maxDigits=4300):
    """
    @return: a list of mismatch descriptions, empty when the server agrees
        with primed everywhere.
    """
    lines = cases(maxDigits)
    problems = []
    expected = b"".join(_expected(line, maxDigits) for line in lines)
    # An over-long line sent in pieces, then a short one, then an
    # unterminated last request answered after the half-close.
    expected += INVALID_REPLY + b"T\n" + b"T\n"
    with socket.create_connection((host, tcpPort), timeout=10) as sock:
        sock.sendall(b"".join(line + b"\n" for line in lines))
        for _ in range(4):
            sock.sendall(b"9" * (maxLineLength(maxDigits) // 2 + 10))
        sock.sendall(b"\n13\n97")
        sock.shutdown(socket.SHUT_WR)
        got = _recvAll(sock)
    if got != expected:
        problems.append(f"TCP replies differ:\n  got      {got!r}\n  expected {expected!r}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.connect((host, udpPort))
        for line in lines + [b"17\r\n"]:
            for datagram in {line + b"\n", line}:
                if not datagram:
                    continue
                sock.send(datagram)
                got = sock.recv(64)
                want = _expected(datagram[:-1] if datagram.endswith(b"\n") else datagram,
                                 maxDigits)
                if got != want:
                    problems.append(f"UDP {datagram[:40]!r}: got {got!r}, expected {want!r}")
    return problems
