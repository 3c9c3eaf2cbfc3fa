"""A 5-million-row embedding table: training step time and memory, sparse vs dense.

    python benchmarks/sparse_embedding.py                  # 5 M rows, small preset
    python benchmarks/sparse_embedding.py --rows 2000000 --fits 3

Each mode runs in a fresh process (so its peak RSS is its own) and trains the ``small``
preset on a schema with one private, hashed ``user_id`` table of ``--rows`` ids plus three
small categorical features and four numerical ones, tasks click → like (a product chain):

* **sparse** (the default layout, :mod:`msmtrec.model.inputs`): the table is an
  ``nn.Embedding(sparse=True)``; a step's gradient holds only its batch's rows and the
  trainer's row-wise Adam (:mod:`msmtrec.training.sparse`) updates those rows alone.
* **serve**: the gateway's parse + compiled engine on the sparse model (the large table
  looked up per request rather than folded), p50/p99 for 1 and 100 instances.
* **dense** (the yardstick): the same table as a plain ``nn.Embedding`` under the fused
  dense Adam: every step materialises a gradient of the whole table and rewrites the table
  and both moment tensors.

Reported: median seconds per training step over ``--fits`` calls of ``Trainer.fit``
(a fresh optimizer per fit, as a federated round has), the process's peak RSS, and the
peak minus the RSS once the model is built (what training adds). Users are drawn
power-law (Zipf-like), as ids of a real log are.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import _common as C

# the repository first: benchmarks/gateway.py would shadow the gateway package
sys.path.insert(0, str(C.REPO))


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def bench_schema(rows: int):
    """One private, hashed ``user_id`` table of ``rows`` ids, three small features, four
    numericals; tasks click → like (a product chain)."""
    from msmtrec.data.schema import EmbeddingTable, FeatureSchema

    return FeatureSchema(
        categorical=("user_id", "gender", "age", "category"),
        vocab_sizes=(rows, 3, 8, 64),
        numerical=("n1", "n2", "n3", "n4"),
        labels=("click", "like"),
        tasks=("click", "like"),
        id_column="row_id",
        name="bench",
        tables=(
            EmbeddingTable("user", rows, hashed=True, policy="private"),
            EmbeddingTable("gender", 3),
            EmbeddingTable("age", 8),
            EmbeddingTable("category", 64),
        ),
        feature_tables=(0, 1, 2, 3),
        task_parents=(None, "click"),
    )


def run_mode(mode: str, rows: int, batch: int, steps: int, fits: int, threads: int) -> dict:
    import numpy as np

    import msmtrec.model.inputs as inputs
    from msmtrec.data.dataset import ScenarioData
    from msmtrec.model import build_model, preset
    from msmtrec.training.trainer import TrainConfig, Trainer

    C.pin_threads(threads)
    if mode == "dense":
        inputs.SPARSE_TABLE_ROWS = 1 << 62  # every table dense
    schema = bench_schema(rows)
    model = build_model(schema, preset("small"), seed=0)
    assert bool(model.sparse_parameter_names) == (mode == "sparse")
    n = batch * steps
    rng = np.random.default_rng(0)
    cat = np.stack(
        [
            np.minimum(rng.zipf(1.2, n) - 1, rows - 1),
            rng.integers(0, 4, n),
            rng.integers(0, 9, n),
            rng.integers(0, 65, n),
        ],
        1,
    ).astype(np.int64)
    click = rng.random(n) < 0.1
    labels = np.stack([click, click & (rng.random(n) < 0.2)], 1).astype(np.float32)
    data = ScenarioData(cat, rng.random((n, 4), dtype=np.float32), labels)
    built = rss_mib()
    trainer = Trainer(model, TrainConfig(batch_size=batch))
    per_step = []
    for f in range(fits + 1):  # the first fit warms up (allocator, kernels)
        start = time.perf_counter()
        res = trainer.fit(data, seed=f)
        if f:
            per_step.append((time.perf_counter() - start) / res.steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "mode": mode,
        "step_ms": 1000 * statistics.median(per_step),
        "peak_rss_mib": peak,
        "training_mib": peak - built,
        "table_mib": rows * 16 * 4 / 2**20,
    }


def run_serve(rows: int, threads: int, repeats: int = 300) -> dict:
    """The gateway's request path without HTTP: parse (raw user ids hashed into the table)
    + the compiled engine, for 1 and 100 instances; the large table is looked up, not
    folded (gateway.engine.FOLD_MAX_FLOATS)."""
    import numpy as np
    import torch

    from gateway.engine import CompiledMMoE, compile_model
    from gateway.features import FeaturePlan
    from msmtrec.model import build_model, preset

    C.pin_threads(threads)
    schema = bench_schema(rows)
    model = build_model(schema, preset("small"), seed=0).eval()
    engine = compile_model(model)
    assert isinstance(engine, CompiledMMoE) and engine.unfolded
    plan = FeaturePlan(schema)
    rng = np.random.default_rng(0)
    out: dict = {"mode": "serve"}
    for batch in (1, 100):
        body = {
            "instances": [
                {"user_id": int(rng.integers(0, 2**62)), "gender": 1, "age": 3, "category": 7,
                 "n1": 0.5, "n2": 0.1, "n3": 0.0, "n4": 1.0}
                for _ in range(batch)
            ]
        }  # fmt: skip
        times = []
        with torch.inference_mode():
            for _ in range(repeats):
                start = time.perf_counter()
                b = plan.parse(body, max_batch=1000)
                engine(torch.from_numpy(b.categorical), torch.from_numpy(b.numerical))
                times.append(time.perf_counter() - start)
        times.sort()
        out[f"b{batch}_p50_ms"] = 1000 * times[len(times) // 2]
        out[f"b{batch}_p99_ms"] = 1000 * times[int(0.99 * (len(times) - 1))]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20, help="steps per fit")
    ap.add_argument("--fits", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mode", choices=("sparse", "dense", "serve"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.mode == "serve":
        print(json.dumps(run_serve(a.rows, a.threads)))
        return
    if a.mode:
        print(json.dumps(run_mode(a.mode, a.rows, a.batch, a.steps, a.fits, a.threads)))
        return
    info = C.machine()
    out = {}
    for mode in ("sparse", "dense", "serve"):
        cmd = [sys.executable, __file__, "--mode", mode, *sys.argv[1:]]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        out[mode] = json.loads(line.strip().splitlines()[-1])
    s, d = out["sparse"], out["dense"]
    print(
        f"{a.rows:,}-row table ({s['table_mib']:.0f} MiB fp32, dim 16), small preset, "
        f"batch {a.batch}, {a.threads} thread(s); {info['cpu']}, load {info['load_start']}"
    )
    print("| mode | ms / step | peak RSS MiB | added by training MiB |")
    print("|---|---|---|---|")
    for r in (s, d):
        print(
            f"| {r['mode']} | {r['step_ms']:.1f} | {r['peak_rss_mib']:.0f} | "
            f"{r['training_mib']:.0f} |"
        )
    print(
        f"sparse vs dense: {d['step_ms'] / s['step_ms']:.1f}x faster per step, "
        f"{d['peak_rss_mib'] - s['peak_rss_mib']:.0f} MiB less peak memory"
    )
    v = out["serve"]
    print(
        f"serving (parse + compiled engine, no HTTP): 1 instance p50 {v['b1_p50_ms']:.2f} ms, "
        f"p99 {v['b1_p99_ms']:.2f} ms; 100 instances p50 {v['b100_p50_ms']:.2f} ms, "
        f"p99 {v['b100_p99_ms']:.2f} ms (docs/GATEWAY.md targets: p99 <= 10 ms for both)"
    )


if __name__ == "__main__":
    main()
