"""A load-time compiled, inference-only form of :class:`~msmtrec.model.mmoe.MultiTaskMMoE`.

Everything that does not depend on the request is done once, when a version is loaded:

* **Template folding**: ``W_G + W_S + W_T[t]`` is summed once into one effective weight per
  expert and task view (the eager model re-adds ≈18 M floats per forward with the paper preset).
* **BatchNorm folding**: in eval mode BatchNorm is an affine map, so it is folded into the
  Linear before it (``W' = W·γ/σ``, ``b' = (b − μ)·γ/σ + β``). Dropout is the identity.
* **Embedding folding**: the first expert layer and the gates are linear in the embedding
  vector ``e = [Emb_1(x_1) … Emb_16(x_16), Linear_num(x_num)]``, so their product with each
  embedding row is precomputed into one table: a request then sums 16 table rows
  (``embedding_bag``) and does one small ``(B, 63) × (63, N)`` matmul instead of a
  ``(B, 2176) × (2176, 8208)`` one. That is what brings the paper preset under its latency
  target on two cores.

Folding is done in float64 and cast to float32 once, so the compiled model agrees with the
eager model's own forward to float32 rounding; :func:`compile_model` checks that on a random
batch and refuses the version if it does not (a guard against a model change this module
does not know about).

**Device** (issue #17): folding always runs on the CPU in float64 from the registry's CPU
float32 weights; with ``device="cuda[:N]"`` the folded tensors are then moved to the GPU and
checked again against the CPU eager reference (same tolerance). Either engine takes CPU
tensors and returns CPU float32 probabilities, so the request path does not change.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from msmtrec.model.inputs import chain_logits, table_key
from msmtrec.model.mmoe import MultiTaskMMoE, _logit_of_product

log = logging.getLogger("msmtrec.gateway")

# Probabilities of the compiled and the eager model must agree to this on the check batch.
CHECK_ATOL = 1e-5
# A feature's table is folded into the first layer when (rows × first-layer outputs) is at
# most this many floats (64 MiB); larger id tables are looked up and multiplied per request.
FOLD_MAX_FLOATS = 1 << 24


def _table_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The weight of a table that has a module of its own (msmtrec.model.inputs)."""
    key = table_key(name)
    for attr in ("private_tables", "embedding_tables"):
        tables = getattr(model, attr, None)
        if tables is not None and key in tables:
            return tables[key].weight
    raise KeyError(f"the model has no module for embedding table {name!r}")


def _bn_affine(norm: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and shift (float64) that eval-mode BatchNorm applies per unit."""
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError("BatchNorm without running statistics cannot be folded")
    scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
    shift = norm.bias.double() - norm.running_mean.double() * scale
    return scale, shift


@dataclass(frozen=True)
class _Layer:
    weight_t: torch.Tensor  # (in, out): addmm(bias, x, weight_t)
    bias: torch.Tensor


class CompiledMMoE:
    """Probabilities ``(B, T)`` from ``categorical`` (B, F) int64 ids already clamped into
    ``[0, vocab]`` and ``numerical`` (B, F_num) float32. Stateless and thread-safe: it only
    reads tensors fixed at construction."""

    def __init__(self, model: MultiTaskMMoE) -> None:
        if model.training:
            raise ValueError("compile a model in eval mode")
        cfg = model.config
        experts = model.experts
        self.tasks = tuple(model.tasks)
        self.tower_names = tuple(model.tower_names)
        self.esmm = cfg.ctcvr_head == "esmm"
        self.parents = tuple(getattr(model, "task_parents", (None,) * len(self.tasks)))
        self.num_experts = experts.num_experts
        self.num_views = experts.num_views
        kv = self.num_experts * self.num_views
        d = cfg.embed_dim
        n_cat = model.schema.num_categorical
        self.device = torch.device("cpu")
        with torch.no_grad():
            # -- first expert layer (+ BN) and the gates share the input e: one fused weight
            layers = list(experts.layers)
            w0, b0 = layers[0].effective()  # (K, V, out0, in), (K, V, out0)
            out0 = layers[0].out_dim
            w0 = w0.double().reshape(kv * out0, -1)
            b0 = b0.double().reshape(-1)
            scale, shift = _bn_affine(experts.norms[0])
            w0 = w0 * scale[:, None]
            b0 = b0 * scale + shift
            gate_w = [model.gates[t].weight.double() for t in self.tower_names]
            gate_b = [model.gates[t].bias.double() for t in self.tower_names]
            w_all = torch.cat([w0, *gate_w])  # (N, 17·d)
            b_all = torch.cat([b0, *gate_b])
            self.hidden0 = kv * out0
            # -- embedding folding: one table row per (field, id), offsets as in the model
            self._fold_embeddings(model, w_all, d)
            w_numblock = w_all[:, n_cat * d :]  # (N, d)
            num_w = model.numerical.weight.double()  # (d, F_num)
            num_b = model.numerical.bias.double()
            self.num_weight_t = (w_numblock @ num_w).T.float().contiguous()  # (F_num, N)
            self.bias0 = (b_all + w_numblock @ num_b).float().contiguous()
            # -- deeper expert layers: effective weights with BN folded, batched over KV
            self.deep: list[tuple[torch.Tensor, torch.Tensor, int]] = []
            for layer, norm in zip(layers[1:], list(experts.norms)[1:], strict=True):
                w, b = layer.effective()  # (K, V, out, in), (K, V, out)
                out = layer.out_dim
                s, t = _bn_affine(norm)
                s, t = s.reshape(kv, out), t.reshape(kv, out)
                w = w.double().reshape(kv, out, -1) * s[..., None]
                b = b.double().reshape(kv, out) * s + t
                self.deep.append(
                    (w.transpose(1, 2).float().contiguous(), b.float().unsqueeze(1), out)
                )
            self.expert_out = experts.out_dim
            # -- towers: Linear+BN folded, then the head
            self.towers: list[tuple[list[_Layer], _Layer]] = []
            for name in self.tower_names:
                tower = model.towers[name]
                blocks = []
                for block in tower.layers:
                    s, t = _bn_affine(block.norm)
                    w = block.linear.weight.double() * s[:, None]
                    b = block.linear.bias.double() * s + t
                    blocks.append(_Layer(w.T.float().contiguous(), b.float()))
                head = _Layer(
                    tower.head.weight.double().T.float().contiguous(),
                    tower.head.bias.double().float(),
                )
                self.towers.append((blocks, head))

    def _fold_embeddings(self, model: MultiTaskMMoE, w_all: torch.Tensor, d: int) -> None:
        """Fold each feature's table into the first layer's rows (``table``), except tables
        whose folded form would exceed :data:`FOLD_MAX_FLOATS` (ids with millions of
        values): those stay as embeddings, looked up and multiplied per request
        (``unfolded``). The template's E_S is added to the tables it covers."""
        schema = model.schema
        n_out = w_all.shape[0]
        dense = model.embedding.weight.double()
        if getattr(model, "embedding_s", None) is not None:
            dense = dense + model.embedding_s.weight.double()
        layout = getattr(model, "input_layout", None)
        default = schema.has_default_tables or layout is None
        starts = model.offsets.tolist()
        tables, fold_offsets, fold_cols, position = [], [], [], 0
        self.unfolded: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        for f in range(schema.num_categorical):
            size = schema.table_sizes[f]
            w_f = w_all[:, f * d : (f + 1) * d]  # (N, d)
            t = schema.feature_tables[f]
            if default or t in layout.dense_tables:
                weight, start = dense, starts[f]
            else:
                weight, start = _table_weight(model, schema.tables[t].name), 0
            if default or size * n_out <= FOLD_MAX_FLOATS:
                tables.append(weight[start : start + size].double() @ w_f.T)
                fold_offsets.append(position)
                fold_cols.append(f)
                position += size
            else:  # float32 view of the table itself: no copy of millions of rows
                self.unfolded.append((f, weight.detach(), w_f.T.float().contiguous()))
        self.all_folded = not self.unfolded
        self.table = (
            torch.cat(tables).float().contiguous() if tables else torch.zeros(1, n_out)
        )  # (Σ folded sizes, N)
        self.offsets = torch.tensor(fold_offsets, dtype=torch.long)
        self.fold_cols = torch.tensor(fold_cols, dtype=torch.long)

    def to(self, device: torch.device | str) -> CompiledMMoE:
        """A copy whose folded tensors live on ``device`` (this one is left as it is)."""
        device = torch.device(device)
        out = copy.copy(self)
        out.device = device
        for name in ("table", "offsets", "fold_cols", "num_weight_t", "bias0"):
            setattr(out, name, getattr(self, name).to(device))
        out.unfolded = [(f, w.to(device), wt.to(device)) for f, w, wt in self.unfolded]
        out.deep = [(w.to(device), b.to(device), n) for w, b, n in self.deep]

        def move(layer: _Layer) -> _Layer:
            return replace(layer, weight_t=layer.weight_t.to(device), bias=layer.bias.to(device))

        out.towers = [([move(b) for b in blocks], move(head)) for blocks, head in self.towers]
        return out

    def logits(self, categorical: torch.Tensor, numerical: torch.Tensor) -> torch.Tensor:
        batch = numerical.shape[0]
        pre = torch.addmm(self.bias0, numerical, self.num_weight_t)
        if self.all_folded:
            pre += F.embedding_bag(categorical + self.offsets, self.table, mode="sum")
        else:
            if len(self.fold_cols):
                folded = categorical[:, self.fold_cols] + self.offsets
                pre += F.embedding_bag(folded, self.table, mode="sum")
            for f, weight, w_t in self.unfolded:
                pre.addmm_(F.embedding(categorical[:, f], weight), w_t)
        h = pre[:, : self.hidden0].relu_()  # (B, KV·out0), in place: no new 3 MB buffer
        gate_logits = pre[:, self.hidden0 :]
        kv = self.num_experts * self.num_views
        x = h.view(batch, kv, -1).transpose(0, 1)  # (KV, B, out0), a strided view
        for w_t, b, _ in self.deep:
            x = torch.baddbmm(b, x, w_t).relu_()  # (KV, B, out)
        x = x.view(self.num_experts, self.num_views, batch, self.expert_out)
        k = self.num_experts
        outs = []
        for t, (blocks, head) in enumerate(self.towers):
            view = x[:, t if self.num_views > 1 else 0]  # (K, B, out)
            gate = torch.softmax(gate_logits[:, t * k : (t + 1) * k], dim=-1)  # (B, K)
            z = torch.bmm(gate.unsqueeze(1), view.transpose(0, 1)).squeeze(1)  # (B, out)
            for layer in blocks:
                z = torch.addmm(layer.bias, z, layer.weight_t).relu_()
            outs.append(torch.addmm(head.bias, z, head.weight_t).squeeze(-1))
        if self.esmm:
            return torch.stack((outs[0], _logit_of_product(outs[0], outs[1])), dim=1)
        if any(p is not None for p in self.parents):
            return torch.stack(chain_logits(outs, self.parents), dim=1)
        return torch.stack(outs, dim=1)

    def __call__(self, categorical: torch.Tensor, numerical: torch.Tensor) -> torch.Tensor:
        """CPU probabilities (B, T) float32 from CPU inputs, wherever the engine lives."""
        if self.device.type == "cpu":
            return torch.sigmoid(self.logits(categorical, numerical))
        cat = categorical.to(self.device, non_blocking=True)
        num = numerical.to(self.device, non_blocking=True)
        return torch.sigmoid(self.logits(cat, num)).cpu()


class EagerMMoE:
    """The published module itself (for debugging or a model this code cannot compile)."""

    def __init__(self, model: MultiTaskMMoE) -> None:
        self.model = model.eval()
        self.tasks = tuple(model.tasks)
        self.device = next(model.parameters()).device

    def to(self, device: torch.device | str) -> EagerMMoE:
        """An engine over a copy of the module on ``device``."""
        return EagerMMoE(copy.deepcopy(self.model).to(device))

    def __call__(self, categorical: torch.Tensor, numerical: torch.Tensor) -> torch.Tensor:
        """CPU probabilities (B, T) float32 from CPU inputs, wherever the module lives."""
        if self.device.type == "cpu":
            return torch.sigmoid(self.model(categorical, numerical))
        cat = categorical.to(self.device, non_blocking=True)
        num = numerical.to(self.device, non_blocking=True)
        return torch.sigmoid(self.model(cat, num)).cpu()


Engine = CompiledMMoE | EagerMMoE


def random_batch(model: MultiTaskMMoE, rows: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Ids over the whole vocabulary (OOV slot included) and numericals in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    schema = model.schema
    cat = torch.stack(
        [torch.randint(0, v + 1, (rows,), generator=gen) for v in schema.vocab_sizes], 1
    )
    num = torch.rand(rows, schema.num_numerical, generator=gen)
    return cat, num


def compile_model(
    model: MultiTaskMMoE, kind: str = "compiled", device: torch.device | str = "cpu"
) -> Engine:
    """Build the serving engine and prove it on a random batch: the version must give finite
    probabilities (else ValueError: the version is refused), and the compiled engine must
    agree with the eager forward (else the eager module is served instead). ``model`` is on
    the CPU (as the registry loads it); on another ``device`` the engine is moved there and
    must still agree with the CPU reference (else the CPU engine is served, loudly)."""
    model.eval()
    cat, num = random_batch(model, 64)
    with torch.inference_mode():
        reference = torch.sigmoid(model(cat, num))
        if not torch.isfinite(reference).all():
            raise ValueError("smoke forward produced non-finite probabilities")
        engine: Engine = (
            EagerMMoE(model) if kind != "compiled" else _compiled(model, cat, num, reference)
        )
        device = torch.device(device)
        if device.type == "cpu":
            return engine
        moved = engine.to(device)
        err = float((moved(cat, num) - reference).abs().max())
    if err > CHECK_ATOL or math.isnan(err):
        log.error(
            "the engine on %s differs from the CPU reference by %.2e; serving it on the CPU",
            device, err,
        )  # fmt: skip
        return engine
    return moved


def _compiled(
    model: MultiTaskMMoE, cat: torch.Tensor, num: torch.Tensor, reference: torch.Tensor
) -> Engine:
    """The compiled engine if it matches ``reference`` on the check batch, else the eager one."""
    try:
        engine = CompiledMMoE(model)
        err = float((engine(cat, num) - reference).abs().max())
    except (ValueError, RuntimeError, AttributeError, IndexError, KeyError) as exc:
        log.error("cannot compile the model (%s); serving the eager module", exc)
        return EagerMMoE(model)
    if err > CHECK_ATOL or math.isnan(err):
        # A folding bug (or a model change this module does not know) must not cost
        # correctness: serve the module itself, slower, and say so loudly.
        log.error(
            "compiled engine differs from the eager model by %.2e; serving the eager module", err
        )
        return EagerMMoE(model)
    return engine
