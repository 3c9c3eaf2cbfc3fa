"""A second, independently written ground truth: field-pair (factorization machine) scores.

Why a second generator: knobs of ``msmtrec.data.synth`` can be tuned against until a method
looks good on that one generative model. This module is the held-out check (data family
``fieldpair``): a different function class, written once and not tuned. Its click and
conversion logits are FM-style,

    logit_t(x) = b_t + signal * standardized(sum_f w_t,f[x_f] + num . u_t
                                             + sum_{f<g} <v_t,f[x_f], v_t,g[x_g]>),

over the 16 categorical fields plus ``_BINNED`` numericals bucketised into ``_BINS`` bins
(bin 0 = exact zero, then ranges split at reference tertiles) so that numericals take part in
the interactions. Variance is split evenly between the first-order and the pairwise part.

* Tasks: the conversion tables mix the click tables with their own,
  ``sqrt(task_share) * click + sqrt(1 - task_share) * own``, so the tasks are partly shared.
* ``concept_shift`` (c, per scenario): every field's latent factor vectors are ROTATED by the
  angle ``c * pi / 2`` in each plane of a random basis drawn for (scenario, field), the same
  rotation for both tasks; first-order effects become ``sqrt(1-c) * global + sqrt(c) * own``.
  A rotation shared by all fields would leave every inner product unchanged, hence one per
  field. At c = 1 each factor vector is orthogonal to its global counterpart.
* ``covariate_shift`` (v, mild by default): category frequencies ``(1-v) p + v q_s``, shifted
  mean of the latent drivers of the numericals and shifted zero rates.
* ``ctr`` / ``cvr``: intercepts calibrated per scenario on its train sample, as in the main
  generator. Conversion implies click; the true probabilities of test rows go to the oracle
  side file. Random streams are keyed by (seed, scenario name, purpose).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msmtrec.data.dataset import ScenarioData
from msmtrec.data.schema import ALIEXPRESS, FeatureSchema
from msmtrec.data.synth import (
    _PAGE_SIZE,
    SynthScenario,
    _calibrate,
    _labels,
    _MeanRate,
    _rng,
    _sigmoid,
    scenario_stats,
    summary_header,
    write_scenarios,
)

__all__ = ["FieldPairConfig", "generate", "synthesize"]

GENERATOR_VERSION = 1
_FACTOR_DIM = 4  # even: rotations act on planes
_BINNED = 8  # numericals that are bucketised and join the interactions
_BINS = 4
_DRIVERS = 4  # latent drivers of the numericals
_PAIR_SHARE = 0.5  # variance share of the pairwise part of each score
_REF_ROWS = 10_000


@dataclass
class FieldPairConfig:
    """Knobs of the field-pair generator (see the module docstring)."""

    scenarios: tuple[str, ...] = ("NL", "ES", "FR", "US")
    train_rows: int = 40_000
    test_rows: int = 10_000
    concept_shift: float = 0.3  # rotation of the factor vectors, as a fraction of a right angle
    covariate_shift: float = 0.1
    task_share: float = 0.5  # share of the conversion tables taken from the click tables
    ctr: float = 0.08
    cvr: float = 0.15
    signal: float = 1.2
    seed: int = 0
    fmt: str = "csv"

    def __post_init__(self) -> None:
        self.scenarios = tuple(self.scenarios)

    def validate(self) -> None:
        if not self.scenarios:
            raise ValueError("scenarios: at least one scenario is needed")
        if len(set(self.scenarios)) != len(self.scenarios):
            raise ValueError(f"scenarios: duplicate names {self.scenarios}")
        for name in self.scenarios:
            if not name or name in (".", "..") or "/" in name or "\\" in name:
                raise ValueError(f"scenarios: {name!r} is not a valid directory name")
        for key in ("concept_shift", "covariate_shift", "task_share"):
            v = getattr(self, key)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {v}")
        for key in ("ctr", "cvr"):
            v = getattr(self, key)
            if not 0.0 < v < 1.0:
                raise ValueError(f"{key} must be in (0, 1), got {v}")
        for key in ("train_rows", "test_rows"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not self.signal >= 0:
            raise ValueError(f"signal must be >= 0, got {self.signal}")
        if self.fmt not in ("csv", "parquet"):
            raise ValueError(f"fmt must be 'csv' or 'parquet', got {self.fmt!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scenarios"] = list(self.scenarios)
        return d


# --------------------------------------------------------------------------------------------
# Covariates


@dataclass
class _Inputs:
    """P(x) of one scenario: category frequencies, mean of the numerical drivers, zero rates."""

    cat_probs: list[np.ndarray]
    driver_mean: np.ndarray
    zero_rate: np.ndarray


class _Sampler:
    """Numericals are ``sigmoid(scale * (offset + drivers @ mix + noise))`` with exact zeros;
    categoricals are drawn independently from their frequencies."""

    def __init__(self, schema: FeatureSchema, rng: np.random.Generator) -> None:
        self.schema = schema
        fn = schema.num_numerical
        self.base = _Inputs(
            cat_probs=[rng.dirichlet(np.full(v, 1.0)) for v in schema.vocab_sizes],
            driver_mean=np.zeros(_DRIVERS),
            zero_rate=rng.uniform(0.05, 0.45, fn),
        )
        self.mix = rng.normal(0.0, 0.8, (_DRIVERS, fn))
        self.offset = rng.normal(0.0, 0.7, fn)
        self.scale = rng.uniform(0.7, 1.5, fn)

    def shifted(self, amount: float, rng: np.random.Generator) -> _Inputs:
        q = [rng.dirichlet(np.full(len(p), 1.0)) for p in self.base.cat_probs]
        d_mean = rng.normal(0.0, 0.8, _DRIVERS)
        d_zero = rng.normal(0.0, 0.15, len(self.base.zero_rate))
        return _Inputs(
            cat_probs=[
                (1 - amount) * p + amount * qq for p, qq in zip(self.base.cat_probs, q, strict=True)
            ],
            driver_mean=amount * d_mean,
            zero_rate=np.clip(self.base.zero_rate + amount * d_zero, 0.0, 0.9),
        )

    def sample(
        self, inputs: _Inputs, n: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        cat = np.empty((n, self.schema.num_categorical), dtype=np.int16)
        for j, p in enumerate(inputs.cat_probs):
            cdf = np.cumsum(p)
            cdf[-1] = 1.0
            cat[:, j] = np.searchsorted(cdf, rng.random(n), side="right")
        drivers = rng.standard_normal((n, _DRIVERS)) + inputs.driver_mean
        pre = self.offset + drivers @ self.mix + 0.6 * rng.standard_normal((n, len(self.offset)))
        num = _sigmoid(self.scale * pre)
        num[rng.random(num.shape) < inputs.zero_rate] = 0.0
        return cat, np.round(num, 6).astype(np.float32)


# --------------------------------------------------------------------------------------------
# The field-pair model


@dataclass
class _Tables:
    """One task's parameters: first-order effects and factor vectors per interaction field,
    and a linear effect of every numerical."""

    first: list[np.ndarray]  # per field (V_f,)
    factors: list[np.ndarray]  # per field (V_f, _FACTOR_DIM)
    linear: np.ndarray  # (F_num,)

    @classmethod
    def draw(cls, sizes: list[int], fn: int, rng: np.random.Generator) -> _Tables:
        field_w = rng.uniform(0.3, 1.0, len(sizes))
        first = [rng.normal(0.0, w, v) for w, v in zip(field_w, sizes, strict=True)]
        factors = [rng.normal(0.0, 1.0 / math.sqrt(_FACTOR_DIM), (v, _FACTOR_DIM)) for v in sizes]
        linear = rng.normal(0.0, 1.0, fn) * (rng.random(fn) < 0.3)
        return cls(first, factors, linear)

    def mixed(self, other: _Tables, keep: float, factors_too: bool = True) -> _Tables:
        """``sqrt(keep) * self + sqrt(1 - keep) * other`` (variance preserving)."""
        a, b = math.sqrt(keep), math.sqrt(1.0 - keep)
        return _Tables(
            first=[a * x + b * y for x, y in zip(self.first, other.first, strict=True)],
            factors=[a * x + b * y for x, y in zip(self.factors, other.factors, strict=True)]
            if factors_too
            else list(self.factors),
            linear=a * self.linear + b * other.linear,
        )

    def rotated(self, rotations: list[np.ndarray]) -> _Tables:
        return _Tables(
            self.first,
            [v @ r for v, r in zip(self.factors, rotations, strict=True)],
            self.linear.copy(),
        )

    def parts(self, fields: np.ndarray, num: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first-order, pairwise) raw scores of each row; ``fields`` (n, F) interaction ids."""
        n = len(fields)
        first = num @ self.linear
        total = np.zeros((n, _FACTOR_DIM))
        squares = np.zeros(n)
        for f, (w, v) in enumerate(zip(self.first, self.factors, strict=True)):
            ids = fields[:, f]
            first += w[ids]
            e = v[ids]
            total += e
            squares += np.einsum("ij,ij->i", e, e)
        pair = 0.5 * (np.einsum("ij,ij->i", total, total) - squares)
        return first, pair


def _rotation(angle: float, rng: np.random.Generator) -> np.ndarray:
    """Orthogonal matrix turning every vector by ``angle``: plane rotations in a random
    orthonormal basis (the draws happen whatever the angle, so angle only scales the shift)."""
    q, r = np.linalg.qr(rng.standard_normal((_FACTOR_DIM, _FACTOR_DIM)))
    q = q * np.sign(np.diag(r))
    block = np.zeros((_FACTOR_DIM, _FACTOR_DIM))
    c, s = math.cos(angle), math.sin(angle)
    for i in range(0, _FACTOR_DIM, 2):
        block[i : i + 2, i : i + 2] = [[c, -s], [s, c]]
    return q @ block @ q.T


@dataclass
class _Standardizer:
    """Mean/std of the first-order and pairwise parts of the GLOBAL model on the reference
    sample: every scenario's model uses them, so a scenario's score is a fixed function of x."""

    mean: tuple[float, float]
    std: tuple[float, float]

    @classmethod
    def fit(cls, parts: tuple[np.ndarray, np.ndarray]) -> _Standardizer:
        return cls(
            (float(parts[0].mean()), float(parts[1].mean())),
            (float(max(parts[0].std(), 1e-9)), float(max(parts[1].std(), 1e-9))),
        )

    def __call__(self, parts: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        first = (parts[0] - self.mean[0]) / self.std[0]
        pair = (parts[1] - self.mean[1]) / self.std[1]
        return math.sqrt(1 - _PAIR_SHARE) * first + math.sqrt(_PAIR_SHARE) * pair


class _Binner:
    """Interaction ids of each row: the categorical ids, then ``_BINNED`` numericals in
    ``_BINS`` bins (0 = exact zero, then ranges split at tertiles of the reference's nonzero
    values)."""

    def __init__(self, num_ref: np.ndarray, rng: np.random.Generator) -> None:
        fn = num_ref.shape[1]
        self.idx = np.sort(rng.choice(fn, min(_BINNED, fn), replace=False))
        self.edges = []
        for j in self.idx:
            nz = num_ref[:, j][num_ref[:, j] > 0]
            qs = np.linspace(0, 1, _BINS)[1:-1]
            self.edges.append(np.quantile(nz, qs) if len(nz) else np.linspace(0, 1, _BINS)[1:-1])

    def __call__(self, cat: np.ndarray, num: np.ndarray) -> np.ndarray:
        binned = np.empty((len(cat), len(self.idx)), dtype=np.int64)
        for k, (j, edges) in enumerate(zip(self.idx, self.edges, strict=True)):
            x = num[:, j]
            binned[:, k] = np.where(x > 0, 1 + np.searchsorted(edges, x, side="right"), 0)
        return np.concatenate([cat.astype(np.int64), binned], axis=1)


# --------------------------------------------------------------------------------------------
# Generation


def _scores(
    binner: _Binner,
    models: dict[str, _Tables],
    scale: dict[str, _Standardizer],
    cat: np.ndarray,
    num: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Standardized (click, conversion) scores of each row under one scenario's models."""
    fields = binner(cat, num)
    return (
        scale["click"](models["click"].parts(fields, num)),
        scale["conv"](models["conv"].parts(fields, num)),
    )


@dataclass(frozen=True)
class _Oracle:
    """One scenario's true labelling function: x -> (click logit, P(purchase | click) logit)."""

    binner: _Binner
    models: dict[str, _Tables]
    scale: dict[str, _Standardizer]
    signal: float
    a_ctr: float
    a_cvr: float

    def logits(self, cat: np.ndarray, num: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, r = _scores(self.binner, self.models, self.scale, cat, num)
        return self.signal * h + self.a_ctr, self.signal * r + self.a_cvr

    def __call__(self, cat: np.ndarray, num: np.ndarray) -> np.ndarray:
        """(n, 2) true P(click), P(click and purchase) of the rows (cat, num)."""
        ctr_logit, cvr_logit = self.logits(cat, num)
        p_ctr = _sigmoid(ctr_logit)
        return np.stack([p_ctr, p_ctr * _sigmoid(cvr_logit)], axis=1)


def generate(
    config: FieldPairConfig, schema: FeatureSchema = ALIEXPRESS
) -> dict[str, SynthScenario]:
    """All scenarios in memory (what ``synthesize`` writes). Deterministic by ``config.seed``."""
    config.validate()
    seed = config.seed
    salt = "fieldpair"  # keeps every stream apart from the main generator's
    sampler = _Sampler(schema, _rng(seed, salt, "inputs"))
    ref_cat, ref_num = sampler.sample(sampler.base, _REF_ROWS, _rng(seed, salt, "reference"))
    binner = _Binner(ref_num, _rng(seed, salt, "bins"))
    ref_fields = binner(ref_cat, ref_num)
    sizes = list(schema.vocab_sizes) + [_BINS] * len(binner.idx)
    fn = schema.num_numerical
    click = _Tables.draw(sizes, fn, _rng(seed, salt, "click"))
    conv = click.mixed(_Tables.draw(sizes, fn, _rng(seed, salt, "conversion")), config.task_share)
    scale = {"click": _Standardizer.fit(click.parts(ref_fields, ref_num))}
    scale["conv"] = _Standardizer.fit(conv.parts(ref_fields, ref_num))

    c, k = config.concept_shift, config.signal
    out: dict[str, SynthScenario] = {}
    for name in config.scenarios:
        rot_rng = _rng(seed, salt, name, "rotation")
        rotations = [_rotation(c * math.pi / 2, rot_rng) for _ in sizes]
        own = {
            t: _Tables.draw(sizes, fn, _rng(seed, salt, name, "concept", t))
            for t in ("click", "conv")
        }
        models = {
            "click": click.rotated(rotations).mixed(own["click"], 1 - c, factors_too=False),
            "conv": conv.rotated(rotations).mixed(own["conv"], 1 - c, factors_too=False),
        }

        inputs = sampler.shifted(config.covariate_shift, _rng(seed, salt, name, "covariates"))
        train_rng = _rng(seed, salt, name, "train")
        tr_cat, tr_num = sampler.sample(inputs, config.train_rows, train_rng)
        tr_h, tr_r = _scores(binner, models, scale, tr_cat, tr_num)
        a_ctr = _calibrate(config.ctr, _MeanRate(k * tr_h))
        a_cvr = _calibrate(
            config.ctr * config.cvr, _MeanRate(k * tr_r, weights=_sigmoid(a_ctr + k * tr_h))
        )
        oracle = _Oracle(binner, models, scale, k, a_ctr, a_cvr)
        tr_lab, _, _ = _labels(*oracle.logits(tr_cat, tr_num), train_rng)
        test_rng = _rng(seed, salt, name, "test")
        te_cat, te_num = sampler.sample(inputs, config.test_rows, test_rng)
        te_lab, te_pctr, te_pctcvr = _labels(*oracle.logits(te_cat, te_num), test_rng)

        zeros = np.zeros(schema.num_categorical, np.int64)
        n_train, n_test = config.train_rows, config.test_rows
        first_test_page = (n_train + _PAGE_SIZE - 1) // _PAGE_SIZE
        stats = scenario_stats(tr_lab, te_lab, (te_pctr, te_pctcvr), (a_ctr, a_cvr), (tr_h, tr_r))
        out[name] = SynthScenario(
            name=name,
            train=ScenarioData(tr_cat, tr_num, tr_lab, oov_counts=zeros.copy()),
            test=ScenarioData(te_cat, te_num, te_lab, oov_counts=zeros.copy()),
            train_ids=np.arange(n_train, dtype=np.int64) // _PAGE_SIZE,
            test_ids=first_test_page + np.arange(n_test, dtype=np.int64) // _PAGE_SIZE,
            test_oracle=np.stack([te_pctr, te_pctcvr], axis=1).astype(np.float64),
            stats=stats,
            oracle=oracle,
        )
    return out


def synthesize(
    out_dir: Path | str,
    config: FieldPairConfig,
    schema: FeatureSchema = ALIEXPRESS,
    family: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the same layout as ``msmtrec.data.synth.synthesize``: per scenario
    ``{train,test}.<fmt>`` and ``test.oracle.parquet``, and ``synth.json``."""
    summary = summary_header(
        "msmtrec.data.synth_fieldpair", GENERATOR_VERSION, config, schema, family
    )
    return write_scenarios(out_dir, generate(config, schema), summary, config.fmt, schema)
