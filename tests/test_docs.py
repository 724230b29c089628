"""
The documentation as a user gets it: the Sphinx site builds without a
warning and without the network, the man pages committed in C{man/} are
exactly what C{docs/man/} generates, C{man} renders them without a warning,
every option of C{--help} is in its page, and the installed package carries
them under C{share/man/}.

Regenerate the man pages after changing a page they include (C{docs/man/},
the option list of C{docs/operating/options.rst}, the options and exit
status of C{docs/client.rst})::

    .venv/bin/sphinx-build -W -b man -d /tmp/primed-doctrees docs man
"""

import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
MAN = os.path.join(ROOT, "man")
PAGES = {"primed.8": "man8", "primed-client.1": "man1"}
BIN = os.path.dirname(sys.executable)

# Sphinx 9 needs Python 3.11, so the test extra installs it there only
# (setup.cfg); CI's python3 is 3.11.
needsSphinx = unittest.skipIf(
    sys.version_info < (3, 11), "the docs toolchain (Sphinx 9) needs Python 3.11 or later")


def sphinxBuild(builder: str, out: str, doctrees: str, env=None) -> subprocess.CompletedProcess:
    """
    Run C{sphinx-build -W} with C{builder} from C{docs/} into C{out}, in a
    network namespace of its own when the tests run as root, so a page or
    an extension that fetches anything fails the build instead of passing
    on a machine that happens to be online.
    """
    argv = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", builder,
            "-d", doctrees, DOCS, out]
    if os.geteuid() == 0 and shutil.which("unshare"):
        argv = ["unshare", "--net", "--"] + argv
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env, timeout=300)


def manWarnings(path: str) -> subprocess.CompletedProcess:
    """
    Render a man page file as C{man} shows it, with groff's warnings on.
    """
    env = dict(os.environ, MANWIDTH="80", MANPAGER="cat", PAGER="cat", LC_ALL="C.UTF-8")
    return subprocess.run(["man", "--warnings", "-l", path], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env, timeout=60)


def troffText(path: str) -> str:
    """
    A man page's troff source with its escaped hyphens plain and its font
    changes gone, so C{\\fB\\-\\-max\\-digits N\\fP} reads C{--max-digits N}.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"\\f(?:[BIRP]|\(..|\[[^]]*\])", "", text)
    return text.replace("\\-", "-").replace("\\%", "").replace("\\&", "")


def helpOptions(argv) -> set:
    """
    Every option a Twisted C{usage.Options} C{--help} lists: C{-t} and
    C{--threads} from C{  -t, --threads=  Threads...}.
    """
    out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout
    found = set()
    for line in out.stdout.splitlines():
        match = re.match(r"^\s+(?:(-\w), )?(--[\w-]+)=?(?:\s|$)", line)
        if match:
            found.update(name for name in match.groups() if name)
    return found


def mentions(text: str, option: str) -> bool:
    return re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(option), text) is not None


@needsSphinx
class BuildTests(unittest.TestCase):
    """
    C{sphinx-build -W}: the HTML site and the man pages.
    """

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="primed-docs-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)

    def test_htmlWithoutWarnings(self):
        """
        The site builds with every warning an error, offline.
        """
        out = os.path.join(self.tmp, "html")
        result = sphinxBuild("html", out, os.path.join(self.tmp, "doctrees"))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr, "")
        for page in ("index", "tutorial", "protocol", "client", "changelog",
                     "operating/options", "design/index", "man/primed"):
            self.assertTrue(os.path.isfile(os.path.join(out, page + ".html")), page)
        with open(os.path.join(out, "changelog.html"), encoding="utf-8") as f:
            self.assertIn("primed 0.1.0", f.read())
        # The API reference: pydoctor's pages, not the placeholder they
        # replace, linked from the front page.
        with open(os.path.join(out, "index.html"), encoding="utf-8") as f:
            self.assertIn('href="api/index.html"', f.read())
        with open(os.path.join(out, "api", "index.html"), encoding="utf-8") as f:
            index = f.read()
        self.assertIn("pydoctor", index)
        self.assertNotIn("This page is replaced by pydoctor", index)
        self.assertIn('href="primed.wire.html"', index)
        with open(os.path.join(out, "api", "primed.wire.html"), encoding="utf-8") as f:
            wire = f.read()
        self.assertIn("parseRequest", wire)
        self.assertIn("replyFor", wire)
        self.assertTrue(os.path.isfile(os.path.join(out, "api", "primed.client.html")))

    def test_docstringsParse(self):
        """
        pydoctor parses every docstring: the site's build runs it too quiet
        to print anything (docs/conf.py), so here it runs one step louder,
        where the only lines allowed are links it cannot resolve offline
        (names of Twisted and Python).
        """
        import runpy

        conf = runpy.run_path(os.path.join(DOCS, "conf.py"))
        result = subprocess.run(
            [os.path.join(BIN, "pydoctor"), "--make-html",
             "--html-output=" + os.path.join(self.tmp, "api")] + conf["PYDOCTOR_ARGS"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
        lines = result.stdout.splitlines()
        self.assertTrue(os.path.isfile(os.path.join(self.tmp, "api", "primed.wire.html")),
                        result.stdout[-2000:])
        self.assertEqual([line for line in lines if "Cannot find link target" not in line], [])

    def test_manPagesUpToDate(self):
        """
        The committed man pages are byte for byte what the sources generate
        now, so they never drift from the docs; whoever builds them: a
        C{SOURCE_DATE_EPOCH} (set by Debian's package builds, for one)
        changes nothing.
        """
        out = os.path.join(self.tmp, "man")
        env = dict(os.environ, SOURCE_DATE_EPOCH="1")
        result = sphinxBuild("man", out, os.path.join(self.tmp, "doctrees"), env)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(sorted(os.listdir(out)), sorted(PAGES))
        for name in PAGES:
            with open(os.path.join(out, name), encoding="utf-8") as f:
                generated = f.read()
            with open(os.path.join(MAN, name), encoding="utf-8") as f:
                committed = f.read()
            if generated != committed:
                diff = "".join(difflib.unified_diff(
                    committed.splitlines(True), generated.splitlines(True),
                    "man/" + name, "generated", n=1))
                self.fail(f"man/{name} is stale; regenerate it with "
                          f"'sphinx-build -W -b man -d /tmp/primed-doctrees docs man':\n"
                          + diff[:4000])


class ManPageTests(unittest.TestCase):
    """
    The committed man pages, as C{man} shows them.
    """

    def test_renderWithoutWarnings(self):
        """
        C{man --warnings -l} renders each page with no warning from groff.
        """
        for name in PAGES:
            result = manWarnings(os.path.join(MAN, name))
            self.assertEqual((result.returncode, result.stderr), (0, ""), name)
            self.assertIn("SYNOPSIS", result.stdout)

    def test_daemonOptions(self):
        """
        Every option C{twistd primed --help} lists is in C{primed(8)}.
        """
        options = helpOptions([os.path.join(BIN, "twistd"), "primed", "--help"])
        self.assertIn("--max-digits", options)
        text = troffText(os.path.join(MAN, "primed.8"))
        self.assertEqual(sorted(o for o in options if not mentions(text, o)), [])

    def test_clientOptions(self):
        """
        Every option C{primed-client --help} lists is in C{primed-client(1)}.
        """
        options = helpOptions([os.path.join(BIN, "primed-client"), "--help"])
        self.assertIn("--retries", options)
        text = troffText(os.path.join(MAN, "primed-client.1"))
        self.assertEqual(sorted(o for o in options if not mentions(text, o)), [])

    def test_installed(self):
        """
        The installed package put both pages under C{share/man/} of its
        environment, where C{man} finds them once the venv is on C{PATH},
        and they are the committed ones.
        """
        for name, section in PAGES.items():
            installed = os.path.join(sys.prefix, "share", "man", section, name)
            self.assertTrue(os.path.isfile(installed), installed)
            with open(installed, "rb") as f, open(os.path.join(MAN, name), "rb") as g:
                self.assertEqual(f.read(), g.read(), installed)

    def test_manFindsThemOnPath(self):
        """
        With the venv's C{bin/} on C{PATH} (an activated venv), C{man -w
        primed-client} finds the installed page: man-db derives the manual
        path from C{PATH}.
        """
        env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
        env.pop("MANPATH", None)
        for name, section in PAGES.items():
            page, number = name.rsplit(".", 1)
            result = subprocess.run(["man", "-w", number, page], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env, timeout=60)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(os.path.realpath(result.stdout.strip()),
                             os.path.realpath(os.path.join(sys.prefix, "share", "man", section,
                                                           name)))


class ChangelogTests(unittest.TestCase):
    """
    NEWS.rst and the fragments towncrier builds it from.
    """

    def draft(self, version: str = "0.2.0") -> str:
        result = subprocess.run(
            [os.path.join(BIN, "towncrier"), "build", "--draft", "--version", version],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stdout)
        return result.stdout

    def test_everyFragmentInTheDraft(self):
        """
        C{towncrier build --draft} takes every fragment in C{newsfragments/}
        (a misnamed one fails the build: C{ignore} is set in pyproject.toml),
        and shows the text of each one whose type shows its content.
        """
        draft = " ".join(self.draft().split())
        self.assertIn("primed 0.2.0 (", draft)
        directory = os.path.join(ROOT, "newsfragments")
        names = [n for n in os.listdir(directory) if not n.startswith(".")]
        for name in names:
            issue, kind = name.split(".")[:2]
            self.assertTrue(issue.isdigit(), name)
            self.assertIn(kind, ("feature", "bugfix", "doc", "removal", "misc"), name)
            if kind != "misc":
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    words = " ".join(f.read().split())
                self.assertIn(words, draft, name)

    def test_newsHasTheFirstRelease(self):
        """
        NEWS.rst keeps towncrier's marker, with 0.1.0 below it.
        """
        with open(os.path.join(ROOT, "NEWS.rst"), encoding="utf-8") as f:
            news = f.read()
        marker = news.index(".. towncrier release notes start")
        self.assertGreater(news.index("primed 0.1.0 ("), marker)


def moduleFiles():
    """
    Every module file of primed and its client, as C{primed/x.py} paths.
    """
    found = set()
    for directory in ("primed", os.path.join("primed", "client")):
        for name in os.listdir(os.path.join(ROOT, directory)):
            if name.endswith(".py"):
                found.add(directory.replace(os.sep, "/") + "/" + name)
    return found


def readmeLayout():
    """
    The files and folders README.rst's layout tree names, as a list of
    paths in the tree's order: a line
    indented under C{primed/} names C{primed/NAME}, under C{client/}
    C{primed/client/NAME}; several names may share a line, comma-separated.
    """
    with open(os.path.join(ROOT, "README.rst"), encoding="utf-8") as f:
        text = f.read()
    tree = text.split("\nLayout\n======\n", 1)[1].split("::\n", 1)[1]
    paths, parents = [], []
    for line in tree.splitlines():
        if not line.strip():
            if paths:
                break
            continue
        if not line.startswith("    "):
            break
        indent = len(line) - len(line.lstrip())
        names = line.strip().split("  ")[0].split(", ")
        while parents and parents[-1][0] >= indent:
            parents.pop()
        prefix = "".join(parent for _, parent in parents)
        for name in names:
            paths.append(prefix + name)
        if names[-1].endswith("/"):
            parents.append((indent, names[-1]))
    return paths


class LayoutTests(unittest.TestCase):
    """
    README.rst is a front page, and its layout tree and the design page's
    module table match the folders.
    """

    def test_frontPage(self):
        """
        README.rst has at most 250 lines and holds CI's test command word
        for word.
        """
        with open(os.path.join(ROOT, "README.rst"), encoding="utf-8") as f:
            readme = f.read()
        self.assertLessEqual(len(readme.splitlines()), 250)
        with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
            command = [line for line in f.read().splitlines()
                       if line.startswith("sh tests/install-tools")]
        self.assertEqual(len(command), 1)
        self.assertIn("\n    " + command[0] + "\n", readme)
        self.assertIn("\n    python3 -m venv .venv && .venv/bin/pip install . && "
                      ".venv/bin/twistd -n primed\n", readme)

    def test_readmeTree(self):
        """
        Every module of primed and its client is in README.rst's tree (the
        server package's C{__init__.py} aside), every module the tree names
        exists, and so does every top-level folder it names.
        """
        tree = readmeLayout()
        self.assertEqual(sorted(p for p in set(tree) if tree.count(p) > 1), [])
        tree = set(tree)
        listed = {path for path in tree if path.endswith(".py")}
        self.assertEqual(sorted(listed ^ (moduleFiles() - {"primed/__init__.py"})), [])
        for path in tree - listed:
            self.assertTrue(os.path.exists(os.path.join(ROOT, path)), path)

    def test_designModules(self):
        """
        The design page's module table names every module of primed and its
        client, and nothing else.
        """
        with open(os.path.join(DOCS, "design", "index.rst"), encoding="utf-8") as f:
            text = f.read()
        table = text.split("\nThe modules\n===========\n", 1)[1].split("\nThe rest", 1)[0]
        named = re.findall(r"^``(primed/[\w/]+\.py)``", table, re.M)
        self.assertEqual(sorted(n for n in set(named) if named.count(n) > 1), [])
        named = set(named)
        self.assertEqual(sorted(named ^ (moduleFiles() - {"primed/__init__.py"})), [])


def protocolExamples():
    """
    The example table of C{docs/protocol.rst}: (request bytes, reply letter)
    pairs, the request's escapes (C{\\n}, C{\\r}, C{\\t}, C{\\xNN}) decoded.
    """
    with open(os.path.join(DOCS, "protocol.rst"), encoding="utf-8") as f:
        text = f.read()
    rows = re.findall(r"^``(.+?)``\s+``([TFE])``\s", text, re.M)

    def decode(escaped):
        out = bytearray()
        i = 0
        while i < len(escaped):
            if escaped.startswith("\\x", i):
                out.append(int(escaped[i + 2:i + 4], 16))
                i += 4
            elif escaped[i] == "\\":
                out += {"n": b"\n", "r": b"\r", "t": b"\t"}[escaped[i + 1]]
                i += 2
            else:
                out += escaped[i].encode("utf-8")
                i += 1
        return bytes(out)

    return [(decode(request), reply) for request, reply in rows]


class ProtocolExamplesTests(unittest.TestCase):
    """
    The wire protocol page's examples are what the installed daemon answers.
    """

    @classmethod
    def setUpClass(cls):
        from support import Daemon

        cls.daemon = Daemon()
        cls.daemon.start()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def test_examplesRead(self):
        examples = protocolExamples()
        self.assertGreaterEqual(len(examples), 15)
        self.assertIn((b"\t+0007 \n", "T"), examples)
        self.assertIn((b"1\x007\n", "E"), examples)

    def test_tcp(self):
        """
        All the examples on one connection, pipelined: one reply each, in
        order.
        """
        from support import ask

        examples = protocolExamples()
        payload = b"".join(request for request, _ in examples)
        expected = "".join(reply + "\n" for _, reply in examples).encode("ascii")
        self.assertEqual(ask(self.daemon.tcpPort, payload), expected)

    def test_udp(self):
        """
        Each example in a datagram of its own.
        """
        from support import askUDP

        for request, reply in protocolExamples():
            self.assertEqual(askUDP(self.daemon.udpPort, request),
                             (reply + "\n").encode("ascii"), request)


class TwistOutputTests(unittest.TestCase):
    """
    C{twist primed}'s output, as docs/operating/logging.rst describes it:
    Twisted's JSON events (RFC 7464 records) when standard output is not a
    terminal, plain text lines when it is.
    """

    def run_twist(self, stdout, readFd):
        """
        Start the installed C{twist primed} on ports of its own with
        C{stdout}, read C{readFd} until it has logged that it listens on
        TCP, stop it, and return what it wrote.
        """
        import select
        import signal
        import time

        process = subprocess.Popen(
            [os.path.join(BIN, "twist"), "primed", "--listen", "tcp:0:interface=127.0.0.1",
             "--no-udp"],
            stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT,
            cwd=tempfile.gettempdir())
        self.addCleanup(process.wait, 20)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        output = b""
        deadline = time.monotonic() + 30
        while re.search(rb"Listening for[^\n]*\n", output) is None:
            remaining = deadline - time.monotonic()
            self.assertGreater(remaining, 0, output)
            ready, _, _ = select.select([readFd], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(readFd, 65536)
                except OSError:  # a pty whose other end closed
                    chunk = b""
                self.assertTrue(chunk, output)
                output += chunk
        process.send_signal(signal.SIGTERM)
        self.assertEqual(process.wait(20), -signal.SIGTERM)
        return output.decode("utf-8", "replace")

    def test_jsonWhenPiped(self):
        """
        Piped, every line is one of Twisted's JSON events.
        """
        import json

        read, write = os.pipe()
        self.addCleanup(os.close, read)
        try:
            output = self.run_twist(write, read)
        finally:
            os.close(write)
        lines = output.split("\n")[:-1]  # after the last newline: a partial line
        # RFC 7464 JSON text sequences: a record separator, then the object.
        self.assertTrue(all(line.startswith("\x1e{") for line in lines), lines)
        events = [json.loads(line[1:]) for line in lines]
        self.assertIn("Listening for {transport} on {address}",
                      [event.get("log_format") for event in events])
        self.assertTrue(all("log_namespace" in event for event in events), events)

    def test_textOnATerminal(self):
        """
        On a terminal (a pseudo-terminal here), plain text lines.
        """
        import pty

        controller, terminal = pty.openpty()
        self.addCleanup(os.close, controller)
        try:
            output = self.run_twist(terminal, controller)
        finally:
            os.close(terminal)
        self.assertRegex(output, r"\[primed\.service\.PrimedService#info\] "
                                 r"Listening for TCP on 127\.0\.0\.1:\d+")
        self.assertNotIn('"log_format"', output)
