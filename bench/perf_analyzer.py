"""Benchmark: Triton's perf_analyzer (V2 ModelInfer) beside the grpcio load generator (Predict).

    python -m bench.perf_analyzer [--duration 4] [--concurrency 64] [--rounds 3]

Obtains ``perf_analyzer`` (see ``obtain``: the binary the ``tritonclient==2.41.0`` wheel
ships, plus Debian's ``libb64.so.0d`` and ``libcudart.so.12`` from PyPI's
``nvidia-cuda-runtime-cu12``, all into ``.cache/perf_analyzer/``; no GPU needed), then,
on (a) a standalone node and (b) a 3-node cluster with etcd, at hops=0 (client -> an owner
of ``payment_fraud@1``) and hops=1 (client -> the node that does not own it), drives
``payment_fraud`` with the same inputs and the same user (one whose decision is
``payment_fraud@1`` with no shadow copy) from three clients in turn:

  perf_analyzer   ``-i grpc -m payment_fraud --concurrency-range C`` with ``--input-data``
                  (valid inputs, scalars as shape [1]) and ``--request-parameter
                  user_id:USER:string``: Triton's C++ client, V2 ``ModelInfer``;
  grpcio V2       ``bench.grpcio_load`` sending the same ModelInferRequest (raw tensors,
                  as perf_analyzer sends them): the V2 front with the client held equal;
  grpcio Predict  ``bench.grpcio_load`` sending the equivalent ``shardline.v1`` Predict.

It prints one table: req/s, p50 and p99 (perf_analyzer's own figures for its rows) and the
server CPU per request (utime + stime of every node process, from ``/proc``, over the
measured window only), and per setup the ratio V2 CPU/request ÷ Predict CPU/request
(issue 17's target: <= 1.1). perf_analyzer reports the average of its last 3 stable
measurement windows; the bench samples server CPU every 20 ms, interpolates it at those
windows' edges (from ``--profile-export-file``) and divides by the requests answered
inside them.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from rich.console import Console
from rich.table import Table

from bench.cluster_routing import plain_users
from bench.drain_clients import FRAUD
from bench.grpcio_load import MODEL_INFER, PREDICT, LoadRun, cpu_seconds, run_load
from shardline.membership.etcd import connect
from shardline.node._proto_oip import grpc_service_pb2 as oip
from shardline.node.cluster.catalog_ops import catalog, register_tree
from shardline.node.ops.localcluster import routing_table, wait_ready
from shardline.node.sdk.client import build_request, parse_response
from tests.etcd_server import EtcdServer
from tests.procs import EXAMPLES, REPO, NodeProcess

CACHE = REPO / ".cache" / "perf_analyzer"
TRITONCLIENT = "tritonclient==2.41.0"
CUDART = "nvidia-cuda-runtime-cu12>=12,<13"
LIBB64_PACKAGE = "libb64-0d"
# Debian bookworm's libb64-0d, for a machine without apt-get (sha256 from its Packages).
LIBB64_URL = "https://deb.debian.org/debian/pool/main/libb/libb64/libb64-0d_1.2-5+b1_amd64.deb"
LIBB64_SHA256 = "b0e1d6fde8bdccc18c3884144aede064dc82464dd4777275fa80e74c05583e82"
OBJECTIVE = "payment_fraud"
KEY = "payment_fraud@1"
CLUSTER = "bench-perf-analyzer"
# workflow dtype -> (V2 datatype, numpy dtype of its raw little-endian bytes)
V2_TYPES = {
    "float32": ("FP32", "<f4"),
    "float64": ("FP64", "<f8"),
    "int32": ("INT32", "<i4"),
    "int64": ("INT64", "<i8"),
    "bool": ("BOOL", "?"),
    "string": ("BYTES", None),
}
FRAUD_DTYPES = {
    "amount": "float32",
    "currency": "string",
    "country_mismatch": "bool",
    "account_age_days": "float32",
    "tx_last_24h": "int64",
    "card_present": "bool",
}


class PerfAnalyzerUnavailable(RuntimeError):
    """perf_analyzer or a library it needs could not be found or fetched."""


# -- obtaining perf_analyzer ----------------------------------------------------------------


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    lib_dir: Path

    def env(self) -> dict[str, str]:
        paths = [str(self.lib_dir), *filter(None, [os.environ.get("LD_LIBRARY_PATH")])]
        return {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(paths)}

    def version(self) -> str:
        out = subprocess.run(
            [str(self.binary), "--version"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            raise PerfAnalyzerUnavailable(
                f"{self.binary} --version failed (exit status {out.returncode}): "
                f"{(out.stderr or out.stdout).strip()[-2000:]}"
            )
        return (out.stdout or out.stderr).strip()


def _run(cmd: Sequence[str], what: str, cwd: Path, timeout_s: float = 300.0) -> None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PerfAnalyzerUnavailable(f"{what}: {' '.join(cmd)}: {e}") from e
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip()[-2000:]
        raise PerfAnalyzerUnavailable(
            f"{what}: {' '.join(cmd)} failed (exit status {out.returncode}):\n{tail}"
        )


def _pip_download(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps`` one binary wheel into ``dest``; returns its path."""
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--retries", "2", "--timeout", "30",
           "-d", str(dest), requirement]  # fmt: skip
    _run(cmd, f"fetching {requirement} from PyPI", dest)
    name = requirement.split("=")[0].split(">")[0].split("<")[0].strip().replace("-", "_")
    wheels = sorted(
        (p for p in dest.glob("*.whl") if p.name.lower().startswith(name.lower())),
        key=lambda p: (p not in before, p.stat().st_mtime),
    )
    if not wheels:
        raise PerfAnalyzerUnavailable(f"pip download {requirement}: no wheel in {dest}")
    return wheels[-1]


def _extract_from_wheel(wheel: Path, suffix: str, out: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.endswith(suffix)]
        if not names:
            raise PerfAnalyzerUnavailable(f"{wheel.name} holds no file ending in {suffix}")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".part")
        tmp.write_bytes(zf.read(names[0]))
        tmp.replace(out)
    return out


def _deb_data(deb: bytes) -> tarfile.TarFile:
    """The ``data.tar.*`` member of a Debian package (an ``ar`` archive)."""
    if not deb.startswith(b"!<arch>\n"):
        raise PerfAnalyzerUnavailable("not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(deb):
        header = deb[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = deb[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
        pos += 60 + size + (size % 2)
    raise PerfAnalyzerUnavailable("Debian package without a data.tar member")


def _fetch_libb64(dl: Path, out: Path) -> Path:
    """libb64.so.0d from Debian's ``libb64-0d``: ``apt-get download`` (the machine's own
    mirrors), else the package from deb.debian.org checked against its sha256."""
    dl.mkdir(parents=True, exist_ok=True)
    debs = sorted(dl.glob(f"{LIBB64_PACKAGE}_*.deb"))
    errors: list[str] = []
    if not debs and shutil.which("apt-get"):
        try:
            _run(["apt-get", "download", LIBB64_PACKAGE], "apt-get download libb64-0d", dl)
            debs = sorted(dl.glob(f"{LIBB64_PACKAGE}_*.deb"))
        except PerfAnalyzerUnavailable as e:
            errors.append(str(e))
    if debs:
        data = debs[-1].read_bytes()
    else:
        try:
            with urllib.request.urlopen(LIBB64_URL, timeout=60) as resp:
                data = resp.read()
        except OSError as e:
            errors.append(f"{LIBB64_URL}: {e}")
            raise PerfAnalyzerUnavailable(
                "cannot fetch libb64.so.0d (Debian package libb64-0d):\n" + "\n".join(errors)
            ) from e
        if hashlib.sha256(data).hexdigest() != LIBB64_SHA256:
            raise PerfAnalyzerUnavailable(f"{LIBB64_URL}: sha256 mismatch")
    with _deb_data(data) as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith("/libb64.so.0d")), None)
        f = tar.extractfile(member) if member is not None else None
        if f is None:
            raise PerfAnalyzerUnavailable("libb64-0d package holds no libb64.so.0d")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(f.read())
    return out


def _missing_libraries(binary: Path, lib_dir: Path) -> list[str]:
    """Shared libraries ``binary`` needs that neither the system nor ``lib_dir`` has."""
    if not shutil.which("ldd"):
        return [n for n in ("libb64.so.0d", "libcudart.so.12") if not (lib_dir / n).exists()]
    env = {**os.environ, "LD_LIBRARY_PATH": str(lib_dir)}
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env)
    return [line.split("=>")[0].strip() for line in out.stdout.splitlines() if "not found" in line]


def obtain(cache: Path = CACHE, log: Callable[[str], None] = print) -> PerfAnalyzer:
    """perf_analyzer and the libraries it needs, fetched into ``cache`` when missing.

    The binary: beside ``sys.executable`` (the ``tritonclient`` wheel installs it there),
    on ``PATH``, in ``cache/bin``, else taken out of the ``tritonclient==2.41.0`` wheel
    (``pip download --no-deps``). Libraries the binary does not find (``ldd``) are put in
    ``cache/lib``: ``libb64.so.0d`` from Debian's ``libb64-0d``, ``libcudart.so.12`` from
    PyPI's ``nvidia-cuda-runtime-cu12`` wheel. Raises ``PerfAnalyzerUnavailable`` saying
    which step failed."""
    cache = cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    (cache / ".gitignore").write_text("# fetched by bench/perf_analyzer.py\n*\n")
    lib_dir, dl = cache / "lib", cache / "download"
    candidates = [Path(sys.executable).parent / "perf_analyzer", cache / "bin" / "perf_analyzer"]
    on_path = shutil.which("perf_analyzer")
    if on_path:
        candidates.insert(1, Path(on_path))
    binary = next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)
    if binary is None:
        log(f"perf_analyzer not found; taking it out of the {TRITONCLIENT} wheel")
        wheel = _pip_download(TRITONCLIENT, dl)
        binary = _extract_from_wheel(wheel, "/bin/perf_analyzer", cache / "bin" / "perf_analyzer")
        binary.chmod(0o755)
    for lib in _missing_libraries(binary, lib_dir):
        if lib == "libb64.so.0d":
            log(f"fetching {lib} (Debian {LIBB64_PACKAGE}) into {lib_dir}")
            _fetch_libb64(dl, lib_dir / lib)
        elif lib == "libcudart.so.12":
            log(f"fetching {lib} ({CUDART}) into {lib_dir}")
            wheel = _pip_download(CUDART, dl)
            _extract_from_wheel(wheel, "/lib/libcudart.so.12", lib_dir / lib)
        else:
            raise PerfAnalyzerUnavailable(f"{binary} needs {lib}, which this bench cannot fetch")
    pa = PerfAnalyzer(binary, lib_dir)
    pa.version()  # it loads and runs
    return pa


# -- requests -------------------------------------------------------------------------------


def input_data(path: Path, inputs: Mapping[str, Any]) -> Path:
    """perf_analyzer's ``--input-data`` JSON: one step, every input as shape [1]."""

    def value(v: Any) -> list[Any]:
        return list(np.asarray(v).reshape(-1).tolist())

    path.write_text(json.dumps({"data": [{k: value(v) for k, v in inputs.items()}]}))
    return path


def v2_request(
    model: str,
    inputs: Mapping[str, Any],
    dtypes: Mapping[str, str],
    user_id: str,
    outputs: Sequence[str] = (),
) -> bytes:
    """An encoded ModelInferRequest as perf_analyzer 2.41 sends it: raw tensors in name
    order, scalars as shape [1], the user id and ``triton_enable_empty_final_response``
    in ``parameters``, every output of the model's metadata requested by name."""
    request = oip.ModelInferRequest(model_name=model)
    request.parameters["user_id"].string_param = user_id
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    for name in outputs:
        request.outputs.add(name=name)
    for name in sorted(inputs):
        datatype, np_dtype = V2_TYPES[dtypes[name]]
        array = np.asarray(inputs[name])
        tensor = request.inputs.add(name=name, datatype=datatype)
        tensor.shape.extend(array.shape or (1,))
        if np_dtype is None:
            raw = b"".join(
                len(b).to_bytes(4, "little") + b
                for b in (str(s).encode() for s in array.reshape(-1))
            )
        else:
            raw = array.astype(np_dtype).tobytes()
        request.raw_input_contents.append(raw)
    return request.SerializeToString()  # type: ignore[no-any-return]


def model_outputs(target: str, model: str, timeout_s: float = 10.0) -> list[str]:
    """The output names V2 ModelMetadata reports for ``model`` (a clear error when the
    node does not answer it)."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelMetadata")
        try:
            raw = call(oip.ModelMetadataRequest(name=model).SerializeToString(), timeout=timeout_s)
        except grpc.RpcError as e:
            raise RuntimeError(
                f"{target} does not answer inference.GRPCInferenceService/ModelMetadata "
                f"for {model!r}: {e.code().name}: {e.details()}"
            ) from None
    meta = oip.ModelMetadataResponse()
    meta.ParseFromString(raw)
    return [t.name for t in meta.outputs]


def same_answer(target: str, predict: bytes, infer: bytes, timeout_s: float = 10.0) -> str:
    """Send ``predict`` (shardline.v1) and ``infer`` (V2) once: both must be answered by
    the same model with the same outputs; returns that model key."""
    with grpc.insecure_channel(target) as channel:
        p = parse_response(channel.unary_unary(PREDICT)(predict, timeout=timeout_s))
        v2 = oip.ModelInferResponse()
        v2.ParseFromString(channel.unary_unary(MODEL_INFER)(infer, timeout=timeout_s))
    key = str(v2.parameters["shardline.model_key"].string_param)
    if key != p.model_key:
        raise RuntimeError(f"V2 answered with {key!r}, Predict with {p.model_key!r}")
    for i, out in enumerate(v2.outputs):
        raw = v2.raw_output_contents[i] if v2.raw_output_contents else b""
        if out.datatype == "BYTES":
            got: Any = raw[4:].decode() if raw else out.contents.bytes_contents[0].decode()
            same = got == str(p.outputs[out.name])
        else:
            got = float(np.frombuffer(raw, "<f4")[0]) if raw else out.contents.fp32_contents[0]
            same = bool(np.isclose(got, float(p.outputs[out.name]), rtol=1e-5, atol=1e-6))
        if not same:
            raise RuntimeError(f"output {out.name}: V2 {got!r}, Predict {p.outputs[out.name]!r}")
    return key


# -- running perf_analyzer ------------------------------------------------------------------


class CpuSampler:
    """CPU seconds of ``pids`` every ``every_s`` on a thread, stamped with ``time_ns``
    (perf_analyzer's profile export stamps requests with the system clock, in ns)."""

    def __init__(self, pids: Sequence[int], every_s: float = 0.02) -> None:
        self.pids, self.every_s = list(pids), every_s
        self.times: list[int] = []
        self.cpu: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def _sample(self) -> None:
        t = time.time_ns()
        self.cpu.append(cpu_seconds(self.pids))
        self.times.append(t)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def __enter__(self) -> CpuSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def between(self, t0_ns: int, t1_ns: int) -> float:
        """CPU seconds spent in [t0, t1] (interpolated between samples)."""
        if not self.times or t0_ns < self.times[0] or t1_ns > self.times[-1]:
            raise RuntimeError("CPU samples do not cover the measured window")
        a, b = np.interp([t0_ns, t1_ns], self.times, self.cpu)
        return float(b - a)


def run_perf_analyzer(
    pa: PerfAnalyzer,
    target: str,
    *,
    model: str,
    inputs_json: Path,
    concurrency: int,
    interval_ms: int,
    server_pids: Sequence[int],
    out_dir: Path,
    user_id: str = "",
    stability_pct: float = 50.0,
    max_trials: int = 8,
) -> LoadRun:
    """One perf_analyzer run at one concurrency; its throughput and latencies plus the
    servers' CPU per request over the windows it reports. perf_analyzer measures windows
    of ``interval_ms`` until 3 in a row agree within ``stability_pct`` % (lenient by
    default: a shared machine is noisy), at most ``max_trials``; otherwise it fails."""
    csv_path, export = out_dir / "perf_analyzer.csv", out_dir / "profile_export.json"
    for p in (csv_path, export):
        p.unlink(missing_ok=True)
    cmd = [
        str(pa.binary), "-i", "grpc", "-u", target, "-m", model,
        "--concurrency-range", str(concurrency), "--measurement-interval", str(interval_ms),
        "--input-data", str(inputs_json), "-s", f"{stability_pct:g}", "-r", str(max_trials),
        "-f", str(csv_path), "--profile-export-file", str(export),
        *(["--request-parameter", f"user_id:{user_id}:string"] if user_id else []),
    ]  # fmt: skip
    timeout_s = 120 + interval_ms / 1000 * (max_trials + 2) * 2
    with CpuSampler(server_pids) as cpu:
        try:
            out = subprocess.run(
                cmd, env=pa.env(), capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"perf_analyzer ran past {timeout_s:.0f} s: {' '.join(cmd)}") from e
    if out.returncode != 0 or not csv_path.exists() or not export.exists():
        said_lines = (out.stdout + out.stderr).splitlines()
        lines = Counter(
            re.sub(r"Thread \[\d+\]", "Thread [n]", ln) for ln in said_lines if ln.strip()
        )
        said = "\n".join(f"{ln}{f'  (x{n})' if n > 1 else ''}" for ln, n in lines.items())
        raise RuntimeError(
            f"perf_analyzer failed (exit status {out.returncode}): {' '.join(cmd)}\n{said[-3000:]}"
        )
    return parse_results(csv_path, export, cpu)


def parse_results(csv_path: Path, export: Path, cpu: CpuSampler | None = None) -> LoadRun:
    """perf_analyzer's ``-f`` CSV (throughput, latencies in µs) and, with ``cpu``, the
    servers' CPU per request answered within its last (up to) 3 measurement windows."""
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise RuntimeError(f"{csv_path}: no result row")
    row = rows[0]
    experiment = json.loads(export.read_text())["experiments"][0]
    edges = experiment["window_boundaries"]
    t0, t1 = edges[max(0, len(edges) - 4)], edges[-1]
    done = [
        r["response_timestamps"][-1] for r in experiment["requests"] if r["response_timestamps"]
    ]
    answered = sum(1 for t in done if t0 <= t <= t1)
    return LoadRun(
        requests=answered,
        errors={},
        seconds=(t1 - t0) / 1e9,
        rps=float(row["Inferences/Second"]),
        p50_ms=float(row["p50 latency"]) / 1000.0,
        p99_ms=float(row["p99 latency"]) / 1000.0,
        server_cpu_s=cpu.between(t0, t1) if cpu is not None else float("nan"),
        client_cpu_ms_per_request=None,
    )


# -- the bench ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    name: str
    target: str
    server_pids: list[int]


@contextmanager
def standalone(extra_args: Sequence[str] = ()) -> Iterator[list[Setup]]:
    node = NodeProcess.start(metrics=False, args=["--cpu-threads", "1", *extra_args])
    try:
        yield [Setup("standalone", node.target, [node.proc.pid])]
    finally:
        node.stop()


@contextmanager
def cluster(extra_args: Sequence[str] = ()) -> Iterator[list[Setup]]:
    with EtcdServer() as etcd:

        async def register() -> None:
            client = await connect(etcd.endpoint)
            await register_tree(catalog(client, CLUSTER), EXAMPLES, EXAMPLES / "objectives")
            await client.close()

        asyncio.run(register())
        nodes: dict[str, NodeProcess] = {}
        try:
            for i in (1, 2, 3):
                nodes[f"node-{i}"] = NodeProcess.start(
                    [
                        "--cluster",
                        CLUSTER,
                        "--node-id",
                        f"node-{i}",
                        "--cpu-threads",
                        "1",
                        *extra_args,
                    ],
                    etcd=f"127.0.0.1:{etcd.client_port}",
                    metrics=False,
                )
            asyncio.run(wait_ready([n.target for n in nodes.values()], 120, lambda _: None))
            table = asyncio.run(routing_table(nodes["node-1"].target))
            owners = next(p.owners for p in table.placements if p.model_key == KEY)
            owner = nodes[owners[0]]
            other = next(n for node_id, n in nodes.items() if node_id not in owners)
            pids = [n.proc.pid for n in nodes.values()]
            yield [
                Setup("3 nodes, hops=0 (owner)", owner.target, pids),
                Setup("3 nodes, hops=1 (non-owner)", other.target, pids),
            ]
        finally:
            for n in nodes.values():
                n.stop()


CLIENTS = ("grpcio Predict", "grpcio V2 ModelInfer", "perf_analyzer V2 ModelInfer")


def measure(
    pa: PerfAnalyzer,
    setup: Setup,
    *,
    user: str,
    work: Path,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    rounds: int,
) -> dict[str, LoadRun]:
    """Every client against ``setup``, alternating over ``rounds``; the median round (by
    throughput) of each client stands for it."""
    outputs = model_outputs(setup.target, OBJECTIVE)
    predict = [build_request(OBJECTIVE, FRAUD, user_id=user)]
    infer = [v2_request(OBJECTIVE, FRAUD, FRAUD_DTYPES, user, outputs)]
    inputs_json = input_data(work / "inputs.json", FRAUD)
    key = same_answer(setup.target, predict[0], infer[0])
    if key != KEY:
        raise RuntimeError(f"user {user!r} is answered by {key}, not {KEY}")
    runs: dict[str, list[LoadRun]] = {c: [] for c in CLIENTS}

    def grpcio(payloads: list[bytes], method: str) -> LoadRun:
        return run_load(
            [setup.target], server_pids=setup.server_pids, payloads=payloads, method=method,
            concurrency=concurrency, duration_s=duration_s, warmup_s=warmup_s,
        )  # fmt: skip

    for _ in range(rounds):
        runs["grpcio Predict"].append(grpcio(predict, PREDICT))
        runs["grpcio V2 ModelInfer"].append(grpcio(infer, MODEL_INFER))
        runs["perf_analyzer V2 ModelInfer"].append(
            run_perf_analyzer(
                pa,
                setup.target,
                model=OBJECTIVE,
                inputs_json=inputs_json,
                concurrency=concurrency,
                interval_ms=max(500, int(duration_s * 1000 / 3)),
                server_pids=setup.server_pids,
                out_dir=work,
                user_id=user,
            )
        )
    return {c: sorted(r, key=lambda x: x.rps)[len(r) // 2] for c, r in runs.items()}


def report(results: dict[str, dict[str, LoadRun]], concurrency: int, duration_s: float) -> Table:
    table = Table(
        title=f"{OBJECTIVE} ({KEY}, one user), {concurrency} in flight, ~{duration_s:g} s measured"
    )
    for col in ("setup", "client", "req/s", "p50 ms", "p99 ms", "errors",
                "server CPU ms/req", "V2 ÷ Predict CPU"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("setup", "client") else "right")
    for setup, runs in results.items():
        base = runs["grpcio Predict"].server_cpu_ms_per_request
        for client, r in runs.items():
            ratio = (
                "" if client == "grpcio Predict" else f"{r.server_cpu_ms_per_request / base:.2f}"
            )
            errors = ", ".join(f"{k} {v}" for k, v in sorted(r.errors.items())) or "0"
            table.add_row(setup, client, f"{r.rps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
                          errors, f"{r.server_cpu_ms_per_request:.3f}", ratio)  # fmt: skip
        table.add_section()
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.5, help="grpcio warm-up seconds")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--cache", type=Path, default=CACHE, help="where perf_analyzer goes")
    parser.add_argument(
        "--setups", default="standalone,cluster", help="comma-separated: standalone, cluster"
    )
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 132)
    try:
        pa = obtain(args.cache, log=console.print)
    except PerfAnalyzerUnavailable as e:
        console.print(f"[red]perf_analyzer is not available:[/red] {e}")
        return 2
    console.print(f"{pa.version().splitlines()[0]}: {pa.binary}")
    user = plain_users(1)[0]
    results: dict[str, dict[str, LoadRun]] = {}
    starts = {"standalone": standalone, "cluster": cluster}
    with tempfile.TemporaryDirectory(prefix="bench-perf-analyzer-") as tmp:
        for name in args.setups.split(","):
            if name.strip() not in starts:
                parser.error(f"--setups: unknown {name!r}")
            with starts[name.strip()]() as setups:
                for setup in setups:
                    console.print(f"{setup.name}: {setup.target}")
                    results[setup.name] = measure(
                        pa, setup, user=user, work=Path(tmp), concurrency=args.concurrency,
                        duration_s=args.duration, warmup_s=args.warmup, rounds=args.rounds,
                    )  # fmt: skip
    console.print(report(results, args.concurrency, args.duration))
    console.print(
        f"user {user!r} (decision {KEY}, no shadow) for every request; perf_analyzer sends it "
        "as the request parameter user_id. Target: V2 ÷ Predict server CPU per request <= 1.1."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
