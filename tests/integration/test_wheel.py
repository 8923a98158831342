"""shardline installs under one import name: a wheel, in a fresh venv outside the repository.

Builds the wheel from this checkout, installs it (without its dependencies, which come from
the project's venv through a path entry, so nothing is downloaded) into a new venv in a temp
folder, and from a working directory that has a researcher's own ``workflows/`` and
``node/`` folders (the names that used to collide) imports the public API, runs an example
workflow from the installed package, serves it with ``python -m shardline serve
--standalone`` and calls it with ``shardline.Client``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOT_SOURCES = (".git", ".venv", ".native", ".state", "build", "dist", "*.egg-info", "__pycache__",
               ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis")  # fmt: skip

PROBE = textwrap.dedent(
    """
    import asyncio, subprocess, sys
    import shardline
    from shardline import Client, SmartClient
    from shardline.workflows import sdk
    from shardline.workflows.loader import load_package
    from pathlib import Path

    assert "site-packages" in shardline.__file__, shardline.__file__
    import workflows  # the researcher's own folder, not shardline's SDK
    assert workflows.MINE, workflows.__file__
    examples = Path(shardline.__file__).parent / "workflows" / "examples"
    loaded = load_package(examples / "payment_fraud" / "v1")
    [out] = sdk.run_batch(loaded.workflow, sdk.example_batch(loaded.workflow))
    print("workflow", out["decision"])

    node = subprocess.Popen(
        [sys.executable, "-m", "shardline", "serve", "--standalone", "--port", "0",
         "--workflows", str(examples), "--cpu-threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        for line in node.stdout:
            if "serving on" in line:
                target = line.split("serving on ")[1].split()[0]
                break
        else:
            raise SystemExit("node did not start")

        async def call():
            async with Client(target) as client:
                fields, inputs = loaded.workflow.example_request()
                p = await client.predict("payment_fraud", inputs, user_id="u1")
                return p.model_key

        print("served", asyncio.run(call()))
    finally:
        node.terminate()
        node.wait(30)
    """
)


@pytest.mark.slow
@pytest.mark.integration
def test_wheel_installs_under_one_name_and_runs_outside_the_repo(tmp_path: Path) -> None:
    # Built from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", str(dist), str(src)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    [wheel] = dist.glob("shardline-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    # The dependencies from the project's venv: a path entry (its .pth files, among them
    # the editable install of this checkout, are not run from there).
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    work = tmp_path / "research"
    (work / "workflows").mkdir(parents=True)
    (work / "workflows" / "__init__.py").write_text("MINE = True\n")
    (work / "node").mkdir()
    (work / "node" / "__init__.py").write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SHARDLINE_NATIVE")}
    done = subprocess.run(
        [str(python), "-c", PROBE], cwd=work, capture_output=True, text=True, timeout=300,
        env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^workflow (approve|review|decline)$", done.stdout, re.M), done.stdout
    assert re.search(r"^served payment_fraud@[12]$", done.stdout, re.M), done.stdout
