"""TLS for the gRPC server (and mutual TLS with a client CA)."""

from __future__ import annotations

import ssl
from pathlib import Path


class TlsConfigError(Exception):
    """The certificate, key or CA file cannot be used; ``str()`` says which and why."""


def server_ssl_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """A server context with TLS 1.2+, ALPN h2, and client certificates required with a CA.

    Raises :class:`TlsConfigError` naming the file when it cannot be loaded.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=cert, keyfile=key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(
            f"cannot load TLS certificate {str(cert)!r} / key {str(key)!r}: {exc}"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(f"cannot load TLS client CA {str(client_ca)!r}: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])  # gRPC clients insist on it
    return context
