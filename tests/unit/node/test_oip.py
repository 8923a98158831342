"""Unit tests of the Open Inference Protocol mapping (node/serving/oip.py): names, context."""

from __future__ import annotations

import pytest

from shardline.node._proto_oip import grpc_service_pb2 as v2
from shardline.node.sdk.errors import InvalidArgument, NotFound
from shardline.node.serving.oip import Target, context_params, target_of
from shardline.node.serving.oip_tensors import split_bytes
from shardline.router.objectives import ObjectiveConfig


def _objective(name: str, default: str, *others: str, allow: bool = True) -> ObjectiveConfig:
    doc = {"name": name, "default": default, "allow_override": allow}
    if others:
        doc["shadows"] = [{"model": m, "percent": 1.0} for m in others]
    return ObjectiveConfig.from_dict(doc)


OBJECTIVES = {
    "fraud": _objective("fraud", "payment_fraud@1", "payment_fraud@2"),
    "rank": _objective("rank", "title_ranking@1", "title_ranking@2", "other_model@2"),
    "strict": _objective("strict", "title_ranking@1", allow=False),
}


def test_model_name_is_an_objective_and_model_version_an_override() -> None:
    assert target_of("fraud", "", OBJECTIVES) == Target("fraud", "")
    assert target_of("fraud", "2", OBJECTIVES) == Target("fraud", "payment_fraud@2")
    assert target_of("fraud", "payment_fraud@1", OBJECTIVES) == Target("fraud", "payment_fraud@1")
    with pytest.raises(InvalidArgument, match="ambiguous"):
        target_of("rank", "2", OBJECTIVES)  # title_ranking@2 and other_model@2
    assert target_of("rank", "other_model@2", OBJECTIVES).override == "other_model@2"
    with pytest.raises(NotFound, match="no model version"):
        target_of("fraud", "3", OBJECTIVES)
    with pytest.raises(InvalidArgument, match="model_name"):
        target_of("", "", OBJECTIVES)


def test_a_model_name_with_a_version_goes_through_an_objective_that_allows_overrides() -> None:
    # "strict" sorts after "rank" but forbids overrides either way; "rank" allows them.
    assert target_of("title_ranking", "1", OBJECTIVES) == Target("rank", "title_ranking@1")
    with pytest.raises(NotFound, match="needs model_version"):
        target_of("title_ranking", "", OBJECTIVES)
    with pytest.raises(NotFound):
        target_of("title_ranking", "other_model@2", OBJECTIVES)  # another model's key


def test_context_from_parameters_first_then_headers() -> None:
    req = v2.ModelInferRequest()
    req.parameters["user_id"].string_param = "from-params"
    req.parameters["attr.tier"].int64_param = 3
    req.parameters["synthetic"].bool_param = True
    req.parameters["priority"].int64_param = 1  # a Triton parameter: not context
    headers = [("user-id", "from-headers"), ("Country", "BR"), ("attr-plan", "gold"), ("x", "y")]
    fields, attributes, synthetic = context_params(req.parameters, headers)
    assert fields == {"user_id": "from-params", "country": "BR"}
    assert attributes == {"tier": "3", "plan": "gold"}
    assert synthetic


def test_raw_bytes_elements() -> None:
    raw = b"".join(len(x).to_bytes(4, "little") + x for x in (b"a", b"", b"xyz"))
    assert split_bytes("f", raw, 3) == [b"a", b"", b"xyz"]
    for bad, count in ((raw, 2), (raw, 4), (raw[:-1], 3), (raw + b"\x01", 3)):
        with pytest.raises(InvalidArgument):
            split_bytes("f", bad, count)
