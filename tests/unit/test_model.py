import pytest
import torch

from msmtrec.data.schema import ALIEXPRESS
from msmtrec.model import build_model, count_parameters, preset


def _batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack(
        [torch.randint(0, v + 1, (n,), generator=g) for v in ALIEXPRESS.vocab_sizes], 1
    ).to(torch.int16)
    num = torch.rand(n, ALIEXPRESS.num_numerical, generator=g)
    return cat, num


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_fresh_additive3_equals_plain_mmoe(mode):
    """W_S = W_T = 0 at init, so a templated model computes what a plain MMoE computes."""
    cfg = preset("small", dropout=0.0)
    plain = build_model(ALIEXPRESS, cfg.with_(template="none"), seed=7)
    templated = build_model(ALIEXPRESS, cfg.with_(template="additive3"), seed=7)
    getattr(plain, mode)()
    getattr(templated, mode)()
    cat, num = _batch()
    torch.testing.assert_close(templated(cat, num), plain(cat, num), rtol=1e-5, atol=1e-6)


def test_task_views_diverge_once_task_weights_move():
    model = build_model(ALIEXPRESS, preset("small", dropout=0.0), seed=0).eval()
    cat, num = _batch()
    before = model.experts(model.embed(cat, num))
    torch.testing.assert_close(before[:, :, 0], before[:, :, 1])
    with torch.no_grad():
        model.experts.layers[0].weight_t[:, 1].normal_(0, 0.1)
    after = model.experts(model.embed(cat, num))
    torch.testing.assert_close(after[:, :, 0], before[:, :, 0])
    assert (after[:, :, 1] - before[:, :, 1]).abs().max() > 1e-3


def test_same_seed_same_model_different_seed_differs():
    a = build_model(ALIEXPRESS, preset("small"), seed=3).state_dict()
    b = build_model(ALIEXPRESS, preset("small"), seed=3).state_dict()
    c = build_model(ALIEXPRESS, preset("small"), seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["experts.layers.0.weight_g"], c["experts.layers.0.weight_g"])


def test_build_model_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model(ALIEXPRESS, preset("small"), seed=0)
    torch.testing.assert_close(torch.rand(3), expected)


def test_esmm_head_never_predicts_ctcvr_above_ctr():
    model = build_model(ALIEXPRESS, preset("small", ctcvr_head="esmm"), seed=0).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5.0)  # push towards confident outputs
        probs = torch.sigmoid(model(*_batch(512)))
    assert torch.isfinite(probs).all()
    assert (probs[:, 1] <= probs[:, 0] + 1e-6).all()


def test_output_shape_and_oov_slot_is_valid_index():
    model = build_model(ALIEXPRESS, preset("small"), seed=0).eval()
    cat = torch.tensor([list(ALIEXPRESS.vocab_sizes)], dtype=torch.int16).repeat(4, 1)  # OOV ids
    out = model(cat, torch.zeros(4, ALIEXPRESS.num_numerical))
    assert out.shape == (4, 2)


def test_paper_preset_plain_size_matches_mtreclib():
    """≈10 M parameters for a plain MMoE with MTReclib's sizes."""
    n = count_parameters(build_model(ALIEXPRESS, preset("paper", template="none"), seed=0))
    assert 9.5e6 < n < 10.5e6


def test_invalid_config_is_rejected():
    with pytest.raises(ValueError, match="template"):
        preset("small", template="fourway")
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")


def test_training_template_sum_is_bit_identical_and_refuses_a_stale_graph(monkeypatch):
    """The training-time W_G + W_S + W_T sum (reused buffers, custom backward) gives exactly
    the outputs and gradients of the plain expression, step after step, and a graph whose
    sum was overwritten by a later forward fails instead of using it."""
    import copy

    import msmtrec.model.mmoe as mmoe

    g = torch.Generator().manual_seed(0)
    fast = build_model(ALIEXPRESS, preset("small"), seed=0).train()
    with torch.no_grad():
        for p in fast.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))  # W_S, W_T away from zero
    plain = copy.deepcopy(fast)
    cat, num = _batch(64)
    y = (torch.rand(64, 2, generator=g) < 0.3).float()

    def step(model):
        torch.manual_seed(1)  # same dropout masks
        out = model(cat, num)
        model.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(out, y).backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    ref_out, ref_grads = None, None
    with monkeypatch.context() as m:
        m.setattr(
            mmoe._AdditiveTemplate, "apply", staticmethod(lambda w, s, t, _: (w + s)[:, None] + t)
        )
        ref_out, ref_grads = step(plain)
    for _ in range(2):  # the second step reuses the buffers
        out, grads = step(fast)
        assert torch.equal(out, ref_out)
        assert all(torch.equal(grads[n], ref_grads[n]) for n in ref_grads)
    first = fast(cat, num).sum()
    fast(cat, num)  # overwrites the sum the first graph saved
    with pytest.raises(RuntimeError, match=r"modified by an inplace operation|has been modified"):
        first.backward()
