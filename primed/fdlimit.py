"""
Enough open files for C{--max-connections}.

Every TCP connection is a file descriptor.  A shell's soft limit is often
1024 (for C{select()}'s sake), below the default C{--max-connections} (1024)
plus the descriptors primed holds anyway.  Past the soft limit a connection
fails in C{accept()}, before primed's own limit can refuse it: Twisted then
closes it with a log line of its own per connection, uncounted, so the
documented limit (closed at once, counted, logged at most every 10 seconds)
never applies.  So a start raises the soft limit as far as the hard limit
allows, as HAProxy does for its C{maxconn}, and says so; when the hard limit
is too low it warns, naming what to change.  It never lowers a limit, and
needs no privilege (the hard limit is left alone).
"""

import resource

from twisted.logger import Logger

#: Descriptors primed may hold besides its connections: listeners (each UDP
#: port has a private epoll set too), the reactor's epoll and waker, the
#: standard streams, Twisted's EMFILE reserve, the systemd notify socket, a
#: log file, the C{/proc} files a scrape reads; with room to spare.
SPARE = 64

_log = Logger()


def ensureOpenFiles(connections: int, option: str,
                    getrlimit=resource.getrlimit, setrlimit=resource.setrlimit) -> int:
    """
    Raise the soft C{RLIMIT_NOFILE} to C{connections} + L{SPARE} if it is
    lower, up to the hard limit.

    @param connections: the most connections primed may hold at once.
    @param option: how the log names where C{connections} comes from.
    @return: the soft limit now.
    """
    wanted = connections + SPARE
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):  # a seccomp filter (SystemCallFilter=~@resources)
            target = soft
    if target >= wanted:
        _log.info("Raised the open-file limit from {old} to {new} ({option})",
                  old=soft, new=target, option=option)
    else:
        _log.warn(
            "The open-file limit is {limit} (hard limit {hard}), below the {wanted} "
            "that {option} needs: connections beyond about {usable} will fail; raise "
            "it (ulimit -n, LimitNOFILE=) or lower --max-connections",
            limit=target, hard=hard, wanted=wanted, option=option,
            usable=max(target - SPARE, 0),
        )
    return target
