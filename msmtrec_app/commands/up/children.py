"""The processes ``msmtrec up`` runs: their config files, their health, their stop order.

Each child is an ordinary ``msmtrec aggregator|client|gateway --config FILE`` process, started
exactly as a container can start it, under the shared supervisor
(:mod:`msmtrec_app.supervisor`): its own session, terminated with ``up`` even if ``up`` is
SIGKILLed, its output in a log file.

Why config files rather than flags: the file holds the child's settings by their model's
names (the experiment's from :mod:`msmtrec.experiment`, the service's own from its settings
model), and ``up`` validates each file with that very model before any process starts, so a
renamed or invalid setting fails at once, naming the field, rather than in a child's log.
The files (``RUN_DIR/config/*.json``, mode 0600) name token *files*, never a token itself.
The file is the child's whole configuration: variables of the environment that would
override one of its keys (``MSMTREC_CLIENT_DEVICE``, …) are removed from the child's
environment, as flags used to win over them.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msmtrec.experiment import (
    DEFAULT_DATASET,
    PRIVACY_FIELDS,
    PROTOCOL_FIELDS,
    ExperimentSettings,
)
from msmtrec_app.commands.up.common import UpError
from msmtrec_app.commands.up.ports import Endpoints
from msmtrec_app.supervisor import ServiceProcess, stop_all

# gateway first, the aggregator last: clients never see a vanished server as a reason to retry
STOP_ORDER = {"gateway": 0, "client": 1, "aggregator": 2}
CONFIG_DIR = "config"


@dataclass
class ChildConfig:
    """One child: its name, role, settings (by the settings model's field names) and the
    file ``up`` writes them to."""

    name: str
    role: str  # aggregator | client | gateway: the subcommand and the settings model
    values: dict[str, Any]
    path: Path

    def settings_class(self) -> type:
        if self.role == "aggregator":
            from aggregator.settings import AggregatorSettings

            return AggregatorSettings
        if self.role == "client":
            from scenario_client.settings import ClientSettings

            return ClientSettings
        from gateway.settings import GatewaySettings

        return GatewaySettings


def child_configs(
    args: argparse.Namespace,
    experiment: ExperimentSettings,
    ep: Endpoints,
    run_dir: Path,
    data_dir: Path,
    scenarios: Sequence[str],
    secrets: dict[str, Path],
) -> list[ChildConfig]:
    """The settings of the aggregator, one client per scenario and the gateway."""
    run_dir = run_dir.resolve()
    where = run_dir / CONFIG_DIR
    threads = args.threads
    given = experiment.model_dump(exclude_none=True)
    dataset = given.get("dataset", DEFAULT_DATASET)
    if Path(dataset).is_file():  # a spec file: the children may run from another directory
        given["dataset"] = dataset = str(Path(dataset).resolve())
    protocol = {k: v for k, v in given.items() if k in PROTOCOL_FIELDS}
    privacy = {k: v for k, v in given.items() if k in PRIVACY_FIELDS}
    agg: dict[str, Any] = {
        "host": args.host,
        "port": ep.ports["grpc"],
        "status_host": args.host,
        "status_port": ep.ports["status"],
        "state_dir": run_dir / "aggregator",
        "tokens_file": secrets["tokens"],
        "scenarios": list(scenarios),
        "min_clients": len(scenarios),
        **protocol,
        "heartbeat_interval_seconds": 2.0,
        "round_deadline_seconds": max(60.0, args.round_timeout),
        "threads": threads,
    }
    if args.tls:
        agg["tls_cert"] = secrets["tls:server.pem"]
        agg["tls_key"] = secrets["tls:server.key"]
    configs = [ChildConfig("aggregator", "aggregator", agg, where / "aggregator.json")]
    for s in scenarios:
        client: dict[str, Any] = {
            "scenario": s,
            "data": data_dir,
            "aggregator": ep.grpc,
            "token_file": secrets[s],
            "state_dir": run_dir / "clients" / s,
            "registry": run_dir / "registry",
            "threads": threads,
            "poll_seconds": 10.0,
            "backoff_initial_seconds": 0.2,
            "backoff_max_seconds": 1.0,
            "reconnect_timeout_seconds": args.startup_timeout,
            "device": getattr(args, "device", "cpu"),
            "precision": getattr(args, "precision", "fp32"),
            **privacy,  # each client protects its own rows
        }
        if getattr(args, "stream_buffer_rows", 0):  # validated by the client's settings
            client["stream_buffer_rows"] = args.stream_buffer_rows
        if dataset != DEFAULT_DATASET:  # the client reads its data with it, and joins with it
            client["dataset"] = dataset
        if args.tls:
            client["ca_cert"] = secrets["tls:ca.pem"]
        configs.append(ChildConfig(f"client {s}", "client", client, where / f"client-{s}.json"))
    gateway = {
        "registry": run_dir / "registry",
        "host": args.host,
        "port": ep.ports["gateway"],
        "poll_interval": 0.5,
        "threads": threads,
        "workers": 1,
        "device": getattr(args, "gateway_device", "cpu"),
    }
    if dataset != DEFAULT_DATASET:  # request keys and predictions: the spec's names
        gateway["spec"] = dataset
    configs.append(ChildConfig("gateway", "gateway", gateway, where / "gateway.json"))
    return configs


def write_config(config: ChildConfig) -> None:
    """The child's settings as JSON, readable by its owner only (mode 0600: it names the
    token file and the TLS key)."""
    config.path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config.values, indent=2, sort_keys=True, default=str) + "\n"
    fd = os.open(config.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # also when the file existed with a wider mode
        f.write(text)


def validate_config(config: ChildConfig) -> None:
    """Read the written file with the child's own settings model, as the child will; an
    invalid setting is an :class:`UpError` naming the file and the field."""
    from msmtrec.experiment import field_errors
    from servicekit.settings import settings_from_file

    try:
        settings_from_file(config.settings_class(), config.path)
    except (ValueError, OSError) as exc:
        raise UpError(
            f"the settings up made for {config.name} ({config.path}) are invalid: "
            f"{field_errors(exc)}"
        ) from None


def build_children(
    args: argparse.Namespace,
    ep: Endpoints,
    run_dir: Path,
    data_dir: Path,
    scenarios: Sequence[str],
    secrets: dict[str, Path],
    experiment: ExperimentSettings | None = None,
) -> list[ServiceProcess]:
    """Aggregator, one client per scenario, gateway (not started): each one's config file
    written and validated first, so that nothing starts unless every file is valid."""
    experiment = experiment or ExperimentSettings.from_values(args)
    configs = child_configs(args, experiment, ep, run_dir, data_dir, scenarios, secrets)
    for config in configs:
        write_config(config)
    for config in configs:
        validate_config(config)
    logs = run_dir / "logs"
    children = []
    for config in configs:
        log = logs / (config.path.stem + ".log")
        child = ServiceProcess(
            config.name, [config.role, "--config", str(config.path)], log,
            role=config.role, own_session=True, die_with_parent=True,
            unset_env=overriding_env(config),
        )  # fmt: skip
        children.append(child)
    return children


def overriding_env(config: ChildConfig) -> tuple[str, ...]:
    """The environment variables that would override one of the file's keys."""
    cls = config.settings_class()
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    return tuple(f"{prefix}{key.upper()}" for key in config.values)


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
