"""Benchmark: how fast a catalog change reaches every node's snapshot through etcd watches.

    python -m bench.watch_propagation [--changes 200] [--watchers 3] [--etcd host:port]

Starts a real etcd (unless ``--etcd`` names one), runs three ``SnapshotWatcher`` s, each
with its own client as on three nodes, and makes ``--changes`` catalog writes one after
another (``put_workflow`` with a sequence number; the next write starts once every watcher
has seen the previous one). For each write and watcher it measures the time from the
write returning, and from the write starting, to the watcher publishing a snapshot that
contains it, and prints p50 / p99 / max next to the write's own round trip (the ratio
says how much the watch adds over one etcd request).

Watchers and writer share this process and its event loop (and, here, two shared cores):
a node in its own process sees at most these latencies. A watcher can publish before the
writer has processed its own reply; "after return" counts those as 0.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable, Sequence

from shardline.membership.catalog import Catalog
from shardline.membership.etcd import EtcdEndpoint, connect
from shardline.membership.snapshot import ClusterSnapshot, SnapshotWatcher
from tests.etcd_server import EtcdServer

CLUSTER = "bench"
DOC = {"artifact_uri": "file:///bench.tar", "sha256": "ab" * 32, "manifest": {"replicas": 2}}


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def row(label: str, values_ms: Sequence[float]) -> str:
    return (
        f"{label:<34} p50 {percentile(values_ms, 50):7.2f}  p99 {percentile(values_ms, 99):7.2f}"
        f"  max {max(values_ms):7.2f}  mean {statistics.fmean(values_ms):7.2f}"
    )


async def run(endpoint: EtcdEndpoint, changes: int, watchers: int) -> None:
    pending: dict[int, list[asyncio.Future[float]]] = {}

    def on_snapshot(index: int) -> Callable[[ClusterSnapshot], None]:
        def callback(snap: ClusterSnapshot) -> None:
            doc = snap.workflows.get("bench@1")
            futures = pending.get(doc["seq"]) if doc is not None else None
            if futures is not None and not futures[index].done():
                futures[index].set_result(time.perf_counter())

        return callback

    nodes = [SnapshotWatcher(lambda: connect(endpoint), CLUSTER) for _ in range(watchers)]
    for i, watcher in enumerate(nodes):
        watcher.subscribe(on_snapshot(i))
        await watcher.start()
    client = await connect(endpoint)
    catalog = Catalog(client, CLUSTER)
    loop = asyncio.get_running_loop()
    after_return: list[float] = []
    from_start: list[float] = []
    write_rtt: list[float] = []
    early = 0
    try:
        for _ in range(10):  # warm up the channels
            await catalog.put_workflow("warm", "1", DOC)
        for seq in range(changes):
            futures = pending[seq] = [loop.create_future() for _ in nodes]
            t0 = time.perf_counter()
            await catalog.put_workflow("bench", "1", {**DOC, "seq": seq})
            t1 = time.perf_counter()
            seen = await asyncio.wait_for(asyncio.gather(*futures), 10)
            del pending[seq]
            write_rtt.append((t1 - t0) * 1e3)
            for t in seen:
                from_start.append((t - t0) * 1e3)
                after_return.append(max(0.0, t - t1) * 1e3)
                early += t < t1
    finally:
        await client.close()
        for watcher in nodes:
            await watcher.stop()

    print(f"{changes} catalog changes, {watchers} watchers ({len(after_return)} deliveries), ms:")
    print(row("write round trip (put_workflow)", write_rtt))
    print(row("visible on a watcher, after return", after_return))
    print(row("visible on a watcher, from start", from_start))
    print(
        f"seen before the write returned: {early}/{len(after_return)}; "
        f"propagation/round-trip ratio (p50, from start): "
        f"{percentile(from_start, 50) / percentile(write_rtt, 50):.2f}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--watchers", type=int, default=3)
    parser.add_argument("--etcd", help="host:port of a running etcd (default: start one)")
    args = parser.parse_args(argv)
    if args.etcd:
        asyncio.run(run(EtcdEndpoint.parse(args.etcd), args.changes, args.watchers))
        return
    with EtcdServer() as server:
        asyncio.run(run(server.endpoint, args.changes, args.watchers))


if __name__ == "__main__":
    main()
