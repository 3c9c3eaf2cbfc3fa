from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[Phase]
    PHASE_WAITING_FOR_CLIENTS: _ClassVar[Phase]
    PHASE_OPEN: _ClassVar[Phase]
    PHASE_AGGREGATING: _ClassVar[Phase]
    PHASE_FINISHED: _ClassVar[Phase]

class RefusalReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REFUSAL_REASON_UNSPECIFIED: _ClassVar[RefusalReason]
    REFUSAL_REASON_NO_TOKEN: _ClassVar[RefusalReason]
    REFUSAL_REASON_BAD_TOKEN: _ClassVar[RefusalReason]
    REFUSAL_REASON_WRONG_SCENARIO: _ClassVar[RefusalReason]
    REFUSAL_REASON_UNKNOWN_SCENARIO: _ClassVar[RefusalReason]
    REFUSAL_REASON_CERTIFICATE_SCENARIO_MISMATCH: _ClassVar[RefusalReason]
    REFUSAL_REASON_BAD_SCENARIO: _ClassVar[RefusalReason]
    REFUSAL_REASON_BAD_MANIFEST: _ClassVar[RefusalReason]
    REFUSAL_REASON_BAD_VALUES: _ClassVar[RefusalReason]
    REFUSAL_REASON_STREAM_TRUNCATED: _ClassVar[RefusalReason]
    REFUSAL_REASON_STREAM_OVERFLOW: _ClassVar[RefusalReason]
    REFUSAL_REASON_NO_HEADER: _ClassVar[RefusalReason]
    REFUSAL_REASON_BAD_STREAM: _ClassVar[RefusalReason]
    REFUSAL_REASON_BAD_NUM_SAMPLES: _ClassVar[RefusalReason]
    REFUSAL_REASON_BAD_METRICS: _ClassVar[RefusalReason]
    REFUSAL_REASON_TOO_LARGE: _ClassVar[RefusalReason]
    REFUSAL_REASON_TOO_MANY_CALLS: _ClassVar[RefusalReason]
    REFUSAL_REASON_WRONG_ROUND: _ClassVar[RefusalReason]
    REFUSAL_REASON_NOT_OPEN: _ClassVar[RefusalReason]
    REFUSAL_REASON_FINISHED: _ClassVar[RefusalReason]
    REFUSAL_REASON_NOT_JOINED: _ClassVar[RefusalReason]
    REFUSAL_REASON_SIGNATURE_MISMATCH: _ClassVar[RefusalReason]
    REFUSAL_REASON_SPEC_MISMATCH: _ClassVar[RefusalReason]
    REFUSAL_REASON_UNKNOWN_ROUND: _ClassVar[RefusalReason]
    REFUSAL_REASON_CONFLICTING_RESUBMISSION: _ClassVar[RefusalReason]
    REFUSAL_REASON_NOT_SAMPLED: _ClassVar[RefusalReason]
    REFUSAL_REASON_RATE_LIMITED: _ClassVar[RefusalReason]
    REFUSAL_REASON_DATASET_SPEC_MISMATCH: _ClassVar[RefusalReason]
PHASE_UNSPECIFIED: Phase
PHASE_WAITING_FOR_CLIENTS: Phase
PHASE_OPEN: Phase
PHASE_AGGREGATING: Phase
PHASE_FINISHED: Phase
REFUSAL_REASON_UNSPECIFIED: RefusalReason
REFUSAL_REASON_NO_TOKEN: RefusalReason
REFUSAL_REASON_BAD_TOKEN: RefusalReason
REFUSAL_REASON_WRONG_SCENARIO: RefusalReason
REFUSAL_REASON_UNKNOWN_SCENARIO: RefusalReason
REFUSAL_REASON_CERTIFICATE_SCENARIO_MISMATCH: RefusalReason
REFUSAL_REASON_BAD_SCENARIO: RefusalReason
REFUSAL_REASON_BAD_MANIFEST: RefusalReason
REFUSAL_REASON_BAD_VALUES: RefusalReason
REFUSAL_REASON_STREAM_TRUNCATED: RefusalReason
REFUSAL_REASON_STREAM_OVERFLOW: RefusalReason
REFUSAL_REASON_NO_HEADER: RefusalReason
REFUSAL_REASON_BAD_STREAM: RefusalReason
REFUSAL_REASON_BAD_NUM_SAMPLES: RefusalReason
REFUSAL_REASON_BAD_METRICS: RefusalReason
REFUSAL_REASON_TOO_LARGE: RefusalReason
REFUSAL_REASON_TOO_MANY_CALLS: RefusalReason
REFUSAL_REASON_WRONG_ROUND: RefusalReason
REFUSAL_REASON_NOT_OPEN: RefusalReason
REFUSAL_REASON_FINISHED: RefusalReason
REFUSAL_REASON_NOT_JOINED: RefusalReason
REFUSAL_REASON_SIGNATURE_MISMATCH: RefusalReason
REFUSAL_REASON_SPEC_MISMATCH: RefusalReason
REFUSAL_REASON_UNKNOWN_ROUND: RefusalReason
REFUSAL_REASON_CONFLICTING_RESUBMISSION: RefusalReason
REFUSAL_REASON_NOT_SAMPLED: RefusalReason
REFUSAL_REASON_RATE_LIMITED: RefusalReason
REFUSAL_REASON_DATASET_SPEC_MISMATCH: RefusalReason

class TensorSpec(_message.Message):
    __slots__ = ("name", "shape", "dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ...) -> None: ...

class Manifest(_message.Message):
    __slots__ = ("tensors", "total_bytes")
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    total_bytes: int
    def __init__(self, tensors: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class GetConfigRequest(_message.Message):
    __slots__ = ("scenario",)
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    scenario: str
    def __init__(self, scenario: _Optional[str] = ...) -> None: ...

class GetConfigResponse(_message.Message):
    __slots__ = ("protocol", "spec_json", "spec_digest", "heartbeat_interval_ms", "chunk_bytes", "max_payload_bytes")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    SPEC_DIGEST_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    protocol: str
    spec_json: str
    spec_digest: str
    heartbeat_interval_ms: int
    chunk_bytes: int
    max_payload_bytes: int
    def __init__(self, protocol: _Optional[str] = ..., spec_json: _Optional[str] = ..., spec_digest: _Optional[str] = ..., heartbeat_interval_ms: _Optional[int] = ..., chunk_bytes: _Optional[int] = ..., max_payload_bytes: _Optional[int] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("scenario", "spec_digest", "signature", "num_train_samples", "client_version", "dataset_spec_json")
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    SPEC_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    NUM_TRAIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CLIENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    scenario: str
    spec_digest: str
    signature: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    num_train_samples: int
    client_version: str
    dataset_spec_json: str
    def __init__(self, scenario: _Optional[str] = ..., spec_digest: _Optional[str] = ..., signature: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., num_train_samples: _Optional[int] = ..., client_version: _Optional[str] = ..., dataset_spec_json: _Optional[str] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("client_id", "session_id", "status")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    session_id: str
    status: RoundStatus
    def __init__(self, client_id: _Optional[str] = ..., session_id: _Optional[str] = ..., status: _Optional[_Union[RoundStatus, _Mapping]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("scenario", "session_id", "wait_ms", "after_round")
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    AFTER_ROUND_FIELD_NUMBER: _ClassVar[int]
    scenario: str
    session_id: str
    wait_ms: int
    after_round: int
    def __init__(self, scenario: _Optional[str] = ..., session_id: _Optional[str] = ..., wait_ms: _Optional[int] = ..., after_round: _Optional[int] = ...) -> None: ...

class RoundStatus(_message.Message):
    __slots__ = ("phase", "round", "completed_rounds", "total_rounds", "deadline_unix", "joined", "live", "submitted", "min_clients", "message", "you_are_joined", "you_submitted", "participants")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    JOINED_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_FIELD_NUMBER: _ClassVar[int]
    MIN_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    YOU_ARE_JOINED_FIELD_NUMBER: _ClassVar[int]
    YOU_SUBMITTED_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    phase: Phase
    round: int
    completed_rounds: int
    total_rounds: int
    deadline_unix: float
    joined: _containers.RepeatedScalarFieldContainer[str]
    live: _containers.RepeatedScalarFieldContainer[str]
    submitted: _containers.RepeatedScalarFieldContainer[str]
    min_clients: int
    message: str
    you_are_joined: bool
    you_submitted: bool
    participants: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, phase: _Optional[_Union[Phase, str]] = ..., round: _Optional[int] = ..., completed_rounds: _Optional[int] = ..., total_rounds: _Optional[int] = ..., deadline_unix: _Optional[float] = ..., joined: _Optional[_Iterable[str]] = ..., live: _Optional[_Iterable[str]] = ..., submitted: _Optional[_Iterable[str]] = ..., min_clients: _Optional[int] = ..., message: _Optional[str] = ..., you_are_joined: _Optional[bool] = ..., you_submitted: _Optional[bool] = ..., participants: _Optional[_Iterable[str]] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("scenario", "round")
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    scenario: str
    round: int
    def __init__(self, scenario: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class DownloadHeader(_message.Message):
    __slots__ = ("round", "completed_rounds", "final", "manifest")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    round: int
    completed_rounds: int
    final: bool
    manifest: Manifest
    def __init__(self, round: _Optional[int] = ..., completed_rounds: _Optional[int] = ..., final: _Optional[bool] = ..., manifest: _Optional[_Union[Manifest, _Mapping]] = ...) -> None: ...

class DownloadChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: DownloadHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[DownloadHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SubmitHeader(_message.Message):
    __slots__ = ("scenario", "round", "num_samples", "metrics", "manifest")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    scenario: str
    round: int
    num_samples: int
    metrics: _containers.ScalarMap[str, float]
    manifest: Manifest
    def __init__(self, scenario: _Optional[str] = ..., round: _Optional[int] = ..., num_samples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., manifest: _Optional[_Union[Manifest, _Mapping]] = ...) -> None: ...

class SubmitChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: SubmitHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[SubmitHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("accepted", "duplicate", "round", "payload_sha256", "status")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SHA256_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    duplicate: bool
    round: int
    payload_sha256: str
    status: RoundStatus
    def __init__(self, accepted: _Optional[bool] = ..., duplicate: _Optional[bool] = ..., round: _Optional[int] = ..., payload_sha256: _Optional[str] = ..., status: _Optional[_Union[RoundStatus, _Mapping]] = ...) -> None: ...

class TaskMetrics(_message.Message):
    __slots__ = ("task", "auc", "logloss", "n", "positives")
    TASK_FIELD_NUMBER: _ClassVar[int]
    AUC_FIELD_NUMBER: _ClassVar[int]
    LOGLOSS_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    POSITIVES_FIELD_NUMBER: _ClassVar[int]
    task: str
    auc: float
    logloss: float
    n: int
    positives: int
    def __init__(self, task: _Optional[str] = ..., auc: _Optional[float] = ..., logloss: _Optional[float] = ..., n: _Optional[int] = ..., positives: _Optional[int] = ...) -> None: ...

class SplitMetrics(_message.Message):
    __slots__ = ("split", "tasks")
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    split: str
    tasks: _containers.RepeatedCompositeFieldContainer[TaskMetrics]
    def __init__(self, split: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[TaskMetrics, _Mapping]]] = ...) -> None: ...

class ReportMetricsRequest(_message.Message):
    __slots__ = ("scenario", "round", "splits", "timings", "publish_error")
    class TimingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SPLITS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_ERROR_FIELD_NUMBER: _ClassVar[int]
    scenario: str
    round: int
    splits: _containers.RepeatedCompositeFieldContainer[SplitMetrics]
    timings: _containers.ScalarMap[str, float]
    publish_error: str
    def __init__(self, scenario: _Optional[str] = ..., round: _Optional[int] = ..., splits: _Optional[_Iterable[_Union[SplitMetrics, _Mapping]]] = ..., timings: _Optional[_Mapping[str, float]] = ..., publish_error: _Optional[str] = ...) -> None: ...

class ReportMetricsResponse(_message.Message):
    __slots__ = ("recorded",)
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    recorded: bool
    def __init__(self, recorded: _Optional[bool] = ...) -> None: ...
