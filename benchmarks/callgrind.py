"""
User-space instructions per request, counted by callgrind: the steady
figure on a shared machine, where CPU time moves with others' work.

    python benchmarks/callgrind.py --server primed --scenarios ab
    python benchmarks/callgrind.py --server uvloop --scenarios ab --duration 20

The server (primed under C{twistd -n}, a peer, or the ceiling) runs under
C{valgrind --tool=callgrind}; once its connections are up and warm, its
counters are zeroed (C{callgrind_control -z}), the load generator of
C{load.py} runs for C{--duration} seconds, and the counters are dumped
(C{callgrind_control -d}).  Instructions in the dump over the replies the
generator received in that window is the figure printed.  Under valgrind
the server runs about 50 times slower, so the shapes of reads differ a
little from a native run (a slow server sees fuller reads in (b)); compare
servers with each other, measured the same way, not with native runs.
The dumps stay in C{--keep DIR} if given, for C{callgrind_annotate}.
"""

import argparse
import glob
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _servers  # noqa: E402
import _measure  # noqa: E402

#: Seconds the generator runs before the window: connect and warm up.
WARMUP = 8.0

_TOTALS = re.compile(rb"^(?:totals|summary):\s+(\d+)", re.M)


def _valgrindSpawn(outDir):
    """
    L{_servers.Server._spawn}, with the server's command under callgrind.
    """
    spawn = _servers.Server._spawn

    def _spawn(self, argv, env=None):
        argv = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={outDir}/callgrind.out.%p",
            *argv,
        ]
        return spawn(self, argv, env)

    return _spawn


def _dumpedInstructions(outDir, pid):
    """
    The instruction total of the newest dump of C{pid} (C{callgrind.out.PID.N}).
    """
    dumps = glob.glob(f"{outDir}/callgrind.out.{pid}.*")
    newest = max(dumps, key=lambda p: int(p.rsplit(".", 1)[1]))
    with open(newest, "rb") as f:
        return int(_TOTALS.search(f.read()).group(1))


def measure(server, scenario, requests, duration, outDir):
    """
    One window of C{scenario} against C{server}.

    @return: (replies in the window, instructions in the window).
    """
    [pid] = server.pids
    ctx = multiprocessing.get_context("fork")
    startAt = time.monotonic() + WARMUP
    endAt = startAt + duration
    port = server.udpPort if scenario.kind == "udp" else server.tcpPort
    ours, theirs = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_measure._worker,
        args=(theirs, scenario, port, scenario.connections, requests, startAt, endAt),
        daemon=True,
    )
    proc.start()
    theirs.close()
    try:
        time.sleep(max(0.0, startAt - time.monotonic()))
        subprocess.run(["callgrind_control", "-z", str(pid)], check=True,
                       capture_output=True)
        time.sleep(max(0.0, endAt - time.monotonic()))
        subprocess.run(["callgrind_control", "-d", str(pid)], check=True,
                       capture_output=True)
        if not ours.poll(60):
            raise RuntimeError("the load generator did not report")
        result = ours.recv()
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.terminate()
    if "error" in result:
        raise RuntimeError(result["error"])
    return result["completed"], _dumpedInstructions(outDir, pid)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="primed",
                        help="primed, c, uvloop, asyncio or ceiling")
    parser.add_argument("--scenarios", default="ab")
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--keep", help="a directory to keep the dumps in")
    parser.add_argument("--primed-arg", action="append", default=[])
    args = parser.parse_args(argv)
    outDir = args.keep or tempfile.mkdtemp(prefix="primed-callgrind-")
    os.makedirs(outDir, exist_ok=True)
    requests = _measure.makeRequests()
    _servers.Server._spawn = _valgrindSpawn(outDir)
    waitFor = _servers.Server._waitFor
    _servers.Server._waitFor = lambda self, proc, log, patterns, timeout=30.0: waitFor(
        self, proc, log, patterns, 300.0
    )
    if args.server == "primed":
        server = _servers.startPrimed(extra=args.primed_arg)
    elif args.server == "ceiling":
        server = _servers.startCeiling()
    else:
        server = _servers.startPeer(args.server)
    try:
        for key in args.scenarios:
            scenario = _measure.SCENARIOS[key]
            replies, instructions = measure(server, scenario, requests, args.duration, outDir)
            print(f"({key}) {args.server}: {replies} replies, "
                  f"{instructions / max(1, replies):,.0f} instructions per request",
                  flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
