"""The Open Inference Protocol (KServe "V2") on a node, mapped onto objectives.

Triton, KServe, MLServer and their clients (``tritonclient``, the KServe SDK,
``perf_analyzer``) speak this protocol; a node answers it beside ``shardline.v1`` on the
same port (gRPC: ``inference.GRPCInferenceService``) and on its HTTP port (REST:
``shardline.node.serving.oip_rest``). ``docs/v2.md`` is the mapping for users; in short:

- ``model_name`` is an **objective**: its rules pick the model version per user, as for
  ``Predict``. With ``model_version`` it names one model of the objective (a version, e.g.
  ``"2"``, or a whole key, ``"title_ranking@2"``): an override, which the objective must
  allow (``allow_override``), as ``Predict``'s ``model_override``. A ``model_name`` that is
  not an objective but a model's name, with ``model_version``, is that model through the
  objective that routes to it (one that allows overrides first, by name).
- The request context comes from the request ``parameters`` (``user_id``, ``country``,
  ``device``, ``surface``, ``attr.<name>``; ``synthetic``) and, for any of them the
  parameters leave out, from gRPC metadata / HTTP headers (``user-id``, ``country``,
  ``device``, ``surface``, ``attr-<name>``). Without a user id the request is an anonymous
  user, bucketed as ``Predict`` buckets one (deterministically).
- Tensors (``shardline.node.serving.oip_tensors``): V2 datatypes map to the workflow's
  dtypes; other numeric types (INT8, UINT16, FP16, ...) are converted to the input's
  declared dtype when numpy can do so without loss, else INVALID_ARGUMENT naming the
  tensor. ``raw_input_contents`` (BYTES as a 4-byte little-endian length and the bytes, per
  element) or typed ``contents``; the answer is raw when the request was. Scalars travel as
  ``[1]``; a batch of one of a tensor input (``[1, n]`` for ``[-1]``) is taken off, and put
  back on every output.
- The provenance ``Predict`` answers with comes back in the response ``parameters``
  (``shardline.model_key``, ``.cell``, ``.node_id``, ``.hops``, ``.request_id`` and the
  timings in ms).

One request path: a V2 request becomes the ``PredictRequest`` it means — its routing fields,
and the V2 request itself in ``oip_request`` — handed to the same ``Ingress.predict``
(admission, rules, forwarding, batching, shadows, metrics, the prediction log). The node
that runs it decodes the V2 tensors once and answers a ``ModelInferResponse``, which the
ingress relays as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata as _metadata
from typing import Any

from google.protobuf.message import DecodeError
from grpclib.const import Cardinality, Handler
from grpclib.server import Stream

from shardline.node._proto.shardline.v1 import inference_pb2 as pb
from shardline.node._proto_oip import grpc_service_pb2 as v2
from shardline.node._proto_oip import model_config_pb2 as mc
from shardline.node.sdk.codec import RawBytes
from shardline.node.sdk.errors import InvalidArgument, NotFound, clip
from shardline.node.serving.oip_tensors import WIRE_TO_V2, check_request
from shardline.node.serving.runtime import NodeRuntime
from shardline.node.serving.service import client_of, guarded
from shardline.router.objectives import ObjectiveConfig
from shardline.workflows.manifest import TensorSpec, WorkflowManifest

SERVICE = "inference.GRPCInferenceService"
PLATFORM = "shardline"
#: What ServerMetadata lists (Triton's extension names).
EXTENSIONS = ("model_configuration", "binary_tensor_data", "parameters")

#: Workflow dtype -> Triton model-configuration data type (the ModelConfig extension).
TRITON_TYPES: Mapping[str, Any] = {
    "bool": mc.TYPE_BOOL,
    "int32": mc.TYPE_INT32,
    "int64": mc.TYPE_INT64,
    "float32": mc.TYPE_FP32,
    "float64": mc.TYPE_FP64,
    "string": mc.TYPE_STRING,
}
CONTEXT_FIELDS = ("user_id", "country", "device", "surface")
ATTR_PARAM = "attr."  # request parameter prefix of a context attribute
ATTR_HEADER = "attr-"  # metadata / header prefix of a context attribute


def _version() -> str:
    try:
        return _metadata.version("shardline")
    except _metadata.PackageNotFoundError:
        return "0"


VERSION = _version()


@dataclass(frozen=True)
class Target:
    """What a V2 ``model_name`` (+ ``model_version``) names."""

    objective: str
    override: str  # a model key, or "" for the objective's own rules


def target_of(name: str, version: str, objectives: Mapping[str, ObjectiveConfig]) -> Target:
    """The objective (and override) a V2 model name and version name (module docstring)."""
    if not name:
        raise InvalidArgument("model_name", "required: an objective's name")
    config = objectives.get(name)
    if config is not None:
        if not version:
            return Target(name, "")
        return Target(name, _version_key(name, version, config))
    if version:
        key = version if "@" in version else f"{name}@{version}"
        if key.partition("@")[0] == name:
            routes = sorted(o for o, c in objectives.items() if key in c.model_keys())
            if routes:
                allowing = [o for o in routes if objectives[o].allow_override]
                return Target((allowing or routes)[0], key)
    known = ", ".join(sorted(objectives)[:32]) or "none"
    hint = " (a model's name needs model_version)" if not version else ""
    raise NotFound(
        f"unknown model {clip(name)}{' version ' + clip(version) if version else ''}{hint}; "
        f"model_name is an objective: {known}"
    )


def _version_key(objective: str, version: str, config: ObjectiveConfig) -> str:
    keys = sorted(config.model_keys())
    if "@" in version:
        if version in keys:
            return version
        matches = []
    else:
        matches = [k for k in keys if k.rpartition("@")[2] == version]
        if len(matches) == 1:
            return matches[0]
    if len(matches) > 1:
        raise InvalidArgument(
            "model_version",
            f"version {clip(version)} is ambiguous in objective {objective}: "
            f"name the model key ({', '.join(matches)})",
        )
    raise NotFound(
        f"objective {objective} has no model version {clip(version)}; it routes to "
        f"{', '.join(keys)}"
    )


def _param_text(value: Any) -> str | None:
    kind = value.WhichOneof("parameter_choice")
    if kind is None:
        return None
    if kind == "bool_param":
        return "true" if value.bool_param else "false"
    return str(getattr(value, kind))


def context_params(
    parameters: Mapping[str, Any], headers: Iterable[tuple[str, str | bytes]] | None
) -> tuple[dict[str, str], dict[str, str], bool]:
    """(context fields, attributes, synthetic) from V2 request parameters, then headers."""
    fields: dict[str, str] = {}
    attributes: dict[str, str] = {}
    synthetic = False
    for key, value in parameters.items():
        if key in CONTEXT_FIELDS or key.startswith(ATTR_PARAM) or key == "synthetic":
            text = _param_text(value)
            if text is None:
                continue
            if key == "synthetic":
                synthetic = text == "true"
            elif key.startswith(ATTR_PARAM):
                attributes[key[len(ATTR_PARAM) :]] = text
            else:
                fields[key] = text
    if headers is not None:
        for key, value in headers:
            if not isinstance(value, str):
                continue  # a binary (-bin) header
            key = key.lower()
            field = key.replace("-", "_")
            if field in CONTEXT_FIELDS:
                fields.setdefault(field, value)
            elif key.startswith(ATTR_HEADER):
                attributes.setdefault(key[len(ATTR_HEADER) :], value)
    return fields, attributes, synthetic


class Translator:
    """A V2 request -> the ``PredictRequest`` that carries it; the answer -> the V2 answer."""

    def __init__(self, runtime: NodeRuntime) -> None:
        self.runtime = runtime

    def manifest(self, target: Target) -> WorkflowManifest | None:
        rt = self.runtime
        key = target.override or rt.objectives[target.objective].default
        return rt.manifest_of(key)

    def request(
        self,
        req: Any,
        headers: Iterable[tuple[str, str | bytes]] | None = None,
        encoded: bytes | None = None,
    ) -> bytes:
        """The encoded ``PredictRequest`` a ``ModelInferRequest`` means (``encoded``: its
        bytes when the caller has them): the routing fields from the V2 name and context,
        and the V2 request itself, whose tensors the node that runs it decodes."""
        target = target_of(req.model_name, req.model_version, self.runtime.objectives)
        check_request(req)
        if req.outputs:  # named outputs: refused before any work when the model has none such
            manifest = self.manifest(target)
            declared = [s.name for s in manifest.outputs] if manifest is not None else []
            for output in req.outputs:
                if declared and output.name not in declared:
                    raise InvalidArgument(
                        f"outputs.{clip(output.name, quote=False)}",
                        f"no such output; the model has {', '.join(declared)}",
                    )
        out = pb.PredictRequest(
            objective=target.objective,
            model_override=target.override,
            request_id=req.id,
            oip_request=encoded if encoded is not None else req.SerializeToString(),
        )
        if req.parameters or headers:
            fields, attributes, synthetic = context_params(req.parameters, headers)
            ctx = out.context
            for name, text in fields.items():
                setattr(ctx, name, text)
            if attributes:
                ctx.attributes.update(attributes)
            out.synthetic = synthetic
        return out.SerializeToString()  # type: ignore[no-any-return]

    @staticmethod
    def response(answer: bytes) -> Any:
        """The ``ModelInferResponse`` the node that ran a V2 request answered with."""
        return v2.ModelInferResponse.FromString(answer)


# -- metadata ------------------------------------------------------------------------------


def _dims(spec: TensorSpec) -> list[int]:
    """A tensor's shape as V2 clients see it: a scalar is ``[1]`` (a batch of one)."""
    return list(spec.shape) or [1]


class OipService:
    """``inference.GRPCInferenceService`` over a ``NodeRuntime`` (module docstring)."""

    def __init__(self, runtime: NodeRuntime, readiness: Callable[[], tuple[bool, str]]) -> None:
        self.runtime = runtime
        self.readiness = readiness
        self.translator = Translator(runtime)

    # -- inference -------------------------------------------------------------------------

    async def model_infer(self, stream: Stream[bytes, bytes]) -> None:
        raw = await stream.recv_message()
        assert raw is not None  # recv_request raises INVALID_ARGUMENT for a call without one
        remaining = stream.deadline.time_remaining() if stream.deadline else None
        client = client_of(stream)
        headers = list(stream.metadata.items()) if stream.metadata else None

        async def infer() -> bytes:
            req = v2.ModelInferRequest()
            try:
                req.ParseFromString(raw)
            except DecodeError:
                raise InvalidArgument(
                    "request", "not a valid inference.ModelInferRequest"
                ) from None
            predict = self.translator.request(req, headers, raw)
            # The node that runs it answers with an encoded ModelInferResponse.
            return await self.runtime.ingress.predict(predict, remaining, client)

        await stream.send_message(await guarded(infer, "ModelInfer"))

    # -- health and metadata ---------------------------------------------------------------

    async def server_live(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        await stream.send_message(v2.ServerLiveResponse(live=True))

    async def server_ready(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        await stream.send_message(v2.ServerReadyResponse(ready=self.readiness()[0]))

    async def server_metadata(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        await stream.send_message(
            v2.ServerMetadataResponse(
                name=PLATFORM,
                version=VERSION,
                extensions=list(EXTENSIONS),
            )
        )

    def _target(self, name: str, version: str) -> tuple[Target, WorkflowManifest]:
        target = target_of(name, version, self.runtime.objectives)
        manifest = self.translator.manifest(target)
        if manifest is None:
            key = target.override or self.runtime.objectives[target.objective].default
            raise NotFound(f"model {key} of {target.objective} is not in this node's catalog")
        return target, manifest

    async def model_ready(self, stream: Stream[Any, Any]) -> None:
        req = await stream.recv_message()
        assert req is not None  # recv_request raises INVALID_ARGUMENT for a call without one

        async def ready() -> Any:
            try:
                self._target(req.name, req.version)
            except NotFound:
                return v2.ModelReadyResponse(ready=False)
            return v2.ModelReadyResponse(ready=self.readiness()[0])

        await stream.send_message(await guarded(ready, "ModelReady"))

    async def model_metadata(self, stream: Stream[Any, Any]) -> None:
        req = await stream.recv_message()
        assert req is not None  # recv_request raises INVALID_ARGUMENT for a call without one

        async def meta() -> Any:
            target, manifest = self._target(req.name, req.version)
            config = self.runtime.objectives[target.objective]
            keys = [target.override] if target.override else sorted(config.model_keys())
            return v2.ModelMetadataResponse(
                name=req.name,
                versions=[k.rpartition("@")[2] for k in keys],
                platform=PLATFORM,
                inputs=[tensor_meta(s) for s in manifest.inputs],
                outputs=[tensor_meta(s) for s in manifest.outputs],
            )

        await stream.send_message(await guarded(meta, "ModelMetadata"))

    async def model_config(self, stream: Stream[Any, Any]) -> None:
        req = await stream.recv_message()
        assert req is not None  # recv_request raises INVALID_ARGUMENT for a call without one

        async def config() -> Any:
            _, manifest = self._target(req.name, req.version)
            return v2.ModelConfigResponse(config=model_config_of(req.name, manifest))

        await stream.send_message(await guarded(config, "ModelConfig"))

    def __mapping__(self) -> dict[str, Handler]:
        def unary(func: Any, request: Any, response: Any) -> Handler:
            return Handler(func, Cardinality.UNARY_UNARY, request, response)

        base = f"/{SERVICE}/"
        return {
            base + "ModelInfer": unary(self.model_infer, RawBytes, RawBytes),
            base + "ServerLive": unary(
                self.server_live, v2.ServerLiveRequest, v2.ServerLiveResponse
            ),
            base + "ServerReady": unary(
                self.server_ready, v2.ServerReadyRequest, v2.ServerReadyResponse
            ),
            base + "ServerMetadata": unary(
                self.server_metadata, v2.ServerMetadataRequest, v2.ServerMetadataResponse
            ),
            base + "ModelReady": unary(
                self.model_ready, v2.ModelReadyRequest, v2.ModelReadyResponse
            ),
            base + "ModelMetadata": unary(
                self.model_metadata, v2.ModelMetadataRequest, v2.ModelMetadataResponse
            ),
            base + "ModelConfig": unary(
                self.model_config, v2.ModelConfigRequest, v2.ModelConfigResponse
            ),
        }


def tensor_meta(spec: TensorSpec) -> Any:
    return v2.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=WIRE_TO_V2[spec.dtype], shape=_dims(spec)
    )


def model_config_of(name: str, manifest: WorkflowManifest) -> Any:
    """Triton's model configuration of the model an objective answers with by default."""
    return mc.ModelConfig(
        name=name,
        platform=PLATFORM,
        backend=PLATFORM,
        max_batch_size=0,  # batching is the node's own (dynamic, per model actor)
        input=[
            mc.ModelInput(
                name=s.name,
                data_type=TRITON_TYPES[s.dtype],
                dims=_dims(s),
                optional=s.optional,
            )
            for s in manifest.inputs
        ],
        output=[
            mc.ModelOutput(name=s.name, data_type=TRITON_TYPES[s.dtype], dims=_dims(s))
            for s in manifest.outputs
        ],
    )


__all__ = ["SERVICE", "OipService", "Target", "Translator", "target_of"]
