"""Conflict coordination of client updates (ALGORITHM.md §5, "Experts, conflict coordination").

All functions take the clients' flattened updates as the rows of ``deltas`` (C × P), in
client-id order, and return one coordinated update (P,).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize

from msmtrec.federation.config import CaRescale, ConflictMode


def conflict_averse_weights(gram: np.ndarray, c: float) -> np.ndarray:
    """argmin over the simplex of  wᵀ A 1/C + c·sqrt(wᵀ A w)  (CAGrad's dual; scipy SLSQP).

    The problem is tiny (C variables), so a general constrained solver is the right tool."""
    n = gram.shape[0]
    mean_w = np.full(n, 1.0 / n)
    a_mean = gram @ mean_w

    def objective(w: np.ndarray) -> float:
        return float(w @ a_mean + c * np.sqrt(max(w @ gram @ w, 0.0) + 1e-12))

    def gradient(w: np.ndarray) -> np.ndarray:
        aw = gram @ w
        return a_mean + c * aw / np.sqrt(max(w @ aw, 0.0) + 1e-12)

    res = minimize(
        objective,
        mean_w,
        jac=gradient,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * n,
        constraints=({"type": "eq", "fun": lambda w: 1.0 - w.sum(), "jac": lambda w: -np.ones(n)},),
        options={"ftol": 1e-12, "maxiter": 200},
    )
    w = np.clip(res.x, 0.0, 1.0)
    return w / w.sum() if w.sum() > 0 else mean_w


def conflict_averse_update(
    deltas: torch.Tensor, alpha: float = 0.4, rescale: CaRescale = "alpha"
) -> torch.Tensor:
    """The update that best serves the worst-off client within a ball around the mean update.

    ``g = mean(Δ) + (c/‖G w*‖)·G w*`` with ``c = α·sqrt(mean(A))``. ``rescale`` divides g by
    ``1+α`` (default [chosen]: when every client sends the same update, g is exactly that
    update, so coordination changes nothing unless clients conflict) or by ``1+α²``
    (FedHCA²'s code), or not at all.
    """
    d = deltas.double()
    gram = (d @ d.T).numpy()
    g0 = float(np.sqrt(max(gram.mean(), 0.0) + 1e-16))
    c = alpha * g0
    mean = d.mean(dim=0)
    if c <= 0.0:
        return mean.to(deltas.dtype)
    w = torch.from_numpy(conflict_averse_weights(gram, c))
    gw = w @ d
    g = mean + (c / (float(gw.norm()) + 1e-16)) * gw
    if rescale == "alpha":
        g = g / (1.0 + alpha)
    elif rescale == "alpha_sq":
        g = g / (1.0 + alpha**2)
    return g.to(deltas.dtype)


def pcgrad_update(deltas: torch.Tensor) -> torch.Tensor:
    """PCGrad: project each update off the others it conflicts with, then average.

    Deterministic: the others are visited in client-id order, not in a random order."""
    d = deltas.double()
    projected = d.clone()
    for i in range(d.shape[0]):
        for j in range(d.shape[0]):
            if i == j:
                continue
            dot = float(projected[i] @ d[j])
            if dot < 0.0:
                projected[i] -= dot / (float(d[j] @ d[j]) + 1e-16) * d[j]
    return projected.mean(dim=0).to(deltas.dtype)


def coordinate(
    deltas: torch.Tensor, mode: ConflictMode, alpha: float = 0.4, rescale: CaRescale = "alpha"
) -> torch.Tensor:
    if mode == "ca":
        return conflict_averse_update(deltas, alpha, rescale)
    if mode == "pcgrad":
        return pcgrad_update(deltas)
    if mode == "none":
        return deltas.mean(dim=0)
    raise ValueError(f"unknown conflict mode {mode!r}; choose ca, pcgrad or none")
