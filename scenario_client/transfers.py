"""The client's parameter transfers: a round's payload downloaded (manifest checked against
this client's model signature and the size limit before any byte is kept) and a submission
uploaded in chunks. A part of :class:`~scenario_client.runner.ScenarioClient` (a mixin)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from msmtrec.codec import Assembler, CodecError, Encoded, TensorSpec, check_manifest, decode
from msmtrec.faults import fault_point
from msmtrec_proto import wire
from msmtrec_proto.federation.v1 import federation_pb2 as pb
from scenario_client.connection import ClientError, Connection
from scenario_client.settings import ClientSettings


@dataclass
class PendingSubmission:
    round: int
    encoded: Encoded
    num_samples: int
    metrics: dict[str, float]


@dataclass
class Download:
    header: pb.DownloadHeader
    params: dict[str, torch.Tensor]
    nbytes: int
    seconds: float


class Transfers:
    """Downloads and uploads (see :class:`~scenario_client.runner.ScenarioClient`)."""

    # state of the ScenarioClient this part works on (set by ScenarioClient.__init__)
    settings: ClientSettings
    scenario: str
    conn: Connection
    md: Sequence[tuple[str, str]]
    signature: Sequence[TensorSpec]
    max_payload: int
    chunk_bytes: int

    def _download(self, round_number: int) -> Download:
        def attempt() -> Download:
            start = time.perf_counter()
            stream = self.conn.stub.Download(
                pb.DownloadRequest(scenario=self.scenario, round=round_number),
                timeout=self.conn.transfer_timeout,
                metadata=self.md,
            )
            header = None
            assembler = None
            specs: tuple = ()
            nbytes = 0
            try:
                for message in stream:
                    nbytes += message.ByteSize()
                    if message.WhichOneof("kind") == "header":
                        if header is not None:
                            raise ClientError("the aggregator sent two download headers")
                        header = message.header
                        specs = wire.specs_from_proto(header.manifest.tensors)
                        check_manifest(
                            specs,
                            self.signature,
                            declared_total=header.manifest.total_bytes,
                            max_bytes=self.max_payload,
                        )
                        assembler = Assembler(header.manifest.total_bytes)
                    elif assembler is None:
                        raise ClientError("the aggregator sent data before the header")
                    else:
                        assembler.feed(message.data)
                        fault_point("client.download_chunk", assembler.chunks - 1)
                if header is None or assembler is None:
                    raise ClientError("the aggregator sent an empty download")
                params = decode(specs, assembler.finish())
            except CodecError as exc:
                raise ClientError(f"the aggregator sent an invalid payload: {exc}") from exc
            return Download(header, params, nbytes, time.perf_counter() - start)

        return self.conn.call("Download", attempt)

    def _submit(self, pending: PendingSubmission) -> pb.SubmitResponse:
        def messages() -> Iterator[pb.SubmitChunk]:
            stream = wire.submit_stream(
                pending.encoded,
                self.chunk_bytes,
                scenario=self.scenario,
                round_number=pending.round,
                num_samples=pending.num_samples,
                metrics=pending.metrics,
            )
            for i, message in enumerate(stream):
                if i:
                    fault_point("client.upload_chunk", i - 1)
                yield message

        return self.conn.call(
            "Submit",
            lambda: self.conn.stub.Submit(
                messages(), timeout=self.conn.transfer_timeout, metadata=self.md
            ),
        )
