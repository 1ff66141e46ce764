"""One unary DataPlane call from a short-lived command, every failure made one line.

Each call runs the project's generated grpclib client (``DataPlaneStub``) on a fresh
asyncio loop: a command is a short-lived process, so it needs no Trio. The channel
is closed before the call returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

from ..proto import rule_installation as pb
from ._command import CommandError
from ._connection import Connection, error_reason

__all__ = ["call"]

#: How long a command waits for its connection to close before it exits anyway.
_CLOSE_WAIT_S = 2.0


def call(connection: Connection, method: str, request: Any) -> Any:
    """Make one unary DataPlane call (``method`` is the stub's method name).

    Returns the response message. Every failure (a gRPC status from the server,
    refused or reset connections, the deadline, TLS) becomes a :class:`CommandError`
    with one line that names the status or the target.
    """
    # Imported here: ``guardrefresh --help`` and the service itself need no client.
    from grpclib.client import Channel
    from grpclib.config import Configuration
    from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

    async def one_call() -> Any:
        channel = Channel(
            connection.host,
            connection.port,
            ssl=connection.tls,
            config=Configuration(ssl_target_name_override=connection.server_name),
        )
        try:
            stub = pb.DataPlaneStub(
                channel, timeout=connection.timeout, metadata=connection.metadata
            )
            return await getattr(stub, method)(request)
        finally:
            await _close(channel)

    target = connection.target
    try:
        # A plain asyncio loop, whatever the policy says (trio-asyncio replaces it when
        # imported, as it is in a process that also hosts the service).
        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
            return runner.run(one_call())
    except GRPCError as exc:
        text = exc.status.name + (f": {exc.message}" if exc.message else "")
        raise CommandError(text) from None
    except TimeoutError:
        raise CommandError(
            f"no answer from {target} within {connection.timeout:g}s (see --timeout)"
        ) from None
    except ssl.SSLError as exc:
        raise CommandError(f"TLS with {target} failed: {error_reason(exc)}") from None
    except ConnectionRefusedError:
        raise CommandError(
            f"cannot connect to {target}: connection refused (is guardrefresh running there?)"
        ) from None
    except OSError as exc:
        raise CommandError(f"cannot connect to {target}: {error_reason(exc)}") from None
    except (StreamTerminatedError, ProtocolError) as exc:
        # The usual causes when the server hangs up without a gRPC status.
        if connection.tls is None:
            hint = " (not a gRPC server, or one that needs TLS: see --tls-ca)"
        elif not connection.client_cert:
            hint = " (a server that requires a client certificate drops others: see --tls-cert)"
        else:
            hint = ""
        raise CommandError(f"gRPC connection to {target} failed: {exc}{hint}") from None


async def _close(channel: Any) -> None:
    """Close a grpclib channel and wait (bounded) until its socket is really closed.

    ``Channel.close()`` only starts closing. Over TLS the socket closes after the
    close_notify exchange, some loop iterations later; were ``asyncio.run`` to return
    first, the socket would be left open (a ResourceWarning, a peer left waiting).
    asyncio calls the protocol's ``connection_lost`` just before it closes the socket,
    so that is the signal. ``_protocol`` is private, but grpclib is pinned exactly.
    """
    protocol = getattr(channel, "_protocol", None)
    if protocol is None or protocol.handler.connection_lost:  # never connected, or gone
        channel.close()
        await asyncio.sleep(0)
        return
    lost = asyncio.Event()
    connection_lost = protocol.connection_lost

    def notify(exc: BaseException | None) -> None:
        try:
            connection_lost(exc)
        finally:
            lost.set()

    protocol.connection_lost = notify
    channel.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_CLOSE_WAIT_S):
            await lost.wait()
    # One more turn: the socket is closed right after connection_lost returns.
    await asyncio.sleep(0)
