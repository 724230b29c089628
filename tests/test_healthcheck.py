"""
Tests for L{primed.healthcheck}, the image's HEALTHCHECK: against a real
HTTP server on loopback answering 200, 503 (a draining primed) or nothing.
"""

import http.server
import io
import socket
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
        self.assertEqual(healthcheck.main([f"http://127.0.0.1:{port}/healthz"], {}), 1)
        self.assertIn("unhealthy: ", self.stderr.getvalue())

    def test_urlFromEnvironment(self):
        """
        Without an argument: C{$PRIMED_HEALTHZ}, else the image's port.
        """
        self.assertEqual(healthcheck.main([], {"PRIMED_HEALTHZ": self.base + "/healthz"}), 0)
        self.assertEqual(healthcheck.main([], {"PRIMED_HEALTHZ": self.base + "/other"}), 1)
        self.assertEqual(healthcheck.DEFAULT_URL, "http://127.0.0.1:9810/healthz")

    def test_usage(self):
        self.assertEqual(healthcheck.main(["a", "b"], {}), 2)
        self.assertIn("usage:", self.stderr.getvalue())
