"""
Certificates rotated under a running daemon, as the kubelet rotates a
Secret mounted as a volume: the files are symlinks through C{..data}, a
symlink swapped atomically to a new directory.  What C{openssl s_client}
is served shows whether primed picked the new pair up, and kept the old one
when the new one was broken.
"""

import os
import shutil
import subprocess
import tempfile

from twisted.trial import unittest

from support import Daemon, askTLS, makeCertificates


def servedFingerprint(port):
    """
    The SHA-256 fingerprint of the certificate C{openssl s_client} gets
    from 127.0.0.1:C{port}.
    """
    hello = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost"],
        input=b"", capture_output=True, timeout=30)
    return fingerprint(hello.stdout)


def fingerprint(pem):
    result = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256"],
                            input=pem, capture_output=True, timeout=30, check=True)
    return result.stdout.decode().strip()


def fileFingerprint(path):
    with open(path, "rb") as f:
        return fingerprint(f.read())


class SecretVolume:
    """
    A directory laid out as the kubelet lays out a Secret volume:
    C{key.pem -> ..data/key.pem}, C{..data -> ..N}, swapped by L{update}.
    """

    def __init__(self, directory):
        self.directory = directory
        self.version = 0
        for name in ("key.pem", "cert.pem"):
            os.symlink(os.path.join("..data", name), os.path.join(directory, name))

    def path(self, name):
        return os.path.join(self.directory, name)

    def update(self, key, cert):
        self.version += 1
        version = f"..{self.version}"
        os.mkdir(os.path.join(self.directory, version))
        shutil.copy(key, os.path.join(self.directory, version, "key.pem"))
        shutil.copy(cert, os.path.join(self.directory, version, "cert.pem"))
        os.symlink(version, self.path("..data_tmp"))
        os.replace(self.path("..data_tmp"), self.path("..data"))


class RotationTests(unittest.TestCase):
    def test_rotateInPlace(self):
        """
        New connections get the new pair within a few reload intervals, with
        no restart, answering as before; a broken pair (a certificate whose
        key is not there) is logged and the previous pair served on.
        """
        top = tempfile.mkdtemp(prefix="primed-rotation-")
        self.addCleanup(shutil.rmtree, top)
        pairs = {}
        for name in ("first", "second"):
            os.mkdir(os.path.join(top, name))
            pairs[name] = makeCertificates(os.path.join(top, name))
        os.mkdir(os.path.join(top, "secret"))
        volume = SecretVolume(os.path.join(top, "secret"))
        volume.update(pairs["first"]["key"], pairs["first"]["cert"])

        ssl = (f"ssl:0:privateKey={volume.path('key.pem')}:certKey={volume.path('cert.pem')}"
               ":interface=127.0.0.1")
        with Daemon("--listen", ssl, "--no-udp", "--tls-reload-interval", "0.2") as daemon:
            self.assertEqual(servedFingerprint(daemon.tlsPort),
                             fileFingerprint(pairs["first"]["cert"]))

            volume.update(pairs["second"]["key"], pairs["second"]["cert"])
            daemon.waitForLog("now serving", timeout=20)
            self.assertEqual(servedFingerprint(daemon.tlsPort),
                             fileFingerprint(pairs["second"]["cert"]))
            self.assertEqual(askTLS(daemon.tlsPort, b"17\n", pairs["second"]["ca"]),
                             (b"T\n", "close_notify"))

            volume.update(pairs["second"]["key"], pairs["first"]["cert"])
            line = daemon.waitForLog("cannot load its new key and certificate", timeout=20)
            self.assertIn("still serving /CN=localhost", line)
            self.assertEqual(servedFingerprint(daemon.tlsPort),
                             fileFingerprint(pairs["second"]["cert"]))
            self.assertEqual(sum("now serving" in entry for entry in daemon.log), 1)
