"""Generate the betterproto2 code for ``proto/rule_installation.proto``.

Usage: ``python scripts/generate_proto.py [OUT_DIR]``. Without OUT_DIR the
committed package ``src/guardrefresh/proto`` is rewritten. The test suite
regenerates into a temporary folder and fails if the committed code differs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
DEFAULT_OUT = ROOT / "src" / "guardrefresh" / "proto"
OPTIONS = "client_generation=async,server_generation=async,google_protobuf_descriptors"
HEADER = '"""Generated from proto/rule_installation.proto by scripts/generate_proto.py. Do not edit."""\n'


def generate(out_dir: Path) -> None:
    """Run protoc with the betterproto2 plugin and lay the result out as a package."""
    env = dict(os.environ)
    # protoc finds the plugin on PATH: the interpreter's bin folder holds it.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{PROTO_DIR}",
                f"--python_betterproto2_out={tmp}",
                f"--python_betterproto2_opt={OPTIONS}",
                str(PROTO_DIR / "rule_installation.proto"),
            ],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        (Path(tmp) / "__init__.py").write_text(HEADER)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.copytree(tmp, out_dir)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
