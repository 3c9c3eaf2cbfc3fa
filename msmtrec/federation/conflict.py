"""Conflict coordination of client updates (ALGORITHM.md §5, "Experts, conflict coordination").

All functions take the clients' flattened updates as the rows of ``deltas`` (C × P), in
client-id order, and return one coordinated update (P,).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize

from msmtrec.federation.config import CaRescale, ConflictMode
from msmtrec.federation.simplex_qp import simplex_qp_weights


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


def conflict_averse_plan(
    gram: np.ndarray, alpha: float, *, mean_a: float | None = None, solver: str = "slsqp"
) -> tuple[float, np.ndarray | None]:
    """From the Gram matrix A = G Gᵀ alone: ``c = α·sqrt(mean(A))`` and the simplex weights
    w* (None when c = 0, where g is the plain mean). Split out so that the server can build A
    block by block (msmtrec.federation.strategy) without holding G in one piece.

    ``mean_a``: mean(A) when known more exactly than from ``gram`` (a sketched A's mean is
    accumulated exactly). ``solver``: ``slsqp`` (scipy; O(C³) per iteration, the path every
    federation of up to 8 clients takes) or ``fista`` (msmtrec.federation.simplex_qp; O(C²)
    per iteration, stops on an optimality certificate)."""
    mean = float(gram.mean()) if mean_a is None else mean_a
    g0 = float(np.sqrt(max(mean, 0.0) + 1e-16))
    c = alpha * g0
    if c <= 0.0:
        return c, None
    if solver == "fista":
        return c, simplex_qp_weights(gram, c)
    if solver != "slsqp":
        raise ValueError(f"unknown simplex solver {solver!r}; choose slsqp or fista")
    return c, conflict_averse_weights(gram, c)


def rescale_divisor(alpha: float, rescale: CaRescale) -> float:
    """What g is divided by: ``1+α`` ([chosen] default), ``1+α²`` (FedHCA²'s code) or 1."""
    if rescale == "alpha":
        return 1.0 + alpha
    if rescale == "alpha_sq":
        return 1.0 + alpha**2
    return 1.0


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
    c, w_star = conflict_averse_plan(gram, alpha)
    mean = d.mean(dim=0)
    if w_star is None:
        return mean.to(deltas.dtype)
    w = torch.from_numpy(w_star)
    gw = w @ d
    g = mean + (c / (float(gw.norm()) + 1e-16)) * gw
    divisor = rescale_divisor(alpha, rescale)
    if divisor != 1.0:
        g = g / divisor
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
