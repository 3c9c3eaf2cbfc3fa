"""Soak: a long federation under a steady prediction load, with the memory of every process
and the size of the state and registry directories sampled throughout (issue #16).

    python benchmarks/soak.py                         # 100 rounds, 4 clients, small preset
    python benchmarks/soak.py --rounds 12 --rps 5     # a short run (shared machines)

Aggregator, four clients and the gateway run as separate ``msmtrec`` processes on
127.0.0.1 (per-scenario tokens, small preset, small synthetic data); a thread sends
``predict`` requests for every scenario at ``--rps`` per second the whole time (503 before a
scenario's first model is published, 200 after). Every ``--sample-seconds`` the resident
set size (VmRSS) of each process, the completed rounds, and the bytes under the state
directory and the registry are recorded.

What it checks: after the warm-up (the first ``--warmup`` fraction of the rounds), each
process's RSS stays within ±10 % of its value at the end of the warm-up (median of the
samples around each point, so one allocation spike does not decide), and both directories
stop growing once retention applies (checkpoints: ``keep_checkpoints``; registry: the
registry's retention; ``history.json``: ``history_rounds``). Writes a JSON of every sample
(``--json``) and prints a markdown summary; exit 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _common as C

sys.path.insert(0, str(C.REPO / "tests"))
# The repository before this script's own directory: benchmarks/gateway.py would otherwise
# shadow the gateway package that tests/gateway_support.py imports.
sys.path.insert(0, str(C.REPO))

import httpx
from gateway_support import fixture_instances
from helpers.federation import Federation
from helpers.processes import ProcessGroup, free_port, get_json

FLAT = 0.10  # RSS within ±10 % after warm-up


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


class Load(threading.Thread):
    """Steady predict requests (round robin over the scenarios) at ``rps`` per second."""

    def __init__(self, url: str, scenarios: tuple[str, ...], rps: float) -> None:
        super().__init__(name="load", daemon=True)
        self.url, self.scenarios, self.rps = url, scenarios, rps
        self.stop = threading.Event()
        self.codes: dict[int, int] = {}
        self.latencies: list[float] = []
        self.body = {"instances": fixture_instances()[:5]}

    def run(self) -> None:
        i = 0
        with httpx.Client(base_url=self.url, timeout=10) as client:
            next_at = time.monotonic()
            while not self.stop.is_set():
                scenario = self.scenarios[i % len(self.scenarios)]
                start = time.perf_counter()
                try:
                    code = client.post(
                        f"/v1/scenarios/{scenario}/predict", json=self.body
                    ).status_code
                except httpx.HTTPError:
                    code = 0
                if code == 200:
                    self.latencies.append(time.perf_counter() - start)
                self.codes[code] = self.codes.get(code, 0) + 1
                i += 1
                next_at += 1.0 / self.rps
                self.stop.wait(max(0.0, next_at - time.monotonic()))


def soak(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    scenarios = tuple(f"S{i}" for i in range(args.clients))
    fed = Federation.create(
        root, scenarios, train_rows=args.rows, test_rows=max(args.rows // 4, 50)
    )
    registry = root / "registry"
    group = ProcessGroup(root / "logs")
    samples: list[dict[str, Any]] = []
    try:
        agg = group.launch(
            "aggregator",
            fed.aggregator_args(
                rounds=args.rounds, exit_when_done=False, round_deadline_seconds=300,
                start_wait_seconds=300, history_rounds=args.history_rounds,
            ),
        )  # fmt: skip
        clients = [group.launch(s, fed.client_args(s, registry=registry)) for s in scenarios]
        gw_port = free_port()
        gateway = group.launch(
            "gateway",
            [
                "gateway",
                "--registry",
                str(registry),
                "--port",
                str(gw_port),
                "--poll-interval",
                "1",
            ],
        )
        procs = {"aggregator": agg, "gateway": gateway, **{p.name: p for p in clients}}
        registry.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + args.timeout
        gw_url = f"http://127.0.0.1:{gw_port}"
        while True:  # the load starts once the gateway answers (it imports torch first)
            if not gateway.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start:\n{gateway.tail()}")
            try:
                if httpx.get(f"{gw_url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        load = Load(gw_url, scenarios, args.rps)
        load.start()
        start = time.monotonic()
        completed = 0
        while completed < args.rounds:
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {completed} rounds:\n{group.logs()}")
            dead = [n for n, p in procs.items() if not p.alive()]
            if dead:
                raise RuntimeError(f"{dead} exited:\n{group.logs()}")
            try:
                completed = int(get_json(fed.url("/v1/status"), timeout=10)["completed_rounds"])
            except Exception:  # not listening yet
                completed = 0
            samples.append({
                "t": round(time.monotonic() - start, 2),
                "round": completed,
                "rss": {n: rss_bytes(p.pid) for n, p in procs.items()},
                "state_bytes": tree_bytes(fed.state_dir),
                "registry_bytes": tree_bytes(registry),
            })  # fmt: skip
            time.sleep(args.sample_seconds)
        load.stop.set()
        load.join(15)
        for c in clients:
            c.wait(120)
        return {
            "samples": samples,
            "requests": load.codes,
            "p99_ms": 1000 * statistics.quantiles(load.latencies, n=100)[98]
            if len(load.latencies) >= 100
            else None,
            "seconds": round(time.monotonic() - start, 1),
        }
    finally:
        group.stop_all()


def _around(samples: list[dict[str, Any]], round_number: int, key: str, name: str | None) -> float:
    """Median of the samples within ±1 round of ``round_number`` (one spike decides nothing)."""
    near = [s for s in samples if abs(s["round"] - round_number) <= 1]
    values = [s[key][name] if name else s[key] for s in near]
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else float("nan")


def summarize(result: dict[str, Any], args: argparse.Namespace) -> tuple[str, bool]:
    samples = result["samples"]
    warm = max(1, round(args.rounds * args.warmup))
    last = max(s["round"] for s in samples)
    ok = True
    p99 = "n/a" if result["p99_ms"] is None else f"{result['p99_ms']:.0f} ms"
    lines = [
        f"{args.clients} clients + aggregator + gateway, small preset, {args.rows} train rows "
        f"per client, {args.rounds} rounds in {result['seconds']:.0f} s, {len(samples)} "
        f"samples; predict load {args.rps:g} req/s (responses by status "
        f"{dict(sorted(result['requests'].items()))}: 404 until a scenario's first model is "
        f"published; p99 of the 200s {p99})",
        "",
        f"| process | RSS after warm-up (round {warm}) | RSS at the end (round {last}) | change | "
        "within ±10 % |",
        "|---|---|---|---|---|",
    ]
    for name in samples[-1]["rss"]:
        a = _around(samples, warm, "rss", name)
        b = _around(samples, last, "rss", name)
        change = (b - a) / a
        flat = abs(change) <= FLAT
        ok &= flat
        lines.append(
            f"| {name} | {a / 2**20:.0f} MiB | {b / 2**20:.0f} MiB | {change:+.1%} | "
            f"{'yes' if flat else '**no**'} |"
        )
    lines += ["", "| directory | after warm-up | end | growth per round after warm-up |",
              "|---|---|---|---|"]  # fmt: skip
    for key, label in (("state_bytes", "aggregator state"), ("registry_bytes", "registry")):
        a = _around(samples, warm, key, None)
        b = _around(samples, last, key, None)
        per_round = (b - a) / max(1, last - warm)
        lines.append(
            f"| {label} | {a / 1e6:.2f} MB | {b / 1e6:.2f} MB | {per_round / 1e3:+.1f} KB |"
        )
    return "\n".join(lines) + "\n", ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--rows", type=int, default=1000, help="train rows per client")
    p.add_argument("--rps", type=float, default=20.0, help="predict requests per second")
    p.add_argument("--sample-seconds", type=float, default=1.0)
    p.add_argument("--warmup", type=float, default=0.2, help="fraction of rounds to skip")
    p.add_argument("--history-rounds", type=int, default=1000)
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--json", type=Path, default=None, help="write every sample here")
    args = p.parse_args(argv)
    load = C.loadavg()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        result = soak(args, Path(tmp))
    text, ok = summarize(result, args)
    print(f"load average {load:.1f} → {C.loadavg():.1f}\n")
    print(text)
    if args.json is not None:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         **result}, indent=1))  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
