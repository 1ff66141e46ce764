"""The management plane's intent encoder over real HTTP (a server on 127.0.0.1, real clock).

Every failure is an EncodeError with its reason (the service answers DENY, fail-closed),
logged as a rate-limited WARNING.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest
import trio
from encoder_server import VECTOR, EncoderServer, running_encoder

from guardrefresh.enforce._encoder import (
    ENCODE_FAILURE_REASONS,
    TOTAL_TIMEOUT_S,
    EncodeError,
    IntentEncoder,
    open_intent_encoder,
)

INTENT = json.dumps({"id": "evt-1", "tenantId": "t", "note": "caf\u00e9"})


@pytest.fixture
def encoder_server() -> Iterator[EncoderServer]:
    with running_encoder() as server:
        yield server


async def encode(url: str | None, intent: str = INTENT) -> np.ndarray:
    async with open_intent_encoder(url) as encoder:
        return await encoder.encode(intent)


async def failure(url: str | None) -> EncodeError:
    with pytest.raises(EncodeError) as info:
        await encode(url)
    assert info.value.reason in ENCODE_FAILURE_REASONS
    return info.value


async def test_success_posts_the_intent_as_sent(encoder_server: EncoderServer) -> None:
    vector = await encode(encoder_server.url)
    assert vector.dtype == np.float32 and vector.shape == (128,)
    assert vector.tolist() == pytest.approx(VECTOR)
    assert encoder_server.paths == ["/encode/intent"]
    assert encoder_server.bodies == [INTENT.encode()]


async def test_base_url_with_a_path_and_a_trailing_slash(encoder_server: EncoderServer) -> None:
    await encode(encoder_server.url + "/api/v2/")
    assert encoder_server.paths == ["/api/v2/encode/intent"]


async def test_connections_are_reused(encoder_server: EncoderServer) -> None:
    async with open_intent_encoder(encoder_server.url) as encoder:
        for _ in range(5):
            await encoder.encode(INTENT)
    assert len(encoder_server.bodies) == 5


async def test_refused_port() -> None:
    # Bound but not listening: connecting is refused, and no one else can take the port.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        error = await failure(f"http://127.0.0.1:{port}")
    assert error.reason == "unreachable"
    assert f"127.0.0.1:{port}/encode/intent" in str(error)


async def test_non_2xx(encoder_server: EncoderServer) -> None:
    encoder_server.mode = "status_503"
    error = await failure(encoder_server.url)
    assert error.reason == "http_status"
    assert "HTTP 503" in str(error) and "encoder warming up" in str(error)


async def test_wrong_length(encoder_server: EncoderServer) -> None:
    encoder_server.mode = "short"
    error = await failure(encoder_server.url)
    assert error.reason == "wrong_length"
    assert "127 values, expected 128" in str(error)


@pytest.mark.parametrize(
    ("mode", "vector", "message"),
    [
        ("not_json", None, "not JSON"),
        ("nan", None, "NaN, infinite or out-of-range"),
        ("vector_of", ["x"] * 128, "other than numbers"),
        ("vector_of", [True] * 128, "other than numbers"),
        ("vector_of", [1e39] * 128, "out-of-range"),
    ],
)
async def test_bad_answers(
    encoder_server: EncoderServer, mode: str, vector: list[object] | None, message: str
) -> None:
    encoder_server.mode = mode
    if vector is not None:
        encoder_server.vector = vector
    error = await failure(encoder_server.url)
    assert error.reason == "bad_response"
    assert message in str(error)


async def test_timeout_is_the_total_budget() -> None:
    with running_encoder("slow", slow_s=TOTAL_TIMEOUT_S + 2) as server:
        start = time.monotonic()
        error = await failure(server.url)
        elapsed = time.monotonic() - start
    assert error.reason == "timeout"
    assert TOTAL_TIMEOUT_S - 0.05 <= elapsed < TOTAL_TIMEOUT_S + 1.0


async def test_not_configured() -> None:
    error = await failure(None)
    assert error.reason == "not_configured"
    assert "--management-plane-url" in str(error)


async def test_caller_cancellation_is_not_a_failure() -> None:
    with running_encoder("slow", slow_s=3) as server:
        async with open_intent_encoder(server.url) as encoder:
            with trio.move_on_after(0.2) as scope:
                await encoder.encode(INTENT)
    assert scope.cancelled_caught


async def test_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    encoder = IntentEncoder(None, None, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="guardrefresh.enforce._encoder")
    for _ in range(5):
        with pytest.raises(EncodeError):
            await encoder.encode(INTENT)
    assert len(caplog.records) == 1
    now[0] += 61
    with pytest.raises(EncodeError):
        await encoder.encode(INTENT)
    assert len(caplog.records) == 2
    assert "4 more not_configured failures" in caplog.records[1].getMessage()
    assert caplog.records[1].reason == "not_configured"  # type: ignore[attr-defined]
