"""Row-wise (lazy) Adam for sparse embedding tables.

A table of millions of ids (``nn.Embedding(sparse=True)``, see :mod:`msmtrec.model.inputs`)
gets a sparse gradient holding only the rows of the batch. Dense Adam would read and rewrite
the whole table and both moment tensors every step (and need a dense gradient of the table's
size); this optimizer touches only those rows: their moments decay and their weights move,
the other rows stay exactly as they are until an id of theirs is seen (the semantics of
``torch.optim.SparseAdam``, written without ``torch.optim.Optimizer`` for the same reason as
:class:`~msmtrec.training.trainer.FusedAdam`: its first use imports ``torch._dynamo``).

No weight decay and no proximal term on these tables [chosen]: either would be a dense update
of every row each step, which is what a sparse table exists to avoid.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["SparseRowAdam"]


class SparseRowAdam:
    """Adam over the rows present in each parameter's sparse gradient (global step count for
    the bias correction, as torch's SparseAdam). Parameters without a gradient are skipped."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = list(params)
        self.lr, self.betas, self.eps = float(lr), betas, float(eps)
        self.state: dict[torch.nn.Parameter, tuple[torch.Tensor, torch.Tensor, list[int]]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for p in self.params:
            if p.grad is None:
                continue
            grad = p.grad
            if not grad.is_sparse:
                raise TypeError(
                    "SparseRowAdam needs sparse gradients (nn.Embedding(sparse=True)); "
                    f"got a dense gradient of shape {tuple(grad.shape)}"
                )
            st = self.state.get(p)
            if st is None:
                st = self.state[p] = (torch.zeros_like(p), torch.zeros_like(p), [0])
            exp_avg, exp_sq, count = st
            count[0] += 1
            grad = grad.coalesce()  # one entry per row: repeated ids summed
            rows, values = grad.indices()[0], grad.values()
            m = exp_avg.index_select(0, rows).mul_(beta1).add_(values, alpha=1 - beta1)
            v = exp_sq.index_select(0, rows).mul_(beta2).addcmul_(values, values, value=1 - beta2)
            exp_avg.index_copy_(0, rows, m)
            exp_sq.index_copy_(0, rows, v)
            bias1 = 1 - beta1 ** count[0]
            bias2 = 1 - beta2 ** count[0]
            denom = v.div_(bias2).sqrt_().add_(self.eps)
            p.index_add_(0, rows, m.div_(denom), alpha=-self.lr / bias1)
