"""safetensors files written tensor by tensor and read as memory maps.

Why not ``safetensors.torch.save_file`` / ``load_file`` for the aggregator's checkpoints:
both hold the whole file in memory (``save_file`` serializes every tensor to ``bytes``
first; ``load_file`` copies every tensor out). A checkpoint carries every client's
personalized state — 80 MB per client at the paper preset, ~20 GB at 256 clients — so with
``--spill-dir`` (msmtrec/spill.py) a checkpoint would need more memory than the aggregation.
Here a file is written from each tensor's own memory (no copy), and read back as tensors
that view a private, read-only-in-practice memory map of the file: pages come in as they
are read and can be evicted again.

The format is safetensors' own (8-byte little-endian header length, JSON header padded with
spaces to 8 bytes, the tensors' bytes back to back), so ``safe_open``/``load_file`` read
these files, and the reader here lets ``safe_open`` validate a file (header, offsets, sizes)
before mapping anything: a file a user could swap is checked by the library, never
unpickled.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_TORCH = {v: k for k, v in _DTYPES.items()}


def write_safetensors(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> None:
    """Write ``tensors`` (any layout; views and shared storage are fine) to ``path`` in the
    safetensors format, one tensor at a time from its own memory. The caller fsyncs."""
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    parts: list[torch.Tensor] = []
    offset = 0
    # widest elements first (as safetensors does): every tensor starts aligned to its dtype.
    # The header is complete before the file is opened: a bad dtype writes nothing.
    for name in sorted(tensors, key=lambda k: (-tensors[k].element_size(), k)):
        if tensors[name].dtype not in _DTYPES:
            raise TypeError(f"{name}: dtype {tensors[name].dtype} cannot be stored in safetensors")
        t = tensors[name].detach().contiguous()
        n = t.numel() * t.element_size()
        header[name] = {
            "dtype": _DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + n],
        }
        parts.append(t)
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in parts:
            if t.numel():
                f.write(t.reshape(-1).view(torch.uint8).numpy().data)


def map_safetensors(path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file, the tensors viewing a copy-on-write memory
    map of it (nothing is read until used). ``safe_open`` validates the file first; any
    error it raises propagates. Writing into a returned tensor never changes the file."""
    path = str(path)
    with safe_open(path, framework="pt") as f:
        metadata = dict(f.metadata() or {})
        names = list(f.keys())
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    start = 8 + length
    mapped = np.memmap(path, dtype=np.uint8, mode="c") if names else None
    tensors: dict[str, torch.Tensor] = {}
    for name in names:
        info = header[name]
        dtype = _TORCH[info["dtype"]]
        lo, hi = info["data_offsets"]
        shape = tuple(info["shape"])
        if hi == lo:
            tensors[name] = torch.empty(shape, dtype=dtype)
            continue
        assert mapped is not None
        raw = torch.from_numpy(mapped[start + lo : start + hi])
        tensors[name] = raw.view(dtype).view(shape)
    return metadata, tensors
