"""A private embedding table never goes over the wire (issue 12): real aggregator and client
processes, the client's gRPC connection through a recording TCP proxy, so the test reads the
bytes the client actually sent.

The dataset spec has a private ``user`` table and a shared ``tag`` table, both large enough
to be sparse (so rows that no training id touches keep their initial values exactly), and
the embedding template is on, so the shared tables *are* sent. The positive control: the
initial bytes of untouched ``tag`` rows and the name ``embedding_tables.tag.weight`` are found
in the recorded stream. The claim: neither the name ``private_tables.user_id.weight`` nor the
bytes of any untouched ``user_id`` row are. The client's own state file keeps the private table.
The published models are then served by a gateway given the same spec: requests keyed by the
spec's feature names, predictions keyed by its tasks (click, like).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch
from helpers.federation import Federation
from helpers.netproxy import FaultyProxy
from helpers.processes import free_port, get_json

from msmtrec.data.hashing import hash_ids
from msmtrec.data.spec_file import load_spec
from msmtrec.federation.config import resolve_experiment
from msmtrec.model import build_model
from msmtrec.model.inputs import SPARSE_TABLE_ROWS
from servicekit.auth import make_tokens

START = 120
USERS = SPARSE_TABLE_ROWS + 1000
TAGS = SPARSE_TABLE_ROWS + 2000

SPEC = f"""
name = "shop"
id_column = "row_id"
[[categorical]]
name = "user_id"
hash_buckets = {USERS}
policy = "private"
[[categorical]]
name = "tag"
vocab_size = {TAGS}
[[categorical]]
name = "gender"
vocab_size = 3
[[numerical]]
name = "price"
normalization = "log1p"
[[tasks]]
name = "click"
label = "click"
[[tasks]]
name = "like"
label = "like"
parent = "click"
"""


def write_data(root, scenarios, rows=1500):
    ids = {}
    for k, sc in enumerate(scenarios):
        for split, n in (("train", rows), ("test", 400)):
            rng = np.random.default_rng(10 * k + (split == "test"))
            user = rng.integers(0, 10**12, n)  # raw ids, hashed into the table
            tag = rng.integers(0, 3000, n)  # rows >= 3000 of the tag table: never touched
            click = (rng.random(n) < 0.2).astype(int)
            like = click * (rng.random(n) < 0.4).astype(int)
            d = root / sc
            d.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(
                {"row_id": np.arange(n), "user_id": user, "tag": tag,
                 "gender": rng.integers(0, 3, n), "price": rng.exponential(10, n),
                 "click": click, "like": like}
            ).to_csv(d / f"{split}.csv", index=False)  # fmt: skip
            ids.setdefault("user", set()).update(hash_ids(user, USERS).tolist())
    return ids


def test_a_private_table_is_absent_from_the_bytes_a_client_sends(tmp_path, processes):
    spec_file = tmp_path / "shop.toml"
    spec_file.write_text(SPEC)
    schema = load_spec(spec_file)
    scenarios = ("S0", "S1")
    data = tmp_path / "data"
    touched = write_data(data, scenarios)["user"]
    make_tokens(list(scenarios), tmp_path / "tokens")
    fed = Federation(tmp_path, data, scenarios, free_port(), free_port())
    seed = 4
    agg = processes.launch(
        "aggregator",
        fed.aggregator_args(
            rounds=1, seed=seed, spec=spec_file, embedding_template=True, exit_when_done=False
        ),
    )
    with FaultyProxy(("127.0.0.1", fed.port), record=True) as proxy:
        registry = tmp_path / "registry"
        s0 = processes.launch(
            "S0",
            fed.client_args("S0", aggregator=proxy.target, spec=spec_file, registry=registry),
        )
        s1 = processes.launch("S1", fed.client_args("S1", spec=spec_file, registry=registry))
        assert s0.wait(START) == 0, s0.tail()
        assert s1.wait(START) == 0, s1.tail()
        wire = bytes(proxy.recorded_up)
    rounds = get_json(fed.url("/v1/rounds"))
    assert [r["round"] for r in rounds] == [1], rounds
    # the status API's per-task metrics are keyed by the spec's task names
    text = json.dumps(rounds)
    assert '"click"' in text and '"like"' in text and "ctcvr" not in text, text[:2000]
    assert agg.poll() is None or agg.returncode == 0

    # the initial model every participant derives from the seed
    _, cfg = resolve_experiment("pfmsmtrec", "small", {"embedding_template": True})
    init = build_model(schema, cfg, seed).state_dict()
    user0 = init["private_tables.user_id.weight"].numpy()
    tag0 = init["embedding_tables.tag.weight"].numpy()
    assert len(wire) > tag0.nbytes  # the shared tag table itself went up

    # positive control: what is shared is on the wire, name and untouched initial rows
    assert b"embedding_tables.tag.weight" in wire
    tag_rows = range(3000, TAGS + 1, 997)
    found = sum(tag0[r].tobytes() in wire for r in tag_rows)
    assert found >= 0.9 * len(tag_rows), (found, len(tag_rows))

    # the claim: nothing of the private table is
    assert b"private_tables" not in wire
    untouched = [r for r in range(0, USERS + 1, 499) if r not in touched]
    assert len(untouched) > 150
    leaked = [r for r in untouched if user0[r].tobytes() in wire]
    assert not leaked, leaked[:5]
    # not even a quarter row (4 float32) of it
    assert not [r for r in untouched if user0[r, :4].tobytes() in wire]

    # ... while the client keeps it in its own state file
    from safetensors.torch import load_file

    from scenario_client.state import LocalState

    state = load_file(str(LocalState(fed.client_state_dir("S0")).path))
    kept = state["private_tables.user_id.weight"]
    assert kept.shape == (USERS + 1, 16)
    assert torch.equal(kept[untouched], torch.from_numpy(user0[untouched]))
    some = sorted(touched)[:50]
    assert not torch.equal(kept[some], torch.from_numpy(user0[some]))

    # the gateway serves the spec: instance keys are its feature names, predictions its tasks
    import httpx
    from gateway_support import running_gateway, wait_ready

    instances = [
        {"user_id": 10**15 + i, "tag": 7 * i, "gender": i % 3, "price": 3.5 * i} for i in range(5)
    ]
    with running_gateway(registry, spec=str(spec_file)) as base, httpx.Client(base_url=base) as c:
        wait_ready(c)
        body = c.post("/v1/scenarios/S0/predict", json={"instances": instances})
        assert body.status_code == 200, body.text
        predictions = body.json()["predictions"]
        assert set(predictions) == {"click", "like"}
        click, like = np.array(predictions["click"]), np.array(predictions["like"])
        assert len(click) == 5 and (like <= click + 1e-6).all()  # like = click × own tower
        doc = c.get("/openapi.json").json()
        assert "user_id" in json.dumps(doc) and "categorical_1" not in json.dumps(doc)
        missing = c.post("/v1/scenarios/S0/predict", json={"instances": [{"user_id": 1}]})
        assert missing.status_code == 422 and "tag" in missing.text
