"""Serving a model of a user's dataset spec: large id tables left unfolded, product chains,
hashed ids and normalized numericals parsed as the loader reads them, OpenAPI from the
spec's names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gateway.app import predict_openapi
from gateway.engine import CompiledMMoE, compile_model, random_batch
from gateway.features import FeaturePlan, InstanceError
from msmtrec.data.hashing import hash_ids
from msmtrec.data.schema import ALIEXPRESS, EmbeddingTable, FeatureSchema
from msmtrec.model import build_model, preset
from msmtrec.model.inputs import SPARSE_TABLE_ROWS

BIG = SPARSE_TABLE_ROWS + 5


def spec_schema() -> FeatureSchema:
    return FeatureSchema(
        categorical=("user_id", "item_id", "hist_1", "gender"),
        vocab_sizes=(BIG, 40, 40, 3),
        numerical=("price", "age_days"),
        labels=("click", "like"),
        tasks=("click", "like"),
        id_column="row_id",
        name="shop",
        tables=(
            EmbeddingTable("user", BIG, hashed=True, policy="private"),
            EmbeddingTable("item", 40),
            EmbeddingTable("gender", 3),
        ),
        feature_tables=(0, 1, 1, 2),
        task_parents=(None, "click"),
        normalization=("log1p", "standard"),
        numerical_stats=(None, (10.0, 4.0)),
    )


def perturbed(model):
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
    return model.eval()


def test_a_large_private_table_is_served_unfolded_and_matches_the_module():
    model = perturbed(build_model(spec_schema(), preset("small"), seed=0))
    engine = compile_model(model)
    assert isinstance(engine, CompiledMMoE)  # not the eager fallback
    assert [f for f, _, _ in engine.unfolded] == [0]  # user_id: looked up, not folded
    # the table is served from the model's own storage, not a copy of its rows
    assert engine.unfolded[0][1].data_ptr() == model.private_tables["user"].weight.data_ptr()
    cat, num = random_batch(model, 200, seed=1)
    with torch.inference_mode():
        want = torch.sigmoid(model(cat, num))
        got = engine(cat, num)
    assert got.shape == (200, 2)
    assert (got - want).abs().max().item() <= 1e-6
    assert (got[:, 1] <= got[:, 0] + 1e-6).all()  # like = click × own tower


def test_the_embedding_template_is_compiled_not_served_eagerly():
    model = perturbed(build_model(ALIEXPRESS, preset("small", embedding_template=True), seed=0))
    engine = compile_model(model)
    assert isinstance(engine, CompiledMMoE)
    cat, num = random_batch(model, 100, seed=2)
    with torch.inference_mode():
        assert (engine(cat, num) - torch.sigmoid(model(cat, num))).abs().max() <= 1e-6


def test_hashed_ids_are_hashed_exactly_and_numericals_normalized():
    schema = spec_schema()
    plan = FeaturePlan(schema)
    big = 2**62 + 1  # float64 would round it to 2**62
    instances = [
        {"user_id": big, "item_id": 3, "hist_1": 99, "gender": 1, "price": 0.0, "age_days": 14},
        {"user_id": 2**62, "item_id": 0, "hist_1": 1, "gender": 2, "price": 9.0, "age_days": 6},
    ]
    batch = plan.parse({"instances": instances}, max_batch=10)
    want_users = hash_ids(np.array([big, 2**62], dtype=np.int64), BIG)
    assert batch.categorical[:, 0].tolist() == want_users.tolist()
    assert batch.categorical[0, 0] != batch.categorical[1, 0]
    assert batch.categorical[0, 2] == 40  # an unhashed id past the vocabulary: OOV row
    assert batch.oov is not None and batch.oov.tolist() == [0, 0, 1, 0]
    np.testing.assert_allclose(batch.numerical[:, 0], np.log1p([0.0, 9.0]), rtol=1e-6)
    np.testing.assert_allclose(batch.numerical[:, 1], [1.0, -1.0], rtol=1e-6)
    instances[1]["price"] = -1.0
    with pytest.raises(InstanceError) as info:
        plan.parse({"instances": instances}, max_batch=10)
    assert info.value.loc == "instances[1].price" and "log1p" in info.value.message


def test_openapi_names_the_spec_features_and_tasks():
    doc = predict_openapi(spec_schema(), max_batch=5)
    text = str(doc)
    for name in ("user_id", "item_id", "hist_1", "gender", "price", "age_days", "click", "like"):
        assert f"'{name}'" in text
    assert "categorical_1" not in text and "ctcvr" not in text
    assert "hashed into table 'user'" in text
