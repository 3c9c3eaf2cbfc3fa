"""What ``msmtrec up`` prepares before any process starts: directories, data, secrets.

Each ``up`` starts a fresh federation in the run directory (aggregator state, client state,
registry and logs are replaced); synthetic data is reused while its settings match, and
tokens are fresh unless ``--tokens-dir`` names existing ones.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from msmtrec_app.commands.deploy import DEFAULT_SCENARIOS
from msmtrec_app.commands.up.common import UpError, say

if TYPE_CHECKING:
    from msmtrec.data.schema import FeatureSchema

EXAMPLE_ROWS = 3
FRESH_EACH_RUN = ("aggregator", "clients", "registry", "logs", "examples", "config")


def prepare_dirs(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    for sub in FRESH_EACH_RUN:
        shutil.rmtree(run_dir / sub, ignore_errors=True)
    (run_dir / "logs").mkdir()
    (run_dir / "examples").mkdir()


def prepare_data(args: argparse.Namespace, run_dir: Path) -> tuple[list[str], Path]:
    """The scenarios and the data directory: ``--data`` as given, or synthetic data in
    ``run_dir/data`` (written again only when its settings changed)."""
    if args.data is not None:
        from msmtrec.data.loader import list_scenarios

        if not args.data.is_dir():
            raise UpError(f"--data {args.data} is not a directory")
        found = list_scenarios(args.data)
        scenarios = list(args.scenarios or found)
        missing = [s for s in scenarios if s not in found]
        if missing:
            raise UpError(f"no train file for {missing} under {args.data} (found {found})")
        data_dir = args.data.resolve()
        say(f"data: {data_dir} ({' '.join(scenarios)})")
        return scenarios, data_dir
    from msmtrec.data.synth import SynthConfig
    from msmtrec_app.commands.deploy import init_data

    dataset = getattr(args, "dataset", None)
    if dataset not in (None, "aliexpress"):
        raise UpError(
            f"--spec {dataset} needs --data: the synthetic data up writes follows the "
            "aliexpress spec"
        )
    scenarios = list(args.scenarios or DEFAULT_SCENARIOS)
    data_dir = (run_dir / "data").resolve()
    test_rows = args.test_rows or max(1, args.rows // 4)
    config = SynthConfig(
        scenarios=tuple(scenarios), train_rows=args.rows, test_rows=test_rows, seed=args.seed
    )
    summary = data_dir / "synth.json"
    if summary.exists():
        try:
            previous = json.loads(summary.read_text())["config"]
        except (ValueError, KeyError):
            previous = None
        if previous != json.loads(json.dumps(config.to_dict())):
            shutil.rmtree(data_dir)  # other rows/seed/scenarios: make it again
    if (data_dir / "synth.json").exists():
        say(f"data: synthetic, reusing {data_dir}")
        return scenarios, data_dir
    t0 = time.monotonic()
    say(
        f"data: writing synthetic AliExpress-schema data for {' '.join(scenarios)} "
        f"({args.rows} train / {test_rows} test rows each) to {data_dir}"
    )
    try:
        init_data(data_dir, config)
    except ValueError as exc:
        raise UpError(str(exc)) from exc
    say(f"data: done in {time.monotonic() - t0:.1f} s")
    return scenarios, data_dir


def prepare_secrets(
    args: argparse.Namespace, run_dir: Path, scenarios: list[str]
) -> dict[str, Path]:
    """Token files (and TLS material with --tls). Development only: random, 0600, in the
    run directory, replaced on every run unless --tokens-dir is given."""
    from servicekit.auth import make_tokens

    if args.tokens_dir is not None:
        tdir = args.tokens_dir
        paths = {"tokens": tdir / "tokens.yaml"}
        paths.update({s: tdir / f"{s}.token" for s in scenarios})
        absent = [str(p) for p in paths.values() if not p.is_file()]
        if absent:
            raise UpError(f"--tokens-dir lacks {', '.join(absent)}")
    else:
        paths = make_tokens(scenarios, run_dir / "secrets")
        say(f"tokens: fresh development tokens in {run_dir / 'secrets'} (mode 0600)")
    if args.tls:
        from servicekit.certs import make_dev_certs

        hosts = list(dict.fromkeys([args.host, "127.0.0.1", "localhost"]))
        certs = make_dev_certs(run_dir / "secrets" / "tls", (), hosts, 7)
        paths.update({f"tls:{k}": v for k, v in certs.items()})
        say(f"tls: development CA and server certificate in {run_dir / 'secrets/tls'}")
    return {k: Path(v).resolve() for k, v in paths.items()}


def example_instances(
    data_dir: Path, scenario: str, n: int = EXAMPLE_ROWS, schema: FeatureSchema | None = None
) -> tuple[list, dict]:
    """The first ``n`` rows of the scenario's test file as gateway instances (feature name →
    JSON number), and their labels (label name → values) for display; columns from the
    dataset spec's ``schema`` (default: AliExpress)."""
    from msmtrec.data.loader import find_split_file
    from msmtrec.data.schema import ALIEXPRESS

    schema = schema or ALIEXPRESS

    path = find_split_file(Path(data_dir) / scenario, "test")
    if path is None:
        raise UpError(f"no test file in {Path(data_dir) / scenario} for the example prediction")
    columns = [*schema.feature_columns, *schema.labels]
    if path.suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        batch = next(pq.ParquetFile(path).iter_batches(batch_size=n, columns=columns))
        frame = batch.to_pandas()
    else:
        import pandas as pd

        frame = pd.read_csv(path, usecols=columns, nrows=n)
    cat = set(schema.categorical)
    instances = [
        {c: int(row[c]) if c in cat else float(row[c]) for c in schema.feature_columns}
        for _, row in frame.iterrows()
    ]
    labels = {name: [int(v) for v in frame[name]] for name in schema.labels}
    return instances, labels
