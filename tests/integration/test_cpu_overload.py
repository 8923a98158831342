"""bench.overload end to end at a tiny scale: a node serving the CPU-bound bench model,
a grpcio closed loop for its capacity, grpcio open-loop processes at 1x and 10x. No
timing assertions (the machine is shared): every step reports goodput, and the only
errors are the overload statuses (refused, late, or not sent by the client). Goodput is
asserted only at 1x: how much survives 10x depends on the CPU the machine has left."""

from __future__ import annotations

import io

from rich.console import Console

from bench.loadgen import CLIENT_OVERRUN
from bench.overload import ModelSpec, report, run

EXPECTED = {"RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", CLIENT_OVERRUN}


def test_overload_bench_reports_goodput_and_only_overload_errors() -> None:
    spec = ModelSpec()  # the bench's own model: ~8 ms of CPU a request, 10x ~1 000/s
    capacity, steps, ratios = run(spec, 2.0, steps=(1.0, 10.0), capacity_s=2.0, warmup_s=0.5)
    assert capacity.rps > 0 and not capacity.errors, capacity.first_error
    assert [s.label for s in steps] == ["1x", "10x"] and len(ratios) == 1
    assert steps[0].result.ok > 0, (steps[0].result.errors, steps[0].load.first_error)
    for s in steps:
        r = s.result
        assert set(r.errors) <= EXPECTED, (s.label, r.errors, s.load.first_error)
        assert r.scheduled >= r.sent >= r.ok
        assert s.load.server_cpu_s > 0 and s.load.client_cpu_s > 0
    assert steps[-1].result.offered_per_s > 5 * steps[0].result.offered_per_s
    out = io.StringIO()
    report(Console(file=out, width=160), capacity, spec, steps, ratios)
    text = out.getvalue()
    assert "goodput 10x / 1x" in text and "CPU/refusal" in text
