"""``msmtrec client``: one scenario's federated client.

    msmtrec client --scenario NL --data DIR --aggregator HOST:PORT --token-file F \\
        [--ca-cert CA] [--client-cert C --client-key K] [--state-dir DIR] [--registry DIR]

Under torchrun, ``--distributed`` makes the job's processes one client (rank 0 talks to the
aggregator, every rank trains a share of each batch: scenario_client/distributed.py).

Settings: flag > env (MSMTREC_CLIENT_*) > --config file (section ``client:``) > default.
Exit code 0 when the federation finished and the final model was evaluated, 1 when the
aggregator refused the client or stayed unreachable, 2 for invalid settings.
"""

from __future__ import annotations

import argparse
import logging
import os

# gRPC's C core logs handshake failures at INFO to stderr; our own messages say it better.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def register(sub: argparse._SubParsersAction) -> None:
    from scenario_client.settings import ClientSettings
    from servicekit.settings import add_service_arguments

    p = sub.add_parser(
        "client",
        allow_abbrev=False,  # "--tokens" must not silently mean "--tokens-file"
        help="run one scenario's federated client (train locally, exchange with the aggregator)",
        description="Loads only <data>/<scenario>/, joins the aggregator, trains each round "
        "locally, submits its shared parameters, receives its personalized ones, evaluates "
        "them and survives aggregator restarts. Settings: flag > env > --config > default.",
    )
    add_service_arguments(p, ClientSettings)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from pydantic import ValidationError

    from scenario_client.connection import ClientError
    from scenario_client.runner import ScenarioClient
    from scenario_client.settings import ClientSettings
    from servicekit.settings import load_settings, overrides_from_args

    try:
        settings = load_settings(ClientSettings, args.config, overrides_from_args(args))
    except (ValidationError, ValueError, OSError) as exc:
        print(f"msmtrec client: invalid settings: {exc}")
        return 2
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    if settings.threads:
        torch.set_num_threads(settings.threads)
    from msmtrec.device import resolve_device

    try:  # CUDA asked for on a machine without it: a settings error, not a crash mid-join
        resolve_device(settings.device, "device (MSMTREC_CLIENT_DEVICE)")
    except ValueError as exc:
        print(f"msmtrec client: invalid settings: {exc}")
        return 2
    if settings.distributed:  # one client as the replicas of a torchrun job
        from scenario_client.distributed import run_replica

        return run_replica(settings)
    from msmtrec.training.process_group import replica_env

    try:
        replicas = replica_env()
    except ValueError:
        replicas = None
    if replicas is not None and replicas[1] > 1:  # every rank would join as this scenario
        print(
            f"msmtrec client: invalid settings: started as one of {replicas[1]} processes "
            "(WORLD_SIZE): pass --distributed to train as one client across them"
        )
        return 2
    try:
        client = ScenarioClient(settings)
    except (ClientError, OSError) as exc:
        logging.getLogger("scenario_client").error("%s: %s", settings.scenario, exc)
        return 2
    return client.run()
