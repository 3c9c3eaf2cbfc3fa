"""A load-generating client process for the gateway load test (standard library only, so that
several of them start in milliseconds and leave the CPU to the server).

    python tests/helpers/loadgen.py --url http://127.0.0.1:8080 --body FILE \\
        --scenarios NL ES --requests 800 --threads 2 --until-change NL --max-seconds 120

Each thread keeps one HTTP/1.1 keep-alive connection and alternates scenarios. It stops after
``--requests`` responses (shared by the threads) and, with ``--until-change S``, not before
each thread saw scenario S answered by a second model version (a model published during the
load), or after ``--max-seconds``. Prints one JSON summary on stdout: counts by status,
errors, the versions each thread saw in order, and latency percentiles.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from urllib.parse import urlparse


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--body", required=True, help="file holding the JSON request body")
    p.add_argument("--scenarios", nargs="+", required=True)
    p.add_argument("--requests", type=int, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--until-change", default=None)
    p.add_argument("--max-seconds", type=float, default=120.0)
    args = p.parse_args()
    body = open(args.body, "rb").read()  # noqa: SIM115 - read once, tiny script
    target = urlparse(args.url)
    lock = threading.Lock()
    done = [0]
    statuses: dict[str, int] = {}
    errors: list[str] = []
    latencies: list[float] = []
    seen: list[list[str]] = [[] for _ in range(args.threads)]  # per thread: NL versions in order
    deadline = time.monotonic() + args.max_seconds

    def worker(k: int) -> None:
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        i = 0
        while time.monotonic() < deadline:
            with lock:
                enough = done[0] >= args.requests
            changed = args.until_change is None or len(set(seen[k])) >= 2
            if enough and changed:
                break
            scenario = args.scenarios[i % len(args.scenarios)]
            i += 1
            start = time.perf_counter()
            try:
                conn.request("POST", f"/v1/scenarios/{scenario}/predict", body,
                             {"content-type": "application/json"})  # fmt: skip
                response = conn.getresponse()
                data = response.read()
                status = response.status
            except Exception as exc:  # a dropped connection is an error, then reconnect
                with lock:
                    errors.append(f"{scenario}: {exc!r}")
                conn.close()
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                continue
            elapsed = time.perf_counter() - start
            version = None
            if status == 200:
                version = json.loads(data)["model_version"]
                if scenario == args.until_change:
                    seen[k].append(version)
            with lock:
                done[0] += 1
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                latencies.append(elapsed)
                if status != 200:
                    errors.append(f"{scenario}: HTTP {status} {data[:200]!r}")
        conn.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0

    print(json.dumps({
        "responses": done[0],
        "statuses": statuses,
        "errors": errors[:20],
        "error_count": len(errors),
        "versions": [_runs(s) for s in seen],
        "p50_ms": round(pct(0.5) * 1000, 2),
        "p99_ms": round(pct(0.99) * 1000, 2),
        "max_ms": round(pct(1.0) * 1000, 2),
    }))  # fmt: skip


def _runs(versions: list[str]) -> list[str]:
    """The distinct versions in the order they were seen, repeats collapsed (v1 v2 = a
    clean switch; v1 v2 v1 = a regression)."""
    out: list[str] = []
    for v in versions:
        if not out or out[-1] != v:
            out.append(v)
    return out


if __name__ == "__main__":
    main()
