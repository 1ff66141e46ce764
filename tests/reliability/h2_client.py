"""A raw HTTP/2 client (h2 over a blocking socket) for what grpcio will not send.

grpcio always sends whole requests and respects the server's stream limit. The edge
tests need a client that opens streams and then stalls: headers without a message, a
message prefix declaring megabytes followed by part of them, more streams than the
server allowed. :class:`RawH2Client` does that on one connection and records how each
stream ended (its ``grpc-status``, a reset, or the connection closing).
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame
from grpcio_support import HOST, grpc_request_headers

__all__ = ["RawH2Client"]


class RawH2Client:
    """One HTTP/2 connection to 127.0.0.1:``port``; every method is bounded in time."""

    def __init__(self, port: int, *, timeout_s: float = 10.0) -> None:
        self.port = port
        self.sock = socket.create_connection((HOST, port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.h2 = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.h2.initiate_connection()
        #: grpc-status of each stream that ended with one.
        self.statuses: dict[int, str] = {}
        #: Streams the server reset (RST_STREAM), with the error code.
        self.resets: dict[int, int] = {}
        #: The server's MAX_CONCURRENT_STREAMS as last announced (None: not yet).
        self.max_concurrent_streams: int | None = None
        self.settings_frames = 0
        self.closed = False
        #: Bytes each stream still has to send: the body of a stalled call is sent as
        #: the server's flow-control windows allow, up to the amount asked for.
        self._pending: dict[int, bytes] = {}
        #: Streams whose last pending byte ends the stream (whole requests).
        self._ending: set[int] = set()
        self._flush()

    @property
    def sending(self) -> bool:
        """Whether some stream still has request bytes to send (flow control allowing)."""
        return bool(self._pending) and not self.closed

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawH2Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ calls ---

    def start_call(
        self,
        path: str,
        *,
        declared: int | None = None,
        send: int = 0,
        message: bytes | None = None,
    ) -> int:
        """Open a stream to ``path``; returns its id.

        ``message``: send it whole as the request and end the stream. Otherwise send the
        headers only (``declared`` None), or a message prefix declaring ``declared``
        bytes followed by ``send`` of them, and never end the stream.
        """
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, grpc_request_headers(self.port, path))
        if message is not None:
            self._pending[stream_id] = b"\x00" + len(message).to_bytes(4, "big") + message
            self._ending.add(stream_id)
        elif declared is not None:
            self._pending[stream_id] = b"\x00" + declared.to_bytes(4, "big") + bytes(send)
        self._send_pending()
        self._flush()
        return stream_id

    def send_message(self, stream_id: int, message: bytes, *, declared: int | None = None) -> None:
        """Send a request message on a stream opened with headers only: ``message`` whole
        (then end the stream), or, with ``declared``, a prefix declaring that many bytes
        followed by ``message`` only (and the stream stays open)."""
        length = len(message) if declared is None else declared
        self._pending[stream_id] = b"\x00" + length.to_bytes(4, "big") + message
        if declared is None:
            self._ending.add(stream_id)
        self._send_pending()
        self._flush()

    def reset(self, stream_id: int) -> None:
        """Reset one of our streams (RST_STREAM CANCEL)."""
        self._pending.pop(stream_id, None)
        self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        self._flush()

    def start_call_beyond_the_limit(self, path: str) -> int:
        """Open one more stream than the server allows (h2 itself would refuse to)."""
        stream_id = self.h2.highest_outbound_stream_id + 2
        block = self.h2.encoder.encode(grpc_request_headers(self.port, path))
        frame = hyperframe.frame.HeadersFrame(stream_id, data=block, flags=["END_HEADERS"])
        self.sock.sendall(frame.serialize())
        return stream_id

    def pump(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        """Read and answer the server (settings, windows, pings) and send what the windows
        allow, for ``seconds`` or until ``until()`` is true or the connection closed."""
        deadline = time.monotonic() + seconds
        while not self.closed and (until is None or not until()):
            remaining = max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([self.sock], [], [], min(remaining, 0.05))
            if readable:
                self._receive()
            self._send_pending()
            self._flush()
            if time.monotonic() >= deadline:
                return

    # --------------------------------------------------------------- internals ---

    def _receive(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except (ConnectionResetError, TimeoutError):
            data = b""
        if not data:
            self.closed = True
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.closed = True
            return
        for event in events:
            self._on_event(event)

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings_frames += 1
            changed = event.changed_settings.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
            if changed is not None:
                self.max_concurrent_streams = changed.new_value
        elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
            headers = dict(event.headers or ())
            if "grpc-status" in headers:
                self.statuses[event.stream_id] = str(headers["grpc-status"])
            self._pending.pop(event.stream_id, None)
        elif isinstance(event, h2.events.StreamReset):
            self.resets[event.stream_id] = int(event.error_code)
            self._pending.pop(event.stream_id, None)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closed = True

    def _send_pending(self) -> None:
        for stream_id in list(self._pending):
            data = self._pending[stream_id]
            try:
                window = min(
                    self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size
                )
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                del self._pending[stream_id]
                continue
            while data and window > 0:
                chunk, data = data[:window], data[window:]
                self.h2.send_data(
                    stream_id, chunk, end_stream=not data and stream_id in self._ending
                )
                window = min(
                    self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size
                )
            if data:
                self._pending[stream_id] = data
            else:
                del self._pending[stream_id]

    def _flush(self) -> None:
        out = self.h2.data_to_send()
        if out and not self.closed:
            try:
                self.sock.sendall(out)
            except (BrokenPipeError, ConnectionResetError):
                self.closed = True
