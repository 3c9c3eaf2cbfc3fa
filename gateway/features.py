"""Request instances → model input arrays, with precise errors.

Parsing 100 instances × 79 features must cost well under a millisecond, so the happy path
does no per-value Python work of its own: one ``itemgetter`` per instance pulls the features
in model column order (C code), one ``set(map(type, …))`` checks that every value is a JSON
number, and numpy converts the whole batch at once. Only when that fails does a slow pass walk
the instances to name the first bad instance and field, e.g.
``instances[3].numerical_12: expected a number, got "abc"``.

Rules: every schema feature must be present (extra keys such as ``search_id`` or labels are
ignored); numbers must be JSON numbers (not strings, booleans or null); categorical ids must
be non-negative integers below 2**63 (``3.0`` is accepted as 3); ids at or above the
vocabulary size map to the out-of-vocabulary slot and are counted, except ids of a *hashed*
table, which are hashed into it (``msmtrec.data.hashing``, as the loader does); numericals
must be finite in float32 and get the schema's normalization (``log1p``, ``standard``).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np

from msmtrec.data.hashing import hash_ids
from msmtrec.data.schema import FeatureSchema

_NUMBER_TYPES = frozenset((int, float))
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT64_LIMIT = 2**63


class InstanceError(ValueError):
    """A client error in the request body; ``loc`` names the field, e.g. ``instances[3]``."""

    def __init__(self, loc: str, message: str) -> None:
        self.loc = loc
        self.message = message
        super().__init__(f"{loc}: {message}")


def _show(value: Any) -> str:
    """A value as it looked in the JSON body (strings quoted, ``true``, ``null``)."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class Batch:
    categorical: np.ndarray  # (B, F_cat) int64, ids clamped into [0, vocab]
    numerical: np.ndarray  # (B, F_num) float32
    oov: np.ndarray | None  # (F_cat,) counts of ids mapped to the OOV slot, None if none


class FeaturePlan:
    """Everything per-schema that parsing needs, built once per loaded model."""

    def __init__(self, schema: FeatureSchema) -> None:
        self.schema = schema
        self.columns = schema.feature_columns
        self.num_categorical = schema.num_categorical
        self.getter = itemgetter(*self.columns)
        self.vocab = np.asarray(schema.vocab_sizes, dtype=np.float64)
        self.vocab_int = np.asarray(schema.vocab_sizes, dtype=np.int64)
        # features of hashed tables: raw ids of any size, hashed into the table exactly as
        # the loader hashes them (msmtrec.data.hashing), so training and serving agree
        self.hashed = tuple(
            j for j, t in enumerate(schema.feature_tables) if schema.tables[t].hashed
        )
        self.hashed_getter = (
            itemgetter(*(schema.categorical[j] for j in self.hashed)) if self.hashed else None
        )
        self.normalized = any(n != "none" for n in schema.normalization)

    def parse(self, body: Any, max_batch: int) -> Batch:
        """Validate a decoded JSON body ``{"instances": [...]}`` into model arrays."""
        if not isinstance(body, dict):
            raise InstanceError("body", 'expected a JSON object {"instances": [...]}')
        instances = body.get("instances")
        if instances is None:
            raise InstanceError("instances", "field required")
        if not isinstance(instances, list):
            raise InstanceError("instances", f"expected a list, got {type(instances).__name__}")
        n = len(instances)
        if n == 0:
            raise InstanceError("instances", "expected at least 1 instance")
        if n > max_batch:
            raise InstanceError(
                "instances", f"batch of {n} instances exceeds the limit of {max_batch}"
            )
        getter = self.getter
        try:
            rows = [getter(inst) for inst in instances]
        except (KeyError, TypeError):
            self._explain(instances)
            raise  # _explain always raises; keep the type checker honest
        if not set(map(type, itertools.chain.from_iterable(rows))) <= _NUMBER_TYPES:
            self._explain(instances)
        try:
            values = np.array(rows, dtype=np.float64)
        except OverflowError:  # an integer beyond float64
            self._explain(instances)
            raise
        f = self.num_categorical
        cat = values[:, :f]
        if not (cat == np.floor(cat)).all() or (cat < 0).any() or (cat >= _INT64_LIMIT).any():
            self._explain(instances)
        with np.errstate(over="ignore"):  # overflow → inf, reported below
            num = values[:, f:].astype(np.float32)
        if not np.isfinite(num).all():
            self._explain(instances)
        if self.normalized:
            num = self._normalize(num, instances)
        if self.hashed:
            return self._hash(instances, cat, num)
        over = cat >= self.vocab
        oov = None
        if over.any():
            oov = over.sum(axis=0)
            cat = np.minimum(cat, self.vocab)
        return Batch(cat.astype(np.int64), num, oov)

    def _hash(self, instances: list, cat: np.ndarray, num: np.ndarray) -> Batch:
        """Hashed features from the exact integers (float64 would round ids above 2**53),
        the others clamped to their out-of-vocabulary slot as usual."""
        assert self.hashed_getter is not None
        raw = [self.hashed_getter(inst) for inst in instances]
        exact = np.array([[int(v) for v in (r if len(self.hashed) > 1 else (r,))] for r in raw])
        over = cat >= self.vocab
        over[:, list(self.hashed)] = False
        oov = over.sum(axis=0) if over.any() else None
        out = np.minimum(cat, self.vocab).astype(np.int64)
        for k, j in enumerate(self.hashed):
            out[:, j] = hash_ids(exact[:, k].astype(np.int64), int(self.vocab_int[j]))
        return Batch(out, num, oov)

    def _normalize(self, num: np.ndarray, instances: list) -> np.ndarray:
        """The schema's normalization, as the loader applies it at training time."""
        out = num.copy()
        s = self.schema
        for j, (norm, stats) in enumerate(zip(s.normalization, s.numerical_stats, strict=True)):
            if norm == "log1p":
                low = out[:, j] <= -1.0
                if low.any():
                    i, name = int(np.argmax(low)), s.numerical[j]
                    raise InstanceError(
                        f"instances[{i}].{name}",
                        f"log1p normalization needs values > -1, got {_show(instances[i][name])}",
                    )
                out[:, j] = np.log1p(out[:, j])
            elif norm == "standard":
                mean, std = stats or (0.0, 1.0)
                out[:, j] = (out[:, j].astype(np.float64) - mean) / std
        return out

    def _explain(self, instances: list) -> None:
        """The slow pass: raise for the first bad instance and field, in column order."""
        f = self.num_categorical
        for i, inst in enumerate(instances):
            if not isinstance(inst, dict):
                raise InstanceError(
                    f"instances[{i}]", f"expected an object, got {type(inst).__name__}"
                )
            for j, name in enumerate(self.columns):
                if name not in inst:
                    raise InstanceError(f"instances[{i}]", f"missing feature {name}")
                value = inst[name]
                loc = f"instances[{i}].{name}"
                if type(value) not in _NUMBER_TYPES:
                    kind = "an integer id" if j < f else "a number"
                    raise InstanceError(loc, f"expected {kind}, got {_show(value)}")
                if j < f:
                    if isinstance(value, float) and not value.is_integer():
                        raise InstanceError(loc, f"expected an integer id, got {_show(value)}")
                    if value < 0:
                        raise InstanceError(loc, f"negative categorical id {_show(value)}")
                    if value >= _INT64_LIMIT:
                        raise InstanceError(loc, f"id {_show(value)} is beyond int64")
                elif abs(value) > _FLOAT32_MAX:
                    raise InstanceError(loc, f"value {_show(value)} is not finite in float32")
        raise InstanceError("instances", "invalid instances")  # unreachable in practice
