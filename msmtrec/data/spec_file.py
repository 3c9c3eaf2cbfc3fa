"""Dataset spec files: a user's columns, embedding tables and tasks, validated by pydantic.

A spec is a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file, or the name of a built-in
spec shipped in ``msmtrec/data/specs/`` (``aliexpress``, ``tenrec``). It is parsed into the
one :class:`~msmtrec.data.schema.FeatureSchema` every layer reads. Why pydantic: unknown
keys, missing keys and wrong types are all reported with the key's path
(``categorical[3].vocab_size``), which is what a user needs to fix the file.

Layout (TOML)::

    name = "tenrec"
    id_column = "row_id"                 # optional, a row identifier the loader ignores
    [scenarios]
    source = "directories"               # one directory per scenario, or:
    # source = "column"; column = "scenario"
    [[tables]]                           # optional: tables several features share
    name = "item"; size = 1000000; hashed = true; policy = "shared"
    [[categorical]]
    name = "user_id"; hash_buckets = 2000000; policy = "private"
    [[categorical]]
    name = "item_id"; table = "item"
    [[categorical]]
    name = "gender"; vocab_size = 3
    [[numerical]]
    name = "price"; normalization = "log1p"        # none | log1p | standard (mean, std)
    [[tasks]]
    name = "click"; label = "click"
    [[tasks]]
    name = "like"; label = "like"; parent = "click"  # optional product chain
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from msmtrec.data.schema import EmbeddingTable, FeatureSchema

__all__ = ["BUILTIN_SPECS", "DatasetSpec", "SpecError", "load_spec", "parse_spec"]

BUILTIN_SPECS: tuple[str, ...] = ("aliexpress", "tenrec")
_NAME = r"^[A-Za-z_][A-Za-z0-9_.\-]*$"


class SpecError(ValueError):
    """A dataset spec that is not valid; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TableEntry(_Strict):
    name: str = Field(pattern=_NAME)
    size: int = Field(ge=1, description="ids (hash buckets when hashed); +1 OOV row")
    hashed: bool = False
    policy: Literal["shared", "private"] = "shared"


class CategoricalEntry(_Strict):
    name: str = Field(pattern=_NAME)
    vocab_size: int | None = Field(default=None, ge=1)
    hash_buckets: int | None = Field(default=None, ge=1)
    table: str | None = None
    policy: Literal["shared", "private"] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> CategoricalEntry:
        given = [k for k in ("vocab_size", "hash_buckets", "table") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of vocab_size, hash_buckets or table "
                f"(got {', '.join(given) or 'none'})"
            )
        if self.table is not None and self.policy is not None:
            raise ValueError("policy belongs to the shared table, not to a feature using it")
        return self


class NumericalEntry(_Strict):
    name: str = Field(pattern=_NAME)
    normalization: Literal["none", "log1p", "standard"] = "none"
    mean: float | None = None
    std: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _stats(self) -> NumericalEntry:
        if self.normalization == "standard" and (self.mean is None or self.std is None):
            raise ValueError("standard normalization needs mean and std")
        return self


class TaskEntry(_Strict):
    name: str = Field(pattern=_NAME)
    label: str = Field(pattern=_NAME)
    parent: str | None = None


class ScenarioSource(_Strict):
    source: Literal["directories", "column"] = "directories"
    column: str | None = None

    @model_validator(mode="after")
    def _column(self) -> ScenarioSource:
        if (self.source == "column") != (self.column is not None):
            raise ValueError("column is required when source = 'column', and only then")
        return self


class DatasetSpec(_Strict):
    """The validated file. :meth:`to_schema` gives the schema the rest of the system reads."""

    name: str = Field(pattern=_NAME)
    id_column: str = "search_id"
    scenarios: ScenarioSource = ScenarioSource()
    tables: list[TableEntry] = []
    categorical: list[CategoricalEntry] = []
    numerical: list[NumericalEntry] = []
    tasks: list[TaskEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _cross_references(self) -> DatasetSpec:
        names = [c.name for c in self.categorical] + [n.name for n in self.numerical]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"feature names must be unique: {dup}")
        table_names = [t.name for t in self.tables]
        if len(set(table_names)) != len(table_names):
            raise ValueError("tables: names must be unique")
        for i, c in enumerate(self.categorical):
            if c.table is not None and c.table not in table_names:
                raise ValueError(f"categorical[{i}].table: no table named {c.table!r}")
            if c.table is None and c.name in table_names:
                raise ValueError(
                    f"categorical[{i}].name: {c.name!r} is also a table name; use table = ..."
                )
        task_names = [t.name for t in self.tasks]
        if len(set(task_names)) != len(task_names):
            raise ValueError("tasks: names must be unique")
        for i, t in enumerate(self.tasks):
            if t.parent is not None and t.parent not in task_names[:i]:
                raise ValueError(f"tasks[{i}].parent: {t.parent!r} is not an earlier task")
        if not self.categorical and not self.numerical:
            raise ValueError("a spec needs at least one categorical or numerical feature")
        return self

    def to_schema(self) -> FeatureSchema:
        tables = [
            EmbeddingTable(t.name, t.size, t.hashed, t.policy) for t in self.tables
        ]  # fmt: skip
        index = {t.name: i for i, t in enumerate(tables)}
        feature_tables: list[int] = []
        for c in self.categorical:
            if c.table is None:
                hashed = c.hash_buckets is not None
                size = c.hash_buckets if hashed else c.vocab_size
                assert size is not None  # the validator guarantees one source
                index[c.name] = len(tables)
                tables.append(EmbeddingTable(c.name, size, hashed, c.policy or "shared"))
            feature_tables.append(index[c.table or c.name])
        return FeatureSchema(
            categorical=tuple(c.name for c in self.categorical),
            vocab_sizes=tuple(tables[i].size for i in feature_tables),
            numerical=tuple(n.name for n in self.numerical),
            labels=tuple(t.label for t in self.tasks),
            tasks=tuple(t.name for t in self.tasks),
            id_column=self.id_column,
            name=self.name,
            tables=tuple(tables),
            feature_tables=tuple(feature_tables),
            task_parents=tuple(t.parent for t in self.tasks),
            normalization=tuple(n.normalization for n in self.numerical),
            numerical_stats=tuple(
                (n.mean, n.std) if n.mean is not None and n.std is not None else None
                for n in self.numerical
            ),
            scenario_column=self.scenarios.column,
        )


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_spec(data: dict[str, Any], source: str = "<spec>") -> FeatureSchema:
    """Validate an already-read mapping; errors name ``source`` and every bad key."""
    try:
        return DatasetSpec.model_validate(data).to_schema()
    except ValidationError as e:
        problems = "; ".join(f"{_where(err['loc'])}: {err['msg']}" for err in e.errors())
        raise SpecError(f"{source}: invalid dataset spec: {problems}") from None
    except ValueError as e:  # FeatureSchema's own checks
        raise SpecError(f"{source}: invalid dataset spec: {e}") from None


def load_spec(name_or_path: str | Path) -> FeatureSchema:
    """A built-in spec by name (``aliexpress``, ``tenrec``) or a TOML/YAML file by path."""
    text_name = str(name_or_path)
    if text_name in BUILTIN_SPECS:
        resource = resources.files("msmtrec.data.specs") / f"{text_name}.toml"
        return parse_spec(tomllib.loads(resource.read_text()), f"built-in spec {text_name!r}")
    path = Path(name_or_path)
    if not path.is_file():
        raise SpecError(
            f"dataset spec {text_name!r}: no such file, and not a built-in spec "
            f"(built-ins: {', '.join(BUILTIN_SPECS)})"
        )
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(path.read_text())
        else:
            raise SpecError(f"{path}: a dataset spec must be .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise SpecError(f"{path}: not valid {path.suffix[1:].upper()}: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a dataset spec must be a mapping at the top level")
    return parse_spec(data, str(path))
