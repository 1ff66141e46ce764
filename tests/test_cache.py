"""Tests of guardrefresh.cache: batch eviction, marking, stats and atomic replacement."""

from __future__ import annotations

import math
from collections.abc import Iterator

import attrs
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from guardrefresh.cache import CacheStats, HotCache

# Values are (family, payload) pairs in these tests.
Value = tuple[str, int]


def fam(value: Value) -> str:
    return value[0]


def make(capacity: int = 10, eviction_fraction: float = 0.1) -> HotCache[Value]:
    return HotCache(capacity, family_of=fam, eviction_fraction=eviction_fraction)


def fill(cache: HotCache[Value], n: int, family: str = "f", prefix: str = "k") -> list[str]:
    keys = [f"{prefix}{i}" for i in range(n)]
    assert cache.insert_many((k, (family, i)) for i, k in enumerate(keys)) == 0
    return keys


def lru_first(cache: HotCache[Value]) -> list[str]:
    return [k for k, _ in cache.snapshot()]


# -- construction -------------------------------------------------------------------------


def test_defaults() -> None:
    # The capacity has no default here: the bridge and the service setting own it.
    cache: HotCache[Value] = HotCache(10_000, family_of=fam)
    assert cache.capacity == 10_000
    assert cache.eviction_batch == 1_000
    assert len(cache) == 0
    assert cache.stats() == CacheStats(
        entries=0, capacity=10_000, hits=0, misses=0, total_evictions=0, total_evicted=0
    )


@pytest.mark.parametrize("capacity", [0, -1])
def test_capacity_must_be_positive(capacity: int) -> None:
    with pytest.raises(ValueError, match="capacity"):
        make(capacity)


@pytest.mark.parametrize("capacity", [True, 10.0, "10"])
def test_capacity_must_be_an_int(capacity: object) -> None:
    with pytest.raises(TypeError, match="capacity"):
        HotCache(capacity, family_of=fam)  # type: ignore[arg-type]


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.0000001, math.nan, math.inf])
def test_eviction_fraction_range(fraction: float) -> None:
    with pytest.raises(ValueError, match="eviction_fraction"):
        make(10, fraction)


def test_capacity_is_read_only() -> None:
    cache = make()
    with pytest.raises(AttributeError):
        cache.capacity = 5  # type: ignore[misc]


# -- eviction ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capacity", "fraction", "batch"),
    [
        (10, 0.1, 1),
        (100, 0.1, 10),
        (10_000, 0.1, 1_000),
        (1, 0.1, 1),
        # 100 * 0.07 == 7.000000000000001 in binary floating point: still 7.
        (100, 0.07, 7),
        (15, 0.1, 2),  # ceil(1.5)
        (10, 1.0, 10),
        (3, 0.5, 2),
    ],
)
def test_eviction_batch_is_exact_and_least_recently_used(
    capacity: int, fraction: float, batch: int
) -> None:
    cache = make(capacity, fraction)
    assert cache.eviction_batch == batch
    keys = fill(cache, capacity)
    assert len(cache) == capacity

    assert cache.insert("new", ("f", -1)) == batch
    assert len(cache) == capacity - batch + 1
    for key in keys[:batch]:
        assert key not in cache
    assert lru_first(cache) == [*keys[batch:], "new"]
    stats = cache.stats()
    assert (stats.total_evictions, stats.total_evicted) == (1, batch)

    # Room for batch - 1 more new keys before the next batch.
    more = [f"m{i}" for i in range(batch - 1)]
    assert cache.insert_many((k, ("f", 0)) for k in more) == 0
    assert len(cache) == capacity
    assert cache.insert("next", ("f", 0)) == batch
    assert cache.stats().total_evictions == 2
    assert cache.stats().total_evicted == 2 * batch


def test_updating_existing_key_at_capacity_does_not_evict() -> None:
    cache = make(10)
    keys = fill(cache, 10)
    assert cache.insert(keys[0], ("f", 100)) == 0
    assert len(cache) == 10
    assert cache.peek(keys[0]) == ("f", 100)
    # The update marked it most recently used: keys[1] is evicted next.
    assert cache.insert("new", ("f", 0)) == 1
    assert keys[1] not in cache
    assert keys[0] in cache
    assert cache.stats().total_evictions == 1


def test_insert_many_returns_total_evicted() -> None:
    cache = make(10)
    # 25 new keys into an empty cache of 10 with batch 1: 15 evictions of one entry.
    assert cache.insert_many((f"k{i}", ("f", i)) for i in range(25)) == 15
    assert lru_first(cache) == [f"k{i}" for i in range(15, 25)]
    assert cache.stats().total_evictions == 15
    assert cache.stats().total_evicted == 15


def test_get_does_not_mark_but_get_and_mark_does() -> None:
    cache = make(10)
    keys = fill(cache, 10)

    assert cache.get(keys[0]) == ("f", 0)
    assert cache.peek(keys[1]) == ("f", 1)
    assert keys[2] in cache
    assert lru_first(cache) == keys  # none of the three changed recency
    cache.insert("a", ("f", 0))
    assert keys[0] not in cache  # get did not save it

    assert cache.get_and_mark(keys[1]) == ("f", 1)
    assert lru_first(cache)[-1] == keys[1]
    cache.insert("b", ("f", 0))
    assert keys[1] in cache  # get_and_mark saved it
    assert keys[2] not in cache


def test_get_and_mark_of_missing_key_changes_nothing() -> None:
    cache = make(3)
    keys = fill(cache, 3)
    assert cache.get_and_mark("absent") is None
    assert lru_first(cache) == keys


def test_mark_many_marks_hits_in_order_and_returns_misses() -> None:
    cache = make(5)
    keys = fill(cache, 5)
    before = cache.stats()
    assert cache.mark_many(["k3", "nope", "k0", "k3", "gone"]) == ["nope", "gone"]
    assert lru_first(cache) == ["k1", "k2", "k4", "k0", "k3"]
    stats = cache.stats()
    assert (stats.hits - before.hits, stats.misses - before.misses) == (3, 2)
    assert cache.mark_many([]) == []
    assert sorted(keys) == sorted(lru_first(cache))  # nothing inserted or evicted


def test_stats_count_hits_and_misses() -> None:
    cache = make(4)
    fill(cache, 4)
    assert cache.get("k0") is not None
    assert cache.get("k0") is not None
    assert cache.get("nope") is None
    assert cache.get_and_mark("k1") is not None
    assert cache.get_and_mark("nope") is None
    assert cache.get_and_mark("nope2") is None
    # Neither peek nor `in` counts.
    assert cache.peek("k2") is not None
    assert cache.peek("nope") is None
    assert "k3" in cache
    assert "nope" not in cache
    cache.insert("k4", ("f", 4))  # evicts 1
    assert cache.stats() == CacheStats(
        entries=4, capacity=4, hits=3, misses=3, total_evictions=1, total_evicted=1
    )


def test_stats_is_a_frozen_copy() -> None:
    cache = make(4)
    stats = cache.stats()
    cache.get("x")
    assert stats.misses == 0
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.hits = 3  # type: ignore[misc]


def test_remove_and_remove_many_are_not_evictions() -> None:
    cache = make(5)
    fill(cache, 5)
    assert cache.remove("k0") == ("f", 0)
    assert cache.remove("k0") is None
    assert cache.remove_many(["k1", "k2", "absent", "k1"]) == 2
    assert lru_first(cache) == ["k3", "k4"]
    stats = cache.stats()
    assert (stats.total_evictions, stats.total_evicted, stats.hits, stats.misses) == (0, 0, 0, 0)


def test_keys_mru_snapshot_and_families() -> None:
    cache = make(10)
    cache.insert("a", ("x", 1))
    cache.insert("b", ("y", 2))
    cache.insert("c", ("x", 3))
    cache.get_and_mark("a")
    assert cache.keys_mru() == ["a", "c", "b"]
    assert cache.keys_mru(2) == ["a", "c"]
    assert cache.keys_mru(0) == []
    assert cache.keys_mru(99) == ["a", "c", "b"]
    with pytest.raises(ValueError, match="limit"):
        cache.keys_mru(-1)
    snap = cache.snapshot()
    assert snap == [("b", ("y", 2)), ("c", ("x", 3)), ("a", ("x", 1))]
    snap.clear()  # a copy
    assert len(cache) == 3
    assert cache.families() == {"x": 2, "y": 1}


def test_snapshot_round_trips_through_insert_many_and_reversed_replace() -> None:
    cache = make(10)
    fill(cache, 6)
    cache.get_and_mark("k2")
    snap = cache.snapshot()
    a = make(10)
    a.insert_many(snap)
    assert a.snapshot() == snap
    b = make(10)
    b.replace(reversed(snap))
    assert b.snapshot() == snap


def test_many_inserts_into_a_full_cache_stay_cheap() -> None:
    # 200k inserts and 200k lookups: O(n) work per operation would take minutes here.
    cache: HotCache[int] = HotCache(10_000, family_of=lambda v: "f")
    evicted = 0
    for i in range(200_000):
        evicted += cache.insert(f"r{i}", i)
        cache.get_and_mark(f"r{i // 2}")
    # 190k new keys after the first 10k: 190 batches of 1,000.
    assert evicted == 190_000
    assert len(cache) == 10_000
    stats = cache.stats()
    assert (stats.total_evictions, stats.total_evicted) == (190, 190_000)
    assert stats.hits + stats.misses == 200_000


# -- replace -----------------------------------------------------------------------------


def test_replace_all_keeps_recency_of_kept_keys_and_puts_new_ones_cold() -> None:
    cache = make(10)
    fill(cache, 5)  # LRU first: k0..k4
    cache.get_and_mark("k1")  # k0 k2 k3 k4 k1
    cache.replace([("n1", ("f", 10)), ("k3", ("f", 33)), ("n2", ("f", 20)), ("k1", ("f", 11))])
    # New keys cold side, first given warmest; kept keys keep relative order; k0/k2/k4 gone.
    assert cache.snapshot() == [
        ("n2", ("f", 20)),
        ("n1", ("f", 10)),
        ("k3", ("f", 33)),
        ("k1", ("f", 11)),
    ]


def test_replace_all_drops_coldest_new_keys_over_capacity() -> None:
    cache = make(5)
    fill(cache, 5)
    cache.replace(
        [("n0", ("f", 0)), ("k4", ("f", 4)), ("n1", ("f", 1)), ("k0", ("f", 0))]
        + [(f"n{i}", ("f", i)) for i in range(2, 8)]
    )
    # Kept: k0, k4 (in their old order). Room for 3 new: n0, n1, n2 (the first given).
    assert lru_first(cache) == ["n2", "n1", "n0", "k0", "k4"]
    assert cache.stats().total_evictions == 0
    assert cache.stats().total_evicted == 0


def test_replace_with_nothing_empties() -> None:
    cache = make(5)
    fill(cache, 5)
    cache.replace([])
    assert len(cache) == 0
    assert cache.snapshot() == []


def test_replace_duplicate_keys_last_value_first_position() -> None:
    cache = make(10)
    cache.replace([("a", ("f", 1)), ("b", ("f", 2)), ("a", ("f", 3)), ("c", ("f", 4))])
    assert cache.snapshot() == [("c", ("f", 4)), ("b", ("f", 2)), ("a", ("f", 3))]


def test_replace_keeps_hits_and_misses_and_counts_no_eviction() -> None:
    cache = make(3)
    fill(cache, 3)
    cache.get("k0")
    cache.get("zz")
    cache.insert("k3", ("f", 3))
    before = cache.stats()
    cache.replace([(f"n{i}", ("f", i)) for i in range(10)])
    after = cache.stats()
    assert after == attrs.evolve(before, entries=3)


def test_replace_families_touches_only_those_families() -> None:
    cache = make(10)
    cache.insert_many(
        [
            ("x1", ("x", 1)),
            ("y1", ("y", 1)),
            ("x2", ("x", 2)),
            ("z1", ("z", 1)),
            ("y2", ("y", 2)),
            ("x3", ("x", 3)),
        ]
    )
    cache.replace(
        [("x3", ("x", 30)), ("xn", ("x", 99)), ("zn", ("z", 9)), ("x1", ("x", 10))],
        families={"x", "z"},
    )
    # y entries untouched (value and position); x2 and z1 dropped; x1/x3 kept in place.
    assert cache.snapshot() == [
        ("zn", ("z", 9)),
        ("xn", ("x", 99)),
        ("x1", ("x", 10)),
        ("y1", ("y", 1)),
        ("y2", ("y", 2)),
        ("x3", ("x", 30)),
    ]
    assert cache.families() == {"x": 3, "y": 2, "z": 1}


def test_replace_families_never_drops_untouched_entries_for_capacity() -> None:
    cache = make(6)
    cache.insert_many([(f"y{i}", ("y", i)) for i in range(4)] + [("x0", ("x", 0))])
    cache.replace([(f"xn{i}", ("x", i)) for i in range(5)], families=["x"])
    # x0 dropped (not given); 4 y entries stay; room for 2 new x: the first two given.
    assert lru_first(cache) == ["xn1", "xn0", "y0", "y1", "y2", "y3"]
    assert len(cache) == cache.capacity


def test_replace_empty_families_changes_nothing() -> None:
    cache = make(5)
    fill(cache, 5)
    before = cache.snapshot()
    cache.replace([], families=[])
    assert cache.snapshot() == before


def test_replace_families_takes_over_a_key_of_another_family() -> None:
    cache = make(5)
    cache.insert_many([("a", ("y", 1)), ("b", ("y", 2)), ("c", ("x", 3))])
    cache.replace([("a", ("x", 10))], families={"x"})
    # "a" moved from y to x and kept its recency; "c" (x, not given) dropped.
    assert cache.snapshot() == [("a", ("x", 10)), ("b", ("y", 2))]


def test_replace_families_rejects_items_of_other_families() -> None:
    cache = make(5)
    fill(cache, 3, family="x")
    before = cache.snapshot()
    with pytest.raises(ValueError, match="'y'"):
        cache.replace([("n", ("x", 1)), ("m", ("y", 1))], families={"x"})
    assert cache.snapshot() == before


def test_replace_families_rejects_a_bare_string() -> None:
    cache = make(5)
    with pytest.raises(TypeError, match="families"):
        cache.replace([], families="x")


def test_replace_is_atomic_when_items_raise_midway() -> None:
    cache = make(5)
    fill(cache, 5)
    cache.get("k0")
    before = (cache.snapshot(), cache.stats())

    def items() -> Iterator[tuple[str, Value]]:
        yield ("k1", ("f", 100))
        yield ("n", ("f", 1))
        raise OSError("warm storage read failed")

    for families in (None, {"f"}):
        with pytest.raises(OSError, match="warm storage"):
            cache.replace(items(), families=families)
        assert (cache.snapshot(), cache.stats()) == before


def test_replace_is_atomic_when_family_of_raises() -> None:
    def strict(value: Value) -> str:
        if value[1] < 0:
            raise KeyError(value)
        return value[0]

    cache: HotCache[Value] = HotCache(5, family_of=strict)
    cache.insert_many([("a", ("f", 1)), ("b", ("f", 2))])
    before = cache.snapshot()
    with pytest.raises(KeyError):
        cache.replace([("a", ("f", 5)), ("c", ("f", -1))], families={"f"})
    assert cache.snapshot() == before


def test_replace_swaps_with_one_assignment() -> None:
    # A reader holding the old mapping (as the event loop would between two calls) sees it
    # unchanged: replace builds a new mapping rather than editing the current one in place.
    cache = make(5)
    fill(cache, 5)
    old_mapping = cache._data
    old_items = list(old_mapping.items())
    cache.replace([("k0", ("f", 100)), ("n", ("f", 1))])
    assert list(old_mapping.items()) == old_items
    assert cache._data is not old_mapping


# -- model-based -------------------------------------------------------------------------

KEYS = st.sampled_from([f"k{i}" for i in range(12)])
FAMILIES = ["x", "y", "z"]
VALUES = st.tuples(st.sampled_from(FAMILIES), st.integers(0, 9))
ITEMS = st.lists(st.tuples(KEYS, VALUES), max_size=14)


class _Boom(Exception):
    pass


class HotCacheMachine(RuleBasedStateMachine):
    """Compares HotCache with a list-based LRU (least recently used first)."""

    def __init__(self) -> None:
        super().__init__()
        self.cache: HotCache[Value] = make(1)
        self.model: list[tuple[str, Value]] = []
        self.capacity = 1
        self.batch = 1
        self.hits = self.misses = self.evictions = self.evicted = 0

    @initialize(
        capacity=st.integers(1, 10),
        fraction=st.sampled_from([0.1, 0.25, 0.3, 0.5, 1.0]),
    )
    def setup(self, capacity: int, fraction: float) -> None:
        self.cache = make(capacity, fraction)
        self.capacity = capacity
        self.batch = max(1, math.ceil(round(capacity * fraction, 9)))

    # model helpers

    def _index(self, key: str) -> int | None:
        for i, (k, _) in enumerate(self.model):
            if k == key:
                return i
        return None

    def _model_get(self, key: str, mark: bool) -> Value | None:
        i = self._index(key)
        if i is None:
            self.misses += 1
            return None
        self.hits += 1
        entry = self.model[i]
        if mark:
            del self.model[i]
            self.model.append(entry)
        return entry[1]

    def _model_insert(self, key: str, value: Value) -> int:
        i = self._index(key)
        if i is not None:
            del self.model[i]
            self.model.append((key, value))
            return 0
        evicted = 0
        if len(self.model) >= self.capacity:
            evicted = min(self.batch, len(self.model))
            del self.model[:evicted]
            self.evictions += 1
            self.evicted += evicted
        self.model.append((key, value))
        return evicted

    # rules

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        assert self.cache.get(key) == self._model_get(key, mark=False)

    @rule(key=KEYS)
    def get_and_mark(self, key: str) -> None:
        assert self.cache.get_and_mark(key) == self._model_get(key, mark=True)

    @rule(key=KEYS)
    def peek_and_contains(self, key: str) -> None:
        i = self._index(key)
        assert self.cache.peek(key) == (None if i is None else self.model[i][1])
        assert (key in self.cache) == (i is not None)

    @rule(key=KEYS, value=VALUES)
    def insert(self, key: str, value: Value) -> None:
        assert self.cache.insert(key, value) == self._model_insert(key, value)

    @rule(items=ITEMS)
    def insert_many(self, items: list[tuple[str, Value]]) -> None:
        expected = sum(self._model_insert(k, v) for k, v in items)
        assert self.cache.insert_many(iter(items)) == expected

    @rule(key=KEYS)
    def remove(self, key: str) -> None:
        i = self._index(key)
        expected = None if i is None else self.model.pop(i)[1]
        assert self.cache.remove(key) == expected

    @rule(keys=st.lists(KEYS, max_size=5))
    def remove_many(self, keys: list[str]) -> None:
        present = 0
        for key in keys:
            i = self._index(key)
            if i is not None:
                del self.model[i]
                present += 1
        assert self.cache.remove_many(keys) == present

    @rule(
        items=ITEMS,
        families=st.none() | st.sets(st.sampled_from(FAMILIES)),
        data=st.data(),
    )
    def replace(
        self,
        items: list[tuple[str, Value]],
        families: set[str] | None,
        data: st.DataObject,
    ) -> None:
        if families is not None and data.draw(st.booleans(), label="keep in scope"):
            items = [(k, v) for k, v in items if v[0] in families]
        if families is not None and any(v[0] not in families for _, v in items):
            before = self.cache.snapshot()
            with pytest.raises(ValueError):
                self.cache.replace(items, families=families)
            assert self.cache.snapshot() == before
            return
        self.cache.replace(iter(items), families=families)

        given: dict[str, Value] = {}
        for k, v in items:
            given[k] = v
        current = {k for k, _ in self.model}
        survivors = [
            (k, given.get(k, v))
            for k, v in self.model
            if k in given or (families is not None and v[0] not in families)
        ]
        new = [k for k in given if k not in current][: self.capacity - len(survivors)]
        self.model = [(k, given[k]) for k in reversed(new)] + survivors

    @precondition(lambda self: len(self.model) > 0)
    @rule(items=ITEMS, families=st.none() | st.sets(st.sampled_from(FAMILIES)))
    def replace_fails_midway(
        self, items: list[tuple[str, Value]], families: set[str] | None
    ) -> None:
        in_scope = [(k, v) for k, v in items if families is None or v[0] in families]

        def gen() -> Iterator[tuple[str, Value]]:
            yield from in_scope
            raise _Boom

        with pytest.raises(_Boom):
            self.cache.replace(gen(), families=families)

    @rule(limit=st.none() | st.integers(0, 12))
    def keys_mru(self, limit: int | None) -> None:
        expected = [k for k, _ in reversed(self.model)]
        if limit is not None:
            expected = expected[:limit]
        assert self.cache.keys_mru(limit) == expected

    @invariant()
    def matches_model(self) -> None:
        assert self.cache.snapshot() == self.model
        assert len(self.cache) == len(self.model) <= self.capacity
        counts: dict[str, int] = {}
        for _, v in self.model:
            counts[v[0]] = counts.get(v[0], 0) + 1
        assert self.cache.families() == counts
        assert self.cache.stats() == CacheStats(
            entries=len(self.model),
            capacity=self.capacity,
            hits=self.hits,
            misses=self.misses,
            total_evictions=self.evictions,
            total_evicted=self.evicted,
        )


TestHotCacheMachine = HotCacheMachine.TestCase
TestHotCacheMachine.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
