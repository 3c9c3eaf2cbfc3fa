"""The processes ``msmtrec up`` runs: their command lines, their health, their stop order.

Each child is an ordinary ``msmtrec aggregator|client|gateway`` process, started exactly as
a container starts it, under the shared supervisor (:mod:`msmtrec_app.supervisor`): its own
session, terminated with ``up`` even if ``up`` is SIGKILLed, its output in a log file.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from msmtrec_app.commands.up.common import UpError
from msmtrec_app.commands.up.ports import Endpoints
from msmtrec_app.supervisor import ServiceProcess, stop_all

# gateway first, the aggregator last: clients never see a vanished server as a reason to retry
STOP_ORDER = {"gateway": 0, "client": 1, "aggregator": 2}


def _child(name: str, role: str, args: list[str], log: Path) -> ServiceProcess:
    return ServiceProcess(name, args, log, role=role, own_session=True, die_with_parent=True)


def build_children(
    args: argparse.Namespace,
    ep: Endpoints,
    run_dir: Path,
    data_dir: Path,
    scenarios: Sequence[str],
    secrets: dict[str, Path],
) -> list[ServiceProcess]:
    """Aggregator, one client per scenario, gateway (not started)."""
    logs = run_dir / "logs"
    run_dir = run_dir.resolve()
    threads = str(args.threads)
    agg = [
        "aggregator",
        "--host", args.host, "--port", str(ep.ports["grpc"]),
        "--status-host", args.host, "--status-port", str(ep.ports["status"]),
        "--state-dir", str(run_dir / "aggregator"),
        "--tokens-file", str(secrets["tokens"]),
        "--scenarios", *scenarios,
        "--min-clients", str(len(scenarios)),
        "--rounds", str(args.rounds), "--method", args.method, "--preset", args.preset,
        "--seed", str(args.seed),
        "--heartbeat-interval-seconds", "2",
        "--round-deadline-seconds", str(max(60.0, args.round_timeout)),
        "--threads", threads,
    ]  # fmt: skip
    for flag in ("lr", "batch_size", "local_epochs"):
        if getattr(args, flag) is not None:
            agg += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.tls:
        agg += ["--tls-cert", str(secrets["tls:server.pem"])]
        agg += ["--tls-key", str(secrets["tls:server.key"])]
    children = [_child("aggregator", "aggregator", agg, logs / "aggregator.log")]
    for s in scenarios:
        client = [
            "client", "--scenario", s, "--data", str(data_dir),
            "--aggregator", ep.grpc, "--token-file", str(secrets[s]),
            "--state-dir", str(run_dir / "clients" / s),
            "--registry", str(run_dir / "registry"),
            "--threads", threads, "--poll-seconds", "10",
            "--backoff-initial-seconds", "0.2", "--backoff-max-seconds", "1",
            "--reconnect-timeout-seconds", str(args.startup_timeout),
        ]  # fmt: skip
        client += ["--device", getattr(args, "device", "cpu")]
        client += ["--precision", getattr(args, "precision", "fp32")]
        if args.tls:
            client += ["--ca-cert", str(secrets["tls:ca.pem"])]
        for flag in ("epsilon", "delta", "max_grad_norm", "noise_multiplier", "noise_seed"):
            if getattr(args, f"dp_{flag}", None) is not None:  # each client protects its rows
                client += [f"--dp-{flag.replace('_', '-')}", str(getattr(args, f"dp_{flag}"))]
        children.append(_child(f"client {s}", "client", client, logs / f"client-{s}.log"))
    gateway = [
        "gateway", "--registry", str(run_dir / "registry"),
        "--host", args.host, "--port", str(ep.ports["gateway"]),
        "--poll-interval", "0.5", "--threads", threads, "--workers", "1",
        "--device", getattr(args, "gateway_device", "cpu"),
    ]  # fmt: skip
    children.append(_child("gateway", "gateway", gateway, logs / "gateway.log"))
    return children


def failure(child: ServiceProcess, what: str) -> UpError:
    """What to tell the user about a child: its state, ``what`` happened, its log tail."""
    code = child.poll()
    state = f"exited with code {code}" if code is not None else "is still running"
    return UpError(
        f"{child.name} {state} {what}. Last lines of {child.log_path}:\n{child.tail(indent='    ')}"
    )


def check_services(children: Sequence[ServiceProcess]) -> None:
    """The aggregator and the gateway must run for as long as ``up`` does; a client may
    only stop with code 0 (the federation finished)."""
    for c in children:
        code = c.poll()
        if code is None:
            continue
        if c.role != "client":
            raise failure(c, "unexpectedly")
        if code != 0:
            raise failure(c, "before the federation finished")


def stop_children(children: Sequence[ServiceProcess], grace: float = 10.0) -> list[str]:
    """SIGTERM each process group in STOP_ORDER, SIGKILL what is left after ``grace``.
    Returns the names of the children that had to be killed."""
    return stop_all(children, grace, order=lambda c: STOP_ORDER.get(c.role, 9))
