"""Multi-gate mixture of experts with templated experts (ALGORITHM.md §2–3).

The K experts are fused: each expert layer holds its weights as ``(K, …)`` tensors and runs
as one matmul (first layer) or one batched matmul (deeper layers) over all experts and task
views, instead of a Python loop over experts.

Parameter template: every expert Linear is ``W = W_G + W_S + W_T[t]``. Because W_T differs
per task, expert k produces one output per *task view* t (V = number of tasks); with the
``none`` template there is a single view shared by all tasks. BatchNorm statistics are kept
per (expert, view, unit) [chosen]: the two task views are different functions once W_T has
moved, so pooling their statistics would mix two distributions. At init (W_S = W_T = 0) all
views are identical, so a fresh ``additive3`` model computes exactly what a plain MMoE does.

Parameter names are part of the wire contract: the parameter-group table
(``msmtrec.federation.groups``) classifies them by pattern.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msmtrec.data.schema import FeatureSchema
from msmtrec.model.config import ModelConfig
from msmtrec.model.inputs import (
    SchemaInputs,
    chain_logits,
    logit_of_product,
    task_parent_indices,
)


class TemplatedExpertLayer(nn.Module):
    """One fused Linear for K experts × V task views, split additively per the template."""

    def __init__(
        self, in_dim: int, out_dim: int, num_experts: int, num_views: int, template: str
    ) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.num_experts, self.num_views, self.template = num_experts, num_views, template
        k, v = num_experts, num_views
        # The one randomly initialised part is drawn first and in the same order for every
        # template, so models built with one seed share it (plain MMoE == fresh additive3).
        base_w, base_b = _linear_init(k, out_dim, in_dim)
        if template in ("additive3", "additive2"):
            self.weight_g = nn.Parameter(base_w)
            self.bias_g = nn.Parameter(base_b)
            self.weight_s = nn.Parameter(torch.zeros(k, out_dim, in_dim))
            self.bias_s = nn.Parameter(torch.zeros(k, out_dim))
        elif template == "two_part":
            self.weight_s = nn.Parameter(base_w)
            self.bias_s = nn.Parameter(base_b)
        elif template == "none":
            self.weight_g = nn.Parameter(base_w)
            self.bias_g = nn.Parameter(base_b)
        else:
            raise ValueError(f"unknown template {template!r}")
        if template in ("additive3", "two_part"):
            self.weight_t = nn.Parameter(torch.zeros(k, v, out_dim, in_dim))
            self.bias_t = nn.Parameter(torch.zeros(k, v, out_dim))

    def effective(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights (K, V, out, in) and biases (K, V, out) as each task view sees them."""
        if self.template == "none":
            return self.weight_g.unsqueeze(1), self.bias_g.unsqueeze(1)
        if self.template == "additive2":
            return (
                (self.weight_g + self.weight_s).unsqueeze(1),
                (self.bias_g + self.bias_s).unsqueeze(1),
            )
        if self.template == "two_part":
            w = self.weight_s.unsqueeze(1) + self.weight_t
            b = self.bias_s.unsqueeze(1) + self.bias_t
            return w, b
        shared_b = (self.bias_g + self.bias_s).unsqueeze(1)
        if torch.is_grad_enabled() and self.weight_t.requires_grad:
            w = _AdditiveTemplate.apply(
                self.weight_g, self.weight_s, self.weight_t, self._buffers_for_sum
            )
        else:
            w = (self.weight_g + self.weight_s).unsqueeze(1) + self.weight_t
        return w, shared_b + self.bias_t

    @property
    def _buffers_for_sum(self) -> _SumBuffers:
        """Work buffers of the training-time template sum, made on first use (not state:
        never saved, never sent)."""
        bufs = self.__dict__.get("_sum_buffers")
        if bufs is None or not bufs.fits(self.weight_t):
            bufs = self.__dict__["_sum_buffers"] = _SumBuffers(self.weight_t)
        return bufs

    def forward(self, x: torch.Tensor, shared_input: bool) -> torch.Tensor:
        """``x`` is (B, in) when ``shared_input`` (the first layer: every expert and view reads
        the same embedding), else (B, K·V·in). Returns (B, K·V·out)."""
        w, b = self.effective()
        kv = self.num_experts * self.num_views
        if shared_input:
            return F.linear(x, w.reshape(kv * self.out_dim, self.in_dim), b.reshape(-1))
        batch = x.shape[0]
        xs = x.view(batch, kv, self.in_dim).transpose(0, 1)  # (KV, B, in)
        out = torch.baddbmm(
            b.reshape(kv, 1, self.out_dim), xs, w.reshape(kv, self.out_dim, self.in_dim).mT
        )  # (KV, B, out)
        return out.transpose(0, 1).reshape(batch, kv * self.out_dim)


class _SumBuffers:
    """Memory the additive template sum writes into, step after step: W_G + W_S (K, out, in)
    and the effective weight (K, V, out, in). Allocating the latter afresh every step costs
    more than the sum itself (the kernel maps and zero-fills ~70 MB of new pages per step
    on the ``paper`` preset)."""

    def __init__(self, like: torch.Tensor) -> None:
        k, _views, out_dim, in_dim = like.shape
        self.shared = torch.empty(k, out_dim, in_dim, dtype=like.dtype, device=like.device)
        self.full = torch.empty(like.shape, dtype=like.dtype, device=like.device)

    def fits(self, like: torch.Tensor) -> bool:
        return (
            self.full.shape == like.shape
            and self.full.dtype == like.dtype
            and self.full.device == like.device
        )


class _AdditiveTemplate(torch.autograd.Function):
    """``(W_G + W_S)[:, None] + W_T`` for training, summed into the layer's reused buffers.

    The result is a fresh view of the buffer each step; the buffer's version counter is
    bumped by every write, so a graph whose backward still needs an older sum fails loudly
    instead of using the overwritten one. Backward: ∂W_T = ∂W, ∂W_G = ∂W_S = Σ_v ∂W[:, v].
    """

    @staticmethod
    def forward(
        ctx: Any, g: torch.Tensor, s: torch.Tensor, t: torch.Tensor, bufs: _SumBuffers
    ) -> torch.Tensor:
        torch.add(g, s, out=bufs.shared)
        torch.add(bufs.shared.unsqueeze(1), t, out=bufs.full)
        return bufs.full.view(bufs.full.shape)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        # Two views (ctr, ctcvr): one add, not a zero-filled reduction (same sum, a + b).
        shared = torch.add(grad[:, 0], grad[:, 1]) if grad.shape[1] == 2 else grad.sum(1)
        return shared, shared, grad, None


def _linear_init(k: int, out_dim: int, in_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.nn.Linear's default init, drawn for K experts at once."""
    bound = 1.0 / math.sqrt(in_dim)
    w = torch.empty(k, out_dim, in_dim).uniform_(-bound, bound)
    b = torch.empty(k, out_dim).uniform_(-bound, bound)
    return w, b


class TemplatedExperts(nn.Module):
    """K fused expert MLPs (Linear → BatchNorm1d → ReLU → Dropout per layer)."""

    def __init__(self, in_dim: int, config: ModelConfig, num_tasks: int) -> None:
        super().__init__()
        self.num_experts = config.num_experts
        self.num_views = 1 if config.template in ("none", "additive2") else num_tasks
        kv = self.num_experts * self.num_views
        dims = (in_dim, *config.expert_dims)
        self.layers = nn.ModuleList(
            TemplatedExpertLayer(
                dims[i], dims[i + 1], self.num_experts, self.num_views, config.template
            )
            for i in range(len(dims) - 1)
        )
        self.norms = nn.ModuleList(nn.BatchNorm1d(kv * d) for d in config.expert_dims)
        self.dropout = nn.Dropout(config.dropout)
        self.out_dim = dims[-1]

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """Returns (B, K, V, out)."""
        h = e
        for i, (layer, norm) in enumerate(zip(self.layers, self.norms, strict=True)):
            h = self.dropout(F.relu(norm(layer(h, shared_input=i == 0))))
        return h.view(h.shape[0], self.num_experts, self.num_views, self.out_dim)


class TowerBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.norm = nn.BatchNorm1d(out_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(F.relu(self.norm(self.linear(x))))


class Tower(nn.Module):
    def __init__(self, in_dim: int, dims: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        all_dims = (in_dim, *dims)
        self.layers = nn.ModuleList(
            TowerBlock(all_dims[i], all_dims[i + 1], dropout) for i in range(len(dims))
        )
        self.head = nn.Linear(all_dims[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.head(x).squeeze(-1)


class MultiTaskMMoE(SchemaInputs):
    """Templated MMoE over one scenario's impressions; returns logits (B, T) in task order.

    With ``ctcvr_head="esmm"`` the towers are ``ctr`` and ``cvr`` and the CTCVR logit is the
    logit of p_ctr · p_cvr, so CTCVR ≤ CTR by construction.
    """

    def __init__(self, schema: FeatureSchema, config: ModelConfig) -> None:
        super().__init__()
        check_heads(schema, config)
        self.schema, self.config = schema, config
        self.tasks = schema.tasks
        self.tower_names = ("ctr", "cvr") if config.ctcvr_head == "esmm" else tuple(schema.tasks)
        self.task_parents = task_parent_indices(schema)
        in_dim = self._build_inputs(schema, config)
        self.experts = TemplatedExperts(in_dim, config, len(self.tower_names))
        self.gates = nn.ModuleDict(
            {t: nn.Linear(in_dim, config.num_experts) for t in self.tower_names}
        )
        self.towers = nn.ModuleDict(
            {
                t: Tower(self.experts.out_dim, config.tower_dims, config.dropout)
                for t in self.tower_names
            }
        )

    def forward(self, categorical: torch.Tensor, numerical: torch.Tensor) -> torch.Tensor:
        e = self.embed(categorical, numerical)
        h = self.experts(e)  # (B, K, V, out)
        logits = []
        for t, name in enumerate(self.tower_names):
            view = h[:, :, t if h.shape[2] > 1 else 0, :]
            gate = torch.softmax(self.gates[name](e), dim=-1)
            z = torch.einsum("bk,bko->bo", gate, view)
            logits.append(self.towers[name](z))
        return torch.stack(self._heads(logits), dim=1)

    def _heads(self, logits: list[torch.Tensor]) -> list[torch.Tensor]:
        """Tower logits → task logits: ESMM's product, or the schema's product chains."""
        if self.config.ctcvr_head == "esmm":
            return [logits[0], _logit_of_product(logits[0], logits[1])]
        if any(p is not None for p in self.task_parents):
            return chain_logits(logits, self.task_parents)
        return logits


def check_heads(schema: FeatureSchema, config: ModelConfig) -> None:
    if schema.num_tasks != 2 and config.ctcvr_head == "esmm":
        raise ValueError("the esmm head needs exactly two tasks (ctr, ctcvr)")
    if config.ctcvr_head == "esmm" and any(p is not None for p in schema.task_parents):
        raise ValueError(
            "ctcvr_head 'esmm' and the schema's task parents both chain tasks; the schema "
            f"already makes {schema.tasks[1]!r} a product, use ctcvr_head 'direct'"
        )


_logit_of_product = logit_of_product  # the historical name (scenario_mmoe, tests)


def build_model(schema: FeatureSchema, config: ModelConfig, seed: int) -> MultiTaskMMoE:
    """A model whose initial parameters depend only on ``seed`` (the global RNG is untouched),
    so every scenario and the server can build the same starting point independently."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MultiTaskMMoE(schema, config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
