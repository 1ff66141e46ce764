"""Configuration: the settings table, its sources, their precedence, validation, rendering."""

from __future__ import annotations

import inspect
import pathlib
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrefresh.bridge import DEFAULT_HOT_CAPACITY, DEFAULT_MAX_RULES_PER_INSTALL, Bridge
from guardrefresh.config import (
    SETTINGS,
    ConfigError,
    EnforceConfig,
    HealthConfig,
    LoggingConfig,
    MetricsConfig,
    ReplicationConfig,
    SecurityConfig,
    ServerConfig,
    ServiceConfig,
    Setting,
    StorageConfig,
    TelemetryConfig,
    UsageError,
    format_help,
    load_config,
    parse_args,
    render_config,
    resolve_config,
)
from guardrefresh.metrics import serve_metrics
from guardrefresh.refresh import SchedulerConfig
from guardrefresh.server import GrpcHost
from guardrefresh.telemetry import (
    DEFAULT_QUEUE_CAPACITY,
    PostgresSessionWriter,
    SessionWriter,
    TelemetryRecorder,
    open_postgres_telemetry,
    open_telemetry,
)

BY_NAME = {s.name: s for s in SETTINGS}

# Two valid values per setting: `first` differs from the default, `second` differs
# from `first` (for a boolean it is the default, there being no third value). The
# scheduler values are chosen to stay consistent with the other scheduler defaults.
SAMPLES: dict[str, tuple[Any, Any]] = {
    "server.host": ("localhost", "::1"),
    "server.port": (6001, 0),
    "server.shutdown_grace": (2.5, 0.0),
    "server.max_message_bytes": (1024, 8_000_000),
    "server.max_rules_per_install": (1, 500),
    "server.max_connections": (16, 0),
    "server.idle_timeout": (0.0, 1.5),
    "server.max_concurrent_streams": (10, 2**31 - 1),
    "server.max_pending_request_bytes": (8 * 1024 * 1024, 1024),
    "server.request_timeout": (1.5, 120.0),
    "server.max_concurrent_rpcs": (4, 1),
    "server.max_queued_rpcs": (32, 1),
    "server.ready_file": (pathlib.Path("ready.json"), pathlib.Path("/run/guardrefresh/ready")),
    "storage.warm_storage": (pathlib.Path("a/warm.bin"), pathlib.Path("/srv/b c.bin")),
    "storage.hot_capacity": (1, 123_456),
    "scheduler.refresh_interval": (3600.0, 60.5),
    "scheduler.jitter": (0.0, 0.5),
    "scheduler.enabled": (False, True),
    "scheduler.refresh_on_start": (False, True),
    "scheduler.backoff_initial": (1.5, 45.0),
    "scheduler.max_interval": (90_000.0, 21_600.0),
    "logging.level": ("DEBUG", "ERROR"),
    "logging.format": ("json", "text"),
    "metrics.host": ("localhost", "::1"),
    "metrics.port": (0, 9999),
    "health.max_staleness": (600.0, 1.5),
    "health.fail_when_stale": (True, False),
    "enforce.management_plane_url": ("http://127.0.0.1:8001/api/v2", "https://mp.example:443"),
    "replication.dsn": (
        "postgresql://guard@db.example:5432/guard?sslmode=require",
        "postgres://127.0.0.1/fleet",
    ),
    "replication.password_file": (pathlib.Path("pgpass"), pathlib.Path("/run/pg pass")),
    "replication.max_lag": (30.0, 0.5),
    "replication.tombstone_retention": (3600.0, 0.5),
    "security.tls_cert": (pathlib.Path("cert.pem"), pathlib.Path("/etc/g r/cert.pem")),
    "security.tls_key": (pathlib.Path("key.pem"), pathlib.Path("/etc/g r/key.pem")),
    "security.tls_client_ca": (pathlib.Path("ca.pem"), pathlib.Path("/etc/ca.pem")),
    "security.admin_token_file": (pathlib.Path("token"), pathlib.Path("/run/token")),
    "security.auth_reads": (True, False),
    "telemetry.enabled": (False, True),
    "telemetry.db": (pathlib.Path("t.db"), pathlib.Path("/srv/tele metry.db")),
    "telemetry.retention": (3600.0, 0.5),
    "telemetry.max_sessions": (1, 5_000_000),
    "telemetry.batch_window": (1.0, 0.001),
    "telemetry.queue_size": (1, 1_000_000),
}

SECTION_CLASSES = {
    "server": ServerConfig,
    "storage": StorageConfig,
    "scheduler": SchedulerConfig,
    "logging": LoggingConfig,
    "metrics": MetricsConfig,
    "health": HealthConfig,
    "enforce": EnforceConfig,
    "replication": ReplicationConfig,
    "security": SecurityConfig,
    "telemetry": TelemetryConfig,
}


def value_of(config: ServiceConfig, name: str) -> Any:
    section, key = name.split(".")
    return getattr(getattr(config, section), key)


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def as_toml(value: Any) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | pathlib.Path):
        return '"' + str(value) + '"'  # the samples need no escaping
    return repr(value)


def flag_args(setting: Setting[Any], value: Any) -> list[str]:
    if isinstance(value, bool):
        negative = setting.negative_flag
        assert negative is not None
        return [setting.flag if value else negative]
    return [setting.flag, as_text(value)]


def toml_line(setting: Setting[Any], value: Any) -> str:
    return f"[{setting.section}]\n{setting.key} = {as_toml(value)}\n"


def load(argv: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> ServiceConfig:
    return load_config(list(argv), {} if environ is None else environ)[0]


def write(tmp_path: pathlib.Path, text: str, name: str = "guardrefresh.toml") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def one_line(exc: pytest.ExceptionInfo[ConfigError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    assert message.strip() == message and message
    return message


# ---------------------------------------------------------------------------
# The table and the classes agree


def test_samples_cover_every_setting() -> None:
    assert set(SAMPLES) == set(BY_NAME)
    for name, (first, second) in SAMPLES.items():
        assert first != BY_NAME[name].default
        assert first != second


def test_every_setting_has_its_own_flag_env_var_and_toml_key() -> None:
    flags = [s.flag for s in SETTINGS] + [s.negative_flag for s in SETTINGS if s.negative_flag]
    envs = [s.env for s in SETTINGS]
    keys = [(s.section, s.key) for s in SETTINGS]
    assert len(set(flags)) == len(flags)
    assert len(set(envs)) == len(envs)
    assert len(set(keys)) == len(keys)
    assert all(f.startswith("--") for f in flags)
    assert all(e.startswith("GUARDREFRESH_") and e == e.upper() for e in envs)
    assert "--config" not in flags and "--print-config" not in flags


def test_flags_and_env_vars_named_in_the_issue() -> None:
    flags = {s.flag for s in SETTINGS} | {s.negative_flag for s in SETTINGS}
    for flag in (
        "--host",
        "--port",
        "--warm-storage",
        "--hot-capacity",
        "--refresh-interval",
        "--jitter",
        "--no-scheduler",
        "--shutdown-grace",
        "--log-level",
        "--no-refresh-on-start",
        "--backoff-initial",
        "--max-interval",
        "--max-message-bytes",
        "--max-rules-per-install",
    ):
        assert flag in flags
    envs = {s.env for s in SETTINGS}
    assert {
        "GUARDREFRESH_PORT",
        "GUARDREFRESH_REFRESH_INTERVAL",
        "GUARDREFRESH_SCHEDULER_ENABLED",
        "GUARDREFRESH_HOST",
    } <= envs


@pytest.mark.parametrize("section", SECTION_CLASSES)
def test_table_matches_the_config_classes(section: str) -> None:
    fields = {f.name for f in attrs.fields(SECTION_CLASSES[section])}
    if section == "scheduler":
        fields.discard("max_duty_cycle")  # not a user setting
    assert fields == {s.key for s in SETTINGS if s.section == section}
    assert {f.name for f in attrs.fields(ServiceConfig)} == set(SECTION_CLASSES)


def test_table_defaults_are_the_class_defaults() -> None:
    defaults = ServiceConfig()
    for setting in SETTINGS:
        assert value_of(defaults, setting.name) == setting.default, setting.name
        assert setting.default_text == (setting.derived or as_text(setting.default))


def _keyword_defaults(func: Any) -> dict[str, Any]:
    return {
        name: parameter.default
        for name, parameter in inspect.signature(func).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


@pytest.mark.parametrize(
    ("func", "setting_of_parameter"),
    [
        (
            GrpcHost.__init__,
            {
                "max_message_bytes": "server.max_message_bytes",
                "max_concurrent_streams": "server.max_concurrent_streams",
                "max_pending_request_bytes": "server.max_pending_request_bytes",
                "request_timeout": "server.request_timeout",
            },
        ),
        (
            open_telemetry,
            {
                "batch_window_s": "telemetry.batch_window",
                "retention_s": "telemetry.retention",
                "max_sessions": "telemetry.max_sessions",
                "queue_capacity": "telemetry.queue_size",
            },
        ),
        (
            SessionWriter.__init__,
            {
                "batch_window_s": "telemetry.batch_window",
                "retention_s": "telemetry.retention",
                "max_sessions": "telemetry.max_sessions",
            },
        ),
        (
            open_postgres_telemetry,
            {
                "batch_window_s": "telemetry.batch_window",
                "retention_s": "telemetry.retention",
                "max_sessions": "telemetry.max_sessions",
                "queue_capacity": "telemetry.queue_size",
            },
        ),
        (
            PostgresSessionWriter.__init__,
            {
                "batch_window_s": "telemetry.batch_window",
                "retention_s": "telemetry.retention",
                "max_sessions": "telemetry.max_sessions",
            },
        ),
        (TelemetryRecorder.__init__, {"capacity": "telemetry.queue_size"}),
        (
            Bridge.__init__,
            {
                "hot_capacity": "storage.hot_capacity",
                "max_rules_per_install": "server.max_rules_per_install",
            },
        ),
        (serve_metrics, {"port": "metrics.port"}),
    ],
    ids=lambda v: getattr(v, "__qualname__", ""),
)
def test_lower_layers_default_to_the_settings_defaults(
    func: Any, setting_of_parameter: dict[str, str]
) -> None:
    """A part built directly (tests, benchmarks, embedders) gets what the service gets
    when nothing is set: each default is the setting's."""
    defaults = _keyword_defaults(func)
    for parameter, setting_name in setting_of_parameter.items():
        assert parameter in defaults, (func, parameter)
        assert defaults[parameter] == BY_NAME[setting_name].default, (parameter, setting_name)


def test_named_default_constants_are_the_settings_defaults() -> None:
    assert BY_NAME["telemetry.queue_size"].default == DEFAULT_QUEUE_CAPACITY
    assert BY_NAME["storage.hot_capacity"].default == DEFAULT_HOT_CAPACITY
    assert BY_NAME["server.max_rules_per_install"].default == DEFAULT_MAX_RULES_PER_INSTALL


def test_a_short_refresh_interval_alone_is_accepted(tmp_path: pathlib.Path) -> None:
    # backoff_initial defaults to min(30 s, refresh_interval): a 2 s interval must not
    # be refused because of a default the user never set.
    resolved = resolve_config(parse_args(["--refresh-interval", "2"]), {})
    assert resolved.config.scheduler.refresh_interval == 2.0
    assert resolved.config.scheduler.backoff_initial == 2.0
    assert resolved.origins["scheduler.backoff_initial"] == "default"
    assert load([], {"GUARDREFRESH_REFRESH_INTERVAL": "0.1"}).scheduler.backoff_initial == 0.1
    path = write(tmp_path, "[scheduler]\nrefresh_interval = 5\n")
    assert load(["--config", str(path)]).scheduler.backoff_initial == 5.0
    # An explicit backoff is still checked against the interval.
    with pytest.raises(ConfigError, match="backoff_initial must be <= refresh_interval"):
        load(["--refresh-interval", "2", "--backoff-initial", "30"])
    # --help and --print-config say how the default is computed.
    assert "Default: min(30.0, refresh_interval)." in " ".join(format_help().split())
    text = render_config(resolved.config, origins=resolved.origins)
    assert "Default: min(30.0, refresh_interval)." in " ".join(text.split())
    assert "backoff_initial = 2.0" in text.splitlines()
    assert read_back(text, tmp_path) == resolved.config


def test_defaults() -> None:
    config = load()
    assert config == ServiceConfig()
    assert config.server.host == "127.0.0.1"  # loopback only unless asked otherwise
    assert config.server.port == 50051
    assert config.server.shutdown_grace == 10.0
    assert config.server.max_message_bytes == 4 * 1024 * 1024
    assert config.server.max_rules_per_install == 10_000
    assert config.server.max_connections == 0  # derived from the open-file limit
    assert config.server.idle_timeout == 300.0
    assert config.storage.warm_storage == pathlib.Path("./var/data/warm_storage.bin")
    assert config.storage.hot_capacity == 10_000
    assert config.scheduler == SchedulerConfig(
        refresh_interval=21600.0,
        jitter=0.1,
        enabled=True,
        refresh_on_start=True,
        backoff_initial=30.0,
        max_interval=86400.0,
    )
    assert config.logging.level == "INFO"


def test_config_classes_are_frozen_and_validate() -> None:
    config = ServiceConfig()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.server.port = 1  # type: ignore[misc]
    with pytest.raises(ConfigError, match=r"server\.port.*70000.*0 to 65535"):
        ServerConfig(port=70000)
    with pytest.raises(ConfigError, match=r"server\.port"):
        ServerConfig(port=True)
    with pytest.raises(ConfigError, match=r"storage\.warm_storage"):
        StorageConfig(warm_storage="x.bin")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"logging\.level.*'debug'"):
        LoggingConfig(level="debug")
    with pytest.raises(TypeError):
        ServiceConfig(server=SchedulerConfig())  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Help text


def test_help_documents_every_setting_with_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    text = " ".join(format_help().split())
    for setting in SETTINGS:
        default = setting.default_text
        assert setting.flag in text
        if setting.negative_flag:
            assert setting.negative_flag in text
        # Tied together in one option's help, in this order.
        assert (
            f"Default: {default}. Env: {setting.env}. TOML: [{setting.section}] {setting.key}."
            in text
        ), setting.name
    for general in ("--config PATH", "GUARDREFRESH_CONFIG", "--print-config", "--version"):
        assert general in text
    assert "0.0.0.0" in text  # how to listen on all interfaces


# ---------------------------------------------------------------------------
# Sources and precedence


def sources(
    setting: Setting[Any],
    tmp_path: pathlib.Path,
    *,
    flag: Any = None,
    env: Any = None,
    toml: Any = None,
) -> tuple[list[str], dict[str, str]]:
    argv: list[str] = []
    environ: dict[str, str] = {}
    if flag is not None:
        argv += flag_args(setting, flag)
    if env is not None:
        environ[setting.env] = as_text(env)
    if toml is not None:
        argv += ["--config", str(write(tmp_path, toml_line(setting, toml)))]
    return argv, environ


@pytest.mark.parametrize("name", SAMPLES)
@pytest.mark.parametrize("source", ["flag", "env", "toml"])
def test_each_source_alone(name: str, source: str, tmp_path: pathlib.Path) -> None:
    setting = BY_NAME[name]
    first, _ = SAMPLES[name]
    argv, environ = sources(setting, tmp_path, **{source: first})
    config = load(argv, environ)
    assert value_of(config, name) == first
    assert type(value_of(config, name)) is type(first)
    # Nothing else moved.
    for other in SETTINGS:
        if other is not setting:
            assert value_of(config, other.name) == other.default


@pytest.mark.parametrize("name", SAMPLES)
@pytest.mark.parametrize(
    ("stronger", "weaker"), [("flag", "env"), ("flag", "toml"), ("env", "toml")]
)
def test_precedence(name: str, stronger: str, weaker: str, tmp_path: pathlib.Path) -> None:
    setting = BY_NAME[name]
    first, second = SAMPLES[name]
    argv, environ = sources(setting, tmp_path, **{weaker: first, stronger: second})
    assert value_of(load(argv, environ), name) == second


@pytest.mark.parametrize("name", SAMPLES)
def test_flag_beats_env_beats_toml_beats_default(name: str, tmp_path: pathlib.Path) -> None:
    setting = BY_NAME[name]
    first, second = SAMPLES[name]
    argv, environ = sources(setting, tmp_path, flag=second, env=first, toml=first)
    resolved = resolve_config(parse_args(argv), environ)
    assert value_of(resolved.config, name) == second
    # A switch whose sample is False was given as its --no- form.
    expected = setting.negative_flag if second is False else setting.flag
    assert resolved.origins[name] == expected


def test_origins_name_each_source(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "[storage]\nhot_capacity = 7\n")
    resolved = resolve_config(
        parse_args(["--port", "7000", "--no-scheduler", "--config", str(path)]),
        {"GUARDREFRESH_JITTER": "0.2"},
    )
    assert resolved.origins["server.port"] == "--port"
    assert resolved.origins["scheduler.enabled"] == "--no-scheduler"
    assert resolved.origins["scheduler.jitter"] == "environment variable GUARDREFRESH_JITTER"
    assert resolved.origins["storage.hot_capacity"] == f"{path}: [storage] hot_capacity"
    assert resolved.origins["server.host"] == "default"
    assert resolved.config_file == path


def test_several_sources_at_once(tmp_path: pathlib.Path) -> None:
    path = write(
        tmp_path,
        '[server]\nport = 1111\nhost = "localhost"\n'
        "[scheduler]\nrefresh_interval = 60\njitter = 0.3\nenabled = false\n"
        '[logging]\nlevel = "warning"\n',
    )
    config = load(
        ["--config", str(path), "--port", "3333", "--scheduler"],
        {"GUARDREFRESH_PORT": "2222", "GUARDREFRESH_JITTER": "0.05", "GUARDREFRESH_HOST": "::1"},
    )
    assert config.server.port == 3333
    assert config.server.host == "::1"
    assert config.scheduler.refresh_interval == 60.0
    assert isinstance(config.scheduler.refresh_interval, float)  # TOML wrote an integer
    assert config.scheduler.jitter == 0.05
    assert config.scheduler.enabled is True
    assert config.logging.level == "WARNING"
    assert config.storage == StorageConfig()


def test_config_file_from_environment(tmp_path: pathlib.Path) -> None:
    from_env = write(tmp_path, "[server]\nport = 1111\n", "env.toml")
    from_flag = write(tmp_path, "[server]\nport = 2222\n", "flag.toml")
    assert load([], {"GUARDREFRESH_CONFIG": str(from_env)}).server.port == 1111
    config = load(["--config", str(from_flag)], {"GUARDREFRESH_CONFIG": str(from_env)})
    assert config.server.port == 2222
    assert load([], {"GUARDREFRESH_CONFIG": ""}) == ServiceConfig()


def test_empty_environment_variables_count_as_unset() -> None:
    environ = {s.env: "" for s in SETTINGS}
    assert load([], environ) == ServiceConfig()


def test_unknown_environment_variables_are_reported_not_fatal() -> None:
    environ = {"GUARDREFRESH_PROT": "1", "GUARDREFRESH_PORT": "2", "OTHER_PORT": "3"}
    resolved = resolve_config(parse_args([]), environ)
    assert resolved.unknown_environment == ("GUARDREFRESH_PROT",)
    assert resolved.config.server.port == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("FALSE", False), ("1", True), ("0", False), ("yes", True), ("No", False)],
)
def test_boolean_environment_spellings(text: str, expected: bool) -> None:
    config = load([], {"GUARDREFRESH_SCHEDULER_ENABLED": text})
    assert config.scheduler.enabled is expected


@pytest.mark.parametrize("spelling", ["debug", "Debug", "DEBUG"])
def test_log_level_is_case_insensitive(spelling: str, tmp_path: pathlib.Path) -> None:
    toml = write(tmp_path, f'[logging]\nlevel = "{spelling}"\n')
    assert load(["--log-level", spelling]).logging.level == "DEBUG"
    assert load([], {"GUARDREFRESH_LOG_LEVEL": spelling}).logging.level == "DEBUG"
    assert load(["--config", str(toml)]).logging.level == "DEBUG"


def test_flag_value_syntax() -> None:
    assert load(["--port=0"]).server.port == 0
    assert load(["--host", "0.0.0.0"]).server.host == "0.0.0.0"
    # The last occurrence wins, as usual for command lines.
    assert load(["--port", "1", "--port", "2"]).server.port == 2
    assert load(["--no-scheduler", "--scheduler"]).scheduler.enabled is True


# ---------------------------------------------------------------------------
# Bad values, from each source

# Text that is wrong for the flag and the environment variable, and a substring of
# what the message must say is allowed.
BAD_TEXT: list[tuple[str, str, str]] = [
    ("server.host", "a b", "no spaces"),
    ("server.host", "\t", "no spaces"),
    ("server.port", "70000", "from 0 to 65535"),
    ("server.port", "-1", "from 0 to 65535"),
    ("server.port", "http", "an integer"),
    ("server.port", "1.5", "an integer"),
    ("server.shutdown_grace", "-0.5", ">= 0"),
    ("server.shutdown_grace", "soon", "a number of seconds"),
    ("server.shutdown_grace", "nan", ">= 0"),
    ("server.max_message_bytes", "1023", ">= 1024"),
    ("server.max_message_bytes", "4MB", "an integer"),
    ("server.max_rules_per_install", "0", ">= 1"),
    ("server.max_connections", "-1", ">= 0"),
    ("server.idle_timeout", "-1", ">= 0"),
    ("storage.hot_capacity", "0", ">= 1"),
    ("storage.hot_capacity", "ten", "an integer"),
    ("scheduler.refresh_interval", "0", "> 0"),
    ("scheduler.refresh_interval", "-60", "> 0"),
    ("scheduler.refresh_interval", "inf", "> 0"),
    ("scheduler.refresh_interval", "6h", "a number of seconds"),
    ("scheduler.jitter", "0.6", "from 0 to 0.5"),
    ("scheduler.jitter", "-0.1", "from 0 to 0.5"),
    ("scheduler.backoff_initial", "0", "> 0"),
    ("scheduler.max_interval", "-5", "> 0"),
    ("logging.level", "TRACE", "DEBUG, INFO, WARNING, ERROR"),
    ("logging.level", "warn", "DEBUG, INFO, WARNING, ERROR"),
    ("enforce.management_plane_url", "127.0.0.1:8001", "an http:// or https:// URL"),
    ("enforce.management_plane_url", "ftp://mp/api", "an http:// or https:// URL"),
    ("enforce.management_plane_url", "http://", "an http:// or https:// URL"),
    ("enforce.management_plane_url", "http://mp/x?y=1", "without a query"),
]
# Only an environment variable can carry a bad boolean (flags are switches).
BAD_ENV_ONLY: list[tuple[str, str, str]] = [
    ("scheduler.enabled", "maybe", "true/false"),
    ("scheduler.enabled", "2", "true/false"),
    ("scheduler.refresh_on_start", "nope", "true/false"),
]
# Only a flag can carry an empty value (an empty environment variable is unset).
BAD_FLAG_ONLY: list[tuple[str, str, str]] = [
    ("server.host", "", "non-empty"),
    ("storage.warm_storage", "", "a file path"),
]


@pytest.mark.parametrize(("name", "text", "allowed"), BAD_TEXT + BAD_FLAG_ONLY)
def test_bad_flag_value(name: str, text: str, allowed: str) -> None:
    setting = BY_NAME[name]
    with pytest.raises(ConfigError) as exc:
        load([setting.flag, text])
    message = one_line(exc)
    assert message.startswith(f"{setting.flag}: invalid value {text!r}; allowed: ")
    assert allowed in message


@pytest.mark.parametrize(("name", "text", "allowed"), BAD_TEXT + BAD_ENV_ONLY)
def test_bad_environment_value(name: str, text: str, allowed: str) -> None:
    setting = BY_NAME[name]
    with pytest.raises(ConfigError) as exc:
        load([], {setting.env: text})
    message = one_line(exc)
    assert message.startswith(f"environment variable {setting.env}: invalid value {text!r}")
    assert allowed in message


# (setting, TOML literal, how the message shows it, what it says is allowed)
BAD_TOML: list[tuple[str, str, str, str]] = [
    ("server.host", '""', '""', "non-empty"),
    ("server.host", "1", "1", "a host name"),
    ("server.port", "70000", "70000", "from 0 to 65535"),
    ("server.port", '"50051"', '"50051"', "an integer"),
    ("server.port", "true", "true", "an integer"),
    ("server.port", "1.0", "1.0", "an integer"),
    ("server.shutdown_grace", "-1", "-1", ">= 0"),
    ("server.shutdown_grace", '"10"', '"10"', "a number of seconds"),
    ("server.shutdown_grace", "nan", "nan", "a number of seconds"),
    ("server.max_message_bytes", "1000", "1000", ">= 1024"),
    ("server.max_rules_per_install", "0", "0", ">= 1"),
    ("storage.warm_storage", '""', '""', "a file path"),
    ("storage.warm_storage", "5", "5", "a file path"),
    ("storage.warm_storage", '["a"]', "(an array)", "a file path"),
    ("storage.hot_capacity", "0", "0", ">= 1"),
    ("storage.hot_capacity", "1e3", "1000.0", "an integer"),
    ("scheduler.refresh_interval", "0", "0", "> 0"),
    ("scheduler.refresh_interval", "-inf", "-inf", "a number of seconds"),
    ("scheduler.refresh_interval", "1979-05-27", "(a date/time", "a number of seconds"),
    ("scheduler.jitter", "0.51", "0.51", "from 0 to 0.5"),
    ("scheduler.jitter", "true", "true", "a number"),
    ("scheduler.enabled", '"yes"', '"yes"', "a boolean"),
    ("scheduler.enabled", "1", "1", "a boolean"),
    ("scheduler.refresh_on_start", '"false"', '"false"', "a boolean"),
    ("scheduler.backoff_initial", "0", "0", "> 0"),
    ("scheduler.max_interval", "{}", "(a table)", "> 0"),
    ("logging.level", '"trace"', '"trace"', "DEBUG, INFO, WARNING, ERROR"),
    ("logging.level", "10", "10", "DEBUG, INFO, WARNING, ERROR"),
    ("enforce.management_plane_url", '"mp:8001"', '"mp:8001"', "an http:// or https:// URL"),
    ("enforce.management_plane_url", "8001", "8001", "an http:// or https:// URL"),
]


@pytest.mark.parametrize(("name", "literal", "shown", "allowed"), BAD_TOML)
def test_bad_toml_value(
    name: str, literal: str, shown: str, allowed: str, tmp_path: pathlib.Path
) -> None:
    setting = BY_NAME[name]
    path = write(tmp_path, f"[{setting.section}]\n{setting.key} = {literal}\n")
    with pytest.raises(ConfigError) as exc:
        load(["--config", str(path)])
    message = one_line(exc)
    assert message.startswith(f"{path}: [{setting.section}] {setting.key}: invalid value {shown}")
    assert allowed in message.partition("allowed:")[2]


def test_every_value_supplied_is_checked_even_when_overridden(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "[server]\nport = -1\n")
    with pytest.raises(ConfigError, match="GUARDREFRESH_PORT"):
        load(["--port", "1"], {"GUARDREFRESH_PORT": "x"})
    with pytest.raises(ConfigError, match=r"\[server\] port"):
        load(["--port", "1", "--config", str(path)])


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("[servr]\nport = 1\n", "unknown section servr; settings belong in one of the sections"),
        ("port = 1\n", "unknown top-level key port"),
        ('["a b"]\n', 'unknown section "a b"'),
        ("[server]\nprot = 1\n", "unknown key prot in [server]; known keys: host, port,"),
        ("[server.tls]\ncert = 'x'\n", "unknown key tls in [server]"),
        ("server = 1\n", "server must be a table ([server]), not the value 1"),
        ("[server]\nport = \n", "not a valid TOML file: Invalid value (at line 2, column 8)"),
        ("[server]\nport = 1\nport = 2\n", "not a valid TOML file:"),
    ],
)
def test_bad_toml_structure(document: str, expected: str, tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, document)
    with pytest.raises(ConfigError) as exc:
        load(["--config", str(path)])
    message = one_line(exc)
    assert message.startswith(f"{path}: ")
    assert expected in message


def test_unusable_config_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(["--config", ""])
    assert one_line(exc) == "--config: invalid value ''; allowed: a file path"

    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as exc:
        load(["--config", str(missing)])
    assert one_line(exc) == f"{missing}: cannot read config file: No such file or directory"

    with pytest.raises(ConfigError) as exc:
        load([], {"GUARDREFRESH_CONFIG": str(tmp_path)})
    assert one_line(exc) == f"{tmp_path}: cannot read config file: Is a directory"

    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"[server]\nhost = '\xff'\n")
    with pytest.raises(ConfigError) as exc:
        load(["--config", str(binary)])
    assert one_line(exc).startswith(f"{binary}: not a valid TOML file: ")


def test_messages_stay_on_one_line_whatever_the_input(tmp_path: pathlib.Path) -> None:
    odd = tmp_path / "two\nlines.toml"
    with pytest.raises(ConfigError) as exc:
        load(["--config", str(odd)])
    assert "two\\nlines.toml" in one_line(exc)
    with pytest.raises(ConfigError) as exc:
        load(["--port", "1\n2"])
    assert "'1\\n2'" in one_line(exc)


@pytest.mark.parametrize(
    ("argv", "environ", "toml", "expected"),
    [
        (
            ["--refresh-interval", "50", "--backoff-initial", "100"],
            {},
            "",
            "inconsistent [scheduler] settings: backoff_initial must be <= refresh_interval "
            "(50.0 s), got 100.0 (refresh_interval from --refresh-interval; "
            "backoff_initial from --backoff-initial)",
        ),
        (
            ["--refresh-interval", "100000"],
            {},
            "",
            "max_interval must be >= refresh_interval (100000.0 s), got 86400.0 "
            "(refresh_interval from --refresh-interval; max_interval from default)",
        ),
        (
            [],
            {"GUARDREFRESH_MAX_INTERVAL": "60"},
            "[scheduler]\nrefresh_interval = 120\n",
            "(refresh_interval from {path}: [scheduler] refresh_interval; "
            "max_interval from environment variable GUARDREFRESH_MAX_INTERVAL)",
        ),
    ],
)
def test_inconsistent_scheduler_settings(
    argv: list[str],
    environ: dict[str, str],
    toml: str,
    expected: str,
    tmp_path: pathlib.Path,
) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as exc:
        load([*argv, "--config", str(path)], environ)
    assert expected.format(path=path) in one_line(exc)


# ---------------------------------------------------------------------------
# The command line itself


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["serve"], "unrecognized arguments: serve"),
        (["--port"], "argument --port: expected one argument"),
        (["--po", "1"], "unrecognized arguments: --po 1"),  # no abbreviations
        (["--no-port"], "unrecognized arguments: --no-port"),
        (["--scheduler=yes"], "ignored explicit argument 'yes'"),
    ],
)
def test_usage_errors(argv: list[str], expected: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_args(argv)
    message = one_line(exc)
    assert expected in message
    assert message.endswith("(see guardrefresh --help)")


def test_help_and_version_win_over_the_rest_of_the_line() -> None:
    assert parse_args(["--help", "--bogus"]).show_help
    assert parse_args(["--port", "x", "-h"]).show_help
    assert parse_args(["--version", "--port"]).show_version
    options = parse_args(["--print-config", "--config", "x.toml", "--port", "1"])
    assert (options.print_config, options.show_help, options.show_version) == (
        True,
        False,
        False,
    )
    assert options.config_file == pathlib.Path("x.toml")
    assert options.flags == {"server.port": "1"}


# ---------------------------------------------------------------------------
# Rendering


def read_back(text: str, tmp_path: pathlib.Path) -> ServiceConfig:
    return load(["--config", str(write(tmp_path, text, "rendered.toml"))])


def test_render_round_trips_defaults(tmp_path: pathlib.Path) -> None:
    text = render_config(ServiceConfig())
    assert read_back(text, tmp_path) == ServiceConfig()
    document = tomllib.loads(text)
    assert set(document) == {
        "server",
        "storage",
        "scheduler",
        "logging",
        "metrics",
        "health",
        "enforce",
        "replication",
        "security",
        "telemetry",
    }
    assert {(section, key) for section in document for key in document[section]} == {
        (s.section, s.key) for s in SETTINGS
    }


@pytest.mark.parametrize("which", [0, 1])
def test_render_round_trips_every_setting(which: int, tmp_path: pathlib.Path) -> None:
    argv = [arg for name, pair in SAMPLES.items() for arg in flag_args(BY_NAME[name], pair[which])]
    config = load(argv)
    for name, pair in SAMPLES.items():
        assert value_of(config, name) == pair[which]
    assert read_back(render_config(config), tmp_path) == config


def test_render_annotates_origins(tmp_path: pathlib.Path) -> None:
    resolved = resolve_config(parse_args(["--port", "6123"]), {"GUARDREFRESH_LOG_LEVEL": "debug"})
    text = render_config(resolved.config, origins=resolved.origins)
    lines = text.splitlines()
    assert "port = 6123  # from --port" in lines
    assert 'level = "DEBUG"  # from environment variable GUARDREFRESH_LOG_LEVEL' in lines
    assert 'host = "127.0.0.1"' in lines  # defaults are not annotated
    assert read_back(text, tmp_path) == resolved.config


@settings(max_examples=50, deadline=None)
@given(
    path=st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=40),
    interval=st.floats(min_value=1e-6, max_value=1e9, allow_nan=False, allow_infinity=False),
)
def test_render_round_trips_any_path_and_number(path: str, interval: float) -> None:
    config = attrs.evolve(
        ServiceConfig(),
        storage=StorageConfig(warm_storage=pathlib.Path(path)),
        scheduler=SchedulerConfig(
            refresh_interval=interval,
            backoff_initial=min(30.0, interval),
            max_interval=max(86400.0, interval),
        ),
    )
    text = render_config(config)
    assert text.isascii()  # whatever encoding stdout has
    with tempfile.TemporaryDirectory() as directory:
        assert read_back(text, pathlib.Path(directory)) == config


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"tls_cert": pathlib.Path("c.pem")}, "tls_cert and tls_key go together"),
        ({"tls_key": pathlib.Path("k.pem")}, "tls_cert and tls_key go together"),
        ({"tls_client_ca": pathlib.Path("ca.pem")}, "needs tls_cert and tls_key"),
        ({"auth_reads": True}, "auth_reads needs admin_token_file"),
    ],
)
def test_security_combinations_are_checked_before_start(
    fields: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        SecurityConfig(**fields).check()
    SecurityConfig().check()
    SecurityConfig(
        tls_cert=pathlib.Path("c"), tls_key=pathlib.Path("k"), tls_client_ca=pathlib.Path("ca")
    ).check()


def test_staleness_limit_defaults_to_twice_the_interval() -> None:
    assert HealthConfig().staleness_limit(21600) == 43200
    assert HealthConfig(max_staleness=90.0).staleness_limit(21600) == 90.0


def test_telemetry_database_defaults_to_the_warm_storage_directory() -> None:
    config = load(["--warm-storage", "/srv/guard/warm.bin"])
    assert config.telemetry.database_path(config.storage.warm_storage) == pathlib.Path(
        "/srv/guard/telemetry.db"
    )
    config = load(["--warm-storage", "/srv/guard/warm.bin", "--telemetry-db", "/var/t.db"])
    assert config.telemetry.database_path(config.storage.warm_storage) == pathlib.Path("/var/t.db")
    assert not load(["--no-telemetry"]).telemetry.enabled
