"""The drain of a bound gRPC host, step by step; each step is logged ("drain N/6").

1. health goes NOT_SERVING (Watch streams see it); 2. the listening socket closes;
3. new calls, also on open connections, get UNAVAILABLE at once; 4. calls in flight get
up to the grace period (requests whose headers came before the drain count as in
flight, also those still waiting for their body: ``_held_requests``); 5. those still
running are cancelled and their clients get UNAVAILABLE (requests still without their
body too); 6. every connection closes (``_host_connections``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpclib.server
import trio
import trio_asyncio
from grpclib.const import Status
from grpclib.health.check import ServiceStatus

from . import _dependency_internals as internals
from ._calls import SHUTDOWN_MESSAGE, Calls
from ._connections import ConnectionGuard
from ._drain_report import DrainReport
from ._health import DrainAwareHealth
from ._host_connections import OpenConnections
from ._intake import ShedBackoff
from ._wakeup import Wakeup

__all__ = ["Drain", "close_listener", "requests_in_flight"]

logger = logging.getLogger(__name__)

# How long cancelled handlers get to send their trailers at the forced end, so that a
# handler that swallows cancellation cannot hold the shutdown.
_CANCEL_WAIT_S = 1.0
# How often the grace period looks again at requests held for their body, and how long
# it waits to see that nothing is in flight any more.
_HELD_POLL_S = 0.1
_SETTLE_S = 0.01


def requests_in_flight(calls: Calls, guard: ConnectionGuard) -> int:
    """RPCs in progress, health and reflection streams excluded: calls running, and
    requests whose headers came with their body not begun yet (``_held_requests``)."""
    return calls.in_flight + guard.held_requests


def close_listener(server: grpclib.server.Server) -> None:
    """Close the listening sockets only: running handlers and open connections go on.

    Idempotent; a no-op on a server that never bound.
    """
    listener = internals.listener(server)
    if listener is not None:
        listener.close()


class Drain:
    """The drain of one bound grpclib ``server`` listening on ``port``, run by the host's
    :meth:`~guardrefresh.server.GrpcHost.serve` task. ``skipped()`` tells whether the
    rest of the grace period was skipped."""

    def __init__(
        self,
        server: grpclib.server.Server,
        port: int,
        *,
        calls: Calls,
        connections: OpenConnections,
        guard: ConnectionGuard,
        health: DrainAwareHealth,
        status: ServiceStatus,
        backoff: ShedBackoff,
        wakeup: Wakeup,
        skipped: Callable[[], bool],
    ) -> None:
        self._server = server
        self._port = port
        self._calls = calls
        self._connections = connections
        self._guard = guard
        self._health = health
        self._status = status
        self._backoff = backoff
        self._wakeup = wakeup
        self._skipped = skipped
        self.began = False
        self.grace_over = False
        self.started_at = 0.0
        self.in_flight_at_start = 0

    def begin(self, grace: float, *, reason: str) -> None:
        """Steps 1 to 3: health NOT_SERVING, the listening socket closed, new calls refused."""
        self.began = True
        self.started_at = trio.current_time()
        self._calls.draining = True
        self._calls.drain_began_at = self.started_at
        self._guard.stop()
        # Requests whose headers came already are in flight too, body or not yet.
        self._guard.stop_holding_requests()
        held = self._guard.held_requests
        exempt_open = self._calls.open - self._calls.in_flight
        self.in_flight_at_start = self._in_flight()

        self._status.set(False)
        self._backoff.resume_all()  # the drain reads on until clients close their side
        logger.info(
            "drain 1/6 (%s): health NOT_SERVING; %d RPCs in flight (%d of them awaiting "
            "their request body), %d health/reflection streams open, grace %.3f s",
            reason,
            self.in_flight_at_start,
            held,
            exempt_open,
            grace,
        )
        close_listener(self._server)
        logger.info(
            "drain 2/6: listening socket on port %d closed; %d connections open",
            self._port,
            len(self._connections),
        )
        logger.info(
            "drain 3/6: new RPCs answered UNAVAILABLE (%d exempt methods keep answering)",
            len(self._calls.exempt),
        )

    async def wait_grace(self, grace: float) -> None:
        """Step 4: up to ``grace`` seconds for the calls in flight (less once skipped)."""
        why = "serve() cancelled"
        try:
            with trio.move_on_after(grace):
                while not self._skipped():
                    if not self._in_flight():
                        # A held request whose body just came is no call until its task
                        # has run: look again once the asyncio loop had its turn.
                        await trio.sleep(_SETTLE_S)
                        if not self._in_flight():
                            break
                    # Calls ending wake us; held requests leave unannounced: look again.
                    with trio.move_on_after(_HELD_POLL_S):
                        await self._wakeup.wait_for(
                            lambda: self._skipped() or not self._in_flight()
                        )
            why = "grace period over"
        finally:
            self._log_grace_over(why)

    def _in_flight(self) -> int:
        return requests_in_flight(self._calls, self._guard)

    def _log_grace_over(self, why: str) -> None:
        self.grace_over = True
        still = self._in_flight()
        if still == 0:
            why = "all in-flight RPCs done"
        elif self._skipped():
            why = "skip_grace()"
        logger.info(
            "drain 4/6: waited %.3f s (%s): %d of %d RPCs completed, %d still running",
            trio.current_time() - self.started_at,
            why,
            self.in_flight_at_start - still,
            self.in_flight_at_start,
            still,
        )

    async def finish(self) -> DrainReport:
        """Steps 5 and 6 (after :meth:`begin` with no grace if the drain had not begun):
        what still runs is cancelled, every connection closed. Run it shielded; it is
        bounded in time."""
        server = self._server
        if not self.began:
            self.begin(0.0, reason="serve() cancelled: forced")
        if not self.grace_over:
            self._log_grace_over("no grace: serve() cancelled")

        refused = self._guard.answer_held_requests(Status.UNAVAILABLE, SHUTDOWN_MESSAGE)
        cancelled, exempt_ended = self._calls.cancel_all()
        cancelled += refused
        self._health.close()  # Watch streams send their final status and end
        with trio.move_on_after(_CANCEL_WAIT_S):
            await self._wakeup.wait_for(lambda: not self._calls.open)
        if self._calls.open:
            logger.warning(
                "drain: %d handlers ignored cancellation for %.1f s; closing their connections",
                self._calls.open,
                _CANCEL_WAIT_S,
            )
        logger.info(
            "drain 5/6: cancelled %d RPCs with UNAVAILABLE (%d of them still awaiting their "
            "request body), ended %d health/reflection streams; %d new RPCs were rejected",
            cancelled,
            refused,
            exempt_ended,
            self._calls.rejected,
        )

        connections_closed = len(self._connections)
        await self._connections.close_all(handlers_running=self._calls.open > 0)
        # grpclib's own bookkeeping; nothing is left for it to cancel.
        server.close()
        with trio.move_on_after(_CANCEL_WAIT_S):
            await trio_asyncio.aio_as_trio(server.wait_closed)()

        report = DrainReport(
            in_flight_at_start=self.in_flight_at_start,
            completed=self.in_flight_at_start - cancelled,
            cancelled=cancelled,
            rejected=self._calls.rejected,
            connections_closed=connections_closed,
            duration_s=float(trio.current_time() - self.started_at),
        )
        logger.info(
            "drain 6/6: closed %d connections; drain done in %.3f s: %s",
            connections_closed,
            report.duration_s,
            report,
        )
        return report
