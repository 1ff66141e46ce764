"""Messages grpclib passes through undecoded or pre-encoded (see ``DataPlaneService``)."""

from __future__ import annotations

__all__ = ["RawRequest", "RawResponse"]


class RawRequest:
    """A request grpclib hands over undecoded (its codec calls ``FromString``).

    A large InstallRules takes seconds of pure-Python parsing; doing that on the
    event loop would stall every other call, health probes and signal handling.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    @classmethod
    def FromString(cls, data: bytes) -> RawRequest:  # the codec's protocol
        return cls(data)

    def SerializeToString(self) -> bytes:
        return self.data


class RawResponse(RawRequest):
    """A response the handler has serialized itself (grpclib's codec sends the bytes)."""

    __slots__ = ()
