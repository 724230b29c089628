"""
L{primed.client.base}: the defaults both clients document, the request line,
and the few words an error is reported in.
"""

import errno

from twisted.internet import defer, error
from twisted.trial import unittest

from primed.client import base as clientbase
from primed.client.base import (
    PrimedConnectionLost,
    PrimedProtocolError,
    _request,
    describeError,
)


class DefaultsTests(unittest.TestCase):
    """
    The defaults docs/client.rst and C{primed-client --help} document.
    """

    def test_server(self):
        self.assertEqual(
            (clientbase.DEFAULT_HOST, clientbase.DEFAULT_TCP_PORT, clientbase.DEFAULT_UDP_PORT),
            ("127.0.0.1", 8809, 8808),
        )

    def test_timeoutsAndRetries(self):
        self.assertEqual(
            (
                clientbase.DEFAULT_TCP_TIMEOUT,
                clientbase.DEFAULT_UDP_TIMEOUT,
                clientbase.DEFAULT_RETRIES,
            ),
            (10.0, 1.0, 3),
        )


class RequestTests(unittest.TestCase):
    """
    L{_request} makes exactly one line, and refuses text that would make
    two (the TCP replies would no longer match the requests).
    """

    def test_oneLine(self):
        self.assertEqual(_request(17), b"17\n")
        self.assertEqual(_request("17\n"), b"17\n")
        self.assertEqual(_request(""), b"\n")

    def test_twoLines(self):
        for text in ("1\n2", "\n17", "1\r\n2\n"):
            with self.assertRaises(ValueError) as caught:
                _request(text)
            self.assertEqual(str(caught.exception), f"{text!r} is not one line")


class DescribeErrorTests(unittest.TestCase):
    """
    L{describeError} says what went wrong in a few words.
    """

    def test_timeout(self):
        self.assertEqual(describeError(defer.TimeoutError()), "timed out")

    def test_connectErrno(self):
        """
        A connection error carrying an errno is named by the system's text
        for it, not Twisted's longer one.
        """
        e = error.ConnectionRefusedError(osError=errno.ECONNREFUSED)
        self.assertEqual(describeError(e), "Connection refused")

    def test_connectErrorText(self):
        """
        A connection error whose C{osError} is text (or missing) is its own
        text.
        """
        e = error.ConnectError(osError="no route")
        self.assertEqual(describeError(e), str(e).strip())
        self.assertIn("no route", describeError(e))

    def test_ownText(self):
        """
        Any other exception is its own text, stripped (an exception without
        an C{osError} attribute included).
        """
        self.assertEqual(describeError(ValueError("  bad number \n")), "bad number")

    def test_noText(self):
        """
        An exception with no text is named by its type.
        """
        self.assertEqual(describeError(ValueError()), "ValueError")
        self.assertEqual(describeError(ValueError("  ")), "ValueError")


class NotAVerdictTests(unittest.TestCase):
    """
    What a server that is not primed sent, in one printable line.
    """

    def test_cutAfter32Bytes(self):
        from primed.client.base import notAVerdict

        self.assertEqual(str(notAVerdict(b"x" * 32)),
                         "the server sent %r, not a verdict" % (b"x" * 32))
        self.assertEqual(str(notAVerdict(b"x" * 33)),
                         "the server sent %r..., not a verdict" % (b"x" * 32))

    def test_looksLikeTLS(self):
        from primed.client.base import notAVerdict

        for received, tls in [
            (b"\x15", True), (b"\x16", True), (b"\x15\x03\x01", True), (b"\x16\x03\x03", True),
            (b"\x15\x01", False), (b"\x17\x03\x03", False), (b"\x14\x03", False),
            (b"\x03\x15", False), (b"HTTP/1.1", False),
        ]:
            error = notAVerdict(received)
            self.assertIsInstance(error, PrimedProtocolError)
            self.assertEqual(error.tlsHint, tls, received)
            self.assertEqual(str(error).endswith("; it looks like TLS"), tls, received)

    def test_plural(self):
        from primed.client.base import plural

        self.assertEqual([plural(n, "answer") for n in (0, 1, 2, 256)],
                         ["0 answers", "1 answer", "2 answers", "256 answers"])

    def test_closed(self):
        from primed.client.base import PrimedClosed

        self.assertIsInstance(PrimedClosed(), PrimedConnectionLost)
        self.assertIs(PrimedClosed().tlsHint, True)
        self.assertIs(PrimedConnectionLost("x").tlsHint, False)
