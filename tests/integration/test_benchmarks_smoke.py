"""Every performance benchmark (benchmarks/*.py, issue #6) runs end to end at tiny size.

No timing is asserted: only that each script finishes, prints its table with the ratio to its
yardstick, and appends a dated section to the results file it is given (``--quick`` alone
writes nothing). ``msmtrec bench`` lists and runs them by name.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# script → (section title, a column or phrase its table must contain)
CASES = {
    "training.py": ("Local training throughput (benchmark 1)", "÷ textbook"),
    "codec.py": ("Parameter codec (benchmark 2)", "speed ÷ numpy.save"),
    "round_overhead.py": ("Round overhead (benchmark 3)", "transfer + aggregation"),
    "aggregation.py": ("Aggregation scaling (benchmark 4)", "fitted exponent"),
    "data_loading.py": ("Data loading (benchmark 5)", "peak ÷ result"),
}


def _run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_quick_run_appends_its_section(script, tmp_path):
    title, phrase = CASES[script]
    out = tmp_path / "performance.md"
    extra = ["--data-dir", str(tmp_path / "data")] if script == "data_loading.py" else []
    proc = _run([str(REPO / "benchmarks" / script), "--quick", "--out", str(out), *extra])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert text.startswith(f"## {title} — ")
    assert "Machine: " in text and "load average" in text and "threads pinned to" in text
    assert phrase in text
    assert phrase in proc.stdout  # printed as well as written


def test_quick_without_out_writes_nothing(tmp_path):
    results = REPO / "benchmarks" / "results" / "performance.md"
    before = results.read_text() if results.exists() else None
    proc = _run([str(REPO / "benchmarks" / "codec.py"), "--quick"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = results.read_text() if results.exists() else None
    assert after == before


def test_msmtrec_bench_lists_and_runs_by_name(tmp_path):
    proc = _run(["-m", "msmtrec_app.cli", "bench", "--list"])
    assert proc.returncode == 0, proc.stderr
    for name in ("training", "codec", "round", "aggregation", "loading", "gateway"):
        assert name in proc.stdout
    out = tmp_path / "perf.md"
    proc = _run(["-m", "msmtrec_app.cli", "bench", "codec", "--quick", "--out", str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "=== codec: exit 0" in proc.stdout
    assert "Parameter codec (benchmark 2)" in out.read_text()
    proc = _run(["-m", "msmtrec_app.cli", "bench", "nonsense"])
    assert proc.returncode == 2 and "unknown benchmark" in proc.stdout


def test_quality_report_is_rendered_from_its_json_with_plots_and_reading(tmp_path):
    """--report-only rebuilds quality.md and its plots from the committed JSON; a paired
    difference, its seeds-ahead count and a headroom share are recomputed here from the raw
    per-scenario AUCs of the selected rounds and the oracle."""
    import json
    import statistics

    saved = json.loads((REPO / "benchmarks" / "results" / "quality.json").read_text())
    (tmp_path / "quality.json").write_text(json.dumps(saved))
    out = tmp_path / "quality.md"
    proc = _run([str(REPO / "benchmarks" / "quality.py"), "--report-only", "--out", str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    for name in ("quality_paired.png", "quality_learn_from.png", "quality_weights.png"):
        png = tmp_path / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert f"]({name})" in text
    assert "## Reading" in text and saved["meta"]["reading"].strip()[:60] in text
    meta = saved["meta"]
    family = meta["families"][0]

    def macro(r, task):
        return statistics.mean(s["test"][task]["auc"] for s in r["selected"].values())

    runs = {(r["job"]["method"], r["job"]["seed"]): r for r in saved["results"]
            if r["job"]["family"] == family}  # fmt: skip
    diffs = [
        macro(runs["pfmsmtrec", seed], "ctr") - macro(runs["fedavg", seed], "ctr")
        for seed in meta["seeds"]
    ]
    lines = text.split("## Paired differences")[1].splitlines()
    row = next(line for line in lines if line.startswith("| fedavg | "))
    cell = row.split(" | ")[1]
    wins = sum(d > 0 for d in diffs)
    assert cell.startswith(f"{statistics.mean(diffs):+.4f} [")
    assert cell.endswith(f"] {wins}/{len(diffs)}")
    # Headroom share of pfmsmtrec, CTR, first family: (AUC − local) / (oracle − local).
    shares = []
    for seed in meta["seeds"]:
        local, mine = macro(runs["local", seed], "ctr"), macro(runs["pfmsmtrec", seed], "ctr")
        oracle = meta["oracle"][family][str(seed)]["ctr"]
        shares.append((mine - local) / (oracle - local))
    head = text.split("## Share of the local")[1].splitlines()
    row = next(line for line in head if line.startswith("| pfmsmtrec | "))
    assert row.split(" | ")[1].startswith(f"{statistics.mean(shares):.4f}")


def test_quality_benchmark_quick_run(tmp_path):
    """--quick trains every part of the pipeline on tiny data: tuning skipped, two families
    (one held out), the report with the oracle row and the paired table."""
    out = tmp_path / "q" / "quality.md"
    proc = _run(
        [str(REPO / "benchmarks" / "quality.py"), "--quick", "--jobs", "1", "--out", str(out),
         "--data-cache", str(tmp_path / "data")]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert "**Bayes oracle**" in text and "fieldpair" in text
    assert "## Paired differences: pfmsmtrec minus each method" in text
    assert (out.parent / "quality.json").exists()


def _training_benchmark():
    """benchmarks/training.py as a module (its directory holds the _common it imports)."""
    import importlib

    bench_dir = str(REPO / "benchmarks")
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)
    return importlib.import_module("training")


def test_textbook_mmoe_yardstick_is_the_none_template_model_written_apart():
    """The issue #11 yardstick has the project's sizes: loaded with the weights (and batch-norm
    statistics) of the ``none``-template model it computes the same logits, so a speed ratio
    against it compares implementations of one function, not two models."""
    import torch

    from msmtrec.data.schema import ALIEXPRESS
    from msmtrec.model import build_model, preset

    training = _training_benchmark()
    cfg = preset("small", template="none")
    ours = build_model(ALIEXPRESS, cfg, seed=3).eval()
    book = training.textbook_model(preset("small"), seed=4).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-trivial running statistics, so each slice must land right
        for norm in [
            *ours.experts.norms,
            *(b.norm for t in ours.towers.values() for b in t.layers),
        ]:
            norm.running_mean.normal_(0, 0.5, generator=gen)
            norm.running_var.uniform_(0.5, 2.0, generator=gen)
            norm.weight.normal_(1, 0.2, generator=gen)
            norm.bias.normal_(0, 0.2, generator=gen)
    assert sum(p.numel() for p in book.parameters()) == sum(p.numel() for p in ours.parameters())

    state = {}
    rows = ours.embedding.weight.detach().split(list(ALIEXPRESS.table_sizes))
    for i, w in enumerate(rows):
        state[f"embeddings.{i}.weight"] = w
    state["numerical.weight"], state["numerical.bias"] = ours.numerical.weight, ours.numerical.bias
    for layer_i, (layer, norm) in enumerate(
        zip(ours.experts.layers, ours.experts.norms, strict=True)
    ):
        out = layer.out_dim
        for k in range(cfg.num_experts):
            lin, bn = f"experts.{k}.{4 * layer_i}", f"experts.{k}.{4 * layer_i + 1}"
            state[f"{lin}.weight"], state[f"{lin}.bias"] = layer.weight_g[k], layer.bias_g[k]
            for field in ("weight", "bias", "running_mean", "running_var"):
                state[f"{bn}.{field}"] = getattr(norm, field)[k * out : (k + 1) * out]
            state[f"{bn}.num_batches_tracked"] = norm.num_batches_tracked
    for t, name in enumerate(ALIEXPRESS.tasks):
        state[f"gates.{t}.0.weight"] = ours.gates[name].weight
        state[f"gates.{t}.0.bias"] = ours.gates[name].bias
        tower = ours.towers[name]
        for j, block in enumerate(tower.layers):
            for field in ("weight", "bias"):
                state[f"towers.{t}.{4 * j}.{field}"] = getattr(block.linear, field)
            for field in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                state[f"towers.{t}.{4 * j + 1}.{field}"] = getattr(block.norm, field)
        head = 4 * len(tower.layers)
        state[f"towers.{t}.{head}.weight"] = tower.head.weight
        state[f"towers.{t}.{head}.bias"] = tower.head.bias
    book.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)

    data = training.random_rows(64, seed=5)
    cat, num = torch.from_numpy(data.categorical), torch.from_numpy(data.numerical)
    with torch.no_grad():
        expected, got = ours(cat, num), book(cat, num)
    assert got.shape == (64, 2)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_training_benchmark_rows_flag():
    training = _training_benchmark()
    assert training.parse_rows(["paper=1024"], quick=False) == {"small": 65_536, "paper": 1_024}
    assert training.parse_rows(["300"], quick=True) == {"small": 300, "paper": 300}
    for bad in (["tiny=5"], ["paper=x"], ["1"]):
        with pytest.raises(SystemExit, match="--rows"):
            training.parse_rows(bad, quick=False)


def test_data_loading_stream_quick_run(tmp_path):
    """The out-of-core mode (issue 12): its own section, both tables, its temp file removed."""
    out = tmp_path / "performance.md"
    script = str(REPO / "benchmarks" / "data_loading.py")
    work = tmp_path / "work"
    work.mkdir()
    proc = _run([script, "--stream", "--quick", "--out", str(out), "--tmp-dir", str(work)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("## Out-of-core training data (issue 12) — ")
    assert "peak RSS MiB" in text and "÷ in-memory" in text
    assert not any(work.iterdir())  # the generated file went with its temporary directory
