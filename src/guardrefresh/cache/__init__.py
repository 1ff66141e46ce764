"""The in-memory hot cache of rules: a batch-evicting LRU with atomic replacement."""

from ._lru import HotCache
from ._stats import CacheStats

__all__ = ["CacheStats", "HotCache"]
