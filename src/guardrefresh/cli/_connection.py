"""Where and how a command reaches the service: ``--target``, the deadline, token, TLS."""

from __future__ import annotations

import argparse
import os
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs

from ._command import EXIT_USAGE, CommandError

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT_S",
    "TARGET_ENV",
    "Connection",
    "add_connection_options",
    "connection_from",
    "error_reason",
    "parse_target",
    "with_connection",
]

DEFAULT_TARGET = "127.0.0.1:50051"
#: Environment variable read when ``--target`` is not given.
TARGET_ENV = "GUARDREFRESH_TARGET"
DEFAULT_TIMEOUT_S = 10.0


@attrs.frozen
class Connection:
    """Where and how to call the service, resolved from the common options."""

    host: str
    port: int
    timeout: float
    token: str | None = attrs.field(default=None, repr=False)  # a secret
    tls: ssl.SSLContext | None = None
    server_name: str | None = None
    #: A client certificate is offered (mutual TLS).
    client_cert: bool = False

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def metadata(self) -> dict[str, str] | None:
        return None if self.token is None else {"authorization": f"Bearer {self.token}"}


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--target",
        metavar="HOST:PORT",
        help=f"the service's gRPC address (default: ${TARGET_ENV}, else {DEFAULT_TARGET})",
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT_S,
        help=f"deadline of the call, connecting included (default: {DEFAULT_TIMEOUT_S:g})",
    )
    group.add_argument(
        "--token-file",
        metavar="PATH",
        type=Path,
        help="send the token in PATH as 'authorization: Bearer <token>' metadata",
    )
    group.add_argument(
        "--tls-ca",
        metavar="PATH",
        type=Path,
        help="use TLS and verify the server's certificate against this PEM CA bundle",
    )
    group.add_argument(
        "--tls-cert",
        metavar="PATH",
        type=Path,
        help="client certificate chain (PEM) for mutual TLS; implies TLS",
    )
    group.add_argument(
        "--tls-key",
        metavar="PATH",
        type=Path,
        help="private key (PEM) of --tls-cert, when the certificate file does not hold it",
    )
    group.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="the name to verify the server's certificate against (default: HOST)",
    )


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def parse_target(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); CommandError (usage) if not."""
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CommandError(
            f"bad target {text!r}: expected HOST:PORT, e.g. {DEFAULT_TARGET}", EXIT_USAGE
        )
    return host, int(port)


def connection_from(options: argparse.Namespace, environ: Mapping[str, str]) -> Connection:
    """Resolve the connection options (reads the token and TLS files)."""
    host, port = parse_target(options.target or environ.get(TARGET_ENV) or DEFAULT_TARGET)
    return Connection(
        host=host,
        port=port,
        timeout=options.timeout,
        token=None if options.token_file is None else _read_token(options.token_file),
        tls=_ssl_context(options),
        server_name=options.tls_server_name,
        client_cert=options.tls_cert is not None,
    )


def _read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read --token-file {str(path)!r}: {error_reason(exc)}") from None
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        raise CommandError(
            f"--token-file {str(path)!r} must hold one token of printable ASCII characters"
        )
    return token


def _ssl_context(options: argparse.Namespace) -> ssl.SSLContext | None:
    if options.tls_key is not None and options.tls_cert is None:
        raise CommandError("--tls-key needs --tls-cert", EXIT_USAGE)
    if options.tls_ca is None and options.tls_cert is None:
        if options.tls_server_name is not None:
            raise CommandError("--tls-server-name needs TLS (--tls-ca or --tls-cert)", EXIT_USAGE)
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # gRPC over TLS is HTTP/2 negotiated by ALPN.
    context.set_alpn_protocols(["h2"])
    if options.tls_ca is not None:
        try:
            context.load_verify_locations(cafile=options.tls_ca)
        except (OSError, ValueError) as exc:
            raise CommandError(
                f"cannot load --tls-ca {str(options.tls_ca)!r}: {error_reason(exc)}"
            ) from None
    if options.tls_cert is not None:
        try:
            context.load_cert_chain(options.tls_cert, options.tls_key)
        except (OSError, ValueError) as exc:
            files = f"{str(options.tls_cert)!r}" + (
                f" / {str(options.tls_key)!r}" if options.tls_key else ""
            )
            raise CommandError(f"cannot load --tls-cert {files}: {error_reason(exc)}") from None
    return context


def error_reason(exc: BaseException) -> str:
    """The short reason of an OS or TLS error, for a one-line message."""
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def with_connection(
    action: Callable[[argparse.Namespace, Connection], int],
) -> Callable[[argparse.Namespace], int]:
    """Wrap ``action`` so that it receives the resolved :class:`Connection` too."""

    def run(options: argparse.Namespace) -> int:
        return action(options, connection_from(options, os.environ))

    return run
