"""Load and observation from inside the client's network namespace (multi-host test).

    python -m tests.netns.agent --targets A,B --watch A,B,C --duration 60

Sends a steady closed-loop load (payment_fraud and continue_watching_ranking, R=2) to the
``--targets`` nodes and polls every ``--watch`` node's routing table. Prints JSON lines
with CLOCK_MONOTONIC timestamps (shared by every process on the machine): ``view`` when a
node's set of active members changes, ``progress`` every second, ``done`` at the end.
Stops after ``--duration`` seconds or when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import numpy as np

from shardline.node.ops.localcluster import routing_table
from shardline.node.sdk.client import Client, PredictError

FRAUD = {
    "amount": 912.5,
    "currency": "USD",
    "country_mismatch": True,
    "account_age_days": 3.0,
    "tx_last_24h": 9,
    "card_present": False,
}
RANKING = {"candidates": np.array([1, 5, 9, 12, 40, 77], dtype=np.int64), "k": 3}


def emit(kind: str, **fields: object) -> None:
    print(json.dumps({"t": time.monotonic(), "kind": kind, **fields}), flush=True)


async def main(targets: list[str], watch: list[str], duration_s: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(sys.stdin, lambda: stop.set() if not sys.stdin.readline() else None)
    loop.call_later(duration_s, stop.set)
    ok = 0
    errors: list[str] = []

    async def load(target: str, worker: int) -> None:
        nonlocal ok
        async with Client(target, timeout_s=5.0) as client:
            i = 0
            while not stop.is_set():
                i += 1
                objective, inputs = (
                    ("payment_fraud", FRAUD) if i % 2 else ("continue_watching_ranking", RANKING)
                )
                try:
                    await client.predict(objective, inputs, user_id=f"w{worker}-{i}")
                    ok += 1
                except PredictError as exc:
                    errors.append(f"{target}: {exc}")

    async def observe(target: str) -> None:
        last: object = None
        while not stop.is_set():
            try:
                table = await routing_table(target, timeout_s=1.0)
                view = sorted(m.node_id for m in table.members if m.state == "active")
            except Exception:
                view = ["<unreachable>"]
            if view != last:
                emit("view", node=target, active=view)
                last = view
            await asyncio.sleep(0.1)  # polling another process's view over gRPC

    async def progress() -> None:
        while not stop.is_set():
            emit("progress", ok=ok, errors=len(errors))
            await asyncio.sleep(1.0)

    tasks = [load(t, w) for w in range(2) for t in targets]
    await asyncio.gather(*tasks, *(observe(t) for t in watch), progress())
    emit("done", ok=ok, errors=errors[:20], error_count=len(errors))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", required=True)
    parser.add_argument("--watch", required=True)
    parser.add_argument("--duration", type=float, default=60.0)
    args = parser.parse_args()
    asyncio.run(main(args.targets.split(","), args.watch.split(","), args.duration))
