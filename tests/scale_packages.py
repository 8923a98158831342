"""Many tiny workflow packages, fast, for scale tests and benchmarks (1 000 in a second or two).

``make_tiny_packages(root, count)`` writes ``count`` packages ``tiny_0000@1``, ``tiny_0001@1``
… under ``root``: each a real workflow (input ``x`` float32 [4], output ``y`` float32, the
dot product with its weights) whose weights are one float32 vector of ``kb`` KiB. Every
package shares the same weights file bytes and code, so only the manifest differs: the
weights and their sha256 are computed once, each package is three small file writes.
``broken`` names packages whose workflow raises while loading (a load failure on every
owner); ``pinned`` ones are ``pinned = true`` (a node loads them at once, evicting others).
Nothing generated is committed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from pathlib import Path

import numpy as np
from safetensors.numpy import save

TINY_WORKFLOW = '''
"""A generated tiny workflow: y = x . w (scale tests)."""
import numpy as np

from shardline.workflows.sdk import Workflow


class Tiny(Workflow):
    def __init__(self, manifest, weights, package_dir, device):
        super().__init__(manifest, weights, package_dir, device)
        self.w = weights["w"].cpu().numpy()[:4]

    def preprocess(self, context, inputs):
        return np.asarray(inputs["x"], dtype=np.float32)

    def forward(self, batch):
        return [float(np.dot(x, self.w)) for x in batch]

    def postprocess(self, context, inputs, raw):
        return {"y": np.float32(raw)}

    def example_request(self):
        return {"user_id": "u"}, {"x": np.ones(4, dtype=np.float32)}
'''

BROKEN = """

def _broken(*args, **kwargs):
    raise RuntimeError("generated to fail: this package never loads")


Tiny.__init__ = _broken
"""

MANIFEST = """name = "{name}"
version = "{version}"
entrypoint = "workflow.py:Tiny"
device = "{device}"
replicas = {replicas}
pinned = {pinned}

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
shape = [4]

[[outputs]]
name = "y"
dtype = "float32"
shape = []
"""


def tiny_name(i: int, prefix: str = "tiny") -> str:
    return f"{prefix}_{i:04d}"


def make_tiny_packages(
    root: Path,
    count: int,
    *,
    kb: float = 4.0,
    replicas: int = 2,
    prefix: str = "tiny",
    version: str = "1",
    broken: Collection[str] = (),
    pinned: Collection[str] = (),
    device: str = "cpu",
) -> list[Path]:
    """Write ``count`` packages under ``root`` (see the module docstring); their paths."""
    values = max(4, int(kb * 1024) // 4)
    weights = save({"w": np.linspace(0.5, 1.5, values, dtype=np.float32)})
    digest = hashlib.sha256(weights).hexdigest()
    code = TINY_WORKFLOW.encode()
    paths = []
    for i in range(count):
        name = tiny_name(i, prefix)
        pkg = root / name
        pkg.mkdir(parents=True)
        (pkg / "weights.safetensors").write_bytes(weights)
        (pkg / "workflow.py").write_bytes(code + (BROKEN.encode() if name in broken else b""))
        (pkg / "workflow.toml").write_text(
            MANIFEST.format(
                name=name,
                version=version,
                replicas=replicas,
                pinned="true" if name in pinned else "false",
                device=device,
                digest=digest,
            )
        )
        paths.append(pkg)
    return paths
