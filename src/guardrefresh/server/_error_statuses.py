"""Domain errors as gRPC statuses, for every DataPlane handler.

One decorator, so that every handler answers the same error the same way, and a handler
exception never reaches grpclib unmapped (grpclib would answer UNKNOWN and log a
traceback per call).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from grpclib import GRPCError, Status

from ..bridge import RuleConflictError, RuleNotFoundError, TooManyRulesError
from ..model import RuleValidationError
from ..refresh import RefreshError
from ..replication import ReplicationError
from ..storage import StorageError

__all__ = ["map_errors"]

logger = logging.getLogger(__name__)

_Msg = TypeVar("_Msg")
_Resp = TypeVar("_Resp")


def map_errors(
    handler: Callable[[Any, _Msg], Awaitable[_Resp]],
) -> Callable[[Any, _Msg], Awaitable[_Resp]]:
    """Turn domain errors into gRPC statuses; log and hide anything unexpected."""

    @functools.wraps(handler)
    async def wrapper(self: Any, message: _Msg) -> _Resp:
        try:
            return await handler(self, message)
        except GRPCError:
            raise
        except RuleValidationError as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None
        except TooManyRulesError as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None
        except RuleNotFoundError as exc:
            raise GRPCError(Status.NOT_FOUND, str(exc)) from None
        except RuleConflictError as exc:
            raise GRPCError(Status.FAILED_PRECONDITION, str(exc)) from None
        except StorageError as exc:
            # Otherwise an operator would see a failing write only at the client;
            # refresh failures are logged by the refresh service itself.
            logger.warning("%s failed, answered UNAVAILABLE: %s", handler.__name__, exc)
            raise GRPCError(Status.UNAVAILABLE, str(exc)) from None
        except RefreshError as exc:
            raise GRPCError(Status.UNAVAILABLE, str(exc)) from None
        except ReplicationError as exc:
            # Fleet mode: the database is unreachable, or this replica is behind.
            logger.warning("%s failed, answered UNAVAILABLE: %s", handler.__name__, exc)
            raise GRPCError(Status.UNAVAILABLE, str(exc)) from None
        except Exception:
            logger.exception("Unhandled error in %s", handler.__name__)
            raise GRPCError(
                Status.INTERNAL, f"internal error in {handler.__name__}; see server log"
            ) from None

    return wrapper
