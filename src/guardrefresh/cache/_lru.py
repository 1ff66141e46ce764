"""A least-recently-used cache that evicts in batches and swaps its content atomically."""

from __future__ import annotations

import logging
import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Iterable
from fractions import Fraction
from itertools import islice
from typing import Final, Generic, TypeVar

from ._stats import CacheStats

__all__ = ["HotCache"]

logger = logging.getLogger(__name__)

V = TypeVar("V")


class _Missing:
    __slots__ = ()


# A private sentinel rather than None, so that hits are counted right even if V admits None.
_MISSING: Final = _Missing()


def _batch_size(capacity: int, fraction: float) -> int:
    # Through the decimal repr, so that 0.07 means 7/100: 100 * 0.07 == 7.000000000000001
    # in binary floating point, and its ceiling would evict one entry too many.
    return max(1, math.ceil(Fraction(repr(fraction)) * capacity))


class HotCache(Generic[V]):
    """An LRU mapping of ``str`` keys to values, with a fixed capacity.

    Inserting a new key into a full cache first evicts the
    ``max(1, ceil(capacity * eviction_fraction))`` least recently used entries in one batch
    (1,000 of a capacity of 10,000), so that a steady stream of new keys pays for eviction once
    per batch rather than on every insert. Lookups and inserts are O(1).

    Every value belongs to a *family*, given by ``family_of(value)``; :meth:`replace` can swap
    the whole content or only the entries of some families.

    Recency is changed only by :meth:`get_and_mark` and :meth:`insert` / :meth:`insert_many`;
    :meth:`get` counts a hit or a miss without marking, :meth:`peek` and ``in`` do neither.

    Concurrency: the class is synchronous and not thread-safe. It is owned by the Trio thread;
    asyncio handlers hosted on the same thread through trio-asyncio may call it directly.
    No method awaits or yields, so a reader on the event loop sees each call as a whole, and
    :meth:`replace` swaps the new content in with a single assignment.

    Args:
        capacity: the maximum number of entries, at least 1.
        family_of: maps a value to its family name. Called by :meth:`replace` and
            :meth:`families` only; it must not raise for values held in the cache.
        eviction_fraction: the share of the capacity evicted in one batch,
            ``0 < eviction_fraction <= 1``.

    Raises:
        TypeError: if *capacity* is not an ``int``.
        ValueError: if *capacity* or *eviction_fraction* is out of range.
    """

    __slots__ = (
        "_batch",
        "_capacity",
        "_data",
        "_family_of",
        "_hits",
        "_misses",
        "_total_evicted",
        "_total_evictions",
    )

    def __init__(
        self,
        capacity: int,
        *,
        family_of: Callable[[V], str],
        eviction_fraction: float = 0.1,
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise TypeError(f"capacity must be an int, got {capacity!r}")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity!r}")
        if not (isinstance(eviction_fraction, int | float) and 0 < eviction_fraction <= 1):
            # The chained comparison is also False for NaN.
            raise ValueError(f"eviction_fraction must be in (0, 1], got {eviction_fraction!r}")
        self._capacity = capacity
        self._batch = _batch_size(capacity, float(eviction_fraction))
        self._family_of = family_of
        self._data: OrderedDict[str, V] = OrderedDict()
        self._hits = 0
        self._misses = 0
        self._total_evictions = 0
        self._total_evicted = 0

    @property
    def capacity(self) -> int:
        """The maximum number of entries."""
        return self._capacity

    @property
    def eviction_batch(self) -> int:
        """How many entries one eviction removes: ``max(1, ceil(capacity * fraction))``."""
        return self._batch

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        """Whether *key* is cached; counts no hit or miss and leaves recency alone."""
        return key in self._data

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} entries={len(self._data)} capacity={self._capacity} "
            f"hits={self._hits} misses={self._misses}>"
        )

    # -- reads ---------------------------------------------------------------------------

    def get(self, key: str) -> V | None:
        """Return the value of *key*, or ``None``; counts a hit or a miss, does not mark."""
        value = self._data.get(key, _MISSING)
        if isinstance(value, _Missing):
            self._misses += 1
            return None
        self._hits += 1
        return value

    def get_and_mark(self, key: str) -> V | None:
        """Return the value of *key*, or ``None``; counts a hit or a miss, and on a hit makes
        *key* the most recently used entry."""
        data = self._data
        value = data.get(key, _MISSING)
        if isinstance(value, _Missing):
            self._misses += 1
            return None
        self._hits += 1
        data.move_to_end(key)
        return value

    def mark_many(self, keys: Iterable[str]) -> list[str]:
        """:meth:`get_and_mark` each key in order, without returning values.

        Counts a hit for every cached key (which becomes the most recently used, the last
        one given ending up on top) and a miss for every other one.

        Returns:
            The keys that were not cached, in the order given.
        """
        move = self._data.move_to_end
        missing: list[str] = []
        seen = 0
        for key in keys:
            seen += 1
            try:
                move(key)
            except KeyError:
                missing.append(key)
        self._hits += seen - len(missing)
        self._misses += len(missing)
        return missing

    def peek(self, key: str) -> V | None:
        """Return the value of *key*, or ``None``, without counting or marking.

        For internal bookkeeping (tiering, diffs against warm storage), not for serving.
        """
        return self._data.get(key)

    def keys_mru(self, limit: int | None = None) -> list[str]:
        """Return the keys, most recently used first; at most *limit* of them if given.

        Raises:
            ValueError: if *limit* is negative.
        """
        if limit is None:
            return list(reversed(self._data))
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit!r}")
        return list(islice(reversed(self._data), limit))

    def snapshot(self) -> list[tuple[str, V]]:
        """Return a copy of the content as ``(key, value)`` pairs, least recently used first.

        ``insert_many(snapshot)`` into an empty cache rebuilds the same order, and so does
        ``replace(reversed(snapshot))`` (replace takes new keys warmest first).
        """
        return list(self._data.items())

    def families(self) -> dict[str, int]:
        """Return the number of entries of each family. O(n): it calls ``family_of`` on every
        value, because values are stored bare (no per-entry bookkeeping)."""
        return dict(Counter(map(self._family_of, self._data.values())))

    def stats(self) -> CacheStats:
        """Return a copy of the counters."""
        return CacheStats(
            entries=len(self._data),
            capacity=self._capacity,
            hits=self._hits,
            misses=self._misses,
            total_evictions=self._total_evictions,
            total_evicted=self._total_evicted,
        )

    # -- writes --------------------------------------------------------------------------

    def _evict_batch(self) -> int:
        data = self._data
        count = min(self._batch, len(data))
        popitem = data.popitem
        for _ in range(count):
            popitem(last=False)
        self._total_evictions += 1
        self._total_evicted += count
        logger.debug("evicted %d least recently used entries (capacity %d)", count, self._capacity)
        return count

    def insert(self, key: str, value: V) -> int:
        """Set *key* to *value* and make it the most recently used entry.

        If *key* is new and the cache is full, the least recently used batch is evicted first
        (one batch, :attr:`eviction_batch` entries). Updating an existing key never evicts.

        Returns:
            The number of entries evicted: 0, or the batch size.
        """
        data = self._data
        if key in data:
            data[key] = value
            data.move_to_end(key)
            return 0
        evicted = self._evict_batch() if len(data) >= self._capacity else 0
        data[key] = value
        return evicted

    def insert_many(self, items: Iterable[tuple[str, V]]) -> int:
        """:meth:`insert` each pair in order (the last one ends up most recently used).

        Not atomic: if iterating *items* raises, the pairs before the failure stay inserted.
        Use :meth:`replace` for an all-or-nothing change.

        Returns:
            The total number of entries evicted.
        """
        insert = self.insert
        return sum(insert(key, value) for key, value in items)

    def remove(self, key: str) -> V | None:
        """Remove *key* and return its value, or ``None`` if absent. Not an eviction."""
        return self._data.pop(key, None)

    def remove_many(self, keys: Iterable[str]) -> int:
        """Remove every key of *keys*; return how many were present. Not an eviction."""
        data = self._data
        removed = 0
        for key in keys:
            if data.pop(key, _MISSING) is not _MISSING:
                removed += 1
        return removed

    def replace(
        self,
        items: Iterable[tuple[str, V]],
        *,
        families: Collection[str] | None = None,
    ) -> None:
        """Atomically replace the whole content, or the entries of some families, by *items*.

        Scope: with ``families=None`` every current entry is replaced. Otherwise only the
        entries whose ``family_of(value)`` is in *families* are; every other entry keeps its
        value and its recency. Every value in *items* must belong to one of *families*.
        (A key held under another family that appears in *items* is taken over: it gets the
        new value, hence the new family, like a kept key below. A key identifies one entry.)

        Result, from least to most recently used:

        * the keys of *items* that are not currently cached ("new" keys), coldest first:
          they are placed in reverse order of *items*, so the first given is the warmest of
          them;
        * then the current entries that survive, in their current relative order: entries
          outside the scope unchanged, and entries whose key is in *items* with the new value.

        Current entries in scope whose key is not in *items* are dropped.

        Capacity: if the result would exceed :attr:`capacity`, the coldest new keys (the last
        given) are dropped, so that a refresh never pushes out the working set; surviving
        current entries never are. Dropping new keys, or entries in scope, is not an eviction
        in :meth:`stats`; hits and misses are kept.

        Duplicate keys in *items*: the last value wins, at the position of the first
        occurrence.

        Atomicity: *items* is consumed and the new mapping built completely before it is
        swapped in with one assignment; nothing here awaits or yields. If iterating *items*
        or calling ``family_of`` raises, or validation fails, the cache is unchanged.

        Raises:
            ValueError: if *families* is given and a value in *items* belongs to a family
                outside it (the cache is unchanged).
            TypeError: if *families* is a ``str`` (almost certainly meant ``[name]``).
        """
        incoming: dict[str, V] = {}
        if families is None:
            for key, value in items:
                incoming[key] = value
        else:
            if isinstance(families, str):
                raise TypeError(
                    f"families must be a collection of family names, not the str {families!r}"
                )
            scope = frozenset(families)
            family_of = self._family_of
            for key, value in items:
                family = family_of(value)
                if family not in scope:
                    raise ValueError(
                        f"replace(families={sorted(scope)!r}) got key {key!r} of family {family!r}"
                    )
                incoming[key] = value

        old = self._data
        survivors: list[tuple[str, V]] = []
        if families is None:
            survivors = [(key, incoming[key]) for key in old if key in incoming]
        else:
            family_of = self._family_of
            for key, value in old.items():
                if key in incoming:
                    survivors.append((key, incoming[key]))
                elif family_of(value) not in scope:
                    survivors.append((key, value))

        new_keys = [key for key in incoming if key not in old]
        # Survivors are current entries, so len(survivors) <= len(old) <= capacity.
        room = self._capacity - len(survivors)
        if len(new_keys) > room:
            logger.debug(
                "replace: %d new keys exceed the capacity %d; dropping the %d coldest",
                len(new_keys),
                self._capacity,
                len(new_keys) - room,
            )
            del new_keys[room:]

        fresh: OrderedDict[str, V] = OrderedDict((key, incoming[key]) for key in reversed(new_keys))
        fresh.update(survivors)
        # The only mutation: readers see the old mapping or the new one, never a mixture.
        self._data = fresh
