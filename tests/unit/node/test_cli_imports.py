"""The CLI's non-serving commands stay light: importing the CLI, and asking any command
for its help, loads neither torch nor matplotlib (the serving modules and the simulator
load inside the commands that need them).

Running a client command (``predict``, ``objectives``) against a node is checked in
tests/integration/test_cli_edges.py::test_client_commands_do_not_import_torch; it also
needs ``shardline.node.sdk.client`` to stop importing ``shardline.node.serving.service``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.procs import REPO

CHECK = """
import sys
import shardline.node.ops.cli
args = sys.argv[1:]
if args:
    try:
        shardline.node.ops.cli.main(args, standalone_mode=False)
    except SystemExit:
        pass
HEAVY = ("torch", "matplotlib", "shardline.node.serving.service", "shardline.node.serving.runtime")
print(sorted(m for m in HEAVY if m in sys.modules))
"""


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--help"],
        ["objectives", "--help"],
        ["predict", "--help"],
        ["status", "--help"],
        ["objective", "rollback", "--help"],
        ["deploy", "--help"],
        ["package", "check", "--help"],
        ["serve", "--help"],
    ],
)
def test_cli_help_does_not_import_torch_or_matplotlib(args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHECK, *args],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr
