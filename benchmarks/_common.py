"""Plumbing shared by the performance benchmarks (issue #6): machine description, thread
pinning, interleaved timing, memory peaks measured in fresh processes, the results file.

Why it is built this way: the development machines are shared (load averages of 5-8 on two
cores are common), so absolute times drift by 2x between minutes. What holds is the ratio of
a measured path to its yardstick *taken in the same run*: every benchmark alternates the
candidates (A B A B …, rotating which goes first) and reports medians and the ratio of
medians, with the load average at start and end next to the figures.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# What msmtrec/__init__.py sets for every msmtrec process, set here too so that it holds
# before any benchmark imports torch (OpenMP reads it once, when torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
RESULTS = REPO / "benchmarks" / "results" / "performance.md"
APPENDIX = "\n# Appendix"


# ------------------------------------------------------------------------------ machine


def loadavg() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def machine() -> dict[str, Any]:
    """Cores, memory, CPU model and library versions: what a reader needs to compare runs."""
    cpu = platform.processor() or "unknown CPU"
    mem_gib = float("nan")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_gib = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except OSError:
        pass
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "load_start": round(loadavg(), 2),
    }
    try:
        import numpy
        import torch

        info["torch"] = torch.__version__
        info["numpy"] = numpy.__version__
        if torch.cuda.is_available():  # the accelerator a GPU run used (issue #17)
            info["gpu"] = f"{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}"
    except ImportError:  # pragma: no cover - the project always has both
        pass
    return info


def pin_threads(threads: int) -> int:
    """Pin torch's intra-op threads (and BLAS/OpenMP for any child process) explicitly: the
    default, one per core, oversubscribes a machine that other jobs already load."""
    import torch

    torch.set_num_threads(threads)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    return torch.get_num_threads()


# ------------------------------------------------------------------------------ timing


def interleave(
    candidates: Mapping[str, Callable[[], float | None]],
    repeats: int,
    *,
    max_seconds: float = float("inf"),
    min_repeats: int = 1,
) -> dict[str, list[float]]:
    """Run every candidate once per repeat, rotating the order (ABC, BCA, CAB, …), so that a
    burst of load from other processes hits all candidates alike. A candidate returns its own
    measured seconds (to exclude its set-up) or None to be timed whole. Stops after
    ``max_seconds`` once ``min_repeats`` rounds are done."""
    names = list(candidates)
    out: dict[str, list[float]] = {n: [] for n in names}
    stop = time.perf_counter() + max_seconds
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            measured = candidates[n]()
            out[n].append(measured if measured is not None else time.perf_counter() - t0)
        if r + 1 >= min_repeats and time.perf_counter() > stop:
            break
    return out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def spread(xs: Sequence[float]) -> str:
    """'median (min–max, n)' for a list of seconds, in ms or s."""
    if not xs:
        return "n/a"
    unit, k = ("ms", 1e3) if max(xs) < 1 else ("s", 1.0)
    return f"{median(xs) * k:.3g} {unit} ({min(xs) * k:.3g}–{max(xs) * k:.3g}, n={len(xs)})"


# ------------------------------------------------------------------------------ memory


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM (Linux ≥ 4.0: write 5 to /proc/self/clear_refs), so a peak
    measured afterwards excludes the imports. False when unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def anon_bytes() -> int:
    """RssAnon: resident memory not backed by a file (what the kernel cannot evict here)."""
    return _status_kib("RssAnon") * 1024


def peak_rss_bytes() -> int:
    """VmHWM: the resident-set high-water mark (since start or the last reset)."""
    try:
        return _status_kib("VmHWM") * 1024
    except (OSError, KeyError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(script: Path, args: Sequence[str], timeout: float = 1800.0) -> dict[str, Any]:
    """Run ``script`` in a fresh interpreter and return the JSON object it prints last: how
    memory peaks are measured, never in a process that did other work first."""
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    last = [line for line in proc.stdout.splitlines() if line.startswith("{")][-1]
    return json.loads(last)


# ------------------------------------------------------------------------------ report


class Report:
    """Collects a benchmark's lines, prints them and appends them as a dated section (with
    the command, the machine and the load average) to the results file."""

    def __init__(self, title: str, script: str, argv: Sequence[str] | None, threads: int) -> None:
        args = list(sys.argv[1:] if argv is None else argv)
        self.title = title
        self.command = " ".join(["python", f"benchmarks/{script}", *args]).strip()
        self.machine = machine()
        self.threads = threads
        self.lines: list[str] = []
        self.started = time.perf_counter()
        m = self.machine
        print(
            f"{title}: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, load "
            f"{m['load_start']}, torch threads {threads}",
            flush=True,
        )

    def add(self, *lines: str) -> None:
        for line in lines:
            print(line, flush=True)
            self.lines.append(line)

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        align = ["---" if i == 0 else "---:" for i in range(len(header))]
        self.add(
            "| " + " | ".join(header) + " |",
            "|" + "|".join(align) + "|",
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
        )

    def section(self) -> str:
        m = self.machine
        when = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
        seconds = time.perf_counter() - self.started
        head = [
            f"## {self.title} — {when}",
            "",
            f"`{self.command}`",
            "",
            f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB RAM, Python "
            f"{m['python']}, torch {m.get('torch', '?')}, numpy {m.get('numpy', '?')}; torch "
            f"threads pinned to {self.threads}; load average {m['load_start']} at start, "
            f"{loadavg():.2f} at end (shared machine: other jobs use the same cores); "
            f"{seconds:.0f} s." + (f" GPU: {m['gpu']}." if m.get("gpu") else ""),
            "",
        ]
        return "\n".join([*head, *self.lines, "", ""])

    def write(self, out: Path | None) -> None:
        if out is None:
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        text = out.read_text() if out.exists() else ""
        cut = text.find(APPENDIX)
        if cut < 0:  # a new run goes at the end ...
            with open(out, "a") as f:
                f.write(self.section())
        else:  # ... or before the appendix of before-measurements, if the file has one
            out.write_text(text[:cut].rstrip("\n") + "\n\n" + self.section() + text[cut:])
        print(f"appended to {out}")


def add_common_flags(parser: Any, threads: int = 2) -> None:
    parser.add_argument("--threads", type=int, default=threads, help="torch intra-op threads")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, a few seconds; writes nothing"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"results file to append to (default {RESULTS.relative_to(REPO)}, not with --quick)",
    )


def output_path(args: Any) -> Path | None:
    if args.out is not None:
        return args.out
    return None if args.quick else RESULTS
