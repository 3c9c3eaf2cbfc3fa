"""Quality benchmark: every method × concept shift {low, high} × seeds on synthetic data.

Prints and writes ``benchmarks/results/quality.md`` (mean ± std over seeds of the macro-mean
test AUC per task, at the round selected on validation) and ``quality.json`` with every
scenario × task figure. Runs one simulation per process (``--jobs``), one torch thread each.

    python benchmarks/quality.py                      # the full grid (≈ 30-60 min on 2 cores)
    python benchmarks/quality.py --quick              # a smoke run in well under a minute

The "Reading" section is the ``meta.reading`` text of the JSON, written by a person after a run
(``--report-only`` keeps it; a new run starts without one, as its numbers are new).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = (
    "local",
    "fedavg",
    "fedprox",
    "fedbn",
    "central",
    "pfmsmtrec",
    "pfmsmtrec-no-template",
    "pfmsmtrec-no-fedbn",
    "pfmsmtrec-no-conflict",
    "pfmsmtrec-no-personal",
    "pfmsmtrec-no-tower",
    "pfmsmtrec-mu0",
    "pfmsmtrec-no-shrink",
)
SHIFTS = {"low": 0.2, "high": 0.8}


@dataclass(frozen=True)
class Job:
    method: str
    shift: str
    seed: int
    data_dir: str
    rounds: int
    lr: float
    batch_size: int
    preset: str


def _run(job: Job) -> dict:
    import torch

    torch.set_num_threads(1)
    from msmtrec.simulation import SimulationConfig, run_simulation
    from msmtrec.training.trainer import TrainConfig

    cfg = SimulationConfig(
        data_dir=Path(job.data_dir),
        method=job.method,
        rounds=job.rounds,
        seed=job.seed,
        preset=job.preset,
        train=TrainConfig(lr=job.lr, batch_size=job.batch_size),
    )
    start = time.perf_counter()
    res = run_simulation(cfg, log=lambda _msg: None)
    best = res.best
    return {
        "method": job.method,
        "shift": job.shift,
        "seed": job.seed,
        "best_round": res.best_round,
        "seconds": time.perf_counter() - start,
        "mean_valid_auc": best.mean_valid_auc,
        "test": best.test,
        "valid": best.valid,
    }


def _make_data(root: Path, shift: str, seed: int, rows: int, scenarios: int) -> Path:
    from msmtrec.data.synth import SynthConfig, synthesize

    out = root / f"shift-{shift}-seed-{seed}-rows-{rows}-n-{scenarios}"
    if not (out / "synth.json").exists():
        names = ("NL", "ES", "FR", "US", "RU", "BR", "PL", "DE")[:scenarios]
        synthesize(
            out,
            SynthConfig(
                scenarios=names,
                train_rows=rows,
                test_rows=rows // 2,
                concept_shift=SHIFTS[shift],
                seed=1000 + seed,
            ),
        )
    return out


def _macro(test: dict, task: str) -> float | None:
    vals = [m[task]["auc"] for m in test.values() if m[task]["auc"] is not None]
    return sum(vals) / len(vals) if vals else None


def _fmt(vals: list[float]) -> str:
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.4f}"
    return f"{statistics.mean(vals):.4f} ± {statistics.stdev(vals):.4f}"


def summarize(results: list[dict], shifts: list[str], methods: list[str]) -> str:
    tasks = list(next(iter(results[0]["test"].values())).keys())
    head = "| method | " + " | ".join(f"{s} shift {t} AUC" for s in shifts for t in tasks) + " |"
    lines = [head, "|---" * (1 + len(shifts) * len(tasks)) + "|"]
    for m in methods:
        cells = []
        for s in shifts:
            for t in tasks:
                vals = [
                    _macro(r["test"], t) for r in results if r["method"] == m and r["shift"] == s
                ]
                cells.append(_fmt([v for v in vals if v is not None]))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_scenario(results: list[dict], shift: str, methods: list[str]) -> str:
    first = next(r for r in results if r["shift"] == shift)
    scen, tasks = list(first["test"]), list(next(iter(first["test"].values())))
    head = "| method | " + " | ".join(f"{s} {t}" for s in scen for t in tasks) + " |"
    lines = [head, "|---" * (1 + len(scen) * len(tasks)) + "|"]
    for m in methods:
        rs = [r for r in results if r["method"] == m and r["shift"] == shift]
        cells = []
        for s in scen:
            for t in tasks:
                vals = [r["test"][s][t]["auc"] for r in rs if r["test"][s][t]["auc"] is not None]
                cells.append(f"{statistics.mean(vals):.4f}" if vals else "n/a")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _tasks(results: list[dict]) -> list[str]:
    return list(next(iter(results[0]["test"].values())).keys())


def paired_diffs(results: list[dict], ref: str, method: str, shift: str, task: str) -> list[float]:
    """Macro test AUC of ``ref`` minus ``method``, one value per seed both have."""
    index = {(r["method"], r["shift"], r["seed"]): r for r in results}
    diffs = []
    for (m, s, seed), r in sorted(index.items()):
        other = index.get((ref, s, seed))
        if m != method or s != shift or other is None:
            continue
        a, b = _macro(other["test"], task), _macro(r["test"], task)
        if a is not None and b is not None:
            diffs.append(a - b)
    return diffs


def plot_paired(results: list[dict], meta: dict, path: Path, ref: str = "pfmsmtrec") -> None:
    """One panel per shift: ``ref`` minus each method, mean ± std over seeds, one bar per
    task, each seed as a dot — where the zero line falls reads faster than the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in meta["methods"] if m != ref]
    tasks, shifts = _tasks(results), meta["shifts"]
    fig, axes = plt.subplots(
        1, len(shifts), figsize=(5.5 * len(shifts), 0.42 * len(methods) + 1.6), sharey=True
    )
    axes = list(axes) if len(shifts) > 1 else [axes]
    height = 0.8 / len(tasks)
    for ax, shift in zip(axes, shifts, strict=True):
        for j, task in enumerate(tasks):
            ys, means, stds = [], [], []
            for i, m in enumerate(methods):
                d = paired_diffs(results, ref, m, shift, task)
                y = i + (j - (len(tasks) - 1) / 2) * height
                ys.append(y)
                means.append(statistics.mean(d) if d else 0.0)
                stds.append(statistics.stdev(d) if len(d) > 1 else 0.0)
                ax.scatter(d, [y] * len(d), s=8, color="black", zorder=3)
            ax.barh(ys, means, height=height, xerr=stds, label=task, alpha=0.75, capsize=2)
        ax.axvline(0.0, color="grey", linewidth=0.8)
        ax.set_title(f"{shift} concept shift")
        ax.set_xlabel(f"test AUC, {ref} minus method (> 0: {ref} better)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(methods)), methods)
    axes[0].invert_yaxis()
    axes[-1].legend(loc="lower right")
    fig.suptitle(f"Paired by seed ({len(meta['seeds'])} seeds): bars mean ± std, dots per seed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def paired(results: list[dict], shifts: list[str], methods: list[str], ref: str) -> str:
    """``ref`` minus each method, per seed (same data, same seed), then mean ± std: the
    between-seed spread of the data cancels, so these differences are the sharper read."""
    tasks = _tasks(results)
    head = "| " + ref + " minus | " + " | ".join(f"{s} {t}" for s in shifts for t in tasks) + " |"
    lines = [head, "|---" * (1 + len(shifts) * len(tasks)) + "|"]
    for m in methods:
        if m == ref:
            continue
        cells = []
        for s in shifts:
            for t in tasks:
                diffs = paired_diffs(results, ref, m, s, t)
                wins = sum(d > 0 for d in diffs)
                cells.append(f"{_fmt_signed(diffs)} ({wins}/{len(diffs)})" if diffs else "n/a")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt_signed(vals: list[float]) -> str:
    if len(vals) == 1:
        return f"{vals[0]:+.4f}"
    return f"{statistics.mean(vals):+.4f} ± {statistics.stdev(vals):.4f}"


def render(results: list[dict], meta: dict) -> str:
    shifts, methods = meta["shifts"], meta["methods"]
    report = [
        "# Quality benchmark: test AUC on synthetic AliExpress-schema data",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; machine: {meta['machine']}; wall time {meta['minutes']:.1f} min.  ",
        f"Data: {meta['scenarios']} scenarios × {meta['rows']} training rows (last 10 % = "
        f"validation) and {meta['rows'] // 2} test rows, concept shift low = {SHIFTS['low']}, "
        f"high = {SHIFTS['high']}; preset `{meta['preset']}`, {meta['rounds']} rounds × 1 local "
        f"epoch, Adam lr {meta['lr']}, batch {meta['batch_size']}; seeds {meta['seeds']} (data "
        "and model).  ",
        "Each cell: mean ± std over seeds of the macro mean over scenarios of the test AUC, at "
        "the round selected by mean validation AUC.",
        "",
        summarize(results, shifts, methods),
        "",
    ]
    if "pfmsmtrec" in methods and len(methods) > 1:
        report += [
            "## Paired differences: pfmsmtrec minus each method",
            "",
            "Per seed (same data and seed for both), then mean ± std over seeds; in brackets, "
            "the seeds on which pfmsmtrec is ahead. Positive: pfmsmtrec is better.",
            "",
            paired(results, shifts, methods, "pfmsmtrec"),
            "",
        ]
        if meta.get("plot"):
            report += [f"![pfmsmtrec minus each method, by shift and task]({meta['plot']})", ""]
    if meta.get("reading"):  # written by a person after the run, kept in the JSON
        report += ["## Reading", "", meta["reading"].strip(), ""]
    for shift in shifts:
        report += [
            f"## Per scenario, {shift} shift (mean over seeds)",
            "",
            per_scenario(results, shift, methods),
            "",
        ]
    return "\n".join(report)


def write_report(out: Path, results: list[dict], meta: dict) -> None:
    """The Markdown report and, when pfmsmtrec was compared, its paired-differences plot."""
    if "pfmsmtrec" in meta["methods"] and len(meta["methods"]) > 1:
        meta = {**meta, "plot": out.with_suffix(".png").name}
        plot_paired(results, meta, out.with_suffix(".png"))
    out.write_text(render(results, meta))
    print(f"wrote {out}" + (f" and {meta['plot']}" if meta.get("plot") else ""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--shifts", nargs="+", default=list(SHIFTS), choices=list(SHIFTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--rows", type=int, default=20_000, help="training rows per scenario")
    p.add_argument("--scenarios", type=int, default=4)
    p.add_argument("--rounds", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--preset", default="small")
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1)))
    p.add_argument("--data-cache", type=Path, default=ROOT / "runs" / "bench-data")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality.md")
    p.add_argument("--quick", action="store_true", help="tiny grid for a smoke test")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="re-render the Markdown from the JSON next to --out, no training",
    )
    args = p.parse_args(argv)
    if args.report_only:
        saved = json.loads(args.out.with_suffix(".json").read_text())
        write_report(args.out, saved["results"], saved["meta"])
        return 0
    if args.quick:
        args.methods, args.seeds, args.rows, args.rounds = ["fedavg", "pfmsmtrec"], [0], 2000, 2
        args.shifts, args.scenarios = ["low"], 2
    command = "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])

    jobs = []
    for shift in args.shifts:
        for seed in args.seeds:
            data = _make_data(args.data_cache, shift, seed, args.rows, args.scenarios)
            jobs += [
                Job(m, shift, seed, str(data), args.rounds, args.lr, args.batch_size, args.preset)
                for m in args.methods
            ]
    print(f"{len(jobs)} simulations on {args.jobs} processes")
    results = []
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for i, r in enumerate(pool.map(_run, jobs), 1):
            results.append(r)
            print(
                f"[{i}/{len(jobs)}] {r['method']:<24} shift {r['shift']:<4} seed {r['seed']}  "
                f"round {r['best_round']:>2}  valid {r['mean_valid_auc']:.4f}  "
                + "  ".join(
                    f"{t} {_macro(r['test'], t):.4f}" for t in r["test"][next(iter(r["test"]))]
                )
                + f"  ({r['seconds']:.0f}s)",
                flush=True,
            )
    elapsed = time.perf_counter() - start

    table = summarize(results, args.shifts, args.methods)
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    meta = {
        "command": command.strip(),
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}",
        "machine": f"{os.cpu_count()} cores, {mem_gb:.0f} GiB, {platform.machine()}, "
        f"load average {os.getloadavg()[0]:.1f}",
        "minutes": elapsed / 60,
        "shifts": args.shifts,
        "methods": args.methods,
        "seeds": args.seeds,
        "rows": args.rows,
        "scenarios": args.scenarios,
        "rounds": args.rounds,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "preset": args.preset,
    }
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(
            json.dumps({"meta": meta, "results": results}, indent=1)
        )
        write_report(args.out, results, meta)
    print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
