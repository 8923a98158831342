"""Which of a node's models stay resident: an LRU under a memory budget (pure).

A node owns many model keys (placement) but keeps only some of them loaded. `Residency`
is the bookkeeping and the eviction policy for one memory budget (one device, or host
memory): the node asks `Residency.plan` before a load, unloads what the plan names, loads,
then reports the result with `Residency.add` (and `Residency.resize` once the footprint
is measured). Requests `Residency.touch` the key they use.

The policy:

- **Least recently used first.** The plan for a load evicts the shortest prefix of the
  LRU order, among the evictable keys, that makes room: room in bytes
  (``budget_bytes``) and in count (``max_models``).
- **Never a pinned key** (an objective or model that pins itself warm, or the minimum
  copies an objective asks for) **and never a busy one** (requests in flight): the caller
  passes both sets with each call, since they change with every request.
- **Loads in progress count.** ``loading`` (key -> bytes) holds the loads already started
  but not yet added: their bytes and their count are reserved, so two concurrent loads
  cannot both take the same free room.
- **No silent failure.** When the evictable keys cannot make room, `NoRoom` says so with
  the numbers (the model's bytes, the budget, the bytes held by pinned, busy and loading
  models) and what to do; ``NoRoom.permanent`` is true when the model is larger than the
  whole budget and can never be resident here.

Pure: no clock (every call that needs one takes ``now``), no I/O, no random state, so the
node and the simulator run the same code and a run replays exactly. Time is taken to be
monotonic (``time.monotonic()`` on a node, simulated time in the simulator): a ``now``
earlier than one already seen counts as the latest seen, so the LRU order is always the
order of last use and keys with equal times keep the order they were used in (a tie goes
to the one added or touched first).

Cost: `touch`, `add`, `remove`, `resize` and `last_used` are O(1) (an ordered dict);
`plan` and `reclaim` are O(|loading|) when the room is already free and otherwise
O(|loading| + min(|pinned| + |busy|, resident) + evicted + skipped), where skipped counts
the pinned or busy keys older than the last one evicted: they never walk the whole LRU to
evict a few, and decide `NoRoom` without walking it at all. `idle` walks the LRU only up
to the first key used too recently; `lru_order` copies the order (for status).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Set
from dataclasses import dataclass
from types import MappingProxyType

DEFAULT_MAX_MODELS = 100_000
_NOTHING: Mapping[str, int] = MappingProxyType({})


def _bytes(n: int) -> str:
    """``n`` bytes for a message: exact, with a readable unit beside it."""
    if n < 1024:
        return f"{n} B"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n:,} B ({n / scale:.1f} {unit})"
    raise AssertionError("unreachable")  # pragma: no cover


def _check_size(what: str, size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"{what} must be a whole number of bytes >= 0, got {size!r}")


def _check_now(now: float) -> None:
    if not math.isfinite(now):
        raise ValueError(f"now must be a finite time in seconds, got {now!r}")


class NoRoom(Exception):
    """A model cannot be made resident now; the message names the numbers (its bytes, the
    budget, bytes held by pinned / in-flight models) and says what to do.

    The numbers are attributes too: ``key``, ``size``, ``budget_bytes``, ``max_models``,
    ``resident_bytes``, ``pinned_bytes`` and ``busy_bytes`` (resident bytes that may not be
    evicted: pinned, and busy but not pinned), ``loading_bytes`` (loads in progress) and
    ``permanent`` (true when ``size`` exceeds the whole budget: it can never fit here, so
    waiting does not help).
    """

    def __init__(
        self,
        message: str,
        *,
        key: str,
        size: int,
        budget_bytes: int,
        max_models: int,
        resident_bytes: int = 0,
        pinned_bytes: int = 0,
        busy_bytes: int = 0,
        loading_bytes: int = 0,
        permanent: bool = False,
    ) -> None:
        super().__init__(message)
        self.key = key
        self.size = size
        self.budget_bytes = budget_bytes
        self.max_models = max_models
        self.resident_bytes = resident_bytes
        self.pinned_bytes = pinned_bytes
        self.busy_bytes = busy_bytes
        self.loading_bytes = loading_bytes
        self.permanent = permanent


@dataclass(frozen=True)
class Plan:
    """What to unload so a load fits: unload ``evict`` (in order), then load.

    ``bytes_after`` is the resident bytes once the evicted are unloaded and the planned
    model is loaded (loads in progress for other keys are not resident yet and are not in
    it; `Residency.plan` kept room for them all the same).
    """

    evict: tuple[str, ...]  # keys to unload first, least recently used first
    bytes_after: int  # resident bytes once evicted and loaded


class Residency:
    """The resident models under one memory budget, least recently used first.

    Counters (for metrics and status), plain ints that only grow: ``loads`` (keys made
    resident by `add`), ``evictions`` (resident keys removed as evictions, the default of
    `remove`) and ``unloads`` (every resident key removed, evicted or not).
    """

    def __init__(self, budget_bytes: int, *, max_models: int = DEFAULT_MAX_MODELS) -> None:
        self._budget = 1
        self._max_models = 1
        self.budget_bytes = budget_bytes
        self.max_models = max_models
        self._sizes: OrderedDict[str, int] = OrderedDict()  # LRU first
        self._last: dict[str, float] = {}
        self._bytes = 0
        self._clock = -math.inf  # the latest `now` seen
        self._view = MappingProxyType(self._sizes)
        self.loads = 0
        self.evictions = 0
        self.unloads = 0

    # ------------------------------------------------------------------ state

    @property
    def budget_bytes(self) -> int:
        """The memory budget in bytes (> 0). May be changed; if resident models then exceed
        it, `reclaim` says what to evict."""
        return self._budget

    @budget_bytes.setter
    def budget_bytes(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"budget_bytes must be a whole number of bytes > 0, got {value!r}")
        self._budget = value

    @property
    def max_models(self) -> int:
        """The most models resident (and loading) at once (>= 1). May be changed, like
        ``budget_bytes``."""
        return self._max_models

    @max_models.setter
    def max_models(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"max_models must be a whole number >= 1, got {value!r}")
        self._max_models = value

    @property
    def resident(self) -> Mapping[str, int]:
        """Read-only live view: resident key -> bytes (in LRU order, least recent first)."""
        return self._view

    @property
    def resident_bytes(self) -> int:
        return self._bytes

    def lru_order(self) -> tuple[str, ...]:
        """The resident keys, least recently used first."""
        return tuple(self._sizes)

    def last_used(self, key: str) -> float | None:
        """When ``key`` was last used (or added); None when it is not resident."""
        return self._last.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def __repr__(self) -> str:
        return (
            f"Residency({len(self._sizes)} models, {self._bytes} of {self.budget_bytes} bytes, "
            f"max_models={self.max_models})"
        )

    def _tick(self, now: float) -> float:
        _check_now(now)
        if now > self._clock:
            self._clock = now
        return self._clock

    # ------------------------------------------------------------------ changes

    def touch(self, key: str, now: float) -> None:
        """A request used ``key``: it becomes the most recently used. Unknown key: no-op."""
        if key not in self._sizes:
            _check_now(now)
            return
        self._last[key] = self._tick(now)
        self._sizes.move_to_end(key)

    def add(self, key: str, size: int, now: float) -> None:
        """``key`` is now resident with ``size`` bytes (after a load), most recently used.

        Adding a key that is already resident replaces its size and touches it; it is not
        counted as another load. `add` records a fact and never refuses: call `plan` first
        (and `reclaim` if a measured size outgrew the budget).
        """
        _check_size("size", size)
        t = self._tick(now)
        old = self._sizes.get(key)
        if old is None:
            self.loads += 1
            old = 0
        self._bytes += size - old
        self._sizes[key] = size
        self._sizes.move_to_end(key)
        self._last[key] = t

    def remove(self, key: str, *, eviction: bool = True) -> None:
        """``key`` was unloaded. Unknown key: no-op.

        ``eviction`` (default) counts it in ``evictions``; pass False for an unload that was
        no eviction (e.g. the key moved to other owners). Either counts in ``unloads``.
        """
        size = self._sizes.pop(key, None)
        if size is None:
            return
        del self._last[key]
        self._bytes -= size
        self.unloads += 1
        if eviction:
            self.evictions += 1

    def resize(self, key: str, size: int) -> None:
        """The measured footprint of ``key`` after load replaces the declared one; its place
        in the LRU order is kept. Unknown key: no-op. A resize can take the resident bytes
        over the budget: `reclaim` then says what to evict."""
        _check_size("size", size)
        old = self._sizes.get(key)
        if old is None:
            return
        self._sizes[key] = size
        self._bytes += size - old

    # ------------------------------------------------------------------ decisions

    def plan(
        self,
        key: str,
        size: int,
        *,
        pinned: Set[str] = frozenset(),
        busy: Set[str] = frozenset(),
        loading: Mapping[str, int] = _NOTHING,
    ) -> Plan:
        """What to evict so ``key`` (``size`` bytes) fits under the budget and max_models.

        The evicted are the shortest prefix of the LRU order, skipping ``pinned`` and
        ``busy`` keys, that leaves room for ``key`` and for every load in ``loading``
        (key -> bytes; entries for ``key`` itself or for resident keys are ignored). A key
        already resident needs no room: an empty plan. Raises `NoRoom` when evicting every
        evictable key would not make room (``permanent`` when ``size`` exceeds the budget).
        Changes nothing: the caller unloads, `remove` s, loads and `add` s.
        """
        _check_size("size", size)
        if key in self._sizes:
            return Plan((), self._bytes)
        load_bytes, load_count = self._loading(loading, skip=key)
        if size > self.budget_bytes:
            raise NoRoom(
                f"model {key} needs {_bytes(size)}, more than this node's whole memory budget "
                f"of {_bytes(self.budget_bytes)}: it can never be resident here; raise the "
                "node's memory budget (--memory-budget) or place the model on a node with a "
                "larger one",
                key=key,
                size=size,
                budget_bytes=self.budget_bytes,
                max_models=self.max_models,
                resident_bytes=self._bytes,
                loading_bytes=load_bytes,
                permanent=True,
            )
        need_bytes = self._bytes + load_bytes + size - self.budget_bytes
        need_count = len(self._sizes) + load_count + 1 - self.max_models
        evict = self._evict(
            key, size, need_bytes, need_count, pinned, busy, (load_bytes, load_count)
        )
        freed = sum(self._sizes[k] for k in evict)
        return Plan(evict, self._bytes - freed + size)

    def reclaim(
        self,
        *,
        pinned: Set[str] = frozenset(),
        busy: Set[str] = frozenset(),
        loading: Mapping[str, int] = _NOTHING,
    ) -> Plan:
        """What to evict to bring the resident bytes (plus ``loading``) back within the
        budget and max_models, e.g. after `resize` measured a model larger than declared;
        an empty plan when they are within. Same order and exclusions as `plan`;
        ``bytes_after`` is the resident bytes once the evicted are unloaded. Raises
        `NoRoom` (key ``""``, size 0) when the evictable keys cannot make up the excess."""
        load_bytes, load_count = self._loading(loading, skip=None)
        need_bytes = self._bytes + load_bytes - self.budget_bytes
        need_count = len(self._sizes) + load_count - self.max_models
        evict = self._evict("", 0, need_bytes, need_count, pinned, busy, (load_bytes, load_count))
        return Plan(evict, self._bytes - sum(self._sizes[k] for k in evict))

    def idle(
        self,
        now: float,
        older_than_s: float,
        *,
        pinned: Set[str] = frozenset(),
        busy: Set[str] = frozenset(),
    ) -> tuple[str, ...]:
        """Resident keys unused for at least ``older_than_s`` seconds at ``now``, least
        recently used first, without the pinned and busy ones (e.g. hot copies gone cold,
        to drop). Changes nothing."""
        _check_now(now)
        if not older_than_s >= 0 or math.isinf(older_than_s):
            raise ValueError(f"older_than_s must be a finite number >= 0, got {older_than_s!r}")
        cutoff = now - older_than_s
        out = []
        for k in self._sizes:  # last-used times never decrease along the LRU order
            if self._last[k] > cutoff:
                break
            if k not in pinned and k not in busy:
                out.append(k)
        return tuple(out)

    # ------------------------------------------------------------------ internals

    def _loading(self, loading: Mapping[str, int], skip: str | None) -> tuple[int, int]:
        """Bytes and count reserved by loads in progress (not resident, not ``skip``)."""
        total = count = 0
        for k, b in loading.items():
            _check_size(f"loading[{k!r}]", b)
            if k != skip and k not in self._sizes:
                total += b
                count += 1
        return total, count

    def _held(self, pinned: Set[str], busy: Set[str]) -> tuple[int, int, int]:
        """Resident bytes of the pinned keys, of the busy (not pinned) ones, and how many
        resident keys they are: iterates the smaller side, never more than needed."""
        pinned_bytes = busy_bytes = count = 0
        sizes = self._sizes
        if len(pinned) + len(busy) <= len(sizes):
            for k in pinned:
                b = sizes.get(k)
                if b is not None:
                    pinned_bytes += b
                    count += 1
            for k in busy:
                b = sizes.get(k)
                if b is not None and k not in pinned:
                    busy_bytes += b
                    count += 1
        else:
            for k, b in sizes.items():
                if k in pinned:
                    pinned_bytes += b
                    count += 1
                elif k in busy:
                    busy_bytes += b
                    count += 1
        return pinned_bytes, busy_bytes, count

    def _evict(
        self,
        key: str,
        size: int,
        need_bytes: int,
        need_count: int,
        pinned: Set[str],
        busy: Set[str],
        loading: tuple[int, int],
    ) -> tuple[str, ...]:
        """The shortest LRU prefix of the evictable keys that frees ``need_bytes`` and
        ``need_count`` models; `NoRoom` (checked first, so it never walks the LRU) when even
        all of them would not."""
        if need_bytes <= 0 and need_count <= 0:
            return ()
        pinned_bytes, busy_bytes, held = self._held(pinned, busy)
        evictable_bytes = self._bytes - pinned_bytes - busy_bytes
        evictable_count = len(self._sizes) - held
        if evictable_bytes < need_bytes or evictable_count < need_count:
            load_bytes, load_count = loading
            what = f"model {key} ({_bytes(size)})" if key else "the resident models"
            if need_bytes > evictable_bytes:
                short = (
                    f"evicting every evictable model would free {_bytes(evictable_bytes)} "
                    f"of the {_bytes(need_bytes)} needed"
                )
            else:
                short = (
                    f"at most {self.max_models} models may be resident or loading and only "
                    f"{evictable_count} of the {need_count} that would have to go are evictable"
                )
            raise NoRoom(
                f"no room for {what} now: memory budget {_bytes(self.budget_bytes)}, "
                f"{_bytes(self._bytes)} resident in {len(self._sizes)} models "
                f"({_bytes(pinned_bytes)} pinned, {_bytes(busy_bytes)} with requests in "
                f"flight, {_bytes(evictable_bytes)} evictable), {_bytes(load_bytes)} loading "
                f"in {load_count} models; {short}. Retry once requests in flight or loads "
                "finish, pin fewer models on this node, or raise its memory budget "
                "(--memory-budget) or model limit",
                key=key,
                size=size,
                budget_bytes=self.budget_bytes,
                max_models=self.max_models,
                resident_bytes=self._bytes,
                pinned_bytes=pinned_bytes,
                busy_bytes=busy_bytes,
                loading_bytes=load_bytes,
            )
        out = []
        freed = 0
        for k, b in self._sizes.items():
            if k in pinned or k in busy:
                continue
            out.append(k)
            freed += b
            if freed >= need_bytes and len(out) >= need_count:
                return tuple(out)
        raise AssertionError("unreachable: the evictable keys were counted to make room")


def choose_device(
    key: str,
    size: int,
    devices: Mapping[str, Residency],
    *,
    pinned: Set[str] = frozenset(),
    busy: Set[str] = frozenset(),
    loading: Mapping[str, Mapping[str, int]] = MappingProxyType({}),
) -> tuple[str, Plan]:
    """The device (of ``devices``: name -> its own ``Residency`` under that device's memory
    budget) a model needing ``size`` bytes of device memory loads on, and what to evict there.

    A device already holding ``key`` is chosen with an empty plan. Otherwise, among the devices
    whose `Residency.plan` succeeds (``loading``: device -> the loads in progress there), the
    one whose plan evicts the fewest bytes, then leaves the most bytes free, then evicts the
    fewest models, then comes first by name: a model goes where it fits without evicting
    anything, onto the emptiest device, and evicts only when every device is full. Raises
    `NoRoom` naming each device's numbers when none can make room (``permanent`` when
    ``size`` exceeds every device's budget). Changes nothing."""
    if not devices:
        raise ValueError("choose_device needs at least one device")
    for name, lru in devices.items():
        if key in lru:
            return name, Plan((), lru.resident_bytes)
    best: tuple[tuple[int, int, int, str], Plan] | None = None
    refused: list[tuple[str, NoRoom]] = []
    for name in sorted(devices):
        lru = devices[name]
        on = loading.get(name, _NOTHING)
        try:
            plan = lru.plan(key, size, pinned=pinned, busy=busy, loading=on)
        except NoRoom as exc:
            refused.append((name, exc))
            continue
        resident = lru.resident
        freed = sum(resident[k] for k in plan.evict)
        pending = sum(b for k, b in on.items() if k != key and k not in resident)
        free_after = lru.budget_bytes - plan.bytes_after - pending
        rank = (freed, -free_after, len(plan.evict), name)
        if best is None or rank < best[0]:
            best = (rank, plan)
    if best is not None:
        return best[0][3], best[1]
    permanent = all(exc.permanent for _, exc in refused)
    largest = max((exc for _, exc in refused), key=lambda e: e.budget_bytes)
    each = "; ".join(
        f"{name}: budget {_bytes(e.budget_bytes)} and at most {e.max_models} models, "
        f"{_bytes(e.resident_bytes)} resident ({_bytes(e.pinned_bytes)} pinned, "
        f"{_bytes(e.busy_bytes)} with requests in flight), {_bytes(e.loading_bytes)} loading"
        for name, e in refused
    )
    advice = (
        "it can never be resident on this node's devices; raise --device-memory-budget or "
        "place the model on a node with larger devices"
        if permanent
        else "retry once requests in flight or loads finish, or pin fewer models"
    )
    raise NoRoom(
        f"no device can hold model {key} ({_bytes(size)} of device memory): {each}; {advice}",
        key=key,
        size=size,
        budget_bytes=largest.budget_bytes,
        max_models=largest.max_models,
        resident_bytes=largest.resident_bytes,
        pinned_bytes=largest.pinned_bytes,
        busy_bytes=largest.busy_bytes,
        loading_bytes=largest.loading_bytes,
        permanent=permanent,
    )
