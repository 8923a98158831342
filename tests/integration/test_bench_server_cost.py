"""``bench.server_cost`` runs end to end: echo servers and a standalone node under the grpcio
load generator, with the ratios the issue's targets are stated in (no timing asserted)."""

from __future__ import annotations

import re

import pytest

from bench import server_cost

pytestmark = pytest.mark.integration


def test_server_cost_measures_echo_and_a_node(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--setups", "echo,standalone", "--duration", "1", "--warmup", "0.5", "--rounds", "1"]
    assert server_cost.main(args) == 0
    out = capsys.readouterr().out
    for setup in ("echo grpclib", "echo node stack", "standalone"):
        row = next(line for line in out.splitlines() if setup in line)
        cells = [c.strip() for c in row.split("│") if c.strip()]
        assert int(cells[1].replace(",", "")) > 0, row  # req/s
        assert cells[4] == "0", row  # errors
        assert float(cells[5]) > 0, row  # server CPU ms per request
    ratio = re.search(r"standalone Predict CPU / grpclib echo: ([\d.]+)", out)
    assert ratio and float(ratio.group(1)) > 0, out
    own = re.search(r"on the node's own transport \(echo node stack\): standalone ([\d.]+)x", out)
    assert own and float(own.group(1)) > 0, out
