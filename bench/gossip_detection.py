"""Benchmark: how fast real gossip agents confirm a crash, and whether a quiet cluster errs.

    python -m bench.gossip_detection [--trials 20] [--quiet-run-s 120]

Three ``GossipAgent``s on 127.0.0.1 UDP, in this process, with the default ``SwimConfig``
(probe interval 0.5 s). For each trial a fresh cluster converges, then after a random
phase (0..2 probe periods) one agent is aborted (no leave, like a crash) and we measure
the time until BOTH others have marked it DEAD (from their MemberChanged events). Then
three agents run ``--quiet-run-s`` seconds with no failure: any DEAD/LEFT of a live member
is a false positive; suspicions (refuted) and refutations are counted too.
Targets: detection p99 < 3 s, zero false positives.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
from collections.abc import Callable

from shardline.membership.gossip import GossipAgent
from shardline.membership.swim import MemberChanged, MemberState, SwimConfig

N_AGENTS = 3


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100): with 20 samples, p99 is the maximum."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def wait_for_state(
    agents: list[GossipAgent], predicate: Callable[[], bool], limit_s: float
) -> None:
    changed = asyncio.Event()
    unsubscribe = [a.subscribe(lambda _: changed.set()) for a in agents]
    try:
        async with asyncio.timeout(limit_s):
            while not predicate():
                await changed.wait()
                changed.clear()
    finally:
        for unsub in unsubscribe:
            unsub()


def all_alive(agents: list[GossipAgent]) -> bool:
    return all(
        (m := o.members().get(s.node_id)) is not None and m.state is MemberState.ALIVE
        for o in agents
        for s in agents
    )


async def start_cluster(config: SwimConfig, tag: str) -> list[GossipAgent]:
    agents = [GossipAgent(f"{tag}-{i}", config) for i in range(N_AGENTS)]
    for agent in agents:
        await agent.start()
    roster = {a.node_id: a.address for a in agents}
    for agent in agents:
        agent.set_seeds(roster)
    await wait_for_state(agents, lambda: all_alive(agents), 10.0)
    return agents


async def detection_trial(config: SwimConfig, trial: int, rng: random.Random) -> float:
    agents = await start_cluster(config, f"t{trial}")
    loop = asyncio.get_running_loop()
    await asyncio.sleep(rng.uniform(0.0, 2 * config.probe_interval_s))  # random crash phase
    victim = agents[trial % N_AGENTS]
    survivors = [a for a in agents if a is not victim]
    dead_at: dict[str, float] = {}
    both = asyncio.Event()
    wrong: list[MemberChanged] = []

    def watcher(observer: str) -> Callable[[MemberChanged], None]:
        def on_change(event: MemberChanged) -> None:
            if event.member.node_id != victim.node_id:
                if event.member.state in (MemberState.DEAD, MemberState.LEFT):
                    wrong.append(event)
                return
            if event.member.state is MemberState.DEAD and observer not in dead_at:
                dead_at[observer] = loop.time()
                if len(dead_at) == len(survivors):
                    both.set()

        return on_change

    for agent in survivors:
        agent.subscribe(watcher(agent.node_id))
    crashed_at = loop.time()
    victim.abort()
    try:
        await asyncio.wait_for(both.wait(), 30.0)
    finally:
        for agent in survivors:
            await agent.stop(graceful=False)
    if wrong:
        print(f"  trial {trial}: a live member was marked dead: {wrong}")
    return max(dead_at.values()) - crashed_at


async def quiet_run(config: SwimConfig, seconds: float) -> dict[str, int]:
    agents = await start_cluster(config, "quiet")
    counts = {"false_positives": 0, "suspicions": 0}

    def on_change(event: MemberChanged) -> None:
        if event.member.state in (MemberState.DEAD, MemberState.LEFT):
            counts["false_positives"] += 1
        elif event.member.state is MemberState.SUSPECT:
            counts["suspicions"] += 1

    unsubscribe = [agent.subscribe(on_change) for agent in agents]
    await asyncio.sleep(seconds)  # the measurement window itself
    for unsub in unsubscribe:
        unsub()  # the closing leave below is not a false positive
    counts["refutations"] = sum(a.members()[a.node_id].incarnation for a in agents)
    counts["packets_sent"] = sum(a.sent_packets for a in agents)
    counts["packets_rejected"] = sum(a.rejected_packets for a in agents)
    counts["max_local_health"] = max(a.swim.local_health for a in agents)
    for agent in agents:
        await agent.stop(graceful=True)
    return counts


async def main_async(trials: int, quiet_s: float, seed: int) -> int:
    config = SwimConfig(cluster="bench")
    low, high = config.suspicion_bounds_s(N_AGENTS)
    print(
        f"{N_AGENTS} agents on loopback; probe {config.probe_interval_s} s, timeout "
        f"{config.probe_timeout_s} s, k={config.indirect_probes}, suspicion "
        f"{low:.2f}..{high:.2f} s"
    )
    rng = random.Random(seed)
    times: list[float] = []
    for trial in range(trials):
        took = await detection_trial(config, trial, rng)
        times.append(took)
        print(f"  trial {trial + 1:2d}/{trials}: both survivors saw DEAD after {took:.3f} s")
    p50, p99, worst = percentile(times, 50), percentile(times, 99), max(times)
    print(
        f"detection over {trials} trials: p50 {p50:.3f} s  p99 {p99:.3f} s  max {worst:.3f} s"
        f"  mean {statistics.fmean(times):.3f} s  (target p99 < 3 s: "
        f"{'ok' if p99 < 3.0 else 'MISSED'})"
    )
    counts = await quiet_run(config, quiet_s)
    print(
        f"quiet run {quiet_s:.0f} s ({quiet_s / config.probe_interval_s:.0f} periods x "
        f"{N_AGENTS} agents): false positives {counts['false_positives']}, suspicions "
        f"{counts['suspicions']}, refutations {counts['refutations']}, "
        f"max local health {counts['max_local_health']}, packets sent "
        f"{counts['packets_sent']} (rejected {counts['packets_rejected']})"
        f"  (target 0 false positives: {'ok' if counts['false_positives'] == 0 else 'MISSED'})"
    )
    return 0 if p99 < 3.0 and counts["false_positives"] == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--quiet-run-s", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=1, help="seeds the crash phases")
    args = parser.parse_args(argv)
    return asyncio.run(main_async(args.trials, args.quiet_run_s, args.seed))


if __name__ == "__main__":
    raise SystemExit(main())
