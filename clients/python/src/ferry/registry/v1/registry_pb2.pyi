import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_NONE: _ClassVar[Stage]
    STAGE_STAGING: _ClassVar[Stage]
    STAGE_PRODUCTION: _ClassVar[Stage]
    STAGE_ARCHIVED: _ClassVar[Stage]

class ChangeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_KIND_UNSPECIFIED: _ClassVar[ChangeKind]
    CHANGE_KIND_SNAPSHOT: _ClassVar[ChangeKind]
    CHANGE_KIND_VERSION_CREATED: _ClassVar[ChangeKind]
    CHANGE_KIND_VERSION_DELETED: _ClassVar[ChangeKind]
    CHANGE_KIND_STAGE_CHANGED: _ClassVar[ChangeKind]
    CHANGE_KIND_ALIAS_SET: _ClassVar[ChangeKind]
    CHANGE_KIND_ALIAS_DELETED: _ClassVar[ChangeKind]
    CHANGE_KIND_TAGS_CHANGED: _ClassVar[ChangeKind]
    CHANGE_KIND_SNAPSHOT_END: _ClassVar[ChangeKind]
    CHANGE_KIND_POLICY_CHANGED: _ClassVar[ChangeKind]
STAGE_UNSPECIFIED: Stage
STAGE_NONE: Stage
STAGE_STAGING: Stage
STAGE_PRODUCTION: Stage
STAGE_ARCHIVED: Stage
CHANGE_KIND_UNSPECIFIED: ChangeKind
CHANGE_KIND_SNAPSHOT: ChangeKind
CHANGE_KIND_VERSION_CREATED: ChangeKind
CHANGE_KIND_VERSION_DELETED: ChangeKind
CHANGE_KIND_STAGE_CHANGED: ChangeKind
CHANGE_KIND_ALIAS_SET: ChangeKind
CHANGE_KIND_ALIAS_DELETED: ChangeKind
CHANGE_KIND_TAGS_CHANGED: ChangeKind
CHANGE_KIND_SNAPSHOT_END: ChangeKind
CHANGE_KIND_POLICY_CHANGED: ChangeKind

class ModelVersion(_message.Message):
    __slots__ = ("name", "version", "stage", "aliases", "run_id", "source", "sha256", "size_bytes", "artifact_path", "description", "tags", "created_at", "updated_at")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_PATH_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    stage: Stage
    aliases: _containers.RepeatedScalarFieldContainer[str]
    run_id: str
    source: str
    sha256: str
    size_bytes: int
    artifact_path: str
    description: str
    tags: _containers.ScalarMap[str, str]
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., stage: _Optional[_Union[Stage, str]] = ..., aliases: _Optional[_Iterable[str]] = ..., run_id: _Optional[str] = ..., source: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., artifact_path: _Optional[str] = ..., description: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RegisteredModel(_message.Message):
    __slots__ = ("name", "description", "tags", "aliases", "latest_versions")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AliasesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    tags: _containers.ScalarMap[str, str]
    aliases: _containers.ScalarMap[str, str]
    latest_versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., aliases: _Optional[_Mapping[str, str]] = ..., latest_versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ...) -> None: ...

class RegisterModelRequest(_message.Message):
    __slots__ = ("metadata", "chunk", "file")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    metadata: RegisterModelMetadata
    chunk: bytes
    file: ModelFile
    def __init__(self, metadata: _Optional[_Union[RegisterModelMetadata, _Mapping]] = ..., chunk: _Optional[bytes] = ..., file: _Optional[_Union[ModelFile, _Mapping]] = ...) -> None: ...

class ModelFile(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class RegisterModelMetadata(_message.Message):
    __slots__ = ("name", "description", "tags", "expected_sha256", "metrics", "params")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SHA256_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    tags: _containers.ScalarMap[str, str]
    expected_sha256: str
    metrics: _containers.ScalarMap[str, float]
    params: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., expected_sha256: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., params: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RegisterModelResponse(_message.Message):
    __slots__ = ("version", "created")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    version: ModelVersion
    created: bool
    def __init__(self, version: _Optional[_Union[ModelVersion, _Mapping]] = ..., created: bool = ...) -> None: ...

class TransitionStageRequest(_message.Message):
    __slots__ = ("name", "version", "stage", "archive_existing_versions", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_EXISTING_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    stage: Stage
    archive_existing_versions: bool
    reason: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., stage: _Optional[_Union[Stage, str]] = ..., archive_existing_versions: bool = ..., reason: _Optional[str] = ...) -> None: ...

class TransitionStageResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: ModelVersion
    def __init__(self, version: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class SetAliasRequest(_message.Message):
    __slots__ = ("name", "alias", "version", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    alias: str
    version: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., alias: _Optional[str] = ..., version: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SetAliasResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: ModelVersion
    def __init__(self, version: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class DeleteAliasRequest(_message.Message):
    __slots__ = ("name", "alias")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    name: str
    alias: str
    def __init__(self, name: _Optional[str] = ..., alias: _Optional[str] = ...) -> None: ...

class DeleteAliasResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: RegisteredModel
    def __init__(self, model: _Optional[_Union[RegisteredModel, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "filter")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    filter: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., filter: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[RegisteredModel]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[RegisteredModel, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("name", "page_size", "page_token")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    page_size: int
    page_token: str
    def __init__(self, name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions", "next_page_token")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    next_page_token: str
    def __init__(self, versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ResolveVersionRequest(_message.Message):
    __slots__ = ("name", "stage", "alias", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    stage: Stage
    alias: str
    version: str
    def __init__(self, name: _Optional[str] = ..., stage: _Optional[_Union[Stage, str]] = ..., alias: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class ResolveVersionResponse(_message.Message):
    __slots__ = ("version", "download_uri")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_URI_FIELD_NUMBER: _ClassVar[int]
    version: ModelVersion
    download_uri: str
    def __init__(self, version: _Optional[_Union[ModelVersion, _Mapping]] = ..., download_uri: _Optional[str] = ...) -> None: ...

class WatchModelsRequest(_message.Message):
    __slots__ = ("names", "since_revision", "epoch")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    SINCE_REVISION_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    since_revision: int
    epoch: str
    def __init__(self, names: _Optional[_Iterable[str]] = ..., since_revision: _Optional[int] = ..., epoch: _Optional[str] = ...) -> None: ...

class ModelChanged(_message.Message):
    __slots__ = ("revision", "kind", "name", "version", "alias", "model_version", "observed_at", "epoch")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    revision: int
    kind: ChangeKind
    name: str
    version: str
    alias: str
    model_version: ModelVersion
    observed_at: _timestamp_pb2.Timestamp
    epoch: str
    def __init__(self, revision: _Optional[int] = ..., kind: _Optional[_Union[ChangeKind, str]] = ..., name: _Optional[str] = ..., version: _Optional[str] = ..., alias: _Optional[str] = ..., model_version: _Optional[_Union[ModelVersion, _Mapping]] = ..., observed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., epoch: _Optional[str] = ...) -> None: ...

class GetTrafficPolicyRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class SetTrafficPolicyRequest(_message.Message):
    __slots__ = ("name", "policy_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    policy_json: str
    def __init__(self, name: _Optional[str] = ..., policy_json: _Optional[str] = ...) -> None: ...

class GetTrafficPolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: TrafficPolicy
    def __init__(self, policy: _Optional[_Union[TrafficPolicy, _Mapping]] = ...) -> None: ...

class SetTrafficPolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: TrafficPolicy
    def __init__(self, policy: _Optional[_Union[TrafficPolicy, _Mapping]] = ...) -> None: ...

class TrafficPolicy(_message.Message):
    __slots__ = ("name", "policy_json", "variants", "rollout_status")
    NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_JSON_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_STATUS_FIELD_NUMBER: _ClassVar[int]
    name: str
    policy_json: str
    variants: _containers.RepeatedCompositeFieldContainer[TrafficVariant]
    rollout_status: str
    def __init__(self, name: _Optional[str] = ..., policy_json: _Optional[str] = ..., variants: _Optional[_Iterable[_Union[TrafficVariant, _Mapping]]] = ..., rollout_status: _Optional[str] = ...) -> None: ...

class TrafficVariant(_message.Message):
    __slots__ = ("name", "selector", "weight", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    selector: str
    weight: int
    version: str
    def __init__(self, name: _Optional[str] = ..., selector: _Optional[str] = ..., weight: _Optional[int] = ..., version: _Optional[str] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("name", "alias", "stage", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    alias: str
    stage: Stage
    reason: str
    def __init__(self, name: _Optional[str] = ..., alias: _Optional[str] = ..., stage: _Optional[_Union[Stage, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class RollbackResponse(_message.Message):
    __slots__ = ("version", "rolled_back_version")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_VERSION_FIELD_NUMBER: _ClassVar[int]
    version: ModelVersion
    rolled_back_version: str
    def __init__(self, version: _Optional[_Union[ModelVersion, _Mapping]] = ..., rolled_back_version: _Optional[str] = ...) -> None: ...

class ListMovesRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListMovesResponse(_message.Message):
    __slots__ = ("moves",)
    MOVES_FIELD_NUMBER: _ClassVar[int]
    moves: _containers.RepeatedCompositeFieldContainer[Move]
    def __init__(self, moves: _Optional[_Iterable[_Union[Move, _Mapping]]] = ...) -> None: ...

class Move(_message.Message):
    __slots__ = ("target", "from_version", "to_version", "by", "at", "reason", "rollback")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    target: str
    from_version: str
    to_version: str
    by: str
    at: _timestamp_pb2.Timestamp
    reason: str
    rollback: bool
    def __init__(self, target: _Optional[str] = ..., from_version: _Optional[str] = ..., to_version: _Optional[str] = ..., by: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., rollback: bool = ...) -> None: ...

class ReportTrafficRequest(_message.Message):
    __slots__ = ("replica", "variants")
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    replica: str
    variants: _containers.RepeatedCompositeFieldContainer[VariantTraffic]
    def __init__(self, replica: _Optional[str] = ..., variants: _Optional[_Iterable[_Union[VariantTraffic, _Mapping]]] = ...) -> None: ...

class VariantTraffic(_message.Message):
    __slots__ = ("model", "variant", "requests", "errors", "latency", "shadow_classified", "shadow_agreed", "shadow_diffed", "shadow_abs_diff_nano")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    SHADOW_CLASSIFIED_FIELD_NUMBER: _ClassVar[int]
    SHADOW_AGREED_FIELD_NUMBER: _ClassVar[int]
    SHADOW_DIFFED_FIELD_NUMBER: _ClassVar[int]
    SHADOW_ABS_DIFF_NANO_FIELD_NUMBER: _ClassVar[int]
    model: str
    variant: str
    requests: int
    errors: int
    latency: _containers.RepeatedScalarFieldContainer[int]
    shadow_classified: int
    shadow_agreed: int
    shadow_diffed: int
    shadow_abs_diff_nano: int
    def __init__(self, model: _Optional[str] = ..., variant: _Optional[str] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., latency: _Optional[_Iterable[int]] = ..., shadow_classified: _Optional[int] = ..., shadow_agreed: _Optional[int] = ..., shadow_diffed: _Optional[int] = ..., shadow_abs_diff_nano: _Optional[int] = ...) -> None: ...

class ReportTrafficResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResolveServingRequest(_message.Message):
    __slots__ = ("name", "selectors")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SELECTORS_FIELD_NUMBER: _ClassVar[int]
    name: str
    selectors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., selectors: _Optional[_Iterable[str]] = ...) -> None: ...

class ResolveServingResponse(_message.Message):
    __slots__ = ("revision", "epoch", "policy_json", "resolved")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    POLICY_JSON_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_FIELD_NUMBER: _ClassVar[int]
    revision: int
    epoch: str
    policy_json: str
    resolved: _containers.RepeatedCompositeFieldContainer[ResolvedSelector]
    def __init__(self, revision: _Optional[int] = ..., epoch: _Optional[str] = ..., policy_json: _Optional[str] = ..., resolved: _Optional[_Iterable[_Union[ResolvedSelector, _Mapping]]] = ...) -> None: ...

class ResolvedSelector(_message.Message):
    __slots__ = ("selector", "version")
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    selector: str
    version: ModelVersion
    def __init__(self, selector: _Optional[str] = ..., version: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class ListModelFilesRequest(_message.Message):
    __slots__ = ("name", "version", "folder")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FOLDER_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    folder: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., folder: _Optional[str] = ...) -> None: ...

class ListModelFilesResponse(_message.Message):
    __slots__ = ("artifact_uri", "served", "files")
    ARTIFACT_URI_FIELD_NUMBER: _ClassVar[int]
    SERVED_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    artifact_uri: str
    served: bool
    files: _containers.RepeatedCompositeFieldContainer[StoredFile]
    def __init__(self, artifact_uri: _Optional[str] = ..., served: bool = ..., files: _Optional[_Iterable[_Union[StoredFile, _Mapping]]] = ...) -> None: ...

class StoredFile(_message.Message):
    __slots__ = ("name", "size_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    size_bytes: int
    def __init__(self, name: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class ReadModelFileRequest(_message.Message):
    __slots__ = ("name", "version", "path", "offset")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    path: str
    offset: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., path: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ReadModelFileResponse(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...
