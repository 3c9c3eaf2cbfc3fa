"""Small networked federations for tests: data, tokens, and the aggregator/client command
lines, with free ports and per-test directories."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.processes import free_port
from msmtrec.data.synth import SynthConfig, synthesize
from servicekit.auth import make_tokens


def make_data(
    root: Path,
    scenarios: Sequence[str] = ("S0", "S1", "S2"),
    train_rows: int = 2000,
    test_rows: int = 500,
    seed: int = 0,
    sizes: dict[str, int] | None = None,
) -> Path:
    """Synthetic ``<root>/<scenario>/{train,test}.csv``; ``sizes`` overrides train rows of
    some scenarios (a slower client)."""
    root = Path(root)
    synthesize(
        root,
        SynthConfig(
            scenarios=tuple(scenarios), train_rows=train_rows, test_rows=test_rows, seed=seed
        ),
    )
    for name, rows in (sizes or {}).items():
        tmp = root.parent / f".{root.name}-{name}"
        synthesize(
            tmp,
            SynthConfig(scenarios=(name,), train_rows=rows, test_rows=test_rows, seed=seed + 1),
        )
        shutil.rmtree(root / name)
        shutil.move(str(tmp / name), str(root / name))
        shutil.rmtree(tmp)
    return root


def _flags(settings: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in settings.items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, list | tuple):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out


@dataclass
class Federation:
    root: Path
    data: Path
    scenarios: tuple[str, ...]
    port: int
    status_port: int

    @classmethod
    def create(
        cls, root: Path, scenarios: Sequence[str] = ("S0", "S1", "S2"), **data_kwargs: Any
    ) -> Federation:
        root = Path(root)
        data = make_data(root / "data", scenarios, **data_kwargs)
        make_tokens(list(scenarios), root / "tokens")
        return cls(root, data, tuple(scenarios), free_port(), free_port())

    @property
    def state_dir(self) -> Path:
        return self.root / "aggregator"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def token_file(self, scenario: str) -> Path:
        return self.root / "tokens" / f"{scenario}.token"

    def client_state_dir(self, scenario: str) -> Path:
        return self.root / "clients" / scenario

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.status_port}{path}"

    def aggregator_args(self, **settings: Any) -> list[str]:
        base = {
            "tokens_file": self.root / "tokens" / "tokens.yaml",
            "port": self.port,
            "status_port": self.status_port,
            "state_dir": self.state_dir,
            "threads": 1,
            "preset": "small",
            "min_clients": len(self.scenarios),
            "start_wait_seconds": 30,
            "round_deadline_seconds": 60,
            "heartbeat_interval_seconds": 1,
            "heartbeat_patience": 10,
        }
        return ["aggregator", *_flags({**base, **settings})]

    def client_args(self, scenario: str, **settings: Any) -> list[str]:
        base = {
            "scenario": scenario,
            "data": self.data,
            "aggregator": self.target,
            "token_file": self.token_file(scenario),
            "state_dir": self.client_state_dir(scenario),
            "threads": 1,
            "poll_seconds": 10,
            "reconnect_timeout_seconds": 90,
            "backoff_initial_seconds": 0.2,
            "backoff_max_seconds": 2,
        }
        return ["client", *_flags({**base, **settings})]
