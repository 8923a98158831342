from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DrainNodeRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class DrainNodeResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class RemoveNodeRequest(_message.Message):
    __slots__ = ("node_id", "force")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    force: bool
    def __init__(self, node_id: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class RemoveNodeResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...

class DeployRequest(_message.Message):
    __slots__ = ("package_tar_gz",)
    PACKAGE_TAR_GZ_FIELD_NUMBER: _ClassVar[int]
    package_tar_gz: bytes
    def __init__(self, package_tar_gz: _Optional[bytes] = ...) -> None: ...

class DeployResponse(_message.Message):
    __slots__ = ("model_key", "artifact_uri", "revision")
    MODEL_KEY_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_URI_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    model_key: str
    artifact_uri: str
    revision: int
    def __init__(self, model_key: _Optional[str] = ..., artifact_uri: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class UndeployRequest(_message.Message):
    __slots__ = ("model_key",)
    MODEL_KEY_FIELD_NUMBER: _ClassVar[int]
    model_key: str
    def __init__(self, model_key: _Optional[str] = ...) -> None: ...

class UndeployResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...

class ObjectiveRevisionInfo(_message.Message):
    __slots__ = ("name", "revision", "config_json", "updated_at", "author")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    revision: int
    config_json: str
    updated_at: str
    author: str
    def __init__(self, name: _Optional[str] = ..., revision: _Optional[int] = ..., config_json: _Optional[str] = ..., updated_at: _Optional[str] = ..., author: _Optional[str] = ...) -> None: ...

class SetObjectiveRequest(_message.Message):
    __slots__ = ("config_json", "author", "force")
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    config_json: str
    author: str
    force: bool
    def __init__(self, config_json: _Optional[str] = ..., author: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class GetObjectiveRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ObjectiveHistoryResponse(_message.Message):
    __slots__ = ("revisions",)
    REVISIONS_FIELD_NUMBER: _ClassVar[int]
    revisions: _containers.RepeatedCompositeFieldContainer[ObjectiveRevisionInfo]
    def __init__(self, revisions: _Optional[_Iterable[_Union[ObjectiveRevisionInfo, _Mapping]]] = ...) -> None: ...

class RollbackObjectiveRequest(_message.Message):
    __slots__ = ("name", "to_revision", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TO_REVISION_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    to_revision: int
    force: bool
    def __init__(self, name: _Optional[str] = ..., to_revision: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("objective", "user_id", "country", "device", "surface", "attributes", "model_override")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_OVERRIDE_FIELD_NUMBER: _ClassVar[int]
    objective: str
    user_id: str
    country: str
    device: str
    surface: str
    attributes: _containers.ScalarMap[str, str]
    model_override: str
    def __init__(self, objective: _Optional[str] = ..., user_id: _Optional[str] = ..., country: _Optional[str] = ..., device: _Optional[str] = ..., surface: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., model_override: _Optional[str] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("model_key", "cell", "shadows", "reason", "revision", "owners")
    MODEL_KEY_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    SHADOWS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    OWNERS_FIELD_NUMBER: _ClassVar[int]
    model_key: str
    cell: str
    shadows: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    revision: int
    owners: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model_key: _Optional[str] = ..., cell: _Optional[str] = ..., shadows: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., revision: _Optional[int] = ..., owners: _Optional[_Iterable[str]] = ...) -> None: ...
