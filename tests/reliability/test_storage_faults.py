"""Storage faults under a live service: a read-only directory, a deleted directory, a file
size limit, and corrupted files. Real files, a real process, real errno values.

In every case the fault is visible (UNAVAILABLE with a message naming the file and the
problem, a WARNING line in the log, ``last_error`` in GetRefreshStatus when a refresh
failed, and the metrics when the service serves them), the stored rules do not change
(GetRuleStats and GetRule byte for byte), reads keep being served, the service recovers
once the fault is gone, and after a clean shutdown a fresh load of the warm store holds
every acknowledged install.

"Recovers" after a deleted directory means: while it is gone, installs and refreshes
fail visibly and the service keeps serving what it had; it does not create a directory
or a store in its place. Once the operator restores the files (here from a copy taken
before the deletion), the next refresh succeeds, the failure count returns to 0 and
installs work again. (A directory recreated empty is an empty store, with a WARNING:
``test_edge_input.py::test_warm_directory_recreated_empty_is_an_empty_store``.)
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import types
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
from grpcio_support import DataPlaneClient
from support.payloads import anchors_payload
from support.service import ServiceProcess, free_port, running_service

from .service import Observed, build_store, metric, pb_rule, read_store, scrape_metrics

AGENT = "agent-a"


def _install(
    client: DataPlaneClient, prefix: str, count: int, *, seed: int = 0, full: bool = False
) -> Sequence[str]:
    """Install ``count`` rules ``prefix-<i>`` (priority ``seed + i``); assert it worked."""
    pb2 = client.pb2
    anchors = anchors_payload((16, 16, 16, 16) if full else (1, 2, 0, 3), seed=seed, pb2=pb2)
    rules = [pb_rule(pb2, f"{prefix}-{i}", seed=seed + i, anchors=anchors) for i in range(count)]
    response = client.call("InstallRules", pb2.InstallRulesRequest(agent_id=AGENT, rules=rules))
    assert response.rules_installed == count
    return [rule.rule_id for rule in rules]


def _refused_install(
    client: DataPlaneClient, prefix: str, *, count: int = 1, full: bool = False
) -> str:
    """Send an install that must fail with UNAVAILABLE and store nothing; its message."""
    pb2 = client.pb2
    anchors = anchors_payload((16, 16, 16, 16) if full else (1, 0, 0, 0), seed=9, pb2=pb2)
    rules = [pb_rule(pb2, f"{prefix}-{i}", seed=i, anchors=anchors) for i in range(count)]
    outcome = client.outcome("InstallRules", pb2.InstallRulesRequest(agent_id=AGENT, rules=rules))
    assert outcome.code is grpc.StatusCode.UNAVAILABLE, outcome
    lookup = client.outcome("GetRule", pb2.GetRuleRequest(rule_id=rules[0].rule_id))
    assert lookup.code is grpc.StatusCode.NOT_FOUND, lookup
    return outcome.details


def _stop_and_check_store(service: ServiceProcess, expected: dict[str, int]) -> None:
    """SIGTERM: exit 0; then a fresh load holds every rule in ``expected`` (id -> priority)."""
    assert service.stop(signal.SIGTERM) == 0, service.log
    stored = read_store(service.warm_storage)
    lost = {rule_id for rule_id in expected if rule_id not in stored}
    assert not lost, f"acknowledged rules lost: {sorted(lost)}"
    wrong = {k: stored[k].priority for k, v in expected.items() if stored[k].priority != v}
    assert not wrong, f"rules with another priority than acknowledged: {wrong}"


def _metrics(service: ServiceProcess) -> dict[str, float]:
    assert service.metrics_served, service.log
    return scrape_metrics(service.metrics_port)


def _priorities(ids: Sequence[str], seed: int = 0) -> dict[str, int]:
    return {rule_id: seed + i for i, rule_id in enumerate(ids)}


@contextlib.contextmanager
def _immutable(directory: Path) -> Iterator[None]:
    """``chattr +i``: even root can no longer create, rename or remove entries in it."""
    subprocess.run(["chattr", "+i", str(directory)], check=True, timeout=30)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True, timeout=30)


def test_read_only_directory_refuses_installs_and_keeps_serving(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    with (
        running_service(tmp_path, metrics_port=free_port()) as service,
        DataPlaneClient(grpcio_modules, service.port, own_connection=True) as client,
    ):
        pb2 = client.pb2
        ids = _install(client, "base", 5)
        before = Observed.take(client, ids)
        warm_dir = service.warm_storage.parent
        mark = service.mark()
        with _immutable(warm_dir):
            details = _refused_install(client, "ro")
            assert "permission denied" in details and str(warm_dir) in details, details
            assert Observed.take(client, ids) == before
            # Reads and refreshes only read: they keep working.
            assert client.call("RefreshRules", pb2.RefreshRulesRequest()).success
            assert Observed.take(client, ids) == before
        service.wait_for_log(
            r"WARNING .*install_rules\w* failed, answered UNAVAILABLE: permission denied",
            start=mark,
        )
        unavailable = metric(
            _metrics(service),
            "grpc_server_handled_total",
            grpc_method="InstallRules",
            grpc_code="Unavailable",
        )
        assert unavailable >= 1

        more = _install(client, "after", 3, seed=100)
        assert client.stats().total_rules == 8
        _stop_and_check_store(service, _priorities(ids) | _priorities(more, 100))


def test_deleted_directory_fails_visibly_and_recovers_when_files_are_restored(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    with (
        running_service(tmp_path, metrics_port=free_port()) as service,
        DataPlaneClient(grpcio_modules, service.port, own_connection=True) as client,
    ):
        pb2 = client.pb2
        ids = [*_install(client, "base", 5), *_install(client, "base2", 3, seed=50)]
        expected = _priorities(ids[:5]) | _priorities(ids[5:], 50)
        before = Observed.take(client, ids)
        warm_dir = service.warm_storage.parent
        backup = tmp_path / "backup"
        shutil.copytree(warm_dir, backup)

        shutil.rmtree(warm_dir)
        details = _refused_install(client, "gone")
        assert f"warm storage directory '{warm_dir}' does not exist" in details, details
        refresh = client.outcome("RefreshRules", pb2.RefreshRulesRequest())
        assert refresh.code is grpc.StatusCode.UNAVAILABLE, refresh
        assert "does not exist" in refresh.details, refresh
        status = client.status()
        assert status.consecutive_failures == 1 and "does not exist" in status.last_error, status
        assert Observed.take(client, ids) == before  # reads are served from memory
        service.wait_for_log(r"WARNING .*Refresh failed \(trigger rpc\): warm storage directory")
        service.wait_for_log(
            r"WARNING .*install_rules\w* failed, answered UNAVAILABLE: warm storage"
        )

        assert not warm_dir.exists()

        shutil.copytree(backup, warm_dir)
        refreshed = client.call("RefreshRules", pb2.RefreshRulesRequest())
        assert refreshed.success and refreshed.rules_refreshed == len(ids)
        status = client.status()
        assert (status.consecutive_failures, status.last_error) == (0, "")
        assert (
            metric(_metrics(service), "guard_scheduler_refresh_errors_total", reason="missing") >= 1
        )
        more = _install(client, "after", 3, seed=100)
        assert Observed.take(client, ids).rules == before.rules
        assert client.stats().total_rules == len(ids) + len(more)
        _stop_and_check_store(service, expected | _priorities(more, 100))


def test_file_size_limit_gives_unavailable_and_installs_resume_when_raised(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    limit = 1024 * 1024
    # Soft limit only: raising a hard limit needs CAP_SYS_RESOURCE, which CI may lack.
    prefix = ["prlimit", f"--fsize={limit}:unlimited", "--"]
    with (
        running_service(tmp_path, prefix=prefix, metrics_port=free_port()) as service,
        DataPlaneClient(grpcio_modules, service.port, own_connection=True) as client,
    ):
        ids = _install(client, "base", 5)
        before = Observed.take(client, ids)
        mark = service.mark()
        # 150 rules x 8 KiB of anchors: the journal append crosses the limit (EFBIG).
        details = _refused_install(client, "big", count=150, full=True)
        assert "file too large" in details and ".journal" in details, details
        assert Observed.take(client, ids) == before
        service.wait_for_log(
            r"WARNING .*install_rules\w* failed, answered UNAVAILABLE: .*file too large", start=mark
        )
        unavailable = metric(
            _metrics(service),
            "grpc_server_handled_total",
            grpc_method="InstallRules",
            grpc_code="Unavailable",
        )
        assert unavailable >= 1

        subprocess.run(
            ["prlimit", "--pid", str(service.pid), "--fsize=unlimited"], check=True, timeout=30
        )
        big = _install(client, "big", 150, seed=1000, full=True)
        assert client.stats().total_rules == 155
        assert Observed.take(client, ids).rules == before.rules
        _stop_and_check_store(service, _priorities(ids) | _priorities(big, 1000))


# ------------------------------------------------------------------ corruption ---


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` as a new file at ``path`` (temp file + rename: a new inode).

    The service maps the files it loaded; writing into the same inode would change
    (or, truncated, SIGBUS) its mapped view: see docs/reliability.md.
    """
    tmp = path.with_name(path.name + ".corrupting")
    tmp.write_bytes(data)
    tmp.chmod(0o600)
    os.replace(tmp, path)


def _corruptions(name: str, good: bytes, rng: random.Random) -> Iterator[tuple[str, bytes]]:
    """A handful of truncations and bit flips of one file (the exhaustive ones are offline)."""
    for length in (0, len(good) // 2, len(good) - 1):
        yield f"{name} truncated to {length} bytes", good[:length]
    for offset in (0, len(good) // 2, len(good) - 1, rng.randrange(len(good))):
        bit = rng.randrange(8)
        flipped = bytearray(good)
        flipped[offset] ^= 1 << bit
        yield f"{name} bit {bit} flipped at offset {offset}", bytes(flipped)


def test_corrupt_files_fail_refresh_and_the_service_keeps_its_last_good_rules(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    warm = tmp_path / "data" / "warm_storage.bin"
    seeded = build_store(warm, 200)
    rng = random.Random(20240601)
    with (
        running_service(tmp_path, metrics_port=free_port()) as service,
        DataPlaneClient(grpcio_modules, service.port, own_connection=True) as client,
    ):
        pb2 = client.pb2
        journal_ids = [*_install(client, "j1", 4, seed=10), *_install(client, "j2", 4, seed=20)]
        sample = [*seeded[:3], *seeded[-3:], *journal_ids]
        before = Observed.take(client, sample)
        files = {
            kind: next(p for p in warm.parent.iterdir() if p.name.endswith(suffix))
            for kind, suffix in (
                ("manifest", warm.name),
                ("snapshot", ".snap"),
                ("journal", ".journal"),
            )
        }
        cases = 0
        for kind, path in files.items():
            good = path.read_bytes()
            for case, data in _corruptions(kind, good, rng):
                _replace(path, data)
                outcome = client.outcome("RefreshRules", pb2.RefreshRulesRequest())
                assert outcome.code is grpc.StatusCode.UNAVAILABLE, (case, outcome)
                assert str(path) in outcome.details or str(warm) in outcome.details, (case, outcome)
                assert "corrupt" in outcome.details or "format version" in outcome.details, (
                    case,
                    outcome,
                )
                status = client.status()
                assert status.last_error == outcome.details and status.consecutive_failures == 1, (
                    case
                )
                if kind != "snapshot":
                    # Writes check the manifest and the journal they append to.
                    _refused_install(client, f"during-{cases}")
                assert Observed.take(client, sample) == before, case

                _replace(path, good)
                recovered = client.outcome("RefreshRules", pb2.RefreshRulesRequest())
                assert recovered.ok, (case, recovered)
                assert client.status().consecutive_failures == 0, case
                assert Observed.take(client, sample) == before, case
                cases += 1
        assert cases == 21
        assert service.count(r"WARNING .*Refresh failed \(trigger rpc\): ") == cases
        errors = metric(_metrics(service), "guard_scheduler_refresh_errors_total", reason="corrupt")
        assert errors == cases

        # The journal file was replaced 14 times under the running writer: it must append
        # to the file that is there now, not to the one it opened first.
        after = _install(client, "after", 3, seed=300)
        expected = (
            _priorities(seeded)
            | _priorities(journal_ids[:4], 10)
            | _priorities(journal_ids[4:], 20)
        )
        _stop_and_check_store(service, expected | _priorities(after, 300))
