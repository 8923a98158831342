"""``shardline.v1.Admin`` on every cluster node: drain, remove, deploy, objectives.

Every call but the read-only ``Explain`` needs the cluster's admin token (``authorization:
Bearer <token>``, compared in constant time); a node without a configured token refuses
them. Writes go to the etcd catalog (validated before they store) and reach every node
through its watch; while etcd is unreachable they fail with UNAVAILABLE and a clear
message. An objective config is stored (set, or restored by a rollback) only if every
model it routes to is deployed, and warm on some node unless forced.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from shardline.membership.catalog import (
    CatalogConflict,
    CatalogError,
    NothingToRollBack,
    ObjectiveRevision,
)
from shardline.membership.etcd import ControlPlaneUnavailable, node_key
from shardline.membership.loaded import lazy_there
from shardline.node._proto.shardline import v1
from shardline.node.cluster.artifacts import ArtifactError, ArtifactStore, unpack
from shardline.node.cluster.catalog_ops import catalog, declared_footprint, unimplemented_methods
from shardline.node.sdk.codec import WireCodec
from shardline.node.sdk.tls import client_context
from shardline.router.objectives import ConfigError, ObjectiveConfig
from shardline.router.placement_policy import ModelNeed, NodeSpace, refusal
from shardline.router.rules import OverrideNotAllowed, RequestContext, evaluate
from shardline.workflows.manifest import ManifestError, load_manifest

if TYPE_CHECKING:
    from shardline.node.cluster.membership_shell import ClusterConfig, ClusterMembership
    from shardline.node.cluster.placement import Placement
    from shardline.node.cluster.routing import ClusterRouter
    from shardline.node.serving.node_config import NodeConfig
    from shardline.node.serving.runtime import NodeRuntime

log = logging.getLogger("shardline.admin")


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


PUBLIC_METHODS = frozenset({"/shardline.v1.Admin/Explain"})
"""Read-only calls open without the token (Explain shows routing decisions, no secrets)."""

TOKEN_HELP = (
    "pass --token, set $SHARDLINE_ADMIN_TOKEN, or let the CLI read the token file that "
    "`shardline up` writes for a local cluster (.state/<cluster>/admin-token); the node's own "
    "token comes from its --admin-token-file or $SHARDLINE_ADMIN_TOKEN"
)
"""Where the admin token is looked up, for PERMISSION_DENIED messages."""


def _info(name: str, rev: ObjectiveRevision) -> v1.ObjectiveRevisionInfo:
    return v1.ObjectiveRevisionInfo(
        name=name,
        revision=rev.revision,
        config_json=json.dumps(rev.config, sort_keys=True),
        updated_at=rev.updated_at,
        author=rev.author,
    )


class AdminNode(Protocol):
    """What the Admin API reads and does on the node it runs on (``ClusterNode`` has it)."""

    @property
    def config(self) -> NodeConfig: ...
    @property
    def cluster(self) -> ClusterConfig: ...
    @property
    def membership(self) -> ClusterMembership | None: ...
    @property
    def router(self) -> ClusterRouter: ...
    @property
    def placement(self) -> Placement: ...
    @property
    def runtime(self) -> NodeRuntime: ...
    def start_drain(self) -> None: ...


class AdminService(v1.AdminBase):  # type: ignore[misc]
    def __init__(self, node: AdminNode, token: str | None, store: ArtifactStore | None) -> None:
        self.node = node
        self.token = token
        self.store = store

    # -- auth ------------------------------------------------------------------------------

    def __mapping__(self) -> dict[str, Any]:
        return {
            path: handler._replace(
                func=self._authorized(handler.func, public=path in PUBLIC_METHODS)
            )
            for path, handler in super().__mapping__().items()
        }

    def _authorized(
        self, func: Callable[[Stream[Any, Any]], Awaitable[None]], *, public: bool = False
    ) -> Callable[[Stream[Any, Any]], Awaitable[None]]:
        async def check(stream: Stream[Any, Any]) -> None:
            if not public:
                self._check_token(stream)
            try:
                await func(stream)
            except ControlPlaneUnavailable as exc:
                raise GRPCError(Status.UNAVAILABLE, str(exc)) from None
            except CatalogConflict as exc:
                raise GRPCError(Status.ABORTED, str(exc)) from None
            except NothingToRollBack as exc:
                raise GRPCError(Status.FAILED_PRECONDITION, str(exc)) from None
            except (CatalogError, ConfigError, ArtifactError) as exc:
                raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None

        return check

    def _check_token(self, stream: Stream[Any, Any]) -> None:
        if not self.token:
            raise GRPCError(
                Status.PERMISSION_DENIED, "admin API disabled: no admin token on this node"
            )
        metadata: Any = stream.metadata or {}
        given = metadata.get("authorization", "")
        expected = f"Bearer {self.token}"
        if not isinstance(given, str) or not given:
            raise GRPCError(Status.PERMISSION_DENIED, f"missing admin token: {TOKEN_HELP}")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise GRPCError(
                Status.PERMISSION_DENIED,
                f"wrong admin token (not this cluster's): {TOKEN_HELP}",
            )

    def _catalog(self) -> Any:
        membership = self.node.membership
        if membership is None or membership.client is None:
            raise GRPCError(Status.UNAVAILABLE, "node is not connected to the control plane")
        return catalog(membership.client, self.node.cluster.cluster)

    # -- nodes -----------------------------------------------------------------------------

    async def drain_node(self, drain_node_request: v1.DrainNodeRequest) -> v1.DrainNodeResponse:
        target = drain_node_request.node_id
        view = self.node.router.state.view
        others = [m for m in view.active() if m.node_id != target]
        if target in view.members and not others:
            raise GRPCError(
                Status.FAILED_PRECONDITION,
                f"{target} is the last active node: nothing could take over its models",
            )
        if target == self.node.config.node_id:
            self.node.start_drain()
            return v1.DrainNodeResponse(message=f"{target} is draining")
        member = self.node.router.state.view.members.get(target)
        if member is None:
            raise GRPCError(Status.NOT_FOUND, f"no live node {target!r} in the cluster view")
        host, _, port = member.record.grpc_address.rpartition(":")
        tls = self.node.config.tls
        channel = Channel(
            host, int(port), codec=WireCodec(), ssl=client_context(tls) if tls else None
        )
        try:
            return await v1.AdminStub(channel).drain_node(
                drain_node_request, timeout=10, metadata=bearer(self.token or "")
            )
        finally:
            channel.close()

    async def remove_node(self, remove_node_request: v1.RemoveNodeRequest) -> v1.RemoveNodeResponse:
        node_id = remove_node_request.node_id
        view = self.node.router.state.view
        if node_id in view.members and not remove_node_request.force:
            raise GRPCError(
                Status.FAILED_PRECONDITION,
                f"{node_id} is still alive in the view; drain it, or use --force (a node "
                "that is really alive puts its record back at once)",
            )
        membership = self.node.membership
        assert membership is not None and membership.client is not None
        deleted = await membership.client.delete(node_key(self.node.cluster.cluster, node_id))
        return v1.RemoveNodeResponse(removed=bool(deleted and deleted.deleted))

    # -- workflows -------------------------------------------------------------------------

    async def deploy(self, deploy_request: v1.DeployRequest) -> v1.DeployResponse:
        if self.store is None:
            raise GRPCError(Status.FAILED_PRECONDITION, "this node has no artifact store")
        store = self.store
        with tempfile.TemporaryDirectory(prefix="shardline-deploy-") as tmp:
            package = unpack(deploy_request.package_tar_gz, Path(tmp) / "pkg")
            self._check_implemented(package)
            manifest = load_manifest(package)  # (store.put verifies the digests)
            footprint = declared_footprint(package, manifest)
            self._check_fits(manifest.model_key, footprint, manifest.replicas)
            manifest, uri = await asyncio.to_thread(store.put, package)
        doc = {"artifact_uri": uri, "manifest": manifest.to_dict(), "footprint_bytes": footprint}
        revision = await self._catalog().put_workflow(manifest.name, manifest.version, doc)
        log.info("deployed %s to %s (revision %d)", manifest.model_key, uri, revision)
        return v1.DeployResponse(model_key=manifest.model_key, artifact_uri=uri, revision=revision)

    @staticmethod
    def _check_implemented(package: Path) -> None:
        """Refuse a package whose workflow class leaves Workflow methods abstract (a node
        could never warm it up): before anything is stored."""
        try:
            manifest = load_manifest(package)
        except ManifestError:
            return  # the store's verification reports it
        missing = unimplemented_methods(package, manifest)
        if missing:
            methods = ", ".join(f"{m}()" for m in missing)
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"{manifest.model_key}: {manifest.entrypoint_class} in "
                f"{manifest.entrypoint_file} does not implement {methods} (abstract in "
                "shardline.workflows.sdk.Workflow; a node warms every model up with one request "
                "from example_request() before it serves it): add them and deploy again; "
                "nothing was stored",
            )

    async def undeploy(self, undeploy_request: v1.UndeployRequest) -> v1.UndeployResponse:
        key = undeploy_request.model_key
        name, sep, version = key.partition("@")
        if not sep:
            raise GRPCError(
                Status.INVALID_ARGUMENT, f"model_key: expected NAME@VERSION, got {key!r}"
            )
        users = sorted(
            n for n, cfg in self.node.runtime.objectives.items() if key in cfg.model_keys()
        )
        if users:
            raise GRPCError(
                Status.FAILED_PRECONDITION,
                f"{key} is still routed to by objective(s) {', '.join(users)}; change them first",
            )
        removed = await self._catalog().delete_workflow(name, version)
        return v1.UndeployResponse(removed=removed)

    def _check_fits(self, key: str, footprint: int, replicas: int) -> None:
        """Refuse (FAILED_PRECONDITION, with the numbers) a model larger than every node's
        memory budget: it could never be loaded."""
        view = self.node.router.state.view
        spaces = [
            NodeSpace(node_id, m.loaded.budget_bytes, m.record.capacity)
            for node_id, m in view.members.items()
            if m.loaded is not None and m.loaded.budget_bytes > 0
        ]
        if not spaces:
            return  # no budget known yet (nodes starting): the nodes refuse it at load
        why = refusal(spaces, ModelNeed(key, footprint, replicas))
        if why is not None:
            raise GRPCError(Status.FAILED_PRECONDITION, f"refused: {why}")

    # -- objectives ------------------------------------------------------------------------

    def _check_routable(self, config: ObjectiveConfig, force: bool, what: str) -> None:
        """Refuse (FAILED_PRECONDITION) a config routing to models that are not deployed,
        or, unless ``force``, not warm on any node; the current routing stays in place."""
        snapshot = self.node.membership.snapshot if self.node.membership else None
        known = set(snapshot.workflows) if snapshot else set()
        missing = sorted(config.model_keys() - known)
        if missing:
            raise GRPCError(
                Status.FAILED_PRECONDITION,
                f"{what} refers to models that are not deployed: {', '.join(missing)}; "
                "deploy them first (`shardline deploy`); the current routing stays in place",
            )
        if force:
            return
        cold = sorted(k for k in config.model_keys() - self._warm_models() if not self._lazy(k))
        if cold:
            failures = {k: f.message for k, f in self.node.placement.failures.items() if k in cold}
            detail = "; ".join(f"{k}: {e}" for k, e in failures.items())
            raise GRPCError(
                Status.FAILED_PRECONDITION,
                f"{what} would route to models not warm on any node: {', '.join(cold)}"
                + (f" (load failed: {detail})" if detail else "")
                + "; the current routing stays in place (--force to override)",
            )

    def _lazy(self, key: str) -> bool:
        """Is ``key`` loadable on first use: placed on an owner whose resident models fill its
        budget (so it stays lazy there), though it fits the budget, with no failed load here?"""
        node = self.node
        if key in node.placement.failures:
            return False
        placement = node.placement
        if key in placement.lazy:
            return True
        size = placement.residence.declared_bytes(key)
        state = node.router.state
        for owner in state.owners(key):
            member = state.view.members.get(owner)
            loaded = member.loaded if member is not None else None
            # (Not ``settled``: a node settles after a failed load too, and a failure on
            # another node is not visible here; a full budget is the evidence.)
            if loaded is not None and lazy_there(
                size, loaded.budget_bytes, loaded.resident_bytes, settled=False
            ):
                return True
        return False

    def _warm_models(self) -> set[str]:
        view = self.node.router.state.view
        return {k for m in view.members.values() for k in m.models} | set(self.node.runtime.models)

    async def set_objective(
        self, set_objective_request: v1.SetObjectiveRequest
    ) -> v1.ObjectiveRevisionInfo:
        try:
            raw = json.loads(set_objective_request.config_json)
        except json.JSONDecodeError as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, f"config_json: not JSON: {exc}") from None
        config = ObjectiveConfig.from_dict(raw)
        self._check_routable(config, set_objective_request.force, f"objective {config.name}")
        cat = self._catalog()
        revision = await cat.set_objective(
            config.name, config.to_dict(), author=set_objective_request.author
        )
        current = await cat.get_objective(config.name)
        assert current is not None and current.revision == revision
        return _info(config.name, current)

    async def get_objective(
        self, get_objective_request: v1.GetObjectiveRequest
    ) -> v1.ObjectiveRevisionInfo:
        name = get_objective_request.name
        current = await self._catalog().get_objective(name)
        if current is None:
            raise GRPCError(Status.NOT_FOUND, f"no objective {name!r}")
        return _info(name, current)

    async def objective_history(
        self, get_objective_request: v1.GetObjectiveRequest
    ) -> v1.ObjectiveHistoryResponse:
        name = get_objective_request.name
        history = await self._catalog().objective_history(name)
        if not history:
            raise GRPCError(Status.NOT_FOUND, f"no objective {name!r}")
        return v1.ObjectiveHistoryResponse(revisions=[_info(name, r) for r in history])

    async def rollback_objective(
        self, rollback_objective_request: v1.RollbackObjectiveRequest
    ) -> v1.ObjectiveRevisionInfo:
        req = rollback_objective_request
        cat = self._catalog()

        def check(restored: dict[str, Any]) -> None:
            config = ObjectiveConfig.from_dict(restored)
            self._check_routable(config, req.force, f"rolling back objective {req.name}")

        revision = await cat.rollback_objective(
            req.name, req.to_revision or None, author="rollback", check=check
        )
        current = await cat.get_objective(req.name)
        assert current is not None and current.revision == revision
        return _info(req.name, current)

    async def explain(self, explain_request: v1.ExplainRequest) -> v1.ExplainResponse:
        req = explain_request
        config = self.node.runtime.objectives.get(req.objective)
        if config is None:
            raise GRPCError(Status.NOT_FOUND, f"unknown objective {req.objective!r}")
        ctx = RequestContext(
            user_id=req.user_id, country=req.country, device=req.device, surface=req.surface,
            attributes=dict(req.attributes),
        )  # fmt: skip
        try:
            d = evaluate(config, ctx, req.model_override or None)
        except OverrideNotAllowed as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, f"model_override: {exc}") from None
        state = self.node.router.state
        snapshot = self.node.membership.snapshot if self.node.membership else None
        deployed = snapshot is not None and d.model_key in snapshot.workflows
        if not deployed:
            model_state, owners = "not deployed", []
            reason = f"{d.reason}; {d.model_key} is not deployed: requests routed to it fail"
        else:
            owners = list(state.owners(d.model_key))
            warm = d.model_key in self._warm_models()
            model_state, reason = ("warm" if warm else "not warm"), d.reason
        return v1.ExplainResponse(
            model_key=d.model_key, cell=d.cell, shadows=list(d.shadows), reason=reason,
            revision=state.view.revision, owners=owners, model_state=model_state,
        )  # fmt: skip
