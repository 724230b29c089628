"""
What primed's TCP and UDP clients share: the default server, timeouts and
retries, the errors a request fails with, and the request line.
"""

import os

from twisted.internet import defer, error

from primed.wire import encodeRequest

DEFAULT_HOST = "127.0.0.1"
DEFAULT_TCP_PORT = 8809
DEFAULT_UDP_PORT = 8808

#: Seconds: over TCP, to connect and the longest silence while answers are
#: owed (a 4300-digit check may take a while); over UDP, per attempt.
DEFAULT_TCP_TIMEOUT = 10.0
DEFAULT_UDP_TIMEOUT = 1.0
#: Over UDP, attempts after the first; over TCP, reconnections in a row
#: without an answer (see L{primed.client.PrimedClient}).
DEFAULT_RETRIES = 3


class PrimedError(Exception):
    """
    A request that primed did not answer.

    @ivar tlsHint: whether the server may be speaking TLS to a client that
        does not: it sent what looks like a TLS record, or closed the
        connection without a word.  The command then suggests C{--tls}.
    """

    tlsHint = False


class PrimedConnectionLost(PrimedError):
    """
    The TCP connection closed before primed answered the request.
    """


class PrimedTimeout(PrimedError):
    """
    primed did not answer in time: after every UDP retry, or within the
    silence a TCP connection tolerates.
    """


class PrimedProtocolError(PrimedError):
    """
    The server sent something that is not a verdict, so it is not primed (or
    the replies can no longer be matched to the requests).
    """


class PrimedClosed(PrimedConnectionLost):
    """
    The server closed the connection without sending a byte, though
    requests were sent on it.  At once (L{quick}): over its connection
    limit, stopping, a balancer without a backend, or a server that does
    not speak plain text (a TLS port that closes at once).  After a
    silence: a server that gave up waiting for something else.

    @ivar quick: whether the close came right after the requests.
    """

    tlsHint = True

    def __init__(self, message="the server closed the connection without answering"
                 " (perhaps over its connection limit)", quick=True):
        PrimedConnectionLost.__init__(self, message)
        self.quick = quick


#: How much of what a server that is not primed sent is shown.
SHOWN_BYTES = 32


def notAVerdict(received: bytes) -> PrimedProtocolError:
    """
    The error for a server that sent C{received} where a verdict line was
    due, showing it printably (Python's C{repr} of bytes) and cut at
    L{SHOWN_BYTES}; a TLS record (a handshake or an alert: what a TLS
    server answers plain text with) is named.
    """
    shown = repr(received[:SHOWN_BYTES])
    if len(received) > SHOWN_BYTES:
        shown += "..."
    looksLikeTLS = received[:1] in (b"\x15", b"\x16") and received[1:2] in (b"", b"\x03")
    message = f"the server sent {shown}, not a verdict"
    if looksLikeTLS:
        message += "; it looks like TLS"
    error = PrimedProtocolError(message)
    error.tlsHint = looksLikeTLS
    return error


def plural(count: int, noun: str) -> str:
    """
    C{"1 answer"}, C{"3 answers"}.
    """
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


class PrimedRefused(PrimedError):
    """
    Nothing listens where the UDP request was sent (ICMP port unreachable).
    """


class PrimedRequestTooLong(PrimedError):
    """
    The request does not fit in a UDP datagram, so it was not sent.  Far
    over primed's C{--max-digits} by default: primed would answer C{E}.
    """


class PrimedTLSError(PrimedError):
    """
    The TLS handshake failed: the server's certificate is not trusted, is
    not for the name asked for, or the two ends share no protocol.
    """


def _request(number) -> bytes:
    """
    The request line for C{number}, refusing text that would make it two
    lines: over TCP the replies would then no longer match the requests.
    """
    request = encodeRequest(number)
    if request.find(b"\n") != len(request) - 1:
        raise ValueError(f"{number!r} is not one line")
    return request


def describeError(e) -> str:
    """
    C{e} in a few words, for a one-line message: C{"Connection refused"},
    C{"timed out"}, or the exception's own text.
    """
    if isinstance(e, defer.TimeoutError):
        return "timed out"
    if isinstance(e, error.ConnectError) and isinstance(e.osError, int):
        return os.strerror(e.osError)
    message = str(e).strip()
    return message or type(e).__name__
