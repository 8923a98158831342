"""Request identifiers are bounded before any work: short INVALID_ARGUMENT messages."""

from __future__ import annotations

import pytest

from shardline.node._proto.shardline.v1 import inference_pb2 as pb
from shardline.node.sdk.errors import MAX_MESSAGE_CHARS, InvalidArgument, bounded, error_for_status
from shardline.node.serving.ingress import with_request_id
from shardline.node.serving.inputs import DEFAULT_HEAD_LIMITS, HeadLimits, check_head

MAX_ATTRIBUTES = DEFAULT_HEAD_LIMITS.attributes

BIG = "z" * 1_000_000


def head(**fields: object) -> pb.PredictRequestHead:
    h = pb.PredictRequestHead(objective="payment_fraud")
    for name, value in fields.items():
        if name in ("user_id", "country", "device", "surface"):
            setattr(h.context, name, value)
        elif name == "attributes":
            h.context.attributes.update(value)
        else:
            setattr(h, name, value)
    return h


def test_ordinary_heads_pass() -> None:
    check_head(head(user_id="u1", country="US", attributes={"plan": "pro"}))


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"objective": BIG}, "objective"),
        ({"model_override": BIG}, "model_override"),
        ({"request_id": BIG}, "request_id"),
        ({"user_id": BIG}, "context.user_id"),
        ({"surface": BIG}, "context.surface"),
        ({"attributes": {BIG: "v"}}, "context.attributes key"),
        ({"attributes": {"k\n": BIG}}, "context.attributes['k\\n']"),
        ({"attributes": {f"k{i}": "v" for i in range(MAX_ATTRIBUTES + 1)}}, "context.attributes"),
    ],
)
def test_oversized_identifiers_are_refused_briefly(fields: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_head(head(**fields))
    assert err.value.field == field
    assert len(err.value.message) < 120 and "\n" not in err.value.message


def test_messages_from_peers_are_bounded() -> None:
    for status in ("INVALID_ARGUMENT", "UNAVAILABLE", "SOMETHING_ELSE"):
        assert len(error_for_status(status, BIG).message) <= MAX_MESSAGE_CHARS
    assert len(bounded(BIG)) == MAX_MESSAGE_CHARS and bounded("short") == "short"


def test_a_request_id_appended_to_the_bytes_is_read_back() -> None:
    raw = pb.PredictRequest(objective="o", inputs=[pb.Tensor(name="x")]).SerializeToString()
    ids = set()
    for _ in range(3):
        request_id, stamped = with_request_id(raw)
        request = pb.PredictRequest.FromString(stamped)
        assert request.request_id == request_id and len(request_id) == 32
        assert request.objective == "o" and request.inputs[0].name == "x"
        ids.add(request_id)
    assert len(ids) == 3


def test_head_limits_are_settings() -> None:
    head = pb.PredictRequest(objective="fraud")
    head.context.user_id = "u" * 300
    with pytest.raises(InvalidArgument, match=r"context\.user_id"):
        check_head(head)  # the default: 256 characters
    check_head(head, HeadLimits(context_chars=512))
    with pytest.raises(ValueError, match="context_chars must be a positive integer"):
        HeadLimits(context_chars=0)
