"""Data loading: rows/s and peak memory of ``load_split`` on 1 M AliExpress-schema rows from CSV
and from Parquet, beside ``pandas.read_csv`` with default dtypes (benchmark 5).

    python benchmarks/data_loading.py                  # 1,000,000 rows, 3 alternated repeats
    python benchmarks/data_loading.py --rows 200000

The files (random values of the processed AliExpress schema: search_id, 16 categorical ids
within the schema's vocabularies, 63 numericals in [0, 1], click and conversion labels) are
written once with the project's own writer under ``runs/bench-data/`` and reused. Every
measurement runs in a fresh interpreter (``--child``): after the imports it resets the
process's peak-RSS mark (Linux ``/proc/self/clear_refs``), loads, and reports the peak above
the RSS it had before loading, so neither imports nor an earlier measurement count.

Target (issue #6): the loader's peak memory ≤ 1.5 × the size of the arrays it returns
(int16 categoricals, float32 numericals, uint8 labels: 286 bytes per row).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import _common as C

TARGET_PEAK_RATIO = 1.5
CANDIDATES = ("loader-csv", "loader-parquet", "pandas-csv")


def data_files(rows: int, root: Path) -> dict[str, Path]:
    """``train.csv`` and ``train.parquet`` with ``rows`` rows (made once, then reused)."""
    import numpy as np

    from msmtrec.data.dataset import ScenarioData
    from msmtrec.data.loader import write_split
    from msmtrec.data.schema import ALIEXPRESS

    d = root / f"loading-{rows}"
    files = {"csv": d / "train.csv", "parquet": d / "train.parquet"}
    if all(f.is_file() for f in files.values()):
        return files
    rng = np.random.default_rng(0)
    cat = np.stack([rng.integers(0, v, rows) for v in ALIEXPRESS.vocab_sizes], 1)
    # 6 decimals, like the processed files' normalized numericals
    num = np.round(rng.random((rows, ALIEXPRESS.num_numerical)), 6).astype(np.float32)
    lab = np.zeros((rows, 2), dtype=np.uint8)
    lab[:, 0] = rng.random(rows) < 0.03
    lab[:, 1] = lab[:, 0] & (rng.random(rows) < 0.03)
    data = ScenarioData(cat.astype(np.int16), num, lab)
    for path in files.values():
        write_split(data, path, ALIEXPRESS)
    return files


def child(kind: str, path: Path) -> dict:
    """One measurement; runs in its own interpreter (see the module docstring)."""
    import pandas as pd

    from msmtrec.data.loader import load_split

    gc.collect()
    C.reset_peak_rss()
    before = C.rss_bytes()
    t0 = time.perf_counter()
    if kind.startswith("loader"):
        data = load_split(path)
        rows = len(data)
        final = data.nbytes
    else:
        df = pd.read_csv(path)
        rows = len(df)
        final = int(df.memory_usage(deep=True, index=False).sum())
    seconds = time.perf_counter() - t0
    peak = C.peak_rss_bytes() - before
    return {"kind": kind, "rows": rows, "seconds": seconds, "peak": peak, "final": final}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=3, help="alternated fresh-process runs each")
    p.add_argument("--data-dir", type=Path, default=C.REPO / "runs" / "bench-data")
    p.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    C.add_common_flags(p)
    args = p.parse_args(argv)
    if args.child:
        C.pin_threads(args.threads)
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return 0
    if args.quick:
        args.rows, args.repeats = 20_000, 1
    threads = C.pin_threads(args.threads)
    report = C.Report("Data loading (benchmark 5)", "data_loading.py", argv, threads)
    t0 = time.perf_counter()
    files = data_files(args.rows, args.data_dir)
    made = time.perf_counter() - t0
    sizes = {k: f.stat().st_size for k, f in files.items()}
    path_of = {"loader-csv": files["csv"], "loader-parquet": files["parquet"],
               "pandas-csv": files["csv"]}  # fmt: skip
    results: dict[str, list[dict]] = {k: [] for k in CANDIDATES}
    for r in range(args.repeats):
        order = CANDIDATES[r % 3 :] + CANDIDATES[: r % 3]
        for kind in order:
            res = C.run_child(
                Path(__file__),
                ["--child", kind, str(path_of[kind]), "--threads", str(args.threads)],
            )
            results[kind].append(res)
            print(f"  {kind}: {res['seconds']:.2f} s, peak {res['peak'] / 2**20:.0f} MiB")
    report.add(
        f"{args.rows:,} rows; CSV {sizes['csv'] / 1e6:,.0f} MB, Parquet (zstd) "
        f"{sizes['parquet'] / 1e6:,.0f} MB (written in {made:.0f} s or reused); each figure "
        f"the median of {args.repeats} fresh processes, alternated; peak = VmHWM after the "
        "load − VmRSS before it (imports excluded); MiB = 2^20 bytes.",
        "",
    )
    pandas_s = C.median([x["seconds"] for x in results["pandas-csv"]])
    rows_out = []
    for kind in CANDIDATES:
        rs = results[kind]
        sec = C.median([x["seconds"] for x in rs])
        peak = C.median([x["peak"] for x in rs])
        final = rs[0]["final"]
        ratio = peak / final
        verdict = (
            ("met" if ratio <= TARGET_PEAK_RATIO else "MISSED") if kind != "pandas-csv" else ""
        )
        rows_out.append(
            (kind, f"{args.rows / sec:,.0f}", C.spread([x["seconds"] for x in rs]),
             f"{pandas_s / sec:.2f}", f"{final / 2**20:,.0f}", f"{peak / 2**20:,.0f}",
             f"{ratio:.2f}", verdict),
        )  # fmt: skip
    report.table(
        ("path", "rows/s", "time median (min–max, n)", "speed ÷ pandas", "result MiB",
         "peak MiB", "peak ÷ result", "≤ 1.5"),
        rows_out,
    )  # fmt: skip
    report.add(
        "",
        "pandas.read_csv keeps every column as int64/float64 (82 columns × 8 bytes per row "
        "plus the id); the loader returns int16/float32/uint8 arrays, validated.",
    )
    report.write(C.output_path(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
