"""The gateway's serving engine per device: forward latency by batch size (issue #17).

    python benchmarks/engine_device.py --devices cpu cuda --presets small paper

For each preset, a model is published-like (CPU float32, eval mode) and compiled with
``gateway.engine.compile_model(model, kind, device)`` exactly as the gateway does on load;
then the engine is timed on AliExpress-schema batches of each size, one call at a time
(CPU tensors in, CPU probabilities out: on a GPU the copies both ways are inside the clock,
as they are in a request). p50 / p99 over ``--iters`` calls after a warm-up. The gateway's
request-level targets (docs/GATEWAY.md, benchmarks/gateway.py) are p99 ≤ 10 ms at batch 1
(both presets) and 100 (small), ≤ 30 ms at batch 100 (paper); the engine is a part of that.
"""

from __future__ import annotations

import argparse
import sys

import _common as C
import numpy as np
import torch

from gateway.engine import CompiledMMoE, compile_model, random_batch
from msmtrec.data.schema import ALIEXPRESS
from msmtrec.device import device_name, resolve_device
from msmtrec.model import build_model, preset

TARGETS_MS = {("small", 1): 10.0, ("small", 100): 10.0, ("paper", 1): 10.0, ("paper", 100): 30.0}


def time_engine(engine, cat: torch.Tensor, num: torch.Tensor, iters: int, max_s: float):
    """Milliseconds per call (CPU in, CPU out), after five warm-up calls."""
    with torch.inference_mode():
        for _ in range(5):
            engine(cat, num)
        out = []
        start = C.time.perf_counter()
        for _ in range(iters):
            t0 = C.time.perf_counter()
            engine(cat, num)  # returns CPU tensors: a GPU call has finished when it returns
            out.append((C.time.perf_counter() - t0) * 1e3)
            if C.time.perf_counter() - start > max_s:
                break
    return np.array(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", nargs="+", default=["cpu"], help="cpu, cuda, cuda:N, auto")
    p.add_argument("--presets", nargs="+", choices=("small", "paper"), default=["small", "paper"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 100, 1000, 4096])
    p.add_argument("--engine", choices=("compiled", "eager"), default="compiled")
    p.add_argument("--iters", type=int, default=300, help="calls per (preset, batch, device)")
    p.add_argument("--max-seconds", type=float, default=20.0, help="cap per measurement")
    C.add_common_flags(p, threads=1)
    args = p.parse_args(argv)
    if args.quick:
        args.iters, args.max_seconds, args.batches = 20, 2.0, [1, 100]
    try:
        devices = [resolve_device(d, "--devices") for d in args.devices]
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    threads = C.pin_threads(args.threads)
    report = C.Report("Gateway engine latency per device", "engine_device.py", argv, threads)
    report.add(
        f"`compile_model(model, {args.engine!r}, device)` as the gateway loads a version; one "
        "call at a time, CPU tensors in and CPU probabilities out (on a GPU the copies are "
        "inside the clock). Request-level p99 targets (docs/GATEWAY.md): "
        + ", ".join(f"{pr} batch {b} ≤ {ms:g} ms" for (pr, b), ms in TARGETS_MS.items())
        + ".",
        "",
    )
    rows = []
    for name in args.presets:
        model = build_model(ALIEXPRESS, preset(name), seed=0).eval()
        for device in devices:
            engine = compile_model(model, args.engine, device)
            kind = "compiled" if isinstance(engine, CompiledMMoE) else "eager"
            where = getattr(engine, "device", torch.device("cpu"))
            for batch in args.batches:
                cat, num = random_batch(model, batch, seed=1)
                ms = time_engine(engine, cat, num, args.iters, args.max_seconds)
                p50, p99 = np.percentile(ms, 50), np.percentile(ms, 99)
                target = TARGETS_MS.get((name, batch))
                verdict = "" if target is None else ("met" if p99 <= target else "MISSED")
                rows.append(
                    (name, device_name(where), kind, batch, f"{p50:.3f}", f"{p99:.3f}",
                     f"{batch / (p50 / 1e3):,.0f}", len(ms),
                     f"≤ {target:g} ms: {verdict}" if target else ""),
                )  # fmt: skip
                print(rows[-1], flush=True)
    report.table(
        ("preset", "device", "engine", "batch", "p50 ms", "p99 ms", "rows/s at p50", "calls",
         "request p99 target (engine part)"),
        rows,
    )  # fmt: skip
    report.write(C.output_path(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
