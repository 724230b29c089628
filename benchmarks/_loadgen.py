"""
The load generator's inner loops: one process driving many loopback
connections (or UDP sockets) with non-blocking sockets and epoll.

The generator shares the machine's cores with the server it measures, so it
is written to cost little per request: requests are pre-encoded, every
reply batch is counted with C{bytes.count}, pipelined requests are re-sent
in one C{send} per batch, and latencies go into a histogram keyed by
microseconds (one dict update per batch, not one list entry per request).

Every loop is bounded by a deadline.  A run is a warm-up until C{startAt},
then a measured window until C{endAt}; only replies that arrive in the
window, to requests sent in it, count.
"""

import collections
import resource
import select
import socket
import time

#: Each small request line is this long: 20 digits and a newline, so a batch
#: of C{n} pipelined requests is one slice of a pre-joined blob.
SMALL_WIDTH = 21

#: A UDP request unanswered for this long counts as lost and is re-sent.
UDP_TIMEOUT = 0.5


class Requests:
    """
    The request lines one run sends.

    @ivar blob: the small request lines (each L{SMALL_WIDTH} bytes) joined,
        twice over, so any run of up to C{len(small)} lines is one slice.
    @ivar count: the number of distinct small lines.
    @ivar big: big request lines for the mixed scenario (may be empty).
    """

    def __init__(self, small, big=()):
        # Zero-padded to 20 digits (primed's grammar, and every peer's,
        # takes leading zeros): the odd64 mix has 19-digit numbers.
        lines = [b"%020d\n" % n for n in small]
        if any(len(line) != SMALL_WIDTH for line in lines):
            raise ValueError("small requests must have at most 20 digits")
        self.count = len(lines)
        self.blob = b"".join(lines) * 2
        self.big = [b"%d\n" % n for n in big]

    def small(self, index, n):
        """
        C{n} consecutive small request lines from C{index}, as one bytes.
        """
        start = (index % self.count) * SMALL_WIDTH
        return self.blob[start : start + n * SMALL_WIDTH]


def _cpuSeconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Conn:
    __slots__ = ("sock", "index", "sent", "inflight", "pending", "big")

    def __init__(self, sock, index):
        self.sock = sock
        self.index = index
        self.sent = index * 997  # spread the connections over the request pool
        # Batches in flight, oldest first: [sendTime, requestsLeft].
        self.inflight = collections.deque()
        self.pending = b""
        self.big = False


def _record(hist, seconds, weight):
    key = int(seconds * 1e6)
    hist[key] = hist.get(key, 0) + weight


def runTCP(host, port, connections, depth, requests, startAt, endAt, bigEvery=0):
    """
    Keep C{depth} requests in flight on each of C{connections} connections
    until C{endAt}.

    @param bigEvery: when non-zero (only with C{depth == 1}), every
        C{bigEvery}-th request of a connection is a big one; their latencies
        are kept apart from the small ones'.
    @return: a result dict (see L{_result}).
    """
    if bigEvery and depth != 1:
        raise ValueError("mixed requests need one request in flight")
    # Raw epoll rather than selectors: its per-event wrapping costs about a
    # microsecond, which the server would see as a slower client.
    poller = select.epoll()
    conns = {}
    hist, bigHist = {}, {}
    completed = errors = 0
    cpuStart = None
    try:
        for i in range(connections):
            sock = socket.create_connection((host, port), timeout=5)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            conn = _Conn(sock, i)
            conns[sock.fileno()] = conn
            poller.register(sock.fileno(), select.EPOLLIN)

        def send(conn, now, n):
            if bigEvery:
                conn.big = (conn.sent + conn.index) % bigEvery == 0
                if conn.big:
                    data = requests.big[conn.sent % len(requests.big)]
                else:
                    data = requests.small(conn.sent, 1)
            else:
                data = requests.small(conn.sent, n)
            conn.sent += n
            conn.inflight.append([now, n])
            if conn.pending:
                conn.pending += data
                return
            sent = conn.sock.send(data)
            if sent < len(data):
                conn.pending = data[sent:]
                poller.modify(conn.sock.fileno(), select.EPOLLIN | select.EPOLLOUT)

        now = time.monotonic()
        for conn in conns.values():
            send(conn, now, depth)

        while now < endAt:
            events = poller.poll(min(0.1, endAt - now))
            now = time.monotonic()
            if cpuStart is None and now >= startAt:
                cpuStart = _cpuSeconds()
            measuring = now >= startAt
            for fd, mask in events:
                conn = conns[fd]
                if mask & select.EPOLLOUT:
                    sent = conn.sock.send(conn.pending)
                    conn.pending = conn.pending[sent:]
                    if not conn.pending:
                        poller.modify(fd, select.EPOLLIN)
                if not mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                    continue
                data = conn.sock.recv(65536)
                if not data:
                    raise ConnectionError("the server closed a connection")
                n = data.count(b"\n")
                if not n:
                    continue
                if measuring:
                    errors += data.count(b"E")
                    completed += n
                left = n
                inflight = conn.inflight
                while left:
                    batch = inflight[0]
                    sentAt, size = batch
                    take = size if size <= left else left
                    if sentAt >= startAt:
                        _record(bigHist if conn.big else hist, now - sentAt, take)
                    if take == size:
                        inflight.popleft()
                    else:
                        batch[1] = size - take
                    left -= take
                send(conn, now, n)
    finally:
        for fd, conn in conns.items():
            poller.unregister(fd)
            conn.sock.close()
        poller.close()
    return _result(completed, errors, 0, hist, bigHist, cpuStart)


def runUDP(host, port, sockets, depth, requests, startAt, endAt):
    """
    C{depth} datagrams in flight on each of C{sockets} connected UDP sockets
    until C{endAt}.

    This loop is leaner than L{runTCP}'s (raw epoll, each socket drained
    until it would block, latencies recorded inline): a UDP request costs
    the server little more than its two system calls, so a generator as
    heavy as the server would measure itself.  Replies carry no request id;
    the server answers a socket's datagrams in order, so each reply is
    matched with its socket's oldest request.  When a socket's oldest
    request is unanswered after L{UDP_TIMEOUT}, all its requests in flight
    count as lost and are replaced.
    """
    poller = select.epoll()
    states = {}
    hist = {}
    completed = errors = lost = 0
    cpuStart = None
    small = requests.small
    try:
        for i in range(sockets):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.connect((host, port))
            sock.setblocking(False)
            # [socket, send times in flight (oldest first), requests sent]
            states[sock.fileno()] = [sock, collections.deque(), i * 997]
            poller.register(sock.fileno(), select.EPOLLIN)

        def refill(state, now, n):
            sock, times, counter = state
            for k in range(n):
                sock.send(small(counter + k, 1))
                times.append(now)
            state[2] = counter + n

        now = time.monotonic()
        for state in states.values():
            refill(state, now, depth)
        nextSweep = now + UDP_TIMEOUT
        while now < endAt:
            events = poller.poll(min(0.1, endAt - now))
            now = time.monotonic()
            if cpuStart is None and now >= startAt:
                cpuStart = _cpuSeconds()
            measuring = now >= startAt
            for fd, _ in events:
                state = states[fd]
                sock, times = state[0], state[1]
                n = 0
                while True:
                    try:
                        data = sock.recv(64)
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                    n += 1
                    sentAt = times.popleft() if times else now
                    if measuring:
                        if data != b"T\n" and data != b"F\n":
                            errors += 1
                        if sentAt >= startAt:
                            key = int((now - sentAt) * 1e6)
                            hist[key] = hist.get(key, 0) + 1
                if measuring:
                    completed += n
                refill(state, now, n)
            if now >= nextSweep:
                nextSweep = now + UDP_TIMEOUT
                for state in states.values():
                    times = state[1]
                    if times and now - times[0] > UDP_TIMEOUT:
                        if now >= startAt:
                            lost += len(times)
                        times.clear()
                        refill(state, now, depth)
    finally:
        for state in states.values():
            poller.unregister(state[0].fileno())
            state[0].close()
        poller.close()
    return _result(completed, errors, lost, hist, {}, cpuStart)


def _result(completed, errors, lost, hist, bigHist, cpuStart):
    """
    What a worker sends back: counts, latency histograms (microseconds to
    number of requests) and the CPU seconds it spent in the measured window.
    """
    cpu = _cpuSeconds() - cpuStart if cpuStart is not None else 0.0
    return {
        "completed": completed,
        "errors": errors,
        "lost": lost,
        "hist": hist,
        "bigHist": bigHist,
        "cpu": cpu,
    }


def percentile(hist, q):
    """
    The C{q}-quantile (0..1) of a microsecond histogram, in milliseconds, or
    L{None} if it is empty.
    """
    total = sum(hist.values())
    if not total:
        return None
    rank = q * total
    seen = 0
    for key in sorted(hist):
        seen += hist[key]
        if seen >= rank:
            return key / 1000.0
    return max(hist) / 1000.0
