"""The connection guard of GrpcHost, in process: limits, counts, containment.

Real sockets on 127.0.0.1 and the real clock (the raw clients are blocking sockets in
worker threads). The subprocess tests (tests/reliability/test_http2_fuzz.py and
test_edge_connections.py) drive the same code through ``python -m guardrefresh``.
"""

from __future__ import annotations

import math
import resource
import socket

import pytest
import trio
from helpers_grpc import open_host
from support.waiting import wait_until_async

from guardrefresh.server import FD_RESERVE, EdgeLimits, max_connections_for

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def test_the_default_cap_leaves_a_reserve_of_descriptors() -> None:
    assert FD_RESERVE == 64
    assert max_connections_for(1024) == 960
    assert max_connections_for(256) == 192
    assert max_connections_for(50) == 16  # never below 16
    assert max_connections_for(resource.RLIM_INFINITY) == (1 << 20) - 64
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert EdgeLimits().max_connections == max_connections_for(soft)


@pytest.mark.parametrize(
    "bad",
    [
        {"max_connections": 0},
        {"idle_timeout_s": 0},
        {"idle_timeout_s": math.nan},
        {"reset_burst": 0},
        {"reset_rate": -1},
        {"max_unread_output_bytes": 0},
    ],
)
def test_limits_are_validated(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        EdgeLimits(**bad)  # type: ignore[arg-type]


def _connect_and_read(port: int, data: bytes) -> bytes:
    """Connect, send ``data``, read until the server closes or 2 s pass; what the server
    sent, followed by ``<still open>`` if it had not closed by then."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock:
        sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            return received + b"<still open>"
        except ConnectionResetError:
            pass  # closed with data of ours unread: the kernel answered with RST
    return received


async def test_connections_over_the_cap_are_closed_at_once_and_counted() -> None:
    async with open_host(edge_limits=EdgeLimits(max_connections=2)) as (host, _servicer):
        first = socket.create_connection(("127.0.0.1", host.port))
        second = socket.create_connection(("127.0.0.1", host.port))
        try:
            await wait_until_async(lambda: host.open_connections == 2)
            # The third is closed before grpclib says anything (no SETTINGS).
            assert await trio.to_thread.run_sync(_connect_and_read, host.port, PREFACE) == b""
            assert host.edge_counts.refused == 1
            assert host.open_connections == 2
        finally:
            first.close()
            second.close()
        await wait_until_async(lambda: host.open_connections == 0)
        answer = await trio.to_thread.run_sync(_connect_and_read, host.port, PREFACE)
        assert answer.endswith(b"<still open>")  # admitted again, and served
        assert host.edge_counts.refused == 1


async def test_an_unknown_frame_is_ignored_and_an_oversized_one_closes_its_connection() -> None:
    async with open_host() as (host, _servicer):
        unknown = PREFACE + EMPTY_SETTINGS + b"\x00\x00\x02\xfa\x00\x00\x00\x00\x00\x00\x00"
        answer = await trio.to_thread.run_sync(_connect_and_read, host.port, unknown)
        assert answer.endswith(b"<still open>")
        assert host.edge_counts.error_closed == 0
        # A DATA frame header announcing 1 MiB (our SETTINGS_MAX_FRAME_SIZE is 16 KiB):
        # closed at its header with GOAWAY FRAME_SIZE_ERROR, not after 1 MiB is buffered.
        oversized = PREFACE + EMPTY_SETTINGS + b"\x10\x00\x00\x00\x00\x00\x00\x00\x01"
        answer = await trio.to_thread.run_sync(_connect_and_read, host.port, oversized)
        assert not answer.endswith(b"<still open>")
        goaway = answer.rindex(b"\x07\x00\x00\x00\x00\x00")  # type GOAWAY, flags 0, stream 0
        assert answer[goaway + 10 : goaway + 14] == b"\x00\x00\x00\x06"  # FRAME_SIZE_ERROR
        assert host.edge_counts.error_closed == 1
        answer = await trio.to_thread.run_sync(_connect_and_read, host.port, PREFACE)
        assert answer.endswith(b"<still open>")
