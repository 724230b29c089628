"""
Loopback load benchmark: primed against the bare Twisted ceiling, or against
peers doing primed's job in asyncio, uvloop and C, side by side in one run.

    python benchmarks/load.py [--duration 4] [--repeat 3] [--scenarios abcde]
                              [--generators 1] [--processes 2] [--json FILE]
                              [--metrics]
                              [--against ceiling|all|c,uvloop,asyncio,ceiling,epoll,prove]
                              [--baseline-python OTHER_VENV/bin/python]

It starts primed (C{twistd -n primed} on port 0, ports read from its log)
and C{benchmarks/ceiling.py}, then runs every scenario against both,
interleaved (ceiling, primed, primed, ceiling, ...) so that the machine's
noise hits both alike, and prints one table: requests/s, p50/p99 latency,
the server's CPU time per request and the generator's CPU use.  Only ratios
from one run mean anything on a shared machine.

Two ratios are printed.  C{ratio} is primed's requests/s over the
ceiling's, best run of each (noise only ever slows a run down).  C{cpu ratio}
is the ceiling's server CPU time per request over primed's, least of each:
what the throughput ratio would be if each server had a core to itself, and
much steadier when other people's work shares the machine.  C{srv cores}
near 1.0 means the server, not the generator, set the pace.  C{other cores}
is the machine's busy time that neither the server nor the generator used:
when it is high, requests/s figures are the other work's, not ours.  Before
each run the suite waits (C{--quiet-wait}, bounded) for the machine to idle.

Scenarios:
  a  50 connections, one request in flight each
  b  50 connections, 16 requests pipelined each
  c  one connection, one request in flight
  d  UDP: 10 sockets, 5 datagrams in flight each
  e  like (a), but 1 request in 20 is a 1000-digit prime; p99 is the small
     requests' (the ceiling answers those at once, so only latency matters)

Small requests come from one of two mixes (C{--mix}), both 64-bit numbers:
C{quarter} (the default), 20-digit numbers below 2**64, one in four of them
prime (primes are the costly case: a full check, where most composites fall
to a small factor); C{odd64}, uniformly random odd numbers of 64 bits
(2**63 to 2**64), about one in 22 prime, what a client asking about
arbitrary numbers sends.  Say which mix a figure comes from.

With C{--processes N} it also runs scenario (b) against N primed processes
sharing one port (C{--reuseport}) and N ceilings likewise, next to one of
each: the two-core figure.  The load generator shares the cores with the
servers, so its CPU use is printed beside it.

With C{--metrics} it measures something else: the cost of C{--metrics}.
It starts two primed processes, one plain and one with C{--metrics} whose
C{/metrics} page is scraped every second during every run (as Prometheus
would, a little more often than usual), runs the chosen scenarios against
both, interleaved, and prints on/off ratios of requests/s and of CPU time per
request (the ceiling is not run).  The request path counts whether or not
C{--metrics} is given; C{--baseline-python PYTHON} adds a third server, the
primed installed for that interpreter (a virtualenv of a commit without the
counters), and the ratios against it: the whole cost.

With C{--against} (C{all}, or a comma-separated list of C{c}, C{uvloop},
C{asyncio}, C{ceiling}) primed is measured against each peer in
C{benchmarks/peers/} (every peer first has to give primed's reply to a set
of edge-case requests), and one table per scenario gives each server's
requests/s, CPU time per request, C{cpu ratio} (the peer's CPU per request
over primed's: at least 1 means primed is the more efficient) and p50/p99.
C{--against baseline --baseline-python PYTHON} measures primed against
that interpreter's primed alone (another commit's), no peer: its C{cpu
ratio} is the cost of the change, side by side in one run.
C{--against prove} runs primed with C{--prove} (no proof running) beside
it, and C{--baseline-python} another commit's primed: what C{--prove}, or
the code behind it, costs requests that need no proof (scenarios a-d; in
(e) C{--prove} answers E for the 1000-digit primes, over its 600 digits).

Every process started here is stopped before exit, whatever happens.
"""

import argparse
import json
import multiprocessing
import sys

try:
    from benchmarks import _conformance, _servers
    from benchmarks._measure import (
        MIXES, SCENARIOS, _cpuRatio, _errorLines, _ms, _us, best, leanest, makeRequests, measure,
    )
except ImportError:  # run as a script: benchmarks/ is sys.path[0]
    import _conformance
    import _servers
    from _measure import (
        MIXES, SCENARIOS, _cpuRatio, _errorLines, _ms, _us, best, leanest, makeRequests, measure,
    )


def formatTable(table, scenarios, primed="primed", ceiling="ceiling"):
    """
    The main results table, one row per scenario, best runs compared.
    C{p/c} columns give primed's figure, then the ceiling's.
    """
    header = (
        "scenario          primed req/s  ceiling req/s  ratio  target           cpu ratio  "
        "primed p50/p99 ms  ceiling p50/p99 ms  server us/req p/c  "
        "srv cores p/c  gen cores p/c  other cores p/c"
    )
    lines = [header, "-" * len(header)]
    for scenario in scenarios:
        runs = table[scenario.key]
        p, c = best(runs[primed]), best(runs[ceiling])
        ratio = p["rps"] / c["rps"] if c["rps"] else 0.0
        target = ""
        if scenario.target:
            what, bound = scenario.target
            if what == "ratio":
                target = f">= {bound:<4}     {'ok' if ratio >= bound else 'MISS'}"
            else:
                ok = p["p99"] is not None and p["p99"] <= bound
                target = f"p99 <= {bound:g} ms {'ok' if ok else 'MISS'}"
        # In the mix, throughput is bound by the big checks: no ratio.
        ratioText = "    -" if scenario.bigEvery else f"{ratio:5.2f}"
        cpuRatio = _cpuRatio(runs[primed], runs[ceiling])
        cpuText = "-" if scenario.bigEvery or cpuRatio is None else f"{cpuRatio:.2f}"
        lines.append(
            f"({scenario.key}) {scenario.title:<13} {p['rps']:>12,.0f}  {c['rps']:>13,.0f}"
            f"  {ratioText}  {target:<15}  {cpuText:>9}  "
            f"{_ms(p['p50']):>8}/{_ms(p['p99']):<8}  {_ms(c['p50']):>8}/{_ms(c['p99']):<9}  "
            f"{_us(leanest(runs[primed])):>8}/{_us(leanest(runs[ceiling])):<8}  "
            f"{p['serverCores']:>6.2f}/{c['serverCores']:<6.2f}  "
            f"{p['generatorCores']:>6.2f}/{c['generatorCores']:<6.2f}  "
            f"{p['otherCores']:>7.2f}/{c['otherCores']:.2f}"
        )
        if p["bigCount"]:
            lines.append(
                f"    primed: p50/p99 above are the small requests'; "
                f"{p['bigCount']} big ones answered, "
                f"p50 {_ms(p['bigP50'])} ms, p99 {_ms(p['bigP99'])} ms"
            )
        lines += _errorLines(runs)
    return "\n".join(lines)


#: Peers C{--against all} measures, and primed's target against each as a
#: cpu ratio (peer CPU per request over primed's) in (a), (b) and (d).
PEERS = {"c": 0.8, "uvloop": 1.0, "asyncio": None, "ceiling": None}
#: Also accepted by C{--against}: primed itself under Twisted's stock epoll
#: reactor (C{twistd --reactor=epoll}), to see what primed's reactor buys.
VARIANTS = {"epoll": "epoll"}
#: Also accepted by C{--against}: primed with more options, e.g. C{prove}
#: (C{--prove}, no proof running: small numbers must cost what they cost
#: without it).
OPTION_VARIANTS = {"prove": ["--prove"]}
#: The scenarios those targets apply to.
PEER_TARGET_SCENARIOS = "abd"


def formatPeersTable(table, scenarios, names, primed="primed"):
    """
    One block per scenario, one row per server: requests/s, server CPU time
    per request (least of the runs), cpu ratio against primed (the peer's
    CPU per request over primed's, so at least 1 means primed is the more
    efficient) with its target, p50/p99, and the cores used.
    """
    header = (
        "server         req/s  srv us/req  cpu ratio  target       p50/p99 ms      "
        "srv cores  gen cores  other cores"
    )
    lines = []
    for scenario in scenarios:
        runs = table[scenario.key]
        lines += ["", f"({scenario.key}) {scenario.title}", header, "-" * len(header)]
        mine = leanest(runs[primed])
        for name in [primed] + [n for n in names if n != primed]:
            r = best(runs[name])
            cost = leanest(runs[name])
            ratio = cost / mine if cost and mine and not scenario.bigEvery else None
            target = ""
            bound = PEERS.get(name)
            if name == primed and scenario.target and scenario.target[0] == "p99":
                ok = r["p99"] is not None and r["p99"] <= scenario.target[1]
                target = f"p99<={scenario.target[1]:g} {'ok' if ok else 'MISS'}"
            elif bound and scenario.key in PEER_TARGET_SCENARIOS and ratio is not None:
                target = f">={bound:<4} {'ok' if ratio >= bound else 'MISS'}"
            lines.append(
                f"{name:<12} {r['rps']:>9,.0f}  {_us(cost):>10}  "
                f"{'-' if ratio is None else f'{ratio:.2f}':>9}  {target:<12} "
                f"{_ms(r['p50']):>6}/{_ms(r['p99']):<8} "
                f"{r['serverCores']:>9.2f}  {r['generatorCores']:>9.2f}  "
                f"{r['otherCores']:>11.2f}"
            )
            if r["bigCount"]:
                lines.append(
                    f"         (small requests' p50/p99; {r['bigCount']} big ones, "
                    f"p50 {_ms(r['bigP50'])} p99 {_ms(r['bigP99'])} ms)"
                )
        lines += _errorLines(runs)
    return "\n".join(lines)


def formatProcessesTable(table, names):
    """
    Scenario (b) against one and N processes of each server.
    """
    header = (
        "server          req/s  vs x1  p50/p99 ms      server cores  gen cores  "
        "gen us/req  other cores"
    )
    lines = [header, "-" * len(header)]
    runs = table["b"]
    for name in names:
        r = best(runs[name])
        base = best(runs[name.split(" ")[0]])
        lines.append(
            f"{name:<11} {r['rps']:>10,.0f}  {r['rps'] / base['rps']:5.2f}  "
            f"{_ms(r['p50']):>6}/{_ms(r['p99']):<8}  {r['serverCores']:12.2f}  "
            f"{r['generatorCores']:9.2f}  {_us(r['generatorCpuPerRequest']):>10}  "
            f"{r['otherCores']:11.2f}"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run (4)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per server and scenario (3)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=5.0,
        help="before each run, wait up to this many seconds for the machine to go idle (5)",
    )
    parser.add_argument("--scenarios", default="abcde", help="which scenarios (abcde)")
    parser.add_argument(
        "--mix", choices=MIXES, default="quarter",
        help="the small requests: quarter (one in four prime) or odd64 (random odd 64-bit)",
    )
    parser.add_argument(
        "--generators", type=int, default=1, help="load-generator processes (1)"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="also run (b) against this many primed processes on one port",
    )
    parser.add_argument(
        "--primed-arg",
        action="append",
        default=[],
        help="extra option for every primed process (repeatable), e.g. --primed-arg=--threads=4",
    )
    parser.add_argument(
        "--against",
        default="ceiling",
        help="servers to compare primed with: 'all', or a comma-separated list of "
        + ", ".join(PEERS) + " (ceiling); 'epoll' adds primed on Twisted's epoll reactor",
    )
    parser.add_argument("--json", help="also write every run's figures to this file")
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="compare primed with and without --metrics (scraped every second) instead",
    )
    parser.add_argument(
        "--baseline-python",
        help="also run the primed installed for this interpreter (with --metrics, or "
        "as 'baseline' next to --against's peers: another commit's cpu ratio)",
    )
    args = parser.parse_args(argv)
    against = list(PEERS) if args.against == "all" else args.against.split(",")
    if set(against) - set(PEERS) - set(VARIANTS) - set(OPTION_VARIANTS) - {"baseline"} \
            or not against:
        parser.error(f"--against: choose from all, baseline, "
                     f"{', '.join([*PEERS, *VARIANTS, *OPTION_VARIANTS])}")
    if "baseline" in against and not args.baseline_python:
        parser.error("--against baseline needs --baseline-python")
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {''.join(sorted(unknown))}")
    scenarios = [SCENARIOS[k] for k in sorted(set(args.scenarios))]

    def log(text):
        print(text, file=sys.stderr, flush=True)

    log("preparing requests ...")
    log(f"small requests: the {args.mix} mix")
    requests = makeRequests(mix=args.mix)
    if args.metrics:
        try:
            from benchmarks import _metricscost
        except ImportError:
            import _metricscost

        table = _metricscost.measureMetrics(scenarios, requests, args, log)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "metrics": table}, f, indent=1)
        return 0
    servers = []
    output = {"args": vars(args), "main": None, "processes": None}
    try:
        if against == ["ceiling"]:
            servers.append(_servers.startCeiling())
        servers.append(_servers.startPrimed(extra=args.primed_arg))
        if against != ["ceiling"]:
            for name in against:
                if name == "baseline":
                    continue  # started below
                if name == "ceiling":
                    peer = _servers.startCeiling()
                elif name in OPTION_VARIANTS:
                    peer = _servers.startPrimed(
                        extra=args.primed_arg + OPTION_VARIANTS[name], name=f"primed/{name}"
                    )
                elif name in VARIANTS:
                    peer = _servers.startPrimed(
                        extra=args.primed_arg, reactor=VARIANTS[name], name=f"primed/{name}"
                    )
                else:
                    peer = _servers.startPeer(name)
                servers.append(peer)
                if name in PEERS and name != "ceiling":
                    problems = _conformance.check(_servers.HOST, peer.tcpPort, peer.udpPort)
                    if problems:
                        raise RuntimeError(f"{name} does not do primed's job:\n"
                                           + "\n".join(problems))
        if args.baseline_python and against != ["ceiling"]:
            servers.append(_servers.startPrimed(
                extra=args.primed_arg, python=args.baseline_python, name="baseline"))
        log(", ".join(f"{s.name} on {s.tcpPort}/{s.udpPort}" for s in servers))
        table = measure(servers, scenarios, requests, args, log)
        output["main"] = table
        cores = multiprocessing.cpu_count()
        print(f"\nmachine: {cores} cores; {args.duration:g} s per run, best of "
              f"{args.repeat}; {args.generators} generator process(es); {args.mix} mix\n")
        if against == ["ceiling"]:
            print(formatTable(table, scenarios))
        else:
            print(formatPeersTable(table, scenarios, [s.name for s in servers]))
        sys.stdout.flush()

        if args.processes > 1 and against == ["ceiling"]:
            n = args.processes
            try:
                servers.append(_servers.startPrimed(n, extra=args.primed_arg))
            except _servers.ServerError as e:
                print(f"\nprimed x{n} did not start (is --reuseport there yet?):\n{e}")
                return 1
            servers.append(_servers.startCeiling(n))
            order = [servers[1], servers[2], servers[0], servers[3]]
            table = measure(order, [SCENARIOS["b"]], requests, args, log)
            output["processes"] = table
            print(f"\n(b) with {n} server processes on one port (SO_REUSEPORT):\n")
            print(formatProcessesTable(table, [s.name for s in order]))
    finally:
        for server in servers:
            server.stop()
        if args.json:
            with open(args.json, "w") as f:
                json.dump(output, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
