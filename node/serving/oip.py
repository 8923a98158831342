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
- Tensors: V2 datatypes map to the workflow's dtypes (``V2_DTYPES``); other numeric types
  (INT8, UINT16, FP16, ...) are converted to the input's declared dtype when numpy can
  do so without loss, else INVALID_ARGUMENT naming the tensor. ``raw_input_contents``
  (BYTES as a 4-byte little-endian length and the bytes, per element) or typed
  ``contents``; the answer is raw when the request was. A leading dimension of 1 on an
  input (a batch of one: ``[1]`` for a scalar input, ``[1, n]`` for ``[-1]``) is taken
  off, and then put on every output.
- The provenance ``Predict`` answers with comes back in the response ``parameters``
  (``shardline.model_key``, ``.cell``, ``.node_id``, ``.hops``, ``.request_id`` and the
  timings in ms).

One request path: a V2 request is translated into the ``PredictRequest`` it means and
handed to the same ``Ingress.predict`` (admission, rules, forwarding, batching, shadows,
metrics, the prediction log); its answer is translated back. Peers never see V2.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata as _metadata
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError
from grpclib.const import Cardinality, Handler
from grpclib.server import Stream

from shardline.node._proto.shardline.v1 import inference_pb2 as pb
from shardline.node._proto_oip import grpc_service_pb2 as v2
from shardline.node._proto_oip import model_config_pb2 as mc
from shardline.node.sdk.codec import RawBytes
from shardline.node.sdk.errors import InvalidArgument, NotFound, clip
from shardline.node.serving.inputs import MAX_ELEMENTS
from shardline.node.serving.runtime import NodeRuntime
from shardline.node.serving.service import client_of, guarded
from shardline.router.objectives import ObjectiveConfig
from shardline.workflows.manifest import TensorSpec, WorkflowManifest

SERVICE = "inference.GRPCInferenceService"
PLATFORM = "shardline"

#: V2 datatype -> the workflow dtype it is (no conversion).
V2_DTYPES: Mapping[str, str] = {
    "BOOL": "bool",
    "INT32": "int32",
    "INT64": "int64",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "string",
}
#: Workflow dtype -> V2 datatype.
WIRE_TO_V2: Mapping[str, str] = {wire: name for name, wire in V2_DTYPES.items()}
#: V2 numeric datatypes a workflow has no dtype for: converted to the input's declared
#: dtype when that is lossless (``numpy.can_cast(..., "safe")``).
V2_CONVERTED: Mapping[str, np.dtype[Any]] = {
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
}
_NUMPY: Mapping[str, np.dtype[Any]] = {
    "bool": np.dtype("?"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
}
#: Workflow dtype -> Triton model-configuration data type (the ModelConfig extension).
TRITON_TYPES: Mapping[str, Any] = {
    "bool": mc.TYPE_BOOL,
    "int32": mc.TYPE_INT32,
    "int64": mc.TYPE_INT64,
    "float32": mc.TYPE_FP32,
    "float64": mc.TYPE_FP64,
    "string": mc.TYPE_STRING,
}
#: Typed contents: workflow dtype -> (V2 ``InferTensorContents`` field, shardline
#: ``TensorContents`` field).
_CONTENTS: Mapping[str, tuple[str, str]] = {
    "bool": ("bool_contents", "bool_contents"),
    "int32": ("int_contents", "int_contents"),
    "int64": ("int64_contents", "int64_contents"),
    "float32": ("fp32_contents", "fp32_contents"),
    "float64": ("fp64_contents", "fp64_contents"),
}
#: Typed contents of the converted datatypes (FP16 travels raw only).
_CONVERTED_CONTENTS: Mapping[str, str] = {
    "INT8": "int_contents",
    "INT16": "int_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
}

CONTEXT_FIELDS = ("user_id", "country", "device", "surface")
ATTR_PARAM = "attr."  # request parameter prefix of a context attribute
ATTR_HEADER = "attr-"  # metadata / header prefix of a context attribute
MAX_TENSORS = 256  # inputs or requested outputs of one V2 request

_LENGTH = struct.Struct("<I")


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


@dataclass(frozen=True)
class Plan:
    """How to translate the answer of one V2 request back."""

    model_name: str
    request_id: str
    raw: bool  # answer in raw_output_contents
    batched: bool  # inputs came with a leading batch dimension of 1: outputs get one
    outputs: tuple[str, ...]  # requested outputs in order ("" = all)


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


def specs_of(manifest: WorkflowManifest | None, kind: str) -> dict[str, TensorSpec]:
    if manifest is None:
        return {}
    return {s.name: s for s in (manifest.inputs if kind == "inputs" else manifest.outputs)}


class Translator:
    """V2 request -> ``PredictRequest`` bytes, and ``PredictResponse`` bytes -> V2 answer."""

    def __init__(self, runtime: NodeRuntime) -> None:
        self.runtime = runtime

    def manifest(self, target: Target) -> WorkflowManifest | None:
        rt = self.runtime
        key = target.override or rt.objectives[target.objective].default
        return rt.manifest_of(key)

    def request(
        self, req: Any, headers: Iterable[tuple[str, str | bytes]] | None = None
    ) -> tuple[bytes, Plan]:
        """The encoded ``PredictRequest`` a ``ModelInferRequest`` means, and its ``Plan``."""
        target = target_of(req.model_name, req.model_version, self.runtime.objectives)
        out = pb.PredictRequest(objective=target.objective, model_override=target.override)
        fields, attributes, synthetic = context_params(req.parameters, headers)
        ctx = out.context
        for name, text in fields.items():
            setattr(ctx, name, text)
        if attributes:
            ctx.attributes.update(attributes)
        out.synthetic = synthetic
        if req.id:
            out.request_id = req.id
        inputs = req.inputs
        if len(inputs) > MAX_TENSORS:
            raise InvalidArgument("inputs", f"more than {MAX_TENSORS} tensors ({len(inputs)})")
        raw = req.raw_input_contents
        if raw and len(raw) != len(inputs):
            raise InvalidArgument(
                "raw_input_contents",
                f"{len(raw)} raw tensors for {len(inputs)} inputs: send every input raw, or none",
            )
        specs = specs_of(self.manifest(target), "inputs")
        batched = False
        for i, tensor in enumerate(inputs):
            batched |= _input(out.inputs.add(), tensor, raw[i] if raw else None, specs)
        requested = tuple(o.name for o in req.outputs)
        if len(requested) > MAX_TENSORS:
            raise InvalidArgument("outputs", f"more than {MAX_TENSORS} tensors")
        declared = specs_of(self.manifest(target), "outputs")
        for name in requested:
            if declared and name not in declared:
                raise InvalidArgument(
                    f"outputs.{clip(name, quote=False)}",
                    f"no such output; the model has {', '.join(declared)}",
                )
        plan = Plan(req.model_name, req.id, bool(raw), batched, requested)
        return out.SerializeToString(), plan

    def response(self, answer: bytes, plan: Plan) -> Any:
        """The ``ModelInferResponse`` of an encoded ``PredictResponse``."""
        got = pb.PredictResponse.FromString(answer)
        prov = got.provenance
        res = v2.ModelInferResponse(
            model_name=plan.model_name,
            model_version=prov.model_key.rpartition("@")[2],
            id=plan.request_id or prov.request_id,
        )
        params = res.parameters
        params["shardline.model_key"].string_param = prov.model_key
        params["shardline.cell"].string_param = prov.cell
        params["shardline.node_id"].string_param = prov.node_id
        params["shardline.hops"].int64_param = prov.hops
        params["shardline.request_id"].string_param = prov.request_id
        timing = prov.timing
        for name in ("queue_ms", "preprocess_ms", "compute_ms", "postprocess_ms", "total_ms"):
            params[f"shardline.{name}"].double_param = getattr(timing, name)
        params["shardline.batch_size"].int64_param = timing.batch_size
        outputs = {t.name: t for t in got.outputs}
        names = plan.outputs or tuple(outputs)
        for name in names:
            tensor = outputs.get(name)
            if tensor is None:
                raise InvalidArgument(
                    f"outputs.{clip(name, quote=False)}",
                    f"model {prov.model_key} has no such output; it has {', '.join(outputs)}",
                )
            _output(res, tensor, plan)
        return res


def _shape(field: str, dims: Iterable[int]) -> list[int]:
    shape = list(dims)
    if any(d < 0 for d in shape):
        raise InvalidArgument(field, f"shape {shape} has a negative dimension")
    return shape


def _count(field: str, shape: list[int]) -> int:
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise InvalidArgument(field, f"shape {shape} holds more than {MAX_ELEMENTS} elements")
    return count


def _input(out: Any, tensor: Any, raw: bytes | None, specs: Mapping[str, TensorSpec]) -> bool:
    """Fill shardline tensor ``out`` from V2 input ``tensor``; True when a leading batch
    dimension of 1 was taken off."""
    name = tensor.name
    field = f"inputs.{clip(name, quote=False)}"
    datatype = tensor.datatype
    shape = _shape(field, tensor.shape)
    spec = specs.get(name)
    batched = spec is not None and len(shape) == len(spec.shape) + 1 and shape[:1] == [1]
    if batched:
        shape = shape[1:]
    count = _count(field, shape)
    out.name = name
    out.shape.extend(shape)
    wire = V2_DTYPES.get(datatype)
    if wire == "string":
        out.dtype = "string"
        items = (
            _split_bytes(field, raw, count) if raw is not None else tensor.contents.bytes_contents
        )
        try:
            out.strings.extend(item.decode() for item in items)
        except UnicodeDecodeError:
            raise InvalidArgument(field, "a BYTES element is not UTF-8 text") from None
        return batched
    if wire is not None and (spec is None or spec.dtype == wire or spec.dtype == "string"):
        out.dtype = wire
        if raw is not None:
            out.data = raw
        else:
            source, target = _CONTENTS[wire]
            getattr(out.contents, target).extend(getattr(tensor.contents, source))
        return batched
    # A datatype the workflow declares differently: converted when lossless.
    source_dtype = _NUMPY.get(wire) if wire is not None else V2_CONVERTED.get(datatype)
    if source_dtype is None:
        raise InvalidArgument(
            field,
            f"datatype {clip(datatype)} is not one of {', '.join([*V2_DTYPES, *V2_CONVERTED])}",
        )
    if spec is None or spec.dtype == "string":
        raise InvalidArgument(
            field, f"datatype {datatype} has no workflow dtype; send {', '.join(V2_DTYPES)}"
        )
    target_dtype = _NUMPY[spec.dtype]
    if not np.can_cast(source_dtype, target_dtype, "safe"):
        raise InvalidArgument(
            field,
            f"expected {WIRE_TO_V2[spec.dtype]}, got {datatype} (not convertible without loss)",
        )
    if raw is not None:
        if len(raw) != count * source_dtype.itemsize:
            raise InvalidArgument(
                field,
                f"{len(raw)} raw bytes for {count} {datatype} elements "
                f"({count * source_dtype.itemsize} expected)",
            )
        values = np.frombuffer(raw, source_dtype)
    else:
        contents_field = (
            _CONTENTS[wire][0] if wire is not None else _CONVERTED_CONTENTS.get(datatype)
        )
        if contents_field is None:
            raise InvalidArgument(field, f"datatype {datatype} travels in raw_input_contents only")
        values = np.asarray(getattr(tensor.contents, contents_field))
        if values.size != count:
            raise InvalidArgument(
                field, f"{values.size} values in contents for shape {shape} ({count} expected)"
            )
        if values.size and source_dtype.kind in "iu":
            info = np.iinfo(source_dtype)
            if values.min() < info.min or values.max() > info.max:
                raise InvalidArgument(field, f"a value in contents does not fit {datatype}")
    out.dtype = spec.dtype
    out.data = values.astype(target_dtype.newbyteorder("<")).tobytes()
    return batched


def _split_bytes(field: str, raw: bytes, count: int) -> list[bytes]:
    """The elements of a raw BYTES tensor (each a 4-byte little-endian length, then bytes)."""
    items: list[bytes] = []
    at, end = 0, len(raw)
    while at < end:
        if len(items) >= count:
            raise InvalidArgument(
                field, f"raw BYTES hold more than the {count} elements of its shape"
            )
        if at + 4 > end:
            raise InvalidArgument(field, "raw BYTES cut short in an element's length")
        (size,) = _LENGTH.unpack_from(raw, at)
        at += 4
        if at + size > end:
            raise InvalidArgument(field, "raw BYTES cut short in an element")
        items.append(raw[at : at + size])
        at += size
    if len(items) != count:
        raise InvalidArgument(field, f"raw BYTES hold {len(items)} elements, its shape {count}")
    return items


def _output(res: Any, tensor: Any, plan: Plan) -> None:
    out = res.outputs.add()
    out.name = tensor.name
    dtype = tensor.dtype
    out.datatype = WIRE_TO_V2.get(dtype, dtype.upper())
    out.shape.extend([1, *tensor.shape] if plan.batched else tensor.shape)
    if dtype == "string":
        items = [s.encode() for s in tensor.strings]
        if plan.raw:
            res.raw_output_contents.append(
                b"".join(_LENGTH.pack(len(item)) + item for item in items)
            )
        else:
            out.contents.bytes_contents.extend(items)
        return
    data = tensor.data
    if not data and tensor.HasField("contents"):  # an answer in typed values
        data = np.asarray(getattr(tensor.contents, _CONTENTS[dtype][1]), _NUMPY[dtype]).tobytes()
    if plan.raw:
        res.raw_output_contents.append(data)
    else:
        getattr(out.contents, _CONTENTS[dtype][0]).extend(
            np.frombuffer(data, _NUMPY[dtype]).tolist()
        )


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
            predict, plan = self.translator.request(req, headers)
            answer = await self.runtime.ingress.predict(predict, remaining, client)
            encoded: bytes = self.translator.response(answer, plan).SerializeToString()
            return encoded

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
                extensions=["model_configuration", "binary_tensor_data", "parameters"],
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
                inputs=[_tensor_meta(s) for s in manifest.inputs],
                outputs=[_tensor_meta(s) for s in manifest.outputs],
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


def _tensor_meta(spec: TensorSpec) -> Any:
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


__all__ = ["SERVICE", "OipService", "Plan", "Target", "Translator", "target_of"]
