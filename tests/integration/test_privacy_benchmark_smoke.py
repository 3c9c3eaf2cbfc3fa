"""benchmarks/privacy.py runs end to end at tiny size and writes its table and plot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_privacy_benchmark_quick_writes_table_and_plot(tmp_path):
    out = tmp_path / "privacy.md"
    args = ["--quick", "--rows", "600", "--rounds", "1", "--step-repeats", "3"]
    args += ["--out", str(out), "--data-dir", str(tmp_path / "data")]
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "privacy.py"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert "Produced by `python benchmarks/privacy.py --quick" in text
    for eps in ("ε = 1", "ε = 3", "ε = 8", "ε = ∞"):
        assert eps in text
    assert "| concept | pfmsmtrec |" in text and "| concept | fedavg |" in text
    assert "× the plain step" in text
    assert out.with_suffix(".png").stat().st_size > 1000
