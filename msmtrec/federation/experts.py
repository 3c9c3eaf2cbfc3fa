"""Personalized expert aggregation (ALGORITHM.md §5, "Experts"): the conflict-coordinated
update g_k of every expert and each client's θ_c^new = θ_c^end + a_{c,k}·g_k (or the interp
form), as a mixin of :class:`msmtrec.federation.strategy.Strategy` (its state lives there).

Two passes over the clients' W_S deltas, block by block of columns (msmtrec.federation.blocks):
the first builds each expert's Gram matrix A_k (exact, or sketched for many clients) and the
batched hyper-gradient of a; the conflict-averse plan (c_k, w*_k) comes from A_k alone; the
second pass forms mean(Δ) and G w*. Other coordination modes (pcgrad, none) stack each
expert's deltas and call :func:`msmtrec.federation.conflict.coordinate` (ablations).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from msmtrec.federation.blocks import (
    SKETCH_COLUMNS,
    DeltaBlocks,
    ExactGram,
    SketchedGram,
    column_blocks,
    sketch_signs,
)
from msmtrec.federation.config import CA_EXACT_MAX_CLIENTS
from msmtrec.federation.conflict import conflict_averse_plan, coordinate, rescale_divisor

if TYPE_CHECKING:
    from msmtrec.federation.strategy import Strategy

Tensors = dict[str, torch.Tensor]
Grams = dict[int, tuple[np.ndarray, float | None]]


class ExpertAggregation:
    """The expert half of :class:`~msmtrec.federation.strategy.Strategy`."""

    def sketched(self: Strategy, clients: int) -> bool:
        """Whether a round of ``clients`` builds its conflict-averse step from sketched Gram
        matrices and the first-order simplex solver (``ca_scale``; config.py)."""
        mode = self.config.ca_scale
        return mode == "sketch" or (mode == "auto" and clients > CA_EXACT_MAX_CLIENTS)

    def _sketch_signs(self: Strategy) -> torch.Tensor:
        """±1 per column of one expert's concatenated W_S tensors (built once)."""
        if self._signs is None:
            length = sum(self.initial[n][0].numel() for n in self.expert_names)
            self._signs = sketch_signs(length)
        return self._signs

    def _expert_statistics(
        self: Strategy,
        ids: list[str],
        starts: dict[str, Tensors],
        ends: dict[str, Tensors],
        with_grad_a: bool,
    ) -> tuple[Grams, torch.Tensor | None]:
        """First pass over the expert deltas: the Gram matrix A_k = G_k G_kᵀ of every expert
        (the conflict-averse QP needs nothing else; sketched for many clients, with its exact
        mean) and, if asked, ∂L/∂a_{c,k} = −⟨g_k, Δ_c⟩ against last round's coordinated
        update (for every client of this round; only the ones that were also in the last
        round use it). Expert by expert, so one sketch is alive at a time; the sums of each
        A_k and each ∂L/∂a_{·,k} run in the same order as name by name."""
        clients = len(ids)
        sketch = (
            self.sketched(clients)
            and sum(self.initial[n][0].numel() for n in self.expert_names) > SKETCH_COLUMNS
        )
        grams: Grams = {}
        grad_a = torch.zeros(clients, self.num_experts, dtype=torch.float64)
        blocks: DeltaBlocks | None = None
        for k in range(self.num_experts):
            acc: ExactGram | SketchedGram = (
                SketchedGram(clients, self._sketch_signs(), SKETCH_COLUMNS)
                if sketch
                else ExactGram(clients)
            )
            for n in self.expert_names:
                previous = self.last_expert_update.get(n) if with_grad_a else None
                numel = self.initial[n][0].numel()
                blocks = DeltaBlocks.reuse(blocks, clients, self.initial[n].dtype)
                e, s = self._flat(ids, ends, n, k), self._flat(ids, starts, n, k)
                prev = previous[k].reshape(-1) if previous is not None else None
                for lo, hi in column_blocks(numel, clients):
                    d = blocks.block_narrow(e, s, lo, hi)
                    acc.add(d)
                    if prev is not None:
                        grad_a[:, k] -= blocks.widen(d) @ prev[lo:hi].double()
            gram, mean_a = acc.result()
            grams[k] = (gram.numpy(), mean_a)
        return grams, (grad_a if with_grad_a else None)

    def _coordinated_ca(
        self: Strategy,
        ids: list[str],
        starts: dict[str, Tensors],
        ends: dict[str, Tensors],
        grams: Grams,
    ) -> Tensors:
        """Second pass: g_k = (mean(Δ) + c_k/‖G_k w*_k‖ · G_k w*_k) / divisor per expert, from
        each expert's Gram matrix (conflict_averse_update's formula, laid out like the
        tensors)."""
        cfg = self.config
        clients = len(ids)
        solver = "fista" if self.sketched(clients) else "slsqp"
        plans = {
            k: conflict_averse_plan(gram, cfg.ca_alpha, mean_a=mean_a, solver=solver)
            for k, (gram, mean_a) in grams.items()
        }
        # Rows [1/C, …] (the mean) and, where coordination applies, w*_k (G w*): one matmul
        # over each block gives both.
        rows = {
            k: torch.stack(
                [torch.full((clients,), 1.0 / clients, dtype=torch.float64)]
                + ([torch.from_numpy(p[1])] if p[1] is not None else [])
            )
            for k, p in plans.items()
        }
        means: Tensors = {}
        mixed: Tensors = {}
        norm_sq = [0.0] * self.num_experts
        blocks: DeltaBlocks | None = None
        for n in self.expert_names:
            ref = self.initial[n]
            numel = ref[0].numel()
            both = torch.empty(self.num_experts, 2, numel, dtype=torch.float64)
            blocks = DeltaBlocks.reuse(blocks, clients, ref.dtype)
            for k in range(self.num_experts):
                e, s = self._flat(ids, ends, n, k), self._flat(ids, starts, n, k)
                r = rows[k]
                for lo, hi in column_blocks(numel, clients):
                    d = blocks.block(e, s, lo, hi)
                    torch.mm(r, d, out=both[k, : len(r), lo:hi])
                if len(r) > 1:
                    norm_sq[k] += float(both[k, 1] @ both[k, 1])
            means[n], mixed[n] = both[:, 0], both[:, 1]
        divisor = rescale_divisor(cfg.ca_alpha, cfg.ca_rescale)
        mixing = torch.full((self.num_experts, clients), 1.0 / clients, dtype=torch.float64)
        for k, (c, w_star) in plans.items():
            if w_star is not None:
                mixing[k] += c / (math.sqrt(norm_sq[k]) + 1e-16) * torch.from_numpy(w_star)
        self._expert_mixing = mixing / divisor
        self._ca_plans = {
            k: (float(c), None if w is None else [float(x) for x in w])
            for k, (c, w) in plans.items()
        }
        update: Tensors = {}
        for n in self.expert_names:
            g = means[n]
            for k, (c, w_star) in plans.items():
                if w_star is None:
                    continue
                scale = c / (math.sqrt(norm_sq[k]) + 1e-16)
                g[k] += scale * mixed[n][k]
                if divisor != 1.0:
                    g[k] /= divisor
            update[n] = g.to(self.initial[n].dtype).reshape(self.initial[n].shape)
        return update

    def _coordinated_reference(
        self, ids: list[str], starts: dict[str, Tensors], ends: dict[str, Tensors]
    ) -> Tensors:
        """Every other coordination mode: stack each expert's full deltas and call
        :func:`coordinate` (memory O(C·P_k); these modes are ablations)."""
        cfg = self.config
        update: Tensors = {n: torch.zeros_like(self.initial[n]) for n in self.expert_names}
        # g is a fixed mixture of the deltas only without coordination (PCGrad's projections
        # depend on the deltas themselves).
        self._expert_mixing = (
            torch.full((self.num_experts, len(ids)), 1.0 / len(ids), dtype=torch.float64)
            if cfg.conflict == "none"
            else None
        )
        self._ca_plans = {}
        for k in range(self.num_experts):
            stacked = torch.stack(
                [
                    torch.cat([(ends[c][n][k] - starts[c][n][k]).reshape(-1)
                               for n in self.expert_names])
                    for c in ids
                ]
            )  # fmt: skip
            g = coordinate(stacked, cfg.conflict, cfg.ca_alpha, cfg.ca_rescale)
            offset = 0
            for n in self.expert_names:
                size = update[n][k].numel()
                update[n][k] = g[offset : offset + size].view_as(update[n][k])
                offset += size
        return update

    def _personal_experts(
        self: Strategy,
        ids: list[str],
        starts: dict[str, Tensors],
        ends: dict[str, Tensors],
        grams: Grams,
        new: dict[str, Tensors],
    ) -> Tensors:
        if not self.expert_names:
            return {}
        cfg = self.config
        if cfg.conflict == "ca":
            update = self._coordinated_ca(ids, starts, ends, grams)
        else:
            update = self._coordinated_reference(ids, starts, ends)
        for c in ids:
            a = self.effective_a(c) if cfg.personalize else [cfg.init_weight] * self.num_experts
            scale = torch.tensor(a, dtype=torch.float32)
            mine = self.personal.get(c, {})
            for n in self.expert_names:
                shape = (-1,) + (1,) * (update[n].dim() - 1)
                # θ_end + a_c·g in one pass, written over the client's previous θ^start when
                # the server owns one (every pass that reads it is done): fresh memory for a
                # 36 MB tensor costs more in page faults than the arithmetic itself
                old = mine.get(n)
                out = old if old is not None and old is not self.initial[n] else None
                if out is None:
                    out = self._per_client_empty(ends[c][n])
                direction = update[n]
                if cfg.personal_form == "interp":  # θ_start + (1 − a)Δ_c + a·g
                    # Δ_c is last_delta[c][n] (stored this round, the same float32 values)
                    direction = self._scratch.diff("direction", update[n], self.last_delta[c][n])
                new[c][n] = torch.addcmul(ends[c][n], scale.view(shape), direction, out=out)
        return update
