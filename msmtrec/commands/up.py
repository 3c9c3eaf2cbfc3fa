"""``msmtrec up``: the whole deployment as local processes, on synthetic data by default.

What a fresh machine sees first (``./dev run``): an aggregator, one scenario client process
per scenario and the prediction gateway, started on 127.0.0.1 exactly as the containers start
them (the same ``msmtrec aggregator|client|gateway`` commands, tokens required, optional TLS),
per-round progress, then one example prediction per scenario from the gateway and the URLs
of the status API and the gateway. It keeps serving until Ctrl-C, or exits once training is
done with ``--exit-after-training``.

How it stays well-behaved:

* every child runs in its own session (process group), so Ctrl-C reaches ``up`` only and ``up``
  stops the children in order (gateway, clients, aggregator): SIGTERM to the group, SIGKILL
  after a grace period. A ``finally`` block and an ``atexit`` hook both run that cleanup, and
  each child also gets ``PR_SET_PDEATHSIG`` so it is terminated even if ``up`` is SIGKILLed;
* every wait is bounded (start-up, each round, the gateway) and a failure names the process,
  says what it was waiting for and prints the tail of that process's log;
* each ``up`` starts a fresh federation in the run directory (aggregator state, client state,
  registry and logs are replaced; data and tokens are kept), so a second run never resumes a
  finished one by accident;
* ``<run-dir>/up.json`` always says the current phase, the URLs and the child pids (tests and
  scripts read it instead of parsing the console).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_SCENARIOS = ("NL", "ES", "FR", "US")
DEFAULT_PORTS = {"grpc": 50051, "status": 8081, "gateway": 8080}
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXAMPLE_ROWS = 3


class UpError(Exception):
    """A failure the user must see: what failed, and the evidence (a log tail)."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM reached ``up``. A BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` on the way (a poll that treats errors as "not yet") swallows it."""


# --------------------------------------------------------------------------------- CLI
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "up",
        help="run the whole system as local processes: aggregator, one client per scenario, "
        "gateway (synthetic data unless --data)",
        description="Starts `msmtrec aggregator`, one `msmtrec client` per scenario and "
        "`msmtrec gateway` on 127.0.0.1, prints per-round progress, then one example "
        "prediction per scenario and the URLs of the status API and the gateway. Keeps "
        "serving until Ctrl-C (or exits after training with --exit-after-training). Logs "
        "and state go to --run-dir; each run starts a fresh federation there.",
    )
    p.add_argument("--run-dir", type=Path, default=Path("runs/up"), help="(default runs/up)")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="data directory of <scenario>/{train,test} files (default: synthetic data "
        "written to RUN_DIR/data)",
    )
    p.add_argument(
        "--scenarios",
        nargs="+",
        default=None,
        help="scenarios to run (default: NL ES FR US, or every scenario under --data)",
    )
    p.add_argument("--rows", type=int, default=20_000, help="synthetic train rows per scenario")
    p.add_argument("--test-rows", type=int, default=None, help="synthetic test rows (rows / 4)")
    p.add_argument("--rounds", type=int, default=5, help="federated rounds (default 5)")
    p.add_argument(
        "--method",
        default="pfmsmtrec",
        type=networked_method,
        help="federation method (default pfmsmtrec)",
    )
    p.add_argument("--preset", default="small", help="model preset (default small)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=None, help="client learning rate")
    p.add_argument("--batch-size", type=int, default=None, help="client batch size")
    p.add_argument("--local-epochs", type=int, default=None, help="local epochs per round")
    p.add_argument(
        "--host", default="127.0.0.1", help="bind address of every service (default loopback)"
    )
    for name, default in DEFAULT_PORTS.items():
        p.add_argument(
            f"--{name}-port",
            type=int,
            default=None,
            help=f"port (default {default}, or a free one if {default} is busy; 0: a free one)",
        )
    p.add_argument("--tls", action="store_true", help="TLS between clients and aggregator")
    p.add_argument(
        "--tokens-dir",
        type=Path,
        default=None,
        help="tokens.yaml + <scenario>.token as `msmtrec aggregator make-tokens` writes them "
        "(default: fresh random dev tokens in RUN_DIR/secrets)",
    )
    p.add_argument(
        "--exit-after-training",
        action="store_true",
        help="stop everything and exit 0 once the example predictions are printed",
    )
    p.add_argument("--startup-timeout", type=float, default=180.0, help="seconds (default 180)")
    p.add_argument(
        "--round-timeout",
        type=float,
        default=300.0,
        help="longest wait for the next round to complete (default 300 s)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (1)")
    from msmtrec.commands.simulate import add_privacy_args

    add_privacy_args(p)  # handed to every client (each protects its own rows)
    p.add_argument("--verbose", action="store_true", help="stream every log line of every process")
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------- helpers
def networked_method(name: str) -> str:
    """A method the aggregator can run (central references are refused, saying why)."""
    from msmtrec.federation.methods import check_networked

    try:
        check_networked(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name


def say(line: str = "") -> None:
    print(line, flush=True)


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on (or holds) ``host:port``. SO_REUSEADDR as the services
    use it, so a socket in TIME_WAIT from a previous run does not count as busy."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def resolve_ports(host: str, requested: dict[str, int | None], notes: list[str]) -> dict[str, int]:
    """Port per service. A default port that is busy falls back to a free one (with a note);
    a port the user asked for that is busy is an error, because silently moving it would
    break whatever expects it there."""
    ports: dict[str, int] = {}
    for name, value in requested.items():
        if value == 0:
            port = free_port(host)
        elif value is None:
            port = DEFAULT_PORTS[name]
            if port_in_use(host, port) or port in ports.values():
                fallback = free_port(host)
                notes.append(f"port {port} ({name}) is busy on {host}; using {fallback}")
                port = fallback
        else:
            if port_in_use(host, value):
                raise UpError(
                    f"port {value} (--{name}-port) is already in use on {host}: stop what "
                    f"listens there, or pass another port (0 picks a free one)"
                )
            port = value
        if port in ports.values():
            raise UpError(f"port {port} is given to two services; use distinct ports")
        ports[name] = port
    return ports


def url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def atomic_write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def example_instances(data_dir: Path, scenario: str, n: int = EXAMPLE_ROWS) -> tuple[list, dict]:
    """The first ``n`` rows of the scenario's test file as gateway instances (feature name →
    JSON number), and their labels (label name → values) for display."""
    from msmtrec.data.loader import find_split_file
    from msmtrec.data.schema import ALIEXPRESS

    path = find_split_file(Path(data_dir) / scenario, "test")
    if path is None:
        raise UpError(f"no test file in {Path(data_dir) / scenario} for the example prediction")
    columns = [*ALIEXPRESS.feature_columns, *ALIEXPRESS.labels]
    if path.suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        batch = next(pq.ParquetFile(path).iter_batches(batch_size=n, columns=columns))
        frame = batch.to_pandas()
    else:
        import pandas as pd

        frame = pd.read_csv(path, usecols=columns, nrows=n)
    cat = set(ALIEXPRESS.categorical)
    instances = [
        {c: int(row[c]) if c in cat else float(row[c]) for c in ALIEXPRESS.feature_columns}
        for _, row in frame.iterrows()
    ]
    labels = {name: [int(v) for v in frame[name]] for name in ALIEXPRESS.labels}
    return instances, labels


# ----------------------------------------------------------------------------- children
def _die_with_parent() -> None:
    """In the child between fork and exec: terminate this child when ``up`` dies, even by
    SIGKILL (Linux prctl PR_SET_PDEATHSIG; a no-op elsewhere)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d(?:[.,]\d+)? (\w+) [\w.]+: (.*)$")


@dataclass
class Child:
    """One service process, its log file and how much of the log was shown already."""

    name: str
    role: str  # aggregator | client | gateway
    args: list[str]
    log_path: Path
    proc: subprocess.Popen | None = None
    offset: int = 0
    partial: str = ""
    returncode: int | None = None

    def start(self, env: dict[str, str]) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "msmtrec.cli", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def poll(self) -> int | None:
        if self.proc is None:
            return None
        if self.returncode is None:
            self.returncode = self.proc.poll()
        return self.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.poll() is None

    def new_lines(self) -> list[str]:
        """Complete log lines written since the last call."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        text = self.partial + chunk.decode("utf-8", "replace")
        lines = text.split("\n")
        self.partial = lines.pop()
        return lines

    def tail(self, n: int = 25) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(f"    {line}" for line in lines[-n:]) or "    (empty log)"

    def failure(self, what: str) -> UpError:
        code = self.poll()
        state = f"exited with code {code}" if code is not None else "is still running"
        return UpError(f"{self.name} {state} {what}. Last lines of {self.log_path}:\n{self.tail()}")

    def signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)  # the child leads its own session: pgid == pid


def stop_children(children: Sequence[Child], grace: float = 10.0) -> list[str]:
    """SIGTERM each process group (gateway, clients, then the aggregator, so clients never
    see a vanished server as a reason to retry), SIGKILL what is left after ``grace``.
    Returns the names of the children that had to be killed."""
    order = {"gateway": 0, "client": 1, "aggregator": 2}
    killed = []
    for child in sorted(children, key=lambda c: order.get(c.role, 9)):
        if child.proc is None:
            continue
        if child.alive():
            child.signal_group(signal.SIGTERM)
            try:
                child.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                child.signal_group(signal.SIGKILL)
                child.proc.wait(timeout=10)
                killed.append(child.name)
        # anything the child itself started (same session) goes too
        child.signal_group(signal.SIGKILL)
        child.poll()
    return killed


# ------------------------------------------------------------------------------- up run
@dataclass
class Endpoints:
    host: str
    ports: dict[str, int]

    @property
    def grpc(self) -> str:
        return f"{url_host(self.host)}:{self.ports['grpc']}"

    @property
    def status(self) -> str:
        return f"http://{url_host(self.host)}:{self.ports['status']}"

    @property
    def gateway(self) -> str:
        return f"http://{url_host(self.host)}:{self.ports['gateway']}"


@dataclass
class Up:
    args: argparse.Namespace
    run_dir: Path
    children: list[Child] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    phase: str = "starting"
    endpoints: Endpoints | None = None
    scenarios: list[str] = field(default_factory=list)
    data_dir: Path | None = None
    predictions: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False
    _seen_rounds: int = 0
    _announced_open: int = 0

    # ---- bookkeeping
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def write_state(self, **extra: Any) -> None:
        ep = self.endpoints
        atomic_write_json(
            self.run_dir / "up.json",
            {
                "phase": self.phase,
                "pid": os.getpid(),
                "elapsed_seconds": round(self.elapsed(), 1),
                "scenarios": self.scenarios,
                "data": str(self.data_dir) if self.data_dir else None,
                "urls": {
                    "grpc": ep.grpc,
                    "status": ep.status,
                    "gateway": ep.gateway,
                }
                if ep
                else {},
                "children": {
                    c.name: {"pid": c.proc.pid, "log": str(c.log_path), "exit": c.poll()}
                    for c in self.children
                    if c.proc is not None
                },
                "predictions": self.predictions,
                **extra,
            },
        )

    def set_phase(self, phase: str, **extra: Any) -> None:
        self.phase = phase
        self.write_state(**extra)

    # ---- setup
    def prepare_dirs(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("aggregator", "clients", "registry", "logs", "examples"):
            shutil.rmtree(self.run_dir / sub, ignore_errors=True)
        (self.run_dir / "logs").mkdir()
        (self.run_dir / "examples").mkdir()

    def prepare_data(self) -> None:
        args = self.args
        if args.data is not None:
            from msmtrec.data.loader import list_scenarios

            if not args.data.is_dir():
                raise UpError(f"--data {args.data} is not a directory")
            found = list_scenarios(args.data)
            self.scenarios = list(args.scenarios or found)
            missing = [s for s in self.scenarios if s not in found]
            if missing:
                raise UpError(f"no train file for {missing} under {args.data} (found {found})")
            self.data_dir = args.data.resolve()
            say(f"data: {self.data_dir} ({' '.join(self.scenarios)})")
            return
        from msmtrec.commands.deploy import init_data
        from msmtrec.data.synth import SynthConfig

        self.scenarios = list(args.scenarios or DEFAULT_SCENARIOS)
        self.data_dir = (self.run_dir / "data").resolve()
        test_rows = args.test_rows or max(1, args.rows // 4)
        config = SynthConfig(
            scenarios=tuple(self.scenarios), train_rows=args.rows, test_rows=test_rows,
            seed=args.seed,
        )  # fmt: skip
        summary = self.data_dir / "synth.json"
        if summary.exists():
            try:
                previous = json.loads(summary.read_text())["config"]
            except (ValueError, KeyError):
                previous = None
            if previous != json.loads(json.dumps(config.to_dict())):
                shutil.rmtree(self.data_dir)  # other rows/seed/scenarios: make it again
        if (self.data_dir / "synth.json").exists():
            say(f"data: synthetic, reusing {self.data_dir}")
            return
        t0 = time.monotonic()
        say(
            f"data: writing synthetic AliExpress-schema data for {' '.join(self.scenarios)} "
            f"({args.rows} train / {test_rows} test rows each) to {self.data_dir}"
        )
        try:
            init_data(self.data_dir, config)
        except ValueError as exc:
            raise UpError(str(exc)) from exc
        say(f"data: done in {time.monotonic() - t0:.1f} s")

    def prepare_secrets(self) -> dict[str, Path]:
        """Token files (and TLS material with --tls). Development only: random, 0600, in the
        run directory, replaced on every run unless --tokens-dir is given."""
        from aggregator.auth import make_tokens

        if self.args.tokens_dir is not None:
            tdir = self.args.tokens_dir
            paths = {"tokens": tdir / "tokens.yaml"}
            paths.update({s: tdir / f"{s}.token" for s in self.scenarios})
            absent = [str(p) for p in paths.values() if not p.is_file()]
            if absent:
                raise UpError(f"--tokens-dir lacks {', '.join(absent)}")
        else:
            paths = make_tokens(self.scenarios, self.run_dir / "secrets")
            say(f"tokens: fresh development tokens in {self.run_dir / 'secrets'} (mode 0600)")
        if self.args.tls:
            from aggregator.certs import make_dev_certs

            hosts = list(dict.fromkeys([self.args.host, "127.0.0.1", "localhost"]))
            certs = make_dev_certs(self.run_dir / "secrets" / "tls", (), hosts, 7)
            paths.update({f"tls:{k}": v for k, v in certs.items()})
            say(f"tls: development CA and server certificate in {self.run_dir / 'secrets/tls'}")
        return {k: Path(v).resolve() for k, v in paths.items()}

    def build_children(self, secrets: dict[str, Path]) -> None:
        a, ep = self.args, self.endpoints
        assert ep is not None and self.data_dir is not None
        logs = self.run_dir / "logs"
        run_dir = self.run_dir.resolve()
        threads = str(a.threads)
        agg = [
            "aggregator",
            "--host", a.host, "--port", str(ep.ports["grpc"]),
            "--status-host", a.host, "--status-port", str(ep.ports["status"]),
            "--state-dir", str(run_dir / "aggregator"),
            "--tokens-file", str(secrets["tokens"]),
            "--scenarios", *self.scenarios,
            "--min-clients", str(len(self.scenarios)),
            "--rounds", str(a.rounds), "--method", a.method, "--preset", a.preset,
            "--seed", str(a.seed),
            "--heartbeat-interval-seconds", "2",
            "--round-deadline-seconds", str(max(60.0, a.round_timeout)),
            "--threads", threads,
        ]  # fmt: skip
        for flag in ("lr", "batch_size", "local_epochs"):
            if getattr(a, flag) is not None:
                agg += [f"--{flag.replace('_', '-')}", str(getattr(a, flag))]
        if a.tls:
            agg += ["--tls-cert", str(secrets["tls:server.pem"])]
            agg += ["--tls-key", str(secrets["tls:server.key"])]
        self.children.append(Child("aggregator", "aggregator", agg, logs / "aggregator.log"))
        for s in self.scenarios:
            client = [
                "client", "--scenario", s, "--data", str(self.data_dir),
                "--aggregator", ep.grpc, "--token-file", str(secrets[s]),
                "--state-dir", str(run_dir / "clients" / s),
                "--registry", str(run_dir / "registry"),
                "--threads", threads, "--poll-seconds", "10",
                "--backoff-initial-seconds", "0.2", "--backoff-max-seconds", "1",
                "--reconnect-timeout-seconds", str(a.startup_timeout),
            ]  # fmt: skip
            if a.tls:
                client += ["--ca-cert", str(secrets["tls:ca.pem"])]
            for flag in ("epsilon", "delta", "max_grad_norm", "noise_multiplier", "noise_seed"):
                if getattr(a, f"dp_{flag}", None) is not None:
                    client += [f"--dp-{flag.replace('_', '-')}", str(getattr(a, f"dp_{flag}"))]
            self.children.append(Child(f"client {s}", "client", client, logs / f"client-{s}.log"))
        gateway = [
            "gateway", "--registry", str(run_dir / "registry"),
            "--host", a.host, "--port", str(ep.ports["gateway"]),
            "--poll-interval", "0.5", "--threads", threads, "--workers", "1",
        ]  # fmt: skip
        self.children.append(Child("gateway", "gateway", gateway, logs / "gateway.log"))

    def start_children(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(self.args.threads)}
        (self.run_dir / "registry").mkdir(parents=True, exist_ok=True)
        for child in self.children:
            child.start(env)
        names = ", ".join(c.name for c in self.children)
        say(f"started {names} (logs in {self.run_dir / 'logs'})")

    # ---- watching
    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def check_services(self) -> None:
        """The aggregator and the gateway must run for as long as ``up`` does; a client may
        only stop with code 0 (the federation finished)."""
        for c in self.children:
            code = c.poll()
            if code is None:
                continue
            if c.role != "client":
                raise c.failure("unexpectedly")
            if code != 0:
                raise c.failure("before the federation finished")

    def show_logs(self) -> None:
        verbose = self.args.verbose
        for c in self.children:
            for line in c.new_lines():
                shown = show_line(c.role, line, verbose)
                if shown is not None:
                    say(f"[{c.name}] {shown}")

    def get(self, url: str, timeout: float = 3.0) -> Any:
        import httpx

        response = httpx.get(url, timeout=timeout)
        response.raise_for_status()
        return response.json()

    def try_get(self, url: str) -> Any:
        """``get``, or None while the service does not answer (the caller polls again)."""
        try:
            return self.get(url)
        except Exception:
            return None

    def tick(self) -> None:
        self.show_logs()
        self.check_services()

    def wait_for(
        self, what: str, check: Callable[[], Any], timeout: float, blame: str | None = None
    ) -> Any:
        """Poll ``check`` (exceptions count as "not yet") while watching the children."""
        end = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < end:
            self.tick()
            try:
                value = check()
                if value:
                    return value
            except Exception as exc:
                last = exc
            time.sleep(0.25)
        why = f" (last error: {last})" if last else ""
        if blame:
            raise self.child(blame).failure(
                f"— timed out after {timeout:.0f} s waiting for {what}{why}"
            )
        raise UpError(f"timed out after {timeout:.0f} s waiting for {what}{why}")

    def progress(self) -> None:
        """Round lines from the status API (what an operator sees) as rounds open and close."""
        ep = self.endpoints
        assert ep is not None
        status = self.try_get(f"{ep.status}/v1/status")
        if status is None:
            return
        total = status["total_rounds"]
        if status["completed_rounds"] > self._seen_rounds:
            for rec in self.try_get(f"{ep.status}/v1/rounds") or []:
                if rec["round"] <= self._seen_rounds:
                    continue
                say(
                    f"[aggregator] round {rec['round']}/{total} closed ({rec['closed_by']}) in "
                    f"{rec['duration_seconds']:.1f} s: {len(rec['participants'])}/"
                    f"{len(self.scenarios)} clients, {rec['bytes_in'] / 1e6:.1f} MB in, "
                    f"{rec['bytes_out'] / 1e6:.1f} MB out"
                    + "".join(
                        f"{', ε spent' if i == 0 else ''} {s} {e:.3f}"
                        for i, (s, e) in enumerate(sorted((rec.get("dp_epsilon") or {}).items()))
                    )
                )
                self._seen_rounds = rec["round"]
        if status["phase"] == "open" and status["round"] > self._announced_open:
            self._announced_open = status["round"]
            say(
                f"[aggregator] round {status['round']}/{total} open: "
                f"{' '.join(sorted(status['joined']))}"
            )

    def train(self) -> dict[str, Any]:
        """Wait for the federation to finish: all rounds done, every client exited 0."""
        a, ep = self.args, self.endpoints
        assert ep is not None
        self.wait_for(
            f"the aggregator's status API at {ep.status}/readyz",
            lambda: self.get(f"{ep.status}/readyz"),
            a.startup_timeout,
            blame="aggregator",
        )
        say(f"[aggregator] ready: gRPC {ep.grpc}, status API {ep.status}")
        self.set_phase("training")
        deadline = time.monotonic() + a.startup_timeout
        last_progress = self._seen_rounds
        while True:
            self.tick()
            self.progress()
            if self._seen_rounds != last_progress:
                last_progress = self._seen_rounds
                deadline = time.monotonic() + a.round_timeout
            clients = [c for c in self.children if c.role == "client"]
            if all(c.poll() == 0 for c in clients):
                status = self.try_get(f"{ep.status}/v1/status")
                if status is not None and status["phase"] == "finished":
                    self.progress()
                    return status
            if time.monotonic() > deadline:
                try:
                    waiting = self.get(f"{ep.status}/v1/status")["waiting_for"]
                except Exception as exc:
                    waiting = f"status API unreachable: {exc}"
                stuck = [c for c in clients if c.alive()]
                tails = "\n".join(f"  {c.name}:\n{c.tail(8)}" for c in stuck)
                raise UpError(
                    f"no round completed for {a.round_timeout:.0f} s (after round "
                    f"{self._seen_rounds}); the aggregator says: {waiting}\n{tails}"
                )
            time.sleep(0.25)

    def wait_gateway(self) -> dict[str, str]:
        """Until the gateway serves every scenario's final version (the registry's LATEST)."""
        from msmtrec.registry import ModelRegistry

        ep = self.endpoints
        assert ep is not None
        registry = ModelRegistry(self.run_dir / "registry")
        final = {s: registry.latest_version(s) for s in self.scenarios}
        missing = [s for s, v in final.items() if v is None]
        if missing:
            raise UpError(f"clients finished but never published a model for {missing}")

        def serving() -> dict[str, str] | None:
            body = self.get(f"{ep.gateway}/v1/scenarios")
            served = {e["scenario"]: e.get("version") for e in body["scenarios"] if e["loaded"]}
            return final if all(served.get(s) == v for s, v in final.items()) else None

        return self.wait_for(
            f"the gateway to serve {final}", serving, self.args.startup_timeout, blame="gateway"
        )

    def predict_examples(self) -> None:
        import httpx

        ep = self.endpoints
        assert ep is not None and self.data_dir is not None
        say()
        say(f"example predictions from the gateway ({EXAMPLE_ROWS} rows of each scenario's "
            "test file):")  # fmt: skip
        for s in self.scenarios:
            instances, labels = example_instances(self.data_dir, s)
            body_path = self.run_dir / "examples" / f"{s}.json"
            body_path.write_text(json.dumps({"instances": instances}) + "\n")
            try:
                response = httpx.post(
                    f"{ep.gateway}/v1/scenarios/{s}/predict",
                    json={"instances": instances},
                    timeout=30,
                )
            except httpx.HTTPError as exc:
                raise self.child("gateway").failure(
                    f"— POST /v1/scenarios/{s}/predict failed: {exc!r}"
                ) from None
            if response.status_code != 200:
                raise self.child("gateway").failure(
                    f"— POST /v1/scenarios/{s}/predict answered {response.status_code}: "
                    f"{response.text[:300]}"
                )
            body = response.json()
            self.predictions[s] = body
            preds = "  ".join(
                f"{task} " + " ".join(f"{p:.4f}" for p in values)
                for task, values in body["predictions"].items()
            )
            truth = ", ".join(f"{k} " + " ".join(map(str, v)) for k, v in labels.items())
            say(f"  {s:<4} {body['model_version']}  {preds}   (labels: {truth})")

    def summary(self) -> None:
        ep = self.endpoints
        assert ep is not None
        rounds = self.try_get(f"{ep.status}/v1/rounds")
        if rounds is None:
            raise self.child("aggregator").failure("— its status API did not answer /v1/rounds")
        last = rounds[-1] if rounds else None
        if last:
            say()
            say(f"personalized models after round {last['round']} (test AUC, per scenario):")
            for s in self.scenarios:
                evals = (last["clients"].get(s) or {}).get("eval") or {}
                test = evals.get("test") or {}
                cells = "  ".join(
                    f"{task} {m['auc']:.4f}" if m.get("auc") is not None else f"{task} n/a"
                    for task, m in test.items()
                )
                say(f"  {s:<4} {cells or 'not reported'}")

    def print_urls(self) -> None:
        ep = self.endpoints
        assert ep is not None
        first = self.scenarios[0]
        example = self.run_dir / "examples" / f"{first}.json"
        say()
        say(f"status API  {ep.status}/v1/status   (/v1/rounds /v1/clients /metrics /docs)")
        say(f"gateway     {ep.gateway}/v1/scenarios (POST /v1/scenarios/{{scenario}}/predict)")
        say(f"logs        {self.run_dir / 'logs'}/   state: {self.run_dir / 'up.json'}")
        say("try:")
        say(f"  curl -s {ep.status}/v1/rounds")
        say(f"  curl -s {ep.status}/v1/clients")
        say(
            f"  curl -s -X POST {ep.gateway}/v1/scenarios/{first}/predict "
            f"-H 'content-type: application/json' -d @{example}"
        )

    def serve(self) -> None:
        n = len(self.scenarios)
        say()
        say(f"serving (aggregator status API and gateway); Ctrl-C stops the aggregator, "
            f"{n} client{'s' if n != 1 else ''} (already finished) and the gateway")  # fmt: skip
        while True:
            self.tick()
            time.sleep(0.5)

    # ---- teardown
    def shutdown(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        running = [c for c in self.children if c.alive()]
        if running:
            say(f"stopping {', '.join(c.name for c in running)} ...")
        killed = stop_children(self.children)
        if killed:
            say(f"killed after the grace period: {', '.join(killed)}")
        with contextlib.suppress(OSError):
            self.write_state()


def show_line(role: str, line: str, verbose: bool) -> str | None:
    """What of a child's log line reaches the console (None: nothing). Concise by default:
    warnings and errors always, plus the clients' per-round training and evaluation lines;
    the round lines of the aggregator come from its status API instead."""
    if not line.strip():
        return None
    if verbose:
        return line
    m = LOG_LINE.match(line)
    if m is None:
        # tracebacks and other unstructured output are errors worth seeing
        return line if role != "gateway" or "Traceback" in line or "Error" in line else None
    level, message = m.groups()
    if level in ("WARNING", "ERROR", "CRITICAL"):
        if role == "client" and "UNAVAILABLE" in message and "retrying" in message:
            return None  # a client that started before the aggregator listens; it retries
        return f"{level}: {message}"
    if role == "client" and re.search(
        r"round \d+/\d+ trained|personalized model after round|finished", message
    ):
        return re.sub(r"^[\w.-]+: ", "", message)
    return None


def run(args: argparse.Namespace) -> int:
    if args.rounds < 1 or args.rows < 10:
        say("msmtrec up: --rounds must be >= 1 and --rows >= 10")
        return EXIT_USAGE
    from msmtrec.commands.simulate import privacy_from_args

    privacy_from_args(args)  # a bad --dp-* combination stops here, before any process starts
    up = Up(args, args.run_dir)

    def on_signal(signum: int, _frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    atexit.register(up.shutdown)
    code = 0
    try:
        up.prepare_dirs()
        notes: list[str] = []
        requested = {name: getattr(args, f"{name}_port") for name in DEFAULT_PORTS}
        up.endpoints = Endpoints(args.host, resolve_ports(args.host, requested, notes))
        for note in notes:
            say(f"note: {note}")
        up.prepare_data()
        secrets = up.prepare_secrets()
        up.build_children(secrets)
        up.write_state()
        up.start_children()
        up.write_state()
        up.train()
        trained = up.elapsed()
        say(f"training finished: {args.rounds} rounds in {trained:.0f} s since start")
        up.summary()
        versions = up.wait_gateway()
        up.set_phase("predicting", versions=versions)
        up.predict_examples()
        first = up.elapsed()
        say(f"first predictions {first:.0f} s after `msmtrec up` started")
        up.print_urls()
        up.set_phase("serving", first_prediction_seconds=round(first, 1))
        if args.exit_after_training:
            say()
            say("--exit-after-training: stopping")
        else:
            up.serve()
    except Interrupted as exc:
        say()
        say(f"{exc} received")
        code = 0 if up.phase == "serving" else EXIT_INTERRUPTED
    except UpError as exc:
        say()
        say(f"msmtrec up: FAILED: {exc}")
        up.phase = "failed"
        code = EXIT_FAILED
    finally:
        # no signal may interrupt the cleanup itself
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        try:
            if up.phase != "failed":
                up.phase = "stopping"
            up.shutdown()
            if up.phase == "stopping":
                up.phase = "stopped"
            with contextlib.suppress(OSError):
                up.write_state()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            atexit.unregister(up.shutdown)
    if code == 0:
        say("stopped cleanly")
    return code
