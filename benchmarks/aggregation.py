"""Aggregation scaling: pfmsmtrec ``Strategy.aggregate`` from 4 to 256 clients (benchmark 4).

    python benchmarks/aggregation.py                       # paper preset, 4 8 16 32 64 clients
    python benchmarks/aggregation.py --clients 4 16 64 256 --rounds 3
    python benchmarks/aggregation.py --ca-scale exact      # the exact conflict-averse step
    python benchmarks/aggregation.py --accuracy 12         # sketched vs exact g, 12 clients
    python benchmarks/aggregation.py --clients 64 128 256 --spill /var/tmp/spill  # > RAM

Every size runs in its own fresh process (``--child``), one after the other, so its peak
resident memory (VmHWM) is its own: the inputs, the server state and the aggregation's
working memory of that size and nothing else. The server's state is the ``paper`` preset's
shared tensors (W_G, W_S, tower Linear layers: 20.0 M float32 = 80 MB per client); client
updates are generated (start + seeded noise of a training-like scale), no training. Round 1
has no hyper-gradient step and allocates the server's per-client state, so the figures are
medians over the rounds after it; each round's updates are generated before the clock
starts and dropped after it. Wall and CPU time are both reported: at ``--threads 1`` the
aggregation is single-threaded, so its CPU time is its work, much less disturbed by other
processes on the machine than its wall time.

Memory that must grow with clients, measured per size: the inputs (80 MB per client), the
server's personalized θ (W_S + towers, 40 MB per client) and, with the default
``personal_form="interp"``, each client's last delta (40 MB). What the aggregation itself
adds (peak during aggregate minus what the process held before it) should not grow with C
(O(P)). A size whose estimated peak does not fit the memory available is skipped and said
so, not swapped.

The fit: time ∝ C^k by least squares on log-log over the sizes run (target: k ≤ 1).
``--profile`` adds a cProfile summary of one aggregate at the largest size.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import math
import os
import pstats
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import _common as C
import numpy as np
import torch

from msmtrec.data.schema import ALIEXPRESS
from msmtrec.federation import blocks
from msmtrec.federation import experts as experts_module
from msmtrec.federation.config import resolve_method
from msmtrec.federation.strategy import ClientUpdate, Strategy
from msmtrec.model import build_model, preset
from msmtrec.spill import SpillDir

NOISE = 1e-3  # a local round moves weights by ~1e-3 (Adam, lr 3e-3, a few dozen steps)
SCRIPT = Path(__file__).resolve()


def initial_state(preset_name: str) -> dict[str, torch.Tensor]:
    model = build_model(ALIEXPRESS, preset(preset_name), seed=0)
    return {n: t.detach() for n, t in model.state_dict().items()}


def make_updates(
    strategy: Strategy, clients: int, round_number: int, spill: SpillDir | None = None
) -> list[ClientUpdate]:
    """θ_end = θ_start + seeded noise, per client (with ``spill``, written into memory-mapped
    files as the aggregator's ``--spill-dir`` receives submissions)."""
    out = []
    for c in range(clients):
        cid = f"C{c:03d}"
        g = torch.Generator().manual_seed(1000 * round_number + c)
        start = strategy.payload(cid)
        params = {}
        for n, t in start.items():
            noise = spill.empty_like(t) if spill is not None else torch.empty_like(t)
            torch.randn(t.shape, generator=g, out=noise)
            noise.mul_(NOISE).add_(t)
            params[n] = noise
        out.append(ClientUpdate(cid, 1000 + 10 * c, params))
    return out


def conflicting_updates(strategy: Strategy, clients: int, round_number: int) -> list[ClientUpdate]:
    """θ_end = θ_start + 1e-3·(s_c·shared + own noise) with s_c ∈ {−1, 0, 1} by client: a
    direction some clients follow, some oppose, so the conflict-averse weights matter."""
    out = []
    g = torch.Generator().manual_seed(round_number)
    for c in range(clients):
        cid = f"C{c:03d}"
        start = strategy.payload(cid)
        params = {}
        for n, t in start.items():
            shared = torch.randn(t.shape, generator=torch.Generator().manual_seed(7 + round_number))
            params[n] = t + NOISE * (shared * (c % 3 - 1) + torch.randn(t.shape, generator=g))
        out.append(ClientUpdate(cid, 100 + c, params))
    return out


def accuracy(args: argparse.Namespace) -> int:
    """``--accuracy C``: the sketched step against the exact one, same updates, 2 rounds."""
    C.pin_threads(args.threads)
    init = initial_state(args.preset)
    exact = Strategy(resolve_method("pfmsmtrec", ca_scale="exact"), init)
    sketch = Strategy(resolve_method("pfmsmtrec", ca_scale="sketch"), init)
    print(
        f"sketched vs exact conflict-averse update g, {args.preset} preset, {args.accuracy} "
        "clients (relative norm of the difference, per W_S tensor):"
    )
    for r in range(2):
        exact.aggregate(conflicting_updates(exact, args.accuracy, r))
        sketch.aggregate(conflicting_updates(sketch, args.accuracy, r))
        rel = []
        for n in exact.expert_names:
            ge = exact.last_expert_update[n].double()
            rel.append(float((ge - sketch.last_expert_update[n].double()).norm() / ge.norm()))
        print(f"  round {r + 1}: " + ", ".join(f"{x:.2%}" for x in rel), flush=True)
    return 0


def fit_exponent(xs: list[int], ys: list[float]) -> float:
    if len(xs) < 2:
        return float("nan")
    k, _ = np.polyfit(np.log(xs), np.log(ys), 1)
    return float(k)


class PhaseClock:
    """CPU seconds in the two parts of the aggregation that can grow faster than the number
    of clients: building the Gram matrices of the conflict-averse step (exact: O(C²P);
    sketched: O(C·P + C²·m)) and the QP over the simplex. Installed by wrapping them."""

    def __init__(self) -> None:
        self.gram = 0.0
        self.qp = 0.0

    def _wrap(self, owner: object, name: str, slot: str) -> None:
        inner = getattr(owner, name)

        def timed(*a, **k):
            t = time.process_time()
            try:
                return inner(*a, **k)
            finally:
                setattr(self, slot, getattr(self, slot) + time.process_time() - t)

        setattr(owner, name, timed)

    def install(self) -> None:
        for cls in (blocks.ExactGram, blocks.SketchedGram):
            self._wrap(cls, "add", "gram")
            self._wrap(cls, "result", "gram")
        self._wrap(experts_module, "conflict_averse_plan", "qp")

    def take(self) -> tuple[float, float]:
        out = (self.gram, self.qp)
        self.gram = self.qp = 0.0
        return out


def bytes_per_client(strategy: Strategy) -> int:
    """Inputs + personalized θ (+ last deltas with the interp form), float32."""
    shared = sum(strategy.initial[n].numel() for n in strategy.names)
    personal = sum(
        strategy.initial[n].numel() for n in strategy.expert_names + strategy.tower_names
    )
    interp = strategy.config.personal_form == "interp"
    return 4 * (shared + personal * (2 if interp else 1))


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


class AnonPeak:
    """The peak of the process's anonymous resident memory (RssAnon) while it runs, sampled
    every 10 ms: with ``--spill`` VmHWM also counts the mapped files' pages, which the kernel
    writes back and evicts under pressure; RssAnon is what cannot be evicted (no swap)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, C.anon_bytes())

    def __enter__(self) -> AnonPeak:
        self.peak = C.anon_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, C.anon_bytes())


def child(args: argparse.Namespace) -> dict:
    """One size, in this fresh process: rounds of generate → aggregate → drop."""
    C.pin_threads(args.threads)
    spill = SpillDir(args.spill) if args.spill else None
    strategy = Strategy(
        resolve_method("pfmsmtrec", ca_scale=args.ca_scale), initial_state(args.preset), spill
    )
    clients = args.child
    clock = PhaseClock()
    clock.install()
    rounds = []
    profile_text = ""
    for r in range(1, args.rounds + 1):
        updates = make_updates(strategy, clients, r, spill)
        gc.collect()
        anon_before = C.anon_bytes()
        before = C.rss_bytes()
        C.reset_peak_rss()
        prof = cProfile.Profile() if args.profile and r == args.rounds else None
        clock.take()
        cpu0, t0 = time.process_time(), time.perf_counter()
        if prof is not None:
            prof.enable()
        with AnonPeak() as anon:
            strategy.aggregate(updates)
        if prof is not None:
            prof.disable()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        gram, qp = clock.take()
        extra = C.peak_rss_bytes() - before
        del updates
        gc.collect()
        rounds.append({"round": r, "wall": wall, "cpu": cpu, "gram": gram, "qp": qp,
                       "extra": extra, "held": before, "anon_peak": anon.peak,
                       "anon_extra": anon.peak - anon_before})  # fmt: skip
        print(f"  {clients} clients, round {r}: {wall:.3f} s wall, {cpu:.3f} s CPU", flush=True)
        if prof is not None:
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
            profile_text = out.getvalue()
    peak = C.peak_rss_bytes()
    return {
        "clients": clients,
        "rounds": rounds,
        "hwm": max(peak, max(r["held"] + r["extra"] for r in rounds)),
        "sketched": strategy.sketched(clients),
        "load": C.loadavg(),
        "profile": profile_text,
    }


def run_size(args: argparse.Namespace, clients: int, profile: bool) -> dict:
    cmd = [sys.executable, str(SCRIPT), "--child", str(clients), "--preset", args.preset,
           "--rounds", str(args.rounds), "--threads", str(args.threads),
           "--ca-scale", args.ca_scale] + (["--profile"] if profile else []) + (
               ["--spill", str(args.spill)] if args.spill else [])  # fmt: skip
    proc = subprocess.run(cmd, cwd=C.REPO, capture_output=True, text=True, timeout=args.timeout)
    sys.stdout.write("".join(ln + "\n" for ln in proc.stdout.splitlines() if ln.startswith("  ")))
    if proc.returncode != 0:
        raise RuntimeError(f"{clients} clients failed:\n{proc.stderr[-3000:]}")
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    p.add_argument("--preset", choices=("paper", "small"), default="paper")
    p.add_argument("--rounds", type=int, default=3, help="rounds per size (the first apart)")
    p.add_argument("--ca-scale", choices=("auto", "exact", "sketch"), default="auto")
    p.add_argument("--profile", action="store_true", help="cProfile one aggregate (largest C)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per size")
    p.add_argument(
        "--spill",
        type=Path,
        default=None,
        metavar="DIR",
        help="inputs and per-client server state in memory-mapped files under DIR (the "
        "aggregator's --spill-dir): sizes whose state exceeds the RAM",
    )
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--accuracy",
        type=int,
        default=None,
        metavar="C",
        help="compare the sketched step with the exact one at C clients; no timing",
    )
    C.add_common_flags(p, threads=1)
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.preset, args.rounds = [2, 4], "small", 2
    if args.child is not None:
        print(json.dumps(child(args)))
        return 0
    if args.accuracy is not None:
        return accuracy(args)
    threads = C.pin_threads(args.threads)
    report = C.Report("Aggregation scaling (benchmark 4)", "aggregation.py", argv, threads)
    probe = Strategy(
        resolve_method("pfmsmtrec", ca_scale=args.ca_scale), initial_state(args.preset)
    )
    shared = sum(probe.initial[n].numel() for n in probe.names)
    per_client = bytes_per_client(probe)
    del probe
    report.add(
        f"pfmsmtrec Strategy.aggregate (`ca_scale={args.ca_scale}`), {args.preset} preset: "
        f"{shared / 1e6:.2f} M shared float32 per client ({shared * 4 / 1e6:.0f} MB). Each size "
        f"in its own fresh process, sizes one after the other; generated updates; medians over "
        f"rounds 2–{args.rounds} (round 1, which also allocates the server's per-client state "
        "and has no hyper-gradient step, shown apart). Memory that must grow with clients: "
        f"{per_client / 1e6:.0f} MB per client (inputs, personalized θ, last deltas).",
        "",
    )
    results = []
    skipped = []
    if args.spill:
        args.spill.mkdir(parents=True, exist_ok=True)
        report.add(
            f"**Spilled** (`--spill {args.spill}`): inputs, personalized θ and last deltas in "
            "memory-mapped scratch files (msmtrec/spill.py), so RAM holds the working set and "
            "the page cache the rest; where they exceed the page cache the times include disk "
            "I/O. `anon` = anonymous resident memory (RssAnon, sampled every 10 ms), what the "
            "kernel cannot evict; the peak RSS also counts mapped file pages.",
            "",
        )
    for i, c in enumerate(sorted(args.clients)):
        need = c * per_client + (1 << 30)
        where, avail = "GiB available", mem_available()
        if args.spill:
            where, avail = f"GiB free on {args.spill}", shutil.disk_usage(args.spill).free
        if need > avail - (1 << 30):
            skipped.append(f"{c} clients: needs ~{need / 2**30:.1f} GiB, {avail / 2**30:.1f} "
                           f"{where} (skipped)")  # fmt: skip
            print(f"  {skipped[-1]}", flush=True)
            continue
        last = i == len(args.clients) - 1
        results.append(run_size(args, c, args.profile and last))
    if not results:
        report.add("No size fits the memory available: " + "; ".join(skipped))
        report.write(C.output_path(args))
        return 1
    rows, sizes, walls, cpus, rests = [], [], [], [], []
    for res in results:
        c, later = res["clients"], [r for r in res["rounds"] if r["round"] > 1] or res["rounds"]
        wall = [r["wall"] for r in later]
        cpu = [r["cpu"] for r in later]
        gram = C.median([r["gram"] for r in later])
        qp = C.median([r["qp"] for r in later])
        sizes.append(c)
        walls.append(C.median(wall))
        cpus.append(C.median(cpu))
        rests.append(C.median(cpu) - gram - qp)
        rows.append((
            c, "sketch + first-order QP" if res["sketched"] else "exact + SLSQP",
            C.spread(wall), C.spread(cpu), f"{res['rounds'][0]['wall']:.3g} s",
            f"{C.median(cpu) / c * 1e3:.1f} ms", f"{gram:.3f} s", f"{qp:.3f} s",
            f"{res['hwm'] / 2**30:.2f} GiB",
            f"{max(r['extra'] for r in later) / 2**20:,.0f} MiB",
            f"{max(r['anon_peak'] for r in later) / 2**30:.2f} GiB / "
            f"{max(r['anon_extra'] for r in later) / 2**20:,.0f} MiB",
            f"{res['load']:.1f}",
        ))  # fmt: skip
    report.table(
        ("clients", "conflict-averse step", "wall, rounds ≥ 2", "CPU, rounds ≥ 2",
         "round 1 wall", "CPU per client", "Gram", "QP", "peak RSS (process)",
         "aggregation's extra memory", "anon peak / aggregation's extra anon",
         "load at end"),
        rows,
    )  # fmt: skip
    if skipped:
        report.add("", "Not run: " + "; ".join(skipped) + ".")
    report.add("")
    for label, series in (("CPU time", cpus), ("wall time", walls),
                          ("CPU time without Gram and QP", rests)):  # fmt: skip
        k = fit_exponent(sizes, series)
        steps = ", ".join(
            f"{series[i + 1] / series[i]:.2f}× for {sizes[i + 1] / sizes[i]:g}× clients"
            for i in range(len(sizes) - 1)
        )
        verdict = "n/a" if math.isnan(k) else ("met" if k <= 1.0 else "MISSED")
        report.add(
            f"- {label}: fitted exponent (time ∝ clients^k, least squares on log-log over "
            f"{sizes[0]}–{sizes[-1]}) **k = {k:.2f}** (target ≤ 1: {verdict}); step ratios: "
            f"{steps or 'n/a'}."
        )
    profile_text = results[-1].get("profile", "")
    if profile_text:
        report.add("", f"cProfile of one aggregate at {sizes[-1]} clients (top by own time):", "")
        report.add("```", *[ln for ln in profile_text.strip().splitlines() if ln.strip()], "```")
    report.write(C.output_path(args))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
