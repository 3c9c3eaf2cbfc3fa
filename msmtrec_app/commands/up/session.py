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
  scripts read it instead of parsing the console);
* progress comes from the aggregator's status API, never from parsing the children's logs.

This module is the command and its sequence; the parts are next to it: ``ports``,
``prepare`` (data, secrets), ``children`` (command lines, health, stop order, on the shared
:mod:`msmtrec_app.supervisor`) and ``reporting`` (console lines, summary).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aggregator.records import RoundRecord
from aggregator.views import StatusView
from msmtrec.federation.config import DEFAULT_METHOD
from msmtrec_app.cli import add_device_flags, check_device_available, device_arg
from msmtrec_app.commands.up.children import (
    build_children,
    check_services,
    failure,
    stop_children,
)
from msmtrec_app.commands.up.common import Interrupted, UpError, atomic_write_json, say
from msmtrec_app.commands.up.ports import DEFAULT_PORTS, Endpoints, resolve_ports
from msmtrec_app.commands.up.prepare import (
    EXAMPLE_ROWS,
    example_instances,
    prepare_data,
    prepare_dirs,
    prepare_secrets,
)
from msmtrec_app.commands.up.reporting import Progress, show_line, summary_lines
from msmtrec_app.supervisor import ServiceProcess

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
ROUNDS_POLL_SECONDS = 2.0  # how often evaluations are looked for between round closes


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
    p.add_argument(
        "--run-dir", type=Path, default=Path("runs/up"), help="data, logs, state and secrets"
    )
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
        default=DEFAULT_METHOD,
        type=networked_method,
        help=f"federation method (default {DEFAULT_METHOD})",
    )
    p.add_argument("--preset", default="small", help="model preset (default small)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the federation")
    p.add_argument(
        "--lr", type=float, default=None, help="client learning rate (default: the method's)"
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="client batch size (default: the method's)"
    )
    p.add_argument(
        "--local-epochs",
        type=int,
        default=None,
        help="local epochs per round (default: the method's)",
    )
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
    add_device_flags(p)
    p.add_argument(
        "--gateway-device", type=device_arg, default="cpu",
        help="where the gateway's engine runs: auto, cpu, cuda or cuda:N (default cpu)",
    )  # fmt: skip
    from msmtrec_app.commands.simulate import add_privacy_args

    add_privacy_args(p)  # handed to every client (each protects its own rows)
    p.add_argument("--verbose", action="store_true", help="stream every log line of every process")
    p.set_defaults(func=run)


def networked_method(name: str) -> str:
    """A method the aggregator can run (central references are refused, saying why)."""
    from msmtrec.federation.methods import check_networked

    try:
        check_networked(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name


# ------------------------------------------------------------------------------- up run
@dataclass
class Up:
    args: argparse.Namespace
    run_dir: Path
    children: list[ServiceProcess] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    phase: str = "starting"
    endpoints: Endpoints | None = None
    scenarios: list[str] = field(default_factory=list)
    data_dir: Path | None = None
    predictions: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False
    progress_lines: Progress | None = None
    _rounds_polled: float = 0.0

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
    def prepare(self) -> None:
        """Data and secrets; then the children's command lines."""
        self.scenarios, self.data_dir = prepare_data(self.args, self.run_dir)
        self.progress_lines = Progress(self.scenarios)
        secrets = prepare_secrets(self.args, self.run_dir, self.scenarios)
        assert self.endpoints is not None
        self.children = build_children(
            self.args, self.endpoints, self.run_dir, self.data_dir, self.scenarios, secrets
        )

    def start_children(self) -> None:
        env = {"OMP_NUM_THREADS": str(self.args.threads)}
        (self.run_dir / "registry").mkdir(parents=True, exist_ok=True)
        for child in self.children:
            child.start(env)
        names = ", ".join(c.name for c in self.children)
        say(f"started {names} (logs in {self.run_dir / 'logs'})")

    # ---- watching
    def child(self, name: str) -> ServiceProcess:
        return next(c for c in self.children if c.name == name)

    def blame(self, name: str, what: str) -> UpError:
        return failure(self.child(name), what)

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
        check_services(self.children)

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
            raise self.blame(blame, f"— timed out after {timeout:.0f} s waiting for {what}{why}")
        raise UpError(f"timed out after {timeout:.0f} s waiting for {what}{why}")

    def status(self) -> StatusView | None:
        """The aggregator's ``/v1/status``, or None while it does not answer."""
        body = self.try_get(f"{self.endpoints.status}/v1/status")  # type: ignore[union-attr]
        return StatusView.model_validate(body) if body is not None else None

    def rounds(self) -> list[RoundRecord] | None:
        body = self.try_get(f"{self.endpoints.status}/v1/rounds")  # type: ignore[union-attr]
        return [RoundRecord.model_validate(r) for r in body] if body is not None else None

    @property
    def seen_rounds(self) -> int:
        return self.progress_lines.seen_rounds if self.progress_lines else 0

    def progress(self) -> None:
        """Round and client lines from the status API (what an operator sees)."""
        assert self.progress_lines is not None
        status = self.status()
        if status is None:
            return
        records: list[RoundRecord] = []
        now = time.monotonic()
        new_round = status.completed_rounds > self.seen_rounds
        if new_round or now - self._rounds_polled >= ROUNDS_POLL_SECONDS:
            self._rounds_polled = now
            records = self.rounds() or []
        for line in self.progress_lines.lines(status, records):
            say(line)

    def train(self) -> StatusView:
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
        last_progress = self.seen_rounds
        while True:
            self.tick()
            self.progress()
            if self.seen_rounds != last_progress:
                last_progress = self.seen_rounds
                deadline = time.monotonic() + a.round_timeout
            clients = [c for c in self.children if c.role == "client"]
            if all(c.poll() == 0 for c in clients):
                status = self.status()
                if status is not None and status.phase == "finished":
                    self._rounds_polled = 0.0  # the final evaluations: look once more
                    self.progress()
                    return status
            if time.monotonic() > deadline:
                status = self.status()
                waiting = status.waiting_for if status else "(status API unreachable)"
                stuck = [c for c in clients if c.alive()]
                tails = "\n".join(f"  {c.name}:\n{c.tail(8, indent='    ')}" for c in stuck)
                raise UpError(
                    f"no round completed for {a.round_timeout:.0f} s (after round "
                    f"{self.seen_rounds}); the aggregator says: {waiting}\n{tails}"
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
                raise self.blame(
                    "gateway", f"— POST /v1/scenarios/{s}/predict failed: {exc!r}"
                ) from None
            if response.status_code != 200:
                raise self.blame(
                    "gateway",
                    f"— POST /v1/scenarios/{s}/predict answered {response.status_code}: "
                    f"{response.text[:300]}",
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
        rounds = self.rounds()
        if rounds is None:
            raise self.blame("aggregator", "— its status API did not answer /v1/rounds")
        for line in summary_lines(rounds, self.scenarios):
            say(line)

    def print_urls(self) -> None:
        ep = self.endpoints
        assert ep is not None
        first = self.scenarios[0]
        example = self.run_dir / "examples" / f"{first}.json"
        say()
        say(f"status API  {ep.status}/v1/status   (/v1/rounds /v1/clients /metrics /docs)")
        say(f"dashboard   {ep.status}/dashboard")
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


def run(args: argparse.Namespace) -> int:
    if args.rounds < 1 or args.rows < 10:
        say("msmtrec up: --rounds must be >= 1 and --rows >= 10")
        return EXIT_USAGE
    if not (
        check_device_available(args.device, "up")
        and check_device_available(args.gateway_device, "up")
    ):
        return EXIT_USAGE
    from msmtrec_app.commands.simulate import experiment_from_args, privacy_from_args

    # the experiment as the one settings model (msmtrec.experiment): a bad value or --dp-*
    # combination stops here, naming the field, before any process starts
    experiment_from_args(args)
    privacy_from_args(args)
    up = Up(args, args.run_dir)

    def on_signal(signum: int, _frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    atexit.register(up.shutdown)
    code = 0
    try:
        prepare_dirs(up.run_dir)
        notes: list[str] = []
        requested = {name: getattr(args, f"{name}_port") for name in DEFAULT_PORTS}
        up.endpoints = Endpoints(args.host, resolve_ports(args.host, requested, notes))
        for note in notes:
            say(f"note: {note}")
        up.prepare()
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
