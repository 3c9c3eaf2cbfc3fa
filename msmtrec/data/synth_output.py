"""What every generator writes: per-scenario stats, synth.json and the split and oracle files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from msmtrec.data.oracle import write_oracle
from msmtrec.data.schema import ALIEXPRESS, FeatureSchema
from msmtrec.data.split_writer import write_split
from msmtrec.data.synth_config import SynthScenario
from msmtrec.data.synth_scores import _auc


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
