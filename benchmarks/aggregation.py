"""Aggregation scaling: pfmsmtrec ``Strategy.aggregate`` for 4, 16, 64 clients (benchmark 4).

    python benchmarks/aggregation.py                       # paper preset, 4 16 64 clients
    python benchmarks/aggregation.py --clients 4 8 16 32 --rounds 3

The server's state is the ``paper`` preset's shared tensors (W_G, W_S, tower Linear layers:
20.0 M float32 = 80 MB per client); client updates are generated (start + seeded noise of a
training-like scale), no training. Round 1 has no hyper-gradient step (nothing to judge yet),
so the figures are medians over the rounds after it; each round's updates are generated
before the clock starts and dropped after it (at 64 clients they alone are 5 GB). The sizes
alternate within every round (rotating order), so a burst of load from other processes hits
all of them alike, and both wall and CPU time are reported: the aggregation is
single-threaded at ``--threads 1``, so its CPU time is its work, much less disturbed by other
processes than its wall time.

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


class PhaseClock:
    """CPU seconds spent in the two parts of the aggregation that grow faster than the number
    of clients: the conflict-averse Gram matrices (O(C²P)) and the per-expert QP over the
    simplex (SLSQP, C variables). Installed by wrapping the strategy module's functions."""

    def __init__(self) -> None:
        self.gram = 0.0
        self.qp = 0.0
        self.installed = False

    def install(self) -> None:
        import msmtrec.federation.strategy as st

        if self.installed or not hasattr(st, "_add_gram"):
            return
        add_gram, plan = st._add_gram, st.conflict_averse_plan

        def timed_gram(*a, **k):
            t = time.process_time()
            try:
                return add_gram(*a, **k)
            finally:
                self.gram += time.process_time() - t

        def timed_plan(*a, **k):
            t = time.process_time()
            try:
                return plan(*a, **k)
            finally:
                self.qp += time.process_time() - t

        st._add_gram, st.conflict_averse_plan = timed_gram, timed_plan
        self.installed = True

    def take(self) -> tuple[float, float]:
        out = (self.gram, self.qp)
        self.gram = self.qp = 0.0
        return out


CLOCK = PhaseClock()


def timed_aggregate(
    strategy: Strategy, clients: int, round_number: int, profile: bool
) -> tuple[float, float, int, str, tuple[float, float]]:
    """(wall s, CPU s, peak extra bytes, profile text, (Gram CPU s, QP CPU s)) of one
    aggregate; its updates are generated before the clock starts and dropped after it."""
    updates = make_updates(strategy, clients, round_number)
    gc.collect()
    before = C.rss_bytes()
    C.reset_peak_rss()
    prof = cProfile.Profile() if profile else None
    CLOCK.take()
    cpu0, t0 = time.process_time(), time.perf_counter()
    if prof is not None:
        prof.enable()
    strategy.aggregate(updates)
    if prof is not None:
        prof.disable()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    phases = CLOCK.take()
    peak = C.peak_rss_bytes() - before
    del updates
    gc.collect()
    text = ""
    if prof is not None:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
        text = out.getvalue()
    return wall, cpu, peak, text, phases


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--preset", choices=("paper", "small"), default="paper")
    p.add_argument("--rounds", type=int, default=4, help="rounds per size (the first apart)")
    p.add_argument("--profile", action="store_true", help="cProfile one aggregate (largest C)")
    C.add_common_flags(p, threads=1)
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.preset, args.rounds = [2, 4], "small", 2
    threads = C.pin_threads(args.threads)
    report = C.Report("Aggregation scaling (benchmark 4)", "aggregation.py", argv, threads)
    init = initial_state(args.preset)
    sizes = sorted(args.clients)
    strategies = {c: Strategy(resolve_method("pfmsmtrec"), init) for c in sizes}
    one = strategies[sizes[0]]
    shared = sum(init[n].numel() for n in one.names)
    report.add(
        f"pfmsmtrec Strategy.aggregate, {args.preset} preset: {shared / 1e6:.2f} M shared "
        f"float32 per client ({shared * 4 / 1e6:.0f} MB: W_G {len(one.fedavg_names)}, "
        f"W_S {len(one.expert_names)}, tower {len(one.tower_names)} tensors; "
        f"{one.num_experts} experts). Generated updates; medians over rounds 2–{args.rounds} "
        "(round 1, without the hyper-gradient step, shown apart); sizes alternated.",
        "",
    )
    CLOCK.install()
    wall: dict[int, list[float]] = {c: [] for c in sizes}
    gram: dict[int, list[float]] = {c: [] for c in sizes}
    qp: dict[int, list[float]] = {c: [] for c in sizes}
    rest: dict[int, list[float]] = {c: [] for c in sizes}
    cpu: dict[int, list[float]] = {c: [] for c in sizes}
    first: dict[int, float] = {}
    peak: dict[int, int] = dict.fromkeys(sizes, 0)
    profile_text = ""
    for r in range(1, args.rounds + 1):
        shift = (r - 1) % len(sizes)
        for c in sizes[shift:] + sizes[:shift]:
            prof = args.profile and r == args.rounds and c == sizes[-1]
            w, u, pk, text, (g_s, q_s) = timed_aggregate(strategies[c], c, r, prof)
            profile_text = text or profile_text
            peak[c] = max(peak[c], pk)
            if r == 1:
                first[c] = w
            else:
                wall[c].append(w)
                cpu[c].append(u)
                gram[c].append(g_s)
                qp[c].append(q_s)
                rest[c].append(u - g_s - q_s)
            print(f"  round {r}, {c} clients: {w:.3f} s wall, {u:.3f} s CPU", flush=True)
    rows = []
    for c in sizes:
        med = C.median(wall[c])
        rows.append(
            (c, C.spread(wall[c]), C.spread(cpu[c]), f"{first[c]:.3g} s",
             f"{C.median(cpu[c]) / c * 1e3:.1f} ms", f"{c * shared * 4 / med / 1e9:.2f} GB/s",
             f"{peak[c] / 2**20:,.0f} MiB"),
        )  # fmt: skip
    report.table(
        ("clients", "wall, rounds ≥ 2", "CPU, rounds ≥ 2", "round 1 wall", "CPU per client",
         "input rate (wall)", "peak extra memory"),
        rows,
    )  # fmt: skip
    report.add(
        "",
        "Where the CPU time goes (medians): the two parts that grow faster than C — the "
        "conflict-averse Gram matrices (C×C per expert, O(C²P)) and the per-expert QP over "
        "the simplex (SLSQP, C variables) — and everything else:",
        "",
    )
    report.table(
        ("clients", "Gram", "QP", "rest", "rest per client"),
        [
            (c, f"{C.median(gram[c]):.3f} s", f"{C.median(qp[c]):.3f} s",
             f"{C.median(rest[c]):.3f} s", f"{C.median(rest[c]) / c * 1e3:.1f} ms")
            for c in sizes
        ],
    )  # fmt: skip
    report.add("")
    for label, series in (
        ("CPU time", cpu),
        ("wall time", wall),
        ("CPU time without Gram and QP", rest),
    ):
        ys = [C.median(series[c]) for c in sizes]
        k = fit_exponent(sizes, ys)
        steps = ", ".join(
            f"{ys[i + 1] / ys[i]:.2f}× for {sizes[i + 1] / sizes[i]:g}× clients"
            for i in range(len(sizes) - 1)
        )
        verdict = "n/a" if math.isnan(k) else ("met" if k <= 1.0 else "MISSED")
        report.add(
            f"- {label}: fitted exponent (time ∝ clients^k, least squares on log-log) "
            f"**k = {k:.2f}** (target ≤ 1: {verdict}); step ratios: {steps or 'n/a'}."
        )
    if profile_text:
        report.add("", "cProfile of one aggregate at the largest size (top by own time):", "")
        report.add("```", *[ln for ln in profile_text.strip().splitlines() if ln.strip()], "```")
    report.write(C.output_path(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
