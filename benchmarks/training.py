"""Local training throughput: the project's Trainer vs a plain PyTorch loop (benchmark 1).

    python benchmarks/training.py                     # small and paper presets, 2 threads
    python benchmarks/training.py --presets paper --repeats 5

For each preset, one local epoch over the same rows, alternated (A B C, B C A, …):

* **plain** (the yardstick): the loop a user would write, in this file — the same model
  (``build_model``, default ``additive3`` template), ``torch.optim.Adam(model.parameters(),
  lr, weight_decay)`` made fresh per epoch like the Trainer's, and the *same batches* (the
  Trainer's seeded permutation), gathered into tensors *before* the clock starts: data
  handling costs the yardstick nothing.
* **trainer**: ``Trainer.fit`` with the same objective (no regularizer); its batch gathering
  is inside the clock, so the ratio shows whether data handling is a bottleneck.
* **trainer, pfmsmtrec round**: ``Trainer.fit`` as a pfmsmtrec client runs it: the proximal
  term μ anchored at the round's start on W_G, W_S and the towers, and the template
  shrinkage λ on W_S and W_T — the real local round, a larger objective than the yardstick's.
* **plain, fused Adam**: the yardstick with ``torch.optim.Adam(..., fused=True)``, to show how
  much of the Trainer's lead is the optimizer kernel (for information; not the target).

Every candidate starts from the same weights. Target (issue #6): trainer ≥ 0.90 × plain.
Also reported: the one-off cost of the first optimizer of a process (torch.optim.Adam's first
construction imports torch._dynamo), measured in fresh interpreters.
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys

import _common as C
import numpy as np
import torch
import torch.nn.functional as F

from msmtrec.data.dataset import ScenarioData
from msmtrec.data.schema import ALIEXPRESS
from msmtrec.federation.config import resolve_method
from msmtrec.federation.groups import Group, classify
from msmtrec.model import build_model, preset
from msmtrec.model.mmoe import count_parameters
from msmtrec.training.trainer import TrainConfig, Trainer

TARGET = 0.90
ROWS = {"small": 65_536, "paper": 4_096}
QUICK_ROWS = {"small": 2_048, "paper": 512}


def random_rows(n: int, seed: int = 0) -> ScenarioData:
    """AliExpress-schema rows (values do not change dense compute, only shapes do)."""
    rng = np.random.default_rng(seed)
    cat = np.stack([rng.integers(0, v + 1, n) for v in ALIEXPRESS.vocab_sizes], 1).astype(np.int16)
    num = rng.random((n, ALIEXPRESS.num_numerical), dtype=np.float32)
    lab = np.zeros((n, 2), dtype=np.uint8)
    lab[:, 0] = rng.random(n) < 0.05
    lab[:, 1] = lab[:, 0] & (rng.random(n) < 0.2)
    return ScenarioData(cat, num, lab)


def plain_epoch(
    model: torch.nn.Module,
    batches: list[tuple[torch.Tensor, ...]],
    cfg: TrainConfig,
    fused: bool = False,
) -> None:
    """The yardstick: a textbook PyTorch loop over pre-gathered batches."""
    model.train()
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None
    )
    for cat, num, y in batches:
        loss = F.binary_cross_entropy_with_logits(model(cat, num), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def same_batches(data: ScenarioData, seed: int, cfg: TrainConfig) -> list[tuple[torch.Tensor, ...]]:
    """The Trainer's batches for ``seed`` (same generator, same permutation, same rule for a
    trailing single row), gathered up front."""
    cat = torch.from_numpy(data.categorical)
    num = torch.from_numpy(data.numerical)
    lab = torch.from_numpy(data.labels)
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    out = []
    for lo in range(0, len(data), cfg.batch_size):
        idx = perm[lo : lo + cfg.batch_size]
        if len(idx) >= 2:
            out.append((cat[idx].clone(), num[idx].clone(), lab[idx].float()))
    return out


def first_optimizer_seconds() -> dict[str, float]:
    """Seconds of the first optimizer construction + step in a fresh interpreter."""
    code = (
        "import time, torch\n"
        "from msmtrec.training.trainer import make_optimizer\n"
        "p = [torch.nn.Parameter(torch.zeros(4))]\n"
        "t = time.perf_counter(); o = {ctor}; p[0].grad = torch.ones(4); o.step()\n"
        "print(time.perf_counter() - t)\n"
    )
    out = {}
    for name, ctor in (
        ("torch.optim.Adam", "torch.optim.Adam(p)"),
        ("Trainer's optimizer", "make_optimizer(p, lr=1e-3, weight_decay=0.0)"),
    ):
        try:
            r = subprocess.run(
                [sys.executable, "-c", code.format(ctor=ctor)],
                cwd=C.REPO, capture_output=True, text=True, timeout=300, check=True,
            )  # fmt: skip
            out[name] = float(r.stdout.strip().splitlines()[-1])
        except (subprocess.CalledProcessError, ValueError, IndexError):
            out[name] = float("nan")
    return out


def verdict(candidate: str, ratio: float) -> str:
    if candidate == "plain":
        return "yardstick"
    if candidate.startswith("plain"):
        return "(reference)"
    return "met" if ratio >= TARGET else "MISSED"


def bench_preset(name: str, rows: int, repeats: int, report: C.Report, max_seconds: float) -> dict:
    cfg = TrainConfig()
    model = build_model(ALIEXPRESS, preset(name), seed=0)
    initial = copy.deepcopy(model.state_dict())
    data = random_rows(rows)
    trainer = Trainer(model, cfg)
    fed = resolve_method("pfmsmtrec")
    state = model.state_dict()
    sent_names = fed.parameter_groups().sent_names(state)
    anchor = {n: t.detach().clone() for n, t in state.items() if n in sent_names}
    lam = fed.template_l2  # the client's shrinkage rule (msmtrec.federation.client)
    shrink = {n: lam for n in state if lam > 0 and classify(n) in (Group.SCENARIO, Group.TASK)}
    batches = same_batches(data, seed=1, cfg=cfg)

    def reset() -> None:
        model.load_state_dict(initial)

    def run_plain() -> float:
        reset()
        t0 = C.time.perf_counter()
        plain_epoch(model, batches, cfg)
        return C.time.perf_counter() - t0

    def run_plain_fused() -> float:
        reset()
        t0 = C.time.perf_counter()
        plain_epoch(model, batches, cfg, fused=True)
        return C.time.perf_counter() - t0

    def run_trainer() -> float:
        reset()
        return trainer.fit(data, seed=1).seconds

    def run_round() -> float:
        reset()
        return trainer.fit(data, seed=1, anchor=anchor, mu=fed.mu, shrink=shrink).seconds

    # Warm-up: first optimizer (torch._dynamo import), allocator, BLAS.
    run_plain()
    run_trainer()
    times = C.interleave(
        {
            "plain": run_plain,
            "trainer": run_trainer,
            "trainer, pfmsmtrec round": run_round,
            "plain, fused Adam": run_plain_fused,
        },
        repeats,
        max_seconds=max_seconds,
        min_repeats=min(repeats, 2),
    )
    base = C.median(times["plain"])
    rows_out = []
    result = {"preset": name, "rows": rows, "params": count_parameters(model)}
    for cand, ts in times.items():
        rate = rows / C.median(ts)
        ratio = base / C.median(ts)
        result[cand] = {"samples_per_s": rate, "ratio": ratio, "seconds": ts}
        rows_out.append(
            (cand, f"{rate:,.0f}", C.spread(ts), f"{ratio:.3f}",
             verdict(cand, ratio)),
        )  # fmt: skip
    report.add(
        "",
        f"**{name}** preset ({count_parameters(model) / 1e6:.2f} M parameters, template "
        f"additive3), {rows:,} rows = {len(batches)} batches of {cfg.batch_size}, one epoch "
        f"per run; pfmsmtrec round: μ = {fed.mu:g}, λ = {fed.template_l2:g}:",
        "",
    )
    report.table(
        ("candidate", "samples/s", "epoch time median (min–max, n)", "÷ plain", "≥ 0.90"),
        rows_out,
    )
    return result


def profile_step(preset_name: str, steps: int, report: C.Report) -> None:
    """torch profiler over ``steps`` steps of the plain loop (batch 512, the Trainer's
    optimizer), aten ops grouped by their role in the step."""
    from torch.profiler import ProfilerActivity, profile

    from msmtrec.training.trainer import make_optimizer

    cfg = TrainConfig()
    model = build_model(ALIEXPRESS, preset(preset_name), seed=0).train()
    (cat, num, y), *_ = same_batches(random_rows(cfg.batch_size), 0, cfg)
    opt = make_optimizer(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def step() -> None:
        loss = F.binary_cross_entropy_with_logits(model(cat, num), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    first = model.experts.layers[0]
    big = f"{first.in_dim}"  # the first expert layer's input width marks its weight tensors
    groups: dict[str, float] = {}
    total = 0.0
    for e in prof.key_averages(group_by_input_shape=True):
        ms = e.self_cpu_time_total / 1e3 / steps
        total += ms
        name, shapes = e.key, str(e.input_shapes)
        if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"):
            key = "matmuls (fwd + bwd)"
        elif "adam" in name.lower() or name == "aten::_foreach_add_":
            key = "optimizer"
        elif name == "aten::bernoulli_":
            key = "dropout masks"
        elif big in shapes and name in ("aten::add", "aten::copy_", "aten::fill_", "aten::sum"):
            key = "template sum W_G + W_S + W_T (fwd + bwd)"
        elif "batch_norm" in name:
            key = "batch norm (fwd + bwd)"
        else:
            key = "other (elementwise, dropout apply, embeddings, towers, …)"
        groups[key] = groups.get(key, 0.0) + ms
    report.add(
        "",
        f"Profile of one `{preset_name}` step (torch profiler, {steps} steps, batch "
        f"{cfg.batch_size}, plain loop with the Trainer's optimizer): {total:.0f} ms per step",
        "",
    )
    report.table(
        ("part", "ms per step", "share"),
        [(k, f"{v:.0f}", f"{v / total * 100:.1f} %")
         for k, v in sorted(groups.items(), key=lambda kv: -kv[1])],
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", choices=("small", "paper"), default=["small", "paper"])
    p.add_argument("--rows", type=int, default=None, help="rows per epoch (default per preset)")
    p.add_argument("--repeats", type=int, default=5, help="alternated rounds (A B C) per preset")
    p.add_argument("--max-seconds", type=float, default=600.0, help="cap per preset")
    p.add_argument(
        "--profile", action="store_true", help="also profile one step per preset (torch profiler)"
    )
    C.add_common_flags(p)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.max_seconds = 2, 30.0
    threads = C.pin_threads(args.threads)
    report = C.Report("Local training throughput (benchmark 1)", "training.py", argv, threads)
    report.add(
        "Trainer.fit vs a plain PyTorch loop (fresh Adam per epoch, same model, same batches "
        "gathered before the clock starts, same threads); target: trainer ≥ 0.90 × plain.",
    )
    for name in args.presets:
        rows = args.rows or (QUICK_ROWS if args.quick else ROWS)[name]
        bench_preset(name, rows, args.repeats, report, args.max_seconds)
        if args.profile:
            profile_step(name, 2 if args.quick else 5, report)
    if not args.quick:
        cold = first_optimizer_seconds()
        report.add(
            "",
            "First optimizer of a fresh process (construction + one step): "
            + ", ".join(f"{k} {v:.2f} s" for k, v in cold.items())
            + ".",
        )
    report.write(C.output_path(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
