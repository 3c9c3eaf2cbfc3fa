"""Random streams keyed by name, and P(x): the global covariates and each scenario's shift."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from msmtrec.data.schema import FeatureSchema

_LATENT_DIM = 8


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
