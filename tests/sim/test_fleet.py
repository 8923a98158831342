"""sim/fleet.py: owners over any member subset, from one walk per key, equal placement's
(``shardline.router.placement_policy.assign`` at zero bytes: the ring order, with a key's
owners in distinct zones while the members have enough zones)."""

from __future__ import annotations

import math
import random

import pytest

from shardline.router.placement_policy import ModelNeed, NodeSpace, assign
from shardline.router.ring import Ring, RingMember
from shardline.sim.fleet import FleetOwners


def _assign(
    subset: list[tuple[str, float]], zone: dict[str, str], keys: list[str], r: int
) -> dict[str, tuple[str, ...]]:
    nodes = [NodeSpace(n, 1 << 50, c, zone.get(n, "")) for n, c in subset]
    needs = [ModelNeed(k, 0, replicas=r) for k in keys]
    return dict(assign(nodes, needs, balance=math.inf).owners)


@pytest.mark.parametrize("n_zones", [0, 3, 10])
def test_fleet_owners_equal_placement_on_random_subsets(n_zones: int) -> None:
    rng = random.Random(7 + n_zones)
    members = [(f"n{i:02d}", rng.choice([1.0, 1.0, 2.0])) for i in range(40)]
    zone = {n: f"z{i % n_zones}" for i, (n, _) in enumerate(members)} if n_zones else {}
    keys = [f"m{i:05d}@1" for i in range(300)]
    fleet = FleetOwners(members, keys, zone)
    for _ in range(6):
        subset = rng.sample(members, rng.randint(3, 40))
        shared = fleet.ring(subset)
        for r in (1, 3, 5):
            placed = _assign(subset, zone, keys, r)
            for key in keys:
                assert shared.owners(key, r) == placed[key], (key, r, len(subset))
    assert fleet.ring(members[:5]) is fleet.ring(list(reversed(members[:5])))  # one per set


def test_without_zones_the_owners_are_the_rings() -> None:
    rng = random.Random(3)
    members = [(f"n{i:02d}", rng.choice([1.0, 2.0])) for i in range(30)]
    keys = [f"m{i:05d}@1" for i in range(200)]
    fleet = FleetOwners(members, keys)
    subset = rng.sample(members, 17)
    ring = Ring(RingMember(n, c) for n, c in subset)
    shared = fleet.ring(subset)
    for key in keys:
        assert shared.owners(key, 3) == ring.owners(key, 3)


def test_a_zone_failure_leaves_every_key_owners_in_other_zones() -> None:
    """The fleet scenario's fault: R=3 over 10 zones, zone z3 gone: every key keeps 3
    owners, in 3 distinct zones, and those that had none in z3 keep the same owners."""
    members = [(f"n{i:03d}", 1.0) for i in range(100)]
    zone = {n: f"z{i % 10}" for i, (n, _) in enumerate(members)}
    keys = [f"m{i:05d}@1" for i in range(2000)]
    fleet = FleetOwners(members, keys, zone)
    before = fleet.ring(members)
    after = fleet.ring([m for m in members if zone[m[0]] != "z3"])
    for key in keys:
        owners = before.owners(key, 3)
        assert len({zone[o] for o in owners}) == 3
        survivors = after.owners(key, 3)
        assert len({zone[o] for o in survivors}) == 3
        assert all(zone[o] != "z3" for o in survivors)
        if all(zone[o] != "z3" for o in owners):
            assert survivors == owners


def test_fits_free_is_plan_evicting_nothing() -> None:
    """sim/node.py's ``fits_free`` arithmetic equals ``Residency.plan`` evicting nothing
    (and not refusing), whatever is pinned, busy or loading."""
    from shardline.router.residency import NoRoom, Residency
    from shardline.sim.node import fits_free, free_room

    rng = random.Random(11)
    for _ in range(400):
        residency = Residency(rng.randint(50, 400), max_models=rng.randint(1, 8))
        keys = [f"k{i}" for i in range(12)]
        now = 0.0
        for key in rng.sample(keys, rng.randint(0, 8)):
            size = rng.randint(1, 80)
            try:
                plan = residency.plan(key, size)
            except NoRoom:
                continue
            for victim in plan.evict:
                residency.remove(victim)
            now += 1.0
            residency.add(key, size, now)
        loading = {k: rng.randint(1, 60) for k in rng.sample(keys, rng.randint(0, 3))}
        pinned = set(rng.sample(keys, rng.randint(0, 3)))
        busy = set(rng.sample(keys, rng.randint(0, 3)))
        room = free_room(residency, loading)
        for key in keys:
            size = residency.resident.get(key) or rng.randint(1, 120)
            try:
                expected = not residency.plan(
                    key, size, pinned=pinned, busy=busy, loading=loading
                ).evict
            except NoRoom:
                expected = False
            assert fits_free(residency, loading, key, size, room) is expected
            assert fits_free(residency, loading, key, size) is expected
