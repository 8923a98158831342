"""Reports: the summary table on the terminal, and a directory with JSON, plots and HTML.

``write_report(result, directory)`` writes ``report.json`` (everything ``RunResult`` holds),
``timeline.png`` (answers/s, errors/s and p99 latency per second, with fault markers;
faults closer together than the labels can be told apart share one label, "first (+N)"),
``ownership.png`` (owner slots per node over time, from the ring the cluster should
have; one row per node, labelled by node id) and ``index.html`` showing them with the
summary and the checks. Plots need matplotlib (Agg backend, no display).
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shardline.sim.result import RunResult


def _fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def summary_rows(result: RunResult) -> list[tuple[str, str]]:
    s = result.summary
    lat = s["latency_ms"]
    det = s["detection"]
    imb = s["imbalance"]
    errors = ", ".join(f"{k} {v}" for k, v in sorted(s["statuses"].items()) if k != "OK")
    return [
        ("scenario", f"{result.scenario.name} (seed {result.seed})"),
        ("nodes", f"{s['nodes']} initial, {s['nodes_total']} in all"),
        ("virtual time", _fmt(s["virtual_s"], " s")),
        ("requests", f"{s['requests']:,}"),
        (
            "success rate",
            _fmt(None if s["success_rate"] is None else 100 * s["success_rate"], " %", 3),
        ),
        ("errors", errors or "none"),
        (
            "latency p50 / p99 / p99.9",
            " / ".join(_fmt(lat.get(p), " ms", 2) for p in ("p50", "p99", "p999")),
        ),
        (
            "crash detection first / all",
            f"median {_fmt(det['first_median_s'], ' s', 2)} / "
            f"{_fmt(det['all_median_s'], ' s', 2)}, "
            f"max {_fmt(det['first_max_s'], ' s', 2)} / {_fmt(det['all_max_s'], ' s', 2)} "
            f"({det['detected']}/{det['crashes']} crashes; "
            f"{s['false_dead_declarations']} false 'dead')",
        ),
        ("keys moved", f"{s['keys_moved']} over {s['ring_changes']} ring changes"),
        (
            "imbalance (max/mean)",
            f"served {_fmt(imb['served_max_over_mean'], '', 2)}, "
            f"owned {_fmt(imb['owned_max_over_mean'], '', 2)}",
        ),
        ("convergence after heal", _fmt(s["convergence_s"], " s")),
        *_residency_rows(s),
        ("trace", result.trace_hash),
    ]


def _residency_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows for memory budgets (hit rate, cold starts, evictions, hot copies) and for the
    view-level failure detection of a catalog scenario; none otherwise."""
    rows: list[tuple[str, str]] = []
    res = s.get("residency")
    if res is not None:
        hit = res["hit_rate"]
        rows += [
            ("memory budget", f"{res['budget_bytes']:,} bytes per node "
             f"(peak fill {100 * res['peak_fill']:.1f} %)"),
            ("hit rate", _fmt(None if hit is None else 100 * hit, " %", 2)),
            ("cold starts", f"{res['cold_starts']:,}, wait p50 "
             f"{_fmt(res['cold_wait_p50_ms'], ' ms')} / "
             f"p99 {_fmt(res['cold_wait_p99_ms'], ' ms')}"),
            ("loads / evictions / unloads", f"{res['loads']:,} ({res['lazy_loads']:,} lazy) / "
             f"{res['evictions']:,} / {res['unloads']:,}; no room {res['no_room']:,}"),
            ("hot copies", f"{res['hot_copy_changes']} changes ({res['hot_copies_added']} up), "
             f"at most {res['hot_copies_max']} extra"),
        ]  # fmt: skip
    det = s.get("view_detection")
    if det is not None:
        rows.append(
            (
                "failure detection (views)",
                f"p50 {_fmt(det['p50_s'], ' s', 2)} / p99 {_fmt(det['p99_s'], ' s', 2)} / max "
                f"{_fmt(det['max_s'], ' s', 2)} over {det['pairs']:,} (live node, dead node) "
                f"pairs, {det['missing']} never; {s['false_dead_declarations']} false 'dead'",
            )
        )
    return rows


def print_summary(result: RunResult, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"shardline sim: {result.scenario.name}", show_header=False)
    table.add_column(style="bold", overflow="fold")
    table.add_column(overflow="fold")  # wrapped, never cut: a trace hash stays whole
    for name, value in summary_rows(result):
        table.add_row(name, value)
    for check in result.checks:
        mark = "[green]pass[/green]" if check.ok else "[red]FAIL[/red]"
        table.add_row(f"check {check.name}", f"{mark} {escape(check.detail)}")
    console.print(table)
    if not result.ok:
        for line in result.violations:
            console.print(f"  [red]{escape(line)}[/red]")
        console.print(f"[red]checks failed[/red] (seed {result.seed}); replay with:")
        console.print(f"  {result.replay_command()}", soft_wrap=True)


# ----------------------------------------------------------------------------- files

LABEL_CHARS = 32


def fault_labels(
    faults: Sequence[tuple[float, str]], span_s: float, slots: int = 45
) -> list[tuple[float, str]]:
    """One label per group of faults: a fault closer than ``span_s / slots`` to the first
    of the group before it joins that group, labelled ``"first (+N)"``. So at most about
    ``slots`` labels, never closer together than one slot (they cannot overlap)."""
    gap = span_s / slots if span_s > 0 else 0.0
    groups: list[tuple[float, list[str]]] = []
    for at, what in sorted(faults, key=lambda f: f[0]):
        if groups and at - groups[-1][0] < gap:
            groups[-1][1].append(what)
        else:
            groups.append((at, [what]))
    out = []
    for at, whats in groups:
        first = whats[0] if len(whats[0]) <= LABEL_CHARS else whats[0][: LABEL_CHARS - 1] + "…"
        out.append((at, first + (f" (+{len(whats) - 1})" if len(whats) > 1 else "")))
    return out


def node_order(nodes: Sequence[str]) -> list[str]:
    """Node ids in natural order (n2 before n10)."""

    def key(node: str) -> list[tuple[int, int | str]]:
        return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", node) if p]

    return sorted(set(nodes), key=key)


def _timeline(result: RunResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = result.series
    t = series["t"]
    fig, axes = plt.subplots(3, 1, figsize=(11, 7.5), sharex=True)
    axes[0].plot(t, series["ok_per_s"], color="tab:green", lw=1)
    axes[0].set_ylabel("answers / s")
    axes[1].plot(t, series["errors_per_s"], color="tab:red", lw=1)
    axes[1].set_ylabel("errors / s")
    p99 = [float("nan") if v is None else v for v in series["p99_ms"]]
    axes[2].plot(t, p99, color="tab:blue", lw=1)
    axes[2].set_ylabel("p99 latency (ms)")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("virtual time (s)")
    span = max([t[-1] if len(t) else 0.0, *(at for at, _ in result.faults)], default=0.0)
    line_alpha = 0.35 if len(result.faults) <= 20 else 0.2
    for ax in axes:
        ax.grid(alpha=0.3)
        for at, _ in result.faults:
            ax.axvline(at, color="black", alpha=line_alpha, lw=0.8, ls="--")
    for at, what in fault_labels(result.faults, span):
        axes[0].annotate(
            what, (at, 1.0), xycoords=("data", "axes fraction"), rotation=90, fontsize=7,
            va="top", ha="right", alpha=0.7,
        )  # fmt: skip
    fig.suptitle(f"{result.scenario.name} (seed {result.seed})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _ownership(result: RunResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    samples = result.ownership
    nodes = node_order([n for _, owned in samples for n in owned])
    grid = np.zeros((max(len(nodes), 1), max(len(samples), 1)))
    for j, (_, owned) in enumerate(samples):
        for i, node in enumerate(nodes):
            grid[i, j] = owned.get(node, 0)
    end = samples[-1][0] if samples else 1.0
    height = min(40.0, max(3.0, 0.12 * len(nodes) + 1.5))
    fig, ax = plt.subplots(figsize=(11, height))
    extent = (0.0, end, len(nodes) - 0.5, -0.5)
    image = ax.imshow(grid, aspect="auto", interpolation="nearest", extent=extent)
    # Rows are named by node id: every row while there is room for a 6 pt label (about
    # 300 nodes), else every k-th row.
    room = max(1, int((height - 1.5) * 72 / 8))
    step = max(1, math.ceil(len(nodes) / room))
    rows = list(range(0, len(nodes), step))
    ax.set_yticks(rows, [nodes[i] for i in rows], fontsize=7 if len(nodes) <= 40 else 6)
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("node")
    ax.set_title("model keys owned per node (ring over the roster's running actives)")
    for at, _ in result.faults:
        ax.axvline(at, color="white", alpha=0.5, lw=0.6, ls="--")
    fig.colorbar(image, ax=ax, label="owner slots")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(result: RunResult, directory: Path) -> list[Path]:
    """Write the report files into ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / "report.json"]
    written[0].write_text(json.dumps(result.to_dict(), indent=1, sort_keys=True) + "\n")
    images: list[str] = []
    try:
        _timeline(result, directory / "timeline.png")
        _ownership(result, directory / "ownership.png")
        images = ["timeline.png", "ownership.png"]
    except ImportError:  # matplotlib is the optional `sim` extra: the report says so
        images = []
    written += [directory / name for name in images]
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
        for k, v in summary_rows(result)
    )
    checks = "".join(
        f"<tr><th>{html.escape(c.name)}</th><td class={'ok' if c.ok else 'fail'}>"
        f"{'pass' if c.ok else 'FAIL'}</td><td>{html.escape(c.detail)}</td></tr>"
        for c in result.checks
    )
    faults = "".join(f"<li>{t:.2f}s {html.escape(w)}</li>" for t, w in result.faults)
    pictures = "".join(f'<p><img src="{name}" alt="{name}"></p>' for name in images)
    no_plots = "<p>(no plots: matplotlib is not installed; pip install 'shardline[sim]')</p>"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>shardline sim: {html.escape(result.scenario.name)}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{text-align:left;padding:2px 10px}}
.ok{{color:green}}.fail{{color:red;font-weight:bold}}img{{max-width:100%}}</style></head>
<body><h1>{html.escape(result.scenario.name)}</h1>
<p>{html.escape(result.scenario.description)}</p>
<p>Replay: <code>{html.escape(result.replay_command())}</code></p>
<h2>Summary</h2><table>{rows}</table>
<h2>Checks</h2><table>{checks}</table>
<h2>Plots</h2>{pictures or no_plots}
<h2>Faults</h2><ul>{faults}</ul>
<p>Data: <a href="report.json">report.json</a></p></body></html>
"""
    (directory / "index.html").write_text(page)
    written.append(directory / "index.html")
    return written
