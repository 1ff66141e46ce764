"""How a call ends when its client got something wrong: a status, never a traceback.

grpclib 0.4.9 answers three client mistakes as server errors, each with an ERROR
traceback per call (so a client could fill the log):

- a call already past its deadline when it starts: "Timeout occurred", UNKNOWN
  "Internal Server Error";
- a handler that goes on after its deadline fired instead of ending with the
  ``CancelledError`` (an install waiting on the Trio side commits regardless, then finds
  the client gone): "Failed to handle cancellation";
- a unary request that ends without its message: the generated handler's assertion,
  "Application error", UNKNOWN.

:func:`answer_expired_deadlines` ends both deadline cases with INFO "Deadline exceeded"
and DEADLINE_EXCEEDED; :func:`require_request_message` answers the missing message with
INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import weakref
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import grpclib.metadata
import grpclib.server
import grpclib.utils
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from . import _dependency_internals as internals

__all__ = ["ExpiredDeadlineWrapper", "answer_expired_deadlines", "require_request_message"]

logger = logging.getLogger(__name__)


class ExpiredDeadlineWrapper(grpclib.utils.DeadlineWrapper):  # type: ignore[misc]
    """grpclib's per-call deadline wrapper, mended so that every call whose deadline
    passes ends the same way: INFO "Deadline exceeded" and status DEADLINE_EXCEEDED.

    grpclib's ``start()`` raises ``TimeoutError`` for a call already past its deadline
    without marking the wrapper cancelled, so ``request_handler`` reports it as an
    internal error; and it reports a handler that finished after its deadline fired as
    a failure to handle cancellation. Here finishing work the client no longer waits
    for is legitimate, not a bug.
    """

    cancelled: bool | None
    cancel_failed: bool | None

    @contextlib.contextmanager
    def start(self, deadline: grpclib.metadata.Deadline) -> Iterator[None]:
        timeout = deadline.time_remaining()
        if not timeout:
            self.cancelled = True
            raise TimeoutError("Deadline exceeded")
        timer = asyncio.get_running_loop().call_later(
            timeout, self.cancel, TimeoutError("Deadline exceeded")
        )
        try:
            yield
        finally:
            timer.cancel()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        try:
            super().__exit__(exc_type, exc_val, exc_tb)
        finally:
            if self.cancel_failed:
                logger.debug("call went on past its deadline and ended with %r", exc_val)
                self.cancel_failed = False


def answer_expired_deadlines() -> None:
    """Make grpclib servers in this process answer expired calls DEADLINE_EXCEEDED.

    Idempotent. Process-wide: grpclib offers no per-server hook, and no server wants
    grpclib's behaviour (see :class:`ExpiredDeadlineWrapper`).
    """
    internals.use_deadline_wrapper(ExpiredDeadlineWrapper)


def require_request_message(stream: grpclib.server.Stream[Any, Any]) -> None:
    """Answer INVALID_ARGUMENT when a unary request ends without its message.

    For a method whose client sends one message, grpclib's ``recv_message()`` returns
    None when the request stream ends before any message, and the generated handlers
    assert it is not None. Client-streaming methods keep None (end of input).
    """
    if internals.client_streaming(stream):
        return
    # Through a weak reference: the stream itself stored on the stream would be a
    # reference cycle, leaving every call's stream to the cyclic GC.
    stream.recv_message = functools.partial(_recv_required_message, weakref.ref(stream))


async def _recv_required_message(
    stream_ref: weakref.ref[grpclib.server.Stream[Any, Any]],
) -> Any:
    stream = stream_ref()
    assert stream is not None, "a stream is alive while it is read from"
    # The class's method: the instance's own is this function.
    message = await grpclib.server.Stream.recv_message(stream)
    if message is None:
        raise GRPCError(Status.INVALID_ARGUMENT, "the request ended without a message")
    return message
