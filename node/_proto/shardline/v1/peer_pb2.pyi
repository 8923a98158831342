from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ForwardRequest(_message.Message):
    __slots__ = ("request", "hops", "model_key", "cell", "ingress_node", "shadow")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    MODEL_KEY_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    INGRESS_NODE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    request: bytes
    hops: int
    model_key: str
    cell: str
    ingress_node: str
    shadow: bool
    def __init__(self, request: _Optional[bytes] = ..., hops: _Optional[int] = ..., model_key: _Optional[str] = ..., cell: _Optional[str] = ..., ingress_node: _Optional[str] = ..., shadow: _Optional[bool] = ...) -> None: ...

class ForwardResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
