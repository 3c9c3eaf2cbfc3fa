"""Large tensors in memory-mapped scratch files instead of anonymous memory.

Why: the aggregator holds, per client, its submission (the paper preset: 80 MB), its
personalized expert weights (40 MB) and its last expert delta (40 MB). At 96 clients that is
15 GiB of RAM; at 256 clients, 41 GiB, more than most machines have, while the aggregation's
own working memory stays O(P). With a spill directory these tensors live in files the kernel
maps into memory: resident while used, written back and evicted under memory pressure, so
the process needs RAM for its working set rather than for every client at once. It costs
disk I/O when the clients' state does not fit in the page cache.

Each file is unlinked as soon as it is mapped: the space is the mapping's and is returned to
the file system when the last tensor viewing it is freed — also when the process is killed,
so nothing is ever left behind to clean up, and nothing is ever read back from these files
(the durable state stays in the checkpoints). The blocks are reserved up front
(``posix_fallocate``), so a full disk is an ``OSError`` at allocation, never a SIGBUS when a
page is first written.
"""

from __future__ import annotations

import math
import mmap
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

# Smaller tensors (biases, towers) stay in ordinary memory: a mapping per small tensor costs
# more than it saves. (At the paper preset every expert weight is MBs; a process may hold
# ~65k mappings, vm.max_map_count: 256 clients use ~5k.)
MIN_SPILL_BYTES = 64 << 10


class SpillDir:
    """Allocates tensors and byte buffers backed by unlinked files under ``directory``."""

    def __init__(self, directory: str | os.PathLike[str], min_bytes: int = MIN_SPILL_BYTES):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise PermissionError(f"spill directory {self.directory} is not writable")
        self.min_bytes = min_bytes

    def _map(self, nbytes: int) -> mmap.mmap:
        fd, path = tempfile.mkstemp(prefix="spill-", dir=self.directory)
        try:
            os.unlink(path)
            try:
                os.posix_fallocate(fd, 0, nbytes)
            except OSError as exc:
                raise OSError(
                    exc.errno, f"cannot reserve {nbytes} bytes in spill directory "
                    f"{self.directory}: {exc.strerror}",
                ) from exc  # fmt: skip
            return mmap.mmap(fd, nbytes)  # MAP_SHARED, read/write; holds its own descriptor
        finally:
            os.close(fd)

    def buffer(self, nbytes: int) -> np.ndarray:
        """A writable uint8 buffer of ``nbytes`` (ordinary memory below the threshold)."""
        if nbytes == 0 or nbytes < self.min_bytes:
            return np.empty(nbytes, dtype=np.uint8)
        return np.frombuffer(self._map(nbytes), dtype=np.uint8)

    def empty(self, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialized tensor (zero-filled when file-backed)."""
        numel = math.prod(int(s) for s in shape)
        nbytes = numel * dtype.itemsize
        if nbytes == 0 or nbytes < self.min_bytes:
            return torch.empty(tuple(shape), dtype=dtype)
        return torch.frombuffer(self._map(nbytes), dtype=dtype, count=numel).view(tuple(shape))

    def empty_like(self, t: torch.Tensor) -> torch.Tensor:
        return self.empty(t.shape, t.dtype)

    def copy(self, t: torch.Tensor) -> torch.Tensor:
        out = self.empty_like(t)
        out.copy_(t)
        return out
