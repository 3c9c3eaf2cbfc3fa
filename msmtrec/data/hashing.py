"""Stable id hashing for hashed embedding tables: one function for the loader, the
preparers and the gateway, so an id lands in the same row at training and at serving time.

Why splitmix64 and not Python's ``hash``: it is the same on every machine and every run
(``PYTHONHASHSEED`` does not reach it), it is vectorized in numpy, and it mixes sequential ids
(user 1, 2, 3 …) evenly over the buckets. Strings (ids that are not integers) go through
BLAKE2b to 64 bits first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

__all__ = ["hash_ids", "hash_strings"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64, copy=True) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def hash_ids(ids: np.ndarray, buckets: int) -> np.ndarray:
    """Map non-negative integer ids to ``[0, buckets)`` (int64), the same on every machine."""
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    values = np.asarray(ids)
    if values.dtype.kind == "f":
        values = values.astype(np.int64)
    return (_splitmix64(values.astype(np.int64).view(np.uint64)) % np.uint64(buckets)).astype(
        np.int64
    )


def hash_strings(ids: Iterable[str], buckets: int) -> np.ndarray:
    """Map string ids to ``[0, buckets)`` (int64) via 64-bit BLAKE2b, then as :func:`hash_ids`."""
    digests = [
        int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") for s in ids
    ]
    return hash_ids(np.array(digests, dtype=np.uint64).view(np.int64), buckets)
