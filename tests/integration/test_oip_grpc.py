"""The Open Inference Protocol (V2) over gRPC, through clients nobody here wrote.

``tritonclient.grpc`` (NVIDIA's) reads a node's readiness, metadata and Triton model
configuration and calls both example objectives with raw tensors; its generated stub sends
typed ``contents``; grpcio sends 10 000 malformed requests. The answers equal ``Predict``'s
for the same user; every malformed request gets a clean error and the node keeps serving.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.grpc import service_pb2 as tpb
from tritonclient.grpc import service_pb2_grpc as tstub
from tritonclient.utils import InferenceServerException

from shardline.node.sdk.client import Client
from tests.integration.test_standalone_node import metric
from tests.procs import NodeProcess, eventually

pytestmark = pytest.mark.integration

FRAUD: dict[str, tuple[str, np.ndarray]] = {
    "amount": ("FP32", np.array([120.5], np.float32)),
    "currency": ("BYTES", np.array([b"EUR"], object)),
    "country_mismatch": ("BOOL", np.array([True])),
    "account_age_days": ("FP32", np.array([3.0], np.float32)),
    "tx_last_24h": ("INT64", np.array([9], np.int64)),
    "card_present": ("BOOL", np.array([False])),
}
FRAUD_PREDICT: dict[str, Any] = {
    "amount": np.float32(120.5),
    "currency": "EUR",
    "country_mismatch": True,
    "account_age_days": np.float32(3.0),
    "tx_last_24h": np.int64(9),
    "card_present": False,
}
CANDIDATES = np.array([1, 5, 9, 12, 40, 77, 300], np.int64)
INFER = "/inference.GRPCInferenceService/ModelInfer"
_CONTENTS = {
    "FP32": "fp32_contents",
    "BYTES": "bytes_contents",
    "BOOL": "bool_contents",
    "INT64": "int64_contents",
}


def _inputs(values: dict[str, tuple[str, np.ndarray]]) -> list[tg.InferInput]:
    out = []
    for name, (datatype, array) in values.items():
        tensor = tg.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        out.append(tensor)
    return out


def test_readiness_metadata_and_model_config(node: NodeProcess) -> None:
    client = tg.InferenceServerClient(node.target)
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "shardline" and "model_configuration" in meta["extensions"]
    assert client.is_model_ready("payment_fraud")
    assert client.is_model_ready("payment_fraud", "2")  # a version the objective routes to
    assert not client.is_model_ready("no_such_objective")
    model = client.get_model_metadata("payment_fraud", as_json=True)
    assert model["platform"] == "shardline" and sorted(model["versions"]) == ["1", "2"]
    shapes = {t["name"]: (t["datatype"], t["shape"]) for t in model["inputs"]}
    assert shapes["amount"] == ("FP32", ["1"])  # a scalar: a batch of one
    assert shapes["currency"] == ("BYTES", ["1"])
    ranking = client.get_model_metadata("continue_watching_ranking", as_json=True)
    assert {t["name"]: t["shape"] for t in ranking["inputs"]}["candidates"] == ["-1"]
    config = client.get_model_config("payment_fraud", as_json=True)["config"]
    assert config["name"] == "payment_fraud" and config.get("max_batch_size", 0) == 0
    assert {i["name"]: i["data_type"] for i in config["input"]}["tx_last_24h"] == "TYPE_INT64"
    with pytest.raises(InferenceServerException, match="no_such_objective"):
        client.get_model_metadata("no_such_objective")


async def test_raw_tensors_answer_as_predict_does_for_the_same_user(node: NodeProcess) -> None:
    client = tg.InferenceServerClient(node.target)
    users = [f"oip-{i}" for i in range(40)]
    async with Client(node.target) as predict:
        for user in users:
            v2 = client.infer("payment_fraud", _inputs(FRAUD), parameters={"user_id": user})
            want = await predict.predict("payment_fraud", FRAUD_PREDICT, user_id=user)
            params = v2.get_response().parameters
            assert params["shardline.model_key"].string_param == want.model_key
            assert params["shardline.cell"].string_param == want.cell
            assert params["shardline.hops"].int64_param == 0
            assert v2.get_response().model_version == want.model_key.rpartition("@")[2]
            probability = v2.as_numpy("probability")
            assert probability.shape == (1,)  # the batch of one comes back on the outputs
            assert float(probability[0]) == pytest.approx(
                float(want.outputs["probability"]), rel=1e-5, abs=1e-6
            )
            assert v2.as_numpy("decision")[0].decode() == str(want.outputs["decision"])
        # The canary share is the objective's, so V2 clients see the same A/B and canary.
        keys = Counter(
            client.infer("payment_fraud", _inputs(FRAUD), parameters={"user_id": f"c{i}"})
            .get_response()
            .parameters["shardline.model_key"]
            .string_param
            for i in range(200)
        )
        assert set(keys) <= {"payment_fraud@1", "payment_fraud@2"} and keys["payment_fraud@1"]


async def test_ranking_with_a_batch_dimension_and_requested_outputs(node: NodeProcess) -> None:
    client = tg.InferenceServerClient(node.target)
    inputs = _inputs(
        {"candidates": ("INT64", CANDIDATES[None, :]), "k": ("INT64", np.array([3], np.int64))}
    )
    v2 = client.infer(
        "continue_watching_ranking",
        inputs,
        outputs=[tg.InferRequestedOutput("title_ids")],
        headers={"user-id": "r-1", "country": "US", "device": "web"},
    )
    ids = v2.as_numpy("title_ids")
    assert ids.shape == (1, 3) and v2.as_numpy("scores") is None
    async with Client(node.target) as predict:
        want = await predict.predict(
            "continue_watching_ranking",
            {"candidates": CANDIDATES, "k": np.int64(3)},
            user_id="r-1",
            country="US",
            device="web",
        )
    assert ids[0].tolist() == want.outputs["title_ids"].tolist()
    assert v2.get_response().parameters["shardline.model_key"].string_param == want.model_key


def test_model_version_is_an_override_and_a_model_name_needs_one(node: NodeProcess) -> None:
    client = tg.InferenceServerClient(node.target)
    v2 = client.infer("payment_fraud", _inputs(FRAUD), model_version="2")
    assert v2.get_response().parameters["shardline.model_key"].string_param == "payment_fraud@2"
    ranking = {"candidates": ("INT64", CANDIDATES)}
    by_model = client.infer("title_ranking", _inputs(ranking), model_version="2")
    response = by_model.get_response()
    assert response.parameters["shardline.model_key"].string_param == "title_ranking@2"
    with pytest.raises(InferenceServerException, match="model_version"):
        client.infer("title_ranking", _inputs(ranking))
    with pytest.raises(InferenceServerException, match="no model version '7'"):
        client.infer("payment_fraud", _inputs(FRAUD), model_version="7")


def test_typed_contents_and_converted_datatypes(node: NodeProcess) -> None:
    """tritonclient's generated stub with typed ``contents`` (no raw tensors)."""
    with grpc.insecure_channel(node.target) as channel:
        stub = tstub.GRPCInferenceServiceStub(channel)
        request = tpb.ModelInferRequest(model_name="payment_fraud", id="typed-1")
        request.parameters["user_id"].string_param = "typed-user"

        def add(name: str, datatype: str, field: str, values: list[Any]) -> None:
            tensor = request.inputs.add(name=name, datatype=datatype, shape=[1])
            getattr(tensor.contents, field).extend(values)

        add("amount", "FP32", "fp32_contents", [120.5])
        add("currency", "BYTES", "bytes_contents", [b"EUR"])
        add("country_mismatch", "BOOL", "bool_contents", [True])
        add("account_age_days", "FP32", "fp32_contents", [3.0])
        add("tx_last_24h", "INT16", "int_contents", [9])  # INT16 -> the declared int64
        add("card_present", "BOOL", "bool_contents", [False])
        answer = stub.ModelInfer(request)
        assert answer.id == "typed-1" and not answer.raw_output_contents
        outputs = {o.name: o for o in answer.outputs}
        assert list(outputs["probability"].shape) == [1]
        raw = tg.InferenceServerClient(node.target).infer(
            "payment_fraud", _inputs(FRAUD), parameters={"user_id": "typed-user"}
        )
        assert outputs["probability"].contents.fp32_contents[0] == pytest.approx(
            float(raw.as_numpy("probability")[0]), rel=1e-5, abs=1e-6
        )
        assert outputs["decision"].contents.bytes_contents[0] == raw.as_numpy("decision")[0]
        lossy = tpb.ModelInferRequest()
        lossy.CopyFrom(request)
        lossy.inputs[0].datatype = "FP64"  # float64 -> float32 loses precision: refused
        lossy.inputs[0].contents.Clear()
        lossy.inputs[0].contents.fp64_contents.append(120.5)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(lossy)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "inputs.amount" in (err.value.details() or "")


# -- 10 000 malformed requests -----------------------------------------------------------


def _valid() -> tpb.ModelInferRequest:
    request = tpb.ModelInferRequest(model_name="payment_fraud")
    request.parameters["user_id"].string_param = "hostile"
    for name, (datatype, array) in FRAUD.items():
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if datatype == "BYTES":
            raw = b"".join(len(x).to_bytes(4, "little") + x for x in array.tolist())
        else:
            raw = array.tobytes()
        request.raw_input_contents.append(raw)
    return request


def _mutations() -> list[Callable[[tpb.ModelInferRequest, random.Random], bytes | None]]:
    def datatype(r: tpb.ModelInferRequest, rng: random.Random) -> None:
        r.inputs[rng.randrange(6)].datatype = rng.choice(
            ["FP8", "fp32", "", "STRING", "X" * rng.randrange(1, 5000), "BF16", "FP16", "UINT64"]
        )

    def shape_mismatch(r: tpb.ModelInferRequest, rng: random.Random) -> None:
        i = rng.choice([0, 3, 4])  # a numeric input
        del r.inputs[i].shape[:]
        r.inputs[i].shape.extend(rng.choice([[2], [1, 1, 3], [0], [5, 7]]))

    def truncated(r: tpb.ModelInferRequest, rng: random.Random) -> None:
        i = rng.randrange(6)
        data = r.raw_input_contents[i]
        r.raw_input_contents[i] = data[: rng.randrange(len(data))] if data else b"\x01"

    def bytes_prefix(r: tpb.ModelInferRequest, rng: random.Random) -> None:
        r.raw_input_contents[1] = rng.choice(
            [b"\xff\xff\xff\x7fEUR", b"\x03\x00", b"\x02\x00\x00\x00\xff\xfe", b"\x00" * 9]
        )

    def unknown_model(r: tpb.ModelInferRequest, rng: random.Random) -> None:
        r.model_name = rng.choice(["nope", "", "payment_fraud/1", "x" * 10_000])
        if rng.random() < 0.5:
            r.model_version = rng.choice(["9", "payment_fraud@9", "title_ranking@1", "@"])

    def huge_shape(r: tpb.ModelInferRequest, rng: random.Random) -> None:
        i = rng.randrange(6)
        del r.inputs[i].shape[:]
        r.inputs[i].shape.extend(rng.choice([[2**62], [2**31, 2**31], [-1], [-(2**63)], [1] * 40]))

    def raw_count(r: tpb.ModelInferRequest, rng: random.Random) -> None:
        if rng.random() < 0.5:
            del r.raw_input_contents[rng.randrange(6)]
        else:
            r.raw_input_contents.append(b"\x00" * rng.randrange(64))

    def contents_and_raw(r: tpb.ModelInferRequest, rng: random.Random) -> None:
        del r.raw_input_contents[:]  # typed contents that do not match the shapes
        for t in r.inputs:
            t.contents.fp32_contents.extend([1.0] * rng.randrange(0, 4))

    def overflow(r: tpb.ModelInferRequest, rng: random.Random) -> None:
        r.inputs[4].datatype = "INT8"  # typed contents that do not fit the declared INT8
        r.inputs[4].contents.int_contents.append(rng.choice([300, -1000, 2**31 - 1]))
        del r.raw_input_contents[:]
        for t, (_, array) in zip(r.inputs, FRAUD.values(), strict=True):
            if t.name != "tx_last_24h":
                getattr(t.contents, _CONTENTS[t.datatype]).extend(array.tolist())

    def outputs(r: tpb.ModelInferRequest, rng: random.Random) -> None:
        r.outputs.add(name=rng.choice(["nope", "", "p" * 3000]))

    def values(r: tpb.ModelInferRequest, rng: random.Random) -> None:
        r.raw_input_contents[0] = np.float32(rng.choice([-5.0, np.nan, np.inf, 1e30])).tobytes()

    def garbage(r: tpb.ModelInferRequest, rng: random.Random) -> bytes:
        data = bytearray(r.SerializeToString())
        for _ in range(rng.randrange(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data[: rng.randrange(1, len(data))]) + b"\xff\xff\xff"

    def many_inputs(r: tpb.ModelInferRequest, rng: random.Random) -> None:
        for i in range(rng.choice([257, 1000])):
            r.inputs.add(name=f"extra{i}", datatype="FP32", shape=[1])
            r.raw_input_contents.append(b"\x00\x00\x80?")

    def context(r: tpb.ModelInferRequest, rng: random.Random) -> None:
        r.parameters[rng.choice(["user_id", "country", "attr.k"])].string_param = "u" * 20_000
        r.raw_input_contents[0] = b""  # and a missing tensor, in case the limit is raised

    return [
        datatype, shape_mismatch, truncated, bytes_prefix, unknown_model, huge_shape,
        raw_count, contents_and_raw, overflow, outputs, values, garbage, many_inputs, context,
    ]  # fmt: skip


async def test_ten_thousand_malformed_requests_get_clean_errors(node: NodeProcess) -> None:
    rng = random.Random(17)
    mutations = _mutations()
    template = _valid()
    statuses: Counter[str] = Counter()
    by_mutation: dict[str, Counter[str]] = {}
    unclean: list[str] = []
    async with grpc.aio.insecure_channel(
        node.target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as channel:
        call = channel.unary_unary(INFER)
        valid = template.SerializeToString()
        assert isinstance(await call(valid, timeout=30), bytes)  # the template is valid
        limit = asyncio.Semaphore(32)

        async def one(i: int) -> None:
            mutate = mutations[i % len(mutations)]
            request = tpb.ModelInferRequest()
            request.CopyFrom(template)
            data = mutate(request, rng)
            payload = data if isinstance(data, bytes) else request.SerializeToString()
            async with limit:
                try:
                    await call(payload, timeout=30)
                    code, details = grpc.StatusCode.OK, ""
                except grpc.aio.AioRpcError as exc:
                    code, details = exc.code(), exc.details() or ""
            statuses[code.name] += 1
            by_mutation.setdefault(mutate.__name__, Counter())[code.name] += 1
            if code not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND) or (
                len(details) > 2048
            ):
                unclean.append(f"{mutate.__name__}: {code.name}: {details[:300]}")

        await asyncio.gather(*(one(i) for i in range(10_000)))
        after = await call(valid, timeout=30)  # still serving
    assert isinstance(after, bytes)
    assert sum(statuses.values()) == 10_000
    assert not unclean, f"{len(unclean)} unclean answers, e.g. {unclean[:5]}; {by_mutation}"
    assert node.proc.poll() is None


def test_v2_requests_are_counted_and_shadowed_as_predicts_are(node: NodeProcess) -> None:
    """One request path: V2 requests show in the same request and shadow metrics."""
    client = tg.InferenceServerClient(node.target)
    before = node.metrics_text()
    for i in range(20):
        client.infer("shadow_all", _inputs(FRAUD), parameters={"user_id": f"sh-{i}"})

    def counted() -> str | None:
        text = node.metrics_text()
        shadows = metric(text, "shardline_shadow_requests_total", model_key="payment_fraud@2")
        done = shadows - metric(
            before, "shardline_shadow_requests_total", model_key="payment_fraud@2"
        )
        return text if done >= 20 else None

    text = asyncio.run(eventually(counted))
    served = metric(text, "shardline_requests_total", objective="shadow_all", code="OK")
    assert (
        served - metric(before, "shardline_requests_total", objective="shadow_all", code="OK") == 20
    )
