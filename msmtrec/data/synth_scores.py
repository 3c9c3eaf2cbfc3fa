"""Score functions, intercept calibration, the CTR-CVR correlation and label sampling."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from msmtrec.data.schema import FeatureSchema
from msmtrec.data.synth_world import _sigmoid

# Variance shares of the score-function parts: main categorical effects, linear numericals,
# nonlinear numericals, pairwise interactions.
_GROUP_SHARES = np.array([0.40, 0.25, 0.12, 0.23])


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
