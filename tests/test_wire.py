"""
Tests for L{primed.wire}: the request grammar and the replies.
"""

from hypothesis import given, strategies as st
from twisted.trial import unittest

from primed import wire
from primed.wire import Verdict, parseRequest, replyFor


class ParseRequestTests(unittest.TestCase):
    def test_accepted(self):
        for line, number in [
            (b"17", 17), (b"-5", -5), (b"+7", 7), (b"0007", 7), (b"-0", 0), (b"000", 0),
            (b" \t42\t ", 42), (b"17\r", 17), (b"5 \r", 5),
        ]:
            self.assertEqual(parseRequest(line), number, line)

    def test_refused(self):
        for line in [
            b"", b" ", b"\r", b"4j", b"1.0", b"1e5", b"0x11", b"1_000", b"--5", b"+-5",
            b"5 5", b"\x005", b"5\x00", b"\xff\xfe", "\u0661\u0667".encode(), b"17\r\r",
            b"\r17", b"\v17", b"17\n",
        ]:
            self.assertIsNone(parseRequest(line), line)

    def test_digitLimit(self):
        self.assertEqual(parseRequest(b"9" * 4300), int("9" * 4300))
        self.assertIsNone(parseRequest(b"9" * 4301))
        self.assertEqual(parseRequest(b"0" * 50 + b"7"), 7)
        self.assertIsNone(parseRequest(b"123", maxDigits=2))

    def test_leadingZerosAreFree(self):
        """
        Leading zeros do not count towards the digit limit, also on lines the
        all-digits fast path does not take (too long for it, or signed).
        """
        self.assertEqual(parseRequest(b"0" * 4300 + b"7"), 7)
        self.assertEqual(parseRequest(b"-" + b"0" * 4000 + b"9" * 300), -int("9" * 300))
        self.assertEqual(parseRequest(b"00012", maxDigits=2), 12)
        self.assertIsNone(parseRequest(b"000123", maxDigits=2))

    def test_leadingZeros(self):
        self.assertEqual(parseRequest(b"-0007"), -7)
        self.assertEqual(parseRequest(b" 000 \r"), 0)
        self.assertIsNone(parseRequest(b"0" * 4000 + b"x"))
        self.assertIsNone(parseRequest(b"+0" * 2))

    def test_lineLimit(self):
        """
        Past the line limit a line is refused even when its number is small,
        as a stream receiver would have refused it before it was complete.
        """
        limit = wire.maxLineLength(10)
        self.assertEqual(limit, 10 + 64)  # docs/protocol.rst: --max-digits plus 64 bytes
        self.assertEqual(parseRequest(b" " * (limit - 1) + b"7", maxDigits=10), 7)
        self.assertIsNone(parseRequest(b" " * limit + b"7", maxDigits=10))

    def test_aboveCPythonsConversionLimit(self):
        """
        A server configured above 4300 digits still converts the number.
        """
        digits = "1" * 6000
        self.assertEqual(parseRequest(digits.encode(), maxDigits=6000),
                         int(digits[:3000]) * 10**3000 + int(digits[3000:]))
        # One past CPython's limit, on the all-digits fast path's side of it.
        self.assertEqual(parseRequest(b"1" * 4301, maxDigits=6000), (10**4301 - 1) // 9)

    def test_encodeSendsTextAsGiven(self):
        self.assertEqual(wire.encodeRequest(" 17\t"), b" 17\t\n")
        self.assertEqual(wire.encodeRequest("17\r\n"), b"17\n")
        self.assertEqual(wire.encodeRequest("17\u00a0"), "17\u00a0\n".encode())
        self.assertEqual(wire.encodeRequest("XX"), b"XX\n")  # only CR and LF go

    def test_encodeKeepsUndecodableBytes(self):
        """
        Text that came from undecodable bytes (surrogateescape, as C{sys.argv}
        and C{sys.stdin} decode them) is sent as those bytes.
        """
        self.assertEqual(wire.encodeRequest("17\udcff"), b"17\xff\n")

    def test_encodeBeyondIntStrLimit(self):
        """
        An int with more digits than CPython converts to text by default
        (4300) is still sent, in full: a server with a larger
        C{--max-digits} checks it.  (C{str()} raised ValueError.)
        """
        number = -(10**5000 + 7)
        line = wire.encodeRequest(number)
        self.assertEqual(line, b"-1" + b"0" * 4999 + b"7\n")
        self.assertEqual(parseRequest(line[:-1], 6000), number)

    @given(st.integers())
    def test_roundTrip(self, number):
        self.assertEqual(parseRequest(wire.encodeRequest(number)[:-1]), number)


class ReplyTests(unittest.TestCase):
    def test_replies(self):
        self.assertEqual(replyFor(b"17", lambda n: True), b"T\n")
        self.assertEqual(replyFor(b"18", lambda n: False), b"F\n")
        self.assertEqual(replyFor(b"x", lambda n: True), b"E\n")

    def test_twoIsAskedAbout(self):
        self.assertEqual(replyFor(b"2", lambda n: n == 2), b"T\n")

    def test_belowTwoNeverAsksTheChecker(self):
        def refuse(n):
            raise AssertionError(n)

        for line in [b"1", b"0", b"-7"]:
            self.assertEqual(replyFor(line, refuse), b"F\n")

    def test_verdicts(self):
        self.assertEqual([v.reply for v in Verdict], [b"T\n", b"F\n", b"E\n"])
        for verdict in Verdict:
            self.assertIs(Verdict.fromReply(verdict.reply), verdict)
            self.assertIs(Verdict.fromReply(verdict.value.encode() + b"\r\n"), verdict)
        for bad in [b"X\n", b"TX\n", b"\xff\n", b""]:
            self.assertRaises(ValueError, Verdict.fromReply, bad)


class DigitsLimitTests(unittest.TestCase):
    def test_plain(self):
        self.assertEqual(wire.plainDigitsLimit(20), 20)
        self.assertEqual(wire.plainDigitsLimit(10**6), 4300)

    @given(st.integers(0, 2000), st.integers(1, 5000))
    def test_inline(self, bits, maxDigits):
        """
        Every number of C{inlineDigitsLimit} digits has at most C{bits}
        bits, and one digit more could have more; never above the plain
        limit.
        """
        digits = wire.inlineDigitsLimit(maxDigits, bits)
        self.assertLessEqual(digits, wire.plainDigitsLimit(maxDigits))
        self.assertLessEqual((10**digits - 1).bit_length(), bits)
        if digits < wire.plainDigitsLimit(maxDigits):
            self.assertGreater((10 ** (digits + 1) - 1).bit_length(), bits)

    def test_inlineDefaults(self):
        self.assertEqual(wire.inlineDigitsLimit(4300, 192), 57)
        self.assertEqual(wire.inlineDigitsLimit(20, 192), 20)
        self.assertEqual(wire.inlineDigitsLimit(4300, 64), 19)
        self.assertEqual(wire.inlineDigitsLimit(4300, 0), 0)
