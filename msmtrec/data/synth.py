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

from pathlib import Path
from typing import Any

import numpy as np

from msmtrec.data.dataset import ScenarioData
from msmtrec.data.schema import ALIEXPRESS, FeatureSchema
from msmtrec.data.synth_config import _LATER_KNOBS as _LATER_KNOBS
from msmtrec.data.synth_config import SynthConfig, SynthScenario
from msmtrec.data.synth_output import _rounded as _rounded
from msmtrec.data.synth_output import scenario_stats, summary_header, write_scenarios
from msmtrec.data.synth_scores import _GROUP_SHARES as _GROUP_SHARES
from msmtrec.data.synth_scores import _auc as _auc  # used by synth_tenrec and the tests
from msmtrec.data.synth_scores import (
    _calibrate,
    _Correlator,
    _labels,
    _MeanRate,
    _ScenarioModel,
    _ScoreFunction,
    _task_scores,
)
from msmtrec.data.synth_world import _LATENT_DIM as _LATENT_DIM
from msmtrec.data.synth_world import _Covariates as _Covariates
from msmtrec.data.synth_world import _rng, _sigmoid, _World

__all__ = ["SynthConfig", "SynthScenario", "generate", "synthesize", "write_scenarios"]

GENERATOR_VERSION = 1
_PAGE_SIZE = 20  # impressions per search page: search_id = page number
_REF_ROWS = 10_000  # reference sample that standardizes every score function


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
