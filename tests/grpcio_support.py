"""What every suite that drives a real service with grpcio shares.

- :func:`service_env`: the child-process environment without a developer's own
  ``GUARDREFRESH_*`` settings.
- :func:`generate_grpcio_modules`: grpcio modules generated from the proto at test time
  (grpcio is the independent reference client), imported once per session.
- :class:`Outcome`: how a grpcio call ended.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import grpc
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = REPO_ROOT / "proto"
PROTO_FILE = PROTO_DIR / "rule_installation.proto"
_MODULES = ("rule_installation_pb2", "rule_installation_pb2_grpc")


def service_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment without GUARDREFRESH_* (a developer's settings must not leak), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDREFRESH_")}
    env.update(extra or {})
    return env


def generate_grpcio_modules(out_dir: Path) -> types.SimpleNamespace:
    """grpcio modules generated from the proto with grpc_tools.protoc, imported.

    Returns ``pb2`` (messages) and ``pb2_grpc`` (stubs). If an earlier suite of this
    session imported them already (same proto, same names), those are reused:
    protobuf refuses to register the same file twice.
    """
    if not all(name in sys.modules for name in _MODULES):
        out_dir.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [
                sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}",
                f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", str(PROTO_FILE),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            pytest.fail(f"grpc_tools.protoc failed:\n{result.stderr}")
        # The generated stub imports the messages by module name: import both while
        # the folder is on the path; they stay in sys.modules afterwards.
        sys.path.insert(0, str(out_dir))
        try:
            importlib.invalidate_caches()
            for name in _MODULES:
                importlib.import_module(name)
        finally:
            sys.path.remove(str(out_dir))
    return types.SimpleNamespace(pb2=sys.modules[_MODULES[0]], pb2_grpc=sys.modules[_MODULES[1]])


@attrs.frozen
class Outcome:
    """How a grpcio call ended."""

    code: grpc.StatusCode
    details: str
    response: Any
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return self.code is grpc.StatusCode.OK


def call_outcome(call: Callable[[], Any]) -> Outcome:
    """Run one blocking grpcio call and say how it ended (never raises RpcError)."""
    start = time.monotonic()
    try:
        response = call()
    except grpc.RpcError as err:
        return Outcome(err.code(), err.details() or "", None, time.monotonic() - start)
    return Outcome(grpc.StatusCode.OK, "", response, time.monotonic() - start)
