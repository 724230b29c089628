"""
The measuring loop of C{udpmicro.py} and C{tcpmicro.py}: a script's
C{--run N} under callgrind, N and 3N times; the difference over 2N rounds
is the user-space instructions one round costs, start-up and imports
cancelling out.
"""

import os
import re
import subprocess
import sys
import tempfile


def _instructions(script, count, extra, source):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        env = dict(os.environ, PYTHONHASHSEED="0")
        if source:
            env["PYTHONPATH"] = source
        argv = [sys.executable, script, "--run", str(count), *extra]
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv],
            env=env, check=True, capture_output=True,
        )
        with open(out) as f:
            return int(re.search(r"^summary: (\d+)", f.read(), re.M).group(1))


def perRound(script, rounds, extra=(), source=None) -> float:
    """
    Instructions per round of C{script --run N *extra}, with C{source} (a
    checkout) first on C{PYTHONPATH} if given.
    """
    low = _instructions(script, rounds, extra, source)
    high = _instructions(script, 3 * rounds, extra, source)
    return (high - low) / (2 * rounds)


def main(script, doc, run, perRead, rounds, report):
    """
    The command line both scripts share: C{--per-read}, C{--rounds},
    C{--source}, C{--raw}, and the hidden C{--run N} that C{perRound} runs
    under callgrind (it calls C{run(N, perRead, raw)}).  C{report(cost,
    perRead)} is the line printed.
    """
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--per-read", type=int, default=perRead)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--source", help="a checkout whose primed/ to import")
    parser.add_argument("--raw", action="store_true")
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run is not None:
        run(args.run, args.per_read, args.raw)
        return 0
    extra = ["--per-read", str(args.per_read)] + (["--raw"] if args.raw else [])
    print(report(perRound(os.path.abspath(script), args.rounds, extra, args.source),
                 args.per_read))
    return 0
