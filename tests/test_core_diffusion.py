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
    kept = [i * 999 // 10 for i in range(10)]  # the terminal step 999 is left out
    assert r.timesteps.tolist() == kept
    for i, t in enumerate(kept):
        assert r.alpha_bar[i].item() == pytest.approx(d.alpha_bar[t].item(), rel=1e-9)
    for bad in (0, 1000):
        with pytest.raises(SciarError, match="sampling steps"):
            d.respaced(bad)


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
    def eps(x, t):  # the sampler calls it with every row at the same step
        ab = float(d.alpha_bar[t[0]])
        return (x - math.sqrt(ab) * mu) * math.sqrt(1 - ab) / (ab * s * s + 1 - ab)
    return eps


@pytest.mark.parametrize("steps,variance,tol", [(999, "posterior", 0.01), (100, "beta", 0.03)])
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


def test_learned_variance_bound_and_sampler_match_closed_forms():
    d = GaussianDiffusion.cosine(1000, variance="learned")
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(6, 3, generator=g, dtype=torch.float64)
    i = torch.tensor([0, 1, 10, 300, 700, 990])
    eps = torch.randn(6, 3, generator=g, dtype=torch.float64)
    x_t = d.q_sample(x0, i, eps)
    # the true noise gives the posterior mean exactly: the bound only weighs the variances
    at_tilde = d.vb_term(x0, x_t, i, eps, -torch.ones(6, 3, dtype=torch.float64))
    at_beta = d.vb_term(x0, x_t, i, eps, torch.ones(6, 3, dtype=torch.float64))
    assert torch.allclose(at_tilde, torch.zeros(6, dtype=torch.float64), atol=1e-9)
    for row, t in enumerate(i.tolist()):
        if t == 0:
            assert at_beta[row] == 0
            continue
        ab, ab_prev = _closed_form_alpha_bar(t), _closed_form_alpha_bar(t - 1)
        beta = min(1 - ab / ab_prev, 0.999)
        tilde = beta * (1 - ab_prev) / (1 - ab)
        want = 0.5 * (-1 + math.log(beta / tilde) + tilde / beta) / math.log(2)
        assert at_beta[row].item() == pytest.approx(want, rel=1e-6)
    # v = -1 / +1 everywhere: the learned sampler is the fixed-variance one
    mu, s = 0.5, 0.4
    for v, fixed in [(-1.0, "posterior"), (1.0, "beta")]:
        ref = GaussianDiffusion.cosine(1000, variance=fixed)
        eps_fn = _gaussian_eps(ref, mu, s)
        a = ref.respaced(20).sample(eps_fn, (50, 1), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        b = d.respaced(20).sample(lambda x, t: (eps_fn(x, t), torch.full_like(x, v)), (50, 1),
                                  generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        assert torch.allclose(a, b, atol=1e-10)


def test_diffusion_head_with_learned_variance_trains_and_samples():
    torch.manual_seed(0)
    head = DiffusionHead(token_dim=2, cond_dim=4, width=16, depth=1, sample_steps=6, learn_sigma=True)
    h, x = torch.randn(3, 7, 4), torch.randn(3, 7, 2)
    loss = head.loss(h, x)
    loss.backward()
    assert torch.isfinite(loss) and head.net.out.linear.weight.grad.abs().sum() > 0
    out = head.sample(torch.cat([h[0], h[1]]), cfg=2.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (7, 2) and torch.isfinite(out).all()


def test_a_generator_per_block_of_rows_gives_each_block_its_own_noise():
    """Sampling 3 blocks of 2 rows with 3 generators equals sampling each block alone with its generator,
    whatever the eps function (here one that mixes nothing across rows)."""
    from sciar.diffusion import GaussianDiffusion

    d = GaussianDiffusion.cosine(100).respaced(10)

    def eps(x, t):
        return 0.1 * x + 0.001 * t[:, None].float()

    together = d.sample(eps, (6, 3), temperature=0.8, generator=[torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    alone = torch.cat([d.sample(eps, (2, 3), temperature=0.8, generator=torch.Generator().manual_seed(s)) for s in (1, 2, 3)])
    assert torch.equal(together, alone)
    with pytest.raises(SciarError):
        d.sample(eps, (5, 3), generator=[torch.Generator(), torch.Generator()])


def test_ring_benchmark_distance_and_report(benchmark_module):
    core = benchmark_module("core")
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 2, generator=g)
    shift = torch.tensor([0.3, -0.4])
    # a translation by c: every projection's W2 is |theta . c|, so SW2^2 = E[(theta . c)^2] = |c|^2 / 2 in 2-D
    assert core.sliced_wasserstein(a, a + shift) == pytest.approx(0.5 / math.sqrt(2), rel=0.05)
    assert core.sliced_wasserstein(a, a) == 0
    fit = core.diffusion_head_fit(steps=3, width=16, depth=1, n=300, sample_steps=5)
    assert set(fit) >= {"head", "reference", "ratio", "mode_shares"} and len(fit["mode_shares"]) == 8
    assert sum(fit["mode_shares"]) == pytest.approx(1.0) and fit["steps"] == 3
