from __future__ import annotations

import sys
from collections.abc import Sequence

from .._version import __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    del argv
    print(f"guardrefresh {__version__}", file=sys.stdout)
    return 0
