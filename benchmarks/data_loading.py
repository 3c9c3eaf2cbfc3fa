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

Out-of-core training (issue #12, ``--stream``):

    python benchmarks/data_loading.py --stream       # 20 M rows, AliExpress spec, small preset
    python benchmarks/data_loading.py --stream --train-rows 2000000   # a shorter training epoch

One Parquet file of ``max(--read-rows, --train-rows)`` AliExpress-schema rows is generated on
the fly (chunk by chunk, row groups of 65,536) in a temporary directory, deleted at the end.
Fresh processes then measure (1) one epoch of the stream alone (``msmtrec.data.stream``,
batches of 512 through the shuffle buffer, no model) over the first N rows for each N of
``--read-rows``: peak memory must not grow with N; (2) one training epoch
(``Trainer.fit`` on the stream, small preset) over ``--train-rows`` rows: peak RSS target
≤ 2 GB, the whole process (VmHWM, imports and model included; ``ru_maxrss`` would include
the parent's peak, which Linux keeps across vfork + exec); (3) on the first
``--compare-rows`` rows (a scenario that fits in memory), one training epoch in memory
(``load_split`` once, not timed, then ``Trainer.fit``) against one streamed epoch (reading
timed), alternated ``--repeats`` times: target stream ≥ 0.9 × in-memory rows/s.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
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


# ------------------------------------------------------------------ out-of-core (--stream)

STREAM_TARGET_RSS = 2 * 10**9  # bytes: "peak RSS <= 2 GB"
STREAM_TARGET_SPEED = 0.9
_GEN_CHUNK = 262_144


def stream_file(rows: int, path: Path) -> float:
    """Write ``rows`` random AliExpress-schema rows to ``path`` chunk by chunk (memory: one
    chunk); seconds taken."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from msmtrec.data.schema import ALIEXPRESS as S

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    writer = None
    try:
        for a in range(0, rows, _GEN_CHUNK):
            n = min(rows, a + _GEN_CHUNK) - a
            cols = {S.id_column: pa.array(np.arange(a, a + n, dtype=np.int64))}
            for name, v in zip(S.categorical, S.vocab_sizes, strict=True):
                cols[name] = pa.array(rng.integers(0, v, n).astype(np.int16))
            num = np.round(rng.random((n, S.num_numerical)), 6).astype(np.float32)
            for j, name in enumerate(S.numerical):
                cols[name] = pa.array(num[:, j])
            click = rng.random(n) < 0.03
            cols[S.labels[0]] = pa.array(click.astype(np.uint8))
            cols[S.labels[1]] = pa.array((click & (rng.random(n) < 0.03)).astype(np.uint8))
            table = pa.table(cols)
            if writer is None:
                writer = pq.ParquetWriter(str(path), table.schema, compression="zstd")
            writer.write_table(table, row_group_size=65_536)
    finally:
        if writer is not None:
            writer.close()
    return time.perf_counter() - t0


def _progress_stream() -> type:
    """A ParquetStream that reports (rows, seconds, peak RSS) on stderr every 5 % of its rows,
    so an epoch stopped by ``--train-timeout`` still gives its figures so far."""
    from msmtrec.data.stream import ParquetStream

    class Progress(ParquetStream):
        def batches(self, batch_size, *, seed, epoch=0):  # type: ignore[no-untyped-def]
            step = max(10_000, len(self) // 20)
            t0, done, mark = time.perf_counter(), 0, step
            for b in super().batches(batch_size, seed=seed, epoch=epoch):
                yield b
                done += len(b)
                if done >= mark:
                    mark += step
                    peak = C.peak_rss_bytes()
                    line = {"progress": done, "seconds": time.perf_counter() - t0, "peak": peak}
                    print(json.dumps(line), file=sys.stderr, flush=True)

    return Progress


def _last_progress(stderr: str | bytes | None) -> dict | None:
    text = stderr.decode() if isinstance(stderr, bytes) else (stderr or "")
    lines = [x for x in text.splitlines() if x.startswith('{"progress"')]
    return json.loads(lines[-1]) if lines else None


def stream_child(kind: str, path: Path, rows: int, buffer_rows: int) -> dict:
    """One measurement in a fresh interpreter: ``read`` (the stream alone), ``stream`` or
    ``memory`` (one training epoch). Peak = the whole process's resident high-water mark."""
    import torch

    from msmtrec.data.schema import ALIEXPRESS
    from msmtrec.data.stream import ParquetStream, load_rows
    from msmtrec.model import build_model, preset
    from msmtrec.training import TrainConfig, Trainer

    _Progress = _progress_stream()
    gc.collect()
    # ru_maxrss would start at the parent's peak (Linux keeps it across vfork + exec), so the
    # high-water mark is reset here: the peak counts everything resident from now on,
    # the imports, torch and the model included.
    C.reset_peak_rss()
    before = C.rss_bytes()
    load_seconds = 0.0
    if kind == "read":
        stream = ParquetStream(path, ALIEXPRESS, buffer_rows=buffer_rows, stop=rows)
        t0 = time.perf_counter()
        seen = sum(len(b) for b in stream.batches(512, seed=0, epoch=0))
        seconds = time.perf_counter() - t0
    else:
        model = build_model(ALIEXPRESS, preset("small"), 0)
        trainer = Trainer(model, TrainConfig())
        if kind == "memory":
            t0 = time.perf_counter()
            data = load_rows(path, ALIEXPRESS, stop=rows)
            load_seconds = time.perf_counter() - t0
        else:
            data = _Progress(path, ALIEXPRESS, buffer_rows=buffer_rows, stop=rows)
        t0 = time.perf_counter()
        result = trainer.fit(data, seed=0, epochs=1)
        seconds = time.perf_counter() - t0
        seen = len(data)
        assert result.num_samples == seen and torch.isfinite(torch.tensor(result.loss))
    peak = C.peak_rss_bytes()
    return {"kind": kind, "rows": seen, "seconds": seconds, "peak": peak, "before": before,
            "load_seconds": load_seconds}  # fmt: skip


def run_stream(args: argparse.Namespace, argv: list[str] | None) -> int:
    import tempfile

    threads = C.pin_threads(args.threads)
    report = C.Report("Out-of-core training data (issue 12)", "data_loading.py", argv, threads)
    read_rows = sorted(set(args.read_rows))
    rows = max([*read_rows, args.train_rows, args.compare_rows])
    script = Path(__file__)
    timeout = 4 * 3600.0

    def child(kind: str, n: int, limit: float = timeout) -> dict:
        res = C.run_child(
            script,
            ["--stream-child", kind, str(path), str(n), str(args.buffer_rows),
             "--threads", str(args.threads)],
            timeout=limit,
        )  # fmt: skip
        print(f"  {kind} {n:,} rows: {res['seconds']:.1f} s, {n / res['seconds']:,.0f} rows/s, "
              f"peak RSS {res['peak'] / 2**20:,.0f} MiB", flush=True)  # fmt: skip
        return res

    with tempfile.TemporaryDirectory(dir=args.tmp_dir, prefix="msmtrec-stream-") as tmp:
        path = Path(tmp) / "train.parquet"
        made = stream_file(rows, path)
        size = path.stat().st_size
        report.add(
            f"One Parquet file of {rows:,} random AliExpress-schema rows (zstd, row groups of "
            f"65,536; {size / 1e9:.2f} GB, generated in {made:.0f} s in a temporary directory); "
            f"shuffle buffer {args.buffer_rows:,} rows, batches of 512; every figure from a "
            "fresh process; peak = the process's resident high-water mark (VmHWM, reset when "
            "the process starts measuring: imports, torch and the model included; ru_maxrss "
            "is not used because Linux carries the parent's peak into a child across "
            "vfork + exec); MiB = 2^20 bytes.",
            "",
        )
        table = []
        for n in read_rows:
            r = child("read", n)
            table.append(("stream alone (no model)", f"{n:,}", f"{n / r['seconds']:,.0f}",
                          f"{r['seconds']:.1f} s", f"{r['peak'] / 2**20:,.0f}", ""))  # fmt: skip
        if args.train_rows:
            n = args.train_rows
            try:
                r = child("stream", n, args.train_timeout)
                label, done = "training epoch, streamed", n
            except subprocess.TimeoutExpired as exc:
                r = _last_progress(exc.stderr)
                if r is None:
                    raise
                done = r["progress"]
                label = (f"training epoch, streamed: STOPPED by --train-timeout after "
                         f"{done:,} of {n:,} rows")  # fmt: skip
                print(f"  stream {n:,} rows: stopped at {done:,} rows", flush=True)
            ok = "met" if r["peak"] <= STREAM_TARGET_RSS else "MISSED"
            table.append((label, f"{done:,}", f"{done / r['seconds']:,.0f}",
                          f"{r['seconds']:.0f} s", f"{r['peak'] / 2**20:,.0f}", ok))  # fmt: skip
        report.add("**Memory while rows grow** (target: peak RSS ≤ 2 GB = 1,907 MiB):", "")
        report.table(("path", "rows", "rows/s", "epoch time", "peak RSS MiB", "≤ 2 GB"), table)
        if args.compare_rows:
            n = args.compare_rows
            runs: dict[str, list[dict]] = {"memory": [], "stream": []}
            for rep in range(args.repeats):
                for kind in ("memory", "stream") if rep % 2 == 0 else ("stream", "memory"):
                    runs[kind].append(child(kind, n))
            med = {k: C.median([n / x["seconds"] for x in v]) for k, v in runs.items()}
            ratio = med["stream"] / med["memory"]
            load = C.median([x["load_seconds"] for x in runs["memory"]])
            report.add(
                "",
                f"**Throughput on {n:,} rows (fits in memory)**: one training epoch, small "
                f"preset, batch 512; median of {args.repeats} fresh processes each, "
                f"alternated. The in-memory path loads its rows first ({load:.1f} s, not "
                "timed); the streamed epoch's time includes reading and shuffling.",
                "",
            )
            verdict = "met" if ratio >= STREAM_TARGET_SPEED else "MISSED"
            report.table(
                ("path", "rows/s (median)", "epoch time (min–max, n)", "peak RSS MiB",
                 "÷ in-memory", "≥ 0.9"),
                [
                    ("in memory", f"{med['memory']:,.0f}",
                     C.spread([x["seconds"] for x in runs["memory"]]),
                     f"{C.median([x['peak'] for x in runs['memory']]) / 2**20:,.0f}", "1.00",
                     "yardstick"),
                    ("streamed", f"{med['stream']:,.0f}",
                     C.spread([x["seconds"] for x in runs["stream"]]),
                     f"{C.median([x['peak'] for x in runs['stream']]) / 2**20:,.0f}",
                     f"{ratio:.2f}", verdict),
                ],
            )  # fmt: skip
    report.write(C.output_path(args))
    return 0


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
    p.add_argument("--stream", action="store_true", help="the out-of-core benchmark instead")
    p.add_argument("--read-rows", type=int, nargs="+", default=[2_000_000, 20_000_000],
                   help="--stream: rows of each stream-alone epoch")  # fmt: skip
    p.add_argument("--train-rows", type=int, default=20_000_000,
                   help="--stream: rows of the streamed training epoch (0: skip)")  # fmt: skip
    p.add_argument("--compare-rows", type=int, default=1_000_000,
                   help="--stream: rows of in-memory vs streamed (0: skip)")  # fmt: skip
    p.add_argument("--buffer-rows", type=int, default=262_144, help="--stream: shuffle buffer")
    p.add_argument("--tmp-dir", type=Path, default=None, help="--stream: where the file goes")
    p.add_argument("--train-timeout", type=float, default=4 * 3600.0,
                   help="--stream: stop the training epoch after this many seconds and report "
                   "the rows done so far")  # fmt: skip
    p.add_argument("--stream-child", nargs=4, help=argparse.SUPPRESS)
    C.add_common_flags(p)
    args = p.parse_args(argv)
    if args.stream_child:
        C.pin_threads(args.threads)
        kind, path, n, buf = args.stream_child
        print(json.dumps(stream_child(kind, Path(path), int(n), int(buf))))
        return 0
    if args.stream:
        if args.quick:
            args.read_rows, args.train_rows, args.compare_rows = [20_000, 60_000], 20_000, 20_000
            args.repeats, args.buffer_rows = 2, 8_192
        return run_stream(args, argv)
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
