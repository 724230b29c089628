"""
primed on several hosts behind the real nginx and HAProxy, on a
L{netns.Network}: a client host, a load-balancer host (nginx on one address,
HAProxy on another) and two backend hosts each running C{twistd -n primed}.
The balancers run the configurations in C{contrib/}, with only the addresses
rewritten.  Used by C{test_multihost_e2e.py} and
C{benchmarks/multihost.py}.
"""

import os
import re
import signal
import subprocess
import time
from typing import Dict, List, Optional

from netns import Network, Process, venvScript
from support import twistdCommand

CONTRIB = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "contrib")
HOSTS = {"client": 10, "lb": 2, "b1": 11, "b2": 12}
BACKENDS = ("b1", "b2")
#: The second address of the load-balancer host, where HAProxy listens.
HAPROXY_NUMBER = 3
#: The addresses of the backends in the contrib configurations.
CONFIG_BACKENDS = {"b1": "192.0.2.11", "b2": "192.0.2.12"}
#: What HAProxy's configuration calls each backend.
SERVER_NAMES = {"b1": "primed1", "b2": "primed2"}


class Cluster:
    """
    Use as a context manager; leaving it stops every process and removes the
    network, whatever happened.

    @ivar balancers: C{{"nginx": address, "haproxy": address}} of those
        started.
    """

    def __init__(self, balancers=("nginx", "haproxy"), verbose: bool = True,
                 backendArgs: tuple = ()):
        self.network = Network(HOSTS)
        self.wanted = balancers
        self.verbose = verbose
        self.backendArgs = backendArgs
        self.backends: Dict[str, Process] = {}
        self.balancers: Dict[str, str] = {}
        self.nginx: Optional[Process] = None
        self.haproxy: Optional[Process] = None

    def __enter__(self) -> "Cluster":
        self.network.__enter__()
        try:
            net = self.network
            self.haproxyAddress = f"{net.address('lb').rsplit('.', 1)[0]}.{HAPROXY_NUMBER}"
            net.run("lb", ["ip", "addr", "add", f"{self.haproxyAddress}/24", "dev", "eth0"])
            for host in BACKENDS:
                self.startBackend(host)
            if "nginx" in self.wanted:
                self.startNginx()
            if "haproxy" in self.wanted:
                self.startHAProxy()
        except BaseException:
            self.network.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.network.down()

    def address(self, host: str) -> str:
        return self.network.address(host)

    # Backends.

    def startBackend(self, host: str) -> Process:
        address = self.address(host)
        argv = twistdCommand() + [
            "-n", "-l", "-", "--pidfile=", "primed",
            "--listen", f"haproxy:tcp:8809:interface={address}:backlog=1024",
            "--udp", f"{address}:8808", "--drain-timeout", "5",
            # The balancers, as contrib/ and README.rst say: nginx's and
            # HAProxy's addresses on the balancer host.
            "--proxy-from", self.address("lb"), "--proxy-from", self.haproxyAddress,
            *(arg.format(address=address) for arg in self.backendArgs),
        # Every request logged (--verbose-rate 0): servedBy reads which
        # backend answered which number from those lines.
        ] + (["--verbose", "--verbose-rate", "0"] if self.verbose else [])
        process = self.network.start(host, f"primed-{host}", argv)
        process.waitFor("Limits:", 30)
        self.backends[host] = process
        return process

    def servedBy(self, host: str, number: int, start: Optional[int] = None) -> bool:
        """
        Whether C{host}'s primed logged a request for C{number} from the
        client host (in this run of it, or after byte C{start} of its log).
        """
        process = self.backends[host]
        text = process.text(process.startOffset if start is None else start)
        return f"{self.address('client')}:" in text and re.search(
            rf"^.*{re.escape(self.address('client'))}:\d+ asked b'{number}'", text, re.M
        ) is not None

    # Balancers, from contrib/ with the addresses rewritten.

    def _config(self, name: str, text: str) -> str:
        for host, placeholder in CONFIG_BACKENDS.items():
            text = text.replace(placeholder, self.address(host))
        path = os.path.join(self.network.directory, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def startNginx(self) -> Process:
        lb = self.address("lb")
        with open(os.path.join(CONTRIB, "nginx", "nginx.conf")) as f:
            text = f.read()
        text = text.replace("listen 8809 ", f"listen {lb}:8809 ").replace(
            "listen 8808 udp", f"listen {lb}:8808 udp")
        config = self._config("nginx.conf", text)
        directory = self.network.directory
        self.nginx = self.network.start("lb", "nginx", [
            "nginx", "-c", config, "-e", os.path.join(directory, "nginx-error.log"),
            "-g", f"pid {os.path.join(directory, 'nginx.pid')}; daemon off;",
        ])
        self.network.listening("lb", [f"{lb}:8809", f"{lb}:8808"])
        self.balancers["nginx"] = lb
        return self.nginx

    def startHAProxy(self) -> Process:
        with open(os.path.join(CONTRIB, "haproxy", "haproxy.cfg")) as f:
            text = f.read()
        text = text.replace("bind :8809", f"bind {self.haproxyAddress}:8809")
        config = self._config("haproxy.cfg", text)
        self.haproxy = self.network.start("lb", "haproxy", ["haproxy", "-db", "-f", config])
        self.network.listening("lb", [f"{self.haproxyAddress}:8809"])
        self.balancers["haproxy"] = self.haproxyAddress
        return self.haproxy

    # The client host.

    def client(self, args: List[str], input: bytes = b"", timeout: float = 120.0):
        return self.network.run(
            "client", [venvScript("primed-client"), *args], input=input, timeout=timeout)

    def startClient(self, name: str, args: List[str], stdout) -> subprocess.Popen:
        return subprocess.Popen(
            self.network.command("client", [venvScript("primed-client"), *args]),
            stdin=subprocess.PIPE, stdout=stdout, stderr=subprocess.PIPE,
        )

    def probe(self, balancer: str, number: int) -> bytes:
        return self.network.run(
            "client", ["nc", "-N", "-w", "5", self.balancers[balancer], "8809"],
            input=b"%d\n" % number, timeout=20).stdout

    def waitUntilServing(self, balancer: str, host: str, number: int,
                         timeout: float = 30.0) -> float:
        """
        Probe through C{balancer} with C{number} until C{host}'s primed
        answers one; return the seconds that took.
        """
        started = time.monotonic()
        while not self.servedBy(host, number):
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{balancer} sent nothing to {host} within {timeout}s")
            self.probe(balancer, number)
        return time.monotonic() - started

    def kill(self, host: str) -> None:
        self.backends[host].stop(signal.SIGKILL)
