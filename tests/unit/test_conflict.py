import numpy as np
import pytest
import torch

from msmtrec.federation.conflict import (
    conflict_averse_update,
    conflict_averse_weights,
    coordinate,
    pcgrad_update,
)


def _conflicting(seed=0, dim=500):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(dim, generator=g)
    d = torch.stack([base + 2.0 * torch.randn(dim, generator=g) for _ in range(4)])
    d[3] = -1.5 * d[:3].mean(0) + 0.3 * torch.randn(dim, generator=g)  # one client disagrees
    return d


@pytest.mark.parametrize("scale", [1e-4, 1.0, 50.0])
def test_ca_equals_mean_when_all_deltas_agree(scale):
    d = torch.randn(1, 300, generator=torch.Generator().manual_seed(1)) * scale
    deltas = d.repeat(5, 1)
    torch.testing.assert_close(conflict_averse_update(deltas), deltas.mean(0), rtol=1e-5, atol=1e-9)


def test_fedhca2_rescale_keeps_direction_of_agreeing_deltas():
    d = torch.randn(1, 300).repeat(3, 1)
    g = conflict_averse_update(d, rescale="alpha_sq")
    cos = torch.nn.functional.cosine_similarity(g, d[0], dim=0)
    assert cos > 0.9999
    assert float(g.norm()) == pytest.approx(float(d[0].norm()) * 1.4 / 1.16, rel=1e-4)


@pytest.mark.parametrize("seed", range(5))
def test_ca_raises_the_worst_clients_progress_over_the_mean(seed):
    d = _conflicting(seed)
    mean = d.mean(0)
    ca = conflict_averse_update(d)
    assert (d @ mean).min() < 0, "the case really conflicts"
    assert (d @ ca).min() > (d @ mean).min()


@pytest.mark.parametrize("seed", range(3))
def test_pcgrad_raises_the_worst_clients_progress_over_the_mean(seed):
    d = _conflicting(seed)
    assert (d @ pcgrad_update(d)).min() > (d @ d.mean(0)).min()


def test_solver_finds_the_simplex_minimum():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(4, 50))
    gram = g @ g.T
    c = 0.4 * np.sqrt(gram.mean())
    w = conflict_averse_weights(gram, c)
    assert w.min() >= 0 and w.sum() == pytest.approx(1.0)

    def f(x):
        return x @ gram @ np.full(4, 0.25) + c * np.sqrt(x @ gram @ x)

    samples = rng.dirichlet(np.ones(4), size=2000)
    assert f(w) <= min(f(s) for s in samples) + 1e-6


def test_coordinate_none_is_the_mean_and_unknown_mode_fails():
    d = _conflicting()
    torch.testing.assert_close(coordinate(d, "none"), d.mean(0))
    with pytest.raises(ValueError, match="unknown conflict mode"):
        coordinate(d, "magic")
