"""The Open Inference Protocol's REST binding (KServe "V2" / Triton HTTP) on a node's HTTP port.

Served beside ``/metrics``, ``/healthz`` and ``/readyz`` (``--metrics-port``), so
``tritonclient.http``, the KServe SDK and ``curl`` can call a node:

- ``GET /v2/health/live`` (200), ``GET /v2/health/ready`` (200, or 503 with the reason,
  as ``/readyz``), ``GET /v2`` (server metadata);
- ``GET /v2/models/{name}[/versions/{v}]`` (model metadata), ``.../ready`` (200 when the
  model is known and the node ready; 404 unknown; 503 not ready), ``.../config``
  (Triton's model configuration, as JSON);
- ``POST /v2/models/{name}[/versions/{v}]/infer``: a JSON body, or Triton's binary tensor
  data extension (header ``Inference-Header-Content-Length: N``: the first N bytes are the
  JSON, then each input with ``"parameters": {"binary_data_size": n}`` has its n raw bytes,
  in the order of ``inputs``; BYTES elements as a 4-byte little-endian length and the
  bytes). Outputs asked for with ``"parameters": {"binary_data": true}`` (or all outputs,
  with the request parameter ``"binary_data_output": true``) come back the same way after
  the JSON; the others as JSON ``data`` (BYTES as strings). A body may be gzip or deflate
  compressed (``Content-Encoding``).

The mapping onto objectives is the gRPC binding's (``shardline.node.serving.oip``): the
model name is an objective, the version an override; the request context comes from the
request ``parameters`` (``user_id``, ``country``, ``device``, ``surface``,
``attr.<name>``, ``synthetic``) and, failing that, the HTTP headers ``user-id``,
``country``, ``device``, ``surface``, ``attr-<name>`` (the HTTP server drops headers with
an underscore in their name: an attribute named with one goes in the parameters). The
request parameter ``timeout`` (microseconds, as Triton's and ``tritonclient``'s) is the
request's deadline; without it the node's default deadline applies. The shardline
provenance comes back in the response ``parameters``.

One request path: the JSON (and binary) request is turned into the ``ModelInferRequest``
it means (every tensor raw), which ``Translator`` turns into a ``PredictRequest`` on the
node's event loop and hands to ``Ingress.predict``, as gRPC V2 and ``Predict`` do. The HTTP
server's threads only parse and format; they wait for the loop (``run_coroutine_threadsafe``)
at most the request's deadline and a second more.

Errors are JSON ``{"error": "..."}`` with the status of the failure (400 bad input, 404
unknown model or path, 405 wrong method, 411 no length, 413 body over the node's
``max_message_bytes``, 415 unknown encoding, 429 shed, 503 unavailable, 504 deadline),
never a traceback: an unexpected failure is a 500 naming a node log reference.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import re
import struct
import uuid
import zlib
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from google.protobuf.json_format import MessageToDict
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from shardline.node._proto_oip import grpc_service_pb2 as v2
from shardline.node.sdk import tensors
from shardline.node.sdk.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    RequestError,
    Unavailable,
    bounded,
    clip,
)
from shardline.node.serving.graceful_server import InFlight
from shardline.node.serving.inputs import MAX_ELEMENTS
from shardline.node.serving.oip import (
    EXTENSIONS,
    PLATFORM,
    VERSION,
    OipService,
    model_config_of,
    tensor_meta,
)
from shardline.node.serving.oip_tensors import (
    V2_CONVERTED,
    V2_DTYPES,
    split_bytes,
)

log = logging.getLogger("shardline.oip_rest")

T = TypeVar("T")
StartResponse = Callable[..., Any]

HEADER_LENGTH = "Inference-Header-Content-Length"
LOOP_GRACE_S = 1.0  # beyond the request's deadline, how long a thread waits for the loop
MAX_RANK = tensors.MAX_DIMS + 1  # a workflow tensor's dimensions, and a batch of one
MAX_DRAIN_FACTOR = 2  # an oversized body up to this many times the limit is read and dropped

#: V2 datatype -> numpy dtype of its elements (little-endian), BYTES aside.
V2_NUMPY: Mapping[str, np.dtype[Any]] = {
    **{
        name: np.dtype(wire).newbyteorder("<")
        for name, wire in V2_DTYPES.items()
        if wire != "string"
    },
    **V2_CONVERTED,
}
_LENGTH = struct.Struct("<I")
_TYPED = ("bool_contents", "int_contents", "int64_contents", "fp32_contents", "fp64_contents")
_INT64 = (-(2**63), 2**63 - 1)
_STATUS_HTTP: Mapping[Status, int] = {
    Status.INVALID_ARGUMENT: 400,
    Status.FAILED_PRECONDITION: 400,
    Status.OUT_OF_RANGE: 400,
    Status.UNAUTHENTICATED: 401,
    Status.PERMISSION_DENIED: 403,
    Status.NOT_FOUND: 404,
    Status.RESOURCE_EXHAUSTED: 429,
    Status.UNIMPLEMENTED: 501,
    Status.UNAVAILABLE: 503,
    Status.DEADLINE_EXCEEDED: 504,
}
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_MODEL_PATH = re.compile(
    r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?:/(?P<action>[^/]+))?$"
)


class HttpError(Exception):
    """A failure at the HTTP level (method, length, encoding), with its status."""

    def __init__(self, status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = bounded(message)
        self.headers = list(headers)


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"


def json_reply(status: int, value: Any) -> Reply:
    return Reply(status, json.dumps(value, separators=(",", ":")).encode())


def error_reply(status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> Reply:
    reply = json_reply(status, {"error": bounded(message)})
    reply.headers.extend(headers)
    return reply


def http_status(status: Status) -> int:
    return _STATUS_HTTP.get(status, 500)


# -- request: JSON (+ binary) -> ModelInferRequest ---------------------------------------------


@dataclass(frozen=True)
class Wanted:
    """How the client wants the outputs: binary per requested output, or for all."""

    binary: Mapping[str, bool]  # requested output -> binary (empty: every output)
    binary_default: bool  # request parameter binary_data_output
    timeout_s: float | None  # request parameter timeout (microseconds), in seconds


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON, binary tensor data) of an infer body (binary tensor data extension)."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length.strip())
    except ValueError:
        raise InvalidArgument(HEADER_LENGTH, f"not a number: {clip(header_length)}") from None
    if not 0 <= n <= len(body):
        raise InvalidArgument(
            HEADER_LENGTH, f"{n} is not within the body's {len(body)} bytes"
        ) from None
    return body[:n], body[n:]


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text: bytes) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidArgument("request", "JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise InvalidArgument("request", f"not valid JSON: {bounded(str(exc), 200)}") from None


def _object(field: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(field, f"expected a JSON object, got {_kind(value)}")
    return value


def _list(field: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidArgument(field, f"expected a JSON array, got {_kind(value)}")
    return value


def _str(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(field, f"expected a string, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _set_param(target: Any, field: str, value: Any) -> None:
    """One V2 ``InferParameter`` from a JSON value (boolean, integer, number or string)."""
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        if _INT64[0] <= value <= _INT64[1]:
            target.int64_param = value
        elif 0 <= value < 2**64:
            target.uint64_param = value
        else:
            raise InvalidArgument(field, "integer out of the 64-bit range")
    elif isinstance(value, float):
        target.double_param = value
    elif isinstance(value, str):
        target.string_param = value
    else:
        raise InvalidArgument(field, f"a boolean, number or string, not {_kind(value)}")


def _param_value(param: Any) -> Any:
    kind = param.WhichOneof("parameter_choice")
    return None if kind is None else getattr(param, kind)


def _shape(field: str, value: Any) -> list[int]:
    dims = _list(f"{field}.shape", value)
    if len(dims) > MAX_RANK:
        raise InvalidArgument(f"{field}.shape", f"more than {MAX_RANK} dimensions")
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int):
            raise InvalidArgument(f"{field}.shape", f"dimensions are integers, got {_kind(d)}")
        if d < 0:
            raise InvalidArgument(f"{field}.shape", f"shape {dims} has a negative dimension")
    count = math.prod(dims)
    if count > MAX_ELEMENTS:
        raise InvalidArgument(
            f"{field}.shape", f"shape {dims} holds more than {MAX_ELEMENTS} elements"
        )
    return dims


def _flatten(field: str, data: Any, limit: int) -> list[Any]:
    """Row-major elements of (possibly nested) JSON ``data``; at most ``limit`` + 1 read."""
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack: list[tuple[list[Any], int]] = [(data, 0)]
    while stack:
        items, at = stack.pop()
        while at < len(items):
            item = items[at]
            at += 1
            if isinstance(item, list):
                if len(stack) >= MAX_RANK:
                    raise InvalidArgument(f"{field}.data", f"nested deeper than {MAX_RANK}")
                stack.append((items, at))
                items, at = item, 0
                continue
            flat.append(item)
            if len(flat) > limit:
                return flat
    return flat


def _typed_bytes(field: str, datatype: str, flat: list[Any]) -> bytes:
    """The raw bytes of JSON elements of a V2 datatype (checked one by one)."""
    if datatype == "BYTES":
        out = bytearray()
        for item in flat:
            if not isinstance(item, str):
                raise InvalidArgument(field, f"BYTES elements are strings, got {_kind(item)}")
            encoded = item.encode("utf-8", "surrogatepass")
            out += _LENGTH.pack(len(encoded))
            out += encoded
        return bytes(out)
    dtype = V2_NUMPY.get(datatype)
    if dtype is None:
        known = ", ".join([*V2_DTYPES, *V2_CONVERTED])
        raise InvalidArgument(field, f"datatype {clip(datatype)} is not one of {known}")
    if dtype.kind == "b":
        if not all(isinstance(x, bool) for x in flat):
            raise InvalidArgument(field, "BOOL elements are true or false")
    elif dtype.kind in "iu":
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in flat):
            raise InvalidArgument(field, f"{datatype} elements are integers")
        info = np.iinfo(dtype)
        if flat and (min(flat) < info.min or max(flat) > info.max):
            raise InvalidArgument(field, f"an element does not fit {datatype}")
    elif not all(isinstance(x, int | float) and not isinstance(x, bool) for x in flat):
        raise InvalidArgument(field, f"{datatype} elements are numbers")
    try:
        return np.asarray(flat, dtype=dtype).tobytes()
    except (OverflowError, ValueError):
        raise InvalidArgument(field, f"an element does not fit {datatype}") from None


def infer_request(
    name: str, version: str, body: bytes, header_length: str | None
) -> tuple[Any, Wanted]:
    """The ``ModelInferRequest`` (every input raw) an infer body means, and the outputs' form."""
    text, binary = split_body(body, header_length)
    doc = _object("request", parse_json(text))
    req = v2.ModelInferRequest(model_name=name, model_version=version)
    request_id = doc.get("id", "")
    req.id = _str("id", request_id)
    params = _object("parameters", doc.get("parameters", {}))
    timeout_s: float | None = None
    binary_default = False
    for key, value in params.items():
        pfield = f"parameters.{clip(key, quote=False)}"
        if key == "timeout":
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 < value < 1e15
            ):
                raise InvalidArgument(pfield, "the deadline in microseconds: a positive number")
            timeout_s = value / 1e6
        elif key == "binary_data_output":
            if not isinstance(value, bool):
                raise InvalidArgument(pfield, "true or false")
            binary_default = value
        _set_param(req.parameters[key], pfield, value)
    inputs = _list("inputs", doc.get("inputs"))
    at = 0
    for i, item in enumerate(inputs):
        tensor = _object(f"inputs[{i}]", item)
        tname = _str(f"inputs[{i}].name", tensor.get("name"))
        tfield = f"inputs.{clip(tname, quote=False)}"
        datatype = _str(f"{tfield}.datatype", tensor.get("datatype"))
        shape = _shape(tfield, tensor.get("shape"))
        count = math.prod(shape)
        tparams = _object(f"{tfield}.parameters", tensor.get("parameters", {}))
        if "shared_memory_region" in tparams:
            raise InvalidArgument(tfield, "shared memory is not supported: send the data")
        size = tparams.get("binary_data_size")
        has_data = "data" in tensor
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidArgument(f"{tfield}.binary_data_size", "a byte count (>= 0)")
            if has_data:
                raise InvalidArgument(tfield, "both data and binary_data_size: send one")
            if at + size > len(binary):
                raise InvalidArgument(
                    f"{tfield}.binary_data_size",
                    f"{size} bytes from offset {at}, but the binary data after the JSON "
                    f"header holds {len(binary)} bytes",
                )
            dtype = V2_NUMPY.get(datatype)
            if dtype is not None and size != count * dtype.itemsize:
                raise InvalidArgument(
                    tfield,
                    f"{size} bytes for shape {shape} of {datatype} "
                    f"({count * dtype.itemsize} expected)",
                )
            raw = binary[at : at + size]
            at += size
        elif has_data:
            flat = _flatten(tfield, tensor["data"], count)
            if len(flat) != count:
                shown = f"more than {count}" if len(flat) > count else str(len(flat))
                raise InvalidArgument(
                    tfield, f"{shown} elements in data for shape {shape} ({count} expected)"
                )
            raw = _typed_bytes(tfield, datatype, flat)
        else:
            raise InvalidArgument(tfield, "no data (give data, or binary_data_size)")
        req.inputs.add(name=tname, datatype=datatype, shape=shape)
        req.raw_input_contents.append(raw)
    if at != len(binary):
        raise InvalidArgument(
            HEADER_LENGTH,
            f"{len(binary)} bytes of binary data follow the JSON header, but the inputs' "
            f"binary_data_size add up to {at}",
        )
    binary_out: dict[str, bool] = {}
    outputs = _list("outputs", doc.get("outputs", []))
    for i, item in enumerate(outputs):
        tensor = _object(f"outputs[{i}]", item)
        oname = _str(f"outputs[{i}].name", tensor.get("name"))
        ofield = f"outputs.{clip(oname, quote=False)}"
        oparams = _object(f"{ofield}.parameters", tensor.get("parameters", {}))
        if "classification" in oparams:
            raise InvalidArgument(ofield, "the classification extension is not supported")
        if "shared_memory_region" in oparams:
            raise InvalidArgument(ofield, "shared memory is not supported")
        want = oparams.get("binary_data", binary_default)
        if not isinstance(want, bool):
            raise InvalidArgument(f"{ofield}.binary_data", "true or false")
        if oname in binary_out:
            raise InvalidArgument(ofield, "requested twice")
        binary_out[oname] = want
        req.outputs.add(name=oname)
    return req, Wanted(binary_out, binary_default, timeout_s)


# -- response: ModelInferResponse -> JSON (+ binary) -------------------------------------------


def _output_raw(res: Any, i: int, out: Any) -> bytes:
    """The raw bytes of output ``i`` (the answer is raw: every input was sent raw; typed
    contents only for a request without inputs)."""
    if len(res.raw_output_contents) > i:
        return bytes(res.raw_output_contents[i])
    contents = out.contents
    if out.datatype == "BYTES":
        return b"".join(_LENGTH.pack(len(b)) + b for b in contents.bytes_contents)
    for name in _TYPED:
        values = getattr(contents, name)
        if len(values):
            return np.asarray(values, V2_NUMPY[out.datatype]).tobytes()
    return b""


def infer_reply(res: Any, wanted: Wanted) -> Reply:
    """The HTTP answer of a ``ModelInferResponse``: JSON, then the binary outputs."""
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for i, out in enumerate(res.outputs):
        raw = _output_raw(res, i, out)
        entry: dict[str, Any] = {
            "name": out.name,
            "datatype": out.datatype,
            "shape": list(out.shape),
        }
        binary = wanted.binary.get(out.name, wanted.binary_default)
        if not binary:
            if out.datatype == "BYTES":
                try:
                    items = split_bytes(f"outputs.{out.name}", raw, math.prod(out.shape))
                    entry["data"] = [item.decode() for item in items]
                except UnicodeDecodeError:
                    binary = True  # not text: only the binary form can carry it
            else:
                entry["data"] = np.frombuffer(raw, V2_NUMPY[out.datatype]).tolist()
        if binary:
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": res.model_name, "model_version": res.model_version}
    if res.id:
        doc["id"] = res.id
    doc["parameters"] = {k: _param_value(v) for k, v in res.parameters.items()}
    doc["outputs"] = outputs
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return Reply(200, header)
    return Reply(
        200,
        b"".join([header, *chunks]),
        [(HEADER_LENGTH, str(len(header)))],
        "application/octet-stream",
    )


# -- the WSGI application -----------------------------------------------------------------------


def _path(environ: Mapping[str, Any]) -> str:
    """PATH_INFO as text (WSGI hands it over as latin-1-decoded bytes)."""
    raw = str(environ.get("PATH_INFO", ""))
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


def _headers(environ: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The request's HTTP headers as (lowercase-hyphenated name, value)."""
    return [
        (key[5:].lower().replace("_", "-"), str(value))
        for key, value in environ.items()
        if key.startswith("HTTP_")
    ]


class RestV2:
    """WSGI application of the REST V2 binding over an ``OipService`` (module docstring).

    It runs on the HTTP server's threads; the node's state is read, and requests served,
    on ``loop`` (the node's event loop)."""

    def __init__(
        self,
        oip: OipService,
        loop: asyncio.AbstractEventLoop,
        *,
        max_body_bytes: int,
        default_deadline_s: float,
        in_flight: InFlight | None = None,
    ) -> None:
        self.oip = oip
        self.loop = loop
        self.max_body_bytes = max_body_bytes
        self.default_deadline_s = default_deadline_s
        self.in_flight = in_flight
        """The node's count of requests in flight: a drain waits for REST requests too."""

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            reply = self.handle(environ)
        except HttpError as exc:
            reply = error_reply(exc.status, exc.message, exc.headers)
        except RequestError as exc:
            reply = error_reply(http_status(exc.status), exc.message)
        except GRPCError as exc:
            reply = error_reply(http_status(exc.status), str(exc.message or exc.status.name))
        except Exception:
            ref = uuid.uuid4().hex[:12]
            log.exception("REST V2 %s failed (ref %s)", clip(_path(environ), 128), ref)
            reply = error_reply(500, f"internal error (node log ref {ref})")
        headers = [("Content-Type", reply.content_type), *reply.headers]
        headers.append(("Content-Length", str(len(reply.body))))
        start_response(f"{reply.status} {_REASONS.get(reply.status, 'Error')}", headers)
        return [reply.body]

    def handle(self, environ: dict[str, Any]) -> Reply:
        path = _path(environ).rstrip("/") or "/"
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        if path in ("/v2/health/live", "/v2/health/ready", "/v2"):
            self._method(method, "GET")
            if path == "/v2/health/live":
                return Reply(200)
            if path == "/v2/health/ready":
                ok, why = self.oip.readiness()
                return Reply(200) if ok else error_reply(503, why)
            return json_reply(
                200, {"name": PLATFORM, "version": VERSION, "extensions": list(EXTENSIONS)}
            )
        m = _MODEL_PATH.match(path)
        if m is None:
            raise NotFound(f"no such path {clip(path, 128)}")
        name, version = m.group("name"), m.group("version") or ""
        action = m.group("action")
        if action == "infer":
            self._method(method, "POST")
            return self.infer(environ, name, version)
        self._method(method, "GET")
        if action is None:
            return json_reply(200, self._on_loop(self._metadata(name, version), None))
        if action == "ready":
            self._on_loop(self._known(name, version), None)  # 404 when unknown
            ok, why = self.oip.readiness()
            return Reply(200) if ok else error_reply(503, why)
        if action == "config":
            return json_reply(200, self._on_loop(self._config(name, version), None))
        raise NotFound(f"no such path {clip(path, 128)} (model actions: ready, config, infer)")

    @staticmethod
    def _method(method: str, allowed: str) -> None:
        if method != allowed:
            raise HttpError(
                405, f"{clip(method)} is not allowed here: use {allowed}", [("Allow", allowed)]
            )

    # -- metadata (on the loop: it reads the node's catalog) ------------------------------

    async def _known(self, name: str, version: str) -> None:
        self.oip._target(name, version)

    async def _metadata(self, name: str, version: str) -> dict[str, Any]:
        target, manifest = self.oip._target(name, version)
        config = self.oip.runtime.objectives[target.objective]
        keys = [target.override] if target.override else sorted(config.model_keys())

        def tensors(specs: Iterable[Any]) -> list[dict[str, Any]]:
            metas = (tensor_meta(s) for s in specs)
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in metas]

        return {
            "name": name,
            "versions": [k.rpartition("@")[2] for k in keys],
            "platform": PLATFORM,
            "inputs": tensors(manifest.inputs),
            "outputs": tensors(manifest.outputs),
        }

    async def _config(self, name: str, version: str) -> dict[str, Any]:
        _, manifest = self.oip._target(name, version)
        config: dict[str, Any] = MessageToDict(
            model_config_of(name, manifest), preserving_proto_field_name=True
        )
        # proto3 JSON writes int64 as strings; Triton's model configuration JSON has numbers.
        config["max_batch_size"] = int(config.get("max_batch_size", 0))
        for tensor in (*config.get("input", ()), *config.get("output", ())):
            tensor["dims"] = [int(d) for d in tensor.get("dims", ())]
        return config

    # -- inference --------------------------------------------------------------------------

    def infer(self, environ: dict[str, Any], name: str, version: str) -> Reply:
        body = self._body(environ)
        header_length = environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH")
        req, wanted = infer_request(name, version, body, header_length)
        client = str(environ.get("REMOTE_ADDR", "?"))
        agent = environ.get("HTTP_USER_AGENT")
        if agent:
            client = f"{client} ({str(agent)[:128]})"
        coro = self._infer(req, _headers(environ), wanted.timeout_s, client)
        answer = self._on_loop(coro, wanted.timeout_s)
        # Formatting the answer needs nothing of the node's: done here, off the loop.
        return infer_reply(self.oip.translator.response(answer), wanted)

    async def _infer(
        self, req: Any, headers: list[tuple[str, str]], timeout_s: float | None, client: str
    ) -> bytes:
        predict = self.oip.translator.request(req, headers)
        call = self.oip.runtime.ingress.predict(predict, timeout_s, client)
        return await (call if self.in_flight is None else self.in_flight.run(call))

    def _on_loop(self, coro: Coroutine[Any, Any, T], timeout_s: float | None) -> T:
        """Run ``coro`` on the node's loop; wait at most the deadline and a grace."""
        wait_s = (self.default_deadline_s if timeout_s is None else timeout_s) + LOOP_GRACE_S
        if self.loop.is_closed():
            coro.close()
            raise Unavailable("node is stopping")
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:  # the loop closed meanwhile
            coro.close()
            raise Unavailable("node is stopping") from None
        try:
            return future.result(wait_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise DeadlineExceeded(f"no answer within {wait_s:g}s") from None
        except concurrent.futures.CancelledError:
            raise Unavailable("request cancelled: the node is stopping") from None

    def _body(self, environ: dict[str, Any]) -> bytes:
        """The request body: at most ``max_body_bytes`` (also once decompressed)."""
        limit = self.max_body_bytes
        length_text = str(environ.get("CONTENT_LENGTH") or "").strip()
        if not length_text:
            raise HttpError(411, "send Content-Length (chunked request bodies are not supported)")
        try:
            length = int(length_text)
        except ValueError:
            raise HttpError(400, f"Content-Length {clip(length_text)} is not a number") from None
        if length < 0:
            raise HttpError(400, "Content-Length is negative")
        stream = environ["wsgi.input"]
        if length > limit:
            if length <= MAX_DRAIN_FACTOR * limit:  # read it, so the client sees the answer
                _drain(stream, length)
            raise HttpError(413, f"request body of {length} bytes is over {limit} bytes")
        try:
            body = bytes(stream.read(length))
        except OSError:
            raise HttpError(400, "could not read the request body") from None
        if len(body) != length:
            raise HttpError(400, f"body of {len(body)} bytes, Content-Length says {length}")
        encoding = str(environ.get("HTTP_CONTENT_ENCODING") or "identity").strip().lower()
        if encoding == "identity":
            return body
        if encoding not in ("gzip", "deflate"):
            raise HttpError(415, f"Content-Encoding {clip(encoding)}: send gzip, deflate or none")
        # gzip: a gzip header; deflate: a zlib stream (as tritonclient sends), or bare deflate.
        wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
        if encoding == "deflate" and body[:1] and (body[0] & 0x0F) != 8:
            wbits = -zlib.MAX_WBITS
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise HttpError(400, f"body is not valid {encoding}: {exc}") from None
        if len(out) > limit:
            raise HttpError(413, f"decompressed request body is over {limit} bytes")
        if not inflater.eof:
            raise HttpError(400, f"body is not valid {encoding}: cut short")
        return out


def _drain(stream: Any, length: int) -> None:
    left = length
    try:
        while left > 0:
            chunk = stream.read(min(left, 1 << 16))
            if not chunk:
                return
            left -= len(chunk)
    except OSError:
        return


__all__ = ["RestV2", "infer_reply", "infer_request"]
