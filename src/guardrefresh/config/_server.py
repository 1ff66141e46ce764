"""The ``[server]`` section: where gRPC listens, its limits, the shutdown grace."""

from __future__ import annotations

import pathlib

import attrs

from ..bridge import DEFAULT_MAX_RULES_PER_INSTALL
from ..settings import (
    HOST,
    INTEGER,
    NON_EMPTY_NO_SPACE,
    OPTIONAL_PATH,
    SECONDS,
    above,
    at_least,
    between,
    section,
    setting,
)

__all__ = ["ServerConfig"]


@section("server")
@attrs.frozen(kw_only=True)
class ServerConfig:
    """The gRPC server: where it listens, message and request limits, shutdown grace."""

    host: str = setting(
        HOST,
        "127.0.0.1",
        constraint=NON_EMPTY_NO_SPACE,
        help="Address the gRPC server listens on. The default is loopback only; "
        "0.0.0.0 (or ::) listens on all interfaces.",
    )
    port: int = setting(
        INTEGER,
        50051,
        constraint=between(0, 65535),
        help="TCP port of the gRPC server; 0 picks a free port.",
    )
    shutdown_grace: float = setting(
        SECONDS,
        10.0,
        constraint=at_least(0),
        help="On SIGTERM/SIGINT, seconds in-flight requests get to finish before they are cut off.",
    )
    max_message_bytes: int = setting(
        INTEGER,
        4 * 1024 * 1024,
        constraint=at_least(1024),
        help="Largest gRPC request message accepted, in bytes; a larger one is refused with RESOURCE_EXHAUSTED before it is buffered.",
    )
    max_rules_per_install: int = setting(
        INTEGER,
        DEFAULT_MAX_RULES_PER_INSTALL,
        constraint=at_least(1),
        help="Most rules a single InstallRules request may carry.",
    )
    #: 0: derived from the open-file limit (see ``guardrefresh.server.max_connections_for``).
    max_connections: int = setting(
        INTEGER,
        0,
        constraint=at_least(0),
        help="Most client connections open at once; a connection beyond it is closed as soon "
        "as it is accepted. 0 = the open-file limit minus 64 (at least 16), leaving "
        "descriptors for storage and metrics.",
    )
    #: 0: never.
    idle_timeout: float = setting(
        SECONDS,
        300.0,
        constraint=at_least(0),
        help="Seconds a connection may stay open without an open stream before it gets "
        "GOAWAY and is closed; 0 = never.",
    )
    max_concurrent_streams: int = setting(
        INTEGER,
        100,
        constraint=between(1, 2**31 - 1),
        help="HTTP/2 streams (calls) a client may have open at once on one connection, "
        "advertised in SETTINGS_MAX_CONCURRENT_STREAMS; a client that opens more loses "
        "the connection.",
    )
    max_pending_request_bytes: int = setting(
        INTEGER,
        64 * 1024 * 1024,
        constraint=at_least(1024),
        help="Bytes of request messages being received or waiting to run, in all; a call "
        "whose message would go beyond it is refused with RESOURCE_EXHAUSTED.",
    )
    request_timeout: float = setting(
        SECONDS,
        30.0,
        constraint=above(0),
        help="Seconds a call's request message may take to arrive after its headers; a "
        "slower call ends with DEADLINE_EXCEEDED and its stream is reset.",
    )
    #: 0 = sized to this machine: 8 per CPU.
    max_concurrent_rpcs: int = setting(
        INTEGER,
        0,
        constraint=at_least(0),
        help="Calls whose handlers run at once (health checks not counted); more wait in "
        "a queue shared fairly between connections. 0 = 8 per CPU this process may use.",
    )
    #: 0 = 4 x max_concurrent_rpcs.
    max_queued_rpcs: int = setting(
        INTEGER,
        0,
        constraint=at_least(0),
        help="Calls that may wait for a slot; beyond it the connection with the most "
        "waiting is refused with RESOURCE_EXHAUSTED. 0 = 4 x max_concurrent_rpcs.",
    )
    #: None: no ready file.
    ready_file: pathlib.Path | None = setting(
        OPTIONAL_PATH,
        None,
        help="Once the service listens and health is SERVING (in fleet mode health waits "
        "for the first sync), write this file (atomically) with the bound ports as JSON, "
        '{"host", "port", "metrics_port", "pid"}, and remove it at exit: a launcher waits '
        "for it instead of reading the log; handy with --port 0.",
    )
