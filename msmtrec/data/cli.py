"""``msmtrec data``: make synthetic data, prepare raw AliExpress files, validate a data dir.

Every ``SynthConfig`` knob is a flag, generated from the dataclass so a new knob can never be
forgotten here. ``data synth --family NAME [--strength X]`` starts from a data family
(``msmtrec.data.families``) and lets explicitly given knob flags override it.
Each command prints a short per-scenario summary (rows, click and conversion rates) and
returns a process exit code: 0 ok, 1 bad data or missing files.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["register"]

_SYNTH_HELP = {
    "scenarios": "scenario names, space or comma separated",
    "train_rows": "train rows per scenario (before --imbalance)",
    "test_rows": "test rows per scenario (before --imbalance)",
    "concept_shift": "0..1: share of the click/CVR score that is scenario specific",
    "covariate_shift": "0..1: how much feature distributions differ between scenarios",
    "task_correlation": "-1..1: correlation of the CTR and CVR latent scores",
    "ctr": "base click rate",
    "cvr": "base purchase rate given a click (conversion rate = ctr * cvr)",
    "imbalance": ">= 0: scenario i gets rows * exp(-imbalance * i)",
    "signal": "std of the feature-dependent logit part (higher = more predictable)",
    "test_drift": "0..1: extra covariate shift of test relative to train",
    "task_conflict": "0..1: scenarios at odd positions get task correlation * (1 - 2 * this)",
    "quantity_skew": ">= 1: the last scenario gets train rows / this (test rows unchanged)",
    "calibration": "scenario: intercepts fitted per scenario (rates hit --ctr/--cvr); shared: "
    "fitted once, so equal score functions give equal P(y|x)",
    "seed": "random seed (same seed and knobs -> byte-identical files)",
    "fmt": "output format",
}


def register(subparsers: Any) -> None:
    """Add ``data`` with subcommands ``synth``, ``prepare-aliexpress`` and ``validate``."""
    data = subparsers.add_parser("data", help="make, prepare or validate scenario data files")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda _args: _usage(data))

    synth = sub.add_parser(
        "synth",
        help="write synthetic multi-scenario data in the AliExpress processed schema",
        description=(
            "Write <out>/<scenario>/{train,test}.<format>, the true test probabilities "
            "<out>/<scenario>/test.oracle.parquet and <out>/synth.json. With --family, the "
            "family sets the knobs and knob flags given explicitly override it."
        ),
    )
    synth.add_argument("--out", type=Path, required=True, help="output directory")
    _add_family_flags(synth)
    _add_synth_flags(synth, explicit_only=True)
    synth.set_defaults(func=run_synth)

    prep = sub.add_parser(
        "prepare-aliexpress",
        help="build processed train/test files of one country from the raw Tianchi files",
        description=(
            "Join the raw user and item files of one country (Tianchi dataset 74690) on the "
            "search id and write <out>/<COUNTRY>/{train,test}.<format>."
        ),
    )
    prep.add_argument("--raw", type=Path, required=True, help="directory of the raw files")
    prep.add_argument("--country", required=True, help="country code, e.g. NL, ES, FR, US")
    prep.add_argument("--out", type=Path, required=True, help="output data directory")
    prep.add_argument(
        "--format", dest="fmt", choices=("csv", "parquet"), default="csv", help="file format"
    )
    for kind in ("user", "item"):
        for split in ("train", "test"):
            prep.add_argument(
                f"--{kind}-{split}",
                type=Path,
                default=None,
                help=f"explicit path of the raw {kind} {split} file (.csv, .csv.gz or .zip)",
            )
    prep.set_defaults(func=run_prepare)

    val = sub.add_parser(
        "validate",
        help="load every scenario of a data directory and report rows, rates and OOV ids",
    )
    val.add_argument("data_dir", type=Path, help="directory with one subdirectory per scenario")
    val.add_argument("--scenario", action="append", default=None, help="only these scenarios")
    val.set_defaults(func=run_validate)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _add_family_flags(parser: argparse.ArgumentParser) -> None:
    from msmtrec.data.families import FAMILIES, FAMILY_HELP, FAMILY_STRENGTHS

    lines = "; ".join(
        f"{name}: {FAMILY_HELP[name]} (low {FAMILY_STRENGTHS[name]['low']}, "
        f"high {FAMILY_STRENGTHS[name]['high']})"
        for name in FAMILIES
    )
    parser.add_argument(
        "--family",
        choices=FAMILIES,
        default=None,
        help=f"start from a data family (fieldpair is the held-out generator): {lines}",
    )
    parser.add_argument(
        "--strength",
        type=float,
        default=None,
        help="0..1: strength of the family's heterogeneity (default: the family's high)",
    )


def _add_synth_flags(parser: argparse.ArgumentParser, explicit_only: bool = False) -> None:
    """One flag per ``SynthConfig`` knob. ``explicit_only``: flags not given stay absent from
    the parsed namespace (so a family's settings can tell them from explicit ones)."""
    from msmtrec.data.synth import SynthConfig

    defaults = SynthConfig()
    for f in dataclasses.fields(SynthConfig):
        default = getattr(defaults, f.name)
        help_text = f"{_SYNTH_HELP.get(f.name, f.name)} (default: {_show(default)})"
        # argparse.SUPPRESS as the default: an absent flag sets no attribute at all.
        unset = argparse.SUPPRESS if explicit_only else None
        if f.name in ("fmt", "calibration"):
            parser.add_argument(
                _flag(f.name),
                dest=f.name,
                choices=("csv", "parquet") if f.name == "fmt" else ("scenario", "shared"),
                default=default if unset is None else unset,
                help=help_text,
            )
        elif f.name == "scenarios":
            parser.add_argument(
                "--scenarios",
                nargs="+",
                default=list(default) if unset is None else unset,
                metavar="NAME",
                help=help_text,
            )
        else:
            flag = "--" + f.name.replace("_", "-")
            parser.add_argument(
                flag,
                dest=f.name,
                type=type(default),
                default=default if unset is None else unset,
                help=help_text,
            )


def _flag(name: str) -> str:
    return "--format" if name == "fmt" else "--" + name.replace("_", "-")


def _show(value: Any) -> str:
    return " ".join(value) if isinstance(value, tuple) else str(value)


def _split_names(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(name for v in values for name in v.split(",") if name)


def _print_table(rows: list[tuple[str, str, int, float | None, float | None]]) -> None:
    print(f"{'scenario':<10} {'split':<6} {'rows':>10} {'click rate':>11} {'conv. rate':>11}")
    for scenario, split, n, ctr, ctcvr in rows:
        c = f"{ctr:.4f}" if ctr is not None else "n/a"
        v = f"{ctcvr:.5f}" if ctcvr is not None else "n/a"
        print(f"{scenario:<10} {split:<6} {n:>10} {c:>11} {v:>11}")


def _fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1


def run_synth(args: argparse.Namespace) -> int:
    from msmtrec.data.families import family_config, synthesize_family
    from msmtrec.data.synth import SynthConfig, synthesize

    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(SynthConfig)
        if hasattr(args, f.name)
    }
    if "scenarios" in given:
        given["scenarios"] = _split_names(given["scenarios"])
    try:
        if args.family is None:
            if args.strength is not None:
                raise ValueError("--strength needs --family")
            config = SynthConfig(**given)
            summary = synthesize(args.out, config)
        else:
            if args.strength is not None and not 0.0 <= args.strength <= 1.0:
                raise ValueError(f"--strength must be in [0, 1], got {args.strength}")
            known = {f.name for f in dataclasses.fields(type(family_config(args.family)))}
            foreign = [_flag(name) for name in given if name not in known]
            if foreign:
                raise ValueError(f"{', '.join(foreign)} does not apply to --family {args.family}")
            config = family_config(args.family, args.strength, **given)
            summary = synthesize_family(args.out, args.family, args.strength, **given)
    except ValueError as exc:
        return _fail(exc)
    rows = []
    for name, s in summary["scenarios"].items():
        rows.append((name, "train", s["train_rows"], s["train_ctr"], s["train_ctcvr"]))
        rows.append((name, "test", s["test_rows"], s["test_ctr"], s["test_ctcvr"]))
    print(f"wrote {len(rows) // 2} scenarios ({config.fmt}) to {args.out}")
    _print_table(rows)
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from msmtrec.data.aliexpress_raw import prepare_aliexpress
    from msmtrec.data.loader import DataValidationError

    try:
        summary = prepare_aliexpress(
            args.raw,
            args.country,
            args.out,
            fmt=args.fmt,
            user_train=args.user_train,
            item_train=args.item_train,
            user_test=args.user_test,
            item_test=args.item_test,
        )
    except (DataValidationError, FileNotFoundError, ValueError) as exc:
        return _fail(exc)
    country = summary["country"]
    print(f"wrote {args.out / country} ({args.fmt})")
    _print_table(
        [
            (country, split, summary[split]["rows"], summary[split]["ctr"], summary[split]["ctcvr"])
            for split in ("train", "test")
        ]
    )
    for split in ("train", "test"):
        s = summary[split]
        notes = []
        if s["unmatched_items"]:
            notes.append(f"{s['unmatched_items']} items without a user row were dropped")
        if s["duplicate_search_ids"]:
            notes.append(f"{s['duplicate_search_ids']} duplicate search ids in the user file")
        if any(s["ids_beyond_vocab"]):
            notes.append(
                f"ids beyond the schema vocabulary (-> OOV) per field: {s['ids_beyond_vocab']}"
            )
        for note in notes:
            print(f"note ({split}): {note}")
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from msmtrec.data.loader import DataValidationError, list_scenarios, load_scenario

    try:
        names = (
            _split_names(args.scenario) if args.scenario else tuple(list_scenarios(args.data_dir))
        )
        if not names:
            raise FileNotFoundError(f"no scenario with a train file under {args.data_dir}")
        rows = []
        oov_notes = []
        for name in names:
            splits = load_scenario(args.data_dir, name)
            for split in ("train", "valid", "test"):
                d = getattr(splits, split)
                n = len(d)
                ctr = float(d.labels[:, 0].mean()) if n else None
                ctcvr = float(d.labels[:, 1].mean()) if n else None
                rows.append((name, split, n, ctr, ctcvr))
                if d.oov_counts is not None and d.oov_counts.any():
                    oov_notes.append(f"{name}/{split}: OOV ids per field {d.oov_counts.tolist()}")
    except (DataValidationError, FileNotFoundError) as exc:
        return _fail(exc)
    _print_table(rows)
    for note in oov_notes:
        print(f"note: {note}")
    print("ok")
    return 0
