"""
The measuring machinery that C{load.py} and its C{--metrics} comparison
(C{_metricscost.py}) share, and that C{callgrind.py} and the micro
benchmarks reuse: the scenarios, the request pool, one measured run, the
interleaved series of runs, and how runs are compared (best, leanest).
Its own module so that none of those imports another script: C{load.py}
imports C{_metricscost} for C{--metrics}, which needs these.
"""

import multiprocessing
import random
import time

try:
    from benchmarks import _loadgen, _servers
except ImportError:  # run as a script: benchmarks/ is sys.path[0]
    import _loadgen
    import _servers


def percentile(values, fraction):
    """
    The value below which C{fraction} of C{values} lie (nearest rank); NaN
    for none.
    """
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def ms(seconds):
    return f"{seconds * 1000:.1f} ms"


class Scenario:
    """
    One load shape: C{connections} TCP connections (or UDP sockets), each
    with C{depth} requests in flight; with C{bigEvery}, every C{bigEvery}-th
    request of a connection is a big prime.
    """

    def __init__(self, key, title, kind, connections, depth=1, bigEvery=0, target=None):
        self.key = key
        self.title = title
        self.kind = kind
        self.connections = connections
        self.depth = depth
        self.bigEvery = bigEvery
        #: (what, comparison) for the table, e.g. ("ratio", 0.95).
        self.target = target


SCENARIOS = {
    s.key: s
    for s in [
        Scenario("a", "50 conns x 1", "tcp", 50, target=("ratio", 0.95)),
        Scenario("b", "50 conns x 16", "tcp", 50, depth=16, target=("ratio", 0.8)),
        Scenario("c", "1 conn x 1", "tcp", 1),
        Scenario("d", "UDP 10 x 5", "udp", 10, depth=5, target=("ratio", 0.9)),
        Scenario("e", "mix 1/20 big", "tcp", 50, bigEvery=20, target=("p99", 10.0)),
    ]
}

#: Seconds between starting the workers and the measured window: forking,
#: connecting and warming up both ends.
WARMUP = 1.0


#: The small requests' mixes (C{load.py --mix}): C{quarter}, 20-digit
#: numbers below 2**64, one in four prime; C{odd64}, uniformly random odd
#: 64-bit numbers (2**63 to 2**64), about one in 22 prime.
MIXES = ("quarter", "odd64")


def makeRequests(seed=8, count=4096, bigCount=2, mix="quarter"):
    """
    The request pool: C{count} small numbers of the C{mix} (L{MIXES}), and
    C{bigCount} 1000-digit primes (about 1.5 s each to find).
    """
    import gmpy2

    if mix not in MIXES:
        raise ValueError(f"unknown mix {mix!r}")
    rng = random.Random(seed)
    small = []
    while len(small) < count:
        if mix == "odd64":
            small.append(rng.randrange(2**63, 2**64) | 1)
            continue
        n = rng.randrange(10**19, 2**64)
        if len(small) % 4 == 0:
            n = int(gmpy2.next_prime(n))
            if n >= 2**64:
                continue
        small.append(n)
    big = [int(gmpy2.next_prime(rng.randrange(10**999, 10**1000))) for _ in range(bigCount)]
    return _loadgen.Requests(small, big)


def _worker(pipe, scenario, port, connections, requests, startAt, endAt):
    """
    One generator process: run the scenario, send the result dict (or the
    error's text) back through C{pipe}.
    """
    try:
        if scenario.kind == "udp":
            result = _loadgen.runUDP(
                _servers.HOST, port, connections, scenario.depth, requests, startAt, endAt
            )
        else:
            result = _loadgen.runTCP(
                _servers.HOST,
                port,
                connections,
                scenario.depth,
                requests,
                startAt,
                endAt,
                scenario.bigEvery,
            )
    except BaseException as e:
        result = {"error": f"{type(e).__name__}: {e}"}
    pipe.send(result)
    pipe.close()


def runOnce(server, scenario, requests, duration, generators):
    """
    One measured run of C{scenario} against C{server}, with its connections
    split over C{generators} processes.

    @return: a dict of figures for the table.
    """
    ctx = multiprocessing.get_context("fork")
    generators = max(1, min(generators, scenario.connections))
    split = [scenario.connections // generators] * generators
    for i in range(scenario.connections % generators):
        split[i] += 1
    port = server.udpPort if scenario.kind == "udp" else server.tcpPort
    startAt = time.monotonic() + WARMUP
    endAt = startAt + duration
    workers = []
    try:
        for connections in split:
            ours, theirs = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_worker,
                args=(theirs, scenario, port, connections, requests, startAt, endAt),
                daemon=True,
            )
            proc.start()
            theirs.close()
            workers.append((proc, ours))
        time.sleep(max(0.0, startAt - time.monotonic()))
        serverCpu = server.cpuSeconds()
        busy = _servers.machineBusySeconds()
        time.sleep(max(0.0, endAt - time.monotonic()))
        serverCpu = server.cpuSeconds() - serverCpu
        busy = _servers.machineBusySeconds() - busy
        results = []
        for proc, pipe in workers:
            if not pipe.poll(max(1.0, endAt + 30 - time.monotonic())):
                raise RuntimeError("a load generator did not report")
            results.append(pipe.recv())
            proc.join(5)
    finally:
        for proc, pipe in workers:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            pipe.close()
    for result in results:
        if "error" in result:
            raise RuntimeError(f"load generator against {server.name}: {result['error']}")
    return _summarize(server.name, scenario, duration, results, serverCpu, busy)


def _summarize(name, scenario, duration, results, serverCpu, busy):
    hist, bigHist = {}, {}
    for result in results:
        for merged, part in ((hist, result["hist"]), (bigHist, result["bigHist"])):
            for key, count in part.items():
                merged[key] = merged.get(key, 0) + count
    completed = sum(r["completed"] for r in results)
    generatorCpu = sum(r["cpu"] for r in results)
    return {
        "server": name,
        "scenario": scenario.key,
        "rps": completed / duration,
        "p50": _loadgen.percentile(hist, 0.50),
        "p99": _loadgen.percentile(hist, 0.99),
        "bigP50": _loadgen.percentile(bigHist, 0.50),
        "bigP99": _loadgen.percentile(bigHist, 0.99),
        "bigCount": sum(bigHist.values()),
        "errors": sum(r["errors"] for r in results),
        "lost": sum(r["lost"] for r in results),
        "serverCpuPerRequest": serverCpu / completed * 1e6 if completed else None,
        "serverCores": serverCpu / duration,
        "generatorCores": generatorCpu / duration,
        "generatorCpuPerRequest": generatorCpu / completed * 1e6 if completed else None,
        # Cores busy with anything else: other people's work on a shared
        # machine, and kernel time not charged to either process.
        "otherCores": max(0.0, busy - serverCpu - generatorCpu) / duration,
    }


def interleave(servers, repeat):
    """
    The order of runs: forwards, then backwards, and so on (A B B A A B ...),
    so that a trend in the machine's load favours no server.
    """
    order = []
    for i in range(repeat):
        order.extend(servers if i % 2 == 0 else servers[::-1])
    return order


def best(runs):
    """
    The run with the most requests/s: noise on a shared machine only ever
    slows a run down.
    """
    return max(runs, key=lambda r: r["rps"])


def measure(servers, scenarios, requests, args, log):
    """
    Run every scenario against every server, interleaved.

    @return: C{{scenarioKey: {serverName: [run, ...]}}}.
    """
    table = {}
    for scenario in scenarios:
        runs = table.setdefault(scenario.key, {s.name: [] for s in servers})
        for server in interleave(servers, args.repeat):
            if not server.alive():
                raise RuntimeError(f"{server.name} died:\n{server.outputTail()}")
            _servers.waitForQuiet(args.quiet_wait)
            run = runOnce(server, scenario, requests, args.duration, args.generators)
            runs[server.name].append(run)
            log(_describe(scenario, run))
    return table


def _ms(value):
    return "-" if value is None else f"{value:.2f}"


def _us(value):
    return "-" if value is None else f"{value:.1f}"


def _describe(scenario, run):
    text = (
        f"  ({scenario.key}) {run['server']:<11} {run['rps']:>10,.0f} req/s  "
        f"p50 {_ms(run['p50'])} p99 {_ms(run['p99'])} ms  "
        f"server {_us(run['serverCpuPerRequest'])} us/req  "
        f"generator {run['generatorCores']:.2f} other {run['otherCores']:.2f} cores"
    )
    if run["bigCount"]:
        text += f"  big: {run['bigCount']} p50 {_ms(run['bigP50'])} p99 {_ms(run['bigP99'])} ms"
    if run["errors"] or run["lost"]:
        text += f"  errors {run['errors']} lost {run['lost']}"
    return text


def leanest(runs):
    """
    The least server CPU time per request over C{runs}: contention for the
    cores (caches, hyperthreads) only ever adds to it.
    """
    values = [r["serverCpuPerRequest"] for r in runs if r["serverCpuPerRequest"]]
    return min(values) if values else None


def _cpuRatio(primedRuns, ceilingRuns):
    """
    The ceiling's server CPU time per request over primed's: the ratio the
    throughputs would have if both servers had a core to themselves.  It
    moves much less than requests/s when other work shares the machine.
    """
    p, c = leanest(primedRuns), leanest(ceilingRuns)
    return c / p if p and c else None


def _errorLines(runs):
    """
    A line counting the errors and lost replies of a scenario's runs, if any.
    """
    errors = sum(r["errors"] + r["lost"] for rs in runs.values() for r in rs)
    return [f"    errors or lost replies over all runs: {errors}"] if errors else []
