"""Per-scenario bearer tokens: a credential names exactly one scenario.

Why: the scenario id must be bound to the credential that presents it, so a client cannot
join, download or submit as another scenario (DESIGN.md, "Identity"). Tokens are compared
with ``hmac.compare_digest`` against every entry (no early exit, so timing does not reveal
which scenario a guess was close to), never logged, and loaded from a file or the
environment, never from a command line.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import yaml
from pydantic import SecretStr

from msmtrec.identity import check_scenario_name

MIN_TOKEN_CHARS = 16


class TokenTable:
    """scenario → token. Identifies which scenario (if any) a presented token belongs to."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        seen: dict[str, str] = {}
        for scenario, token in tokens.items():
            check_scenario_name(scenario)
            if len(token) < MIN_TOKEN_CHARS:
                raise ValueError(
                    f"token of scenario {scenario} is shorter than {MIN_TOKEN_CHARS} characters"
                )
            if token in seen:
                raise ValueError(f"scenarios {seen[token]} and {scenario} share a token")
            seen[token] = scenario
        self._tokens = {s: t.encode() for s, t in tokens.items()}

    @property
    def scenarios(self) -> list[str]:
        return sorted(self._tokens)

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def identify(self, presented: str | None) -> str | None:
        """The scenario owning ``presented``, or None. Compares against every entry."""
        if not presented:
            return None
        candidate = presented.encode()
        found = None
        for scenario, token in self._tokens.items():
            if hmac.compare_digest(candidate, token):
                found = scenario
        return found

    def __repr__(self) -> str:  # never print tokens
        return f"TokenTable(scenarios={self.scenarios})"


def read_tokens_file(path: Path) -> dict[str, str]:
    """A YAML or JSON mapping scenario → token."""
    text = Path(path).read_text()
    data = json.loads(text) if Path(path).suffix.lower() == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ValueError(f"tokens file {path} must map scenario names to token strings")
    return data


def load_tokens(file: Path | None, inline: Mapping[str, SecretStr] | None = None) -> TokenTable:
    tokens: dict[str, str] = {}
    if file is not None:
        tokens.update(read_tokens_file(file))
    for scenario, secret in (inline or {}).items():
        tokens[scenario] = secret.get_secret_value()
    return TokenTable(tokens)


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` metadata entry, if any."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def make_tokens(scenarios: Sequence[str], out_dir: Path) -> dict[str, Path]:
    """Random tokens: ``tokens.yaml`` for the aggregator, ``<scenario>.token`` per client
    (files readable by their owner only). Returns the written paths."""
    for s in scenarios:
        check_scenario_name(s)
    tokens = {s: secrets.token_urlsafe(32) for s in scenarios}
    out_dir = Path(out_dir)
    paths = {"tokens": out_dir / "tokens.yaml"}
    _write_private(paths["tokens"], yaml.safe_dump(tokens, sort_keys=True))
    for s, t in tokens.items():
        paths[s] = out_dir / f"{s}.token"
        _write_private(paths[s], t + "\n")
    return paths
