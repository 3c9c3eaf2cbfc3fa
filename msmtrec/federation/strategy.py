"""The server's aggregation, one object for every method (ALGORITHM.md §5).

A :class:`Strategy` holds the federation's server state and turns one round's client updates
into each participating client's next shared parameters. The in-process simulation and the
gRPC aggregator both drive this same class; its whole state round-trips through
:meth:`state_dict` / :meth:`load_state_dict` (tensors + JSON-able metadata, no pickle).

Per policy of the parameter-group table:

* ``FEDAVG``: θ ← θ + Σ_c (n_c/N) Δ_c; every client receives the same value.
* ``PERSONAL_EXPERT``: per expert k (axis 0 of every expert tensor), the clients' deltas are
  coordinated into one update g_k (conflict-averse by default), and client c receives
  θ_c^end + a_{c,k}·g_k.
* ``PERSONAL_TOWER``: per tower tensor, attention over the clients' deltas,
  attn_c = softmax(Δ_c Dᵀ/√dim), and client c receives θ_c^end + b_{c,l}·(attn_c D), with one
  b per client and tower layer l.

The weights a and b are learned by a closed-form hyper-gradient in the next round a client
takes part in: the server's output θ_c^new is that round's θ_c^start, so
diff_c = θ_c^new − θ_c^end = −Δ_c, and because θ^new is linear in the weight,
∂/∂a_{c,k} = ⟨g_k, diff_c⟩ and ∂/∂b_{c,l} = Σ_{tensors of l} ⟨attn_c D, diff_c⟩.

Where each job lives: this module holds the state, the round's bookkeeping, FedAvg and the
towers; :mod:`~msmtrec.federation.experts` the personalized experts and their conflict
coordination; :mod:`~msmtrec.federation.hypergrad` the hyper-gradient and the step on a, b;
:mod:`~msmtrec.federation.blocks` the column blocks and Gram matrices;
:mod:`~msmtrec.federation.simplex_qp` the QP solver for many clients.

Cost (benchmarks/aggregation.py, issues #6 and 16): the clients' deltas of the large
tensors are never materialized all at once. They are formed block by block of columns
(every client's slice of the same columns, a C × b block), and each block serves, in
batched operations over clients, the sample-weighted mean (FedAvg), the conflict-averse
Gram matrix A_k = G_k G_kᵀ, the hyper-gradient of a and, in a second pass once w*_k is
known, mean(Δ) and G w*. Working memory is O(C·b + P) instead of O(C·P); what the server
keeps per client (its personalized θ, its last delta) is written over in place. Everything
is linear in the number of clients except the exact Gram matrix (O(C²P)) and SLSQP (O(C³)
per iteration), which above 8 clients give way to a sketched Gram matrix and a first-order
solver (``ca_scale``; config.py). The Gram matrix is the one float32 product in the server,
summed over at most GRAM_COLUMNS columns per matmul and accumulated in float64 across them
(relative error ~1e-7, the precision of the float32 deltas themselves); means, FedAvg and
G w* stay float64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from msmtrec.federation.blocks import (
    DeltaBlocks,
    block_columns,
    column_blocks,
)
from msmtrec.federation.config import FederationConfig
from msmtrec.federation.experts import ExpertAggregation
from msmtrec.federation.groups import ParameterGroups, Policy
from msmtrec.federation.hypergrad import HyperGradients, Scratch, tower_layer
from msmtrec.spill import SpillDir

Tensors = dict[str, torch.Tensor]


@dataclass
class ClientUpdate:
    """What one client returns at the end of a round: its shared tensors θ_c^end."""

    client_id: str
    num_samples: int
    params: Tensors
    metrics: dict[str, Any] = field(default_factory=dict)


class AggregationError(ValueError):
    """An update that does not fit the federation (names, shapes, dtypes, values)."""


def all_finite(t: torch.Tensor) -> bool:
    """No NaN or ±Inf: NaN propagates through min/max and ±Inf shows up in them, so one
    allocation-free reduction pass decides (``torch.isfinite(t).all()`` writes a bool tensor
    first and is ~30× slower on large tensors)."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return math.isfinite(float(lo)) and math.isfinite(float(hi))


class Strategy(ExpertAggregation, HyperGradients):
    """Server state and aggregation of one federation (any method; see module docstring)."""

    def __init__(
        self,
        config: FederationConfig,
        initial: Mapping[str, torch.Tensor],
        spill: SpillDir | None = None,
    ) -> None:
        self.config = config
        # Where the large per-client tensors (personalized experts, last deltas) live: None,
        # ordinary memory; a SpillDir, memory-mapped scratch files (many clients, big models:
        # msmtrec/spill.py). The values are the same either way.
        self.spill = spill
        self.groups: ParameterGroups = config.parameter_groups()
        names = self.groups.sent_names(initial)
        self.names: list[str] = names
        by_policy = self.groups.by_policy(names)
        self.fedavg_names = by_policy.get(Policy.FEDAVG, [])
        self.expert_names = by_policy.get(Policy.PERSONAL_EXPERT, [])
        self.tower_names = by_policy.get(Policy.PERSONAL_TOWER, [])
        self.tower_layers = sorted({tower_layer(n) for n in self.tower_names})
        self.num_experts = initial[self.expert_names[0]].shape[0] if self.expert_names else 0
        self.initial: Tensors = {n: initial[n].detach().clone() for n in names}
        self.global_params: Tensors = {n: self.initial[n].clone() for n in self.fedavg_names}
        self.personal: dict[str, Tensors] = {}  # client → its personalized θ^start
        self.round = 0
        # Hyper-weights (raw, before clipping) and their SGD momentum buffers.
        self.a: dict[str, list[float]] = {}
        self.a_momentum: dict[str, list[float]] = {}
        self.b: dict[str, dict[str, float]] = {}
        self.b_momentum: dict[str, dict[str, float]] = {}
        # What last round's personalization applied, kept for the hyper-gradient.
        self.last_expert_update: Tensors = {}  # name → g laid out like the tensor
        self.last_attention: dict[str, Tensors] = {}  # client → name → attn_c D
        self.last_participants: list[str] = []
        # personal_form "interp": each client's last own delta of the personalized tensors
        # (the hyper-gradient's direction is g − Δ_c^prev).
        self.last_delta: dict[str, Tensors] = {}
        # What the last round did, for people (results.json, the status API, plots): never
        # read back by the aggregation itself. See :meth:`round_report`.
        self.last_report: dict[str, Any] = {}
        self._expert_mixing: torch.Tensor | None = None  # (K, C): g_k = Σ_j m_kj Δ_j
        self._ca_plans: dict[int, tuple[float, list[float] | None]] = {}
        self._tower_attention: dict[str, torch.Tensor] = {}  # tower layer → (C, C)
        self._signs: torch.Tensor | None = None  # the sketch's column signs (blocks.py)
        self._scratch = Scratch()  # reused working buffers (hypergrad.py)

    # ----------------------------------------------------------------------------- payloads
    @property
    def signature(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {n: (tuple(t.shape), t.dtype) for n, t in self.initial.items()}

    def payload(self, client_id: str) -> Tensors:
        """θ_c^start: the shared tensors client ``client_id`` starts its next round from.

        These are the server's own tensors, not copies: the next :meth:`aggregate` that
        includes the client overwrites its personalized ones in place (it saves a fresh
        allocation per client and round). Copy what you keep across rounds."""
        mine = self.personal.get(client_id)
        out: Tensors = {}
        for n in self.names:
            if n in self.global_params:
                out[n] = self.global_params[n]
            else:
                out[n] = mine[n] if mine is not None else self.initial[n]
        return out

    def _weights_a(self, client_id: str) -> list[float]:
        if client_id not in self.a:
            self.a[client_id] = [self.config.init_weight] * self.num_experts
            self.a_momentum[client_id] = [0.0] * self.num_experts
        return self.a[client_id]

    def _weights_b(self, client_id: str) -> dict[str, float]:
        if client_id not in self.b:
            self.b[client_id] = {layer: self.config.init_weight for layer in self.tower_layers}
            self.b_momentum[client_id] = {layer: 0.0 for layer in self.tower_layers}
        return self.b[client_id]

    def effective_a(self, client_id: str) -> list[float]:
        return [min(max(v, 0.0), 1.0) for v in self._weights_a(client_id)]

    def effective_b(self, client_id: str) -> dict[str, float]:
        return {k: min(max(v, 0.0), 1.0) for k, v in self._weights_b(client_id).items()}

    # ---------------------------------------------------------------------------- aggregate
    def validate(self, update: ClientUpdate) -> None:
        if update.num_samples <= 0:
            raise AggregationError(f"client {update.client_id}: num_samples must be positive")
        got, want = set(update.params), set(self.names)
        if got != want:
            missing, extra = sorted(want - got), sorted(got - want)
            raise AggregationError(
                f"client {update.client_id}: tensor names differ (missing {missing[:5]}, "
                f"unexpected {extra[:5]})"
            )
        for n in self.names:
            t, ref = update.params[n], self.initial[n]
            if t.shape != ref.shape or t.dtype != ref.dtype:
                raise AggregationError(
                    f"client {update.client_id}: {n} has shape {tuple(t.shape)} {t.dtype}, "
                    f"expected {tuple(ref.shape)} {ref.dtype}"
                )
            if not all_finite(t):
                raise AggregationError(f"client {update.client_id}: {n} has NaN or Inf values")

    def aggregate(self, updates: Sequence[ClientUpdate]) -> dict[str, Tensors]:
        """Apply one round. Returns each participant's next θ^start; others keep theirs."""
        if not updates:
            raise AggregationError("a round needs at least one client update")
        ids = [u.client_id for u in updates]
        if len(set(ids)) != len(ids):
            raise AggregationError(f"duplicate client ids in one round: {sorted(ids)}")
        for u in updates:
            self.validate(u)
        # Reduce in client-id order, never arrival order: the result is reproducible.
        updates = sorted(updates, key=lambda u: u.client_id)
        ids = [u.client_id for u in updates]
        starts = {cid: self.payload(cid) for cid in ids}
        ends = {u.client_id: u.params for u in updates}
        tower_deltas = {c: {n: ends[c][n] - starts[c][n] for n in self.tower_names} for c in ids}
        cfg = self.config
        fast_ca = cfg.conflict == "ca"
        general = cfg.personal_form != "add" or cfg.hyper_grad != "raw"
        hyper = cfg.personalize and any(c in self.last_participants for c in ids)
        grams, grad_a = (
            self._expert_statistics(ids, starts, ends, hyper and fast_ca and not general)
            if fast_ca
            else ({}, None)
        )
        if hyper:
            if general:
                grad_a, grads_b = self._hyper_gradients_general(ids, starts, ends, tower_deltas)
            else:
                if grad_a is None:  # other coordination modes: the reference path
                    grad_a = self._grad_a_reference(ids, starts, ends)
                grads_b = [self._grad_b(c, tower_deltas[c]) for c in ids]
            self._hyper_step(ids, grad_a, grads_b)
        if cfg.personal_form == "interp":
            self._store_deltas(ids, starts, ends)
        new_global = self._fedavg(updates, starts, ends)
        new_personal: dict[str, Tensors] = {
            c: {n: ends[c][n].clone() for n in self.tower_names} for c in ids
        }
        self.last_expert_update = self._personal_experts(ids, starts, ends, grams, new_personal)
        self.last_attention = self._personal_towers(ids, tower_deltas, new_personal)
        self.global_params.update(new_global)
        self.personal.update(new_personal)
        self.last_participants = ids
        self.round += 1
        self.last_report = self._report(ids)
        return {cid: self.payload(cid) for cid in ids}

    def _store_deltas(
        self, ids: list[str], starts: dict[str, Tensors], ends: dict[str, Tensors]
    ) -> None:
        """last_delta[c] = θ_c^end − θ_c^start for the personalized tensors, written over the
        client's previous deltas (read by the hyper-gradient, which ran before): the same
        values as fresh tensors without C × P fresh memory (page faults) every round."""
        for c in ids:
            mine = self.last_delta.setdefault(c, {})
            for n in self.expert_names + self.tower_names:
                old = mine.get(n)
                if old is None:
                    old = self._per_client_empty(ends[c][n])
                mine[n] = torch.sub(ends[c][n], starts[c][n], out=old)

    def _per_client_empty(self, like: torch.Tensor) -> torch.Tensor | None:
        """Storage for a new per-client tensor shaped like ``like``: in the spill directory
        when there is one, else None (the operation allocates ordinary memory itself)."""
        return self.spill.empty_like(like) if self.spill is not None else None

    def _per_client_copy(self, t: torch.Tensor) -> torch.Tensor:
        return self.spill.copy(t) if self.spill is not None else t.clone()

    def _report(self, ids: list[str]) -> dict[str, Any]:
        """The personalization this round applied, as plain JSON-able numbers.

        ``learn_from[part][c][j]``: the weight with which client j's delta entered client
        c's new parameters beyond c's own delta — for experts the mean over experts of
        a_{c,k}·m_{k,j}, where g_k = Σ_j m_{k,j} Δ_j (the mean plus the conflict-averse
        correction, divided by the rescale); for towers the mean over layers of
        b_{c,l}·attn_{c,j}. Rows are "who learns from whom"."""
        cfg = self.config
        if not (self.expert_names or self.tower_names):
            return {}
        report: dict[str, Any] = {"round": self.round, "clients": ids}
        if self.expert_names:
            report["a"] = {
                c: (
                    self.effective_a(c) if cfg.personalize else [cfg.init_weight] * self.num_experts
                )
                for c in ids
            }
            report["ca"] = {
                str(k): {"c": c_k, "w": dict(zip(ids, w, strict=True)) if w is not None else None}
                for k, (c_k, w) in self._ca_plans.items()
            }
            if self._expert_mixing is not None:
                mix = self._expert_mixing  # (K, C)
                report["learn_from"] = {"experts": {
                    c: dict(zip(ids, (torch.tensor(report["a"][c], dtype=torch.float64) @ mix
                                      / self.num_experts).tolist(), strict=True))
                    for c in ids
                }}  # fmt: skip
        if self.tower_names:
            report["b"] = {
                c: (self.effective_b(c) if cfg.personalize
                    else {layer: cfg.init_weight for layer in self.tower_layers})
                for c in ids
            }  # fmt: skip
            towers: dict[str, dict[str, float]] = {}
            for i, c in enumerate(ids):
                row = torch.zeros(len(ids), dtype=torch.float64)
                for layer, attn in self._tower_attention.items():
                    row += report["b"][c][layer] * attn[i]
                row /= max(len(self._tower_attention), 1)
                towers[c] = dict(zip(ids, row.tolist(), strict=True))
            report.setdefault("learn_from", {})["towers"] = towers
        return report

    def _flat(
        self, ids: list[str], source: dict[str, Tensors], name: str, k: int | None = None
    ) -> list[torch.Tensor]:
        """Every client's tensor ``name`` (its expert ``k`` slice) as a flat view; clients
        that share one tensor (the global θ, or the initial one) share one view."""
        views: dict[int, torch.Tensor] = {}
        out = []
        for c in ids:
            t = source[c][name]
            v = views.get(id(t))
            if v is None:
                v = views[id(t)] = (t if k is None else t[k]).reshape(-1)
            out.append(v)
        return out

    def _fedavg(
        self, updates: Sequence[ClientUpdate], starts: dict[str, Tensors], ends: dict[str, Tensors]
    ) -> Tensors:
        """θ + Σ_c (n_c/N) Δ_c, accumulated in float64 block by block."""
        total = sum(u.num_samples for u in updates)
        ids = [u.client_id for u in updates]
        weights = torch.tensor([u.num_samples / total for u in updates], dtype=torch.float64)
        out: Tensors = {}
        blocks: DeltaBlocks | None = None
        acc = torch.empty(block_columns(len(ids)), dtype=torch.float64)
        for n in self.fedavg_names:
            current = self.global_params[n]
            flat_out = torch.empty(current.numel(), dtype=current.dtype)
            flat_cur = current.reshape(-1)
            e, s = self._flat(ids, ends, n), self._flat(ids, starts, n)
            blocks = DeltaBlocks.reuse(blocks, len(ids), current.dtype)
            for lo, hi in column_blocks(current.numel(), len(ids)):
                d = blocks.block(e, s, lo, hi)
                a = acc[: hi - lo]
                torch.mv(d.T, weights, out=a)
                a.add_(flat_cur[lo:hi])
                flat_out[lo:hi].copy_(a)
            out[n] = flat_out.view_as(current)
        return out

    def _attention(self, d: torch.Tensor) -> torch.Tensor:
        """Row-stochastic (C, C) attention over the clients' deltas ``d`` (C, dim).

        FedHCA²'s scaled dot product softmax(Δ Dᵀ/√dim) by default; with a temperature τ,
        softmax(cos(Δ_c, Δ_j)/τ): scale-free, so it does not collapse to uniform when the
        deltas are small (they are, a round's tower update is ~1e-2 per weight)."""
        tau = self.config.attention_temperature
        if tau is None:
            return torch.softmax(d @ d.T / math.sqrt(d.shape[1]), dim=1)
        unit = d / (d.norm(dim=1, keepdim=True) + 1e-16)
        return torch.softmax(unit @ unit.T / tau, dim=1)

    def _personal_towers(
        self, ids: list[str], deltas: dict[str, Tensors], new: dict[str, Tensors]
    ) -> dict[str, Tensors]:
        attention: dict[str, Tensors] = {c: {} for c in ids}
        per_layer: dict[str, list[torch.Tensor]] = {}
        for n in self.tower_names:
            d = torch.stack([deltas[c][n].reshape(-1) for c in ids]).double()  # (C, dim)
            attn = self._attention(d)
            per_layer.setdefault(tower_layer(n), []).append(attn)
            mixed = (attn @ d).to(self.initial[n].dtype)
            for i, c in enumerate(ids):
                attention[c][n] = mixed[i].view_as(self.initial[n])
        self._tower_attention = {
            layer: torch.stack(attns).mean(0) for layer, attns in per_layer.items()
        }
        interp = self.config.personal_form == "interp"
        for c in ids:
            b = self.effective_b(c) if self.config.personalize else None
            for n in self.tower_names:
                weight = b[tower_layer(n)] if b is not None else self.config.init_weight
                direction = attention[c][n] - deltas[c][n] if interp else attention[c][n]
                new[c][n] = new[c][n] + weight * direction
        return attention

    # -------------------------------------------------------------------------------- state
    def state_dict(self) -> tuple[Tensors, dict[str, Any]]:
        """(tensors, metadata): everything needed to resume, in safetensors/JSON-able form."""
        tensors: Tensors = {}
        for n, t in self.initial.items():
            tensors[f"initial/{n}"] = t
        for n, t in self.global_params.items():
            tensors[f"global/{n}"] = t
        for c, params in self.personal.items():
            for n, t in params.items():
                tensors[f"personal/{c}/{n}"] = t
        for n, t in self.last_expert_update.items():
            tensors[f"expert_update/{n}"] = t
        for c, params in self.last_attention.items():
            for n, t in params.items():
                tensors[f"attention/{c}/{n}"] = t
        for c, params in self.last_delta.items():
            for n, t in params.items():
                tensors[f"delta/{c}/{n}"] = t
        meta = {
            "config": self.config.to_dict(),
            "round": self.round,
            "clients": sorted(self.personal),
            "attention_clients": sorted(self.last_attention),
            "delta_clients": sorted(self.last_delta),
            "a": self.a,
            "a_momentum": self.a_momentum,
            "b": self.b,
            "b_momentum": self.b_momentum,
            "last_participants": self.last_participants,
        }
        return {k: v.contiguous() for k, v in tensors.items()}, meta

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        if FederationConfig.from_dict(meta["config"]) != self.config:
            raise ValueError("checkpoint was written by a federation with another configuration")
        for n in self.names:
            if f"initial/{n}" not in tensors:
                raise ValueError(f"checkpoint lacks tensor initial/{n}")
        self.initial = {n: tensors[f"initial/{n}"].clone() for n in self.names}
        self.global_params = {n: tensors[f"global/{n}"].clone() for n in self.fedavg_names}
        personal_names = self.expert_names + self.tower_names
        self.personal = {
            c: {n: self._per_client_copy(tensors[f"personal/{c}/{n}"]) for n in personal_names}
            for c in meta["clients"]
        }
        self.last_expert_update = {
            n: tensors[f"expert_update/{n}"].clone()
            for n in self.expert_names
            if f"expert_update/{n}" in tensors
        }
        self.last_attention = {
            c: {n: tensors[f"attention/{c}/{n}"].clone() for n in self.tower_names}
            for c in meta["attention_clients"]
        }
        self.last_delta = {
            c: {n: self._per_client_copy(tensors[f"delta/{c}/{n}"]) for n in personal_names}
            for c in meta.get("delta_clients", [])
        }
        self.round = int(meta["round"])
        self.a = {c: list(v) for c, v in meta["a"].items()}
        self.a_momentum = {c: list(v) for c, v in meta["a_momentum"].items()}
        self.b = {c: dict(v) for c, v in meta["b"].items()}
        self.b_momentum = {c: dict(v) for c, v in meta["b_momentum"].items()}
        self.last_participants = list(meta["last_participants"])
