"""What a call may cost the server before its handler runs.

grpclib reads a request message as ``recv_data(5)`` (the compression flag and the
length) and then ``recv_data(length)``, buffering the whole body. The host makes each
call's reads go through a :class:`RequestReader` (see ``_dependency_internals.intercept_request_reads``),
which enforces, in order:

1. the size limit: a message longer than ``max_message_bytes`` is refused at its
   length prefix (RESOURCE_EXHAUSTED), before any of it is buffered;
2. the pending-bytes budget: a body reserves its declared length in the process-wide
   :class:`~._budget.ByteBudget` until the handler may run; one that does not fit is
   refused (RESOURCE_EXHAUSTED);
3. the receive deadline: the first message must be complete within
   ``request_timeout`` of the call's headers, a later one within ``request_timeout`` of
   its length prefix; else the call ends with DEADLINE_EXCEEDED (grpclib then resets the
   stream, since the client has not finished sending);
4. admission: once the first message is in, the call waits for a run slot
   (:class:`~._admission.Admission`), still holding its reservation, since its bytes are
   still waiting; a refused call ends with RESOURCE_EXHAUSTED, and its connection is not
   read for a moment (:class:`ShedBackoff`): a flooding client would otherwise send the
   next call at once, and refusing calls costs the server almost as much as serving them.

So a client that stalls its bodies, or opens thousands of streams and never sends,
holds at most the budget, and only for ``request_timeout``; and a slot is only ever
held by a call whose request has fully arrived.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Hashable

import attrs
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from ._admission import Admission, AdmissionRefused
from ._budget import ByteBudget

__all__ = ["RequestLimits", "RequestReader", "ShedBackoff"]

logger = logging.getLogger(__name__)

_Read = Callable[[int], Awaitable[bytes]]


class ShedBackoff:
    """Slow down a connection one of whose calls was shed: fewer streams, and a pause.

    On a shed the connection is (1) told, by a SETTINGS frame, that it may have only
    ``shed_streams`` streams open at once (``limit_streams(connection, n)``; a
    conforming client, grpcio and grpclib included, then waits for one of its calls
    to end before it starts the next; one that does not breaks the protocol and loses
    the connection), and (2) not read for about ``seconds``: its calls already read go
    on and its answers are still written; what it sends meanwhile waits in the socket
    buffers (TCP pushes back on it). A later shed restarts the pause. Each pause lasts
    0.5 to 1.5 times ``seconds`` (at random), so that connections shed together are
    not all read again at the same moment.

    The stream limit stays until the connection has gone ``forgive_s`` seconds
    without a shed; then ``limit_streams(connection, None)`` restores the usual one.
    So a flooder's next burst is one call, not the dozens it had open, and refusing
    it costs little; a client that only burst once gets its streams back.
    ``connection`` is the connection's transport.
    """

    def __init__(
        self,
        seconds: float,
        *,
        shed_streams: int | None = None,
        forgive_s: float = 30.0,
        limit_streams: Callable[[Hashable, int | None], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if shed_streams is not None and shed_streams < 1:
            raise ValueError(f"shed_streams must be >= 1, got {shed_streams}")
        self._seconds = seconds
        self._shed_streams = shed_streams
        self._forgive_s = forgive_s
        self._limit_streams = limit_streams
        self._rng = rng or random.Random()
        self._resume_at: dict[asyncio.ReadTransport, asyncio.TimerHandle] = {}
        self._forgive_at: dict[asyncio.ReadTransport, asyncio.TimerHandle] = {}

    @property
    def paused(self) -> int:
        """Connections not being read now."""
        return len(self._resume_at)

    @property
    def limited(self) -> int:
        """Connections held to ``shed_streams`` streams now."""
        return len(self._forgive_at)

    def is_limited(self, connection: Hashable) -> bool:
        """Whether ``connection`` is held to ``shed_streams`` streams now (not forgiven)."""
        return connection in self._forgive_at

    def shed(self, connection: Hashable) -> None:
        if not isinstance(connection, asyncio.ReadTransport) or connection.is_closing():
            return
        loop = asyncio.get_running_loop()
        timer = self._resume_at.pop(connection, None)
        if timer is not None:
            timer.cancel()
        else:
            connection.pause_reading()
        pause = self._seconds * self._rng.uniform(0.5, 1.5)
        self._resume_at[connection] = loop.call_later(pause, self._resume, connection)
        if self._shed_streams is None or self._limit_streams is None:
            return
        forgive = self._forgive_at.pop(connection, None)
        if forgive is not None:
            forgive.cancel()  # limited already: only the clock starts over
        else:
            self._limit_streams(connection, self._shed_streams)
        self._forgive_at[connection] = loop.call_later(self._forgive_s, self._forgive, connection)

    def resume_all(self) -> None:
        """Read every paused connection again now (the drain needs to see clients close)."""
        for connection, timer in list(self._resume_at.items()):
            timer.cancel()
            self._resume(connection)
        for timer in self._forgive_at.values():
            timer.cancel()
        self._forgive_at.clear()

    def _resume(self, connection: asyncio.ReadTransport) -> None:
        del self._resume_at[connection]
        if not connection.is_closing():
            connection.resume_reading()

    def _forgive(self, connection: asyncio.ReadTransport) -> None:
        del self._forgive_at[connection]
        if not connection.is_closing() and self._limit_streams is not None:
            self._limit_streams(connection, None)


@attrs.frozen
class RequestLimits:
    """The limits every call's request reads share (one per host)."""

    max_message_bytes: int
    budget: ByteBudget
    #: Seconds; see the module docstring.
    request_timeout: float
    #: None: calls run as soon as their request is in.
    admission: Admission | None
    #: None: a connection whose call was shed is read on at once.
    backoff: ShedBackoff | None = None


class RequestReader:
    """Reads one call's request messages under :class:`RequestLimits`.

    ``connection`` identifies the call's HTTP/2 connection (for fair admission);
    ``admit`` is False for calls that never wait for a slot (health, reflection);
    ``headers_at`` is when the call's headers arrived (loop time; None: now), which
    the first message's deadline counts from. Call :meth:`finish` once the call's
    task has ended: it gives back the run slot.
    """

    def __init__(
        self,
        limits: RequestLimits,
        *,
        connection: Hashable,
        admit: bool,
        headers_at: float | None = None,
    ) -> None:
        self._limits = limits
        self._connection = connection
        self._admit = admit and limits.admission is not None
        self._loop = asyncio.get_running_loop()
        if headers_at is None:
            headers_at = self._loop.time()
        self._first_deadline = headers_at + limits.request_timeout
        self._expect_body = False
        self._messages = 0
        self._holds_slot = False
        self._demoted_slot = False
        if self._admit:
            assert limits.admission is not None
            limits.admission.enter(connection)
        self._finished = False

    @property
    def holds_slot(self) -> bool:
        """Whether this call holds a run slot now."""
        return self._holds_slot

    async def read(
        self, read: _Read, size: int, arrived: Callable[[int], bool] | None = None
    ) -> bytes:
        """``read(size)`` under the limits; raises :exc:`GRPCError` when one is crossed.

        ``arrived(size)``, if given, tells whether those bytes are in already: then no
        deadline is needed (the read returns without waiting), which spares the usual
        call a timer in the loop. Cancellation (client reset, its deadline, the drain)
        propagates; any reservation is given back first.
        """
        limits = self._limits
        if size > limits.max_message_bytes:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"request message of {size} bytes exceeds the limit of "
                f"{limits.max_message_bytes} bytes",
            )
        if not self._expect_body:
            # A length prefix, or the end of the stream (b"").
            # Only the first message has a deadline from the headers on.
            if self._messages or (arrived is not None and arrived(size)):
                prefix = await read(size)  # no timer: the usual call's prefix is in
            else:
                prefix = await self._within(read, size, self._first_deadline)
            self._expect_body = bool(prefix)
            return prefix
        self._expect_body = False
        first = self._messages == 0
        self._messages += 1
        if not limits.budget.try_reserve(size):
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"server busy: request bodies in progress hold {limits.budget.in_use} of "
                f"{limits.budget.limit} bytes; a body of {size} bytes does not fit",
            )
        try:
            if arrived is not None and arrived(size):
                body = await read(size)  # no timer: the usual call's body is in
            else:
                deadline = (
                    self._first_deadline if first else self._loop.time() + limits.request_timeout
                )
                body = await self._within(read, size, deadline)
            if first and self._admit and not self._take_free_slot():
                await self._acquire_slot()
            return body
        finally:
            limits.budget.release(size)

    def finish(self) -> None:
        """The call has ended: give back its run slot, if it holds one. Idempotent."""
        if self._finished:
            return
        self._finished = True
        admission = self._limits.admission
        if self._holds_slot:
            self._holds_slot = False
            assert admission is not None
            admission.release(self._demoted_slot)
        if self._admit:
            assert admission is not None
            admission.leave(self._connection)

    async def _within(self, read: _Read, size: int, deadline: float) -> bytes:
        try:
            async with asyncio.timeout_at(deadline):
                return await read(size)
        except TimeoutError:
            timeout = self._limits.request_timeout
            logger.debug("request not received within %s s; ending the call", timeout)
            raise GRPCError(
                Status.DEADLINE_EXCEEDED,
                f"request message not received within {timeout:g} s",
            ) from None

    def _take_free_slot(self) -> bool:
        """Take a run slot if one is free for this call now (the usual call: no waiting,
        no coroutine); whether it did."""
        admission = self._limits.admission
        assert admission is not None
        demoted = admission.try_acquire(self._connection)
        if demoted is None:
            return False
        self._demoted_slot = demoted
        self._holds_slot = True
        return True

    async def _acquire_slot(self) -> None:
        admission = self._limits.admission
        assert admission is not None
        try:
            self._demoted_slot = await admission.acquire(self._connection)
        except AdmissionRefused as exc:
            if self._limits.backoff is not None:
                self._limits.backoff.shed(self._connection)
            raise GRPCError(Status.RESOURCE_EXHAUSTED, str(exc)) from None
        self._holds_slot = True
