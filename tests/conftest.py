"""
What every test shares: a service made in-process (C{tap.makeService})
installs primed's stop-signal handlers (L{primed.signals}) in the test
runner itself; each test's are removed after it, so Ctrl-C still
interrupts pytest and no later signal reaches a finished test's reactor.
And the container tests' podman session, whose image is built once.
"""

import signal

import pytest

_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@pytest.fixture(autouse=True)
def _restoreSignalHandlers():
    saved = {number: signal.getsignal(number) for number in _SIGNALS}
    yield
    for number, handler in saved.items():
        if handler is not None and signal.getsignal(number) is not handler:
            signal.signal(number, handler)


@pytest.fixture(scope="session")
def podmanSession():
    """
    The container tests' podman (L{container.PodmanSession}): the image is
    built once per test session, shared by every container test, and
    removed with everything else the session made when it ends.
    """
    from container import PodmanSession

    session = PodmanSession()
    try:
        session.start()
        yield session
    finally:
        session.close()
