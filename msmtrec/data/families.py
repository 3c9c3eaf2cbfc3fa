"""Data families: named kinds of heterogeneity between scenarios, each with one strength.

Why families: "does personalization help?" has no single answer; it depends on HOW scenarios
differ. Each family turns one kind of difference up by a strength in [0, 1] (0 = that
difference is absent) and holds the rest at a fixed, moderate level, so a benchmark can ask
where each method wins. ``FAMILY_STRENGTHS`` gives every family a ``low`` and a ``high``
strength (``high`` is the default).

* ``concept`` (a): ``concept_shift = strength``; covariate_shift 0.1. P(y | x) differs.
* ``conflict`` (b): ``task_conflict = strength``; concept_shift 0.3. The CTR-CVR relation has
  the opposite sign in every other scenario at strength 1.
* ``covariate`` (c): ``covariate_shift = strength``; concept_shift 0 and calibration
  ``shared``. Only P(x) differs: every scenario has exactly the same P(y | x) (so click rates
  differ between scenarios as P(x) does).
* ``quantity`` (d): ``quantity_skew = 1 + 14 * strength`` (15x fewer train rows in the last
  scenario at strength 1); concept_shift 0.5.
* ``fieldpair`` (e): the independently written field-pair generator
  (``msmtrec.data.synth_fieldpair``), ``concept_shift = strength`` (rotation of the latent
  factor vectors). HELD OUT: chosen before any tuning; methods are never tuned on it.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from msmtrec.data.schema import ALIEXPRESS, FeatureSchema
from msmtrec.data.synth import SynthConfig, synthesize
from msmtrec.data.synth_fieldpair import FieldPairConfig
from msmtrec.data.synth_fieldpair import synthesize as synthesize_fieldpair

__all__ = [
    "FAMILIES",
    "FAMILY_HELP",
    "FAMILY_STRENGTHS",
    "HELD_OUT_FAMILIES",
    "family_config",
    "family_strength",
    "synthesize_family",
]

FAMILIES = ("concept", "conflict", "covariate", "quantity", "fieldpair")
HELD_OUT_FAMILIES = ("fieldpair",)
FAMILY_STRENGTHS: dict[str, dict[str, float]] = {
    "concept": {"low": 0.2, "high": 0.8},
    "conflict": {"low": 0.25, "high": 1.0},
    "covariate": {"low": 0.3, "high": 0.9},
    "quantity": {"low": 0.3, "high": 1.0},  # quantity_skew 5.2x and 15x
    "fieldpair": {"low": 0.2, "high": 0.8},
}
FAMILY_HELP = {
    "concept": "concept_shift = strength (P(y|x) differs), covariate_shift 0.1",
    "conflict": "task_conflict = strength (CTR-CVR relation flips sign), concept_shift 0.3",
    "covariate": "covariate_shift = strength (only P(x) differs; same P(y|x) everywhere)",
    "quantity": "quantity_skew = 1 + 14*strength (last scenario data-poor), concept_shift 0.5",
    "fieldpair": "held-out field-pair generator, concept_shift = strength (factor rotation)",
}


def family_strength(family: str, strength: float | None = None) -> float:
    """The strength to use: ``strength`` checked to lie in [0, 1], or the family's ``high``
    default when None."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}; got {family!r}")
    if strength is None:
        return FAMILY_STRENGTHS[family]["high"]
    s = float(strength)
    if not (math.isfinite(s) and 0.0 <= s <= 1.0):
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    return s


def _family_knobs(family: str, s: float) -> dict[str, Any]:
    if family == "concept":
        return {"concept_shift": s, "covariate_shift": 0.1}
    if family == "conflict":
        return {"task_conflict": s, "concept_shift": 0.3}
    if family == "covariate":
        return {"covariate_shift": s, "concept_shift": 0.0, "calibration": "shared"}
    if family == "quantity":
        return {"quantity_skew": 1.0 + 14.0 * s, "concept_shift": 0.5}
    return {"concept_shift": s}  # fieldpair


def family_config(
    family: str, strength: float | None = None, **overrides: Any
) -> SynthConfig | FieldPairConfig:
    """The generator config of ``family`` at ``strength`` (None: the family's ``high``),
    validated. ``overrides`` (config field names: rows, seed, scenarios, or even the family's
    own knob) win over the family's settings; a name the family's generator does not have is
    an error naming it."""
    s = family_strength(family, strength)
    cls = FieldPairConfig if family == "fieldpair" else SynthConfig
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(
            f"{', '.join(unknown)}: not a knob of family {family!r} "
            f"(its knobs: {', '.join(sorted(known))})"
        )
    config = cls(**{**_family_knobs(family, s), **overrides})
    config.validate()
    return config


def synthesize_family(
    out_dir: Path | str,
    family: str,
    strength: float | None = None,
    schema: FeatureSchema = ALIEXPRESS,
    **overrides: Any,
) -> dict[str, Any]:
    """Write the data of ``family`` at ``strength`` to ``out_dir`` (the layout of
    ``msmtrec data synth``: train/test files, oracle side files, synth.json with a
    ``family`` entry) and return the summary. ``overrides`` as in ``family_config``, e.g.
    ``seed=1, train_rows=20_000, test_rows=5_000, scenarios=("NL", "ES", "FR", "US")``."""
    s = family_strength(family, strength)
    config = family_config(family, s, **overrides)
    meta = {"name": family, "strength": s, "held_out": family in HELD_OUT_FAMILIES}
    if isinstance(config, FieldPairConfig):
        return synthesize_fieldpair(out_dir, config, schema, family=meta)
    return synthesize(out_dir, config, schema, family=meta)
