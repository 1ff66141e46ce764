"""The benchmark entry point runs end to end (``--tiny``) and writes a complete document.

Timing is never asserted here: only that every benchmark ran, produced numbers,
and recorded its target and verdict in the agreed shape.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pg_support import MISSING_REASON, find_postgres_bin

REPO_ROOT = Path(__file__).resolve().parents[1]

EXPECTED = {
    "storage": [
        "write_50",
        "write_200",
        "load_verify_50",
        "load_verify_200",
        "install_10_into_200",
        "store_append_10_into_200",
        "hot_cache_heap_bytes_per_rule",
        "hot_cache_heap_bytes_per_materialised_rule",
    ],
    "refresh": [
        "full_refresh_50",
        "full_refresh_200",
        "unchanged_refresh_50",
        "unchanged_refresh_200",
        "canary_lag_during_full_refresh_200",
        "canary_lag_idle",
    ],
    "grpc": [
        "GetRuleStats_server_cpu_us_per_request_service",
        "GetRuleStats_server_cpu_us_per_request_plain_asyncio",
        "GetRule_server_cpu_us_per_request_service",
        "GetRule_server_cpu_us_per_request_plain_asyncio",
        "GetRuleStats_cpu_ratio",
        "GetRuleStats_rps_ratio",
        "GetRule_cpu_ratio",
        "GetRule_rps_ratio",
        "RefreshRules_round_trip_200",
        "idle_cpu_percent",
    ],
    "edge": [
        "fresh_client_GetRuleStats_under_flood",
        "health_check_under_flood",
        "rss_after_stall_attack",
        "rss_after_stall_attack_empty_store",
    ],
    "codec": [
        f"{message}_{how}"
        for message, ways in (
            ("EnforceResponse_encode", ("via_dict", "upb_direct")),
            ("EnforceResponse_parse", ()),
            ("GetRuleResponse_encode", ()),
            ("EnforceRequest_parse", ()),
            ("InstallRulesRequest_parse", ()),
        )
        for how in ("betterproto2", "compiled", "speedup", *ways)
    ],
    # --tiny runs 20 and 50 rules in scope (100 and 1,000 in a full run).
    "enforce": [
        "decide_nothing_matching_50",
        "decide_nothing_matching_200",
        "build_evaluation_set_50",
        "build_evaluation_set_200",
        "decide_after_install_10_50",
        "decide_after_install_10_200",
        "reference_nothing_matching_50",
        "speedup_vs_reference_50",
    ],
    "enforce_grpc": [
        "Enforce_latency_20_rules",
        "Enforce_latency_50_rules",
        "Enforce_throughput_20_rules_8_clients",
        "Enforce_telemetry_on_off_p50_ratio_20_rules",
    ],
    "telemetry": [
        "ingest_dropped_per_s",
        "ingest_writer_cpu_us_per_session",
        "query_tenant_decision_last_hour_50",
        "query_newest_50",
        "query_deep_page",
    ],
}

#: Benchmarks that carry a target in a full run; --tiny records it with met = None.
WITH_TARGETS = {
    # Load and full-refresh targets are stated for 10k and 100k rules only.
    "storage": {"install_10_into_200", "hot_cache_heap_bytes_per_rule"},
    "refresh": {"canary_lag_during_full_refresh_200"},
    "grpc": {
        "GetRuleStats_cpu_ratio",
        "GetRuleStats_rps_ratio",
        "GetRule_cpu_ratio",
        "GetRule_rps_ratio",
        "RefreshRules_round_trip_200",
        "idle_cpu_percent",
    },
    "edge": {
        "fresh_client_GetRuleStats_under_flood",
        "health_check_under_flood",
        "rss_after_stall_attack",
        "rss_after_stall_attack_empty_store",
    },
    "codec": set(),
    # Decision targets are stated for 1,000 and 10,000 rules only.
    "enforce": {"speedup_vs_reference_50"},
    "enforce_grpc": {
        "Enforce_latency_20_rules",
        "Enforce_latency_50_rules",
        "Enforce_telemetry_on_off_p50_ratio_20_rules",
    },
    "telemetry": {"ingest_dropped_per_s", "query_tenant_decision_last_hour_50", "query_newest_50"},
}


# The fleet group needs PostgreSQL's binaries (tests/pg_support.py); without them the run
# records why it skipped it.
FLEET = [
    "write_visible_on_all_replicas",
    "install_300_rules_batches_100",
    "catch_up_200_changes",
    "enforce_rps_3_over_1",
    "full_resync_200_rules",
]
FLEET_TARGETS = {
    "write_visible_on_all_replicas",
    "install_300_rules_batches_100",
    "catch_up_200_changes",
    "full_resync_200_rules",
}
if find_postgres_bin() is not None:
    EXPECTED["fleet"] = FLEET
    WITH_TARGETS["fleet"] = FLEET_TARGETS


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _run_tiny(out: Path) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, "-m", "bench.run", "--tiny", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert f"results: {out}" in completed.stdout
    document: dict[str, Any] = json.loads(out.read_text())
    return document


def test_tiny_run_writes_every_section_with_numbers(tmp_path: Path) -> None:
    document = _run_tiny(tmp_path / "results" / "tiny.json")

    meta = document["meta"]
    assert meta["plan"]["tiny"] is True
    assert meta["plan"]["sizes"] == [50, 200]
    machine = meta["machine"]
    assert machine["cpu_count"] >= 1
    assert machine["python"].startswith("3.")
    assert machine["versions"]["numpy"] not in ("", "absent")
    assert _number(meta["total_seconds"])

    for group, names in EXPECTED.items():
        section = document[group]
        assert sorted(section) == sorted(names), group
        for name in names:
            result = section[name]
            where = f"{group}.{name}"
            assert isinstance(result["parameters"], dict) and result["parameters"], where
            assert isinstance(result["unit"], str) and result["unit"], where
            samples = result["samples"]
            assert samples["n"] >= 1, where
            for stat in ("min", "median", "mean", "p90", "p99", "max"):
                assert _number(samples[stat]), (where, stat)
            assert samples["min"] <= samples["median"] <= samples["max"], where
            assert samples["median"] <= samples["p99"] <= samples["max"], where
            assert result["median"] == samples["median"], where
            assert result["p99"] == samples["p99"], where
            # Tiny sizes are not the sizes the targets are stated for.
            assert result["met"] is None, where
            if group == "enforce_grpc" and "throughput" in name:
                cpu = result["server_cpu_us_per_request"]
                assert _number(cpu["median"]) and cpu["median"] > 0, where
            if name in WITH_TARGETS[group]:
                assert result["targets"], where
                for target in result["targets"]:
                    assert target["op"] in ("<=", ">="), where
                    assert _number(target["value"]), where

    # What the numbers measure, checked where a wrong setup would show.
    storage = document["storage"]
    assert storage["install_10_into_200"]["samples"]["n"] == meta["plan"]["install_batches"]
    assert storage["hot_cache_heap_bytes_per_rule"]["parameters"]["cached_rules"] == 200
    assert (
        storage["hot_cache_heap_bytes_per_materialised_rule"]["median"]
        > storage["hot_cache_heap_bytes_per_rule"]["median"]
        > 0
    )
    grpc = document["grpc"]
    assert grpc["RefreshRules_round_trip_200"]["samples"]["n"] == meta["plan"]["refresh_rpc_calls"]
    for stack in ("service", "plain_asyncio"):
        result = grpc[f"GetRule_server_cpu_us_per_request_{stack}"]
        assert result["median"] > 0
        assert all(rps > 0 for rps in result["requests_per_s"])
    for method in ("GetRuleStats", "GetRule"):
        ratio = grpc[f"{method}_cpu_ratio"]
        plan = meta["plan"]
        assert ratio["samples"]["n"] == plan["grpc_rounds"] * plan["grpc_pairs"]
        assert len(ratio["round_medians"]) == plan["grpc_rounds"]
        low, high = ratio["median_95ci"]
        assert ratio["samples"]["min"] <= low <= ratio["median"] <= high <= ratio["samples"]["max"]
    idle = grpc["idle_cpu_percent"]
    # The window was measured around the planned idle sleep, and the percent derives from it.
    assert idle["parameters"]["window_s"] >= meta["plan"]["idle_window_s"]
    expected_percent = idle["idle_cpu_s"] / idle["parameters"]["window_s"] * 100
    assert math.isclose(idle["median"], expected_percent, rel_tol=0.01, abs_tol=1e-6)
    enforce = document["enforce"]
    assert enforce["decide_nothing_matching_200"]["parameters"]["rules_in_scope"] == 200
    assert enforce["decide_nothing_matching_200"]["samples"]["n"] == 5
    # The engine beats the scalar reference even at 50 rules.
    assert enforce["speedup_vs_reference_50"]["median"] > 1
    codec = document["codec"]
    encoded = codec["EnforceResponse_encode_compiled"]
    assert encoded["parameters"]["evidence"] == 50 and encoded["parameters"]["bytes"] > 0
    assert encoded["samples"]["n"] == meta["plan"]["codec_repeats"]
    assert codec["GetRuleResponse_encode_betterproto2"]["parameters"]["anchor_floats"] == 2048
    edge = document["edge"]
    fresh = edge["fresh_client_GetRuleStats_under_flood"]
    assert fresh["parameters"]["flood_seconds"] == meta["plan"]["edge_seconds"]
    assert sum(fresh["flood_calls"].values()) > 0  # the flooders did flood
    assert fresh["flooders_reported"] == meta["plan"]["edge_flood_processes"]
    assert fresh["probes"] >= 1 and edge["health_check_under_flood"]["probes"] >= 1
    assert set(fresh["rss_mib"]) == {"before", "end_of_flood", "after"}
    for name, rules in (
        ("rss_after_stall_attack", meta["plan"]["grpc_rules"]),
        ("rss_after_stall_attack_empty_store", 0),
    ):
        stall = edge[name]
        assert stall["parameters"]["header_only_streams"] == 200
        assert stall["parameters"]["store_rules"] == rules
        # The budget (64 MiB) admits all 4 tiny stalled bodies: none was refused.
        assert stall["stalled_call_statuses"] == {}
        assert stall["rss_mib"]["peak"] >= stall["rss_mib"]["before"] > 0

    # Telemetry on and off measured side by side, the on service really recording.
    ratio = document["enforce_grpc"]["Enforce_telemetry_on_off_p50_ratio_20_rules"]
    assert ratio["parameters"]["rounds"] == ratio["samples"]["n"] == len(ratio["values"]) == 2
    assert ratio["targets"] == [{"stat": "median", "op": ">=", "value": 0.9, "unit": "ratio"}]
    assert all(_number(ratio["p50_ms"][mode]) for mode in ("on", "off"))
    assert all(ratio["server_cpu_us_per_request"][mode] > 0 for mode in ("on", "off"))
    assert ratio["sessions_recorded"] >= 1 + 5 + 2 * 10

    if "fleet" in EXPECTED:
        fleet = document["fleet"]
        assert fleet["install_300_rules_batches_100"]["converged_after_last_ack_ms"] >= 0
        assert fleet["full_resync_200_rules"]["parameters"]["rules"] == 200
        assert fleet["enforce_rps_3_over_1"]["rps_1_replica"] > 0
    else:
        assert document["fleet"] == {"skipped": MISSING_REASON}

    # Every benchmark with a target shows up in the summary, with its verdict.
    summarized = {row["benchmark"] for row in document["summary"]}
    for group, with_target in WITH_TARGETS.items():
        assert {f"{group}.{name}" for name in with_target} <= summarized


def _bench_module() -> Any:
    sys.path.insert(0, str(REPO_ROOT))
    try:
        from bench import grpc_server
    finally:
        sys.path.remove(str(REPO_ROOT))
    return grpc_server


def test_pinning_holds_every_thread_of_a_running_process() -> None:
    grpc_server = _bench_module()
    cpu = min(os.sched_getaffinity(0))
    code = "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.5)  # both threads are running
        grpc_server._pin(proc.pid, frozenset({cpu}))
        threads = os.listdir(f"/proc/{proc.pid}/task")
        assert len(threads) == 2
        assert all(os.sched_getaffinity(int(tid)) == {cpu} for tid in threads)
    finally:
        proc.kill()
        proc.wait()


def test_process_cpu_counts_every_thread_in_nanoseconds() -> None:
    grpc_server = _bench_module()
    code = (
        "import threading, time\n"
        "def spin():\n"
        "    end = time.thread_time() + 0.2\n"
        "    while time.thread_time() < end: pass\n"
        "worker = threading.Thread(target=spin); worker.start(); worker.join()\n"
        "print(time.process_time(), flush=True); time.sleep(30)\n"
    )
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            own = float(proc.stdout.readline())
            seen = grpc_server.process_cpu_s(proc.pid)
            # The ended thread's 0.2 s included; finer than the 10 ms of /proc ticks.
            assert own >= 0.2
            assert own <= seen <= own + 0.005
        finally:
            proc.kill()


def test_bootstrap_interval_brackets_the_median() -> None:
    grpc_server = _bench_module()
    samples = [0.8, 0.85, 0.9, 0.92, 0.95, 0.97, 1.0, 1.1, 1.3]
    low, high = grpc_server._bootstrap_median_interval(samples)
    assert min(samples) <= low <= 0.95 <= high <= max(samples)
    assert grpc_server._bootstrap_median_interval(samples) == [low, high]  # seeded
    assert grpc_server._bootstrap_median_interval([1.0] * 5) == [1.0, 1.0]
