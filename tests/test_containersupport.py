"""
Tests for the container tests' own machinery (C{tests/container.py}) that
can be checked without podman: which Debian mirror debootstrap is given.
"""

import os
import shutil
import tempfile

from twisted.trial import unittest

from container import debianMirror

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
"""


class MirrorTests(unittest.TestCase):
    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="primed-mirror-")
        self.addCleanup(shutil.rmtree, self.directory)

    def write(self, name, text):
        path = os.path.join(self.directory, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def missing(self):
        return os.path.join(self.directory, "missing")

    def test_deb822(self):
        """
        The stanza whose Suites has bookworm, not the security one, and not
        the snapshot URL of a comment.
        """
        sources = self.write("debian.sources", DEB822)
        self.assertEqual(debianMirror(sources, self.missing()), "http://deb.example/debian")

    def test_securityFirst(self):
        stanzas = DEB822.split("\n\n")
        sources = self.write("debian.sources", stanzas[1] + "\n\n" + stanzas[0])
        self.assertEqual(debianMirror(sources, self.missing()), "http://deb.example/debian")

    def test_sourcesList(self):
        legacy = self.write("sources.list",
                            "# deb http://old.example/debian bookworm main\n"
                            "deb-src http://src.example/debian bookworm main\n"
                            "deb [arch=amd64] http://list.example/debian bookworm main\n")
        self.assertEqual(debianMirror(self.missing(), legacy), "http://list.example/debian")

    def test_neither(self):
        self.assertEqual(debianMirror(self.missing(), self.missing()),
                         "http://deb.debian.org/debian")
