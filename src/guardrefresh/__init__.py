"""guardrefresh: the rule-refresh data plane of the Guard enforcement pipeline."""

from ._version import __version__

__all__ = ["__version__"]
