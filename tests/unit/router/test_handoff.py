"""The join/drain handoff state machine, driven through views only (no I/O)."""

from __future__ import annotations

from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st

from shardline.membership.registry import NodeRecord, NodeState
from shardline.membership.view import Liveness, MembershipView, ViewMember
from shardline.router.handoff import Phase, ring_of, serving_candidates, step

KEYS = {f"m{i}@1": 2 for i in range(24)}


def view(states: dict[str, NodeState], models: dict[str, set[str]]) -> MembershipView:
    members = {}
    for i, (node_id, state) in enumerate(sorted(states.items())):
        rec = NodeRecord(node_id, f"127.0.0.1:{7000 + i}", f"127.0.0.1:{8000 + i}", state=state)
        members[node_id] = ViewMember(rec, Liveness.ALIVE, 0, frozenset(models.get(node_id, ())))
    return MembershipView(1, MappingProxyType(members))


def settle(states: dict[str, NodeState], models: dict[str, set[str]]) -> dict[str, set[str]]:
    """Run every node's step until nothing changes (loads/unloads applied instantly)."""
    models = {n: set(models.get(n, set())) for n in states}
    for _ in range(10):
        changed = False
        for node_id in sorted(states):
            s = step(node_id, view(states, models), KEYS, models[node_id], 0)
            if s.load or s.unload:
                models[node_id] = (models[node_id] | s.load) - s.unload
                changed = True
        if not changed:
            return models
    raise AssertionError("handoff did not settle")


def test_join_loads_the_future_share_then_is_ready() -> None:
    active = {n: NodeState.ACTIVE for n in "abc"}
    models = settle(active, {})
    states = {**active, "d": NodeState.JOINING}
    first = step("d", view(states, models), KEYS, set(), 0)
    future = ring_of(view({**active, "d": NodeState.ACTIVE}, {}))
    assert first.phase is Phase.JOINING
    assert first.load == {k for k in KEYS if "d" in future.owners(k, 2)}
    loaded = set(first.load)
    assert step("d", view(states, {**models, "d": loaded}), KEYS, loaded, 0).phase is Phase.READY
    # Nobody lets a key go while the joiner is not active yet.
    for n in "abc":
        assert not step(n, view(states, {**models, "d": loaded}), KEYS, models[n], 0).unload


def test_drain_keeps_every_key_warm_somewhere_at_every_step() -> None:
    states = {n: NodeState.ACTIVE for n in "abcd"}
    models = settle(states, {})
    states["b"] = NodeState.DRAINING
    models = {n: set(m) for n, m in models.items()}
    for _ in range(10):
        v = view(states, models)
        for key in KEYS:  # some live member holds every key warm at every moment
            assert any(key in models[n] for n in models), key
        changed = False
        for node_id in sorted(states):
            s = step(node_id, v, KEYS, models[node_id], 0)
            if s.load or s.unload:
                models[node_id] = (models[node_id] | s.load) - s.unload
                changed = True
        if not changed:
            break
    final = step("b", view(states, models), KEYS, models["b"], 0)
    assert final.phase is Phase.DRAINED and not models["b"]


def test_drained_waits_for_requests_in_flight() -> None:
    states = {"a": NodeState.ACTIVE, "b": NodeState.DRAINING}
    assert step("b", view(states, {}), {}, set(), in_flight=3).phase is Phase.DRAINING
    assert step("b", view(states, {}), {}, set(), in_flight=0).phase is Phase.DRAINED


def test_serving_candidates_fall_back_to_any_warm_holder() -> None:
    v = view({"a": NodeState.ACTIVE, "b": NodeState.DRAINING, "c": NodeState.ACTIVE},
             {"b": {"k@1"}})  # fmt: skip
    warm = {"b"}
    assert serving_candidates("k@1", ("a", "c"), v, lambda n: n in warm) == ("b",)
    warm = {"a", "b"}
    assert serving_candidates("k@1", ("a", "c"), v, lambda n: n in warm) == ("a",)
    assert serving_candidates("k@1", ("a", "c"), v, lambda n: False) == ("a", "c")


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.sampled_from("abcdef"), min_size=2, max_size=6, unique=True),
    st.data(),
)
def test_any_join_or_drain_settles_with_every_key_owned_and_warm(
    nodes: list[str], data: st.DataObject
) -> None:
    states = {n: NodeState.ACTIVE for n in nodes}
    models = settle(states, {})
    change = data.draw(st.sampled_from(["join", "drain"]))
    if change == "join":
        new = data.draw(st.sampled_from([c for c in "ghij"]))
        states[new] = NodeState.JOINING
        models = settle(states, models)
        states[new] = NodeState.ACTIVE
    else:
        states[data.draw(st.sampled_from(nodes))] = NodeState.DRAINING
    models = settle(states, models)
    ring = ring_of(view(states, models))
    for key, r in KEYS.items():
        for owner in ring.owners(key, r):
            assert key in models[owner]
