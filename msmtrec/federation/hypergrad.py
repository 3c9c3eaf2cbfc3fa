"""The hyper-gradient of the personalization weights a and b, and their SGD step.

θ_c^new is linear in each weight with direction u (u = g for the ``add`` form,
u = g − Δ_c^prev for ``interp``), so with diff_c = −Δ_c^now the gradient is −⟨u, Δ_c^now⟩,
and with ``hyper_grad="cosine"`` it is divided by ‖u‖·‖Δ_c^now‖ (msmtrec.federation.strategy).

Every product is taken in float64 over float32 operands, part (tensor) by part, in a fixed
order. :class:`HyperGradients` is the part of :class:`~msmtrec.federation.strategy.Strategy`
that computes them and takes the step (a mixin: the state lives in the Strategy). The
operands live in :class:`Scratch` buffers reused across clients, not in fresh tensors per
client and part: a fresh 5-35 MB tensor costs page faults on every allocation (glibc maps
blocks above 32 MB anew each time), and at 64 clients of the paper preset those faults were
a third of the aggregation. The arithmetic — which kernels see which values — is unchanged,
so the results are bit-identical.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from msmtrec.federation.strategy import Strategy

Tensors = dict[str, torch.Tensor]


def tower_layer(name: str) -> str:
    """'towers.ctr.layers.0.linear.weight' → 'towers.ctr.layers.0.linear'."""
    return name.rsplit(".", 1)[0]


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


class HyperGradients:
    """∂L/∂a, ∂L/∂b and the SGD step on them (see module docstring)."""

    def _grad_a_reference(
        self, ids: list[str], starts: dict[str, Tensors], ends: dict[str, Tensors]
    ) -> torch.Tensor:
        grad = torch.zeros(len(ids), self.num_experts, dtype=torch.float64)
        for i, c in enumerate(ids):
            delta = {n: ends[c][n] - starts[c][n] for n in self.expert_names}
            grad[i] = torch.tensor(self._grad_a(delta), dtype=torch.float64)
        return grad

    def hyper_gradients(
        self, client_id: str, delta: Tensors
    ) -> tuple[list[float], dict[str, float]]:
        """∂L/∂â_{c,k} and ∂L/∂b̂_{c,l} at last round's output, with diff_c = −Δ_c."""
        return self._grad_a(delta), self._grad_b(client_id, delta)

    def _grad_a(self: Strategy, delta: Mapping[str, torch.Tensor]) -> list[float]:
        grad_a = [0.0] * self.num_experts
        for n in self.expert_names:
            g = self.last_expert_update.get(n)
            if g is None:
                continue
            for k in range(self.num_experts):
                grad_a[k] -= float((g[k].double() * delta[n][k].double()).sum())
        return grad_a

    def _grad_b(
        self: Strategy, client_id: str, delta: Mapping[str, torch.Tensor]
    ) -> dict[str, float]:
        grad_b = {layer: 0.0 for layer in self.tower_layers}
        mixed = self.last_attention.get(client_id, {})
        for n in self.tower_names:
            if n in mixed:
                grad_b[tower_layer(n)] -= float((mixed[n].double() * delta[n].double()).sum())
        return grad_b

    def _hyper_gradients_general(
        self: Strategy,
        ids: list[str],
        starts: dict[str, Tensors],
        ends: dict[str, Tensors],
        tower_deltas: dict[str, Tensors],
    ) -> tuple[torch.Tensor, list[dict[str, float]]]:
        """∂L/∂a and ∂L/∂b for the non-default forms, client by client.

        θ^new is linear in the weight with direction u = g (``add``) or u = g − Δ_c^prev
        (``interp``); with diff_c = −Δ_c^now the gradient is −⟨u, Δ_c^now⟩, and with
        ``hyper_grad="cosine"`` it is divided by ‖u‖·‖Δ_c^now‖: the sign of the raw
        gradient with a scale-free size, so one learning rate fits every layer and model."""
        cfg = self.config
        interp, cosine = cfg.personal_form == "interp", cfg.hyper_grad == "cosine"
        grads_a = torch.zeros(len(ids), self.num_experts, dtype=torch.float64)
        grads_b: list[dict[str, float]] = []
        scratch = self._scratch
        for i, c in enumerate(ids):
            if c not in self.last_participants:
                grads_b.append({layer: 0.0 for layer in self.tower_layers})
                continue
            prev = self.last_delta.get(c, {}) if interp else {}
            for k in range(self.num_experts):
                parts = []
                for n in self.expert_names:
                    g = self.last_expert_update.get(n)
                    if g is None:
                        continue
                    u = scratch.diff("u", g[k], prev[n][k]) if n in prev else g[k]
                    v = scratch.diff("v", ends[c][n][k], starts[c][n][k])
                    parts.append(part_products(u, v, cosine, scratch))
                grads_a[i, k] = combine(parts, cosine) if parts else 0.0
            mixed = self.last_attention.get(c, {})
            by_layer: dict[str, list[tuple[float, float, float]]] = {}
            for n in self.tower_names:
                if n in mixed:
                    u = scratch.diff("u", mixed[n], prev[n]) if n in prev else mixed[n]
                    products = part_products(u, tower_deltas[c][n], cosine, scratch)
                    by_layer.setdefault(tower_layer(n), []).append(products)
            grads_b.append(
                {layer: combine(by_layer[layer], cosine) if layer in by_layer else 0.0
                 for layer in self.tower_layers}
            )  # fmt: skip
        return grads_a, grads_b

    def _hyper_step(
        self, ids: list[str], grads_a: torch.Tensor, grads_b: Sequence[Mapping[str, float]]
    ) -> None:
        """One SGD step (momentum, weight decay) on a and b for the clients that were also in
        the previous round (only they received the output being judged). ``grads_a`` holds
        ∂L/∂a (clients in ``ids`` order × experts), ``grads_b`` ∂L/∂b per client and layer."""
        cfg = self.config
        for i, c in enumerate(ids):
            if c not in self.last_participants:
                continue
            grad_a = [float(v) for v in grads_a[i]]
            grad_b = grads_b[i]
            a, ma = self._weights_a(c), self.a_momentum[c]
            for k in range(self.num_experts):
                step = grad_a[k] + cfg.hyper_weight_decay * a[k]
                ma[k] = cfg.hyper_momentum * ma[k] + step
                a[k] -= cfg.hyper_lr * ma[k]
            b, mb = self._weights_b(c), self.b_momentum[c]
            for layer in self.tower_layers:
                step = grad_b[layer] + cfg.hyper_weight_decay * b[layer]
                mb[layer] = cfg.hyper_momentum * mb[layer] + step
                b[layer] -= cfg.hyper_lr * mb[layer]
