"""Synthetic multi-scenario AliExpress-format data with controllable heterogeneity.

Why this generative model: the research question is when federation helps (scenarios share
knowledge) and when personalization matters (scenarios differ). So every knob maps to one
kind of difference between scenarios:

* ``concept_shift`` (c): the click score is ``sqrt(1-c) * F_global(x) + sqrt(c) * F_s(x)``;
  ``c`` is the fraction of the score's variance that is scenario specific. c = 0: one shared
  function (pooling data helps); c = 1: unrelated functions (only local data helps).
* ``covariate_shift`` (v): category frequencies ``(1-v) p_global + v q_s`` (q_s Dirichlet) and
  shifted numerical means and zero rates. Changes P(x), not P(y | x): what FedBN absorbs.
* ``task_correlation`` (rho): the CVR score is ``rho * h_ctr + sqrt(1-rho^2) * h_cvr``.
* ``task_conflict`` (k): the CTR-CVR relation differs between scenarios. Scenarios at odd
  positions (the 2nd, 4th, ...) get ``rho * (1 - 2k)``, the others ``rho``: at k = 1 half the
  scenarios have the opposite sign (a click-likely item is conversion-unlikely there), which is
  where a task-shared representation learned in one scenario misleads another.
* ``quantity_skew`` (q >= 1): the last scenario gets ``train_rows / q`` training rows (its
  test rows are unchanged, so its AUC stays measurable): the data-poor participant that
  federation should help most.
* ``calibration``: ``scenario`` (default) fits the intercepts (and the CTR-CVR decorrelation)
  on each scenario's train sample, so every scenario hits the target rates; ``shared`` fits
  them once on the global reference sample, so with ``concept_shift = 0`` all scenarios have
  exactly the same P(y | x) (pure covariate shift) and their realized rates follow P(x).
* ``ctr`` / ``cvr``: intercepts are calibrated by bisection per scenario, so the realized click
  rate is ``ctr`` and the conversion (click-and-purchase) rate is ``ctr * cvr``.

``synthesize`` also writes the true probabilities of every test row to
``<scenario>/test.oracle.parquet`` (see ``msmtrec.data.oracle``): the ceiling any model can
reach on that test set.

Each score function F is learnable but not linear: per-category effect tables, a sparse
linear part, bumps/steps of some numericals, and pairwise categorical x categorical,
categorical x numerical and numerical x numerical interactions. A logistic regression on
one-hot + numericals therefore gets a clearly-better-than-chance but imperfect AUC; an MMoE
can do better. Random streams are keyed by (seed, scenario name, purpose), so adding a
scenario or changing a knob never changes another scenario's functions or the global one.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msmtrec.data.dataset import ScenarioData
from msmtrec.data.loader import write_split
from msmtrec.data.oracle import write_oracle
from msmtrec.data.schema import ALIEXPRESS, FeatureSchema

__all__ = ["SynthConfig", "SynthScenario", "generate", "synthesize", "write_scenarios"]

GENERATOR_VERSION = 1
_LATENT_DIM = 8
_PAGE_SIZE = 20  # impressions per search page: search_id = page number
_REF_ROWS = 10_000  # reference sample that standardizes every score function
# Variance shares of the score-function parts: main categorical effects, linear numericals,
# nonlinear numericals, pairwise interactions.
_GROUP_SHARES = np.array([0.40, 0.25, 0.12, 0.23])


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


# --------------------------------------------------------------------------------------------
# Random streams and covariates


def _rng(seed: int, *key: int | str) -> np.random.Generator:
    """Independent stream per (seed, key...): names hashed with crc32 (stable across runs)."""
    words = [int(seed) & 0xFFFFFFFF]
    for k in key:
        words.append(zlib.crc32(k.encode()) if isinstance(k, str) else int(k) & 0xFFFFFFFF)
    return np.random.default_rng(np.random.SeedSequence(words))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free


@dataclass
class _Covariates:
    """Parameters of P(x) for one scenario (or the global reference)."""

    cat_probs: list[np.ndarray]  # per field, (V,)
    factor_mean: np.ndarray  # (LATENT,)
    num_shift: np.ndarray  # (F_num,)
    zero_rate: np.ndarray  # (F_num,)


@dataclass
class _World:
    """Global parameters shared by all scenarios: P(x) around which scenarios vary, and how
    numericals derive from latent factors."""

    schema: FeatureSchema
    base: _Covariates
    loading: np.ndarray  # (F_num, LATENT)
    num_mean: np.ndarray  # (F_num,)
    num_scale: np.ndarray  # (F_num,)
    cat_factor: np.ndarray  # (V_0, LATENT): the first field moves the latent factors

    @classmethod
    def create(cls, schema: FeatureSchema, seed: int) -> _World:
        rng = _rng(seed, "world")
        probs = [rng.dirichlet(np.full(v, 0.8)) for v in schema.vocab_sizes]
        f = schema.num_numerical
        base = _Covariates(
            cat_probs=probs,
            factor_mean=np.zeros(_LATENT_DIM),
            num_shift=np.zeros(f),
            zero_rate=0.6 * rng.beta(1.0, 2.0, f),
        )
        return cls(
            schema=schema,
            base=base,
            loading=rng.normal(0.0, 0.5, (f, _LATENT_DIM)),
            num_mean=rng.normal(-0.3, 0.8, f),
            num_scale=rng.uniform(0.8, 1.6, f),
            cat_factor=rng.normal(0.0, 0.5, (schema.vocab_sizes[0], _LATENT_DIM)),
        )

    def shifted(self, cov: _Covariates, amount: float, rng: np.random.Generator) -> _Covariates:
        """``cov`` moved towards a random direction drawn from ``rng`` by ``amount`` in [0, 1].
        The random draws happen whatever the amount, so amount only scales the shift."""
        q = [rng.dirichlet(np.full(len(p), 0.8)) for p in cov.cat_probs]
        d_factor = rng.normal(0.0, 0.7, _LATENT_DIM)
        d_num = rng.normal(0.0, 1.0, len(cov.num_shift))
        d_zero = rng.normal(0.0, 0.15, len(cov.zero_rate))
        return _Covariates(
            cat_probs=[
                (1 - amount) * p + amount * qq for p, qq in zip(cov.cat_probs, q, strict=True)
            ],
            factor_mean=cov.factor_mean + amount * d_factor,
            num_shift=cov.num_shift + amount * d_num,
            zero_rate=np.clip(cov.zero_rate + amount * d_zero, 0.0, 0.9),
        )

    def sample(
        self, cov: _Covariates, n: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """n rows: categorical (n, F_cat) int16 ids and numerical (n, F_num) float32 in [0, 1]
        with a share of exact zeros (like the real data)."""
        s = self.schema
        cat = np.empty((n, s.num_categorical), dtype=np.int16)
        for j, p in enumerate(cov.cat_probs):
            cdf = np.cumsum(p)
            cdf[-1] = 1.0
            cat[:, j] = np.searchsorted(cdf, rng.random(n), side="right")
        z = rng.standard_normal((n, _LATENT_DIM)) + cov.factor_mean + self.cat_factor[cat[:, 0]]
        latent = self.num_mean + cov.num_shift + z @ self.loading.T
        latent += 0.7 * rng.standard_normal(latent.shape)
        num = _sigmoid(self.num_scale * latent)
        num[rng.random(num.shape) < cov.zero_rate] = 0.0
        return cat, np.round(num, 6).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Score functions


class _ScoreFunction:
    """A random learnable-but-nonlinear function of (categorical, numerical), standardized to
    mean 0 / variance 1 on the global reference distribution."""

    def __init__(self, schema: FeatureSchema, rng: np.random.Generator) -> None:
        fc, fn = schema.num_categorical, schema.num_numerical
        vocab = schema.vocab_sizes
        field_w = rng.uniform(0.3, 1.0, fc)
        self.cat_tables = [rng.normal(0.0, field_w[j], v) for j, v in enumerate(vocab)]
        self.linear = rng.normal(0.0, 1.0, fn) * (rng.random(fn) < 0.5)
        k = min(8, fn)
        self.nl_idx = rng.choice(fn, k, replace=False)
        self.nl_center = rng.uniform(0.2, 0.8, k)
        self.nl_amp = rng.normal(0.0, 1.0, k)
        self.nl_bump = rng.random(k) < 0.5  # bump (non-monotone) or step
        rich = [j for j, v in enumerate(vocab) if v > 2] or list(range(fc))
        n_pairs = min(3, len(rich) * (len(rich) - 1) // 2)
        pairs: list[tuple[int, int]] = []
        while len(pairs) < n_pairs:
            a, b = sorted(int(x) for x in rng.choice(rich, 2, replace=False))
            if (a, b) not in pairs:
                pairs.append((a, b))
        self.cc_pairs = pairs
        self.cc_tables = [rng.normal(0.0, 1.0, (vocab[a], vocab[b])) for a, b in pairs]
        self.cn_pairs = [(int(rng.choice(rich)), int(rng.integers(fn))) for _ in range(3)]
        self.cn_slopes = [rng.normal(0.0, 2.0, vocab[a]) for a, _ in self.cn_pairs]
        self.nn_pairs = [tuple(int(x) for x in rng.choice(fn, 2, replace=False)) for _ in range(6)]
        self.nn_coef = rng.normal(0.0, 4.0, len(self.nn_pairs))
        self.group_mean = np.zeros(len(_GROUP_SHARES))
        self.group_std = np.ones(len(_GROUP_SHARES))
        self.mean, self.std = 0.0, 1.0

    def _groups(self, cat: np.ndarray, num: np.ndarray) -> np.ndarray:
        n = len(cat)
        g = np.zeros((n, len(_GROUP_SHARES)))
        for j, table in enumerate(self.cat_tables):
            g[:, 0] += table[cat[:, j]]
        g[:, 1] = num @ self.linear
        x = num[:, self.nl_idx]
        d = x - self.nl_center
        shape = np.where(self.nl_bump, np.exp(-((d / 0.12) ** 2)), np.tanh(10.0 * d))
        g[:, 2] = shape @ self.nl_amp
        for (a, b), table in zip(self.cc_pairs, self.cc_tables, strict=True):
            g[:, 3] += table[cat[:, a], cat[:, b]]
        for (a, j), slope in zip(self.cn_pairs, self.cn_slopes, strict=True):
            g[:, 3] += slope[cat[:, a]] * (num[:, j] - 0.5)
        for (i, j), c in zip(self.nn_pairs, self.nn_coef, strict=True):
            g[:, 3] += c * (num[:, i] - 0.5) * (num[:, j] - 0.5)
        return g

    def fit_scale(self, cat: np.ndarray, num: np.ndarray) -> _ScoreFunction:
        g = self._groups(cat, num)
        self.group_mean = g.mean(axis=0)
        self.group_std = np.maximum(g.std(axis=0), 1e-9)
        raw = self._combine(g)
        self.mean, self.std = float(raw.mean()), float(max(raw.std(), 1e-9))
        return self

    def _combine(self, g: np.ndarray) -> np.ndarray:
        return ((g - self.group_mean) / self.group_std) @ np.sqrt(_GROUP_SHARES)

    def __call__(self, cat: np.ndarray, num: np.ndarray) -> np.ndarray:
        return (self._combine(self._groups(cat, num)) - self.mean) / self.std


def _calibrate(target: float, fn: Any, lo: float = -30.0, hi: float = 30.0) -> float:
    """Intercept b with mean(fn(b)) == target, by bisection (fn increases in b)."""
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if fn(mid) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Rank AUC with ties averaged; None when only one class is present."""
    pos = int(labels.sum())
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s))
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[labels.astype(bool)].sum() - pos * (pos + 1) / 2) / (pos * neg))


class _MeanRate:
    """b -> mean(weights * sigmoid(b + logits)): the realized rate for intercept b."""

    def __init__(self, logits: np.ndarray, weights: np.ndarray | None = None) -> None:
        self.logits, self.weights = logits, weights

    def __call__(self, b: float) -> float:
        p = _sigmoid(b + self.logits)
        return float((p if self.weights is None else p * self.weights).mean())


def _task_scores(
    cat: np.ndarray,
    num: np.ndarray,
    parts: tuple[_ScoreFunction, _ScoreFunction, _ScoreFunction, _ScoreFunction],
    concept_shift: float,
) -> tuple[np.ndarray, np.ndarray]:
    """CTR score and the CVR task's own score of each row (variance ~1 each)."""
    ctr_g, ctr_s, cvr_g, cvr_s = parts
    wg, ws = math.sqrt(1 - concept_shift), math.sqrt(concept_shift)
    h_ctr = wg * ctr_g(cat, num) + ws * ctr_s(cat, num)
    h_cvr = wg * cvr_g(cat, num) + ws * cvr_s(cat, num)
    return h_ctr, h_cvr


@dataclass(frozen=True)
class _Correlator:
    """CVR score = rho * h_ctr + sqrt(1 - rho^2) * residual, where the residual is the CVR
    task's own score with its (chance) projection on h_ctr removed. The projection is fitted
    once on the train sample and reused for test, so it is a fixed function of x and the
    realized train correlation is rho."""

    rho: float
    beta: float
    mean: float
    std: float

    @classmethod
    def fit(cls, rho: float, h_ctr: np.ndarray, h_own: np.ndarray) -> _Correlator:
        var = float(h_ctr.var())
        beta = float(((h_ctr - h_ctr.mean()) * (h_own - h_own.mean())).mean() / var) if var else 0.0
        resid = h_own - beta * h_ctr
        return cls(rho, beta, float(resid.mean()), float(max(resid.std(), 1e-9)))

    def __call__(self, h_ctr: np.ndarray, h_own: np.ndarray) -> np.ndarray:
        resid = (h_own - self.beta * h_ctr - self.mean) / self.std
        return self.rho * h_ctr + math.sqrt(max(0.0, 1 - self.rho**2)) * resid


@dataclass(frozen=True)
class _ScenarioModel:
    """One scenario's true labelling function: x -> (click logit, P(purchase | click) logit)."""

    parts: tuple[_ScoreFunction, _ScoreFunction, _ScoreFunction, _ScoreFunction]
    concept_shift: float
    correlate: _Correlator
    signal: float
    a_ctr: float
    a_cvr: float

    def logits(self, cat: np.ndarray, num: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, own = _task_scores(cat, num, self.parts, self.concept_shift)
        k = self.signal
        return k * h + self.a_ctr, k * self.correlate(h, own) + self.a_cvr

    def __call__(self, cat: np.ndarray, num: np.ndarray) -> np.ndarray:
        """(n, 2) true P(click), P(click and purchase) of the rows (cat, num)."""
        ctr_logit, cvr_logit = self.logits(cat, num)
        p_ctr = _sigmoid(ctr_logit)
        return np.stack([p_ctr, p_ctr * _sigmoid(cvr_logit)], axis=1)


def _labels(
    ctr_logit: np.ndarray, cvr_logit: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels (n, 2) uint8, P(click), P(click and purchase)); conversion implies click."""
    p_ctr, p_cvr = _sigmoid(ctr_logit), _sigmoid(cvr_logit)
    click = rng.random(len(p_ctr)) < p_ctr
    conv = click & (rng.random(len(p_ctr)) < p_cvr)
    return np.stack([click, conv], axis=1).astype(np.uint8), p_ctr, p_ctr * p_cvr


# --------------------------------------------------------------------------------------------
# Generation


def scenario_stats(
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    test_probs: tuple[np.ndarray, np.ndarray],
    intercepts: tuple[float, float],
    latent_scores: tuple[np.ndarray, np.ndarray],
) -> dict[str, Any]:
    """synth.json's per-scenario figures, the same for every generator: realized rates, the
    intercepts, the latent CTR-CVR correlation and the oracle's test AUC (the ceiling any
    model can reach)."""
    n_train = len(train_labels)
    return {
        "train_rows": n_train,
        "test_rows": len(test_labels),
        "train_ctr": float(train_labels[:, 0].mean()),
        "train_ctcvr": float(train_labels[:, 1].mean()),
        "train_cvr_given_click": float(train_labels[:, 1].sum() / max(1, train_labels[:, 0].sum())),
        "test_ctr": float(test_labels[:, 0].mean()),
        "test_ctcvr": float(test_labels[:, 1].mean()),
        "ctr_intercept": intercepts[0],
        "cvr_intercept": intercepts[1],
        "latent_task_correlation": float(np.corrcoef(*latent_scores)[0, 1])
        if n_train > 2
        else None,
        "oracle_test_auc": {
            "ctr": _auc(test_probs[0], test_labels[:, 0]),
            "ctcvr": _auc(test_probs[1], test_labels[:, 1]),
        },
    }


def summary_header(
    generator: str, version: int, config: Any, schema: FeatureSchema, family: dict | None
) -> dict[str, Any]:
    """synth.json's head: which generator and version, its config, the schema, the family."""
    summary: dict[str, Any] = {
        "generator": generator,
        "generator_version": version,
        "config": config.to_dict(),
        "schema": schema.to_dict(),
    }
    if family is not None:
        summary["family"] = family
    return summary


def generate(config: SynthConfig, schema: FeatureSchema = ALIEXPRESS) -> dict[str, SynthScenario]:
    """All scenarios in memory (what ``synthesize`` writes). Deterministic by ``config.seed``."""
    config.validate()
    seed = config.seed
    world = _World.create(schema, seed)
    ref_cat, ref_num = world.sample(world.base, _REF_ROWS, _rng(seed, "reference"))

    def fitted(*key: str) -> _ScoreFunction:
        return _ScoreFunction(schema, _rng(seed, *key)).fit_scale(ref_cat, ref_num)

    ctr_global, cvr_global = fitted("ctr", "global"), fitted("cvr", "global")
    c = config.concept_shift
    out: dict[str, SynthScenario] = {}
    for index, name in enumerate(config.scenarios):
        n_train, n_test = config.rows_for(index)
        rho = config.task_correlation_for(index)
        cov = world.shifted(world.base, config.covariate_shift, _rng(seed, name, "covariates"))
        cov_test = world.shifted(cov, config.test_drift, _rng(seed, name, "drift"))
        parts = (ctr_global, fitted("ctr", name), cvr_global, fitted("cvr", name))

        sample_rng = _rng(seed, name, "train")
        tr_cat, tr_num = world.sample(cov, n_train, sample_rng)
        tr_h, tr_own = _task_scores(tr_cat, tr_num, parts, c)
        # Where the intercepts and the CTR-CVR decorrelation are fitted: this scenario's train
        # sample (its rates hit the targets) or the shared reference sample (scenarios with
        # the same score functions then have exactly the same P(y | x)).
        if config.calibration == "shared":
            fit_h, fit_own = _task_scores(ref_cat, ref_num, parts, c)
        else:
            fit_h, fit_own = tr_h, tr_own
        correlate = _Correlator.fit(rho, fit_h, fit_own)
        fit_r = correlate(fit_h, fit_own)
        k = config.signal
        a_ctr = _calibrate(config.ctr, _MeanRate(k * fit_h))
        a_cvr = _calibrate(
            config.ctr * config.cvr, _MeanRate(k * fit_r, weights=_sigmoid(a_ctr + k * fit_h))
        )
        model = _ScenarioModel(parts, c, correlate, k, a_ctr, a_cvr)
        tr_lab, _, _ = _labels(*model.logits(tr_cat, tr_num), sample_rng)
        tr_r = correlate(tr_h, tr_own)
        test_rng = _rng(seed, name, "test")
        te_cat, te_num = world.sample(cov_test, n_test, test_rng)
        te_lab, te_pctr, te_pctcvr = _labels(*model.logits(te_cat, te_num), test_rng)

        train = ScenarioData(
            tr_cat, tr_num, tr_lab, oov_counts=np.zeros(schema.num_categorical, np.int64)
        )
        test = ScenarioData(
            te_cat, te_num, te_lab, oov_counts=np.zeros(schema.num_categorical, np.int64)
        )
        first_test_page = (n_train + _PAGE_SIZE - 1) // _PAGE_SIZE
        stats = scenario_stats(tr_lab, te_lab, (te_pctr, te_pctcvr), (a_ctr, a_cvr), (tr_h, tr_r))
        out[name] = SynthScenario(
            name=name,
            train=train,
            test=test,
            train_ids=np.arange(n_train, dtype=np.int64) // _PAGE_SIZE,
            test_ids=first_test_page + np.arange(n_test, dtype=np.int64) // _PAGE_SIZE,
            test_oracle=np.stack([te_pctr, te_pctcvr], axis=1).astype(np.float64),
            stats=stats,
            oracle=model,
        )
    return out


def _rounded(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, 6)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


def write_scenarios(
    out_dir: Path | str,
    scenarios: dict[str, SynthScenario],
    summary: dict[str, Any],
    fmt: str,
    schema: FeatureSchema = ALIEXPRESS,
) -> dict[str, Any]:
    """Write each scenario's ``{train,test}.<fmt>`` and ``test.oracle.parquet``, then
    ``synth.json`` = ``summary`` plus the per-scenario stats (floats rounded). Shared by every
    generator so they all produce the same on-disk layout."""
    out_dir = Path(out_dir)
    summary = {**summary, "scenarios": {}}
    for name, sc in scenarios.items():
        directory = out_dir / name
        directory.mkdir(parents=True, exist_ok=True)
        write_split(sc.train, directory / f"train.{fmt}", schema, sc.train_ids)
        write_split(sc.test, directory / f"test.{fmt}", schema, sc.test_ids)
        write_oracle(directory, sc.test_oracle)
        summary["scenarios"][name] = sc.stats
    summary = _rounded(summary)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "synth.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    tmp.replace(out_dir / "synth.json")
    return summary


def synthesize(
    out_dir: Path | str,
    config: SynthConfig,
    schema: FeatureSchema = ALIEXPRESS,
    family: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``<out_dir>/<scenario>/{train,test}.<fmt>``, the oracle side file
    ``<out_dir>/<scenario>/test.oracle.parquet`` and ``<out_dir>/synth.json`` (the config,
    ``family`` when given, and per-scenario realized rates). Same seed and knobs ->
    byte-identical files."""
    summary = summary_header("msmtrec.data.synth", GENERATOR_VERSION, config, schema, family)
    return write_scenarios(out_dir, generate(config, schema), summary, config.fmt, schema)
