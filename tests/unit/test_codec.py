"""The codec: exact round trips, and refusal of every malformed payload before use."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from msmtrec.codec import (
    DTYPES,
    Assembler,
    NonFiniteError,
    SignatureMismatchError,
    SizeLimitError,
    StreamError,
    TensorSpec,
    check_manifest,
    decode,
    encode,
    signature_of,
    tensors_digest,
)


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(4, 3, generator=g),
        "b": torch.randn(3, generator=g).double(),
        "h": torch.randn(5, generator=g).half(),
        "bf": torch.randn(2, 2, generator=g).bfloat16(),
        "count": torch.tensor(7, dtype=torch.int64),  # shape (), like num_batches_tracked
        "ids": torch.arange(5, dtype=torch.int16),
        "mask": torch.tensor([True, False, True]),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "i32": torch.tensor([-(2**31), 2**31 - 1], dtype=torch.int32),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "empty": torch.zeros(0, 4),
    }


def test_round_trip_is_exact_for_every_dtype_and_shape():
    ts = _tensors()
    enc = encode(ts)
    assert len(enc.buffer) == sum(t.numel() * t.element_size() for t in ts.values())
    out = decode(enc.specs, enc.buffer)
    assert list(out) == list(ts)
    for name, t in ts.items():
        assert out[name].dtype == t.dtype and out[name].shape == t.shape
        assert torch.equal(out[name], t), name
    assert {s.dtype for s in enc.specs} == set(DTYPES)


def test_layout_is_raw_little_endian_in_manifest_order():
    enc = encode({"a": torch.tensor([1.0, -2.0]), "b": torch.tensor([3], dtype=torch.int64)})
    expected = np.array([1.0, -2.0], "<f4").tobytes() + np.array([3], "<i8").tobytes()
    assert bytes(enc.buffer) == expected
    assert enc.specs == (TensorSpec("a", (2,), "float32"), TensorSpec("b", (1,), "int64"))


def test_decoded_tensors_view_the_buffer_and_a_bytes_buffer_is_copied_once():
    enc = encode({"x": torch.ones(8)})
    out = decode(enc.specs, enc.buffer)
    enc.buffer[:4] = np.frombuffer(np.float32(5.0).tobytes(), np.uint8)
    assert out["x"][0] == 5.0  # zero-copy
    frozen = decode(enc.specs, bytes(enc.buffer))  # read-only input → private writable copy
    frozen["x"] += 1
    assert float(frozen["x"][1]) == 2.0


def test_unaligned_offsets_decode_correctly():
    ts = {"a": torch.tensor([1], dtype=torch.int8), "b": torch.tensor([1.5, 2.5])}
    enc = encode(ts)
    out = decode(enc.specs, enc.buffer)
    assert torch.equal(out["b"], ts["b"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_refused(dtype, bad):
    t = torch.zeros(10, dtype=dtype)
    t[3] = bad
    enc = encode({"ok": torch.zeros(2), "t": t})
    with pytest.raises(NonFiniteError, match="t has NaN or Inf"):
        decode(enc.specs, enc.buffer)
    assert decode(enc.specs, enc.buffer, check_finite=False)["t"].isfinite().sum() == 9


def test_manifest_must_match_the_signature_exactly():
    ts = _tensors()
    want = signature_of(ts)
    total = sum(s.nbytes for s in want)
    check_manifest(want, want, declared_total=total, max_bytes=total)
    check_manifest(tuple(reversed(want)), want, declared_total=total, max_bytes=total)
    cases = {
        "missing": want[1:],
        "unexpected": (*want, TensorSpec("extra", (1,), "float32")),
        "expected float32": (TensorSpec("w", (4, 3), "float64"), *want[1:]),
        r"expected float32\[4, 3\]": (TensorSpec("w", (3, 4), "float32"), *want[1:]),
        "declared twice": (*want, want[0]),
        "unknown dtype": (TensorSpec("w", (4, 3), "complex64"), *want[1:]),
        "invalid shape": (TensorSpec("w", (4, -3), "float32"), *want[1:]),
    }
    for message, declared in cases.items():
        consistent = sum(s.nbytes for s in declared if s.dtype in DTYPES)
        with pytest.raises(SignatureMismatchError, match=message):
            check_manifest(declared, want, declared_total=consistent, max_bytes=1 << 30)
    with pytest.raises(SignatureMismatchError, match="total_bytes"):
        check_manifest(want, want, declared_total=total + 1, max_bytes=1 << 30)


def test_size_limit_is_checked_before_the_manifest():
    want = signature_of({"w": torch.zeros(10)})
    with pytest.raises(SizeLimitError, match="exceeds the limit of 39 bytes"):
        check_manifest((), want, declared_total=40, max_bytes=39)


def test_assembler_refuses_overflow_and_truncation():
    a = Assembler(10)
    a.feed(b"12345")
    with pytest.raises(StreamError, match="overflows"):
        a.feed(b"123456")
    assert a.received == 5  # the overflowing chunk was not stored
    with pytest.raises(StreamError, match="truncated: received 5 of 10"):
        a.finish()
    a.feed(b"67890")
    assert bytes(a.finish()) == b"1234567890"
    with pytest.raises(StreamError):
        decode(signature_of({"w": torch.zeros(3)}), b"\0" * 8)


def test_digest_is_deterministic_and_sensitive():
    ts = _tensors()
    d = tensors_digest(ts, {"round": 1})
    assert d == tensors_digest(dict(reversed(list(ts.items()))), {"round": 1})
    changed = dict(ts)
    changed["w"] = ts["w"].clone()
    changed["w"][0, 0] += 1e-7
    assert tensors_digest(changed, {"round": 1}) != d
    assert tensors_digest(ts, {"round": 2}) != d
    reshaped = {**ts, "w": ts["w"].reshape(3, 4)}
    assert tensors_digest(reshaped, {"round": 1}) != d


@settings(max_examples=60, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(0, 6), min_size=0, max_size=3), min_size=1, max_size=5),
    dtype=st.sampled_from(["float32", "float64", "int64", "int16", "uint8", "bool"]),
    chunk=st.integers(1, 64),
    seed=st.integers(0, 2**16),
)
def test_any_chunking_reassembles_the_same_tensors(shapes, dtype, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    torch_dtype = DTYPES[dtype][1]
    ts = {
        f"t{i}": (torch.randn(tuple(s), generator=g) * 100).to(torch_dtype)
        for i, s in enumerate(shapes)
    }
    enc = encode(ts)
    a = Assembler(len(enc.buffer))
    for piece in enc.chunks(chunk):
        a.feed(bytes(piece))
    out = decode(enc.specs, a.finish())
    assert all(torch.equal(out[n], t) for n, t in ts.items())
