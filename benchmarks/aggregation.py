"""Aggregation scaling: pfmsmtrec ``Strategy.aggregate`` for 4, 16, 64 clients (benchmark 4).

    python benchmarks/aggregation.py                       # paper preset, 4 16 64 clients
    python benchmarks/aggregation.py --clients 4 8 16 32 --rounds 3

The server's state is the ``paper`` preset's shared tensors (W_G, W_S, tower Linear layers:
20.0 M float32 = 80 MB per client); client updates are generated (start + seeded noise of a
training-like scale), no training. Round 1 has no hyper-gradient step (nothing to judge yet),
so the figure is the median over the rounds after it; each round's updates are generated
before the clock starts and dropped after it (at 64 clients they alone are 5 GB).

For a fixed model the work is linear in clients except the Gram matrix of the
conflict-averse step, C×C per expert, which is O(C²·P). The benchmark fits
time ∝ C^k over the measured sizes and prints k (target: k ≤ 1), the time per client, and
the process's memory peak during one aggregate above what it held before (inputs and state
excluded). ``--profile`` adds a cProfile summary of one aggregate at the largest size.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import math
import pstats
import sys
import time

import _common as C
import numpy as np
import torch

from msmtrec.data.schema import ALIEXPRESS
from msmtrec.federation.config import resolve_method
from msmtrec.federation.strategy import ClientUpdate, Strategy
from msmtrec.model import build_model, preset

NOISE = 1e-3  # a local round moves weights by ~1e-3 (Adam, lr 3e-3, a few dozen steps)


def initial_state(preset_name: str) -> dict[str, torch.Tensor]:
    model = build_model(ALIEXPRESS, preset(preset_name), seed=0)
    return {n: t.detach() for n, t in model.state_dict().items()}


def make_updates(strategy: Strategy, clients: int, round_number: int) -> list[ClientUpdate]:
    """θ_end = θ_start + noise, a per-client mix of a shared direction and its own, so the
    conflict-averse solver has real (non-degenerate) work to do."""
    out = []
    for c in range(clients):
        cid = f"C{c:03d}"
        g = torch.Generator().manual_seed(1000 * round_number + c)
        start = strategy.payload(cid)
        params = {}
        for n, t in start.items():
            noise = torch.randn(t.shape, generator=g)
            noise.mul_(NOISE).add_(t)
            params[n] = noise
        out.append(ClientUpdate(cid, 1000 + 10 * c, params))
    return out


def fit_exponent(xs: list[int], ys: list[float]) -> float:
    if len(xs) < 2:
        return float("nan")
    k, _ = np.polyfit(np.log(xs), np.log(ys), 1)
    return float(k)


def run_size(
    init: dict[str, torch.Tensor], clients: int, rounds: int, profile: bool
) -> tuple[list[float], float, float, str]:
    """(seconds of rounds 2.., seconds of round 1, peak extra bytes, profile text)."""
    strategy = Strategy(resolve_method("pfmsmtrec"), init)
    times: list[float] = []
    first = math.nan
    peak = 0
    text = ""
    for r in range(1, rounds + 1):
        updates = make_updates(strategy, clients, r)
        gc.collect()
        before = C.rss_bytes()
        C.reset_peak_rss()
        prof = cProfile.Profile() if profile and r == rounds else None
        t0 = time.perf_counter()
        if prof is not None:
            prof.enable()
        strategy.aggregate(updates)
        if prof is not None:
            prof.disable()
        dt = time.perf_counter() - t0
        peak = max(peak, C.peak_rss_bytes() - before)
        if r == 1:
            first = dt
        else:
            times.append(dt)
        del updates
        if prof is not None:
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(12)
            text = s.getvalue()
    return times, first, peak, text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--preset", choices=("paper", "small"), default="paper")
    p.add_argument("--rounds", type=int, default=3, help="rounds per size (the first untimed)")
    p.add_argument("--profile", action="store_true", help="cProfile one aggregate (largest C)")
    C.add_common_flags(p)
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.preset, args.rounds = [2, 4], "small", 2
    threads = C.pin_threads(args.threads)
    report = C.Report("Aggregation scaling (benchmark 4)", "aggregation.py", argv, threads)
    init = initial_state(args.preset)
    strategy = Strategy(resolve_method("pfmsmtrec"), init)
    shared = sum(init[n].numel() for n in strategy.names)
    report.add(
        f"pfmsmtrec Strategy.aggregate, {args.preset} preset: {shared / 1e6:.2f} M shared "
        f"float32 per client ({shared * 4 / 1e6:.0f} MB: W_G {len(strategy.fedavg_names)}, "
        f"W_S {len(strategy.expert_names)}, tower {len(strategy.tower_names)} tensors; "
        f"{strategy.num_experts} experts). Generated updates; median over rounds 2–"
        f"{args.rounds} (round 1, without the hyper-gradient step, shown apart).",
        "",
    )
    del strategy
    rows, xs, ys = [], [], []
    profile_text = ""
    for c in sorted(args.clients):
        times, first, peak, text = run_size(
            init, c, args.rounds, args.profile and c == max(args.clients)
        )
        profile_text = text or profile_text
        med = C.median(times)
        xs.append(c)
        ys.append(med)
        rows.append(
            (c, C.spread(times), f"{first:.3g} s", f"{med / c * 1e3:.1f} ms",
             f"{c * shared * 4 / med / 1e9:.2f} GB/s", f"{peak / 2**20:,.0f} MiB"),
        )  # fmt: skip
        print(f"  {c} clients: {med:.3f} s", flush=True)
        gc.collect()
    report.table(
        ("clients", "aggregate, rounds ≥ 2", "round 1", "per client", "input rate",
         "peak extra memory"),
        rows,
    )  # fmt: skip
    k = fit_exponent(xs, ys)
    pairs = [
        f"{ys[i + 1] / ys[i]:.2f}× for {xs[i + 1] / xs[i]:g}× clients" for i in range(len(xs) - 1)
    ]
    report.add(
        "",
        f"Fitted exponent (time ∝ clients^k, least squares on log-log): **k = {k:.2f}** "
        f"(target ≤ 1: {'met' if k <= 1.0 else 'MISSED'}); step ratios: {', '.join(pairs)}.",
    )
    if profile_text:
        report.add("", "cProfile of one aggregate at the largest size (top by own time):", "")
        report.add("```", *[ln for ln in profile_text.strip().splitlines() if ln.strip()], "```")
    report.write(C.output_path(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
