"""The shipped configuration examples are valid and complete."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from guardrefresh.config import SETTINGS, ServiceConfig, load_config
from guardrefresh.server import max_connections_for

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_example_toml_sets_every_setting_to_its_default() -> None:
    path = EXAMPLES / "guardrefresh.toml"
    document = tomllib.loads(path.read_text())
    assert {(section, key) for section in document for key in document[section]} == {
        (s.section, s.key) for s in SETTINGS
    }
    config, _ = load_config(["--config", str(path)], {})
    assert config == ServiceConfig()


def test_systemd_unit_gives_the_drain_time_to_finish() -> None:
    unit = (EXAMPLES / "guardrefresh.service").read_text()
    stop = next(
        int(line.split("=")[1]) for line in unit.splitlines() if line.startswith("TimeoutStopSec=")
    )
    assert stop > ServiceConfig().server.shutdown_grace
    assert "ExecStart=" in unit and "--config" in unit and "RestartPreventExitStatus=2" in unit


def test_systemd_unit_allows_more_connections_than_the_default_descriptor_limit() -> None:
    unit = (EXAMPLES / "guardrefresh.service").read_text()
    limit = next(
        int(line.split("=")[1]) for line in unit.splitlines() if line.startswith("LimitNOFILE=")
    )
    assert max_connections_for(limit) > max_connections_for(1024)


def test_kubernetes_manifest_probes_the_health_service() -> None:
    manifest = (EXAMPLES / "kubernetes.yaml").read_text()
    grace = next(
        int(line.split(":")[1])
        for line in manifest.splitlines()
        if "terminationGracePeriodSeconds" in line
    )
    assert grace > ServiceConfig().server.shutdown_grace
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert f"{probe}:\n            grpc: {{port: 50051}}" in manifest
    assert 'prometheus.io/port: "9464"' in manifest


def _setting_names(text: str) -> tuple[set[str], set[str]]:
    """The ``--flags`` and ``GUARDREFRESH_*`` variables an example uses (not in comments)."""
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text)) - {"--config"}
    envs = set(re.findall(r"\b(GUARDREFRESH_[A-Z0-9_]+)\b", text))
    return flags, envs


def _assert_known_settings(text: str) -> None:
    flags, envs = _setting_names(text)
    assert flags | envs, "the example names no settings: is the pattern right?"
    known_flags = {s.flag for s in SETTINGS} | {
        "--no-" + s.flag.removeprefix("--") for s in SETTINGS
    }
    assert flags <= known_flags, flags - known_flags
    assert envs <= {s.env for s in SETTINGS}, envs - {s.env for s in SETTINGS}


def _dsn_has_no_password(dsn: str) -> bool:
    userinfo = dsn.split("://", 1)[1].split("@", 1)[0]
    return ":" not in userinfo


def test_fleet_kubernetes_manifest_runs_three_replicas_gated_on_health() -> None:
    manifest = (EXAMPLES / "kubernetes-fleet.yaml").read_text()
    assert "kind: Deployment" in manifest and "\n  replicas: 3\n" in manifest
    assert "kind: Service" in manifest and "kind: PodDisruptionBudget" in manifest
    grace = next(
        int(line.split(":")[1])
        for line in manifest.splitlines()
        if "terminationGracePeriodSeconds" in line
    )
    assert grace > ServiceConfig().server.shutdown_grace
    # Readiness on the gRPC health service: NOT_SERVING until the first sync.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert f"{probe}:\n            grpc: {{port: 50051}}" in manifest
    # The DSN and the password come from a Secret, never from the manifest itself.
    for variable, key in (("GUARDREFRESH_REPLICATION", "dsn"), ("PGPASSWORD", "password")):
        assert (
            f"- name: {variable}\n              valueFrom:\n"
            f"                secretKeyRef: {{name: guardrefresh-fleet, key: {key}}}"
        ) in manifest
    dsn = re.search(r"--from-literal=dsn='([^']+)'", manifest)
    assert dsn is not None and _dsn_has_no_password(dsn.group(1))
    _assert_known_settings(manifest)


def test_fleet_systemd_unit_configures_a_replica_with_a_password_file() -> None:
    unit = (EXAMPLES / "guardrefresh-fleet.service").read_text()
    values = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    assert int(values["TimeoutStopSec"]) > ServiceConfig().server.shutdown_grace
    assert max_connections_for(int(values["LimitNOFILE"])) > max_connections_for(1024)
    assert values["RestartPreventExitStatus"] == "2"
    environment = dict(
        line.removeprefix("Environment=").split("=", 1)
        for line in unit.splitlines()
        if line.startswith("Environment=")
    )
    dsn = environment["GUARDREFRESH_REPLICATION"]
    assert _dsn_has_no_password(dsn)
    password_file = environment["GUARDREFRESH_REPLICATION_PASSWORD_FILE"]
    # What the unit sets is a valid fleet configuration.
    config, _ = load_config([], environment)
    assert config.replication.enabled and config.replication.dsn == dsn
    assert str(config.replication.password_file) == password_file
    _assert_known_settings(unit)
