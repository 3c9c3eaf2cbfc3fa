"""The spill directory (msmtrec/spill.py): the aggregator's per-client tensors in
memory-mapped scratch files — the same numbers as in RAM, nothing left on disk, and a full
disk an OSError at allocation (never a SIGBUS later)."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.disk import fill, small_disk
from helpers.memory import spill_mappings
from unit.test_aggregation_scaling import BEFORE, _rounds, _strategy, _updates

from msmtrec.codec import Assembler, decode, encode
from msmtrec.federation.strategy import Strategy
from msmtrec.spill import SpillDir


def _spilled(tmp_path: Path, **overrides) -> Strategy:
    plain = _strategy(**overrides)
    return Strategy(plain.config, plain.initial, spill=SpillDir(tmp_path, min_bytes=0))


@pytest.mark.parametrize("clients", [4, 12])  # exact conflict-averse step, and sketched
def test_spilled_strategy_computes_the_same_bits_with_its_state_in_mapped_files(tmp_path, clients):
    spilled = _spilled(tmp_path)
    digest, _ = _rounds(spilled, clients)
    expected = BEFORE[clients] if clients in BEFORE else _rounds(_strategy(), clients)[0]
    assert digest == expected
    experts, towers = len(spilled.expert_names), len(spilled.tower_names)
    # every client's personalized experts and last deltas, each its own mapping (the
    # personalized towers, a few kB, are recomputed in RAM each round) ...
    assert spill_mappings(tmp_path) == clients * (2 * experts + towers)
    for c, params in spilled.personal.items():
        for n in spilled.expert_names:
            assert params[n].untyped_storage().nbytes() == params[n].numel() * 4, (c, n)
    # ... and no file left in the directory: each was unlinked once mapped
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_loads_into_a_spilled_strategy_and_continues_identically(tmp_path):
    ids = [f"S{i}" for i in range(3)]
    plain, spilled = _strategy(), _spilled(tmp_path)
    for r in range(2):
        plain.aggregate(_updates(plain, ids, r))
    tensors, meta = plain.state_dict()
    spilled.load_state_dict(tensors, meta)
    assert spill_mappings(tmp_path) > 0
    a, b = plain.aggregate(_updates(plain, ids, 2)), spilled.aggregate(_updates(spilled, ids, 2))
    for c in ids:
        for n in a[c]:
            assert torch.equal(a[c][n], b[c][n]), (c, n)

    def digest(s: Strategy) -> str:
        h = hashlib.sha256()
        t, _ = s.state_dict()
        for k in sorted(t):
            h.update(k.encode() + t[k].numpy().tobytes())
        return h.hexdigest()

    assert digest(plain) == digest(spilled)


def test_a_submission_received_into_a_spill_buffer_decodes_to_the_same_tensors(tmp_path):
    tensors = {"w": torch.randn(300, 1000), "b": torch.randn(7)}
    enc = encode(tensors)
    asm = Assembler(enc.total_bytes, SpillDir(tmp_path).buffer)
    for lo in range(0, enc.total_bytes, 65536):
        asm.feed(memoryview(enc.buffer)[lo : lo + 65536])
    out = decode(enc.specs, asm.finish())
    assert all(torch.equal(out[n], tensors[n]) for n in tensors)
    assert spill_mappings(tmp_path) == 1 and list(tmp_path.iterdir()) == []
    del out, asm
    assert spill_mappings(tmp_path) == 0  # the space goes back with the last view


def test_small_tensors_stay_in_ordinary_memory(tmp_path):
    spill = SpillDir(tmp_path)  # default threshold 64 KiB
    small, empty = spill.empty((10, 10), torch.float32), spill.buffer(0)
    big = spill.empty((512, 1024), torch.float32)  # 2 MiB
    assert small.shape == (10, 10) and empty.size == 0
    assert spill_mappings(tmp_path) == 1
    big.fill_(1.5)
    assert float(big.sum()) == 1.5 * 512 * 1024


def test_a_full_spill_disk_is_an_oserror_naming_the_directory_at_allocation(tmp_path):
    with small_disk(tmp_path / "spill", 4) as disk:
        spill = SpillDir(disk)
        fill(disk)
        with pytest.raises(OSError, match="spill directory") as info:
            spill.empty((1024, 1024), torch.float32)
        assert info.value.errno == errno.ENOSPC
        with pytest.raises(OSError, match="cannot reserve"):
            Assembler(4 << 20, spill.buffer)
        (disk / ".filler").unlink()  # space back: allocation works again
        t = spill.empty((1024, 1024), torch.float32)
        t.fill_(2.0)
        assert np.allclose(t.numpy(), 2.0)


def test_a_spill_path_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(FileExistsError):
        SpillDir(target)
