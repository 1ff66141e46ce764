"""A raw HTTP/2 client for the edge tests: hand-made frames over a plain socket.

grpcio (and h2's client state machine) will not send what a hostile client sends: frames
of unknown types, bad padding, reused stream ids, floods. :class:`RawConnection` writes
whatever bytes it is given and reads back the server's frames, parsed just enough to
see GOAWAY, RST_STREAM, HEADERS and an end of connection. Every wait is bounded.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator, Sequence

import attrs
import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, CANCEL, ENHANCE_YOUR_CALM = 0x0, 0x1, 0x2, 0x8, 0xB


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame; the length field says ``len(payload)``."""
    return (
        struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream_id) + payload
    )


def settings(**values: int) -> bytes:
    """A SETTINGS frame; keys are setting ids as ``s1``, ``s4``, ..."""
    body = b"".join(struct.pack(">HI", int(k[1:]), v) for k, v in values.items())
    return frame(SETTINGS, 0, 0, body)


def header_block(headers: Sequence[tuple[str, str]]) -> bytes:
    """``headers`` HPACK-encoded with a fresh encoder (no dynamic table state)."""
    return bytes(hpack.Encoder().encode(list(headers)))


def grpc_headers(
    port: int, method: str = "/rule_installation.DataPlane/GetRuleStats"
) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", method),
        (":authority", f"127.0.0.1:{port}"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]


def empty_message_data(stream_id: int) -> bytes:
    """A DATA frame carrying one empty gRPC message and END_STREAM."""
    return frame(DATA, END_STREAM, stream_id, b"\x00\x00\x00\x00\x00")


@attrs.frozen
class Frame:
    kind: int
    flags: int
    stream_id: int
    payload: bytes

    @property
    def error_code(self) -> int:
        """The error code of a GOAWAY or RST_STREAM frame."""
        if self.kind == GOAWAY:
            return int(struct.unpack(">I", self.payload[4:8])[0])
        if self.kind == RST_STREAM:
            return int(struct.unpack(">I", self.payload[:4])[0])
        raise ValueError(f"frame type {self.kind} has no error code")


def parse_frames(data: bytes) -> Iterator[Frame]:
    """The complete frames in ``data`` (server bytes, no preface)."""
    offset = 0
    while offset + 9 <= len(data):
        length = int.from_bytes(data[offset : offset + 3], "big")
        kind, flags, stream_id = struct.unpack(">BBI", data[offset + 3 : offset + 9])
        end = offset + 9 + length
        if end > len(data):
            return
        yield Frame(kind, flags, stream_id & 0x7FFFFFFF, data[offset + 9 : end])
        offset = end


class RawConnection:
    """A TCP connection to the service for writing raw HTTP/2 bytes.

    Use as a context manager. ``rcvbuf`` shrinks the socket's receive buffer before
    connecting (a client that reads slowly).
    """

    def __init__(self, port: int, *, rcvbuf: int | None = None, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(("127.0.0.1", port))
        except OSError:
            self.sock.close()
            raise
        self.received = bytearray()
        self.closed_by_server = False

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """Write ``data``; False when the server closed (or reset) the connection first."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            return False
        return True

    def read_for(self, seconds: float) -> bytes:
        """Read what arrives within ``seconds`` (less if the server closes); returns it."""
        deadline = time.monotonic() + seconds
        start = len(self.received)
        while not self.closed_by_server:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                break
            except ConnectionResetError:
                self.closed_by_server = True
                break
            if not chunk:
                self.closed_by_server = True
                break
            self.received += chunk
        return bytes(self.received[start:])

    def read_until_closed(self, timeout: float) -> bool:
        """Read until the server closes; whether it did within ``timeout``."""
        self.read_for(timeout)
        return self.closed_by_server

    def frames(self) -> list[Frame]:
        return list(parse_frames(bytes(self.received)))

    def goaway(self) -> Frame | None:
        """The first GOAWAY the server sent, if any."""
        return next((f for f in self.frames() if f.kind == GOAWAY), None)
