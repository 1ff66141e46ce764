"""ServiceMetrics and serve_metrics: scraped over real HTTP on 127.0.0.1.

The scraper is urllib in a worker thread, an independent peer with its own I/O:
real clock throughout. Staleness uses a fake wall clock given to ServiceMetrics.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import grpc
import prometheus_client
import pytest
import trio
import trio_asyncio
from grpclib.const import Status
from helpers_grpc import GET_RULE, GET_RULE_STATS, open_client, open_host
from prometheus_client.parser import text_string_to_metric_families
from support.waiting import in_thread, wait_until_async

from guardrefresh._version import __version__
from guardrefresh.cache import CacheStats
from guardrefresh.enforce import ENCODE_FAILURE_REASONS
from guardrefresh.metrics import (
    METRICS_PATH,
    REFRESH_ERROR_REASONS,
    ServiceMetrics,
    grpc_code_name,
    refresh_error_reason,
    serve_metrics,
)
from guardrefresh.proto import rule_installation as pb
from guardrefresh.refresh import RefreshError, RefreshStats, RefreshTrigger, SchedulerStatus
from guardrefresh.server import EdgeCounts, EdgeLimits, LoopErrorHandler
from guardrefresh.storage import (
    CorruptStoreError,
    StorageError,
    StoreBusyError,
    StoreDirectoryMissingError,
    StorePermissionError,
    StoreWriteError,
    UnsafeStoreError,
    UnsupportedVersionError,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

NOW_S = 1_800_000_000.0


# ------------------------------------------------------------------- helpers ---


def _get(url: str) -> tuple[int, str, str]:
    """Status, content type and body of a GET; urllib raises for >= 400, so catch it."""
    try:
        with urllib.request.urlopen(url, timeout=5.0) as response:
            return response.status, response.headers["content-type"], response.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers["content-type"], err.read().decode()


async def scrape(port: int) -> Samples:
    status, content_type, body = await trio.to_thread.run_sync(
        _get, f"http://127.0.0.1:{port}{METRICS_PATH}"
    )
    assert status == 200
    assert content_type.startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


@asynccontextmanager
async def open_metrics_server(metrics: ServiceMetrics) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(functools.partial(serve_metrics, metrics.registry, port=0))
        yield port
        nursery.cancel_scope.cancel()


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# Frozen values: safe to share as defaults.
EMPTY_CACHE = CacheStats(0, 100, 0, 0, 0, 0)
NEVER_REFRESHED = SchedulerStatus(
    enabled=True,
    running=True,
    last_success_ms=0,
    next_refresh_ms=0,
    consecutive_failures=0,
    last_error="",
    current_interval_s=21600.0,
    backoff_s=0.0,
    last_stats=None,
)


@attrs.define
class FakeService:
    """What the bound callbacks read; tests change it between scrapes."""

    cache: CacheStats = EMPTY_CACHE
    warm_rules: int = 0
    warm_bytes: int = 0
    bridge_version: int = 0
    status: SchedulerStatus = NEVER_REFRESHED

    def bind(self, metrics: ServiceMetrics, staleness_limit_s: float = 600.0) -> None:
        metrics.bind(
            hot_cache_stats=lambda: self.cache,
            warm_rules=lambda: self.warm_rules,
            warm_bytes=lambda: self.warm_bytes,
            bridge_version=lambda: self.bridge_version,
            scheduler_status=lambda: self.status,
            staleness_limit_s=staleness_limit_s,
        )


def stats(
    trigger: RefreshTrigger = RefreshTrigger.PERIODIC,
    *,
    duration_ms: float = 30.0,
    timestamp_ms: int = int(NOW_S * 1000),
    added: int = 0,
    removed: int = 0,
    changed: int = 0,
) -> RefreshStats:
    return RefreshStats(
        rules_refreshed=10,
        duration_ms=duration_ms,
        timestamp_ms=timestamp_ms,
        trigger=trigger,
        added=added,
        removed=removed,
        changed=changed,
        unchanged=not (added or removed or changed),
    )


# -------------------------------------------------------------- the exposition ---


async def test_event_metrics_move_with_observations() -> None:
    metrics = ServiceMetrics()
    async with open_metrics_server(metrics) as port:
        before = await scrape(port)
        # Known label values are there from the start, at 0.
        for trigger in ("startup", "periodic", "rpc", "manual"):
            for result in ("success", "failure"):
                labels = {"trigger": trigger, "result": result}
                assert value(before, "guard_scheduler_refresh_total", **labels) == 0
                assert (
                    value(before, "guard_scheduler_refresh_duration_seconds_count", **labels) == 0
                )
        for reason in REFRESH_ERROR_REASONS:
            assert value(before, "guard_scheduler_refresh_errors_total", reason=reason) == 0
        assert value(before, "guardrefresh_warm_storage_loads_total") == 0
        assert value(before, "guardrefresh_build_info", version=__version__) == 1
        # Unbound: no state metrics yet.
        assert "guardrefresh_hot_cache_rules" not in names(before)

        metrics.observe_load()
        metrics.observe_refresh(stats(duration_ms=30.0, added=3, changed=2))
        metrics.observe_refresh(stats(RefreshTrigger.RPC, duration_ms=2000.0), trigger="manual")
        metrics.observe_refresh_failure("rpc", "corrupt", 0.25)
        metrics.observe_refresh_failure(RefreshTrigger.PERIODIC, "cancelled", 0.0)
        after = await scrape(port)

    success = {"result": "success"}
    failure = {"result": "failure"}
    assert value(after, "guard_scheduler_refresh_total", trigger="periodic", **success) == 1
    assert value(after, "guard_scheduler_refresh_total", trigger="manual", **success) == 1
    assert value(after, "guard_scheduler_refresh_total", trigger="rpc", **success) == 0
    assert value(after, "guard_scheduler_refresh_total", trigger="rpc", **failure) == 1
    assert value(after, "guard_scheduler_refresh_total", trigger="periodic", **failure) == 1
    assert value(after, "guard_scheduler_refresh_errors_total", reason="corrupt") == 1
    assert value(after, "guard_scheduler_refresh_errors_total", reason="cancelled") == 1
    assert value(after, "guard_scheduler_refresh_errors_total", reason="io") == 0
    # Durations in seconds, in the bucket they belong to.
    periodic_ok = {"trigger": "periodic", **success}
    hist = "guard_scheduler_refresh_duration_seconds"
    assert value(after, f"{hist}_sum", **periodic_ok) == pytest.approx(0.03)
    assert value(after, f"{hist}_bucket", le="0.025", **periodic_ok) == 0
    assert value(after, f"{hist}_bucket", le="0.05", **periodic_ok) == 1
    assert value(after, f"{hist}_sum", trigger="manual", **success) == pytest.approx(2.0)
    assert value(after, f"{hist}_sum", trigger="rpc", **failure) == pytest.approx(0.25)
    assert value(after, f"{hist}_bucket", le="+Inf", trigger="rpc", **failure) == 1
    assert value(after, "guardrefresh_refresh_rule_changes_total", change="added") == 3
    assert value(after, "guardrefresh_refresh_rule_changes_total", change="changed") == 2
    assert value(after, "guardrefresh_refresh_rule_changes_total", change="removed") == 0
    assert value(after, "guardrefresh_warm_storage_loads_total") == 1


async def test_no_created_series_are_exposed() -> None:
    # prometheus_client adds a `<name>_created` timestamp per counter and histogram
    # series unless told not to, doubling the exposition for nothing.
    prometheus_client.enable_created_metrics()  # as a fresh process starts
    metrics = ServiceMetrics()
    metrics.observe_load()
    metrics.observe_refresh(stats(duration_ms=30.0, added=1))
    async with open_metrics_server(metrics) as port:
        status, _, body = await trio.to_thread.run_sync(
            _get, f"http://127.0.0.1:{port}{METRICS_PATH}"
        )
    assert status == 200
    assert "guard_scheduler_refresh_total{" in body  # counters are there...
    assert "_created" not in body  # ...without their creation timestamps


async def test_state_metrics_are_read_from_the_bound_callbacks_at_each_scrape() -> None:
    clock = FakeClock(NOW_S)
    metrics = ServiceMetrics(wall_clock=clock)
    service = FakeService()
    service.bind(metrics, staleness_limit_s=600.0)
    async with open_metrics_server(metrics) as port:
        first = await scrape(port)
        assert value(first, "guardrefresh_hot_cache_rules") == 0
        assert value(first, "guardrefresh_hot_cache_capacity") == 100
        assert value(first, "guard_scheduler_last_success_timestamp_seconds") == 0
        assert value(first, "guard_scheduler_stale") == 1  # never refreshed
        assert value(first, "guard_scheduler_staleness_limit_seconds") == 600

        service.cache = CacheStats(
            entries=42, capacity=100, hits=7, misses=3, total_evictions=2, total_evicted=20
        )
        service.warm_rules, service.warm_bytes, service.bridge_version = 1234, 987_654, 17
        last_ms = int((NOW_S - 60) * 1000)
        service.status = attrs.evolve(
            service.status,
            last_success_ms=last_ms,
            next_refresh_ms=last_ms + 21_600_000,
            consecutive_failures=2,
            current_interval_s=30_000.0,
            backoff_s=120.0,
            running=False,
        )
        second = await scrape(port)
        assert value(second, "guardrefresh_hot_cache_rules") == 42
        assert value(second, "guardrefresh_hot_cache_hits_total") == 7
        assert value(second, "guardrefresh_hot_cache_misses_total") == 3
        assert value(second, "guardrefresh_hot_cache_evictions_total") == 2
        assert value(second, "guardrefresh_hot_cache_evicted_total") == 20
        assert value(second, "guardrefresh_warm_storage_rules") == 1234
        assert value(second, "guardrefresh_warm_storage_bytes") == 987_654
        assert value(second, "guardrefresh_bridge_version") == 17
        assert value(second, "guard_scheduler_last_success_timestamp_seconds") == NOW_S - 60
        assert value(second, "guard_scheduler_next_refresh_timestamp_seconds") == (
            NOW_S - 60 + 21_600
        )
        assert value(second, "guard_scheduler_consecutive_failures") == 2
        assert value(second, "guard_scheduler_interval_seconds") == 30_000
        assert value(second, "guard_scheduler_backoff_seconds") == 120
        assert value(second, "guard_scheduler_enabled") == 1
        assert value(second, "guard_scheduler_running") == 0
        assert value(second, "guard_scheduler_stale") == 0

        clock.now = NOW_S + 541  # 601 s after the last success: past the 600 s limit
        assert value(await scrape(port), "guard_scheduler_stale") == 1

        # A success observed directly counts even before the scheduler's status shows it.
        metrics.observe_refresh(stats(timestamp_ms=int(clock.now * 1000)))
        third = await scrape(port)
        assert value(third, "guard_scheduler_stale") == 0
        assert value(third, "guard_scheduler_last_success_timestamp_seconds") == NOW_S + 541


async def test_a_failing_callback_costs_only_its_own_metrics(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = ServiceMetrics()

    def broken() -> CacheStats:
        raise RuntimeError("cache stats unavailable")

    service = FakeService()
    metrics.bind(
        hot_cache_stats=broken,
        warm_rules=lambda: 5,
        warm_bytes=lambda: 6,
        bridge_version=lambda: 7,
        scheduler_status=lambda: service.status,
        staleness_limit_s=1.0,
    )
    async with open_metrics_server(metrics) as port:
        with caplog.at_level(logging.ERROR, logger="guardrefresh.metrics"):
            samples = await scrape(port)
    assert "guardrefresh_hot_cache_rules" not in names(samples)
    assert value(samples, "guardrefresh_warm_storage_rules") == 5
    assert value(samples, "guard_scheduler_stale") == 1
    assert any(
        r.exc_info and "cache stats unavailable" in str(r.exc_info[1]) for r in caplog.records
    )


async def test_rpc_metrics_use_go_grpc_prometheus_names_and_codes() -> None:
    metrics = ServiceMetrics()
    metrics.add_grpc_services([pb.DataPlaneBase()])
    metrics.observe_rpc(GET_RULE, Status.OK, 0.002)
    metrics.observe_rpc(GET_RULE, Status.UNAVAILABLE, 0.5)
    metrics.observe_rpc(GET_RULE, "DEADLINE_EXCEEDED", 3.0)
    metrics.observe_rpc("/grpc.health.v1.Health/Watch", "Canceled", 12.0)
    metrics.observe_rpc("/some.Other/Thing", Status.NOT_FOUND, 0.0)
    async with open_metrics_server(metrics) as port:
        samples = await scrape(port)

    get_rule = {
        "grpc_type": "unary",
        "grpc_service": "rule_installation.DataPlane",
        "grpc_method": "GetRule",
    }
    handled = "grpc_server_handled_total"
    assert value(samples, handled, grpc_code="OK", **get_rule) == 1
    assert value(samples, handled, grpc_code="Unavailable", **get_rule) == 1
    assert value(samples, handled, grpc_code="DeadlineExceeded", **get_rule) == 1
    assert value(samples, "grpc_server_handling_seconds_count", **get_rule) == 3
    assert value(samples, "grpc_server_handling_seconds_sum", **get_rule) == pytest.approx(3.502)
    assert value(samples, "grpc_server_handling_seconds_bucket", le="0.0025", **get_rule) == 1
    # Described methods start at 0 with code OK, as go-grpc-prometheus initializes them.
    stats_labels = {**get_rule, "grpc_method": "GetRuleStats"}
    assert value(samples, handled, grpc_code="OK", **stats_labels) == 0
    watch = {"grpc_type": "server_stream", "grpc_service": "grpc.health.v1.Health"}
    assert value(samples, handled, grpc_method="Watch", grpc_code="Canceled", **watch) == 1
    other = {"grpc_type": "unknown", "grpc_service": "some.Other", "grpc_method": "Thing"}
    assert value(samples, handled, grpc_code="NotFound", **other) == 1


async def test_grpc_host_reports_its_calls_into_the_metrics() -> None:
    metrics = ServiceMetrics()
    async with (
        open_host(on_call_done=metrics.observe_rpc) as (host, _),
        open_client(host.port) as client,
        open_metrics_server(metrics) as port,
    ):
        metrics.add_grpc_services([pb.DataPlaneBase()])
        assert (await in_thread(client.get_rule_stats)).code is grpc.StatusCode.OK
        assert (await in_thread(client.get_rule, "sleep:0.1")).code is grpc.StatusCode.OK
        await wait_until_async(lambda: host.in_flight == 0)
        samples = await scrape(port)
    labels = {"grpc_type": "unary", "grpc_service": "rule_installation.DataPlane"}
    handled = "grpc_server_handled_total"
    for path in (GET_RULE, GET_RULE_STATS):
        method = path.rsplit("/", 1)[1]
        assert value(samples, handled, grpc_method=method, grpc_code="OK", **labels) == 1
    assert (
        value(samples, "grpc_server_handling_seconds_sum", grpc_method="GetRule", **labels) >= 0.09
    )


# ------------------------------------------------------------------ HTTP side ---


async def test_only_get_metrics_is_served() -> None:
    metrics = ServiceMetrics()
    async with open_metrics_server(metrics) as port:
        base = f"http://127.0.0.1:{port}"
        status, _, body = await trio.to_thread.run_sync(_get, f"{base}/")
        assert status == 404 and "/metrics" in body
        status, _, _ = await trio.to_thread.run_sync(_get, f"{base}/metrics/extra")
        assert status == 404

        def post() -> tuple[int, str | None]:
            request = urllib.request.Request(f"{base}/metrics", data=b"x", method="POST")
            try:
                urllib.request.urlopen(request, timeout=5.0).close()
            except urllib.error.HTTPError as err:
                with err:
                    return err.code, err.headers["allow"]
            return 200, None

        assert await trio.to_thread.run_sync(post) == (405, "GET, HEAD")

        def head() -> tuple[int, bytes]:
            request = urllib.request.Request(f"{base}/metrics", method="HEAD")
            with urllib.request.urlopen(request, timeout=5.0) as response:
                return response.status, response.read()

        assert await trio.to_thread.run_sync(head) == (200, b"")


async def test_cancellation_closes_the_port_and_open_connections() -> None:
    async def serve_then_cancel() -> int:
        # Everything lives in here, so gc.collect() below finds what it would leak.
        metrics = ServiceMetrics()
        async with trio.open_nursery() as nursery:
            port: int = await nursery.start(
                functools.partial(serve_metrics, metrics.registry, port=0)
            )
            assert await scrape(port)  # served
            # An idle keep-alive connection, and one mid-request (headers not finished).
            idle = await trio.open_tcp_stream("127.0.0.1", port)
            await idle.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            partial = await trio.open_tcp_stream("127.0.0.1", port)
            await partial.send_all(b"GET /metrics HTTP/1.1\r\n")
            await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
        # The server closed both: each reads to EOF.
        for stream in (idle, partial):
            with trio.fail_after(2):
                while await stream.receive_some():
                    pass
            await stream.aclose()
        return port

    port = await serve_then_cancel()
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)
    # Anything left unclosed warns when collected, and filterwarnings=error fails the test.
    gc.collect()


async def test_bind_failure_raises_oserror_before_ready() -> None:
    metrics = ServiceMetrics()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with trio.open_nursery() as nursery:
            with pytest.raises(OSError):
                await nursery.start(functools.partial(serve_metrics, metrics.registry, port=port))
    gc.collect()
    with pytest.raises(ValueError, match="port"):
        await serve_metrics(metrics.registry, port=70000)


async def test_the_listening_socket_is_not_inherited_by_child_processes() -> None:
    metrics = ServiceMetrics()
    async with open_metrics_server(metrics) as port:
        found = [_listener_inheritable(int(p.name), port) for p in Path("/proc/self/fd").iterdir()]
    assert [inheritable for inheritable in found if inheritable is not None] == [False]


def _listener_inheritable(fd: int, port: int) -> bool | None:
    """Whether ``fd`` is inheritable if it listens on ``port``; None for any other fd."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None  # not a socket (or already gone)
    try:
        name = sock.getsockname()
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if isinstance(name, tuple) and name[1:2] == (port,) and listening:
            return sock.get_inheritable()
        return None
    finally:
        sock.detach()  # borrowed: never close a descriptor we do not own


# ---------------------------------------------------------------- the registry ---


def test_instances_are_independent_and_leave_the_default_registry_alone() -> None:
    default_before = {m.name for m in prometheus_client.REGISTRY.collect()}
    first, second = ServiceMetrics(), ServiceMetrics()
    first.observe_load()
    first.observe_load()
    second.observe_load()
    assert first.registry is not second.registry
    assert first.registry.get_sample_value("guardrefresh_warm_storage_loads_total") == 2
    assert second.registry.get_sample_value("guardrefresh_warm_storage_loads_total") == 1
    default_after = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert default_after == default_before
    assert not any(n.startswith(("guard", "grpc_server")) for n in default_after)


def test_misuse_is_refused() -> None:
    metrics = ServiceMetrics()
    service = FakeService()
    with pytest.raises(ValueError, match="staleness_limit_s"):
        service.bind(metrics, staleness_limit_s=0.0)
    service.bind(metrics)
    with pytest.raises(RuntimeError, match="once"):
        service.bind(metrics)
    with pytest.raises(ValueError, match="reason"):
        metrics.observe_refresh_failure("rpc", "disk on fire", 1.0)
    with pytest.raises(ValueError, match="duration_s"):
        metrics.observe_refresh_failure("rpc", "io", -1.0)
    with pytest.raises(ValueError, match="duration_s"):
        metrics.observe_refresh_failure("rpc", "io", float("nan"))
    with pytest.raises(ValueError, match="trigger"):
        metrics.observe_refresh_failure("", "io", 1.0)
    with pytest.raises(ValueError, match="gRPC status code"):
        metrics.observe_rpc(GET_RULE, "TEAPOT", 0.1)
    with pytest.raises(ValueError, match="method path"):
        metrics.observe_rpc("GetRule", Status.OK, 0.1)
    with pytest.raises(ValueError, match="seconds"):
        metrics.observe_rpc(GET_RULE, Status.OK, float("inf"))
    with pytest.raises(TypeError, match="grpclib service"):
        metrics.add_grpc_services([object()])
    # Nothing half-counted by the refused calls.
    assert (
        metrics.registry.get_sample_value(
            "guard_scheduler_refresh_total", {"trigger": "rpc", "result": "failure"}
        )
        == 0
    )


def test_grpc_code_names() -> None:
    assert [grpc_code_name(s) for s in Status] == [
        "OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
        "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
        "Aborted", "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss",
        "Unauthenticated",
    ]  # fmt: skip
    assert grpc_code_name("UNAVAILABLE") == grpc_code_name("Unavailable") == "Unavailable"


# ------------------------------------------------------------ error reasons ---


def _raised(make: Callable[[], BaseException]) -> BaseException:
    try:
        raise make()
    except BaseException as exc:
        return exc


def _wrapped_like_the_refresh_service(error: BaseException) -> RefreshError:
    """A joiner's RefreshError: a RefreshError from the one that wrapped the storage error."""
    try:
        try:
            try:
                raise error
            except StorageError as exc:
                raise RefreshError(str(exc)) from exc
        except RefreshError as flight_error:
            raise RefreshError(str(flight_error)) from flight_error
    except RefreshError as exc:
        return exc


STORE = Path("/var/lib/guard/warm_storage.bin")
STORAGE_ERRORS = [
    (CorruptStoreError(STORE, "anchors", 128, "checksum mismatch"), "corrupt"),
    (UnsupportedVersionError(STORE, 9, (1, 2)), "version"),
    (StorePermissionError(STORE, "read"), "permission"),
    (UnsafeStoreError(f"{STORE} is writable by others"), "unsafe"),
    (StoreDirectoryMissingError(STORE.parent), "missing"),
    (StoreBusyError("locked by pid 12"), "busy"),
    (StoreWriteError("disk full"), "io"),
    (StorageError("something else"), "io"),
]


@pytest.mark.parametrize(("error", "reason"), STORAGE_ERRORS, ids=[r for _, r in STORAGE_ERRORS])
def test_refresh_error_reason_maps_each_storage_error(error: StorageError, reason: str) -> None:
    assert reason in REFRESH_ERROR_REASONS
    assert refresh_error_reason(error) == reason
    assert refresh_error_reason(_wrapped_like_the_refresh_service(error)) == reason


def test_refresh_error_reason_looks_past_generic_causes() -> None:
    # A storage error raised while handling an OSError: the storage class decides.
    def corrupt_from_os_error() -> BaseException:
        try:
            raise FileNotFoundError("segment")
        except FileNotFoundError:
            return _raised(lambda: CorruptStoreError(STORE, "journal", 0, "truncated"))

    assert refresh_error_reason(corrupt_from_os_error()) == "corrupt"
    # Plain OS errors, also as causes.
    assert refresh_error_reason(PermissionError(13, "denied")) == "permission"
    assert refresh_error_reason(FileNotFoundError(2, "gone")) == "missing"
    assert refresh_error_reason(OSError(28, "no space")) == "io"
    os_cause = RefreshError("load failed")
    os_cause.__cause__ = FileNotFoundError(2, "gone")
    assert refresh_error_reason(os_cause) == "missing"
    # No known cause: other; a suppressed context does not count.
    assert refresh_error_reason(RefreshError("unexpected error: KeyError('x')")) == "other"
    assert refresh_error_reason(ValueError("bug")) == "other"
    suppressed = RefreshError("load failed")
    suppressed.__context__ = StoreWriteError("x")
    suppressed.__suppress_context__ = True
    assert refresh_error_reason(suppressed) == "other"
    # A cycle in the chain ends the walk.
    looped = RefreshError("a")
    looped.__cause__ = RefreshError("b")
    looped.__cause__.__cause__ = looped
    assert refresh_error_reason(looped) == "other"


async def test_refresh_error_reason_for_cancellation() -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled as exc:
            cancelled = exc
            raise
    error = RefreshError("refresh cancelled: the service is shutting down")
    error.__cause__ = cancelled
    assert refresh_error_reason(error) == "cancelled"
    assert refresh_error_reason(asyncio.CancelledError()) == "cancelled"


# ----------------------------------------------------------------- enforce ---


@attrs.frozen
class FakeOutcome:
    decision_name: str = "ALLOW"
    rules_evaluated: int = 3
    total_us: int = 1500
    encode_us: int = 0
    encoded: bool = False
    encode_failure: str | None = None
    refused: bool = False


def test_enforce_metrics_count_decisions_latency_rules_and_encoder_failures() -> None:
    metrics = ServiceMetrics()
    get = metrics.registry.get_sample_value
    for name in ("ALLOW", "DENY", "MODIFY", "STEP_UP", "DEFER"):
        assert get("guardrefresh_enforce_total", {"decision": name}) == 0
    for reason in ENCODE_FAILURE_REASONS:
        assert get("guardrefresh_enforce_encode_failures_total", {"reason": reason}) == 0

    metrics.enforce.observe(FakeOutcome())
    metrics.enforce.observe(FakeOutcome(decision_name="STEP_UP", rules_evaluated=700))
    metrics.enforce.observe(FakeOutcome(encoded=True, encode_us=4000, total_us=5000))
    metrics.enforce.observe(
        FakeOutcome(
            decision_name="DENY", rules_evaluated=0, encoded=True, encode_failure="timeout",
            encode_us=1_500_000, total_us=1_500_100,
        )
    )  # fmt: skip
    # A request refused with INVALID_ARGUMENT decided nothing: no Enforce metric moves.
    metrics.enforce.observe(FakeOutcome(decision_name="DENY", rules_evaluated=0, refused=True))
    assert get("guardrefresh_enforce_total", {"decision": "ALLOW"}) == 2
    assert get("guardrefresh_enforce_total", {"decision": "STEP_UP"}) == 1
    assert get("guardrefresh_enforce_total", {"decision": "DENY"}) == 1
    assert get("guardrefresh_enforce_duration_seconds_count") == 4
    assert get("guardrefresh_enforce_duration_seconds_sum") == pytest.approx(1.5081)
    assert get("guardrefresh_enforce_duration_seconds_bucket", {"le": "0.0025"}) == 2
    assert get("guardrefresh_enforce_rules_evaluated_sum") == 706
    assert get("guardrefresh_enforce_rules_evaluated_bucket", {"le": "0.0"}) == 1
    assert get("guardrefresh_enforce_rules_evaluated_bucket", {"le": "500.0"}) == 3
    # Only successful encodes are timed; failures are counted by reason.
    assert get("guardrefresh_enforce_encode_duration_seconds_count") == 1
    assert get("guardrefresh_enforce_encode_failures_total", {"reason": "timeout"}) == 1


def test_enforce_metrics_refuse_unknown_labels() -> None:
    metrics = ServiceMetrics()
    with pytest.raises(ValueError, match="decision must be one of"):
        metrics.enforce.observe(FakeOutcome(decision_name="BLOCK"))
    with pytest.raises(ValueError, match="unknown encode failure reason"):
        metrics.enforce.observe(FakeOutcome(decision_name="DENY", encode_failure="gremlins"))
    assert metrics.registry.get_sample_value("guardrefresh_enforce_duration_seconds_count") == 0


# --------------------------------------------------------------- connections ---


async def test_connection_metrics_are_read_from_the_host_at_each_scrape() -> None:
    metrics = ServiceMetrics()
    limits = EdgeLimits(max_connections=2, idle_timeout_s=0.5)
    async with (
        open_host(edge_limits=limits) as (host, _),
        open_metrics_server(metrics) as port,
    ):
        loop = trio_asyncio.current_loop.get()
        handler = loop.get_exception_handler()
        assert isinstance(handler, LoopErrorHandler)
        metrics.bind_edge(
            counts=lambda: host.edge_counts,
            open_connections=lambda: host.open_connections,
            held_requests=lambda: host.held_requests,
            max_connections=host.edge_limits.max_connections,
            loop_errors=handler,
        )
        first = await scrape(port)
        assert value(first, "guardrefresh_connections_max") == 2
        assert value(first, "guardrefresh_connections_open") == 0
        assert value(first, "guardrefresh_connections_refused_total") == 0
        assert value(first, "guardrefresh_requests_awaiting_body") == 0
        for reason in ("idle", "calm", "error"):
            assert value(first, "guardrefresh_connections_closed_total", reason=reason) == 0
        assert value(first, "guardrefresh_accept_errors_total") == 0
        for kind in ("connection", "other"):
            assert value(first, "guardrefresh_loop_errors_total", kind=kind) == 0

        # Three silent clients: two admitted, the third closed as soon as accepted; the
        # two are closed once idle for half a second.
        streams = [await trio.open_tcp_stream("127.0.0.1", host.port) for _ in range(3)]
        try:
            await wait_until_async(lambda: host.edge_counts.refused == 1)
            second = await scrape(port)
            assert value(second, "guardrefresh_connections_refused_total") == 1
            assert value(second, "guardrefresh_connections_open") == 2
            await wait_until_async(lambda: host.edge_counts.idle_closed == 2, limit_s=5.0)
            # What reaches the loop's handler: an accept() out of descriptors.
            loop.call_exception_handler(
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(24, "Too many open files"),
                }
            )
            third = await scrape(port)
        finally:
            for stream in streams:
                await stream.aclose()
    assert value(third, "guardrefresh_connections_closed_total", reason="idle") == 2
    assert value(third, "guardrefresh_connections_closed_total", reason="calm") == 0
    assert value(third, "guardrefresh_accept_errors_total") == 1
    assert value(third, "guardrefresh_loop_errors_total", kind="other") == 0


async def test_connection_metrics_without_a_loop_handler_and_with_a_failing_callback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = ServiceMetrics()
    counts = EdgeCounts(refused=3, idle_closed=4, calm_closed=5, error_closed=6)

    def broken() -> int:
        raise RuntimeError("no connection count")

    open_connections: list[Callable[[], int]] = [lambda: 7]
    metrics.bind_edge(
        counts=lambda: counts,
        open_connections=lambda: open_connections[0](),
        held_requests=lambda: 2,
        max_connections=9,
    )
    async with open_metrics_server(metrics) as port:
        samples = await scrape(port)
        assert value(samples, "guardrefresh_connections_open") == 7
        assert value(samples, "guardrefresh_requests_awaiting_body") == 2
        assert value(samples, "guardrefresh_connections_refused_total") == 3
        assert value(samples, "guardrefresh_connections_closed_total", reason="calm") == 5
        assert value(samples, "guardrefresh_connections_closed_total", reason="error") == 6
        assert "guardrefresh_accept_errors_total" not in names(samples)
        open_connections[0] = broken
        with caplog.at_level(logging.ERROR, logger="guardrefresh.metrics"):
            samples = await scrape(port)
    assert "guardrefresh_connections_open" not in names(samples)
    assert "guardrefresh_build_info" in names(samples)
    assert "reading connection counts failed" in caplog.text
    with pytest.raises(ValueError, match="max_connections"):
        ServiceMetrics().bind_edge(
            counts=lambda: counts,
            open_connections=lambda: 0,
            held_requests=lambda: 0,
            max_connections=0,
        )
