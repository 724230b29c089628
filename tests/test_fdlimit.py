"""
L{primed.fdlimit}: the soft open-file limit raised for C{--max-connections},
with fake C{getrlimit}/C{setrlimit}; the real daemon in test_limits_e2e.
"""

import resource

from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from primed import tap
from primed.fdlimit import SPARE, ensureOpenFiles

INFINITY = resource.RLIM_INFINITY


class Limits:
    """
    C{getrlimit} and C{setrlimit} over a soft and a hard limit; C{refuse}
    makes C{setrlimit} fail as under a seccomp filter.
    """

    def __init__(self, soft, hard, refuse=False):
        self.soft, self.hard, self.refuse = soft, hard, refuse
        self.set = []

    def getrlimit(self, which):
        assert which == resource.RLIMIT_NOFILE
        return self.soft, self.hard

    def setrlimit(self, which, limits):
        assert which == resource.RLIMIT_NOFILE
        if self.refuse:
            raise PermissionError(1, "Operation not permitted")
        self.set.append(limits)
        self.soft, self.hard = limits


class EnsureOpenFilesTests(unittest.TestCase):
    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def ensure(self, limits, connections=1024):
        return ensureOpenFiles(connections, "--max-connections 1024",
                               limits.getrlimit, limits.setrlimit)

    def logged(self):
        return [(e["log_level"].name, formatEvent(e)) for e in self.events]

    def test_raised(self):
        """
        A shell's usual 1024 is raised to the connections plus L{SPARE}; the
        hard limit is kept, and the log says so.
        """
        limits = Limits(1024, 524288)
        self.assertEqual(self.ensure(limits), 1024 + SPARE)
        self.assertEqual(limits.set, [(1024 + SPARE, 524288)])
        self.assertEqual(self.logged(), [
            ("info", "Raised the open-file limit from 1024 to 1088 (--max-connections 1024)")])

    def test_infiniteHard(self):
        limits = Limits(50, INFINITY)
        self.assertEqual(self.ensure(limits, 10), 10 + SPARE)
        self.assertEqual(limits.set, [(10 + SPARE, INFINITY)])

    def test_enoughAlready(self):
        """
        Enough (the units' LimitNOFILE=2048), or unlimited: nothing is set,
        in particular never lowered, and nothing is logged.
        """
        for soft in (1024 + SPARE, 2048, INFINITY):
            limits = Limits(soft, INFINITY)
            self.assertEqual(self.ensure(limits), soft)
            self.assertEqual(limits.set, [])
        self.assertEqual(self.logged(), [])

    def test_hardTooLow(self):
        """
        Raised as far as the hard limit, with a warning saying how many
        connections can work and what to change.
        """
        limits = Limits(256, 1000)
        self.assertEqual(self.ensure(limits), 1000)
        self.assertEqual(limits.set, [(1000, 1000)])
        [(level, text)] = self.logged()
        self.assertEqual(level, "warn")
        self.assertEqual(
            text,
            "The open-file limit is 1000 (hard limit 1000), below the 1088 that "
            "--max-connections 1024 needs: connections beyond about 936 will fail; "
            "raise it (ulimit -n, LimitNOFILE=) or lower --max-connections")

    def test_refused(self):
        """
        A C{setrlimit} refused (systemd's C{SystemCallFilter=~@resources})
        leaves the limit as it was, and warns.
        """
        limits = Limits(100, 4096, refuse=True)
        self.assertEqual(self.ensure(limits), 100)
        [(level, text)] = self.logged()
        self.assertEqual(level, "warn")
        self.assertIn("The open-file limit is 100 (hard limit 4096)", text)
        self.assertIn("beyond about 36 will fail", text)


class MakeServiceTests(unittest.TestCase):
    def test_countsMetricsConnections(self):
        """
        C{makeService} asks for C{--max-connections} plus, with
        C{--metrics}, C{--metrics-max-connections}.
        """
        from twisted.internet.testing import MemoryReactor

        asked = []
        self.patch(tap.fdlimit, "ensureOpenFiles",
                   lambda connections, option: asked.append((connections, option)))
        cases = [
            ([], (7, "--max-connections 7")),
            (["--metrics", "tcp:0:interface=127.0.0.1", "--metrics-max-connections", "5"],
             (12, "--max-connections 7 and --metrics-max-connections 5")),
        ]
        for extra, _ in cases:
            config = tap.Options()
            config.parseOptions(["--max-connections", "7", "--no-udp",
                                 "--listen", "tcp:0:interface=127.0.0.1"] + extra)
            tap.makeService(config, MemoryReactor())
        self.assertEqual(asked, [expected for _, expected in cases])
