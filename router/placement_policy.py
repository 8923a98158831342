"""Memory-aware placement: consistent hashing with bounded loads (pure).

`assign` maps every model key to its owner nodes, primary first, the way `router/ring.py`
does -- walking the same md5 continuum (``VNODES_PER_WEIGHT`` points per capacity weight
unit) clockwise from the key's point -- except that a node only takes a key while it stays
within its *bound*::

    bound(node) = balance * total * share(node),   share ∝ budget_bytes * capacity

where ``total`` is everything placed: the bytes of every placed owner slot (a key's bytes
once per owner) and, when rates are given, the request rates (a key's rate split evenly over
its owners). A key takes the first ``replicas + copies`` nodes in its ring order that

(a) can load it at all: ``budget_bytes >= bytes`` (placed bytes MAY exceed a node's budget:
    models load lazily and an LRU keeps the resident set under the budget), and
(b) stay within their bound on bytes (and on rate, when rates are given).

When fewer nodes than that are within bound, the rest of its owners are the least loaded
fitting nodes (relative to their bounds; ties by ring order): nothing that fits somewhere
is ever refused. Only a key that fits on no node (bigger than the largest budget) is
refused, with the numbers (`refusal`). A key that fits on fewer nodes than it asks for gets
those nodes.

When no bound binds (``balance=math.inf``, or loads that are even enough) the owners are
exactly ``Ring(members).owners(key, replicas + copies)``: placement moves a key only when it
must. Keys are processed in the order of their md5 -- fixed by the key set alone, never by
the input order, the sizes or the nodes -- so the assignment is a pure function of the
node set and the model set. (Heaviest-first orders were tried: they pack no better under a
1.25 bound and displace 10x more keys from their ring owners, so more keys move on a join.)

Speed: the continuum is built once per distinct (id, weight) set (cached, like
`router/ring.py`), every key's start point is found at once (numpy ``searchsorted`` on the
top 64 bits of the md5, with an exact comparison for the rare key whose top bits tie with a
point), and each key then walks a few points in Python. A key whose walk finds no room
within ``8 * owners + 64`` points (a hot key with many copies, or a full neighbourhood)
ranks every node by its ring order at once in numpy. 100 000 models on 1 000 nodes take
about 5 µs per model (`bench/placement_balance.py`).

Pure: no clock, no I/O, no random state; md5, never the salted built-in ``hash()``.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from shardline.router.ring import VNODES_PER_WEIGHT, RingMember

DEFAULT_BALANCE = 1.25
CONTINUUM_CACHE_SIZE = 16  # distinct (id, weight) sets whose continuum is kept
_WALK_POINTS = 64  # a key walks 8 * owners + this many points before ranking all nodes
_EPS = 1e-9  # relative slack on bound comparisons (float sums)

_EMPTY: Mapping[str, object] = MappingProxyType({})


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class NodeSpace:
    """A node that can hold models: its id, memory budget and relative capacity."""

    node_id: str
    budget_bytes: int  # the node's model memory budget (> 0)
    capacity: float = 1.0  # relative weight, as in RingMember
    zone: str = ""  # failure domain: a key's owners go to distinct zones while there are enough

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, str) or not self.node_id:
            raise ValueError(f"node_id must be a non-empty string, got {self.node_id!r}")
        if not isinstance(self.zone, str):
            raise ValueError(f"zone of {self.node_id!r} must be a string, got {self.zone!r}")
        if not _is_int(self.budget_bytes) or self.budget_bytes <= 0:
            raise ValueError(
                f"budget_bytes of {self.node_id!r} must be an int > 0, got {self.budget_bytes!r}"
            )
        cap = self.capacity
        if not _is_number(cap) or not math.isfinite(cap) or cap <= 0:
            raise ValueError(
                f"capacity of {self.node_id!r} must be a finite number > 0, got {cap!r}"
            )


@dataclass(frozen=True)
class ModelNeed:
    """What a model key asks of placement."""

    key: str  # "name@version"
    bytes: int  # footprint (>= 0)
    replicas: int = 2  # R wanted (>= 1)
    copies: int = 0  # extra hot copies beyond R (>= 0)
    rate: float = 0.0  # expected request rate (optional second dimension to balance)

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ValueError(f"model key must be a non-empty string, got {self.key!r}")
        if not _is_int(self.bytes) or self.bytes < 0:
            raise ValueError(f"bytes of {self.key!r} must be an int >= 0, got {self.bytes!r}")
        if not _is_int(self.replicas) or self.replicas < 1:
            raise ValueError(f"replicas of {self.key!r} must be an int >= 1, got {self.replicas!r}")
        if not _is_int(self.copies) or self.copies < 0:
            raise ValueError(f"copies of {self.key!r} must be an int >= 0, got {self.copies!r}")
        if not _is_number(self.rate) or not math.isfinite(self.rate) or self.rate < 0:
            raise ValueError(
                f"rate of {self.key!r} must be a finite number >= 0, got {self.rate!r}"
            )

    @property
    def wanted(self) -> int:
        """How many owners it asks for: ``replicas + copies``."""
        return self.replicas + self.copies


@dataclass(frozen=True)
class Assignment:
    """The result of `assign` (read-only mappings)."""

    owners: Mapping[str, tuple[str, ...]]  # key -> owners, primary first
    refused: Mapping[str, str]  # key -> why it fits on no node, with the numbers
    placed_bytes: Mapping[str, int]  # node -> bytes placed on it (every node, 0 included)
    placed_rate: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    # node -> request rate placed on it (each key's rate split evenly over its owners)

    def owners_of(self, key: str) -> tuple[str, ...]:
        """The owners of `key`, primary first; ``()`` when unknown or refused."""
        return self.owners.get(key, ())


# --- the continuum --------------------------------------------------------------------------


def _md5_int(text: str) -> int:
    """The same integer uhashring puts on its ring: ``int(md5(text).hexdigest(), 16)``."""
    return int.from_bytes(hashlib.md5(text.encode("utf-8")).digest(), "big")


@dataclass(frozen=True)
class _Continuum:
    full: list[int]  # sorted 128-bit points
    hi: npt.NDArray[np.uint64]  # their top 64 bits
    node: list[int]  # owner node index (in id order) of every point
    by_node: npt.NDArray[np.int64]  # (nodes, most points) point indices per node, -1 padded


_continuums: dict[tuple[tuple[str, int], ...], _Continuum] = {}


def _continuum(spec: tuple[tuple[str, int], ...]) -> _Continuum:
    """The continuum of ``router/ring.py`` for (id, weight) pairs in id order (cached).

    Points ``md5(f"{id}-{i}")`` for ``i < VNODES_PER_WEIGHT * weight``, inserted in id order
    so that, as in uhashring, a point two nodes share belongs to the later id.
    """
    found = _continuums.get(spec)
    if found is not None:
        return found
    owner_of: dict[int, int] = {}
    for index, (node_id, weight) in enumerate(spec):
        for i in range(VNODES_PER_WEIGHT * weight):
            owner_of[_md5_int(f"{node_id}-{i}")] = index
    full = sorted(owner_of)
    node = [owner_of[p] for p in full]
    hi = np.fromiter((p >> 64 for p in full), dtype=np.uint64, count=len(full))
    per_node: list[list[int]] = [[] for _ in spec]
    for position, index in enumerate(node):
        per_node[index].append(position)
    widest = max((len(p) for p in per_node), default=0)
    by_node = np.full((len(spec), max(widest, 1)), -1, dtype=np.int64)
    for index, positions in enumerate(per_node):
        by_node[index, : len(positions)] = positions
    found = _Continuum(full, hi, node, by_node)
    while len(_continuums) >= CONTINUUM_CACHE_SIZE:
        del _continuums[next(iter(_continuums))]  # the oldest entry
    _continuums[spec] = found
    return found


def _starts(cont: _Continuum, digests: list[bytes]) -> list[int]:
    """Every key's first continuum index: uhashring's ``bisect(keys, md5(key))``, wrapped."""
    if not digests:
        return []
    hi = np.frombuffer(b"".join(d[:8] for d in digests), dtype=">u8").astype(np.uint64)
    right = np.searchsorted(cont.hi, hi, side="right")
    left = np.searchsorted(cont.hi, hi, side="left")
    starts: list[int] = right.tolist()
    for i in np.flatnonzero(left != right).tolist():  # top 64 bits tie with a point's
        starts[i] = bisect_right(cont.full, int.from_bytes(digests[i], "big"))
    size = len(cont.full)
    return [0 if s == size else s for s in starts]


def _ring_rank(cont: _Continuum, start: int) -> npt.NDArray[np.int64]:
    """Every node's place in the walk from ``start``: how many points before its first one."""
    size = len(cont.full)
    distance = np.where(cont.by_node >= 0, (cont.by_node - start) % size, size)
    return np.asarray(distance.min(axis=1), dtype=np.int64)


# --- placement -----------------------------------------------------------------------------


def _gib(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def refusal(nodes: Iterable[NodeSpace], need: ModelNeed) -> str | None:
    """Why `need` fits on no node (its bytes vs the largest budget), else None."""
    spaces = list(nodes)
    if not spaces:
        return f"{need.key} cannot be placed: there is no node to place it on"
    largest = max(spaces, key=lambda s: (s.budget_bytes, s.node_id))
    if need.bytes > largest.budget_bytes:
        return (
            f"{need.key} needs {need.bytes} bytes ({_gib(need.bytes)}), more than the largest "
            f"node memory budget: {largest.budget_bytes} bytes ({_gib(largest.budget_bytes)}) "
            f"on {largest.node_id} ({len(spaces)} node{'s' if len(spaces) != 1 else ''})"
        )
    return None


def _check_balance(balance: float) -> None:
    if not _is_number(balance) or math.isnan(balance) or balance < 1.0:
        raise ValueError(f"balance must be a number >= 1.0 (math.inf: unbounded), got {balance!r}")


def assign(
    nodes: Iterable[NodeSpace], models: Iterable[ModelNeed], *, balance: float = DEFAULT_BALANCE
) -> Assignment:
    """Owners for every model (see the module docstring). ValueError on duplicate ids/keys."""
    _check_balance(balance)
    by_id: dict[str, NodeSpace] = {}
    for space in nodes:
        if not isinstance(space, NodeSpace):
            raise TypeError(f"nodes must be NodeSpace, got {space!r}")
        if space.node_id in by_id:
            raise ValueError(f"duplicate node {space.node_id!r}")
        by_id[space.node_id] = space
    needs: dict[str, ModelNeed] = {}
    for need in models:
        if not isinstance(need, ModelNeed):
            raise TypeError(f"models must be ModelNeed, got {need!r}")
        if need.key in needs:
            raise ValueError(f"duplicate model key {need.key!r}")
        needs[need.key] = need
    spaces = [by_id[node_id] for node_id in sorted(by_id)]
    ids = [s.node_id for s in spaces]
    n_nodes = len(spaces)

    refused: dict[str, str] = {}
    largest = max((s.budget_bytes for s in spaces), default=0)
    placeable: list[ModelNeed] = []
    for need in needs.values():
        if need.bytes > largest or not spaces:
            refused[need.key] = refusal(spaces, need) or ""
        else:
            placeable.append(need)
    if not spaces:
        return Assignment(MappingProxyType({}), MappingProxyType(refused), MappingProxyType({}))

    # How many owners each key gets: what it asks for, at most the nodes that can load it.
    budgets = [s.budget_bytes for s in spaces]
    sorted_budgets = np.sort(np.asarray(budgets, dtype=np.float64))
    sizes = np.asarray([m.bytes for m in placeable], dtype=np.float64)
    fitting = n_nodes - np.searchsorted(sorted_budgets, sizes, side="left")
    wanted = np.asarray([m.wanted for m in placeable], dtype=np.int64)
    counts: list[int] = np.minimum(wanted, fitting).tolist()
    rates = np.asarray([m.rate for m in placeable], dtype=np.float64)
    total_bytes = float((sizes * np.asarray(counts, dtype=np.float64)).sum())
    total_rate = float(rates.sum())

    # Bounds: balance x total x share, share ∝ budget x capacity (inf: that dimension is off).
    weights = [s.budget_bytes * s.capacity for s in spaces]
    weight_sum = math.fsum(weights)
    byte_bound = [
        balance * total_bytes * w / weight_sum * (1 + _EPS) if total_bytes > 0 else math.inf
        for w in weights
    ]
    rate_bound = [
        balance * total_rate * w / weight_sum * (1 + _EPS) if total_rate > 0 else math.inf
        for w in weights
    ]

    # In md5 order of the keys: fixed by the key set alone (not by sizes, rates or nodes).
    digests = [hashlib.md5(m.key.encode("utf-8")).digest() for m in placeable]
    order = sorted(range(len(placeable)), key=digests.__getitem__)

    cont = _continuum(tuple((s.node_id, RingMember(s.node_id, s.capacity).weight) for s in spaces))
    starts = _starts(cont, digests)
    point_node = cont.node
    n_points = len(point_node)
    load_b = [0] * n_nodes
    load_r = [0.0] * n_nodes
    owners: dict[str, tuple[str, ...]] = {}
    # Zones: a key's owners go to distinct zones (a zone failure then leaves every key an
    # owner) as long as the cluster has as many zones as the key wants owners; nodes with
    # no zone each count as their own.
    zone_of = [s.zone or f"\0{s.node_id}" for s in spaces]
    n_zones = len(set(zone_of))

    for i in order:
        need = placeable[i]
        count = counts[i]
        size = need.bytes
        per_owner = need.rate / count
        chosen: list[int] = []
        taken: set[int] = set()
        zones: set[str] = set()
        spread = n_zones >= count
        position = starts[i]
        for _ in range(8 * count + _WALK_POINTS):
            node = point_node[position]
            if (
                node not in taken
                and not (spread and zone_of[node] in zones)
                and budgets[node] >= size
                and load_b[node] + size <= byte_bound[node]
                and load_r[node] + per_owner <= rate_bound[node]
            ):
                chosen.append(node)
                taken.add(node)
                zones.add(zone_of[node])
                if len(chosen) == count:
                    break
            position += 1
            if position == n_points:
                position = 0
        if len(chosen) < count:
            chosen = _rest(
                cont, starts[i], chosen, count, size, per_owner, budgets, load_b, load_r,
                byte_bound, rate_bound,
            )  # fmt: skip
        for node in chosen:
            load_b[node] += size
            load_r[node] += per_owner
        owners[need.key] = tuple(ids[node] for node in chosen)

    return Assignment(
        owners=MappingProxyType(owners),
        refused=MappingProxyType(refused),
        placed_bytes=MappingProxyType(dict(zip(ids, load_b, strict=True))),
        placed_rate=MappingProxyType(dict(zip(ids, load_r, strict=True))),
    )


def _rest(
    cont: _Continuum,
    start: int,
    chosen: list[int],
    count: int,
    size: int,
    per_owner: float,
    budgets: list[int],
    load_b: list[int],
    load_r: list[float],
    byte_bound: list[float],
    rate_bound: list[float],
) -> list[int]:
    """Complete a key's owners when its walk found too few: all nodes at once, in numpy.

    First the nodes within bound in ring order; then, if still short, the least loaded
    fitting nodes (the larger of bytes/bound and rate/bound after taking it; ties by ring
    order). Returns all owners in ring order.
    """
    rank = _ring_rank(cont, start)
    lb = np.asarray(load_b, dtype=np.float64) + size
    lr = np.asarray(load_r, dtype=np.float64) + per_owner
    bb = np.asarray(byte_bound, dtype=np.float64)
    br = np.asarray(rate_bound, dtype=np.float64)
    free = np.asarray(budgets, dtype=np.float64) >= size
    free[chosen] = False
    within = free & (lb <= bb) & (lr <= br)
    candidates = np.flatnonzero(within)
    picked = candidates[np.argsort(rank[candidates], kind="stable")][: count - len(chosen)]
    result = [*chosen, *picked.tolist()]
    if len(result) < count:
        free[picked] = False
        others = np.flatnonzero(free)
        with np.errstate(divide="ignore", invalid="ignore"):
            fill = np.maximum(
                np.where(np.isinf(bb), 0.0, lb / bb), np.where(np.isinf(br), 0.0, lr / br)
            )[others]
        least = others[np.lexsort((rank[others], fill))][: count - len(result)]
        result.extend(least.tolist())
    return sorted(result, key=lambda node: int(rank[node]))
