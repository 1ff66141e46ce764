"""The shipped configuration examples are valid and complete."""

from __future__ import annotations

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
