"""Atomic, verified checkpoints of the aggregator's whole state, one file per completed round.

Why it is built this way (DESIGN.md, "No resume"):

* **Atomic.** A checkpoint is written to a temporary file, fsynced, renamed over its final
  name with ``os.replace`` and the directory fsynced. A crash leaves the old set of files or
  the new one, never half a file under a final name.
* **Verified, with fallback.** The file's metadata records a sha256 of its tensors and JSON
  state; loading recomputes it. A corrupted or truncated latest checkpoint is skipped with a
  warning and the previous good one is used, so the last ``keep`` rounds are the safety net.
* **One file, no pickle.** safetensors holds the tensors; the JSON state (strategy metadata,
  round number, round history, federation spec) travels in its string metadata.
* **Streamed, mapped.** Written tensor by tensor and read as a memory map
  (``msmtrec/tensor_files.py``): a checkpoint of many clients' state (~80 MB per client at
  the paper preset) never has to fit in memory at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from msmtrec.codec import canonical_json, tensors_digest, with_meta
from msmtrec.faults import fault_point
from msmtrec.tensor_files import map_safetensors, write_safetensors

log = logging.getLogger(__name__)

FORMAT = "msmtrec-aggregator-checkpoint/1"
_NAME = re.compile(r"^checkpoint-(\d{6,})\.safetensors$")


@dataclass
class Checkpoint:
    round: int
    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]
    path: Path
    digest: str


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old content or the new, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _writer_pid(name: str) -> int | None:
    """The pid in a temp file's name (``.checkpoint-….tmp-<pid>``), or None."""
    tail = name.rsplit(".tmp-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 probes without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class CheckpointStore:
    """``<dir>/checkpoint-<round>.safetensors``, newest ``keep`` retained."""

    def __init__(self, directory: Path, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.dir = Path(directory)
        self.keep = keep

    def path_for(self, round_number: int) -> Path:
        return self.dir / f"checkpoint-{round_number:06d}.safetensors"

    def rounds(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def save(
        self,
        round_number: int,
        tensors: Mapping[str, torch.Tensor],
        state: Mapping[str, Any],
        digest_of_tensors: str | None = None,
    ) -> Checkpoint:
        """``digest_of_tensors`` (:func:`tensors_digest` of ``tensors``) saves hashing them
        again when the caller already did."""
        state = dict(state)
        digest = with_meta(digest_of_tensors or tensors_digest(tensors), state)
        metadata = {
            "format": FORMAT,
            "round": str(round_number),
            "state": canonical_json(state),
            "digest": digest,
            "written_at": f"{time.time():.3f}",
        }
        final = self.path_for(round_number)
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        try:
            write_safetensors(tmp, tensors, metadata)
            fault_point("aggregator.checkpoint_write", round_number)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
            fsync_dir(self.dir)
        finally:
            if tmp.exists():
                tmp.unlink()
        self._prune()
        return Checkpoint(round_number, dict(tensors), state, final, digest)

    def _prune(self) -> None:
        for r in self.rounds()[: -self.keep]:
            with contextlib.suppress(FileNotFoundError):
                self.path_for(r).unlink()

    def read(self, path: Path) -> Checkpoint:
        """Load and verify one checkpoint; raises ValueError if it is unreadable or altered."""
        try:
            metadata, tensors = map_safetensors(path)
        except Exception as exc:  # safetensors raises several types for damaged files
            raise ValueError(f"{path}: unreadable checkpoint ({exc})") from exc
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path}: not an aggregator checkpoint ({metadata.get('format')})")
        try:
            state = json.loads(metadata["state"])
        except (KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: checkpoint state is not valid JSON") from exc
        digest = tensors_digest(tensors, state)
        if digest != metadata.get("digest"):
            raise ValueError(f"{path}: checksum mismatch (file altered or corrupted)")
        return Checkpoint(int(metadata["round"]), tensors, state, path, digest)

    def remove_stale_temps(self) -> None:
        """Delete temp files of saves that a crash interrupted (each as large as a whole
        checkpoint). Only called when no save of this process is running: at start-up and
        on reload. A temp file whose writer (the pid in its name) is another live process
        is left alone: the state-directory lock (``aggregator/statelock.py``) keeps a second
        aggregator out, and this is the second line of that defence."""
        if not self.dir.is_dir():
            return
        for p in self.dir.iterdir():
            if p.name.startswith(".checkpoint-") and ".tmp-" in p.name:
                writer = _writer_pid(p.name)
                if writer is not None and writer != os.getpid() and _alive(writer):
                    log.warning("leaving %s: its writer, pid %d, is running", p.name, writer)
                    continue
                log.info("removing %s, left by an interrupted checkpoint write", p.name)
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    def load_latest(self) -> Checkpoint | None:
        """The newest checkpoint that verifies; corrupted newer ones are skipped loudly.

        None only when there is no checkpoint at all. If there are checkpoints and none
        verifies, this raises :class:`CheckpointError` rather than letting the caller start
        a fresh federation over the remains of one that completed rounds."""
        self.remove_stale_temps()
        problems = []
        for r in reversed(self.rounds()):
            path = self.path_for(r)
            try:
                ckpt = self.read(path)
            except ValueError as exc:
                log.warning("skipping checkpoint: %s; falling back to the previous one", exc)
                problems.append(str(exc))
                continue
            return ckpt
        if problems:
            raise CheckpointError(
                f"none of the {len(problems)} checkpoints in {self.dir} verifies "
                f"({'; '.join(problems)}); refusing to start a new federation over them: "
                "restore a good checkpoint, or move the directory away to start afresh"
            )
        return None


class CheckpointError(ValueError):
    """Checkpoints exist but none can be trusted."""
