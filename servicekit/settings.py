"""One settings model per service, fed by flags, environment variables and a config file.

Why: operators set a knob wherever suits their deployment (a flag on a laptop, an environment
variable in a container, a file in a config map) and should find the same name and the same
documented default everywhere. Each service declares its knobs once, as a pydantic-settings
model; this module derives the argparse flags and the documentation table from that model,
so the three spellings cannot drift apart.

Precedence (highest first): command-line flag, environment variable (``<PREFIX><NAME>``),
config file (YAML, TOML or JSON; either flat keys or the keys under the service's section,
e.g. ``aggregator:``), the documented default.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import SecretStr
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource

_FILE_VALUES: ContextVar[dict[str, Any] | None] = ContextVar("_FILE_VALUES", default=None)
S = TypeVar("S", bound="ServiceSettings")
NO_CLI = {"cli": False}  # json_schema_extra for knobs that must not be set on a command line


class ServiceSettings(BaseSettings):
    """Base for service settings. Subclasses set ``model_config`` (with ``env_prefix``) and
    ``section`` (the config file section that holds their keys)."""

    section: ClassVar[str] = ""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        file_source = InitSettingsSource(settings_cls, init_kwargs=dict(_FILE_VALUES.get() or {}))
        return init_settings, env_settings, file_source

    def public_dict(self) -> dict[str, Any]:
        """Values safe to print or serve: secrets masked."""
        out = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr) or (
                isinstance(value, Mapping) and any(isinstance(v, SecretStr) for v in value.values())
            ):
                value = "**********" if value else value
            elif isinstance(value, Path):
                value = str(value)
            out[name] = value
        return out


def read_config_file(path: Path, section: str = "") -> dict[str, Any]:
    """Keys of a YAML/TOML/JSON config file (those under ``section`` if that key exists)."""
    text = Path(path).read_text()
    suffix = Path(path).suffix.lower()
    if suffix == ".toml":
        data = tomllib.loads(text)
    elif suffix == ".json":
        data = json.loads(text)
    elif suffix in (".yaml", ".yml"):
        data = yaml.safe_load(text) or {}
    else:
        raise ValueError(f"config file {path}: use .yaml, .yml, .toml or .json")
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of settings")
    if section and isinstance(data.get(section), dict):
        data = data[section]
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def check_environment(cls: type[BaseSettings], environ: Mapping[str, str] | None = None) -> None:
    """Refuse variables with the service's prefix that name no setting.

    pydantic-settings ignores them, so a misspelt ``MSMTREC_AGGREGATOR_TLS_CLIENT_CA`` would
    silently leave mutual TLS off; config files are already strict (``extra="forbid"``).
    """
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    if not prefix:
        return
    known = [prefix + name.upper() for name in cls.model_fields]
    known.append(config_env(cls).upper())  # the config file's path, read by the CLI
    env = os.environ if environ is None else environ
    unknown = sorted(k for k in env if k.upper().startswith(prefix) and k.upper() not in known)
    if not unknown:
        return
    named = []
    for key in unknown:
        close = difflib.get_close_matches(key.upper(), known, n=1)
        named.append(f"{key} (did you mean {close[0]}?)" if close else key)
    raise ValueError(
        f"unknown environment variable{'s' if len(named) > 1 else ''} {', '.join(named)}: "
        f"no setting has that name (settings: {', '.join(sorted(known))})"
    )


def load_settings(
    cls: type[S], config_file: Path | None = None, overrides: Mapping[str, Any] | None = None
) -> S:
    """Settings from (highest first) ``overrides`` (flags), environment, ``config_file``."""
    check_environment(cls)
    values = read_config_file(config_file, cls.section) if config_file else {}
    token = _FILE_VALUES.set(values)
    try:
        return cls(**dict(overrides or {}))
    finally:
        _FILE_VALUES.reset(token)


def settings_from_file(cls: type[S], config_file: Path) -> S:
    """The settings a config file describes, its values winning over the environment: what
    a service started with ``--config FILE`` reads when its environment sets none of the
    file's keys (``msmtrec up`` removes those from its children's). Used to validate a file
    before any process is started; errors name the field."""
    check_environment(cls)
    return cls(**read_config_file(config_file, cls.section))


# ----------------------------------------------------------------------------- CLI flags
def _unwrap_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def flag_name(name: str, field: Any = None) -> str:
    """``--name-with-dashes``, or the field's own ``json_schema_extra={"flag": ...}`` (a
    setting whose key reads well in a file but whose flag has a shorter, established name,
    e.g. ``dataset`` → ``--spec``)."""
    extra = getattr(field, "json_schema_extra", None)
    if isinstance(extra, dict) and "flag" in extra:
        return str(extra["flag"])
    return "--" + name.replace("_", "-")


def _metavar(name: str, field: Any) -> str:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return str(extra.get("metavar", name.upper()))


def _cli_enabled(field: Any) -> bool:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return extra.get("cli", True)


def _default_text(cls: type[ServiceSettings], name: str) -> str:
    field = cls.model_fields[name]
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or "[]"
    if isinstance(value, dict):
        return "{}" if not value else json.dumps(value)
    return str(value)


def config_env(cls: type[BaseSettings]) -> str:
    """The variable naming a service's config file: ``<PREFIX>CONFIG``."""
    return f"{cls.model_config.get('env_prefix', '')}CONFIG"


def add_service_arguments(parser: argparse.ArgumentParser, cls: type[ServiceSettings]) -> None:
    """``--config FILE`` (default from :func:`config_env`) and one flag per setting."""
    env = config_env(cls)
    parser.add_argument(
        "--config",
        type=Path,
        default=os.environ.get(env),
        help=f"YAML/TOML/JSON settings file, keys named as the settings below (default: none; "
        f"env {env}). A flag given on the command line overrides the file's value, and so "
        "does an environment variable: flag > env > file > default",
    )
    add_settings_arguments(parser, cls)


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type[ServiceSettings]) -> None:
    """One flag per setting. Flags default to "not given", so env and file values survive."""
    prefix = cls.model_config.get("env_prefix", "")
    group = parser.add_argument_group(
        f"{cls.section or 'service'} settings",
        f"every flag also reads env {prefix}<NAME> and the --config file key <name>",
    )
    for name, field in cls.model_fields.items():
        if not _cli_enabled(field):
            continue
        annotation = _unwrap_optional(field.annotation)
        kwargs: dict[str, Any] = {
            "dest": f"setting__{name}",
            "default": argparse.SUPPRESS,
            "help": f"{field.description or ''} (default: {_default_text(cls, name)}; "
            f"env {prefix}{name.upper()})",
        }
        origin = typing.get_origin(annotation)
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            kwargs["choices"] = list(typing.get_args(annotation))
        elif origin in (list, tuple):
            inner = typing.get_args(annotation)[0] if typing.get_args(annotation) else str
            kwargs.update(nargs="+", type=inner, metavar=name.upper())
        elif annotation in (int, float, str, Path):
            kwargs.update(type=annotation, metavar=_metavar(name, field))
        else:
            kwargs.update(type=str, metavar=_metavar(name, field))
        group.add_argument(flag_name(name, field), **kwargs)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {
        key.removeprefix("setting__"): value
        for key, value in vars(args).items()
        if key.startswith("setting__")
    }


def settings_table(cls: type[ServiceSettings]) -> str:
    """The Markdown table of every knob (docs/FEDERATION.md embeds it; a test compares)."""
    prefix = cls.model_config.get("env_prefix", "")
    lines = [
        "| flag | environment variable | config key | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for name, field in cls.model_fields.items():
        flag = f"`{flag_name(name, field)}`" if _cli_enabled(field) else "—"
        desc = (field.description or "").replace("|", "\\|")
        lines.append(
            f"| {flag} | `{prefix}{name.upper()}` | `{name}` | `{_default_text(cls, name)}` "
            f"| {desc} |"
        )
    return "\n".join(lines) + "\n"
