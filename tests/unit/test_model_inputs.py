"""The schema-driven input layer (msmtrec.model.inputs): shared tables, private and sparse
tables, product chains of tasks, and the AliExpress layout unchanged bit for bit."""

import hashlib

import pytest
import torch

from msmtrec.data.schema import ALIEXPRESS, EmbeddingTable, FeatureSchema
from msmtrec.data.spec_file import load_spec
from msmtrec.federation.config import resolve_experiment
from msmtrec.federation.groups import Group, ParameterGroups, Policy, classify
from msmtrec.model import build_model, preset
from msmtrec.model.inputs import SPARSE_TABLE_ROWS, InputLayout
from msmtrec.model.scenario_mmoe import build_scenario_model
from msmtrec.training.sparse import SparseRowAdam

BIG = SPARSE_TABLE_ROWS + 5  # ids; one more row for out-of-vocabulary


def user_schema(user_size: int = BIG) -> FeatureSchema:
    """user (private, large), item shared by item_id and hist_1, a small category, and a
    chain click → like → share."""
    tables = (
        EmbeddingTable("user", user_size, hashed=True, policy="private"),
        EmbeddingTable("item", 50),
        EmbeddingTable("category", 7),
        EmbeddingTable("big-shared.t", BIG, hashed=True),
    )
    return FeatureSchema(
        categorical=("user_id", "item_id", "hist_1", "category", "tag"),
        vocab_sizes=(user_size, 50, 50, 7, BIG),
        numerical=("price",),
        labels=("click", "like", "share"),
        tasks=("click", "like", "share"),
        id_column="row_id",
        name="users",
        tables=tables,
        feature_tables=(0, 1, 1, 2, 3),
        task_parents=(None, "click", "like"),
    )


def batch(schema, n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, v + 1, (n,), generator=g) for v in schema.vocab_sizes], 1)
    return cat, torch.rand(n, schema.num_numerical, generator=g)


# Pinned with the code before the input layer moved to msmtrec.model.inputs (commit
# 2a43620; torch 2.13, CPU, one thread: reductions in backward depend on the thread count):
# the AliExpress model's names, initial values, gradients and outputs must not move.
PINNED = {
    "small": "7ae43145af832e99a2a7adc4c291fdd4632c3cf188f4ddc9881c2adf55040d7e",
    "emb": "2c3f0819c697bfc5a229b784dc5ad6060d5a4068a6a6d6f070a50336cffdb38b",
}


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_aliexpress_model_is_bit_identical_to_before(name, one_thread):
    cfg = preset("small", embedding_template=name == "emb")
    for schema in (ALIEXPRESS, load_spec("aliexpress")):
        model = build_model(schema, cfg, seed=5)
        h = hashlib.sha256()
        for k, v in model.state_dict().items():
            h.update(k.encode())
            h.update(v.numpy().tobytes())
        torch.manual_seed(0)
        cat, num = torch.randint(0, 2, (8, 16)), torch.randn(8, 63)
        model.train()
        model(cat, num).sum().backward()
        for _, p in model.named_parameters():
            h.update(p.grad.numpy().tobytes())
        model.eval()
        h.update(model(cat, num).detach().numpy().tobytes())
        assert h.hexdigest() == PINNED[name]
        assert not model.sparse_parameter_names


def test_layout_shares_tables_and_separates_private_and_large_ones():
    schema = user_schema()
    layout = InputLayout.of(schema)
    assert layout.dense_tables == (1, 2)  # item, category concatenated
    assert layout.separate == ((0, "private"), (3, "shared"))
    assert layout.feature_offsets == (0, 0, 0, 51, 0)  # item_id and hist_1 share rows
    model = build_model(schema, preset("small"), seed=0)
    names = dict(model.named_parameters())
    assert names["embedding.weight"].shape == (51 + 8, 16)
    assert names["private_tables.user.weight"].shape == (BIG + 1, 16)
    assert names["embedding_tables.big_shared_t.weight"].shape == (BIG + 1, 16)
    assert model.sparse_parameter_names == {
        "private_tables.user.weight",
        "embedding_tables.big_shared_t.weight",
    }
    assert classify("private_tables.user.weight") is Group.EMBEDDING_PRIVATE
    assert classify("embedding_tables.big_shared_t.weight") is Group.EMBEDDING


def test_features_sharing_a_table_read_the_same_rows_and_features_keep_their_order():
    schema = user_schema()
    model = build_model(schema, preset("small"), seed=0).eval()
    cat, _ = batch(schema)
    cat[:, 2] = cat[:, 1]  # hist_1 = item_id
    e = model.embed_categorical(cat)
    torch.testing.assert_close(e[:, 1], e[:, 2], rtol=0, atol=0)
    w = model.private_tables["user"].weight
    torch.testing.assert_close(e[:, 0], w[cat[:, 0]], rtol=0, atol=0)
    torch.testing.assert_close(e[:, 3], model.embedding.weight[cat[:, 3] + 51], rtol=0, atol=0)
    big = model.embedding_tables["big_shared_t"].weight
    torch.testing.assert_close(e[:, 4], big[cat[:, 4]], rtol=0, atol=0)


def test_task_chain_is_a_product_of_towers():
    schema = user_schema()
    model = build_model(schema, preset("small", dropout=0.0), seed=1).eval()
    cat, num = batch(schema, 64)
    with torch.no_grad():
        p = torch.sigmoid(model(cat, num))
        e = model.embed(cat, num)
        h = model.experts(e)
        own = []
        for t, name in enumerate(model.tower_names):
            gate = torch.softmax(model.gates[name](e), dim=-1)
            z = torch.einsum("bk,bko->bo", gate, h[:, :, t])
            own.append(torch.sigmoid(model.towers[name](z)))
    assert p.shape == (64, 3)
    torch.testing.assert_close(p[:, 0], own[0])
    torch.testing.assert_close(p[:, 1], own[0] * own[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(p[:, 2], own[0] * own[1] * own[2], rtol=1e-4, atol=1e-6)
    assert (p[:, 2] <= p[:, 1] + 1e-6).all() and (p[:, 1] <= p[:, 0] + 1e-6).all()


def test_esmm_head_with_schema_chain_is_refused():
    schema = FeatureSchema(
        categorical=("a",), vocab_sizes=(3,), numerical=(), labels=("c", "l"),
        tasks=("c", "l"), task_parents=(None, "c"),
    )  # fmt: skip
    with pytest.raises(ValueError, match="task parents"):
        build_model(schema, preset("small", ctcvr_head="esmm"), seed=0)


def test_private_tables_are_never_sent_even_with_the_embedding_template():
    schema = user_schema()
    fed, cfg = resolve_experiment("pfmsmtrec", "small", {"embedding_template": True})
    model = build_model(schema, cfg, seed=0)
    sent = fed.parameter_groups().sent_names(model.state_dict())
    assert "embedding.weight" in sent and "embedding_tables.big_shared_t.weight" in sent
    assert not [n for n in sent if "private" in n or n.startswith("embedding_s")]
    with pytest.raises(ValueError, match="never leaves"):
        ParameterGroups({Group.EMBEDDING_PRIVATE: Policy.FEDAVG})


def test_scenario_model_reads_the_schema_layout():
    schema = user_schema()
    model = build_scenario_model(schema, preset("small"), ["a", "b"], seed=0).train()
    cat, num = batch(schema, 16)
    cat = torch.cat([cat, torch.randint(0, 2, (16, 1))], 1)
    out = model(cat, num)
    assert out.shape == (16, 3)
    out.sum().backward()
    assert model.private_tables["user"].weight.grad.is_sparse


def test_sparse_row_adam_matches_torch_sparse_adam_and_leaves_other_rows_alone():
    torch.manual_seed(0)
    a = torch.nn.Embedding(1000, 8, sparse=True)
    b = torch.nn.Embedding(1000, 8, sparse=True)
    b.load_state_dict(a.state_dict())
    start = a.weight.detach().clone()
    ours, ref = SparseRowAdam([a.weight], lr=0.01), torch.optim.SparseAdam([b.weight], lr=0.01)
    touched = set()
    for step in range(5):
        ids = torch.randint(0, 50, (64,), generator=torch.Generator().manual_seed(step))
        touched |= set(ids.tolist())
        for emb, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            (emb(ids) ** 2).sum().backward()
            opt.step()
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)
    untouched = sorted(set(range(1000)) - touched)
    assert torch.equal(a.weight[untouched], start[untouched])
    assert not torch.equal(a.weight[sorted(touched)], start[sorted(touched)])


def test_trainer_updates_only_the_rows_of_a_sparse_table_that_the_data_uses():
    import numpy as np

    from msmtrec.data.dataset import ScenarioData
    from msmtrec.training.trainer import TrainConfig, Trainer

    schema = user_schema()
    model = build_model(schema, preset("small"), seed=0)
    cat, num = batch(schema, 256)
    cat[:, 0] = cat[:, 0] % 100  # users 0..99 only
    labels = (torch.rand(256, 3, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    labels[:, 1] *= labels[:, 0]
    labels[:, 2] *= labels[:, 1]
    data = ScenarioData(cat.numpy().astype(np.int64), num.numpy(), labels.numpy())
    before = model.private_tables["user"].weight.detach().clone()
    dense_before = model.embedding.weight.detach().clone()
    Trainer(model, TrainConfig(batch_size=64)).fit(data, seed=0)
    after = model.private_tables["user"].weight.detach()
    assert torch.equal(after[100:], before[100:])
    assert not torch.equal(after[:100], before[:100])
    assert not torch.equal(model.embedding.weight, dense_before)  # dense Adam still runs


def test_differential_privacy_with_a_sparse_table_is_refused_naming_it():
    import numpy as np

    from msmtrec.data.dataset import ScenarioData
    from msmtrec.training.config import PrivacyConfig
    from msmtrec.training.privacy import PrivateTraining
    from msmtrec.training.trainer import TrainConfig, Trainer

    schema = user_schema()
    model = build_model(schema, preset("small"), seed=0)
    cat, num = batch(schema, 64)
    data = ScenarioData(cat.numpy(), num.numpy(), np.zeros((64, 3), dtype=np.float32))
    private = PrivateTraining(PrivacyConfig(noise_multiplier=1.0, noise_seed=1), 64, 32, 2, seed=0)
    with pytest.raises(ValueError, match=r"private_tables\.user\.weight"):
        Trainer(model, TrainConfig(batch_size=32), privacy=private).fit(data, seed=0)
