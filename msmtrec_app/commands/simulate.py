"""``msmtrec simulate``: the in-process federation over a data directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from msmtrec.experiment import ExperimentSettings
from msmtrec.federation.config import DEFAULT_METHOD, METHODS
from msmtrec.model.config import CTCVR_HEADS, PRESETS, TEMPLATES


def _default(name: str):
    """A protocol knob's default: the one in msmtrec.experiment's settings model."""
    return ExperimentSettings.model_fields[name].default


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="run a federation of every scenario in one process and print the AUC table",
        description="Every scenario directory under --data becomes a client. Prints one line "
        "per round, selects the round by mean validation AUC, and writes results.json, "
        "results.md and report.html (the dashboard's views of the run, one self-contained "
        "file) to --out (and auc_per_round.png with --plot).",
    )
    add_simulation_args(p)
    p.set_defaults(func=run)


def add_simulation_args(p: argparse.ArgumentParser) -> None:
    from msmtrec_app.cli import add_device_flags, add_threads_flag, existing_dir

    p.add_argument(
        "--data",
        type=existing_dir,
        required=True,
        help="directory of <scenario>/{train,test}.{csv,parquet}",
    )
    add_method_flag(p)
    p.add_argument(
        "--spec",
        dest="dataset",
        default=_default("dataset"),
        metavar="NAME|PATH",
        help="dataset spec the data follows: built-in aliexpress or tenrec, or a TOML/YAML "
        "spec file (columns, embedding tables, tasks)",
    )
    p.add_argument("--rounds", type=int, default=_default("rounds"), help="federated rounds")
    p.add_argument(
        "--preset", default=_default("preset"), choices=sorted(PRESETS), help="model sizes"
    )
    p.add_argument(
        "--seed", type=int, default=_default("seed"), help="seed of data splits, model and training"
    )
    p.add_argument("--scenarios", nargs="+", default=None, help="subset of scenarios")
    p.add_argument(
        "--valid-fraction",
        type=float,
        default=_default("valid_fraction"),
        help="tail of train held out for model selection",
    )
    p.add_argument(
        "--local-epochs", type=int, default=_default("local_epochs"), help="local epochs per round"
    )
    p.add_argument("--lr", type=float, default=_default("lr"), help="client learning rate")
    p.add_argument(
        "--weight-decay", type=float, default=_default("weight_decay"), help="client weight decay"
    )
    p.add_argument(
        "--batch-size", type=int, default=_default("batch_size"), help="client batch size"
    )
    p.add_argument(
        "--template",
        choices=TEMPLATES,
        default=None,
        help="override the method's parameter template",
    )
    p.add_argument(
        "--ctcvr-head", choices=CTCVR_HEADS, default=None, help="CTCVR head (method default)"
    )
    p.add_argument("--mu", type=float, default=None, help="regularizer weight (method default)")
    p.add_argument(
        "--conflict",
        choices=("ca", "pcgrad", "none"),
        default=None,
        help="expert conflict coordination (method default)",
    )
    p.add_argument(
        "--ca-alpha", type=float, default=None, help="conflict-averse radius (method default)"
    )
    p.add_argument(
        "--ca-rescale",
        choices=("alpha", "alpha_sq", "none"),
        default=None,
        help="rescale of the conflict-averse update (method default)",
    )
    p.add_argument(
        "--template-l2",
        type=float,
        default=None,
        help="λ of (λ/2)‖W_S, W_T‖², shrinking experts to W_G (method default)",
    )
    sample = p.add_mutually_exclusive_group()
    sample.add_argument(
        "--clients-per-round",
        type=int,
        default=None,
        help="partial participation: clients sampled per round (deterministic by seed)",
    )
    sample.add_argument(
        "--client-fraction",
        type=float,
        default=None,
        help="partial participation: fraction of the clients sampled per round (rounded up)",
    )
    p.add_argument(
        "--personal-form",
        choices=("add", "interp"),
        default=None,
        help="personalized aggregation: interp mixes the own delta and the shared update by a; "
        "add puts a times the shared update on top (method default)",
    )
    p.add_argument(
        "--hyper-grad",
        choices=("raw", "cosine"),
        default=None,
        help="hyper-gradient of a, b: raw or cosine-normalised (method default)",
    )
    p.add_argument(
        "--attention-temperature",
        type=float,
        default=None,
        help="τ of the tower attention softmax(cos/τ); unset: FedHCA²'s scaled dot product",
    )
    p.add_argument("--init-weight", type=float, default=None, help="initial a, b (method default)")
    p.add_argument(
        "--hyper-lr", type=float, default=None, help="learning rate of a, b (method default)"
    )
    p.add_argument("--ditto-lambda", type=float, default=None, help="ditto's λ (ditto only)")
    p.add_argument(
        "--finetune-epochs", type=int, default=None, help="fedavg-ft's most epochs (fedavg-ft only)"
    )
    p.add_argument(
        "--head-epochs", type=int, default=None, help="FedRep's head epochs (fedrep only)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/simulate"),
        help="directory for results.json, results.md, report.html",
    )
    p.add_argument("--plot", action="store_true", help="write auc_per_round.png")
    p.add_argument(
        "--tensorboard",
        type=Path,
        default=None,
        help="directory for TensorBoard event files: per round AUC per scenario × task, "
        "loss, seconds, personalization weights",
    )
    p.add_argument("--progress", action="store_true", help="progress bar per local epoch")
    p.add_argument(
        "--stream-buffer-rows",
        type=int,
        default=0,
        help="> 0: stream each train split from Parquet through a shuffle buffer of this many "
        "rows (data larger than memory; another row order than in memory); 0: in memory",
    )
    p.add_argument(
        "--publish-to",
        type=Path,
        default=None,
        help="model registry directory to publish every scenario's model to",
    )
    p.add_argument(
        "--publish-policy",
        choices=("latest", "best-valid"),
        default="latest",
        help="latest: serve every new round; best-valid: serve a new version only if its "
        "mean validation AUC is at least the served one's",
    )
    add_privacy_args(p)
    add_threads_flag(p)
    add_device_flags(p)


def add_privacy_args(p: argparse.ArgumentParser) -> None:
    """The record-level differential privacy flags (docs/PRIVACY.md), shared with ``up``."""
    g = p.add_argument_group("differential privacy (DP-SGD of every client's training)")
    g.add_argument(
        "--dp-epsilon",
        type=float,
        default=None,
        help="ε budget per client over all rounds (unset: no DP)",
    )
    g.add_argument("--dp-delta", type=float, default=None, help="δ (default 1/training rows)")
    g.add_argument(
        "--dp-max-grad-norm", type=float, default=None, help="per-sample clip C (default 1.0)"
    )
    g.add_argument(
        "--dp-noise-multiplier",
        type=float,
        default=None,
        help="fixed noise multiplier σ instead of calibrating it to --dp-epsilon",
    )
    g.add_argument(
        "--dp-noise-seed",
        type=int,
        default=None,
        help="seed of DP sampling and noise (simulate: default --seed; up: a secret one)",
    )


def privacy_from_args(args: argparse.Namespace):
    """The :class:`~msmtrec.training.config.PrivacyConfig` of the ``--dp-*`` flags, or None
    (through :class:`msmtrec.experiment.PrivacySettings`, as the clients read theirs)."""
    from msmtrec.experiment import PrivacySettings

    try:
        privacy = PrivacySettings.from_values(args).privacy()
    except ValueError as exc:
        raise SystemExit(f"error: {_flag_names(str(exc))}") from None
    precision = getattr(args, "precision", "fp32")
    if privacy is not None and precision != "fp32":
        raise SystemExit(
            f"error: --precision {precision} with differential privacy (--dp-epsilon / "
            "--dp-noise-multiplier): private training runs in fp32 only"
        )
    return privacy


def _flag_names(message: str) -> str:
    """A settings message in flag spelling (``dp_delta`` → ``--dp-delta``)."""
    return message.replace("dp_", "--dp-").replace("_", "-")


def add_method_flag(p: argparse.ArgumentParser, default: str = DEFAULT_METHOD) -> None:
    """``--method`` (the one name, as in ``up`` and ``aggregator``); ``--strategy`` is still
    accepted, unlisted, for scripts written before the rename."""
    p.add_argument(
        "--method",
        dest="method",
        default=default,
        choices=METHODS,
        help="federation method or baseline (docs/METHOD.md)",
    )
    p.add_argument(
        "--strategy", dest="method", choices=METHODS, default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )  # fmt: skip


def experiment_from_args(args: argparse.Namespace) -> ExperimentSettings:
    """The flags as the one experiment settings model (msmtrec.experiment); a bad value is a
    SystemExit naming the field."""
    from pydantic import ValidationError

    from msmtrec.experiment import field_errors

    try:
        return ExperimentSettings.from_values(args)
    except ValidationError as exc:
        raise SystemExit(f"error: {field_errors(exc)}") from None


def config_from_args(args: argparse.Namespace):
    """The simulation's configuration: the experiment's protocol plus this run's own
    settings (scenarios, progress, device, precision, privacy, streaming)."""
    if getattr(args, "stream_buffer_rows", 0) < 0:
        raise SystemExit(f"error: --stream-buffer-rows must be >= 0, got {args.stream_buffer_rows}")
    return experiment_from_args(args).simulation_config(
        args.data,
        scenarios=tuple(args.scenarios) if args.scenarios else None,
        progress=args.progress,
        stream_buffer_rows=getattr(args, "stream_buffer_rows", 0),
        device=getattr(args, "device", "cpu"),
        precision=getattr(args, "precision", "fp32"),
        privacy=privacy_from_args(args),
    )


def run(args: argparse.Namespace) -> int:
    import json

    from aggregator.dashboard import write_static_report
    from msmtrec.device import device_name, resolve_device
    from msmtrec.simulation import run_simulation, write_report
    from msmtrec_app.cli import check_device_available

    if not check_device_available(args.device, "simulate"):
        return 2
    config = config_from_args(args)
    try:
        config.resolved()  # a knob the method lacks or a bad value: one line, not a traceback
    except ValueError as exc:
        print(f"msmtrec simulate: {exc}", file=sys.stderr)
        return 2
    print(f"clients train on {device_name(resolve_device(config.device))} in {config.precision}")
    on_round = None
    if args.publish_to is not None:
        from msmtrec.registry import publisher_for_simulation

        on_round = publisher_for_simulation(args.publish_to, config, policy=args.publish_policy)
    result = run_simulation(config, on_round=on_round)
    print()
    print(result.markdown())
    paths = write_report(result, args.out, plot=args.plot)
    results = json.loads(paths["json"].read_text())  # exactly what results.json says
    paths["html"] = write_static_report(results, args.out / "report.html")
    if args.tensorboard is not None:
        write_tensorboard(results, args.tensorboard)
        paths["tensorboard"] = args.tensorboard
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def write_tensorboard(results: dict, logdir: Path) -> None:
    """A finished run's history (results.json's) as TensorBoard event files, one step per
    round (tags: servicekit.tracking)."""
    from servicekit.tracking import TensorBoardTracker

    tracker = TensorBoardTracker(logdir)
    try:
        for rec in results["history"]:
            step = rec["round"]
            for split in ("valid", "test"):
                for scenario, per_task in (rec.get(split) or {}).items():
                    tracker.auc(step, split, scenario, per_task)
            for scenario, loss in (rec.get("train_loss") or {}).items():
                tracker.scalar(f"loss/train/{scenario}", loss, step)
            tracker.scalar("seconds/round", rec.get("seconds"), step)
            tracker.personalization(step, rec.get("personalization"))
    finally:
        tracker.close()
