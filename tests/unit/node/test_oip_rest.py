"""REST V2 parsing and formatting (no node), and the HTTP port's bounded threads."""

from __future__ import annotations

import asyncio
import http.client
import json
import struct
import threading
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Gauge

from shardline.node._proto_oip import grpc_service_pb2 as v2
from shardline.node.observability import metrics as metrics_mod
from shardline.node.observability.metrics import NodeMetrics
from shardline.node.sdk.errors import InvalidArgument, Unavailable
from shardline.node.serving.graceful_server import InFlight
from shardline.node.serving.oip_rest import HEADER_LENGTH, Wanted, infer_reply, infer_request


def test_json_inputs_become_raw_tensors() -> None:
    doc = {
        "id": "r1",
        "parameters": {"user_id": "u1", "timeout": 250_000, "attr.plan": "basic", "n": 3},
        "inputs": [
            {"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3.5, 4]]},
            {"name": "s", "shape": [2], "datatype": "BYTES", "data": ["hé", ""]},
            {"name": "b", "shape": [], "datatype": "BOOL", "data": True},
            {"name": "i", "shape": [1], "datatype": "INT8", "data": [-7]},
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}],
    }
    req, wanted = infer_request("obj", "2", json.dumps(doc).encode(), None)
    assert (req.model_name, req.model_version, req.id) == ("obj", "2", "r1")
    assert req.parameters["user_id"].string_param == "u1"
    assert req.parameters["n"].int64_param == 3
    assert [t.name for t in req.inputs] == ["a", "s", "b", "i"]
    assert list(req.inputs[0].shape) == [2, 2]
    raw = list(req.raw_input_contents)
    np.testing.assert_array_equal(np.frombuffer(raw[0], "<f4"), [1, 2, 3.5, 4])
    assert raw[1] == struct.pack("<I", 3) + "hé".encode() + struct.pack("<I", 0)
    assert raw[2] == b"\x01" and raw[3] == np.int8(-7).tobytes()
    assert [o.name for o in req.outputs] == ["y", "z"]
    assert wanted == Wanted({"y": True, "z": False}, False, 0.25)


def test_binary_tensor_data_is_split_by_sizes() -> None:
    a = np.array([1, 2, 3], "<i8").tobytes()
    s = struct.pack("<I", 2) + b"ok"
    doc = {
        "inputs": [
            {
                "name": "a",
                "shape": [3],
                "datatype": "INT64",
                "parameters": {"binary_data_size": 24},
            },
            {"name": "s", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}},
        ],
        "parameters": {"binary_data_output": True},
    }
    header = json.dumps(doc).encode()
    req, wanted = infer_request("m", "", header + a + s, str(len(header)))
    assert list(req.raw_input_contents) == [a, s]
    assert wanted.binary_default and not wanted.binary
    with pytest.raises(InvalidArgument, match="add up to 30"):
        infer_request("m", "", header + a + s + b"x", str(len(header)))
    with pytest.raises(InvalidArgument, match="holds 29 bytes"):
        infer_request("m", "", header + a + s[:-1], str(len(header)))
    with pytest.raises(InvalidArgument, match=HEADER_LENGTH):
        infer_request("m", "", header, str(len(header) + 1))


@pytest.mark.parametrize(
    ("tensor", "needle"),
    [
        ({"shape": [3], "datatype": "FP32", "data": [1, 2]}, "2 elements in data"),
        ({"shape": [2**40], "datatype": "FP32", "data": [1]}, "more than"),
        ({"shape": [1], "datatype": "INT32", "data": [2**31]}, "does not fit INT32"),
        ({"shape": [1], "datatype": "INT64", "data": [1.0]}, "integers"),
        ({"shape": [1], "datatype": "BOOL", "data": [0]}, "true or false"),
        ({"shape": [1], "datatype": "BF16", "data": [0]}, "not one of"),
        ({"shape": [1], "datatype": "FP32"}, "no data"),
        ({"shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3]]}, "3 elements"),
    ],
)
def test_bad_tensors_name_the_tensor(tensor: dict[str, Any], needle: str) -> None:
    doc = {"inputs": [{"name": "x", **tensor}]}
    with pytest.raises(InvalidArgument) as err:
        infer_request("m", "", json.dumps(doc).encode(), None)
    assert err.value.message.startswith("inputs.x") and needle in err.value.message


def test_reply_json_and_binary_outputs() -> None:
    res = v2.ModelInferResponse(model_name="m", model_version="1", id="r")
    res.parameters["shardline.model_key"].string_param = "m@1"
    res.parameters["shardline.hops"].int64_param = 0
    res.outputs.add(name="p", datatype="FP32", shape=[2])
    res.outputs.add(name="d", datatype="BYTES", shape=[1])
    res.outputs.add(name="bad", datatype="BYTES", shape=[1])
    p = np.array([0.5, 0.25], "<f4").tobytes()
    d = struct.pack("<I", 7) + b"decline"
    bad = struct.pack("<I", 1) + b"\xff"
    res.raw_output_contents.extend([p, d, bad])

    reply = infer_reply(res, Wanted({}, False, None))
    # Non-UTF-8 BYTES can only travel binary: that output does, the rest as JSON.
    n = int(dict(reply.headers)[HEADER_LENGTH])
    doc = json.loads(reply.body[:n])
    assert reply.body[n:] == bad
    assert doc["parameters"] == {"shardline.model_key": "m@1", "shardline.hops": 0}
    outs = {o["name"]: o for o in doc["outputs"]}
    assert outs["p"]["data"] == [0.5, 0.25] and outs["d"]["data"] == ["decline"]
    assert outs["bad"]["parameters"] == {"binary_data_size": len(bad)}

    reply = infer_reply(res, Wanted({"p": True, "d": False, "bad": True}, False, None))
    n = int(dict(reply.headers)[HEADER_LENGTH])
    assert reply.body[n:] == p + bad and reply.content_type == "application/octet-stream"


def test_http_port_serves_a_bounded_number_of_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics_mod, "MAX_HTTP_THREADS", 2)
    entered = threading.Semaphore(0)
    release = threading.Event()
    lock = threading.Lock()
    active = [0, 0]  # now, most

    def blocking(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with lock:
            active[0] += 1
            active[1] = max(active[1], active[0])
        entered.release()
        release.wait(30)
        with lock:
            active[0] -= 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done"]

    port = NodeMetrics().serve_http("127.0.0.1", 0, mounts={"/slow": blocking})
    answers: list[int] = []

    def call() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/slow/x")
        answers.append(conn.getresponse().status)
        conn.close()

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    assert entered.acquire(timeout=30) and entered.acquire(timeout=30)
    # The other two wait in the backlog: none enters while both slots are taken.
    assert not entered.acquire(timeout=0.5)
    release.set()
    for t in threads:
        t.join(30)
    assert answers == [200] * 4 and active[1] == 2


async def test_rest_requests_count_in_flight_and_are_refused_once_draining() -> None:
    """A drain waits for REST requests as for gRPC ones (``InFlight.run``)."""
    in_flight = InFlight(Gauge("g", "g", registry=CollectorRegistry()))
    release = asyncio.Event()

    async def request() -> str:
        await release.wait()
        return "answer"

    task = asyncio.create_task(in_flight.run(request()))
    await asyncio.sleep(0)  # one turn of the loop: the task runs to its first await
    assert in_flight.count == 1
    idle = asyncio.create_task(in_flight.wait_idle())
    in_flight.draining = True
    with pytest.raises(Unavailable, match="shutting down"):
        await in_flight.run(request())
    assert not idle.done()
    release.set()
    assert await task == "answer"
    await asyncio.wait_for(idle, 5)
    assert in_flight.count == 0
