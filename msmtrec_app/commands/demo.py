"""``msmtrec demo``: synthetic data for four scenarios, then a PF-MSMTrec simulation.

The research entry point on a fresh machine: no data to download, a table in about a minute.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from msmtrec_app.commands.simulate import add_method_flag

    p = sub.add_parser(
        "demo",
        help="make synthetic AliExpress-schema data and run a PF-MSMTrec simulation on it",
        description="Writes synthetic data for four scenarios under --out/data (once), runs "
        "the in-process federation on it and writes the results and report.html under "
        "--out/results.",
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory")
    p.add_argument("--rounds", type=int, default=8, help="federated rounds")
    p.add_argument("--rows", type=int, default=40_000, help="training rows per scenario")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the run")
    add_method_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from msmtrec.data.synth import SynthConfig, synthesize
    from msmtrec.simulation import SimulationConfig, run_simulation, write_report

    data_dir = args.out / "data"
    if not (data_dir / "synth.json").exists():
        print(f"writing synthetic data to {data_dir}")
        synthesize(
            data_dir, SynthConfig(train_rows=args.rows, test_rows=args.rows // 4, seed=args.seed)
        )
    config = SimulationConfig(
        data_dir=data_dir, method=args.method, rounds=args.rounds, seed=args.seed
    )
    result = run_simulation(config)
    print()
    print(result.markdown())
    paths = write_report(result, args.out / "results", plot=True)
    from aggregator.dashboard import write_static_report

    results = json.loads(paths["json"].read_text())
    paths["html"] = write_static_report(results, args.out / "results" / "report.html")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
