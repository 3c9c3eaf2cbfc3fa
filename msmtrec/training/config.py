"""Local training settings (kept free of torch so that CLIs and settings models can read the
defaults without importing it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TrainConfig:
    # Chosen on validation for the synthetic benchmark scale (tens of thousands of rows per
    # scenario). MTReclib's full-AliExpress setting is lr 1e-3 with batch 2048.
    lr: float = 3e-3
    weight_decay: float = 1e-6
    batch_size: int = 512
    local_epochs: int = 1
    eval_batch_size: int = 16384

    def to_dict(self) -> dict:
        return asdict(self)
