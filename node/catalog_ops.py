"""Catalog documents for workflows and objectives, their validators, and registration.

A workflow document in etcd is ``{"artifact_uri": ..., "manifest": {...}}``; the node
loads the package from the artifact and checks it against the manifest's digests. The
validators here run before anything is written (``membership.catalog.Catalog``), so an
invalid manifest or objective config never reaches etcd.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aetcd

from membership.catalog import OBJECTIVE, WORKFLOW, Catalog
from router.rules import ObjectiveConfig, load_objectives_dir
from workflows.loader import discover_packages, verify_package
from workflows.manifest import WorkflowManifest


def validate_workflow_doc(doc: Mapping[str, Any]) -> None:
    uri = doc.get("artifact_uri")
    if not isinstance(uri, str) or not uri:
        raise ValueError("artifact_uri: required")
    manifest = doc.get("manifest")
    if not isinstance(manifest, Mapping):
        raise ValueError("manifest: required (a table)")
    WorkflowManifest.from_dict(manifest, source=uri)


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
    }


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
