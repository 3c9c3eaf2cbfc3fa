"""Where a model runs and in what precision, and the device-neutral boundary around it.

A client or the gateway may run on an accelerator (``--device auto|cpu|cuda[:N]``) and train
in mixed precision (``--precision bf16``: autocast; the master weights stay float32). What
crosses a boundary never depends on that: tensors sent on the wire, saved in a checkpoint or
published to the registry are CPU float32 (:func:`host_tensors`), so a GPU client and a CPU
client federate together and a model trained on a GPU is served by a CPU gateway.

:func:`check_device` and :func:`check_precision` are plain string checks (no torch import),
so settings models and command-line parsers can validate a value before torch loads;
:func:`resolve_device` turns a checked value into a ``torch.device`` once torch is there.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "auto (CUDA when available, else CPU), cpu, cuda or cuda:N"
PRECISIONS = ("fp32", "bf16")
PRECISION_HELP = "fp32, or bf16 (autocast; master weights and everything sent stay float32)"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(spec: str, field: str = "device") -> str:
    """``spec`` if it is one of auto, cpu, cuda, cuda:N; else ValueError naming ``field``."""
    value = str(spec).strip().lower()
    if not _DEVICE.match(value):
        raise ValueError(f"{field}: {spec!r} is not a device; use {DEVICE_HELP}")
    return value


def check_precision(spec: str, field: str = "precision") -> str:
    """``spec`` if it is fp32 or bf16; else ValueError naming ``field``."""
    value = str(spec).strip().lower()
    if value not in PRECISIONS:
        raise ValueError(f"{field}: {spec!r} is not a precision; use {PRECISION_HELP}")
    return value


def resolve_device(spec: str | torch.device, field: str = "device") -> torch.device:
    """The ``torch.device`` for ``spec``: ``auto`` is ``cuda`` when CUDA is available, else
    ``cpu``. Asking for CUDA where there is none (or for a GPU index that does not exist) is
    an error that names ``field``, never a silent fall-back to the CPU."""
    import torch

    if isinstance(spec, torch.device):
        spec = str(spec)
    value = check_device(spec, field)
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(value)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{field}: {spec!r} asked for CUDA, but torch sees no CUDA device")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"{field}: {spec!r}: this machine has {count} CUDA device(s)")
    return device


def device_name(device: torch.device) -> str:
    """A human label for logs and reports: the GPU's name on CUDA, ``cpu`` otherwise."""
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Mixed-precision autocast on ``device`` for ``bf16``; nothing for ``fp32``. Parameters
    stay float32 either way (autocast casts matmul inputs, not the weights themselves)."""
    if check_precision(precision) == "fp32":
        yield
        return
    import torch

    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        yield


def host_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached CPU copies of ``tensors``, floating-point ones as float32 (integer buffers,
    e.g. BatchNorm's ``num_batches_tracked``, keep their dtype): the form that goes on the
    wire, into checkpoints and into the registry, whatever device produced them. Always a
    copy, so a later in-place step on the model never changes what was handed out."""
    import torch

    out = {}
    for name, t in tensors.items():
        t = t.detach()
        dtype = torch.float32 if t.is_floating_point() else t.dtype
        out[name] = t.to(device="cpu", dtype=dtype, copy=True).contiguous()
    return out


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's parameters (CPU for a model without parameters)."""
    import torch

    for p in model.parameters():
        return p.device
    return torch.device("cpu")
