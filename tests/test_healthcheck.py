"""
Tests for L{primed.healthcheck}, the image's HEALTHCHECK: against a real
HTTP server on loopback answering 200, 503 (a draining primed) or nothing.
"""

import http.server
import io
import os
import re
import socket
import subprocess
import sys
import threading

from twisted.trial import unittest

from primed import healthcheck


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response({"/healthz": 200, "/draining": 503}.get(self.path, 404))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class HealthCheckTests(unittest.TestCase):
    def setUp(self):
        self.server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 10)
        self.addCleanup(self.server.server_close)
        self.addCleanup(self.server.shutdown)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def test_healthy(self):
        self.assertEqual(healthcheck.main([self.base + "/healthz"], {}), 0)
        self.assertEqual(self.stderr.getvalue(), "")

    def test_draining(self):
        """
        503 (primed draining) is unhealthy, and said so.
        """
        self.assertEqual(healthcheck.main([self.base + "/draining"], {}), 1)
        self.assertEqual(self.stderr.getvalue(),
                         f"unhealthy: {self.base}/draining: HTTP 503\n")

    def test_nothingListening(self):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        url = f"http://127.0.0.1:{port}/healthz"
        self.assertEqual(healthcheck.main([url], {}), 1)
        self.assertRegex(self.stderr.getvalue(),
                         "^unhealthy: " + re.escape(url) + r": <urlopen error .*refused>\n$")

    def test_argumentsFromTheCommandLine(self):
        self.patch(sys, "argv", ["healthcheck", self.base + "/draining"])
        self.assertEqual(healthcheck.main(environ={}), 1)
        self.patch(sys, "argv", ["healthcheck", self.base + "/healthz"])
        self.assertEqual(healthcheck.main(environ={}), 0)

    def test_asAModule(self):
        """
        C{python -m primed.healthcheck URL}, as the image's HEALTHCHECK
        runs it: its exit status.
        """
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        for path, status in (("/healthz", 0), ("/draining", 1)):
            result = subprocess.run([sys.executable, "-m", "primed.healthcheck", self.base + path],
                                    cwd=root, capture_output=True, timeout=60)
            self.assertEqual(result.returncode, status, result.stderr)

    def test_timeoutWithinTheImages(self):
        """
        The check gives up before the Containerfile's HEALTHCHECK timeout,
        so it reports why instead of being killed.
        """
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(root, "Containerfile"), encoding="utf-8") as f:
            (seconds,) = re.findall(r"^HEALTHCHECK .*--timeout=(\d+)s", f.read(), re.M)
        self.assertLess(healthcheck.TIMEOUT, int(seconds))
        self.assertGreater(healthcheck.TIMEOUT, 1)

    def test_urlFromEnvironment(self):
        """
        Without an argument: C{$PRIMED_HEALTHZ}, else the image's port.
        """
        self.assertEqual(healthcheck.main([], {"PRIMED_HEALTHZ": self.base + "/healthz"}), 0)
        self.assertEqual(healthcheck.main([], {"PRIMED_HEALTHZ": self.base + "/other"}), 1)
        self.assertEqual(healthcheck.DEFAULT_URL, "http://127.0.0.1:9810/healthz")

    def test_usage(self):
        self.assertEqual(healthcheck.main(["a", "b"], {}), 2)
        self.assertEqual(self.stderr.getvalue(), "usage: python -m primed.healthcheck [URL]\n")
