"""
A health check for images without curl::

    python -m primed.healthcheck [URL]

asks C{URL} (by default C{$PRIMED_HEALTHZ}, else
C{http://127.0.0.1:9810/healthz}, the C{--metrics} listener of the
container image) and exits 0 if it answers 200, 1 otherwise (C{/healthz}
answers 503 while primed drains), with one line on standard error saying
why.  The Containerfile's C{HEALTHCHECK} runs it, and so can a Kubernetes
C{exec} probe or any supervisor; one word per argument, so that runners
which join a command into a shell line (podman 4.3's C{kube play}) run it
unchanged.
"""

import os
import sys
import urllib.error
import urllib.request
from typing import Optional

DEFAULT_URL = "http://127.0.0.1:9810/healthz"
#: Seconds to wait for the answer: below the image's HEALTHCHECK timeout.
TIMEOUT = 4.0


def check(url: str, timeout: float = TIMEOUT) -> Optional[str]:
    """
    Ask C{url}; L{None} if it answered 200, else why not.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as e:
        status = e.code
    except (OSError, ValueError) as e:
        return f"{url}: {e}"
    return None if status == 200 else f"{url}: HTTP {status}"


def main(argv: Optional[list[str]] = None, environ=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    if len(argv) > 1:
        sys.stderr.write("usage: python -m primed.healthcheck [URL]\n")
        return 2
    url = argv[0] if argv else environ.get("PRIMED_HEALTHZ") or DEFAULT_URL
    problem = check(url)
    if problem is not None:
        sys.stderr.write(f"unhealthy: {problem}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
