"""sim/fleet.py: owners over any member subset, from one walk per key, equal the real ring's."""

from __future__ import annotations

import random

from shardline.router.ring import Ring, RingMember
from shardline.sim.fleet import FleetOwners


def test_fleet_owners_equal_the_ring_on_random_subsets() -> None:
    rng = random.Random(7)
    members = [(f"n{i:02d}", rng.choice([1.0, 1.0, 2.0])) for i in range(40)]
    keys = [f"m{i:05d}@1" for i in range(300)]
    fleet = FleetOwners(members, keys)
    for _ in range(6):
        subset = rng.sample(members, rng.randint(3, 40))
        ring = Ring(RingMember(n, c) for n, c in subset)
        shared = fleet.ring(subset)
        for key in keys:
            for r in (1, 3):
                assert shared.owners(key, r) == ring.owners(key, r), (key, r, len(subset))
    assert fleet.ring(members[:5]) is fleet.ring(list(reversed(members[:5])))  # one per set
