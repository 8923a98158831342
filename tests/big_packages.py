"""Generated workflow packages of a chosen weight size, for memory tests and benchmarks.

``make_big_package(root, name, megabytes)`` writes a package whose weights are one float32
matrix of about ``megabytes`` MB (a single linear layer, random values so no page is
shared or compressible) with a real workflow: input ``x`` (float32 [8]), output ``y``
(float32, the mean of the layer's output). Nothing generated is committed.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import torch
from safetensors.torch import save_file

from shardline.workflows.loader import sha256_file

BIG_WORKFLOW = '''
"""A generated workflow whose weights are one big linear layer (memory tests)."""
import numpy as np
import torch
from torch import nn

from shardline.workflows.sdk import Workflow, load_module


class Big(Workflow):
    def __init__(self, manifest, weights, package_dir, device):
        super().__init__(manifest, weights, package_dir, device)
        rows, cols = weights["model.weight"].shape
        self.model = load_module(nn.Linear(cols, rows, bias=False), weights, "model.", device)
        self.cols = cols

    def preprocess(self, context, inputs):
        x = np.asarray(inputs["x"], dtype=np.float32)
        return np.resize(x, self.cols)

    def forward(self, batch):
        out = self.model(self.to_device(np.stack(batch)))
        return out.mean(dim=1).cpu().numpy().tolist()

    def postprocess(self, context, inputs, raw):
        return {"y": np.float32(raw)}

    def example_request(self):
        return {"user_id": "u"}, {"x": np.ones(8, dtype=np.float32)}
'''


def make_big_package(root: Path, name: str, megabytes: float, version: str = "1") -> Path:
    """Write package ``name@version`` with ~``megabytes`` MB of weights under ``root/name``."""
    pkg = root / name
    pkg.mkdir(parents=True)
    (pkg / "workflow.py").write_text(BIG_WORKFLOW)
    cols = 1024
    rows = max(1, math.ceil(megabytes * 1e6 / 4 / cols))
    generator = torch.Generator().manual_seed(len(name))
    weight = torch.randn(rows, cols, generator=generator, dtype=torch.float32)
    save_file({"model.weight": weight}, str(pkg / "weights.safetensors"))
    del weight
    digest = sha256_file(pkg / "weights.safetensors")
    (pkg / "workflow.toml").write_text(
        textwrap.dedent(
            f"""
            name = "{name}"
            version = "{version}"
            entrypoint = "workflow.py:Big"
            device = "cpu"
            [weights]
            path = "weights.safetensors"
            sha256 = "{digest}"
            [batching]
            max_batch_size = 8
            max_delay_ms = 1.0
            queue_capacity = 64
            [[inputs]]
            name = "x"
            dtype = "float32"
            shape = [8]
            [[outputs]]
            name = "y"
            dtype = "float32"
            shape = []
            """
        )
    )
    return pkg
