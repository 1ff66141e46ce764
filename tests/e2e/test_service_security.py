"""TLS, mutual TLS, the admin token and file permissions, against a real service.

Certificates are made at test time with the openssl command (a throw-away CA, a
server certificate for 127.0.0.1 and a client certificate); clients are grpcio.
"""

from __future__ import annotations

import os
import subprocess
import types
from pathlib import Path

import grpc
import pytest
from support.trio_service import open_service
from support.waiting import in_thread

from guardrefresh.proto import rule_installation as pb

from .service import HOST, open_grpclib_client, rule_set, run_cli, to_grpcio

TOKEN = "correct-horse-battery-staple-42"


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    d = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        "req",
        "-x509",
        *ec,
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        d / "ca.key",
        "-out",
        d / "ca.pem",
    )
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        openssl(
            "req",
            *ec,
            "-subj",
            f"/CN={name}",
            "-keyout",
            d / f"{name}.key",
            "-out",
            d / f"{name}.csr",
        )
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl(
            "x509",
            "-req",
            "-in",
            d / f"{name}.csr",
            "-CA",
            d / "ca.pem",
            "-CAkey",
            d / "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            d / f"{name}.ext",
            "-out",
            d / f"{name}.pem",
        )
    return types.SimpleNamespace(
        dir=d,
        ca=d / "ca.pem",
        **{
            f"{n}_{k}": d / f"{n}.{ext}"
            for n in ("server", "client")
            for k, ext in (("cert", "pem"), ("key", "key"))
        },
    )


def stub(
    modules: types.SimpleNamespace, port: int, credentials: grpc.ChannelCredentials | None
) -> tuple[grpc.Channel, object]:
    target = f"{HOST}:{port}"
    channel = (
        grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    )
    return channel, modules.pb2_grpc.DataPlaneStub(channel)


def call_code(
    fn: object, request: object, metadata: tuple[tuple[str, str], ...] = ()
) -> grpc.StatusCode:
    try:
        fn(request, timeout=5, metadata=metadata)  # type: ignore[operator]
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


async def test_tls_and_mutual_tls(
    tmp_path: Path, pki: types.SimpleNamespace, grpcio_modules: types.SimpleNamespace
) -> None:
    pb2 = grpcio_modules.pb2
    server_tls = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))
    trust = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    (tmp_path / "tls").mkdir()
    (tmp_path / "mtls").mkdir()
    async with open_service(tmp_path / "tls", *server_tls) as service:
        assert service.find(r"gRPC over TLS$")
        channel, dp = stub(grpcio_modules, service.port, trust)
        with channel:
            assert (
                await in_thread(call_code, dp.GetRuleStats, pb2.GetRuleStatsRequest())
                is grpc.StatusCode.OK
            )
        plain, dp = stub(grpcio_modules, service.port, None)
        with plain:
            assert (
                await in_thread(call_code, dp.GetRuleStats, pb2.GetRuleStatsRequest())
                is grpc.StatusCode.UNAVAILABLE
            )
        assert await service.stop() == 0

    mutual = (*server_tls, "--tls-client-ca", str(pki.ca))
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.client_key.read_bytes(),
        certificate_chain=pki.client_cert.read_bytes(),
    )
    async with open_service(tmp_path / "mtls", *mutual) as service:
        assert service.find(r"gRPC over TLS, client certificates required")
        channel, dp = stub(grpcio_modules, service.port, with_cert)
        with channel:
            assert (
                await in_thread(call_code, dp.GetRuleStats, pb2.GetRuleStatsRequest())
                is grpc.StatusCode.OK
            )
        channel, dp = stub(grpcio_modules, service.port, trust)  # no client certificate
        with channel:
            assert (
                await in_thread(call_code, dp.GetRuleStats, pb2.GetRuleStatsRequest())
                is grpc.StatusCode.UNAVAILABLE
            )
        assert await service.stop() == 0


async def test_admin_token_guards_changes_and_never_shows_in_logs(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    pb2 = grpcio_modules.pb2
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    good = (("authorization", f"Bearer {TOKEN}"),)
    wrong = (("authorization", "Bearer not-the-token"),)
    rules = [to_grpcio(grpcio_modules, r) for r in rule_set("agent-a", "a")]
    install = pb2.InstallRulesRequest(agent_id="agent-a", rules=rules)
    async with open_service(tmp_path, "--admin-token-file", str(token_file)) as service:
        channel, dp = stub(grpcio_modules, service.port, None)
        with channel:
            for metadata in ((), wrong):
                for method, request in (
                    (dp.InstallRules, install),
                    (dp.RefreshRules, pb2.RefreshRulesRequest()),
                    (dp.RemoveAgentRules, pb2.RemoveAgentRulesRequest(agent_id="agent-a")),
                    (
                        dp.RemovePolicy,
                        pb2.RemovePolicyRequest(agent_id="agent-a", policy_id="a-deny"),
                    ),
                ):
                    code = await in_thread(call_code, method, request, metadata)
                    assert code is grpc.StatusCode.UNAUTHENTICATED
            stats = await in_thread(lambda: dp.GetRuleStats(pb2.GetRuleStatsRequest(), timeout=5))
            assert stats.total_rules == 0 and stats.bridge_version == 0  # nothing changed
            assert await in_thread(call_code, dp.InstallRules, install, good) is grpc.StatusCode.OK
            # Reads stay open without --auth-reads.
            assert (
                await in_thread(call_code, dp.GetRule, pb2.GetRuleRequest(rule_id="a-deny"))
                is grpc.StatusCode.OK
            )
            # The CLI client sends the token from --token-file.
            cli_token = tmp_path / "cli-token"
            cli_token.write_text(TOKEN)
            target = ("--target", f"{HOST}:{service.port}")
            refused = await run_cli(tmp_path, "refresh", *target)
            assert refused.returncode == 1 and b"UNAUTHENTICATED" in refused.stderr
            allowed = await run_cli(tmp_path, "refresh", *target, "--token-file", str(cli_token))
            assert allowed.returncode == 0, allowed.stderr.decode()
        assert await service.stop() == 0
    assert TOKEN not in service.log
    assert "Refused /rule_installation.DataPlane/InstallRules: missing admin token" in service.log


async def test_auth_reads_protects_reads_but_not_health(
    tmp_path: Path, grpcio_modules: types.SimpleNamespace
) -> None:
    pb2 = grpcio_modules.pb2
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    async with open_service(
        tmp_path, "--admin-token-file", str(token_file), "--auth-reads"
    ) as service:
        channel, dp = stub(grpcio_modules, service.port, None)
        with channel:
            request = pb2.GetRuleStatsRequest()
            assert (
                await in_thread(call_code, dp.GetRuleStats, request)
                is grpc.StatusCode.UNAUTHENTICATED
            )
            good = (("authorization", f"Bearer {TOKEN}"),)
            assert await in_thread(call_code, dp.GetRuleStats, request, good) is grpc.StatusCode.OK
            health = channel.unary_unary("/grpc.health.v1.Health/Check")
            assert await in_thread(lambda: health(b"", timeout=5)) is not None
        assert await service.stop() == 0


async def test_warm_files_are_private_and_foreign_files_refused(tmp_path: Path) -> None:
    async with open_service(
        tmp_path, "--warm-storage", str(tmp_path / "data" / "w.bin")
    ) as service:
        async with open_grpclib_client(service.port) as aio:
            await aio.call(
                "install_rules", pb.InstallRulesRequest(agent_id="a", rules=rule_set("a", "a"))
            )
        assert await service.stop() == 0
    data = tmp_path / "data"

    async def start_on(warm: Path) -> subprocess.CompletedProcess[bytes]:
        flags = ("--port", "0", "--metrics-port", "0", "--log-level", "WARNING")
        return await run_cli(tmp_path, *flags, "--warm-storage", str(warm))

    assert data.stat().st_mode & 0o777 == 0o700
    for path in data.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path
    (data / "w.bin").chmod(0o666)
    proc = await start_on(data / "w.bin")
    assert proc.returncode == 1
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "writable by group or others" in lines[0] and "chmod 600" in lines[0]
    (data / "w.bin").chmod(0o600)
    os.chown(data / "w.bin", 65534, 65534)
    proc = await start_on(data / "w.bin")
    assert proc.returncode == 1 and b"owned by uid 65534" in proc.stderr


async def test_default_bind_is_loopback(tmp_path: Path) -> None:
    async with open_service(tmp_path) as service:
        assert service.host == "127.0.0.1"
        assert await service.stop() == 0
