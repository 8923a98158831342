"""Fixtures that start real node processes on loopback."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from shardline.workflows.loader import sha256_file
from tests.procs import EXAMPLES, NodeProcess

SLOW_WORKFLOW = '''
"""A test workflow whose forward takes params.delay_s: a slow model, on purpose."""
import time

import numpy as np

from shardline.workflows.sdk import Workflow


class Slow(Workflow):
    def preprocess(self, context, inputs):
        return float(inputs["x"])

    def forward(self, batch):
        time.sleep(float(self.params["delay_s"]))
        return batch

    def postprocess(self, context, inputs, raw):
        return {"y": np.float32(raw * 2.0)}

    def example_request(self):
        return {"user_id": "u"}, {"x": np.float32(1.0)}
'''

TEST_OBJECTIVES = {
    "ab_split.toml": """
        name = "ab_split"
        default = "payment_fraud@1"
        [[experiments]]
        id = "exp-ab"
        percent = 100.0
        [[experiments.cells]]
        name = "control"
        model = "payment_fraud@1"
        percent = 30.0
        [[experiments.cells]]
        name = "treatment"
        model = "payment_fraud@2"
        percent = 70.0
    """,
    "canary_ten.toml": """
        name = "canary_ten"
        default = "payment_fraud@1"
        [canary]
        model = "payment_fraud@2"
        percent = 10.0
    """,
    "shadow_all.toml": """
        name = "shadow_all"
        default = "payment_fraud@1"
        [[shadows]]
        model = "payment_fraud@2"
        percent = 100.0
    """,
    "slow.toml": """
        name = "slow"
        default = "slow@1"
    """,
}


def make_slow_package(root: Path, delay_s: float = 0.3, queue_capacity: int = 2) -> Path:
    pkg = root / "slow"
    pkg.mkdir(parents=True)
    (pkg / "workflow.py").write_text(SLOW_WORKFLOW)
    save_file({"w": torch.zeros(1)}, str(pkg / "weights.safetensors"))
    digest = sha256_file(pkg / "weights.safetensors")
    (pkg / "workflow.toml").write_text(
        textwrap.dedent(
            f"""
            name = "slow"
            version = "1"
            entrypoint = "workflow.py:Slow"
            device = "cpu"
            [weights]
            path = "weights.safetensors"
            sha256 = "{digest}"
            [batching]
            max_batch_size = 1
            max_delay_ms = 0.0
            queue_capacity = {queue_capacity}
            [[inputs]]
            name = "x"
            dtype = "float32"
            shape = []
            [[outputs]]
            name = "y"
            dtype = "float32"
            shape = []
            [params]
            delay_s = {delay_s}
            """
        )
    )
    return pkg


@pytest.fixture(scope="session")
def test_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(workflows dir, objectives dir): the examples plus a slow workflow and test objectives."""
    root = tmp_path_factory.mktemp("node")
    workflows = root / "workflows"
    for name in ("title_ranking", "payment_fraud"):
        shutil.copytree(EXAMPLES / name, workflows / name)
    make_slow_package(workflows)
    objectives = root / "objectives"
    shutil.copytree(EXAMPLES / "objectives", objectives)
    for fname, text in TEST_OBJECTIVES.items():
        (objectives / fname).write_text(textwrap.dedent(text))
    return workflows, objectives


@pytest.fixture(scope="session")
def node(test_tree: tuple[Path, Path]) -> Iterator[NodeProcess]:
    workflows, objectives = test_tree
    proc = NodeProcess.start(workflows=workflows, objectives=objectives)
    yield proc
    assert proc.stop() == 0, "\n".join(proc.lines[-30:])
