"""Privacy benchmark (issue #14): utility of record-level DP and the cost of a private step.

1. **Utility curve**: pfmsmtrec and fedavg at ε ∈ {1, 3, 8, ∞} (δ = 1/n, n = a client's
   training rows; ∞ = the plain, non-private path) on synthetic data families, each
   simulation's macro-mean test AUC at the round selected on validation; mean ± std over
   seeds; a table and a plot (AUC vs ε) in ``benchmarks/results/privacy.md`` / ``privacy.png``
   and every figure in ``privacy.json``.
2. **Step cost**: one private step (per-sample norms, clipping, noise, Adam) against one plain
   step (forward, backward, Adam) on the same batch at the ``small`` preset, interleaved.

    python benchmarks/privacy.py --quick            # a smoke run (≈ 1-2 min), writes to runs/
    python benchmarks/privacy.py --seeds 3          # the full grid (slow on 2 cores)

One simulation per process (``--jobs``), one torch thread each. The header of the results
file names the exact command that produced it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

METHODS = ("pfmsmtrec", "fedavg")
EPSILONS = (1.0, 3.0, 8.0, math.inf)
FAMILIES = ("concept", "conflict", "covariate", "quantity")
RESULTS = ROOT / "benchmarks" / "results" / "privacy.md"


@dataclass(frozen=True)
class Job:
    family: str
    method: str
    epsilon: float
    seed: int
    data_dir: str
    rounds: int
    batch_size: int
    max_grad_norm: float


def _eps_label(eps: float) -> str:
    return "∞" if math.isinf(eps) else f"{eps:g}"


def make_data(root: Path, family: str, seed: int, rows: int, scenarios: tuple[str, ...]) -> Path:
    from msmtrec.data import synthesize_family

    out = root / f"{family}-s{seed}-{rows}-{len(scenarios)}"
    if not (out / "synth.json").exists():
        synthesize_family(
            out,
            family,
            None,
            seed=seed,
            train_rows=rows,
            test_rows=max(rows // 4, 200),
            ctr=0.1,
            cvr=0.3,
            scenarios=scenarios,
        )
    return out


def run_job(job: Job) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from msmtrec.simulation import SimulationConfig, run_simulation
    from msmtrec.training.config import PrivacyConfig, TrainConfig

    privacy = (
        None
        if math.isinf(job.epsilon)
        else PrivacyConfig(epsilon=job.epsilon, max_grad_norm=job.max_grad_norm)
    )
    start = time.perf_counter()
    result = run_simulation(
        SimulationConfig(
            data_dir=Path(job.data_dir),
            method=job.method,
            rounds=job.rounds,
            seed=job.seed,
            train=TrainConfig(batch_size=job.batch_size),
            privacy=privacy,
        ),
        log=lambda _: None,
    )
    best = result.best
    per_task: dict[str, list[float]] = {}
    for tasks in best.test.values():
        for t, m in tasks.items():
            if m["auc"] is not None:
                per_task.setdefault(t, []).append(m["auc"])
    spent = result.history[-1].epsilon
    return {
        "family": job.family,
        "method": job.method,
        "epsilon": None if math.isinf(job.epsilon) else job.epsilon,
        "seed": job.seed,
        "best_round": result.best_round,
        "mean_test_auc": best.mean_test_auc,
        "task_auc": {t: statistics.fmean(v) for t, v in per_task.items()},
        "epsilon_spent_max": max(spent.values()) if spent else None,
        "seconds": time.perf_counter() - start,
    }


def step_cost(threads: int, repeats: int, batch: int = 512) -> dict[str, Any]:
    """Median seconds of a plain and a private training step on the same batch."""
    import torch
    import torch.nn.functional as F
    from _common import interleave, median

    from msmtrec.data.schema import ALIEXPRESS
    from msmtrec.model import build_model, preset
    from msmtrec.training.privacy import DPSGD, freeze_batchnorm
    from msmtrec.training.trainer import make_optimizer

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    cat = torch.stack(
        [torch.randint(0, s, (batch,), generator=g) for s in ALIEXPRESS.table_sizes], 1
    )
    num = torch.rand(batch, ALIEXPRESS.num_numerical, generator=g)
    labels = (torch.rand(batch, 2, generator=g) < 0.2).to(torch.uint8)
    plain_model = build_model(ALIEXPRESS, preset("small"), 0)
    dp_model = build_model(ALIEXPRESS, preset("small"), 0)
    plain_model.train()
    dp_model.train()
    freeze_batchnorm(dp_model)
    plain_opt = make_optimizer(plain_model.parameters(), lr=1e-3, weight_decay=1e-6)
    dp_opt = make_optimizer(dp_model.parameters(), lr=1e-3, weight_decay=1e-6)
    dp_params = dict(dp_model.named_parameters())
    dpsgd = DPSGD(1.0, 1.0, torch.Generator().manual_seed(1))

    def plain() -> None:
        plain_opt.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(plain_model(cat, num), labels.float()).backward()
        plain_opt.step()

    def private() -> None:
        dpsgd.gradient(dp_model, dp_params, cat, num, labels, batch)
        dp_opt.step()

    for _ in range(3):
        plain()
        private()
    times = interleave({"plain": plain, "private": private}, repeats)
    p, d = median(times["plain"]), median(times["private"])
    return {
        "batch": batch,
        "threads": threads,
        "repeats": len(times["plain"]),
        "plain_ms": p * 1e3,
        "private_ms": d * 1e3,
        "ratio": d / p,
    }


def summarize(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], tuple[float, float, int]]:
    """(family, method, ε label) → (mean, std, n) of the macro-mean test AUC over seeds."""
    groups: dict[tuple[str, str, str], list[float]] = {}
    for r in rows:
        eps = math.inf if r["epsilon"] is None else r["epsilon"]
        if r["mean_test_auc"] is not None:
            groups.setdefault((r["family"], r["method"], _eps_label(eps)), []).append(
                r["mean_test_auc"]
            )
    return {
        k: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
        for k, v in groups.items()
    }


def markdown(
    rows: list[dict[str, Any]], cost: dict[str, Any], meta: dict[str, Any], plot: str | None
) -> str:
    stats = summarize(rows)
    families = sorted({r["family"] for r in rows})
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    labels = [_eps_label(e) for e in meta["epsilons"]]
    lines = [
        "# Record-level differential privacy: utility and cost (issue #14)",
        "",
        f"Produced by `{meta['command']}` at commit {meta.get('commit', 'unknown')} on "
        f"{meta['date']} ({meta['machine']}; {meta['seconds']:.0f} s).",
        "",
        f"Setting: {meta['scenarios']} scenarios × {meta['rows']} synthetic train rows each "
        f"(`synthesize_family`, high strength, ctr 0.1, cvr 0.3), {meta['rounds']} rounds, "
        f"preset small, batch {meta['batch_size']}, clip C = {meta['max_grad_norm']}, "
        f"δ = 1/n (n = a client's training rows), seeds {meta['seeds']}. ε is each client's "
        "budget over all rounds (the noise is calibrated to spend it exactly); ∞ is the "
        "plain, non-private training. Cells: macro-mean test AUC over scenarios × tasks at the "
        "round selected on validation, mean ± std over seeds.",
        "",
        "| family | method | " + " | ".join(f"ε = {e}" for e in labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    for fam in families:
        for m in methods:
            cells = []
            for e in labels:
                s = stats.get((fam, m, e))
                cells.append("n/a" if s is None else f"{s[0]:.4f} ± {s[1]:.4f}")
            lines.append(f"| {fam} | {m} | " + " | ".join(cells) + " |")
    lines += ["", "AUC cost of privacy (mean over families of AUC(ε) − AUC(∞)):", ""]
    lines += ["| method | " + " | ".join(f"ε = {e}" for e in labels if e != "∞") + " |"]
    lines += ["|---|" + "---|" * (len(labels) - 1)]
    for m in methods:
        cells = []
        for e in labels:
            if e == "∞":
                continue
            diffs = [
                stats[(f, m, e)][0] - stats[(f, m, "∞")][0]
                for f in families
                if (f, m, e) in stats and (f, m, "∞") in stats
            ]
            cells.append(f"{statistics.fmean(diffs):+.4f}" if diffs else "n/a")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if plot:
        lines += ["", f"![AUC vs ε]({plot})"]
    lines += [
        "",
        "## Cost of a private step",
        "",
        f"`small` preset, batch {cost['batch']}, {cost['threads']} thread(s), "
        f"{cost['repeats']} interleaved repeats, medians: plain step (forward, backward, Adam) "
        f"{cost['plain_ms']:.1f} ms, private step (forward, per-sample norms, re-weighted "
        f"backward, noise, Adam) {cost['private_ms']:.1f} ms: **{cost['ratio']:.2f}× the plain "
        "step** (target ≤ 3×).",
        "",
    ]
    return "\n".join(lines)


def plot_curve(rows: list[dict[str, Any]], epsilons: list[float], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = summarize(rows)
    families = sorted({r["family"] for r in rows})
    labels = [_eps_label(e) for e in epsilons]
    fig, axes = plt.subplots(1, len(families), figsize=(4.5 * len(families), 3.6), squeeze=False)
    for ax, fam in zip(axes[0], families, strict=True):
        for m in METHODS:
            pts = [(i, stats[(fam, m, e)]) for i, e in enumerate(labels) if (fam, m, e) in stats]
            if not pts:
                continue
            ax.errorbar(
                [i for i, _ in pts],
                [s[0] for _, s in pts],
                yerr=[s[1] for _, s in pts],
                marker="o",
                capsize=3,
                label=m,
            )
        ax.set_xticks(range(len(labels)), [f"ε={e}" for e in labels])
        ax.set_title(fam)
        ax.set_ylabel("test AUC (macro mean)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("AUC vs ε (record-level DP, δ = 1/n)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="one family, one seed, tiny data")
    p.add_argument("--families", nargs="+", default=None, choices=FAMILIES)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--rows", type=int, default=None, help="train rows per scenario")
    p.add_argument("--scenarios", type=int, default=None, help="scenarios per federation")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--jobs", type=int, default=1, help="simulations in parallel")
    p.add_argument("--step-repeats", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help="threads of the step-cost timing")
    p.add_argument("--data-dir", type=Path, default=ROOT / "runs" / "bench-privacy" / "data")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"results markdown (default {RESULTS.relative_to(ROOT)}; --quick: "
        "runs/bench-privacy/quick/privacy.md)",
    )
    args = p.parse_args(argv)
    quick = args.quick
    families = args.families or (("concept",) if quick else FAMILIES)
    seeds = list(range(1 if quick else args.seeds))
    rounds = args.rounds or (2 if quick else 10)
    rows = args.rows or (2000 if quick else 20_000)
    n_scen = args.scenarios or (2 if quick else 4)
    scenarios = ("NL", "ES", "FR", "US", "S4", "S5")[:n_scen]
    out = args.out or (
        ROOT / "runs" / "bench-privacy" / "quick" / "privacy.md" if quick else RESULTS
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    jobs = []
    for fam in families:
        for seed in seeds:
            data = make_data(args.data_dir, fam, seed, rows, scenarios)
            for method in METHODS:
                for eps in EPSILONS:
                    jobs.append(
                        Job(fam, method, eps, seed, str(data), rounds, args.batch_size,
                            args.max_grad_norm)
                    )  # fmt: skip
    print(f"{len(jobs)} simulations ({len(families)} families × {len(seeds)} seeds × "
          f"{len(METHODS)} methods × {len(EPSILONS)} ε), {args.jobs} at a time")  # fmt: skip
    rows_out: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for r in pool.map(run_job, jobs):
            rows_out.append(r)
            eps = "∞" if r["epsilon"] is None else f"{r['epsilon']:g}"
            print(
                f"  {r['family']:<9} {r['method']:<10} ε={eps:<3} seed {r['seed']}: "
                f"AUC {r['mean_test_auc']:.4f} (round {r['best_round']}, ε spent "
                f"{r['epsilon_spent_max'] if r['epsilon_spent_max'] is not None else '∞'}) "
                f"{r['seconds']:.0f}s",
                flush=True,
            )
    cost = step_cost(args.threads, args.step_repeats or (20 if quick else 100))
    print(
        f"step cost: plain {cost['plain_ms']:.1f} ms, private {cost['private_ms']:.1f} ms, "
        f"ratio {cost['ratio']:.2f}x"
    )
    import platform
    import subprocess

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    meta = {
        "command": "python benchmarks/privacy.py " + shlex.join(argv or sys.argv[1:]),
        "commit": commit or "unknown",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"load {os.getloadavg()[0]:.1f}",
        "seconds": time.perf_counter() - start,
        "scenarios": n_scen,
        "rows": rows,
        "rounds": rounds,
        "batch_size": args.batch_size,
        "max_grad_norm": args.max_grad_norm,
        "seeds": seeds,
        "epsilons": list(EPSILONS),
    }
    plot = plot_curve(rows_out, list(EPSILONS), out.with_suffix(".png"))
    text = markdown(rows_out, cost, meta, plot.name)
    out.write_text(text)
    meta["epsilons"] = [None if math.isinf(e) else e for e in EPSILONS]
    out.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "runs": rows_out, "step_cost": cost}, indent=1)
    )
    print()
    print(text)
    print(f"wrote {out}, {plot}, {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
