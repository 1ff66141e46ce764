"""Write the wire API of a ``.proto`` file as a JSON table.

Usage: ``python scripts/api_table.py PROTO_FILE [OUT.json [SOURCE_NOTE]]`` (stdout
without OUT; SOURCE_NOTE is recorded in the table as where the proto came from).

The table lists, per message, every field with its number, type, label and
``optional`` presence, and per RPC its request and response types. It is how
``tests/data/original_api.json`` was made from the original Guard data plane's
``data_plane/proto/rule_installation.proto``; ``tests/test_wire_api.py`` compares
that table with the descriptors embedded in our generated code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2

_TYPES = {
    value: name.removeprefix("TYPE_").lower()
    for name, value in descriptor_pb2.FieldDescriptorProto.Type.items()
}


def _label(field: descriptor_pb2.FieldDescriptorProto) -> str:
    # proto3 has no "required"; its descriptors call every non-repeated field LABEL_OPTIONAL,
    # which is not the `optional` keyword (that is proto3_optional, tabulated separately).
    return "repeated" if field.label == field.LABEL_REPEATED else "singular"


def field_row(field: descriptor_pb2.FieldDescriptorProto, oneofs: list[str]) -> dict[str, Any]:
    """One field as a plain dict; the same shape the test builds from our descriptors."""
    row: dict[str, Any] = {
        "name": field.name,
        "number": field.number,
        "type": _TYPES[field.type],
        "label": _label(field),
        "optional": field.proto3_optional,
    }
    if field.type_name:
        row["type_name"] = field.type_name
    # A proto3 optional field sits in a synthetic oneof: its presence is the "optional" flag.
    if field.HasField("oneof_index") and not field.proto3_optional:
        row["oneof"] = oneofs[field.oneof_index]
    return row


def message_rows(
    message: descriptor_pb2.DescriptorProto, prefix: str
) -> dict[str, list[dict[str, Any]]]:
    """Fields of a message and of its nested messages (map entries), by full name."""
    name = f"{prefix}.{message.name}"
    oneofs = [o.name for o in message.oneof_decl]
    rows = {name: [field_row(f, oneofs) for f in message.field]}
    for nested in message.nested_type:
        rows.update(message_rows(nested, name))
    return rows


def api_table(fds: descriptor_pb2.FileDescriptorSet, file_name: str) -> dict[str, Any]:
    """The table of one file of a descriptor set."""
    (proto,) = [f for f in fds.file if f.name == file_name]
    prefix = f".{proto.package}"
    messages: dict[str, list[dict[str, Any]]] = {}
    for message in proto.message_type:
        messages.update(message_rows(message, prefix))
    services = {
        f"{prefix}.{service.name}": {
            method.name: {
                "input": method.input_type,
                "output": method.output_type,
                "client_streaming": method.client_streaming,
                "server_streaming": method.server_streaming,
            }
            for method in service.method
        }
        for service in proto.service
    }
    return {
        "syntax": proto.syntax or "proto2",
        "package": proto.package,
        "messages": messages,
        "services": services,
    }


def table_of_proto(path: Path) -> dict[str, Any]:
    """Compile ``path`` with grpcio-tools' protoc and tabulate it."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{path.parent}",
                f"--descriptor_set_out={out}",
                str(path),
            ],
            check=True,
        )
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return api_table(fds, path.name)


def dumps(table: dict[str, Any], source: str = "") -> str:
    """JSON with one line per field or RPC, so a diff of two tables reads well."""

    def line(value: Any) -> str:
        return json.dumps(value, sort_keys=True)

    out = ["{"]
    if source:
        out.append(f' "source": {line(source)},')
    out.append(f' "syntax": {line(table["syntax"])},')
    out.append(f' "package": {line(table["package"])},')
    out.append(' "messages": {')
    messages = sorted(table["messages"].items())
    for i, (name, fields) in enumerate(messages):
        rows = ",\n".join(f"   {line(f)}" for f in fields)
        end = "," if i < len(messages) - 1 else ""
        out.append(f"  {line(name)}: [\n{rows}\n  ]{end}" if fields else f"  {line(name)}: []{end}")
    out.append(" },")
    out.append(' "services": {')
    services = sorted(table["services"].items())
    for i, (name, methods) in enumerate(services):
        rows = ",\n".join(f"   {line(m)}: {line(v)}" for m, v in sorted(methods.items()))
        end = "," if i < len(services) - 1 else ""
        out.append(f"  {line(name)}: {{\n{rows}\n  }}{end}")
    out.append(" }")
    out.append("}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    # Usage: api_table.py PROTO [OUT.json [SOURCE-NOTE]]
    source = sys.argv[3] if len(sys.argv) > 3 else ""
    table = dumps(table_of_proto(Path(sys.argv[1])), source)
    if len(sys.argv) > 2:
        Path(sys.argv[2]).write_text(table)
    else:
        sys.stdout.write(table)
