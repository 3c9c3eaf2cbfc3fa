"""Feature schema: the single source of column names, embedding tables and tasks.

Vocabulary sizes come from the schema, never from a data file, so every scenario (and the
gateway) agrees on embedding table shapes. Id ``vocab_size`` is the out-of-vocabulary slot:
an embedding table has ``vocab_size + 1`` rows.

A dataset spec file (``msmtrec.data.spec_file``) is parsed into this one frozen object; every
layer above the data (model input layer, parameter-group table, codec, registry, gateway)
reads it. The fields added for user datasets (embedding tables shared by several features,
hashed ids, per-table federation policy, task product chains, numerical normalization, a
scenario column) all have defaults that reproduce the AliExpress layout, and ``to_dict``
writes them only when they differ from those defaults, so every existing checkpoint and
registry entry reads back as the same schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# Approximate vocabulary sizes of the processed AliExpress schema (MTReclib field dims).
ALIEXPRESS_VOCAB_SIZES: tuple[int, ...] = (11, 4, 7, 2, 33, 7, 50, 8, 8, 2, 2, 2, 2, 2, 2, 2)
NUM_NUMERICAL = 63

TablePolicy = Literal["shared", "private"]
TABLE_POLICIES: tuple[str, ...] = ("shared", "private")
Normalization = Literal["none", "log1p", "standard"]
NORMALIZATIONS: tuple[str, ...] = ("none", "log1p", "standard")


@dataclass(frozen=True)
class EmbeddingTable:
    """One embedding table. ``size`` ids (plus one out-of-vocabulary row); ``hashed`` ids
    are mapped into ``[0, size)`` by a stable hash instead of being sent to the OOV row when
    they are large. ``private`` tables never leave the client (e.g. user ids)."""

    name: str
    size: int
    hashed: bool = False
    policy: TablePolicy = "shared"

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"embedding table {self.name!r}: size must be >= 1")
        if self.policy not in TABLE_POLICIES:
            raise ValueError(
                f"embedding table {self.name!r}: policy must be one of {TABLE_POLICIES}, "
                f"got {self.policy!r}"
            )

    @property
    def rows(self) -> int:
        """Rows of the table: the ids plus the out-of-vocabulary row."""
        return self.size + 1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "hashed": self.hashed, "policy": self.policy}


@dataclass(frozen=True)
class FeatureSchema:
    """Columns of one impression row and the tasks predicted from it.

    ``feature_tables[j]`` is the index into ``tables`` of categorical feature ``j``; by
    default every feature has its own shared table named after it, of ``vocab_sizes[j]`` ids.
    ``task_parents[t]`` names the task whose probability multiplies task ``t``'s own tower
    (ESMM: ``ctcvr = ctr × cvr``), or is ``None``. ``normalization[j]`` is applied to
    numerical feature ``j`` at load time (``standard`` uses ``numerical_stats[j] = (mean,
    std)``). ``scenario_column``: when set, one file holds every scenario and this column
    says which row belongs to which.
    """

    categorical: tuple[str, ...]
    vocab_sizes: tuple[int, ...]
    numerical: tuple[str, ...]
    labels: tuple[str, ...] = ("click", "conversion")
    tasks: tuple[str, ...] = ("ctr", "ctcvr")
    id_column: str = "search_id"
    name: str = "aliexpress"
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    tables: tuple[EmbeddingTable, ...] = ()
    feature_tables: tuple[int, ...] = ()
    task_parents: tuple[str | None, ...] = ()
    normalization: tuple[str, ...] = ()
    numerical_stats: tuple[tuple[float, float] | None, ...] = ()
    scenario_column: str | None = None

    def __post_init__(self) -> None:
        if len(self.categorical) != len(self.vocab_sizes):
            raise ValueError("categorical and vocab_sizes must have the same length")
        if len(self.labels) != len(self.tasks):
            raise ValueError("labels and tasks must have the same length")
        if not self.tasks:
            raise ValueError("a schema needs at least one task")
        if any(v < 1 for v in self.vocab_sizes):
            raise ValueError("every vocabulary size must be >= 1")
        if not self.tables:  # the AliExpress layout: one shared table per feature
            tables = tuple(
                EmbeddingTable(c, v)
                for c, v in zip(self.categorical, self.vocab_sizes, strict=True)
            )
            object.__setattr__(self, "tables", tables)
            object.__setattr__(self, "feature_tables", tuple(range(len(tables))))
        if len(self.feature_tables) != len(self.categorical):
            raise ValueError("feature_tables needs one table index per categorical feature")
        for c, t, v in zip(self.categorical, self.feature_tables, self.vocab_sizes, strict=True):
            if not 0 <= t < len(self.tables):
                raise ValueError(f"feature {c!r}: table index {t} out of range")
            if self.tables[t].size != v:
                raise ValueError(
                    f"feature {c!r}: vocab size {v} differs from its table "
                    f"{self.tables[t].name!r} ({self.tables[t].size})"
                )
        if len({t.name for t in self.tables}) != len(self.tables):
            raise ValueError("embedding table names must be unique")
        if not self.task_parents:
            object.__setattr__(self, "task_parents", (None,) * len(self.tasks))
        if len(self.task_parents) != len(self.tasks):
            raise ValueError("task_parents needs one entry per task")
        for t, p in zip(self.tasks, self.task_parents, strict=True):
            if p is not None and (
                p not in self.tasks or self.tasks.index(p) >= self.tasks.index(t)
            ):
                raise ValueError(f"task {t!r}: parent {p!r} must be an earlier task")
        if not self.normalization:
            object.__setattr__(self, "normalization", ("none",) * len(self.numerical))
        if not self.numerical_stats:
            object.__setattr__(self, "numerical_stats", (None,) * len(self.numerical))
        if len(self.normalization) != len(self.numerical) or len(self.numerical_stats) != len(
            self.numerical
        ):
            raise ValueError("normalization and numerical_stats need one entry per numerical")
        for c, n, st in zip(self.numerical, self.normalization, self.numerical_stats, strict=True):
            if n not in NORMALIZATIONS:
                raise ValueError(f"numerical {c!r}: normalization must be one of {NORMALIZATIONS}")
            if n == "standard" and (st is None or not st[1] > 0):
                raise ValueError(f"numerical {c!r}: standard normalization needs (mean, std > 0)")

    @property
    def num_categorical(self) -> int:
        return len(self.categorical)

    @property
    def num_numerical(self) -> int:
        return len(self.numerical)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def table_sizes(self) -> tuple[int, ...]:
        """Rows per categorical feature's table: the vocabulary plus one out-of-vocabulary
        slot (features sharing a table repeat its size)."""
        return tuple(v + 1 for v in self.vocab_sizes)

    @property
    def has_default_tables(self) -> bool:
        """True when every feature has its own shared, unhashed table named after it (the
        AliExpress layout, and every schema written before dataset specs existed)."""
        return self.tables == tuple(
            EmbeddingTable(c, v) for c, v in zip(self.categorical, self.vocab_sizes, strict=True)
        ) and self.feature_tables == tuple(range(len(self.categorical)))

    def table_of(self, feature: str) -> EmbeddingTable:
        return self.tables[self.feature_tables[self.categorical.index(feature)]]

    @property
    def private_tables(self) -> tuple[EmbeddingTable, ...]:
        return tuple(t for t in self.tables if t.policy == "private")

    @property
    def feature_columns(self) -> tuple[str, ...]:
        return self.categorical + self.numerical

    @property
    def columns(self) -> tuple[str, ...]:
        """All columns of a processed file, in file order."""
        return (self.id_column, *self.categorical, *self.numerical, *self.labels)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "id_column": self.id_column,
            "categorical": list(self.categorical),
            "vocab_sizes": list(self.vocab_sizes),
            "numerical": list(self.numerical),
            "labels": list(self.labels),
            "tasks": list(self.tasks),
        }
        # Keys added with dataset specs, written only when not the defaults (older readers
        # and stored metadata stay byte-identical for the AliExpress layout).
        if not self.has_default_tables:
            d["tables"] = [t.to_dict() for t in self.tables]
            d["feature_tables"] = list(self.feature_tables)
        if any(p is not None for p in self.task_parents):
            d["task_parents"] = list(self.task_parents)
        if any(n != "none" for n in self.normalization):
            d["normalization"] = list(self.normalization)
            d["numerical_stats"] = [list(s) if s else None for s in self.numerical_stats]
        if self.scenario_column is not None:
            d["scenario_column"] = self.scenario_column
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSchema:
        return cls(
            categorical=tuple(d["categorical"]),
            vocab_sizes=tuple(int(v) for v in d["vocab_sizes"]),
            numerical=tuple(d["numerical"]),
            labels=tuple(d.get("labels", ("click", "conversion"))),
            tasks=tuple(d.get("tasks", ("ctr", "ctcvr"))),
            id_column=d.get("id_column", "search_id"),
            name=d.get("name", "custom"),
            tables=tuple(
                EmbeddingTable(
                    t["name"], int(t["size"]), bool(t.get("hashed", False)),
                    t.get("policy", "shared"),
                )
                for t in d.get("tables", ())
            ),
            feature_tables=tuple(int(i) for i in d.get("feature_tables", ())),
            task_parents=tuple(d.get("task_parents", ())),
            normalization=tuple(d.get("normalization", ())),
            numerical_stats=tuple(
                (float(s[0]), float(s[1])) if s else None for s in d.get("numerical_stats", ())
            ),
            scenario_column=d.get("scenario_column"),
        )  # fmt: skip

    def differences(self, other: FeatureSchema) -> list[str]:
        """Human-readable differences (for refusing a client or a model whose dataset spec
        is not the federation's): each entry names the key and both values."""
        a, b = self.to_dict(), other.to_dict()
        return [
            f"{k}: {a.get(k)!r} != {b.get(k)!r}"
            for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)
        ]


def aliexpress_schema() -> FeatureSchema:
    """The processed AliExpress schema: 16 categorical + 63 numerical fields, click/conversion."""
    return FeatureSchema(
        categorical=tuple(f"categorical_{i}" for i in range(1, 17)),
        vocab_sizes=ALIEXPRESS_VOCAB_SIZES,
        numerical=tuple(f"numerical_{i}" for i in range(1, NUM_NUMERICAL + 1)),
    )


ALIEXPRESS = aliexpress_schema()
