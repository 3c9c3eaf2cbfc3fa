"""The process group of a client that trains across several processes (``torchrun``).

``torchrun`` (or a Kubernetes Indexed Job running it) starts every replica with ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in its environment; :func:`init_replicas`
joins them into one gloo process group whose every collective has a deadline, so a replica
whose partner hung raises instead of waiting forever (a partner that *died* closes its
sockets, which gloo reports at once).

Everything that crosses between replicas is a tensor: state dicts go as one flat tensor per
dtype in the receiver's own order (both sides build the same model, so names and shapes are
known on both; a fingerprint of them is checked first), text as UTF-8 bytes. Nothing is
pickled (``broadcast_object_list`` would unpickle what another machine sent).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = [
    "ReplicaGroup",
    "ReplicaGroupError",
    "close_replicas",
    "init_replicas",
    "replica_env",
]

ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class ReplicaGroupError(RuntimeError):
    """The replicas disagree (names, shapes, data) or a collective failed or timed out."""


def replica_env(environ: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """``(rank, world_size)`` from torchrun's variables; None when ``WORLD_SIZE`` is unset.
    A malformed or missing variable is an error naming it."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    values = {}
    for name in ENV_VARS:
        if name not in env or not env[name].strip():
            raise ValueError(f"{name} is not set: start the replicas with torchrun")
        values[name] = env[name].strip()
    try:
        rank, world = int(values["RANK"]), int(values["WORLD_SIZE"])
        port = int(values["MASTER_PORT"])
    except ValueError as exc:
        raise ValueError(f"RANK, WORLD_SIZE and MASTER_PORT must be integers: {exc}") from None
    if world < 1:
        raise ValueError(f"WORLD_SIZE {world} must be >= 1")
    if not 0 <= rank < world:
        raise ValueError(f"RANK {rank} must be in 0..WORLD_SIZE-1 ({world - 1})")
    if not 0 < port < 65536:
        raise ValueError(f"MASTER_PORT {port} is not a port")
    return rank, world


@dataclass(frozen=True)
class ReplicaGroup:
    """This process's place in the group; every method is a collective that every replica
    must call in the same order."""

    rank: int
    world_size: int
    timeout_seconds: float

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ primitive wrappers
    def _run(self, what: str, call, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return call(*args, **kwargs)
        except ReplicaGroupError:
            raise
        except RuntimeError as exc:  # gloo: a timeout, a peer that closed its connection
            raise ReplicaGroupError(
                f"rank {self.rank}: {what} across {self.world_size} replicas failed "
                f"(a replica died, hung longer than {self.timeout_seconds:g} s, or the "
                f"group broke): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from exc

    def broadcast_(self, tensor: torch.Tensor, what: str) -> torch.Tensor:
        """Rank 0's ``tensor`` into every replica's ``tensor`` (same shape and dtype)."""
        self._run(what, dist.broadcast, tensor, src=0)
        return tensor

    def all_gather(self, tensor: torch.Tensor, what: str) -> torch.Tensor:
        """Every replica's ``tensor`` stacked in rank order."""
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        self._run(what, dist.all_gather, out, tensor)
        return torch.stack(out)

    def all_reduce_(
        self, tensor: torch.Tensor, what: str, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM
    ) -> torch.Tensor:
        self._run(what, dist.all_reduce, tensor, op=op)
        return tensor

    # --------------------------------------------------------------------- composites
    def broadcast_bytes(self, data: bytes | None, what: str) -> bytes:
        """Rank 0's ``data`` to everyone (the others pass None)."""
        size = torch.tensor([len(data) if data is not None else 0], dtype=torch.int64)
        self.broadcast_(size, f"{what} (size)")
        buf = torch.zeros(int(size.item()), dtype=torch.uint8)
        if self.is_leader:
            assert data is not None
            buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else buf
        self.broadcast_(buf, what)
        return bytes(buf.numpy().tobytes())

    def broadcast_state(
        self, state: Mapping[str, torch.Tensor], what: str
    ) -> dict[str, torch.Tensor]:
        """Rank 0's tensors under the same names as every replica's ``state`` (the receivers
        pass their own state as the template: names, shapes and dtypes). Returns fresh CPU
        tensors on every rank; rank 0 gets copies of its own."""
        names = sorted(state)
        layout = "\n".join(f"{n}:{tuple(state[n].shape)}:{state[n].dtype}" for n in names)
        mine = torch.tensor([zlib.crc32(layout.encode()), len(names)], dtype=torch.int64)
        seen = self.all_gather(mine, f"{what} (layout)")
        if not bool((seen == seen[0]).all()):
            bad = [r for r in range(self.world_size) if not bool((seen[r] == seen[0]).all())]
            raise ReplicaGroupError(
                f"{what}: rank(s) {bad} hold other tensor names/shapes than rank 0; every "
                "replica must run the same msmtrec version on the same federation"
            )
        out: dict[str, torch.Tensor] = {}
        by_dtype: dict[torch.dtype, list[str]] = {}
        for n in names:
            by_dtype.setdefault(state[n].dtype, []).append(n)
        for dtype, group in sorted(by_dtype.items(), key=lambda kv: str(kv[0])):
            sizes = [state[n].numel() for n in group]
            if self.is_leader:
                flat = torch.cat([state[n].detach().reshape(-1).cpu() for n in group])
            else:
                flat = torch.empty(sum(sizes), dtype=dtype)
            self.broadcast_(flat, f"{what} ({dtype})")
            for n, part in zip(group, torch.split(flat, sizes), strict=True):
                out[n] = part.view(state[n].shape).clone()
        return out


def init_replicas(timeout_seconds: float) -> ReplicaGroup:
    """Join the torchrun job's gloo group (CPU) from this process's environment; every
    collective times out after ``timeout_seconds``. Idempotent within a process.

    ``env://``, not an explicit ``tcp://`` address: under torchrun the agent already serves
    the rendezvous store on ``MASTER_PORT`` (``TORCHELASTIC_USE_AGENT_STORE``), and env://
    connects to it instead of trying to listen there again."""
    found = replica_env()
    if found is None:
        raise ValueError("WORLD_SIZE is not set: start the replicas with torchrun")
    rank, world = found
    if timeout_seconds <= 0:
        raise ValueError("the replica group's timeout must be > 0 seconds")
    if not dist.is_initialized():
        dist.init_process_group(
            "gloo",
            init_method="env://",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=timeout_seconds),
        )
    return ReplicaGroup(rank, world, float(timeout_seconds))


def close_replicas() -> None:
    """Leave the group (no-op when not in one)."""
    if dist.is_initialized():
        dist.destroy_process_group()
