"""The shape generator on the core: a toy latent set with two classes, the fitted Gaussian, and the commands."""

import numpy as np
import pandas as pd
import pytest
import torch

from domains.shapes.generator import FittedGaussian, LatentSet, build_generator, generate_causal
from sciar.decode.masked import generate
from sciar.train import TrainConfig, train

L, D = 4, 2
# hand-picked class means per token: class "a" near (+1, -1) with a tilt along the positions, "b" mirrored
TOY_MEANS = np.array([[[1.0, -1.0], [1.0, -0.5], [0.5, -1.0], [1.0, -1.0]]])
TOY_MEANS = np.concatenate([TOY_MEANS, -TOY_MEANS])
NOISE = 0.05


def _toy_set(n_per_class=64, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n_per_class)
    z = TOY_MEANS[y] + NOISE * rng.standard_normal((len(y), L, D))
    splits = ["train"] * len(y)
    splits[::8] = ["val"] * len(splits[::8])
    meta = {"mean": 0.0, "std": 1.0, "labels": ["a" if c == 0 else "b" for c in y], "splits": splits}
    return LatentSet(torch.tensor(z, dtype=torch.float32), meta)


@pytest.fixture(scope="module")
def toy_models(tmp_path_factory):
    """Both generators (masked and causal, tiny) trained 300 steps on the toy set by the core's trainer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    data, out = _toy_set(), {}
    for kind in ("masked", "causal"):
        torch.manual_seed(0)
        model = build_generator(kind, "tiny", L, D, 2, sample_steps=25)
        cfg = TrainConfig(max_steps=300, batch_size=64, lr=3e-3, min_lr=3e-4, warmup_steps=20, weight_decay=0.0,
                          eval_every=300, eval_batches=1, save_every=300, seed=0, device="cpu", progress=False,
                          ema=0.9)
        path = tmp_path_factory.mktemp(kind)
        train(model, data, cfg, path, model.config(), None, {"domain": "shapes", "role": "generator"})
        out[kind] = (model.eval(), pd.read_csv(path / "train_log.csv")["loss"].to_numpy())
    torch.set_num_threads(threads)
    return data, out


def test_toy_latents_have_the_classes_and_splits():
    data = _toy_set()
    assert data.classes == ["a", "b"]
    assert len(data.rows["val"]) == 16 and len(data.rows["train"]) == 112
    z, y = data.split("train")
    assert torch.allclose(z[y == 0].mean(0), torch.tensor(TOY_MEANS[0], dtype=torch.float32), atol=0.03)


@pytest.mark.parametrize("kind", ["masked", "causal"])
def test_training_loss_decreases(toy_models, kind):
    _, models = toy_models
    loss = models[kind][1]
    # the head's noise MSE starts near 1 (zero-initialised output: the noise's variance) and must fall well below it
    assert loss[:10].mean() > 0.8
    assert loss[-30:].mean() < 0.6 * loss[:10].mean()


@pytest.mark.parametrize("kind", ["masked", "causal"])
def test_guided_class_samples_recover_the_class_means(toy_models, kind):
    _, models = toy_models
    model = models[kind][0]
    torch.set_num_threads(1)
    labels = torch.tensor([0] * 12 + [1] * 12)
    if kind == "masked":
        z = generate(model, labels=labels, steps=2, cfg=3.0, head_steps=25, seed=0)
    else:
        z = generate_causal(model, labels, cfg=3.0, head_steps=25, seed=0)
    for c in (0, 1):
        mean = z[labels == c].mean(0).numpy()
        # within half the smallest gap between the two classes' means in any coordinate (1.0): the right class
        assert np.abs(mean - TOY_MEANS[c]).max() < 0.45, (c, mean)
        assert np.abs(mean - TOY_MEANS[c]).mean() < 0.15, (c, mean)
        # every sample lies on its class's side: the signs of the hand-picked means
        assert (np.sign(z[labels == c].numpy()) == np.sign(TOY_MEANS[c])).mean() > 0.95


def test_fitted_gaussian_matches_numpy():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((30, 3, 2)) * [1.0, 2.0] + 0.5
    y = np.repeat([0, 1], 15)
    g = FittedGaussian(torch.tensor(z), torch.tensor(y), 2)
    for c in (0, 1):
        flat = z[y == c].reshape(15, -1)
        np.testing.assert_allclose(g.means[c].numpy(), flat.mean(0), atol=1e-12)
        np.testing.assert_allclose(g.covariance(c).numpy(), np.cov(flat, rowvar=False), atol=1e-12)
    draws = g.sample([1] * 20000, seed=0).reshape(20000, -1).double().numpy()
    flat = z[y == 1].reshape(15, -1)
    np.testing.assert_allclose(draws.mean(0), flat.mean(0), atol=0.05)
    np.testing.assert_allclose(np.cov(draws, rowvar=False), np.cov(flat, rowvar=False), atol=0.12)
