"""One-shot job: register the example workflows and objectives in a cluster's etcd catalog.

    python deploy/register_examples.py [--etcd HOST:PORT] [--cluster NAME] [--workflows DIR]

Defaults come from the environment the nodes use: ``SHARDLINE_ETCD``, ``SHARDLINE_CLUSTER``
and ``SHARDLINE_WORKFLOWS`` (``/srv/shardline/workflows`` in the image; objectives are read
from ``<workflows>/objectives`` unless ``--objectives`` says otherwise).

A workflow's catalog entry points at its package by path (``artifact_uri`` is a
``file://`` URI of the directory registered here), so every node must see the same files
at the same path: the image bakes the examples in at ``/srv/shardline/workflows``, and the
compose file mounts one directory at that path in this job and in every node.

etcd may still be starting when the job runs: unreachable etcd is retried until
``--wait`` seconds have passed. Registration is idempotent (an unchanged objective gets no
new revision), so the job may run again. Exit status: 0 registered, 1 etcd unreachable,
2 invalid package or objective.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from shardline.membership.catalog import CatalogError
from shardline.membership.etcd import ControlPlaneUnavailable, EtcdEndpoint, connect
from shardline.node.cluster.catalog_ops import catalog, register_tree

DEFAULT_WORKFLOWS = Path("/srv/shardline/workflows")
RETRY_INTERVAL_S = 2.0


async def register_once(
    endpoint: EtcdEndpoint, cluster: str, workflows: Path, objectives: Path | None
) -> tuple[list[str], list[str]]:
    client = await connect(endpoint)
    try:
        return await register_tree(catalog(client, cluster), workflows, objectives)
    finally:
        await client.close()


async def register(
    endpoint: EtcdEndpoint,
    cluster: str,
    workflows: Path,
    objectives: Path | None,
    wait_s: float,
) -> tuple[list[str], list[str]]:
    """Register, retrying while etcd is unreachable (for at most ``wait_s`` seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        try:
            return await register_once(endpoint, cluster, workflows, objectives)
        except ControlPlaneUnavailable as exc:
            if loop.time() + RETRY_INTERVAL_S > deadline:
                raise
            print(f"waiting for etcd: {exc}", file=sys.stderr, flush=True)
        # Retrying a remote service that is still starting: there is no event to wait on.
        await asyncio.sleep(RETRY_INTERVAL_S)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument(
        "--etcd",
        default=env.get("SHARDLINE_ETCD") or "127.0.0.1:2379",
        help="etcd HOST:PORT [$SHARDLINE_ETCD or 127.0.0.1:2379]",
    )
    parser.add_argument(
        "--cluster",
        default=env.get("SHARDLINE_CLUSTER") or "default",
        help="cluster name [$SHARDLINE_CLUSTER or default]",
    )
    parser.add_argument(
        "--workflows",
        type=Path,
        default=Path(env.get("SHARDLINE_WORKFLOWS") or DEFAULT_WORKFLOWS),
        help=f"directory of workflow packages [$SHARDLINE_WORKFLOWS or {DEFAULT_WORKFLOWS}]",
    )
    parser.add_argument(
        "--objectives",
        type=Path,
        default=None,
        help="directory of objective configs [WORKFLOWS/objectives when it exists]",
    )
    parser.add_argument(
        "--wait", type=float, default=120.0, help="seconds to keep retrying an unreachable etcd"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workflows: Path = args.workflows
    objectives: Path | None = args.objectives
    if not workflows.is_dir():
        print(f"error: workflows directory {workflows} does not exist", file=sys.stderr)
        return 2
    if objectives is None and (workflows / "objectives").is_dir():
        objectives = workflows / "objectives"
    try:
        endpoint = EtcdEndpoint.parse(args.etcd)
        keys, names = asyncio.run(
            register(endpoint, args.cluster, workflows.resolve(), objectives, args.wait)
        )
    except ControlPlaneUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (CatalogError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"cluster {args.cluster!r} at {endpoint.address}:")
    print(f"  workflows registered from {workflows.resolve()}: {', '.join(keys) or 'none'}")
    print(f"  objectives: {', '.join(names) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
