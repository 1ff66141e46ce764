"""The process around the service: allocator and BLAS set-up, ``trio.run``, exit codes."""

from __future__ import annotations

import sys

import threadpoolctl
import trio

from ..config import ConfigError, ServiceConfig
from ..server import DependencyInternalsError
from ._memory import tune_allocator
from ._service import serve_service
from ._startup import StartupError

__all__ = ["run_service"]


def run_service(config: ServiceConfig) -> int:
    """Run the service in this process; returns the exit code.

    0 after a graceful shutdown, 1 with a one-line reason on stderr when it
    cannot start (also when an internal of a pinned dependency is missing).
    """
    tune_allocator()
    _single_threaded_blas()
    try:
        trio.run(serve_service, config)
    except ConfigError as exc:
        sys.stderr.write(f"guardrefresh: error: {exc}\n")
        return 2
    except (StartupError, DependencyInternalsError) as exc:
        sys.stderr.write(f"guardrefresh: error: {exc}\n")
        return 1
    except BaseExceptionGroup as group:
        startup = group.subgroup((StartupError, DependencyInternalsError))
        if startup is None:
            raise
        first = _leaves(startup)[0]
        sys.stderr.write(f"guardrefresh: error: {first}\n")
        return 1
    return 0


def _single_threaded_blas() -> None:
    """Run numpy's BLAS on the calling thread only, for the life of the process.

    Enforce scores an intent with small matrix products on the event loop thread. A
    multi-threaded BLAS hands each to worker threads that must all get a CPU: on a busy
    machine (measured: 2 cores, load 6) a 1.5 ms decision over 1,000 rules then took up to
    100 ms; single-threaded it stays at 1.3-10 ms.
    """
    threadpoolctl.threadpool_limits(limits=1, user_api="blas")


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        else:
            out.append(exc)
    return out
