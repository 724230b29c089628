"""
Mutation testing for primed: mutate one module at a time, run that module's
fast unit tests against each mutant, and print the mutants no test noticed.

    .venv/bin/python tests/mutate.py                 # every module below
    .venv/bin/python tests/mutate.py tcp checker     # just these
    .venv/bin/python tests/mutate.py --cache DIR tcp # keep the work in DIR/tcp:
                                                     # run again after adding
                                                     # tests, only survivors rerun

It drives mutmut 2 (the C{dev} extra pins it: C{pip install '.[dev]'}).  mutmut 2 rewrites the
source file in place, so each module is mutated in a throwaway copy of
C{primed/} and C{tests/} under a temporary directory: the working tree is
never touched, and a killed run leaves nothing behind.  The tests import
C{primed} from that copy (C{python -m pytest} puts the current directory
first on C{sys.path}), never the installed package.

Only the unit tests that exercise a module run against its mutants, and not
the slow ones in L{SKIP} (Hypothesis fuzzing is most of a run's time), so one
mutant costs a few seconds; the end-to-end tests would cost minutes each.
A mutant only the fuzzing would kill shows up as a survivor: the fix is a
plain test that pins the behaviour.  Survivors and their diffs go to standard output;
the last line per module is C{MODULE: killed K / total N}.  Timeouts and
"suspicious" (slow but failing) runs count as killed: the tests noticed.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: Module -> the unit tests run against each of its mutants.
#: Too slow to run once per mutant: Hypothesis fuzzing (300 examples a test)
#: and a client test that checks a few 4300-digit numbers for real.  And
#: test_reactor's daemons: they run the installed package, never the mutant
#: (seconds each, killing nothing).
SKIP = "not FuzzTests and not test_orderWithBigAndSmall and not DaemonReactorTests"

#: Seconds after which a mutant's test run counts as hung (killed): dozens
#: of times an unmutated run on a loaded machine.
HANG = 60

#: test_tap checks the documented defaults, which live in these modules;
#: test_counters checks what the TCP and UDP protocols count.
MODULES = {
    "wire": ["tests/test_wire.py", "tests/test_udp.py"],
    "tcp": ["tests/test_tcp.py", "tests/test_tcpreads.py", "tests/test_counters.py",
            "tests/test_tap.py", "tests/test_poolfairness.py"],
    "tcpreads": ["tests/test_tcpreads.py", "tests/test_tcp.py", "tests/test_counters.py"],
    "tcpfactory": ["tests/test_tcp.py", "tests/test_counters.py", "tests/test_tap.py",
                   "tests/test_sourcelimits.py"],
    "sources": ["tests/test_sources.py", "tests/test_sourcelimits.py"],
    "ratelog": ["tests/test_ratelog.py"],
    "udp": ["tests/test_udp.py", "tests/test_udpread.py", "tests/test_counters.py",
            "tests/test_poolfairness.py"],
    "reactor": ["tests/test_reactor.py", "tests/test_udpread.py"],
    "checker": ["tests/test_checker.py", "tests/test_poolfairness.py", "tests/test_service.py",
                "tests/test_tap.py"],
    "fairqueue": ["tests/test_fairqueue.py", "tests/test_poolfairness.py", "tests/test_checker.py"],
    "service": ["tests/test_service.py", "tests/test_tap.py"],
    "client/__init__": ["tests/test_client.py"],
    "client/tcp": ["tests/test_client_tcp.py"],
    "client/tls": ["tests/test_client_tls.py"],
    "client/base": ["tests/test_client_base.py", "tests/test_client_tcp.py",
                    "tests/test_client_udp.py"],
    "client/io": ["tests/test_client_io.py", "tests/test_client_cmd.py"],
    "client/cmd": ["tests/test_client_cmd.py"],
    "client/udp": ["tests/test_client_udp.py"],
    "client/progress": ["tests/test_client_progress.py", "tests/test_client_cmd.py"],
    "certreload": ["tests/test_certreload.py"],
    "healthcheck": ["tests/test_healthcheck.py"],
    "jsonlog": ["tests/test_jsonlog.py"],
}


def mutate(module, tests, cache=None):
    """
    Mutate C{primed/MODULE.py}, run C{tests} against each mutant, print the
    survivors, and return C{(killed, total)}.

    @param cache: a directory to keep the work in.  Run again with the same
        one after adding tests, and only the mutants that survived last time
        are tested again (mutmut keeps killed ones killed).
    """
    if cache:
        work = os.path.join(os.path.abspath(cache), module)
        os.makedirs(work, exist_ok=True)
    else:
        work = tempfile.mkdtemp(prefix=f"primed-mutate-{module.replace('/', '.')}-")
    try:
        for name in ("primed", "tests", "twisted", "docs"):
            shutil.rmtree(os.path.join(work, name), ignore_errors=True)
            shutil.copytree(
                os.path.join(ROOT, name),
                os.path.join(work, name),
                ignore=shutil.ignore_patterns("__pycache__", ".hypothesis"),
            )
        # Some tests check the docs' figures, test_healthcheck the Containerfile.
        for name in ("setup.cfg", "README.rst", "Containerfile"):
            shutil.copy(os.path.join(ROOT, name), work)
        python = sys.executable
        # mutmut 2 takes any exit status but 1 for a pass: a mutant that
        # breaks an import (pytest exits 2) would survive.  -B: mutants of
        # the same size written within a second must not share bytecode.
        # timeout: mutmut's own never fires while the tests print nothing,
        # and a mutant that loops forever would stop the run; -k: a KILL
        # after the TERM, which a test's reactor may catch and then never
        # stop (seen in reactor: a pytest left behind for 20 minutes).
        # Output is dropped: it is never shown.
        with open(os.path.join(work, "run-tests"), "w") as script:
            script.write(f"timeout -k 10 {HANG} {python} -B -m pytest -x -q -k '{SKIP}' "
                         f"{' '.join(tests)} >/dev/null 2>&1 || exit 1\n")
        runner = "sh run-tests"
        subprocess.run(
            [python, "-m", "mutmut", "run",
             "--paths-to-mutate", f"primed/{module}.py",
             "--tests-dir", "tests",
             "--runner", runner,
             # Never mutmut's own timeout: killing a slow run hangs mutmut 2
             # (seen on a loaded machine); run-tests' timeout does it.
             "--test-time-base", str(2 * HANG),
             "--simple-output", "--no-progress", "--CI"],
            cwd=work, check=True, stdout=subprocess.DEVNULL,
        )
        xml = subprocess.run(
            [python, "-m", "mutmut", "junitxml", "--untested-policy", "failure"],
            cwd=work, check=True, capture_output=True, text=True,
        ).stdout
    finally:
        if not cache:
            shutil.rmtree(work, ignore_errors=True)
    cases = ElementTree.fromstring(xml).iter("testcase")
    total = killed = 0
    for case in cases:
        total += 1
        failure = case.find("failure")
        if failure is None:
            killed += 1
            continue
        status = failure.get("message")  # bad_survived, or untested
        print(f"--- {module} {status} {case.get('name')} (line {case.get('line')})")
        print(failure.text)
    print(f"{module}: killed {killed} / total {total}", flush=True)
    return killed, total


def main(argv):
    cache = None
    if argv[:1] == ["--cache"]:
        cache, argv = argv[1], argv[2:]
    names = argv or list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        sys.exit(f"unknown module(s) {unknown}; choose from {list(MODULES)}")
    scores = {name: mutate(name, MODULES[name], cache) for name in names}
    print("\nscore (killed / total):")
    for name, (killed, total) in scores.items():
        print(f"  {name:10} {killed:4} / {total}")


if __name__ == "__main__":
    main(sys.argv[1:])
