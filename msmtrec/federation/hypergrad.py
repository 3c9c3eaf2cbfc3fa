"""The hyper-gradient of the personalization weights a and b, without per-client garbage.

θ_c^new is linear in each weight with direction u (u = g for the ``add`` form,
u = g − Δ_c^prev for ``interp``), so with diff_c = −Δ_c^now the gradient is −⟨u, Δ_c^now⟩,
and with ``hyper_grad="cosine"`` it is divided by ‖u‖·‖Δ_c^now‖ (msmtrec.federation.strategy).

Every product is taken in float64 over float32 operands, part (tensor) by part, in a fixed
order. What this module adds is where the operands live: in :class:`Scratch` buffers reused
across clients, not in fresh tensors per client and part. A fresh 5-35 MB tensor costs page
faults on every allocation (glibc maps blocks above 32 MB anew each time), and at 64 clients
of the paper preset those faults were a third of the aggregation. The arithmetic — which
kernels see which values — is unchanged, so the results are bit-identical.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class Scratch:
    """Reusable buffers, one per (slot, shape, dtype); O(P) in all."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, tuple[int, ...], torch.dtype], torch.Tensor] = {}

    def get(self, slot: str, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        key = (slot, tuple(shape), dtype)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty(shape, dtype=dtype)
        return buf

    def diff(self, slot: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a − b (a's dtype), in a buffer."""
        return torch.sub(a, b, out=self.get(slot, a.shape, a.dtype))


def part_products(
    u: torch.Tensor, v: torch.Tensor, cosine: bool, scratch: Scratch
) -> tuple[float, float, float]:
    """(⟨u, v⟩, ‖u‖², ‖v‖²) in float64 (the norms only when ``cosine``; else 0)."""
    u64 = scratch.get("u64", u.shape, torch.float64).copy_(u)
    v64 = scratch.get("v64", v.shape, torch.float64).copy_(v)
    dot = float(u64.flatten() @ v64.flatten())
    if not cosine:
        return dot, 0.0, 0.0
    sq = scratch.get("sq64", u.shape, torch.float64)
    uu = float(torch.square(u64, out=sq).sum())
    vv = float(torch.square(v64, out=sq).sum())
    return dot, uu, vv


def combine(products: Iterable[tuple[float, float, float]], cosine: bool) -> float:
    """−Σ⟨u, v⟩ (divided by ‖u‖·‖v‖ over all parts when ``cosine``), summed in part order."""
    dot = uu = vv = 0.0
    for d, a, b in products:
        dot += d
        uu += a
        vv += b
    if not cosine:
        return -dot
    return -dot / (math.sqrt(uu) * math.sqrt(vv) + 1e-16)
