"""Conversions between the core's types and the v1 messages, shared by server and client.

Kept next to the generated stubs so that the services never build messages by hand: the
manifest, the chunked streams and the metrics tables have one implementation.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from msmtrec.codec import Encoded, TensorSpec
from msmtrec_proto.federation.v1 import federation_pb2 as pb

PROTOCOL = "msmtrec.federation.v1"
SERVICE = "msmtrec.federation.v1.Federation"
# A chunk plus its envelope must fit a message; a manifest of many tensors must too.
MESSAGE_SLACK = 1 << 20


def specs_to_proto(specs: Iterable[TensorSpec]) -> list[pb.TensorSpec]:
    return [pb.TensorSpec(name=s.name, shape=list(s.shape), dtype=s.dtype) for s in specs]


def specs_from_proto(specs: Iterable[pb.TensorSpec]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(s.name, tuple(int(d) for d in s.shape), s.dtype) for s in specs)


def manifest(specs: Sequence[TensorSpec], total: int) -> pb.Manifest:
    return pb.Manifest(tensors=specs_to_proto(specs), total_bytes=total)


def download_stream(
    encoded: Encoded, chunk_bytes: int, *, round_number: int, completed: int, final: bool
) -> Iterator[pb.DownloadChunk]:
    header = pb.DownloadHeader(
        round=round_number,
        completed_rounds=completed,
        final=final,
        manifest=manifest(encoded.specs, encoded.total_bytes),
    )
    yield pb.DownloadChunk(header=header)
    for chunk in encoded.chunks(chunk_bytes):
        yield pb.DownloadChunk(data=bytes(chunk))


def submit_stream(
    encoded: Encoded,
    chunk_bytes: int,
    *,
    scenario: str,
    round_number: int,
    num_samples: int,
    metrics: Mapping[str, float],
) -> Iterator[pb.SubmitChunk]:
    header = pb.SubmitHeader(
        scenario=scenario,
        round=round_number,
        num_samples=num_samples,
        metrics={k: float(v) for k, v in metrics.items()},
        manifest=manifest(encoded.specs, encoded.total_bytes),
    )
    yield pb.SubmitChunk(header=header)
    for chunk in encoded.chunks(chunk_bytes):
        yield pb.SubmitChunk(data=bytes(chunk))


def split_metrics_to_proto(
    evals: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> list[pb.SplitMetrics]:
    out = []
    for split, tasks in evals.items():
        rows = []
        for task, m in tasks.items():
            row = pb.TaskMetrics(task=task, n=int(m.get("n") or 0))
            row.positives = int(m.get("positives") or 0)
            if m.get("auc") is not None:
                row.auc = float(m["auc"])
            if m.get("logloss") is not None:
                row.logloss = float(m["logloss"])
            rows.append(row)
        out.append(pb.SplitMetrics(split=split, tasks=rows))
    return out


def split_metrics_from_proto(
    splits: Iterable[pb.SplitMetrics],
) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for sm in splits:
        out[sm.split] = {
            t.task: {
                "auc": t.auc if t.HasField("auc") else None,
                "logloss": t.logloss if t.HasField("logloss") else None,
                "n": t.n,
                "positives": t.positives,
            }
            for t in sm.tasks
        }
    return out
