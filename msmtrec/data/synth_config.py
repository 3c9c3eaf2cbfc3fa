"""The synthetic generator's knobs (``SynthConfig``) and one scenario (``SynthScenario``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from msmtrec.data.dataset import ScenarioData


@dataclass
class SynthConfig:
    """Knobs of the generator (see the module docstring for what each one changes)."""

    scenarios: tuple[str, ...] = ("NL", "ES", "FR", "US")
    train_rows: int = 40_000
    test_rows: int = 10_000
    concept_shift: float = 0.3
    covariate_shift: float = 0.3
    task_correlation: float = 0.5
    ctr: float = 0.08
    cvr: float = 0.15
    imbalance: float = 0.0  # scenario i gets rows * exp(-imbalance * i)
    signal: float = 1.2  # std of the feature-dependent part of each logit (AUC ceiling ~0.8)
    test_drift: float = 0.0  # extra covariate shift of test relative to train, in [0, 1]
    seed: int = 0
    fmt: str = "csv"
    # Knobs added after generator version 1: at these defaults the output is what version 1
    # wrote, and ``to_dict`` leaves them out so synth.json stays byte-identical too.
    task_conflict: float = 0.0  # odd-position scenarios get rho * (1 - 2 * task_conflict)
    quantity_skew: float = 1.0  # the last scenario gets train_rows / quantity_skew rows
    # "scenario": intercepts and the CTR-CVR decorrelation fitted on each scenario's train
    # sample; "shared": on the global reference sample, so equal score functions (concept
    # shift 0) give exactly equal P(y | x) and realized rates move with P(x)
    calibration: str = "scenario"

    def __post_init__(self) -> None:
        self.scenarios = tuple(self.scenarios)

    def validate(self) -> None:
        if not self.scenarios:
            raise ValueError("at least one scenario is needed")
        if len(set(self.scenarios)) != len(self.scenarios):
            raise ValueError(f"duplicate scenario names: {self.scenarios}")
        for name in self.scenarios:
            if not name or name in (".", "..") or "/" in name or "\\" in name:
                raise ValueError(f"scenario name {name!r} is not a valid directory name")
        for key in ("concept_shift", "covariate_shift", "test_drift", "task_conflict"):
            v = getattr(self, key)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {v}")
        if not -1.0 <= self.task_correlation <= 1.0:
            raise ValueError(f"task_correlation must be in [-1, 1], got {self.task_correlation}")
        for key in ("ctr", "cvr"):
            v = getattr(self, key)
            if not 0.0 < v < 1.0:
                raise ValueError(f"{key} must be in (0, 1), got {v}")
        if self.train_rows < 1 or self.test_rows < 1:
            raise ValueError("train_rows and test_rows must be >= 1")
        if self.imbalance < 0 or self.signal < 0:
            raise ValueError("imbalance and signal must be >= 0")
        if not (math.isfinite(self.quantity_skew) and self.quantity_skew >= 1.0):
            raise ValueError(f"quantity_skew must be >= 1, got {self.quantity_skew}")
        if self.fmt not in ("csv", "parquet"):
            raise ValueError(f"fmt must be 'csv' or 'parquet', got {self.fmt!r}")
        if self.calibration not in ("scenario", "shared"):
            raise ValueError(
                f"calibration must be 'scenario' or 'shared', got {self.calibration!r}"
            )

    def rows_for(self, index: int) -> tuple[int, int]:
        """(train, test) rows of the index-th scenario under the imbalance knob, and for the
        last scenario the quantity skew (train rows only)."""
        f = math.exp(-self.imbalance * index)
        train = self.train_rows * f
        if index == len(self.scenarios) - 1:
            train /= self.quantity_skew
        return max(1, round(train)), max(1, round(self.test_rows * f))

    def task_correlation_for(self, index: int) -> float:
        """The CTR-CVR latent correlation of the index-th scenario under ``task_conflict``."""
        if index % 2 == 1:
            return self.task_correlation * (1.0 - 2.0 * self.task_conflict)
        return self.task_correlation

    def to_dict(self) -> dict[str, Any]:
        """All knobs, except those added after version 1 while at their defaults."""
        d = asdict(self)
        d["scenarios"] = list(self.scenarios)
        for key, default in _LATER_KNOBS.items():
            if d[key] == default:
                del d[key]
        return d


_LATER_KNOBS = {"task_conflict": 0.0, "quantity_skew": 1.0, "calibration": "scenario"}


@dataclass
class SynthScenario:
    """One generated scenario, in memory."""

    name: str
    train: ScenarioData
    test: ScenarioData
    train_ids: np.ndarray
    test_ids: np.ndarray
    test_oracle: np.ndarray  # (n_test, 2) float64: true P(click), P(click and purchase)
    stats: dict[str, Any] = field(default_factory=dict)
    # The scenario's true function (categorical, numerical) -> (n, 2) probabilities as in
    # test_oracle: lets a caller score any rows, e.g. one scenario's rows under another's model.
    oracle: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = field(default=None, repr=False)
