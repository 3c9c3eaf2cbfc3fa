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
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from msmtrec.federation.config import FederationConfig
from msmtrec.federation.conflict import coordinate
from msmtrec.federation.groups import ParameterGroups, Policy

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


def tower_layer(name: str) -> str:
    """'towers.ctr.layers.0.linear.weight' → 'towers.ctr.layers.0.linear'."""
    return name.rsplit(".", 1)[0]


class Strategy:
    """Server state and aggregation of one federation (any method; see module docstring)."""

    def __init__(self, config: FederationConfig, initial: Mapping[str, torch.Tensor]) -> None:
        self.config = config
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

    # ----------------------------------------------------------------------------- payloads
    @property
    def signature(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {n: (tuple(t.shape), t.dtype) for n, t in self.initial.items()}

    def payload(self, client_id: str) -> Tensors:
        """θ_c^start: the shared tensors client ``client_id`` starts its next round from."""
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
            if not torch.isfinite(t).all():
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
        deltas = {
            u.client_id: {n: u.params[n] - starts[u.client_id][n] for n in self.names}
            for u in updates
        }
        if self.config.personalize:
            self._hyper_step(ids, deltas)
        new_global = self._fedavg(updates, deltas)
        new_personal: dict[str, Tensors] = {
            u.client_id: {n: u.params[n].clone() for n in self.expert_names + self.tower_names}
            for u in updates
        }
        self.last_expert_update = self._personal_experts(ids, deltas, new_personal)
        self.last_attention = self._personal_towers(ids, deltas, new_personal)
        self.global_params.update(new_global)
        self.personal.update(new_personal)
        self.last_participants = ids
        self.round += 1
        return {cid: self.payload(cid) for cid in ids}

    def _fedavg(self, updates: Sequence[ClientUpdate], deltas: dict[str, Tensors]) -> Tensors:
        total = sum(u.num_samples for u in updates)
        out: Tensors = {}
        for n in self.fedavg_names:
            acc = torch.zeros_like(self.global_params[n], dtype=torch.float64)
            for u in updates:
                acc += (u.num_samples / total) * deltas[u.client_id][n].double()
            out[n] = (self.global_params[n].double() + acc).to(self.global_params[n].dtype)
        return out

    def _personal_experts(
        self, ids: list[str], deltas: dict[str, Tensors], new: dict[str, Tensors]
    ) -> Tensors:
        if not self.expert_names:
            return {}
        cfg = self.config
        update: Tensors = {n: torch.zeros_like(self.initial[n]) for n in self.expert_names}
        for k in range(self.num_experts):
            stacked = torch.stack(
                [torch.cat([deltas[c][n][k].reshape(-1) for n in self.expert_names]) for c in ids]
            )
            g = coordinate(stacked, cfg.conflict, cfg.ca_alpha, cfg.ca_rescale)
            offset = 0
            for n in self.expert_names:
                size = update[n][k].numel()
                update[n][k] = g[offset : offset + size].view_as(update[n][k])
                offset += size
        for c in ids:
            a = self.effective_a(c) if cfg.personalize else [cfg.init_weight] * self.num_experts
            scale = torch.tensor(a, dtype=torch.float32)
            for n in self.expert_names:
                shape = (-1,) + (1,) * (update[n].dim() - 1)
                new[c][n] = new[c][n] + scale.view(shape) * update[n]
        return update

    def _personal_towers(
        self, ids: list[str], deltas: dict[str, Tensors], new: dict[str, Tensors]
    ) -> dict[str, Tensors]:
        attention: dict[str, Tensors] = {c: {} for c in ids}
        for n in self.tower_names:
            d = torch.stack([deltas[c][n].reshape(-1) for c in ids]).double()  # (C, dim)
            attn = torch.softmax(d @ d.T / math.sqrt(d.shape[1]), dim=1)
            mixed = (attn @ d).to(self.initial[n].dtype)
            for i, c in enumerate(ids):
                attention[c][n] = mixed[i].view_as(self.initial[n])
        for c in ids:
            b = self.effective_b(c) if self.config.personalize else None
            for n in self.tower_names:
                weight = b[tower_layer(n)] if b is not None else self.config.init_weight
                new[c][n] = new[c][n] + weight * attention[c][n]
        return attention

    def hyper_gradients(
        self, client_id: str, delta: Tensors
    ) -> tuple[list[float], dict[str, float]]:
        """∂L/∂â_{c,k} and ∂L/∂b̂_{c,l} at last round's output, with diff_c = −Δ_c."""
        grad_a = [0.0] * self.num_experts
        for n in self.expert_names:
            g = self.last_expert_update.get(n)
            if g is None:
                continue
            for k in range(self.num_experts):
                grad_a[k] -= float((g[k].double() * delta[n][k].double()).sum())
        grad_b = {layer: 0.0 for layer in self.tower_layers}
        mixed = self.last_attention.get(client_id, {})
        for n in self.tower_names:
            if n in mixed:
                grad_b[tower_layer(n)] -= float((mixed[n].double() * delta[n].double()).sum())
        return grad_a, grad_b

    def _hyper_step(self, ids: list[str], deltas: dict[str, Tensors]) -> None:
        """One SGD step (momentum, weight decay) on a and b for the clients that were also in
        the previous round (only they received the output being judged)."""
        cfg = self.config
        for c in ids:
            if c not in self.last_participants:
                continue
            grad_a, grad_b = self.hyper_gradients(c, deltas[c])
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
        meta = {
            "config": self.config.to_dict(),
            "round": self.round,
            "clients": sorted(self.personal),
            "attention_clients": sorted(self.last_attention),
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
            c: {n: tensors[f"personal/{c}/{n}"].clone() for n in personal_names}
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
        self.round = int(meta["round"])
        self.a = {c: list(v) for c, v in meta["a"].items()}
        self.a_momentum = {c: list(v) for c, v in meta["a_momentum"].items()}
        self.b = {c: dict(v) for c, v in meta["b"].items()}
        self.b_momentum = {c: dict(v) for c, v in meta["b_momentum"].items()}
        self.last_participants = list(meta["last_participants"])
