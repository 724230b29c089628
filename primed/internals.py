"""
The private names of Twisted that primed relies on, looked up once, at
import, never trusted blindly.

Twisted's public API has no cheap way to do a few things primed promises:
a TCP read or a UDP reply without a reactor turn (L{primed.reactor},
L{primed.fastpath}), an answer to a TLS client that half-closes
(L{primed.tls}), a socket of our own for C{--reuseport} or systemd's named
UDP sockets (L{primed.service}), an exit by the stopping signal
(L{primed.signals}).  Each module asks L{lookup} for the private names it
uses, when it is imported.  A name a future Twisted renames or removes is
then known before primed serves anything, and is never mistaken for
something else (an C{ImportError} once read as "no epoll"):

  - where Twisted's public path keeps primed's promises, only slower or
    with less detail, the module falls back to it, and L{warnMissing}
    logs one warning at start naming every missing name and what primed
    does instead;
  - where nothing public keeps a promise (TLS half-close), primed refuses
    the feature with one line naming the Twisted it needs (L{require}).

C{tests/test_internals.py} simulates each missing name; the tox
environment C{newest} runs the suite on Twisted's next release.
"""

from importlib import import_module
from typing import Any, Optional

__all__ = ["TESTED", "lookup", "present", "missing", "warnMissing", "require"]

#: The Twisted releases primed is tested with (setup.cfg's minimum up to
#: the newest at the time), for messages.
TESTED = "Twisted 26.4 to 26.10"

#: Missing names, in the order found: (dotted name, what primed does
#: instead, or None where the feature is refused).
_missing: dict[str, Optional[str]] = {}


class _Missing:
    """
    What L{lookup} returns for a missing name: false, and named.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"<missing {self.name}>"


_MODULE = object()


def lookup(module: str, path: str, instead: Optional[str], obj: Any = _MODULE) -> Any:
    """
    The object at C{module.path} (C{path} dotted through attributes), or a
    false L{_Missing} recorded for L{warnMissing} and L{require}.

    @param instead: what primed does without it (for the warning), or
        L{None} if the feature using it is refused without it.
    @param obj: an instance of the class C{path} names up to its last
        dot, to look the last name up on, for attributes Twisted sets in
        C{__init__}; C{module.path} is still the name reported.
    """
    name = f"{module}.{path}"
    try:
        if obj is _MODULE:
            found = import_module(module)
            parts = path.split(".")
        else:
            found, parts = obj, path.split(".")[-1:]
        for part in parts:
            found = getattr(found, part)
    except (ImportError, AttributeError):
        _missing.setdefault(name, instead)
        return _Missing(name)
    return found


def present(*found: Any) -> bool:
    """
    Whether none of C{found} (values returned by L{lookup}) is missing;
    a found value may itself be false (an empty dictionary).
    """
    return not any(isinstance(value, _Missing) for value in found)


def missing() -> list[tuple[str, Optional[str]]]:
    """
    Every missing name so far, with what primed does instead.
    """
    return list(_missing.items())


def _twistedVersion() -> str:
    try:
        from twisted import __version__
    except ImportError:
        return "this Twisted"
    return f"Twisted {__version__}"


def warnMissing(log) -> bool:
    """
    Log one warning naming every missing name primed falls back from, if
    any.

    @param log: a L{twisted.logger.Logger}.
    @return: whether it warned.
    """
    fallbacks = [(name, instead) for name, instead in _missing.items() if instead]
    if not fallbacks:
        return False
    log.warn(
        "{twisted} lacks private names primed uses ({tested} are tested): "
        "{what}",
        twisted=_twistedVersion(), tested=TESTED,
        what="; ".join(f"{name} missing, so {instead}" for name, instead in fallbacks),
    )
    return True


def require(names, feature: str) -> None:
    """
    Refuse C{feature} with one line if any of C{names} (values returned by
    L{lookup}) is missing.

    @raise RuntimeError: naming the feature, what is missing, and the
        Twisted primed is tested with.
    """
    lacking = [name.name for name in names if isinstance(name, _Missing)]
    if lacking:
        raise RuntimeError(
            f"{feature} needs {TESTED}: {_twistedVersion()} lacks "
            + ", ".join(lacking)
        )
