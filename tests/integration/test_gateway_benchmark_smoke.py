"""benchmarks/gateway.py --quick runs end to end (real server subprocess) in a few seconds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gateway_benchmark_quick(tmp_path):
    out = tmp_path / "gateway.md"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gateway.py"), "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = out.read_text()
    assert "## small preset, compiled engine" in text
    rows = [line for line in text.splitlines() if line.startswith("| 1 | 1 |")]
    assert rows and rows[0].split("|")[4].strip() == "0"  # no errors at batch 1, c=1
    assert "| 100 | 2 |" in text and "compiled engine p50 / p99 ms" in text
    assert "target ≤ 10 ms" in text
