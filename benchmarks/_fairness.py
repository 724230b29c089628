"""
Scenarios V, R and U of C{benchmarks/robustness.py} (issue 21, items 4 and
5): a victim's big check with and without a neighbour flooding the pool.

  V  TCP: a neighbour (127.0.0.2) keeps 40 primes of 3376 digits
     (2**11213 - 1) queued on one connection; the victim (127.0.0.3) asks a
     1332-digit prime (2**4423 - 1), one at a time.  Target: at most 3 times
     one 3376-digit check plus 1 s.  Also the victim alone, and one
     3376-digit check alone (T).
  R  TCP: a neighbour pipelines 40 primes of 3376 digits, resets its
     connection after 1 s with replies unread; the victim's 969-digit prime
     (2**3217 - 1) right after.  Target: at most 3 s.  Also the daemon's CPU
     seconds from the reset to 5 s after the victim's answer: the two checks
     running at the reset, the victim's, and any work done for nobody.
  U  UDP: a neighbour sends 3376-digit primes continuously (50 a second);
     the victim's 1332-digit prime is retried every 2 s (at most 5 tries).
     Target: answered on the first or second try.

Each runs against the primed of this interpreter and, with
C{--baseline-python PYTHON}, against that interpreter's primed too (a
virtualenv of an older commit), one after the other in the same run.
Sources are loopback addresses of their own: Linux routes all of 127/8 to
loopback.
"""

import os
import socket
import struct
import threading
import time

HOST = "127.0.0.1"
HOG_LINE = b"%d\n" % (2**11213 - 1)  # 3376 digits
MID_LINE = b"%d\n" % (2**4423 - 1)  # 1332 digits
SMALL_LINE = b"%d\n" % (2**3217 - 1)  # 969 digits


def connectFrom(source, port, timeout=120.0):
    return socket.create_connection((HOST, port), timeout=timeout, source_address=(source, 0))


def reset(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def timedAsk(source, port, line, timeout=120.0):
    """
    One request on a new connection from C{source}; its reply and seconds.
    """
    with connectFrom(source, port, timeout) as sock:
        start = time.monotonic()
        sock.sendall(line)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = sock.recv(64)
            if not chunk:
                break
            data += chunk
        return data, time.monotonic() - start


class KeepQueued(threading.Thread):
    """
    Keeps C{depth} big primes outstanding on one connection from
    C{source}: one more sent for every reply, until L{stop}.
    """

    def __init__(self, source, port, depth=40):
        threading.Thread.__init__(self, daemon=True)
        self.sock = connectFrom(source, port)
        self.depth = depth
        self.answered = 0
        self.stopped = threading.Event()

    def run(self):
        sock = self.sock
        sock.sendall(HOG_LINE * self.depth)
        sock.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                chunk = sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            if not chunk:
                return
            for _ in range(chunk.count(b"\n")):
                self.answered += 1
                sock.sendall(HOG_LINE)

    def stop(self):
        self.stopped.set()
        self.join(10)
        reset(self.sock)


def servers(args, Primed, extra):
    """
    The daemons to compare: this interpreter's primed, then the baseline's.
    """
    pythons = [("this", None)]
    if args.baseline_python:
        pythons.append(("baseline", args.baseline_python))
    for name, python in pythons:
        daemon = Primed(["--threads", str(args.threads), *extra])
        if python is not None:
            daemon.argv[0] = python
        yield name, daemon


def cpuSeconds(pid):
    """
    User plus system CPU seconds of process C{pid} so far.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median(values):
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def scenarioV(table, args, Primed):
    for name, daemon in servers(args, Primed, []):
        row = f"V TCP victim ({name})"
        with daemon:
            print(f"{row}: {daemon.describe()}", flush=True)
            port = daemon.tcpPort
            checks = [timedAsk("127.0.0.4", port, HOG_LINE)[1] for _ in range(2)]
            check = median(checks)
            alone = [timedAsk("127.0.0.3", port, MID_LINE)[1] for _ in range(3)]
            hog = KeepQueued("127.0.0.2", port)
            hog.start()
            try:
                time.sleep(1.0)  # its 40 sent and its share queued
                flooded, wrong = [], 0
                for _ in range(3 if name == "this" else 1):
                    reply, seconds = timedAsk("127.0.0.3", port, MID_LINE)
                    flooded.append(seconds)
                    wrong += reply != b"T\n"
            finally:
                hog.stop()
        target = 3 * check + 1
        table.add(row, "one 3376-digit check alone (T)", f"{check:.2f} s")
        table.add(row, "victim's 1332-digit, alone: median", f"{median(alone):.3f} s")
        table.add(row, f"victim's 1332-digit, neighbour keeps 40 queued: max of {len(flooded)}",
                  f"{max(flooded):.2f} s ({wrong} wrong; neighbour answered {hog.answered})",
                  f"<= 3T + 1 s = {target:.1f} s", max(flooded) <= target and not wrong)


def scenarioR(table, args, Primed):
    for name, daemon in servers(args, Primed, []):
        row = f"R reset pipeliner ({name})"
        with daemon:
            print(f"{row}: {daemon.describe()}", flush=True)
            port = daemon.tcpPort
            alone = timedAsk("127.0.0.3", port, SMALL_LINE)[1]
            hog = connectFrom("127.0.0.2", port)
            hog.sendall(HOG_LINE * 40)
            time.sleep(1.0)
            before = cpuSeconds(daemon.proc.pid)
            reset(hog)
            reply, seconds = timedAsk("127.0.0.3", port, SMALL_LINE)
            time.sleep(5.0)
            spent = cpuSeconds(daemon.proc.pid) - before
        table.add(row, "victim's 969-digit, alone", f"{alone:.3f} s")
        table.add(row, "victim's 969-digit after the reset", f"{seconds:.2f} s ({reply!r})",
                  "<= 3 s", seconds <= 3 and reply == b"T\n")
        table.add(row, "daemon CPU from the reset to 5 s after the victim's answer",
                  f"{spent:.1f} s", "(the 2 running + the victim's)")


def scenarioU(table, args, Primed):
    for name, daemon in servers(args, Primed, []):
        row = f"U UDP victim ({name})"
        with daemon:
            print(f"{row}: {daemon.describe()}", flush=True)
            target = (HOST, daemon.udpPort)
            alone = udpAsk(target, tries=1)[1]
            stop = threading.Event()
            flooder = threading.Thread(target=flood, args=(target, stop), daemon=True)
            flooder.start()
            try:
                time.sleep(2.0)  # the queue full of the flood's
                results = [udpAsk(target) for _ in range(3 if name == "this" else 1)]
            finally:
                stop.set()
                flooder.join(10)
        table.add(row, "victim's 1332-digit, alone", f"{alone:.3f} s")
        tries = [t for t, _ in results]
        answered = [s for t, s in results if t]
        table.add(row, "victim's 1332-digit under a flood: tries",
                  ", ".join(str(t) if t else "none of 5" for t in tries),
                  "first or second", all(t and t <= 2 for t in tries))
        if answered:
            table.add(row, "  its latency from the first try: max",
                      f"{max(answered):.2f} s")


def flood(target, stop):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.2", 0))
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            sock.sendto(HOG_LINE, target)
            stop.wait(0.02)


def udpAsk(target, tries=5, every=2.0):
    """
    The victim's 1332-digit prime from 127.0.0.3, retried every C{every}
    seconds: on which try it was answered (0: never) and after how long.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.3", 0))
        sock.settimeout(every)
        start = time.monotonic()
        for attempt in range(1, tries + 1):
            sock.sendto(MID_LINE, target)
            try:
                if sock.recvfrom(16)[0] == b"T\n":
                    return attempt, time.monotonic() - start
            except socket.timeout:
                pass
        return 0, time.monotonic() - start


__all__ = ["scenarioV", "scenarioR", "scenarioU"]
