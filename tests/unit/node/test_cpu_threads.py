"""A node's default torch threads follow the cores it may use (affinity, cgroup quota)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shardline.node.serving.node_config import NodeConfig, default_cpu_threads, usable_cores

AFFINITY = len(os.sched_getaffinity(0))


def test_a_cgroup_v2_quota_caps_the_cores(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("100000 100000\n")  # one CPU
    assert usable_cores(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs: 2 threads can run
    assert usable_cores(tmp_path) == min(2, AFFINITY)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cores(tmp_path) == AFFINITY


def test_a_cgroup_v1_quota_caps_the_cores(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cores(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert usable_cores(tmp_path) == AFFINITY


def test_no_cgroup_files_means_the_affinity_mask(tmp_path: Path) -> None:
    assert usable_cores(tmp_path / "missing") == AFFINITY


def test_the_default_leaves_a_core_to_the_event_loop() -> None:
    assert default_cpu_threads() == max(1, usable_cores() - 1)
    assert NodeConfig().torch_cpu_threads == default_cpu_threads()
    assert NodeConfig(cpu_threads=3).torch_cpu_threads == 3
    with pytest.raises(ValueError, match="cpu_threads"):
        NodeConfig(cpu_threads=0)


def test_the_peer_link_and_http_limits_are_settings_refused_below_one() -> None:
    config = NodeConfig(peer_link_max_streams=8, http_max_connections=4)
    assert (config.peer_link_max_streams, config.http_max_connections) == (8, 4)
    for name in ("peer_link_max_streams", "http_max_connections"):
        with pytest.raises(ValueError, match=name):
            NodeConfig(**{name: 0})
