"""The connection layer against a real service: descriptor limits, the cap, idle timeout.

- Start-up raises the soft ``RLIMIT_NOFILE`` to the hard one and derives the connection
  cap from it (limit - 64); connections beyond the cap are closed at once, the process
  never runs out of descriptors, and a fresh client is served once the flood leaves.
- With the cap set above what the descriptors allow, ``accept()`` fails with EMFILE:
  the service logs it, backs off and retries, answers an install during the shortage
  (OK or UNAVAILABLE), and serves everyone again when the flood leaves. This used to
  end the process (``ValueError: Invalid file descriptor: -1``, exit 1).
- ``--idle-timeout``: a connection with no open stream gets GOAWAY NO_ERROR and is
  closed; one with an open stream is not, until its stream has ended.

Real processes, real limits (``prlimit``), loopback sockets, the real clock.
"""

from __future__ import annotations

import contextlib
import socket
import time
import types
from collections.abc import Iterator
from pathlib import Path

import grpc
from grpcio_support import DataPlaneClient
from support.service import ServiceProcess, running_service
from support.waiting import wait_until

from .h2_raw import (
    END_HEADERS,
    HEADERS,
    NO_ERROR,
    PREFACE,
    RawConnection,
    empty_message_data,
    frame,
    grpc_headers,
    header_block,
    settings,
)
from .service import pb_rule

FLOOD = 600


def _fresh_stats(
    service: ServiceProcess, modules: types.SimpleNamespace, deadline_s: float
) -> bool:
    with DataPlaneClient(modules, service.port, own_connection=True) as client:
        outcome = client.outcome(
            "GetRuleStats", client.pb2.GetRuleStatsRequest(), deadline_s=deadline_s
        )
    return outcome.ok


@contextlib.contextmanager
def _idle_flood(
    port: int, count: int, *, until_full: bool = False
) -> Iterator[list[socket.socket]]:
    """Up to ``count`` TCP connections that send nothing, all closed on the way out.

    Each connect completes before the next starts. A connect that finds the listen
    queue full waits for the kernel to resend its SYN (after 1 s, then 3 s more): a
    client connecting in a tight loop outpaces the server's accepts now and then.
    With ``until_full`` the flood stops at the first connect that does not complete
    within 3.5 s: the server has stopped accepting and its listen queue stays full.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.settimeout(3.5 if until_full else 10.0)
            try:
                sock.connect(("127.0.0.1", port))
            except TimeoutError:
                if not until_full:
                    raise
                break
            sock.setblocking(False)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed this (connected, idle) socket."""
    try:
        return sock.recv(1 << 16, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except (ConnectionResetError, OSError):
        return True


def test_fd_limit_is_raised_and_the_connection_cap_closes_the_excess(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    prefix = ["prlimit", "--nofile=100:256", "--"]
    with running_service(tmp_path, prefix=prefix) as service:
        service.wait_for_log(r"Open-file limit \(RLIMIT_NOFILE\): 256$")
        service.wait_for_log(r"max 192 connections, idle timeout 300 s")
        with _idle_flood(service.port, 250) as flood:
            # The first 192 are admitted; each later one is closed as soon as accepted.
            wait_until(
                lambda: sum(map(_closed_by_server, flood)) >= 250 - 192,
                timeout=10.0,
                what="the connections over the cap closed",
            )
            time.sleep(0.3)
            assert sum(map(_closed_by_server, flood)) == 250 - 192
            assert service.fd_count() < 256
            # The cap kept the descriptors in reserve: accept() never failed.
            assert service.find("accept\\(\\) failed") is None, service.log
            service.wait_for_log(
                r"WARNING .*connection from 127\.0\.0\.1:\d+ refused: 192 connections open "
                r"\(max_connections\)"
            )
            # While the cap is full a new client cannot get in (but nothing breaks).
            assert not _fresh_stats(service, grpcio_modules, deadline_s=0.5)
        assert service.returncode is None
        wait_until(
            lambda: _fresh_stats(service, grpcio_modules, deadline_s=1.0),
            timeout=10.0,
            what="a fresh client served after the flood left",
        )
        assert service.stop() == 0


def test_running_out_of_descriptors_backs_off_and_recovers(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    # A cap above what 256 descriptors allow: accept() itself fails with EMFILE.
    prefix = ["prlimit", "--nofile=256:256", "--"]
    with running_service(tmp_path, "--max-connections", "100000", prefix=prefix) as service:
        with DataPlaneClient(grpcio_modules, service.port, own_connection=True) as early:
            assert early.stats() is not None  # connected before the flood
            with _idle_flood(service.port, FLOOD, until_full=True) as flood:
                assert len(flood) > 256, "the flood ended before the descriptors did"
                print(f"idle connections opened before the listen queue stayed full: {len(flood)}")
                service.wait_for_log(
                    r"WARNING .*accept\(\) failed: \[Errno 24\] Too many open files; "
                    r"new connections wait in the backlog, retrying in 1 s",
                    timeout=5.0,
                )
                outcomes = []
                for i in range(3):
                    request = early.pb2.InstallRulesRequest(
                        agent_id="agent-fd", rules=[pb_rule(early.pb2, f"fd-{i}", seed=i)]
                    )
                    outcomes.append(early.outcome("InstallRules", request, deadline_s=10.0))
                    time.sleep(1.2)  # across accept retries
                    assert service.returncode is None, service.log
                print(f"installs during the shortage: {[o.code.name for o in outcomes]}")
                codes = {o.code for o in outcomes}
                assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, outcomes
                assert early.stats() is not None  # an open connection keeps being served
        wait_until(
            lambda: _fresh_stats(service, grpcio_modules, deadline_s=1.0),
            timeout=15.0,
            what="a fresh client served after the flood left",
        )
        wait_until(lambda: service.fd_count() < 64, timeout=10.0, what="descriptors released")
        assert service.find("Invalid file descriptor") is None
        assert service.stop() == 0


def _open_stream(connection: RawConnection, port: int, stream_id: int) -> None:
    """A GetRuleStats call whose request has not ended: its stream stays open."""
    block = header_block(grpc_headers(port))
    assert connection.send(frame(HEADERS, END_HEADERS, stream_id, block))


def test_idle_connections_get_goaway_and_busy_ones_stay(tmp_path: Path) -> None:
    with running_service(tmp_path, "--idle-timeout", "1") as service:
        with RawConnection(service.port) as idle, RawConnection(service.port) as busy:
            started = time.monotonic()
            assert idle.send(PREFACE + settings())
            assert busy.send(PREFACE + settings())
            _open_stream(busy, service.port, 1)

            assert idle.read_until_closed(5.0), "an idle connection stayed open"
            closed_after = time.monotonic() - started
            goaway = idle.goaway()
            assert goaway is not None and goaway.error_code == NO_ERROR, idle.frames()
            assert 1.0 <= closed_after < 3.0, closed_after

            # Three idle timeouts with its stream open: not closed.
            busy.read_for(3.0)
            assert not busy.closed_by_server and busy.goaway() is None, busy.frames()
            # The stream ends (the call is answered): then it is idle and goes too.
            assert busy.send(empty_message_data(1))
            assert busy.read_until_closed(5.0), "the connection stayed open once idle"
            goaway = busy.goaway()
            assert goaway is not None and goaway.error_code == NO_ERROR
            assert goaway.payload[:4] == b"\x00\x00\x00\x01"  # last stream: the one served
        assert service.stop() == 0
