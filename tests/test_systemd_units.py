"""
Checks of the systemd units in C{contrib/systemd/}, with the real
C{systemd-analyze} (no running systemd needed).

C{systemd-analyze verify} refuses a unit whose C{ExecStart=} binary does not
exist, so it runs on a rendered copy whose C{/opt/primed/bin/twistd} points at
the C{twistd} of the running venv.  C{systemd-analyze} comes with Debian's
C{systemd} package (C{.ci/run} installs it on a machine without it); these
tests fail rather than skip without it.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

from twisted.trial import unittest

UNITS_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "contrib", "systemd"
)
SERVICES = ["primed.service", "primed-activated.service", "primed@.service"]
SOCKETS = ["primed-tcp.socket", "primed-udp.socket"]
UNITS = SERVICES + SOCKETS
INSTALLED_TWISTD = "/opt/primed/bin/twistd"
MAX_EXPOSURE = 2.0


def systemdAnalyze():
    path = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    if not os.access(path, os.X_OK):
        raise AssertionError(
            "systemd-analyze not found: install Debian's systemd package "
            "(.ci/run does)"
        )
    return path


def venvTwistd():
    """
    An executable for the rendered ExecStart=: this venv's twistd, or the
    interpreter itself where no twistd script sits beside it (verify only
    checks that the program exists).
    """
    path = os.path.join(os.path.dirname(sys.executable), "twistd")
    return path if os.access(path, os.X_OK) else sys.executable


def readUnit(name):
    with open(os.path.join(UNITS_DIR, name), encoding="utf-8") as f:
        return f.read()


def parseUnit(text):
    """
    A minimal unit-file parser: {section: [(key, value), ...]} in order.
    The units use no line continuations; a test below makes sure of that.
    """
    sections = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, line
        current.append((key.strip(), value.strip()))
    return sections


def values(unit, section, key):
    return [v for k, v in unit.get(section, []) if k == key]


def value(unit, section, key):
    found = values(unit, section, key)
    assert len(found) == 1, (section, key, found)
    return found[0]


def execArgs(unit):
    """
    The ExecStart command line, split, with the program and the twistd
    options before the plugin name separated from primed's own options.
    """
    argv = shlex.split(value(unit, "Service", "ExecStart"))
    plugin = argv.index("primed")
    return argv[0], argv[1:plugin], argv[plugin + 1 :]


def renderUnits(testCase):
    """
    Copy every unit into a fresh directory with ExecStart pointing at this
    venv's twistd.  The directory name contains "primed" so that any message
    about these files is caught by L{verify}.
    """
    directory = tempfile.mkdtemp(prefix="primed-units-")
    testCase.addCleanup(shutil.rmtree, directory)
    twistd = venvTwistd()
    for name in UNITS:
        text = readUnit(name)
        if name.endswith(".service"):
            assert "ExecStart=" + INSTALLED_TWISTD + " " in text, name
            text = text.replace("ExecStart=" + INSTALLED_TWISTD, "ExecStart=" + twistd)
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write(text)
    return directory


class VerifyTests(unittest.TestCase):
    """
    C{systemd-analyze verify} accepts every unit, silently.  Unknown keys
    or unparsable values are only warnings (exit status 0) to verify, so any
    output mentioning primed counts as a failure too.
    """

    def verify(self, name):
        directory = renderUnits(self)
        result = subprocess.run(
            [systemdAnalyze(), "verify", "--man=no", name],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=60,
        )
        output = result.stdout + result.stderr
        complaints = [line for line in output.splitlines() if "primed" in line]
        self.assertEqual(
            (result.returncode, complaints), (0, []), f"{name}:\n{output}"
        )

    def test_verifyDetectsMissingBinary(self):
        """
        The check has teeth: a service whose twistd does not exist fails
        it.  (A typo'd key only warns, hence the check of the output above.)
        """
        directory = tempfile.mkdtemp(prefix="primed-units-bad-")
        self.addCleanup(shutil.rmtree, directory)
        with open(os.path.join(directory, "primed.service"), "w") as f:
            f.write(
                readUnit("primed.service").replace(
                    INSTALLED_TWISTD, "/nonexistent/primed/twistd"
                )
            )
        result = subprocess.run(
            [systemdAnalyze(), "verify", "--man=no", "primed.service"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertNotEqual(result.returncode, 0, result.stderr)
        self.assertIn("/nonexistent/primed/twistd", result.stderr)


for _name in UNITS:
    _method = "test_verify_" + re.sub(r"\W", "_", _name)
    setattr(VerifyTests, _method, lambda self, name=_name: self.verify(name))
del _name, _method


class SecurityTests(unittest.TestCase):
    """
    C{systemd-analyze security --offline=true} rates every service's
    exposure at most 2.0 (0 is fully locked down, 10 is unprotected).
    """

    def exposure(self, name):
        result = subprocess.run(
            [systemdAnalyze(), "security", "--offline=true", name],
            cwd=UNITS_DIR,
            capture_output=True,
            text=True,
            timeout=60,
        )
        match = re.search(
            r"Overall exposure level for \S+: (\d+(?:\.\d+)?)\b", result.stdout
        )
        self.assertIsNotNone(match, result.stdout + result.stderr)
        return float(match.group(1))

    def check(self, name):
        score = self.exposure(name)
        self.assertLessEqual(score, MAX_EXPOSURE, f"{name}: exposure {score}")


for _name in SERVICES:
    _method = "test_exposure_" + re.sub(r"\W", "_", _name)
    setattr(SecurityTests, _method, lambda self, name=_name: self.check(name))
del _name, _method


def hardening(text):
    """
    The part of a service shared by every variant: from the resources
    comment to the end of [Service].
    """
    start = text.index("# --- resources")
    end = text.find("\n[", start)
    return text[start:] if end == -1 else text[start:end]


class ContentTests(unittest.TestCase):
    """
    What the issue asks of the units, checked where verify cannot see it.
    """

    def setUp(self):
        self.units = {name: parseUnit(readUnit(name)) for name in UNITS}

    def test_noContinuations(self):
        for name in UNITS:
            for line in readUnit(name).splitlines():
                self.assertFalse(line.rstrip().endswith("\\"), (name, line))

    def test_hardeningInSync(self):
        """
        The three services differ only in how they get their sockets.
        """
        blocks = {name: hardening(readUnit(name)) for name in SERVICES}
        self.assertEqual(len(set(blocks.values())), 1, list(blocks))

    def test_requiredDirectives(self):
        required = {
            "Type": "notify",
            "NotifyAccess": "main",
            "Restart": "on-failure",
            "DynamicUser": "yes",
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "PrivateTmp": "yes",
            "PrivateDevices": "yes",
            "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
            "CapabilityBoundingSet": "",
            "SystemCallFilter": "@system-service",
        }
        for name in SERVICES:
            unit = self.units[name]
            for key, expected in required.items():
                self.assertIn(expected, values(unit, "Service", key), (name, key))
            self.assertTrue(value(unit, "Service", "MemoryMax"), name)
            self.assertTrue(value(unit, "Service", "WatchdogSec"), name)
            self.assertEqual(value(unit, "Service", "User"), "primed", name)

    def test_limitNOFILE(self):
        """
        Room for --max-connections' default number of connections, plus
        listeners, pool, log and notify descriptors.
        """
        from primed.tcpfactory import DEFAULT_MAX_CONNECTIONS

        for name in SERVICES:
            limit = int(value(self.units[name], "Service", "LimitNOFILE"))
            self.assertGreaterEqual(limit, DEFAULT_MAX_CONNECTIONS + 64, name)

    def test_twistdInForeground(self):
        for name in SERVICES:
            program, twistdOptions, _ = execArgs(self.units[name])
            self.assertEqual(program, INSTALLED_TWISTD)
            self.assertEqual(twistdOptions, ["--nodaemon", "--pidfile="], name)

    def test_defaults(self):
        """
        The plain service spells out the daemon's defaults (those of
        docs/operating/options.rst), so an operator sees where it listens.
        """
        from primed.tap import DEFAULT_LISTEN, DEFAULT_UDP

        _, _, options = execArgs(self.units["primed.service"])
        self.assertEqual(options, ["--listen", DEFAULT_LISTEN, "--udp", DEFAULT_UDP])

    def test_optionsAccepted(self):
        """
        primed's own option parser accepts the services' arguments.  (The
        socket-activated one only parses with inherited descriptors; the
        end-to-end tests run it under systemd-socket-activate.)
        """
        from primed.tap import Options

        for name in ("primed.service", "primed@.service"):
            _, _, options = execArgs(self.units[name])
            options = [option.replace("%i", "9810") for option in options]  # an instance
            parsed = Options()
            parsed.parseOptions(options)
            self.assertEqual(parsed["listen"], [options[options.index("--listen") + 1]])
            self.assertEqual([repr(a) for a in parsed["udp"]],
                             [options[options.index("--udp") + 1]])
            self.assertEqual(parsed["reuseport"], "--reuseport" in options)

    def test_template(self):
        from primed.tap import DEFAULT_LISTEN, DEFAULT_UDP

        _, _, options = execArgs(self.units["primed@.service"])
        self.assertEqual(
            options,
            ["--reuseport", "--listen", DEFAULT_LISTEN, "--udp", DEFAULT_UDP,
             "--metrics", "tcp:%i:interface=127.0.0.1"],
        )

    def test_templateMetricsPortPerInstance(self):
        """
        Each instance's metrics port is its instance name, on loopback (so
        IPAddressAllow=localhost still covers it), and parses as an option.
        """
        from primed.tap import Options

        unit = self.units["primed@.service"]
        _, _, options = execArgs(unit)
        instance = [option.replace("%i", "9810") for option in options]
        parsed = Options()
        parsed.parseOptions(instance)
        self.assertEqual(parsed["metrics"], "tcp:9810:interface=127.0.0.1")
        self.assertEqual(value(unit, "Service", "IPAddressAllow"), "localhost")

    def test_socketsNamedPerTransport(self):
        """
        One socket unit per transport, each with its own
        FileDescriptorName=, both feeding primed-activated.service, which
        adopts each by that name.
        """
        tcp = self.units["primed-tcp.socket"]
        udp = self.units["primed-udp.socket"]
        self.assertEqual(values(tcp, "Socket", "ListenStream"), ["127.0.0.1:8809"])
        self.assertEqual(values(tcp, "Socket", "ListenDatagram"), [])
        self.assertEqual(values(udp, "Socket", "ListenDatagram"), ["127.0.0.1:8808"])
        self.assertEqual(values(udp, "Socket", "ListenStream"), [])
        self.assertEqual(value(tcp, "Socket", "FileDescriptorName"), "primed-tcp")
        self.assertEqual(value(udp, "Socket", "FileDescriptorName"), "primed-udp")
        for unit in (tcp, udp):
            self.assertEqual(
                value(unit, "Socket", "Service"), "primed-activated.service"
            )
            self.assertEqual(value(unit, "Install", "WantedBy"), "sockets.target")

        service = self.units["primed-activated.service"]
        self.assertEqual(
            value(service, "Service", "Sockets").split(),
            ["primed-tcp.socket", "primed-udp.socket"],
        )
        self.assertEqual(
            value(service, "Unit", "Requires").split(),
            ["primed-tcp.socket", "primed-udp.socket"],
        )
        _, _, options = execArgs(service)
        self.assertEqual(
            options,
            [
                "--listen",
                "systemd:domain=INET:name=primed-tcp",
                "--udp",
                "systemd:name=primed-udp",
            ],
        )
