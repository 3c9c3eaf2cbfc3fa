"""Named tensors ⇄ raw bytes, and the checks every incoming payload passes first.

Why it is built this way:

* **No pickle, no framework format on the wire.** A payload is the tensors' raw
  little-endian bytes concatenated in manifest order, without padding; the manifest
  (names, shapes, dtypes, total bytes) travels separately. Anything can read it, and reading
  it cannot execute code.
* **Validate before touching anything.** :func:`check_manifest` compares a declared manifest
  with the expected signature and a size limit *before* a single data byte is accepted;
  :class:`Assembler` refuses overflowing and truncated streams; :func:`decode` refuses NaN and
  Inf. Every refusal is a :class:`CodecError` subclass that names the tensor and the problem,
  so a service can map it to a precise status.
* **Fast.** One memcpy per tensor to encode; decoding is zero-copy (``np.frombuffer`` views
  of the receive buffer, wrapped by ``torch.from_numpy``); the finite check is two vectorized
  reductions (NaN propagates through min/max, ±Inf shows up in them). No per-element Python.

Pure: numpy and torch only, no sockets (the core stays network-free).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

Tensors = dict[str, torch.Tensor]
Buffer = bytes | bytearray | memoryview | np.ndarray

# wire dtype name → (little-endian numpy dtype of the raw bytes, torch dtype)
DTYPES: dict[str, tuple[np.dtype, torch.dtype]] = {
    "float32": (np.dtype("<f4"), torch.float32),
    "float64": (np.dtype("<f8"), torch.float64),
    "float16": (np.dtype("<f2"), torch.float16),
    "bfloat16": (np.dtype("<u2"), torch.bfloat16),  # numpy has no bfloat16: raw 16-bit words
    "int64": (np.dtype("<i8"), torch.int64),
    "int32": (np.dtype("<i4"), torch.int32),
    "int16": (np.dtype("<i2"), torch.int16),
    "int8": (np.dtype("i1"), torch.int8),
    "uint8": (np.dtype("u1"), torch.uint8),
    "bool": (np.dtype("?"), torch.bool),
}
FLOAT_DTYPES = frozenset({"float32", "float64", "float16", "bfloat16"})
_TORCH_TO_NAME = {td: name for name, (_, td) in DTYPES.items()}
_LITTLE = sys.byteorder == "little"
MAX_DIMS = 8


class CodecError(ValueError):
    """A payload or manifest that cannot be accepted."""


class SignatureMismatchError(CodecError):
    """Declared names, shapes or dtypes differ from the expected signature."""


class SizeLimitError(CodecError):
    """The declared payload is larger than the configured limit."""


class StreamError(CodecError):
    """The bytes received do not match the declared total (truncated or overflowing)."""


class NonFiniteError(CodecError):
    """A floating-point tensor holds NaN or ±Inf."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and wire dtype of one tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype][0].itemsize

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    def describe(self) -> str:
        return f"{self.name} {self.dtype}{list(self.shape)}"


def dtype_name(dtype: torch.dtype) -> str:
    try:
        return _TORCH_TO_NAME[dtype]
    except KeyError:
        raise CodecError(f"dtype {dtype} cannot be sent (supported: {sorted(DTYPES)})") from None


def spec_of(name: str, tensor: torch.Tensor) -> TensorSpec:
    return TensorSpec(name, tuple(int(d) for d in tensor.shape), dtype_name(tensor.dtype))


def signature_of(
    tensors: Mapping[str, torch.Tensor], names: Iterable[str] | None = None
) -> tuple[TensorSpec, ...]:
    """Specs of ``tensors`` in ``names`` order (default: the mapping's order)."""
    order = list(tensors) if names is None else list(names)
    return tuple(spec_of(n, tensors[n]) for n in order)


def total_bytes(specs: Iterable[TensorSpec]) -> int:
    return sum(s.nbytes for s in specs)


def _well_formed(specs: Sequence[TensorSpec]) -> None:
    seen: set[str] = set()
    for s in specs:
        if not s.name:
            raise SignatureMismatchError("a tensor has an empty name")
        if s.name in seen:
            raise SignatureMismatchError(f"tensor {s.name!r} is declared twice")
        seen.add(s.name)
        if s.dtype not in DTYPES:
            raise SignatureMismatchError(
                f"{s.name}: unknown dtype {s.dtype!r} (supported: {sorted(DTYPES)})"
            )
        if len(s.shape) > MAX_DIMS or any(d < 0 for d in s.shape):
            raise SignatureMismatchError(f"{s.name}: invalid shape {list(s.shape)}")


def check_manifest(
    declared: Sequence[TensorSpec],
    expected: Sequence[TensorSpec] | Mapping[str, TensorSpec],
    *,
    declared_total: int,
    max_bytes: int,
) -> None:
    """Refuse a declared payload unless it is exactly the expected signature and fits.

    Order matters: the size limit is checked on the declared total before anything else, so
    an oversized upload is refused before its manifest is even compared. Tensors may be
    declared in any order (the layout follows the declaration), but the set of names, each
    shape and each dtype must match exactly.
    """
    if declared_total > max_bytes:
        raise SizeLimitError(
            f"declared payload of {declared_total} bytes exceeds the limit of {max_bytes} bytes"
        )
    _well_formed(declared)
    actual = total_bytes(declared)
    if actual != declared_total:
        raise SignatureMismatchError(
            f"declared total_bytes {declared_total} != {actual}, the sum of the tensor sizes"
        )
    want = expected if isinstance(expected, Mapping) else {s.name: s for s in expected}
    got = {s.name: s for s in declared}
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    if missing or unexpected:
        raise SignatureMismatchError(
            f"tensor names differ from the federation's signature: missing {missing[:5]}"
            f"{' …' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{' …' if len(unexpected) > 5 else ''}"
        )
    for name, spec in got.items():
        ref = want[name]
        if spec.shape != ref.shape or spec.dtype != ref.dtype:
            raise SignatureMismatchError(
                f"{name}: declared {spec.dtype}{list(spec.shape)}, "
                f"expected {ref.dtype}{list(ref.shape)}"
            )


def compare_signatures(
    got: Sequence[TensorSpec], want: Sequence[TensorSpec] | Mapping[str, TensorSpec]
) -> str | None:
    """None when equal (as sets of specs), else the first difference in words."""
    try:
        _well_formed(got)  # before total_bytes: an unknown dtype has no size
        check_manifest(got, want, declared_total=total_bytes(got), max_bytes=sys.maxsize)
    except CodecError as exc:
        return str(exc)
    return None


# ------------------------------------------------------------------------------ encoding
@dataclass(frozen=True)
class Encoded:
    """A payload ready to send: its manifest and its bytes."""

    specs: tuple[TensorSpec, ...]
    buffer: np.ndarray  # uint8, 1-D

    @property
    def total_bytes(self) -> int:
        return len(self.buffer)

    def chunks(self, chunk_bytes: int) -> Iterator[memoryview]:
        return iter_chunks(self.buffer, chunk_bytes)


def _as_array(t: torch.Tensor, np_dtype: np.dtype) -> np.ndarray:
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    arr = t.numpy().reshape(-1)
    if not _LITTLE and np_dtype.itemsize > 1:
        arr = arr.astype(np_dtype)
    return arr


def encode(tensors: Mapping[str, torch.Tensor], names: Iterable[str] | None = None) -> Encoded:
    """Lay ``tensors`` (in ``names`` order) out as one little-endian byte buffer."""
    specs = signature_of(tensors, names)
    # np.empty, not bytearray: a zero-filled buffer costs as much as the copy itself.
    buffer = np.empty(total_bytes(specs), dtype=np.uint8)
    offset = 0
    for spec in specs:
        n = spec.nbytes
        if n:
            arr = _as_array(tensors[spec.name], DTYPES[spec.dtype][0])
            buffer[offset : offset + n] = arr.view(np.uint8)
        offset += n
    return Encoded(specs, buffer)


def iter_chunks(buffer: Buffer, chunk_bytes: int) -> Iterator[memoryview]:
    """Zero-copy slices of ``buffer`` of at most ``chunk_bytes`` each."""
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    view = memoryview(buffer).cast("B")
    for lo in range(0, len(view), chunk_bytes):
        yield view[lo : lo + chunk_bytes]


# ------------------------------------------------------------------------------ decoding
def _ordinary_buffer(nbytes: int) -> np.ndarray:
    return np.empty(nbytes, dtype=np.uint8)


class Assembler:
    """Collects a streamed payload into a buffer allocated once at the declared size.

    It refuses a chunk that would overflow the declared total (without storing any of it)
    and, in :meth:`finish`, a stream that ended short of it.
    """

    def __init__(
        self, declared_total: int, allocate: Callable[[int], np.ndarray] | None = None
    ) -> None:
        self.total = declared_total
        # ``allocate``: where the bytes go (e.g. SpillDir.buffer: a memory-mapped file)
        self.buffer = (allocate or _ordinary_buffer)(declared_total)
        self.received = 0
        self.chunks = 0

    def feed(self, data: Buffer) -> None:
        n = len(data)
        if self.received + n > self.total:
            raise StreamError(
                f"stream overflows its declared total of {self.total} bytes "
                f"(chunk {self.chunks + 1} would bring it to {self.received + n})"
            )
        if n:
            self.buffer[self.received : self.received + n] = np.frombuffer(data, dtype=np.uint8)
        self.received += n
        self.chunks += 1

    def finish(self) -> np.ndarray:
        if self.received != self.total:
            raise StreamError(
                f"stream truncated: received {self.received} of {self.total} declared bytes"
            )
        return self.buffer


def _check_finite(spec: TensorSpec, arr: np.ndarray) -> None:
    if arr.size == 0:
        return
    if spec.dtype == "bfloat16":  # raw words: exponent all ones ⇔ Inf or NaN
        bad = bool(((arr & 0x7F80) == 0x7F80).any())
    else:
        bad = not (np.isfinite(arr.min()) and np.isfinite(arr.max()))
    if bad:
        raise NonFiniteError(f"{spec.name} has NaN or Inf values")


def decode(specs: Sequence[TensorSpec], buffer: Buffer, *, check_finite: bool = True) -> Tensors:
    """Tensors viewing ``buffer`` (no copy when it is writable and aligned).

    The tensors share memory with ``buffer``: keep it alive and do not reuse it. A
    read-only buffer (``bytes``) is copied once so that the tensors are writable.
    """
    expected = total_bytes(specs)
    if len(buffer) != expected:
        raise StreamError(f"payload has {len(buffer)} bytes, manifest declares {expected}")
    if (
        isinstance(buffer, bytes)
        or (isinstance(buffer, memoryview) and buffer.readonly)
        or (isinstance(buffer, np.ndarray) and not buffer.flags.writeable)
    ):
        buffer = bytearray(buffer)
    out: Tensors = {}
    offset = 0
    for spec in specs:
        np_dtype, torch_dtype = DTYPES[spec.dtype]
        n = spec.nbytes
        if n == 0:
            out[spec.name] = torch.empty(spec.shape, dtype=torch_dtype)
            continue
        arr = np.frombuffer(buffer, dtype=np_dtype, count=spec.numel, offset=offset)
        if offset % np_dtype.itemsize:
            arr = arr.copy()  # unaligned: rare (mixed itemsizes), copy rather than fault
        if check_finite and spec.dtype in FLOAT_DTYPES:
            _check_finite(spec, arr)
        if not _LITTLE and np_dtype.itemsize > 1:
            arr = arr.astype(np_dtype.newbyteorder("="))
        t = torch.from_numpy(arr)
        if torch_dtype == torch.bfloat16:
            t = t.view(torch.int16).view(torch.bfloat16)
        out[spec.name] = t.view(spec.shape)
        offset += n
    return out


# ------------------------------------------------------------------------------ digests
def tensors_digest(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None
) -> str:
    """sha256 over (name, dtype, shape, raw bytes) of every tensor in sorted name order
    (and, with ``meta``, combined with its canonical JSON by :func:`with_meta`): a
    deterministic fingerprint of a state."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        spec = spec_of(name, t)
        h.update(f"{name}\0{spec.dtype}\0{list(spec.shape)}\0".encode())
        if spec.nbytes:
            h.update(memoryview(_as_array(t, DTYPES[spec.dtype][0])).cast("B"))
    digest = h.hexdigest()
    return digest if meta is None else with_meta(digest, meta)


def with_meta(digest: str, meta: Mapping[str, Any]) -> str:
    """Combine a tensors digest with JSON metadata, so large tensors are hashed once even
    when several fingerprints (state, checkpoint) cover them."""
    return hashlib.sha256(f"{digest}\0{canonical_json(meta)}".encode()).hexdigest()


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
