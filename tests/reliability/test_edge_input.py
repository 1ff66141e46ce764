"""Hostile input at the gRPC edge, against a real ``python -m guardrefresh`` (grpcio client).

- RefreshRules family ids: at most 1,000, each at most 128 characters, no NUL or other
  control character (INVALID_ARGUMENT); no client string starts a line of the text log.
- JSON nested deeper than 64 levels in ``modification_spec``: INVALID_ARGUMENT naming
  the field, never INTERNAL with a RecursionError traceback.
- Long client strings are echoed shortened (120 characters and "…") in status messages,
  so grpcio sees the real INVALID_ARGUMENT or NOT_FOUND rather than failing on trailers
  over its 16 KiB limit.
- The 64 KiB bound on params and modification_spec counts UTF-8 bytes, keys included.
- A drift threshold of -0.0 comes back from GetRule as -0.0.
- Running out of file descriptors during a refresh is a storage error: UNAVAILABLE, one
  WARNING line, ``reason="io"``, no traceback (own service: its limit is lowered).
- A warm directory deleted and recreated empty is taken as an empty store (own service).
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import grpc
import pytest
from grpcio_support import DataPlaneClient
from support.service import ServiceProcess, free_port, running_service

from .service import metric, pb_rule, read_store, scrape_metrics

AGENT = "agent-edge"
#: Every status message here must stay far below grpcio's 16 KiB of trailers.
MAX_DETAILS_CHARS = 1000
_RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \S+: ")
#: A record a client would like to see in the log: it must never start a line.
FORGED = "1999-01-01 00:00:00,000 ERROR guardrefresh.server._auth: FORGED"


@attrs.frozen
class Served:
    service: ServiceProcess
    client: DataPlaneClient

    @property
    def pb2(self) -> Any:
        return self.client.pb2

    def refused(self, method: str, request: Any, code: grpc.StatusCode) -> str:
        """Call ``method``; it must end with ``code`` and a short message; returns the message."""
        outcome = self.client.outcome(method, request)
        assert outcome.code is code, (method, outcome.code, outcome.details[:300])
        assert len(outcome.details) <= MAX_DETAILS_CHARS, (method, len(outcome.details))
        assert self.service.returncode is None, self.service.log
        return outcome.details

    def install(self, *rules: Any) -> Any:
        return self.client.outcome(
            "InstallRules", self.pb2.InstallRulesRequest(agent_id=AGENT, rules=list(rules))
        )


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, grpcio_modules: types.SimpleNamespace
) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("edge_input")
    with (
        # No ERROR record and no traceback for anything a client sent (checked when the
        # block ends); records quoting the forged text are checked line by line by the
        # tests that send it.
        running_service(workdir, allow_log="FORGED") as service,
        DataPlaneClient(grpcio_modules, service.port, own_connection=True) as client,
    ):
        yield Served(service, client)
        assert service.returncode is None, service.log


def _assert_one_record_per_line(service: ServiceProcess) -> None:
    """Every line of the text log starts a record or is indented under one."""
    for line in service.log.splitlines():
        assert _RECORD_START.match(line) or line[:1].isspace(), line[:300]
        assert not line.startswith(FORGED[:10]), line[:300]


# ------------------------------------------------------------------ family ids ---


def test_refresh_family_ids_are_bounded_and_never_forge_a_log_line(served: Served) -> None:
    pb2 = served.pb2
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    cases = {
        "control": [f"fam\n{FORGED}"],
        "control characters": ["fam\r\x1b[2K"],
        "NUL": ["fam\x00ily"],
        "at most 128 characters, got 10000": ["f" * 10_000],
        "must not be empty": ["ok", ""],
        "at most 1000 family ids, got 30000": [f"fam-{i}" for i in range(30_000)],
    }
    for expected, families in cases.items():
        details = served.refused(
            "RefreshRules", pb2.RefreshRulesRequest(family_ids=families), invalid
        )
        assert expected in details and "family_ids" in details, (expected, details)
    # The limit itself is fine: 1,000 ids of 128 characters.
    mark = served.service.mark()
    families = [f"{i:04d}" + "f" * 124 for i in range(1000)]
    response = served.client.call("RefreshRules", pb2.RefreshRulesRequest(family_ids=families))
    assert response.success and len(response.family_ids) == 1000
    line = served.service.wait_for_log(r"Refreshed \d+ rules .*trigger rpc", start=mark).string
    # The text line names a few families and counts the rest: no 128 KB log lines.
    assert "(+990 more)" in line and len(line) < 2_000, line[:300]
    _assert_one_record_per_line(served.service)


def test_no_client_string_starts_a_text_log_line(served: Served) -> None:
    pb2 = served.pb2
    hostile = f"x\n{FORGED}\r\n{FORGED}\u2028{FORGED}\x85{FORGED}"
    mark = served.service.mark()
    # Every call whose handler logs a client string: install (agent, config), removals.
    assert served.client.call(
        "InstallRules", pb2.InstallRulesRequest(agent_id=hostile, config_id=hostile)
    ).success
    assert served.client.call("RemoveAgentRules", pb2.RemoveAgentRulesRequest(agent_id=hostile))
    assert served.install(pb_rule(pb2, "edge-logged", seed=1)).ok
    removed = served.client.call(
        "RemovePolicy", pb2.RemovePolicyRequest(agent_id=AGENT, policy_id="edge-logged")
    )
    assert removed.rules_removed == 1
    served.service.wait_for_log(r"Removed rule 'edge-logged'", start=mark)
    assert served.service.count("FORGED", start=mark) >= 2
    _assert_one_record_per_line(served.service)


# ------------------------------------------------------------------ JSON depth ---


def _nested(depth: int, *, objects: bool) -> str:
    if objects:
        return '{"a":' * depth + "1" + "}" * depth
    return "[" * depth + "]" * depth


def test_deeply_nested_json_is_invalid_argument_naming_the_field(served: Served) -> None:
    pb2 = served.pb2
    mark = served.service.mark()
    for depth in (65, 1000, 5000):
        for objects in (False, True):
            spec = _nested(depth, objects=objects)
            rule = pb_rule(pb2, f"deep-{depth}", modification_spec=spec)
            outcome = served.install(rule)
            assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT, (depth, outcome)
            assert "rule 'deep-" in outcome.details, outcome.details
            assert "modification_spec" in outcome.details, outcome.details
            assert f"nested {depth} levels deep; the limit is 64" in outcome.details
    assert served.service.count(r"ERROR|Traceback|RecursionError", start=mark) == 0
    # At the limit: stored and returned as sent.
    spec = '{"redact":' + _nested(63, objects=False) + "}"
    assert served.install(pb_rule(pb2, "deep-64", modification_spec=spec)).ok
    got = served.client.call("GetRule", pb2.GetRuleRequest(rule_id="deep-64"))
    assert got.rule.modification_spec == spec


# ------------------------------------------------------------------ long echoes ---


def test_long_client_strings_are_echoed_shortened(served: Served) -> None:
    pb2 = served.pb2
    long = "L" * 20_000
    invalid, not_found = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    shortened = "L" * 120 + "…' (20000 characters)"
    bad_params = pb_rule(pb2, "edge-params")
    bad_params.params[long].int_value = 1
    cases = [
        ("GetRule", pb2.GetRuleRequest(rule_id=long), not_found, "no rule"),
        (
            "RemovePolicy",
            pb2.RemovePolicyRequest(agent_id=long, policy_id=long),
            not_found,
            # The original's wording, unquoted, cut the same way.
            "Policy not found: " + "L" * 120 + "…",
        ),
        (
            "InstallRules",
            pb2.InstallRulesRequest(agent_id=AGENT, rules=[pb_rule(pb2, long)]),
            invalid,
            "rule_id: at most 256 characters, got 20000",
        ),
        (
            "InstallRules",
            pb2.InstallRulesRequest(agent_id=AGENT, rules=[pb_rule(pb2, "e", policy_type=long)]),
            invalid,
            "unknown policy type",
        ),
        (
            "InstallRules",
            pb2.InstallRulesRequest(agent_id=AGENT, rules=[bad_params]),
            invalid,
            "at most 128 characters",
        ),
        (
            "RefreshRules",
            pb2.RefreshRulesRequest(family_ids=[long]),
            invalid,
            "at most 128 characters",
        ),
    ]
    for method, request, code, expected in cases:
        details = served.refused(method, request, code)
        assert expected in details, (method, details)
        assert len(details) < 400, (method, details)
        if method != "RemovePolicy":
            assert shortened in details, (method, details)


# ---------------------------------------------------------------- params bytes ---


def test_params_bound_counts_utf8_bytes_of_keys(served: Served) -> None:
    pb2 = served.pb2
    # pb_rule's "seed" and 255 keys of 128 characters, 4 UTF-8 bytes each but the
    # 3-digit counter: 128,265 bytes of keys (on 32,640 characters).
    rule = pb_rule(pb2, "edge-utf8-keys")
    for i in range(255):
        rule.params[f"{i:03d}" + "\U0001f600" * 125].bool_value = True
    outcome = served.install(rule)
    assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT, outcome
    assert "params and modification_spec exceed 65536 bytes" in outcome.details, outcome.details
    # The same keys in ASCII fit.
    ascii_rule = pb_rule(pb2, "edge-ascii-keys")
    for i in range(255):
        ascii_rule.params[f"{i:03d}" + "k" * 125].bool_value = True
    assert served.install(ascii_rule).ok


# -------------------------------------------------------------- negative zero ---


def test_negative_zero_drift_threshold_comes_back_as_stored(served: Served) -> None:
    pb2 = served.pb2
    rules = [
        pb_rule(pb2, "edge-minus-zero", drift_threshold=-0.0),
        pb_rule(pb2, "edge-plus-zero", drift_threshold=0.0),
    ]
    assert served.install(*rules).ok
    for _ in range(2):  # from the hot cache, then again after a refresh reloads it
        for rule_id, sign in (("edge-minus-zero", -1.0), ("edge-plus-zero", 1.0)):
            got = served.client.call("GetRule", pb2.GetRuleRequest(rule_id=rule_id)).rule
            assert got.drift_threshold == 0.0
            assert math.copysign(1.0, got.drift_threshold) == sign, rule_id
        assert served.client.call("RefreshRules", pb2.RefreshRulesRequest()).success


# ------------------------------------------------------------- out of descriptors ---


def _set_nofile(pid: int, soft: int | str) -> None:
    # The soft limit only: lowering and raising it back needs no privilege.
    subprocess.run(["prlimit", "--pid", str(pid), f"--nofile={soft}:"], check=True, timeout=30)


def test_out_of_descriptors_during_a_refresh_is_a_storage_warning(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    with (
        running_service(tmp_path, metrics_port=free_port()) as service,
        DataPlaneClient(grpcio_modules, service.port, own_connection=True) as client,
    ):
        pb2 = client.pb2
        rules = [pb_rule(pb2, f"fd-{i}", seed=i) for i in range(3)]
        client.call("InstallRules", pb2.InstallRulesRequest(agent_id=AGENT, rules=rules))
        limits = Path(f"/proc/{service.pid}/limits").read_text()
        found = re.search(r"Max open files\s+(\d+)", limits)
        assert found is not None, limits
        soft = int(found[1])
        mark = service.mark()
        outcomes = []
        # A refresh opens the manifest, then each data file and maps it (mmap duplicates
        # the descriptor): a limit a few descriptors above what is open now fails one of
        # those steps, each in turn.
        for extra in range(8):
            _set_nofile(service.pid, service.fd_count() + extra)
            try:
                outcomes.append(client.outcome("RefreshRules", pb2.RefreshRulesRequest()))
            finally:
                _set_nofile(service.pid, soft)
        failed = [o for o in outcomes if not o.ok]
        assert failed, [o.code for o in outcomes]
        for outcome in failed:
            assert outcome.code is grpc.StatusCode.UNAVAILABLE, outcome
            assert "too many open files" in outcome.details, outcome.details
        # Each failure is one WARNING line, no ERROR, no traceback.
        warnings = service.count(
            r"WARNING guardrefresh\.refresh\._service: Refresh failed \(trigger rpc\): .*too many "
            r"open files",
            start=mark,
        )
        assert warnings == len(failed), service.log
        assert service.count(r"ERROR|Traceback|unexpected", start=mark) == 0, service.log
        samples = scrape_metrics(service.metrics_port)
        assert metric(samples, "guard_scheduler_refresh_errors_total", reason="io") == len(failed)
        assert metric(samples, "guard_scheduler_refresh_errors_total", reason="other") == 0
        # With descriptors back, everything works.
        assert client.call("RefreshRules", pb2.RefreshRulesRequest()).rules_refreshed == 3
        answers = [o.details or "OK" for o in outcomes]
        print(f"refreshes under a lowered descriptor limit: {answers}")


# ---------------------------------------------------------- emptied warm directory ---


def _empty_the_warm_directory(warm_dir: Path) -> None:
    """``rm -rf`` and ``mkdir``, leaving only an empty lock file, as a failed write does."""
    shutil.rmtree(warm_dir)
    warm_dir.mkdir(mode=0o700)
    (warm_dir / "warm_storage.bin.lock").touch(mode=0o600)


def test_warm_directory_recreated_empty_is_an_empty_store(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    with (
        running_service(tmp_path) as service,
        DataPlaneClient(grpcio_modules, service.port, own_connection=True) as client,
    ):
        pb2 = client.pb2

        def install(prefix: str, count: int) -> list[str]:
            rules = [pb_rule(pb2, f"{prefix}-{i}", seed=i) for i in range(count)]
            response = client.call(
                "InstallRules", pb2.InstallRulesRequest(agent_id=AGENT, rules=rules)
            )
            assert response.rules_installed == count
            return [r.rule_id for r in rules]

        install("before", 4)
        version = client.stats().bridge_version
        warm_dir = service.warm_storage.parent

        # Noticed by a refresh: every rule goes, the version moves on.
        _empty_the_warm_directory(warm_dir)
        refreshed = client.call("RefreshRules", pb2.RefreshRulesRequest())
        assert (refreshed.rules_refreshed, refreshed.rules_removed) == (0, 4), refreshed
        assert refreshed.bridge_version > version
        assert client.stats().total_rules == 0
        service.wait_for_log(r"WARNING .*was emptied .* after holding 4 rules")
        kept = install("after-refresh", 2)

        # Noticed by an install: it lands in a new empty store.
        version = client.stats().bridge_version
        _empty_the_warm_directory(warm_dir)
        kept = install("after-install", 3)
        assert client.stats().bridge_version > version
        refreshed = client.call("RefreshRules", pb2.RefreshRulesRequest())
        assert refreshed.rules_refreshed == 3 and client.stats().total_rules == 3
        status = client.status()
        assert (status.consecutive_failures, status.last_error) == (0, "")
        assert service.stop() == 0, service.log
    assert sorted(read_store(service.warm_storage)) == sorted(kept)
