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

This module is the sequence (:func:`run`) and the run's bookkeeping; the parts are next to
it: ``options`` (the flags), ``ports``, ``prepare`` (data, secrets), ``children`` (command
lines, health, stop order, on the shared :mod:`msmtrec_app.supervisor`), ``training``
(progress from the status API, the wait for the end of training), ``serving`` (the
gateway's first predictions, URLs, serving) and ``reporting`` (console lines, summary).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msmtrec.experiment import ExperimentSettings
from msmtrec_app.cli import check_device_available
from msmtrec_app.commands.up.children import (
    build_children,
    check_services,
    failure,
    stop_children,
)
from msmtrec_app.commands.up.common import Interrupted, UpError, atomic_write_json, say
from msmtrec_app.commands.up.ports import DEFAULT_PORTS, Endpoints, resolve_ports
from msmtrec_app.commands.up.prepare import prepare_data, prepare_dirs, prepare_secrets
from msmtrec_app.commands.up.reporting import Progress, show_line
from msmtrec_app.commands.up.serving import Serving
from msmtrec_app.commands.up.training import Training
from msmtrec_app.supervisor import ServiceProcess

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_USAGE", "Up", "run"]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


# ------------------------------------------------------------------------------- up run
@dataclass
class Up(Training, Serving):
    """One ``msmtrec up`` run: its children, endpoints and phase (``up.json``)."""

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
    experiment: ExperimentSettings | None = None
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
        """Data and secrets; then the children's config files (each validated with the
        child's settings model before anything starts) and command lines."""
        self.scenarios, self.data_dir = prepare_data(self.args, self.run_dir)
        self.progress_lines = Progress(self.scenarios)
        secrets = prepare_secrets(self.args, self.run_dir, self.scenarios)
        assert self.endpoints is not None
        self.children = build_children(
            self.args, self.endpoints, self.run_dir, self.data_dir, self.scenarios, secrets,
            self.experiment,
        )  # fmt: skip

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
    # combination stops here, naming the field, before anything is written or started
    try:
        experiment = experiment_from_args(args)
        privacy_from_args(args)
    except SystemExit as exc:
        say(f"msmtrec up: {str(exc.code).removeprefix('error: ')}")
        return EXIT_USAGE
    up = Up(args, args.run_dir, experiment=experiment)

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
        if args.dry_run:
            up.set_phase("dry-run")
            for child in up.children:
                say(f"{child.name}: msmtrec {' '.join(child.args)}")
            say("--dry-run: config files written and valid; nothing started")
            return 0
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
            if up.phase not in ("failed", "dry-run"):
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
