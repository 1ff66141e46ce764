"""Health as the conjunction of named conditions: :class:`ServingGate`."""

from __future__ import annotations

from typing import Protocol

__all__ = ["ServingGate"]


class _Serving(Protocol):
    def set_serving(self, serving: bool) -> None: ...


class ServingGate:
    """SERVING only while every condition holds (the rules fresh, the first fleet
    sync done, the replication lag within its limit, ...).

    Each watcher owns one named condition and sets it with :meth:`set`; none of them
    can turn health back on while another condition fails. Nothing is reported
    before :meth:`open` (start-up is not done).
    """

    def __init__(self, host: _Serving) -> None:
        self._host = host
        self._failing: set[str] = set()
        self._open = False

    def open(self) -> None:
        self._open = True
        self._host.set_serving(not self._failing)

    def set(self, condition: str, holds: bool) -> None:
        if holds:
            self._failing.discard(condition)
        else:
            self._failing.add(condition)
        if self._open:
            self._host.set_serving(not self._failing)

    @property
    def failing(self) -> frozenset[str]:
        return frozenset(self._failing)
