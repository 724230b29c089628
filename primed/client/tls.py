"""
The client's side of TLS, for L{primed.client}: whether a connection is
TLS, and why its handshake failed, in the words C{openssl s_client} and
C{curl} use (C{"certificate not trusted (self-signed certificate)"}).
"""

from primed.client.base import PrimedConnectionLost, PrimedError, PrimedTLSError


def isTLS(transport) -> bool:
    """
    Whether C{transport} is Twisted's TLS layer (C{tls:}, C{ssl:}).
    """
    try:
        from twisted.protocols.tls import TLSMemoryBIOProtocol
    except ImportError:  # no pyOpenSSL: no TLS either
        return False
    return isinstance(transport, TLSMemoryBIOProtocol)


def handshakeFailure(reason, transport) -> PrimedError:
    """
    Why a TLS connection closed before its handshake completed, in words.
    """
    try:
        from OpenSSL import SSL
        from service_identity import VerificationError
    except ImportError:
        # Optional (twisted[tls]); None says which checks cannot apply.
        SSL = VerificationError = None  # type: ignore[assignment,misc]
    if VerificationError is not None and reason.check(VerificationError):
        return PrimedTLSError(f"TLS: {_mismatch(reason.value)}")
    if SSL is not None and reason.check(SSL.Error):
        messages = [entry[-1] for entry in reason.value.args[0] if entry] if (
            reason.value.args and isinstance(reason.value.args[0], list)
        ) else []
        if "certificate verify failed" in messages:
            return PrimedTLSError(
                f"TLS: certificate not trusted ({_whyUntrusted(transport)})"
            )
        detail = "; ".join(messages) or reason.getErrorMessage()
        return PrimedTLSError(f"TLS handshake failed: {detail}")
    return PrimedConnectionLost(
        f"connection lost during the TLS handshake ({reason.getErrorMessage()})"
    )


def _mismatch(verificationError) -> str:
    """
    C{"certificate is not for NAME"}: the handshake failed, so the
    certificate itself is gone and its names cannot be shown.
    """
    asked = []
    for mismatch in getattr(verificationError, "errors", []):
        identity = getattr(mismatch, "mismatched_id", None)
        name = getattr(identity, "hostname", None) or getattr(identity, "ip", None)
        if name is not None:
            asked.append(name.decode() if isinstance(name, bytes) else str(name))
    return f"certificate is not for {' or '.join(asked) or 'the host name'}"


def _whyUntrusted(transport) -> str:
    """
    OpenSSL's reason for refusing the server's certificate (C{"self-signed
    certificate"}, C{"unable to get local issuer certificate"}, ...), as
    C{openssl s_client} prints it.  pyOpenSSL has no public call for it: its
    bindings are used, and a change in them only costs the detail.
    """
    try:
        from OpenSSL.SSL import _ffi, _lib

        code = _lib.SSL_get_verify_result(transport.getHandle()._ssl)
        return _ffi.string(_lib.X509_verify_cert_error_string(code)).decode()
    except Exception:
        return "certificate verify failed"
