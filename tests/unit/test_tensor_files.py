"""Streamed safetensors writing and memory-mapped reading (msmtrec/tensor_files.py): the
files are safetensors' own format, read back exactly, validated by the library before
anything is mapped, and a mapped read does not copy the file into memory."""

from __future__ import annotations

import pytest
import torch
from helpers.memory import anon_bytes
from safetensors.torch import load_file, save_file

from msmtrec.tensor_files import map_safetensors, write_safetensors


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    stacked = torch.randn(3, 5, generator=g)
    return {
        "f32": torch.randn(7, 3, generator=g),
        "f64": torch.randn(5, generator=g, dtype=torch.float64),
        "bf16": torch.randn(6, generator=g).to(torch.bfloat16),
        "i64": torch.arange(9),
        "flag": torch.tensor([True, False, True]),  # 3 bytes before wider types
        "u8": torch.arange(5, dtype=torch.uint8),
        "row0": stacked[0],  # views sharing one storage: safetensors' save_file refuses them
        "row2": stacked[2],
        "col": stacked[:, 1],  # not contiguous
        "empty": torch.empty(0, 4),
        "scalar": torch.tensor(3.5),
    }


def test_written_files_are_safetensors_and_read_back_exactly(tmp_path):
    tensors = _tensors()
    path = tmp_path / "a.safetensors"
    write_safetensors(path, tensors, {"k": "v"})
    lib = load_file(str(path))  # the library reads our files
    meta, mapped = map_safetensors(path)
    assert meta == {"k": "v"}
    assert set(lib) == set(mapped) == set(tensors)
    for name, t in tensors.items():
        for got in (lib[name], mapped[name]):
            assert got.dtype == t.dtype and got.shape == t.shape, name
            assert torch.equal(got, t), name
    for name, t in mapped.items():  # each starts aligned to its element size
        if t.numel():
            assert t.data_ptr() % t.element_size() == 0, name


def test_files_written_by_the_library_are_mapped_too(tmp_path):
    path = tmp_path / "lib.safetensors"
    tensors = {"a": torch.randn(4, 4), "b": torch.arange(3)}
    save_file(tensors, str(path), metadata={"x": "1"})
    meta, mapped = map_safetensors(path)
    assert meta == {"x": "1"} and all(torch.equal(mapped[k], tensors[k]) for k in tensors)


def test_writing_into_a_mapped_tensor_never_changes_the_file(tmp_path):
    path = tmp_path / "a.safetensors"
    write_safetensors(path, {"w": torch.zeros(1000)}, {})
    before = path.read_bytes()
    _, mapped = map_safetensors(path)
    mapped["w"].fill_(7.0)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-5],  # truncated
        lambda b: b[:8] + b"[" + b[9:],  # header no longer a JSON object
        lambda b: (10**12).to_bytes(8, "little") + b[8:],  # header length beyond the file
        lambda b: b"",
    ],
)
def test_a_damaged_file_is_refused_by_the_library_before_mapping(tmp_path, damage):
    path = tmp_path / "a.safetensors"
    write_safetensors(path, {"w": torch.randn(100)}, {"k": "v"})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(Exception):  # noqa: B017 - safetensors raises several types
        map_safetensors(path)


def test_an_unstorable_dtype_is_named(tmp_path):
    with pytest.raises(TypeError, match="c: dtype"):
        write_safetensors(tmp_path / "x", {"c": torch.zeros(2, dtype=torch.complex64)}, {})


def test_a_mapped_read_does_not_copy_the_file_into_anonymous_memory(tmp_path):
    path = tmp_path / "big.safetensors"
    write_safetensors(path, {"w": torch.ones(64 << 18)}, {})  # 64 MiB
    before = anon_bytes()
    _, mapped = map_safetensors(path)
    assert float(mapped["w"].sum()) == 64 << 18  # every page read
    assert anon_bytes() - before < 16 << 20  # load_file would add 64 MiB here
