"""Hostile HTTP/2 against one real service: nothing a client sends may stop it.

Each case opens its own raw connection (``h2_raw``) and sends what no well-behaved
client would: frames of unknown types, bad padding, oversized and malformed header
blocks, CONTINUATION, SETTINGS and PING floods, invalid and reused stream ids, rapid
reset (HEADERS + RST_STREAM in a loop, CVE-2023-44487), flow-control window overflow,
random bytes. After every case the process is alive and a fresh grpcio client's
GetRuleStats answers within 1 s. Where the protocol says what must happen, the case
checks that too: unknown frames are ignored (the connection goes on serving), protocol
errors close only the offending connection, a reset flood gets GOAWAY ENHANCE_YOUR_CALM.
When the module ends the log holds no ERROR record and no traceback, and the service
exits 0 on SIGTERM.

One service serves every case; the whole module runs in well under 60 s.
"""

from __future__ import annotations

import random
import struct
import time
import types
from collections.abc import Callable, Iterator

import pytest
from grpcio_support import DataPlaneClient
from support.service import ServiceProcess, running_service

from .h2_raw import (
    ACK,
    CANCEL,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    RawConnection,
    empty_message_data,
    frame,
    grpc_headers,
    header_block,
    settings,
)

#: How long a case waits for the server to react (close, GOAWAY, answer).
REACT_S = 2.0
#: A case that expects nothing from the server gives it this long to (not) fail.
SETTLE_S = 0.2
#: The fresh client's bound.
PROBE_DEADLINE_S = 1.0

START = PREFACE + settings()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    workdir = tmp_path_factory.mktemp("http2_fuzz")
    with running_service(workdir, "--no-scheduler") as running:
        yield running
        assert running.stop() == 0, running.log
        # Every connection's errors were contained by the connection guard; none
        # reached the asyncio loop's exception handler (the net under it).
        assert running.find("guardrefresh.server._loop_errors") is None, running.log
    # running_service checked the log: no ERROR record, no traceback.


def _probe(service: ServiceProcess, modules: types.SimpleNamespace) -> None:
    assert service.returncode is None, f"service exited {service.returncode}:\n{service.log}"
    with DataPlaneClient(modules, service.port, own_connection=True) as client:
        outcome = client.outcome(
            "GetRuleStats", client.pb2.GetRuleStatsRequest(), deadline_s=PROBE_DEADLINE_S
        )
    assert outcome.ok, f"fresh client after the case: {outcome}\n{service.log}"


def _request(port: int, stream_id: int) -> bytes:
    """A complete GetRuleStats call on ``stream_id``."""
    block = header_block(grpc_headers(port))
    return frame(HEADERS, END_HEADERS, stream_id, block) + empty_message_data(stream_id)


def _answered(connection: RawConnection, stream_id: int) -> bool:
    """Whether the server sent trailers (HEADERS with END_STREAM) on ``stream_id``."""
    return any(
        f.kind == HEADERS and f.stream_id == stream_id and f.flags & END_STREAM
        for f in connection.frames()
    )


def _expect_closed(connection: RawConnection) -> None:
    """The server ended this connection (GOAWAY or close), not the process."""
    closed = connection.read_until_closed(REACT_S)
    assert closed or connection.goaway() is not None, (
        f"the server neither closed nor sent GOAWAY; it sent {connection.frames()}"
    )


# ----------------------------------------------------------------------- cases ---


def unknown_frame_types(port: int) -> None:
    # RFC 9113 §5.5: ignored; the connection goes on serving, on the same stream too.
    with RawConnection(port) as c:
        c.send(START + frame(0xFA, 0, 0, b"\x00\x00"))
        c.send(frame(0x0C, 0, 0, b"\x00\x00"))  # ORIGIN (RFC 8336)
        c.send(frame(0x0A, 0, 0, b"\x00\x00"))  # ALTSVC, from a client
        c.send(frame(HEADERS, END_HEADERS, 1, header_block(grpc_headers(port))))
        c.send(frame(0xEE, 0xFF, 1, bytes(range(256)) * 8))  # on an open stream, all flags
        c.send(frame(0x10, 0, 3, b""))  # on an idle stream
        c.send(empty_message_data(1))
        c.read_for(REACT_S if not _wait_answer(c, 1) else 0)
        assert _answered(c, 1), f"no answer after unknown frames; got {c.frames()}"
        assert c.goaway() is None


def _wait_answer(connection: RawConnection, stream_id: int) -> bool:
    deadline = time.monotonic() + REACT_S
    while time.monotonic() < deadline and not connection.closed_by_server:
        connection.read_for(0.05)
        if _answered(connection, stream_id):
            return True
    return False


def bad_padding(port: int) -> None:
    block = header_block(grpc_headers(port))
    cases = [
        # HEADERS whose pad length exceeds the payload.
        frame(HEADERS, END_HEADERS | PADDED, 1, bytes([200]) + block),
        # DATA with a pad length as long as the frame.
        frame(HEADERS, END_HEADERS, 1, block) + frame(DATA, PADDED, 1, bytes([10]) + b"\0" * 5),
        # PADDED with no room even for the pad length.
        frame(HEADERS, END_HEADERS | PADDED, 1, b""),
        frame(HEADERS, END_HEADERS, 1, block) + frame(DATA, PADDED | END_STREAM, 1, b""),
        # PUSH_PROMISE (a client may not send it) with bad padding.
        frame(PUSH_PROMISE, END_HEADERS | PADDED, 1, bytes([255]) + b"\0\0\0\x02"),
    ]
    for payload in cases:
        with RawConnection(port) as c:
            c.send(START + payload)
            _expect_closed(c)


def oversized_headers(port: int) -> None:
    # One header list far over the 64 KiB HPACK list limit, in CONTINUATIONs.
    huge = header_block([*grpc_headers(port), ("x-big", "v" * 200_000)])
    chunks = [huge[i : i + 16_000] for i in range(0, len(huge), 16_000)]
    data = frame(HEADERS, 0, 1, chunks[0])
    for i, chunk in enumerate(chunks[1:], 1):
        data += frame(CONTINUATION, END_HEADERS if i == len(chunks) - 1 else 0, 1, chunk)
    with RawConnection(port) as c:
        c.send(START + data)
        c.read_for(SETTLE_S)
    # A frame larger than the advertised SETTINGS_MAX_FRAME_SIZE (16,384).
    with RawConnection(port) as c:
        c.send(START + frame(HEADERS, END_HEADERS, 1, b"\x82" * 20_000))
        _expect_closed(c)
    # A length field of 16 MiB - 1 with nothing behind it.
    with RawConnection(port) as c:
        c.send(START + b"\xff\xff\xff\x01\x04\x00\x00\x00\x01")
        _expect_closed(c)


def malformed_headers(port: int) -> None:
    good = grpc_headers(port)
    blocks = [
        b"\xff\xff\xff\xff\xff",  # an integer that never ends
        b"\xbf",  # index 63: not in the tables
        b"\x40\x7f" + b"a" * 10,  # a literal whose name length runs past the end
        b"\x3f\xe1\x7f",  # dynamic table size update far over the limit
        header_block([(":path", "/x")]),  # no :method, :scheme
        header_block([*good, ("Upper-Case", "x")]),  # upper-case name
        header_block([*good, (":path", "/again")]),  # a pseudo-header twice
        header_block([*good[:2], ("x", "y"), *good[2:]]),  # pseudo-header after a regular
        header_block([*good, ("connection", "close")]),  # connection-specific header
        header_block([*good, ("x-nul", "a\x00b")]),
        header_block([(k, v) for k, v in good if k != ":path"]),
        header_block([*[(k, v) for k, v in good if k != ":method"], (":method", "GET")]),
    ]
    for block in blocks:
        with RawConnection(port) as c:
            c.send(START + frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
            c.read_for(SETTLE_S)
    # HEADERS on stream 0, PRIORITY depending on itself, a truncated PRIORITY block.
    for payload in (
        frame(HEADERS, END_HEADERS, 0, header_block(good)),
        frame(HEADERS, END_HEADERS | PRIORITY_FLAG, 1, struct.pack(">IB", 1, 16)),
        frame(HEADERS, END_HEADERS | PRIORITY_FLAG, 1, b"\x00\x00"),
    ):
        with RawConnection(port) as c:
            c.send(START + payload)
            _expect_closed(c)


def continuation_floods(port: int) -> None:
    block = header_block(grpc_headers(port))
    # HEADERS that never ends: endless small CONTINUATIONs (h2 stops at 64).
    with RawConnection(port) as c:
        c.send(START + frame(HEADERS, 0, 1, block[:4]))
        c.send(b"".join(frame(CONTINUATION, 0, 1, b"\x00") for _ in range(5_000)))
        _expect_closed(c)
    # CONTINUATION with no HEADERS before it; on another stream than its HEADERS.
    for payload in (
        frame(CONTINUATION, END_HEADERS, 1, block),
        frame(HEADERS, 0, 1, block[:4]) + frame(CONTINUATION, END_HEADERS, 3, block[4:]),
        frame(HEADERS, 0, 1, block[:4]) + frame(PING, 0, 0, b"\0" * 8),
    ):
        with RawConnection(port) as c:
            c.send(START + payload)
            _expect_closed(c)


def settings_floods(port: int) -> None:
    # 20,000 SETTINGS read by a client that reads: all acknowledged, nothing breaks.
    with RawConnection(port) as c:
        c.send(START + settings(s4=70_000, s5=20_000) * 20_000)
        c.read_for(SETTLE_S)
    # Invalid values: ENABLE_PUSH=2, window > 2^31-1, frame size below 16,384, and
    # an ACK with a body and a body of 5 bytes.
    for payload in (
        settings(s2=2),
        settings(s4=1 << 31),
        settings(s5=100),
        settings(s5=1 << 24),
        frame(SETTINGS, ACK, 0, b"\0" * 6),
        frame(SETTINGS, 0, 0, b"\0" * 5),
        frame(SETTINGS, 0, 1, b""),
    ):
        with RawConnection(port) as c:
            c.send(START + payload)
            _expect_closed(c)


def ping_floods(port: int) -> None:
    # 100,000 PINGs from a client that reads nothing (tiny receive buffer): 1.7 MB of
    # acknowledgements owed. The kernel's buffers take the first few MB; beyond 1 MiB
    # more the guard closes the connection (more pings than a test can afford).
    with RawConnection(port, rcvbuf=4096) as c:
        pings = frame(PING, 0, 0, b"12345678") * 5_000
        c.send(START)
        for _ in range(20):
            if not c.send(pings):
                break
    # Malformed PINGs: short, on a stream.
    for payload in (frame(PING, 0, 0, b"1234567"), frame(PING, 0, 1, b"12345678")):
        with RawConnection(port) as c:
            c.send(START + payload)
            _expect_closed(c)


def invalid_stream_ids(port: int) -> None:
    block = header_block(grpc_headers(port))
    for payload in (
        frame(HEADERS, END_HEADERS | END_STREAM, 2, block),  # even: server-initiated
        _request(port, 5) + _request(port, 3),  # lower than one already used
        _request(port, 1) + _request(port, 1),  # reused
        frame(DATA, 0, 7, b"\0" * 10),  # DATA on an idle stream
        frame(RST_STREAM, 0, 9, struct.pack(">I", CANCEL)),  # RST_STREAM on an idle stream
        frame(WINDOW_UPDATE, 0, 11, struct.pack(">I", 1)),  # on an idle stream
        frame(HEADERS, END_HEADERS, 0x7FFFFFFF, block) + _request(port, 1),  # after the max
        frame(RST_STREAM, 0, 0, struct.pack(">I", CANCEL)),  # RST_STREAM on stream 0
        frame(RST_STREAM, 0, 1, b"\0\0"),  # short RST_STREAM
        frame(GOAWAY, 0, 1, b"\0" * 8),  # GOAWAY on a stream
        frame(PRIORITY, 0, 1, b"\0" * 4),  # short PRIORITY
    ):
        with RawConnection(port) as c:
            c.send(START + payload)
            c.read_for(SETTLE_S)


def rapid_reset(port: int) -> None:
    # HEADERS + RST_STREAM, 3,000 times, as fast as the socket takes them.
    block = header_block(grpc_headers(port))
    reset = struct.pack(">I", CANCEL)
    with RawConnection(port) as c:
        c.send(START)
        stream_id = 1
        for _ in range(30):
            batch = b""
            for _ in range(100):
                batch += frame(HEADERS, END_HEADERS, stream_id, block)
                batch += frame(RST_STREAM, 0, stream_id, reset)
                stream_id += 2
            if not c.send(batch):
                break
        c.read_until_closed(5.0)
        goaway = c.goaway()
        assert goaway is not None, "no GOAWAY after 3,000 rapid resets"
        assert goaway.error_code == ENHANCE_YOUR_CALM


def rapid_reset_logged(service: ServiceProcess) -> None:
    """The reset flood is logged as a WARNING naming the peer (one line per 10 s)."""
    rapid_reset(service.port)
    service.wait_for_log(
        r"WARNING .*closing connection from 127\.0\.0\.1:\d+ with GOAWAY ENHANCE_YOUR_CALM: "
        r"more than 1000 stream resets",
        timeout=REACT_S,
    )


def window_update_overflow(port: int) -> None:
    big = struct.pack(">I", 0x7FFFFFFF)
    block = header_block(grpc_headers(port))
    for payload in (
        frame(WINDOW_UPDATE, 0, 0, big) * 2,  # connection window over 2^31-1
        frame(HEADERS, END_HEADERS, 1, block) + frame(WINDOW_UPDATE, 0, 1, big) * 2,
        frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)),  # increment 0
        frame(WINDOW_UPDATE, 0, 0, b"\0\0\0"),  # short
        settings(s4=0x7FFFFFFF) + frame(HEADERS, END_HEADERS, 1, block) + settings(s4=0),
    ):
        with RawConnection(port) as c:
            c.send(START + payload)
            c.read_for(SETTLE_S)


def random_bytes(port: int) -> None:
    rng = random.Random(14)
    for size in (1, 9, 64, 1_000, 16_000, 100_000):
        with RawConnection(port) as c:
            c.send(START + rng.randbytes(size))
            c.read_for(SETTLE_S / 4)
        with RawConnection(port) as c:
            c.send(rng.randbytes(size))  # no preface at all
            c.read_for(SETTLE_S / 4)
    # Random frames with valid headers: type, flags, stream and body all random.
    with RawConnection(port) as c:
        c.send(START)
        for _ in range(200):
            body = rng.randbytes(rng.randrange(0, 64))
            kind = rng.randrange(256)
            flags = rng.randrange(256)
            if not c.send(frame(kind, flags, rng.randrange(8), body)):
                break
        c.read_for(SETTLE_S)


def _on_port(case: Callable[[int], None]) -> Callable[[ServiceProcess], None]:
    def run(service: ServiceProcess) -> None:
        case(service.port)

    run.__name__ = case.__name__
    return run


CASES: dict[str, Callable[[ServiceProcess], None]] = {
    case.__name__: case
    for case in (
        _on_port(unknown_frame_types),
        _on_port(bad_padding),
        _on_port(oversized_headers),
        _on_port(malformed_headers),
        _on_port(continuation_floods),
        _on_port(settings_floods),
        _on_port(ping_floods),
        _on_port(invalid_stream_ids),
        rapid_reset_logged,
        _on_port(window_update_overflow),
        _on_port(random_bytes),
    )
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_http2_leaves_the_service_serving(
    service: ServiceProcess, grpcio_modules: types.SimpleNamespace, name: str
) -> None:
    CASES[name](service)
    _probe(service, grpcio_modules)


def test_one_unknown_frame_no_longer_stops_the_service(
    service: ServiceProcess, grpcio_modules: types.SimpleNamespace
) -> None:
    """The issue's reproduction: preface, empty SETTINGS, one 2-byte frame of type 0xfa."""
    for kind in (0xFA, 0x0C):
        with RawConnection(service.port) as c:
            c.send(START + frame(kind, 0, 0, b"\x00\x00"))
            c.read_for(SETTLE_S)
            assert not c.closed_by_server and c.goaway() is None
    time.sleep(0.1)  # the crash came about 30 ms after the frame
    _probe(service, grpcio_modules)
