"""
The test network itself (L{netns}): what it leaves behind.  Needs root and
C{ip}, as the multi-host tests do.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

from twisted.trial import unittest

import netns

HERE = os.path.dirname(os.path.abspath(__file__))


def alive(pid: int) -> bool:
    """
    Whether C{pid} runs (a zombie, reparented to an init that does not reap,
    has finished).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class OrphanTests(unittest.TestCase):
    def test_orphanProcessesStopped(self):
        """
        A test run killed outright (SIGKILL, a CI job's timeout) cannot clean
        up; the next run deletes its namespaces, and stops the programs
        still running in them (a backend, nginx, HAProxy), which would
        otherwise run on forever in namespaces nobody can name any more.
        """
        script = textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {HERE!r})
            from netns import Network
            net = Network({{"orphan": 9}}).__enter__()
            process = net.start("orphan", "sleeper", ["sleep", "600"])
            print(process.pid, flush=True)
            time.sleep(600)
        """)
        run = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        sleeper = None
        try:
            sleeper = int(run.stdout.readline())
            tag = f"primed{run.pid}"
            run.send_signal(signal.SIGKILL)
            run.wait(10)
            netns._removeOrphans()
            listed = subprocess.run(["ip", "netns", "list"], capture_output=True,
                                    text=True).stdout
            self.assertNotIn(tag, listed)
            deadline = time.monotonic() + 10
            while alive(sleeper) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertFalse(alive(sleeper), "a program of the killed run still runs")
        finally:
            if run.poll() is None:
                run.kill()
                run.wait(10)
            run.stdout.close()
            if sleeper is not None and alive(sleeper):
                os.kill(sleeper, signal.SIGKILL)
            for ns in (f"primed{run.pid}-orphan", f"primed{run.pid}-switch"):
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class DownTests(unittest.TestCase):
    def test_strayProcessesStopped(self):
        """
        Leaving the network stops what runs in its hosts even when it was
        started outside L{netns.Network.start} (a test's client, say) and the
        test failed before stopping it, and deletes every namespace.
        """
        with netns.Network({"stray": 9}) as net:
            stray = subprocess.Popen(net.command("stray", ["sleep", "600"]))
            names = list(net.created)
            # Leave only once it is in its namespace: "ip netns exec" enters
            # it after Popen returns, and one that entered after the network
            # was left would run on (seen under load).
            namespace = net.namespace("stray")
            for _ in range(200):
                pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True,
                                      text=True, timeout=20).stdout.split()
                if str(stray.pid) in pids:
                    break
                time.sleep(0.05)
        try:
            stray.wait(10)
            listed = subprocess.run(["ip", "netns", "list"], capture_output=True,
                                    text=True).stdout
            self.assertEqual([name for name in names if name in listed], [])
        finally:
            if stray.poll() is None:
                stray.kill()
                stray.wait(10)
