"""
The load-balancer configurations in C{contrib/} pass their own tools'
checks: C{nginx -t} and C{haproxy -c}, the programs from Debian's packages
(C{tests/install-tools}).  C{test_multihost_e2e.py} runs them for real.
"""

import os
import subprocess
import tempfile

from twisted.trial import unittest

CONTRIB = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "contrib")


class ConfigTests(unittest.TestCase):
    def test_nginx(self):
        with tempfile.TemporaryDirectory() as directory:
            result = subprocess.run(
                ["nginx", "-t", "-c", os.path.join(CONTRIB, "nginx", "nginx.conf"),
                 "-e", os.path.join(directory, "error.log"),
                 "-g", f"pid {os.path.join(directory, 'nginx.pid')};"],
                capture_output=True, timeout=30)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(b"test is successful", result.stderr)

    def test_haproxy(self):
        result = subprocess.run(
            ["haproxy", "-c", "-f", os.path.join(CONTRIB, "haproxy", "haproxy.cfg")],
            capture_output=True, timeout=30)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn(b"Configuration file is valid", result.stdout + result.stderr)

    def test_haproxyRejectsBrokenConfig(self):
        """
        The check above can fail: a config with an unknown keyword does not
        pass.
        """
        with open(os.path.join(CONTRIB, "haproxy", "haproxy.cfg")) as f:
            text = f.read().replace("balance leastconn", "balance fewestconn")
        with tempfile.NamedTemporaryFile("w", suffix=".cfg") as broken:
            broken.write(text)
            broken.flush()
            result = subprocess.run(["haproxy", "-c", "-f", broken.name],
                                    capture_output=True, timeout=30)
        self.assertNotEqual(result.returncode, 0)
