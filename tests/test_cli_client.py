"""The online subcommands (status, refresh, install, get, remove-policy, remove-agent).

Most tests run against one real ``python -m guardrefresh`` per module (real clock,
loopback, its own warm storage), calling ``guardrefresh.cli.main([...])`` in-process;
a few run the CLI itself as a subprocess. Tests that share the service use their own
agents and rule ids, so their order does not matter.

Token and TLS options are checked against a small plain-asyncio grpclib server in a
thread that records request metadata (the service does not check tokens yet), with
certificates made by the ``openssl`` command line tool.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
from factories import make_rule
from grpclib.events import RecvRequest, listen
from grpclib.server import Server
from support.service import free_port, running_service, service_env

from guardrefresh.cli import main
from guardrefresh.cli._format import human_duration, status_lines
from guardrefresh.model import PolicyType, Rule, RuleAnchors, rules_from_json, rules_to_json
from guardrefresh.proto import rule_installation as pb

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "rules.json"
PROCESS_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running service for the whole module; yields its ``127.0.0.1:PORT``."""
    with running_service(tmp_path_factory.mktemp("service")) as service:
        yield service.target


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def cli_process(*args: str | Path, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardrefresh", *(str(a) for a in args)],
        input=stdin.decode(),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        env=service_env(),
    )


def assert_one_error_line(err: str, *fragments: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("guardrefresh: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], err
    return lines[0]


def write_rules(path: Path, rules: Sequence[Rule]) -> Path:
    path.write_text(rules_to_json(rules), encoding="utf-8")
    return path


def agent_rules(agent: str, *ids: str, **fields: Any) -> list[Rule]:
    """Rules installed by ``agent``: global ones unless ``agent_id`` is given."""
    return [
        make_rule(rule_id, seed=i, installed_by=agent, config_id="cfg", owner="ops", **fields)
        for i, rule_id in enumerate(ids)
    ]


def get_rule(capsys: pytest.CaptureFixture[str], target: str, rule_id: str) -> tuple[str, Rule]:
    code, out, err = cli(capsys, "get", rule_id, "--target", target)
    assert (code, err) == (0, "")
    answer = json.loads(out)
    assert list(answer) == ["tier", "rule"]
    [rule] = rules_from_json(json.dumps({"rules": [answer["rule"]]}))
    return answer["tier"], rule


def without_installer(rule: Rule) -> Rule:
    """GetRule's RuleInstance carries no installed_by / config_id / owner."""
    return attrs.evolve(rule, installed_by="", config_id="", owner="")


# -- status ------------------------------------------------------------------------


def test_status_prints_a_table(capsys: pytest.CaptureFixture[str], target: str) -> None:
    code, out, err = cli(capsys, "status", "--target", target)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"guardrefresh at {target}"
    labels = [line.split(":")[0].strip() for line in lines[1:]]
    assert labels == [
        "last success",
        "next refresh",
        "last refresh",
        "consecutive failures",
        "last error",
        "interval",
        "scheduler",
        "bridge version",
        "hot rules",
        "warm rules",
        "stale",
    ]
    assert re.search(r"last success: +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(.+ ago\)$", out, re.M)
    # 6 h, jittered.
    assert re.search(r"next refresh: +\S+ \S+ UTC \(in [5-7]h( \d+m)?\)$", out, re.M)
    assert re.search(r"interval: +6h \(backoff: none\)$", out, re.M)
    assert re.search(r"scheduler: +enabled, running$", out, re.M)
    assert re.search(r"hot rules: +\d+ of capacity 10000$", out, re.M)
    assert re.search(r"stale: +no \(limit 12h\)$", out, re.M)


def test_status_json_is_one_object_with_every_field(
    capsys: pytest.CaptureFixture[str], target: str
) -> None:
    code, out, err = cli(capsys, "status", "--json", "--target", target)
    assert (code, err) == (0, "")
    status = json.loads(out)
    assert list(status) == [
        f.name for f in pb.GetRefreshStatusResponse().__dataclass_fields__.values()
    ]
    assert status["scheduler_enabled"] is True
    assert status["current_interval_s"] == 21600.0
    assert status["max_staleness_s"] == 43200.0
    assert status["stale"] is False
    assert isinstance(status["last_success_ms"], int) and status["last_success_ms"] > 0
    assert status["last_stats"]["trigger"] in ("startup", "rpc", "periodic")
    assert status["hot_capacity"] == 10000


def test_target_from_the_environment(
    capsys: pytest.CaptureFixture[str], target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GUARDREFRESH_TARGET", target)
    code, out, err = cli(capsys, "status", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["hot_capacity"] == 10000


def test_status_as_a_process(target: str) -> None:
    proc = cli_process("status", "--json", "--target", target)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert json.loads(proc.stdout)["scheduler_running"] is True


# -- install / get -------------------------------------------------------------------


def test_install_the_example_then_get_every_rule(
    capsys: pytest.CaptureFixture[str], target: str
) -> None:
    code, out, err = cli(capsys, "install", EXAMPLE, "--target", target)
    assert (code, err) == (0, "")
    assert re.fullmatch(
        r"installed 4 rules for agent 'support-assistant' "
        r"\(egress: 1, retrieval: 1, tool_call: 2\); bridge version \d+\n",
        out,
    )
    for expected in rules_from_json(EXAMPLE.read_bytes()):
        tier, rule = get_rule(capsys, target, expected.rule_id)
        assert tier in ("hot", "warm")
        assert rule == without_installer(expected)  # every RuleInstance field, exactly


def test_install_overrides_and_json(
    capsys: pytest.CaptureFixture[str], target: str, tmp_path: Path
) -> None:
    rules = agent_rules("from-file", "ov-1", "ov-2", layer="Lx")
    path = write_rules(tmp_path / "rules.json", rules)
    code, out, err = cli(
        capsys, "install", path, "--agent", "ov-agent", "--config-id", "c9", "--owner", "me",
        "--json", "--target", target,
    )  # fmt: skip
    assert (code, err) == (0, "")
    answer = json.loads(out)
    assert answer["success"] is True
    assert answer["rules_installed"] == 2
    assert answer["rules_by_layer"] == {"Lx": 2}
    assert answer["message"] == "Successfully installed 2 rules for agent ov-agent"
    # The rules belong to the --agent, not to the file's installer.
    code, out, err = cli(capsys, "remove-policy", "from-file", "ov-1", "--target", target)
    assert code == 1
    assert_one_error_line(
        err, "FAILED_PRECONDITION: Policy ov-1 does not belong to agent from-file"
    )
    code, out, err = cli(capsys, "remove-policy", "ov-agent", "ov-1", "--target", target)
    assert (code, out, err) == (0, "removed rule 'ov-1' of agent 'ov-agent'\n", "")


def test_install_from_stdin_as_a_process(target: str) -> None:
    rules = agent_rules("stdin-agent", "stdin-1")
    proc = cli_process("install", "-", "--target", target, stdin=rules_to_json(rules).encode())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("installed 1 rules for agent 'stdin-agent' (L1: 1); ")


def test_install_of_an_invalid_file_names_the_file_rule_and_field(
    capsys: pytest.CaptureFixture[str], target: str, tmp_path: Path
) -> None:
    doc = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    doc["rules"][0]["anchors"]["action"][0].append(0.5)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    code, out, err = cli(capsys, "install", path, "--target", target)
    assert (code, out) == (1, "")
    assert err == (
        f"guardrefresh: error: {path}: rule 'forbid-drop-production-database': "
        "anchors.action[0]: anchor vectors have exactly 32 values, got 33\n"
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{", "not valid JSON"),
        ('{"rules": []}', "holds no rules; nothing to install"),
        (
            rules_to_json(agent_rules("", "no-agent")),
            'no agent: set "agent_id" at the top of the file or pass --agent',
        ),
        (
            rules_to_json(agent_rules("a1", "m1") + agent_rules("a2", "m2")),
            "the rules have different installed_by values ('a1', 'a2'); "
            "install them separately or pass --agent",
        ),
    ],
)
def test_install_refuses_files_it_cannot_send(
    capsys: pytest.CaptureFixture[str], target: str, tmp_path: Path, text: str, fragment: str
) -> None:
    path = tmp_path / "rules.json"
    path.write_text(text)
    code, out, err = cli(capsys, "install", path, "--target", target)
    assert (code, out) == (1, "")
    assert_one_error_line(err, str(path), fragment)


def test_install_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = cli(capsys, "install", tmp_path / "nope.json")
    assert (code, out) == (1, "")
    assert_one_error_line(err, "cannot read", "nope.json", "No such file or directory")


def test_server_side_rejection_is_one_line_with_the_status(
    capsys: pytest.CaptureFixture[str], target: str, tmp_path: Path
) -> None:
    # Valid as a file, refused by the service: the rule is scoped to another agent.
    rules = agent_rules("rej-agent", "rej-1", agent_id="someone-else")
    path = write_rules(tmp_path / "rules.json", rules)
    code, out, err = cli(capsys, "install", path, "--target", target)
    assert (code, out) == (1, "")
    assert err == (
        "guardrefresh: error: INVALID_ARGUMENT: rule 'rej-1': agent_id: rule is scoped to "
        "agent 'someone-else' but the request is for 'rej-agent'\n"
    )


def test_rule_of_another_agent_is_a_conflict(
    capsys: pytest.CaptureFixture[str], target: str, tmp_path: Path
) -> None:
    path = write_rules(tmp_path / "rules.json", agent_rules("owner-1", "owned-1"))
    assert cli(capsys, "install", path, "--target", target)[0] == 0
    code, out, err = cli(capsys, "install", path, "--agent", "owner-2", "--target", target)
    assert (code, out) == (1, "")
    assert_one_error_line(err, "FAILED_PRECONDITION: rule 'owned-1' belongs to another agent")


def test_server_error_as_a_process_has_no_traceback(target: str) -> None:
    proc = cli_process("get", "no-such-rule", "--target", target)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == "guardrefresh: error: NOT_FOUND: no rule 'no-such-rule'\n"


# -- refresh -------------------------------------------------------------------------


def test_refresh_prints_one_line(capsys: pytest.CaptureFixture[str], target: str) -> None:
    code, out, err = cli(capsys, "refresh", "--target", target)
    assert (code, err) == (0, "")
    assert re.fullmatch(
        r"(unchanged: the hot cache already matches warm storage \(\d+ rules, families: all\)"
        r"; bridge version \d+, \d+ ms"
        r"|refreshed \d+ rules \(families: all\) in \d+ ms: \d+ added, \d+ removed, \d+ changed"
        r"; bridge version \d+)\n",
        out,
    )


def test_refresh_families_json(capsys: pytest.CaptureFixture[str], target: str) -> None:
    assert cli(capsys, "install", EXAMPLE, "--target", target)[0] == 0
    code, out, err = cli(
        capsys, "refresh", "--family", "data_exfiltration", "--family", "financial_actions",
        "--json", "--target", target,
    )  # fmt: skip
    assert (code, err) == (0, "")
    answer = json.loads(out)
    assert answer["success"] is True
    assert answer["trigger"] == "rpc"
    assert answer["family_ids"] == ["data_exfiltration", "financial_actions"]
    assert answer["rules_refreshed"] == 2


# -- removals --------------------------------------------------------------------------


def test_remove_policy_then_get_is_not_found(
    capsys: pytest.CaptureFixture[str], target: str, tmp_path: Path
) -> None:
    path = write_rules(tmp_path / "rules.json", agent_rules("rp-agent", "rp-1", "rp-2"))
    assert cli(capsys, "install", path, "--target", target)[0] == 0
    assert get_rule(capsys, target, "rp-1")[1].rule_id == "rp-1"
    code, out, err = cli(capsys, "remove-policy", "rp-agent", "rp-1", "--json", "--target", target)
    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "success": True,
        "message": "Removed policy rp-1",
        "rules_removed": 1,
    }
    code, out, err = cli(capsys, "get", "rp-1", "--target", target)
    assert (code, out) == (1, "")
    assert err == "guardrefresh: error: NOT_FOUND: no rule 'rp-1'\n"
    assert get_rule(capsys, target, "rp-2")[1].rule_id == "rp-2"


def test_remove_agent(capsys: pytest.CaptureFixture[str], target: str, tmp_path: Path) -> None:
    path = write_rules(tmp_path / "rules.json", agent_rules("ra-agent", "ra-1", "ra-2", "ra-3"))
    assert cli(capsys, "install", path, "--target", target)[0] == 0
    code, out, err = cli(capsys, "remove-agent", "ra-agent", "--target", target)
    assert (code, out, err) == (0, "removed 3 rules of agent 'ra-agent'\n", "")
    code, out, err = cli(capsys, "remove-agent", "ra-agent", "--target", target)
    assert (code, out, err) == (0, "removed 0 rules of agent 'ra-agent'\n", "")
    assert cli(capsys, "get", "ra-2", "--target", target)[0] == 1


# -- connection failures and usage -------------------------------------------------------


def test_connection_refused_names_the_target(capsys: pytest.CaptureFixture[str]) -> None:
    where = f"127.0.0.1:{free_port()}"
    code, out, err = cli(capsys, "status", "--target", where)
    assert (code, out) == (1, "")
    assert err == (
        f"guardrefresh: error: cannot connect to {where}: connection refused "
        "(is guardrefresh running there?)\n"
    )


def test_connection_refused_as_a_process() -> None:
    where = f"127.0.0.1:{free_port()}"
    proc = cli_process("refresh", "--target", where)
    assert proc.returncode == 1
    assert_one_error_line(proc.stderr, f"cannot connect to {where}: connection refused")


def test_silent_server_times_out(capsys: pytest.CaptureFixture[str]) -> None:
    # Listening but never accepting: the TCP handshake completes, no answer ever comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        where = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        code, out, err = cli(capsys, "status", "--timeout", "0.3", "--target", where)
        elapsed = time.monotonic() - started
    assert (code, out) == (1, "")
    assert err == f"guardrefresh: error: no answer from {where} within 0.3s (see --timeout)\n"
    assert 0.3 <= elapsed < 5


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["status", "--target", "localhost"], "bad target 'localhost': expected HOST:PORT"),
        (["status", "--target", "h:99999"], "bad target 'h:99999'"),
        (["status", "--timeout", "0"], "must be a positive number of seconds"),
        (["status", "--timeout", "soon"], "not a number: 'soon'"),
        (["status", "--bogus"], "unrecognized arguments: --bogus"),
        (["install"], "the following arguments are required: FILE"),
        (["remove-policy", "agent"], "the following arguments are required: POLICY"),
        (["get"], "the following arguments are required: RULE_ID"),
        (["status", "--tls-key", "k.pem"], "--tls-key needs --tls-cert"),
        (["status", "--tls-server-name", "x"], "--tls-server-name needs TLS"),
        (["refresh", "--family", ""], "--family must not be empty"),
    ],
)
def test_bad_usage_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    code, out, err = cli(capsys, *args)
    assert (code, out) == (2, "")
    assert_one_error_line(err, fragment)


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "install", "--help")
    assert (code, err) == (0, "")
    assert out.startswith("usage: guardrefresh install [-h] [--agent AGENT_ID]")
    assert "--tls-ca PATH" in out


# -- token and TLS, against a recording server -------------------------------------------


class RecordingDataPlane(pb.DataPlaneBase):  # type: ignore[misc]  # generated code is untyped
    async def get_refresh_status(
        self, message: pb.GetRefreshStatusRequest
    ) -> pb.GetRefreshStatusResponse:
        return pb.GetRefreshStatusResponse(bridge_version=42, hot_capacity=7)


@attrs.define
class Recorder:
    port: int
    metadata: list[dict[str, str]] = attrs.field(factory=list)


@contextlib.contextmanager
def recording_server(tls: ssl.SSLContext | None = None) -> Iterator[Recorder]:
    """A grpclib server on its own asyncio loop in a thread; records request metadata.

    The loop is a plain SelectorEventLoop made here: trio-asyncio, imported by other
    test modules, replaces the event loop policy for the whole process.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    recorder = Recorder(port=sock.getsockname()[1])
    loop = asyncio.SelectorEventLoop()
    started = threading.Event()
    failure: list[BaseException] = []

    async def on_request(event: RecvRequest) -> None:
        recorder.metadata.append(dict(event.metadata))

    async def start() -> Server:
        server = Server([RecordingDataPlane()])
        listen(server, RecvRequest, on_request)
        await server.start(sock=sock, ssl=tls)
        return server

    async def stop(server: Server) -> None:
        server.close()
        await server.wait_closed()

    def serve() -> None:
        try:
            server = loop.run_until_complete(start())
        except BaseException as exc:
            failure.append(exc)
            sock.close()
            loop.close()
            return
        finally:
            started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(stop(server))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    thread = threading.Thread(target=serve, name="recording-server")
    thread.start()
    try:
        assert started.wait(10)
        assert not failure, failure
        yield recorder
    finally:
        if not failure:
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        assert not thread.is_alive()


def test_token_file_sends_bearer_metadata(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    with recording_server() as server:
        where = f"127.0.0.1:{server.port}"
        code, out, err = cli(capsys, "status", "--json", "--token-file", token, "--target", where)
        assert (code, err) == (0, "")
        assert json.loads(out)["bridge_version"] == 42
        code, out, err = cli(capsys, "status", "--json", "--target", where)
        assert code == 0
    assert [m.get("authorization") for m in server.metadata] == ["Bearer s3cret-token", None]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(None, "cannot read --token-file"), ("two words", "must hold one token")],
)
def test_bad_token_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str | None, fragment: str
) -> None:
    token = tmp_path / "token"
    if content is not None:
        token.write_text(content)
    code, out, err = cli(capsys, "status", "--token-file", token, "--target", "127.0.0.1:1")
    assert (code, out) == (1, "")
    assert_one_error_line(err, fragment)


def openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(
        ["openssl", *(str(a) for a in args)],
        cwd=cwd,
        check=True,
        capture_output=True,
        timeout=PROCESS_TIMEOUT_S,
    )


def make_cert(directory: Path, name: str, ca: str, extensions: str) -> None:
    """``name.pem`` / ``name.key`` (EC P-256), signed by ``ca``; ``ca == name`` self-signs."""
    key_args = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    if ca == name:
        openssl("req", "-x509", *key_args, "-keyout", f"{name}.key", "-out", f"{name}.pem",
                "-days", "2", "-subj", f"/CN={name}", cwd=directory)  # fmt: skip
        return
    (directory / f"{name}.ext").write_text(extensions)
    openssl("req", *key_args, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}", cwd=directory)  # fmt: skip
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
            "-extfile", f"{name}.ext", cwd=directory)  # fmt: skip


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    make_cert(directory, "ca", "ca", "")
    make_cert(directory, "other-ca", "other-ca", "")
    make_cert(
        directory,
        "server",
        "ca",
        "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    make_cert(directory, "client", "ca", "extendedKeyUsage=clientAuth\n")
    return directory


def server_context(certs: Path, *, require_client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs / "server.pem", certs / "server.key")
    context.set_alpn_protocols(["h2"])
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(certs / "ca.pem")
    return context


def test_tls_verifies_the_server_by_name(capsys: pytest.CaptureFixture[str], certs: Path) -> None:
    with recording_server(server_context(certs)) as server:
        by_name: list[str | Path] = [
            "--target",
            f"localhost:{server.port}",
            "--tls-ca",
            certs / "ca.pem",
        ]
        code, out, err = cli(capsys, "status", "--json", *by_name)
        assert (code, err) == (0, ""), err
        assert json.loads(out)["bridge_version"] == 42

        # The certificate names localhost, not 127.0.0.1 ...
        by_address: list[str | Path] = [
            "--target",
            f"127.0.0.1:{server.port}",
            "--tls-ca",
            certs / "ca.pem",
        ]
        code, out, err = cli(capsys, "status", *by_address)
        assert (code, out) == (1, "")
        assert_one_error_line(
            err, f"TLS with 127.0.0.1:{server.port} failed", "CERTIFICATE_VERIFY_FAILED"
        )
        # ... unless told which name to verify.
        code, out, err = cli(
            capsys, "status", "--json", *by_address, "--tls-server-name", "localhost"
        )
        assert (code, err) == (0, ""), err

        # Another CA does not vouch for the server.
        code, out, err = cli(capsys, "status", *by_name[:2], "--tls-ca", certs / "other-ca.pem")
        assert code == 1
        assert_one_error_line(err, "TLS with", "CERTIFICATE_VERIFY_FAILED")

        # Plaintext against TLS fails in one line too.
        code, out, err = cli(capsys, "status", "--timeout", "5", *by_name[:2])
        assert (code, out) == (1, "")
        assert_one_error_line(err, f"gRPC connection to localhost:{server.port} failed", "--tls-ca")


def test_mutual_tls_sends_the_client_certificate(
    capsys: pytest.CaptureFixture[str], certs: Path
) -> None:
    with recording_server(server_context(certs, require_client_cert=True)) as server:
        base: list[str | Path] = [
            "--target",
            f"localhost:{server.port}",
            "--tls-ca",
            certs / "ca.pem",
        ]
        code, out, err = cli(
            capsys, "status", "--json", *base,
            "--tls-cert", certs / "client.pem", "--tls-key", certs / "client.key",
        )  # fmt: skip
        assert (code, err) == (0, ""), err
        assert json.loads(out)["hot_capacity"] == 7
        code, out, err = cli(capsys, "status", "--timeout", "5", *base)
        assert (code, out) == (1, "")
        assert_one_error_line(err, "requires a client certificate", "--tls-cert")


def test_unreadable_tls_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = cli(capsys, "status", "--tls-ca", tmp_path / "missing.pem")
    assert (code, out) == (1, "")
    assert_one_error_line(err, "cannot load --tls-ca", "missing.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    code, out, err = cli(capsys, "status", "--tls-cert", garbage)
    assert (code, out) == (1, "")
    assert_one_error_line(err, "cannot load --tls-cert", "garbage.pem")


# -- formatting, without a service ---------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (0.0734, "0.0734s"),
        (9.5, "9.5s"),
        (42.4, "42s"),
        (192, "3m 12s"),
        (120, "2m"),
        (21600, "6h"),
        (21359, "5h 55m"),
        (43200, "12h"),
        (2 * 86400 + 3 * 3600 + 59, "2d 3h"),
    ],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_status_lines_of_a_service_that_never_refreshed() -> None:
    now_ms = 1_750_000_000_000
    status = pb.GetRefreshStatusResponse(
        scheduler_enabled=True,
        scheduler_running=True,
        next_refresh_ms=now_ms - 5,
        consecutive_failures=3,
        last_error="corrupt warm storage 'w.bin': manifest at offset 0: checksum mismatch",
        current_interval_s=600.0,
        backoff_s=40.0,
        hot_capacity=100,
        stale=True,
        max_staleness_s=1200.0,
    )
    lines = status_lines(status, "h:1", now_ms=now_ms)
    assert lines == [
        "guardrefresh at h:1",
        "  last success:         never",
        "  next refresh:         2025-06-15 15:06:39 UTC (due now)",
        "  last refresh:         -",
        "  consecutive failures: 3",
        "  last error:           corrupt warm storage 'w.bin': manifest at offset 0: "
        "checksum mismatch",
        "  interval:             10m (backoff: 40s)",
        "  scheduler:            enabled, running",
        "  bridge version:       0",
        "  hot rules:            0 of capacity 100",
        "  warm rules:           0",
        "  stale:                YES (limit 20m)",
    ]


def test_status_lines_after_a_refresh() -> None:
    now_ms = 1_750_000_000_000
    status = pb.GetRefreshStatusResponse(
        scheduler_enabled=False,
        last_success_ms=now_ms - 192_000,
        last_success_age_ms=192_000,
        last_stats=pb.RefreshStatsMessage(
            rules_refreshed=10,
            duration_ms=35,
            trigger="periodic",
            family_ids=["f1", "f2"],
            bridge_version=7,
            rules_added=3,
            rules_removed=1,
            rules_changed=2,
        ),
        current_interval_s=21600.0,
        max_staleness_s=43200.0,
    )
    lines = status_lines(status, "h:1", now_ms=now_ms)
    assert lines[1] == "  last success:         2025-06-15 15:03:28 UTC (3m 12s ago)"
    assert lines[2] == "  next refresh:         none scheduled"
    assert lines[3] == (
        "  last refresh:         refreshed 10 rules (families: f1, f2) in 35 ms: 3 added, "
        "1 removed, 2 changed; bridge version 7; trigger periodic"
    )
    assert lines[7] == "  scheduler:            disabled, not running"
    assert lines[11] == "  stale:                no (limit 12h)"


# -- enforce -----------------------------------------------------------------------


def _enforce_rules(tenant: str) -> tuple[list[Rule], list[float], list[float]]:
    """A forbidden and a context_allow rule of ``tenant``, one anchor per slot each, and
    the vectors that match exactly one of them."""
    rng = np.random.default_rng(15)
    forbid_rows = rng.standard_normal((4, 32)).astype(np.float32)
    allow_rows = rng.standard_normal((4, 32)).astype(np.float32)
    rules = [
        make_rule(
            f"{tenant}-{kind.value}",
            agent_id=tenant,
            # A layer of their own: other tests install global rules in L1.
            layer="L-enforce",
            policy_type=kind,
            priority=10,
            drift_threshold=0.0,
            modification_spec="",
            params={"rule_decision": "min", "notes": f"{kind.value} note"},
            anchors=RuleAnchors.from_slots([[row.tolist()] for row in rows], (1, 1, 1, 1)),
            installed_by=tenant,
            config_id="cfg",
            owner="ops",
        )
        for kind, rows in (
            (PolicyType.FORBIDDEN, forbid_rows),
            (PolicyType.CONTEXT_ALLOW, allow_rows),
        )
    ]
    return rules, forbid_rows.ravel().tolist(), allow_rows.ravel().tolist()


@pytest.fixture(scope="module")
def enforce_tenant(target: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Installs the enforce rules once; yields the paths of the two vector files."""
    tenant = "cli-tenant"
    rules, forbid, allow = _enforce_rules(tenant)
    folder = tmp_path_factory.mktemp("enforce")
    path = write_rules(folder / "rules.json", rules)
    assert main(["install", str(path), "--target", target]) == 0
    files = {"forbid": folder / "forbid.json", "allow": folder / "allow.json"}
    files["forbid"].write_text(json.dumps(forbid))
    files["allow"].write_text(json.dumps({"vector": allow}))  # the encoder's answer shape
    return files


def test_enforce_prints_the_decision_and_the_evidence(
    capsys: pytest.CaptureFixture[str], target: str, enforce_tenant: dict[str, Path]
) -> None:
    common = ("--tenant", "cli-tenant", "--layer", "L-enforce", "--target", target)
    code, out, err = cli(capsys, "enforce", "--vector-file", enforce_tenant["forbid"], *common)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert re.fullmatch(
        r"DENY \(decision 0\) for tenant 'cli-tenant', layer 'L-enforce'; request \S+", lines[0]
    )
    assert lines[1] == "rules evaluated: 1; drift triggered: no"
    assert lines[2] == "slice similarities (action/resource/data/risk): 1.000 1.000 1.000 1.000"
    assert lines[4].split() == [
        "#", "rule", "name", "match", "action", "resource", "data", "risk", "thresholds",
        "mode", "slice", "anchor",
    ]  # fmt: skip
    assert lines[5].split() == [
        "1", "cli-tenant-forbidden", "forbidden", "note", "yes", "1.000", "1.000", "1.000",
        "1.000", "0.75/0.75/0.75/0.75", "min", "action", "0",
    ]  # fmt: skip

    code, out, err = cli(
        capsys, "enforce", "--vector-file", enforce_tenant["allow"], "--drift", "0.2",
        "--request-id", "cli-req-1", "--json", *common,
    )  # fmt: skip
    assert (code, err) == (0, "")
    answer = json.loads(out)
    assert (answer["decision_name"], answer["decision"], answer["request_id"]) == (
        "ALLOW",
        1,
        "cli-req-1",
    )
    assert [e["rule_id"] for e in answer["evidence"]] == [
        "cli-tenant-forbidden",
        "cli-tenant-context_allow",
    ]
    assert [e["decision"] for e in answer["evidence"]] == [0, 1]


def test_enforce_scope_and_fail_closed(
    capsys: pytest.CaptureFixture[str],
    target: str,
    enforce_tenant: dict[str, Path],
    tmp_path: Path,
) -> None:
    # Another tenant, or another layer: nothing in scope, DENY without evidence.
    for scope in (
        ("--tenant", "someone-else", "--layer", "L-enforce"),
        ("--tenant", "cli-tenant", "--layer", "L-other"),
    ):
        code, out, err = cli(
            capsys, "enforce", "--vector-file", enforce_tenant["allow"], *scope, "--target", target
        )
        assert (code, err) == (0, "")
        assert out.startswith("DENY (decision 0)")
        assert "rules evaluated: 0" in out and "no evidence: no rule was evaluated" in out
    # An intent without a vector, and no management plane URL on this service: fail-closed.
    intent = tmp_path / "intent.json"
    intent.write_text(
        json.dumps(
            {
                "id": "i-1", "schemaVersion": "v1.3", "tenantId": "overridden",
                "timestamp": 1.5, "actor": {"id": "a", "type": "agent"}, "action": "read",
                "resource": {"type": "db"}, "data": {"sensitivity": []},
                "risk": {"authn": "none"},
            }
        )
    )  # fmt: skip
    code, out, err = cli(
        capsys, "enforce", "--intent", intent, "--tenant", "cli-tenant", "--layer", "L-enforce",
        "--target", target,
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert out.startswith("DENY (decision 0) for tenant 'cli-tenant', layer 'L-enforce'")
    assert "rules evaluated: 0" in out


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("[1, 2, 3]", (), "3 numbers; expected 128"),
        ('{"vector": "x"}', (), 'expected a JSON array of numbers or {"vector": [...]}'),
        ("[" + ",".join(["1"] * 127) + ', "a"]', (), "value 127 is not a number"),
        ("not json", (), "not JSON"),
        ("[" + ",".join(["1"] * 128) + "]", ("--drift", "nan"), "--drift must be a finite number"),
    ],
)
def test_enforce_refuses_bad_input_before_calling(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    content: str,
    args: tuple[str, ...],
    message: str,
) -> None:
    path = tmp_path / "vector.json"
    path.write_text(content)
    # Port 1 would refuse: any call would fail differently.
    code, out, err = cli(
        capsys, "enforce", "--tenant", "t", "--vector-file", path, *args, "--target", "127.0.0.1:1"
    )
    assert (code, out) == (1 if "--drift" not in args else 2, "")
    assert_one_error_line(err, message)


def test_enforce_needs_one_source(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = cli(capsys, "enforce", "--tenant", "t")
    assert (code, out) == (2, "")
    assert_one_error_line(err, "one of the arguments --vector-file --intent is required")
    bad_intent = tmp_path / "intent.json"
    bad_intent.write_text('{"id": "x"}')
    code, out, err = cli(
        capsys, "enforce", "--tenant", "t", "--intent", bad_intent, "--target", "127.0.0.1:1"
    )
    assert (code, out) == (1, "")
    assert_one_error_line(err, "missing field 'schemaVersion'")
