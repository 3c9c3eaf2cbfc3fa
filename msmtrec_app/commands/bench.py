"""``msmtrec bench [NAME ...] [--quick]``: run the performance benchmarks of issue #6.

Each benchmark is a script under ``benchmarks/`` that measures a path of the project next to
its yardstick in the same run and appends a dated section to
``benchmarks/results/performance.md``; this command runs them one after another, each in its
own interpreter (so a memory peak or a thread setting of one never leaks into the next).
``--quick`` runs every script at tiny sizes and writes no results (the smoke test's mode).

The gateway benchmark (``benchmarks/gateway.py``) keeps its own results file,
``benchmarks/results/gateway.md``; this command also copies its section into the
performance results so that all six benchmarks are found in one place.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# name → (script, what it measures)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "training": ("training.py", "local training samples/s: Trainer vs a plain PyTorch loop"),
    "codec": ("codec.py", "encode + validate + decode MB/s vs numpy.save and a bytes copy"),
    "round": ("round_overhead.py", "4 clients over loopback: transfer + aggregation vs training"),
    "aggregation": ("aggregation.py", "Strategy.aggregate time, peak RSS per size, exponent"),
    "loading": ("data_loading.py", "1 M rows from CSV/Parquet: rows/s and peak memory vs pandas"),
    "gateway": ("gateway.py", "prediction latency/throughput over HTTP vs the bare forward"),
}
TIMEOUT = {False: 3 * 3600.0, True: 600.0}  # seconds per benchmark: full, quick
# Runs of one benchmark in a full (not --quick) invocation: the gateway's figures exist for
# both presets (its own results file), every other script covers its sizes in one run.
VARIANTS: dict[str, list[list[str]]] = {"gateway": [["--preset", "small"], ["--preset", "paper"]]}


def _plain(text: str) -> str:
    """A docstring's reStructuredText literals (double backticks) as plain help text."""
    return text.replace("``", "")


def benchmarks_dir() -> Path:
    """The repository's ``benchmarks/`` (the scripts are not part of the installed package)."""
    here = Path(__file__).resolve().parents[2] / "benchmarks"
    if here.is_dir():
        return here
    cwd = Path.cwd() / "benchmarks"
    if cwd.is_dir():
        return cwd
    raise FileNotFoundError(
        "benchmarks/ not found: run `msmtrec bench` from a checkout of the repository"
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="run the performance benchmarks (benchmarks/*.py) and append their results",
        description=_plain(__doc__.split("\n\n")[0])
        + "\n\n"
        + "\n".join(f"  {n:<12} {what}" for n, (_, what) in BENCHMARKS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds each; no results")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument(
        "--out", type=Path, default=None, help="results file (default: each script's own)"
    )
    p.set_defaults(func=run)


def _command(
    script: Path, args: argparse.Namespace, gateway_out: Path | None, variant: list[str]
) -> list[str]:
    cmd = [sys.executable, str(script), *variant]
    if args.quick:
        cmd.append("--quick")
    if script.name == "gateway.py":
        if gateway_out is not None:
            cmd += ["--out", str(gateway_out)]
    elif args.out is not None:
        cmd += ["--out", str(args.out)]
    return cmd


def run(args: argparse.Namespace) -> int:
    if args.list:
        for name, (script, what) in BENCHMARKS.items():
            print(f"{name:<12} benchmarks/{script:<18} {what}")
        return 0
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
        return 2
    root = benchmarks_dir()
    names = args.names or list(BENCHMARKS)
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="msmtrec-bench-") as tmp:
        for name in names:
            script = root / BENCHMARKS[name][0]
            variants = [[]] if args.quick else VARIANTS.get(name, [[]])
            for variant in variants:
                gateway_out = Path(tmp) / "gateway.md" if name == "gateway" else None
                if gateway_out is not None and gateway_out.exists():
                    gateway_out.unlink()
                cmd = _command(script, args, gateway_out, variant)
                print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
                start = time.perf_counter()
                try:
                    code = subprocess.run(
                        cmd, cwd=root.parent, timeout=TIMEOUT[args.quick]
                    ).returncode
                except subprocess.TimeoutExpired:
                    code = -1
                    print(f"{name}: timed out after {TIMEOUT[args.quick]:.0f} s")
                seconds = time.perf_counter() - start
                print(f"=== {name}: exit {code} after {seconds:.0f} s", flush=True)
                if code != 0:
                    failed.append(" ".join([name, *variant]))
                elif gateway_out is not None and gateway_out.is_file() and not args.quick:
                    _file_gateway_results(gateway_out.read_text(), root / "results", args.out)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        return 1
    return 0


def _file_gateway_results(section: str, results: Path, out: Path | None) -> None:
    """The gateway script's section goes to its own file and, retitled, to the performance
    results (or ``out``)."""
    results.mkdir(parents=True, exist_ok=True)
    with open(results / "gateway.md", "a") as f:
        f.write(section)
    retitled = section.replace("## ", "## Gateway (benchmark 6): ", 1)
    with open(out or results / "performance.md", "a") as f:
        f.write(retitled)
