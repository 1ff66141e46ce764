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
    text = path.read_text()
    document = tomllib.loads(text)
    # A default computed from other settings is shown commented out, so that changing
    # those settings in the file moves it too.
    assert {(section, key) for section in document for key in document[section]} == {
        (s.section, s.key) for s in SETTINGS if s.derived is None
    }
    for setting in SETTINGS:
        if setting.derived is not None:
            assert f"# {setting.key} = {setting.kind.to_toml(setting.default)}" in text
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


def test_fleet_manifest_is_ready_on_health_alive_on_the_port_and_reads_the_dsn_secret() -> None:
    manifest = (EXAMPLES / "fleet-kubernetes.yaml").read_text()
    assert "kind: Deployment" in manifest and "replicas: 3" in manifest
    assert "readinessProbe:\n            grpc: {port: 50051}" in manifest
    # NOT_SERVING until the first sync must not get a replica killed.
    for probe in ("startupProbe", "livenessProbe"):
        assert f"{probe}:\n            tcpSocket: {{port: grpc}}" in manifest
    assert "name: GUARDREFRESH_REPLICATION\n              valueFrom: {secretKeyRef:" in manifest
    assert "name: PGPASSWORD\n              valueFrom: {secretKeyRef:" in manifest
    assert "kind: Service" in manifest
    _assert_known_settings(manifest)


def test_fleet_systemd_unit_names_a_valid_database_without_a_password() -> None:
    unit = (EXAMPLES / "guardrefresh-fleet.service").read_text()
    dsn = next(
        line.split("=", 2)[2]
        for line in unit.splitlines()
        if line.startswith("Environment=GUARDREFRESH_REPLICATION=")
    )
    config, _ = load_config([], {"GUARDREFRESH_REPLICATION": dsn})
    assert config.replication.dsn == dsn and ":***@" not in config.replication.masked_dsn
    assert "--replication-password-file ${CREDENTIALS_DIRECTORY}/pgpassword" in unit
    assert "LoadCredential=pgpassword:" in unit and "TimeoutStopSec=20" in unit
    _assert_known_settings(unit)
