"""Gateway latency and throughput over real HTTP on 127.0.0.1, next to the bare model forward.

    .venv/bin/python benchmarks/gateway.py --preset small
    .venv/bin/python benchmarks/gateway.py --preset paper --requests 1000 --concurrency 1 4 16

What it does:

1. Publishes an untrained model of the preset to a temporary registry (latency does not
   depend on the weights' values) for one scenario.
2. Starts ``msmtrec gateway`` as a subprocess on a free 127.0.0.1 port and waits for /readyz.
3. Drives it with a bounded closed-loop load: ``concurrency`` worker threads, each with one
   persistent HTTP/1.1 connection, sending pre-encoded request bytes over a raw socket and
   reading the response by Content-Length. A raw socket keeps the load generator's CPU share
   small (it shares the machine's cores with the server); its CPU time per request is
   reported so the reader can judge. Request bodies are the real AliExpress fixture rows:
   1 instance, and 100 instances.
4. Times the bare forward on the same inputs in this process with the server idle: the
   published eager module (``MultiTaskMMoE.forward``) and the gateway's compiled engine, with
   the server's thread count. The ratio HTTP p50 / compiled-forward p50 is the gateway's
   overhead (parse, HTTP, JSON); eager / compiled is what load-time folding saves.
5. Prints a table and appends it, with the command, machine and date, to
   ``benchmarks/results/gateway.md`` (``--out``).

Every loop is bounded by ``--requests`` and by ``--max-seconds`` per run.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.engine import CompiledMMoE  # noqa: E402
from msmtrec.data.schema import ALIEXPRESS  # noqa: E402
from msmtrec.model import build_model, preset  # noqa: E402
from msmtrec.registry import ModelRegistry  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "aliexpress_sample" / "train.csv"
TARGETS_MS = {("small", 1): 10.0, ("small", 100): 10.0, ("paper", 1): 10.0, ("paper", 100): 30.0}
SCENARIO = "NL"


# ------------------------------------------------------------------------------ inputs


def fixture_instances(n: int) -> list[dict]:
    with open(FIXTURE, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for i in range(n):
        row = rows[i % len(rows)]
        inst = {c: int(float(row[c])) for c in ALIEXPRESS.categorical}
        inst.update({c: float(row[c]) for c in ALIEXPRESS.numerical})
        out.append(inst)
    return out


def tensors(instances: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    vocab = ALIEXPRESS.vocab_sizes
    cat = torch.tensor(
        [[min(inst[c], v) for c, v in zip(ALIEXPRESS.categorical, vocab, strict=True)]
         for inst in instances]
    )  # fmt: skip
    num = torch.tensor([[inst[c] for c in ALIEXPRESS.numerical] for inst in instances])
    return cat, num.float()


def http_request(port: int, body: bytes) -> bytes:
    head = (
        f"POST /v1/scenarios/{SCENARIO}/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# ------------------------------------------------------------------------------ client


class Connection:
    """One keep-alive HTTP/1.1 connection that sends fixed bytes and reads one response."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def roundtrip(self, request: bytes) -> tuple[int, bytes]:
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            self.buf = rest
            self._fill()
            rest = self.buf
        self.buf = rest[length:]
        return status, rest[:length]

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


@dataclass
class RunResult:
    batch: int
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: np.ndarray
    client_cpu_ms_per_request: float

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        return (
            float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")
        )


def drive(port: int, request: bytes, batch: int, concurrency: int, total: int,
          max_seconds: float, warmup: int = 20) -> RunResult:  # fmt: skip
    """Closed loop: each worker sends its share back to back over its own connection."""
    per_worker = max(1, total // concurrency)
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    barrier = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def worker(i: int) -> None:
        conn = Connection(port)
        try:
            for _ in range(warmup):
                conn.roundtrip(request)
            barrier.wait(60)
            out = lat[i]
            for _ in range(per_worker):
                t0 = time.perf_counter()
                status, _ = conn.roundtrip(request)
                out.append(time.perf_counter() - t0)
                if status != 200:
                    errors[i] += 1
                if t0 > deadline[0]:
                    break
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + max_seconds + 60
    barrier.wait(60)
    deadline[0] = time.perf_counter() + max_seconds
    cpu0, t0 = time.process_time(), time.perf_counter()
    for t in threads:
        t.join(max_seconds + 120)
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    all_lat = np.array([x for xs in lat for x in xs]) * 1e3
    n = len(all_lat)
    return RunResult(batch, concurrency, n, sum(errors), seconds, all_lat, cpu * 1e3 / max(n, 1))


# ------------------------------------------------------------------------------ forward


def time_forward(fn, cat, num, iters: int, max_seconds: float) -> np.ndarray:
    with torch.inference_mode():
        for _ in range(5):
            fn(cat, num)
        out = []
        stop = time.perf_counter() + max_seconds
        for _ in range(iters):
            t0 = time.perf_counter()
            fn(cat, num)
            out.append(time.perf_counter() - t0)
            if t0 > stop:
                break
    return np.array(out) * 1e3


# ------------------------------------------------------------------------------ server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gateway(
    registry: Path, port: int, threads: int, workers: int, engine: str, device: str = "cpu"
):
    cmd = [
        sys.executable, "-m", "msmtrec_app.cli", "gateway", "--registry", str(registry),
        "--host", "127.0.0.1", "--port", str(port), "--threads", str(threads),
        "--workers", str(workers), "--engine", engine, "--log-level", "warning",
        "--max-batch", "1000", "--device", device,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            conn = Connection(port)
            status, _ = conn.roundtrip(
                f"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
            )
            conn.close()
            if status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("gateway not ready within 180 s")


def server_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------ report


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except OSError:
        mem = float("nan")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem:.1f} GiB RAM, Python {platform.python_version()}, "
        f"torch {torch.__version__}, load average at start {load:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=("small", "paper"), default="small")
    p.add_argument("--requests", type=int, default=1000, help="per (batch size, concurrency)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 100])
    p.add_argument("--threads", type=int, default=1, help="server torch threads")
    p.add_argument("--workers", type=int, default=2, help="server inference threads")
    p.add_argument("--engine", choices=("compiled", "eager"), default="compiled")
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="scheduling niceness of this process (load generator, bare forward) and of the "
        "server, e.g. -10 (needs root): approximates dedicated cores when other jobs share "
        "the machine; reported in the results",
    )
    p.add_argument("--max-seconds", type=float, default=60.0, help="cap per run")
    p.add_argument(
        "--device", default="cpu", help="the server's engine device: cpu, cuda, cuda:N (cpu)"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: few requests, c=1,2")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gateway.md")
    p.add_argument("--json", type=Path, default=None, help="also write raw figures as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.concurrency, args.max_seconds = 40, [1, 2], 10.0
    command = "python benchmarks/gateway.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    header = machine()
    print(header)
    if args.nice:
        os.nice(args.nice)  # inherited by the server subprocess

    torch.set_num_threads(args.threads)
    model = build_model(ALIEXPRESS, preset(args.preset), seed=0).eval()
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
        registry = Path(tmp)
        ModelRegistry(registry).publish(SCENARIO, model, round=0, extra={"source": "benchmark"})
        served = ModelRegistry(registry).load(SCENARIO).model
        compiled = CompiledMMoE(served)

        # Bare forward first, while no server competes for the cores.
        forward: dict[int, dict[str, np.ndarray]] = {}
        for b in args.batches:
            cat, num = tensors(fixture_instances(b))
            iters = 200 if args.quick else 1000
            eager_iters = iters // 20 if args.preset == "paper" else iters  # ~0.1-0.2 s each
            forward[b] = {
                "eager": time_forward(served, cat, num, eager_iters, args.max_seconds / 2),
                "compiled": time_forward(compiled, cat, num, iters, args.max_seconds / 2),
            }
        del served, compiled

        port = free_port()
        proc = start_gateway(registry, port, args.threads, args.workers, args.engine, args.device)
        runs: list[RunResult] = []
        try:
            cpu_server = {}
            for b in args.batches:
                request = http_request(port, orjson.dumps({"instances": fixture_instances(b)}))
                for c in args.concurrency:
                    s0 = server_cpu_seconds(proc.pid)
                    r = drive(port, request, b, c, args.requests, args.max_seconds)
                    cpu_server[(b, c)] = (
                        (server_cpu_seconds(proc.pid) - s0) * 1e3 / max(r.requests, 1)
                    )
                    runs.append(r)
                    print(
                        f"batch {b:>3} c={c:>2}: p50 {r.pct(50):7.2f} ms  p99 {r.pct(99):7.2f} ms"
                        f"  {r.throughput:8.1f} req/s  {r.throughput * b:9.0f} inst/s  "
                        f"errors {r.errors}  client CPU {r.client_cpu_ms_per_request:.2f} ms/req"
                    )
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    when = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"## {args.preset} preset, {args.engine} engine on {args.device} — {when}",
        "",
        f"`{command}`",
        "",
        f"Machine: {header}, at end {load_end:.2f} (other processes share the 2 cores; "
        "a load average above ~1 means the figures include their interference). "
        + ("" if not args.nice else f"Server and load generator at niceness {args.nice}. ")
        + f"Server: `msmtrec gateway --threads {args.threads} "
        f"--workers {args.workers}`; load generator: {max(args.concurrency)} threads max in "
        "a separate process, raw-socket keep-alive HTTP/1.1, sharing the same cores.",
        "",
        "| batch | concurrency | requests | errors | p50 ms | p99 ms | req/s | instances/s "
        "| server CPU ms/req | client CPU ms/req |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r.batch} | {r.concurrency} | {r.requests} | {r.errors} | {r.pct(50):.2f} | "
            f"{r.pct(99):.2f} | {r.throughput:.0f} | {r.throughput * r.batch:.0f} | "
            f"{cpu_server[(r.batch, r.concurrency)]:.2f} | {r.client_cpu_ms_per_request:.2f} |"
        )
    lines += [
        "",
        f"Bare forward in-process, {args.threads} torch thread(s), same rows:",
        "",
        "| batch | eager module p50 / p99 ms | compiled engine p50 / p99 ms "
        "| HTTP c=1 p50 / compiled p50 | eager p50 / compiled p50 |",
        "|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for b in args.batches:
        e, c = forward[b]["eager"], forward[b]["compiled"]
        one = next((r for r in runs if r.batch == b and r.concurrency == 1), None)
        ratio = f"{one.pct(50) / np.percentile(c, 50):.1f}×" if one else "n/a"
        lines.append(
            f"| {b} | {np.percentile(e, 50):.3f} / {np.percentile(e, 99):.3f} | "
            f"{np.percentile(c, 50):.3f} / {np.percentile(c, 99):.3f} | {ratio} | "
            f"{np.percentile(e, 50) / np.percentile(c, 50):.1f}× |"
        )
        target = TARGETS_MS.get((args.preset, b))
        if one is not None and target is not None:
            ok = one.pct(99) <= target
            verdicts.append(
                f"- batch {b}, concurrency 1: p99 {one.pct(99):.2f} ms vs target ≤ {target:g} ms "
                f"→ **{'met' if ok else 'MISSED'}**"
            )
    lines += ["", "Targets (unloaded latency, concurrency 1):", "", *verdicts, "", ""]
    text = "\n".join(lines)
    print()
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(text)
    if args.json:
        args.json.write_text(json.dumps({
            "preset": args.preset,
            "runs": [{"batch": r.batch, "concurrency": r.concurrency, "requests": r.requests,
                      "errors": r.errors, "p50_ms": r.pct(50), "p99_ms": r.pct(99),
                      "rps": r.throughput} for r in runs],
        }, indent=2))  # fmt: skip
    return 1 if any(r.errors for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
