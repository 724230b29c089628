"""
TLS certificates that rotate in place.

A Kubernetes Secret mounted as a volume, cert-manager, certbot or an
operator's script replaces an C{ssl:} listener's key and certificate files
while primed runs.  Every C{--tls-reload-interval} seconds primed reads each
C{ssl:} listener's files again, exactly as it read them at start (the
listener's own description, parsed again), and when they hold another
certificate, new connections get the new pair; connections already open
keep theirs.  A pair that cannot be loaded (a file missing, empty or
half-written, a key that does not match its certificate) is logged, once
until it changes, and the pair in use is kept: the next interval tries
again, so a rotation that writes the certificate and the key one after the
other is picked up once both are there.

Polling rather than inotify: a Secret's files change by the kubelet
swapping a symlink (C{..data}) in the volume's directory, certbot repoints
symlinks too, and some volumes have no inotify at all; reading two small
files every few seconds costs nothing.  Rather than a signal: SIGHUP
already stops primed gracefully (L{primed.signals}), SIGUSR1 reopens
twistd's log file, and nothing in Kubernetes sends one when a Secret
changes.

This module replaces the context factory that Twisted's
L{SSL4ServerEndpoint} keeps in its private C{_sslContextFactory}, which
L{primed.service} reads to build its TLS layer; L{makeReloadable} checks the
attribute is there and fails loudly otherwise.
"""

from collections.abc import Sequence
from typing import Any, Callable, Optional, cast

from twisted.application import service
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from primed.tls import restrictContext

#: Seconds between two reads of the files, by default: a Secret's update
#: takes the kubelet a minute or so to reach the volume anyway.
DEFAULT_INTERVAL = 10.0


def describe(certificate) -> str:
    """
    A certificate as the log names it: subject, serial and expiry.
    """
    subject = "/".join(
        f"{key.decode()}={value.decode()}"
        for key, value in certificate.get_subject().get_components()
    )
    expiry = certificate.get_notAfter().decode("ascii", "replace")
    return f"/{subject}, serial {certificate.get_serial_number():X}, not after {expiry}"


def _identity(contextFactory) -> tuple[bytes, ...]:
    """
    What tells two loaded pairs apart: the digests of the certificate and
    of its chain (a new key comes with a new certificate).
    """
    chain = getattr(contextFactory, "extraCertChain", None) or []
    return tuple(c.digest("sha256") for c in [contextFactory.certificate, *chain])


@implementer(IOpenSSLContextFactory)
class ReloadingContextFactory:
    """
    An C{ssl:} listener's server context factory, whose pair can be
    replaced.  Twisted's TLS layer asks C{getContext} for every new
    connection, so each gets the pair in use at that moment.  It says it
    provides L{IOpenSSLContextFactory}, as C{CertificateOptions} does:
    Twisted warns (C{LegacyContextFactoryWarning}) of a factory that does
    not, a warning that is the first step to refusing it.

    @ivar description: the listener's C{--listen} description.
    @ivar current: the L{twisted.internet.ssl.CertificateOptions} in use.
    """

    _log = Logger()

    def __init__(self, description: str, current: Any, load: Callable[[], Any]):
        """
        @param load: makes a new C{CertificateOptions} from the files, as at
            start; raises anything if they cannot be loaded.
        """
        self.description = description
        self.current = current
        self._load = load
        self._identity = _identity(current)
        self._lastError: Optional[str] = None

    def getContext(self):
        return self.current.getContext()

    def reload(self) -> bool:
        """
        Read the files again; use their pair from now on if it is another
        one and loads.

        @return: whether the pair changed.
        """
        try:
            candidate = self._load()
            # Builds the OpenSSL context: a key that does not match its
            # certificate fails here if the parser let it through.  The
            # context is cached by its options, so the profile set here is
            # the one its connections get.
            restrictContext(candidate.getContext())
            identity = _identity(candidate)
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
            if error != self._lastError:
                self._lastError = error
                self._log.error(
                    "TLS listener {listener}: cannot load its new key and certificate "
                    "({error}); still serving {certificate}",
                    listener=self.description, error=error,
                    certificate=describe(self.current.certificate),
                )
            return False
        self._lastError = None
        if identity == self._identity:
            return False
        self.current, self._identity = candidate, identity
        self._log.info("TLS listener {listener}: now serving {certificate}",
                       listener=self.description, certificate=describe(candidate.certificate))
        return True


def makeReloadable(tcpEndpoints: Sequence[tuple[str, Any]],
                   parse: Callable[[str], Any]) -> list[ReloadingContextFactory]:
    """
    Give every C{ssl:} listener of C{tcpEndpoints} (also behind
    C{haproxy:}) a L{ReloadingContextFactory}, which reloads by parsing its
    description again with C{parse}.

    @param tcpEndpoints: C{(description, endpoint)} pairs, as
        L{primed.service.PrimedService} takes them.
    @return: the new factories.
    """
    factories = []
    for description, endpoint in tcpEndpoints:
        inner = _ssl(endpoint)
        if inner is None:
            continue

        def load(description=description):
            # The same description gave an SSL endpoint above.
            return cast(SSL4ServerEndpoint, _ssl(parse(description)))._sslContextFactory

        factory = ReloadingContextFactory(description, inner._sslContextFactory, load)
        inner._sslContextFactory = factory
        factories.append(factory)
    return factories


def _ssl(endpoint) -> Optional[SSL4ServerEndpoint]:
    inner = getattr(endpoint, "wrapped", endpoint)  # haproxy:ssl:...
    if not isinstance(inner, SSL4ServerEndpoint):
        return None
    if not hasattr(inner, "_sslContextFactory"):
        raise RuntimeError(
            "Twisted's SSL4ServerEndpoint no longer keeps _sslContextFactory: "
            "primed.certreload (and primed.service) need updating"
        )
    return inner


class CertificateReloader(service.Service):
    """
    Reload every factory each C{interval} seconds while running.
    """

    def __init__(self, factories: Sequence[ReloadingContextFactory], interval: float,
                 reactor: Any):
        self.factories = list(factories)
        self.interval = interval
        self._call = LoopingCall(self.reloadAll)
        self._call.clock = reactor

    def reloadAll(self) -> None:
        for factory in self.factories:
            factory.reload()

    def startService(self):
        service.Service.startService(self)
        self._call.start(self.interval, now=False)

    def stopService(self):
        service.Service.stopService(self)
        if self._call.running:
            self._call.stop()
