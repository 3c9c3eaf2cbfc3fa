"""The client's own disk: its full model state, so a restarted client resumes its local parts.

Embeddings, gates, W_T and BatchNorm never leave the client, so only the client can keep
them across a restart. One safetensors file holds the whole state_dict, with the bookkeeping
(scenario, spec digest, last trained and evaluated rounds) as JSON in its metadata; it is
written to a temporary file, fsynced and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

log = logging.getLogger("scenario_client")

FILE = "client-state.safetensors"
FORMAT = "msmtrec-client-state/1"


@dataclass
class StateMeta:
    scenario: str
    spec_digest: str
    trained_round: int = 0  # last round trained locally (submitted or not)
    evaluated_round: int = 0  # last completed round whose payload was evaluated
    privacy: dict | None = None  # DP accountant history: ε spent survives a restart


class LocalState:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.path = self.dir / FILE

    def save(self, state: Mapping[str, torch.Tensor], meta: StateMeta) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
        tmp = self.path.with_name(f".{FILE}.tmp-{os.getpid()}")
        try:
            save_file(
                tensors,
                str(tmp),
                metadata={
                    "format": FORMAT,
                    "meta": json.dumps(asdict(meta)),
                    "saved_at": f"{time.time():.3f}",
                },
            )
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            if tmp.exists():
                tmp.unlink()

    def load(
        self, scenario: str, spec_digest: str
    ) -> tuple[dict[str, torch.Tensor], StateMeta] | None:
        """The saved state if it belongs to this scenario and federation spec, else None."""
        if not self.path.is_file():
            return None
        try:
            with safe_open(str(self.path), framework="pt") as f:
                metadata = f.metadata() or {}
            meta = StateMeta(**json.loads(metadata["meta"]))
            tensors = load_file(str(self.path))
        except Exception as exc:
            log.warning("ignoring unreadable local state %s (%s)", self.path, exc)
            return None
        if metadata.get("format") != FORMAT:
            log.warning("ignoring %s: unknown format", self.path)
            return None
        if meta.scenario != scenario or meta.spec_digest != spec_digest:
            log.warning(
                "ignoring local state %s: it belongs to another scenario or federation spec",
                self.path,
            )
            return None
        return tensors, meta
