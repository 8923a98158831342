"""REST V2 (KServe / Triton HTTP) on a real node's HTTP port.

Called by ``tritonclient.http`` (a client nobody here wrote: binary tensor data by
default) and by plain HTTP requests as ``curl`` sends them; every answer is compared with
the ``Predict`` answer for the same user over gRPC. Malformed requests each get a clean
4xx JSON error, and the node keeps serving.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import random
import socket
import struct
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from shardline.node.sdk.client import Client, Prediction
from tests.procs import NodeProcess

pytestmark = pytest.mark.integration

FRAUD: dict[str, Any] = {
    "amount": 912.5,
    "currency": "USD",
    "country_mismatch": True,
    "account_age_days": 3.0,
    "tx_last_24h": 9,
    "card_present": False,
}
# name -> (V2 datatype, numpy dtype): the example's inputs, each sent as shape [1].
FRAUD_V2 = {
    "amount": ("FP32", np.float32),
    "currency": ("BYTES", np.object_),
    "country_mismatch": ("BOOL", np.bool_),
    "account_age_days": ("FP32", np.float32),
    "tx_last_24h": ("INT64", np.int64),
    "card_present": ("BOOL", np.bool_),
}
CANDIDATES = [1, 5, 9, 12, 40, 77, 101, 230]
PROVENANCE = ("shardline.model_key", "shardline.cell", "shardline.node_id", "shardline.hops")


def triton_client(node: NodeProcess) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(f"127.0.0.1:{node.metrics_port}", network_timeout=30.0)


def predict(node: NodeProcess, objective: str, inputs: Mapping[str, Any], **kw: Any) -> Prediction:
    """The shardline.v1 Predict answer over gRPC (the reference)."""

    async def call() -> Prediction:
        async with Client(node.target) as client:
            return await client.predict(objective, inputs, **kw)

    return asyncio.run(call())


def request(
    node: NodeProcess,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", node.metrics_port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, resp, resp.read()
    finally:
        conn.close()


def post_json(node: NodeProcess, path: str, doc: Any, **headers: str) -> tuple[int, Any]:
    status, _, body = request(node, "POST", path, json.dumps(doc).encode(), headers)
    return status, json.loads(body)


def fraud_inputs(binary: bool) -> list[triton.InferInput]:
    inputs = []
    for name, (datatype, dtype) in FRAUD_V2.items():
        value = FRAUD[name].encode() if datatype == "BYTES" else FRAUD[name]
        tensor = triton.InferInput(name, [1], datatype)
        tensor.set_data_from_numpy(np.array([value], dtype=dtype), binary_data=binary)
        inputs.append(tensor)
    return inputs


def fraud_json() -> dict[str, Any]:
    return {
        "inputs": [
            {"name": name, "shape": [1], "datatype": datatype, "data": [FRAUD[name]]}
            for name, (datatype, _) in FRAUD_V2.items()
        ]
    }


def test_health_metadata_and_config(node: NodeProcess) -> None:
    client = triton_client(node)
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "shardline"
    assert {"binary_tensor_data", "model_configuration"} <= set(meta["extensions"])

    fraud = client.get_model_metadata("payment_fraud")
    assert fraud["name"] == "payment_fraud" and fraud["versions"] == ["1", "2"]
    got = {t["name"]: (t["datatype"], t["shape"]) for t in fraud["inputs"]}
    assert got == {name: (dt, [1]) for name, (dt, _) in FRAUD_V2.items()}
    assert {t["name"]: t["datatype"] for t in fraud["outputs"]} == {
        "probability": "FP32",
        "decision": "BYTES",
    }
    ranking = client.get_model_metadata("continue_watching_ranking")
    assert {t["name"]: (t["datatype"], t["shape"]) for t in ranking["inputs"]} == {
        "candidates": ("INT64", [-1]),
        "k": ("INT64", [1]),
    }
    pinned = client.get_model_metadata("payment_fraud", model_version="2")
    assert pinned["versions"] == ["2"]

    config = client.get_model_config("continue_watching_ranking")
    assert config["name"] == "continue_watching_ranking" and config["max_batch_size"] == 0
    dims = {t["name"]: (t["data_type"], t["dims"]) for t in config["input"]}
    assert dims == {"candidates": ("TYPE_INT64", [-1]), "k": ("TYPE_INT64", [1])}
    assert [t["name"] for t in config["output"]] == ["title_ids", "scores"]

    assert client.is_model_ready("payment_fraud")
    assert client.is_model_ready("payment_fraud", model_version="2")
    assert not client.is_model_ready("no_such_objective")
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("no_such_objective")
    assert err.value.status() == "404" and "unknown model" in err.value.message()

    status, _, body = request(node, "GET", "/v2/health/ready")
    assert (status, body) == (200, b"")
    assert request(node, "GET", "/v2/health/live")[0] == 200
    status, _, body = request(node, "GET", "/v2/models/nope/ready")
    assert status == 404 and "unknown model" in json.loads(body)["error"]


@pytest.mark.parametrize(
    ("binary_in", "binary_out"), [(True, True), (False, False), (True, False), (False, True)]
)
def test_fraud_from_tritonclient_equals_predict(
    node: NodeProcess, binary_in: bool, binary_out: bool
) -> None:
    client = triton_client(node)
    users = [f"rest-{i}" for i in range(12)]
    for user in users:
        outputs = [
            triton.InferRequestedOutput("probability", binary_data=binary_out),
            triton.InferRequestedOutput("decision", binary_data=binary_out),
        ]
        result = client.infer(
            "payment_fraud",
            fraud_inputs(binary_in),
            outputs=outputs,
            parameters={"user_id": user, "country": "US"},
        )
        want = predict(node, "payment_fraud", FRAUD, user_id=user, country="US")
        answer = result.get_response()
        params = answer["parameters"]
        assert all(key in params for key in PROVENANCE), params
        assert params["shardline.model_key"] == want.model_key
        assert params["shardline.cell"] == want.cell
        assert params["shardline.node_id"] == want.node_id and params["shardline.hops"] == 0
        assert answer["model_version"] == want.model_key.rpartition("@")[2]
        # Inputs came as a batch of one ([1]): so do the outputs.
        probability = result.as_numpy("probability")
        assert probability is not None and probability.shape == (1,)
        assert probability[0] == pytest.approx(float(want.outputs["probability"]), abs=1e-5)
        decision = result.as_numpy("decision")
        assert decision is not None
        text = decision[0].decode() if isinstance(decision[0], bytes) else decision[0]
        assert text == str(want.outputs["decision"])
        for out in answer["outputs"]:
            assert ("binary_data_size" in out.get("parameters", {})) == binary_out, out


def test_all_outputs_binary_by_default_and_version_override(node: NodeProcess) -> None:
    client = triton_client(node)
    # No outputs named: tritonclient asks for every output in binary (binary_data_output).
    result = client.infer(
        "payment_fraud", fraud_inputs(True), model_version="2", parameters={"user_id": "u1"}
    )
    answer = result.get_response()
    assert answer["parameters"]["shardline.model_key"] == "payment_fraud@2"
    assert [o["name"] for o in answer["outputs"]] == ["probability", "decision"]
    assert all("binary_data_size" in o["parameters"] for o in answer["outputs"])
    want = predict(node, "payment_fraud", FRAUD, user_id="u1", model_override="payment_fraud@2")
    got = result.as_numpy("probability")
    assert got is not None
    assert got[0] == pytest.approx(float(want.outputs["probability"]), abs=1e-5)


@pytest.mark.parametrize("binary", [True, False])
def test_ranking_from_tritonclient_equals_predict(node: NodeProcess, binary: bool) -> None:
    client = triton_client(node)
    # Context from HTTP headers: Brazil TV devices run the two-tower model (a rule).
    cases = [
        ({"user-id": "u7", "country": "US", "device": "web"}, {"country": "US", "device": "web"}),
        ({"user-id": "u8", "country": "BR", "device": "tv"}, {"country": "BR", "device": "tv"}),
    ]
    for headers, context in cases:
        for k in (None, 3):
            candidates = triton.InferInput("candidates", [len(CANDIDATES)], "INT64")
            candidates.set_data_from_numpy(np.array(CANDIDATES, np.int64), binary_data=binary)
            inputs = [candidates]
            if k is not None:
                tensor = triton.InferInput("k", [1], "INT64")
                tensor.set_data_from_numpy(np.array([k], np.int64), binary_data=binary)
                inputs.append(tensor)
            outputs = [
                triton.InferRequestedOutput(name, binary_data=binary)
                for name in ("title_ids", "scores")
            ]
            result = client.infer(
                "continue_watching_ranking", inputs, outputs=outputs, headers=headers
            )
            sent = {"candidates": np.array(CANDIDATES, np.int64)}
            if k is not None:
                sent["k"] = np.int64(k)
            want = predict(
                node, "continue_watching_ranking", sent, user_id=headers["user-id"], **context
            )
            params = result.get_response()["parameters"]
            assert params["shardline.model_key"] == want.model_key
            if context["country"] == "BR":
                assert want.model_key == "title_ranking@2"
            ids, scores = result.as_numpy("title_ids"), result.as_numpy("scores")
            assert ids is not None and scores is not None
            np.testing.assert_array_equal(ids.reshape(-1), want.outputs["title_ids"])
            np.testing.assert_allclose(scores.reshape(-1), want.outputs["scores"], atol=1e-5)


def test_curl_style_json(node: NodeProcess) -> None:
    # A JSON body with nested data, context from the parameters and an attribute header.
    doc = {
        "id": "curl-1",
        "parameters": {"user_id": "u7", "country": "US"},
        "inputs": [
            {"name": "candidates", "shape": [2, 4], "datatype": "INT64",
             "data": [CANDIDATES[:4], CANDIDATES[4:]]},
            {"name": "k", "shape": [], "datatype": "INT64", "data": 4},
        ],
    }  # fmt: skip
    # [2, 4] is not the model's [-1]: refused, naming the tensor.
    status, answer = post_json(node, "/v2/models/continue_watching_ranking/infer", doc)
    assert status == 400 and "candidates" in answer["error"]
    doc["inputs"][0]["shape"] = [8]
    status, answer = post_json(
        node, "/v2/models/continue_watching_ranking/infer", doc, **{"attr-plan": "basic"}
    )
    assert status == 200, answer
    assert answer["id"] == "curl-1" and answer["model_name"] == "continue_watching_ranking"
    want = predict(
        node,
        "continue_watching_ranking",
        {"candidates": np.array(CANDIDATES, np.int64), "k": np.int64(4)},
        user_id="u7",
        country="US",
    )
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["title_ids"]["datatype"] == "INT64" and outputs["title_ids"]["shape"] == [4]
    assert outputs["title_ids"]["data"] == want.outputs["title_ids"].tolist()
    np.testing.assert_allclose(outputs["scores"]["data"], want.outputs["scores"], atol=1e-5)

    # Fraud: BYTES as JSON strings, in and out; a gzip-compressed body.
    body = gzip.compress(json.dumps({**fraud_json(), "parameters": {"user_id": "u3"}}).encode())
    status, _, raw = request(
        node, "POST", "/v2/models/payment_fraud/infer", body, {"Content-Encoding": "gzip"}
    )
    assert status == 200, raw
    answer = json.loads(raw)
    want = predict(node, "payment_fraud", FRAUD, user_id="u3")
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["decision"]["data"] == [str(want.outputs["decision"])]
    assert outputs["probability"]["data"][0] == pytest.approx(
        float(want.outputs["probability"]), abs=1e-5
    )

    # binary_data_output: every output after the JSON header, sizes in the parameters.
    doc = {**fraud_json(), "parameters": {"user_id": "u3", "binary_data_output": True}}
    status, resp, raw = request(
        node, "POST", "/v2/models/payment_fraud/infer", json.dumps(doc).encode()
    )
    assert status == 200
    n = int(resp.getheader("Inference-Header-Content-Length") or -1)
    header = json.loads(raw[:n])
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert n + sum(sizes) == len(raw)
    probability = np.frombuffer(raw[n : n + sizes[0]], np.float32)
    assert probability[0] == pytest.approx(float(want.outputs["probability"]), abs=1e-5)
    (length,) = struct.unpack_from("<I", raw, n + sizes[0])
    assert raw[n + sizes[0] + 4 :].decode() == str(want.outputs["decision"])
    assert length == sizes[1] - 4


def test_deadline_is_honoured(node: NodeProcess) -> None:
    # The slow test model takes 0.3 s; a 50 ms deadline (microseconds, as Triton's).
    doc = {
        "parameters": {"timeout": 50_000},
        "inputs": [{"name": "x", "shape": [], "datatype": "FP32", "data": 1.0}],
    }
    status, answer = post_json(node, "/v2/models/slow/infer", doc)
    assert status == 504, answer
    assert "Traceback" not in answer["error"]
    doc["parameters"] = {"timeout": 20_000_000}
    status, answer = post_json(node, "/v2/models/slow/infer", doc)
    assert status == 200, answer
    assert answer["outputs"][0]["data"] == [2.0]


def test_concurrent_requests(node: NodeProcess) -> None:
    errors: list[str] = []

    def worker(i: int) -> None:
        for j in range(4):
            doc = {**fraud_json(), "parameters": {"user_id": f"c{i}-{j}"}}
            try:
                status, answer = post_json(node, "/v2/models/payment_fraud/infer", doc)
                assert status == 200, answer
                assert [o["name"] for o in answer["outputs"]] == ["probability", "decision"]
            except Exception as exc:
                errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert not any(t.is_alive() for t in threads)


# -- malformed requests ---------------------------------------------------------------------

INFER = "/v2/models/payment_fraud/infer"


def _binary_fraud() -> tuple[dict[str, Any], list[bytes]]:
    """The fraud request with every input as binary tensor data."""
    doc = fraud_json()
    chunks = []
    for tensor in doc["inputs"]:
        value = tensor.pop("data")[0]
        dtype = FRAUD_V2[tensor["name"]][1]
        if tensor["datatype"] == "BYTES":
            chunk = struct.pack("<I", len(value)) + value.encode()
        else:
            chunk = np.array([value], dtype).tobytes()
        tensor["parameters"] = {"binary_data_size": len(chunk)}
        chunks.append(chunk)
    return doc, chunks


def _binary_body(doc: dict[str, Any], chunks: list[bytes]) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(doc).encode()
    return header + b"".join(chunks), {"Inference-Header-Content-Length": str(len(header))}


def malformed_cases(rng: random.Random) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """(method, path, body, headers) of requests that must each get a 4xx JSON error."""
    cases: list[tuple[str, str, bytes, dict[str, str]]] = []

    def doc_case(doc: Any, path: str = INFER) -> None:
        cases.append(("POST", path, json.dumps(doc).encode(), {}))

    def mutated(mutate: Any) -> None:
        doc = fraud_json()
        mutate(doc, doc["inputs"][rng.randrange(len(doc["inputs"]))])
        doc_case(doc)

    # Not JSON, or JSON of the wrong shape.
    good = json.dumps(fraud_json()).encode()
    # Every strict prefix of a JSON object is invalid JSON.
    cases += [("POST", INFER, good[: rng.randrange(len(good))], {}) for _ in range(80)]
    cases += [("POST", INFER, rng.randbytes(rng.randrange(1, 200)), {}) for _ in range(20)]
    for doc in ([], 5, "x", None, {"inputs": 5}, {"inputs": [5]}, {"inputs": None}, {}):
        doc_case(doc)
    cases.append(("POST", INFER, b"[" * 100_000, {}))  # nested too deeply
    cases.append(("POST", INFER, b'{"inputs": [{"name": "amount", "data": NaN}]}', {}))
    doc_case({**fraud_json(), "id": 5})
    doc_case({**fraud_json(), "parameters": []})
    doc_case({**fraud_json(), "parameters": {"user_id": ["a"]}})
    doc_case({**fraud_json(), "parameters": {"timeout": -1}})
    doc_case({**fraud_json(), "parameters": {"timeout": "soon"}})
    doc_case({**fraud_json(), "parameters": {"big": 2**70}})
    doc_case({**fraud_json(), "outputs": [{"name": "nope"}]})
    doc_case(
        {**fraud_json(), "outputs": [{"name": "probability", "parameters": {"binary_data": 1}}]}
    )
    doc_case(
        {**fraud_json(), "outputs": [{"name": "probability", "parameters": {"classification": 2}}]}
    )
    doc_case({**fraud_json(), "outputs": [{"name": "decision"}, {"name": "decision"}]})
    doc_case({**fraud_json(), "outputs": [{"name": str(i)} for i in range(300)]})
    doc_case({"inputs": [fraud_json()["inputs"][0]] * 300})
    # Unknown models and versions.
    for path in ("/v2/models/nope/infer", "/v2/models/payment_fraud/versions/9/infer",
                 "/v2/models/payment_fraud@1/infer", "/v2/models/%00/infer",
                 "/v2/models/" + "x" * 3000 + "/infer"):  # fmt: skip
        doc_case(fraud_json(), path)

    # Wrong tensors: one mutation of one input each.
    def set_key(key: str, values: list[Any]) -> Any:
        return lambda doc, t: t.__setitem__(key, rng.choice(values))

    shapes: list[Any] = [[2], [1, 1, 2], [-1], [2**40], [2**31, 2**31], ["1"], [1.5], "1",
                         None, [True], [0], list(range(40))]  # fmt: skip
    datatypes: list[Any] = ["XYZ", "BF16", "", 7, None, "fp32", "FP64", "UINT64"]
    mutations = [
        set_key("shape", shapes),
        set_key("datatype", datatypes),
        set_key("name", ["nope", "", 5, None, "x" * 500]),
        set_key("data", [[], [1, 2], [[1], [2]], [{"a": 1}], [None], {"a": 1}, [[[[]]]]]),
        set_key("parameters", [5, [], {"shared_memory_region": "r"}, {"binary_data_size": 4}]),
        lambda doc, t: t.pop(rng.choice(["name", "shape", "datatype", "data"])),
        lambda doc, t: doc["inputs"].remove(t),  # a required input missing
        lambda doc, t: doc["inputs"].append(dict(t)),  # twice
    ]
    for _ in range(110):
        mutated(rng.choice(mutations))
    # Values the datatypes (or the model) cannot take.
    for name, value in [("amount", "abc"), ("amount", True), ("amount", 1e39),
                        ("amount", -5.0), ("tx_last_24h", 1.5), ("tx_last_24h", 2**70),
                        ("tx_last_24h", True), ("country_mismatch", 1), ("currency", 5),
                        ("currency", "\ud800"), ("account_age_days", 1e300)]:  # fmt: skip
        doc = fraud_json()
        for t in doc["inputs"]:
            if t["name"] == name:
                t["data"] = [value]
        doc_case(doc)

    # Binary tensor data that does not add up.
    for _ in range(40):
        doc, chunks = _binary_fraud()
        i = rng.randrange(len(chunks))
        kind = rng.randrange(6)
        headers: dict[str, str] | None = None
        if kind == 0:  # a size one off
            doc["inputs"][i]["parameters"]["binary_data_size"] += rng.choice([-1, 1])
        elif kind == 1:  # truncated binary data
            chunks[-1] = chunks[-1][: rng.randrange(len(chunks[-1]))]
        elif kind == 2:  # trailing bytes
            chunks.append(rng.randbytes(rng.randrange(1, 9)))
        elif kind == 3:  # both data and a binary size
            doc["inputs"][i]["data"] = [1]
        elif kind == 4:  # header length beyond the body, or not a number
            body, _ = _binary_body(doc, chunks)
            headers = {"Inference-Header-Content-Length": rng.choice(
                [str(len(body) + 1), "-3", "x", ""])}  # fmt: skip
        else:  # a BYTES element longer than its data
            doc["inputs"][1]["parameters"]["binary_data_size"] = 8
            chunks[1] = struct.pack("<I", 99) + b"USD\x00"
        body, default_headers = _binary_body(doc, chunks)
        cases.append(("POST", INFER, body, headers if headers is not None else default_headers))
    doc, chunks = _binary_fraud()  # binary sizes without the header that splits the body
    cases.append(("POST", INFER, _binary_body(doc, chunks)[0], {}))

    # HTTP-level: methods, paths, encodings.
    cases += [
        ("GET", INFER, b"", {}),
        ("PUT", "/v2/models/payment_fraud", b"", {}),
        ("DELETE", "/v2/health/ready", b"", {}),
        ("GET", "/v2/nope", b"", {}),
        ("GET", "/v2/models/payment_fraud/stats", b"", {}),
        ("GET", "/v2/models/payment_fraud/versions/7", b"", {}),
        ("GET", "/v2/models/payment_fraud/versions/7/config", b"", {}),
        ("POST", INFER, good, {"Content-Encoding": "br"}),
        ("POST", INFER, good, {"Content-Encoding": "gzip"}),
        ("POST", INFER, gzip.compress(good)[:-10], {"Content-Encoding": "gzip"}),
        ("POST", INFER, gzip.compress(b" " * 5_000_000), {"Content-Encoding": "gzip"}),
        ("POST", INFER, b"x" * (4 * 1024 * 1024 + 1), {}),
    ]
    return cases


def test_malformed_requests_each_get_a_clean_4xx(node: NodeProcess) -> None:
    seen = len(node.lines)
    cases = malformed_cases(random.Random(17))
    assert len(cases) >= 300
    statuses: dict[int, int] = {}
    for method, path, body, headers in cases:
        status, resp, raw = request(node, method, path, body, headers)
        what = f"{method} {path[:80]} {body[:120]!r} {headers} -> {status} {raw[:300]!r}"
        assert 400 <= status < 500, what
        assert resp.getheader("Content-Type") == "application/json", what
        error = json.loads(raw)["error"]
        assert isinstance(error, str) and error and "Traceback" not in error, what
        statuses[status] = statuses.get(status, 0) + 1
    assert {400, 404, 405, 413, 415} <= set(statuses), statuses

    # HTTP framing a client library would not send: raw sockets.
    for head in (
        b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n",
        b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: -4\r\n\r\n",
    ):
        with socket.create_connection(("127.0.0.1", node.metrics_port), timeout=30) as sock:
            sock.sendall(head)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line.split()[1] in (b"400", b"411", b"413"), answer
        assert b'{"error":' in rest, answer

    # The node still serves, over REST and gRPC, and logged no traceback.
    status, answer = post_json(node, INFER, {**fraud_json(), "parameters": {"user_id": "u9"}})
    assert status == 200, answer
    assert predict(node, "payment_fraud", FRAUD, user_id="u9").model_key
    assert node.proc.poll() is None
    assert not [line for line in node.lines[seen:] if "Traceback" in line]
