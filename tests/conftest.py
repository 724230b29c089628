"""
What every test shares: a service made in-process (C{tap.makeService})
installs primed's stop-signal handlers (L{primed.signals}) in the test
runner itself; each test's are removed after it, so Ctrl-C still
interrupts pytest and no later signal reaches a finished test's reactor.
And the container tests' podman session, whose image is built once.
"""

import signal

import pytest

#: Besides the C{*_e2e.py} modules, the modules whose tests are end-to-end
#: (C{pytest -m e2e}; C{pytest -m "not e2e"} runs the unit tests, on every
#: Python of the tox matrix): they drive system tools or need root.
_E2E_MODULES = {
    "test_client_cli.py",  # primed-client and twistd as subprocesses, at length
    "test_client_terminal.py",  # the same, on a pseudo-terminal
    "test_contrib_balancers.py",  # nginx, HAProxy
    "test_docs.py",  # the docs built (Sphinx) once, and man
    "test_netns.py",  # network namespaces: root
    "test_systemd_units.py",  # systemd-analyze
}
#: And end-to-end classes in unit modules.
_E2E_CLASSES = {("test_metrics.py", "PromtoolTests")}  # promtool


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.path.name
        cls = getattr(item, "cls", None)
        if (
            module.endswith("_e2e.py")
            or module in _E2E_MODULES
            or (cls is not None and (module, cls.__name__) in _E2E_CLASSES)
        ):
            item.add_marker(pytest.mark.e2e)

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
