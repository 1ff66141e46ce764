"""What the test suites (and the benchmarks) share to drive real guardrefresh processes.

- :mod:`support.service`: the one launcher of ``python -m guardrefresh`` (a real
  process on 127.0.0.1, ready when its ``--ready-file`` appears), its environment and
  free ports. Standard library only, so ``bench`` imports it too (as
  ``tests.support.service``, from the repository root).
- :mod:`support.trio_service`: the same launcher for Trio tests (async waits).
- :mod:`support.waiting`: bounded polling on the real clock, and worker threads.
- :mod:`support.payloads`: anchor payloads for requests, as betterproto2 or grpcio
  messages.

Tests import these as ``support.<module>``: pytest puts ``tests/`` on the path.
This ``__init__`` imports nothing, so that ``bench`` can import the launcher without
pytest or grpcio.
"""
