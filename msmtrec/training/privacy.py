"""Record-level differential privacy of local training: DP-SGD with per-sample clipping,
Gaussian noise and Poisson sampling, and an accountant for the ε spent.

Why this shape (docs/PRIVACY.md has the full argument):

* **Per-sample gradient norms without per-sample gradients** ("ghost norms", Goodfellow 2015;
  Li et al. 2022): for a layer ``y = W x`` the per-sample gradient is ``g_i xᵢᵀ``, whose norm
  is ``‖g_i‖·‖x_i‖``; forward hooks keep each layer's input, one ``torch.autograd.grad`` pass
  gives every layer's output gradient, and the norms follow in closed form for every layer
  type of the model (Linear, Embedding, the fused templated expert layers with their shared
  W_G / W_S summed over task views, and BatchNorm's affine part). Nothing of size
  batch × parameters is materialised (vmap'd per-sample gradients would be ~600 MB a step on
  the ``small`` preset).
* **Clipping by re-weighting**: the clipped sum Σᵢ cᵢ∇ℓᵢ is the gradient of Σᵢ cᵢℓᵢ, so the
  second backward pass is the ordinary batched one with per-row loss weights cᵢ. With an
  infinite clip every cᵢ is exactly 1.0 and, without noise, the step is the non-private step
  bit for bit (tests/unit/test_privacy.py).
* **BatchNorm normalises with fixed statistics** (:func:`freeze_batchnorm`): batch statistics
  make every row's output depend on the other rows, so no per-sample bound exists; the
  running statistics stay at their (data-independent) values and γ, β train privately.
* **Poisson sampling from a secret generator**: the amplification-by-sampling the accountant
  assumes needs rows drawn independently with rate q and a sampling the adversary cannot
  replay; the same generator draws the noise.
* **Accounting**: Opacus' RDP accountant (Mironov 2017, Poisson-subsampled Gaussian), and its
  calibration of the noise multiplier to a target ε.
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msmtrec.model.mmoe import TemplatedExpertLayer
from msmtrec.training.config import PrivacyConfig

__all__ = [
    "DPSGD",
    "PrivacyAccountant",
    "PrivacyBudgetExceeded",
    "PrivateTraining",
    "calibrate_noise",
    "freeze_batchnorm",
    "per_sample_grad_norms",
    "steps_per_epoch",
]

ACCOUNTANT = "opacus-rdp"


class PrivacyBudgetExceeded(RuntimeError):
    """A round would spend more ε than the client's budget; the client does not train it."""


# ---------------------------------------------------------------------------- accounting
class PrivacyAccountant:
    """ε spent by Poisson-subsampled Gaussian steps, by Opacus' RDP accountant.

    ``history`` is Opacus' own: ``[(noise_multiplier, sample_rate, steps), …]``, so the ε is
    the library's computation, not a copy of it.
    """

    def __init__(self, delta: float) -> None:
        from opacus.accountants import RDPAccountant

        self.delta = float(delta)
        self._acc = RDPAccountant()

    @property
    def history(self) -> list[tuple[float, float, int]]:
        return list(self._acc.history)

    @property
    def steps(self) -> int:
        return sum(int(s) for _, _, s in self._acc.history)

    def step(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        h = self._acc.history
        if h and h[-1][0] == noise_multiplier and h[-1][1] == sample_rate:
            h[-1] = (noise_multiplier, sample_rate, h[-1][2] + steps)
        else:
            h.append((float(noise_multiplier), float(sample_rate), int(steps)))

    def epsilon(self) -> float:
        """ε spent so far at this accountant's δ (0 before any step; ∞ for noise 0)."""
        if not self._acc.history:
            return 0.0
        if any(sigma == 0 for sigma, _, _ in self._acc.history):
            return math.inf
        with warnings.catch_warnings():  # "optimal order is the largest alpha": a bound still
            warnings.simplefilter("ignore")
            return float(self._acc.get_epsilon(delta=self.delta))

    def epsilon_after(self, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """ε this accountant would report after ``steps`` more steps (nothing is recorded)."""
        saved = [tuple(h) for h in self._acc.history]
        try:
            self.step(noise_multiplier, sample_rate, steps)
            return self.epsilon()
        finally:
            self._acc.history = saved

    def load_history(self, history: Sequence[Sequence[float]]) -> None:
        self._acc.history = [(float(s), float(q), int(k)) for s, q, k in history]


def calibrate_noise(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier (to Opacus' tolerance 0.01 in ε) whose ``steps`` steps at
    ``sample_rate`` spend at most ``epsilon`` at ``delta``."""
    from opacus.accountants.utils import get_noise_multiplier

    if steps < 1:
        raise ValueError(f"cannot plan a privacy budget over {steps} steps")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(
                get_noise_multiplier(
                    target_epsilon=epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant="rdp",
                )
            )
        except ValueError as exc:
            raise ValueError(
                f"dp_epsilon {epsilon} is unreachable for {steps} steps at sample rate "
                f"{sample_rate:.4g} and δ {delta:.3g}: {exc}"
            ) from None


# ------------------------------------------------------------------ per-sample grad norms
def freeze_batchnorm(model: nn.Module) -> None:
    """Every BatchNorm normalises with its running statistics and stops updating them
    (γ and β still train). Call after ``model.train()``."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


@dataclass
class _Capture:
    module: nn.Module
    names: dict[str, str]  # local parameter name -> full name, only the trained ones
    x: torch.Tensor | None = None
    out: torch.Tensor | None = None
    shared_input: bool = False


def _trained_modules(model: nn.Module, params: Mapping[str, nn.Parameter]) -> list[_Capture]:
    """The modules holding the trained parameters; a trained parameter of a module type
    whose per-sample norm is unknown here is an error (it would escape the clipping)."""
    trained = {id(p) for p in params.values()}
    full = {id(p): n for n, p in params.items()}
    caps, covered = [], set()
    kinds = (nn.Linear, nn.Embedding, nn.modules.batchnorm._BatchNorm, TemplatedExpertLayer)
    for module in model.modules():
        own = {n: p for n, p in module.named_parameters(recurse=False) if id(p) in trained}
        if not own:
            continue
        if not isinstance(module, kinds):
            raise TypeError(
                f"differentially private training cannot bound the per-sample gradients of "
                f"{type(module).__name__} ({', '.join(full[id(p)] for p in own.values())})"
            )
        if isinstance(module, nn.Embedding) and (module.max_norm is not None):
            raise TypeError("an Embedding with max_norm is not supported by private training")
        caps.append(_Capture(module, {n: full[id(p)] for n, p in own.items()}))
        covered.update(id(p) for p in own.values())
    missing = [n for n, p in params.items() if id(p) not in covered]
    if missing:
        raise TypeError(f"trained parameters outside any supported layer: {missing[:5]}")
    return caps


def _norm_sq(cap: _Capture, go: torch.Tensor) -> torch.Tensor:
    """Σ over ``cap``'s trained parameters of each row's squared gradient norm, (B,)."""
    m, x, names = cap.module, cap.x, cap.names
    assert x is not None
    total = go.new_zeros(go.shape[0])
    if isinstance(m, nn.Linear):
        gsq = go.pow(2).sum(1)
        if "weight" in names:
            total += gsq * x.pow(2).sum(1)
        if "bias" in names:
            total += gsq
    elif isinstance(m, nn.Embedding):
        # rows of one sample may repeat: ‖Σ_f e_{idx_f} g_fᵀ‖² = Σ_{f,f'} [idx_f = idx_f'] g_f·g_f'
        idx = x.reshape(x.shape[0], -1)
        g = go.reshape(go.shape[0], idx.shape[1], -1)
        same = (idx.unsqueeze(2) == idx.unsqueeze(1)).to(g.dtype)
        total += (torch.bmm(g, g.mT) * same).sum((1, 2))
    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        if m.training or m.running_mean is None:
            raise RuntimeError(
                "BatchNorm must normalise with fixed statistics in private training "
                "(freeze_batchnorm): batch statistics mix the rows of a batch"
            )
        if "weight" in names:
            xhat = (x - m.running_mean) / torch.sqrt(m.running_var + m.eps)
            total += (go * xhat).pow(2).sum(1)
        if "bias" in names:
            total += go.pow(2).sum(1)
    else:  # TemplatedExpertLayer: effective W[k, v] = shared parts + W_T[k, v]
        k, v, o, i = m.num_experts, m.num_views, m.out_dim, m.in_dim
        g = go.reshape(-1, k, v, o)
        g_gram = torch.einsum("bkvo,bkwo->bkvw", g, g)  # (B, K, V, V)
        if cap.shared_input:
            x_gram = x.pow(2).sum(1).view(-1, 1, 1, 1).expand_as(g_gram)
        else:
            xs = x.reshape(-1, k, v, i)
            x_gram = torch.einsum("bkvi,bkwi->bkvw", xs, xs)
        diag_g = torch.diagonal(g_gram, dim1=2, dim2=3)  # (B, K, V)
        diag_x = torch.diagonal(x_gram, dim1=2, dim2=3)
        for local in names:
            per_view = local.endswith("_t")
            if local.startswith("weight"):
                part = (diag_g * diag_x) if per_view else (g_gram * x_gram)
            else:
                part = diag_g if per_view else g_gram
            total += part.flatten(1).sum(1)
    return total


def per_sample_grad_norms(
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    categorical: torch.Tensor,
    numerical: torch.Tensor,
    labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward pass; returns (logits, per-row loss, per-row gradient norm over
    ``params``). The forward graph is kept so the caller can backpropagate the logits.

    Row i's loss is the mean over tasks of its BCE; its gradient norm is the L2 norm over
    every tensor of ``params`` together."""
    caps = _trained_modules(model, params)
    handles = []

    def hook(cap: _Capture):
        def fn(module: nn.Module, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
            if cap.out is not None:
                raise RuntimeError(
                    f"{type(module).__name__} ran twice in one forward pass; private "
                    "training needs one call per layer"
                )
            cap.x = args[0].detach()
            cap.out = out
            cap.shared_input = bool(kwargs.get("shared_input", args[1] if len(args) > 1 else 0))

        return fn

    try:
        for cap in caps:
            handles.append(cap.module.register_forward_hook(hook(cap), with_kwargs=True))
        logits = model(categorical, numerical)
    finally:
        for h in handles:
            h.remove()
    row_loss = F.binary_cross_entropy_with_logits(
        logits, labels.to(logits.dtype), reduction="none"
    ).mean(1)
    outs = [c.out for c in caps]
    grads = torch.autograd.grad(row_loss.sum(), outs, retain_graph=True, allow_unused=True)
    sq = row_loss.new_zeros(row_loss.shape[0])
    for cap, go in zip(caps, grads, strict=True):
        if go is not None:
            sq += _norm_sq(cap, go.detach())
    return logits, row_loss.detach(), sq.sqrt()


class DPSGD:
    """One DP-SGD gradient: per-sample clipping to ``max_grad_norm`` and Gaussian noise of
    standard deviation ``noise_multiplier · max_grad_norm``, averaged over the *expected*
    batch size (the actual size of a Poisson batch depends on the data).

    It leaves the private gradient in each parameter's ``.grad``; the optimizer step (and any
    data-independent penalty gradient) is the caller's."""

    def __init__(
        self,
        max_grad_norm: float,
        noise_multiplier: float,
        generator: torch.Generator | None = None,
    ) -> None:
        self.max_grad_norm = float(max_grad_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.generator = generator

    def gradient(
        self,
        model: nn.Module,
        params: Mapping[str, nn.Parameter],
        categorical: torch.Tensor,
        numerical: torch.Tensor,
        labels: torch.Tensor,
        expected_batch_size: float,
    ) -> float:
        """Sets ``p.grad`` of every parameter in ``params``; returns the batch's mean loss
        (unclipped, for reporting)."""
        for p in params.values():
            p.grad = None
        loss_value = 0.0
        if len(labels):
            logits, row_loss, norms = per_sample_grad_norms(
                model, params, categorical, numerical, labels
            )
            clip = torch.clamp(self.max_grad_norm / (norms + 1e-6), max=1.0)
            scale = clip * (len(labels) / expected_batch_size)
            weight = scale.unsqueeze(1).expand_as(logits)
            # the mean over rows × tasks of cᵢ·BCE: its gradient is (1/B)Σᵢ cᵢ∇ℓᵢ
            F.binary_cross_entropy_with_logits(
                logits, labels.to(logits.dtype), weight=weight
            ).backward()
            loss_value = float(row_loss.mean())
        if self.noise_multiplier > 0:
            std = self.noise_multiplier * self.max_grad_norm / expected_batch_size
            for p in params.values():
                # drawn on the CPU (the secret generator is a CPU one), then moved to the
                # parameter's device: the same noise wherever the model trains
                noise = torch.normal(
                    0.0, std, size=p.shape, generator=self.generator, dtype=p.dtype
                ).to(p.device)
                p.grad = noise if p.grad is None else p.grad.add_(noise)
        return loss_value


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Private steps of one epoch: as many as the plain path's batches, ⌈n / batch⌉ (each
    batch is a Poisson sample of expected size ``batch_size``)."""
    return max(1, math.ceil(n / batch_size))


class PrivateTraining:
    """A client's DP-SGD state: the noise multiplier, the secret generator of sampling and
    noise, and the accountant of every private step taken on the model it trains.

    ``planned_steps`` (all rounds the client plans to join) calibrates the noise when the
    configuration sets ε without a noise multiplier."""

    def __init__(
        self,
        config: PrivacyConfig,
        num_rows: int,
        batch_size: int,
        planned_steps: int,
        seed: int | None = None,
    ) -> None:
        if not config.enabled:
            raise ValueError("PrivateTraining needs dp_epsilon or dp_noise_multiplier")
        if num_rows < 1:
            raise ValueError("private training needs at least one training row")
        self.config = config
        self.batch_size = int(batch_size)
        self.sample_rate = self.rate(num_rows)
        self.delta = float(config.delta) if config.delta is not None else 1.0 / num_rows
        self.planned_steps = int(planned_steps)
        if config.noise_multiplier is not None:
            self.noise_multiplier = float(config.noise_multiplier)
        else:
            assert config.epsilon is not None
            self.noise_multiplier = calibrate_noise(
                config.epsilon, self.delta, self.sample_rate, self.planned_steps
            )
        if seed is None:
            seed = secrets.randbits(63)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.accountant = PrivacyAccountant(self.delta)
        self.dpsgd = DPSGD(config.max_grad_norm, self.noise_multiplier, self.generator)

    def rate(self, n: int) -> float:
        return min(1.0, self.batch_size / max(n, 1))

    def steps_per_epoch(self, n: int) -> int:
        return steps_per_epoch(n, self.batch_size)

    def sample(self, n: int) -> torch.Tensor:
        """Poisson sampling: each of ``n`` rows independently with the sampling rate."""
        keep = torch.rand(n, generator=self.generator) < self.rate(n)
        return keep.nonzero().squeeze(1)

    def step(
        self,
        model: nn.Module,
        params: Mapping[str, nn.Parameter],
        categorical: torch.Tensor,
        numerical: torch.Tensor,
        labels: torch.Tensor,
        n: int,
    ) -> float:
        """One private gradient of a batch drawn from ``n`` rows, recorded by the accountant."""
        rate = self.rate(n)
        loss = self.dpsgd.gradient(
            model, params, categorical, numerical, labels, expected_batch_size=rate * n
        )
        self.accountant.step(self.noise_multiplier, rate)
        return loss

    # ------------------------------------------------------------------ budget and report
    @property
    def epsilon(self) -> float:
        return self.accountant.epsilon()

    def check(self, steps: int, what: str) -> float:
        """ε after ``steps`` more steps; :class:`PrivacyBudgetExceeded` if it exceeds the
        budget (nothing is trained or recorded then)."""
        after = self.accountant.epsilon_after(self.noise_multiplier, self.sample_rate, steps)
        budget = self.config.epsilon
        if budget is not None and after > budget:
            raise PrivacyBudgetExceeded(
                f"{what} would spend ε {after:.3f} (δ {self.delta:.3g}) of the privacy budget "
                f"ε {budget:g}; ε spent so far {self.epsilon:.3f} over "
                f"{self.accountant.steps} private steps. The client does not train it: "
                "raise dp_epsilon or plan fewer rounds"
            )
        return after

    def summary(self) -> dict[str, Any]:
        """What the client reports and publishes about its privacy."""
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "epsilon_budget": self.config.epsilon,
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.config.max_grad_norm,
            "sample_rate": self.sample_rate,
            "steps": self.accountant.steps,
            "planned_steps": self.planned_steps,
            "accountant": ACCOUNTANT,
            "unit": "record (one training row)",
        }

    def metrics(self) -> dict[str, float]:
        """Flat float metrics for the round submission (the wire's metrics map)."""
        eps = self.epsilon
        out = {
            "dp_delta": self.delta,
            "dp_noise_multiplier": self.noise_multiplier,
            "dp_max_grad_norm": self.config.max_grad_norm,
        }
        if math.isfinite(eps):  # noise 0 spends ε = ∞, which the finite-only map cannot carry
            out["dp_epsilon"] = eps
        if self.config.epsilon is not None:
            out["dp_epsilon_budget"] = float(self.config.epsilon)
        return out

    def state(self) -> dict[str, Any]:
        """The accountant's history (saved with the client's local state)."""
        return {"history": [list(h) for h in self.accountant.history], "delta": self.delta}

    def load_state(self, state: Mapping[str, Any] | None) -> None:
        if not state:
            return
        if abs(float(state.get("delta", self.delta)) - self.delta) > 1e-15:
            raise ValueError(
                f"saved privacy accounting used δ {state['delta']}, this client δ {self.delta}"
            )
        self.accountant.load_history(state.get("history", []))
