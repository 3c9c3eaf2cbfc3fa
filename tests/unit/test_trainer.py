import numpy as np
import torch

from msmtrec.data.schema import ALIEXPRESS
from msmtrec.model import build_model, preset
from msmtrec.training import TrainConfig, Trainer, mean_auc, task_metrics


def _trainer(seed=0, **cfg):
    model = build_model(ALIEXPRESS, preset("small"), seed)
    return Trainer(model, TrainConfig(batch_size=256, **cfg))


def test_same_seed_same_parameters_and_metrics(small_splits):
    data = small_splits["S0"]
    runs = []
    for _ in range(2):
        t = _trainer()
        t.fit(data.train, seed=11)
        runs.append((t.model.state_dict(), t.evaluate(data.valid)))
    (a, ma), (b, mb) = runs
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ma == mb
    t = _trainer()
    t.fit(data.train, seed=12)
    c = t.model.state_dict()
    assert not torch.equal(a["experts.layers.0.weight_g"], c["experts.layers.0.weight_g"])


def test_training_learns_the_signal(small_splits):
    data = small_splits["S0"]
    t = _trainer(lr=3e-3)
    before = t.evaluate(data.valid)["ctr"]["auc"]
    t.fit(data.train, seed=0, epochs=3)
    after = t.evaluate(data.valid)["ctr"]["auc"]
    assert after > 0.7 and after > before + 0.1


def test_regularizer_keeps_shared_parameters_near_the_anchor(small_splits):
    data = small_splits["S0"]
    name = "experts.layers.0.weight_g"
    distances = []
    for mu in (0.0, 10.0):
        t = _trainer()
        anchor = {name: t.model.state_dict()[name].clone()}
        t.fit(data.train, seed=0, anchor=anchor, mu=mu)
        distances.append(float((t.model.state_dict()[name] - anchor[name]).norm()))
    assert distances[1] < 0.5 * distances[0]


def test_auc_is_undefined_not_a_crash_for_one_class():
    m = task_metrics(np.zeros(10), np.linspace(0.1, 0.9, 10))
    assert m["auc"] is None and m["positives"] == 0 and m["logloss"] > 0
    m = task_metrics(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.8]))
    assert m["auc"] == 1.0


def test_mean_auc_skips_undefined():
    per = {"A": {"ctr": {"auc": 0.7}, "ctcvr": {"auc": None}}, "B": {"ctr": {"auc": 0.5}}}
    assert mean_auc(per) == 0.6


def test_predict_is_eval_mode_and_deterministic(small_splits):
    t = _trainer()
    t.fit(small_splits["S0"].train, seed=0)
    p1 = t.predict(small_splits["S0"].test)
    p2 = t.predict(small_splits["S0"].test)
    assert p1.shape == (len(small_splits["S0"].test), 2)
    assert np.array_equal(p1, p2)
    assert ((p1 > 0) & (p1 < 1)).all()


def test_fused_adam_is_bit_identical_to_torch_fused_adam():
    """The Trainer's optimizer is torch's fused Adam kernel without torch.optim's wrapper."""
    from msmtrec.training.trainer import FusedAdam

    g = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (5,), (3, 2, 4)]
    a = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    ours = FusedAdam([(a[:2], 1e-3), (a[2:], 0.5)], lr=3e-3)
    ref = torch.optim.Adam(
        [{"params": b[:2], "weight_decay": 1e-3}, {"params": b[2:], "weight_decay": 0.5}],
        lr=3e-3,
        fused=True,
    )
    for _ in range(5):
        grads = [torch.randn(s, generator=g) for s in shapes]
        for p, q, gr in zip(a, b, grads, strict=True):
            p.grad, q.grad = gr.clone(), gr.clone()
        ours.step()
        ref.step()
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


def test_folded_penalties_match_the_penalties_in_the_loss(small_splits):
    """Prox and shrinkage folded into weight decay give the gradient of the penalized loss."""
    from msmtrec.training.trainer import penalty_groups

    model = build_model(ALIEXPRESS, preset("small"), 0)
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(1)
    anchor = {n: p.detach() + 0.1 * torch.randn(p.shape, generator=g) for n, p in params.items()
              if n.endswith(("_g", "_s"))}  # fmt: skip
    shrink = {n: 0.3 for n in params if n.endswith(("_s", "_t"))}
    mu, wd = 0.7, 1e-2
    groups, refs = penalty_groups(params, wd, anchor, mu, shrink)
    grads = {n: torch.randn(p.shape, generator=g) for n, p in params.items()}
    decay = {id(p): d for ps, d in groups for p in ps}
    ref_of = {id(p): r for p, r in refs}
    for n, p in params.items():
        folded = grads[n] + decay[id(p)] * p.detach()
        if id(p) in ref_of:
            folded = folded - mu * ref_of[id(p)]
        direct = grads[n] + wd * p.detach() + shrink.get(n, 0.0) * p.detach()
        if n in anchor:
            direct = direct + mu * (p.detach() - anchor[n])
        torch.testing.assert_close(folded, direct, rtol=1e-5, atol=1e-6)
