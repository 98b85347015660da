"""Gaussian diffusion (sciar.diffusion) and the diffusion head, checked against closed forms."""

import math

import pytest
import torch

from sciar.diffusion import GaussianDiffusion
from sciar.errors import SciarError
from sciar.heads import DiffusionHead


def _closed_form_alpha_bar(t: int, T: int = 1000, s: float = 0.008) -> float:
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t + 1) / f(0)  # step t (0-based) has been noised t + 1 times


def test_cosine_schedule_matches_closed_form():
    d = GaussianDiffusion.cosine(1000)
    # betas are clipped at 0.999 only in the very last steps; before that the product is the closed form
    for t in [0, 1, 10, 250, 500, 750, 900, 980]:
        assert d.alpha_bar[t].item() == pytest.approx(_closed_form_alpha_bar(t), rel=1e-9)
    assert (d.betas <= 0.999).all() and (d.betas > 0).all()
    assert d.alpha_bar[-1].item() < 1e-6  # x_T is pure noise


def test_respacing_keeps_the_cumulative_products():
    d = GaussianDiffusion.cosine(1000)
    r = d.respaced(10)
    kept = [round(i * 999 / 9) for i in range(10)]
    assert r.timesteps.tolist() == kept
    for i, t in enumerate(kept):
        assert r.alpha_bar[i].item() == pytest.approx(d.alpha_bar[t].item(), rel=1e-9)
    with pytest.raises(SciarError, match="sampling steps"):
        d.respaced(0)


def test_q_sample_moments():
    d = GaussianDiffusion.cosine(1000)
    g = torch.Generator().manual_seed(0)
    n, t = 200_000, 400
    x0 = torch.full((n, 1), 2.0, dtype=torch.float64)
    x = d.q_sample(x0, torch.full((n,), t), torch.randn(n, 1, generator=g, dtype=torch.float64))
    ab = _closed_form_alpha_bar(t)
    assert x.mean().item() == pytest.approx(2 * math.sqrt(ab), abs=0.01)
    assert x.var().item() == pytest.approx(1 - ab, rel=0.02)


def _gaussian_eps(d: GaussianDiffusion, mu: float, s: float):
    """The exact noise predictor for 1-D data N(mu, s^2): E[eps | x_t]."""
    def eps(x, t):
        ab = d.alpha_bar[t].to(x.dtype)[:, None]
        return (x - ab.sqrt() * mu) * (1 - ab).sqrt() / (ab * s * s + 1 - ab)
    return eps


@pytest.mark.parametrize("steps,variance,tol", [(1000, "posterior", 0.01), (100, "beta", 0.03)])
def test_sampler_recovers_a_gaussian_given_the_true_noise(steps, variance, tol):
    mu, s = 1.5, 0.3
    d = GaussianDiffusion.cosine(1000, variance=variance)
    g = torch.Generator().manual_seed(1)
    x = d.respaced(steps).sample(_gaussian_eps(d, mu, s), (20_000, 1), generator=g, dtype=torch.float64)
    assert x.mean().item() == pytest.approx(mu, abs=0.01)
    assert x.std().item() == pytest.approx(s, rel=tol)


def test_temperature_narrows_the_samples():
    d = GaussianDiffusion.cosine(1000)
    eps = _gaussian_eps(d, 0.0, 1.0)
    hot = d.respaced(50).sample(eps, (20_000, 1), 1.0, torch.Generator().manual_seed(2), dtype=torch.float64)
    cold = d.respaced(50).sample(eps, (20_000, 1), 0.5, torch.Generator().manual_seed(2), dtype=torch.float64)
    assert cold.std() < 0.8 * hot.std()


def test_diffusion_head_starts_at_zero_and_masks_its_loss():
    torch.manual_seed(0)
    head = DiffusionHead(token_dim=3, cond_dim=8, width=32, depth=2, train_mul=4)
    h, x = torch.randn(2, 500, 8), torch.randn(2, 500, 3)
    # zero-initialised output: the first prediction is 0, so the loss is E[eps^2] = 1
    assert head.loss(h, x).item() == pytest.approx(1.0, abs=0.03)
    # masked-out tokens count for nothing, even when they are NaN
    mask = torch.rand(2, 500) < 0.5
    bad = x.clone()
    bad[~mask] = float("nan")
    for p in head.parameters():  # a non-trivial net, so that the loss depends on the targets
        p.data.normal_(0, 0.1)
    torch.manual_seed(1)
    a = head.loss(h, bad, mask)
    torch.manual_seed(1)
    b = head.loss(h, x.where(mask[..., None], 0.0), mask)
    assert torch.isfinite(a) and a.item() == pytest.approx(b.item(), rel=1e-6)


def test_diffusion_head_sampling_is_seeded_and_guided():
    torch.manual_seed(0)
    head = DiffusionHead(token_dim=2, cond_dim=4, width=16, depth=1, sample_steps=8)
    for p in head.parameters():
        p.data.normal_(0, 0.05)
    h = torch.randn(5, 4)
    one = head.sample(h, generator=torch.Generator().manual_seed(3))
    two = head.sample(h, generator=torch.Generator().manual_seed(3))
    other = head.sample(h, generator=torch.Generator().manual_seed(4))
    assert one.shape == (5, 2) and torch.equal(one, two) and not torch.equal(one, other)
    # identical halves: guidance changes nothing, and the halves share the noise of an unguided run
    guided = head.sample(torch.cat([h, h]), cfg=3.0, generator=torch.Generator().manual_seed(3))
    assert guided.shape == (5, 2) and torch.allclose(guided, one, rtol=1e-4, atol=1e-5)
    # different halves: the guided prediction moves away from both
    u = torch.randn(5, 4)
    g3 = head.sample(torch.cat([h, u]), cfg=3.0, generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(g3, one, atol=1e-3)
    with pytest.raises(SciarError, match="cfg=0.5"):
        head.sample(torch.cat([h, h]), cfg=0.5)
    with pytest.raises(SciarError, match="halves"):
        head.sample(h, cfg=2.0)
