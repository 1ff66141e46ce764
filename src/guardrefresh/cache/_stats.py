"""Counters of the hot cache, as an immutable value."""

from __future__ import annotations

import attrs

__all__ = ["CacheStats"]


@attrs.frozen
class CacheStats:
    """A point-in-time copy of a :class:`~guardrefresh.cache.HotCache`'s counters.

    ``hits`` and ``misses`` count :meth:`~guardrefresh.cache.HotCache.get` and
    :meth:`~guardrefresh.cache.HotCache.get_and_mark` lookups only. ``total_evictions`` is the
    number of eviction batches, ``total_evicted`` the number of entries they removed.
    Replacements (:meth:`~guardrefresh.cache.HotCache.replace`) and explicit removals are not
    evictions.
    """

    entries: int
    capacity: int
    hits: int
    misses: int
    total_evictions: int
    total_evicted: int
