"""gRPC labels as go-grpc-prometheus reports them: code names, method types, buckets."""

from __future__ import annotations

from typing import Final

from grpclib.const import Cardinality, Status

__all__ = [
    "BUILTIN_GRPC_TYPES",
    "GRPC_TYPES",
    "RPC_DURATION_BUCKETS",
    "grpc_code_name",
    "split_method",
]

#: Buckets of ``grpc_server_handling_seconds``: go-grpc-prometheus' defaults
#: (``prometheus.DefBuckets``), plus 1 ms and 2.5 ms for the hot read path.
RPC_DURATION_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

#: ``grpc_type`` label values, as go-grpc-prometheus names them.
GRPC_TYPES: Final = {
    Cardinality.UNARY_UNARY: "unary",
    Cardinality.STREAM_UNARY: "client_stream",
    Cardinality.UNARY_STREAM: "server_stream",
    Cardinality.STREAM_STREAM: "bidi_stream",
}

# The services GrpcHost adds by itself; add_grpc_services() learns the others.
BUILTIN_GRPC_TYPES: Final = {
    "/grpc.health.v1.Health/Check": "unary",
    "/grpc.health.v1.Health/Watch": "server_stream",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": "bidi_stream",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": "bidi_stream",
}

# Go's codes.Code.String(), indexed by code: the grpc_code values existing
# dashboards (built on go-grpc-prometheus) filter on.
_GO_CODE_NAMES: Final = (
    "OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
    "Aborted", "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss",
    "Unauthenticated",
)  # fmt: skip
_CODE_BY_NAME: Final = {
    **{status.name: _GO_CODE_NAMES[status.value] for status in Status},
    **{name: name for name in _GO_CODE_NAMES},
}


def grpc_code_name(code: Status | str) -> str:
    """The ``grpc_code`` label: Go's name of the status code (``Status.UNAVAILABLE`` →
    ``"Unavailable"``, as go-grpc-prometheus reports it). Accepts a grpclib
    :class:`~grpclib.const.Status`, its name (``"UNAVAILABLE"``) or the Go name;
    :exc:`ValueError` for anything else.
    """
    if isinstance(code, Status):
        return _GO_CODE_NAMES[code.value]
    try:
        return _CODE_BY_NAME[code]
    except (KeyError, TypeError):
        raise ValueError(f"not a gRPC status code: {code!r}") from None


def split_method(path: str) -> tuple[str, str]:
    """``"/pkg.Service/Method"`` → ``("pkg.Service", "Method")``."""
    service, sep, method = path.lstrip("/").rpartition("/")
    if not sep or not service or not method:
        raise ValueError(f"not a gRPC method path ('/package.Service/Method'): {path!r}")
    return service, method
