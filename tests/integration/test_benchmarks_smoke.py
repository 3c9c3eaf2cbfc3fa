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
    "training.py": ("Local training throughput (benchmark 1)", "÷ plain"),
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


def test_quality_report_is_rendered_from_its_json_with_plot_and_reading(tmp_path):
    """--report-only rebuilds quality.md (and the paired plot) from the committed JSON; the
    paired differences are recomputed here from the raw per-scenario AUCs."""
    import json
    import statistics

    saved = json.loads((REPO / "benchmarks" / "results" / "quality.json").read_text())
    (tmp_path / "quality.json").write_text(json.dumps(saved))
    out = tmp_path / "quality.md"
    proc = _run([str(REPO / "benchmarks" / "quality.py"), "--report-only", "--out", str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    png = tmp_path / "quality.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "![pfmsmtrec minus each method, by shift and task](quality.png)" in text
    assert "## Reading" in text and saved["meta"]["reading"].strip()[:60] in text

    def macro(r, task):
        return statistics.mean(s[task]["auc"] for s in r["test"].values())

    runs = {(r["method"], r["shift"], r["seed"]): r for r in saved["results"]}
    diffs = [
        macro(runs["pfmsmtrec", "high", seed], "ctr") - macro(runs["fedavg", "high", seed], "ctr")
        for seed in saved["meta"]["seeds"]
    ]
    row = next(line for line in text.splitlines() if line.startswith("| fedavg | +") or
               line.startswith("| fedavg | -"))  # fmt: skip
    wins = sum(d > 0 for d in diffs)
    expected = f"{statistics.mean(diffs):+.4f} ± {statistics.stdev(diffs):.4f} ({wins}/3)"
    assert row.split(" | ")[3] == expected, row
