/*
 * The C peer: primed's job in one thread of C, for benchmarks/load.py.
 *
 * What a C programmer who wants this job done fast would write: one epoll
 * loop, non-blocking sockets, the cheapest correct check C has for the
 * verdict (FLINT's n_is_prime, deterministic, up to 64 bits, as primed uses
 * it; above, GMP's BPSW alone: mpz_probab_prime_p with 24 rounds, which
 * since GMP 6.2 is BPSW and reps - 24 = no Miller-Rabin rounds), no
 * thread pool (a big check blocks everybody, as in any single-threaded C
 * server).  It speaks primed's wire format (primed/wire.py):
 *
 *   request: [ \t]*[+-]?[0-9]+[ \t]*\r?   reply: T\n prime, F\n not prime
 *   (0, 1, negatives), E\n anything else or more than --max-digits
 *   significant digits.
 *
 * TCP: every line of one read is answered, the replies leave in one send;
 * a line longer than max-digits + 64 bytes is answered E as soon as it is
 * that long and the rest of it is skipped; after the client's EOF an
 * unterminated last line is a request too, then the connection is closed
 * once every reply is sent.  Backpressure: a connection with more than
 * 64 KiB of unsent replies stops being read until they drain.
 * UDP: one request per datagram (one trailing \n stripped), empty ones
 * ignored, one reply datagram each.
 *
 *   cc -O2 -o cpeer cpeer.c -lflint -lgmp   (Debian: libflint-dev, libgmp-dev)
 *   ./cpeer --host 127.0.0.1 --tcp-port 0 --udp-port 0 [--max-digits 4300]
 *
 * prints "cpeer tcp=PORT udp=PORT" once both are bound.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <flint/ulong_extras.h>
#include <gmp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_SIZE 65536
#define OUT_HIGH 65536
#define MAX_EVENTS 256
#define UDP_BATCH 64

static long maxDigits = 4300;
static long maxLine;
static mpz_t n;
static char *digitBuf;

struct conn {
    int fd;
    int discarding; /* skipping the rest of an over-long line */
    int readClosed;
    int paused; /* not reading: too many unsent replies */
    unsigned events; /* what epoll watches for now */
    char *buf;  /* the unterminated tail of the last read */
    size_t len, cap;
    char *out;  /* replies not yet sent */
    size_t outLen, outCap;
};

static struct conn **conns;
static int connsCap;
static int epfd, tcpFd, udpFd;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static int isBlank(char c) { return c == ' ' || c == '\t'; }

/* The verdict letter for one request line (without its \n). */
static char verdict(const char *line, size_t len) {
    size_t i = 0, end = len;
    int negative = 0;
    if (len > (size_t)maxLine) return 'E';
    if (end && line[end - 1] == '\r') end--;
    while (i < end && isBlank(line[i])) i++;
    while (end > i && isBlank(line[end - 1])) end--;
    if (i < end && (line[i] == '+' || line[i] == '-')) {
        negative = line[i] == '-';
        i++;
    }
    if (i == end) return 'E';
    for (size_t k = i; k < end; k++)
        if (line[k] < '0' || line[k] > '9') return 'E';
    while (i < end - 1 && line[i] == '0') i++;
    size_t digits = end - i;
    if ((long)digits > maxDigits) return 'E';
    if (negative) return 'F';
    if (digits <= 20) {
        /* Up to 64 bits: FLINT's n_is_prime. */
        unsigned long long v = 0;
        int fits = 1;
        for (size_t k = i; k < end && fits; k++)
            fits = !__builtin_mul_overflow(v, 10ULL, &v)
                   && !__builtin_add_overflow(v, (unsigned long long)(line[k] - '0'), &v);
        if (fits) {
            if (v < 2) return 'F';
            return n_is_prime((ulong)v) ? 'T' : 'F';
        }
    }
    memcpy(digitBuf, line + i, digits);
    digitBuf[digits] = 0;
    mpz_set_str(n, digitBuf, 10);
    /* BPSW alone (GMP >= 6.2: reps - 24 Miller-Rabin rounds after it). */
    return mpz_probab_prime_p(n, 24) ? 'T' : 'F';
}

static void addOut(struct conn *c, char v) {
    if (c->outLen + 2 > c->outCap) {
        c->outCap = c->outCap ? c->outCap * 2 : 256;
        c->out = realloc(c->out, c->outCap);
    }
    c->out[c->outLen++] = v;
    c->out[c->outLen++] = '\n';
}

/* One epoll_ctl, only when what we wait for changes. */
static void setEvents(struct conn *c) {
    struct epoll_event ev = {0};
    if (!c->paused && !c->readClosed) ev.events |= EPOLLIN;
    if (c->outLen) ev.events |= EPOLLOUT;
    if (ev.events == c->events) return;
    c->events = ev.events;
    ev.data.fd = c->fd;
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void closeConn(struct conn *c) {
    close(c->fd);
    conns[c->fd] = NULL;
    free(c->buf);
    free(c->out);
    free(c);
}

/* Send what we can; returns -1 if the connection was closed. */
static int flush(struct conn *c) {
    size_t off = 0;
    while (off < c->outLen) {
        ssize_t k = send(c->fd, c->out + off, c->outLen - off, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EAGAIN) break;
            closeConn(c);
            return -1;
        }
        off += k;
    }
    memmove(c->out, c->out + off, c->outLen - off);
    c->outLen -= off;
    if (c->readClosed && !c->outLen) {
        closeConn(c);
        return -1;
    }
    c->paused = c->outLen > OUT_HIGH;
    setEvents(c);
    return 0;
}

static void appendBuf(struct conn *c, const char *data, size_t len) {
    if (c->len + len > c->cap) {
        c->cap = c->len + len + 256;
        c->buf = realloc(c->buf, c->cap);
    }
    memcpy(c->buf + c->len, data, len);
    c->len += len;
}

static void handleData(struct conn *c, const char *data, size_t len) {
    const char *p = data, *end = data + len;
    if (c->discarding) {
        const char *nl = memchr(p, '\n', end - p);
        if (!nl) return;
        p = nl + 1;
        c->discarding = 0;
    }
    while (p < end) {
        const char *nl = memchr(p, '\n', end - p);
        if (!nl) {
            appendBuf(c, p, end - p);
            break;
        }
        if (c->len) {
            appendBuf(c, p, nl - p);
            addOut(c, verdict(c->buf, c->len));
            c->len = 0;
        } else {
            addOut(c, verdict(p, nl - p));
        }
        p = nl + 1;
    }
    if (c->len > (size_t)maxLine) {
        c->len = 0;
        c->discarding = 1;
        addOut(c, 'E');
    }
}

static void onReadable(struct conn *c, char *rbuf) {
    ssize_t k = recv(c->fd, rbuf, READ_SIZE, 0);
    if (k < 0) {
        if (errno == EAGAIN) return;
        closeConn(c);
        return;
    }
    if (k == 0) {
        c->readClosed = 1;
        if (c->len && !c->discarding) addOut(c, verdict(c->buf, c->len));
        c->len = 0;
        flush(c);
        return;
    }
    handleData(c, rbuf, k);
    if (c->outLen) flush(c);
}

static int listenOn(int type, const char *host, int port) {
    int fd = socket(AF_INET, type | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    inet_pton(AF_INET, host, &a.sin_addr);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (type == SOCK_STREAM && listen(fd, 1024) < 0) die("listen");
    return fd;
}

static int boundPort(int fd) {
    struct sockaddr_in a;
    socklen_t l = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &l);
    return ntohs(a.sin_port);
}

static void onAccept(void) {
    for (;;) {
        int fd = accept4(tcpFd, NULL, NULL, SOCK_NONBLOCK);
        if (fd < 0) return;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (fd >= connsCap) {
            int cap = fd * 2 + 16;
            conns = realloc(conns, cap * sizeof *conns);
            memset(conns + connsCap, 0, (cap - connsCap) * sizeof *conns);
            connsCap = cap;
        }
        struct conn *c = calloc(1, sizeof *c);
        c->fd = fd;
        conns[fd] = c;
        c->events = EPOLLIN;
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    }
}

static void onDatagrams(char *rbuf) {
    for (int i = 0; i < UDP_BATCH; i++) {
        struct sockaddr_storage from;
        socklen_t fromLen = sizeof from;
        ssize_t k = recvfrom(udpFd, rbuf, READ_SIZE, 0, (struct sockaddr *)&from, &fromLen);
        if (k < 0) return;
        if (k == 0) continue;
        size_t len = k;
        if (rbuf[len - 1] == '\n') len--;
        char reply[2] = {verdict(rbuf, len), '\n'};
        sendto(udpFd, reply, 2, 0, (struct sockaddr *)&from, fromLen);
    }
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int tcpPort = 0, udpPort = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--host")) host = argv[i + 1];
        else if (!strcmp(argv[i], "--tcp-port")) tcpPort = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--udp-port")) udpPort = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--max-digits")) maxDigits = atol(argv[i + 1]);
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    maxLine = maxDigits + 64;
    digitBuf = malloc(maxLine + 1);
    mpz_init(n);
    signal(SIGPIPE, SIG_IGN);
    tcpFd = listenOn(SOCK_STREAM, host, tcpPort);
    udpFd = listenOn(SOCK_DGRAM, host, udpPort);
    epfd = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = tcpFd};
    epoll_ctl(epfd, EPOLL_CTL_ADD, tcpFd, &ev);
    ev.data.fd = udpFd;
    epoll_ctl(epfd, EPOLL_CTL_ADD, udpFd, &ev);
    printf("cpeer tcp=%d udp=%d\n", boundPort(tcpFd), boundPort(udpFd));
    fflush(stdout);
    static char rbuf[READ_SIZE];
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int k = epoll_wait(epfd, events, MAX_EVENTS, -1);
        if (k < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < k; i++) {
            int fd = events[i].data.fd;
            if (fd == tcpFd) {
                onAccept();
                continue;
            }
            if (fd == udpFd) {
                onDatagrams(rbuf);
                continue;
            }
            struct conn *c = fd < connsCap ? conns[fd] : NULL;
            if (!c) continue;
            if (events[i].events & EPOLLOUT) {
                if (flush(c) < 0) continue;
            }
            if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                if (!c->paused && !c->readClosed) onReadable(c, rbuf);
                else if (events[i].events & (EPOLLHUP | EPOLLERR) && !(events[i].events & EPOLLOUT))
                    closeConn(c);
            }
        }
    }
}
