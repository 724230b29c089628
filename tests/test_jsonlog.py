"""
Tests for L{primed.jsonlog}: the line for one event, and the installed
daemon logging JSON lines under C{twistd --logger primed.jsonlog.observer}.
"""

import io
import json
import os
import socket
import sys

from twisted.logger import Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest

from primed.jsonlog import eventAsLine, fromEnvironment, observer
from support import Daemon


def capture(emit):
    """
    The JSON lines an observer writes for the events C{emit(log)} logs.
    """
    out = io.StringIO()
    log = Logger(namespace="primed.test", observer=observer(out))
    emit(log)
    return [json.loads(line) for line in out.getvalue().splitlines()]


class EventTests(unittest.TestCase):
    def test_fields(self):
        [record] = capture(lambda log: log.warn("Closed {count} from {peer}", count=3,
                                                peer="127.0.0.1:5000"))
        self.assertEqual(record["level"], "warn")
        self.assertEqual(record["namespace"], "primed.test")
        self.assertEqual(record["message"], "Closed 3 from 127.0.0.1:5000")
        self.assertEqual(record["peer"], "127.0.0.1:5000")
        self.assertRegex(record["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")

    def test_udpPeer(self):
        [v4, v6] = capture(lambda log: (log.info("a", peer=("10.0.0.1", 53)),
                                        log.info("b", peer=("::1", 53, 0, 0))))
        self.assertEqual((v4["peer"], v6["peer"]), ("10.0.0.1:53", "[::1]:53"))

    def test_noPeer(self):
        [record] = capture(lambda log: log.info("plain"))
        self.assertNotIn("peer", record)
        self.assertEqual(record["level"], "info")

    def test_failure(self):
        def emit(log):
            try:
                1 / 0
            except ZeroDivisionError:
                log.failure("Checking failed", Failure())

        [record] = capture(emit)
        self.assertEqual(record["level"], "critical")
        self.assertIn("ZeroDivisionError", record["traceback"])
        self.assertEqual(record["message"], "Checking failed")

    def test_oneLineWhateverTheText(self):
        line = eventAsLine({"log_format": "a\nb {x}", "x": "\u00e9\"", "log_time": 0,
                            "log_level": LogLevel.info, "log_namespace": "n"})
        self.assertEqual(line.count("\n"), 1)
        self.assertEqual(json.loads(line)["message"], "a\nb \u00e9\"")
        self.assertEqual(json.loads(line)["time"], "1970-01-01T00:00:00.000000+00:00")

    def test_undecodableText(self):
        """
        Text decoded with surrogateescape (a unix: socket path that is not
        UTF-8, os.fsdecode's) still gives one valid UTF-8 JSON line: written
        raw, the lone surrogate made the write fail on a strict UTF-8
        stdout (the event lost) or put invalid UTF-8 in the line.
        """
        raw = io.BytesIO()
        out = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)
        log = Logger(namespace="primed.test", observer=observer(out))
        log.info("Listening for TCP on {path}", path=b"/run/\xff.sock".decode("utf-8", "surrogateescape"))
        [line] = raw.getvalue().splitlines()
        self.assertEqual(json.loads(line.decode("utf-8"))["message"],
                         "Listening for TCP on /run/\udcff.sock")

    def test_unformattable(self):
        event = {"log_format": "{missing}", "log_time": 0, "log_level": LogLevel.info}
        record = json.loads(eventAsLine(event))
        self.assertEqual(record["message"], formatEvent(event))
        self.assertIn("Unable to format event", record["message"])


class FromEnvironmentTests(unittest.TestCase):
    """
    The container image's C{--logger}: JSON or text by C{PRIMED_LOG_FORMAT}.
    """

    def lines(self, environ):
        out = io.StringIO()
        Logger(namespace="primed.test", observer=fromEnvironment(environ, out)).info(
            "Listening on {port}", port=8809)
        return out.getvalue().splitlines()

    def test_json(self):
        for value in ("json", " JSON "):
            [line] = self.lines({"PRIMED_LOG_FORMAT": value})
            self.assertEqual(json.loads(line)["message"], "Listening on 8809")

    def test_textByDefault(self):
        for environ in ({}, {"PRIMED_LOG_FORMAT": ""}, {"PRIMED_LOG_FORMAT": "text"}):
            [line] = self.lines(environ)
            self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\S+ \[primed\.test#info\] Listening on 8809$")

    def test_processEnvironmentAndStandardOutput(self):
        """
        By default: the process's environment, and standard output as it
        is when twistd calls the factory.
        """
        out = io.StringIO()
        self.patch(os, "environ", {"PRIMED_LOG_FORMAT": "json"})
        self.patch(sys, "stdout", out)
        observer = fromEnvironment()
        Logger(namespace="primed.test", observer=observer).info("hello")
        self.assertEqual(json.loads(out.getvalue())["message"], "hello")

    def test_unknownFormat(self):
        """
        Anything else stops the start with one line naming the variable and
        the choices.
        """
        with self.assertRaises(SystemExit) as caught:
            fromEnvironment({"PRIMED_LOG_FORMAT": "yaml"}, io.StringIO())
        self.assertEqual(str(caught.exception),
                         "primed: PRIMED_LOG_FORMAT must be one of text, json, not 'yaml'")


class DaemonTests(unittest.TestCase):
    def test_twistdLogger(self):
        """
        Every line the daemon writes is one JSON object; a verbose request
        is logged with its peer.
        """
        with Daemon("--listen", "tcp:0:interface=127.0.0.1", "--no-udp", "--verbose",
                    runnerArgs=["--logger", "primed.jsonlog.observer"]) as daemon:
            with socket.create_connection(("127.0.0.1", daemon.tcpPort)) as client:
                local = "%s:%d" % client.getsockname()
                client.sendall(b"17\n")
                self.assertEqual(client.recv(16), b"T\n")
            line = daemon.waitForLog("asked")
        records = [json.loads(text) for text in daemon.log if text]
        self.assertTrue(records)
        self.assertTrue(all(set(r) >= {"time", "level", "namespace", "message"}
                            for r in records))
        [verdict] = [r for r in records if "asked" in r["message"]]
        self.assertEqual(verdict["peer"], local)
        self.assertEqual(verdict["namespace"], "primed.tcp.PrimeLineProtocol")
        self.assertEqual(json.loads(line), verdict)
        self.assertTrue(any(r["message"].startswith("Listening for TCP on") for r in records))
