"""
One JSON object per log line on standard output, for journald, Loki or
Elasticsearch::

    twistd -n --logger primed.jsonlog.observer primed ...

(C{--logger} takes an observer factory by its full name; twistd calls it
with no arguments.)  Each line is an object with C{time} (ISO 8601, UTC,
microseconds), C{level} (C{debug}, C{info}, C{warn}, C{error},
C{critical}), C{namespace} (the logger's: C{primed.tcp.PrimeLineProtocol},
...) and C{message} (the event formatted as text logs show it); plus
C{peer} (C{host:port}) for events about one client (idle timeouts, refused
connections, C{--verbose} verdicts), and C{traceback} when a failure is
logged.  Twisted's own C{--log-format json} (C{twist}) writes every event
field, record-separated, which log shippers handle less well.

L{fromEnvironment} chooses between this and twistd's plain text by the
C{PRIMED_LOG_FORMAT} environment variable, for a container image whose
command line is fixed::

    twistd -n --logger primed.jsonlog.fromEnvironment primed ...
"""

import json
import os
import sys
from datetime import datetime, timezone

from twisted.logger import FileLogObserver, formatEvent, textFileLogObserver

_LEVELS = ("debug", "info", "warn", "error", "critical")


def _peer(value) -> str:
    host, port = getattr(value, "host", None), getattr(value, "port", None)
    if host is not None:
        return f"{host}:{port}" if port is not None else str(host)
    if isinstance(value, tuple) and len(value) >= 2:  # a UDP source (host, port, ...)
        host, port = value[0], value[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(value)


def eventAsLine(event) -> str:
    """
    The JSON line for one log event (with its newline).  Never raises: an
    event that cannot be formatted is still reported, by formatEvent's own
    "Unable to format event" text.
    """
    when = event.get("log_time")
    level = event.get("log_level")
    record = {
        "time": (
            datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="microseconds")
            if when is not None else None
        ),
        "level": level.name if level is not None and level.name in _LEVELS else "info",
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    if "peer" in event:
        record["peer"] = _peer(event["peer"])
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:
            record["traceback"] = repr(failure)
    # ASCII, non-ASCII escaped: a lone surrogate (surrogateescape text such
    # as a unix: path that is not UTF-8) could not be written otherwise.
    return json.dumps(record, default=str) + "\n"


def observer(outFile=None) -> FileLogObserver:
    """
    The C{--logger} factory: a log observer writing L{eventAsLine} lines to
    C{outFile}, the real standard output by default (taken now, before
    twistd redirects C{sys.stdout} into the log).
    """
    return FileLogObserver(outFile if outFile is not None else sys.stdout, eventAsLine)


#: The environment variable L{fromEnvironment} reads, and its values.
FORMAT_VARIABLE = "PRIMED_LOG_FORMAT"
FORMATS = ("text", "json")


def fromEnvironment(environ=None, outFile=None) -> FileLogObserver:
    """
    The C{--logger} factory of the container image: JSON lines (L{observer})
    if C{PRIMED_LOG_FORMAT} is C{json}, twistd's own text lines if it is
    C{text}, unset or empty.

    @param environ: the environment; L{os.environ} by default.
    @param outFile: as for L{observer}.
    @raise SystemExit: for any other value, with a one-line message (twistd
        would otherwise print a traceback and log nothing at all).
    """
    if environ is None:
        environ = os.environ
    value = environ.get(FORMAT_VARIABLE, "").strip().lower() or "text"
    if value not in FORMATS:
        raise SystemExit(
            f"primed: {FORMAT_VARIABLE} must be one of {', '.join(FORMATS)}, "
            f"not {environ[FORMAT_VARIABLE]!r}"
        )
    outFile = outFile if outFile is not None else sys.stdout
    if value == "json":
        return observer(outFile)
    return textFileLogObserver(outFile)
