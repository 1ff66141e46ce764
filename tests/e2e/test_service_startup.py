"""Starting ``python -m guardrefresh``: what it prints and how it exits when it cannot start.

A service that cannot start exits 1 with one line on stderr saying why; a bad setting
exits 2 with one line naming the flag, variable or file. The exit-1 cases run at
``--log-level WARNING`` so that the reason is all there is on stderr: no traceback, no
stray warning.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from support.service import free_port
from support.trio_service import open_service

from guardrefresh.model import Rule
from guardrefresh.storage import WarmStore

from .service import HOST, run_cli


def _one_line(result: subprocess.CompletedProcess[bytes]) -> str:
    """The single line on stderr (fails the test if there are more, or a traceback)."""
    text = result.stderr.decode()
    assert "Traceback" not in text, text
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("guardrefresh: error: "), text
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port of 127.0.0.1 that this test process is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_port_in_use_exits_1_with_one_line(tmp_path: Path, busy_port: int) -> None:
    result = await run_cli(
        tmp_path,
        "--port",
        str(busy_port),
        "--warm-storage",
        str(tmp_path / "data" / "warm_storage.bin"),
        "--log-level",
        "WARNING",
    )
    assert result.returncode == 1
    line = _one_line(result)
    assert f"{HOST}:{busy_port}" in line
    assert "address already in use" in line


async def test_warm_storage_under_a_regular_file_exits_1_with_one_line(tmp_path: Path) -> None:
    # As root, permissions cannot make a directory unreadable; a file where the
    # directory should be cannot be opened as one by anybody.
    (tmp_path / "file").write_text("not a directory\n")
    result = await run_cli(
        tmp_path,
        "--port",
        "0",
        "--warm-storage",
        "file/warm_storage.bin",
        "--log-level",
        "WARNING",
    )
    assert result.returncode == 1
    line = _one_line(result)
    assert "cannot open warm storage" in line
    assert "'file" in line


def _garbage_manifest(path: Path) -> None:
    path.parent.mkdir(mode=0o700)
    path.write_bytes(b"this is no guardrefresh manifest, just text of some length\n" * 2)
    path.chmod(0o600)


def _flipped_snapshot_byte(path: Path) -> None:
    path.parent.mkdir(mode=0o700)
    store = WarmStore(path)
    try:
        store.open()
        store.write_snapshot_from([Rule(rule_id=f"r{i}", family_id="f") for i in range(3)])
    finally:
        store.close()
    (snapshot,) = path.parent.glob("*.snap")
    data = bytearray(snapshot.read_bytes())
    data[len(data) // 2] ^= 0x40
    snapshot.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "where"),
    [(_garbage_manifest, "manifest"), (_flipped_snapshot_byte, ".snap")],
    ids=["garbage manifest", "flipped bit in the snapshot"],
)
async def test_corrupt_warm_storage_exits_1_with_one_line(
    tmp_path: Path, damage: object, where: str
) -> None:
    warm = tmp_path / "data" / "warm_storage.bin"
    assert callable(damage)
    await trio.to_thread.run_sync(damage, warm)
    result = await run_cli(
        tmp_path,
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--warm-storage",
        str(warm),
        "--log-level",
        "WARNING",
    )
    assert result.returncode == 1
    line = _one_line(result)
    assert "corrupt warm storage" in line
    assert where in line


BAD_SETTINGS = [
    pytest.param(
        ["--port", "abc"], {}, None, "--port: invalid value 'abc'", id="flag not a number"
    ),
    pytest.param(
        ["--jitter", "0.9"], {}, None, "--jitter: invalid value '0.9'", id="flag out of range"
    ),
    pytest.param(["--no-such-flag"], {}, None, "--no-such-flag", id="unknown flag"),
    pytest.param(
        [],
        {"GUARDREFRESH_HOT_CAPACITY": "lots"},
        None,
        "GUARDREFRESH_HOT_CAPACITY: invalid value 'lots'",
        id="environment variable",
    ),
    pytest.param(
        ["--config", "bad.toml"],
        {},
        '[server]\nport = "x"\n',
        "bad.toml: [server] port: invalid value",
        id="TOML value",
    ),
    pytest.param(
        [],
        {"GUARDREFRESH_CONFIG": "bad.toml"},
        "[server]\nshutdown_grace = -1.0\n",
        "bad.toml: [server] shutdown_grace",
        id="TOML file named by the environment",
    ),
]


@pytest.mark.parametrize(("args", "env", "toml", "expect"), BAD_SETTINGS)
async def test_bad_setting_exits_2_with_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], toml: str | None, expect: str
) -> None:
    if toml is not None:
        (tmp_path / "bad.toml").write_text(toml)
    result = await run_cli(tmp_path, *args, env=env)
    assert result.returncode == 2
    assert expect in _one_line(result)
    # It never got as far as creating warm storage.
    assert not (tmp_path / "var").exists()


async def test_print_config_shows_the_effective_settings(tmp_path: Path) -> None:
    defaults = await run_cli(tmp_path, "--print-config")
    assert defaults.returncode == 0, defaults.stderr
    assert defaults.stderr == b""
    config = tomllib.loads(defaults.stdout.decode())
    assert config["server"]["host"] == "127.0.0.1"  # loopback unless told otherwise
    assert config["server"]["port"] == 50051

    changed = await run_cli(
        tmp_path,
        "--print-config",
        "--port",
        "7001",
        "--hot-capacity",
        "42",
        env={"GUARDREFRESH_JITTER": "0.2"},
    )
    assert changed.returncode == 0, changed.stderr
    config = tomllib.loads(changed.stdout.decode())
    assert config["server"]["port"] == 7001
    assert config["storage"]["hot_capacity"] == 42
    assert config["scheduler"]["jitter"] == 0.2
    # Printing the configuration starts nothing.
    assert not (tmp_path / "var").exists()


async def test_a_short_refresh_interval_alone_starts(tmp_path: Path) -> None:
    # backoff_initial defaults to min(30 s, refresh_interval): a 2 s interval is not
    # refused for a default the user never set, and the scheduler runs on it.
    async with open_service(tmp_path, "--refresh-interval", "2", "--jitter", "0") as service:
        assert service.find("Starting scheduled refresh with 2 second interval")
        await service.wait_for_log("Scheduled refresh completed", limit_s=10)
        assert await service.stop(signal.SIGTERM) == 0


async def test_default_bind_is_loopback_and_sigint_stops_it(tmp_path: Path) -> None:
    async with open_service(tmp_path) as service:
        assert service.host == "127.0.0.1"
        # Ready means: warm-up refresh done, health SERVING, then "Listening on".
        listening = service.lines.index(
            next(line for line in service.lines if "Listening on" in line)
        )
        warm_up = next(i for i, line in enumerate(service.lines) if "Warm-up refresh" in line)
        serving = next(i for i, line in enumerate(service.lines) if "health: SERVING" in line)
        assert warm_up < serving < listening
        with socket.create_connection((HOST, service.port), timeout=5):
            pass
        assert await service.stop(signal.SIGINT) == 0
        assert service.find("Received SIGINT: draining") is not None
        assert service.find("Shutdown complete") is not None
    assert (tmp_path / "data" / "warm_storage.bin").is_file()


async def test_ready_file_holds_the_bound_ports_once_serving_and_goes_at_exit(
    tmp_path: Path,
) -> None:
    metrics_port = free_port()
    ready = tmp_path / "ready.json"
    async with open_service(tmp_path, metrics_port=metrics_port, ready_file=ready) as service:
        document = json.loads(ready.read_text())
        assert document == {
            "host": HOST,
            "port": service.port,
            "metrics_port": metrics_port,
            "pid": service.sync.pid,
        }
        assert service.port != 0
        with socket.create_connection((HOST, document["port"]), timeout=5):
            pass
        # Written after health turned SERVING (and after the line scripts used to wait for).
        serving = next(i for i, line in enumerate(service.lines) if "health: SERVING" in line)
        written = next(i for i, line in enumerate(service.lines) if "Wrote the ready file" in line)
        assert serving < written
        assert service.find(rf"Listening on {HOST}:{service.port}\b") is not None
        assert not list(tmp_path.glob(".ready.json.tmp-*"))  # renamed into place, nothing left
        assert await service.stop() == 0
    assert not ready.exists()


async def test_metrics_port_in_the_ready_file_is_null_when_metrics_are_off(
    tmp_path: Path,
) -> None:
    ready = tmp_path / "ready.json"
    async with open_service(tmp_path, ready_file=ready) as service:
        assert json.loads(ready.read_text())["metrics_port"] is None
        assert service.metrics_port is None


async def test_a_ready_file_left_by_a_killed_run_is_replaced(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    async with open_service(tmp_path, ready_file=ready) as first:
        first.send_signal(signal.SIGKILL)
        await first.wait_exit()
        assert json.loads(ready.read_text())["pid"] == first.sync.pid  # left behind
    async with open_service(tmp_path, ready_file=ready) as second:
        document = json.loads(ready.read_text())
        assert document["pid"] == second.sync.pid != first.sync.pid
        assert document["port"] == second.port


async def test_an_unwritable_ready_file_exits_1_with_one_line(tmp_path: Path) -> None:
    result = await run_cli(
        tmp_path,
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--warm-storage",
        str(tmp_path / "data" / "warm_storage.bin"),
        "--ready-file",
        str(tmp_path / "no-such-dir" / "ready.json"),
        "--log-level",
        "WARNING",
    )
    assert result.returncode == 1
    line = _one_line(result)
    assert "cannot write --ready-file" in line and "no-such-dir" in line
