"""Benchmark: the forward's transport, gRPC (grpclib, HTTP/2) against the peer link.

    python -m bench.forward_transport [--duration 6] [--warmup 2] [--concurrency 64]
        [--rounds 3]

Two local 3-node clusters (``bench.perf_analyzer.cluster``), alike but for the transport
their nodes forward with (``shardline serve --peer-transport grpc|link``). A grpcio asyncio
closed loop in its own process (``bench.grpcio_load``) sends ``payment_fraud`` requests
(users whose decision is ``payment_fraud@1`` without a shadow copy) to the node that owns
none of it (hops=1), and to an owner (hops=0) for reference; a bare grpclib echo server
gives the transport floor. In alternating rounds (the median round by throughput stands for
each setup): req/s, p50/p99, server CPU ms per request over every node of the cluster and
the ingress's own (``/proc``).

Under the table: ingress CPU per forwarded request ÷ the echo's CPU per request (the issue's
target: ≤ 1.25), hops=1 ÷ hops=0 throughput, and link ÷ gRPC for each figure.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from bench.echo_server import ECHO_PATH
from bench.grpcio_load import LoadRun, fraud_payloads, run_load
from bench.perf_analyzer import Setup, cluster
from bench.server_cost import pid_of
from bench.serving import start_echo

TRANSPORTS = ("grpc", "link")


@dataclass(frozen=True)
class Row:
    run: LoadRun
    ingress_cpu_ms: float | None


@contextlib.contextmanager
def clusters() -> Iterator[dict[str, Cluster]]:
    """One 3-node cluster per transport (``shardline serve --peer-transport``)."""
    with contextlib.ExitStack() as stack:
        out = {}
        for transport in TRANSPORTS:
            owner, ingress = stack.enter_context(cluster(["--peer-transport", transport]))
            pid = pid_of(ingress.target, ingress.server_pids)
            out[transport] = Cluster(owner, ingress, pid)
        yield out


@dataclass(frozen=True)
class Cluster:
    owner: Setup  # an owner of KEY (hops=0)
    ingress: Setup  # owns no replica of KEY: every request is forwarded
    ingress_pid: int


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    payloads = fraud_payloads()
    kw = {"concurrency": args.concurrency, "duration_s": args.duration, "warmup_s": args.warmup}
    rows: dict[str, list[Row]] = {}

    def load(name: str, target: str, pids: list[int], *, ingress: int | None = None,
             method: str | None = None) -> None:  # fmt: skip
        run = run_load(
            [target], server_pids=pids, payloads=payloads,
            part_pids=[ingress] if ingress is not None else (),
            **({"method": method} if method else {}), **kw,  # type: ignore[arg-type]
        )  # fmt: skip
        rows.setdefault(name, []).append(Row(run, run.part_cpu_ms_per_request))

    echo, port = start_echo(120)  # bytes: about a payment_fraud Predict answer
    try:
        with clusters() as cs:
            for _ in range(args.rounds):
                load("echo grpclib", f"127.0.0.1:{port}", [echo.pid], method=ECHO_PATH)
                load("hops=0", cs["link"].owner.target, cs["link"].owner.server_pids)
                for transport in TRANSPORTS:
                    c = cs[transport]
                    load(f"hops=1 over {transport}", c.ingress.target, c.ingress.server_pids,
                         ingress=c.ingress_pid)  # fmt: skip
    finally:
        echo.kill()
        echo.wait()
    Console(width=140).print(report(rows, args))
    return 0


def report(rows: dict[str, list[Row]], args: argparse.Namespace) -> Table:
    med = {
        name: sorted(runs, key=lambda r: r.run.rps)[len(runs) // 2] for name, runs in rows.items()
    }
    table = Table(
        title=f"Forward transport ({args.concurrency} in flight, {args.duration:g} s measured, "
        f"median of {args.rounds} alternating rounds)"
    )
    for col in ("setup", "req/s", "p50 ms", "p99 ms", "errors", "server CPU ms/req",
                "ingress CPU ms/req"):  # fmt: skip
        table.add_column(col, justify="left" if col == "setup" else "right")
    for name, row in med.items():
        r = row.run
        table.add_row(
            name, f"{r.rps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", str(r.error_count),
            f"{r.server_cpu_ms_per_request:.3f}",
            "" if row.ingress_cpu_ms is None else f"{row.ingress_cpu_ms:.3f}",
        )  # fmt: skip
    lines = []
    echo = med["echo grpclib"].run.server_cpu_ms_per_request
    hops0 = med["hops=0"].run.rps
    for transport in TRANSPORTS:
        row = med[f"hops=1 over {transport}"]
        assert row.ingress_cpu_ms is not None
        lines.append(
            f"{transport}: ingress CPU per forward / echo = {row.ingress_cpu_ms / echo:.2f} "
            f"(target <= 1.25); hops=1 / hops=0 throughput = {row.run.rps / hops0:.2f}"
        )
    grpc, link = med["hops=1 over grpc"], med["hops=1 over link"]
    assert grpc.ingress_cpu_ms and link.ingress_cpu_ms
    server = link.run.server_cpu_ms_per_request / grpc.run.server_cpu_ms_per_request
    lines.append(
        f"link / grpc: req/s {link.run.rps / grpc.run.rps:.2f}, "
        f"p50 {link.run.p50_ms / grpc.run.p50_ms:.2f}, server CPU {server:.2f}, "
        f"ingress CPU {link.ingress_cpu_ms / grpc.ingress_cpu_ms:.2f}"
    )
    table.caption = "\n".join(lines)
    return table


if __name__ == "__main__":
    raise SystemExit(main())
