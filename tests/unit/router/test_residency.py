"""Unit and property tests for router/residency.py: the LRU under a memory budget.

The property tests run random operation sequences against `Residency` and a plain
reference (a list in order of last use, rebuilt by brute force) and check after every
step: the LRU order and sizes match the reference; a plan evicts exactly the shortest
LRU prefix of the evictable keys (never a pinned or busy one) that makes room; `NoRoom`
is raised exactly when all the evictable keys together could not make room; and carrying
out a plan (remove the evicted, add the model) never takes the resident bytes (plus loads
in progress) over the budget, nor the count over max_models.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Set

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from shardline.router.residency import NoRoom, Plan, Residency, choose_device

MB = 1 << 20


def filled(budget: int, sizes: Mapping[str, int], max_models: int = 100_000) -> Residency:
    """A Residency holding ``sizes`` added in order at t = 0, 1, 2, ..."""
    r = Residency(budget, max_models=max_models)
    for t, (key, size) in enumerate(sizes.items()):
        r.add(key, size, float(t))
    return r


# ---------------------------------------------------------------------------- construction


@pytest.mark.parametrize("budget", [0, -1, 1.5, True, "10"])
def test_budget_must_be_positive_bytes(budget: object) -> None:
    with pytest.raises(ValueError, match="budget_bytes"):
        Residency(budget)  # type: ignore[arg-type]


@pytest.mark.parametrize("max_models", [0, -3, 2.0, False])
def test_max_models_at_least_one(max_models: object) -> None:
    with pytest.raises(ValueError, match="max_models"):
        Residency(100, max_models=max_models)  # type: ignore[arg-type]


def test_empty() -> None:
    r = Residency(100)
    assert (r.budget_bytes, r.max_models) == (100, 100_000)
    assert r.resident == {}
    assert r.resident_bytes == 0
    assert r.lru_order() == ()
    assert r.last_used("a") is None
    assert (r.loads, r.evictions, r.unloads) == (0, 0, 0)
    assert len(r) == 0 and "a" not in r
    assert r.plan("a", 100) == Plan((), 100)


# ---------------------------------------------------------------------------- add / touch / remove


def test_add_touch_order_and_last_used() -> None:
    r = filled(100, {"a": 10, "b": 20, "c": 30})
    assert r.lru_order() == ("a", "b", "c")
    assert r.resident_bytes == 60
    assert dict(r.resident) == {"a": 10, "b": 20, "c": 30}
    r.touch("a", 5.0)
    assert r.lru_order() == ("b", "c", "a")
    assert r.last_used("a") == 5.0
    assert r.last_used("b") == 1.0
    assert r.loads == 3


def test_touch_unknown_is_noop() -> None:
    r = filled(100, {"a": 10})
    r.touch("zzz", 9.0)
    assert r.lru_order() == ("a",)
    assert r.last_used("zzz") is None
    # and it does not advance the clock: a later add at 1.0 keeps its own time
    r.add("b", 1, 1.0)
    assert r.last_used("b") == 1.0


def test_resident_is_read_only_and_live() -> None:
    r = filled(100, {"a": 10})
    view = r.resident
    with pytest.raises(TypeError):
        view["b"] = 1  # type: ignore[index]
    r.add("b", 5, 1.0)
    assert dict(view) == {"a": 10, "b": 5}


def test_re_adding_a_resident_key_replaces_size_and_touches_without_a_load() -> None:
    r = filled(100, {"a": 10, "b": 20})
    r.add("a", 15, 7.0)
    assert r.lru_order() == ("b", "a")
    assert r.resident_bytes == 35
    assert r.last_used("a") == 7.0
    assert r.loads == 2


def test_remove_counts_evictions_and_unloads() -> None:
    r = filled(100, {"a": 10, "b": 20, "c": 30})
    r.remove("a")
    r.remove("b", eviction=False)
    r.remove("nope")
    r.remove("a")  # twice: no-op
    assert r.lru_order() == ("c",)
    assert r.resident_bytes == 30
    assert (r.evictions, r.unloads) == (1, 2)
    assert r.last_used("a") is None


def test_resize_keeps_order_and_updates_bytes() -> None:
    r = filled(100, {"a": 10, "b": 20})
    r.resize("a", 40)
    assert r.lru_order() == ("a", "b")
    assert r.resident_bytes == 60
    r.resize("unknown", 5)  # no-op
    assert r.resident_bytes == 60
    with pytest.raises(ValueError, match="size"):
        r.resize("a", -1)


@pytest.mark.parametrize("size", [-1, 1.5, None, True])
def test_bad_sizes_refused(size: object) -> None:
    r = Residency(100)
    with pytest.raises(ValueError, match="size"):
        r.add("a", size, 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size"):
        r.plan("a", size)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="loading"):
        r.plan("a", 1, loading={"b": size})  # type: ignore[dict-item]


@pytest.mark.parametrize("now", [float("nan"), float("inf"), -float("inf")])
def test_bad_now_refused(now: float) -> None:
    r = filled(100, {"a": 1})
    with pytest.raises(ValueError, match="now"):
        r.add("b", 1, now)
    with pytest.raises(ValueError, match="now"):
        r.touch("a", now)
    with pytest.raises(ValueError, match="now"):
        r.idle(now, 1.0)


def test_ties_in_time_keep_insertion_order() -> None:
    r = Residency(100)
    for key in ("c", "a", "b"):
        r.add(key, 10, 1.0)
    assert r.lru_order() == ("c", "a", "b")
    assert r.plan("x", 80).evict == ("c",)
    r.touch("c", 1.0)
    assert r.lru_order() == ("a", "b", "c")


def test_time_going_backwards_counts_as_the_latest_seen() -> None:
    r = filled(100, {"a": 1, "b": 1})  # a at 0, b at 1
    r.touch("a", 0.5)  # earlier than b's time: still the most recent use
    assert r.lru_order() == ("b", "a")
    assert r.last_used("a") == 1.0
    assert r.idle(1.0, 0.0) == ("b", "a")


# ---------------------------------------------------------------------------- plan


def test_plan_fits_without_eviction() -> None:
    r = filled(100, {"a": 30, "b": 30})
    assert r.plan("c", 40) == Plan((), 100)


def test_plan_evicts_least_recently_used_first() -> None:
    r = filled(100, {"a": 30, "b": 30, "c": 30})
    r.touch("a", 10.0)  # order b, c, a
    plan = r.plan("d", 50)
    assert plan == Plan(("b", "c"), 30 + 50)
    # plan changes nothing
    assert r.lru_order() == ("b", "c", "a")
    assert r.resident_bytes == 90


def test_plan_for_resident_key_is_empty() -> None:
    r = filled(100, {"a": 60, "b": 40})
    assert r.plan("a", 90) == Plan((), 100)
    assert r.plan("a", 1000) == Plan((), 100)  # resident: no room needed, never NoRoom


def test_plan_skips_pinned_and_busy() -> None:
    r = filled(100, {"a": 30, "b": 30, "c": 30, "d": 10})
    plan = r.plan("x", 30, pinned={"a"}, busy={"b"})
    assert plan.evict == ("c",)
    assert plan.bytes_after == 100 - 30 + 30
    plan = r.plan("x", 40, pinned={"a"}, busy={"c"})
    assert plan == Plan(("b", "d"), 100 - 40 + 40)


def test_plan_size_zero() -> None:
    r = filled(10, {"a": 10})
    assert r.plan("z", 0) == Plan((), 10)
    r2 = filled(10, {"a": 0, "b": 0}, max_models=2)
    assert r2.plan("c", 0) == Plan(("a",), 0)


def test_size_equal_to_budget_fits_by_evicting_everything() -> None:
    r = filled(100, {"a": 30, "b": 30})
    assert r.plan("c", 100) == Plan(("a", "b"), 100)


def test_size_over_budget_never_fits() -> None:
    r = Residency(100 * MB)
    with pytest.raises(NoRoom) as caught:
        r.plan("huge@1", 300 * MB)
    err = caught.value
    assert err.permanent
    assert (err.key, err.size, err.budget_bytes) == ("huge@1", 300 * MB, 100 * MB)
    message = str(err)
    assert "huge@1" in message
    assert f"{300 * MB:,}" in message and f"{100 * MB:,}" in message
    assert "never" in message and "--memory-budget" in message


def test_no_room_names_pinned_busy_and_loading_bytes() -> None:
    r = filled(100, {"a": 40, "b": 30, "c": 20})
    with pytest.raises(NoRoom) as caught:
        r.plan("x", 50, pinned={"a"}, busy={"b", "a"}, loading={"l": 5})
    err = caught.value
    assert not err.permanent
    assert (err.pinned_bytes, err.busy_bytes, err.loading_bytes) == (40, 30, 5)
    assert err.resident_bytes == 90
    message = str(err)
    fragments = ("model x (50 B)", "budget 100 B", "40 B pinned", "20 B evictable", "5 B loading")
    for fragment in (*fragments, "30 B with requests in flight", "Retry"):
        assert fragment in message, (fragment, message)


def test_plan_counts_loads_in_progress() -> None:
    r = filled(100, {"a": 30, "b": 30})
    # 60 resident + 30 loading + 20 new = 110: one eviction
    assert r.plan("x", 20, loading={"l": 30}).evict == ("a",)
    # the key's own entry in loading is the load being planned: not counted twice
    assert r.plan("x", 20, loading={"x": 20}).evict == ()
    # a loading entry for a resident key is already counted as resident
    assert r.plan("x", 40, loading={"a": 30}).evict == ()
    # loads are not evictable
    with pytest.raises(NoRoom):
        r.plan("x", 50, loading={"l": 60})


def test_max_models_counts_resident_and_loading() -> None:
    r = filled(1000, {"a": 1, "b": 1, "c": 1}, max_models=3)
    assert r.plan("d", 1).evict == ("a",)
    assert r.plan("d", 1, loading={"l": 0}).evict == ("a", "b")
    with pytest.raises(NoRoom, match="at most 3 models"):
        r.plan("d", 1, busy={"a", "b", "c"})
    r1 = Residency(10, max_models=1)
    r1.add("a", 1, 0.0)
    assert r1.plan("b", 1) == Plan(("a",), 1)


def test_pinned_larger_than_resident_set() -> None:
    # the pinned set may name many keys not resident here: still correct
    r = filled(100, {"a": 50, "b": 50})
    pinned = frozenset(f"k{i}" for i in range(1000)) | {"a"}
    assert r.plan("x", 50, pinned=pinned).evict == ("b",)


class CountingSet(Set[str]):
    """A set that counts membership tests: how many resident keys a plan looked at."""

    def __init__(self, items: Set[str]) -> None:
        self.items = frozenset(items)
        self.checks = 0

    def __contains__(self, key: object) -> bool:
        self.checks += 1
        return key in self.items

    def __iter__(self) -> Iterator[str]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def test_plan_does_not_walk_the_whole_lru() -> None:
    n = 100_000
    r = Residency(n, max_models=n)
    for i in range(n):
        r.add(f"m{i:06d}", 1, float(i))
    busy = CountingSet({"m000001", "m000003"})
    plan = r.plan("new", 3, busy=busy)
    assert plan.evict == ("m000000", "m000002", "m000004")
    assert busy.checks <= 10  # the keys it evicted or skipped, not 100 000
    # nothing to evict: no walk at all
    r.remove("m000000")
    busy2 = CountingSet({"m000001"})
    assert r.plan("new", 1, busy=busy2).evict == ()
    assert busy2.checks == 0


def test_no_room_does_not_walk_the_lru() -> None:
    n = 50_000
    r = Residency(n)
    for i in range(n):
        r.add(f"m{i}", 1, float(i))
    pinned = CountingSet({"m0", "m1"})
    with pytest.raises(NoRoom):
        r.plan("big", n - 1, pinned=pinned, loading={"l": 2})
    assert pinned.checks == 0  # decided from the pinned keys' bytes alone


# ---------------------------------------------------------------------------- reclaim


def test_reclaim_after_resize_outgrows_budget() -> None:
    r = filled(100, {"a": 30, "b": 30, "c": 30})
    assert r.reclaim() == Plan((), 90)
    r.resize("c", 60)  # measured larger than declared: 120 of 100
    assert r.reclaim(busy={"c"}) == Plan(("a",), 90)
    assert r.reclaim(pinned={"a"}, busy={"c"}) == Plan(("b",), 90)
    with pytest.raises(NoRoom, match="the resident models"):
        r.reclaim(pinned={"a", "b"}, busy={"c"})


# ---------------------------------------------------------------------------- idle


def test_idle_lists_cold_keys_lru_first() -> None:
    r = Residency(100)
    r.add("a", 1, 0.0)
    r.add("b", 1, 10.0)
    r.add("c", 1, 20.0)
    r.add("d", 1, 30.0)
    assert r.idle(30.0, 15.0) == ("a", "b")
    assert r.idle(30.0, 10.0) == ("a", "b", "c")  # unused for exactly 10 s counts
    assert r.idle(30.0, 10.0, pinned={"a"}, busy={"c"}) == ("b",)
    assert r.idle(30.0, 100.0) == ()
    assert r.idle(30.0, 0.0) == ("a", "b", "c", "d")
    r.touch("a", 31.0)
    assert r.idle(31.0, 15.0) == ("b",)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="older_than_s"):
            r.idle(30.0, bad)


# ---------------------------------------------------------------------------- properties

KEYS = [f"k{i}" for i in range(8)]
keys = st.sampled_from(KEYS)
sizes = st.integers(min_value=0, max_value=60)
key_sets = st.frozensets(keys, max_size=4)


class ResidencyMachine(RuleBasedStateMachine):
    """Random operations against a brute-force reference: (key, size, last_used) in LRU order."""

    def __init__(self) -> None:
        super().__init__()
        self.r = Residency(1)
        self.ref: list[tuple[str, int, float]] = []
        self.now = 0.0

    @initialize(budget=st.integers(min_value=1, max_value=150), max_models=st.integers(1, 6))
    def setup(self, budget: int, max_models: int) -> None:
        self.r = Residency(budget, max_models=max_models)

    def _ref_sizes(self) -> dict[str, int]:
        return {k: s for k, s, _ in self.ref}

    def _advance(self, dt: float) -> float:
        self.now += dt
        return self.now

    @rule(key=keys, dt=st.sampled_from([0.0, 0.5, 3.0]))
    def touch(self, key: str, dt: float) -> None:
        now = self._advance(dt)
        self.r.touch(key, now)
        for i, (k, s, _) in enumerate(self.ref):
            if k == key:
                del self.ref[i]
                self.ref.append((k, s, now))
                break

    @rule(key=keys)
    def remove(self, key: str) -> None:
        self.r.remove(key)
        self.ref = [e for e in self.ref if e[0] != key]

    @rule(key=keys, size=sizes)
    def resize(self, key: str, size: int) -> None:
        self.r.resize(key, size)
        self.ref = [(k, size if k == key else s, t) for k, s, t in self.ref]

    @rule(
        key=keys,
        size=sizes,
        pinned=key_sets,
        busy=key_sets,
        loading=st.dictionaries(keys, st.integers(0, 40), max_size=3),
        dt=st.sampled_from([0.0, 1.0]),
    )
    def plan_and_load(
        self,
        key: str,
        size: int,
        pinned: frozenset[str],
        busy: frozenset[str],
        loading: dict[str, int],
        dt: float,
    ) -> None:
        r = self.r
        budget, max_models = r.budget_bytes, r.max_models
        resident = self._ref_sizes()
        if key in resident:
            assert r.plan(key, size, pinned=pinned, busy=busy, loading=loading) == Plan(
                (), sum(resident.values())
            )
            return
        pending = {k: b for k, b in loading.items() if k != key and k not in resident}
        need_bytes = sum(resident.values()) + sum(pending.values()) + size - budget
        need_count = len(resident) + len(pending) + 1 - max_models
        evictable = [k for k, _, _ in self.ref if k not in pinned and k not in busy]
        # the reference answer: the shortest prefix of the evictable that makes room
        expected: tuple[str, ...] | None = None
        for n in range(len(evictable) + 1):
            prefix = evictable[:n]
            if sum(resident[k] for k in prefix) >= need_bytes and n >= need_count:
                expected = tuple(prefix)
                break
        if size > budget:
            expected = None
        try:
            plan = r.plan(key, size, pinned=pinned, busy=busy, loading=loading)
        except NoRoom as err:
            assert expected is None, (expected, str(err))
            assert err.permanent == (size > budget)
            return
        assert expected is not None
        assert plan.evict == expected
        assert not set(plan.evict) & (pinned | busy)
        # carry it out: evict, then add, and the budget holds (counting loads in progress)
        for k in plan.evict:
            r.remove(k)
        self.ref = [e for e in self.ref if e[0] not in plan.evict]
        now = self._advance(dt)
        r.add(key, size, now)
        self.ref.append((key, size, now))
        assert r.resident_bytes == plan.bytes_after
        assert r.resident_bytes + sum(pending.values()) <= budget
        assert len(r) + len(pending) <= max_models

    @rule(pinned=key_sets, busy=key_sets)
    def reclaim(self, pinned: frozenset[str], busy: frozenset[str]) -> None:
        try:
            plan = self.r.reclaim(pinned=pinned, busy=busy)
        except NoRoom:
            held = sum(s for k, s, _ in self.ref if k in pinned or k in busy)
            held_n = sum(1 for k, _, _ in self.ref if k in pinned or k in busy)
            assert held > self.r.budget_bytes or held_n > self.r.max_models
            return
        assert not set(plan.evict) & (pinned | busy)
        for k in plan.evict:
            self.r.remove(k)
        self.ref = [e for e in self.ref if e[0] not in plan.evict]
        assert self.r.resident_bytes <= self.r.budget_bytes
        assert len(self.r) <= self.r.max_models

    @rule(older=st.sampled_from([0.0, 1.0, 2.5, 10.0]), pinned=key_sets, busy=key_sets)
    def idle(self, older: float, pinned: frozenset[str], busy: frozenset[str]) -> None:
        expected = tuple(
            k for k, _, t in self.ref if self.now - t >= older and k not in pinned and k not in busy
        )
        assert self.r.idle(self.now, older, pinned=pinned, busy=busy) == expected

    @invariant()
    def matches_reference(self) -> None:
        assert self.r.lru_order() == tuple(k for k, _, _ in self.ref)
        assert dict(self.r.resident) == self._ref_sizes()
        assert self.r.resident_bytes == sum(s for _, s, _ in self.ref)
        for k, _, t in self.ref:
            assert self.r.last_used(k) == t
        assert self.r.unloads >= self.r.evictions


ResidencyMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None
)
TestResidencyMachine = ResidencyMachine.TestCase


@settings(max_examples=300, deadline=None)
@given(
    sizes_=st.lists(st.integers(0, 50), min_size=0, max_size=12),
    budget=st.integers(1, 200),
    size=st.integers(0, 250),
    pinned_idx=st.frozensets(st.integers(0, 11), max_size=6),
    busy_idx=st.frozensets(st.integers(0, 11), max_size=6),
)
def test_no_room_exactly_when_the_evictable_cannot_make_room(
    sizes_: list[int],
    budget: int,
    size: int,
    pinned_idx: frozenset[int],
    busy_idx: frozenset[int],
) -> None:
    r = Residency(10_000)  # fill without planning, then judge a plan under `budget`
    for i, s in enumerate(sizes_):
        r.add(f"k{i}", s, float(i))
    r.budget_bytes = budget
    pinned = {f"k{i}" for i in pinned_idx}
    busy = {f"k{i}" for i in busy_idx}
    held = sum(s for i, s in enumerate(sizes_) if f"k{i}" in pinned | busy)
    possible = size <= budget and held + size <= budget
    try:
        plan = r.plan("new", size, pinned=pinned, busy=busy)
    except NoRoom as err:
        assert not possible
        assert err.permanent == (size > budget)
        return
    assert possible
    assert plan.bytes_after <= budget
    assert not set(plan.evict) & (pinned | busy)


def test_budget_and_max_models_may_change_but_stay_valid() -> None:
    r = filled(100, {"a": 60, "b": 30})
    r.budget_bytes = 50
    r.max_models = 1
    assert r.reclaim() == Plan(("a",), 30)
    assert r.reclaim(pinned={"b"}) == Plan(("a",), 30)
    with pytest.raises(NoRoom):
        r.reclaim(pinned={"a"})
    with pytest.raises(ValueError, match="budget_bytes"):
        r.budget_bytes = 0
    with pytest.raises(ValueError, match="max_models"):
        r.max_models = 0
    assert (r.budget_bytes, r.max_models) == (50, 1)


# ----------------------------------------------------------------------------- devices


def test_choose_device_prefers_room_then_the_emptiest_then_the_cheapest_eviction() -> None:
    gpus = {
        "cuda:0": filled(10 * MB, {"a": 6 * MB}),
        "cuda:1": filled(10 * MB, {"b": 2 * MB}),
    }
    assert choose_device("new", 3 * MB, gpus) == ("cuda:1", Plan((), 5 * MB))
    assert choose_device("a", 6 * MB, gpus) == ("cuda:0", Plan((), 6 * MB))  # already there
    # A load in progress on cuda:1 takes its room: cuda:0 fits without evicting.
    loading = {"cuda:1": {"c": 7 * MB}}
    assert choose_device("new", 3 * MB, gpus, loading=loading) == ("cuda:0", Plan((), 9 * MB))
    # Full everywhere: evict the fewest bytes (b on cuda:1, not a on cuda:0).
    full = {
        "cuda:0": filled(10 * MB, {"a": 6 * MB, "a2": 4 * MB}),
        "cuda:1": filled(10 * MB, {"b": 3 * MB, "b2": 7 * MB}),
    }
    assert choose_device("new", 3 * MB, full) == ("cuda:1", Plan(("b",), 10 * MB))
    # ... unless b is busy: then a2 can't go alone (LRU order: a first), so a goes on cuda:0
    # (6 MB) or b2 on cuda:1 (7 MB): the fewer bytes win.
    assert choose_device("new", 3 * MB, full, busy={"b"}) == ("cuda:0", Plan(("a",), 7 * MB))


def test_choose_device_refuses_with_each_devices_numbers() -> None:
    gpus = {"cuda:0": filled(4 * MB, {"a": 4 * MB}), "cuda:1": filled(8 * MB, {"b": 8 * MB})}
    with pytest.raises(NoRoom) as busy:
        choose_device("new", 2 * MB, gpus, pinned={"a", "b"})
    assert not busy.value.permanent
    assert "cuda:0: budget 4,194,304 B" in str(busy.value)
    assert "cuda:1: budget 8,388,608 B" in str(busy.value)
    assert busy.value.budget_bytes == 8 * MB  # (the largest device's numbers)
    with pytest.raises(NoRoom) as never:
        choose_device("huge", 9 * MB, gpus)
    assert never.value.permanent and "--device-memory-budget" in str(never.value)
    with pytest.raises(ValueError):
        choose_device("x", 1, {})
