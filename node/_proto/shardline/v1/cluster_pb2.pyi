from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MemberInfo(_message.Message):
    __slots__ = ("node_id", "grpc_address", "gossip_address", "zone", "capacity", "state", "liveness", "in_flight", "models", "devices", "version", "resident_bytes", "budget_bytes", "loading", "loads", "evictions", "settled")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    GRPC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LIVENESS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOADING_FIELD_NUMBER: _ClassVar[int]
    LOADS_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    SETTLED_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    grpc_address: str
    gossip_address: str
    zone: str
    capacity: float
    state: str
    liveness: str
    in_flight: int
    models: _containers.RepeatedScalarFieldContainer[str]
    devices: _containers.RepeatedScalarFieldContainer[str]
    version: str
    resident_bytes: int
    budget_bytes: int
    loading: _containers.RepeatedScalarFieldContainer[str]
    loads: int
    evictions: int
    settled: bool
    def __init__(self, node_id: _Optional[str] = ..., grpc_address: _Optional[str] = ..., gossip_address: _Optional[str] = ..., zone: _Optional[str] = ..., capacity: _Optional[float] = ..., state: _Optional[str] = ..., liveness: _Optional[str] = ..., in_flight: _Optional[int] = ..., models: _Optional[_Iterable[str]] = ..., devices: _Optional[_Iterable[str]] = ..., version: _Optional[str] = ..., resident_bytes: _Optional[int] = ..., budget_bytes: _Optional[int] = ..., loading: _Optional[_Iterable[str]] = ..., loads: _Optional[int] = ..., evictions: _Optional[int] = ..., settled: _Optional[bool] = ...) -> None: ...

class ModelPlacement(_message.Message):
    __slots__ = ("model_key", "replicas", "owners", "footprint_bytes", "pinned")
    MODEL_KEY_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    OWNERS_FIELD_NUMBER: _ClassVar[int]
    FOOTPRINT_BYTES_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    model_key: str
    replicas: int
    owners: _containers.RepeatedScalarFieldContainer[str]
    footprint_bytes: int
    pinned: bool
    def __init__(self, model_key: _Optional[str] = ..., replicas: _Optional[int] = ..., owners: _Optional[_Iterable[str]] = ..., footprint_bytes: _Optional[int] = ..., pinned: _Optional[bool] = ...) -> None: ...

class GetRoutingTableRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RoutingTable(_message.Message):
    __slots__ = ("node_id", "revision", "members", "dead", "placements", "objectives_json", "loaded_models", "mode", "load_failures")
    class ObjectivesJsonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LoadFailuresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    DEAD_FIELD_NUMBER: _ClassVar[int]
    PLACEMENTS_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVES_JSON_FIELD_NUMBER: _ClassVar[int]
    LOADED_MODELS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LOAD_FAILURES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    revision: int
    members: _containers.RepeatedCompositeFieldContainer[MemberInfo]
    dead: _containers.RepeatedScalarFieldContainer[str]
    placements: _containers.RepeatedCompositeFieldContainer[ModelPlacement]
    objectives_json: _containers.ScalarMap[str, str]
    loaded_models: _containers.RepeatedScalarFieldContainer[str]
    mode: str
    load_failures: _containers.ScalarMap[str, str]
    def __init__(self, node_id: _Optional[str] = ..., revision: _Optional[int] = ..., members: _Optional[_Iterable[_Union[MemberInfo, _Mapping]]] = ..., dead: _Optional[_Iterable[str]] = ..., placements: _Optional[_Iterable[_Union[ModelPlacement, _Mapping]]] = ..., objectives_json: _Optional[_Mapping[str, str]] = ..., loaded_models: _Optional[_Iterable[str]] = ..., mode: _Optional[str] = ..., load_failures: _Optional[_Mapping[str, str]] = ...) -> None: ...
