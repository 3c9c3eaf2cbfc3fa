"""``msmtrec deploy``: the one-off steps of a container deployment.

    msmtrec deploy init-data --data DIR [--scenarios NL ES FR US] [synth knobs]
    msmtrec deploy dev-secrets --out deploy/secrets [--scenarios ...] [--hosts ...]

``init-data`` is the compose ``data-init`` service and the Kubernetes clients' init
container: it writes synthetic AliExpress-schema data for every scenario that has no data
yet and leaves real data alone, so the same deployment runs on a laptop with nothing mounted
and on real files once they are mounted. ``dev-secrets`` makes the bearer tokens and the
development TLS material that docker-compose.yml and deploy/k8s/kustomization.yaml read.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import stat
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from msmtrec.data.synth import SynthConfig

DEFAULT_SCENARIOS = ("NL", "ES", "FR", "US")
# Names the aggregator is reached by: the compose service, the Kubernetes Service (short and
# qualified, namespace msmtrec as in deploy/k8s/kustomization.yaml), and loopback.
DEFAULT_HOSTS = (
    "aggregator",
    "msmtrec-aggregator",
    "msmtrec-aggregator.msmtrec.svc",
    "msmtrec-aggregator.msmtrec.svc.cluster.local",
    "localhost",
    "127.0.0.1",
)


def register(sub: argparse._SubParsersAction) -> None:
    from msmtrec.data.cli import _add_synth_flags

    p = sub.add_parser("deploy", help="one-off deployment steps: init-data, dev-secrets")
    tools = p.add_subparsers(dest="deploy_command", metavar="STEP")
    p.set_defaults(func=lambda _args: (p.print_help(), 2)[1])

    init = tools.add_parser(
        "init-data",
        help="write synthetic data for every scenario without data; leave real data alone",
        description="For each scenario, <data>/<scenario>/ with a train and a test file is "
        "used as it is; a scenario with neither gets synthetic AliExpress-schema data (the "
        "knobs of `msmtrec data synth`); a scenario with only one of them is an error.",
    )
    init.add_argument("--data", type=Path, required=True, help="data directory")
    _add_synth_flags(init)  # --scenarios and every SynthConfig knob, as `data synth` has them
    init.set_defaults(func=run_init_data)

    sec = tools.add_parser(
        "dev-secrets",
        help="bearer tokens and development TLS certificates for compose and Kubernetes",
        description="Writes <out>/tokens/{tokens.yaml,<scenario>.token} and "
        "<out>/tls/{ca,server}.{pem,key}. Development only: use your own PKI and secret "
        "store in production.",
    )
    sec.add_argument(
        "--out", type=Path, default=Path("deploy/secrets"), help="where to write the secrets"
    )
    sec.add_argument(
        "--scenarios", nargs="+", default=list(DEFAULT_SCENARIOS), help="one token each"
    )
    sec.add_argument(
        "--hosts",
        nargs="+",
        default=list(DEFAULT_HOSTS),
        help="names and addresses in the server certificate (default: the compose service, "
        "the Kubernetes Service names and loopback)",
    )
    sec.add_argument("--days", type=int, default=90, help="certificate validity")
    sec.add_argument("--force", action="store_true", help="replace existing secrets")
    sec.set_defaults(func=run_dev_secrets)


# ------------------------------------------------------------------------------ init-data
def scenario_state(data_dir: Path, scenario: str) -> str:
    """``"present"`` (train and test files), ``"missing"`` (neither) or ``"partial"``."""
    from msmtrec.data.loader import find_split_file

    directory = data_dir / scenario
    if not directory.is_dir():
        return "missing"
    found = [find_split_file(directory, split) is not None for split in ("train", "test")]
    return "present" if all(found) else "partial" if any(found) else "missing"


def _chown_like(root: Path, paths: Sequence[Path]) -> None:
    """Give written files the owner of ``root``: when the init step runs as root over a host
    bind mount, the user who made the directory can still delete what it wrote."""
    if os.geteuid() != 0:
        return
    st = root.stat()
    for path in paths:
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)


def init_data(data_dir: Path, config: SynthConfig) -> dict[str, str]:
    """Synthesize the scenarios of ``config`` that have no data under ``data_dir``.

    Returns scenario → ``"present"`` (left alone) or ``"written"``. Raises ValueError for a
    scenario with a train file but no test file (or the reverse): guessing would either
    overwrite real data or train on half of it.
    """
    from msmtrec.data.synth import synthesize

    config.validate()
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    states = {s: scenario_state(data_dir, s) for s in config.scenarios}
    partial = [s for s, st in states.items() if st == "partial"]
    if partial:
        raise ValueError(
            f"{', '.join(str(data_dir / s) for s in partial)}: a train file without a test "
            "file (or the reverse); add the missing file or remove the directory"
        )
    missing = [s for s, st in states.items() if st == "missing"]
    result = {s: "present" for s in states if s not in missing}
    if not missing:
        return result
    # Write next to the target and rename the files into place (same file system: atomic),
    # so an interrupted init leaves only a dot-directory behind. Files, not the directory, are
    # moved because <data>/<scenario> may already exist as an empty mount point.
    moved: list[Path] = []
    with tempfile.TemporaryDirectory(prefix=".init-data-", dir=data_dir) as tmp:
        synthesize(Path(tmp), dataclasses.replace(config, scenarios=tuple(missing)))
        for s in missing:
            target = data_dir / s
            target.mkdir(exist_ok=True)
            for item in sorted((Path(tmp) / s).iterdir()):
                os.replace(item, target / item.name)
                moved.append(target / item.name)
            moved.append(target)
            result[s] = "written"
        os.replace(Path(tmp) / "synth.json", data_dir / "synth.json")
        moved.append(data_dir / "synth.json")
    for path in moved:
        path.chmod(0o755 if path.is_dir() else 0o644)  # clients run as another (non-root) user
    _chown_like(data_dir, moved)
    return result


def run_init_data(args: argparse.Namespace) -> int:
    from msmtrec.data.cli import _split_names
    from msmtrec.data.synth import SynthConfig

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SynthConfig)}
    values["scenarios"] = _split_names(values["scenarios"])
    try:
        result = init_data(args.data, SynthConfig(**values))
    except (ValueError, OSError) as exc:
        print(f"msmtrec deploy init-data: {exc}", file=sys.stderr)
        return 1
    for scenario, what in result.items():
        where = args.data / scenario
        if what == "present":
            print(f"{scenario}: using the data found in {where}")
        else:
            print(
                f"{scenario}: no data mounted; wrote synthetic data to {where} "
                f"({values['train_rows']} train / {values['test_rows']} test rows)"
            )
    return 0


# ---------------------------------------------------------------------------- dev-secrets
OWNER_ONLY = frozenset({"ca.key"})  # dev-secrets files no container mounts: 0600


def dev_secrets(
    out: Path,
    scenarios: Sequence[str] = DEFAULT_SCENARIOS,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 90,
) -> dict[str, Path]:
    """Tokens and TLS material for a container deployment; returns name → path.

    Permissions: the directories are 0700 (nobody else on the host gets in), the files the
    containers read 0644, the CA's private key 0600. Why readable files: docker compose
    mounts file secrets with their host owner and mode (outside swarm it cannot change
    them), and the services run as uid 10001, not as you; a 0600 file would be unreadable
    inside the container. The CA key is mounted nowhere (it only signs, here), so it stays
    yours alone: whoever holds it can mint certificates the clients trust.
    """
    from servicekit.auth import make_tokens
    from servicekit.certs import make_dev_certs

    out = Path(out)
    paths: dict[str, Path] = {}
    for name, path in make_tokens(list(scenarios), out / "tokens").items():
        paths["tokens.yaml" if name == "tokens" else f"{name}.token"] = path
    paths.update(make_dev_certs(out / "tls", (), list(hosts), days))
    for directory in (out, out / "tokens", out / "tls"):
        directory.chmod(stat.S_IRWXU)
    for name, path in paths.items():
        path.chmod(0o600 if name in OWNER_ONLY else 0o644)
    return paths


def run_dev_secrets(args: argparse.Namespace) -> int:
    existing = [p for p in (args.out / "tokens", args.out / "tls") if p.exists()]
    if existing and not args.force:
        print(
            f"msmtrec deploy dev-secrets: {args.out} already holds secrets; a running "
            "deployment uses them. Pass --force to replace them.",
            file=sys.stderr,
        )
        return 1
    try:
        paths = dev_secrets(args.out, args.scenarios, args.hosts, args.days)
    except (ValueError, OSError) as exc:
        print(f"msmtrec deploy dev-secrets: {exc}", file=sys.stderr)
        return 1
    for name, path in sorted(paths.items()):
        print(f"{name:16s} {path}")
    print(
        f"development secrets only (directories 0700; files 0644 so the containers' non-root "
        f"user can read them, except the CA key, 0600); server certificate names: "
        f"{' '.join(args.hosts)}"
    )
    return 0
