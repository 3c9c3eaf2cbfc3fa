"""``msmtrec data``: make synthetic data, prepare raw AliExpress or Tenrec files, validate a
data dir.

Every ``SynthConfig`` knob is a flag, generated from the dataclass so a new knob can never be
forgotten here. ``data synth --family NAME [--strength X]`` starts from a data family
(``msmtrec.data.families``) and lets explicitly given knob flags override it.
``data synth --spec tenrec`` runs the Tenrec-layout generator (``msmtrec.data.synth_tenrec``)
instead; its knobs are flags too, and a flag of the other generator is refused.
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
    synth.add_argument(
        "--spec",
        choices=("aliexpress", "tenrec"),
        default="aliexpress",
        help="aliexpress: the processed AliExpress schema (default); tenrec: raw Tenrec video "
        "files under <out>/raw with power-law ids, prepared into <out>/<scenario>/",
    )
    _add_family_flags(synth)
    _add_synth_flags(synth, explicit_only=True)
    _add_tenrec_flags(synth)
    synth.set_defaults(func=run_synth)

    tenrec = sub.add_parser(
        "prepare-tenrec",
        help="build processed train/test Parquet files from the raw Tenrec files",
        description=(
            "Turn each raw Tenrec file under --raw (QK-video.csv, QB-video.csv, and the "
            "article files when their columns fit the tenrec spec) into one scenario "
            "<out>/<name>/{train,test}.parquet: tasks click and like, raw ids (hashed by the "
            "spec at load time), a deterministic train/test split by --seed. Streams the "
            "CSV in chunks."
        ),
    )
    tenrec.add_argument("--raw", type=Path, required=True, help="directory of the raw files")
    tenrec.add_argument("--out", type=Path, required=True, help="output data directory")
    tenrec.add_argument(
        "--scenarios", nargs="+", default=None, metavar="NAME",
        help="only these files, by name (e.g. QK-video); default: every file present",
    )  # fmt: skip
    tenrec.add_argument("--max-rows", type=int, default=None, help="first N rows of each file")
    tenrec.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    tenrec.add_argument(
        "--test-fraction", type=float, default=0.2, help="share of rows in test (default 0.2)"
    )
    tenrec.set_defaults(func=run_prepare_tenrec)

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
    val.add_argument(
        "--spec", default="aliexpress", help="dataset spec: built-in name or TOML/YAML path"
    )
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


_TENREC_HELP = {
    "rows": "raw rows per scenario (split train/test by the preparer)",
    "users": "distinct user ids available (millions for a realistic table)",
    "items": "distinct item ids available",
    "popularity": "> 0: power-law exponent of id popularity",
    "like_given_click": "P(like | click) at a zero score",
    "test_fraction": "share of rows in test",
}
# knobs the two generators share (the SynthConfig flag serves both)
_SHARED_KNOBS = ("scenarios", "seed", "signal", "concept_shift", "ctr")


def _add_tenrec_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of the Tenrec generator's own knobs (absent unless given)."""
    from msmtrec.data.synth_tenrec import TenrecSynthConfig

    defaults = TenrecSynthConfig()
    for name, text in _TENREC_HELP.items():
        default = getattr(defaults, name)
        parser.add_argument(
            _flag(name),
            dest=f"tenrec_{name}",
            type=type(default),
            default=argparse.SUPPRESS,
            help=f"--spec tenrec: {text} (default: {default})",
        )


def _flag(name: str) -> str:
    return "--format" if name == "fmt" else "--" + name.replace("_", "-")


def _show(value: Any) -> str:
    return " ".join(value) if isinstance(value, tuple) else str(value)


def _split_names(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(name for v in values for name in v.split(",") if name)


def _print_table(
    rows: list[tuple[str, str, int, float | None, float | None]],
    rates: tuple[str, str] = ("click rate", "conv. rate"),
) -> None:
    print(f"{'scenario':<10} {'split':<6} {'rows':>10} {rates[0]:>11} {rates[1]:>11}")
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
    tenrec_given = {
        k[len("tenrec_") :]: v for k, v in vars(args).items() if k.startswith("tenrec_")
    }
    if args.spec == "tenrec":
        return _run_synth_tenrec(args, given, tenrec_given)
    if tenrec_given:
        flags = ", ".join(_flag(k) for k in tenrec_given)
        return _fail(ValueError(f"{flags} applies to --spec tenrec only"))
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


def _run_synth_tenrec(
    args: argparse.Namespace, given: dict[str, Any], tenrec_given: dict[str, Any]
) -> int:
    from msmtrec.data.synth_tenrec import TenrecSynthConfig, synthesize_tenrec

    foreign = [_flag(k) for k in given if k not in _SHARED_KNOBS]
    if args.family is not None or args.strength is not None:
        foreign.append("--family/--strength")
    try:
        if foreign:
            raise ValueError(f"{', '.join(foreign)} does not apply to --spec tenrec")
        config = TenrecSynthConfig(**given, **tenrec_given)
        summary = synthesize_tenrec(args.out, config)
    except ValueError as exc:
        return _fail(exc)
    print(
        f"wrote {len(config.scenarios)} Tenrec-layout scenarios to {args.out} (raw: {args.out}/raw)"
    )
    _print_tenrec(summary["scenarios"])
    return 0


def _print_tenrec(scenarios: dict[str, Any]) -> None:
    print(f"{'scenario':<12} {'split':<6} {'rows':>10} {'click rate':>11} {'like rate':>11}")
    for name, s in scenarios.items():
        for split in ("train", "test"):
            d = s[split]
            c, lk = d.get("click_rate"), d.get("like_rate")
            cs = f"{c:.4f}" if c is not None else "n/a"
            ls = f"{lk:.5f}" if lk is not None else "n/a"
            print(f"{name:<12} {split:<6} {d['rows']:>10} {cs:>11} {ls:>11}")
        if "oracle_test_auc" in s:
            auc = s["oracle_test_auc"]
            print(
                f"note ({name}): oracle test AUC click {auc['click']:.4f}, like {auc['like']:.4f}"
            )


def run_prepare_tenrec(args: argparse.Namespace) -> int:
    from msmtrec.data.loader import DataValidationError
    from msmtrec.data.tenrec_raw import prepare_tenrec

    try:
        summary = prepare_tenrec(
            args.raw,
            args.out,
            scenarios=_split_names(args.scenarios) if args.scenarios else None,
            max_rows=args.max_rows,
            seed=args.seed,
            test_fraction=args.test_fraction,
        )
    except (DataValidationError, FileNotFoundError, ValueError) as exc:
        return _fail(exc)
    for name, reason in summary["skipped"].items():
        print(f"skipped {name}: {reason}")
    print(f"wrote {len(summary['scenarios'])} scenarios (parquet) to {args.out}")
    _print_tenrec(summary["scenarios"])
    for name, s in summary["scenarios"].items():
        if s["labels_clipped_to_parent"]:
            print(
                f"note ({name}): {s['labels_clipped_to_parent']} chained labels without "
                "their parent (like without click) set to 0"
            )
        over = {k: v for k, v in s["ids_beyond_vocab"].items() if v}
        if over:
            print(f"note ({name}): ids beyond the spec's vocabulary (-> OOV): {over}")
        if s["columns"]:
            print(f"note ({name}): columns used in place of the spec's: {s['columns']}")
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
    from msmtrec.data.spec_file import SpecError, load_spec

    try:
        spec = load_spec(args.spec)
    except SpecError as exc:
        return _fail(exc)
    if spec.num_tasks != 2:
        print(f"tasks: {', '.join(spec.tasks)} (the table shows the first two label rates)")
    try:
        names = (
            _split_names(args.scenario)
            if args.scenario
            else tuple(list_scenarios(args.data_dir, spec))
        )
        if not names:
            raise FileNotFoundError(f"no scenario with a train file under {args.data_dir}")
        rows = []
        oov_notes = []
        for name in names:
            splits = load_scenario(args.data_dir, name, spec)
            for split in ("train", "valid", "test"):
                d = getattr(splits, split)
                n = len(d)
                ctr = float(d.labels[:, 0].mean()) if n else None
                ctcvr = float(d.labels[:, 1].mean()) if n and spec.num_tasks > 1 else None
                rows.append((name, split, n, ctr, ctcvr))
                if d.oov_counts is not None and d.oov_counts.any():
                    oov_notes.append(f"{name}/{split}: OOV ids per field {d.oov_counts.tolist()}")
    except (DataValidationError, FileNotFoundError) as exc:
        return _fail(exc)
    if spec.name == "aliexpress":
        _print_table(rows)
    else:
        second = f"{spec.labels[1]} rate" if spec.num_tasks > 1 else "-"
        _print_table(rows, (f"{spec.labels[0]} rate", second))
    for note in oov_notes:
        print(f"note: {note}")
    print("ok")
    return 0
