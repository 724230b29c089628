"""
What every test shares: a service made in-process (C{tap.makeService})
installs primed's stop-signal handlers (L{primed.signals}) in the test
runner itself; each test's are removed after it, so Ctrl-C still
interrupts pytest and no later signal reaches a finished test's reactor.
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
