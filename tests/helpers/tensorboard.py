"""Read TensorBoard event files back (TFRecord framing + tensorboardX's Event protobuf),
so tests check what was written without the tensorboard package."""

from __future__ import annotations

import struct
from pathlib import Path


def read_scalars(logdir: Path) -> dict[str, dict[int, float]]:
    """tag → step → value over every event file under ``logdir``."""
    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = {}
    files = sorted(Path(logdir).rglob("events.out.tfevents.*"))
    assert files, f"no event file under {logdir}"
    for path in files:
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            record = data[pos + 12 : pos + 12 + length]
            pos += 12 + length + 4  # length, its crc, data, data crc
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out
