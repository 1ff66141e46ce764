"""The management plane's intent encoder, for Enforce requests that carry no vector.

``POST <management plane URL>/encode/intent`` with the intent JSON as sent, answered
by ``{"vector": [128 numbers]}``: what the original data plane did (connect timeout
0.5 s, 1.5 s for the whole call). Every way that can fail is an :class:`EncodeError`
with a ``reason`` from :data:`ENCODE_FAILURE_REASONS`; the caller turns it into a
fail-closed DENY. Failures are logged as WARNING at most once per reason every
:data:`WARN_INTERVAL_S`, with the number of failures left unlogged in between, so an
encoder outage cannot flood the log at the request rate.

The HTTP client is httpx on Trio: :func:`open_intent_encoder` and
:meth:`IntentEncoder.encode` run in Trio (asyncio-side callers cross with
``trio_asyncio.trio_as_aio``). Connections are pooled and kept alive; environment
proxy variables are ignored (the management plane is a peer service, not the web).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Final

import httpx
import numpy as np
import numpy.typing as npt
import trio

__all__ = [
    "CONNECT_TIMEOUT_S",
    "ENCODE_FAILURE_REASONS",
    "ENCODE_PATH",
    "INTENT_DIM",
    "TOTAL_TIMEOUT_S",
    "WARN_INTERVAL_S",
    "EncodeError",
    "IntentEncoder",
    "open_intent_encoder",
]

logger = logging.getLogger(__name__)

INTENT_DIM: Final = 128
ENCODE_PATH: Final = "/encode/intent"
CONNECT_TIMEOUT_S: Final = 0.5
TOTAL_TIMEOUT_S: Final = 1.5
WARN_INTERVAL_S: Final = 60.0
#: A 128-number answer is about 3 KB; anything past this is not one.
MAX_RESPONSE_BYTES: Final = 256 * 1024

#: Every ``reason`` of an :class:`EncodeError` (a metric label).
ENCODE_FAILURE_REASONS: Final = (
    "not_configured",  # no --management-plane-url
    "unreachable",  # connection refused, DNS, reset, TLS: no HTTP answer
    "timeout",  # no complete answer within the connect or total timeout
    "http_status",  # an answer that is not 2xx
    "bad_response",  # 2xx, but not JSON with a "vector" list of finite numbers
    "wrong_length",  # a vector of another length than 128
)


class EncodeError(Exception):
    """The intent could not be encoded; ``str()`` says why (one line, for logs and telemetry).

    ``reason`` is one of :data:`ENCODE_FAILURE_REASONS`.
    """

    def __init__(self, reason: str, message: str) -> None:
        if reason not in ENCODE_FAILURE_REASONS:
            raise ValueError(f"unknown encode failure reason {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.message = message


class _WarnLimiter:
    """At most one WARNING per reason per interval; counts what it held back."""

    def __init__(self, interval_s: float, clock: Callable[[], float]) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warn(self, error: EncodeError) -> None:
        now = self._clock()
        last = self._last.get(error.reason)
        if last is not None and now - last < self._interval_s:
            self._held[error.reason] = self._held.get(error.reason, 0) + 1
            return
        held = self._held.pop(error.reason, 0)
        self._last[error.reason] = now
        logger.warning(
            "Intent encoding failed, Enforce answered DENY (fail-closed): %s%s",
            error.message,
            f" ({held} more {error.reason} failures since the last such warning)" if held else "",
            extra={"reason": error.reason, "suppressed": held},
        )


class IntentEncoder:
    """Posts intents to the management plane's encoder. Use :func:`open_intent_encoder`."""

    def __init__(
        self,
        url: str | None,
        client: httpx.AsyncClient | None,
        *,
        total_timeout_s: float = TOTAL_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.endpoint = None if url is None else url.rstrip("/") + ENCODE_PATH
        self._client = client
        self._total_timeout_s = total_timeout_s
        self._warnings = _WarnLimiter(WARN_INTERVAL_S, clock)

    @property
    def configured(self) -> bool:
        return self.endpoint is not None

    def failed(self, error: EncodeError) -> EncodeError:
        """Log ``error`` (rate-limited WARNING) and return it, for ``raise encoder.failed(...)``."""
        self._warnings.warn(error)
        return error

    def not_configured(self) -> EncodeError:
        """The failure of a request that needs the encoder when no URL is set (logged)."""
        return self.failed(
            EncodeError(
                "not_configured",
                "the request has no intent_vector and no management plane URL is "
                "configured (--management-plane-url) to encode it",
            )
        )

    async def encode(self, intent_json: str) -> npt.NDArray[np.float32]:
        """The 128-float vector of ``intent_json``, or :class:`EncodeError` (logged).

        Bounded by the total timeout. Cancellation (the caller's deadline, shutdown)
        propagates as usual and is not an encode failure.
        """
        if self._client is None or self.endpoint is None:
            raise self.not_configured()
        try:
            body = b""
            with trio.move_on_after(self._total_timeout_s) as scope:
                body = await self._post(self.endpoint, intent_json)
            if scope.cancelled_caught:
                raise EncodeError(
                    "timeout",
                    f"POST {self.endpoint}: no complete answer within {self._total_timeout_s:g}s",
                )
            return _vector(self.endpoint, body)
        except EncodeError as exc:
            raise self.failed(exc) from None

    async def _post(self, endpoint: str, intent_json: str) -> bytes:
        assert self._client is not None
        try:
            async with self._client.stream(
                "POST",
                endpoint,
                content=intent_json.encode("utf-8", "surrogatepass"),
                headers={"content-type": "application/json"},
            ) as response:
                if not response.is_success:
                    snippet = (await _read_capped(response, 200)).decode("utf-8", "replace")
                    raise EncodeError(
                        "http_status",
                        f"POST {endpoint} answered HTTP {response.status_code}"
                        + (f": {' '.join(snippet.split())}" if snippet.strip() else ""),
                    )
                body = await _read_capped(response, MAX_RESPONSE_BYTES + 1)
        except httpx.TimeoutException as exc:
            raise EncodeError("timeout", f"POST {endpoint} timed out: {_describe(exc)}") from None
        except httpx.HTTPError as exc:
            raise EncodeError("unreachable", f"POST {endpoint} failed: {_describe(exc)}") from None
        if len(body) > MAX_RESPONSE_BYTES:
            raise EncodeError(
                "bad_response", f"POST {endpoint}: answer larger than {MAX_RESPONSE_BYTES} bytes"
            )
        return body


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


def _describe(exc: httpx.HTTPError) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _vector(endpoint: str, body: bytes) -> npt.NDArray[np.float32]:
    def bad(problem: str) -> EncodeError:
        return EncodeError("bad_response", f"POST {endpoint}: {problem}")

    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise bad("the answer is not JSON") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("vector"), list):
        raise bad('the answer has no "vector" list')
    values = payload["vector"]
    if len(values) != INTENT_DIM:
        raise EncodeError(
            "wrong_length",
            f"POST {endpoint}: the vector has {len(values)} values, expected {INTENT_DIM}",
        )
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise bad("the vector holds something other than numbers")
    with np.errstate(over="ignore"):
        vector = np.array(values, dtype=np.float32)
    if not np.isfinite(vector).all() or not all(math.isfinite(v) for v in values):
        raise bad("the vector holds NaN, infinite or out-of-range values")
    return vector


@asynccontextmanager
async def open_intent_encoder(url: str | None) -> AsyncIterator[IntentEncoder]:
    """An :class:`IntentEncoder` for ``url`` (None: not configured, every encode fails).

    Runs in Trio. The connection pool is closed on the way out.
    """
    if url is None:
        yield IntentEncoder(None, None)
        return
    timeout = httpx.Timeout(TOTAL_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
        yield IntentEncoder(url, client)
