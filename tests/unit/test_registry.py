"""Model registry: atomic publish, ordering, retention, verification, name validation."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from gateway_support import trained_like_model

from msmtrec.codec import tensors_digest
from msmtrec.data.schema import ALIEXPRESS
from msmtrec.federation.client import ClientRuntime
from msmtrec.federation.config import resolve_method
from msmtrec.model import preset
from msmtrec.registry import (
    LATEST_FILE,
    METADATA_FILE,
    VERSION_RE,
    WEIGHTS_FILE,
    ModelRegistry,
    NoVersionError,
    RegistryError,
)


@pytest.fixture(scope="module")
def model():
    return trained_like_model(seed=3)


def test_publish_then_load_round_trips_every_tensor(tmp_path, model):
    reg = ModelRegistry(tmp_path)
    metrics = {"valid": {"ctr": {"auc": 0.71, "logloss": float("nan")}}}
    version = reg.publish("NL", model, round=4, metrics=metrics, extra={"method": "pfmsmtrec"})
    assert VERSION_RE.fullmatch(version) and "-r00004-" in version
    assert (tmp_path / "NL" / LATEST_FILE).read_text().strip() == version
    loaded = reg.load("NL")
    assert loaded.info.version == version and loaded.info.round == 4
    assert not loaded.model.training
    assert loaded.schema == ALIEXPRESS and loaded.config == model.config
    want = model.state_dict()
    got = loaded.model.state_dict()
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name
    meta = json.loads((tmp_path / "NL" / version / METADATA_FILE).read_text())
    assert meta["preset"] == "small" and meta["tasks"] == ["ctr", "ctcvr"]
    assert meta["schema"]["vocab_sizes"] == list(ALIEXPRESS.vocab_sizes)
    assert meta["metrics"]["valid"]["ctr"] == {"auc": 0.71, "logloss": None}  # NaN → null
    assert meta["extra"] == {"method": "pfmsmtrec"}
    assert len(meta["weights"]["sha256"]) == 64
    assert version.endswith(meta["weights"]["content_sha256"][:8])
    assert meta["weights"]["content_sha256"] == tensors_digest(model.state_dict())


def test_publish_accepts_a_client_runtime(tmp_path, small_splits):
    fed = resolve_method("pfmsmtrec")
    runtime = ClientRuntime("S0", small_splits["S0"], preset("small"), fed, seed=0)
    reg = ModelRegistry(tmp_path)
    reg.publish("S0", runtime, round=1)
    loaded = reg.load("S0")
    cat = torch.from_numpy(small_splits["S0"].test.categorical[:32]).long()
    num = torch.from_numpy(small_splits["S0"].test.numerical[:32])
    runtime.model.eval()
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(cat, num), runtime.model(cat, num))


def test_versions_are_unique_and_chronological_within_one_second(tmp_path, model):
    reg = ModelRegistry(tmp_path, retention=50)
    published = [reg.publish("ES", model, round=r % 2) for r in range(8)]  # same hash, round 0/1
    assert len(set(published)) == 8
    assert sorted(published) == published
    assert [v.version for v in reg.versions("ES")] == published
    assert reg.latest("ES").version == published[-1]


def test_half_written_version_is_invisible_and_cleaned(tmp_path, model):
    reg = ModelRegistry(tmp_path)
    first = reg.publish("FR", model, round=1)
    # A publisher that crashed mid-write leaves its temp dir (partial weights, no metadata) …
    crashed = tmp_path / "FR" / ".tmp-v000002-r00002-deadbeef-1234abcd"
    crashed.mkdir()
    (crashed / WEIGHTS_FILE).write_bytes(b"\x00" * 100)
    # … and one that crashed after the rename but before moving the pointer leaves a version
    # nobody points to.
    assert reg.scenarios() == ["FR"]
    assert [v.version for v in reg.versions("FR")] == [first]
    assert reg.latest("FR").version == first
    assert reg.load("FR").info.version == first
    second = reg.publish("FR", model, round=2)
    assert not crashed.exists()
    assert reg.load("FR").info.version == second


def test_a_scenario_without_pointer_is_not_listed(tmp_path):
    (tmp_path / "US" / ".tmp-v000001-r00001-00000000-00000000").mkdir(parents=True)
    reg = ModelRegistry(tmp_path)
    assert reg.scenarios() == []
    assert reg.latest("US") is None
    with pytest.raises(NoVersionError):
        reg.load("US")


def test_retention_prunes_old_versions_but_never_the_pointed_one(tmp_path, model):
    reg = ModelRegistry(tmp_path, retention=3)
    published = [reg.publish("NL", model, round=r) for r in range(1, 7)]
    assert [v.version for v in reg.versions("NL")] == published[-3:]
    # An operator rolls LATEST back to the oldest kept version; the next prune keeps it even
    # when it falls out of the retention window.
    (tmp_path / "NL" / LATEST_FILE).write_text(published[3] + "\n")
    reg2 = ModelRegistry(tmp_path, retention=1)
    reg2._prune(tmp_path / "NL", keep=published[5])
    assert [v.version for v in reg2.versions("NL")] == [published[3], published[5]]
    assert reg2.load("NL").info.version == published[3]


def test_tampered_weights_fail_hash_verification(tmp_path, model):
    reg = ModelRegistry(tmp_path)
    version = reg.publish("NL", model, round=1)
    path = tmp_path / "NL" / version / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="sha256"):
        reg.load("NL")


def test_metadata_that_does_not_fit_the_weights_is_refused(tmp_path, model):
    reg = ModelRegistry(tmp_path)
    version = reg.publish("NL", model, round=1)
    meta_path = tmp_path / "NL" / version / METADATA_FILE
    meta = json.loads(meta_path.read_text())
    meta["model_config"]["embed_dim"] = 8
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(RegistryError, match="do not fit"):
        reg.load("NL")


def test_pointer_to_a_missing_version_is_an_error(tmp_path, model):
    reg = ModelRegistry(tmp_path)
    reg.publish("NL", model, round=1)
    (tmp_path / "NL" / LATEST_FILE).write_text("v000099-r00001-00000000\n")
    with pytest.raises(RegistryError, match="missing"):
        reg.load("NL")
    (tmp_path / "NL" / LATEST_FILE).write_text("../../etc\n")
    with pytest.raises(RegistryError, match="invalid version"):
        reg.load("NL")


@pytest.mark.parametrize("bad", ["", "../NL", "a/b", "NL.", ".hidden", "x" * 65, "N L", "é"])
def test_scenario_names_are_validated(tmp_path, model, bad):
    reg = ModelRegistry(tmp_path)
    with pytest.raises(RegistryError, match="invalid scenario"):
        reg.publish(bad, model, round=1)
    with pytest.raises(RegistryError, match="invalid scenario"):
        reg.load(bad)
    assert list(tmp_path.iterdir()) == []


def test_valid_scenario_names_pass(tmp_path, model):
    reg = ModelRegistry(tmp_path)
    for name in ("NL", "es_2", "US-east", "x" * 64):
        reg.publish(name, model, round=0)
    assert reg.scenarios() == sorted(["NL", "es_2", "US-east", "x" * 64])


def test_concurrent_publishers_and_readers(tmp_path):
    """Two publishers of one scenario and a reader: every read sees a complete, verified
    version, every published id is distinct, and retention holds at the end."""
    models = [trained_like_model(seed=s) for s in (11, 12)]
    reg = ModelRegistry(tmp_path, retention=4)
    reg.publish("NL", models[0], round=0)
    published: list[list[str]] = [[], []]
    errors: list[BaseException] = []
    reads = [0]
    done = threading.Event()

    def publisher(i: int) -> None:
        try:
            for r in range(1, 9):
                published[i].append(ModelRegistry(tmp_path, retention=4).publish(
                    "NL", models[i], round=r))  # fmt: skip
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            while not done.is_set() and reads[0] < 500:
                version = reg.latest_version("NL")
                try:
                    loaded = reg.load("NL", version)
                except RegistryError:
                    # Only acceptable if retention pruned it between pointer read and load.
                    assert not (tmp_path / "NL" / version).exists()
                    continue
                assert loaded.info.version == version == loaded.info.path.name
                reads[0] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publisher, args=(i,)) for i in (0, 1)]
    read_thread = threading.Thread(target=reader)
    read_thread.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    done.set()
    read_thread.join(60)
    assert not errors, errors
    assert reads[0] > 0
    all_ids = published[0] + published[1]
    assert len(set(all_ids)) == 16
    remaining = [v.version for v in reg.versions("NL")]
    assert len(remaining) == 4
    assert remaining == sorted(all_ids, key=lambda v: int(v[1:7]))[-4:]
    assert reg.latest("NL").version == remaining[-1]


def _valid(auc_ctr, auc_ctcvr):
    return {"valid": {"ctr": {"auc": auc_ctr}, "ctcvr": {"auc": auc_ctcvr}}, "test": {}}


def test_best_valid_policy_serves_the_version_selected_on_validation(tmp_path, model):
    reg = ModelRegistry(tmp_path, retention=2)
    first = reg.publish("NL", model, round=1, metrics=_valid(0.70, 0.80), policy="best-valid")
    assert reg.latest_version("NL") == first  # nothing served yet: the first is served
    worse = reg.publish("NL", model, round=2, metrics=_valid(0.69, 0.79), policy="best-valid")
    reg.publish("NL", model, round=3, metrics=_valid(0.71, 0.60), policy="best-valid")
    assert reg.latest_version("NL") == first  # stored, not served
    assert reg.version_ids("NL")[0] == first  # retention keeps the 2 newest and the served one
    best = reg.publish("NL", model, round=4, metrics=_valid(0.72, 0.81), policy="best-valid")
    assert reg.latest_version("NL") == best
    assert first not in reg.version_ids("NL") and worse not in reg.version_ids("NL")
    latest = reg.publish("NL", model, round=5, metrics=_valid(0.5, 0.5))  # default: latest
    assert reg.latest_version("NL") == latest
    with pytest.raises(ValueError, match="policy"):
        reg.publish("NL", model, round=6, policy="best-test")


def test_republishing_the_served_weights_of_the_same_round_adds_no_version(tmp_path):
    # A client restarted after the last round publishes the model it already published.
    model = trained_like_model(seed=4)  # mutated below: not the module's shared fixture
    reg = ModelRegistry(tmp_path, retention=2)
    older = reg.publish("ES", model, round=4)
    first = reg.publish("ES", model, round=5)
    assert reg.publish("ES", model, round=5) == first
    assert [v.version for v in reg.versions("ES")] == [older, first]  # older not pruned
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    changed = reg.publish("ES", model, round=5)  # same round, other weights: a new version
    assert changed != first and reg.latest("ES").version == changed
