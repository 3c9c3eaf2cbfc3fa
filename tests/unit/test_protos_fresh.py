"""The committed gRPC stubs are what protoc makes of protos/ today (stale stubs fail).

Only the version stamps of the code generator are ignored, so upgrading grpcio-tools does not
fail this test while any change of the contract without regenerating does. Fix a failure
with ``python -m msmtrec_proto.generate``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from msmtrec_proto.generate import PROTO_ROOT, ROOT, generate, proto_files

pytest.importorskip("grpc_tools")

STAMPS = (
    re.compile(r"_runtime_version\.ValidateProtobufRuntimeVersion\([^)]*\)"),
    re.compile(r"^# Protobuf Python Version: .*$", re.M),
    re.compile(r"^GRPC_GENERATED_VERSION = .*$", re.M),
)


def normalized(path: Path) -> str:
    text = path.read_text()
    for pattern in STAMPS:
        text = pattern.sub("<version stamp>", text)
    return text


def test_committed_stubs_match_the_protos(tmp_path):
    assert proto_files(), f"no .proto files under {PROTO_ROOT}"
    fresh = generate(tmp_path)
    assert fresh
    for path in fresh:
        relative = path.relative_to(tmp_path)
        committed = ROOT / relative
        hint = "run python -m msmtrec_proto.generate"
        assert committed.is_file(), f"{relative} is not committed; {hint}"
        assert normalized(committed) == normalized(path), f"{relative} is stale; {hint}"


def test_the_contract_is_versioned():
    from msmtrec_proto.federation.v1 import federation_pb2 as pb

    assert pb.DESCRIPTOR.package == "msmtrec.federation.v1"
    service = pb.DESCRIPTOR.services_by_name["Federation"]
    assert {m.name for m in service.methods} == {
        "GetConfig", "Join", "Heartbeat", "Download", "Submit", "ReportMetrics",
    }  # fmt: skip
    assert service.methods_by_name["Download"].server_streaming
    assert service.methods_by_name["Submit"].client_streaming
