"""The model's input layer and task heads, built from the dataset's :class:`FeatureSchema`.

Embedding tables (``schema.tables``) are laid out in three kinds of parameter, because each
kind travels and trains differently:

* ``embedding``: every *shared*, small table, concatenated into one ``nn.Embedding`` (each
  feature reads its table's rows through an offset; features sharing a table share the
  offset). For the AliExpress layout (one table per feature) this is exactly the historical
  single table, same name, same shape, same initialisation, so checkpoints still load and
  results are bit-identical. ``embedding_s`` (the embedding template's E_S) mirrors it.
* ``embedding_tables.<table>``: a shared table of more than :data:`SPARSE_TABLE_ROWS` rows, its
  own ``nn.Embedding(sparse=True)``: a step's gradient holds only the rows of its batch, and
  the trainer updates those rows alone (:mod:`msmtrec.training.sparse`), so a table of
  millions of ids is not read and rewritten whole every step.
* ``private_tables.<table>``: a table of ``policy = "private"`` (user ids): the parameter-group
  table classifies it as never sent, so it stays in the client's state and checkpoints. Large
  ones are sparse as above.

The template's E_S covers ``embedding`` only: a private table is the client's own already,
and a second copy of a table of millions of rows would double the largest tensor.

Task heads: ``schema.task_parents`` chains towers as products (ESMM's ``ctcvr = ctr × cvr``):
the probability of a task with a parent is the parent's (final) probability times the task's
own tower, so a child never exceeds its parent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from msmtrec.data.schema import FeatureSchema
from msmtrec.model.config import ModelConfig

__all__ = [
    "SPARSE_TABLE_ROWS",
    "InputLayout",
    "SchemaInputs",
    "chain_logits",
    "logit_of_product",
    "table_key",
]

SPARSE_TABLE_ROWS = 100_000
"""Tables with more rows than this are their own sparse ``nn.Embedding`` (AliExpress's
largest has 51 rows; an id table of users or items has millions)."""


def table_key(name: str) -> str:
    """The module key of a table: its name with every character that a parameter name
    cannot hold (``.``, ``-``) replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


@dataclass(frozen=True)
class InputLayout:
    """Where each categorical feature's rows live (pure arithmetic on the schema).

    ``dense_tables``: indices of the tables concatenated into ``embedding``, in schema order;
    ``separate``: (table index, kind) for each table with a module of its own, kind being
    ``"shared"`` or ``"private"``; ``feature_offsets[j]``: the row offset of feature ``j``'s
    table inside its module (0 for a table of its own)."""

    dense_tables: tuple[int, ...]
    dense_rows: int
    separate: tuple[tuple[int, str], ...]
    feature_offsets: tuple[int, ...]
    sparse_tables: frozenset[int]

    @classmethod
    def of(cls, schema: FeatureSchema, sparse_rows: int | None = None) -> InputLayout:
        """``sparse_rows``: the size threshold (default: :data:`SPARSE_TABLE_ROWS`, read at
        call time so a benchmark can compare against dense tables)."""
        sparse_rows = SPARSE_TABLE_ROWS if sparse_rows is None else sparse_rows
        dense, separate, starts = [], [], {}
        rows = 0
        for i, t in enumerate(schema.tables):
            if t.policy == "private" or t.rows > sparse_rows:
                separate.append((i, t.policy))
                starts[i] = 0
            else:
                dense.append(i)
                starts[i] = rows
                rows += t.rows
        keys = [table_key(schema.tables[i].name) for i, _ in separate]
        if len(set(keys)) != len(keys):
            raise ValueError(
                f"embedding tables {sorted(schema.tables[i].name for i, _ in separate)} "
                "collide once '.' and '-' become '_' in parameter names; rename one"
            )
        return cls(
            dense_tables=tuple(dense),
            dense_rows=rows,
            separate=tuple(separate),
            feature_offsets=tuple(starts[t] for t in schema.feature_tables),
            sparse_tables=frozenset(i for i, _ in separate if schema.tables[i].rows > sparse_rows),
        )


class SchemaInputs(nn.Module):
    """Mixin of the MMoE models: builds the input layer (:meth:`_build_inputs`) and embeds a
    batch (:meth:`embed_categorical`). The modules are attributes of the model itself, not of
    a child module, so the AliExpress parameter names (``embedding.weight``,
    ``numerical.weight``) stay what every checkpoint and the parameter-group table know."""

    sparse_parameter_names: frozenset[str] = frozenset()

    def _build_inputs(self, schema: FeatureSchema, config: ModelConfig) -> int:
        """Create the input modules in the historical order of random draws (``embedding``,
        its Xavier init, ``numerical``, ``embedding_s``, then any table of its own). Returns
        the width of the flattened input (one ``embed_dim`` slot per feature + numerical)."""
        d = config.embed_dim
        layout = InputLayout.of(schema)
        self.input_layout = layout
        self._default_tables = schema.has_default_tables
        self._embedding_template = config.embedding_template
        if schema.has_default_tables:  # AliExpress: per-feature cumulative offsets, as ever
            sizes = torch.tensor((0, *schema.table_sizes[:-1]), dtype=torch.long)
            self.register_buffer("offsets", torch.cumsum(sizes, 0), persistent=False)
        else:
            offsets = torch.tensor(layout.feature_offsets, dtype=torch.long)
            self.register_buffer("offsets", offsets, persistent=False)
        self.embedding = nn.Embedding(max(layout.dense_rows, 1), d)
        nn.init.xavier_uniform_(self.embedding.weight)
        self.numerical = nn.Linear(schema.num_numerical, d)
        if config.embedding_template:
            self.embedding_s = nn.Embedding(max(layout.dense_rows, 1), d)
            nn.init.zeros_(self.embedding_s.weight)
        # Features grouped by the module that holds their table, and the permutation that
        # puts the looked-up slots back into feature order.
        groups: list[tuple[str | None, list[int]]] = [
            (None, [j for j, t in enumerate(schema.feature_tables) if t in layout.dense_tables])
        ]
        shared, private, sparse_names = {}, {}, set()
        for i, kind in layout.separate:
            table, key = schema.tables[i], table_key(schema.tables[i].name)
            sparse = i in layout.sparse_tables
            emb = nn.Embedding(table.rows, d, sparse=sparse, _weight=torch.empty(table.rows, d))
            nn.init.xavier_uniform_(emb.weight)
            (private if kind == "private" else shared)[key] = emb
            prefix = "private_tables" if kind == "private" else "embedding_tables"
            if sparse:
                sparse_names.add(f"{prefix}.{key}.weight")
            groups.append(
                (f"{prefix}.{key}", [j for j, t in enumerate(schema.feature_tables) if t == i])
            )
        if shared:
            self.embedding_tables = nn.ModuleDict(shared)
        if private:
            self.private_tables = nn.ModuleDict(private)
        self.sparse_parameter_names = frozenset(sparse_names)
        if not schema.has_default_tables:  # lookup plan: buffers, so they follow .to(device)
            groups = [(m, cols) for m, cols in groups if cols]
            self._input_groups = [m for m, _ in groups]
            for g, (_, cols) in enumerate(groups):
                self.register_buffer(f"_input_cols_{g}", torch.tensor(cols), persistent=False)
            order = [j for _, cols in groups for j in cols]
            inverse = [0] * len(order)
            for pos, j in enumerate(order):
                inverse[j] = pos
            self.register_buffer("_feature_order", torch.tensor(inverse), persistent=False)
        return d * (schema.num_categorical + 1)

    def _table_module(self, path: str) -> nn.Embedding:
        prefix, key = path.split(".", 1)
        return getattr(self, prefix)[key]

    def embed_categorical(self, categorical: torch.Tensor) -> torch.Tensor:
        """(B, F) ids → (B, F, d) embeddings in feature order (E_S added when templated)."""
        if self._default_tables:  # the historical single lookup, bit for bit
            ids = categorical.long() + self.offsets
            cat = self.embedding(ids)
            if self._embedding_template:
                cat = cat + self.embedding_s(ids)
            return cat
        pieces = []
        ids = categorical.long() + self.offsets
        for g, module in enumerate(self._input_groups):
            sub = ids[:, getattr(self, f"_input_cols_{g}")]
            if module is None:
                piece = self.embedding(sub)
                if self._embedding_template:
                    piece = piece + self.embedding_s(sub)
            else:
                piece = self._table_module(module)(sub)
            pieces.append(piece)
        cat = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
        return cat[:, self._feature_order]

    def embed(self, categorical: torch.Tensor, numerical: torch.Tensor) -> torch.Tensor:
        """The flattened input (B, d·(F + 1)) every expert and gate reads."""
        cat = self.embed_categorical(categorical)
        num = self.numerical(numerical).unsqueeze(1)  # (B, 1, d)
        return torch.cat((cat, num), dim=1).flatten(1)


def logit_of_product(logit_a: torch.Tensor, logit_b: torch.Tensor) -> torch.Tensor:
    """logit(σ(a)·σ(b)), computed in log space so it stays finite for confident inputs."""
    log_p = F.logsigmoid(logit_a) + F.logsigmoid(logit_b)
    log_p = torch.clamp(log_p, max=-1e-7)
    return log_p - torch.log(-torch.expm1(log_p))


def task_parent_indices(schema: FeatureSchema) -> tuple[int | None, ...]:
    """Index of each task's parent (an earlier task) or None."""
    return tuple(None if p is None else schema.tasks.index(p) for p in schema.task_parents)


def chain_logits(
    logits: Sequence[torch.Tensor], parents: Sequence[int | None]
) -> list[torch.Tensor]:
    """Final logits of every task: a task with a parent is ``p_parent × σ(own tower)``,
    parents first (they are earlier tasks), so chains of any length compose."""
    out: list[torch.Tensor] = []
    for t, logit in enumerate(logits):
        p = parents[t]
        out.append(logit if p is None else logit_of_product(out[p], logit))
    return out
