"""
podman for the container tests (C{tests/test_container_e2e.py}): one
session builds the image of the repository's C{Containerfile} once, on a
Debian bookworm base made with debootstrap, and removes everything it made
when it ends.

  - podman 4.3 (Debian bookworm) needs a C{containers.conf} of its own here
    (L{CONTAINERS_CONF}): runc, as crun fails on this machine's hybrid
    cgroups, and the hard C{ulimit}s of the machine as defaults.
  - No registry is reachable: the base image is C{debootstrap --variant=
    minbase --include=python3,python3-venv bookworm} from the machine's own
    Debian mirror, trimmed as the official C{debian:*-slim} images are (no
    downloaded packages, package lists, manuals or translations), imported
    with C{podman import}.  It is the one thing kept between runs
    (L{BASE_IMAGE}, its recipe in the label L{BASE_LABEL}); a machine
    without it makes it (about a minute and a half).
  - The image under test, its network, containers and pods are this
    session's alone (named after L{PodmanSession.id}) and removed at the
    end; so are the iptables rules and chains podman's network backend
    (CNI here; netavark elsewhere) added, the nftables tables it created,
    and IP forwarding is set back as it was (L{HostNetworkState}).
"""

import fcntl
import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from typing import Dict, List, Optional, Set, Tuple

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONTAINERS_CONF = """\
# Written by tests/container.py for podman 4.3 on this machine.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
"""

SUITE = "bookworm"
PACKAGES = "python3,python3-venv"
#: Removed from the debootstrapped tree before it is imported, as Debian's
#: own slim images do: 135 MB instead of 275.
TRIM = ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*", "usr/share/man/*",
        "usr/share/info/*", "usr/share/locale/*")
BASE_IMAGE = "localhost/primed-test-base:" + SUITE
BASE_LABEL = "org.primed.test.base"
#: What the cached base image was made from; a different recipe makes a new one.
BASE_RECIPE = f"2: debootstrap --variant=minbase --include={PACKAGES} {SUITE}; trim {' '.join(TRIM)}"
BASE_LOCK = "/var/tmp/primed-test-base.lock"

#: The host's CA bundle, passed to the build as the pipcert secret: HTTPS to
#: PyPI passes through an intercepting proxy here.
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

#: Labels of this session's containers and pods.
LABEL = "org.primed.test.session"


class PodmanError(AssertionError):
    pass


def debianMirror(sources: str = "/etc/apt/sources.list.d/debian.sources",
                 legacy: str = "/etc/apt/sources.list") -> str:
    """
    The machine's Debian mirror for L{SUITE}: the C{URIs:} of the deb822
    stanza whose C{Suites:} has it, or a C{deb} line of C{sources.list};
    Debian's own redirector if neither says.
    """
    try:
        with open(sources, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    for stanza in re.split(r"\n\s*\n", text):
        fields = {}
        for line in stanza.splitlines():
            if ":" in line and not line.startswith(("#", " ")):
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.split()
        if "deb" in fields.get("types", []) and SUITE in fields.get("suites", []):
            return fields["uris"][0]
    try:
        with open(legacy, encoding="utf-8") as f:
            for line in f:
                words = line.split()
                if words[:1] == ["deb"] and SUITE in words:
                    urls = [w for w in words if "://" in w]
                    if urls:
                        return urls[0]
    except FileNotFoundError:
        pass
    return "http://deb.debian.org/debian"


def _run(argv: List[str], timeout: float, env=None, check: bool = True,
         input: Optional[str] = None) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                            input=input, stdin=None if input is not None else subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise PodmanError(f"{' '.join(argv)} exited with {result.returncode}:\n"
                          f"{result.stdout}\n{result.stderr}")
    return result


class HostNetworkState:
    """
    What podman's network backend changes on the host and never undoes: its
    iptables chains and rules (CNI's C{CNI-*}, netavark's C{NETAVARK*}),
    the nftables tables iptables-nft created for them, and IP forwarding.
    L{restore} removes what appeared since L{__init__}, and only that.
    """

    #: Bridges podman's backends make (CNI's cni-podmanN, netavark's
    #: podmanN), which stay after their network is gone.
    BRIDGES = re.compile(r"^(cni-)?podman\d+$")
    FORWARDING = ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding")
    TABLES = ("filter", "nat", "mangle", "raw")
    OURS = re.compile(r"\b(CNI-|NETAVARK)")

    def __init__(self):
        self.forwarding = {}
        for path in self.FORWARDING:
            try:
                with open(path) as f:
                    self.forwarding[path] = f.read().strip()
            except FileNotFoundError:
                pass
        self.nftTables = self._nftTables()
        self.rules = self._allRules()
        self.links = set(os.listdir("/sys/class/net"))
        self.ipam = self._ipam()

    #: CNI's host-local IPAM: a directory of leases per network.
    IPAM = "/var/lib/cni/networks"

    def _ipam(self) -> Set[str]:
        try:
            return set(os.listdir(self.IPAM))
        except FileNotFoundError:
            return set()

    @staticmethod
    def _nftTables() -> Set[Tuple[str, str]]:
        if shutil.which("nft") is None:
            return set()
        result = _run(["nft", "list", "tables"], 30, check=False)
        return {tuple(line.split()[1:3]) for line in result.stdout.splitlines()
                if line.startswith("table ")}

    def _allRules(self) -> Dict[Tuple[str, str], List[str]]:
        rules = {}
        existing = self._nftTables()
        for command, family in (("iptables", "ip"), ("ip6tables", "ip6")):
            if shutil.which(command) is None:
                continue
            for table in self.TABLES:
                # Listing a table iptables-nft has not made would make it.
                if existing and (family, table) not in existing:
                    continue
                result = _run([command, "-w", "-t", table, "-S"], 30, check=False)
                if result.returncode == 0:
                    rules[command, table] = result.stdout.splitlines()
        return rules

    def leftovers(self) -> List[str]:
        """
        podman's rules and chains that were not there at the start, one
        C{iptables -S} line each (empty once L{restore} did its work).
        """
        found = []
        for (command, table), lines in self._allRules().items():
            before = set(self.rules.get((command, table), ()))
            found += [f"{command} -t {table} {line}" for line in lines
                      if line not in before and self.OURS.search(line)]
        for family, name in self._nftTables() - self.nftTables:
            found.append(f"nft table {family} {name}")
        for link in set(os.listdir("/sys/class/net")) - self.links:
            if self.BRIDGES.match(link):
                found.append(f"interface {link}")
        for path, value in self.forwarding.items():
            with open(path) as f:
                if f.read().strip() != value:
                    found.append(f"{path} is not {value}")
        return found

    def restore(self) -> None:
        for network in self._ipam() - self.ipam:
            shutil.rmtree(os.path.join(self.IPAM, network), ignore_errors=True)
        for link in set(os.listdir("/sys/class/net")) - self.links:
            if self.BRIDGES.match(link):
                _run(["ip", "link", "delete", link], 30, check=False)
        for (command, table), lines in self._allRules().items():
            before = set(self.rules.get((command, table), ()))
            new = [line for line in lines if line not in before and self.OURS.search(line)]
            chains = [line.split()[1] for line in new if line.startswith("-N ")]
            # Jumps first (from chains that stay, too), then the chains.
            for line in new:
                if line.startswith("-A "):
                    _run([command, "-w", "-t", table, "-D", *shlex.split(line[3:])], 30,
                         check=False)
            for flag in ("-F", "-X"):
                for chain in chains:
                    _run([command, "-w", "-t", table, flag, chain], 30, check=False)
        for family, name in self._nftTables() - self.nftTables:
            # Tables iptables-nft made for podman, removed once they hold
            # no rule and only their built-in chains (-P lines).
            command = {"ip": "iptables", "ip6": "ip6tables"}.get(family)
            if command is None or name not in self.TABLES:
                continue
            listing = _run([command, "-w", "-t", name, "-S"], 30, check=False)
            if listing.returncode == 0 and all(
                line.startswith("-P ") for line in listing.stdout.splitlines()
            ):
                _run(["nft", "delete", "table", family, name], 30, check=False)
        for path, value in self.forwarding.items():
            with open(path, "w") as f:
                f.write(value + "\n")


class PodmanSession:
    """
    One test session's podman: the image under test (built once), a
    network of its own, and every container and pod the tests start, all
    removed by L{close}.

    @ivar timings: seconds taken by each step (C{"base"}, C{"build"}), for
        the record.
    """

    def __init__(self):
        self.id = uuid.uuid4().hex[:10]
        self.directory = tempfile.mkdtemp(prefix="primed-podman-")
        conf = os.path.join(self.directory, "containers.conf")
        with open(conf, "w") as f:
            f.write(CONTAINERS_CONF)
        self.env = dict(os.environ, CONTAINERS_CONF=conf)
        self.image = f"localhost/primed-test:{self.id}"
        self.network = f"primed-test-{self.id}"
        self.bridge: Optional[str] = None
        self.kubeFiles: List[str] = []
        self.timings: Dict[str, float] = {}
        self.host: Optional[HostNetworkState] = None
        self.imagesBefore: Set[str] = set()
        self.built = False

    def podman(self, *args: str, timeout: float = 120, check: bool = True,
               input: Optional[str] = None) -> subprocess.CompletedProcess:
        return _run(["podman", *args], timeout, env=self.env, check=check, input=input)

    # Setting up.

    def start(self) -> None:
        self.host = HostNetworkState()
        self.imagesBefore = self._images()
        base = self.baseImage()
        started = time.monotonic()
        self.build(base)
        self.timings["build"] = time.monotonic() - started
        self.podman("network", "create", "--label", f"{LABEL}={self.id}", self.network)
        self.bridge = json.loads(self.podman("network", "inspect", self.network).stdout)[0].get(
            "network_interface")

    def _images(self) -> Set[str]:
        result = self.podman("images", "--all", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}",
                             check=False)
        return set(result.stdout.splitlines())

    def baseImage(self) -> str:
        """
        L{BASE_IMAGE}, made now unless a previous run left it with the same
        recipe.  A lock keeps two sessions from making it together.
        """
        with open(BASE_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            recipe = hashlib.sha256(BASE_RECIPE.encode()).hexdigest()[:16]
            result = self.podman("image", "inspect", "--format",
                                 "{{index .Config.Labels \"%s\"}}" % BASE_LABEL, BASE_IMAGE,
                                 check=False)
            if result.returncode == 0 and result.stdout.strip() == recipe:
                self.timings["base"] = 0.0
                return BASE_IMAGE
            started = time.monotonic()
            root = tempfile.mkdtemp(prefix="primed-debootstrap-", dir="/var/tmp")
            try:
                _run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE, root,
                      debianMirror()], 1200)
                for pattern in TRIM:
                    for path in glob.glob(os.path.join(root, pattern)):
                        if os.path.isdir(path) and not os.path.islink(path):
                            shutil.rmtree(path)
                        else:
                            os.unlink(path)
                _run(["find", os.path.join(root, "usr/share/doc"), "-type", "f", "-not", "-name",
                      "copyright", "-delete"], 120)
                tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
                try:
                    imported = subprocess.run(
                        ["podman", "import", "--change", f"LABEL {BASE_LABEL}={recipe}",
                         "-", BASE_IMAGE],
                        stdin=tar.stdout, capture_output=True, text=True, env=self.env,
                        timeout=600)
                finally:
                    tar.stdout.close()
                    tar.wait(600)
                if imported.returncode != 0 or tar.returncode != 0:
                    raise PodmanError(f"podman import failed:\n{imported.stderr}")
            finally:
                shutil.rmtree(root, ignore_errors=True)
            self.timings["base"] = time.monotonic() - started
            return BASE_IMAGE

    def build(self, base: str) -> None:
        """
        The repository's Containerfile, as an operator builds it (with the
        pipcert secret where this machine needs it); no intermediate image
        is kept (C{--layers=false}).
        """
        secret = (["--secret", f"id=pipcert,src={CA_BUNDLE}"]
                  if os.path.exists(CA_BUNDLE) else [])
        self.built = True
        self.podman("build", "--layers=false", "--format", "docker", "--build-arg",
                    f"BASE={base}", *secret, "-t", self.image,
                    "-f", os.path.join(REPOSITORY, "Containerfile"), REPOSITORY, timeout=900)

    # Running.

    def run(self, name: str, *args: str, options=(), env=()) -> "Container":
        """
        Start the image as container C{name} (with C{args} after the image
        name), its ports published on ephemeral ports of 127.0.0.1, as
        locked down as the Kubernetes manifests ask.
        """
        full = f"primed-test-{self.id}-{name}"
        envArgs = [f"--env={item}" for item in env]
        self.podman("run", "--detach", "--name", full, "--label", f"{LABEL}={self.id}",
                    "--network", self.network, "--read-only", "--cap-drop=ALL",
                    "--security-opt=no-new-privileges",
                    "--publish=127.0.0.1::8809/tcp", "--publish=127.0.0.1::8808/udp",
                    "--publish=127.0.0.1::9810/tcp", *envArgs, *options, self.image, *args)
        return Container(self, full)

    # Cleaning up.

    def close(self) -> None:
        """
        Remove everything this session made, whatever state it got to;
        every step is attempted even if one fails.
        """
        for path in self.kubeFiles:
            self.podman("kube", "down", path, timeout=120, check=False)
        label = f"label={LABEL}={self.id}"
        pods = self.podman("pod", "ps", "--quiet", "--filter", label, check=False).stdout.split()
        if pods:
            self.podman("pod", "rm", "--force", "--time", "0", *pods, check=False)
        containers = self.podman("ps", "--all", "--quiet", "--filter", label,
                                 check=False).stdout.split()
        if containers:
            self.podman("rm", "--force", "--time", "0", *containers, check=False)
        if self.built:
            self.podman("rmi", "--force", self.image, check=False)
        # Images podman made on the way (kube play's pause image), not there before.
        for entry in self._images() - self.imagesBefore:
            name, _, imageId = entry.partition(" ")
            if name.startswith("localhost/podman-pause:"):
                self.podman("rmi", "--force", name, check=False)
            elif name.startswith("<none>") or self.id in name:
                self.podman("rmi", "--force", imageId, check=False)
        self.podman("network", "rm", "--force", self.network, check=False)
        if self.bridge and os.path.exists(f"/sys/class/net/{self.bridge}"):
            _run(["ip", "link", "delete", self.bridge], 30, check=False)
        shutil.rmtree(f"/var/lib/cni/networks/{self.network}", ignore_errors=True)
        shutil.rmtree(self.directory, ignore_errors=True)
        if self.host is not None:
            self.host.restore()
            # A cleanup that leaves something behind fails the session.
            leftovers = self.host.leftovers()
            if self.built and self.podman("image", "exists", self.image, check=False
                                          ).returncode == 0:
                leftovers.append(f"image {self.image}")
            if leftovers:
                raise PodmanError("podman left behind: " + "; ".join(leftovers))


class Container:
    """
    A container of a L{PodmanSession}.
    """

    def __init__(self, session: PodmanSession, name: str):
        self.session = session
        self.name = name

    def hostPort(self, port: str) -> int:
        """
        The 127.0.0.1 port that C{port} (C{"8809/tcp"}) is published on.
        """
        text = self.session.podman("port", self.name, port).stdout.strip()
        return int(text.rsplit(":", 1)[1])

    def inspect(self, template: str) -> str:
        return self.session.podman("inspect", "--format", template, self.name).stdout.strip()

    def logs(self) -> str:
        result = self.session.podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def waitForLog(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            logs = self.logs()
            if text in logs:
                return
            state = self.inspect("{{.State.Status}}")
            if state in ("exited", "stopped"):
                raise AssertionError(f"{self.name} {state} before logging {text!r}:\n{logs}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not log {text!r} in {timeout}s:\n{logs}")
            time.sleep(0.1)
