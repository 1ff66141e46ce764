"""SchedulerConfig and RefreshStats: presets, validation, immutability."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest

from guardrefresh.refresh import RefreshError, RefreshStats, RefreshTrigger, SchedulerConfig
from guardrefresh.settings import ConfigError


def test_defaults_are_the_documented_production_values() -> None:
    config = SchedulerConfig()
    assert config.refresh_interval == 21600.0
    assert config.enabled is True
    assert config.jitter == 0.1
    assert config.refresh_on_start is True
    assert config.backoff_initial == 30.0
    assert config.max_interval == 86400.0
    assert config.max_duty_cycle == 0.01
    assert SchedulerConfig.production() == config


def test_presets() -> None:
    assert SchedulerConfig.testing() == attrs.evolve(SchedulerConfig(), refresh_interval=60.0)
    assert SchedulerConfig.disabled() == attrs.evolve(SchedulerConfig(), enabled=False)
    assert SchedulerConfig.aggressive() == attrs.evolve(SchedulerConfig(), refresh_interval=3600.0)


def test_config_is_frozen() -> None:
    config = SchedulerConfig()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.refresh_interval = 1.0  # type: ignore[misc]


def test_config_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        SchedulerConfig(60.0)  # type: ignore[call-arg]


SECONDS_ABOVE_0 = "allowed: a number of seconds > 0"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"refresh_interval": -5},
            f"scheduler.refresh_interval: invalid value -5; {SECONDS_ABOVE_0}",
        ),
        (
            {"refresh_interval": 0},
            f"scheduler.refresh_interval: invalid value 0; {SECONDS_ABOVE_0}",
        ),
        (
            {"refresh_interval": math.nan},
            f"scheduler.refresh_interval: invalid value nan; {SECONDS_ABOVE_0}",
        ),
        (
            {"refresh_interval": math.inf},
            f"scheduler.refresh_interval: invalid value inf; {SECONDS_ABOVE_0}",
        ),
        (
            {"refresh_interval": "60"},
            f"scheduler.refresh_interval: invalid value '60'; {SECONDS_ABOVE_0}",
        ),
        (
            {"refresh_interval": True},
            f"scheduler.refresh_interval: invalid value True; {SECONDS_ABOVE_0}",
        ),
        ({"enabled": "yes"}, "scheduler.enabled: invalid value 'yes'; allowed: a boolean"),
        ({"enabled": 1}, "scheduler.enabled: invalid value 1; allowed: a boolean"),
        ({"jitter": -0.1}, "scheduler.jitter: invalid value -0.1; allowed: a number from 0 to 0.5"),
        ({"jitter": 0.6}, "scheduler.jitter: invalid value 0.6; allowed: a number from 0 to 0.5"),
        ({"jitter": math.nan}, "scheduler.jitter: invalid value nan; allowed: a number from 0"),
        ({"refresh_on_start": None}, "scheduler.refresh_on_start: invalid value None; allowed"),
        ({"backoff_initial": 0}, f"scheduler.backoff_initial: invalid value 0; {SECONDS_ABOVE_0}"),
        (
            {"backoff_initial": 30000.0},
            "backoff_initial must be <= refresh_interval (21600.0 s), got 30000.0",
        ),
        (
            {"refresh_interval": 10.0, "backoff_initial": 30.0},
            "backoff_initial must be <= refresh_interval (10.0 s), got 30.0",
        ),
        ({"max_interval": -1.0}, f"scheduler.max_interval: invalid value -1.0; {SECONDS_ABOVE_0}"),
        (
            {"max_interval": 3600.0},
            "max_interval must be >= refresh_interval (21600.0 s), got 3600.0",
        ),
        (
            {"max_duty_cycle": 0},
            "scheduler.max_duty_cycle: invalid value 0; allowed: a number > 0 and < 1",
        ),
        ({"max_duty_cycle": 1}, "scheduler.max_duty_cycle: invalid value 1; allowed"),
        ({"max_duty_cycle": 2.5}, "scheduler.max_duty_cycle: invalid value 2.5; allowed"),
    ],
)
def test_invalid_setting_raises_one_config_error(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        SchedulerConfig(**changes)
    # Exactly one error (no group), the configuration's one type, whose text is the
    # whole explanation on one line.
    assert type(info.value) is ConfigError
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_inconsistent_values_name_the_settings_involved() -> None:
    with pytest.raises(ConfigError) as info:
        SchedulerConfig(refresh_interval=10.0, backoff_initial=30.0)
    assert set(info.value.settings) == {"scheduler.refresh_interval", "scheduler.backoff_initial"}
    with pytest.raises(ConfigError) as info:
        SchedulerConfig(max_interval=60.0)
    assert set(info.value.settings) == {"scheduler.refresh_interval", "scheduler.max_interval"}


@pytest.mark.parametrize(
    ("interval", "backoff"), [(2.0, 2.0), (0.1, 0.1), (30.0, 30.0), (60.0, 30.0), (21600.0, 30.0)]
)
def test_backoff_defaults_to_the_interval_when_that_is_shorter(
    interval: float, backoff: float
) -> None:
    # A short interval must not be refused because of a default the user never set.
    config = SchedulerConfig(refresh_interval=interval)
    assert config.backoff_initial == backoff
    # Given explicitly, the backoff is kept as given.
    assert SchedulerConfig(refresh_interval=interval, backoff_initial=0.05).backoff_initial == 0.05


def test_boundary_values_are_accepted() -> None:
    config = SchedulerConfig(
        refresh_interval=30.0, backoff_initial=30.0, max_interval=30.0, jitter=0.5
    )
    assert (config.refresh_interval, config.max_interval, config.jitter) == (30.0, 30.0, 0.5)
    assert SchedulerConfig(jitter=0).jitter == 0
    assert SchedulerConfig(refresh_interval=60).refresh_interval == 60


def _stats(**changes: Any) -> RefreshStats:
    fields: dict[str, Any] = {
        "rules_refreshed": 10,
        "duration_ms": 1.5,
        "timestamp_ms": 1_700_000_000_000,
        "trigger": RefreshTrigger.RPC,
    }
    fields.update(changes)
    return RefreshStats(**fields)


def test_refresh_stats_defaults_and_frozen() -> None:
    stats = _stats()
    assert stats.families == ()
    assert stats.bridge_version == 0
    assert (stats.added, stats.removed, stats.changed) == (0, 0, 0)
    assert stats.unchanged is False
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.rules_refreshed = 11  # type: ignore[misc]
    assert stats == _stats()
    assert hash(stats) == hash(_stats())


def test_refresh_trigger_values() -> None:
    assert [t.value for t in RefreshTrigger] == ["startup", "periodic", "rpc", "manual"]
    assert RefreshTrigger("rpc") is RefreshTrigger.RPC
    assert f"{RefreshTrigger.PERIODIC}" == "periodic"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rules_refreshed": -1}, "rules_refreshed must be an integer >= 0, got -1"),
        ({"rules_refreshed": 1.0}, "rules_refreshed must be an integer >= 0, got 1.0"),
        ({"rules_refreshed": True}, "rules_refreshed must be an integer >= 0, got True"),
        ({"duration_ms": -0.5}, "duration_ms must be a finite number >= 0, got -0.5"),
        ({"duration_ms": math.inf}, "duration_ms must be a finite number >= 0, got inf"),
        ({"duration_ms": math.nan}, "duration_ms must be a finite number >= 0, got nan"),
        ({"timestamp_ms": -1}, "timestamp_ms must be an integer >= 0, got -1"),
        ({"trigger": "rpc"}, "trigger must be one of RefreshTrigger.STARTUP"),
        ({"families": ["a"]}, "families must be a tuple of non-empty family names"),
        ({"families": ("a", "")}, "families must be a tuple of non-empty family names"),
        ({"bridge_version": -2}, "bridge_version must be an integer >= 0, got -2"),
        ({"added": -1}, "added must be an integer >= 0, got -1"),
        ({"removed": -1}, "removed must be an integer >= 0, got -1"),
        ({"changed": -1}, "changed must be an integer >= 0, got -1"),
        ({"unchanged": 0}, "unchanged must be a bool, got 0"),
        (
            {"unchanged": True, "changed": 3},
            "unchanged=True requires added, removed and changed to be 0",
        ),
    ],
)
def test_refresh_stats_validation(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        _stats(**changes)
    assert type(info.value) is ValueError
    assert str(info.value).startswith(message)


def test_refresh_stats_accepts_valid_extremes() -> None:
    stats = _stats(
        rules_refreshed=0,
        duration_ms=0,
        timestamp_ms=0,
        families=("fam-a", "fam-b"),
        unchanged=True,
    )
    assert stats.unchanged and stats.families == ("fam-a", "fam-b")


def test_refresh_error_is_an_exception_with_a_reason() -> None:
    error = RefreshError("checksum mismatch in anchors.bin")
    assert isinstance(error, Exception)
    assert str(error) == "checksum mismatch in anchors.bin"
