"""Column blocks of the clients' deltas, and the Gram matrices built from them.

The server never holds every client's delta Δ_c = θ_c^end − θ_c^start at once (that is
C × P values: 5 GB at 64 clients of the paper preset). It forms them block by block of
columns — every client's slice of the same columns, a C × b block in buffers allocated
once per pass — and each block serves, in batched operations over clients, every statistic
that needs the deltas (msmtrec.federation.strategy). Working memory is O(C·b + P).

The Gram matrix A = G Gᵀ of the conflict-averse step is the one O(C²P) product. Two ways to
build it, one block at a time:

* :class:`ExactGram` — float32 matmuls over at most :data:`GRAM_COLUMNS` columns, summed in
  float64 (relative error ~1e-7, the precision of the float32 deltas themselves).
* :class:`SketchedGram` — for many clients: each client's delta is folded, with fixed
  pseudo-random signs, into :data:`SKETCH_COLUMNS` columns (a CountSketch whose bucket of
  column j is j mod m), and A is the Gram matrix of the folded deltas, O(C·P + C²·m)
  instead of O(C²·P). An off-diagonal entry is an unbiased estimate of ⟨Δ_i, Δ_j⟩ with a
  standard deviation of about ‖Δ_i‖‖Δ_j‖/√m (0.4 % at m = 65536); the diagonal (the
  squared norms) and mean(A) = ‖Σ_c Δ_c‖²/C² are accumulated exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

# A (clients × columns) working block holds ~BLOCK_ELEMENTS values (8 MB in float64), but
# never fewer than MIN_BLOCK_COLUMNS columns (at 64 clients: 24 MB, still within the L3
# cache): the deltas are formed with one call per client and block, so a width that shrank
# with the number of clients would make those calls grow as C².
BLOCK_ELEMENTS = 1 << 20
MIN_BLOCK_COLUMNS = 1 << 15
# Columns per float32 Gram matmul; partial Grams are summed in float64.
GRAM_COLUMNS = 4096
# Width of the folded deltas of :class:`SketchedGram` (per expert).
SKETCH_COLUMNS = 1 << 16
SKETCH_SEED = 0x5EED


def block_columns(clients: int) -> int:
    return max(MIN_BLOCK_COLUMNS, BLOCK_ELEMENTS // max(clients, 1))


def column_blocks(numel: int, clients: int) -> Iterator[tuple[int, int]]:
    step = block_columns(clients)
    for lo in range(0, numel, step):
        yield lo, min(numel, lo + step)


def add_gram(gram: torch.Tensor, narrow: torch.Tensor) -> None:
    """gram (float64) += narrow narrowᵀ, as float32 matmuls over GRAM_COLUMNS columns."""
    for lo in range(0, narrow.shape[1], GRAM_COLUMNS):
        x = narrow[:, lo : lo + GRAM_COLUMNS]
        gram += torch.mm(x, x.T)


class DeltaBlocks:
    """Blocks of the clients' deltas Δ_c = θ_c^end − θ_c^start of one flat tensor slice, as a
    (C × b) float64 matrix in client order, formed in buffers allocated once per pass.

    Each delta is rounded to the tensors' dtype first (float32), exactly as
    ``end − start`` would be, and only then widened."""

    def __init__(self, clients: int, dtype: torch.dtype) -> None:
        cols = block_columns(clients)
        self.narrow = torch.empty(clients, cols, dtype=dtype)
        self.wide = torch.empty(clients, cols, dtype=torch.float64)

    @classmethod
    def reuse(cls, blocks: DeltaBlocks | None, clients: int, dtype: torch.dtype) -> DeltaBlocks:
        """``blocks`` if it fits ``dtype`` (buffers are allocated once per pass), else new."""
        fits = blocks is not None and blocks.narrow.dtype == dtype
        return blocks if fits else cls(clients, dtype)

    def block(
        self, ends: Sequence[torch.Tensor], starts: Sequence[torch.Tensor], lo: int, hi: int
    ) -> torch.Tensor:
        """The deltas of columns [lo, hi) in float64."""
        return self.widen(self.block_narrow(ends, starts, lo, hi))

    def block_narrow(
        self, ends: Sequence[torch.Tensor], starts: Sequence[torch.Tensor], lo: int, hi: int
    ) -> torch.Tensor:
        """The deltas of columns [lo, hi) in the tensors' own dtype."""
        cols = hi - lo
        narrow = self.narrow[:, :cols]
        if all(s is starts[0] for s in starts):  # one start for all (FedAvg'd tensors)
            torch.stack([e[lo:hi] for e in ends], out=narrow)
            narrow.sub_(starts[0][lo:hi])
        else:
            for i, (end, start) in enumerate(zip(ends, starts, strict=True)):
                torch.sub(end[lo:hi], start[lo:hi], out=narrow[i])
        return narrow

    def widen(self, narrow: torch.Tensor) -> torch.Tensor:
        wide = self.wide[:, : narrow.shape[1]]
        wide.copy_(narrow)
        return wide


class ExactGram:
    """A = G Gᵀ of one expert's deltas, fed block by block in column order."""

    def __init__(self, clients: int) -> None:
        self.gram = torch.zeros(clients, clients, dtype=torch.float64)

    def add(self, narrow: torch.Tensor) -> None:
        add_gram(self.gram, narrow)

    def result(self) -> tuple[torch.Tensor, float | None]:
        """(A, None): mean(A) is A's own."""
        return self.gram, None


def sketch_signs(length: int) -> torch.Tensor:
    """±1 (float32) for columns 0..length-1, the same for every call (fixed seed)."""
    g = torch.Generator().manual_seed(SKETCH_SEED)
    bits = torch.randint(0, 2, (length,), generator=g, dtype=torch.int8)
    return bits.to(torch.float32).mul_(2.0).sub_(1.0)


class SketchedGram:
    """An estimate of A = G Gᵀ from deltas folded into ``width`` columns (module docstring),
    fed block by block in column order; ``signs`` must cover every column fed."""

    def __init__(self, clients: int, signs: torch.Tensor, width: int = SKETCH_COLUMNS) -> None:
        self.folded = torch.zeros(clients, width, dtype=torch.float32)
        self.diag = torch.zeros(clients, dtype=torch.float64)
        self.total_sq = 0.0  # ‖Σ_c Δ_c‖², column block by column block
        self.signs = signs
        self.width = width
        self.position = 0  # next column of the expert's concatenated deltas

    def add(self, narrow: torch.Tensor) -> None:
        cols = narrow.shape[1]
        done = 0
        while done < cols:  # a block wraps around the folded width at most a few times
            at = (self.position + done) % self.width
            take = min(cols - done, self.width - at)
            signs = self.signs[self.position + done : self.position + done + take]
            self.folded[:, at : at + take].addcmul_(narrow[:, done : done + take], signs)
            done += take
        self.position += cols
        for lo in range(0, cols, GRAM_COLUMNS):
            x = narrow[:, lo : lo + GRAM_COLUMNS]
            self.diag += (x * x).sum(dim=1, dtype=torch.float64)
        column_sum = narrow.sum(dim=0, dtype=torch.float64)
        self.total_sq += float(column_sum @ column_sum)

    def result(self) -> tuple[torch.Tensor, float | None]:
        """(estimated A with its exact diagonal, exact mean(A))."""
        gram = torch.zeros_like(self.diag).diag()
        add_gram(gram, self.folded)
        gram.diagonal().copy_(self.diag)
        clients = self.diag.numel()
        return gram, self.total_sq / clients**2
