"""A stand-in for the management plane's ``POST /encode/intent``: a real HTTP server.

stdlib ``http.server`` in a daemon thread on 127.0.0.1 (port 0). What it answers is set
per test through :class:`EncoderServer` (``mode``); it records the bodies it received.
The service under test, in its own process, reaches it over loopback like the real
management plane.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

#: What every good answer holds: a vector the tests can recognise.
VECTOR = [((i % 7) - 3) / 8 for i in range(128)]


class EncoderServer:
    """Modes: ``ok`` (VECTOR), ``status_503``, ``short`` (127 values), ``slow`` (answers after
    ``slow_s``), ``not_json``, ``nan``, ``vector_of`` (answers ``vector`` as given)."""

    def __init__(
        self,
        mode: str = "ok",
        *,
        slow_s: float = 3.0,
        vector_for: Callable[[Any], list[float]] | None = None,
    ) -> None:
        self.mode = mode
        self.slow_s = slow_s
        #: In mode ``ok``, computes the answer from the posted JSON (default: VECTOR).
        self.vector_for = vector_for
        self.vector: list[Any] = list(VECTOR)
        self.bodies: list[bytes] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        handler = self._handler_class()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        # Do not wait for a "slow" answer still sleeping when the test is over.
        self._server.block_on_close = False
        self.port = self._server.server_address[1]

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: pytest would show it as noise

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                with owner._lock:
                    owner.bodies.append(body)
                    owner.paths.append(self.path)
                mode = owner.mode
                if mode == "slow":
                    time.sleep(owner.slow_s)
                if mode == "status_503":
                    self._answer(503, b'{"detail": "encoder warming up"}')
                elif mode == "short":
                    self._answer(200, json.dumps({"vector": VECTOR[:127]}).encode())
                elif mode == "not_json":
                    self._answer(200, b"<html>hello</html>")
                elif mode == "nan":
                    self._answer(200, json.dumps({"vector": [float("nan")] * 128}).encode())
                elif mode == "vector_of":
                    self._answer(200, json.dumps({"vector": owner.vector}).encode())
                elif owner.vector_for is not None:
                    vector = owner.vector_for(json.loads(body))
                    self._answer(200, json.dumps({"vector": vector}).encode())
                else:
                    self._answer(200, json.dumps({"vector": VECTOR}).encode())

            def _answer(self, status: int, body: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (timeout tests)

        return Handler

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def running_encoder(mode: str = "ok", **kwargs: Any) -> Iterator[EncoderServer]:
    server = EncoderServer(mode, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()
