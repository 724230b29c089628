"""
C{load.py --metrics}: the cost of C{--metrics}, measured with load.py's own
machinery.  Plain primed against primed with C{--metrics} scraped every
second (and, with C{--baseline-python}, the primed of another virtualenv),
interleaved; the table gives on/off ratios of requests/s and of server CPU
time per request.  Kept apart so that load.py stays readable.
"""

import multiprocessing
import re
import threading
import urllib.request

try:
    from benchmarks import _servers
    from benchmarks._measure import _cpuRatio, _us, best, leanest, measure
except ImportError:  # run as a script: benchmarks/ is sys.path[0]
    import _servers
    from _measure import _cpuRatio, _us, best, leanest, measure

_METRICS = re.compile(rb"Serving metrics on (http://[0-9.]+:\d+/metrics)")


class Scraper:
    """
    Scrape C{url} every C{interval} seconds in a thread until stopped, like
    Prometheus; counts scrapes and errors.
    """

    def __init__(self, url, interval=1.0):
        self.url = url
        self.interval = interval
        self.scrapes = 0
        self.errors = 0
        self.bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    self.bytes = len(response.read())
                self.scrapes += 1
            except OSError:
                self.errors += 1

    def stop(self):
        self._stop.set()
        self._thread.join(10)


def startPrimedWithMetrics(extra):
    """
    primed with C{--metrics} on a port 0 of its own.

    @return: C{(server, url)}.
    """
    server = _servers.startPrimed(
        extra=[*extra, "--metrics", f"tcp:0:interface={_servers.HOST}"], name="primed+metrics"
    )
    try:
        [match] = server._waitFor(server._procs[0], server._logs[0], [_METRICS])
    except BaseException:
        server.stop()
        raise
    return server, match.group(1).decode()


def formatMetricsTable(table, scenarios, on="primed+metrics", off="primed"):
    """
    Scenario by scenario: metrics on over off, requests/s (best runs) and
    CPU time per request (leanest runs, off over on: above 1 means cheaper).
    """
    header = (
        f"on: {on}, off: {off}\n"
        "scenario          off req/s     on req/s  ratio   off us/req  on us/req  "
        "cpu ratio  target (cpu ratio)"
    )
    lines = [header, "-" * len(header.split("\n")[-1])]
    for scenario in scenarios:
        runs = table[scenario.key]
        p, c = best(runs[on]), best(runs[off])
        ratio = p["rps"] / c["rps"] if c["rps"] else 0.0
        cpuRatio = _cpuRatio(runs[on], runs[off])
        ok = cpuRatio is not None and cpuRatio >= 0.97
        lines.append(
            f"({scenario.key}) {scenario.title:<13} {c['rps']:>10,.0f}  {p['rps']:>11,.0f}"
            f"  {ratio:5.2f}  {_us(leanest(runs[off])):>11}  {_us(leanest(runs[on])):>9}"
            f"  {'-' if cpuRatio is None else f'{cpuRatio:9.2f}'}  >= 0.97 {'ok' if ok else 'MISS'}"
        )
    return "\n".join(lines)


def measureMetrics(scenarios, requests, args, log):
    """
    The C{--metrics} run: plain primed against primed with metrics scraped.
    """
    servers = []
    scraper = None
    try:
        servers.append(_servers.startPrimed(extra=args.primed_arg))
        server, url = startPrimedWithMetrics(args.primed_arg)
        servers.append(server)
        if args.baseline_python:
            servers.append(_servers.startPrimed(
                extra=args.primed_arg, name="baseline", python=args.baseline_python
            ))
        log(f"primed on {servers[0].tcpPort}/{servers[0].udpPort}, primed+metrics on "
            f"{server.tcpPort}/{server.udpPort}, scraping {url} every second")
        scraper = Scraper(url)
        table = measure(servers, scenarios, requests, args, log)
        scraper.stop()
        print(f"\nmachine: {multiprocessing.cpu_count()} cores; {args.duration:g} s per run, "
              f"best of {args.repeat}; {scraper.scrapes} scrapes of {scraper.bytes} bytes, "
              f"{scraper.errors} failed\n")
        print(formatMetricsTable(table, scenarios))
        if args.baseline_python:
            print(f"\nbaseline: the primed of {args.baseline_python}\n")
            print(formatMetricsTable(table, scenarios, off="baseline"))
            print()
            print(formatMetricsTable(table, scenarios, on="primed", off="baseline"))
        return table
    finally:
        if scraper is not None:
            scraper.stop()
        for server in servers:
            server.stop()
