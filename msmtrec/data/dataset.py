"""In-memory arrays of one scenario split, in memory-lean dtypes.

Categorical ids are stored as int16 (vocabularies are tiny; ids are already mapped into
``[0, vocab]`` with ``vocab`` the out-of-vocabulary slot), numericals as float32, labels as
uint8. Training indexes these arrays in whole batches; there is no per-row Python work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from msmtrec.data.schema import FeatureSchema


@dataclass
class ScenarioData:
    """One split of one scenario: ``categorical`` (n, F_cat) int16, ``numerical`` (n, F_num)
    float32, ``labels`` (n, T) uint8 in task order (click, conversion)."""

    categorical: np.ndarray
    numerical: np.ndarray
    labels: np.ndarray
    oov_counts: np.ndarray | None = None  # per categorical field, ids mapped to the OOV slot

    def __post_init__(self) -> None:
        n = len(self.categorical)
        if len(self.numerical) != n or len(self.labels) != n:
            raise ValueError("categorical, numerical and labels must have the same row count")

    def __len__(self) -> int:
        return len(self.categorical)

    @property
    def nbytes(self) -> int:
        return self.categorical.nbytes + self.numerical.nbytes + self.labels.nbytes

    def slice(self, start: int, stop: int) -> ScenarioData:
        return ScenarioData(
            self.categorical[start:stop], self.numerical[start:stop], self.labels[start:stop]
        )

    def split_tail(self, fraction: float) -> tuple[ScenarioData, ScenarioData]:
        """Split off the last ``fraction`` of rows (time-ordered files: the newest rows) as the
        validation slice. Returns (head, tail)."""
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
        n_tail = max(1, round(len(self) * fraction))
        cut = len(self) - n_tail
        return self.slice(0, cut), self.slice(cut, len(self))

    @staticmethod
    def concat(parts: list[ScenarioData]) -> ScenarioData:
        return ScenarioData(
            np.concatenate([p.categorical for p in parts]),
            np.concatenate([p.numerical for p in parts]),
            np.concatenate([p.labels for p in parts]),
        )

    def positives(self) -> np.ndarray:
        return self.labels.sum(axis=0, dtype=np.int64)


@dataclass
class ScenarioSplits:
    """train / validation (tail of train) / test of one scenario."""

    name: str
    train: ScenarioData
    valid: ScenarioData
    test: ScenarioData
    schema: FeatureSchema
