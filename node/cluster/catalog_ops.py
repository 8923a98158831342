"""Catalog documents for workflows and objectives, their validators, and registration.

A workflow document in etcd is ``{"artifact_uri": ..., "manifest": {...}}``; the node
loads the package from the artifact and checks it against the manifest's digests. The
validators here run before anything is written (``shardline.membership.catalog.Catalog``), so an
invalid manifest or objective config never reaches etcd.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aetcd

from shardline.membership.catalog import OBJECTIVE, WORKFLOW, Catalog
from shardline.router.objectives import ObjectiveConfig, load_objectives_dir
from shardline.workflows.integrity import discover_packages, verify_package
from shardline.workflows.manifest import WorkflowManifest


def validate_workflow_doc(doc: Mapping[str, Any]) -> None:
    uri = doc.get("artifact_uri")
    if not isinstance(uri, str) or not uri:
        raise ValueError("artifact_uri: required")
    manifest = doc.get("manifest")
    if not isinstance(manifest, Mapping):
        raise ValueError("manifest: required (a table)")
    WorkflowManifest.from_dict(manifest, source=uri)


WORKFLOW_METHODS = ("preprocess", "forward", "postprocess", "example_request")
"""Abstract in ``shardline.workflows.sdk.Workflow``: a cluster node warms a model up with one
``example_request()`` through the other three before it serves it."""


def unimplemented_methods(package_dir: Path, manifest: WorkflowManifest) -> list[str]:
    """The abstract Workflow methods the entrypoint class leaves out, read from its source
    without running it. [] when that cannot be told statically (a base class from another
    module, code that does not parse: loading reports those)."""
    try:
        source = (package_dir / manifest.entrypoint_file).read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return []
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    defined: set[str] = set()
    for node in tree.body:  # `Cls.method = ...` after the class counts too
        targets = node.targets if isinstance(node, ast.Assign) else []
        defined.update(t.attr for t in targets if isinstance(t, ast.Attribute))
    pending, seen = [manifest.entrypoint_class], set()
    while pending:
        name = pending.pop()
        cls = classes.get(name)
        if cls is None:
            return []
        if name in seen:
            continue
        seen.add(name)
        for item in cls.body:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                defined.add(item.name)
            elif isinstance(item, ast.Assign):
                defined.update(t.id for t in item.targets if isinstance(t, ast.Name))
        for base in cls.bases:
            base_name = (
                base.id
                if isinstance(base, ast.Name)
                else (base.attr if isinstance(base, ast.Attribute) else None)
            )
            if base_name == "Workflow":
                continue
            if base_name is None or base_name not in classes:
                return []  # inherits from code we do not see
            pending.append(base_name)
    return [m for m in WORKFLOW_METHODS if m not in defined]


def validate_objective_doc(config: Mapping[str, Any]) -> None:
    ObjectiveConfig.from_dict(config)


VALIDATORS = {WORKFLOW: validate_workflow_doc, OBJECTIVE: validate_objective_doc}


def catalog(client: aetcd.Client, cluster: str) -> Catalog:
    return Catalog(client, cluster, VALIDATORS)


def workflow_doc(package_dir: Path) -> tuple[WorkflowManifest, dict[str, Any]]:
    """Verify a package (manifest and digests) and describe it for the catalog."""
    manifest = verify_package(package_dir)
    return manifest, {
        "artifact_uri": package_dir.resolve().as_uri(),
        "manifest": manifest.to_dict(),
        "footprint_bytes": declared_footprint(package_dir, manifest),
    }


def declared_footprint(package_dir: Path, manifest: WorkflowManifest) -> int:
    """The bytes a load of the package takes, as placement counts them before any load:
    ``[memory] host_bytes`` when the manifest declares it, else the weights file's size."""
    if manifest.memory.host_bytes is not None:
        return manifest.memory.host_bytes
    return (package_dir / manifest.weights.path).stat().st_size


def footprint_of(doc: Mapping[str, Any]) -> int:
    """The footprint a catalog entry declares (0 for an entry written before it did)."""
    value = doc.get("footprint_bytes", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


async def register_tree(
    cat: Catalog, workflows_dir: Path, objectives_dir: Path | None, author: str = "shardline"
) -> tuple[list[str], list[str]]:
    """Register every package under ``workflows_dir`` and every objective config found
    (changed objectives only: an unchanged config does not get a new revision)."""
    keys = []
    for package in discover_packages(workflows_dir):
        manifest, doc = workflow_doc(package)
        await cat.put_workflow(manifest.name, manifest.version, doc)
        keys.append(manifest.model_key)
    names = []
    if objectives_dir is not None:
        for name, cfg in sorted(load_objectives_dir(objectives_dir).items()):
            current = await cat.get_objective(name)
            if current is None or current.config != cfg.to_dict():
                await cat.set_objective(name, cfg.to_dict(), author=author)
            names.append(name)
    return keys, names
