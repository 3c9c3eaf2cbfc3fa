"""Out-of-core stream of a Parquet split: every row exactly once per epoch, deterministic by
(seed, epoch), the shuffle buffer's bound, the loader's arrays and errors, and the trainer
fed from a stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from msmtrec.data.loader import DataValidationError, load_split
from msmtrec.data.schema import ALIEXPRESS
from msmtrec.data.spec_file import parse_spec
from msmtrec.data.stream import ParquetStream, load_rows

SPEC = parse_spec(
    {
        "name": "rows",
        "categorical": [{"name": "user", "hash_buckets": 50}, {"name": "c", "vocab_size": 4}],
        "numerical": [{"name": "rid"}, {"name": "x", "normalization": "log1p"}],
        "tasks": [{"name": "click", "label": "click"}, {"name": "like", "label": "like",
                                                        "parent": "click"}],
    }
)  # fmt: skip
N = 1000
GROUP = 64  # 16 row groups: 15 full, one of 40 rows


def write_file(path: Path, n: int = N, group: int = GROUP, bad_row: int | None = None) -> Path:
    rng = np.random.default_rng(0)
    click = (rng.random(n) < 0.4).astype(np.int64)
    like = click * (rng.random(n) < 0.5)
    if bad_row is not None:  # 1-based data row whose like exceeds its click
        click[bad_row - 1], like[bad_row - 1] = 0, 1
    table = pa.table(
        {
            "user": pa.array(rng.integers(0, 10**9, n)),
            "c": pa.array(rng.integers(0, 6, n)),
            "rid": pa.array(np.arange(n, dtype=np.float32)),
            "x": pa.array(rng.random(n) * 10),
            "click": pa.array(click),
            "like": pa.array(like),
        }
    )
    pq.write_table(table, path, row_group_size=group)
    return path


def rids(batches: list) -> np.ndarray:
    return np.concatenate([b.numerical[:, 0] for b in batches]).astype(np.int64)


@pytest.mark.parametrize(("buffer_rows", "batch"), [(100, 32), (64, 64), (7, 3), (5000, 128)])
def test_every_row_exactly_once_and_the_buffer_bound(
    tmp_path: Path, buffer_rows: int, batch: int
) -> None:
    stream = ParquetStream(write_file(tmp_path / "t.parquet"), SPEC, buffer_rows=buffer_rows)
    assert len(stream) == N
    for epoch in range(2):
        got = list(stream.batches(batch, seed=3, epoch=epoch))
        ids = rids(got)
        assert sorted(ids.tolist()) == list(range(N))  # every row once, none twice
        assert all(len(b) == batch for b in got[:-1]) and 1 <= len(got[-1]) <= batch
        assert not np.array_equal(ids, np.arange(N))  # shuffled
    assert stream.max_buffered_rows == min(max(buffer_rows, batch), N)


def test_shuffle_mixes_row_groups(tmp_path: Path) -> None:
    stream = ParquetStream(write_file(tmp_path / "t.parquet"), SPEC, buffer_rows=256)
    first = rids(list(stream.batches(64, seed=0)))[:64]
    assert len(np.unique(first // GROUP)) >= 3  # one batch draws from several row groups


def test_deterministic_by_seed_and_epoch(tmp_path: Path) -> None:
    path = write_file(tmp_path / "t.parquet")

    def order(seed: int, epoch: int) -> np.ndarray:
        stream = ParquetStream(path, SPEC, buffer_rows=100)
        return rids(list(stream.batches(50, seed=seed, epoch=epoch)))

    assert np.array_equal(order(1, 0), order(1, 0))
    assert not np.array_equal(order(1, 0), order(1, 1))
    assert not np.array_equal(order(1, 0), order(2, 0))


def test_same_arrays_as_the_in_memory_loader(tmp_path: Path) -> None:
    path = write_file(tmp_path / "t.parquet")
    full = load_split(path, SPEC)
    got = list(ParquetStream(path, SPEC, buffer_rows=128).batches(100, seed=0))
    cat = np.concatenate([b.categorical for b in got])
    num = np.concatenate([b.numerical for b in got])
    lab = np.concatenate([b.labels for b in got])
    order = np.argsort(num[:, 0])
    assert cat.dtype == full.categorical.dtype and lab.dtype == full.labels.dtype
    np.testing.assert_array_equal(cat[order], full.categorical)
    np.testing.assert_array_equal(num[order], full.numerical)
    np.testing.assert_array_equal(lab[order], full.labels)


def test_row_range_and_load_rows(tmp_path: Path) -> None:
    path = write_file(tmp_path / "t.parquet")
    full = load_split(path, SPEC)
    head = ParquetStream(path, SPEC, buffer_rows=100, stop=900)
    assert len(head) == 900
    assert sorted(rids(list(head.batches(64, seed=0))).tolist()) == list(range(900))
    tail = load_rows(path, SPEC, start=900)
    np.testing.assert_array_equal(tail.numerical, full.numerical[900:])
    middle = load_rows(path, SPEC, start=70, stop=130)  # across a group boundary
    np.testing.assert_array_equal(middle.categorical, full.categorical[70:130])
    with pytest.raises(ValueError, match=r"row range \[0, 2000\)"):
        ParquetStream(path, SPEC, stop=2000)


def test_errors_keep_the_file_row_numbers(tmp_path: Path) -> None:
    path = write_file(tmp_path / "bad.parquet", bad_row=700)
    stream = ParquetStream(path, SPEC, buffer_rows=100)
    with pytest.raises(DataValidationError, match=r"bad\.parquet, row 700, column 'like'"):
        list(stream.batches(32, seed=0))
    with pytest.raises(DataValidationError, match=r"streaming needs a Parquet file"):
        ParquetStream(tmp_path / "x.csv", SPEC)
    pq.write_table(pa.table({"user": [1]}), tmp_path / "m.parquet")
    with pytest.raises(DataValidationError, match=r"m\.parquet, column 'c': missing"):
        ParquetStream(tmp_path / "m.parquet", SPEC)


def test_trainer_fits_from_a_stream(tmp_path: Path, small_splits) -> None:
    from msmtrec.data.loader import write_split
    from msmtrec.model import build_model, preset
    from msmtrec.training import TrainConfig, Trainer

    data = small_splits["S0"]
    path = tmp_path / "train.parquet"
    write_split(data.train, path, ALIEXPRESS)

    def fit(seed: int) -> tuple[dict, object]:
        model = build_model(ALIEXPRESS, preset("small"), 0)
        trainer = Trainer(model, TrainConfig(batch_size=256, lr=3e-3))
        stream = ParquetStream(path, ALIEXPRESS, buffer_rows=1024)
        result = trainer.fit(stream, seed=seed, epochs=2)
        return model.state_dict(), (result, trainer.evaluate(data.valid)["ctr"]["auc"])

    a, (ra, auc) = fit(5)
    b, _ = fit(5)
    c, _ = fit(6)
    assert ra.num_samples == len(data.train)
    assert ra.steps == 2 * -(-len(data.train) // 256) - (2 if len(data.train) % 256 == 1 else 0)
    assert all(torch.equal(a[k], b[k]) for k in a)  # deterministic by seed
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert auc > 0.7  # it learns, as the in-memory path does (test_trainer)


def test_stream_scenario_splits_like_load_scenario(tmp_path: Path) -> None:
    from msmtrec.data.loader import load_scenario
    from msmtrec.data.stream import stream_scenario

    (tmp_path / "S").mkdir()
    write_file(tmp_path / "S" / "train.parquet")
    write_file(tmp_path / "S" / "test.parquet", n=100)
    splits = load_scenario(tmp_path, "S", SPEC)
    train, valid, test = stream_scenario(tmp_path, "S", SPEC, buffer_rows=64)
    assert len(train) == len(splits.train)
    got = np.sort(rids(list(train.batches(32, seed=0))))
    np.testing.assert_array_equal(got, splits.train.numerical[:, 0].astype(np.int64))
    np.testing.assert_array_equal(valid.categorical, splits.valid.categorical)
    np.testing.assert_array_equal(test.labels, splits.test.labels)
    (tmp_path / "S" / "test.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"needs train\.parquet and test\.parquet"):
        stream_scenario(tmp_path, "S", SPEC)


def test_simulate_streams_every_scenario_when_asked(tmp_path: Path, small_splits) -> None:
    """``simulate --stream-buffer-rows``: a federated run over streamed train splits trains
    on the same rows as the in-memory run (same sample counts per round and scenario, same
    valid/test) and learns; only the row order differs."""
    from msmtrec.data.dataset import ScenarioData
    from msmtrec.data.loader import write_split
    from msmtrec.simulation import SimulationConfig, load_splits, run_simulation
    from msmtrec.training import TrainConfig

    for name in ("S0", "S1"):
        sp = small_splits[name]
        (tmp_path / name).mkdir()
        # train = train + valid tail again, so the loaders' own hold-out rule is exercised
        write_split(ScenarioData.concat([sp.train, sp.valid]), tmp_path / name / "train.parquet")
        write_split(sp.test, tmp_path / name / "test.parquet")
    streamed = load_splits(tmp_path, None, 0.1, ALIEXPRESS, stream_buffer_rows=512)
    memory = load_splits(tmp_path, None, 0.1, ALIEXPRESS)
    for name in ("S0", "S1"):
        assert isinstance(streamed[name].train, ParquetStream)
        assert len(streamed[name].train) == len(memory[name].train)
        assert np.array_equal(streamed[name].valid.labels, memory[name].valid.labels)

    def run(rows: int) -> list:
        cfg = SimulationConfig(
            data_dir=tmp_path, method="fedavg", rounds=2, seed=1,
            train=TrainConfig(batch_size=256, lr=3e-3), stream_buffer_rows=rows,
        )  # fmt: skip
        return run_simulation(cfg, log=lambda *_: None).history

    a, b = run(512), run(0)
    assert [set(r.train_loss) for r in a] == [set(r.train_loss) for r in b]
    assert a[-1].train_loss != b[-1].train_loss  # another row order, another run
    final = a[-1].valid["S0"]["ctr"]["auc"]
    assert final > 0.65, final
    with pytest.raises(ValueError, match="stream buffer rows must be >= 1"):
        from msmtrec.data.stream import stream_splits

        stream_splits(tmp_path, "S0", ALIEXPRESS, 0.1, buffer_rows=0)


def test_client_refuses_streaming_with_dp_or_replicas(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from scenario_client.settings import ClientSettings

    base = {"scenario": "NL", "data": tmp_path, "insecure": True, "stream_buffer_rows": 4096}
    assert ClientSettings(**base).stream_buffer_rows == 4096
    with pytest.raises(ValidationError, match="stream_buffer_rows with differential privacy"):
        ClientSettings(**base, dp_epsilon=5.0)
    with pytest.raises(ValidationError, match="stream_buffer_rows with distributed"):
        ClientSettings(**base, distributed=True)
    with pytest.raises(ValidationError, match="stream_buffer_rows"):
        ClientSettings(**{**base, "stream_buffer_rows": -1})
