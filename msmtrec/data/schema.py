"""Feature schema: the single source of column names, vocabulary sizes and label names.

Vocabulary sizes come from the schema, never from a data file, so every scenario (and the
gateway) agrees on embedding table shapes. Id ``vocab_size`` is the out-of-vocabulary slot:
an embedding table has ``vocab_size + 1`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Approximate vocabulary sizes of the processed AliExpress schema (MTReclib field dims).
ALIEXPRESS_VOCAB_SIZES: tuple[int, ...] = (11, 4, 7, 2, 33, 7, 50, 8, 8, 2, 2, 2, 2, 2, 2, 2)
NUM_NUMERICAL = 63


@dataclass(frozen=True)
class FeatureSchema:
    """Columns of one impression row and the tasks predicted from it."""

    categorical: tuple[str, ...]
    vocab_sizes: tuple[int, ...]
    numerical: tuple[str, ...]
    labels: tuple[str, ...] = ("click", "conversion")
    tasks: tuple[str, ...] = ("ctr", "ctcvr")
    id_column: str = "search_id"
    name: str = "aliexpress"
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if len(self.categorical) != len(self.vocab_sizes):
            raise ValueError("categorical and vocab_sizes must have the same length")
        if len(self.labels) != len(self.tasks):
            raise ValueError("labels and tasks must have the same length")
        if any(v < 1 for v in self.vocab_sizes):
            raise ValueError("every vocabulary size must be >= 1")

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
        """Rows per embedding table: the vocabulary plus one out-of-vocabulary slot."""
        return tuple(v + 1 for v in self.vocab_sizes)

    @property
    def feature_columns(self) -> tuple[str, ...]:
        return self.categorical + self.numerical

    @property
    def columns(self) -> tuple[str, ...]:
        """All columns of a processed file, in file order."""
        return (self.id_column, *self.categorical, *self.numerical, *self.labels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id_column": self.id_column,
            "categorical": list(self.categorical),
            "vocab_sizes": list(self.vocab_sizes),
            "numerical": list(self.numerical),
            "labels": list(self.labels),
            "tasks": list(self.tasks),
        }

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
        )


def aliexpress_schema() -> FeatureSchema:
    """The processed AliExpress schema: 16 categorical + 63 numerical fields, click/conversion."""
    return FeatureSchema(
        categorical=tuple(f"categorical_{i}" for i in range(1, 17)),
        vocab_sizes=ALIEXPRESS_VOCAB_SIZES,
        numerical=tuple(f"numerical_{i}" for i in range(1, NUM_NUMERICAL + 1)),
    )


ALIEXPRESS = aliexpress_schema()
