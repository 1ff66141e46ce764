"""Serving a registry over HTTP from a Trio nursery: hypercorn's Trio worker and
``prometheus_client``'s ASGI app.

Why the socket is bound here rather than by hypercorn: hypercorn creates its
sockets after the ASGI startup phase and leaks the socket when ``bind()`` fails
(a ResourceWarning, and the ``OSError`` arrives wrapped three exception groups
deep). Binding first gives the caller a plain ``OSError`` before anything runs,
and the bound port without parsing hypercorn's log strings. The socket is handed
over through hypercorn's documented ``fd://`` bind; from the moment hypercorn
reports ready it owns the descriptor and closes it when its listener ends.
"""

from __future__ import annotations

import logging
import socket
from typing import Final

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from prometheus_client import CollectorRegistry, disable_created_metrics, make_asgi_app

__all__ = ["METRICS_PATH", "serve_metrics"]

logger = logging.getLogger(__name__)

#: The one path answered; anything else is 404.
METRICS_PATH: Final = "/metrics"


class _MetricsApp:
    """ASGI: ``GET /metrics`` → the registry's exposition; lifespan acknowledged.

    ``make_asgi_app`` answers every path and method and asserts on the lifespan
    scope (hypercorn would log a warning at every start); this keeps it to its job.
    Collection runs in the event loop thread, which lets the registry's callbacks
    read Trio-owned state without locks.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._exposition = make_asgi_app(registry)

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "http":
            if scope["path"] != METRICS_PATH:
                await _plain(send, 404, b"not found: metrics are at /metrics\n")
            elif scope["method"] not in ("GET", "HEAD"):
                await _plain(send, 405, b"method not allowed\n", [(b"allow", b"GET, HEAD")])
            else:
                await self._exposition(scope, receive, send)
        # websocket and anything else: returning without a response makes hypercorn refuse it.


async def _plain(
    send: ASGISendCallable,
    status: int,
    body: bytes,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"), *(extra_headers or [])]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers, "trailers": False}
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on the first address ``host`` resolves to."""
    infos = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    family, type_, proto, _canonname, address = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_metrics(
    registry: CollectorRegistry,
    *,
    host: str = "127.0.0.1",
    port: int = 9464,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``registry`` at ``http://host:port/metrics`` (Prometheus text format) until cancelled.

    Binds the first address ``host`` resolves to (``port=0`` picks a free port),
    then reports the bound port through ``task_status``:
    ``port = await nursery.start(functools.partial(serve_metrics, registry, port=0))``.
    HTTP/1.1 and cleartext HTTP/2; other paths get 404, methods other than GET
    and HEAD get 405.

    The exposition leaves out the ``*_created`` series of counters and histograms
    (a timestamp per series, doubling the output for nothing a dashboard uses):
    prometheus_client's switch for that is process-wide, and this sets it.

    Errors binding (port taken, unknown host) raise :exc:`OSError` before
    ``task_status.started()``. Cancellation ends it: the listening socket and
    every open connection are closed before the cancellation propagates, so
    nothing leaks and the port refuses connections afterwards.
    """
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, got {port}")
    disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client
    sock = await _bind(host, port)
    try:
        bound_host, bound_port = sock.getsockname()[:2]
        config = Config()
        config.bind = [f"fd://{sock.fileno()}"]
        # A logger of ours, not hypercorn's default: that one replaces the handlers
        # of the global "hypercorn.error" logger.
        config.errorlog = logging.getLogger(f"{__name__}.hypercorn")
        config.accesslog = None
        async with trio.open_nursery() as nursery:
            # hypercorn wraps the same descriptor in its own socket object, which its
            # listener closes when it ends; ours must then stop owning it.
            await nursery.start(serve, _MetricsApp(registry), config)
            # hypercorn marks it inheritable (for its multi-process mode); a child
            # process must not keep the port open after the service is gone.
            sock.set_inheritable(False)
            sock.detach()
            logger.info("Serving metrics on http://%s:%d%s", bound_host, bound_port, METRICS_PATH)
            task_status.started(bound_port)
    finally:
        # Closes the socket if hypercorn never took it over; a no-op after detach().
        sock.close()
