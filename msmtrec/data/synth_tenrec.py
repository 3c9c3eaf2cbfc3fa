"""Synthetic Tenrec-layout data: raw video files with power-law id popularity, then prepared.

``msmtrec data synth --spec tenrec`` writes ``<out>/raw/<scenario>.csv`` in the raw Tenrec
video layout (``user_id,item_id,click,follow,like,share,video_category,watching_times,
gender,age``) and runs the Tenrec preparer on it, so ``<out>`` is a data directory
(``<out>/<scenario>/{train,test}.parquet``) and ``<out>/raw`` is input for
``msmtrec data prepare-tenrec``.

Why this generative model: the Tenrec path exists for ids with millions of values, so ids
must behave like real ones. User and item indices are drawn from a truncated power law
(``P(k) ∝ k^-popularity``; a few ids are frequent, most appear once or never), with
``users``/``items`` distinct values available (set them to millions; the defaults are small
for tests). The signal is learnable from both kinds of features: a dot product of per-user
and per-item latent vectors (learnable only through the id embeddings, better for frequent
ids) plus effects of category, gender and age. ``concept_shift`` is the variance share of
those effects that is scenario specific. ``like`` is drawn only after a click (``like ⊂
click``: the spec chains it), from a score correlated with the click score. Memory: the
per-id latent arrays (``(users + items) × 4`` float32) plus one chunk of rows.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from msmtrec.data.spec_file import load_spec
from msmtrec.data.synth import _auc, _rng, _sigmoid
from msmtrec.data.tenrec_raw import prepare_tenrec_files, split_is_test

__all__ = ["RAW_HEADER", "TenrecSynthConfig", "synthesize_tenrec"]

GENERATOR_VERSION = 1
RAW_HEADER: tuple[str, ...] = (
    "user_id", "item_id", "click", "follow", "like", "share",
    "video_category", "watching_times", "gender", "age",
)  # fmt: skip
_LATENT = 4
_CATEGORIES, _GENDERS, _AGES = 64, 3, 8
_CHUNK_ROWS = 500_000


@dataclass
class TenrecSynthConfig:
    """Knobs of the Tenrec-layout generator (see the module docstring)."""

    scenarios: tuple[str, ...] = ("QK-video", "QB-video")
    rows: int = 20_000  # raw rows per scenario (then split train/test by the preparer)
    users: int = 5_000  # distinct user ids available
    items: int = 2_000  # distinct item ids available
    popularity: float = 1.1  # power-law exponent of id popularity (> 0)
    ctr: float = 0.1  # click rate at a zero score (the realized rate is near it)
    like_given_click: float = 0.15
    signal: float = 1.5  # std of the feature-dependent part of each logit
    concept_shift: float = 0.3  # scenario-specific share of the feature effects, in [0, 1]
    seed: int = 0
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        self.scenarios = tuple(self.scenarios)

    def validate(self) -> None:
        if not self.scenarios or len(set(self.scenarios)) != len(self.scenarios):
            raise ValueError(f"scenario names must be given and unique: {self.scenarios}")
        for name in self.scenarios:
            if not name or name in (".", "..") or "/" in name or "\\" in name:
                raise ValueError(f"scenario name {name!r} is not a valid file name")
        for key in ("rows", "users", "items"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not self.popularity > 0:
            raise ValueError(f"popularity must be > 0, got {self.popularity}")
        for key in ("ctr", "like_given_click", "test_fraction"):
            if not 0.0 < getattr(self, key) < 1.0:
                raise ValueError(f"{key} must be in (0, 1), got {getattr(self, key)}")
        if not 0.0 <= self.concept_shift <= 1.0:
            raise ValueError(f"concept_shift must be in [0, 1], got {self.concept_shift}")
        if self.signal < 0:
            raise ValueError(f"signal must be >= 0, got {self.signal}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scenarios"] = list(self.scenarios)
        return d


def power_law_indices(rng: np.random.Generator, n: int, size: int, exponent: float) -> np.ndarray:
    """``size`` draws of ``k - 1`` with ``k`` in ``1..n``, density ∝ ``k^-exponent`` (inverse
    CDF of the continuous truncated power law, floored): index 0 is the most popular."""
    u = rng.random(size)
    if abs(exponent - 1.0) < 1e-9:
        x = np.exp(u * math.log(n + 1))
    else:
        e = 1.0 - exponent
        x = ((float(n + 1) ** e - 1.0) * u + 1.0) ** (1.0 / e)
    return np.minimum(np.floor(x).astype(np.int64) - 1, n - 1)


@dataclass
class _Effects:
    """Per-value effects of the small categoricals for one task in one scenario."""

    category: np.ndarray
    gender: np.ndarray
    age: np.ndarray

    @classmethod
    def mixed(cls, seed: int, task: str, scenario: str, shift: float) -> _Effects:
        g, s = _rng(seed, task, "global"), _rng(seed, task, scenario)
        a, b = math.sqrt(1.0 - shift), math.sqrt(shift)
        return cls(
            *(a * g.normal(size=k) + b * s.normal(size=k) for k in (_CATEGORIES, _GENDERS, _AGES))
        )

    def score(self, cat: np.ndarray, gender: np.ndarray, age: np.ndarray) -> np.ndarray:
        return self.category[cat] + self.gender[gender] + self.age[age]


def _scenario_rows(
    cfg: TenrecSynthConfig, index: int, world: dict[str, np.ndarray], path: Path
) -> dict[str, Any]:
    """Write one scenario's raw CSV in chunks; return the oracle's test AUCs."""
    name = cfg.scenarios[index]
    rng = _rng(cfg.seed, "rows", name)
    click_fx = _Effects.mixed(cfg.seed, "click", name, cfg.concept_shift)
    like_fx = _Effects.mixed(cfg.seed, "like", name, cfg.concept_shift)
    b_click = math.log(cfg.ctr / (1 - cfg.ctr))
    b_like = math.log(cfg.like_given_click / (1 - cfg.like_given_click))
    # each score part has unit variance: sqrt(1/2) id part + sqrt(1/2) feature part
    fx_scale = 1.0 / math.sqrt(3.0)
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    probs: list[np.ndarray] = []
    seen_users = np.zeros(cfg.users, dtype=bool)  # distinct ids: one byte per id
    seen_items = np.zeros(cfg.items, dtype=bool)
    labels: list[np.ndarray] = []
    options = pacsv.WriteOptions(quoting_style="none", quoting_header="none")
    schema = pa.schema([(c, pa.int64()) for c in RAW_HEADER])
    try:
        with pacsv.CSVWriter(str(tmp), schema, write_options=options) as writer:
            for a in range(0, cfg.rows, _CHUNK_ROWS):
                n = min(cfg.rows, a + _CHUNK_ROWS) - a
                user = power_law_indices(rng, cfg.users, n, cfg.popularity)
                item = power_law_indices(rng, cfg.items, n, cfg.popularity)
                seen_users[user] = True
                seen_items[item] = True
                cat, gender, age = (
                    world["category"][item],
                    world["gender"][user],
                    world["age"][user],
                )
                u, v, w = world["u"][user], world["v"][item], world["w"][item]
                dot = (u * v).sum(1) / math.sqrt(_LATENT)
                like_dot = (u * w).sum(1) / math.sqrt(_LATENT)
                s_click = math.sqrt(0.5) * dot + math.sqrt(0.5) * fx_scale * click_fx.score(
                    cat, gender, age
                )
                s_like = 0.5 * s_click + math.sqrt(0.75) * (
                    math.sqrt(0.5) * like_dot
                    + math.sqrt(0.5) * fx_scale * like_fx.score(cat, gender, age)
                )
                p_click = _sigmoid(b_click + cfg.signal * s_click)
                q_like = _sigmoid(b_like + cfg.signal * s_like)  # P(like | click)
                p_like = p_click * q_like
                click = rng.random(n) < p_click
                like = click & (rng.random(n) < q_like)
                cols = {
                    "user_id": user, "item_id": item, "click": click, "like": like,
                    "follow": click & (rng.random(n) < 0.02),
                    "share": click & (rng.random(n) < 0.01),
                    "video_category": cat, "gender": gender, "age": age,
                    "watching_times": click * (1 + rng.poisson(2.0, n)),
                }  # fmt: skip
                writer.write_table(
                    pa.table({c: pa.array(np.asarray(cols[c], dtype=np.int64)) for c in RAW_HEADER})
                )
                test = split_is_test(np.arange(a, a + n), cfg.seed, cfg.test_fraction)
                probs.append(np.stack([p_click, p_like], 1)[test])
                labels.append(np.stack([click, like], 1)[test])
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    p, y = np.concatenate(probs), np.concatenate(labels)
    return {
        "distinct_user_ids": int(seen_users.sum()),
        "distinct_item_ids": int(seen_items.sum()),
        "oracle_test_auc": {"click": _auc(p[:, 0], y[:, 0]), "like": _auc(p[:, 1], y[:, 1])},
    }


def synthesize_tenrec(out_dir: Path | str, config: TenrecSynthConfig) -> dict[str, Any]:
    """Raw files under ``<out>/raw``, prepared scenarios under ``<out>``, ``<out>/synth.json``
    (generator, config, spec, per-scenario rates, distinct ids and the oracle's test AUC).
    Same seed and knobs: byte-identical files."""
    config.validate()
    out_dir = Path(out_dir)
    world_rng = _rng(config.seed, "world")
    world = {
        "u": world_rng.normal(size=(config.users, _LATENT)).astype(np.float32),
        "gender": world_rng.integers(0, _GENDERS, config.users),
        "age": world_rng.integers(0, _AGES, config.users),
        "v": world_rng.normal(size=(config.items, _LATENT)).astype(np.float32),
        "w": world_rng.normal(size=(config.items, _LATENT)).astype(np.float32),
        "category": power_law_indices(world_rng, _CATEGORIES, config.items, 1.0),
    }
    oracle = {
        name: _scenario_rows(config, i, world, out_dir / "raw" / f"{name}.csv")
        for i, name in enumerate(config.scenarios)
    }
    spec = load_spec("tenrec")
    prepared = prepare_tenrec_files(
        {name: out_dir / "raw" / f"{name}.csv" for name in config.scenarios},
        out_dir, seed=config.seed, test_fraction=config.test_fraction,
    )  # fmt: skip
    summary = {
        "generator": "tenrec",
        "generator_version": GENERATOR_VERSION,
        "config": config.to_dict(),
        "schema": spec.to_dict(),
        "scenarios": {
            name: {**prepared["scenarios"][name], **oracle[name]} for name in config.scenarios
        },
    }
    tmp = out_dir / "synth.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, out_dir / "synth.json")
    return summary
