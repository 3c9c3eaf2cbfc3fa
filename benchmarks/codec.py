"""Parameter codec throughput: encode + validate + decode of the shared tensors (benchmark 2).

    python benchmarks/codec.py                 # paper preset's shared tensors (80 MB fp32)
    python benchmarks/codec.py --repeats 21

What travels per client and round is the pfmsmtrec payload of the ``paper`` preset: W_G, W_S
and the tower Linear layers, 20.0 M float32 = 80 MB (the issue's "≈ 40 MB" counts one of
W_G/W_S). Candidates, alternated (A B C D, B C D A, …), MB/s of payload per round trip:

* **codec**: ``encode`` (one memcpy per tensor into one buffer), ``check_manifest`` against the
  federation's signature and size limit, ``decode`` with the finite-value check (zero-copy
  views of the buffer).
* **codec + receive**: the same with the receiver's side as the services run it: the buffer
  is fed to an ``Assembler`` in 1 MiB chunks (the gRPC stream) before ``decode``.
* **numpy.save/load** (yardstick): every tensor ``numpy.save``d into one ``io.BytesIO`` and
  ``numpy.load``ed back (no validation).
* **bytes copy** (the limit): one copy of the 80 MB into a new ``bytearray`` — any round trip
  that ends in memory the receiver owns moves the bytes at least once.

Targets (issue #6): codec ≥ 1 GB/s and ≥ the numpy.save path.
"""

from __future__ import annotations

import argparse
import io
import sys
import time

import _common as C
import numpy as np
import torch

from msmtrec.codec import Assembler, check_manifest, decode, encode, signature_of, total_bytes
from msmtrec.data.schema import ALIEXPRESS
from msmtrec.federation.config import resolve_method
from msmtrec.model import build_model, preset

TARGET_MB_S = 1000.0
CHUNK = 1 << 20


def shared_tensors(preset_name: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    model = build_model(ALIEXPRESS, preset(preset_name), seed=0)
    state = model.state_dict()
    names = resolve_method("pfmsmtrec").parameter_groups().sent_names(state)
    g = torch.Generator().manual_seed(0)
    # trained-looking values (not the zeros W_S starts from)
    return {n: torch.randn(state[n].shape, generator=g) * 0.05 for n in names}, names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=("paper", "small"), default="paper")
    p.add_argument("--repeats", type=int, default=15)
    C.add_common_flags(p, threads=1)
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.repeats = "small", 3
    threads = C.pin_threads(args.threads)
    report = C.Report("Parameter codec (benchmark 2)", "codec.py", argv, threads)
    tensors, names = shared_tensors(args.preset)
    specs = signature_of(tensors, names)
    expected = {s.name: s for s in specs}
    nbytes = total_bytes(specs)
    arrays = [tensors[n].numpy() for n in names]
    sink: list[object] = []  # keeps results alive until the clock stops

    def codec() -> float:
        t0 = time.perf_counter()
        enc = encode(tensors, names)
        check_manifest(enc.specs, expected, declared_total=enc.total_bytes, max_bytes=1 << 30)
        out = decode(enc.specs, enc.buffer, check_finite=True)
        dt = time.perf_counter() - t0
        sink.append(out)
        sink.clear()
        return dt

    def codec_receive() -> float:
        t0 = time.perf_counter()
        enc = encode(tensors, names)
        check_manifest(enc.specs, expected, declared_total=enc.total_bytes, max_bytes=1 << 30)
        asm = Assembler(enc.total_bytes)
        for chunk in enc.chunks(CHUNK):
            asm.feed(chunk)
        out = decode(enc.specs, asm.finish(), check_finite=True)
        dt = time.perf_counter() - t0
        sink.append(out)
        sink.clear()
        return dt

    def numpy_save() -> float:
        t0 = time.perf_counter()
        bio = io.BytesIO()
        for a in arrays:
            np.save(bio, a, allow_pickle=False)
        bio.seek(0)
        out = [np.load(bio, allow_pickle=False) for _ in arrays]
        dt = time.perf_counter() - t0
        sink.append(out)
        sink.clear()
        return dt

    flat = encode(tensors, names).buffer

    def bytes_copy() -> float:
        t0 = time.perf_counter()
        out = bytearray(memoryview(flat))
        dt = time.perf_counter() - t0
        sink.append(out)
        sink.clear()
        return dt

    candidates = {
        "codec (encode + validate + decode)": codec,
        "codec + receive (Assembler, 1 MiB chunks)": codec_receive,
        "numpy.save/load via BytesIO": numpy_save,
        "bytes copy (limit)": bytes_copy,
    }
    for fn in candidates.values():  # warm-up
        fn()
    times = C.interleave(candidates, args.repeats)
    mb = nbytes / 1e6
    ref = C.median(times["numpy.save/load via BytesIO"])
    limit = C.median(times["bytes copy (limit)"])
    report.add(
        f"Payload: {len(names)} tensors, {nbytes:,} bytes ({args.preset} preset, pfmsmtrec "
        f"shared tensors); {args.repeats} alternated repeats; MB = 10^6 bytes.",
        "",
    )
    rows = []
    for name, ts in times.items():
        med = C.median(ts)
        rate = mb / med
        is_codec = name.startswith("codec")
        verdict = ("met" if rate >= TARGET_MB_S and med <= ref else "MISSED") if is_codec else ""
        rows.append(
            (name, f"{rate:,.0f}", C.spread(ts), f"{ref / med:.2f}", f"{limit / med:.2f}",
             verdict),
        )  # fmt: skip
    report.table(
        ("path", "MB/s", "time median (min–max, n)", "speed ÷ numpy.save", "speed ÷ bytes copy",
         "≥ 1 GB/s and ≥ numpy"),
        rows,
    )  # fmt: skip
    report.write(C.output_path(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
