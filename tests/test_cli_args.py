"""The command line: exit codes, one-line errors, --print-config, --help, dispatch, logging."""

from __future__ import annotations

import io
import logging
import os
import pathlib
import re
import subprocess
import sys
import tomllib
import types
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import guardrefresh
from guardrefresh.cli import _main
from guardrefresh.cli._logging import LOG_FORMAT, TextFormatter, configure_logging
from guardrefresh.cli._main import main
from guardrefresh.config import SETTINGS, ServiceConfig


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # main() reads os.environ: the developer's own GUARDREFRESH_* must not leak in.
    for name in list(os.environ):
        if name.startswith("GUARDREFRESH_"):
            monkeypatch.delenv(name)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    chatty = {name: logging.getLogger(name).level for name in ("h2", "hpack")}
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    for name, old in chatty.items():
        logging.getLogger(name).setLevel(old)


def error_line(stderr: str) -> str:
    """The single line of a command-line error; fails on anything else."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("guardrefresh: error: ")
    return lines[0]


# ---------------------------------------------------------------------------
# In process


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"guardrefresh {guardrefresh.__version__}\n"


def test_argv_defaults_to_sys_argv(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["guardrefresh", "--version"])
    assert main() == 0
    assert guardrefresh.__version__ in capsys.readouterr().out


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: guardrefresh ")
    for setting in SETTINGS:
        assert setting.flag in out and setting.env in out


def test_print_config(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GUARDREFRESH_HOT_CAPACITY", "77")
    assert main(["--print-config", "--port", "6123", "--no-scheduler"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    document = tomllib.loads(captured.out)
    assert document["server"]["port"] == 6123
    assert document["storage"]["hot_capacity"] == 77
    assert document["scheduler"]["enabled"] is False
    assert document["logging"]["level"] == "INFO"
    assert "hot_capacity = 77  # from environment variable GUARDREFRESH_HOT_CAPACITY" in (
        captured.out.splitlines()
    )


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--port", "x"], {}, "--port: invalid value 'x'; allowed: an integer from 0 to 65535"),
        (["--jitter", "2", "--print-config"], {}, "--jitter: invalid value '2'"),
        ([], {"GUARDREFRESH_LOG_LEVEL": "loud"}, "GUARDREFRESH_LOG_LEVEL: invalid value 'loud'"),
        (["--bogus"], {}, "unrecognized arguments: --bogus (see guardrefresh --help)"),
        (["--port"], {}, "argument --port: expected one argument"),
        (["--config"], {}, "argument --config: expected one argument"),
        (["serve-now"], {}, "unrecognized arguments: serve-now"),
    ],
)
def test_errors_exit_2_with_one_line(
    argv: list[str],
    env: dict[str, str],
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert expected in error_line(captured.err)


def fake_app(monkeypatch: pytest.MonkeyPatch, exit_code: int) -> list[ServiceConfig]:
    """Stand in for guardrefresh.app (written elsewhere); records what it was run with."""
    calls: list[ServiceConfig] = []

    def run_service(config: ServiceConfig) -> int:
        calls.append(config)
        logging.getLogger("guardrefresh.app").debug("serving")
        return exit_code

    module = types.ModuleType("guardrefresh.app")
    module.run_service = run_service  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "guardrefresh.app", module)
    return calls


@pytest.mark.usefixtures("restore_logging")
def test_serve_configures_logging_and_runs_the_service(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = fake_app(monkeypatch, exit_code=1)
    monkeypatch.setenv("GUARDREFRESH_PROT", "6000")
    assert main(["--port", "0", "--log-level", "debug"]) == 1  # the service's own code
    assert len(calls) == 1
    assert calls[0].server.port == 0
    assert calls[0].logging.level == "DEBUG"
    assert logging.getLogger().level == logging.DEBUG

    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(
        stamp + r" INFO guardrefresh\.cli\._main: guardrefresh \S+ starting; config file: none; "
        r"settings not at their default: server\.port from --port, logging\.level from --log-level",
        lines[0],
    ), lines
    assert re.fullmatch(
        stamp + r" WARNING guardrefresh\.cli\._main: ignoring unknown environment variable "
        r"GUARDREFRESH_PROT \(see --help\)",
        lines[1],
    ), lines
    assert re.fullmatch(stamp + r" DEBUG guardrefresh\.app: serving", lines[2]), lines
    assert len(lines) == 3


def test_bad_config_does_not_start_the_service(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = fake_app(monkeypatch, exit_code=0)
    assert main(["--hot-capacity", "0"]) == 2
    assert main(["--print-config"]) == 0
    assert calls == []
    capsys.readouterr()


def test_subcommands_are_dispatched_on_the_first_argument(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[Sequence[str]] = []

    def status(args: Sequence[str]) -> int:
        seen.append(args)
        return 5

    monkeypatch.setattr(_main, "_COMMANDS", {"status": status})
    assert main(["status", "--port", "x"]) == 5
    assert seen == [["--port", "x"]]
    # A subcommand name later on the line is not a subcommand: no subcommand = serve.
    assert main(["--print-config", "status"]) == 2
    assert "unrecognized arguments: status" in error_line(capsys.readouterr().err)
    assert main(["--print-config"]) == 0
    assert seen == [["--port", "x"]]


# ---------------------------------------------------------------------------
# Logging set-up


@pytest.mark.usefixtures("restore_logging")
def test_configure_logging_replaces_its_own_handler_only() -> None:
    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    first, second = io.StringIO(), io.StringIO()
    configure_logging("WARNING", stream=first)
    configure_logging("DEBUG", stream=second)
    logging.getLogger("guardrefresh.test").debug("hello %s", "there")
    logging.getLogger("hpack.hpack").debug("header noise")
    assert first.getvalue() == ""
    assert re.fullmatch(r"\S+ \S+ DEBUG guardrefresh\.test: hello there\n", second.getvalue())
    assert foreign in root.handlers
    root.removeHandler(foreign)
    assert LOG_FORMAT == "%(asctime)s %(levelname)s %(name)s: %(message)s"


@pytest.mark.usefixtures("restore_logging")
def test_configure_logging_level_filters() -> None:
    stream = io.StringIO()
    configure_logging("WARNING", stream=stream)
    log = logging.getLogger("guardrefresh.test")
    log.info("quiet")
    log.warning("loud")
    log.error("louder")
    assert [line.split(" ", 2)[2] for line in stream.getvalue().splitlines()] == [
        "WARNING guardrefresh.test: loud",
        "ERROR guardrefresh.test: louder",
    ]


_RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ guardrefresh\.test: ")


def _text_log(record: logging.LogRecord) -> list[str]:
    """``record`` as the service's text log writes it, split as a log reader splits lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    handler.handle(record)
    # Every line break a reader may honour: str.splitlines() knows them all.
    return stream.getvalue().splitlines()


@settings(max_examples=300, deadline=None)
@given(
    message=st.text(max_size=40),
    args=st.lists(st.text(max_size=40) | st.binary(max_size=10), max_size=3),
    error=st.none() | st.text(max_size=40),
)
def test_no_client_string_starts_a_text_log_line(
    message: str, args: list[str | bytes], error: str | None
) -> None:
    """Whatever text reaches a log call (format string, arguments, an exception's message),
    the text log holds one record: its first line, and indented lines under it."""
    exc_info = None
    if error is not None:
        try:
            raise ValueError(error)
        except ValueError:
            exc_info = sys.exc_info()
    fmt = message.replace("%", "%%") + " %s" * len(args)
    record = logging.LogRecord(
        "guardrefresh.test", logging.WARNING, __file__, 1, fmt, tuple(args), exc_info
    )
    first, *rest = _text_log(record)
    assert _RECORD_START.match(first), first
    assert all(line.startswith("    ") for line in rest), rest
    if error is None:
        assert rest == []
    else:
        assert rest[0] == "    Traceback (most recent call last):"


def test_text_log_escapes_a_forged_record() -> None:
    forged = "fam\n2026-01-01 00:00:00,000 ERROR guardrefresh.server._auth: FORGED"
    record = logging.LogRecord(
        "guardrefresh.test", logging.INFO, __file__, 1, "Refreshed families %s", (forged,), None
    )
    (line,) = _text_log(record)
    assert line.endswith(
        "INFO guardrefresh.test: Refreshed families "
        "fam\\n2026-01-01 00:00:00,000 ERROR guardrefresh.server._auth: FORGED"
    )
    try:
        raise ValueError("bad\r\n2026-01-01 00:00:00,000 ERROR x: FORGED\x1b[2K")
    except ValueError:
        record = logging.LogRecord(
            "guardrefresh.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    first, *traceback = _text_log(record)
    assert first.endswith("ERROR guardrefresh.test: failed")
    assert traceback[0] == "    Traceback (most recent call last):"
    # A traceback keeps its lines, each indented under the record; other controls escaped.
    assert traceback[-2:] == [
        "    ValueError: bad",
        "    2026-01-01 00:00:00,000 ERROR x: FORGED\\x1b[2K",
    ]


# ---------------------------------------------------------------------------
# Real processes: python -m guardrefresh


def run(
    tmp_path: pathlib.Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GUARDREFRESH_")}
    environ["COLUMNS"] = "100"
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "guardrefresh", *args],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_process_print_config_shows_environment_values(tmp_path: pathlib.Path) -> None:
    result = run(
        tmp_path,
        "--print-config",
        "--refresh-interval",
        "3600",
        env={"GUARDREFRESH_PORT": "6123", "GUARDREFRESH_SCHEDULER_ENABLED": "no"},
    )
    assert (result.returncode, result.stderr) == (0, "")
    document = tomllib.loads(result.stdout)
    assert document["server"]["port"] == 6123
    assert document["server"]["host"] == "127.0.0.1"
    assert document["scheduler"]["enabled"] is False
    assert document["scheduler"]["refresh_interval"] == 3600.0
    assert "port = 6123  # from environment variable GUARDREFRESH_PORT" in result.stdout

    # What --print-config prints, --config reads back to the same configuration.
    (tmp_path / "printed.toml").write_text(result.stdout, encoding="utf-8")
    again = run(tmp_path, "--print-config", "--config", "printed.toml")
    assert again.returncode == 0
    assert tomllib.loads(again.stdout) == document


def test_process_bad_flag_value(tmp_path: pathlib.Path) -> None:
    result = run(tmp_path, "--port", "99999")
    assert result.returncode == 2
    assert result.stdout == ""
    assert error_line(result.stderr) == (
        "guardrefresh: error: --port: invalid value '99999'; allowed: an integer from 0 to 65535"
    )


def test_process_unknown_flag(tmp_path: pathlib.Path) -> None:
    result = run(tmp_path, "--prot", "1")
    assert result.returncode == 2
    assert "unrecognized arguments: --prot 1" in error_line(result.stderr)


def test_process_bad_environment_value(tmp_path: pathlib.Path) -> None:
    result = run(tmp_path, env={"GUARDREFRESH_REFRESH_INTERVAL": "-1"})
    assert result.returncode == 2
    assert error_line(result.stderr) == (
        "guardrefresh: error: environment variable GUARDREFRESH_REFRESH_INTERVAL: "
        "invalid value '-1'; allowed: a number of seconds > 0"
    )


def test_process_bad_toml_value(tmp_path: pathlib.Path) -> None:
    (tmp_path / "guardrefresh.toml").write_text('[storage]\nhot_capacity = "many"\n')
    result = run(tmp_path, "--config", "guardrefresh.toml")
    assert result.returncode == 2
    assert error_line(result.stderr) == (
        'guardrefresh: error: guardrefresh.toml: [storage] hot_capacity: invalid value "many"; '
        "allowed: an integer >= 1"
    )


def test_process_broken_toml_file(tmp_path: pathlib.Path) -> None:
    (tmp_path / "broken.toml").write_text("[server\nport = 1\n")
    result = run(tmp_path, env={"GUARDREFRESH_CONFIG": "broken.toml"})
    assert result.returncode == 2
    assert error_line(result.stderr).startswith(
        "guardrefresh: error: broken.toml: not a valid TOML file: "
    )


def test_process_help(tmp_path: pathlib.Path) -> None:
    result = run(tmp_path, "--help")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("usage: guardrefresh ")
    text = " ".join(result.stdout.split())
    for setting in SETTINGS:
        assert f"Env: {setting.env}. TOML: [{setting.section}] {setting.key}." in text


def test_process_version(tmp_path: pathlib.Path) -> None:
    result = run(tmp_path, "--version")
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"guardrefresh {guardrefresh.__version__}\n",
        "",
    )
